//! The examples' cores (file copy, TCP echo server) on both backends.

use arsync_io::{tools, IoConfig, Mode, Runtime};
use std::io::{Read, Write};
use std::os::fd::OwnedFd;

#[test]
fn copy_file_on_both_backends() {
    for mode in [Mode::Uring, Mode::Threads] {
        let d = tempfile::tempdir_in("/dev/shm").unwrap();
        let data: Vec<u8> = (0..3_000_001u32).map(|i| (i * 131 % 253) as u8).collect();
        let (src, dst) = (d.path().join("src"), d.path().join("dst"));
        std::fs::write(&src, &data).unwrap();
        let rt = Runtime::with_config(IoConfig::default().mode(mode)).unwrap();
        let io = rt.io();
        let n = rt
            .block_on(async { tools::copy_file(&io, &src, &dst, 64 * 1024, 8).await })
            .unwrap()
            .unwrap();
        assert_eq!(n, data.len() as u64);
        assert_eq!(std::fs::read(&dst).unwrap(), data);
        let e = rt
            .block_on(async { tools::copy_file(&io, &d.path().join("none"), &dst, 4096, 2).await })
            .unwrap();
        assert_eq!(e.unwrap_err().raw_os_error(), Some(libc::ENOENT));
    }
}

#[test]
fn echo_server_on_both_backends() {
    for mode in [Mode::Uring, Mode::Threads] {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let clients = std::thread::spawn(move || {
            let mut ts = Vec::new();
            for c in 0..4u8 {
                ts.push(std::thread::spawn(move || {
                    let mut s = std::net::TcpStream::connect(addr).unwrap();
                    let msg: Vec<u8> = (0..100_000u32).map(|i| (i as u8).wrapping_add(c)).collect();
                    let mut w = s.try_clone().unwrap();
                    let m2 = msg.clone();
                    let writer = std::thread::spawn(move || {
                        w.write_all(&m2).unwrap();
                        w.shutdown(std::net::Shutdown::Write).unwrap();
                    });
                    let mut back = Vec::new();
                    s.read_to_end(&mut back).unwrap();
                    writer.join().unwrap();
                    assert_eq!(back, msg);
                }));
            }
            for t in ts {
                t.join().unwrap();
            }
        });
        let rt = Runtime::with_config(IoConfig::default().mode(mode)).unwrap();
        let io = rt.io();
        let served = rt
            .block_on(async { tools::echo_server(&io, OwnedFd::from(listener), 4).await })
            .unwrap()
            .unwrap();
        assert_eq!(served, 4);
        clients.join().unwrap();
    }
}
