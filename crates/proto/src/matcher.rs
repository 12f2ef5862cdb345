//! Block matching on the sending side: find the receiver's blocks in the new
//! file with the rolling weak sum (hash table lookup), confirm with the strong
//! sum, and emit a token stream of literals and block references.
//!
//! [`DeltaEncoder`] is streaming: feed the new file in any chunk sizes; it
//! keeps at most one literal run ([`CHUNK_SIZE`]) plus one block of lookahead.

use crate::checksum::{block_sum, ChecksumAlgo, Digest16, FileHasher, Rolling};
use crate::compress::TokenSink;
use crate::error::Result;
use crate::sums::SumSet;
use crate::token::CHUNK_SIZE;

/// Byte counts of one delta.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeltaStats {
    /// Bytes sent literally.
    pub literal: u64,
    /// Bytes covered by block references.
    pub matched: u64,
    /// Block references sent (rsync's `matches`).
    pub matches: u64,
    /// Windows whose weak sum falls in a used bucket of rsync's hash table
    /// (rsync's `hash_hits`); counted only after
    /// [`DeltaEncoder::count_hash_hits`].
    pub hash_hits: u64,
    /// Windows whose weak sum and length matched a block but not the strong
    /// sum (rsync's `false_alarms`).
    pub false_alarms: u64,
}

impl DeltaStats {
    /// Adds another file's counts.
    pub fn add(&mut self, o: &DeltaStats) {
        self.literal += o.literal;
        self.matched += o.matched;
        self.matches += o.matches;
        self.hash_hits += o.hash_hits;
        self.false_alarms += o.false_alarms;
    }
}

/// Which buckets of rsync's hash table (`match.c`: `build_hash_table`) hold
/// a block: rsync counts a "hash hit" for every window whose bucket is used.
/// Up to 65,536 buckets indexed by `(s1 + s2) & 0xffff`; for more than
/// 52,416 blocks, `count / 8 * 10 + 11` buckets indexed by `sum % size`.
struct RsyncBuckets {
    size: u32,
    used: Vec<u64>,
}

impl RsyncBuckets {
    const TRADITIONAL: u32 = 1 << 16;

    fn new(sums: &SumSet) -> Self {
        let n = sums.blocks.len() as u32;
        let size = (n / 8 * 10 + 11).max(Self::TRADITIONAL);
        let mut b = RsyncBuckets {
            size,
            used: vec![0; (size as usize).div_ceil(64)],
        };
        for blk in &sums.blocks {
            let h = b.bucket(blk.weak);
            b.used[h / 64] |= 1 << (h % 64);
        }
        b
    }

    fn bucket(&self, weak: u32) -> usize {
        if self.size == Self::TRADITIONAL {
            ((weak & 0xFFFF) + (weak >> 16)) as usize & 0xFFFF
        } else {
            (weak % self.size) as usize
        }
    }

    fn hit(&self, weak: u32) -> bool {
        let h = self.bucket(weak);
        self.used[h / 64] >> (h % 64) & 1 != 0
    }
}

/// Chained hash table from weak sums to block indices.
struct WeakTable {
    bits: u32,
    head: Vec<u32>,
    next: Vec<u32>,
    /// A Bloom filter of the weak sums present, two bits per sum (two
    /// [`FILTER_BITS`]-bit hashes): an 8 KiB table that stays in the L1
    /// cache, so most windows of data the basis does not have are rejected
    /// without touching `head` (with 6,000 blocks, 2.6% of the windows get
    /// through, against 8.5% with one bit).
    filter: Vec<u64>,
}

/// Bits of a weak sum's hash that index [`WeakTable::filter`].
const FILTER_BITS: u32 = 16;

const NIL: u32 = u32::MAX;

impl WeakTable {
    fn new(sums: &SumSet) -> Self {
        let n = sums.blocks.len();
        let size = (n.max(1) * 2).next_power_of_two();
        let bits = size.trailing_zeros();
        let mut t = WeakTable {
            bits,
            head: vec![NIL; size],
            next: vec![NIL; n],
            filter: vec![0; (1 << FILTER_BITS) / 64],
        };
        // Insert in reverse so each chain lists lower block indices first.
        for (i, b) in sums.blocks.iter().enumerate().rev() {
            let h = t.slot(b.weak);
            t.next[i] = t.head[h];
            t.head[h] = i as u32;
            for f in Self::filter_bits(b.weak) {
                t.filter[f / 64] |= 1 << (f % 64);
            }
        }
        t
    }

