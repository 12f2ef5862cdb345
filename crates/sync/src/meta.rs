//! Destination metadata: the mode, owner, times, xattrs and ACLs rsync's flags ask for,
//! what differs (for `-i`), and applying it.

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::fsops::{self, Kind, Meta, Time};
use crate::options::{ChmodRule, Options};

/// The ACL xattr names (`-A`).
const ACL_NAMES: [&[u8]; 2] = [b"system.posix_acl_access", b"system.posix_acl_default"];

fn is_acl(name: &[u8]) -> bool {
    ACL_NAMES.contains(&name)
}

/// Which xattrs `-X` copies: everything except the `system.` namespace.
fn is_copied_xattr(name: &[u8]) -> bool {
    !name.starts_with(b"system.")
}

/// The file-creation mask of this process.
pub fn umask() -> u32 {
    static UMASK: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *UMASK.get_or_init(|| {
        // Reading the umask means setting it; set it back at once. The value is read once,
        // at start-up, before any worker thread creates files.
        let old = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o022));
        rustix::process::umask(old);
        old.as_raw_mode()
    })
}

/// The source permission bits after `--chmod` rules.
pub fn source_perms(opts: &Options, meta: &Meta) -> u32 {
    let mut perms = meta.perms();
    let is_dir = meta.kind() == Kind::Dir;
    for rule in &opts.chmod {
        if (is_dir && rule.dirs) || (!is_dir && rule.files) {
            perms = apply_chmod(&rule.spec, perms, is_dir);
        }
    }
    perms
}

/// The permission bits the destination should get (rsync's `dest_mode`).
pub fn wanted_perms(opts: &Options, src: &Meta, existing: Option<&Meta>) -> u32 {
    let src_perms = source_perms(opts, src);
    if opts.perms {
        return src_perms;
    }
    match existing {
        Some(d) if d.kind() == src.kind() => {
            let mut m = d.perms();
            if opts.executability && src.kind() == Kind::File {
                if src_perms & 0o111 == 0 {
                    m &= !0o111;
                } else if m & 0o111 == 0 {
                    m |= (m & 0o444) >> 2;
                }
            }
            m
        }
        _ => {
            let mut m = src_perms & (0o777 & !umask());
            if opts.executability && src.kind() == Kind::File && src_perms & 0o111 == 0 {
                m &= !0o111;
            }
            m
        }
    }
}

/// Parses and applies one `--chmod` spec (comma-separated clauses) to `perms`.
pub fn apply_chmod(spec: &str, mut perms: u32, is_dir: bool) -> u32 {
    for clause in spec.split(',') {
        if clause.is_empty() {
            continue;
        }
        if clause.bytes().all(|b| b.is_ascii_digit()) {
            if let Ok(v) = u32::from_str_radix(clause, 8) {
                perms = v & 0o7777;
            }
            continue;
        }
        let b = clause.as_bytes();
        let mut i = 0;
        let mut who = 0u32;
        while i < b.len() && b"ugoa".contains(&b[i]) {
            who |= match b[i] {
                b'u' => 0o4700,
                b'g' => 0o2070,
                b'o' => 0o1007,
                _ => 0o7777,
            };
            i += 1;
        }
        let masked = who == 0;
        if masked {
            who = 0o7777;
        }
        while i < b.len() {
            let op = b[i];
            i += 1;
            let mut bits = 0u32;
            while i < b.len() && !b"+-=".contains(&b[i]) {
                bits |= match b[i] {
                    b'r' => 0o444,
                    b'w' => 0o222,
                    b'x' => 0o111,
                    b'X' if is_dir || perms & 0o111 != 0 => 0o111,
                    b's' => 0o6000,
                    b't' => 0o1000,
                    _ => 0,
                };
                i += 1;
            }
            let mut apply = bits & who;
            if masked {
                apply &= !umask() | 0o7000;
            }
            match op {
                b'+' => perms |= apply,
                b'-' => perms &= !apply,
                b'=' => perms = (perms & !(who & 0o777)) | apply,
                _ => {}
            }
        }
    }
    perms
}

