//! Multiplexed framing: every message on a multiplexed stream starts with a
//! 4-byte little-endian header `((MPLEX_BASE + tag) << 24) | length`.
//!
//! [`Demuxer`] is an incremental decoder: feed it bytes split anywhere and it
//! yields [`Event`]s. `DATA` payloads are passed through in pieces as they
//! arrive (never buffered whole), other messages are bounded by
//! [`MAX_MSG_LEN`].

use crate::error::{Error, Result};

/// Offset added to the tag in the header's high byte.
pub const MPLEX_BASE: u8 = 7;
/// Largest payload a header can announce (24 bits).
pub const MAX_FRAME_LEN: usize = 0xFF_FFFF;
/// Largest non-data message accepted from a peer.
pub const MAX_MSG_LEN: usize = 32 * 1024;

/// Message tags that may travel between rsync peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum MsgTag {
    /// File data and protocol data.
    Data = 0,
    /// A transfer error message (text).
    ErrorXfer = 1,
    /// An informational message (text).
    Info = 2,
    /// An error message (text).
    Error = 3,
    /// A warning (text).
    Warning = 4,
    /// The sending side had an I/O error (int flags).
    IoError = 22,
    /// A daemon's timeout value (int seconds).
    IoTimeout = 33,
    /// Protocol-30 keep-alive (empty).
    Noop = 42,
    /// Error-exit synchronisation (int exit code, or empty).
    ErrorExit = 86,
    /// A file was updated successfully (int ndx).
    Success = 100,
    /// A file was deleted on the receiving side (name).
    Deleted = 101,
    /// The sender could not open a file (int ndx).
    NoSend = 102,
}

impl MsgTag {
    /// Maps a wire tag to a [`MsgTag`]; tags internal to rsync (5-10) and
    /// unknown tags are rejected.
    pub fn from_wire(tag: u8) -> Option<MsgTag> {
        Some(match tag {
            0 => MsgTag::Data,
            1 => MsgTag::ErrorXfer,
            2 => MsgTag::Info,
            3 => MsgTag::Error,
            4 => MsgTag::Warning,
            22 => MsgTag::IoError,
            33 => MsgTag::IoTimeout,
            42 => MsgTag::Noop,
            86 => MsgTag::ErrorExit,
            100 => MsgTag::Success,
            101 => MsgTag::Deleted,
            102 => MsgTag::NoSend,
            _ => return None,
        })
    }
}

/// A decoded non-data message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Text for the user with its severity tag (ErrorXfer, Info, Error, Warning).
    Text(MsgTag, Vec<u8>),
    /// I/O error flags from the sender.
    IoError(u32),
    /// The daemon's timeout in seconds.
    IoTimeout(i32),
    /// Keep-alive.
    Noop,
    /// The peer is exiting with this code (`None`: an acknowledgement).
    ErrorExit(Option<i32>),
    /// A file index was updated successfully.
    Success(i32),
    /// A name was deleted.
    Deleted(Vec<u8>),
    /// The sender could not send this index.
    NoSend(i32),
}

/// Something the demultiplexer found in the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A piece of the data stream (never empty).
    Data(Vec<u8>),
    /// An empty DATA frame: a keep-alive.
    Keepalive,
    /// An out-of-band message.
    Message(Message),
}

/// Builds a frame header.
pub fn header(tag: MsgTag, len: usize) -> Result<[u8; 4]> {
    if len > MAX_FRAME_LEN {
        return Err(Error::unencodable(
            "frame",
            format!("length {len} exceeds 24 bits"),
        ));
    }
    let word = ((MPLEX_BASE as u32 + tag as u32) << 24) | len as u32;
    Ok(word.to_le_bytes())
}

/// Appends one frame with `payload`.
pub fn encode_frame(tag: MsgTag, payload: &[u8], out: &mut Vec<u8>) -> Result<()> {
    out.extend_from_slice(&header(tag, payload.len())?);
    out.extend_from_slice(payload);
    Ok(())
}

