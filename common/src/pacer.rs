//! Send pacing: two virtual clocks, one at the set rate and one at a catch-up rate slightly above it.
//!
//! The first keeps the long-run average exact: time lost to a stall (slow disk, busy core, the
//! scheduler) is owed and made up, up to [`MAX_DEBT`]. The second bounds how fast it is made up:
//! never above [`CATCH_UP`] times the rate beyond a short `slack`, so that a pause never turns into
//! a burst that overruns the receiver's socket buffer. Any 10 ms window therefore carries at most
//! about `CATCH_UP x (10 ms + slack)` worth of the rate.

use std::time::{Duration, Instant};

/// IPv4 + UDP header bytes counted against the rate for every datagram.
pub const IP_UDP_OVERHEAD: usize = 28;

/// Rate, relative to the set one, at which time lost to a stall is made up.
pub const CATCH_UP: f64 = 1.2;

/// Most time lost to stalls that is made up; beyond it, it is forgiven.
pub const MAX_DEBT: Duration = Duration::from_millis(200);

/// Paces datagrams at a fixed bit rate.
#[derive(Debug, Clone)]
pub struct Pacer {
    rate_bps: u64,
    slack: Duration,
    /// When the datagrams sent so far would have finished at the set rate.
    average: Option<Instant>,
    /// The same at the catch-up rate.
    ceiling: Option<Instant>,
}

impl Pacer {
    /// A pacer for `rate_bps` bits per second allowing `slack` of back-to-back sending at most.
    pub fn new(rate_bps: u64, slack: Duration) -> Self {
        Pacer {
            rate_bps: rate_bps.max(1),
            slack,
            average: None,
            ceiling: None,
        }
    }

    /// Time on the wire of a datagram of `bytes` payload bytes.
    pub fn transmission_time(&self, bytes: usize) -> Duration {
        let bits = ((bytes + IP_UDP_OVERHEAD) * 8) as u128;
        Duration::from_nanos((bits * 1_000_000_000 / u128::from(self.rate_bps)) as u64)
    }

    /// How long to wait before sending the next datagram; zero means send now.
    pub fn delay(&self, now: Instant) -> Duration {
        let wait =
            |t: Option<Instant>| t.map_or(Duration::ZERO, |t| t.saturating_duration_since(now));
        wait(self.average).max(wait(self.ceiling))
    }

    /// Accounts for a datagram of `bytes` sent at `now`.
    pub fn on_send(&mut self, now: Instant, bytes: usize) {
        let t = self.transmission_time(bytes);
        let owed_from = now.checked_sub(MAX_DEBT).unwrap_or(now);
        let avg = self.average.map_or(now, |a| a.max(owed_from));
        self.average = Some(avg + t);
        let floor = now.checked_sub(self.slack).unwrap_or(now);
        let ceil = self.ceiling.map_or(now, |c| c.max(floor));
        self.ceiling = Some(ceil + t.div_f64(CATCH_UP));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_the_rate_makes_up_a_stall_and_bounds_the_catch_up() {
        let t0 = Instant::now();
        let mut p = Pacer::new(8_000_000, Duration::from_millis(1)); // 1 MB/s
        let mut now = t0;
        let mut sent = 0;
        while now < t0 + Duration::from_secs(1) {
            now += p.delay(now);
            p.on_send(now, 972); // 1,000 bytes with headers: 1 ms each
            sent += 1;
        }
        assert!((999..=1001).contains(&sent), "{sent}");
        // A 100 ms stall: made up at 1.2x, so that the second after it still carries 1,100 ms worth.
        now += Duration::from_millis(100);
        let resume = now;
        let mut burst = 0;
        while p.delay(now).is_zero() {
            p.on_send(now, 972);
            burst += 1;
        }
        assert!(burst <= 2, "back to back after a stall: {burst}");
        let mut in_window = [0u32; 200];
        let mut after = 0;
        while now < resume + Duration::from_secs(1) {
            now += p.delay(now);
            p.on_send(now, 972);
            after += 1;
            in_window[((now - resume).as_millis() / 10) as usize] += 1;
        }
        assert!((1095..=1102).contains(&after), "stall not made up: {after}");
        assert!(
            in_window.iter().all(|n| *n <= 14),
            "a 10 ms window above 1.4x: {:?}",
            in_window.iter().max()
        );
        // A stall longer than the debt allowance: only MAX_DEBT is made up.
        now += Duration::from_secs(2);
        let resume = now;
        let mut n = 0;
        while now < resume + Duration::from_secs(2) {
            now += p.delay(now);
            p.on_send(now, 972);
            n += 1;
        }
        assert!((2195..=2202).contains(&n), "{n}");
    }
}
