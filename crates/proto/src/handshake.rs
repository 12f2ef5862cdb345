//! Connection setup: version exchange, compatibility flags, checksum and
//! compression negotiation, and the checksum seed.
//!
//! Sequence (remote-shell mode, protocol >= 30):
//! 1. both sides write their int32 protocol version and read the peer's;
//! 2. the server writes the compat flags as a varint;
//! 3. with [`CompatFlags::VARINT_FLIST_FLAGS`] both sides write their
//!    checksum-name list (and with compression, the compression list) as
//!    vstrings, then read the peer's; each side picks its own most-preferred
//!    name that the peer also listed;
//! 4. the server writes the int32 checksum seed.
//!
//! [`Handshake`] drives this for either role without doing any I/O.

use crate::checksum::ChecksumAlgo;
use crate::error::{Error, Result};
use crate::wire::{put_i32, put_varint, put_vstring, Reader};

/// Newest protocol this crate speaks.
pub const PROTOCOL_VERSION: i32 = 32;
/// Oldest protocol this crate speaks.
pub const MIN_PROTOCOL_VERSION: i32 = 30;
/// Oldest version number rsync accepts from a peer at all.
pub const ABSOLUTE_MIN_VERSION: i32 = 20;
/// Newest version number rsync accepts from a peer at all.
pub const ABSOLUTE_MAX_VERSION: i32 = 40;
/// Longest negotiation string accepted.
pub const MAX_NSTR_LEN: usize = 1024;

/// Compatibility flags (sent by the server as a varint).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct CompatFlags(pub u32);

impl CompatFlags {
    /// Incremental recursion (`i`).
    pub const INC_RECURSE: u32 = 1 << 0;
    /// Symlink times can be set (`L`).
    pub const SYMLINK_TIMES: u32 = 1 << 1;
    /// Symlink iconv (`s`).
    pub const SYMLINK_ICONV: u32 = 1 << 2;
    /// Safe file-list end with io_error (`f`).
    pub const SAFE_FLIST: u32 = 1 << 3;
    /// Avoid the xattr hardlink optimisation (`x`).
    pub const AVOID_XATTR_OPTIM: u32 = 1 << 4;
    /// Checksum seed order fix (`C`).
    pub const CHKSUM_SEED_FIX: u32 = 1 << 5;
    /// Inplace with partial dir (`I`).
    pub const INPLACE_PARTIAL_DIR: u32 = 1 << 6;
    /// Varint file-list flags and negotiated checksums (`v`).
    pub const VARINT_FLIST_FLAGS: u32 = 1 << 7;
    /// Names for uid 0 / gid 0 in the id lists (`u`).
    pub const ID0_NAMES: u32 = 1 << 8;

    const LETTERS: [(char, u32); 9] = [
        ('i', Self::INC_RECURSE),
        ('L', Self::SYMLINK_TIMES),
        ('s', Self::SYMLINK_ICONV),
        ('f', Self::SAFE_FLIST),
        ('x', Self::AVOID_XATTR_OPTIM),
        ('C', Self::CHKSUM_SEED_FIX),
        ('I', Self::INPLACE_PARTIAL_DIR),
        ('v', Self::VARINT_FLIST_FLAGS),
        ('u', Self::ID0_NAMES),
    ];

    /// True if every bit of `bit` is set.
    pub fn has(self, bit: u32) -> bool {
        self.0 & bit == bit
    }

    /// Parses the letters after `e.` in the `-e.xxx` capability string.
    /// Unknown letters are ignored (as rsync does).
    pub fn from_caps(caps: &str) -> CompatFlags {
        let mut v = 0;
        for c in caps.chars() {
            if let Some(&(_, bit)) = Self::LETTERS.iter().find(|(l, _)| *l == c) {
                v |= bit;
            }
        }
        CompatFlags(v)
    }

    /// The capability letters for these flags, in rsync's order.
    pub fn to_caps(self) -> String {
        Self::LETTERS
            .iter()
            .filter(|(_, bit)| self.has(*bit))
            .map(|(c, _)| *c)
            .collect()
    }

