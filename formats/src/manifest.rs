//! The manifest (`STATE/manifest/YYYY-MM-DD.jsonl`): one JSON line per outcome or link event,
//! each chained to the previous one by its SHA-256 (`prev`). docs/vendor.md lists the statuses.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// `prev` of the first record ever written.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The folder of the manifest's files inside the state folder.
pub const DIR: &str = "manifest";

/// What a record says: an object's outcome or an event on the link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// A file verified and published.
    Delivered,
    /// A file verified whose content the share already held under its path.
    Repeat,
    /// A file verified whose path already holds newer content (by the senders' order).
    Superseded,
    /// One object (or, in an aggregate record, `objects` of them) that will not be delivered.
    Lost,
    /// A published file removed by retention.
    Removed,
    /// Datagrams arrive (again).
    LinkUp,
    /// No datagram, not even a heartbeat, for the link-down time.
    LinkDown,
    /// A new sender session after another.
    SenderRestart,
    /// The first sender session heard.
    SessionStart,
    /// Datagram loss measured from a session's heartbeats over an interval.
    Loss,
    /// A record cut by a crash was removed at start.
    Torn,
    /// At start, the manifest ended before (or elsewhere than) where the receiver had last written:
    /// its newest records were removed or changed. `verify-manifest` fails while it is there.
    ChainBreak,
    /// Datagrams of new sessions refused over an interval: every session slot held a sender
    /// that may not give way.
    SessionsRefused,
    /// Records of a stream channel lost for good: `missing` of them, where the marker line stands.
    StreamGap,
}

impl Status {
    /// The name written in the record.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Delivered => "delivered",
            Status::Repeat => "repeat",
            Status::Superseded => "superseded",
            Status::Lost => "lost",
            Status::Removed => "removed",
            Status::LinkUp => "link_up",
            Status::LinkDown => "link_down",
            Status::SenderRestart => "sender_restart",
            Status::SessionStart => "session_start",
            Status::Loss => "loss",
            Status::Torn => "torn",
            Status::ChainBreak => "chain_break",
            Status::SessionsRefused => "sessions_refused",
            Status::StreamGap => "stream_gap",
        }
    }

    /// An event on the link or of a session, not an object's outcome.
    pub fn is_event(self) -> bool {
        matches!(
            self,
            Status::LinkUp
                | Status::LinkDown
                | Status::SenderRestart
                | Status::SessionStart
                | Status::Loss
                | Status::Torn
                | Status::ChainBreak
                | Status::SessionsRefused
                | Status::StreamGap
        )
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// One line of the manifest. Field order is the order written; `prev` comes last.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Position in the chain, from 1.
    pub seq: u64,
    /// When the outcome was decided (RFC 3339, UTC).
    pub time: String,
    /// What the record says.
    pub status: Status,
    /// Path under the output folder, when known.
    pub path: Option<String>,
    /// Content length, when known.
    pub size: Option<u64>,
    /// SHA-256 of the content, hex.
    pub sha256: Option<String>,
    /// Sender session and object number (`SESSION-OBJECT`), or the session alone.
    pub object: Option<String>,
    /// Objects the record stands for (1 but for aggregate records of unnamed losses).
    pub objects: u64,
    /// Arrival of the object's first datagram.
    pub first_datagram: Option<String>,
    /// Arrival of the datagram that completed it.
    pub last_datagram: Option<String>,
    /// Data shards rebuilt from parity.
    pub repaired: Option<u64>,
    /// Why it was lost, superseded, removed, or what happened on the link.
    pub reason: Option<String>,
    /// Figures of a link event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<Detail>,
    /// SHA-256 (hex) of the previous record's line, without its newline.
    pub prev: String,
}

/// Figures of a link or session event, by kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Detail {
    /// `loss`: datagrams the session's sender said it sent over the interval, and received.
    Loss {
        /// Sent, by the sender's heartbeats.
        sent: u64,
        /// Received.
        received: u64,
        /// `1 - received / sent`.
        loss: f64,
    },
    /// `sender_restart`: the session before.
    Restart {
        /// Its id, hex.
        previous: String,
        /// The new session started after this receiver.
        after_us: bool,
    },
    /// `session_start`.
    Start {
        /// The session started after this receiver.
        after_us: bool,
    },
    /// `link_up` after a time down.
    Up {
        /// Seconds the link was down.
        down_for_s: f64,
    },
    /// `link_down`.
    Down {
        /// Seconds without a datagram.
        silent_for_s: f64,
    },
    /// `sessions_refused`: datagrams of new sessions refused over the interval.
    Refused {
        /// Datagrams refused.
        refused_datagrams: u64,
        /// Sessions the table held.
        sessions_held: u64,
    },
    /// `stream_gap`: the records of a channel that will never be delivered.
    Gap {
        /// The channel.
        channel: String,
        /// The first sequence number missing.
        first_seq: u64,
        /// How many are missing.
        missing: u64,
    },
    /// `chain_break`: where the chain had reached, and where it was found to end.
    Break {
        /// The last record the receiver had written.
        expected_seq: u64,
        /// The last record found at start.
        found_seq: u64,
    },
}

impl Record {
    /// Parses one line; `None` if it is not a record.
    pub fn parse(line: &[u8]) -> Option<Record> {
        serde_json::from_slice(line).ok()
    }
}

/// The end of the chain: the last record's number and hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainEnd {
    /// Its `seq` (0: no record yet).
    pub seq: u64,
    /// SHA-256 of its line, hex.
    pub hash: String,
}

impl ChainEnd {
    /// The end of an empty manifest.
    pub fn genesis() -> ChainEnd {
        ChainEnd {
            seq: 0,
            hash: GENESIS.to_owned(),
        }
    }
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of a record line (without its newline), hex.
pub fn line_hash(line: &[u8]) -> String {
    hex(&Sha256::digest(line))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_reads_back_as_written_and_statuses_keep_their_names() {
        let line = r#"{"seq":3,"time":"2026-11-30T10:00:00.000Z","status":"loss","path":null,"size":null,"sha256":null,"object":"00000000000000ab","objects":0,"first_datagram":null,"last_datagram":null,"repaired":null,"reason":"x","detail":{"sent":10,"received":9,"loss":0.1},"prev":"00"}"#;
        let r = Record::parse(line.as_bytes()).expect("parses");
        assert_eq!(r.status, Status::Loss);
        assert_eq!(
            r.detail,
            Some(Detail::Loss {
                sent: 10,
                received: 9,
                loss: 0.1
            })
        );
        assert_eq!(serde_json::to_string(&r).unwrap(), line);
        for s in [Status::SenderRestart, Status::LinkDown, Status::Delivered] {
            assert_eq!(
                serde_json::to_string(&s).unwrap(),
                format!("\"{}\"", s.as_str())
            );
        }
    }
}
