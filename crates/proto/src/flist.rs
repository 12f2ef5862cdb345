//! File-list entries: encoding, decoding (with rsync's field compression
//! against the previous entry), the end marker, uid/gid name lists, the sort
//! order and duplicate clearing.
//!
//! Entry layout (protocol >= 30): flags (varint with VARINT_FLIST_FLAGS, else
//! a byte or two); name (shared-prefix length byte if SAME_NAME, suffix length
//! as a byte or varint if LONG_NAME, suffix bytes); hard-link leader index for
//! followers (entry ends here if the leader is in this list); size
//! varlong(3); mtime varlong(4) unless SAME_TIME; nsec varint if MOD_NSEC;
//! crtime; mode int unless SAME_MODE; atime; uid and gid varints (each with an
//! optional name); rdev for devices; symlink target; `-c` checksum.

use std::collections::HashMap;
use std::sync::Arc;

use crate::acl::{AclDecoder, AclEncoder, AclKind, RsyncAcl};
use crate::error::{Error, Result};
use crate::wire::{put_i32, put_u16, put_varint, put_varlong, Reader};
use crate::xattr::{XattrDecoder, XattrEncoder, XattrSet};

/// Longest path rsync handles.
pub const MAXPATHLEN: usize = 1024;
/// Most entries accepted in one uid or gid list.
pub const MAX_ID_LIST: usize = 1 << 20;

/// Entry flag bits.
pub mod xmit {
    /// A top-level directory (or a filler bit for non-directories).
    pub const TOP_DIR: u32 = 1 << 0;
    /// Mode equals the previous entry's.
    pub const SAME_MODE: u32 = 1 << 1;
    /// A second flag byte follows (byte-flag encoding).
    pub const EXTENDED_FLAGS: u32 = 1 << 2;
    /// uid equals the previous entry's.
    pub const SAME_UID: u32 = 1 << 3;
    /// gid equals the previous entry's.
    pub const SAME_GID: u32 = 1 << 4;
    /// Name shares a prefix with the previous name.
    pub const SAME_NAME: u32 = 1 << 5;
    /// Suffix length is a varint.
    pub const LONG_NAME: u32 = 1 << 6;
    /// mtime equals the previous entry's.
    pub const SAME_TIME: u32 = 1 << 7;
    /// Device major equals the previous device's.
    pub const SAME_RDEV_MAJOR: u32 = 1 << 8;
    /// Directory without content transfer (same bit as SAME_RDEV_MAJOR).
    pub const NO_CONTENT_DIR: u32 = 1 << 8;
    /// Hard-linked entry.
    pub const HLINKED: u32 = 1 << 9;
    /// A user name follows the uid.
    pub const USER_NAME_FOLLOWS: u32 = 1 << 10;
    /// A group name follows the gid.
    pub const GROUP_NAME_FOLLOWS: u32 = 1 << 11;
    /// First of a hard-link group.
    pub const HLINK_FIRST: u32 = 1 << 12;
    /// End-of-list with an io_error value (with EXTENDED_FLAGS, byte-flag form).
    pub const IO_ERROR_ENDLIST: u32 = 1 << 12;
    /// Nanoseconds of mtime follow.
    pub const MOD_NSEC: u32 = 1 << 13;
    /// atime equals the previous entry's.
    pub const SAME_ATIME: u32 = 1 << 14;
    /// crtime equals mtime.
    pub const CRTIME_EQ_MTIME: u32 = 1 << 17;
}

/// File type bits.
pub mod mode {
    /// Type mask.
    pub const S_IFMT: u32 = 0o170000;
    /// Regular file.
    pub const S_IFREG: u32 = 0o100000;
    /// Directory.
    pub const S_IFDIR: u32 = 0o040000;
    /// Symbolic link.
    pub const S_IFLNK: u32 = 0o120000;
    /// Character device.
    pub const S_IFCHR: u32 = 0o020000;
    /// Block device.
    pub const S_IFBLK: u32 = 0o060000;
    /// FIFO.
    pub const S_IFIFO: u32 = 0o010000;
    /// Socket.
    pub const S_IFSOCK: u32 = 0o140000;
}

/// Type of an entry, from its mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileType {
    /// Regular file.
    Regular,
    /// Directory.
    Dir,
    /// Symlink.
    Symlink,
    /// Character or block device.
    Device,
    /// FIFO or socket.
    Special,
}

/// Classifies a mode; `None` for invalid type bits.
pub fn file_type(m: u32) -> Option<FileType> {
    Some(match m & mode::S_IFMT {
        mode::S_IFREG => FileType::Regular,
        mode::S_IFDIR => FileType::Dir,
        mode::S_IFLNK => FileType::Symlink,
        mode::S_IFCHR | mode::S_IFBLK => FileType::Device,
        mode::S_IFIFO | mode::S_IFSOCK => FileType::Special,
        _ => return None,
    })
}

/// Hard-link role of an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HardLink {
    /// Not hard-linked (or hard links not preserved).
    #[default]
    None,
    /// First of its group.
    Leader,
    /// Linked to the entry at this file-list index.
    Follower(i32),
}

/// One file-list entry.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FileEntry {
    /// Path relative to the transfer root, `/`-separated (`.` for the root).
    pub name: Vec<u8>,
    /// Mode including type bits.
    pub mode: u32,
    /// Size in bytes (0 for directories and devices).
    pub size: i64,
    /// Modification time (seconds).
    pub mtime: i64,
    /// Nanoseconds of the modification time.
    pub mtime_nsec: u32,
    /// Access time (with --atimes).
    pub atime: i64,
    /// Creation time (with --crtimes).
    pub crtime: i64,
    /// Owner id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
    /// Owner name sent inline (incremental recursion only).
    pub user_name: Option<Vec<u8>>,
    /// Group name sent inline (incremental recursion only).
    pub group_name: Option<Vec<u8>>,
    /// Device numbers (major, minor).
    pub rdev: (u32, u32),
    /// Symlink target.
    pub link_target: Option<Vec<u8>>,
    /// Hard-link role.
    pub hardlink: HardLink,
    /// `-c` checksum of a regular file.
    pub checksum: Option<Vec<u8>>,
    /// A top-level directory of the transfer.
    pub top_dir: bool,
    /// A directory whose contents are not transferred.
    pub no_content_dir: bool,
    /// `-A`: the access ACL as sent (without what the mode says); `None`
    /// sends an ACL equal to the mode.
    pub acl: Option<Arc<RsyncAcl>>,
    /// `-A`: a directory's default ACL; `None` sends "no default ACL".
    pub def_acl: Option<Arc<RsyncAcl>>,
    /// `-X`: the extended attributes; `None` sends an empty set.
    pub xattrs: Option<Arc<XattrSet>>,
    /// `-X`, receiving side: the index of the entry's set in the decoder's
    /// cache (entries share sets).
    pub xattr_ndx: Option<u32>,
}

