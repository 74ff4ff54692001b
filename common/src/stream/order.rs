//! The receiver's order of one channel: records come out in sequence, each once; a batch that
//! arrives early waits at most the reorder window for the ones before it, and then what is still
//! missing becomes one gap, counted exactly from the sequence numbers.
//!
//! Invariants, for every channel:
//! - records are emitted in strictly increasing `seq`, each at most once, and `next` only grows;
//! - every sequence number below `next` was emitted either as a record or inside exactly one
//!   [`Gap`], so records emitted plus the gaps' `missing` equal `next` minus where the channel
//!   started;
//! - records held out of order are at most [`OrderConfig::max_held_bytes`]: past that the gap
//!   before them is declared at once instead of waiting out the window.
//!
//! Sans-IO: batches, the sender's tails and time come in; [`Emit`]s go out.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::batch::Record;

/// How long a channel waits for what is missing, and how much it holds meanwhile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrderConfig {
    /// How long records after a hole wait for the hole to fill (the reorder window).
    pub window: Duration,
    /// Payload bytes held out of order at most.
    pub max_held_bytes: usize,
}

impl Default for OrderConfig {
    fn default() -> Self {
        OrderConfig {
            window: Duration::from_secs(1),
            max_held_bytes: 16 << 20,
        }
    }
}

/// Sequence numbers that will never be delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    /// The first missing sequence number.
    pub first_seq: u64,
    /// How many are missing (at least 1).
    pub missing: u64,
    /// Sender time of the last record before the gap, if one was delivered.
    pub after_us: Option<i64>,
    /// Sender time of the first record after it (or of the last record the sender said it sent).
    pub before_us: Option<i64>,
}

/// What a channel hands on, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Emit {
    /// Consecutive records, in order.
    Records(Vec<Record>),
    /// Records lost for good, where they would have been.
    Gap(Gap),
}

/// What a channel has seen.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct OrderCounters {
    /// Records emitted.
    pub records: u64,
    /// Batches taken in.
    pub batches: u64,
    /// Records that came again after being emitted (or declared missing), dropped.
    pub duplicates: u64,
    /// Gaps emitted.
    pub gaps: u64,
    /// Records declared missing in them.
    pub missing: u64,
}

/// The order of one channel.
#[derive(Debug)]
pub struct Order {
    config: OrderConfig,
    /// The next sequence number to emit; `None` for a channel never heard until its first
    /// window passes (unless it starts at 0).
    next: Option<u64>,
    /// Sender time of the last record emitted.
    last_time_us: Option<i64>,
    /// Records above `next`, waiting for those before them.
    held: BTreeMap<u64, Record>,
    held_bytes: usize,
    /// One past the highest sequence number the sender is known to have sent, and its time.
    known_end: (u64, Option<i64>),
    /// Since when the hole at `next` has been waited for, and the `next` it was at then: a
    /// hole moved on by records arriving is a new hole, with a window of its own.
    waiting_since: Option<(Instant, Option<u64>)>,
    counters: OrderCounters,
}

impl Order {
    /// A channel that resumes at `next` (its saved position), or one never heard (`None`).
    pub fn new(config: OrderConfig, next: Option<u64>) -> Self {
        Order {
            config,
            next,
            last_time_us: None,
            held: BTreeMap::new(),
            held_bytes: 0,
            known_end: (next.unwrap_or(0), None),
            waiting_since: None,
            counters: OrderCounters::default(),
        }
    }

    /// The next sequence number to emit, once known.
    pub fn next_seq(&self) -> Option<u64> {
        self.next
    }

    /// What this channel has seen.
    pub fn counters(&self) -> OrderCounters {
        self.counters
    }

    /// When [`Order::poll`] has something to do, if ever.
    pub fn next_due(&self) -> Option<Instant> {
        self.waiting_since.map(|(t, _)| t + self.config.window)
    }

    /// Takes in a batch's records (consecutive, in order) and emits what is in order now.
    pub fn on_batch(&mut self, now: Instant, records: Vec<Record>, out: &mut Vec<Emit>) {
        self.counters.batches += 1;
        let Some(end) = records.last().map(|r| r.seq + 1) else {
            return;
        };
        if end > self.known_end.0 {
            self.known_end = (end, records.last().map(|r| r.time_us));
        }
        if self.next.is_none() && records[0].seq == 0 {
            // A channel heard from its very first record has nothing before it to wait for.
            self.next = Some(0);
        }
        match self.next {
            Some(next) if records[0].seq <= next => {
                let before = records.len();
                let fresh: Vec<Record> = records.into_iter().filter(|r| r.seq >= next).collect();
                self.counters.duplicates += (before - fresh.len()) as u64;
                if !fresh.is_empty() {
                    self.emit_records(fresh, out);
                    self.drain(out);
                }
            }
            _ => self.hold(records),
        }
        self.settle_wait(now, false);
        if self.held_bytes > self.config.max_held_bytes {
            self.release(now, out);
        }
    }

