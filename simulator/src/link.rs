//! The one-way link model, sans-IO: datagrams and the current time go in, forwarded datagrams come
//! out. Every random decision comes from one seeded generator, drawn in arrival order, so the same
//! seed and the same input sequence give the same decisions.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

/// Bytes a UDP datagram occupies on the wire beyond its payload (IPv4 + UDP headers).
pub const IP_UDP_OVERHEAD: usize = 28;

/// Impairments of the link.
#[derive(Debug, Clone, PartialEq)]
pub struct LinkConfig {
    /// Long-run fraction of datagrams lost.
    pub loss: f64,
    /// Mean length of a loss burst (Gilbert-Elliott); `None` for independent loss.
    pub burst: Option<f64>,
    /// Fraction of datagrams held back and released later.
    pub reorder: f64,
    /// A reordered datagram is overtaken by at most this many later ones.
    pub reorder_max: usize,
    /// Fraction of datagrams forwarded twice.
    pub duplicate: f64,
    /// Fraction of datagrams with one bit flipped.
    pub corrupt: f64,
    /// Link rate in bits per second (IP and UDP headers counted); `None` for unlimited.
    pub rate_bps: Option<u64>,
    /// Bytes the link buffers before tail-dropping, when rate-limited.
    pub queue_bytes: usize,
    /// Fixed propagation delay.
    pub delay: Duration,
}

impl Default for LinkConfig {
    fn default() -> Self {
        LinkConfig {
            loss: 0.0,
            burst: None,
            reorder: 0.0,
            reorder_max: 8,
            duplicate: 0.0,
            corrupt: 0.0,
            rate_bps: None,
            queue_bytes: 1 << 20,
            delay: Duration::ZERO,
        }
    }
}

/// What the link did, datagram by datagram.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counters {
    /// Datagrams that entered the link.
    pub received: u64,
    /// Datagrams that left it (duplicates included).
    pub forwarded: u64,
    /// Datagrams dropped, all causes.
    pub dropped: u64,
    /// Dropped by the loss model.
    pub dropped_loss: u64,
    /// Dropped because the rate-limited queue (or the delay line) was full.
    pub dropped_queue: u64,
    /// Datagrams with a bit flipped.
    pub corrupted: u64,
    /// Extra copies made.
    pub duplicated: u64,
    /// Datagrams held back so that later ones overtook them.
    pub reordered: u64,
    /// Payload bytes that entered.
    pub bytes_in: u64,
    /// Payload bytes that left.
    pub bytes_out: u64,
}

/// Most bytes held in the delay line when no rate limit bounds it.
const MAX_IN_FLIGHT: usize = 256 << 20;
/// A held-back datagram is released after this long even if no later datagram comes.
const MAX_HOLD: Duration = Duration::from_millis(50);

struct Held {
    countdown: usize,
    since: Instant,
    datagram: Vec<u8>,
}

/// The link: a loss model, reordering, duplication and corruption, then a rate-limited queue and a delay line.
pub struct Link {
    config: LinkConfig,
    rng: ChaCha8Rng,
    bad_state: bool,
    held: Vec<Held>,
    line: VecDeque<(Instant, Vec<u8>)>,
    line_bytes: usize,
    link_free: Option<Instant>,
    counters: Counters,
}

impl Link {
    /// A link with `config`, its decisions drawn from `seed`.
    pub fn new(config: LinkConfig, seed: u64) -> Self {
        Link {
            config,
            rng: ChaCha8Rng::seed_from_u64(seed),
            bad_state: false,
            held: Vec::new(),
            line: VecDeque::new(),
            line_bytes: 0,
            link_free: None,
            counters: Counters::default(),
        }
    }

    /// Counters so far.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// True if the loss model drops the next datagram.
    fn lose(&mut self) -> bool {
        let p = self.config.loss;
        match self.config.burst {
            Some(mean) if mean >= 1.0 && p > 0.0 && p < 1.0 => {
                // Simple Gilbert model: all loss in the bad state; mean sojourn there is `mean`,
                // and the stationary share of the bad state is `p`.
                let to_good = 1.0 / mean;
                let to_bad = (to_good * p / (1.0 - p)).min(1.0);
                let flip = if self.bad_state { to_good } else { to_bad };
                if self.rng.random_bool(flip) {
                    self.bad_state = !self.bad_state;
                }
                self.bad_state
            }
            _ => p > 0.0 && self.rng.random_bool(p.min(1.0)),
        }
    }

