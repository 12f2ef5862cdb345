//! Buffered, (de)multiplexed streams over a transport, feeding the sans-IO
//! decoders of `arsync-proto`.

use std::io::{Read, Write};

use arsync_proto::mux::{encode_frame, Demuxer, Message, MsgTag};
use arsync_proto::wire::Reader;
use arsync_proto::Error as ProtoError;

use crate::error::{RemoteError, Result};

/// Largest DATA frame we send.
pub const MAX_OUT_FRAME: usize = 32 * 1024;

/// Output is handed to the transport once this much is buffered. Measured:
/// one default pipe's worth (64 KiB) costs less CPU than larger batches or
/// enlarged pipes, whose data no longer stays in the caches between the
/// two processes.
pub const OUT_BATCH: usize = 64 * 1024;

/// Size of one `read` from the transport (see [`OUT_BATCH`]).
pub const IN_READ: usize = 64 * 1024;

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
    /// The peer's error-exit code, if it sent one.
    pub error_exit: Option<i32>,
    /// Indices the receiver has safely (MSG_SUCCESS, for
    /// `--remove-source-files`).
    pub success: Vec<i32>,
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
    /// Raw transport bytes (multiplexed input is demultiplexed from here
    /// straight into `data`).
    raw: Vec<u8>,
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
        }
    }

    /// Switches to multiplexed input: bytes buffered but not yet consumed
    /// are re-read as frames.
    pub fn start_multiplex(&mut self) -> Result<()> {
        let leftover = self.data.split_off(self.pos);
        self.data.clear();
        self.pos = 0;
        self.demux = Some(Demuxer::new());
        self.demux_raw(&leftover)
    }

    /// Demultiplexes raw input into `data`, handling messages.
    fn demux_raw(&mut self, raw: &[u8]) -> Result<()> {
        let Some(d) = self.demux.as_mut() else {
            self.data.extend_from_slice(raw);
            return Ok(());
        };
        let (reports, echo) = (&mut self.reports, self.echo_messages);
        d.demux_into(raw, &mut self.data, |m| {
            Self::handle_message(reports, echo, m)
        })
    }

    /// True when decoded data is waiting (a decode may not need to block).
    pub fn has_buffered(&self) -> bool {
        self.pos < self.data.len()
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

    /// Reads more from the transport; returns false at EOF.
    fn fill(&mut self) -> Result<bool> {
        if self.eof {
            return Ok(false);
        }
        self.compact();
        let mut raw = std::mem::take(&mut self.raw);
        raw.resize(IN_READ, 0);
        let n = loop {
            match self.inner.read(&mut raw) {
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.raw = raw;
                    return Err(RemoteError::io("reading from the peer", e));
                }
            }
        };
        if n == 0 {
            self.raw = raw;
            self.eof = true;
            return Ok(false);
        }
        self.total_read += n as u64;
        let res = self.demux_raw(&raw[..n]);
        self.raw = raw;
        res?;
        Ok(true)
    }

    /// Consumes and returns up to `max` bytes of decoded data (at least
    /// one unless `max` is 0), reading from the transport only if nothing
    /// is buffered. For bulk data such as literal file contents.
    pub fn take(&mut self, max: usize) -> Result<&[u8]> {
        if max > 0 && self.pos == self.data.len() && !self.fill_some()? {
            return Err(RemoteError::Eof(join_errors(&self.reports.errors)));
        }
        let n = max.min(self.data.len() - self.pos);
        let start = self.pos;
        self.pos += n;
        Ok(&self.data[start..start + n])
    }

    /// Fills until at least one decoded byte is buffered; false at EOF.
    fn fill_some(&mut self) -> Result<bool> {
        while self.pos == self.data.len() {
            if !self.fill()? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn handle_message(reports: &mut PeerReports, echo: bool, m: Message) -> Result<()> {
        match m {
            Message::Text(tag, text) => {
                let s = String::from_utf8_lossy(&text).into_owned();
                if echo {
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
            Message::NoSend(n) => reports.no_send.push(n),
            Message::ErrorExit(code) => {
                let code = code.unwrap_or(0);
                reports.error_exit = Some(code);
                return Err(RemoteError::RemoteExit {
                    code,
                    messages: join_errors(&reports.errors),
                });
            }
            Message::Success(n) => reports.success.push(n),
            Message::IoTimeout(_) | Message::Noop | Message::Deleted(_) => {}
        }
        Ok(())
    }

    /// Decodes one item with `f`, reading more input while it reports
    /// [`ProtoError::Incomplete`].
    pub fn decode<T>(
        &mut self,
        mut f: impl FnMut(&mut Reader<'_>) -> arsync_proto::Result<T>,
    ) -> Result<T> {
        loop {
            let mut r = Reader::new(&self.data[self.pos..]);
            match f(&mut r) {
                Ok(v) => {
                    self.pos += r.position();
                    return Ok(v);
                }
                Err(ProtoError::Incomplete) => {
                    if !self.fill()? {
                        return Err(RemoteError::Eof(join_errors(&self.reports.errors)));
                    }
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
        loop {
            let mut r = Reader::new(&self.data[self.pos..]);
            let res = f(&mut r);
            self.pos += r.position();
            match res {
                Ok(Some(v)) => return Ok(v),
                Ok(None) | Err(ProtoError::Incomplete) => {
                    if !self.fill()? {
                        return Err(RemoteError::Eof(join_errors(&self.reports.errors)));
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Reads until EOF, handling messages; data after the protocol end is an error.
    pub fn drain_to_eof(&mut self) -> Result<()> {
        while self.fill()? {}
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
        }
    }

    /// Switches to multiplexed output (flushes raw bytes first).
    pub fn start_multiplex(&mut self) -> Result<()> {
        self.flush()?;
        self.multiplexed = true;
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
        self.inner
            .write_all(&self.buf)
            .map_err(|e| write_error("writing to the peer", e))?;
        self.total_written += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
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
            let mut got = Vec::new();
            loop {
                let len = i.decode(|r| r.i32()).unwrap();
                assert!((0..=32 * 1024).contains(&len), "token length {len}");
                if len == 0 {
                    break;
                }
                got.extend_from_slice(&i.decode(|r| Ok(r.bytes(len as usize)?.to_vec())).unwrap());
            }
            assert_eq!(&got, f);
        }
        assert!(matches!(i.take(1), Err(RemoteError::Eof(_))));
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
