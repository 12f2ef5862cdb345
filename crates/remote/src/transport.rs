//! Transports: a child process over pipes (a local `rsync --server`, or a
//! remote shell such as ssh running it).

use std::io::Read;
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;

use crate::error::{RemoteError, Result};

/// A running child process speaking the protocol on its stdin/stdout.
#[derive(Debug)]
pub struct ChildTransport {
    child: Child,
    /// Writes to the child's stdin.
    pub stdin: Option<ChildStdin>,
    /// Reads from the child's stdout.
    pub stdout: Option<ChildStdout>,
}

impl ChildTransport {
    /// Spawns `argv[0]` with the remaining arguments; stderr is inherited so
    /// the server's own diagnostics reach the user.
    pub fn spawn(argv: &[std::ffi::OsString]) -> Result<ChildTransport> {
        let (prog, args) = argv
            .split_first()
            .ok_or_else(|| RemoteError::Usage("empty remote command".into()))?;
        let mut child = Command::new(prog)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| RemoteError::io(format!("starting {}", prog.to_string_lossy()), e))?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        Ok(ChildTransport {
            child,
            stdin,
            stdout,
        })
    }

    /// Closes our end of stdin and waits for the child.
    pub fn wait(&mut self) -> Result<ExitStatus> {
        drop(self.stdin.take());
        self.child
            .wait()
            .map_err(|e| RemoteError::io("waiting for the remote command", e))
    }

    /// Kills the child (used on local errors so it cannot hang).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads a stream on a helper thread so the peer's output is always drained,
/// even while the caller is blocked writing (the full-duplex deadlock trap).
#[derive(Debug)]
pub struct PumpedReader {
    rx: mpsc::Receiver<std::io::Result<Vec<u8>>>,
    pending: Vec<u8>,
    pos: usize,
    eof: bool,
    handle: Option<JoinHandle<()>>,
}

impl PumpedReader {
    /// Starts pumping `inner` on a new thread.
    pub fn new<R: Read + Send + 'static>(mut inner: R) -> Self {
        let (tx, rx) = mpsc::channel();
        let handle = std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match inner.read(&mut buf) {
                    Ok(0) => {
                        let _ = tx.send(Ok(Vec::new()));
                        return;
                    }
                    Ok(n) => {
                        if tx.send(Ok(buf[..n].to_vec())).is_err() {
                            return;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                }
            }
        });
        PumpedReader {
            rx,
            pending: Vec::new(),
            pos: 0,
            eof: false,
            handle: Some(handle),
        }
    }
}

impl Read for PumpedReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.pos >= self.pending.len() {
            if self.eof {
                return Ok(0);
            }
            match self.rx.recv() {
                Ok(Ok(chunk)) if chunk.is_empty() => self.eof = true,
                Ok(Ok(chunk)) => {
                    self.pending = chunk;
                    self.pos = 0;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => self.eof = true,
            }
        }
        let n = out.len().min(self.pending.len() - self.pos);
        out[..n].copy_from_slice(&self.pending[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl Drop for PumpedReader {
    fn drop(&mut self) {
        // The thread ends at EOF or when the send fails; do not block on it here.
        drop(self.handle.take());
    }
}
