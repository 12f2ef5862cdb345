//! The `arsync` binary: rsync's command line over the arsync engines.
//!
//! Dispatch: `arsync --server ...` runs the server role a remote rsync
//! client starts (see `arsync_remote::server`), `arsync --daemon` the
//! rsync daemon, a `host:path` / `rsync://` argument the remote client
//! ([`remote`]), anything else the local engine (which also runs `--watch`,
//! local paths only).

mod remote;

use std::ffi::OsString;

fn main() {
    let args: Vec<OsString> = std::env::args_os().collect();
    std::process::exit(dispatch(args));
}

fn dispatch(args: Vec<OsString>) -> i32 {
    if args.get(1).is_some_and(|a| a == "--server") {
        // The paths keep their bytes (names need not be UTF-8).
        return arsync_remote::server::serve_stdio(&args[1..]).code();
    }
    if args.iter().skip(1).any(|a| a == "--daemon") {
        return arsync_remote::daemon_server::main_with_args(&args[1..]);
    }
    if remote::has_remote_path(&args) {
        if wants_watch(&args) {
            eprintln!(
                "arsync: --watch needs a local source and destination (a host:path or rsync:// side is not supported)"
            );
            eprintln!("arsync error: syntax or usage error (code 1)");
            return 1;
        }
        return remote::run(&args);
    }
    arsync_sync::cli::main_with_args(args)
}

/// True when `--watch` is in effect (the last of `--watch`/`--no-watch` before a `--`).
fn wants_watch(args: &[OsString]) -> bool {
    let mut on = false;
    for a in args.iter().skip(1) {
        if a == "--" {
            break;
        }
        if a == "--watch" {
            on = true;
        } else if a == "--no-watch" {
            on = false;
        }
    }
    on
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_flag_prescan() {
        let v = |a: &[&str]| a.iter().map(OsString::from).collect::<Vec<_>>();
        assert!(wants_watch(&v(&["arsync", "-a", "--watch", "s", "h:d"])));
        assert!(!wants_watch(&v(&[
            "arsync",
            "--watch",
            "--no-watch",
            "s",
            "h:d"
        ])));
        assert!(!wants_watch(&v(&["arsync", "-a", "--", "--watch", "h:d"])));
        assert!(!wants_watch(&v(&[
            "arsync",
            "-a",
            "--watch-delay=5",
            "s",
            "h:d"
        ])));
    }
}