impl FileEntry {
    /// The entry's type (`None` if the mode is invalid).
    pub fn file_type(&self) -> Option<FileType> {
        file_type(self.mode)
    }

    /// True for directories.
    pub fn is_dir(&self) -> bool {
        self.mode & mode::S_IFMT == mode::S_IFDIR
    }
}

/// Options that shape the file-list encoding (both sides must agree).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlistOptions {
    /// Negotiated protocol.
    pub protocol: i32,
    /// VARINT_FLIST_FLAGS in force.
    pub varint_flags: bool,
    /// -o
    pub preserve_uid: bool,
    /// -g
    pub preserve_gid: bool,
    /// -l
    pub preserve_links: bool,
    /// --devices
    pub preserve_devices: bool,
    /// --specials
    pub preserve_specials: bool,
    /// -H
    pub preserve_hard_links: bool,
    /// --atimes
    pub atimes: bool,
    /// --crtimes
    pub crtimes: bool,
    /// -c: the length of the per-file checksum.
    pub checksum_len: Option<usize>,
    /// Incremental recursion.
    pub inc_recurse: bool,
    /// --numeric-ids
    pub numeric_ids: bool,
    /// ID0_NAMES in force.
    pub id0_names: bool,
    /// SAFE_FLIST in force (or protocol >= 31).
    pub safe_flist: bool,
    /// -A: ACL blocks follow entries.
    pub preserve_acls: bool,
    /// -X: xattr blocks follow entries.
    pub preserve_xattrs: bool,
    /// -R: names may start with `/` (an absolute source path sent whole); the receiver
    /// strips the slashes after sorting, as rsync's `flist_sort_and_clean` does
    /// ([`strip_root`]).
    pub relative_paths: bool,
}

impl FlistOptions {
    /// Options for `-logDtpr` at the given protocol with varint flags.
    pub fn archive(protocol: i32) -> Self {
        FlistOptions {
            protocol,
            varint_flags: true,
            preserve_uid: true,
            preserve_gid: true,
            preserve_links: true,
            preserve_devices: true,
            preserve_specials: true,
            preserve_hard_links: false,
            atimes: false,
            crtimes: false,
            checksum_len: None,
            inc_recurse: false,
            numeric_ids: false,
            id0_names: true,
            safe_flist: true,
            preserve_acls: false,
            preserve_xattrs: false,
            relative_paths: false,
        }
    }

    /// True when uid and gid name lists follow the file list.
    pub fn id_lists_follow(&self) -> bool {
        !self.inc_recurse
            && !self.numeric_ids
            && (self.preserve_uid || self.preserve_gid || self.preserve_acls)
    }

    /// True when a uid list follows the file list.
    pub fn uid_list_follows(&self) -> bool {
        self.id_lists_follow() && (self.preserve_uid || self.preserve_acls)
    }

    /// True when a gid list follows the file list.
    pub fn gid_list_follows(&self) -> bool {
        self.id_lists_follow() && (self.preserve_gid || self.preserve_acls)
    }

    fn rdev_sent(&self, t: FileType) -> bool {
        (self.preserve_devices && t == FileType::Device)
            || (self.preserve_specials && t == FileType::Special && self.protocol < 31)
    }
}

/// Compression state shared by consecutive entries.
#[derive(Debug, Clone, Default)]
struct Prev {
    name: Vec<u8>,
    mode: u32,
    mtime: i64,
    atime: i64,
    uid: u32,
    gid: u32,
    rdev_major: u32,
    first: bool,
}

/// File-list encoder (the sending side).
#[derive(Debug, Clone)]
pub struct FlistEncoder {
    opts: FlistOptions,
    prev: Prev,
    acls: AclEncoder,
    xattrs: XattrEncoder,
}

impl FlistEncoder {
    /// A fresh encoder.
    pub fn new(opts: FlistOptions) -> Self {
        FlistEncoder {
            opts,
            prev: Prev {
                first: true,
                ..Prev::default()
            },
            acls: AclEncoder::default(),
            xattrs: XattrEncoder::default(),
        }
    }

    /// The options the encoder was made with.
    pub fn options(&self) -> &FlistOptions {
        &self.opts
    }

    /// Appends one entry (with its ACL and xattr blocks). `first_ndx` is the
    /// index of the first entry of the current list (0 without incremental
    /// recursion).
    pub fn encode(&mut self, e: &FileEntry, first_ndx: i32, out: &mut Vec<u8>) -> Result<()> {
        self.encode_entry(e, first_ndx, out)?;
        let t = e.file_type();
        if self.opts.preserve_acls && t != Some(FileType::Symlink) {
            let empty = RsyncAcl::default();
            self.acls
                .encode(AclKind::Access, e.acl.as_deref().unwrap_or(&empty), out);
            if t == Some(FileType::Dir) {
                self.acls.encode(
                    AclKind::Default,
                    e.def_acl.as_deref().unwrap_or(&empty),
                    out,
                );
            }
        }
        if self.opts.preserve_xattrs {
            let empty = XattrSet::default();
            self.xattrs
                .encode(e.xattrs.as_deref().unwrap_or(&empty), out)?;
        }
        Ok(())
    }

