//! Behaviour of the public API, feature by feature.

use std::fs;
use std::path::Path;

use arsync_filter::{
    CvsIgnoreSources, Decision, FilterError, FilterRules, FromFile, Side, WireRole,
};

fn rules(list: &[&str]) -> FilterRules {
    let mut r = FilterRules::new();
    for rule in list {
        r.add_rule(rule).unwrap_or_else(|e| panic!("{rule}: {e}"));
    }
    r
}

fn no_env_cvs() -> CvsIgnoreSources {
    CvsIgnoreSources {
        home_file: None,
        env: None,
    }
}

#[test]
fn first_match_wins() {
    let r = rules(&["+ keep.o", "- *.o", "+ *.o"]);
    assert_eq!(r.check(b"keep.o", false), Decision::Include);
    assert_eq!(r.check(b"a/x.o", false), Decision::Exclude);
    assert_eq!(r.check(b"x.c", false), Decision::NoMatch);
}

#[test]
fn sides_hide_show_protect_risk() {
    let r = rules(&["H *.tmp", "P *.log", "R keep.cache", "- *.cache"]);
    assert!(r.excluded_for_transfer(b"a.tmp", false));
    assert!(!r.protected_from_delete(b"a.tmp", false));
    assert!(!r.excluded_for_transfer(b"a.log", false));
    assert!(r.protected_from_delete(b"a.log", false));
    // Risk applies to the receiver only; the sender still excludes the file.
    assert!(!r.protected_from_delete(b"keep.cache", false));
    assert!(r.excluded_for_transfer(b"keep.cache", false));
    assert!(r.protected_from_delete(b"x.cache", false));
    assert_eq!(
        r.check_side(b"a.tmp", false, Side::Receiver),
        Decision::NoMatch
    );
}

#[test]
fn delete_excluded_makes_plain_rules_sender_only() {
    let mut r = rules(&["- *.o", "-r *.keep"]);
    assert!(r.protected_from_delete(b"a.o", false));
    r.set_delete_excluded(true);
    assert!(r.excluded_for_transfer(b"a.o", false));
    assert!(!r.protected_from_delete(b"a.o", false));
    assert!(r.protected_from_delete(b"a.keep", false));
}

#[test]
fn perishable_rules_ignored_in_deleted_dirs() {
    let r = rules(&["-p *.o", "- *.h"]);
    assert!(r.protected_from_delete(b"d/a.o", false));
    assert!(!r.protected_in_deleted_dir(b"d/a.o", false));
    assert!(r.protected_in_deleted_dir(b"d/a.h", false));
}

#[test]
fn xattr_rules_only_match_xattr_names() {
    let r = rules(&["-x user.secret*", "- user.*"]);
    assert!(r.has_xattr_rules());
    assert_eq!(
        r.check_xattr(b"user.secret1", Side::Sender),
        Decision::Exclude
    );
    assert_eq!(
        r.check_xattr(b"user.other", Side::Sender),
        Decision::NoMatch
    );
    assert_eq!(r.check(b"user.secret1", false), Decision::Exclude);
    assert_eq!(r.check(b"user.x", false), Decision::Exclude);
}

#[test]
fn clear_rule_empties_the_list() {
    let r = rules(&["- *", "!", "- *.o"]);
    assert_eq!(r.check(b"a.c", false), Decision::NoMatch);
    assert_eq!(r.check(b"a.o", false), Decision::Exclude);
}

#[test]
fn old_style_prefixes() {
    let mut r = FilterRules::new();
    r.add_include("- secret").expect("ok");
    r.add_exclude("+ *.keep").expect("ok");
    r.add_exclude("*").expect("ok");
    assert_eq!(r.check(b"secret", false), Decision::Exclude);
    assert_eq!(r.check(b"a.keep", false), Decision::Include);
    assert_eq!(r.check(b"other", false), Decision::Exclude);
    // In --exclude a "H " prefix is just part of the pattern.
    let mut r = FilterRules::new();
    r.add_exclude("H x").expect("ok");
    assert_eq!(r.check(b"H x", false), Decision::Exclude);
    assert_eq!(r.check(b"x", false), Decision::NoMatch);
}

