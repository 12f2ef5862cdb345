//! Pull from and push to a real `rsync --daemon` over TCP.

mod common;

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use arsync_remote::daemon::DaemonTarget;
use arsync_remote::error::RemoteError;
use arsync_remote::pull::{pull, PullOptions};
use arsync_remote::push::{push, PushOptions};
use common::*;

/// A daemon we started; killed (by its own pid) when dropped.
struct Daemon {
    child: Child,
    port: u16,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_daemon(dir: &Path, module_path: &Path) -> Daemon {
    let conf = dir.join("rsyncd.conf");
    let secrets = dir.join("secrets");
    std::fs::write(&secrets, "tester:s3cret\n").unwrap();
    std::fs::set_permissions(
        &secrets,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    std::fs::write(
        &conf,
        format!(
            "use chroot = no\npid file = {pid}\nlog file = {log}\n[mod]\n  path = {path}\n  read only = no\n  uid = 0\n  gid = 0\n  munge symlinks = no\n[locked]\n  path = {path}\n  uid = 0\n  gid = 0\n  auth users = tester\n  secrets file = {secrets}\n",
            pid = dir.join("rsyncd.pid").display(),
            log = dir.join("rsyncd.log").display(),
            path = module_path.display(),
            secrets = secrets.display()
        ),
    )
    .unwrap();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("rsync")
        .args(["--daemon", "--no-detach", "--address=127.0.0.1"])
        .arg(format!("--port={port}"))
        .arg(format!("--config={}", conf.display()))
        .spawn()
        .unwrap();
    let d = Daemon { child, port };
    let t0 = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "daemon did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    d
}

#[test]
fn pull_and_push_through_a_daemon() {
    let t = tempfile::tempdir_in("/dev/shm").unwrap();
    let module = t.path().join("module");
    let src = module.join("src");
    let big = make_tree(&src, 1 << 20);
    let d = start_daemon(t.path(), &module);
    let url =
        |p: &str| DaemonTarget::parse(&format!("rsync://127.0.0.1:{}/mod/{p}", d.port)).unwrap();

    // Pull module/src into a local directory.
    let dst = t.path().join("pulled");
    let mut o = PullOptions::new("unused", &dst);
    o.daemon = Some(url("src/"));
    let s = pull(&o).unwrap_or_else(|e| panic!("daemon pull: {e}"));
    assert_eq!(s.files_transferred, 8);
    assert_same_tree(&src, &dst);

    // Push into module/back, twice (whole, then delta). A daemon without
    // chroot sanitizes absolute symlink targets, so drop that one first.
    std::fs::remove_file(src.join("dangling")).unwrap();
    let mut o = PushOptions::new(&src, "unused");
    o.daemon = Some(url("back/"));
    push(&o).unwrap_or_else(|e| panic!("daemon push: {e}"));
    assert_same_tree_ns(&src, &module.join("back"), true, false);
    touch_up_one_percent(&big);
    let s = push(&o).unwrap();
    assert_eq!(s.files_transferred, 1);
    assert!(s.matched_bytes > 900_000, "{s:?}");
    assert_same_tree_ns(&src, &module.join("back"), true, false);

    // Protocol 30 via the greeting, with compression.
    let dst30 = t.path().join("pulled30");
    let mut o = PullOptions::new("unused", &dst30);
    o.daemon = Some(url("src/"));
    o.protocol = 30;
    o.command.flags.push('z');
    let s = pull(&o).unwrap();
    assert_eq!(s.protocol, 30);
    assert_same_tree_ns(&src, &dst30, false, true);

    // A module with authentication: the right password works, a wrong one
    // and a missing one are clean errors.
    let locked = |pw: Option<&str>| {
        let mut o = PullOptions::new(
            "unused",
            t.path().join(format!("locked-{}", pw.unwrap_or("none"))),
        );
        let mut target =
            DaemonTarget::parse(&format!("rsync://tester@127.0.0.1:{}/locked/src/", d.port))
                .unwrap();
        target.password = pw.map(str::to_string);
        o.daemon = Some(target);
        o.echo_messages = false;
        pull(&o)
    };
    let s = locked(Some("s3cret")).unwrap_or_else(|e| panic!("auth pull: {e}"));
    assert!(s.files_transferred > 0);
    match locked(Some("wrong")) {
        Err(RemoteError::RemoteExit { messages, .. }) => {
            assert!(messages.contains("auth failed"), "{messages}")
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(locked(None), Err(RemoteError::Usage(_))));

    // An unknown module is a clean error.
    let mut o = PullOptions::new("unused", t.path().join("x"));
    o.daemon = Some(DaemonTarget::parse(&format!("rsync://127.0.0.1:{}/nope/", d.port)).unwrap());
    match pull(&o) {
        Err(RemoteError::RemoteExit { code: 5, messages }) => {
            assert!(messages.contains("Unknown module"), "{messages}")
        }
        other => panic!("{other:?}"),
    }
}
