//! POSIX ACLs in the file list (`-A`, protocol >= 30).
//!
//! After each non-symlink entry the sender writes the access ACL, and for a
//! directory also the default ACL. Each ACL is a varint: `0` means a literal
//! ACL follows (and becomes the next index of that kind's cache on both
//! sides), `n > 0` reuses cached ACL `n - 1`. A literal is a flag byte
//! (user/group/mask/other object present, name list present), the object
//! permissions as varints, and the name list: a count, then per entry the
//! id and `perms << 2 | is_user << 1 | name_follows` (a name only with
//! incremental recursion). The access ACL is sent without what the mode
//! already says ([`RsyncAcl::strip_access`]); the receiver rebuilds it from
//! the mode ([`RsyncAcl::access_entries`]).
//!
//! [`parse_posix_xattr`] and [`posix_xattr`] convert to and from the Linux
//! `system.posix_acl_access` / `system.posix_acl_default` value format.

use std::collections::HashMap;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::wire::{put_varint, Reader};

const XMIT_USER_OBJ: u8 = 1 << 0;
const XMIT_GROUP_OBJ: u8 = 1 << 1;
const XMIT_MASK_OBJ: u8 = 1 << 2;
const XMIT_OTHER_OBJ: u8 = 1 << 3;
const XMIT_NAME_LIST: u8 = 1 << 4;
const XFLAG_NAME_FOLLOWS: u32 = 1;
const XFLAG_NAME_IS_USER: u32 = 2;

/// Most named entries accepted in one received ACL (a Linux ACL value is at
/// most 64 KiB, i.e. about 8 000 entries).
pub const MAX_ACL_NAMES: usize = 8192;
/// Most distinct ACLs of one kind accepted from a peer.
pub const MAX_ACL_CACHE: usize = 1 << 20;

/// One named entry (`user:ID:rwx` or `group:ID:rwx`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IdAccess {
    /// A named user (true) or group (false); users sort first.
    pub is_user: bool,
    /// The uid or gid.
    pub id: u32,
    /// `rwx` bits (0-7).
    pub perms: u8,
}

/// An ACL as rsync transmits it: optional object entries and named entries.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct RsyncAcl {
    /// `user::` permissions.
    pub user_obj: Option<u8>,
    /// `group::` permissions.
    pub group_obj: Option<u8>,
    /// `mask::` permissions.
    pub mask_obj: Option<u8>,
    /// `other::` permissions.
    pub other_obj: Option<u8>,
    /// Named users and groups.
    pub names: Vec<IdAccess>,
}

/// Which ACL of an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AclKind {
    /// The access ACL (every non-symlink).
    Access,
    /// The default ACL (directories).
    Default,
}

impl RsyncAcl {
    /// True when nothing is set (no ACL beyond the mode / no default ACL).
    pub fn is_empty(&self) -> bool {
        *self == RsyncAcl::default()
    }

    /// Removes what `mode` already conveys from an access ACL, as rsync's
    /// sender does: user and other always, group when it equals the mode's
    /// group bits (or when there is no mask), the mask when it equals them.
    pub fn strip_access(&mut self, mode: u32) {
        let group_perms = ((mode >> 3) & 7) as u8;
        self.user_obj = None;
        self.other_obj = None;
        if self.mask_obj.is_none() {
            self.group_obj = None;
        } else {
            if self.group_obj == Some(group_perms) {
                self.group_obj = None;
            }
            if !self.names.is_empty() && self.mask_obj == Some(group_perms) {
                self.mask_obj = None;
            }
        }
    }

    /// The full access ACL for a file with `mode` (after a received ACL was
    /// stripped): `None` when the mode alone says everything (no extended
    /// ACL should exist), otherwise user/other from the mode and group/mask
    /// as sent or else from the mode's group bits.
    pub fn access_entries(&self, mode: u32) -> Option<RsyncAcl> {
        // A group entry is only ever sent with a mask; a mask may come
        // alone (an ACL whose named entries were all removed).
        if self.names.is_empty() && self.mask_obj.is_none() {
            return None;
        }
        let g = ((mode >> 3) & 7) as u8;
        Some(RsyncAcl {
            user_obj: Some(((mode >> 6) & 7) as u8),
            group_obj: Some(self.group_obj.unwrap_or(g)),
            mask_obj: Some(self.mask_obj.unwrap_or(g)),
            other_obj: Some((mode & 7) as u8),
            names: self.names.clone(),
        })
    }

