//! The `arsync` binary: rsync's command line over the arsync engines.

fn main() {
    std::process::exit(arsync_sync::cli::main_with_args(std::env::args_os()));
}
