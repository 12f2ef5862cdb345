//! Every operation on both backends, against real files, pipes and sockets.

use arsync_io::{Backend, FileKind, IoConfig, Mode, Runtime, AT_FDCWD};
use std::ffi::CString;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

fn rt(mode: Mode) -> Runtime {
    let rt = Runtime::with_config(IoConfig::default().mode(mode)).expect("runtime");
    let want = if mode == Mode::Threads {
        Backend::Threads
    } else {
        Backend::Uring
    };
    assert_eq!(rt.backend(), want);
    rt
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .expect("tempdir")
}

fn both(f: impl Fn(Mode)) {
    f(Mode::Uring);
    f(Mode::Threads);
}

fn dirfd(p: &Path) -> std::fs::File {
    std::fs::File::open(p).unwrap()
}

#[test]
fn files_and_directories() {
    both(|mode| {
        let d = tmp();
        let rt = rt(mode);
        let io = rt.io();
        let dir = dirfd(d.path());
        let dfd = dir.as_raw_fd();
        rt.block_on(async {
            let f = io
                .open(dfd, "f", libc::O_CREAT | libc::O_RDWR, 0o600)
                .await
                .unwrap();
            let (r, _) = io.write_all_at(&f, b"0123456789".to_vec(), 0).await;
            r.unwrap();
            let (r, b) = io.read_at(&f, Vec::with_capacity(4), 3).await;
            assert_eq!((r.unwrap(), &b[..]), (4, &b"3456"[..]));
            let (r, b) = io.read_full_at(&f, Vec::with_capacity(100), 0).await;
            assert_eq!((r.unwrap(), &b[..]), (10, &b"0123456789"[..]));
            io.fsync(&f, true).await.unwrap();
            io.fallocate(&f, 0, 0, 8192).await.unwrap();
            io.fadvise(&f, 0, 0, libc::POSIX_FADV_NORMAL).await.unwrap();
            io.ftruncate(&f, 20).await.unwrap();
            let st = io.fstat(&f).await.unwrap();
            assert_eq!((st.size, st.kind(), st.perm()), (20, FileKind::File, 0o600));
            io.close(f).await.unwrap();
            let f2 = io
                .open2(dfd, "f", libc::O_RDONLY, 0, 0x08 /* RESOLVE_BENEATH */)
                .await
                .unwrap();
            assert_eq!(io.fstat(&f2).await.unwrap().size, 20);
            let e = io
                .open2(dfd, "../x", libc::O_RDONLY, 0, 0x08)
                .await
                .unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::EXDEV));
            io.mkdir(dfd, "sub", 0o755).await.unwrap();
            io.symlink("f", dfd, "sub/ln").await.unwrap();
            assert_eq!(io.readlink(dfd, "sub/ln").await.unwrap(), b"f");
            io.link(dfd, "f", dfd, "hard", 0).await.unwrap();
            assert_eq!(io.statx(dfd, "f", 0).await.unwrap().nlink, 2);
            io.rename(dfd, "hard", dfd, "sub/hard2", 0).await.unwrap();
            let e = io
                .rename(dfd, "sub/hard2", dfd, "f", libc::RENAME_NOREPLACE)
                .await
                .unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::EEXIST));
            let st = io
                .statx(dfd, "sub/ln", libc::AT_SYMLINK_NOFOLLOW)
                .await
                .unwrap();
            assert_eq!(st.kind(), FileKind::Symlink);
            io.chmod(dfd, Some(Path::new("f")), 0o640, 0).await.unwrap();
            io.chown(
                dfd,
                Some(Path::new("sub/ln")),
                u32::MAX,
                u32::MAX,
                libc::AT_SYMLINK_NOFOLLOW,
            )
            .await
            .unwrap();
            let t = [
                libc::timespec {
                    tv_sec: 1_000_000,
                    tv_nsec: 5,
                },
                libc::timespec {
                    tv_sec: 2_000_000,
                    tv_nsec: 7,
                },
            ];
            io.utimens(dfd, Some(Path::new("f")), t, 0).await.unwrap();
            let st = io.statx(dfd, "f", 0).await.unwrap();
            assert_eq!(
                (st.perm(), st.mtime.sec, st.mtime.nsec, st.atime.sec),
                (0o640, 2_000_000, 7, 1_000_000)
            );
            // fd forms: futimens, fchmod, fchown
            let ff = io.open(dfd, "f", libc::O_RDONLY, 0).await.unwrap();
            let t2 = [
                libc::timespec {
                    tv_sec: 3,
                    tv_nsec: libc::UTIME_OMIT,
                },
                libc::timespec {
                    tv_sec: 4_000_000,
                    tv_nsec: 9,
                },
            ];
            io.utimens(ff.as_raw_fd(), None, t2, 0).await.unwrap();
            io.chmod(ff.as_raw_fd(), None, 0o604, 0).await.unwrap();
            io.chown(ff.as_raw_fd(), None, u32::MAX, u32::MAX, 0)
                .await
                .unwrap();
            let st = io.fstat(&ff).await.unwrap();
            assert_eq!(
                (st.perm(), st.mtime.sec, st.mtime.nsec, st.atime.sec),
                (0o604, 4_000_000, 9, 1_000_000)
            );
            io.chmod(dfd, Some(Path::new("f")), 0o640, 0).await.unwrap();
            io.close(ff).await.unwrap();
            io.mknod(dfd, "fifo", libc::S_IFIFO | 0o644, 0)
                .await
                .unwrap();
            assert_eq!(
                io.statx(dfd, "fifo", 0).await.unwrap().kind(),
                FileKind::Fifo
            );
            // streaming directory read
            let mut rd = io.read_dir(dfd, ".").await.unwrap();
            let mut names = Vec::new();
            while let Some(batch) = rd.next_batch().await.unwrap() {
                names.extend(
                    batch
                        .into_iter()
                        .map(|e| (e.name.into_string().unwrap(), e.kind)),
                );
            }
            names.sort();
            let sub = io
                .open(dfd, "sub", libc::O_RDONLY | libc::O_DIRECTORY, 0)
                .await
                .unwrap();
            let mut rd2 = io.read_dir_fd(sub);
            let mut sub_names = Vec::new();
            while let Some(batch) = rd2.next_batch().await.unwrap() {
                sub_names.extend(batch.into_iter().map(|e| e.name.into_string().unwrap()));
            }
            sub_names.sort();
            assert_eq!(sub_names, vec!["hard2".to_string(), "ln".to_string()]);
            assert!(io
                .statx(rd2.dir_fd().as_raw_fd(), "ln", libc::AT_SYMLINK_NOFOLLOW)
                .await
                .is_ok());
            assert_eq!(
                names,
                vec![
                    ("f".into(), FileKind::File),
                    ("fifo".into(), FileKind::Fifo),
                    ("sub".into(), FileKind::Dir)
                ]
            );
            io.unlink(dfd, "sub/hard2", 0).await.unwrap();
            io.unlink(dfd, "sub/ln", 0).await.unwrap();
            io.unlink(dfd, "sub", libc::AT_REMOVEDIR).await.unwrap();
            let e = io.statx(dfd, "sub", 0).await.unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
            // bad input: a NUL in a path is an error, not a panic
            let e = io.statx(dfd, "a\0b", 0).await.unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
        })
        .unwrap();
        assert_eq!(
            std::fs::metadata(d.path().join("f")).unwrap().mode() & 0o777,
            0o640
        );
    });
}

