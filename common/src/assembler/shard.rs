//! A shard's way in, step by step: counted on its session's clock, its object opened (or refused),
//! its block opened (making room if memory is short), the shard stored, and a block that can be
//! decoded decoded and handed out (content, a repair of a striped block, a head or a digest).
//! What follows a decoded block (the head's event, completion) is [`Assembler::after_block`].

use std::collections::HashMap;
use std::time::Instant;

use crate::layout::{BlockSpan, Geometry, Section};
use crate::meta::{DIGEST_LEN, Head, MetaError};
use crate::ranges::RangeMap;
use crate::repair::Repair;
use crate::wire::{ShardHeader, WireError};

use super::block::{Added, Pending};
use super::budget::{BLOCK_COST, OBJECT_COST, RANGE_COST};
use super::engine::Assembler;
use super::object::Object;
use super::types::{Abandon, Crossing, Event, ObjectKey, Precedence, STALE_BLOCKS};

/// What a step decided about the shard.
enum Step {
    /// Go on to the next step.
    Next,
    /// The shard is dealt with (stored, counted or dropped): nothing more to do.
    Done,
}

/// A shard and what the checks that need no state found of it.
struct Shard<'a> {
    h: ShardHeader,
    payload: &'a [u8],
    geometry: Geometry,
    span: BlockSpan,
    key: ObjectKey,
    /// A striped object's content block: its data goes to disk as it arrives, not held here.
    sparse: bool,
}

impl Assembler {
    /// Takes one shard whose header passed the stateless checks, from an admitted session.
    pub(crate) fn on_shard(
        &mut self,
        now: Instant,
        h: ShardHeader,
        payload: &[u8],
        geometry: Geometry,
        span: BlockSpan,
    ) -> Result<(), WireError> {
        let shard = Shard {
            key: ObjectKey {
                session: h.session,
                object: h.object,
            },
            sparse: geometry.stripe > 0 && matches!(span.section, Section::Content { .. }),
            h,
            payload,
            geometry,
            span,
        };
        // Sessions holding memory, counted before this shard's object is opened.
        let active = self.sessions.values().filter(|s| s.used > 0).count();
        let Some(s) = self.sessions.get_mut(&h.session) else {
            return Ok(());
        };
        s.shards += 1;
        if let Step::Done = self.open_object(now, &shard)? {
            return Ok(());
        }
        if let Step::Done = self.open_block(&shard, active)? {
            return Ok(());
        }
        if let Step::Done = self.store(now, &shard)? {
            return Ok(());
        }
        self.decode(now, &shard)
    }

