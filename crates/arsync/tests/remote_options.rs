//! rsync's options over the wire (issue 4, "same flags and exit codes as
//! local mode"): for each option, arsync as the client (against
//! `rsync --server`) and as the server (under a real rsync client), both
//! pushing and pulling, must leave the same source and destination trees
//! and exit with the same code as rsync talking to rsync. Each case also
//! checks that the option had its effect in the reference run, so a case
//! cannot pass by everyone ignoring the option.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use arsync_testutil::remote::{
    install_fake_ssh, pairings, run_over_shell, start_daemon, write_module_config, Daemon,
    Direction,
};
use arsync_testutil::{
    assert_trees_match_first, compare_trees, scratch_dir, settle_tree, CompareOpts, Settle,
};

fn arsync_bin() -> OsString {
    PathBuf::from(env!("CARGO_BIN_EXE_arsync")).into_os_string()
}

fn rsync_bin() -> OsString {
    "rsync".into()
}

/// Writes `data` to `root/rel` (parents created) with mtime `secs`.
fn put(root: &Path, rel: &str, data: &[u8], secs: u64) {
    let p = root.join(rel);
    if let Some(d) = p.parent() {
        fs::create_dir_all(d).unwrap();
    }
    fs::write(&p, data).unwrap();
    let f = fs::File::options().write(true).open(&p).unwrap();
    f.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
        .unwrap();
}

/// Gives directories and symlinks a fixed old mtime, so trees built at
/// different moments compare equal.
fn settle(root: &Path) {
    settle_tree(root, Settle::DirsAndLinks, 1_500_000_000).unwrap();
}

const T0: u64 = 1_600_000_000;

/// The tree for the quick-check variants: a source and an older copy.
fn quick_tree(src: &Path, dst: &Path) {
    // Same size and mtime, different content: only -I (or -c) sends it.
    put(src, "same.txt", b"source version", T0);
    put(dst, "same.txt", b"target version", T0);
    // Same size, different mtime and content: --size-only keeps it.
    put(src, "resized.txt", b"0123456789", T0 + 50);
    put(dst, "resized.txt", b"abcdefghij", T0);
    // Newer on the receiver: -u keeps it.
    put(src, "newer_there.txt", b"old source", T0);
    put(dst, "newer_there.txt", b"newer target!", T0 + 100);
    // Older on the receiver: sent in every case but --ignore-existing.
    put(src, "older_there.txt", b"fresh source", T0 + 100);
    put(dst, "older_there.txt", b"stale", T0);
    // Only in the source: --existing skips it (and the directory).
    put(src, "new.txt", b"brand new", T0);
    put(src, "newdir/inner.txt", b"inner", T0);
    // Sizes for --min-size / --max-size, only in the source.
    put(src, "tiny.bin", b"12", T0);
    put(src, "big.bin", &[7u8; 5000], T0);
    put(src, "sub/mid.bin", &[9u8; 300], T0);
    symlink("new.txt", src.join("link")).unwrap();
    fs::create_dir_all(dst.join("sub")).unwrap();
    settle(src);
    settle(dst);
}

fn read(p: &Path) -> Option<Vec<u8>> {
    fs::read(p).ok()
}

/// One option scenario.
struct Case {
    name: &'static str,
    flags: &'static [&'static str],
    setup: fn(&Path, &Path),
    /// Checks the reference (rsync to rsync) result: the option's effect.
    expect: fn(&Path, &Path),
    /// The reference exit code.
    code: i32,
    /// Compare directory mtimes (rsync's `-b` without `--backup-dir`
    /// implies `-O`, which arsync's receiver does not mirror).
    dir_times: bool,
}

struct Run {
    out: Output,
    src: PathBuf,
    dst: PathBuf,
}

fn run(
    case: &Case,
    rsh: &Path,
    client: &OsString,
    server: &OsString,
    dir: Direction,
    work: &Path,
) -> Run {
    let src = work.join("src");
    let dst = work.join("dst");
    fs::create_dir_all(&src).unwrap();
    fs::create_dir_all(&dst).unwrap();
    (case.setup)(&src, &dst);
    let (from, to) = dir.endpoints(&src, &dst);
    let out = run_over_shell(client, server, rsh, case.flags, &from, &to).unwrap();
    Run { out, src, dst }
}

fn describe(r: &Run) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        r.out.status.code(),
        String::from_utf8_lossy(&r.out.stdout),
        String::from_utf8_lossy(&r.out.stderr)
    )
}

/// Runs `case` for every pairing and direction against the rsync reference.
fn check(case: &Case) {
    let tmp = scratch_dir().unwrap();
    check_in(case, tmp.path());
}

/// [`check`] with its trees under `tmp`.
fn check_in(case: &Case, tmp: &Path) {
    fs::create_dir_all(tmp).unwrap();
    let rsh = install_fake_ssh(tmp).unwrap();
    // Every pairing but the reference.
    let pairs: Vec<_> = pairings(&arsync_bin()).into_iter().skip(1).collect();
    let cmp = CompareOpts {
        dir_mtime: case.dir_times,
        ..CompareOpts::default()
    };
    for dir in [Direction::Push, Direction::Pull] {
        let base = tmp.join(format!("{dir:?}"));
        let reference = run(
            case,
            &rsh,
            &rsync_bin(),
            &rsync_bin(),
            dir,
            &base.join("ref"),
        );
        assert_eq!(
            reference.out.status.code(),
            Some(case.code),
            "{} {dir:?} rsync->rsync: {}",
            case.name,
            describe(&reference)
        );
        (case.expect)(&reference.src, &reference.dst);
        for (label, client, server) in &pairs {
            let got = run(case, &rsh, client, server, dir, &base.join(label));
            let what = format!("{} {dir:?} {label}", case.name);
            if got.out.status.code() == reference.out.status.code() {
                (case.expect)(&got.src, &got.dst);
            }
            assert_eq!(
                got.out.status.code(),
                reference.out.status.code(),
                "{what}: {}",
                describe(&got)
            );
            // Removing files (--remove-source-files) touches source directories.
            let src_cmp = CompareOpts {
                dir_mtime: false,
                ..CompareOpts::default()
            };
            for (a, b, side, cmp) in [
                (&reference.dst, &got.dst, "destination", &cmp),
                (&reference.src, &got.src, "source", &src_cmp),
            ] {
                let diffs = compare_trees(a, b, cmp);
                assert!(
                    diffs.is_empty(),
                    "{what}: {side} differs from rsync's: {diffs:#?}\n{}",
                    describe(&got)
                );
            }
        }
    }
}

#[test]
fn update_skips_newer_files() {
    check(&Case {
        name: "-u",
        flags: &["-a", "-u"],
        setup: quick_tree,
        expect: |_, d| {
            assert_eq!(read(&d.join("newer_there.txt")).unwrap(), b"newer target!");
            assert_eq!(read(&d.join("older_there.txt")).unwrap(), b"fresh source");
        },
        code: 0,
        dir_times: true,
    });
}

#[test]
fn existing_creates_nothing_new() {
    check(&Case {
        name: "--existing",
        flags: &["-a", "--existing"],
        setup: quick_tree,
        expect: |_, d| {
            assert!(!d.join("new.txt").exists() && !d.join("newdir").exists());
            assert_eq!(read(&d.join("older_there.txt")).unwrap(), b"fresh source");
        },
        code: 0,
        dir_times: true,
    });
}

#[test]
fn ignore_existing_only_creates() {
    check(&Case {
        name: "--ignore-existing",
        flags: &["-a", "--ignore-existing"],
        setup: quick_tree,
        expect: |_, d| {
            assert_eq!(read(&d.join("older_there.txt")).unwrap(), b"stale");
            assert_eq!(read(&d.join("newdir/inner.txt")).unwrap(), b"inner");
        },
        code: 0,
        dir_times: true,
    });
}

#[test]
fn size_only_ignores_mtimes() {
    check(&Case {
        name: "--size-only",
        flags: &["-a", "--size-only"],
        setup: quick_tree,
        expect: |_, d| {
            assert_eq!(read(&d.join("resized.txt")).unwrap(), b"abcdefghij");
            assert_eq!(read(&d.join("older_there.txt")).unwrap(), b"fresh source");
        },
        code: 0,
        dir_times: true,
    });
}

#[test]
fn ignore_times_sends_everything() {
    check(&Case {
        name: "-I",
        flags: &["-a", "-I"],
        setup: quick_tree,
        expect: |_, d| {
            assert_eq!(read(&d.join("same.txt")).unwrap(), b"source version");
        },
        code: 0,
        dir_times: true,
    });
}

#[test]
fn min_and_max_size() {
    check(&Case {
        name: "--min-size --max-size",
        flags: &["-a", "--min-size=10", "--max-size=1k"],
        setup: quick_tree,
        expect: |_, d| {
            assert!(!d.join("tiny.bin").exists() && !d.join("big.bin").exists());
            assert!(d.join("sub/mid.bin").exists());
        },
        code: 0,
        dir_times: true,
    });
}

/// Symlinks of every kind for -L, -k, --copy-unsafe-links, --safe-links.
fn link_tree(src: &Path, _dst: &Path) {
    put(src, "file.txt", b"plain file", T0);
    put(src, "dir/inner.txt", b"inside dir", T0);
    // Outside the transfer: a sibling of the source directory.
    let outside = src.parent().unwrap().join("outside");
    put(&outside, "secret.txt", b"outside the tree", T0);
    symlink("file.txt", src.join("to_file")).unwrap();
    symlink("dir", src.join("to_dir")).unwrap();
    symlink("../outside/secret.txt", src.join("escape")).unwrap();
    symlink("../outside", src.join("escape_dir")).unwrap();
    symlink("/etc/hostname", src.join("absolute")).unwrap();
    symlink("../file.txt", src.join("dir/up")).unwrap();
    settle(src);
    settle(&outside);
}

fn is_link(p: &Path) -> bool {
    fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_symlink())
}

#[test]
fn copy_links_follows_every_link() {
    check(&Case {
        name: "-L",
        flags: &["-a", "-L"],
        setup: link_tree,
        expect: |_, d| {
            assert!(!is_link(&d.join("to_file")) && d.join("to_dir/inner.txt").is_file());
            assert_eq!(read(&d.join("escape")).unwrap(), b"outside the tree");
        },
        code: 0,
        dir_times: true,
    });
}

#[test]
fn copy_dirlinks_follows_links_to_directories() {
    check(&Case {
        name: "-k",
        flags: &["-a", "-k"],
        setup: link_tree,
        expect: |_, d| {
            assert!(is_link(&d.join("to_file")));
            assert!(!is_link(&d.join("to_dir")) && d.join("to_dir/inner.txt").is_file());
        },
        code: 0,
        dir_times: true,
    });
}

