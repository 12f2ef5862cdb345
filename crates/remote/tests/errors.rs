//! Errors from the real rsync reach the caller with rsync's exit codes.

use arsync_proto::stats::ExitCode;
use arsync_remote::error::RemoteError;
use arsync_remote::pull::{pull, PullOptions};
use arsync_remote::push::{push, PushOptions};

#[test]
fn missing_source_reports_remote_error() {
    let t = tempfile::tempdir_in("/dev/shm").unwrap();
    let mut opts = PullOptions::new(
        format!("{}/nope/", t.path().display()),
        t.path().join("dst"),
    );
    opts.echo_messages = false;
    let err = pull(&opts).expect_err("must fail");
    // rsync reports "change_dir ... failed" and exits with 23 (partial) or 3 (file selection).
    match &err {
        RemoteError::RemoteExit { code, .. } => assert!([3, 23].contains(code), "{err}"),
        other => panic!("unexpected {other}"),
    }
    assert!(matches!(
        err.exit_code(),
        ExitCode::Partial | ExitCode::FileSelect
    ));
}

#[test]
fn unstartable_remote_command_is_an_error() {
    let t = tempfile::tempdir_in("/dev/shm").unwrap();
    let mut opts = PushOptions::new(t.path(), "/tmp/x/");
    opts.command.rsync_path = "/nonexistent/rsync".into();
    let err = push(&opts).expect_err("must fail");
    assert!(matches!(err, RemoteError::Io { .. }), "{err}");
    assert_eq!(err.exit_code(), ExitCode::FileIo);
}

#[test]
fn acl_flag_pulls_named_acl_entries() {
    // -A used to be refused before the transfer; now the ACL arrives.
    let t = tempfile::tempdir_in("/dev/shm").unwrap();
    let src = t.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("f"), b"x").unwrap();
    let st = std::process::Command::new("setfacl")
        .args(["-m", "u:2345:r--"])
        .arg(src.join("f"))
        .status()
        .unwrap();
    assert!(st.success());
    let mut opts = PullOptions::new(format!("{}/", src.display()), t.path().join("dst"));
    opts.command.flags = "logDtprA".into();
    pull(&opts).expect("pull with -A");
    let out = std::process::Command::new("getfacl")
        .args(["-n", "-c"])
        .arg(t.path().join("dst/f"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("user:2345:r--"), "{text}");
}
