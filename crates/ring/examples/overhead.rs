//! Measures the user-space cost of the stack: chains of 6 NOPs through batches, 64 tasks.
//! `cargo run --release -p arsync-ring --example overhead`

use arsync_ring::{op, Ring, SqeOpts};
use std::time::Instant;

fn main() -> std::io::Result<()> {
    let ring = Ring::builder().entries(1024).build()?;
    let n = 100_000usize;
    let t = Instant::now();
    let h = ring.handle();
    ring.block_on(async {
        let next = std::rc::Rc::new(std::cell::Cell::new(0usize));
        let mut tasks = Vec::new();
        for _ in 0..64 {
            let (h, next) = (h.clone(), next.clone());
            tasks.push(ring.spawn_local(async move {
                while next.get() < n {
                    next.set(next.get() + 1);
                    let mut b = h.batch();
                    let q = SqeOpts::linked_quiet();
                    for _ in 0..5 {
                        let _ = b.push_with(op::Nop, q);
                    }
                    let last = b.push(op::Nop);
                    b.finished().await.expect("batch");
                    b.take(last).expect("tail").expect("nop");
                }
            }));
        }
        for t in tasks {
            t.await;
        }
    })?;
    let us = t.elapsed().as_secs_f64() * 1e6 / n as f64;
    println!("{us:.2} us per 6-op chain (user space + NOP kernel path)");
    Ok(())
}
