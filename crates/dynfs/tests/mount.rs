//! FUSE integration tests: real tools (cp, rsync, tar, git) against a mounted pool.

mod common;

use common::*;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;

#[test]
fn cp_rsync_tar_roundtrip_through_the_mount() {
    if !fuse_available() {
        return;
    }
    let mut m = Mounted::new(3, "rs:2+1", "64K");
    m.mount();
    let src = m.tmp.path().join("src");
    make_tree(&src);
    // cp -a in.
    sh(&format!(
        "cp -a '{}' '{}'",
        src.display(),
        m.p("cp").display()
    ));
    assert_eq!(rsync_diff(&src, &m.p("cp")), "");
    // rsync -aHAX in and out.
    sh(&format!(
        "rsync -aHAX '{}/' '{}/'",
        src.display(),
        m.p("rs").display()
    ));
    assert_eq!(rsync_diff(&src, &m.p("rs")), "");
    let out = m.tmp.path().join("out");
    sh(&format!(
        "rsync -aHAX '{}/' '{}/'",
        m.p("rs").display(),
        out.display()
    ));
    assert_eq!(rsync_diff(&src, &out), "");
    // Hard links survive.
    assert_eq!(
        std::fs::metadata(m.p("rs/hard")).unwrap().ino(),
        std::fs::metadata(m.p("rs/a/f3")).unwrap().ino()
    );
    // Sparse file costs little.
    let meta = std::fs::metadata(m.p("rs/sparse")).unwrap();
    assert_eq!(meta.len(), 5 << 20);
    assert!(
        meta.blocks() * 512 <= 128 * 1024,
        "sparse file uses {} blocks",
        meta.blocks()
    );
    // tar out of the mount and back in.
    sh(&format!(
        "cd '{}' && tar --xattrs -cf '{}' .",
        m.p("rs").display(),
        m.tmp.path().join("t.tar").display()
    ));
    std::fs::create_dir(m.p("untar")).unwrap();
    sh(&format!(
        "cd '{}' && tar --xattrs -xpf '{}'",
        m.p("untar").display(),
        m.tmp.path().join("t.tar").display()
    ));
    assert_eq!(rsync_diff(&src, &m.p("untar")), "");
    // Survives remount.
    m.unmount();
    m.mount();
    assert_eq!(rsync_diff(&src, &m.p("rs")), "");
    m.unmount();
    let scrub = run(&["scrub", m.pool.to_str().unwrap()]);
    assert!(
        scrub.status.success(),
        "{}",
        String::from_utf8_lossy(&scrub.stdout)
    );
    assert!(run_ok(&["gc", m.pool.to_str().unwrap()]).contains("removed 0 orphan fragments"));
}

#[test]
fn git_init_and_commit_in_the_mount() {
    if !fuse_available() {
        return;
    }
    if std::process::Command::new("git")
        .arg("--version")
        .output()
        .is_err()
    {
        println!("SKIP: git not installed");
        return;
    }
    let mut m = Mounted::new(2, "replicate:2", "64K");
    m.mount();
    let repo = m.p("repo");
    std::fs::create_dir(&repo).unwrap();
    make_tree(&repo.join("tree"));
    std::fs::remove_file(repo.join("tree/fifo")).unwrap();
    let g = format!(
        "cd '{}' && git -c init.defaultBranch=main init -q && git add -A && git -c user.name=t -c user.email=t@e commit -qm first && \
         echo more >> tree/a/f1 && git -c user.name=t -c user.email=t@e commit -qam second && git fsck --strict && git log --oneline | wc -l",
        repo.display()
    );
    assert_eq!(sh(&g).trim(), "2");
    assert!(sh(&format!(
        "cd '{}' && git status --porcelain",
        repo.display()
    ))
    .is_empty());
    m.unmount();
}