#[test]
fn xattrs() {
    both(|mode| {
        let d = tmp();
        let rt = rt(mode);
        let io = rt.io();
        let p = d.path().join("x");
        std::fs::write(&p, b"").unwrap();
        let f = std::fs::File::open(&p).unwrap();
        rt.block_on(async {
            if io.fsetxattr(&f, b"user.a", b"1".to_vec(), 0).await.is_err() {
                return; // file system without user xattrs
            }
            assert_eq!(io.fgetxattr(&f, b"user.a").await.unwrap(), b"1");
            io.setxattr(&p, true, b"user.b", b"two".to_vec(), 0)
                .await
                .unwrap();
            assert_eq!(io.getxattr(&p, false, b"user.b").await.unwrap(), b"two");
            let big: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
            io.fsetxattr(&f, b"user.big", big.clone(), 0).await.unwrap();
            assert_eq!(io.fgetxattr(&f, b"user.big").await.unwrap(), big);
            assert_eq!(io.getxattr(&p, true, b"user.big").await.unwrap(), big);
            assert_eq!(io.getxattr(&p, false, b"user.big").await.unwrap(), big);
            io.fremovexattr(&f, b"user.big").await.unwrap();
            let mut names = io.listxattr(&p, true).await.unwrap();
            names.sort();
            assert_eq!(names, vec![b"user.a".to_vec(), b"user.b".to_vec()]);
            assert_eq!(io.flistxattr(&f).await.unwrap().len(), 2);
            io.removexattr(&p, false, b"user.a").await.unwrap();
            io.fremovexattr(&f, b"user.b").await.unwrap();
            assert!(io.listxattr(&p, false).await.unwrap().is_empty());
            let e = io.fgetxattr(&f, b"user.a").await.unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::ENODATA));
        })
        .unwrap();
    });
}

