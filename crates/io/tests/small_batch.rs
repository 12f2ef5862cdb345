//! `copy_small_files` and `rename_many` on both backends: data, modes, holes, growth, errors,
//! and more files than the ring has direct descriptor slots.

use arsync_io::{IoConfig, Mode, Rename, Runtime, SmallCopied, SmallCopy, AT_FDCWD};
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .expect("tempdir")
}

fn job(src: &Path, expect: u64, dst: &Path, mode: u32, sparse: bool) -> SmallCopy {
    SmallCopy {
        src_dir: AT_FDCWD,
        src: cpath(src),
        src_flags: 0,
        expect,
        dst_dir: AT_FDCWD,
        dst: cpath(dst),
        mode,
        sparse,
    }
}

fn umask() -> u32 {
    // SAFETY: umask only swaps the process mask; it is set back at once.
    let old = unsafe { libc::umask(0o022) };
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    old
}

fn for_both(f: impl Fn(Runtime)) {
    for mode in [Mode::Uring, Mode::Threads] {
        f(Runtime::with_config(IoConfig::default().mode(mode)).expect("runtime"));
    }
}

#[test]
fn copies_data_modes_and_holes() {
    for_both(|rt| {
        let d = tmp();
        let p = |n: &str| d.path().join(n);
        let data: Vec<u8> = (0..9000u32).map(|i| (i % 251) as u8 + 1).collect();
        std::fs::write(p("a"), &data).unwrap();
        std::fs::write(p("empty"), b"").unwrap();
        let mut holes = vec![0u8; 3 * 4096 + 100];
        holes[4096 + 5] = 9;
        std::fs::write(p("holes"), &holes).unwrap();
        let jobs = vec![
            job(&p("a"), 9000, &p("a2"), 0o640, false),
            job(&p("empty"), 0, &p("empty2"), 0o600, true),
            job(&p("holes"), holes.len() as u64, &p("holes2"), 0o644, true),
            job(&p("a"), 9000, &p("a3"), 0o644, true),
        ];
        let out = rt.block_on(rt.io().copy_small_files(jobs)).unwrap();
        let lens: Vec<u64> = out
            .iter()
            .map(|r| match r {
                SmallCopied::Copied(n) => *n,
                other => panic!("{} backend: {other:?}", rt.backend()),
            })
            .collect();
        assert_eq!(lens, vec![9000, 0, holes.len() as u64, 9000]);
        assert_eq!(std::fs::read(p("a2")).unwrap(), data);
        assert_eq!(std::fs::read(p("a3")).unwrap(), data);
        assert_eq!(std::fs::read(p("holes2")).unwrap(), holes);
        let m = std::fs::metadata(p("a2")).unwrap();
        assert_eq!(m.permissions().mode() & 0o7777, 0o640 & !umask());
        // Only the one data block is allocated: the zero blocks stayed holes.
        let hm = std::fs::metadata(p("holes2")).unwrap();
        assert!(hm.blocks() * 512 <= 4096, "{} blocks", hm.blocks());
        assert_eq!(std::fs::metadata(p("empty2")).unwrap().len(), 0);
    });
}

#[test]
fn growth_missing_sources_and_existing_targets() {
    for_both(|rt| {
        let d = tmp();
        let p = |n: &str| d.path().join(n);
        std::fs::write(p("grown"), vec![1u8; 500]).unwrap();
        std::fs::write(p("src"), b"hello").unwrap();
        std::fs::write(p("taken"), b"old").unwrap();
        let jobs = vec![
            job(&p("grown"), 100, &p("g2"), 0o644, false),
            job(&p("nope"), 10, &p("n2"), 0o644, false),
            job(&p("src"), 5, &p("taken"), 0o644, false),
            job(&p("src"), 5, &p("nodir/x"), 0o644, false),
            job(&p("src"), 5, &p("ok"), 0o644, false),
        ];
        let out = rt.block_on(rt.io().copy_small_files(jobs)).unwrap();
        assert!(matches!(out[0], SmallCopied::Grew), "{:?}", out[0]);
        assert!(!p("g2").exists());
        assert!(
            matches!(&out[1], SmallCopied::Source(e) if e.kind() == std::io::ErrorKind::NotFound),
            "{:?}",
            out[1]
        );
        assert!(!p("n2").exists());
        assert!(
            matches!(&out[2], SmallCopied::Create(e) if e.kind() == std::io::ErrorKind::AlreadyExists),
            "{:?}",
            out[2]
        );
        assert_eq!(std::fs::read(p("taken")).unwrap(), b"old");
        assert!(matches!(&out[3], SmallCopied::Create(_)), "{:?}", out[3]);
        assert!(matches!(out[4], SmallCopied::Copied(5)), "{:?}", out[4]);
        assert_eq!(std::fs::read(p("ok")).unwrap(), b"hello");
    });
}

#[test]
fn more_files_than_direct_slots() {
    // A ring with 64 direct descriptor slots and 150 files: the rest go through the pool.
    let rt = Runtime::with_config(IoConfig::default().mode(Mode::Uring).sized(64)).unwrap();
    let d = tmp();
    let jobs: Vec<SmallCopy> = (0..150)
        .map(|i| {
            let s = d.path().join(format!("s{i}"));
            std::fs::write(&s, format!("file {i}")).unwrap();
            let n = format!("file {i}").len() as u64;
            job(&s, n, &d.path().join(format!("d{i}")), 0o644, false)
        })
        .collect();
    let out = rt.block_on(rt.io().copy_small_files(jobs)).unwrap();
    for (i, r) in out.iter().enumerate() {
        assert!(matches!(r, SmallCopied::Copied(_)), "{i}: {r:?}");
        let got = std::fs::read(d.path().join(format!("d{i}"))).unwrap();
        assert_eq!(got, format!("file {i}").into_bytes());
    }
    // Every slot was given back: a second round fits again.
    let again: Vec<SmallCopy> = (0..60)
        .map(|i| {
            let s = d.path().join(format!("s{i}"));
            let n = format!("file {i}").len() as u64;
            job(&s, n, &d.path().join(format!("e{i}")), 0o644, false)
        })
        .collect();
    let out = rt.block_on(rt.io().copy_small_files(again)).unwrap();
    assert!(out.iter().all(|r| matches!(r, SmallCopied::Copied(_))));
}

#[test]
fn renames_in_one_batch() {
    for_both(|rt| {
        let d = tmp();
        let p = |n: &str| d.path().join(n);
        std::fs::write(p("a"), b"A").unwrap();
        std::fs::write(p("b"), b"B").unwrap();
        std::fs::write(p("target"), b"old").unwrap();
        let r = |o: &str, n: &str| Rename {
            old_dir: AT_FDCWD,
            old: cpath(&p(o)),
            new_dir: AT_FDCWD,
            new: cpath(&p(n)),
        };
        let out = rt
            .block_on(
                rt.io()
                    .rename_many(vec![r("a", "a2"), r("missing", "x"), r("b", "target")]),
            )
            .unwrap();
        assert!(out[0].is_ok() && out[2].is_ok());
        assert_eq!(
            out[1].as_ref().unwrap_err().kind(),
            std::io::ErrorKind::NotFound
        );
        assert_eq!(std::fs::read(p("a2")).unwrap(), b"A");
        assert_eq!(std::fs::read(p("target")).unwrap(), b"B");
        assert!(!p("a").exists() && !p("b").exists());
    });
}
