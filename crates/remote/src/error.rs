//! Errors of the remote roles, with the rsync exit code each maps to.

use arsync_proto::stats::ExitCode;
use thiserror::Error;

/// Why a remote transfer failed.
#[derive(Debug, Error)]
pub enum RemoteError {
    /// The peer violated the protocol (or sent something unsupported).
    #[error("protocol error: {0}")]
    Proto(#[from] arsync_proto::Error),
    /// Local I/O failed.
    #[error("{context}: {source}")]
    Io {
        /// What we were doing.
        context: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The connection ended before the protocol was complete.
    #[error("connection closed unexpectedly{0}")]
    Eof(String),
    /// The peer reported a fatal error and exited.
    #[error("remote rsync exited with code {code}{messages}")]
    RemoteExit {
        /// The peer's exit code.
        code: i32,
        /// Error messages received before the exit (prefixed with ": ").
        messages: String,
    },
    /// The peer sent something we refuse to act on (unsafe path, bad index).
    #[error("refusing peer data: {0}")]
    Refused(String),
    /// A file failed its whole-file checksum twice.
    #[error("{0} failed verification after redo")]
    Verification(String),
    /// Bad local usage.
    #[error("{0}")]
    Usage(String),
    /// A session limit expired: `--timeout` (code 30), `--contimeout`
    /// (code 35), `--stop-at` (code 30).
    #[error("{message}")]
    Timeout {
        /// rsync's exit code for it.
        code: ExitCode,
        /// What expired.
        message: String,
    },
    /// A failure rsync reports with its own exit code and message (e.g. a
    /// destination that cannot take the transfer).
    #[error("{message}")]
    Exit {
        /// rsync's exit code for it.
        code: ExitCode,
        /// rsync's message.
        message: String,
    },
}

impl RemoteError {
    /// Builds an [`RemoteError::Io`].
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        RemoteError::Io {
            context: context.into(),
            source,
        }
    }

    /// The exit code rsync would use for this failure.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            RemoteError::Proto(arsync_proto::Error::Unsupported(_)) => ExitCode::Unsupported,
            RemoteError::Proto(_) => ExitCode::Protocol,
            RemoteError::Io { .. } => ExitCode::FileIo,
            RemoteError::Eof(_) => ExitCode::StreamIo,
            RemoteError::RemoteExit { code, .. } => {
                ExitCode::from_code(*code).unwrap_or(ExitCode::Partial)
            }
            RemoteError::Refused(_) => ExitCode::Protocol,
            RemoteError::Verification(_) => ExitCode::Partial,
            RemoteError::Usage(_) => ExitCode::Syntax,
            RemoteError::Timeout { code, .. } | RemoteError::Exit { code, .. } => *code,
        }
    }
}

/// Result alias.
pub type Result<T> = std::result::Result<T, RemoteError>;
