//! Shared harness for the compressed token targets: the input is a 2-byte
//! block count, then a peer's token stream for several files of one
//! session (the decoder state lasts the session, as zstd's does). Block
//! data for classic zlib's history is made up from the index.

use arsync_proto::compress::TokenCodec;
use arsync_proto::handshake::CompressAlgo;
use arsync_proto::token::{Token, CHUNK_SIZE};
use arsync_proto::wire::Reader;

/// Bytes of a made-up basis block.
const BLOCK: usize = 700;

pub fn run(algo: CompressAlgo, protocol: i32, data: &[u8]) {
    if data.len() < 2 {
        return;
    }
    let count = u16::from_le_bytes([data[0], data[1]]) as u32 % 1024;
    let codec = TokenCodec::new(Some(algo), None, protocol);
    let mut rest = &data[2..];
    let mut out = 0usize;
    for _file in 0..8 {
        let Ok(mut d) = codec.source(count) else { return };
        let mut r = Reader::new(rest);
        let mut ended = false;
        for _ in 0..100_000 {
            let before = r.position();
            match d.decode(&mut r) {
                Ok(Token::Literal(b)) => {
                    assert!(b.len() <= CHUNK_SIZE);
                    // An empty piece only after consuming input.
                    assert!(!b.is_empty() || r.position() > before);
                    out += b.len();
                }
                Ok(Token::Block(i)) => {
                    assert!(i < count);
                    if d.sees_blocks() {
                        let block = vec![i as u8; BLOCK];
                        if d.see_block(&block).is_err() {
                            return;
                        }
                    }
                }
                Ok(Token::End) => {
                    ended = true;
                    break;
                }
                Err(_) => return,
            }
            // Memory stays bounded (pieces of at most 32 KiB) however much
            // a bomb decodes to; stop early to keep runs fast.
            if out > 16 << 20 {
                return;
            }
        }
        if !ended {
            return;
        }
        rest = &rest[r.position()..];
    }
}
