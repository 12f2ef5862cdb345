//! `arsync --version -v` reports the I/O backend and the probed io_uring features.

use std::process::Command;

fn version_verbose(io_env: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_arsync"))
        .args(["--version", "-v"])
        .env("ARSYNC_IO", io_env)
        .output()
        .expect("run arsync");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).expect("utf-8 output")
}

#[test]
fn version_verbose_shows_the_chosen_backend() {
    let auto = version_verbose("auto");
    assert!(auto.starts_with("arsync  version "), "{auto}");
    if auto.contains("I/O backend: io_uring") {
        // The probe's findings are listed: setup mode and opcode support.
        assert!(auto.contains("io_uring setup: "), "{auto}");
        assert!(auto.contains("opcodes supported: "), "{auto}");
        assert!(auto.contains("statx"), "{auto}");
    } else {
        // No io_uring here: the fallback says why.
        assert!(auto.contains("I/O backend: threads"), "{auto}");
        assert!(auto.contains("io_uring unavailable"), "{auto}");
    }

    let threads = version_verbose("threads");
    assert!(threads.contains("I/O backend: threads"), "{threads}");
    assert!(threads.contains("ARSYNC_IO=threads"), "{threads}");
    assert!(!threads.contains("opcodes supported"), "{threads}");
}

#[test]
fn plain_version_does_not_probe() {
    let out = Command::new(env!("CARGO_BIN_EXE_arsync"))
        .arg("--version")
        .output()
        .expect("run arsync");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(text.starts_with("arsync  version "), "{text}");
    assert!(!text.contains("I/O backend"), "{text}");
}
