//! Batch helpers for many small files at once (the local sync engine's fast path).
//!
//! [`Io::copy_small_files`] copies a batch of small files into new files: on io_uring every
//! file is two linked chains on one direct descriptor (open the source, read it whole; then
//! close it, create the destination, write, close), and the chains of the whole batch go to
//! the kernel with one `io_uring_enter` per stage. [`Io::rename_many`] renames many entries
//! with one submission. On the thread-pool backend each helper is one pool job for the whole
//! batch, so the number of thread hand-offs does not grow with the number of files.

use crate::{spawn_blocking, sys, Io};
use arsync_ring::op::{Close, OpenAtDirect, Read, RenameAt, Write};
use arsync_ring::{Batch, DirectSlot, Handle, Opcode, Operation, SqeOpts, Ticket};
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, RawFd};

/// Largest file [`Io::copy_small_files`] reads whole into memory.
pub const SMALL_FILE_MAX: u64 = 1 << 20;

/// Block size for hole detection with [`SmallCopy::sparse`].
const SPARSE_BLOCK: usize = 4096;

/// One file for [`Io::copy_small_files`].
#[derive(Debug)]
pub struct SmallCopy {
    /// Directory the source name is relative to (`AT_FDCWD` for paths).
    pub src_dir: RawFd,
    /// Source name.
    pub src: CString,
    /// Extra `open` flags for the source (e.g. `O_NOFOLLOW`, `O_NOATIME`).
    pub src_flags: i32,
    /// Expected size (at most [`SMALL_FILE_MAX`]); one byte more is read to notice growth.
    pub expect: u64,
    /// Directory the destination name is relative to.
    pub dst_dir: RawFd,
    /// Destination name: created with `O_CREAT | O_EXCL`.
    pub dst: CString,
    /// Creation mode (the process umask applies, as with `open(2)`).
    pub mode: u32,
    /// Leave 4 KiB blocks of zeros as holes (rsync's `-S`).
    pub sparse: bool,
}

/// What [`Io::copy_small_files`] did with one file.
#[derive(Debug)]
pub enum SmallCopied {
    /// Copied; the destination holds this many bytes.
    Copied(u64),
    /// The source holds more than `expect` bytes now; nothing was created.
    Grew,
    /// Opening or reading the source failed; nothing was created.
    Source(io::Error),
    /// Creating the destination failed (e.g. it exists); nothing was created.
    Create(io::Error),
    /// Writing or closing the destination failed; the destination exists and holds partial
    /// data (the caller removes it).
    Write(io::Error),
}

/// One rename for [`Io::rename_many`].
#[derive(Debug)]
pub struct Rename {
    /// Directory of the old name.
    pub old_dir: RawFd,
    /// Old name.
    pub old: CString,
    /// Directory of the new name.
    pub new_dir: RawFd,
    /// New name (replaced if it exists).
    pub new: CString,
}

/// The runs `[start, end)` of `data` that are not whole 4 KiB blocks of zeros, or `None`
/// when there is no such block (the data is written in one piece).
fn data_runs(data: &[u8]) -> Option<Vec<(usize, usize)>> {
    let mut runs: Vec<(usize, usize)> = Vec::new();
    let mut hole = false;
    for (i, block) in data.chunks(SPARSE_BLOCK).enumerate() {
        let at = i * SPARSE_BLOCK;
        if block.iter().all(|&b| b == 0) {
            hole = true;
            continue;
        }
        match runs.last_mut() {
            Some(r) if r.1 == at => r.1 = at + block.len(),
            _ => runs.push((at, at + block.len())),
        }
    }
    hole.then_some(runs)
}

