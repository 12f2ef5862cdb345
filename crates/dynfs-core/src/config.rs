//! The pool directory and its options file, `pool.toml`.
//!
//! A pool is a directory (`POOL`) holding `pool.toml` (options and the list of disk directories)
//! and `pool.lock` (held by the process that has the pool open). Everything else lives on the
//! disks. `pool.toml` is validated on load; every problem is reported at once.

use crate::error::{Error, Result};
use crate::policy::{parse_size, Policy};
use std::path::{Path, PathBuf};

/// Name of the options file inside the pool directory.
pub const CONFIG_FILE: &str = "pool.toml";

/// Smallest and largest allowed extent sizes.
pub const EXTENT_SIZE_RANGE: (u64, u64) = (4096, 64 << 20);

/// Extent size `dynfs init` gives a new pool unless told otherwise: 4 MiB (see docs/DYNFS.md,
/// "Extent size", for the measurements behind it).
pub const DEFAULT_EXTENT_SIZE: u64 = 4 << 20;

/// Extent size of a `pool.toml` without an `extent_size` key. Every pool written by `init`
/// records its size; this only reads hand-written files, and must stay what it was (1 MiB),
/// since the extent size of a pool holding data can never change.
const MISSING_EXTENT_SIZE: u64 = 1 << 20;

/// Default `write_buffer_mib`: the most written, not yet committed file data a mounted pool
/// holds in memory, over all open files together.
pub const DEFAULT_WRITE_BUFFER_MIB: u64 = 512;

/// Validated pool options.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolConfig {
    /// Random pool id, also written into every disk's identity file.
    pub pool_id: String,
    /// Policy for files and directories without a `user.dynfs.policy` override.
    pub default_policy: Policy,
    /// Bytes of file data per extent.
    pub extent_size: u64,
    /// Disk directories, absolute.
    pub disks: Vec<PathBuf>,
    /// Scrub rate limit in MB/s (0 = unlimited) when `--rate` is not given.
    pub scrub_rate_mb_s: f64,
    /// I/O errors after which a disk becomes `suspect`.
    pub suspect_after_errors: u32,
    /// I/O errors after which a disk becomes `failed`.
    pub fail_after_errors: u32,
    /// Budget in MiB for buffered writes of all open files together (see
    /// [`PoolConfig::write_buffer_bytes`]).
    pub write_buffer_mib: u64,
}

impl PoolConfig {
    /// Load and validate `POOL/pool.toml`.
    pub fn load(pool: &Path) -> Result<Self> {
        let p = pool.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
        Self::parse(&text).map_err(|e| match e {
            Error::Config(mut v) => {
                v.insert(0, format!("in {}", p.display()));
                Error::Config(v)
            }
            other => other,
        })
    }

