//! Compressed token streams, in rsync's framing: "zstd", "lz4", "zlibx" and
//! classic "zlib".
//!
//! Every algorithm shares the flag bytes of rsync's `token.c`: `0x00` end;
//! `0x20` + int32 token; `0x21` + int32 token + u16 run; `0x40 | len>>8,
//! len & 0xff` + compressed bytes (at most [`MAX_DATA_COUNT`]); `0x80 + d`
//! token `last + d`; `0xC0 + d` + u16 run. Token numbers are block indices
//! relative to the last token of the previous run (0 at file start); a run
//! of n means n more consecutive blocks. What differs is the literal data
//! inside the `0x40` chunks:
//!
//! - zlib/zlibx (`deflate.rs`): one raw deflate stream per file, each literal
//!   run ending with a sync flush whose trailing `00 00 ff ff` is not sent.
//!   Classic zlib also feeds every matched block into the compressor's (and
//!   the receiver's decompressor's) history.
//! - zstd (`zstd.rs`): one zstd stream for the whole session (never reset
//!   between files), flushed at the end of each literal run.
//! - lz4 (`lz4.rs`): every chunk is an independent LZ4 block of at most
//!   16383 input bytes (halved until its output fits a chunk).
//!
//! rsync keeps one compressor and one decompressor per session, so a
//! [`TokenCodec`] is made once per session (see [`TokenCodec::new`]) and
//! hands out a per-file [`TokenSink`] / [`TokenSource`] that share it.

mod deflate;
mod lz4;
mod zstd;

use std::sync::{Arc, Mutex, MutexGuard};

use crate::error::{Error, Result};
use crate::handshake::CompressAlgo;
use crate::token::{encode_block, encode_end, encode_literal, Token, TokenDecoder};
use crate::wire::{put_i32, Reader};

/// Largest compressed chunk after one flag pair.
pub const MAX_DATA_COUNT: usize = 16383;
const END_FLAG: u8 = 0x00;
const TOKEN_LONG: u8 = 0x20;
const TOKENRUN_LONG: u8 = 0x21;
const DEFLATED_DATA: u8 = 0x40;
const TOKEN_REL: u8 = 0x80;
const TOKENRUN_REL: u8 = 0xC0;
/// rsync's largest token number.
const MAX_TOKEN_INDEX: i64 = 0x7fff_fffe;

/// zlib's default level (rsync's `-z` without `--compress-level`).
pub const ZLIB_DEFAULT_LEVEL: i32 = 6;
/// zstd's default level (`ZSTD_CLEVEL_DEFAULT`).
pub const ZSTD_DEFAULT_LEVEL: i32 = 3;

/// The level the sender compresses with, as rsync's
/// `init_compression_level` settles it from `--compress-level` (`None`: not
/// given); `None` when that level turns compression off (`0` with zlib or
/// zlibx), or for [`CompressAlgo::None`].
///
/// zlib/zlibx: default 6 (also for -1), clamped to 1-9. zstd: default 3
/// (also for 0), clamped to zstd's own range (negative levels are fast
/// modes). lz4: always 0.
pub fn effective_level(algo: CompressAlgo, requested: Option<i32>) -> Option<i32> {
    match algo {
        CompressAlgo::None => None,
        CompressAlgo::Zlib | CompressAlgo::Zlibx => match requested {
            None | Some(-1) => Some(ZLIB_DEFAULT_LEVEL),
            Some(0) => None,
            Some(l) => Some(l.clamp(1, 9)),
        },
        CompressAlgo::Zstd => match requested {
            None | Some(0) => Some(ZSTD_DEFAULT_LEVEL),
            Some(l) => {
                let r = ::zstd::compression_level_range();
                Some(l.clamp(*r.start(), *r.end()))
            }
        },
        CompressAlgo::Lz4 => Some(0),
    }
}

/// Moves complete chunks (all of `pending` when `all`) into `out`, each
/// behind its `0x40` flag pair.
fn put_chunks(pending: &mut Vec<u8>, all: bool, out: &mut Vec<u8>) {
    let mut start = 0;
    while pending.len() - start >= MAX_DATA_COUNT || (all && start < pending.len()) {
        let n = (pending.len() - start).min(MAX_DATA_COUNT);
        put_chunk(&pending[start..start + n], out);
        start += n;
    }
    pending.drain(..start);
}

