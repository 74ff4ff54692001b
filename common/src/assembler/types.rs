//! The assembler's public types: its limits, how objects are named and ordered, and what it
//! reports.

use std::fmt;
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::link_state::LinkChange;
use crate::meta::{DIGEST_LEN, Head, MetaError};
use crate::repair::Repair;
use crate::wire::Heartbeat;

/// A block still incomplete once its session has sent this many blocks' worth of shards since it
/// started (`STALE_BLOCKS * n` shards heard, for its `n` shards per block) is given up when memory
/// runs short: the reference sender keeps a block open over one interleaving group (at most 64
/// blocks), so this is two groups. Shards heard, not blocks decoded, because when memory is full
/// nothing decodes, and a clock that stops then would keep the dead blocks forever.
pub const STALE_BLOCKS: u64 = 128;
/// Bytes of a striped object's content gathered before they go to disk as one write.
pub const RUN_BYTES: usize = 128 << 10;
/// Shortest heartbeat interval a receiver believes; a shorter announced one is raised to it.
pub const MIN_HEARTBEAT_INTERVAL: Duration = Duration::from_millis(100);
/// Longest heartbeat interval a receiver believes, so that no sender can switch off the silence
/// alarm by announcing a huge interval.
pub const MAX_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(60);

/// Limits and timeouts of the assembler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AssemblerConfig {
    /// An object with no new datagram for this long is abandoned as lost.
    pub object_timeout: Duration,
    /// Most bytes held for blocks and objects in progress, counted as allocated.
    pub max_pending_bytes: usize,
    /// Most objects in progress at once.
    pub max_objects: usize,
    /// Largest content length accepted.
    pub max_content_len: u64,
    /// Most sender sessions tracked at once.
    pub max_sessions: usize,
    /// Which names the share accepts.
    pub names: crate::meta::NamePolicy,
    /// Shortest silence reported as a silent link (raised to three heartbeat intervals unless
    /// `fixed_silence`).
    pub silence: Duration,
    /// Report a silent link after exactly `silence`, whatever the heartbeat interval.
    pub fixed_silence: bool,
}

impl Default for AssemblerConfig {
    fn default() -> Self {
        AssemblerConfig {
            object_timeout: Duration::from_secs(10),
            max_pending_bytes: 192 << 20,
            max_objects: 1024,
            max_content_len: 1 << 40,
            max_sessions: 16,
            names: crate::meta::NamePolicy::Portable,
            silence: Duration::from_secs(3),
            fixed_silence: false,
        }
    }
}

/// Identifies an object: sender session and object number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    /// Sender session.
    pub session: u64,
    /// Object number.
    pub object: u64,
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}-{}", self.session, self.object)
    }
}

/// Where an object stands in its senders' own order: when two objects carry the same path, the
/// greater one is the newer content. Sessions are ordered by when they were first heard (a sender
/// restart is a later session), objects within a session by number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Precedence {
    /// Order in which the session was first heard by this receiver.
    pub session_ordinal: u64,
    /// Object number within the session.
    pub object: u64,
}

/// How an object crossed: for the manifest's evidence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Crossing {
    /// When its first datagram arrived.
    pub first_datagram: Instant,
    /// When the datagram that completed it arrived.
    pub last_datagram: Instant,
    /// Data shards rebuilt from parity (zero: every data shard arrived).
    pub repaired: u64,
}

/// Why an object was given up.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Abandon {
    /// No datagram for the object within the timeout while blocks were still missing.
    #[error("timed out with {blocks_missing} of {blocks_total} blocks missing")]
    Timeout {
        /// Blocks not decoded.
        blocks_missing: u64,
        /// Blocks in the object.
        blocks_total: u64,
    },
    /// The metadata head was refused.
    #[error("{0}")]
    BadMetadata(MetaError),
    /// The object is larger than the receiver accepts.
    #[error("content of {content_len} bytes exceeds the limit")]
    TooLarge {
        /// Announced content length.
        content_len: u64,
    },
    /// Too many sessions: this idle one's objects were dropped to make room.
    #[error("session evicted to make room for another")]
    SessionEvicted,
    /// Enough shards arrived, with valid CRCs, yet they do not decode: forged or mis-sent.
    #[error("shards do not decode (forged or mis-sent)")]
    Undecodable,
    /// Not one datagram of the object arrived; the sender's announcement named it.
    #[error("not one datagram of it arrived (named by the sender's announcement)")]
    NothingArrived,
    /// Given up to make room for another session: its own held more than its fair share.
    #[error("given up to make room for another sender (this one held more than its share)")]
    Preempted,
    /// The receiver was stopped before the object was complete.
    #[error("receiver stopped before the object was complete")]
    ReceiverStopped,
    /// Memory ran short while a block of the object had waited, incomplete, while many later
    /// shards of its session arrived: its missing shards are not coming.
    #[error(
        "block {block} cannot be completed (its shards stopped arriving while {waited} later shards of its sender arrived)"
    )]
    Unrecoverable {
        /// The block.
        block: u32,
        /// Shards of the session heard since the block started.
        waited: u64,
    },
}

