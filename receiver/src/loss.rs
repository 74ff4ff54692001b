//! Why an object will not be delivered, as a type: each reason is decided where it arises (the
//! assembler, the disk, verification, publication), and its text is the manifest record's `reason`.

use std::io;

use checkvalve_common::assembler::Abandon;
use checkvalve_common::repair::RepairError;
use thiserror::Error;

use crate::share::PublishError;

/// Why an object will not be delivered.
#[derive(Debug, Error)]
pub enum LossReason {
    /// The assembler gave it up.
    #[error("{0}")]
    Abandoned(Abandon),
    /// The assembler gave it up, and its session was never heard by heartbeat (anyone can forge
    /// shards in numbers, so such losses are recorded in aggregate).
    #[error("{reason} (from a session never heard by heartbeat; first name {first_name:?})")]
    NeverHeard {
        /// Why it was given up.
        reason: Abandon,
        /// The first name such an object carried.
        first_name: String,
    },
    /// Objects of which not one datagram arrived.
    #[error("not one datagram arrived")]
    NothingArrived,
    /// The output filesystem cannot hold it beside everything in progress and `--min-free`.
    #[error(
        "not enough disk space ({free} bytes free; {size} needed with {reserved} in progress and --min-free {min_free})"
    )]
    DiskSpace {
        /// Bytes free.
        free: u64,
        /// The object's size.
        size: u64,
        /// Bytes reserved for objects in progress before it.
        reserved: u64,
        /// Space always left free.
        min_free: u64,
    },
    /// Its temporary file could not be created.
    #[error("cannot create temporary file: {0}")]
    CreateTemp(#[source] io::Error),
    /// Its temporary file could not be written.
    #[error("cannot write temporary file: {0}")]
    WriteTemp(#[source] io::Error),
    /// The data shards a rebuild needs could not be read back.
    #[error("cannot read back data shards: {0}")]
    ReadBack(#[source] io::Error),
    /// A striped block could not be rebuilt.
    #[error("cannot rebuild a block: {0}")]
    Rebuild(#[source] RepairError),
    /// The content's SHA-256 is not the sender's.
    #[error("not published: SHA-256 mismatch: content is not what was sent")]
    DigestMismatch,
    /// The content could not be read to verify it.
    #[error("not published: cannot verify: {0}")]
    Unverifiable(#[source] io::Error),
    /// Its head says it is a record batch, but not one a channel can take.
    #[error("not a record batch a channel takes: {0}")]
    NotRecords(#[source] checkvalve_common::stream::batch::BatchError),
    /// It verified, but could not be moved into the share.
    #[error("not published: {0}")]
    NotPublished(#[source] PublishError),
}