/// One chunk (at most [`MAX_DATA_COUNT`] bytes) behind its flag pair.
fn put_chunk(data: &[u8], out: &mut Vec<u8>) {
    debug_assert!(data.len() <= MAX_DATA_COUNT);
    out.push(DEFLATED_DATA | (data.len() >> 8) as u8);
    out.push(data.len() as u8);
    out.extend_from_slice(data);
}

/// The per-algorithm compressor of literal data.
enum Packer {
    Deflate(deflate::Deflater),
    Zstd(zstd::ZstdPacker),
    Lz4(lz4::Lz4Packer),
}

impl Packer {
    fn new(algo: CompressAlgo, level: i32, protocol: i32) -> Result<Packer> {
        Ok(match algo {
            CompressAlgo::Zlibx => Packer::Deflate(deflate::Deflater::new(level, None)),
            CompressAlgo::Zlib => Packer::Deflate(deflate::Deflater::new(level, Some(protocol))),
            CompressAlgo::Zstd => Packer::Zstd(zstd::ZstdPacker::new(level)?),
            CompressAlgo::Lz4 => Packer::Lz4(lz4::Lz4Packer::new()),
            CompressAlgo::None => {
                return Err(Error::unencodable("compressed tokens", "no algorithm"))
            }
        })
    }

    fn begin_file(&mut self) {
        match self {
            Packer::Deflate(d) => d.begin_file(),
            Packer::Zstd(_) | Packer::Lz4(_) => {}
        }
    }

    fn literal(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<()> {
        match self {
            Packer::Deflate(d) => d.literal(data, out),
            Packer::Zstd(z) => z.literal(data, out),
            Packer::Lz4(l) => l.literal(data, out),
        }
    }

    fn flush(&mut self, out: &mut Vec<u8>) -> Result<()> {
        match self {
            Packer::Deflate(d) => d.flush(out),
            Packer::Zstd(z) => z.flush(out),
            Packer::Lz4(l) => l.flush(out),
        }
    }

    fn matched(&mut self, data: &[u8]) -> Result<()> {
        match self {
            Packer::Deflate(d) => d.matched(data),
            Packer::Zstd(_) | Packer::Lz4(_) => Ok(()),
        }
    }
}

/// A sender's compressed token stream: run encoding of block tokens plus
/// the algorithm's literal compressor. One lives for a whole session;
/// [`StreamEncoder::begin_file`] starts each file.
pub struct StreamEncoder {
    packer: Packer,
    in_literal: bool,
    run: Option<(i64, i64)>,
    last_run_end: i64,
}

impl std::fmt::Debug for StreamEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamEncoder")
            .field("run", &self.run)
            .finish()
    }
}

impl StreamEncoder {
    /// A compressor for `algo` at `level` (see [`effective_level`]);
    /// `protocol` matters to classic zlib (below 31 it repeats rsync's
    /// history bug for blocks over 64 KiB).
    pub fn new(algo: CompressAlgo, level: i32, protocol: i32) -> Result<Self> {
        Ok(StreamEncoder {
            packer: Packer::new(algo, level, protocol)?,
            in_literal: false,
            run: None,
            last_run_end: 0,
        })
    }

    /// Starts a file's tokens (zlib's stream restarts; zstd's goes on).
    pub fn begin_file(&mut self) {
        self.packer.begin_file();
        self.in_literal = false;
        self.run = None;
        self.last_run_end = 0;
    }

    fn flush_literal(&mut self, out: &mut Vec<u8>) -> Result<()> {
        if self.in_literal {
            self.packer.flush(out)?;
            self.in_literal = false;
        }
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
        self.packer.literal(data, out)
    }

    /// A copy of basis block `i`; `data` is the block's content (the
    /// sender's matching bytes), which classic zlib adds to its history.
    pub fn block(&mut self, i: u32, data: &[u8], out: &mut Vec<u8>) -> Result<()> {
        if i as i64 > MAX_TOKEN_INDEX {
            return Err(Error::unencodable("block token", format!("index {i}")));
        }
        self.flush_literal(out)?;
        let i = i as i64;
        match self.run {
            Some((s, l)) if i == l + 1 && i < s + 65536 => self.run = Some((s, i)),
            _ => {
                self.output_run(out);
                self.run = Some((i, i));
            }
        }
        self.packer.matched(data)
    }

