//! Differential tests: arsync and the real rsync run with the same flags on the same trees
//! must leave identical destinations (and, where the order is defined, identical `-i` output).

mod common;

use common::*;
use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

const RICH: TreeSpec = TreeSpec {
    dirs: 6,
    files_per_dir: 5,
    rich: true,
    seed: 7,
};

/// Runs rsync and arsync with `flags` from `src` into `work/r` and `work/a` (both seeded
/// from `initial` if given); asserts same exit code and same tree. Returns the outputs.
fn differential(
    work: &Path,
    flags: &[&str],
    srcs: &[OsString],
    initial: Option<&Path>,
    mut o: SnapOpts,
    what: &str,
) -> (std::process::Output, std::process::Output) {
    // Without a "src/" argument nothing sets the destination root's time: it is whenever
    // the last entry was created in it, which differs between any two runs.
    if !srcs.iter().any(|s| s.as_encoded_bytes().ends_with(b"/")) || srcs.len() > 1 {
        o.root_mtime = false;
    }
    let r = work.join("r");
    let a = work.join("a");
    let _ = fs::remove_dir_all(&r);
    let _ = fs::remove_dir_all(&a);
    if let Some(init) = initial {
        clone_tree(init, &r);
        clone_tree(init, &a);
    }
    // arsync's own flags (--threads, --queue-depth) are not given to rsync.
    let ours = |f: &&&str| f.starts_with("--threads") || f.starts_with("--queue-depth");
    let mut rargs: Vec<OsString> = flags
        .iter()
        .filter(|f| !ours(f))
        .map(OsString::from)
        .collect();
    rargs.extend(srcs.iter().cloned());
    let mut aargs: Vec<OsString> = flags.iter().map(OsString::from).collect();
    aargs.extend(srcs.iter().cloned());
    rargs.push(slash(&r));
    aargs.push(slash(&a));
    let ro = rsync(&rargs);
    let ao = arsync(&aargs);
    assert_eq!(
        ao.status.code(),
        ro.status.code(),
        "{what}: exit codes differ\narsync stderr: {}\nrsync stderr: {}",
        String::from_utf8_lossy(&ao.stderr),
        String::from_utf8_lossy(&ro.stderr)
    );
    assert_same_tree(&a, &r, o, what);
    (ao, ro)
}

fn lines(out: &std::process::Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.to_string())
        .collect()
}

/// Changes the source tree in many ways (content, size, mode, owner, removal, addition,
/// type changes, symlink retargeting, new xattrs).
fn mutate(src: &Path) {
    fs::write(src.join("f0_0.dat"), b"rewritten content").unwrap();
    let _ = fs::remove_file(src.join("f0_1.dat"));
    fs::write(src.join("brand_new"), b"new file").unwrap();
    fs::create_dir_all(src.join("newdir/sub")).unwrap();
    fs::write(src.join("newdir/sub/deep"), b"deep").unwrap();
    fs::set_permissions(src.join("f0_2.dat"), fs::Permissions::from_mode(0o600)).unwrap();
    let _ = fs::remove_file(src.join("link_rel"));
    std::os::unix::fs::symlink("f0_3.dat", src.join("link_rel")).unwrap();
    // A file becomes a directory and a directory becomes a file.
    let _ = fs::remove_file(src.join("with space"));
    fs::create_dir(src.join("with space")).unwrap();
    fs::write(src.join("with space/inner"), b"inner").unwrap();
    if src.join("empty").is_dir() {
        fs::remove_dir(src.join("empty")).unwrap();
        fs::write(src.join("empty"), b"now a file").unwrap();
    }
    if src.join("f0_4.dat").exists() {
        let _ = std::process::Command::new("setfattr")
            .args(["-n", "user.added", "-v", "yes"])
            .arg(src.join("f0_4.dat"))
            .status();
    }
    if am_root() {
        std::os::unix::fs::chown(src.join("f0_2.dat"), Some(4321), None).unwrap();
    }
    // Hard links change: one link is broken, a new one appears.
    if src.join("hard_a").exists() && src.join("f0_3.dat").exists() {
        let data = fs::read(src.join("hard_a")).unwrap();
        fs::remove_file(src.join("hard_a")).unwrap();
        fs::write(src.join("hard_a"), data).unwrap();
        fs::hard_link(src.join("f0_3.dat"), src.join("hard_new")).unwrap();
    }
    settle_times(src);
}

#[test]
fn archive_fresh_copy_matches_rsync() {
    let w = scratch();
    let src = w.path().join("src");
    make_tree(&src, RICH);
    let (ao, ro) = differential(
        w.path(),
        &["-a"],
        &[slash(&src)],
        None,
        SnapOpts::default(),
        "-a fresh",
    );
    assert!(ao.stdout.is_empty() && ro.stdout.is_empty());
}

#[test]
fn archive_hard_links_acls_xattrs_sparse_match_rsync() {
    let w = scratch();
    let src = w.path().join("src");
    make_tree(&src, RICH);
    let o = SnapOpts {
        sparse: true,
        ..SnapOpts::default()
    };
    let (ao, ro) = differential(
        w.path(),
        &["-aHAXSi"],
        &[slash(&src)],
        None,
        o,
        "-aHAXS fresh",
    );
    let strip = |v: Vec<String>| -> Vec<String> {
        v.into_iter()
            .filter(|l| !l.starts_with("created directory"))
            .collect()
    };
    assert_eq!(
        strip(lines(&ao)),
        strip(lines(&ro)),
        "-aHAXSi output differs"
    );
    // Directory itself (no trailing slash) into an existing destination.
    differential(
        w.path(),
        &["-aHAX"],
        &[src.clone().into_os_string()],
        None,
        o,
        "-aHAX dir",
    );
}

