//! Every negotiable checksum against the real rsync: the server is told to
//! offer only one (`RSYNC_CHECKSUM_LIST`), so block sums (seeded) and
//! whole-file sums are checked for each in a delta transfer, both directions.

mod common;

use arsync_remote::pull::{pull, PullOptions};
use arsync_remote::push::{push, PushOptions};
use common::*;

fn env_shell(csum: &str) -> Vec<String> {
    vec!["env".into(), format!("RSYNC_CHECKSUM_LIST={csum}")]
}

#[test]
fn each_checksum_in_both_directions() {
    // ("md5", without 'C'): the old seed order (data then seed).
    for (csum, caps) in [
        ("md5", "LsfxCIvu"),
        // Negotiated md5 without 'C': OpenSSL builds of rsync hash the seed first anyway.
        ("md5", "LsfxIvu"),
        // Like rsync 3.0: no 'v' (md5 implied, byte-sized file-list flags) and
        // no 'C' (data, then seed).
        ("md5", "LsfxI"),
        ("md4", "LsfxCIvu"),
        ("xxh64", "LsfxCIvu"),
        ("xxh3", "LsfxCIvu"),
        ("xxh128", "LsfxCIvu"),
    ] {
        for push_mode in [false, true] {
            let t = tempfile::tempdir_in("/dev/shm").unwrap();
            let (src, dst) = (t.path().join("src"), t.path().join("dst"));
            let big = make_tree(&src, 1 << 20);
            let run = || {
                if push_mode {
                    let mut o = PushOptions::new(&src, format!("{}/", dst.display()));
                    o.command.remote_shell = env_shell(csum);
                    o.command.caps = caps.into();
                    push(&o).unwrap_or_else(|e| panic!("{csum} push: {e}"))
                } else {
                    let mut o = PullOptions::new(format!("{}/", src.display()), &dst);
                    o.command.remote_shell = env_shell(csum);
                    o.command.caps = caps.into();
                    pull(&o).unwrap_or_else(|e| panic!("{csum} pull: {e}"))
                }
            };
            let s = run();
            assert_eq!(s.checksum, csum);
            touch_up_one_percent(&big);
            let s = run();
            assert_eq!(s.files_transferred, 1);
            assert!(s.matched_bytes > 900_000, "{csum}: {s:?}");
            assert_eq!(
                s.files_redone, 0,
                "{csum}: block sums must match on the first pass"
            );
            assert_same_tree_ns(&src, &dst, true, !push_mode);
        }
    }
}
