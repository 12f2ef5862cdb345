//! The write buffer budget: how many bytes of extent buffers all open files may hold together
//! (`write_buffer_mib`), and how writers wait for room.
//!
//! A write that needs a new extent buffer (or a larger one) first reserves its bytes here
//! ([`BufferBudget::try_reserve`]); when they would take the total past the budget, the writer
//! waits (before allocating anything) while the writers that already hold a buffer fill and
//! commit it. Every decrease of the total bumps a release generation and wakes the waiters
//! ([`BufferBudget::wait_release`]). A waiter that sees no release for a while commits the
//! oldest partly written buffer of a file nobody wrote to meanwhile (see
//! [`super::Fs::commit_stalled_buffer`]), so a writer never waits forever: not behind a file
//! left open and idle, and not when every writer waits.
//!
//! Invariant: the total only passes the budget when no other file holds any buffer (a single
//! write larger than the budget; see [`super::Fs::write_nowait`]).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// The filesystem-wide count of extent buffer bytes held by open files, with the waiters for
/// room in it.
#[derive(Debug)]
pub(super) struct BufferBudget {
    /// The budget in bytes.
    pub(super) limit: usize,
    /// Bytes held (buffered and handed to background writers, not the spare buffers) plus
    /// bytes reserved by writes about to allocate them.
    bytes: AtomicUsize,
    /// The most `bytes` has been.
    peak: AtomicUsize,
    /// Bumped at every decrease of `bytes`.
    released: AtomicU64,
    /// Threads in [`BufferBudget::wait_release`].
    waiters: AtomicUsize,
    lock: Mutex<()>,
    cv: Condvar,
}

impl BufferBudget {
    pub(super) fn new(limit: usize) -> Self {
        BufferBudget {
            limit,
            bytes: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            released: AtomicU64::new(0),
            waiters: AtomicUsize::new(0),
            lock: Mutex::new(()),
            cv: Condvar::new(),
        }
    }

    /// Bytes held and reserved now.
    pub(super) fn bytes(&self) -> usize {
        self.bytes.load(Ordering::SeqCst)
    }

    /// The most bytes held and reserved at any one time.
    pub(super) fn peak(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }

    /// The release generation: it changes whenever bytes are given back.
    pub(super) fn generation(&self) -> u64 {
        self.released.load(Ordering::SeqCst)
    }

    /// Add `n` bytes if the total stays within the budget; `force` adds them regardless.
    fn add(&self, n: usize, force: bool) -> bool {
        let mut cur = self.bytes.load(Ordering::SeqCst);
        loop {
            let new = cur.saturating_add(n);
            if !force && new > self.limit {
                return false;
            }
            match self
                .bytes
                .compare_exchange_weak(cur, new, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => {
                    self.peak.fetch_max(new, Ordering::SeqCst);
                    return true;
                }
                Err(now) => cur = now,
            }
        }
    }

    fn sub(&self, n: usize) {
        if n == 0 {
            return;
        }
        self.bytes.fetch_sub(n, Ordering::SeqCst);
        self.released.fetch_add(1, Ordering::SeqCst);
        // A waiter counts itself before it checks the generation under the lock, and this
        // takes the lock after changing the generation: no wake-up is lost.
        if self.waiters.load(Ordering::SeqCst) > 0 {
            let _g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.cv.notify_all();
        }
    }

    /// Wait until some bytes are given back after generation `seen`
    /// ([`BufferBudget::generation`]), or `timeout` passes. Returns whether bytes were given
    /// back.
    pub(super) fn wait_release(&self, seen: u64, timeout: Duration) -> bool {
        self.waiters.fetch_add(1, Ordering::SeqCst);
        let g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let (_g, _) = self
            .cv
            .wait_timeout_while(g, timeout, |_| self.generation() == seen)
            .unwrap_or_else(|e| e.into_inner());
        self.waiters.fetch_sub(1, Ordering::SeqCst);
        self.generation() != seen
    }
}

/// A file's share of the [`BufferBudget`]; dropping it (the file's state goes away) gives the
/// bytes back.
#[derive(Debug, Default)]
pub(super) struct Held {
    bytes: usize,
    budget: Option<Arc<BufferBudget>>,
}

impl Held {
    /// Bytes this file holds (and has reserved).
    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Set this file's share to `bytes` (what its buffers hold now), adjusting the total by
    /// the difference. Never refused: growth past the reservation is what a write allocated.
    pub(super) fn set(&mut self, budget: &Arc<BufferBudget>, bytes: usize) {
        let b = self.budget.get_or_insert_with(|| budget.clone());
        if bytes > self.bytes {
            b.add(bytes - self.bytes, true);
        } else {
            b.sub(self.bytes - bytes);
        }
        self.bytes = bytes;
    }

    /// Reserve `n` more bytes for a write about to allocate them, if the total stays within
    /// the budget (`force`: regardless). The next [`Held::set`] replaces the reservation with
    /// what was really allocated.
    pub(super) fn reserve(&mut self, budget: &Arc<BufferBudget>, n: usize, force: bool) -> bool {
        let b = self.budget.get_or_insert_with(|| budget.clone());
        if !b.add(n, force) {
            return false;
        }
        self.bytes += n;
        true
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(b) = &self.budget {
            b.sub(self.bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_stay_within_the_limit_unless_forced() {
        let b = Arc::new(BufferBudget::new(100));
        let mut h = Held::default();
        assert!(h.reserve(&b, 60, false));
        assert!(!h.reserve(&b, 50, false));
        assert_eq!(b.bytes(), 60);
        assert!(h.reserve(&b, 50, true));
        assert_eq!((b.bytes(), b.peak()), (110, 110));
        h.set(&b, 10);
        assert_eq!(b.bytes(), 10);
        drop(h);
        assert_eq!((b.bytes(), b.peak()), (0, 110));
    }

    #[test]
    fn a_release_wakes_a_waiter_and_a_timeout_ends_the_wait() {
        let b = Arc::new(BufferBudget::new(100));
        let mut h = Held::default();
        assert!(h.reserve(&b, 100, false));
        let seen = b.generation();
        assert!(!b.wait_release(seen, Duration::from_millis(20)));
        let waiter = {
            let b = b.clone();
            std::thread::spawn(move || b.wait_release(seen, Duration::from_secs(30)))
        };
        std::thread::sleep(Duration::from_millis(20));
        h.set(&b, 0);
        assert!(waiter.join().unwrap());
        // A release before the wait starts is seen at once.
        assert!(b.wait_release(seen, Duration::from_secs(30)));
    }
}