    /// The shard's object, opened on its first shard unless it is finished, too large, or over
    /// the bounds.
    fn open_object(&mut self, now: Instant, x: &Shard<'_>) -> Result<Step, WireError> {
        let (h, key) = (&x.h, x.key);
        let new = self
            .sessions
            .get(&h.session)
            .is_some_and(|s| !s.objects.contains_key(&h.object) && !s.finished.contains(h.object));
        // A session holding more than its share (of memory, or of the object slots) gives way to
        // this one: without this, one that filled both first would keep every other out.
        if new && !self.budget.fits(OBJECT_COST) {
            self.make_room(h.session, OBJECT_COST);
        }
        if new && self.objects >= self.config.max_objects {
            self.make_object_room(h.session);
        }
        let (sessions, mut sh) = self.split();
        let Some(s) = sessions.get_mut(&h.session) else {
            return Ok(Step::Done);
        };
        if !s.objects.contains_key(&h.object) {
            if s.finished.contains(h.object) {
                sh.counters.late += 1;
                return Ok(Step::Done);
            }
            if h.content_len > sh.config.max_content_len {
                s.finished.insert(h.object, h.object.saturating_add(1));
                let gaps = s.heard(h.object, now);
                sh.missing(h.session, s, gaps);
                sh.counters.objects_lost = sh.counters.objects_lost.saturating_add(1);
                let (path, _) = s.announced.remove(&h.object).unzip();
                sh.events.push_back(Event::Abandoned {
                    key,
                    path,
                    size: Some(h.content_len),
                    sender_heard: s.sender_heard(),
                    reason: Abandon::TooLarge {
                        content_len: h.content_len,
                    },
                });
                return Ok(Step::Done);
            }
            if *sh.objects >= sh.config.max_objects || !sh.budget.fits(OBJECT_COST) {
                sh.counters.over_budget += 1;
                return Ok(Step::Done);
            }
            let gaps = s.heard(h.object, now);
            sh.missing(h.session, s, gaps);
            sh.budget.take(OBJECT_COST);
            s.used += OBJECT_COST;
            *sh.objects += 1;
            s.objects.insert(
                h.object,
                Object {
                    geometry: x.geometry,
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
            return Ok(Step::Done);
        };
        if obj.geometry != x.geometry {
            sh.counters.inconsistent += 1;
            return Err(WireError::InvalidHeader(
                "geometry differs from earlier shards",
            ));
        }
        if obj.done.contains(u64::from(h.block)) {
            sh.counters.duplicate += 1;
            return Ok(Step::Done);
        }
        Ok(Step::Next)
    }

    /// The shard's block, opened on its first shard within the session's fair share of memory;
    /// when the budget is short, room is made first ([`Assembler::make_room`]), which may give
    /// up this very object.
    fn open_block(&mut self, x: &Shard<'_>, mut active: usize) -> Result<Step, WireError> {
        let h = &x.h;
        let l = usize::from(x.geometry.shard_len);
        let n = x.span.data_shards + usize::from(h.parity_shards);
        let cost = if x.sparse { 0 } else { n * l } + BLOCK_COST + RANGE_COST;
        let is_new = |a: &Assembler| {
            a.sessions
                .get(&h.session)
                .and_then(|s| s.objects.get(&h.object))
                .map(|o| !o.blocks.contains_key(&h.block))
        };
        match is_new(self) {
            None => return Ok(Step::Done),
            Some(false) => return Ok(Step::Next),
            Some(true) if !self.budget.fits(cost) => {
                self.make_room(h.session, cost);
                active = self.sessions.values().filter(|s| s.used > 0).count();
                match self
                    .sessions
                    .get(&h.session)
                    .map(|s| s.objects.contains_key(&h.object))
                {
                    Some(true) => {}
                    // Given up to make room: its later shards are late.
                    Some(false) => {
                        self.counters.late += 1;
                        return Ok(Step::Done);
                    }
                    None => return Ok(Step::Done),
                }
            }
            Some(true) => {}
        }
        let (sessions, mut sh) = self.split();
        let Some(s) = sessions.get_mut(&h.session) else {
            return Ok(Step::Done);
        };
        let active = active + usize::from(s.used == 0);
        let born = s.shards;
        let block = if x.sparse {
            if s.used + cost > sh.budget.fair_share(active) || !sh.make_fit(cost) {
                sh.counters.over_budget += 1;
                return Ok(Step::Done);
            }
            sh.budget.take(BLOCK_COST);
            s.used += BLOCK_COST;
            // A stripe group's blocks all stay open until the end of the group: one may wait
            // for every other block of its group, and of the next, to be sent.
            let patience = STALE_BLOCKS.max(2 * x.geometry.stripe_width()) * n as u64;
            s.stale_from = s.stale_from.min(born.saturating_add(patience));
            Pending::sparse(h.parity_shards, born, patience)
        } else {
            let Some(buf) = sh.block_buffer(s, n * l, active) else {
                sh.counters.over_budget += 1;
                return Ok(Step::Done);
            };
            let patience = STALE_BLOCKS * n as u64;
            s.stale_from = s.stale_from.min(born.saturating_add(patience));
            Pending::new(h.parity_shards, buf, n, l, born, patience)
        };
        let Some(obj) = s.objects.get_mut(&h.object) else {
            return Ok(Step::Done);
        };
        obj.blocks.insert(h.block, block);
        Ok(Step::Next)
    }

    /// Stores the shard in its block (a striped data shard goes into the object's run, to disk);
    /// `Next` once the block can be decoded.
    fn store(&mut self, now: Instant, x: &Shard<'_>) -> Result<Step, WireError> {
        let (h, key, geometry, span) = (&x.h, x.key, x.geometry, x.span);
        let l = usize::from(geometry.shard_len);
        let k = span.data_shards;
        let (sessions, mut sh) = self.split();
        let Some(s) = sessions.get_mut(&h.session) else {
            return Ok(Step::Done);
        };
        let Some(obj) = s.objects.get_mut(&h.object) else {
            return Ok(Step::Done);
        };
        obj.last_activity = now;
        let Some(p) = obj.blocks.get_mut(&h.block) else {
            return Ok(Step::Done);
        };
        if p.parity != h.parity_shards {
            sh.counters.inconsistent += 1;
            return Err(WireError::InvalidHeader(
                "parity count differs within a block",
            ));
        }
        let i = usize::from(h.shard);
        let added = if !x.sparse {
            p.add(i, x.payload, k)
        } else if p.has(i) {
            Added::Duplicate
        } else {
            if i < k {
                let Section::Content { offset, step } = span.section else {
                    return Ok(Step::Done);
                };
                let at = offset + i as u64 * step;
                let len = (geometry.content_len - at).min(l as u64) as usize;
                if !sh.write_run(&mut s.used, key, &mut obj.run, at, &x.payload[..len]) {
                    sh.counters.over_budget += 1;
                    return Ok(Step::Done);
                }
            } else if p.buf.capacity() - p.buf.len() < l {
                // Room for as many parity shards as the block still lacks, charged up front.
                let want = k.saturating_sub(p.count()).max(1) * l;
                if !sh.make_fit(want) {
                    sh.counters.over_budget += 1;
                    return Ok(Step::Done);
                }
                let before = p.buf.capacity();
                p.buf.reserve_exact(want);
                let grown = p.buf.capacity() - before;
                sh.budget.take(grown);
                s.used += grown;
            }
            p.mark(i, x.payload, k)
        };
        Ok(match added {
            Added::Duplicate => {
                sh.counters.duplicate += 1;
                s.shards -= 1;
                Step::Done
            }
            Added::Stored => Step::Done,
            Added::Ready => Step::Next,
        })
    }

    /// Decodes a block that has enough shards and hands out what it holds.
    fn decode(&mut self, now: Instant, x: &Shard<'_>) -> Result<(), WireError> {
        let (h, key, geometry, span) = (x.h, x.key, x.geometry, x.span);
        let l = usize::from(geometry.shard_len);
        let k = span.data_shards;
        let (sessions, mut sh) = self.split();
        let Some(s) = sessions.get_mut(&h.session) else {
            return Ok(());
        };
        let Some(obj) = s.objects.get_mut(&h.object) else {
            return Ok(());
        };
        let Some(mut p) = obj.blocks.remove(&h.block) else {
            return Ok(());
        };
        let missing = p.missing_data(k);
        obj.repaired += missing as u64;
        sh.counters.data_shards_due += k as u64;
        sh.counters.data_shards_rebuilt += missing as u64;
        let p = if x.sparse {
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
        let complete = obj.done_count == geometry.block_count();
        let Some(p) = p else {
            return self.after_block(h, key, complete, None, None);
        };
        if let Section::Content { offset, .. } = span.section {
            // The block's buffer itself goes out with the content: no copy. The caller hands it
            // back through `recycle` once written.
            let mut data = sh.release_block(s, p);
            data.truncate(span.len);
            sh.events.push_back(Event::Content { key, offset, data });
            return self.after_block(h, key, complete, None, None);
        }
        let (mut bad_head, mut head_event) = (None, None);
        let data = &p.buf[..span.len];
        match span.section {
            Section::Head => match Head::decode_as(data, sh.config.names) {
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
        sh.free_block(s, p);
        self.after_block(h, key, complete, head_event, bad_head)
    }

    /// What follows a decoded block: the session's first head, a refused head, completion.
    pub(crate) fn after_block(
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
