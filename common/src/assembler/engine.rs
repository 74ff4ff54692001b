//! The assembler itself: its state, and the calls a receive loop makes (datagrams in, time in,
//! events out). The steps a datagram goes through live beside it: [`super::admission`] (which
//! sessions are tracked), [`super::shard`] (a shard into its block and object), [`super::memory`]
//! (the budget and the buffer pool), [`super::pressure`] (what gives way when memory runs short)
//! and [`super::loss`] (how objects and gaps are reported lost).

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::fec::Fec;
use crate::layout::Geometry;
use crate::link_state::LinkMonitor;
use crate::wire::{self, Datagram, WireError};

use super::budget::Budget;
use super::session::Session;
use super::types::Abandon;
use super::types::{AssemblerConfig, Counters, Event, ObjectKey, SessionStats};

/// Rebuilds objects from shard datagrams.
#[derive(Debug)]
pub struct Assembler {
    pub(crate) config: AssemblerConfig,
    pub(crate) started: Instant,
    pub(crate) fec: Fec,
    pub(crate) sessions: HashMap<u64, Session>,
    pub(crate) next_ordinal: u64,
    pub(crate) events: VecDeque<Event>,
    pub(crate) counters: Counters,
    pub(crate) budget: Budget,
    pub(crate) objects: usize,
    pub(crate) pool: Vec<Vec<u8>>,
    pub(crate) link: LinkMonitor,
}

/// The parts of the assembler a shard touches besides its session, borrowed apart from it.
pub(crate) struct Shared<'a> {
    pub(crate) config: &'a AssemblerConfig,
    pub(crate) fec: &'a mut Fec,
    pub(crate) events: &'a mut VecDeque<Event>,
    pub(crate) counters: &'a mut Counters,
    pub(crate) budget: &'a mut Budget,
    pub(crate) objects: &'a mut usize,
    pub(crate) pool: &'a mut Vec<Vec<u8>>,
}