/// Parses a `--chmod` argument into rules (each clause may start with `D` or `F`).
pub fn parse_chmod(arg: &str) -> Result<Vec<ChmodRule>, String> {
    let mut rules = Vec::new();
    for clause in arg.split(',') {
        let (dirs, files, rest) = match clause.as_bytes().first() {
            Some(b'D') => (true, false, &clause[1..]),
            Some(b'F') => (false, true, &clause[1..]),
            _ => (true, true, clause),
        };
        let ok = !rest.is_empty()
            && (rest.bytes().all(|b| b.is_ascii_digit() && b < b'8')
                || rest.bytes().all(|b| b"ugoa+-=rwxXst".contains(&b))
                    && rest.bytes().any(|b| b"+-=".contains(&b)));
        if !ok {
            return Err(format!("Invalid argument passed to --chmod ({arg})"));
        }
        rules.push(ChmodRule {
            dirs,
            files,
            spec: rest.to_string(),
        });
    }
    Ok(rules)
}

/// What a destination should look like besides its data.
#[derive(Debug, Clone, Copy)]
pub struct Wanted {
    /// Permission bits to set (`None`: leave).
    pub perms: Option<u32>,
    /// Owner to set.
    pub uid: Option<u32>,
    /// Group to set.
    pub gid: Option<u32>,
    /// Modification time to set.
    pub mtime: Option<Time>,
    /// Access time to set.
    pub atime: Option<Time>,
}

/// Computes the wanted metadata for `src` given the destination as it is now (if any).
pub fn wanted(opts: &Options, src: &Meta, existing: Option<&Meta>, am_root: bool) -> Wanted {
    let kind = src.kind();
    let perms = if kind == Kind::Symlink {
        None
    } else {
        Some(wanted_perms(opts, src, existing))
    };
    let uid = if let Some(u) = opts.chown_uid {
        Some(u).filter(|_| am_root)
    } else if opts.owner && am_root {
        Some(crate::options::map_id(
            &opts.usermap,
            src.uid,
            fsops::user_name,
        ))
    } else {
        None
    };
    let gid = if let Some(g) = opts.chown_gid {
        Some(g)
    } else if opts.group {
        Some(crate::options::map_id(
            &opts.groupmap,
            src.gid,
            fsops::group_name,
        ))
    } else {
        None
    };
    let times = opts.times
        && !(kind == Kind::Dir && opts.omit_dir_times)
        && !(kind == Kind::Symlink && opts.omit_link_times);
    Wanted {
        perms,
        uid,
        gid,
        mtime: times.then_some(src.mtime),
        atime: (opts.atimes && kind != Kind::Dir).then_some(src.atime),
    }
}

/// Which attributes differ between `dst` and what is wanted.
#[derive(Debug, Default, Clone, Copy)]
pub struct AttrDiff {
    /// Permissions differ.
    pub perms: bool,
    /// Owner differs.
    pub owner: bool,
    /// Group differs.
    pub group: bool,
    /// Mtime differs.
    pub time: bool,
    /// Atime differs.
    pub atime: bool,
}

impl AttrDiff {
    /// True if anything differs.
    pub fn any(&self) -> bool {
        self.perms || self.owner || self.group || self.time || self.atime
    }
}

/// Compares the destination's current attributes with the wanted ones.
pub fn diff(w: &Wanted, dst: &Meta) -> AttrDiff {
    AttrDiff {
        perms: w.perms.is_some_and(|p| p != dst.perms()),
        owner: w.uid.is_some_and(|u| u != dst.uid),
        group: w.gid.is_some_and(|g| g != dst.gid),
        time: w.mtime.is_some_and(|t| t != dst.mtime),
        atime: w.atime.is_some_and(|t| t != dst.atime),
    }
}