#[test]
fn update_with_delete_matches_rsync_including_itemize() {
    let w = scratch();
    let src = w.path().join("src");
    make_tree(&src, RICH);
    let old = w.path().join("old");
    let o = rsync(&[OsString::from("-aHAX"), slash(&src), slash(&old)]);
    assert_code(&o, 0, "seed");
    mutate(&src);
    let (ao, ro) = differential(
        w.path(),
        &["-aAXi", "--delete"],
        &[slash(&src)],
        Some(&old),
        SnapOpts::default(),
        "-aAXi --delete update",
    );
    assert_eq!(lines(&ao), lines(&ro), "itemized output differs");
    // Re-running over the synced tree is a no-op with no output at all.
    let a = w.path().join("a");
    let again = arsync(&[
        OsString::from("-aAXi"),
        OsString::from("--delete"),
        slash(&src),
        slash(&a),
    ]);
    assert_code(&again, 0, "no-op rerun");
    assert!(
        again.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&again.stdout)
    );
}

/// A rich generated tree `BASE/src` and an rsync -a copy of it in `BASE/old` (the starting
/// point of the update tests).
fn rich_tree_and_copy(
    base: &Path,
    dirs: usize,
    files_per_dir: usize,
    seed: u64,
) -> (PathBuf, PathBuf) {
    let src = base.join("src");
    make_tree(
        &src,
        TreeSpec {
            dirs,
            files_per_dir,
            rich: true,
            seed,
        },
    );
    let old = base.join("old");
    assert_code(
        &rsync(&[OsString::from("-a"), slash(&src), slash(&old)]),
        0,
        "seed",
    );
    (src, old)
}

#[test]
fn flag_combinations_on_update_match_rsync() {
    let w = scratch();
    let (src, old) = rich_tree_and_copy(w.path(), 4, 4, 11);
    // Make a same-size, same-mtime content change that only -c notices.
    let victim = src.join("dir0/f1_1.dat");
    let meta = fs::metadata(&victim).unwrap();
    let mut data = fs::read(&victim).unwrap();
    if !data.is_empty() {
        data[0] ^= 0xff;
        fs::write(&victim, &data).unwrap();
        let f = fs::File::options().write(true).open(&victim).unwrap();
        f.set_modified(meta.modified().unwrap()).unwrap();
    }
    // An older source file (for -u) and a dest-only file (for --delete variants).
    mutate(&src);
    fs::write(old.join("dest_only"), b"extra").unwrap();
    // For --append: one destination file is a strict prefix of the source, another is
    // shorter but different.
    for (name, prefix) in [("dir0/f1_0.dat", true), ("dir0/f1_2.dat", false)] {
        let data = fs::read(src.join(name)).unwrap();
        if data.len() > 2 {
            let mut short = data[..data.len() / 2].to_vec();
            if !prefix {
                short[0] ^= 0x55;
            }
            fs::write(old.join(name), short).unwrap();
        }
    }
    let combos: &[&[&str]] = &[
        &["-a", "-i"],
        &["-a", "-c", "-i"],
        &["-a", "--inplace", "-i"],
        &["-a", "-u", "-i"],
        &["-a", "--existing", "-i"],
        &["-a", "--ignore-existing", "-i"],
        &["-a", "--size-only", "-i"],
        &["-a", "-I"],
        &["-a", "-W", "--delete-after"],
        &["-aH", "--delete", "-i"],
        &["-aHAX", "--inplace"],
        &["-a", "--delete-before", "-i"],
        &["-a", "--delete-after", "-i"],
        &["-a", "--delete-delay", "-i"],
        &["-a", "--delete-delay"],
        &["-a", "--delete", "-b"],
        &["-a", "--delete", "--backup-dir=../bk", "--suffix=.old"],
        &["-rlt"],
        &["-r"],
        &["-a", "--no-perms", "--no-times"],
        &["-a", "--chmod=Dg+s,Fo-r,u+w"],
        &["-a", "-O", "-J"],
        &["-a", "-E", "--no-p"],
        &["-a", "--max-size=2K", "--min-size=10"],
        &["-a", "--delay-updates", "-i"],
        &["-a", "--modify-window=1", "-i"],
        &["-a", "--append", "-i"],
        &["-a", "--append-verify", "-i"],
        &["-a", "--modify-window=-1", "-i"],
        &["-rlpt", "--specials", "-i"],
        &["-rlpt", "--devices", "-i"],
        &["-a", "-q", "-i"],
        &["-a", "--threads=1", "-i"],
        &["-a", "-y", "-i"],
        &["-a", "--threads=4", "--queue-depth=1", "-i", "--delete"],
    ];
    for flags in combos {
        // Each combo gets its own copy of the source (--remove-source-files mutates it).
        let s2 = w.path().join("src2");
        let _ = fs::remove_dir_all(&s2);
        clone_tree(&src, &s2);
        let times = !flags.iter().any(|f| *f == "-r" || f.contains("no-times"));
        // With -b, rsync stamps new directories before their last entries land, leaving
        // them with the current time; arsync keeps the source times. Not compared there.
        let backup = flags
            .iter()
            .any(|f| *f == "-b" || f.starts_with("--backup"));
        let o = SnapOpts {
            mtimes: times,
            dir_mtimes: times && !flags.contains(&"-O") && !backup,
            link_mtimes: !flags.contains(&"-J"),
            ..SnapOpts::default()
        };
        let what = flags.join(" ");
        let (ao, ro) = differential(w.path(), flags, &[slash(&s2)], Some(&old), o, &what);
        if flags.contains(&"-i") {
            assert_eq!(lines(&ao), lines(&ro), "{what}: itemized output differs");
        }
        if flags.iter().any(|f| f.starts_with("--backup-dir")) {
            let bk = w.path().join("bk");
            assert!(bk.exists(), "{what}: backup dir missing");
            let _ = fs::remove_dir_all(&bk);
        }
    }
    // --remove-source-files changes the source: each tool gets its own copy, and what is
    // left of the sources must match too.
    let (sa, sr) = (w.path().join("src_a"), w.path().join("src_r"));
    clone_tree(&src, &sa);
    clone_tree(&src, &sr);
    let (a, r) = (w.path().join("a"), w.path().join("r"));
    let _ = fs::remove_dir_all(&a);
    let _ = fs::remove_dir_all(&r);
    clone_tree(&old, &a);
    clone_tree(&old, &r);
    let f = OsString::from("--remove-source-files");
    assert_code(
        &arsync(&[OsString::from("-a"), f.clone(), slash(&sa), slash(&a)]),
        0,
        "rsf",
    );
    assert_code(
        &rsync(&[OsString::from("-a"), f, slash(&sr), slash(&r)]),
        0,
        "rsf",
    );
    assert_same_tree(&a, &r, SnapOpts::default(), "--remove-source-files dest");
    let no_dir_times = SnapOpts {
        dir_mtimes: false,
        ..SnapOpts::default()
    };
    assert_same_tree(&sa, &sr, no_dir_times, "--remove-source-files source");
}

