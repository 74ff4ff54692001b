//! The sent folder of a channel with `after_send = "move"`: what was sent, by day, for a while.
//!
//! A file sent from `SPOOL/a/b.csv` on 2026-11-23 (UTC) is moved to `SENT/2026-11-23/a/b.csv`
//! (the same path sent twice on one day keeps the later copy). Retention removes whole day
//! folders older than `sent_max_age`, then the oldest days' files while the folder holds more
//! than `sent_max_bytes`; each removal is logged.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use tracing::{info, warn};

use crate::config::SentFolder;

/// `YYYY-MM-DD` (UTC) of `t`.
pub fn day(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()[..10].to_owned()
}

/// Moves `file` (at `rel` in its spool) into the day folder of `now`; returns where it went.
pub fn put(sent: &SentFolder, file: &Path, rel: &str, now: SystemTime) -> io::Result<PathBuf> {
    let dest = sent.dir.join(day(now)).join(rel);
    if let Some(parent) = dest.parent() {
        fs::create_dir_all(parent)?;
    }
    match fs::rename(file, &dest) {
        Ok(()) => Ok(dest),
        Err(e) if e.raw_os_error() == Some(nix::libc::EXDEV) => {
            // Another filesystem: copy beside the destination, sync, rename, then remove.
            let tmp = dest.with_file_name(format!(
                ".{}.moving",
                dest.file_name().and_then(|n| n.to_str()).unwrap_or("file")
            ));
            fs::copy(file, &tmp)?;
            fs::File::open(&tmp)?.sync_all()?;
            fs::rename(&tmp, &dest)?;
            fs::remove_file(file)?;
            Ok(dest)
        }
        Err(e) => Err(e),
    }
}

/// Applies `sent`'s age and size limits.
pub fn retain(channel: &str, sent: &SentFolder, now: SystemTime) {
    if sent.max_age.is_none() && sent.max_bytes.is_none() {
        return;
    }
    let Ok(rd) = fs::read_dir(&sent.dir) else {
        return;
    };
    let mut days: Vec<(String, PathBuf)> = rd
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_owned();
            let is_day =
                name.len() == 10 && name.as_bytes()[4] == b'-' && name.as_bytes()[7] == b'-';
            (is_day && e.file_type().ok()?.is_dir()).then(|| (name, e.path()))
        })
        .collect();
    days.sort();
    if let Some(max_age) = sent.max_age {
        let oldest_kept = day(now.checked_sub(max_age).unwrap_or(SystemTime::UNIX_EPOCH));
        while days.first().is_some_and(|(d, _)| *d < oldest_kept) {
            let (d, path) = days.remove(0);
            let (files, bytes) = usage(&path);
            match fs::remove_dir_all(&path) {
                Ok(()) => {
                    info!(channel, day = %d, files, bytes, "sent copies removed: older than sent_max_age")
                }
                Err(e) => warn!(channel, day = %d, "cannot remove old sent copies: {e}"),
            }
        }
    }
    let Some(max_bytes) = sent.max_bytes else {
        return;
    };
    let mut total: u64 = days.iter().map(|(_, p)| usage(p).1).sum();
    for (d, path) in &days {
        if total <= max_bytes {
            break;
        }
        let mut files = Vec::new();
        walk(path, &mut files);
        files.sort_by_key(|(_, _, mtime)| *mtime);
        let (mut n, mut freed) = (0u64, 0u64);
        for (f, size, _) in files {
            if total <= max_bytes {
                break;
            }
            if fs::remove_file(&f).is_ok() {
                total = total.saturating_sub(size);
                n += 1;
                freed += size;
            }
        }
        if n > 0 {
            info!(channel, day = %d, files = n, bytes = freed, "sent copies removed: over sent_max_bytes");
        }
        prune(path);
    }
}

/// Removes the empty folders under `dir`, and `dir` itself if it ends empty.
fn prune(dir: &Path) {
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                prune(&e.path());
            }
        }
    }
    let _ = fs::remove_dir(dir);
}

/// Files and bytes under `dir`.
fn usage(dir: &Path) -> (u64, u64) {
    let mut files = Vec::new();
    walk(dir, &mut files);
    (files.len() as u64, files.iter().map(|(_, s, _)| s).sum())
}

fn walk(dir: &Path, out: &mut Vec<(PathBuf, u64, SystemTime)>) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let Ok(m) = e.metadata() else { continue };
        if m.is_dir() {
            walk(&e.path(), out);
        } else {
            out.push((
                e.path(),
                m.len(),
                m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn moved_by_day_then_removed_by_age_and_size() {
        let dir = tempfile::tempdir().unwrap();
        let sent = SentFolder {
            dir: dir.path().join("sent"),
            max_age: Some(Duration::from_secs(2 * 86_400)),
            max_bytes: Some(1_500),
        };
        let now = SystemTime::now();
        let day_secs = Duration::from_secs(86_400);
        for (i, ago) in [5u32, 1, 0].into_iter().enumerate() {
            let f = dir.path().join(format!("f{i}"));
            fs::write(&f, vec![0u8; 1000]).unwrap();
            let dest = put(&sent, &f, &format!("sub/f{i}"), now - day_secs * ago).unwrap();
            assert!(dest.ends_with(format!("sub/f{i}")) && dest.exists() && !f.exists());
        }
        retain("c", &sent, now);
        assert!(!sent.dir.join(day(now - day_secs * 5)).exists(), "too old");
        assert!(
            !sent.dir.join(day(now - day_secs)).exists(),
            "oldest removed first while over the size limit"
        );
        assert!(sent.dir.join(day(now)).join("sub/f2").exists());
    }
}
