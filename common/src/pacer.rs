//! Send pacing: a virtual clock that advances by each datagram's transmission time at the set rate.
//!
//! A sender that stalls (slow disk, busy core) may catch up by at most `slack` worth of datagrams,
//! so a pause never turns into a burst that overruns the receiver's socket buffer.

use std::time::{Duration, Instant};

/// IPv4 + UDP header bytes counted against the rate for every datagram.
pub const IP_UDP_OVERHEAD: usize = 28;

/// Paces datagrams at a fixed bit rate.
#[derive(Debug, Clone)]
pub struct Pacer {
    rate_bps: u64,
    slack: Duration,
    virtual_time: Option<Instant>,
}

impl Pacer {
    /// A pacer for `rate_bps` bits per second allowing `slack` of catch-up after a stall.
    pub fn new(rate_bps: u64, slack: Duration) -> Self {
        Pacer {
            rate_bps: rate_bps.max(1),
            slack,
            virtual_time: None,
        }
    }

    /// Time on the wire of a datagram of `bytes` payload bytes.
    pub fn transmission_time(&self, bytes: usize) -> Duration {
        let bits = ((bytes + IP_UDP_OVERHEAD) * 8) as u128;
        Duration::from_nanos((bits * 1_000_000_000 / u128::from(self.rate_bps)) as u64)
    }

    /// How long to wait before sending the next datagram; zero means send now.
    pub fn delay(&self, now: Instant) -> Duration {
        self.virtual_time
            .map_or(Duration::ZERO, |vt| vt.saturating_duration_since(now))
    }

    /// Accounts for a datagram of `bytes` sent at `now`.
    pub fn on_send(&mut self, now: Instant, bytes: usize) {
        let floor = now.checked_sub(self.slack).unwrap_or(now);
        let base = self.virtual_time.map_or(now, |vt| vt.max(floor));
        self.virtual_time = Some(base + self.transmission_time(bytes));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_the_rate_and_bounds_catch_up() {
        let t0 = Instant::now();
        let mut p = Pacer::new(8_000_000, Duration::from_millis(1)); // 1 MB/s
        let mut now = t0;
        let mut sent = 0;
        while now < t0 + Duration::from_secs(1) {
            now += p.delay(now);
            p.on_send(now, 972); // 1,000 bytes with headers
            sent += 1;
        }
        assert!((999..=1001).contains(&sent), "{sent}");
        // After a 1 s stall, at most ~1 ms worth (1 datagram) goes out back to back.
        now += Duration::from_secs(1);
        let mut burst = 0;
        while p.delay(now).is_zero() {
            p.on_send(now, 972);
            burst += 1;
        }
        assert!(burst <= 2, "{burst}");
    }
}
