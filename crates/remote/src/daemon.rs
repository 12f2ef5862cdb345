//! The daemon transport: `rsync://host[:port]/module/path` over TCP. The text
//! preamble (greeting, module, `@RSYNCD: OK`, arguments) runs first; then the
//! binary protocol continues as over a remote shell, minus the version ints.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::ffi::OsStrExt;

use arsync_proto::daemon::{
    auth_response, choose_auth_digest, decode_line, encode_args, DaemonReply, Greeting,
};
use arsync_proto::stats::ExitCode;

use crate::conn::{InStream, OutStream};
use crate::error::{RemoteError, Result};

/// Default rsync daemon port.
pub const DEFAULT_PORT: u16 = 873;

/// A daemon endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonTarget {
    /// `host:port`.
    pub addr: String,
    /// `module/path` (the module name is the first component; bytes: the
    /// path need not be UTF-8).
    pub path: OsString,
    /// User for daemon authentication (`user@host` in the URL).
    pub user: Option<String>,
    /// Password for daemon authentication (the caller may take it from
    /// `RSYNC_PASSWORD`).
    pub password: Option<String>,
    /// Further `module/path`s of the same module (a pull of several sources).
    pub more_paths: Vec<OsString>,
    /// `--contimeout`: seconds the connection may take (exit 35).
    pub contimeout: Option<u32>,
}

impl DaemonTarget {
    /// Parses `rsync://host[:port]/module[/path]`.
    pub fn parse(url: &str) -> Result<DaemonTarget> {
        let rest = url
            .strip_prefix("rsync://")
            .ok_or_else(|| RemoteError::Usage(format!("{url}: not an rsync:// URL")))?;
        let (hostport, path) = rest
            .split_once('/')
            .ok_or_else(|| RemoteError::Usage(format!("{url}: no module name")))?;
        let (user, hostport) = match hostport.rsplit_once('@') {
            Some((u, h)) => (Some(u.to_string()), h),
            None => (None, hostport),
        };
        if path.is_empty() || path.starts_with('/') {
            return Err(RemoteError::Usage(format!(
                "{url}: the remote path must start with a module name"
            )));
        }
        let addr = if hostport
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        {
            hostport.to_string()
        } else {
            format!("{hostport}:{DEFAULT_PORT}")
        };
        Ok(DaemonTarget {
            addr,
            path: path.into(),
            user,
            password: None,
            more_paths: Vec::new(),
            contimeout: None,
        })
    }

    /// The module name.
    pub fn module(&self) -> String {
        let b = self.path.as_bytes();
        let m = b.split(|&c| c == b'/').next().unwrap_or_default();
        String::from_utf8_lossy(m).into_owned()
    }

    /// Connects; returns a reader and a writer on the socket.
    pub fn connect(&self) -> Result<(TcpStream, TcpStream)> {
        let s = match self.contimeout {
            None => TcpStream::connect(&self.addr),
            Some(secs) => self.connect_within(std::time::Duration::from_secs(secs.into()))?,
        }
        .map_err(|e| RemoteError::io(format!("connecting to {}", self.addr), e))?;
        let _ = s.set_nodelay(true);
        let w = s
            .try_clone()
            .map_err(|e| RemoteError::io("cloning the socket", e))?;
        Ok((s, w))
    }

    /// Connects to the first address of the host that answers within
    /// `limit` altogether, as rsync's `--contimeout` (its alarm covers
    /// the whole connect): when it runs out, exit code 35.
    fn connect_within(&self, limit: std::time::Duration) -> Result<std::io::Result<TcpStream>> {
        use std::net::ToSocketAddrs;
        let deadline = std::time::Instant::now() + limit;
        let addrs = match self.addr.to_socket_addrs() {
            Ok(a) => a,
            Err(e) => return Ok(Err(e)),
        };
        let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "no address for the host");
        for a in addrs {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                break;
            }
            match TcpStream::connect_timeout(&a, left) {
                Ok(s) => return Ok(Ok(s)),
                Err(e) => last = e,
            }
        }
        if std::time::Instant::now() >= deadline || last.kind() == std::io::ErrorKind::TimedOut {
            return Err(RemoteError::Timeout {
                code: ExitCode::ConTimeout,
                message: format!("failed to connect to {}: timed out", self.addr),
            });
        }
        Ok(Err(last))
    }
}

/// Runs the text preamble and sends `server_args` (which must not include the
/// path: `.` and the module path are appended). Returns the daemon's greeting.
pub fn preamble<R: Read, W: Write>(
    ins: &mut InStream<R>,
    outs: &mut OutStream<W>,
    target: &DaemonTarget,
    server_args: &[std::ffi::OsString],
    protocol: i32,
    echo: bool,
) -> Result<Greeting> {
    let ours = Greeting {
        protocol,
        sub: 0,
        digests: vec!["md5".into(), "md4".into()],
    };
    outs.write(ours.format().as_bytes())?;
    outs.flush()?;
    let line = ins.decode(decode_line)?;
    let greeting = Greeting::parse(&line)?;
    let proto = greeting.negotiate(protocol, 0);
    outs.write(format!("{}\n", target.module()).as_bytes())?;
    outs.flush()?;
    loop {
        let line = ins.decode(decode_line)?;
        match DaemonReply::parse(&line) {
            DaemonReply::Ok => break,
            DaemonReply::AuthRequired(challenge) => {
                let Some(password) = &target.password else {
                    return Err(RemoteError::Usage(format!(
                        "module {:?} requires a password",
                        target.module()
                    )));
                };
                let digest = choose_auth_digest(&greeting).ok_or_else(|| {
                    RemoteError::Proto(arsync_proto::Error::Unsupported(format!(
                        "none of the daemon's auth digests {:?}",
                        greeting.digests
                    )))
                })?;
                let user = target.user.as_deref().unwrap_or("nobody");
                outs.write(auth_response(user, password, &challenge, digest)?.as_bytes())?;
                outs.flush()?;
            }
            DaemonReply::Exit => {
                return Err(RemoteError::Usage(format!(
                    "module {:?} not available (listing only)",
                    target.module()
                )))
            }
            DaemonReply::Error(msg) => {
                return Err(RemoteError::RemoteExit {
                    code: ExitCode::StartClient.code(),
                    messages: format!(": {msg}"),
                })
            }
            DaemonReply::Text(t) => {
                if echo {
                    eprintln!("{t}");
                }
            }
        }
    }
    let mut args: Vec<&[u8]> = server_args.iter().map(|a| a.as_bytes()).collect();
    args.push(b".");
    args.push(target.path.as_bytes());
    args.extend(target.more_paths.iter().map(|p| p.as_bytes()));
    let mut buf = Vec::new();
    encode_args(&args, proto, &mut buf)?;
    outs.write(&buf)?;
    outs.flush()?;
    Ok(Greeting {
        protocol: proto.min(greeting.protocol),
        ..greeting
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let t = DaemonTarget::parse("rsync://host/mod/sub/dir/").unwrap();
        assert_eq!(t.addr, "host:873");
        assert_eq!(t.module(), "mod");
        assert_eq!(t.path, "mod/sub/dir/");
        assert_eq!(
            DaemonTarget::parse("rsync://127.0.0.1:8730/m")
                .unwrap()
                .addr,
            "127.0.0.1:8730"
        );
        let u = DaemonTarget::parse("rsync://me@host:1/m/x").unwrap();
        assert_eq!((u.user.as_deref(), u.addr.as_str()), (Some("me"), "host:1"));
        assert!(DaemonTarget::parse("rsync://host/").is_err());
        assert!(DaemonTarget::parse("host:/x").is_err());
    }
}
