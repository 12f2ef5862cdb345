//! The filter list a client sends before the file list: repeated
//! (int length, rule text), ended by int 0.

use crate::error::{Error, Result};
use crate::wire::{put_i32, Reader};

/// Longest rule accepted (rsync's MAXPATHLEN plus room for modifiers).
pub const MAX_RULE_LEN: usize = 1024 + 32;
/// Most rules accepted in one list.
pub const MAX_RULES: usize = 1 << 16;

/// Appends a filter list (each rule like `- *.o` or `+ /dir/`).
pub fn encode_filter_list(rules: &[Vec<u8>], out: &mut Vec<u8>) -> Result<()> {
    for r in rules {
        if r.is_empty() || r.len() > MAX_RULE_LEN {
            return Err(Error::unencodable(
                "filter rule",
                format!("length {}", r.len()),
            ));
        }
        put_i32(out, r.len() as i32);
        out.extend_from_slice(r);
    }
    put_i32(out, 0);
    Ok(())
}

/// Decodes a whole filter list (incomplete until the terminator is buffered).
pub fn decode_filter_list(r: &mut Reader<'_>) -> Result<Vec<Vec<u8>>> {
    let mut rr = r.clone();
    let mut rules = Vec::new();
    loop {
        let n = rr.i32()?;
        if n == 0 {
            break;
        }
        if n < 0 || n as usize > MAX_RULE_LEN {
            return Err(Error::malformed("filter list", format!("rule length {n}")));
        }
        if rules.len() >= MAX_RULES {
            return Err(Error::malformed("filter list", "too many rules"));
        }
        rules.push(rr.bytes(n as usize)?.to_vec());
    }
    *r = rr;
    Ok(rules)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_bytes() {
        let rules = vec![b"- *.o".to_vec(), b"+ /keep/".to_vec()];
        let mut out = Vec::new();
        encode_filter_list(&rules, &mut out).unwrap();
        assert_eq!(&out[..9], &[5, 0, 0, 0, b'-', b' ', b'*', b'.', b'o']);
        assert_eq!(&out[out.len() - 4..], &[0, 0, 0, 0]);
        let mut r = Reader::new(&out);
        assert_eq!(decode_filter_list(&mut r).unwrap(), rules);
        assert_eq!(
            decode_filter_list(&mut Reader::new(&out[..out.len() - 1])),
            Err(Error::Incomplete)
        );
        assert!(decode_filter_list(&mut Reader::new(&(-5i32).to_le_bytes())).is_err());
        assert!(decode_filter_list(&mut Reader::new(&(1_000_000i32).to_le_bytes())).is_err());
    }
}
