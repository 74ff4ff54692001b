//! Reading the manifest back: the hash chain checked record by record, and (optionally) the share
//! checked against what the manifest says it holds.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use thiserror::Error;

use checkvalve_formats::manifest::{GENESIS, Record, Status};

use crate::manifest::{ChainEnd, files, line_hash};

/// The first thing wrong with a manifest.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum Broken {
    /// The manifest folder cannot be read.
    #[error("cannot read the manifest folder {0}: {1}")]
    Unreadable(PathBuf, String),
    /// A line is not a manifest record.
    #[error("{file}:{line}: not a manifest record ({why})")]
    Malformed {
        /// The file.
        file: PathBuf,
        /// Line number in it, from 1.
        line: usize,
        /// What is wrong with it.
        why: String,
    },
    /// A record's number is not the one after the previous record's.
    #[error(
        "{file}:{line}: record {seq} follows record {after}: records were removed or reordered"
    )]
    OutOfSequence {
        /// The file.
        file: PathBuf,
        /// Line number in it, from 1.
        line: usize,
        /// Its number.
        seq: u64,
        /// The previous record's number.
        after: u64,
    },
    /// A record's `prev` is not the hash of the record before it.
    #[error("{file}:{line}: record {seq} does not chain to the record before it: record {} was changed, or records were removed or reordered", seq - 1)]
    Chain {
        /// The file.
        file: PathBuf,
        /// Line number in it, from 1.
        line: usize,
        /// Its number.
        seq: u64,
    },
    /// The receiver's state says it wrote more records than the manifest holds, or a different last one.
    #[error("the last record is {seq}, but the receiver had written up to record {expected}{}", if *.changed { " (and the last record was changed)" } else { ": the newest records were removed" })]
    Truncated {
        /// The last record found.
        seq: u64,
        /// The last record the receiver wrote.
        expected: u64,
        /// Same number, different content.
        changed: bool,
    },
    /// A receiver found at start that the newest records had been removed or changed.
    #[error("record {seq}: chain_break: {reason}")]
    ChainBreak {
        /// The `chain_break` record.
        seq: u64,
        /// What it says was lost.
        reason: String,
    },
    /// A file in the share that no record explains (planted, or left by a removal not recorded).
    #[error("{path} is in the share, but no record delivered it")]
    Unexplained {
        /// Its path under the share.
        path: String,
    },
    /// A delivered file is no longer in the share as recorded.
    #[error("record {seq}: {path} {what}")]
    File {
        /// The record that delivered it.
        seq: u64,
        /// Its path in the share.
        path: String,
        /// `is missing` or `differs from its SHA-256 in the manifest`.
        what: &'static str,
    },
}

/// A manifest that verified.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Verified {
    /// Records checked.
    pub records: u64,
    /// Files of the manifest.
    pub files: usize,
    /// Files in the share checked against their record.
    pub checked: usize,
    /// With the share: every way it differs from what the manifest says it holds (a missing or
    /// changed file, a file no record explains), all of them.
    pub share_problems: Vec<Broken>,
}

