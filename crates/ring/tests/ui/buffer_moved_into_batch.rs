use arsync_ring::{op, Ring};

fn main() {
    let ring = Ring::new().unwrap();
    let mut batch = ring.batch();
    let data = vec![1u8; 16];
    let _t = batch.push(op::Write::new(1, data, 0));
    // The write owns `data` until the batch hands it back through `take`.
    println!("{}", data.len());
}
