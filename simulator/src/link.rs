//! The one-way link model, sans-IO: datagrams and the current time go in, forwarded datagrams come
//! out. Every random decision comes from one seeded generator, drawn in arrival order, so the same
//! seed and the same input sequence give the same decisions (rate, jitter and outages also depend
//! on arrival times, as they would on a real link).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

/// Bytes a UDP datagram occupies on the wire beyond its payload (IPv4 + UDP headers).
pub const IP_UDP_OVERHEAD: usize = 28;
/// Most bytes held in the delay line whatever the settings, so memory stays bounded.
pub const MAX_IN_FLIGHT: usize = 256 << 20;
/// A held-back datagram is released after this long even if no later datagram comes.
const MAX_HOLD: Duration = Duration::from_millis(50);

/// Loss model of a phase.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Loss {
    /// Each datagram lost independently with this probability.
    Independent(f64),
    /// Gilbert-Elliott: a good and a bad state, each with its own loss probability.
    GilbertElliott {
        /// P(good -> bad) per datagram.
        p: f64,
        /// P(bad -> good) per datagram.
        r: f64,
        /// Loss probability in the good state.
        loss_good: f64,
        /// Loss probability in the bad state.
        loss_bad: f64,
    },
}

impl Loss {
    /// Gilbert model (all loss in the bad state) with long-run loss `rate` in bursts of mean `burst`.
    pub fn bursty(rate: f64, burst: f64) -> Loss {
        if rate <= 0.0 || rate >= 1.0 || burst < 1.0 {
            return Loss::Independent(rate);
        }
        let r = 1.0 / burst;
        Loss::GilbertElliott {
            p: (r * rate / (1.0 - rate)).min(1.0),
            r,
            loss_good: 0.0,
            loss_bad: 1.0,
        }
    }

    /// Long-run loss rate this model produces.
    pub fn mean(&self) -> f64 {
        match *self {
            Loss::Independent(p) => p,
            Loss::GilbertElliott {
                p,
                r,
                loss_good,
                loss_bad,
            } => {
                if p + r == 0.0 {
                    loss_good
                } else {
                    let bad = p / (p + r);
                    bad * loss_bad + (1.0 - bad) * loss_good
                }
            }
        }
    }
}

/// Impairments of the link during one phase.
#[derive(Debug, Clone, PartialEq)]
pub struct LinkConfig {
    /// Loss model.
    pub loss: Loss,
    /// Fraction of datagrams held back and released later.
    pub reorder: f64,
    /// A reordered datagram is overtaken by at most this many later ones.
    pub reorder_max: usize,
    /// Fraction of datagrams forwarded twice.
    pub duplicate: f64,
    /// Fraction of datagrams with one bit flipped.
    pub corrupt: f64,
    /// Fraction of datagrams cut short at a random length.
    pub truncate: f64,
    /// Datagrams larger than this (payload bytes + 28) are dropped.
    pub mtu: Option<usize>,
    /// Link rate in bits per second (IP and UDP headers counted); `None` for unlimited.
    pub rate_bps: Option<u64>,
    /// Bytes the link buffers before tail-dropping, when rate-limited.
    pub queue_bytes: usize,
    /// Fixed propagation delay.
    pub delay: Duration,
    /// Extra delay drawn uniformly from `[0, jitter)` per datagram (may reorder).
    pub jitter: Duration,
    /// The link is cut: everything is dropped.
    pub down: bool,
}

impl Default for LinkConfig {
    fn default() -> Self {
        LinkConfig {
            loss: Loss::Independent(0.0),
            reorder: 0.0,
            reorder_max: 8,
            duplicate: 0.0,
            corrupt: 0.0,
            truncate: 0.0,
            mtu: None,
            rate_bps: None,
            queue_bytes: 1 << 20,
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            down: false,
        }
    }
}

/// A named stretch of the timeline with its own settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Phase {
    /// Name used in reports.
    pub name: String,
    /// How long it lasts; `None` for the last phase, which lasts until the end.
    pub duration: Option<Duration>,
    /// Link settings.
    pub config: LinkConfig,
}

