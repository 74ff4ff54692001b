//! Receiver side: rebuilds objects from datagrams in any order, in bounded memory.
//!
//! The assembler takes datagrams and the current time, and hands out [`Event`]s: decoded content
//! with its offset (to be written to disk by the caller), completed objects with their metadata and
//! digest, and everything that was lost. It does no I/O and reads no clock.
//!
//! It is split along its concepts: [`session`] (sessions, finished objects and numbering gaps),
//! [`block`] (one block's shards and its decode) and [`budget`] (memory accounting).

mod block;
mod budget;
mod session;

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::fec::Fec;
use crate::layout::{BlockSpan, Geometry, Section};
use crate::link::{LinkChange, LinkMonitor};
use crate::meta::{DIGEST_LEN, Head, MetaError};
use crate::ranges::RangeMap;
use crate::repair::Repair;
use crate::wire::{self, Datagram, Heartbeat, ShardHeader, WireError};

use block::{Added, Pending};
use budget::{BLOCK_COST, Budget, OBJECT_COST, RANGE_COST};
use session::Session;

/// Block buffers kept for reuse (and counted in the budget), so that steady reception allocates
/// nothing per block: enough for the blocks on their way to disk.
const MAX_POOLED: usize = 512;
/// A block still incomplete once its session has sent this many blocks' worth of shards since it
/// started (`STALE_BLOCKS * n` shards heard, for its `n` shards per block) is given up when memory
/// runs short: the reference sender keeps a block open over one interleaving group (at most 64
/// blocks), so this is two groups. Shards heard, not blocks decoded, because when memory is full
/// nothing decodes, and a clock that stops then would keep the dead blocks forever.
pub const STALE_BLOCKS: u64 = 128;
/// Bytes of a striped object's content gathered before they go to disk as one write.
pub const RUN_BYTES: usize = 128 << 10;
/// Shortest heartbeat interval a receiver believes; a shorter announced one is raised to it.
pub const MIN_HEARTBEAT_INTERVAL: Duration = Duration::from_millis(100);
/// Longest heartbeat interval a receiver believes, so that no sender can switch off the silence
/// alarm by announcing a huge interval.
pub const MAX_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(60);

/// Limits and timeouts of the assembler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AssemblerConfig {
    /// An object with no new datagram for this long is abandoned as lost.
    pub object_timeout: Duration,
    /// Most bytes held for blocks and objects in progress, counted as allocated.
    pub max_pending_bytes: usize,
    /// Most objects in progress at once.
    pub max_objects: usize,
    /// Largest content length accepted.
    pub max_content_len: u64,
    /// Most sender sessions tracked at once.
    pub max_sessions: usize,
    /// Shortest silence reported as a silent link (raised to three heartbeat intervals unless
    /// `fixed_silence`).
    pub silence: Duration,
    /// Report a silent link after exactly `silence`, whatever the heartbeat interval.
    pub fixed_silence: bool,
}

impl Default for AssemblerConfig {
    fn default() -> Self {
        AssemblerConfig {
            object_timeout: Duration::from_secs(10),
            max_pending_bytes: 192 << 20,
            max_objects: 1024,
            max_content_len: 1 << 40,
            max_sessions: 16,
            silence: Duration::from_secs(3),
            fixed_silence: false,
        }
    }
}

/// Identifies an object: sender session and object number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    /// Sender session.
    pub session: u64,
    /// Object number.
    pub object: u64,
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}-{}", self.session, self.object)
    }
}

/// Where an object stands in its senders' own order: when two objects carry the same path, the
/// greater one is the newer content. Sessions are ordered by when they were first heard (a sender
/// restart is a later session), objects within a session by number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Precedence {
    /// Order in which the session was first heard by this receiver.
    pub session_ordinal: u64,
    /// Object number within the session.
    pub object: u64,
}

/// How an object crossed: for the manifest's evidence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Crossing {
    /// When its first datagram arrived.
    pub first_datagram: Instant,
    /// When the datagram that completed it arrived.
    pub last_datagram: Instant,
    /// Data shards rebuilt from parity (zero: every data shard arrived).
    pub repaired: u64,
}

