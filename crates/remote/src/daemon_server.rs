//! The rsync daemon (`arsync --daemon`): serves modules from an rsyncd.conf
//! subset over TCP. Each connection runs on its own thread: text preamble
//! (greeting, module, host check, challenge-response auth, `@RSYNCD: OK`,
//! arguments), then the `--server` role of [`crate::server`] confined to the
//! module's directory.
//!
//! Supported module parameters: `path`, `comment`, `read only`, `write
//! only`, `list`, `uid`, `gid`, `use chroot` (default yes; as root the
//! connection thread unshares its file-system context and chroots into the
//! module after the id tables were loaded; confinement otherwise comes from
//! `openat2(RESOLVE_BENEATH)` on receive and from refusing `..` in requested
//! paths), `auth users`, `secrets file`, `strict modes`, `hosts allow`,
//! `hosts deny`, `max connections`, `filter`/`include from`/`include`/
//! `exclude from`/`exclude` (module-relative rules: hidden files are not
//! sent, not received and not deleted). Global: `port`, `address`, `motd
//! file` (ignored), `pid file`, `use chroot`.
//! `uid`/`gid` switch the connection thread's credentials (Linux
//! credentials are per thread; the transfer's helper threads inherit them).

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::io::{Read, Write};
use std::net::{IpAddr, TcpListener, TcpStream};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use arsync_proto::daemon::{auth_response, Greeting};
use arsync_proto::handshake::PROTOCOL_VERSION;
use arsync_proto::stats::ExitCode;

use crate::error::{RemoteError, Result};
use crate::ids::IdNames;
use crate::server::{refuse_session, run_server_socket, ServerArgs};
use crate::walk::DaemonFilter;
use arsync_filter::{DaemonParam, FilterRules};

/// One `[module]` section.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Module {
    /// Module name.
    pub name: String,
    /// Directory served.
    pub path: PathBuf,
    /// Shown in the module list.
    pub comment: String,
    /// Refuse uploads (default true, as in rsync).
    pub read_only: bool,
    /// Refuse downloads.
    pub write_only: bool,
    /// Shown in the module list (default true).
    pub list: bool,
    /// User to run transfers as (name or number).
    pub uid: Option<String>,
    /// Group to run transfers as (name or number).
    pub gid: Option<String>,
    /// Users allowed (empty: no authentication).
    pub auth_users: Vec<String>,
    /// `user:password` lines.
    pub secrets_file: Option<PathBuf>,
    /// Address patterns allowed (empty: all).
    pub hosts_allow: Vec<String>,
    /// Address patterns denied.
    pub hosts_deny: Vec<String>,
    /// Concurrent connections (0: unlimited).
    pub max_connections: usize,
    /// `filter`, `include from`, `include`, `exclude from`, `exclude`
    /// values, in the order rsync applies them.
    pub filters: Vec<(DaemonParam, String)>,
    /// `use chroot` (rsync's default: yes); effective when running as root.
    pub use_chroot: bool,
}

/// A parsed configuration file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config {
    /// Global `port`.
    pub port: Option<u16>,
    /// Global `address`.
    pub address: Option<String>,
    /// Global `pid file`.
    pub pid_file: Option<PathBuf>,
    /// Modules in file order.
    pub modules: Vec<Module>,
}

fn bool_value(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "yes" | "true" | "1" | "on" => Some(true),
        "no" | "false" | "0" | "off" => Some(false),
        _ => None,
    }
}

