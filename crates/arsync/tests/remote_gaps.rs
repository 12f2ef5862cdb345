//! Option edge cases where arsync used to differ from rsync, each run with
//! the real binaries in every pairing (client arsync|rsync x server
//! arsync|rsync, through the stand-in ssh) and compared with rsync talking
//! to rsync: `--stop-after=0`, `--checksum-seed`, `--checksum-choice=sha1`,
//! an empty `--files-from` list, an rsync client pushing `--list-only` to a
//! receiving server, `-vv`, and one file sent to a new name or over a file.

use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use arsync_testutil::remote::{install_fake_ssh, pairings, run_over_shell, Direction};
use arsync_testutil::{
    assert_trees_match_first, scratch_dir, settle_tree, CompareOpts, SeededBytes, Settle,
};

fn arsync_bin() -> OsString {
    PathBuf::from(env!("CARGO_BIN_EXE_arsync")).into_os_string()
}

const T0: u64 = 1_600_000_000;

/// Writes `data` to `root/rel` (parents created) with mtime `secs`.
fn put(root: &Path, rel: &str, data: &[u8], secs: u64) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(&p, data).unwrap();
    arsync_testutil::set_mtime(&p, secs as i64, 0).unwrap();
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn describe(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        text(&o.stdout),
        text(&o.stderr)
    )
}

/// The first line of stderr without the program's name (`rsync: ` / `arsync: `).
fn first_error(o: &Output) -> String {
    let s = text(&o.stderr);
    let line = s.lines().next().unwrap_or("").to_string();
    line.split_once(": ")
        .map(|x| x.1.to_string())
        .unwrap_or(line)
}

/// A source tree and an older copy of it: a file with new data appended
/// (a delta against the copy), an unchanged one, one only in the source,
/// and one with the same size and mtime but other bytes (only `-c` sends it).
fn delta_tree(src: &Path, dst: &Path) {
    let mut base = vec![0u8; 200_000];
    SeededBytes::new(7).fill(&mut base);
    let mut grown = base.clone();
    grown.extend_from_slice(b"appended data");
    put(src, "big", &grown, T0 + 10);
    put(dst, "big", &base, T0);
    put(src, "same", b"unchanged", T0);
    put(dst, "same", b"unchanged", T0);
    put(src, "sub/new", b"only in the source", T0);
    put(src, "twin", b"source bytes", T0);
    put(dst, "twin", b"target bytes", T0);
    symlink("same", src.join("link")).unwrap();
    settle_tree(src, Settle::DirsAndLinks, 1_500_000_000).unwrap();
    settle_tree(dst, Settle::DirsAndLinks, 1_500_000_000).unwrap();
}

/// `Matched data: N bytes` of a `--stats` block.
fn matched_bytes(stdout: &[u8]) -> Option<u64> {
    let s = text(stdout);
    let line = s.lines().find(|l| l.starts_with("Matched data: "))?;
    line["Matched data: ".len()..]
        .split_whitespace()
        .next()?
        .replace(',', "")
        .parse()
        .ok()
}

#[test]
fn stop_after_zero_is_refused_as_rsync_refuses_it() {
    let tmp = scratch_dir().unwrap();
    let rsh = install_fake_ssh(tmp.path()).unwrap();
    let src = tmp.path().join("src");
    put(&src, "a", b"data", T0);
    for bad in ["--stop-after=0", "--time-limit=0", "--stop-after=-3"] {
        let mut seen = Vec::new();
        for client in [OsString::from("rsync"), arsync_bin()] {
            // Locally, then pushing and pulling through the remote shell.
            let local_dst = tmp.path().join("local");
            let local = Command::new(&client)
                .args(["-a", bad])
                .arg(format!("{}/", src.display()))
                .arg(&local_dst)
                .stdin(Stdio::null())
                .output()
                .unwrap();
            let remote_dst = tmp.path().join("remote");
            let (from, to) = Direction::Push.endpoints(&src, &remote_dst);
            let push = run_over_shell(&client, &client, &rsh, &["-a", bad], &from, &to).unwrap();
            let (from, to) = Direction::Pull.endpoints(&src, &remote_dst);
            let pull = run_over_shell(&client, &client, &rsh, &["-a", bad], &from, &to).unwrap();
            for (what, o) in [("local", &local), ("push", &push), ("pull", &pull)] {
                let who = format!("{client:?} {bad} {what}");
                assert_eq!(o.status.code(), Some(1), "{who}: {}", describe(o));
                seen.push((who, first_error(o)));
            }
            assert!(!local_dst.exists() && !remote_dst.exists(), "{bad}");
        }
        let want = format!(
            "invalid --stop-after value: {}",
            bad.split('=').nth(1).unwrap()
        );
        for (who, line) in &seen {
            assert_eq!(line, &want, "{who}");
        }
    }
}

