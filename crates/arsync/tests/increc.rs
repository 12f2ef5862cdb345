//! Incremental recursion over the wire: arsync receives per-directory file
//! lists (a pull, and as the receiving server of a push) and sends them (a
//! push, and as the sending server of a pull), in every pairing of client
//! and server, with real binaries over a stand-in for ssh.

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use arsync_testutil::remote::{Tool, FAKE_SSH};
use arsync_testutil::{compare_trees, scratch_dir, settle_tree, CompareOpts, Settle};

fn arsync_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_arsync"))
}

/// The program for a [`Tool`] (this test's arsync binary, or rsync).
fn program(t: Tool) -> std::ffi::OsString {
    t.program(arsync_bin().as_os_str())
}

fn fake_ssh(dir: &Path) -> String {
    let p = dir.join("fake-ssh");
    fs::write(&p, FAKE_SSH).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
    p.to_string_lossy().into_owned()
}

/// Runs `client` against `server` behind the stand-in ssh.
fn run(client: Tool, server: Tool, rsh: &str, flags: &[&str], src: &str, dst: &str) -> Output {
    let out = Command::new(program(client))
        .args(flags)
        .arg("-e")
        .arg(rsh)
        .arg("--rsync-path")
        .arg(program(server))
        .arg(src)
        .arg(dst)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{client:?} -> {server:?} {flags:?} {src} {dst} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    out
}

fn set_mtime(p: &Path, secs: u64) {
    let f = fs::File::options().write(true).open(p).unwrap();
    f.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
        .unwrap();
}

fn bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Nested directories (four levels, empty ones, many of them), files of
/// several sizes, symlinks, a directory of more files than a sender lists
/// ahead (1,000), and names that are not UTF-8.
fn make_tree(root: &Path) {
    for d in 0..120 {
        let p = root.join(format!("many/d{d:03}"));
        fs::create_dir_all(&p).unwrap();
        if d % 3 == 0 {
            fs::write(p.join("only"), format!("{d}")).unwrap();
        }
    }
    let wide = root.join("wide");
    fs::create_dir_all(&wide).unwrap();
    for f in 0..1_500 {
        fs::write(wide.join(format!("w{f:04}")), format!("{f}")).unwrap();
    }
    let odd = root.join(std::ffi::OsStr::from_bytes(b"caf\xe9"));
    fs::create_dir_all(odd.join(std::ffi::OsStr::from_bytes(b"sub\xff"))).unwrap();
    fs::write(odd.join(std::ffi::OsStr::from_bytes(b"x\xfe")), b"odd").unwrap();
    fs::write(
        odd.join(std::ffi::OsStr::from_bytes(b"sub\xff/y")),
        bytes(9, 5_000),
    )
    .unwrap();
    for a in 0..4 {
        for b in 0..4 {
            for c in 0..3 {
                let d = root.join(format!("l{a}/m{b}/n{c}"));
                fs::create_dir_all(&d).unwrap();
                for f in 0..3 {
                    let p = d.join(format!("f{f}"));
                    fs::write(&p, bytes(a * 100 + b * 10 + c + f, 200 + 900 * f as usize)).unwrap();
                    set_mtime(&p, 1_600_000_000 + f);
                }
            }
            fs::create_dir_all(root.join(format!("l{a}/m{b}/empty"))).unwrap();
        }
        fs::write(root.join(format!("l{a}/top")), bytes(a, 70_000)).unwrap();
        std::os::unix::fs::symlink("top", root.join(format!("l{a}/link"))).unwrap();
    }
    fs::create_dir_all(root.join("deep/er/and/deeper/still")).unwrap();
    fs::write(root.join("deep/er/and/deeper/still/leaf"), b"leaf").unwrap();
    fs::write(root.join("root-file"), b"root").unwrap();
    settle(root);
}

/// Old fixed times on directories and symlinks: a directory made this
/// second may keep a time that differs from the source's only in its
/// nanoseconds (rsync does not set a time that matches to the second).
fn settle(root: &Path) {
    settle_tree(root, Settle::DirsAndLinks, 1_600_000_000).unwrap();
}

