//! Extended attributes and POSIX ACLs of local files (`-X`, `-A`): reading
//! them for the file list, applying received ones.
//!
//! Which attributes take part follows rsync on Linux: as root everything but
//! the `system.` namespace (ACLs travel separately), otherwise only `user.`.
//! ACLs are read and written as the kernel's `system.posix_acl_access` /
//! `system.posix_acl_default` values (see `arsync_proto::acl`).

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use arsync_proto::acl::{parse_posix_xattr, posix_xattr, IdAccess, RsyncAcl};
use arsync_proto::xattr::{XattrItem, XattrSet, XattrValue};
use rustix::fs::XattrFlags;
use rustix::io::Errno;

use crate::error::{RemoteError, Result};
use crate::ids::IdMap;

const ACL_ACCESS: &str = "system.posix_acl_access";
const ACL_DEFAULT: &str = "system.posix_acl_default";

/// Where attribute calls act.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    /// An open file (never a symlink).
    Fd(BorrowedFd<'a>),
    /// A path; a final symlink is not followed.
    Path(&'a Path),
    /// A path whose final component is followed (a directory given as
    /// `/proc/self/fd/N`).
    FollowPath(&'a Path),
}

/// A target for `base` inside the directory `parent` (or the directory
/// itself when `base` is `None`), resolved through `/proc/self/fd` so the
/// confinement of `parent` is kept.
pub fn at_path(parent: &OwnedFd, base: Option<&std::ffi::OsStr>) -> PathBuf {
    let p = PathBuf::from(format!("/proc/self/fd/{}", parent.as_raw_fd()));
    match base {
        Some(b) => p.join(b),
        None => p,
    }
}

fn unsupported(e: Errno) -> bool {
    e == Errno::NOTSUP || e == Errno::OPNOTSUPP
}

fn list_raw(t: Target<'_>) -> rustix::io::Result<Vec<u8>> {
    loop {
        let need = match t {
            Target::Fd(fd) => rustix::fs::flistxattr_query(fd)?,
            Target::Path(p) => rustix::fs::llistxattr_query(p)?,
            Target::FollowPath(p) => rustix::fs::listxattr_query(p)?,
        };
        if need == 0 {
            return Ok(Vec::new());
        }
        let mut buf = vec![0u8; need];
        let got = match t {
            Target::Fd(fd) => rustix::fs::flistxattr(fd, &mut buf[..]),
            Target::Path(p) => rustix::fs::llistxattr(p, &mut buf[..]),
            Target::FollowPath(p) => rustix::fs::listxattr(p, &mut buf[..]),
        };
        match got {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Err(Errno::RANGE) => continue,
            Err(e) => return Err(e),
        }
    }
}

fn get_raw(t: Target<'_>, name: &[u8]) -> rustix::io::Result<Option<Vec<u8>>> {
    let name: &std::ffi::OsStr = std::os::unix::ffi::OsStrExt::from_bytes(name);
    loop {
        let need = match t {
            Target::Fd(fd) => rustix::fs::fgetxattr_query(fd, name),
            Target::Path(p) => rustix::fs::lgetxattr_query(p, name),
            Target::FollowPath(p) => rustix::fs::getxattr_query(p, name),
        };
        let need = match need {
            Ok(n) => n,
            Err(Errno::NODATA) => return Ok(None),
            Err(e) => return Err(e),
        };
        if need == 0 {
            return Ok(Some(Vec::new()));
        }
        let mut buf = vec![0u8; need];
        let got = match t {
            Target::Fd(fd) => rustix::fs::fgetxattr(fd, name, &mut buf[..]),
            Target::Path(p) => rustix::fs::lgetxattr(p, name, &mut buf[..]),
            Target::FollowPath(p) => rustix::fs::getxattr(p, name, &mut buf[..]),
        };
        match got {
            Ok(n) => {
                buf.truncate(n);
                return Ok(Some(buf));
            }
            Err(Errno::RANGE) => continue,
            Err(Errno::NODATA) => return Ok(None),
            Err(e) => return Err(e),
        }
    }
}

fn set_raw(t: Target<'_>, name: &[u8], value: &[u8]) -> rustix::io::Result<()> {
    let name: &std::ffi::OsStr = std::os::unix::ffi::OsStrExt::from_bytes(name);
    match t {
        Target::Fd(fd) => rustix::fs::fsetxattr(fd, name, value, XattrFlags::empty()),
        Target::Path(p) => rustix::fs::lsetxattr(p, name, value, XattrFlags::empty()),
        Target::FollowPath(p) => rustix::fs::setxattr(p, name, value, XattrFlags::empty()),
    }
}

fn remove_raw(t: Target<'_>, name: &[u8]) -> rustix::io::Result<()> {
    let name: &std::ffi::OsStr = std::os::unix::ffi::OsStrExt::from_bytes(name);
    let r = match t {
        Target::Fd(fd) => rustix::fs::fremovexattr(fd, name),
        Target::Path(p) => rustix::fs::lremovexattr(p, name),
        Target::FollowPath(p) => rustix::fs::removexattr(p, name),
    };
    match r {
        Err(Errno::NODATA) => Ok(()),
        r => r,
    }
}

/// True when attribute `name` takes part in `-X` (rsync's Linux rules).
pub fn xattr_allowed(name: &[u8], root: bool) -> bool {
    if root {
        !name.starts_with(b"system.")
    } else {
        name.starts_with(b"user.")
    }
}

fn err(what: &str, who: &str, e: Errno) -> RemoteError {
    RemoteError::io(format!("{what} {who}"), e.into())
}

/// The attributes of `t` that take part in `-X`, as (name, value) pairs.
pub fn read_xattrs(t: Target<'_>, root: bool, who: &str) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let list = match list_raw(t) {
        Ok(l) => l,
        Err(e) if unsupported(e) => return Ok(Vec::new()),
        Err(e) => return Err(err("listing xattrs of", who, e)),
    };
    let mut out = Vec::new();
    for name in list.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        if !xattr_allowed(name, root) {
            continue;
        }
        if let Some(v) = get_raw(t, name).map_err(|e| err("reading xattr of", who, e))? {
            out.push((name.to_vec(), v));
        }
    }
    Ok(out)
}

