//! Regressions found by auditing local arsync against rsync 3.5 flag by flag: each test runs
//! the real rsync and arsync on the same trees and compares what rsync users see (trees,
//! exit codes, stdout and stderr lines).

mod common;

use arsync_testutil::{compare_trees, CompareOpts};
use common::*;
use std::ffi::OsString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::Output;

/// Runs rsync into `work/r` and arsync into `work/a`, each seeded from `initial` (when
/// given), with `flags`, the sources and the destination (with a trailing slash).
fn both(work: &Path, flags: &[&str], src: &Path, initial: Option<&Path>) -> (Output, Output) {
    let mut outs = Vec::new();
    for (name, prog) in [("r", true), ("a", false)] {
        let dst = work.join(name);
        let _ = fs::remove_dir_all(&dst);
        if let Some(init) = initial {
            clone_tree(init, &dst);
        }
        let mut args: Vec<OsString> = flags.iter().map(OsString::from).collect();
        args.push(slash(src));
        args.push(slash(&dst));
        outs.push(if prog { rsync(&args) } else { arsync(&args) });
    }
    let a = outs.pop().expect("arsync output");
    let r = outs.pop().expect("rsync output");
    (r, a)
}

/// Stdout or stderr as lines, with the program name and its trailer made comparable and
/// without the `sent N bytes  received M bytes` line (rsync counts its pipes' bytes).
fn text_lines(bytes: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(bytes)
        .lines()
        .filter(|l| !l.starts_with("sent "))
        .map(|l| {
            let l = l.replace("arsync", "rsync");
            // rsync's error lines end with the C source position and the process role.
            match l.find(" at ") {
                Some(i) if l.starts_with("rsync error:") => l[..i].to_string(),
                _ => l,
            }
        })
        .collect()
}

