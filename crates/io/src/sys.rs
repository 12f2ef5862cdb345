//! Blocking syscalls, run on pool threads. Each returns `io::Result` with the errno on failure.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

fn check(r: libc::c_int) -> io::Result<()> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn check_size(r: libc::ssize_t) -> io::Result<usize> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

pub(crate) fn statx(dirfd: RawFd, path: &CStr, flags: i32, mask: u32) -> io::Result<libc::statx> {
    // SAFETY: statx is plain old data; zero is a valid value.
    let mut st: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is NUL-terminated, `st` is a live, writable statx.
    check(unsafe { libc::statx(dirfd, path.as_ptr(), flags, mask, &mut st) })?;
    Ok(st)
}

pub(crate) fn openat(dirfd: RawFd, path: &CStr, flags: i32, mode: u32) -> io::Result<OwnedFd> {
    // SAFETY: `path` is NUL-terminated.
    let fd = unsafe { libc::openat(dirfd, path.as_ptr(), flags | libc::O_CLOEXEC, mode) };
    check(fd)?;
    // SAFETY: a fresh fd we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `struct open_how` for openat2.
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

pub(crate) fn openat2(
    dirfd: RawFd,
    path: &CStr,
    flags: i32,
    mode: u32,
    resolve: u64,
) -> io::Result<OwnedFd> {
    let how = OpenHow {
        flags: (flags | libc::O_CLOEXEC) as u64,
        mode: u64::from(mode),
        resolve,
    };
    // SAFETY: `path` is NUL-terminated; `how` is a live open_how of the size passed.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dirfd,
            path.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// pread into the spare capacity of `buf` (offset u64::MAX: read at the file position).
pub(crate) fn read_at(fd: RawFd, buf: &mut Vec<u8>, offset: u64) -> io::Result<usize> {
    let init = buf.len();
    let want = buf.capacity() - init;
    // SAFETY: writes at most `want` bytes into the spare capacity of `buf`.
    let r = unsafe {
        let p = buf.as_mut_ptr().add(init).cast();
        if offset == u64::MAX {
            libc::read(fd, p, want)
        } else {
            libc::pread(fd, p, want, offset as libc::off_t)
        }
    };
    let n = check_size(r)?;
    // SAFETY: the kernel initialised `n` more bytes.
    unsafe { buf.set_len(init + n) };
    Ok(n)
}

pub(crate) fn write_at(fd: RawFd, buf: &[u8], offset: u64) -> io::Result<usize> {
    // SAFETY: reads `buf.len()` bytes from a live slice.
    let r = unsafe {
        if offset == u64::MAX {
            libc::write(fd, buf.as_ptr().cast(), buf.len())
        } else {
            libc::pwrite(fd, buf.as_ptr().cast(), buf.len(), offset as libc::off_t)
        }
    };
    check_size(r)
}

pub(crate) fn fsync(fd: RawFd, datasync: bool) -> io::Result<()> {
    // SAFETY: plain syscalls on an fd.
    check(unsafe {
        if datasync {
            libc::fdatasync(fd)
        } else {
            libc::fsync(fd)
        }
    })
}

pub(crate) fn fallocate(fd: RawFd, mode: i32, offset: u64, len: u64) -> io::Result<()> {
    // SAFETY: plain syscall.
    check(unsafe { libc::fallocate(fd, mode, offset as libc::off_t, len as libc::off_t) })
}

pub(crate) fn fadvise(fd: RawFd, offset: u64, len: i64, advice: i32) -> io::Result<()> {
    // SAFETY: plain syscall; posix_fadvise returns the error number instead of setting errno.
    let r = unsafe { libc::posix_fadvise(fd, offset as libc::off_t, len as libc::off_t, advice) };
    if r != 0 {
        Err(io::Error::from_raw_os_error(r))
    } else {
        Ok(())
    }
}

pub(crate) fn ftruncate(fd: RawFd, len: u64) -> io::Result<()> {
    // SAFETY: plain syscall.
    check(unsafe { libc::ftruncate(fd, len as libc::off_t) })
}

pub(crate) fn mkdirat(dirfd: RawFd, path: &CStr, mode: u32) -> io::Result<()> {
    // SAFETY: `path` is NUL-terminated.
    check(unsafe { libc::mkdirat(dirfd, path.as_ptr(), mode) })
}

pub(crate) fn symlinkat(target: &CStr, dirfd: RawFd, link: &CStr) -> io::Result<()> {
    // SAFETY: both strings are NUL-terminated.
    check(unsafe { libc::symlinkat(target.as_ptr(), dirfd, link.as_ptr()) })
}

pub(crate) fn linkat(od: RawFd, op: &CStr, nd: RawFd, np: &CStr, flags: i32) -> io::Result<()> {
    // SAFETY: both strings are NUL-terminated.
    check(unsafe { libc::linkat(od, op.as_ptr(), nd, np.as_ptr(), flags) })
}

pub(crate) fn renameat2(od: RawFd, op: &CStr, nd: RawFd, np: &CStr, flags: u32) -> io::Result<()> {
    // SAFETY: both strings are NUL-terminated.
    check(unsafe { libc::renameat2(od, op.as_ptr(), nd, np.as_ptr(), flags) })
}

pub(crate) fn unlinkat(dirfd: RawFd, path: &CStr, flags: i32) -> io::Result<()> {
    // SAFETY: `path` is NUL-terminated.
    check(unsafe { libc::unlinkat(dirfd, path.as_ptr(), flags) })
}

pub(crate) fn readlinkat(dirfd: RawFd, path: &CStr) -> io::Result<Vec<u8>> {
    let mut cap = 256usize;
    loop {
        let mut buf = vec![0u8; cap];
        // SAFETY: writes at most `cap` bytes into `buf`.
        let r = unsafe { libc::readlinkat(dirfd, path.as_ptr(), buf.as_mut_ptr().cast(), cap) };
        let n = check_size(r)?;
        if n < cap {
            buf.truncate(n);
            return Ok(buf);
        }
        cap *= 4;
        if cap > 1 << 20 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "symlink target too long",
            ));
        }
    }
}

