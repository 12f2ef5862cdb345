//! Token compression against the real rsync 3.x: for each algorithm
//! (`--zc=zstd|lz4|zlibx|zlib`), every client -> server pairing of arsync and
//! rsync, push and pull, over a stand-in for ssh: a fresh copy of a tree with
//! compressible and incompressible files, then a delta update (1% of each
//! large file changed). Each run must exit 0 and leave the same tree as
//! rsync -> rsync; compressible data must really have been compressed and
//! the update must have been a delta. Also: the negotiated choice of a
//! plain `-z`, `-zz`, levels, and the refusal of unknown names.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use arsync_testutil::remote::{install_fake_ssh, pairings, Direction};
use arsync_testutil::{
    assert_trees_match_first, scratch_dir, settle_tree, CompareOpts, SeededBytes, Settle,
};

fn arsync_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_arsync"))
}

/// Deterministic incompressible bytes.
fn noise(seed: u64, n: usize) -> Vec<u8> {
    let mut v = vec![0; n];
    SeededBytes::new(seed).fill(&mut v);
    v
}

/// Compressible text: numbered lines.
fn text(seed: u64, n: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(n + 64);
    let mut i = seed;
    while v.len() < n {
        v.extend_from_slice(format!("line {i} of a compressible file, seed {seed}\n").as_bytes());
        i += 1;
    }
    v.truncate(n);
    v
}

const TEXT: usize = 1 << 20;
const NOISE: usize = 1 << 20;

fn set_mtime(p: &Path, secs: i64) {
    arsync_testutil::set_mtime(p, secs, 0).unwrap();
}

fn settle_dirs(root: &Path) {
    settle_tree(root, Settle::Dirs, 1_600_000_000).unwrap();
}

/// Large compressible and incompressible files and a few small ones.
fn make_tree(root: &Path) {
    fs::create_dir_all(root.join("sub")).unwrap();
    fs::write(root.join("text.log"), text(0, TEXT)).unwrap();
    fs::write(root.join("noise.bin"), noise(1, NOISE)).unwrap();
    fs::write(root.join("sub/small.txt"), b"hello, small file\n").unwrap();
    fs::write(root.join("sub/empty"), b"").unwrap();
    fs::write(
        root.join("sub/mixed"),
        [text(5, 40_000), noise(6, 40_000)].concat(),
    )
    .unwrap();
    for f in [
        "text.log",
        "noise.bin",
        "sub/small.txt",
        "sub/empty",
        "sub/mixed",
    ] {
        set_mtime(&root.join(f), 1_600_000_000);
    }
    settle_dirs(root);
}

/// Rewrites 1% of each large file in two places (the text with other
/// text, which classic zlib finds in the matched blocks' history).
fn mutate(root: &Path) {
    let p = root.join("text.log");
    let mut d = fs::read(&p).unwrap();
    for at in [TEXT / 4, TEXT * 3 / 4] {
        let new = text(1_000_000 + at as u64, TEXT / 200);
        d[at..at + new.len()].copy_from_slice(&new);
    }
    fs::write(&p, d).unwrap();
    let p = root.join("noise.bin");
    let mut d = fs::read(&p).unwrap();
    for at in [NOISE / 3, NOISE * 2 / 3] {
        d[at..at + NOISE / 200].copy_from_slice(&noise(at as u64, NOISE / 200));
    }
    fs::write(&p, d).unwrap();
    for f in ["text.log", "noise.bin"] {
        set_mtime(&root.join(f), 1_600_000_100);
    }
}