    /// The flags a server grants for a client's capability string: the server
    /// sets SYMLINK_TIMES and SYMLINK_ICONV itself, INC_RECURSE only if
    /// `allow_inc_recurse`, the rest when the client offered them.
    pub fn server_reply(client_caps: &str, allow_inc_recurse: bool) -> CompatFlags {
        let offered = Self::from_caps(client_caps);
        let mut v = Self::SYMLINK_TIMES;
        if allow_inc_recurse && offered.has(Self::INC_RECURSE) {
            v |= Self::INC_RECURSE;
        }
        for bit in [
            Self::SAFE_FLIST,
            Self::AVOID_XATTR_OPTIM,
            Self::CHKSUM_SEED_FIX,
            Self::INPLACE_PARTIAL_DIR,
            Self::ID0_NAMES,
            Self::VARINT_FLIST_FLAGS,
        ] {
            v |= offered.0 & bit;
        }
        CompatFlags(v)
    }
}

/// Compression algorithms that can be negotiated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CompressAlgo {
    /// zstd.
    Zstd,
    /// lz4.
    Lz4,
    /// zlib without matched-data history ("zlibx").
    Zlibx,
    /// Classic zlib.
    Zlib,
    /// No compression.
    None,
}

impl CompressAlgo {
    /// Wire name.
    pub fn name(self) -> &'static str {
        match self {
            CompressAlgo::Zstd => "zstd",
            CompressAlgo::Lz4 => "lz4",
            CompressAlgo::Zlibx => "zlibx",
            CompressAlgo::Zlib => "zlib",
            CompressAlgo::None => "none",
        }
    }

    /// Parses a wire name.
    pub fn from_name(s: &str) -> Option<Self> {
        [Self::Zstd, Self::Lz4, Self::Zlibx, Self::Zlib, Self::None]
            .into_iter()
            .find(|a| a.name() == s)
    }

    /// Parses a `--compress-choice` value as rsync does (any case).
    pub fn from_choice(s: &str) -> Option<Self> {
        Self::from_name(&s.to_ascii_lowercase())
    }

    /// The algorithms we offer, in rsync's order of preference (a server
    /// adds "none" to the list it sends).
    pub const PREFERENCE: [CompressAlgo; 4] = [
        CompressAlgo::Zstd,
        CompressAlgo::Lz4,
        CompressAlgo::Zlibx,
        CompressAlgo::Zlib,
    ];
}

/// Picks our most-preferred entry of `ours` that appears in the peer's
/// space-separated list (rsync's rule: each side uses its own order).
pub fn choose<T: Copy>(
    ours: &[T],
    name: impl Fn(T) -> &'static str,
    peer_list: &[u8],
) -> Option<T> {
    let peer: Vec<&[u8]> = peer_list
        .split(|&b| b == b' ')
        .filter(|s| !s.is_empty())
        .collect();
    ours.iter()
        .copied()
        .find(|&a| peer.contains(&name(a).as_bytes()))
}

/// Which end of the connection we are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// We started the server (we read compat flags and the seed).
    Client,
    /// We are `rsync --server` (we write compat flags and the seed).
    Server,
}

/// Settings for one handshake.
#[derive(Debug, Clone)]
pub struct HandshakeConfig {
    /// Client or server.
    pub role: Role,
    /// The protocol version we announce.
    pub protocol: i32,
    /// Client: the caps we put in `-e.xxx` (used to validate the server's
    /// reply). Server: the caps the client sent.
    pub caps: String,
    /// Checksums we accept, most preferred first.
    pub checksums: Vec<ChecksumAlgo>,
    /// Compression choices (`Some` when compression was requested), most
    /// preferred first: the list sent in the negotiation.
    pub compressions: Option<Vec<CompressAlgo>>,
    /// A compression fixed on both command lines (`--compress-choice`,
    /// `--old-compress`/`--new-compress`): no compression list is
    /// exchanged and this is the result.
    pub compress_choice: Option<CompressAlgo>,
    /// `--compress-level` as given (passed on in [`Negotiated`]).
    pub compress_level: Option<i32>,
    /// `--checksum-choice` on both command lines: the transfer checksum
    /// and the `-c` file checksum. No checksum list is exchanged (rsync
    /// skips that negotiation when the choice is given) and these stand.
    pub checksum_choice: Option<(ChecksumAlgo, ChecksumAlgo)>,
    /// Server only: the seed to send (0 is allowed and disables seeding).
    pub seed: i32,
    /// Server only: allow incremental recursion.
    pub allow_inc_recurse: bool,
    /// Daemon connections: the peer's version from its `@RSYNCD:` greeting.
    /// The binary version exchange is then skipped.
    pub known_remote: Option<i32>,
}