/// Appends `data` as one or more DATA frames of at most `max_frame` bytes.
pub fn encode_data(data: &[u8], max_frame: usize, out: &mut Vec<u8>) {
    let max = max_frame.clamp(1, MAX_FRAME_LEN);
    for chunk in data.chunks(max) {
        // Chunk length is bounded by MAX_FRAME_LEN, so the header always builds.
        let word = ((MPLEX_BASE as u32) << 24) | chunk.len() as u32;
        out.extend_from_slice(&word.to_le_bytes());
        out.extend_from_slice(chunk);
    }
}

/// Appends a message carrying one int (IoError, Success, NoSend, ErrorExit, IoTimeout).
pub fn encode_int_msg(tag: MsgTag, v: i32, out: &mut Vec<u8>) {
    let word = ((MPLEX_BASE as u32 + tag as u32) << 24) | 4;
    out.extend_from_slice(&word.to_le_bytes());
    out.extend_from_slice(&v.to_le_bytes());
}

/// Incremental demultiplexer.
#[derive(Debug, Default)]
pub struct Demuxer {
    buf: Vec<u8>,
    /// Bytes of the current DATA frame not yet delivered.
    data_left: usize,
}

impl Demuxer {
    /// A demuxer at a frame boundary.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes buffered but not yet decoded.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// True when no frame is partially received.
    pub fn at_boundary(&self) -> bool {
        self.buf.is_empty() && self.data_left == 0
    }

    /// Decodes the next event, or `Ok(None)` when more bytes are needed.
    pub fn next_event(&mut self) -> Result<Option<Event>> {
        if self.data_left > 0 {
            if self.buf.is_empty() {
                return Ok(None);
            }
            let n = self.data_left.min(self.buf.len());
            let piece: Vec<u8> = self.buf.drain(..n).collect();
            self.data_left -= n;
            return Ok(Some(Event::Data(piece)));
        }
        if self.buf.len() < 4 {
            return Ok(None);
        }
        let (tag, len) = parse_header(&self.buf[..4])?;
        if tag == MsgTag::Data {
            self.buf.drain(..4);
            if len == 0 {
                return Ok(Some(Event::Keepalive));
            }
            self.data_left = len;
            return self.next_event();
        }
        if self.buf.len() < 4 + len {
            return Ok(None);
        }
        let msg = parse_message(tag, &self.buf[4..4 + len])?;
        self.buf.drain(..4 + len);
        Ok(Some(Event::Message(msg)))
    }

    /// Demultiplexes `input` without intermediate copies: `DATA` payloads
    /// are appended to `data` as they arrive, keepalives are dropped, and
    /// every other message goes to `on_message` (the data before it has
    /// been appended by then). Frame headers and messages split across
    /// calls are kept until complete. Do not mix with [`Demuxer::push`].
    pub fn demux_into<E: From<Error>>(
        &mut self,
        input: &[u8],
        data: &mut Vec<u8>,
        on_message: impl FnMut(Message) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        self.demux_some(input, data, usize::MAX, on_message)
            .map(|_| ())
    }

    /// Like [`Demuxer::demux_into`], but stops once `limit` data bytes
    /// were appended (right after them: the frame header or message that
    /// follows is left in `input`). Returns how many bytes of `input` were
    /// consumed; the caller passes the rest again later. With this a
    /// reader can send a run of file data straight to its destination
    /// buffer and keep only small pieces (token headers) in between.
    pub fn demux_some<E: From<Error>>(
        &mut self,
        input: &[u8],
        data: &mut Vec<u8>,
        limit: usize,
        on_message: impl FnMut(Message) -> std::result::Result<(), E>,
    ) -> std::result::Result<usize, E> {
        self.demux_with(input, limit, |b| data.extend_from_slice(b), on_message)
    }