#[test]
fn copy_unsafe_links_follows_links_leaving_the_tree() {
    check(&Case {
        name: "--copy-unsafe-links",
        flags: &["-a", "--copy-unsafe-links"],
        setup: link_tree,
        expect: |_, d| {
            assert!(is_link(&d.join("to_file")) && is_link(&d.join("dir/up")));
            assert!(!is_link(&d.join("escape")) && d.join("escape_dir/secret.txt").is_file());
        },
        code: 0,
        dir_times: true,
    });
}

#[test]
fn safe_links_drops_links_leaving_the_tree() {
    check(&Case {
        name: "--safe-links",
        flags: &["-a", "--safe-links"],
        setup: link_tree,
        expect: |_, d| {
            assert!(is_link(&d.join("to_file")) && is_link(&d.join("dir/up")));
            assert!(!d.join("escape").exists() && !is_link(&d.join("absolute")));
        },
        code: 0,
        dir_times: true,
    });
}

/// Nested directories, some with no files below them, for -m and -d.
fn sparse_dirs(src: &Path, _dst: &Path) {
    put(src, "top.txt", b"top", T0);
    put(src, "full/deep/file.txt", b"deep file", T0);
    fs::create_dir_all(src.join("empty/nested/deeper")).unwrap();
    fs::create_dir_all(src.join("full/hollow")).unwrap();
    settle(src);
}

#[test]
fn prune_empty_dirs() {
    check(&Case {
        name: "-m",
        flags: &["-a", "-m"],
        setup: sparse_dirs,
        expect: |_, d| {
            assert!(d.join("full/deep/file.txt").is_file());
            assert!(!d.join("empty").exists() && !d.join("full/hollow").exists());
        },
        code: 0,
        dir_times: true,
    });
}

#[test]
fn dirs_without_recursion() {
    check(&Case {
        name: "-d",
        flags: &["-lptgoD", "-d"],
        setup: sparse_dirs,
        expect: |_, d| {
            assert!(d.join("top.txt").is_file() && d.join("full").is_dir());
            assert!(!d.join("full/deep").exists() && !d.join("empty/nested").exists());
        },
        code: 0,
        dir_times: true,
    });
}

#[test]
fn chmod_on_the_modes_sent() {
    check(&Case {
        name: "--chmod",
        flags: &["-a", "--chmod=Fgo-rwx,Dg+s,u+x"],
        setup: quick_tree,
        expect: |_, d| {
            let m = fs::metadata(d.join("new.txt"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(m & 0o777, 0o700, "{m:o}");
            let m = fs::metadata(d.join("newdir")).unwrap().permissions().mode();
            assert_eq!(m & 0o2000, 0o2000, "{m:o}");
        },
        code: 0,
        dir_times: true,
    });
}

/// A destination with extra files, some excluded from the transfer.
fn extras_tree(src: &Path, dst: &Path) {
    put(src, "keep.txt", b"kept", T0);
    put(src, "sub/keep2.txt", b"kept too", T0);
    for n in ["x1.txt", "x2.txt", "x3.txt", "x4.log", "sub/x5.txt"] {
        put(dst, n, b"extraneous", T0);
    }
    put(src, "skip.log", b"excluded in the source", T0);
    settle(src);
    settle(dst);
}

#[test]
fn max_delete_stops_with_code_25() {
    check(&Case {
        name: "--max-delete",
        flags: &["-a", "--delete", "--max-delete=2"],
        setup: extras_tree,
        expect: |_, d| {
            let left = ["x1.txt", "x2.txt", "x3.txt", "x4.log", "sub/x5.txt"]
                .iter()
                .filter(|n| d.join(n).exists())
                .count();
            assert_eq!(left, 3);
        },
        code: 25,
        dir_times: true,
    });
}

#[test]
fn max_delete_zero_deletes_nothing() {
    check(&Case {
        name: "--max-delete=0",
        flags: &["-a", "--delete", "--max-delete=0"],
        setup: extras_tree,
        expect: |_, d| assert!(d.join("x1.txt").exists() && d.join("sub/x5.txt").exists()),
        code: 25,
        dir_times: true,
    });
}

#[test]
fn delete_excluded_removes_excluded_files() {
    check(&Case {
        name: "--delete-excluded",
        flags: &["-a", "--delete", "--delete-excluded", "--exclude=*.log"],
        setup: extras_tree,
        expect: |_, d| {
            assert!(!d.join("x4.log").exists() && !d.join("skip.log").exists());
            assert!(d.join("keep.txt").exists() && !d.join("x1.txt").exists());
        },
        code: 0,
        dir_times: true,
    });
}

#[test]
fn exclude_protects_without_delete_excluded() {
    check(&Case {
        name: "--delete --exclude",
        flags: &["-a", "--delete", "--exclude=*.log"],
        setup: extras_tree,
        expect: |_, d| assert!(d.join("x4.log").exists() && !d.join("x1.txt").exists()),
        code: 0,
        dir_times: true,
    });
}

#[test]
fn remove_source_files_after_confirmation() {
    check(&Case {
        name: "--remove-source-files",
        flags: &["-a", "--remove-source-files"],
        setup: quick_tree,
        expect: |s, d| {
            // Sent and unchanged files leave the source; directories stay.
            assert!(!s.join("new.txt").exists() && !s.join("same.txt").exists());
            assert!(s.join("newdir").is_dir() && d.join("newdir/inner.txt").is_file());
        },
        code: 0,
        dir_times: true,
    });
}

/// Source and destination arguments of a transfer with the daemon's module `m` (whose path is
/// `base`) on 127.0.0.1:`port`: `src/` to the module's copy of `dst`, or the module's `src/`
/// to `dst`.
fn daemon_endpoints(
    dir: Direction,
    base: &Path,
    port: u16,
    src: &Path,
    dst: &Path,
) -> (String, String) {
    let url = |p: &Path| {
        let rel = p.strip_prefix(base).unwrap();
        format!("rsync://127.0.0.1:{port}/m/{}", rel.display())
    };
    match dir {
        Direction::Push => (format!("{}/", src.display()), url(dst)),
        Direction::Pull => (format!("{}/", url(src)), dst.display().to_string()),
    }
}

/// `client`, set up to reach `server` through the stand-in for ssh `rsh`, with no stdin.
fn client_cmd(client: &OsStr, rsh: &Path, server: &OsStr) -> Command {
    let mut cmd = Command::new(client);
    cmd.args(["-e", &rsh.to_string_lossy(), "--rsync-path"])
        .arg(server)
        .stdin(std::process::Stdio::null());
    cmd
}

/// Runs `client` (reaching `server` through `rsh`) in `work` with `flags`, where `{work}`
/// stands for that directory, then `paths`.
fn run_in<P: AsRef<OsStr>>(
    work: &Path,
    client: &OsStr,
    rsh: &Path,
    server: &OsStr,
    flags: &[&str],
    paths: [P; 2],
) -> Output {
    let here = work.to_string_lossy();
    client_cmd(client, rsh, server)
        .current_dir(work)
        .args(flags.iter().map(|f| f.replace("{work}", &here)))
        .args(paths)
        .output()
        .unwrap()
}

/// `--list-only` output of `client` (with `server`) for `args`.
fn listing(rsh: &Path, client: &OsString, server: &OsString, args: &[&str]) -> Output {
    client_cmd(client, rsh, server).args(args).output().unwrap()
}

#[test]
fn list_only_matches_rsync() {
    let tmp = scratch_dir().unwrap();
    let rsh = install_fake_ssh(tmp.path()).unwrap();
    let src = tmp.path().join("src");
    quick_tree(&src, &tmp.path().join("unused"));
    let remote = format!("fakehost:{}/", src.display());
    let remote_dir = format!("fakehost:{}", src.display());
    // With a remote destination the local source is listed and nothing is
    // written there.
    let local = format!("{}/", src.display());
    let nowhere = tmp.path().join("nowhere");
    let remote_dst = format!("fakehost:{}/", nowhere.display());
    for args in [
        vec![remote.as_str()],
        vec!["-r", remote.as_str()],
        vec!["--list-only", "-a", remote.as_str()],
        vec![remote_dir.as_str()],
        vec!["--list-only", "-a", local.as_str(), remote_dst.as_str()],
    ] {
        let want = listing(&rsh, &rsync_bin(), &rsync_bin(), &args);
        assert_eq!(want.status.code(), Some(0), "{args:?}: {want:?}");
        let text = String::from_utf8_lossy(&want.stdout).into_owned();
        assert!(text.lines().count() >= 1, "{args:?}: empty listing");
        // (An rsync client pushing --list-only gets the listing from the
        // receiving server.)
        for (label, client, server) in pairings(&arsync_bin()).into_iter().skip(1) {
            let got = listing(&rsh, &client, &server, &args);
            assert_eq!(
                (
                    got.status.code(),
                    String::from_utf8_lossy(&got.stdout).into_owned()
                ),
                (Some(0), text.clone()),
                "{label} {args:?}: stderr {}",
                String::from_utf8_lossy(&got.stderr)
            );
        }
        assert!(!nowhere.exists(), "{args:?} made the destination");
    }
}

fn owned_tree(src: &Path, _dst: &Path) {
    put(src, "a.txt", b"owned", T0);
    put(src, "d/b.txt", b"owned too", T0);
    settle(src);
}

fn owner_of(p: &Path) -> (u32, u32) {
    use std::os::unix::fs::MetadataExt;
    let m = fs::symlink_metadata(p).unwrap();
    (m.uid(), m.gid())
}

#[test]
fn chown_and_id_maps() {
    if !arsync_testutil::is_root() {
        eprintln!("skipped: setting owners needs root");
        return;
    }
    check(&Case {
        name: "--chown",
        flags: &["-a", "--chown=nobody:nogroup"],
        setup: owned_tree,
        expect: |_, d| assert_eq!(owner_of(&d.join("d/b.txt")), (65534, 65534)),
        code: 0,
        dir_times: true,
    });
    check(&Case {
        name: "--usermap --groupmap",
        flags: &["-a", "--usermap=0:nobody,*:0", "--groupmap=root:nogroup"],
        setup: owned_tree,
        expect: |_, d| assert_eq!(owner_of(&d.join("a.txt")), (65534, 65534)),
        code: 0,
        dir_times: true,
    });
}

/// Unmounts every mount point below `root` (deepest first).
fn unmount_below(root: &Path) {
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let mut points: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split(' ').nth(1))
        .filter(|p| Path::new(p).starts_with(root))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        let _ = Command::new("umount").arg(p).status();
    }
}