/// Why an object was given up.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Abandon {
    /// No datagram for the object within the timeout while blocks were still missing.
    #[error("timed out with {blocks_missing} of {blocks_total} blocks missing")]
    Timeout {
        /// Blocks not decoded.
        blocks_missing: u64,
        /// Blocks in the object.
        blocks_total: u64,
    },
    /// The metadata head was refused.
    #[error("{0}")]
    BadMetadata(MetaError),
    /// The object is larger than the receiver accepts.
    #[error("content of {content_len} bytes exceeds the limit")]
    TooLarge {
        /// Announced content length.
        content_len: u64,
    },
    /// Too many sessions: this idle one's objects were dropped to make room.
    #[error("session evicted to make room for another")]
    SessionEvicted,
    /// Enough shards arrived, with valid CRCs, yet they do not decode: forged or mis-sent.
    #[error("shards do not decode (forged or mis-sent)")]
    Undecodable,
    /// The receiver was stopped before the object was complete.
    #[error("receiver stopped before the object was complete")]
    ReceiverStopped,
    /// Memory ran short while a block of the object had waited, incomplete, while many later
    /// shards of its session arrived: its missing shards are not coming.
    #[error(
        "block {block} cannot be completed (its shards stopped arriving while {waited} later shards of its sender arrived)"
    )]
    Unrecoverable {
        /// The block.
        block: u32,
        /// Shards of the session heard since the block started.
        waited: u64,
    },
}

/// What the assembler has to report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A sender session identified itself (a heartbeat or a valid metadata head) for the first time.
    SessionStarted {
        /// The session.
        session: u64,
        /// Lowest object number heard; earlier objects were sent before we listened, unless
        /// `after_us` (then they are tracked as missing).
        first_object: u64,
        /// The session started after this receiver (estimated from its heartbeats).
        after_us: bool,
    },
    /// The link state changed.
    Link(LinkChange),
    /// The metadata head of an object was decoded and accepted.
    Head {
        /// The object.
        key: ObjectKey,
        /// Its metadata.
        head: Head,
    },
    /// Decoded content to write at `offset` of the object's file.
    Content {
        /// The object.
        key: ObjectKey,
        /// Offset within the content.
        offset: u64,
        /// The bytes.
        data: Vec<u8>,
    },
    /// A block of a striped object lost data shards: read back those that arrived (written by
    /// earlier [`Event::Content`]s), rebuild the others and write them.
    Repair {
        /// The object.
        key: ObjectKey,
        /// The block: where its shards sit and the parity that rebuilds them.
        repair: Repair,
    },
    /// Every block decoded: the caller verifies the digest and publishes.
    Complete {
        /// The object.
        key: ObjectKey,
        /// Its metadata.
        head: Head,
        /// SHA-256 of the content as computed by the sender.
        digest: [u8; DIGEST_LEN],
        /// Its place in the senders' order, to settle two objects with one path.
        precedence: Precedence,
        /// When it arrived and how much was repaired.
        crossing: Crossing,
    },
    /// The object will not complete; its content so far must be discarded.
    Abandoned {
        /// The object.
        key: ObjectKey,
        /// Its path, when the metadata head was decoded.
        path: Option<String>,
        /// Why.
        reason: Abandon,
        /// The session's heartbeat was heard: a sender, not only shards (which anyone can forge
        /// in numbers); the receiver records losses of unheard sessions in aggregate.
        sender_heard: bool,
    },
    /// Objects of which not one datagram arrived (objects `first..=last`).
    Missing {
        /// The session.
        session: u64,
        /// First missing object number.
        first: u64,
        /// Last missing object number.
        last: u64,
    },
}

