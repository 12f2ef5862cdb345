//! Measures matching and per-directory stack costs.
//!
//! Run: `cargo run --release -p arsync-filter --example filter_bench`

use std::time::Instant;

use arsync_filter::FilterRules;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // `check` or `stack` runs one part only (e.g. under `perf stat` to get CPU time).
    let only = std::env::args().nth(1);
    if only.as_deref() != Some("stack") {
        bench_check()?;
    }
    if only.as_deref() != Some("check") {
        bench_stack()?;
    }
    Ok(())
}

fn bench_check() -> Result<(), Box<dyn std::error::Error>> {
    let mut rules = FilterRules::new();
    for r in [
        "- *.o",
        "- *~",
        "+ /src/**/keep/***",
        "- /build/",
        "- **/target/",
        "H .git/",
        "P /var/cache/**",
        "- [Tt]humbs.db",
        "+ */",
        "+ *.rs",
        "+ *.toml",
        "- *",
    ] {
        rules.add_rule(r)?;
    }
    let names: Vec<Vec<u8>> = (0..1000)
        .map(|i| {
            format!(
                "src/module{}/sub{}/file{}.{}",
                i % 17,
                i % 5,
                i,
                ["rs", "o", "txt", "toml"][i % 4]
            )
            .into_bytes()
        })
        .collect();
    let n = 2_000_000;
    let start = Instant::now();
    let mut excluded = 0usize;
    for i in 0..n {
        if rules.excluded_for_transfer(&names[i % names.len()], i % 7 == 0) {
            excluded += 1;
        }
    }
    let el = start.elapsed();
    println!(
        "check: {} paths x 12 rules in {:?} = {:.0} ns/path ({} excluded)",
        n,
        el,
        el.as_nanos() as f64 / n as f64,
        excluded
    );
    Ok(())
}

fn bench_stack() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join(".rules"), "- *.tmp\n")?;
    for (label, with_merge) in [
        ("no dir-merge rules", false),
        ("one dir-merge rule, file absent below root", true),
    ] {
        let mut r = FilterRules::new();
        if with_merge {
            r.add_rule(": .rules")?;
        }
        let root = r.enter_dir(dir.path(), b"")?;
        let sub = dir.path().join("sub");
        std::fs::create_dir_all(&sub)?;
        let m = 200_000;
        let start = Instant::now();
        for _ in 0..m {
            let t = r.enter_dir(&sub, b"sub")?;
            r.leave_dir(t);
        }
        let el = start.elapsed();
        r.leave_dir(root);
        println!(
            "enter+leave ({label}): {:.0} ns/dir",
            el.as_nanos() as f64 / m as f64
        );
    }
    Ok(())
}