/// The sender's set for a file (sorted, numbered, long values abbreviated).
pub fn xattr_set(t: Target<'_>, root: bool, who: &str) -> Result<XattrSet> {
    Ok(XattrSet::from_local(read_xattrs(t, root, who)?))
}

/// Re-reads one value for an xattr request (None if it vanished).
pub fn read_value(t: Target<'_>, name: &[u8]) -> Option<Vec<u8>> {
    get_raw(t, name).ok().flatten()
}

/// The permission bits a directory's default ACL gives new entries
/// (rsync's `default_perms_for_dir`: user, mask or else group, other);
/// `None` when it has no default ACL (or ACLs are not supported).
pub fn default_acl_perms(t: Target<'_>) -> Option<u32> {
    let raw = get_raw(t, ACL_DEFAULT.as_bytes()).ok()??;
    let acl = parse_posix_xattr(&raw).ok()?;
    let user = acl.user_obj?;
    let group = acl.mask_obj.or(acl.group_obj).unwrap_or(0);
    let other = acl.other_obj.unwrap_or(0);
    Some(((user as u32 & 7) << 6) | ((group as u32 & 7) << 3) | (other as u32 & 7))
}

/// The ACLs of a non-symlink as sent: the access ACL without what `mode`
/// says, and for a directory its default ACL.
pub fn read_acls(
    t: Target<'_>,
    mode: u32,
    is_dir: bool,
    who: &str,
) -> Result<(RsyncAcl, RsyncAcl)> {
    let read = |name: &str| -> Result<RsyncAcl> {
        match get_raw(t, name.as_bytes()) {
            Ok(Some(v)) => parse_posix_xattr(&v).map_err(|e| {
                RemoteError::io(
                    format!("ACL of {who}"),
                    std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()),
                )
            }),
            Ok(None) => Ok(RsyncAcl::default()),
            Err(e) if unsupported(e) => Ok(RsyncAcl::default()),
            Err(e) => Err(err("reading the ACL of", who, e)),
        }
    };
    let mut access = read(ACL_ACCESS)?;
    access.strip_access(mode);
    let default = if is_dir {
        read(ACL_DEFAULT)?
    } else {
        RsyncAcl::default()
    };
    Ok((access, default))
}

fn map_ids(acl: &mut RsyncAcl, uids: &IdMap, gids: &IdMap) {
    for IdAccess { is_user, id, .. } in &mut acl.names {
        *id = if *is_user {
            uids.map(*id)
        } else {
            gids.map(*id)
        };
    }
}

