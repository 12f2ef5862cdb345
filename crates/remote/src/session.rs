//! Connection setup shared by the client roles: spawn, handshake, multiplexing.

use std::io::{Read, Write};

use arsync_proto::checksum::ChecksumAlgo;
use arsync_proto::compress::TokenCodec;
use arsync_proto::flist::FlistOptions;
use arsync_proto::handshake::{CompatFlags, CompressAlgo, Handshake, HandshakeConfig, Negotiated};

use crate::args::ServerCommand;
use crate::conn::{InStream, OutStream};
use crate::daemon::{preamble, DaemonTarget};
use crate::error::{RemoteError, Result};

/// What the compression options of a command line ask for, once read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompressMode {
    /// Negotiate: each side sends rsync's list (`zstd lz4 zlibx zlib`, a
    /// server adds `none`); classic zlib when the peer cannot negotiate.
    Negotiate,
    /// One algorithm named on both command lines; nothing is negotiated.
    Fixed(CompressAlgo),
}

/// The compression options of a command line, as rsync reads them: `-z`
/// (counted: `-zz` means zlibx), `--compress-choice`/`--zc`,
/// `--old-compress` (zlib), `--new-compress` (zlibx),
/// `--compress-level`/`--zl` (which alone turns compression on), and
/// `--no-compress`/`--no-z`. `--skip-compress` and
/// `--compress-threads`/`--zt` are taken and ignored (rsync 3.5 does not
/// apply the first; the second does not change the format).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompressSpec {
    /// How many times `-z`/`--compress` was given.
    pub count: u32,
    /// The algorithm named (as typed; checked by [`CompressSpec::mode`]).
    pub choice: Option<String>,
    /// `--compress-level`.
    pub level: Option<i32>,
    /// A malformed value (e.g. a non-numeric level), reported by
    /// [`CompressSpec::mode`].
    pub bad: Option<String>,
}

impl CompressSpec {
    /// Long options (without `--`) that take a value.
    pub const WITH_VALUE: [&'static str; 7] = [
        "compress-choice",
        "zc",
        "compress-level",
        "zl",
        "skip-compress",
        "compress-threads",
        "zt",
    ];

    /// Takes a long option `name` (without `--`) and its value, if it is
    /// one of the compression options; returns whether it was.
    pub fn parse_long(&mut self, name: &str, value: Option<&str>) -> bool {
        match name {
            "compress" => self.count += 1,
            "no-compress" | "no-z" => {
                self.count = 0;
                self.choice = None;
            }
            "old-compress" => self.choice = Some("zlib".into()),
            "new-compress" => self.choice = Some("zlibx".into()),
            "compress-choice" | "zc" => match value {
                Some(v) => self.choice = Some(v.to_string()),
                None => self.bad = Some(format!("--{name} needs a value")),
            },
            "skip-compress" | "compress-threads" | "zt" => {}
            "compress-level" | "zl" => match value.map(|v| v.trim().parse::<i32>()) {
                Some(Ok(l)) => self.level = Some(l),
                _ => {
                    self.bad = Some(format!(
                        "--{name}={}: invalid numeric value",
                        value.unwrap_or_default()
                    ))
                }
            },
            _ => return false,
        }
        true
    }

    /// The same options with at least one `-z` (the packed `z` flag).
    pub fn with_z(&self, z: bool) -> CompressSpec {
        let mut s = self.clone();
        if z && s.count == 0 {
            s.count = 1;
        }
        s
    }

    /// What is asked for: `None` for no compression. An unknown name is
    /// refused with rsync's message (exit code 4); a malformed value is a
    /// usage error.
    pub fn mode(&self) -> Result<Option<CompressMode>> {
        if let Some(b) = &self.bad {
            return Err(RemoteError::Usage(b.clone()));
        }
        let choice = match (&self.choice, self.count) {
            (Some(c), _) => Some(c.as_str()),
            (None, n) if n > 1 => Some("zlibx"),
            (None, _) => None,
        };
        match choice.filter(|c| !c.eq_ignore_ascii_case("auto")) {
            Some(c) => match CompressAlgo::from_choice(c) {
                Some(CompressAlgo::None) => Ok(None),
                Some(a) => Ok(Some(CompressMode::Fixed(a))),
                None => Err(RemoteError::Proto(arsync_proto::Error::Unsupported(
                    format!("unknown compress name: {c}"),
                ))),
            },
            None if self.count > 0 || self.level.is_some() => Ok(Some(CompressMode::Negotiate)),
            None => Ok(None),
        }
    }

    /// Whether rsync's client puts `z` in the packed flags: only when the
    /// algorithm is (or, unnegotiated, would be) classic zlib from a single
    /// `-z`, or `--old-compress`.
    pub fn packed_z(&self) -> bool {
        match self.mode() {
            Ok(Some(CompressMode::Fixed(a))) => a == CompressAlgo::Zlib,
            Ok(Some(CompressMode::Negotiate)) => self.count > 0,
            _ => false,
        }
    }