pub(crate) fn utimensat(
    dirfd: RawFd,
    path: Option<&CStr>,
    times: &[libc::timespec; 2],
    flags: i32,
) -> io::Result<()> {
    // SAFETY: `path` is NUL-terminated when present; `times` is a live array of two. glibc
    // rejects a NULL path in utimensat, so the fd form goes through futimens.
    check(unsafe {
        match path {
            Some(p) => libc::utimensat(dirfd, p.as_ptr(), times.as_ptr(), flags),
            None => libc::futimens(dirfd, times.as_ptr()),
        }
    })
}

pub(crate) fn fchmodat(dirfd: RawFd, path: Option<&CStr>, mode: u32, flags: i32) -> io::Result<()> {
    // SAFETY: plain syscalls; `path` NUL-terminated when present.
    check(unsafe {
        match path {
            Some(p) => libc::fchmodat(dirfd, p.as_ptr(), mode, flags),
            None => libc::fchmod(dirfd, mode),
        }
    })
}

pub(crate) fn fchownat(
    dirfd: RawFd,
    path: Option<&CStr>,
    uid: u32,
    gid: u32,
    flags: i32,
) -> io::Result<()> {
    // SAFETY: plain syscalls; `path` NUL-terminated when present.
    check(unsafe {
        match path {
            Some(p) => libc::fchownat(dirfd, p.as_ptr(), uid, gid, flags),
            None => libc::fchown(dirfd, uid, gid),
        }
    })
}

pub(crate) fn mknodat(dirfd: RawFd, path: &CStr, mode: u32, dev: u64) -> io::Result<()> {
    // SAFETY: `path` is NUL-terminated.
    check(unsafe { libc::mknodat(dirfd, path.as_ptr(), mode, dev) })
}

pub(crate) fn copy_file_range(
    fd_in: RawFd,
    off_in: u64,
    fd_out: RawFd,
    off_out: u64,
    len: usize,
) -> io::Result<usize> {
    let mut oi = off_in as libc::loff_t;
    let mut oo = off_out as libc::loff_t;
    // SAFETY: the offsets are live locals the kernel updates.
    check_size(
        unsafe { libc::copy_file_range(fd_in, &mut oi, fd_out, &mut oo, len, 0) } as libc::ssize_t,
    )
}

pub(crate) fn ficlone(dst: RawFd, src: RawFd) -> io::Result<()> {
    // SAFETY: FICLONE takes the source fd as its argument.
    check(unsafe { libc::ioctl(dst, libc::FICLONE as _, src) })
}

pub(crate) fn lseek(fd: RawFd, offset: u64, whence: i32) -> io::Result<Option<u64>> {
    // SAFETY: plain syscall.
    let r = unsafe { libc::lseek(fd, offset as libc::off_t, whence) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENXIO) {
            return Ok(None);
        }
        return Err(e);
    }
    Ok(Some(r as u64))
}

pub(crate) fn splice(
    fd_in: RawFd,
    off_in: Option<u64>,
    fd_out: RawFd,
    off_out: Option<u64>,
    len: usize,
) -> io::Result<usize> {
    let mut oi = off_in.map(|o| o as libc::loff_t);
    let mut oo = off_out.map(|o| o as libc::loff_t);
    let pi = oi
        .as_mut()
        .map(|p| p as *mut _)
        .unwrap_or(std::ptr::null_mut());
    let po = oo
        .as_mut()
        .map(|p| p as *mut _)
        .unwrap_or(std::ptr::null_mut());
    // SAFETY: offsets are null or live locals.
    check_size(unsafe { libc::splice(fd_in, pi, fd_out, po, len, 0) })
}

/// Where an xattr call applies.
pub(crate) enum XTarget {
    Fd(RawFd),
    Path(CString),
    LPath(CString),
}

