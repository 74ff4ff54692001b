//! The queue of files ready to send, one lane per channel, shared by the spool thread (which adds
//! files) and the producer (which takes them).
//!
//! The rule: the producer takes the oldest file of the highest-priority lane that has one, except
//! that after [`STREAK`] files in a row from higher lanes while a lower lane was waiting, the next
//! file comes from the waiting lane whose oldest file has waited longest. A backlogged lane thus
//! gets at least one file in every `STREAK + 1`, however busy the lanes above it are. A file being
//! encoded is never interrupted: an urgent file waits at most for the file in progress.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::walk::Entry;

/// Files in a row a higher-priority lane may take while a lower one waits.
pub const STREAK: u32 = 7;

/// A file ready to send: the spool's id for it and what to read.
pub type Item = (u64, Entry);

/// What the producer gets from [`Feed::next`].
pub enum Next {
    /// A file to send.
    Item(Item),
    /// Nothing within the wait.
    Empty,
    /// No more files will come.
    Closed,
}

/// Where the producer takes files from.
pub trait Feed {
    /// The next file, waiting at most `wait` (zero: do not wait).
    fn next(&self, wait: Duration) -> Next;
}

impl Feed for std::sync::mpsc::Receiver<Item> {
    fn next(&self, wait: Duration) -> Next {
        use std::sync::mpsc::RecvTimeoutError;
        let got = if wait.is_zero() {
            self.try_recv().map_err(|e| match e {
                std::sync::mpsc::TryRecvError::Empty => RecvTimeoutError::Timeout,
                std::sync::mpsc::TryRecvError::Disconnected => RecvTimeoutError::Disconnected,
            })
        } else {
            self.recv_timeout(wait)
        };
        match got {
            Ok(item) => Next::Item(item),
            Err(RecvTimeoutError::Timeout) => Next::Empty,
            Err(RecvTimeoutError::Disconnected) => Next::Closed,
        }
    }
}

struct Lane {
    channel: String,
    priority: i64,
    files: VecDeque<(Instant, Item)>,
}

#[derive(Default)]
struct Lanes {
    /// Highest priority first; equal priorities in the order they were first seen.
    lanes: Vec<Lane>,
    /// Files taken in a row from a higher lane while a lower one was waiting.
    streak: u32,
    closed: bool,
}

/// Ready files by channel, with the priority rule of this module.
#[derive(Default)]
pub struct Queue {
    lanes: Mutex<Lanes>,
    ready: Condvar,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, Lanes> {
        // A panic elsewhere leaves the lanes consistent: every change is one push or pop.
        self.lanes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Adds a file of `channel` (whose priority is `priority`), ready since `since`.
    pub fn push(&self, channel: &str, priority: i64, since: Instant, item: Item) {
        let mut l = self.lock();
        let at = match l.lanes.iter().position(|x| x.channel == channel) {
            Some(i) if l.lanes[i].priority == priority => i,
            found => {
                // New lane, or a reloaded configuration changed its priority: (re)place it.
                let files = found.map(|i| l.lanes.remove(i).files).unwrap_or_default();
                let i = l.lanes.partition_point(|x| x.priority >= priority);
                l.lanes.insert(
                    i,
                    Lane {
                        channel: channel.to_owned(),
                        priority,
                        files,
                    },
                );
                i
            }
        };
        l.lanes[at].files.push_back((since, item));
        drop(l);
        self.ready.notify_one();
    }

    /// No more files: the producer ends once the queue is empty.
    pub fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_all();
    }

    fn take(l: &mut Lanes) -> Option<Item> {
        let first = l.lanes.iter().position(|x| !x.files.is_empty())?;
        let starved = l.lanes[first + 1..]
            .iter()
            .enumerate()
            .filter_map(|(i, x)| x.files.front().map(|(t, _)| (*t, first + 1 + i)))
            .min();
        let lane = match starved {
            Some((_, lower)) if l.streak >= STREAK => {
                l.streak = 0;
                lower
            }
            Some(_) => {
                l.streak += 1;
                first
            }
            None => {
                l.streak = 0;
                first
            }
        };
        l.lanes[lane].files.pop_front().map(|(_, item)| item)
    }
}

impl Feed for Queue {
    fn next(&self, wait: Duration) -> Next {
        let deadline = Instant::now() + wait;
        let mut l = self.lock();
        loop {
            if let Some(item) = Queue::take(&mut l) {
                return Next::Item(item);
            }
            if l.closed {
                return Next::Closed;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Next::Empty;
            }
            l = self
                .ready
                .wait_timeout(l, left)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(id: u64) -> Item {
        (
            id,
            Entry {
                source: format!("/s/{id}").into(),
                name: id.to_string(),
            },
        )
    }

    fn drain(q: &Queue) -> Vec<u64> {
        let mut out = Vec::new();
        while let Next::Item((id, _)) = q.next(Duration::ZERO) {
            out.push(id);
        }
        out
    }

    #[test]
    fn higher_priority_goes_first_and_a_backlogged_lower_lane_still_gets_one_in_eight() {
        let q = Queue::default();
        let t = Instant::now();
        for i in 0..20 {
            q.push("bulk", 0, t, item(1000 + i));
        }
        for i in 0..16 {
            q.push("alarms", 10, t + Duration::from_millis(1), item(i));
        }
        let order = drain(&q);
        assert_eq!(order.len(), 36);
        assert_eq!(&order[..7], &[0, 1, 2, 3, 4, 5, 6]);
        assert_eq!(order[7], 1000, "the eighth file is the waiting bulk file");
        assert_eq!(&order[8..15], &[7, 8, 9, 10, 11, 12, 13]);
        assert_eq!(order[15], 1001);
        assert_eq!(&order[16..18], &[14, 15]);
        assert_eq!(order[18..], (1002..1020).collect::<Vec<_>>()[..]);
    }

    #[test]
    fn an_urgent_file_overtakes_a_bulk_backlog() {
        let q = Queue::default();
        let t = Instant::now();
        for i in 0..100 {
            q.push("bulk", 0, t, item(1000 + i));
        }
        assert!(matches!(q.next(Duration::ZERO), Next::Item((1000, _))));
        q.push("alarms", 5, t, item(1));
        assert!(matches!(q.next(Duration::ZERO), Next::Item((1, _))));
        assert_eq!(drain(&q), (1001..1100).collect::<Vec<_>>());
    }

    #[test]
    fn a_closed_queue_is_drained_then_ends() {
        let q = Queue::default();
        q.push("a", 0, Instant::now(), item(7));
        q.close();
        assert!(matches!(q.next(Duration::from_secs(5)), Next::Item((7, _))));
        assert!(matches!(q.next(Duration::from_secs(5)), Next::Closed));
    }
}