impl Assembler {
    /// Creates an assembler; `now` is when the receiver started listening.
    pub fn new(config: AssemblerConfig, now: Instant) -> Self {
        Assembler {
            config,
            started: now,
            fec: Fec::default(),
            sessions: HashMap::new(),
            next_ordinal: 0,
            events: VecDeque::new(),
            counters: Counters::default(),
            budget: Budget::new(config.max_pending_bytes),
            objects: 0,
            pool: Vec::new(),
            link: LinkMonitor::new(config.silence),
        }
    }
    /// Counters so far.
    pub fn counters(&self) -> Counters {
        self.counters
    }
    /// Bytes held for blocks and objects in progress, counted as allocated.
    pub fn pending_bytes(&self) -> usize {
        self.budget.used() - self.pool.iter().map(Vec::capacity).sum::<usize>()
    }
    /// Everything the budget counts: [`Self::pending_bytes`] plus buffers kept for reuse. Never
    /// above `max_pending_bytes`.
    pub fn held_bytes(&self) -> usize {
        self.budget.used()
    }
    /// Objects in progress.
    pub fn objects_in_progress(&self) -> usize {
        self.objects
    }
    /// Sessions tracked.
    pub fn sessions(&self) -> usize {
        self.sessions.len()
    }
    /// Per-session loss accounting.
    pub fn session_stats(&self) -> Vec<SessionStats> {
        let mut v: Vec<SessionStats> = self
            .sessions
            .iter()
            .map(|(id, s)| SessionStats {
                session: *id,
                received: s.received,
                last_heartbeat: s.heartbeat,
            })
            .collect();
        v.sort_by_key(|s| s.session);
        v
    }
    /// Takes back a buffer handed out with [`Event::Content`], for reuse.
    pub fn recycle(&mut self, buf: Vec<u8>) {
        if buf.capacity() < 4096 {
            // A rebuilt shard, not a block or run buffer: not worth a slot in the pool.
            return;
        }
        let (_, mut sh) = self.split();
        sh.pool_buffer(buf);
    }
    /// Next event to act on.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }
    pub(crate) fn split(&mut self) -> (&mut HashMap<u64, Session>, Shared<'_>) {
        (
            &mut self.sessions,
            Shared {
                config: &self.config,
                fec: &mut self.fec,
                events: &mut self.events,
                counters: &mut self.counters,
                budget: &mut self.budget,
                objects: &mut self.objects,
                pool: &mut self.pool,
            },
        )
    }
    /// Handles one received datagram. Errors are for counting and logging only: the assembler
    /// stays usable whatever comes in, and a rejected datagram changes no state.
    pub fn handle_datagram(&mut self, now: Instant, bytes: &[u8]) -> Result<(), WireError> {
        self.counters.datagrams += 1;
        let datagram = match wire::parse(bytes) {
            Ok(d) => d,
            Err(e) => {
                self.counters.malformed += 1;
                return Err(e);
            }
        };
        match datagram {
            Datagram::Shard(h, payload) => {
                // Every check that needs no state comes before any state is created.
                let checked = Geometry::from_header(&h)
                    .and_then(|g| Ok((g, g.check_shard(h.block, h.parity_shards, h.shard)?)));
                let (geometry, span) = checked.inspect_err(|_| self.counters.inconsistent += 1)?;
                if !self.admit_session(now, h.session, h.object) {
                    return Ok(());
                }
                self.on_datagram_accepted(now);
                self.on_shard(now, h, payload, geometry, span)
            }
            Datagram::Heartbeat(hb) => {
                if !self.admit_session(now, hb.session, hb.objects_sent) {
                    return Ok(());
                }
                self.on_datagram_accepted(now);
                self.on_heartbeat(now, hb);
                Ok(())
            }
            Datagram::Announce(a) => {
                let first = a.entries().map(|e| e.object).min().unwrap_or(0);
                if !self.admit_session(now, a.session, first) {
                    return Ok(());
                }
                self.on_datagram_accepted(now);
                self.on_announce(now, a);
                Ok(())
            }
            Datagram::Tails(t) => {
                // Tails make no session: the session's heartbeats (which say where its objects
                // start) do, and the tails repeat.
                let Some(s) = self.sessions.get_mut(&t.session) else {
                    return Ok(());
                };
                s.last_seen = now;
                s.received += 1;
                s.announcing = true;
                self.on_datagram_accepted(now);
                self.events.push_back(Event::Tails {
                    session: t.session,
                    tails: t.entries().map(|(c, e, t)| (c.to_owned(), e, t)).collect(),
                });
                Ok(())
            }
        }
    }
    pub(crate) fn on_datagram_accepted(&mut self, now: Instant) {
        if let Some(change) = self.link.on_datagram(now) {
            self.events.push_back(Event::Link(change));
        }
    }
    /// Gives up an object from outside (for example after a disk error); later shards are
    /// ignored and no event is emitted for it.
    pub fn abandon(&mut self, key: ObjectKey) {
        let (sessions, mut sh) = self.split();
        if let Some(s) = sessions.get_mut(&key.session)
            && let Some(obj) = s.objects.remove(&key.object)
        {
            s.finished.insert(key.object, key.object.saturating_add(1));
            sh.free_object(s, obj);
        }
    }
    /// Expires objects, gaps and link state; call at least every 100 ms.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(change) = self.link.on_tick(now) {
            self.events.push_back(Event::Link(change));
        }
        let timeout = self.config.object_timeout;
        let (sessions, mut sh) = self.split();
        let mut ids: Vec<u64> = sessions.keys().copied().collect();
        ids.sort_unstable();
        for sid in ids {
            let Some(s) = sessions.get_mut(&sid) else {
                continue;
            };
            let mut expired: Vec<u64> = s
                .objects
                .iter()
                .filter(|(oid, o)| {
                    let limit =
                        unnamed_wait(timeout, o.head.is_none() && !s.announced.contains_key(oid));
                    now.saturating_duration_since(o.last_activity) >= limit
                })
                .map(|(&oid, _)| oid)
                .collect();
            expired.sort_unstable();
            for object in expired {
                let key = ObjectKey {
                    session: sid,
                    object,
                };
                sh.lose(s, key, None);
            }
            let gaps: Vec<(u64, u64)> = s
                .gaps
                .drain_where(|noticed| {
                    now.saturating_duration_since(*noticed) >= unnamed_wait(timeout, true)
                })
                .into_iter()
                .map(|(first, end, _)| (first, end))
                .collect();
            for &(first, end) in &gaps {
                s.finished.insert(first, end);
            }
            sh.missing(sid, s, gaps);
            // Names of objects finished since they were announced are needed no more.
            let finished = &s.finished;
            s.announced.retain(|object, _| !finished.contains(*object));
        }
    }

    /// The next instant [`Self::handle_timeout`] has work to do (an object or a gap to expire, a
    /// silence to report), if any: a receive loop waits until then or the next datagram.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let timeout = self.config.object_timeout;
        let objects = self.sessions.values().flat_map(|s| {
            s.objects
                .iter()
                .map(|(oid, o)| {
                    let unnamed = o.head.is_none() && !s.announced.contains_key(oid);
                    o.last_activity + unnamed_wait(timeout, unnamed)
                })
                .chain(
                    s.gaps
                        .iter()
                        .map(move |(_, _, noticed)| noticed + unnamed_wait(timeout, true)),
                )
        });
        objects.chain(self.link.silent_at()).min()
    }
    /// Reports everything still in progress as lost because the receiver stops, so that every
    /// object heard gets an outcome.
    pub fn shutdown(&mut self) {
        let (sessions, mut sh) = self.split();
        let mut ids: Vec<u64> = sessions.keys().copied().collect();
        ids.sort_unstable();
        for sid in ids {
            if let Some(s) = sessions.get_mut(&sid) {
                sh.close_all(sid, s, Abandon::ReceiverStopped);
            }
        }
    }
}

/// How long an object waits for its outcome with no datagram arriving: `timeout`, or, for one
/// whose name is still unknown (no head, no announcement: a gap is one), at least until its
/// sender's last announcement of it is due, so that its loss can be reported by name.
fn unnamed_wait(timeout: Duration, unnamed: bool) -> Duration {
    if unnamed {
        timeout.max(NAMING_WINDOW)
    } else {
        timeout
    }
}

/// The sender's announcements of an object span this long after it was sent, and a second more.
const NAMING_WINDOW: Duration =
    Duration::from_secs(crate::announce::DELAYS[crate::announce::REPEATS - 1].as_secs() + 1);
