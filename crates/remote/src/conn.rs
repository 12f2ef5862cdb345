//! Buffered, (de)multiplexed streams over a transport, feeding the sans-IO
//! decoders of `arsync-proto`.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::sync::Arc;

use arsync_proto::mux::{encode_frame, Demuxer, Message, MsgTag};
use arsync_proto::wire::Reader;
use arsync_proto::Error as ProtoError;

use crate::error::{RemoteError, Result};
use crate::transport::IoClock;

/// Largest DATA frame we send.
pub const MAX_OUT_FRAME: usize = 32 * 1024;

/// Output is handed to the transport once this much is buffered. Measured:
/// one default pipe's worth (64 KiB) costs less CPU than larger batches or
/// enlarged pipes, whose data no longer stays in the caches between the
/// two processes.
pub const OUT_BATCH: usize = 64 * 1024;

/// Size of one `read` from the transport (see [`OUT_BATCH`]).
pub const IN_READ: usize = 64 * 1024;

/// Decoded bytes a [`InStream::decode`] first demultiplexes for a decoder
/// that needs more input (doubling while it still needs more): small, so
/// that little of the file data after a token header takes the detour
/// through the decode buffer instead of going straight to its
/// destination ([`InStream::take_into`]).
const DECODE_STEP: usize = 256;

/// [`InStream::take_into`] reads the transport straight into the caller's
/// buffer when it takes the rest of the current DATA frame or at least
/// this much of it (and [`InStream::int_and_data`] when it has this much
/// room).
const DIRECT_MIN: usize = 4096;

/// A literal token shorter than this is taken for a small file's by
/// [`InStream::int_and_data`] (senders cut large files into tokens of a
/// whole 32 KiB frame).
const SHORT_TOKEN: usize = MAX_OUT_FRAME - 64;

/// What such a direct read also takes into the raw buffer: the header of
/// the next frame and a token header, so that the next token's data is
/// again read directly.
const DIRECT_TAIL: usize = 8;

/// Called for each MSG_NO_SEND as it arrives (an incremental receiver's
/// generator ends a list only when every file it asked for is in or
/// known not to come).
#[derive(Clone)]
pub struct NoSendHook(pub std::sync::Arc<dyn Fn(i32) + Send + Sync>);

/// Takes the peer's MSG_INFO text instead of stdout (a pulling client's
/// output, where the lines must stay in order with its own).
#[derive(Clone)]
pub struct InfoHook(pub std::sync::Arc<InfoFn>);

/// The callback of an [`InfoHook`]: takes one message's text.
pub type InfoFn = dyn Fn(&[u8]) + Send + Sync;

impl std::fmt::Debug for InfoHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InfoHook")
    }
}

impl std::fmt::Debug for NoSendHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NoSendHook")
    }
}

/// What the peer reported out of band.
#[derive(Debug, Default, Clone)]
pub struct PeerReports {
    /// Error texts (MSG_ERROR / MSG_ERROR_XFER).
    pub errors: Vec<String>,
    /// Warnings.
    pub warnings: Vec<String>,
    /// OR of MSG_IO_ERROR flags.
    pub io_error: i32,
    /// Indices the sender could not send (MSG_NO_SEND).
    pub no_send: Vec<i32>,
    /// Told of each MSG_NO_SEND at once.
    pub no_send_hook: Option<NoSendHook>,
    /// The peer's error-exit code, if it sent one.
    pub error_exit: Option<i32>,
    /// Indices the receiver has safely (MSG_SUCCESS, for
    /// `--remove-source-files`).
    pub success: Vec<i32>,
    /// Names the receiving peer deleted (MSG_DELETED; a directory's ends
    /// with a NUL byte), not yet taken.
    pub deleted: Vec<Vec<u8>>,
    /// A client's setting: echoed MSG_INFO goes to stdout as rsync's
    /// client prints it (never on a server, whose stdout is the connection).
    pub info_on_stdout: bool,
    /// Where echoed MSG_INFO goes instead of stdout, when set.
    pub info_hook: Option<InfoHook>,
}

/// The input side of a connection.
pub struct InStream<R: Read> {
    inner: R,
    demux: Option<Demuxer>,
    data: Vec<u8>,
    pos: usize,
    eof: bool,
    /// Out-of-band reports received so far.
    pub reports: PeerReports,
    /// Print peer messages to stderr as they arrive.
    pub echo_messages: bool,
    total_read: u64,
    /// Raw transport bytes; `raw[raw_pos..raw_len]` is not demultiplexed yet.
    /// Multiplexed input goes from here into `data` in small steps as
    /// decoders need it, or straight into the caller's buffer
    /// ([`InStream::take_into`]), so bulk data is copied once.
    raw: Vec<u8>,
    raw_pos: usize,
    raw_len: usize,
    /// The last token [`InStream::int_and_data`] speculated on was short
    /// (a small file's, see [`SHORT_TOKEN`]).
    short_tokens: bool,
    /// Notes each read for `--timeout` ([`InStream::set_clock`]).
    clock: Option<Arc<IoClock>>,
}

impl<R: Read> std::fmt::Debug for InStream<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InStream")
            .field("buffered", &(self.data.len() - self.pos))
            .finish()
    }
}

impl<R: Read> InStream<R> {
    /// Wraps a raw reader (not multiplexed yet).
    pub fn new(inner: R) -> Self {
        InStream {
            inner,
            demux: None,
            data: Vec::new(),
            pos: 0,
            eof: false,
            reports: PeerReports::default(),
            echo_messages: true,
            total_read: 0,
            raw: Vec::new(),
            raw_pos: 0,
            raw_len: 0,
            short_tokens: false,
            clock: None,
        }
    }

