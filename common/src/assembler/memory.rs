//! Memory: every byte held for blocks and objects is charged to the budget, and block buffers
//! circulate through a pool (the caller hands written content back with `recycle`) so that steady
//! reception allocates nothing per block.

use super::block::Pending;
use super::budget::{BLOCK_COST, RANGE_COST};
use super::engine::Shared;
use super::object::{Object, Run};
use super::session::Session;
use super::types::{Event, ObjectKey, RUN_BYTES};

/// Block buffers kept for reuse (and counted in the budget), so that steady reception allocates
/// nothing per block: enough for the blocks on their way to disk.
const MAX_POOLED: usize = 512;

impl Shared<'_> {
    /// Returns a block's bytes to the budget (its buffer to the pool).
    pub(crate) fn free_block(&mut self, s: &mut Session, p: Pending) {
        let buf = self.release_block(s, p);
        self.pool_buffer(buf);
    }
    /// Returns a block's bytes to the budget and hands its buffer out.
    pub(crate) fn release_block(&mut self, s: &mut Session, p: Pending) -> Vec<u8> {
        let cost = p.cost();
        s.used -= cost;
        self.budget.give(cost);
        p.buf
    }
    /// Keeps a buffer for reuse if the pool has room and the budget allows it.
    pub(crate) fn pool_buffer(&mut self, buf: Vec<u8>) {
        // Kept at its length, old bytes and all: a run clears it, a block zero-fills only what
        // it grows by (filling every buffer to its capacity here cost a memset of every byte
        // received).
        if buf.capacity() == 0 {
            return;
        }
        if self.pool.len() < MAX_POOLED && self.budget.fits(buf.capacity()) {
            self.budget.take(buf.capacity());
            self.pool.push(buf);
        }
    }
    /// True once `bytes` more fit the budget, giving pooled buffers back to make room: buffers
    /// kept for reuse must never cost a shard its place.
    pub(crate) fn make_fit(&mut self, bytes: usize) -> bool {
        while !self.budget.fits(bytes) {
            let Some(buf) = self.pool.pop() else {
                return false;
            };
            self.budget.give(buf.capacity());
        }
        true
    }
    pub(crate) fn free_object(&mut self, s: &mut Session, mut obj: Object) {
        *self.objects -= 1;
        s.used -= obj.charged;
        self.budget.give(obj.charged);
        if let Some(run) = obj.run.take() {
            s.used -= run.charged;
            self.budget.give(run.charged);
            self.pool_buffer(run.buf);
        }
        for (_, p) in obj.blocks {
            self.free_block(s, p);
        }
    }
    /// Hands the object's gathered content out to be written.
    pub(crate) fn flush_run(&mut self, used: &mut usize, key: ObjectKey, run: &mut Option<Run>) {
        if let Some(r) = run.take() {
            *used -= r.charged;
            self.budget.give(r.charged);
            self.events.push_back(Event::Content {
                key,
                offset: r.offset,
                data: r.buf,
            });
        }
    }
    /// Adds a striped data shard's bytes at content offset `at` to the object's run, starting a
    /// new run (and handing the old one out) unless they extend it. False when no buffer fits
    /// the budget: the shard is then dropped.
    pub(crate) fn write_run(
        &mut self,
        used: &mut usize,
        key: ObjectKey,
        run: &mut Option<Run>,
        at: u64,
        bytes: &[u8],
    ) -> bool {
        if let Some(r) = run
            && r.offset + r.buf.len() as u64 == at
            && r.buf.len() + bytes.len() <= r.buf.capacity()
        {
            r.buf.extend_from_slice(bytes);
            return true;
        }
        self.flush_run(used, key, run);
        let need = RUN_BYTES.max(bytes.len());
        let cost = need + BLOCK_COST;
        if !self.make_fit(cost) {
            return false;
        }
        let mut buf = self.pooled(need);
        buf.clear();
        buf.extend_from_slice(bytes);
        let charged = buf.capacity() + BLOCK_COST;
        self.budget.take(charged);
        *used += charged;
        *run = Some(Run {
            offset: at,
            buf,
            charged,
        });
        true
    }
    /// The last pooled buffer if it holds `need` bytes (a smaller one is dropped), else a new
    /// one; either way uncharged, for the caller to charge.
    pub(crate) fn pooled(&mut self, need: usize) -> Vec<u8> {
        match self.pool.pop() {
            Some(b) => {
                self.budget.give(b.capacity());
                if b.capacity() >= need {
                    b
                } else {
                    Vec::with_capacity(need)
                }
            }
            None => Vec::with_capacity(need),
        }
    }
    /// A buffer for a new block of `need` bytes, or `None` when the budget or the session's fair
    /// share of it does not allow one.
    pub(crate) fn block_buffer(
        &mut self,
        s: &mut Session,
        need: usize,
        active: usize,
    ) -> Option<Vec<u8>> {
        // A block may also add one range of decoded blocks to its object.
        let cost = need + BLOCK_COST + RANGE_COST;
        if s.used + cost > self.budget.fair_share(active) {
            return None;
        }
        if !self.make_fit(cost) {
            return None;
        }
        let buf = self.pooled(need);
        let charged = buf.capacity() + BLOCK_COST;
        self.budget.take(charged);
        s.used += charged;
        Some(buf)
    }
}