/// Changes some files (a delta update), adds and removes some.
fn change_tree(root: &Path) {
    let p = root.join("l1/top");
    let mut data = fs::read(&p).unwrap();
    data[30_000..30_100].copy_from_slice(&[7u8; 100]);
    fs::write(&p, data).unwrap();
    set_mtime(&p, 1_700_000_000);
    fs::write(root.join("l2/m3/n1/new"), b"new file").unwrap();
    fs::remove_file(root.join("l3/m0/n2/f1")).unwrap();
    fs::remove_dir_all(root.join("l0/m2")).unwrap();
    settle(root);
}

fn opts() -> CompareOpts {
    CompareOpts {
        dir_mtime: true,
        ..CompareOpts::default()
    }
}

fn assert_same(a: &Path, b: &Path, what: &str) {
    let d = compare_trees(a, b, &opts());
    assert!(d.is_empty(), "{what}: trees differ: {d:#?}");
}

/// Whether the client's -v header says the list was incremental.
fn incremental_header(out: &Output) -> bool {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l == "receiving incremental file list" || l == "sending incremental file list")
}

#[test]
fn every_pairing_push_and_pull_with_incremental_lists() {
    let tmp = scratch_dir().unwrap();
    let rsh = fake_ssh(tmp.path());
    let src = tmp.path().join("src");
    make_tree(&src);
    let s = format!("{}/", src.display());
    for client in [Tool::Arsync, Tool::Rsync] {
        for server in [Tool::Arsync, Tool::Rsync] {
            for pull in [true, false] {
                let what = format!("{client:?} client, {server:?} server, pull={pull}");
                let dst = tmp.path().join(format!("dst-{client:?}-{server:?}-{pull}"));
                let d = dst.display().to_string();
                let (from, to) = match pull {
                    true => (format!("h:{s}"), d.clone()),
                    false => (s.clone(), format!("h:{d}")),
                };
                // The list comes incrementally whichever program sends it.
                let out = run(client, server, &rsh, &["-av"], &from, &to);
                assert!(incremental_header(&out), "{what}: header");
                assert_same(&src, &dst, &what);
                // A second run: delta update, deletion during the
                // transfer, new and removed entries in nested directories.
                let work = tmp.path().join("work");
                let _ = fs::remove_dir_all(&work);
                run(
                    Tool::Rsync,
                    Tool::Rsync,
                    &rsh,
                    &["-a"],
                    &s,
                    &work.display().to_string(),
                );
                change_tree(&work);
                fs::write(dst.join("l2/m1/extraneous"), b"x").unwrap();
                fs::create_dir_all(dst.join("l3/gone/deeper")).unwrap();
                let w = format!("{}/", work.display());
                let (from, to) = match pull {
                    true => (format!("h:{w}"), d.clone()),
                    false => (w.clone(), format!("h:{d}")),
                };
                let out = run(
                    client,
                    server,
                    &rsh,
                    &["-a", "--delete", "--stats"],
                    &from,
                    &to,
                );
                let receiver = if pull { client } else { server };
                if receiver == Tool::Rsync {
                    // rsync's receiver (rsync -> rsync too) leaves the
                    // times of directories this update changed; arsync's
                    // sets them.
                    let o = CompareOpts {
                        dir_mtime: false,
                        ..opts()
                    };
                    let diffs = compare_trees(&work, &dst, &o);
                    assert!(diffs.is_empty(), "{what}, update: {diffs:#?}");
                } else {
                    assert_same(&work, &dst, &format!("{what}, update"));
                }
                let stats = String::from_utf8_lossy(&out.stdout);
                assert!(
                    stats.contains("Number of regular files transferred: 2"),
                    "{what}: {stats}"
                );
                // -c: the content sums decide; nothing differs.
                let out = run(client, server, &rsh, &["-ac", "--stats"], &from, &to);
                let stats = String::from_utf8_lossy(&out.stdout);
                assert!(
                    stats.contains("Number of regular files transferred: 0"),
                    "{what}, -c: {stats}"
                );
                fs::remove_dir_all(&dst).unwrap();
            }
        }
    }
}

