//! Transmission order: parity for a group of blocks, and their shards spread evenly over the group.
//!
//! The sender gathers `depth` blocks (from one object or many), computes their parity, and emits
//! the group so that each block's shards sit at evenly spaced positions. A burst of `B` consecutive
//! lost datagrams inside a group of `T` datagrams then costs a block of `n` shards at most
//! `ceil(B * n / T) + 1` shards; with `depth` equal full blocks this is exactly column order and the
//! bound is `ceil(B / depth)`. Receivers do not depend on this order: any order decodes.

use std::sync::{Arc, Mutex};

use crate::fec::{Fec, FecError};
use crate::object::DataBlock;
use crate::wire::{MAX_SHARDS_PER_BLOCK, SHARD_OVERHEAD};

/// How the sender groups blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InterleaveParams {
    /// Blocks per group.
    pub depth: usize,
    /// A group shorter than this many datagrams gets more parity, so that the tail of a transfer
    /// (or a lone small file) is as hard to wipe out with one burst as a full group.
    pub min_span: usize,
    /// Content bytes a stripe group of a large object spans (0: no striping). An object of more
    /// than `depth` blocks is striped; the sender holds `m / K` of this in parity.
    pub stripe_bytes: u64,
}

impl Default for InterleaveParams {
    fn default() -> Self {
        InterleaveParams {
            depth: 64,
            min_span: 256,
            stripe_bytes: 96 << 20,
        }
    }
}

/// Datagrams ready to send, in transmission order, in one contiguous buffer.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Batch {
    bytes: Vec<u8>,
    ends: Vec<usize>,
    /// Blocks in the batch.
    pub blocks: usize,
    /// One past the highest object number in the batch.
    pub objects_end: u64,
    /// One past the highest object whose last block (its digest) is in the batch: with the
    /// batches before it, every object below this has been sent whole (0 when none ends here).
    pub complete_end: u64,
}

impl Batch {
    /// Appends one datagram.
    pub fn push_with(&mut self, emit: impl FnOnce(&mut Vec<u8>)) {
        emit(&mut self.bytes);
        self.ends.push(self.bytes.len());
    }

    /// Number of datagrams.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// True when the batch holds no datagram.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Total bytes of all datagrams.
    pub fn byte_len(&self) -> usize {
        self.bytes.len()
    }

    /// Runs of consecutive datagrams of one length (the last of a run may be shorter), each as
    /// one contiguous slice with its datagram length and count, at most `max_count` datagrams and
    /// `max_bytes` bytes per run: what one UDP segmentation-offload send carries.
    pub fn runs(&self, max_count: usize, max_bytes: usize) -> Vec<(&[u8], usize, usize)> {
        let mut out = Vec::new();
        let mut start = 0;
        let mut i = 0;
        while i < self.ends.len() {
            let first_end = self.ends[i];
            let seg = first_end - start;
            let mut end = first_end;
            let mut count = 1;
            i += 1;
            while i < self.ends.len() && count < max_count {
                let len = self.ends[i] - end;
                if len > seg || end + len - start > max_bytes {
                    break;
                }
                end = self.ends[i];
                count += 1;
                i += 1;
                if len < seg {
                    break;
                }
            }
            out.push((&self.bytes[start..end], seg, count));
            start = end;
        }
        out
    }

    /// The datagrams, in transmission order.
    pub fn iter(&self) -> impl Iterator<Item = &[u8]> + '_ {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts
            .zip(self.ends.iter().copied())
            .map(|(s, e)| &self.bytes[s..e])
    }
}

/// Batches sent and handed back, to be filled again: a new batch's buffer would be fresh memory,
/// which the kernel zero-fills page by page as it is first written (a sender's largest cost
/// after the codec and SHA-256 when it sends small files). Clones share one store.
#[derive(Debug, Default, Clone)]
pub struct Spares(Arc<Mutex<Vec<Batch>>>);

impl Spares {
    /// Most batches kept: as many as are in flight between producer and transmitter, and two.
    const MAX: usize = 4;