fn list_value(v: &str) -> Vec<String> {
    v.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

impl Config {
    /// Parses rsyncd.conf text. Unknown parameters are errors (so a
    /// setting is never silently ignored).
    pub fn parse(text: &str) -> Result<Config> {
        let mut cfg = Config::default();
        let mut global_uid: Option<String> = None;
        let mut global_chroot = true;
        let mut global_gid: Option<String> = None;
        let mut cur: Option<Module> = None;
        let bad = |n: usize, msg: String| RemoteError::Usage(format!("config line {n}: {msg}"));
        for (n, raw) in text.lines().enumerate() {
            let n = n + 1;
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            if let Some(name) = line.strip_prefix('[') {
                let name = name
                    .strip_suffix(']')
                    .ok_or_else(|| bad(n, "unterminated section name".into()))?
                    .trim();
                if let Some(m) = cur.take() {
                    cfg.modules.push(m);
                }
                if name == "global" {
                    continue;
                }
                if name.is_empty() || name.contains('/') {
                    return Err(bad(n, format!("bad module name {name:?}")));
                }
                cur = Some(Module {
                    name: name.to_string(),
                    read_only: true,
                    list: true,
                    use_chroot: global_chroot,
                    uid: global_uid.clone(),
                    gid: global_gid.clone(),
                    ..Module::default()
                });
                continue;
            }
            let (key, value) = line
                .split_once('=')
                .ok_or_else(|| bad(n, format!("expected `name = value`: {line:?}")))?;
            let key = key
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
                .to_ascii_lowercase();
            let value = value.trim();
            let flag = |v: &str| bool_value(v).ok_or_else(|| bad(n, format!("bad boolean {v:?}")));
            match cur.as_mut() {
                None => match key.as_str() {
                    "port" => {
                        cfg.port = Some(value.parse().map_err(|_| bad(n, "bad port".into()))?)
                    }
                    "address" => cfg.address = Some(value.to_string()),
                    "pid file" => cfg.pid_file = Some(PathBuf::from(value)),
                    "uid" => global_uid = Some(value.to_string()),
                    "gid" => global_gid = Some(value.to_string()),
                    "use chroot" => global_chroot = flag(value)?,
                    "motd file" | "log file" | "lock file" => {}
                    _ => return Err(bad(n, format!("unsupported global parameter {key:?}"))),
                },
                Some(m) => match key.as_str() {
                    "path" => m.path = PathBuf::from(value),
                    "comment" => m.comment = value.to_string(),
                    "read only" => m.read_only = flag(value)?,
                    "write only" => m.write_only = flag(value)?,
                    "list" => m.list = flag(value)?,
                    "uid" => m.uid = Some(value.to_string()),
                    "gid" => m.gid = Some(value.to_string()),
                    "use chroot" => m.use_chroot = flag(value)?,
                    "strict modes" | "lock file" | "log file" | "munge symlinks"
                    | "numeric ids" => {}
                    "auth users" => m.auth_users = list_value(value),
                    "secrets file" => m.secrets_file = Some(PathBuf::from(value)),
                    "hosts allow" => m.hosts_allow = list_value(value),
                    "hosts deny" => m.hosts_deny = list_value(value),
                    "max connections" => {
                        m.max_connections = value
                            .parse()
                            .map_err(|_| bad(n, "bad max connections".into()))?
                    }
                    "filter" => m.filters.push((DaemonParam::Filter, value.to_string())),
                    "include from" => m
                        .filters
                        .push((DaemonParam::IncludeFrom, value.to_string())),
                    "include" => m.filters.push((DaemonParam::Include, value.to_string())),
                    "exclude from" => m
                        .filters
                        .push((DaemonParam::ExcludeFrom, value.to_string())),
                    "exclude" => m.filters.push((DaemonParam::Exclude, value.to_string())),
                    _ => return Err(bad(n, format!("unsupported module parameter {key:?}"))),
                },
            }
        }
        if let Some(m) = cur.take() {
            cfg.modules.push(m);
        }
        for m in &mut cfg.modules {
            // rsync reads them in this order, whatever the file's order.
            let rank = |p: &DaemonParam| match p {
                DaemonParam::Filter => 0,
                DaemonParam::IncludeFrom => 1,
                DaemonParam::Include => 2,
                DaemonParam::ExcludeFrom => 3,
                DaemonParam::Exclude => 4,
            };
            m.filters.sort_by_key(|(p, _)| rank(p));
            m.rules(Path::new("/"))?;
        }
        for m in &cfg.modules {
            if m.path.as_os_str().is_empty() {
                return Err(RemoteError::Usage(format!("module {} has no path", m.name)));
            }
        }
        Ok(cfg)
    }
}

/// True when `ip` matches one `hosts allow/deny` pattern: `*`, an address,
/// `addr/bits` (IPv4 or IPv6), or an IPv4 pattern with `*` components.
pub fn host_matches(pattern: &str, ip: IpAddr) -> bool {
    if pattern == "*" {
        return true;
    }
    if let Some((net, bits)) = pattern.split_once('/') {
        let (Ok(net), Ok(bits)) = (net.parse::<IpAddr>(), bits.parse::<u32>()) else {
            return false;
        };
        return match (net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) if bits <= 32 => {
                let mask = if bits == 0 {
                    0
                } else {
                    u32::MAX << (32 - bits)
                };
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) if bits <= 128 => {
                let mask = if bits == 0 {
                    0
                } else {
                    u128::MAX << (128 - bits)
                };
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        };
    }
    if let Ok(p) = pattern.parse::<IpAddr>() {
        return p == ip;
    }
    if pattern == "localhost" {
        return ip.is_loopback();
    }
    let text = ip.to_string();
    let (pp, tp): (Vec<&str>, Vec<&str>) =
        (pattern.split('.').collect(), text.split('.').collect());
    pp.len() == tp.len() && pp.iter().zip(&tp).all(|(p, t)| *p == "*" || p == t)
}

/// rsync's rule: allowed if in `hosts allow` (or it is empty) and not in
/// `hosts deny`; an address in both lists is allowed.
pub fn host_allowed(m: &Module, ip: IpAddr) -> bool {
    let allowed = m.hosts_allow.iter().any(|p| host_matches(p, ip));
    let denied = m.hosts_deny.iter().any(|p| host_matches(p, ip));
    if !m.hosts_allow.is_empty() && allowed {
        return true;
    }
    if denied {
        return false;
    }
    m.hosts_allow.is_empty()
}

/// Running daemon state shared by connection threads.
struct State {
    cfg: Config,
    active: HashMap<String, AtomicUsize>,
}

/// Command-line options of `arsync --daemon`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DaemonArgs {
    /// `--no-detach`: stay in the foreground.
    pub no_detach: bool,
    /// `--port`.
    pub port: Option<u16>,
    /// `--address`.
    pub address: Option<String>,
    /// `--config` (default `/etc/rsyncd.conf`).
    pub config: PathBuf,
}