#[test]
fn posix_details_through_the_kernel() {
    if !fuse_available() {
        return;
    }
    let mut m = Mounted::new(3, "rs:2+1", "64K");
    m.mount();
    // Large sequential write and read with 1 MiB requests.
    let big = bytes(42, 5 << 20);
    std::fs::write(m.p("big"), &big).unwrap();
    assert_eq!(std::fs::read(m.p("big")).unwrap(), big);
    // Overwrite in the middle, extend, truncate.
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(m.p("big"))
        .unwrap();
    f.seek(SeekFrom::Start(100_000)).unwrap();
    f.write_all(b"MIDDLE").unwrap();
    f.set_len(200_000).unwrap();
    f.sync_all().unwrap();
    drop(f);
    let mut want = big[..200_000].to_vec();
    want[100_000..100_006].copy_from_slice(b"MIDDLE");
    assert_eq!(std::fs::read(m.p("big")).unwrap(), want);
    // Policy xattr: read, change (restripe), file still identical.
    sh(&format!(
        "setfattr -n user.dynfs.policy -v replicate:3 '{}'",
        m.p("big").display()
    ));
    assert_eq!(
        sh(&format!(
            "getfattr --only-values -n user.dynfs.policy '{}'",
            m.p("big").display()
        )),
        "replicate:3"
    );
    assert_eq!(std::fs::read(m.p("big")).unwrap(), want);
    assert!(std::process::Command::new("setfattr")
        .args(["-n", "user.dynfs.policy", "-v", "rs:9+9"])
        .arg(m.p("big"))
        .status()
        .map(|s| !s.success())
        .unwrap());
    // rename exchange / noreplace via mv.
    std::fs::write(m.p("x"), b"X").unwrap();
    std::fs::write(m.p("y"), b"Y").unwrap();
    sh(&format!(
        "mv --exchange '{}' '{}' 2>/dev/null || true",
        m.p("x").display(),
        m.p("y").display()
    ));
    let xy = (
        std::fs::read(m.p("x")).unwrap(),
        std::fs::read(m.p("y")).unwrap(),
    );
    assert!(xy == (b"Y".to_vec(), b"X".to_vec()) || xy == (b"X".to_vec(), b"Y".to_vec()));
    sh(&format!(
        "mv -n '{}' '{}'",
        m.p("x").display(),
        m.p("y").display()
    ));
    assert!(m.p("x").exists());
    // SEEK_DATA / SEEK_HOLE through the kernel on a sparse file.
    sh(&format!("truncate -s 10M '{}' && printf data | dd of='{}' bs=1 seek=7000000 conv=notrunc status=none", m.p("sp").display(), m.p("sp").display()));
    let f = std::fs::File::open(m.p("sp")).unwrap();
    let seek = |whence: i32| {
        use std::os::fd::AsRawFd;
        // SAFETY: lseek on a descriptor owned by `f`, which outlives the call.
        unsafe { libc::lseek(f.as_raw_fd(), 0, whence) }
    };
    let v = vec![seek(libc::SEEK_DATA), seek(libc::SEEK_HOLE)];
    drop(f);
    assert_eq!(v, vec![7000000 / 65536 * 65536, 0]);
    // fallocate punch hole.
    sh(&format!(
        "fallocate -p -o 0 -l 65536 '{}'",
        m.p("big").display()
    ));
    assert_eq!(
        std::fs::read(m.p("big")).unwrap()[..65536],
        vec![0u8; 65536][..]
    );
    // statfs.
    let df = sh(&format!("stat -f -c '%b %f' '{}'", m.mnt().display()));
    let v: Vec<u64> = df.split_whitespace().map(|s| s.parse().unwrap()).collect();
    assert!(v[0] > 0 && v[1] <= v[0]);
    // Device node and FIFO.
    sh(&format!(
        "mknod '{}' c 1 3 && mkfifo '{}'",
        m.p("null").display(),
        m.p("pipe").display()
    ));
    assert_eq!(
        std::fs::metadata(m.p("null")).unwrap().rdev(),
        libc::makedev(1, 3)
    );
    // Unlinked-but-open file stays readable.
    let mut f = std::fs::File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(m.p("tmpfile"))
        .unwrap();
    f.write_all(b"still here").unwrap();
    std::fs::remove_file(m.p("tmpfile")).unwrap();
    f.seek(SeekFrom::Start(0)).unwrap();
    let mut s = String::new();
    std::io::Read::read_to_string(&mut f, &mut s).unwrap();
    assert_eq!(s, "still here");
    drop(f);
    m.unmount();
    let st = run_ok(&["status", "--json", m.pool.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_str(&st).unwrap();
    assert_eq!(v["degraded_extents"], 0);
    assert!(v["policies"]["replicate:3"].as_u64().unwrap() >= 1);
}

#[test]
fn random_operations_match_a_shadow_copy() {
    if !fuse_available() {
        return;
    }
    let mut m = Mounted::new(6, "rs:4+2", "64K");
    m.mount();
    let shadow = m.tmp.path().join("shadow");
    std::fs::create_dir(&shadow).unwrap();
    let mut x: u64 = 0x9e3779b97f4a7c15;
    let mut rnd = |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    let names = ["a", "b", "c", "d", "e", "f"];
    for step in 0..400 {
        let name = names[rnd(names.len() as u64) as usize];
        let (mp, sp) = (m.p(name), shadow.join(name));
        match rnd(6) {
            0 | 1 => {
                let off = rnd(400_000);
                let data = bytes(step, rnd(150_000) as usize + 1);
                for p in [&mp, &sp] {
                    let mut f = std::fs::OpenOptions::new()
                        .write(true)
                        .create(true)
                        .truncate(false)
                        .open(p)
                        .unwrap();
                    f.seek(SeekFrom::Start(off)).unwrap();
                    f.write_all(&data).unwrap();
                }
            }
            2 => {
                let len = rnd(300_000);
                for p in [&mp, &sp] {
                    if p.exists() {
                        std::fs::OpenOptions::new()
                            .write(true)
                            .open(p)
                            .unwrap()
                            .set_len(len)
                            .unwrap();
                    }
                }
            }
            3 => {
                let to = names[rnd(names.len() as u64) as usize];
                if sp.exists() {
                    std::fs::rename(&mp, m.p(to)).unwrap();
                    std::fs::rename(&sp, shadow.join(to)).unwrap();
                }
            }
            4 => {
                if sp.exists() && rnd(3) == 0 {
                    std::fs::remove_file(&mp).unwrap();
                    std::fs::remove_file(&sp).unwrap();
                }
            }
            _ => {
                if sp.exists() {
                    assert_eq!(
                        std::fs::read(&mp).unwrap(),
                        std::fs::read(&sp).unwrap(),
                        "step {step} {name}"
                    );
                }
            }
        }
    }
    let check = |m: &Mounted| {
        for n in names {
            assert_eq!(m.p(n).exists(), shadow.join(n).exists(), "{n}");
            if shadow.join(n).exists() {
                assert_eq!(
                    std::fs::read(m.p(n)).unwrap(),
                    std::fs::read(shadow.join(n)).unwrap(),
                    "{n}"
                );
            }
        }
    };
    check(&m);
    m.unmount();
    // Lose two disks (M = 2): everything still reads back.
    std::fs::remove_dir_all(&m.disks[1]).unwrap();
    std::fs::remove_dir_all(&m.disks[4]).unwrap();
    m.mount();
    check(&m);
    m.unmount();
}

#[test]
fn daemon_reports_mount_errors_and_cli_rejects_bad_input() {
    let m = Mounted::new(2, "replicate:2", "64K");
    // Mount point missing.
    let out = run(&["mount", m.pool.to_str().unwrap(), "/nonexistent/mnt"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a directory"));
    // Bad policy / too few disks / unknown pool.
    let out = run(&[
        "init",
        "/tmp/x-pool-never",
        "--disk",
        "/tmp",
        "--policy",
        "rs:4+2",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs at least 6 disks"));
    assert!(!std::path::Path::new("/tmp/x-pool-never").exists());
    let out = run(&["status", "/nonexistent/pool"]);
    assert_eq!(out.status.code(), Some(2));
    let out = run(&[
        "disk",
        "set-health",
        m.pool.to_str().unwrap(),
        "1",
        "sideways",
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid health"));
    // A broken pool.toml lists every error.
    let cfg = m.pool.join("pool.toml");
    std::fs::write(
        &cfg,
        "default_policy = \"bogus\"\nextent_size = \"7\"\nwat = 1\n",
    )
    .unwrap();
    let out = run(&["status", m.pool.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "missing key pool_id",
        "default_policy",
        "extent_size",
        "unknown key \"wat\"",
        "missing key disks",
    ] {
        assert!(err.contains(needle), "{needle} not in {err}");
    }
}

#[test]
fn prometheus_metrics_endpoint() {
    if !fuse_available() {
        return;
    }
    use std::io::Read;
    let mut m = Mounted::new(2, "replicate:2", "64K");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    run_ok(&[
        "mount",
        m.pool.to_str().unwrap(),
        m.mnt().to_str().unwrap(),
        "--metrics",
        &addr,
    ]);
    m.mounted = true;
    std::fs::write(m.p("f"), bytes(1, 100_000)).unwrap();
    assert_eq!(std::fs::read(m.p("f")).unwrap().len(), 100_000);
    let get = |path: &str| {
        let mut c = std::net::TcpStream::connect(&addr).unwrap();
        c.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .unwrap();
        let mut s = String::new();
        c.read_to_string(&mut s).unwrap();
        s
    };
    let body = get("/metrics");
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    let written: u64 = body
        .lines()
        .find_map(|l| l.strip_prefix("dynfs_written_bytes_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(written, 100_000);
    assert!(body.contains("dynfs_disk_healthy{disk=\"1\",health=\"healthy\"} 1"));
    assert!(get("/other").starts_with("HTTP/1.1 404"));
    // While mounted, `dynfs status` asks the daemon.
    let out = run_ok(&["status", m.pool.to_str().unwrap()]);
    assert!(out.contains("pool is mounted"), "{out}");
    assert!(out.contains("healthy"), "{out}");
    // Admin commands run in the daemon (see tests/ops.rs).
    let out = run_ok(&["scrub", m.pool.to_str().unwrap()]);
    assert!(out.contains("clean"), "{out}");
    m.unmount();
    assert!(!m.pool.join("status.json").exists());
}

#[test]
fn concurrent_writes_to_one_file_through_the_mount() {
    if !fuse_available() {
        return;
    }
    use std::os::unix::fs::FileExt;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let mut m = Mounted::new(3, "rs:2+1", "64K");
    m.mount();
    let len = 8 << 20;
    let want = Arc::new(bytes(77, len));
    for name in ["one", "two"] {
        let f = Arc::new(
            std::fs::OpenOptions::new()
                .create(true)
                .truncate(true)
                .read(true)
                .write(true)
                .open(m.p(name))
                .unwrap(),
        );
        let done = Arc::new(AtomicBool::new(false));
        // stat and fsync while the writes go on (the size seen never shrinks).
        let observer = {
            let (f, done) = (f.clone(), done.clone());
            std::thread::spawn(move || {
                let mut last = 0;
                let mut n = 0u32;
                while !done.load(Ordering::Relaxed) {
                    let size = f.metadata().unwrap().len();
                    assert!(size >= last, "size went back from {last} to {size}");
                    last = size;
                    if n % 5 == 0 {
                        f.sync_data().unwrap();
                    }
                    n += 1;
                    std::thread::sleep(std::time::Duration::from_millis(2));
                }
            })
        };
        let writers: Vec<_> = (0..6usize)
            .map(|t| {
                let (f, want) = (f.clone(), want.clone());
                std::thread::spawn(move || {
                    let chunk = 192 << 10;
                    if t < 3 {
                        // Disjoint chunks, every third one, from the end backwards.
                        let offs: Vec<usize> = (0..len).step_by(chunk).collect();
                        for (k, &off) in offs.iter().enumerate().rev() {
                            if k % 3 == t {
                                let end = (off + chunk).min(len);
                                f.write_all_at(&want[off..end], off as u64).unwrap();
                            }
                        }
                    } else {
                        // Overlapping uneven ranges, with the same bytes.
                        let mut x = (t as u64 + 3).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                        for _ in 0..40 {
                            x ^= x << 13;
                            x ^= x >> 7;
                            x ^= x << 17;
                            let off = (x % len as u64) as usize;
                            let end = (off + (x >> 40) as usize % 400_000 + 1).min(len);
                            f.write_all_at(&want[off..end], off as u64).unwrap();
                        }
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        done.store(true, Ordering::Relaxed);
        observer.join().unwrap();
        drop(f);
        assert!(std::fs::read(m.p(name)).unwrap() == *want, "{name} differs");
    }
    // Past the page cache: from the pool after a remount.
    m.unmount();
    m.mount();
    for name in ["one", "two"] {
        assert!(
            std::fs::read(m.p(name)).unwrap() == *want,
            "{name} differs after remount"
        );
    }
    m.unmount();
}

/// Set-ID bits under FUSE_HANDLE_KILLPRIV_V2, where the filesystem clears them: writes and
/// truncates by an unprivileged user, and chown, leave the same modes as on a local filesystem
/// (tmpfs), and the kernel no longer asks for `security.capability` before every write.
#[test]
fn set_id_bits_are_cleared_as_on_a_local_filesystem() {
    if !fuse_available() {
        return;
    }
    let mut m = Mounted::new(2, "replicate:2", "64K");
    m.mount();
    let nobody = "setpriv --reuid=65534 --regid=65534 --clear-groups";
    let script = format!(
        "set -e; cd \"$1\"
        for f in w t r c g x a; do printf x > $f; done
        chmod 6777 w t r c a
        chgrp 65534 g && chmod 2767 g
        chmod 2707 x
        {nobody} sh -c 'printf y >> w'
        {nobody} truncate -s 0 t
        printf y >> r
        chown 1:1 c
        {nobody} sh -c 'printf y >> g'
        {nobody} sh -c 'printf y >> x'
        {nobody} fallocate -l 8192 a
        sleep 1.1
        stat -c '%n %a %s' w t r c g x a"
    );
    let run = |dir: &std::path::Path| script_in(&script, dir);
    let local = m.tmp.path().join("local");
    std::fs::create_dir(&local).unwrap();
    for d in [m.tmp.path(), &local] {
        std::fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    let want = run(&local);
    assert!(want.starts_with("w 777 2\n"), "local: {want}");
    assert!(want.contains("r 6777 2\n"), "local: {want}");
    assert!(want.contains("a 777 8192\n"), "local: {want}");
    assert_eq!(run(m.mnt()), want);
    // One write(2) after another: one capability lookup for the first at most, not one each.
    let log = m.tmp.path().join("mount.log");
    m.unmount();
    run_ok(&[
        "mount",
        m.pool.to_str().unwrap(),
        m.mnt().to_str().unwrap(),
        "--log-file",
        log.to_str().unwrap(),
        "--log",
        "fuser=debug",
    ]);
    m.mounted = true;
    sh(&format!(
        "dd if=/dev/zero of='{}' bs=4k count=50 status=none",
        m.p("many").display()
    ));
    m.unmount();
    let text = std::fs::read_to_string(&log).unwrap();
    let lookups = text
        .matches("GETXATTR name \"security.capability\"")
        .count();
    assert!(text.contains("CREATE name \"many\""), "no request log");
    assert!(
        lookups <= 1,
        "{lookups} security.capability lookups for one file"
    );
}

/// New files, directories and FIFOs inherit a parent's default ACL as on a local filesystem
/// (the umask ignored under a default ACL, applied elsewhere), and directories pass the
/// default ACL on.
#[test]
fn default_acls_are_inherited_as_on_a_local_filesystem() {
    if !fuse_available() {
        return;
    }
    let mut m = Mounted::new(2, "replicate:2", "64K");
    m.mount();
    let script = "set -e; cd \"$1\"
        mkdir d n
        setfacl -d -m u:nobody:rwx,g::r-x,o::- d
        setfacl -d -m u::rwx,g::r-x,o::r-x n
        umask 022
        touch d/f; mkdir d/sub; mkfifo d/p; touch d/sub/g; mkdir d/sub/deeper
        umask 077
        touch d/f2 n/f plain; mkdir n/s plaind
        for f in d/f d/sub d/p d/sub/g d/sub/deeper d/f2 n/f n/s plain plaind; do
            stat -c '%n %A' $f; getfacl -cp $f; done";
    let run = |dir: &std::path::Path| script_in(script, dir);
    let local = m.tmp.path().join("local");
    std::fs::create_dir(&local).unwrap();
    let want = run(&local);
    assert!(want.contains("d/f -rw-rw----\n"), "local: {want}");
    assert!(want.contains("default:user:nobody:rwx\n"), "local: {want}");
    assert!(want.contains("plain -rw-------\n"), "local: {want}");
    assert_eq!(run(m.mnt()), want);
    // Still there after a remount (committed with the create).
    m.unmount();
    m.mount();
    assert_eq!(
        sh(&format!("getfacl -cp '{}'", m.p("d/sub/deeper").display())),
        sh(&format!(
            "getfacl -cp '{}'",
            local.join("d/sub/deeper").display()
        ))
    );
}

/// Snapshots are browsable, read-only, under `/.snapshots/<name>`: the tree as it was when the
/// snapshot was taken (content, metadata, hard links, xattrs, holes), while the live tree moves
/// on; changes under `.snapshots` fail with EROFS; a deleted snapshot disappears.
#[test]
fn snapshots_are_browsable_read_only_through_the_mount() {
    if !fuse_available() {
        return;
    }
    let mut m = Mounted::new(3, "rs:2+1", "64K");
    m.mount();
    let pool = m.pool.to_str().unwrap().to_string();
    let saved = m.tmp.path().join("saved");
    make_tree(&m.mnt().join("t"));
    sh(&format!(
        "cp -a '{}' '{}'",
        m.p("t").display(),
        saved.display()
    ));
    // Hidden from the root's listing, but there, and empty before any snapshot.
    let root_list = sh(&format!("ls -a '{}'", m.mnt().display()));
    assert!(!root_list.contains(".snapshots"), "{root_list}");
    assert_eq!(sh(&format!("ls -A '{}'", m.p(".snapshots").display())), "");
    assert!(run_ok(&["snapshot", "create", &pool, "monday"]).contains("created snapshot"));
    // The live tree changes after the snapshot.
    std::fs::write(m.p("t/a/f5"), b"changed").unwrap();
    std::fs::remove_file(m.p("t/a/f9")).unwrap();
    std::fs::write(m.p("t/new"), b"new").unwrap();
    run_ok(&["snapshot", "create", &pool, "tuesday"]);
    assert_eq!(
        sh(&format!("ls '{}'", m.p(".snapshots").display())),
        "monday\ntuesday\n"
    );
    let monday = m.p(".snapshots/monday/t");
    assert_eq!(rsync_diff(&saved, &monday), "", "monday's view differs");
    assert!(std::fs::read(monday.join("a/f5")).unwrap() == bytes(5, 65535));
    assert_eq!(
        std::fs::read(m.p(".snapshots/tuesday/t/a/f5")).unwrap(),
        b"changed"
    );
    assert!(!monday.join("new").exists());
    assert!(m.p(".snapshots/tuesday/t/new").exists());
    // Holes are reported as holes.
    let holes = sh(&format!(
        "python3 -c \"import os; f=os.open('{}', os.O_RDONLY); print(os.lseek(f, 0, os.SEEK_DATA) > 0)\"",
        monday.join("sparse").display()
    ));
    assert_eq!(holes.trim(), "True");
    // Read-only: every kind of change fails with EROFS and changes nothing.
    for cmd in [
        "touch t/new2",
        "printf x >> t/a/f1",
        "truncate -s 0 t/a/f1",
        "rm t/a/f1",
        "mkdir t/d2",
        "rmdir t/empty-dir",
        "mv t/a/f1 t/a/f1x",
        "ln t/a/f1 t/a/f1l",
        "ln -s x t/sl",
        "chmod 600 t/a/f1",
        "setfattr -n user.x -v y t/a/f1",
        "setfattr -x user.color t/a/f5",
    ] {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "cd '{}' && {cmd}",
                m.p(".snapshots/monday").display()
            ))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("Read-only file system"),
            "{cmd}: {err}"
        );
    }
    // Nor can `.snapshots` itself be removed, renamed over or replaced.
    for cmd in [
        "rmdir .snapshots",
        "mkdir .snapshots",
        "mv t .snapshots/x",
        "mv t/new .snapshots",
    ] {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("cd '{}' && {cmd}", m.mnt().display()))
            .output()
            .unwrap();
        assert!(!out.status.success(), "{cmd} succeeded");
    }
    assert_eq!(
        rsync_diff(&saved, &monday),
        "",
        "a refused change altered the view"
    );
    // Restoring one file is a copy out of the view.
    sh(&format!(
        "cp -a '{}' '{}'",
        monday.join("a/f9").display(),
        m.p("t/a/f9").display()
    ));
    assert!(std::fs::read(m.p("t/a/f9")).unwrap() == bytes(9, 1_100_000));
    run_ok(&["snapshot", "delete", &pool, "monday"]);
    assert_eq!(
        sh(&format!("ls '{}'", m.p(".snapshots").display())),
        "tuesday\n"
    );
    assert!(!m.p(".snapshots/monday").exists());
    m.unmount();
    let out = run_ok(&["scrub", &pool]);
    assert!(out.contains("clean"), "{out}");
}

/// The output of shell `script` run with `dir` as `$1`; the script must succeed.
fn script_in(script: &str, dir: &std::path::Path) -> String {
    let out = std::process::Command::new("sh")
        .args(["-c", script, "sh"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `dynfs snapshot restore` on a mounted pool: the daemon replaces the live tree and drops what
/// the kernel cached, so the mount shows the restored tree at once; an unknown snapshot is an
/// error that changes nothing.
#[test]
fn snapshot_restore_while_mounted() {
    if !fuse_available() {
        return;
    }
    let mut m = Mounted::new(3, "rs:2+1", "64K");
    m.mount();
    let pool = m.pool.to_str().unwrap().to_string();
    std::fs::create_dir(m.p("d")).unwrap();
    std::fs::write(m.p("d/a"), bytes(1, 200_000)).unwrap();
    std::fs::write(m.p("keep"), bytes(2, 100_000)).unwrap();
    run_ok(&["snapshot", "create", &pool, "s1"]);
    // Changes after the snapshot, read through the mount so the kernel caches them.
    std::fs::write(m.p("d/a"), bytes(3, 50_000)).unwrap();
    std::fs::remove_file(m.p("keep")).unwrap();
    std::fs::write(m.p("new"), b"new").unwrap();
    std::fs::create_dir(m.p("d/sub")).unwrap();
    assert_eq!(std::fs::read(m.p("d/a")).unwrap(), bytes(3, 50_000));
    assert!(!m.p("keep").exists());
    assert_eq!(sh(&format!("ls '{}'", m.mnt().display())), "d\nnew\n");
    // An unknown snapshot: a clear error, exit code 2, nothing changed.
    let out = run(&["snapshot", "restore", &pool, "nope"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no snapshot named \"nope\""), "{err}");
    assert_eq!(std::fs::read(m.p("d/a")).unwrap(), bytes(3, 50_000));
    assert_eq!(std::fs::read(m.p("new")).unwrap(), b"new");
    // A file held open across the restore.
    let held = std::fs::File::open(m.p("d/a")).unwrap();
    // Restore while mounted: the mount shows the snapshot's tree at once.
    let out = run_ok(&["snapshot", "restore", &pool, "s1"]);
    assert!(out.contains("restored snapshot s1"), "{out}");
    assert_eq!(sh(&format!("ls '{}'", m.mnt().display())), "d\nkeep\n");
    assert_eq!(sh(&format!("ls '{}'", m.p("d").display())), "a\n");
    assert_eq!(std::fs::metadata(m.p("d/a")).unwrap().len(), 200_000);
    assert_eq!(std::fs::read(m.p("d/a")).unwrap(), bytes(1, 200_000));
    assert_eq!(std::fs::read(m.p("keep")).unwrap(), bytes(2, 100_000));
    assert!(!m.p("new").exists());
    assert!(!m.p("d/sub").exists());
    // A handle opened before the restore is stale: it fails instead of mixing both trees.
    let mut got = Vec::new();
    let err = std::io::Read::read_to_end(&mut &held, &mut got).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    drop(held);
    // The restored tree is what the pool holds: it survives a remount, and scrubs clean.
    m.unmount();
    assert!(run_ok(&["scrub", &pool]).contains("clean"));
    m.mount();
    assert_eq!(std::fs::read(m.p("d/a")).unwrap(), bytes(1, 200_000));
    assert_eq!(sh(&format!("ls '{}'", m.mnt().display())), "d\nkeep\n");
    m.unmount();
}

/// `dynfs gc` on a mounted pool removes orphans but no fragment that a file being written or
/// an open, unlinked file still needs.
#[test]
fn gc_while_a_file_is_being_written() {
    if !fuse_available() {
        return;
    }
    let mut m = Mounted::new(3, "rs:2+1", "64K");
    m.mount();
    let pool = m.pool.to_str().unwrap().to_string();
    // An orphan: a fragment of extent 0, which no extent ever has.
    let orphan = m.disks[0].join("data/00/0000000000000000.0");
    std::fs::write(&orphan, b"orphan").unwrap();
    // An unlinked file still open.
    std::fs::write(m.p("gone"), bytes(7, 300_000)).unwrap();
    let gone = std::fs::File::open(m.p("gone")).unwrap();
    std::fs::remove_file(m.p("gone")).unwrap();
    // A file being written: some extents committed, some with the background writer, a
    // partly written one buffered.
    let data = bytes(8, 3 << 20);
    let half = (3 << 20) / 2 + 1000;
    let mut f = std::fs::File::create(m.p("big")).unwrap();
    std::io::Write::write_all(&mut f, &data[..half]).unwrap();
    let out = run_ok(&["gc", &pool]);
    assert!(
        out.contains("removed 1 orphan fragments") && out.contains("0 unlinked inodes"),
        "{out}"
    );
    assert!(!orphan.exists());
    std::io::Write::write_all(&mut f, &data[half..]).unwrap();
    f.sync_all().unwrap();
    drop(f);
    assert_eq!(std::fs::read(m.p("big")).unwrap(), data);
    let mut got = Vec::new();
    std::io::Read::read_to_end(&mut &gone, &mut got).unwrap();
    assert_eq!(got, bytes(7, 300_000));
    drop(gone);
    m.unmount();
    // Nothing the metadata references went missing.
    let out = run_ok(&["scrub", &pool]);
    assert!(out.contains("clean"), "{out}");
}

/// Many files written at once through the mount, more than the write buffer budget holds a
/// buffer for: writes that find no room do not wait in the daemon (`Fs::write_committing`: the
/// kernel's writeback sends only so many at once) and every file arrives whole.
#[test]
fn more_writers_than_the_write_buffer_holds() {
    if !fuse_available() {
        return;
    }
    let mut m = Mounted::new(3, "rs:2+1", "64K");
    let toml = m.pool.join("pool.toml");
    let conf = std::fs::read_to_string(&toml).unwrap();
    let conf: String = conf
        .lines()
        .filter(|l| !l.starts_with("write_buffer_mib"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&toml, format!("{conf}write_buffer_mib = 1\n")).unwrap();
    m.mount();
    let t0 = std::time::Instant::now();
    let writers: Vec<_> = (0..40u64)
        .map(|i| {
            let path = m.p(&format!("w{i}"));
            std::thread::spawn(move || std::fs::write(path, bytes(i + 50, 600_000)).unwrap())
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    assert!(
        t0.elapsed() < std::time::Duration::from_secs(120),
        "{:?}",
        t0.elapsed()
    );
    for i in 0..40u64 {
        assert_eq!(
            std::fs::read(m.p(&format!("w{i}"))).unwrap(),
            bytes(i + 50, 600_000),
            "w{i}"
        );
    }
    m.unmount();
}