    /// Keeps `batch`, emptied, for reuse (unless enough are kept).
    pub fn give(&self, mut batch: Batch) {
        batch.bytes.clear();
        batch.ends.clear();
        batch.blocks = 0;
        batch.objects_end = 0;
        batch.complete_end = 0;
        let mut kept = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if kept.len() < Self::MAX {
            kept.push(batch);
        }
    }

    /// An empty batch, reused if one was given back.
    pub fn take(&self) -> Batch {
        let mut kept = self.0.lock().unwrap_or_else(|p| p.into_inner());
        kept.pop().unwrap_or_default()
    }
}

/// Groups data blocks, adds parity and orders their shards for transmission.
#[derive(Debug, Default)]
pub struct Interleaver {
    params: InterleaveParams,
    fec: Fec,
    blocks: Vec<DataBlock>,
    sealer: Option<crate::auth::Sealer>,
    spares: Spares,
}

impl Interleaver {
    /// Authenticates (and maybe encrypts) every datagram with `sealer` from now on.
    pub fn seal_with(&mut self, sealer: crate::auth::Sealer) {
        self.sealer = Some(sealer);
    }

    /// Creates an interleaver.
    pub fn new(params: InterleaveParams) -> Self {
        Interleaver {
            params: InterleaveParams {
                depth: params.depth.max(1),
                ..params
            },
            fec: Fec::default(),
            blocks: Vec::new(),
            sealer: None,
            spares: Spares::default(),
        }
    }

    /// Takes its batches from `spares`, where the transmitter gives them back once sent.
    pub fn reuse(&mut self, spares: Spares) {
        self.spares = spares;
    }

    /// Where its batches come from, for a stripe sink to take them from too.
    pub fn spares(&self) -> Spares {
        self.spares.clone()
    }

    /// The sealer every datagram goes through, if any.
    pub fn sealer(&self) -> Option<&crate::auth::Sealer> {
        self.sealer.as_ref()
    }

    /// The stripe (power of two) for an object of `content_len` bytes in blocks of `stride`
    /// bytes, or `None` when it is sent in ordinary groups.
    pub fn stripe_for(&self, content_len: u64, stride: u64) -> Option<u8> {
        let blocks = content_len.div_ceil(stride.max(1));
        (self.params.stripe_bytes > 0 && blocks > self.params.depth as u64)
            .then(|| crate::layout::stripe_for(self.params.stripe_bytes, stride))
    }

    /// Shortest group before parity is raised.
    pub fn min_span(&self) -> usize {
        self.params.min_span
    }

    /// Number of blocks waiting for their group to fill.
    pub fn pending(&self) -> usize {
        self.blocks.len()
    }

    /// Adds a block; returns a batch when the group is full.
    pub fn push(&mut self, block: DataBlock) -> Result<Option<Batch>, FecError> {
        self.blocks.push(block);
        if self.blocks.len() >= self.params.depth {
            self.flush()
        } else {
            Ok(None)
        }
    }

    /// Seals the current group even if it is not full.
    pub fn flush(&mut self) -> Result<Option<Batch>, FecError> {
        if self.blocks.is_empty() {
            return Ok(None);
        }
        let blocks = std::mem::take(&mut self.blocks);
        self.seal(blocks).map(Some)
    }

