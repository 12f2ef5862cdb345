//! The real rsync client against the arsync server roles. The test binary
//! is its own server: `--rsync-path` points back at it, and when started with
//! `--server` it serves instead of testing (`harness = false`).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// This test binary: started with `--server`, it serves (see `main`).
fn serve_bin() -> PathBuf {
    std::env::current_exe().unwrap()
}

/// A remote shell that ignores the host name and runs the command here.
fn rsh(dir: &Path) -> PathBuf {
    let p = dir.join("rsh.sh");
    std::fs::write(&p, "#!/bin/sh\nshift\nexec \"$@\"\n").unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

fn rsync(dir: &Path, extra: &[&str], from: &str, to: &str) {
    let out = Command::new("rsync")
        .arg("-a")
        .args(extra)
        .arg("-e")
        .arg(rsh(dir))
        .arg(format!("--rsync-path={}", serve_bin().display()))
        .args([from, to])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "rsync {extra:?} {from} {to}: {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

fn real_client_pulls_from_arsync_server() {
    for extra in [&[][..], &["--protocol=30"], &["-z"]] {
        let t = tempfile::tempdir_in("/dev/shm").unwrap();
        let (src, dst) = (t.path().join("src"), t.path().join("dst"));
        let big = make_tree(&src, 1 << 20);
        rsync(
            t.path(),
            extra,
            &format!("localhost:{}/", src.display()),
            &format!("{}/", dst.display()),
        );
        let nsec = !extra.contains(&"--protocol=30");
        assert_same_tree_ns(&src, &dst, nsec, false);
        touch_up_one_percent(&big);
        rsync(
            t.path(),
            extra,
            &format!("localhost:{}/", src.display()),
            &format!("{}/", dst.display()),
        );
        assert_same_tree_ns(&src, &dst, nsec, false);
    }
}

fn real_client_pushes_to_arsync_server() {
    for extra in [&[][..], &["--protocol=30"], &["-z", "--delete"]] {
        let t = tempfile::tempdir_in("/dev/shm").unwrap();
        let (src, dst) = (t.path().join("src"), t.path().join("dst"));
        let big = make_tree(&src, 1 << 20);
        rsync(
            t.path(),
            extra,
            &format!("{}/", src.display()),
            &format!("localhost:{}/", dst.display()),
        );
        let nsec = !extra.contains(&"--protocol=30");
        assert_same_tree_ns(&src, &dst, nsec, true);
        touch_up_one_percent(&big);
        std::fs::write(dst.join("extra"), b"x").unwrap();
        rsync(
            t.path(),
            extra,
            &format!("{}/", src.display()),
            &format!("localhost:{}/", dst.display()),
        );
        if extra.contains(&"--delete") {
            assert!(!dst.join("extra").exists());
            assert_same_tree_ns(&src, &dst, nsec, true);
        } else {
            std::fs::remove_file(dst.join("extra")).unwrap();
            assert_same_tree_ns(&src, &dst, nsec, true);
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--server") {
        std::process::exit(arsync_remote::server::serve_stdio(&args).code());
    }
    let filter = args.iter().find(|a| !a.starts_with('-')).cloned();
    let tests: [(&str, fn()); 2] = [
        (
            "real_client_pulls_from_arsync_server",
            real_client_pulls_from_arsync_server,
        ),
        (
            "real_client_pushes_to_arsync_server",
            real_client_pushes_to_arsync_server,
        ),
    ];
    let mut failed = 0;
    for (name, f) in tests {
        if filter
            .as_ref()
            .is_some_and(|flt| !name.contains(flt.as_str()))
        {
            continue;
        }
        match std::panic::catch_unwind(f) {
            Ok(()) => println!("test {name} ... ok"),
            Err(_) => {
                println!("test {name} ... FAILED");
                failed += 1;
            }
        }
    }
    if failed > 0 {
        println!("test result: FAILED. {failed} failed");
        std::process::exit(101);
    }
    println!("test result: ok.");
}