impl DaemonArgs {
    /// Parses the arguments after the program name.
    pub fn parse(args: &[String]) -> Result<DaemonArgs> {
        let mut a = DaemonArgs {
            config: PathBuf::from("/etc/rsyncd.conf"),
            ..DaemonArgs::default()
        };
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            let (name, inline) = match arg.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (arg.as_str(), None),
            };
            let mut value = |what: &str| {
                inline
                    .clone()
                    .or_else(|| it.next().cloned())
                    .ok_or_else(|| RemoteError::Usage(format!("{what} needs a value")))
            };
            match name {
                "--daemon" => {}
                "--no-detach" => a.no_detach = true,
                "--detach" => a.no_detach = false,
                "--port" => {
                    a.port = Some(
                        value("--port")?
                            .parse()
                            .map_err(|_| RemoteError::Usage("bad --port".into()))?,
                    )
                }
                "--address" => a.address = Some(value("--address")?),
                "--config" => a.config = PathBuf::from(value("--config")?),
                "-v" | "--verbose" => {}
                other => {
                    return Err(RemoteError::Proto(arsync_proto::Error::Unsupported(
                        format!("daemon option {other}"),
                    )))
                }
            }
        }
        Ok(a)
    }
}

/// `arsync --daemon ...`: returns the process exit code.
pub fn main_with_args(args: &[std::ffi::OsString]) -> i32 {
    let words: Vec<String> = args
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let res = DaemonArgs::parse(&words).and_then(|a| {
        if !a.no_detach {
            return detach(args);
        }
        serve(&a, None)
    });
    match res {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("arsync daemon: {e}");
            e.exit_code().code()
        }
    }
}

/// Re-runs ourselves with `--no-detach` in a new session and returns.
fn detach(args: &[std::ffi::OsString]) -> Result<()> {
    let exe = std::env::current_exe().map_err(|e| RemoteError::io("current_exe", e))?;
    let mut cmd = std::process::Command::new("setsid");
    cmd.arg(exe)
        .args(args)
        .arg("--no-detach")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    cmd.spawn()
        .map_err(|e| RemoteError::io("starting the daemon", e))?;
    Ok(())
}