    /// Takes in the sender's word that every record below `end` was sent (the last at `time_us`).
    pub fn on_tail(&mut self, now: Instant, end: u64, time_us: i64) {
        if end > self.known_end.0 {
            self.known_end = (end, Some(time_us));
        }
        self.settle_wait(now, false);
    }

    /// Declares what the window waited for in vain; call when [`Order::next_due`] is reached.
    pub fn poll(&mut self, now: Instant, out: &mut Vec<Emit>) {
        if self.next_due().is_some_and(|due| due <= now) {
            self.release(now, out);
        }
    }

    /// Gives up the hole at `next`: a gap up to the first record held (or the known end).
    fn release(&mut self, now: Instant, out: &mut Vec<Emit>) {
        let target = self
            .held
            .first_key_value()
            .map(|(&seq, r)| (seq, Some(r.time_us)))
            .unwrap_or(self.known_end);
        let next = self.next.unwrap_or(0);
        if target.0 > next {
            let gap = Gap {
                first_seq: next,
                missing: target.0 - next,
                after_us: self.last_time_us,
                before_us: target.1,
            };
            self.counters.gaps += 1;
            self.counters.missing += gap.missing;
            out.push(Emit::Gap(gap));
        }
        self.next = Some(target.0.max(next));
        self.drain(out);
        self.settle_wait(now, true);
    }

    /// Starts, keeps or ends the wait for the hole at `next` (`restart`: a new hole's wait).
    fn settle_wait(&mut self, now: Instant, restart: bool) {
        let next = self.next.unwrap_or(0);
        let hole = self.next.is_none() || !self.held.is_empty() || self.known_end.0 > next;
        self.waiting_since = match (hole, self.waiting_since) {
            (false, _) => None,
            (true, Some((since, at))) if !restart && at == self.next => Some((since, at)),
            (true, _) => Some((now, self.next)),
        };
    }

    fn hold(&mut self, records: Vec<Record>) {
        let floor = self.next.unwrap_or(0);
        for r in records {
            if r.seq < floor || self.held.contains_key(&r.seq) {
                self.counters.duplicates += 1;
                continue;
            }
            self.held_bytes += r.payload.len() + r.topic.len();
            self.held.insert(r.seq, r);
        }
    }

    /// Emits the held records that follow `next` without a hole.
    fn drain(&mut self, out: &mut Vec<Emit>) {
        let Some(mut next) = self.next else {
            return;
        };
        // Held records overtaken by a batch (or a gap) came twice.
        while let Some(entry) = self.held.first_entry() {
            if *entry.key() >= next {
                break;
            }
            let r = entry.remove();
            self.held_bytes -= r.payload.len() + r.topic.len();
            self.counters.duplicates += 1;
        }
        let mut run = Vec::new();
        while let Some(entry) = self.held.first_entry() {
            if *entry.key() != next {
                break;
            }
            let r = entry.remove();
            self.held_bytes -= r.payload.len() + r.topic.len();
            next += 1;
            run.push(r);
        }
        if !run.is_empty() {
            self.emit_records(run, out);
        }
    }