    /// Notes every read from the transport on `clock` (`--timeout`).
    pub fn set_clock(&mut self, clock: Arc<IoClock>) {
        self.clock = Some(clock);
    }

    /// `n` raw bytes were read.
    #[inline]
    fn got_raw(&mut self, n: usize) {
        self.total_read += n as u64;
        if let Some(c) = &self.clock {
            c.saw_input();
        }
    }

    /// Switches to multiplexed input: bytes buffered but not yet consumed
    /// are re-read as frames.
    pub fn start_multiplex(&mut self) -> Result<()> {
        let mut leftover = self.data.split_off(self.pos);
        self.data.clear();
        self.pos = 0;
        leftover.extend_from_slice(&self.raw[self.raw_pos..self.raw_len]);
        self.raw_len = leftover.len();
        self.raw_pos = 0;
        leftover.resize(leftover.len().max(IN_READ), 0);
        self.raw = leftover;
        self.demux = Some(Demuxer::new());
        Ok(())
    }

    /// Moves up to `limit` decoded bytes from the raw input to the end of
    /// `dst` (demultiplexing, and handling the messages met on the way).
    /// Returns false when no raw input was waiting.
    fn demux_raw(&mut self, limit: usize, to_data: Option<&mut Vec<u8>>) -> Result<bool> {
        let raw = &self.raw[self.raw_pos..self.raw_len];
        if raw.is_empty() {
            return Ok(false);
        }
        let dst = match to_data {
            Some(v) => v,
            None => &mut self.data,
        };
        let used = match self.demux.as_mut() {
            None => {
                let n = limit.min(raw.len());
                dst.extend_from_slice(&raw[..n]);
                n
            }
            Some(d) => {
                let (reports, echo) = (&mut self.reports, self.echo_messages);
                d.demux_some(raw, dst, limit, |m| Self::handle_message(reports, echo, m))?
            }
        };
        self.raw_pos += used;
        Ok(true)
    }

    /// True when input is waiting (decoded, or read but not demultiplexed
    /// yet: that is demultiplexed now, so a decode may not need to block).
    pub fn has_buffered(&mut self) -> Result<bool> {
        while self.pos == self.data.len() && self.demux_raw(usize::MAX, None)? {}
        Ok(self.pos < self.data.len())
    }

    /// Raw bytes read from the transport.
    pub fn total_read(&self) -> u64 {
        self.total_read
    }

    fn compact(&mut self) {
        if self.pos == self.data.len() {
            self.data.clear();
            self.pos = 0;
        } else if self.pos > IN_READ {
            self.data.drain(..self.pos);
            self.pos = 0;
        }
    }

    /// Reads the next piece of raw input from the transport (only when
    /// all raw input is demultiplexed); returns false at EOF.
    fn read_raw(&mut self) -> Result<bool> {
        if self.eof {
            return Ok(false);
        }
        if self.raw.len() < IN_READ {
            self.raw.resize(IN_READ, 0);
        }
        self.raw_pos = 0;
        self.raw_len = 0;
        let n = loop {
            match self.inner.read(&mut self.raw) {
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(RemoteError::io("reading from the peer", e)),
            }
        };
        self.raw_len = n;
        if n == 0 {
            self.eof = true;
            return Ok(false);
        }
        self.got_raw(n);
        Ok(true)
    }

    /// Makes progress towards more decoded data in `data` (up to `step`
    /// bytes, reading from the transport if no raw input is waiting);
    /// returns false at EOF.
    fn fill(&mut self, step: usize) -> Result<bool> {
        self.compact();
        if self.raw_pos == self.raw_len && !self.read_raw()? {
            return Ok(false);
        }
        self.demux_raw(step, None)
    }

    /// Consumes and returns up to `max` bytes of decoded data (at least
    /// one unless `max` is 0), reading from the transport only if nothing
    /// is buffered.
    pub fn take(&mut self, max: usize) -> Result<&[u8]> {
        if max > 0 && self.pos == self.data.len() && !self.fill_some(max)? {
            return Err(RemoteError::Eof(join_errors(&self.reports.errors)));
        }
        let n = max.min(self.data.len() - self.pos);
        let start = self.pos;
        self.pos += n;
        Ok(&self.data[start..start + n])
    }

