//! The one error type of the protocol crate.

use thiserror::Error;

/// Everything that can go wrong while encoding or decoding rsync wire data.
///
/// [`Error::Incomplete`] is not a failure: it tells an incremental caller to
/// supply more bytes and call again with the same (grown) buffer. Decoders
/// never consume input or change state when they return it.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Error {
    /// More input is needed before the item can be decoded.
    #[error("need more input")]
    Incomplete,
    /// The peer sent a value that violates the protocol.
    #[error("protocol violation in {what}: {detail}")]
    Malformed {
        /// The field or message being decoded.
        what: &'static str,
        /// What exactly was wrong.
        detail: String,
    },
    /// The peer asked for something this implementation does not support.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// A value to encode does not fit the wire format.
    #[error("cannot encode {what}: {detail}")]
    Unencodable {
        /// The field being encoded.
        what: &'static str,
        /// Why it cannot be encoded.
        detail: String,
    },
}

impl Error {
    /// Builds a [`Error::Malformed`].
    pub fn malformed(what: &'static str, detail: impl Into<String>) -> Self {
        Error::Malformed {
            what,
            detail: detail.into(),
        }
    }

    /// Builds a [`Error::Unencodable`].
    pub fn unencodable(what: &'static str, detail: impl Into<String>) -> Self {
        Error::Unencodable {
            what,
            detail: detail.into(),
        }
    }

    /// True when the error only means "feed more bytes".
    pub fn is_incomplete(&self) -> bool {
        matches!(self, Error::Incomplete)
    }
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, Error>;
