//! Per-file requests and replies: the ndx followed by item flags, an optional
//! basis type byte and an optional name (protocol >= 29).

use crate::error::{Error, Result};
use crate::flist::MAXPATHLEN;
use crate::ndx::{NdxCodec, NDX_DEL_STATS, NDX_DONE, NDX_FLIST_EOF};
use crate::wire::{put_u16, put_vstring, Reader};

/// Item flag bits.
pub mod iflags {
    /// atime changed.
    pub const REPORT_ATIME: u16 = 1 << 0;
    /// Something changed.
    pub const REPORT_CHANGE: u16 = 1 << 1;
    /// Size changed.
    pub const REPORT_SIZE: u16 = 1 << 2;
    /// mtime changed.
    pub const REPORT_TIME: u16 = 1 << 3;
    /// Permissions changed.
    pub const REPORT_PERMS: u16 = 1 << 4;
    /// Owner changed.
    pub const REPORT_OWNER: u16 = 1 << 5;
    /// Group changed.
    pub const REPORT_GROUP: u16 = 1 << 6;
    /// ACL changed.
    pub const REPORT_ACL: u16 = 1 << 7;
    /// Xattrs changed.
    pub const REPORT_XATTR: u16 = 1 << 8;
    /// crtime changed.
    pub const REPORT_CRTIME: u16 = 1 << 10;
    /// A basis-type byte follows.
    pub const BASIS_TYPE_FOLLOWS: u16 = 1 << 11;
    /// A name (vstring) follows.
    pub const XNAME_FOLLOWS: u16 = 1 << 12;
    /// The file is new.
    pub const IS_NEW: u16 = 1 << 13;
    /// A local change (no transfer).
    pub const LOCAL_CHANGE: u16 = 1 << 14;
    /// File data is transferred.
    pub const TRANSFER: u16 = 1 << 15;
}

/// What came in where an ndx was expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NdxItem {
    /// End of a phase.
    Done,
    /// End of incremental file lists.
    FlistEof,
    /// Deletion statistics follow (5 varints).
    DelStats([i32; 5]),
    /// A file-list entry with its attributes.
    File(ItemAttrs),
    /// Another negative value (incremental recursion file-list marker).
    Other(i32),
}

/// An ndx with its item flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemAttrs {
    /// File-list index.
    pub ndx: i32,
    /// Item flags.
    pub iflags: u16,
    /// Basis type (with BASIS_TYPE_FOLLOWS).
    pub basis_type: Option<u8>,
    /// Name (with XNAME_FOLLOWS).
    pub xname: Option<Vec<u8>>,
}

impl ItemAttrs {
    /// A transfer request for `ndx` with no extra fields.
    pub fn transfer(ndx: i32) -> Self {
        ItemAttrs {
            ndx,
            iflags: iflags::TRANSFER,
            basis_type: None,
            xname: None,
        }
    }

    /// Appends ndx + attributes.
    pub fn encode(&self, codec: &mut NdxCodec, out: &mut Vec<u8>) -> Result<()> {
        if self.ndx < 0 {
            return Err(Error::unencodable(
                "item",
                format!("negative ndx {}", self.ndx),
            ));
        }
        let mut fl = self.iflags & !(iflags::BASIS_TYPE_FOLLOWS | iflags::XNAME_FOLLOWS);
        if self.basis_type.is_some() {
            fl |= iflags::BASIS_TYPE_FOLLOWS;
        }
        if self.xname.is_some() {
            fl |= iflags::XNAME_FOLLOWS;
        }
        codec.encode(self.ndx, out);
        put_u16(out, fl);
        if let Some(b) = self.basis_type {
            out.push(b);
        }
        if let Some(x) = &self.xname {
            put_vstring(out, x)?;
        }
        Ok(())
    }
}

/// Appends NDX_DEL_STATS and the five deletion counts (regular files,
/// directories, symlinks, devices, specials).
pub fn encode_del_stats(codec: &mut NdxCodec, counts: [i32; 5], out: &mut Vec<u8>) {
    codec.encode(NDX_DEL_STATS, out);
    for c in counts {
        crate::wire::put_varint(out, c);
    }
}

/// Decodes one ndx-with-attributes, or a negative marker. The codec state and
/// reader change only on success.
pub fn decode_item(codec: &mut NdxCodec, r: &mut Reader<'_>) -> Result<NdxItem> {
    let mut c = *codec;
    let mut rr = r.clone();
    let ndx = c.decode(&mut rr)?;
    let item = match ndx {
        NDX_DONE => NdxItem::Done,
        NDX_FLIST_EOF => NdxItem::FlistEof,
        NDX_DEL_STATS => {
            let mut v = [0i32; 5];
            for x in &mut v {
                *x = rr.varint()?;
                if !(0..=1 << 28).contains(x) {
                    return Err(Error::malformed("deletion stats", format!("value {x}")));
                }
            }
            NdxItem::DelStats(v)
        }
        n if n < 0 => NdxItem::Other(n),
        n => {
            let fl = rr.u16()?;
            let basis_type = if fl & iflags::BASIS_TYPE_FOLLOWS != 0 {
                Some(rr.u8()?)
            } else {
                None
            };
            let xname = if fl & iflags::XNAME_FOLLOWS != 0 {
                Some(rr.vstring(MAXPATHLEN)?.to_vec())
            } else {
                None
            };
            NdxItem::File(ItemAttrs {
                ndx: n,
                iflags: fl,
                basis_type,
                xname,
            })
        }
    };
    *codec = c;
    *r = rr;
    Ok(item)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_bytes() {
        let mut enc = NdxCodec::new();
        let mut out = Vec::new();
        ItemAttrs::transfer(0).encode(&mut enc, &mut out).unwrap();
        assert_eq!(out, [0x01, 0x00, 0x80]);
        let a = ItemAttrs {
            ndx: 5,
            iflags: iflags::TRANSFER,
            basis_type: Some(2),
            xname: Some(b"x".to_vec()),
        };
        a.encode(&mut enc, &mut out).unwrap();
        enc.encode(NDX_DONE, &mut out);
        let mut dec = NdxCodec::new();
        let mut r = Reader::new(&out);
        assert_eq!(
            decode_item(&mut dec, &mut r).unwrap(),
            NdxItem::File(ItemAttrs::transfer(0))
        );
        let NdxItem::File(got) = decode_item(&mut dec, &mut r).unwrap() else {
            panic!()
        };
        assert_eq!(got.basis_type, Some(2));
        assert_eq!(got.xname.as_deref(), Some(&b"x"[..]));
        assert_eq!(decode_item(&mut dec, &mut r).unwrap(), NdxItem::Done);
        let mut out = Vec::new();
        let mut enc = NdxCodec::new();
        encode_del_stats(&mut enc, [3, 1, 0, 0, 2], &mut out);
        assert_eq!(out, [0xFF, 0x02, 3, 1, 0, 0, 2]);
        assert_eq!(
            decode_item(&mut NdxCodec::new(), &mut Reader::new(&out)).unwrap(),
            NdxItem::DelStats([3, 1, 0, 0, 2])
        );
        // Truncated attributes leave the codec untouched.
        let mut dec = NdxCodec::new();
        assert_eq!(
            decode_item(&mut dec, &mut Reader::new(&[0x01, 0x00])),
            Err(Error::Incomplete)
        );
        assert_eq!(dec, NdxCodec::new());
    }
}