    /// Offers a datagram to the link at `now`.
    pub fn push(&mut self, now: Instant, mut datagram: Vec<u8>) {
        self.counters.received += 1;
        self.counters.bytes_in += datagram.len() as u64;
        if self.lose() {
            self.counters.dropped += 1;
            self.counters.dropped_loss += 1;
            return;
        }
        if self.config.corrupt > 0.0
            && self.rng.random_bool(self.config.corrupt)
            && !datagram.is_empty()
        {
            let bit = self.rng.random_range(0..datagram.len() * 8);
            datagram[bit / 8] ^= 1 << (bit % 8);
            self.counters.corrupted += 1;
        }
        let copies = if self.config.duplicate > 0.0 && self.rng.random_bool(self.config.duplicate) {
            self.counters.duplicated += 1;
            2
        } else {
            1
        };
        for i in 0..copies {
            let d = if i + 1 == copies {
                std::mem::take(&mut datagram)
            } else {
                datagram.clone()
            };
            if self.config.reorder > 0.0 && self.rng.random_bool(self.config.reorder) {
                let countdown = self.rng.random_range(1..=self.config.reorder_max.max(1));
                self.counters.reordered += 1;
                self.held.push(Held {
                    countdown,
                    since: now,
                    datagram: d,
                });
            } else {
                self.enqueue(now, d);
                self.overtaken(now);
            }
        }
    }

    /// A datagram went past the held ones: count down, release those whose turn has come.
    fn overtaken(&mut self, now: Instant) {
        let mut i = 0;
        while i < self.held.len() {
            self.held[i].countdown -= 1;
            if self.held[i].countdown == 0 {
                let h = self.held.remove(i);
                self.enqueue(now, h.datagram);
            } else {
                i += 1;
            }
        }
    }

    fn enqueue(&mut self, now: Instant, d: Vec<u8>) {
        let depart = match self.config.rate_bps {
            Some(rate) => {
                let free = self.link_free.map_or(now, |f| f.max(now));
                let backlog_bits = free.saturating_duration_since(now).as_secs_f64() * rate as f64;
                if backlog_bits / 8.0 + d.len() as f64 > self.config.queue_bytes as f64 {
                    self.drop_queue();
                    return;
                }
                let bits = ((d.len() + IP_UDP_OVERHEAD) * 8) as u128;
                let done = free
                    + Duration::from_nanos((bits * 1_000_000_000 / u128::from(rate.max(1))) as u64);
                self.link_free = Some(done);
                done
            }
            None => now,
        };
        if self.line_bytes + d.len() > MAX_IN_FLIGHT {
            self.drop_queue();
            return;
        }
        self.line_bytes += d.len();
        self.line.push_back((depart + self.config.delay, d));
    }

    fn drop_queue(&mut self) {
        self.counters.dropped += 1;
        self.counters.dropped_queue += 1;
    }

    /// The next datagram due at `now`, if any.
    pub fn poll(&mut self, now: Instant) -> Option<Vec<u8>> {
        while let Some(pos) = self
            .held
            .iter()
            .position(|h| now.saturating_duration_since(h.since) >= MAX_HOLD)
        {
            let h = self.held.remove(pos);
            self.enqueue(now, h.datagram);
        }
        match self.line.front() {
            Some((due, _)) if *due <= now => {
                let (_, d) = self.line.pop_front()?;
                self.line_bytes -= d.len();
                self.counters.forwarded += 1;
                self.counters.bytes_out += d.len() as u64;
                Some(d)
            }
            _ => None,
        }
    }

