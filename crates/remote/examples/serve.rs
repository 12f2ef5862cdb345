//! `serve --server [--sender] -<flags>e.<caps> . PATH`: the arsync server
//! roles on stdin/stdout, for use as `rsync --rsync-path=serve`.

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = arsync_remote::server::serve_stdio(&args);
    std::process::exit(code.code());
}