    /// The default ACL to set on a directory: `None` when there is none
    /// (rsync removes it when the user object is absent). A missing mask
    /// with named entries becomes the union of their and the group's bits.
    pub fn default_entries(&self) -> Option<RsyncAcl> {
        self.user_obj?;
        let mut a = self.clone();
        if !a.names.is_empty() && a.mask_obj.is_none() {
            a.mask_obj = Some(
                a.names
                    .iter()
                    .fold(a.group_obj.unwrap_or(0), |m, n| m | n.perms),
            );
        }
        Some(a)
    }

    fn flags(&self) -> u8 {
        let mut f = 0;
        for (on, bit) in [
            (self.user_obj.is_some(), XMIT_USER_OBJ),
            (self.group_obj.is_some(), XMIT_GROUP_OBJ),
            (self.mask_obj.is_some(), XMIT_MASK_OBJ),
            (self.other_obj.is_some(), XMIT_OTHER_OBJ),
            (!self.names.is_empty(), XMIT_NAME_LIST),
        ] {
            if on {
                f |= bit;
            }
        }
        f
    }

    /// Appends the literal form (flag byte, objects, name list).
    pub fn encode_literal(&self, out: &mut Vec<u8>) {
        let f = self.flags();
        out.push(f);
        for v in [self.user_obj, self.group_obj, self.mask_obj, self.other_obj]
            .into_iter()
            .flatten()
        {
            put_varint(out, (v & 7) as i32);
        }
        if f & XMIT_NAME_LIST != 0 {
            put_varint(out, self.names.len() as i32);
            for n in &self.names {
                put_varint(out, n.id as i32);
                let mut x = ((n.perms & 7) as u32) << 2;
                if n.is_user {
                    x |= XFLAG_NAME_IS_USER;
                }
                put_varint(out, x as i32);
            }
        }
    }

    /// Decodes the literal form. Names sent inline (incremental recursion)
    /// are skipped; ids are mapped by the id lists instead.
    pub fn decode_literal(r: &mut Reader<'_>) -> Result<RsyncAcl> {
        let f = r.u8()?;
        if f & !(XMIT_USER_OBJ | XMIT_GROUP_OBJ | XMIT_MASK_OBJ | XMIT_OTHER_OBJ | XMIT_NAME_LIST)
            != 0
        {
            return Err(Error::malformed("ACL", format!("unknown flags {f:#x}")));
        }
        let obj = |bit: u8, r: &mut Reader<'_>| -> Result<Option<u8>> {
            if f & bit == 0 {
                return Ok(None);
            }
            let v = r.varint()?;
            if !(0..=7).contains(&v) {
                return Err(Error::malformed(
                    "ACL",
                    format!("permission value {v:#x} out of range"),
                ));
            }
            Ok(Some(v as u8))
        };
        let mut acl = RsyncAcl {
            user_obj: obj(XMIT_USER_OBJ, r)?,
            group_obj: obj(XMIT_GROUP_OBJ, r)?,
            mask_obj: obj(XMIT_MASK_OBJ, r)?,
            other_obj: obj(XMIT_OTHER_OBJ, r)?,
            names: Vec::new(),
        };
        if f & XMIT_NAME_LIST != 0 {
            let count = r.varint()?;
            if count < 0 || count as usize > MAX_ACL_NAMES {
                return Err(Error::malformed(
                    "ACL",
                    format!("name list of {count} entries"),
                ));
            }
            acl.names.reserve(count as usize);
            for _ in 0..count {
                let id = r.varint()? as u32;
                let x = r.varint()? as u32;
                let perms = x >> 2;
                if perms > 7 {
                    return Err(Error::malformed(
                        "ACL",
                        format!("permission value {perms:#x} out of range"),
                    ));
                }
                if x & XFLAG_NAME_FOLLOWS != 0 {
                    let n = r.u8()? as usize;
                    r.bytes(n)?;
                }
                acl.names.push(IdAccess {
                    is_user: x & XFLAG_NAME_IS_USER != 0,
                    id,
                    perms: perms as u8,
                });
            }
        }
        Ok(acl)
    }
}

