//! Feature detection: which setup flags and opcodes this kernel supports.
//!
//! [`Features::probe`] builds a tiny ring once per process and caches what it learned. Every
//! missing feature has a working fallback (a plain setup, a CQE per operation, the blocking pool in
//! `arsync-io`), so the result only ever changes speed, never correctness.

use io_uring::{opcode, IoUring, Probe};
use std::fmt;
use std::io;
use std::sync::OnceLock;

/// How a ring was (or can be) set up, from best to plainest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetupMode {
    /// `IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN` (6.1+): completions are run only
    /// when this thread waits, no IPIs.
    SingleIssuerDeferTaskrun,
    /// `IORING_SETUP_COOP_TASKRUN` (5.19+).
    CoopTaskrun,
    /// No optional setup flags.
    Plain,
}

impl fmt::Display for SetupMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SetupMode::SingleIssuerDeferTaskrun => "single-issuer+defer-taskrun",
            SetupMode::CoopTaskrun => "coop-taskrun",
            SetupMode::Plain => "plain",
        })
    }
}

/// Operations of this crate, for [`Features::supports`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[allow(missing_docs)]
pub enum Opcode {
    Nop,
    Statx,
    OpenAt,
    OpenAt2,
    Read,
    Write,
    Readv,
    Writev,
    ReadFixed,
    WriteFixed,
    Close,
    Fsync,
    Fallocate,
    Fadvise,
    Ftruncate,
    MkdirAt,
    SymlinkAt,
    LinkAt,
    RenameAt,
    UnlinkAt,
    FSetXattr,
    FGetXattr,
    SetXattr,
    GetXattr,
    Splice,
    Accept,
    Connect,
    Send,
    SendZc,
    Recv,
    Timeout,
    AsyncCancel,
}

impl Opcode {
    /// Every opcode, in display order.
    pub const ALL: [Opcode; 32] = [
        Opcode::Nop,
        Opcode::Statx,
        Opcode::OpenAt,
        Opcode::OpenAt2,
        Opcode::Read,
        Opcode::Write,
        Opcode::Readv,
        Opcode::Writev,
        Opcode::ReadFixed,
        Opcode::WriteFixed,
        Opcode::Close,
        Opcode::Fsync,
        Opcode::Fallocate,
        Opcode::Fadvise,
        Opcode::Ftruncate,
        Opcode::MkdirAt,
        Opcode::SymlinkAt,
        Opcode::LinkAt,
        Opcode::RenameAt,
        Opcode::UnlinkAt,
        Opcode::FSetXattr,
        Opcode::FGetXattr,
        Opcode::SetXattr,
        Opcode::GetXattr,
        Opcode::Splice,
        Opcode::Accept,
        Opcode::Connect,
        Opcode::Send,
        Opcode::SendZc,
        Opcode::Recv,
        Opcode::Timeout,
        Opcode::AsyncCancel,
    ];

    /// The kernel's opcode number.
    pub fn code(self) -> u8 {
        match self {
            Opcode::Nop => opcode::Nop::CODE,
            Opcode::Statx => opcode::Statx::CODE,
            Opcode::OpenAt => opcode::OpenAt::CODE,
            Opcode::OpenAt2 => opcode::OpenAt2::CODE,
            Opcode::Read => opcode::Read::CODE,
            Opcode::Write => opcode::Write::CODE,
            Opcode::Readv => opcode::Readv::CODE,
            Opcode::Writev => opcode::Writev::CODE,
            Opcode::ReadFixed => opcode::ReadFixed::CODE,
            Opcode::WriteFixed => opcode::WriteFixed::CODE,
            Opcode::Close => opcode::Close::CODE,
            Opcode::Fsync => opcode::Fsync::CODE,
            Opcode::Fallocate => opcode::Fallocate::CODE,
            Opcode::Fadvise => opcode::Fadvise::CODE,
            Opcode::Ftruncate => opcode::Ftruncate::CODE,
            Opcode::MkdirAt => opcode::MkDirAt::CODE,
            Opcode::SymlinkAt => opcode::SymlinkAt::CODE,
            Opcode::LinkAt => opcode::LinkAt::CODE,
            Opcode::RenameAt => opcode::RenameAt::CODE,
            Opcode::UnlinkAt => opcode::UnlinkAt::CODE,
            Opcode::FSetXattr => opcode::FSetXattr::CODE,
            Opcode::FGetXattr => opcode::FGetXattr::CODE,
            Opcode::SetXattr => opcode::SetXattr::CODE,
            Opcode::GetXattr => opcode::GetXattr::CODE,
            Opcode::Splice => opcode::Splice::CODE,
            Opcode::Accept => opcode::Accept::CODE,
            Opcode::Connect => opcode::Connect::CODE,
            Opcode::Send => opcode::Send::CODE,
            Opcode::SendZc => opcode::SendZc::CODE,
            Opcode::Recv => opcode::Recv::CODE,
            Opcode::Timeout => opcode::Timeout::CODE,
            Opcode::AsyncCancel => opcode::AsyncCancel::CODE,
        }
    }

