//! Memory accounting: every byte the assembler holds on behalf of the link, counted as allocated.
//!
//! Buffers are counted by capacity (not length), and each block, object and range entry adds a
//! fixed bookkeeping cost, so that the bound holds whatever shard length or fragmentation a sender
//! (or a forger) chooses.

use std::mem::size_of;

pub(crate) use super::block::BLOCK_COST;
use super::object::Object;

/// Bytes of one entry of a `RangeMap`, its share of a B-tree node included.
pub(crate) const RANGE_COST: usize = 64;
/// Bookkeeping of one object in progress, beyond its blocks and its ranges of decoded blocks.
pub(crate) const OBJECT_COST: usize = size_of::<(u64, Object)>() + 32 + 256;

/// A byte budget with a fair share per active session.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Budget {
    limit: usize,
    used: usize,
}

impl Budget {
    pub(crate) fn new(limit: usize) -> Self {
        Budget { limit, used: 0 }
    }

    pub(crate) fn used(&self) -> usize {
        self.used
    }

    /// True if `bytes` more fit under the limit.
    pub(crate) fn fits(&self, bytes: usize) -> bool {
        self.used.saturating_add(bytes) <= self.limit
    }

    /// The most one of `active` sessions may hold, so that none starves the others.
    pub(crate) fn fair_share(&self, active: usize) -> usize {
        self.limit / active.max(1)
    }

    pub(crate) fn take(&mut self, bytes: usize) {
        self.used = self.used.saturating_add(bytes);
    }

    pub(crate) fn give(&mut self, bytes: usize) {
        debug_assert!(bytes <= self.used, "budget underflow");
        self.used = self.used.saturating_sub(bytes);
    }
}
