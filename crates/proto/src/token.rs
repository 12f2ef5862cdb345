//! The uncompressed token stream the sender writes for each file: `int n > 0`
//! then n literal bytes; `int -(i+1)` for a copy of basis block `i`; `int 0`
//! for the end. The whole-file checksum follows the end token.

use crate::error::{Error, Result};
use crate::wire::{put_i32, Reader};

/// Largest literal run the encoder emits in one token (rsync's CHUNK_SIZE).
pub const CHUNK_SIZE: usize = 32 * 1024;

/// One decoded token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Token {
    /// Literal bytes (at most [`CHUNK_SIZE`] per token from the decoder).
    Literal(Vec<u8>),
    /// Copy basis block `i`.
    Block(u32),
    /// End of the file's data.
    End,
}

/// Appends literal data, split into runs of at most [`CHUNK_SIZE`].
pub fn encode_literal(data: &[u8], out: &mut Vec<u8>) {
    for chunk in data.chunks(CHUNK_SIZE) {
        put_i32(out, chunk.len() as i32);
        out.extend_from_slice(chunk);
    }
}

/// Appends a block reference.
pub fn encode_block(index: u32, out: &mut Vec<u8>) -> Result<()> {
    if index > i32::MAX as u32 - 1 {
        return Err(Error::unencodable("block token", format!("index {index}")));
    }
    put_i32(out, -(index as i32 + 1));
    Ok(())
}

/// Appends the end token.
pub fn encode_end(out: &mut Vec<u8>) {
    put_i32(out, 0);
}

/// Incremental token decoder. Long literal runs are delivered in pieces of at
/// most [`CHUNK_SIZE`], so memory stays bounded whatever length the peer claims.
#[derive(Debug, Clone)]
pub struct TokenDecoder {
    /// Literal bytes announced but not yet delivered.
    residue: usize,
    /// Number of blocks in the basis (block indices must be below it).
    block_count: u32,
}

impl TokenDecoder {
    /// A decoder for a file whose sum head announced `block_count` blocks.
    pub fn new(block_count: u32) -> Self {
        TokenDecoder {
            residue: 0,
            block_count,
        }
    }

    /// Decodes the next token. A literal piece may be shorter than announced
    /// if only part of it is buffered (it is never empty).
    pub fn decode(&mut self, r: &mut Reader<'_>) -> Result<Token> {
        if self.residue == 0 {
            let mut rr = r.clone();
            let v = rr.i32()?;
            if v == 0 {
                *r = rr;
                return Ok(Token::End);
            }
            if v < 0 {
                let i = (-(v as i64) - 1) as u64;
                if i >= self.block_count as u64 {
                    return Err(Error::malformed(
                        "token",
                        format!(
                            "block index {i} but the basis has {} blocks",
                            self.block_count
                        ),
                    ));
                }
                *r = rr;
                return Ok(Token::Block(i as u32));
            }
            if rr.remaining() == 0 {
                return Err(Error::Incomplete);
            }
            *r = rr;
            self.residue = v as usize;
        }
        let n = self.residue.min(CHUNK_SIZE).min(r.remaining());
        if n == 0 {
            return Err(Error::Incomplete);
        }
        let data = r.bytes(n)?.to_vec();
        self.residue -= n;
        Ok(Token::Literal(data))
    }

    /// True when no literal run is half-delivered.
    pub fn at_boundary(&self) -> bool {
        self.residue == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_bytes() {
        let mut o = Vec::new();
        encode_literal(b"hi", &mut o);
        encode_block(0, &mut o).unwrap();
        encode_block(2, &mut o).unwrap();
        encode_end(&mut o);
        assert_eq!(
            o,
            [2, 0, 0, 0, b'h', b'i', 0xFF, 0xFF, 0xFF, 0xFF, 0xFD, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0]
        );
        let mut d = TokenDecoder::new(3);
        let mut r = Reader::new(&o);
        assert_eq!(d.decode(&mut r).unwrap(), Token::Literal(b"hi".to_vec()));
        assert_eq!(d.decode(&mut r).unwrap(), Token::Block(0));
        assert_eq!(d.decode(&mut r).unwrap(), Token::Block(2));
        assert_eq!(d.decode(&mut r).unwrap(), Token::End);
    }

    #[test]
    fn rejects_out_of_range_blocks() {
        let mut o = Vec::new();
        encode_block(3, &mut o).unwrap();
        assert!(matches!(
            TokenDecoder::new(3).decode(&mut Reader::new(&o)),
            Err(Error::Malformed { .. })
        ));
        let o = i32::MIN.to_le_bytes();
        assert!(matches!(
            TokenDecoder::new(3).decode(&mut Reader::new(&o)),
            Err(Error::Malformed { .. })
        ));
    }

    #[test]
    fn huge_literal_claims_are_streamed() {
        let mut o = Vec::new();
        put_i32(&mut o, i32::MAX);
        o.extend_from_slice(&[7u8; 100]);
        let mut d = TokenDecoder::new(0);
        let mut r = Reader::new(&o);
        assert_eq!(d.decode(&mut r).unwrap(), Token::Literal(vec![7; 100]));
        assert_eq!(d.decode(&mut r), Err(Error::Incomplete));
        assert!(!d.at_boundary());
    }

    proptest! {
        #[test]
        fn round_trip(lit in proptest::collection::vec(any::<u8>(), 1..100_000), blocks in proptest::collection::vec(0u32..1000, 0..10)) {
            let mut o = Vec::new();
            encode_literal(&lit, &mut o);
            for &b in &blocks {
                encode_block(b, &mut o).unwrap();
            }
            encode_end(&mut o);
            let mut d = TokenDecoder::new(1000);
            let mut r = Reader::new(&o);
            let mut got_lit = Vec::new();
            let mut got_blocks = Vec::new();
            loop {
                match d.decode(&mut r).unwrap() {
                    Token::Literal(b) => { prop_assert!(b.len() <= CHUNK_SIZE); got_lit.extend(b) }
                    Token::Block(i) => got_blocks.push(i),
                    Token::End => break,
                }
            }
            prop_assert_eq!(got_lit, lit);
            prop_assert_eq!(got_blocks, blocks);
        }
    }
}
