//! zstd: one stream for the whole session, as rsync keeps one context per
//! process and never resets it between files. The sender flushes
//! (`ZSTD_e_flush`) at the end of each literal run, so the receiver has the
//! run's data before the token that follows; the frame is never ended.

use ::zstd::stream::raw::{
    CParameter, DParameter, Decoder, Encoder, InBuffer, Operation, OutBuffer,
};

use super::put_chunks;
use crate::error::{Error, Result};
use crate::token::CHUNK_SIZE;

/// Largest window accepted from a peer (zstd's default limit, 128 MiB:
/// enough for every level rsync's sender can use).
const WINDOW_LOG_MAX: u32 = 27;

fn enc_err(e: std::io::Error) -> Error {
    Error::unencodable("zstd", e.to_string())
}

fn dec_err(e: std::io::Error) -> Error {
    Error::malformed("zstd data", e.to_string())
}

/// Appends what `op` makes of `input` to `out` (grown as needed), until
/// all input is taken and the output has room left.
fn compress_into(enc: &mut Encoder<'static>, input: &[u8], out: &mut Vec<u8>) -> Result<()> {
    let mut inb = InBuffer::around(input);
    loop {
        out.reserve(64 * 1024);
        let pos = out.len();
        let mut ob = OutBuffer::around_pos(out, pos);
        enc.run(&mut inb, &mut ob).map_err(enc_err)?;
        let full = ob.pos() == ob.capacity();
        if inb.pos == input.len() && !full {
            return Ok(());
        }
    }
}

/// The sender's compressor.
pub(super) struct ZstdPacker {
    enc: Encoder<'static>,
    pending: Vec<u8>,
}

impl ZstdPacker {
    pub(super) fn new(level: i32) -> Result<Self> {
        let mut enc = Encoder::new(level).map_err(enc_err)?;
        // rsync's default: no worker threads (the format does not depend on it).
        enc.set_parameter(CParameter::NbWorkers(0))
            .map_err(enc_err)?;
        Ok(ZstdPacker {
            enc,
            pending: Vec::new(),
        })
    }

    pub(super) fn literal(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<()> {
        compress_into(&mut self.enc, data, &mut self.pending)?;
        put_chunks(&mut self.pending, false, out);
        Ok(())
    }

    pub(super) fn flush(&mut self, out: &mut Vec<u8>) -> Result<()> {
        loop {
            self.pending.reserve(64 * 1024);
            let pos = self.pending.len();
            let mut ob = OutBuffer::around_pos(&mut self.pending, pos);
            let left = self.enc.flush(&mut ob).map_err(enc_err)?;
            if left == 0 {
                break;
            }
        }
        put_chunks(&mut self.pending, true, out);
        Ok(())
    }
}

/// The receiver's decompressor.
pub(super) struct ZstdUnpacker {
    dec: Decoder<'static>,
    input: Vec<u8>,
    pos: usize,
    /// The last call filled its output: more may be pending.
    need_drain: bool,
}

impl ZstdUnpacker {
    pub(super) fn new() -> Result<Self> {
        let mut dec = Decoder::new().map_err(dec_err)?;
        dec.set_parameter(DParameter::WindowLogMax(WINDOW_LOG_MAX))
            .map_err(dec_err)?;
        Ok(ZstdUnpacker {
            dec,
            input: Vec::new(),
            pos: 0,
            need_drain: false,
        })
    }

    /// A new file: the stream goes on, but nothing of the last file's input
    /// may be left (a well-formed stream leaves nothing).
    pub(super) fn begin_file(&mut self) {
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

    pub(super) fn output(&mut self) -> Result<Option<Vec<u8>>> {
        loop {
            if self.pos >= self.input.len() && !self.need_drain {
                return Ok(None);
            }
            let mut out = Vec::with_capacity(CHUNK_SIZE);
            let mut inb = InBuffer::around(&self.input[self.pos..]);
            let mut ob = OutBuffer::around(&mut out);
            self.dec.run(&mut inb, &mut ob).map_err(dec_err)?;
            let (used, made, cap) = (inb.pos, ob.pos(), ob.capacity());
            self.pos += used;
            self.need_drain = made == cap;
            if made > 0 {
                return Ok(Some(out));
            }
            if used == 0 && self.pos < self.input.len() {
                return Err(Error::malformed("zstd data", "no progress"));
            }
        }
    }
}
