//! Outcomes: what became of each object, and the one place that turns an outcome into its log
//! line and its manifest record (the counters follow from the record).
//!
//! Every loss carries a [`LossReason`]; its text is the record's `reason` (docs/vendor.md).

use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use checkvalve_common::assembler::{Abandon, ObjectKey};
use checkvalve_common::repair::RepairError;
use thiserror::Error;
use tracing::{error, info, warn};

use crate::manifest::{Manifest, Verified};
use crate::pipeline::messages::Completed;
use crate::ratelimit::Limiter;
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
    /// It verified, but could not be moved into the share.
    #[error("not published: {0}")]
    NotPublished(#[source] PublishError),
}

/// What became of an object.
pub enum Outcome<'a> {
    /// It verified: published, a repeat, or superseded.
    Verified {
        /// Which.
        how: Verified,
        /// The object.
        object: &'a Completed,
    },
    /// It will not be delivered (objects lost without a name are recorded in aggregate, by
    /// the receive loop).
    Lost {
        /// The object.
        key: ObjectKey,
        /// Its path.
        path: &'a str,
        /// Its size, when its head arrived.
        size: Option<u64>,
        /// Why.
        reason: &'a LossReason,
    },
}

/// Lost objects logged by name at most this many times per [`LOG_WINDOW`] (all are recorded).
const LOGGED_LOSSES: u32 = 100;
/// The window of that limit.
const LOG_WINDOW: Duration = Duration::from_secs(10);

/// Writes each outcome's log line and manifest record; shared by the stages that decide them.
pub struct Recorder {
    manifest: Arc<Manifest>,
    losses: Mutex<Limiter>,
}

impl Recorder {
    /// A recorder into `manifest`.
    pub fn new(manifest: Arc<Manifest>) -> Recorder {
        Recorder {
            manifest,
            losses: Mutex::new(Limiter::new(LOG_WINDOW, LOGGED_LOSSES)),
        }
    }

    /// Logs and records `outcome`.
    pub fn record(&self, outcome: Outcome<'_>) {
        match outcome {
            Outcome::Verified { how, object: o } => {
                let (object, head) = (o.key.to_string(), &o.head);
                match how {
                    Verified::Delivered => {
                        info!(path = %head.path, size = head.size, object, "delivered")
                    }
                    Verified::Repeat => {
                        info!(path = %head.path, size = head.size, object, "repeat: the share already holds this content")
                    }
                    Verified::Superseded => {
                        warn!(path = %head.path, object, "not published: newer content for this path was already published")
                    }
                }
                self.manifest
                    .verified(how, &object, head, &o.digest, &o.evidence);
            }
            Outcome::Lost {
                key,
                path,
                size,
                reason,
            } => {
                let allowed = self
                    .losses
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .allow();
                if let Some(suppressed) = allowed {
                    error!(path = %path, object = %key, suppressed, "lost: {reason}");
                }
                self.manifest
                    .lost(&key.to_string(), 1, Some(path), size, reason.to_string());
            }
        }
    }
}
