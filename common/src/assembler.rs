//! Receiver side: rebuilds objects from datagrams in any order, in bounded memory.
//!
//! The assembler takes datagrams and the current time, and hands out [`Event`]s: decoded content
//! with its offset (to be written to disk by the caller), completed objects with their metadata and
//! digest, and everything that was lost. It does no I/O and reads no clock.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

use crate::fec::Fec;
use crate::layout::{Geometry, Section};
use crate::link::{LinkChange, LinkMonitor};
use crate::meta::{DIGEST_LEN, Head, MetaError};
use crate::ranges::RangeMap;
use crate::wire::{self, Datagram, Heartbeat, ShardHeader, WireError};

/// Block buffers kept for reuse, so that steady reception allocates nothing per block.
const MAX_POOLED: usize = 256;

/// Limits and timeouts of the assembler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AssemblerConfig {
    /// An object with no new datagram for this long is abandoned as lost.
    pub object_timeout: Duration,
    /// Most bytes held in partly received blocks; shards that would start a block beyond it are dropped.
    pub max_pending_bytes: usize,
    /// Most objects in progress at once.
    pub max_objects: usize,
    /// Largest content length accepted.
    pub max_content_len: u64,
    /// Most sender sessions tracked; the least recently heard is forgotten first.
    pub max_sessions: usize,
    /// Shortest silence reported as a silent link (raised to three heartbeat intervals).
    pub silence: Duration,
}

impl Default for AssemblerConfig {
    fn default() -> Self {
        AssemblerConfig {
            object_timeout: Duration::from_secs(10),
            max_pending_bytes: 256 << 20,
            max_objects: 1024,
            max_content_len: 1 << 40,
            max_sessions: 16,
            silence: Duration::from_secs(3),
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

/// Why an object was given up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Abandon {
    /// No datagram for the object within the timeout while blocks were still missing.
    Timeout {
        /// Blocks not decoded.
        blocks_missing: u64,
        /// Blocks in the object.
        blocks_total: u64,
    },
    /// The metadata head was refused.
    BadMetadata(MetaError),
    /// The object is larger than the receiver accepts.
    TooLarge {
        /// Announced content length.
        content_len: u64,
    },
    /// Too many sessions: this one's objects were dropped to make room.
    SessionEvicted,
}

impl fmt::Display for Abandon {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Abandon::Timeout {
                blocks_missing,
                blocks_total,
            } => write!(
                f,
                "timed out with {blocks_missing} of {blocks_total} blocks missing"
            ),
            Abandon::BadMetadata(e) => write!(f, "{e}"),
            Abandon::TooLarge { content_len } => {
                write!(f, "content of {content_len} bytes exceeds the limit")
            }
            Abandon::SessionEvicted => write!(f, "session evicted to make room for another"),
        }
    }
}