    fn encode_entry(&mut self, e: &FileEntry, first_ndx: i32, out: &mut Vec<u8>) -> Result<()> {
        let o = &self.opts;
        let t = e.file_type().ok_or_else(|| {
            Error::unencodable("file entry", format!("invalid mode {:o}", e.mode))
        })?;
        validate_name(&e.name).map_err(|err| Error::unencodable("file name", err.to_string()))?;
        let p = &mut self.prev;
        let mut x: u32 = 0;
        if t == FileType::Dir {
            if e.no_content_dir {
                x |= xmit::NO_CONTENT_DIR;
            }
            if e.top_dir {
                x |= xmit::TOP_DIR;
            }
        }
        if !p.first && e.mode == p.mode {
            x |= xmit::SAME_MODE;
        }
        p.mode = e.mode;
        let rdev_sent = o.rdev_sent(t);
        if rdev_sent {
            if !p.first && e.rdev.0 == p.rdev_major {
                x |= xmit::SAME_RDEV_MAJOR;
            }
            p.rdev_major = e.rdev.0;
        }
        if !o.preserve_uid || (!p.first && e.uid == p.uid) {
            x |= xmit::SAME_UID;
        } else {
            p.uid = e.uid;
            if o.inc_recurse && e.user_name.is_some() && !o.numeric_ids {
                x |= xmit::USER_NAME_FOLLOWS;
            }
        }
        if !o.preserve_gid || (!p.first && e.gid == p.gid) {
            x |= xmit::SAME_GID;
        } else {
            p.gid = e.gid;
            if o.inc_recurse && e.group_name.is_some() && !o.numeric_ids {
                x |= xmit::GROUP_NAME_FOLLOWS;
            }
        }
        if !p.first && e.mtime == p.mtime {
            x |= xmit::SAME_TIME;
        }
        p.mtime = e.mtime;
        if e.mtime_nsec != 0 && o.protocol >= 31 {
            x |= xmit::MOD_NSEC;
        }
        let send_atime = o.atimes && t != FileType::Dir;
        if send_atime {
            if !p.first && e.atime == p.atime {
                x |= xmit::SAME_ATIME;
            }
            p.atime = e.atime;
        }
        if o.crtimes && e.crtime == e.mtime {
            x |= xmit::CRTIME_EQ_MTIME;
        }
        let leader_ndx = match (o.preserve_hard_links, e.hardlink) {
            (true, HardLink::Leader) => {
                x |= xmit::HLINKED | xmit::HLINK_FIRST;
                None
            }
            (true, HardLink::Follower(i)) => {
                x |= xmit::HLINKED;
                Some(i)
            }
            _ => None,
        };
        let l1 = common_prefix(&p.name, &e.name).min(255);
        let l2 = e.name.len() - l1;
        if l1 > 0 {
            x |= xmit::SAME_NAME;
        }
        if l2 > 255 {
            x |= xmit::LONG_NAME;
        }
        if o.varint_flags {
            put_varint(
                out,
                if x == 0 {
                    xmit::EXTENDED_FLAGS as i32
                } else {
                    x as i32
                },
            );
        } else {
            if x == 0 && t != FileType::Dir {
                x |= xmit::TOP_DIR;
            }
            if x & 0xFF00 != 0 || x == 0 {
                x |= xmit::EXTENDED_FLAGS;
                put_u16(out, x as u16);
            } else {
                out.push(x as u8);
            }
        }
        if x & xmit::SAME_NAME != 0 {
            out.push(l1 as u8);
        }
        if x & xmit::LONG_NAME != 0 {
            put_varint(out, l2 as i32);
        } else {
            out.push(l2 as u8);
        }
        out.extend_from_slice(&e.name[l1..]);
        p.name.clone_from(&e.name);
        p.first = false;
        if let Some(i) = leader_ndx {
            put_varint(out, i);
            if i >= first_ndx {
                return Ok(());
            }
        }
        put_varlong(out, e.size, 3);
        if x & xmit::SAME_TIME == 0 {
            put_varlong(out, e.mtime, 4);
        }
        if x & xmit::MOD_NSEC != 0 {
            put_varint(out, e.mtime_nsec as i32);
        }
        if o.crtimes && x & xmit::CRTIME_EQ_MTIME == 0 {
            put_varlong(out, e.crtime, 4);
        }
        if x & xmit::SAME_MODE == 0 {
            put_i32(out, e.mode as i32);
        }
        if send_atime && x & xmit::SAME_ATIME == 0 {
            put_varlong(out, e.atime, 4);
        }
        if o.preserve_uid && x & xmit::SAME_UID == 0 {
            put_varint(out, e.uid as i32);
            if x & xmit::USER_NAME_FOLLOWS != 0 {
                put_short_name(out, e.user_name.as_deref().unwrap_or_default());
            }
        }
        if o.preserve_gid && x & xmit::SAME_GID == 0 {
            put_varint(out, e.gid as i32);
            if x & xmit::GROUP_NAME_FOLLOWS != 0 {
                put_short_name(out, e.group_name.as_deref().unwrap_or_default());
            }
        }
        if rdev_sent {
            if x & xmit::SAME_RDEV_MAJOR == 0 {
                put_varint(out, e.rdev.0 as i32);
            }
            put_varint(out, e.rdev.1 as i32);
        }
        if o.preserve_links && t == FileType::Symlink {
            let target = e.link_target.as_deref().unwrap_or_default();
            if target.len() >= MAXPATHLEN {
                return Err(Error::unencodable(
                    "symlink target",
                    format!("{} bytes", target.len()),
                ));
            }
            put_varint(out, target.len() as i32);
            out.extend_from_slice(target);
        }
        if let (Some(n), FileType::Regular) = (o.checksum_len, t) {
            let mut sum = e.checksum.clone().unwrap_or_default();
            sum.resize(n, 0);
            out.extend_from_slice(&sum);
        }
        Ok(())
    }

    /// Appends the end-of-list marker with the sender's io_error flags.
    pub fn encode_end(&self, io_error: i32, out: &mut Vec<u8>) {
        if self.opts.varint_flags {
            put_varint(out, 0);
            put_varint(out, io_error);
        } else if io_error != 0 && self.opts.safe_flist {
            put_u16(out, (xmit::EXTENDED_FLAGS | xmit::IO_ERROR_ENDLIST) as u16);
            put_varint(out, io_error);
        } else {
            out.push(0);
        }
    }
}

fn put_short_name(out: &mut Vec<u8>, name: &[u8]) {
    let n = name.len().min(255);
    out.push(n as u8);
    out.extend_from_slice(&name[..n]);
}

fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// Checks that a received name is a clean relative path: no NUL, not
/// absolute, no `..`, no empty or `.` components (except the lone `.`).
pub fn validate_name(name: &[u8]) -> Result<()> {
    if name.is_empty() {
        return Err(Error::malformed("file name", "empty name"));
    }
    if name == b"." {
        return Ok(());
    }
    if name.contains(&0) {
        return Err(Error::malformed("file name", "NUL byte in name"));
    }
    if name[0] == b'/' {
        return Err(Error::malformed(
            "file name",
            format!("absolute path {:?}", String::from_utf8_lossy(name)),
        ));
    }
    for comp in name.split(|&b| b == b'/') {
        if comp == b".." {
            return Err(Error::malformed(
                "file name",
                format!("unsafe path {:?}", String::from_utf8_lossy(name)),
            ));
        }
        if comp.is_empty() || comp == b"." {
            return Err(Error::malformed(
                "file name",
                format!("unclean path {:?}", String::from_utf8_lossy(name)),
            ));
        }
    }
    Ok(())
}

/// The name without its leading slashes when it has any (`Some(b"")` for a name of slashes
/// only). Only `-R` lists carry such names; the receiver sorts the list first and strips
/// them after, so that both sides index the same order.
pub fn strip_root(name: &[u8]) -> Option<&[u8]> {
    match name.first() {
        Some(b'/') => Some(&name[name.iter().take_while(|&&b| b == b'/').count()..]),
        _ => None,
    }
}

