//! The local engine on both `arsync-io` backends (`ARSYNC_IO=uring` and `ARSYNC_IO=threads`),
//! against the real rsync: same trees, same itemized output. Also destination directories that
//! change what a newly created file gets (set-group-ID, default ACLs), which the batch copy
//! learns per directory instead of asking per file.

mod common;

use common::*;
use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

const BACKENDS: [&str; 2] = ["uring", "threads"];

fn arsync_on(backend: &str, args: &[OsString]) -> Output {
    Command::new(arsync_bin())
        .env("ARSYNC_IO", backend)
        .args(args)
        .output()
        .expect("spawn arsync")
}

fn lines(o: &Output) -> Vec<String> {
    let mut v: Vec<String> = String::from_utf8_lossy(&o.stdout)
        .lines()
        // The destination's own name differs between the two runs.
        .filter(|l| !l.starts_with("created directory "))
        .map(str::to_string)
        .collect();
    v.sort();
    v
}

/// Small files with every kind of mode, some of them in many directories (several batches).
fn mode_zoo(root: &Path) {
    let modes = [
        0o644, 0o600, 0o666, 0o444, 0o755, 0o4755, 0o2755, 0o1644, 0o000,
    ];
    for d in 0..4 {
        let dir = root.join(format!("zoo{d}"));
        fs::create_dir_all(&dir).unwrap();
        for i in 0..40 {
            let p = dir.join(format!("m{i:02}"));
            fs::write(&p, vec![b'a' + (i % 26) as u8; i * 97 + d]).unwrap();
            let mode = modes[i % modes.len()];
            fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
        }
    }
    // A small file with a zero block in the middle (stays a hole with -S).
    let mut holes = vec![7u8; 3 * 4096];
    holes[4096..8192].fill(0);
    fs::write(root.join("zoo0/holes"), holes).unwrap();
    settle_times(root);
}

fn run_both(flags: &[&str], src: &Path, r: &Path, a: &Path, backend: &str) -> (Output, Output) {
    let mut rargs: Vec<OsString> = flags.iter().map(OsString::from).collect();
    rargs.extend([slash(src), slash(r)]);
    let mut aargs: Vec<OsString> = flags.iter().map(OsString::from).collect();
    aargs.extend([
        OsString::from("--threads=2"),
        OsString::from("--queue-depth=64"),
        slash(src),
        slash(a),
    ]);
    let ro = rsync(&rargs);
    let ao = arsync_on(backend, &aargs);
    assert_code(&ro, 0, "rsync");
    assert_code(&ao, 0, &format!("arsync ARSYNC_IO={backend}"));
    (ao, ro)
}

#[test]
fn both_backends_copy_and_update_like_rsync() {
    for backend in BACKENDS {
        let w = scratch();
        let src = w.path().join("src");
        make_tree(
            &src,
            TreeSpec {
                dirs: 5,
                files_per_dir: 6,
                rich: true,
                seed: 11,
            },
        );
        mode_zoo(&src);
        let (r, a) = (w.path().join("r"), w.path().join("a"));
        let o = SnapOpts {
            sparse: true,
            ..SnapOpts::default()
        };
        let (ao, ro) = run_both(&["-aHAXSi"], &src, &r, &a, backend);
        assert_same_tree(&r, &a, o, &format!("-aHAXS copy, ARSYNC_IO={backend}"));
        assert_eq!(lines(&ao), lines(&ro), "itemized copy, ARSYNC_IO={backend}");
        // Change some files and sync again with --delete: updates go through the same path.
        for d in 0..2 {
            let p = src.join(format!("zoo{d}/m03"));
            fs::write(&p, b"changed").unwrap();
            fs::remove_file(src.join(format!("zoo{d}/m05"))).unwrap();
            fs::set_permissions(
                src.join(format!("zoo{d}/m07")),
                fs::Permissions::from_mode(0o640),
            )
            .unwrap();
        }
        settle_times(&src);
        let (ao, ro) = run_both(&["-aHAXSi", "--delete"], &src, &r, &a, backend);
        assert_same_tree(&r, &a, o, &format!("update, ARSYNC_IO={backend}"));
        assert_eq!(
            lines(&ao),
            lines(&ro),
            "itemized update, ARSYNC_IO={backend}"
        );
    }
}

