//! Manual driver: `xfer pull SRC/ DST` or `xfer push SRC DST/`, with
//! optional `--protocol=N` and `-z`; runs the local `rsync --server`.

use arsync_remote::pull::{pull, PullOptions};
use arsync_remote::push::{push, PushOptions};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let pos: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    if pos.len() != 3 {
        eprintln!("usage: xfer pull|push SRC DST [--protocol=N] [-z]");
        std::process::exit(1);
    }
    let protocol = args
        .iter()
        .find_map(|a| a.strip_prefix("--protocol="))
        .and_then(|p| p.parse().ok());
    let z = args.iter().any(|a| a == "-z");
    let start = std::time::Instant::now();
    let res = if pos[0] == "pull" {
        let mut o = PullOptions::new(pos[1].as_str(), pos[2].as_str());
        o.command.protocol = protocol;
        if z {
            o.command.flags.push('z');
        }
        pull(&o)
    } else {
        let mut o = PushOptions::new(pos[1].as_str(), pos[2].as_str());
        o.command.protocol = protocol;
        if z {
            o.command.flags.push('z');
        }
        push(&o)
    };
    match res {
        Ok(s) => {
            println!("{s:?}");
            println!("elapsed {:.3}s", start.elapsed().as_secs_f64());
        }
        Err(e) => {
            eprintln!("xfer: {e}");
            std::process::exit(e.exit_code().code());
        }
    }
}