/// Applies owner, mode and times to `path` (in that order: chown clears set-id bits).
pub fn apply(path: &Path, kind: Kind, w: &Wanted, current: Option<&Meta>) -> io::Result<()> {
    let need_chown = match current {
        Some(c) => w.uid.is_some_and(|u| u != c.uid) || w.gid.is_some_and(|g| g != c.gid),
        None => w.uid.is_some() || w.gid.is_some(),
    };
    let mut chown_err = None;
    if need_chown {
        if let Err(e) = fsops::lchown(path, w.uid, w.gid) {
            chown_err = Some(e);
        }
    }
    if kind != Kind::Symlink {
        if let Some(p) = w.perms {
            let cur = current.map(|c| c.perms());
            if need_chown || cur != Some(p) {
                fsops::chmod(path, p)?;
            }
        }
    }
    if w.mtime.is_some() || w.atime.is_some() {
        let cur_ok = current.is_some_and(|c| {
            w.mtime.is_none_or(|t| t == c.mtime) && w.atime.is_none_or(|t| t == c.atime)
        });
        if !cur_ok {
            fsops::set_times(path, w.atime, w.mtime)?;
        }
    }
    match chown_err {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Applies owner, mode and times to a freshly written open file (all wanted values).
pub fn apply_fd(file: &std::fs::File, w: &Wanted) -> io::Result<()> {
    let mut chown_err = None;
    if w.uid.is_some() || w.gid.is_some() {
        if let Err(e) = fsops::fchown(file, w.uid, w.gid) {
            chown_err = Some(e);
        }
    }
    if let Some(p) = w.perms {
        fsops::fchmod(file, p)?;
    }
    if w.mtime.is_some() || w.atime.is_some() {
        fsops::futimes(file, w.atime, w.mtime)?;
    }
    match chown_err {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// True for the xattr names `-X` (`xattrs`) and `-A` (`acls`) copy.
pub fn xattr_selected(name: &[u8], xattrs: bool, acls: bool) -> bool {
    (acls && is_acl(name)) || (xattrs && is_copied_xattr(name))
}

/// The selected xattrs of `path` (`-X`, `-A`), names and values.
fn selected_xattrs(
    path: &Path,
    xattrs: bool,
    acls: bool,
) -> io::Result<Vec<(std::ffi::OsString, Vec<u8>)>> {
    fsops::list_xattrs(path)?
        .into_iter()
        .filter(|n| xattr_selected(n.as_bytes(), xattrs, acls))
        .map(|n| fsops::get_xattr(path, &n).map(|v| (n, v)))
        .collect()
}

/// Copies the selected xattrs of `src` to `dst`, a file just created without any of them
/// (so, unlike [`sync_xattrs`], nothing of `dst` is read). Returns true if an ACL was set
/// (setting one changes the mode's group bits).
pub fn copy_xattrs_to_new(src: &Path, dst: &Path, xattrs: bool, acls: bool) -> io::Result<bool> {
    if !xattrs && !acls {
        return Ok(false);
    }
    let mut acl = false;
    for (name, value) in selected_xattrs(src, xattrs, acls)? {
        acl |= is_acl(name.as_bytes());
        fsops::set_xattr(dst, &name, &value)?;
    }
    Ok(acl)
}

/// Makes the xattrs of `dst` in the selected namespaces equal those of `src`. Returns
/// (acl_changed, xattr_changed). With `dry`, only compares.
pub fn sync_xattrs(
    src: &Path,
    dst: &Path,
    xattrs: bool,
    acls: bool,
    dry: bool,
) -> io::Result<(bool, bool)> {
    if !xattrs && !acls {
        return Ok((false, false));
    }
    let wanted = |n: &OsStr| xattr_selected(n.as_bytes(), xattrs, acls);
    let src_xattrs = selected_xattrs(src, xattrs, acls)?;
    let dst_names: Vec<_> = match fsops::list_xattrs(dst) {
        Ok(v) => v.into_iter().filter(|n| wanted(n)).collect(),
        Err(e) if dry && e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e),
    };
    let mut acl_changed = false;
    let mut x_changed = false;
    let mut mark = |n: &OsStr| {
        if is_acl(n.as_bytes()) {
            acl_changed = true;
        } else {
            x_changed = true;
        }
    };
    for (name, value) in &src_xattrs {
        let same =
            dst_names.contains(name) && fsops::get_xattr(dst, name).is_ok_and(|v| v == *value);
        if !same {
            mark(name);
            if !dry {
                fsops::set_xattr(dst, name, value)?;
            }
        }
    }
    for name in &dst_names {
        if !src_xattrs.iter().any(|(n, _)| n == name) {
            mark(name);
            if !dry {
                fsops::remove_xattr(dst, name)?;
            }
        }
    }
    Ok((acl_changed, x_changed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chmod_specs() {
        assert_eq!(apply_chmod("u+x", 0o644, false), 0o744);
        assert_eq!(apply_chmod("go-w", 0o666, false), 0o644);
        assert_eq!(apply_chmod("755", 0o600, false), 0o755);
        assert_eq!(apply_chmod("a+X", 0o600, true), 0o711);
        assert_eq!(apply_chmod("a+X", 0o600, false), 0o600);
        assert_eq!(apply_chmod("g=rx", 0o777, false), 0o757);
        assert_eq!(apply_chmod("g+s", 0o755, true), 0o2755);
        assert!(parse_chmod("Dg+s,Fo-w").is_ok());
        assert!(parse_chmod("bogus").is_err());
        assert!(parse_chmod("D").is_err());
    }
}
