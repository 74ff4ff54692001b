//! The record of files sent and kept in their spool (policy `keep`), in the state folder, so that
//! a restart does not send them again.
//!
//! One JSON line per file, appended and synced once the file's last copy has gone out: a crash
//! before the line is synced sends the file once more (the receiver records it as a repeat), never
//! zero times. At start the record is read, and rewritten without the files that left or changed.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tracing::warn;

/// Size and modification time: a file whose pair changed is a different file.
pub type Fingerprint = (u64, SystemTime);
/// File name of the record inside the state folder.
pub const FILE: &str = "kept.jsonl";

#[derive(Serialize, Deserialize)]
struct Line {
    path: PathBuf,
    size: u64,
    mtime_ns: u128,
}

fn nanos(t: SystemTime) -> u128 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos())
}

/// Files kept after sending, with their fingerprint when sent; persisted when a state folder is set.
#[derive(Default)]
pub struct Kept {
    files: HashSet<(PathBuf, u64, u128)>,
    log: Option<(PathBuf, File)>,
}

impl Kept {
    /// The record in `state` (none: in memory only), read and compacted.
    pub fn open(state: Option<&Path>) -> Kept {
        let Some(state) = state else {
            return Kept::default();
        };
        let path = state.join(FILE);
        let mut kept = Kept::open_read_only(Some(state));
        if let Err(e) = kept.rewrite(&path) {
            warn!(record = %path.display(), "cannot write the record of kept files (kept files will be sent again after a restart): {e}");
        }
        kept
    }

    /// The record in `state`, read without writing (for `status`); only files still as recorded.
    pub fn open_read_only(state: Option<&Path>) -> Kept {
        let Some(state) = state else {
            return Kept::default();
        };
        let path = state.join(FILE);
        let mut files = HashSet::new();
        let mut bad = 0usize;
        if let Ok(f) = File::open(&path) {
            for line in BufReader::new(f).lines() {
                let Ok(line) = line else { break };
                match serde_json::from_str::<Line>(&line) {
                    Ok(l) => {
                        files.insert((l.path, l.size, l.mtime_ns));
                    }
                    // A line cut by a crash: that file is sent again, which is harmless.
                    Err(_) => bad += 1,
                }
            }
        }
        if bad > 0 {
            warn!(record = %path.display(), lines = bad, "unreadable lines in the record of kept files: those files are sent again");
        }
        files.retain(|(p, size, mtime)| {
            fs::symlink_metadata(p)
                .is_ok_and(|m| m.len() == *size && m.modified().is_ok_and(|t| nanos(t) == *mtime))
        });
        Kept { files, log: None }
    }

    fn rewrite(&mut self, path: &Path) -> std::io::Result<()> {
        let tmp = path.with_extension("jsonl.new");
        let mut f = File::create(&tmp)?;
        for (p, size, mtime_ns) in &self.files {
            let line = Line {
                path: p.clone(),
                size: *size,
                mtime_ns: *mtime_ns,
            };
            writeln!(
                f,
                "{}",
                serde_json::to_string(&line).map_err(std::io::Error::other)?
            )?;
        }
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        let log = OpenOptions::new().append(true).open(path)?;
        self.log = Some((path.to_owned(), log));
        Ok(())
    }

    /// True if `path` was sent and kept with this fingerprint.
    pub fn contains(&self, path: &Path, fp: Fingerprint) -> bool {
        self.files.contains(&(path.to_owned(), fp.0, nanos(fp.1)))
    }

    /// Records `path` as sent and kept, synced before returning.
    pub fn insert(&mut self, path: PathBuf, fp: Fingerprint) {
        let line = Line {
            path: path.clone(),
            size: fp.0,
            mtime_ns: nanos(fp.1),
        };
        if let Some((file, log)) = &mut self.log {
            let written = serde_json::to_string(&line)
                .map_err(std::io::Error::other)
                .and_then(|l| writeln!(log, "{l}"))
                .and_then(|()| log.sync_data());
            if let Err(e) = written {
                warn!(record = %file.display(), path = %path.display(), "cannot record a kept file (it will be sent again after a restart): {e}");
            }
        }
        self.files.insert((path, fp.0, nanos(fp.1)));
    }

    /// Forgets files that are no longer in their spool.
    pub fn forget_missing(&mut self, present: &HashSet<PathBuf>) {
        self.files.retain(|(p, _, _)| present.contains(p));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_survives_a_restart_and_drops_changed_files() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        fs::write(&a, b"a").unwrap();
        fs::write(&b, b"b").unwrap();
        let fp = |p: &Path| {
            let m = fs::metadata(p).unwrap();
            (m.len(), m.modified().unwrap())
        };
        let mut k = Kept::open(Some(dir.path()));
        k.insert(a.clone(), fp(&a));
        k.insert(b.clone(), fp(&b));
        drop(k);
        fs::write(&b, b"changed").unwrap();
        let k = Kept::open(Some(dir.path()));
        assert!(k.contains(&a, fp(&a)));
        assert!(!k.contains(&b, fp(&b)), "changed since: send again");
        let text = fs::read_to_string(dir.path().join(FILE)).unwrap();
        assert_eq!(text.lines().count(), 1, "compacted: {text}");
    }
}
