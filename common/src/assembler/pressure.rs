//! Memory pressure: what gives way when a shard needs room the budget does not have. Pooled
//! buffers first, then the least advanced blocks of sessions above their fair share, then blocks
//! that have waited so long they can no longer complete.

use super::engine::Assembler;
use super::session::Session;
use super::types::{Abandon, ObjectKey};

impl Assembler {
    /// The session (never `for_session`) that holds the most by `held`, if that is more than
    /// `share`.
    fn greediest(
        &self,
        for_session: u64,
        share: usize,
        held: impl Fn(&Session) -> usize,
    ) -> Option<u64> {
        self.sessions
            .iter()
            .filter(|(id, s)| **id != for_session && held(s) > share)
            .max_by_key(|(id, s)| (held(s), **id))
            .map(|(id, _)| *id)
    }

    /// Frees an object slot for `for_session`: the least advanced object of the session holding
    /// the most objects, if that is more than its fair share of the slots (never
    /// `for_session`'s own), is given up.
    pub(crate) fn make_object_room(&mut self, for_session: u64) {
        let newcomer = self
            .sessions
            .get(&for_session)
            .is_none_or(|s| s.objects.is_empty());
        let active = self
            .sessions
            .values()
            .filter(|s| !s.objects.is_empty())
            .count()
            + usize::from(newcomer);
        let share = self.config.max_objects / active.max(1);
        let Some(victim) = self.greediest(for_session, share, |s| s.objects.len()) else {
            return;
        };
        let (sessions, mut sh) = self.split();
        let Some(s) = sessions.get_mut(&victim) else {
            return;
        };
        let least = s
            .objects
            .iter()
            .map(|(&o, obj)| (obj.done_count, obj.blocks.len(), o))
            .min()
            .map(|(_, _, o)| o);
        if let Some(object) = least {
            sh.counters.preempted_blocks += 1;
            sh.lose(
                s,
                ObjectKey {
                    session: victim,
                    object,
                },
                Some(Abandon::Preempted),
            );
        }
    }

    /// Frees room for `cost` more bytes: pooled buffers first, then the least advanced blocks of
    /// sessions holding more than their fair share (never `for_session`'s own).
    pub(crate) fn make_room(&mut self, for_session: u64, cost: usize) {
        while !self.budget.fits(cost) {
            let Some(buf) = self.pool.pop() else { break };
            self.budget.give(buf.capacity());
        }
        let newcomer = self.sessions.get(&for_session).is_none_or(|s| s.used == 0);
        let active = self.sessions.values().filter(|s| s.used > 0).count() + usize::from(newcomer);
        let share = self.budget.fair_share(active);
        while !self.budget.fits(cost) {
            let Some(victim) = self.greediest(for_session, share, |s| s.used) else {
                break;
            };
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
}
