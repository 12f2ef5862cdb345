//! Copying the data of large files: in-kernel copies, cheap `-S` (sparse) handling, and
//! splitting one file into ranges that several workers copy at once.
//!
//! How a file's bytes are copied (`copy`):
//! - `--bwlimit` (paced): positional reads and writes, one range, so pacing sees every chunk.
//! - Small `-S` files (up to [`fsops::SMALL_SPARSE`]): one read, one write per run of data
//!   blocks ([`fsops::copy_sparse`]).
//! - Otherwise a reflink (`FICLONE`) where the filesystem shares extents; failing that the
//!   file is cut into ranges of [`RANGE`] bytes copied with `copy_file_range` (read/write
//!   where that is refused). With `-S` only the data extents (`SEEK_DATA`/`SEEK_HOLE`) are
//!   copied (`SEEK_DATA` every [`SEEK_STEP`] bytes; never `SEEK_HOLE`, which on tmpfs walks
//!   the page cache to the next hole), and each copied chunk is then looked at through a
//!   read-only mapping of the *destination* (the page cache the copy just filled, so no
//!   second copy of the bytes; `MADV_SEQUENTIAL` so unmapping does not touch the page LRU)
//!   and its all-zero 4 KiB blocks are punched out (`FALLOC_FL_PUNCH_HOLE`). That keeps
//!   rsync's `-S` meaning (runs of zeros become holes) at 15-25% more CPU than a plain
//!   in-kernel copy (mapping and unmapping each page; a block of real data is usually told
//!   apart from zeros by its first 64 bytes). A zero run reaching the end of the file takes
//!   its partial last block too, as rsync's final truncate does. If the source ends early
//!   (it shrank while copied), the copy ends there, with or without `-S`.
//!
//! One writer per file: a file is copied by the worker that met it (the owner), range after
//! range. A second thread writing the same file would only wait for its inode lock (tmpfs,
//! ext4, XFS and FUSE all serialise buffered writes on it), and wait spinning while the owner
//! copies; so whole files go to workers, each copying its own. With `-S`, what does not need
//! that lock is shared: the owner queues each chunk it copied, and an idle worker (from
//! [`Helpers`]) scans it for zero blocks while the owner copies the next one; when no helper
//! keeps up, the owner scans the chunk itself. Helpers go back to their job queue between
//! chunks, so small files always come first. The owner returns once every scan is done; the
//! caller then applies metadata and renames (commits) the file. The first error of the copy
//! or of any scan fails the whole file.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, TryRecvError};
use rustix::fs::SeekFrom;

use crate::fsops::{self, StopCheck};

mod zeros;

/// Bytes per range of a large file (with `-S`, `SEEK_DATA` starts afresh at each).
pub const RANGE: u64 = 64 << 20;
/// Largest single `copy_file_range` call (stop checks happen between calls).
const CHUNK: u64 = 8 << 20;
/// With `-S`, bytes copied after each `SEEK_DATA` before asking again: holes shorter than
/// this inside data are read as zeros and skipped like any zero block. `SEEK_HOLE` is not
/// used: on tmpfs it walks the page cache up to the next hole, the end of a dense file, so
/// one call per range cost more than the copy.
const SEEK_STEP: u64 = 8 << 20;
/// Buffer size when copied data must be read back to find its zero blocks.
const READ_BACK: u64 = 256 << 10;

/// How to copy a file's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Method {
    /// `-S`: keep holes and turn zero blocks into holes.
    pub sparse: bool,
    /// Paced (`--bwlimit`): plain reads and writes, never split.
    pub plain: bool,
}

/// Large files currently open for help, shared by the engine's workers.
pub struct Helpers {
    tx: Sender<Weak<BigFile>>,
    rx: Receiver<Weak<BigFile>>,
    /// Workers exist that pick up tickets (otherwise owners scan every chunk themselves).
    enabled: AtomicBool,
    /// Workers busy with a batch of jobs (they may still start a big file).
    busy: AtomicUsize,
}

impl Default for Helpers {
    fn default() -> Self {
        let (tx, rx) = crossbeam_channel::unbounded();
        Helpers {
            tx,
            rx,
            enabled: AtomicBool::new(false),
            busy: AtomicUsize::new(0),
        }
    }
}

impl Helpers {
    /// A worker thread's loop: runs job batches from `jobs` (first, so small files and whole
    /// large files never wait behind help) and helps with the `-S` scans of large files other
    /// workers copy when no batch is waiting. Returns once `jobs` is closed and nothing is left
    /// to help with.
    pub fn worker_loop<T>(&self, jobs: &Receiver<T>, mut run: impl FnMut(T)) {
        while let Some(batch) = self.next_job(jobs) {
            run(batch);
            self.idle();
        }
    }