#[test]
fn data_copy_paths() {
    both(|mode| {
        let d = tmp();
        let rt = rt(mode);
        let io = rt.io();
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();
        std::fs::write(d.path().join("src"), &data).unwrap();
        let dir = dirfd(d.path());
        let dfd = dir.as_raw_fd();
        rt.block_on(async {
            // small-file chain, and the error when the source is shorter than announced
            io.copy_small_file(dfd, "src", data.len() as u64, dfd, "copy1", 0o600)
                .await
                .unwrap();
            let e = io
                .copy_small_file(dfd, "src", data.len() as u64 + 10, dfd, "copy2", 0o600)
                .await
                .unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof);
            let e = io
                .copy_small_file(dfd, "missing", 10, dfd, "copy3", 0o600)
                .await
                .unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
            // copy_file_range and FICLONE (tmpfs refuses FICLONE: an error, not a panic)
            let src = io.open(dfd, "src", libc::O_RDONLY, 0).await.unwrap();
            let dst = io
                .open(dfd, "copy4", libc::O_CREAT | libc::O_WRONLY, 0o600)
                .await
                .unwrap();
            let mut off = 0;
            while off < data.len() {
                off += io
                    .copy_file_range(&src, off as u64, &dst, off as u64, data.len() - off)
                    .await
                    .unwrap();
            }
            let _ = io.ficlone(&dst, &src).await;
            // sparse file: SEEK_DATA / SEEK_HOLE
            let sp = io
                .open(dfd, "sparse", libc::O_CREAT | libc::O_RDWR, 0o600)
                .await
                .unwrap();
            io.ftruncate(&sp, 1 << 20).await.unwrap();
            let (r, _) = io.write_all_at(&sp, vec![1u8; 4096], 512 * 1024).await;
            r.unwrap();
            assert_eq!(io.seek_data(&sp, 0).await.unwrap(), Some(512 * 1024));
            assert_eq!(
                io.seek_hole(&sp, 512 * 1024).await.unwrap(),
                Some(512 * 1024 + 4096)
            );
            assert_eq!(io.seek_data(&sp, 600 * 1024).await.unwrap(), None);
            // batched statx
            let names = ["src", "copy1", "nope"]
                .iter()
                .map(|n| CString::new(*n).unwrap())
                .collect();
            let st = io.statx_many(dfd, names, 0).await;
            assert_eq!(st[0].as_ref().unwrap().size, data.len() as u64);
            assert_eq!(st[1].as_ref().unwrap().perm(), 0o600);
            assert_eq!(
                st[2].as_ref().unwrap_err().raw_os_error(),
                Some(libc::ENOENT)
            );
        })
        .unwrap();
        assert_eq!(std::fs::read(d.path().join("copy1")).unwrap(), data);
        assert_eq!(std::fs::read(d.path().join("copy4")).unwrap(), data);
    });
}

