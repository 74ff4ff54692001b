//! The publishing stage: verified objects are moved into the share, off the receive path, in
//! lanes whose threads and bounded queues [`crate::pipeline`] makes.
//!
//! Small files and large ones take separate lanes, so that small files are never held up behind
//! the syncing of a huge one. Small files take several lanes: publishing one waits for two
//! flushes to disk (the file, then its folder), and flushes of different files overlap (the
//! filesystem commits them together), files of one folder included. A path always takes the same
//! lane, whatever the case of its letters, so that two versions of it are published in the order
//! they completed; the share checks precedence and case clashes under its own lock at the rename.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender};

use checkvalve_common::meta::ObjectKind;

use tracing::error;

use crate::manifest::Verified;
use crate::outcome::{LossReason, Outcome, Recorder};
use crate::pipeline::messages::{PublishJob, ToStreams};
use crate::share::{PublishError, Published, Share};

/// Files at least this large go to the large-file lane.
const LARGE: u64 = 16 << 20;
/// Lanes for small files.
pub const SMALL_LANES: usize = 4;
/// Jobs queued per lane at most. A job holds its temporary file open: the lanes' bounds cap the
/// files open for publication (with the objects in progress, well under the descriptor limit);
/// a full lane holds up the hasher, and so, in turn, the writer and the receive loop.
pub const LANE_QUEUE: usize = 256;

/// Where verified objects are queued: one queue per lane, and record batches to the channels'
/// stage.
pub struct Publisher {
    small: Vec<SyncSender<PublishJob>>,
    large: SyncSender<PublishJob>,
    streams: SyncSender<ToStreams>,
    share: Arc<Share>,
}

impl Publisher {
    /// Queues files into the lanes `small` (at least one) and `large`, record batches (read from
    /// their temporary files in `share`) into `streams`.
    pub fn new(
        small: Vec<SyncSender<PublishJob>>,
        large: SyncSender<PublishJob>,
        streams: SyncSender<ToStreams>,
        share: Arc<Share>,
    ) -> Self {
        Publisher {
            small,
            large,
            streams,
            share,
        }
    }

    /// Queues a job on its lane.
    pub fn send(&self, job: PublishJob) {
        let head = &job.object.head;
        if head.kind == ObjectKind::Records {
            let PublishJob { object, mut temp } = job;
            let content = crate::streams::read_content(&mut temp.file, object.head.size);
            self.share.discard(temp);
            match content {
                Ok(content) => {
                    let msg = ToStreams::Batch {
                        channel: object.head.path.clone(),
                        content,
                    };
                    if self.streams.send(msg).is_err() {
                        error!(object = %object.key, "record channels' stage stopped");
                    }
                }
                Err(e) => error!(object = %object.key, "record batch not read back: {e}"),
            }
            return;
        }
        let lane = if head.size >= LARGE || self.small.is_empty() {
            &self.large
        } else {
            &self.small[path_lane(&head.path, self.small.len())]
        };
        if let Err(e) = lane.send(job) {
            error!(object = %e.0.object.key, "publisher stopped");
        }
    }
}

/// The small-file lane of `path`, whatever the case of its letters.
fn path_lane(path: &str, lanes: usize) -> usize {
    let mut h = std::hash::DefaultHasher::new();
    std::hash::Hash::hash(&path.to_lowercase(), &mut h);
    (std::hash::Hasher::finish(&h) % lanes.max(1) as u64) as usize
}

/// Publishes the jobs of one lane until its queue closes.
pub fn run(share: &Share, recorder: &Recorder, jobs: Receiver<PublishJob>) {
    for PublishJob { object, temp } in jobs {
        let how = match share.publish(temp, &object.head, &object.digest, object.precedence) {
            Ok(Published::New(_)) => Verified::Delivered,
            Ok(Published::Repeat) => Verified::Repeat,
            Err(PublishError::Superseded) => Verified::Superseded,
            Err(e) => {
                recorder.record(Outcome::Lost {
                    key: object.key,
                    path: &object.head.path,
                    size: Some(object.head.size),
                    reason: &LossReason::NotPublished(e),
                });
                continue;
            }
        };
        recorder.record(Outcome::Verified {
            how,
            object: &object,
        });
        // The object, and with it its reservation, is dropped here, after its record.
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