/// Running counters, for logs and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Datagrams handed in.
    pub datagrams: u64,
    /// Datagrams rejected by the wire checks (CRC, magic, version, flags, lengths).
    pub malformed: u64,
    /// Shards inconsistent with what earlier shards said of their object or block.
    pub inconsistent: u64,
    /// Shards already held, or for blocks already decoded.
    pub duplicate: u64,
    /// Shards for objects already completed or abandoned.
    pub late: u64,
    /// Shards dropped because the memory or object bounds were reached.
    pub over_budget: u64,
    /// Datagrams of a new session dropped because every session slot holds an active session.
    pub refused_sessions: u64,
    /// Idle sessions forgotten to make room for a new one.
    pub evicted_sessions: u64,
    /// Blocks in progress dropped from a session holding more than its fair share of the budget,
    /// to make room for another session.
    pub preempted_blocks: u64,
    /// Heartbeats accepted.
    pub heartbeats: u64,
    /// Blocks decoded.
    pub blocks_decoded: u64,
    /// Data shards of the blocks decoded (the link's loss is measured on them: see [`crate::shed`]).
    pub data_shards_due: u64,
    /// Of those, the ones that never arrived and were rebuilt from parity.
    pub data_shards_rebuilt: u64,
    /// Objects completed.
    pub objects_complete: u64,
    /// Objects abandoned or missing (saturating: a forged numbering can claim any count).
    pub objects_lost: u64,
}

/// What one session's heartbeats and datagrams say about the link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionStats {
    /// The session.
    pub session: u64,
    /// Valid datagrams received from it.
    pub received: u64,
    /// The last heartbeat heard.
    pub last_heartbeat: Option<Heartbeat>,
}

/// One object in progress.
#[derive(Debug)]
pub(crate) struct Object {
    geometry: Geometry,
    blocks: HashMap<u32, Pending>,
    done: RangeMap<()>,
    done_count: u64,
    head: Option<Head>,
    digest: Option<[u8; DIGEST_LEN]>,
    last_activity: Instant,
    first_datagram: Instant,
    /// Data shards rebuilt from parity so far.
    repaired: u64,
    /// Bytes charged for the object itself and its ranges of decoded blocks.
    charged: usize,
    /// Striped content gathered for one write.
    run: Option<Run>,
}

/// Consecutive content of a striped object, gathered from data shards for one write.
#[derive(Debug)]
struct Run {
    offset: u64,
    buf: Vec<u8>,
    charged: usize,
}

/// Rebuilds objects from shard datagrams.
#[derive(Debug)]
pub struct Assembler {
    config: AssemblerConfig,
    started: Instant,
    fec: Fec,
    sessions: HashMap<u64, Session>,
    next_ordinal: u64,
    events: VecDeque<Event>,
    counters: Counters,
    budget: Budget,
    objects: usize,
    pool: Vec<Vec<u8>>,
    link: LinkMonitor,
}

/// The parts of the assembler a shard touches besides its session, borrowed apart from it.
struct Shared<'a> {
    config: &'a AssemblerConfig,
    fec: &'a mut Fec,
    events: &'a mut VecDeque<Event>,
    counters: &'a mut Counters,
    budget: &'a mut Budget,
    objects: &'a mut usize,
    pool: &'a mut Vec<Vec<u8>>,
}

