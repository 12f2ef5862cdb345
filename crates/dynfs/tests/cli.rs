//! The admin subcommands run as a real binary against real pools.

mod common;

use common::*;
use dynfs_core::meta::{Kind, ROOT_INO};
use dynfs_core::{Fs, Pool};

fn fill(m: &Mounted, files: usize) -> Vec<Vec<u8>> {
    let fs = Fs::new(Pool::open(&m.pool).unwrap());
    (0..files)
        .map(|i| {
            let d = bytes(i as u64 + 100, 90_000 + i * 7);
            let (ino, _) = fs
                .mknod(
                    ROOT_INO,
                    format!("f{i}").as_bytes(),
                    Kind::File,
                    0o644,
                    0,
                    0,
                    0,
                    b"",
                )
                .unwrap();
            fs.write(ino, 0, &d).unwrap();
            fs.flush(ino).unwrap();
            d
        })
        .collect()
}

fn check(m: &Mounted, want: &[Vec<u8>]) {
    let fs = Fs::new(Pool::open(&m.pool).unwrap());
    for (i, d) in want.iter().enumerate() {
        let (ino, a) = fs.lookup(ROOT_INO, format!("f{i}").as_bytes()).unwrap();
        assert_eq!(&fs.read(ino, 0, a.size as usize).unwrap(), d, "f{i}");
    }
}

fn fragments(m: &Mounted) -> Vec<std::path::PathBuf> {
    let mut v = Vec::new();
    for d in &m.disks {
        for sub in std::fs::read_dir(d.join("data")).unwrap() {
            for f in std::fs::read_dir(sub.unwrap().path()).unwrap() {
                v.push(f.unwrap().path());
            }
        }
    }
    v.sort();
    v
}

