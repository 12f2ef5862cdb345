//! Connection setup shared by the client roles: spawn, handshake, multiplexing.

use std::io::{Read, Write};

use arsync_proto::checksum::ChecksumAlgo;
use arsync_proto::flist::FlistOptions;
use arsync_proto::handshake::{CompatFlags, CompressAlgo, Handshake, HandshakeConfig, Negotiated};

use crate::args::ServerCommand;
use crate::conn::{InStream, OutStream};
use crate::daemon::{preamble, DaemonTarget};
use crate::error::{RemoteError, Result};

/// Runs the client side of the handshake over raw streams. With `compress`
/// (the `z` flag) we offer only zlibx.
pub fn client_handshake<R: Read, W: Write>(
    ins: &mut InStream<R>,
    outs: &mut OutStream<W>,
    protocol: i32,
    caps: &str,
    compress: bool,
) -> Result<Negotiated> {
    client_handshake_known(ins, outs, protocol, caps, compress, None)
}

/// [`client_handshake`] with the peer's version already known (daemon mode).
pub fn client_handshake_known<R: Read, W: Write>(
    ins: &mut InStream<R>,
    outs: &mut OutStream<W>,
    protocol: i32,
    caps: &str,
    compress: bool,
    known_remote: Option<i32>,
) -> Result<Negotiated> {
    let mut cfg = HandshakeConfig::client(protocol, caps);
    cfg.known_remote = known_remote;
    cfg.checksums = ChecksumAlgo::PREFERENCE.to_vec();
    cfg.compressions = compress.then(|| vec![CompressAlgo::Zlibx]);
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
    let compress = cmd.flags.contains('z');
    match daemon {
        None => client_handshake(ins, outs, protocol, &cmd.caps, compress),
        Some(t) => {
            let mut c = cmd.clone();
            let ours = c.protocol.take().map_or(protocol, |p| p.min(protocol));
            let g = preamble(ins, outs, t, &c.server_args(), ours, ins.echo_messages)?;
            client_handshake_known(ins, outs, ours, &cmd.caps, compress, Some(g.protocol))
        }
    }
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
        checksum_len: has('c').then(|| neg.checksum.digest_len()),
        inc_recurse: neg.compat.has(CompatFlags::INC_RECURSE),
        numeric_ids,
        id0_names: neg.compat.has(CompatFlags::ID0_NAMES),
        safe_flist: neg.protocol >= 31 || neg.compat.has(CompatFlags::SAFE_FLIST),
        preserve_acls: has('A'),
        preserve_xattrs: has('X'),
    })
}

/// The zlibx level to compress tokens with, or `None` for plain tokens;
/// anything else negotiated is unsupported.
pub fn token_compression(neg: &Negotiated) -> Result<Option<u32>> {
    match neg.compression {
        None | Some(CompressAlgo::None) => Ok(None),
        Some(CompressAlgo::Zlibx) => Ok(Some(6)),
        Some(other) => Err(RemoteError::Proto(arsync_proto::Error::Unsupported(
            format!("{} compression", other.name()),
        ))),
    }
}

/// True when running as root (owners can be set).
pub fn am_root() -> bool {
    rustix::process::geteuid().is_root()
}
