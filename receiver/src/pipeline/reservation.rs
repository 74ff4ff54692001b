//! Disk space reserved for an object, from its head to its outcome: an owned value released when
//! dropped, so that whichever stage ends the object (a loss on any thread, a refused digest, a
//! publication) releases it exactly once, without a release site to forget.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Bytes reserved for objects in progress or queued for publication (their announced sizes).
#[derive(Debug, Clone, Default)]
pub struct Reserved(Arc<AtomicU64>);

impl Reserved {
    /// Reserves `bytes`; returns the reservation and what was reserved before it.
    pub fn take(&self, bytes: u64) -> (Reservation, u64) {
        let before = self.0.fetch_add(bytes, Ordering::Relaxed);
        (
            Reservation {
                bytes,
                of: Arc::clone(&self.0),
            },
            before,
        )
    }

    /// Bytes reserved now.
    #[cfg(test)]
    pub fn bytes(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// One object's reservation; released on drop.
#[derive(Debug)]
pub struct Reservation {
    bytes: u64,
    of: Arc<AtomicU64>,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.of.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reservation_is_released_once_wherever_it_is_dropped() {
        let r = Reserved::default();
        let (a, before) = r.take(10);
        assert_eq!(before, 0);
        let (b, before) = r.take(5);
        assert_eq!((before, r.bytes()), (10, 15));
        std::thread::spawn(move || drop(a)).join().unwrap();
        assert_eq!(r.bytes(), 5);
        drop(b);
        assert_eq!(r.bytes(), 0);
    }
}
