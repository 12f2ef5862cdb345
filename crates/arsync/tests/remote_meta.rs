//! Metadata the remote receiver applies, compared with rsync's (issue 4):
//! without `-p` a new entry gets the source's permissions masked by the
//! receiver's umask (special bits dropped) and an existing one keeps its
//! own (`-E` brings over only executability); without `-t` nothing gets
//! the source's mtime (and the next run sends every file again); without
//! `-o`/`-g` nothing is chowned. For each flag set, arsync as client
//! (against `rsync --server`) and as server (under a real rsync client),
//! pushing and pulling through a stand-in ssh under umask 027, must leave
//! the tree rsync-to-rsync leaves, over a first run into a partly filled
//! destination and a second run after the source's modes changed.

use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use arsync_testutil::remote::{install_fake_ssh, pairings, Direction};
use arsync_testutil::{
    assert_trees_match_first, compare_trees, is_root, scratch_dir, settle_tree, CompareOpts, Settle,
};

fn arsync_bin() -> OsString {
    PathBuf::from(env!("CARGO_BIN_EXE_arsync")).into_os_string()
}

fn rsync_bin() -> OsString {
    "rsync".into()
}

const T0: u64 = 1_600_000_000;

/// Writes `data` to `root/rel` with permission bits `mode` and mtime `secs`.
fn put(root: &Path, rel: &str, data: &[u8], mode: u32, secs: u64) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(&p, data).unwrap();
    let f = fs::File::options().write(true).open(&p).unwrap();
    f.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
        .unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
}

fn dir(root: &Path, rel: &str, mode: u32) {
    let p = root.join(rel);
    fs::create_dir_all(&p).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
}

/// Old fixed times on directories (and owners as root), so trees built at
/// different moments compare equal.
fn settle(root: &Path) {
    settle_tree(root, Settle::AllButFiles, 1_500_000_000).unwrap();
}

/// The source: modes the umask and -p/-E matter for, special bits, a
/// symlink and a FIFO, owned by 1234:1234 when we can chown.
fn source_tree(src: &Path) {
    put(src, "all.txt", b"world writable", 0o777, T0);
    put(src, "private.txt", b"private", 0o600, T0);
    put(src, "group.txt", b"group readable", 0o640, T0);
    put(src, "setuid", b"set-user-id", 0o4755, T0);
    put(src, "exec_now", b"becomes executable", 0o755, T0);
    put(src, "not_exec", b"stops being exec", 0o644, T0);
    put(src, "same", b"same size and time", 0o751, T0);
    put(src, "sub/inner.txt", b"inner file", 0o664, T0 + 10);
    dir(src, "sub", 0o775);
    dir(src, "locked", 0o700);
    put(src, "locked/x", b"x", 0o644, T0);
    dir(src, "sgid", 0o2775);
    put(src, "sgid/y", b"y", 0o666, T0);
    symlink("all.txt", src.join("link")).unwrap();
    let fifo = src.join("fifo");
    let st = Command::new("mkfifo")
        .args(["-m", "0666"])
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(st.success());
    if is_root() {
        let st = Command::new("chown")
            .args(["-hR", "1234:1234"])
            .arg(src)
            .status()
            .unwrap();
        assert!(st.success());
    }
    settle(src);
}

/// What is there before the first run: files the source replaces (other
/// modes), one that passes the quick check, a directory with other modes.
fn dest_tree(dst: &Path) {
    put(dst, "exec_now", b"old, not executable", 0o600, T0 - 100);
    put(dst, "not_exec", b"old but executable", 0o775, T0 - 100);
    put(dst, "same", b"same size and time", 0o604, T0);
    dir(dst, "sub", 0o750);
    settle(dst);
}

/// Changes between the runs: new modes in the source.
fn change_source(src: &Path) {
    for (rel, mode) in [("private.txt", 0o644), ("sub", 0o755), ("setuid", 0o755)] {
        fs::set_permissions(src.join(rel), fs::Permissions::from_mode(mode)).unwrap();
    }
    settle(src);
}