/// Creates `job.dst` and writes `data` (sparse runs when asked), blocking.
fn write_new_blocking(job: &SmallCopy, data: &[u8]) -> SmallCopied {
    let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL;
    let fd = match sys::openat(job.dst_dir, &job.dst, flags, job.mode) {
        Ok(fd) => fd,
        Err(e) => return SmallCopied::Create(e),
    };
    let runs = if job.sparse { data_runs(data) } else { None };
    let runs = runs.unwrap_or_else(|| vec![(0, data.len())]);
    let write = || -> io::Result<()> {
        for (start, end) in runs.iter().copied() {
            let mut at = start;
            while at < end {
                match sys::write_at(fd.as_raw_fd(), &data[at..end], at as u64) {
                    Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
                    Ok(n) => at += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
        }
        if runs.last().map_or(0, |r| r.1) < data.len() {
            sys::ftruncate(fd.as_raw_fd(), data.len() as u64)?;
        }
        close_fd(fd)
    };
    match write() {
        Ok(()) => SmallCopied::Copied(data.len() as u64),
        Err(e) => SmallCopied::Write(e),
    }
}

fn close_fd(fd: std::os::fd::OwnedFd) -> io::Result<()> {
    use std::os::fd::IntoRawFd;
    // SAFETY: we own the fd and close it exactly once.
    if unsafe { libc::close(fd.into_raw_fd()) } < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Reads a whole small source (up to `expect + 1` bytes), blocking.
fn read_source_blocking(job: &SmallCopy) -> Result<Vec<u8>, SmallCopied> {
    let fd = sys::openat(job.src_dir, &job.src, libc::O_RDONLY | job.src_flags, 0)
        .map_err(SmallCopied::Source)?;
    let cap = job.expect as usize + 1;
    let mut buf = Vec::with_capacity(cap);
    while buf.len() < cap {
        let at = buf.len() as u64;
        let want = cap - buf.len();
        match sys::read_at(fd.as_raw_fd(), &mut buf, at) {
            // A regular file's read comes back short only at its end: no second read for 0.
            Ok(n) if n < want => break,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(SmallCopied::Source(e)),
        }
    }
    if buf.len() == cap {
        return Err(SmallCopied::Grew);
    }
    Ok(buf)
}

fn copy_blocking(job: &SmallCopy) -> SmallCopied {
    match read_source_blocking(job) {
        Ok(data) => write_new_blocking(job, &data),
        Err(done) => done,
    }
}

/// A file of the ring path between its stages.
enum Stage {
    /// Finished.
    Done(SmallCopied),
    /// Source read; its descriptor is still installed in `slot`.
    Read { slot: DirectSlot, data: Vec<u8> },
    /// For the pool, with the source data already read.
    Pool(Vec<u8>),
    /// For the pool, whole (no free direct descriptor).
    PoolWhole,
}

fn missing<T>(_: T) -> io::Error {
    io::Error::other("operation result missing")
}

impl Io {
    /// Copies small files into new files; one result per job, in order. See [`SmallCopy`]:
    /// a source larger than its `expect` bytes is reported as [`SmallCopied::Grew`] with
    /// nothing created, so the caller can copy it another way.
    pub async fn copy_small_files(&self, jobs: Vec<SmallCopy>) -> Vec<SmallCopied> {
        let ring = self.inner.ring.as_ref().filter(|h| {
            let f = h.features();
            f.sparse_files
                && [Opcode::OpenAt, Opcode::Read, Opcode::Write, Opcode::Close]
                    .iter()
                    .all(|op| f.supports(*op))
        });
        let Some(h) = ring else {
            return spawn_blocking(move || jobs.iter().map(copy_blocking).collect()).await;
        };
        let mut stages = ring_read_stage(h, &jobs).await;
        ring_write_stage(h, &jobs, &mut stages).await;
        let mut pooled = Vec::new();
        let mut results: Vec<SmallCopied> = stages
            .into_iter()
            .enumerate()
            .map(|(i, s)| match s {
                Stage::Done(r) => r,
                Stage::Pool(data) => {
                    pooled.push((i, Some(data)));
                    SmallCopied::Grew
                }
                Stage::Read { .. } | Stage::PoolWhole => {
                    pooled.push((i, None));
                    SmallCopied::Grew
                }
            })
            .collect();
        if !pooled.is_empty() {
            // What the ring could not take: one pool job for all of it.
            let done: Vec<(usize, SmallCopied)> = spawn_blocking(move || {
                pooled
                    .into_iter()
                    .map(|(i, data)| {
                        let r = match data {
                            Some(data) => write_new_blocking(&jobs[i], &data),
                            None => copy_blocking(&jobs[i]),
                        };
                        (i, r)
                    })
                    .collect()
            })
            .await;
            for (i, r) in done {
                results[i] = r;
            }
        }
        results
    }

    /// Renames many entries with one submission (one pool job on the thread backend); one
    /// result per job, in order.
    pub async fn rename_many(&self, jobs: Vec<Rename>) -> Vec<io::Result<()>> {
        match self.ring(Opcode::RenameAt) {
            Some(h) => {
                let queued: Vec<_> = jobs
                    .into_iter()
                    .map(|r| {
                        let mut batch = h.batch();
                        let t = batch.push(RenameAt::new(r.old_dir, r.old, r.new_dir, r.new, 0));
                        let q = batch.queue();
                        (batch, t, q)
                    })
                    .collect();
                let submitted = h.submit();
                let mut out = Vec::with_capacity(queued.len());
                for (mut batch, t, q) in queued {
                    out.push(
                        match q.and_then(|()| submitted.as_ref().map_err(copy_err).copied()) {
                            Ok(()) => settle(&mut batch, t).await.and_then(|r| r),
                            Err(e) => Err(e),
                        },
                    );
                }
                out
            }
            None => {
                spawn_blocking(move || {
                    jobs.iter()
                        .map(|r| sys::renameat2(r.old_dir, &r.old, r.new_dir, &r.new, 0))
                        .collect()
                })
                .await
            }
        }
    }
}

fn copy_err(e: &io::Error) -> io::Error {
    match e.raw_os_error() {
        Some(code) => io::Error::from_raw_os_error(code),
        None => io::Error::new(e.kind(), e.to_string()),
    }
}

/// Waits for a batch whose operations were queued and submitted, given the ticket of its last
/// operation (a chain completes in order, so the rest are done too). Looks first without
/// waiting: by the time the first of many batches has been waited for, most others are done.
async fn settle<T: Operation>(batch: &mut Batch, last: Ticket<T>) -> io::Result<T::Output> {
    match batch.take(last) {
        Ok(out) => Ok(out),
        Err(t) => {
            batch.finished().await?;
            batch.take(t).map_err(missing)
        }
    }
}

/// Stage 1: open and read every source: a two-op chain each, all submitted together.
async fn ring_read_stage(h: &Handle, jobs: &[SmallCopy]) -> Vec<Stage> {
    let mut chains = Vec::with_capacity(jobs.len());
    for job in jobs {
        let Ok(slot) = h.alloc_direct() else {
            chains.push(None);
            continue;
        };
        let mut batch = h.batch();
        let flags = libc::O_RDONLY | job.src_flags;
        let open = batch.push_with(
            OpenAtDirect::new(job.src_dir, job.src.clone(), flags, 0, slot.index()),
            SqeOpts::linked_quiet(),
        );
        let cap = job.expect as usize + 1;
        let read = batch.push(Read::new(&slot, Vec::with_capacity(cap), 0));
        let queued = batch.queue();
        chains.push(Some((batch, queued, slot, open, read)));
    }
    let submitted = h.submit();
    let mut stale = Vec::new();
    let mut stages = Vec::with_capacity(jobs.len());
    for (job, chain) in jobs.iter().zip(chains) {
        let Some((mut batch, queued, slot, open, read)) = chain else {
            stages.push(Stage::PoolWhole);
            continue;
        };
        if let Some(e) = queued
            .err()
            .or_else(|| submitted.as_ref().err().map(copy_err))
        {
            stale.push(slot);
            stages.push(Stage::Done(SmallCopied::Source(e)));
            continue;
        }
        let (read, data) = settle(&mut batch, read)
            .await
            .unwrap_or_else(|e| (Err(e), Vec::new()));
        let opened = batch.take(open).unwrap_or_else(|t| Err(missing(t)));
        stages.push(match (opened, read) {
            (Err(e), _) => Stage::Done(SmallCopied::Source(e)),
            (Ok(()), Err(e)) => {
                stale.push(slot);
                Stage::Done(SmallCopied::Source(e))
            }
            (Ok(()), Ok(n)) if n as u64 > job.expect => {
                stale.push(slot);
                Stage::Done(SmallCopied::Grew)
            }
            (Ok(()), Ok(_)) if job.sparse && data_runs(&data).is_some() => {
                stale.push(slot);
                Stage::Pool(data)
            }
            (Ok(()), Ok(_)) => Stage::Read { slot, data },
        });
    }
    close_slots(h, stale).await;
    stages
}

/// Closes direct descriptors left installed (one submission; errors mean already empty).
async fn close_slots(h: &Handle, slots: Vec<DirectSlot>) {
    if slots.is_empty() {
        return;
    }
    let mut batch = h.batch();
    for s in &slots {
        let _ = batch.push(Close::direct(s.index()));
    }
    let _ = batch.finished().await;
}

/// Stage 2: for every file read, one chain: close the source, create the destination in the
/// same slot, write, close (one CQE on success); all submitted together.
async fn ring_write_stage(h: &Handle, jobs: &[SmallCopy], stages: &mut [Stage]) {
    let q = SqeOpts::linked_quiet();
    let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL;
    let mut chains = Vec::new();
    for (i, (job, stage)) in jobs.iter().zip(stages.iter_mut()).enumerate() {
        let Stage::Read { .. } = stage else { continue };
        let Stage::Read { slot, data } = std::mem::replace(stage, Stage::PoolWhole) else {
            continue;
        };
        let mut batch = h.batch();
        let len = data.len() as u64;
        let close_src = batch.push_with(Close::direct(slot.index()), q);
        let open = batch.push_with(
            OpenAtDirect::new(job.dst_dir, job.dst.clone(), flags, job.mode, slot.index()),
            q,
        );
        let write = (len > 0).then(|| batch.push_with(Write::new(&slot, data, 0), q));
        let close = batch.push(Close::direct(slot.index()));
        let queued = batch.queue();
        chains.push((i, batch, queued, slot, len, close_src, open, write, close));
    }
    if chains.is_empty() {
        return;
    }
    let submitted = h.submit();
    let mut stale = Vec::new();
    for (i, mut batch, queued, slot, len, close_src, open, write, close) in chains {
        if let Some(e) = queued
            .err()
            .or_else(|| submitted.as_ref().err().map(copy_err))
        {
            stale.push(slot);
            stages[i] = Stage::Done(SmallCopied::Source(e));
            continue;
        }
        let close = settle(&mut batch, close).await.and_then(|r| r);
        let close_src = batch.take(close_src).unwrap_or_else(|t| Err(missing(t)));
        let open = batch.take(open).unwrap_or_else(|t| Err(missing(t)));
        let write = match write {
            Some(t) => match batch.take(t) {
                Ok((Ok(n), _)) if n as u64 == len => Ok(()),
                Ok((Ok(n), _)) => Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    format!("short write ({n} of {len} bytes)"),
                )),
                Ok((Err(e), _)) => Err(e),
                Err(t) => Err(missing(t)),
            },
            None => Ok(()),
        };
        stages[i] = Stage::Done(match (close_src, open, write, close) {
            (Err(e), ..) => {
                stale.push(slot);
                SmallCopied::Source(e)
            }
            (Ok(()), Err(e), ..) => SmallCopied::Create(e),
            (Ok(()), Ok(()), Err(e), _) => {
                stale.push(slot);
                SmallCopied::Write(e)
            }
            (Ok(()), Ok(()), Ok(()), Err(e)) => SmallCopied::Write(e),
            (Ok(()), Ok(()), Ok(()), Ok(())) => SmallCopied::Copied(len),
        });
    }
    close_slots(h, stale).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_skip_zero_blocks() {
        assert_eq!(data_runs(&[1u8; 5000]), None);
        assert_eq!(data_runs(&[]), None);
        let mut d = vec![0u8; 3 * 4096 + 10];
        d[5000] = 1;
        d[3 * 4096 + 2] = 7;
        assert_eq!(data_runs(&d), Some(vec![(4096, 8192), (12288, 12298)]));
        assert_eq!(data_runs(&[0u8; 8192]), Some(vec![]));
    }
}
