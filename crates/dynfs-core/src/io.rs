//! Fragment I/O: every access the engine makes to fragment files on disks goes through [`DiskIo`].
//!
//! Keeping file access behind one trait lets the engine move onto the project's io_uring platform
//! layer later, and lets tests inject faults ([`FaultyIo`]): failing the N-th operation with `EIO`
//! or `ENOSPC`, flipping bits, or dropping an fsync.
//!
//! Invariant: [`DiskIo::write_durable`] returns only after the data and the directory entry are on
//! stable storage (file fsync, rename, directory fsync), unless a test deliberately drops the fsync.

use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::Mutex;

/// File operations used for fragment storage.
pub trait DiskIo: Send + Sync + 'static {
    /// Write `data` to `path` atomically and durably: temporary file, fsync, rename, directory fsync.
    fn write_durable(&self, path: &Path, data: &[u8]) -> io::Result<()>;
    /// Write `data` to a new file at `path` without syncing; it becomes durable at the next
    /// [`DiskIo::sync_disk`] of the disk holding it.
    fn write_unsynced(&self, path: &Path, data: &[u8]) -> io::Result<()>;
    /// Make everything written on the filesystem holding `root` durable (`syncfs`).
    fn sync_disk(&self, root: &Path) -> io::Result<()>;
    /// Make everything written under each of `roots` durable. On failure, returns the index of
    /// the first root that may not be synced, with the error (roots before it are synced). The
    /// default syncs each root in turn; [`StdIo`] syncs each filesystem only once.
    fn sync_disks(&self, roots: &[PathBuf]) -> Result<(), (usize, io::Error)> {
        for (i, r) in roots.iter().enumerate() {
            self.sync_disk(r).map_err(|e| (i, e))?;
        }
        Ok(())
    }
    /// Read the whole file at `path`.
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// Remove the file at `path`.
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Call `f` with each entry name of directory `path` (streamed, not collected).
    fn list_dir(&self, path: &Path, f: &mut dyn FnMut(&OsStr)) -> io::Result<()>;
}

/// Name of the temporary file used while writing `path`.
pub fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(OsString::from).unwrap_or_default();
    name.push(".tmp");
    path.with_file_name(name)
}

/// fsync a directory so that entries created or renamed in it are durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// A growable byte buffer like `Vec<u8>` whose memory starts on a [`AlignedBuf::ALIGN`]
/// boundary, so that slices of it at aligned offsets can be written with `O_DIRECT` without a
/// bounce copy. The filesystem layer keeps extent data in these.
pub struct AlignedBuf {
    /// Start of the allocation (dangling while `cap == 0`).
    ptr: NonNull<u8>,
    /// Initialized bytes.
    len: usize,
    /// Allocated bytes.
    cap: usize,
}

