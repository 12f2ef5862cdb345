//! The order of `-i` / `-v` output when the walker's own lines (symlinks, special files,
//! directories) fall between regular files that the workers copy in batches: arsync must
//! print exactly rsync's lines in rsync's order.

mod common;

use common::*;
use std::ffi::OsString;
use std::fs;
use std::path::Path;

fn lines(out: &std::process::Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// A directory of `n` small files with a symlink after every `every`-th one, a FIFO now and
/// then, and two subdirectories built the same way (smaller).
fn interleaved(root: &Path, n: usize, every: usize, depth: usize) {
    fs::create_dir_all(root).unwrap();
    for i in 0..n {
        let name = format!("n{i:04}");
        fs::write(root.join(&name), vec![b'a' + (i % 26) as u8; i % 700]).unwrap();
        if i % every == 0 {
            std::os::unix::fs::symlink(&name, root.join(format!("{name}l"))).unwrap();
        }
        if i % (every * 7) == 3 {
            let fifo = root.join(format!("{name}p"));
            let made = std::process::Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .unwrap();
            assert!(made.success(), "mkfifo {fifo:?}");
        }
    }
    if depth > 0 {
        for d in ["n0005d", "zz"] {
            interleaved(&root.join(d), n / 4, every, depth - 1);
        }
    }
}

#[test]
fn walker_lines_between_batched_files_keep_rsyncs_order() {
    let w = scratch();
    let src = w.path().join("src");
    interleaved(&src, 150, 9, 2);
    settle_times(&src);
    for flags in [&["-ai"][..], &["-av"], &["-aiv"]] {
        let (r, a) = (w.path().join("r"), w.path().join("a"));
        let _ = fs::remove_dir_all(&r);
        let _ = fs::remove_dir_all(&a);
        let mut rargs: Vec<OsString> = flags.iter().map(OsString::from).collect();
        rargs.extend([slash(&src), slash(&r)]);
        let mut aargs: Vec<OsString> = flags.iter().map(OsString::from).collect();
        // Three workers and small batches: many hand-offs around the walker's lines.
        aargs.extend(["--threads", "3", "--queue-depth", "64"].map(OsString::from));
        aargs.extend([slash(&src), slash(&a)]);
        let ro = rsync(&rargs);
        let ao = arsync(&aargs);
        assert_code(&ro, 0, "rsync");
        assert_code(&ao, 0, "arsync");
        let (rl, al) = (lines(&ro), lines(&ao));
        let (rb, ab) = (body(&rl), body(&al));
        assert!(rb.len() > 200, "{flags:?}: {} lines", rb.len());
        if let Some(i) = (0..rb.len().max(ab.len())).find(|&i| rb.get(i) != ab.get(i)) {
            panic!(
                "{flags:?}: line {i} differs\nrsync:  {:?}\narsync: {:?}",
                &rb[i.saturating_sub(2)..(i + 3).min(rb.len())],
                &ab[i.saturating_sub(2)..(i + 3).min(ab.len())]
            );
        }
        assert_same_tree(&r, &a, SnapOpts::default(), &format!("{flags:?}"));
    }
}

/// Six directories of `per_dir` empty files, each with a FIFO and a subdirectory holding
/// another, plus `top_files` files and a FIFO at the top.
fn with_fifos(root: &Path, per_dir: usize, top_files: usize) {
    let fifo = |p: &Path| {
        let made = std::process::Command::new("mkfifo")
            .arg(p)
            .status()
            .unwrap();
        assert!(made.success(), "mkfifo {p:?}");
    };
    fs::create_dir_all(root).unwrap();
    for d in 1..=6 {
        let dir = root.join(format!("d{d}"));
        fs::create_dir_all(dir.join("s")).unwrap();
        for i in 0..per_dir {
            fs::write(dir.join(format!("{i}")), b"").unwrap();
        }
        fifo(&dir.join("p"));
        fifo(&dir.join("s/q"));
    }
    for i in 0..top_files {
        fs::write(root.join(format!("t{i}")), b"x").unwrap();
    }
    fifo(&root.join("top"));
}

/// rsync prints "skipping non-regular file" and "deleting" lines ahead of the entries' lines
/// in runs of file lists of 1,000 entries (its incremental recursion): arsync prints them at
/// the same places. rsync's own order depends a little on timing (its generator's output
/// buffer), so arsync's output must equal one of a few rsync runs'.
#[test]
fn skip_and_delete_lines_come_in_rsyncs_runs() {
    let w = scratch();
    // 499 entries a directory: runs of two directories; 300: runs of four.
    for (per_dir, top_files) in [(498, 0), (300, 5)] {
        let src = w.path().join(format!("src{per_dir}"));
        with_fifos(&src, per_dir, top_files);
        settle_times(&src);
        let cases: [(&[&str], bool); 5] = [
            (&["-av", "--no-D"], true),
            (&["-ai", "--no-D"], false),
            (&["-aiH", "--no-D"], true),
            (&["-rv"], true),
            (&["-ai", "--no-D", "--delete"], true),
        ];
        for (flags, contents) in cases {
            let what = format!("{per_dir} {flags:?} contents={contents}");
            let from = if contents {
                slash(&src)
            } else {
                src.clone().into_os_string()
            };
            let prepare = |d: &Path| {
                let _ = fs::remove_dir_all(d);
                // Extraneous files for --delete in two of the directories.
                let sub = if contents {
                    d.to_path_buf()
                } else {
                    d.join(src.file_name().unwrap())
                };
                for extra in ["d1/zz", "d3/s/zz", "d5/zz"] {
                    let p = sub.join(extra);
                    fs::create_dir_all(p.parent().unwrap()).unwrap();
                    fs::write(p, b"gone").unwrap();
                }
            };
            let run = |tool: fn(&[OsString]) -> std::process::Output, d: &Path| {
                prepare(d);
                let mut args: Vec<OsString> = flags.iter().map(OsString::from).collect();
                args.extend([from.clone(), slash(d)]);
                let out = tool(&args);
                assert_code(&out, 0, &what);
                body(&lines(&out))
            };
            let a = run(arsync, &w.path().join("a"));
            assert!(
                a.iter().any(|l| l.starts_with("skipping non-regular file")),
                "{what}: {a:?}"
            );
            let mut seen = Vec::new();
            let matched = (0..5).any(|_| {
                let r = run(rsync, &w.path().join("r"));
                let same = r == a;
                seen.push(r);
                same
            });
            if !matched {
                let r = &seen[0];
                let i = (0..r.len().max(a.len()))
                    .find(|&i| r.get(i) != a.get(i))
                    .unwrap_or(0);
                panic!(
                    "{what}: line {i} differs from every rsync run\nrsync:  {:?}\narsync: {:?}",
                    &r[i.saturating_sub(3)..(i + 3).min(r.len())],
                    &a[i.saturating_sub(3)..(i + 3).min(a.len())]
                );
            }
        }
    }
}

/// The lines rsync and arsync must agree on: everything before the summary, without blank
/// lines, with the destination's name taken out.
fn body(l: &[String]) -> Vec<String> {
    l.iter()
        .take_while(|x| !x.starts_with("sent ") && !x.starts_with("total: "))
        .filter(|x| !x.is_empty())
        .map(|x| match x.strip_prefix("created directory ") {
            Some(_) => "created directory DEST".to_string(),
            None => x.clone(),
        })
        .collect()
}