#[test]
fn from_files_skip_comments_and_report_lines() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = dir.path().join("list");
    fs::write(&f, "# comment\n; other\n\n+ keep.o\r\n*.o\n").expect("write");
    let mut r = FilterRules::new();
    r.add_from_file(&f, FromFile::Exclude).expect("ok");
    assert_eq!(r.check(b"keep.o", false), Decision::Include);
    assert_eq!(r.check(b"a.o", false), Decision::Exclude);
    assert_eq!(r.check(b"# comment", false), Decision::NoMatch);

    let mut r = FilterRules::new();
    r.add_from_file(&f, FromFile::Include).expect("ok");
    assert_eq!(r.check(b"a.o", false), Decision::Include);

    let bad = dir.path().join("bad");
    fs::write(&bad, "- ok\n\n+ fine\nfrobnicate x\n").expect("write");
    let err = FilterRules::new()
        .add_from_file(&bad, FromFile::Filter)
        .expect_err("bad rule");
    match &err {
        FilterError::InFile { line, source, .. } => {
            assert_eq!(*line, 4);
            assert!(matches!(**source, FilterError::UnknownRule { .. }));
        }
        other => panic!("unexpected error {other:?}"),
    }
    assert!(err.to_string().contains("line 4"), "{err}");

    let missing = FilterRules::new()
        .add_from_file(&dir.path().join("nope"), FromFile::Exclude)
        .expect_err("missing");
    assert!(matches!(missing, FilterError::Io { .. }));
}

#[test]
fn from0_splits_on_nul() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = dir.path().join("list");
    fs::write(&f, b"a\nb\0c.o\0").expect("write");
    let mut r = FilterRules::new();
    r.set_from0(true);
    r.add_from_file(&f, FromFile::Exclude).expect("ok");
    assert_eq!(r.check(b"a\nb", false), Decision::Exclude);
    assert_eq!(r.check(b"c.o", false), Decision::Exclude);
    assert_eq!(r.check(b"a", false), Decision::NoMatch);
}

#[test]
fn merge_files_are_read_in_place_and_depth_limited() {
    let dir = tempfile::tempdir().expect("tempdir");
    let m = dir.path().join("m");
    fs::write(&m, "+ *.c\n- *.o\n").expect("write");
    let mut r = FilterRules::new();
    r.add_rule("- x.c").expect("ok");
    r.add_rule(&format!("merge {}", m.display())).expect("ok");
    r.add_rule("+ *").expect("ok");
    assert_eq!(r.check(b"x.c", false), Decision::Exclude);
    assert_eq!(r.check(b"y.c", false), Decision::Include);
    assert_eq!(r.check(b"y.o", false), Decision::Exclude);

    // A merge file with "-" modifier holds bare exclude patterns.
    let plain = dir.path().join("plain");
    fs::write(&plain, "+ odd\n").expect("write");
    let r = rules(&[&format!(".- {}", plain.display())]);
    assert_eq!(r.check(b"+ odd", false), Decision::Exclude);

    let cyc = dir.path().join("cycle");
    fs::write(&cyc, format!("merge {}\n", cyc.display())).expect("write");
    let err = FilterRules::new()
        .add_rule(&format!("merge {}", cyc.display()))
        .expect_err("cycle");
    assert!(err.to_string().contains("depth"), "{err}");

    let err = FilterRules::new()
        .add_rule(&format!("merge {}", dir.path().join("absent").display()))
        .expect_err("missing merge file");
    assert!(matches!(err, FilterError::Io { .. }));
}

fn mk(root: &Path, rel: &str, data: &str) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
    fs::write(p, data).expect("write");
}

