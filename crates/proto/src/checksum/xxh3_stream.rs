//! Streaming XXH3 (64 and 128 bits) with the default secret and seed 0,
//! for whole-file sums.
//!
//! `twox-hash`'s streaming hasher accumulates one 64-byte stripe per call
//! with its state in memory, which runs at about half its one-shot speed.
//! This one keeps the eight accumulators in registers over every stripe
//! of an update (AVX2 when the CPU has it, else a scalar loop) and hands
//! inputs of 256 bytes or less to `twox-hash`'s one-shot functions, so the
//! digests are XXH3's by construction for short inputs and checked
//! against the one-shot functions for long ones (see the tests).
//!
//! The long-input algorithm (inputs over 240 bytes): the input is split
//! into stripes of 64 bytes, 16 stripes to a block; every stripe but the
//! last (the one that ends the input, which may overlap the one before)
//! is accumulated with the secret at an offset of 8 bytes per stripe in
//! its block, the accumulators are scrambled after each full block, the
//! last stripe is accumulated with the secret at offset 121, and the
//! accumulators are merged into the digest.

use twox_hash::{XxHash3_128, XxHash3_64};

const STRIPE: usize = 64;
const STRIPES_PER_BLOCK: usize = 16;
/// Bytes kept back before any stripe is accumulated (covers XXH3's
/// short-input cases, up to 240 bytes).
const BUF: usize = 256;
const SCRAMBLE_AT: usize = 192 - STRIPE;
const LAST_STRIPE_AT: usize = 192 - STRIPE - 7;

const P32_1: u64 = 0x9E37_79B1;
const P32_2: u64 = 0x85EB_CA77;
const P32_3: u64 = 0xC2B2_AE3D;
const P64_1: u64 = 0x9E37_79B1_85EB_CA87;
const P64_2: u64 = 0xC2B2_AE3D_27D4_EB4F;
const P64_3: u64 = 0x1656_67B1_9E37_79F9;
const P64_4: u64 = 0x85EB_CA77_C2B2_AE63;
const P64_5: u64 = 0x27D4_EB2F_1656_67C5;

const INIT: [u64; 8] = [P32_3, P64_1, P64_2, P64_3, P64_4, P32_2, P64_5, P32_1];

/// XXH3's default secret.
const SECRET: [u8; 192] = [
    0xb8, 0xfe, 0x6c, 0x39, 0x23, 0xa4, 0x4b, 0xbe, 0x7c, 0x01, 0x81, 0x2c, 0xf7, 0x21, 0xad, 0x1c,
    0xde, 0xd4, 0x6d, 0xe9, 0x83, 0x90, 0x97, 0xdb, 0x72, 0x40, 0xa4, 0xa4, 0xb7, 0xb3, 0x67, 0x1f,
    0xcb, 0x79, 0xe6, 0x4e, 0xcc, 0xc0, 0xe5, 0x78, 0x82, 0x5a, 0xd0, 0x7d, 0xcc, 0xff, 0x72, 0x21,
    0xb8, 0x08, 0x46, 0x74, 0xf7, 0x43, 0x24, 0x8e, 0xe0, 0x35, 0x90, 0xe6, 0x81, 0x3a, 0x26, 0x4c,
    0x3c, 0x28, 0x52, 0xbb, 0x91, 0xc3, 0x00, 0xcb, 0x88, 0xd0, 0x65, 0x8b, 0x1b, 0x53, 0x2e, 0xa3,
    0x71, 0x64, 0x48, 0x97, 0xa2, 0x0d, 0xf9, 0x4e, 0x38, 0x19, 0xef, 0x46, 0xa9, 0xde, 0xac, 0xd8,
    0xa8, 0xfa, 0x76, 0x3f, 0xe3, 0x9c, 0x34, 0x3f, 0xf9, 0xdc, 0xbb, 0xc7, 0xc7, 0x0b, 0x4f, 0x1d,
    0x8a, 0x51, 0xe0, 0x4b, 0xcd, 0xb4, 0x59, 0x31, 0xc8, 0x9f, 0x7e, 0xc9, 0xd9, 0x78, 0x73, 0x64,
    0xea, 0xc5, 0xac, 0x83, 0x34, 0xd3, 0xeb, 0xc3, 0xc5, 0x81, 0xa0, 0xff, 0xfa, 0x13, 0x63, 0xeb,
    0x17, 0x0d, 0xdd, 0x51, 0xb7, 0xf0, 0xda, 0x49, 0xd3, 0x16, 0x55, 0x26, 0x29, 0xd4, 0x68, 0x9e,
    0x2b, 0x16, 0xbe, 0x58, 0x7d, 0x47, 0xa1, 0xfc, 0x8f, 0xf8, 0xb8, 0xd1, 0x7a, 0xd0, 0x31, 0xce,
    0x45, 0xcb, 0x3a, 0x8f, 0x95, 0x16, 0x04, 0x28, 0xaf, 0xd7, 0xfb, 0xca, 0xbb, 0x4b, 0x40, 0x7e,
];

