//! Running transfers over a remote shell without a network: a stand-in for
//! ssh that runs the remote command locally, as sshd would run it through
//! the user's shell. Lets a test pair any client (arsync, rsync) with any
//! server program (`--rsync-path`).

use std::ffi::OsStr;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The stand-in for ssh: skips its options and the host name, then runs
/// the remaining words through `sh -c`.
pub const FAKE_SSH: &str = r#"#!/bin/sh
while [ $# -gt 0 ]; do
  case "$1" in
    -l|-p|-o|-i) shift 2 ;;
    -*) shift ;;
    *) shift; break ;;
  esac
done
exec sh -c "$*"
"#;

/// Writes [`FAKE_SSH`] as an executable `fake-ssh` in `dir` and returns its path.
pub fn install_fake_ssh(dir: &Path) -> io::Result<PathBuf> {
    let path = dir.join("fake-ssh");
    std::fs::write(&path, FAKE_SSH)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    Ok(path)
}

/// Runs `client flags -e rsh --rsync-path server src dst` with stdin closed.
pub fn run_over_shell(
    client: &OsStr,
    server: &OsStr,
    rsh: &Path,
    flags: &[&str],
    src: &str,
    dst: &str,
) -> io::Result<Output> {
    Command::new(client)
        .args(flags)
        .arg("-e")
        .arg(rsh)
        .arg("--rsync-path")
        .arg(server)
        .arg(src)
        .arg(dst)
        .stdin(Stdio::null())
        .output()
}
