//! A minimal HTTP endpoint serving Prometheus metrics (`GET /metrics`).

use crate::jobs::Jobs;
use anyhow::{Context, Result};
use dynfs_core::Pool;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Weak};

/// Bind `addr` and serve metrics of `pool` (and, when given, scrub and rebuild progress from
/// `jobs`) from a background thread. Only weak references are kept, so the pool closes at
/// unmount; afterwards the endpoint answers 503.
pub fn spawn(
    addr: &str,
    pool: &Arc<Pool>,
    jobs: Option<&Arc<Jobs>>,
) -> Result<std::net::SocketAddr> {
    let pool = Arc::downgrade(pool);
    let jobs = jobs.map(Arc::downgrade);
    let listener =
        TcpListener::bind(addr).with_context(|| format!("binding metrics address {addr}"))?;
    let local = listener.local_addr()?;
    std::thread::Builder::new()
        .name("dynfs-metrics".into())
        .spawn(move || {
            for conn in listener.incoming() {
                match conn {
                    Ok(c) => {
                        if let Err(e) = handle(c, &pool, jobs.as_ref()) {
                            tracing::debug!(error = %e, "metrics request failed");
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "metrics accept failed"),
                }
            }
        })?;
    tracing::info!(addr = %local, "serving metrics");
    Ok(local)
}

fn handle(mut c: TcpStream, pool: &Weak<Pool>, jobs: Option<&Weak<Jobs>>) -> std::io::Result<()> {
    c.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 8192 {
        let n = c.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let line = String::from_utf8_lossy(&buf);
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, ctype, body) = if method == "GET" && (path == "/metrics" || path == "/") {
        match pool.upgrade() {
            Some(pool) => {
                let mut body = pool.metrics.render(&pool);
                if let Some(j) = jobs.and_then(Weak::upgrade) {
                    body.push_str(&j.render_metrics());
                }
                ("200 OK", "text/plain; version=0.0.4", body)
            }
            None => (
                "503 Service Unavailable",
                "text/plain",
                "pool closed\n".to_string(),
            ),
        }
    } else {
        ("404 Not Found", "text/plain", "not found\n".to_string())
    };
    write!(
        c,
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}