    /// Lower-case name, as printed by [`Features`]' `Display`.
    pub fn name(self) -> &'static str {
        match self {
            Opcode::Nop => "nop",
            Opcode::Statx => "statx",
            Opcode::OpenAt => "openat",
            Opcode::OpenAt2 => "openat2",
            Opcode::Read => "read",
            Opcode::Write => "write",
            Opcode::Readv => "readv",
            Opcode::Writev => "writev",
            Opcode::ReadFixed => "read_fixed",
            Opcode::WriteFixed => "write_fixed",
            Opcode::Close => "close",
            Opcode::Fsync => "fsync",
            Opcode::Fallocate => "fallocate",
            Opcode::Fadvise => "fadvise",
            Opcode::Ftruncate => "ftruncate",
            Opcode::MkdirAt => "mkdirat",
            Opcode::SymlinkAt => "symlinkat",
            Opcode::LinkAt => "linkat",
            Opcode::RenameAt => "renameat",
            Opcode::UnlinkAt => "unlinkat",
            Opcode::FSetXattr => "fsetxattr",
            Opcode::FGetXattr => "fgetxattr",
            Opcode::SetXattr => "setxattr",
            Opcode::GetXattr => "getxattr",
            Opcode::Splice => "splice",
            Opcode::Accept => "accept",
            Opcode::Connect => "connect",
            Opcode::Send => "send",
            Opcode::SendZc => "send_zc",
            Opcode::Recv => "recv",
            Opcode::Timeout => "timeout",
            Opcode::AsyncCancel => "async_cancel",
        }
    }
}

/// What the running kernel's io_uring supports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Features {
    /// The best setup mode that worked.
    pub setup: SetupMode,
    /// `IORING_FEAT_CQE_SKIP` (5.17+): successful links can skip their CQE.
    pub skip_success: bool,
    /// `IORING_FEAT_EXT_ARG`: waits with a timeout.
    pub ext_arg: bool,
    /// `IORING_FEAT_NODROP`: completions are never dropped on CQ overflow.
    pub nodrop: bool,
    /// The ring fd can be registered (5.18+).
    pub registered_ring_fd: bool,
    /// A sparse registered file table can be created (5.19+): direct descriptors.
    pub sparse_files: bool,
    /// `IORING_REGISTER_IOWQ_MAX_WORKERS` works (5.15+).
    pub iowq_max_workers: bool,
    /// Multishot accept (5.19+); assumed together with sparse files.
    pub multishot_accept: bool,
    /// Bitmap of supported kernel opcodes (index = opcode number).
    opcodes: [bool; 256],
}

static PROBED: OnceLock<Result<Features, (i32, String)>> = OnceLock::new();

