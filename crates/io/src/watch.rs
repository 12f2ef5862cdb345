//! Filesystem change notification: a recursive inotify watcher and a debouncer.
//!
//! [`TreeWatcher`] watches whole directory trees. inotify watches single directories, so the
//! watcher holds one watch per directory (the kernel limits these per user:
//! `fs.inotify.max_user_watches`; reaching it is reported as [`WatchError::Limit`]) and a map
//! from watch descriptor to directory path: that map is the only per-directory state. New
//! directories (created or moved in) are watched as their events arrive; anything created in
//! them before their watch existed is not reported, so the caller must treat a
//! [`Change::Rescan`] of such a directory as "everything below may have changed".
//!
//! [`Debouncer`] turns a stream of changes into batches: a batch is ready once no change has
//! arrived for the settle delay (a burst of writes to one file gives one batch), or once the
//! oldest pending change has waited for the maximum delay (a file written without pause is
//! still synced now and then).
//!
//! ```no_run
//! use arsync_io::watch::{Debouncer, TreeWatcher};
//! use std::time::{Duration, Instant};
//! # fn main() -> std::io::Result<()> {
//! let mut w = TreeWatcher::new()?;
//! w.watch_tree(std::path::Path::new("src")).map_err(std::io::Error::from)?;
//! let mut d = Debouncer::new(Duration::from_millis(200));
//! loop {
//!     for c in w.read_changes(Some(Duration::from_millis(100)))? {
//!         d.add(c, Instant::now());
//!     }
//!     if let Some(batch) = d.take_ready(Instant::now()) {
//!         println!("{} changes", batch.dirs.len());
//!     }
//! }
//! # }
//! ```

use std::collections::{BTreeSet, HashMap};
use std::ffi::{CString, OsStr};
use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Events a directory watch asks for: every change of an entry's data, metadata or name.
const WATCH_MASK: u32 = libc::IN_CREATE
    | libc::IN_DELETE
    | libc::IN_MODIFY
    | libc::IN_ATTRIB
    | libc::IN_CLOSE_WRITE
    | libc::IN_MOVED_FROM
    | libc::IN_MOVED_TO
    | libc::IN_DELETE_SELF
    | libc::IN_MOVE_SELF
    | libc::IN_ONLYDIR
    | libc::IN_DONT_FOLLOW
    | libc::IN_EXCL_UNLINK;

/// The fixed part of `struct inotify_event` (wd, mask, cookie, len).
const EVENT_HEADER: usize = 16;

/// What changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// An entry of this (watched) directory was created, changed, renamed or removed.
    Dir(PathBuf),
    /// Everything below this directory may have changed without events: it was created or
    /// moved in, and entries made before its watch existed were not seen.
    Rescan(PathBuf),
    /// Events were lost (the kernel queue overflowed, or a watched root went away):
    /// everything may have changed.
    Everything,
}

/// Why a tree could not be (fully) watched.
#[derive(Debug)]
pub enum WatchError {
    /// `fs.inotify.max_user_watches` (or the kernel memory for watches) was reached: part of
    /// the tree is not watched.
    Limit {
        /// How many directories this watcher watches.
        watched: usize,
    },
    /// Another error, e.g. the root does not exist.
    Io(io::Error),
}

impl fmt::Display for WatchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WatchError::Limit { watched } => {
                let max = std::fs::read_to_string("/proc/sys/fs/inotify/max_user_watches")
                    .map(|s| s.trim().to_string())
                    .unwrap_or_else(|_| "?".to_string());
                write!(
                    f,
                    "inotify watch limit reached after {watched} directories \
                     (fs.inotify.max_user_watches = {max}; raise it with sysctl)"
                )
            }
            WatchError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for WatchError {}

impl From<WatchError> for io::Error {
    fn from(e: WatchError) -> io::Error {
        match e {
            WatchError::Io(e) => e,
            WatchError::Limit { .. } => io::Error::new(io::ErrorKind::OutOfMemory, e.to_string()),
        }
    }
}

