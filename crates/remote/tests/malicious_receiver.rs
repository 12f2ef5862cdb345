//! A scripted (malicious or faulty) receiver against our sending client
//! with incremental file lists: requests for indices outside the lists
//! sent so far, for a directory's own index, or for a list the receiver
//! said it was done with, end in a clear error.

use std::io::{Cursor, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};

use arsync_proto::handshake::CompatFlags;
use arsync_proto::item::ItemAttrs;
use arsync_proto::mux::encode_data;
use arsync_proto::ndx::{NdxCodec, NDX_DONE};
use arsync_proto::sums::SumHead;
use arsync_proto::wire::{put_i32, put_varint, put_vstring};
use arsync_remote::error::RemoteError;
use arsync_remote::push::{run_push, PushOptions};

#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Vec<u8>>>);

impl Write for Shared {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A receiving server's side of a protocol-32 session that grants
/// incremental recursion, then `requests` (multiplexed data).
fn script(requests: &[u8]) -> Vec<u8> {
    let mut raw = Vec::new();
    put_i32(&mut raw, 32);
    put_varint(
        &mut raw,
        CompatFlags::server_reply("iLsfxCIvu", true).0 as i32,
    );
    put_vstring(&mut raw, b"xxh128 xxh3 xxh64 md5 md4 none").unwrap();
    put_i32(&mut raw, 12345);
    encode_data(requests, 4096, &mut raw);
    raw
}

/// Pushes `src` to the scripted receiver.
fn push(src: &Path, requests: &[u8]) -> Result<(), RemoteError> {
    let mut opts = PushOptions::new(src, "unused");
    opts.echo_messages = false;
    run_push(&opts, Cursor::new(script(requests)), Shared::default()).map(|_| ())
}

/// A transfer request for `ndx` (with an empty sum head).
fn transfer(ndx: NdxCodec, at: i32, out: &mut Vec<u8>) -> NdxCodec {
    let mut c = ndx;
    ItemAttrs::transfer(at).encode(&mut c, out).unwrap();
    SumHead::default().encode(out);
    c
}

/// Three directories of 600 files: the first list (`.`, `d0`..`d2`,
/// indices 1..4) and the lists of `d0` (from 6) and `d1` (from 607) are
/// sent before the first request, `d2`'s only once the receiver is on.
fn tree() -> tempfile::TempDir {
    let t = tempfile::tempdir_in("/dev/shm").unwrap();
    for d in 0..3 {
        let dir = t.path().join(format!("d{d}"));
        std::fs::create_dir(&dir).unwrap();
        for f in 0..600 {
            std::fs::write(dir.join(format!("f{f:03}")), b"x").unwrap();
        }
    }
    t
}

fn refused(res: Result<(), RemoteError>, what: &str, text: &str) {
    match res {
        Err(RemoteError::Refused(m)) => assert!(m.contains(text), "{what}: {m}"),
        other => panic!("{what}: {other:?}"),
    }
}

#[test]
fn requests_outside_the_lists_sent_are_refused() {
    let t = tree();
    let src = t.path();
    // Beyond the lists sent so far, and the gap before a list (index 5
    // is `d0`'s own index: a directory, not a file).
    for (ndx, text) in [
        (1_300, "out of range"),
        (1_000_000, "out of range"),
        (5, "non-file"),
        (1, "non-file"),
    ] {
        let mut b = Vec::new();
        transfer(NdxCodec::new(), ndx, &mut b);
        refused(push(src, &b), &format!("ndx {ndx}"), text);
    }
    // A file of the first list once the receiver said it is done with it.
    let mut b = Vec::new();
    let mut c = NdxCodec::new();
    c.encode(NDX_DONE, &mut b);
    transfer(c, 6, &mut b);
    assert!(push(src, &b).is_err_and(|e| matches!(e, RemoteError::Eof(_))));
    let mut b = Vec::new();
    let mut c = NdxCodec::new();
    c.encode(NDX_DONE, &mut b);
    c.encode(NDX_DONE, &mut b);
    transfer(c, 6, &mut b);
    refused(push(src, &b), "a list done with", "out of range");
}
