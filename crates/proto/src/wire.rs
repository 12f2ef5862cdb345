//! Primitive encodings: int, shortint, longint, varint, varlong, vstring.
//!
//! All multi-byte integers are little-endian. `varint` is rsync's own format
//! (not LEB128): the number of leading one-bits of the first byte says how many
//! extra bytes follow; the extra bytes are the low-order bytes and the first
//! byte's remaining bits are the high-order bits.

use crate::error::{Error, Result};

/// The longest vstring the wire format can carry.
pub const MAX_VSTRING_LEN: usize = 0x7FFF;

/// Number of extra bytes announced by the first byte of a varint, indexed by `byte / 4`.
fn extra_bytes(first: u8) -> usize {
    match first {
        0x00..=0x7F => 0,
        0x80..=0xBF => 1,
        0xC0..=0xDF => 2,
        0xE0..=0xEF => 3,
        0xF0..=0xF7 => 4,
        0xF8..=0xFB => 5,
        0xFC..=0xFF => 6,
    }
}

/// A cursor over a byte slice that decodes primitives.
///
/// Every read either succeeds and advances, or returns [`Error::Incomplete`]
/// (or a protocol error) and leaves the position where it was.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// Starts reading at the beginning of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    /// Bytes consumed so far.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Bytes still unread.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// The unread bytes.
    pub fn rest(&self) -> &'a [u8] {
        &self.buf[self.pos..]
    }

    /// Takes `n` bytes.
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.remaining() < n {
            return Err(Error::Incomplete);
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let b = self.bytes(N)?;
        let mut out = [0u8; N];
        out.copy_from_slice(b);
        Ok(out)
    }

    /// One byte.
    pub fn u8(&mut self) -> Result<u8> {
        Ok(self.array::<1>()?[0])
    }

    /// A 16-bit little-endian "shortint".
    pub fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    /// A 32-bit little-endian "int".
    pub fn i32(&mut self) -> Result<i32> {
        Ok(i32::from_le_bytes(self.array()?))
    }

    /// A "longint": an int, or -1 followed by a 64-bit value.
    pub fn longint(&mut self) -> Result<i64> {
        let save = self.pos;
        let v = self.i32()?;
        if v != -1 {
            return Ok(v as i64);
        }
        match self.array::<8>() {
            Ok(b) => Ok(i64::from_le_bytes(b)),
            Err(e) => {
                self.pos = save;
                Err(e)
            }
        }
    }

    /// A varint (at most 4 value bytes).
    pub fn varint(&mut self) -> Result<i32> {
        let save = self.pos;
        let r = self.varint_inner();
        if r.is_err() {
            self.pos = save;
        }
        r
    }

    fn varint_inner(&mut self) -> Result<i32> {
        let first = self.u8()?;
        let extra = extra_bytes(first);
        if extra == 0 {
            return Ok(first as i32);
        }
        if extra > 4 {
            return Err(Error::malformed(
                "varint",
                format!("first byte {first:#04x} announces {extra} extra bytes"),
            ));
        }
        let low = self.bytes(extra)?;
        let mut b = [0u8; 5];
        b[..extra].copy_from_slice(low);
        let bit = 1u8 << (8 - extra);
        b[extra] = first & (bit - 1);
        if extra == 4 && b[4] != 0 {
            return Err(Error::malformed("varint", "value exceeds 32 bits"));
        }
        Ok(i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A varlong with `min_bytes` fixed bytes (3 for sizes, 4 for times; 3..=8).
    pub fn varlong(&mut self, min_bytes: usize) -> Result<i64> {
        let min_bytes = min_bytes.clamp(3, 8);
        let save = self.pos;
        let r = self.varlong_inner(min_bytes);
        if r.is_err() {
            self.pos = save;
        }
        r
    }

    fn varlong_inner(&mut self, min_bytes: usize) -> Result<i64> {
        let head = self.bytes(min_bytes)?;
        let first = head[0];
        let mut b = [0u8; 9];
        b[..min_bytes - 1].copy_from_slice(&head[1..]);
        let extra = extra_bytes(first);
        if extra > 0 {
            if min_bytes + extra > 9 {
                return Err(Error::malformed(
                    "varlong",
                    format!("first byte {first:#04x} announces too many bytes"),
                ));
            }
            let more = self.bytes(extra)?;
            b[min_bytes - 1..min_bytes - 1 + extra].copy_from_slice(more);
            let bit = 1u8 << (8 - extra);
            b[min_bytes + extra - 1] = first & (bit - 1);
        } else {
            b[min_bytes - 1] = first;
        }
        if b[8] != 0 {
            return Err(Error::malformed("varlong", "value exceeds 64 bits"));
        }
        let mut v = [0u8; 8];
        v.copy_from_slice(&b[..8]);
        Ok(i64::from_le_bytes(v))
    }

    /// A vstring: one length byte, or `0x80|hi, lo`; then the bytes.
    /// Strings longer than `max` are rejected.
    pub fn vstring(&mut self, max: usize) -> Result<&'a [u8]> {
        let save = self.pos;
        let r = (|| {
            let mut len = self.u8()? as usize;
            if len & 0x80 != 0 {
                len = ((len & 0x7F) << 8) | self.u8()? as usize;
            }
            if len > max {
                return Err(Error::malformed(
                    "vstring",
                    format!("length {len} exceeds {max}"),
                ));
            }
            self.bytes(len)
        })();
        if r.is_err() {
            self.pos = save;
        }
        r
    }
}

