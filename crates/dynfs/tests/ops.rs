//! Operations on a mounted pool: the background scrub finds and repairs a corrupted fragment,
//! admin commands reach the daemon through its control socket, and a scrub interrupted by
//! kill -9 resumes from its checkpoint at the next mount.

mod common;

use common::*;
use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Set `scrub_rate_mb_s` in the pool's pool.toml.
fn set_scrub_rate(pool: &Path, rate: f64) {
    let p = pool.join("pool.toml");
    let text = std::fs::read_to_string(&p).unwrap();
    let out: Vec<String> = text
        .lines()
        .map(|l| {
            if l.trim_start().starts_with("scrub_rate_mb_s") {
                format!("scrub_rate_mb_s = {rate:?}")
            } else {
                l.to_string()
            }
        })
        .collect();
    assert!(out.iter().any(|l| l.starts_with("scrub_rate_mb_s")));
    std::fs::write(&p, out.join("\n") + "\n").unwrap();
}

/// Mount as a detached daemon with extra `dynfs mount` arguments.
fn mount_with(m: &mut Mounted, extra: &[&str]) {
    let log = m.tmp.path().join("mount.log");
    let mut args = vec![
        "mount",
        m.pool.to_str().unwrap(),
        m.mnt().to_str().unwrap(),
        "--log-file",
        log.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    run_ok(&args);
    m.mounted = true;
}

/// Mount in the foreground as a child process (so it can be killed), with extra arguments.
fn mount_foreground_with(m: &mut Mounted, extra: &[&str]) {
    let child = Command::new(BIN)
        .args(["mount", m.pool.to_str().unwrap(), m.mnt().to_str().unwrap()])
        .arg("--foreground")
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    m.child = Some(child);
    m.mounted = true;
    wait_for("the mount", 20, || is_mounted(m.mnt()));
}

fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn status(pool: &Path) -> serde_json::Value {
    let out = run_ok(&["status", "--json", pool.to_str().unwrap()]);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("status is not JSON ({e}): {out}"))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn metrics(addr: &str) -> String {
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut s = String::new();
    c.read_to_string(&mut s).unwrap();
    assert!(s.starts_with("HTTP/1.1 200"), "{s}");
    s
}

/// Value of an unlabelled metric.
fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("metric {name} missing in:\n{text}"))
}

/// Every fragment file on a disk.
fn fragments(disk: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    for d in std::fs::read_dir(disk.join("data")).unwrap() {
        let d = d.unwrap().path();
        if d.is_dir() {
            for f in std::fs::read_dir(&d).unwrap() {
                v.push(f.unwrap().path());
            }
        }
    }
    v.sort();
    v
}

fn write_synced(p: &Path, data: &[u8]) {
    let mut f = std::fs::File::create(p).unwrap();
    f.write_all(data).unwrap();
    f.sync_all().unwrap();
}

