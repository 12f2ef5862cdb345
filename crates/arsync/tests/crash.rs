//! Crash safety: arsync is killed with SIGKILL at random moments of a large sync; no file
//! may ever appear under its real name with incomplete or wrong contents, and a re-run must
//! converge to the exact tree.

mod common;

use common::*;
use std::collections::HashMap;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

fn files_with_contents(root: &Path) -> HashMap<PathBuf, Vec<u8>> {
    let mut m = HashMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push(p);
            } else if ft.is_file() {
                m.insert(
                    p.strip_prefix(root).unwrap().to_path_buf(),
                    fs::read(&p).unwrap(),
                );
            }
        }
    }
    m
}

fn is_temp_name(p: &Path) -> bool {
    let name = p.file_name().unwrap().to_string_lossy();
    name.starts_with('.') && name.len() > 8 && name.as_bytes()[name.len() - 7] == b'.'
}

#[test]
fn kill_9_never_leaves_a_torn_file_and_rerun_converges() {
    let w = scratch();
    let src = w.path().join("src");
    make_tree(
        &src,
        TreeSpec {
            dirs: 20,
            files_per_dir: 40,
            rich: false,
            seed: 99,
        },
    );
    // A few larger files so kills also land inside data copies.
    let mut rng = Rng::new(4);
    for i in 0..4 {
        fs::write(src.join(format!("large{i}")), rng.bytes(3 << 20)).unwrap();
    }
    let want = files_with_contents(&src);
    let dst = w.path().join("dst");
    let mut rng = Rng::new(12345);
    let rounds = 50;
    for round in 0..rounds {
        // Every few rounds start over from an empty destination.
        if round % 10 == 0 {
            let _ = fs::remove_dir_all(&dst);
        }
        let mut child = Command::new(arsync_bin())
            .args([
                OsString::from("-a"),
                "--delete".into(),
                slash(&src),
                slash(&dst),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_micros(rng.below(60_000)));
        let _ = child.kill();
        let _ = child.wait();
        // Nothing under a real name may be torn: each file is absent or complete.
        for (rel, data) in files_with_contents(&dst) {
            if is_temp_name(&rel) {
                continue;
            }
            match want.get(&rel) {
                Some(expected) => assert!(
                    *expected == data,
                    "round {round}: torn file {}",
                    rel.display()
                ),
                None => panic!("round {round}: unexpected file {}", rel.display()),
            }
        }
    }
    // A final run converges (leftover temporary files are extraneous: --delete removes them).
    let o = arsync(&[
        OsString::from("-a"),
        "--delete".into(),
        slash(&src),
        slash(&dst),
    ]);
    assert_code(&o, 0, "final run");
    assert_same_tree(&dst, &src, SnapOpts::default(), "after crashes");
}

/// Peak RSS (KiB) of one arsync run, measured by /usr/bin/time.
fn peak_rss_kib(args: &[std::ffi::OsString]) -> Option<u64> {
    let out = Command::new("/usr/bin/time")
        .arg("-f")
        .arg("%M")
        .arg(arsync_bin())
        .args(args)
        .output()
        .ok()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .last()?
        .trim()
        .parse()
        .ok()
}

#[test]
fn memory_does_not_grow_with_the_tree() {
    if !Path::new("/usr/bin/time").exists() {
        return;
    }
    let w = scratch();
    let make = |root: &Path, dirs: usize, files: usize| {
        for d in 0..dirs {
            let dir = root.join(format!("d{d:03}"));
            fs::create_dir_all(&dir).unwrap();
            for f in 0..files {
                fs::write(dir.join(format!("f{f}")), b"").unwrap();
            }
        }
    };
    let (small, big) = (w.path().join("small"), w.path().join("big"));
    make(&small, 1, 400);
    make(&big, 100, 400);
    let run = |src: &Path, dst: &Path| {
        peak_rss_kib(&[
            OsString::from("-a"),
            "--delete".into(),
            slash(src),
            slash(dst),
        ])
        .unwrap_or(0)
    };
    let base = run(&small, &w.path().join("ds"));
    let large = run(&big, &w.path().join("db"));
    let again = run(&big, &w.path().join("db"));
    // 40,000 entries held at once would take several MiB; a streaming walk holds a few
    // directories (400 entries each).
    assert!(
        large < base + 3 * 1024,
        "copy: {large} KiB vs {base} KiB for 400 files"
    );
    assert!(
        again < base + 3 * 1024,
        "no-op: {again} KiB vs {base} KiB for 400 files"
    );
}