fn read64(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

/// The accumulators and where they are in the current block.
#[derive(Clone, Copy)]
struct State {
    acc: [u64; 8],
    /// Stripes accumulated in the current block (0..16).
    stripe: usize,
}

impl State {
    /// Accumulates every stripe of `data` (a multiple of 64 bytes long),
    /// scrambling after each full block.
    fn consume(&mut self, data: &[u8]) {
        debug_assert_eq!(data.len() % STRIPE, 0);
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked just above).
            unsafe { avx2::consume(self, data) };
            return;
        }
        self.consume_scalar(data);
    }

    fn consume_scalar(&mut self, data: &[u8]) {
        let mut acc = self.acc;
        let mut s = self.stripe;
        for stripe in data.chunks_exact(STRIPE) {
            accumulate(&mut acc, stripe, s * 8);
            s += 1;
            if s == STRIPES_PER_BLOCK {
                for (i, a) in acc.iter_mut().enumerate() {
                    *a ^= *a >> 47;
                    *a ^= read64(&SECRET, SCRAMBLE_AT + 8 * i);
                    *a = a.wrapping_mul(P32_1);
                }
                s = 0;
            }
        }
        self.acc = acc;
        self.stripe = s;
    }
}

/// One stripe into the accumulators, with the secret at `key`.
fn accumulate(acc: &mut [u64; 8], stripe: &[u8], key: usize) {
    for i in 0..8 {
        let v = read64(stripe, 8 * i);
        let k = v ^ read64(&SECRET, key + 8 * i);
        acc[i ^ 1] = acc[i ^ 1].wrapping_add(v);
        acc[i] = acc[i].wrapping_add((k & 0xFFFF_FFFF).wrapping_mul(k >> 32));
    }
}

fn avalanche(mut h: u64) -> u64 {
    h ^= h >> 37;
    h = h.wrapping_mul(0x1656_6791_9E37_79F9);
    h ^ (h >> 32)
}

fn merge(acc: &[u64; 8], key: usize, start: u64) -> u64 {
    let mut r = start;
    for i in 0..4 {
        let a = acc[2 * i] ^ read64(&SECRET, key + 16 * i);
        let b = acc[2 * i + 1] ^ read64(&SECRET, key + 16 * i + 8);
        let p = a as u128 * b as u128;
        r = r.wrapping_add(p as u64 ^ (p >> 64) as u64);
    }
    avalanche(r)
}

/// A streaming XXH3 hasher (seed 0, default secret).
#[derive(Clone)]
pub struct Xxh3Stream {
    state: State,
    total: u64,
    /// Bytes not accumulated yet (at least one once anything was
    /// accumulated: the input's last stripe is only known at the end).
    buf: [u8; BUF],
    buf_len: usize,
    /// The 64 bytes accumulated last, just before `buf`.
    last: [u8; STRIPE],
}

impl Default for Xxh3Stream {
    fn default() -> Self {
        Self::new()
    }
}

impl Xxh3Stream {
    /// A fresh hasher.
    pub fn new() -> Self {
        Xxh3Stream {
            state: State {
                acc: INIT,
                stripe: 0,
            },
            total: 0,
            buf: [0; BUF],
            buf_len: 0,
            last: [0; STRIPE],
        }
    }