    /// The two filter bits of `weak`: two slices of the upper half of a
    /// 64-bit multiplicative hash.
    fn filter_bits(weak: u32) -> [usize; 2] {
        let h = (weak as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let mask = (1 << FILTER_BITS) - 1;
        [
            (h >> (64 - FILTER_BITS)) as usize & mask,
            (h >> 32) as usize & mask,
        ]
    }

    /// False when no block has this weak sum (true: maybe).
    fn may_contain(&self, weak: u32) -> bool {
        let [a, b] = Self::filter_bits(weak);
        (self.filter[a / 64] >> (a % 64)) & (self.filter[b / 64] >> (b % 64)) & 1 != 0
    }

    fn slot(&self, weak: u32) -> usize {
        if self.bits == 0 {
            0
        } else {
            (weak.wrapping_mul(0x9E37_79B1) >> (32 - self.bits)) as usize
        }
    }
}

/// Streaming delta encoder for one file.
pub struct DeltaEncoder {
    sums: SumSet,
    table: WeakTable,
    algo: ChecksumAlgo,
    seed: i32,
    seed_fix: bool,
    /// Unprocessed input; `buf[start..pos]` is literal data not yet sent and
    /// `pos` is the start of the current window; `buf[..filled]` is valid
    /// (the rest is room for [`DeltaEncoder::input`]).
    buf: Vec<u8>,
    filled: usize,
    start: usize,
    pos: usize,
    rolling: Option<Rolling>,
    /// The block after the last one matched: the likeliest match of the
    /// next window, tried before the hash table (not with `--inplace`).
    next_block: Option<u32>,
    hasher: FileHasher,
    stats: DeltaStats,
    sink: TokenSink,
    /// Offset in the new file of `buf[0]`.
    base: u64,
    /// `--inplace`: per block, whether it was matched at its own offset
    /// (see [`DeltaEncoder::set_in_place`]).
    in_place: Option<Vec<bool>>,
    /// rsync's hash buckets, when hash hits are counted (`-vv`).
    buckets: Option<RsyncBuckets>,
    /// Hash hits and false alarms of the windows tested (cells: the search
    /// loops borrow the encoder shared).
    hits: std::cell::Cell<u64>,
    false_alarms: std::cell::Cell<u64>,
    /// One past the offset of the last window counted (0: none), so a
    /// window tested again after more input came is counted once.
    counted_to: std::cell::Cell<u64>,
}

impl std::fmt::Debug for DeltaEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeltaEncoder")
            .field("stats", &self.stats)
            .finish()
    }
}

impl DeltaEncoder {
    /// Prepares matching against `sums` (an empty set sends everything
    /// literally), writing plain tokens.
    pub fn new(sums: SumSet, algo: ChecksumAlgo, seed: i32, seed_fix: bool) -> Self {
        Self::with_sink(sums, algo, seed, seed_fix, TokenSink::Plain)
    }

    /// Like [`DeltaEncoder::new`] with a chosen token format.
    pub fn with_sink(
        sums: SumSet,
        algo: ChecksumAlgo,
        seed: i32,
        seed_fix: bool,
        sink: TokenSink,
    ) -> Self {
        let table = WeakTable::new(&sums);
        DeltaEncoder {
            sums,
            table,
            algo,
            seed,
            seed_fix,
            buf: Vec::new(),
            filled: 0,
            start: 0,
            pos: 0,
            rolling: None,
            next_block: None,
            hasher: FileHasher::new(algo),
            stats: DeltaStats::default(),
            sink,
            base: 0,
            in_place: None,
            buckets: None,
            hits: std::cell::Cell::new(0),
            false_alarms: std::cell::Cell::new(0),
            counted_to: std::cell::Cell::new(0),
        }
    }

    /// Counts rsync's hash hits ([`DeltaStats::hash_hits`], which `-vv`
    /// prints): every window tested whose weak sum falls in a used bucket
    /// of the hash table rsync would build for these sums.
    pub fn count_hash_hits(&mut self) {
        self.buckets = Some(RsyncBuckets::new(&self.sums));
    }

