//! The generator's checksum head and block sums.
//!
//! Head: int32 count, block length, strong-sum length (s2length), remainder
//! (the length of the last short block, 0 if none). Then `count` entries of
//! int32 weak sum + s2length strong-sum bytes.

use crate::checksum::{block_sum, weak_sum, ChecksumAlgo};
use crate::error::{Error, Result};
use crate::wire::{put_i32, Reader};

/// Minimum (and default) block length.
pub const BLOCK_SIZE: u32 = 700;
/// Maximum block length at protocol >= 30.
pub const MAX_BLOCK_SIZE: u32 = 1 << 17;
/// Strong-sum bytes in the first pass before the length-based adjustment.
pub const SHORT_SUM_LENGTH: u32 = 2;
/// Bias of the s2length formula.
const BLOCKSUM_BIAS: i32 = 10;
/// Most block sums accepted for one file (a 2^40-byte file at 128 KiB blocks
/// needs 2^23); protects against absurd allocations.
pub const MAX_SUM_COUNT: i32 = 1 << 24;

/// The checksum head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SumHead {
    /// Number of blocks.
    pub count: i32,
    /// Block length.
    pub blength: i32,
    /// Strong-sum bytes per block.
    pub s2length: i32,
    /// Length of the last block if short, else 0.
    pub remainder: i32,
}

impl SumHead {
    /// The head for a file of `len` bytes. `redo` selects full-length strong
    /// sums (the redo pass). `digest_len` is the negotiated digest length.
    pub fn for_file(len: u64, redo: bool, digest_len: usize) -> Result<SumHead> {
        Self::for_file_with(len, redo, digest_len, None)
    }

    /// [`SumHead::for_file`] with a fixed block length (`-B`) instead of
    /// the one derived from the size, when `block` is given.
    pub fn for_file_with(
        len: u64,
        redo: bool,
        digest_len: usize,
        block: Option<u32>,
    ) -> Result<SumHead> {
        let blength = match block {
            Some(b) if b > 0 => b,
            _ => block_len_for(len),
        };
        let max_s2 = digest_len.min(16) as i32;
        let s2length = if redo {
            max_s2
        } else {
            let mut b = BLOCKSUM_BIAS;
            let mut l = len;
            loop {
                l >>= 1;
                if l == 0 {
                    break;
                }
                b += 2;
            }
            let mut c = blength;
            loop {
                c >>= 1;
                if c == 0 || b == 0 {
                    break;
                }
                b -= 1;
            }
            let s2 = (b + 1 - 32 + 7) / 8;
            s2.max(SHORT_SUM_LENGTH as i32).min(max_s2)
        };
        let remainder = (len % blength as u64) as i32;
        let count = len / blength as u64 + u64::from(remainder != 0);
        if count > MAX_SUM_COUNT as u64 {
            return Err(Error::unencodable(
                "sum head",
                format!("file of {len} bytes needs {count} blocks"),
            ));
        }
        Ok(SumHead {
            count: count as i32,
            blength: blength as i32,
            s2length,
            remainder,
        })
    }

    /// Appends the head.
    pub fn encode(&self, out: &mut Vec<u8>) {
        put_i32(out, self.count);
        put_i32(out, self.blength);
        put_i32(out, self.s2length);
        put_i32(out, self.remainder);
    }

    /// Decodes and validates a head. `digest_len` bounds s2length.
    pub fn decode(r: &mut Reader<'_>, digest_len: usize) -> Result<SumHead> {
        let mut rr = r.clone();
        let h = SumHead {
            count: rr.i32()?,
            blength: rr.i32()?,
            s2length: rr.i32()?,
            remainder: rr.i32()?,
        };
        if !(0..=MAX_SUM_COUNT).contains(&h.count) {
            return Err(Error::malformed(
                "sum head",
                format!("invalid block count {}", h.count),
            ));
        }
        if !(0..=MAX_BLOCK_SIZE as i32).contains(&h.blength) {
            return Err(Error::malformed(
                "sum head",
                format!("invalid block length {}", h.blength),
            ));
        }
        if h.count > 0 && h.blength == 0 {
            return Err(Error::malformed("sum head", "zero block length"));
        }
        if h.s2length < 0 || h.s2length as usize > digest_len.min(MAX_STRONG) {
            return Err(Error::malformed(
                "sum head",
                format!("invalid strong-sum length {}", h.s2length),
            ));
        }
        if h.remainder < 0 || h.remainder > h.blength {
            return Err(Error::malformed(
                "sum head",
                format!("invalid remainder {}", h.remainder),
            ));
        }
        *r = rr;
        Ok(h)
    }