    /// The end of the file's tokens.
    pub fn end(&mut self, out: &mut Vec<u8>) -> Result<()> {
        self.flush_literal(out)?;
        self.output_run(out);
        out.push(END_FLAG);
        Ok(())
    }
}

/// The per-algorithm decompressor of literal data.
enum Unpacker {
    Deflate(deflate::Inflater),
    Zstd(zstd::ZstdUnpacker),
    Lz4(lz4::Lz4Unpacker),
}

impl Unpacker {
    fn new(algo: CompressAlgo, protocol: i32) -> Result<Unpacker> {
        Ok(match algo {
            CompressAlgo::Zlibx => Unpacker::Deflate(deflate::Inflater::new(None)),
            CompressAlgo::Zlib => Unpacker::Deflate(deflate::Inflater::new(Some(protocol))),
            CompressAlgo::Zstd => Unpacker::Zstd(zstd::ZstdUnpacker::new()?),
            CompressAlgo::Lz4 => Unpacker::Lz4(lz4::Lz4Unpacker::new()),
            CompressAlgo::None => {
                return Err(Error::Unsupported(
                    "compressed tokens without an algorithm".into(),
                ))
            }
        })
    }

    fn begin_file(&mut self) {
        match self {
            Unpacker::Deflate(d) => d.begin_file(),
            Unpacker::Zstd(z) => z.begin_file(),
            Unpacker::Lz4(l) => l.begin_file(),
        }
    }

    /// Takes one received chunk (the previous one is fully used).
    fn chunk(&mut self, data: &[u8]) -> Result<()> {
        match self {
            Unpacker::Deflate(d) => d.chunk(data),
            Unpacker::Zstd(z) => z.chunk(data),
            Unpacker::Lz4(l) => l.chunk(data),
        }
    }

    /// The next piece of decompressed data (at most [`CHUNK_SIZE`](crate::token::CHUNK_SIZE)), or
    /// `None` once everything received so far is out.
    fn output(&mut self) -> Result<Option<Vec<u8>>> {
        match self {
            Unpacker::Deflate(d) => d.output(),
            Unpacker::Zstd(z) => z.output(),
            Unpacker::Lz4(l) => l.output(),
        }
    }

    /// A literal run ended (a non-data flag follows data).
    fn end_data(&mut self) {
        match self {
            Unpacker::Deflate(d) => d.end_data(),
            Unpacker::Zstd(_) | Unpacker::Lz4(_) => {}
        }
    }

    fn sees_blocks(&self) -> bool {
        matches!(self, Unpacker::Deflate(d) if d.sees_blocks())
    }

    fn see(&mut self, data: &[u8]) -> Result<()> {
        match self {
            Unpacker::Deflate(d) => d.see(data),
            Unpacker::Zstd(_) | Unpacker::Lz4(_) => Ok(()),
        }
    }
}

/// A receiver's compressed token stream decoder. One lives for a whole
/// session; [`StreamDecoder::begin_file`] starts each file.
pub struct StreamDecoder {
    unpacker: Unpacker,
    block_count: u32,
    rx_token: i64,
    run_left: u32,
    in_data: bool,
}

impl std::fmt::Debug for StreamDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamDecoder")
            .field("rx_token", &self.rx_token)
            .finish()
    }
}

impl StreamDecoder {
    /// A decompressor for `algo` (`protocol` as for [`StreamEncoder::new`]).
    pub fn new(algo: CompressAlgo, protocol: i32) -> Result<Self> {
        Ok(StreamDecoder {
            unpacker: Unpacker::new(algo, protocol)?,
            block_count: 0,
            rx_token: 0,
            run_left: 0,
            in_data: false,
        })
    }