/// A recursive inotify watcher over one or more directory trees.
pub struct TreeWatcher {
    fd: OwnedFd,
    /// Watch descriptor -> watched directory.
    dirs: HashMap<i32, PathBuf>,
    /// The roots given to [`TreeWatcher::watch_tree`] (re-watched when they reappear).
    roots: Vec<PathBuf>,
    /// Paths below which changes are not reported (e.g. a destination inside a source).
    ignored: Vec<PathBuf>,
    buf: Vec<u8>,
    /// A watch failed for lack of watches since the last [`TreeWatcher::take_limit_hit`].
    limit_hit: bool,
    /// A cap on watches below the kernel's (see [`TreeWatcher::set_max_watches`]).
    max_watches: Option<usize>,
    /// Directories watched only for file roots in them: the names whose events count.
    file_parents: HashMap<i32, Vec<Vec<u8>>>,
}

impl TreeWatcher {
    /// A new watcher with nothing watched.
    pub fn new() -> io::Result<TreeWatcher> {
        // SAFETY: inotify_init1 takes no pointers; the returned descriptor is checked and then
        // owned by exactly one OwnedFd.
        let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh, valid descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(TreeWatcher {
            fd,
            dirs: HashMap::new(),
            roots: Vec::new(),
            ignored: Vec::new(),
            buf: vec![0; 64 * 1024],
            limit_hit: false,
            max_watches: None,
            file_parents: HashMap::new(),
        })
    }

    /// How many directories are watched.
    pub fn watched(&self) -> usize {
        self.dirs.len()
    }

    /// Uses at most `max` watches (directories); beyond, adding a watch fails as at the
    /// kernel's limit ([`WatchError::Limit`]). Leaves watches for other programs.
    pub fn set_max_watches(&mut self, max: Option<usize>) {
        self.max_watches = max;
    }

    /// Changes at or below `path` are not reported (and its directories are not watched).
    pub fn ignore(&mut self, path: &Path) {
        self.ignored.push(path.to_path_buf());
    }

    /// True (once) when a watch failed for lack of watches since the last call.
    pub fn take_limit_hit(&mut self) -> bool {
        std::mem::take(&mut self.limit_hit)
    }

    fn is_ignored(&self, p: &Path) -> bool {
        self.ignored.iter().any(|i| p.starts_with(i))
    }

    /// Watches `root` and every directory below it (symbolic links are not followed). A
    /// non-directory root is watched through its parent directory (not recursively), so a file
    /// replaced by a rename is still seen.
    pub fn watch_tree(&mut self, root: &Path) -> Result<(), WatchError> {
        let meta = std::fs::symlink_metadata(root).map_err(WatchError::Io)?;
        let meta = if meta.file_type().is_symlink() {
            std::fs::metadata(root).map_err(WatchError::Io)?
        } else {
            meta
        };
        if !self.roots.iter().any(|r| r == root) {
            self.roots.push(root.to_path_buf());
        }
        if !meta.is_dir() {
            let parent = match root.parent() {
                Some(p) if !p.as_os_str().is_empty() => p,
                _ => Path::new("."),
            };
            let name = root.file_name().map(|n| n.as_bytes().to_vec());
            let before = self.dirs.len();
            let wd = self.add_watch(parent, true)?;
            // A directory already watched as part of a tree reports everything anyway.
            let tree_dir = self.dirs.len() == before && !self.file_parents.contains_key(&wd);
            if !tree_dir {
                let names = self.file_parents.entry(wd).or_default();
                names.extend(name);
            }
            return Ok(());
        }
        self.add_subtree(root, true)
    }