/// A source with a tmpfs mounted at `mnt/` (needs root).
fn mounted_tree(src: &Path, _dst: &Path) {
    put(src, "top.txt", b"on the source file system", T0);
    fs::create_dir_all(src.join("mnt")).unwrap();
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "none"])
        .arg(src.join("mnt"))
        .status()
        .unwrap();
    assert!(st.success(), "mount tmpfs");
    put(src, "mnt/other.txt", b"on another file system", T0);
    settle(src);
}

#[test]
fn one_file_system() {
    let tmp = scratch_dir().unwrap();
    let probe = tmp.path().join("probe");
    fs::create_dir_all(&probe).unwrap();
    let can_mount = arsync_testutil::is_root()
        && Command::new("mount")
            .args(["-t", "tmpfs", "none"])
            .arg(&probe)
            .status()
            .is_ok_and(|s| s.success());
    unmount_below(tmp.path());
    if !can_mount {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    }
    let cases = [
        Case {
            name: "-x",
            flags: &["-a", "-x"],
            setup: mounted_tree,
            expect: |_, d| assert!(d.join("mnt").is_dir() && !d.join("mnt/other.txt").exists()),
            code: 0,
            dir_times: true,
        },
        Case {
            name: "-xx",
            flags: &["-a", "-xx"],
            setup: mounted_tree,
            expect: |_, d| assert!(!d.join("mnt").exists() && d.join("top.txt").exists()),
            code: 0,
            dir_times: true,
        },
    ];
    for (k, case) in cases.iter().enumerate() {
        let dir = tmp.path().join(format!("case{k}"));
        let res = std::panic::catch_unwind(|| check_in(case, &dir));
        unmount_below(tmp.path());
        if let Err(p) = res {
            std::panic::resume_unwind(p);
        }
    }
}

/// A destination with older versions of files and extras, for backups.
fn backup_tree(src: &Path, dst: &Path) {
    put(src, "a.txt", b"new a", T0 + 100);
    put(src, "d/b.txt", b"new b", T0 + 100);
    put(src, "same.txt", b"unchanged", T0);
    put(dst, "a.txt", b"old a", T0);
    put(dst, "d/b.txt", b"old b", T0);
    put(dst, "same.txt", b"unchanged", T0);
    put(dst, "gone.txt", b"deleted", T0);
    put(dst, "old~", b"an earlier backup", T0);
    settle(src);
    settle(dst);
}

#[test]
fn backup_with_suffix() {
    check(&Case {
        name: "-b",
        flags: &["-a", "-b", "--delete"],
        setup: backup_tree,
        expect: |_, d| {
            assert_eq!(read(&d.join("a.txt~")).unwrap(), b"old a");
            assert_eq!(read(&d.join("d/b.txt~")).unwrap(), b"old b");
            assert_eq!(read(&d.join("gone.txt~")).unwrap(), b"deleted");
            assert!(d.join("old~").exists() && !d.join("same.txt~").exists());
        },
        code: 0,
        dir_times: false,
    });
    check(&Case {
        name: "-b --suffix",
        flags: &["-a", "-b", "--suffix=.bak"],
        setup: backup_tree,
        expect: |_, d| assert_eq!(read(&d.join("d/b.txt.bak")).unwrap(), b"old b"),
        code: 0,
        dir_times: false,
    });
}

#[test]
fn backup_dir() {
    check(&Case {
        name: "--backup-dir",
        flags: &["-a", "-b", "--backup-dir=bak", "--delete", "--exclude=/bak"],
        setup: backup_tree,
        expect: |_, d| {
            assert_eq!(read(&d.join("bak/d/b.txt")).unwrap(), b"old b");
            assert_eq!(read(&d.join("bak/gone.txt")).unwrap(), b"deleted");
            assert!(!d.join("a.txt~").exists());
        },
        code: 0,
        dir_times: false,
    });
}

/// A basis directory `../prev` beside the destination holding an older
/// copy: `same.txt` identical, `changed.txt` different, `new.txt` absent.
fn basis_tree(src: &Path, dst: &Path) {
    let prev = dst.parent().unwrap().join("prev");
    for root in [src, prev.as_path()] {
        put(root, "same.txt", b"identical in both", T0);
        put(root, "sub/same2.txt", b"identical too", T0);
    }
    put(src, "changed.txt", b"newer content", T0 + 100);
    put(&prev, "changed.txt", b"older content", T0);
    put(src, "new.txt", b"only in the source", T0);
    // Same content, other permissions: copied locally, not linked or skipped.
    put(src, "perm.txt", b"same bytes", T0);
    put(&prev, "perm.txt", b"same bytes", T0);
    fs::set_permissions(prev.join("perm.txt"), fs::Permissions::from_mode(0o600)).unwrap();
    // An outdated copy in the destination with an exact match in prev.
    put(src, "stale.txt", b"current", T0);
    put(&prev, "stale.txt", b"current", T0);
    put(dst, "stale.txt", b"outdated!", T0 - 100);
    settle(src);
    settle(&prev);
    settle(dst);
}

fn inode(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    fs::symlink_metadata(p).unwrap().ino()
}

#[test]
fn compare_copy_and_link_dest() {
    check(&Case {
        name: "--compare-dest",
        flags: &["-a", "--compare-dest=../prev"],
        setup: basis_tree,
        expect: |_, d| {
            assert!(!d.join("same.txt").exists() && !d.join("sub/same2.txt").exists());
            assert!(d.join("changed.txt").exists() && d.join("new.txt").exists());
            assert!(d.join("perm.txt").exists() && !d.join("stale.txt").exists());
        },
        code: 0,
        dir_times: true,
    });
    check(&Case {
        name: "--copy-dest",
        flags: &["-a", "--copy-dest=../prev"],
        setup: basis_tree,
        expect: |_, d| {
            let prev = d.parent().unwrap().join("prev");
            assert_eq!(read(&d.join("same.txt")).unwrap(), b"identical in both");
            assert_ne!(inode(&d.join("same.txt")), inode(&prev.join("same.txt")));
        },
        code: 0,
        dir_times: true,
    });
    check(&Case {
        name: "--link-dest",
        flags: &["-a", "--link-dest=../prev"],
        setup: basis_tree,
        expect: |_, d| {
            let prev = d.parent().unwrap().join("prev");
            assert_eq!(
                inode(&d.join("sub/same2.txt")),
                inode(&prev.join("sub/same2.txt"))
            );
            assert_ne!(
                inode(&d.join("changed.txt")),
                inode(&prev.join("changed.txt"))
            );
            assert_ne!(inode(&d.join("perm.txt")), inode(&prev.join("perm.txt")));
            assert_eq!(inode(&d.join("stale.txt")), inode(&prev.join("stale.txt")));
        },
        code: 0,
        dir_times: true,
    });
}

/// A source tree and a `--files-from` list beside it (`list`, and
/// `list0` NUL-separated).
fn files_from_tree(src: &Path, _dst: &Path) {
    put(src, "a.txt", b"listed", T0);
    put(src, "b.txt", b"not listed", T0);
    put(src, "deep/er/c.txt", b"listed deep", T0);
    put(src, "deep/other.txt", b"not listed", T0);
    put(src, "dir/inner.txt", b"inside a listed dir", T0);
    settle(src);
    let names = ["a.txt", "deep/er/c.txt", "dir"];
    let parent = src.parent().unwrap();
    fs::write(parent.join("list"), names.join("\n") + "\n").unwrap();
    fs::write(parent.join("list0"), names.join("\0") + "\0").unwrap();
}

/// What `--files-from=list` (without `-r`) transfers.
fn files_from_expect(_: &Path, d: &Path) {
    assert!(d.join("a.txt").exists() && d.join("deep/er/c.txt").exists());
    assert!(!d.join("b.txt").exists() && !d.join("deep/other.txt").exists());
    // A listed directory without -r: the directory only.
    assert!(d.join("dir").is_dir() && !d.join("dir/inner.txt").exists());
}

#[test]
fn files_from_local_list() {
    // Each run has its own `<work>/list`; the client runs in `<work>`.
    // A list on the remote host (`h:PATH`) is read by the sending server,
    // or on a push forwarded by the receiving server to the client.
    for (name, flags, dirs) in [
        (
            "--files-from",
            &["-a", "--files-from=list"][..],
            &[Direction::Push, Direction::Pull][..],
        ),
        (
            "--files-from --from0",
            &["-a", "--from0", "--files-from=list0"][..],
            &[Direction::Push, Direction::Pull][..],
        ),
        (
            "--files-from -r",
            &["-a", "-r", "--files-from=list"][..],
            &[Direction::Push, Direction::Pull][..],
        ),
        (
            "--files-from=h:",
            &["-a", "--files-from=h:{work}/list"][..],
            &[Direction::Push, Direction::Pull][..],
        ),
    ] {
        let tmp = scratch_dir().unwrap();
        let rsh = install_fake_ssh(tmp.path()).unwrap();
        for &dir in dirs {
            let mut results = Vec::new();
            for (label, client, server) in pairings(&arsync_bin()) {
                let work = tmp.path().join(format!("{dir:?}-{label}"));
                let (src, dst) = (work.join("src"), work.join("dst"));
                fs::create_dir_all(&src).unwrap();
                files_from_tree(&src, &dst);
                let (from, to) = match dir {
                    Direction::Push => (src.display().to_string(), format!("h:{}", dst.display())),
                    Direction::Pull => (format!("h:{}", src.display()), dst.display().to_string()),
                };
                let out = run_in(&work, &client, &rsh, &server, flags, [&from, &to]);
                let what = format!("{name} {dir:?} {label}");
                assert_eq!(out.status.code(), Some(0), "{what}: {out:?}");
                if !flags.contains(&"-r") {
                    files_from_expect(&src, &dst);
                } else {
                    assert!(dst.join("dir/inner.txt").exists(), "{what}");
                }
                results.push((what, dst));
            }
            // The destination root is not in the list: its mtime is when
            // the transfer wrote into it.
            let cmp = CompareOpts {
                root_metadata: false,
                ..CompareOpts::default()
            };
            assert_trees_match_first(&results, &cmp);
        }
    }
}

#[test]
fn dirs_without_recursion_delete() {
    check(&Case {
        name: "-d --delete",
        flags: &["-lptgoD", "-d", "--delete"],
        setup: |s, d| {
            sparse_dirs(s, d);
            put(d, "extra.txt", b"extraneous", T0);
            put(d, "full/keep_below.txt", b"not in a content dir", T0);
            settle(d);
        },
        expect: |_, d| {
            assert!(!d.join("extra.txt").exists());
            assert!(d.join("full/keep_below.txt").exists());
        },
        code: 0,
        dir_times: true,
    });
}

