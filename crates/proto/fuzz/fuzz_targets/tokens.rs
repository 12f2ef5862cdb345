//! Token streams: block indices stay in range, literal pieces stay bounded.
#![no_main]

use arsync_proto::token::{Token, TokenDecoder, CHUNK_SIZE};
use arsync_proto::wire::Reader;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let count = u16::from_le_bytes([data[0], data[1]]) as u32;
    let mut d = TokenDecoder::new(count);
    let mut r = Reader::new(&data[2..]);
    for _ in 0..10_000 {
        match d.decode(&mut r) {
            Ok(Token::Literal(b)) => assert!(!b.is_empty() && b.len() <= CHUNK_SIZE),
            Ok(Token::Block(i)) => assert!(i < count),
            Ok(Token::End) | Err(_) => break,
        }
    }
});
