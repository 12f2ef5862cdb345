//! Turning extent data into fragments and back: pure functions, no I/O.
//!
//! `replicate:N` stores N identical copies. `rs:K+M` splits the data into K equal shards (the last
//! padded with zeros to an even length, as Reed–Solomon over GF(2^16) requires), and computes M
//! parity shards with `reed-solomon-simd`. Any K intact fragments restore the data.

use crate::error::{Error, Result};
use crate::policy::Policy;
use std::borrow::Cow;

/// BLAKE3 checksum of a fragment.
pub fn checksum(data: &[u8]) -> [u8; 32] {
    *blake3::hash(data).as_bytes()
}

/// Size of each fragment for `len` bytes of extent data under `policy`.
pub fn fragment_len(policy: Policy, len: usize) -> usize {
    match policy {
        Policy::Replicate { .. } => len,
        Policy::ReedSolomon { data, .. } => {
            let k = data as usize;
            let per = len.div_ceil(k).max(2);
            per + (per & 1)
        }
    }
}

/// Split `data` into the fragments `policy` prescribes (index order: data shards, then parity).
pub fn encode(policy: Policy, data: &[u8]) -> Result<Vec<Vec<u8>>> {
    Ok(encode_borrowed(policy, data)?
        .into_iter()
        .map(Cow::into_owned)
        .collect())
}

/// Like [`encode`], but fragments that are plain slices of `data` (every replica; every
/// Reed–Solomon data shard but a padded last one) borrow it instead of copying it.
pub fn encode_borrowed(policy: Policy, data: &[u8]) -> Result<Vec<Cow<'_, [u8]>>> {
    match policy {
        Policy::Replicate { copies } => Ok(vec![Cow::Borrowed(data); copies as usize]),
        Policy::ReedSolomon { data: k, parity: m } => {
            let shards = data_shards(k as usize, data);
            let parity = encode_parity(k as usize, m as usize, &shards)
                .map_err(|e| Error::Invalid(format!("reed-solomon encode: {e}")))?;
            let mut out = shards;
            out.extend(parity.into_iter().map(Cow::Owned));
            Ok(out)
        }
    }
}

/// Encoders kept for reuse: a new encoder allocates (and the kernel zeroes) a work buffer
/// several shards large, every extent.
static ENCODERS: std::sync::Mutex<Vec<reed_solomon_simd::ReedSolomonEncoder>> =
    std::sync::Mutex::new(Vec::new());

/// Most encoders kept (one per concurrent flush thread).
const SPARE_ENCODERS: usize = 8;

/// The `m` parity shards of the `k` equally long `shards`, with a reused encoder.
fn encode_parity(
    k: usize,
    m: usize,
    shards: &[Cow<'_, [u8]>],
) -> std::result::Result<Vec<Vec<u8>>, reed_solomon_simd::Error> {
    let per = shards.first().map_or(0, |s| s.len());
    let spare = ENCODERS.lock().unwrap_or_else(|e| e.into_inner()).pop();
    let mut enc = match spare {
        Some(mut e) => {
            e.reset(k, m, per)?;
            e
        }
        None => reed_solomon_simd::ReedSolomonEncoder::new(k, m, per)?,
    };
    for s in shards {
        enc.add_original_shard(s)?;
    }
    let parity: Vec<Vec<u8>> = enc.encode()?.recovery_iter().map(<[u8]>::to_vec).collect();
    let mut spare = ENCODERS.lock().unwrap_or_else(|e| e.into_inner());
    if spare.len() < SPARE_ENCODERS {
        spare.push(enc);
    }
    Ok(parity)
}

/// The `k` data shards of `data`: slices of it, except shards that run past its end, which
/// are copied and padded with zeros.
fn data_shards(k: usize, data: &[u8]) -> Vec<Cow<'_, [u8]>> {
    let per = fragment_len(
        Policy::ReedSolomon {
            data: k as u8,
            parity: 1,
        },
        data.len(),
    );
    (0..k)
        .map(|i| {
            let start = (i * per).min(data.len());
            let end = ((i + 1) * per).min(data.len());
            if end - start == per {
                return Cow::Borrowed(&data[start..end]);
            }
            let mut s = vec![0u8; per];
            s[..end - start].copy_from_slice(&data[start..end]);
            Cow::Owned(s)
        })
        .collect()
}

