//! Client and server handshakes fed arbitrary peer bytes in arbitrary splits.
#![no_main]

use arsync_proto::handshake::{Handshake, HandshakeConfig, Role};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.is_empty() {
        return;
    }
    let split = data[0] as usize;
    let input = &data[1..];
    for role in [Role::Client, Role::Server] {
        let mut cfg = HandshakeConfig::client(32, "LsfxCIvu");
        cfg.role = role;
        if split & 1 == 1 {
            cfg.compressions = Some(arsync_proto::handshake::CompressAlgo::PREFERENCE.to_vec());
            if split & 2 == 2 {
                cfg.compress_choice = Some(arsync_proto::handshake::CompressAlgo::Lz4);
            }
        }
        let Ok(mut h) = Handshake::new(cfg) else { return };
        let _ = h.take_output();
        let mut buf = Vec::new();
        for chunk in input.chunks(split.max(1)) {
            buf.extend_from_slice(chunk);
            match h.feed(&buf) {
                Ok(n) => {
                    assert!(n <= buf.len());
                    buf.drain(..n);
                }
                Err(_) => break,
            }
            let _ = h.take_output();
        }
    }
});
