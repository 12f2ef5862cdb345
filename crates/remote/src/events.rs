//! Per-entry notifications for `-v`/`-i` style output by the caller.

use std::sync::Arc;
use std::time::Instant;

use arsync_proto::flist::{FileEntry, FileType};
use arsync_proto::item::iflags;

use crate::fsys::{AttrState, EntryInfo, Meta};

/// Something that happened to one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileEvent<'a> {
    /// A file was received (pull) or sent (push) and verified.
    Transferred {
        /// Path relative to the transfer root.
        name: &'a [u8],
        /// Bytes sent literally.
        literal: u64,
        /// Bytes taken from the existing copy.
        matched: u64,
    },
    /// An extraneous entry was deleted (`--delete`: by us on a pull, by
    /// the receiving peer on a push).
    Deleted {
        /// Path relative to the transfer root (a directory's ends with `/`).
        name: &'a [u8],
    },
    /// An entry of a remote listing (`--list-only`, or one remote path
    /// argument), in file-list order.
    Listed {
        /// The entry as the sender listed it.
        entry: &'a arsync_proto::flist::FileEntry,
    },
    /// A receiving client made its destination directory (rsync's
    /// `created directory` line), just before the first list's event.
    CreatedDir {
        /// The destination as given.
        path: &'a [u8],
    },
    /// The file list, once it is known (sorted, as sent); with incremental
    /// recursion, each part as it comes.
    List {
        /// Every entry (with incremental recursion, of this part).
        entries: &'a [FileEntry],
        /// The list comes in parts (incremental recursion).
        incremental: bool,
        /// The first part (or the whole list).
        first: bool,
    },
    /// rsync's item for an entry (what `-i` and `-v` print), in file-list
    /// order: from the generator (a pull: before a requested file arrives,
    /// which a later [`FileEvent::Transferred`] with its name confirms) or
    /// as the sender gets it from the peer's generator (a push).
    Item {
        /// Index in the file list.
        ndx: i32,
        /// Item flags ([`arsync_proto::item::iflags`]).
        iflags: u16,
        /// The entry.
        entry: &'a arsync_proto::flist::FileEntry,
    },
    /// A line rsync prints from `-vv` on (`delta-transmission enabled`,
    /// `NAME is uptodate`, `total: matches=...`), with its newline, in the
    /// order of the other output.
    Info {
        /// The text.
        text: &'a [u8],
        /// The peer's line (MSG_INFO), printed after the output of the
        /// files before it; else our generator's, printed at once (as
        /// rsync's generator, a process of its own, prints it).
        ordered: bool,
    },
    /// `--progress`: how far the data of the file being moved got (sent
    /// by a pushing client, written by a pulling one, matched data
    /// included), when the file starts and then about once a second
    /// ([`ProgressTicker`]); a [`FileEvent::Transferred`] ends it.
    Progress {
        /// Path relative to the transfer root.
        name: &'a [u8],
        /// Bytes of the file done so far.
        done: u64,
        /// The file's listed size.
        size: u64,
    },
}

/// Item flags that make an item worth reporting (rsync's
/// `SIGNIFICANT_ITEM_FLAGS`: everything but the basis, name and
/// local-change markers).
pub const SIGNIFICANT_ITEM_FLAGS: u16 =
    !(iflags::BASIS_TYPE_FOLLOWS | iflags::XNAME_FOLLOWS | iflags::LOCAL_CHANGE);