    /// Like [`Demuxer::demux_some`] into a slice: fills the start of `dst`
    /// with data (at most `dst.len()` bytes). Returns how many bytes of
    /// `input` were consumed and how many data bytes were written.
    pub fn demux_to<E: From<Error>>(
        &mut self,
        input: &[u8],
        dst: &mut [u8],
        on_message: impl FnMut(Message) -> std::result::Result<(), E>,
    ) -> std::result::Result<(usize, usize), E> {
        let mut written = 0;
        let used = self.demux_with(
            input,
            dst.len(),
            |b| {
                dst[written..written + b.len()].copy_from_slice(b);
                written += b.len();
            },
            on_message,
        )?;
        Ok((used, written))
    }

    /// Bytes of the current DATA frame not delivered yet: when non-zero,
    /// the next bytes of the stream are that much payload.
    pub fn data_left(&self) -> usize {
        self.data_left
    }

    /// At a frame boundary, takes `header` (the next 4 bytes of the
    /// stream, read by the caller) if it starts a DATA frame: returns its
    /// payload length (now [`Demuxer::data_left`]). Otherwise (another
    /// frame, a bad header, not at a boundary) nothing changes: `None`.
    pub fn data_header(&mut self, header: &[u8]) -> Option<usize> {
        if !self.at_boundary() || header.len() != 4 {
            return None;
        }
        match parse_header(header) {
            Ok((MsgTag::Data, len)) => {
                self.data_left = len;
                Some(len)
            }
            _ => None,
        }
    }

    /// Records that the caller took `n` bytes of the current DATA frame's
    /// payload from the stream itself (e.g. read them straight into its
    /// buffer); at most [`Demuxer::data_left`].
    pub fn consume_data(&mut self, n: usize) {
        self.data_left -= n.min(self.data_left);
    }

    /// The demultiplexing loop: data goes to `put` (at most `limit` bytes
    /// in all); returns how much of `input` was consumed.
    fn demux_with<E: From<Error>>(
        &mut self,
        input: &[u8],
        limit: usize,
        mut put: impl FnMut(&[u8]),
        mut on_message: impl FnMut(Message) -> std::result::Result<(), E>,
    ) -> std::result::Result<usize, E> {
        let total = input.len();
        let mut input = input;
        let mut room = limit;
        loop {
            if self.data_left > 0 {
                let n = self.data_left.min(input.len()).min(room);
                put(&input[..n]);
                input = &input[n..];
                self.data_left -= n;
                room -= n;
            }
            if input.is_empty() || room == 0 {
                return Ok(total - input.len());
            }
            if self.buf.is_empty() && input.len() >= 4 {
                // The common case: a whole header in this input.
                let (tag, len) = parse_header(&input[..4])?;
                if tag == MsgTag::Data {
                    input = &input[4..];
                    self.data_left = len;
                    continue;
                }
                if input.len() >= 4 + len {
                    on_message(parse_message(tag, &input[4..4 + len])?)?;
                    input = &input[4 + len..];
                    continue;
                }
                self.buf.extend_from_slice(input);
                return Ok(total);
            }
            // A frame that straddles inputs: collect it in `buf`.
            if self.buf.len() < 4 {
                let k = (4 - self.buf.len()).min(input.len());
                self.buf.extend_from_slice(&input[..k]);
                input = &input[k..];
                if self.buf.len() < 4 {
                    return Ok(total);
                }
            }
            let (tag, len) = parse_header(&self.buf[..4])?;
            if tag == MsgTag::Data {
                self.buf.clear();
                self.data_left = len;
                continue;
            }
            let k = (4 + len - self.buf.len()).min(input.len());
            self.buf.extend_from_slice(&input[..k]);
            input = &input[k..];
            if self.buf.len() < 4 + len {
                return Ok(total);
            }
            let msg = parse_message(tag, &self.buf[4..4 + len]);
            self.buf.clear();
            on_message(msg?)?;
        }
    }
}

