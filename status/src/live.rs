//! The receiver's live state file (`STATE/live.json`), as this program reads it: every field
//! defaults, so that a newer or older receiver's file still reads.

use std::path::Path;

use serde::Deserialize;

/// A point of the last hour (cumulative counters).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Sample {
    /// Seconds since the Unix epoch.
    pub t: u64,
    /// Datagrams received.
    pub datagrams: u64,
    /// Bytes of files published.
    pub bytes: u64,
    /// Files published.
    pub files: u64,
    /// Objects lost.
    pub lost: u64,
    /// Datagrams the senders said they sent.
    pub sender_sent: u64,
    /// Datagrams received of those sessions.
    pub received: u64,
}

/// One sender session.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Session {
    /// Session id, hex.
    pub session: String,
    /// Datagrams received.
    pub received: u64,
    /// Datagrams its last heartbeat said it had sent.
    pub sender_sent: Option<u64>,
    /// Loss since first heard.
    pub loss: Option<f64>,
}

/// What the manifest recorded since the receiver started.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Tally {
    /// Files published.
    pub delivered: u64,
    /// Their bytes.
    pub delivered_bytes: u64,
    /// Copies of files already published.
    pub repeats: u64,
    /// Objects lost.
    pub lost: u64,
    /// Data shards rebuilt from parity.
    pub repaired: u64,
    /// Files removed by retention.
    pub removed: u64,
    /// The last published files: (time, path, size).
    pub recent_files: Vec<(String, String, u64)>,
    /// The last losses: (time, path or object, objects, reason).
    pub recent_losses: Vec<(String, String, u64, String)>,
}

/// The live state.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct State {
    /// Receiver process id.
    pub pid: u32,
    /// When it started.
    pub started: String,
    /// When this was written.
    pub updated: String,
    /// The same, in seconds since the Unix epoch.
    pub updated_unix: u64,
    /// It stopped cleanly.
    pub stopped: bool,
    /// Address it listens on.
    pub bind: String,
    /// `up`, `down` or `unknown`.
    pub link: String,
    /// Since when.
    pub link_since: Option<String>,
    /// Last heartbeat.
    pub last_heartbeat: Option<String>,
    /// Sender sessions.
    pub sessions: Vec<Session>,
    /// Sender restarts seen.
    pub sender_restarts: u64,
    /// Times the link went down.
    pub link_downs: u64,
    /// Datagrams received.
    pub datagrams: u64,
    /// Malformed datagrams.
    pub malformed: u64,
    /// Datagrams dropped for being behind.
    pub dropped_behind: u64,
    /// Datagrams refused by authentication.
    pub refused_auth: u64,
    /// Manifest tally.
    pub tally: Tally,
    /// Last manifest record number.
    pub manifest_seq: u64,
    /// The last hour.
    pub history: Vec<Sample>,
}

impl State {
    /// The state in `dir`, if readable.
    pub fn read(dir: &Path) -> Option<State> {
        serde_json::from_slice(&std::fs::read(dir.join("live.json")).ok()?).ok()
    }
}