    /// Adds `data`.
    pub fn update(&mut self, mut data: &[u8]) {
        self.total += data.len() as u64;
        if self.buf_len + data.len() <= BUF {
            self.buf[self.buf_len..self.buf_len + data.len()].copy_from_slice(data);
            self.buf_len += data.len();
            return;
        }
        if self.buf_len > 0 {
            // Top the buffer up and accumulate it: more data follows.
            let take = BUF - self.buf_len;
            self.buf[self.buf_len..].copy_from_slice(&data[..take]);
            data = &data[take..];
            self.state.consume(&self.buf);
            self.last.copy_from_slice(&self.buf[BUF - STRIPE..]);
            self.buf_len = 0;
        }
        // `data` is not empty here; keep 1 to 64 bytes of it back.
        let n = (data.len() - 1) / STRIPE * STRIPE;
        if n > 0 {
            self.state.consume(&data[..n]);
            self.last.copy_from_slice(&data[n - STRIPE..n]);
        }
        let rest = &data[n..];
        self.buf[..rest.len()].copy_from_slice(rest);
        self.buf_len = rest.len();
    }

    /// The accumulators after the last stripe, for an input of more than
    /// [`BUF`] bytes.
    fn finish_long(&self) -> [u64; 8] {
        let mut st = self.state;
        let p = self.buf_len;
        let whole = (p - 1) / STRIPE * STRIPE;
        st.consume_scalar(&self.buf[..whole]);
        let mut tail = [0u8; STRIPE];
        if p >= STRIPE {
            tail.copy_from_slice(&self.buf[p - STRIPE..p]);
        } else {
            tail[..STRIPE - p].copy_from_slice(&self.last[p..]);
            tail[STRIPE - p..].copy_from_slice(&self.buf[..p]);
        }
        accumulate(&mut st.acc, &tail, LAST_STRIPE_AT);
        st.acc
    }

    /// The 64-bit digest.
    pub fn finish_64(&self) -> u64 {
        if self.total <= BUF as u64 {
            return XxHash3_64::oneshot(&self.buf[..self.buf_len]);
        }
        merge(&self.finish_long(), 11, self.total.wrapping_mul(P64_1))
    }

