//! Admission: which sender sessions are tracked (a bounded table; an idle session gives way to a
//! new one, a session making progress never does), and what their heartbeats say.

use std::time::{Duration, Instant};

use crate::wire::Heartbeat;

use super::engine::Assembler;
use super::session::Session;
use super::types::{Abandon, Event, MAX_HEARTBEAT_INTERVAL, MIN_HEARTBEAT_INTERVAL};

impl Assembler {
    /// Finds or makes room for `session`. A full table evicts the least recently heard session
    /// that may give way ([`Session::evictable`]: silent, or shards only and idle); a sender
    /// whose heartbeats arrive, and a session making progress, never does, and when every slot
    /// holds one, the newcomer's datagram is refused (counted in `refused_sessions`).
    pub(crate) fn admit_session(&mut self, now: Instant, session: u64, first_object: u64) -> bool {
        if let Some(s) = self.sessions.get_mut(&session) {
            s.last_seen = now;
            s.received += 1;
            return true;
        }
        if self.sessions.len() >= self.config.max_sessions.max(1) {
            let window = self.config.object_timeout;
            let victim = self
                .sessions
                .iter()
                .filter(|(_, s)| s.evictable(now, window))
                .min_by_key(|(id, s)| (s.last_seen, **id))
                .map(|(id, _)| *id);
            let Some(victim) = victim else {
                self.counters.refused_sessions += 1;
                return false;
            };
            self.evict(victim);
        }
        let mut s = Session::new(self.next_ordinal, first_object, now);
        s.received = 1;
        self.next_ordinal += 1;
        self.sessions.insert(session, s);
        true
    }
    pub(crate) fn evict(&mut self, victim: u64) {
        let (sessions, mut sh) = self.split();
        let Some(mut s) = sessions.remove(&victim) else {
            return;
        };
        sh.close_all(victim, &mut s, Abandon::SessionEvicted);
        sh.counters.evicted_sessions += 1;
    }
    pub(crate) fn on_heartbeat(&mut self, now: Instant, hb: Heartbeat) {
        self.counters.heartbeats += 1;
        let interval = Duration::from_millis(u64::from(hb.interval_ms))
            .clamp(MIN_HEARTBEAT_INTERVAL, MAX_HEARTBEAT_INTERVAL);
        if !self.config.fixed_silence {
            self.link.observe_interval(interval, self.config.silence);
        }
        let started = self.started;
        let (sessions, mut sh) = self.split();
        let Some(s) = sessions.get_mut(&hb.session) else {
            return;
        };
        if s.heartbeat.is_none() {
            // The sender heartbeats from its start: `seq` intervals ago it started. A session
            // that started after us (with a margin of one interval) sent every object under our
            // ears, so objects below the first one heard were lost, not missed.
            let age = interval.saturating_mul(u32::try_from(hb.seq).unwrap_or(u32::MAX));
            let after_us = now
                .checked_sub(age)
                .is_some_and(|t| t.saturating_duration_since(started) > interval);
            if after_us && s.low > 0 {
                let gaps = s.add_gap(0, s.low, now);
                s.low = 0;
                sh.missing(hb.session, s, gaps);
            }
            s.heartbeat = Some(hb);
            if !s.identified {
                s.identified = true;
                sh.events.push_back(Event::SessionStarted {
                    session: hb.session,
                    first_object: s.low,
                    after_us,
                });
            }
        } else if s.heartbeat.is_none_or(|old| hb.seq >= old.seq) {
            s.heartbeat = Some(hb);
        }
        if hb.objects_sent > s.next {
            let gaps = s.add_gap(s.next, hb.objects_sent, now);
            s.next = hb.objects_sent;
            sh.missing(hb.session, s, gaps);
        }
    }
}
