//! Session options with a remote side (issue 4, "same flags and exit codes
//! as local mode"): `--timeout` (exit 30 with rsync's message, keepalives
//! that carry a slow transfer through), `--contimeout` (exit 35),
//! `--stop-after`/`--stop-at` (exit 30, rsync's parse errors) and
//! `--log-file` (rsync's lines), each checked against rsync itself with
//! real binaries over a stand-in for ssh or a TCP socket on loopback.
//! The slow cases run their pairings on threads of their own, so the file
//! takes about as long as its slowest case (`--stop-after=1`: a minute).

use std::ffi::{OsStr, OsString};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use arsync_testutil::remote::{install_fake_ssh, Direction};
use arsync_testutil::scratch_dir;

fn arsync_bin() -> OsString {
    PathBuf::from(env!("CARGO_BIN_EXE_arsync")).into_os_string()
}

fn rsync_bin() -> OsString {
    "rsync".into()
}

/// Writes an executable script.
fn script(path: &Path, text: &str) {
    fs::write(path, text).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
}

/// Runs `prog args` with stdin closed; returns the output and how long it took.
fn timed<S: AsRef<OsStr>>(prog: &OsStr, args: &[S]) -> (Output, Duration) {
    let t = Instant::now();
    let out = Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (out, t.elapsed())
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The first line of stderr (rsync's own message, before its exit line).
fn first_line(o: &Output) -> String {
    stderr(o).lines().next().unwrap_or_default().to_string()
}

/// Pseudo-random bytes (incompressible, so --bwlimit paces all of them).
fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn client_name(p: &OsStr) -> &'static str {
    match p == rsync_bin() {
        true => "rsync",
        false => "arsync",
    }
}

#[test]
fn timeout_on_a_silent_peer_exits_30_with_rsyncs_message() {
    // A "remote shell" that runs nothing and never answers: the client's
    // own timeout must fire, as rsync's does, for a push and for a pull.
    let dir = scratch_dir().unwrap();
    let silent = dir.path().join("silent-ssh");
    script(&silent, "#!/bin/sh\nexec sleep 30\n");
    let src = dir.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("f"), b"data").unwrap();
    let dst = dir.path().join("dst");
    let mut runs = Vec::new();
    for client in [rsync_bin(), arsync_bin()] {
        for d in [Direction::Push, Direction::Pull] {
            let (s, t) = d.endpoints(&src, &dst);
            let args: Vec<OsString> = vec![
                "-a".into(),
                "--timeout=2".into(),
                "-e".into(),
                silent.clone().into(),
                s.into(),
                t.into(),
            ];
            let c = client.clone();
            runs.push((
                client_name(&client),
                d,
                std::thread::spawn(move || timed(&c, &args)),
            ));
        }
    }
    let mut lines = Vec::new();
    for (who, d, h) in runs {
        let (out, took) = h.join().unwrap();
        let what = format!("{who} {d:?}");
        assert_eq!(out.status.code(), Some(30), "{what}: {}", stderr(&out));
        assert!(took < Duration::from_secs(8), "{what} took {took:?}");
        let line = first_line(&out);
        let want = match d {
            Direction::Push => "[sender] io timeout after 2 seconds -- exiting",
            Direction::Pull => "[Receiver] io timeout after 2 seconds -- exiting",
        };
        assert_eq!(line, want, "{what}");
        assert!(
            stderr(&out).contains("timeout in data send/receive (code 30)"),
            "{what}: {}",
            stderr(&out)
        );
        lines.push((d, line));
    }
    // arsync's message is rsync's, word for word.
    for d in [Direction::Push, Direction::Pull] {
        let of: Vec<_> = lines.iter().filter(|l| l.0 == d).map(|l| &l.1).collect();
        assert!(of.windows(2).all(|w| w[0] == w[1]), "{d:?}: {of:?}");
    }
}