#[test]
fn remove_source_files_with_hard_links() {
    check(&Case {
        name: "--remove-source-files -H",
        flags: &["-aH", "--remove-source-files"],
        setup: |s, d| {
            put(s, "a.txt", b"linked", T0);
            fs::create_dir_all(s.join("d")).unwrap();
            fs::hard_link(s.join("a.txt"), s.join("d/b.txt")).unwrap();
            put(s, "c.txt", b"plain", T0);
            settle(s);
            fs::create_dir_all(d).unwrap();
        },
        expect: |s, d| {
            assert!(!s.join("a.txt").exists() && !s.join("d/b.txt").exists());
            assert!(d.join("d/b.txt").exists() && !s.join("c.txt").exists());
        },
        code: 0,
        dir_times: true,
    });
}

/// Several options at once through `rsync://` (the daemon's argument
/// vector), arsync and rsync as client and as daemon, push and pull.
#[test]
fn options_through_a_daemon() {
    let tmp = scratch_dir().unwrap();
    let base = tmp.path().join("mod");
    fs::create_dir_all(&base).unwrap();
    let cfg = tmp.path().join("d.conf");
    write_module_config(&cfg, &base).unwrap();
    let flags = [
        "-a",
        "-u",
        "--delete",
        "--max-delete=1",
        "-b",
        "--min-size=3",
        "--ignore-times",
    ];
    let run = |daemon: &Daemon, client: &OsString, dir: Direction, label: &str| {
        let work = base.join(label);
        let (src, dst) = (work.join("src"), work.join("dst"));
        fs::create_dir_all(&src).unwrap();
        quick_tree(&src, &dst);
        put(&dst, "extra1", b"extraneous", T0);
        put(&dst, "extra2", b"extraneous", T0);
        settle(&dst);
        let (from, to) = daemon_endpoints(dir, &base, daemon.port, &src, &dst);
        let out = Command::new(client)
            .args(flags)
            .args([&from, &to])
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        (out, src, dst)
    };
    let rsyncd = start_daemon(&rsync_bin(), &cfg).unwrap();
    let arsyncd = start_daemon(&arsync_bin(), &cfg).unwrap();
    for dir in [Direction::Push, Direction::Pull] {
        let (want, want_src, want_dst) = run(&rsyncd, &rsync_bin(), dir, &format!("{dir:?}-ref"));
        // rsync's daemon does not pass its exit code to a pushing client;
        // a pulling client's own generator ends with 25.
        let code = match dir {
            Direction::Push => 0,
            Direction::Pull => 25,
        };
        assert_eq!(want.status.code(), Some(code), "reference: {want:?}");
        assert_eq!(
            read(&want_dst.join("newer_there.txt")).unwrap(),
            b"newer target!"
        );
        let extras = ["extra1", "extra2"]
            .iter()
            .filter(|n| want_dst.join(n).exists())
            .count();
        assert_eq!(extras, 1, "--max-delete=1 leaves one of two extras");
        for (label, daemon, client) in [
            ("arsync-to-rsyncd", &rsyncd, arsync_bin()),
            ("rsync-to-arsyncd", &arsyncd, rsync_bin()),
            ("arsync-to-arsyncd", &arsyncd, arsync_bin()),
        ] {
            let (got, src, dst) = run(daemon, &client, dir, &format!("{dir:?}-{label}"));
            let what = format!("{dir:?} {label}");
            assert_eq!(got.status.code(), want.status.code(), "{what}: {got:?}");
            let cmp = CompareOpts {
                dir_mtime: false,
                ..CompareOpts::default()
            };
            for (a, b) in [(&want_dst, &dst), (&want_src, &src)] {
                let diffs = compare_trees(a, b, &cmp);
                assert!(diffs.is_empty(), "{what}: differs from rsync's: {diffs:#?}");
            }
        }
    }
}

/// A destination with older versions of files, each hard-linked to a
/// second name, so writing in place is visible through the other name.
fn inplace_tree(src: &Path, dst: &Path) {
    let big: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let mut changed = big.clone();
    changed[100_000..100_100].fill(0xAA);
    // Blocks move: the new file starts with what was the old file's end.
    changed.rotate_left(60_000);
    put(src, "big.bin", &changed, T0 + 100);
    put(dst, "big.bin", &big, T0);
    fs::hard_link(dst.join("big.bin"), dst.join("big.other")).unwrap();
    put(src, "big.other", &big, T0);
    put(src, "shrinks.txt", b"short now", T0 + 100);
    put(dst, "shrinks.txt", &[b'x'; 5000], T0);
    put(src, "new.txt", b"a new file", T0);
    settle(src);
    settle(dst);
}

#[test]
fn inplace_writes_into_the_existing_file() {
    check(&Case {
        name: "--inplace",
        flags: &["-a", "--inplace"],
        setup: inplace_tree,
        expect: |s, d| {
            // The other name of the same inode sees the new data.
            assert_eq!(read(&d.join("big.other")), read(&s.join("big.bin")));
            assert_eq!(read(&d.join("shrinks.txt")).unwrap(), b"short now");
            assert_eq!(read(&d.join("new.txt")).unwrap(), b"a new file");
        },
        code: 0,
        dir_times: true,
    });
}

/// Shorter destination files: one a true prefix of the source, one with
/// other data in the part it has.
fn append_tree(src: &Path, dst: &Path) {
    let data: Vec<u8> = (0..50_000u32).map(|i| (i % 253) as u8).collect();
    put(src, "grows.log", &data, T0 + 100);
    put(dst, "grows.log", &data[..20_000], T0);
    put(src, "differs.log", &data, T0 + 100);
    let mut wrong = data[..30_000].to_vec();
    wrong[10..20].fill(b'!');
    put(dst, "differs.log", &wrong, T0);
    put(src, "long_there.log", b"short", T0 + 100);
    put(dst, "long_there.log", b"already longer", T0);
    put(src, "new.log", b"new", T0);
    settle(src);
    settle(dst);
}

#[test]
fn append_sends_only_the_tail() {
    check(&Case {
        name: "--append",
        flags: &["-a", "--append"],
        setup: append_tree,
        expect: |s, d| {
            assert_eq!(read(&d.join("grows.log")), read(&s.join("grows.log")));
            // The differing part is not looked at.
            let got = read(&d.join("differs.log")).unwrap();
            assert_eq!(&got[10..20], b"!!!!!!!!!!");
            assert_eq!(got.len(), 50_000);
            assert_eq!(read(&d.join("long_there.log")).unwrap(), b"already longer");
        },
        code: 0,
        dir_times: true,
    });
}

#[test]
fn append_verify_redoes_a_mismatch() {
    check(&Case {
        name: "--append-verify",
        flags: &["-a", "--append-verify"],
        setup: append_tree,
        expect: |s, d| {
            assert_eq!(read(&d.join("grows.log")), read(&s.join("grows.log")));
            assert_eq!(read(&d.join("differs.log")), read(&s.join("differs.log")));
            assert_eq!(read(&d.join("long_there.log")).unwrap(), b"already longer");
        },
        code: 0,
        dir_times: true,
    });
}

#[test]
fn temp_dir_holds_the_temporary_files() {
    check(&Case {
        name: "--temp-dir",
        flags: &["-a", "--temp-dir=.scratch", "--exclude=/.scratch"],
        setup: |s, d| {
            quick_tree(s, d);
            fs::create_dir_all(d.join(".scratch")).unwrap();
            settle(d);
        },
        expect: |_, d| {
            use std::os::unix::fs::MetadataExt;
            assert_eq!(read(&d.join("new.txt")).unwrap(), b"brand new");
            let scratch = d.join(".scratch");
            assert_eq!(fs::read_dir(&scratch).unwrap().count(), 0);
            // Temporary files came and went there.
            assert_ne!(fs::metadata(&scratch).unwrap().mtime(), 1_500_000_000);
        },
        code: 0,
        // The scratch directory's time is when the last temporary file left.
        dir_times: false,
    });
}

#[test]
fn temp_dir_must_exist() {
    // rsync reports each file it cannot create a temporary file for.
    let tmp = scratch_dir().unwrap();
    let rsh = install_fake_ssh(tmp.path()).unwrap();
    let src = tmp.path().join("src");
    put(&src, "a.txt", b"data", T0);
    for (label, client, server) in [
        ("rsync->rsync", rsync_bin(), rsync_bin()),
        ("arsync->rsync", arsync_bin(), rsync_bin()),
        ("rsync->arsync", rsync_bin(), arsync_bin()),
    ] {
        let dst = tmp.path().join(label);
        fs::create_dir_all(&dst).unwrap();
        let out = run_over_shell(
            &client,
            &server,
            &rsh,
            &["-a", "--temp-dir=missing"],
            &format!("{}/", src.display()),
            &format!("fakehost:{}", dst.display()),
        )
        .unwrap();
        assert_ne!(out.status.code(), Some(0), "{label}: {out:?}");
        assert!(!dst.join("a.txt").exists(), "{label}");
    }
}

/// A stand-in for ssh whose connection breaks after `$CUT` bytes: of the
/// client's output for a push (`$CUT_SIDE` = push), of the server's output
/// for a pull.
const CUTTING_SSH: &str = concat!(
    "#!/bin/sh\n",
    arsync_testutil::ssh_skip_to_command!(),
    r#"if [ "$CUT_SIDE" = push ]; then
  dd bs=65536 iflag=count_bytes count="$CUT" status=none | sh -c "$*"
else
  sh -c "$*" | dd bs=65536 iflag=count_bytes count="$CUT" status=none
fi
"#
);