/// One item from the file-list stream.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(clippy::large_enum_variant)] // entries are the common case; boxing each costs more
pub enum FlistItem {
    /// An entry.
    Entry(FileEntry),
    /// The end of the list with the sender's io_error flags.
    End {
        /// io_error flags.
        io_error: i32,
    },
}

/// File-list decoder (the receiving side).
#[derive(Debug, Clone)]
pub struct FlistDecoder {
    opts: FlistOptions,
    prev: Prev,
    ndx_start: i32,
    count: i32,
    leaders: HashMap<i32, FileEntry>,
    acls: AclDecoder,
    xattrs: XattrDecoder,
}

impl FlistDecoder {
    /// A fresh decoder for a list whose first index is `ndx_start`.
    pub fn new(opts: FlistOptions, ndx_start: i32) -> Self {
        FlistDecoder {
            opts,
            prev: Prev::default(),
            ndx_start,
            count: 0,
            leaders: HashMap::new(),
            acls: AclDecoder::default(),
            xattrs: XattrDecoder::default(),
        }
    }

    /// Starts the next list of an incremental recursion at `ndx_start`.
    /// The name, mode, owner and time compression carries over from the
    /// previous list (rsync keeps that state for the whole session); hard
    /// links can abbreviate only within a list, so its leaders are dropped.
    pub fn start_list(&mut self, ndx_start: i32) {
        self.ndx_start = ndx_start;
        self.count = 0;
        self.leaders.clear();
    }

    /// The xattr sets received so far (`FileEntry::xattr_ndx` indexes it).
    pub fn xattr_sets(&self) -> &[Arc<XattrSet>] {
        self.xattrs.sets()
    }

    /// Entries decoded so far.
    pub fn count(&self) -> i32 {
        self.count
    }

    /// Decodes one item. On any error the reader and the state are unchanged.
    pub fn decode(&mut self, r: &mut Reader<'_>) -> Result<FlistItem> {
        let mut rr = r.clone();
        let mut prev = self.prev.clone();
        let mut item = self.decode_inner(&mut rr, &mut prev)?;
        let (mut acc, mut def, mut xa) = (None, None, None);
        if let FlistItem::Entry(e) = &mut item {
            let t = e.file_type();
            if self.opts.preserve_acls && t != Some(FileType::Symlink) {
                let a = self.acls.decode(AclKind::Access, &mut rr)?;
                e.acl = Some(std::sync::Arc::clone(a.acl()));
                acc = Some(a);
                if t == Some(FileType::Dir) {
                    let d = self.acls.decode(AclKind::Default, &mut rr)?;
                    e.def_acl = Some(std::sync::Arc::clone(d.acl()));
                    def = Some(d);
                }
            }
            if self.opts.preserve_xattrs {
                let (ndx, lit) = self.xattrs.decode(&mut rr)?;
                e.xattr_ndx = Some(ndx);
                e.xattrs = match &lit {
                    Some(s) => Some(std::sync::Arc::clone(s)),
                    None => self.xattrs.get(ndx).cloned(),
                };
                xa = Some(lit);
            }
        }
        if let Some(a) = &acc {
            self.acls.commit(AclKind::Access, a);
        }
        if let Some(d) = &def {
            self.acls.commit(AclKind::Default, d);
        }
        if let Some(x) = xa {
            self.xattrs.commit(x);
        }
        if let FlistItem::Entry(e) = &item {
            if e.hardlink == HardLink::Leader {
                self.leaders.insert(self.ndx_start + self.count, e.clone());
            }
            self.count += 1;
        }
        self.prev = prev;
        *r = rr;
        Ok(item)
    }

