//! The text preamble of a daemon (`rsync://`) connection: the greeting
//! `@RSYNCD: <proto>.<sub> <auth digests>`, the module request, the server's
//! replies (`@RSYNCD: OK`, `@RSYNCD: AUTHREQD <challenge>`, `@RSYNCD: EXIT`,
//! `@ERROR...`, or MOTD lines), then the arguments, NUL-separated at
//! protocol 30 and later and ended by an empty argument. After that the
//! binary protocol continues with compat flags (no version ints).

use crate::error::{Error, Result};
use crate::wire::Reader;

/// Longest text line accepted.
pub const MAX_LINE: usize = 4096;

/// A parsed greeting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Greeting {
    /// Protocol version.
    pub protocol: i32,
    /// Sub-protocol (0 for releases).
    pub sub: i32,
    /// Authentication digests offered (protocol >= 32 always lists them).
    pub digests: Vec<String>,
}

impl Greeting {
    /// Formats the greeting line (with its newline).
    pub fn format(&self) -> String {
        format!(
            "@RSYNCD: {}.{} {}\n",
            self.protocol,
            self.sub,
            self.digests.join(" ")
        )
    }

    /// Parses a greeting line (without the newline).
    pub fn parse(line: &[u8]) -> Result<Greeting> {
        let s = std::str::from_utf8(line)
            .map_err(|_| Error::malformed("daemon greeting", "not UTF-8"))?;
        let rest = s.strip_prefix("@RSYNCD: ").ok_or_else(|| {
            Error::malformed(
                "daemon greeting",
                format!("server sent {s:?} rather than a greeting"),
            )
        })?;
        let mut words = rest.split(' ').filter(|w| !w.is_empty());
        let ver = words
            .next()
            .ok_or_else(|| Error::malformed("daemon greeting", "no version"))?;
        let (p, sub) = match ver.split_once('.') {
            Some((p, sub)) => (p, Some(sub)),
            None => (ver, None),
        };
        let protocol: i32 = p
            .parse()
            .map_err(|_| Error::malformed("daemon greeting", format!("bad version {ver:?}")))?;
        let sub: i32 = match sub {
            Some(s) => s.parse().map_err(|_| {
                Error::malformed("daemon greeting", format!("bad sub-protocol {ver:?}"))
            })?,
            None if protocol >= 30 => {
                return Err(Error::malformed(
                    "daemon greeting",
                    "the server omitted the subprotocol value",
                ))
            }
            None => 0,
        };
        let digests: Vec<String> = words.map(str::to_string).collect();
        if digests.is_empty() && protocol > 31 {
            return Err(Error::malformed(
                "daemon greeting",
                "the server omitted the digest name list",
            ));
        }
        Ok(Greeting {
            protocol,
            sub,
            digests,
        })
    }

    /// The protocol both sides use: the lower version, one less if the
    /// higher side is a pre-release (non-zero sub) of the same version.
    pub fn negotiate(&self, ours: i32, our_sub: i32) -> i32 {
        if ours > self.protocol {
            self.protocol - i32::from(self.sub != 0)
        } else if (ours == self.protocol && self.sub != our_sub)
            || (ours < self.protocol && our_sub != 0)
        {
            ours - 1
        } else {
            ours
        }
    }
}

/// A line sent by the daemon after the module request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DaemonReply {
    /// Authentication is required; the challenge follows.
    AuthRequired(String),
    /// Access granted: send the arguments.
    Ok,
    /// End of a module listing.
    Exit,
    /// A fatal error (the daemon closes the connection).
    Error(String),
    /// MOTD or module-listing text.
    Text(String),
}

impl DaemonReply {
    /// Classifies a line (without its newline).
    pub fn parse(line: &[u8]) -> DaemonReply {
        let s = String::from_utf8_lossy(line).into_owned();
        if let Some(c) = s.strip_prefix("@RSYNCD: AUTHREQD ") {
            DaemonReply::AuthRequired(c.to_string())
        } else if s == "@RSYNCD: OK" {
            DaemonReply::Ok
        } else if s == "@RSYNCD: EXIT" {
            DaemonReply::Exit
        } else if s.starts_with("@ERROR") {
            DaemonReply::Error(s)
        } else {
            DaemonReply::Text(s)
        }
    }
}

/// Reads one `\n`-terminated line, dropping the newline and any `\r`.
pub fn decode_line(r: &mut Reader<'_>) -> Result<Vec<u8>> {
    let rest = r.rest();
    match rest.iter().position(|&b| b == b'\n') {
        Some(i) if i <= MAX_LINE => {
            let line: Vec<u8> = rest[..i].iter().copied().filter(|&b| b != b'\r').collect();
            r.bytes(i + 1)?;
            Ok(line)
        }
        Some(_) => Err(Error::malformed("daemon line", "line too long")),
        None if rest.len() > MAX_LINE => Err(Error::malformed("daemon line", "line too long")),
        None => Err(Error::Incomplete),
    }
}