#[test]
fn dir_merge_inherits_and_pops() {
    let t = tempfile::tempdir().expect("tempdir");
    let root = t.path();
    mk(root, ".f", "- *.a\n");
    mk(root, "d/.f", "- *.b\n- /top\n");
    mk(root, "d/e/.f", "+ keep.a\n");
    mk(root, "z/.f", "!\n- *.z\n");
    let mut r = rules(&[": .f"]);
    let t0 = r.enter_dir(root, b"").expect("enter");
    assert_eq!(r.check(b"x.a", false), Decision::Exclude);
    assert_eq!(r.check(b"x.b", false), Decision::NoMatch);
    let t1 = r.enter_dir(&root.join("d"), b"d").expect("enter");
    assert_eq!(r.check(b"d/x.b", false), Decision::Exclude);
    assert_eq!(r.check(b"d/x.a", false), Decision::Exclude);
    // Anchored per-directory rules are relative to the merge file's directory.
    assert_eq!(r.check(b"d/top", false), Decision::Exclude);
    assert_eq!(r.check(b"top", false), Decision::NoMatch);
    let t2 = r.enter_dir(&root.join("d/e"), b"d/e").expect("enter");
    // Newer (deeper) rules come first.
    assert_eq!(r.check(b"d/e/keep.a", false), Decision::Include);
    assert_eq!(r.check(b"d/e/x.a", false), Decision::Exclude);
    assert_eq!(r.check(b"d/e/top", false), Decision::NoMatch);
    r.leave_dir(t2);
    assert_eq!(r.check(b"d/keep.a", false), Decision::Exclude);
    r.leave_dir(t1);
    assert_eq!(r.check(b"x.b", false), Decision::NoMatch);
    // "!" in a per-directory file drops the inherited rules.
    let t3 = r.enter_dir(&root.join("z"), b"z").expect("enter");
    assert_eq!(r.check(b"z/x.a", false), Decision::NoMatch);
    assert_eq!(r.check(b"z/x.z", false), Decision::Exclude);
    r.leave_dir(t3);
    assert_eq!(r.dir_depth(), 1);
    r.leave_dir(t0);
    assert_eq!(r.dir_depth(), 0);
}

#[test]
fn dir_merge_no_inherit_and_exclude_self() {
    let t = tempfile::tempdir().expect("tempdir");
    let root = t.path();
    mk(root, ".n", "*.a\n");
    mk(root, "d/x", "");
    let mut r = rules(&[":n-e .n"]);
    assert_eq!(r.check(b".n", false), Decision::Exclude);
    let _t0 = r.enter_dir(root, b"").expect("enter");
    assert_eq!(r.check(b"x.a", false), Decision::Exclude);
    let _t1 = r.enter_dir(&root.join("d"), b"d").expect("enter");
    assert_eq!(r.check(b"d/x.a", false), Decision::NoMatch);
}

#[test]
fn nested_dir_merge_rules_and_errors_in_files() {
    let t = tempfile::tempdir().expect("tempdir");
    let root = t.path();
    mk(root, ".outer", ": .inner\n");
    mk(root, ".inner", "- *.i\n");
    mk(root, "d/.inner", "- *.j\n");
    mk(root, "bad/.outer", "- ok\nwhat is this\n");
    let mut r = rules(&[": .outer"]);
    let t0 = r.enter_dir(root, b"").expect("enter");
    assert_eq!(r.check(b"a.i", false), Decision::Exclude);
    let t1 = r.enter_dir(&root.join("d"), b"d").expect("enter");
    assert_eq!(r.check(b"d/a.j", false), Decision::Exclude);
    assert_eq!(r.check(b"d/a.i", false), Decision::Exclude);
    r.leave_dir(t1);
    let err = r
        .enter_dir(&root.join("bad"), b"bad")
        .expect_err("bad rule");
    assert!(err.to_string().contains("line 2"), "{err}");
    // A failed enter leaves the state as it was.
    assert_eq!(r.dir_depth(), 1);
    assert_eq!(r.check(b"a.i", false), Decision::Exclude);
    r.leave_dir(t0);
}

#[test]
fn parent_directories_are_scanned_for_rooted_merge_names() {
    let t = tempfile::tempdir().expect("tempdir");
    let top = t.path();
    mk(top, ".rsync-filter", "- *.p\n");
    mk(top, "a/.rsync-filter", "- *.q\n");
    mk(top, "a/src/.rsync-filter", "- *.r\n");
    let mut r = FilterRules::new();
    r.add_rule(&format!(": {}/.rsync-filter", top.display()))
        .expect("ok");
    let _t = r.enter_dir(&top.join("a/src"), b"").expect("enter");
    for name in ["x.p", "x.q", "x.r"] {
        assert_eq!(r.check(name.as_bytes(), false), Decision::Exclude, "{name}");
    }
    // A relative name reaching up from the transfer root works the same way.
    let mut r = rules(&[": ../.rsync-filter"]);
    let _t = r.enter_dir(&top.join("a/src"), b"").expect("enter");
    assert_eq!(r.check(b"x.p", false), Decision::NoMatch);
    assert_eq!(r.check(b"x.q", false), Decision::Exclude);
    assert_eq!(r.check(b"x.r", false), Decision::Exclude);
}