    fn decode_inner(&self, r: &mut Reader<'_>, p: &mut Prev) -> Result<FlistItem> {
        let o = &self.opts;
        let x: u32 = if o.varint_flags {
            let f = r.varint()?;
            if f == 0 {
                let io_error = r.varint()?;
                return Ok(FlistItem::End { io_error });
            }
            f as u32
        } else {
            let mut f = r.u8()? as u32;
            if f == 0 {
                return Ok(FlistItem::End { io_error: 0 });
            }
            if f & xmit::EXTENDED_FLAGS != 0 {
                f |= (r.u8()? as u32) << 8;
            }
            if f == xmit::EXTENDED_FLAGS | xmit::IO_ERROR_ENDLIST {
                if !o.safe_flist {
                    return Err(Error::malformed(
                        "file list",
                        format!("invalid flags {f:#x}"),
                    ));
                }
                let io_error = r.varint()?;
                return Ok(FlistItem::End { io_error });
            }
            f
        };
        let l1 = if x & xmit::SAME_NAME != 0 {
            r.u8()? as usize
        } else {
            0
        };
        let l2 = if x & xmit::LONG_NAME != 0 {
            let v = r.varint()?;
            usize::try_from(v)
                .map_err(|_| Error::malformed("file name", format!("negative length {v}")))?
        } else {
            r.u8()? as usize
        };
        if l1 > p.name.len() {
            return Err(Error::malformed(
                "file name",
                format!("shared prefix {l1} longer than previous name"),
            ));
        }
        if l1 + l2 >= MAXPATHLEN {
            return Err(Error::malformed(
                "file name",
                format!("name of {} bytes", l1 + l2),
            ));
        }
        let mut name = p.name[..l1].to_vec();
        name.extend_from_slice(r.bytes(l2)?);
        match strip_root(&name) {
            // -R: what follows the leading slashes must be clean.
            Some(rest) if self.opts.relative_paths => {
                if !rest.is_empty() {
                    validate_name(rest)?;
                }
            }
            _ => validate_name(&name)?,
        }
        p.name.clone_from(&name);
        let mut e = FileEntry {
            name,
            top_dir: false,
            ..FileEntry::default()
        };

        if o.preserve_hard_links && x & xmit::HLINKED != 0 {
            if x & xmit::HLINK_FIRST != 0 {
                e.hardlink = HardLink::Leader;
            } else {
                let idx = r.varint()?;
                let limit = self.ndx_start + self.count;
                if idx < 0 || idx >= limit {
                    return Err(Error::malformed(
                        "file list",
                        format!("hard-link reference {idx} out of range (< {limit})"),
                    ));
                }
                e.hardlink = HardLink::Follower(idx);
                if idx >= self.ndx_start {
                    let leader = self.leaders.get(&idx).ok_or_else(|| {
                        Error::malformed(
                            "file list",
                            format!("hard-link reference {idx} is not a group leader"),
                        )
                    })?;
                    e.size = leader.size;
                    e.mtime = leader.mtime;
                    e.mtime_nsec = leader.mtime_nsec;
                    e.mode = leader.mode;
                    e.atime = leader.atime;
                    e.crtime = leader.crtime;
                    e.uid = leader.uid;
                    e.gid = leader.gid;
                    e.rdev = leader.rdev;
                    e.link_target.clone_from(&leader.link_target);
                    e.checksum.clone_from(&leader.checksum);
                    p.mode = e.mode;
                    p.mtime = e.mtime;
                    p.atime = e.atime;
                    p.uid = e.uid;
                    p.gid = e.gid;
                    return Ok(FlistItem::Entry(e));
                }
            }
        }

        e.size = r.varlong(3)?;
        if e.size < 0 {
            return Err(Error::malformed(
                "file list",
                format!("negative size {}", e.size),
            ));
        }
        if x & xmit::SAME_TIME == 0 {
            p.mtime = r.varlong(4)?;
        }
        e.mtime = p.mtime;
        if x & xmit::MOD_NSEC != 0 {
            let ns = r.varint()?;
            if !(0..=999_999_999).contains(&ns) {
                return Err(Error::malformed(
                    "file list",
                    format!("nanoseconds {ns} out of range"),
                ));
            }
            e.mtime_nsec = ns as u32;
        }
        if o.crtimes {
            e.crtime = if x & xmit::CRTIME_EQ_MTIME != 0 {
                e.mtime
            } else {
                r.varlong(4)?
            };
        }
        if x & xmit::SAME_MODE == 0 {
            p.mode = r.i32()? as u32;
        }
        e.mode = p.mode;
        let t = file_type(e.mode).ok_or_else(|| {
            Error::malformed(
                "file list",
                format!(
                    "invalid file mode {:o} for {:?}",
                    e.mode,
                    String::from_utf8_lossy(&e.name)
                ),
            )
        })?;
        if t == FileType::Dir {
            e.top_dir = x & xmit::TOP_DIR != 0;
            e.no_content_dir = x & xmit::NO_CONTENT_DIR != 0;
        }
        if o.atimes && t != FileType::Dir {
            if x & xmit::SAME_ATIME == 0 {
                p.atime = r.varlong(4)?;
            }
            e.atime = p.atime;
        }
        if o.preserve_uid && x & xmit::SAME_UID == 0 {
            p.uid = r.varint()? as u32;
            if x & xmit::USER_NAME_FOLLOWS != 0 {
                let n = r.u8()? as usize;
                e.user_name = Some(r.bytes(n)?.to_vec());
            }
        }
        e.uid = p.uid;
        if o.preserve_gid && x & xmit::SAME_GID == 0 {
            p.gid = r.varint()? as u32;
            if x & xmit::GROUP_NAME_FOLLOWS != 0 {
                let n = r.u8()? as usize;
                e.group_name = Some(r.bytes(n)?.to_vec());
            }
        }
        e.gid = p.gid;
        if o.rdev_sent(t) {
            if x & xmit::SAME_RDEV_MAJOR == 0 {
                p.rdev_major = r.varint()? as u32;
            }
            e.rdev = (p.rdev_major, r.varint()? as u32);
            e.size = 0;
        } else if t == FileType::Device {
            e.size = 0;
        }
        if o.preserve_links && t == FileType::Symlink {
            let n = r.varint()?;
            if n < 0 || n as usize >= MAXPATHLEN {
                return Err(Error::malformed("symlink target", format!("length {n}")));
            }
            e.link_target = Some(r.bytes(n as usize)?.to_vec());
        }
        if let (Some(n), FileType::Regular) = (o.checksum_len, t) {
            e.checksum = Some(r.bytes(n)?.to_vec());
        }
        Ok(FlistItem::Entry(e))
    }
}

/// A uid or gid list: (id, name) pairs.
pub type IdList = Vec<(u32, Vec<u8>)>;

/// Appends one id list (uids or gids). Id 0 is never listed; with
/// `id0_names` the terminator carries the name of id 0.
pub fn encode_id_list(
    list: &[(u32, Vec<u8>)],
    id0_name: Option<&[u8]>,
    id0_names: bool,
    out: &mut Vec<u8>,
) {
    for (id, name) in list {
        if *id != 0 && !name.is_empty() {
            put_varint(out, *id as i32);
            put_short_name(out, name);
        }
    }
    put_varint(out, 0);
    if id0_names {
        put_short_name(out, id0_name.unwrap_or_default());
    }
}

/// Decodes an id list entry by entry, so the whole list never has to be
/// buffered. `feed` returns the list once its terminator has been read.
#[derive(Debug, Clone, Default)]
pub struct IdListDecoder {
    id0_names: bool,
    list: IdList,
    ids_done: bool,
}

impl IdListDecoder {
    /// A decoder; `id0_names` when ID0_NAMES is in force.
    pub fn new(id0_names: bool) -> Self {
        IdListDecoder {
            id0_names,
            ..Self::default()
        }
    }

    /// Consumes complete entries from `r`; `Ok(None)` means "feed more".
    pub fn feed(&mut self, r: &mut Reader<'_>) -> Result<Option<IdList>> {
        while !self.ids_done {
            let mut rr = r.clone();
            let id = match rr.varint() {
                Ok(v) => v,
                Err(Error::Incomplete) => return Ok(None),
                Err(e) => return Err(e),
            };
            if id == 0 {
                *r = rr;
                self.ids_done = true;
                break;
            }
            if self.list.len() >= MAX_ID_LIST {
                return Err(Error::malformed("id list", "too many entries"));
            }
            let Ok(n) = rr.u8() else { return Ok(None) };
            let Ok(name) = rr.bytes(n as usize) else {
                return Ok(None);
            };
            self.list.push((id as u32, name.to_vec()));
            *r = rr;
        }
        if self.id0_names {
            let mut rr = r.clone();
            let Ok(n) = rr.u8() else { return Ok(None) };
            let Ok(name) = rr.bytes(n as usize) else {
                return Ok(None);
            };
            if !name.is_empty() {
                self.list.push((0, name.to_vec()));
            }
            *r = rr;
        }
        Ok(Some(std::mem::take(&mut self.list)))
    }
}