    /// Watches `dir` and (streaming, depth first) every directory below it. Directories that
    /// vanish meanwhile are skipped; only the limit and errors on `dir` itself (when `strict`)
    /// are returned.
    fn add_subtree(&mut self, dir: &Path, strict: bool) -> Result<(), WatchError> {
        let mut stack = vec![dir.to_path_buf()];
        let mut first = true;
        while let Some(d) = stack.pop() {
            if self.is_ignored(&d) {
                first = false;
                continue;
            }
            // A root given as a symbolic link to a directory is followed; nothing below is.
            match self.add_watch(&d, first && strict) {
                Ok(wd) => {
                    self.file_parents.remove(&wd);
                }
                Err(WatchError::Io(e)) if !(first && strict) => {
                    let _ = e;
                    first = false;
                    continue;
                }
                Err(e) => return Err(e),
            }
            first = false;
            let Ok(rd) = std::fs::read_dir(&d) else {
                continue;
            };
            for entry in rd.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(entry.path());
                }
            }
        }
        Ok(())
    }

    fn add_watch(&mut self, dir: &Path, follow: bool) -> Result<i32, WatchError> {
        let at_cap = self.max_watches.is_some_and(|m| self.dirs.len() >= m);
        if at_cap && !self.dirs.values().any(|p| p == dir) {
            self.limit_hit = true;
            return Err(WatchError::Limit {
                watched: self.dirs.len(),
            });
        }
        let c = CString::new(dir.as_os_str().as_bytes())
            .map_err(|e| WatchError::Io(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
        let mask = if follow {
            WATCH_MASK & !libc::IN_DONT_FOLLOW
        } else {
            WATCH_MASK
        };
        // SAFETY: `c` is a valid NUL-terminated path that outlives the call; the descriptor is
        // our open inotify instance.
        let wd = unsafe { libc::inotify_add_watch(self.fd.as_raw_fd(), c.as_ptr(), mask) };
        if wd < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENOSPC) || e.raw_os_error() == Some(libc::ENOMEM) {
                self.limit_hit = true;
                return Err(WatchError::Limit {
                    watched: self.dirs.len(),
                });
            }
            return Err(WatchError::Io(e));
        }
        // The same inode watched again (e.g. a directory moved back) keeps its descriptor.
        self.dirs.insert(wd, dir.to_path_buf());
        Ok(wd)
    }

    /// Stops watching `dir` and everything below it (it was moved away).
    fn forget_subtree(&mut self, dir: &Path) {
        let gone: Vec<i32> = self
            .dirs
            .iter()
            .filter(|(_, p)| p.starts_with(dir))
            .map(|(wd, _)| *wd)
            .collect();
        for wd in gone {
            self.dirs.remove(&wd);
            // SAFETY: plain integer arguments; a stale descriptor only yields EINVAL.
            unsafe { libc::inotify_rm_watch(self.fd.as_raw_fd(), wd) };
        }
    }

    /// Waits up to `timeout` (`None`: forever) for events and returns the changes they mean,
    /// in order (possibly none: the wait timed out or only ignored events arrived; at most
    /// 64 buffers of events per call). New directories are watched before this returns.
    pub fn read_changes(&mut self, timeout: Option<Duration>) -> io::Result<Vec<Change>> {
        let ms = match timeout {
            None => -1,
            Some(t) => i32::try_from(t.as_millis()).unwrap_or(i32::MAX),
        };
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: `pfd` is a valid pollfd array of length 1 for the duration of the call.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                return Ok(Vec::new());
            }
            return Err(e);
        }
        let mut changes = Vec::new();
        if n == 0 {
            return Ok(changes);
        }
        // Bounded, so that a flood of events cannot keep this call from returning.
        for _ in 0..64 {
            // SAFETY: `buf` is a writable buffer of `buf.len()` bytes owned by self for the
            // duration of the call.
            let got = unsafe {
                libc::read(
                    self.fd.as_raw_fd(),
                    self.buf.as_mut_ptr().cast(),
                    self.buf.len(),
                )
            };
            if got < 0 {
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::WouldBlock => break,
                    io::ErrorKind::Interrupted => continue,
                    _ => return Err(e),
                }
            }
            let got = got as usize;
            if got == 0 {
                break;
            }
            let raw: Vec<RawEvent> = parse_events(&self.buf[..got]);
            for ev in raw {
                self.handle(ev, &mut changes);
            }
        }
        Ok(changes)
    }

    fn handle(&mut self, ev: RawEvent, out: &mut Vec<Change>) {
        if ev.mask & libc::IN_Q_OVERFLOW != 0 {
            out.push(Change::Everything);
            return;
        }
        let Some(dir) = self.dirs.get(&ev.wd).cloned() else {
            return;
        };
        if let Some(names) = self.file_parents.get(&ev.wd) {
            // Watched for file roots only: other entries of the directory do not count.
            if ev.mask & libc::IN_Q_OVERFLOW == 0 && !names.contains(&ev.name) {
                if ev.mask & libc::IN_IGNORED != 0 {
                    self.dirs.remove(&ev.wd);
                    self.file_parents.remove(&ev.wd);
                }
                return;
            }
        }
        if ev.mask & libc::IN_IGNORED != 0 {
            // The directory is gone (deleted, or its filesystem unmounted).
            self.dirs.remove(&ev.wd);
            if self.roots.contains(&dir) {
                out.push(Change::Everything);
            }
            return;
        }
        if ev.mask & (libc::IN_DELETE_SELF | libc::IN_MOVE_SELF) != 0 {
            if self.roots.contains(&dir) {
                out.push(Change::Everything);
            }
            // The parent's watch reports the entry's removal or rename.
            return;
        }
        let path = if ev.name.is_empty() {
            dir.clone()
        } else {
            dir.join(OsStr::from_bytes(&ev.name))
        };
        if self.is_ignored(&path) {
            return;
        }
        let is_dir = ev.mask & libc::IN_ISDIR != 0;
        if is_dir && ev.mask & libc::IN_MOVED_FROM != 0 {
            self.forget_subtree(&path);
        }
        if is_dir && ev.mask & (libc::IN_CREATE | libc::IN_MOVED_TO) != 0 {
            // Watch it (and whatever is already inside) now; entries made before the watch
            // existed produced no events, so the whole subtree must be looked at.
            match self.add_subtree(&path, false) {
                Ok(()) => out.push(Change::Rescan(path)),
                Err(_) => out.push(Change::Everything),
            }
            out.push(Change::Dir(dir));
            return;
        }
        out.push(Change::Dir(dir));
    }

    /// Walks every root again and watches each directory not watched yet (and records the
    /// current path of those that are): call after a [`Change::Everything`] (events were
    /// lost, so directories made meanwhile have no watch; a root deleted and created again
    /// has none either). Costs one `inotify_add_watch` per directory.
    pub fn rewatch_all(&mut self) -> Result<(), WatchError> {
        let roots = self.roots.clone();
        let mut result = Ok(());
        for r in roots {
            let is_dir = std::fs::metadata(&r).is_ok_and(|m| m.is_dir());
            if !is_dir {
                continue;
            }
            if let Err(e) = self.add_subtree(&r, true) {
                if matches!(e, WatchError::Limit { .. }) {
                    return Err(e);
                }
                result = Err(e);
            }
        }
        result
    }
}

