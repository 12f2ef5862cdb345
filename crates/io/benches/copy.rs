//! Copy benchmark: many small files and one big file, on tmpfs and on disk, comparing the ring
//! core (io_uring chains / reads+writes at queue depths 1, 8, 64, 256), the thread-pool backend,
//! plain std single-threaded and std multi-threaded. Several interleaved rounds; medians.
//!
//! Run: `cargo bench -p arsync-io --bench copy`. Environment (defaults in brackets):
//! `BENCH_FILES` [20000] small files, `BENCH_FILE_SIZE` [4096] bytes each,
//! `BENCH_BIG` [1073741824] bytes of the big file (0 skips it), `BENCH_ROUNDS` [3],
//! `BENCH_DIRS` [/dev/shm:/var/tmp], `BENCH_THREADS` [4] threads for std multi-threaded,
//! `BENCH_DEPTHS` [1,8,64,256].

use arsync_io::{tools, IoConfig, Mode, Runtime};
use arsync_ring::Ring;
use std::cell::Cell;
use std::fs;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, Instant};

fn env<T: std::str::FromStr>(k: &str, d: T) -> T {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

#[derive(Clone, Debug)]
enum Variant {
    Ring(usize),
    Threads,
    Std1,
    StdMt(usize),
}

impl Variant {
    fn name(&self) -> String {
        match self {
            Variant::Ring(q) => format!("ring qd={q}"),
            Variant::Threads => "thread-pool backend".into(),
            Variant::Std1 => "std 1 thread".into(),
            Variant::StdMt(n) => format!("std {n} threads"),
        }
    }
}

fn ring_rt(depth: usize) -> Runtime {
    let files = (depth as u32 * 2 + 16).max(64);
    let cfg = IoConfig::default()
        .mode(Mode::Uring)
        .ring_factory(move |entries| {
            let cpus = std::thread::available_parallelism()
                .map(|n| n.get() as u32)
                .unwrap_or(2);
            Ring::builder()
                .entries(entries.max(1024))
                .files(files)
                .max_workers(cpus * 4, cpus * 4)
                .build()
        });
    Runtime::with_config(cfg).expect("io_uring runtime")
}

fn small_copy(v: &Variant, src: &Path, dst: &Path, n: usize, size: u64) {
    fs::create_dir_all(dst).unwrap();
    let name = |i: usize| format!("f{i}");
    match v {
        Variant::Std1 => {
            for i in 0..n {
                let data = fs::read(src.join(name(i))).unwrap();
                let mut f = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(dst.join(name(i)))
                    .unwrap();
                f.write_all(&data).unwrap();
            }
        }
        Variant::StdMt(t) => {
            let next = std::sync::atomic::AtomicUsize::new(0);
            std::thread::scope(|s| {
                for _ in 0..*t {
                    s.spawn(|| loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if i >= n {
                            break;
                        }
                        let data = fs::read(src.join(name(i))).unwrap();
                        let mut f = fs::OpenOptions::new()
                            .write(true)
                            .create_new(true)
                            .open(dst.join(name(i)))
                            .unwrap();
                        f.write_all(&data).unwrap();
                    });
                }
            });
        }
        Variant::Ring(_) | Variant::Threads => {
            let (rt, depth) = match v {
                Variant::Ring(q) => (ring_rt(*q), *q),
                _ => (
                    Runtime::with_config(IoConfig::default().mode(Mode::Threads)).unwrap(),
                    64,
                ),
            };
            let sd = fs::File::open(src).unwrap();
            let dd = fs::File::open(dst).unwrap();
            let (sfd, dfd) = (sd.as_raw_fd(), dd.as_raw_fd());
            let io = rt.io();
            let next = Rc::new(Cell::new(0usize));
            rt.block_on(async {
                let mut tasks = Vec::new();
                for _ in 0..depth {
                    let (io, next) = (io.clone(), next.clone());
                    tasks.push(rt.spawn_local(async move {
                        loop {
                            let i = next.get();
                            if i >= n {
                                break;
                            }
                            next.set(i + 1);
                            let nm = format!("f{i}");
                            io.copy_small_file(sfd, &nm, size, dfd, &nm, 0o644)
                                .await
                                .unwrap();
                        }
                    }));
                }
                for t in tasks {
                    t.await;
                }
            })
            .unwrap();
        }
    }
}