#[test]
fn options_that_rule_it_out_fall_back_to_a_whole_list() {
    let tmp = scratch_dir().unwrap();
    let rsh = fake_ssh(tmp.path());
    let src = tmp.path().join("src");
    make_tree(&src);
    // Hard links across directories.
    fs::hard_link(src.join("l0/m0/n0/f1"), src.join("l3/m3/n2/linked")).unwrap();
    fs::hard_link(src.join("l0/m0/n0/f1"), src.join("deep/linked-too")).unwrap();
    let s = format!("{}/", src.display());
    for (flags, what) in [
        (&["-avH"][..], "-H"),
        (&["-av", "--delete-after"][..], "--delete-after"),
        (&["-av", "--delay-updates"][..], "--delay-updates"),
    ] {
        for (client, server, pull) in [
            (Tool::Arsync, Tool::Rsync, true),
            (Tool::Rsync, Tool::Arsync, false),
            (Tool::Arsync, Tool::Rsync, false),
            (Tool::Rsync, Tool::Arsync, true),
            (Tool::Arsync, Tool::Arsync, false),
            (Tool::Arsync, Tool::Arsync, true),
        ] {
            let dst = tmp.path().join("dst");
            let _ = fs::remove_dir_all(&dst);
            if what.starts_with("--delete") {
                fs::create_dir_all(dst.join("l1/stale")).unwrap();
            }
            let d = dst.display().to_string();
            let (from, to) = match pull {
                true => (format!("h:{s}"), d.clone()),
                false => (s.clone(), format!("h:{d}")),
            };
            let out = run(client, server, &rsh, flags, &from, &to);
            let what = format!("{what}: {client:?} -> {server:?}");
            assert!(!incremental_header(&out), "{what}: a whole list expected");
            if what.starts_with("--delete") {
                assert!(!dst.join("l1/stale").exists(), "{what}");
            }
            let o = CompareOpts {
                hard_links: flags[0] == "-avH",
                ..opts()
            };
            let diffs = compare_trees(&src, &dst, &o);
            assert!(diffs.is_empty(), "{what}: {diffs:#?}");
        }
    }
}

/// The -v lines without the ones that name the destination or count bytes.
fn verbose_lines(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with("created directory ") && !l.starts_with("sent "))
        .map(str::to_string)
        .collect()
}

#[test]
fn verbose_output_matches_rsync_line_for_line() {
    let tmp = scratch_dir().unwrap();
    let rsh = fake_ssh(tmp.path());
    let src = tmp.path().join("src");
    make_tree(&src);
    let s = format!("{}/", src.display());
    // A pull with arsync or rsync as the client (the receiver) or as the
    // server (the sender), and a push with either as the client (the
    // sender) or the server (the receiver): the lines are rsync's.
    for pull in [true, false] {
        for client_varies in [true, false] {
            let mut seen = Vec::new();
            for tool in [Tool::Rsync, Tool::Arsync] {
                let dst = tmp
                    .path()
                    .join(format!("v-{pull}-{client_varies}-{tool:?}"));
                let d = dst.display().to_string();
                let (client, server) = match client_varies {
                    true => (tool, Tool::Rsync),
                    false => (Tool::Rsync, tool),
                };
                // A new destination and no --delete: rsync's deletion lines
                // come from its generator process, its file lines from the
                // receiver process, in no fixed order between them.
                let out = match pull {
                    true => run(client, server, &rsh, &["-av"], &format!("h:{s}"), &d),
                    false => run(client, server, &rsh, &["-av"], &s, &format!("h:{d}")),
                };
                let what = format!("pull={pull} {client:?} -> {server:?}");
                assert!(incremental_header(&out), "{what}");
                seen.push(verbose_lines(&out));
                if tool == Tool::Arsync {
                    // (rsync's run is the reference for the lines only.)
                    assert_same(&src, &dst, &what);
                }
            }
            assert_eq!(
                seen[0], seen[1],
                "pull={pull}, client varies: {client_varies}: rsync's lines, then arsync's"
            );
        }
    }
}

#[test]
fn recursive_listing_matches_rsync() {
    let tmp = scratch_dir().unwrap();
    let rsh = fake_ssh(tmp.path());
    let src = tmp.path().join("src");
    make_tree(&src);
    let s = format!("h:{}/", src.display());
    let list = |client: Tool| {
        let out = Command::new(program(client))
            .args(["-r", "-e", &rsh, &s])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(out.status.success(), "{client:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let theirs = list(Tool::Rsync);
    assert!(theirs.lines().count() > 200, "{theirs}");
    assert_eq!(list(Tool::Arsync), theirs);
}
