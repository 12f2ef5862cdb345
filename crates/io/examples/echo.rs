//! A TCP echo server: `cargo run -p arsync-io --example echo -- 127.0.0.1:7000 [CONNECTIONS]`.
//! Serves CONNECTIONS (default 100) connections, then exits.

use arsync_io::{tools, Runtime};
use std::os::fd::OwnedFd;

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:7000".to_string());
    let max: usize = match args.next().map(|v| v.parse()) {
        None => 100,
        Some(Ok(n)) => n,
        Some(Err(_)) => {
            eprintln!("usage: echo ADDR [CONNECTIONS]");
            std::process::exit(2);
        }
    };
    let listener = std::net::TcpListener::bind(&addr)?;
    println!("echoing on {}", listener.local_addr()?);
    let rt = Runtime::new()?;
    let io = rt.io();
    let served =
        rt.block_on(async { tools::echo_server(&io, OwnedFd::from(listener), max).await })??;
    println!("served {served} connections");
    Ok(())
}
