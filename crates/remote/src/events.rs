//! Per-entry notifications for `-v`/`-i` style output by the caller.

use std::sync::Arc;

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
    /// An extraneous local entry was deleted (`--delete` on a pull).
    Deleted {
        /// Path relative to the transfer root.
        name: &'a [u8],
    },
    /// An entry of a remote listing (`--list-only`, or one remote path
    /// argument), in file-list order.
    Listed {
        /// The entry as the sender listed it.
        entry: &'a arsync_proto::flist::FileEntry,
    },
}

/// A callback receiving [`FileEvent`]s; called from the transfer's threads.
#[derive(Clone)]
pub struct EventSink(pub Arc<dyn Fn(&FileEvent<'_>) + Send + Sync>);

impl EventSink {
    /// Wraps a callback.
    pub fn new(f: impl Fn(&FileEvent<'_>) + Send + Sync + 'static) -> Self {
        EventSink(Arc::new(f))
    }

    /// Delivers one event.
    pub fn emit(&self, e: &FileEvent<'_>) {
        (self.0)(e)
    }
}

impl std::fmt::Debug for EventSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EventSink")
    }
}
