//! The sender service's status file (`STATE/status.json`), replaced atomically every second:
//! read by `checkvalve-send status` (no running sender needed) and by monitoring.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// File name of the status inside the sender's state folder.
pub const FILE: &str = "status.json";

/// A warning or error logged by the service.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct Problem {
    /// When (RFC 3339, UTC).
    pub time: String,
    /// `WARN` or `ERROR`.
    pub level: String,
    /// The log line's message and fields.
    pub message: String,
}

/// Files and bytes sent (each file counted once, after its last copy), today and since the state
/// folder was created.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Counters {
    /// The UTC day `files_today` and `bytes_today` count.
    pub day: String,
    /// Files sent whole today.
    pub files_today: u64,
    /// Their content bytes.
    pub bytes_today: u64,
    /// Files sent whole in all.
    pub files_total: u64,
    /// Their content bytes.
    pub bytes_total: u64,
}

impl Counters {
    /// Counts a file of `bytes` sent whole on the UTC day `today`.
    pub fn file_sent(&mut self, today: &str, bytes: u64) {
        self.roll(today);
        self.files_today += 1;
        self.bytes_today += bytes;
        self.files_total += 1;
        self.bytes_total += bytes;
    }

    /// Starts a new day's counts if `today` is not the day counted.
    pub fn roll(&mut self, today: &str) {
        if self.day != today {
            self.day = today.to_owned();
            self.files_today = 0;
            self.bytes_today = 0;
        }
    }
}

/// A channel's queue in the status file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ChannelStatus {
    /// Channel name.
    pub name: String,
    /// Files waiting or in progress.
    pub queued: usize,
    /// Their bytes.
    pub queued_bytes: u64,
    /// The file waiting longest.
    pub oldest: Option<PathBuf>,
    /// How long it has waited, in seconds.
    pub oldest_age_s: Option<u64>,
}

/// A record stream input in the status file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StreamStatus {
    /// The channel.
    pub name: String,
    /// Its input, as configured (`tcp://…`, `udp://…`, `mqtt://…`, `file://…`, `-`).
    pub input: String,
    /// One past the last record read from the spool.
    pub spooled: u64,
    /// One past the last record sent whole.
    pub sent: u64,
    /// When the last record read was taken (RFC 3339).
    pub last_record: Option<String>,
}

/// The status file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Status {
    /// Process id of the sender that wrote it.
    pub pid: u32,
    /// Its session id (hex).
    pub session: String,
    /// When it started (RFC 3339).
    pub started: String,
    /// When this was written (RFC 3339).
    pub updated: String,
    /// The same, in seconds since the Unix epoch.
    pub updated_unix: u64,
    /// True once the sender stopped cleanly.
    pub stopped: bool,
    /// Sent counters.
    pub sent: Counters,
    /// Datagrams sent by this process, heartbeats included.
    pub datagrams: u64,
    /// Datagrams the kernel refused.
    pub send_errors: u64,
    /// Per channel.
    pub channels: Vec<ChannelStatus>,
    /// Per record stream input.
    pub streams: Vec<StreamStatus>,
    /// The last warning or error logged.
    pub last_problem: Option<Problem>,
}

impl Status {
    /// The status last written into the state folder `state`, if any.
    pub fn read(state: &Path) -> Option<Status> {
        serde_json::from_slice(&std::fs::read(state.join(FILE)).ok()?).ok()
    }
}

/// Folder of the sender's evidence inside its state folder: one JSON-lines file per UTC day
/// (`sent/YYYY-MM-DD.jsonl`), a [`SentRecord`] per copy of a file sent whole.
pub const SENT_DIR: &str = "sent";

/// A copy of a file sent whole, as the sender records it: the receiver's manifest names the same
/// object and SHA-256, so that the two sides' records match by more than the path.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SentRecord {
    /// When its last datagram went out (RFC 3339, UTC).
    pub time: String,
    /// Its channel (empty for `--watch`).
    pub channel: String,
    /// Its path as sent (the share's path).
    pub path: String,
    /// Where it was read from.
    pub source: String,
    /// Content bytes.
    pub size: u64,
    /// SHA-256 of the content, hex.
    pub sha256: String,
    /// The object as the receiver's manifest names it: session (16 hex digits), `-`, number.
    pub object: String,
    /// Which copy (from 1) of how many the channel sends.
    pub copy: u32,
    /// Copies the channel sends.
    pub copies: u32,
    /// From queued to its last datagram, seconds.
    pub seconds: f64,
}
