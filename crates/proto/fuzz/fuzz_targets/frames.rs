//! The demultiplexer must never panic, and data must survive any split.
#![no_main]

use arsync_proto::mux::{Demuxer, Event};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Whole input at once.
    let mut whole = Demuxer::new();
    whole.push(data);
    let mut a = Vec::new();
    let mut err_a = false;
    loop {
        match whole.next_event() {
            Ok(Some(Event::Data(d))) => a.extend(d),
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(_) => {
                err_a = true;
                break;
            }
        }
    }
    // Byte by byte must deliver the same data prefix.
    let mut split = Demuxer::new();
    let mut b = Vec::new();
    'outer: for byte in data {
        split.push(std::slice::from_ref(byte));
        loop {
            match split.next_event() {
                Ok(Some(Event::Data(d))) => b.extend(d),
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => break 'outer,
            }
        }
    }
    if !err_a {
        assert_eq!(a, b);
    }
});