pub(crate) fn getxattr(t: &XTarget, name: &CStr) -> io::Result<Vec<u8>> {
    let call = |buf: *mut libc::c_void, cap: usize| -> libc::ssize_t {
        // SAFETY: writes at most `cap` bytes at `buf` (null with cap 0 asks for the size);
        // strings are NUL-terminated.
        unsafe {
            match t {
                XTarget::Fd(fd) => libc::fgetxattr(*fd, name.as_ptr(), buf, cap),
                XTarget::Path(path) => libc::getxattr(path.as_ptr(), name.as_ptr(), buf, cap),
                XTarget::LPath(path) => libc::lgetxattr(path.as_ptr(), name.as_ptr(), buf, cap),
            }
        }
    };
    let mut cap = 256usize;
    for _ in 0..8 {
        let mut buf = vec![0u8; cap];
        match check_size(call(buf.as_mut_ptr().cast(), cap)) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Err(e) if e.raw_os_error() == Some(libc::ERANGE) => {
                cap = check_size(call(std::ptr::null_mut(), 0))?
                    .max(cap.saturating_mul(2))
                    .min(1 << 20);
            }
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::from_raw_os_error(libc::ERANGE))
}

pub(crate) fn setxattr(t: &XTarget, name: &CStr, value: &[u8], flags: i32) -> io::Result<()> {
    let v = value.as_ptr().cast();
    // SAFETY: reads `value.len()` bytes; strings NUL-terminated.
    check(unsafe {
        match t {
            XTarget::Fd(fd) => libc::fsetxattr(*fd, name.as_ptr(), v, value.len(), flags),
            XTarget::Path(path) => {
                libc::setxattr(path.as_ptr(), name.as_ptr(), v, value.len(), flags)
            }
            XTarget::LPath(path) => {
                libc::lsetxattr(path.as_ptr(), name.as_ptr(), v, value.len(), flags)
            }
        }
    })
}

pub(crate) fn listxattr(t: &XTarget) -> io::Result<Vec<Vec<u8>>> {
    let call = |buf: *mut libc::c_char, cap: usize| -> libc::ssize_t {
        // SAFETY: writes at most `cap` bytes at `buf` (null with cap 0 asks for the size).
        unsafe {
            match t {
                XTarget::Fd(fd) => libc::flistxattr(*fd, buf, cap),
                XTarget::Path(p) => libc::listxattr(p.as_ptr(), buf, cap),
                XTarget::LPath(p) => libc::llistxattr(p.as_ptr(), buf, cap),
            }
        }
    };
    for _ in 0..8 {
        let size = check_size(call(std::ptr::null_mut(), 0))?;
        if size == 0 {
            return Ok(Vec::new());
        }
        let mut buf = vec![0u8; size];
        match check_size(call(buf.as_mut_ptr().cast(), size)) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf
                    .split(|&b| b == 0)
                    .filter(|s| !s.is_empty())
                    .map(|s| s.to_vec())
                    .collect());
            }
            Err(e) if e.raw_os_error() == Some(libc::ERANGE) => continue, // grew meanwhile
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::from_raw_os_error(libc::ERANGE))
}

pub(crate) fn removexattr(t: &XTarget, name: &CStr) -> io::Result<()> {
    // SAFETY: strings NUL-terminated.
    check(unsafe {
        match t {
            XTarget::Fd(fd) => libc::fremovexattr(*fd, name.as_ptr()),
            XTarget::Path(p) => libc::removexattr(p.as_ptr(), name.as_ptr()),
            XTarget::LPath(p) => libc::lremovexattr(p.as_ptr(), name.as_ptr()),
        }
    })
}

/// Reads one batch of directory entries with getdents64 into `buf`; returns the bytes used.
pub(crate) fn getdents64(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: the kernel writes at most `buf.len()` bytes into `buf`.
    let r = unsafe { libc::syscall(libc::SYS_getdents64, fd, buf.as_mut_ptr(), buf.len()) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

pub(crate) fn accept(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: null address pointers are allowed.
    let r = unsafe {
        libc::accept4(
            fd,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_CLOEXEC,
        )
    };
    check(r)?;
    // SAFETY: a fresh fd we own.
    Ok(unsafe { OwnedFd::from_raw_fd(r) })
}

pub(crate) fn connect(fd: RawFd, addr: std::net::SocketAddr) -> io::Result<()> {
    let (st, len) = arsync_ring::op::sockaddr(addr);
    // SAFETY: `st` is a valid sockaddr of `len` bytes.
    check(unsafe { libc::connect(fd, (&st as *const libc::sockaddr_storage).cast(), len) })
}

pub(crate) fn send(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: reads from a live slice.
    check_size(unsafe { libc::send(fd, buf.as_ptr().cast(), buf.len(), libc::MSG_NOSIGNAL) })
}

pub(crate) fn recv(fd: RawFd, buf: &mut Vec<u8>) -> io::Result<usize> {
    let init = buf.len();
    let want = buf.capacity() - init;
    // SAFETY: writes at most `want` bytes into the spare capacity.
    let n = check_size(unsafe { libc::recv(fd, buf.as_mut_ptr().add(init).cast(), want, 0) })?;
    // SAFETY: `n` more bytes were initialised.
    unsafe { buf.set_len(init + n) };
    Ok(n)
}
