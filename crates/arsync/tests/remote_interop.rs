//! The `arsync` binary against the real rsync 3.x over a remote shell:
//! client in {arsync, rsync} x server in {arsync, rsync}, push and pull,
//! through a stand-in for ssh (runs the remote command locally) and a real
//! OpenSSH server on 127.0.0.1.

use std::ffi::OsString;
use std::fs;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use arsync_testutil::remote::{start_daemon, write_module_config, Tool, FAKE_SSH};
use arsync_testutil::{compare_trees, scratch_dir, settle_tree, CompareOpts, Settle};

fn arsync_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_arsync"))
}

/// The program for a [`Tool`] (this test's arsync binary, or rsync).
fn program(t: Tool) -> std::ffi::OsString {
    t.program(arsync_bin().as_os_str())
}

fn write_script(path: &Path, text: &str) {
    fs::write(path, text).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
}

fn set_mtime(p: &Path, secs: i64) {
    arsync_testutil::set_mtime(p, secs, 0).unwrap();
}

/// Deterministic pseudo-random bytes.
fn bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

const BIG: usize = 2 << 20;

/// A tree with nested dirs, modes, symlinks, a hard-link pair and a large file.
fn make_tree(root: &Path) {
    fs::create_dir_all(root.join("a/b/c")).unwrap();
    fs::create_dir_all(root.join("empty")).unwrap();
    fs::write(root.join("small.txt"), b"hello\n").unwrap();
    fs::write(root.join("zero"), b"").unwrap();
    fs::write(root.join("a/one.bin"), bytes(1, 1000)).unwrap();
    fs::write(root.join("a/b/two.bin"), bytes(2, 70_000)).unwrap();
    fs::write(root.join("a/b/c/gone"), b"to be deleted").unwrap();
    fs::write(root.join("big.dat"), bytes(3, BIG)).unwrap();
    fs::set_permissions(root.join("a/one.bin"), fs::Permissions::from_mode(0o600)).unwrap();
    symlink("small.txt", root.join("link")).unwrap();
    fs::hard_link(root.join("a/b/two.bin"), root.join("hard")).unwrap();
    for f in [
        "small.txt",
        "zero",
        "a/one.bin",
        "a/b/two.bin",
        "a/b/c/gone",
        "big.dat",
    ] {
        set_mtime(&root.join(f), 1_600_000_000);
    }
    settle_dirs(root);
}

/// Gives directories and symlinks an old mtime: rsync (like arsync) skips
/// setting a time that matches the current one to the second, so a tree
/// made this second would not compare equal to its copy.
fn settle_dirs(root: &Path) {
    settle_tree(root, Settle::DirsAndLinks, 1_600_000_000).unwrap();
}

/// Rewrites 1% of the large file (keeping its mtime).
fn mutate_big(root: &Path) {
    let big = root.join("big.dat");
    let mut data = fs::read(&big).unwrap();
    let at = data.len() / 3;
    data[at..at + BIG / 100].copy_from_slice(&bytes(9, BIG / 100));
    fs::write(&big, data).unwrap();
    set_mtime(&big, 1_600_000_100);
}

/// 1% of the large file changed, a file deleted, a file added, a new hard link.
fn mutate_tree(root: &Path) {
    mutate_big(root);
    fs::remove_file(root.join("a/b/c/gone")).unwrap();
    fs::write(root.join("a/new.txt"), b"new file").unwrap();
    fs::hard_link(root.join("a/one.bin"), root.join("a/b/hard2")).unwrap();
    settle_dirs(root);
}

/// Same size, same mtime, different content: only `-c` notices.
fn sneaky_change(root: &Path) {
    let p = root.join("a/one.bin");
    fs::write(&p, bytes(77, 1000)).unwrap();
    set_mtime(&p, 1_600_000_000);
}

fn opts() -> CompareOpts {
    CompareOpts::default()
}

fn assert_same(a: &Path, b: &Path, what: &str) {
    let diffs = compare_trees(a, b, &opts());
    assert!(diffs.is_empty(), "{what}: trees differ: {diffs:#?}");
}