    /// When the next datagram is due, so the caller knows how long it may wait.
    pub fn next_due(&self) -> Option<Instant> {
        let line = self.line.front().map(|(t, _)| *t);
        let held = self.held.iter().map(|h| h.since + MAX_HOLD).min();
        match (line, held) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Releases everything still held or queued, ignoring rate and delay (for shutdown).
    pub fn drain(&mut self) -> Vec<Vec<u8>> {
        let now = self.line.back().map(|(t, _)| *t);
        let mut out = Vec::new();
        if let Some(now) = now {
            while let Some(d) = self.poll(now) {
                out.push(d);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(config: LinkConfig, seed: u64, n: usize) -> (Counters, Vec<Vec<u8>>, Vec<bool>) {
        let mut link = Link::new(config, seed);
        let t0 = Instant::now();
        let mut out = Vec::new();
        let mut lost = Vec::new();
        for i in 0..n {
            let before = link.counters().dropped_loss;
            link.push(t0, (i as u32).to_be_bytes().to_vec());
            lost.push(link.counters().dropped_loss > before);
            while let Some(d) = link.poll(t0 + Duration::from_secs(1)) {
                out.push(d);
            }
        }
        (link.counters(), out, lost)
    }

    #[test]
    fn independent_loss_matches_its_rate() {
        let (c, _, _) = run(
            LinkConfig {
                loss: 0.05,
                ..Default::default()
            },
            1,
            200_000,
        );
        let rate = c.dropped as f64 / c.received as f64;
        assert!((rate - 0.05).abs() < 0.0025, "{rate}");
    }

    #[test]
    fn bursty_loss_matches_rate_and_mean_burst() {
        let cfg = LinkConfig {
            loss: 0.02,
            burst: Some(10.0),
            ..Default::default()
        };
        let (c, _, lost) = run(cfg, 2, 1_000_000);
        let rate = c.dropped as f64 / c.received as f64;
        assert!((rate - 0.02).abs() < 0.001, "rate {rate}");
        let mut bursts = 0;
        for w in lost.windows(2) {
            if w[1] && !w[0] {
                bursts += 1;
            }
        }
        let mean = c.dropped as f64 / bursts as f64;
        assert!((mean - 10.0).abs() < 0.5, "mean burst {mean}");
    }

    #[test]
    fn same_seed_same_decisions() {
        let cfg = LinkConfig {
            loss: 0.1,
            reorder: 0.1,
            duplicate: 0.05,
            corrupt: 0.05,
            ..Default::default()
        };
        assert_eq!(run(cfg.clone(), 9, 10_000), run(cfg.clone(), 9, 10_000));
        assert_ne!(run(cfg.clone(), 9, 10_000).1, run(cfg, 10, 10_000).1);
    }

    #[test]
    fn reordering_is_bounded_and_loses_nothing() {
        let cfg = LinkConfig {
            reorder: 0.2,
            reorder_max: 5,
            ..Default::default()
        };
        let (c, out, _) = run(cfg, 3, 10_000);
        assert_eq!(out.len(), 10_000);
        assert!(c.reordered > 1500);
        let seq: Vec<u32> = out
            .iter()
            .map(|d| u32::from_be_bytes([d[0], d[1], d[2], d[3]]))
            .collect();
        for (pos, &s) in seq.iter().enumerate() {
            assert!((pos as i64 - s as i64).abs() <= 6, "datagram {s} at {pos}");
        }
    }

    #[test]
    fn rate_limit_paces_and_tail_drops() {
        let cfg = LinkConfig {
            rate_bps: Some(8_000_000),
            queue_bytes: 10_000,
            ..Default::default()
        };
        let mut link = Link::new(cfg, 0);
        let t0 = Instant::now();
        for _ in 0..100 {
            link.push(t0, vec![0; 972]);
        }
        let c = link.counters();
        assert_eq!(
            c.dropped_queue, 90,
            "a 10 kB queue holds 10 datagrams of 1 kB on the wire"
        );
        assert!(link.poll(t0).is_none());
        let mut times = Vec::new();
        let mut now = t0;
        while let Some(due) = link.next_due() {
            now = due;
            while link.poll(now).is_some() {
                times.push(now);
            }
        }
        assert_eq!(times.len(), 10);
        assert_eq!(now - t0, Duration::from_millis(10));
    }
}
