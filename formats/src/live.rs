//! The receiver's live state (`STATE/live.json`), replaced atomically every second while it runs:
//! read by `checkvalve-status`, `report` and `verify-manifest` (which checks that the manifest's
//! chain still reaches the end recorded here).

use std::collections::VecDeque;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::manifest::ChainEnd;

/// File name of the live state inside the state folder.
pub const FILE: &str = "live.json";

/// The link as the receiver sees it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Link {
    /// Nothing heard yet.
    #[default]
    Unknown,
    /// Datagrams arriving.
    Up,
    /// Nothing, not even a heartbeat, for the link-down time.
    Down,
}

impl Link {
    /// The name written in the file.
    pub fn as_str(self) -> &'static str {
        match self {
            Link::Unknown => "unknown",
            Link::Up => "up",
            Link::Down => "down",
        }
    }
}

impl std::fmt::Display for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// A point of the last hour's history (cumulative counters; rates are differences).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
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
    /// Datagrams the sessions' senders said they sent.
    pub sender_sent: u64,
    /// Datagrams received of those sessions.
    pub received: u64,
    /// Datagrams refused by authentication.
    pub refused_auth: u64,
}

/// One sender session.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SessionView {
    /// Session id, hex.
    pub session: String,
    /// Datagrams received.
    pub received: u64,
    /// Datagrams its last heartbeat said it had sent.
    pub sender_sent: Option<u64>,
    /// `1 - received / sender_sent` since it was first heard.
    pub loss: Option<f64>,
}

/// A file recently published.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RecentFile {
    /// When (RFC 3339).
    pub time: String,
    /// Its path in the share.
    pub path: String,
    /// Its size.
    pub size: u64,
}

/// A recent loss.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RecentLoss {
    /// When (RFC 3339).
    pub time: String,
    /// The path, or the object or session when the name is unknown.
    pub what: String,
    /// Objects the record stands for.
    pub objects: u64,
    /// Why.
    pub reason: String,
}

/// What the manifest holds: counted over all its records when the receiver starts, then kept up
/// as it writes, so that a restart forgets no loss.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Tally {
    /// Files published.
    pub delivered: u64,
    /// Their bytes.
    pub delivered_bytes: u64,
    /// Copies of files already published.
    pub repeats: u64,
    /// Objects lost (named or not).
    pub lost: u64,
    /// Data shards rebuilt from parity in published files.
    pub repaired: u64,
    /// Files removed by retention.
    pub removed: u64,
    /// The last published files, oldest first.
    pub recent_files: VecDeque<RecentFile>,
    /// The last losses, oldest first.
    pub recent_losses: VecDeque<RecentLoss>,
}

/// The live state file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct State {
    /// Receiver process id.
    pub pid: u32,
    /// Its version and commit.
    pub version: String,
    /// When it started (RFC 3339).
    pub started: String,
    /// The same, seconds since the Unix epoch.
    pub started_unix: u64,
    /// When this was written (RFC 3339).
    pub updated: String,
    /// The same, seconds since the Unix epoch.
    pub updated_unix: u64,
    /// True once the receiver stopped cleanly.
    pub stopped: bool,
    /// Address it listens on.
    pub bind: String,
    /// Datagrams are authenticated by a key (false: the operator ran it with
    /// `--allow-unauthenticated` and no key).
    pub authenticated: bool,
    /// Ids of the keys it accepts datagrams from.
    pub key_ids: Vec<u32>,
    /// The link.
    pub link: Link,
    /// Since when (RFC 3339).
    pub link_since: Option<String>,
    /// Last heartbeat (RFC 3339).
    pub last_heartbeat: Option<String>,
    /// Sender sessions heard (the current one last).
    pub sessions: Vec<SessionView>,
    /// Sender restarts seen.
    pub sender_restarts: u64,
    /// Times the link went down.
    pub link_downs: u64,
    /// Datagrams received.
    pub datagrams: u64,
    /// Datagrams failing CRC or format checks.
    pub malformed: u64,
    /// Datagrams dropped because the receive loop fell behind.
    pub dropped_behind: u64,
    /// Datagrams the kernel dropped because the socket's receive buffer was full.
    pub kernel_overflows: u64,
    /// Datagrams refused by authentication (forged, replayed, unauthenticated).
    pub refused_auth: u64,
    /// Datagrams of new sessions refused because every session slot held an active sender.
    pub refused_sessions: u64,
    /// What the manifest recorded since start.
    pub tally: Tally,
    /// Manifest records not written (disk below half of `min_free`, or a write error).
    pub manifest_dropped: u64,
    /// The share's filesystem, as last measured.
    pub disk: Option<Disk>,
    /// The manifest's last record: `verify-manifest` checks the chain reaches it.
    pub manifest_seq: u64,
    /// Its hash.
    pub manifest_hash: String,
    /// The last hour, one sample per 10 s.
    pub history: VecDeque<Sample>,
    /// The record channels.
    #[serde(default)]
    pub streams: Vec<StreamView>,
}

/// Space on the share's filesystem.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disk {
    /// Bytes free (for the receiver's user).
    pub free_bytes: u64,
    /// The free space the receiver always leaves (`min_free`): files are refused below it.
    pub min_free_bytes: u64,
}

/// One record channel as the receiver last wrote it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamView {
    /// The channel (its folder in the share).
    pub name: String,
    /// Records written since the receiver started.
    pub records: u64,
    /// Batches taken in.
    pub batches: u64,
    /// Gaps marked.
    pub gaps: u64,
    /// Records lost in them.
    pub missing: u64,
    /// Records that came again and were dropped.
    pub duplicates: u64,
    /// The next sequence number to write.
    pub next_seq: Option<u64>,
    /// From the sender taking the last record written to its writing, milliseconds (by the two
    /// hosts' clocks).
    pub lag_ms: Option<u64>,
}

impl State {
    /// The live state last written into the state folder `state`, if any.
    pub fn read(state: &Path) -> Option<State> {
        serde_json::from_slice(&std::fs::read(state.join(FILE)).ok()?).ok()
    }

    /// The manifest's end as last written.
    pub fn chain_end(&self) -> ChainEnd {
        ChainEnd {
            seq: self.manifest_seq,
            hash: self.manifest_hash.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_older_file_with_positional_recent_entries_still_reads() {
        let old = r#"{"pid":7,"link":"up","tally":{"delivered":1,"recent_files":[["t","a.bin",3]],"recent_losses":[["t","b.bin",1,"why"]]}}"#;
        let s: State = serde_json::from_str(old).unwrap();
        assert_eq!(s.link, Link::Up);
        assert_eq!(s.tally.recent_files[0].path, "a.bin");
        assert_eq!(s.tally.recent_losses[0].reason, "why");
        let back: State = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
    }
}
