//! Losses: an object given up and every gap in a session's numbering are reported, so that
//! everything heard gets an outcome.

use super::engine::Shared;
use super::session::Session;
use super::types::{Abandon, Event, ObjectKey};
use crate::meta::{MetaError, NamePolicy, check_path_as};

impl Shared<'_> {
    /// Reports the objects of `gaps` lost: by name those the sender announced, the others as
    /// ranges of objects of which nothing arrived.
    pub(crate) fn missing(&mut self, session: u64, s: &mut Session, gaps: Vec<(u64, u64)>) {
        for (first, end) in gaps {
            self.counters.objects_lost = self.counters.objects_lost.saturating_add(end - first);
            let named: Vec<u64> = s.announced.range(first..end).map(|(o, _)| *o).collect();
            let mut from = first;
            for object in named {
                if object > from {
                    self.events.push_back(Event::Missing {
                        session,
                        first: from,
                        last: object - 1,
                    });
                }
                let (path, size) = s.announced.remove(&object).unzip();
                self.events.push_back(Event::Abandoned {
                    key: ObjectKey { session, object },
                    path,
                    size,
                    reason: Abandon::NothingArrived,
                    sender_heard: s.sender_heard(),
                });
                from = object + 1;
            }
            if from < end {
                self.events.push_back(Event::Missing {
                    session,
                    first: from,
                    last: end - 1,
                });
            }
        }
    }
    /// Reports every object of session `sid` still in progress lost for `reason`, and every gap
    /// in its numbering missing.
    pub(crate) fn close_all(&mut self, sid: u64, s: &mut Session, reason: Abandon) {
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
        self.missing(sid, s, gaps);
    }
    /// Drops an object's state and reports it lost.
    pub(crate) fn lose(&mut self, s: &mut Session, key: ObjectKey, reason: Option<Abandon>) {
        let Some(obj) = s.objects.remove(&key.object) else {
            return;
        };
        s.finished.insert(key.object, key.object.saturating_add(1));
        let total = obj.geometry.block_count();
        let reason = reason.unwrap_or(Abandon::Timeout {
            blocks_missing: total.saturating_sub(obj.done_count),
            blocks_total: total,
        });
        let announced = s.announced.remove(&key.object);
        // A name refused only because the share's policy is portable is safe to record.
        let refused = match &reason {
            Abandon::BadMetadata(MetaError::UnsafePath { path, .. })
                if check_path_as(path, NamePolicy::Posix).is_ok() =>
            {
                Some((path.clone(), obj.geometry.content_len))
            }
            _ => None,
        };
        let (path, size) = match (&obj.head, announced.or(refused)) {
            (Some(h), _) => (Some(h.path.clone()), Some(h.size)),
            (None, named) => named.unzip(),
        };
        self.free_object(s, obj);
        self.counters.objects_lost = self.counters.objects_lost.saturating_add(1);
        self.events.push_back(Event::Abandoned {
            key,
            path,
            size,
            reason,
            sender_heard: s.sender_heard(),
        });
    }
}
