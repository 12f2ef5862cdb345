//! Extended attributes in the file list (`-X`) and the request for
//! abbreviated values.
//!
//! After each entry (and its ACLs) the sender writes a varint: `0` means a
//! literal set follows (the next index of the cache on both sides), `n > 0`
//! reuses set `n - 1`. A literal is a count, then per attribute the name
//! length including its NUL, the value length, the name with the NUL, and
//! the value; a value longer than [`MAX_FULL_DATUM`] is replaced by its
//! MD5 (16 bytes, unseeded). Attributes are sorted by name and numbered
//! from 1 in that order.
//!
//! A receiver that needs an abbreviated value (its own copy differs) sets
//! `ITEM_REPORT_XATTR` on the item it sends and appends a request: varint
//! deltas of the wanted numbers, ended by a 0 byte. The sender answers after
//! its copy of the item: per requested number the delta, the value length
//! and the value, ended by a 0 byte.

use std::collections::HashMap;
use std::sync::Arc;

use md5::{Digest, Md5};

use crate::error::{Error, Result};
use crate::wire::{put_varint, Reader};

/// Values up to this length are sent in full in the file list.
pub const MAX_FULL_DATUM: usize = 32;
/// Length of the digest that stands for a longer value.
pub const XATTR_DIGEST_LEN: usize = 16;
/// Longest attribute name accepted, NUL included (Linux: 255 + 1).
pub const MAX_NAME_LEN: usize = 256;
/// Longest attribute value accepted (Linux XATTR_SIZE_MAX).
pub const MAX_VALUE_LEN: usize = 64 * 1024;
/// Most attributes accepted in one set.
pub const MAX_XATTRS: usize = 8192;
/// Most distinct sets accepted from a peer.
pub const MAX_XATTR_SETS: usize = 1 << 20;

/// An attribute value as known to one side.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum XattrValue {
    /// The whole value.
    Full(Vec<u8>),
    /// Only the length and the MD5 of a value longer than [`MAX_FULL_DATUM`].
    Abbrev {
        /// Length of the value.
        len: usize,
        /// MD5 of the value.
        digest: [u8; XATTR_DIGEST_LEN],
    },
}

impl XattrValue {
    /// The value's length.
    pub fn len(&self) -> usize {
        match self {
            XattrValue::Full(v) => v.len(),
            XattrValue::Abbrev { len, .. } => *len,
        }
    }

    /// True for an empty value.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True when `local` is the value this one describes.
    pub fn matches(&self, local: &[u8]) -> bool {
        match self {
            XattrValue::Full(v) => v == local,
            XattrValue::Abbrev { len, digest } => {
                *len == local.len() && xattr_digest(local) == *digest
            }
        }
    }
}

/// The digest that abbreviates a long value.
pub fn xattr_digest(v: &[u8]) -> [u8; XATTR_DIGEST_LEN] {
    Md5::digest(v).into()
}

/// One attribute.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct XattrItem {
    /// Name without the trailing NUL, e.g. `user.comment`.
    pub name: Vec<u8>,
    /// Position in the sender's sorted list, from 1.
    pub num: u32,
    /// The value, full or abbreviated.
    pub value: XattrValue,
}

/// The attributes of one file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct XattrSet {
    /// Sorted by name (sender side); numbered from 1.
    pub items: Vec<XattrItem>,
}

impl XattrSet {
    /// A sender's set from local (name, value) pairs: sorted, numbered,
    /// long values abbreviated.
    pub fn from_local(mut attrs: Vec<(Vec<u8>, Vec<u8>)>) -> Self {
        attrs.sort_by(|a, b| a.0.cmp(&b.0));
        let items = attrs
            .into_iter()
            .enumerate()
            .map(|(i, (name, v))| XattrItem {
                name,
                num: i as u32 + 1,
                value: if v.len() > MAX_FULL_DATUM {
                    XattrValue::Abbrev {
                        len: v.len(),
                        digest: xattr_digest(&v),
                    }
                } else {
                    XattrValue::Full(v)
                },
            })
            .collect();
        XattrSet { items }
    }

    /// The attribute numbered `num`.
    pub fn by_num(&self, num: u32) -> Option<&XattrItem> {
        self.items.iter().find(|i| i.num == num)
    }