    /// The long options rsync's client sends the server for these options.
    pub fn server_args(&self) -> Vec<String> {
        let mut v = Vec::new();
        let Ok(Some(mode)) = self.mode() else {
            return v;
        };
        if let Some(l) = self.level {
            v.push(format!("--compress-level={l}"));
        }
        match mode {
            CompressMode::Fixed(CompressAlgo::Zlibx) => v.push("--new-compress".into()),
            CompressMode::Fixed(CompressAlgo::Zlib) => v.push("--old-compress".into()),
            CompressMode::Fixed(a) => v.push(format!("--compress-choice={}", a.name())),
            CompressMode::Negotiate => {}
        }
        v
    }

    /// Sets up the compression part of a handshake.
    pub fn configure(&self, cfg: &mut HandshakeConfig) -> Result<()> {
        let mode = self.mode()?;
        cfg.compressions = mode.map(|_| CompressAlgo::PREFERENCE.to_vec());
        cfg.compress_choice = match mode {
            Some(CompressMode::Fixed(a)) => Some(a),
            _ => None,
        };
        cfg.compress_level = self.level;
        Ok(())
    }
}

/// Runs the client side of the handshake over raw streams, compressing as
/// `compress` asks.
pub fn client_handshake<R: Read, W: Write>(
    ins: &mut InStream<R>,
    outs: &mut OutStream<W>,
    protocol: i32,
    caps: &str,
    compress: &CompressSpec,
) -> Result<Negotiated> {
    client_handshake_known(ins, outs, protocol, caps, compress, None)
}

/// [`client_handshake`] with the peer's version already known (daemon mode).
pub fn client_handshake_known<R: Read, W: Write>(
    ins: &mut InStream<R>,
    outs: &mut OutStream<W>,
    protocol: i32,
    caps: &str,
    compress: &CompressSpec,
    known_remote: Option<i32>,
) -> Result<Negotiated> {
    let mut cfg = HandshakeConfig::client(protocol, caps);
    cfg.known_remote = known_remote;
    compress.configure(&mut cfg)?;
    handshake_with(ins, outs, cfg)
}

/// Runs a client handshake configured by `cfg`.
fn handshake_with<R: Read, W: Write>(
    ins: &mut InStream<R>,
    outs: &mut OutStream<W>,
    mut cfg: HandshakeConfig,
) -> Result<Negotiated> {
    cfg.checksums = ChecksumAlgo::PREFERENCE.to_vec();
    let mut hs = Handshake::new(cfg)?;
    loop {
        let out = hs.take_output();
        if !out.is_empty() {
            outs.write(&out)?;
            outs.flush()?;
        }
        if let Some(n) = hs.result() {
            return Ok(n.clone());
        }
        ins.decode_partial(|r| {
            let n = hs.feed(r.rest())?;
            r.bytes(n)?;
            Ok((n > 0 || hs.result().is_some()).then_some(()))
        })?;
    }
}

/// Starts a client session: the daemon preamble if `daemon` is set, then
/// the binary handshake.
pub fn start_client<R: Read, W: Write>(
    ins: &mut InStream<R>,
    outs: &mut OutStream<W>,
    protocol: i32,
    cmd: &ServerCommand,
    daemon: Option<&DaemonTarget>,
) -> Result<Negotiated> {
    let compress = cmd.opts.compress.with_z(cmd.flags.contains('z'));
    // --checksum-choice: checked before anything is sent (rsync's client
    // refuses an unknown name itself).
    let checksum_choice = match &cmd.opts.checksum_choice {
        Some(c) => crate::opts::parse_checksum_choice(c)?,
        None => None,
    };
    let (ours, known_remote) = match daemon {
        None => (protocol, None),
        Some(t) => {
            let mut c = cmd.clone();
            let ours = c.protocol.take().map_or(protocol, |p| p.min(protocol));
            let g = preamble(ins, outs, t, &c.server_args(), ours, ins.echo_messages)?;
            (ours, Some(g.protocol))
        }
    };
    let mut cfg = HandshakeConfig::client(ours, &cmd.wire_caps());
    cfg.known_remote = known_remote;
    cfg.checksum_choice = checksum_choice;
    compress.configure(&mut cfg)?;
    handshake_with(ins, outs, cfg)
}