#[test]
fn forked_walkers_are_independent() {
    let t = tempfile::tempdir().expect("tempdir");
    let root = t.path();
    mk(root, "a/.f", "- *.a\n");
    mk(root, "b/.f", "- *.b\n");
    let mut r = rules(&[": .f"]);
    let _t0 = r.enter_dir(root, b"").expect("enter");
    let mut right = r.fork();
    let _tb = right.enter_dir(&root.join("b"), b"b").expect("enter");
    assert_eq!(right.check(b"b/x.b", false), Decision::Exclude);
    assert_eq!(right.check(b"b/x.a", false), Decision::NoMatch);
    // The original is untouched by its forks.
    assert_eq!(r.check(b"x.b", false), Decision::NoMatch);
    let mut left = r.fork();
    let root_a = root.join("a");
    let got = std::thread::spawn(move || {
        let _t = left.enter_dir(&root_a, b"a").expect("enter");
        (left.check(b"a/x.a", false), left.check(b"a/x.b", false))
    })
    .join()
    .expect("thread");
    assert_eq!(got, (Decision::Exclude, Decision::NoMatch));
}

#[test]
fn cvs_exclude_defaults_home_env_and_per_dir() {
    let t = tempfile::tempdir().expect("tempdir");
    let root = t.path();
    mk(root, "home/.cvsignore", "*.home\n");
    mk(root, "tree/.cvsignore", "local.* !\n*.after\n");
    mk(root, "tree/sub/x", "");
    let mut r = FilterRules::new();
    r.add_include("core").expect("ok");
    r.add_cvs_exclude_with(CvsIgnoreSources {
        home_file: Some(root.join("home/.cvsignore")),
        env: Some(b"*.env  ".to_vec()),
    })
    .expect("ok");
    assert_eq!(r.check(b"core", false), Decision::Include);
    for name in [
        "a.o", "x.orig", "RCS", "#x", "y~", "t.home", "t.env", ".git",
    ] {
        let is_dir = name == ".git";
        assert_eq!(
            r.check(name.as_bytes(), is_dir),
            Decision::Exclude,
            "{name}"
        );
    }
    assert_eq!(r.check(b".git", false), Decision::NoMatch);
    // The defaults are perishable.
    assert!(!r.protected_in_deleted_dir(b"a.o", false));
    let _t = r.enter_dir(&root.join("tree"), b"").expect("enter");
    // "!" in a .cvsignore clears what came before it in that file.
    assert_eq!(r.check(b"local.c", false), Decision::NoMatch);
    assert_eq!(r.check(b"x.after", false), Decision::Exclude);
    let _t = r.enter_dir(&root.join("tree/sub"), b"sub").expect("enter");
    // .cvsignore rules are not inherited.
    assert_eq!(r.check(b"sub/x.after", false), Decision::NoMatch);
}

#[test]
fn f_option() {
    let mut r = FilterRules::new();
    r.add_f_option(2).expect("ok");
    assert_eq!(r.check(b".rsync-filter", false), Decision::Exclude);
    assert_eq!(
        r.describe(),
        vec![
            ": /.rsync-filter".to_string(),
            "- .rsync-filter".to_string()
        ]
    );
}

#[test]
fn wire_rules_for_each_role() {
    let mut r = rules(&[
        "- *.o",
        "H *.tmp",
        "P *.log",
        "+/ /abs/x",
        ": .f",
        "-p junk/",
    ]);
    r.add_cvs_exclude_with(no_env_cvs()).expect("ok");
    let text = |v: Vec<Vec<u8>>| -> Vec<String> {
        v.into_iter()
            .map(|b| String::from_utf8(b).expect("utf8"))
            .collect()
    };
    let sent = text(r.to_wire_rules(WireRole::ClientSender, 31).expect("ok"));
    // A pushing client keeps its hide rule, sends protect, expands -C.
    assert_eq!(
        &sent[..5],
        &["- *.o", "-r *.log", "+/ /abs/x", ": .f", "-p junk/"]
    );
    assert_eq!(sent[5], ":C .cvsignore");
    assert_eq!(sent[6], "-p RCS");
    assert!(sent.contains(&"-p .git/".to_string()));
    let recv = text(r.to_wire_rules(WireRole::ClientReceiver, 31).expect("ok"));
    assert_eq!(
        recv,
        vec!["- *.o", "-s *.tmp", "+/ /abs/x", ": .f", "-p junk/"]
    );
    // Protocol 29 has no perishable modifier: a receiving client drops it, a sending client
    // cannot send the rule.
    let recv29 = text(r.to_wire_rules(WireRole::ClientReceiver, 29).expect("ok"));
    assert_eq!(recv29.last().map(String::as_str), Some("- junk/"));
    let err = r
        .to_wire_rules(WireRole::ClientSender, 29)
        .expect_err("too modern");
    assert!(matches!(err, FilterError::TooModern { .. }));
    // Protocol 28: bare patterns.
    let old = rules(&["- *.o", "+ *.c", "- - odd"]);
    assert_eq!(
        text(old.to_wire_rules(WireRole::ClientReceiver, 28).expect("ok")),
        vec!["*.o", "+ *.c", "- - odd"]
    );
    let mut de = rules(&["- *.o"]);
    de.set_delete_excluded(true);
    assert!(de
        .to_wire_rules(WireRole::ClientSender, 31)
        .expect("ok")
        .is_empty());
    assert_eq!(
        text(de.to_wire_rules(WireRole::ClientReceiver, 31).expect("ok")),
        vec!["-s *.o"]
    );
}

