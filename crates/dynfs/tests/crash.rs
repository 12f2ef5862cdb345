//! Crash tests: kill -9 the mounted daemon while files are being written, remount, and check
//! that every file fsynced before the kill is intact, that gc then finds no orphan, and that
//! scrub is clean.

mod common;

use common::*;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const ROUNDS: u64 = 30;

/// The tests kill daemons at random moments and need a minimum of progress before each kill:
/// run them one at a time, so that neither slows the other down.
static SERIAL: Mutex<()> = Mutex::new(());

#[test]
fn kill9_during_writes_keeps_fsynced_files() {
    if !fuse_available() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
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
    assert_no_orphans_and_scrub_clean(&m.pool);
    assert!(
        synced.lock().unwrap().len() >= ROUNDS as usize / 2,
        "the test barely wrote anything"
    );
}

/// Small files, most stored inline in the metadata, closed without fsync and made durable only
/// by a later fsync of another file (or the periodic commit): after kill -9, every file closed
/// before an fsync returned is intact, and every later one is absent, empty (its create
/// committed, its data not) or intact, never torn or wrong.
#[test]
fn kill9_during_small_file_copies_keeps_files_closed_before_an_fsync() {
    if !fuse_available() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut m = Mounted::new(3, "rs:2+1", "64K");
    let mut x: u64 = 0x9e3779b97f4a7c15;
    let mut rnd = move |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    // (name, seed, len) of every file whose close preceded a completed fsync.
    let mut durable: Vec<(String, u64, usize)> = Vec::new();
    let mut checked_maybe = 0;
    for round in 0..ROUNDS {
        m.mount_foreground();
        let mnt = m.mnt().to_path_buf();
        // Mostly inline-sized files, some stored as fragments.
        let sizes: Vec<usize> = (0..400)
            .map(|i| match i % 10 {
                9 => 4097 + rnd(20_000) as usize,
                _ => 1 + rnd(4096) as usize,
            })
            .collect();
        let writer = std::thread::spawn(move || {
            // (name, seed, len, durable)
            let mut done: Vec<(String, u64, usize, bool)> = Vec::new();
            for (i, len) in sizes.into_iter().enumerate() {
                let name = format!("r{round}-s{i}");
                let seed = round * 10_000 + i as u64;
                let r = (|| -> std::io::Result<()> {
                    let mut f = std::fs::File::create(mnt.join(&name))?;
                    f.write_all(&bytes(seed, len))?;
                    if i % 25 == 24 {
                        f.sync_all()?;
                    }
                    Ok(())
                })();
                if r.is_err() {
                    break;
                }
                done.push((name, seed, len, false));
                if i % 25 == 24 {
                    // Every change before this fsync is durable now.
                    for d in done.iter_mut() {
                        d.3 = true;
                    }
                }
            }
            done
        });
        std::thread::sleep(Duration::from_millis(30 + rnd(400)));
        m.kill9();
        let done = writer.join().unwrap();
        m.detach_dead();
        m.mount_foreground();
        for (name, seed, len, synced) in done {
            if synced {
                durable.push((name, seed, len));
                continue;
            }
            match std::fs::read(m.p(&name)) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => panic!("round {round}: {name}: {e}"),
                Ok(got) => {
                    checked_maybe += 1;
                    assert!(
                        got.is_empty() || got == bytes(seed, len),
                        "round {round}: unsynced {name} is torn ({} of {len} bytes)",
                        got.len()
                    );
                }
            }
        }
        for (name, seed, len) in &durable {
            let got =
                std::fs::read(m.p(name)).unwrap_or_else(|e| panic!("round {round}: {name}: {e}"));
            assert!(got == bytes(*seed, *len), "round {round}: {name} differs");
        }
        // Inode numbers come from a range reserved in the metadata: after the crash, new ones
        // never collide with a surviving file's (a collision would fail the create).
        let after = format!("r{round}-after");
        std::fs::write(m.p(&after), b"after").unwrap_or_else(|e| panic!("round {round}: {e}"));
        let mut inos = std::collections::HashSet::new();
        for e in std::fs::read_dir(m.mnt()).unwrap() {
            let ino = std::os::unix::fs::MetadataExt::ino(&e.unwrap().metadata().unwrap());
            assert!(inos.insert(ino), "round {round}: inode {ino} used twice");
        }
        m.unmount();
    }
    assert_no_orphans_and_scrub_clean(&m.pool);
    assert!(
        durable.len() >= 25 * ROUNDS as usize / 2,
        "the test barely wrote anything: {} durable files",
        durable.len()
    );
    assert!(checked_maybe > 0, "no unsynced file was ever checked");
}

/// After the crash rounds: the mount-time gc already collected every orphan (a second gc
/// finds nothing) and a scrub of the pool is clean.
fn assert_no_orphans_and_scrub_clean(pool: &std::path::Path) {
    let out = run_ok(&["gc", pool.to_str().unwrap()]);
    assert!(out.contains("removed 0 orphan fragments"), "{out}");
    let scrub = run(&["scrub", pool.to_str().unwrap()]);
    assert!(
        scrub.status.success(),
        "{}",
        String::from_utf8_lossy(&scrub.stdout)
    );
}
