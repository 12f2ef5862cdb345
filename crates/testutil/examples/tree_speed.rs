//! Measures how fast `random_tree` builds and `compare_trees` compares a large tree.
//!
//! Run: `cargo run --release -p arsync-testutil --example tree_speed [files]`

use std::time::Instant;

use arsync_testutil::{compare_trees, random_tree, scratch_dir, CompareOpts, RandomTreeParams};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(20_000);
    let dir = scratch_dir()?;
    let params = RandomTreeParams {
        files,
        dirs: files / 20,
        max_depth: 8,
        max_file_size: 64 * 1024,
        ..RandomTreeParams::default()
    };
    let start = Instant::now();
    let summary = random_tree(&dir.path().join("a"), 1, &params)?;
    let built = start.elapsed();
    random_tree(&dir.path().join("b"), 1, &params)?;
    let start = Instant::now();
    let diffs = compare_trees(
        &dir.path().join("a"),
        &dir.path().join("b"),
        &CompareOpts::all(),
    );
    let compared = start.elapsed();
    println!(
        "{} files, {} dirs, {} MiB: built in {:?}, compared (all checks) in {:?}, {} differences",
        summary.files,
        summary.dirs,
        summary.bytes >> 20,
        built,
        compared,
        diffs.len()
    );
    Ok(())
}