    /// Length of block `i`.
    pub fn block_len(&self, i: i32) -> usize {
        if i == self.count - 1 && self.remainder != 0 {
            self.remainder as usize
        } else {
            self.blength as usize
        }
    }

    /// Total bytes covered by the blocks.
    pub fn covered_len(&self) -> u64 {
        if self.count == 0 {
            return 0;
        }
        (self.count as u64 - 1) * self.blength as u64 + self.block_len(self.count - 1) as u64
    }
}

/// rsync's block length for a file of `len` bytes (protocol >= 30): 700 up to
/// 700^2 bytes, else the square root rounded down to a multiple of 8, at most 128 KiB.
pub fn block_len_for(len: u64) -> u32 {
    if len <= (BLOCK_SIZE as u64) * (BLOCK_SIZE as u64) {
        return BLOCK_SIZE;
    }
    let mut c: u64 = 1;
    let mut l = len;
    loop {
        l >>= 2;
        if l == 0 {
            break;
        }
        c <<= 1;
    }
    if c >= MAX_BLOCK_SIZE as u64 {
        return MAX_BLOCK_SIZE;
    }
    let mut blength: u64 = 0;
    loop {
        blength |= c;
        if len < blength * blength {
            blength &= !c;
        }
        c >>= 1;
        if c < 8 {
            break;
        }
    }
    (blength as u32).max(BLOCK_SIZE)
}

/// Most strong-sum bytes a block sum carries (the longest digest).
pub const MAX_STRONG: usize = 16;

/// The first `s2length` bytes of `digest`, zero-padded to [`MAX_STRONG`].
fn short_strong(digest: &[u8], s2length: usize) -> [u8; MAX_STRONG] {
    let mut strong = [0u8; MAX_STRONG];
    strong[..s2length].copy_from_slice(&digest[..s2length]);
    strong
}

/// One block's sums.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockSum {
    /// Rolling checksum.
    pub weak: u32,
    /// The first s2length bytes of the strong checksum, zero-padded
    /// (kept inline: the matcher compares them without a pointer chase).
    pub strong: [u8; MAX_STRONG],
}

/// A head plus all block sums.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SumSet {
    /// The head.
    pub head: SumHead,
    /// One entry per block.
    pub blocks: Vec<BlockSum>,
}

impl SumSet {
    /// Computes the sums of `data` for the given head.
    pub fn compute(
        data: &[u8],
        head: SumHead,
        algo: ChecksumAlgo,
        seed: i32,
        seed_fix: bool,
    ) -> SumSet {
        let mut blocks = Vec::with_capacity(head.count.max(0) as usize);
        let mut off = 0usize;
        for i in 0..head.count {
            let n = head.block_len(i).min(data.len() - off);
            let block = &data[off..off + n];
            let strong = block_sum(algo, block, seed, seed_fix);
            blocks.push(BlockSum {
                weak: weak_sum(block),
                strong: short_strong(strong.as_bytes(), head.s2length as usize),
            });
            off += n;
        }
        SumSet { head, blocks }
    }

    /// Appends head and sums.
    pub fn encode(&self, out: &mut Vec<u8>) {
        self.head.encode(out);
        for b in &self.blocks {
            put_i32(out, b.weak as i32);
            out.extend_from_slice(&b.strong[..self.head.s2length as usize]);
        }
    }
}

/// Decodes block sums one at a time after a head, so a huge count never
/// forces a huge allocation before the data arrives.
#[derive(Debug, Clone)]
pub struct SumDecoder {
    head: SumHead,
    blocks: Vec<BlockSum>,
}

impl SumDecoder {
    /// Starts decoding the sums that follow `head`.
    pub fn new(head: SumHead) -> Self {
        SumDecoder {
            head,
            blocks: Vec::new(),
        }
    }