/// Appends one byte.
pub fn put_u8(out: &mut Vec<u8>, v: u8) {
    out.push(v);
}

/// Appends a 16-bit "shortint".
pub fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// Appends a 32-bit "int".
pub fn put_i32(out: &mut Vec<u8>, v: i32) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// Appends a "longint": values in 0..=i32::MAX as an int, others as -1 + 64 bits.
pub fn put_longint(out: &mut Vec<u8>, v: i64) {
    if (0..=i32::MAX as i64).contains(&v) {
        put_i32(out, v as i32);
    } else {
        put_i32(out, -1);
        out.extend_from_slice(&v.to_le_bytes());
    }
}

/// Appends a varint.
pub fn put_varint(out: &mut Vec<u8>, v: i32) {
    let bytes = v.to_le_bytes();
    // cnt = index (1-based) of the highest non-zero byte, at least 1.
    let mut cnt = 4;
    while cnt > 1 && bytes[cnt - 1] == 0 {
        cnt -= 1;
    }
    let top = bytes[cnt - 1];
    let bit = 1u8 << (8 - cnt);
    if top >= bit {
        // The top byte does not fit beside the marker bits: send all cnt bytes as extras.
        out.push(!(bit - 1));
        out.extend_from_slice(&bytes[..cnt]);
    } else if cnt > 1 {
        out.push(top | !((bit << 1) - 1));
        out.extend_from_slice(&bytes[..cnt - 1]);
    } else {
        out.push(top);
    }
}

/// Appends a varlong with `min_bytes` fixed bytes (3..=8; rsync uses 3 and 4).
pub fn put_varlong(out: &mut Vec<u8>, v: i64, min_bytes: usize) {
    let min_bytes = min_bytes.clamp(3, 8);
    let bytes = v.to_le_bytes();
    let mut cnt = 8;
    while cnt > min_bytes && bytes[cnt - 1] == 0 {
        cnt -= 1;
    }
    let top = bytes[cnt - 1];
    let bit = 1u8 << (7 + min_bytes - cnt);
    if top >= bit {
        out.push(!(bit - 1));
        out.extend_from_slice(&bytes[..cnt]);
    } else if cnt > min_bytes {
        out.push(top | !((bit << 1) - 1));
        out.extend_from_slice(&bytes[..cnt - 1]);
    } else {
        out.push(top);
        out.extend_from_slice(&bytes[..cnt - 1]);
    }
}