impl HandshakeConfig {
    /// A client configuration with the default checksum preference.
    pub fn client(protocol: i32, caps: &str) -> Self {
        HandshakeConfig {
            role: Role::Client,
            protocol,
            caps: caps.to_string(),
            checksums: ChecksumAlgo::PREFERENCE.to_vec(),
            compressions: None,
            compress_choice: None,
            compress_level: None,
            checksum_choice: None,
            seed: 0,
            allow_inc_recurse: false,
            known_remote: None,
        }
    }
}

/// What the handshake settled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    /// The protocol both sides speak (minimum of the two).
    pub protocol: i32,
    /// The peer's announced version.
    pub remote_protocol: i32,
    /// Compatibility flags in force.
    pub compat: CompatFlags,
    /// Checksum for block sums and whole-file sums.
    pub checksum: ChecksumAlgo,
    /// Checksum of the `-c` file list sums: the negotiated one, or the
    /// second name of `--checksum-choice=A,B`.
    pub file_checksum: ChecksumAlgo,
    /// The checksums were fixed by `--checksum-choice`, not negotiated.
    pub checksum_chosen: bool,
    /// Compression, if it was requested.
    pub compression: Option<CompressAlgo>,
    /// `--compress-level` as given (see `compress::effective_level`).
    pub compress_level: Option<i32>,
    /// The checksum seed.
    pub seed: i32,
}

impl Negotiated {
    /// Whether MD5 block sums hash the seed before the data. rsync does so
    /// with CHKSUM_SEED_FIX; and when md5 was *negotiated* (varint flags),
    /// rsync builds using OpenSSL (Debian's among them) always put the seed
    /// first, so we follow them. Only an implied md5 (no negotiation, no
    /// seed fix) hashes data then seed.
    pub fn md5_seed_first(&self) -> bool {
        self.compat.has(CompatFlags::CHKSUM_SEED_FIX)
            || self.compat.has(CompatFlags::VARINT_FLIST_FLAGS)
            || self.checksum_chosen
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Version,
    Compat,
    Lists,
    Seed,
    Done,
}

/// The handshake state machine. Call [`Handshake::take_output`] to get bytes
/// to send and [`Handshake::feed`] with received bytes until
/// [`Handshake::result`] is `Some`.
#[derive(Debug)]
pub struct Handshake {
    cfg: HandshakeConfig,
    step: Step,
    out: Vec<u8>,
    remote_protocol: i32,
    protocol: i32,
    compat: CompatFlags,
    checksum: Option<ChecksumAlgo>,
    compression: Option<CompressAlgo>,
    result: Option<Negotiated>,
}

impl Handshake {
    /// Starts a handshake; our version is queued for sending immediately.
    pub fn new(cfg: HandshakeConfig) -> Result<Self> {
        if !(MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&cfg.protocol) {
            return Err(Error::Unsupported(format!(
                "protocol {} (supported: {MIN_PROTOCOL_VERSION}-{PROTOCOL_VERSION})",
                cfg.protocol
            )));
        }
        let mut h = Handshake {
            step: Step::Version,
            out: Vec::new(),
            remote_protocol: 0,
            protocol: 0,
            compat: CompatFlags::default(),
            checksum: None,
            compression: None,
            result: None,
            cfg,
        };
        match h.cfg.known_remote {
            None => put_i32(&mut h.out, h.cfg.protocol),
            Some(v) => {
                h.accept_version(v)?;
                h.step = Step::Compat;
                if h.cfg.role == Role::Server {
                    h.send_compat()?;
                    // With nothing to read (no list exchanged), the seed
                    // goes out now: the client waits for it.
                    h.feed(&[])?;
                }
            }
        }
        Ok(h)
    }