#[test]
fn scrub_exit_codes_and_repair() {
    let m = Mounted::new(3, "rs:2+1", "64K");
    let want = fill(&m, 3);
    let pool = m.pool.to_str().unwrap();
    assert!(run_ok(&["scrub", pool]).contains("clean"));
    let f = &fragments(&m)[2];
    let mut b = std::fs::read(f).unwrap();
    b[0] ^= 0xff;
    std::fs::write(f, b).unwrap();
    let out = run(&["scrub", "--json", pool]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let bad: u64 = v["disks"]
        .as_object()
        .unwrap()
        .values()
        .map(|d| d["bad"].as_u64().unwrap())
        .sum();
    assert_eq!(bad, 1);
    assert!(run_ok(&["scrub", "--repair", "--rate", "500", pool]).contains("clean"));
    assert!(run_ok(&["scrub", pool]).contains("clean"));
    let st: serde_json::Value = serde_json::from_str(&run_ok(&["status", "--json", pool])).unwrap();
    assert!(st["last_scrub"]["extents"].as_u64().unwrap() >= 6);
    check(&m, &want);
    assert!(run(&["scrub", "--rate", "-1", pool]).status.code() == Some(2));
}

#[test]
fn disk_lifecycle_through_the_cli() {
    let m = Mounted::new(3, "rs:2+1", "64K");
    let want = fill(&m, 4);
    let pool = m.pool.to_str().unwrap();
    let extra = m.tmp.path().join("extra");
    std::fs::create_dir(&extra).unwrap();
    assert!(run_ok(&["disk", "add", pool, extra.to_str().unwrap()]).contains("added disk 4"));
    // Adding the same disk again fails clearly.
    let out = run(&["disk", "add", pool, extra.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("already belongs to pool"));
    let out = run_ok(&["disk", "drain", pool, "2"]);
    assert!(out.contains("disk 2 is empty"), "{out}");
    run_ok(&["disk", "remove", pool, "2"]);
    let st: serde_json::Value = serde_json::from_str(&run_ok(&["status", "--json", pool])).unwrap();
    assert_eq!(st["disks"].as_array().unwrap().len(), 3);
    assert_eq!(st["degraded_extents"], 0);
    // rs:2+1 keeps metadata on two disks: disk 2's replica moved to disk 3 when it drained.
    assert_eq!(st["metadata_replicas_needed"], 2);
    assert_eq!(st["metadata_replica_disks"], serde_json::json!([1, 3]));
    let holders: Vec<u64> = st["disks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["metadata_replica"] == true)
        .map(|d| d["id"].as_u64().unwrap())
        .collect();
    assert_eq!(holders, vec![1, 3]);
    check(&m, &want);
    // A failed disk is rebuilt.
    run_ok(&["disk", "set-health", pool, "1", "failed"]);
    let st: serde_json::Value = serde_json::from_str(&run_ok(&["status", "--json", pool])).unwrap();
    assert!(st["degraded_extents"].as_u64().unwrap() > 0);
    assert_eq!(st["metadata_replica_disks"], serde_json::json!([3, 4]));
    let text = run_ok(&["status", pool]);
    assert!(
        text.contains("metadata replicas: 2 of 2 needed, on disks 3, 4"),
        "{text}"
    );
    // Only 2 healthy disks remain for rs:2+1 (needs 3): rebuild cannot place, says so.
    let out = run(&["rebuild", pool]);
    assert_eq!(out.status.code(), Some(1));
    let extra2 = m.tmp.path().join("extra2");
    std::fs::create_dir(&extra2).unwrap();
    run_ok(&["disk", "add", pool, extra2.to_str().unwrap()]);
    assert!(run_ok(&["rebuild", pool]).contains("0 failed"));
    let st: serde_json::Value = serde_json::from_str(&run_ok(&["status", "--json", pool])).unwrap();
    assert_eq!(st["degraded_extents"], 0);
    std::fs::remove_dir_all(&m.disks[0]).unwrap();
    check(&m, &want);
    assert!(run_ok(&["status", pool]).contains("failed"));
}

#[test]
fn snapshots_through_the_cli() {
    let m = Mounted::new(2, "replicate:2", "64K");
    let want = fill(&m, 2);
    let pool = m.pool.to_str().unwrap();
    let before = fragments(&m).len();
    let out = run(&["snapshot", "create", pool, "before"]);
    assert!(out.status.success());
    // A clean pool's collection at open is not worth a line at the default level.
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
    assert_eq!(fragments(&m).len(), before);
    {
        let fs = Fs::new(Pool::open(&m.pool).unwrap());
        fs.unlink(ROOT_INO, b"f0").unwrap();
        let (ino, _) = fs.lookup(ROOT_INO, b"f1").unwrap();
        fs.write(ino, 0, b"changed").unwrap();
        fs.flush(ino).unwrap();
    }
    assert!(run_ok(&["snapshot", "list", pool]).starts_with("before\t"));
    run_ok(&["snapshot", "restore", pool, "before"]);
    check(&m, &want);
    run_ok(&["snapshot", "delete", pool, "before"]);
    assert_eq!(run_ok(&["snapshot", "list", pool]), "");
    let out = run(&["snapshot", "restore", pool, "nope"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no snapshot named"));
    assert_eq!(fragments(&m).len(), before);
}

#[test]
fn json_logs_and_gc() {
    let m = Mounted::new(2, "replicate:2", "64K");
    fill(&m, 1);
    let orphan = m.disks[0].join("data/07/0000000000009907.0");
    std::fs::write(&orphan, b"orphan").unwrap();
    let out = run(&[
        "--log-format",
        "json",
        "--log",
        "debug",
        "gc",
        m.pool.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("removed 1 orphan fragments (6 bytes)"));
    assert!(!orphan.exists());
    let err = String::from_utf8_lossy(&out.stderr);
    let mut messages = Vec::new();
    for line in err.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{line}: {e}"));
        assert!(v["level"].is_string());
        messages.push(
            v["fields"]["message"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        );
    }
    assert!(messages.iter().any(|m| m == "removed orphan"), "{err}");
    assert!(messages.iter().any(|m| m == "gc finished"), "{err}");
}