#[test]
fn filters_match_rsync() {
    let w = scratch();
    let src = w.path().join("src");
    make_tree(&src, RICH);
    let old = w.path().join("old");
    assert_code(
        &rsync(&[OsString::from("-a"), slash(&src), slash(&old)]),
        0,
        "seed",
    );
    fs::write(old.join("keep.tmp"), b"protected by exclude").unwrap();
    fs::write(old.join("dir0/gone.o"), b"x").unwrap();
    let rules = w.path().join("rules");
    fs::write(&rules, "# comment\n- *.o\n+ dir0/\n").unwrap();
    let rules_s = format!("--exclude-from={}", rules.display());
    let inc = w.path().join("inc");
    fs::write(&inc, "dir0/\n*.img\n").unwrap();
    let inc_s = format!("--include-from={}", inc.display());
    let combos: Vec<Vec<String>> = vec![
        vec!["-a".into(), "--exclude=*.dat".into()],
        vec![
            "-a".into(),
            "--include=f0_*".into(),
            "--exclude=*.dat".into(),
        ],
        vec!["-a".into(), "--delete".into(), "--exclude=*.tmp".into()],
        vec![
            "-a".into(),
            "--delete".into(),
            "--delete-excluded".into(),
            "--exclude=*.tmp".into(),
        ],
        vec![
            "-a".into(),
            "-f".into(),
            "- /dir0/".into(),
            "--filter=P keep.tmp".into(),
            "--delete".into(),
        ],
        vec![
            "-a".into(),
            "--filter=+ */".into(),
            "--filter=+ *.dat".into(),
            "--filter=- *".into(),
        ],
        vec!["-a".into(), "--delete".into(), rules_s.clone()],
        vec!["-a".into(), "-C".into()],
        vec![
            "-a".into(),
            "--exclude=dir0/***".into(),
            "--exclude=/link_*".into(),
        ],
        vec!["-a".into(), inc_s, "--exclude=*".into()],
        vec![
            "-am".into(),
            "--include=*/".into(),
            "--include=f1_*".into(),
            "--exclude=*".into(),
        ],
        vec![
            "-a".into(),
            "-m".into(),
            "--delete".into(),
            "--exclude=*.dat".into(),
        ],
        vec![
            "-a".into(),
            "--include=*/".into(),
            "--include=*.dat".into(),
            "--exclude=*".into(),
            "--delete".into(),
        ],
    ];
    for flags in &combos {
        let f: Vec<&str> = flags.iter().map(|s| s.as_str()).collect();
        differential(
            w.path(),
            &f,
            &[slash(&src)],
            Some(&old),
            SnapOpts::default(),
            &flags.join(" "),
        );
    }
    // Filters apply to top-level arguments too.
    let args = [
        src.join("dir0").into_os_string(),
        src.join("f0_0.dat").into_os_string(),
    ];
    let o = SnapOpts::default();
    differential(
        w.path(),
        &["-a", "--exclude=dir0"],
        &args,
        None,
        o,
        "top-level exclude",
    );
}

#[test]
fn link_dest_and_compare_dest_match_rsync() {
    let w = scratch();
    let src = w.path().join("src");
    make_tree(&src, RICH);
    let base = w.path().join("base");
    assert_code(
        &rsync(&[OsString::from("-a"), slash(&src), slash(&base)]),
        0,
        "seed",
    );
    mutate(&src);
    for opt in ["--link-dest", "--compare-dest", "--copy-dest"] {
        let flag = format!("{opt}={}", base.display());
        let (ao, ro) = differential(
            w.path(),
            &["-a", "-i", &flag],
            &[slash(&src)],
            None,
            SnapOpts::default(),
            opt,
        );
        let strip = |v: Vec<String>| -> Vec<String> {
            v.into_iter()
                .filter(|l| !l.starts_with("created directory"))
                .collect()
        };
        assert_eq!(
            strip(lines(&ao)),
            strip(lines(&ro)),
            "{opt}: itemized output differs"
        );
        // Hard-link counts show which files were linked to the basis.
        let a = snapshot_nlinks(&w.path().join("a"));
        let r = snapshot_nlinks(&w.path().join("r"));
        assert_eq!(a, r, "{opt}: link counts differ");
    }
}

fn snapshot_nlinks(root: &Path) -> Vec<(String, u64)> {
    use std::os::unix::fs::MetadataExt;
    let mut v = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap().flatten() {
            let m = fs::symlink_metadata(e.path()).unwrap();
            if m.is_dir() {
                stack.push(e.path());
            } else if m.is_file() {
                let rel = e
                    .path()
                    .strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                v.push((rel, m.nlink()));
            }
        }
    }
    v.sort();
    v
}

