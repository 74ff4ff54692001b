//! The messages between the pipeline's stages, one type per queue (drawn in [`super`]).

use std::fs::File;

use checkvalve_common::assembler::{ObjectKey, Precedence};
use checkvalve_common::meta::{DIGEST_LEN, Head};
use checkvalve_common::repair::Repair;

use super::reservation::Reservation;
use crate::manifest::Evidence;
use crate::share::Temp;

/// A complete object, as the sender described it.
pub struct Completed {
    /// The object.
    pub key: ObjectKey,
    /// Its metadata.
    pub head: Head,
    /// The digest the sender computed.
    pub digest: [u8; DIGEST_LEN],
    /// Its place in the senders' order.
    pub precedence: Precedence,
    /// How it crossed.
    pub evidence: Evidence,
    /// Its disk space, held until its outcome (released when the object is dropped).
    #[expect(dead_code, reason = "held for its drop, never read")]
    pub reservation: Option<Reservation>,
}

/// What the receive loop hands to the writer.
pub enum ToWriter {
    /// Decoded content of an object at `offset`; the buffer goes back to the assembler after.
    Data {
        /// The object.
        key: ObjectKey,
        /// Offset within the content.
        offset: u64,
        /// The bytes (a block buffer).
        data: Vec<u8>,
    },
    /// Striped blocks lost data shards: rebuild them from those written and their parity.
    Repair {
        /// The object.
        key: ObjectKey,
        /// The blocks, in the order they became repairable.
        repairs: Vec<Repair>,
    },
    /// Every block of the object arrived: verify and publish.
    Complete(Completed),
    /// The object was given up (and recorded) by the receive loop: forget it.
    Discard {
        /// The object.
        key: ObjectKey,
    },
}

/// What the hasher is handed, in the order it was written.
pub enum ToHash {
    /// Content written at `offset` (the buffer goes back to the assembler after hashing).
    Data {
        /// The object.
        key: ObjectKey,
        /// Offset within the content.
        offset: u64,
        /// The bytes.
        data: Vec<u8>,
    },
    /// The hasher's own handle on an object's file, before anything it must read back.
    File {
        /// The object.
        key: ObjectKey,
        /// The handle.
        file: File,
    },
    /// Shards the rebuilding thread decoded and wrote, with their offsets: one message per batch.
    Rebuilt {
        /// The object.
        key: ObjectKey,
        /// Offset and bytes of each shard.
        shards: Vec<(u64, Vec<u8>)>,
    },
    /// Every block is written: verify, then publish or refuse.
    Complete {
        /// The object.
        object: Completed,
        /// Its temporary file, or why an empty one (nothing was written) could not be created.
        temp: std::io::Result<Temp>,
    },
    /// The object is given up: drop what is kept to hash it.
    Forget {
        /// The object.
        key: ObjectKey,
    },
}

/// Repairs of one object, with a handle on its temporary file, for the rebuilding thread.
pub struct RebuildJob {
    /// The object.
    pub key: ObjectKey,
    /// Its temporary file.
    pub file: File,
    /// The blocks, in the order they became repairable.
    pub repairs: Vec<Repair>,
}

/// A rebuild job finished: `error` says why its object cannot be completed.
pub struct RebuildDone {
    /// The object.
    pub key: ObjectKey,
    /// Why the rebuild failed, if it did.
    pub error: Option<crate::loss::LossReason>,
}

/// A verified object on its way into the share.
pub struct PublishJob {
    /// The object.
    pub object: Completed,
    /// The temporary file holding its content.
    pub temp: Temp,
}

/// What the record channels' stage is handed ([`crate::streams`]).
pub enum ToStreams {
    /// The verified content of a record batch object of `channel`.
    Batch {
        /// The channel (the object's path).
        channel: String,
        /// The content, checked against the sender's SHA-256.
        content: Vec<u8>,
    },
    /// The sender's tails: each channel (unchecked), one past its last record sent, its time.
    Tails(Vec<(String, u64, i64)>),
}