/// The number in rsync's (or arsync's) `--stats` line `Matched data: N bytes`.
fn matched_bytes(stdout: &[u8]) -> Option<u64> {
    let text = String::from_utf8_lossy(stdout);
    let line = text.lines().find(|l| l.starts_with("Matched data:"))?;
    let digits: String = line
        .trim_start_matches("Matched data:")
        .chars()
        .take_while(|c| !c.is_alphabetic())
        .filter(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

#[test]
fn partial_dir_keeps_a_cut_off_file_and_resumes_from_it() {
    let tmp = scratch_dir().unwrap();
    let rsh = install_fake_ssh(tmp.path()).unwrap();
    let cutting = tmp.path().join("cutting-ssh");
    fs::write(&cutting, CUTTING_SSH).unwrap();
    fs::set_permissions(&cutting, fs::Permissions::from_mode(0o755)).unwrap();
    // Data that does not compress and has no repeats.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let data: Vec<u8> = (0..3_000_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    for keep in ["--partial-dir=.part", "--partial", ABSOLUTE_PARTIAL_DIR] {
        let dir = tmp.path().join(keep.trim_start_matches('-'));
        cut_and_resume(&dir, &rsh, &cutting, keep, &data);
    }
}

/// Stands for `--partial-dir=<an absolute directory of the scenario>` in
/// [`cut_and_resume`].
const ABSOLUTE_PARTIAL_DIR: &str = "--partial-dir=<absolute>";

/// One `--partial`/`--partial-dir` scenario of
/// [`partial_dir_keeps_a_cut_off_file_and_resumes_from_it`].
fn cut_and_resume(tmp: &Path, rsh: &Path, cutting: &Path, keep: &str, data: &[u8]) {
    use std::os::unix::fs::MetadataExt;
    let in_dir = keep.starts_with("--partial-dir");
    let mut finals = Vec::new();
    // Whether the absolute partial directory is still there at the end,
    // per pairing (rsync's receiver leaves it, empty).
    let mut abs_left = Vec::new();
    for (label, client, server) in pairings(&arsync_bin()) {
        for dir in [Direction::Push, Direction::Pull] {
            let what = format!("{label} {dir:?}");
            let work = tmp.join(format!("{label}-{dir:?}"));
            let (src, dst) = (work.join("src"), work.join("dst"));
            // An absolute --partial-dir: one directory outside the
            // destination, created by the receiver (not the client).
            let abs = work.join("outside/partial");
            fs::create_dir_all(abs.parent().unwrap()).unwrap();
            let keep = match keep {
                ABSOLUTE_PARTIAL_DIR => format!("--partial-dir={}", abs.display()),
                k => k.to_string(),
            };
            let flags = ["-a", keep.as_str(), "--stats"];
            put(&src, "sub/big.bin", data, T0);
            fs::set_permissions(src.join("sub/big.bin"), fs::Permissions::from_mode(0o640))
                .unwrap();
            put(&src, "small.txt", b"small", T0);
            fs::create_dir_all(&dst).unwrap();
            settle(&src);
            let (from, to) = dir.endpoints(&src, &dst);
            let side = match dir {
                Direction::Push => "push",
                Direction::Pull => "pull",
            };
            let cut = Command::new(&client)
                .args(flags)
                .arg("-e")
                .arg(cutting)
                .arg("--rsync-path")
                .arg(&server)
                .args([&from, &to])
                .env("CUT", "1500000")
                .env("CUT_SIDE", side)
                .stdin(std::process::Stdio::null())
                .output()
                .unwrap();
            assert_ne!(cut.status.code(), Some(0), "{what}: {cut:?}");
            let kept = match (in_dir, keep.contains(&*abs.to_string_lossy())) {
                (true, true) => abs.join("big.bin"),
                (true, false) => dst.join("sub/.part/big.bin"),
                (false, _) => dst.join("sub/big.bin"),
            };
            if kept.starts_with(&abs) {
                let m = fs::metadata(&abs).unwrap().mode();
                assert_eq!(m & 0o777, 0o700, "{what}: partial dir mode {m:o}");
            }
            let m = fs::metadata(&kept)
                .unwrap_or_else(|e| panic!("{what}: no partial file: {e} {cut:?}"));
            let len = m.len();
            // The source's permissions; without a partial dir mtime 0.
            assert_eq!(m.mode() & 0o7777, 0o640, "{what}");
            assert_eq!(m.mtime() == 0, !in_dir, "{what}: mtime {}", m.mtime());
            assert!(
                len > 0 && len < data.len() as u64,
                "{what}: {len} bytes kept"
            );
            assert_eq!(dst.join("sub/big.bin").exists(), !in_dir, "{what}");
            // The next run resumes: the kept part is the delta basis.
            let out = run_over_shell(&client, &server, rsh, &flags, &from, &to).unwrap();
            assert_eq!(out.status.code(), Some(0), "{what}: {out:?}");
            assert_eq!(read(&dst.join("sub/big.bin")).unwrap(), data, "{what}");
            assert!(!dst.join("sub/.part").exists(), "{what}: partial dir left");
            assert!(!kept.exists() || !in_dir, "{what}: partial file left");
            abs_left.push(abs.exists());
            let matched = matched_bytes(&out.stdout);
            assert!(
                matched.is_some_and(|m| m > 0),
                "{what}: matched {matched:?}"
            );
            finals.push((what, dst));
        }
    }
    assert!(
        abs_left.iter().all(|&l| l == abs_left[0]),
        "{keep}: absolute partial dir left behind: {abs_left:?}"
    );
    let (_, reference) = &finals[0];
    for (what, dst) in &finals[1..] {
        let cmp = CompareOpts {
            root_metadata: false,
            dir_mtime: false,
            ..CompareOpts::default()
        };
        let diffs = compare_trees(reference, dst, &cmp);
        assert!(diffs.is_empty(), "{what}: differs from rsync's: {diffs:#?}");
    }
}

#[test]
fn keep_dirlinks_writes_through_a_symlinked_directory() {
    check(&Case {
        name: "-K",
        flags: &["-a", "-K"],
        setup: |s, d| {
            put(s, "d/f.txt", b"into the linked dir", T0);
            put(s, "d/deeper/g.txt", b"deeper", T0);
            put(s, "top.txt", b"top", T0);
            put(d, "real/extra.txt", b"already there", T0);
            symlink("real", d.join("d")).unwrap();
            // The same modes on both sides: rsync 3.5.0 fails to chmod a
            // directory kept through a symlink (ELOOP, exit 23).
            for p in [s.join("d"), d.join("real")] {
                fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
            }
            settle(s);
            settle(d);
        },
        expect: |_, d| {
            assert!(is_link(&d.join("d")));
            assert_eq!(read(&d.join("real/f.txt")).unwrap(), b"into the linked dir");
            assert!(d.join("real/deeper/g.txt").is_file() && d.join("real/extra.txt").is_file());
        },
        code: 0,
        // The linked directory's time is when the files arrived.
        dir_times: false,
    });
}

#[test]
fn keep_dirlinks_sets_the_linked_directorys_mode() {
    // Where rsync 3.5.0 fails (ELOOP, exit 23), arsync's receiver gives
    // the directory the link stands for the source directory's mode.
    let tmp = scratch_dir().unwrap();
    let rsh = install_fake_ssh(tmp.path()).unwrap();
    for (label, client, server, push) in [
        ("arsync->rsync pull", arsync_bin(), rsync_bin(), false),
        ("rsync->arsync push", rsync_bin(), arsync_bin(), true),
    ] {
        let work = tmp.path().join(label.replace(' ', "-"));
        let (src, dst) = (work.join("src"), work.join("dst"));
        put(&src, "d/f.txt", b"data", T0);
        fs::set_permissions(src.join("d"), fs::Permissions::from_mode(0o700)).unwrap();
        fs::create_dir_all(dst.join("real")).unwrap();
        fs::set_permissions(dst.join("real"), fs::Permissions::from_mode(0o755)).unwrap();
        symlink("real", dst.join("d")).unwrap();
        let (from, to) = match push {
            true => (
                format!("{}/", src.display()),
                format!("fakehost:{}", dst.display()),
            ),
            false => (
                format!("fakehost:{}/", src.display()),
                dst.display().to_string(),
            ),
        };
        let out = run_over_shell(&client, &server, &rsh, &["-a", "-K"], &from, &to).unwrap();
        assert_eq!(out.status.code(), Some(0), "{label}: {out:?}");
        assert!(is_link(&dst.join("d")), "{label}");
        let mode = fs::metadata(dst.join("real")).unwrap().permissions().mode();
        assert_eq!(mode & 0o7777, 0o700, "{label}");
        assert!(dst.join("real/f.txt").is_file(), "{label}");
    }
}

#[test]
fn keep_dirlinks_never_leaves_the_destination() {
    // A symlink out of the destination is not followed by arsync's
    // receiver (rsync's would write through it): nothing lands outside.
    let tmp = scratch_dir().unwrap();
    let rsh = install_fake_ssh(tmp.path()).unwrap();
    let outside = tmp.path().join("outside");
    fs::create_dir_all(&outside).unwrap();
    for (label, client, server, push) in [
        ("arsync pull", arsync_bin(), rsync_bin(), false),
        ("arsync server push", rsync_bin(), arsync_bin(), true),
    ] {
        let work = tmp.path().join(label.replace(' ', "-"));
        let (src, dst) = (work.join("src"), work.join("dst"));
        put(&src, "d/f.txt", b"data", T0);
        fs::create_dir_all(&dst).unwrap();
        symlink(&outside, dst.join("d")).unwrap();
        let (from, to) = match push {
            true => (
                format!("{}/", src.display()),
                format!("fakehost:{}", dst.display()),
            ),
            false => (
                format!("fakehost:{}/", src.display()),
                dst.display().to_string(),
            ),
        };
        let out = run_over_shell(&client, &server, &rsh, &["-a", "-K"], &from, &to).unwrap();
        assert_ne!(out.status.code(), Some(0), "{label}: {out:?}");
        assert_eq!(fs::read_dir(&outside).unwrap().count(), 0, "{label}");
    }
}

#[test]
fn inplace_with_backups_copies_the_old_file_first() {
    check(&Case {
        name: "--inplace -b",
        flags: &["-a", "--inplace", "-b", "--backup-dir=old"],
        setup: inplace_tree,
        expect: |s, d| {
            assert_eq!(read(&d.join("big.other")), read(&s.join("big.bin")));
            // The backup has the old data (the copy the delta was made against).
            assert_eq!(read(&d.join("old/big.bin")), read(&s.join("big.other")));
            assert_eq!(read(&d.join("old/shrinks.txt")).unwrap(), vec![b'x'; 5000]);
        },
        code: 0,
        dir_times: false,
    });
}

#[test]
fn transfer_mode_conflicts_are_usage_errors() {
    let tmp = scratch_dir().unwrap();
    let rsh = install_fake_ssh(tmp.path()).unwrap();
    let src = tmp.path().join("src");
    put(&src, "a.txt", b"data", T0);
    for flags in [
        &["-a", "--inplace", "--delay-updates"][..],
        &["-a", "--inplace", "--partial-dir=.part"],
        &["-a", "--append", "-W"],
    ] {
        for (label, client, server) in pairings(&arsync_bin()) {
            let dst = tmp.path().join(format!("{label}-{}", flags[2]));
            fs::create_dir_all(&dst).unwrap();
            let out = run_over_shell(
                &client,
                &server,
                &rsh,
                flags,
                &format!("{}/", src.display()),
                &format!("fakehost:{}", dst.display()),
            )
            .unwrap();
            assert_eq!(out.status.code(), Some(1), "{label} {flags:?}: {out:?}");
            assert!(!dst.join("a.txt").exists(), "{label} {flags:?}");
        }
    }
}

/// The transfer modes through `rsync://` (the daemon's argument vector).
#[test]
fn transfer_modes_through_a_daemon() {
    let tmp = scratch_dir().unwrap();
    let base = tmp.path().join("mod");
    fs::create_dir_all(&base).unwrap();
    let cfg = tmp.path().join("d.conf");
    write_module_config(&cfg, &base).unwrap();
    let rsyncd = start_daemon(&rsync_bin(), &cfg).unwrap();
    let arsyncd = start_daemon(&arsync_bin(), &cfg).unwrap();
    for flags in [
        &["-rtE", "--inplace"][..],
        &["-a", "--append-verify", "-K"],
        &["-a", "--temp-dir=.scratch", "--partial-dir=.part"],
    ] {
        for dir in [Direction::Push, Direction::Pull] {
            let mut results = Vec::new();
            for (label, daemon, client) in [
                ("rsync-to-rsyncd", &rsyncd, rsync_bin()),
                ("arsync-to-rsyncd", &rsyncd, arsync_bin()),
                ("rsync-to-arsyncd", &arsyncd, rsync_bin()),
                ("arsync-to-arsyncd", &arsyncd, arsync_bin()),
            ] {
                let what = format!("{flags:?} {dir:?} {label}");
                let work = base.join(format!(
                    "{}-{dir:?}-{label}",
                    flags[1].trim_start_matches('-')
                ));
                let (src, dst) = (work.join("src"), work.join("dst"));
                append_tree(&src, &dst);
                inplace_tree(&src.join("more"), &dst.join("more"));
                fs::create_dir_all(dst.join(".scratch")).unwrap();
                settle(&dst);
                let (from, to) = daemon_endpoints(dir, &base, daemon.port, &src, &dst);
                let out = Command::new(&client)
                    .args(flags)
                    .args([&from, &to])
                    .stdin(std::process::Stdio::null())
                    .output()
                    .unwrap();
                assert_eq!(out.status.code(), Some(0), "{what}: {out:?}");
                results.push((what, dst));
            }
            let cmp = CompareOpts {
                dir_mtime: false,
                mtime: flags[0].contains('t'),
                root_metadata: false,
                ..CompareOpts::default()
            };
            assert_trees_match_first(&results, &cmp);
        }
    }
}

/// A daemon keeps a client's `--temp-dir` inside the module (rsync's
/// daemon sanitizes it the same way): no temporary file is created in an
/// absolute directory outside it.
#[test]
fn daemon_confines_the_temp_dir() {
    use std::os::unix::fs::MetadataExt;
    let tmp = scratch_dir().unwrap();
    let base = tmp.path().join("mod");
    let outside = tmp.path().join("outside");
    fs::create_dir_all(&base).unwrap();
    fs::create_dir_all(&outside).unwrap();
    let cfg = tmp.path().join("d.conf");
    write_module_config(&cfg, &base).unwrap();
    let arsyncd = start_daemon(&arsync_bin(), &cfg).unwrap();
    let src = tmp.path().join("src");
    put(&src, "a.txt", b"data", T0);
    for client in [rsync_bin(), arsync_bin()] {
        settle(&outside);
        let out = Command::new(&client)
            .args(["-a", "--temp-dir"])
            .arg(&outside)
            .arg(format!("{}/", src.display()))
            .arg(format!("rsync://127.0.0.1:{}/m/dst", arsyncd.port))
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        assert_ne!(out.status.code(), Some(0), "{out:?}");
        let m = fs::metadata(&outside).unwrap();
        assert_eq!(m.mtime(), 1_500_000_000, "a file came and went outside");
        assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
        assert!(!base.join("dst/a.txt").exists());
    }
}

/// One run of a pairing: its output and trees.
struct PairRun {
    label: &'static str,
    out: Output,
    src: PathBuf,
    dst: PathBuf,
}

/// Runs `flags` (`{work}` replaced by the run's own directory, where the
/// client runs) for every pairing in direction `dir`, each in a fresh tree
/// made by `setup(src, dst, work)`. The rsync->rsync run must exit 0 and
/// pass `expect`; every other pairing must exit as it did and leave the
/// same source and destination trees. Returns the runs, rsync's first.
fn compare_pairings(
    name: &str,
    flags: &[&str],
    dir: Direction,
    setup: fn(&Path, &Path, &Path),
    expect: fn(&Path, &Path),
) -> Vec<PairRun> {
    let tmp = scratch_dir().unwrap();
    let rsh = install_fake_ssh(tmp.path()).unwrap();
    let mut runs = Vec::new();
    for (label, client, server) in pairings(&arsync_bin()) {
        let work = tmp.path().join(label.replace('>', ""));
        let (src, dst) = (work.join("src"), work.join("dst"));
        fs::create_dir_all(&src).unwrap();
        fs::create_dir_all(&dst).unwrap();
        setup(&src, &dst, &work);
        let (from, to) = dir.endpoints(&src, &dst);
        let out = run_in(&work, &client, &rsh, &server, flags, [&from, &to]);
        runs.push(PairRun {
            label,
            out,
            src,
            dst,
        });
    }
    let show = |r: &PairRun| {
        format!(
            "{name} {dir:?} {}: exit {:?}\nstdout: {}\nstderr: {}",
            r.label,
            r.out.status.code(),
            String::from_utf8_lossy(&r.out.stdout),
            String::from_utf8_lossy(&r.out.stderr)
        )
    };
    let reference = &runs[0];
    assert_eq!(reference.out.status.code(), Some(0), "{}", show(reference));
    expect(&reference.src, &reference.dst);
    let cmp = CompareOpts::default();
    for got in &runs[1..] {
        assert_eq!(
            got.out.status.code(),
            reference.out.status.code(),
            "{}",
            show(got)
        );
        for (a, b, side) in [
            (&reference.dst, &got.dst, "destination"),
            (&reference.src, &got.src, "source"),
        ] {
            let diffs = compare_trees(a, b, &cmp);
            assert!(
                diffs.is_empty(),
                "{side} differs from rsync's: {diffs:#?}\n{}",
                show(got)
            );
        }
    }
    runs
}

/// [`compare_pairings`] pushing and pulling.
fn compare_both(
    name: &str,
    flags: &[&str],
    setup: fn(&Path, &Path, &Path),
    expect: fn(&Path, &Path),
) {
    for dir in [Direction::Push, Direction::Pull] {
        compare_pairings(name, flags, dir, setup, expect);
    }
}

/// A tree for filter files: logs, objects, a CVS directory, extraneous
/// files on the receiver, and rule files beside the trees in `work`.
fn filter_tree(src: &Path, dst: &Path, work: &Path) {
    put(src, "keep.txt", b"keep", T0);
    put(src, "app.log", b"log", T0);
    put(src, "main.o", b"object", T0);
    put(src, "notes.bak", b"backup", T0);
    put(src, "sub/deep.log", b"deep log", T0);
    put(src, "sub/deep.txt", b"deep text", T0);
    put(src, "sub/core", b"core dump", T0);
    put(src, "sub/x.tmp", b"tmp", T0);
    put(src, "CVS/Entries", b"cvs", T0);
    put(dst, "stale.txt", b"extraneous", T0);
    put(dst, "old.log", b"extraneous log", T0);
    put(dst, "sub/stale.o", b"extraneous object", T0);
    put(dst, "sub/gone.txt", b"extraneous", T0);
    fs::write(
        work.join("excl"),
        "*.log\n# a comment\n; another\n\n+ keep.txt\n*.bak\n",
    )
    .unwrap();
    fs::write(work.join("incl"), "*/\n*.txt\n").unwrap();
    fs::write(work.join("rules"), "- *.o\n: .per-dir\nP gone.txt\n").unwrap();
    settle(src);
    settle(dst);
}

#[test]
fn exclude_from_is_read_by_the_client() {
    compare_both(
        "--exclude-from",
        &["-a", "--delete", "--exclude-from=excl"],
        filter_tree,
        |_, d| {
            assert!(d.join("keep.txt").exists() && !d.join("app.log").exists());
            assert!(!d.join("notes.bak").exists() && !d.join("sub/deep.log").exists());
            // Excluded names on the receiver are protected from --delete.
            assert!(d.join("old.log").exists() && !d.join("stale.txt").exists());
        },
    );
}

#[test]
fn include_from_with_an_exclude_all() {
    compare_both(
        "--include-from",
        &[
            "-a",
            "--delete",
            "--include-from={work}/incl",
            "--exclude=*",
        ],
        filter_tree,
        |_, d| {
            assert!(d.join("keep.txt").exists() && d.join("sub/deep.txt").exists());
            assert!(!d.join("app.log").exists() && !d.join("sub/core").exists());
            assert!(!d.join("stale.txt").exists() && d.join("old.log").exists());
        },
    );
}

#[test]
fn cvs_exclude() {
    fn setup(src: &Path, dst: &Path, work: &Path) {
        filter_tree(src, dst, work);
        // A per-directory .cvsignore, in the source and on the receiver.
        put(src, "sub/.cvsignore", b"*.txt\n", T0);
        put(dst, "sub/.cvsignore", b"gone.txt\n", T0);
        settle(src);
        settle(dst);
    }
    compare_both("-C", &["-a", "-C", "--delete"], setup, |_, d| {
        assert!(d.join("keep.txt").exists() && !d.join("main.o").exists());
        assert!(!d.join("CVS").exists() && !d.join("sub/core").exists());
        assert!(!d.join("sub/deep.txt").exists(), "sub/.cvsignore applies");
        // -C's names are protected on the receiver.
        assert!(d.join("sub/stale.o").exists());
        assert!(!d.join("stale.txt").exists());
    });
    // The short option in a cluster, without --delete.
    compare_both("-aC", &["-aC"], setup, |_, d| {
        assert!(!d.join("main.o").exists() && !d.join("sub/deep.txt").exists());
    });
}

#[test]
fn per_directory_filter_files() {
    fn setup(src: &Path, dst: &Path, work: &Path) {
        filter_tree(src, dst, work);
        put(src, ".rsync-filter", b"- *.bak\n", T0);
        put(src, "sub/.rsync-filter", b"- *.log\n- core\n", T0);
        // The receiver's own rules protect its files from --delete.
        put(dst, "sub/.rsync-filter", b"P gone.txt\n", T0);
        settle(src);
        settle(dst);
    }
    compare_both("-F", &["-a", "-F", "--delete"], setup, |_, d| {
        assert!(!d.join("notes.bak").exists() && d.join("app.log").exists());
        assert!(!d.join("sub/deep.log").exists() && !d.join("sub/core").exists());
        assert!(d.join("sub/.rsync-filter").exists());
        assert!(!d.join("stale.txt").exists());
    });
    compare_both("-FF", &["-a", "-FF", "--delete"], setup, |_, d| {
        assert!(!d.join("notes.bak").exists() && !d.join(".rsync-filter").exists());
        assert!(d.join("sub/gone.txt").exists(), "the receiver's P rule");
    });
}

#[test]
fn merge_and_dir_merge_rules() {
    fn setup(src: &Path, dst: &Path, work: &Path) {
        filter_tree(src, dst, work);
        put(src, "sub/.per-dir", b"- *.txt\n", T0);
        put(src, "sub/.excl", b"- deep.log\n", T0);
        // For a `-` modifier: a bare pattern per line.
        put(src, "sub/.exn", b"deep.log\n", T0);
        put(dst, "sub/.per-dir", b"P stale.o\n", T0);
        settle(src);
        settle(dst);
    }
    // A merge file read by the client (holding a dir-merge rule), and a
    // dir-merge rule with modifiers (`e`: the file itself is excluded).
    compare_both(
        "merge",
        &[
            "-a",
            "--delete",
            "--filter=merge {work}/rules",
            "--filter=:e .excl",
        ],
        setup,
        |_, d| {
            assert!(!d.join("main.o").exists() && !d.join("sub/deep.txt").exists());
            assert!(!d.join("sub/deep.log").exists() && !d.join("sub/.excl").exists());
            assert!(d.join("sub/gone.txt").exists() && d.join("sub/stale.o").exists());
            assert!(!d.join("stale.txt").exists());
        },
    );
    compare_both(
        "dir-merge,n",
        &["-a", "--delete", "-f", "dir-merge,n- .exn", "-f", ". rules"],
        setup,
        |_, d| {
            assert!(!d.join("sub/deep.log").exists() && !d.join("main.o").exists());
        },
    );
}

#[test]
fn byte_values_of_backup_dir_suffix_and_remote_files_from() {
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    let os = |b: &[u8]| OsString::from_vec(b.to_vec());
    let tmp = scratch_dir().unwrap();
    let rsh = install_fake_ssh(tmp.path()).unwrap();
    for dir in [Direction::Push, Direction::Pull] {
        for (name, backup) in [("--files-from", false), ("-b", true)] {
            let mut results = Vec::new();
            for (label, client, server) in pairings(&arsync_bin()) {
                let work = tmp
                    .path()
                    .join(format!("{dir:?}{name}{}", label.replace('>', "")));
                let (src, dst) = (work.join("src"), work.join("dst"));
                put(&src, "a.txt", b"new a", T0 + 10);
                put(&src, "b.txt", b"new b", T0 + 10);
                put(&src, "sub/c.txt", b"new c", T0 + 10);
                put(&dst, "a.txt", b"old a", T0);
                put(&dst, "sub/c.txt", b"old c", T0);
                put(&dst, "gone.txt", b"extra", T0);
                let mut flags = vec![OsString::from("-a")];
                if backup {
                    // A backup directory and a suffix that are not UTF-8.
                    flags.extend(["-b", "--delete"].map(OsString::from));
                    flags.push(os(b"--backup-dir=old\xe9"));
                    flags.push(os(b"--suffix=.\xff"));
                } else {
                    // A list with a name that is not UTF-8, at a path that is not.
                    put(&src, "caf\u{e9}", b"utf-8 name", T0);
                    let latin = src.join(OsStr::from_bytes(b"n\xe9"));
                    fs::write(&latin, b"latin-1 name").unwrap();
                    let f = fs::File::options().write(true).open(&latin).unwrap();
                    f.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(T0))
                        .unwrap();
                    let list = work.join(OsStr::from_bytes(b"li\xe9st"));
                    fs::write(&list, b"a.txt\nsub/c.txt\nn\xe9\n").unwrap();
                    let mut arg = b"--files-from=fakehost:".to_vec();
                    arg.extend_from_slice(list.as_os_str().as_bytes());
                    flags.push(os(&arg));
                }
                settle(&src);
                settle(&dst);
                let (from, to) = dir.endpoints(&src, &dst);
                let out = client_cmd(&client, &rsh, &server)
                    .current_dir(&work)
                    .args(&flags)
                    .args([&from, &to])
                    .output()
                    .unwrap();
                let what = format!("{name} {dir:?} {label}");
                assert_eq!(out.status.code(), Some(0), "{what}: {out:?}");
                if backup {
                    let kept = dst.join(OsStr::from_bytes(b"old\xe9/sub/c.txt.\xff"));
                    assert_eq!(read(&kept).as_deref(), Some(&b"old c"[..]), "{what}");
                    let gone = dst.join(OsStr::from_bytes(b"old\xe9/gone.txt.\xff"));
                    assert!(gone.exists(), "{what}");
                } else {
                    assert!(dst.join(OsStr::from_bytes(b"n\xe9")).exists(), "{what}");
                    assert!(!dst.join("b.txt").exists(), "{what}: not listed");
                }
                results.push((what, dst));
            }
            // The backup directory is made during the run.
            let cmp = CompareOpts {
                root_metadata: false,
                dir_mtime: !backup,
                ..CompareOpts::default()
            };
            assert_trees_match_first(&results, &cmp);
        }
    }
}

