//! Parity shedding: how much parity a receiver that is behind may drop on purpose, given the loss
//! the link itself shows.
//!
//! A receiver that cannot keep up must drop something. Dropping parity sheds work without costing
//! a block while every block's data arrives, but on a lossy link every block needs some of its
//! parity, and what the receiver sheds adds to what the link loses. [`LossMeter`] measures the
//! link's loss on data shards (which are never shed), and [`shed_limit`] keeps enough of each
//! block's parity that the block survives that loss with a wide margin.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Most of a block's parity ever shed, however clean the link looks: the quarter kept repairs the
/// kernel's own drops should the receiver fall further behind.
pub const MAX_SHED: f64 = 0.75;
/// The loss assumed until the link has shown its own: shedding starts cautious (a quarter of the
/// parity at 64:22) rather than risk the first stripe group of a lossy link.
pub const ASSUMED_LOSS: f64 = 0.05;
/// How far back the loss is measured: several stripe groups at full rate.
pub const WINDOW: std::time::Duration = std::time::Duration::from_secs(5);
/// Standard deviations of a block's loss kept in reserve: a transfer has tens of thousands of
/// blocks, and one short block loses its object.
const MARGIN_SD: f64 = 5.0;
/// Shards kept in reserve beyond the deviations (small means have heavier tails than a normal).
const MARGIN_SHARDS: f64 = 2.0;
/// Data shards a window must cover before its loss is believed.
const MIN_DUE: u64 = 4096;

/// The largest fraction of a block's `parity` shards that may be dropped on purpose when the link
/// loses a fraction `loss` of the datagrams, for blocks of `data` data shards: 0 when the link
/// leaves no margin to spare.
pub fn shed_limit(data: usize, parity: usize, loss: f64) -> f64 {
    let p = if loss.is_nan() {
        1.0
    } else {
        loss.clamp(0.0, 1.0)
    };
    (0..=parity)
        .find(|&keep| {
            let n = (data + keep) as f64;
            keep as f64 >= p * n + MARGIN_SD * (n * p * (1.0 - p)).sqrt() + MARGIN_SHARDS
        })
        .map_or(0.0, |keep| {
            (1.0 - keep as f64 / parity.max(1) as f64).clamp(0.0, MAX_SHED)
        })
}

/// The link's loss measured on data shards: of the data shards due in the blocks completed
/// within the last window, the share that had to be rebuilt. Parity shed on purpose never counts;
/// the kernel's drops do, as they must: the parity has to cover them too.
#[derive(Debug, Clone)]
pub struct LossMeter {
    window: Duration,
    /// Cumulative (data shards due, data shards rebuilt) at each sample, oldest first.
    samples: VecDeque<(Instant, u64, u64)>,
    measured: Option<f64>,
    assumed: f64,
}

impl LossMeter {
    /// A meter over `window`, reporting `assumed` until the link has shown its loss.
    pub fn new(window: Duration, assumed: f64) -> Self {
        LossMeter {
            window,
            samples: VecDeque::new(),
            measured: None,
            assumed,
        }
    }

    /// Records the cumulative counts at `now`: data shards due in completed blocks, and how many
    /// of them were missing and rebuilt.
    pub fn record(&mut self, now: Instant, due: u64, missing: u64) {
        self.samples.push_back((now, due, missing));
        // Keep one sample at least a window old, as the base of the difference.
        while self.samples.len() > 2
            && self
                .samples
                .get(1)
                .is_some_and(|&(t, ..)| now.saturating_duration_since(t) >= self.window)
        {
            self.samples.pop_front();
        }
        if let (Some(&(_, d0, m0)), Some(&(_, d1, m1))) =
            (self.samples.front(), self.samples.back())
        {
            let due = d1.saturating_sub(d0);
            if due >= MIN_DUE {
                self.measured = Some(m1.saturating_sub(m0) as f64 / due as f64);
            }
        }
    }

    /// The loss last measured over a window holding enough data shards, or the assumed loss
    /// before the first.
    pub fn loss(&self) -> f64 {
        self.measured.unwrap_or(self.assumed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clean_link_allows_the_most_shedding_and_a_lossy_one_less() {
        assert_eq!(shed_limit(64, 22, 0.0), MAX_SHED);
        let at5 = shed_limit(64, 22, 0.05);
        assert!((0.2..0.35).contains(&at5), "{at5}");
        assert!(shed_limit(64, 22, 0.02) > at5);
        assert_eq!(shed_limit(64, 22, 0.10), 0.0);
        assert_eq!(shed_limit(64, 0, 0.0), 0.0);
        assert_eq!(shed_limit(64, 22, f64::NAN), 0.0);
    }

    #[test]
    fn what_is_kept_survives_the_loss_in_simulation() {
        // Seeded loss: 20,000 blocks of 64 + 22 at 5 %, shedding as allowed. No block may be short.
        let f = shed_limit(64, 22, 0.05);
        let keep = (22.0 * (1.0 - f)).floor() as usize;
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut lost_blocks = 0;
        for _ in 0..20_000 {
            let mut lost = 0;
            for _ in 0..64 + keep {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                if x % 1000 < 50 {
                    lost += 1;
                }
            }
            if lost > keep {
                lost_blocks += 1;
            }
        }
        assert_eq!(lost_blocks, 0, "kept {keep} parity shards");
    }

    #[test]
    fn the_meter_reports_the_assumed_loss_until_a_window_holds_enough_shards() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut m = LossMeter::new(Duration::from_secs(5), 0.05);
        m.record(t0, 0, 0);
        m.record(t0 + s, 1000, 0);
        assert_eq!(m.loss(), 0.05);
        m.record(t0 + 2 * s, 10_000, 100);
        assert!((m.loss() - 0.01).abs() < 1e-9);
        // Old samples leave the window: the loss is the recent one.
        for i in 3..20 {
            m.record(
                t0 + i * s,
                10_000 + u64::from(i) * 10_000,
                100 + u64::from(i) * 500,
            );
        }
        assert!((m.loss() - 0.05).abs() < 1e-9, "{}", m.loss());
        // A quiet spell keeps the last measurement rather than returning to the assumption.
        for i in 20..40 {
            m.record(t0 + i * s, 200_000, 9_600);
        }
        assert!((m.loss() - 0.05).abs() < 0.01, "{}", m.loss());
    }
}