/// What the assembler has to report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A sender session was heard for the first time.
    SessionStarted {
        /// The session.
        session: u64,
        /// First object number heard; earlier objects were sent before we listened.
        first_object: u64,
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
    /// Every block decoded: the caller verifies the digest and publishes.
    Complete {
        /// The object.
        key: ObjectKey,
        /// Its metadata.
        head: Head,
        /// SHA-256 of the content as computed by the sender.
        digest: [u8; DIGEST_LEN],
    },
    /// The object will not complete; its content so far must be discarded.
    Abandoned {
        /// The object.
        key: ObjectKey,
        /// Its path, when the metadata head was decoded.
        path: Option<String>,
        /// Why.
        reason: Abandon,
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
    /// Heartbeats accepted.
    pub heartbeats: u64,
    /// Blocks decoded.
    pub blocks_decoded: u64,
    /// Objects completed.
    pub objects_complete: u64,
    /// Objects abandoned or missing.
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

#[derive(Debug)]
struct Pending {
    parity: u8,
    buf: Vec<u8>,
    present: Vec<bool>,
    count: usize,
}

#[derive(Debug)]
struct Object {
    geometry: Geometry,
    blocks: HashMap<u32, Pending>,
    done: RangeMap<()>,
    done_count: u64,
    head: Option<Head>,
    digest: Option<[u8; DIGEST_LEN]>,
    last_activity: Instant,
}

#[derive(Debug)]
struct Session {
    objects: HashMap<u64, Object>,
    closed: RangeMap<()>,
    gaps: RangeMap<Instant>,
    /// Lowest object number heard: gaps are only tracked from here on.
    low: u64,
    /// One past the highest object number heard or announced.
    next: u64,
    received: u64,
    last_seen: Instant,
    heartbeat: Option<Heartbeat>,
}

/// Rebuilds objects from shard datagrams.
#[derive(Debug)]
pub struct Assembler {
    config: AssemblerConfig,
    fec: Fec,
    sessions: HashMap<u64, Session>,
    events: VecDeque<Event>,
    counters: Counters,
    pending_bytes: usize,
    objects: usize,
    pool: Vec<Vec<u8>>,
    link: LinkMonitor,
}

impl Assembler {
    /// Creates an assembler.
    pub fn new(config: AssemblerConfig) -> Self {
        Assembler {
            config,
            fec: Fec::default(),
            sessions: HashMap::new(),
            events: VecDeque::new(),
            counters: Counters::default(),
            pending_bytes: 0,
            objects: 0,
            pool: Vec::new(),
            link: LinkMonitor::new(config.silence),
        }
    }

    /// Counters so far.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// Bytes held in partly received blocks.
    pub fn pending_bytes(&self) -> usize {
        self.pending_bytes
    }

    /// Objects in progress.
    pub fn objects_in_progress(&self) -> usize {
        self.objects
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

    /// Next event to act on.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Handles one received datagram. Errors are for counting and logging only: the assembler
    /// stays usable whatever comes in.
    pub fn handle_datagram(&mut self, now: Instant, bytes: &[u8]) -> Result<(), WireError> {
        self.counters.datagrams += 1;
        let datagram = match wire::parse(bytes) {
            Ok(d) => d,
            Err(e) => {
                self.counters.malformed += 1;
                return Err(e);
            }
        };
        let (session, first) = match datagram {
            Datagram::Shard(h, _) => (h.session, h.object),
            Datagram::Heartbeat(hb) => (hb.session, hb.objects_sent),
        };
        if let Some(change) = self.link.on_datagram(now) {
            self.events.push_back(Event::Link(change));
        }
        self.touch_session(now, session, first);
        match datagram {
            Datagram::Shard(h, payload) => self.on_shard(now, h, payload),
            Datagram::Heartbeat(hb) => {
                self.on_heartbeat(now, hb);
                Ok(())
            }
        }
    }

    /// Gives up an object from outside (for example after a disk error); later shards are ignored.
    pub fn abandon(&mut self, key: ObjectKey) {
        if let Some(s) = self.sessions.get_mut(&key.session)
            && let Some(obj) = s.objects.remove(&key.object)
        {
            s.closed.insert(key.object, key.object + 1, ());
            self.release(obj);
        }
    }

    /// Expires objects, gaps and link state; call at least every 100 ms.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(change) = self.link.on_tick(now) {
            self.events.push_back(Event::Link(change));
        }
        let timeout = self.config.object_timeout;
        let mut expired = Vec::new();
        for (&sid, s) in &mut self.sessions {
            for (&oid, o) in &s.objects {
                if now.saturating_duration_since(o.last_activity) >= timeout {
                    expired.push(ObjectKey {
                        session: sid,
                        object: oid,
                    });
                }
            }
            for (first, end, _) in s
                .gaps
                .drain_where(|noticed| now.saturating_duration_since(*noticed) >= timeout)
            {
                s.closed.insert(first, end, ());
                self.counters.objects_lost += end - first;
                self.events.push_back(Event::Missing {
                    session: sid,
                    first,
                    last: end - 1,
                });
            }
        }
        expired.sort();
        for key in expired {
            self.lose(key, None);
        }
    }

    fn touch_session(&mut self, now: Instant, session: u64, first_object: u64) {
        if let Some(s) = self.sessions.get_mut(&session) {
            s.last_seen = now;
            s.received += 1;
            return;
        }
        if self.sessions.len() >= self.config.max_sessions.max(1)
            && let Some(&oldest) = self
                .sessions
                .iter()
                .min_by_key(|(_, s)| s.last_seen)
                .map(|(id, _)| id)
        {
            let mut keys: Vec<ObjectKey> = self.sessions[&oldest]
                .objects
                .keys()
                .map(|&object| ObjectKey {
                    session: oldest,
                    object,
                })
                .collect();
            keys.sort();
            for key in keys {
                self.lose(key, Some(Abandon::SessionEvicted));
            }
            self.sessions.remove(&oldest);
        }
        self.sessions.insert(
            session,
            Session {
                objects: HashMap::new(),
                closed: RangeMap::default(),
                gaps: RangeMap::default(),
                low: first_object,
                next: first_object,
                received: 1,
                last_seen: now,
                heartbeat: None,
            },
        );
        self.events.push_back(Event::SessionStarted {
            session,
            first_object,
        });
    }

    fn on_heartbeat(&mut self, now: Instant, hb: Heartbeat) {
        self.counters.heartbeats += 1;
        self.link.observe_interval(
            Duration::from_millis(u64::from(hb.interval_ms)),
            self.config.silence,
        );
        if let Some(s) = self.sessions.get_mut(&hb.session) {
            if s.heartbeat.is_none_or(|old| hb.seq >= old.seq) {
                s.heartbeat = Some(hb);
            }
            if hb.objects_sent > s.next {
                s.gaps.insert(s.next, hb.objects_sent, now);
                s.next = hb.objects_sent;
            }
        }
    }

    fn on_shard(&mut self, now: Instant, h: ShardHeader, payload: &[u8]) -> Result<(), WireError> {
        let key = ObjectKey {
            session: h.session,
            object: h.object,
        };
        let geometry =
            Geometry::from_header(&h).inspect_err(|_| self.counters.inconsistent += 1)?;
        let span = geometry
            .check_shard(h.block, h.parity_shards, h.shard)
            .inspect_err(|_| self.counters.inconsistent += 1)?;
        let Some(s) = self.sessions.get_mut(&h.session) else {
            return Ok(());
        };
        if s.closed.contains(h.object) {
            self.counters.late += 1;
            return Ok(());
        }
        if !s.objects.contains_key(&h.object) {
            if h.content_len > self.config.max_content_len {
                s.closed.insert(h.object, h.object + 1, ());
                s.gaps.remove(h.object);
                self.counters.objects_lost += 1;
                self.events.push_back(Event::Abandoned {
                    key,
                    path: None,
                    reason: Abandon::TooLarge {
                        content_len: h.content_len,
                    },
                });
                return Ok(());
            }
            if self.objects >= self.config.max_objects {
                self.counters.over_budget += 1;
                return Ok(());
            }
            s.gaps.remove(h.object);
            if h.object < s.low {
                s.gaps.insert(h.object + 1, s.low, now);
                s.low = h.object;
            }
            if h.object >= s.next {
                s.gaps.insert(s.next, h.object, now);
                s.next = h.object + 1;
            }
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
                },
            );
            self.objects += 1;
        }
        let Some(obj) = s.objects.get_mut(&h.object) else {
            return Ok(());
        };
        if obj.geometry != geometry {
            self.counters.inconsistent += 1;
            return Err(WireError::InvalidHeader(
                "geometry differs from earlier shards",
            ));
        }
        obj.last_activity = now;
        if obj.done.contains(u64::from(h.block)) {
            self.counters.duplicate += 1;
            return Ok(());
        }
        let l = usize::from(geometry.shard_len);
        let n = span.data_shards + usize::from(h.parity_shards);
        let p = match obj.blocks.entry(h.block) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                if self.pending_bytes + n * l > self.config.max_pending_bytes {
                    self.counters.over_budget += 1;
                    return Ok(());
                }
                let mut buf = self.pool.pop().unwrap_or_default();
                buf.clear();
                buf.resize(n * l, 0);
                self.pending_bytes += buf.len();
                v.insert(Pending {
                    parity: h.parity_shards,
                    buf,
                    present: vec![false; n],
                    count: 0,
                })
            }
        };
        if p.parity != h.parity_shards {
            self.counters.inconsistent += 1;
            return Err(WireError::InvalidHeader(
                "parity count differs within a block",
            ));
        }
        let i = usize::from(h.shard);
        if p.present[i] {
            self.counters.duplicate += 1;
            return Ok(());
        }
        p.buf[i * l..(i + 1) * l].copy_from_slice(payload);
        p.present[i] = true;
        p.count += 1;
        if p.count < span.data_shards {
            return Ok(());
        }
        let Some(mut p) = obj.blocks.remove(&h.block) else {
            return Ok(());
        };
        self.pending_bytes -= p.buf.len();
        let decoded = self
            .fec
            .reconstruct(span.data_shards, &mut p.buf, l, &p.present);
        if decoded.is_err() {
            // Shards that pass the CRC yet do not decode were forged or mis-sent: drop the object.
            self.counters.inconsistent += 1;
            self.recycle(p.buf);
            self.lose(key, None);
            return Ok(());
        }
        self.counters.blocks_decoded += 1;
        obj.done
            .insert(u64::from(h.block), u64::from(h.block) + 1, ());
        obj.done_count += 1;
        let data = &p.buf[..span.len];
        let mut bad_head = None;
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
                    self.events.push_back(Event::Head { key, head });
                }
                Err(e) => bad_head = Some(e),
            },
            Section::Content { offset } => self.events.push_back(Event::Content {
                key,
                offset,
                data: data.to_vec(),
            }),
            Section::Digest => {
                let mut d = [0u8; DIGEST_LEN];
                d.copy_from_slice(data);
                obj.digest = Some(d);
            }
        }
        if self.pool.len() < MAX_POOLED {
            self.pool.push(p.buf);
        }
        if let Some(e) = bad_head {
            self.lose(key, Some(Abandon::BadMetadata(e)));
            return Ok(());
        }
        if obj.done_count == geometry.block_count()
            && let (Some(head), Some(digest)) = (obj.head.clone(), obj.digest)
        {
            s.closed.insert(h.object, h.object + 1, ());
            if let Some(obj) = s.objects.remove(&h.object) {
                self.release(obj);
            }
            self.counters.objects_complete += 1;
            self.events.push_back(Event::Complete { key, head, digest });
        }
        Ok(())
    }

    /// Drops an object's state and reports it lost.
    fn lose(&mut self, key: ObjectKey, reason: Option<Abandon>) {
        let Some(s) = self.sessions.get_mut(&key.session) else {
            return;
        };
        let Some(obj) = s.objects.remove(&key.object) else {
            return;
        };
        s.closed.insert(key.object, key.object + 1, ());
        let reason = reason.unwrap_or(Abandon::Timeout {
            blocks_missing: obj.geometry.block_count() - obj.done_count,
            blocks_total: obj.geometry.block_count(),
        });
        let path = obj.head.as_ref().map(|h| h.path.clone());
        self.release(obj);
        self.counters.objects_lost += 1;
        self.events
            .push_back(Event::Abandoned { key, path, reason });
    }

    fn release(&mut self, obj: Object) {
        self.objects -= 1;
        for (_, p) in obj.blocks {
            self.pending_bytes -= p.buf.len();
            self.recycle(p.buf);
        }
    }

    fn recycle(&mut self, buf: Vec<u8>) {
        if self.pool.len() < MAX_POOLED {
            self.pool.push(buf);
        }
    }
}