/// One decoded `struct inotify_event`.
struct RawEvent {
    wd: i32,
    mask: u32,
    name: Vec<u8>,
}

/// Decodes the events in a buffer filled by `read` (the name is NUL padded).
fn parse_events(mut b: &[u8]) -> Vec<RawEvent> {
    let mut v = Vec::new();
    while b.len() >= EVENT_HEADER {
        let word = |i: usize| [b[i], b[i + 1], b[i + 2], b[i + 3]];
        let wd = i32::from_ne_bytes(word(0));
        let mask = u32::from_ne_bytes(word(4));
        let len = u32::from_ne_bytes(word(12)) as usize;
        let end = (EVENT_HEADER + len).min(b.len());
        let raw_name = &b[EVENT_HEADER..end];
        let name_len = raw_name
            .iter()
            .position(|c| *c == 0)
            .unwrap_or(raw_name.len());
        v.push(RawEvent {
            wd,
            mask,
            name: raw_name[..name_len].to_vec(),
        });
        b = &b[end..];
    }
    v
}

/// A batch of settled changes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    /// Directories with a changed entry.
    pub dirs: BTreeSet<PathBuf>,
    /// Directories whose whole subtree must be looked at.
    pub trees: BTreeSet<PathBuf>,
    /// Everything must be looked at.
    pub everything: bool,
}

