//! The producer thread: reads, hashes and encodes files ahead of the transmitter.
//!
//! It runs on its own thread and hands finished batches through a bounded channel, so disk reads,
//! hashing and parity computation never stall the paced output; when the link is slower than the
//! disk, the channel fills and the producer simply waits.

use std::fs::File;
use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::SyncSender;
use std::time::UNIX_EPOCH;

use anyhow::{Context, Result};
use checkvalve_common::interleave::{Batch, InterleaveParams, Interleaver};
use checkvalve_common::meta::{Head, ObjectKind};
use checkvalve_common::object::{DataBlock, FecParams, ObjectEncoder};
use tracing::{debug, error, warn};

use crate::walk::Entry;

/// What the producer did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Produced {
    /// Files fully encoded.
    pub files: u64,
    /// Content bytes encoded.
    pub bytes: u64,
    /// Files that could not be read in full.
    pub failed: u64,
}

/// Encodes `entries` as objects `0..` of `session` and sends the batches to `tx`.
pub fn produce(
    session: u64,
    entries: Vec<Entry>,
    fec: FecParams,
    interleave: InterleaveParams,
    tx: SyncSender<Batch>,
    stop: Arc<AtomicBool>,
) -> Produced {
    let mut inter = Interleaver::new(interleave);
    let mut out = Produced::default();
    let mut next_object = 0u64;
    let mut blocks = Vec::new();
    for entry in entries {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let result = encode_file(session, next_object, &entry, fec, &mut blocks, |blocks| {
            forward(&mut inter, blocks, &tx)
        });
        match result {
            Ok(Some(size)) => {
                next_object += 1;
                out.files += 1;
                out.bytes += size;
                debug!(file = %entry.name, size, "encoded");
            }
            Ok(None) => out.failed += 1,
            Err(e) => {
                // The head went out already: the receiver will report this object lost by name.
                next_object += 1;
                out.failed += 1;
                error!(file = %entry.name, "not sent in full: {e:#}");
            }
        }
        if forward(&mut inter, &mut blocks, &tx).is_err() {
            return out;
        }
    }
    if let Ok(Some(batch)) = inter.flush() {
        let _ = tx.send(batch);
    }
    out
}

/// Moves `blocks` into the interleaver and any sealed batch into the channel.
fn forward(
    inter: &mut Interleaver,
    blocks: &mut Vec<DataBlock>,
    tx: &SyncSender<Batch>,
) -> Result<()> {
    for b in blocks.drain(..) {
        if let Some(batch) = inter.push(b).context("parity encoding failed")? {
            tx.send(batch).context("transmitter stopped")?;
        }
    }
    Ok(())
}

/// Encodes one file. `Ok(None)`: refused before anything was sent; `Err`: failed part-way.
fn encode_file(
    session: u64,
    object: u64,
    entry: &Entry,
    fec: FecParams,
    blocks: &mut Vec<DataBlock>,
    mut flush: impl FnMut(&mut Vec<DataBlock>) -> Result<()>,
) -> Result<Option<u64>> {
    let opened = File::open(&entry.source).and_then(|f| {
        let m = f.metadata()?;
        Ok((f, m))
    });
    let (mut file, meta) = match opened {
        Ok(x) => x,
        Err(e) => {
            error!(file = %entry.name, "cannot open: {e}");
            return Ok(None);
        }
    };
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok());
    let head = Head {
        path: entry.name.clone(),
        size: meta.len(),
        mtime_secs: mtime.map_or(0, |d| d.as_secs() as i64),
        mtime_nanos: mtime.map_or(0, |d| d.subsec_nanos()),
        kind: ObjectKind::File,
    };
    let (mut enc, head_block) = match ObjectEncoder::new(session, object, &head, fec) {
        Ok(x) => x,
        Err(e) => {
            error!(file = %entry.name, "refused: {e}");
            return Ok(None);
        }
    };
    blocks.push(head_block);
    let mut buf = vec![0u8; enc.block_stride()];
    let mut left = head.size;
    while left > 0 {
        let want = (buf.len() as u64).min(left) as usize;
        file.read_exact(&mut buf[..want])
            .with_context(|| format!("file shrank or became unreadable with {left} bytes to go"))?;
        enc.push(&buf[..want], blocks)?;
        left -= want as u64;
        flush(blocks)?;
    }
    enc.finish(blocks)?;
    if let Ok(after) = std::fs::metadata(&entry.source)
        && (after.len() != meta.len() || after.modified().ok() != meta.modified().ok())
    {
        warn!(file = %entry.name, "changed while being sent: the receiver gets the bytes read, verified as read");
    }
    Ok(Some(head.size))
}
