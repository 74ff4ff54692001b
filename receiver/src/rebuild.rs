//! The rebuilding stage: striped blocks' missing data shards are read back, decoded and written
//! here, beside the writer, so that a lossy link does not slow the writing of what arrived.
//!
//! The writer hands a batch over only once it has written everything before it (so the shards
//! it reads are on disk), and waits for an object's batches before completing or discarding it
//! (so its digest covers the rebuilt shards). Rebuilt shards go straight to the hasher, which
//! takes content in any order.

use std::os::unix::fs::FileExt;
use std::sync::mpsc::{Receiver, Sender, SyncSender};

use checkvalve_common::fec::Fec;
use checkvalve_common::repair::Rows;

use crate::outcome::LossReason;
use crate::pipeline::messages::{RebuildDone, RebuildJob, ToHash};

/// Runs jobs until the channel closes.
pub fn run(jobs: Receiver<RebuildJob>, done: Sender<RebuildDone>, hash: SyncSender<ToHash>) {
    let mut rebuilder = Rebuilder::default();
    for job in jobs {
        let _ = done.send(rebuilder.job(&hash, &job));
    }
}

/// The codec and the decode buffer, kept from one job to the next.
#[derive(Default)]
pub struct Rebuilder {
    fec: Fec,
    buf: Vec<u8>,
}

impl Rebuilder {
    /// Rebuilds one job's blocks, sending the rebuilt shards to the hasher.
    pub fn job(&mut self, hash: &SyncSender<ToHash>, job: &RebuildJob) -> RebuildDone {
        RebuildDone {
            key: job.key,
            error: rebuild(&mut self.fec, &mut self.buf, hash, job).err(),
        }
    }
}

/// Rebuilds a job's blocks, reading neighbouring blocks' shards row by row.
fn rebuild(
    fec: &mut Fec,
    buf: &mut Vec<u8>,
    hash: &SyncSender<ToHash>,
    job: &RebuildJob,
) -> Result<(), LossReason> {
    let file = &job.file;
    let mut rest = job.repairs.as_slice();
    while !rest.is_empty() {
        let (batch, after) = rest.split_at(Rows::batch_len(rest).max(1));
        rest = after;
        let rows = if batch.len() > 1 {
            Some(Rows::read(batch, |buf, at| file.read_at(buf, at)).map_err(LossReason::ReadBack)?)
        } else {
            None
        };
        let mut shards = Vec::new();
        for repair in batch {
            let rebuilt = repair
                .rebuild(fec, std::mem::take(buf), |buf, at| {
                    if rows.as_ref().is_some_and(|r| r.get(buf, at)) {
                        Ok(())
                    } else {
                        file.read_exact_at(buf, at)
                    }
                })
                .map_err(LossReason::Rebuild)?;
            for (at, bytes) in rebuilt.shards() {
                file.write_all_at(bytes, at)
                    .map_err(LossReason::WriteTemp)?;
                shards.push((at, bytes.to_vec()));
            }
            *buf = rebuilt.into_buffer();
        }
        if !shards.is_empty() {
            let _ = hash.send(ToHash::Rebuilt {
                key: job.key,
                shards,
            });
        }
    }
    Ok(())
}