/// Appends the client's arguments (protocol >= 30: NUL-separated, ended by an
/// empty argument; older: newline-separated, ended by an empty line).
pub fn encode_args<A: AsRef<[u8]>>(args: &[A], protocol: i32, out: &mut Vec<u8>) -> Result<()> {
    let sep = if protocol >= 30 { 0u8 } else { b'\n' };
    for a in args {
        // Bytes: a path need not be UTF-8.
        let a = a.as_ref();
        if a.contains(&sep) || a.is_empty() {
            let shown = String::from_utf8_lossy(a);
            return Err(Error::unencodable("daemon argument", format!("{shown:?}")));
        }
        out.extend_from_slice(a);
        out.push(sep);
    }
    out.push(sep);
    Ok(())
}

/// rsync's base64 (standard alphabet, no padding).
pub fn base64_nopad(data: &[u8]) -> String {
    const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        let chars = chunk.len() + 1;
        for i in 0..chars {
            out.push(B64[((n >> (18 - 6 * i)) & 0x3F) as usize] as char);
        }
    }
    out
}

/// The client's answer to `@RSYNCD: AUTHREQD <challenge>`: `user hash`,
/// where hash is base64 (unpadded) of digest(password || challenge) with
/// the negotiated auth digest (`md5` or `md4`).
pub fn auth_response(user: &str, password: &str, challenge: &str, digest: &str) -> Result<String> {
    use md4::Md4;
    use md5::{Digest, Md5};
    let sum: Vec<u8> = match digest {
        "md5" => Md5::new()
            .chain_update(password)
            .chain_update(challenge)
            .finalize()
            .to_vec(),
        "md4" => Md4::new()
            .chain_update(password)
            .chain_update(challenge)
            .finalize()
            .to_vec(),
        other => return Err(Error::Unsupported(format!("daemon auth digest {other}"))),
    };
    Ok(format!("{user} {}\n", base64_nopad(&sum)))
}

/// Our auth digest for the daemon's offered list: the first of ours
/// (`md5`, `md4`) that it offers; a daemon without a list means md5.
pub fn choose_auth_digest(greeting: &Greeting) -> Option<&'static str> {
    if greeting.digests.is_empty() {
        return Some("md5");
    }
    ["md5", "md4"]
        .into_iter()
        .find(|d| greeting.digests.iter().any(|g| g == d))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greeting_round_trip() {
        let g = Greeting {
            protocol: 32,
            sub: 0,
            digests: vec!["sha512".into(), "md5".into(), "md4".into()],
        };
        let line = g.format();
        assert_eq!(line, "@RSYNCD: 32.0 sha512 md5 md4\n");
        let mut r = Reader::new(line.as_bytes());
        let l = decode_line(&mut r).unwrap();
        assert_eq!(Greeting::parse(&l).unwrap(), g);
        assert_eq!(g.negotiate(32, 0), 32);
        assert_eq!(g.negotiate(31, 0), 31);
        let pre = Greeting {
            protocol: 33,
            sub: 1,
            ..g.clone()
        };
        assert_eq!(pre.negotiate(34, 0), 32);
        assert!(Greeting::parse(b"@RSYNCD: 32").is_err());
        assert!(Greeting::parse(b"@RSYNCD: 32.0").is_err());
        assert!(Greeting::parse(b"HTTP/1.1 400").is_err());
        assert_eq!(Greeting::parse(b"@RSYNCD: 29").unwrap().sub, 0);
    }

    #[test]
    fn auth() {
        assert_eq!(base64_nopad(b""), "");
        assert_eq!(base64_nopad(b"f"), "Zg");
        assert_eq!(base64_nopad(b"fo"), "Zm8");
        assert_eq!(base64_nopad(b"foo"), "Zm9v");
        assert_eq!(base64_nopad(b"foobar"), "Zm9vYmFy");
        // base64(md5("secret" + "abc")) without padding.
        assert_eq!(
            auth_response("u", "secret", "abc", "md5").unwrap(),
            "u xCuToaw7OC6IBxUQKWqWzg\n"
        );
        assert!(auth_response("u", "p", "c", "sha512").is_err());
        let g = Greeting {
            protocol: 32,
            sub: 0,
            digests: vec!["sha512".into(), "md4".into()],
        };
        assert_eq!(choose_auth_digest(&g), Some("md4"));
    }

    #[test]
    fn replies_and_lines() {
        assert_eq!(DaemonReply::parse(b"@RSYNCD: OK"), DaemonReply::Ok);
        assert_eq!(
            DaemonReply::parse(b"@RSYNCD: AUTHREQD abc"),
            DaemonReply::AuthRequired("abc".into())
        );
        assert!(matches!(
            DaemonReply::parse(b"@ERROR: Unknown module 'x'"),
            DaemonReply::Error(_)
        ));
        assert_eq!(
            DaemonReply::parse(b"welcome"),
            DaemonReply::Text("welcome".into())
        );
        let mut r = Reader::new(b"a\r\nb");
        assert_eq!(decode_line(&mut r).unwrap(), b"a");
        assert_eq!(decode_line(&mut r), Err(Error::Incomplete));
        assert!(decode_line(&mut Reader::new(&[b'x'; MAX_LINE + 1])).is_err());
        let mut out = Vec::new();
        encode_args(&["--server", "--sender", "."], 31, &mut out).unwrap();
        assert_eq!(out, b"--server\0--sender\0.\0\0");
        assert!(encode_args(&[""], 31, &mut out).is_err());
    }
}
