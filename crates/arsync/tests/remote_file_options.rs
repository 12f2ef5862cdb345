//! Per-file options over the wire (issue 4, "same flags and exit codes as
//! local mode"): `--modify-window`, `-B`, `--checksum-choice`, `--fsync`,
//! `--preallocate` and `--open-noatime`. For each, arsync as the client
//! (against `rsync --server`) and as the server (under a real rsync
//! client), pushing and pulling, must leave the same trees and exit with
//! the same code as rsync talking to rsync; each case also checks the
//! option's effect on the reference run (a skipped file, the literal bytes
//! of a delta, a kept atime), so it cannot pass by everyone ignoring it.

use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use arsync_testutil::remote::{
    install_fake_ssh, pairings, run_over_shell, start_daemon, write_module_config, Daemon,
    Direction,
};
use arsync_testutil::{compare_trees, scratch_dir, CompareOpts};

fn arsync_bin() -> OsString {
    PathBuf::from(env!("CARGO_BIN_EXE_arsync")).into_os_string()
}

const T0: i64 = 1_600_000_000;

/// Writes `data` to `root/rel` (parents created) with mtime `secs`.
fn put(root: &Path, rel: &str, data: &[u8], secs: i64) {
    let p = root.join(rel);
    if let Some(d) = p.parent() {
        fs::create_dir_all(d).unwrap();
    }
    fs::write(&p, data).unwrap();
    set_times(&p, secs, secs);
}

/// Sets a file's atime and mtime (seconds).
fn set_times(p: &Path, atime: i64, mtime: i64) {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(atime as u64);
    let mt = std::time::UNIX_EPOCH + std::time::Duration::from_secs(mtime as u64);
    let f = fs::File::options().write(true).open(p).unwrap();
    f.set_times(fs::FileTimes::new().set_accessed(at).set_modified(mt))
        .unwrap();
}

/// Gives directories a fixed old mtime, so trees built at different
/// moments compare equal.
fn settle(root: &Path) {
    let st = Command::new("find")
        .arg(root)
        .args([
            "-type",
            "d",
            "-exec",
            "touch",
            "-d",
            "@1500000000",
            "{}",
            "+",
        ])
        .status()
        .unwrap();
    assert!(st.success());
}