impl Features {
    /// Probes once per process (cached) and returns what this kernel supports, or the error that
    /// made io_uring unusable (ENOSYS: no io_uring; EPERM: blocked by seccomp or
    /// `kernel.io_uring_disabled`).
    pub fn probe() -> io::Result<&'static Features> {
        let r = PROBED.get_or_init(|| {
            Self::probe_uncached().map_err(|e| (e.raw_os_error().unwrap_or(0), e.to_string()))
        });
        match r {
            Ok(f) => Ok(f),
            Err((code, msg)) if *code != 0 => {
                let _ = msg;
                Err(io::Error::from_raw_os_error(*code))
            }
            Err((_, msg)) => Err(io::Error::other(msg.clone())),
        }
    }

    fn probe_uncached() -> io::Result<Features> {
        let (ring, setup) = build_ring(4)?;
        let mut probe = Probe::new();
        let mut opcodes = [false; 256];
        if ring.submitter().register_probe(&mut probe).is_ok() {
            for (i, slot) in opcodes.iter_mut().enumerate() {
                *slot = probe.is_supported(i as u8);
            }
        } else {
            // Pre-5.6 kernels have no probe: only the original opcodes are safe to assume.
            for op in [
                Opcode::Nop,
                Opcode::Read,
                Opcode::Write,
                Opcode::Readv,
                Opcode::Writev,
                Opcode::Fsync,
            ] {
                opcodes[op.code() as usize] = true;
            }
        }
        let params = ring.params();
        let registered_ring_fd = {
            use std::os::fd::AsRawFd;
            match crate::sys::register_ring_fd(ring.as_raw_fd()) {
                Ok(index) => {
                    let _ = crate::sys::unregister_ring_fd(ring.as_raw_fd(), index);
                    true
                }
                Err(_) => false,
            }
        };
        let sparse_files = ring.submitter().register_files_sparse(4).is_ok();
        let mut workers = [0u32; 2];
        let iowq_max_workers = ring
            .submitter()
            .register_iowq_max_workers(&mut workers)
            .is_ok();
        Ok(Features {
            setup,
            skip_success: params.is_feature_skip_cqe_on_success(),
            ext_arg: params.is_feature_ext_arg(),
            nodrop: params.is_feature_nodrop(),
            registered_ring_fd,
            sparse_files,
            iowq_max_workers,
            multishot_accept: sparse_files && opcodes[opcode::Accept::CODE as usize],
            opcodes,
        })
    }

    /// Whether the kernel supports `op`.
    pub fn supports(&self, op: Opcode) -> bool {
        self.opcodes[op.code() as usize]
    }

    /// Marks `op` unsupported (used by [`crate::RingBuilder::without`] to exercise fallbacks).
    pub(crate) fn disable(&mut self, op: Opcode) {
        self.opcodes[op.code() as usize] = false;
    }
}

/// Builds a ring with the best setup flags the kernel accepts.
pub(crate) fn build_ring(entries: u32) -> io::Result<(IoUring, SetupMode)> {
    let first = IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(entries);
    match first {
        Ok(r) => return Ok((r, SetupMode::SingleIssuerDeferTaskrun)),
        Err(e) if e.raw_os_error() != Some(libc::EINVAL) => return Err(e),
        Err(_) => {}
    }
    match IoUring::builder().setup_coop_taskrun().build(entries) {
        Ok(r) => return Ok((r, SetupMode::CoopTaskrun)),
        Err(e) if e.raw_os_error() != Some(libc::EINVAL) => return Err(e),
        Err(_) => {}
    }
    Ok((IoUring::new(entries)?, SetupMode::Plain))
}

impl fmt::Display for Features {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let yn = |b: bool| if b { "yes" } else { "no" };
        writeln!(f, "io_uring setup: {}", self.setup)?;
        writeln!(
            f,
            "skip-success CQEs: {}, ext-arg waits: {}, no-drop CQ: {}",
            yn(self.skip_success),
            yn(self.ext_arg),
            yn(self.nodrop)
        )?;
        writeln!(
            f,
            "registered ring fd: {}, direct descriptors: {}, io-wq worker cap: {}, multishot accept: {}",
            yn(self.registered_ring_fd),
            yn(self.sparse_files),
            yn(self.iowq_max_workers),
            yn(self.multishot_accept)
        )?;
        let (yes, no): (Vec<Opcode>, Vec<Opcode>) =
            Opcode::ALL.iter().partition(|o| self.supports(**o));
        let names = |v: &[Opcode]| v.iter().map(|o| o.name()).collect::<Vec<_>>().join(" ");
        writeln!(f, "opcodes supported: {}", names(&yes))?;
        write!(
            f,
            "opcodes missing: {}",
            if no.is_empty() {
                "none".to_string()
            } else {
                names(&no)
            }
        )
    }
}
