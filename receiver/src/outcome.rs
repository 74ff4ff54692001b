//! Outcomes: what became of each object, and the one place that turns an outcome into its log
//! line and its manifest record (the counters follow from the record).
//!
//! Every loss carries a [`LossReason`]; its text is the record's `reason` (docs/vendor.md).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use checkvalve_common::assembler::ObjectKey;
use tracing::{error, info, warn};

pub use crate::loss::LossReason;
use crate::manifest::{Manifest, Verified};
use crate::pipeline::messages::Completed;
use crate::ratelimit::Limiter;

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
    /// The WARN of a superseded file, which forged older copies could otherwise repeat at will.
    superseded: Mutex<Limiter>,
}

impl Recorder {
    /// The manifest it writes to.
    pub fn manifest(&self) -> &Arc<Manifest> {
        &self.manifest
    }

    /// A recorder into `manifest`.
    pub fn new(manifest: Arc<Manifest>) -> Recorder {
        Recorder {
            manifest,
            losses: Mutex::new(Limiter::new(LOG_WINDOW, LOGGED_LOSSES)),
            superseded: Mutex::new(Limiter::new(LOG_WINDOW, LOGGED_LOSSES)),
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
                        let allowed = self
                            .superseded
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .allow();
                        if let Some(suppressed) = allowed {
                            warn!(path = %head.path, object, suppressed, "not published: newer content for this path was already published");
                        }
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
