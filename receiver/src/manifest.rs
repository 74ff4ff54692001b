//! The manifest: one JSON line per outcome, for vendors and for monitoring.
//!
//! Each record is written with a single `write` on a file opened for appending, so lines from the
//! receive loop and the publishers never interleave and a reader never sees half a record. Records
//! are only written while the filesystem keeps half of `--min-free` free, so that a flood of
//! outcomes cannot fill the disk; what is not written is counted and logged.

use std::collections::{HashSet, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use checkvalve_common::meta::{DIGEST_LEN, Head};
use serde::Serialize;
use tracing::{debug, error};

use crate::ratelimit::Limiter;

/// One line of the manifest.
#[derive(Debug, Serialize)]
struct Record<'a> {
    /// When the outcome was decided (RFC 3339, UTC).
    time: String,
    /// `delivered`, `repeat`, `superseded` or `lost`.
    status: &'static str,
    /// Path under the output folder, when known.
    path: Option<&'a str>,
    /// Content length, when known.
    size: Option<u64>,
    /// SHA-256 of the delivered content, hex.
    sha256: Option<String>,
    /// Sender session and object number (`SESSION-OBJECT`), or the session alone for an
    /// aggregate record.
    object: &'a str,
    /// Objects the record stands for (1 but for aggregate records of unnamed losses).
    objects: u64,
    /// Why it was lost or superseded.
    reason: Option<String>,
}

/// Object keys of recent records: a second outcome for one object (two threads deciding about it
/// at once) is refused here, whatever the race.
#[derive(Default)]
struct Recent {
    keys: HashSet<String>,
    order: VecDeque<String>,
}

/// Objects remembered to refuse a second record.
const RECENT_KEYS: usize = 65_536;

/// Append-only record of outcomes.
pub struct Manifest {
    file: Mutex<(File, Limiter, Recent)>,
    min_free: u64,
    dropped: AtomicU64,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

impl Manifest {
    /// Opens (creating if needed) the manifest at `path` for appending; records stop while the
    /// filesystem has less than `min_free / 2` bytes free.
    pub fn open(path: &Path, min_free: u64) -> io::Result<Manifest> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Manifest {
            file: Mutex::new((
                file,
                Limiter::new(Duration::from_secs(60), 1),
                Recent::default(),
            )),
            min_free,
            dropped: AtomicU64::new(0),
        })
    }

    /// Records not written for lack of space or because of an error.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    fn write(&self, record: &Record<'_>) {
        let mut line = match serde_json::to_vec(record) {
            Ok(l) => l,
            Err(e) => return error!("cannot encode manifest record: {e}"),
        };
        line.push(b'\n');
        let mut guard = self.file.lock().unwrap_or_else(|p| p.into_inner());
        let (file, limiter, recent) = &mut *guard;
        // Aggregate records name a session, not an object: a session has one per interval.
        if record.object.contains('-') {
            if !recent.keys.insert(record.object.to_owned()) {
                debug!(
                    object = record.object,
                    "second outcome for one object not recorded"
                );
                return;
            }
            recent.order.push_back(record.object.to_owned());
            while recent.order.len() > RECENT_KEYS {
                if let Some(old) = recent.order.pop_front() {
                    recent.keys.remove(&old);
                }
            }
        }
        let free = nix::sys::statvfs::fstatvfs(file.as_fd())
            .map(|s| s.blocks_available().saturating_mul(s.fragment_size()))
            .unwrap_or(u64::MAX);
        let result = if free < (self.min_free / 2).saturating_add(line.len() as u64) {
            Err(io::Error::other(format!(
                "only {free} bytes free, below half of --min-free"
            )))
        } else {
            file.write_all(&line)
        };
        if let Err(e) = result {
            let total = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if let Some(suppressed) = limiter.allow() {
                error!(
                    dropped_total = total,
                    suppressed, "manifest record not written: {e}"
                );
            }
        }
    }

    /// Records a verified, published file.
    pub fn delivered(&self, object: &str, head: &Head, digest: &[u8; DIGEST_LEN]) {
        self.write(&Record {
            time: now(),
            status: "delivered",
            path: Some(&head.path),
            size: Some(head.size),
            sha256: Some(hex(digest)),
            object,
            objects: 1,
            reason: None,
        });
    }

    /// Records a verified file the share already held, identical, under its path (sent again).
    pub fn repeat(&self, object: &str, head: &Head, digest: &[u8; DIGEST_LEN]) {
        self.write(&Record {
            time: now(),
            status: "repeat",
            path: Some(&head.path),
            size: Some(head.size),
            sha256: Some(hex(digest)),
            object,
            objects: 1,
            reason: Some("the share already holds this content under this path".into()),
        });
    }

    /// Records a verified file not published because newer content for its path already was.
    pub fn superseded(&self, object: &str, head: &Head, digest: &[u8; DIGEST_LEN]) {
        self.write(&Record {
            time: now(),
            status: "superseded",
            path: Some(&head.path),
            size: Some(head.size),
            sha256: Some(hex(digest)),
            object,
            objects: 1,
            reason: Some("newer content for this path was already published".into()),
        });
    }

    /// Records `objects` objects (one, or an aggregate) that will not be delivered.
    pub fn lost(
        &self,
        object: &str,
        objects: u64,
        path: Option<&str>,
        size: Option<u64>,
        reason: String,
    ) {
        self.write(&Record {
            time: now(),
            status: "lost",
            path,
            size,
            sha256: None,
            object,
            objects,
            reason: Some(reason),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_stop_below_half_of_min_free_and_are_counted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.jsonl");
        let ok = Manifest::open(&path, 0).unwrap();
        ok.lost("1-1", 1, Some("a"), None, "x".into());
        assert_eq!(ok.dropped(), 0);
        // No filesystem has an exabyte free: every record is refused and counted.
        let full = Manifest::open(&path, u64::MAX).unwrap();
        for i in 0..3 {
            full.lost(&format!("1-{}", i + 2), 1, Some("b"), None, "x".into());
        }
        full.lost("1-2", 1, Some("b"), None, "again".into());
        assert_eq!(full.dropped(), 3);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
    }
}