/// Sending side: remembers every ACL sent, per kind, to send indices.
#[derive(Debug, Clone, Default)]
pub struct AclEncoder {
    access: HashMap<RsyncAcl, u32>,
    default: HashMap<RsyncAcl, u32>,
}

impl AclEncoder {
    /// Appends `acl` of `kind`: an index if it was sent before, else a literal.
    pub fn encode(&mut self, kind: AclKind, acl: &RsyncAcl, out: &mut Vec<u8>) {
        let cache = match kind {
            AclKind::Access => &mut self.access,
            AclKind::Default => &mut self.default,
        };
        if let Some(&i) = cache.get(acl) {
            put_varint(out, i as i32 + 1);
            return;
        }
        put_varint(out, 0);
        acl.encode_literal(out);
        let n = cache.len() as u32;
        cache.insert(acl.clone(), n);
    }
}

/// Receiving side: the ACLs received so far, per kind.
#[derive(Debug, Clone, Default)]
pub struct AclDecoder {
    access: Vec<Arc<RsyncAcl>>,
    default: Vec<Arc<RsyncAcl>>,
}

/// A decoded ACL reference: a cached one, or a new literal that must be
/// committed with [`AclDecoder::commit`] once the whole entry decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AclRef {
    /// A previously received ACL.
    Cached(Arc<RsyncAcl>),
    /// A new ACL.
    Literal(Arc<RsyncAcl>),
}

impl AclRef {
    /// The ACL.
    pub fn acl(&self) -> &Arc<RsyncAcl> {
        match self {
            AclRef::Cached(a) | AclRef::Literal(a) => a,
        }
    }
}

impl AclDecoder {
    /// Decodes one ACL of `kind` without changing the cache.
    pub fn decode(&self, kind: AclKind, r: &mut Reader<'_>) -> Result<AclRef> {
        let cache = self.cache(kind);
        let ndx = r.varint()?;
        if ndx < 0 || ndx as usize > cache.len() {
            return Err(Error::malformed(
                "ACL",
                format!("{kind:?} ACL index {ndx} > {}", cache.len()),
            ));
        }
        if ndx > 0 {
            return Ok(AclRef::Cached(Arc::clone(&cache[ndx as usize - 1])));
        }
        if cache.len() >= MAX_ACL_CACHE {
            return Err(Error::malformed("ACL", "too many distinct ACLs"));
        }
        Ok(AclRef::Literal(Arc::new(RsyncAcl::decode_literal(r)?)))
    }

    /// Adds a literal returned by [`AclDecoder::decode`] to the cache.
    pub fn commit(&mut self, kind: AclKind, r: &AclRef) {
        if let AclRef::Literal(a) = r {
            match kind {
                AclKind::Access => self.access.push(Arc::clone(a)),
                AclKind::Default => self.default.push(Arc::clone(a)),
            }
        }
    }

    fn cache(&self, kind: AclKind) -> &[Arc<RsyncAcl>] {
        match kind {
            AclKind::Access => &self.access,
            AclKind::Default => &self.default,
        }
    }
}

/// Linux ACL xattr tags.
const TAG_USER_OBJ: u16 = 0x01;
const TAG_USER: u16 = 0x02;
const TAG_GROUP_OBJ: u16 = 0x04;
const TAG_GROUP: u16 = 0x08;
const TAG_MASK: u16 = 0x10;
const TAG_OTHER: u16 = 0x20;
const POSIX_ACL_XATTR_VERSION: u32 = 2;

