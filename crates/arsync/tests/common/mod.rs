//! Shared helpers for arsync's integration tests: a tree generator with every metadata kind,
//! an exact tree snapshot/comparison, and runners for arsync and the real rsync.
//!
//! (To be replaced by `arsync-testutil` once that crate lands.)

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Path of the built arsync binary.
pub fn arsync_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_arsync"))
}

/// True when running as root (devices, ownership).
pub fn am_root() -> bool {
    fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// A scratch directory on tmpfs when available.
pub fn scratch() -> tempfile::TempDir {
    let base = if Path::new("/dev/shm").is_dir() {
        "/dev/shm"
    } else {
        "/tmp"
    };
    tempfile::Builder::new()
        .prefix("arsync-test.")
        .tempdir_in(base)
        .expect("scratch dir")
}

/// Runs a program with arguments, returning its output.
pub fn run(prog: &Path, args: &[&OsStr]) -> Output {
    Command::new(prog).args(args).output().expect("spawn")
}

/// Runs arsync.
pub fn arsync<S: AsRef<OsStr>>(args: &[S]) -> Output {
    let a: Vec<&OsStr> = args.iter().map(|s| s.as_ref()).collect();
    run(&arsync_bin(), &a)
}

/// Runs the real rsync.
pub fn rsync<S: AsRef<OsStr>>(args: &[S]) -> Output {
    let a: Vec<&OsStr> = args.iter().map(|s| s.as_ref()).collect();
    run(Path::new("/usr/bin/rsync"), &a)
}

/// Asserts an exit code, printing stderr on mismatch.
pub fn assert_code(out: &Output, code: i32, what: &str) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "{what}: stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A path as an argument with a trailing slash.
pub fn slash(p: &Path) -> OsString {
    let mut s = p.as_os_str().to_os_string();
    s.push("/");
    s
}

/// Small deterministic PRNG (xorshift).
pub struct Rng(u64);

impl Rng {
    /// Seeded generator.
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    /// Next value.
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    /// Value below `n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    /// Bytes.
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

fn set_mtime(p: &Path, sec: i64, nsec: u32) {
    let t = std::time::UNIX_EPOCH + std::time::Duration::new(sec as u64, nsec);
    let f = fs::File::options()
        .write(true)
        .open(p)
        .or_else(|_| fs::File::open(p));
    if let Ok(f) = f {
        let _ = f.set_times(fs::FileTimes::new().set_modified(t).set_accessed(t));
    }
}

fn set_link_mtime(p: &Path, sec: i64) {
    let _ = Command::new("touch")
        .arg("-h")
        .arg("-d")
        .arg(format!("@{sec}"))
        .arg(p)
        .status();
}

fn setfattr(p: &Path, name: &str, value: &str) {
    let _ = Command::new("setfattr")
        .args(["-n", name, "-v", value])
        .arg(p)
        .status();
}

fn setfacl(p: &Path, spec: &str) {
    let _ = Command::new("setfacl").args(["-m", spec]).arg(p).status();
}

/// What kinds of metadata the generated tree contains.
#[derive(Clone, Copy)]
pub struct TreeSpec {
    /// Number of directories.
    pub dirs: usize,
    /// Files per directory.
    pub files_per_dir: usize,
    /// Include symlinks, hard links, fifos, devices, xattrs, ACLs, sparse files, odd names.
    pub rich: bool,
    /// Seed.
    pub seed: u64,
}

/// Generates a tree under `root` (created).
pub fn make_tree(root: &Path, spec: TreeSpec) {
    let mut rng = Rng::new(spec.seed);
    fs::create_dir_all(root).unwrap();
    let mut dirs = vec![root.to_path_buf()];
    for i in 0..spec.dirs {
        let parent = dirs[rng.below(dirs.len() as u64) as usize].clone();
        let d = parent.join(format!("dir{i}"));
        fs::create_dir(&d).unwrap();
        dirs.push(d);
    }
    let mut files = Vec::new();
    for (di, d) in dirs.iter().enumerate() {
        for j in 0..spec.files_per_dir {
            let p = d.join(format!("f{di}_{j}.dat"));
            let size = match rng.below(10) {
                0 => 0,
                1..=6 => rng.below(4096) as usize,
                7 | 8 => rng.below(70_000) as usize,
                _ => 200_000 + rng.below(100_000) as usize,
            };
            fs::write(&p, rng.bytes(size)).unwrap();
            let mode = [0o644, 0o600, 0o755, 0o640, 0o444][rng.below(5) as usize];
            fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
            set_mtime(
                &p,
                1_600_000_000 + rng.below(10_000_000) as i64,
                rng.below(1_000_000_000) as u32,
            );
            files.push(p);
        }
    }
    fs::create_dir(root.join("empty")).unwrap();
    fs::write(root.join("empty_file"), b"").unwrap();
    if spec.rich {
        let r = root;
        // Odd names: non-UTF-8, spaces, leading dash, newline.
        fs::write(r.join(OsStr::from_bytes(b"caf\xe9 latin1")), b"latin1").unwrap();
        fs::write(r.join("with space"), b"space").unwrap();
        fs::write(r.join("-dash"), b"dash").unwrap();
        fs::write(r.join("new\nline"), b"nl").unwrap();
        // Symlinks: relative, absolute, dangling, to dir.
        symlink("f0_0.dat", r.join("link_rel")).unwrap();
        symlink("/etc/hostname", r.join("link_abs")).unwrap();
        symlink("does/not/exist", r.join("link_dangling")).unwrap();
        symlink("dir0", r.join("link_dir")).unwrap();
        set_link_mtime(&r.join("link_rel"), 1_500_000_000);
        // Hard links across directories.
        if files.len() > 3 {
            fs::hard_link(&files[1], r.join("hard_a")).unwrap();
            fs::hard_link(&files[1], dirs.last().unwrap().join("hard_b")).unwrap();
            fs::hard_link(&files[2], r.join("hard_c")).unwrap();
        }
        // Special files.
        let _ = Command::new("mkfifo").arg(r.join("fifo")).status();
        if am_root() {
            let _ = Command::new("mknod")
                .arg(r.join("chardev"))
                .args(["c", "1", "3"])
                .status();
            let _ = Command::new("mknod")
                .arg(r.join("blockdev"))
                .args(["b", "7", "200"])
                .status();
        }
        // Special mode bits.
        let suid = r.join("suid");
        fs::write(&suid, b"#!/bin/sh\n").unwrap();
        fs::set_permissions(&suid, fs::Permissions::from_mode(0o4755)).unwrap();
        let sgid_dir = r.join("sgid_dir");
        fs::create_dir(&sgid_dir).unwrap();
        fs::write(sgid_dir.join("inside"), b"in").unwrap();
        fs::set_permissions(&sgid_dir, fs::Permissions::from_mode(0o2775)).unwrap();
        let sticky = r.join("sticky_dir");
        fs::create_dir(&sticky).unwrap();
        fs::set_permissions(&sticky, fs::Permissions::from_mode(0o1777)).unwrap();
        let ro = r.join("readonly_dir");
        fs::create_dir(&ro).unwrap();
        fs::write(ro.join("x"), b"x").unwrap();
        fs::set_permissions(&ro, fs::Permissions::from_mode(0o555)).unwrap();
        // Ownership.
        if am_root() {
            let owned = r.join("owned");
            fs::write(&owned, b"owned").unwrap();
            std::os::unix::fs::chown(&owned, Some(1234), Some(5678)).unwrap();
            std::os::unix::fs::lchown(r.join("link_rel"), Some(1234), Some(5678)).unwrap();
        }
        // Xattrs and ACLs.
        setfattr(&files[0], "user.color", "blue");
        setfattr(&files[0], "user.empty", "");
        setfattr(&r.join("dir0"), "user.dirattr", "d");
        setfacl(&files[0], "u:1234:rw");
        setfacl(&r.join("dir0"), "d:u:1234:rx");
        setfacl(&r.join("dir0"), "u:1234:rwx");
        // Sparse file: 8 MiB with data in the middle and at the end.
        let sp = r.join("sparse.img");
        let f = fs::File::create(&sp).unwrap();
        f.set_len(8 << 20).unwrap();
        use std::os::unix::fs::FileExt;
        f.write_all_at(b"middle", 3 << 20).unwrap();
        f.write_all_at(b"end", (8 << 20) - 3).unwrap();
        drop(f);
        // Zero-filled (not sparse) file: -S must make it sparse like rsync.
        fs::write(r.join("zeros.bin"), vec![0u8; 256 * 1024]).unwrap();
        set_mtime(&sp, 1_650_000_000, 5);
        set_mtime(&r.join("zeros.bin"), 1_650_000_001, 7);
        set_mtime(
            &r.join(OsStr::from_bytes(b"caf\xe9 latin1")),
            1_650_000_002,
            9,
        );
    }
    // Directory times last (children changed them).
    for (i, d) in dirs.iter().enumerate().rev() {
        set_mtime(d, 1_550_000_000 + i as i64, 123);
    }
    settle_times(root);
}

/// Gives every entry created "now" an old, distinct mtime (with nanoseconds), so that
/// comparisons never depend on what happened within the current second.
pub fn settle_times(root: &Path) {
    let mut entries = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap().flatten() {
            let m = fs::symlink_metadata(e.path()).unwrap();
            if m.is_dir() {
                stack.push(e.path());
            }
            entries.push((e.path(), m));
        }
    }
    entries.push((root.to_path_buf(), fs::symlink_metadata(root).unwrap()));
    // Deepest first so that directories are stamped after their children.
    entries.sort_by_key(|(p, _)| std::cmp::Reverse(p.components().count()));
    for (i, (p, m)) in entries.iter().enumerate() {
        if m.mtime() < 1_700_000_000 {
            continue;
        }
        let sec = 1_560_000_000 + i as i64 * 1000;
        if m.is_file() || m.is_dir() {
            set_mtime(p, sec, 555_000_000 + i as u32);
        } else {
            let _ = Command::new("touch")
                .arg("-h")
                .arg("-d")
                .arg(format!("@{sec}.{:09}", 444_000_000 + i))
                .arg(p)
                .status();
        }
    }
}

/// One entry of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snap {
    /// Type and permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Mtime (sec, nsec); None when not compared.
    pub mtime: Option<(i64, i64)>,
    /// Size.
    pub size: u64,
    /// Content digest (regular files).
    pub content: Option<u64>,
    /// Symlink target.
    pub target: Option<Vec<u8>>,
    /// Device number.
    pub rdev: u64,
    /// Xattrs (name, value), sorted.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// Hard-link group: the smallest relative path sharing this inode.
    pub link_group: Option<Vec<u8>>,
    /// Sparse (fewer blocks than the size needs).
    pub sparse: bool,
}

