//! Compressed token streams ("zlibx": zlib without matched-data history).
//!
//! Flag bytes: `0x00` end; `0x20` + int32 token; `0x21` + int32 token + u16
//! run; `0x40 | len>>8, len & 0xff` + deflated bytes (at most 16383);
//! `0x80 + d` token `last + d`; `0xC0 + d` + u16 run. Token numbers are block
//! indices relative to the last token of the previous run (0 at file start);
//! a run of n means n more consecutive blocks. Literal data is one raw
//! deflate stream per file; each literal run ends with a sync flush whose
//! trailing `00 00 ff ff` is not sent (the receiver re-inserts it when a
//! non-data flag follows). Classic "zlib" additionally feeds matched blocks
//! into the compressor history; that variant is not implemented.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use crate::error::{Error, Result};
use crate::token::{encode_block, encode_end, encode_literal, Token, TokenDecoder, CHUNK_SIZE};
use crate::wire::{put_i32, Reader};

/// Largest deflated chunk after one flag pair.
pub const MAX_DATA_COUNT: usize = 16383;
const END_FLAG: u8 = 0x00;
const TOKEN_LONG: u8 = 0x20;
const TOKENRUN_LONG: u8 = 0x21;
const DEFLATED_DATA: u8 = 0x40;
const TOKEN_REL: u8 = 0x80;
const TOKENRUN_REL: u8 = 0xC0;
const SYNC_TAIL: [u8; 4] = [0, 0, 0xFF, 0xFF];

/// Encoder for one file's compressed token stream.
pub struct ZlibxEncoder {
    c: Compress,
    pending: Vec<u8>,
    in_literal: bool,
    run: Option<(i64, i64)>,
    last_run_end: i64,
}

impl std::fmt::Debug for ZlibxEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZlibxEncoder")
            .field("run", &self.run)
            .finish()
    }
}

impl ZlibxEncoder {
    /// A fresh stream at compression `level` (1-9; rsync's default is 6).
    pub fn new(level: u32) -> Self {
        ZlibxEncoder {
            c: Compress::new(Compression::new(level.clamp(0, 9)), false),
            pending: Vec::new(),
            in_literal: false,
            run: None,
            last_run_end: 0,
        }
    }

    fn deflate(&mut self, mut input: &[u8], flush: FlushCompress) -> Result<()> {
        loop {
            self.pending.reserve(64 * 1024);
            let spare = self.pending.capacity() - self.pending.len();
            let before = self.c.total_in();
            self.c
                .compress_vec(input, &mut self.pending, flush)
                .map_err(|e| Error::unencodable("deflate", e.to_string()))?;
            let used = (self.c.total_in() - before) as usize;
            input = &input[used..];
            let filled = self.pending.capacity() - self.pending.len() == 0 || spare == 0;
            if input.is_empty() && !filled {
                return Ok(());
            }
        }
    }

    fn emit_chunks(&mut self, all: bool, out: &mut Vec<u8>) {
        let mut start = 0;
        while self.pending.len() - start >= MAX_DATA_COUNT || (all && start < self.pending.len()) {
            let n = (self.pending.len() - start).min(MAX_DATA_COUNT);
            out.push(DEFLATED_DATA | (n >> 8) as u8);
            out.push(n as u8);
            out.extend_from_slice(&self.pending[start..start + n]);
            start += n;
        }
        self.pending.drain(..start);
    }

    fn flush_literal(&mut self, out: &mut Vec<u8>) -> Result<()> {
        if !self.in_literal {
            return Ok(());
        }
        self.deflate(&[], FlushCompress::Sync)?;
        if !self.pending.ends_with(&SYNC_TAIL) {
            return Err(Error::unencodable(
                "deflate",
                "sync flush did not end with 00 00 ff ff",
            ));
        }
        self.pending.truncate(self.pending.len() - 4);
        self.emit_chunks(true, out);
        self.in_literal = false;
        Ok(())
    }