/// Decodes one id list; incomplete until the whole list is buffered. The
/// id-0 name (if sent) is returned as an entry with id 0.
pub fn decode_id_list(r: &mut Reader<'_>, id0_names: bool) -> Result<IdList> {
    let mut rr = r.clone();
    let mut list = Vec::new();
    loop {
        let id = rr.varint()?;
        if id == 0 {
            break;
        }
        if list.len() >= MAX_ID_LIST {
            return Err(Error::malformed("id list", "too many entries"));
        }
        let n = rr.u8()? as usize;
        list.push((id as u32, rr.bytes(n)?.to_vec()));
    }
    if id0_names {
        let n = rr.u8()? as usize;
        let name = rr.bytes(n)?.to_vec();
        if !name.is_empty() {
            list.push((0, name));
        }
    }
    *r = rr;
    Ok(list)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Item,
    Path,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seg {
    Dir,
    Slash,
    Base,
    Trailing,
}

/// A walk over a name the way rsync compares names: directory part, a slash,
/// the base name, and a trailing slash for directories.
struct NameCursor<'a> {
    base: &'a [u8],
    is_dir: bool,
    s: &'a [u8],
    seg: Seg,
    kind: Kind,
}

impl<'a> NameCursor<'a> {
    fn new(name: &'a [u8], is_dir: bool) -> Self {
        let (dir, base) = match name.iter().rposition(|&b| b == b'/') {
            Some(i) => (Some(&name[..i]), &name[i + 1..]),
            None => (None, name),
        };
        let mut c = NameCursor {
            base,
            is_dir,
            s: b"",
            seg: Seg::Dir,
            kind: Kind::Path,
        };
        match dir {
            Some(d) => c.s = d,
            None => c.enter_base(),
        }
        c
    }

    fn enter_base(&mut self) {
        self.kind = if self.is_dir { Kind::Path } else { Kind::Item };
        if self.kind == Kind::Path && self.base == b"." {
            self.kind = Kind::Item;
            self.seg = Seg::Trailing;
            self.s = b"";
        } else {
            self.seg = Seg::Base;
            self.s = self.base;
        }
    }

    fn next_segment(&mut self) {
        match self.seg {
            Seg::Dir => {
                self.seg = Seg::Slash;
                self.s = b"/";
            }
            Seg::Slash => self.enter_base(),
            Seg::Base => {
                self.seg = Seg::Trailing;
                if self.kind == Kind::Path {
                    self.s = b"/";
                } else {
                    self.kind = Kind::Item;
                }
            }
            Seg::Trailing => self.kind = Kind::Item,
        }
    }
}

/// rsync's file-list order (protocol >= 29): within a directory, files come
/// before subdirectories; each directory is followed by its contents; `.`
/// comes first.
pub fn compare_names(a: &[u8], a_is_dir: bool, b: &[u8], b_is_dir: bool) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    let mut c1 = NameCursor::new(a, a_is_dir);
    let mut c2 = NameCursor::new(b, b_is_dir);
    if c1.kind != c2.kind {
        return c1.kind.cmp(&c2.kind);
    }
    loop {
        if c1.s.is_empty() {
            c1.next_segment();
            if !c2.s.is_empty() && c1.kind != c2.kind {
                return c1.kind.cmp(&c2.kind);
            }
        }
        if c2.s.is_empty() {
            let trailing = c2.seg == Seg::Trailing;
            c2.next_segment();
            if trailing && c1.s.is_empty() {
                return Ordering::Equal;
            }
            if c1.kind != c2.kind {
                return c1.kind.cmp(&c2.kind);
            }
        }
        let x = c1.s.first().copied().unwrap_or(0);
        let y = c2.s.first().copied().unwrap_or(0);
        if !c1.s.is_empty() {
            c1.s = &c1.s[1..];
        }
        if !c2.s.is_empty() {
            c2.s = &c2.s[1..];
        }
        if x != y {
            return x.cmp(&y);
        }
    }
}

/// Compares two entries in file-list order.
pub fn compare_entries(a: &FileEntry, b: &FileEntry) -> std::cmp::Ordering {
    compare_names(&a.name, a.is_dir(), &b.name, b.is_dir())
}

/// Sorts entries into file-list order (stable).
pub fn sort_entries(entries: &mut [FileEntry]) {
    entries.sort_by(compare_entries);
}