#[test]
fn background_scrub_repairs_and_admin_commands_reach_the_mount() {
    if !fuse_available() {
        return;
    }
    let mut m = Mounted::new(4, "rs:2+1", "64K");
    set_scrub_rate(&m.pool, 200.0);
    let addr = format!("127.0.0.1:{}", free_port());
    mount_with(&mut m, &["--scrub-interval", "1s", "--metrics", &addr]);
    let pool = m.pool.to_str().unwrap().to_string();

    // The control socket is there and only its owner may use it.
    let sock = std::fs::metadata(m.pool.join("control.sock")).unwrap();
    assert!(sock.file_type().is_socket());
    assert_eq!(sock.permissions().mode() & 0o777, 0o600);

    for i in 0..4u64 {
        write_synced(&m.p(&format!("f{i}")), &bytes(i, 200_000));
    }
    // Corrupt one fragment on the first disk behind the daemon's back.
    let frag = fragments(&m.disks[0])
        .into_iter()
        .next()
        .expect("a fragment on disk 0");
    let good = std::fs::read(&frag).unwrap();
    let mut bad = good.clone();
    for b in bad.iter_mut().take(64) {
        *b ^= 0x5a;
    }
    std::fs::write(&frag, &bad).unwrap();

    // The background scrub finds it and writes the right bytes back.
    wait_for("the background scrub to repair the fragment", 60, || {
        std::fs::read(&frag).is_ok_and(|b| b == good)
    });
    let text = metrics(&addr);
    assert!(
        metric(&text, "dynfs_scrub_bad_fragments_total") >= 1,
        "{text}"
    );
    assert!(
        metric(&text, "dynfs_scrub_repaired_fragments_total") >= 1,
        "{text}"
    );
    assert!(metric(&text, "dynfs_scrub_extents_total") >= 1, "{text}");
    assert!(text.contains("dynfs_job_running{job=\"scrub\"}"), "{text}");
    let st = status(&m.pool);
    let bg = &st["background_scrub"];
    assert_eq!(bg["rate_mb_s"].as_f64(), Some(200.0), "{st}");
    assert_eq!(bg["interval_s"].as_u64(), Some(1), "{st}");
    assert!(bg["repaired_fragments"].as_u64().unwrap() >= 1, "{st}");
    let human = run_ok(&["status", &pool]);
    assert!(human.contains("background scrub: 200 MB/s"), "{human}");

    // `dynfs scrub` talks to the daemon instead of failing on the pool lock.
    let out = run(&["scrub", "--repair", "--json", &pool]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rep: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(rep["complete"], true);
    assert_eq!(rep["unrecoverable"], 0);
    let extents = status(&m.pool)["extents"].as_u64().unwrap();
    assert!(extents >= 16, "{extents} extents");
    assert_eq!(rep["extents"].as_u64(), Some(extents), "{rep}");

    // Drain a disk through the daemon, then remove it.
    let st = status(&m.pool);
    let id = st["disks"][1]["id"].as_u64().unwrap().to_string();
    let before = st["disks"][1]["fragments"].as_u64().unwrap();
    assert!(before > 0);
    let out = run_ok(&["disk", "drain", &pool, &id]);
    assert!(out.contains("is empty"), "{out}");
    let st = status(&m.pool);
    let d = st["disks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"].as_u64().map(|x| x.to_string()).as_deref() == Some(id.as_str()))
        .unwrap();
    assert_eq!(d["health"], "draining");
    assert_eq!(d["fragments"], 0);
    assert!(run_ok(&["disk", "remove", &pool, &id]).contains(&format!("removed disk {id}")));
    // A healthy disk is refused while mounted (it could take new writes meanwhile).
    let healthy = st["disks"][0]["id"].to_string();
    let out = run(&["disk", "remove", &pool, &healthy]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("drain it first"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Replace a disk while mounted: add one, fail another, rebuild.
    let newdisk = m.tmp.path().join("new-disk");
    std::fs::create_dir(&newdisk).unwrap();
    assert!(run_ok(&["disk", "add", &pool, newdisk.to_str().unwrap()]).contains("added disk"));
    let out = run_ok(&["disk", "set-health", &pool, &healthy, "failed"]);
    assert!(out.contains("is now failed"), "{out}");
    assert!(status(&m.pool)["degraded_extents"].as_u64().unwrap() > 0);
    let out = run_ok(&["rebuild", &pool]);
    assert!(out.contains("0 failed"), "{out}");
    let st = status(&m.pool);
    assert_eq!(st["degraded_extents"], 0, "{st}");
    assert_eq!(st["unavailable_extents"], 0, "{st}");
    assert!(
        !fragments(&newdisk).is_empty(),
        "nothing rebuilt onto the new disk"
    );
    // gc runs in the daemon (nothing to collect here).
    let out = run_ok(&["gc", &pool]);
    assert!(out.contains("removed 0 orphan fragments"), "{out}");
    // Snapshots work through the daemon.
    assert!(run_ok(&["snapshot", "create", &pool, "s1"]).contains("created snapshot s1"));
    assert!(run_ok(&["snapshot", "list", &pool]).starts_with("s1\t"));
    assert!(run_ok(&["snapshot", "restore", &pool, "s1"]).contains("restored snapshot s1"));

    // The data is intact through the mount.
    for i in 0..4u64 {
        assert_eq!(
            std::fs::read(m.p(&format!("f{i}"))).unwrap(),
            bytes(i, 200_000)
        );
    }
    m.unmount();
    assert!(!m.pool.join("control.sock").exists());
    // Offline: every fragment verifies, and a fresh mount reads the same data.
    let out = run_ok(&["scrub", &pool]);
    assert!(out.contains("clean"), "{out}");
    m.mount();
    for i in 0..4u64 {
        assert_eq!(
            std::fs::read(m.p(&format!("f{i}"))).unwrap(),
            bytes(i, 200_000)
        );
    }
    m.unmount();
}

#[test]
fn scrub_killed_with_the_daemon_resumes_from_its_checkpoint() {
    if !fuse_available() {
        return;
    }
    let mut m = Mounted::new(3, "rs:2+1", "64K");
    let pool = m.pool.to_str().unwrap().to_string();
    // Fill the pool with the background scrub off (rate 0).
    m.mount();
    for i in 0..6u64 {
        write_synced(&m.p(&format!("f{i}")), &bytes(i, 1 << 20));
    }
    m.unmount();
    // About 9 MB of fragments at 1 MB/s: the pass takes about 9 s, checkpointed every 2 s.
    set_scrub_rate(&m.pool, 1.0);
    mount_foreground_with(&mut m, &["--scrub-interval", "1h"]);
    let mut ckpt = 0;
    wait_for("a scrub checkpoint", 30, || {
        let st = status(&m.pool);
        assert!(st["last_scrub"].is_null(), "the pass ended too soon: {st}");
        ckpt = st["scrub_in_progress"].as_u64().unwrap_or(0);
        ckpt > 0
    });
    m.kill9();
    m.detach_dead();
    // The checkpoint survived the crash.
    let st = status(&m.pool);
    let saved = st["scrub_in_progress"].as_u64().expect("checkpoint kept");
    assert!(saved >= ckpt, "{st}");
    assert!(st["last_scrub"].is_null(), "{st}");
    // Remount (fast now): the background scrub resumes there and completes the pass.
    set_scrub_rate(&m.pool, 500.0);
    mount_with(&mut m, &["--scrub-interval", "1h"]);
    wait_for("the resumed pass to complete", 60, || {
        !status(&m.pool)["last_scrub"].is_null()
    });
    let st = status(&m.pool);
    let last = &st["last_scrub"];
    assert_eq!(last["resumed_from"].as_u64(), Some(saved), "{st}");
    assert_eq!(last["complete"], true);
    assert_eq!(last["extents"], st["extents"], "{st}");
    assert!(st["scrub_in_progress"].is_null(), "{st}");
    assert_eq!(st["background_scrub"]["passes"], 1, "{st}");
    // The next pass is an hour away.
    wait_for("the next pass to be scheduled", 10, || {
        status(&m.pool)["background_scrub"]["next_pass_in_s"]
            .as_u64()
            .is_some_and(|s| s > 3000)
    });
    let out = run_ok(&["scrub", &pool]);
    assert!(out.contains("clean"), "{out}");
    m.unmount();
}

#[test]
fn busy_pool_without_a_daemon_is_reported_clearly() {
    use std::os::fd::AsRawFd;
    let m = Mounted::new(2, "replicate:2", "64K");
    let pool = m.pool.to_str().unwrap();
    // Another process (here: this test) holds the pool lock, and no daemon listens.
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(m.pool.join("pool.lock"))
        .unwrap();
    // SAFETY: flock on a descriptor owned by `lock`, which stays open while it is held.
    assert_eq!(
        unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) },
        0
    );
    // A stale socket left by a dead daemon is not mistaken for a live one.
    let _ = std::os::unix::net::UnixListener::bind(m.pool.join("control.sock")).unwrap();
    // Each command waits a few seconds for the lock before giving up.
    for args in [vec!["scrub", pool], vec!["gc", pool]] {
        let out = run(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("no daemon answers"), "{args:?}: {err}");
    }
    drop(lock);
    assert!(run_ok(&["scrub", pool]).contains("clean"));
}

