//! Large files: copied in ranges (several workers), with and without `-S`, exactly; holes and
//! zero blocks become holes with `-S`; a failing range fails the file and leaves nothing.

mod common;

use common::*;
use std::ffi::OsString;
use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::process::Command;

const MIB: u64 = 1 << 20;

/// 64 MiB of data, 8 MiB of written zeros, a 32 MiB hole, 30 MiB of data and a zero tail:
/// 134 MiB, more than two of the engine's 64 MiB ranges. Returns the bytes of data.
fn make_big(path: &Path) -> u64 {
    let f = File::create(path).unwrap();
    let mut rng = Rng::new(7);
    let chunk = rng.bytes(MIB as usize);
    let write = |from: u64, mib: u64| {
        for i in 0..mib {
            // Vary each MiB a little so that no two are alike.
            let mut c = chunk.clone();
            c[..8].copy_from_slice(&(from + i).to_le_bytes());
            f.write_all_at(&c, (from + i) * MIB).unwrap();
        }
    };
    write(0, 64);
    f.write_all_at(&vec![0u8; 8 * MIB as usize], 64 * MIB)
        .unwrap();
    write(104, 30);
    f.set_len(134 * MIB + 1000).unwrap();
    94 * MIB
}

fn same_contents(a: &Path, b: &Path) -> bool {
    let (mut fa, mut fb) = (File::open(a).unwrap(), File::open(b).unwrap());
    if fa.metadata().unwrap().len() != fb.metadata().unwrap().len() {
        return false;
    }
    let (mut ba, mut bb) = (vec![0u8; MIB as usize], vec![0u8; MIB as usize]);
    loop {
        let n = fa.read(&mut ba).unwrap();
        let mut m = 0;
        while m < n {
            let r = fb.read(&mut bb[m..n]).unwrap();
            assert!(r > 0);
            m += r;
        }
        if ba[..n] != bb[..n] {
            return false;
        }
        if n == 0 {
            return true;
        }
    }
}

fn no_temp_files(dir: &Path) -> bool {
    fs::read_dir(dir)
        .unwrap()
        .all(|e| !e.unwrap().file_name().to_string_lossy().starts_with('.'))
}

#[test]
fn large_file_in_ranges_with_and_without_sparse() {
    let w = scratch();
    let src = w.path().join("src");
    fs::create_dir(&src).unwrap();
    let data = make_big(&src.join("big"));
    for (flags, sparse) in [("-a", false), ("-aS", true)] {
        let dst = w.path().join(format!("dst{flags}"));
        let o = arsync(&[OsString::from(flags), slash(&src), slash(&dst)]);
        assert_code(&o, 0, flags);
        assert!(same_contents(&src.join("big"), &dst.join("big")), "{flags}");
        assert!(no_temp_files(&dst), "{flags}");
        let m = fs::metadata(dst.join("big")).unwrap();
        assert_eq!(
            m.mtime(),
            fs::metadata(src.join("big")).unwrap().mtime(),
            "{flags}"
        );
        let allocated = m.blocks() * 512;
        if sparse {
            // The written zeros and the hole are holes; the data is allocated.
            assert!(
                allocated <= data + MIB,
                "{flags}: {allocated} bytes allocated"
            );
            assert!(allocated >= data, "{flags}: {allocated} bytes allocated");
        } else {
            assert!(
                allocated >= data + 8 * MIB,
                "{flags}: {allocated} bytes allocated"
            );
        }
    }
}

/// `-S` on a dense-looking file whose zeros are scattered: holes shorter than the step between
/// `SEEK_DATA` calls, single zero blocks, zeros spanning range and chunk boundaries, and blocks
/// whose only data is their first or last byte. The copy is exact and allocates exactly the
/// blocks rsync -S allocates (all zero runs are block-aligned, so both make the same holes).
#[test]
fn scattered_zeros_become_the_same_holes_as_rsync() {
    let w = scratch();
    let src = w.path().join("src");
    fs::create_dir(&src).unwrap();
    let path = src.join("scattered");
    let len = 70 * MIB;
    let f = File::create(&path).unwrap();
    f.set_len(len).unwrap();
    let mut rng = Rng::new(11);
    let mut at = 0;
    while at < len {
        // A run of data blocks, then a run of zero blocks: written zeros or a real hole.
        let data = 4096 * (1 + rng.below(300));
        let data = data.min(len - at);
        let mut bytes = rng.bytes(data as usize);
        if rng.below(4) == 0 {
            // Only the first or last byte of this run's first block carries data.
            let keep = if rng.below(2) == 0 { 0 } else { 4095 };
            let first = bytes[keep] | 1;
            bytes[..4096.min(data as usize)].fill(0);
            bytes[keep.min(data as usize - 1)] = first;
        }
        f.write_all_at(&bytes, at).unwrap();
        at += data;
        let zeros = (4096 * rng.below(600)).min(len - at);
        if rng.below(2) == 0 {
            f.write_all_at(&vec![0u8; zeros as usize], at).unwrap();
        }
        at += zeros;
    }
    // Zeros across the 64 MiB range boundary.
    f.write_all_at(&vec![0u8; 3 * MIB as usize], 63 * MIB)
        .unwrap();
    drop(f);
    let ours = w.path().join("ours");
    let o = arsync(&[OsString::from("-aS"), slash(&src), slash(&ours)]);
    assert_code(&o, 0, "arsync -aS");
    assert!(same_contents(&path, &ours.join("scattered")));
    let ours_blocks = fs::metadata(ours.join("scattered")).unwrap().blocks();
    assert!(ours_blocks * 512 < len - 3 * MIB, "{ours_blocks} blocks");
    let theirs = w.path().join("theirs");
    let o = rsync(&[OsString::from("-aS"), slash(&src), slash(&theirs)]);
    assert_code(&o, 0, "rsync -aS");
    let theirs_blocks = fs::metadata(theirs.join("scattered")).unwrap().blocks();
    assert_eq!(
        ours_blocks, theirs_blocks,
        "512-byte blocks, arsync vs rsync"
    );
}