    /// Fills the start of `dst` with decoded data and returns how many
    /// bytes (at least one unless `dst` is empty). For bulk data such as
    /// literal file contents: what is not decoded yet goes from the raw
    /// input straight to `dst`, and when nothing is waiting and the
    /// stream is inside a DATA frame, the transport is read straight into
    /// `dst` (with `readv`: the rest of the frame there, what follows into
    /// the raw buffer), so the data is not copied in user space at all.
    pub fn take_into(&mut self, dst: &mut [u8]) -> Result<usize> {
        if dst.is_empty() {
            return Ok(0);
        }
        loop {
            if self.pos < self.data.len() {
                let n = dst.len().min(self.data.len() - self.pos);
                dst[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
                self.pos += n;
                return Ok(n);
            }
            if self.raw_pos < self.raw_len {
                let raw = &self.raw[self.raw_pos..self.raw_len];
                let (used, n) = match self.demux.as_mut() {
                    None => {
                        let n = dst.len().min(raw.len());
                        dst[..n].copy_from_slice(&raw[..n]);
                        (n, n)
                    }
                    Some(d) => {
                        let (reports, echo) = (&mut self.reports, self.echo_messages);
                        d.demux_to(raw, dst, |m| Self::handle_message(reports, echo, m))?
                    }
                };
                self.raw_pos += used;
                if n > 0 {
                    return Ok(n);
                }
                continue;
            }
            // Straight into `dst` when it takes the rest of the frame, or
            // at least a good piece of it.
            let (left, direct) = match &self.demux {
                Some(d) if !self.eof => (d.data_left(), d.data_left().min(dst.len())),
                _ => (0, 0),
            };
            if direct > 0 && (direct == left || direct >= DIRECT_MIN) {
                match self.read_direct(&mut dst[..direct])? {
                    0 => return Err(RemoteError::Eof(join_errors(&self.reports.errors))),
                    n => return Ok(n),
                }
            }
            if !self.read_raw()? {
                return Err(RemoteError::Eof(join_errors(&self.reports.errors)));
            }
        }
    }

    /// Decodes the next four bytes as a little-endian `i32` (a token
    /// header) and, when it is positive, fills the start of `dst` with up
    /// to that many of the data bytes that follow (maybe none). Returns
    /// the int and how many bytes were filled.
    ///
    /// When nothing is buffered, a single `readv` speculates on the usual
    /// layout: (a DATA frame header and) the int into the raw buffer, the
    /// data straight into `dst`. If the stream is laid out otherwise, the
    /// bytes that landed in `dst` are moved back behind the raw bytes and
    /// decoded the ordinary way.
    pub fn int_and_data(&mut self, dst: &mut [u8]) -> Result<(i32, usize)> {
        let plain = self.pos < self.data.len()
            || self.raw_pos < self.raw_len
            || self.eof
            || dst.len() < DIRECT_MIN;
        let head = match &self.demux {
            Some(d) if !plain && d.at_boundary() => 8,
            Some(d) if !plain && d.data_left() >= 4 => 4,
            _ => return Ok((self.decode(|r| r.i32())?, 0)),
        };
        if self.raw.len() < IN_READ {
            self.raw.resize(IN_READ, 0);
        }
        self.raw_pos = 0;
        self.raw_len = 0;
        let want = dst.len().min(MAX_OUT_FRAME).min(IN_READ - head);
        // After a short token (small files) the read also takes what
        // follows into the raw buffer, behind a gap of `want` bytes, so
        // that reads stay large; after a long one it stops at `dst`, so
        // the next token's data is again read directly.
        let tail_at = head + want;
        let tail_end = match self.short_tokens {
            true => IN_READ,
            false => tail_at,
        };
        // Read until the header bytes are complete (a pipe may hand them
        // out in pieces); `n` counts the header and data bytes read.
        let mut n = 0;
        while n < head {
            let (hdr, rest) = self.raw.split_at_mut(head);
            let mut iov = [
                std::io::IoSliceMut::new(&mut hdr[n..]),
                std::io::IoSliceMut::new(&mut dst[..want]),
                std::io::IoSliceMut::new(&mut rest[want..tail_end - head]),
            ];
            match self.inner.read_vectored(&mut iov) {
                Ok(0) => {
                    // Cut off: what arrived is decoded the ordinary way.
                    self.eof = true;
                    self.raw_len = n;
                    return Ok((self.decode(|r| r.i32())?, 0));
                }
                Ok(k) => {
                    // `readv` fills in order: data lands in `dst` only
                    // once the header part is full, in the tail only once
                    // `dst` is.
                    self.got_raw(k);
                    n += k;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(RemoteError::io("reading from the peer", e)),
            }
        }
        let got = (n - head).min(want);
        let tail = n - head - got;
        if let Some(d) = self.demux.as_mut() {
            let frame = match head {
                8 => d.data_header(&self.raw[..4]),
                _ => Some(d.data_left()),
            };
            let at = head - 4;
            let t = i32::from_le_bytes([
                self.raw[at],
                self.raw[at + 1],
                self.raw[at + 2],
                self.raw[at + 3],
            ]);
            match frame {
                Some(len) if len >= 4 && t > 0 => {
                    // As speculated: what landed in `dst` is this frame's
                    // payload, up to the token's length; anything after it
                    // goes back to the raw buffer, right before the tail.
                    let valid = got.min(t as usize).min(len - 4);
                    d.consume_data(4 + valid);
                    let extra = got - valid;
                    self.raw[tail_at - extra..tail_at].copy_from_slice(&dst[valid..got]);
                    self.raw_pos = tail_at - extra;
                    self.raw_len = tail_at + tail;
                    // Whole-frame tokens (32 KiB, as senders cut large
                    // files) are long; a small file's is short.
                    self.short_tokens = (t as usize) < SHORT_TOKEN;
                    return Ok((t, valid));
                }
                Some(_) if head == 8 => {
                    // A DATA header that did not fit: undo, re-read below.
                    let len = d.data_left();
                    d.consume_data(len);
                }
                _ => {}
            }
        }
        // Not as speculated: everything goes to the raw buffer in stream
        // order (the tail is only filled when `dst` was, so it follows).
        self.raw[head..head + got].copy_from_slice(&dst[..got]);
        self.raw_len = head + got + tail;
        Ok((self.decode(|r| r.i32())?, 0))
    }

    /// One `readv` of the transport (nothing may be waiting in the raw
    /// buffer): `dst` (payload of the current DATA frame, no longer than
    /// what is left of it) first, then up to [`DIRECT_TAIL`] bytes into
    /// the raw buffer. Returns the bytes that landed in `dst` (0 at EOF).
    fn read_direct(&mut self, dst: &mut [u8]) -> Result<usize> {
        if self.raw.len() < IN_READ {
            self.raw.resize(IN_READ, 0);
        }
        self.raw_pos = 0;
        self.raw_len = 0;
        let k = dst.len();
        let n = loop {
            let mut iov = [
                std::io::IoSliceMut::new(dst),
                std::io::IoSliceMut::new(&mut self.raw[..DIRECT_TAIL]),
            ];
            match self.inner.read_vectored(&mut iov) {
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(RemoteError::io("reading from the peer", e)),
            }
        };
        if n == 0 {
            self.eof = true;
            return Ok(0);
        }
        self.got_raw(n);
        let direct = n.min(k);
        if let Some(d) = self.demux.as_mut() {
            d.consume_data(direct);
        }
        self.raw_len = n - direct;
        Ok(direct)
    }

    /// Fills until at least one decoded byte is buffered; false at EOF.
    fn fill_some(&mut self, step: usize) -> Result<bool> {
        while self.pos == self.data.len() {
            if !self.fill(step)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn handle_message(reports: &mut PeerReports, echo: bool, m: Message) -> Result<()> {
        match m {
            Message::Text(tag, text) => {
                let s = String::from_utf8_lossy(&text).into_owned();
                // rsync's client prints the peer's MSG_INFO on stdout (e.g.
                // "created directory"), errors and warnings on stderr.
                if let (true, MsgTag::Info, Some(h)) = (echo, tag, &reports.info_hook) {
                    (h.0)(&text);
                } else if echo && tag == MsgTag::Info && reports.info_on_stdout {
                    let mut out = std::io::stdout().lock();
                    let _ = out.write_all(&text);
                    let _ = out.flush();
                } else if echo {
                    eprint!("{s}");
                }
                match tag {
                    MsgTag::Error | MsgTag::ErrorXfer => {
                        reports.errors.push(s.trim_end().to_string())
                    }
                    MsgTag::Warning => reports.warnings.push(s.trim_end().to_string()),
                    _ => {}
                }
            }
            Message::IoError(v) => reports.io_error |= (v & 7) as i32,
            Message::NoSend(n) => {
                if let Some(h) = &reports.no_send_hook {
                    (h.0)(n);
                }
                reports.no_send.push(n)
            }
            Message::ErrorExit(code) => {
                let code = code.unwrap_or(0);
                reports.error_exit = Some(code);
                return Err(RemoteError::RemoteExit {
                    code,
                    messages: join_errors(&reports.errors),
                });
            }
            Message::Success(n) => reports.success.push(n),
            Message::Deleted(name) => reports.deleted.push(name),
            Message::IoTimeout(_) | Message::Noop => {}
        }
        Ok(())
    }

    /// Decodes one item with `f`, reading more input while it reports
    /// [`ProtoError::Incomplete`].
    pub fn decode<T>(
        &mut self,
        mut f: impl FnMut(&mut Reader<'_>) -> arsync_proto::Result<T>,
    ) -> Result<T> {
        let mut step = DECODE_STEP;
        loop {
            let mut r = Reader::new(&self.data[self.pos..]);
            match f(&mut r) {
                Ok(v) => {
                    self.pos += r.position();
                    return Ok(v);
                }
                Err(ProtoError::Incomplete) => {
                    if !self.fill(step)? {
                        return Err(RemoteError::Eof(join_errors(&self.reports.errors)));
                    }
                    step = (step * 2).min(IN_READ);
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Like [`InStream::decode`] for decoders that consume partial input and
    /// return `Ok(None)` until complete (e.g. block sums, token pieces).
    pub fn decode_partial<T>(
        &mut self,
        mut f: impl FnMut(&mut Reader<'_>) -> arsync_proto::Result<Option<T>>,
    ) -> Result<T> {
        let mut step = DECODE_STEP;
        loop {
            let mut r = Reader::new(&self.data[self.pos..]);
            let res = f(&mut r);
            self.pos += r.position();
            match res {
                Ok(Some(v)) => return Ok(v),
                Ok(None) | Err(ProtoError::Incomplete) => {
                    if !self.fill(step)? {
                        return Err(RemoteError::Eof(join_errors(&self.reports.errors)));
                    }
                    step = (step * 2).min(IN_READ);
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Reads until EOF, handling messages; data after the protocol end is an error.
    pub fn drain_to_eof(&mut self) -> Result<()> {
        while self.fill(IN_READ)? {}
        if self.pos < self.data.len() {
            return Err(RemoteError::Refused(format!(
                "{} unexpected bytes after the end of the run",
                self.data.len() - self.pos
            )));
        }
        Ok(())
    }
}

/// A write failure: a closed peer is reported like an end of input (the
/// caller then learns why from the peer's exit status).
fn write_error(what: &str, e: std::io::Error) -> RemoteError {
    match e.kind() {
        std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset => {
            RemoteError::Eof(format!(" ({what}: {e})"))
        }
        _ => RemoteError::io(what, e),
    }
}

/// Joins error texts for an error message.
pub fn join_errors(errors: &[String]) -> String {
    if errors.is_empty() {
        String::new()
    } else {
        format!(": {}", errors.join("; "))
    }
}

/// The output side of a connection.
///
/// Data is framed in place: bytes are copied once into `buf`, where each
/// DATA frame's header is reserved up front and filled in when the frame
/// closes, and `buf` goes to the transport in batches of [`OUT_BATCH`].
pub struct OutStream<W: Write> {
    inner: W,
    multiplexed: bool,
    buf: Vec<u8>,
    /// Offset in `buf` of the open DATA frame's header.
    frame: Option<usize>,
    total_written: u64,
    /// The transport when it is a pipe (see [`OutStream::splice_into`]).
    pipe: Option<OwnedFd>,
    /// `--bwlimit` pacing of what is written.
    pacer: Option<Pacer>,
    /// Notes each write for `--timeout`, and orders them with keepalives
    /// ([`OutStream::set_clock`]).
    clock: Option<Arc<IoClock>>,
}

/// Paces writes to a rate (`--bwlimit`), as rsync does: after each write
/// it sleeps until the bytes written so far are due at that rate. Credit
/// for a pause longer than a second is not kept.
#[derive(Debug)]
struct Pacer {
    bytes_per_sec: u64,
    since: std::time::Instant,
    written: u64,
}

impl Pacer {
    /// `n` more bytes were written: pauses until they are due. A paused
    /// session is busy, not idle, for `--timeout` (`clock`).
    fn wrote(&mut self, n: u64, clock: Option<&IoClock>) {
        self.written += n;
        let due =
            std::time::Duration::from_secs_f64(self.written as f64 / self.bytes_per_sec as f64);
        let elapsed = self.since.elapsed();
        if let Some(wait) = due.checked_sub(elapsed) {
            if let Some(c) = clock {
                c.busy_for(wait);
            }
            std::thread::sleep(wait);
        } else if elapsed - due > std::time::Duration::from_secs(1) {
            self.since = std::time::Instant::now();
            self.written = 0;
        }
    }
}

impl<W: Write> std::fmt::Debug for OutStream<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutStream")
            .field("buffered", &self.buf.len())
            .finish()
    }
}

impl<W: Write> OutStream<W> {
    /// Wraps a raw writer (not multiplexed yet).
    pub fn new(inner: W) -> Self {
        OutStream {
            inner,
            multiplexed: false,
            buf: Vec::new(),
            frame: None,
            total_written: 0,
            pipe: None,
            pacer: None,
            clock: None,
        }
    }

    /// Notes every write to the transport on `clock`, and writes frames
    /// under its guard so that the [`crate::transport::Watchdog`]'s
    /// keepalives fall between them (`--timeout`).
    pub fn set_clock(&mut self, clock: Arc<IoClock>) {
        if self.multiplexed {
            clock.set_out_multiplexed();
        }
        self.clock = Some(clock);
    }

    /// Paces everything written from now on to `bytes_per_sec`
    /// (`--bwlimit`); `None` writes at full speed.
    pub fn set_bwlimit(&mut self, bytes_per_sec: Option<u64>) {
        self.pacer = bytes_per_sec.filter(|&b| b > 0).map(|bytes_per_sec| Pacer {
            bytes_per_sec,
            since: std::time::Instant::now(),
            written: 0,
        });
    }

    /// Switches to multiplexed output (flushes raw bytes first).
    pub fn start_multiplex(&mut self) -> Result<()> {
        self.flush()?;
        self.multiplexed = true;
        if let Some(c) = &self.clock {
            c.set_out_multiplexed();
        }
        Ok(())
    }

    /// Bytes written to the transport.
    pub fn total_written(&self) -> u64 {
        self.total_written
    }

    /// Queues protocol data; hands full batches to the transport.
    pub fn write(&mut self, mut data: &[u8]) -> Result<()> {
        if !self.multiplexed {
            self.buf.extend_from_slice(data);
        } else {
            while !data.is_empty() {
                let start = match self.frame {
                    Some(s) => s,
                    None => {
                        let s = self.buf.len();
                        self.buf.extend_from_slice(&[0; 4]);
                        self.frame = Some(s);
                        s
                    }
                };
                let room = MAX_OUT_FRAME - (self.buf.len() - start - 4);
                let k = room.min(data.len());
                self.buf.extend_from_slice(&data[..k]);
                data = &data[k..];
                if k == room {
                    self.close_frame();
                }
            }
        }
        if self.buf.len() >= OUT_BATCH {
            self.close_frame();
            self.write_out()?;
        }
        Ok(())
    }

    /// Appends one literal token whose data is read straight into the
    /// output buffer: the token's 4-byte length, then up to `max` bytes
    /// that `fill` writes into the slice it is given (returning how many;
    /// 0 appends nothing). Saves the copy out of a separate read buffer.
    /// A token never spans a DATA frame boundary, so it may hold fewer
    /// than `max` bytes; any frame split is valid on the wire.
    pub fn literal_token(
        &mut self,
        max: usize,
        fill: impl FnOnce(&mut [u8]) -> Result<usize>,
    ) -> Result<usize> {
        const TOKEN_HEAD: usize = 4;
        if self.multiplexed {
            if let Some(s) = self.frame {
                if MAX_OUT_FRAME - (self.buf.len() - s - 4) <= TOKEN_HEAD {
                    self.close_frame();
                }
            }
            if self.frame.is_none() {
                self.frame = Some(self.buf.len());
                self.buf.extend_from_slice(&[0; 4]);
            }
        }
        let room = match self.frame {
            Some(s) => MAX_OUT_FRAME - (self.buf.len() - s - 4) - TOKEN_HEAD,
            None => max,
        };
        let k = max.min(room);
        let head = self.buf.len();
        let start = head + TOKEN_HEAD;
        self.buf.resize(start + k, 0);
        let n = match fill(&mut self.buf[start..]) {
            Ok(n) => n.min(k),
            Err(e) => {
                self.buf.truncate(head);
                return Err(e);
            }
        };
        if n == 0 {
            self.buf.truncate(head);
            return Ok(0);
        }
        self.buf.truncate(start + n);
        self.buf[head..start].copy_from_slice(&(n as i32).to_le_bytes());
        if let Some(s) = self.frame {
            if self.buf.len() - s - 4 == MAX_OUT_FRAME {
                self.close_frame();
            }
        }
        if self.buf.len() >= OUT_BATCH {
            self.close_frame();
            self.write_out()?;
        }
        Ok(n)
    }

    /// Lets [`OutStream::literal_token_spliced`] move file data into
    /// `fd` (the transport's descriptor, duplicated) with `splice(2)`:
    /// only when it is a pipe, else this does nothing.
    pub fn splice_into(&mut self, fd: OwnedFd) {
        let is_pipe = rustix::fs::fstat(&fd)
            .is_ok_and(|st| rustix::fs::FileType::from_raw_mode(st.st_mode).is_fifo());
        if is_pipe {
            self.pipe = Some(fd);
        }
    }

    /// True when literal data can be spliced into the transport.
    pub fn can_splice(&self) -> bool {
        self.multiplexed && self.pipe.is_some()
    }

    /// Appends one literal token of up to `max` bytes of `file` from
    /// `*offset` (advanced), in a DATA frame of its own: the bytes are read
    /// into `scratch` and given to `hash`, then moved from the file into
    /// the pipe with `splice(2)`, so they are not copied into the pipe.
    /// Should the splice fail or fall short (the file shrank), the rest
    /// is written from `scratch`, and splicing stops for the session: the
    /// stream always carries exactly the bytes that were hashed, unless
    /// the file changes in between (then the receiver's whole-file check
    /// fails and the file is sent again, which callers do without
    /// splicing). Returns how many bytes (0 at the end of the file).
    pub fn literal_token_spliced(
        &mut self,
        file: &std::fs::File,
        offset: &mut u64,
        max: usize,
        scratch: &mut Vec<u8>,
        hash: impl FnOnce(&[u8]),
    ) -> Result<usize> {
        const TOKEN_HEAD: usize = 4;
        let k = max.min(MAX_OUT_FRAME - TOKEN_HEAD);
        if scratch.len() < k {
            scratch.resize(k, 0);
        }
        let n = loop {
            match std::os::unix::fs::FileExt::read_at(file, &mut scratch[..k], *offset) {
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(RemoteError::io("reading a source file", e)),
            }
        };
        if n == 0 {
            return Ok(0);
        }
        hash(&scratch[..n]);
        self.close_frame();
        let word = ((arsync_proto::mux::MPLEX_BASE as u32) << 24) | (TOKEN_HEAD + n) as u32;
        self.buf.extend_from_slice(&word.to_le_bytes());
        self.buf.extend_from_slice(&(n as i32).to_le_bytes());
        // The frame's header and its spliced data go out under one guard.
        let clock = self.clock.clone();
        let guard = clock.as_ref().map(|c| c.write_guard());
        let wrote = self.write_unguarded()?;
        let mut moved = 0;
        if let Some(pipe) = &self.pipe {
            let mut at = *offset;
            while moved < n {
                match rustix::pipe::splice(
                    file,
                    Some(&mut at),
                    pipe,
                    None,
                    n - moved,
                    rustix::pipe::SpliceFlags::empty(),
                ) {
                    Ok(0) => break,
                    Ok(m) => moved += m,
                    Err(rustix::io::Errno::INTR) => {}
                    Err(_) => break,
                }
            }
        }
        if moved < n {
            self.pipe = None;
            self.inner
                .write_all(&scratch[moved..n])
                .map_err(|e| write_error("writing to the peer", e))?;
        }
        if let Some(c) = &clock {
            c.saw_output();
        }
        drop(guard);
        self.total_written += n as u64;
        if let Some(p) = &mut self.pacer {
            p.wrote(wrote as u64 + n as u64, self.clock.as_deref());
        }
        *offset += n as u64;
        Ok(n)
    }

    /// Fills in the open DATA frame's header (drops it if empty).
    fn close_frame(&mut self) {
        if let Some(start) = self.frame.take() {
            let len = self.buf.len() - start - 4;
            if len == 0 {
                self.buf.truncate(start);
            } else {
                let word = ((arsync_proto::mux::MPLEX_BASE as u32) << 24) | len as u32;
                self.buf[start..start + 4].copy_from_slice(&word.to_le_bytes());
            }
        }
    }

    /// Writes `buf` (complete frames only) to the transport.
    fn write_out(&mut self) -> Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let n = match &self.clock {
            None => self.write_unguarded()?,
            Some(c) => {
                let c = Arc::clone(c);
                let _guard = c.write_guard();
                let n = self.write_unguarded()?;
                c.saw_output();
                n
            }
        };
        // The pause for --bwlimit is outside the guard: keepalives may go
        // out while it lasts.
        if let Some(p) = &mut self.pacer {
            p.wrote(n as u64, self.clock.as_deref());
        }
        Ok(())
    }

    /// Writes `buf` to the transport (counted, not paced); returns how
    /// many bytes.
    fn write_unguarded(&mut self) -> Result<usize> {
        let n = self.buf.len();
        if n == 0 {
            return Ok(0);
        }
        self.inner
            .write_all(&self.buf)
            .map_err(|e| write_error("writing to the peer", e))?;
        self.total_written += n as u64;
        self.buf.clear();
        Ok(n)
    }

    /// Sends an out-of-band message (multiplexed output only), after
    /// everything queued before it.
    pub fn message(&mut self, tag: MsgTag, payload: &[u8]) -> Result<()> {
        self.close_frame();
        encode_frame(tag, payload, &mut self.buf)?;
        self.write_out()
    }

    /// Writes everything buffered.
    pub fn flush(&mut self) -> Result<()> {
        self.close_frame();
        self.write_out()?;
        self.inner
            .flush()
            .map_err(|e| write_error("flushing to the peer", e))
    }

    /// Flushes and returns the inner writer.
    pub fn into_inner(mut self) -> Result<W> {
        self.flush()?;
        Ok(self.inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arsync_proto::mux::{encode_data, encode_int_msg};

    #[test]
    fn out_stream_frames_in_place() {
        let mut o = OutStream::new(Vec::new());
        o.write(b"raw").unwrap();
        o.start_multiplex().unwrap();
        let big: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        o.write(&big[..10]).unwrap();
        o.write(&big[10..]).unwrap();
        o.message(MsgTag::Info, b"hi\n").unwrap();
        o.write(b"tail").unwrap();
        let out = o.into_inner().unwrap();
        let mut want = b"raw".to_vec();
        encode_data(&big, MAX_OUT_FRAME, &mut want);
        encode_frame(MsgTag::Info, b"hi\n", &mut want).unwrap();
        encode_data(b"tail", MAX_OUT_FRAME, &mut want);
        assert_eq!(out, want);
    }

    #[test]
    fn out_stream_batches_writes() {
        struct Counting(Vec<usize>);
        impl Write for Counting {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.push(b.len());
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut o = OutStream::new(Counting(Vec::new()));
        o.start_multiplex().unwrap();
        for _ in 0..1000 {
            o.write(&[1u8; 1000]).unwrap();
        }
        let w = o.into_inner().unwrap();
        // 1 MB of data in batches: each write at least a batch but the last.
        assert!(w.0.len() <= 1_000_000 / OUT_BATCH + 1, "{:?}", w.0);
        assert!(w.0[..w.0.len() - 1].iter().all(|&n| n >= OUT_BATCH));
    }

    #[test]
    fn literal_tokens_read_in_place() {
        // Three "files" read straight into the output: the demultiplexed
        // stream must be the length-prefixed tokens of exactly their bytes,
        // no token over the limit, and a zero read appends nothing.
        let files: Vec<Vec<u8>> = [100_000usize, 5, 40_000]
            .iter()
            .map(|&n| (0..n as u32).map(|i| (i % 249) as u8).collect())
            .collect();
        let mut o = OutStream::new(Vec::new());
        o.start_multiplex().unwrap();
        for f in &files {
            let mut src = std::io::Cursor::new(f.clone());
            loop {
                let n = o
                    .literal_token(32 * 1024, |b| Ok(src.read(b).unwrap()))
                    .unwrap();
                if n == 0 {
                    break;
                }
            }
            o.write(&0i32.to_le_bytes()).unwrap();
        }
        let wire = o.into_inner().unwrap();
        let mut i = InStream::new(std::io::Cursor::new(wire));
        i.start_multiplex().unwrap();
        for f in &files {
            assert_eq!(&read_literal_tokens(&mut i), f);
        }
        assert!(matches!(i.take(1), Err(RemoteError::Eof(_))));
    }

    /// Reads literal tokens up to the end token (length 0) and returns their data.
    fn read_literal_tokens<R: std::io::Read>(i: &mut InStream<R>) -> Vec<u8> {
        let mut got = Vec::new();
        loop {
            let len = i.decode(|r| r.i32()).unwrap();
            assert!((0..=32 * 1024).contains(&len), "token length {len}");
            if len == 0 {
                return got;
            }
            got.extend_from_slice(&i.decode(|r| Ok(r.bytes(len as usize)?.to_vec())).unwrap());
        }
    }

    #[test]
    fn spliced_literal_tokens_arrive_intact_over_a_pipe() {
        // A file's data spliced into a real pipe between framed protocol
        // bytes: the reader sees the same stream as with plain tokens.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..200_000u32).map(|i| (i * 31 % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let (rd, wr) = rustix::pipe::pipe().unwrap();
        let reader = std::thread::spawn(move || {
            let mut i = InStream::new(std::fs::File::from(rd));
            i.start_multiplex().unwrap();
            assert_eq!(i.decode(|r| Ok(r.bytes(5)?.to_vec())).unwrap(), b"head:");
            let got = read_literal_tokens(&mut i);
            let tail = i.decode(|r| Ok(r.bytes(4)?.to_vec())).unwrap();
            (got, tail)
        });
        let dup = wr.try_clone().unwrap();
        let mut o = OutStream::new(std::fs::File::from(wr));
        o.splice_into(dup);
        assert!(!o.can_splice(), "not before multiplexing");
        o.start_multiplex().unwrap();
        assert!(o.can_splice());
        o.write(b"head:").unwrap();
        let f = std::fs::File::open(&path).unwrap();
        let (mut offset, mut scratch, mut hashed) = (0u64, Vec::new(), Vec::new());
        loop {
            let n = o
                .literal_token_spliced(&f, &mut offset, 32 * 1024, &mut scratch, |b| {
                    hashed.extend_from_slice(b)
                })
                .unwrap();
            if n == 0 {
                break;
            }
        }
        assert!(o.can_splice(), "splicing kept working");
        o.write(&0i32.to_le_bytes()).unwrap();
        o.write(b"tail").unwrap();
        drop(o.into_inner().unwrap());
        let (got, tail) = reader.join().unwrap();
        assert_eq!(offset, data.len() as u64);
        assert_eq!(hashed, data, "the hash saw every byte once");
        assert_eq!(got, data);
        assert_eq!(tail, b"tail");
        // Not a pipe: no splicing.
        let mut v = OutStream::new(Vec::new());
        v.splice_into(std::fs::File::open(&path).unwrap().into());
        v.start_multiplex().unwrap();
        assert!(!v.can_splice());
    }

    #[test]
    fn literal_token_read_error_leaves_output_intact() {
        let mut o = OutStream::new(Vec::new());
        o.start_multiplex().unwrap();
        o.write(b"ab").unwrap();
        let r = o.literal_token(10, |_| Err(RemoteError::Refused("boom".into())));
        assert!(r.is_err());
        let mut want = Vec::new();
        encode_data(b"ab", MAX_OUT_FRAME, &mut want);
        assert_eq!(o.into_inner().unwrap(), want);
    }

    /// A reader that hands out its bytes in pieces of the given sizes.
    struct Pieces {
        data: Vec<u8>,
        at: usize,
        sizes: Vec<usize>,
        i: usize,
    }

    impl Read for Pieces {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.read_vectored(&mut [std::io::IoSliceMut::new(buf)])
        }

        /// Fills the buffers in turn, like `readv`.
        fn read_vectored(
            &mut self,
            bufs: &mut [std::io::IoSliceMut<'_>],
        ) -> std::io::Result<usize> {
            let mut want = self.sizes[self.i % self.sizes.len()];
            self.i += 1;
            let mut total = 0;
            for buf in bufs {
                let n = want.min(buf.len()).min(self.data.len() - self.at);
                buf[..n].copy_from_slice(&self.data[self.at..self.at + n]);
                self.at += n;
                want -= n;
                total += n;
            }
            Ok(total)
        }
    }

    #[test]
    fn take_into_and_decode_interleave_across_frames_and_messages() {
        // Length-prefixed tokens in frames that split them anywhere, with
        // messages between frames, read in odd pieces: decoding the
        // lengths and taking the data into a caller's buffer gives back
        // the tokens, and every message is seen in order.
        let tokens: Vec<Vec<u8>> = [5usize, 40_000, 1, 70_000, 3, 32_764]
            .iter()
            .enumerate()
            .map(|(k, &n)| (0..n).map(|i| (i * 7 + k) as u8).collect())
            .collect();
        let mut stream = Vec::new();
        for t in &tokens {
            stream.extend_from_slice(&(t.len() as i32).to_le_bytes());
            stream.extend_from_slice(t);
        }
        stream.extend_from_slice(&0i32.to_le_bytes());
        let mut wire = Vec::new();
        for (k, chunk) in stream.chunks(9_001).enumerate() {
            encode_data(chunk, MAX_OUT_FRAME, &mut wire);
            encode_int_msg(MsgTag::NoSend, k as i32, &mut wire);
        }
        let all_sizes = [
            vec![1, 3, 7],
            vec![65_536],
            vec![4_096, 13, 30_000],
            vec![5_000, 6],
            vec![9_009, 9_013, 12],
        ];
        for (sizes, speculate) in all_sizes.iter().flat_map(|s| [(s, false), (s, true)]) {
            let r = Pieces {
                data: wire.clone(),
                at: 0,
                sizes: sizes.clone(),
                i: 0,
            };
            let mut i = InStream::new(r);
            i.start_multiplex().unwrap();
            let head = |i: &mut InStream<Pieces>, got: &mut Vec<u8>| match speculate {
                true => {
                    let mut buf = vec![0u8; 50_000];
                    let (t, n) = i.int_and_data(&mut buf).unwrap();
                    assert!(n == 0 || (t > 0 && n <= t as usize), "{t} {n}");
                    got.extend_from_slice(&buf[..n]);
                    t
                }
                false => i.decode(|r| r.i32()).unwrap(),
            };
            for t in &tokens {
                let mut got = Vec::new();
                let len = head(&mut i, &mut got) as usize;
                assert_eq!(len, t.len());
                while got.len() < len {
                    let want = (len - got.len()).min(10_000);
                    let mut buf = vec![0u8; want];
                    let n = i.take_into(&mut buf).unwrap();
                    assert!(n > 0 && n <= want);
                    got.extend_from_slice(&buf[..n]);
                }
                assert_eq!(&got, t);
            }
            assert_eq!(head(&mut i, &mut Vec::new()), 0);
            i.drain_to_eof().unwrap();
            let n = stream.chunks(9_001).count() as i32;
            assert_eq!(i.reports.no_send, (0..n).collect::<Vec<_>>());
            assert!(matches!(i.take_into(&mut [0]), Err(RemoteError::Eof(_))));
        }
    }

    #[test]
    fn in_stream_demuxes_and_takes() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
        let mut wire = b"pre".to_vec();
        encode_data(&data[..1000], 700, &mut wire);
        encode_int_msg(MsgTag::IoError, 2, &mut wire);
        encode_data(&data[1000..], MAX_OUT_FRAME, &mut wire);
        let mut i = InStream::new(std::io::Cursor::new(wire));
        i.echo_messages = false;
        assert_eq!(i.decode(|r| Ok(r.bytes(3)?.to_vec())).unwrap(), b"pre");
        i.start_multiplex().unwrap();
        let mut got = Vec::new();
        while got.len() < data.len() {
            let s = i.take(50_000).unwrap();
            assert!(!s.is_empty() && s.len() <= 50_000);
            got.extend_from_slice(s);
        }
        assert_eq!(got, data);
        assert_eq!(i.reports.io_error, 2);
        assert!(i.take(0).unwrap().is_empty());
        assert!(matches!(i.take(1), Err(RemoteError::Eof(_))));
    }
}