#[test]
fn path_rules_match_rsync() {
    let w = scratch();
    let src = w.path().join("src");
    make_tree(
        &src,
        TreeSpec {
            dirs: 3,
            files_per_dir: 2,
            rich: false,
            seed: 3,
        },
    );
    let o = SnapOpts::default();
    let s = |p: &str| src.join(p).into_os_string();
    // Several sources, dirs with and without trailing slash.
    differential(
        w.path(),
        &["-a"],
        &[s("dir0"), s("f0_0.dat"), s("empty")],
        None,
        o,
        "multi",
    );
    differential(
        w.path(),
        &["-a"],
        &[slash(&src.join("dir0"))],
        None,
        o,
        "contents",
    );
    // -R with and without a /./ anchor.
    let mut anchored = src.clone().into_os_string();
    anchored.push("/./dir0");
    differential(w.path(), &["-aR"], &[anchored], None, o, "-R anchor");
    // Missing implied directories get default attributes and the current time.
    let no_dir_times = SnapOpts {
        dir_mtimes: false,
        ..o
    };
    differential(
        w.path(),
        &["-aR", "--no-implied-dirs"],
        &[s("dir0")],
        None,
        no_dir_times,
        "-R no-implied",
    );
    // -d without -r: directories created, not recursed.
    differential(w.path(), &["-lptd"], &[slash(&src)], None, o, "-d");
    // --files-from.
    let list = w.path().join("list");
    fs::create_dir_all(src.join("ld/sub")).unwrap();
    fs::write(src.join("ld/sub/file"), b"listed").unwrap();
    settle_times(&src);
    fs::write(&list, "f0_0.dat\ndir0\nld/sub/file\n").unwrap();
    let ff = format!("--files-from={}", list.display());
    differential(
        w.path(),
        &["-a", &ff],
        &[src.clone().into_os_string()],
        None,
        o,
        "files-from",
    );
    differential(
        w.path(),
        &["-a", "-r", &ff],
        &[src.clone().into_os_string()],
        None,
        o,
        "files-from -r",
    );

    // Single file to a new file name / into an existing dir / with --mkpath.
    let f = src.join("f0_0.dat");
    for (dest, mk) in [("newname", false), ("sub/deeper/name", true)] {
        let ra = w.path().join("sf_r");
        let aa = w.path().join("sf_a");
        for (d, runner) in [(&ra, 0), (&aa, 1)] {
            let _ = fs::remove_dir_all(d);
            fs::create_dir(d).unwrap();
            let mut args = vec![OsString::from("-a")];
            if mk {
                args.push("--mkpath".into());
            }
            args.push(f.clone().into_os_string());
            args.push(d.join(dest).into_os_string());
            let out = if runner == 0 {
                rsync(&args)
            } else {
                arsync(&args)
            };
            assert_code(&out, 0, dest);
        }
        // The destination directory's time is whenever the file was created in it.
        let o = SnapOpts {
            root_mtime: false,
            dir_mtimes: !mk,
            ..o
        };
        assert_same_tree(&aa, &ra, o, dest);
    }
}

#[test]
fn several_sources_with_delete_keep_each_others_entries() {
    // `dir0 dir1/ f0_0.dat` all land in the destination root: rsync builds one file list of
    // them, so a deletion there keeps what any of them brings, and a re-run does nothing.
    let w = scratch();
    let src = w.path().join("src");
    make_tree(
        &src,
        TreeSpec {
            dirs: 3,
            files_per_dir: 2,
            rich: false,
            seed: 5,
        },
    );
    let srcs = [
        src.join("dir0").into_os_string(),
        slash(&src.join("dir1")),
        src.join("f0_0.dat").into_os_string(),
    ];
    let o = SnapOpts {
        root_mtime: false,
        ..SnapOpts::default()
    };
    differential(w.path(), &["-a", "--delete"], &srcs, None, o, "first run");
    let seeded = w.path().join("seeded");
    clone_tree(&w.path().join("r"), &seeded);
    fs::write(seeded.join("junk"), b"extraneous").unwrap();
    fs::create_dir(seeded.join("dir0").join("junkdir")).unwrap();
    let (ao, ro) = differential(
        w.path(),
        &["-ai", "--delete"],
        &srcs,
        Some(&seeded),
        o,
        "re-run with extraneous entries",
    );
    let (mut a, mut r) = (lines(&ao), lines(&ro));
    // Directory time updates may be reported in a different order; deletions must match.
    a.sort();
    r.sort();
    assert_eq!(a, r, "-i output of the re-run");
    assert!(a
        .iter()
        .any(|l| l.contains("*deleting") && l.contains("junk")));
    assert!(
        !a.iter().any(|l| l.starts_with(">f")),
        "re-run copied files again: {a:?}"
    );
}

#[test]
fn demo_commands_produce_rsyncs_tree() {
    // The same steps as scripts/demo: arsync -aHS --stats, then a no-op arsync -aHSi.
    let w = scratch();
    let src = w.path().join("src");
    fs::create_dir_all(src.join("docs/deep/er")).unwrap();
    fs::create_dir_all(src.join("bin")).unwrap();
    let mut rng = Rng::new(1);
    for i in 1..=50 {
        fs::write(src.join(format!("docs/file{i}.dat")), rng.bytes(i * 37)).unwrap();
    }
    fs::write(src.join("docs/deep/er/readme.txt"), b"hello\n").unwrap();
    std::os::unix::fs::symlink("../docs/deep/er/readme.txt", src.join("bin/link")).unwrap();
    fs::hard_link(src.join("docs/file1.dat"), src.join("bin/hardlink")).unwrap();
    let _ = std::process::Command::new("mkfifo")
        .arg(src.join("bin/fifo"))
        .status();
    fs::set_permissions(src.join("bin"), fs::Permissions::from_mode(0o4750)).unwrap();
    let sp = fs::File::create(src.join("sparse.img")).unwrap();
    sp.set_len(64 << 20).unwrap();
    drop(sp);
    settle_times(&src);
    let dst = w.path().join("dst");
    let out = arsync(&[
        OsString::from("-aHS"),
        "--stats".into(),
        slash(&src),
        slash(&dst),
    ]);
    assert_code(&out, 0, "demo sync");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Number of files:"), "{text}");
    assert!(
        text.contains("Number of regular files transferred: 52"),
        "{text}"
    );
    let again = arsync(&[OsString::from("-aHSi"), slash(&src), slash(&dst)]);
    assert_code(&again, 0, "demo rerun");
    assert!(
        again.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&again.stdout)
    );
    let r = w.path().join("ref");
    assert_code(
        &rsync(&[OsString::from("-aHS"), slash(&src), slash(&r)]),
        0,
        "rsync",
    );
    let o = SnapOpts {
        sparse: true,
        ..SnapOpts::default()
    };
    assert_same_tree(&dst, &r, o, "demo");
}