/// What the link does over time: phases in order, plus outages at given offsets.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Schedule {
    /// Phases in order. When the last one has a duration too (and the timeline does not
    /// repeat), the timeline, and the simulator's run, ends with it.
    pub phases: Vec<Phase>,
    /// Outages as (start offset, length) from the start of the timeline.
    pub outages: Vec<(Duration, Duration)>,
    /// Start again from the first phase after the last one ends.
    pub repeat: bool,
}

impl Schedule {
    /// One open-ended phase.
    pub fn constant(config: LinkConfig) -> Schedule {
        Schedule {
            phases: vec![Phase {
                name: "link".into(),
                duration: None,
                config,
            }],
            outages: Vec::new(),
            repeat: false,
        }
    }

    /// When the timeline ends, from its start: the sum of the phases' durations when every phase
    /// has one and it does not repeat; `None` while it runs on.
    pub fn end(&self) -> Option<Duration> {
        if self.repeat {
            return None;
        }
        self.phases.iter().map(|p| p.duration).sum()
    }

    /// Index of the phase in force at `offset` from the start.
    pub fn phase_at(&self, offset: Duration) -> usize {
        let total: Option<Duration> = self.phases.iter().map(|p| p.duration).sum();
        let mut t = match (self.repeat, total) {
            (true, Some(total)) if !total.is_zero() => {
                Duration::from_nanos((offset.as_nanos() % total.as_nanos()) as u64)
            }
            _ => offset,
        };
        for (i, p) in self.phases.iter().enumerate() {
            match p.duration {
                Some(d) if t >= d => t -= d,
                _ => return i,
            }
        }
        self.phases.len().saturating_sub(1)
    }

    /// Time spent in each phase during the first `elapsed` of the timeline.
    pub fn time_in_phases(&self, elapsed: Duration) -> Vec<Duration> {
        let mut spent = vec![Duration::ZERO; self.phases.len()];
        let mut t = Duration::ZERO;
        'cycles: loop {
            for (i, p) in self.phases.iter().enumerate() {
                let left = elapsed.saturating_sub(t);
                let d = p.duration.map_or(left, |d| d.min(left));
                spent[i] += d;
                t += d;
                if t >= elapsed || p.duration.is_none() {
                    break 'cycles;
                }
            }
            if !self.repeat {
                // After the timeline the last phase continues.
                if let Some(last) = spent.last_mut() {
                    *last += elapsed.saturating_sub(t);
                }
                break;
            }
        }
        spent
    }

    fn in_outage(&self, offset: Duration) -> bool {
        self.outages
            .iter()
            .any(|&(start, len)| offset >= start && offset < start + len)
    }
}

/// What the link did in one phase.
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
    /// Dropped because the link was cut (outage).
    pub dropped_outage: u64,
    /// Dropped because the rate-limited queue (or the delay line) was full.
    pub dropped_queue: u64,
    /// Dropped for exceeding the MTU.
    pub dropped_mtu: u64,
    /// Datagrams with a bit flipped.
    pub corrupted: u64,
    /// Datagrams cut short.
    pub truncated: u64,
    /// Extra copies made.
    pub duplicated: u64,
    /// Datagrams held back so that later ones overtook them.
    pub reordered: u64,
    /// Payload bytes that entered.
    pub bytes_in: u64,
    /// Payload bytes that left.
    pub bytes_out: u64,
    /// Longest run of consecutive dropped datagrams.
    pub longest_burst: u64,
}

impl Counters {
    fn add(&mut self, o: &Counters) {
        self.received += o.received;
        self.forwarded += o.forwarded;
        self.dropped += o.dropped;
        self.dropped_loss += o.dropped_loss;
        self.dropped_outage += o.dropped_outage;
        self.dropped_queue += o.dropped_queue;
        self.dropped_mtu += o.dropped_mtu;
        self.corrupted += o.corrupted;
        self.truncated += o.truncated;
        self.duplicated += o.duplicated;
        self.reordered += o.reordered;
        self.bytes_in += o.bytes_in;
        self.bytes_out += o.bytes_out;
        self.longest_burst = self.longest_burst.max(o.longest_burst);
    }
}

/// Why a datagram was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Drop {
    Loss,
    Outage,
    Queue,
    Mtu,
}

struct Held {
    countdown: usize,
    since: Instant,
    phase: usize,
    datagram: Vec<u8>,
}