/// A stand-in ssh that also appends the remote command to `log`.
fn logging_ssh(dir: &Path, log: &Path) -> PathBuf {
    let path = dir.join("log-ssh");
    let script = format!(
        "#!/bin/sh\n{}echo \"$*\" >> '{}'\nexec sh -c \"$*\"\n",
        arsync_testutil::ssh_skip_to_command!(),
        log.display()
    );
    fs::write(&path, script).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// The checksum seed a batch file records (rsync writes the seed it got
/// from the server after the stream flags, the protocol and the compat
/// flags varint).
fn batch_seed(batch: &[u8]) -> i32 {
    let extra = batch[8].leading_ones() as usize;
    let at = 9 + extra;
    i32::from_le_bytes(batch[at..at + 4].try_into().unwrap())
}

#[test]
fn checksum_seed_is_sent_to_the_server_and_used() {
    let tmp = scratch_dir().unwrap();
    let log = tmp.path().join("ssh.log");
    let rsh = logging_ssh(tmp.path(), &log);
    let arsync = arsync_bin();
    let seed = 0x0102_0304;
    let flag = format!("--checksum-seed={seed}");
    for dir in [Direction::Push, Direction::Pull] {
        let mut dsts = Vec::new();
        for (label, client, server) in pairings(&arsync) {
            let work = tmp.path().join(format!("{label}-{dir:?}"));
            let (src, dst) = (work.join("src"), work.join("dst"));
            delta_tree(&src, &dst);
            let _ = fs::remove_file(&log);
            let (from, to) = dir.endpoints(&src, &dst);
            let flags = ["-a", "--stats", flag.as_str(), "--no-i-r"];
            let o = run_over_shell(&client, &server, &rsh, &flags, &from, &to).unwrap();
            let who = format!("{label} {dir:?}");
            assert_eq!(o.status.code(), Some(0), "{who}: {}", describe(&o));
            // Sent to the server as rsync's client sends it.
            let cmd = fs::read_to_string(&log).unwrap();
            assert!(
                cmd.split_whitespace().any(|w| w == flag),
                "{who}: server command {cmd}"
            );
            // The seeded block sums matched the basis (the delta worked).
            assert!(
                matched_bytes(&o.stdout).is_some_and(|m| m > 100_000),
                "{who}: {}",
                text(&o.stdout)
            );
            dsts.push((label, dst));
        }
        assert_trees_match_first(&dsts, &CompareOpts::default().without_dir_mtimes());
    }
    // The server sends the seed it was given: rsync's client records it in
    // a batch file, from rsync's server and from arsync's.
    for server in [OsString::from("rsync"), arsync.clone()] {
        let work = tmp.path().join(format!("batch-{}", server.len()));
        let (src, dst) = (work.join("src"), work.join("dst"));
        delta_tree(&src, &dst);
        let batch = work.join("b");
        let (from, to) = Direction::Push.endpoints(&src, &dst);
        let write = format!("--write-batch={}", batch.display());
        let flags = ["-a", flag.as_str(), write.as_str()];
        let o = run_over_shell("rsync".as_ref(), &server, &rsh, &flags, &from, &to).unwrap();
        assert_eq!(o.status.code(), Some(0), "{server:?}: {}", describe(&o));
        assert_eq!(batch_seed(&fs::read(&batch).unwrap()), seed, "{server:?}");
    }
    // A bad value is rsync's usage error.
    let src = tmp.path().join("bad-src");
    put(&src, "a", b"x", T0);
    let (from, to) = Direction::Push.endpoints(&src, &tmp.path().join("never"));
    let mut lines = Vec::new();
    for client in [OsString::from("rsync"), arsync.clone()] {
        for bad in ["--checksum-seed=x", "--checksum-seed=99999999999"] {
            let o = run_over_shell(&client, &client, &rsh, &["-a", bad], &from, &to).unwrap();
            assert_eq!(
                o.status.code(),
                Some(1),
                "{client:?} {bad}: {}",
                describe(&o)
            );
            lines.push(first_error(&o));
        }
    }
    assert_eq!(lines[..2], lines[2..]);
    assert!(!tmp.path().join("never").exists());
}

#[test]
fn sha1_checksums_in_every_pairing() {
    let tmp = scratch_dir().unwrap();
    let rsh = install_fake_ssh(tmp.path()).unwrap();
    let arsync = arsync_bin();
    for choice in ["--cc=sha1", "--checksum-choice=md5,sha1", "--cc=SHA1,xxh64"] {
        for dir in [Direction::Push, Direction::Pull] {
            let mut dsts = Vec::new();
            for (label, client, server) in pairings(&arsync) {
                let work = tmp.path().join(format!("{label}-{dir:?}-{}", choice.len()));
                let (src, dst) = (work.join("src"), work.join("dst"));
                delta_tree(&src, &dst);
                let (from, to) = dir.endpoints(&src, &dst);
                let flags = ["-ac", "--stats", choice];
                let o = run_over_shell(&client, &server, &rsh, &flags, &from, &to).unwrap();
                let who = format!("{choice} {label} {dir:?}");
                assert_eq!(o.status.code(), Some(0), "{who}: {}", describe(&o));
                assert!(
                    matched_bytes(&o.stdout).is_some_and(|m| m > 100_000),
                    "{who}: {}",
                    text(&o.stdout)
                );
                // -c found the twin with the same size and mtime.
                assert_eq!(
                    fs::read(dst.join("twin")).unwrap(),
                    b"source bytes",
                    "{who}"
                );
                dsts.push((label, dst));
            }
            assert_trees_match_first(&dsts, &CompareOpts::default().without_dir_mtimes());
        }
    }
}

#[test]
fn empty_files_from_list_as_rsync() {
    let tmp = scratch_dir().unwrap();
    let rsh = install_fake_ssh(tmp.path()).unwrap();
    let arsync = arsync_bin();
    let list = tmp.path().join("empty.list");
    fs::write(&list, b"").unwrap();
    let ff = format!("--files-from={}", list.display());
    let src = tmp.path().join("src");
    put(&src, "a", b"data", T0);
    for (dir, slash) in [
        (Direction::Push, ""),
        (Direction::Push, "/"),
        (Direction::Pull, ""),
        (Direction::Pull, "/"),
    ] {
        let mut results = Vec::new();
        for (label, client, server) in pairings(&arsync) {
            let dst = tmp
                .path()
                .join(format!("dst-{label}-{dir:?}-{}", slash.len()));
            let (from, to) = dir.endpoints(&src, &dst);
            let to = format!("{to}{slash}");
            let o = run_over_shell(&client, &server, &rsh, &["-a", &ff], &from, &to).unwrap();
            let made = dst.is_dir() && fs::read_dir(&dst).unwrap().count() == 0;
            results.push((label, o.status.code(), made, dst.exists(), describe(&o)));
        }
        let (_, code, made, exists, _) = &results[0];
        assert_eq!(*code, Some(0), "rsync->rsync {dir:?}: {}", results[0].4);
        // rsync makes the destination of a push when it ends with a slash.
        assert_eq!(
            *made,
            dir == Direction::Push && slash == "/",
            "{dir:?} {slash}"
        );
        for (label, c, m, e, d) in &results[1..] {
            assert_eq!(
                (c, m, e),
                (code, made, exists),
                "{label} {dir:?} {slash}: {d}"
            );
        }
    }
    // Locally: the destination is made when it ends with a slash.
    for slash in ["", "/"] {
        let mut made = Vec::new();
        for client in [OsString::from("rsync"), arsync.clone()] {
            let dst = tmp
                .path()
                .join(format!("local-{}-{}", client.len(), slash.len()));
            let o = Command::new(&client)
                .args(["-a", &ff])
                .arg(format!("{}/", src.display()))
                .arg(format!("{}{slash}", dst.display()))
                .output()
                .unwrap();
            assert_eq!(o.status.code(), Some(0), "{client:?}: {}", describe(&o));
            made.push(dst.is_dir() && fs::read_dir(&dst).unwrap().count() == 0);
        }
        assert_eq!(made, [!slash.is_empty(); 2], "local {slash:?}");
    }
}

#[test]
fn list_only_pushed_to_a_receiving_server_lists_the_source() {
    let tmp = scratch_dir().unwrap();
    let rsh = install_fake_ssh(tmp.path()).unwrap();
    let src = tmp.path().join("src");
    put(&src, "a", b"data", T0);
    put(&src, "sub/b", &[7u8; 5000], T0 + 5);
    put(&src, "sub/deeper/c", b"c", T0 + 9);
    symlink("a", src.join("link")).unwrap();
    settle_tree(&src, Settle::DirsAndLinks, 1_500_000_000).unwrap();
    for extra in [&[][..], &["--no-i-r"][..]] {
        let mut outs = Vec::new();
        for server in [OsString::from("rsync"), arsync_bin()] {
            let dst = tmp.path().join(format!("dst-{}", server.len()));
            let (from, to) = Direction::Push.endpoints(&src, &dst);
            let mut flags = vec!["-a", "--list-only"];
            flags.extend_from_slice(extra);
            let o = run_over_shell("rsync".as_ref(), &server, &rsh, &flags, &from, &to).unwrap();
            assert_eq!(o.status.code(), Some(0), "{server:?}: {}", describe(&o));
            assert!(!dst.exists(), "{server:?}: the destination was made");
            outs.push(text(&o.stdout));
        }
        assert!(outs[0].contains("sub/deeper/c"), "{}", outs[0]);
        assert_eq!(outs[1], outs[0], "rsync->arsync {extra:?}");
    }
}

/// The lines of `-vv` output that do not depend on the run: without
/// rsync's `opening connection` line (the remote command), the byte counts
/// and the speedup, with the destination's path as `DST`.
fn vv_lines(stdout: &[u8], dst: &Path) -> Vec<String> {
    let dst = dst.display().to_string();
    text(stdout)
        .lines()
        .filter(|l| {
            !l.is_empty()
                && !l.starts_with("opening connection")
                && !l.starts_with("sent ")
                && !l.starts_with("total size is")
        })
        .map(|l| l.replace(&dst, "DST"))
        .collect()
}

#[test]
fn very_verbose_output_matches_rsync() {
    let tmp = scratch_dir().unwrap();
    let rsh = install_fake_ssh(tmp.path()).unwrap();
    let arsync = arsync_bin();
    for dir in [Direction::Push, Direction::Pull] {
        // A delta update, the same run again (everything up to date), and
        // whole files into a new destination.
        for (round, flags, fresh) in [
            (0, &["-avv", "--no-i-r"][..], false),
            (1, &["-avv", "--no-i-r"][..], false),
            (2, &["-avvW", "--no-i-r"][..], true),
        ] {
            let mut outs = Vec::new();
            for (label, client, server) in pairings(&arsync) {
                let work = tmp.path().join(format!("{label}-{dir:?}"));
                let (src, mut dst) = (work.join("src"), work.join("dst"));
                if round == 0 {
                    delta_tree(&src, &dst);
                }
                if fresh {
                    dst = work.join("fresh");
                }
                let (from, to) = dir.endpoints(&src, &dst);
                let o = run_over_shell(&client, &server, &rsh, flags, &from, &to).unwrap();
                let who = format!("{label} {dir:?} round {round}");
                assert_eq!(o.status.code(), Some(0), "{who}: {}", describe(&o));
                outs.push((who, vv_lines(&o.stdout, &dst)));
            }
            let (_, want) = &outs[0];
            // The reference shows rsync's -vv lines.
            assert!(
                want.iter().any(|l| l.starts_with("delta-transmission "))
                    && want.iter().any(|l| l.starts_with("total: matches=")),
                "{want:?}"
            );
            if round == 1 {
                assert!(want.iter().any(|l| l == "same is uptodate"), "{want:?}");
            }
            for (who, got) in &outs[1..] {
                // The generator's lines (`NAME is uptodate`) come out as it
                // goes, the names of transferred files once they are done
                // (a pull) or sent (a push): how the two interleave depends
                // on timing, with rsync on both sides as well. The rest is
                // in order.
                let sorted = |v: &[String]| {
                    let mut v = v.to_vec();
                    v.sort();
                    v
                };
                assert_eq!(got[..2], want[..2], "{who}");
                assert_eq!(got.last(), want.last(), "{who}");
                assert_eq!(sorted(got), sorted(want), "{who}");
            }
        }
    }
}

/// What a destination path holds: `file:CONTENT`, `dir:[names]` or `missing`.
fn holding(p: &Path) -> String {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => {
            let mut names: Vec<String> = fs::read_dir(p)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            format!("dir:{names:?}")
        }
        Ok(_) => format!("file:{}", text(&fs::read(p).unwrap())),
        Err(_) => "missing".into(),
    }
}

