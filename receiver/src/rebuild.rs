//! The rebuilding thread: striped blocks' missing data shards are read back, decoded and written
//! here, beside the writer, so that a lossy link does not slow the writing of what arrived.
//!
//! The writer hands a batch over only once it has written everything before it (so the shards
//! it reads are on disk), and waits for an object's batches before completing or discarding it
//! (so its digest covers the rebuilt shards). Rebuilt shards go straight to the hasher, which
//! takes content in any order.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::mpsc::{Receiver, Sender, SyncSender};

use checkvalve_common::assembler::ObjectKey;
use checkvalve_common::fec::Fec;
use checkvalve_common::repair::{Repair, Rows};

use crate::writer::ToHash;

/// Repairs of one object, with a handle on its temporary file.
pub struct Job {
    /// The object.
    pub key: ObjectKey,
    /// Its temporary file.
    pub file: File,
    /// The blocks, in the order they became repairable.
    pub repairs: Vec<Repair>,
}

/// A job finished: `error` says why its object cannot be completed.
pub struct Done {
    /// The object.
    pub key: ObjectKey,
    /// Why the rebuild failed, if it did.
    pub error: Option<String>,
}

/// Runs jobs until the channel closes.
pub fn run(jobs: Receiver<Job>, done: Sender<Done>, hash: SyncSender<ToHash>) {
    let mut fec = Fec::default();
    for job in jobs {
        let error = rebuild(&mut fec, &hash, &job).err();
        let _ = done.send(Done {
            key: job.key,
            error,
        });
    }
}

/// Rebuilds a job's blocks, reading neighbouring blocks' shards row by row.
fn rebuild(fec: &mut Fec, hash: &SyncSender<ToHash>, job: &Job) -> Result<(), String> {
    let file = &job.file;
    let mut rest = job.repairs.as_slice();
    while !rest.is_empty() {
        let (batch, after) = rest.split_at(Rows::batch_len(rest).max(1));
        rest = after;
        let rows = if batch.len() > 1 {
            Some(
                Rows::read(batch, |buf, at| file.read_at(buf, at))
                    .map_err(|e| format!("cannot read back data shards: {e}"))?,
            )
        } else {
            None
        };
        for repair in batch {
            let rebuilt = repair
                .rebuild(fec, |buf, at| {
                    if rows.as_ref().is_some_and(|r| r.get(buf, at)) {
                        Ok(())
                    } else {
                        file.read_exact_at(buf, at)
                    }
                })
                .map_err(|e| format!("cannot rebuild a block: {e}"))?;
            for (at, bytes) in rebuilt.shards() {
                file.write_all_at(bytes, at)
                    .map_err(|e| format!("cannot write temporary file: {e}"))?;
                let _ = hash.send(ToHash::data(job.key, at, bytes.to_vec()));
            }
        }
    }
    Ok(())
}
