//! The manifest: one JSON line per file delivered or lost, for vendors and for monitoring.
//!
//! Each record is written with a single `write` on a file opened for appending, so lines from the
//! receive loop and the publisher never interleave and a reader never sees half a record.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

use checkvalve_common::meta::{DIGEST_LEN, Head};
use serde::Serialize;
use tracing::error;

/// One line of the manifest.
#[derive(Debug, Serialize)]
struct Record<'a> {
    /// When the outcome was decided (RFC 3339, UTC).
    time: String,
    /// `delivered` or `lost`.
    status: &'static str,
    /// Path under the output folder, when known.
    path: Option<&'a str>,
    /// Content length, when known.
    size: Option<u64>,
    /// SHA-256 of the delivered content, hex.
    sha256: Option<String>,
    /// Sender session and object number(s).
    object: &'a str,
    /// Why it was lost.
    reason: Option<String>,
}

/// Append-only record of outcomes.
pub struct Manifest {
    file: Mutex<File>,
    failed: AtomicBool,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Manifest {
    /// Opens (creating if needed) the manifest at `path` for appending.
    pub fn open(path: &Path) -> io::Result<Manifest> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Manifest {
            file: Mutex::new(file),
            failed: AtomicBool::new(false),
        })
    }

    fn write(&self, record: &Record<'_>) {
        let mut line = match serde_json::to_vec(record) {
            Ok(l) => l,
            Err(e) => return error!("cannot encode manifest record: {e}"),
        };
        line.push(b'\n');
        let result = match self.file.lock() {
            Ok(mut f) => f.write_all(&line),
            Err(_) => Err(io::Error::other("manifest lock poisoned")),
        };
        // Say it once: a full disk would otherwise repeat this for every file.
        if let Err(e) = result
            && !self.failed.swap(true, Ordering::Relaxed)
        {
            error!("cannot write the manifest (further failures are not repeated): {e}");
        }
    }

    /// Records a verified, published file.
    pub fn delivered(&self, object: &str, head: &Head, digest: &[u8; DIGEST_LEN]) {
        self.write(&Record {
            time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            status: "delivered",
            path: Some(&head.path),
            size: Some(head.size),
            sha256: Some(hex(digest)),
            object,
            reason: None,
        });
    }

    /// Records a file (or a run of objects) that will not be delivered.
    pub fn lost(&self, object: &str, path: Option<&str>, size: Option<u64>, reason: String) {
        self.write(&Record {
            time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            status: "lost",
            path,
            size,
            sha256: None,
            object,
            reason: Some(reason),
        });
    }
}