impl Shared<'_> {
    fn missing(&mut self, session: u64, gaps: Vec<(u64, u64)>) {
        for (first, end) in gaps {
            self.counters.objects_lost = self.counters.objects_lost.saturating_add(end - first);
            self.events.push_back(Event::Missing {
                session,
                first,
                last: end - 1,
            });
        }
    }

    /// Returns a block's bytes to the budget (its buffer to the pool).
    fn free_block(&mut self, s: &mut Session, p: Pending) {
        let buf = self.release_block(s, p);
        self.pool_buffer(buf);
    }

    /// Returns a block's bytes to the budget and hands its buffer out.
    fn release_block(&mut self, s: &mut Session, p: Pending) -> Vec<u8> {
        let cost = p.cost();
        s.used -= cost;
        self.budget.give(cost);
        p.buf
    }

    /// Keeps a buffer for reuse if the pool has room and the budget allows it.
    fn pool_buffer(&mut self, buf: Vec<u8>) {
        // Kept at its length, old bytes and all: a run clears it, a block zero-fills only what
        // it grows by (filling every buffer to its capacity here cost a memset of every byte
        // received).
        if buf.capacity() == 0 {
            return;
        }
        if self.pool.len() < MAX_POOLED && self.budget.fits(buf.capacity()) {
            self.budget.take(buf.capacity());
            self.pool.push(buf);
        }
    }

    /// True once `bytes` more fit the budget, giving pooled buffers back to make room: buffers
    /// kept for reuse must never cost a shard its place.
    fn make_fit(&mut self, bytes: usize) -> bool {
        while !self.budget.fits(bytes) {
            let Some(buf) = self.pool.pop() else {
                return false;
            };
            self.budget.give(buf.capacity());
        }
        true
    }

    fn free_object(&mut self, s: &mut Session, mut obj: Object) {
        *self.objects -= 1;
        s.used -= obj.charged;
        self.budget.give(obj.charged);
        if let Some(run) = obj.run.take() {
            s.used -= run.charged;
            self.budget.give(run.charged);
            self.pool_buffer(run.buf);
        }
        for (_, p) in obj.blocks {
            self.free_block(s, p);
        }
    }

    /// Reports every object of session `sid` still in progress lost for `reason`, and every gap
    /// in its numbering missing.
    fn close_all(&mut self, sid: u64, s: &mut Session, reason: Abandon) {
        let mut open: Vec<u64> = s.objects.keys().copied().collect();
        open.sort_unstable();
        for object in open {
            let key = ObjectKey {
                session: sid,
                object,
            };
            self.lose(s, key, Some(reason.clone()));
        }
        let gaps: Vec<(u64, u64)> = s
            .gaps
            .drain_where(|_| true)
            .into_iter()
            .map(|(first, end, _)| (first, end))
            .collect();
        for &(first, end) in &gaps {
            s.finished.insert(first, end);
        }
        self.missing(sid, gaps);
    }

    /// Drops an object's state and reports it lost.
    fn lose(&mut self, s: &mut Session, key: ObjectKey, reason: Option<Abandon>) {
        let Some(obj) = s.objects.remove(&key.object) else {
            return;
        };
        s.finished.insert(key.object, key.object.saturating_add(1));
        let total = obj.geometry.block_count();
        let reason = reason.unwrap_or(Abandon::Timeout {
            blocks_missing: total.saturating_sub(obj.done_count),
            blocks_total: total,
        });
        let path = obj.head.as_ref().map(|h| h.path.clone());
        self.free_object(s, obj);
        self.counters.objects_lost = self.counters.objects_lost.saturating_add(1);
        self.events.push_back(Event::Abandoned {
            key,
            path,
            reason,
            sender_heard: s.heartbeat.is_some(),
        });
    }

    /// Hands the object's gathered content out to be written.
    fn flush_run(&mut self, used: &mut usize, key: ObjectKey, run: &mut Option<Run>) {
        if let Some(r) = run.take() {
            *used -= r.charged;
            self.budget.give(r.charged);
            self.events.push_back(Event::Content {
                key,
                offset: r.offset,
                data: r.buf,
            });
        }
    }

    /// Adds a striped data shard's bytes at content offset `at` to the object's run, starting a
    /// new run (and handing the old one out) unless they extend it. False when no buffer fits
    /// the budget: the shard is then dropped.
    fn write_run(
        &mut self,
        used: &mut usize,
        key: ObjectKey,
        run: &mut Option<Run>,
        at: u64,
        bytes: &[u8],
    ) -> bool {
        if let Some(r) = run
            && r.offset + r.buf.len() as u64 == at
            && r.buf.len() + bytes.len() <= r.buf.capacity()
        {
            r.buf.extend_from_slice(bytes);
            return true;
        }
        self.flush_run(used, key, run);
        let need = RUN_BYTES.max(bytes.len());
        let cost = need + BLOCK_COST;
        if !self.make_fit(cost) {
            return false;
        }
        let mut buf = self.pooled(need);
        buf.clear();
        buf.extend_from_slice(bytes);
        let charged = buf.capacity() + BLOCK_COST;
        self.budget.take(charged);
        *used += charged;
        *run = Some(Run {
            offset: at,
            buf,
            charged,
        });
        true
    }

    /// The last pooled buffer if it holds `need` bytes (a smaller one is dropped), else a new
    /// one; either way uncharged, for the caller to charge.
    fn pooled(&mut self, need: usize) -> Vec<u8> {
        match self.pool.pop() {
            Some(b) => {
                self.budget.give(b.capacity());
                if b.capacity() >= need {
                    b
                } else {
                    Vec::with_capacity(need)
                }
            }
            None => Vec::with_capacity(need),
        }
    }

    /// A buffer for a new block of `need` bytes, or `None` when the budget or the session's fair
    /// share of it does not allow one.
    fn block_buffer(&mut self, s: &mut Session, need: usize, active: usize) -> Option<Vec<u8>> {
        // A block may also add one range of decoded blocks to its object.
        let cost = need + BLOCK_COST + RANGE_COST;
        if s.used + cost > self.budget.fair_share(active) {
            return None;
        }
        if !self.make_fit(cost) {
            return None;
        }
        let buf = self.pooled(need);
        let charged = buf.capacity() + BLOCK_COST;
        self.budget.take(charged);
        s.used += charged;
        Some(buf)
    }
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

    fn split(&mut self) -> (&mut HashMap<u64, Session>, Shared<'_>) {
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
                self.on_shard(now, h, payload, geometry, span, false)
            }
            Datagram::Heartbeat(hb) => {
                if !self.admit_session(now, hb.session, hb.objects_sent) {
                    return Ok(());
                }
                self.on_datagram_accepted(now);
                self.on_heartbeat(now, hb);
                Ok(())
            }
        }
    }

    fn on_datagram_accepted(&mut self, now: Instant) {
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
                .filter(|(_, o)| now.saturating_duration_since(o.last_activity) >= timeout)
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
                .drain_where(|noticed| now.saturating_duration_since(*noticed) >= timeout)
                .into_iter()
                .map(|(first, end, _)| (first, end))
                .collect();
            for &(first, end) in &gaps {
                s.finished.insert(first, end);
            }
            sh.missing(sid, gaps);
        }
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

    /// Finds or makes room for `session`. A full table evicts the least recently heard session
    /// that is older than the object timeout and decoded nothing within it; a session making
    /// progress (or new, within its first object timeout) is never evicted, and when every slot
    /// holds one, the newcomer's datagram is refused.
    fn admit_session(&mut self, now: Instant, session: u64, first_object: u64) -> bool {
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
                .filter(|(_, s)| s.idle(now, window))
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

    /// Frees room for `cost` more bytes: pooled buffers first, then the least advanced blocks of
    /// sessions holding more than their fair share (never `for_session`'s own).
    fn make_room(&mut self, for_session: u64, cost: usize) {
        while !self.budget.fits(cost) {
            let Some(buf) = self.pool.pop() else { break };
            self.budget.give(buf.capacity());
        }
        let newcomer = self.sessions.get(&for_session).is_none_or(|s| s.used == 0);
        let active = self.sessions.values().filter(|s| s.used > 0).count() + usize::from(newcomer);
        let share = self.budget.fair_share(active);
        while !self.budget.fits(cost) {
            let victim = self
                .sessions
                .iter()
                .filter(|(id, s)| **id != for_session && s.used > share)
                .max_by_key(|(id, s)| (s.used, **id))
                .map(|(id, _)| *id);
            let Some(victim) = victim else { break };
            let (sessions, mut sh) = self.split();
            let Some(s) = sessions.get_mut(&victim) else {
                break;
            };
            let least = s
                .objects
                .iter()
                .flat_map(|(&o, obj)| obj.blocks.iter().map(move |(&b, p)| (p.count(), o, b)))
                .min();
            let Some((_, object, block)) = least else {
                break;
            };
            let Some(p) = s
                .objects
                .get_mut(&object)
                .and_then(|obj| obj.blocks.remove(&block))
            else {
                break;
            };
            sh.free_block(s, p);
            while let Some(buf) = sh.pool.pop() {
                sh.budget.give(buf.capacity());
            }
            sh.counters.preempted_blocks += 1;
        }
        // Still short: blocks that have waited far longer than any interleaving keeps a block
        // open can no longer complete, and neither can their objects. Losing those objects now
        // frees memory for the ones that still can.
        while !self.budget.fits(cost) {
            let mut stale = None;
            for (&sid, s) in &mut self.sessions {
                if s.shards < s.stale_from {
                    continue;
                }
                let mut soonest = u64::MAX;
                let mut found = false;
                for (&o, obj) in &s.objects {
                    for (&b, p) in &obj.blocks {
                        let due = p.born.saturating_add(p.patience);
                        if due <= s.shards {
                            found = true;
                            stale = stale.max(Some((s.shards - p.born, sid, o, b)));
                        } else {
                            soonest = soonest.min(due);
                        }
                    }
                }
                if !found {
                    s.stale_from = soonest;
                }
            }
            let Some((waited, session, object, block)) = stale else {
                break;
            };
            let (sessions, mut sh) = self.split();
            let Some(s) = sessions.get_mut(&session) else {
                break;
            };
            sh.lose(
                s,
                ObjectKey { session, object },
                Some(Abandon::Unrecoverable { block, waited }),
            );
        }
    }

    fn evict(&mut self, victim: u64) {
        let (sessions, mut sh) = self.split();
        let Some(mut s) = sessions.remove(&victim) else {
            return;
        };
        sh.close_all(victim, &mut s, Abandon::SessionEvicted);
        sh.counters.evicted_sessions += 1;
    }

    fn on_heartbeat(&mut self, now: Instant, hb: Heartbeat) {
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
                sh.missing(hb.session, gaps);
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
            sh.missing(hb.session, gaps);
        }
    }

    fn on_shard(
        &mut self,
        now: Instant,
        h: ShardHeader,
        payload: &[u8],
        geometry: Geometry,
        span: BlockSpan,
        room_made: bool,
    ) -> Result<(), WireError> {
        let key = ObjectKey {
            session: h.session,
            object: h.object,
        };
        let active = self.sessions.values().filter(|s| s.used > 0).count();
        let (sessions, mut sh) = self.split();
        let Some(s) = sessions.get_mut(&h.session) else {
            return Ok(());
        };
        if !room_made {
            s.shards += 1;
        }
        if !s.objects.contains_key(&h.object) {
            if s.finished.contains(h.object) {
                sh.counters.late += 1;
                return Ok(());
            }
            if h.content_len > sh.config.max_content_len {
                s.finished.insert(h.object, h.object.saturating_add(1));
                let gaps = s.heard(h.object, now);
                sh.missing(h.session, gaps);
                sh.counters.objects_lost = sh.counters.objects_lost.saturating_add(1);
                sh.events.push_back(Event::Abandoned {
                    key,
                    path: None,
                    sender_heard: s.heartbeat.is_some(),
                    reason: Abandon::TooLarge {
                        content_len: h.content_len,
                    },
                });
                return Ok(());
            }
            if *sh.objects >= sh.config.max_objects || !sh.budget.fits(OBJECT_COST) {
                sh.counters.over_budget += 1;
                return Ok(());
            }
            let gaps = s.heard(h.object, now);
            sh.missing(h.session, gaps);
            sh.budget.take(OBJECT_COST);
            s.used += OBJECT_COST;
            *sh.objects += 1;
            s.objects.insert(
                h.object,
                Object {
                    geometry,
                    blocks: HashMap::new(),
                    done: RangeMap::default(),
                    done_count: 0,
                    head: None,
                    digest: None,
                    last_activity: now,
                    first_datagram: now,
                    repaired: 0,
                    charged: OBJECT_COST,
                    run: None,
                },
            );
        }
        let Some(obj) = s.objects.get(&h.object) else {
            return Ok(());
        };
        if obj.geometry != geometry {
            sh.counters.inconsistent += 1;
            return Err(WireError::InvalidHeader(
                "geometry differs from earlier shards",
            ));
        }
        if obj.done.contains(u64::from(h.block)) {
            sh.counters.duplicate += 1;
            return Ok(());
        }
        let l = usize::from(geometry.shard_len);
        let k = span.data_shards;
        let n = k + usize::from(h.parity_shards);
        // A striped object's content blocks hold no data here: it goes to disk as it arrives.
        let sparse = geometry.stripe > 0 && matches!(span.section, Section::Content { .. });
        let cost = if sparse { 0 } else { n * l } + BLOCK_COST + RANGE_COST;
        if !room_made && !obj.blocks.contains_key(&h.block) && !sh.budget.fits(cost) {
            self.make_room(h.session, cost);
            return self.on_shard(now, h, payload, geometry, span, true);
        }
        if !obj.blocks.contains_key(&h.block) {
            let active = active + usize::from(s.used == 0);
            let born = s.shards;
            let block = if sparse {
                if s.used + cost > sh.budget.fair_share(active) || !sh.make_fit(cost) {
                    sh.counters.over_budget += 1;
                    return Ok(());
                }
                sh.budget.take(BLOCK_COST);
                s.used += BLOCK_COST;
                // A stripe group's blocks all stay open until the end of the group: one may
                // wait for every other block of its group, and of the next, to be sent.
                let patience = STALE_BLOCKS.max(2 * geometry.stripe_width()) * n as u64;
                s.stale_from = s.stale_from.min(born.saturating_add(patience));
                Pending::sparse(h.parity_shards, born, patience)
            } else {
                let Some(buf) = sh.block_buffer(s, n * l, active) else {
                    sh.counters.over_budget += 1;
                    return Ok(());
                };
                let patience = STALE_BLOCKS * n as u64;
                s.stale_from = s.stale_from.min(born.saturating_add(patience));
                Pending::new(h.parity_shards, buf, n, l, born, patience)
            };
            let Some(obj) = s.objects.get_mut(&h.object) else {
                return Ok(());
            };
            obj.blocks.insert(h.block, block);
        }
        let Some(obj) = s.objects.get_mut(&h.object) else {
            return Ok(());
        };
        obj.last_activity = now;
        let Some(p) = obj.blocks.get_mut(&h.block) else {
            return Ok(());
        };
        if p.parity != h.parity_shards {
            sh.counters.inconsistent += 1;
            return Err(WireError::InvalidHeader(
                "parity count differs within a block",
            ));
        }
        let i = usize::from(h.shard);
        let added = if !sparse {
            p.add(i, payload, k)
        } else if p.has(i) {
            Added::Duplicate
        } else {
            if i < k {
                let Section::Content { offset, step } = span.section else {
                    return Ok(());
                };
                let at = offset + i as u64 * step;
                let len = (geometry.content_len - at).min(l as u64) as usize;
                if !sh.write_run(&mut s.used, key, &mut obj.run, at, &payload[..len]) {
                    sh.counters.over_budget += 1;
                    return Ok(());
                }
            } else if p.buf.capacity() - p.buf.len() < l {
                // Room for as many parity shards as the block still lacks, charged up front.
                let want = k.saturating_sub(p.count()).max(1) * l;
                if !sh.make_fit(want) {
                    sh.counters.over_budget += 1;
                    return Ok(());
                }
                let before = p.buf.capacity();
                p.buf.reserve_exact(want);
                let grown = p.buf.capacity() - before;
                sh.budget.take(grown);
                s.used += grown;
            }
            p.mark(i, payload, k)
        };
        match added {
            Added::Duplicate => {
                sh.counters.duplicate += 1;
                s.shards -= 1;
                return Ok(());
            }
            Added::Stored => return Ok(()),
            Added::Ready => {}
        }
        let Some(mut p) = obj.blocks.remove(&h.block) else {
            return Ok(());
        };
        let missing = p.missing_data(k);
        obj.repaired += missing as u64;
        sh.counters.data_shards_due += k as u64;
        sh.counters.data_shards_rebuilt += missing as u64;
        let p = if sparse {
            if let (true, Section::Content { offset, step }) = (missing > 0, span.section) {
                // The rebuild reads back the data shards that arrived: they go to disk first.
                sh.flush_run(&mut s.used, key, &mut obj.run);
                let (present, held) = (p.present, p.held.take().unwrap_or_default());
                let parity = sh.release_block(s, p);
                sh.events.push_back(Event::Repair {
                    key,
                    repair: Repair {
                        offset,
                        step,
                        content_len: geometry.content_len,
                        shard_len: l,
                        data_shards: k,
                        parity_shards: usize::from(h.parity_shards),
                        present,
                        parity,
                        held,
                    },
                });
            } else {
                sh.free_block(s, p);
            }
            None
        } else if p.decode(sh.fec, k, l).is_err() {
            sh.counters.inconsistent += 1;
            sh.free_block(s, p);
            sh.lose(s, key, Some(Abandon::Undecodable));
            return Ok(());
        } else {
            Some(p)
        };
        sh.counters.blocks_decoded += 1;
        s.last_progress = Some(now);
        let Some(obj) = s.objects.get_mut(&h.object) else {
            return Ok(());
        };
        let b = u64::from(h.block);
        obj.done.insert(b, b + 1, ());
        obj.done_count += 1;
        let charged = OBJECT_COST + obj.done.len() * RANGE_COST;
        if charged > obj.charged {
            sh.budget.take(charged - obj.charged);
            s.used += charged - obj.charged;
        } else {
            sh.budget.give(obj.charged - charged);
            s.used -= obj.charged - charged;
        }
        obj.charged = charged;
        let mut bad_head = None;
        let mut head_event = None;
        let Some(p) = p else {
            let complete = obj.done_count == geometry.block_count();
            return self.after_block(h, key, complete, None, None);
        };
        if let Section::Content { offset, .. } = span.section {
            // The block's buffer itself goes out with the content: no copy. The caller hands it
            // back through `recycle` once written.
            let complete = obj.done_count == geometry.block_count();
            let mut data = sh.release_block(s, p);
            data.truncate(span.len);
            sh.events.push_back(Event::Content { key, offset, data });
            return self.after_block(h, key, complete, None, None);
        }
        let data = &p.buf[..span.len];
        match span.section {
            Section::Head => match Head::decode(data) {
                Ok(head) if head.size != geometry.content_len => {
                    bad_head = Some(MetaError::SizeMismatch {
                        head: head.size,
                        header: geometry.content_len,
                    });
                }
                Ok(head) => {
                    obj.head = Some(head.clone());
                    head_event = Some(Event::Head { key, head });
                }
                Err(e) => bad_head = Some(e),
            },
            Section::Content { .. } => {}
            Section::Digest => {
                let mut d = [0u8; DIGEST_LEN];
                d.copy_from_slice(data);
                obj.digest = Some(d);
            }
        }
        let complete = obj.done_count == geometry.block_count();
        sh.free_block(s, p);
        self.after_block(h, key, complete, head_event, bad_head)
    }

    /// What follows a decoded block: the session's first head, a refused head, completion.
    fn after_block(
        &mut self,
        h: ShardHeader,
        key: ObjectKey,
        complete: bool,
        head_event: Option<Event>,
        bad_head: Option<MetaError>,
    ) -> Result<(), WireError> {
        let (sessions, mut sh) = self.split();
        let Some(s) = sessions.get_mut(&h.session) else {
            return Ok(());
        };
        if let Some(ev) = head_event {
            if !s.identified {
                s.identified = true;
                sh.events.push_back(Event::SessionStarted {
                    session: h.session,
                    first_object: s.low,
                    after_us: false,
                });
            }
            sh.events.push_back(ev);
        }
        if let Some(e) = bad_head {
            sh.lose(s, key, Some(Abandon::BadMetadata(e)));
            return Ok(());
        }
        if !complete {
            return Ok(());
        }
        let ready = s.objects.get(&h.object).and_then(|o| {
            let crossing = Crossing {
                first_datagram: o.first_datagram,
                last_datagram: o.last_activity,
                repaired: o.repaired,
            };
            Some((o.head.clone()?, o.digest?, crossing))
        });
        let Some((head, digest, crossing)) = ready else {
            // Every block decoded, so head and digest are known; anything else is a bug, and
            // losing the object is the safe way out of it.
            sh.lose(s, key, Some(Abandon::Undecodable));
            return Ok(());
        };
        if let Some(mut obj) = s.objects.remove(&h.object) {
            sh.flush_run(&mut s.used, key, &mut obj.run);
            s.finished.insert(h.object, h.object.saturating_add(1));
            sh.free_object(s, obj);
        }
        sh.counters.objects_complete += 1;
        sh.events.push_back(Event::Complete {
            key,
            head,
            digest,
            precedence: Precedence {
                session_ordinal: s.ordinal,
                object: h.object,
            },
            crossing,
        });
        Ok(())
    }
}
