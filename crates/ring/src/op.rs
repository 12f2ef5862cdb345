//! The operation vocabulary. Each type owns what the kernel touches (buffers, paths, structs) and
//! gives buffers back with the result. Construct one and run it with [`Handle::op`] (a future) or
//! push it into a [`Batch`](crate::Batch).
//!
//! Results: operations returning a count yield `io::Result<usize>`; those returning nothing yield
//! `io::Result<()>`; opens and accepts yield an [`OwnedFd`].

use crate::buf::{FixedBuf, IoBuf, IoBufMut, SharedBuf};
use crate::ring::{cqe_result, fd_result, Cleanup, Fd, Handle, Op, Operation};
use io_uring::{opcode, squeue::Entry, types};
use std::ffi::CString;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{IntoRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Duration;

/// Converts a path to a C string (fails on interior NUL bytes).
pub fn cstr(path: impl AsRef<Path>) -> io::Result<CString> {
    CString::new(path.as_ref().as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

/// Converts bytes (an xattr name) to a C string.
pub fn cstr_bytes(b: &[u8]) -> io::Result<CString> {
    CString::new(b)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "name contains a NUL byte"))
}

macro_rules! with_fd {
    ($fd:expr, $f:ident => $e:expr) => {
        match $fd {
            Fd::Raw(r) => {
                let $f = types::Fd(r);
                $e
            }
            Fd::Fixed(i) => {
                let $f = types::Fixed(i);
                $e
            }
        }
    };
}

fn unit(res: i32) -> io::Result<()> {
    cqe_result(res).map(|_| ())
}

fn len32(n: usize) -> u32 {
    n.min(u32::MAX as usize) as u32
}

/// `statx(2)`: metadata of `path` relative to `dirfd` (`libc::AT_FDCWD` for the cwd).
pub struct Statx {
    dirfd: RawFd,
    path: CString,
    flags: i32,
    mask: u32,
    buf: Box<libc::statx>,
}

impl Statx {
    /// `flags`: `AT_SYMLINK_NOFOLLOW`, `AT_EMPTY_PATH`, ...; `mask`: `STATX_*` fields wanted.
    pub fn new(dirfd: RawFd, path: CString, flags: i32, mask: u32) -> Statx {
        // SAFETY: `statx` is plain old data; all-zero is a valid value.
        let buf = Box::new(unsafe { std::mem::zeroed::<libc::statx>() });
        Statx {
            dirfd,
            path,
            flags,
            mask,
            buf,
        }
    }
}

// SAFETY: the SQE points at `path` (heap CString) and `buf` (heap box), both owned.
unsafe impl Operation for Statx {
    type Output = io::Result<libc::statx>;
    fn build(&mut self) -> Entry {
        opcode::Statx::new(
            types::Fd(self.dirfd),
            self.path.as_ptr(),
            (&mut *self.buf as *mut libc::statx).cast::<types::statx>(),
        )
        .flags(self.flags)
        .mask(self.mask)
        .build()
    }
    fn complete(self, res: i32, _: u32) -> Self::Output {
        cqe_result(res).map(|_| *self.buf)
    }
}

/// `openat(2)` yielding a normal fd.
pub struct OpenAt {
    dirfd: RawFd,
    path: CString,
    flags: i32,
    mode: u32,
}

impl OpenAt {
    /// `flags` as for open(2) (`O_CLOEXEC` is added); `mode` for `O_CREAT`.
    pub fn new(dirfd: RawFd, path: CString, flags: i32, mode: u32) -> OpenAt {
        OpenAt {
            dirfd,
            path,
            flags: flags | libc::O_CLOEXEC,
            mode,
        }
    }
}

// SAFETY: the SQE points at `path`, owned.
unsafe impl Operation for OpenAt {
    type Output = io::Result<OwnedFd>;
    fn build(&mut self) -> Entry {
        opcode::OpenAt::new(types::Fd(self.dirfd), self.path.as_ptr())
            .flags(self.flags)
            .mode(self.mode)
            .build()
    }
    fn complete(self, res: i32, _: u32) -> Self::Output {
        fd_result(res)
    }
    fn discard(&self, res: i32) -> Cleanup {
        if res >= 0 {
            Cleanup::CloseFd(res)
        } else {
            Cleanup::None
        }
    }
}

/// `openat(2)` into a direct descriptor slot (see [`Handle::alloc_direct`]).
pub struct OpenAtDirect {
    dirfd: RawFd,
    path: CString,
    flags: i32,
    mode: u32,
    slot: u32,
}

impl OpenAtDirect {
    /// Opens into slot `slot` of the registered file table (replacing what was there).
    pub fn new(dirfd: RawFd, path: CString, flags: i32, mode: u32, slot: u32) -> OpenAtDirect {
        OpenAtDirect {
            dirfd,
            path,
            flags: flags & !libc::O_CLOEXEC,
            mode,
            slot,
        }
    }
}

// SAFETY: the SQE points at `path`, owned.
unsafe impl Operation for OpenAtDirect {
    type Output = io::Result<()>;
    fn build(&mut self) -> Entry {
        let dest = types::DestinationSlot::try_from_slot_target(self.slot)
            .unwrap_or_else(|_| types::DestinationSlot::auto_target());
        opcode::OpenAt::new(types::Fd(self.dirfd), self.path.as_ptr())
            .flags(self.flags)
            .mode(self.mode)
            .file_index(Some(dest))
            .build()
    }
    fn complete(self, res: i32, _: u32) -> Self::Output {
        unit(res)
    }
    fn success_result(&self) -> Option<i32> {
        Some(0)
    }
    fn discard(&self, res: i32) -> Cleanup {
        if res >= 0 {
            Cleanup::CloseDirect(self.slot)
        } else {
            Cleanup::None
        }
    }
}

/// `openat2(2)` (with `RESOLVE_*` flags), yielding a normal fd or, with a slot, a direct one.
pub struct OpenAt2 {
    dirfd: RawFd,
    path: CString,
    how: Box<types::OpenHow>,
    flags: u64,
    mode: u64,
    resolve: u64,
    slot: Option<u32>,
}

impl OpenAt2 {
    /// `flags`, `mode`, `resolve` as in `struct open_how` (`O_CLOEXEC` added for normal fds).
    pub fn new(dirfd: RawFd, path: CString, flags: u64, mode: u64, resolve: u64) -> OpenAt2 {
        OpenAt2 {
            dirfd,
            path,
            how: Box::new(types::OpenHow::new()),
            flags,
            mode,
            resolve,
            slot: None,
        }
    }
    /// Opens into direct descriptor slot `slot` instead; the result fd is then 0 and meaningless:
    /// use [`Fd::Fixed`].
    pub fn direct(mut self, slot: u32) -> OpenAt2 {
        self.slot = Some(slot);
        self
    }
}

// SAFETY: the SQE points at `path` and `how`, both heap-owned.
unsafe impl Operation for OpenAt2 {
    type Output = io::Result<Option<OwnedFd>>;
    fn build(&mut self) -> Entry {
        let dest = self
            .slot
            .and_then(|s| types::DestinationSlot::try_from_slot_target(s).ok());
        // Direct descriptors have no close-on-exec flag (the kernel rejects O_CLOEXEC for them).
        let flags = match self.slot {
            Some(_) => self.flags & !(libc::O_CLOEXEC as u64),
            None => self.flags | libc::O_CLOEXEC as u64,
        };
        *self.how = types::OpenHow::new()
            .flags(flags)
            .mode(self.mode)
            .resolve(self.resolve);
        opcode::OpenAt2::new(types::Fd(self.dirfd), self.path.as_ptr(), &*self.how)
            .file_index(dest)
            .build()
    }
    fn complete(self, res: i32, _: u32) -> Self::Output {
        match self.slot {
            Some(_) => unit(res).map(|_| None),
            None => fd_result(res).map(Some),
        }
    }
    fn discard(&self, res: i32) -> Cleanup {
        match (res >= 0, self.slot) {
            (false, _) => Cleanup::None,
            (true, Some(s)) => Cleanup::CloseDirect(s),
            (true, None) => Cleanup::CloseFd(res),
        }
    }
}

/// `close(2)` of a normal fd (ownership moves into the operation) or of a direct slot.
pub struct Close {
    fd: Fd,
}

impl Close {
    /// Closes an owned fd.
    pub fn new(fd: OwnedFd) -> Close {
        Close {
            fd: Fd::Raw(fd.into_raw_fd()),
        }
    }
    /// Closes direct descriptor slot `slot`.
    pub fn direct(slot: u32) -> Close {
        Close {
            fd: Fd::Fixed(slot),
        }
    }
}

// SAFETY: no pointers.
unsafe impl Operation for Close {
    type Output = io::Result<()>;
    fn build(&mut self) -> Entry {
        with_fd!(self.fd, f => opcode::Close::new(f).build())
    }
    fn complete(self, res: i32, _: u32) -> Self::Output {
        unit(res)
    }
    fn success_result(&self) -> Option<i32> {
        Some(0)
    }
}

/// The start of `buf`'s spare capacity (just after its initialised bytes), where a read lands.
fn spare_ptr<B: IoBufMut>(buf: &mut B) -> *mut u8 {
    let init = buf.bytes_init();
    // SAFETY: IoBufMut guarantees init <= bytes_total, so the pointer stays within (or one past
    // the end of) the allocation.
    unsafe { buf.stable_mut_ptr().add(init) }
}

/// Completes a read into `buf`'s spare capacity: marks the bytes the kernel wrote (at most
/// `want`) as initialised and returns how many there were.
fn filled<B: IoBufMut>(buf: &mut B, res: i32, want: u32) -> io::Result<usize> {
    let r = cqe_result(res);
    if let Ok(n) = r {
        let init = buf.bytes_init();
        // SAFETY: the kernel wrote `n` (clamped to `want`, the spare capacity asked for) bytes
        // right after the initialised part.
        unsafe { buf.set_init(init + n.min(want as usize)) };
    }
    r
}

/// `pread(2)` into the spare capacity of `buf` (offset `u64::MAX`: the file position).
pub struct Read<B> {
    fd: Fd,
    buf: B,
    offset: u64,
    want: u32,
}

impl<B: IoBufMut> Read<B> {
    /// Reads up to `buf.bytes_total() - buf.bytes_init()` bytes at `offset`, appended after the
    /// initialised part.
    pub fn new(fd: impl Into<Fd>, buf: B, offset: u64) -> Read<B> {
        let want = len32(buf.bytes_total() - buf.bytes_init());
        Read {
            fd: fd.into(),
            buf,
            offset,
            want,
        }
    }
}

// SAFETY: the SQE points into `buf`'s spare capacity; IoBufMut guarantees it is stable and
// writable, and `buf` is owned until the CQE.
unsafe impl<B: IoBufMut> Operation for Read<B> {
    type Output = (io::Result<usize>, B);
    fn build(&mut self) -> Entry {
        let ptr = spare_ptr(&mut self.buf);
        with_fd!(self.fd, f => opcode::Read::new(f, ptr, self.want).offset(self.offset).build())
    }
    fn complete(mut self, res: i32, _: u32) -> Self::Output {
        (filled(&mut self.buf, res, self.want), self.buf)
    }
    fn success_result(&self) -> Option<i32> {
        i32::try_from(self.want).ok()
    }
}

/// `pread(2)` of exactly `buf.len()` bytes into a [`SharedBuf`] (for chains where a later
/// operation writes the same buffer). A short read fails the chain.
pub struct ReadShared {
    fd: Fd,
    buf: SharedBuf,
    offset: u64,
}

impl ReadShared {
    /// Reads into a share of `buf` (which stays with the caller).
    pub fn new(fd: impl Into<Fd>, buf: &SharedBuf, offset: u64) -> ReadShared {
        ReadShared {
            fd: fd.into(),
            buf: buf.share(),
            offset,
        }
    }
}

// SAFETY: points into the shared allocation, kept alive by this operation's Rc clone until the
// final CQE; no safe code can read it before then (`SharedBuf::into_vec` needs sole ownership).
unsafe impl Operation for ReadShared {
    type Output = io::Result<usize>;
    fn build(&mut self) -> Entry {
        let len = len32(self.buf.len());
        with_fd!(self.fd, f => opcode::Read::new(f, self.buf.ptr(), len).offset(self.offset).build())
    }
    fn complete(self, res: i32, _: u32) -> Self::Output {
        cqe_result(res)
    }
    fn success_result(&self) -> Option<i32> {
        i32::try_from(self.buf.len()).ok()
    }
}

impl Write<SharedBuf> {
    /// Writes a share of `buf` (for chains; see [`ReadShared`]).
    pub fn shared(fd: impl Into<Fd>, buf: &SharedBuf, offset: u64) -> Write<SharedBuf> {
        Write {
            fd: fd.into(),
            buf: buf.share(),
            offset,
        }
    }
}

/// `pwrite(2)` of the initialised bytes of `buf` (offset `u64::MAX`: the file position).
pub struct Write<B> {
    fd: Fd,
    buf: B,
    offset: u64,
}

impl<B: IoBuf> Write<B> {
    /// Writes `buf.bytes_init()` bytes at `offset`.
    pub fn new(fd: impl Into<Fd>, buf: B, offset: u64) -> Write<B> {
        Write {
            fd: fd.into(),
            buf,
            offset,
        }
    }
}

// SAFETY: the SQE points at `buf`'s initialised bytes, stable and owned until the CQE.
unsafe impl<B: IoBuf> Operation for Write<B> {
    type Output = (io::Result<usize>, B);
    fn build(&mut self) -> Entry {
        let len = len32(self.buf.bytes_init());
        with_fd!(self.fd, f => opcode::Write::new(f, self.buf.stable_ptr(), len).offset(self.offset).build())
    }
    fn complete(self, res: i32, _: u32) -> Self::Output {
        (cqe_result(res), self.buf)
    }
    fn success_result(&self) -> Option<i32> {
        i32::try_from(self.buf.bytes_init()).ok()
    }
}

/// `preadv(2)`: fills the spare capacity of each buffer in turn.
pub struct Readv<B> {
    fd: Fd,
    bufs: Vec<B>,
    iov: Vec<libc::iovec>,
    offset: u64,
}

impl<B: IoBufMut> Readv<B> {
    /// Reads into `bufs` at `offset`.
    pub fn new(fd: impl Into<Fd>, bufs: Vec<B>, offset: u64) -> Readv<B> {
        Readv {
            fd: fd.into(),
            bufs,
            iov: Vec::new(),
            offset,
        }
    }
}

// SAFETY: the iovec array and every buffer are owned; the iovecs are built after boxing and
// point into the buffers' spare capacity.
unsafe impl<B: IoBufMut> Operation for Readv<B> {
    type Output = (io::Result<usize>, Vec<B>);
    fn build(&mut self) -> Entry {
        self.iov = self
            .bufs
            .iter_mut()
            .map(|b| {
                let init = b.bytes_init();
                libc::iovec {
                    // SAFETY: init <= bytes_total.
                    iov_base: unsafe { b.stable_mut_ptr().add(init) }.cast(),
                    iov_len: b.bytes_total() - init,
                }
            })
            .collect();
        let n = len32(self.iov.len());
        with_fd!(self.fd, f => opcode::Readv::new(f, self.iov.as_ptr(), n).offset(self.offset).build())
    }
    fn complete(mut self, res: i32, _: u32) -> Self::Output {
        let r = cqe_result(res);
        if let Ok(mut n) = r {
            for (b, iov) in self.bufs.iter_mut().zip(&self.iov) {
                let k = n.min(iov.iov_len);
                let init = b.bytes_init();
                // SAFETY: the kernel filled the iovecs in order; `k` bytes of this one.
                unsafe { b.set_init(init + k) };
                n -= k;
            }
        }
        (r, self.bufs)
    }
}

/// `pwritev(2)` of the initialised bytes of each buffer in turn.
pub struct Writev<B> {
    fd: Fd,
    bufs: Vec<B>,
    iov: Vec<libc::iovec>,
    offset: u64,
}

impl<B: IoBuf> Writev<B> {
    /// Writes `bufs` at `offset`.
    pub fn new(fd: impl Into<Fd>, bufs: Vec<B>, offset: u64) -> Writev<B> {
        Writev {
            fd: fd.into(),
            bufs,
            iov: Vec::new(),
            offset,
        }
    }
}

// SAFETY: as for Readv, read-only.
unsafe impl<B: IoBuf> Operation for Writev<B> {
    type Output = (io::Result<usize>, Vec<B>);
    fn build(&mut self) -> Entry {
        self.iov = self
            .bufs
            .iter()
            .map(|b| libc::iovec {
                iov_base: b.stable_ptr() as *mut libc::c_void,
                iov_len: b.bytes_init(),
            })
            .collect();
        let n = len32(self.iov.len());
        with_fd!(self.fd, f => opcode::Writev::new(f, self.iov.as_ptr(), n).offset(self.offset).build())
    }
    fn complete(self, res: i32, _: u32) -> Self::Output {
        (cqe_result(res), self.bufs)
    }
}

/// `IORING_OP_READ_FIXED`: a read into a registered buffer.
pub struct ReadFixed {
    fd: Fd,
    buf: FixedBuf,
    offset: u64,
    want: u32,
    ring_id: u64,
}

impl ReadFixed {
    /// Reads into the spare capacity of `buf` at `offset`. `buf` must come from the pool of the
    /// ring that runs the operation (else the result is `EINVAL`).
    pub fn new(fd: impl Into<Fd>, buf: FixedBuf, offset: u64) -> ReadFixed {
        let want = len32(buf.capacity() - buf.len());
        let ring_id = buf.ring_id();
        ReadFixed {
            fd: fd.into(),
            buf,
            offset,
            want,
            ring_id,
        }
    }
}

// SAFETY: points into the registered buffer owned by `buf` (kept alive by its Rc).
unsafe impl Operation for ReadFixed {
    type Output = (io::Result<usize>, FixedBuf);
    fn build(&mut self) -> Entry {
        let init = self.buf.len();
        // SAFETY: init <= capacity.
        let ptr = unsafe { self.buf.stable_mut_ptr().add(init) };
        let idx = self.buf.buf_index();
        with_fd!(self.fd, f => opcode::ReadFixed::new(f, ptr, self.want, idx).offset(self.offset).build())
    }
    fn complete(mut self, res: i32, _: u32) -> Self::Output {
        let r = cqe_result(res);
        if let Ok(n) = r {
            let init = self.buf.len();
            // SAFETY: the kernel wrote `n` bytes after the initialised part.
            unsafe { self.buf.set_init(init + n.min(self.want as usize)) };
        }
        (r, self.buf)
    }
    fn success_result(&self) -> Option<i32> {
        i32::try_from(self.want).ok()
    }
    fn registered_with(&self) -> Option<u64> {
        Some(self.ring_id)
    }
}

/// `IORING_OP_WRITE_FIXED`: a write from a registered buffer.
pub struct WriteFixed {
    fd: Fd,
    buf: FixedBuf,
    offset: u64,
    ring_id: u64,
}

impl WriteFixed {
    /// Writes the initialised bytes of `buf` at `offset`.
    pub fn new(fd: impl Into<Fd>, buf: FixedBuf, offset: u64) -> WriteFixed {
        let ring_id = buf.ring_id();
        WriteFixed {
            fd: fd.into(),
            buf,
            offset,
            ring_id,
        }
    }
}

// SAFETY: points into the registered buffer owned by `buf`.
unsafe impl Operation for WriteFixed {
    type Output = (io::Result<usize>, FixedBuf);
    fn build(&mut self) -> Entry {
        let idx = self.buf.buf_index();
        let len = len32(self.buf.len());
        with_fd!(self.fd, f => opcode::WriteFixed::new(f, self.buf.stable_ptr(), len, idx).offset(self.offset).build())
    }
    fn complete(self, res: i32, _: u32) -> Self::Output {
        (cqe_result(res), self.buf)
    }
    fn success_result(&self) -> Option<i32> {
        i32::try_from(self.buf.len()).ok()
    }
    fn registered_with(&self) -> Option<u64> {
        Some(self.ring_id)
    }
}

macro_rules! simple_fd_op {
    ($(#[$m:meta])* $name:ident { $($field:ident : $ty:ty),* } => |$s:ident, $f:ident| $build:expr) => {
        $(#[$m])*
        pub struct $name {
            fd: Fd,
            $($field: $ty,)*
        }
        impl $name {
            #[allow(missing_docs)]
            pub fn new(fd: impl Into<Fd>, $($field: $ty),*) -> $name {
                $name { fd: fd.into(), $($field,)* }
            }
        }
        // SAFETY: no pointers in the SQE.
        unsafe impl Operation for $name {
            type Output = io::Result<()>;
            fn build(&mut self) -> Entry {
                let $s = &*self;
                with_fd!($s.fd, $f => $build)
            }
            fn complete(self, res: i32, _: u32) -> Self::Output {
                unit(res)
            }
            fn success_result(&self) -> Option<i32> {
                Some(0)
            }
        }
    };
}

simple_fd_op!(
    /// `fsync(2)` / `fdatasync(2)` (`datasync = true`).
    Fsync { datasync: bool } => |s, f| {
        let fl = if s.datasync { types::FsyncFlags::DATASYNC } else { types::FsyncFlags::empty() };
        opcode::Fsync::new(f).flags(fl).build()
    }
);
simple_fd_op!(
    /// `fallocate(2)`: `mode` (`FALLOC_FL_*`), `offset`, `len`.
    Fallocate { mode: i32, offset: u64, len: u64 } => |s, f| opcode::Fallocate::new(f, s.len).offset(s.offset).mode(s.mode).build()
);
simple_fd_op!(
    /// `posix_fadvise(2)`: `offset`, `len`, `advice` (`POSIX_FADV_*`).
    Fadvise { offset: u64, len: i64, advice: i32 } => |s, f| opcode::Fadvise::new(f, s.len, s.advice).offset(s.offset).build()
);
simple_fd_op!(
    /// `ftruncate(2)` (kernel 6.9+).
    Ftruncate { len: u64 } => |s, f| opcode::Ftruncate::new(f, s.len).build()
);

/// Defines a path-based operation with a unit result: a struct that owns its directory
/// descriptors and `CString` paths, a `new` taking every field in order, and an `Operation`
/// impl whose SQE points only into those owned fields.
macro_rules! path_op {
    ($(#[$m:meta])* $name:ident { $($field:ident : $ty:ty),* } => |$s:ident| $build:expr) => {
        $(#[$m])*
        pub struct $name {
            $($field: $ty,)*
        }
        impl $name {
            #[allow(missing_docs, clippy::too_many_arguments)]
            pub fn new($($field: $ty),*) -> $name {
                $name { $($field,)* }
            }
        }
        // SAFETY: the SQE points only at `CString`s owned by the op, which the ring keeps alive
        // (parked if the future is dropped) until the final CQE.
        unsafe impl Operation for $name {
            type Output = io::Result<()>;
            fn build(&mut self) -> Entry {
                let $s = &*self;
                $build
            }
            fn complete(self, res: i32, _: u32) -> Self::Output {
                unit(res)
            }
            fn success_result(&self) -> Option<i32> {
                Some(0)
            }
        }
    };
}

path_op!(
    /// `mkdirat(2)`.
    MkdirAt { dirfd: RawFd, path: CString, mode: u32 } => |s| {
        opcode::MkDirAt::new(types::Fd(s.dirfd), s.path.as_ptr()).mode(s.mode).build()
    }
);
path_op!(
    /// `symlinkat(2)`: creates `linkpath` (relative to `dirfd`) pointing at `target`.
    SymlinkAt { target: CString, dirfd: RawFd, linkpath: CString } => |s| {
        opcode::SymlinkAt::new(types::Fd(s.dirfd), s.target.as_ptr(), s.linkpath.as_ptr()).build()
    }
);
path_op!(
    /// `linkat(2)`.
    LinkAt { olddirfd: RawFd, oldpath: CString, newdirfd: RawFd, newpath: CString, flags: i32 } => |s| {
        opcode::LinkAt::new(
            types::Fd(s.olddirfd),
            s.oldpath.as_ptr(),
            types::Fd(s.newdirfd),
            s.newpath.as_ptr(),
        )
        .flags(s.flags)
        .build()
    }
);
path_op!(
    /// `renameat2(2)` (`flags`: `RENAME_NOREPLACE`, `RENAME_EXCHANGE`, ...).
    RenameAt { olddirfd: RawFd, oldpath: CString, newdirfd: RawFd, newpath: CString, flags: u32 } => |s| {
        opcode::RenameAt::new(
            types::Fd(s.olddirfd),
            s.oldpath.as_ptr(),
            types::Fd(s.newdirfd),
            s.newpath.as_ptr(),
        )
        .flags(s.flags)
        .build()
    }
);
path_op!(
    /// `unlinkat(2)` (`flags`: `AT_REMOVEDIR` for directories).
    UnlinkAt { dirfd: RawFd, path: CString, flags: i32 } => |s| {
        opcode::UnlinkAt::new(types::Fd(s.dirfd), s.path.as_ptr()).flags(s.flags).build()
    }
);

/// Where an xattr operation applies.
pub enum XattrTarget {
    /// An open file (`fsetxattr` / `fgetxattr`).
    Fd(Fd),
    /// A path, following symlinks (`setxattr` / `getxattr`).
    Path(CString),
}

/// `fsetxattr(2)` / `setxattr(2)`.
pub struct SetXattr {
    target: XattrTarget,
    name: CString,
    value: Vec<u8>,
    flags: i32,
}

impl SetXattr {
    /// `flags`: `XATTR_CREATE` / `XATTR_REPLACE` or 0.
    pub fn new(target: XattrTarget, name: CString, value: Vec<u8>, flags: i32) -> SetXattr {
        SetXattr {
            target,
            name,
            value,
            flags,
        }
    }
}

// SAFETY: the SQE points at owned `name`, `value` and (path form) path.
unsafe impl Operation for SetXattr {
    type Output = io::Result<()>;
    fn build(&mut self) -> Entry {
        let len = len32(self.value.len());
        let v = self.value.as_ptr().cast();
        match &self.target {
            XattrTarget::Fd(fd) => {
                with_fd!(*fd, f => opcode::FSetXattr::new(f, self.name.as_ptr(), v, len).flags(self.flags).build())
            }
            XattrTarget::Path(p) => opcode::SetXattr::new(self.name.as_ptr(), v, p.as_ptr(), len)
                .flags(self.flags)
                .build(),
        }
    }
    fn complete(self, res: i32, _: u32) -> Self::Output {
        unit(res)
    }
}

/// `fgetxattr(2)` / `getxattr(2)` into the spare capacity of a `Vec` (capacity 0 asks for the size).
pub struct GetXattr {
    target: XattrTarget,
    name: CString,
    buf: Vec<u8>,
}

impl GetXattr {
    /// Reads the value of `name` into `buf` (cleared first; its capacity bounds the value).
    pub fn new(target: XattrTarget, name: CString, mut buf: Vec<u8>) -> GetXattr {
        buf.clear();
        GetXattr { target, name, buf }
    }
}

// SAFETY: the SQE points at owned `name`, the owned `buf` allocation and (path form) path.
unsafe impl Operation for GetXattr {
    type Output = (io::Result<usize>, Vec<u8>);
    fn build(&mut self) -> Entry {
        let len = len32(self.buf.capacity());
        let v = self.buf.as_mut_ptr().cast();
        match &self.target {
            XattrTarget::Fd(fd) => {
                with_fd!(*fd, f => opcode::FGetXattr::new(f, self.name.as_ptr(), v, len).build())
            }
            XattrTarget::Path(p) => {
                opcode::GetXattr::new(self.name.as_ptr(), v, p.as_ptr(), len).build()
            }
        }
    }
    fn complete(mut self, res: i32, _: u32) -> Self::Output {
        let r = cqe_result(res);
        if let Ok(n) = r {
            if self.buf.capacity() > 0 {
                // SAFETY: the kernel wrote `n` <= capacity bytes.
                unsafe { self.buf.set_len(n.min(self.buf.capacity())) };
            }
        }
        (r, self.buf)
    }
}

/// `splice(2)`: moves up to `len` bytes between two fds, one of which must be a pipe.
pub struct Splice {
    fd_in: Fd,
    off_in: i64,
    fd_out: Fd,
    off_out: i64,
    len: u32,
    flags: u32,
}

impl Splice {
    /// Offsets `None` mean "current position" (required for pipes).
    pub fn new(
        fd_in: impl Into<Fd>,
        off_in: Option<u64>,
        fd_out: impl Into<Fd>,
        off_out: Option<u64>,
        len: u32,
    ) -> Splice {
        let off = |o: Option<u64>| o.map(|v| v as i64).unwrap_or(-1);
        Splice {
            fd_in: fd_in.into(),
            off_in: off(off_in),
            fd_out: fd_out.into(),
            off_out: off(off_out),
            len,
            flags: 0,
        }
    }
}

// SAFETY: no pointers.
unsafe impl Operation for Splice {
    type Output = io::Result<usize>;
    fn build(&mut self) -> Entry {
        let (off_in, off_out, len) = (self.off_in, self.off_out, self.len);
        let e = with_fd!(self.fd_in, a => with_fd!(self.fd_out, b =>
            opcode::Splice::new(a, off_in, b, off_out, len)));
        e.flags(self.flags).build()
    }
    fn complete(self, res: i32, _: u32) -> Self::Output {
        cqe_result(res)
    }
}

/// `accept4(2)` of one connection (`SOCK_CLOEXEC`).
pub struct Accept {
    fd: Fd,
}

impl Accept {
    #[allow(missing_docs)]
    pub fn new(fd: impl Into<Fd>) -> Accept {
        Accept { fd: fd.into() }
    }
}

// SAFETY: null address pointers.
unsafe impl Operation for Accept {
    type Output = io::Result<OwnedFd>;
    fn build(&mut self) -> Entry {
        with_fd!(self.fd, f => opcode::Accept::new(f, std::ptr::null_mut(), std::ptr::null_mut()).flags(libc::SOCK_CLOEXEC).build())
    }
    fn complete(self, res: i32, _: u32) -> Self::Output {
        fd_result(res)
    }
    fn discard(&self, res: i32) -> Cleanup {
        if res >= 0 {
            Cleanup::CloseFd(res)
        } else {
            Cleanup::None
        }
    }
}

/// Multishot accept: one SQE, one CQE per connection (used by [`crate::AcceptStream`]).
pub struct AcceptMulti {
    fd: Fd,
}

impl AcceptMulti {
    /// Crate-private: multishot results are only consumed through [`crate::AcceptStream`].
    pub(crate) fn new(fd: impl Into<Fd>) -> AcceptMulti {
        AcceptMulti { fd: fd.into() }
    }
}

// SAFETY: no pointers.
unsafe impl Operation for AcceptMulti {
    type Output = io::Result<OwnedFd>;
    const MULTISHOT: bool = true;
    fn build(&mut self) -> Entry {
        with_fd!(self.fd, f => opcode::AcceptMulti::new(f).flags(libc::SOCK_CLOEXEC).build())
    }
    fn complete(self, res: i32, _: u32) -> Self::Output {
        fd_result(res)
    }
    fn discard(&self, res: i32) -> Cleanup {
        if res >= 0 {
            Cleanup::CloseFd(res)
        } else {
            Cleanup::None
        }
    }
}

/// `connect(2)`.
pub struct Connect {
    fd: Fd,
    addr: Box<libc::sockaddr_storage>,
    len: libc::socklen_t,
}

impl Connect {
    #[allow(missing_docs)]
    pub fn new(fd: impl Into<Fd>, addr: SocketAddr) -> Connect {
        let (addr, len) = sockaddr(addr);
        Connect {
            fd: fd.into(),
            addr: Box::new(addr),
            len,
        }
    }
}

/// Encodes a socket address as a `sockaddr_storage`.
pub fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain old data; zero is valid.
    let mut st: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_in fits in sockaddr_storage, which is suitably aligned.
            unsafe { std::ptr::write((&mut st as *mut libc::sockaddr_storage).cast(), sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_in6 fits in sockaddr_storage, which is suitably aligned.
            unsafe { std::ptr::write((&mut st as *mut libc::sockaddr_storage).cast(), sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (st, len as libc::socklen_t)
}

// SAFETY: the SQE points at `addr`, a heap box owned.
unsafe impl Operation for Connect {
    type Output = io::Result<()>;
    fn build(&mut self) -> Entry {
        let a = (&*self.addr as *const libc::sockaddr_storage).cast();
        with_fd!(self.fd, f => opcode::Connect::new(f, a, self.len).build())
    }
    fn complete(self, res: i32, _: u32) -> Self::Output {
        unit(res)
    }
}

/// `send(2)` of the initialised bytes of `buf` (`MSG_NOSIGNAL` added); with `zero_copy`,
/// `IORING_OP_SEND_ZC` (the buffer comes back after the kernel's notification).
pub struct Send<B> {
    fd: Fd,
    buf: B,
    flags: i32,
    zero_copy: bool,
}

impl<B: IoBuf> Send<B> {
    #[allow(missing_docs)]
    pub fn new(fd: impl Into<Fd>, buf: B, flags: i32) -> Send<B> {
        Send {
            fd: fd.into(),
            buf,
            flags: flags | libc::MSG_NOSIGNAL,
            zero_copy: false,
        }
    }
    /// Uses zero-copy send (kernel 6.0+; check [`crate::Features::supports`]).
    pub fn zero_copy(mut self) -> Send<B> {
        self.zero_copy = true;
        self
    }
}

// SAFETY: points at `buf`'s initialised bytes, owned until the final CQE (the notification for
// zero-copy sends, which the ring waits for).
unsafe impl<B: IoBuf> Operation for Send<B> {
    type Output = (io::Result<usize>, B);
    fn build(&mut self) -> Entry {
        let len = len32(self.buf.bytes_init());
        let p = self.buf.stable_ptr();
        if self.zero_copy {
            with_fd!(self.fd, f => opcode::SendZc::new(f, p, len).flags(self.flags).build())
        } else {
            with_fd!(self.fd, f => opcode::Send::new(f, p, len).flags(self.flags).build())
        }
    }
    fn complete(self, res: i32, _: u32) -> Self::Output {
        (cqe_result(res), self.buf)
    }
}

/// `recv(2)` into the spare capacity of `buf`.
pub struct Recv<B> {
    fd: Fd,
    buf: B,
    flags: i32,
    want: u32,
}

impl<B: IoBufMut> Recv<B> {
    #[allow(missing_docs)]
    pub fn new(fd: impl Into<Fd>, buf: B, flags: i32) -> Recv<B> {
        let want = len32(buf.bytes_total() - buf.bytes_init());
        Recv {
            fd: fd.into(),
            buf,
            flags,
            want,
        }
    }
}

// SAFETY: points into `buf`'s spare capacity, owned.
unsafe impl<B: IoBufMut> Operation for Recv<B> {
    type Output = (io::Result<usize>, B);
    fn build(&mut self) -> Entry {
        let p = spare_ptr(&mut self.buf);
        with_fd!(self.fd, f => opcode::Recv::new(f, p, self.want).flags(self.flags).build())
    }
    fn complete(mut self, res: i32, _: u32) -> Self::Output {
        (filled(&mut self.buf, res, self.want), self.buf)
    }
}

/// A timer: completes after `dur` (`IORING_OP_TIMEOUT`).
pub struct Timeout {
    ts: Box<types::Timespec>,
}

impl Timeout {
    #[allow(missing_docs)]
    pub fn new(dur: Duration) -> Timeout {
        Timeout {
            ts: Box::new(
                types::Timespec::new()
                    .sec(dur.as_secs())
                    .nsec(dur.subsec_nanos()),
            ),
        }
    }
}

// SAFETY: points at `ts`, a heap box owned.
unsafe impl Operation for Timeout {
    type Output = io::Result<()>;
    fn build(&mut self) -> Entry {
        opcode::Timeout::new(&*self.ts).build()
    }
    fn complete(self, res: i32, _: u32) -> Self::Output {
        if res == -libc::ETIME {
            Ok(())
        } else {
            unit(res)
        }
    }
}

/// Cancels every operation in flight on `fd` (`IORING_ASYNC_CANCEL_FD | ALL`); yields how many.
pub struct CancelFd {
    fd: Fd,
}

impl CancelFd {
    #[allow(missing_docs)]
    pub fn new(fd: impl Into<Fd>) -> CancelFd {
        CancelFd { fd: fd.into() }
    }
}

// SAFETY: no pointers.
unsafe impl Operation for CancelFd {
    type Output = io::Result<usize>;
    fn build(&mut self) -> Entry {
        let b = with_fd!(self.fd, f => types::CancelBuilder::fd(f));
        opcode::AsyncCancel2::new(b.all()).build()
    }
    fn complete(self, res: i32, _: u32) -> Self::Output {
        if res == -libc::ENOENT {
            Ok(0)
        } else {
            cqe_result(res)
        }
    }
}

/// A no-op (for tests and wake-ups).
pub struct Nop;

// SAFETY: no pointers.
unsafe impl Operation for Nop {
    type Output = io::Result<()>;
    fn build(&mut self) -> Entry {
        opcode::Nop::new().build()
    }
    fn complete(self, res: i32, _: u32) -> Self::Output {
        unit(res)
    }
    fn success_result(&self) -> Option<i32> {
        Some(0)
    }
}

/// Convenience methods: each builds the operation and returns its future.
impl Handle {
    /// [`Statx`].
    pub async fn statx(
        &self,
        dirfd: RawFd,
        path: impl AsRef<Path>,
        flags: i32,
        mask: u32,
    ) -> io::Result<libc::statx> {
        self.op(Statx::new(dirfd, cstr(path)?, flags, mask)).await
    }
    /// [`OpenAt`].
    pub async fn open_at(
        &self,
        dirfd: RawFd,
        path: impl AsRef<Path>,
        flags: i32,
        mode: u32,
    ) -> io::Result<OwnedFd> {
        self.op(OpenAt::new(dirfd, cstr(path)?, flags, mode)).await
    }
    /// [`Read`]: one read (may be short).
    pub fn read_at<B: IoBufMut>(&self, fd: impl Into<Fd>, buf: B, offset: u64) -> Op<Read<B>> {
        self.op(Read::new(fd, buf, offset))
    }
    /// [`Write`]: one write (may be short).
    pub fn write_at<B: IoBuf>(&self, fd: impl Into<Fd>, buf: B, offset: u64) -> Op<Write<B>> {
        self.op(Write::new(fd, buf, offset))
    }
    /// Reads until `buf` is full (its capacity) or end of file; resubmits after short reads.
    /// Returns the number of bytes read.
    pub async fn read_full_at<B: IoBufMut>(
        &self,
        fd: impl Into<Fd>,
        mut buf: B,
        offset: u64,
    ) -> (io::Result<usize>, B) {
        let fd = fd.into();
        let mut total = 0usize;
        while buf.bytes_init() < buf.bytes_total() {
            let (r, b) = self.read_at(fd, buf, offset + total as u64).await;
            buf = b;
            match r {
                Ok(0) => break,
                Ok(n) => total += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return (Err(e), buf),
            }
        }
        (Ok(total), buf)
    }
    /// Writes all initialised bytes of `buf`, resubmitting the rest after short writes.
    pub async fn write_all_at<B: IoBuf>(
        &self,
        fd: impl Into<Fd>,
        buf: B,
        offset: u64,
    ) -> (io::Result<()>, B) {
        let fd = fd.into();
        let len = buf.bytes_init();
        let mut done = 0usize;
        let mut buf = buf;
        // The first write uses the caller's buffer as is; after a short write the remainder is
        // written from a copy (short writes on regular files are rare).
        let (r, b) = self.write_at(fd, buf, offset).await;
        buf = b;
        match r {
            Ok(n) => done += n,
            Err(e) => return (Err(e), buf),
        }
        if done < len {
            // SAFETY: `stable_ptr` points at `bytes_init` initialised bytes owned by `buf`.
            let rest =
                unsafe { std::slice::from_raw_parts(buf.stable_ptr().add(done), len - done) }
                    .to_vec();
            let mut rest = rest;
            while done < len {
                let (r, b) = self.write_at(fd, rest, offset + done as u64).await;
                match r {
                    Ok(0) => return (Err(io::Error::from(io::ErrorKind::WriteZero)), buf),
                    Ok(n) => {
                        done += n;
                        let mut b = b;
                        b.drain(..n);
                        rest = b;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => rest = b,
                    Err(e) => return (Err(e), buf),
                }
            }
        }
        (Ok(()), buf)
    }
    /// [`Close`].
    pub async fn close(&self, fd: OwnedFd) -> io::Result<()> {
        self.op(Close::new(fd)).await
    }
    /// [`Fsync`].
    pub async fn fsync(&self, fd: impl Into<Fd>, datasync: bool) -> io::Result<()> {
        self.op(Fsync::new(fd, datasync)).await
    }
    /// [`Timeout`]: sleeps for `dur`.
    pub async fn sleep(&self, dur: Duration) -> io::Result<()> {
        self.op(Timeout::new(dur)).await
    }
    /// [`Recv`].
    pub fn recv<B: IoBufMut>(&self, fd: impl Into<Fd>, buf: B) -> Op<Recv<B>> {
        self.op(Recv::new(fd, buf, 0))
    }
    /// [`Send`].
    pub fn send<B: IoBuf>(&self, fd: impl Into<Fd>, buf: B) -> Op<Send<B>> {
        self.op(Send::new(fd, buf, 0))
    }
}