    fn seal(&mut self, blocks: Vec<DataBlock>) -> Result<Batch, FecError> {
        let span: usize = blocks
            .iter()
            .map(|b| b.data_shards() + usize::from(b.header.parity_shards))
            .sum();
        let boost = self.params.min_span.div_ceil(span.max(1)).max(1);
        let mut coded = Vec::with_capacity(blocks.len());
        let mut order = Vec::new();
        let mut bytes = 0;
        for (i, mut b) in blocks.into_iter().enumerate() {
            let k = b.data_shards();
            let m = (usize::from(b.header.parity_shards) * boost).min(MAX_SHARDS_PER_BLOCK - k);
            b.header.parity_shards = m as u8;
            let l = usize::from(b.header.shard_len);
            let parity = self.fec.encode(&b.data, l, m)?;
            let n = (k + m) as u128;
            for j in 0..k + m {
                // Shard j of a block of n sits at the middle of its 1/n slice of the group.
                let key = (((2 * j as u128 + 1) << 32) / (2 * n)) as u64;
                order.push((key, i, j));
            }
            bytes += (k + m) * (l + SHARD_OVERHEAD);
            coded.push((b, parity));
        }
        order.sort_unstable();
        let mut batch = self.spares.take();
        batch.bytes.reserve(bytes);
        batch.ends.reserve(order.len());
        batch = Batch {
            blocks: coded.len(),
            objects_end: coded
                .iter()
                .map(|(b, _)| b.header.object + 1)
                .max()
                .unwrap_or(0),
            complete_end: coded
                .iter()
                .filter(|(b, _)| {
                    crate::layout::Geometry::from_header(&b.header)
                        .is_ok_and(|g| u64::from(b.header.block) + 1 == g.block_count())
                })
                .map(|(b, _)| b.header.object + 1)
                .max()
                .unwrap_or(0),
            ..batch
        };
        for (_, i, j) in order {
            let (b, parity) = &coded[i];
            let l = usize::from(b.header.shard_len);
            let k = b.data_shards();
            let payload = if j < k {
                &b.data[j * l..(j + 1) * l]
            } else {
                &parity[(j - k) * l..(j - k + 1) * l]
            };
            let header = crate::wire::ShardHeader {
                shard: j as u8,
                ..b.header
            };
            let sealer = self.sealer.as_ref();
            batch.push_with(|out| {
                let start = out.len();
                header.emit(payload, out);
                if let Some(s) = sealer {
                    s.seal(out, start);
                }
            });
        }
        Ok(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_given_back_is_filled_again_with_nothing_left_of_it() {
        let head = crate::meta::Head {
            path: "a.csv".into(),
            size: 5_000,
            mtime_secs: 1_700_000_000,
            mtime_nanos: 0,
            kind: crate::meta::ObjectKind::File,
        };
        let block = |object| {
            crate::object::ObjectEncoder::new(7, object, &head, crate::object::FecParams::default())
                .unwrap()
                .1
        };
        let spares = Spares::default();
        let mut inter = Interleaver::new(InterleaveParams::default());
        inter.reuse(spares.clone());
        inter.push(block(0)).unwrap();
        inter.push(block(1)).unwrap();
        let first = inter.flush().unwrap().unwrap();
        let (at, datagrams) = (first.bytes.as_ptr(), first.len());
        spares.give(first);
        inter.push(block(2)).unwrap();
        let second = inter.flush().unwrap().unwrap();
        assert_eq!(
            second.bytes.as_ptr(),
            at,
            "the buffer given back was not reused"
        );
        let mut fresh = Interleaver::new(InterleaveParams::default());
        fresh.push(block(2)).unwrap();
        assert_eq!(second, fresh.flush().unwrap().unwrap());
        assert!(second.len() < datagrams);
    }

    #[test]
    fn runs_split_on_length_count_and_bytes() {
        let mut b = Batch::default();
        for len in [10usize, 10, 10, 7, 10, 10, 12, 12] {
            b.push_with(|out| out.extend(std::iter::repeat_n(len as u8, len)));
        }
        let shape: Vec<(usize, usize, usize)> = b
            .runs(64, 1000)
            .iter()
            .map(|(s, l, c)| (s.len(), *l, *c))
            .collect();
        assert_eq!(shape, [(37, 10, 4), (20, 10, 2), (24, 12, 2)]);
        let shape: Vec<(usize, usize)> = b.runs(2, 1000).iter().map(|(_, l, c)| (*l, *c)).collect();
        assert_eq!(shape, [(10, 2), (10, 2), (10, 2), (12, 2)]);
        let total: usize = b.runs(64, 25).iter().map(|(_, _, c)| c).sum();
        assert_eq!(total, 8);
        assert!(b.runs(64, 25).iter().all(|(s, _, _)| s.len() <= 25));
    }
}