    fn accept_version(&mut self, v: i32) -> Result<()> {
        if !(ABSOLUTE_MIN_VERSION..=ABSOLUTE_MAX_VERSION).contains(&v) {
            return Err(Error::malformed(
                "protocol version",
                format!("peer announced {v} (is the remote shell clean?)"),
            ));
        }
        self.remote_protocol = v;
        self.protocol = v.min(self.cfg.protocol);
        if self.protocol < MIN_PROTOCOL_VERSION {
            return Err(Error::Unsupported(format!(
                "peer speaks protocol {v}; at least {MIN_PROTOCOL_VERSION} is required"
            )));
        }
        Ok(())
    }

    fn send_compat(&mut self) -> Result<()> {
        self.compat = CompatFlags::server_reply(&self.cfg.caps, self.cfg.allow_inc_recurse);
        put_varint(&mut self.out, self.compat.0 as i32);
        self.after_compat()
    }

    /// Bytes to send now.
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    /// The outcome, once complete.
    pub fn result(&self) -> Option<&Negotiated> {
        self.result.as_ref()
    }

    /// Whether compression names are exchanged.
    fn negotiates_compression(&self) -> bool {
        self.cfg.compressions.is_some() && self.cfg.compress_choice.is_none()
    }

    fn queue_lists(&mut self) -> Result<()> {
        if self.cfg.checksum_choice.is_none() {
            let names: Vec<&str> = self
                .cfg
                .checksums
                .iter()
                .map(|a| a.name())
                .chain((self.cfg.role == Role::Server).then_some("none"))
                .collect();
            put_vstring(&mut self.out, names.join(" ").as_bytes())?;
        }
        if let (Some(c), None) = (&self.cfg.compressions, self.cfg.compress_choice) {
            let mut names: Vec<&str> = c
                .iter()
                .filter(|a| **a != CompressAlgo::None)
                .map(|a| a.name())
                .collect();
            if self.cfg.role == Role::Server || c.contains(&CompressAlgo::None) {
                names.push("none");
            }
            put_vstring(&mut self.out, names.join(" ").as_bytes())?;
        }
        Ok(())
    }