/// Runs `client flags -e rsh --rsync-path server from to` under umask 027.
fn transfer(
    client: &OsString,
    server: &OsString,
    rsh: &Path,
    flags: &[&str],
    from: &str,
    to: &str,
) -> Output {
    Command::new("sh")
        .arg("-c")
        .arg("umask 027; exec \"$0\" \"$@\"")
        .arg(client)
        .args(flags)
        .arg("-e")
        .arg(rsh)
        .arg("--rsync-path")
        .arg(server)
        .args([from, to])
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// Both runs of one pairing; returns the destination.
fn run_pair(
    work: &Path,
    rsh: &Path,
    client: &OsString,
    server: &OsString,
    flags: &[&str],
    dir: Direction,
    after_each: &mut dyn FnMut(usize, &Path, &Path),
) {
    let (src, dst) = (work.join("src"), work.join("dst"));
    fs::create_dir_all(&src).unwrap();
    fs::create_dir_all(&dst).unwrap();
    source_tree(&src);
    dest_tree(&dst);
    let (from, to) = dir.endpoints(&src, &dst);
    for round in 0..2 {
        if round == 1 {
            change_source(&src);
        }
        let out = transfer(client, server, rsh, flags, &from, &to);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{flags:?} {dir:?} round {round}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        after_each(round, &src, &dst);
    }
}

fn mode_of(p: &Path) -> u32 {
    fs::symlink_metadata(p).unwrap().mode() & 0o7777
}

fn mtime_of(p: &Path) -> i64 {
    fs::symlink_metadata(p).unwrap().mtime()
}

/// Checks the reference run shows the flag set's rules at work, so the
/// comparison cannot pass by everyone ignoring them.
fn expect_rules(flags: &str, round: usize, dst: &Path) {
    let perms = flags.contains('p');
    let times = flags.contains('t');
    let new_file = mode_of(&dst.join("all.txt"));
    let existing = mode_of(&dst.join("exec_now"));
    if perms {
        assert_eq!(new_file, 0o777, "{flags}");
        assert_eq!(existing, 0o755, "{flags}");
    } else {
        assert_eq!(new_file, 0o750, "{flags}: 0777 under umask 027");
        assert_eq!(mode_of(&dst.join("setuid")), 0o750, "{flags}: no set-uid");
        // -E: executable where readable, as the source is.
        let want = if flags.contains('E') { 0o700 } else { 0o600 };
        assert_eq!(existing, want, "{flags}: kept");
        if round == 1 {
            assert_eq!(mode_of(&dst.join("private.txt")), 0o600, "{flags}: kept");
        }
    }
    let t = mtime_of(&dst.join("all.txt"));
    assert_eq!(t == T0 as i64, times, "{flags}: mtime {t}");
    if is_root() {
        let uid = fs::symlink_metadata(dst.join("group.txt")).unwrap().uid();
        assert_eq!(uid == 1234, flags.contains('o'), "{flags}: uid {uid}");
    }
}

fn check_flags(flags: &[&str]) {
    let tmp = scratch_dir().unwrap();
    let rsh = install_fake_ssh(tmp.path()).unwrap();
    let joined = flags.concat();
    let times = joined.contains('t');
    // Without -t nothing carries the source's times: file and directory
    // mtimes are when each run wrote them.
    let cmp = CompareOpts {
        mtime: times,
        dir_mtime: times,
        symlink_mtime: times && joined.contains('l'),
        ..CompareOpts::default()
    };
    for dir in [Direction::Push, Direction::Pull] {
        let base = tmp.path().join(format!("{dir:?}"));
        let mut reference = Vec::new();
        run_pair(
            &base.join("ref"),
            &rsh,
            &rsync_bin(),
            &rsync_bin(),
            flags,
            dir,
            &mut |round, _, dst| {
                expect_rules(&joined, round, dst);
                // Snapshot the reference after each round.
                let snap = base.join(format!("ref-round{round}"));
                let st = Command::new("cp")
                    .args(["-a"])
                    .arg(dst)
                    .arg(&snap)
                    .status()
                    .unwrap();
                assert!(st.success());
                reference.push(snap);
            },
        );
        for (label, client, server) in [
            ("arsync->rsync", arsync_bin(), rsync_bin()),
            ("rsync->arsync", rsync_bin(), arsync_bin()),
            ("arsync->arsync", arsync_bin(), arsync_bin()),
        ] {
            run_pair(
                &base.join(label),
                &rsh,
                &client,
                &server,
                flags,
                dir,
                &mut |round, _, dst| {
                    let what = format!("{flags:?} {dir:?} {label} round {round}");
                    expect_rules(&joined, round, dst);
                    let diffs = compare_trees(&reference[round], dst, &cmp);
                    assert!(diffs.is_empty(), "{what}: differs from rsync's: {diffs:#?}");
                },
            );
        }
    }
}

#[test]
fn recursive_only() {
    check_flags(&["-r"]);
}

#[test]
fn perms() {
    check_flags(&["-rp"]);
}

#[test]
fn times() {
    check_flags(&["-rt"]);
}

#[test]
fn perms_and_times() {
    check_flags(&["-rpt"]);
}

#[test]
fn archive_without_hard_links() {
    check_flags(&["-rlptgoD"]);
}

#[test]
fn executability_without_perms() {
    let tmp = scratch_dir().unwrap();
    let rsh = install_fake_ssh(tmp.path()).unwrap();
    check_flags(&["-rtE"]);
    // The rules at work: an existing file becomes executable where it is
    // readable, another stops being executable, new files follow the umask.
    let work = tmp.path().join("e");
    let mut seen = false;
    run_pair(
        &work,
        &rsh,
        &rsync_bin(),
        &rsync_bin(),
        &["-rtE"],
        Direction::Push,
        &mut |round, _, dst| {
            if round == 0 {
                assert_eq!(mode_of(&dst.join("exec_now")), 0o700);
                assert_eq!(mode_of(&dst.join("not_exec")), 0o664);
                seen = true;
            }
        },
    );
    assert!(seen);
}

/// Without `-p`, a new entry in a directory with a default ACL takes its
/// permission bits from that ACL, not from the umask (rsync's
/// `default_perms_for_dir`).
#[test]
fn default_acl_instead_of_the_umask() {
    let tmp = scratch_dir().unwrap();
    let rsh = install_fake_ssh(tmp.path()).unwrap();
    let probe = tmp.path().join("probe");
    fs::create_dir_all(&probe).unwrap();
    let acl_ok = Command::new("setfacl")
        .args(["-d", "-m", "u::rwx,g::rwx,o::r-x"])
        .arg(&probe)
        .status()
        .is_ok_and(|s| s.success());
    if !acl_ok {
        eprintln!("skipped: no default ACLs here");
        return;
    }
    for way in [Direction::Push, Direction::Pull] {
        let mut results = Vec::new();
        for (label, client, server) in pairings(&arsync_bin()) {
            let work = tmp.path().join(format!("{way:?}-{label}"));
            let (src, dst) = (work.join("src"), work.join("dst"));
            put(&src, "all.txt", b"world writable", 0o777, T0);
            put(&src, "sub/inner.txt", b"inner", 0o666, T0);
            dir(&src, "sub", 0o777);
            fs::create_dir_all(&dst).unwrap();
            let st = Command::new("setfacl")
                .args(["-d", "-m", "u::rwx,g::rwx,o::r-x"])
                .arg(&dst)
                .status()
                .unwrap();
            assert!(st.success());
            let (from, to) = way.endpoints(&src, &dst);
            let out = transfer(&client, &server, &rsh, &["-r"], &from, &to);
            let what = format!("{way:?} {label}");
            assert_eq!(out.status.code(), Some(0), "{what}: {out:?}");
            // 0777 through the ACL's 0775 (the umask, 027, would give 0750).
            assert_eq!(mode_of(&dst.join("all.txt")), 0o775, "{what}");
            results.push((what, dst));
        }
        let cmp = CompareOpts {
            mtime: false,
            dir_mtime: false,
            symlink_mtime: false,
            ..CompareOpts::default()
        };
        assert_trees_match_first(&results, &cmp);
    }
}
