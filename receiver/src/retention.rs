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
                .map_or(0, |d| d.as_secs() as i64)
        });
    let mut removed = 0;
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
                warn!(path = %rel, "{reason}, but cannot be removed: {e}");
            }
        }
    }
    removed
}

/// Regular files under `dir`: (publication time, path relative to `root`, size).
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
            out.push((m.ctime(), rel.to_owned(), m.len()));
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