    /// Emits `records`, which start at `next` and are consecutive.
    fn emit_records(&mut self, records: Vec<Record>, out: &mut Vec<Emit>) {
        let Some(last) = records.last() else {
            return;
        };
        self.next = Some(last.seq + 1);
        self.last_time_us = Some(last.time_us);
        self.counters.records += records.len() as u64;
        out.push(Emit::Records(records));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recs(range: std::ops::Range<u64>) -> Vec<Record> {
        range
            .map(|seq| Record {
                seq,
                time_us: seq as i64 * 1000,
                topic: vec![],
                payload: vec![b'x'; 10],
            })
            .collect()
    }

    fn seqs(out: &[Emit]) -> Vec<u64> {
        out.iter()
            .flat_map(|e| match e {
                Emit::Records(r) => r.iter().map(|r| r.seq).collect::<Vec<_>>(),
                Emit::Gap(_) => vec![],
            })
            .collect()
    }

    #[test]
    fn a_late_batch_within_the_window_is_put_back_in_order() {
        let t = Instant::now();
        let mut o = Order::new(OrderConfig::default(), Some(0));
        let mut out = Vec::new();
        o.on_batch(t, recs(0..5), &mut out);
        o.on_batch(t, recs(10..15), &mut out);
        assert_eq!(seqs(&out), (0..5).collect::<Vec<_>>());
        o.on_batch(t + Duration::from_millis(500), recs(5..10), &mut out);
        assert_eq!(seqs(&out), (0..15).collect::<Vec<_>>());
        assert_eq!(o.next_due(), None);
        assert_eq!(o.counters().gaps, 0);
    }

    #[test]
    fn a_hole_not_filled_within_the_window_becomes_one_exact_gap() {
        let t = Instant::now();
        let mut o = Order::new(OrderConfig::default(), Some(0));
        let mut out = Vec::new();
        o.on_batch(t, recs(0..5), &mut out);
        o.on_batch(t, recs(12..15), &mut out);
        o.poll(t + Duration::from_millis(999), &mut out);
        assert_eq!(out.len(), 1);
        o.poll(t + Duration::from_secs(1), &mut out);
        assert_eq!(
            out[1],
            Emit::Gap(Gap {
                first_seq: 5,
                missing: 7,
                after_us: Some(4000),
                before_us: Some(12_000)
            })
        );
        assert_eq!(seqs(&out), [0, 1, 2, 3, 4, 12, 13, 14]);
        // The missing batch arriving after its gap is never written.
        o.on_batch(t + Duration::from_secs(2), recs(5..12), &mut out);
        assert_eq!(out.len(), 3);
        assert_eq!(o.counters().duplicates, 7);
    }

    #[test]
    fn a_lost_last_batch_is_declared_from_the_senders_tail() {
        let t = Instant::now();
        let mut o = Order::new(OrderConfig::default(), Some(0));
        let mut out = Vec::new();
        o.on_batch(t, recs(0..5), &mut out);
        o.on_tail(t, 9, 8000);
        o.on_tail(t + Duration::from_millis(300), 9, 8000);
        o.poll(t + Duration::from_secs(1), &mut out);
        assert!(matches!(
            out.last(),
            Some(Emit::Gap(Gap {
                first_seq: 5,
                missing: 4,
                ..
            }))
        ));
        assert_eq!(o.next_due(), None);
        assert_eq!(o.next_seq(), Some(9));
    }

    #[test]
    fn a_channel_first_heard_mid_way_counts_what_came_before() {
        let t = Instant::now();
        let mut o = Order::new(OrderConfig::default(), None);
        let mut out = Vec::new();
        o.on_batch(t, recs(100..110), &mut out);
        o.on_batch(t, recs(95..100), &mut out);
        assert!(out.is_empty(), "the first window waits for earlier batches");
        o.poll(t + Duration::from_secs(1), &mut out);
        assert!(matches!(
            out[0],
            Emit::Gap(Gap {
                first_seq: 0,
                missing: 95,
                ..
            })
        ));
        assert_eq!(seqs(&out), (95..110).collect::<Vec<_>>());
    }

    #[test]
    fn holding_too_much_declares_the_gap_at_once() {
        let t = Instant::now();
        let config = OrderConfig {
            max_held_bytes: 100,
            ..OrderConfig::default()
        };
        let mut o = Order::new(config, Some(0));
        let mut out = Vec::new();
        o.on_batch(t, recs(5..20), &mut out);
        assert_eq!(seqs(&out), (5..20).collect::<Vec<_>>());
        assert!(matches!(out[0], Emit::Gap(Gap { missing: 5, .. })));
    }

    /// Seeded loss, duplication and reordering of batches: records come out in order, once,
    /// and records plus missing add up to everything sent.
    #[test]
    fn under_seeded_loss_and_reordering_the_count_is_exact() {
        use rand::{Rng, SeedableRng};
        for seed in 0..20u64 {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let t0 = Instant::now();
            let mut o = Order::new(OrderConfig::default(), Some(0));
            let mut out = Vec::new();
            let mut pending: Vec<(Instant, Vec<Record>)> = Vec::new();
            let mut seq = 0;
            for step in 0..500u64 {
                let now = t0 + Duration::from_millis(step * 10);
                let n = rng.random_range(1..20);
                let batch = recs(seq..seq + n);
                seq += n;
                if rng.random_bool(0.9) {
                    let delay = Duration::from_millis(rng.random_range(0..400));
                    pending.push((now + delay, batch.clone()));
                    if rng.random_bool(0.05) {
                        pending.push((now + delay * 3, batch));
                    }
                }
                o.on_tail(now, seq, 0);
                pending.sort_by_key(|p| p.0);
                while pending.first().is_some_and(|p| p.0 <= now) {
                    let (_, b) = pending.remove(0);
                    o.on_batch(now, b, &mut out);
                }
                o.poll(now, &mut out);
            }
            let end = t0 + Duration::from_secs(20);
            for (_, b) in pending.drain(..) {
                o.on_batch(end, b, &mut out);
            }
            let mut now = end;
            while let Some(due) = o.next_due() {
                now = now.max(due);
                o.poll(now, &mut out);
            }
            let got = seqs(&out);
            assert!(got.windows(2).all(|w| w[0] < w[1]), "seed {seed}: in order");
            let missing: u64 = out
                .iter()
                .map(|e| match e {
                    Emit::Gap(g) => g.missing,
                    Emit::Records(_) => 0,
                })
                .sum();
            assert_eq!(got.len() as u64 + missing, seq, "seed {seed}");
            assert!(o.counters().gaps > 0, "seed {seed}: loss was seeded");
        }
    }
}
