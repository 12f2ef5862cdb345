//! lz4: every data chunk is an independent LZ4 block (the raw block
//! format, no frame). The sender compresses at most 16383 input bytes at a
//! time and halves the input until the block fits one chunk; the receiver
//! decompresses each chunk on its own into at most 32912 bytes
//! (`LZ4_compressBound(32 KiB)`, rsync's buffer).

use super::{put_chunk, MAX_DATA_COUNT};
use crate::error::{Error, Result};
use crate::token::CHUNK_SIZE;

/// Largest decompressed size of one chunk.
pub(super) const MAX_BLOCK_OUT: usize = CHUNK_SIZE + CHUNK_SIZE / 255 + 16;

/// The sender's compressor: literal data waits until a full block's worth
/// (or the end of the literal run).
pub(super) struct Lz4Packer {
    pending: Vec<u8>,
    buf: Vec<u8>,
}

impl Lz4Packer {
    pub(super) fn new() -> Self {
        Lz4Packer {
            pending: Vec::new(),
            buf: vec![0; lz4_flex::block::get_maximum_output_size(MAX_DATA_COUNT)],
        }
    }

    /// Compresses all of `input` into chunks.
    fn blocks(buf: &mut [u8], mut input: &[u8], out: &mut Vec<u8>) -> Result<()> {
        let mut n = input.len().min(MAX_DATA_COUNT);
        while !input.is_empty() {
            let c = lz4_flex::block::compress_into(&input[..n], buf)
                .map_err(|e| Error::unencodable("lz4", e.to_string()))?;
            if c <= MAX_DATA_COUNT {
                put_chunk(&buf[..c], out);
                input = &input[n..];
                n = input.len().min(MAX_DATA_COUNT);
            } else {
                n /= 2;
            }
        }
        Ok(())
    }

    pub(super) fn literal(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<()> {
        let mut data = data;
        if !self.pending.is_empty() {
            let take = (MAX_DATA_COUNT - self.pending.len()).min(data.len());
            self.pending.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.pending.len() < MAX_DATA_COUNT {
                return Ok(());
            }
            Self::blocks(&mut self.buf, &self.pending, out)?;
            self.pending.clear();
        }
        let whole = data.len() - data.len() % MAX_DATA_COUNT;
        Self::blocks(&mut self.buf, &data[..whole], out)?;
        self.pending.extend_from_slice(&data[whole..]);
        Ok(())
    }

    pub(super) fn flush(&mut self, out: &mut Vec<u8>) -> Result<()> {
        Self::blocks(&mut self.buf, &self.pending, out)?;
        self.pending.clear();
        Ok(())
    }
}

/// The receiver's decompressor.
pub(super) struct Lz4Unpacker {
    decoded: Vec<u8>,
    len: usize,
    pos: usize,
}

impl Lz4Unpacker {
    pub(super) fn new() -> Self {
        Lz4Unpacker {
            decoded: Vec::new(),
            len: 0,
            pos: 0,
        }
    }

    pub(super) fn begin_file(&mut self) {
        self.len = 0;
        self.pos = 0;
    }

    pub(super) fn chunk(&mut self, data: &[u8]) -> Result<()> {
        if self.decoded.is_empty() {
            self.decoded = vec![0; MAX_BLOCK_OUT];
        }
        self.len = lz4_flex::block::decompress_into(data, &mut self.decoded)
            .map_err(|e| Error::malformed("lz4 data", e.to_string()))?;
        self.pos = 0;
        Ok(())
    }

    pub(super) fn output(&mut self) -> Result<Option<Vec<u8>>> {
        if self.pos >= self.len {
            return Ok(None);
        }
        let n = (self.len - self.pos).min(CHUNK_SIZE);
        let piece = self.decoded[self.pos..self.pos + n].to_vec();
        self.pos += n;
        Ok(Some(piece))
    }
}