/// A tree for the output tests: a changed file, a file whose permissions
/// differ, an unchanged file, a new directory and file, a symlink, a
/// directory whose mtime differs, an extraneous file on the receiver.
fn output_tree(src: &Path, dst: &Path, _work: &Path) {
    put(src, "changed.txt", b"new content here", T0 + 5);
    put(dst, "changed.txt", b"old", T0);
    put(src, "perms.txt", b"same", T0);
    put(dst, "perms.txt", b"same", T0);
    fs::set_permissions(dst.join("perms.txt"), fs::Permissions::from_mode(0o600)).unwrap();
    put(src, "same.txt", b"unchanged", T0);
    put(dst, "same.txt", b"unchanged", T0);
    put(src, "newdir/inner.txt", b"inner", T0);
    put(src, "olddir/x.txt", b"x", T0);
    put(dst, "olddir/x.txt", b"x", T0);
    put(dst, "extra.txt", b"extraneous", T0);
    put(dst, "gone/deep/old.txt", b"extraneous, below", T0);
    symlink("same.txt", src.join("link")).unwrap();
    settle(src);
    settle(dst);
    // Directory times after settle: one differs.
    let st = Command::new("touch")
        .args(["-d", "@1400000000"])
        .arg(dst.join("olddir"))
        .status()
        .unwrap();
    assert!(st.success());
}

