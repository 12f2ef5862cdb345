//! Buffered, (de)multiplexed streams over a transport, feeding the sans-IO
//! decoders of `arsync-proto`.

use std::io::{Read, Write};

use arsync_proto::mux::{encode_data, encode_frame, Demuxer, Event, Message, MsgTag};
use arsync_proto::wire::Reader;
use arsync_proto::Error as ProtoError;

use crate::error::{RemoteError, Result};

/// Largest DATA frame we send.
pub const MAX_OUT_FRAME: usize = 32 * 1024;

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
        }
    }

    /// Switches to multiplexed input: bytes buffered but not yet consumed
    /// are re-read as frames.
    pub fn start_multiplex(&mut self) -> Result<()> {
        let leftover = self.data.split_off(self.pos);
        self.data.clear();
        self.pos = 0;
        let mut d = Demuxer::new();
        d.push(&leftover);
        self.demux = Some(d);
        self.process_events()
    }

    fn process_events(&mut self) -> Result<()> {
        if let Some(d) = self.demux.as_mut() {
            while let Some(ev) = d.next_event()? {
                match ev {
                    Event::Data(b) => self.data.extend_from_slice(&b),
                    Event::Keepalive => {}
                    Event::Message(m) => {
                        Self::handle_message(&mut self.reports, self.echo_messages, m)?
                    }
                }
            }
        }
        Ok(())
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
        if self.pos > 0 && (self.pos == self.data.len() || self.pos > 64 * 1024) {
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
        let mut buf = [0u8; 64 * 1024];
        let n = loop {
            match self.inner.read(&mut buf) {
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(RemoteError::io("reading from the peer", e)),
            }
        };
        if n == 0 {
            self.eof = true;
            return Ok(false);
        }
        self.total_read += n as u64;
        match self.demux.as_mut() {
            None => self.data.extend_from_slice(&buf[..n]),
            Some(d) => {
                d.push(&buf[..n]);
                self.process_events()?;
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
            Message::IoTimeout(_) | Message::Noop | Message::Success(_) | Message::Deleted(_) => {}
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
pub struct OutStream<W: Write> {
    inner: W,
    multiplexed: bool,
    buf: Vec<u8>,
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

    /// Queues protocol data; flushes in frames when enough is buffered.
    pub fn write(&mut self, data: &[u8]) -> Result<()> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= MAX_OUT_FRAME {
            self.flush_full_frames()?;
        }
        Ok(())
    }

    fn flush_full_frames(&mut self) -> Result<()> {
        let full = self.buf.len() / MAX_OUT_FRAME * MAX_OUT_FRAME;
        if full == 0 {
            return Ok(());
        }
        let rest = self.buf.split_off(full);
        let chunk = std::mem::replace(&mut self.buf, rest);
        self.send_raw_data(&chunk)
    }

    fn send_raw_data(&mut self, data: &[u8]) -> Result<()> {
        let framed;
        let bytes: &[u8] = if self.multiplexed {
            let mut out = Vec::with_capacity(data.len() + data.len() / MAX_OUT_FRAME * 4 + 4);
            encode_data(data, MAX_OUT_FRAME, &mut out);
            framed = out;
            &framed
        } else {
            data
        };
        self.inner
            .write_all(bytes)
            .map_err(|e| write_error("writing to the peer", e))?;
        self.total_written += bytes.len() as u64;
        Ok(())
    }

    /// Sends an out-of-band message (multiplexed output only).
    pub fn message(&mut self, tag: MsgTag, payload: &[u8]) -> Result<()> {
        self.flush()?;
        let mut out = Vec::new();
        encode_frame(tag, payload, &mut out)?;
        self.inner
            .write_all(&out)
            .map_err(|e| write_error("writing to the peer", e))?;
        self.total_written += out.len() as u64;
        Ok(())
    }

    /// Writes everything buffered.
    pub fn flush(&mut self) -> Result<()> {
        if !self.buf.is_empty() {
            let chunk = std::mem::take(&mut self.buf);
            self.send_raw_data(&chunk)?;
        }
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
