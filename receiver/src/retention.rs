//! Retention of the share: published files older than `max_age` are removed, then the oldest while
//! the share holds more than `max_bytes`. Age is the time of publication (the file's status change
//! time, set by the rename that published it). Each removal is logged and recorded.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use checkvalve_common::meta::STATE_DIR;
use tracing::{info, warn};

use crate::config::Retention;
use crate::manifest::Manifest;
use crate::share::Share;

/// How often the share is examined.
const EVERY: Duration = Duration::from_secs(60);

/// Files that cannot be removed named per retention pass; the rest are counted in one line.
const NAMED_FAILURES: u64 = 10;

/// Applies `limits` now and every minute until `stop`.
pub fn run(share: Arc<Share>, manifest: Arc<Manifest>, limits: Retention, stop: Arc<AtomicBool>) {
    let mut waited = EVERY;
    while !stop.load(Ordering::Relaxed) {
        if waited >= EVERY {
            waited = Duration::ZERO;
            apply(&share, &manifest, &limits, SystemTime::now());
        }
        std::thread::sleep(Duration::from_millis(200));
        waited += Duration::from_millis(200);
    }
}

/// One pass: returns the files removed.
pub fn apply(share: &Share, manifest: &Manifest, limits: &Retention, now: SystemTime) -> usize {
    let mut files = Vec::new();
    walk(share.root(), share.root(), share.state(), &mut files);
    // Oldest publication first.
    files.sort();
    let mut total: u64 = files.iter().map(|(_, _, size)| size).sum();
    let cutoff = limits
        .max_age
        .and_then(|age| now.checked_sub(age))
        .map(|t| {
            t.duration_since(UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        });
    let mut removed = 0;
    // Files that cannot be removed are named, a few per pass: a folder of them would otherwise
    // repeat a WARN per file at every pass.
    let mut refused = 0u64;
    for (published, rel, size) in files {
        let too_old = cutoff.is_some_and(|c| published < c);
        let too_big = limits.max_bytes.is_some_and(|m| total > m);
        if !too_old && !too_big {
            break;
        }
        let reason = if too_old {
            "retention: older than max_age"
        } else {
            "retention: the share holds more than max_bytes"
        };
        match share.remove(&rel) {
            Ok(size) => {
                total = total.saturating_sub(size);
                removed += 1;
                info!(path = %rel, size, "{reason}: removed");
                manifest.removed(&rel, size, reason.into());
                remove_empty_parents(share.root(), &rel);
            }
            Err(e) => {
                total = total.saturating_sub(size);
                refused += 1;
                if refused <= NAMED_FAILURES {
                    warn!(path = %rel, "{reason}, but cannot be removed: {e}");
                }
            }
        }
    }
    if refused > NAMED_FAILURES {
        warn!(
            more = refused - NAMED_FAILURES,
            "retention: more files could not be removed in this pass"
        );
    }
    removed
}

/// Regular files under `dir`: (publication time in ns, path relative to `root`, size).
fn walk(root: &Path, dir: &Path, state: &Path, out: &mut Vec<(i64, String, u64)>) {
    use std::os::unix::fs::MetadataExt;
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let path = e.path();
        if path == state || (dir == root && e.file_name() == STATE_DIR) {
            continue;
        }
        let Ok(m) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if m.is_dir() {
            walk(root, &path, state, out);
        } else if m.is_file()
            && let Ok(rel) = path.strip_prefix(root)
            && let Some(rel) = rel.to_str()
        {
            out.push((
                m.ctime()
                    .saturating_mul(1_000_000_000)
                    .saturating_add(m.ctime_nsec()),
                rel.to_owned(),
                m.len(),
            ));
        }
    }
}

fn remove_empty_parents(root: &Path, rel: &str) {
    let mut dir: Option<PathBuf> = Path::new(rel).parent().map(|p| root.join(p));
    while let Some(d) = dir {
        if d == root || !d.starts_with(root) || std::fs::remove_dir(&d).is_err() {
            break;
        }
        dir = d.parent().map(Path::to_path_buf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oldest_go_first_by_age_then_by_size_and_each_removal_is_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let (share, _) = Share::open(&dir.path().join("out"), None).unwrap();
        let manifest = Manifest::open(&dir.path().join("m"), 0).unwrap();
        let root = share.root().to_path_buf();
        for (name, len) in [("old/a", 1000), ("mid/b", 1000), ("new/c", 1000)] {
            std::fs::create_dir_all(root.join(name).parent().unwrap()).unwrap();
            std::fs::write(root.join(name), vec![0u8; len]).unwrap();
            // Publication order is the status-change order.
            std::thread::sleep(Duration::from_millis(20));
        }
        let none = Retention::default();
        assert_eq!(apply(&share, &manifest, &none, SystemTime::now()), 0);
        let by_size = Retention {
            max_age: None,
            max_bytes: Some(2000),
        };
        assert_eq!(apply(&share, &manifest, &by_size, SystemTime::now()), 1);
        assert!(
            !root.join("old").exists(),
            "oldest file and its folder removed"
        );
        assert!(root.join("mid/b").exists() && root.join("new/c").exists());
        let by_age = Retention {
            max_age: Some(Duration::from_secs(3600)),
            max_bytes: None,
        };
        let later = SystemTime::now() + Duration::from_secs(7200);
        assert_eq!(apply(&share, &manifest, &by_age, later), 2);
        assert!(
            root.join(STATE_DIR).exists(),
            "the state folder is never touched"
        );
        assert_eq!(manifest.tally().removed, 3);
    }
}
