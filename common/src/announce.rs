//! The sender's announcements (`docs/protocol.md` §2.4): every object sent whole is named, with
//! its size and digest, in [`REPEATS`] announcement datagrams spread over [`DELAYS`], so that a
//! receiver that loses the object's head (or all of it) still names it in its loss record.
//!
//! Sans-IO: entries and time come in, datagrams go out; the transmitter seals and sends them.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::wire::{Announced, emit_announcement};

/// When each announcement of an object goes out, after the object was sent whole.
pub const DELAYS: [Duration; REPEATS] = [
    Duration::from_millis(0),
    Duration::from_millis(100),
    Duration::from_millis(250),
    Duration::from_millis(500),
    Duration::from_millis(750),
    Duration::from_millis(1000),
    Duration::from_millis(1500),
    Duration::from_millis(2000),
    Duration::from_millis(2500),
    Duration::from_millis(3000),
    Duration::from_millis(4000),
    Duration::from_millis(5000),
];
/// Announcements per object.
pub const REPEATS: usize = 12;
/// Entries scheduled at most: beyond it the oldest entry is dropped (and counted), so that a
/// sender of very many small files holds a bounded schedule.
pub const MAX_SCHEDULED: usize = 16_384;
/// Spacing of an entry's remaining announcements when the sender is about to stop.
pub const HURRIED: Duration = Duration::from_millis(25);

#[derive(Debug)]
struct Scheduled {
    entry: Announced,
    /// The object was sent whole at this instant.
    since: Instant,
    /// Announcements of it sent so far.
    sent: usize,
    /// Its next announcement is due at this instant.
    due: Instant,
    /// The sender is stopping: the remaining announcements follow each other [`HURRIED`] apart.
    hurried: bool,
}

/// The schedule of announcements of one session.
#[derive(Debug)]
pub struct Announcer {
    session: u64,
    /// Longest datagram to emit (what fits the link).
    max_len: usize,
    /// In the order entries came in; due times of later entries are never earlier than those of
    /// earlier entries with as many announcements sent, but may be earlier than an earlier
    /// entry's next one: every turn looks at the whole schedule (it is short).
    scheduled: VecDeque<Scheduled>,
    /// The earliest due time in `scheduled`, kept as it changes: the transmitter asks before
    /// every send, and the schedule can hold thousands of entries.
    earliest: Option<Instant>,
    /// Entries dropped because the schedule was full.
    pub dropped: u64,
}

impl Announcer {
    /// A schedule for `session` emitting datagrams of at most `max_len` bytes.
    pub fn new(session: u64, max_len: usize) -> Self {
        Announcer {
            session,
            max_len,
            scheduled: VecDeque::new(),
            earliest: None,
            dropped: 0,
        }
    }

    /// Schedules `entry` (an object sent whole at `now`).
    pub fn push(&mut self, entry: Announced, now: Instant) {
        if self.scheduled.len() >= MAX_SCHEDULED {
            self.scheduled.pop_front();
            self.dropped += 1;
        }
        self.scheduled.push_back(Scheduled {
            entry,
            since: now,
            sent: 0,
            due: now,
            hurried: false,
        });
        // An entry dropped above can only leave this early: the next poll finds nothing due
        // and recomputes it.
        self.earliest = Some(self.earliest.map_or(now, |e| e.min(now)));
    }

    /// The instant the next announcement is due, if any is scheduled.
    pub fn next_due(&self) -> Option<Instant> {
        self.earliest
    }

    /// Entries still to announce.
    pub fn len(&self) -> usize {
        self.scheduled.len()
    }

    /// True when nothing is left to announce.
    pub fn is_empty(&self) -> bool {
        self.scheduled.is_empty()
    }

    /// The announcement datagrams due at `now` (plain, each ending with its CRC), entries packed
    /// as many to a datagram as fit.
    pub fn poll(&mut self, now: Instant) -> Vec<Vec<u8>> {
        let mut due: Vec<&Announced> = Vec::new();
        for s in &mut self.scheduled {
            if s.due <= now {
                s.sent += 1;
                s.due = match DELAYS.get(s.sent) {
                    _ if s.hurried => now + HURRIED,
                    Some(d) => (s.since + *d).max(now),
                    None => now,
                };
                due.push(&s.entry);
            }
        }
        let out = emit_announcement(self.session, &due, self.max_len);
        self.scheduled.retain(|s| s.sent < REPEATS);
        self.earliest = self.scheduled.iter().map(|s| s.due).min();
        out
    }

    /// Brings every entry's remaining announcements forward, [`HURRIED`] apart from `now`: the
    /// sender is about to stop.
    pub fn hurry(&mut self, now: Instant) {
        for s in &mut self.scheduled {
            s.hurried = true;
            s.due = s.due.min(now);
        }
        self.earliest = self.scheduled.iter().map(|s| s.due).min();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Datagram, parse};

    fn entry(object: u64, path: &str) -> Announced {
        Announced {
            object,
            size: object * 10,
            digest: [object as u8; 32],
            path: path.into(),
        }
    }

    #[test]
    fn each_object_is_announced_repeats_times_over_the_delays_packed_with_others() {
        let t0 = Instant::now();
        let mut a = Announcer::new(7, 1400);
        for i in 0..40 {
            a.push(entry(i, &format!("dir/file-{i}.csv")), t0);
        }
        let mut seen = vec![0usize; 40];
        let mut datagrams = 0;
        let mut now = t0;
        while let Some(due) = a.next_due() {
            now = due.max(now);
            for d in a.poll(now) {
                assert!(d.len() <= 1400);
                datagrams += 1;
                let Ok(Datagram::Announce(ann)) = parse(&d) else {
                    panic!("not an announcement");
                };
                assert_eq!(ann.session, 7);
                for e in ann.entries() {
                    seen[e.object as usize] += 1;
                    assert_eq!(e.path, format!("dir/file-{}.csv", e.object));
                    assert_eq!(e.size, e.object * 10);
                }
            }
        }
        assert!(seen.iter().all(|n| *n == REPEATS), "{seen:?}");
        assert_eq!(now - t0, DELAYS[REPEATS - 1]);
        // 40 entries of 68 bytes: two datagrams a turn.
        assert_eq!(datagrams, 2 * REPEATS);
        assert!(a.is_empty());
    }

    #[test]
    fn a_hurried_schedule_ends_within_a_third_of_a_second() {
        let t0 = Instant::now();
        let mut a = Announcer::new(7, 1400);
        a.push(entry(1, "a"), t0);
        assert_eq!(a.poll(t0).len(), 1);
        a.hurry(t0);
        let mut now = t0;
        let mut sent = 1;
        while let Some(due) = a.next_due() {
            now = due.max(now);
            sent += a.poll(now).len();
        }
        assert_eq!(sent, REPEATS);
        assert!(now - t0 <= HURRIED * REPEATS as u32, "{:?}", now - t0);
    }

    #[test]
    fn the_schedule_is_bounded() {
        let t0 = Instant::now();
        let mut a = Announcer::new(7, 1400);
        for i in 0..(MAX_SCHEDULED as u64 + 10) {
            a.push(entry(i, "x"), t0);
        }
        assert_eq!(a.len(), MAX_SCHEDULED);
        assert_eq!(a.dropped, 10);
    }
}