    /// Appends the literal form.
    pub fn encode_literal(&self, out: &mut Vec<u8>) -> Result<()> {
        put_varint(out, self.items.len() as i32);
        for it in &self.items {
            if it.name.is_empty() || it.name.len() >= MAX_NAME_LEN || it.name.contains(&0) {
                return Err(Error::unencodable(
                    "xattr name",
                    String::from_utf8_lossy(&it.name).into_owned(),
                ));
            }
            put_varint(out, it.name.len() as i32 + 1);
            put_varint(out, it.value.len() as i32);
            out.extend_from_slice(&it.name);
            out.push(0);
            match &it.value {
                XattrValue::Full(v) if v.len() <= MAX_FULL_DATUM => out.extend_from_slice(v),
                XattrValue::Full(v) => out.extend_from_slice(&xattr_digest(v)),
                XattrValue::Abbrev { digest, .. } => out.extend_from_slice(digest),
            }
        }
        Ok(())
    }

    /// Decodes the literal form (numbers are the wire positions).
    pub fn decode_literal(r: &mut Reader<'_>) -> Result<XattrSet> {
        let count = r.varint()?;
        if count < 0 || count as usize > MAX_XATTRS {
            return Err(Error::malformed(
                "xattr list",
                format!("{count} attributes"),
            ));
        }
        let mut items = Vec::with_capacity(count as usize);
        for num in 1..=count as u32 {
            let name_len = r.varint()?;
            let datum_len = r.varint()?;
            if name_len < 2 || name_len as usize > MAX_NAME_LEN {
                return Err(Error::malformed(
                    "xattr list",
                    format!("name length {name_len}"),
                ));
            }
            if datum_len < 0 || datum_len as usize > MAX_VALUE_LEN {
                return Err(Error::malformed(
                    "xattr list",
                    format!("value length {datum_len}"),
                ));
            }
            let name = r.bytes(name_len as usize)?;
            let (last, name) = name.split_last().ok_or(Error::Incomplete)?;
            if *last != 0 || name.contains(&0) {
                return Err(Error::malformed(
                    "xattr list",
                    "name without a single trailing NUL",
                ));
            }
            let datum_len = datum_len as usize;
            let value = if datum_len > MAX_FULL_DATUM {
                let mut digest = [0u8; XATTR_DIGEST_LEN];
                digest.copy_from_slice(r.bytes(XATTR_DIGEST_LEN)?);
                XattrValue::Abbrev {
                    len: datum_len,
                    digest,
                }
            } else {
                XattrValue::Full(r.bytes(datum_len)?.to_vec())
            };
            items.push(XattrItem {
                name: name.to_vec(),
                num,
                value,
            });
        }
        Ok(XattrSet { items })
    }
}

/// Sending side: sets sent so far, to send indices for repeats.
#[derive(Debug, Clone, Default)]
pub struct XattrEncoder {
    sent: HashMap<XattrSet, u32>,
}

impl XattrEncoder {
    /// Appends `set`: an index if an equal set was sent before, else a literal.
    pub fn encode(&mut self, set: &XattrSet, out: &mut Vec<u8>) -> Result<()> {
        if let Some(&i) = self.sent.get(set) {
            put_varint(out, i as i32 + 1);
            return Ok(());
        }
        put_varint(out, 0);
        set.encode_literal(out)?;
        let n = self.sent.len() as u32;
        self.sent.insert(set.clone(), n);
        Ok(())
    }
}

/// Receiving side: the sets received so far (index = position).
#[derive(Debug, Clone, Default)]
pub struct XattrDecoder {
    sets: Vec<Arc<XattrSet>>,
}

impl XattrDecoder {
    /// Decodes one reference without changing the cache: the set's index
    /// and, for a literal, the new set to [`XattrDecoder::commit`].
    pub fn decode(&self, r: &mut Reader<'_>) -> Result<(u32, Option<Arc<XattrSet>>)> {
        let ndx = r.varint()?;
        if ndx < 0 || ndx as usize > self.sets.len() {
            return Err(Error::malformed(
                "xattr list",
                format!("index {ndx} > {}", self.sets.len()),
            ));
        }
        if ndx > 0 {
            return Ok((ndx as u32 - 1, None));
        }
        if self.sets.len() >= MAX_XATTR_SETS {
            return Err(Error::malformed("xattr list", "too many distinct sets"));
        }
        let set = XattrSet::decode_literal(r)?;
        Ok((self.sets.len() as u32, Some(Arc::new(set))))
    }