    /// Waits for the next batch of `jobs`, helping with large files meanwhile. Returns `None`
    /// once `jobs` is closed and no worker can still start a large file; after `Some`, the
    /// caller counts as busy until it calls [`Helpers::idle`].
    pub fn next_job<T>(&self, jobs: &Receiver<T>) -> Option<T> {
        self.enabled.store(true, Ordering::Relaxed);
        let mut closed = false;
        loop {
            if !closed {
                match jobs.try_recv() {
                    Ok(batch) => return Some(self.busy(batch)),
                    Err(TryRecvError::Disconnected) => closed = true,
                    Err(TryRecvError::Empty) => {}
                }
            }
            if let Ok(ticket) = self.rx.try_recv() {
                self.help(ticket);
                continue;
            }
            if closed {
                // Other workers may still start a large file from their last batch.
                if self.busy.load(Ordering::Acquire) == 0 && self.rx.is_empty() {
                    return None;
                }
                if let Ok(ticket) = self.rx.recv_timeout(Duration::from_millis(5)) {
                    self.help(ticket);
                }
                continue;
            }
            crossbeam_channel::select! {
                recv(jobs) -> batch => match batch {
                    Ok(batch) => return Some(self.busy(batch)),
                    Err(_) => closed = true,
                },
                recv(self.rx) -> ticket => {
                    if let Ok(ticket) = ticket {
                        self.help(ticket);
                    }
                }
            }
        }
    }

    fn busy<T>(&self, batch: T) -> T {
        self.busy.fetch_add(1, Ordering::AcqRel);
        batch
    }

    /// The caller of [`Helpers::next_job`] has finished everything it took.
    pub fn idle(&self) {
        self.busy.fetch_sub(1, Ordering::AcqRel);
    }

    /// Scans one chunk of the ticket's file, passing the ticket on first if more wait.
    fn help(&self, ticket: Weak<BigFile>) {
        let Some(file) = ticket.upgrade() else {
            return;
        };
        let Some((chunk, more)) = file.take_scan() else {
            return;
        };
        if more {
            let _ = self.tx.send(ticket);
        }
        file.scan(chunk);
    }

    fn post(&self, file: &Arc<BigFile>) {
        let _ = self.tx.send(Arc::downgrade(file));
    }

    fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }
}

/// One large file being copied. Only its owner (the worker that met it) writes its data:
/// writes into one file take its inode lock on tmpfs, ext4, XFS and FUSE alike, so a second
/// writer only waits, spinning on the lock while the owner copies (`rwsem_spin_on_owner`
/// measured 8% of a one-file run). With `-S` the zero-block scans of chunks already copied
/// take no lock and are what an idle worker helps with.
struct BigFile {
    src: File,
    dst: File,
    len: u64,
    range: u64,
    sparse: bool,
    abort: AtomicBool,
    /// The lowest offset where the source ended early (it shrank while copying).
    short_end: AtomicU64,
    state: Mutex<ScanState>,
    done_cv: Condvar,
}

/// Chunks copied but not yet scanned for zero blocks (`-S`), and the first error.
#[derive(Default)]
struct ScanState {
    waiting: VecDeque<(u64, u64)>,
    /// Scans running on helpers.
    running: usize,
    /// A ticket for this file is in the helpers' queue.
    posted: bool,
    error: Option<io::Error>,
}

impl BigFile {
    fn new(src: &File, dst: &File, len: u64, range: u64, sparse: bool) -> io::Result<Arc<Self>> {
        Ok(Arc::new(BigFile {
            src: src.try_clone()?,
            dst: dst.try_clone()?,
            len,
            range,
            sparse,
            abort: AtomicBool::new(false),
            short_end: AtomicU64::new(u64::MAX),
            state: Mutex::new(ScanState::default()),
            done_cv: Condvar::new(),
        }))
    }

    /// Queues a copied chunk for its scan and hands the caller (the owner) the oldest chunk
    /// to scan itself when helpers are behind (or absent): at most one chunk waits, so the
    /// owner copies while a helper scans the chunk before.
    fn queue_scan(self: &Arc<Self>, helpers: Option<&Helpers>, chunk: (u64, u64)) {
        // A file of one range is scanned by its owner alone: a hand-off per file would cost
        // more than it saves.
        let shared = self.len > self.range;
        let helpers = helpers.filter(|h| shared && h.enabled());
        let mine = {
            let Ok(mut st) = self.state.lock() else {
                self.abort.store(true, Ordering::Relaxed);
                return;
            };
            st.waiting.push_back(chunk);
            if let Some(h) = helpers {
                if !st.posted {
                    st.posted = true;
                    h.post(self);
                }
            }
            let keep = usize::from(helpers.is_some());
            if st.waiting.len() > keep {
                st.waiting.pop_front()
            } else {
                None
            }
        };
        if let Some(c) = mine {
            self.scan_or_fail(c);
        }
    }

