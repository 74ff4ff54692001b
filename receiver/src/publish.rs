//! Publisher threads: verify complete objects and move them into the share, off the receive path.
//!
//! Small files and large ones take separate lanes, so that small files are never held up behind
//! the syncing of a huge one. Small files take several lanes: publishing one waits for two
//! flushes to disk (the file, then its folder), and flushes of different files overlap (the
//! filesystem commits them together), files of one folder included. A path always takes the same
//! lane, whatever the case of its letters, so that two versions of it are published in the order
//! they completed; the share checks precedence and case clashes under its own lock at the rename.

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
/// Lanes for small files.
const SMALL_LANES: usize = 4;

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
    small: Vec<Sender<Job>>,
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
        let small = (0..SMALL_LANES)
            .map(|i| lane(&format!("publish-small-{i}")))
            .collect::<Result<Vec<_>>>()?;
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
            &self.small[path_lane(&job.head.path, self.small.len())]
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

/// The small-file lane of `path`, whatever the case of its letters.
fn path_lane(path: &str, lanes: usize) -> usize {
    let mut h = std::hash::DefaultHasher::new();
    std::hash::Hash::hash(&path.to_lowercase(), &mut h);
    (std::hash::Hasher::finish(&h) % lanes.max(1) as u64) as usize
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_keeps_its_lane_and_the_files_of_one_folder_spread_over_them() {
        let lane = |p: &str| path_lane(p, SMALL_LANES);
        assert_eq!(lane("Exports/D1/A.bin"), lane("exports/d1/a.bin"), "case");
        let used: std::collections::HashSet<usize> = (0..40)
            .map(|i| lane(&format!("exports/d1/f{i}.bin")))
            .collect();
        assert_eq!(
            used.len(),
            SMALL_LANES,
            "40 files of one folder over {SMALL_LANES} lanes"
        );
    }
}
