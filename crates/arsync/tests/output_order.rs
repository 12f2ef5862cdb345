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
        // rsync's summary lines (speedup, bytes sent) are not arsync's to match, and the
        // destinations' names differ.
        let body = |l: &[String]| -> Vec<String> {
            l.iter()
                .take_while(|x| !x.starts_with("sent ") && !x.starts_with("total: "))
                .filter(|x| !x.is_empty())
                .map(|x| match x.strip_prefix("created directory ") {
                    Some(_) => "created directory DEST".to_string(),
                    None => x.clone(),
                })
                .collect()
        };
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
