//! Throughput of the delta path on this CPU, for the shape of the `delta`
//! case of `scripts/bench-remote`: a 32 MiB basis, the new file with 1% of
//! it changed in 10 random pieces. Times the generator's block sums, the
//! sender's matching (input in 256 KiB reads) and the decoding of the sums.
//!
//! Run: `cargo run --release -p arsync-proto --example delta_bench`

use std::time::Instant;

use arsync_proto::checksum::{block_sum, ChecksumAlgo, FileHasher};
use arsync_proto::matcher::DeltaEncoder;
use arsync_proto::sums::{SumDecoder, SumHead, SumSet};
use arsync_proto::wire::Reader;

fn time<T>(what: &str, bytes: usize, mut f: impl FnMut() -> T) -> T {
    let mut best = f64::MAX;
    let mut out = None;
    for _ in 0..5 {
        let t = Instant::now();
        out = Some(f());
        best = best.min(t.elapsed().as_secs_f64());
    }
    println!(
        "{what:<40} {:>8.2} ms  {:>6.2} GB/s",
        best * 1e3,
        bytes as f64 / best / 1e9
    );
    out.expect("ran at least once")
}

/// xorshift: repeatable pseudo-random bytes.
fn fill(state: &mut u64, buf: &mut [u8]) {
    for b in buf {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *b = *state as u8;
    }
}

fn main() {
    let size = 32usize << 20;
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    let mut basis = vec![0u8; size];
    fill(&mut rng, &mut basis);
    let mut new = basis.clone();
    for _ in 0..10 {
        let at = (rng % (size - size / 1000) as u64) as usize;
        fill(&mut rng, &mut new[at..at + size / 1000]);
    }
    let algo = ChecksumAlgo::Xxh128;
    let head = SumHead::for_file(size as u64, false, 16).expect("head");
    println!(
        "32 MiB, block length {}, {} blocks, s2length {}",
        head.blength, head.count, head.s2length
    );
    let sums = time("generator: SumSet::compute", size, || {
        SumSet::compute(&basis, head, algo, 7, true)
    });
    let mut wire = Vec::new();
    sums.encode(&mut wire);
    time("sender: decode the sums", wire.len(), || {
        let mut r = Reader::new(&wire);
        let head = SumHead::decode(&mut r, 16).expect("head");
        SumDecoder::new(head)
            .feed(&mut r)
            .expect("sums")
            .expect("all sums")
    });
    time("whole-file xxh128 (256 KiB updates)", size, || {
        let mut h = FileHasher::new(algo);
        new.chunks(256 << 10).for_each(|c| h.update(c));
        h.finish().as_bytes()[0]
    });
    time("strong sums of every block", size, || {
        new.chunks(head.blength as usize)
            .map(|b| block_sum(algo, b, 7, true).as_bytes()[0] as u64)
            .fold(0, u64::wrapping_add)
    });
    let out = time("sender: match (256 KiB reads)", size, || {
        let mut enc = DeltaEncoder::new(sums.clone(), algo, 7, true);
        let mut out = Vec::new();
        for chunk in new.chunks(256 << 10) {
            enc.input(chunk.len()).copy_from_slice(chunk);
            enc.commit_input(chunk.len(), &mut out).expect("tokens");
        }
        let stats = enc.finish(&mut out).expect("finish");
        (out.len(), stats)
    });
    println!("tokens: {} bytes, {:?}", out.0, out.1);
}