/// One file to a name that is not a directory: rsync writes it under that
/// name (a new one, or over an existing file); a trailing slash asks for a
/// directory; several files or a directory onto a file are refused. arsync
/// as the receiving side (an rsync push to its server, or its own pull)
/// used to make a directory of the new name and refuse an existing file.
#[test]
fn one_file_to_a_new_name_or_over_a_file() {
    let tmp = scratch_dir().unwrap();
    let rsh = install_fake_ssh(tmp.path()).unwrap();
    let arsync = arsync_bin();
    let src = tmp.path().join("src");
    put(&src, "file.txt", b"new data", T0);
    put(&src, "other.txt", b"more", T0);
    let (one, other) = (src.join("file.txt"), src.join("other.txt"));
    struct Case<'a> {
        name: &'a str,
        sources: Vec<&'a Path>,
        dest: &'a str,
        /// What is there first.
        existing: Option<&'a str>,
        refused: bool,
    }
    let case = |name, sources, dest, existing, refused| Case {
        name,
        sources,
        dest,
        existing,
        refused,
    };
    let cases = [
        case("new-name", vec![&*one], "renamed.txt", None, false),
        case(
            "over-a-file",
            vec![&*one],
            "old.txt",
            Some("old data, longer"),
            false,
        ),
        case("trailing-slash", vec![&*one], "made/", None, false),
        case(
            "two-onto-a-file",
            vec![&*one, &*other],
            "f2",
            Some("keep"),
            true,
        ),
        case("dir-onto-a-file", vec![&*src], "f3", Some("keep"), true),
    ];
    for dir in [Direction::Push, Direction::Pull] {
        for Case {
            name: case,
            sources,
            dest: name,
            existing,
            refused,
        } in &cases
        {
            let mut results = Vec::new();
            for (label, client, server) in pairings(&arsync) {
                let base = tmp.path().join(format!("{label}-{dir:?}-{case}"));
                fs::create_dir_all(&base).unwrap();
                let dst = base.join(name);
                if let Some(data) = existing {
                    fs::write(&dst, data).unwrap();
                }
                let mut cmd = Command::new(&client);
                cmd.args(["-a", "-e"])
                    .arg(&rsh)
                    .arg("--rsync-path")
                    .arg(&server);
                for (i, p) in sources.iter().enumerate() {
                    match (dir, i) {
                        (Direction::Push, _) => cmd.arg(p),
                        (Direction::Pull, 0) => cmd.arg(format!("fakehost:{}", p.display())),
                        // Further remote sources in rsync's short form.
                        (Direction::Pull, _) => cmd.arg(format!(":{}", p.display())),
                    };
                }
                match dir {
                    Direction::Push => cmd.arg(format!("fakehost:{}", dst.display())),
                    Direction::Pull => cmd.arg(&dst),
                };
                let o = cmd.stdin(Stdio::null()).output().unwrap();
                results.push((label, o.status.code(), holding(&dst), describe(&o)));
            }
            let (_, code, held, out) = &results[0];
            assert_eq!(
                *code != Some(0),
                *refused,
                "rsync->rsync {case} {dir:?}: {out}"
            );
            let want = match (*case, *refused) {
                (_, true) => "file:keep".to_string(),
                ("trailing-slash", _) => "dir:[\"file.txt\"]".to_string(),
                _ => "file:new data".to_string(),
            };
            assert_eq!(held, &want, "rsync->rsync {case} {dir:?}");
            for (label, c, h, out) in &results[1..] {
                assert_eq!(h, held, "{label} {case} {dir:?}: {out}");
                // A refusal fails in every pairing (the code it reaches the
                // client with depends on which side reports it).
                assert_eq!(*c != Some(0), *refused, "{label} {case} {dir:?}: {out}");
            }
        }
    }
}