#[test]
fn wire_rules_round_trip_to_the_server() {
    let mut client = rules(&[
        "+ keep/***",
        "- *.o",
        "H /hidden",
        "S *.shown",
        "P precious",
        "R risky",
        "-! */",
        "+ [a-c]?/",
        "- **/deep/**",
    ]);
    client.add_exclude("foo/").expect("ok");
    let names: &[(&[u8], bool)] = &[
        (b"keep", true),
        (b"keep/a.o", false),
        (b"x.o", false),
        (b"hidden", false),
        (b"a.shown", false),
        (b"precious", false),
        (b"risky", false),
        (b"file", false),
        (b"dir", true),
        (b"ab", true),
        (b"q/deep/z", true),
        (b"foo", true),
    ];
    for (role, side) in [
        (WireRole::ClientSender, Side::Receiver),
        (WireRole::ClientReceiver, Side::Sender),
    ] {
        let mut server = FilterRules::new();
        for rule in client.to_wire_rules(role, 31).expect("ok") {
            server.add_wire_rule(&rule, 31).expect("server parses");
        }
        for (name, is_dir) in names {
            assert_eq!(
                server.check_side(name, *is_dir, side),
                client.check_side(name, *is_dir, side),
                "{role:?} {}",
                String::from_utf8_lossy(name)
            );
        }
    }
}

#[test]
fn non_utf8_rules_and_names() {
    let mut r = FilterRules::new();
    r.add_rule_bytes(b"- caf\xe9*").expect("ok");
    r.add_exclude_bytes(b"\xff/").expect("ok");
    assert_eq!(r.check(b"dir/caf\xe9.txt", false), Decision::Exclude);
    assert_eq!(r.check(b"\xff", true), Decision::Exclude);
    assert_eq!(r.check(b"\xff", false), Decision::NoMatch);
}

#[test]
fn daemon_params_use_module_paths_and_hide_dir_contents() {
    use arsync_filter::DaemonParam;
    let mut r = FilterRules::new();
    r.set_transfer_root(Path::new("/"));
    r.add_daemon_param(DaemonParam::Exclude, b"secret/ sub/*.key")
        .expect("ok");
    r.add_daemon_param(DaemonParam::Filter, b"+ keep.o - *.o")
        .expect("ok");
    // "secret/" hides the directory and everything in it, even asked for directly.
    assert_eq!(r.check(b"a/secret", true), Decision::Exclude);
    assert_eq!(r.check(b"a/secret/file", false), Decision::Exclude);
    assert_eq!(r.check(b"sub/x.key", false), Decision::Exclude);
    assert_eq!(r.check(b"a/sub/x.key", false), Decision::Exclude);
    assert_eq!(r.check(b"keep.o", false), Decision::Include);
    assert_eq!(r.check(b"x.o", false), Decision::Exclude);
    let missing = FilterRules::new()
        .add_daemon_param(DaemonParam::ExcludeFrom, b"/nonexistent/list")
        .expect_err("missing file");
    assert!(matches!(missing, FilterError::Io { .. }));
}

#[test]
fn rules_can_move_between_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<FilterRules>();
    assert_send_sync::<FilterError>();
}

