//! Sum head and block sums: bounds hold and decoding is incremental.
#![no_main]

use arsync_proto::sums::{SumDecoder, SumHead, MAX_BLOCK_SIZE};
use arsync_proto::wire::Reader;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut r = Reader::new(data);
    if let Ok(h) = SumHead::decode(&mut r, 16) {
        assert!(h.blength >= 0 && h.blength as u32 <= MAX_BLOCK_SIZE);
        assert!(h.remainder <= h.blength && h.s2length <= 16);
        let mut d = SumDecoder::new(h);
        let rest = r.rest();
        let mut buf = Vec::new();
        for chunk in rest.chunks(7) {
            buf.extend_from_slice(chunk);
            let mut rr = Reader::new(&buf);
            match d.feed(&mut rr) {
                Ok(Some(set)) => {
                    assert_eq!(set.blocks.len(), h.count as usize);
                    break;
                }
                Ok(None) => {
                    let n = rr.position();
                    buf.drain(..n);
                }
                Err(_) => break,
            }
        }
    }
});