fn big_copy(v: &Variant, src: &Path, dst: &Path) {
    const CHUNK: usize = 1 << 20;
    match v {
        Variant::Std1 => {
            let mut i = fs::File::open(src).unwrap();
            let mut o = fs::File::create(dst).unwrap();
            let mut buf = vec![0u8; CHUNK];
            loop {
                let n = i.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                o.write_all(&buf[..n]).unwrap();
            }
        }
        Variant::StdMt(t) => {
            let i = fs::File::open(src).unwrap();
            let size = i.metadata().unwrap().len();
            let o = fs::File::create(dst).unwrap();
            let next = std::sync::atomic::AtomicU64::new(0);
            std::thread::scope(|s| {
                for _ in 0..*t {
                    s.spawn(|| {
                        let mut buf = vec![0u8; CHUNK];
                        loop {
                            let off =
                                next.fetch_add(CHUNK as u64, std::sync::atomic::Ordering::Relaxed);
                            if off >= size {
                                break;
                            }
                            let n = i.read_at(&mut buf, off).unwrap();
                            o.write_all_at(&buf[..n], off).unwrap();
                        }
                    });
                }
            });
        }
        Variant::Ring(q) => {
            let rt = ring_rt(*q);
            let io = rt.io();
            rt.block_on(async { tools::copy_file(&io, src, dst, CHUNK, *q).await })
                .unwrap()
                .unwrap();
        }
        Variant::Threads => {
            let rt = Runtime::with_config(IoConfig::default().mode(Mode::Threads)).unwrap();
            let io = rt.io();
            rt.block_on(async { tools::copy_file(&io, src, dst, CHUNK, 16).await })
                .unwrap()
                .unwrap();
        }
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this binary without it, and
    // must not start a multi-minute benchmark.
    if !std::env::args().any(|a| a == "--bench") {
        println!("copy benchmark: run it with `cargo bench -p arsync-io --bench copy`");
        return;
    }
    let files: usize = env("BENCH_FILES", 20_000);
    let fsize: u64 = env("BENCH_FILE_SIZE", 4096);
    let big: u64 = env("BENCH_BIG", 1 << 30);
    let rounds: usize = env("BENCH_ROUNDS", 3).max(1);
    let threads: usize = env("BENCH_THREADS", 4);
    let dirs: String = env("BENCH_DIRS", "/dev/shm:/var/tmp".to_string());
    let depths: String = env("BENCH_DEPTHS", "1,8,64,256".to_string());
    let mut variants: Vec<Variant> = depths
        .split(',')
        .filter_map(|d| d.trim().parse().ok())
        .map(Variant::Ring)
        .collect();
    variants.extend([Variant::Threads, Variant::Std1, Variant::StdMt(threads)]);
    println!(
        "copy benchmark: {files} files x {fsize} B, big file {big} B, {rounds} rounds (median), {} CPUs",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
    );
    for base in dirs.split(':').filter(|d| !d.is_empty()) {
        let root = match tempfile::tempdir_in(base) {
            Ok(r) => r,
            Err(e) => {
                println!("skipping {base}: {e}");
                continue;
            }
        };
        let src = root.path().join("src");
        fs::create_dir_all(&src).unwrap();
        let data: Vec<u8> = (0..fsize).map(|i| (i % 251) as u8).collect();
        for i in 0..files {
            fs::write(src.join(format!("f{i}")), &data).unwrap();
        }
        let bigsrc = root.path().join("big");
        if big > 0 {
            let f = fs::File::create(&bigsrc).unwrap();
            let chunk: Vec<u8> = (0..(1u64 << 20)).map(|i| (i * 7 % 256) as u8).collect();
            let mut left = big;
            let mut off = 0;
            while left > 0 {
                let n = left.min(chunk.len() as u64) as usize;
                f.write_all_at(&chunk[..n], off).unwrap();
                off += n as u64;
                left -= n as u64;
            }
        }
        let mut small_t: Vec<Vec<Duration>> = vec![Vec::new(); variants.len()];
        let mut big_t: Vec<Vec<Duration>> = vec![Vec::new(); variants.len()];
        for round in 0..rounds {
            for (vi, v) in variants.iter().enumerate() {
                let dst = root.path().join(format!("dst{round}_{vi}"));
                let t = Instant::now();
                small_copy(v, &src, &dst, files, fsize);
                small_t[vi].push(t.elapsed());
                let _ = fs::remove_dir_all(&dst);
                if big > 0 {
                    let bd = root.path().join(format!("bigdst{round}_{vi}"));
                    let t = Instant::now();
                    big_copy(v, &bigsrc, &bd);
                    big_t[vi].push(t.elapsed());
                    let _ = fs::remove_file(&bd);
                }
            }
        }
        let small_us: Vec<f64> = small_t
            .iter()
            .map(|t| median(t.clone()).as_secs_f64() * 1e6 / files as f64)
            .collect();
        let big_gbs: Vec<f64> = big_t
            .iter()
            .map(|t| {
                if t.is_empty() {
                    0.0
                } else {
                    big as f64 / median(t.clone()).as_secs_f64() / 1e9
                }
            })
            .collect();
        let std1 = variants
            .iter()
            .position(|v| matches!(v, Variant::Std1))
            .unwrap_or(0);
        let stdmt = variants
            .iter()
            .position(|v| matches!(v, Variant::StdMt(_)))
            .unwrap_or(0);
        println!("\n== {base} ==");
        println!(
            "{:<22} {:>12} {:>10} {:>10} {:>10} {:>10}",
            "variant", "small us/file", "vs std1", "vs stdMT", "big GB/s", "vs stdMT"
        );
        for (vi, v) in variants.iter().enumerate() {
            println!(
                "{:<22} {:>12.2} {:>9.2}x {:>9.2}x {:>10.2} {:>9.2}x",
                v.name(),
                small_us[vi],
                small_us[std1] / small_us[vi],
                small_us[stdmt] / small_us[vi],
                big_gbs[vi],
                if big_gbs[stdmt] > 0.0 {
                    big_gbs[vi] / big_gbs[stdmt]
                } else {
                    0.0
                }
            );
        }
        let best = (0..variants.len())
            .filter(|&i| matches!(variants[i], Variant::Ring(_)))
            .min_by(|&a, &b| small_us[a].total_cmp(&small_us[b]));
        if let Some(b) = best {
            println!(
                "best ring depth for small files: {} at {:.2} us/file = {:.2}x std multi-threaded",
                variants[b].name(),
                small_us[b],
                small_us[stdmt] / small_us[b]
            );
        }
    }
}