/// Gives `t` (whose mode is `mode`) the received ACLs: the access ACL
/// rebuilt from the mode (removed when the mode says all), and for a
/// directory the default ACL (removed when absent). Ids are mapped by the
/// peer's id lists.
pub fn apply_acls(
    t: Target<'_>,
    mode: u32,
    access: &RsyncAcl,
    default: Option<&RsyncAcl>,
    ids: (&IdMap, &IdMap),
    who: &str,
) -> Result<()> {
    let set = |name: &str, acl: Option<RsyncAcl>| -> Result<()> {
        let r = match acl {
            Some(mut a) => {
                map_ids(&mut a, ids.0, ids.1);
                set_raw(t, name.as_bytes(), &posix_xattr(&a))
            }
            None => remove_raw(t, name.as_bytes()),
        };
        match r {
            Ok(()) => Ok(()),
            Err(e) if unsupported(e) => Ok(()),
            Err(e) => Err(err("setting the ACL of", who, e)),
        }
    };
    set(ACL_ACCESS, access.access_entries(mode))?;
    if let Some(d) = default {
        set(ACL_DEFAULT, d.default_entries())?;
    }
    Ok(())
}

/// The receiving side's copy of the sender's xattr sets, completed with
/// full values as they arrive.
#[derive(Debug, Default)]
pub struct XattrStore {
    sets: Vec<Mutex<StoreSet>>,
}

#[derive(Debug, Default)]
struct StoreSet {
    items: Vec<XattrItem>,
    /// Attributes the sender listed (before filtering).
    total: u32,
    /// Numbers already requested from the sender (rsync's sender answers
    /// each number of a set at most once).
    requested: Vec<u32>,
}

/// What the generator should do about one entry's attributes.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct XattrPlan {
    /// The local attributes differ from the sender's.
    pub differs: bool,
    /// Numbers to request now.
    pub request: Vec<u32>,
    /// Some value is not known yet (requested now or earlier): apply when
    /// the sender's answer for this entry arrives.
    pub wait: bool,
}

impl XattrStore {
    /// A store for the decoder's sets, keeping only names `root` may set.
    pub fn new(sets: &[std::sync::Arc<XattrSet>], root: bool) -> Self {
        XattrStore {
            sets: sets
                .iter()
                .map(|s| {
                    Mutex::new(StoreSet {
                        items: s
                            .items
                            .iter()
                            .filter(|i| xattr_allowed(&i.name, root))
                            .cloned()
                            .collect(),
                        total: s.items.len() as u32,
                        requested: Vec::new(),
                    })
                })
                .collect(),
        }
    }

