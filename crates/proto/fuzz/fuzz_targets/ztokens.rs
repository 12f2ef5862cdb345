//! zlibx compressed token streams (several files of one session): bounded
//! pieces, indices in range, no panics or runaway output on corrupt data.
#![no_main]

#[path = "common/ztokens.rs"]
mod ztokens;

use arsync_proto::handshake::CompressAlgo;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ztokens::run(CompressAlgo::Zlibx, 32, data);
});