    fn output_run(&mut self, out: &mut Vec<u8>) {
        if let Some((start, last)) = self.run.take() {
            let r = start - self.last_run_end;
            let n = last - start;
            if (0..=63).contains(&r) {
                out.push(if n == 0 { TOKEN_REL } else { TOKENRUN_REL } + r as u8);
            } else {
                out.push(if n == 0 { TOKEN_LONG } else { TOKENRUN_LONG });
                put_i32(out, start as i32);
            }
            if n != 0 {
                out.push(n as u8);
                out.push((n >> 8) as u8);
            }
            self.last_run_end = last;
        }
    }

    /// Literal bytes.
    pub fn literal(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        self.output_run(out);
        self.in_literal = true;
        self.deflate(data, FlushCompress::None)?;
        self.emit_chunks(false, out);
        Ok(())
    }

    /// A copy of basis block `i`.
    pub fn block(&mut self, i: u32, out: &mut Vec<u8>) -> Result<()> {
        self.flush_literal(out)?;
        let i = i as i64;
        match self.run {
            Some((s, l)) if i == l + 1 && i < s + 65536 => self.run = Some((s, i)),
            _ => {
                self.output_run(out);
                self.run = Some((i, i));
            }
        }
        Ok(())
    }

    /// The end of the file's tokens.
    pub fn end(&mut self, out: &mut Vec<u8>) -> Result<()> {
        self.flush_literal(out)?;
        self.output_run(out);
        out.push(END_FLAG);
        Ok(())
    }
}

/// Incremental decoder for one file's compressed token stream.
pub struct ZlibxDecoder {
    d: Decompress,
    block_count: u32,
    rx_token: i64,
    run_left: u32,
    chunk: Vec<u8>,
    pos: usize,
    need_drain: bool,
    in_data: bool,
}

impl std::fmt::Debug for ZlibxDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZlibxDecoder")
            .field("rx_token", &self.rx_token)
            .finish()
    }
}

impl ZlibxDecoder {
    /// A decoder for a file whose sum head announced `block_count` blocks.
    pub fn new(block_count: u32) -> Self {
        ZlibxDecoder {
            d: Decompress::new(false),
            block_count,
            rx_token: 0,
            run_left: 0,
            chunk: Vec::new(),
            pos: 0,
            need_drain: false,
            in_data: false,
        }
    }

    fn check(&self, t: i64) -> Result<()> {
        if t < 0 || t >= self.block_count as i64 {
            return Err(Error::malformed(
                "compressed token",
                format!(
                    "block index {t} but the basis has {} blocks",
                    self.block_count
                ),
            ));
        }
        Ok(())
    }