#[test]
fn special_files_named_like_merge_files_are_ignored() {
    let t = tempfile::tempdir().expect("tempdir");
    let root = t.path();
    std::fs::create_dir(root.join(".f")).expect("dir named like the merge file");
    mk(root, "sub/x", "");
    let fifo = root.join("sub/.f");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo");
    assert!(made.success());
    let mut r = rules(&[": .f"]);
    // Neither the directory nor the FIFO blocks or fails the walk.
    let t0 = r.enter_dir(root, b"").expect("enter");
    let t1 = r.enter_dir(&root.join("sub"), b"sub").expect("enter");
    assert_eq!(r.check(b"sub/x", false), Decision::NoMatch);
    r.leave_dir(t1);
    r.leave_dir(t0);
    // Named explicitly, a directory is an error.
    let err = FilterRules::new()
        .add_from_file(root, FromFile::Exclude)
        .expect_err("directory");
    assert!(matches!(err, FilterError::Io { .. }));
}

#[test]
fn long_rule_files_stream_and_overlong_lines_are_dropped() {
    let t = tempfile::tempdir().expect("tempdir");
    let f = t.path().join("many");
    let mut text = String::new();
    for i in 0..20_000 {
        text.push_str(&format!("- name{i}.tmp\r\n"));
    }
    text.push_str(&format!("- {}\n", "x".repeat(10_000)));
    text.push_str("- last");
    std::fs::write(&f, text).expect("write");
    let mut r = FilterRules::new();
    r.add_from_file(&f, FromFile::Filter).expect("ok");
    assert_eq!(r.check(b"name19999.tmp", false), Decision::Exclude);
    assert_eq!(r.check(b"last", false), Decision::Exclude);
    assert_eq!(r.check(&[b'x'; 10_000], false), Decision::NoMatch);
}

#[test]
fn matching_rule_names_the_deciding_rule() {
    let t = tempfile::tempdir().expect("tempdir");
    mk(t.path(), ".f", "+ keep.o\n");
    let mut r = rules(&[": .f", "- *.o", "H tmp/"]);
    let _t = r.enter_dir(t.path(), b"").expect("enter");
    assert_eq!(
        r.matching_rule(b"keep.o", false, Side::Sender).as_deref(),
        Some("+ keep.o")
    );
    assert_eq!(
        r.matching_rule(b"a/x.o", false, Side::Sender).as_deref(),
        Some("- *.o")
    );
    assert_eq!(
        r.matching_rule(b"tmp", true, Side::Sender).as_deref(),
        Some("-s tmp/")
    );
    assert_eq!(r.matching_rule(b"tmp", true, Side::Receiver), None);
    assert_eq!(r.matching_rule(b"x.c", false, Side::Sender), None);
}

#[test]
fn a_failing_add_leaves_the_list_unchanged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = dir.path().join("rules");
    fs::write(&f, "!\n- *.o\n: .per\nbogus line\n").expect("write");
    let mut r = rules(&["- *.c"]);
    assert!(r.add_from_file(&f, FromFile::Filter).is_err());
    assert_eq!(r.describe(), vec!["- *.c".to_string()]);
    assert_eq!(r.check(b"a.c", false), Decision::Exclude);
    assert_eq!(r.check(b"a.o", false), Decision::NoMatch);
    // The dir-merge rule of the failed file was not registered: a later one is accepted.
    r.add_rule(": .per").expect("ok");
    assert_eq!(
        r.describe(),
        vec!["- *.c".to_string(), ": .per".to_string()]
    );
    // A clear inside a successful add clears what came before.
    r.add_rule("!").expect("ok");
    assert!(r.describe().is_empty());
}

#[test]
fn xattr_selection_defaults_and_rules() {
    let none = FilterRules::new();
    assert!(none.xattr_selected(b"user.a", Side::Sender, false));
    assert!(!none.xattr_selected(b"trusted.a", Side::Sender, false));
    assert!(none.xattr_selected(b"trusted.a", Side::Sender, true));
    assert!(none.xattr_selected(b"security.selinux", Side::Receiver, true));
    assert!(!none.xattr_selected(b"system.posix_acl_access", Side::Sender, true));
    // File rules do not count as xattr rules.
    let files = rules(&["- user.*"]);
    assert!(files.xattr_selected(b"user.a", Side::Sender, false));
    let x = rules(&["-x user.secret", "-xr user.local"]);
    assert!(!x.xattr_selected(b"user.secret", Side::Sender, false));
    assert!(x.xattr_selected(b"user.local", Side::Sender, false));
    assert!(!x.xattr_selected(b"user.local", Side::Receiver, false));
    // With x rules, the namespace defaults no longer apply.
    assert!(x.xattr_selected(b"trusted.any", Side::Sender, false));
}