    /// Consumes as much of `input` as possible; returns the bytes consumed.
    /// Unconsumed bytes must be offered again (with more appended).
    pub fn feed(&mut self, input: &[u8]) -> Result<usize> {
        let mut r = Reader::new(input);
        loop {
            let save = r.position();
            match self.step(&mut r) {
                Ok(true) => continue,
                Ok(false) => return Ok(r.position()),
                Err(Error::Incomplete) => {
                    debug_assert_eq!(r.position(), save);
                    return Ok(save);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Advances one step; `Ok(false)` when finished.
    fn step(&mut self, r: &mut Reader<'_>) -> Result<bool> {
        match self.step {
            Step::Version => {
                let v = r.i32()?;
                self.accept_version(v)?;
                self.step = Step::Compat;
                if self.cfg.role == Role::Server {
                    self.send_compat()?;
                }
                Ok(true)
            }
            Step::Compat => {
                // Only the client reads compat flags.
                let v = r.varint()?;
                let granted = CompatFlags(v as u32);
                let offered = CompatFlags::from_caps(&self.cfg.caps);
                // The server may grant SYMLINK_TIMES / SYMLINK_ICONV on its own;
                // anything else must have been offered.
                let own = CompatFlags::SYMLINK_TIMES | CompatFlags::SYMLINK_ICONV;
                let unexpected = granted.0 & !(offered.0 | own);
                if unexpected != 0 {
                    return Err(Error::malformed(
                        "compat flags",
                        format!("server granted {unexpected:#x} which we did not offer"),
                    ));
                }
                self.compat = granted;
                self.after_compat()?;
                Ok(true)
            }
            Step::Lists => {
                let mut rr = r.clone();
                let csum_list = match self.cfg.checksum_choice {
                    None => Some(rr.vstring(MAX_NSTR_LEN)?.to_vec()),
                    Some(_) => None,
                };
                let comp_list = match self.negotiates_compression() {
                    true => Some(rr.vstring(MAX_NSTR_LEN)?.to_vec()),
                    false => None,
                };
                *r = rr;
                if let Some(csum_list) = csum_list {
                    let c = choose(&self.cfg.checksums, ChecksumAlgo::name, &csum_list)
                        .ok_or_else(|| {
                            Error::Unsupported(format!(
                                "no common checksum; peer offers {:?}",
                                String::from_utf8_lossy(&csum_list)
                            ))
                        })?;
                    self.checksum = Some(c);
                }
                self.compression = self.cfg.compress_choice;
                if let (Some(ours), Some(list)) = (&self.cfg.compressions, comp_list) {
                    let c = choose(ours, CompressAlgo::name, &list).ok_or_else(|| {
                        Error::Unsupported(format!(
                            "no common compression; peer offers {:?}",
                            String::from_utf8_lossy(&list)
                        ))
                    })?;
                    self.compression = Some(c);
                }
                self.step = Step::Seed;
                if self.cfg.role == Role::Server {
                    put_i32(&mut self.out, self.cfg.seed);
                    self.finish(self.cfg.seed);
                    return Ok(false);
                }
                Ok(true)
            }
            Step::Seed => {
                let seed = r.i32()?;
                self.finish(seed);
                Ok(false)
            }
            Step::Done => Ok(false),
        }
    }

    fn after_compat(&mut self) -> Result<()> {
        if self.compat.has(CompatFlags::VARINT_FLIST_FLAGS) {
            self.queue_lists()?;
            self.step = Step::Lists;
        } else {
            // Without negotiation: MD5 at protocol >= 30 (or the fixed
            // choice); compression is zlib.
            if self.cfg.checksum_choice.is_none()
                && !self.cfg.checksums.contains(&ChecksumAlgo::Md5)
            {
                return Err(Error::Unsupported(
                    "peer cannot negotiate checksums and md5 is not allowed".into(),
                ));
            }
            self.checksum = Some(ChecksumAlgo::Md5);
            // A fixed choice stands; otherwise rsync takes the peer's list
            // to be "zlib".
            self.compression = match (&self.cfg.compressions, self.cfg.compress_choice) {
                (_, Some(c)) => Some(c),
                (Some(ours), None) => {
                    Some(choose(ours, CompressAlgo::name, b"zlib").ok_or_else(|| {
                        Error::Unsupported(
                            "peer cannot negotiate compression and zlib is not allowed".into(),
                        )
                    })?)
                }
                (None, None) => None,
            };
            self.step = Step::Seed;
            if self.cfg.role == Role::Server {
                put_i32(&mut self.out, self.cfg.seed);
                self.finish(self.cfg.seed);
            }
        }
        Ok(())
    }

    fn finish(&mut self, seed: i32) {
        self.step = Step::Done;
        let negotiated = self.checksum.unwrap_or(ChecksumAlgo::Md5);
        let (checksum, file_checksum) =
            self.cfg.checksum_choice.unwrap_or((negotiated, negotiated));
        self.result = Some(Negotiated {
            protocol: self.protocol,
            remote_protocol: self.remote_protocol,
            compat: self.compat,
            checksum,
            file_checksum,
            checksum_chosen: self.cfg.checksum_choice.is_some(),
            compression: self.compression,
            compress_level: self.cfg.compress_level,
            seed,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_round_trip() {
        let f = CompatFlags::from_caps("LsfxCIvu");
        assert_eq!(f.0, 0x1FE);
        assert_eq!(f.to_caps(), "LsfxCIvu");
        assert_eq!(CompatFlags::from_caps("iLsfxCIvu").0, 0x1FF);
        let s = CompatFlags::server_reply("LsfxCIvu", true);
        assert!(!s.has(CompatFlags::INC_RECURSE));
        assert!(s.has(CompatFlags::VARINT_FLIST_FLAGS));
    }

    #[test]
    fn choose_uses_own_order() {
        let ours = [ChecksumAlgo::Xxh128, ChecksumAlgo::Md5];
        assert_eq!(
            choose(&ours, ChecksumAlgo::name, b"md5 xxh128 none"),
            Some(ChecksumAlgo::Xxh128)
        );
        assert_eq!(
            choose(&ours, ChecksumAlgo::name, b"md4 md5"),
            Some(ChecksumAlgo::Md5)
        );
        assert_eq!(choose(&ours, ChecksumAlgo::name, b"md4"), None);
    }

    /// Runs a client and a server against each other, feeding byte by byte.
    fn run_pair(
        client: HandshakeConfig,
        server: HandshakeConfig,
    ) -> Result<(Negotiated, Negotiated)> {
        let mut c = Handshake::new(client)?;
        let mut s = Handshake::new(server)?;
        let (mut to_s, mut to_c) = (Vec::new(), Vec::new());
        for _ in 0..10_000 {
            to_s.extend(c.take_output());
            to_c.extend(s.take_output());
            if !to_s.is_empty() {
                let n = s.feed(&to_s[..1])?;
                to_s.drain(..n);
                if n == 0 && to_s.len() > 1 {
                    let n = s.feed(&to_s)?;
                    to_s.drain(..n);
                }
            }
            if !to_c.is_empty() {
                let n = c.feed(&to_c)?;
                to_c.drain(..n);
            }
            if let (Some(a), Some(b)) = (c.result(), s.result()) {
                return Ok((a.clone(), b.clone()));
            }
        }
        Err(Error::malformed("test", "handshake did not finish"))
    }

    #[test]
    fn client_server_agree() {
        let mut server = HandshakeConfig::client(32, "LsfxCIvu");
        server.role = Role::Server;
        server.seed = 0x1234;
        server.compressions = Some(vec![CompressAlgo::Zlibx, CompressAlgo::Zlib]);
        let mut client = HandshakeConfig::client(31, "LsfxCIvu");
        client.compressions = Some(vec![CompressAlgo::Zlibx]);
        let (c, s) = run_pair(client, server).unwrap();
        assert_eq!(c.protocol, 31);
        assert_eq!(s.protocol, 31);
        assert_eq!(c.checksum, ChecksumAlgo::Xxh128);
        assert_eq!(c.compression, Some(CompressAlgo::Zlibx));
        assert_eq!(s.compression, Some(CompressAlgo::Zlibx));
        assert_eq!(c.seed, 0x1234);
        assert_eq!(c.compat, s.compat);
    }

    #[test]
    fn checksum_choice_skips_the_checksum_lists() {
        for known in [None, Some(32)] {
            let pair = (ChecksumAlgo::Md5, ChecksumAlgo::Xxh3);
            let choice = Some(pair);
            let mut server = HandshakeConfig::client(32, "LsfxCIvu");
            server.role = Role::Server;
            server.seed = 9;
            server.checksum_choice = choice;
            server.known_remote = known;
            let mut client = HandshakeConfig::client(32, "LsfxCIvu");
            client.checksum_choice = choice;
            client.known_remote = known;
            let mut s = Handshake::new(server.clone()).unwrap();
            let (c, sr) = run_pair(client.clone(), server).unwrap();
            for n in [&c, &sr] {
                assert_eq!((n.checksum, n.file_checksum), pair);
                assert!(n.checksum_chosen && n.md5_seed_first());
            }
            if known.is_none() {
                // The server's reply to a version: compat flags, then the
                // seed at once (no vstring list in between).
                s.take_output();
                s.feed(&32i32.to_le_bytes()).unwrap();
                assert_eq!(s.take_output(), [0x81, 0xFA, 9, 0, 0, 0]);
            } else {
                assert!(s.result().is_some());
            }
        }
        // Without a choice the file checksum is the negotiated one.
        let mut server = HandshakeConfig::client(32, "LsfxCIvu");
        server.role = Role::Server;
        let (c, _) = run_pair(HandshakeConfig::client(32, "LsfxCIvu"), server).unwrap();
        assert_eq!((c.file_checksum, c.checksum_chosen), (c.checksum, false));
    }

    #[test]
    fn client_known_bytes() {
        // Server side of a protocol-32 session as rsync 3.4 sends it.
        let mut h = Handshake::new(HandshakeConfig::client(32, "LsfxCIvu")).unwrap();
        assert_eq!(h.take_output(), [32, 0, 0, 0]);
        let mut inp = vec![32, 0, 0, 0];
        // Compat flags 0x1FE as a varint: top byte 0x01 fits beside one marker bit.
        inp.extend_from_slice(&[0x81, 0xFE]);
        let list = b"xxh128 xxh3 xxh64 md5 md4 none";
        inp.push(list.len() as u8);
        inp.extend_from_slice(list);
        inp.extend_from_slice(&7i32.to_le_bytes());
        let n = h.feed(&inp).unwrap();
        assert_eq!(n, inp.len());
        let r = h.result().unwrap();
        assert_eq!(r.compat.0, 0x1FE);
        assert_eq!(r.seed, 7);
        assert_eq!(r.checksum, ChecksumAlgo::Xxh128);
        let out = h.take_output();
        assert_eq!(out[0] as usize, out.len() - 1);
        // rsync 3.5 (built with OpenSSL) sends the same list.
        assert_eq!(&out[1..], b"xxh128 xxh3 xxh64 md5 md4 sha1");
    }

    #[test]
    fn daemon_mode_skips_versions() {
        let mut cfg = HandshakeConfig::client(32, "LsfxCIvu");
        cfg.known_remote = Some(31);
        let mut h = Handshake::new(cfg).unwrap();
        assert!(h.take_output().is_empty());
        let mut inp = vec![0x81, 0xFE, 3];
        inp.extend_from_slice(b"md5");
        inp.extend_from_slice(&9i32.to_le_bytes());
        assert_eq!(h.feed(&inp).unwrap(), inp.len());
        let r = h.result().unwrap();
        assert_eq!((r.protocol, r.checksum, r.seed), (31, ChecksumAlgo::Md5, 9));
        let mut srv = HandshakeConfig::client(32, "LsfxCIvu");
        srv.role = Role::Server;
        srv.known_remote = Some(32);
        let mut h = Handshake::new(srv).unwrap();
        assert_eq!(&h.take_output()[..2], &[0x81, 0xFA]); // no iconv on our server side
    }

    #[test]
    fn rejects_bad_peers() {
        let mut h = Handshake::new(HandshakeConfig::client(32, "LsfxCIvu")).unwrap();
        assert!(h.feed(&[0x52, 0x53, 0x59, 0x4E]).is_err()); // "RSYN" noise from a shell
        let mut h = Handshake::new(HandshakeConfig::client(32, "Lsfx")).unwrap();
        assert!(h.feed(&[29, 0, 0, 0]).is_err()); // too old for us
        let mut h = Handshake::new(HandshakeConfig::client(32, "Lsfx")).unwrap();
        assert!(h.feed(&[32, 0, 0, 0, 0x01]).is_err()); // INC_RECURSE not offered
        let mut h = Handshake::new(HandshakeConfig::client(32, "v")).unwrap();
        let mut inp = vec![32, 0, 0, 0, 0x80, 0x80, 3];
        inp.extend_from_slice(b"foo");
        assert!(h.feed(&inp).is_err()); // no common checksum
    }

    fn pair(client_caps: &str, client_proto: i32) -> (HandshakeConfig, HandshakeConfig) {
        let mut server = HandshakeConfig::client(32, client_caps);
        server.role = Role::Server;
        (HandshakeConfig::client(client_proto, client_caps), server)
    }

    #[test]
    fn compression_preference_is_rsyncs() {
        // Both sides offer everything: zstd, as between two rsync 3.2+.
        let (mut c, mut s) = pair("LsfxCIvu", 32);
        c.compressions = Some(CompressAlgo::PREFERENCE.to_vec());
        s.compressions = Some(CompressAlgo::PREFERENCE.to_vec());
        c.compress_level = Some(9);
        s.compress_level = Some(9);
        let (a, b) = run_pair(c, s).unwrap();
        assert_eq!(a.compression, Some(CompressAlgo::Zstd));
        assert_eq!(b.compression, Some(CompressAlgo::Zstd));
        assert_eq!((a.compress_level, b.compress_level), (Some(9), Some(9)));
        // A peer without zstd and lz4 (rsync built without them).
        let (mut c, mut s) = pair("LsfxCIvu", 32);
        c.compressions = Some(CompressAlgo::PREFERENCE.to_vec());
        s.compressions = Some(vec![CompressAlgo::Zlibx, CompressAlgo::Zlib]);
        let (a, b) = run_pair(c, s).unwrap();
        assert_eq!(a.compression, Some(CompressAlgo::Zlibx));
        assert_eq!(b.compression, Some(CompressAlgo::Zlibx));
    }

    #[test]
    fn client_sends_rsyncs_compression_list() {
        let mut cfg = HandshakeConfig::client(32, "LsfxCIvu");
        cfg.compressions = Some(CompressAlgo::PREFERENCE.to_vec());
        let mut h = Handshake::new(cfg).unwrap();
        h.take_output();
        let mut inp = vec![32, 0, 0, 0, 0x81, 0xFE];
        for l in [&b"xxh128 md5 none"[..], b"zstd lz4 zlibx zlib none"] {
            inp.push(l.len() as u8);
            inp.extend_from_slice(l);
        }
        inp.extend_from_slice(&7i32.to_le_bytes());
        assert_eq!(h.feed(&inp).unwrap(), inp.len());
        assert_eq!(h.result().unwrap().compression, Some(CompressAlgo::Zstd));
        let out = h.take_output();
        let first = out[0] as usize;
        assert_eq!(&out[1 + first + 1..], b"zstd lz4 zlibx zlib");
    }

    #[test]
    fn fixed_choice_exchanges_no_compression_list() {
        // --compress-choice=lz4 on both command lines: only checksum lists.
        let mut cfg = HandshakeConfig::client(32, "LsfxCIvu");
        cfg.compressions = Some(CompressAlgo::PREFERENCE.to_vec());
        cfg.compress_choice = Some(CompressAlgo::Lz4);
        let mut h = Handshake::new(cfg).unwrap();
        h.take_output();
        let mut inp = vec![32, 0, 0, 0, 0x81, 0xFE, 3];
        inp.extend_from_slice(b"md5");
        inp.extend_from_slice(&7i32.to_le_bytes());
        assert_eq!(h.feed(&inp).unwrap(), inp.len());
        assert_eq!(h.result().unwrap().compression, Some(CompressAlgo::Lz4));
        assert_eq!(h.take_output(), b"\x1exxh128 xxh3 xxh64 md5 md4 sha1");
        let (mut c, mut s) = pair("LsfxCIvu", 32);
        c.compressions = Some(CompressAlgo::PREFERENCE.to_vec());
        c.compress_choice = Some(CompressAlgo::Zlib);
        s.compressions = Some(CompressAlgo::PREFERENCE.to_vec());
        s.compress_choice = Some(CompressAlgo::Zlib);
        let (a, b) = run_pair(c, s).unwrap();
        assert_eq!(
            (a.compression, b.compression),
            (Some(CompressAlgo::Zlib), Some(CompressAlgo::Zlib))
        );
    }

    #[test]
    fn protocol_30_compression_is_zlib() {
        // No varint flags (protocol 30, no `v`): nothing is negotiated and
        // -z means classic zlib; a fixed choice still stands.
        let (mut c, mut s) = pair("LsfxCI", 30);
        c.compressions = Some(CompressAlgo::PREFERENCE.to_vec());
        s.compressions = Some(CompressAlgo::PREFERENCE.to_vec());
        let (a, b) = run_pair(c, s).unwrap();
        assert_eq!(a.protocol, 30);
        assert_eq!(
            (a.compression, b.compression),
            (Some(CompressAlgo::Zlib), Some(CompressAlgo::Zlib))
        );
        let (mut c, mut s) = pair("LsfxCI", 30);
        c.compressions = Some(CompressAlgo::PREFERENCE.to_vec());
        c.compress_choice = Some(CompressAlgo::Zstd);
        s.compressions = Some(CompressAlgo::PREFERENCE.to_vec());
        s.compress_choice = Some(CompressAlgo::Zstd);
        let (a, b) = run_pair(c, s).unwrap();
        assert_eq!(
            (a.compression, b.compression),
            (Some(CompressAlgo::Zstd), Some(CompressAlgo::Zstd))
        );
        assert_eq!(CompressAlgo::from_choice("ZSTD"), Some(CompressAlgo::Zstd));
        assert_eq!(CompressAlgo::from_choice("foo"), None);
    }
}
