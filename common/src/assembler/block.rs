//! One block in progress: its shards as they arrive, and the decode once `k` of them are in.
//!
//! A block of a striped object is *sparse*: its data shards go to the object's file as they
//! arrive, and only its parity shards are held here.

use crate::fec::{Fec, FecError};
use crate::wire::MAX_SHARDS_PER_BLOCK;

/// Bookkeeping of one block in progress beyond its buffer: the struct and its hash-map slot.
pub(crate) const BLOCK_COST: usize = std::mem::size_of::<(u32, Pending)>() + 32;

/// Shards of one block received so far.
#[derive(Debug)]
pub(crate) struct Pending {
    /// Parity count every shard of the block must repeat.
    pub(crate) parity: u8,
    /// `(k + m) * L` bytes, shard `i` at `i * L`.
    /// Sparse: the parity shards held, in arrival order (their indices in `held`).
    pub(crate) buf: Vec<u8>,
    /// Which shards arrived (bit `i` for shard `i`).
    pub(crate) present: [u64; MAX_SHARDS_PER_BLOCK / 64],
    count: usize,
    /// Its session's shard clock when it started: how long it has waited, in shards heard.
    pub(crate) born: u64,
    /// Shards of its session that may be heard after it started before it is given up as stale.
    pub(crate) patience: u64,
    /// Sparse block: index of each parity shard in `buf`; `None` for a block held whole.
    pub(crate) held: Option<Vec<u8>>,
}

/// What adding a shard did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Added {
    /// The shard was already held.
    Duplicate,
    /// Stored; the block still needs more.
    Stored,
    /// Stored, and the block now has enough shards to decode.
    Ready,
}

impl Pending {
    /// A block of `n` shards of `l` bytes in `buf` (resized to fit).
    pub(crate) fn new(
        parity: u8,
        mut buf: Vec<u8>,
        n: usize,
        l: usize,
        born: u64,
        patience: u64,
    ) -> Self {
        // Every byte is overwritten by a shard or by the decode before it is read, so a reused
        // buffer keeps its old bytes: only growth is zero-filled.
        if buf.len() >= n * l {
            buf.truncate(n * l);
        } else {
            buf.resize(n * l, 0);
        }
        Pending {
            parity,
            buf,
            present: [0; MAX_SHARDS_PER_BLOCK / 64],
            count: 0,
            born,
            patience,
            held: None,
        }
    }

    /// A sparse block: data shards are written elsewhere, parity is kept.
    pub(crate) fn sparse(parity: u8, born: u64, patience: u64) -> Self {
        Pending {
            parity,
            buf: Vec::new(),
            present: [0; MAX_SHARDS_PER_BLOCK / 64],
            count: 0,
            born,
            patience,
            held: Some(Vec::new()),
        }
    }

    /// True if shard `i` arrived.
    pub(crate) fn has(&self, i: usize) -> bool {
        self.present[i / 64] & (1 << (i % 64)) != 0
    }

    /// Records shard `i` of a sparse block: a data shard (`i < k`) the caller wrote, or a parity
    /// shard kept here. Call only for a shard not yet held.
    pub(crate) fn mark(&mut self, i: usize, payload: &[u8], k: usize) -> Added {
        if i >= k {
            self.buf.extend_from_slice(payload);
            if let Some(held) = &mut self.held {
                held.push(i as u8);
            }
        }
        self.set(i, k)
    }

    /// Marks shard `i` arrived; `k` is the block's data shard count.
    fn set(&mut self, i: usize, k: usize) -> Added {
        self.present[i / 64] |= 1 << (i % 64);
        self.count += 1;
        if self.count >= k {
            Added::Ready
        } else {
            Added::Stored
        }
    }

    /// Shards held.
    pub(crate) fn count(&self) -> usize {
        self.count
    }

    /// Bytes charged to the budget for this block.
    pub(crate) fn cost(&self) -> usize {
        self.buf.capacity() + BLOCK_COST
    }

    /// Stores shard `i` (`payload` is exactly `L` bytes); `k` is the block's data shard count.
    pub(crate) fn add(&mut self, i: usize, payload: &[u8], k: usize) -> Added {
        if self.has(i) {
            return Added::Duplicate;
        }
        let l = payload.len();
        self.buf[i * l..(i + 1) * l].copy_from_slice(payload);
        self.set(i, k)
    }

    /// Data shards among the first `k` that did not arrive (parity rebuilds them).
    pub(crate) fn missing_data(&self, k: usize) -> usize {
        (0..k)
            .filter(|i| self.present[i / 64] & (1 << (i % 64)) == 0)
            .count()
    }

    /// Rebuilds the data shards in place; afterwards `buf[..k * L]` is the block's data.
    pub(crate) fn decode(&mut self, fec: &mut Fec, k: usize, l: usize) -> Result<(), FecError> {
        let n = self.buf.len() / l;
        let mut flags = [false; MAX_SHARDS_PER_BLOCK];
        for (i, f) in flags.iter_mut().enumerate().take(n) {
            *f = self.present[i / 64] & (1 << (i % 64)) != 0;
        }
        fec.reconstruct(k, &mut self.buf, l, &flags[..n])
    }
}
