//! Names the sender announced (`docs/protocol.md` §2.4), kept for objects not finished, so that an
//! object lost without its head, or of which nothing arrived, is still reported by name.

use std::time::Instant;

use super::engine::Assembler;
use crate::meta::check_path_as;
use crate::wire::Announcement;

/// Announced names kept per session at most; the lowest object numbers go first.
pub(crate) const MAX_ANNOUNCED: usize = 1024;

impl Assembler {
    /// Keeps the names of `a` that may be needed, and learns from it which objects were sent.
    pub(crate) fn on_announce(&mut self, now: Instant, a: Announcement<'_>) {
        let (sessions, mut sh) = self.split();
        let Some(s) = sessions.get_mut(&a.session) else {
            return;
        };
        s.announcing = true;
        let mut end = 0;
        for e in a.entries() {
            end = end.max(e.object.saturating_add(1));
            let known = s.finished.contains(e.object)
                || s.objects.get(&e.object).is_some_and(|o| o.head.is_some());
            // A name is only ever written into a loss record, but one unfit for a file is unfit
            // for a record too.
            if known || check_path_as(e.path, sh.config.names).is_err() {
                continue;
            }
            s.announced.insert(e.object, (e.path.to_owned(), e.size));
            while s.announced.len() > MAX_ANNOUNCED {
                s.announced.pop_first();
            }
        }
        // Announced objects were sent whole: those of which nothing arrived are gaps.
        if end > s.next {
            let gaps = s.add_gap(s.next, end, now);
            s.next = end;
            sh.missing(a.session, s, gaps);
        }
    }
}