#[test]
fn list_only_escapes_names_that_are_not_utf8_like_rsync() {
    use std::os::unix::ffi::OsStrExt;
    let w = scratch();
    let src = w.path().join("src");
    let name = |b: &[u8]| std::ffi::OsStr::from_bytes(b).to_os_string();
    fs::create_dir_all(src.join(name(b"d\xe9"))).unwrap();
    fs::write(src.join(name(b"a\xffb")), b"x").unwrap();
    fs::write(src.join(name(b"d\xe9")).join(name(b"tab\there")), b"yy").unwrap();
    std::os::unix::fs::symlink(name(b"t\xfe"), src.join(name(b"l\xfd"))).unwrap();
    let args = [
        OsString::from("-a"),
        OsString::from("--list-only"),
        slash(&src),
    ];
    let (a, r) = (arsync(&args), rsync(&args));
    assert_code(&a, 0, "list-only");
    assert_eq!(lines(&a), lines(&r), "--list-only output differs");
    assert!(lines(&a).iter().any(|l| l.ends_with("l\\#375 -> t\\#376")));
}

#[test]
fn dry_run_and_list_only_change_nothing() {
    let w = scratch();
    let src = w.path().join("src");
    make_tree(&src, RICH);
    let dst = w.path().join("dst");
    let out = arsync(&[OsString::from("-ani"), slash(&src), slash(&dst)]);
    assert_code(&out, 0, "dry run");
    assert!(!dst.exists(), "dry run created the destination");
    let r = rsync(&[OsString::from("-ani"), slash(&src), slash(&dst)]);
    assert_eq!(lines(&out), lines(&r), "dry-run itemize differs");
    let l = arsync(&[
        OsString::from("--list-only"),
        OsString::from("-r"),
        slash(&src),
    ]);
    assert_code(&l, 0, "list-only");
    let text = String::from_utf8_lossy(&l.stdout);
    assert!(
        text.contains("f0_0.dat") && text.contains("dir0/"),
        "{text}"
    );
}

#[test]
fn symlink_handling_flags_match_rsync() {
    let w = scratch();
    let src = w.path().join("src");
    make_tree(
        &src,
        TreeSpec {
            dirs: 3,
            files_per_dir: 2,
            rich: true,
            seed: 21,
        },
    );
    // Links that climb out of the tree, and one inside a subdirectory.
    std::os::unix::fs::symlink("../outside", src.join("dir0/up_one")).unwrap();
    std::os::unix::fs::symlink("../../outside", src.join("dir0/up_two")).unwrap();
    fs::write(w.path().join("outside"), b"outside").unwrap();
    settle_times(&src);
    let o = SnapOpts::default();
    for flags in [
        &["-a", "-L"][..],
        &["-a", "--safe-links"],
        &["-a", "--copy-unsafe-links"],
        &["-a", "-k"],
        &["-rtp"],
        &["-rlptD", "-v"],
        &["-rlptD", "-vv"],
    ] {
        let what = flags.join(" ");
        let (ao, ro) = differential(w.path(), flags, &[slash(&src)], None, o, &what);
        if flags.iter().any(|f| f.starts_with("-v")) {
            // Same names reported (the summary lines carry timings and byte estimates).
            let strip = |v: Vec<String>| -> Vec<String> {
                v.into_iter()
                    .filter(|l| {
                        !l.starts_with("sent ")
                            && !l.starts_with("total size")
                            && !l.starts_with("created directory")
                    })
                    .collect()
            };
            let (mut a, mut r) = (strip(lines(&ao)), strip(lines(&ro)));
            if flags.contains(&"-vv") {
                // rsync prints transferred names from another process: order differs.
                a.sort();
                r.sort();
            }
            assert_eq!(a, r, "{what}: -v output differs");
        }
    }
    // -K: a symlink to a directory on the receiver is kept and written through.
    let old = w.path().join("old");
    fs::create_dir(&old).unwrap();
    fs::create_dir(old.join("real")).unwrap();
    std::os::unix::fs::symlink("real", old.join("dir0")).unwrap();
    // rsync 3.5.0 reports a spurious error (code 23) when it sets the permissions of the
    // kept directory symlink (ELOOP); arsync sets them on the directory. Trees must agree.
    let (a, r) = (w.path().join("a"), w.path().join("r"));
    let _ = fs::remove_dir_all(&a);
    let _ = fs::remove_dir_all(&r);
    clone_tree(&old, &a);
    clone_tree(&old, &r);
    let ao = arsync(&[OsString::from("-a"), "-K".into(), slash(&src), slash(&a)]);
    assert_code(&ao, 0, "-K");
    let _ = rsync(&[OsString::from("-a"), "-K".into(), slash(&src), slash(&r)]);
    assert!(fs::symlink_metadata(a.join("dir0"))
        .unwrap()
        .file_type()
        .is_symlink());
    // The one intended difference: arsync gave the kept directory the source's mode.
    let want = fs::metadata(src.join("dir0")).unwrap().permissions().mode();
    assert_eq!(
        fs::metadata(a.join("real")).unwrap().permissions().mode(),
        want
    );
    let rmode = fs::metadata(r.join("real")).unwrap().permissions();
    fs::set_permissions(a.join("real"), rmode).unwrap();
    let no_root = SnapOpts {
        root_mtime: false,
        dir_mtimes: false,
        ..o
    };
    assert_same_tree(&a, &r, no_root, "-K");
}