    /// Starts a file whose sum head announced `block_count` blocks.
    pub fn begin_file(&mut self, block_count: u32) {
        self.unpacker.begin_file();
        self.block_count = block_count;
        self.rx_token = 0;
        self.run_left = 0;
        self.in_data = false;
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

    /// Decodes the next token (literal pieces are at most
    /// [`CHUNK_SIZE`](crate::token::CHUNK_SIZE)). With classic zlib, the
    /// caller hands every returned block's data to
    /// [`StreamDecoder::see_block`] before decoding on.
    ///
    /// A literal piece may be empty: when data chunks were taken in (the
    /// decompressor has consumed them, so they cannot be offered again)
    /// but gave no output yet and what follows is incomplete.
    pub fn decode(&mut self, r: &mut Reader<'_>) -> Result<Token> {
        let start = r.position();
        match self.next_token(r) {
            Err(Error::Incomplete) if r.position() != start => Ok(Token::Literal(Vec::new())),
            other => other,
        }
    }

    /// [`StreamDecoder::decode`], which may return `Incomplete` after
    /// consuming data chunks (`r` then tells how far).
    fn next_token(&mut self, r: &mut Reader<'_>) -> Result<Token> {
        loop {
            if let Some(piece) = self.unpacker.output()? {
                return Ok(Token::Literal(piece));
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
                self.unpacker.chunk(data)?;
                self.in_data = true;
                *r = rr;
                continue;
            }
            if self.in_data {
                // The end of a literal run: zlib restores the sync marker
                // the sender trimmed; then this flag is looked at again.
                self.in_data = false;
                self.unpacker.end_data();
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

    /// Whether matched blocks' data must be handed to
    /// [`StreamDecoder::see_block`] (classic zlib only).
    pub fn sees_blocks(&self) -> bool {
        self.unpacker.sees_blocks()
    }

    /// Adds a matched block's data to the decompressor's history (rsync's
    /// `see_token`; nothing for the other algorithms).
    pub fn see_block(&mut self, data: &[u8]) -> Result<()> {
        self.unpacker.see(data)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The negotiated algorithm and level of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Setup {
    algo: CompressAlgo,
    level: i32,
    protocol: i32,
}

/// A session's token compression: plain tokens, or one algorithm whose
/// compressor and decompressor state lasts the whole session (created on
/// first use). Clones share that state.
#[derive(Debug, Clone, Default)]
pub struct TokenCodec {
    setup: Option<Setup>,
    enc: Arc<Mutex<Option<StreamEncoder>>>,
    dec: Arc<Mutex<Option<StreamDecoder>>>,
}

impl TokenCodec {
    /// Uncompressed tokens.
    pub fn plain() -> Self {
        TokenCodec::default()
    }

    /// Tokens compressed with `algo` (`None` or [`CompressAlgo::None`]:
    /// plain) at the `--compress-level` the session was given
    /// (see [`effective_level`], which may turn compression off).
    pub fn new(algo: Option<CompressAlgo>, requested_level: Option<i32>, protocol: i32) -> Self {
        let setup = algo.and_then(|algo| {
            effective_level(algo, requested_level).map(|level| Setup {
                algo,
                level,
                protocol,
            })
        });
        TokenCodec {
            setup,
            ..TokenCodec::default()
        }
    }

    /// The algorithm in use (`None`: plain tokens).
    pub fn algo(&self) -> Option<CompressAlgo> {
        self.setup.map(|s| s.algo)
    }

    /// The sender's compression level (`None`: plain tokens).
    pub fn level(&self) -> Option<i32> {
        self.setup.map(|s| s.level)
    }

    /// Whether tokens are compressed.
    pub fn is_compressed(&self) -> bool {
        self.setup.is_some()
    }

    /// The encoder for the next file the session sends.
    pub fn sink(&self) -> Result<TokenSink> {
        let Some(s) = self.setup else {
            return Ok(TokenSink::Plain);
        };
        let mut g = lock(&self.enc);
        match g.as_mut() {
            Some(e) => e.begin_file(),
            None => *g = Some(StreamEncoder::new(s.algo, s.level, s.protocol)?),
        }
        drop(g);
        Ok(TokenSink::Stream(Arc::clone(&self.enc)))
    }

    /// The decoder for the next file the session receives, whose sum head
    /// announced `block_count` blocks.
    pub fn source(&self, block_count: u32) -> Result<TokenSource> {
        let Some(s) = self.setup else {
            return Ok(TokenSource::Plain(TokenDecoder::new(block_count)));
        };
        let mut g = lock(&self.dec);
        if g.is_none() {
            *g = Some(StreamDecoder::new(s.algo, s.protocol)?);
        }
        if let Some(d) = g.as_mut() {
            d.begin_file(block_count);
        }
        drop(g);
        Ok(TokenSource::Stream(Arc::clone(&self.dec)))
    }
}

/// Where a sender's tokens for one file go: the plain stream or the
/// session's compressed one.
#[derive(Debug)]
pub enum TokenSink {
    /// Uncompressed tokens.
    Plain,
    /// The session's compressed stream (see [`TokenCodec::sink`]).
    Stream(Arc<Mutex<Option<StreamEncoder>>>),
}

impl TokenSink {
    /// A sink of its own: zlibx at `zlibx_level`, or plain tokens for `None`.
    pub fn new(zlibx_level: Option<u32>) -> Self {
        match zlibx_level {
            Some(l) => TokenSink::Stream(Arc::new(Mutex::new(
                StreamEncoder::new(
                    CompressAlgo::Zlibx,
                    l.min(9) as i32,
                    crate::handshake::PROTOCOL_VERSION,
                )
                .ok(),
            ))),
            None => TokenSink::Plain,
        }
    }

    fn with<T>(
        m: &Mutex<Option<StreamEncoder>>,
        f: impl FnOnce(&mut StreamEncoder) -> Result<T>,
    ) -> Result<T> {
        match lock(m).as_mut() {
            Some(e) => f(e),
            None => Err(Error::unencodable("compressed tokens", "no compressor")),
        }
    }

    /// Literal bytes.
    pub fn literal(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<()> {
        match self {
            TokenSink::Plain => {
                encode_literal(data, out);
                Ok(())
            }
            TokenSink::Stream(m) => Self::with(m, |e| e.literal(data, out)),
        }
    }

    /// A block reference whose data is not at hand (fine for every
    /// algorithm but classic zlib, which needs [`TokenSink::block_data`]).
    pub fn block(&mut self, i: u32, out: &mut Vec<u8>) -> Result<()> {
        self.block_data(i, &[], out)
    }

    /// A reference to block `i`, whose content is `data`.
    pub fn block_data(&mut self, i: u32, data: &[u8], out: &mut Vec<u8>) -> Result<()> {
        match self {
            TokenSink::Plain => encode_block(i, out),
            TokenSink::Stream(m) => Self::with(m, |e| e.block(i, data, out)),
        }
    }

    /// The end of the file's tokens.
    pub fn end(&mut self, out: &mut Vec<u8>) -> Result<()> {
        match self {
            TokenSink::Plain => {
                encode_end(out);
                Ok(())
            }
            TokenSink::Stream(m) => Self::with(m, |e| e.end(out)),
        }
    }
}

/// A receiver's token decoder for one file.
#[derive(Debug)]
pub enum TokenSource {
    /// Uncompressed tokens.
    Plain(TokenDecoder),
    /// The session's compressed stream (see [`TokenCodec::source`]).
    Stream(Arc<Mutex<Option<StreamDecoder>>>),
}

impl TokenSource {
    /// A decoder of its own for one file with `block_count` basis blocks:
    /// zlibx when `compressed`, else plain.
    pub fn new(compressed: bool, block_count: u32) -> Self {
        if compressed {
            let d = StreamDecoder::new(CompressAlgo::Zlibx, crate::handshake::PROTOCOL_VERSION)
                .ok()
                .map(|mut d| {
                    d.begin_file(block_count);
                    d
                });
            TokenSource::Stream(Arc::new(Mutex::new(d)))
        } else {
            TokenSource::Plain(TokenDecoder::new(block_count))
        }
    }

    fn with<T>(
        m: &Mutex<Option<StreamDecoder>>,
        f: impl FnOnce(&mut StreamDecoder) -> Result<T>,
    ) -> Result<T> {
        match lock(m).as_mut() {
            Some(d) => f(d),
            None => Err(Error::Unsupported("no decompressor".into())),
        }
    }

    /// Decodes the next token.
    pub fn decode(&mut self, r: &mut Reader<'_>) -> Result<Token> {
        match self {
            TokenSource::Plain(d) => d.decode(r),
            TokenSource::Stream(m) => Self::with(m, |d| d.decode(r)),
        }
    }

    /// Whether matched blocks' data must be passed to
    /// [`TokenSource::see_block`] (classic zlib).
    pub fn sees_blocks(&self) -> bool {
        match self {
            TokenSource::Plain(_) => false,
            TokenSource::Stream(m) => lock(m).as_ref().is_some_and(|d| d.sees_blocks()),
        }
    }

    /// Hands a matched block's data to the decompressor (rsync's `see_token`).
    pub fn see_block(&mut self, data: &[u8]) -> Result<()> {
        match self {
            TokenSource::Plain(_) => Ok(()),
            TokenSource::Stream(m) => Self::with(m, |d| d.see_block(data)),
        }
    }
}

#[cfg(test)]
mod tests;