/// rsync's `itemize` change bits for `e` when `local` is what is at its
/// name now (`None`: nothing, the item is new) and `want` the metadata the
/// receiver gives it: size (regular files), mtime (`t` with `-t`; without
/// it a transferred or locally changed item reports `T`), permissions
/// (`-p`, or `-E`'s executability; not for symlinks), owner and group.
/// `changing` says whether the entry is transferred or replaced here.
pub fn change_flags(
    e: &FileEntry,
    local: Option<(&EntryInfo, &AttrState)>,
    want: &Meta,
    changing: bool,
) -> u16 {
    let Some((info, attrs)) = local else {
        return iflags::IS_NEW;
    };
    let mut f = 0;
    let ft = e.file_type();
    if ft == Some(FileType::Regular) && info.size != e.size.max(0) as u64 {
        f |= iflags::REPORT_SIZE;
    }
    match want.mtime {
        Some(t) if t != attrs.mtime => f |= iflags::REPORT_TIME,
        None if changing => f |= iflags::REPORT_TIME,
        _ => {}
    }
    if ft != Some(FileType::Symlink) && want.perms.is_some_and(|p| p != attrs.perms & 0o7777) {
        f |= iflags::REPORT_PERMS;
    }
    if want.uid.is_some_and(|u| u != attrs.uid) {
        f |= iflags::REPORT_OWNER;
    }
    if want.gid.is_some_and(|g| g != attrs.gid) {
        f |= iflags::REPORT_GROUP;
    }
    f
}

/// A callback receiving [`FileEvent`]s; called from the transfer's threads.
#[derive(Clone)]
pub struct EventSink {
    callback: Arc<dyn Fn(&FileEvent<'_>) + Send + Sync>,
    /// The callback wants [`FileEvent::Progress`] (`--progress`).
    progress: bool,
}

impl EventSink {
    /// Wraps a callback (which gets no [`FileEvent::Progress`]).
    pub fn new(f: impl Fn(&FileEvent<'_>) + Send + Sync + 'static) -> Self {
        EventSink {
            callback: Arc::new(f),
            progress: false,
        }
    }

    /// The sink, also getting [`FileEvent::Progress`] when `on`.
    pub fn with_progress(mut self, on: bool) -> Self {
        self.progress = on;
        self
    }

    /// True when the sink takes [`FileEvent::Progress`].
    pub fn wants_progress(&self) -> bool {
        self.progress
    }

    /// A [`ProgressTicker`] for the transfer when the sink wants progress
    /// (`None` otherwise: the data paths then do nothing for it).
    pub fn ticker(events: Option<&EventSink>) -> Option<ProgressTicker> {
        events.filter(|e| e.progress).map(|e| ProgressTicker {
            sink: e.clone(),
            next: None,
        })
    }

    /// Delivers one event.
    pub fn emit(&self, e: &FileEvent<'_>) {
        (self.callback)(e)
    }
}

/// How often [`ProgressTicker`] reports a file's progress: rsync updates
/// its `--progress` line at most once a second.
pub const PROGRESS_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Paces [`FileEvent::Progress`] for the data path moving a file: at the
/// file's start ([`ProgressTicker::start`]), then at most every
/// [`PROGRESS_INTERVAL`]. A tick between reports costs one clock read.
pub struct ProgressTicker {
    sink: EventSink,
    /// When the next report is due (`None`: at once).
    next: Option<Instant>,
}

impl ProgressTicker {
    /// A new file begins: its first tick reports.
    pub fn start(&mut self) {
        self.next = None;
    }

    /// `done` bytes of `name` (`size` listed) are moved: reported when due.
    #[inline]
    pub fn tick(&mut self, name: &[u8], done: u64, size: u64) {
        let now = Instant::now();
        if self.next.is_some_and(|at| now < at) {
            return;
        }
        self.next = Some(now + PROGRESS_INTERVAL);
        self.sink.emit(&FileEvent::Progress { name, done, size });
    }
}

impl std::fmt::Debug for ProgressTicker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProgressTicker")
    }
}

impl std::fmt::Debug for EventSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EventSink")
    }
}

