//! Throughput of the checksums on this CPU: block sums (one-shot, seeded)
//! and whole-file sums (streaming) of every algorithm, and the weak sum.
//!
//! Run: `cargo run --release -p arsync-proto --example checksum_bench`

use std::time::Instant;

use arsync_proto::checksum::{block_sum, ChecksumAlgo, FileHasher, Rolling};

fn time(what: &str, bytes: usize, mut f: impl FnMut() -> u64) {
    let mut best = f64::MAX;
    let mut sink = 0u64;
    for _ in 0..5 {
        let t = Instant::now();
        sink = sink.wrapping_add(f());
        best = best.min(t.elapsed().as_secs_f64());
    }
    println!(
        "{what:<44} {:>8.2} GB/s  ({sink:x})",
        bytes as f64 / best / 1e9
    );
}

fn main() {
    let data: Vec<u8> = (0..64u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let n = data.len();
    for blen in [700usize, 8192, 131_072] {
        time(&format!("block_sum   xxh128 blocks of {blen}"), n, || {
            data.chunks(blen)
                .map(|b| block_sum(ChecksumAlgo::Xxh128, b, 7, false).as_bytes()[0] as u64)
                .fold(0, u64::wrapping_add)
        });
        time(&format!("Rolling::new blocks of {blen}"), n, || {
            data.chunks(blen)
                .map(|b| Rolling::new(b).digest() as u64)
                .fold(0, u64::wrapping_add)
        });
    }
    // Whole-file sums over data in the cache (as the sender and the
    // receiver hash what they just read): 256 KiB hashed 256 times.
    let hot = &data[..256 << 10];
    let reps = 256;
    time(
        "cached: one-shot xxh128 of 256 KiB",
        hot.len() * reps,
        || {
            (0..reps).fold(0, |a, _| {
                a ^ twox_hash::XxHash3_128::oneshot(std::hint::black_box(hot)) as u64
            })
        },
    );
    time(
        "cached: FileHasher xxh128, 32,764-byte updates",
        hot.len() * reps,
        || {
            let mut h = FileHasher::new(ChecksumAlgo::Xxh128);
            for _ in 0..reps {
                std::hint::black_box(hot)
                    .chunks(32_764)
                    .for_each(|c| h.update(c));
            }
            h.finish().as_bytes()[0] as u64
        },
    );
    time("one-shot xxh128 (whole buffer)", n, || {
        twox_hash::XxHash3_128::oneshot(&data) as u64
    });
    time("FileHasher xxh128 32,764-byte updates", n, || {
        let mut h = FileHasher::new(ChecksumAlgo::Xxh128);
        data.chunks(32_764).for_each(|c| h.update(c));
        h.finish().as_bytes()[0] as u64
    });
    time("FileHasher xxh128 64 KiB updates", n, || {
        let mut h = FileHasher::new(ChecksumAlgo::Xxh128);
        data.chunks(65536).for_each(|c| h.update(c));
        h.finish().as_bytes()[0] as u64
    });
    for algo in [ChecksumAlgo::Xxh3, ChecksumAlgo::Xxh64, ChecksumAlgo::Md5] {
        time(
            &format!("FileHasher {} 64 KiB updates", algo.name()),
            n,
            || {
                let mut h = FileHasher::new(algo);
                data.chunks(65536).for_each(|c| h.update(c));
                h.finish().as_bytes()[0] as u64
            },
        );
    }
}