    /// A helper takes the oldest waiting chunk; `more` if others still wait (then the ticket
    /// stays posted).
    fn take_scan(&self) -> Option<((u64, u64), bool)> {
        let mut st = self.state.lock().ok()?;
        let chunk = st.waiting.pop_front();
        let more = !st.waiting.is_empty();
        st.posted = more;
        if chunk.is_some() {
            st.running += 1;
        }
        chunk.map(|c| (c, more))
    }

    /// A helper's scan of a chunk it took with [`BigFile::take_scan`].
    fn scan(&self, (start, end): (u64, u64)) {
        let result = if self.abort.load(Ordering::Relaxed) {
            Ok(())
        } else {
            punch_zero_blocks(&self.dst, start, end, self.len)
        };
        let Ok(mut st) = self.state.lock() else {
            self.abort.store(true, Ordering::Relaxed);
            return;
        };
        st.running -= 1;
        if let Err(e) = result {
            self.fail(&mut st, e);
        }
        drop(st);
        self.done_cv.notify_all();
    }

    /// The owner's scan of a chunk.
    fn scan_or_fail(&self, (start, end): (u64, u64)) {
        if self.abort.load(Ordering::Relaxed) {
            return;
        }
        if let Err(e) = punch_zero_blocks(&self.dst, start, end, self.len) {
            if let Ok(mut st) = self.state.lock() {
                self.fail(&mut st, e);
            } else {
                self.abort.store(true, Ordering::Relaxed);
            }
        }
    }

    fn fail(&self, st: &mut ScanState, e: io::Error) {
        self.abort.store(true, Ordering::Relaxed);
        if st.error.is_none() {
            st.error = Some(e);
        }
    }