#[test]
fn new_files_in_setgid_and_default_acl_directories() {
    if !am_root() {
        // Giving a directory another group needs root.
        return;
    }
    for backend in BACKENDS {
        let w = scratch();
        let src = w.path().join("src");
        mode_zoo(&src);
        let (r, a) = (w.path().join("r"), w.path().join("a"));
        for dst in [&r, &a] {
            // Pre-existing destination directories: one set-group-ID with another group, one
            // with a default ACL (new files inherit an access ACL and a masked mode).
            let sg = dst.join("zoo0");
            fs::create_dir_all(&sg).unwrap();
            std::os::unix::fs::chown(&sg, None, Some(4321)).unwrap();
            fs::set_permissions(&sg, fs::Permissions::from_mode(0o2775)).unwrap();
            let acl = dst.join("zoo1");
            fs::create_dir_all(&acl).unwrap();
            let st = Command::new("setfacl")
                .args(["-d", "-m", "u::rwx,g::rwx,o::rwx,u:4321:r--,m::rwx"])
                .arg(&acl)
                .status()
                .expect("setfacl");
            assert!(st.success());
        }
        for flags in [&["-ai"][..], &["-aAXi"][..], &["-rti"][..]] {
            let (ao, ro) = run_both(flags, &src, &r, &a, backend);
            let what = format!("{flags:?} into special dirs, ARSYNC_IO={backend}");
            assert_same_tree(&r, &a, SnapOpts::default(), &what);
            assert_eq!(lines(&ao), lines(&ro), "{what}");
            // Next round copies everything again.
            for d in [&r, &a] {
                for z in 0..4 {
                    for e in fs::read_dir(d.join(format!("zoo{z}"))).unwrap() {
                        fs::remove_file(e.unwrap().path()).unwrap();
                    }
                }
            }
        }
    }
}

/// Runs `prog` as the unprivileged user `nobody` (through `setpriv`).
fn as_nobody(prog: &Path, env: &[(&str, &str)], args: &[OsString]) -> Output {
    let mut c = Command::new("setpriv");
    c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(prog)
        .args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("spawn setpriv")
}

/// An unprivileged user: new files are created unnamed (`O_TMPFILE`) and linked into place
/// without `CAP_DAC_READ_SEARCH` (`AT_EMPTY_PATH` is allowed to the file's opener since Linux
/// 6.10; before, the worker links `/proc/self/fd/N`), no owner can be given away, and user
/// xattrs need write access. Same tree and output as rsync run by the same user, and no
/// temporary file left behind.
#[test]
fn new_files_as_an_unprivileged_user() {
    if !am_root() || !Path::new("/usr/bin/setpriv").exists() {
        // Switching to another user needs root.
        return;
    }
    let w = scratch();
    fs::set_permissions(w.path(), fs::Permissions::from_mode(0o777)).unwrap();
    let src = w.path().join("src");
    mode_zoo(&src);
    // A file with a user xattr (copied with -X) next to the plain ones.
    let x = src.join("zoo2/m02");
    let st = Command::new("setfattr")
        .args(["-n", "user.note", "-v", "kept"])
        .arg(&x)
        .status()
        .expect("setfattr");
    assert!(st.success());
    // The owner must be able to read every file (mode_zoo has some with mode 000).
    for z in 0..4 {
        for e in fs::read_dir(src.join(format!("zoo{z}"))).unwrap() {
            let p = e.unwrap().path();
            let mode = fs::metadata(&p).unwrap().permissions().mode();
            fs::set_permissions(&p, fs::Permissions::from_mode(mode | 0o400)).unwrap();
        }
    }
    let st = Command::new("chown")
        .args(["-R", "65534:65534"])
        .arg(&src)
        .status()
        .expect("chown");
    assert!(st.success());
    settle_times(&src);
    let (r, a) = (w.path().join("r"), w.path().join("a"));
    let flags = ["-aXSi"];
    for backend in BACKENDS {
        for d in [&r, &a] {
            let _ = fs::remove_dir_all(d);
        }
        let mut rargs: Vec<OsString> = flags.iter().map(OsString::from).collect();
        rargs.extend([slash(&src), slash(&r)]);
        let mut aargs = rargs.clone();
        aargs.pop();
        aargs.push(slash(&a));
        let ro = as_nobody(Path::new("/usr/bin/rsync"), &[], &rargs);
        let ao = as_nobody(&arsync_bin(), &[("ARSYNC_IO", backend)], &aargs);
        assert_code(&ro, 0, "rsync as nobody");
        assert_code(&ao, 0, &format!("arsync as nobody, ARSYNC_IO={backend}"));
        let what = format!("-aXS as nobody, ARSYNC_IO={backend}");
        let o = SnapOpts {
            sparse: true,
            ..SnapOpts::default()
        };
        assert_same_tree(&r, &a, o, &what);
        assert_eq!(lines(&ao), lines(&ro), "{what}");
        let value = Command::new("getfattr")
            .args(["--only-values", "-n", "user.note"])
            .arg(a.join("zoo2/m02"))
            .output()
            .expect("getfattr");
        assert_eq!(value.stdout, b"kept", "{what}: xattr");
    }
}