    /// Counts the window at `buf[pos..]`, of weak sum `weak`, as rsync's
    /// hash search would.
    #[inline]
    fn tested(&self, pos: usize, weak: u32) {
        if let Some(b) = &self.buckets {
            let at = self.base + pos as u64 + 1;
            if at > self.counted_to.get() {
                self.counted_to.set(at);
                if b.hit(weak) {
                    self.hits.set(self.hits.get() + 1);
                }
            }
        }
    }

    /// The receiver rewrites the basis file itself (`--inplace`, or a
    /// `--partial-dir` file updated in place): a block may only be used
    /// where the receiver has not overwritten it yet, at or after the
    /// current offset, or where it was already matched at its own offset
    /// (so left as it was); a block at the current offset is preferred.
    pub fn set_in_place(&mut self) {
        self.in_place = Some(vec![false; self.sums.blocks.len()]);
    }

    /// Feeds `data` to the whole-file checksum only (`--append-verify`:
    /// the data the receiver already has).
    pub fn hash_only(&mut self, data: &[u8]) {
        self.hasher.update(data);
    }

    fn blen(&self) -> usize {
        self.sums.head.blength as usize
    }

    fn flush_literal(&mut self, out: &mut Vec<u8>) -> Result<()> {
        if self.pos > self.start {
            self.sink.literal(&self.buf[self.start..self.pos], out)?;
            self.stats.literal += (self.pos - self.start) as u64;
            self.start = self.pos;
        }
        Ok(())
    }

    /// Looks for a block equal to the window `buf[pos..pos+len]` whose
    /// weak sum is `weak`.
    fn find(&self, weak: u32, len: usize) -> Option<u32> {
        if !self.table.may_contain(weak) {
            return None;
        }
        self.lookup(self.pos, weak, len)
    }

    /// The hash-chain walk of [`DeltaEncoder::find`] for the window
    /// `buf[pos..pos+len]` (after the filter said "maybe"); out of line so
    /// the rolling loop stays small.
    #[inline(never)]
    fn lookup(&self, pos: usize, weak: u32, len: usize) -> Option<u32> {
        let mut i = self.table.head[self.table.slot(weak)];
        let mut strong: Option<Digest16> = None;
        let s2 = self.sums.head.s2length as usize;
        let at = self.base + pos as u64;
        let blen = self.blen() as u64;
        // In place: the first usable match, unless one at `at` follows.
        let mut usable = None;
        while i != NIL {
            let b = &self.sums.blocks[i as usize];
            let overwritten = self
                .in_place
                .as_ref()
                .is_some_and(|same| (i as u64) * blen < at && !same[i as usize]);
            if !overwritten && b.weak == weak && self.sums.head.block_len(i as i32) == len {
                let d = *strong.get_or_insert_with(|| {
                    block_sum(
                        self.algo,
                        &self.buf[pos..pos + len],
                        self.seed,
                        self.seed_fix,
                    )
                });
                if d.as_bytes()[..s2] == b.strong[..s2] {
                    if self.in_place.is_none() || (i as u64) * blen == at {
                        return Some(i);
                    }
                    usable.get_or_insert(i);
                } else {
                    self.false_alarms.set(self.false_alarms.get() + 1);
                }
            }
            i = self.table.next[i as usize];
        }
        usable
    }

    /// Tests the windows of `blen` bytes starting at `pos`, `pos + 1`, ...,
    /// `last` (rolling `r`, the sum of the window at `pos`, along) until
    /// one matches a block. Returns the block, the window's start and its
    /// sum; without a match, the window at `last` (tested) and its sum.
    /// The loop keeps the sums in registers and only leaves it for the
    /// hash table when the filter lets a weak sum through.
    /// `COUNT`: count rsync's hash hits too (`-vv`); a separate copy of the
    /// loop, so the usual one has no extra work.
    fn scan<const COUNT: bool>(
        &self,
        mut r: Rolling,
        mut pos: usize,
        last: usize,
    ) -> (Option<u32>, usize, Rolling) {
        let blen = self.blen();
        let window = &self.buf[..last + blen];
        loop {
            let weak = r.digest();
            if COUNT {
                self.tested(pos, weak);
            }
            if self.table.may_contain(weak) {
                if let Some(i) = self.lookup(pos, weak, blen) {
                    return (Some(i), pos, r);
                }
            }
            if pos >= last {
                return (None, pos, r);
            }
            r.roll(window[pos], window[pos + blen]);
            pos += 1;
        }
    }

