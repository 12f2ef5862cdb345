//! zlib and zlibx: raw deflate (window 2^15), one stream per file.
//!
//! Each literal run ends with a sync flush; its trailing `00 00 ff ff` is
//! not sent and the receiver puts it back when a non-data flag follows.
//! Classic zlib also puts every matched block into the history on both
//! sides: the sender compresses it with a sync flush and drops the output,
//! the receiver inflates it wrapped in a stored-block header (rsync's
//! `see_deflate_token`), both in pieces of at most 65535 bytes. Below
//! protocol 31 rsync did not advance through a block longer than that (it
//! repeated the first piece); both sides here do the same then.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use super::put_chunks;
use crate::error::{Error, Result};
use crate::token::CHUNK_SIZE;

const SYNC_TAIL: [u8; 4] = [0, 0, 0xFF, 0xFF];
/// Largest stored block (and history piece).
const STORED_MAX: usize = 0xFFFF;

/// The pieces classic zlib puts into the history for a block of `len`
/// bytes: (offset, length) pairs.
fn history_pieces(len: usize, protocol: i32) -> impl Iterator<Item = (usize, usize)> {
    let mut left = len;
    let mut off = 0;
    std::iter::from_fn(move || {
        if left == 0 {
            return None;
        }
        let n = left.min(STORED_MAX);
        let piece = (off, n);
        left -= n;
        if protocol >= 31 {
            off += n;
        }
        Some(piece)
    })
}

/// The sender's deflate stream.
pub(super) struct Deflater {
    c: Compress,
    pending: Vec<u8>,
    /// Classic zlib: the protocol (matched data goes into the history).
    classic: Option<i32>,
    scratch: Vec<u8>,
}

impl Deflater {
    pub(super) fn new(level: i32, classic: Option<i32>) -> Self {
        Deflater {
            c: Compress::new(Compression::new(level.clamp(0, 9) as u32), false),
            pending: Vec::new(),
            classic,
            scratch: Vec::new(),
        }
    }

    pub(super) fn begin_file(&mut self) {
        self.c.reset();
        self.pending.clear();
    }

    /// Compresses `input` into `sink` with `flush`, until all input is
    /// taken and (for a flush) all output is out.
    fn run(
        c: &mut Compress,
        mut input: &[u8],
        flush: FlushCompress,
        sink: &mut Vec<u8>,
    ) -> Result<()> {
        loop {
            sink.reserve(64 * 1024);
            let before = c.total_in();
            c.compress_vec(input, sink, flush)
                .map_err(|e| Error::unencodable("deflate", e.to_string()))?;
            let used = (c.total_in() - before) as usize;
            input = &input[used..];
            // A full output buffer may hold back more output.
            if input.is_empty() && sink.len() < sink.capacity() {
                return Ok(());
            }
        }
    }

    pub(super) fn literal(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<()> {
        Self::run(&mut self.c, data, FlushCompress::None, &mut self.pending)?;
        put_chunks(&mut self.pending, false, out);
        Ok(())
    }

    pub(super) fn flush(&mut self, out: &mut Vec<u8>) -> Result<()> {
        Self::run(&mut self.c, &[], FlushCompress::Sync, &mut self.pending)?;
        if !self.pending.ends_with(&SYNC_TAIL) {
            return Err(Error::unencodable(
                "deflate",
                "sync flush did not end with 00 00 ff ff",
            ));
        }
        self.pending.truncate(self.pending.len() - SYNC_TAIL.len());
        put_chunks(&mut self.pending, true, out);
        Ok(())
    }

    pub(super) fn matched(&mut self, data: &[u8]) -> Result<()> {
        let Some(protocol) = self.classic else {
            return Ok(());
        };
        if data.is_empty() {
            return Err(Error::unencodable(
                "zlib token",
                "classic zlib needs the matched block's data",
            ));
        }
        for (off, n) in history_pieces(data.len(), protocol) {
            self.scratch.clear();
            Self::run(
                &mut self.c,
                &data[off..off + n],
                FlushCompress::Sync,
                &mut self.scratch,
            )?;
        }
        self.scratch.clear();
        Ok(())
    }
}

/// The receiver's inflate stream.
pub(super) struct Inflater {
    d: Decompress,
    input: Vec<u8>,
    pos: usize,
    /// The last call filled its output: more may be pending.
    need_drain: bool,
    /// Classic zlib: the protocol (matched data goes into the history).
    classic: Option<i32>,
    scratch: Vec<u8>,
}

impl Inflater {
    pub(super) fn new(classic: Option<i32>) -> Self {
        Inflater {
            d: Decompress::new(false),
            input: Vec::new(),
            pos: 0,
            need_drain: false,
            classic,
            scratch: Vec::new(),
        }
    }