/// Asserts that arsync's destination `work/a` equals rsync's `work/r`.
fn same_tree(work: &Path, opts: &CompareOpts, what: &str) {
    let d = compare_trees(&work.join("a"), &work.join("r"), opts);
    let shown: Vec<String> = d.iter().take(10).map(|d| d.to_string()).collect();
    assert!(d.is_empty(), "{what}: trees differ:\n{}", shown.join("\n"));
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

fn with_prefix(lines: &[String], prefix: &str) -> Vec<String> {
    lines
        .iter()
        .filter(|l| l.starts_with(prefix))
        .cloned()
        .collect()
}

/// A destination with non-empty directories where the source has a file, a symlink and a
/// FIFO, plus extraneous entries.
fn type_clash_trees(w: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let src = w.join("src");
    let init = w.join("init");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("file"), b"now a file").unwrap();
    std::os::unix::fs::symlink("file", src.join("link")).unwrap();
    let fifo = std::ffi::CString::new(src.join("fifo").as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path; mkfifo only creates the node.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    for d in ["file", "link", "fifo"] {
        fs::create_dir_all(init.join(d).join("inner/deeper")).unwrap();
        fs::write(init.join(d).join("inner/x"), b"x").unwrap();
    }
    fs::write(init.join("extra"), b"extra").unwrap();
    settle_times(&src);
    settle_times(&init);
    (src, init)
}

#[test]
fn a_directory_in_the_way_gets_rsyncs_messages() {
    let w = scratch();
    let (src, init) = type_clash_trees(w.path());
    // Without --delete the directories stay: rsync's informational line on stdout and its
    // error on stderr for each, exit 23.
    let (r, a) = both(w.path(), &["-a"], &src, Some(&init));
    assert_eq!(a.status.code(), r.status.code());
    assert_eq!(r.status.code(), Some(23));
    assert_eq!(sorted(text_lines(&a.stdout)), sorted(text_lines(&r.stdout)));
    let want = sorted(with_prefix(&text_lines(&r.stderr), "could not make way"));
    assert_eq!(want.len(), 3, "rsync's messages changed: {want:?}");
    assert_eq!(
        sorted(with_prefix(&text_lines(&a.stderr), "could not make way")),
        want
    );
    same_tree(w.path(), &CompareOpts::default(), "-a");
}

#[test]
fn what_a_replaced_directory_held_is_shown_and_counted_as_deleted() {
    let w = scratch();
    let (src, init) = type_clash_trees(w.path());
    for flags in [
        &["-ai", "--delete"][..],
        &["-a", "--force", "--out-format=%i %n"][..],
        &["-ain", "--delete"][..],
        &["-av", "--delete", "--stats"][..],
    ] {
        let (r, a) = both(w.path(), flags, &src, Some(&init));
        assert_eq!(a.status.code(), r.status.code(), "{flags:?}");
        let (rl, al) = (text_lines(&r.stdout), text_lines(&a.stdout));
        for prefix in ["*deleting", "deleting", "Number of deleted files"] {
            assert_eq!(
                sorted(with_prefix(&al, prefix)),
                sorted(with_prefix(&rl, prefix)),
                "{flags:?}: {prefix} lines"
            );
        }
        same_tree(
            w.path(),
            &CompareOpts::default().without_dir_mtimes(),
            &format!("{flags:?}"),
        );
    }
}

#[test]
fn deletions_take_subdirectories_before_files_like_rsync() {
    let w = scratch();
    let src = w.path().join("src");
    let init = w.path().join("init");
    fs::create_dir_all(src.join("kept")).unwrap();
    for d in ["a_dir/x", "c_dir", "kept/sub"] {
        fs::create_dir_all(init.join(d)).unwrap();
    }
    for f in [
        "a_file",
        "b_file",
        "z_file",
        "a_dir/y",
        "kept/q",
        "kept/sub/r",
    ] {
        fs::write(init.join(f), f).unwrap();
    }
    for flags in [&["-ai", "--delete"][..], &["-av", "--delete-after"][..]] {
        let (r, a) = both(w.path(), flags, &src, Some(&init));
        let keep = |l: &String| l.contains("deleting");
        let rl: Vec<String> = text_lines(&r.stdout).into_iter().filter(keep).collect();
        let al: Vec<String> = text_lines(&a.stdout).into_iter().filter(keep).collect();
        assert_eq!(rl.len(), 10, "{flags:?}: rsync's deletions: {rl:?}");
        assert_eq!(al, rl, "{flags:?}");
    }
    // --max-delete takes the same first entries.
    let (r, a) = both(
        w.path(),
        &["-ai", "--delete", "--max-delete=2"],
        &src,
        Some(&init),
    );
    assert_eq!(a.status.code(), r.status.code());
    assert_eq!(text_lines(&a.stdout), text_lines(&r.stdout));
    assert_eq!(text_lines(&a.stderr), text_lines(&r.stderr));
}

#[test]
fn deleted_names_are_escaped_like_rsync() {
    let w = scratch();
    let src = w.path().join("src");
    let init = w.path().join("init");
    fs::create_dir_all(&src).unwrap();
    fs::create_dir_all(&init).unwrap();
    fs::write(init.join("new\nline"), b"1").unwrap();
    fs::write(init.join(std::ffi::OsStr::from_bytes(b"bad\xffname")), b"2").unwrap();
    for flags in [&["-ai", "--delete"][..], &["-av", "--delete"][..]] {
        let (r, a) = both(w.path(), flags, &src, Some(&init));
        let keep = |l: &String| l.contains("deleting");
        let rl: Vec<String> = text_lines(&r.stdout).into_iter().filter(keep).collect();
        let al: Vec<String> = text_lines(&a.stdout).into_iter().filter(keep).collect();
        assert_eq!(rl.len(), 2, "{flags:?}: {rl:?}");
        assert_eq!(al, rl, "{flags:?}");
    }
}

#[test]
fn rsyncs_other_option_names_are_accepted() {
    let w = scratch();
    let src = w.path().join("src");
    let init = w.path().join("init");
    fs::create_dir_all(src.join("d")).unwrap();
    fs::write(src.join("d/f"), b"source").unwrap();
    fs::write(src.join("new"), b"new").unwrap();
    fs::create_dir_all(init.join("d")).unwrap();
    fs::write(init.join("d/f"), b"old").unwrap();
    fs::write(init.join("extra"), b"extra").unwrap();
    let fifo = std::ffi::CString::new(src.join("fifo").as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path; mkfifo only creates the node.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    settle_times(&src);
    settle_times(&init);
    let cases: &[&[&str]] = &[
        &["-a", "--del", "-i"],
        &["-a", "--ignore-non-existing", "-i"],
        &["-a", "--log-format=%n %i"],
        &["-av", "--no-v"],
        &["-ai", "--no-i", "-v"],
        &["-ax", "--no-x", "-i"],
        &["-a", "--i-r", "--no-i-r", "--i-d", "--no-i-d", "-i"],
        &["-a", "--motd", "--qsort", "-i"],
        &["-a", "--bwlimit=1", "--no-bwlimit", "-i"],
        &["-a", "--timeout=5", "--no-timeout", "--no-contimeout"],
        &["-a", "--no-iconv", "--no-munge-links", "--no-write-devices"],
        &["-a", "--drop-D", "-i"],
        &["-a", "--drop-D", "--no-drop-D", "-i"],
    ];
    for flags in cases {
        let (r, a) = both(w.path(), flags, &src, Some(&init));
        assert_eq!(
            a.status.code(),
            r.status.code(),
            "{flags:?}: {}",
            String::from_utf8_lossy(&a.stderr)
        );
        assert_eq!(r.status.code(), Some(0), "{flags:?}");
        assert_eq!(text_lines(&a.stdout), text_lines(&r.stdout), "{flags:?}");
        same_tree(w.path(), &CompareOpts::default(), &format!("{flags:?}"));
    }
    // --remove-sent-files removes what was sent, as --remove-source-files.
    let copy = w.path().join("srccopy");
    clone_tree(&src, &copy);
    let out = arsync(&[
        OsString::from("-r"),
        OsString::from("--remove-sent-files"),
        slash(&copy),
        slash(&w.path().join("sent")),
    ]);
    assert_code(&out, 0, "--remove-sent-files");
    assert!(!copy.join("d/f").exists() && w.path().join("sent/d/f").exists());
    // rsync options this build does not carry out are refused, naming the option.
    for opt in [
        "--insecure-links",
        "--confine-root=/",
        "--old-dirs",
        "--old-d",
        "--config=/dev/null",
        "--detach",
    ] {
        let out = arsync(&[
            OsString::from("-a"),
            OsString::from(opt),
            slash(&src),
            slash(&w.path().join("refused")),
        ]);
        assert_code(&out, 1, opt);
        let name = opt.split('=').next().unwrap_or(opt);
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(name),
            "{opt}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// rsync's `total size is N  speedup is X` line, with the speedup reduced to its shape
/// (its value depends on how many bytes crossed rsync's pipes).
fn total_line_shape(out: &Output) -> String {
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("total size is"))
        .unwrap_or_else(|| panic!("no total line in {text}"));
    let (head, tail) = line.split_once("speedup is ").expect("speedup");
    let shape: String = tail
        .chars()
        .map(|c| if c.is_ascii_digit() { '9' } else { c })
        .collect();
    format!("{head}speedup is {shape}")
}

#[test]
fn summary_numbers_follow_h_and_dry_run_like_rsync() {
    let w = scratch();
    let src = w.path().join("src");
    fs::create_dir_all(&src).unwrap();
    // Big enough that a dry run's speedup is in the thousands.
    fs::write(src.join("big"), vec![7u8; 6_000_000]).unwrap();
    fs::write(src.join("small"), b"s").unwrap();
    for extra in [
        &[][..],
        &["--no-h"][..],
        &["-h"][..],
        &["-hh"][..],
        &["-h", "--no-h"][..],
        &["--no-h", "-h"][..],
    ] {
        let mut flags = vec!["-avn"];
        flags.extend_from_slice(extra);
        let (r, a) = both(w.path(), &flags, &src, None);
        let (rs, as_) = (total_line_shape(&r), total_line_shape(&a));
        assert!(rs.ends_with(" (DRY RUN)"), "{rs}");
        // The speedup's digits differ between the two, so compare the shape up to the
        // number of digits before the first separator.
        let squeeze = |s: &str| {
            let mut out = String::new();
            for c in s.chars() {
                if !(c == '9' && out.ends_with('9')) {
                    out.push(c);
                }
            }
            out
        };
        assert_eq!(squeeze(&as_), squeeze(&rs), "{extra:?}");
    }
}

#[test]
fn out_format_numbers_and_times_match_rsync() {
    let w = scratch();
    let src = w.path().join("src");
    fs::create_dir_all(src.join("d")).unwrap();
    fs::write(src.join("d/mid"), vec![1u8; 1500]).unwrap();
    fs::write(src.join("big"), vec![2u8; 5_228_553]).unwrap();
    fs::write(src.join("tiny"), b"t").unwrap();
    settle_times(&src);
    for fmt in [
        "--out-format=%n|%l|%'l|%''l|%'''l|%M|%B|%U|%G",
        "--out-format=%-12n|%10l|%-8'l|",
        // With %i rsync also announces the destination it creates.
        "--out-format=%i %n",
    ] {
        for h in [&[][..], &["-h"][..], &["--no-h"][..]] {
            let mut flags = vec!["-a", fmt];
            flags.extend_from_slice(h);
            let (r, a) = both(w.path(), &flags, &src, None);
            assert_eq!(a.status.code(), Some(0));
            // The destination's path differs (r, a).
            let same_dest = |v: Vec<String>| -> Vec<String> {
                v.into_iter()
                    .map(|l| match l.strip_prefix("created directory ") {
                        Some(p) => format!("created directory {}", &p[..p.len() - 1]),
                        None => l,
                    })
                    .collect()
            };
            let rl = same_dest(text_lines(&r.stdout));
            let want = if fmt.contains("%i") { 6 } else { 5 };
            assert_eq!(rl.len(), want, "{flags:?}: {rl:?}");
            assert_eq!(same_dest(text_lines(&a.stdout)), rl, "{flags:?}");
        }
    }
}

/// A source and an older, partly different copy of it to update.
fn update_trees(w: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let src = w.join("src");
    let init = w.join("init");
    for d in ["sticky/in", "grp", "plain/deep"] {
        fs::create_dir_all(src.join(d)).unwrap();
    }
    for f in ["top", "sticky/in/f", "grp/g", "plain/deep/p", "same"] {
        fs::write(src.join(f), format!("new {f}")).unwrap();
    }
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(src.join("sticky"), fs::Permissions::from_mode(0o1777)).unwrap();
    fs::set_permissions(src.join("grp"), fs::Permissions::from_mode(0o2770)).unwrap();
    settle_times(&src);
    clone_tree(&src, &init);
    for f in ["top", "sticky/in/f", "grp/g", "plain/deep/p"] {
        fs::write(init.join(f), b"old").unwrap();
    }
    settle_times(&init);
    (src, init)
}

#[test]
fn backups_without_a_backup_dir_leave_directory_times_like_rsync() {
    let w = scratch();
    let (src, init) = update_trees(w.path());
    for flags in [
        &["-ai", "-b"][..],
        &["-ai", "-b", "--suffix=.old", "--inplace"][..],
    ] {
        let (r, a) = both(w.path(), flags, &src, Some(&init));
        assert_eq!(a.status.code(), r.status.code(), "{flags:?}");
        // No ".d..t......" lines: rsync implies --omit-dir-times.
        assert_eq!(text_lines(&a.stdout), text_lines(&r.stdout), "{flags:?}");
        assert!(!text_lines(&r.stdout).iter().any(|l| l.starts_with(".d")));
        // Directories keep the time the backups gave them (the time of the run).
        same_tree(
            w.path(),
            &CompareOpts::default().without_dir_mtimes(),
            &format!("{flags:?}"),
        );
    }
}

#[test]
fn backup_dir_directories_take_the_destinations_modes() {
    let w = scratch();
    let (src, init) = update_trees(w.path());
    let (r, a) = both(w.path(), &["-ai", "--backup-dir=bak"], &src, Some(&init));
    assert_eq!(a.status.code(), r.status.code());
    assert_eq!(text_lines(&a.stdout), text_lines(&r.stdout));
    // Directory times in the backup area are whenever the backups were made.
    same_tree(
        w.path(),
        &CompareOpts::default().without_dir_mtimes(),
        "--backup-dir",
    );
}

#[test]
fn an_outdated_file_is_replaced_from_an_exact_basis_like_rsync() {
    let w = scratch();
    let (src, init) = update_trees(w.path());
    // The basis holds the source's files exactly.
    let basis = w.path().join("basis");
    clone_tree(&src, &basis);
    let basis_arg = format!("{}", basis.display());
    for opt in ["--link-dest", "--compare-dest"] {
        let flag = format!("{opt}={basis_arg}");
        for flags in [&["-ai", flag.as_str()][..], &["-aii", flag.as_str()][..]] {
            let (r, a) = both(w.path(), flags, &src, Some(&init));
            assert_eq!(a.status.code(), r.status.code(), "{flags:?}");
            assert_eq!(text_lines(&a.stdout), text_lines(&r.stdout), "{flags:?}");
            same_tree(
                w.path(),
                &CompareOpts::default().without_dir_mtimes(),
                &format!("{flags:?}"),
            );
        }
        // Linked into the basis, as rsync's are.
        use std::os::unix::fs::MetadataExt;
        let nlink = fs::metadata(w.path().join("a/top")).map(|m| m.nlink());
        let want = fs::metadata(w.path().join("r/top")).map(|m| m.nlink());
        assert_eq!(nlink.ok(), want.ok(), "{opt}");
    }
}

#[test]
fn relative_absolute_paths_and_files_from_without_r_match_rsync() {
    let w = scratch();
    let src = w.path().join("src");
    fs::create_dir_all(src.join("d1/d2/d3")).unwrap();
    fs::write(src.join("d1/a"), b"a").unwrap();
    fs::write(src.join("d1/d2/b"), b"b").unwrap();
    fs::write(src.join("d1/d2/d3/c"), b"c").unwrap();
    fs::write(src.join("plain"), b"p").unwrap();
    settle_times(&src);
    let list = w.path().join("list");
    fs::write(&list, b"d1/a\nplain\nd1/d2\nmissing\n").unwrap();
    let runs: [(Vec<OsString>, &str); 3] = [
        // -R with an absolute path and no "/./": the whole path is kept.
        (
            vec!["-aR".into(), src.join("d1/d2").into_os_string()],
            "-R absolute",
        ),
        (
            vec![
                "-ai".into(),
                "--no-R".into(),
                format!("--files-from={}", list.display()).into(),
                src.clone().into_os_string(),
            ],
            "--files-from --no-R",
        ),
        (
            vec![
                "-ai".into(),
                format!("--files-from={}", list.display()).into(),
                src.clone().into_os_string(),
            ],
            "--files-from",
        ),
    ];
    for (args, what) in runs {
        let mut outs = Vec::new();
        for (name, real) in [("r", true), ("a", false)] {
            let dst = w.path().join(name);
            let _ = fs::remove_dir_all(&dst);
            let mut v = args.clone();
            v.push(slash(&dst));
            outs.push(if real { rsync(&v) } else { arsync(&v) });
        }
        let (r, a) = (&outs[0], &outs[1]);
        assert_eq!(a.status.code(), r.status.code(), "{what}");
        let body = |o: &Output| -> Vec<String> {
            text_lines(&o.stdout)
                .into_iter()
                .filter(|l| !l.starts_with("created directory"))
                .collect()
        };
        if what != "-R absolute" {
            assert_eq!(body(a), body(r), "{what}");
        }
        // The missing entry is named as listed.
        assert_eq!(text_lines(&a.stderr), text_lines(&r.stderr), "{what}");
        same_tree(w.path(), &CompareOpts::default().without_dir_mtimes(), what);
    }
}

#[test]
fn usage_and_destination_errors_read_like_rsyncs() {
    let w = scratch();
    let src = w.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), b"f").unwrap();
    let dst = w.path().join("no/such/dir/");
    for args in [
        vec!["-a", "--frobnicate"],
        vec!["-aY9"],
        vec!["-v", "-Y"],
        vec!["-a", "--frob=1"],
        vec!["-a"],
    ] {
        let mut v: Vec<OsString> = args.iter().map(OsString::from).collect();
        v.push(slash(&src));
        v.push(dst.clone().into_os_string());
        let (r, a) = (rsync(&v), arsync(&v));
        assert_eq!(a.status.code(), r.status.code(), "{args:?}");
        let msg = |o: &Output| -> Vec<String> {
            text_lines(&o.stderr)
                .into_iter()
                .map(|l| match l.find('[') {
                    Some(i) if l.starts_with("rsync error:") => l[..i].trim_end().to_string(),
                    _ => l,
                })
                .collect()
        };
        assert_eq!(msg(&a), msg(&r), "{args:?}");
    }
}

#[test]
fn a_type_change_is_not_taken_from_a_link_dest_like_rsync() {
    let w = scratch();
    let src = w.path().join("src");
    let init = w.path().join("init");
    fs::create_dir_all(&src).unwrap();
    fs::create_dir_all(&init).unwrap();
    let fifo = std::ffi::CString::new(src.join("ff").as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path; mkfifo only creates the node.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    std::os::unix::fs::symlink("x", src.join("sl")).unwrap();
    fs::write(src.join("new"), b"new").unwrap();
    // The destination has regular files where the source has a FIFO and a symlink.
    fs::write(init.join("ff"), b"reg").unwrap();
    fs::write(init.join("sl"), b"reg").unwrap();
    settle_times(&src);
    settle_times(&init);
    let flag = format!("--link-dest={}", src.display());
    for flags in [&["-ai", flag.as_str()][..], &["-ain", flag.as_str()][..]] {
        let (r, a) = both(w.path(), flags, &src, Some(&init));
        assert_eq!(a.status.code(), r.status.code(), "{flags:?}");
        assert_eq!(text_lines(&a.stdout), text_lines(&r.stdout), "{flags:?}");
        same_tree(w.path(), &CompareOpts::default(), &format!("{flags:?}"));
        use std::os::unix::fs::MetadataExt;
        for name in ["ff", "sl", "new"] {
            let n = |d: &str| fs::symlink_metadata(w.path().join(d).join(name)).map(|m| m.nlink());
            assert_eq!(n("a").ok(), n("r").ok(), "{flags:?} {name}");
        }
    }
}

#[test]
fn log_file_names_are_written_raw_like_rsync() {
    let w = scratch();
    let src = w.path().join("src");
    fs::create_dir_all(src.join("d")).unwrap();
    fs::write(src.join("new\nline"), b"1").unwrap();
    fs::write(src.join(std::ffi::OsStr::from_bytes(b"bad\xffname")), b"2").unwrap();
    fs::write(src.join("d/plain"), b"3").unwrap();
    settle_times(&src);
    let mut logs = Vec::new();
    for (name, real) in [("r", true), ("a", false)] {
        let log = w.path().join(format!("{name}.log"));
        let args: Vec<OsString> = vec![
            "-a".into(),
            format!("--log-file={}", log.display()).into(),
            "--log-file-format=%i|%n|%l".into(),
            slash(&src),
            slash(&w.path().join(name)),
        ];
        let out = if real { rsync(&args) } else { arsync(&args) };
        assert_code(&out, 0, name);
        let text = fs::read(&log).unwrap();
        // Lines are "date time [pid] message"; the items are the ones with our format.
        let mut items: Vec<Vec<u8>> = text
            .split(|&b| b == b'\n')
            .filter_map(|l| {
                let at = l.windows(2).position(|w| w == b"] ")?;
                Some(l[at + 2..].to_vec())
            })
            .filter(|m| m.iter().filter(|&&b| b == b'|').count() == 2)
            .collect();
        items.sort();
        logs.push(items);
    }
    // Control characters are escaped, other bytes written as they are.
    assert!(logs[0].iter().any(|l| l.windows(3).any(|w| w == b"\xffna")));
    assert!(logs[0].iter().any(|l| l.windows(4).any(|w| w == b"#012")));
    assert_eq!(logs[1], logs[0]);
}

#[test]
fn a_destination_dir_is_made_even_when_every_source_is_missing() {
    let w = scratch();
    let missing = w.path().join("nope");
    for (flags, slashed) in [
        (&["-a"][..], true),
        (&["-a"][..], false),
        (&["-a", "--ignore-missing-args"][..], true),
    ] {
        let mut codes = Vec::new();
        let mut made = Vec::new();
        for (name, real) in [("r", true), ("a", false)] {
            let dst = w.path().join(name);
            let _ = fs::remove_dir_all(&dst);
            let mut args: Vec<OsString> = flags.iter().map(OsString::from).collect();
            args.push(missing.clone().into_os_string());
            args.push(if slashed {
                slash(&dst)
            } else {
                dst.clone().into_os_string()
            });
            let out = if real { rsync(&args) } else { arsync(&args) };
            codes.push(out.status.code());
            made.push(dst.is_dir());
        }
        assert_eq!(codes[1], codes[0], "{flags:?} {slashed}");
        assert_eq!(made[1], made[0], "{flags:?} {slashed}");
    }
}

/// Several `dir/` sources into one destination: rsync's file list keeps the first source's
/// `.`, so its line comes once and the destination gets the first source's mode and time
/// (arsync used to print `./` per source and leave the last one's attributes).
#[test]
fn several_dir_sources_keep_the_first_ones_root_like_rsync() {
    use std::os::unix::fs::PermissionsExt;
    let w = scratch();
    let (a, b) = (w.path().join("s1"), w.path().join("s2"));
    for (dir, name, mode, secs) in [
        (&a, "x", 0o700, 1_577_836_800),
        (&b, "y", 0o755, 1_609_459_200),
    ] {
        fs::create_dir(dir).unwrap();
        fs::write(dir.join(name), name).unwrap();
        fs::set_permissions(dir, fs::Permissions::from_mode(mode)).unwrap();
        arsync_testutil::set_mtime(dir, secs, 0).unwrap();
    }
    for (flags, seeded) in [(&["-ai"][..], false), (&["-ai", "--delete"][..], true)] {
        let mut outs = Vec::new();
        for (name, prog) in [("r", true), ("a", false)] {
            let dst = w.path().join(name);
            let _ = fs::remove_dir_all(&dst);
            if seeded {
                fs::create_dir(&dst).unwrap();
                fs::write(dst.join("extra"), "z").unwrap();
            }
            let mut args: Vec<OsString> = flags.iter().map(OsString::from).collect();
            args.extend([slash(&a), slash(&b), slash(&dst)]);
            outs.push(if prog { rsync(&args) } else { arsync(&args) });
        }
        let (r, ours) = (&outs[0], &outs[1]);
        assert_eq!(
            ours.status.code(),
            r.status.code(),
            "{flags:?}: {}",
            String::from_utf8_lossy(&ours.stderr)
        );
        let dot = |o: &Output| {
            text_lines(&o.stdout)
                .into_iter()
                .filter(|l| l.ends_with(" ./"))
                .count()
        };
        assert_eq!(dot(r), 1, "rsync's output changed: {flags:?}");
        assert_eq!(dot(ours), 1, "{flags:?}: {:?}", text_lines(&ours.stdout));
        // The destinations' names differ ("created directory DST").
        let items = |o: &Output| {
            let lines = text_lines(&o.stdout);
            sorted(
                lines
                    .into_iter()
                    .filter(|l| !l.starts_with("created "))
                    .collect(),
            )
        };
        assert_eq!(items(ours), items(r));
        same_tree(w.path(), &CompareOpts::default(), &format!("{flags:?}"));
        let mode = fs::metadata(w.path().join("a"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o700, "{flags:?}: the first source's mode");
    }
}