/// The link: loss, outages, MTU, corruption, truncation, duplication, reordering, then a
/// rate-limited queue and a delay line with jitter.
pub struct Link {
    schedule: Schedule,
    start: Instant,
    rng: ChaCha8Rng,
    bad_state: bool,
    held: Vec<Held>,
    line: BTreeMap<(Instant, u64), (usize, Vec<u8>)>,
    line_seq: u64,
    line_bytes: usize,
    link_free: Option<Instant>,
    phases: Vec<Counters>,
    /// Consecutive drops so far, and the phase they belong to (a burst does not span phases).
    run: u64,
    run_phase: usize,
}

impl Link {
    /// A link following `schedule` from `start`, its decisions drawn from `seed`.
    pub fn new(schedule: Schedule, seed: u64, start: Instant) -> Self {
        let n = schedule.phases.len().max(1);
        Link {
            schedule,
            start,
            rng: ChaCha8Rng::seed_from_u64(seed),
            bad_state: false,
            held: Vec::new(),
            line: BTreeMap::new(),
            line_seq: 0,
            line_bytes: 0,
            link_free: None,
            phases: vec![Counters::default(); n],
            run: 0,
            run_phase: 0,
        }
    }

    /// The schedule.
    pub fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    /// Counters per phase.
    pub fn phase_counters(&self) -> &[Counters] {
        &self.phases
    }

    /// Counters over all phases.
    pub fn counters(&self) -> Counters {
        let mut total = Counters::default();
        for c in &self.phases {
            total.add(c);
        }
        total
    }

    /// The phase in force at `now`.
    pub fn phase_at(&self, now: Instant) -> usize {
        self.schedule
            .phase_at(now.saturating_duration_since(self.start))
    }

    fn lose(&mut self, loss: Loss) -> bool {
        match loss {
            Loss::Independent(p) => p > 0.0 && self.rng.random_bool(p.min(1.0)),
            Loss::GilbertElliott {
                p,
                r,
                loss_good,
                loss_bad,
            } => {
                let flip = if self.bad_state { r } else { p };
                if flip > 0.0 && self.rng.random_bool(flip.min(1.0)) {
                    self.bad_state = !self.bad_state;
                }
                let l = if self.bad_state { loss_bad } else { loss_good };
                l > 0.0 && self.rng.random_bool(l.min(1.0))
            }
        }
    }

    fn dropped(&mut self, phase: usize, why: Drop) {
        let c = &mut self.phases[phase];
        c.dropped += 1;
        match why {
            Drop::Loss => c.dropped_loss += 1,
            Drop::Outage => c.dropped_outage += 1,
            Drop::Queue => c.dropped_queue += 1,
            Drop::Mtu => c.dropped_mtu += 1,
        }
        if self.run_phase != phase {
            self.run = 0;
            self.run_phase = phase;
        }
        self.run += 1;
        c.longest_burst = c.longest_burst.max(self.run);
    }

    /// Offers a datagram to the link at `now`.
    pub fn push(&mut self, now: Instant, mut datagram: Vec<u8>) {
        let offset = now.saturating_duration_since(self.start);
        let phase = self.schedule.phase_at(offset);
        let cfg = self.schedule.phases[phase].config.clone();
        self.phases[phase].received += 1;
        self.phases[phase].bytes_in += datagram.len() as u64;
        if cfg.down || self.schedule.in_outage(offset) {
            self.dropped(phase, Drop::Outage);
            return;
        }
        if cfg
            .mtu
            .is_some_and(|mtu| datagram.len() + IP_UDP_OVERHEAD > mtu)
        {
            self.dropped(phase, Drop::Mtu);
            return;
        }
        if self.lose(cfg.loss) {
            self.dropped(phase, Drop::Loss);
            return;
        }
        if cfg.corrupt > 0.0 && self.rng.random_bool(cfg.corrupt) && !datagram.is_empty() {
            let bit = self.rng.random_range(0..datagram.len() * 8);
            datagram[bit / 8] ^= 1 << (bit % 8);
            self.phases[phase].corrupted += 1;
        }
        if cfg.truncate > 0.0 && self.rng.random_bool(cfg.truncate) && !datagram.is_empty() {
            let keep = self.rng.random_range(0..datagram.len());
            datagram.truncate(keep);
            self.phases[phase].truncated += 1;
        }
        let copies = if cfg.duplicate > 0.0 && self.rng.random_bool(cfg.duplicate) {
            self.phases[phase].duplicated += 1;
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
            if cfg.reorder > 0.0 && self.rng.random_bool(cfg.reorder) {
                let countdown = self.rng.random_range(1..=cfg.reorder_max.max(1));
                self.phases[phase].reordered += 1;
                self.run = 0;
                self.held.push(Held {
                    countdown,
                    since: now,
                    phase,
                    datagram: d,
                });
            } else {
                self.enqueue(now, phase, d);
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
                self.enqueue(now, h.phase, h.datagram);
            } else {
                i += 1;
            }
        }
    }