/// rsync's `--list-only` line for an entry of a file list (without the
/// newline): mode string, size, mtime, name and `-> target`, escaped as
/// rsync escapes what it prints. `human` is rsync's `-h` level (1 by default).
pub fn list_line(e: &FileEntry, human: u8) -> Vec<u8> {
    let meta = arsync_sync::fsops::Meta {
        mode: e.mode,
        uid: e.uid,
        gid: e.gid,
        size: e.size.max(0) as u64,
        mtime: arsync_sync::fsops::Time {
            sec: e.mtime,
            nsec: e.mtime_nsec,
        },
        atime: arsync_sync::fsops::Time::default(),
        rdev: 0,
        dev: 0,
        ino: 0,
        nlink: 1,
    };
    // rsync escapes the whole line (name and link target) as it prints it.
    let esc = arsync_sync::report::escape_name;
    let link = e.link_target.as_deref().map(esc);
    arsync_sync::report::list_line(&meta, &esc(&e.name), link.as_deref(), human)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn change_bits_as_rsync_reports_them() {
        let e = FileEntry {
            name: b"f".to_vec(),
            mode: 0o100644,
            size: 10,
            mtime: 100,
            uid: 1,
            gid: 2,
            ..FileEntry::default()
        };
        let info = EntryInfo {
            file_type: rustix::fs::FileType::RegularFile,
            size: 9,
            mtime: 50,
            mtime_nsec: 0,
            perms: 0o600,
        };
        let attrs = AttrState {
            perms: 0o600,
            mtime: (50, 0),
            uid: 1,
            gid: 3,
        };
        let want = Meta {
            perms: Some(0o644),
            mtime: Some((100, 0)),
            uid: Some(1),
            gid: Some(2),
            atime: None,
        };
        let f = change_flags(&e, Some((&info, &attrs)), &want, true);
        assert_eq!(
            f,
            iflags::REPORT_SIZE | iflags::REPORT_TIME | iflags::REPORT_PERMS | iflags::REPORT_GROUP
        );
        // Without -t a transfer reports the time (rsync's `T`), an
        // unchanged entry does not; nothing is compared that is not set.
        let loose = Meta {
            perms: Some(0o600),
            mtime: None,
            uid: None,
            gid: None,
            atime: None,
        };
        assert_eq!(
            change_flags(&e, Some((&info, &attrs)), &loose, true),
            iflags::REPORT_SIZE | iflags::REPORT_TIME
        );
        assert_eq!(
            change_flags(&e, Some((&info, &attrs)), &loose, false),
            iflags::REPORT_SIZE
        );
        assert_eq!(change_flags(&e, None, &want, true), iflags::IS_NEW);
        assert_eq!(SIGNIFICANT_ITEM_FLAGS & iflags::LOCAL_CHANGE, 0);
        assert_ne!(SIGNIFICANT_ITEM_FLAGS & iflags::REPORT_TIME, 0);
    }

    #[test]
    fn ticker_reports_a_start_then_once_per_interval() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let got = Arc::clone(&seen);
        let sink = EventSink::new(move |e| {
            if let FileEvent::Progress { name, done, size } = e {
                got.lock().unwrap().push((name.to_vec(), *done, *size));
            }
        });
        // Not asked for: no ticker at all.
        assert!(EventSink::ticker(Some(&sink)).is_none());
        assert!(EventSink::ticker(None).is_none());
        let sink = sink.with_progress(true);
        let mut t = EventSink::ticker(Some(&sink)).unwrap();
        t.start();
        for done in [0, 10, 20, 30] {
            t.tick(b"a", done, 100);
        }
        // A new file reports its start at once, then waits again.
        t.start();
        t.tick(b"b", 5, 50);
        t.tick(b"b", 6, 50);
        assert_eq!(
            *seen.lock().unwrap(),
            vec![(b"a".to_vec(), 0, 100), (b"b".to_vec(), 5, 50)]
        );
        // Once the interval passed, the next tick reports.
        std::thread::sleep(PROGRESS_INTERVAL);
        t.tick(b"b", 40, 50);
        assert_eq!(seen.lock().unwrap().len(), 3);
    }
}