    /// Parse and validate options text, listing every error.
    pub fn parse(text: &str) -> Result<Self> {
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| Error::Config(vec![e.to_string()]))?;
        let mut errs = Vec::new();
        const KNOWN: [&str; 8] = [
            "pool_id",
            "default_policy",
            "extent_size",
            "disks",
            "scrub_rate_mb_s",
            "suspect_after_errors",
            "fail_after_errors",
            "write_buffer_mib",
        ];
        for k in table.keys() {
            if !KNOWN.contains(&k.as_str()) {
                errs.push(format!("unknown key {k:?} (known: {})", KNOWN.join(", ")));
            }
        }
        let pool_id = match table.get("pool_id") {
            Some(toml::Value::String(s)) if !s.is_empty() => s.clone(),
            Some(_) => {
                errs.push("pool_id must be a non-empty string".into());
                String::new()
            }
            None => {
                errs.push("missing key pool_id".into());
                String::new()
            }
        };
        let default_policy = match table.get("default_policy") {
            Some(toml::Value::String(s)) => match s.parse::<Policy>() {
                Ok(p) => Some(p),
                Err(e) => {
                    errs.push(format!("default_policy: {e}"));
                    None
                }
            },
            Some(_) => {
                errs.push("default_policy must be a string such as \"rs:4+2\"".into());
                None
            }
            None => {
                errs.push("missing key default_policy".into());
                None
            }
        };
        let extent_size = match table.get("extent_size") {
            Some(toml::Value::String(s)) => parse_size(s).map_err(|e| e.to_string()),
            Some(toml::Value::Integer(i)) => u64::try_from(*i).map_err(|_| "negative".to_string()),
            Some(_) => Err("must be a size such as \"1MiB\"".to_string()),
            None => Ok(MISSING_EXTENT_SIZE),
        };
        let extent_size = match extent_size {
            Ok(n) => {
                if let Err(e) = check_extent_size(n) {
                    errs.push(e.to_string());
                }
                n
            }
            Err(e) => {
                errs.push(format!("extent_size: {e}"));
                0
            }
        };
        let mut disks = Vec::new();
        match table.get("disks") {
            Some(toml::Value::Array(a)) => {
                for (i, v) in a.iter().enumerate() {
                    match v.as_str() {
                        Some(s) if Path::new(s).is_absolute() => {
                            if disks.iter().any(|d: &PathBuf| d == Path::new(s)) {
                                errs.push(format!("disks[{i}]: {s} listed twice"));
                            }
                            disks.push(PathBuf::from(s));
                        }
                        _ => errs.push(format!("disks[{i}] must be an absolute path string")),
                    }
                }
                if a.is_empty() {
                    errs.push("disks must list at least one disk".into());
                }
            }
            Some(_) => errs.push("disks must be an array of paths".into()),
            None => errs.push("missing key disks".into()),
        }
        if let Some(p) = default_policy {
            if !disks.is_empty() && disks.len() < p.width() {
                errs.push(format!(
                    "default_policy {p} needs {} disks, only {} listed",
                    p.width(),
                    disks.len()
                ));
            }
        }
        let scrub_rate_mb_s = match table.get("scrub_rate_mb_s") {
            None => 0.0,
            Some(v) => match v.as_float().or_else(|| v.as_integer().map(|i| i as f64)) {
                Some(f) if f >= 0.0 && f.is_finite() => f,
                _ => {
                    errs.push("scrub_rate_mb_s must be a number >= 0".into());
                    0.0
                }
            },
        };
        let write_buffer_mib = match table.get("write_buffer_mib") {
            None => DEFAULT_WRITE_BUFFER_MIB,
            Some(v) => match v.as_integer().and_then(|i| u64::try_from(i).ok()) {
                Some(n) if (1..=1 << 20).contains(&n) => n,
                _ => {
                    errs.push("write_buffer_mib must be an integer between 1 and 1048576".into());
                    DEFAULT_WRITE_BUFFER_MIB
                }
            },
        };
        let mut count = |key: &str, default: u32| match table.get(key) {
            None => default,
            Some(v) => match v.as_integer().and_then(|i| u32::try_from(i).ok()) {
                Some(n) if n >= 1 => n,
                _ => {
                    errs.push(format!("{key} must be an integer >= 1"));
                    default
                }
            },
        };
        let suspect_after_errors = count("suspect_after_errors", 3);
        let fail_after_errors = count("fail_after_errors", 10);
        if fail_after_errors <= suspect_after_errors {
            errs.push(format!(
                "fail_after_errors ({fail_after_errors}) must be greater than suspect_after_errors ({suspect_after_errors})"
            ));
        }
        match (errs.is_empty(), default_policy) {
            (true, Some(default_policy)) => Ok(PoolConfig {
                pool_id,
                default_policy,
                extent_size,
                disks,
                scrub_rate_mb_s,
                suspect_after_errors,
                fail_after_errors,
                write_buffer_mib,
            }),
            _ => Err(Error::Config(errs)),
        }
    }

    /// Render as TOML text.
    pub fn to_toml(&self) -> String {
        let mut t = toml::Table::new();
        t.insert("pool_id".into(), self.pool_id.clone().into());
        t.insert(
            "default_policy".into(),
            self.default_policy.to_string().into(),
        );
        t.insert("extent_size".into(), (self.extent_size as i64).into());
        t.insert(
            "disks".into(),
            toml::Value::Array(
                self.disks
                    .iter()
                    .map(|d| d.to_string_lossy().into_owned().into())
                    .collect(),
            ),
        );
        t.insert("scrub_rate_mb_s".into(), self.scrub_rate_mb_s.into());
        t.insert(
            "suspect_after_errors".into(),
            (self.suspect_after_errors as i64).into(),
        );
        t.insert(
            "fail_after_errors".into(),
            (self.fail_after_errors as i64).into(),
        );
        t.insert(
            "write_buffer_mib".into(),
            (self.write_buffer_mib as i64).into(),
        );
        format!(
            "# DynamicFS pool options. Validated on open; see docs/DYNFS.md.\n{}",
            toml::to_string(&t).unwrap_or_default()
        )
    }

    /// The write buffer budget in bytes: when the extent buffers of all open files together
    /// pass it, the writer that passed it commits its own buffer at once. Never less than two
    /// extents, so one sequential writer can still fill one extent while another is written.
    pub fn write_buffer_bytes(&self) -> usize {
        let b = self.write_buffer_mib.saturating_mul(1 << 20);
        usize::try_from(b.max(2 * self.extent_size)).unwrap_or(usize::MAX)
    }

    /// Write `POOL/pool.toml` durably.
    pub fn store(&self, pool: &Path) -> Result<()> {
        use crate::io::DiskIo;
        let p = pool.join(CONFIG_FILE);
        crate::io::StdIo
            .write_durable(&p, self.to_toml().as_bytes())
            .map_err(|e| Error::io(p, e))
    }
}