/// A small tmpfs mounted for one test, unmounted when dropped.
struct Mount<'a>(&'a Path);

impl Drop for Mount<'_> {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0).status();
    }
}

#[test]
fn destination_full_in_the_middle_of_a_range_leaves_nothing() {
    if !am_root() {
        return;
    }
    let w = scratch();
    let src = w.path().join("src");
    fs::create_dir(&src).unwrap();
    make_big(&src.join("big"));
    fs::write(src.join("small"), b"small").unwrap();
    let dst = w.path().join("dst");
    fs::create_dir(&dst).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=80m", "tmpfs"])
        .arg(&dst)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        return; // no mount permission (container): nothing to test here
    }
    let _guard = Mount(&dst);
    for flags in ["-a", "-aS"] {
        let o = arsync(&[OsString::from(flags), slash(&src), slash(&dst)]);
        assert_code(&o, 11, flags);
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("No space left on device"),
            "{flags}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(
            !dst.join("big").exists(),
            "{flags}: a partial file was committed"
        );
        assert!(no_temp_files(&dst), "{flags}: temporary file left");
    }
}

/// `-S` on large files whose size is not a multiple of the block: a zero run reaching the
/// end (including the partial last block), data ending in a partial block, and a file of
/// zeros only. Exact copies, with the blocks rsync -S allocates.
#[test]
fn unaligned_ends_and_all_zero_files_match_rsync() {
    let w = scratch();
    let src = w.path().join("src");
    fs::create_dir(&src).unwrap();
    let mut rng = Rng::new(5);
    // 3 MiB of data, then zeros to the end: the last block is partial.
    let mut tail = rng.bytes(3 * MIB as usize);
    tail.resize(3 * MIB as usize + 70_000 + 123, 0);
    fs::write(src.join("zero-tail"), &tail).unwrap();
    // Zeros, then data ending inside a block.
    let mut head = vec![0u8; 2 * MIB as usize + 4096];
    head.extend_from_slice(&rng.bytes(MIB as usize + 555));
    fs::write(src.join("data-tail"), &head).unwrap();
    // Only written zeros, more than one 64 MiB range.
    let zeros = File::create(src.join("zeros")).unwrap();
    let block = vec![0u8; 8 * MIB as usize];
    for i in 0..9 {
        zeros.write_all_at(&block, i * 8 * MIB).unwrap();
    }
    zeros.set_len(72 * MIB + 77).unwrap();
    drop(zeros);
    let ours = w.path().join("ours");
    let o = arsync(&[OsString::from("-aS"), slash(&src), slash(&ours)]);
    assert_code(&o, 0, "arsync -aS");
    let theirs = w.path().join("theirs");
    let o = rsync(&[OsString::from("-aS"), slash(&src), slash(&theirs)]);
    assert_code(&o, 0, "rsync -aS");
    for name in ["zero-tail", "data-tail", "zeros"] {
        assert!(same_contents(&src.join(name), &ours.join(name)), "{name}");
        let ours_blocks = fs::metadata(ours.join(name)).unwrap().blocks();
        let theirs_blocks = fs::metadata(theirs.join(name)).unwrap().blocks();
        assert_eq!(ours_blocks, theirs_blocks, "{name}: 512-byte blocks");
    }
    assert_eq!(fs::metadata(ours.join("zeros")).unwrap().blocks(), 0);
}

/// A source that shrinks or grows while it is copied (the copy is slowed by `--bwlimit`)
/// gives a warning and a consistent copy: it ends where the shrunk source ended (not padded
/// with zeros), or holds the bytes the source had when opened (not a mix of lengths).
#[test]
fn source_changing_size_during_the_copy_is_a_warning() {
    for grow in [false, true] {
        let w = scratch();
        let src = w.path().join("src");
        fs::create_dir(&src).unwrap();
        let path = src.join("changes");
        let content = Rng::new(9).bytes(4 * MIB as usize);
        fs::write(&path, &content).unwrap();
        let dst = w.path().join("dst");
        let change = {
            let path = path.clone();
            std::thread::spawn(move || {
                std::thread::sleep(std::time::Duration::from_millis(700));
                let f = File::options().write(true).open(&path).unwrap();
                if grow {
                    f.write_all_at(&vec![7u8; MIB as usize], 4 * MIB).unwrap();
                } else {
                    f.set_len(MIB).unwrap();
                }
            })
        };
        // 2000 KiB/s: four 1 MiB pieces take about two seconds.
        let o = arsync(&[
            OsString::from("-a"),
            OsString::from("--bwlimit=2000"),
            slash(&src),
            slash(&dst),
        ]);
        change.join().unwrap();
        assert_code(&o, 0, "arsync");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("changed while it was copied"),
            "grow={grow}: {err}"
        );
        let copied = fs::read(dst.join("changes")).unwrap();
        if grow {
            assert!(copied == content, "grow: {} bytes", copied.len());
        } else {
            assert!(copied.len() < content.len(), "{} bytes", copied.len());
            assert!(content.starts_with(&copied), "the copy is not a prefix");
        }
        assert!(no_temp_files(&dst), "grow={grow}");
    }
}