/// Parses a `system.posix_acl_*` xattr value (version 2, 8-byte entries).
pub fn parse_posix_xattr(v: &[u8]) -> Result<RsyncAcl> {
    if v.len() < 4 || (v.len() - 4) % 8 != 0 {
        return Err(Error::malformed("ACL xattr", format!("length {}", v.len())));
    }
    let version = u32::from_le_bytes([v[0], v[1], v[2], v[3]]);
    if version != POSIX_ACL_XATTR_VERSION {
        return Err(Error::malformed("ACL xattr", format!("version {version}")));
    }
    let mut acl = RsyncAcl::default();
    for e in v[4..].chunks_exact(8) {
        let tag = u16::from_le_bytes([e[0], e[1]]);
        let perms = (u16::from_le_bytes([e[2], e[3]]) & 7) as u8;
        let id = u32::from_le_bytes([e[4], e[5], e[6], e[7]]);
        match tag {
            TAG_USER_OBJ => acl.user_obj = Some(perms),
            TAG_GROUP_OBJ => acl.group_obj = Some(perms),
            TAG_MASK => acl.mask_obj = Some(perms),
            TAG_OTHER => acl.other_obj = Some(perms),
            TAG_USER | TAG_GROUP => acl.names.push(IdAccess {
                is_user: tag == TAG_USER,
                id,
                perms,
            }),
            _ => {
                return Err(Error::malformed(
                    "ACL xattr",
                    format!("unknown tag {tag:#x}"),
                ))
            }
        }
    }
    Ok(acl)
}

