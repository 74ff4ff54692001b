//! The sender's batching of one channel: records go out in a batch when the oldest has waited
//! the flush interval, or when the batch is full, whichever comes first.
//!
//! Sans-IO: records and time come in; full batches come out; [`Batcher::next_due`] says when to
//! look again.

use std::time::{Duration, Instant};

use super::batch::{BATCH_HEADER_LEN, Record};

/// When a channel's batch goes out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    /// The longest the first record of a batch waits.
    pub flush: Duration,
    /// Batch content bytes at most (at most `batch::MAX_BATCH_LEN`).
    pub max_bytes: usize,
}

impl Default for BatchLimits {
    fn default() -> Self {
        BatchLimits {
            flush: Duration::from_millis(100),
            max_bytes: 256 << 10,
        }
    }
}

/// The batch being filled for one channel.
#[derive(Debug)]
pub struct Batcher {
    limits: BatchLimits,
    records: Vec<Record>,
    bytes: usize,
    since: Option<Instant>,
}

impl Batcher {
    /// An empty batcher.
    pub fn new(limits: BatchLimits) -> Self {
        Batcher {
            limits,
            records: Vec::new(),
            bytes: BATCH_HEADER_LEN,
            since: None,
        }
    }

    /// Adds a record (the next of the channel); returns the batch before it when the record
    /// would not have fitted.
    pub fn push(&mut self, now: Instant, record: Record) -> Option<Vec<Record>> {
        let full =
            !self.records.is_empty() && self.bytes + record.wire_len() > self.limits.max_bytes;
        let out = if full { self.take() } else { None };
        self.bytes += record.wire_len();
        self.records.push(record);
        self.since.get_or_insert(now);
        out
    }

    /// The batch, if its first record has waited the flush interval.
    pub fn poll(&mut self, now: Instant) -> Option<Vec<Record>> {
        if self.next_due().is_some_and(|due| due <= now) {
            self.take()
        } else {
            None
        }
    }

    /// When the batch in progress is due, if there is one.
    pub fn next_due(&self) -> Option<Instant> {
        self.since.map(|s| s + self.limits.flush)
    }

    /// The batch in progress, now (at a stop).
    pub fn take(&mut self) -> Option<Vec<Record>> {
        self.since = None;
        self.bytes = BATCH_HEADER_LEN;
        (!self.records.is_empty()).then(|| std::mem::take(&mut self.records))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(seq: u64, len: usize) -> Record {
        Record {
            seq,
            time_us: 0,
            topic: vec![],
            payload: vec![0; len],
        }
    }

    #[test]
    fn a_batch_goes_out_when_due_or_full() {
        let t = Instant::now();
        let mut b = Batcher::new(BatchLimits {
            flush: Duration::from_millis(100),
            max_bytes: 1000,
        });
        assert!(b.push(t, rec(0, 100)).is_none());
        assert!(b.push(t + Duration::from_millis(50), rec(1, 100)).is_none());
        assert!(b.poll(t + Duration::from_millis(99)).is_none());
        assert_eq!(
            b.poll(t + Duration::from_millis(100)).map(|r| r.len()),
            Some(2)
        );
        assert_eq!(b.next_due(), None);
        for i in 0..8 {
            assert!(b.push(t, rec(2 + i, 100)).is_none());
        }
        let full = b.push(t, rec(10, 100)).expect("full");
        assert_eq!(full.len(), 8);
        assert_eq!(b.take().map(|r| r.len()), Some(1));
    }
}
