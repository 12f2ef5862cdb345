//! zlib compressed token streams (several files of one session): bounded
//! pieces, indices in range, no panics or runaway output on corrupt data.
#![no_main]

#[path = "common/ztokens.rs"]
mod ztokens;

use arsync_proto::handshake::CompressAlgo;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte's low bit picks protocol 30 (rsync's old history bug
    // for blocks over 64 KiB) or 32.
    let Some((&p, rest)) = data.split_first() else {
        return;
    };
    ztokens::run(CompressAlgo::Zlib, if p & 1 == 0 { 30 } else { 32 }, rest);
});
