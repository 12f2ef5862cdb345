//! Crash tests: kill -9 the mounted daemon while files are being written, remount, and check
//! that every file fsynced before the kill is intact, that gc then finds no orphan, and that
//! scrub is clean.

mod common;

use common::*;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const ROUNDS: u64 = 30;

#[test]
fn kill9_during_writes_keeps_fsynced_files() {
    if !fuse_available() {
        return;
    }
    let mut m = Mounted::new(3, "rs:2+1", "64K");
    let synced: Arc<Mutex<Vec<(String, u64, usize)>>> = Arc::default();
    let mut x: u64 = 0x2545f4914f6cdd1d;
    let mut rnd = move |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    for round in 0..ROUNDS {
        m.mount_foreground();
        let mnt = m.mnt().to_path_buf();
        let log = synced.clone();
        let sizes: Vec<usize> = (0..40).map(|_| rnd(400_000) as usize).collect();
        let writer = std::thread::spawn(move || {
            for (i, len) in sizes.into_iter().enumerate() {
                let name = format!("r{round}-f{i}");
                let seed = round * 1000 + i as u64;
                let r = (|| -> std::io::Result<()> {
                    let mut f = std::fs::File::create(mnt.join(&name))?;
                    f.write_all(&bytes(seed, len))?;
                    if i % 2 == 0 {
                        f.sync_all()?;
                        log.lock().unwrap().push((name.clone(), seed, len));
                    }
                    Ok(())
                })();
                if r.is_err() {
                    return;
                }
            }
        });
        std::thread::sleep(Duration::from_millis(30 + rnd(250)));
        m.kill9();
        writer.join().unwrap();
        m.detach_dead();
        // Nothing may have been written into the directory under the mount point.
        assert_eq!(
            std::fs::read_dir(m.mnt()).unwrap().count(),
            0,
            "round {round}: writes leaked under the mount"
        );
        // Remount: everything fsynced so far reads back exactly.
        m.mount_foreground();
        for (name, seed, len) in synced.lock().unwrap().iter() {
            let got =
                std::fs::read(m.p(name)).unwrap_or_else(|e| panic!("round {round}: {name}: {e}"));
            assert!(got == bytes(*seed, *len), "round {round}: {name} differs");
        }
        // Files that were not fsynced may be missing or short, but never unreadable.
        for e in std::fs::read_dir(m.mnt()).unwrap() {
            let e = e.unwrap();
            std::fs::read(e.path()).unwrap();
        }
        m.unmount();
    }
    // The mount-time gc already collected every orphan: a second gc finds nothing, scrub is clean.
    let out = run_ok(&["gc", m.pool.to_str().unwrap()]);
    assert!(out.contains("removed 0 orphan fragments"), "{out}");
    let scrub = run(&["scrub", m.pool.to_str().unwrap()]);
    assert!(
        scrub.status.success(),
        "{}",
        String::from_utf8_lossy(&scrub.stdout)
    );
    assert!(
        synced.lock().unwrap().len() >= ROUNDS as usize / 2,
        "the test barely wrote anything"
    );
}