fn read(p: &Path) -> Vec<u8> {
    fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// A 200 000-byte file whose destination copy differs in 100 bytes at
/// offset 100 000: the delta's literal data is the block(s) around them.
fn big_pair() -> (Vec<u8>, Vec<u8>) {
    let old: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let mut new = old.clone();
    new[100_000..100_100].fill(0xAA);
    (new, old)
}

/// Files for the quick check and a delta: mtimes one second apart and ten
/// seconds apart (same size, other content), and the big file.
fn tree(src: &Path, dst: &Path) {
    put(src, "near.txt", b"source near", T0 + 1);
    put(dst, "near.txt", b"target near", T0);
    put(src, "far.txt", b"source far!", T0 + 10);
    put(dst, "far.txt", b"target far!", T0);
    put(src, "new/inner.txt", b"only in the source", T0);
    let (new, old) = big_pair();
    put(src, "big.bin", &new, T0 + 100);
    put(dst, "big.bin", &old, T0);
    settle(src);
    settle(dst);
}

/// [`tree`] and a file whose mtimes differ in nanoseconds only.
fn nsec_tree(src: &Path, dst: &Path) {
    tree(src, dst);
    put(src, "nsec.txt", b"source nsec", T0);
    put(dst, "nsec.txt", b"target nsec", T0);
    let t = std::time::UNIX_EPOCH + std::time::Duration::new(T0 as u64, 500_000_000);
    let f = fs::File::options()
        .write(true)
        .open(src.join("nsec.txt"))
        .unwrap();
    f.set_modified(t).unwrap();
    settle(src);
    settle(dst);
}

/// [`tree`] with every source file's atime older than its mtime (so a
/// read on a `relatime` mount would update it).
fn old_atime_tree(src: &Path, dst: &Path) {
    tree(src, dst);
    for f in ["near.txt", "far.txt", "new/inner.txt", "big.bin"] {
        let p = src.join(f);
        let m = fs::metadata(&p).unwrap().mtime();
        set_times(&p, m - 1000, m);
    }
}

/// The byte count of a `--stats` line such as `Literal data: 2,048 bytes`.
fn stat(out: &Output, label: &str) -> Option<u64> {
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find(|l| l.starts_with(label))?;
    let digits: String = line[label.len()..]
        .split_whitespace()
        .next()?
        .chars()
        .filter(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

/// One option scenario.
struct Case<'a> {
    name: &'static str,
    flags: &'a [&'a str],
    setup: fn(&Path, &Path),
    /// Checks a result (the reference's, and every pairing's with the
    /// reference's exit code): the option's effect.
    expect: fn(&Path, &Path, &Output),
    /// The reference exit code.
    code: i32,
    /// Words the reference's stderr contains (an error message).
    stderr: Option<&'static str>,
}

struct Run {
    out: Output,
    src: PathBuf,
    dst: PathBuf,
}

fn describe(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `case` for every pairing (rsync->rsync, the reference, first) and
/// direction; the others must match the reference.
fn check(case: &Case<'_>) {
    let tmp = scratch_dir().unwrap();
    let rsh = install_fake_ssh(tmp.path()).unwrap();
    let cmp = CompareOpts::default();
    for dir in [Direction::Push, Direction::Pull] {
        let mut reference: Option<Run> = None;
        for (label, client, server) in pairings(&arsync_bin()) {
            let work = tmp.path().join(format!("{dir:?}-{label}"));
            let (src, dst) = (work.join("src"), work.join("dst"));
            fs::create_dir_all(&src).unwrap();
            fs::create_dir_all(&dst).unwrap();
            (case.setup)(&src, &dst);
            let (from, to) = dir.endpoints(&src, &dst);
            let out = run_over_shell(&client, &server, &rsh, case.flags, &from, &to).unwrap();
            let what = format!("{} {dir:?} {label}", case.name);
            let Some(want) = &reference else {
                assert_eq!(
                    out.status.code(),
                    Some(case.code),
                    "{what}: {}",
                    describe(&out)
                );
                if let Some(words) = case.stderr {
                    let err = String::from_utf8_lossy(&out.stderr);
                    assert!(err.contains(words), "{what}: {}", describe(&out));
                }
                (case.expect)(&src, &dst, &out);
                reference = Some(Run { out, src, dst });
                continue;
            };
            assert_eq!(
                out.status.code(),
                want.out.status.code(),
                "{what}: {}",
                describe(&out)
            );
            if let Some(words) = case.stderr {
                let err = String::from_utf8_lossy(&out.stderr);
                assert!(err.contains(words), "{what}: {}", describe(&out));
            }
            (case.expect)(&src, &dst, &out);
            for (a, b, side) in [
                (&want.dst, &dst, "destination"),
                (&want.src, &src, "source"),
            ] {
                let diffs = compare_trees(a, b, &cmp);
                assert!(
                    diffs.is_empty(),
                    "{what}: {side} differs from rsync's: {diffs:#?}\n{}",
                    describe(&out)
                );
            }
        }
    }
}

/// Everything arrived (the plain result of [`tree`]).
fn all_sent(_: &Path, d: &Path, _: &Output) {
    assert_eq!(read(&d.join("near.txt")), b"source near");
    assert_eq!(read(&d.join("far.txt")), b"source far!");
    assert_eq!(read(&d.join("new/inner.txt")), b"only in the source");
    assert_eq!(read(&d.join("big.bin")), big_pair().0);
}

#[test]
fn modify_window_skips_files_within_it() {
    check(&Case {
        name: "--modify-window=2",
        flags: &["-a", "--modify-window=2"],
        setup: tree,
        expect: |_, d, _| {
            // One second apart: the same for the quick check.
            assert_eq!(read(&d.join("near.txt")), b"target near");
            assert_eq!(read(&d.join("far.txt")), b"source far!");
            assert_eq!(read(&d.join("big.bin")), big_pair().0);
        },
        code: 0,
        stderr: None,
    });
}

#[test]
fn short_modify_window_and_a_negative_one() {
    // -@1: still within; -@-1 compares exactly (both files are sent).
    check(&Case {
        name: "-@1",
        flags: &["-a", "-@1"],
        setup: tree,
        expect: |_, d, _| {
            assert_eq!(read(&d.join("near.txt")), b"target near");
            assert_eq!(read(&d.join("far.txt")), b"source far!");
        },
        code: 0,
        stderr: None,
    });
    check(&Case {
        name: "-@-1",
        flags: &["-a", "-@-1"],
        setup: nsec_tree,
        expect: |s, d, out| {
            all_sent(s, d, out);
            assert_eq!(read(&d.join("nsec.txt")), b"source nsec");
        },
        code: 0,
        stderr: None,
    });
    // Without it, the same second is the same time.
    check(&Case {
        name: "no window",
        flags: &["-a"],
        setup: nsec_tree,
        expect: |_, d, _| assert_eq!(read(&d.join("nsec.txt")), b"target nsec"),
        code: 0,
        stderr: None,
    });
}

#[test]
fn block_size_sets_the_delta_blocks() {
    check(&Case {
        name: "-B 2048",
        flags: &["-a", "--stats", "-B", "2048"],
        setup: tree,
        expect: |s, d, out| {
            all_sent(s, d, out);
            // The 100 changed bytes lie in one 2048-byte block (with the
            // default 700-byte blocks, 700 bytes would be literal); the
            // small files are sent whole.
            let small = (11 + 11 + 18) as u64;
            assert_eq!(
                stat(out, "Literal data:"),
                Some(2048 + small),
                "{}",
                describe(out)
            );
        },
        code: 0,
        stderr: None,
    });
    check(&Case {
        name: "--block-size=1k",
        flags: &["-a", "--stats", "--block-size=1k"],
        setup: tree,
        expect: |s, d, out| {
            all_sent(s, d, out);
            // 100 000..100 100 lies within one block (99 328..100 352).
            assert_eq!(stat(out, "Literal data:"), Some(1024 + 40));
        },
        code: 0,
        stderr: None,
    });
}

#[test]
fn block_size_out_of_bounds_is_a_usage_error() {
    for (b, words) in [
        ("200000", "--block-size=200000 is too large (max: 128.00K)"),
        ("abc", "--block-size=abc is invalid"),
    ] {
        check(&Case {
            name: "-B bad",
            flags: &["-a", "-B", b],
            setup: tree,
            expect: |_, d, _| assert_eq!(read(&d.join("near.txt")), b"target near"),
            code: 1,
            stderr: Some(words),
        });
    }
}

#[test]
fn checksum_choice_md5_and_a_pair_with_checksum() {
    check(&Case {
        name: "--cc=md5",
        flags: &["-a", "--cc=md5"],
        setup: tree,
        expect: all_sent,
        code: 0,
        stderr: None,
    });
    // -c with the file checksum xxh3 and the transfer checksum md5: the
    // near/far files differ in content, so both are sent; a file with the
    // same content is not.
    check(&Case {
        name: "--checksum-choice=md5,xxh3 -c",
        flags: &["-a", "-c", "--stats", "--checksum-choice=md5,xxh3"],
        setup: |s, d| {
            tree(s, d);
            put(s, "same.txt", b"identical", T0 + 5);
            put(d, "same.txt", b"identical", T0);
            settle(s);
            settle(d);
        },
        expect: |s, d, out| {
            all_sent(s, d, out);
            assert_eq!(stat(out, "Number of regular files transferred:"), Some(4));
        },
        code: 0,
        stderr: None,
    });
}

#[test]
fn checksum_choice_none_sends_whole_files() {
    check(&Case {
        name: "--cc=none",
        flags: &["-a", "--stats", "--cc=none"],
        setup: tree,
        expect: |s, d, out| {
            all_sent(s, d, out);
            // No block sums: the big file is all literal data.
            assert_eq!(stat(out, "Literal data:"), Some(200_000 + 40));
        },
        code: 0,
        stderr: None,
    });
}

#[test]
fn unknown_checksum_name_is_refused() {
    check(&Case {
        name: "--cc=bogus",
        flags: &["-a", "--cc=bogus"],
        setup: tree,
        expect: |_, d, _| assert_eq!(read(&d.join("far.txt")), b"target far!"),
        code: 4,
        stderr: Some("unknown checksum name: bogus"),
    });
    check(&Case {
        name: "--checksum-choice=md5,nope",
        flags: &["-a", "--checksum-choice=md5,nope"],
        setup: tree,
        expect: |_, d, _| assert_eq!(read(&d.join("far.txt")), b"target far!"),
        code: 4,
        stderr: Some("unknown checksum name: nope"),
    });
}

#[test]
fn fsync_and_preallocate_write_the_same_tree() {
    for flag in ["--fsync", "--preallocate"] {
        check(&Case {
            name: flag,
            flags: &["-a", flag],
            setup: tree,
            expect: all_sent,
            code: 0,
            stderr: None,
        });
    }
}

#[test]
fn open_noatime_keeps_source_atimes() {
    check(&Case {
        name: "--open-noatime",
        flags: &["-a", "--open-noatime"],
        setup: old_atime_tree,
        expect: |s, d, out| {
            all_sent(s, d, out);
            for f in ["near.txt", "far.txt", "new/inner.txt", "big.bin"] {
                let m = fs::metadata(s.join(f)).unwrap();
                assert_eq!(m.atime(), m.mtime() - 1000, "{f}: atime changed");
            }
        },
        code: 0,
        stderr: None,
    });
}

/// Without `--open-noatime` the sender's reads do update the old atimes
/// on this mount (so the test above can fail), in both directions.
#[test]
fn reads_update_old_atimes_without_the_option() {
    let tmp = scratch_dir().unwrap();
    let rsh = install_fake_ssh(tmp.path()).unwrap();
    let arsync = arsync_bin();
    for dir in [Direction::Push, Direction::Pull] {
        let work = tmp.path().join(format!("{dir:?}"));
        let (src, dst) = (work.join("src"), work.join("dst"));
        fs::create_dir_all(&dst).unwrap();
        old_atime_tree(&src, &dst);
        let (from, to) = dir.endpoints(&src, &dst);
        let out = run_over_shell(&arsync, &arsync, &rsh, &["-a"], &from, &to).unwrap();
        assert!(out.status.success(), "{}", describe(&out));
        let m = fs::metadata(src.join("far.txt")).unwrap();
        assert!(
            m.atime() > m.mtime() - 1000,
            "{dir:?}: atime was not updated"
        );
    }
}

/// The options through `rsync://` (the daemon's argument vector), arsync
/// and rsync as client and as daemon, push and pull.
#[test]
fn file_options_through_a_daemon() {
    let tmp = scratch_dir().unwrap();
    let base = tmp.path().join("mod");
    fs::create_dir_all(&base).unwrap();
    let cfg = tmp.path().join("d.conf");
    write_module_config(&cfg, &base).unwrap();
    let flags = [
        "-a",
        "--stats",
        "-B2048",
        "--cc=md5",
        "--modify-window=2",
        "--fsync",
        "--preallocate",
        "--open-noatime",
    ];
    let run = |daemon: &Daemon, client: &OsString, dir: Direction, label: &str| {
        let work = base.join(label);
        let (src, dst) = (work.join("src"), work.join("dst"));
        fs::create_dir_all(&src).unwrap();
        fs::create_dir_all(&dst).unwrap();
        old_atime_tree(&src, &dst);
        let url = |p: &Path| {
            let rel = p.strip_prefix(&base).unwrap();
            format!("rsync://127.0.0.1:{}/m/{}", daemon.port, rel.display())
        };
        let (from, to) = match dir {
            Direction::Push => (format!("{}/", src.display()), url(&dst)),
            Direction::Pull => (format!("{}/", url(&src)), dst.display().to_string()),
        };
        let out = Command::new(client)
            .args(flags)
            .args([&from, &to])
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        (out, src, dst)
    };
    let effect = |what: &str, out: &Output, src: &Path, dst: &Path| {
        assert_eq!(out.status.code(), Some(0), "{what}: {}", describe(out));
        assert_eq!(read(&dst.join("near.txt")), b"target near", "{what}");
        assert_eq!(read(&dst.join("big.bin")), big_pair().0, "{what}");
        let m = fs::metadata(src.join("big.bin")).unwrap();
        assert_eq!(m.atime(), m.mtime() - 1000, "{what}: atime changed");
    };
    let rsync = OsString::from("rsync");
    let rsyncd = start_daemon(&rsync, &cfg).unwrap();
    let arsyncd = start_daemon(&arsync_bin(), &cfg).unwrap();
    for dir in [Direction::Push, Direction::Pull] {
        let (want, want_src, want_dst) = run(&rsyncd, &rsync, dir, &format!("{dir:?}-ref"));
        effect("reference", &want, &want_src, &want_dst);
        // One 2048-byte block and the two files sent whole.
        assert_eq!(stat(&want, "Literal data:"), Some(2048 + 11 + 18));
        for (label, daemon, client) in [
            ("arsync-to-rsyncd", &rsyncd, arsync_bin()),
            ("rsync-to-arsyncd", &arsyncd, rsync.clone()),
            ("arsync-to-arsyncd", &arsyncd, arsync_bin()),
        ] {
            let (got, src, dst) = run(daemon, &client, dir, &format!("{dir:?}-{label}"));
            let what = format!("{dir:?} {label}");
            effect(&what, &got, &src, &dst);
            assert_eq!(
                stat(&got, "Literal data:"),
                stat(&want, "Literal data:"),
                "{what}: {}",
                describe(&got)
            );
            for (a, b) in [(&want_dst, &dst), (&want_src, &src)] {
                let diffs = compare_trees(a, b, &CompareOpts::default());
                assert!(diffs.is_empty(), "{what}: differs from rsync's: {diffs:#?}");
            }
        }
    }
}
