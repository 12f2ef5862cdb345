//! The comparison finds nothing between a tree and a faithful copy, and exactly the one
//! property changed when a single property of the copy is changed.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use arsync_testutil::{
    assert_trees_equal, bytes_path, compare_trees, get_times, is_root, overwrite_at, random_tree,
    scratch_dir, set_times, AclEntry, AclKind, AclTag, CompareOpts, Difference, FileTime, Kind,
    RandomTreeParams, Side, SparseCheck, TreeBuilder,
};

fn t(sec: i64, nsec: u32) -> FileTime {
    FileTime::new(sec, nsec)
}

/// A tree with one of everything.
fn full_tree(root: &Path) -> TreeBuilder {
    let tb = TreeBuilder::new(root).expect("root");
    tb.file("plain.txt", b"hello\n").expect("file");
    tb.empty_file("empty").expect("file");
    tb.file_seeded("big.bin", 300 * 1024 + 17, 7).expect("file");
    tb.file("sub/dir/deep/file", b"deep").expect("file");
    tb.deep_dirs("deep", 24, "d").expect("dirs");
    tb.dir("emptydir").expect("dir");
    tb.symlink("rel_link", "plain.txt").expect("symlink");
    tb.symlink("abs_link", "/etc/hostname").expect("symlink");
    tb.symlink("sub/dangling", "nowhere/x").expect("symlink");
    tb.file("h/a", b"linked").expect("file");
    tb.hard_link("h/a", "other/b").expect("link");
    tb.hard_link("h/a", "other/c").expect("link");
    tb.fifo("fifo", 0o640).expect("fifo");
    tb.socket("sock", 0o755).expect("socket");
    tb.sparse_file(
        "sparse.img",
        1 << 20,
        &[(0, 4096), (65536, 8192), ((1 << 20) - 4096, 4096)],
        3,
    )
    .expect("sparse");
    tb.file(bytes_path(b"caf\xe9\xff"), b"latin1")
        .expect("file");
    tb.file("suid", b"#!/bin/sh\n").expect("file");
    tb.dir("sgid_dir").expect("dir");
    tb.dir("sticky_dir").expect("dir");
    tb.file("acl_file", b"acl").expect("file");
    tb.dir("acl_dir").expect("dir");
    tb.set_xattr("plain.txt", "user.a", b"1").expect("xattr");
    if is_root() {
        tb.char_device("chr", 1, 3).expect("chr");
        tb.block_device("blk", 7, 0).expect("blk");
        tb.file("owned", b"x").expect("file");
        tb.chown("owned", 1234, 5678).expect("chown");
        tb.set_xattr("plain.txt", "trusted.b", b"2").expect("xattr");
        tb.set_xattr("plain.txt", "security.c", b"3")
            .expect("xattr");
    }
    tb.chmod("suid", 0o4755).expect("chmod");
    tb.chmod("sgid_dir", 0o2775).expect("chmod");
    tb.chmod("sticky_dir", 0o1777).expect("chmod");
    tb.set_acl(
        "acl_file",
        AclKind::Access,
        &[
            AclEntry::new(AclTag::UserObj, 6),
            AclEntry::new(AclTag::User(1234), 6),
            AclEntry::new(AclTag::GroupObj, 4),
            AclEntry::new(AclTag::Mask, 6),
            AclEntry::new(AclTag::Other, 4),
        ],
    )
    .expect("acl");
    tb.set_acl(
        "acl_dir",
        AclKind::Default,
        &[
            AclEntry::new(AclTag::UserObj, 7),
            AclEntry::new(AclTag::User(1234), 5),
            AclEntry::new(AclTag::GroupObj, 5),
            AclEntry::new(AclTag::Mask, 5),
            AclEntry::new(AclTag::Other, 5),
        ],
    )
    .expect("acl");
    // Times last, innermost first, so later changes do not disturb them. Access times are
    // whole seconds: rsync --atimes does not carry their nanoseconds.
    let mut rels: Vec<String> = [
        "plain.txt",
        "empty",
        "big.bin",
        "sub/dir/deep/file",
        "rel_link",
        "abs_link",
        "sub/dangling",
        "h/a",
        "fifo",
        "sock",
        "sparse.img",
        "suid",
        "acl_file",
    ]
    .iter()
    .map(|r| r.to_string())
    .collect();
    if is_root() {
        rels.extend(["chr", "blk", "owned"].map(String::from));
    }
    let mut deep = String::from("deep");
    let mut deep_dirs = Vec::new();
    for _ in 0..24 {
        deep.push_str("/d");
        deep_dirs.push(deep.clone());
    }
    rels.extend(deep_dirs.into_iter().rev());
    rels.extend(
        [
            "sub/dir/deep",
            "sub/dir",
            "sub",
            "h",
            "other",
            "emptydir",
            "sgid_dir",
            "sticky_dir",
            "acl_dir",
            "deep",
            "",
        ]
        .map(String::from),
    );
    for (n, rel) in rels.iter().enumerate() {
        let n = n as u32 + 1;
        tb.set_times(
            rel,
            t(1_600_000_000 + i64::from(n), 0),
            t(1_500_000_000 + i64::from(n), 123_456_789 + n),
        )
        .expect("times");
    }
    tb.set_times(
        bytes_path(b"caf\xe9\xff"),
        t(1_600_000_100, 0),
        t(1_500_000_100, 5),
    )
    .expect("times");
    tb
}