fn run(client: &OsStr, server: &OsStr, rsh: &Path, flags: &[&str], from: &str, to: &str) -> Output {
    Command::new(client)
        .args(flags)
        .arg("-e")
        .arg(rsh)
        .arg("--rsync-path")
        .arg(server)
        .arg(from)
        .arg(to)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn ok(out: &Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{what}: exit {:?}\nstdout: {stdout}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// A `--stats` figure (`Literal data: 1,234 bytes`; rsync prints commas).
fn stat(stats: &str, name: &str) -> u64 {
    stats
        .lines()
        .find_map(|l| l.trim().strip_prefix(name))
        .and_then(|v| v.trim_start_matches(':').split_whitespace().next())
        .map(|v| v.replace(',', ""))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in stats: {stats}"))
}

/// The bytes the client received (pull) or sent (push), from `--stats`.
fn wire_bytes(stats: &str, way: Direction) -> u64 {
    match way {
        Direction::Push => stat(stats, "Total bytes sent"),
        Direction::Pull => stat(stats, "Total bytes received"),
    }
}

/// Fresh copy and delta update with `flags`, every pairing, both ways;
/// every tree must equal rsync -> rsync's.
fn matrix(label: &str, flags: &[&str]) {
    let tmp = scratch_dir().unwrap();
    let rsh = install_fake_ssh(tmp.path()).unwrap();
    let src = tmp.path().join("src");
    make_tree(&src);
    let moved = tmp.path().join("src2");
    make_tree(&moved);
    mutate(&moved);
    let total = (TEXT + NOISE + 80_000) as u64;
    for way in [Direction::Push, Direction::Pull] {
        let mut fresh = Vec::new();
        let mut updated = Vec::new();
        for (pair, client, server) in pairings(arsync_bin().as_os_str()) {
            let what = format!("{label} {way:?} {pair}");
            let first = tmp.path().join(format!("{way:?}-{pair}-fresh"));
            let dst = tmp.path().join(format!("{way:?}-{pair}-delta"));
            let mut all = vec!["-a", "--stats"];
            all.extend_from_slice(flags);
            let (from, to) = way.endpoints(&src, &first);
            let stats = ok(&run(&client, &server, &rsh, &all, &from, &to), &what);
            // The text compresses (to well under half); the noise does not.
            let wire = wire_bytes(&stats, way);
            assert!(
                wire < total - TEXT as u64 / 2,
                "{what}: {wire} bytes on the wire for {total}"
            );
            fresh.push((format!("{what} fresh"), first.clone()));
            // The update: a copy of that result, from the changed source.
            let st = Command::new("cp")
                .arg("-a")
                .arg(&first)
                .arg(&dst)
                .status()
                .unwrap();
            assert!(st.success());
            let (from, to) = way.endpoints(&moved, &dst);
            let stats = ok(
                &run(&client, &server, &rsh, &all, &from, &to),
                &format!("{what} delta"),
            );
            let literal = stat(&stats, "Literal data");
            let matched = stat(&stats, "Matched data");
            assert!(
                literal < (TEXT + NOISE) as u64 / 20 && matched > (TEXT + NOISE) as u64 * 9 / 10,
                "{what}: delta sent {literal} literal, {matched} matched"
            );
            let wire = wire_bytes(&stats, way);
            assert!(
                wire < (TEXT + NOISE) as u64 / 20,
                "{what}: delta {wire} on the wire"
            );
            updated.push((format!("{what} delta"), dst));
        }
        // Every pairing's trees equal rsync -> rsync's (the first), which
        // equal the sources.
        let cmp = CompareOpts::default();
        assert_trees_match_first(&fresh, &cmp);
        assert_trees_match_first(&updated, &cmp);
        assert_trees_match_first(&[("source".into(), src.clone()), fresh[0].clone()], &cmp);
        assert_trees_match_first(
            &[("source".into(), moved.clone()), updated[0].clone()],
            &cmp,
        );
    }
}

#[test]
fn zstd_every_pairing() {
    matrix("zstd", &["-z", "--zc=zstd"]);
}

#[test]
fn lz4_every_pairing() {
    matrix("lz4", &["--compress-choice=lz4"]);
}

#[test]
fn zlibx_every_pairing() {
    matrix("zlibx", &["-zz"]);
}

#[test]
fn zlib_every_pairing() {
    // Classic zlib: matched data goes into the (de)compressor's history on
    // both sides; also at protocol 30 (which repeats rsync's old history bug
    // for blocks over 64 KiB; these blocks are smaller).
    matrix("zlib", &["--old-compress", "--zl=9"]);
    matrix("zlib protocol 30", &["-z", "--zc=zlib", "--protocol=30"]);
}

/// rsync's own report of what the session negotiated (`--debug=nstr`).
fn negotiated(stdout: &str) -> Option<String> {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("Client negotiated compress: "))
        .map(|s| s.to_string())
}

#[test]
fn plain_z_negotiates_zstd_with_rsync() {
    let tmp = scratch_dir().unwrap();
    let rsh = install_fake_ssh(tmp.path()).unwrap();
    let src = tmp.path().join("src");
    make_tree(&src);
    let arsync = arsync_bin().into_os_string();
    let rsync = OsString::from("rsync");
    for way in [Direction::Push, Direction::Pull] {
        for (flags, want) in [
            (&["-az"][..], Some("zstd (level 3)")),
            (&["-az", "--zl=7"][..], Some("zstd (level 7)")),
            (&["-az", "--protocol=30"][..], Some("zstd (level 3)")),
            // rsync's client passes --skip-compress to a sending server.
            (
                &["-az", "--skip-compress=gz/jpg", "--zt=2"][..],
                Some("zstd (level 3)"),
            ),
            (&["-azz"][..], None),
            (&["-az", "--zc=zlib", "--zl=0"][..], None),
        ] {
            let what = format!("{way:?} {flags:?}");
            let dst = tmp.path().join("dst");
            let _ = fs::remove_dir_all(&dst);
            let (from, to) = way.endpoints(&src, &dst);
            let mut all = flags.to_vec();
            all.push("--debug=nstr");
            let out = ok(&run(&rsync, &arsync, &rsh, &all, &from, &to), &what);
            assert_eq!(negotiated(&out).as_deref(), want, "{what}: {out}");
            let cmp = CompareOpts::default();
            assert_trees_match_first(&[("source", &src), ("copy", &dst)], &cmp);
            // And arsync as the client, against rsync.
            let _ = fs::remove_dir_all(&dst);
            ok(&run(&arsync, &rsync, &rsh, flags, &from, &to), &what);
            assert_trees_match_first(&[("source", &src), ("copy", &dst)], &cmp);
        }
    }
}

#[test]
fn unknown_algorithm_is_refused_as_rsync_does() {
    let tmp = scratch_dir().unwrap();
    let rsh = install_fake_ssh(tmp.path()).unwrap();
    let src = tmp.path().join("src");
    fs::create_dir_all(&src).unwrap();
    let dst = tmp.path().join("dst");
    let (from, to) = Direction::Push.endpoints(&src, &dst);
    for client in [arsync_bin().into_os_string(), OsString::from("rsync")] {
        let out = run(
            &client,
            OsStr::new("rsync"),
            &rsh,
            &["-a", "--zc=brotli"],
            &from,
            &to,
        );
        assert_eq!(out.status.code(), Some(4), "{client:?}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("unknown compress name: brotli"),
            "{client:?}: {err}"
        );
        let out = run(
            &client,
            OsStr::new("rsync"),
            &rsh,
            &["-a", "--zl=x"],
            &from,
            &to,
        );
        assert_eq!(out.status.code(), Some(1), "{client:?}: {out:?}");
    }
    assert!(!dst.exists());
    // An arsync server refuses a name it does not know (from a client that
    // sends anything), with the same code.
    let out = Command::new(arsync_bin())
        .args([
            "--server",
            "-logDtpre.LsfxCIvu",
            "--compress-choice=brotli",
            ".",
        ])
        .arg(&dst)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4), "{out:?}");
}