    /// Adds a literal returned by [`XattrDecoder::decode`].
    pub fn commit(&mut self, set: Option<Arc<XattrSet>>) {
        if let Some(s) = set {
            self.sets.push(s);
        }
    }

    /// The set at `ndx`.
    pub fn get(&self, ndx: u32) -> Option<&Arc<XattrSet>> {
        self.sets.get(ndx as usize)
    }

    /// Every set received, by index.
    pub fn sets(&self) -> &[Arc<XattrSet>] {
        &self.sets
    }
}

/// Appends a request for the values numbered `nums` (ascending), ended by 0.
pub fn encode_request(nums: &[u32], out: &mut Vec<u8>) {
    let mut prior = 0i64;
    for &n in nums {
        put_varint(out, (n as i64 - prior) as i32);
        prior = n as i64;
    }
    out.push(0);
}

/// Reads the next attribute number of a request or answer (sent as a difference from the
/// previous one, `num`); `None` at the terminating 0. The number must lie in `1..=max_num`,
/// and at most `max_num` numbers (`seen` so far) may come.
fn next_number(
    rr: &mut Reader<'_>,
    num: &mut i64,
    seen: usize,
    max_num: u32,
    what: &'static str,
) -> Result<Option<u32>> {
    let rel = rr.varint()?;
    if rel == 0 {
        return Ok(None);
    }
    *num += rel as i64;
    if *num < 1 || *num > max_num as i64 || seen >= max_num as usize {
        return Err(Error::malformed(
            what,
            format!("attribute number {num} (of {max_num})"),
        ));
    }
    Ok(Some(*num as u32))
}

/// Decodes a request; every number must lie in `1..=max_num`.
pub fn decode_request(r: &mut Reader<'_>, max_num: u32) -> Result<Vec<u32>> {
    let mut rr = r.clone();
    let mut nums = Vec::new();
    let mut num = 0i64;
    while let Some(n) = next_number(&mut rr, &mut num, nums.len(), max_num, "xattr request")? {
        nums.push(n);
    }
    *r = rr;
    Ok(nums)
}

/// Appends the answer to a request: (number, full value) pairs, ended by 0.
pub fn encode_reply(values: &[(u32, &[u8])], out: &mut Vec<u8>) {
    let mut prior = 0i64;
    for (n, v) in values {
        put_varint(out, (*n as i64 - prior) as i32);
        prior = *n as i64;
        put_varint(out, v.len() as i32);
        out.extend_from_slice(v);
    }
    out.push(0);
}

