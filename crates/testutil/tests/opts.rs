//! Each `CompareOpts` switch hides exactly its own kind of difference.

use std::path::Path;

use arsync_testutil::{
    compare_trees, get_times, meta, random_tree, scratch_dir, set_times, CompareOpts, Difference,
    FileTime, RandomTreeParams, SparseCheck, TreeBuilder,
};

fn pair(dir: &Path) -> (TreeBuilder, TreeBuilder) {
    let a = TreeBuilder::new(dir.join("a")).expect("a");
    let b = TreeBuilder::new(dir.join("b")).expect("b");
    for tb in [&a, &b] {
        tb.file("f", b"same").expect("file");
        tb.sparse_file("s", 1 << 20, &[(0, 4096)], 1)
            .expect("sparse");
        tb.dir("d").expect("dir");
        tb.set_times("f", FileTime::new(10, 1), FileTime::new(20, 2))
            .expect("times");
        tb.set_times("s", FileTime::new(10, 1), FileTime::new(20, 2))
            .expect("times");
        tb.set_times("d", FileTime::new(10, 1), FileTime::new(20, 2))
            .expect("times");
        tb.set_times("", FileTime::new(10, 1), FileTime::new(20, 2))
            .expect("times");
    }
    (a, b)
}

fn kinds(d: &[Difference]) -> Vec<&'static str> {
    d.iter().map(Difference::kind).collect()
}

#[test]
fn switches_hide_their_differences() {
    let dir = scratch_dir().expect("scratch");
    let (a, b) = pair(dir.path());
    assert!(compare_trees(a.root(), b.root(), &CompareOpts::all()).is_empty());

    // A directory mtime only.
    let (at, _) = get_times(&b.path("d")).expect("times");
    set_times(&b.path("d"), at, FileTime::new(21, 0)).expect("times");
    let opts = CompareOpts::default();
    assert_eq!(kinds(&compare_trees(a.root(), b.root(), &opts)), ["mtime"]);
    assert!(compare_trees(a.root(), b.root(), &opts.clone().without_dir_mtimes()).is_empty());
    assert!(compare_trees(a.root(), b.root(), &opts.clone().without_times()).is_empty());
    assert!(compare_trees(
        a.root(),
        b.root(),
        &opts.clone().with_time_tolerance_ns(1_000_000_000)
    )
    .is_empty());
    set_times(&b.path("d"), at, FileTime::new(20, 2)).expect("times");

    // An xattr only.
    meta::set_xattr(&b.path("f"), b"user.x", b"1").expect("xattr");
    assert_eq!(kinds(&compare_trees(a.root(), b.root(), &opts)), ["xattr"]);
    assert!(compare_trees(a.root(), b.root(), &opts.clone().without_xattrs()).is_empty());
    assert!(compare_trees(a.root(), b.root(), &CompareOpts::content_only()).is_empty());
    meta::remove_xattr(&b.path("f"), b"user.x").expect("xattr");

    // Allocation only: fill a hole with zeros, keep the times.
    let (at, mt) = get_times(&b.path("s")).expect("times");
    arsync_testutil::overwrite_at(&b.path("s"), 8192, &[0u8; 8192]).expect("write");
    set_times(&b.path("s"), at, mt).expect("times");
    let (pat, pmt) = (FileTime::new(10, 1), FileTime::new(20, 2));
    set_times(b.root(), pat, pmt).expect("times");
    assert!(compare_trees(a.root(), b.root(), &opts).is_empty());
    assert_eq!(
        kinds(&compare_trees(
            a.root(),
            b.root(),
            &opts.clone().with_sparse(SparseCheck::AllocatedBlocks)
        )),
        ["blocks"]
    );
    assert_eq!(
        kinds(&compare_trees(
            a.root(),
            b.root(),
            &opts.clone().with_sparse(SparseCheck::HoleMap)
        )),
        ["holes"]
    );
}

#[test]
fn root_metadata_switch() {
    let dir = scratch_dir().expect("scratch");
    let (a, b) = pair(dir.path());
    b.chmod("", 0o700).expect("chmod");
    let d = compare_trees(a.root(), b.root(), &CompareOpts::default());
    assert_eq!(kinds(&d), ["mode"]);
    assert_eq!(d[0].path(), Path::new("."));
    let opts = CompareOpts {
        root_metadata: false,
        ..CompareOpts::default()
    };
    assert!(compare_trees(a.root(), b.root(), &opts).is_empty());
}

#[test]
fn random_tree_features_can_be_switched_off() {
    let dir = scratch_dir().expect("scratch");
    let params = RandomTreeParams {
        dirs: 5,
        files: 20,
        symlinks: 0,
        hard_links: 0,
        sparse_files: 0,
        specials: false,
        owners: false,
        modes: false,
        times: false,
        xattrs: false,
        acls: false,
        non_utf8_names: false,
        ..RandomTreeParams::default()
    };
    let s = random_tree(dir.path(), 5, &params).expect("tree");
    assert_eq!(
        (s.dirs, s.files, s.symlinks, s.hard_links, s.specials),
        (5, 20, 0, 0, 0)
    );
    let mut seen = 0;
    let mut stack = vec![dir.path().to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir") {
            let e = e.expect("entry");
            let ft = e.file_type().expect("type");
            assert!(ft.is_dir() || ft.is_file(), "{:?}", e.path());
            assert!(
                e.file_name().to_str().is_some(),
                "non-UTF-8 name {:?}",
                e.path()
            );
            assert!(meta::list_xattrs(&e.path()).expect("xattrs").is_empty());
            if ft.is_dir() {
                stack.push(e.path());
            }
            seen += 1;
        }
    }
    assert_eq!(seen, 25);
}

#[test]
fn skipped_paths_are_left_out() {
    let dir = scratch_dir().expect("scratch");
    let (a, b) = pair(dir.path());
    b.file("d/extra", b"only in b").expect("file");
    a.file("f", b"changed").expect("file");
    let (at, mt) = (FileTime::new(10, 1), FileTime::new(20, 2));
    for tb in [&a, &b] {
        set_times(&tb.path("d"), at, mt).expect("times");
        set_times(&tb.path("f"), at, mt).expect("times");
    }
    let d = compare_trees(a.root(), b.root(), &CompareOpts::default());
    assert_eq!(kinds(&d), ["missing", "size"], "{d:#?}");
    let opts = CompareOpts::default().skipping("f").skipping("d/extra");
    assert!(compare_trees(a.root(), b.root(), &opts).is_empty());
    // Skipping a directory skips everything below it (its own mtime included).
    let opts = CompareOpts::default().skipping("d").skipping("f");
    assert!(compare_trees(a.root(), b.root(), &opts).is_empty());
}
