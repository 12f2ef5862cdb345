//! Source directory listings read ahead of the walker, in the walker's own order.
//!
//! The walker goes through the source depth first and lists every directory it enters; a
//! listing (one `getdents64` pass and an `fstatat` per entry) is on its critical path, and
//! while it lists, the workers may run out of files. Helper threads ("listers") list the
//! directories the walker will enter next, so that it finds them ready.
//!
//! Which directories come next: every directory has a position in the walk, the list of the
//! indices of its ancestors' and its own place among their parents' subdirectories (`[3, 0,
//! 7]`); depth first (pre-order) is exactly the lexicographic order of these positions. The
//! walker asks for a window of the next subdirectories of every directory on its path
//! ([`Prefetch::request`]), and the listers always take the wanted directory with the
//! smallest position, i.e. the one the walker will enter first. A directory the walker enters
//! ([`Prefetch::take`]) makes every wanted or read listing before it stale; they are dropped.
//!
//! Invariants: at most `cap` listings are being read or wait to be taken, and no listing is
//! started while those waiting hold [`PREFETCH_BYTES`] or more, so read-ahead memory stays
//! bounded even next to huge directories. The wanted set holds at most a window of names per
//! directory on the walk path.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};

use crate::fsops;

/// Listings read ahead stop being started once those waiting hold this many bytes.
pub(super) const PREFETCH_BYTES: usize = 16 << 20;

/// A directory's place in the depth-first walk (see the module documentation).
pub(super) type WalkPos = Vec<u32>;

/// A listing started or read ahead, waiting to be taken.
struct Slot {
    pos: WalkPos,
    /// `None` while a lister reads it.
    listing: Option<io::Result<fsops::Listing>>,
}

#[derive(Default)]
struct State {
    /// Directories wanted and not started, by walk position.
    wanted: BTreeMap<WalkPos, PathBuf>,
    /// Directories being read or read and not taken yet.
    slots: HashMap<PathBuf, Slot>,
    /// Heap bytes of the listings read and not taken yet.
    ready_bytes: usize,
    /// No more requests: the listers return.
    closed: bool,
}

/// Source directory listings read ahead of the walker by helper threads.
pub(super) struct Prefetch {
    state: Mutex<State>,
    /// A listing was read (the walker may be waiting for it).
    ready: Condvar,
    /// Work for the listers: a request, a slot freed, or the end.
    work: Condvar,
    /// Listings being read or waiting to be taken, at most.
    cap: usize,
    /// Whether any lister runs (requests are ignored otherwise).
    active: AtomicBool,
}

impl Prefetch {
    /// A prefetcher holding at most `cap` listings ahead. Requests are ignored until
    /// [`Prefetch::start`].
    pub(super) fn new(cap: usize) -> Prefetch {
        Prefetch {
            state: Mutex::new(State::default()),
            ready: Condvar::new(),
            work: Condvar::new(),
            cap: cap.max(1),
            active: AtomicBool::new(false),
        }
    }

    /// How many subdirectories of a directory the walker asks for ahead of the one it enters.
    pub(super) fn window(&self) -> usize {
        self.cap
    }

