//! Rate limits for repeated log lines, so that a flood of datagrams cannot become a flood of logs.

use std::time::{Duration, Instant};

/// Allows `burst` events per window and counts the rest.
#[derive(Debug)]
pub struct Limiter {
    window: Duration,
    burst: u32,
    start: Option<Instant>,
    used: u32,
    suppressed: u64,
}

impl Limiter {
    /// At most `burst` lines per `window`.
    pub fn new(window: Duration, burst: u32) -> Self {
        Limiter {
            window,
            burst,
            start: None,
            used: 0,
            suppressed: 0,
        }
    }

    /// `Some(n)` when the event may be logged, `n` being how many were suppressed before it.
    pub fn allow(&mut self) -> Option<u64> {
        self.allow_at(Instant::now())
    }

    /// [`Self::allow`] at a given time.
    pub fn allow_at(&mut self, now: Instant) -> Option<u64> {
        if self
            .start
            .is_none_or(|s| now.saturating_duration_since(s) >= self.window)
        {
            self.start = Some(now);
            self.used = 0;
        }
        if self.used < self.burst {
            self.used += 1;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_a_burst_per_window_and_counts_the_rest() {
        let t = Instant::now();
        let mut l = Limiter::new(Duration::from_secs(10), 2);
        assert_eq!(l.allow_at(t), Some(0));
        assert_eq!(l.allow_at(t), Some(0));
        assert_eq!(l.allow_at(t), None);
        assert_eq!(l.allow_at(t), None);
        assert_eq!(l.suppressed, 2);
        assert_eq!(l.allow_at(t + Duration::from_secs(10)), Some(2));
    }
}
