//! End-of-run statistics and exit codes.

use crate::error::{Error, Result};
use crate::wire::{put_varlong, Reader};

/// The five totals a server-side sender writes at the end (varlong, min 3 bytes each).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stats {
    /// Bytes the sender read from the wire.
    pub total_read: i64,
    /// Bytes the sender wrote to the wire.
    pub total_written: i64,
    /// Total size of the files in the list.
    pub total_size: i64,
    /// File-list build time in ms.
    pub flist_buildtime: i64,
    /// File-list transfer time in ms.
    pub flist_xfertime: i64,
}

impl Stats {
    /// Appends the stats as the sender writes them.
    pub fn encode(&self, out: &mut Vec<u8>) {
        for v in [
            self.total_read,
            self.total_written,
            self.total_size,
            self.flist_buildtime,
            self.flist_xfertime,
        ] {
            put_varlong(out, v, 3);
        }
    }

    /// Decodes the sender's stats as a receiving client does: the first two
    /// values are swapped so that `total_read`/`total_written` are from the
    /// receiver's point of view.
    pub fn decode_as_receiver(r: &mut Reader<'_>) -> Result<Stats> {
        let mut rr = r.clone();
        let mut v = [0i64; 5];
        for x in &mut v {
            *x = rr.varlong(3)?;
            if *x < 0 {
                return Err(Error::malformed("stats", format!("negative value {x}")));
            }
        }
        *r = rr;
        Ok(Stats {
            total_written: v[0],
            total_read: v[1],
            total_size: v[2],
            flist_buildtime: v[3],
            flist_xfertime: v[4],
        })
    }
}

/// rsync's exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum ExitCode {
    /// Success.
    Ok = 0,
    /// Syntax or usage error.
    Syntax = 1,
    /// Protocol incompatibility.
    Protocol = 2,
    /// Errors selecting input/output files, dirs.
    FileSelect = 3,
    /// Requested action not supported.
    Unsupported = 4,
    /// Error starting client-server protocol.
    StartClient = 5,
    /// Error in socket I/O.
    SocketIo = 10,
    /// Error in file I/O.
    FileIo = 11,
    /// Error in rsync protocol data stream.
    StreamIo = 12,
    /// Errors with program diagnostics.
    MessageIo = 13,
    /// Received SIGUSR1 or SIGINT.
    Signal = 20,
    /// Partial transfer due to error.
    Partial = 23,
    /// Partial transfer due to vanished source files.
    Vanished = 24,
    /// --max-delete limit stopped deletions.
    DelLimit = 25,
    /// Timeout in data send/receive.
    Timeout = 30,
    /// Timeout waiting for daemon connection.
    ConTimeout = 35,
}

impl ExitCode {
    /// The numeric code.
    pub fn code(self) -> i32 {
        self as i32
    }

    /// Maps a numeric code received from a peer.
    pub fn from_code(c: i32) -> Option<ExitCode> {
        use ExitCode::*;
        [
            Ok,
            Syntax,
            Protocol,
            FileSelect,
            Unsupported,
            StartClient,
            SocketIo,
            FileIo,
            StreamIo,
            MessageIo,
            Signal,
            Partial,
            Vanished,
            DelLimit,
            Timeout,
            ConTimeout,
        ]
        .into_iter()
        .find(|e| e.code() == c)
    }
}

/// io_error flag: a general I/O error on the sending side.
pub const IOERR_GENERAL: i32 = 1 << 0;
/// io_error flag: source files vanished.
pub const IOERR_VANISHED: i32 = 1 << 1;
/// io_error flag: deletions were limited.
pub const IOERR_DEL_LIMIT: i32 = 1 << 2;

/// The exit code a run ends with given the sender's io_error flags.
pub fn exit_code_for_io_error(io_error: i32) -> ExitCode {
    if io_error & IOERR_GENERAL != 0 {
        ExitCode::Partial
    } else if io_error & IOERR_VANISHED != 0 {
        ExitCode::Vanished
    } else if io_error & IOERR_DEL_LIMIT != 0 {
        ExitCode::DelLimit
    } else {
        ExitCode::Ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_swap_on_receive() {
        let s = Stats {
            total_read: 10,
            total_written: 2000,
            total_size: 1 << 33,
            flist_buildtime: 1,
            flist_xfertime: 0,
        };
        let mut out = Vec::new();
        s.encode(&mut out);
        assert_eq!(&out[..3], &[0, 10, 0]);
        let got = Stats::decode_as_receiver(&mut Reader::new(&out)).unwrap();
        assert_eq!(got.total_read, 2000);
        assert_eq!(got.total_written, 10);
        assert_eq!(got.total_size, 1 << 33);
    }

    #[test]
    fn exit_codes() {
        assert_eq!(ExitCode::from_code(23), Some(ExitCode::Partial));
        assert_eq!(ExitCode::from_code(99), None);
        assert_eq!(exit_code_for_io_error(IOERR_VANISHED), ExitCode::Vanished);
        assert_eq!(exit_code_for_io_error(3), ExitCode::Partial);
    }
}