    /// Decodes as many entries as `r` holds. Returns the finished set when all
    /// `count` entries are in.
    pub fn feed(&mut self, r: &mut Reader<'_>) -> Result<Option<SumSet>> {
        let s2 = self.head.s2length as usize;
        if s2 > MAX_STRONG {
            return Err(Error::malformed(
                "sum head",
                format!("invalid strong-sum length {s2}"),
            ));
        }
        while self.blocks.len() < self.head.count as usize {
            if r.remaining() < 4 + s2 {
                return Ok(None);
            }
            let weak = r.i32()? as u32;
            let strong = short_strong(r.bytes(s2)?, s2);
            self.blocks.push(BlockSum { weak, strong });
        }
        Ok(Some(SumSet {
            head: self.head,
            blocks: std::mem::take(&mut self.blocks),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_lengths() {
        assert_eq!(block_len_for(0), 700);
        assert_eq!(block_len_for(490_000), 700);
        assert_eq!(block_len_for(490_001), 700);
        assert_eq!(block_len_for(1_000_000), 1000);
        assert_eq!(block_len_for(10_000_000), 3160);
        assert_eq!(block_len_for(1 << 40), MAX_BLOCK_SIZE);
        for len in [500_000u64, 1 << 20, 123_456_789, 1 << 33] {
            let b = block_len_for(len) as u64;
            assert_eq!(b % 8, 0);
            assert!(b * b <= len || b == 700);
        }
    }

    #[test]
    fn fixed_block_length() {
        // -B 1000 on a 10 000 000-byte file: 10 000 blocks of 1000 bytes.
        let h = SumHead::for_file_with(10_000_000, false, 16, Some(1000)).unwrap();
        assert_eq!((h.count, h.blength, h.remainder), (10_000, 1000, 0));
        let d = SumHead::for_file(10_000_000, false, 16).unwrap();
        assert_eq!(d.blength, 3160);
        // A smaller block needs longer strong sums (fewer bits from the size).
        assert!(h.s2length >= d.s2length);
        let h = SumHead::for_file_with(2500, false, 16, Some(1024)).unwrap();
        assert_eq!((h.count, h.blength, h.remainder), (3, 1024, 452));
        // 0 is the default.
        assert_eq!(
            SumHead::for_file_with(2500, false, 16, Some(0)).unwrap(),
            SumHead::for_file(2500, false, 16).unwrap()
        );
    }

    #[test]
    fn heads() {
        let h = SumHead::for_file(1500, false, 16).unwrap();
        assert_eq!(
            h,
            SumHead {
                count: 3,
                blength: 700,
                s2length: 2,
                remainder: 100
            }
        );
        let h = SumHead::for_file(1400, true, 16).unwrap();
        assert_eq!(
            h,
            SumHead {
                count: 2,
                blength: 700,
                s2length: 16,
                remainder: 0
            }
        );
        // 100 MB: b = 10 + 2*26 = 62, minus log2(blength=10000 -> 13 halvings) = 49; (49+1-32+7)/8 = 3
        let h = SumHead::for_file(100_000_000, false, 16).unwrap();
        assert_eq!(h.blength, 10000);
        assert_eq!(h.s2length, 3);
        // Short digests clamp s2length.
        assert_eq!(SumHead::for_file(1400, true, 8).unwrap().s2length, 8);
        assert_eq!(SumHead::for_file(0, false, 16).unwrap().count, 0);
    }

    #[test]
    fn head_validation() {
        let enc = |h: SumHead| {
            let mut o = Vec::new();
            h.encode(&mut o);
            o
        };
        let good = SumHead {
            count: 3,
            blength: 700,
            s2length: 2,
            remainder: 100,
        };
        assert_eq!(
            SumHead::decode(&mut Reader::new(&enc(good)), 16).unwrap(),
            good
        );
        for bad in [
            SumHead { count: -1, ..good },
            SumHead {
                blength: (MAX_BLOCK_SIZE + 1) as i32,
                ..good
            },
            SumHead { blength: 0, ..good },
            SumHead {
                s2length: 17,
                ..good
            },
            SumHead {
                remainder: 701,
                ..good
            },
            SumHead {
                count: MAX_SUM_COUNT + 1,
                ..good
            },
        ] {
            assert!(
                matches!(
                    SumHead::decode(&mut Reader::new(&enc(bad)), 16),
                    Err(Error::Malformed { .. })
                ),
                "{bad:?}"
            );
        }
        assert_eq!(
            SumHead::decode(&mut Reader::new(&enc(good)[..15]), 16),
            Err(Error::Incomplete)
        );
    }

    #[test]
    fn sums_round_trip_incrementally() {
        let data: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 251) as u8).collect();
        let head = SumHead::for_file(data.len() as u64, false, 16).unwrap();
        let set = SumSet::compute(&data, head, ChecksumAlgo::Xxh128, 99, true);
        assert_eq!(set.blocks.len(), 8);
        let mut o = Vec::new();
        set.encode(&mut o);
        let mut r = Reader::new(&o);
        let h = SumHead::decode(&mut r, 16).unwrap();
        let body = r.rest();
        let mut dec = SumDecoder::new(h);
        let mut buf = Vec::new();
        let mut got = None;
        for chunk in body.chunks(5) {
            assert!(got.is_none());
            buf.extend_from_slice(chunk);
            let mut rr = Reader::new(&buf);
            got = dec.feed(&mut rr).unwrap();
            let used = rr.position();
            buf.drain(..used);
        }
        assert!(buf.is_empty());
        assert_eq!(got.unwrap(), set);
    }
}
