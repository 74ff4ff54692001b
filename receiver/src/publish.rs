//! Publisher threads: verify complete objects and move them into the share, off the receive path.
//!
//! Two lanes, so that small files are never held up behind the hashing and syncing of a huge one.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::thread::JoinHandle;

use anyhow::{Context, Result};
use checkvalve_common::assembler::{ObjectKey, Precedence};
use checkvalve_common::meta::{DIGEST_LEN, Head};
use tracing::{error, info, warn};

use crate::manifest::{Evidence, Manifest, Verified};
use crate::share::{PublishError, Published, Share, Temp};

/// Files at least this large go to the large-file lane.
const LARGE: u64 = 16 << 20;

/// A complete object on its way to verification and publication.
pub struct Job {
    /// The object.
    pub key: ObjectKey,
    /// Its metadata.
    pub head: Head,
    /// SHA-256 the sender computed.
    pub digest: [u8; DIGEST_LEN],
    /// Its place in the senders' order.
    pub precedence: Precedence,
    /// How it crossed, for its record.
    pub evidence: Evidence,
    /// The temporary file holding its content.
    pub temp: Temp,
}

/// The publisher lanes.
pub struct Publisher {
    small: Sender<Job>,
    large: Sender<Job>,
    threads: Vec<JoinHandle<()>>,
}

impl Publisher {
    /// Starts the lanes. `reserved` counts bytes of objects not yet published; each lane
    /// releases a job's size once it is done with it.
    pub fn start(
        share: Arc<Share>,
        manifest: Arc<Manifest>,
        reserved: Arc<AtomicU64>,
    ) -> Result<Self> {
        let mut threads = Vec::new();
        let mut lane = |name: &str| -> Result<Sender<Job>> {
            // Unbounded on purpose: a job is a few hundred bytes and an open file already on disk
            // (bounded by the objects in progress), and the receive loop must never wait here.
            let (tx, rx) = std::sync::mpsc::channel();
            let (share, manifest, reserved) = (
                Arc::clone(&share),
                Arc::clone(&manifest),
                Arc::clone(&reserved),
            );
            threads.push(
                std::thread::Builder::new()
                    .name(name.into())
                    .spawn(move || run(&share, &manifest, &reserved, rx))
                    .context("cannot start a publisher thread")?,
            );
            Ok(tx)
        };
        let small = lane("publish-small")?;
        let large = lane("publish-large")?;
        Ok(Publisher {
            small,
            large,
            threads,
        })
    }

    /// Queues a job on its lane.
    pub fn send(&self, job: Job) {
        let lane = if job.head.size >= LARGE {
            &self.large
        } else {
            &self.small
        };
        if let Err(e) = lane.send(job) {
            error!(object = %e.0.key, "publisher stopped");
        }
    }

    /// Publishes what is queued and stops.
    pub fn finish(self) {
        drop(self.small);
        drop(self.large);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

fn run(share: &Share, manifest: &Manifest, reserved: &AtomicU64, jobs: Receiver<Job>) {
    for job in jobs {
        let object = job.key.to_string();
        let (head, digest) = (&job.head, &job.digest);
        match share.publish(job.temp, head, digest, job.precedence) {
            Ok(Published::New(_)) => {
                info!(path = %head.path, size = head.size, object, "delivered");
                manifest.verified(Verified::Delivered, &object, head, digest, &job.evidence);
            }
            Ok(Published::Repeat) => {
                info!(path = %head.path, size = head.size, object, "repeat: the share already holds this content");
                manifest.verified(Verified::Repeat, &object, head, digest, &job.evidence);
            }
            Err(PublishError::Superseded) => {
                warn!(path = %head.path, object, "not published: newer content for this path was already published");
                manifest.verified(Verified::Superseded, &object, head, digest, &job.evidence);
            }
            Err(e) => {
                error!(path = %head.path, object, "lost: not published: {e}");
                manifest.lost(
                    &object,
                    1,
                    Some(&head.path),
                    Some(head.size),
                    format!("not published: {e}"),
                );
            }
        }
        reserved.fetch_sub(head.size, Ordering::Relaxed);
    }
}
