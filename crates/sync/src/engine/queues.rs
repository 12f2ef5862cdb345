//! The workers' job queues: one bounded channel per worker, and the walker's choice of the
//! queue each batch goes to.
//!
//! A directory's batches go to one worker: every create, link and rename in a directory takes
//! that directory's inode lock, so two workers filling one directory queue on it (and spin
//! on it while the holder runs). The walker sends a directory's first batch to the worker
//! with the fewest batches waiting and its later batches to the same worker, unless that
//! worker's queue is full while another worker has at most one batch waiting (it would soon go
//! idle): then the directory moves there. Batches of large files have no directory to keep
//! to: each goes to the least loaded worker.

use crossbeam_channel::{Receiver, SendTimeoutError, Sender, TrySendError};
use std::cell::Cell;
use std::time::Duration;

/// How long the walker waits on a full queue before it looks again for an idle worker.
const RECHECK: Duration = Duration::from_millis(1);

/// The sending side: one queue per worker.
pub(super) struct JobQueues<T> {
    txs: Vec<Sender<T>>,
    /// Queues whose worker is gone (its receiver dropped).
    gone: Vec<Cell<bool>>,
    /// The directory (an opaque key) whose batches are being sent, and its queue.
    current: Cell<Option<(usize, usize)>>,
    /// Where the search for the least-loaded queue starts (so ties rotate).
    next: Cell<usize>,
}

impl<T> JobQueues<T> {
    /// `workers` queues of `depth` items each (both at least 1), and their receivers.
    pub(super) fn new(workers: usize, depth: usize) -> (Self, Vec<Receiver<T>>) {
        let (txs, rxs): (Vec<_>, Vec<_>) = (0..workers.max(1))
            .map(|_| crossbeam_channel::bounded(depth.max(1)))
            .unzip();
        let gone = txs.iter().map(|_| Cell::new(false)).collect();
        let q = JobQueues {
            txs,
            gone,
            current: Cell::new(None),
            next: Cell::new(0),
        };
        (q, rxs)
    }

    /// The live queue with the fewest items waiting.
    fn least_loaded(&self) -> Option<usize> {
        let n = self.txs.len();
        let start = self.next.get();
        self.next.set((start + 1) % n);
        (0..n)
            .map(|i| (start + i) % n)
            .filter(|&q| !self.gone[q].get())
            .min_by_key(|&q| self.txs[q].len())
    }

    /// A live queue other than `not` with at most one item waiting.
    fn idle_other(&self, not: usize) -> Option<usize> {
        (0..self.txs.len()).find(|&q| q != not && !self.gone[q].get() && self.txs[q].len() <= 1)
    }

    /// `key`'s batches go to queue `q` from now on.
    fn sent(&self, key: Option<usize>, q: usize) {
        if let Some(key) = key {
            self.current.set(Some((key, q)));
        }
    }

    /// Sends `item`, which belongs to directory `key` (`None`: to no directory in
    /// particular), blocking while the chosen queue is full. `Err(item)` if every worker is
    /// gone.
    pub(super) fn send(&self, key: Option<usize>, mut item: T) -> Result<(), T> {
        let mut q = match (key, self.current.get()) {
            (Some(key), Some((k, q))) if k == key && !self.gone[q].get() => q,
            _ => match self.least_loaded() {
                Some(q) => q,
                None => return Err(item),
            },
        };
        loop {
            match self.txs[q].try_send(item) {
                Ok(()) => {
                    self.sent(key, q);
                    return Ok(());
                }
                Err(TrySendError::Full(back)) => item = back,
                Err(TrySendError::Disconnected(back)) => {
                    item = back;
                    self.gone[q].set(true);
                    q = match self.least_loaded() {
                        Some(q) => q,
                        None => return Err(item),
                    };
                    continue;
                }
            }
            if let Some(other) = self.idle_other(q) {
                q = other;
                continue;
            }
            match self.txs[q].send_timeout(item, RECHECK) {
                Ok(()) => {
                    self.sent(key, q);
                    return Ok(());
                }
                Err(SendTimeoutError::Timeout(back))
                | Err(SendTimeoutError::Disconnected(back)) => {
                    item = back;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_stays_with_its_worker_while_others_are_busy() {
        let (q, rxs) = JobQueues::new(2, 4);
        // Directory 1's batches: all to one queue.
        for i in 0..4 {
            q.send(Some(1), i).unwrap();
        }
        let first = if rxs[0].len() == 4 { 0 } else { 1 };
        assert_eq!(rxs[first].len(), 4);
        assert_eq!(rxs[1 - first].len(), 0);
        // Directory 2 starts on the other (emptier) queue and stays there.
        for i in 0..3 {
            q.send(Some(2), 10 + i).unwrap();
        }
        assert_eq!(rxs[1 - first].len(), 3);
        // Another directory: the least loaded queue.
        q.send(Some(3), 20).unwrap();
        assert_eq!(rxs[1 - first].len(), 4);
        assert_eq!(rxs[first].try_iter().collect::<Vec<_>>(), vec![0, 1, 2, 3]);
    }

    #[test]
    fn a_full_queue_gives_way_to_an_idle_worker() {
        let (q, rxs) = JobQueues::new(2, 2);
        q.send(Some(7), 0).unwrap();
        q.send(Some(7), 1).unwrap();
        let first = if rxs[0].len() == 2 { 0 } else { 1 };
        // Full, and the other queue is empty: the directory moves there.
        q.send(Some(7), 2).unwrap();
        q.send(Some(7), 3).unwrap();
        assert_eq!(rxs[1 - first].try_iter().collect::<Vec<_>>(), vec![2, 3]);
        // Both full: the walker waits until its worker takes one.
        let rx = rxs[1 - first].clone();
        let (a, b) = (rxs[first].clone(), rxs[1 - first].clone());
        q.send(Some(7), 4).unwrap(); // the now-empty other queue again
        q.send(Some(7), 5).unwrap();
        assert_eq!(b.len(), 2);
        let taker = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            rx.recv().unwrap()
        });
        q.send(Some(7), 6).unwrap();
        assert_eq!(taker.join().unwrap(), 4);
        assert_eq!(b.try_iter().collect::<Vec<_>>(), vec![5, 6]);
        assert_eq!(a.try_iter().collect::<Vec<_>>(), vec![0, 1]);
    }

    #[test]
    fn batches_of_no_directory_go_to_the_least_loaded_queue() {
        let (q, rxs) = JobQueues::new(2, 8);
        q.send(Some(1), 0).unwrap();
        q.send(Some(1), 1).unwrap();
        let first = if rxs[0].len() == 2 { 0 } else { 1 };
        // Large files: each to the emptier queue, and directory 1 keeps its worker.
        q.send(None, 100).unwrap();
        q.send(None, 101).unwrap();
        q.send(Some(1), 2).unwrap();
        assert_eq!(
            rxs[1 - first].try_iter().collect::<Vec<_>>(),
            vec![100, 101]
        );
        assert_eq!(rxs[first].try_iter().collect::<Vec<_>>(), vec![0, 1, 2]);
    }

    #[test]
    fn gone_workers_are_skipped_and_none_left_gives_the_item_back() {
        let (q, mut rxs) = JobQueues::new(2, 1);
        drop(rxs.remove(0));
        for i in 0..3 {
            // Queue 0 is gone; queue 1 takes each after its receiver drains it.
            q.send(Some(i), i).unwrap();
            assert_eq!(rxs[0].recv().unwrap(), i);
        }
        drop(rxs);
        assert_eq!(q.send(Some(9), 42), Err(42));
    }
}
