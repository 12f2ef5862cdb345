//! Small complete programs built on [`Io`], used by the crate's examples (`examples/copy.rs`,
//! `examples/echo.rs`) and tested like everything else.

use crate::{spawn_local, Io, AT_FDCWD};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

/// Copies `src` to `dst` (created or truncated, mode 0644) with `depth` reads/writes of `chunk`
/// bytes in flight at once. Returns the number of bytes copied.
pub async fn copy_file(
    io: &Io,
    src: &Path,
    dst: &Path,
    chunk: usize,
    depth: usize,
) -> io::Result<u64> {
    let chunk = chunk.max(1);
    let depth = depth.max(1);
    let input = io.open(AT_FDCWD, src, libc::O_RDONLY, 0).await?;
    let size = io.fstat(&input).await?.size;
    let output = io
        .open(
            AT_FDCWD,
            dst,
            libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC,
            0o644,
        )
        .await?;
    let input = std::rc::Rc::new(input);
    let output = std::rc::Rc::new(output);
    let mut next = 0u64;
    let mut running = std::collections::VecDeque::new();
    let mut copied = 0u64;
    loop {
        while running.len() < depth && next < size {
            let (off, io2, i, o) = (next, io.clone(), input.clone(), output.clone());
            let len = chunk.min((size - off) as usize);
            let task = spawn_local(async move {
                let (r, buf) = io2
                    .read_full_at(i.as_fd(), Vec::with_capacity(len), off)
                    .await;
                let n = r?;
                let (w, _) = io2.write_all_at(o.as_fd(), buf, off).await;
                w.map(|_| n as u64)
            })
            .ok_or_else(|| io::Error::other("copy_file must run inside Runtime::block_on"))?;
            running.push_back(task);
            next += len as u64;
        }
        match running.pop_front() {
            Some(t) => copied += t.await?,
            None => break,
        }
    }
    io.fsync(output.as_fd(), true).await?;
    Ok(copied)
}

/// Serves a TCP echo protocol on `listener`: every connection gets back what it sends. Handles
/// connections concurrently; returns after `max_conns` connections have been closed by peers.
pub async fn echo_server(io: &Io, listener: OwnedFd, max_conns: usize) -> io::Result<usize> {
    let mut handles = Vec::new();
    for _ in 0..max_conns {
        let conn = io.accept(&listener).await?;
        let io2 = io.clone();
        let h = spawn_local(async move { echo_conn(&io2, conn).await })
            .ok_or_else(|| io::Error::other("echo_server must run inside Runtime::block_on"))?;
        handles.push(h);
    }
    let mut served = 0;
    for h in handles {
        h.await?;
        served += 1;
    }
    Ok(served)
}

async fn echo_conn(io: &Io, conn: OwnedFd) -> io::Result<()> {
    let mut buf = Vec::with_capacity(16 * 1024);
    loop {
        buf.clear();
        let (r, b) = io.recv(&conn, buf).await;
        let n = r?;
        if n == 0 {
            return Ok(());
        }
        let mut sent = 0;
        let mut b = b;
        while sent < n {
            let chunk = if sent == 0 { b } else { b[sent..].to_vec() };
            let (r, back) = io.send(&conn, chunk, false).await;
            b = back;
            let k = r?;
            if k == 0 {
                return Err(io::Error::from(io::ErrorKind::WriteZero));
            }
            sent += k;
        }
        buf = b;
    }
}