#[test]
fn timeout_on_a_peer_that_freezes_mid_transfer() {
    // The server starts, then is stopped (SIGSTOP) a moment into a paced
    // transfer: nothing moves any more, and the arsync client must give
    // up with exit 30 against either server, pushing and pulling.
    let dir = scratch_dir().unwrap();
    let src = dir.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("big"), noise(8 << 20, 7)).unwrap();
    let mut runs = Vec::new();
    for (k, server) in [rsync_bin(), arsync_bin()].into_iter().enumerate() {
        for (j, d) in [Direction::Push, Direction::Pull].into_iter().enumerate() {
            let pidfile = dir.path().join(format!("pid-{k}-{j}"));
            let freeze = dir.path().join(format!("freeze-ssh-{k}-{j}"));
            script(
                &freeze,
                &format!(
                    concat!(
                        "#!/bin/bash\n",
                        arsync_testutil::ssh_skip_to_command!(),
                        "bash -c \"exec $*\" <&0 &\n",
                        "echo $! > {}\n",
                        "sleep 1\n",
                        "kill -STOP $!\n",
                        "wait\n"
                    ),
                    pidfile.display()
                ),
            );
            let dst = dir.path().join(format!("dst-{k}-{j}"));
            let (s, t) = d.endpoints(&src, &dst);
            let args: Vec<OsString> = vec![
                "-a".into(),
                "--bwlimit=1000".into(),
                "--timeout=2".into(),
                "-e".into(),
                freeze.into(),
                "--rsync-path".into(),
                server.clone(),
                s.into(),
                t.into(),
            ];
            let name = format!("arsync->{} {d:?}", client_name(&server));
            // stderr to a file: the frozen server holds it open.
            let errs = dir.path().join(format!("stderr-{k}-{j}"));
            let err_file = fs::File::create(&errs).unwrap();
            let run = std::thread::spawn(move || {
                let t = Instant::now();
                let status = Command::new(arsync_bin())
                    .args(&args)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(err_file)
                    .status()
                    .unwrap();
                (status, t.elapsed())
            });
            runs.push((name, pidfile, errs, run));
        }
    }
    for (what, pidfile, errs, h) in runs {
        let (status, took) = h.join().unwrap();
        let err = fs::read_to_string(&errs).unwrap();
        // The frozen server is ours to end.
        if let Some(pid) = fs::read_to_string(&pidfile)
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())
        {
            // SAFETY: plain kill(2) calls on the pid of a process this test started.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::kill(pid, libc::SIGCONT);
            }
        }
        assert_eq!(status.code(), Some(30), "{what}: {err}");
        assert!(
            err.contains("io timeout after 2 seconds -- exiting"),
            "{what}: {err}"
        );
        assert!(took < Duration::from_secs(20), "{what} took {took:?}");
    }
}

#[test]
fn keepalives_carry_a_slow_transfer_through_the_timeout() {
    // At 20 KiB/s the sender writes a 64 KiB batch and then pauses for
    // seconds, longer than --timeout=2: the side waiting for data would
    // time out but for the keepalives (empty DATA frames) sent while the
    // connection is quiet. Both ways, with arsync on either side.
    let dir = scratch_dir().unwrap();
    let ssh = install_fake_ssh(dir.path()).unwrap();
    let src = dir.path().join("src");
    fs::create_dir(&src).unwrap();
    let data = noise(100_000, 3);
    fs::write(src.join("f"), &data).unwrap();
    let (a, r) = (arsync_bin(), rsync_bin());
    let mut runs = Vec::new();
    for (k, (client, server)) in [(a.clone(), r.clone()), (r, a.clone()), (a.clone(), a)]
        .into_iter()
        .enumerate()
    {
        for d in [Direction::Push, Direction::Pull] {
            let dst = dir.path().join(format!("dst-{k}-{d:?}"));
            let (s, t) = d.endpoints(&src, &dst);
            let args: Vec<OsString> = vec![
                "-a".into(),
                "--bwlimit=20".into(),
                "--timeout=2".into(),
                "-e".into(),
                ssh.clone().into(),
                "--rsync-path".into(),
                server.clone(),
                s.into(),
                t.into(),
            ];
            let what = format!("{}->{} {d:?}", client_name(&client), client_name(&server));
            let c = client.clone();
            runs.push((what, dst, std::thread::spawn(move || timed(&c, &args))));
        }
    }
    for (what, dst, h) in runs {
        let (out, took) = h.join().unwrap();
        assert_eq!(out.status.code(), Some(0), "{what}: {}", stderr(&out));
        assert_eq!(fs::read(dst.join("f")).unwrap(), data, "{what}");
        // It really was slower than the timeout.
        assert!(took > Duration::from_secs(3), "{what} took {took:?}");
    }
}

/// Runs `prog --server --sender --timeout=1 ...` with a stdin that stays
/// open but never carries a byte; returns its output.
fn silent_client(prog: &OsStr, src: &Path) -> (Output, Duration) {
    let t = Instant::now();
    let mut child = Command::new(prog)
        .args([
            "--server",
            "--sender",
            "--timeout=1",
            "-logDtpre.iLsfxCIvu",
            ".",
        ])
        .arg(src)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let keep = child.stdin.take();
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    drop(keep);
    (child.wait_with_output().unwrap(), t.elapsed())
}