    fn enqueue(&mut self, now: Instant, phase: usize, d: Vec<u8>) {
        let cfg = &self.schedule.phases[self.phase_at(now)].config;
        let (rate, queue_bytes, delay, jitter) =
            (cfg.rate_bps, cfg.queue_bytes, cfg.delay, cfg.jitter);
        let depart = match rate {
            Some(rate) => {
                let rate = rate.max(1);
                let free = self.link_free.map_or(now, |f| f.max(now));
                let backlog = free.saturating_duration_since(now).as_nanos() * u128::from(rate)
                    / 8_000_000_000;
                if backlog + d.len() as u128 > queue_bytes as u128 {
                    self.dropped(phase, Drop::Queue);
                    return;
                }
                let bits = ((d.len() + IP_UDP_OVERHEAD) * 8) as u128;
                let done =
                    free + Duration::from_nanos((bits * 1_000_000_000 / u128::from(rate)) as u64);
                self.link_free = Some(done);
                done
            }
            None => now,
        };
        if self.line_bytes + d.len() > MAX_IN_FLIGHT {
            self.dropped(phase, Drop::Queue);
            return;
        }
        let extra = if jitter.is_zero() {
            Duration::ZERO
        } else {
            Duration::from_nanos(self.rng.random_range(0..jitter.as_nanos() as u64))
        };
        self.run = 0;
        self.line_bytes += d.len();
        self.line_seq += 1;
        self.line
            .insert((depart + delay + extra, self.line_seq), (phase, d));
    }

    /// The next datagram due at `now`, if any.
    pub fn poll(&mut self, now: Instant) -> Option<Vec<u8>> {
        while let Some(pos) = self
            .held
            .iter()
            .position(|h| now.saturating_duration_since(h.since) >= MAX_HOLD)
        {
            let h = self.held.remove(pos);
            self.enqueue(now, h.phase, h.datagram);
        }
        let (&key, _) = self.line.first_key_value()?;
        if key.0 > now {
            return None;
        }
        let (phase, d) = self.line.remove(&key)?;
        self.line_bytes -= d.len();
        self.phases[phase].forwarded += 1;
        self.phases[phase].bytes_out += d.len() as u64;
        Some(d)
    }