#[test]
fn pipes_sockets_and_timers() {
    both(|mode| {
        let rt = rt(mode);
        let io = rt.io();
        let mut fds = [0; 2];
        // SAFETY: pipe2 fills the array.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: fresh fds.
        let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let d = tmp();
        std::fs::write(d.path().join("in"), b"spliced bytes").unwrap();
        let fin = std::fs::File::open(d.path().join("in")).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        rt.block_on(async {
            assert_eq!(io.splice(&fin, Some(0), &w, None, 100).await.unwrap(), 13);
            let (n, b) = io.read_at(&r, Vec::with_capacity(64), u64::MAX).await;
            assert_eq!((n.unwrap(), &b[..]), (13, &b"spliced bytes"[..]));
            let t = std::time::Instant::now();
            io.sleep(Duration::from_millis(20)).await.unwrap();
            assert!(t.elapsed() >= Duration::from_millis(15));
            // SAFETY: plain socket creation, checked.
            let s =
                unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
            assert!(s >= 0);
            // SAFETY: fresh fd.
            let client = unsafe { OwnedFd::from_raw_fd(s) };
            let io2 = io.clone();
            let lfd = listener.as_raw_fd();
            let acc = arsync_io::spawn_local(async move {
                // SAFETY: the listener outlives the runtime's block_on.
                io2.accept(unsafe { std::os::fd::BorrowedFd::borrow_raw(lfd) })
                    .await
            })
            .unwrap();
            io.connect(&client, addr).await.unwrap();
            let server = acc.await.unwrap();
            let (n, _) = io.send(&client, b"hello".to_vec(), false).await;
            assert_eq!(n.unwrap(), 5);
            let (n, b) = io.recv(&server, Vec::with_capacity(16)).await;
            assert_eq!((n.unwrap(), &b[..]), (5, &b"hello"[..]));
            let (n, _) = io.send(&server, vec![3u8; 5000], true).await;
            assert_eq!(n.unwrap(), 5000);
            let mut got = Vec::new();
            while got.len() < 5000 {
                let (n, b) = io.recv(&client, Vec::with_capacity(8192)).await;
                assert!(n.unwrap() > 0);
                got.extend(b);
            }
            assert!(got.iter().all(|&x| x == 3));
        })
        .unwrap();
    });
}

#[test]
fn forced_and_automatic_backend_selection() {
    // Forced threads.
    let forced = rt(Mode::Threads);
    assert_eq!(forced.backend(), Backend::Threads);
    assert!(forced.describe().contains("ARSYNC_IO=threads"));
    // Automatic, with io_uring available.
    let auto = Runtime::with_config(IoConfig::default()).unwrap();
    assert_eq!(auto.backend(), Backend::Uring);
    assert!(auto.fallback_reason().is_none());
    assert!(auto.describe().contains("io_uring setup:"));
    // Simulated setup failure (as under Docker's seccomp profile): auto falls back and works.
    let failing =
        IoConfig::default().ring_factory(|_| Err(std::io::Error::from_raw_os_error(libc::EPERM)));
    let rt = Runtime::with_config(failing.clone()).unwrap();
    assert_eq!(rt.backend(), Backend::Threads);
    assert!(rt
        .fallback_reason()
        .unwrap()
        .contains("io_uring unavailable"));
    let io = rt.io();
    let st = rt
        .block_on(async { io.statx(AT_FDCWD, "/", 0).await })
        .unwrap()
        .unwrap();
    assert_eq!(st.kind(), FileKind::Dir);
    // Forced io_uring where it cannot be set up: a clear error.
    let err = Runtime::with_config(failing.mode(Mode::Uring))
        .err()
        .unwrap();
    let msg = err.to_string();
    assert!(
        msg.contains("ARSYNC_IO=uring") && msg.contains("ARSYNC_IO=threads"),
        "{msg}"
    );
    // The environment variable's values.
    assert_eq!(arsync_io::parse_mode("threads").unwrap(), Mode::Threads);
    assert_eq!(arsync_io::parse_mode("uring").unwrap(), Mode::Uring);
    assert_eq!(arsync_io::parse_mode("").unwrap(), Mode::Auto);
    assert!(arsync_io::parse_mode("fast").is_err());
}

