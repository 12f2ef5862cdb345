//! `--delete` in both directions against the real rsync.

mod common;

use std::path::Path;

use arsync_remote::pull::{pull, PullOptions};
use arsync_remote::push::{push, PushOptions};
use common::*;

/// Extraneous entries in the destination, including a symlink that points
/// outside (it must be removed, not followed).
fn add_junk(dst: &Path, outside: &Path) {
    std::fs::create_dir_all(dst.join("junkdir/deeper")).unwrap();
    std::fs::write(dst.join("junkdir/deeper/f"), b"x").unwrap();
    std::fs::write(dst.join("a/b/junk.txt"), b"x").unwrap();
    std::os::unix::fs::symlink(outside, dst.join("a/outlink")).unwrap();
}

fn run(push_mode: bool, protocol: Option<i32>) {
    let t = tempfile::tempdir_in("/dev/shm").unwrap();
    let (src, dst, outside) = (
        t.path().join("src"),
        t.path().join("dst"),
        t.path().join("outside"),
    );
    make_tree(&src, 50_000);
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("precious"), b"keep").unwrap();
    let go = |delete: bool| {
        if push_mode {
            let mut o = PushOptions::new(&src, format!("{}/", dst.display()));
            o.command.delete = delete;
            o.command.protocol = protocol;
            push(&o).unwrap_or_else(|e| panic!("{e}"))
        } else {
            let mut o = PullOptions::new(format!("{}/", src.display()), &dst);
            o.command.delete = delete;
            o.command.protocol = protocol;
            pull(&o).unwrap_or_else(|e| panic!("{e}"))
        }
    };
    go(false);
    add_junk(&dst, &outside);
    go(false);
    assert!(
        dst.join("junkdir/deeper/f").exists(),
        "no deletion without --delete"
    );
    go(true);
    assert!(!dst.join("junkdir").exists());
    assert!(!dst.join("a/b/junk.txt").exists());
    assert!(std::fs::symlink_metadata(dst.join("a/outlink")).is_err());
    assert_eq!(std::fs::read(outside.join("precious")).unwrap(), b"keep");
    let nsec = protocol.unwrap_or(32) >= 31;
    assert_same_tree_ns(&src, &dst, nsec, !push_mode);
}

#[test]
fn pull_delete() {
    run(false, None);
    run(false, Some(30));
}

#[test]
fn push_delete() {
    run(true, None);
    run(true, Some(30));
}

#[test]
fn events_report_transfers_and_deletions() {
    use arsync_remote::events::{EventSink, FileEvent};
    use std::sync::{Arc, Mutex};
    let t = tempfile::tempdir_in("/dev/shm").unwrap();
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    make_tree(&src, 10_000);
    std::fs::create_dir_all(dst.join("old")).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = Arc::clone(&seen);
    let sink = EventSink::new(move |e| {
        let line = match e {
            FileEvent::Transferred { name, .. } => format!("> {}", String::from_utf8_lossy(name)),
            FileEvent::Deleted { name } => format!("del {}", String::from_utf8_lossy(name)),
            FileEvent::Listed { entry } => format!("list {}", String::from_utf8_lossy(&entry.name)),
            // Items and the list are reported too; this test looks at the rest.
            _ => return,
        };
        s2.lock().unwrap().push(line);
    });
    let mut o = PullOptions::new(format!("{}/", src.display()), &dst);
    o.command.delete = true;
    o.events = Some(sink.clone());
    pull(&o).unwrap();
    let mut got = seen.lock().unwrap().clone();
    got.sort();
    assert!(got.contains(&"del old/".to_string()), "{got:?}");
    assert!(got.contains(&"> a/b/two.bin".to_string()), "{got:?}");
    assert_eq!(got.iter().filter(|l| l.starts_with('>')).count(), 8);

    seen.lock().unwrap().clear();
    std::fs::write(src.join("small.txt"), b"changed!").unwrap();
    let mut p = PushOptions::new(&src, format!("{}/", t.path().join("pushed").display()));
    p.events = Some(sink);
    push(&p).unwrap();
    assert_eq!(seen.lock().unwrap().len(), 8);
}