    /// Decodes the next token (literal pieces are at most [`CHUNK_SIZE`]).
    pub fn decode(&mut self, r: &mut Reader<'_>) -> Result<Token> {
        loop {
            if self.pos < self.chunk.len() || self.need_drain {
                let mut out = vec![0u8; CHUNK_SIZE];
                let (bi, bo) = (self.d.total_in(), self.d.total_out());
                let st = self
                    .d
                    .decompress(&self.chunk[self.pos..], &mut out, FlushDecompress::None)
                    .map_err(|e| Error::malformed("compressed data", e.to_string()))?;
                let used = (self.d.total_in() - bi) as usize;
                let made = (self.d.total_out() - bo) as usize;
                self.pos += used;
                self.need_drain = made == out.len();
                if st == Status::StreamEnd {
                    return Err(Error::malformed(
                        "compressed data",
                        "unexpected final deflate block",
                    ));
                }
                if made > 0 {
                    out.truncate(made);
                    return Ok(Token::Literal(out));
                }
                if used == 0 && self.pos < self.chunk.len() && !self.need_drain {
                    return Err(Error::malformed(
                        "compressed data",
                        "inflate made no progress",
                    ));
                }
                if self.pos >= self.chunk.len() {
                    self.chunk.clear();
                    self.pos = 0;
                }
                continue;
            }
            if self.run_left > 0 {
                self.run_left -= 1;
                self.rx_token += 1;
                self.check(self.rx_token)?;
                return Ok(Token::Block(self.rx_token as u32));
            }
            let mut rr = r.clone();
            let flag = rr.u8()?;
            if flag & 0xC0 == DEFLATED_DATA {
                let n = ((flag & 0x3F) as usize) << 8 | rr.u8()? as usize;
                let data = rr.bytes(n)?;
                self.chunk = data.to_vec();
                self.pos = 0;
                self.in_data = true;
                *r = rr;
                continue;
            }
            if self.in_data {
                // End of a deflated run: restore the sync marker the sender
                // trimmed, then look at this flag again.
                self.in_data = false;
                self.chunk = SYNC_TAIL.to_vec();
                self.pos = 0;
                continue;
            }
            let (token, run) = match flag {
                END_FLAG => {
                    *r = rr;
                    return Ok(Token::End);
                }
                TOKEN_LONG | TOKENRUN_LONG => {
                    let t = rr.i32()? as i64;
                    let run = if flag == TOKENRUN_LONG {
                        rr.u16()? as u32
                    } else {
                        0
                    };
                    (t, run)
                }
                f if f & TOKEN_REL != 0 => {
                    let t = self.rx_token + (f & 0x3F) as i64;
                    let run = if f & 0x40 != 0 { rr.u16()? as u32 } else { 0 };
                    (t, run)
                }
                f => {
                    return Err(Error::malformed(
                        "compressed token",
                        format!("invalid flag byte {f:#04x}"),
                    ))
                }
            };
            if matches!(flag, TOKENRUN_LONG) || flag >= TOKENRUN_REL {
                if run == 0 {
                    return Err(Error::malformed("compressed token", "empty run"));
                }
                self.check(token + run as i64)?;
            }
            self.check(token)?;
            *r = rr;
            self.rx_token = token;
            self.run_left = run;
            return Ok(Token::Block(token as u32));
        }
    }
}

/// Where a sender's tokens go: the plain stream or a compressed one.
#[derive(Debug)]
pub enum TokenSink {
    /// Uncompressed tokens.
    Plain,
    /// zlibx.
    Zlibx(Box<ZlibxEncoder>),
}

impl TokenSink {
    /// A sink for the negotiated compression (`None`: plain).
    pub fn new(zlibx_level: Option<u32>) -> Self {
        match zlibx_level {
            Some(l) => TokenSink::Zlibx(Box::new(ZlibxEncoder::new(l))),
            None => TokenSink::Plain,
        }
    }

    /// Literal bytes.
    pub fn literal(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<()> {
        match self {
            TokenSink::Plain => {
                encode_literal(data, out);
                Ok(())
            }
            TokenSink::Zlibx(z) => z.literal(data, out),
        }
    }

    /// A block reference.
    pub fn block(&mut self, i: u32, out: &mut Vec<u8>) -> Result<()> {
        match self {
            TokenSink::Plain => encode_block(i, out),
            TokenSink::Zlibx(z) => z.block(i, out),
        }
    }

    /// The end of the file's tokens.
    pub fn end(&mut self, out: &mut Vec<u8>) -> Result<()> {
        match self {
            TokenSink::Plain => {
                encode_end(out);
                Ok(())
            }
            TokenSink::Zlibx(z) => z.end(out),
        }
    }
}

/// A receiver's token decoder for either stream format.
#[derive(Debug)]
pub enum TokenSource {
    /// Uncompressed tokens.
    Plain(TokenDecoder),
    /// zlibx.
    Zlibx(Box<ZlibxDecoder>),
}

impl TokenSource {
    /// A decoder for one file with `block_count` basis blocks.
    pub fn new(compressed: bool, block_count: u32) -> Self {
        if compressed {
            TokenSource::Zlibx(Box::new(ZlibxDecoder::new(block_count)))
        } else {
            TokenSource::Plain(TokenDecoder::new(block_count))
        }
    }