/// Decodes and validates a frame header: the tag and the payload length.
fn parse_header(b: &[u8]) -> Result<(MsgTag, usize)> {
    let word = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    let len = (word & 0xFF_FFFF) as usize;
    let raw = (word >> 24) as u8;
    let Some(tag) = raw.checked_sub(MPLEX_BASE).and_then(MsgTag::from_wire) else {
        return Err(Error::malformed(
            "multiplexed frame",
            format!("unexpected tag {}", raw.wrapping_sub(MPLEX_BASE)),
        ));
    };
    if tag == MsgTag::Data {
        return Ok((tag, len));
    }
    let expect_int = matches!(
        tag,
        MsgTag::IoError | MsgTag::IoTimeout | MsgTag::Success | MsgTag::NoSend
    );
    if expect_int && len != 4 {
        return Err(Error::malformed(
            "multiplexed frame",
            format!("{tag:?} with length {len}"),
        ));
    }
    if tag == MsgTag::Noop && len != 0 {
        return Err(Error::malformed(
            "multiplexed frame",
            format!("NOOP with length {len}"),
        ));
    }
    if tag == MsgTag::ErrorExit && len != 0 && len != 4 {
        return Err(Error::malformed(
            "multiplexed frame",
            format!("ERROR_EXIT with length {len}"),
        ));
    }
    if len > MAX_MSG_LEN {
        return Err(Error::malformed(
            "multiplexed frame",
            format!("{tag:?} message of {len} bytes"),
        ));
    }
    Ok((tag, len))
}