#[test]
fn env_var_selects_backend_in_a_child_process() {
    // Run this test binary's own helper in a child with ARSYNC_IO set, so the env var path is
    // exercised without touching this process's environment.
    if let Ok(want) = std::env::var("ARSYNC_IO_TEST_CHILD") {
        let rt = Runtime::new().unwrap();
        assert_eq!(rt.backend().to_string(), want);
        return;
    }
    let exe = std::env::current_exe().unwrap();
    for (val, want) in [
        ("threads", "threads"),
        ("uring", "io_uring"),
        ("auto", "io_uring"),
    ] {
        let out = std::process::Command::new(&exe)
            .args([
                "env_var_selects_backend_in_a_child_process",
                "--exact",
                "--nocapture",
            ])
            .env("ARSYNC_IO", val)
            .env("ARSYNC_IO_TEST_CHILD", want)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ARSYNC_IO={val}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = std::process::Command::new(&exe)
        .args(["env_var_selects_backend_in_a_child_process", "--exact"])
        .env("ARSYNC_IO", "bogus")
        .env("ARSYNC_IO_TEST_CHILD", "x")
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn std_interop_after_io() {
    // Files written through both backends are read back by std.
    both(|mode| {
        let d = tmp();
        let rt = rt(mode);
        let io = rt.io();
        let p = d.path().join("z");
        rt.block_on(async {
            let f = io
                .open(
                    AT_FDCWD,
                    &p,
                    libc::O_CREAT | libc::O_WRONLY | libc::O_APPEND,
                    0o644,
                )
                .await
                .unwrap();
            for i in 0..10u8 {
                let (r, _) = io.write_all_at(&f, vec![i; 10], u64::MAX).await;
                r.unwrap();
            }
        })
        .unwrap();
        let mut s = Vec::new();
        std::fs::File::open(&p)
            .unwrap()
            .read_to_end(&mut s)
            .unwrap();
        assert_eq!(s.len(), 100);
        assert_eq!(s[95], 9);
        let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(b"!").unwrap();
    });
}

#[test]
fn missing_opcodes_degrade_to_the_pool() {
    use arsync_ring::{Opcode, Ring};
    let cfg = IoConfig::default().mode(Mode::Uring).ring_factory(|e| {
        let mut b = Ring::builder().entries(e);
        for op in Opcode::ALL {
            if op != Opcode::Nop && op != Opcode::Read && op != Opcode::AsyncCancel {
                b = b.without(op);
            }
        }
        b.build()
    });
    let rt = Runtime::with_config(cfg).unwrap();
    assert_eq!(rt.backend(), Backend::Uring);
    let d = tmp();
    let dir = dirfd(d.path());
    let dfd = dir.as_raw_fd();
    let io = rt.io();
    rt.block_on(async {
        let f = io
            .open(dfd, "f", libc::O_CREAT | libc::O_RDWR, 0o600)
            .await
            .unwrap();
        let (r, _) = io.write_all_at(&f, b"degraded".to_vec(), 0).await;
        r.unwrap();
        let (r, b) = io.read_at(&f, Vec::with_capacity(8), 0).await;
        assert_eq!((r.unwrap(), &b[..]), (8, &b"degraded"[..]));
        assert_eq!(io.statx(dfd, "f", 0).await.unwrap().size, 8);
        io.copy_small_file(dfd, "f", 8, dfd, "g", 0o600)
            .await
            .unwrap();
        io.close(f).await.unwrap();
        io.sleep(Duration::from_millis(1)).await.unwrap();
        let st = io
            .statx_many(dfd, vec![CString::new("g").unwrap()], 0)
            .await;
        assert_eq!(st[0].as_ref().unwrap().size, 8);
    })
    .unwrap();
    assert_eq!(std::fs::read(d.path().join("g")).unwrap(), b"degraded");
}

#[test]
fn copy_small_file_of_a_larger_file_uses_the_loop() {
    both(|mode| {
        let d = tmp();
        let data: Vec<u8> = (0..(3u32 << 20) + 5).map(|i| (i % 241) as u8).collect();
        std::fs::write(d.path().join("big"), &data).unwrap();
        std::fs::write(d.path().join("empty"), b"").unwrap();
        let dir = dirfd(d.path());
        let rt = rt(mode);
        let io = rt.io();
        rt.block_on(async {
            io.copy_small_file(
                dir.as_raw_fd(),
                "big",
                data.len() as u64,
                dir.as_raw_fd(),
                "big2",
                0o600,
            )
            .await
            .unwrap();
            io.copy_small_file(
                dir.as_raw_fd(),
                "empty",
                0,
                dir.as_raw_fd(),
                "empty2",
                0o600,
            )
            .await
            .unwrap();
            let e = io
                .copy_small_file(dir.as_raw_fd(), "empty", 0, dir.as_raw_fd(), "big2", 0o600)
                .await
                .unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::EEXIST));
        })
        .unwrap();
        assert_eq!(std::fs::read(d.path().join("big2")).unwrap(), data);
        assert_eq!(std::fs::read(d.path().join("empty2")).unwrap(), b"");
    });
}