    fn emit_match(&mut self, i: u32, len: usize, out: &mut Vec<u8>) -> Result<()> {
        let at = self.base + self.pos as u64;
        let blen = self.blen() as u64;
        if let Some(same) = self.in_place.as_mut() {
            if (i as u64) * blen == at {
                same[i as usize] = true;
            }
        }
        self.flush_literal(out)?;
        // The block's data: classic zlib adds it to the compressor's history.
        let data = &self.buf[self.pos..self.pos + len];
        self.sink.block_data(i, data, out)?;
        self.stats.matched += len as u64;
        self.stats.matches += 1;
        self.pos += len;
        self.start = self.pos;
        self.rolling = None;
        self.next_block =
            (self.in_place.is_none() && (i as usize + 1) < self.sums.blocks.len()).then_some(i + 1);
        Ok(())
    }

    /// Whether block `i` equals the window `buf[pos..pos+len]` of weak sum `weak`.
    fn is_block(&self, i: u32, pos: usize, weak: u32, len: usize) -> bool {
        let b = &self.sums.blocks[i as usize];
        let s2 = self.sums.head.s2length as usize;
        b.weak == weak
            && self.sums.head.block_len(i as i32) == len
            && block_sum(
                self.algo,
                &self.buf[pos..pos + len],
                self.seed,
                self.seed_fix,
            )
            .as_bytes()[..s2]
                == b.strong[..s2]
    }

    fn compact(&mut self) {
        if self.start > 0 {
            self.base += self.start as u64;
            self.buf.copy_within(self.start..self.filled, 0);
            self.filled -= self.start;
            self.pos -= self.start;
            self.start = 0;
        }
    }