fn rsync_copy(src: &Path, dst: &Path, extra: &[&str]) {
    let out = Command::new("rsync")
        .args(["-aHAXS", "--numeric-ids"])
        .args(extra)
        .arg(format!("{}/", src.display()))
        .arg(dst)
        .output()
        .expect("rsync runs");
    assert!(
        out.status.success(),
        "rsync failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn have_rsync() -> bool {
    Command::new("rsync")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn full_opts() -> CompareOpts {
    CompareOpts::default().with_sparse(SparseCheck::HoleMap)
}

#[test]
fn faithful_copy_compares_equal() {
    if !have_rsync() {
        eprintln!("rsync not installed: skipped");
        return;
    }
    let dir = scratch_dir().expect("scratch");
    let src = dir.path().join("src");
    let dst = dir.path().join("dst");
    full_tree(&src);
    // Access times first, while no copier has read the source yet; this copier neither
    // disturbs nor drops them.
    let dst2 = dir.path().join("dst2");
    rsync_copy(&src, &dst2, &["--atimes", "--open-noatime"]);
    assert_trees_equal(&src, &dst2, &full_opts().with_atime());
    rsync_copy(&src, &dst, &[]);
    assert_trees_equal(&src, &dst, &full_opts());
    // The tree compares equal to itself under every check.
    assert_trees_equal(&src, &src, &CompareOpts::all());
}

#[test]
fn cp_archive_copy_compares_equal() {
    let dir = scratch_dir().expect("scratch");
    let src = dir.path().join("src");
    let dst = dir.path().join("dst");
    full_tree(&src);
    let out = Command::new("cp")
        .args(["-a", "--sparse=always"])
        .arg(&src)
        .arg(&dst)
        .output()
        .expect("cp runs");
    assert!(
        out.status.success(),
        "cp failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_trees_equal(&src, &dst, &full_opts());
}

/// Copies the full tree, applies `change` to the copy, and returns the differences.
fn diff_after(change: impl FnOnce(&Path), opts: &CompareOpts) -> Vec<Difference> {
    let dir = scratch_dir().expect("scratch");
    let src = dir.path().join("src");
    let dst = dir.path().join("dst");
    full_tree(&src);
    rsync_copy(&src, &dst, &["--atimes", "--open-noatime"]);
    change(&dst);
    compare_trees(&src, &dst, opts)
}

/// Runs `f` on `path` and puts back the times of `path`'s parent directory, for changes that
/// add or remove directory entries.
fn keeping_parent_times(path: &Path, f: impl FnOnce()) {
    let parent = path.parent().expect("parent");
    let (atime, mtime) = get_times(parent).expect("times");
    f();
    set_times(parent, atime, mtime).expect("restore");
}

fn keeping_times(path: &Path, f: impl FnOnce()) {
    let (atime, mtime) = get_times(path).expect("times");
    f();
    set_times(path, atime, mtime).expect("restore");
}

#[track_caller]
fn expect_one(diffs: &[Difference], kind: &str, path: &str) -> Difference {
    assert_eq!(
        diffs.len(),
        1,
        "expected exactly one {kind} difference, got: {diffs:#?}"
    );
    assert_eq!(diffs[0].kind(), kind, "{diffs:#?}");
    assert_eq!(diffs[0].path(), Path::new(path), "{diffs:#?}");
    diffs[0].clone()
}

#[test]
fn each_single_change_is_reported_exactly() {
    if !have_rsync() {
        eprintln!("rsync not installed: skipped");
        return;
    }
    let opts = full_opts();

    let d = diff_after(
        |dst| {
            fs::set_permissions(
                dst.join("plain.txt"),
                std::os::unix::fs::PermissionsExt::from_mode(0o600),
            )
            .expect("chmod")
        },
        &opts,
    );
    expect_one(&d, "mode", "plain.txt");

    let d = diff_after(
        |dst| {
            fs::set_permissions(
                dst.join("suid"),
                std::os::unix::fs::PermissionsExt::from_mode(0o755),
            )
            .expect("chmod")
        },
        &opts,
    );
    assert!(matches!(
        expect_one(&d, "mode", "suid"),
        Difference::Mode {
            a: 0o4755,
            b: 0o755,
            ..
        }
    ));

    let d = diff_after(
        |dst| {
            let p = dst.join("plain.txt");
            let (atime, mtime) = get_times(&p).expect("times");
            set_times(&p, atime, FileTime::new(mtime.sec, mtime.nsec + 1)).expect("times");
        },
        &opts,
    );
    expect_one(&d, "mtime", "plain.txt");
    // ... which a tolerance hides.
    let d = diff_after(
        |dst| {
            let p = dst.join("plain.txt");
            let (atime, mtime) = get_times(&p).expect("times");
            set_times(&p, atime, FileTime::new(mtime.sec, mtime.nsec + 1)).expect("times");
        },
        &full_opts().with_time_tolerance_ns(1000),
    );
    assert!(d.is_empty(), "{d:#?}");

    let d = diff_after(
        |dst| {
            let p = dst.join("sub");
            let (atime, mtime) = get_times(&p).expect("times");
            set_times(&p, atime, FileTime::new(mtime.sec - 1, mtime.nsec)).expect("times");
        },
        &opts,
    );
    expect_one(&d, "mtime", "sub");

    let d = diff_after(
        |dst| {
            arsync_testutil::meta::set_xattr(&dst.join("plain.txt"), b"user.a", b"changed")
                .expect("xattr")
        },
        &opts,
    );
    assert!(
        matches!(expect_one(&d, "xattr", "plain.txt"), Difference::Xattr { ref name, .. } if name == "user.a")
    );

    let d = diff_after(
        |dst| {
            arsync_testutil::meta::set_xattr(&dst.join("empty"), b"user.new", b"v").expect("xattr")
        },
        &opts,
    );
    assert!(matches!(
        expect_one(&d, "xattr", "empty"),
        Difference::Xattr { a: None, .. }
    ));

    let d = diff_after(
        |dst| {
            arsync_testutil::meta::write_acl(
                &dst.join("acl_file"),
                AclKind::Access,
                &[
                    AclEntry::new(AclTag::UserObj, 6),
                    AclEntry::new(AclTag::User(1234), 4),
                    AclEntry::new(AclTag::GroupObj, 4),
                    AclEntry::new(AclTag::Mask, 6),
                    AclEntry::new(AclTag::Other, 4),
                ],
            )
            .expect("acl")
        },
        &opts,
    );
    match expect_one(&d, "acl", "acl_file") {
        Difference::Acl { kind, a, b, .. } => {
            assert_eq!(kind, AclKind::Access);
            assert!(a.expect("acl").contains("user:1234:rw-"));
            assert!(b.expect("acl").contains("user:1234:r--"));
        }
        other => panic!("{other}"),
    }

    let d = diff_after(
        |dst| {
            arsync_testutil::meta::remove_xattr(&dst.join("acl_dir"), b"system.posix_acl_default")
                .expect("acl")
        },
        &opts,
    );
    assert!(matches!(
        expect_one(&d, "acl", "acl_dir"),
        Difference::Acl {
            kind: AclKind::Default,
            b: None,
            ..
        }
    ));

    let d = diff_after(
        |dst| {
            let b = dst.join("other/b");
            keeping_parent_times(&b, || {
                let tmp = dst.join("other/.tmp");
                let st = Command::new("cp")
                    .arg("-a")
                    .arg(&b)
                    .arg(&tmp)
                    .status()
                    .expect("cp");
                assert!(st.success());
                fs::rename(&tmp, &b).expect("rename");
            });
        },
        &opts,
    );
    match expect_one(&d, "hardlinks", "h/a") {
        Difference::HardLinks { a, b, .. } => {
            assert_eq!(
                a,
                vec![
                    PathBuf::from("h/a"),
                    PathBuf::from("other/b"),
                    PathBuf::from("other/c")
                ]
            );
            assert_eq!(b, vec![PathBuf::from("h/a"), PathBuf::from("other/c")]);
        }
        other => panic!("{other}"),
    }

    let d = diff_after(
        |dst| {
            keeping_times(&dst.join("big.bin"), || {
                let p = dst.join("big.bin");
                let old = fs::read(&p).expect("read")[100_000];
                overwrite_at(&p, 100_000, &[old ^ 0xff]).expect("write");
            })
        },
        &opts,
    );
    assert!(matches!(
        expect_one(&d, "content", "big.bin"),
        Difference::Content {
            offset: 100_000,
            ..
        }
    ));

    let d = diff_after(
        |dst| {
            keeping_times(&dst.join("plain.txt"), || {
                fs::OpenOptions::new()
                    .append(true)
                    .open(dst.join("plain.txt"))
                    .expect("open");
                fs::File::options()
                    .write(true)
                    .open(dst.join("plain.txt"))
                    .expect("open")
                    .set_len(3)
                    .expect("truncate");
            })
        },
        &opts,
    );
    assert!(matches!(
        expect_one(&d, "size", "plain.txt"),
        Difference::Size { a: 6, b: 3, .. }
    ));

    let d = diff_after(
        |dst| {
            let l = dst.join("rel_link");
            let (atime, mtime) = get_times(&l).expect("times");
            keeping_parent_times(&l, || {
                fs::remove_file(&l).expect("rm");
                std::os::unix::fs::symlink("empty", &l).expect("symlink");
            });
            set_times(&l, atime, mtime).expect("times");
        },
        &opts,
    );
    expect_one(&d, "symlink", "rel_link");

    let d = diff_after(
        |dst| {
            keeping_times(&dst.join("sparse.img"), || {
                overwrite_at(&dst.join("sparse.img"), 16384, &[0u8; 4096]).expect("fill hole")
            })
        },
        &opts,
    );
    expect_one(&d, "holes", "sparse.img");
    // Content is unchanged, so without the sparse check the copy still matches.
    let d = diff_after(
        |dst| {
            keeping_times(&dst.join("sparse.img"), || {
                overwrite_at(&dst.join("sparse.img"), 16384, &[0u8; 4096]).expect("fill hole")
            })
        },
        &CompareOpts::default(),
    );
    assert!(d.is_empty(), "{d:#?}");

    let d = diff_after(
        |dst| {
            keeping_parent_times(&dst.join("sub/dir/deep/file"), || {
                fs::remove_file(dst.join("sub/dir/deep/file")).expect("rm")
            })
        },
        &opts,
    );
    assert!(matches!(
        expect_one(&d, "missing", "sub/dir/deep/file"),
        Difference::Missing {
            only_in: Side::A,
            ..
        }
    ));

    let d = diff_after(
        |dst| {
            let p = dst.join("empty");
            keeping_parent_times(&p, || {
                fs::remove_file(&p).expect("rm");
                fs::create_dir(&p).expect("mkdir");
            });
        },
        &opts,
    );
    assert!(matches!(
        expect_one(&d, "type", "empty"),
        Difference::Type {
            a: Kind::File,
            b: Kind::Dir,
            ..
        }
    ));

    if is_root() {
        let d = diff_after(
            |dst| {
                rustix::fs::chownat(
                    rustix::fs::CWD,
                    dst.join("owned"),
                    None,
                    Some(rustix::fs::Gid::from_raw(5679)),
                    rustix::fs::AtFlags::empty(),
                )
                .expect("chown")
            },
            &opts,
        );
        assert!(matches!(
            expect_one(&d, "owner", "owned"),
            Difference::Owner {
                a: (1234, 5678),
                b: (1234, 5679),
                ..
            }
        ));
        // The owner check can be switched off.
        let d = diff_after(
            |dst| {
                rustix::fs::chownat(
                    rustix::fs::CWD,
                    dst.join("owned"),
                    Some(rustix::fs::Uid::from_raw(1)),
                    None,
                    rustix::fs::AtFlags::empty(),
                )
                .expect("chown")
            },
            &full_opts().without_owners(),
        );
        assert!(d.is_empty(), "{d:#?}");

        let d = diff_after(
            |dst| {
                let p = dst.join("chr");
                let (atime, mtime) = get_times(&p).expect("times");
                keeping_parent_times(&p, || {
                    fs::remove_file(&p).expect("rm");
                    rustix::fs::mknodat(
                        rustix::fs::CWD,
                        &p,
                        rustix::fs::FileType::CharacterDevice,
                        rustix::fs::Mode::from_raw_mode(0o600),
                        rustix::fs::makedev(1, 5),
                    )
                    .expect("mknod");
                });
                set_times(&p, atime, mtime).expect("times");
            },
            &opts,
        );
        assert!(matches!(
            expect_one(&d, "device", "chr"),
            Difference::Device {
                a: (1, 3),
                b: (1, 5),
                ..
            }
        ));

        let d = diff_after(
            |dst| {
                arsync_testutil::meta::remove_xattr(&dst.join("plain.txt"), b"trusted.b")
                    .expect("xattr")
            },
            &opts,
        );
        assert!(matches!(
            expect_one(&d, "xattr", "plain.txt"),
            Difference::Xattr { b: None, .. }
        ));
    }

    // Atime differences show only when asked for.
    let bump_atime = |dst: &Path| {
        let p = dst.join("big.bin");
        let (atime, mtime) = get_times(&p).expect("times");
        set_times(&p, FileTime::new(atime.sec + 5, atime.nsec), mtime).expect("times");
    };
    assert!(diff_after(bump_atime, &opts).is_empty());
    expect_one(
        &diff_after(bump_atime, &opts.clone().with_atime()),
        "atime",
        "big.bin",
    );
}

#[test]
fn random_trees_are_reproducible_and_copy_faithfully() {
    let dir = scratch_dir().expect("scratch");
    let params = RandomTreeParams::default();
    let a = dir.path().join("a");
    let b = dir.path().join("b");
    let c = dir.path().join("c");
    let summary = random_tree(&a, 99, &params).expect("tree");
    assert!(
        summary.files >= params.files && summary.dirs == params.dirs,
        "{summary:?}"
    );
    let again = random_tree(&b, 99, &params).expect("tree");
    assert_eq!(summary, again);
    assert_trees_equal(&a, &b, &full_opts());
    random_tree(&c, 100, &params).expect("tree");
    assert!(!compare_trees(&a, &c, &CompareOpts::default()).is_empty());
    if have_rsync() {
        let copy = dir.path().join("copy");
        rsync_copy(&a, &copy, &[]);
        assert_trees_equal(&a, &copy, &full_opts());
    }
}

#[test]
fn non_utf8_names_and_missing_roots_are_reported() {
    let dir = scratch_dir().expect("scratch");
    let a = TreeBuilder::new(dir.path().join("a")).expect("a");
    let b = TreeBuilder::new(dir.path().join("b")).expect("b");
    a.file(bytes_path(b"\xff\xfe"), b"x").expect("file");
    b.file(bytes_path(b"\xff\xfd"), b"x").expect("file");
    let d = compare_trees(a.root(), b.root(), &CompareOpts::default().without_times());
    assert_eq!(d.len(), 2, "{d:#?}");
    assert_eq!(d[0].path(), bytes_path(b"\xff\xfd"));
    assert!(matches!(
        d[0],
        Difference::Missing {
            only_in: Side::B,
            ..
        }
    ));
    let d = compare_trees(
        a.root(),
        &dir.path().join("absent"),
        &CompareOpts::default(),
    );
    assert!(matches!(d.as_slice(), [Difference::Error { .. }]), "{d:#?}");
    let msg = std::panic::catch_unwind(|| {
        assert_trees_equal(a.root(), b.root(), &CompareOpts::default().without_times())
    })
    .expect_err("must panic");
    let text = msg.downcast_ref::<String>().expect("string panic");
    assert!(
        text.contains("2 difference(s)") && text.contains("only in A"),
        "{text}"
    );
}
