//! Error type of the storage engine, with a mapping to POSIX errno values for the FUSE layer.

use std::io;
use std::path::PathBuf;

/// Result alias used throughout the engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the engine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O error on a named path.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A metadata database error.
    #[error("metadata: {0}")]
    Meta(String),
    /// The pool configuration or a command argument is invalid. Every problem found is listed.
    #[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
    Config(Vec<String>),
    /// A user-supplied argument is invalid.
    #[error("{0}")]
    Invalid(String),
    /// Too many fragments of an extent are unavailable to rebuild it.
    #[error("extent {extent}: only {available} of {needed} fragments readable; data unavailable")]
    Unrecoverable {
        /// The extent id.
        extent: u64,
        /// Intact fragments found.
        available: usize,
        /// Fragments needed.
        needed: usize,
    },
    /// Not enough healthy disks to place an extent under its policy.
    #[error("not enough healthy disks: policy {policy} needs {needed}, {available} usable")]
    NoSpace {
        /// The policy being placed.
        policy: String,
        /// Disks needed.
        needed: usize,
        /// Disks usable.
        available: usize,
    },
    /// The pool is open in another process (a mount or an admin command).
    #[error("pool {} is in use by another dynfs process (mounted?); unmount it first", .0.display())]
    InUse(PathBuf),
    /// A filesystem-level error carrying an errno (ENOENT, EEXIST, ...).
    #[error("{}", errno_name(*.0))]
    Errno(i32),
}

impl Error {
    /// Wrap an `io::Error` with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// The errno to report to the kernel for this error.
    pub fn errno(&self) -> i32 {
        match self {
            Error::Errno(e) => *e,
            Error::Io { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
            Error::NoSpace { .. } => libc::ENOSPC,
            Error::Invalid(_) | Error::Config(_) => libc::EINVAL,
            Error::InUse(_) => libc::EBUSY,
            Error::Meta(_) | Error::Unrecoverable { .. } => libc::EIO,
        }
    }
}

fn errno_name(e: i32) -> String {
    io::Error::from_raw_os_error(e).to_string()
}

macro_rules! meta_from {
    ($($t:ty),*) => {$(
        impl From<$t> for Error {
            fn from(e: $t) -> Self {
                Error::Meta(e.to_string())
            }
        }
    )*};
}
meta_from!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    postcard::Error
);
