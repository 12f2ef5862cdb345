//! rsync's rules for turning source and destination arguments into a transfer plan:
//! `src/` copies the contents, `src` the directory itself; `-R` keeps the path (from a `/./`
//! anchor if present) and creates implied directories; a single non-directory source copied
//! to a destination that is not a directory (and has no trailing slash) names the file.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use crate::fsops::{self, Kind, Meta};
use crate::options::Options;

/// One argument-level item of the transfer.
#[derive(Debug, Clone)]
pub struct TopItem {
    /// The source path on disk.
    pub src: PathBuf,
    /// The destination path relative to the destination root (`.` for the root itself).
    pub rel: Vec<u8>,
    /// The name shown in output and matched by filters.
    pub display: Vec<u8>,
    /// The source's metadata.
    pub meta: Meta,
    /// A directory argument whose contents are transferred (`src/`, `.`).
    pub contents: bool,
    /// An implied parent directory of a `-R` path (not recursed into).
    pub implied: bool,
}

/// The whole plan.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The destination root directory (for a single-file destination: its parent).
    pub dest: PathBuf,
    /// The items, in rsync's order.
    pub items: Vec<TopItem>,
    /// The destination root must be created (and was not yet, in a dry run).
    pub create_dest: bool,
    /// Sources that could not be read: (message, exit code).
    pub errors: Vec<String>,
    /// `--delete-missing-args`: destination paths of missing sources, to delete.
    pub missing: Vec<Vec<u8>>,
}

/// An error that ends the run before anything is transferred.
#[derive(Debug)]
pub struct PlanError {
    /// Message for stderr.
    pub msg: String,
    /// rsync exit code.
    pub code: i32,
}

fn err(msg: impl Into<String>, code: i32) -> PlanError {
    PlanError {
        msg: msg.into(),
        code,
    }
}

/// Joins a relative path onto a base without normalising anything.
pub fn join(base: &Path, rel: &[u8]) -> PathBuf {
    if rel == b"." || rel.is_empty() {
        return base.to_path_buf();
    }
    base.join(OsStr::from_bytes(rel))
}

fn stat_source(opts: &Options, p: &Path) -> std::io::Result<Meta> {
    let m = fsops::lstat(p)?;
    if m.kind() == Kind::Symlink
        && (opts.copy_links || opts.copy_dirlinks || p.as_os_str().as_bytes().ends_with(b"/"))
    {
        if let Ok(t) = fsops::stat(p) {
            if opts.copy_links || t.kind() == Kind::Dir {
                return Ok(t);
            }
        }
    }
    Ok(m)
}