#[test]
fn control_socket_works_for_a_pool_path_too_long_for_a_socket_address() {
    if !fuse_available() {
        return;
    }
    let tmp = tempfile::tempdir_in("/dev/shm").unwrap();
    let mnt = tempfile::Builder::new()
        .prefix("dynfs-mnt")
        .tempdir_in("/tmp")
        .unwrap();
    // Longer than the 108 bytes a Unix socket address can hold.
    let pool = tmp.path().join("p".repeat(120));
    let pool_s = pool.to_str().unwrap();
    let mut args = vec!["init".to_string(), pool_s.to_string()];
    for i in 0..2 {
        let d = tmp.path().join(format!("d{i}"));
        std::fs::create_dir(&d).unwrap();
        args.extend(["--disk".into(), d.to_str().unwrap().to_string()]);
    }
    let a: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    run_ok(&a);
    run_ok(&["mount", pool_s, mnt.path().to_str().unwrap()]);
    std::fs::write(mnt.path().join("f"), b"hello").unwrap();
    let r = std::panic::catch_unwind(|| {
        // Both reach the daemon (scrub would fail on the pool lock otherwise).
        let out = run_ok(&["status", "--json", pool_s]);
        let st: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert!(st["background_scrub"].is_object(), "{st}");
        let out = run_ok(&["status", pool_s]);
        assert!(out.contains("live status from the daemon"), "{out}");
        assert!(run_ok(&["scrub", pool_s]).contains("clean"));
    });
    sh(&format!("fusermount3 -u '{}'", mnt.path().display()));
    r.unwrap();
    // The daemon removes its socket on the way out.
    wait_for("the daemon to exit", 30, || {
        !pool.join("control.sock").exists()
    });
    wait_for("the pool lock", 30, || {
        run(&["scrub", pool_s]).status.success()
    });
}