#[test]
fn one_file_system_matches_rsync() {
    // /dev/shm (tmpfs) inside a tree on another filesystem is a mount point; build the
    // tree in /tmp and bind nothing: use /proc's mount of a pseudo-fs instead when present.
    let w = tempfile::tempdir_in("/tmp").unwrap();
    let src = w.path().join("src");
    fs::create_dir_all(src.join("sub")).unwrap();
    fs::write(src.join("sub/f"), b"f").unwrap();
    // A symlink is not a mount point; use -x with -L on a link to /dev/shm's filesystem
    // only when /tmp and /dev/shm differ.
    let tmp_dev = std::os::unix::fs::MetadataExt::dev(&fs::metadata("/tmp").unwrap());
    let shm_dev = std::os::unix::fs::MetadataExt::dev(&fs::metadata("/dev/shm").unwrap());
    if tmp_dev == shm_dev {
        return;
    }
    let other = scratch();
    fs::write(other.path().join("far"), b"far").unwrap();
    std::os::unix::fs::symlink(other.path(), src.join("mnt")).unwrap();
    settle_times(other.path());
    settle_times(&src);
    for flags in [&["-a", "-k", "-x"][..], &["-a", "-k", "-xx"], &["-a", "-k"]] {
        differential(
            w.path(),
            flags,
            &[slash(&src)],
            None,
            SnapOpts::default(),
            &flags.join(" "),
        );
    }
}

#[test]
fn write_strategy_and_output_flags_match_rsync() {
    let w = scratch();
    let (src, old) = rich_tree_and_copy(w.path(), 3, 3, 31);
    mutate(&src);
    let tmpd = w.path().join("tmpd");
    fs::create_dir(&tmpd).unwrap();
    let temp_dir = format!("--temp-dir={}", tmpd.display());
    let o = SnapOpts::default();
    let combos: Vec<Vec<String>> = vec![
        vec!["-a".into(), temp_dir],
        vec!["-a".into(), "--inplace".into(), "-b".into()],
        vec!["-a".into(), "--fsync".into(), "--preallocate".into()],
        vec!["-a".into(), "--partial-dir=.part".into(), "--delete".into()],
        vec!["-a".into(), "--chown=1234:5678".into()],
        vec![
            "-a".into(),
            "--usermap=1234:77,root:4000".into(),
            "--groupmap=5000-6000:88,*:99".into(),
        ],
        vec![
            "-a".into(),
            "--usermap=r*:555".into(),
            "--groupmap=0:1".into(),
        ],
        vec![
            "-a".into(),
            "--numeric-ids".into(),
            "--checksum-choice=xxh128".into(),
        ],
        vec!["-a".into(), "--out-format=%o %n%L %l %B".into()],
        vec!["-a".into(), "-n".into(), "-i".into(), "--delete".into()],
        vec!["-a".into(), "-ii".into()],
        vec![
            "-a".into(),
            "-i".into(),
            "-8".into(),
            "--open-noatime".into(),
        ],
        vec![
            "-a".into(),
            "--timeout=30".into(),
            "--outbuf=L".into(),
            "--blocking-io".into(),
        ],
        vec!["-a".into(), "-d".into(), "--no-r".into(), "-i".into()],
    ];
    for flags in &combos {
        let f: Vec<&str> = flags.iter().map(|s| s.as_str()).collect();
        let what = flags.join(" ");
        // See flag_combinations_on_update_match_rsync: rsync's directory times under -b.
        let o = SnapOpts {
            dir_mtimes: !what.contains("-b"),
            ..o
        };
        let (ao, ro) = differential(w.path(), &f, &[slash(&src)], Some(&old), o, &what);
        if what.contains("out-format") || what.contains("-i") {
            assert_eq!(lines(&ao), lines(&ro), "{what}: output differs");
        }
    }
    assert!(
        fs::read_dir(&tmpd).unwrap().next().is_none(),
        "temp-dir not cleaned"
    );
}

#[test]
fn log_file_progress_and_stats_are_written() {
    let w = scratch();
    let src = w.path().join("src");
    make_tree(
        &src,
        TreeSpec {
            dirs: 2,
            files_per_dir: 3,
            rich: false,
            seed: 5,
        },
    );
    let dst = w.path().join("dst");
    let log = w.path().join("log");
    let out = arsync(&[
        OsString::from("-a"),
        format!("--log-file={}", log.display()).into(),
        "--progress".into(),
        "--info=progress2".into(),
        "-h".into(),
        "--stats".into(),
        slash(&src),
        slash(&dst),
    ]);
    assert_code(&out, 0, "log/progress");
    let text = fs::read_to_string(&log).unwrap();
    assert!(text.contains(">f+++++++++ f0_0.dat"), "{text}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("100%") && stdout.contains("xfr#"),
        "{stdout}"
    );
    assert!(
        stdout.contains("Number of regular files transferred: 10"),
        "{stdout}"
    );
    assert_same_tree(&dst, &src, SnapOpts::default(), "log/progress copy");
}

#[test]
fn bwlimit_paces_the_copy() {
    let w = scratch();
    let src = w.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("f"), Rng::new(1).bytes(3 << 20)).unwrap();
    let t = std::time::Instant::now();
    let out = arsync(&[
        OsString::from("-a"),
        "--bwlimit=4M".into(),
        slash(&src),
        slash(&w.path().join("d")),
    ]);
    assert_code(&out, 0, "bwlimit");
    let secs = t.elapsed().as_secs_f64();
    assert!(secs > 0.5, "3 MiB at 4 MiB/s took only {secs:.2}s");
}