#[test]
fn a_server_honours_the_clients_timeout() {
    // The --timeout a client passes on: a server whose client goes silent
    // gives up as rsync's server does.
    let dir = scratch_dir().unwrap();
    let src = dir.path().join("src");
    fs::create_dir(&src).unwrap();
    let (want, _) = silent_client(&rsync_bin(), &src);
    let (got, took) = silent_client(&arsync_bin(), &src);
    assert_eq!(want.status.code(), Some(30), "rsync: {}", stderr(&want));
    assert_eq!(got.status.code(), Some(30), "arsync: {}", stderr(&got));
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert_eq!(first_line(&got), first_line(&want));
}

#[test]
fn daemon_timeouts_for_connect_and_greeting() {
    // --contimeout: a listener whose accept queue is full never completes
    // a connection (exit 35); --timeout: one that accepts but never
    // greets (exit 30). Same codes and messages as rsync's client.
    let full = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    // SAFETY: listen(2) on the listener's own descriptor, to shrink its queue.
    let r = unsafe { libc::listen(std::os::fd::AsRawFd::as_raw_fd(&full), 0) };
    assert_eq!(r, 0);
    let full_port = full.local_addr().unwrap().port();
    let mut held = Vec::new();
    for _ in 0..8 {
        let a = std::net::SocketAddr::from(([127, 0, 0, 1], full_port));
        match std::net::TcpStream::connect_timeout(&a, Duration::from_millis(300)) {
            Ok(s) => held.push(s),
            Err(_) => break,
        }
    }
    assert!(held.len() < 8, "the accept queue never filled");
    let mute = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mute_port = mute.local_addr().unwrap().port();
    let keeper = std::thread::spawn(move || {
        // Accept (and hold) connections, say nothing.
        let mut conns = Vec::new();
        for c in mute.incoming().take(2) {
            conns.push(c);
        }
        std::thread::sleep(Duration::from_secs(3));
    });
    let dir = scratch_dir().unwrap();
    let dst = dir.path().join("dst");
    let mut results = Vec::new();
    for prog in [rsync_bin(), arsync_bin()] {
        let url = format!("rsync://127.0.0.1:{full_port}/m/");
        let (out, took) = timed(
            &prog,
            &["-a", "--contimeout=1", &url, dst.to_str().unwrap()],
        );
        let what = format!("{} --contimeout", client_name(&prog));
        assert_eq!(out.status.code(), Some(35), "{what}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("timeout waiting for daemon connection (code 35)"),
            "{what}: {}",
            stderr(&out)
        );
        assert!(took < Duration::from_secs(5), "{what} took {took:?}");
        let url = format!("rsync://127.0.0.1:{mute_port}/m/");
        let (out, took) = timed(&prog, &["-a", "--timeout=1", &url, dst.to_str().unwrap()]);
        let what = format!("{} --timeout", client_name(&prog));
        assert_eq!(out.status.code(), Some(30), "{what}: {}", stderr(&out));
        assert!(took < Duration::from_secs(5), "{what} took {took:?}");
        results.push(first_line(&out));
    }
    assert_eq!(results[0], results[1]);
    assert_eq!(
        results[0],
        "[Receiver] io timeout after 1 seconds -- exiting"
    );
    drop(held);
    keeper.join().unwrap();
}

#[test]
fn stop_limits_parse_and_stop_as_rsync() {
    let dir = scratch_dir().unwrap();
    let ssh = install_fake_ssh(dir.path()).unwrap();
    let src = dir.path().join("src");
    fs::create_dir(&src).unwrap();
    // 6 MB at 64 KiB/s: well over a minute.
    fs::write(src.join("big"), noise(6 << 20, 11)).unwrap();
    let mut runs = Vec::new();
    for client in [rsync_bin(), arsync_bin()] {
        let dst = dir.path().join(format!("dst-{}", client_name(&client)));
        let (s, t) = Direction::Push.endpoints(&src, &dst);
        let args: Vec<OsString> = vec![
            "-a".into(),
            "--bwlimit=64".into(),
            "--stop-after=1".into(),
            "-e".into(),
            ssh.clone().into(),
            s.into(),
            t.into(),
        ];
        let c = client.clone();
        runs.push((
            client_name(&client),
            std::thread::spawn(move || timed(&c, &args)),
        ));
    }
    // Meanwhile, the values rsync refuses (exit 1, its words).
    let dst = dir.path().join("never");
    let (s, t) = Direction::Push.endpoints(&src, &dst);
    for bad in [
        "--stop-after=x",
        "--time-limit=x",
        "--stop-at=2000-01-01T00:00",
        "--stop-at=bogus",
    ] {
        let mut lines = Vec::new();
        for client in [rsync_bin(), arsync_bin()] {
            let ssh = ssh.to_str().unwrap();
            let (out, _) = timed(&client, &["-a", bad, "-e", ssh, &s, &t]);
            let what = format!("{} {bad}", client_name(&client));
            assert_eq!(out.status.code(), Some(1), "{what}: {}", stderr(&out));
            // Without the program's name.
            let line = first_line(&out);
            lines.push(
                line.split_once(": ")
                    .map(|x| x.1.to_string())
                    .unwrap_or(line),
            );
        }
        assert_eq!(lines[0], lines[1], "{bad}");
    }
    assert!(!dst.exists());
    for (who, h) in runs {
        let (out, took) = h.join().unwrap();
        assert_eq!(out.status.code(), Some(30), "{who}: {}", stderr(&out));
        assert_eq!(first_line(&out), "stopping at requested limit", "{who}");
        assert!(
            (Duration::from_secs(59)..Duration::from_secs(75)).contains(&took),
            "{who} took {took:?}"
        );
    }
}

