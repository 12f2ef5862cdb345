//! zlibx compressed token streams: bounded pieces, indices in range, no panics
//! on corrupt deflate data.
#![no_main]

use arsync_proto::compress::ZlibxDecoder;
use arsync_proto::token::{Token, CHUNK_SIZE};
use arsync_proto::wire::Reader;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let count = u16::from_le_bytes([data[0], data[1]]) as u32;
    let mut d = ZlibxDecoder::new(count);
    let mut r = Reader::new(&data[2..]);
    for _ in 0..100_000 {
        match d.decode(&mut r) {
            Ok(Token::Literal(b)) => assert!(!b.is_empty() && b.len() <= CHUNK_SIZE),
            Ok(Token::Block(i)) => assert!(i < count),
            Ok(Token::End) | Err(_) => break,
        }
    }
});
