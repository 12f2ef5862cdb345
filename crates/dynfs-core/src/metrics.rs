//! Counters exported in the Prometheus text format (`dynfs mount --metrics ADDR`).

use crate::pool::Pool;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// Engine counters. All monotonic.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Read requests served.
    pub reads: AtomicU64,
    /// Bytes returned by reads.
    pub bytes_read: AtomicU64,
    /// Write requests accepted.
    pub writes: AtomicU64,
    /// Bytes accepted by writes.
    pub bytes_written: AtomicU64,
    /// Extents written (new immutable extents).
    pub extents_written: AtomicU64,
    /// Extents read and decoded from fragments (cache misses).
    pub extents_read: AtomicU64,
    /// Fragments found missing, unreadable or failing their checksum.
    pub fragment_errors: AtomicU64,
    /// Fragments rewritten by read repair or scrub.
    pub fragments_repaired: AtomicU64,
    /// Extents reconstructed from parity or other copies during a read.
    pub reconstructions: AtomicU64,
    /// Partial writes into a committed extent, which read it back to rewrite it whole (a file
    /// updated in place, or a partly written extent committed early to free memory).
    pub partial_readbacks: AtomicU64,
    /// Writes that waited for room in the write buffer budget.
    pub buffer_waits: AtomicU64,
    /// Partly written buffers of idle files committed early because writers waited for room
    /// and no buffer was released for a while.
    pub stalled_buffer_commits: AtomicU64,
}

impl Metrics {
    /// Add `n` to a counter.
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    /// Render the counters and per-disk gauges of `pool`.
    pub fn render(&self, pool: &Pool) -> String {
        let mut s = String::new();
        let counters: [(&str, &AtomicU64, &str); 12] = [
            ("dynfs_reads_total", &self.reads, "Read requests served."),
            (
                "dynfs_read_bytes_total",
                &self.bytes_read,
                "Bytes returned by reads.",
            ),
            (
                "dynfs_writes_total",
                &self.writes,
                "Write requests accepted.",
            ),
            (
                "dynfs_written_bytes_total",
                &self.bytes_written,
                "Bytes accepted by writes.",
            ),
            (
                "dynfs_extents_written_total",
                &self.extents_written,
                "Extents written.",
            ),
            (
                "dynfs_extents_read_total",
                &self.extents_read,
                "Extents read from fragments.",
            ),
            (
                "dynfs_fragment_errors_total",
                &self.fragment_errors,
                "Fragments missing, unreadable or corrupt.",
            ),
            (
                "dynfs_fragments_repaired_total",
                &self.fragments_repaired,
                "Fragments rewritten by repair.",
            ),
            (
                "dynfs_reconstructions_total",
                &self.reconstructions,
                "Reads that needed reconstruction.",
            ),
            (
                "dynfs_partial_extent_readbacks_total",
                &self.partial_readbacks,
                "Partial writes into a committed extent (read back and rewritten).",
            ),
            (
                "dynfs_write_buffer_waits_total",
                &self.buffer_waits,
                "Writes that waited for room in the write buffer budget.",
            ),
            (
                "dynfs_stalled_buffer_commits_total",
                &self.stalled_buffer_commits,
                "Idle files' partly written buffers committed early to make room.",
            ),
        ];
        for (name, c, help) in counters {
            let _ = writeln!(
                s,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                c.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(s, "# HELP dynfs_metadata_generation Metadata generation.\n# TYPE dynfs_metadata_generation gauge");
        let _ = writeln!(
            s,
            "dynfs_metadata_generation {}",
            pool.meta.generation().unwrap_or(0)
        );
        let _ = writeln!(s, "# HELP dynfs_disk_healthy 1 if the disk is present and healthy.\n# TYPE dynfs_disk_healthy gauge");
        for d in pool.disks() {
            let _ = writeln!(
                s,
                "dynfs_disk_healthy{{disk=\"{}\",health=\"{}\"}} {}",
                d.id,
                d.health(),
                u8::from(d.writable())
            );
        }
        let _ = writeln!(s, "# HELP dynfs_disk_io_errors I/O errors since mount.\n# TYPE dynfs_disk_io_errors gauge");
        for d in pool.disks() {
            let _ = writeln!(
                s,
                "dynfs_disk_io_errors{{disk=\"{}\"}} {}",
                d.id,
                d.errors()
            );
        }
        s
    }
}