/// Appends a vstring. Fails if `s` is longer than [`MAX_VSTRING_LEN`].
pub fn put_vstring(out: &mut Vec<u8>, s: &[u8]) -> Result<()> {
    let len = s.len();
    if len > MAX_VSTRING_LEN {
        return Err(Error::unencodable(
            "vstring",
            format!("length {len} exceeds {MAX_VSTRING_LEN}"),
        ));
    }
    if len > 0x7F {
        out.push(0x80 | (len >> 8) as u8);
        out.push(len as u8);
    } else {
        out.push(len as u8);
    }
    out.extend_from_slice(s);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn varint(v: i32) -> Vec<u8> {
        let mut o = Vec::new();
        put_varint(&mut o, v);
        o
    }

    fn varlong(v: i64, m: usize) -> Vec<u8> {
        let mut o = Vec::new();
        put_varlong(&mut o, v, m);
        o
    }

    #[test]
    fn varint_known_encodings() {
        assert_eq!(varint(0), [0x00]);
        assert_eq!(varint(0x7F), [0x7F]);
        assert_eq!(varint(0x80), [0x80, 0x80]);
        assert_eq!(varint(0x3FFF), [0xBF, 0xFF]);
        assert_eq!(varint(0x4000), [0xC0, 0x00, 0x40]);
        assert_eq!(varint(0x12345), [0xC1, 0x45, 0x23]);
        assert_eq!(varint(0x1234567), [0xE1, 0x67, 0x45, 0x23]);
        assert_eq!(varint(-1), [0xF0, 0xFF, 0xFF, 0xFF, 0xFF]);
    }

    #[test]
    fn varlong_known_encodings() {
        // Sizes use min_bytes 3: small values take exactly 3 bytes.
        assert_eq!(varlong(5, 3), [0x00, 0x05, 0x00]);
        assert_eq!(varlong(0x7F_FFFF, 3), [0x7F, 0xFF, 0xFF]);
        assert_eq!(varlong(0x80_0000, 3), [0x80, 0x00, 0x00, 0x80]);
        // A typical mtime with min_bytes 4.
        assert_eq!(varlong(0x5F5E_1000, 4), [0x5F, 0x00, 0x10, 0x5E]);
        assert_eq!(varlong(0x1_0000_0000, 4), [0x81, 0, 0, 0, 0]);
    }

    #[test]
    fn longint_forms() {
        let mut o = Vec::new();
        put_longint(&mut o, 7);
        assert_eq!(o, [7, 0, 0, 0]);
        o.clear();
        put_longint(&mut o, 0x1_0000_0002);
        assert_eq!(o, [0xFF, 0xFF, 0xFF, 0xFF, 2, 0, 0, 0, 1, 0, 0, 0]);
        assert_eq!(Reader::new(&o).longint().unwrap(), 0x1_0000_0002);
        assert_eq!(Reader::new(&o[..6]).longint(), Err(Error::Incomplete));
    }

    #[test]
    fn varint_rejects_oversized() {
        assert!(matches!(
            Reader::new(&[0xF8, 0, 0, 0, 0, 0]).varint(),
            Err(Error::Malformed { .. })
        ));
        assert!(matches!(
            Reader::new(&[0xF1, 0, 0, 0, 0]).varint(),
            Err(Error::Malformed { .. })
        ));
    }

    #[test]
    fn vstring_forms() {
        let mut o = Vec::new();
        put_vstring(&mut o, b"md5").unwrap();
        assert_eq!(o, b"\x03md5");
        let long = vec![b'a'; 300];
        o.clear();
        put_vstring(&mut o, &long).unwrap();
        assert_eq!(&o[..2], &[0x81, 0x2C]);
        assert_eq!(Reader::new(&o).vstring(1000).unwrap(), &long[..]);
        assert!(Reader::new(&o).vstring(10).is_err());
        assert!(put_vstring(&mut o, &vec![0; 0x8000]).is_err());
    }

    #[test]
    fn truncation_leaves_position() {
        let enc = varlong(0x1234_5678_9ABC, 3);
        for cut in 0..enc.len() {
            let mut r = Reader::new(&enc[..cut]);
            assert_eq!(r.varlong(3), Err(Error::Incomplete));
            assert_eq!(r.position(), 0);
        }
    }

    proptest! {
        #[test]
        fn varint_round_trip(v in any::<i32>()) {
            let enc = varint(v);
            let mut r = Reader::new(&enc);
            prop_assert_eq!(r.varint().unwrap(), v);
            prop_assert_eq!(r.remaining(), 0);
        }

        #[test]
        fn varlong_round_trip(v in any::<i64>(), m in 3usize..=8) {
            let enc = varlong(v, m);
            let mut r = Reader::new(&enc);
            prop_assert_eq!(r.varlong(m).unwrap(), v);
            prop_assert_eq!(r.remaining(), 0);
        }

        #[test]
        fn longint_round_trip(v in any::<i64>()) {
            let mut o = Vec::new();
            put_longint(&mut o, v);
            prop_assert_eq!(Reader::new(&o).longint().unwrap(), v);
        }

        #[test]
        fn decoders_never_panic(data in proptest::collection::vec(any::<u8>(), 0..16)) {
            let _ = Reader::new(&data).varint();
            let _ = Reader::new(&data).varlong(3);
            let _ = Reader::new(&data).varlong(4);
            let _ = Reader::new(&data).vstring(100);
            let _ = Reader::new(&data).longint();
        }
    }
}