    /// Decodes the next token.
    pub fn decode(&mut self, r: &mut Reader<'_>) -> Result<Token> {
        match self {
            TokenSource::Plain(d) => d.decode(r),
            TokenSource::Zlibx(d) => d.decode(r),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Lit(Vec<u8>),
        Blk(u32),
    }

    fn encode(ops: &[Op]) -> Vec<u8> {
        let mut e = ZlibxEncoder::new(6);
        let mut out = Vec::new();
        for op in ops {
            match op {
                Op::Lit(d) => e.literal(d, &mut out).unwrap(),
                Op::Blk(i) => e.block(*i, &mut out).unwrap(),
            }
        }
        e.end(&mut out).unwrap();
        out
    }

    fn decode(stream: &[u8], count: u32, byte_by_byte: bool) -> Result<(Vec<u8>, Vec<u32>)> {
        let mut d = ZlibxDecoder::new(count);
        let (mut lit, mut blocks) = (Vec::new(), Vec::new());
        let mut buf = Vec::new();
        let mut src = stream.iter();
        if !byte_by_byte {
            buf.extend_from_slice(stream);
        }
        loop {
            let mut r = Reader::new(&buf);
            match d.decode(&mut r) {
                Ok(t) => {
                    let n = r.position();
                    buf.drain(..n);
                    match t {
                        Token::Literal(b) => lit.extend(b),
                        Token::Block(i) => blocks.push(i),
                        Token::End => return Ok((lit, blocks)),
                    }
                }
                Err(Error::Incomplete) => match src.next() {
                    Some(b) if byte_by_byte => buf.push(*b),
                    _ => return Err(Error::Incomplete),
                },
                Err(e) => return Err(e),
            }
        }
    }

    #[test]
    fn known_token_bytes() {
        // Blocks 0,1,2 then 5 then 200: a run, a relative token, a long token.
        let out = encode(&[Op::Blk(0), Op::Blk(1), Op::Blk(2), Op::Blk(5), Op::Blk(200)]);
        assert_eq!(out, [0xC0, 2, 0, 0x83, TOKEN_LONG, 200, 0, 0, 0, 0]);
        assert_eq!(decode(&out, 300, false).unwrap().1, vec![0, 1, 2, 5, 200]);
    }

    #[test]
    fn rejects_bad_streams() {
        assert!(decode(&[0x85], 3, false).is_err()); // block 5 of 3
        assert!(decode(&[0xC0, 5, 0], 3, false).is_err()); // run past the end
        assert!(decode(&[0xC0, 0, 0], 3, false).is_err()); // empty run
        assert!(decode(&[0x05], 3, false).is_err()); // unknown flag
        assert!(decode(&[0x40, 3, 0xFF, 0xFF, 0xFF, 0], 3, false).is_err()); // garbage deflate
    }

    #[test]
    fn compresses() {
        let data = vec![b'a'; 100_000];
        let out = encode(&[Op::Lit(data.clone())]);
        assert!(out.len() < 1000, "{}", out.len());
        let (lit, blocks) = decode(&out, 0, false).unwrap();
        assert_eq!(lit, data);
        assert!(blocks.is_empty());
    }

    proptest! {
        #[test]
        fn round_trip(ops in proptest::collection::vec(prop_oneof![
            proptest::collection::vec(0u8..3, 1..5000).prop_map(Op::Lit),
            (0u32..300).prop_map(Op::Blk),
        ], 0..30), bytewise in any::<bool>()) {
            let out = encode(&ops);
            let (lit, blocks) = decode(&out, 300, bytewise).unwrap();
            let want_lit: Vec<u8> = ops.iter().filter_map(|o| if let Op::Lit(d) = o { Some(d.clone()) } else { None }).flatten().collect();
            let want_blk: Vec<u32> = ops.iter().filter_map(|o| if let Op::Blk(i) = o { Some(*i) } else { None }).collect();
            prop_assert_eq!(lit, want_lit);
            prop_assert_eq!(blocks, want_blk);
        }

        #[test]
        fn never_panics(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode(&data, 10, false);
        }
    }
}