/// What a snapshot compares.
#[derive(Clone, Copy)]
pub struct SnapOpts {
    /// Compare mtimes of non-directories.
    pub mtimes: bool,
    /// Compare directory mtimes.
    pub dir_mtimes: bool,
    /// Compare xattrs (including ACLs).
    pub xattrs: bool,
    /// Compare hard-link groups.
    pub links: bool,
    /// Compare sparseness.
    pub sparse: bool,
    /// Compare the mtime of the root directory itself.
    pub root_mtime: bool,
    /// Compare symlink mtimes.
    pub link_mtimes: bool,
}

impl Default for SnapOpts {
    fn default() -> Self {
        SnapOpts {
            mtimes: true,
            dir_mtimes: true,
            xattrs: true,
            links: true,
            sparse: false,
            root_mtime: true,
            link_mtimes: true,
        }
    }
}

fn digest(p: &Path) -> u64 {
    use std::hash::{Hash, Hasher};
    let data = fs::read(p).unwrap_or_default();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    data.hash(&mut h);
    data.len().hash(&mut h);
    h.finish()
}

fn xattrs_of(p: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    let out = Command::new("getfattr")
        .args(["-h", "-d", "-m", "-", "-e", "hex", "--absolute-names"])
        .arg(p)
        .output();
    let Ok(out) = out else { return Vec::new() };
    let mut v: Vec<(Vec<u8>, Vec<u8>)> = out
        .stdout
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty() && l[0] != b'#')
        .filter_map(|l| {
            let i = l.iter().position(|b| *b == b'=')?;
            Some((l[..i].to_vec(), l[i + 1..].to_vec()))
        })
        .filter(|(n, _)| !n.starts_with(b"security.selinux"))
        .collect();
    v.sort();
    v
}

