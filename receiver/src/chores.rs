//! The receive loop's chores that wait on the disk (the live state file, the replay state of
//! authentication, the manifest's sync), done on a thread of their own ([`crate::pipeline`]).
//!
//! Replacing a file by a rename makes ext4 flush the new one first (`auto_da_alloc`): 1.5 ms
//! (median) here, up to 43 ms while the share was being written; a sync waits longer. The receive
//! loop, which must drain the socket before the kernel drops what it cannot hold, only queues them.

use std::sync::mpsc::{Receiver, SyncSender, TrySendError};

use tracing::error;

/// A chore: a closure that waits on the disk.
pub type Chore = Box<dyn FnOnce() + Send>;

/// Chores queued at most: each is done about once a second, so more would only pile up stale
/// ones behind a stalled disk.
pub const QUEUED: usize = 4;

/// Does chores until every [`Queue`] is dropped.
pub fn run(rx: Receiver<Chore>) {
    rx.into_iter().for_each(|chore| chore());
}

/// Where chores are queued from.
#[derive(Clone)]
pub struct Queue {
    /// `None`: the thread could not start, and chores are done where they are queued.
    tx: Option<SyncSender<Chore>>,
}

impl Queue {
    /// A queue into the chores' thread; `None` if it could not start (chores are then done by
    /// whoever queues them).
    pub fn new(tx: Option<SyncSender<Chore>>) -> Queue {
        Queue { tx }
    }

    /// Queues `chore`; false, and nothing done, if the thread is still busy with earlier ones.
    pub fn try_run(&self, chore: impl FnOnce() + Send + 'static) -> bool {
        let Some(tx) = &self.tx else {
            chore();
            return true;
        };
        match tx.try_send(Box::new(chore)) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => false,
            Err(TrySendError::Disconnected(chore)) => {
                error!("the thread for state files stopped: doing its chore here");
                chore();
                true
            }
        }
    }

    /// Queues `chore`, waiting for room: for the last ones, at a stop.
    pub fn run(&self, chore: impl FnOnce() + Send + 'static) {
        match &self.tx {
            Some(tx) => {
                if let Err(e) = tx.send(Box::new(chore)) {
                    (e.0)();
                }
            }
            None => chore(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn chores_are_done_in_order_and_a_busy_thread_refuses_more_instead_of_blocking() {
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUED);
        let chores = std::thread::spawn(move || run(rx));
        let q = Queue::new(Some(tx));
        let done = Arc::new(Mutex::new(Vec::new()));
        let (hold, held) = std::sync::mpsc::channel::<()>();
        // The first chore waits until released; the queue then fills.
        q.run(move || {
            let _ = held.recv();
        });
        let mut accepted = 0;
        for i in 0..QUEUED + 3 {
            let d = Arc::clone(&done);
            if q.try_run(move || d.lock().unwrap().push(i)) {
                accepted += 1;
            }
        }
        assert!(
            (QUEUED - 1..=QUEUED).contains(&accepted),
            "{accepted} accepted behind a busy thread"
        );
        drop(hold);
        let d = Arc::clone(&done);
        q.run(move || d.lock().unwrap().push(99));
        drop(q);
        chores.join().unwrap();
        let done = done.lock().unwrap().clone();
        assert_eq!(done.last(), Some(&99), "the waiting chore runs last");
        assert_eq!(done.len(), accepted + 1);
        assert!(done.windows(2).all(|w| w[0] < w[1]), "in order: {done:?}");
    }
}