#[test]
fn rerun_over_unchanged_tree_writes_nothing() {
    use std::os::unix::fs::MetadataExt;
    let w = scratch();
    let src = w.path().join("src");
    make_tree(&src, RICH);
    let dst = w.path().join("dst");
    let args = [
        OsString::from("-aHAXS"),
        "--delete".into(),
        slash(&src),
        slash(&dst),
    ];
    assert_code(&arsync(&args), 0, "first run");
    let ctimes = |root: &Path| {
        let mut v = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).unwrap().flatten() {
                let m = fs::symlink_metadata(e.path()).unwrap();
                if m.is_dir() {
                    stack.push(e.path());
                }
                v.push((e.path(), m.ino(), m.ctime(), m.ctime_nsec()));
            }
        }
        v.sort();
        v
    };
    let before = ctimes(&dst);
    std::thread::sleep(std::time::Duration::from_millis(20));
    let again = arsync(&args);
    assert_code(&again, 0, "second run");
    assert_eq!(before, ctimes(&dst), "the no-op run changed something");
}

#[test]
fn atimes_are_preserved_with_u_like_rsync() {
    use std::os::unix::fs::MetadataExt;
    let w = scratch();
    let src = w.path().join("src");
    fs::create_dir(&src).unwrap();
    for i in 0..5 {
        let p = src.join(format!("f{i}"));
        fs::write(&p, b"data").unwrap();
        let f = fs::File::options().write(true).open(&p).unwrap();
        let t = std::time::UNIX_EPOCH + std::time::Duration::new(1_600_000_000 + i * 77, 12345);
        f.set_times(fs::FileTimes::new().set_accessed(t)).unwrap();
    }
    let atimes = |root: &Path| -> Vec<(i64, i64)> {
        (0..5)
            .map(|i| {
                let m = fs::metadata(root.join(format!("f{i}"))).unwrap();
                (m.atime(), m.atime_nsec())
            })
            .collect()
    };
    let want = atimes(&src);
    let a = w.path().join("a");
    let r = w.path().join("r");
    assert_code(
        &arsync(&[OsString::from("-aU"), slash(&src), slash(&a)]),
        0,
        "-U",
    );
    assert_code(
        &rsync(&[OsString::from("-aU"), slash(&src), slash(&r)]),
        0,
        "-U",
    );
    // rsync 3.5.0 leaves the transfer time as atime in local copies; arsync keeps the
    // source's atimes, which is what -U promises.
    assert_eq!(atimes(&a), want, "arsync");
}

#[test]
fn per_directory_filter_files_match_rsync() {
    let w = scratch();
    let src = w.path().join("src");
    make_tree(&src, RICH);
    fs::write(src.join(".rsync-filter"), "- *.img\n- /empty_file\n").unwrap();
    fs::write(
        src.join("dir0/.rsync-filter"),
        "+ f1_0.dat\n- f1_*\nP keepme\n",
    )
    .unwrap();
    fs::write(src.join(".gitignore"), "*.bin\n# comment\nsuid\n").unwrap();
    fs::write(src.join("dir0/.gitignore"), "/f1_3.dat\n").unwrap();
    settle_times(&src);
    let old = w.path().join("old");
    fs::create_dir_all(old.join("dir0")).unwrap();
    fs::write(old.join("dir0/keepme"), b"protected").unwrap();
    fs::write(old.join("dir0/gone"), b"deleted").unwrap();
    let o = SnapOpts::default();
    for flags in [
        &["-a", "-F"][..],
        &["-a", "-FF", "--delete"],
        &["-a", "--filter=:- .gitignore"],
        &["-a", "--filter=dir-merge,- .gitignore", "--delete", "-F"],
        &["-a", "-F", "--delete-after", "--exclude=dir2"],
    ] {
        let what = flags.join(" ");
        differential(w.path(), flags, &[slash(&src)], Some(&old), o, &what);
    }
}

#[test]
fn destination_symlink_to_directory_is_written_through() {
    let w = scratch();
    let src = w.path().join("src");
    make_tree(
        &src,
        TreeSpec {
            dirs: 2,
            files_per_dir: 2,
            rich: false,
            seed: 8,
        },
    );
    for (i, tool) in ["arsync", "rsync"].iter().enumerate() {
        let real = w.path().join(format!("real{i}"));
        let link = w.path().join(format!("link{i}"));
        fs::create_dir(&real).unwrap();
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let args = [
            OsString::from("-a"),
            slash(&src),
            link.clone().into_os_string(),
        ];
        let o = if i == 0 { arsync(&args) } else { rsync(&args) };
        assert_code(&o, 0, tool);
        assert!(
            fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink(),
            "{tool}"
        );
    }
    assert_same_tree(
        &w.path().join("real0"),
        &w.path().join("real1"),
        SnapOpts::default(),
        "through symlink",
    );
}