    fn lock(&self) -> Option<MutexGuard<'_, State>> {
        self.state.lock().ok()
    }

    /// Marks the prefetcher as served by listers (call before starting them).
    pub(super) fn start(&self) {
        self.active.store(true, Ordering::Relaxed);
    }

    /// Asks for `dir`, at walk position `pos`, to be listed ahead.
    pub(super) fn request(&self, pos: WalkPos, dir: PathBuf) {
        if !self.active.load(Ordering::Relaxed) {
            return;
        }
        let Some(mut st) = self.lock() else { return };
        if st.closed || st.slots.contains_key(&dir) {
            return;
        }
        st.wanted.insert(pos, dir);
        drop(st);
        self.work.notify_one();
    }

    /// Takes the read-ahead listing of `dir` (at walk position `pos`), waiting if a lister
    /// is reading it; `None` if none was started. Everything wanted or read for positions
    /// before `pos` is dropped: the walk has passed them.
    pub(super) fn take(&self, dir: &Path, pos: &[u32]) -> Option<io::Result<fsops::Listing>> {
        if !self.active.load(Ordering::Relaxed) {
            return None;
        }
        let mut st = self.lock()?;
        let later = st.wanted.split_off(pos);
        st.wanted = later;
        st.wanted.remove(pos);
        let mut freed = 0;
        let stale: Vec<PathBuf> = st
            .slots
            .iter()
            .filter(|(d, s)| s.pos.as_slice() < pos && d.as_path() != dir)
            .map(|(d, _)| d.clone())
            .collect();
        for d in stale {
            if let Some(Slot {
                listing: Some(Ok(l)),
                ..
            }) = st.slots.remove(&d)
            {
                freed += l.heap_bytes();
            }
            // A slot still being read is dropped by its lister when it finds it gone.
        }
        st.ready_bytes -= freed.min(st.ready_bytes);
        let taken = loop {
            match st.slots.get(dir) {
                None => break None,
                Some(Slot { listing: None, .. }) => st = self.ready.wait(st).ok()?,
                Some(Slot {
                    listing: Some(_), ..
                }) => {
                    let listing = st.slots.remove(dir).and_then(|s| s.listing);
                    if let Some(Ok(l)) = &listing {
                        st.ready_bytes -= l.heap_bytes().min(st.ready_bytes);
                    }
                    break listing;
                }
            }
        };
        drop(st);
        self.work.notify_all();
        taken
    }

    /// Ends the read-ahead: the listers return once their current listing is read.
    pub(super) fn close(&self) {
        if let Some(mut st) = self.lock() {
            st.closed = true;
            st.wanted.clear();
        }
        self.work.notify_all();
        self.ready.notify_all();
    }

    /// A lister thread: lists wanted directories, nearest in walk order first, until
    /// [`Prefetch::close`].
    pub(super) fn serve(&self, keep_atime: bool) {
        let Some(mut st) = self.lock() else { return };
        loop {
            if st.closed {
                return;
            }
            let room = st.slots.len() < self.cap && st.ready_bytes < PREFETCH_BYTES;
            let next = if room { st.wanted.pop_first() } else { None };
            let Some((pos, dir)) = next else {
                st = match self.work.wait(st) {
                    Ok(g) => g,
                    Err(_) => return,
                };
                continue;
            };
            st.slots.insert(dir.clone(), Slot { pos, listing: None });
            drop(st);
            let listing = fsops::list_with_stats(&dir, keep_atime);
            st = match self.lock() {
                Some(g) => g,
                None => return,
            };
            // A slot dropped meanwhile (the walk passed it) drops its listing.
            if st.slots.contains_key(&dir) {
                if let Ok(l) = &listing {
                    st.ready_bytes += l.heap_bytes();
                }
                if let Some(slot) = st.slots.get_mut(&dir) {
                    slot.listing = Some(listing);
                }
            }
            self.ready.notify_all();
        }
    }
}

#[cfg(test)]
impl Prefetch {
    /// `None`: not started; `Some(false)`: being read; `Some(true)`: read, not taken.
    fn slot_state(&self, dir: &Path) -> Option<bool> {
        let st = self.lock()?;
        st.slots.get(dir).map(|s| s.listing.is_some())
    }

    fn ready_bytes(&self) -> usize {
        self.lock().map_or(0, |st| st.ready_bytes)
    }