/// Builds the message of a non-DATA frame whose header passed [`parse_header`].
fn parse_message(tag: MsgTag, payload: &[u8]) -> Result<Message> {
    let int = || i32::from_le_bytes([payload[0], payload[1], payload[2], payload[3]]);
    Ok(match tag {
        MsgTag::ErrorXfer | MsgTag::Info | MsgTag::Error | MsgTag::Warning => {
            Message::Text(tag, payload.to_vec())
        }
        MsgTag::IoError => Message::IoError(int() as u32),
        MsgTag::IoTimeout => Message::IoTimeout(int()),
        MsgTag::Noop => Message::Noop,
        MsgTag::ErrorExit => Message::ErrorExit((payload.len() == 4).then(int)),
        MsgTag::Success => Message::Success(int()),
        MsgTag::NoSend => Message::NoSend(int()),
        MsgTag::Deleted => Message::Deleted(payload.to_vec()),
        MsgTag::Data => {
            return Err(Error::malformed(
                "multiplexed frame",
                "data frame in message path",
            ))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn header_layout() {
        assert_eq!(header(MsgTag::Data, 5).unwrap(), [5, 0, 0, 7]);
        assert_eq!(header(MsgTag::Info, 0x10203).unwrap(), [3, 2, 1, 9]);
        assert_eq!(header(MsgTag::ErrorExit, 4).unwrap(), [4, 0, 0, 93]);
        assert!(header(MsgTag::Data, MAX_FRAME_LEN + 1).is_err());
    }

    fn drain(d: &mut Demuxer) -> Result<Vec<Event>> {
        let mut v = Vec::new();
        while let Some(e) = d.next_event()? {
            v.push(e);
        }
        Ok(v)
    }

    #[test]
    fn decodes_messages() {
        let mut s = Vec::new();
        encode_frame(MsgTag::Info, b"hello\n", &mut s).unwrap();
        encode_int_msg(MsgTag::IoError, 1, &mut s);
        encode_frame(MsgTag::Data, b"", &mut s).unwrap();
        encode_data(b"abc", 2, &mut s);
        encode_frame(MsgTag::ErrorExit, b"", &mut s).unwrap();
        let mut d = Demuxer::new();
        d.push(&s);
        let ev = drain(&mut d).unwrap();
        assert_eq!(
            ev,
            vec![
                Event::Message(Message::Text(MsgTag::Info, b"hello\n".to_vec())),
                Event::Message(Message::IoError(1)),
                Event::Keepalive,
                Event::Data(b"ab".to_vec()),
                Event::Data(b"c".to_vec()),
                Event::Message(Message::ErrorExit(None)),
            ]
        );
        assert!(d.at_boundary());
    }

    #[test]
    fn data_header_only_at_a_boundary_and_only_for_data() {
        let mut d = Demuxer::new();
        let mut info = Vec::new();
        encode_frame(MsgTag::Info, b"x", &mut info).unwrap();
        assert_eq!(d.data_header(&info[..4]), None);
        assert_eq!(d.data_header(&[0xff; 4]), None);
        let mut data = Vec::new();
        encode_data(b"hello", 100, &mut data);
        assert_eq!(d.data_header(&data[..4]), Some(5));
        assert_eq!(d.data_left(), 5);
        // Inside a frame no header is taken.
        assert_eq!(d.data_header(&data[..4]), None);
        d.consume_data(2);
        let mut out = Vec::new();
        d.demux_into(&data[6..], &mut out, |_| Ok::<(), Error>(()))
            .unwrap();
        assert_eq!(out, b"llo");
        assert!(d.at_boundary());
    }

    #[test]
    fn rejects_internal_and_bad_lengths() {
        for raw in [7u8 + 9, 7 + 10, 7 + 5, 7 + 50, 3] {
            let mut d = Demuxer::new();
            d.push(&[0, 0, 0, raw]);
            assert!(d.next_event().is_err(), "tag byte {raw}");
        }
        let mut d = Demuxer::new();
        d.push(&header(MsgTag::Success, 3).unwrap());
        assert!(d.next_event().is_err());
        let mut d = Demuxer::new();
        d.push(&header(MsgTag::Info, MAX_MSG_LEN + 1).unwrap());
        assert!(d.next_event().is_err());
    }

    /// `data` in 700-byte frames, an INFO message, an empty DATA frame, a NO_SEND message and
    /// `data` again in 1000-byte frames.
    fn data_info_nosend_data(data: &[u8], msg: &[u8]) -> Vec<u8> {
        let mut s = Vec::new();
        encode_data(data, 700, &mut s);
        encode_frame(MsgTag::Info, msg, &mut s).unwrap();
        encode_frame(MsgTag::Data, b"", &mut s).unwrap();
        encode_int_msg(MsgTag::NoSend, 7, &mut s);
        encode_data(data, 1000, &mut s);
        s
    }

    proptest! {
        #[test]
        fn arbitrary_splits(data in proptest::collection::vec(any::<u8>(), 0..2000), msg in proptest::collection::vec(any::<u8>(), 0..100), splits in proptest::collection::vec(1usize..50, 1..40)) {
            let mut s = Vec::new();
            encode_data(&data, 700, &mut s);
            encode_frame(MsgTag::Warning, &msg, &mut s).unwrap();
            encode_data(&data, 1000, &mut s);
            let mut d = Demuxer::new();
            let mut got = Vec::new();
            let mut msgs = Vec::new();
            let mut pos = 0;
            let mut i = 0;
            while pos < s.len() {
                let n = splits[i % splits.len()].min(s.len() - pos);
                d.push(&s[pos..pos + n]);
                pos += n;
                i += 1;
                for e in drain(&mut d).unwrap() {
                    match e {
                        Event::Data(b) => got.extend_from_slice(&b),
                        Event::Message(m) => msgs.push(m),
                        Event::Keepalive => {}
                    }
                }
            }
            let mut want = data.clone();
            want.extend_from_slice(&data);
            prop_assert_eq!(got, want);
            prop_assert_eq!(msgs, vec![Message::Text(MsgTag::Warning, msg)]);
        }

        #[test]
        fn demux_into_matches_events(data in proptest::collection::vec(any::<u8>(), 0..3000), msg in proptest::collection::vec(any::<u8>(), 0..100), splits in proptest::collection::vec(1usize..700, 1..40)) {
            let s = data_info_nosend_data(&data, &msg);
            let mut d = Demuxer::new();
            let mut got = Vec::new();
            let mut msgs = Vec::new();
            // Data length at the time each message arrived.
            let mut at = Vec::new();
            let (mut pos, mut i) = (0, 0);
            while pos < s.len() {
                let n = splits[i % splits.len()].min(s.len() - pos);
                d.demux_into(&s[pos..pos + n], &mut got, |m| {
                    msgs.push(m);
                    Ok::<(), Error>(())
                }).unwrap();
                at.resize(msgs.len(), got.len());
                pos += n;
                i += 1;
            }
            let mut want = data.clone();
            want.extend_from_slice(&data);
            prop_assert_eq!(got, want);
            prop_assert_eq!(msgs, vec![Message::Text(MsgTag::Info, msg), Message::NoSend(7)]);
            prop_assert!(at.iter().all(|&n| n >= data.len()));
            prop_assert!(d.at_boundary());
        }

        #[test]
        fn demux_some_in_limited_steps_matches(data in proptest::collection::vec(any::<u8>(), 0..3000), msg in proptest::collection::vec(any::<u8>(), 0..100), splits in proptest::collection::vec(1usize..700, 1..40), limits in proptest::collection::vec(1usize..300, 1..40)) {
            // Input in arbitrary pieces, each passed again until consumed,
            // with arbitrary data limits: the same data and messages as
            // demultiplexing it whole, and no call appends past its limit.
            let s = data_info_nosend_data(&data, &msg);
            let mut d = Demuxer::new();
            let mut got = Vec::new();
            let mut msgs = Vec::new();
            let (mut pos, mut i) = (0, 0);
            while pos < s.len() {
                let end = pos + splits[i % splits.len()].min(s.len() - pos);
                let limit = limits[i % limits.len()];
                let before = got.len();
                let used = match i % 3 {
                    0 => d.demux_some(&s[pos..end], &mut got, limit, |m| {
                        msgs.push(m);
                        Ok::<(), Error>(())
                    }).unwrap(),
                    1 => {
                        let mut dst = vec![0u8; limit];
                        let (used, n) = d.demux_to(&s[pos..end], &mut dst, |m| {
                            msgs.push(m);
                            Ok::<(), Error>(())
                        }).unwrap();
                        got.extend_from_slice(&dst[..n]);
                        used
                    }
                    _ if d.data_left() > 0 => {
                        // Payload taken from the stream by the caller.
                        let n = d.data_left().min(end - pos).min(limit);
                        got.extend_from_slice(&s[pos..pos + n]);
                        d.consume_data(n);
                        n
                    }
                    _ => d.demux_some(&s[pos..end], &mut got, limit, |m| {
                        msgs.push(m);
                        Ok::<(), Error>(())
                    }).unwrap(),
                };
                prop_assert!(got.len() - before <= limit);
                prop_assert!(used > 0 && used <= end - pos);
                pos += used;
                i += 1;
            }
            let mut want = data.clone();
            want.extend_from_slice(&data);
            prop_assert_eq!(got, want);
            prop_assert_eq!(msgs, vec![Message::Text(MsgTag::Info, msg), Message::NoSend(7)]);
            prop_assert!(d.at_boundary());
        }

        #[test]
        fn demux_into_never_panics(data in proptest::collection::vec(any::<u8>(), 0..300), cut in 0usize..300) {
            let mut d = Demuxer::new();
            let mut out = Vec::new();
            let cut = cut.min(data.len());
            if d.demux_into(&data[..cut], &mut out, |_| Ok::<(), Error>(())).is_ok() {
                let _ = d.demux_into(&data[cut..], &mut out, |_| Ok::<(), Error>(()));
            }
        }

        #[test]
        fn never_panics(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut d = Demuxer::new();
            d.push(&data);
            let _ = drain(&mut d);
        }
    }
}