/// Checks the chain of the manifest in `dir`; with `share`, also that every file the manifest
/// says is published (and not removed since) is there with its recorded SHA-256; with `end`, that
/// the chain reaches the last record the receiver wrote.
pub fn verify(
    dir: &Path,
    share: Option<&Path>,
    end: Option<&ChainEnd>,
) -> Result<Verified, Broken> {
    let list = files(dir).map_err(|e| Broken::Unreadable(dir.to_owned(), e.to_string()))?;
    let mut out = Verified {
        files: list.len(),
        ..Verified::default()
    };
    let (mut seq, mut hash) = (0u64, GENESIS.to_owned());
    // The first record saying the newest records of an earlier run were removed.
    let mut chain_break: Option<(u64, String)> = None;
    // Path -> (record, sha256) of what the share should hold.
    let mut expected: BTreeMap<String, (u64, String)> = BTreeMap::new();
    for file in list {
        let f = File::open(&file).map_err(|e| Broken::Unreadable(file.clone(), e.to_string()))?;
        for (i, line) in BufReader::new(f).split(b'\n').enumerate() {
            let line = line.map_err(|e| Broken::Unreadable(file.clone(), e.to_string()))?;
            let malformed = |why: &str| Broken::Malformed {
                file: file.clone(),
                line: i + 1,
                why: why.to_owned(),
            };
            let v: Record = serde_json::from_slice(&line).map_err(|e| malformed(&e.to_string()))?;
            let (this, prev) = (v.seq, v.prev.as_str());
            if this != seq + 1 {
                return Err(Broken::OutOfSequence {
                    file: file.clone(),
                    line: i + 1,
                    seq: this,
                    after: seq,
                });
            }
            if prev != hash {
                return Err(Broken::Chain {
                    file: file.clone(),
                    line: i + 1,
                    seq: this,
                });
            }
            seq = this;
            hash = line_hash(&line);
            out.records += 1;
            if v.status == Status::ChainBreak && chain_break.is_none() {
                chain_break = Some((seq, v.reason.clone().unwrap_or_default()));
            }
            match (v.status, v.path, v.sha256) {
                (Status::Delivered, Some(p), Some(d)) => {
                    expected.insert(p, (seq, d));
                }
                (Status::Removed, Some(p), _) => {
                    expected.remove(&p);
                }
                _ => {}
            }
        }
    }
    if let Some(end) = end
        && (end.seq > seq || (end.seq == seq && end.hash != hash))
    {
        return Err(Broken::Truncated {
            seq,
            expected: end.seq,
            changed: end.seq == seq,
        });
    }
    if let Some((seq, reason)) = chain_break {
        return Err(Broken::ChainBreak { seq, reason });
    }
    if let Some(share) = share {
        for (path, (seq, digest)) in &expected {
            let what = match sha256_file(&share.join(path)) {
                None => Some("is missing"),
                Some(d) if d != *digest => Some("differs from its SHA-256 in the manifest"),
                Some(_) => None,
            };
            match what {
                Some(what) => out.share_problems.push(Broken::File {
                    seq: *seq,
                    path: path.clone(),
                    what,
                }),
                None => out.checked += 1,
            }
        }
        // The state folder (the manifest's parent) is the receiver's own, not the share's.
        let state = dir.parent().unwrap_or(dir);
        let mut held = Vec::new();
        list_files(share, share, state, &mut held);
        held.sort();
        for path in held {
            if !expected.contains_key(&path) {
                out.share_problems.push(Broken::Unexplained { path });
            }
        }
    }
    Ok(out)
}

/// Every entry of `dir` but folders (files, links, anything else), as paths relative to
/// `share`, never descending into `state`.
fn list_files(share: &Path, dir: &Path, state: &Path, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        if path == state {
            continue;
        }
        match e.file_type() {
            Ok(t) if t.is_dir() => list_files(share, &path, state, out),
            _ => {
                if let Ok(rel) = path.strip_prefix(share) {
                    out.push(rel.to_string_lossy().into_owned());
                }
            }
        }
    }
}