/// Collects changes until they settle.
#[derive(Debug)]
pub struct Debouncer {
    delay: Duration,
    max_delay: Duration,
    first: Option<Instant>,
    last: Option<Instant>,
    batch: Batch,
}

impl Debouncer {
    /// A debouncer whose batches are ready `delay` after the last change, or at the latest
    /// ten delays (at least one second) after the first.
    pub fn new(delay: Duration) -> Debouncer {
        Debouncer {
            delay,
            max_delay: (delay * 10).max(Duration::from_secs(1)),
            first: None,
            last: None,
            batch: Batch::default(),
        }
    }

    /// Adds a change seen at `now`.
    pub fn add(&mut self, c: Change, now: Instant) {
        self.first.get_or_insert(now);
        self.last = Some(now);
        match c {
            Change::Dir(d) => {
                self.batch.dirs.insert(d);
            }
            Change::Rescan(d) => {
                self.batch.trees.insert(d);
            }
            Change::Everything => self.batch.everything = true,
        }
    }

    /// Marks everything as changed at `now` (e.g. a periodic full re-sync is due).
    pub fn add_everything(&mut self, now: Instant) {
        self.add(Change::Everything, now);
    }

    /// True when changes are waiting.
    pub fn pending(&self) -> bool {
        self.first.is_some()
    }

    /// When the pending batch becomes ready, if any is pending.
    pub fn deadline(&self) -> Option<Instant> {
        let (first, last) = (self.first?, self.last?);
        Some((last + self.delay).min(first + self.max_delay))
    }