// SAFETY: an `AlignedBuf` owns its allocation exclusively (like `Vec<u8>`); shared references
// only read it.
unsafe impl Send for AlignedBuf {}
// SAFETY: as above: `&AlignedBuf` gives only read access to the bytes.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// Alignment of the buffer's start.
    pub const ALIGN: usize = DIRECT_ALIGN;

    /// An empty buffer (allocates nothing).
    pub const fn new() -> Self {
        AlignedBuf {
            ptr: NonNull::dangling(),
            len: 0,
            cap: 0,
        }
    }

    /// An empty buffer with room for `cap` bytes.
    pub fn with_capacity(cap: usize) -> Self {
        let mut b = Self::new();
        b.grow_to(cap);
        b
    }

    /// Bytes the buffer holds without reallocating.
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// Remove every byte (keeps the allocation).
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Append `data`.
    pub fn extend_from_slice(&mut self, data: &[u8]) {
        self.reserve(data.len());
        // SAFETY: `reserve` made room for `len + data.len()` bytes in our allocation, which
        // cannot overlap `data` (we hold `&mut self`, `data` is a shared borrow elsewhere).
        unsafe {
            std::ptr::copy_nonoverlapping(
                data.as_ptr(),
                self.ptr.as_ptr().add(self.len),
                data.len(),
            )
        };
        self.len += data.len();
    }

    /// Set the length to `n`, filling new bytes with `value`.
    pub fn resize(&mut self, n: usize, value: u8) {
        if n > self.len {
            self.reserve(n - self.len);
            // SAFETY: `reserve` made room for `n` bytes; bytes `len..n` are inside the
            // allocation and are initialized here before `len` covers them.
            unsafe { std::ptr::write_bytes(self.ptr.as_ptr().add(self.len), value, n - self.len) };
        }
        self.len = n;
    }

    /// Make room for `additional` more bytes (at least doubling, as `Vec` does).
    fn reserve(&mut self, additional: usize) {
        let need = self
            .len
            .checked_add(additional)
            .unwrap_or_else(|| panic!("AlignedBuf capacity overflow"));
        if need > self.cap {
            self.grow_to(need.max(self.cap.saturating_mul(2)));
        }
    }

    fn layout(cap: usize) -> std::alloc::Layout {
        std::alloc::Layout::from_size_align(cap, Self::ALIGN)
            .unwrap_or_else(|_| panic!("AlignedBuf capacity overflow"))
    }

    /// Reallocate to exactly `cap` bytes if that is more than now, keeping the contents.
    fn grow_to(&mut self, cap: usize) {
        if cap <= self.cap {
            return;
        }
        let layout = Self::layout(cap);
        // SAFETY: `layout` has a non-zero size (`cap > self.cap >= 0`).
        let p = unsafe { std::alloc::alloc(layout) };
        let Some(p) = NonNull::new(p) else {
            std::alloc::handle_alloc_error(layout)
        };
        // SAFETY: the old buffer holds `len` initialized bytes (none when dangling, a valid
        // pointer for a zero-length copy); the new allocation has room for them and is a
        // different allocation.
        unsafe { std::ptr::copy_nonoverlapping(self.ptr.as_ptr(), p.as_ptr(), self.len) };
        self.release();
        self.ptr = p;
        self.cap = cap;
    }

    /// Free the allocation (the fields are reset by the caller or by dropping).
    fn release(&mut self) {
        if self.cap > 0 {
            // SAFETY: `ptr` was allocated by `grow_to` with `Self::layout(self.cap)`.
            unsafe { std::alloc::dealloc(self.ptr.as_ptr(), Self::layout(self.cap)) };
            self.cap = 0;
        }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        self.release();
    }
}

impl Default for AlignedBuf {
    fn default() -> Self {
        Self::new()
    }
}

impl Clone for AlignedBuf {
    fn clone(&self) -> Self {
        let mut b = Self::with_capacity(self.len);
        b.extend_from_slice(self);
        b
    }
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlignedBuf")
            .field("len", &self.len)
            .field("cap", &self.cap)
            .finish()
    }
}

impl std::ops::Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: `ptr` is valid for `len` initialized bytes (or dangling and non-null with
        // `len == 0`), and shared access matches `&self`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl std::ops::DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `deref`, with exclusive access through `&mut self`.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

/// The standard implementation over `std::fs`, blocking the calling thread.
#[derive(Debug, Default, Clone, Copy)]
pub struct StdIo;

impl StdIo {
    fn write_inner(path: &Path, data: &[u8], fsync: bool) -> io::Result<()> {
        let tmp = temp_path(path);
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        f.write_all(data)?;
        if fsync {
            f.sync_all()?;
        }
        drop(f);
        fs::rename(&tmp, path)?;
        if fsync {
            if let Some(parent) = path.parent() {
                sync_dir(parent)?;
            }
        }
        Ok(())
    }
}

fn write_plain(path: &Path, data: &[u8]) -> io::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    f.write_all(data)
}

/// Alignment of buffers, file offsets and lengths for `O_DIRECT` writes: the page size, which
/// covers every block device's logical block size and memory alignment (`statx` reports 512
/// for the test machine's virtio disk).
const DIRECT_ALIGN: usize = 4096;

/// Largest piece of a fragment written by one `O_DIRECT` write (the bounce buffer's size).
const DIRECT_CHUNK: usize = 1 << 20;

/// Bounce buffers kept for reuse by [`write_direct`] (one per concurrent flush thread).
static BOUNCE: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// Most bounce buffers kept.
const SPARE_BOUNCE: usize = 8;

