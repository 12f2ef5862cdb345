//! Raw `io_uring_enter` / `io_uring_register` calls that the `io-uring` crate does not expose in
//! the form we need (a registered ring fd that persists across calls, waits with a timeout).

use std::io;
use std::time::Duration;

/// `IORING_ENTER_GETEVENTS`: wait for / flush completions (runs deferred task work).
pub(crate) const ENTER_GETEVENTS: u32 = 1;
/// `IORING_ENTER_EXT_ARG`: the argument is a `struct io_uring_getevents_arg`.
pub(crate) const ENTER_EXT_ARG: u32 = 1 << 3;
/// `IORING_ENTER_REGISTERED_RING`: `fd` is an index into the registered ring table.
pub(crate) const ENTER_REGISTERED_RING: u32 = 1 << 4;
/// `IORING_REGISTER_RING_FDS`.
const REGISTER_RING_FDS: libc::c_uint = 20;
/// `IORING_UNREGISTER_RING_FDS`.
const UNREGISTER_RING_FDS: libc::c_uint = 21;

/// `struct io_uring_getevents_arg`.
#[repr(C)]
struct GetEventsArg {
    sigmask: u64,
    sigmask_sz: u32,
    min_wait_usec: u32,
    ts: u64,
}

/// `struct __kernel_timespec`.
#[repr(C)]
struct KernelTimespec {
    tv_sec: i64,
    tv_nsec: i64,
}

/// `struct io_uring_rsrc_update`.
#[repr(C)]
struct RsrcUpdate {
    offset: u32,
    resv: u32,
    data: u64,
}

/// Calls `io_uring_enter`. `fd` is the ring fd, or its registered index when `registered`.
pub(crate) fn enter(
    fd: i32,
    registered: bool,
    to_submit: u32,
    min_complete: u32,
    mut flags: u32,
    timeout: Option<Duration>,
) -> io::Result<usize> {
    if registered {
        flags |= ENTER_REGISTERED_RING;
    }
    let ts;
    let arg;
    let (argp, argsz): (*const libc::c_void, usize) = match timeout {
        Some(t) => {
            ts = KernelTimespec {
                tv_sec: t.as_secs().min(i64::MAX as u64) as i64,
                tv_nsec: i64::from(t.subsec_nanos()),
            };
            arg = GetEventsArg {
                sigmask: 0,
                sigmask_sz: 0,
                min_wait_usec: 0,
                ts: &ts as *const KernelTimespec as u64,
            };
            flags |= ENTER_EXT_ARG;
            (
                &arg as *const GetEventsArg as *const libc::c_void,
                std::mem::size_of::<GetEventsArg>(),
            )
        }
        None => (std::ptr::null(), 0),
    };
    // SAFETY: plain syscall; `argp` is null or points at `arg`, which (with the timespec it
    // references) lives until the call returns. The kernel copies both before returning.
    let r = unsafe {
        libc::syscall(
            libc::SYS_io_uring_enter,
            fd,
            to_submit,
            min_complete,
            flags,
            argp,
            argsz,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

/// Registers the ring fd itself (`IORING_REGISTER_RING_FDS`); returns the registered index.
pub(crate) fn register_ring_fd(fd: i32) -> io::Result<u32> {
    let mut up = RsrcUpdate {
        offset: u32::MAX,
        resv: 0,
        data: fd as u64,
    };
    // SAFETY: passes one properly initialised `io_uring_rsrc_update` that lives across the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_io_uring_register,
            fd,
            REGISTER_RING_FDS,
            &mut up as *mut RsrcUpdate,
            1u32,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(up.offset)
    }
}

/// Releases a registered ring fd (`IORING_UNREGISTER_RING_FDS`). The registration is per thread
/// and holds a reference to the ring: without this the ring would live until the thread exits.
pub(crate) fn unregister_ring_fd(fd: i32, index: u32) -> io::Result<()> {
    let mut up = RsrcUpdate {
        offset: index,
        resv: 0,
        data: 0,
    };
    // SAFETY: passes one properly initialised `io_uring_rsrc_update` that lives across the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_io_uring_register,
            fd,
            UNREGISTER_RING_FDS,
            &mut up as *mut RsrcUpdate,
            1u32,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}
