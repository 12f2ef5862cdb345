//! Redundancy policies: N full copies, or Reed–Solomon K data + M parity fragments.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// How an extent is stored across disks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Policy {
    /// `replicate:N`: N identical copies on N different disks.
    Replicate {
        /// Number of copies (1..=16).
        copies: u8,
    },
    /// `rs:K+M`: K data fragments and M parity fragments on K+M different disks.
    ReedSolomon {
        /// Data fragments (1..=32).
        data: u8,
        /// Parity fragments (1..=16).
        parity: u8,
    },
}

impl Policy {
    /// Number of fragments (and distinct disks) per extent.
    pub fn width(&self) -> usize {
        match *self {
            Policy::Replicate { copies } => copies as usize,
            Policy::ReedSolomon { data, parity } => data as usize + parity as usize,
        }
    }

    /// Number of intact fragments needed to read an extent.
    pub fn needed(&self) -> usize {
        match *self {
            Policy::Replicate { .. } => 1,
            Policy::ReedSolomon { data, .. } => data as usize,
        }
    }

    /// Number of fragments (disks) that may be lost without losing data (M).
    pub fn tolerance(&self) -> usize {
        self.width() - self.needed()
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Policy::Replicate { copies } => write!(f, "replicate:{copies}"),
            Policy::ReedSolomon { data, parity } => write!(f, "rs:{data}+{parity}"),
        }
    }
}

impl FromStr for Policy {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            Error::Invalid(format!(
                "invalid policy {s:?}: expected replicate:N (1..=16) or rs:K+M (K 1..=32, M 1..=16)"
            ))
        };
        let s = s.trim();
        if let Some(n) = s.strip_prefix("replicate:") {
            let copies: u8 = n.parse().map_err(|_| bad())?;
            if !(1..=16).contains(&copies) {
                return Err(bad());
            }
            Ok(Policy::Replicate { copies })
        } else if let Some(km) = s.strip_prefix("rs:") {
            let (k, m) = km.split_once('+').ok_or_else(bad)?;
            let data: u8 = k.parse().map_err(|_| bad())?;
            let parity: u8 = m.parse().map_err(|_| bad())?;
            if !(1..=32).contains(&data) || !(1..=16).contains(&parity) {
                return Err(bad());
            }
            Ok(Policy::ReedSolomon { data, parity })
        } else {
            Err(bad())
        }
    }
}

/// Parse a size such as `1048576`, `64K`, `64KiB`, `1M`, `1MiB`, `1G` (binary units).
pub fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| Error::Invalid(format!("invalid size {s:?}")))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(Error::Invalid(format!("invalid size unit in {s:?}"))),
    };
    n.checked_mul(mult)
        .ok_or_else(|| Error::Invalid(format!("size {s:?} too large")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_policies() {
        for s in ["replicate:3", "rs:4+2", "rs:1+1", "replicate:1"] {
            let p: Policy = s.parse().unwrap();
            assert_eq!(p.to_string(), s);
        }
        let p: Policy = "rs:4+2".parse().unwrap();
        assert_eq!((p.width(), p.needed(), p.tolerance()), (6, 4, 2));
        for bad in [
            "",
            "rs:4",
            "rs:0+2",
            "replicate:0",
            "replicate:x",
            "raid5",
            "rs:4+0",
        ] {
            assert!(bad.parse::<Policy>().is_err(), "{bad}");
        }
    }

    #[test]
    fn parses_sizes() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("64K").unwrap(), 65536);
        assert_eq!(parse_size("1MiB").unwrap(), 1 << 20);
        assert!(parse_size("1X").is_err());
        assert!(parse_size("M").is_err());
        assert!(parse_size("99999999999G").is_err());
    }
}