/// Snapshots a tree: relative path -> entry. Temporary names (`.x.XXXXXX`) are included
/// so that leftovers are caught.
pub fn snapshot(root: &Path, o: SnapOpts) -> BTreeMap<Vec<u8>, Snap> {
    let mut map = BTreeMap::new();
    let mut inodes: HashMap<(u64, u64), Vec<u8>> = HashMap::new();
    let mut stack = vec![(root.to_path_buf(), Vec::<u8>::new())];
    let mut all = Vec::new();
    while let Some((dir, rel)) = stack.pop() {
        let Ok(rd) = fs::read_dir(&dir) else { continue };
        for e in rd.flatten() {
            let name = e.file_name();
            let mut r = rel.clone();
            if !r.is_empty() {
                r.push(b'/');
            }
            r.extend_from_slice(name.as_bytes());
            let p = e.path();
            let m = fs::symlink_metadata(&p).unwrap();
            if m.is_dir() {
                stack.push((p.clone(), r.clone()));
            }
            all.push((p, r, m));
        }
    }
    let root_m = fs::symlink_metadata(root).unwrap();
    all.push((root.to_path_buf(), b".".to_vec(), root_m));
    for (_, r, m) in &all {
        if !m.is_dir() && m.nlink() > 1 {
            let e = inodes
                .entry((m.dev(), m.ino()))
                .or_insert_with(|| r.clone());
            if r < e {
                *e = r.clone();
            }
        }
    }
    for (p, r, m) in all {
        let ft = m.file_type();
        let is_dir = ft.is_dir();
        let snap = Snap {
            mode: m.mode(),
            uid: m.uid(),
            gid: m.gid(),
            mtime: if (r == b"." && !o.root_mtime) || (ft.is_symlink() && !o.link_mtimes) {
                None
            } else if (is_dir && o.dir_mtimes) || (!is_dir && o.mtimes) {
                Some((m.mtime(), m.mtime_nsec()))
            } else {
                None
            },
            size: if is_dir { 0 } else { m.size() },
            content: ft.is_file().then(|| digest(&p)),
            target: ft
                .is_symlink()
                .then(|| fs::read_link(&p).unwrap().as_os_str().as_bytes().to_vec()),
            rdev: m.rdev(),
            xattrs: if o.xattrs && !ft.is_symlink() {
                xattrs_of(&p)
            } else {
                Vec::new()
            },
            link_group: if o.links && !is_dir && m.nlink() > 1 {
                inodes.get(&(m.dev(), m.ino())).cloned()
            } else {
                None
            },
            sparse: o.sparse && ft.is_file() && m.blocks() * 512 < m.size(),
        };
        map.insert(r, snap);
    }
    map
}

