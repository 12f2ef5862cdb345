//! The `arsync` binary: rsync's command line over the arsync engines.
//!
//! Dispatch: `arsync --server ...` runs the server role a remote rsync
//! client starts (see `arsync_remote::server`), `arsync --daemon` the
//! rsync daemon, a `host:path` / `rsync://` argument the remote client
//! ([`remote`]), anything else the local engine.

mod remote;

use std::ffi::OsString;

fn main() {
    let args: Vec<OsString> = std::env::args_os().collect();
    std::process::exit(dispatch(args));
}

fn dispatch(args: Vec<OsString>) -> i32 {
    if args.get(1).is_some_and(|a| a == "--server") {
        let words: Vec<String> = args[1..]
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        return arsync_remote::server::serve_stdio(&words).code();
    }
    if args.iter().skip(1).any(|a| a == "--daemon") {
        return arsync_remote::daemon_server::main_with_args(&args[1..]);
    }
    if remote::has_remote_path(&args) {
        return remote::run(&args);
    }
    arsync_sync::cli::main_with_args(args)
}