    /// When the next datagram is due, so the caller knows how long it may wait.
    pub fn next_due(&self) -> Option<Instant> {
        let line = self.line.first_key_value().map(|(k, _)| k.0);
        let held = self.held.iter().map(|h| h.since + MAX_HOLD).min();
        match (line, held) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(loss: Loss) -> LinkConfig {
        LinkConfig {
            loss,
            ..LinkConfig::default()
        }
    }

    /// Pushes `n` numbered datagrams at one instant and collects what comes out.
    fn run(config: LinkConfig, seed: u64, n: usize) -> (Counters, Vec<Vec<u8>>, Vec<bool>) {
        let t0 = Instant::now();
        let mut link = Link::new(Schedule::constant(config), seed, t0);
        let mut out = Vec::new();
        let mut lost = Vec::with_capacity(n);
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

    fn mean_burst(lost: &[bool]) -> f64 {
        let drops = lost.iter().filter(|l| **l).count();
        let starts = lost
            .iter()
            .enumerate()
            .filter(|(i, l)| **l && (*i == 0 || !lost[i - 1]))
            .count();
        drops as f64 / starts as f64
    }

    #[test]
    fn independent_loss_over_a_million_datagrams_is_within_5_percent() {
        let (c, _, lost) = run(config(Loss::Independent(0.05)), 1, 1_000_000);
        let rate = c.dropped as f64 / c.received as f64;
        assert!((rate / 0.05 - 1.0).abs() < 0.05, "{rate}");
        // Independent loss has mean run length 1 / (1 - p).
        assert!((mean_burst(&lost) / (1.0 / 0.95) - 1.0).abs() < 0.05);
    }

    #[test]
    fn bursty_loss_over_a_million_datagrams_matches_rate_and_mean_burst() {
        for (rate, burst) in [(0.02, 10.0), (0.05, 3.0), (0.10, 25.0)] {
            let (c, _, lost) = run(config(Loss::bursty(rate, burst)), 2, 1_000_000);
            let measured = c.dropped as f64 / c.received as f64;
            assert!(
                (measured / rate - 1.0).abs() < 0.05,
                "rate {measured} for {rate}"
            );
            let mb = mean_burst(&lost);
            assert!(
                (mb / burst - 1.0).abs() < 0.05,
                "mean burst {mb} for {burst}"
            );
            assert!(c.longest_burst as f64 > burst);
        }
    }

    #[test]
    fn raw_gilbert_elliott_matches_its_stationary_loss() {
        let loss = Loss::GilbertElliott {
            p: 0.01,
            r: 0.2,
            loss_good: 0.001,
            loss_bad: 0.5,
        };
        let (c, _, _) = run(config(loss), 4, 1_000_000);
        let measured = c.dropped as f64 / c.received as f64;
        assert!(
            (measured / loss.mean() - 1.0).abs() < 0.05,
            "{measured} vs {}",
            loss.mean()
        );
    }

    #[test]
    fn same_seed_same_decisions() {
        let cfg = LinkConfig {
            loss: Loss::Independent(0.1),
            reorder: 0.1,
            duplicate: 0.05,
            corrupt: 0.05,
            truncate: 0.02,
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
    fn corruption_truncation_and_mtu() {
        let cfg = LinkConfig {
            corrupt: 1.0,
            truncate: 0.5,
            mtu: Some(1500),
            ..Default::default()
        };
        let t0 = Instant::now();
        let mut link = Link::new(Schedule::constant(cfg), 5, t0);
        link.push(t0, vec![0; 1473]);
        assert_eq!(link.counters().dropped_mtu, 1);
        for _ in 0..1000 {
            link.push(t0, vec![0; 1472]);
        }
        let mut shorter = 0;
        while let Some(d) = link.poll(t0) {
            assert!(d.len() < 1472 || d.iter().map(|b| b.count_ones()).sum::<u32>() == 1);
            shorter += usize::from(d.len() < 1472);
        }
        let c = link.counters();
        assert_eq!((c.corrupted, c.truncated as usize), (1000, shorter));
        assert!((400..600).contains(&shorter));
    }

    #[test]
    fn delay_and_jitter_stay_within_their_bounds() {
        let cfg = LinkConfig {
            delay: Duration::from_millis(20),
            jitter: Duration::from_millis(5),
            ..Default::default()
        };
        let t0 = Instant::now();
        let mut link = Link::new(Schedule::constant(cfg), 6, t0);
        for i in 0..2000u64 {
            link.push(t0 + Duration::from_micros(i * 10), vec![0; 8]);
        }
        assert!(link.poll(t0 + Duration::from_millis(20)).is_none());
        let mut seen = 0;
        let mut late = Duration::ZERO;
        while let Some(due) = link.next_due() {
            while link.poll(due).is_some() {
                seen += 1;
                late = late.max(due - t0);
            }
        }
        assert_eq!(seen, 2000);
        // Last arrival at 19.99 ms, plus 20 ms delay, plus under 5 ms of jitter.
        assert!(late < Duration::from_micros(19_990 + 25_000), "{late:?}");
        assert!(late > Duration::from_millis(40));
    }

    #[test]
    fn duplication_matches_its_rate_and_copies_are_identical() {
        let cfg = LinkConfig {
            duplicate: 0.1,
            ..Default::default()
        };
        let (c, out, _) = run(cfg, 8, 100_000);
        assert!((c.duplicated as f64 / 100_000.0 - 0.1).abs() < 0.005);
        assert_eq!(out.len() as u64, 100_000 + c.duplicated);
        let doubles = out.windows(2).filter(|w| w[0] == w[1]).count() as u64;
        assert_eq!(doubles, c.duplicated);
    }

    #[test]
    fn rate_limit_paces_and_tail_drops() {
        let cfg = LinkConfig {
            rate_bps: Some(8_000_000),
            queue_bytes: 10_000,
            ..Default::default()
        };
        let t0 = Instant::now();
        let mut link = Link::new(Schedule::constant(cfg), 0, t0);
        for _ in 0..100 {
            link.push(t0, vec![0; 972]);
        }
        assert_eq!(
            link.counters().dropped_queue,
            90,
            "a 10 kB queue holds 10 datagrams of 1 kB on the wire"
        );
        assert_eq!(link.counters().longest_burst, 90);
        assert!(link.poll(t0).is_none());
        let mut now = t0;
        let mut n = 0;
        while let Some(due) = link.next_due() {
            now = due;
            while link.poll(now).is_some() {
                n += 1;
            }
        }
        assert_eq!(n, 10);
        assert_eq!(now - t0, Duration::from_millis(10));
    }

    #[test]
    fn overloaded_rate_limit_achieves_its_rate_within_3_percent() {
        // Offer 1.5x the link rate for a million datagrams on a simulated clock.
        let rate = 1_000_000_000u64;
        let cfg = LinkConfig {
            rate_bps: Some(rate),
            queue_bytes: 256 << 10,
            ..Default::default()
        };
        let t0 = Instant::now();
        let mut link = Link::new(Schedule::constant(cfg), 0, t0);
        let gap = Duration::from_nanos(1500 * 8 * 1_000_000_000 / (rate * 3 / 2));
        let mut now = t0;
        let mut first_out = None;
        let mut last_out = t0;
        let mut wire_bytes = 0u64;
        for _ in 0..1_000_000 {
            link.push(now, vec![0; 1472]);
            while let Some(d) = link.poll(now) {
                first_out.get_or_insert(now);
                last_out = now;
                wire_bytes += (d.len() + IP_UDP_OVERHEAD) as u64;
            }
            now += gap;
        }
        let secs = (last_out - first_out.unwrap()).as_secs_f64();
        let achieved = wire_bytes as f64 * 8.0 / secs;
        assert!((achieved / rate as f64 - 1.0).abs() < 0.03, "{achieved}");
        assert!(link.counters().dropped_queue > 250_000);
    }

    #[test]
    fn phases_and_outages_follow_the_timeline() {
        let mut schedule = Schedule {
            phases: vec![
                Phase {
                    name: "clean".into(),
                    duration: Some(Duration::from_secs(10)),
                    config: LinkConfig::default(),
                },
                Phase {
                    name: "cut".into(),
                    duration: Some(Duration::from_secs(5)),
                    config: LinkConfig {
                        down: true,
                        ..Default::default()
                    },
                },
                Phase {
                    name: "after".into(),
                    duration: None,
                    config: LinkConfig::default(),
                },
            ],
            outages: vec![(Duration::from_secs(20), Duration::from_secs(1))],
            repeat: false,
        };
        let t0 = Instant::now();
        let at = |s: f64| t0 + Duration::from_secs_f64(s);
        let mut link = Link::new(schedule.clone(), 0, t0);
        for s in [1.0, 9.9, 10.0, 14.9, 15.0, 20.5, 21.0, 100.0] {
            link.push(at(s), vec![1]);
        }
        let c = link.phase_counters();
        assert_eq!((c[0].received, c[0].dropped), (2, 0));
        assert_eq!((c[1].received, c[1].dropped_outage), (2, 2));
        assert_eq!((c[2].received, c[2].dropped_outage), (4, 1));
        let spent = schedule.time_in_phases(Duration::from_secs(30));
        assert_eq!(spent, [10, 5, 15].map(Duration::from_secs));
        schedule.repeat = true;
        schedule.phases[2].duration = Some(Duration::from_secs(15));
        assert_eq!(schedule.phase_at(Duration::from_secs(31)), 0);
        assert_eq!(schedule.phase_at(Duration::from_secs(41)), 1);
    }
}
