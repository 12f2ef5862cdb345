//! File-list index ("ndx") encoding for protocol 30 and later.
//!
//! `0x00` is [`NDX_DONE`]. Other negative values are sent as their absolute
//! value after a `0xFF` prefix. Values are deltas from the previous value of
//! the same sign: 1..=253 in one byte, `0xFE` + 2 bytes (big-endian) for
//! 0 or 254..=32767, otherwise `0xFE` + 4 bytes holding the absolute value
//! (high byte first with bit 7 set, then the three low bytes little-endian).
//! Each direction of a connection keeps its own [`NdxCodec`] state.

use crate::error::{Error, Result};
use crate::wire::Reader;

/// End of a phase / end of the transfer.
pub const NDX_DONE: i32 = -1;
/// End of the (incremental) file lists.
pub const NDX_FLIST_EOF: i32 = -2;
/// Deletion statistics follow.
pub const NDX_DEL_STATS: i32 = -3;
/// Base for incremental-recursion directory file-list indices.
pub const NDX_FLIST_OFFSET: i32 = -101;

/// Delta state for one direction of ndx traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NdxCodec {
    prev_positive: i32,
    prev_negative: i32,
}

impl Default for NdxCodec {
    fn default() -> Self {
        NdxCodec {
            prev_positive: -1,
            prev_negative: 1,
        }
    }
}

impl NdxCodec {
    /// A fresh codec (state as at the start of a connection).
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends `ndx` to `out`.
    pub fn encode(&mut self, ndx: i32, out: &mut Vec<u8>) {
        if ndx == NDX_DONE {
            out.push(0);
            return;
        }
        let (abs, diff) = if ndx >= 0 {
            let d = ndx.wrapping_sub(self.prev_positive);
            self.prev_positive = ndx;
            (ndx, d)
        } else {
            out.push(0xFF);
            let a = ndx.checked_neg().unwrap_or(i32::MAX);
            let d = a.wrapping_sub(self.prev_negative);
            self.prev_negative = a;
            (a, d)
        };
        if diff > 0 && diff < 0xFE {
            out.push(diff as u8);
        } else if !(0..=0x7FFF).contains(&diff) {
            out.push(0xFE);
            out.push(((abs >> 24) as u8) | 0x80);
            out.push(abs as u8);
            out.push((abs >> 8) as u8);
            out.push((abs >> 16) as u8);
        } else {
            out.push(0xFE);
            out.push((diff >> 8) as u8);
            out.push(diff as u8);
        }
    }

    /// Decodes one ndx. On [`Error::Incomplete`] neither the reader nor the
    /// state changes.
    pub fn decode(&mut self, r: &mut Reader<'_>) -> Result<i32> {
        let mut rr = r.clone();
        let mut b = rr.u8()?;
        let negative = if b == 0xFF {
            b = rr.u8()?;
            true
        } else if b == 0 {
            *r = rr;
            return Ok(NDX_DONE);
        } else {
            false
        };
        let prev = if negative {
            self.prev_negative
        } else {
            self.prev_positive
        };
        let unum: u32 = if b == 0xFE {
            let x = rr.bytes(2)?;
            if x[0] & 0x80 != 0 {
                let y = rr.bytes(2)?;
                u32::from_le_bytes([x[1], y[0], y[1], x[0] & 0x7F])
            } else {
                (((x[0] as u32) << 8) | x[1] as u32).wrapping_add(prev as u32)
            }
        } else {
            (b as u32).wrapping_add(prev as u32)
        };
        if unum > i32::MAX as u32 {
            return Err(Error::malformed("ndx", format!("index {unum} overflows")));
        }
        let num = unum as i32;
        if negative {
            self.prev_negative = num;
        } else {
            self.prev_positive = num;
        }
        *r = rr;
        Ok(if negative { -num } else { num })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn enc_seq(v: &[i32]) -> Vec<u8> {
        let mut c = NdxCodec::new();
        let mut o = Vec::new();
        for &n in v {
            c.encode(n, &mut o);
        }
        o
    }

    #[test]
    fn known_encodings() {
        assert_eq!(enc_seq(&[0]), [0x01]);
        assert_eq!(enc_seq(&[0, 1, 5]), [0x01, 0x01, 0x04]);
        assert_eq!(enc_seq(&[NDX_DONE]), [0x00]);
        assert_eq!(enc_seq(&[NDX_FLIST_EOF]), [0xFF, 0x01]);
        assert_eq!(enc_seq(&[0, 300]), [0x01, 0xFE, 0x01, 0x2C]);
        // A backwards jump is sent absolute.
        assert_eq!(enc_seq(&[10, 3]), [0x0B, 0xFE, 0x80, 0x03, 0x00, 0x00]);
        assert_eq!(enc_seq(&[0x123456]), [0xFE, 0x80, 0x56, 0x34, 0x12]);
        // The same value twice is a zero diff: 0xFE 00 00.
        assert_eq!(enc_seq(&[4, 4]), [0x05, 0xFE, 0x00, 0x00]);
    }

    #[test]
    fn rejects_overflow() {
        let mut c = NdxCodec::new();
        let data = [0xFEu8, 0xFF, 0xFF, 0xFF, 0xFF];
        // 0x7F high byte is the maximum; 0xFF & 0x7F = 0x7F gives i32::MAX: valid.
        assert_eq!(c.decode(&mut Reader::new(&data)).unwrap(), i32::MAX);
        let mut c = NdxCodec::new();
        let mut o = Vec::new();
        c.encode(i32::MAX, &mut o);
        let mut d = NdxCodec::new();
        let mut r = Reader::new(&o);
        assert_eq!(d.decode(&mut r).unwrap(), i32::MAX);
        // One more via a one-byte delta overflows.
        assert!(matches!(
            d.decode(&mut Reader::new(&[0x01])),
            Err(Error::Malformed { .. })
        ));
    }

    proptest! {
        #[test]
        fn round_trip(v in proptest::collection::vec(prop_oneof![0i32..100_000, -200i32..0, Just(i32::MAX)], 0..50)) {
            let enc = enc_seq(&v);
            let mut c = NdxCodec::new();
            let mut r = Reader::new(&enc);
            for &n in &v {
                prop_assert_eq!(c.decode(&mut r).unwrap(), n);
            }
            prop_assert_eq!(r.remaining(), 0);
        }

        #[test]
        fn truncated_is_incomplete(v in 0i32..i32::MAX, cut in 0usize..5) {
            let enc = enc_seq(&[v]);
            let cut = cut.min(enc.len() - 1);
            let mut c = NdxCodec::new();
            let before = c;
            prop_assert_eq!(c.decode(&mut Reader::new(&enc[..cut])), Err(Error::Incomplete));
            prop_assert_eq!(c, before);
        }
    }
}