    /// Scans what still waits and waits for the helpers' scans; then the first error.
    fn finish_scans(&self, stop: StopCheck) -> io::Result<()> {
        let poisoned = || io::Error::other("scan state poisoned");
        let mut st = self.state.lock().map_err(|_| poisoned())?;
        loop {
            if let Some(c) = st.waiting.pop_front() {
                drop(st);
                self.scan_or_fail(c);
                st = self.state.lock().map_err(|_| poisoned())?;
                continue;
            }
            if st.running == 0 {
                break;
            }
            let (next, _) = self
                .done_cv
                .wait_timeout(st, Duration::from_millis(50))
                .map_err(|_| poisoned())?;
            st = next;
            if stop(0) {
                self.abort.store(true, Ordering::Relaxed);
            }
        }
        match st.error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// Copies `len` bytes of `src` into the empty file `dst` (see the module documentation).
/// With `-S`, idle workers of `helpers` may scan chunks already copied; this returns once
/// all are done. Returns the bytes copied (data bytes only with `-S`).
pub fn copy(
    helpers: Option<&Helpers>,
    src: &File,
    src_dev: u64,
    dst: &File,
    len: u64,
    how: Method,
    stop: StopCheck,
) -> io::Result<u64> {
    copy_in_ranges(helpers, src, src_dev, dst, len, how, RANGE, stop)
}

/// [`copy`] with ranges of `range` bytes (each asks `SEEK_DATA` afresh with `-S`).
#[allow(clippy::too_many_arguments)]
fn copy_in_ranges(
    helpers: Option<&Helpers>,
    src: &File,
    src_dev: u64,
    dst: &File,
    len: u64,
    how: Method,
    range: u64,
    stop: StopCheck,
) -> io::Result<u64> {
    if how.plain {
        return if how.sparse {
            fsops::copy_sparse(src, dst, len, stop)
        } else {
            fsops::copy_read_write(src, dst, 0, len, false, stop)
        };
    }
    if how.sparse && len <= fsops::SMALL_SPARSE {
        return fsops::copy_sparse(src, dst, len, stop);
    }
    if len > 0 && fsops::try_reflink(src, src_dev, dst)? {
        // Holes of the source stay holes; zero blocks inside shared extents use no new space,
        // so they are not looked for (that would read the whole file).
        if stop(len) {
            return Err(fsops::interrupted());
        }
        return Ok(len);
    }
    if how.sparse {
        // The mapping used to find zero blocks must lie inside the file.
        fsops::set_len(dst, len)?;
    }
    let file = BigFile::new(src, dst, len, range, how.sparse)?;
    let copied = file.copy_all(helpers, stop);
    if copied.is_err() {
        file.abort.store(true, Ordering::Relaxed);
    }
    // Helpers may still be scanning: wait for them, whatever happened (the caller may
    // truncate or remove the file next). A scan's error comes first: it is what stopped the
    // copy, if anything did.
    file.finish_scans(stop)?;
    let copied = copied?;
    if file.abort.load(Ordering::Relaxed) {
        return Err(fsops::interrupted());
    }
    let mut short = file.short_end.load(Ordering::Relaxed);
    if how.sparse {
        // `SEEK_DATA` past the end reads as "no more data": ask where the source ends now.
        short = short.min(fsops::fstat(src)?.size);
    }
    if short < len {
        // The source shrank while copying: the copy ends where it ended (with `-S` too, where
        // the destination was given its listed length first), not in a tail of zeros.
        fsops::set_len(dst, short)?;
    }
    Ok(copied)
}

impl BigFile {
    /// The owner's copy of every range, in order; `-S` scans go through [`BigFile::queue_scan`].
    fn copy_all(self: &Arc<Self>, helpers: Option<&Helpers>, stop: StopCheck) -> io::Result<u64> {
        let check = |n: u64| stop(n) || self.abort.load(Ordering::Relaxed);
        let scan = |chunk: (u64, u64)| self.queue_scan(helpers, chunk);
        let mut copied = 0;
        let mut start = 0;
        while start < self.len {
            let end = (start + self.range).min(self.len);
            let (n, eof) =
                copy_range(&self.src, &self.dst, start, end, self.sparse, &scan, &check)?;
            copied += n;
            if let Some(at) = eof {
                self.short_end.fetch_min(at, Ordering::Relaxed);
                break;
            }
            start = end;
        }
        Ok(copied)
    }
}

/// Copies `[start, end)`. Returns the bytes copied and, if the source ended inside the
/// range, where.
fn copy_range(
    src: &File,
    dst: &File,
    start: u64,
    end: u64,
    sparse: bool,
    scan: &dyn Fn((u64, u64)),
    stop: StopCheck,
) -> io::Result<(u64, Option<u64>)> {
    if !sparse {
        return copy_extent(src, dst, start, end, None, stop);
    }
    let mut pos = start;
    let mut copied = 0;
    while pos < end {
        let data = match rustix::fs::seek(src, SeekFrom::Data(pos)) {
            Ok(d) => d,
            Err(rustix::io::Errno::NXIO) => break,
            Err(rustix::io::Errno::INVAL | rustix::io::Errno::OPNOTSUPP) => pos,
            Err(e) => return Err(e.into()),
        };
        if data >= end {
            break;
        }
        let step_end = (data + SEEK_STEP).min(end);
        let (n, eof) = copy_extent(src, dst, data, step_end, Some(scan), stop)?;
        copied += n;
        if eof.is_some() {
            return Ok((copied, eof));
        }
        pos = step_end;
    }
    Ok((copied, None))
}

/// Copies the extent `[start, end)` with `copy_file_range` (read/write where refused); with
/// `scan` (`-S`), each copied chunk is handed to it, to have its zero blocks punched out.
fn copy_extent(
    src: &File,
    dst: &File,
    start: u64,
    end: u64,
    scan: Option<&dyn Fn((u64, u64))>,
    stop: StopCheck,
) -> io::Result<(u64, Option<u64>)> {
    let mut in_off = start;
    let mut out_off = start;
    while in_off < end {
        let chunk_start = in_off;
        let want = (end - in_off).min(CHUNK) as usize;
        match rustix::fs::copy_file_range(src, Some(&mut in_off), dst, Some(&mut out_off), want) {
            Ok(0) => return Ok((in_off - start, Some(in_off))),
            Ok(n) => {
                if let Some(scan) = scan {
                    scan((chunk_start, chunk_start + n as u64));
                }
                if stop(n as u64) {
                    return Err(fsops::interrupted());
                }
            }
            Err(
                rustix::io::Errno::XDEV
                | rustix::io::Errno::NOSYS
                | rustix::io::Errno::OPNOTSUPP
                | rustix::io::Errno::INVAL,
            ) if in_off == start => {
                let sparse = scan.is_some();
                let n = fsops::copy_read_write(src, dst, start, end - start, sparse, stop)?;
                let eof = (n < end - start).then_some(start + n);
                return Ok((n, eof));
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok((in_off - start, None))
}

/// Turns the all-zero 4 KiB blocks of `dst[start..end)` (just written, inside the file) into
/// holes. The bytes are read through a read-only shared mapping, so the check costs no copy
/// (where mapping is refused they are read back instead); a data block is usually told apart
/// by its first line. `file_end` is the destination's size (see [`punch`]).
fn punch_zero_blocks(dst: &File, start: u64, end: u64, file_end: u64) -> io::Result<()> {
    let page = rustix::param::page_size() as u64;
    let map_start = start / page * page;
    let map_len = (end - map_start) as usize;
    if map_len == 0 {
        return Ok(());
    }
    // SAFETY: a fresh read-only shared mapping of `map_len` bytes of `dst` at a page-aligned
    // offset; no Rust reference to that memory exists before this call. `dst` is this run's
    // own temporary file and `[start, end)` lies below its size (set before the copy), so the
    // pages exist; only another process truncating our temporary file meanwhile could make a
    // read fault (SIGBUS), the same exposure any mapping has.
    let mapped = unsafe {
        rustix::mm::mmap(
            std::ptr::null_mut(),
            map_len,
            rustix::mm::ProtFlags::READ,
            rustix::mm::MapFlags::SHARED,
            dst,
            map_start,
        )
    };
    let ptr = match mapped {
        Ok(ptr) => ptr,
        Err(rustix::io::Errno::NODEV | rustix::io::Errno::ACCESS | rustix::io::Errno::INVAL) => {
            return punch_zero_blocks_read_back(dst, start, end, file_end);
        }
        Err(e) => return Err(e.into()),
    };
    let map = Mapping { ptr, len: map_len };
    // Sequential access: besides read-ahead, it tells the kernel not to mark the pages as
    // recently used when the mapping goes away, which measured 5% of a tmpfs copy's time.
    // Not MADV_POPULATE_READ: fault-around maps 16 cached pages per fault, and populating up
    // front measured slower. Advice only: a refusal changes nothing.
    // SAFETY: advice on the mapping this function owns; no memory contents change.
    let _ = unsafe { rustix::mm::madvise(ptr, map_len, rustix::mm::Advice::Sequential) };
    let skip = (start - map_start) as usize;
    zeros::zero_runs(&map.bytes()[skip..], start, |from, to| {
        punch(dst, from, to, file_end)
    })
}

/// [`punch_zero_blocks`] for files that cannot be mapped: reads `dst[start..end)` back
/// through a small buffer.
fn punch_zero_blocks_read_back(dst: &File, start: u64, end: u64, file_end: u64) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; (end - start).min(READ_BACK) as usize];
    let mut pos = start;
    while pos < end {
        let want = (end - pos).min(buf.len() as u64) as usize;
        let n = match dst.read_at(&mut buf[..want], pos) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        zeros::zero_runs(&buf[..n], pos, |from, to| punch(dst, from, to, file_end))?;
        pos += n as u64;
    }
    Ok(())
}

/// `FALLOC_FL_PUNCH_HOLE`; filesystems that cannot punch keep the zeros (the data is right,
/// only less sparse). A run reaching `file_end` (the destination's size) takes the whole last
/// block: punching only its bytes would zero them but keep the block, where rsync -S leaves
/// a hole.
fn punch(dst: &File, from: u64, to: u64, file_end: u64) -> io::Result<()> {
    use rustix::fs::FallocateFlags;
    let to = if to == file_end {
        to.next_multiple_of(zeros::BLOCK)
    } else {
        to
    };
    match rustix::fs::fallocate(
        dst,
        FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
        from,
        to - from,
    ) {
        Ok(()) | Err(rustix::io::Errno::OPNOTSUPP) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// A read-only mapping, unmapped on drop.
struct Mapping {
    ptr: *mut std::ffi::c_void,
    len: usize,
}

impl Mapping {
    fn bytes(&self) -> &[u8] {
        // SAFETY: `ptr` is a live read-only mapping of `len` bytes (see `punch_zero_blocks`);
        // the slice borrows `self`, so it cannot outlive the unmap in `drop`.
        unsafe { std::slice::from_raw_parts(self.ptr.cast::<u8>(), self.len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping this value owns; no borrow of it is alive
        // (`bytes` borrows `self`).
        let _ = unsafe { rustix::mm::munmap(self.ptr, self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{FileExt, MetadataExt};
    use std::path::Path;

    fn scratch() -> tempfile::TempDir {
        let shm = Path::new("/dev/shm");
        if shm.is_dir() {
            tempfile::tempdir_in(shm).unwrap()
        } else {
            tempfile::tempdir().unwrap()
        }
    }

    /// A file with a hole, data, explicit zero blocks inside data, and a zero tail.
    fn sparse_source(path: &Path) -> Vec<u8> {
        let len = 6 << 20;
        let mut content = vec![0u8; len];
        // 1 MiB hole at the start, then 1 MiB of data with a zero block in its middle.
        for (i, b) in content[1 << 20..2 << 20].iter_mut().enumerate() {
            *b = (i % 253) as u8 | 1;
        }
        content[(1 << 20) + 8192..(1 << 20) + 12288].fill(0);
        // A block whose first bytes are zero but not the rest.
        content[(3 << 20) + 4000] = 5;
        // Zeros written explicitly (data extents, not holes) from 4 MiB to the end.
        let f = File::create(path).unwrap();
        f.set_len(len as u64).unwrap();
        f.write_all_at(&content[1 << 20..], 1 << 20).unwrap();
        content
    }

    fn no_stop(_: u64) -> bool {
        false
    }

    #[test]
    fn sparse_copy_punches_zero_blocks_and_keeps_holes() {
        let dir = scratch();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        let content = sparse_source(&a);
        let src = File::open(&a).unwrap();
        let dst = fsops::create_new(&b, 0o600).unwrap();
        let how = Method {
            sparse: true,
            plain: false,
        };
        let dev = src.metadata().unwrap().dev();
        copy_in_ranges(
            None,
            &src,
            dev,
            &dst,
            content.len() as u64,
            how,
            1 << 20,
            &no_stop,
        )
        .unwrap();
        assert_eq!(std::fs::read(&b).unwrap(), content);
        // Data: 1 MiB minus one zero block, plus the one block at 3 MiB + 4000.
        let blocks = std::fs::metadata(&b).unwrap().blocks() * 512;
        assert!(blocks <= (1 << 20) + 4096, "{blocks} bytes allocated");
        assert!(blocks >= (1 << 20) - 4096, "{blocks} bytes allocated");
    }

    /// The read-back search (for files that cannot be mapped) punches the same blocks as
    /// the mapping: zero blocks, not a block whose only data is its last byte.
    #[test]
    fn read_back_punches_zero_blocks() {
        let dir = scratch();
        let path = dir.path().join("d");
        let mut content = vec![9u8; (READ_BACK as usize) * 2 + 3 * 4096];
        // Zero blocks straddling the first buffer boundary, a block with data in its last
        // byte only, and a zero tail.
        let b = READ_BACK as usize;
        content[b - 8192..b + 4096].fill(0);
        content[b + 8192..b + 12288].fill(0);
        content[b + 12287] = 1;
        let len = content.len();
        content[len - 4096..].fill(0);
        std::fs::write(&path, &content).unwrap();
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let before = f.metadata().unwrap().blocks() * 512;
        punch_zero_blocks_read_back(&f, 0, len as u64, len as u64).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), content);
        let after = f.metadata().unwrap().blocks() * 512;
        assert_eq!(before - after, 4 * 4096, "{before} -> {after}");
    }

    /// Two workers take file jobs from one queue; each large file is copied by the worker that
    /// took it, and the other may help with the scans of the sparse one. Every file comes out
    /// exact and both loops end.
    #[test]
    fn workers_copy_large_files_and_share_scans() {
        let dir = scratch();
        let root = dir.path().to_path_buf();
        let mut sources = Vec::new();
        for f in 0..3u64 {
            // Five different MiB and a tail (built from a short pattern: debug builds are slow).
            let pattern: Vec<u8> = (0..4099u64).map(|i| (i * 7 + f) as u8 | 1).collect();
            let mut content = Vec::new();
            for mib in 0..5u8 {
                let start = content.len();
                while content.len() < start + (1 << 20) {
                    content.extend_from_slice(&pattern);
                }
                content.truncate(start + (1 << 20));
                content[start] = mib;
            }
            content.extend_from_slice(&pattern[..123 * f as usize % 4099]);
            let a = root.join(format!("a{f}"));
            std::fs::write(&a, &content).unwrap();
            sources.push((a, content));
        }
        let helpers = Arc::new(Helpers::default());
        let (tx, rx) = crossbeam_channel::bounded::<u64>(1);
        let workers: Vec<_> = (0..2)
            .map(|_| {
                let (h, rx, root) = (Arc::clone(&helpers), rx.clone(), root.clone());
                std::thread::spawn(move || {
                    h.worker_loop(&rx, |f| {
                        let src = File::open(root.join(format!("a{f}"))).unwrap();
                        let dst = fsops::create_new(&root.join(format!("b{f}")), 0o600).unwrap();
                        let len = src.metadata().unwrap().len();
                        let how = Method {
                            sparse: f == 1,
                            plain: false,
                        };
                        let r =
                            copy_in_ranges(Some(&h), &src, 0, &dst, len, how, 1 << 20, &no_stop);
                        assert_eq!(r.unwrap(), len);
                    })
                })
            })
            .collect();
        for f in 0..3 {
            tx.send(f).unwrap();
        }
        drop(tx);
        for w in workers {
            w.join().unwrap();
        }
        for (f, (_, content)) in sources.iter().enumerate() {
            assert_eq!(&std::fs::read(root.join(format!("b{f}"))).unwrap(), content);
        }
        // Once the queue is closed and nobody is busy, a waiting worker is let go.
        let (tx, rx) = crossbeam_channel::bounded::<u64>(1);
        tx.send(7).unwrap();
        drop(tx);
        assert_eq!(helpers.next_job(&rx), Some(7));
        helpers.idle();
        assert_eq!(helpers.next_job(&rx), None);
    }

    /// A dense copy of `content` at `path`, every block allocated, open for reading and
    /// (with `write`) writing.
    fn dense_copy(path: &Path, content: &[u8], write: bool) -> File {
        std::fs::write(path, content).unwrap();
        std::fs::OpenOptions::new()
            .read(true)
            .write(write)
            .open(path)
            .unwrap()
    }

    /// The owner keeps one copied chunk queued for a helper and scans older ones itself; the
    /// helper's scan punches that chunk's zero blocks, and nothing is left for the owner.
    #[test]
    fn a_helper_scans_the_chunk_the_owner_queued() {
        let dir = scratch();
        let mib = 1usize << 20;
        let mut content = vec![3u8; 3 * mib];
        content[4096..3 * 4096].fill(0); // chunk 0: two zero blocks
        content[mib + 8192..mib + 5 * 4096].fill(0); // chunk 1: three
        content[2 * mib..2 * mib + 4096].fill(0); // chunk 2: one
        let src = dense_copy(&dir.path().join("a"), &content, false);
        let dst = dense_copy(&dir.path().join("b"), &content, true);
        let allocated = |f: &File| f.metadata().unwrap().blocks() * 512;
        let before = allocated(&dst);
        let helpers = Helpers::default();
        helpers.enabled.store(true, Ordering::Relaxed);
        let file = BigFile::new(&src, &dst, content.len() as u64, mib as u64, true).unwrap();
        file.queue_scan(Some(&helpers), (0, mib as u64));
        assert_eq!(allocated(&dst), before, "a helper may still take chunk 0");
        file.queue_scan(Some(&helpers), (mib as u64, 2 * mib as u64));
        assert_eq!(
            before - allocated(&dst),
            2 * 4096,
            "the owner scanned chunk 0"
        );
        let ticket = helpers.rx.try_recv().unwrap();
        helpers.help(ticket);
        assert_eq!(
            before - allocated(&dst),
            5 * 4096,
            "the helper scanned chunk 1"
        );
        assert!(helpers.rx.is_empty(), "no chunk left, no ticket left");
        file.queue_scan(Some(&helpers), (2 * mib as u64, 3 * mib as u64));
        file.finish_scans(&no_stop).unwrap();
        assert_eq!(
            before - allocated(&dst),
            6 * 4096,
            "the owner scanned the rest"
        );
        assert_eq!(std::fs::read(dir.path().join("b")).unwrap(), content);
    }

    /// A file of one range is never offered to helpers: its owner scans every chunk at once.
    #[test]
    fn a_file_of_one_range_is_scanned_by_its_owner() {
        let dir = scratch();
        let content = vec![0u8; 1 << 20];
        let src = dense_copy(&dir.path().join("a"), &content, false);
        let dst = dense_copy(&dir.path().join("b"), &content, true);
        let helpers = Helpers::default();
        helpers.enabled.store(true, Ordering::Relaxed);
        let file = BigFile::new(&src, &dst, 1 << 20, 1 << 20, true).unwrap();
        file.queue_scan(Some(&helpers), (0, 1 << 20));
        assert!(helpers.rx.is_empty());
        assert_eq!(
            dst.metadata().unwrap().blocks(),
            0,
            "scanned and punched at once"
        );
    }

    /// A helper's failing scan (punching into a read-only descriptor) fails the file.
    #[test]
    fn a_failing_helper_scan_fails_the_file() {
        let dir = scratch();
        let content = vec![0u8; 1 << 20];
        let src = dense_copy(&dir.path().join("a"), &content, false);
        let dst = dense_copy(&dir.path().join("b"), &content, false);
        let helpers = Helpers::default();
        helpers.enabled.store(true, Ordering::Relaxed);
        let file = BigFile::new(&src, &dst, 1 << 20, 1 << 19, true).unwrap();
        file.queue_scan(Some(&helpers), (0, 1 << 20));
        helpers.help(helpers.rx.try_recv().unwrap());
        assert!(file.abort.load(Ordering::Relaxed));
        assert!(file.finish_scans(&no_stop).is_err());
    }

    #[test]
    fn a_failing_range_fails_the_file() {
        let dir = scratch();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, vec![1u8; 3 << 20]).unwrap();
        std::fs::write(&b, b"").unwrap();
        let src = File::open(&a).unwrap();
        // Read-only destination: every write fails.
        let dst = File::open(&b).unwrap();
        for sparse in [false, true] {
            let how = Method {
                sparse,
                plain: false,
            };
            let err = copy_in_ranges(
                None,
                &src,
                u64::MAX - 1,
                &dst,
                3 << 20,
                how,
                1 << 20,
                &no_stop,
            );
            assert!(err.is_err(), "sparse={sparse}");
        }
    }

    #[test]
    fn interrupt_and_shrunk_source() {
        let dir = scratch();
        let (a, b, c) = (
            dir.path().join("a"),
            dir.path().join("b"),
            dir.path().join("c"),
        );
        std::fs::write(&a, vec![3u8; 3 << 20]).unwrap();
        let src = File::open(&a).unwrap();
        let how = Method {
            sparse: false,
            plain: false,
        };
        let dst = fsops::create_new(&b, 0o600).unwrap();
        let err =
            copy_in_ranges(None, &src, 0, &dst, 3 << 20, how, 1 << 20, &|_| true).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::Interrupted);
        // Listed larger than it is now: the copy has the current length, with `-S` too (not
        // the listed length with a tail of zeros).
        for sparse in [false, true] {
            let how = Method {
                sparse,
                plain: false,
            };
            let _ = std::fs::remove_file(&c);
            let dst = fsops::create_new(&c, 0o600).unwrap();
            let n = copy_in_ranges(None, &src, 0, &dst, 5 << 20, how, 1 << 20, &no_stop).unwrap();
            assert_eq!(n, 3 << 20, "sparse={sparse}");
            assert!(
                std::fs::read(&c).unwrap() == vec![3u8; 3 << 20],
                "sparse={sparse}"
            );
        }
    }

    /// `-S` over ranges and copy chunks: zero runs that start, end or lie exactly on a range
    /// or chunk boundary, single zero blocks, a partial last block, and a file of zeros only.
    /// The copy is exact and allocates exactly its non-zero blocks (what rsync -S keeps).
    #[test]
    fn sparse_holes_at_range_and_chunk_boundaries() {
        let dir = scratch();
        let block = zeros::BLOCK as usize;
        let chunk = CHUNK as usize;
        let range = 2 * chunk;
        let len = 2 * range + 3 * block + 1000;
        let mut content = vec![0u8; len];
        for (i, b) in content.iter_mut().enumerate() {
            *b = (i % 251) as u8 | 1;
        }
        let mut zero = |from: usize, to: usize| content[from..to.min(len)].fill(0);
        zero(chunk - block, chunk + block); // across the first chunk boundary
        zero(range, range + block); // starts on a range boundary
        zero(range - 3 * block, range); // ends on it
        zero(range + chunk + 5 * block, range + chunk + 6 * block); // one block
        zero(2 * range, 2 * range + 2 * block); // the last range's start
        zero(len - 1000, len); // the partial last block
        let nonzero_blocks = content
            .chunks(block)
            .filter(|b| b.iter().any(|&x| x != 0))
            .count() as u64;
        let all_zero = vec![0u8; range + 5];
        let how = Method {
            sparse: true,
            plain: false,
        };
        for (name, bytes, want_blocks) in
            [("mixed", &content, nonzero_blocks), ("zeros", &all_zero, 0)]
        {
            let (a, b) = (
                dir.path().join(name),
                dir.path().join(format!("{name}.copy")),
            );
            std::fs::write(&a, bytes).unwrap();
            let src = File::open(&a).unwrap();
            let dst = fsops::create_new(&b, 0o600).unwrap();
            let n = copy_in_ranges(
                None,
                &src,
                0,
                &dst,
                bytes.len() as u64,
                how,
                range as u64,
                &no_stop,
            )
            .unwrap();
            assert_eq!(n, bytes.len() as u64, "{name}");
            assert!(&std::fs::read(&b).unwrap() == bytes, "{name}");
            let allocated = std::fs::metadata(&b).unwrap().blocks() * 512;
            assert_eq!(allocated, want_blocks * zeros::BLOCK, "{name}");
        }
    }
}