/// Check that an extent size is in range and a multiple of 4 KiB.
pub fn check_extent_size(n: u64) -> Result<()> {
    if n < EXTENT_SIZE_RANGE.0 || n > EXTENT_SIZE_RANGE.1 || n % 4096 != 0 {
        return Err(Error::Invalid(format!(
            "extent_size {n} must be a multiple of 4096 between 4KiB and 64MiB"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip() {
        let c = PoolConfig {
            pool_id: "p1".into(),
            default_policy: "rs:2+1".parse().unwrap(),
            extent_size: 65536,
            disks: vec!["/a".into(), "/b".into(), "/c".into()],
            scrub_rate_mb_s: 5.0,
            suspect_after_errors: 3,
            fail_after_errors: 10,
            write_buffer_mib: 64,
        };
        assert_eq!(PoolConfig::parse(&c.to_toml()).unwrap(), c);
    }

    #[test]
    fn defaults_of_missing_keys() {
        let c = PoolConfig::parse(
            "pool_id = \"p\"\ndefault_policy = \"replicate:1\"\ndisks = [\"/a\"]",
        )
        .unwrap();
        // A hand-written file without extent_size keeps meaning 1 MiB (what it always meant).
        assert_eq!(c.extent_size, 1 << 20);
        assert_eq!(c.write_buffer_mib, DEFAULT_WRITE_BUFFER_MIB);
        assert_eq!(c.write_buffer_bytes(), 512 << 20);
        // The budget is never below two extents.
        let c = PoolConfig {
            write_buffer_mib: 1,
            extent_size: 4 << 20,
            ..c
        };
        assert_eq!(c.write_buffer_bytes(), 8 << 20);
        for bad in ["0", "-3", "\"x\"", "2097152"] {
            let text = format!(
                "pool_id = \"p\"\ndefault_policy = \"replicate:1\"\ndisks = [\"/a\"]\nwrite_buffer_mib = {bad}"
            );
            let Err(Error::Config(errs)) = PoolConfig::parse(&text) else {
                panic!("write_buffer_mib = {bad} accepted");
            };
            assert!(
                errs.iter().any(|e| e.contains("write_buffer_mib")),
                "{errs:?}"
            );
        }
    }

    #[test]
    fn lists_every_error() {
        let text = r#"
            default_policy = "rs:9+9"
            extent_size = "3K"
            disks = ["relative", "/a", "/a"]
            colour = "blue"
            fail_after_errors = 1
        "#;
        let Err(Error::Config(errs)) = PoolConfig::parse(text) else {
            panic!("expected config errors");
        };
        let all = errs.join("\n");
        for needle in [
            "missing key pool_id",
            "extent_size",
            "disks[0]",
            "listed twice",
            "unknown key \"colour\"",
            "needs 18 disks",
            "fail_after_errors",
        ] {
            assert!(all.contains(needle), "{needle} not in {all}");
        }
        assert!(PoolConfig::parse("not = [toml").is_err());
    }
}
