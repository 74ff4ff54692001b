//! Link state as the receiver sees it: up while datagrams arrive, silent after a quiet spell.

use std::time::{Duration, Instant};

/// A change of link state worth reporting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkChange {
    /// Datagrams arrive again (or for the first time).
    Up,
    /// Nothing has arrived for this long: the link or the sender is down, not merely idle,
    /// because an idle sender still sends heartbeats.
    Silent(Duration),
}

/// Tracks when the last valid datagram arrived.
#[derive(Debug, Clone)]
pub struct LinkMonitor {
    silence: Duration,
    last_rx: Option<Instant>,
    up: bool,
}

impl LinkMonitor {
    /// A monitor that declares the link silent after `silence` without a valid datagram.
    pub fn new(silence: Duration) -> Self {
        LinkMonitor {
            silence,
            last_rx: None,
            up: false,
        }
    }

    /// Adapts the silence threshold to the sender's heartbeat interval (three missed heartbeats).
    pub fn observe_interval(&mut self, interval: Duration, floor: Duration) {
        self.silence = floor.max(interval * 3);
    }

    /// Records a valid datagram.
    pub fn on_datagram(&mut self, now: Instant) -> Option<LinkChange> {
        self.last_rx = Some(now);
        if self.up {
            None
        } else {
            self.up = true;
            Some(LinkChange::Up)
        }
    }

    /// Checks for silence.
    pub fn on_tick(&mut self, now: Instant) -> Option<LinkChange> {
        let last = self.last_rx?;
        let quiet = now.saturating_duration_since(last);
        if self.up && quiet >= self.silence {
            self.up = false;
            Some(LinkChange::Silent(quiet))
        } else {
            None
        }
    }

    /// When the link will be declared silent if nothing arrives meanwhile (`None` while it is not
    /// up).
    pub fn silent_at(&self) -> Option<Instant> {
        self.last_rx.filter(|_| self.up).map(|t| t + self.silence)
    }

    /// True while datagrams arrive.
    pub fn is_up(&self) -> bool {
        self.up
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn goes_silent_and_comes_back() {
        let t0 = Instant::now();
        let mut m = LinkMonitor::new(Duration::from_secs(3));
        assert_eq!(m.on_tick(t0), None);
        assert_eq!(m.on_datagram(t0), Some(LinkChange::Up));
        assert_eq!(m.on_tick(t0 + Duration::from_secs(2)), None);
        assert_eq!(
            m.on_tick(t0 + Duration::from_secs(3)),
            Some(LinkChange::Silent(Duration::from_secs(3)))
        );
        assert_eq!(m.on_tick(t0 + Duration::from_secs(9)), None);
        assert_eq!(
            m.on_datagram(t0 + Duration::from_secs(10)),
            Some(LinkChange::Up)
        );
    }
}