/// The lines of `out`'s stdout that do not depend on the wire bytes or
/// the clock: the byte counts, rates, speedup and list timings are left
/// out ("total size is N" stays).
fn stable_lines(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| {
            ![
                "sent ",
                "Total bytes sent:",
                "Total bytes received:",
                "File list size:",
                "File list generation time:",
                "File list transfer time:",
            ]
            .iter()
            .any(|p| l.starts_with(p))
        })
        .map(|l| match l.split_once("  speedup is") {
            Some((total, rest)) if rest.ends_with(" (DRY RUN)") => format!("{total} (DRY RUN)"),
            Some((total, _)) => total.to_string(),
            None => l.to_string(),
        })
        .map(|l| match l.rsplit_once('\r') {
            // --progress: the last state of the line, without rate and time.
            Some((_, last)) => {
                let w: Vec<&str> = last.split_whitespace().collect();
                match w.as_slice() {
                    [size, pct, _rate, _time, rest @ ..] => {
                        format!("{size} {pct} {}", rest.join(" "))
                    }
                    _ => last.to_string(),
                }
            }
            None => l,
        })
        .collect()
}

/// rsync's client output for `flags` in every pairing against rsync's own
/// (its file list not incremental, as arsync's never is), after the same
/// transfer; the trees are compared too.
fn compare_output(flags: &[&str], dirs: &[Direction], must_have: &[&str]) {
    compare_output_in(flags, dirs, must_have, output_tree);
}

/// [`compare_output`] with the trees made by `setup`.
fn compare_output_in(
    flags: &[&str],
    dirs: &[Direction],
    must_have: &[&str],
    setup: fn(&Path, &Path, &Path),
) {
    for &dir in dirs {
        let tmp = scratch_dir().unwrap();
        let rsh = install_fake_ssh(tmp.path()).unwrap();
        let mut results = Vec::new();
        let mut reference: Option<Vec<String>> = None;
        for (label, client, server) in pairings(&arsync_bin()) {
            let work = tmp.path().join(label.replace('>', ""));
            let (src, dst) = (work.join("src"), work.join("dst"));
            setup(&src, &dst, &work);
            let (from, to) = dir.endpoints(&src, &dst);
            let mut cmd = client_cmd(&client, &rsh, &server);
            // Whole lists on every side (arsync receives incremental
            // ones from rsync otherwise).
            cmd.arg("--no-i-r");
            let out = cmd.args(flags).args([&from, &to]).output().unwrap();
            let what = format!("{flags:?} {dir:?} {label}");
            assert_eq!(out.status.code(), Some(0), "{what}: {out:?}");
            // Paths of this run's own directory are named alike.
            let here = work.to_string_lossy().into_owned();
            let lines: Vec<String> = stable_lines(&out)
                .into_iter()
                .map(|l| l.replace(&here, "{work}"))
                .collect();
            match &reference {
                None => {
                    for want in must_have {
                        assert!(lines.iter().any(|l| l == want), "{what}: {lines:#?}");
                    }
                    reference = Some(lines);
                }
                Some(r) => assert_eq!(
                    &lines,
                    r,
                    "{what}: {}",
                    String::from_utf8_lossy(&out.stdout)
                ),
            }
            results.push((what, dst));
        }
        // Without -t (or -p) the times (and modes) are the run's own.
        let timed = flags.contains(&"-a");
        let cmp = CompareOpts {
            mtime: timed,
            dir_mtime: timed,
            symlink_mtime: timed,
            mode: timed,
            ..CompareOpts::default()
        };
        assert_trees_match_first(&results, &cmp);
    }
}

#[test]
fn itemized_output_matches_rsync() {
    let both = [Direction::Push, Direction::Pull];
    compare_output(
        &["-ai"],
        &both,
        &[
            "cd+++++++++ newdir/",
            "cL+++++++++ link -> same.txt",
            ".d..t...... olddir/",
        ],
    );
    // The update column says who sends; perms-only changes are items too.
    compare_output(
        &["-ai"],
        &[Direction::Pull],
        &[">f.st...... changed.txt", ".f...p..... perms.txt"],
    );
    compare_output(
        &["-ai"],
        &[Direction::Push],
        &["<f.st...... changed.txt", ".f...p..... perms.txt"],
    );
    // Without -t and -p: `T` for a transfer, no `p`.
    compare_output(&["-rli"], &[Direction::Pull], &[">f.sT...... changed.txt"]);
    // Deletions: by the client on a pull; on a push the server tells the
    // client (MSG_DELETED). A directory's contents are listed first.
    compare_output(
        &["-ai", "--delete"],
        &both,
        &[
            "*deleting   gone/deep/old.txt",
            "*deleting   gone/deep/",
            "*deleting   gone/",
            "*deleting   extra.txt",
        ],
    );
    compare_output(
        &["-ain", "--delete-after"],
        &both,
        &["*deleting   gone/deep/"],
    );
    // -ii: unchanged entries too (a receiving server is told with
    // rsync's --log-format=%i%I).
    compare_output(
        &["-aii"],
        &both,
        &[
            ".d          ./",
            ".f          same.txt",
            ".f          olddir/x.txt",
        ],
    );
}