/// Serves until the listener fails. With `ready`, the bound address is sent
/// there once listening (for tests and embedding).
pub fn serve(
    args: &DaemonArgs,
    ready: Option<std::sync::mpsc::Sender<std::net::SocketAddr>>,
) -> Result<()> {
    let text = std::fs::read_to_string(&args.config)
        .map_err(|e| RemoteError::io(format!("config {}", args.config.display()), e))?;
    // Connections may chroot into a module without /etc/passwd.
    IdNames::preload();
    let cfg = Config::parse(&text)?;
    let port = args
        .port
        .or(cfg.port)
        .unwrap_or(crate::daemon::DEFAULT_PORT);
    let address = args
        .address
        .clone()
        .or_else(|| cfg.address.clone())
        .unwrap_or_else(|| "0.0.0.0".into());
    let listener = TcpListener::bind((address.as_str(), port))
        .map_err(|e| RemoteError::io(format!("bind {address}:{port}"), e))?;
    let local = listener
        .local_addr()
        .map_err(|e| RemoteError::io("local_addr", e))?;
    if let Some(p) = &cfg.pid_file {
        std::fs::write(p, format!("{}\n", std::process::id()))
            .map_err(|e| RemoteError::io(format!("pid file {}", p.display()), e))?;
    }
    if let Some(tx) = ready {
        let _ = tx.send(local);
    }
    let active = cfg
        .modules
        .iter()
        .map(|m| (m.name.clone(), AtomicUsize::new(0)))
        .collect();
    let state = Arc::new(State { cfg, active });
    for conn in listener.incoming() {
        let Ok(stream) = conn else { continue };
        let state = Arc::clone(&state);
        std::thread::spawn(move || {
            if let Err(e) = handle(&state, stream) {
                eprintln!("arsync daemon: {e}");
            }
        });
    }
    Ok(())
}

/// Reads one `\n`-terminated line byte by byte (nothing past it is consumed).
fn read_line(s: &mut TcpStream) -> Result<String> {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    loop {
        let n = s
            .read(&mut b)
            .map_err(|e| RemoteError::io("reading from client", e))?;
        if n == 0 {
            return Err(RemoteError::Eof(String::new()));
        }
        match b[0] {
            b'\n' => break,
            b'\r' => {}
            c => line.push(c),
        }
        if line.len() > 4096 {
            return Err(RemoteError::Refused("line too long".into()));
        }
    }
    String::from_utf8(line).map_err(|_| RemoteError::Refused("line is not UTF-8".into()))
}

/// Reads the client's arguments: NUL-separated (protocol >= 30) or
/// newline-separated, ended by an empty one.
fn read_args(s: &mut TcpStream, protocol: i32) -> Result<Vec<OsString>> {
    let sep = if protocol >= 30 { 0u8 } else { b'\n' };
    let mut args = Vec::new();
    let mut cur = Vec::new();
    let mut b = [0u8; 1];
    let mut total = 0usize;
    loop {
        let n = s
            .read(&mut b)
            .map_err(|e| RemoteError::io("reading arguments", e))?;
        if n == 0 {
            return Err(RemoteError::Eof(String::new()));
        }
        total += 1;
        if total > 64 * 1024 || args.len() > 1000 {
            return Err(RemoteError::Refused("argument list too long".into()));
        }
        if b[0] == sep {
            if cur.is_empty() {
                return Ok(args);
            }
            // Bytes, as rsync sends them: paths need not be UTF-8.
            args.push(OsString::from_vec(std::mem::take(&mut cur)));
        } else {
            cur.push(b[0]);
        }
    }
}

fn send(s: &mut TcpStream, text: &str) -> Result<()> {
    s.write_all(text.as_bytes())
        .map_err(|e| RemoteError::io("writing to client", e))
}

/// Sends `@ERROR: msg` and returns it as an error.
fn refuse(s: &mut TcpStream, msg: String) -> Result<()> {
    send(s, &format!("@ERROR: {msg}\n"))?;
    Err(RemoteError::Refused(msg))
}

/// Decrements a module's connection count when dropped.
struct Slot<'a>(&'a AtomicUsize);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn challenge() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut seed = Vec::new();
    seed.extend_from_slice(&t.to_le_bytes());
    seed.extend_from_slice(&std::process::id().to_le_bytes());
    let tid = rustix::thread::gettid().as_raw_nonzero().get();
    seed.extend_from_slice(&tid.to_le_bytes());
    arsync_proto::daemon::base64_nopad(&md5_of(&seed))
}

