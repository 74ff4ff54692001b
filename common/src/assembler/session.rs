//! One sender session as the receiver knows it: objects in progress, objects finished, and gaps
//! in the object numbering, all in bounded memory.

use std::collections::HashMap;
use std::time::Instant;

use crate::ranges::RangeMap;
use crate::wire::Heartbeat;

use super::object::Object;
use super::types::{MAX_HEARTBEAT_INTERVAL, MIN_HEARTBEAT_INTERVAL};

/// Most disjoint ranges of finished objects remembered per session; beyond it the lowest ones are
/// folded into a floor below which every object counts as finished.
pub(crate) const MAX_FINISHED_RANGES: usize = 1024;
/// A session of which nothing arrived for this long may give way to a new one.
pub(crate) const SILENT: std::time::Duration = std::time::Duration::from_secs(2);
/// Most disjoint gaps tracked per session; beyond it the oldest are reported missing at once.
pub(crate) const MAX_GAP_RANGES: usize = 1024;

/// Objects of a session that will take no more shards (completed, abandoned or reported missing).
#[derive(Debug, Default)]
pub(crate) struct Finished {
    /// Every object below it is finished (unless still in progress).
    floor: u64,
    ranges: RangeMap<()>,
}

impl Finished {
    pub(crate) fn contains(&self, object: u64) -> bool {
        object < self.floor || self.ranges.contains(object)
    }

    /// Marks `[first, end)` finished, folding the lowest ranges into the floor when too many.
    pub(crate) fn insert(&mut self, first: u64, end: u64) {
        if end <= self.floor {
            return;
        }
        self.ranges.insert(first.max(self.floor), end, ());
        while self.ranges.len() > MAX_FINISHED_RANGES {
            match self.ranges.pop_first() {
                Some((_, end, ())) => self.floor = end,
                None => break,
            }
        }
    }
}

/// A sender session.
#[derive(Debug)]
pub(crate) struct Session {
    /// Order in which sessions were first heard: a later session's files supersede an earlier one's.
    pub(crate) ordinal: u64,
    pub(crate) objects: HashMap<u64, Object>,
    pub(crate) finished: Finished,
    /// Objects of which nothing arrived yet although a later one did, with when that was noticed.
    pub(crate) gaps: RangeMap<Instant>,
    /// Lowest object number heard: gaps are tracked from here on.
    pub(crate) low: u64,
    /// Path and size announced for objects not finished (at most `names::MAX_ANNOUNCED`).
    pub(crate) announced: std::collections::BTreeMap<u64, (String, u64)>,
    /// An announcement was heard: like a heartbeat, a sender's datagram, not a bare shard.
    pub(crate) announcing: bool,
    /// One past the highest object number heard or announced.
    pub(crate) next: u64,
    /// Valid datagrams received from it.
    pub(crate) received: u64,
    pub(crate) last_seen: Instant,
    /// When it was first heard: a new session gets one object timeout to decode its first block.
    pub(crate) first_seen: Instant,
    /// When a block of it was last decoded: a session making progress is never evicted.
    pub(crate) last_progress: Option<Instant>,
    pub(crate) heartbeat: Option<Heartbeat>,
    /// A heartbeat or a valid metadata head was heard: it is a sender, not noise.
    pub(crate) identified: bool,
    /// Bytes of the budget its blocks and objects hold.
    pub(crate) used: usize,
    /// Shards of it heard, known duplicates excepted: the clock a block's wait is measured on.
    /// It runs whenever the sender sends, even when memory is full and nothing decodes.
    pub(crate) shards: u64,
    /// No block of it is stale before `shards` reaches this (a lower bound, kept as blocks
    /// open and refreshed by each search for stale blocks), so that a receiver short of memory
    /// does not search every open block for every datagram.
    pub(crate) stale_from: u64,
}

impl Session {
    /// A heartbeat or an announcement was heard from it: its losses are reported one by one (a
    /// session of bare shards, which anyone can forge in numbers, has them counted in aggregate).
    pub(crate) fn sender_heard(&self) -> bool {
        self.heartbeat.is_some() || self.announcing
    }

