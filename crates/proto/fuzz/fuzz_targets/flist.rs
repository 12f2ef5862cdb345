//! File-list decoding (entries, end marker, id lists; with incremental
//! recursion several lists through one decoder) with several option sets.
#![no_main]

use arsync_proto::flist::{decode_id_list, validate_name, FlistDecoder, FlistItem, FlistOptions, IdListDecoder};
use arsync_proto::wire::Reader;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.is_empty() {
        return;
    }
    let sel = data[0];
    let mut o = FlistOptions::archive(30 + (sel % 3) as i32);
    o.varint_flags = sel & 4 == 0;
    o.preserve_hard_links = sel & 8 != 0;
    o.checksum_len = (sel & 16 != 0).then_some(16);
    o.atimes = sel & 32 != 0;
    o.crtimes = sel & 64 != 0;
    o.inc_recurse = sel & 128 != 0;
    let mut dec = FlistDecoder::new(o.clone(), 0);
    let mut r = Reader::new(&data[1..]);
    // Incremental recursion: further lists follow, read by the same decoder.
    let (mut lists, mut next) = (0, 1);
    loop {
        match dec.decode(&mut r) {
            Ok(FlistItem::Entry(e)) => {
                // Every accepted name is clean.
                assert!(validate_name(&e.name).is_ok());
                assert!(e.size >= 0);
            }
            Ok(FlistItem::End { .. }) if o.inc_recurse && lists < 8 => {
                lists += 1;
                next += dec.count() + 1;
                dec.start_list(next);
            }
            Ok(FlistItem::End { .. }) => {
                let whole = decode_id_list(&mut r.clone(), o.id0_names);
                let mut d = IdListDecoder::new(o.id0_names);
                let part = d.feed(&mut r);
                // Entry-by-entry decoding agrees with whole-list decoding.
                if let (Ok(w), Ok(Some(p))) = (&whole, &part) {
                    assert_eq!(w, p);
                }
                break;
            }
            Err(_) => break,
        }
    }
});