/// Rebuild the extent data (`len` bytes) from the intact fragments given as `(index, bytes)`.
///
/// Fails with [`Error::Unrecoverable`] when fewer than `policy.needed()` fragments are given.
pub fn decode(
    policy: Policy,
    extent: u64,
    len: usize,
    frags: &[(usize, &[u8])],
) -> Result<Vec<u8>> {
    let unrecoverable = || Error::Unrecoverable {
        extent,
        available: frags.len(),
        needed: policy.needed(),
    };
    match policy {
        Policy::Replicate { .. } => {
            let (_, d) = frags.first().ok_or_else(unrecoverable)?;
            Ok(d[..len.min(d.len())].to_vec())
        }
        Policy::ReedSolomon { data: k, parity: m } => {
            let k = k as usize;
            if frags.len() < k {
                return Err(unrecoverable());
            }
            let per = fragment_len(policy, len);
            let mut shards: Vec<Option<Vec<u8>>> = vec![None; k];
            for &(i, d) in frags {
                if i < k {
                    shards[i] = Some(d.to_vec());
                }
            }
            if shards.iter().any(Option::is_none) {
                let originals = frags.iter().filter(|(i, _)| *i < k).map(|&(i, d)| (i, d));
                let recovery = frags
                    .iter()
                    .filter(|(i, _)| *i >= k)
                    .map(|&(i, d)| (i - k, d));
                let restored = reed_solomon_simd::decode(k, m as usize, originals, recovery)
                    .map_err(|e| {
                        Error::Invalid(format!("extent {extent}: reed-solomon decode: {e}"))
                    })?;
                for (i, d) in restored {
                    if i < k {
                        shards[i] = Some(d);
                    }
                }
            }
            let mut out = Vec::with_capacity(per * k);
            for s in shards {
                out.extend_from_slice(&s.ok_or_else(unrecoverable)?);
            }
            out.truncate(len);
            Ok(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rs_roundtrip_with_losses() {
        let p: Policy = "rs:4+2".parse().unwrap();
        for len in [0usize, 1, 7, 8, 1000, 65537] {
            let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let frags = encode(p, &data).unwrap();
            assert_eq!(frags.len(), 6);
            // Drop fragments 0 and 3.
            let keep: Vec<(usize, &[u8])> = frags
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != 0 && *i != 3)
                .map(|(i, f)| (i, f.as_slice()))
                .collect();
            assert_eq!(decode(p, 1, len, &keep).unwrap(), data);
            let too_few: Vec<_> = keep[..3].to_vec();
            assert!(matches!(
                decode(p, 1, len, &too_few),
                Err(Error::Unrecoverable { .. })
            ));
        }
    }

    #[test]
    fn borrowed_fragments_equal_copies_and_borrow_whole_shards() {
        // (policy, length, fragments that are plain slices of the data)
        for (p, len, borrowed) in [
            ("rs:4+2", 1 << 20, 4),
            ("rs:4+2", 1001, 3),
            ("rs:2+1", 1, 0),
            ("replicate:3", 777, 3),
        ] {
            let p: Policy = p.parse().unwrap();
            let data: Vec<u8> = (0..len).map(|i| (i * 7 % 253) as u8).collect();
            let b = encode_borrowed(p, &data).unwrap();
            let owned = encode(p, &data).unwrap();
            assert_eq!(b.len(), owned.len());
            for (x, y) in b.iter().zip(&owned) {
                assert_eq!(x.as_ref(), y.as_slice());
            }
            let n = b.iter().filter(|f| matches!(f, Cow::Borrowed(_))).count();
            assert_eq!(n, borrowed, "{p} {len}");
        }
    }

    #[test]
    fn reused_encoders_match_fresh_ones_across_shapes() {
        // Alternate shapes so pooled encoders are reset from one shape to another.
        for round in 0..3 {
            for (p, len) in [("rs:4+2", 1 << 20), ("rs:2+1", 4098), ("rs:6+3", 70_000)] {
                let p: Policy = p.parse().unwrap();
                let Policy::ReedSolomon { data: k, parity: m } = p else {
                    unreachable!()
                };
                let data: Vec<u8> = (0..len).map(|i| ((i + round) * 13 % 251) as u8).collect();
                let frags = encode(p, &data).unwrap();
                let shards = data_shards(k as usize, &data);
                let fresh = reed_solomon_simd::encode(k as usize, m as usize, &shards).unwrap();
                assert_eq!(&frags[k as usize..], &fresh[..], "{p} {len} round {round}");
            }
        }
    }

    #[test]
    fn replicate_roundtrip() {
        let p: Policy = "replicate:3".parse().unwrap();
        let frags = encode(p, b"hello").unwrap();
        assert_eq!(frags.len(), 3);
        assert_eq!(decode(p, 1, 5, &[(2, &frags[2])]).unwrap(), b"hello");
        assert!(decode(p, 1, 5, &[]).is_err());
    }
}