/// SHA-256 of a file's content, hex; `None` if it cannot be read.
fn sha256_file(path: &Path) -> Option<String> {
    let mut f = File::open(path).ok()?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Some(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{Evidence, Manifest, Verified};
    use checkvalve_common::meta::{Head, ObjectKind};
    use std::time::SystemTime;

    fn filled(dir: &Path, share: &Path) -> Manifest {
        let m = Manifest::open(dir, 0).unwrap();
        let ev = Evidence {
            first_datagram: SystemTime::now(),
            last_datagram: SystemTime::now(),
            repaired: 3,
        };
        for i in 0..5u8 {
            let content = vec![i; 100];
            let digest: [u8; 32] = Sha256::digest(&content).into();
            std::fs::write(share.join(format!("f{i}")), &content).unwrap();
            let head = Head {
                path: format!("f{i}"),
                size: 100,
                mtime_secs: 0,
                mtime_nanos: 0,
                kind: ObjectKind::File,
            };
            m.verified(Verified::Delivered, &format!("1-{i}"), &head, &digest, &ev);
        }
        m.event(
            Status::LinkDown,
            Some("1"),
            "no heartbeat for 3 s".into(),
            None,
        );
        m
    }

    fn lines(dir: &Path) -> (PathBuf, Vec<String>) {
        let f = files(dir).unwrap().pop().unwrap();
        let text = std::fs::read_to_string(&f).unwrap();
        (f, text.lines().map(str::to_owned).collect())
    }

    #[test]
    fn an_intact_manifest_verifies_and_any_edit_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let (dir, share) = (tmp.path().join("m"), tmp.path().join("share"));
        std::fs::create_dir_all(&share).unwrap();
        let m = filled(&dir, &share);
        let end = m.end();
        drop(m);
        let ok = verify(&dir, Some(&share), Some(&end)).unwrap();
        assert_eq!((ok.records, ok.checked), (6, 5));
        let (file, original) = lines(&dir);
        let write = |ls: &[String]| std::fs::write(&file, ls.join("\n") + "\n").unwrap();

        // One byte of an old record changed: the next record no longer chains to it.
        let mut edited = original.clone();
        edited[1] = edited[1].replacen("\"size\":100", "\"size\":101", 1);
        write(&edited);
        assert!(matches!(
            verify(&dir, None, None),
            Err(Broken::Chain {
                seq: 3,
                line: 3,
                ..
            })
        ));

        // A record removed.
        let mut removed = original.clone();
        removed.remove(2);
        write(&removed);
        assert!(matches!(
            verify(&dir, None, None),
            Err(Broken::OutOfSequence {
                seq: 4,
                after: 2,
                ..
            })
        ));

        // Two records swapped.
        let mut swapped = original.clone();
        swapped.swap(1, 2);
        write(&swapped);
        assert!(matches!(
            verify(&dir, None, None),
            Err(Broken::OutOfSequence {
                seq: 3,
                after: 1,
                ..
            })
        ));

        // The newest record removed: only the receiver's own record of its end shows it.
        write(&original[..5]);
        assert!(verify(&dir, None, None).is_ok());
        assert!(matches!(
            verify(&dir, None, Some(&end)),
            Err(Broken::Truncated {
                seq: 5,
                expected: 6,
                changed: false
            })
        ));

        // A published file changed in the share.
        write(&original);
        std::fs::write(share.join("f2"), b"tampered").unwrap();
        std::fs::remove_file(share.join("f4")).unwrap();
        std::fs::write(share.join("planted.exe"), b"MZ").unwrap();
        let v = verify(&dir, Some(&share), Some(&end)).unwrap();
        assert_eq!(
            v.share_problems,
            [
                Broken::File {
                    seq: 3,
                    path: "f2".into(),
                    what: "differs from its SHA-256 in the manifest"
                },
                Broken::File {
                    seq: 5,
                    path: "f4".into(),
                    what: "is missing"
                },
                Broken::Unexplained {
                    path: "planted.exe".into()
                },
            ],
            "every problem, the planted file included"
        );
    }

    #[test]
    fn a_restart_continues_the_chain_and_a_torn_record_is_cut_and_recorded() {
        let tmp = tempfile::tempdir().unwrap();
        let (dir, share) = (tmp.path().join("m"), tmp.path().join("share"));
        std::fs::create_dir_all(&share).unwrap();
        drop(filled(&dir, &share));
        let (file, _) = lines(&dir);
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&file)
            .unwrap();
        std::io::Write::write_all(&mut f, b"{\"seq\":7,\"time\":\"20").unwrap();
        let m = Manifest::open(&dir, 0).unwrap();
        m.event(Status::LinkUp, Some("1"), "heartbeats again".into(), None);
        assert_eq!(m.end().seq, 8);
        let ok = verify(&dir, Some(&share), Some(&m.end())).unwrap();
        assert_eq!(ok.records, 8);
        let (_, ls) = lines(&dir);
        assert!(ls[6].contains("\"status\":\"torn\""), "{}", ls[6]);
    }

    #[test]
    fn newest_records_removed_before_a_restart_are_recorded_and_keep_failing_verification() {
        let tmp = tempfile::tempdir().unwrap();
        let (dir, share) = (tmp.path().join("m"), tmp.path().join("share"));
        std::fs::create_dir_all(&share).unwrap();
        let m = filled(&dir, &share);
        let reached = m.end();
        drop(m);
        let (file, ls) = lines(&dir);
        std::fs::write(&file, ls[..3].join("\n") + "\n").unwrap();
        let m = Manifest::open(&dir, 0).unwrap();
        assert!(m.check_end(&reached), "the gap was not noticed");
        m.event(Status::LinkUp, Some("1"), "heartbeats again".into(), None);
        // The live state now ends where the new run is: the chain_break record is what remains.
        match verify(&dir, None, Some(&m.end())) {
            Err(Broken::ChainBreak { seq: 4, reason }) => {
                assert!(reason.contains("records 4 to 6 are missing"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
        // An intact chain at start records nothing.
        let end = m.end();
        drop(m);
        let m = Manifest::open(&dir, 0).unwrap();
        assert!(!m.check_end(&end));
        assert_eq!(m.end(), end);
    }
}