/// File-list options implied by the packed short flags, `--numeric-ids`
/// and the negotiation.
pub fn flist_options(flags: &str, numeric_ids: bool, neg: &Negotiated) -> Result<FlistOptions> {
    let has = |c| flags.contains(c);
    Ok(FlistOptions {
        protocol: neg.protocol,
        varint_flags: neg.compat.has(CompatFlags::VARINT_FLIST_FLAGS),
        preserve_uid: has('o'),
        preserve_gid: has('g'),
        preserve_links: has('l'),
        preserve_devices: has('D'),
        preserve_specials: has('D'),
        preserve_hard_links: has('H'),
        atimes: has('U'),
        crtimes: false,
        checksum_len: has('c').then(|| neg.file_checksum.digest_len()),
        inc_recurse: neg.compat.has(CompatFlags::INC_RECURSE),
        numeric_ids,
        id0_names: neg.compat.has(CompatFlags::ID0_NAMES),
        safe_flist: neg.protocol >= 31 || neg.compat.has(CompatFlags::SAFE_FLIST),
        preserve_acls: has('A'),
        preserve_xattrs: has('X'),
        relative_paths: has('R'),
    })
}

/// The session's token codec for the negotiated compression and level
/// (plain tokens without compression, or when the level turns it off).
pub fn token_compression(neg: &Negotiated) -> Result<TokenCodec> {
    Ok(TokenCodec::new(
        neg.compression,
        neg.compress_level,
        neg.protocol,
    ))
}

/// True when running as root (owners can be set).
pub fn am_root() -> bool {
    rustix::process::geteuid().is_root()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(args: &[(&str, Option<&str>)]) -> CompressSpec {
        let mut s = CompressSpec::default();
        for (n, v) in args {
            assert!(s.parse_long(n, *v), "{n}");
        }
        s
    }

    #[test]
    fn modes_as_rsync_reads_them() {
        let z = spec(&[("compress", None)]);
        assert_eq!(z.mode().unwrap(), Some(CompressMode::Negotiate));
        assert!(z.packed_z());
        assert!(z.server_args().is_empty());
        let zz = spec(&[("compress", None), ("compress", None)]);
        assert_eq!(
            zz.mode().unwrap(),
            Some(CompressMode::Fixed(CompressAlgo::Zlibx))
        );
        assert!(!zz.packed_z());
        assert_eq!(zz.server_args(), ["--new-compress"]);
        let zc = spec(&[("zc", Some("ZSTD")), ("zl", Some("5"))]);
        assert_eq!(
            zc.mode().unwrap(),
            Some(CompressMode::Fixed(CompressAlgo::Zstd))
        );
        assert!(!zc.packed_z());
        assert_eq!(
            zc.server_args(),
            ["--compress-level=5", "--compress-choice=zstd"]
        );
        let old = spec(&[("compress", None), ("old-compress", None)]);
        assert!(old.packed_z());
        assert_eq!(old.server_args(), ["--old-compress"]);
        let level = spec(&[("compress-level", Some("1"))]);
        assert_eq!(level.mode().unwrap(), Some(CompressMode::Negotiate));
        assert!(!level.packed_z());
        assert_eq!(level.server_args(), ["--compress-level=1"]);
        let none = spec(&[("compress", None), ("zc", Some("none"))]);
        assert_eq!(none.mode().unwrap(), None);
        assert!(none.server_args().is_empty() && !none.packed_z());
        let auto = spec(&[("compress", None), ("zc", Some("auto"))]);
        assert_eq!(auto.mode().unwrap(), Some(CompressMode::Negotiate));
        let off = spec(&[("compress", None), ("zc", Some("lz4")), ("no-z", None)]);
        assert_eq!(off.mode().unwrap(), None);
        assert!(!CompressSpec::default().parse_long("compression", None));
        let ignored = spec(&[("skip-compress", Some("gz/zip")), ("zt", Some("4"))]);
        assert_eq!(ignored, CompressSpec::default());
        assert_eq!(
            CompressSpec::default().with_z(true).mode().unwrap(),
            Some(CompressMode::Negotiate)
        );
    }

    #[test]
    fn refuses_unknown_names_and_bad_levels() {
        let e = spec(&[("zc", Some("foo"))]).mode().unwrap_err();
        assert_eq!(e.exit_code(), arsync_proto::stats::ExitCode::Unsupported);
        assert!(e.to_string().contains("unknown compress name: foo"), "{e}");
        let e = spec(&[("zl", Some("x"))]).mode().unwrap_err();
        assert_eq!(e.exit_code(), arsync_proto::stats::ExitCode::Syntax);
    }

    #[test]
    fn configures_the_handshake() {
        let mut cfg = HandshakeConfig::client(32, "LsfxCIvu");
        spec(&[("compress", None)]).configure(&mut cfg).unwrap();
        assert_eq!(
            cfg.compressions.as_deref(),
            Some(&CompressAlgo::PREFERENCE[..])
        );
        assert_eq!(cfg.compress_choice, None);
        spec(&[("zc", Some("lz4")), ("zl", Some("2"))])
            .configure(&mut cfg)
            .unwrap();
        assert_eq!(cfg.compress_choice, Some(CompressAlgo::Lz4));
        assert_eq!(cfg.compress_level, Some(2));
        CompressSpec::default().configure(&mut cfg).unwrap();
        assert_eq!((cfg.compressions, cfg.compress_choice), (None, None));
    }
}