    /// Processes more of the new file, appending token bytes to `out`.
    pub fn feed(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<()> {
        self.input(data.len()).copy_from_slice(data);
        self.commit_input(data.len(), out)
    }

    /// Room for the next `n` bytes of the new file, to be read straight
    /// into the encoder's buffer (no copy); then call
    /// [`DeltaEncoder::commit_input`] with how many were filled.
    pub fn input(&mut self, n: usize) -> &mut [u8] {
        self.compact();
        let end = self.filled + n;
        if self.buf.len() < end {
            self.buf.resize(end, 0);
        }
        &mut self.buf[self.filled..end]
    }

    /// Processes the first `n` bytes of the room given by
    /// [`DeltaEncoder::input`], appending token bytes to `out`.
    pub fn commit_input(&mut self, n: usize, out: &mut Vec<u8>) -> Result<()> {
        let n = n.min(self.buf.len() - self.filled);
        self.hasher.update(&self.buf[self.filled..self.filled + n]);
        self.filled += n;
        let blen = self.blen();
        if self.sums.blocks.is_empty() || blen == 0 {
            while self.filled - self.start >= CHUNK_SIZE {
                self.pos = self.start + CHUNK_SIZE;
                self.flush_literal(out)?;
            }
            return Ok(());
        }
        loop {
            if self.pos - self.start >= CHUNK_SIZE {
                self.flush_literal(out)?;
            }
            if self.filled - self.pos < blen {
                return Ok(());
            }
            let r = match self.rolling.take() {
                Some(r) => r,
                None => Rolling::new(&self.buf[self.pos..self.pos + blen]),
            };
            // Right after a match: most often the next block follows.
            if let Some(i) = self.next_block.take() {
                if self.is_block(i, self.pos, r.digest(), blen) {
                    self.tested(self.pos, r.digest());
                    self.emit_match(i, blen, out)?;
                    continue;
                }
            }
            // The last window to test: the literal run must not grow past
            // CHUNK_SIZE (flushed above) and the window must be in the data.
            let last = (self.filled - blen).min(self.start + CHUNK_SIZE - 1);
            let (found, pos, mut r) = match self.buckets.is_some() {
                true => self.scan::<true>(r, self.pos, last),
                false => self.scan::<false>(r, self.pos, last),
            };
            self.pos = pos;
            if let Some(i) = found {
                self.emit_match(i, blen, out)?;
                continue;
            }
            if self.pos + blen < self.filled {
                r.roll(self.buf[self.pos], self.buf[self.pos + blen]);
                self.rolling = Some(r);
                self.pos += 1;
            } else {
                self.rolling = Some(r);
                return Ok(());
            }
        }
    }

    /// Ends the file: matches the tail, writes the end token and the
    /// whole-file checksum. Returns the byte counts.
    pub fn finish(mut self, out: &mut Vec<u8>) -> Result<DeltaStats> {
        if !self.sums.blocks.is_empty() && self.blen() > 0 {
            loop {
                let k = self.filled - self.pos;
                if k == 0 {
                    break;
                }
                if k > self.blen() {
                    // feed() leaves at most one window; treat any surplus as literal.
                    self.pos += 1;
                    self.rolling = None;
                    continue;
                }
                let r = match self.rolling {
                    Some(r) => r,
                    None => Rolling::new(&self.buf[self.pos..self.filled]),
                };
                // rsync's search ends where the last block no longer fits.
                let last_len = self.sums.head.block_len(self.sums.head.count - 1);
                if k >= last_len {
                    self.tested(self.pos, r.digest());
                }
                if let Some(i) = self.find(r.digest(), k) {
                    self.emit_match(i, k, out)?;
                    break;
                }
                let mut r = r;
                r.shrink(self.buf[self.pos]);
                self.rolling = Some(r);
                self.pos += 1;
                if self.pos - self.start >= CHUNK_SIZE {
                    self.flush_literal(out)?;
                }
            }
        }
        self.pos = self.filled;
        while self.pos - self.start > CHUNK_SIZE {
            let end = self.pos;
            self.pos = self.start + CHUNK_SIZE;
            self.flush_literal(out)?;
            self.pos = end;
        }
        self.flush_literal(out)?;
        self.sink.end(out)?;
        let digest = self.hasher.finish();
        out.extend_from_slice(digest.as_bytes());
        self.stats.hash_hits = self.hits.get();
        self.stats.false_alarms = self.false_alarms.get();
        Ok(self.stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compress::TokenSource;
    use crate::sums::SumHead;
    use crate::token::Token;
    use crate::wire::Reader;
    use proptest::prelude::*;

    /// Rebuilds the new file from a basis and a token stream.
    fn apply(basis: &[u8], head: SumHead, stream: &[u8], algo: ChecksumAlgo) -> Vec<u8> {
        apply_fmt(basis, head, stream, algo, false)
    }

    fn apply_fmt(
        basis: &[u8],
        head: SumHead,
        stream: &[u8],
        algo: ChecksumAlgo,
        compressed: bool,
    ) -> Vec<u8> {
        let mut d = TokenSource::new(compressed, head.count as u32);
        let mut r = Reader::new(stream);
        let mut out = Vec::new();
        loop {
            match d.decode(&mut r).unwrap() {
                Token::Literal(b) => out.extend(b),
                Token::Block(i) => {
                    let off = i as usize * head.blength as usize;
                    out.extend_from_slice(&basis[off..off + head.block_len(i as i32)]);
                }
                Token::End => break,
            }
        }
        let sum = r.bytes(algo.digest_len()).unwrap();
        assert_eq!(sum, crate::checksum::file_sum(algo, &out).as_bytes());
        assert_eq!(r.remaining(), 0);
        out
    }

    /// rsync's hash search over `new`, plainly (no chains, no hints): the
    /// windows it tests whose bucket is used, and the blocks it matches.
    fn naive_rsync_counts(sums: &SumSet, new: &[u8], algo: ChecksumAlgo) -> (u64, u64) {
        let buckets = RsyncBuckets::new(sums);
        let head = sums.head;
        let last_len = head.block_len(head.count - 1);
        let (mut hits, mut matches, mut off) = (0, 0, 0usize);
        while off + last_len <= new.len() {
            let k = (head.blength as usize).min(new.len() - off);
            let w = &new[off..off + k];
            let weak = crate::checksum::weak_sum(w);
            if buckets.hit(weak) {
                hits += 1;
            }
            let s2 = head.s2length as usize;
            let strong = block_sum(algo, w, 42, true);
            let found = sums.blocks.iter().enumerate().find(|(i, b)| {
                b.weak == weak
                    && head.block_len(*i as i32) == k
                    && b.strong[..s2] == strong.as_bytes()[..s2]
            });
            if found.is_some() {
                matches += 1;
                off += k;
            } else {
                off += 1;
            }
        }
        (hits, matches)
    }

    #[test]
    fn counts_hash_hits_and_matches_as_rsync() {
        let mut basis = vec![0u8; 60_000];
        let mut x = 0x1234_5678_9abc_def0u64;
        for b in basis.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        let mut new = basis.clone();
        new.splice(5000..5000, *b"xyz");
        new.truncate(new.len() - 100);
        new.extend_from_slice(&[7u8; 150]);
        let algo = ChecksumAlgo::Md5;
        let head = SumHead::for_file(basis.len() as u64, false, 16).unwrap();
        let sums = SumSet::compute(&basis, head, algo, 42, true);
        let want = naive_rsync_counts(&sums, &new, algo);
        assert!(want.1 > 50, "{want:?}");
        for chunk in [1000, 4096, 70_000] {
            for count in [true, false] {
                let mut enc = DeltaEncoder::new(sums.clone(), algo, 42, true);
                if count {
                    enc.count_hash_hits();
                }
                let mut out = Vec::new();
                for c in new.chunks(chunk) {
                    enc.feed(c, &mut out).unwrap();
                }
                let st = enc.finish(&mut out).unwrap();
                let hits = if count { want.0 } else { 0 };
                assert_eq!((st.hash_hits, st.matches), (hits, want.1), "chunk {chunk}");
                assert_eq!(st.false_alarms, 0);
                assert_eq!(apply(&basis, head, &out, algo), new);
            }
        }
    }

    fn delta(basis: &[u8], new: &[u8], chunk: usize) -> (Vec<u8>, DeltaStats, SumHead) {
        delta_fmt(basis, new, chunk, TokenSink::Plain)
    }

    fn delta_fmt(
        basis: &[u8],
        new: &[u8],
        chunk: usize,
        sink: TokenSink,
    ) -> (Vec<u8>, DeltaStats, SumHead) {
        let algo = ChecksumAlgo::Xxh128;
        let head = SumHead::for_file(basis.len() as u64, false, 16).unwrap();
        let sums = SumSet::compute(basis, head, algo, 42, true);
        let mut enc = DeltaEncoder::with_sink(sums, algo, 42, true, sink);
        let mut out = Vec::new();
        for c in new.chunks(chunk.max(1)) {
            enc.feed(c, &mut out).unwrap();
        }
        let st = enc.finish(&mut out).unwrap();
        (out, st, head)
    }

    #[test]
    fn identical_file_is_all_matches() {
        let basis: Vec<u8> = (0..100_000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        let (out, st, head) = delta(&basis, &basis, 4096);
        assert_eq!(st.literal, 0);
        assert_eq!(st.matched, basis.len() as u64);
        assert_eq!(apply(&basis, head, &out, ChecksumAlgo::Xxh128), basis);
    }

    #[test]
    fn small_edit_is_mostly_matched() {
        let basis: Vec<u8> = (0..200_000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 11) as u8)
            .collect();
        let mut new = basis.clone();
        new[50_000..50_010].copy_from_slice(b"0123456789");
        new.splice(120_000..120_000, b"inserted".iter().copied());
        let (out, st, head) = delta(&basis, &new, 1000);
        assert!(st.literal < 3000, "{st:?}");
        assert_eq!(apply(&basis, head, &out, ChecksumAlgo::Xxh128), new);
    }

    #[test]
    fn repeated_blocks_and_the_next_block_rule() {
        // Blocks A A B A B B (700 bytes each); the new file reorders them and
        // ends in a short block, so a match is often not followed by the
        // block after it, and equal blocks compete.
        let a: Vec<u8> = (0..700u32).map(|i| (i * 31 % 251) as u8).collect();
        let b: Vec<u8> = (0..700u32).map(|i| (i * 17 % 241) as u8).collect();
        let basis: Vec<u8> = [&a[..], &a, &b, &a, &b, &b].concat();
        let new: Vec<u8> = [&b[..], &a, &a, &a, &b, &b, &a, &b[..300]].concat();
        for chunk in [1, 700, 4096] {
            let (out, st, head) = delta(&basis, &new, chunk);
            assert_eq!(st.matched, 7 * 700, "chunk {chunk}");
            assert_eq!(st.literal, 300, "chunk {chunk}");
            assert_eq!(apply(&basis, head, &out, ChecksumAlgo::Xxh128), new);
        }
    }

    #[test]
    fn zlibx_delta_round_trip() {
        let basis: Vec<u8> = (0..300_000u32)
            .map(|i| (i / 7 % 13) as u8 ^ (i.wrapping_mul(2654435761) >> 29) as u8)
            .collect();
        let mut new = basis.clone();
        new[1000..1100].fill(9);
        new.extend_from_slice(&[b'z'; 50_000]);
        let (plain, st, head) = delta(&basis, &new, 4096);
        let (zl, st2, _) = delta_fmt(&basis, &new, 4096, TokenSink::new(Some(6)));
        assert_eq!(st, st2);
        assert!(
            zl.len() < plain.len() / 2,
            "{} vs {}",
            zl.len(),
            plain.len()
        );
        assert_eq!(
            apply_fmt(&basis, head, &zl, ChecksumAlgo::Xxh128, true),
            new
        );
    }

    proptest! {
        /// Reading into `input` (filling less than asked, as a short read
        /// does) gives the same tokens as `feed`.
        #[test]
        fn input_in_place_equals_feed(basis in proptest::collection::vec(0u8..4, 0..5000), new in proptest::collection::vec(0u8..4, 0..5000), ask in 1usize..3000, short in 0usize..3000) {
            let (fed, st, _) = delta(&basis, &new, ask);
            let algo = ChecksumAlgo::Xxh128;
            let head = SumHead::for_file(basis.len() as u64, false, 16).unwrap();
            let sums = SumSet::compute(&basis, head, algo, 42, true);
            let mut enc = DeltaEncoder::new(sums, algo, 42, true);
            let mut out = Vec::new();
            let mut rest = &new[..];
            while !rest.is_empty() {
                let room = enc.input(ask);
                let n = room.len().min(rest.len()).min(short.max(1));
                room[..n].copy_from_slice(&rest[..n]);
                enc.commit_input(n, &mut out).unwrap();
                rest = &rest[n..];
            }
            let st2 = enc.finish(&mut out).unwrap();
            prop_assert_eq!(st, st2);
            prop_assert_eq!(apply(&basis, head, &out, algo), new.clone());
            prop_assert_eq!(apply(&basis, head, &fed, algo), new);
        }
    }

    proptest! {
        #[test]
        fn in_place_never_uses_overwritten_blocks(basis in proptest::collection::vec(0u8..3, 0..6000), edits in proptest::collection::vec((0usize..6000, 0u8..3), 0..40), chunk in 1usize..3000) {
            // A new file that shares much with the basis, blocks moved around.
            let mut new = basis.clone();
            let head_of_basis = basis[..basis.len().min(700)].to_vec();
            for (at, b) in edits {
                if at < new.len() {
                    new[at] = b;
                } else {
                    new.extend_from_slice(&head_of_basis);
                }
            }
            let third = new.len() / 3;
            new.rotate_left(third);
            let algo = ChecksumAlgo::Xxh128;
            let head = SumHead::for_file(basis.len() as u64, false, 16).unwrap();
            let sums = SumSet::compute(&basis, head, algo, 7, true);
            let mut enc = DeltaEncoder::new(sums, algo, 7, true);
            enc.set_in_place();
            let mut out = Vec::new();
            for c in new.chunks(chunk) {
                enc.feed(c, &mut out).unwrap();
            }
            let st = enc.finish(&mut out).unwrap();
            prop_assert_eq!(st.literal + st.matched, new.len() as u64);
            // Apply it the way an in-place receiver does: blocks are read
            // from the file being overwritten.
            let mut file = basis.clone();
            let mut d = TokenSource::new(false, head.count as u32);
            let mut r = Reader::new(&out);
            let mut off = 0usize;
            loop {
                let data = match d.decode(&mut r).unwrap() {
                    Token::Literal(b) => b,
                    Token::Block(i) => {
                        let at = i as usize * head.blength as usize;
                        file[at..at + head.block_len(i as i32)].to_vec()
                    }
                    Token::End => break,
                };
                if file.len() < off + data.len() {
                    file.resize(off + data.len(), 0);
                }
                file[off..off + data.len()].copy_from_slice(&data);
                off += data.len();
            }
            file.truncate(off);
            prop_assert_eq!(file, new);
        }

        #[test]
        fn reconstructs_any_pair(basis in proptest::collection::vec(0u8..4, 0..5000), new in proptest::collection::vec(0u8..4, 0..5000), chunk in 1usize..3000) {
            let (out, st, head) = delta(&basis, &new, chunk);
            prop_assert_eq!(st.literal + st.matched, new.len() as u64);
            prop_assert_eq!(apply(&basis, head, &out, ChecksumAlgo::Xxh128), new);
        }
    }
}