#[test]
fn one_runtime_per_thread() {
    let d = tmp();
    let root = d.path().to_path_buf();
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let root = root.clone();
            std::thread::spawn(move || {
                let mode = if t % 2 == 0 {
                    Mode::Uring
                } else {
                    Mode::Threads
                };
                let rt = rt(mode);
                let io = rt.io();
                rt.block_on(async {
                    for i in 0..50 {
                        let p = root.join(format!("t{t}-{i}"));
                        let f = io
                            .open(AT_FDCWD, &p, libc::O_CREAT | libc::O_WRONLY, 0o644)
                            .await
                            .unwrap();
                        let (r, _) = io
                            .write_all_at(&f, format!("{t}:{i}").into_bytes(), 0)
                            .await;
                        r.unwrap();
                        io.close(f).await.unwrap();
                    }
                })
                .unwrap();
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(std::fs::read_dir(&root).unwrap().count(), 200);
    assert_eq!(std::fs::read(root.join("t3-49")).unwrap(), b"3:49");
}

#[test]
fn a_panicking_pool_job_reaches_its_task_and_the_pool_survives() {
    let first = rt(Mode::Threads);
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        first.block_on(arsync_io::spawn_blocking(|| -> u32 {
            panic!("job failed")
        }))
    }));
    assert!(r.is_err());
    let second = rt(Mode::Threads);
    let n = second.block_on(async {
        let mut s = 0;
        for i in 0..64u32 {
            s += arsync_io::spawn_blocking(move || i).await;
        }
        s
    });
    assert_eq!(n.unwrap(), (0..64).sum::<u32>());
}

#[test]
fn large_directory_streams_in_several_batches() {
    let d = tmp();
    for i in 0..3000 {
        std::fs::write(
            d.path().join(format!("entry-with-a-longish-name-{i:05}")),
            b"",
        )
        .unwrap();
    }
    both(|mode| {
        let rt = rt(mode);
        let io = rt.io();
        let (batches, mut names) = rt
            .block_on(async {
                let mut rd = io.read_dir(AT_FDCWD, d.path()).await.unwrap();
                let (mut batches, mut names) = (0, Vec::new());
                while let Some(b) = rd.next_batch().await.unwrap() {
                    batches += 1;
                    names.extend(b.into_iter().map(|e| e.name));
                }
                (batches, names)
            })
            .unwrap();
        names.sort();
        assert!(
            batches > 1,
            "a 32 KiB buffer cannot hold 3000 entries at once"
        );
        assert_eq!(names.len(), 3000);
        assert_eq!(
            names[1234].to_str(),
            Some("entry-with-a-longish-name-01234")
        );
    });
}