    /// The batch, if its deadline has passed at `now`; the debouncer is then empty.
    pub fn take_ready(&mut self, now: Instant) -> Option<Batch> {
        if self.deadline()? > now {
            return None;
        }
        self.first = None;
        self.last = None;
        Some(std::mem::take(&mut self.batch))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn burst_gives_one_batch_after_it_settles() {
        let t0 = Instant::now();
        let mut d = Debouncer::new(200 * MS);
        assert!(d.take_ready(t0).is_none());
        assert!(!d.pending());
        // Twenty writes 10 ms apart: nothing is ready during the burst.
        for i in 0..20u32 {
            let now = t0 + 10 * MS * i;
            d.add(Change::Dir(PathBuf::from("/s/a")), now);
            assert!(d.take_ready(now).is_none(), "ready during the burst at {i}");
        }
        let last = t0 + 190 * MS;
        assert_eq!(d.deadline(), Some(last + 200 * MS));
        assert!(d.take_ready(last + 199 * MS).is_none());
        let b = d.take_ready(last + 200 * MS);
        let b = b.unwrap_or_default();
        assert_eq!(b.dirs.len(), 1);
        assert!(!b.everything);
        // Empty again.
        assert!(!d.pending());
        assert!(d.take_ready(last + 10_000 * MS).is_none());
    }

    #[test]
    fn never_settling_changes_are_batched_at_the_maximum_delay() {
        let t0 = Instant::now();
        let mut d = Debouncer::new(100 * MS);
        let mut ready_at = None;
        for i in 0..300u32 {
            let now = t0 + 50 * MS * i;
            if d.take_ready(now).is_some() {
                ready_at = Some(now);
                break;
            }
            d.add(Change::Dir(PathBuf::from("/s")), now);
        }
        // Max delay: 10 x 100 ms but at least 1 s after the first change.
        assert_eq!(ready_at, Some(t0 + 1000 * MS));
    }

    #[test]
    fn kinds_are_merged() {
        let t0 = Instant::now();
        let mut d = Debouncer::new(10 * MS);
        d.add(Change::Dir(PathBuf::from("/s/a")), t0);
        d.add(Change::Dir(PathBuf::from("/s/a")), t0);
        d.add(Change::Rescan(PathBuf::from("/s/new")), t0);
        d.add(Change::Everything, t0);
        let b = d.take_ready(t0 + 10 * MS).unwrap_or_default();
        assert_eq!(b.dirs.len(), 1);
        assert_eq!(b.trees.len(), 1);
        assert!(b.everything);
    }

    /// Changes until `until` holds, at most 5 s.
    fn collect(w: &mut TreeWatcher, until: impl Fn(&[Change]) -> bool) -> Vec<Change> {
        collect_for(w, 5000 * MS, until)
    }

    /// Every change within 300 ms.
    fn settle(w: &mut TreeWatcher) -> Vec<Change> {
        collect_for(w, 300 * MS, |_| false)
    }

    fn collect_for(
        w: &mut TreeWatcher,
        limit: Duration,
        until: impl Fn(&[Change]) -> bool,
    ) -> Vec<Change> {
        let mut all = Vec::new();
        let end = Instant::now() + limit;
        while Instant::now() < end && !until(&all) {
            match w.read_changes(Some(50 * MS)) {
                Ok(c) => all.extend(c),
                Err(e) => panic!("read_changes: {e}"),
            }
        }
        all
    }

    #[test]
    fn watcher_sees_files_new_directories_and_moves() -> io::Result<()> {
        let t = tempfile::tempdir()?;
        let root = t.path().join("src");
        std::fs::create_dir_all(root.join("a/b"))?;
        let mut w = TreeWatcher::new()?;
        w.watch_tree(&root)?;
        assert_eq!(w.watched(), 3);
        // Nothing happened yet: a wait times out empty.
        assert!(w.read_changes(Some(20 * MS))?.is_empty());

        std::fs::write(root.join("a/b/f"), b"x")?;
        let c = collect(&mut w, |c| c.contains(&Change::Dir(root.join("a/b"))));
        assert!(c.contains(&Change::Dir(root.join("a/b"))), "{c:?}");

        // A new directory is watched, reported for a rescan, and its own changes are seen.
        std::fs::create_dir(root.join("n"))?;
        let c = collect(&mut w, |c| c.contains(&Change::Rescan(root.join("n"))));
        assert!(c.contains(&Change::Rescan(root.join("n"))), "{c:?}");
        assert_eq!(w.watched(), 4);
        std::fs::write(root.join("n/g"), b"y")?;
        let c = collect(&mut w, |c| c.contains(&Change::Dir(root.join("n"))));
        assert!(c.contains(&Change::Dir(root.join("n"))), "{c:?}");

        // A directory moved within the tree is watched under its new name.
        std::fs::rename(root.join("a"), root.join("m"))?;
        let c = collect(&mut w, |c| c.contains(&Change::Rescan(root.join("m"))));
        assert!(c.contains(&Change::Rescan(root.join("m"))), "{c:?}");
        std::fs::write(root.join("m/b/h"), b"z")?;
        let c = collect(&mut w, |c| c.contains(&Change::Dir(root.join("m/b"))));
        assert!(c.contains(&Change::Dir(root.join("m/b"))), "{c:?}");
        assert!(!c.iter().any(|x| *x == Change::Dir(root.join("a/b"))));

        // Removing a directory drops its watch.
        std::fs::remove_dir_all(root.join("n"))?;
        let c = settle(&mut w);
        assert!(c.contains(&Change::Dir(root.clone())), "{c:?}");
        assert_eq!(w.watched(), 3);

        // Removing the root asks for everything.
        std::fs::remove_dir_all(&root)?;
        let c = collect(&mut w, |c| c.contains(&Change::Everything));
        assert!(c.contains(&Change::Everything), "{c:?}");
        assert_eq!(w.watched(), 0);
        // Re-created (with a subdirectory made while unwatched), it is watched again.
        std::fs::create_dir_all(root.join("later"))?;
        w.rewatch_all()?;
        assert_eq!(w.watched(), 2);
        std::fs::write(root.join("later/f"), b"f")?;
        let c = collect(&mut w, |c| c.contains(&Change::Dir(root.join("later"))));
        assert!(c.contains(&Change::Dir(root.join("later"))), "{c:?}");
        Ok(())
    }

    #[test]
    fn ignored_paths_and_file_roots() -> io::Result<()> {
        let t = tempfile::tempdir()?;
        let root = t.path().join("src");
        std::fs::create_dir_all(root.join("skip"))?;
        std::fs::write(root.join("file"), b"1")?;
        let mut w = TreeWatcher::new()?;
        w.ignore(&root.join("skip"));
        w.watch_tree(&root)?;
        assert_eq!(w.watched(), 1);
        std::fs::write(root.join("skip/x"), b"x")?;
        assert!(settle(&mut w).is_empty());

        // A file root is watched through its parent, for its own name only.
        let mut w = TreeWatcher::new()?;
        w.watch_tree(&root.join("file"))?;
        std::fs::write(root.join("other"), b"o")?;
        assert!(settle(&mut w).is_empty());
        std::fs::write(root.join("file"), b"2")?;
        let c = collect(&mut w, |c| !c.is_empty());
        assert!(c.contains(&Change::Dir(root.clone())), "{c:?}");
        // Replaced by a rename, it is still seen.
        std::fs::write(root.join("file.new"), b"3")?;
        std::fs::rename(root.join("file.new"), root.join("file"))?;
        let c = collect(&mut w, |c| !c.is_empty());
        assert!(c.contains(&Change::Dir(root.clone())), "{c:?}");
        // Once the directory is also watched as a tree, every entry counts.
        w.watch_tree(&root)?;
        std::fs::write(root.join("other"), b"p")?;
        let c = collect(&mut w, |c| !c.is_empty());
        assert!(c.contains(&Change::Dir(root.clone())), "{c:?}");

        // A missing root is an error.
        let mut w = TreeWatcher::new()?;
        assert!(matches!(
            w.watch_tree(&root.join("missing")),
            Err(WatchError::Io(_))
        ));
        Ok(())
    }

    #[test]
    fn a_watch_cap_acts_as_the_kernel_limit() -> io::Result<()> {
        let t = tempfile::tempdir()?;
        let root = t.path().join("src");
        for d in ["a/b", "c"] {
            std::fs::create_dir_all(root.join(d))?;
        }
        let mut w = TreeWatcher::new()?;
        w.set_max_watches(Some(2));
        assert!(matches!(
            w.watch_tree(&root),
            Err(WatchError::Limit { watched: 2 })
        ));
        assert!(w.take_limit_hit());
        assert!(!w.take_limit_hit());
        assert_eq!(w.watched(), 2);
        // Walking again re-adds the watched ones and fails again on the first new one.
        assert!(matches!(w.rewatch_all(), Err(WatchError::Limit { .. })));
        assert_eq!(w.watched(), 2);
        let msg = WatchError::Limit { watched: 2 }.to_string();
        assert!(msg.contains("max_user_watches"), "{msg}");
        Ok(())
    }

    #[test]
    fn parse_handles_padding_and_truncation() {
        let mut b = Vec::new();
        for (wd, mask, name) in [(1i32, 2u32, &b"ab"[..]), (3, 4, b"")] {
            b.extend_from_slice(&wd.to_ne_bytes());
            b.extend_from_slice(&mask.to_ne_bytes());
            b.extend_from_slice(&0u32.to_ne_bytes());
            let padded = if name.is_empty() { 0 } else { 16 };
            b.extend_from_slice(&(padded as u32).to_ne_bytes());
            let mut n = name.to_vec();
            n.resize(padded, 0);
            b.extend_from_slice(&n);
        }
        let v = parse_events(&b);
        assert_eq!(v.len(), 2);
        assert_eq!(
            (v[0].wd, v[0].mask, v[0].name.as_slice()),
            (1, 2, &b"ab"[..])
        );
        assert_eq!((v[1].wd, v[1].mask, v[1].name.len()), (3, 4, 0));
        // A truncated buffer does not panic.
        assert!(parse_events(&b[..20]).len() == 1);
    }
}