/// Write a new fragment file with `O_DIRECT` when the filesystem takes it, else through the
/// page cache ([`write_plain`]).
///
/// Fragments are written once and not read back soon, so the page cache is only a cost for
/// them: the copy into it, the writeback threads' work later, and the pages pushed out to make
/// room. `O_DIRECT` needs aligned memory, offsets and lengths: the data goes through an aligned
/// bounce buffer, [`DIRECT_CHUNK`] bytes at a time (a copy into a buffer that stays in the CPU
/// cache, cheaper than the page cache's copy into fresh pages); a length that is not a multiple
/// of [`DIRECT_ALIGN`] is written padded with zeros and the file then truncated to `data`'s
/// length. Like [`write_plain`], the result is durable only after the next `syncfs` (which
/// commits the file's metadata and flushes the device's cache).
fn write_fragment(path: &Path, data: &[u8]) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let open = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_DIRECT)
        .open(path);
    let f = match open {
        Ok(f) => f,
        // The filesystem refuses O_DIRECT.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return write_plain(path, data),
        Err(e) => return Err(e),
    };
    if data.is_empty() {
        return Ok(());
    }
    if data.as_ptr().align_offset(DIRECT_ALIGN) == 0 && data.len() % DIRECT_ALIGN == 0 {
        // Aligned already (extent buffers are [`AlignedBuf`]s): no bounce copy.
        use std::os::unix::fs::FileExt;
        return match f.write_all_at(data, 0) {
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                drop(f);
                write_plain(path, data)
            }
            r => r,
        };
    }
    let spare = BOUNCE.lock().unwrap_or_else(|e| e.into_inner()).pop();
    let mut bounce = spare.unwrap_or_else(|| vec![0u8; DIRECT_CHUNK + DIRECT_ALIGN]);
    let r = write_direct_chunks(&f, &mut bounce, data);
    {
        let mut spare = BOUNCE.lock().unwrap_or_else(|e| e.into_inner());
        if spare.len() < SPARE_BOUNCE {
            spare.push(bounce);
        }
    }
    match r {
        Ok(()) => {
            if data.len() % DIRECT_ALIGN != 0 {
                f.set_len(data.len() as u64)?;
            }
            Ok(())
        }
        // Alignment stricter than DIRECT_ALIGN (or O_DIRECT accepted at open, refused at
        // write): write the file again through the page cache.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            drop(f);
            write_plain(path, data)
        }
        Err(e) => Err(e),
    }
}

/// Write `data` to `f` (opened with `O_DIRECT`) from the aligned part of `bounce`, one
/// [`DIRECT_CHUNK`] at a time, the last chunk padded with zeros to a multiple of
/// [`DIRECT_ALIGN`].
fn write_direct_chunks(f: &File, bounce: &mut [u8], data: &[u8]) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let start = bounce.as_ptr().align_offset(DIRECT_ALIGN);
    let buf = bounce
        .get_mut(start..start + DIRECT_CHUNK)
        .ok_or_else(|| io::Error::other("bounce buffer too small"))?;
    for (i, chunk) in data.chunks(DIRECT_CHUNK).enumerate() {
        let padded = chunk.len().next_multiple_of(DIRECT_ALIGN);
        buf[..chunk.len()].copy_from_slice(chunk);
        buf[chunk.len()..padded].fill(0);
        f.write_all_at(&buf[..padded], (i * DIRECT_CHUNK) as u64)?;
    }
    Ok(())
}