    fn set(&self, ndx: u32) -> Result<std::sync::MutexGuard<'_, StoreSet>> {
        let m = self
            .sets
            .get(ndx as usize)
            .ok_or_else(|| RemoteError::Refused(format!("xattr set {ndx} does not exist")))?;
        Ok(m.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Compares set `ndx` with `local` and picks the values to request.
    pub fn plan(&self, ndx: u32, local: &[(Vec<u8>, Vec<u8>)]) -> Result<XattrPlan> {
        let mut s = self.set(ndx)?;
        let mut plan = XattrPlan {
            differs: s.items.len() != local.len(),
            ..XattrPlan::default()
        };
        let StoreSet {
            items, requested, ..
        } = &mut *s;
        for it in items.iter() {
            let mine = local.iter().find(|(n, _)| *n == it.name).map(|(_, v)| v);
            let same = mine.is_some_and(|v| it.value.matches(v));
            if !same {
                plan.differs = true;
                if let XattrValue::Abbrev { .. } = it.value {
                    plan.wait = true;
                    if !requested.contains(&it.num) {
                        requested.push(it.num);
                        plan.request.push(it.num);
                    }
                }
            }
        }
        plan.request.sort_unstable();
        Ok(plan)
    }

    /// The highest attribute number of set `ndx` (for bounding replies).
    pub fn max_num(&self, ndx: u32) -> Result<u32> {
        Ok(self.set(ndx)?.total)
    }

    /// Records full values received for set `ndx`; only numbers requested
    /// from the sender are accepted.
    pub fn fill(&self, ndx: u32, values: Vec<(u32, Vec<u8>)>) -> Result<()> {
        let mut s = self.set(ndx)?;
        for (num, v) in values {
            if !s.requested.contains(&num) {
                return Err(RemoteError::Refused(format!(
                    "xattr value {num} of set {ndx} was never requested"
                )));
            }
            if let Some(it) = s.items.iter_mut().find(|i| i.num == num) {
                it.value = XattrValue::Full(v);
            }
        }
        Ok(())
    }

    /// Makes `t`'s attributes those of set `ndx`. Abbreviated values not
    /// received are taken from `basis` (the local copy they matched).
    pub fn apply(
        &self,
        ndx: u32,
        t: Target<'_>,
        basis: &[(Vec<u8>, Vec<u8>)],
        root: bool,
        who: &str,
    ) -> Result<()> {
        let wanted: Vec<(Vec<u8>, Vec<u8>)> = {
            let s = self.set(ndx)?;
            let mut w = Vec::with_capacity(s.items.len());
            for it in &s.items {
                let v = match &it.value {
                    XattrValue::Full(v) => v.clone(),
                    abbrev => basis
                        .iter()
                        .find(|(n, v)| *n == it.name && abbrev.matches(v))
                        .map(|(_, v)| v.clone())
                        .ok_or_else(|| {
                            RemoteError::io(
                                format!(
                                    "missing abbreviated xattr value {} for {who}",
                                    String::from_utf8_lossy(&it.name)
                                ),
                                std::io::Error::from(std::io::ErrorKind::NotFound),
                            )
                        })?,
                };
                w.push((it.name.clone(), v));
            }
            w
        };
        let current = read_xattrs(t, root, who)?;
        for (name, _) in &current {
            if !wanted.iter().any(|(n, _)| n == name) {
                remove_raw(t, name).map_err(|e| err("removing an xattr of", who, e))?;
            }
        }
        for (name, v) in &wanted {
            if current.iter().any(|(n, cv)| n == name && cv == v) {
                continue;
            }
            set_raw(t, name, v).map_err(|e| err("setting an xattr of", who, e))?;
        }
        Ok(())
    }
}

/// A borrowed descriptor as a target.
pub fn fd_target<F: AsFd>(f: &F) -> Target<'_> {
    Target::Fd(f.as_fd())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn store_requests_each_value_once_and_applies() {
        let long = vec![5u8; 50];
        let set = Arc::new(XattrSet::from_local(vec![
            (b"user.long".to_vec(), long.clone()),
            (b"user.short".to_vec(), b"s".to_vec()),
            (b"trusted.x".to_vec(), b"t".to_vec()),
        ]));
        // Not root: only user. names are kept.
        let store = XattrStore::new(&[Arc::clone(&set)], false);
        let p = store.plan(0, &[]).unwrap();
        assert!(p.differs && p.wait);
        // Sorted: trusted.x is 1, user.long 2, user.short 3.
        assert_eq!(p.request, [2]);
        // The second file with the same set does not ask again.
        let p2 = store.plan(0, &[]).unwrap();
        assert!(p2.wait && p2.request.is_empty());
        // A value nobody asked for is refused; the requested one is kept.
        assert!(store.fill(0, vec![(3, b"x".to_vec())]).is_err());
        store.fill(0, vec![(2, long.clone())]).unwrap();
        assert_eq!(store.max_num(0).unwrap(), 3);
        // Matching local values: nothing to do.
        let local = vec![
            (b"user.long".to_vec(), long.clone()),
            (b"user.short".to_vec(), b"s".to_vec()),
        ];
        assert_eq!(store.plan(0, &local).unwrap(), XattrPlan::default());
        assert!(store.plan(1, &local).is_err());
        // Applying to a real file (tmpfs keeps user. xattrs).
        let dir = tempfile::tempdir_in("/dev/shm").unwrap();
        let f = std::fs::File::create(dir.path().join("f")).unwrap();
        set_raw(Target::Fd(f.as_fd()), b"user.stale", b"old").unwrap();
        store
            .apply(0, Target::Fd(f.as_fd()), &[], false, "f")
            .unwrap();
        let got = read_xattrs(Target::Fd(f.as_fd()), false, "f").unwrap();
        let mut names: Vec<_> = got.iter().map(|(n, _)| n.clone()).collect();
        names.sort();
        assert_eq!(names, [b"user.long".to_vec(), b"user.short".to_vec()]);
        let path = dir.path().join("f");
        assert_eq!(read_value(Target::Path(&path), b"user.long"), Some(long));
    }

    #[test]
    fn acls_round_trip_through_a_file() {
        let dir = tempfile::tempdir_in("/dev/shm").unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"x").unwrap();
        let acl = RsyncAcl {
            names: vec![IdAccess {
                is_user: true,
                id: 4242,
                perms: 6,
            }],
            ..RsyncAcl::default()
        };
        let ids = (IdMap::default(), IdMap::default());
        apply_acls(
            Target::Path(&path),
            0o100640,
            &acl,
            None,
            (&ids.0, &ids.1),
            "f",
        )
        .unwrap();
        let (back, def) = read_acls(Target::Path(&path), 0o100640, false, "f").unwrap();
        assert!(def.is_empty());
        assert_eq!(back.names, acl.names);
        // A stripped ACL without names removes the extended entries.
        apply_acls(
            Target::Path(&path),
            0o100640,
            &RsyncAcl::default(),
            None,
            (&ids.0, &ids.1),
            "f",
        )
        .unwrap();
        let (back, _) = read_acls(Target::Path(&path), 0o100640, false, "f").unwrap();
        assert!(back.is_empty());
    }
}