/// Lists the differences between two snapshots (empty: identical).
pub fn diff_snapshots(a: &BTreeMap<Vec<u8>, Snap>, b: &BTreeMap<Vec<u8>, Snap>) -> Vec<String> {
    let mut out = Vec::new();
    for (k, va) in a {
        match b.get(k) {
            None => out.push(format!("only in first: {}", String::from_utf8_lossy(k))),
            Some(vb) if va != vb => out.push(format!(
                "differs: {}\n   first:  {:?}\n   second: {:?}",
                String::from_utf8_lossy(k),
                va,
                vb
            )),
            _ => {}
        }
    }
    for k in b.keys() {
        if !a.contains_key(k) {
            out.push(format!("only in second: {}", String::from_utf8_lossy(k)));
        }
    }
    out
}

/// Asserts two trees are equal under `o`.
pub fn assert_same_tree(a: &Path, b: &Path, o: SnapOpts, what: &str) {
    let d = diff_snapshots(&snapshot(a, o), &snapshot(b, o));
    assert!(
        d.is_empty(),
        "{what}: trees differ ({} differences):\n{}",
        d.len(),
        d.iter().take(20).cloned().collect::<Vec<_>>().join("\n")
    );
}

/// Copies a tree exactly (for giving arsync and rsync the same starting destination).
pub fn clone_tree(from: &Path, to: &Path) {
    let st = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(st.success());
}