    /// Waits until `dir`'s listing has been read.
    fn wait_ready(&self, dir: &Path) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while self.slot_state(dir) != Some(true) {
            assert!(std::time::Instant::now() < deadline, "{dir:?} never read");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// Directories `d0`, `d1`, ... with `i + 1` files each.
    fn tree(n: usize) -> (tempfile::TempDir, Vec<PathBuf>) {
        let t = tempfile::tempdir().expect("tempdir");
        let dirs = (0..n)
            .map(|i| {
                let d = t.path().join(format!("d{i}"));
                std::fs::create_dir(&d).expect("mkdir");
                for f in 0..=i {
                    std::fs::write(d.join(format!("f{f}")), b"x").expect("write");
                }
                d
            })
            .collect();
        (t, dirs)
    }

    fn lister(p: &Arc<Prefetch>) -> std::thread::JoinHandle<()> {
        let p = Arc::clone(p);
        std::thread::spawn(move || p.serve(false))
    }

    #[test]
    fn the_nearest_directory_in_walk_order_is_read_first() {
        let (_t, d) = tree(3);
        let p = Arc::new(Prefetch::new(1));
        p.start();
        // Asked for in the opposite order of the walk: a later sibling first, then a
        // subdirectory of an earlier one.
        p.request(vec![0, 2], d[2].clone());
        p.request(vec![0, 1], d[1].clone());
        p.request(vec![0, 0, 5], d[0].clone());
        let h = lister(&p);
        p.wait_ready(&d[0]);
        // One slot: the others wait until it is taken.
        assert_eq!(p.slot_state(&d[1]), None);
        assert_eq!(p.slot_state(&d[2]), None);
        let l = p
            .take(&d[0], &[0, 0, 5])
            .expect("read ahead")
            .expect("listed");
        assert_eq!(l.len(), 1);
        p.wait_ready(&d[1]);
        assert_eq!(p.slot_state(&d[2]), None);
        let l = p.take(&d[1], &[0, 1]).expect("read ahead").expect("listed");
        assert_eq!(l.len(), 2);
        p.wait_ready(&d[2]);
        let l = p.take(&d[2], &[0, 2]).expect("read ahead").expect("listed");
        assert_eq!(l.len(), 3);
        assert_eq!(p.ready_bytes(), 0);
        p.close();
        h.join().expect("lister");
    }

    #[test]
    fn entering_a_directory_drops_what_the_walk_passed() {
        let (_t, d) = tree(4);
        let p = Arc::new(Prefetch::new(2));
        p.start();
        for (i, dir) in d.iter().enumerate() {
            p.request(vec![i as u32], dir.clone());
        }
        let h = lister(&p);
        p.wait_ready(&d[0]);
        p.wait_ready(&d[1]);
        assert!(p.ready_bytes() > 0);
        // The walk skips d0 and d1 (say, filtered out) and enters d2, which had no room
        // to be started: the walker lists it itself.
        assert!(p.take(&d[2], &[2]).is_none());
        assert_eq!(p.slot_state(&d[0]), None);
        assert_eq!(p.slot_state(&d[1]), None);
        // d3 is still wanted and now has room.
        p.wait_ready(&d[3]);
        assert!(p.take(&d[0], &[0]).is_none());
        let l = p.take(&d[3], &[3]).expect("read ahead").expect("listed");
        assert_eq!(l.len(), 4);
        assert_eq!(p.ready_bytes(), 0);
        p.close();
        h.join().expect("lister");
    }

    #[test]
    fn a_missing_directory_is_an_error_for_the_walker() {
        let t = tempfile::tempdir().expect("tempdir");
        let gone = t.path().join("gone");
        let p = Arc::new(Prefetch::new(4));
        p.start();
        p.request(vec![0], gone.clone());
        let h = lister(&p);
        p.wait_ready(&gone);
        let e = p
            .take(&gone, &[0])
            .expect("read ahead")
            .expect_err("missing");
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        p.close();
        h.join().expect("lister");
    }

    #[test]
    fn without_listers_nothing_is_read_ahead() {
        let (_t, d) = tree(1);
        let p = Prefetch::new(4);
        p.request(vec![0], d[0].clone());
        assert_eq!(p.slot_state(&d[0]), None);
        assert!(p.take(&d[0], &[0]).is_none());
    }

    #[test]
    fn close_ends_idle_listers() {
        let p = Arc::new(Prefetch::new(4));
        p.start();
        let hs: Vec<_> = (0..3).map(|_| lister(&p)).collect();
        std::thread::sleep(std::time::Duration::from_millis(10));
        p.close();
        for h in hs {
            h.join().expect("lister");
        }
    }
}