fn md5_of(data: &[u8]) -> Vec<u8> {
    use arsync_proto::checksum::{ChecksumAlgo, FileHasher};
    let mut h = FileHasher::new(ChecksumAlgo::Md5);
    h.update(data);
    h.finish().as_bytes().to_vec()
}

fn check_auth(s: &mut TcpStream, m: &Module) -> Result<()> {
    let chal = challenge();
    send(s, &format!("@RSYNCD: AUTHREQD {chal}\n"))?;
    let line = read_line(s)?;
    let (user, _) = line.split_once(' ').unwrap_or((line.as_str(), ""));
    let fail = format!("auth failed on module {}", m.name);
    if !m.auth_users.iter().any(|u| u == user) {
        return refuse(s, fail);
    }
    let secrets = match &m.secrets_file {
        Some(p) => std::fs::read_to_string(p)
            .map_err(|e| RemoteError::io(format!("secrets file {}", p.display()), e))?,
        None => return refuse(s, fail),
    };
    let password = secrets
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(u, _)| *u == user)
        .map(|(_, p)| p.to_string());
    let Some(password) = password else {
        return refuse(s, fail);
    };
    let ok = ["md5", "md4"].iter().any(|d| {
        auth_response(user, &password, &chal, d)
            .map(|r| r.trim_end() == line)
            .unwrap_or(false)
    });
    if !ok {
        return refuse(s, fail);
    }
    Ok(())
}

/// The served path for a client path `module[/sub]`, or `None` if it tries
/// to leave the module.
fn module_path(m: &Module, client_path: &OsStr) -> Option<OsString> {
    let rest = client_path
        .as_bytes()
        .strip_prefix(m.name.as_bytes())
        .filter(|r| r.is_empty() || r.starts_with(b"/"))?;
    let mut rest = rest;
    while let Some(r) = rest.strip_prefix(b"/") {
        rest = r;
    }
    if Path::new(OsStr::from_bytes(rest))
        .components()
        .any(|c| matches!(c, Component::ParentDir))
    {
        return None;
    }
    let mut base = m.path.as_os_str().as_bytes();
    while let Some(b) = base.strip_suffix(b"/") {
        base = b;
    }
    let mut v = base.to_vec();
    v.push(b'/');
    v.extend_from_slice(rest);
    Some(OsString::from_vec(v))
}

impl Module {
    /// The module's filter rules for a module served from `root`, or
    /// `None` when it has none. `include from`/`exclude from` files are read.
    pub fn rules(&self, root: &Path) -> Result<Option<DaemonFilter>> {
        if self.filters.is_empty() {
            return Ok(None);
        }
        let mut f = FilterRules::new();
        f.set_transfer_root(Path::new("/"));
        for (p, v) in &self.filters {
            f.add_daemon_param(*p, v.as_bytes()).map_err(|e| {
                RemoteError::Usage(format!("module {}: {p:?} {v:?}: {e}", self.name))
            })?;
        }
        Ok(Some(DaemonFilter {
            rules: Arc::new(f),
            module_root: root.to_path_buf(),
        }))
    }
}

/// `use chroot`: gives this connection thread its own root directory (the
/// thread first stops sharing file-system attributes with the others) and
/// enters it. Name lookups must already be done ([`IdNames::preload`]).
fn enter_chroot(dir: &Path) -> Result<()> {
    // SAFETY: only CLONE_FS is unshared (root, cwd, umask); the descriptor
    // table stays shared, so no thread can see descriptors go missing.
    // Threads this one spawns later share its new root.
    unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::FS) }
        .map_err(|e| RemoteError::io("unshare(CLONE_FS)", e.into()))?;
    rustix::process::chroot(dir)
        .map_err(|e| RemoteError::io(format!("chroot {}", dir.display()), e.into()))?;
    rustix::process::chdir("/").map_err(|e| RemoteError::io("chdir /", e.into()))
}

