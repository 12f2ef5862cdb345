//! Throughput of the CPU work on dynfs's write path, without any I/O: encoding 1 MiB extents
//! (`rs:4+2` Reed-Solomon, `replicate:3` copies) and BLAKE3 over every fragment, on one thread.
//!
//! usage: cargo run --release -p dynfs-core --example codec_bench [MiB]   (default 512)

use dynfs_core::{codec, Policy};
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mib: usize = match std::env::args().nth(1) {
        Some(a) => a.parse()?,
        None => 512,
    };
    let extent = 1usize << 20;
    // Deterministic, incompressible-looking data (xorshift).
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let data: Vec<u8> = (0..extent)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let total = (mib * extent) as f64;
    let gbs = |secs: f64| total / secs / 1e9;
    for policy in ["rs:4+2", "replicate:3"] {
        let policy: Policy = policy.parse()?;
        // As the pool encodes: replicas and whole data shards borrow the extent buffer.
        let t = Instant::now();
        let mut frag_bytes = 0usize;
        for _ in 0..mib {
            let f = codec::encode_borrowed(policy, &data)?;
            frag_bytes += f.iter().map(|f| f.len()).sum::<usize>();
        }
        let enc = t.elapsed().as_secs_f64();
        let frags = codec::encode(policy, &data)?;
        let t = Instant::now();
        let mut sink = 0u8;
        for _ in 0..mib {
            for f in &frags {
                sink ^= codec::checksum(f)[0];
            }
        }
        let hash = t.elapsed().as_secs_f64();
        let stored: usize = frags.iter().map(Vec::len).sum();
        // The pool hashes identical replicas once: the write path's cost per extent.
        let unique: usize = match policy {
            Policy::Replicate { .. } => frags.first().map_or(0, Vec::len),
            Policy::ReedSolomon { .. } => stored,
        };
        let hash_once = hash * unique as f64 / stored as f64;
        println!(
            "{policy}: encode {:.2} GB/s of extent data; BLAKE3 of all fragments ({:.1}x the data) \
             {:.2} GB/s of extent data ({:.2} GB/s of hashed bytes); encode+hash {:.2} GB/s; \
             as the pool does it (identical replicas hashed once) {:.2} GB/s (checksum byte {sink}, \
             {frag_bytes} fragment bytes encoded)",
            gbs(enc),
            stored as f64 / extent as f64,
            gbs(hash),
            (mib * stored) as f64 / hash / 1e9,
            gbs(enc + hash),
            gbs(enc + hash_once),
        );
    }
    Ok(())
}
