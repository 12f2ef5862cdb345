//! ACL and xattr blocks of file-list entries, the xattr request and reply,
//! and the kernel ACL value format; with a re-encoding check for accepted
//! literals.
#![no_main]

use arsync_proto::acl::{parse_posix_xattr, posix_xattr, AclDecoder, AclKind, AclRef, RsyncAcl};
use arsync_proto::flist::{FlistDecoder, FlistItem, FlistOptions};
use arsync_proto::wire::Reader;
use arsync_proto::xattr::{decode_reply, decode_request, XattrDecoder, XattrSet};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.is_empty() {
        return;
    }
    let sel = data[0];
    let body = &data[1..];
    // A run of ACLs (alternating kinds as for directories), committing literals.
    let mut acls = AclDecoder::default();
    let mut r = Reader::new(body);
    for i in 0..64 {
        let kind = if (sel >> (i % 8)) & 1 == 0 { AclKind::Access } else { AclKind::Default };
        match acls.decode(kind, &mut r) {
            Ok(a) => {
                if let AclRef::Literal(l) = &a {
                    // A literal re-encodes to an equal ACL.
                    let mut out = Vec::new();
                    l.encode_literal(&mut out);
                    let back = RsyncAcl::decode_literal(&mut Reader::new(&out)).unwrap();
                    assert_eq!(back.names, l.names);
                    let _ = l.access_entries(0o100755);
                    let _ = l.default_entries();
                }
                acls.commit(kind, &a);
            }
            Err(_) => break,
        }
    }
    // A run of xattr sets.
    let mut xattrs = XattrDecoder::default();
    let mut r = Reader::new(body);
    for _ in 0..64 {
        match xattrs.decode(&mut r) {
            Ok((ndx, lit)) => {
                if let Some(s) = &lit {
                    for it in &s.items {
                        assert!(!it.name.is_empty() && !it.name.contains(&0));
                    }
                    let mut out = Vec::new();
                    s.encode_literal(&mut out).unwrap();
                    let back = XattrSet::decode_literal(&mut Reader::new(&out)).unwrap();
                    assert_eq!(&back, &**s);
                }
                xattrs.commit(lit);
                assert!(xattrs.get(ndx).is_some());
            }
            Err(_) => break,
        }
    }
    let max = u32::from(sel);
    if let Ok(nums) = decode_request(&mut Reader::new(body), max) {
        assert!(nums.iter().all(|&n| n >= 1 && n <= max));
    }
    if let Ok(vals) = decode_reply(&mut Reader::new(body), max) {
        assert!(vals.iter().all(|(n, _)| *n >= 1 && *n <= max));
    }
    // Whole entries with ACL and xattr blocks.
    let mut o = FlistOptions::archive(30 + (sel % 3) as i32);
    o.preserve_acls = sel & 8 != 0;
    o.preserve_xattrs = sel & 16 != 0;
    o.preserve_hard_links = sel & 32 != 0;
    let mut dec = FlistDecoder::new(o, 0);
    let mut r = Reader::new(body);
    while let Ok(FlistItem::Entry(e)) = dec.decode(&mut r) {
        if let Some(n) = e.xattr_ndx {
            assert!((n as usize) < dec.xattr_sets().len());
        }
    }
    if let Ok(acl) = parse_posix_xattr(body) {
        let again = parse_posix_xattr(&posix_xattr(&acl));
        assert!(again.is_ok());
    }
});