fn check(out: &Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{what}: exit {:?}\nstdout: {stdout}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The "Literal data:" figure of `--stats` output (rsync prints commas).
fn literal_bytes(stats: &str) -> u64 {
    stats
        .lines()
        .find_map(|l| l.trim().strip_prefix("Literal data:"))
        .and_then(|v| v.split_whitespace().next())
        .map(|v| v.replace(',', ""))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no literal data in stats: {stats}"))
}

/// Runs `client` with a remote shell `rsh` and `server` as the remote program.
fn transfer(client: Tool, server: Tool, rsh: &str, flags: &[&str], src: &str, dst: &str) -> Output {
    let extra = shell_args(server, rsh);
    let mut all: Vec<&str> = flags.to_vec();
    all.extend(extra.iter().map(String::as_str));
    run_client(client, &all, src, dst)
}

fn shell_args(server: Tool, rsh: &str) -> Vec<String> {
    vec![
        "-e".into(),
        rsh.into(),
        "--rsync-path".into(),
        program(server).to_string_lossy().into_owned(),
    ]
}

fn run_client(client: Tool, flags: &[&str], src: &str, dst: &str) -> Output {
    Command::new(program(client))
        .args(flags)
        .arg(src)
        .arg(dst)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// How a test reaches the remote side.
struct Remote<'a> {
    /// Extra client options (`-e`, `--rsync-path`).
    args: Vec<String>,
    /// The remote spelling of a local absolute path.
    spec: &'a dyn Fn(&Path) -> String,
    /// Where scenario directories are made.
    base: Option<&'a Path>,
    /// Names the server, for messages.
    server: String,
}

/// A scenario's scratch directory, its source and destination trees, and the client's
/// source and destination arguments for one pair and direction.
struct Endpoints {
    what: String,
    tmp: tempfile::TempDir,
    src: PathBuf,
    dst: PathBuf,
    s: String,
    d: String,
}

impl Endpoints {
    fn new(client: Tool, remote: &Remote<'_>, push: bool, label: &str, make: fn(&Path)) -> Self {
        let what = format!(
            "{client:?} client -> {} server, {}{label}",
            remote.server,
            if push { "push" } else { "pull" }
        );
        let tmp = match remote.base {
            Some(b) => tempfile::tempdir_in(b).unwrap(),
            None => scratch_dir().unwrap(),
        };
        let src = tmp.path().join("src");
        let dst = tmp.path().join("dst");
        make(&src);
        let (s, d) = if push {
            (format!("{}/", src.display()), (remote.spec)(&dst))
        } else {
            (
                format!("{}/", (remote.spec)(&src)),
                dst.display().to_string(),
            )
        };
        Endpoints {
            what,
            tmp,
            src,
            dst,
            s,
            d,
        }
    }

    /// Runs the client with `flags` plus the pair's own arguments.
    fn run(&self, client: Tool, remote: &Remote<'_>, flags: &[&str]) -> Output {
        let mut all: Vec<&str> = flags.to_vec();
        all.extend(remote.args.iter().map(String::as_str));
        run_client(client, &all, &self.s, &self.d)
    }
}

/// The full scenario for one client/server pair and direction: fresh
/// copy, delta update of 1% of a large file with --delete and new hard
/// links, then -c for a same-size same-mtime change.
fn scenario(client: Tool, remote: &Remote<'_>, push: bool) {
    let ep = Endpoints::new(client, remote, push, "", make_tree);
    let (what, src, dst) = (ep.what.clone(), ep.src.clone(), ep.dst.clone());
    let run = |flags: &[&str]| ep.run(client, remote, flags);
    check(&run(&["-aH"]), &format!("{what}: fresh copy"));
    assert_same(&src, &dst, &format!("{what}: fresh copy"));

    mutate_tree(&src);
    let stats = check(
        &run(&["-aH", "--delete", "--stats"]),
        &format!("{what}: delta update"),
    );
    assert_same(&src, &dst, &format!("{what}: delta update with --delete"));
    let literal = literal_bytes(&stats);
    // 1% of the large file changed, plus the small new files.
    assert!(
        literal < (BIG / 10) as u64,
        "{what}: {literal} literal bytes for a 1% change: no delta transfer?"
    );

    sneaky_change(&src);
    check(&run(&["-aHc"]), &format!("{what}: -c"));
    assert_same(&src, &dst, &format!("{what}: -c"));
}

fn all_pairs(rsh: &str, host: &str) {
    let spec = |p: &Path| format!("{host}:{}", p.display());
    for (client, server) in Tool::PAIRS.into_iter().skip(1) {
        let remote = Remote {
            args: shell_args(server, rsh),
            spec: &spec,
            base: None,
            server: format!("{server:?}"),
        };
        for push in [true, false] {
            scenario(client, &remote, push);
        }
    }
}

#[test]
fn interop_over_stand_in_ssh() {
    let tmp = scratch_dir().unwrap();
    let ssh = tmp.path().join("fake-ssh");
    write_script(&ssh, FAKE_SSH);
    all_pairs(ssh.to_str().unwrap(), "somehost");
}

#[test]
fn whole_file_and_unsupported_options() {
    let tmp = scratch_dir().unwrap();
    let ssh = tmp.path().join("fake-ssh");
    write_script(&ssh, FAKE_SSH);
    let rsh = ssh.to_str().unwrap();
    let src = tmp.path().join("src");
    let dst = tmp.path().join("dst");
    make_tree(&src);
    let d = format!("h:{}", dst.display());
    let s = format!("{}/", src.display());
    check(
        &transfer(Tool::Arsync, Tool::Rsync, rsh, &["-aH"], &s, &d),
        "first",
    );
    mutate_tree(&src);
    // -W: no delta, the changed large file goes whole.
    let out = transfer(
        Tool::Arsync,
        Tool::Rsync,
        rsh,
        &["-aHW", "--delete", "--stats"],
        &s,
        &d,
    );
    let literal = literal_bytes(&check(&out, "-W"));
    assert!(
        literal >= BIG as u64,
        "-W sent only {literal} literal bytes"
    );
    assert_same(&src, &dst, "-W");
    // Pull with -W into an arsync receiver whose large file differs by 1%.
    let pulled = tmp.path().join("pulled");
    let cp = Command::new("cp")
        .arg("-a")
        .arg(&src)
        .arg(&pulled)
        .status()
        .unwrap();
    assert!(cp.success());
    let big = pulled.join("big.dat");
    let mut data = fs::read(&big).unwrap();
    data[..BIG / 100].copy_from_slice(&bytes(11, BIG / 100));
    fs::write(&big, data).unwrap();
    set_mtime(&big, 1_500_000_000);
    let d_slash = format!("{d}/");
    let out = transfer(
        Tool::Arsync,
        Tool::Rsync,
        rsh,
        &["-aHW", "--stats"],
        &d_slash,
        pulled.to_str().unwrap(),
    );
    let literal = literal_bytes(&check(&out, "pull -W"));
    assert!(
        literal >= BIG as u64,
        "pull -W received only {literal} literal bytes"
    );
    assert_same(&src, &pulled, "pull -W");
    // A real rsync client asking the arsync server for something it lacks.
    let out = transfer(Tool::Rsync, Tool::Arsync, rsh, &["-ay"], &s, &d);
    assert_ne!(out.status.code(), Some(0), "-y must not be faked");
    // No -r: a directory is not sent recursively by the arsync server.
    let out = transfer(
        Tool::Rsync,
        Tool::Arsync,
        rsh,
        &["-lt"],
        &format!("h:{}/", src.display()),
        tmp.path().join("nr").to_str().unwrap(),
    );
    assert_ne!(out.status.code(), Some(0), "a directory sent without -r");
    assert!(!tmp.path().join("nr/a/one.bin").exists());
    // Both sides remote: usage error.
    let out = transfer(Tool::Arsync, Tool::Rsync, rsh, &["-a"], "h:/x/", "h:/y");
    assert_eq!(out.status.code(), Some(1));
}

/// A real OpenSSH server on 127.0.0.1 with a key generated here.
struct Sshd {
    child: Child,
    port: u16,
    key: PathBuf,
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn start_sshd(dir: &Path) -> Sshd {
    let run = |cmd: &mut Command| {
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{cmd:?}: {out:?}");
    };
    let host_key = dir.join("host_key");
    let key = dir.join("client_key");
    for k in [&host_key, &key] {
        run(Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(k));
    }
    fs::copy(dir.join("client_key.pub"), dir.join("authorized_keys")).unwrap();
    let port = free_port();
    let cfg = dir.join("sshd_config");
    fs::write(
        &cfg,
        format!(
            "ListenAddress 127.0.0.1\nHostKey {}\nAuthorizedKeysFile {}\nStrictModes no\n\
             PermitRootLogin yes\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
             UsePAM no\nPidFile {}\n",
            host_key.display(),
            dir.join("authorized_keys").display(),
            dir.join("sshd.pid").display()
        ),
    )
    .unwrap();
    let _ = fs::create_dir_all("/run/sshd");
    let child = Command::new("/usr/sbin/sshd")
        .args(["-D", "-e", "-f"])
        .arg(&cfg)
        .args(["-p", &port.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < deadline, "sshd did not start");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Sshd { child, port, key }
}

#[test]
fn interop_over_real_sshd() {
    assert!(
        rustix_is_root(),
        "this test starts sshd and must run as root (CI runs as root)"
    );
    let tmp = scratch_dir().unwrap();
    let sshd = start_sshd(tmp.path());
    let rsh = format!(
        "ssh -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes \
         -o LogLevel=ERROR -i {} -p {}",
        sshd.key.display(),
        sshd.port
    );
    all_pairs(&rsh, "root@127.0.0.1");
}

fn rustix_is_root() -> bool {
    arsync_testutil::is_root()
}

#[test]
fn interop_over_daemon() {
    let tmp = scratch_dir().unwrap();
    let base = tmp.path().join("module");
    fs::create_dir(&base).unwrap();
    let cfg = tmp.path().join("rsyncd.conf");
    write_module_config(&cfg, &base).unwrap();
    for server in [Tool::Arsync, Tool::Rsync] {
        let daemon = start_daemon(&program(server), &cfg).unwrap();
        let port = daemon.port;
        let base_ref = base.as_path();
        let spec = move |p: &Path| {
            let rel = p.strip_prefix(base_ref).unwrap();
            format!("rsync://127.0.0.1:{port}/m/{}", rel.display())
        };
        for client in [Tool::Arsync, Tool::Rsync] {
            if client == Tool::Rsync && server == Tool::Rsync {
                continue;
            }
            let remote = Remote {
                args: Vec::new(),
                spec: &spec,
                base: Some(&base),
                server: format!("{server:?} daemon"),
            };
            for push in [true, false] {
                scenario(client, &remote, push);
            }
        }
    }
}

#[test]
fn daemon_modules_auth_and_access() {
    let tmp = scratch_dir().unwrap();
    let (pub_dir, up_dir) = (tmp.path().join("pub"), tmp.path().join("up"));
    make_tree(&pub_dir);
    fs::create_dir(&up_dir).unwrap();
    let secrets = tmp.path().join("secrets");
    fs::write(&secrets, "alice:s3cret\n").unwrap();
    fs::set_permissions(&secrets, fs::Permissions::from_mode(0o600)).unwrap();
    let cfg = tmp.path().join("rsyncd.conf");
    fs::write(
        &cfg,
        format!(
            "[pub]\npath = {}\ncomment = public files\nuid = root\ngid = root\n\
             [hidden]\npath = {}\nlist = no\n\
             [up]\npath = {}\nread only = no\nuid = root\ngid = root\nauth users = alice\n\
             secrets file = {}\nhosts allow = 127.0.0.1\n\
             [denied]\npath = {}\nhosts allow = 10.0.0.0/8\n",
            pub_dir.display(),
            pub_dir.display(),
            up_dir.display(),
            secrets.display(),
            pub_dir.display()
        ),
    )
    .unwrap();
    let d = start_daemon(&program(Tool::Arsync), &cfg).unwrap();
    let url = |m: &str| format!("rsync://127.0.0.1:{}/{m}", d.port);
    // Module list: listed modules with comments only.
    let out = Command::new("rsync").arg(url("")).output().unwrap();
    let list = check(&out, "module list");
    assert!(
        list.contains("pub") && list.contains("public files"),
        "{list}"
    );
    assert!(!list.contains("hidden"), "{list}");
    // Authentication with a password file (arsync client, host::module form).
    let pw = tmp.path().join("pw");
    fs::write(&pw, "s3cret\n").unwrap();
    fs::set_permissions(&pw, fs::Permissions::from_mode(0o600)).unwrap();
    let src = format!("{}/", pub_dir.display());
    let out = Command::new(arsync_bin())
        .args(["-aH", "--port", &d.port.to_string(), "--password-file"])
        .arg(&pw)
        .arg(&src)
        .arg("alice@127.0.0.1::up/copy")
        .output()
        .unwrap();
    check(&out, "authenticated push");
    assert_same(&pub_dir, &up_dir.join("copy"), "authenticated push");
    // Wrong password: refused with rsync's start-up exit code 5.
    fs::write(&pw, "wrong\n").unwrap();
    let out = Command::new("rsync")
        .args(["-a", "--password-file"])
        .arg(&pw)
        .arg(&src)
        .arg(format!("rsync://alice@127.0.0.1:{}/up/x", d.port))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    assert!(!up_dir.join("x").exists());
    // Read-only module refuses a push; a host outside `hosts allow` is denied.
    for (m, what) in [("pub/x", "read only"), ("denied/", "access denied")] {
        let out = Command::new(arsync_bin())
            .arg("-a")
            .arg(&src)
            .arg(url(m))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(5), "{m}: {out:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(what),
            "{m}: {out:?}"
        );
    }
    assert!(!pub_dir.join("x").exists());
    // A path escaping the module is refused.
    let out = Command::new("rsync")
        .arg("-a")
        .arg(url("pub/../../etc/"))
        .arg(tmp.path().join("escaped"))
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    assert!(!tmp.path().join("escaped/passwd").exists());
}

/// A stand-in for ssh that counts the bytes in each direction: it runs the
/// remote command locally and writes `<to server> <from server>` to
/// `$ARSYNC_WIRE_COUNT` when the command exits.
const COUNTING_SSH: &str = r#"#!/usr/bin/env python3
import os, subprocess, sys, threading
args = sys.argv[1:]
while args and args[0].startswith("-"):
    args = args[2:] if args[0] in ("-l", "-p", "-o", "-i") else args[1:]
args = args[1:]
p = subprocess.Popen(["sh", "-c", " ".join(args)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
up = [0]
def pump_up():
    try:
        while True:
            b = os.read(0, 1 << 16)
            if not b:
                break
            up[0] += len(b)
            p.stdin.write(b)
        p.stdin.close()
    except OSError:
        pass
threading.Thread(target=pump_up, daemon=True).start()
down = 0
while True:
    b = os.read(p.stdout.fileno(), 1 << 16)
    if not b:
        break
    down += len(b)
    os.write(1, b)
code = p.wait()
with open(os.environ["ARSYNC_WIRE_COUNT"], "w") as f:
    f.write(f"{up[0]} {down}\n")
sys.exit(code)
"#;

/// Bytes on the wire for a 1% change of a 100 MB file: every arsync
/// pairing within 10% of rsync-to-rsync.
#[test]
fn delta_wire_bytes_match_rsync() {
    const SIZE: usize = 100 << 20;
    let tmp = scratch_dir().unwrap();
    let ssh = tmp.path().join("count-ssh");
    write_script(&ssh, COUNTING_SSH);
    let count_file = tmp.path().join("count");
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    let mut data = bytes(5, SIZE);
    let basis = tmp.path().join("basis");
    fs::create_dir(&basis).unwrap();
    fs::write(basis.join("big"), &data).unwrap();
    // 1% changed in 100 scattered 10 KiB pieces.
    let piece = SIZE / 100 / 100;
    for i in 0..100 {
        let at = i * (SIZE / 100) + 4321;
        data[at..at + piece].copy_from_slice(&bytes(1000 + i as u64, piece));
    }
    fs::write(src.join("big"), &data).unwrap();
    drop(data);
    set_mtime(&src.join("big"), 1_600_000_000);
    settle_dirs(&src);
    let rsh = ssh.to_str().unwrap();
    let mut results = Vec::new();
    for (client, server, push) in [
        (Tool::Rsync, Tool::Rsync, true),
        (Tool::Arsync, Tool::Arsync, true),
        (Tool::Arsync, Tool::Rsync, true),
        (Tool::Rsync, Tool::Arsync, true),
        (Tool::Arsync, Tool::Arsync, false),
    ] {
        let dst = tmp.path().join("dst");
        let _ = fs::remove_dir_all(&dst);
        let cp = Command::new("cp")
            .arg("-a")
            .arg(&basis)
            .arg(&dst)
            .status()
            .unwrap();
        assert!(cp.success());
        let (s, d) = if push {
            (
                format!("{}/", src.display()),
                format!("h:{}", dst.display()),
            )
        } else {
            (format!("h:{}/", src.display()), dst.display().to_string())
        };
        let mut cmd = Command::new(program(client));
        cmd.arg("-a")
            .args(shell_args(server, rsh))
            .arg(&s)
            .arg(&d)
            .env("ARSYNC_WIRE_COUNT", &count_file);
        let out = cmd.output().unwrap();
        let what = format!(
            "{client:?} -> {server:?} {}",
            if push { "push" } else { "pull" }
        );
        check(&out, &what);
        assert_same(&src, &dst, &what);
        let text = fs::read_to_string(&count_file).unwrap();
        let total: u64 = text
            .split_whitespace()
            .map(|v| v.parse::<u64>().unwrap())
            .sum();
        results.push((what, total));
    }
    let base = results[0].1 as f64;
    // The changed data itself must travel; far less than the file must.
    assert!(
        base > (SIZE / 100) as f64 && base < (SIZE / 10) as f64,
        "{results:?}"
    );
    for (what, total) in &results {
        let ratio = *total as f64 / base;
        eprintln!("{what}: {total} bytes on the wire ({ratio:.3} x rsync-rsync)");
        assert!(ratio <= 1.10, "{what}: {total} bytes vs rsync-rsync {base}");
    }
}

/// --exclude rules and --delete in push and pull: every pairing leaves the
/// same destination as rsync-to-rsync (excluded files neither sent nor
/// deleted, extraneous files deleted).
#[test]
fn filters_match_rsync() {
    let tmp = scratch_dir().unwrap();
    let ssh = tmp.path().join("fake-ssh");
    write_script(&ssh, FAKE_SSH);
    let rsh = ssh.to_str().unwrap();
    let src = tmp.path().join("src");
    make_tree(&src);
    fs::write(src.join("a/skip.tmp"), b"tmp").unwrap();
    fs::create_dir_all(src.join("cache/deep")).unwrap();
    fs::write(src.join("cache/deep/x"), b"cached").unwrap();
    fs::write(src.join("a/keep.tmp.not"), b"kept").unwrap();
    settle_dirs(&src);
    // The destination before each run: an excluded file (protected from
    // deletion) and an extraneous one (deleted).
    let seed_dst = |d: &Path| {
        fs::create_dir_all(d.join("a")).unwrap();
        fs::write(d.join("a/local.tmp"), b"receiver's own").unwrap();
        set_mtime(&d.join("a/local.tmp"), 1_600_000_000);
        fs::write(d.join("extraneous"), b"delete me").unwrap();
    };
    let flags = ["-aH", "--delete", "--exclude", "*.tmp", "--exclude=cache/"];
    let run = |client: Tool, server: Tool, push: bool, dst: &Path| {
        seed_dst(dst);
        let (s, d) = if push {
            (
                format!("{}/", src.display()),
                format!("h:{}", dst.display()),
            )
        } else {
            (format!("h:{}/", src.display()), dst.display().to_string())
        };
        let out = transfer(client, server, rsh, &flags, &s, &d);
        check(
            &out,
            &format!("{client:?} -> {server:?} push={push} with filters"),
        );
    };
    let reference = tmp.path().join("reference");
    run(Tool::Rsync, Tool::Rsync, true, &reference);
    assert!(reference.join("a/local.tmp").exists() && !reference.join("extraneous").exists());
    assert!(!reference.join("cache").exists() && !reference.join("a/skip.tmp").exists());
    let mut n = 0;
    for (client, server) in [
        (Tool::Arsync, Tool::Rsync),
        (Tool::Rsync, Tool::Arsync),
        (Tool::Arsync, Tool::Arsync),
    ] {
        for push in [true, false] {
            n += 1;
            let dst = tmp.path().join(format!("dst{n}"));
            run(client, server, push, &dst);
            settle_dirs(&dst);
            settle_dirs(&reference);
            assert_same(
                &reference,
                &dst,
                &format!("{client:?} -> {server:?} push={push} with filters"),
            );
        }
    }
}

fn run_ok(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `make_tree` plus what -A -X -S carry: short and long (> 32 bytes, sent
/// abbreviated) xattrs, access and default ACLs with named entries, and a
/// sparse file.
fn make_feature_tree(root: &Path) {
    make_tree(root);
    let x = |rel: &str, name: &str, value: &[u8]| {
        arsync_testutil::meta::set_xattr(&root.join(rel), name.as_bytes(), value).unwrap()
    };
    x("small.txt", "user.short", b"v");
    x("a/one.bin", "user.long", &bytes(5, 100));
    x("a/one.bin", "user.other", &bytes(6, 40));
    x("a/b", "user.dir", b"d");
    // Same long value on a second file: the set is sent once, by index.
    x("zero", "user.long", &bytes(5, 100));
    run_ok(
        Command::new("setfacl")
            .args(["-m", "u:1234:rw-,g:50:r--"])
            .arg(root.join("a/b/two.bin")),
    );
    run_ok(
        Command::new("setfacl")
            .args(["-d", "-m", "g:50:r-x"])
            .arg(root.join("a/b")),
    );
    run_ok(
        Command::new("setfacl")
            .args(["-m", "u:4321:r-x"])
            .arg(root.join("a")),
    );
    // Sparse: data, a 1 MiB hole, data.
    let sp = root.join("sparse.img");
    let f = fs::File::create(&sp).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(&bytes(7, 64 * 1024), 0).unwrap();
    f.write_all_at(&bytes(8, 8192), 64 * 1024 + (1 << 20))
        .unwrap();
    drop(f);
    set_mtime(&sp, 1_600_000_000);
    settle_dirs(root);
}

/// New xattr values on an unchanged file (its long value must be requested
/// in full), a removed xattr, a changed ACL.
fn mutate_features(root: &Path) {
    let p = root.join("a/one.bin");
    arsync_testutil::meta::set_xattr(&p, b"user.long", &bytes(9, 120)).unwrap();
    arsync_testutil::meta::remove_xattr(&root.join("small.txt"), b"user.short").unwrap();
    run_ok(
        Command::new("setfacl")
            .args(["-x", "g:50"])
            .arg(root.join("a/b/two.bin")),
    );
    settle_dirs(root);
}

fn feature_opts() -> CompareOpts {
    opts().with_sparse(arsync_testutil::SparseCheck::HoleMap)
}

/// -H -A -X -S for one client/server pair and direction: a fresh copy,
/// then changed attributes only, then a dry run that must change nothing.
fn feature_scenario(client: Tool, remote: &Remote<'_>, push: bool) {
    let ep = Endpoints::new(client, remote, push, ", -HAXS", make_feature_tree);
    let (what, src, dst) = (ep.what.clone(), ep.src.clone(), ep.dst.clone());
    let tmp = &ep.tmp;
    let run = |flags: &[&str]| ep.run(client, remote, flags);
    check(&run(&["-aHAXS"]), &format!("{what}: fresh copy"));
    let diffs = compare_trees(&src, &dst, &feature_opts());
    assert!(diffs.is_empty(), "{what}: fresh copy: {diffs:#?}");

    mutate_features(&src);
    check(&run(&["-aHAXS"]), &format!("{what}: attributes only"));
    let diffs = compare_trees(&src, &dst, &feature_opts());
    assert!(diffs.is_empty(), "{what}: attributes only: {diffs:#?}");

    // A dry run reports the new file and changes nothing.
    fs::write(src.join("a/dry.txt"), b"not copied").unwrap();
    fs::create_dir(src.join("newdir")).unwrap();
    settle_dirs(&src);
    let out = check(&run(&["-aHAXin"]), &format!("{what}: dry run"));
    assert!(out.contains("dry.txt"), "{what}: dry run output: {out}");
    assert!(!dst.join("a/dry.txt").exists(), "{what}: dry run copied");
    assert!(
        !dst.join("newdir").exists(),
        "{what}: dry run made a directory"
    );
    // Nor is a missing destination created.
    let fresh = tmp.path().join("fresh");
    let f = if push {
        (remote.spec)(&fresh)
    } else {
        fresh.display().to_string()
    };
    let mut all: Vec<&str> = vec!["-aHAXn"];
    all.extend(remote.args.iter().map(String::as_str));
    check(
        &run_client(client, &all, &ep.s, &f),
        &format!("{what}: dry run to a new dir"),
    );
    assert!(!fresh.exists(), "{what}: dry run created the destination");
    if client == Tool::Rsync {
        // rsync itemizes a new directory whichever side is the receiver
        // (an arsync receiver reports it to the rsync sender).
        assert!(
            out.contains("cd+++++++++ newdir/"),
            "{what}: -i output: {out}"
        );
    }
}

#[test]
fn features_over_stand_in_ssh() {
    let tmp = scratch_dir().unwrap();
    let ssh = tmp.path().join("fake-ssh");
    write_script(&ssh, FAKE_SSH);
    let rsh = ssh.to_str().unwrap();
    let spec = |p: &Path| format!("somehost:{}", p.display());
    for (client, server) in Tool::PAIRS.into_iter().skip(1) {
        let remote = Remote {
            args: shell_args(server, rsh),
            spec: &spec,
            base: None,
            server: format!("{server:?}"),
        };
        for push in [true, false] {
            feature_scenario(client, &remote, push);
        }
    }
}

#[test]
fn features_over_real_sshd_and_daemon() {
    assert!(
        rustix_is_root(),
        "this test starts sshd and must run as root"
    );
    let tmp = scratch_dir().unwrap();
    let sshd = start_sshd(tmp.path());
    let rsh = format!(
        "ssh -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes \
         -o LogLevel=ERROR -i {} -p {}",
        sshd.key.display(),
        sshd.port
    );
    let spec = |p: &Path| format!("root@127.0.0.1:{}", p.display());
    let remote = Remote {
        args: shell_args(Tool::Arsync, &rsh),
        spec: &spec,
        base: None,
        server: "Arsync over sshd".into(),
    };
    feature_scenario(Tool::Rsync, &remote, true);
    feature_scenario(Tool::Arsync, &remote, false);

    let base = tmp.path().join("module");
    fs::create_dir(&base).unwrap();
    let cfg = tmp.path().join("rsyncd.conf");
    write_module_config(&cfg, &base).unwrap();
    let daemon = start_daemon(&program(Tool::Arsync), &cfg).unwrap();
    let port = daemon.port;
    let base_ref = base.as_path();
    let spec = move |p: &Path| {
        let rel = p.strip_prefix(base_ref).unwrap();
        format!("rsync://127.0.0.1:{port}/m/{}", rel.display())
    };
    let remote = Remote {
        args: Vec::new(),
        spec: &spec,
        base: Some(&base),
        server: "Arsync daemon".into(),
    };
    feature_scenario(Tool::Rsync, &remote, true);
    feature_scenario(Tool::Rsync, &remote, false);
}

/// Runs `tool` locally with `args` (for reference trees made by rsync).
fn local(tool: Tool, args: &[&str]) {
    let out = Command::new(program(tool)).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{tool:?} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// -R with `/./` and with whole absolute paths, and several sources in one command, both directions, for
/// every client/server pair: the result equals what rsync makes locally.
#[test]
fn relative_and_several_sources() {
    let tmp = scratch_dir().unwrap();
    let ssh = tmp.path().join("fake-ssh");
    write_script(&ssh, FAKE_SSH);
    let rsh = ssh.to_str().unwrap();
    let src = tmp.path().join("src");
    make_tree(&src);
    let s = src.display().to_string();
    let cases: Vec<(Vec<String>, Vec<String>)> = vec![
        (
            vec!["-aR".into()],
            vec![format!("{s}/./a/b"), format!("{s}/./small.txt")],
        ),
        // Absolute paths without `/./`: sent whole, with their leading
        // slash, and recreated below the destination.
        (
            vec!["-aR".into()],
            vec![format!("{s}/a/b"), format!("{s}/small.txt")],
        ),
        (
            vec!["-a".into()],
            vec![
                format!("{s}/a/"),
                format!("{s}/small.txt"),
                format!("{s}/empty"),
            ],
        ),
    ];
    for (n, (flags, sources)) in cases.iter().enumerate() {
        let want = tmp.path().join(format!("want{n}"));
        let mut args: Vec<&str> = flags.iter().map(String::as_str).collect();
        args.extend(sources.iter().map(String::as_str));
        let w = format!("{}/", want.display());
        args.push(&w);
        local(Tool::Rsync, &args);
        for (client, server) in Tool::PAIRS.into_iter().skip(1) {
            for push in [true, false] {
                let what = format!("{flags:?} {client:?} -> {server:?} push={push}");
                let dst = tmp
                    .path()
                    .join(format!("got-{n}-{client:?}-{server:?}-{push}"));
                let mut all: Vec<String> = flags.clone();
                all.extend(shell_args(server, rsh));
                if push {
                    all.extend(sources.iter().cloned());
                    all.push(format!("h:{}/", dst.display()));
                } else {
                    all.extend(sources.iter().map(|p| format!("h:{p}")));
                    all.push(format!("{}/", dst.display()));
                }
                let out = Command::new(program(client))
                    .args(&all)
                    .stdin(Stdio::null())
                    .output()
                    .unwrap();
                check(&out, &what);
                // With -R the destination itself is not in the list.
                let mut o = opts();
                o.root_metadata = false;
                if n == 1 {
                    // The implied directories above the scratch dir
                    // (`dev`, `dev/shm`, the scratch dir itself) change
                    // their mtimes while tests run: compare them at a
                    // fixed time.
                    let rel = tmp.path().strip_prefix("/").unwrap();
                    for a in rel.ancestors().filter(|a| !a.as_os_str().is_empty()) {
                        let t = arsync_testutil::FileTime::new(1_500_000_000, 0);
                        for tree in [&want, &dst] {
                            arsync_testutil::set_times(&tree.join(a), t, t).unwrap();
                        }
                    }
                }
                let diffs = compare_trees(&want, &dst, &o);
                assert!(diffs.is_empty(), "{what}: {diffs:#?}");
            }
        }
    }
}

/// A module with `exclude`/`include`/`filter` rules and `use chroot = yes`
/// served by the arsync daemon gives the same results as the rsync daemon
/// with the same configuration: hidden files are not sent, not received
/// and not deleted.
#[test]
fn daemon_module_filters_and_chroot_match_rsync() {
    assert!(rustix_is_root(), "chroot needs root");
    let tmp = scratch_dir().unwrap();
    let excl = tmp.path().join("excl.txt");
    fs::write(&excl, "*.bak\n").unwrap();
    let mut results = Vec::new();
    for server in [Tool::Arsync, Tool::Rsync] {
        let base = tmp.path().join(format!("module-{server:?}"));
        fs::create_dir(&base).unwrap();
        make_tree(&base.join("pub"));
        fs::write(base.join("pub/a/key.secret"), b"k").unwrap();
        fs::write(base.join("pub/old.bak"), b"b").unwrap();
        fs::create_dir_all(base.join("pub/hidden/deep")).unwrap();
        fs::write(base.join("pub/hidden/deep/x"), b"x").unwrap();
        fs::create_dir_all(base.join("up")).unwrap();
        // Hidden files already on the receiving side survive --delete.
        fs::write(base.join("up/keep.secret"), b"s").unwrap();
        set_mtime(&base.join("up/keep.secret"), 1_600_000_000);
        settle_dirs(&base);
        let cfg = tmp.path().join(format!("rsyncd-{server:?}.conf"));
        fs::write(
            &cfg,
            format!(
                "[m]\npath = {}\nuse chroot = yes\nread only = no\nuid = root\ngid = root\n\
                 munge symlinks = no\nexclude = *.secret hidden/\nexclude from = {}\n\
                 filter = - /pub/a/b/c/\n",
                base.display(),
                excl.display()
            ),
        )
        .unwrap();
        let daemon = start_daemon(&program(server), &cfg).unwrap();
        let url = |p: &str| format!("rsync://127.0.0.1:{}/m/{p}", daemon.port);
        let pulled = tmp.path().join(format!("pulled-{server:?}"));
        check(
            &run_client(Tool::Rsync, &["-a"], &url("pub/"), pulled.to_str().unwrap()),
            &format!("{server:?}: pull"),
        );
        assert!(
            !pulled.join("a/key.secret").exists(),
            "{server:?}: sent a hidden file"
        );
        assert!(!pulled.join("hidden").exists() && !pulled.join("old.bak").exists());
        assert!(pulled.join("a/one.bin").exists());
        let local = tmp.path().join(format!("local-{server:?}"));
        make_tree(&local);
        fs::write(local.join("up.secret"), b"u").unwrap();
        settle_dirs(&local);
        // rsync's daemon refuses the hidden file with an error: exit 23.
        let out = run_client(
            Tool::Arsync,
            &["-a", "--delete"],
            &format!("{}/", local.display()),
            &url("up/"),
        );
        assert_eq!(out.status.code(), Some(23), "{server:?}: push");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("daemon refused to receive file \"up.secret\""),
            "{server:?}: {stderr}"
        );
        assert!(
            !base.join("up/up.secret").exists(),
            "{server:?}: stored a hidden file"
        );
        assert!(
            base.join("up/keep.secret").exists(),
            "{server:?}: deleted a hidden file"
        );
        // Several sources from one module in one arsync command.
        let multi = tmp.path().join(format!("multi-{server:?}"));
        let out = Command::new(arsync_bin())
            .args(["-a", &url("pub/a/"), &url("pub/small.txt")])
            .arg(format!("{}/", multi.display()))
            .output()
            .unwrap();
        check(&out, &format!("{server:?}: several daemon sources"));
        assert!(multi.join("one.bin").exists() && multi.join("small.txt").exists());
        assert!(!multi.join("key.secret").exists());
        results.push((pulled, base.join("up")));
        results.push((multi.clone(), multi));
    }
    let (a, r) = (&results[0], &results[2]);
    let diffs = compare_trees(&a.0, &r.0, &opts());
    assert!(diffs.is_empty(), "pulled trees differ: {diffs:#?}");
    let diffs = compare_trees(&a.1, &r.1, &opts().without_dir_mtimes());
    assert!(diffs.is_empty(), "pushed trees differ: {diffs:#?}");
    let mut o = opts();
    o.root_metadata = false;
    let diffs = compare_trees(&results[1].0, &results[3].0, &o);
    assert!(diffs.is_empty(), "several-source pulls differ: {diffs:#?}");
}

/// -H -A -X -S at protocols 30 and 31 (the ACL/xattr formats are the same
/// from 30 on; 31 adds nanoseconds and the delete-phase marker).
#[test]
fn features_at_older_protocols() {
    let tmp = scratch_dir().unwrap();
    let ssh = tmp.path().join("fake-ssh");
    write_script(&ssh, FAKE_SSH);
    let rsh = ssh.to_str().unwrap();
    let spec = |p: &Path| format!("somehost:{}", p.display());
    for proto in ["--protocol=30", "--protocol=31"] {
        for (client, server, push) in [
            (Tool::Arsync, Tool::Rsync, true),
            (Tool::Rsync, Tool::Arsync, false),
        ] {
            let mut args = shell_args(server, rsh);
            args.push(proto.into());
            let remote = Remote {
                args,
                spec: &spec,
                base: None,
                server: format!("{server:?} {proto}"),
            };
            feature_scenario(client, &remote, push);
        }
    }
}

/// A local path below `root` named by raw bytes (Linux names need not be UTF-8).
fn raw(root: &Path, name: &[u8]) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    root.join(std::ffi::OsStr::from_bytes(name))
}

/// A tree whose names are not UTF-8: a 0xff byte, Latin-1 `é` (0xe9) in a
/// directory and a file below it, a newline, a symlink with such a name and
/// target, a hard-link pair and an excluded file (`*.tmp`).
fn make_bytes_tree(root: &Path) {
    fs::create_dir_all(raw(root, b"caf\xe9/sub\xff")).unwrap();
    fs::write(raw(root, b"a\xffb"), b"ff").unwrap();
    fs::write(raw(root, b"caf\xe9/cr\xe8me"), bytes(5, 3000)).unwrap();
    fs::write(raw(root, b"caf\xe9/sub\xff/new\nline"), b"nl").unwrap();
    fs::write(raw(root, b"caf\xe9/skip\xfe.tmp"), b"excluded").unwrap();
    fs::write(root.join("plain.txt"), b"utf-8 name").unwrap();
    symlink(raw(Path::new(""), b"t\xfe/x"), raw(root, b"l\xe9nk")).unwrap();
    fs::hard_link(raw(root, b"a\xffb"), raw(root, b"caf\xe9/link\xff")).unwrap();
    settle_dirs(root);
}

/// Names that are not UTF-8 go over the wire as bytes, as rsync sends them
/// (without --iconv): every client/server pair, push and pull, over the
/// stand-in ssh and the daemons, with --delete of such a name and an
/// --exclude pattern matching one, gives rsync -> rsync's tree; -v prints
/// them escaped (`\#ooo`).
#[test]
fn non_utf8_names_match_rsync() {
    let tmp = scratch_dir().unwrap();
    let ssh = tmp.path().join("fake-ssh");
    write_script(&ssh, FAKE_SSH);
    let rsh = ssh.to_str().unwrap();
    let base = tmp.path().join("module");
    let src = base.join("src");
    make_bytes_tree(&src);
    let cfg = tmp.path().join("rsyncd.conf");
    write_module_config(&cfg, &base).unwrap();
    let flags = ["-aHv", "--delete", "--exclude", "*.tmp"];
    // Each destination starts with an extraneous non-UTF-8 file (deleted).
    let seed = |d: &Path| {
        fs::create_dir_all(raw(d, b"caf\xe9")).unwrap();
        fs::write(raw(d, b"caf\xe9/old\xff"), b"delete me").unwrap();
    };
    let reference = base.join("reference");
    seed(&reference);
    let out = transfer(
        Tool::Rsync,
        Tool::Rsync,
        rsh,
        &flags,
        &format!("{}/", src.display()),
        &format!("h:{}", reference.display()),
    );
    check(&out, "rsync -> rsync with non-UTF-8 names");
    assert!(raw(&reference, b"caf\xe9/sub\xff/new\nline").exists());
    assert!(!raw(&reference, b"caf\xe9/old\xff").exists());
    assert!(!raw(&reference, b"caf\xe9/skip\xfe.tmp").exists());
    settle_dirs(&reference);
    let mut n = 0;
    let mut verify = |client: Tool, how: &str, push: bool, run: &dyn Fn(&str, &str) -> Output| {
        n += 1;
        let dst = base.join(format!("dst{n}"));
        seed(&dst);
        let what = format!("{client:?} client -> {how}, push={push}, non-UTF-8 names");
        let rel = |p: &Path| p.strip_prefix(&base).unwrap().display().to_string();
        let (s, d) = match push {
            true => (format!("{}/", src.display()), rel(&dst)),
            false => (format!("{}/", rel(&src)), dst.display().to_string()),
        };
        let out = run(&s, &d);
        let stdout = check(&out, &what);
        if client == Tool::Arsync {
            assert!(
                stdout.contains("caf\\#351/cr\\#350me\n"),
                "{what}: -v output {stdout:?}"
            );
        }
        settle_dirs(&dst);
        assert_same(&reference, &dst, &what);
    };
    for (client, server) in [
        (Tool::Arsync, Tool::Rsync),
        (Tool::Rsync, Tool::Arsync),
        (Tool::Arsync, Tool::Arsync),
    ] {
        for push in [true, false] {
            let run = |s: &str, d: &str| {
                let spec = |p: &str| match p.starts_with('/') {
                    true => p.to_string(),
                    false => format!("h:{}/{p}", base.display()),
                };
                transfer(client, server, rsh, &flags, &spec(s), &spec(d))
            };
            verify(client, &format!("{server:?} over ssh"), push, &run);
        }
    }
    // --files-from naming such files (with -R, sent as a list of names).
    let list = tmp.path().join("list");
    fs::write(
        &list,
        b"a\xffb\ncaf\xe9/sub\xff\nl\xe9nk\n./caf\xe9/cr\xe8me\n",
    )
    .unwrap();
    let ff = format!("--files-from={}", list.display());
    let from_list = |client: Tool, server: Tool, push: bool, dst: &Path| {
        let (s, d) = match push {
            true => (
                format!("{}/", src.display()),
                format!("h:{}", dst.display()),
            ),
            false => (format!("h:{}/", src.display()), dst.display().to_string()),
        };
        let what =
            format!("{client:?} -> {server:?} push={push} --files-from with non-UTF-8 names");
        check(&transfer(client, server, rsh, &["-a", &ff], &s, &d), &what);
        settle_dirs(dst);
        what
    };
    let ff_reference = base.join("ff-reference");
    from_list(Tool::Rsync, Tool::Rsync, true, &ff_reference);
    assert!(raw(&ff_reference, b"caf\xe9/cr\xe8me").exists());
    for (client, server) in [
        (Tool::Arsync, Tool::Rsync),
        (Tool::Rsync, Tool::Arsync),
        (Tool::Arsync, Tool::Arsync),
    ] {
        for push in [true, false] {
            let dst = base.join(format!("ff-{client:?}-{server:?}-{push}"));
            let what = from_list(client, server, push, &dst);
            assert_same(&ff_reference, &dst, &what);
        }
    }
    // Path arguments that are not UTF-8: a source directory and a
    // destination named by such bytes; an --exclude pattern of such bytes.
    let with_host = |p: &Path| {
        let mut v = b"h:".to_vec();
        v.extend_from_slice(p.as_os_str().as_encoded_bytes());
        OsString::from_vec(v)
    };
    let by_args = |client: Tool, server: Tool, push: bool, dst: &Path| {
        let from = raw(&src, b"caf\xe9");
        let (s, d) = match push {
            true => (from.into_os_string(), with_host(dst)),
            false => (with_host(&from), dst.as_os_str().to_os_string()),
        };
        let what = format!("{client:?} -> {server:?} push={push}, non-UTF-8 path arguments");
        let out = Command::new(program(client))
            .arg("-a")
            .arg(OsString::from_vec(b"--exclude=sub\xff".to_vec()))
            .args(shell_args(server, rsh))
            .arg(s)
            .arg(d)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        check(&out, &what);
        settle_dirs(dst);
        what
    };
    let arg_reference = raw(&base, b"arg-reference\xff");
    by_args(Tool::Rsync, Tool::Rsync, true, &arg_reference);
    assert!(raw(&arg_reference, b"caf\xe9/cr\xe8me").exists());
    assert!(!raw(&arg_reference, b"caf\xe9/sub\xff").exists());
    for (client, server) in [
        (Tool::Arsync, Tool::Rsync),
        (Tool::Rsync, Tool::Arsync),
        (Tool::Arsync, Tool::Arsync),
    ] {
        for push in [true, false] {
            let mut name = format!("arg-{client:?}-{server:?}-{push}-").into_bytes();
            name.push(0xe9);
            let dst = raw(&base, &name);
            let what = by_args(client, server, push, &dst);
            assert_same(&arg_reference, &dst, &what);
        }
    }
    for server in [Tool::Arsync, Tool::Rsync] {
        let daemon = start_daemon(&program(server), &cfg).unwrap();
        let port = daemon.port;
        for client in [Tool::Arsync, Tool::Rsync] {
            if client == Tool::Rsync && server == Tool::Rsync {
                continue;
            }
            for push in [true, false] {
                let run = |s: &str, d: &str| {
                    let spec = |p: &str| match p.starts_with('/') {
                        true => p.to_string(),
                        false => format!("rsync://127.0.0.1:{port}/m/{p}"),
                    };
                    run_client(client, &flags, &spec(s), &spec(d))
                };
                verify(client, &format!("{server:?} daemon"), push, &run);
            }
        }
    }
}