/// Many files per directory go to the workers in batches (by count and by bytes): the tree,
/// its holes and the `-i` output order must still be rsync's, with several worker counts and
/// queue depths, for a fresh copy and for an update.
#[test]
fn batched_workers_keep_rsyncs_tree_and_order() {
    use std::os::unix::fs::FileExt;
    let w = scratch();
    let src = w.path().join("src");
    for d in ["", "sub", "sub/deeper"] {
        let dir = src.join(d);
        fs::create_dir_all(&dir).unwrap();
        for i in 0..90u32 {
            let f = dir.join(format!("f{i:03}"));
            let data: Vec<u8> = (0..(i * 97 % 9000))
                .map(|b| (b as u8) ^ (i as u8) | 1)
                .collect();
            fs::write(&f, &data).unwrap();
        }
        // Zero blocks inside data (become holes with -S), a zero tail, and big files that
        // fill a batch by bytes on their own.
        let mut z = vec![0u8; 5 * 4096 + 10];
        z[4096] = 1;
        fs::write(dir.join("zeros"), &z).unwrap();
        for (n, len) in [("big1", 3u64 << 20), ("big2", (1 << 20) + 5)] {
            let f = fs::File::create(dir.join(n)).unwrap();
            f.set_len(len).unwrap();
            f.write_all_at(b"head", 0).unwrap();
            f.write_all_at(&vec![7u8; 70_000], len / 2).unwrap();
        }
    }
    // rsync 3.5.0 leaves these directories with the time its last file landed (arsync sets
    // the source's, see the deliberate differences in ARCHITECTURE.md), so directory times
    // are not compared here.
    let o = SnapOpts {
        sparse: true,
        dir_mtimes: false,
        root_mtime: false,
        ..SnapOpts::default()
    };
    // The destination's name differs between the two runs.
    let same_dest = |v: Vec<String>| -> Vec<String> {
        v.into_iter()
            .filter(|l| !l.starts_with("created directory"))
            .collect()
    };
    for extra in [
        &["--threads=2", "--queue-depth=4"][..],
        &["--threads=3"][..],
        &["--threads=1"][..],
    ] {
        let mut flags = vec!["-aSi"];
        flags.extend_from_slice(extra);
        let (ao, ro) = differential(w.path(), &flags, &[slash(&src)], None, o, "batched fresh");
        assert_eq!(
            same_dest(lines(&ao)),
            same_dest(lines(&ro)),
            "{flags:?}: fresh -i output differs"
        );
        assert!(lines(&ao).len() > 270, "every file is reported");
    }
    // An update: some files change, the rest are up to date.
    let initial = w.path().join("initial");
    let _ = fs::remove_dir_all(&initial);
    clone_tree(&w.path().join("a"), &initial);
    for i in (0..90).step_by(7) {
        fs::write(src.join("sub").join(format!("f{i:03}")), b"changed").unwrap();
    }
    let (ao, ro) = differential(
        w.path(),
        &["-aSi", "--threads=2"],
        &[slash(&src)],
        Some(&initial),
        o,
        "batched update",
    );
    assert_eq!(
        same_dest(lines(&ao)),
        same_dest(lines(&ro)),
        "update -i output differs"
    );
}

#[test]
fn tricky_filter_combinations_match_rsync() {
    let w = scratch();
    let src = w.path().join("src");
    for d in [
        "build/deep",
        "sub/only/d",
        "sub/inner/build",
        "cache/b",
        ".git",
        "docs/img",
    ] {
        fs::create_dir_all(src.join(d)).unwrap();
    }
    for f in [
        "a.c",
        "a.o",
        "core",
        "foo~",
        "keep.log",
        "top.txt",
        "build/x.o",
        "build/y.txt",
        "build/deep/z.txt",
        "sub/a.tmp",
        "sub/b.txt",
        "sub/only/c.txt",
        "sub/only/d/e.txt",
        "sub/only2",
        "sub/inner/a.tmp",
        "sub/inner/q.txt",
        "sub/inner/build/w.txt",
        "cache/a",
        "cache/b/c",
        ".git/config",
        "docs/readme.md",
        "docs/img/p.png",
    ] {
        fs::write(src.join(f), f.as_bytes()).unwrap();
    }
    // Anchored rules in a per-directory file are relative to that directory.
    fs::write(
        src.join("sub/.rsync-filter"),
        "- *.tmp\n+ /only/***\n- /only2\nP precious*\n",
    )
    .unwrap();
    fs::write(src.join(".rsync-filter"), "- /docs/img/\n").unwrap();
    settle_times(&src);
    // An older destination with extraneous entries, some of them protected.
    let old = w.path().join("old");
    for d in ["sub", "gone_dir/deeper", "cache"] {
        fs::create_dir_all(old.join(d)).unwrap();
    }
    for f in [
        "sub/precious1",
        "sub/gone.txt",
        "gone_dir/precious2",
        "gone_dir/x",
        "gone_dir/deeper/x",
        "keep.log.old",
        "x.o",
        "cache/old",
    ] {
        fs::write(old.join(f), b"old").unwrap();
    }
    let o = SnapOpts::default();
    for flags in [
        &[
            "-a",
            "--exclude=/top.txt",
            "--exclude=**/deep/**",
            "--exclude=cache/***",
        ][..],
        &["-a", "--include=*/", "--include=**.txt", "--exclude=*"],
        &[
            "-a",
            "--exclude=build/",
            "--include=/sub/",
            "--exclude=/*/",
            "--delete",
        ],
        &["-a", "-F", "--delete"],
        &["-a", "-FF", "--delete-after", "--filter=- /a.*"],
        &["-a", "-C", "--delete"],
        &[
            "-a",
            "-C",
            "--delete",
            "--delete-excluded",
            "--filter=P *.old",
        ],
        &[
            "-a",
            "--delete",
            "--filter=P gone_dir/precious*",
            "--filter=-p x",
        ],
        &[
            "-a",
            "--filter=- sub/only2",
            "--filter=+ sub/only/***",
            "--filter=- sub/*/",
            "-F",
        ],
        &[
            "-a",
            "-F",
            "-C",
            "--filter=protect core",
            "--delete",
            "--exclude=/sub/inner/",
        ],
    ] {
        let what = flags.join(" ");
        // A directory kept by protected entries while everything else in it is deleted is
        // absent from the source: its mtime is whenever the deletions happened.
        let o = if flags.contains(&"--filter=-p x") {
            SnapOpts {
                dir_mtimes: false,
                ..o
            }
        } else {
            o
        };
        differential(w.path(), flags, &[slash(&src)], Some(&old), o, &what);
        if !o.dir_mtimes {
            // The perishable rule did not keep `gone_dir/x`; the protect rule kept the
            // directory.
            assert!(w.path().join("a/gone_dir/precious2").exists(), "{what}");
            assert!(!w.path().join("a/gone_dir/x").exists(), "{what}");
        }
    }
}