/// A log file's lines without the time and pid prefix, and with the
/// byte counts of the `sent ... received` line masked (the two
/// implementations send different amounts of protocol data).
fn log_lines(path: &Path) -> Vec<String> {
    let text = fs::read_to_string(path).unwrap();
    text.lines()
        .map(|l| {
            // `YYYY/MM/DD hh:mm:ss [pid] `
            let (stamp, rest) = l.split_at(20.min(l.len()));
            assert!(stamp.chars().nth(4) == Some('/'), "{l}");
            let rest = rest.split_once("] ").map_or(rest, |x| x.1);
            match rest.strip_prefix("sent ") {
                Some(r) => {
                    let total = r.split("total size ").nth(1).unwrap_or_default();
                    format!("sent N bytes  received N bytes  total size {total}")
                }
                None => rest.to_string(),
            }
        })
        .collect()
}

#[test]
fn log_file_lines_are_rsyncs() {
    let dir = scratch_dir().unwrap();
    let ssh = install_fake_ssh(dir.path()).unwrap();
    let src = dir.path().join("src");
    fs::create_dir_all(src.join("sub")).unwrap();
    fs::write(src.join("a"), b"alpha").unwrap();
    fs::write(src.join("sub/b"), b"beta").unwrap();
    std::os::unix::fs::symlink("a", src.join("link")).unwrap();
    let (a, r) = (arsync_bin(), rsync_bin());
    let cases = [
        (None, false),
        (Some("%o %n %l"), false),
        (None, true),
        (Some("%o %n"), true),
    ];
    for (n, (format, delete)) in cases.into_iter().enumerate() {
        for d in [Direction::Push, Direction::Pull] {
            let mut logs = Vec::new();
            let pairs = [
                (r.clone(), r.clone()),
                (a.clone(), r.clone()),
                (a.clone(), a.clone()),
            ];
            for (k, (client, server)) in pairs.into_iter().enumerate() {
                let dst = dir.path().join(format!("dst-{n}-{k}-{d:?}"));
                if delete {
                    // An existing destination with one stale file.
                    fs::create_dir_all(&dst).unwrap();
                    fs::write(dst.join("stale"), b"x").unwrap();
                    // Its `./` is up to date (the log is what is compared).
                    let st = Command::new("touch")
                        .arg("-r")
                        .arg(&src)
                        .arg(&dst)
                        .status()
                        .unwrap();
                    assert!(st.success());
                }
                let log = dir.path().join(format!("log-{n}-{k}-{d:?}"));
                let (s, t) = d.endpoints(&src, &dst);
                let mut args: Vec<OsString> =
                    vec!["-a".into(), format!("--log-file={}", log.display()).into()];
                if delete {
                    args.push("--delete".into());
                }
                if let Some(f) = format {
                    args.push(format!("--log-file-format={f}").into());
                }
                args.extend([
                    "-e".into(),
                    ssh.clone().into(),
                    "--rsync-path".into(),
                    server.clone(),
                ]);
                args.extend([s.into(), t.into()]);
                let (out, _) = timed(&client, &args);
                let what = format!(
                    "{}->{} {d:?} {format:?} delete={delete}",
                    client_name(&client),
                    client_name(&server)
                );
                assert_eq!(out.status.code(), Some(0), "{what}: {}", stderr(&out));
                logs.push((what, log_lines(&log)));
            }
            let (ref_what, want) = &logs[0];
            assert!(want.len() >= 4, "{ref_what}: {want:?}");
            for (what, got) in &logs[1..] {
                assert_eq!(got, want, "{what} against {ref_what}");
            }
        }
    }
}
