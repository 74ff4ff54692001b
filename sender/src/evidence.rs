//! The sender's evidence: every copy of a file sent whole is a `sent` log line and a record in
//! `STATE/sent/YYYY-MM-DD.jsonl` (`checkvalve_formats::sender::SentRecord`) naming the object and
//! SHA-256 the receiver's manifest names, so that a vendor's "ask the plant to resend X" can be
//! answered from both sides' records. The files grow by appends, one per UTC day; removing old
//! days is the operator's retention (docs/operator.md).

use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;
use std::time::SystemTime;

use checkvalve_formats::sender::{SENT_DIR, SentRecord};
use tracing::{info, warn};

use crate::spool::Sent;

/// Where the records go.
pub struct Evidence {
    /// `STATE/sent`, if the sender has a state folder.
    dir: Option<PathBuf>,
    /// The session the objects belong to.
    session: u64,
    /// A write failed and was said (once, until one works again).
    failing: bool,
}

/// Lower-case hex of `bytes`.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Evidence {
    /// Records for `session` in `state`/sent (none without a state folder: the log line only).
    pub fn new(state: Option<&std::path::Path>, session: u64) -> Evidence {
        Evidence {
            dir: state.map(|s| s.join(SENT_DIR)),
            session,
            failing: false,
        }
    }

    /// Logs `sent` and appends its record.
    pub fn record(&mut self, sent: &Sent) {
        let now = SystemTime::now();
        let r = SentRecord {
            time: humantime::format_rfc3339_millis(now).to_string(),
            channel: sent.channel.clone(),
            path: sent.path.clone(),
            source: sent.source.display().to_string(),
            size: sent.size,
            sha256: hex(&sent.digest),
            object: format!("{:016x}-{}", self.session, sent.object),
            copy: sent.copy,
            copies: sent.copies,
            seconds: checkvalve_host::logging::round(sent.seconds, 3),
        };
        info!(
            channel = %r.channel,
            path = %r.path,
            bytes = r.size,
            object = %r.object,
            sha256 = %r.sha256,
            copy = r.copy,
            copies = r.copies,
            seconds = checkvalve_host::logging::round(sent.seconds, 2),
            "sent"
        );
        let Some(dir) = &self.dir else {
            return;
        };
        let file = dir.join(format!("{}.jsonl", &r.time[..10]));
        let result = serde_json::to_vec(&r)
            .map_err(std::io::Error::other)
            .and_then(|mut line| {
                line.push(b'\n');
                std::fs::create_dir_all(dir)?;
                // One write per record, on a file opened for appending: a reader never sees half.
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&file)?
                    .write_all(&line)
            });
        match result {
            Ok(()) => self.failing = false,
            Err(e) if !self.failing => {
                self.failing = true;
                warn!(record = %file.display(), "cannot record what was sent (said once until it works again): {e}");
            }
            Err(_) => {}
        }
    }
}
