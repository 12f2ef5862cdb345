//! Running transfers over a remote shell without a network: a stand-in for
//! ssh that runs the remote command locally, as sshd would run it through
//! the user's shell. Lets a test pair any client (arsync, rsync) with any
//! server program (`--rsync-path`).

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The stand-in for ssh: skips its options and the host name, then runs
/// the remaining words through `sh -c`.
pub const FAKE_SSH: &str = concat!(
    "#!/bin/sh\n",
    crate::ssh_skip_to_command!(),
    "exec sh -c \"$*\"\n"
);

/// The start of every stand-in for ssh, as a string literal (for `concat!`): a shell loop
/// that drops ssh's options and the host name, leaving the remote command in `$*`.
#[macro_export]
macro_rules! ssh_skip_to_command {
    () => {
        r#"while [ $# -gt 0 ]; do
  case "$1" in
    -l|-p|-o|-i) shift 2 ;;
    -*) shift ;;
    *) shift; break ;;
  esac
done
"#
    };
}

/// One of the two programs a remote test pairs: arsync or the system's rsync.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Tool {
    /// The arsync binary under test.
    Arsync,
    /// The system's `rsync` (the reference).
    Rsync,
}

impl Tool {
    /// The program to run: `arsync` is the test's binary (only the test
    /// crate knows `CARGO_BIN_EXE_arsync`), rsync is `rsync` from `PATH`.
    pub fn program(self, arsync: &OsStr) -> OsString {
        match self {
            Tool::Arsync => arsync.to_os_string(),
            Tool::Rsync => OsString::from("rsync"),
        }
    }

    /// `arsync` or `rsync`.
    pub fn name(self) -> &'static str {
        match self {
            Tool::Arsync => "arsync",
            Tool::Rsync => "rsync",
        }
    }

    /// Every (client, server) pairing, rsync->rsync (the reference) first.
    pub const PAIRS: [(Tool, Tool); 4] = [
        (Tool::Rsync, Tool::Rsync),
        (Tool::Arsync, Tool::Rsync),
        (Tool::Rsync, Tool::Arsync),
        (Tool::Arsync, Tool::Arsync),
    ];
}

/// Every client -> server pairing of `arsync` and the system's `rsync`, labelled
/// `client->server`, rsync->rsync (the reference) first (see [`Tool::PAIRS`]).
pub fn pairings(arsync: &OsStr) -> [(&'static str, OsString, OsString); 4] {
    const LABELS: [&str; 4] = [
        "rsync->rsync",
        "arsync->rsync",
        "rsync->arsync",
        "arsync->arsync",
    ];
    std::array::from_fn(|i| {
        let (c, s) = Tool::PAIRS[i];
        (LABELS[i], c.program(arsync), s.program(arsync))
    })
}

/// Which way a remote transfer goes, seen from the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// The client sends: `SRC/ fakehost:DST`.
    Push,
    /// The client receives: `fakehost:SRC/ DST`.
    Pull,
}

impl Direction {
    /// The client's source and destination arguments for copying the contents of `src`
    /// into `dst` through [`FAKE_SSH`] (the host name is `fakehost`).
    pub fn endpoints(self, src: &Path, dst: &Path) -> (String, String) {
        match self {
            Direction::Push => (
                format!("{}/", src.display()),
                format!("fakehost:{}", dst.display()),
            ),
            Direction::Pull => (
                format!("fakehost:{}/", src.display()),
                dst.display().to_string(),
            ),
        }
    }
}

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

/// A daemon process (`arsync --daemon` or `rsync --daemon`) listening on a
/// free loopback port; killed on drop.
pub struct Daemon {
    /// The daemon process.
    pub child: std::process::Child,
    /// Its TCP port on 127.0.0.1.
    pub port: u16,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `program --daemon --no-detach` with `config` on a free port of
/// 127.0.0.1 and waits (up to 10 s) until it accepts connections.
pub fn start_daemon(program: &OsStr, config: &Path) -> io::Result<Daemon> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let child = Command::new(program)
        .args([
            "--daemon",
            "--no-detach",
            "--address",
            "127.0.0.1",
            "--port",
        ])
        .arg(port.to_string())
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .spawn()?;
    let mut daemon = Daemon { child, port };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(status) = daemon.child.try_wait()? {
            return Err(io::Error::other(format!("daemon exited: {status}")));
        }
        if std::time::Instant::now() > deadline {
            return Err(io::Error::other("daemon did not start within 10 s"));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Ok(daemon)
}

/// Writes an rsyncd.conf at `cfg` with one writable module `m` at `path`
/// (no chroot, symlinks kept as they are, run as root).
pub fn write_module_config(cfg: &Path, path: &Path) -> io::Result<()> {
    std::fs::write(
        cfg,
        format!(
            "use chroot = no\n[m]\nmunge symlinks = no\npath = {}\nread only = no\nuid = root\ngid = root\n",
            path.display()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairings_start_with_the_reference() {
        let p = pairings(OsStr::new("/bin/arsync"));
        assert_eq!(p[0], ("rsync->rsync", "rsync".into(), "rsync".into()));
        assert_eq!(
            p[2],
            ("rsync->arsync", "rsync".into(), "/bin/arsync".into())
        );
        for ((label, c, s), (tc, ts)) in p.iter().zip(Tool::PAIRS) {
            assert_eq!(*label, format!("{}->{}", tc.name(), ts.name()));
            assert_eq!(
                (c.as_os_str(), s.as_os_str()),
                (
                    tc.program(OsStr::new("/bin/arsync")).as_os_str(),
                    ts.program(OsStr::new("/bin/arsync")).as_os_str()
                )
            );
        }
    }
}