/// Builds the plan; `files` are extra source-relative paths from `--files-from`.
pub fn build(
    opts: &Options,
    sources: &[OsString],
    dest: &OsStr,
    files_from: Option<Vec<Vec<u8>>>,
) -> Result<Plan, PlanError> {
    let mut items: Vec<TopItem> = Vec::new();
    let mut errors = Vec::new();
    let mut implied_seen = std::collections::HashSet::new();
    let mut missing = Vec::new();
    let expanded: Vec<(Vec<u8>, bool)> = match &files_from {
        Some(list) => {
            let base = sources
                .first()
                .ok_or_else(|| err("--files-from needs a source directory", 1))?
                .as_bytes()
                .to_vec();
            list.iter()
                .map(|f| {
                    let mut b = base.clone();
                    if !b.ends_with(b"/") {
                        b.push(b'/');
                    }
                    b.extend_from_slice(b"./");
                    b.extend_from_slice(f);
                    (b, true)
                })
                .collect()
        }
        None => sources
            .iter()
            .map(|s| (s.as_bytes().to_vec(), false))
            .collect(),
    };
    for (arg, from_list) in &expanded {
        // --files-from implies -R unless --no-R is given.
        let relative = opts.relative || (*from_list && !opts.no_relative);
        let trailing = arg.ends_with(b"/") || arg == b"." || arg.ends_with(b"/.");
        let src_path = PathBuf::from(OsString::from_vec(arg.clone()));
        let meta = match stat_source(opts, &src_path) {
            Ok(m) => m,
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound
                    && (opts.ignore_missing_args || opts.delete_missing_args) =>
            {
                if opts.delete_missing_args {
                    let rel = if relative {
                        match find_anchor(arg) {
                            Some(i) => normalize_rel(&arg[i + 3..]),
                            None => normalize_rel(arg),
                        }
                    } else {
                        let t = normalize_rel(arg);
                        match t.iter().rposition(|b| *b == b'/') {
                            Some(i) => t[i + 1..].to_vec(),
                            None => t,
                        }
                    };
                    if !rel.is_empty() {
                        missing.push(rel);
                    }
                }
                continue;
            }
            Err(e) => {
                // A --files-from entry is named without the "/./" anchor put before it.
                let named = match (*from_list, find_anchor(arg)) {
                    (true, Some(i)) => {
                        let mut b = arg[..i + 1].to_vec();
                        b.extend_from_slice(&arg[i + 3..]);
                        PathBuf::from(OsString::from_vec(b))
                    }
                    _ => src_path.clone(),
                };
                let shown = std::env::current_dir()
                    .map(|d| d.join(&named))
                    .unwrap_or_else(|_| named.clone());
                // rsync enters a "dir/" argument (change_dir) and stats anything else.
                let (what, shown) = if trailing {
                    let s = shown.as_os_str().as_bytes();
                    let t = s.strip_suffix(b"/").unwrap_or(s);
                    ("change_dir", PathBuf::from(OsStr::from_bytes(t)))
                } else {
                    ("link_stat", shown)
                };
                errors.push(format!(
                    "arsync: [sender] {what} \"{}\" failed: {}",
                    shown.display(),
                    crate::engine::errno_text(&e)
                ));
                continue;
            }
        };
        if relative {
            let (prefix, rel) = match find_anchor(arg) {
                Some(i) => (arg[..i + 1].to_vec(), arg[i + 3..].to_vec()),
                // An absolute path keeps all of itself under the destination; its implied
                // directories are found from the root.
                None if arg.starts_with(b"/") => (b"/".to_vec(), arg.clone()),
                None => (Vec::new(), arg.clone()),
            };
            let rel = normalize_rel(&rel);
            if rel.is_empty() {
                items.push(TopItem {
                    src: src_path,
                    rel: b".".to_vec(),
                    display: b".".to_vec(),
                    meta,
                    contents: true,
                    implied: false,
                });
                continue;
            }
            if !opts.no_implied_dirs {
                let mut acc = Vec::new();
                let comps: Vec<&[u8]> = rel.split(|b| *b == b'/').collect();
                for c in &comps[..comps.len() - 1] {
                    if !acc.is_empty() {
                        acc.push(b'/');
                    }
                    acc.extend_from_slice(c);
                    if implied_seen.insert(acc.clone()) {
                        let mut sp = prefix.clone();
                        sp.extend_from_slice(&acc);
                        let sp = PathBuf::from(OsString::from_vec(sp));
                        if let Ok(m) = fsops::stat(&sp) {
                            items.push(TopItem {
                                src: sp,
                                rel: acc.clone(),
                                display: acc.clone(),
                                meta: m,
                                contents: false,
                                implied: true,
                            });
                        }
                    }
                }
            }
            if meta.kind() == Kind::Dir && !implied_seen.insert(rel.clone()) {
                // Already present as an implied directory: upgrade it to a real item.
                items.retain(|i| i.rel != rel);
            }
            items.push(TopItem {
                src: src_path,
                rel: rel.clone(),
                display: rel,
                meta,
                contents: false,
                implied: false,
            });
        } else if trailing && meta.kind() == Kind::Dir {
            items.push(TopItem {
                src: src_path,
                rel: b".".to_vec(),
                display: b".".to_vec(),
                meta,
                contents: true,
                implied: false,
            });
        } else {
            let trimmed: &[u8] = {
                let mut t: &[u8] = arg;
                while t.len() > 1 && t.ends_with(b"/") {
                    t = &t[..t.len() - 1];
                }
                t
            };
            let base = match trimmed.iter().rposition(|b| *b == b'/') {
                Some(i) => trimmed[i + 1..].to_vec(),
                None => trimmed.to_vec(),
            };
            items.push(TopItem {
                src: src_path,
                rel: base.clone(),
                display: base,
                meta,
                contents: false,
                implied: false,
            });
        }
    }
    // rsync's file-list order for the top level: "." first, then non-directories, then dirs.
    // Component-wise, so implied directories come before what is inside them.
    let key = |i: &TopItem| -> (bool, Vec<(bool, Vec<u8>)>) {
        let comps: Vec<&[u8]> = i.rel.split(|b| *b == b'/').collect();
        let n = comps.len();
        let path = comps
            .into_iter()
            .enumerate()
            .map(|(k, c)| (k + 1 < n || i.meta.kind() == Kind::Dir, c.to_vec()))
            .collect();
        (i.rel != b".", path)
    };
    items.sort_by_key(key);
    items.dedup_by(|a, b| a.rel == b.rel && a.implied && b.implied);

    let dest_bytes = dest.as_bytes();
    let dest_trailing = dest_bytes.ends_with(b"/");
    let mut dest_path = PathBuf::from(dest);
    let dest_meta = fsops::stat(&dest_path).ok();
    let dest_is_dir = dest_meta.is_some_and(|m| m.kind() == Kind::Dir);
    if dest_is_dir
        && !dest_trailing
        && fsops::lstat(&dest_path).is_ok_and(|m| m.kind() == Kind::Symlink)
    {
        // A destination that is a symlink to a directory is written through, as in rsync:
        // a trailing slash makes every path operation resolve the link.
        let mut b = dest_bytes.to_vec();
        b.push(b'/');
        dest_path = PathBuf::from(OsString::from_vec(b));
    }
    let single_nondir = items.len() == 1
        && items[0].meta.kind() != Kind::Dir
        && !opts.relative
        && files_from.is_none();
    if single_nondir && !dest_trailing && !dest_is_dir {
        let trimmed = dest_path.clone();
        let parent = match trimmed.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = trimmed
            .file_name()
            .map(|n| n.as_bytes().to_vec())
            .ok_or_else(|| err(format!("invalid destination {:?}", dest), 1))?;
        if opts.mkpath && !opts.dry_run {
            fsops::mkdir_all(&parent).map_err(|e| {
                err(
                    format!(
                        "arsync: mkdir \"{}\" failed: {}",
                        parent.display(),
                        crate::engine::errno_text(&e)
                    ),
                    11,
                )
            })?;
        }
        items[0].rel = name;
        return Ok(Plan {
            dest: parent,
            items,
            create_dest: false,
            errors,
            missing,
        });
    }
    if let Some(m) = dest_meta {
        if m.kind() != Kind::Dir {
            return Err(err(
                "ERROR: destination must be a directory when copying more than 1 file",
                3,
            ));
        }
    }
    let mut create_dest = false;
    // A destination named "dir/" is made even when nothing is left to copy into it
    // (an empty --files-from list, or every source missing), as rsync makes it.
    if dest_meta.is_none() && (!items.is_empty() || dest_trailing) {
        create_dest = true;
        if fsops::lstat(&dest_path).is_ok() {
            return Err(err(
                format!(
                    "arsync: destination \"{}\" is not a directory",
                    dest_path.display()
                ),
                11,
            ));
        }
        if !opts.dry_run {
            let r = if opts.mkpath {
                fsops::mkdir_all(&dest_path)
            } else {
                fsops::mkdir(&dest_path, 0o777)
            };
            r.map_err(|e| {
                // rsync names the directory without its trailing slash and ends with its
                // code-11 line.
                let shown = dest_path.as_os_str().as_bytes();
                let shown = match shown.strip_suffix(b"/") {
                    Some(s) if !s.is_empty() => s,
                    _ => shown,
                };
                err(
                    format!(
                        "arsync: [Receiver] mkdir \"{}\" failed: {}\narsync error: error in file IO (code 11)",
                        String::from_utf8_lossy(shown),
                        crate::engine::errno_text(&e)
                    ),
                    11,
                )
            })?;
        }
    }
    Ok(Plan {
        dest: dest_path,
        items,
        create_dest,
        errors,
        missing,
    })
}

fn find_anchor(arg: &[u8]) -> Option<usize> {
    arg.windows(3).position(|w| w == b"/./")
}

/// Strips leading `/` and `./`, doubled and trailing slashes.
fn normalize_rel(rel: &[u8]) -> Vec<u8> {
    let mut out: Vec<u8> = Vec::new();
    for comp in rel.split(|b| *b == b'/') {
        if comp.is_empty() || comp == b"." {
            continue;
        }
        if !out.is_empty() {
            out.push(b'/');
        }
        out.extend_from_slice(comp);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize() {
        assert_eq!(normalize_rel(b"/a//b/./c/"), b"a/b/c");
        assert_eq!(find_anchor(b"x/./y"), Some(1));
    }
}