/// The `system.posix_acl_*` value for a complete ACL (all four objects
/// present; a mask is added from the named entries if missing), in the
/// order the kernel requires.
pub fn posix_xattr(acl: &RsyncAcl) -> Vec<u8> {
    let mut names = acl.names.clone();
    names.sort();
    names.dedup_by(|a, b| a.is_user == b.is_user && a.id == b.id);
    let mut out = POSIX_ACL_XATTR_VERSION.to_le_bytes().to_vec();
    let mut put = |tag: u16, perms: u8, id: u32| {
        out.extend_from_slice(&tag.to_le_bytes());
        out.extend_from_slice(&u16::from(perms & 7).to_le_bytes());
        out.extend_from_slice(&id.to_le_bytes());
    };
    const UNDEFINED_ID: u32 = u32::MAX;
    put(TAG_USER_OBJ, acl.user_obj.unwrap_or(0), UNDEFINED_ID);
    for n in names.iter().filter(|n| n.is_user) {
        put(TAG_USER, n.perms, n.id);
    }
    put(TAG_GROUP_OBJ, acl.group_obj.unwrap_or(0), UNDEFINED_ID);
    for n in names.iter().filter(|n| !n.is_user) {
        put(TAG_GROUP, n.perms, n.id);
    }
    if !names.is_empty() || acl.mask_obj.is_some() {
        let mask = acl.mask_obj.unwrap_or_else(|| {
            names
                .iter()
                .fold(acl.group_obj.unwrap_or(0), |m, n| m | n.perms)
        });
        put(TAG_MASK, mask, UNDEFINED_ID);
    }
    put(TAG_OTHER, acl.other_obj.unwrap_or(0), UNDEFINED_ID);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named() -> RsyncAcl {
        RsyncAcl {
            user_obj: Some(7),
            group_obj: Some(5),
            mask_obj: Some(7),
            other_obj: Some(4),
            names: vec![
                IdAccess {
                    is_user: true,
                    id: 1000,
                    perms: 6,
                },
                IdAccess {
                    is_user: false,
                    id: 50,
                    perms: 7,
                },
            ],
        }
    }

    #[test]
    fn literal_then_index() {
        let mut enc = AclEncoder::default();
        let mut a = named();
        a.strip_access(0o100775);
        let mut out = Vec::new();
        enc.encode(AclKind::Access, &a, &mut out);
        enc.encode(AclKind::Access, &a, &mut out);
        enc.encode(AclKind::Default, &RsyncAcl::default(), &mut out);
        // Literal: 0, flags (group obj + name list), group 5, 2 names.
        assert_eq!(&out[..3], &[0, XMIT_GROUP_OBJ | XMIT_NAME_LIST, 5]);
        let mut dec = AclDecoder::default();
        let mut r = Reader::new(&out);
        let first = dec.decode(AclKind::Access, &mut r).unwrap();
        assert!(matches!(first, AclRef::Literal(_)));
        dec.commit(AclKind::Access, &first);
        let second = dec.decode(AclKind::Access, &mut r).unwrap();
        assert_eq!(second, AclRef::Cached(Arc::clone(first.acl())));
        let d = dec.decode(AclKind::Default, &mut r).unwrap();
        assert!(d.acl().is_empty());
        assert_eq!(r.remaining(), 0);
        // The mask equalled the group bits of the mode: stripped, then
        // taken from the mode again on receipt.
        let full = first.acl().access_entries(0o100775).unwrap();
        assert_eq!(full.user_obj, Some(7));
        assert_eq!(full.group_obj, Some(5));
        assert_eq!(full.mask_obj, Some(7));
        assert_eq!(full.other_obj, Some(5));
        assert_eq!(full.names, named().names);
    }

    #[test]
    fn plain_mode_acl_is_empty_after_strip() {
        let mut a = RsyncAcl {
            user_obj: Some(6),
            group_obj: Some(4),
            mask_obj: None,
            other_obj: Some(4),
            names: vec![],
        };
        a.strip_access(0o100644);
        assert!(a.is_empty());
        assert_eq!(a.access_entries(0o100644), None);
        // A mask without named entries is kept (and rebuilt).
        let mut m = RsyncAcl {
            user_obj: Some(6),
            group_obj: Some(6),
            mask_obj: Some(4),
            other_obj: Some(4),
            names: vec![],
        };
        m.strip_access(0o100644);
        assert_eq!((m.group_obj, m.mask_obj), (Some(6), Some(4)));
        let full = m.access_entries(0o100644).unwrap();
        assert_eq!(
            (full.user_obj, full.group_obj, full.mask_obj, full.other_obj),
            (Some(6), Some(6), Some(4), Some(4))
        );
    }

    #[test]
    fn rejects_bad_input() {
        let dec = AclDecoder::default();
        // Index 3 with an empty cache.
        assert!(matches!(
            dec.decode(AclKind::Access, &mut Reader::new(&[3])),
            Err(Error::Malformed { .. })
        ));
        // Unknown flag bit.
        assert!(dec
            .decode(AclKind::Access, &mut Reader::new(&[0, 0x40]))
            .is_err());
        // Permission 9.
        assert!(dec
            .decode(AclKind::Access, &mut Reader::new(&[0, XMIT_USER_OBJ, 9]))
            .is_err());
        // A huge name count.
        let mut b = vec![0, XMIT_NAME_LIST];
        put_varint(&mut b, 1 << 30);
        assert!(matches!(
            dec.decode(AclKind::Access, &mut Reader::new(&b)),
            Err(Error::Malformed { .. })
        ));
        // Truncated: incomplete, not an error.
        assert_eq!(
            dec.decode(AclKind::Access, &mut Reader::new(&[0, XMIT_USER_OBJ])),
            Err(Error::Incomplete)
        );
    }

    proptest::proptest! {
        #[test]
        fn literals_round_trip(
            objs in proptest::collection::vec(proptest::option::of(0u8..8), 4),
            names in proptest::collection::vec((proptest::bool::ANY, 0u32..100_000, 0u8..8), 0..10),
        ) {
            let acl = RsyncAcl {
                user_obj: objs[0],
                group_obj: objs[1],
                mask_obj: objs[2],
                other_obj: objs[3],
                names: names
                    .into_iter()
                    .map(|(is_user, id, perms)| IdAccess { is_user, id, perms })
                    .collect(),
            };
            let mut out = Vec::new();
            acl.encode_literal(&mut out);
            let back = RsyncAcl::decode_literal(&mut Reader::new(&out)).unwrap();
            proptest::prop_assert_eq!(back, acl.clone());
            // Rebuilt ACLs are always complete and valid for the kernel format.
            if let Some(full) = acl.access_entries(0o100754) {
                let v = posix_xattr(&full);
                proptest::prop_assert!(parse_posix_xattr(&v).is_ok());
                proptest::prop_assert_eq!(full.user_obj, Some(7));
            }
            for cut in 0..out.len() {
                let r = RsyncAcl::decode_literal(&mut Reader::new(&out[..cut]));
                proptest::prop_assert_eq!(r, Err(Error::Incomplete));
            }
        }
    }

    #[test]
    fn posix_xattr_round_trip() {
        let a = named();
        let v = posix_xattr(&a);
        assert_eq!(v.len(), 4 + 8 * 6);
        let back = parse_posix_xattr(&v).unwrap();
        let mut want = a.clone();
        want.names.sort();
        let mut got = back;
        got.names.sort();
        assert_eq!(got, want);
        assert!(parse_posix_xattr(&v[..7]).is_err());
        assert!(parse_posix_xattr(&[1, 0, 0, 0]).is_err());
    }
}