fn syncfs(root: &Path) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let f = File::open(root)?;
    // SAFETY: `f` is an open descriptor for the duration of the call; syncfs only flushes.
    if unsafe { libc::syncfs(f.as_raw_fd()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl DiskIo for StdIo {
    fn write_durable(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        Self::write_inner(path, data, true)
    }

    fn write_unsynced(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        write_fragment(path, data)
    }

    fn sync_disk(&self, root: &Path) -> io::Result<()> {
        syncfs(root)
    }

    /// Disk directories on one filesystem (same `st_dev`, as when a pool's disks are
    /// directories of one device) need one `syncfs`, which covers them all.
    fn sync_disks(&self, roots: &[PathBuf]) -> Result<(), (usize, io::Error)> {
        use std::os::unix::fs::MetadataExt;
        let mut synced: Vec<u64> = Vec::new();
        for (i, r) in roots.iter().enumerate() {
            let dev = fs::metadata(r).map_err(|e| (i, e))?.dev();
            if synced.contains(&dev) {
                continue;
            }
            syncfs(r).map_err(|e| (i, e))?;
            synced.push(dev);
        }
        Ok(())
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        let mut f = File::open(path)?;
        let mut v = Vec::with_capacity(f.metadata().map(|m| m.len() as usize).unwrap_or(0));
        f.read_to_end(&mut v)?;
        Ok(v)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn list_dir(&self, path: &Path, f: &mut dyn FnMut(&OsStr)) -> io::Result<()> {
        for e in fs::read_dir(path)? {
            f(&e?.file_name());
        }
        Ok(())
    }
}

/// Which operation a fault applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultOp {
    /// `write_durable`.
    Write,
    /// `read`.
    Read,
    /// `remove`.
    Remove,
    /// `sync_disk`.
    Sync,
    /// Any of the above.
    Any,
}

/// What happens when a fault fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// Fail with `EIO`.
    Eio,
    /// Fail with `ENOSPC`.
    Enospc,
    /// Flip one bit: in the data returned by a read, or in the data stored by a write (silently).
    FlipBit,
    /// Perform a write without fsync (or never include an unsynced write in a later disk sync);
    /// the file is lost by [`FaultyIo::power_loss`].
    DropFsync,
}

/// A fault rule: fire on the `nth` (1-based) matching operation, and on every later one if `repeat`.
#[derive(Debug, Clone)]
pub struct Fault {
    /// Operation filter.
    pub op: FaultOp,
    /// Only paths containing this string match (all paths if `None`).
    pub path_contains: Option<String>,
    /// Which matching operation fires first (1-based).
    pub nth: u64,
    /// Keep firing after the first time.
    pub repeat: bool,
    /// Effect.
    pub kind: FaultKind,
}

/// Unsynced files: path, and whether a later disk sync is (wrongly) not going to cover it.
type Volatile = Vec<(PathBuf, bool)>;

struct FaultState {
    fault: Fault,
    seen: u64,
    fired: u64,
}

/// A [`DiskIo`] that wraps [`StdIo`] and injects the configured faults. For tests.
#[derive(Default)]
pub struct FaultyIo {
    rules: Mutex<Vec<FaultState>>,
    volatile: Mutex<Volatile>,
}

impl FaultyIo {
    /// A fault injector with no rules (behaves like [`StdIo`]).
    pub fn new() -> Self {
        Self::default()
    }

    /// Add a rule.
    pub fn add(&self, fault: Fault) {
        self.rules
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(FaultState {
                fault,
                seen: 0,
                fired: 0,
            });
    }

    /// Remove all rules.
    pub fn clear(&self) {
        self.rules.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// How many times faults have fired in total.
    pub fn fired(&self) -> u64 {
        self.rules
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|r| r.fired)
            .sum()
    }

    /// Simulate a power loss: every file written with a dropped fsync disappears.
    pub fn power_loss(&self) {
        let files = std::mem::take(&mut *self.volatile.lock().unwrap_or_else(|e| e.into_inner()));
        for (f, _) in files {
            let _ = fs::remove_file(f);
        }
    }

    fn check(&self, op: FaultOp, path: &Path) -> Option<FaultKind> {
        let mut rules = self.rules.lock().unwrap_or_else(|e| e.into_inner());
        let p = path.to_string_lossy();
        for r in rules.iter_mut() {
            if r.fault.op != FaultOp::Any && r.fault.op != op {
                continue;
            }
            if let Some(s) = &r.fault.path_contains {
                if !p.contains(s.as_str()) {
                    continue;
                }
            }
            r.seen += 1;
            if r.seen == r.fault.nth || (r.fault.repeat && r.seen > r.fault.nth) {
                r.fired += 1;
                return Some(r.fault.kind);
            }
        }
        None
    }
}

fn flip(data: &mut [u8]) {
    if let Some(b) = data.get_mut(data.len() / 2) {
        *b ^= 0x10;
    }
}

impl DiskIo for FaultyIo {
    fn write_durable(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        match self.check(FaultOp::Write, path) {
            Some(FaultKind::Eio) => Err(io::Error::from_raw_os_error(libc::EIO)),
            Some(FaultKind::Enospc) => Err(io::Error::from_raw_os_error(libc::ENOSPC)),
            Some(FaultKind::FlipBit) => {
                let mut d = data.to_vec();
                flip(&mut d);
                StdIo::write_inner(path, &d, true)
            }
            Some(FaultKind::DropFsync) => {
                StdIo::write_inner(path, data, false)?;
                self.volatile
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((path.to_path_buf(), true));
                Ok(())
            }
            None => StdIo::write_inner(path, data, true),
        }
    }

    fn write_unsynced(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        let fault = self.check(FaultOp::Write, path);
        match fault {
            Some(FaultKind::Eio) => return Err(io::Error::from_raw_os_error(libc::EIO)),
            Some(FaultKind::Enospc) => return Err(io::Error::from_raw_os_error(libc::ENOSPC)),
            Some(FaultKind::FlipBit) => {
                let mut d = data.to_vec();
                flip(&mut d);
                write_fragment(path, &d)?;
            }
            _ => write_fragment(path, data)?,
        }
        self.volatile
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((path.to_path_buf(), fault == Some(FaultKind::DropFsync)));
        Ok(())
    }

    fn sync_disk(&self, root: &Path) -> io::Result<()> {
        match self.check(FaultOp::Sync, root) {
            Some(FaultKind::Eio) => return Err(io::Error::from_raw_os_error(libc::EIO)),
            Some(FaultKind::Enospc) => return Err(io::Error::from_raw_os_error(libc::ENOSPC)),
            Some(FaultKind::DropFsync) => return Ok(()),
            _ => {}
        }
        syncfs(root)?;
        self.volatile
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(p, dropped)| *dropped || !p.starts_with(root));
        Ok(())
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        match self.check(FaultOp::Read, path) {
            Some(FaultKind::Eio) => Err(io::Error::from_raw_os_error(libc::EIO)),
            Some(FaultKind::Enospc) => Err(io::Error::from_raw_os_error(libc::ENOSPC)),
            Some(FaultKind::FlipBit) => {
                let mut d = StdIo.read(path)?;
                flip(&mut d);
                Ok(d)
            }
            Some(FaultKind::DropFsync) | None => StdIo.read(path),
        }
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        match self.check(FaultOp::Remove, path) {
            Some(FaultKind::Eio) => Err(io::Error::from_raw_os_error(libc::EIO)),
            Some(FaultKind::Enospc) => Err(io::Error::from_raw_os_error(libc::ENOSPC)),
            _ => StdIo.remove(path),
        }
    }

    fn list_dir(&self, path: &Path, f: &mut dyn FnMut(&OsStr)) -> io::Result<()> {
        StdIo.list_dir(path, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_buffers_behave_like_vectors_and_stay_aligned() {
        let mut model: Vec<u8> = Vec::new();
        let mut b = AlignedBuf::new();
        assert!(b.is_empty() && b.capacity() == 0);
        // Grow from nothing in uneven steps, resize up and down, overwrite in place.
        for step in 0..200usize {
            let chunk: Vec<u8> = (0..step * 37 % 5000).map(|i| (i + step) as u8).collect();
            b.extend_from_slice(&chunk);
            model.extend_from_slice(&chunk);
            if step % 7 == 0 {
                let n = model.len() / 2 + step;
                b.resize(n, 0xa5);
                model.resize(n, 0xa5);
            }
            if let (Some(x), Some(y)) = (b.get_mut(step), model.get_mut(step)) {
                *x = 1;
                *y = 1;
            }
            assert_eq!(&b[..], &model[..], "step {step}");
            assert!(b.capacity() >= b.len());
            // (Nothing allocated yet at step 0: no memory to align.)
            if b.capacity() > 0 {
                assert_eq!(b.as_ptr().align_offset(AlignedBuf::ALIGN), 0);
            }
        }
        let c = b.clone();
        assert_eq!(&c[..], &model[..]);
        assert_eq!(c.as_ptr().align_offset(AlignedBuf::ALIGN), 0);
        let cap = b.capacity();
        b.clear();
        assert!(b.is_empty());
        assert_eq!(b.capacity(), cap);
        let w = AlignedBuf::with_capacity(1 << 20);
        assert_eq!((w.len(), w.capacity()), (0, 1 << 20));
        assert_eq!(format!("{w:?}"), "AlignedBuf { len: 0, cap: 1048576 }");
        // Sent to and dropped on another thread.
        std::thread::spawn(move || assert_eq!(&c[..3], &model[..3]))
            .join()
            .unwrap();
        // An aligned buffer is written to the file without the bounce buffer.
        let dir = tempfile::tempdir().unwrap();
        let mut d = AlignedBuf::with_capacity(3 * DIRECT_ALIGN);
        d.resize(3 * DIRECT_ALIGN, 0x5a);
        let p = dir.path().join("aligned");
        StdIo.write_unsynced(&p, &d).unwrap();
        assert_eq!(StdIo.read(&p).unwrap(), &d[..]);
    }

    #[test]
    fn fragments_written_direct_read_back_exactly_at_every_length() {
        // /tmp-style tempdir (ext4 here: O_DIRECT) and tmpfs (O_DIRECT accepted since Linux
        // 6.6, refused with EINVAL before: the page-cache fallback).
        let dirs = [
            tempfile::tempdir().unwrap(),
            tempfile::tempdir_in("/dev/shm").unwrap(),
        ];
        let lens = [
            0,
            1,
            511,
            DIRECT_ALIGN - 1,
            DIRECT_ALIGN,
            DIRECT_ALIGN + 1,
            DIRECT_CHUNK,
            DIRECT_CHUNK + 5,
            3 * DIRECT_CHUNK - DIRECT_ALIGN,
        ];
        for dir in &dirs {
            for (n, &len) in lens.iter().enumerate() {
                let data: Vec<u8> = (0..len).map(|i| (i * 131 % 251) as u8 + 1).collect();
                // Unaligned source memory as well as aligned-by-chance.
                for skew in [0, 3] {
                    let mut src = vec![0u8; skew];
                    src.extend_from_slice(&data);
                    let p = dir.path().join(format!("f{n}.{skew}"));
                    // Overwriting a longer file leaves no stale tail.
                    fs::write(&p, vec![9u8; len + 10_000]).unwrap();
                    StdIo.write_unsynced(&p, &src[skew..]).unwrap();
                    assert_eq!(StdIo.read(&p).unwrap(), data, "len {len} skew {skew}");
                }
            }
        }
        // Errors other than a refused O_DIRECT are reported.
        let missing = dirs[0].path().join("no/such/dir/f");
        let err = StdIo.write_unsynced(&missing, b"x").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn sync_disks_covers_each_filesystem_once_and_reports_the_failing_root() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        fs::create_dir(&a).unwrap();
        fs::create_dir(&b).unwrap();
        // Two directories of one filesystem: one syncfs, no error.
        assert!(StdIo.sync_disks(&[a.clone(), b.clone()]).is_ok());
        // A missing disk directory is reported with its index, after the ones before it.
        let missing = dir.path().join("missing");
        let err = StdIo
            .sync_disks(&[a.clone(), missing, b.clone()])
            .unwrap_err();
        assert_eq!(err.0, 1);
        assert_eq!(err.1.kind(), io::ErrorKind::NotFound);
        // The fault injector keeps the per-disk default, so every root is synced (and its
        // unsynced files forgotten), and a sync fault names the root it hit.
        let faulty = FaultyIo::new();
        faulty.add(Fault {
            op: FaultOp::Sync,
            path_contains: Some("/b".into()),
            nth: 1,
            repeat: false,
            kind: FaultKind::Eio,
        });
        let err = faulty.sync_disks(&[a, b]).unwrap_err();
        assert_eq!(err.0, 1);
        assert_eq!(faulty.fired(), 1);
    }
}