#[test]
fn client_scrub_takes_over_the_background_pass() {
    if !fuse_available() {
        return;
    }
    let mut m = Mounted::new(3, "rs:2+1", "64K");
    let pool = m.pool.to_str().unwrap().to_string();
    m.mount();
    for i in 0..4u64 {
        write_synced(&m.p(&format!("f{i}")), &bytes(i, 1 << 20));
    }
    m.unmount();
    // About 6 MB of fragments at 0.2 MB/s: the background pass alone would take 30 s.
    set_scrub_rate(&m.pool, 0.2);
    mount_with(&mut m, &["--scrub-interval", "1h"]);
    wait_for("the background pass to start", 30, || {
        let a = &status(&m.pool)["activity"];
        a["origin"] == "background" && a["done"].as_u64().unwrap_or(0) > 0
    });
    let t = Instant::now();
    // At 2 MB/s the rest takes a few seconds: long enough to see progress lines.
    let out = run(&["scrub", "--rate", "2", "--json", &pool]);
    assert!(out.status.success());
    let progress = String::from_utf8_lossy(&out.stderr);
    let line = progress
        .lines()
        .find(|l| l.starts_with("scrub: "))
        .unwrap_or_else(|| panic!("no progress streamed: {progress}"));
    let (done, total) = line["scrub: ".len()..]
        .trim_end_matches(" extents")
        .split_once(" of ")
        .unwrap();
    assert!(done.parse::<u64>().unwrap() <= total.parse::<u64>().unwrap());
    let rep: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "client scrub took {:?}",
        t.elapsed()
    );
    // The background pass stopped at its checkpoint and the client's scrub continued it.
    assert_eq!(rep["complete"], true, "{rep}");
    assert!(rep["resumed_from"].as_u64().unwrap() > 0, "{rep}");
    let st = status(&m.pool);
    assert_eq!(rep["extents"], st["extents"], "{st}");
    // With the pass complete, the background scrub waits for the interval.
    wait_for("the background scrub to go idle", 10, || {
        let st = status(&m.pool);
        st["activity"].is_null()
            && st["background_scrub"]["next_pass_in_s"]
                .as_u64()
                .is_some_and(|s| s > 3000)
    });
    m.unmount();
}