/// What the assembler has to report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A sender session identified itself (a heartbeat or a valid metadata head) for the first time.
    SessionStarted {
        /// The session.
        session: u64,
        /// Lowest object number heard; earlier objects were sent before we listened, unless
        /// `after_us` (then they are tracked as missing).
        first_object: u64,
        /// The session started after this receiver (estimated from its heartbeats).
        after_us: bool,
    },
    /// The link state changed.
    Link(LinkChange),
    /// A sender said how far its record channels have been sent (stream tails, §2.5).
    Tails {
        /// The session.
        session: u64,
        /// Each channel (its name unchecked), one past its last record sent, and that record's
        /// sender time.
        tails: Vec<(String, u64, i64)>,
    },
    /// The metadata head of an object was decoded and accepted.
    Head {
        /// The object.
        key: ObjectKey,
        /// Its metadata.
        head: Head,
    },
    /// Decoded content to write at `offset` of the object's file.
    Content {
        /// The object.
        key: ObjectKey,
        /// Offset within the content.
        offset: u64,
        /// The bytes.
        data: Vec<u8>,
    },
    /// A block of a striped object lost data shards: read back those that arrived (written by
    /// earlier [`Event::Content`]s), rebuild the others and write them.
    Repair {
        /// The object.
        key: ObjectKey,
        /// The block: where its shards sit and the parity that rebuilds them.
        repair: Repair,
    },
    /// Every block decoded: the caller verifies the digest and publishes.
    Complete {
        /// The object.
        key: ObjectKey,
        /// Its metadata.
        head: Head,
        /// SHA-256 of the content as computed by the sender.
        digest: [u8; DIGEST_LEN],
        /// Its place in the senders' order, to settle two objects with one path.
        precedence: Precedence,
        /// When it arrived and how much was repaired.
        crossing: Crossing,
    },
    /// The object will not complete; its content so far must be discarded.
    Abandoned {
        /// The object.
        key: ObjectKey,
        /// Its path, when the metadata head was decoded or the sender announced it.
        path: Option<String>,
        /// Its size, known the same ways.
        size: Option<u64>,
        /// Why.
        reason: Abandon,
        /// A heartbeat or an announcement of the session was heard: a sender, not only shards (which anyone can forge
        /// in numbers); the receiver records losses of unheard sessions in aggregate.
        sender_heard: bool,
    },
    /// Objects of which not one datagram arrived (objects `first..=last`).
    Missing {
        /// The session.
        session: u64,
        /// First missing object number.
        first: u64,
        /// Last missing object number.
        last: u64,
    },
}

/// Running counters, for logs and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Datagrams handed in.
    pub datagrams: u64,
    /// Datagrams rejected by the wire checks (CRC, magic, version, flags, lengths).
    pub malformed: u64,
    /// Shards inconsistent with what earlier shards said of their object or block.
    pub inconsistent: u64,
    /// Shards already held, or for blocks already decoded.
    pub duplicate: u64,
    /// Shards for objects already completed or abandoned.
    pub late: u64,
    /// Shards dropped because the memory or object bounds were reached.
    pub over_budget: u64,
    /// Datagrams of a new session dropped because every session slot holds an active session.
    pub refused_sessions: u64,
    /// Idle sessions forgotten to make room for a new one.
    pub evicted_sessions: u64,
    /// Blocks in progress dropped from a session holding more than its fair share of the budget,
    /// to make room for another session.
    pub preempted_blocks: u64,
    /// Heartbeats accepted.
    pub heartbeats: u64,
    /// Blocks decoded.
    pub blocks_decoded: u64,
    /// Data shards of the blocks decoded (the link's loss is measured on them: see [`crate::shed`]).
    pub data_shards_due: u64,
    /// Of those, the ones that never arrived and were rebuilt from parity.
    pub data_shards_rebuilt: u64,
    /// Objects completed.
    pub objects_complete: u64,
    /// Objects abandoned or missing (saturating: a forged numbering can claim any count).
    pub objects_lost: u64,
}

/// What one session's heartbeats and datagrams say about the link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionStats {
    /// The session.
    pub session: u64,
    /// Valid datagrams received from it.
    pub received: u64,
    /// The last heartbeat heard.
    pub last_heartbeat: Option<Heartbeat>,
}