/// Decodes an answer; every number must lie in `1..=max_num`.
pub fn decode_reply(r: &mut Reader<'_>, max_num: u32) -> Result<Vec<(u32, Vec<u8>)>> {
    let mut rr = r.clone();
    let mut out = Vec::new();
    let mut num = 0i64;
    while let Some(n) = next_number(&mut rr, &mut num, out.len(), max_num, "xattr values")? {
        let len = rr.varint()?;
        if len < 0 || len as usize > MAX_VALUE_LEN {
            return Err(Error::malformed(
                "xattr values",
                format!("value length {len}"),
            ));
        }
        out.push((n, rr.bytes(len as usize)?.to_vec()));
    }
    *r = rr;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> XattrSet {
        XattrSet::from_local(vec![
            (b"user.z".to_vec(), b"short".to_vec()),
            (b"user.a".to_vec(), vec![7u8; 100]),
        ])
    }

    #[test]
    fn literal_sorted_numbered_and_abbreviated() {
        let s = sample();
        assert_eq!(s.items[0].name, b"user.a");
        assert_eq!(s.items[0].num, 1);
        assert!(matches!(
            s.items[0].value,
            XattrValue::Abbrev { len: 100, .. }
        ));
        let mut out = Vec::new();
        let mut enc = XattrEncoder::default();
        enc.encode(&s, &mut out).unwrap();
        enc.encode(&s, &mut out).unwrap();
        enc.encode(&XattrSet::default(), &mut out).unwrap();
        // 0 (literal), count 2, name len 7, value len 100, "user.a\0", digest...
        assert_eq!(&out[..5], &[0, 2, 7, 100, b'u']);
        let mut dec = XattrDecoder::default();
        let mut r = Reader::new(&out);
        let (i, lit) = dec.decode(&mut r).unwrap();
        assert_eq!(i, 0);
        assert_eq!(lit.as_deref(), Some(&s));
        dec.commit(lit);
        assert_eq!(dec.decode(&mut r).unwrap(), (0, None));
        let (i, lit) = dec.decode(&mut r).unwrap();
        assert_eq!(i, 1);
        assert_eq!(lit.unwrap().items.len(), 0);
        assert_eq!(r.remaining(), 0);
        assert!(s.items[0].value.matches(&[7u8; 100]));
        assert!(!s.items[0].value.matches(&[8u8; 100]));
    }

    #[test]
    fn request_and_reply_round_trip() {
        let mut b = Vec::new();
        encode_request(&[1, 3, 4], &mut b);
        assert_eq!(b, [1, 2, 1, 0]);
        assert_eq!(
            decode_request(&mut Reader::new(&b), 4).unwrap(),
            vec![1, 3, 4]
        );
        assert!(decode_request(&mut Reader::new(&b), 3).is_err());
        let mut b = Vec::new();
        encode_reply(&[(2, b"abc"), (5, b"")], &mut b);
        assert_eq!(
            decode_reply(&mut Reader::new(&b), 5).unwrap(),
            vec![(2, b"abc".to_vec()), (5, vec![])]
        );
        assert_eq!(
            decode_reply(&mut Reader::new(&b[..3]), 5),
            Err(Error::Incomplete)
        );
    }

    proptest::proptest! {
        #[test]
        fn sets_round_trip(
            attrs in proptest::collection::btree_map(
                "user\\.[a-z]{1,20}",
                proptest::collection::vec(proptest::num::u8::ANY, 0..80),
                0..6,
            ),
            split in 0usize..64,
        ) {
            let set = XattrSet::from_local(
                attrs.into_iter().map(|(k, v)| (k.into_bytes(), v)).collect(),
            );
            let mut out = Vec::new();
            let mut enc = XattrEncoder::default();
            enc.encode(&set, &mut out).unwrap();
            enc.encode(&set, &mut out).unwrap();
            let dec = XattrDecoder::default();
            // Any prefix is incomplete, never an error.
            let cut = split.min(out.len().saturating_sub(1));
            if cut < out.len() - 1 {
                let r = dec.decode(&mut Reader::new(&out[..cut]));
                proptest::prop_assert!(matches!(r, Err(Error::Incomplete)) || r.is_ok());
            }
            let mut dec = dec;
            let mut r = Reader::new(&out);
            let (i, lit) = dec.decode(&mut r).unwrap();
            proptest::prop_assert_eq!(i, 0);
            proptest::prop_assert_eq!(lit.as_deref(), Some(&set));
            dec.commit(lit);
            proptest::prop_assert_eq!(dec.decode(&mut r).unwrap(), (0, None));
            proptest::prop_assert_eq!(r.remaining(), 0);
        }
    }

    #[test]
    fn rejects_bad_input() {
        let dec = XattrDecoder::default();
        let bad = |b: &[u8]| {
            matches!(
                dec.decode(&mut Reader::new(b)),
                Err(Error::Malformed { .. })
            )
        };
        assert!(bad(&[5])); // index beyond the cache
        let mut huge = vec![0];
        put_varint(&mut huge, 1 << 28);
        assert!(bad(&huge)); // count
        assert!(bad(&[0, 1, 1, 0, 0])); // name length 1 (just the NUL)
        let mut long_value = vec![0, 1, 3];
        put_varint(&mut long_value, 1 << 24);
        assert!(bad(&long_value));
        assert!(bad(&[0, 1, 3, 0, b'a', b'b', b'c'])); // no trailing NUL
        assert!(bad(&[0, 1, 3, 0, b'a', 0, 0])); // inner NUL
        let mut neg = vec![0];
        put_varint(&mut neg, -1);
        assert!(bad(&neg));
        assert_eq!(
            dec.decode(&mut Reader::new(&[0, 1, 3])),
            Err(Error::Incomplete)
        );
    }
}