    pub(super) fn begin_file(&mut self) {
        self.d.reset(false);
        self.input.clear();
        self.pos = 0;
        self.need_drain = false;
    }

    pub(super) fn chunk(&mut self, data: &[u8]) -> Result<()> {
        self.input.clear();
        self.input.extend_from_slice(data);
        self.pos = 0;
        Ok(())
    }

    pub(super) fn end_data(&mut self) {
        self.input.clear();
        self.input.extend_from_slice(&SYNC_TAIL);
        self.pos = 0;
    }

    pub(super) fn output(&mut self) -> Result<Option<Vec<u8>>> {
        loop {
            if self.pos >= self.input.len() && !self.need_drain {
                return Ok(None);
            }
            let mut out = Vec::with_capacity(CHUNK_SIZE);
            let before = self.d.total_in();
            let st = self
                .d
                .decompress_vec(&self.input[self.pos..], &mut out, FlushDecompress::None)
                .map_err(|e| Error::malformed("compressed data", e.to_string()))?;
            let used = (self.d.total_in() - before) as usize;
            self.pos += used;
            self.need_drain = out.len() == out.capacity();
            if st == Status::StreamEnd {
                return Err(Error::malformed(
                    "compressed data",
                    "unexpected final deflate block",
                ));
            }
            if !out.is_empty() {
                return Ok(Some(out));
            }
            if used == 0 && self.pos < self.input.len() {
                return Err(Error::malformed(
                    "compressed data",
                    "inflate made no progress",
                ));
            }
        }
    }

    pub(super) fn sees_blocks(&self) -> bool {
        self.classic.is_some()
    }

    /// Inflates `input` and drops the output.
    fn swallow(&mut self, input: &[u8]) -> Result<()> {
        let mut at = 0;
        loop {
            self.scratch.clear();
            self.scratch.reserve(STORED_MAX + 1024);
            let before = self.d.total_in();
            let st = self
                .d
                .decompress_vec(&input[at..], &mut self.scratch, FlushDecompress::Sync)
                .map_err(|e| Error::malformed("compressed data", e.to_string()))?;
            let used = (self.d.total_in() - before) as usize;
            at += used;
            let full = self.scratch.len() == self.scratch.capacity();
            if st == Status::StreamEnd {
                return Err(Error::malformed(
                    "compressed data",
                    "unexpected final deflate block",
                ));
            }
            if at >= input.len() && !full {
                return Ok(());
            }
            if used == 0 && self.scratch.is_empty() {
                return Err(Error::malformed(
                    "compressed data",
                    "inflate made no progress on a matched block",
                ));
            }
        }
    }

    pub(super) fn see(&mut self, data: &[u8]) -> Result<()> {
        let Some(protocol) = self.classic else {
            return Ok(());
        };
        for (off, n) in history_pieces(data.len(), protocol) {
            let (lo, hi) = (n as u8, (n >> 8) as u8);
            // A stored block that is not the last: the header byte, then
            // LEN and NLEN.
            self.swallow(&[0, lo, hi, !lo, !hi])?;
            self.swallow(&data[off..off + n])?;
        }
        Ok(())
    }
}