    /// The 128-bit digest.
    pub fn finish_128(&self) -> u128 {
        if self.total <= BUF as u64 {
            return XxHash3_128::oneshot(&self.buf[..self.buf_len]);
        }
        let acc = self.finish_long();
        let lo = merge(&acc, 11, self.total.wrapping_mul(P64_1));
        let hi = merge(&acc, 192 - STRIPE - 11, !self.total.wrapping_mul(P64_2));
        ((hi as u128) << 64) | lo as u128
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{State, SCRAMBLE_AT, SECRET, STRIPE, STRIPES_PER_BLOCK};
    use std::arch::x86_64::*;

    /// [`State::consume`] with the accumulators in two AVX2 registers.
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    pub unsafe fn consume(st: &mut State, data: &[u8]) {
        let key = SECRET.as_ptr();
        // SAFETY: `st.acc` is 64 readable bytes; loadu needs no alignment.
        let (mut a0, mut a1) = unsafe {
            let p = st.acc.as_ptr().cast::<__m256i>();
            (_mm256_loadu_si256(p), _mm256_loadu_si256(p.add(1)))
        };
        let prime = _mm256_set1_epi32(super::P32_1 as i32);
        let mut s = st.stripe;
        for stripe in data.chunks_exact(STRIPE) {
            // SAFETY: `stripe` is 64 readable bytes and `s * 8 + 64` is at
            // most 184 <= 192, within the secret; loadu needs no alignment.
            let (d0, d1, k0, k1) = unsafe {
                let d = stripe.as_ptr().cast::<__m256i>();
                let k = key.add(s * 8).cast::<__m256i>();
                (
                    _mm256_loadu_si256(d),
                    _mm256_loadu_si256(d.add(1)),
                    _mm256_loadu_si256(k),
                    _mm256_loadu_si256(k.add(1)),
                )
            };
            a0 = step(a0, d0, k0);
            a1 = step(a1, d1, k1);
            s += 1;
            if s == STRIPES_PER_BLOCK {
                // SAFETY: the scramble key is the secret's last 64 bytes.
                let (k0, k1) = unsafe {
                    let k = key.add(SCRAMBLE_AT).cast::<__m256i>();
                    (_mm256_loadu_si256(k), _mm256_loadu_si256(k.add(1)))
                };
                a0 = scramble(a0, k0, prime);
                a1 = scramble(a1, k1, prime);
                s = 0;
            }
        }
        // SAFETY: `st.acc` is 64 writable bytes; storeu needs no alignment.
        unsafe {
            let p = st.acc.as_mut_ptr().cast::<__m256i>();
            _mm256_storeu_si256(p, a0);
            _mm256_storeu_si256(p.add(1), a1);
        }
        st.stripe = s;
    }

    /// Four lanes of one stripe: `acc[i ^ 1] += v[i]` and
    /// `acc[i] += lo32(v[i] ^ k[i]) * hi32(v[i] ^ k[i])`.
    #[target_feature(enable = "avx2")]
    fn step(acc: __m256i, v: __m256i, k: __m256i) -> __m256i {
        let vk = _mm256_xor_si256(v, k);
        let hi = _mm256_shuffle_epi32::<0b00_11_00_01>(vk);
        let product = _mm256_mul_epu32(vk, hi);
        let swapped = _mm256_shuffle_epi32::<0b01_00_11_10>(v);
        _mm256_add_epi64(acc, _mm256_add_epi64(product, swapped))
    }

    /// `acc = (acc ^ (acc >> 47) ^ k) * P32_1` in four lanes.
    #[target_feature(enable = "avx2")]
    fn scramble(acc: __m256i, k: __m256i, prime: __m256i) -> __m256i {
        let a = _mm256_xor_si256(_mm256_xor_si256(acc, _mm256_srli_epi64::<47>(acc)), k);
        let lo = _mm256_mul_epu32(a, prime);
        let hi = _mm256_mul_epu32(_mm256_srli_epi64::<32>(a), prime);
        _mm256_add_epi64(lo, _mm256_slli_epi64::<32>(hi))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample(n: usize) -> Vec<u8> {
        (0..n as u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
            .collect()
    }

    fn check(data: &[u8], pieces: &[usize]) {
        let mut h = Xxh3Stream::new();
        let mut at = 0;
        for &p in pieces {
            let end = (at + p).min(data.len());
            h.update(&data[at..end]);
            at = end;
        }
        h.update(&data[at..]);
        assert_eq!(
            h.finish_64(),
            XxHash3_64::oneshot(data),
            "{} bytes",
            data.len()
        );
        assert_eq!(
            h.finish_128(),
            XxHash3_128::oneshot(data),
            "{} bytes",
            data.len()
        );
    }

    #[test]
    fn every_length_around_the_boundaries() {
        let data = sample(5000);
        for n in (0..600)
            .chain(1000..1100)
            .chain(2030..2070)
            .chain(4090..4100)
        {
            check(&data[..n], &[]);
            check(&data[..n], &[1, 63, 64, 65]);
            check(&data[..n], &[256, 1024]);
            check(&data[..n], &[255, 1]);
        }
    }

    #[test]
    fn large_inputs_in_large_updates() {
        let data = sample(3 << 20);
        for piece in [32_764usize, 65_536, 262_144, 1 << 20] {
            check(&data, &vec![piece; data.len() / piece + 1]);
        }
        check(&data, &[]);
    }

    #[test]
    fn scalar_path_matches() {
        let data = sample(10_000);
        for n in [1024usize, 1025, 4096, 9_999] {
            let mut st = State {
                acc: INIT,
                stripe: 0,
            };
            let mut sc = st;
            let whole = n / STRIPE * STRIPE;
            st.consume(&data[..whole]);
            sc.consume_scalar(&data[..whole]);
            assert_eq!((st.acc, st.stripe), (sc.acc, sc.stripe));
        }
    }

    proptest! {
        #[test]
        fn random_splits_match_oneshot(
            data in proptest::collection::vec(any::<u8>(), 0..5000),
            cuts in proptest::collection::vec(0usize..1500, 0..8),
        ) {
            let mut h = Xxh3Stream::new();
            let mut at = 0;
            for c in cuts {
                let end = (at + c).min(data.len());
                h.update(&data[at..end]);
                at = end;
            }
            h.update(&data[at..]);
            prop_assert_eq!(h.finish_64(), XxHash3_64::oneshot(&data));
            prop_assert_eq!(h.finish_128(), XxHash3_128::oneshot(&data));
        }
    }
}