#[test]
fn verbose_output_matches_rsync() {
    compare_output(
        &["-av"],
        &[Direction::Push],
        &[
            "building file list ... done",
            "newdir/",
            "link -> same.txt",
            "total size is 43",
        ],
    );
    compare_output(
        &["-av", "--delete"],
        &[Direction::Pull],
        &[
            "receiving file list ... done",
            "deleting extra.txt",
            "olddir/",
        ],
    );
    compare_output(
        &["-avn", "--delete"],
        &[Direction::Push, Direction::Pull],
        &["deleting gone/", "total size is 43 (DRY RUN)"],
    );
    compare_output(
        &["-a", "--stats", "--delete"],
        &[Direction::Push, Direction::Pull],
        &[
            "Number of files: 9 (reg: 5, dir: 3, link: 1)",
            "Number of created files: 3 (reg: 1, dir: 1, link: 1)",
            "Number of deleted files: 4 (reg: 2, dir: 2)",
            "Number of regular files transferred: 2",
            "Total transferred file size: 21 bytes",
        ],
    );
    compare_output(
        &["-a", "--progress"],
        &[Direction::Push, Direction::Pull],
        &["newdir/inner.txt", "5 100% (xfr#2, to-chk=2/9)"],
    );
    compare_output(
        &["-a", "--progress"],
        &[Direction::Pull],
        &["receiving file list ... 9 files to consider"],
    );
    // --info=progress2: one line for the whole run (its last state).
    compare_output(
        &["-a", "--info=progress2"],
        &[Direction::Push, Direction::Pull],
        &["21 48% (xfr#2, to-chk=0/9)"],
    );
    compare_output(
        &["-a", "--out-format=%o %n %l"],
        &[Direction::Pull],
        &["recv changed.txt 16"],
    );
    // With %b a transfer's line comes after it (the byte counts differ:
    // rsync's include its protocol overhead).
    compare_output(
        &["-a", "--out-format=%i %n"],
        &[Direction::Push],
        &["<f.st...... changed.txt", "cd+++++++++ newdir/"],
    );
}

#[test]
fn filter_files_through_a_daemon() {
    let tmp = scratch_dir().unwrap();
    let base = tmp.path().join("mod");
    fs::create_dir_all(&base).unwrap();
    let cfg = tmp.path().join("d.conf");
    write_module_config(&cfg, &base).unwrap();
    let rsyncd = start_daemon(&rsync_bin(), &cfg).unwrap();
    let arsyncd = start_daemon(&arsync_bin(), &cfg).unwrap();
    let run = |daemon: &Daemon, client: &OsString, dir: Direction, label: &str| {
        let work = base.join(label);
        let (src, dst) = (work.join("src"), work.join("dst"));
        fs::create_dir_all(&src).unwrap();
        fs::create_dir_all(&dst).unwrap();
        filter_tree(&src, &dst, &work);
        put(&src, "sub/.rsync-filter", b"- *.txt\n", T0);
        put(&dst, "sub/.rsync-filter", b"P gone.txt\n", T0);
        settle(&src);
        settle(&dst);
        let (from, to) = daemon_endpoints(dir, &base, daemon.port, &src, &dst);
        let out = Command::new(client)
            .current_dir(&work)
            .args(["-a", "-F", "-C", "--delete", "--exclude-from=excl"])
            .args([&from, &to])
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        (out, dst)
    };
    for dir in [Direction::Push, Direction::Pull] {
        let (want, want_dst) = run(&rsyncd, &rsync_bin(), dir, &format!("{dir:?}-ref"));
        assert_eq!(want.status.code(), Some(0), "reference: {want:?}");
        assert!(!want_dst.join("sub/deep.txt").exists() && !want_dst.join("main.o").exists());
        assert!(want_dst.join("sub/gone.txt").exists() && !want_dst.join("app.log").exists());
        for (label, daemon, client) in [
            ("arsync-to-rsyncd", &rsyncd, arsync_bin()),
            ("rsync-to-arsyncd", &arsyncd, rsync_bin()),
            ("arsync-to-arsyncd", &arsyncd, arsync_bin()),
        ] {
            let (got, dst) = run(daemon, &client, dir, &format!("{dir:?}-{label}"));
            let what = format!("{dir:?} {label}");
            assert_eq!(got.status.code(), Some(0), "{what}: {got:?}");
            let diffs = compare_trees(&want_dst, &dst, &CompareOpts::default());
            assert!(diffs.is_empty(), "{what}: differs from rsync's: {diffs:#?}");
        }
    }
}

#[test]
fn created_destination_is_reported() {
    fn fresh(src: &Path, dst: &Path, work: &Path) {
        output_tree(src, dst, work);
        fs::remove_dir_all(dst).unwrap();
    }
    // The receiver makes the destination and says so (a receiving server
    // through MSG_INFO, which the client prints on stdout).
    compare_output_in(
        &["-av"],
        &[Direction::Push],
        &[
            "building file list ... done",
            "created directory {work}/dst",
            "./",
        ],
        fresh,
    );
    compare_output_in(
        &["-ai"],
        &[Direction::Push, Direction::Pull],
        &[
            "created directory {work}/dst",
            "cd+++++++++ ./",
            "cd+++++++++ newdir/",
        ],
        fresh,
    );
}

/// The `\r`-separated states of the `--progress` (or `--info=progress2`)
/// output that follows the line `name` (the whole output when `name` is
/// empty), up to the end of that line.
fn progress_states(stdout: &[u8], name: &str) -> Vec<String> {
    let text = String::from_utf8_lossy(stdout);
    let after = match name {
        "" => &text[..],
        n => match text.split_once(&format!("\n{n}\n")) {
            Some((_, rest)) => rest,
            None => return Vec::new(),
        },
    };
    let line = after.split('\n').next().unwrap_or_default();
    line.split('\r')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// The percent of a progress state (`  1,234  45%  1.00MB/s  0:00:01  `).
fn percent(state: &str) -> Option<u32> {
    let word = state.split_whitespace().nth(1)?;
    word.strip_suffix('%')?.parse().ok()
}

/// `--progress` and `--info=progress2` rewrite their line while a large
/// file moves (rsync shows a file's first state at once, then one a
/// second), pushing (the client counts what it sends) and pulling (what
/// it writes); the last line is rsync's, against either server.
#[test]
fn progress_updates_while_a_large_file_moves() {
    let tmp = scratch_dir().unwrap();
    let rsh = install_fake_ssh(tmp.path()).unwrap();
    let data: Vec<u8> = (0..32u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let mut runs = 0;
    for flag in ["--progress", "--info=progress2"] {
        for dir in [Direction::Push, Direction::Pull] {
            let mut reference: Option<Vec<String>> = None;
            for (label, client, server) in pairings(&arsync_bin()) {
                if label == "rsync->arsync" {
                    continue;
                }
                runs += 1;
                let work = tmp.path().join(format!("{runs}"));
                let (src, dst) = (work.join("src"), work.join("dst"));
                fs::create_dir_all(&src).unwrap();
                fs::create_dir_all(&dst).unwrap();
                fs::write(src.join("big"), &data).unwrap();
                let (from, to) = dir.endpoints(&src, &dst);
                let mut cmd = client_cmd(&client, &rsh, &server);
                cmd.arg("--no-i-r");
                let out = cmd.args(["-a", flag]).args([&from, &to]).output().unwrap();
                let what = format!("{flag} {dir:?} {label}");
                assert_eq!(out.status.code(), Some(0), "{what}: {out:?}");
                assert_eq!(read(&dst.join("big")).as_deref(), Some(&data[..]), "{what}");
                let lines = stable_lines(&out);
                match &reference {
                    None => reference = Some(lines),
                    Some(r) => assert_eq!(&lines, r, "{what}"),
                }
                if client == rsync_bin() {
                    continue;
                }
                let name = if flag == "--progress" { "big" } else { "" };
                let states = progress_states(&out.stdout, name);
                let what = format!("{what}: {states:#?}");
                // The file's last state (progress2 repeats the run's at
                // its end, as rsync).
                let at = states.iter().position(|s| s.contains(" (xfr#1, "));
                let at = at.expect(&what);
                let (last, updates) = (&states[at], &states[..at]);
                assert!(last.ends_with(" (xfr#1, to-chk=0/2)"), "{what}");
                // At least one state while the data moved, before the last.
                assert!(!updates.is_empty(), "{what}");
                assert!(updates.iter().all(|u| u.ends_with("  ")), "{what}");
                assert!(
                    updates.iter().any(|u| percent(u).is_some_and(|p| p < 100)),
                    "{what}"
                );
                assert_eq!(percent(last), Some(100), "{what}");
            }
        }
    }
}

/// `--bwlimit` paces the side that sends file data, in every pairing and both directions: a
/// 600 KiB file at 300 KiB/s takes about two seconds (rsync's own pacing lets a first burst
/// through, so the bound is loose), and arrives intact.
#[test]
fn bwlimit_paces_the_sending_side() {
    let tmp = scratch_dir().unwrap();
    let rsh = install_fake_ssh(tmp.path()).unwrap();
    let data: Vec<u8> = (0..600u32 << 10)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    for dir in [Direction::Push, Direction::Pull] {
        for (label, client, server) in pairings(&arsync_bin()) {
            let work = tmp
                .path()
                .join(format!("{dir:?}-{}", label.replace('>', "")));
            let (src, dst) = (work.join("src"), work.join("dst"));
            fs::create_dir_all(&src).unwrap();
            fs::write(src.join("f"), &data).unwrap();
            let (from, to) = dir.endpoints(&src, &dst);
            let t = std::time::Instant::now();
            let out = run_in(
                &work,
                &client,
                &rsh,
                &server,
                &["-a", "--bwlimit=300"],
                [&from, &to],
            );
            let took = t.elapsed();
            let what = format!("{dir:?} {label}");
            assert_eq!(out.status.code(), Some(0), "{what}: {out:?}");
            assert!(
                read(&dst.join("f")) == Some(data.clone()),
                "{what}: content"
            );
            assert!(
                took >= std::time::Duration::from_millis(1200),
                "{what}: 600 KiB at 300 KiB/s took only {took:?}"
            );
        }
    }
}