fn set_credentials(m: &Module) -> Result<()> {
    if !rustix::process::geteuid().is_root() {
        return Ok(());
    }
    let names = IdNames::load();
    let lookup = |v: &str, user: bool| -> Result<u32> {
        v.parse::<u32>()
            .ok()
            .or_else(|| match user {
                true => names.uid_of(v.as_bytes()),
                false => names.gid_of(v.as_bytes()),
            })
            .ok_or_else(|| RemoteError::Usage(format!("unknown user or group {v:?}")))
    };
    // rsync's default for a root daemon: nobody / nogroup.
    let gid = match &m.gid {
        Some(g) => lookup(g, false)?,
        None => names
            .gid_of(b"nogroup")
            .or(names.gid_of(b"nobody"))
            .unwrap_or(65534),
    };
    let uid = match &m.uid {
        Some(u) => lookup(u, true)?,
        None => names.uid_of(b"nobody").unwrap_or(65534),
    };
    // Per-thread credentials (rustix makes the raw syscalls): other
    // connections keep theirs.
    rustix::thread::set_thread_groups(&[]).map_err(|e| RemoteError::io("setgroups", e.into()))?;
    rustix::thread::set_thread_gid(rustix::process::Gid::from_raw(gid))
        .map_err(|e| RemoteError::io("setgid", e.into()))?;
    rustix::thread::set_thread_uid(rustix::process::Uid::from_raw(uid))
        .map_err(|e| RemoteError::io("setuid", e.into()))?;
    Ok(())
}