/// Marks duplicates in a sorted list the way a receiver does: of two entries
/// with the same name the first is kept, unless the later one is a directory
/// and the earlier is not. Returns one "active" flag per entry; indices stay stable.
pub fn clear_duplicates(sorted: &[FileEntry]) -> Vec<bool> {
    let mut active = vec![true; sorted.len()];
    let mut seen: HashMap<&[u8], usize> = HashMap::new();
    for (i, e) in sorted.iter().enumerate() {
        match seen.get(e.name.as_slice()).copied() {
            None => {
                seen.insert(&e.name, i);
            }
            Some(j) => {
                if e.is_dir() && !sorted[j].is_dir() {
                    active[j] = false;
                    seen.insert(&e.name, i);
                } else {
                    active[i] = false;
                }
            }
        }
    }
    active
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn reg(name: &str, size: i64, mtime: i64) -> FileEntry {
        FileEntry {
            name: name.as_bytes().to_vec(),
            mode: mode::S_IFREG | 0o644,
            size,
            mtime,
            uid: 1000,
            gid: 1000,
            ..FileEntry::default()
        }
    }

    fn dir(name: &str) -> FileEntry {
        FileEntry {
            name: name.as_bytes().to_vec(),
            mode: mode::S_IFDIR | 0o755,
            mtime: 1_600_000_000,
            uid: 1000,
            gid: 1000,
            ..FileEntry::default()
        }
    }

    #[test]
    fn known_encoding_of_two_entries() {
        let opts = FlistOptions {
            preserve_uid: false,
            preserve_gid: false,
            ..FlistOptions::archive(31)
        };
        let mut enc = FlistEncoder::new(opts);
        let mut out = Vec::new();
        let mut d = dir(".");
        d.top_dir = true;
        enc.encode(&d, 0, &mut out).unwrap();
        enc.encode(&reg("a", 5, 1_600_000_000), 0, &mut out)
            .unwrap();
        enc.encode_end(0, &mut out);
        let mtime = 1_600_000_000i64.to_le_bytes();
        let mut want = vec![
            0x19, // TOP_DIR | SAME_UID | SAME_GID
            1, b'.', // name
            0, 0, 0, // size varlong(3)
            mtime[3], mtime[0], mtime[1], mtime[2], // mtime varlong(4)
        ];
        want.extend_from_slice(&(0o40755i32).to_le_bytes());
        // Second: SAME_UID|SAME_GID|SAME_TIME = 0x98 needs two varint bytes.
        want.extend_from_slice(&[0x80, 0x98, 1, b'a', 0, 5, 0]);
        want.extend_from_slice(&(0o100644i32).to_le_bytes());
        want.extend_from_slice(&[0, 0]);
        assert_eq!(out, want);
    }

    #[test]
    fn incremental_lists_share_the_compression_state() {
        // One encoder for the session: the second list's first name shares
        // its prefix with the first list's last, and its time and owner are
        // "same as before"; a decoder restarted per list would misread it.
        let opts = FlistOptions {
            inc_recurse: true,
            ..FlistOptions::archive(32)
        };
        let mut enc = FlistEncoder::new(opts.clone());
        let mut out = Vec::new();
        let first = [dir("."), dir("dir"), reg("file", 3, 1_600_000_000)];
        let second = [
            reg("dir/a", 1, 1_600_000_000),
            reg("dir/b", 2, 1_600_000_000),
        ];
        for e in &first {
            enc.encode(e, 1, &mut out).unwrap();
        }
        enc.encode_end(0, &mut out);
        let split = out.len();
        for e in &second {
            enc.encode(e, 5, &mut out).unwrap();
        }
        enc.encode_end(0, &mut out);
        let mut dec = FlistDecoder::new(opts.clone(), 1);
        let mut r = Reader::new(&out);
        let read = |dec: &mut FlistDecoder, r: &mut Reader<'_>| {
            let mut v = Vec::new();
            while let FlistItem::Entry(e) = dec.decode(r).unwrap() {
                v.push((e.name, e.size, e.mtime, e.uid));
            }
            v
        };
        assert_eq!(read(&mut dec, &mut r).len(), 3);
        assert_eq!(r.position(), split);
        dec.start_list(5);
        assert_eq!(dec.count(), 0);
        let got = read(&mut dec, &mut r);
        let want: Vec<_> = second
            .iter()
            .map(|e| (e.name.clone(), e.size, e.mtime, e.uid))
            .collect();
        assert_eq!(got, want);
        // A fresh decoder for the second list alone does not read it right.
        let mut fresh = FlistDecoder::new(opts, 5);
        let mut r = Reader::new(&out[split..]);
        let wrong = match fresh.decode(&mut r) {
            Ok(FlistItem::Entry(e)) => e.name != b"dir/a",
            _ => true,
        };
        assert!(wrong);
    }

    fn round_trip(opts: FlistOptions, entries: &[FileEntry]) -> Vec<FileEntry> {
        let mut enc = FlistEncoder::new(opts.clone());
        let mut out = Vec::new();
        for e in entries {
            enc.encode(e, 0, &mut out).unwrap();
        }
        enc.encode_end(3, &mut out);
        let mut dec = FlistDecoder::new(opts, 0);
        let mut got = Vec::new();
        // Feed byte by byte to exercise Incomplete handling.
        let mut buf = Vec::new();
        let mut src = out.iter();
        loop {
            let mut r = Reader::new(&buf);
            match dec.decode(&mut r) {
                Ok(FlistItem::Entry(e)) => {
                    let n = r.position();
                    buf.drain(..n);
                    got.push(e);
                }
                Ok(FlistItem::End { io_error }) => {
                    assert_eq!(io_error, 3);
                    assert_eq!(r.position(), buf.len());
                    break;
                }
                Err(Error::Incomplete) => buf.push(*src.next().expect("stream ended early")),
                Err(e) => panic!("{e}"),
            }
        }
        got
    }

    #[test]
    fn acl_and_xattr_blocks_round_trip() {
        use crate::acl::IdAccess;
        use crate::xattr::XattrValue;
        let mut opts = FlistOptions::archive(31);
        opts.preserve_acls = true;
        opts.preserve_xattrs = true;
        opts.preserve_hard_links = true;
        let acl = Arc::new(RsyncAcl {
            group_obj: Some(5),
            names: vec![IdAccess {
                is_user: true,
                id: 1234,
                perms: 6,
            }],
            ..RsyncAcl::default()
        });
        let xa = Arc::new(XattrSet::from_local(vec![
            (b"user.big".to_vec(), vec![1u8; 200]),
            (b"user.small".to_vec(), b"v".to_vec()),
        ]));
        let mut d = dir("d");
        d.def_acl = Some(Arc::clone(&acl));
        d.xattrs = Some(Arc::clone(&xa));
        let mut a = reg("d/a", 10, 5);
        a.acl = Some(Arc::clone(&acl));
        a.xattrs = Some(Arc::clone(&xa));
        a.hardlink = HardLink::Leader;
        let mut b = reg("d/b", 10, 5);
        b.acl = Some(Arc::clone(&acl));
        b.xattrs = Some(Arc::clone(&xa));
        b.hardlink = HardLink::Follower(1);
        let l = FileEntry {
            name: b"d/l".to_vec(),
            mode: mode::S_IFLNK | 0o777,
            link_target: Some(b"a".to_vec()),
            size: 1,
            ..FileEntry::default()
        };
        let entries = [d, a, b, l];
        let got = round_trip(opts, &entries);
        assert_eq!(got.len(), 4);
        // Directory: empty access ACL, the default ACL, the set (literal 0).
        assert_eq!(got[0].acl.as_deref(), Some(&RsyncAcl::default()));
        assert_eq!(got[0].def_acl.as_deref(), Some(&*acl));
        assert_eq!(got[0].xattr_ndx, Some(0));
        assert_eq!(got[1].acl.as_deref(), Some(&*acl));
        assert_eq!(got[1].xattrs.as_deref(), Some(&*xa));
        // The follower inside the list still carries both blocks.
        assert_eq!(got[2].hardlink, HardLink::Follower(1));
        assert_eq!(got[2].acl.as_deref(), Some(&*acl));
        assert_eq!(got[2].xattr_ndx, Some(0));
        // Symlinks have no ACL; their (empty) xattr set is a new literal.
        assert_eq!(got[3].acl, None);
        assert_eq!(got[3].xattr_ndx, Some(1));
        assert!(matches!(
            got[1].xattrs.as_ref().unwrap().items[0].value,
            XattrValue::Abbrev { len: 200, .. }
        ));
    }

    #[test]
    fn all_kinds_round_trip() {
        let mut opts = FlistOptions::archive(31);
        opts.preserve_hard_links = true;
        opts.checksum_len = Some(16);
        opts.atimes = true;
        opts.crtimes = true;
        let long = "d/".to_string() + &"x".repeat(400);
        let entries = vec![
            FileEntry {
                top_dir: true,
                ..dir(".")
            },
            FileEntry {
                checksum: Some(vec![9; 16]),
                mtime_nsec: 123_456_789,
                atime: 5,
                crtime: 1,
                hardlink: HardLink::Leader,
                ..reg("a", 1 << 40, 1_700_000_000)
            },
            FileEntry {
                checksum: Some(vec![9; 16]),
                mtime_nsec: 123_456_789,
                atime: 5,
                crtime: 1,
                hardlink: HardLink::Follower(1),
                ..reg("b", 1 << 40, 1_700_000_000)
            },
            FileEntry {
                mode: mode::S_IFLNK | 0o777,
                link_target: Some(b"../target".to_vec()),
                ..reg("link", 9, -5)
            },
            FileEntry {
                mode: mode::S_IFCHR | 0o600,
                rdev: (4, 1),
                size: 0,
                ..reg("tty", 0, 0)
            },
            FileEntry {
                mode: mode::S_IFBLK | 0o600,
                rdev: (4, 300),
                size: 0,
                uid: 0,
                gid: 5,
                ..reg("blk", 0, 0)
            },
            FileEntry {
                mode: mode::S_IFIFO | 0o600,
                size: 0,
                ..reg("fifo", 0, 0)
            },
            dir("d"),
            FileEntry {
                checksum: Some(vec![1; 16]),
                ..reg(&long, 3, 3)
            },
        ];
        let got = round_trip(opts, &entries);
        assert_eq!(got.len(), entries.len());
        for (g, e) in got.iter().zip(&entries) {
            let mut e = e.clone();
            if e.is_dir() {
                e.atime = g.atime;
            }
            if e.hardlink != HardLink::None {
                // crtime/atime are carried; nothing else differs.
            }
            assert_eq!(g, &e);
        }
    }

    #[test]
    fn byte_flags_round_trip() {
        let mut opts = FlistOptions::archive(30);
        opts.varint_flags = false;
        opts.id0_names = false;
        let entries = vec![
            dir("."),
            reg("a", 1, 1),
            reg("b", 1, 1),
            FileEntry {
                uid: 7,
                ..reg("c", 1, 1)
            },
        ];
        assert_eq!(round_trip(opts, &entries), entries);
    }

    #[test]
    fn rejects_malicious_names() {
        let opts = FlistOptions {
            preserve_uid: false,
            preserve_gid: false,
            ..FlistOptions::archive(31)
        };
        for bad in [
            &b"../etc/passwd"[..],
            b"/etc/passwd",
            b"a/../../b",
            b"a//b",
            b"a/./b",
            b"a/",
            b"x\0y",
        ] {
            let mut out = vec![0x18];
            out.push(bad.len() as u8);
            out.extend_from_slice(bad);
            out.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0]);
            out.extend_from_slice(&(0o100644i32).to_le_bytes());
            let mut dec = FlistDecoder::new(opts.clone(), 0);
            assert!(
                matches!(
                    dec.decode(&mut Reader::new(&out)),
                    Err(Error::Malformed { .. })
                ),
                "{bad:?}"
            );
        }
        // A shared prefix longer than the previous name.
        let mut dec = FlistDecoder::new(opts.clone(), 0);
        assert!(dec.decode(&mut Reader::new(&[0x38, 5, 1, b'a'])).is_err());
        // Invalid mode type bits.
        let mut out = vec![0x18, 1, b'a', 0, 0, 0, 0, 0, 0, 0];
        out.extend_from_slice(&0o777i32.to_le_bytes());
        assert!(FlistDecoder::new(opts.clone(), 0)
            .decode(&mut Reader::new(&out))
            .is_err());
        // Hard-link reference to a future index.
        let hopts = FlistOptions {
            preserve_hard_links: true,
            ..opts
        };
        let out = [0x80, 0x18 | 0x02, 0x02, 1, b'a', 5];
        let _ = out;
        let mut enc = Vec::new();
        put_varint(
            &mut enc,
            (xmit::SAME_UID | xmit::SAME_GID | xmit::HLINKED) as i32,
        );
        enc.extend_from_slice(&[1, b'a']);
        put_varint(&mut enc, 5);
        assert!(matches!(
            FlistDecoder::new(hopts, 0).decode(&mut Reader::new(&enc)),
            Err(Error::Malformed { .. })
        ));
    }

    #[test]
    fn id_lists() {
        let mut out = Vec::new();
        encode_id_list(
            &[(1000, b"alice".to_vec()), (0, b"root".to_vec())],
            Some(b"root"),
            true,
            &mut out,
        );
        let mut r = Reader::new(&out);
        assert_eq!(
            decode_id_list(&mut r, true).unwrap(),
            vec![(1000, b"alice".to_vec()), (0, b"root".to_vec())]
        );
        assert_eq!(r.remaining(), 0);
        assert_eq!(
            decode_id_list(&mut Reader::new(&out[..out.len() - 1]), true),
            Err(Error::Incomplete)
        );
    }

    #[test]
    fn sort_order() {
        let mut v = vec![
            dir("b"),
            reg("b/z", 0, 0),
            dir("b/c"),
            reg("b/c/x", 0, 0),
            reg("a", 0, 0),
            dir("."),
            reg("c", 0, 0),
            dir("a.d"),
            reg("b.txt", 0, 0),
            dir("b/a"),
        ];
        sort_entries(&mut v);
        let names: Vec<&str> = v
            .iter()
            .map(|e| std::str::from_utf8(&e.name).unwrap())
            .collect();
        assert_eq!(
            names,
            [".", "a", "b.txt", "c", "a.d", "b", "b/z", "b/a", "b/c", "b/c/x"]
        );
    }

    #[test]
    fn duplicates() {
        let mut v = vec![reg("a", 1, 1), dir("a"), reg("b", 1, 1), reg("b", 2, 2)];
        sort_entries(&mut v);
        let act = clear_duplicates(&v);
        let kept: Vec<(&[u8], bool)> = v
            .iter()
            .zip(&act)
            .filter(|(_, a)| **a)
            .map(|(e, _)| (e.name.as_slice(), e.is_dir()))
            .collect();
        assert_eq!(kept, vec![(&b"b"[..], false), (&b"a"[..], true)]);
        assert_eq!(
            v.iter()
                .zip(&act)
                .find(|(e, a)| **a && e.name == b"b")
                .unwrap()
                .0
                .size,
            1
        );
    }

    proptest! {
        #[test]
        fn decoder_never_panics(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut opts = FlistOptions::archive(31);
            opts.preserve_hard_links = true;
            let mut dec = FlistDecoder::new(opts, 0);
            let mut r = Reader::new(&data);
            for _ in 0..20 {
                if dec.decode(&mut r).is_err() { break; }
            }
        }

        #[test]
        fn sort_is_a_total_order(names in proptest::collection::vec(("[ab./]{1,6}", any::<bool>()), 1..20)) {
            let entries: Vec<FileEntry> = names.iter().filter(|(n, _)| validate_name(n.as_bytes()).is_ok()).map(|(n, d)| if *d { dir(n) } else { reg(n, 0, 0) }).collect();
            for a in &entries {
                prop_assert_eq!(compare_entries(a, a), std::cmp::Ordering::Equal);
                for b in &entries {
                    prop_assert_eq!(compare_entries(a, b), compare_entries(b, a).reverse());
                }
            }
        }
    }
}