    pub(crate) fn new(ordinal: u64, first_object: u64, now: Instant) -> Self {
        Session {
            ordinal,
            objects: HashMap::new(),
            finished: Finished::default(),
            gaps: RangeMap::default(),
            low: first_object,
            announced: std::collections::BTreeMap::new(),
            announcing: false,
            next: first_object,
            received: 0,
            last_seen: now,
            first_seen: now,
            last_progress: None,
            heartbeat: None,
            identified: false,
            used: 0,
            shards: 0,
            stale_from: u64::MAX,
        }
    }

    /// Notes that objects `[first, end)` had nothing arrive as of `now`; returns gaps pushed out
    /// by the bound, to be reported missing at once.
    pub(crate) fn add_gap(&mut self, first: u64, end: u64, now: Instant) -> Vec<(u64, u64)> {
        self.gaps.insert(first, end, now);
        let mut evicted = Vec::new();
        while self.gaps.len() > MAX_GAP_RANGES {
            match self.gaps.pop_first() {
                Some((s, e, _)) => {
                    self.finished.insert(s, e);
                    evicted.push((s, e));
                }
                None => break,
            }
        }
        evicted
    }

    /// An object was heard: it is no gap, and the numbering around it may open new gaps.
    pub(crate) fn heard(&mut self, object: u64, now: Instant) -> Vec<(u64, u64)> {
        self.gaps.remove(object);
        let mut evicted = Vec::new();
        // `object` is never u64::MAX (reserved on the wire), so `object + 1` exists.
        let after = object.saturating_add(1);
        if object < self.low {
            evicted.extend(self.add_gap(after, self.low, now));
            self.low = object;
        }
        if object >= self.next {
            evicted.extend(self.add_gap(self.next, object, now));
            self.next = after;
        }
        evicted
    }

    /// Older than `window` and nothing decoded within it (idle, or sending shards that never
    /// complete a block).
    pub(crate) fn idle(&self, now: Instant, window: std::time::Duration) -> bool {
        let recent = |t: Instant| now.saturating_duration_since(t) < window;
        !recent(self.first_seen) && !self.last_progress.is_some_and(recent)
    }

    /// May give way to a new session: silent (nothing heard for [`SILENT`], or for three of its
    /// heartbeat intervals if it heartbeats), or heard only through shards (never a heartbeat nor
    /// an announcement) and [`Session::idle`]. A sender whose heartbeats arrive never is, whether
    /// or not it has files to send.
    pub(crate) fn evictable(&self, now: Instant, window: std::time::Duration) -> bool {
        let silence = self.heartbeat.map_or(SILENT, |hb| {
            let interval = std::time::Duration::from_millis(u64::from(hb.interval_ms))
                .clamp(MIN_HEARTBEAT_INTERVAL, MAX_HEARTBEAT_INTERVAL);
            (interval * 3).max(SILENT)
        });
        if now.saturating_duration_since(self.last_seen) >= silence {
            return true;
        }
        !self.sender_heard() && self.idle(now, window)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finished_stays_bounded_and_folds_into_a_floor() {
        let mut f = Finished::default();
        for i in 0..(MAX_FINISHED_RANGES as u64 * 3) {
            f.insert(2 * i, 2 * i + 1);
        }
        assert!(f.ranges.len() <= MAX_FINISHED_RANGES);
        assert!(f.contains(0) && f.contains(1), "folded below the floor");
        let top = 2 * (MAX_FINISHED_RANGES as u64 * 3 - 1);
        assert!(f.contains(top) && !f.contains(top + 1));
        f.insert(u64::MAX - 1, u64::MAX);
        assert!(f.contains(u64::MAX - 1));
    }

    #[test]
    fn gaps_stay_bounded() {
        let t = Instant::now();
        let mut s = Session::new(0, 0, t);
        let mut evicted = 0;
        for i in 0..(MAX_GAP_RANGES as u64 * 2) {
            evicted += s.heard(2 * i + 1, t).len();
        }
        assert!(s.gaps.len() <= MAX_GAP_RANGES);
        assert_eq!(evicted + s.gaps.len(), MAX_GAP_RANGES * 2);
        assert_eq!(s.heard(u64::MAX - 1, t).len(), 1);
        assert_eq!(s.next, u64::MAX);
    }
}