fn handle(state: &State, mut s: TcpStream) -> Result<()> {
    let _ = s.set_nodelay(true);
    let peer = s
        .peer_addr()
        .map_err(|e| RemoteError::io("peer_addr", e))?
        .ip();
    let ours = Greeting {
        protocol: PROTOCOL_VERSION,
        sub: 0,
        digests: vec!["md5".into(), "md4".into()],
    };
    send(&mut s, &ours.format())?;
    let theirs = Greeting::parse(read_line(&mut s)?.as_bytes())?;
    let protocol = theirs.protocol.min(PROTOCOL_VERSION);
    if protocol < 30 {
        return refuse(&mut s, format!("protocol {protocol} is too old for arsync"));
    }
    let name = read_line(&mut s)?;
    if name.is_empty() || name == "#list" {
        for m in state.cfg.modules.iter().filter(|m| m.list) {
            send(&mut s, &format!("{:<15}\t{}\n", m.name, m.comment))?;
        }
        return send(&mut s, "@RSYNCD: EXIT\n");
    }
    let Some(m) = state.cfg.modules.iter().find(|m| m.name == name) else {
        return refuse(&mut s, format!("Unknown module '{name}'"));
    };
    if !host_allowed(m, peer) {
        return refuse(
            &mut s,
            format!("access denied to {} from {peer} ({peer})", m.name),
        );
    }
    let count = &state.active[&m.name];
    let now = count.fetch_add(1, Ordering::AcqRel) + 1;
    let _slot = Slot(count);
    if m.max_connections > 0 && now > m.max_connections {
        return refuse(
            &mut s,
            format!(
                "max connections ({}) reached -- try again later",
                m.max_connections
            ),
        );
    }
    if !m.auth_users.is_empty() {
        check_auth(&mut s, m)?;
    }
    send(&mut s, "@RSYNCD: OK\n")?;
    let args = read_args(&mut s, protocol)?;
    let mut parsed = match ServerArgs::parse(&args) {
        Ok(p) => p,
        Err(e) => return refuse(&mut s, e.to_string()),
    };
    // The client's directories stay inside the module, as rsync's daemon keeps them.
    if let Err(e) = parsed.opts.confine() {
        return refuse(&mut s, e.to_string());
    }
    let denied = if parsed.sender && m.write_only {
        Some(format!("module {} is write only", m.name))
    } else if !parsed.sender && m.read_only {
        Some(format!("module {} is read only", m.name))
    } else {
        None
    };
    if let Some(msg) = denied {
        let w = s
            .try_clone()
            .map_err(|e| RemoteError::io("cloning the socket", e))?;
        refuse_session(&parsed, s, w, Some(protocol), &msg, ExitCode::StartClient)?;
        return Err(RemoteError::Refused(msg));
    }
    // Inside a chroot the module is `/`; ids were looked up at start-up.
    let chroot = m.use_chroot && rustix::process::geteuid().is_root();
    let mut served = m.clone();
    if chroot {
        served.path = PathBuf::from("/");
    }
    for p in &mut parsed.paths {
        match module_path(&served, p) {
            Some(mapped) => *p = mapped,
            None => return refuse(&mut s, format!("path {p:?} is outside the module")),
        }
    }
    let rules = served.rules(&served.path)?;
    if chroot {
        enter_chroot(&m.path)?;
    }
    set_credentials(m)?;
    run_server_socket(&parsed, s, Some(protocol), rules).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_config() {
        let c = Config::parse(
            "port = 8730\n# comment\n[data]\n  path = /srv/data\n  comment = the data\n\
             read only = no\n auth users = a, b\nsecrets file=/etc/s\nhosts allow = 127.0.0.1 10.0.0.0/8\n\
             max connections = 2\n[other]\npath=/x\nlist = no\n",
        )
        .unwrap();
        assert_eq!(c.port, Some(8730));
        assert_eq!(c.modules.len(), 2);
        let d = &c.modules[0];
        assert_eq!(d.path, PathBuf::from("/srv/data"));
        assert!(!d.read_only && d.list);
        assert_eq!(d.auth_users, ["a", "b"]);
        assert_eq!(d.max_connections, 2);
        assert!(c.modules[1].read_only && !c.modules[1].list);
        assert!(Config::parse("[m]\npath=/x\nbogus = 1\n").is_err());
        assert!(Config::parse("[m]\ncomment=no path\n").is_err());
        // Filter parameters in rsync's order, whatever the file's order.
        let c = Config::parse(
            "use chroot = no\n[m]\npath=/x\nexclude = *.o tmp/\ninclude = keep.o\nfilter = - /top\n",
        )
        .unwrap();
        let m = &c.modules[0];
        assert!(!m.use_chroot);
        let kinds: Vec<DaemonParam> = m.filters.iter().map(|(p, _)| *p).collect();
        assert_eq!(
            kinds,
            [
                DaemonParam::Filter,
                DaemonParam::Include,
                DaemonParam::Exclude
            ]
        );
        let f = m.rules(Path::new("/x")).unwrap().unwrap();
        assert!(f.excluded(Path::new("/x/a/b.o"), false));
        assert!(!f.excluded(Path::new("/x/a/keep.o"), false));
        assert!(f.excluded(Path::new("/x/top"), false));
        assert!(!f.excluded(Path::new("/x/a/top"), false));
        assert!(
            f.excluded(Path::new("/x/a/tmp/inner"), false),
            "tmp/ hides its contents"
        );
        assert!(!f.excluded(Path::new("/x"), true));
        assert!(Config::parse("[m]\npath=/x\nexclude from = /nonexistent/file\n").is_err());
        assert!(Config::parse("[m]\npath=/x\n").unwrap().modules[0].use_chroot);
    }

    #[test]
    fn host_patterns() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(host_matches("127.0.0.1", ip("127.0.0.1")));
        assert!(host_matches("127.0.0.0/8", ip("127.9.9.9")));
        assert!(!host_matches("10.0.0.0/8", ip("127.0.0.1")));
        assert!(host_matches("127.*.*.*", ip("127.0.0.1")));
        assert!(host_matches("localhost", ip("127.0.0.1")));
        assert!(!host_matches("garbage/xx", ip("127.0.0.1")));
        let mut m = Module::default();
        assert!(host_allowed(&m, ip("1.2.3.4")));
        m.hosts_deny = vec!["*".into()];
        m.hosts_allow = vec!["127.0.0.1".into()];
        assert!(host_allowed(&m, ip("127.0.0.1")));
        assert!(!host_allowed(&m, ip("1.2.3.4")));
    }

    #[test]
    fn module_paths_stay_inside() {
        let m = Module {
            name: "mod".into(),
            path: PathBuf::from("/srv/m/"),
            ..Module::default()
        };
        let mp = |p: &[u8]| module_path(&m, OsStr::from_bytes(p)).map(OsString::into_vec);
        assert_eq!(mp(b"mod").as_deref(), Some(&b"/srv/m/"[..]));
        assert_eq!(mp(b"mod/").as_deref(), Some(&b"/srv/m/"[..]));
        assert_eq!(mp(b"mod/a/b/").as_deref(), Some(&b"/srv/m/a/b/"[..]));
        // Paths are bytes: a name that is not UTF-8 is kept as it is.
        assert_eq!(
            mp(b"mod/caf\xe9/").as_deref(),
            Some(&b"/srv/m/caf\xe9/"[..])
        );
        assert_eq!(mp(b"mod/../etc"), None);
        assert_eq!(mp(b"mod/\xff/../../etc"), None);
        assert_eq!(mp(b"module2/x"), None);
    }
}
