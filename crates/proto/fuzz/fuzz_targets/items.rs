//! ndx + item attributes, filter lists, stats and primitive decoders.
#![no_main]

use arsync_proto::daemon::{decode_line, DaemonReply, Greeting};
use arsync_proto::filter::decode_filter_list;
use arsync_proto::item::decode_item;
use arsync_proto::ndx::NdxCodec;
use arsync_proto::stats::Stats;
use arsync_proto::wire::Reader;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut c = NdxCodec::new();
    let mut r = Reader::new(data);
    for _ in 0..1000 {
        if decode_item(&mut c, &mut r).is_err() {
            break;
        }
    }
    let _ = decode_filter_list(&mut Reader::new(data));
    let _ = Stats::decode_as_receiver(&mut Reader::new(data));
    let mut r = Reader::new(data);
    let _ = r.varint();
    let _ = r.varlong(3);
    let _ = r.varlong(4);
    let _ = r.longint();
    let _ = r.vstring(1024);
    // Daemon text lines.
    let mut r = Reader::new(data);
    while let Ok(line) = decode_line(&mut r) {
        let _ = Greeting::parse(&line);
        let _ = DaemonReply::parse(&line);
    }
});
