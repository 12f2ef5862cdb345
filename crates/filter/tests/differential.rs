//! Differential tests against the real rsync: for one generated tree and many filter
//! combinations, the set of paths rsync copies must equal the set our matcher includes when
//! walking the same tree the way rsync's sender does (an excluded directory is not entered).
//! A second pass checks deletions: which extra receiver files `--delete` keeps.

use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use arsync_filter::{CvsIgnoreSources, Decision, FilterRules, FromFile};

type PathSet = BTreeSet<(Vec<u8>, bool)>;

/// These tests compare with the real rsync; CI installs it (scripts/deps), so its absence is a
/// failure, not a reason to pass.
fn require_rsync() {
    let ok = Command::new("rsync")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(ok, "rsync is not installed: run scripts/deps");
}

/// A small deterministic xorshift generator: `next(n)` is in `0..n`.
fn xorshift(mut state: u64) -> impl FnMut(usize) -> usize {
    move |n: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % n as u64) as usize
    }
}

fn write(root: &Path, rel: &[u8], data: &[u8]) {
    let path = root.join(OsStr::from_bytes(rel));
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).expect("mkdir");
    }
    fs::write(&path, data).expect("write");
}

/// Builds the source tree: names chosen to exercise anchoring, wildcards, classes,
/// escapes, hidden files, CVS names, per-directory merge files and non-UTF-8 bytes.
fn build_tree(src: &Path) {
    let files: &[&[u8]] = &[
        b"a.c",
        b"a.o",
        b"keep.o",
        b"b.txt",
        b"core",
        b"foo.bak",
        b"x~",
        b"#tmp",
        b".hidden",
        b"spa ce.txt",
        b"br[ack]et",
        b"star*name",
        b"back\\slash",
        b"q?mark",
        b"caf\xe9.txt",
        b"\xff\xfe",
        b"_und",
        b"-dash",
        b"+plus",
        b"tags",
        b"TAGS",
        b"anch",
        b"q",
        b"file.txt",
        b"foo/bar",
        b"foo/file.txt",
        b"src/main.c",
        b"src/main.o",
        b"src/keep.o",
        b"src/anch",
        b"src/b.txt",
        b"src/lib/x.c",
        b"src/lib/x.old",
        b"src/lib/deep/y.c",
        b"src/lib/deep/z.o",
        b"src/lib/deep/anch",
        b"build/out.bin",
        b"build/obj/a.o",
        b"CVS/Entries",
        b".git/config",
        b"docs/foo/bar",
        b"docs/foo/q/bar",
        b"docs/a/b/c/d.txt",
        b"docs/sub/foo",
        b"docs/sub/x/bar",
        b"docs/anch",
        b"docs/b.txt",
        b"docs/readme",
        b"dir_name/f",
        b"dir_name/inner/g",
        b"x/file.txt",
        b"x/y/file.txt",
        b"x/y/zzz.txt",
        b"x/z/file.txt",
        b"deep/deep/deep/deep/leaf.c",
        // Per-directory merge files.
        b".rsync-filter",
        b"src/.rsync-filter",
        b"src/lib/.rsync-filter",
        b"docs/.cvsignore",
        b"src/.cvsignore",
        b".rules",
        b"src/.rules",
        b"src/lib/.rules",
        b"docs/.rules",
        b".excl",
        b"src/.excl",
    ];
    for f in files {
        write(src, f, b"data");
    }
    write(src, b".rsync-filter", b"- *.bak\n+ keep.o\n- *.o\n");
    write(src, b"src/.rsync-filter", b"- lib/deep/\n");
    write(src, b"src/lib/.rsync-filter", b"!\n- x.c\n");
    write(src, b"docs/.cvsignore", b"*.txt foo\nreadme\n");
    write(src, b"src/.cvsignore", b"main.*\n");
    write(
        src,
        b".rules",
        b"- b.txt\n- /anch\n# comment\n; comment\n\n+ x/\n",
    );
    write(src, b"src/.rules", b"+ main.o\n- /main.c\n- deep/\n");
    write(src, b"src/lib/.rules", b"- *.old\n");
    write(src, b"docs/.rules", b"!\n- bar\n");
    write(src, b".excl", b"b.txt\n*.old\n");
    write(src, b"src/.excl", b"keep.o\n");
    fs::create_dir_all(src.join("empty")).expect("mkdir");
    std::os::unix::fs::symlink("a.c", src.join("link")).expect("symlink");
    std::os::unix::fs::symlink("nowhere", src.join("dangling.o")).expect("symlink");
}

/// Runs rsync for real (a copy avoids any escaping of names in its output) and lists `dst`.
fn rsync_copy(args: &[OsString], src: &Path, dst: &Path, env: &Env) -> Option<PathSet> {
    let _ = fs::remove_dir_all(dst);
    let mut src_arg = src.as_os_str().to_os_string();
    src_arg.push("/");
    let out = Command::new("rsync")
        .arg("-rl")
        .args(args)
        .arg(&src_arg)
        .arg(dst)
        .env("HOME", &env.home)
        .env("CVSIGNORE", &env.cvsignore)
        .output()
        .expect("run rsync");
    if !out.status.success() {
        return None;
    }
    let mut set = PathSet::new();
    list_dir(dst, b"", &mut set);
    Some(set)
}

fn list_dir(dir: &Path, rel: &[u8], out: &mut PathSet) {
    for entry in fs::read_dir(dir).expect("read_dir") {
        let entry = entry.expect("entry");
        let name = entry.file_name().into_vec();
        let child = join_rel(rel, &name);
        let is_dir = entry.file_type().expect("type").is_dir();
        out.insert((child.clone(), is_dir));
        if is_dir {
            list_dir(&entry.path(), &child, out);
        }
    }
}

fn join_rel(rel: &[u8], name: &[u8]) -> Vec<u8> {
    let mut child = rel.to_vec();
    if !child.is_empty() {
        child.push(b'/');
    }
    child.extend_from_slice(name);
    child
}

/// The sender's walk with our matcher.
fn our_walk(
    rules: &mut FilterRules,
    abs: &Path,
    rel: &[u8],
    out: &mut PathSet,
) -> Result<(), String> {
    let token = rules.enter_dir(abs, rel).map_err(|e| e.to_string())?;
    let mut entries: Vec<_> = fs::read_dir(abs)
        .expect("read_dir")
        .map(|e| e.expect("entry"))
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name().into_vec();
        let child = join_rel(rel, &name);
        let is_dir = entry.file_type().expect("type").is_dir();
        if rules.check(&child, is_dir) == Decision::Exclude {
            continue;
        }
        out.insert((child.clone(), is_dir));
        if is_dir {
            our_walk(rules, &entry.path(), &child, out)?;
        }
    }
    rules.leave_dir(token);
    Ok(())
}

struct Env {
    home: PathBuf,
    cvsignore: OsString,
}

/// Applies rsync command-line filter options to our rule list.
fn apply_args(args: &[OsString], env: &Env) -> Result<FilterRules, String> {
    let mut rules = FilterRules::new();
    rules.set_cvs_sources(CvsIgnoreSources {
        home_file: Some(env.home.join(".cvsignore")),
        env: Some(env.cvsignore.as_bytes().to_vec()),
    });
    let mut f_count = 0u8;
    let mut cvs = false;
    let mut delete_excluded = false;
    let mut i = 0;
    let e = |r: Result<(), arsync_filter::FilterError>| r.map_err(|e| e.to_string());
    while i < args.len() {
        let a = args[i].as_bytes();
        if a == b"-f" {
            i += 1;
            e(rules.add_rule_bytes(args[i].as_bytes()))?;
        } else if let Some(v) = a.strip_prefix(b"--filter=") {
            e(rules.add_rule_bytes(v))?;
        } else if let Some(v) = a.strip_prefix(b"--exclude=") {
            e(rules.add_exclude_bytes(v))?;
        } else if let Some(v) = a.strip_prefix(b"--include=") {
            e(rules.add_include_bytes(v))?;
        } else if let Some(v) = a.strip_prefix(b"--exclude-from=") {
            e(rules.add_from_file(Path::new(OsStr::from_bytes(v)), FromFile::Exclude))?;
        } else if let Some(v) = a.strip_prefix(b"--include-from=") {
            e(rules.add_from_file(Path::new(OsStr::from_bytes(v)), FromFile::Include))?;
        } else if a == b"-F" {
            // rsync adds the -F rules at the position of each -F.
            f_count += 1;
            if f_count == 1 {
                e(rules.add_rule(": /.rsync-filter"))?;
            } else if f_count == 2 {
                e(rules.add_rule("- .rsync-filter"))?;
            }
        } else if a == b"-C" {
            cvs = true;
        } else if a == b"--delete-excluded" {
            delete_excluded = true;
        } else if a == b"--delete" {
        } else {
            panic!("test harness does not know option {:?}", args[i]);
        }
        i += 1;
    }
    rules.set_delete_excluded(delete_excluded);
    rules.set_cvs_sources(CvsIgnoreSources {
        home_file: Some(env.home.join(".cvsignore")),
        env: Some(env.cvsignore.as_bytes().to_vec()),
    });
    if cvs {
        e(rules.add_cvs_exclude_with(CvsIgnoreSources {
            home_file: Some(env.home.join(".cvsignore")),
            env: Some(env.cvsignore.as_bytes().to_vec()),
        }))?;
    }
    Ok(rules)
}

fn show(set: &PathSet) -> String {
    set.iter()
        .map(|(p, d)| {
            format!(
                "{}{}",
                String::from_utf8_lossy(p),
                if *d { "/" } else { "" }
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// How rsync's copy and our walk of the same tree with the same arguments compare.
enum Verdict {
    Same,
    BothFailed,
    /// What differs, ready for a failure message.
    Differ(String),
}

fn compare_walk(args: &[OsString], src: &Path, dst: &Path, env: &Env) -> Verdict {
    let theirs = rsync_copy(args, src, dst, env);
    let ours = apply_args(args, env).and_then(|mut rules| {
        let mut set = PathSet::new();
        our_walk(&mut rules, src, b"", &mut set).map(|()| set)
    });
    match (theirs, ours) {
        (Some(t), Ok(o)) if t == o => Verdict::Same,
        (None, Err(_)) => Verdict::BothFailed,
        (Some(t), Ok(o)) => {
            let only_rsync: PathSet = t.difference(&o).cloned().collect();
            let only_ours: PathSet = o.difference(&t).cloned().collect();
            Verdict::Differ(format!(
                "--- only rsync copied:\n{}\n--- only we include:\n{}\n",
                show(&only_rsync),
                show(&only_ours)
            ))
        }
        (t, o) => Verdict::Differ(format!(
            "rsync {}, ours {}",
            if t.is_some() { "copied" } else { "<failed>" },
            match o {
                Ok(_) => "walked".to_string(),
                Err(e) => format!("<error: {e}>"),
            }
        )),
    }
}

fn fixture() -> (
    tempfile::TempDir,
    PathBuf,
    Env,
    Vec<(&'static str, PathBuf)>,
) {
    let base = if Path::new("/dev/shm").is_dir() {
        tempfile::tempdir_in("/dev/shm").expect("tempdir")
    } else {
        tempfile::tempdir().expect("tempdir")
    };
    let src = base.path().join("src");
    build_tree(&src);
    // Found by the parent-directory scan of -F and ": ../.rsync-filter"; the anchored rule
    // is relative to this directory, so it names src/a.c.
    fs::write(base.path().join(".rsync-filter"), b"- q\n- /src/a.c\n").expect("write");
    let home = base.path().join("home");
    fs::create_dir_all(&home).expect("mkdir");
    fs::write(home.join(".cvsignore"), b"b.txt *.c\n").expect("write");
    let env = Env {
        home,
        cvsignore: OsString::from("foo.bak tags readme"),
    };
    let excl_from = base.path().join("exclude-from");
    fs::write(
        &excl_from,
        b"+ keep.o\n*.o\n# comment\n; comment\n\nbuild/\n- x/y\n!x\n",
    )
    .expect("write");
    let incl_from = base.path().join("include-from");
    fs::write(&incl_from, b"*/\r\n*.c\r\n- foo\n").expect("write");
    let merge = base.path().join("merge-rules");
    fs::write(&merge, b"+ *.c\n- *.o\n- foo*\ndir-merge,- .excl\n").expect("write");
    let from0 = base.path().join("merge-cvs");
    fs::write(&from0, b"core *.bak\n").expect("write");
    let files = vec![
        ("{EXCL_FROM}", excl_from),
        ("{INCL_FROM}", incl_from),
        ("{MERGE}", merge),
        ("{MERGE_W}", from0),
        ("{SRC}", src.clone()),
    ];
    (base, src, env, files)
}

fn expand(combo: &[&[u8]], files: &[(&str, PathBuf)]) -> Vec<OsString> {
    combo
        .iter()
        .map(|arg| {
            let mut a = arg.to_vec();
            for (key, path) in files {
                let key = key.as_bytes();
                while let Some(pos) = a.windows(key.len()).position(|w| w == key) {
                    let mut b = a[..pos].to_vec();
                    b.extend_from_slice(path.as_os_str().as_bytes());
                    b.extend_from_slice(&a[pos + key.len()..]);
                    a = b;
                }
            }
            OsString::from_vec(a)
        })
        .collect()
}

const COMBOS: &[&[&[u8]]] = &[
    &[],
    &[b"--exclude=*.o"],
    &[b"--exclude=foo"],
    &[b"--exclude=foo/"],
    &[b"--exclude=/foo"],
    &[b"--exclude=foo/*/bar"],
    &[b"--exclude=/docs/**/bar"],
    &[b"-f", b"+ */", b"-f", b"+ *.c", b"-f", b"- *"],
    &[
        b"-f",
        b"+ x/",
        b"-f",
        b"+ x/y/",
        b"-f",
        b"+ x/y/file.txt",
        b"-f",
        b"- *",
    ],
    &[b"-f", b"+ file.txt", b"-f", b"- *"],
    &[b"-f", b"- dir_name/***"],
    &[b"-f", b"+ dir_name/***", b"-f", b"- *"],
    &[b"-f", b"-! */"],
    &[b"-f", b"- **/deep"],
    &[b"-f", b"- src/**"],
    &[b"-f", b"- **.o"],
    &[b"-f", b"- **/lib/**/*.c"],
    &[b"-f", b"- [ab].*"],
    &[b"-f", b"- [!a-c]*.txt"],
    &[b"-f", b"- [[:upper:]]*"],
    &[b"-f", b"- *\\**"],
    &[b"-f", b"- back\\slash"],
    &[b"-f", b"- back\\\\sl*"],
    &[b"-f", b"- br\\[ack]et"],
    &[b"-f", b"- spa ce.txt"],
    &[b"-f", b"-_*.bak"],
    &[b"-f", b"exclude,/ {SRC}/a.c"],
    &[b"-f", b"-/ src/*.c"],
    &[b"-f", b"H *.txt"],
    &[b"-f", b"P *.txt"],
    &[b"-f", b"-s *.c", b"-f", b"-r *.txt"],
    &[b"-f", b"S *.txt", b"-f", b"hide *.txt"],
    &[b"-f", b"- caf\xe9*"],
    &[b"-f", b"- \xff?"],
    &[b"-F"],
    &[b"-F", b"-F"],
    &[b"-f", b": ../.rsync-filter"],
    &[b"-f", b":n ../.rsync-filter"],
    &[b"-f", b": .rules"],
    &[b"-f", b":n .rules"],
    &[b"-f", b":e .rules"],
    &[b"-f", b"dir-merge,- .excl"],
    &[b"-f", b"- /anch", b"-f", b": .rules"],
    &[b"-C"],
    &[b"-C", b"--include=core", b"--include=b.txt"],
    &[b"-f", b":C", b"-f", b"-C"],
    &[b"--exclude-from={EXCL_FROM}"],
    &[b"--include-from={INCL_FROM}", b"--exclude=*"],
    &[b"-f", b"merge {MERGE}"],
    &[b"-f", b". {MERGE}"],
    &[b"-f", b"merge,-w {MERGE_W}"],
    &[b"-f", b"- *", b"-f", b"!", b"-f", b"- *.o"],
    &[b"--exclude=- *.o", b"--include=- foo"],
    &[b"--exclude=!", b"--exclude=!x"],
    &[b"-f", b"+ /x/y/", b"-f", b"- /x/*"],
    &[b"-f", b"- x/y"],
    &[b"-f", b"- ?"],
    &[b"-f", b"- .*"],
    &[b"-f", b"-p *.txt"],
    &[b"-f", b"-x user.*"],
    &[b"-f", b"- *", b"-f", b"+ *.c"],
    &[b"-f", b":w .rules"],
    &[b"-f", b"bogus rule"],
    &[b"-f", b"-z foo"],
    &[b"--delete-excluded", b"--exclude=*.o"],
];

#[test]
fn file_lists_match_rsync() {
    require_rsync();
    let (base, src, env, files) = fixture();
    let dst = base.path().join("dst");
    let mut failures = Vec::new();
    for combo in COMBOS {
        let args = expand(combo, &files);
        if let Verdict::Differ(d) = compare_walk(&args, &src, &dst, &env) {
            failures.push(format!("{args:?}: {d}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} combination(s) differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

const DELETE_COMBOS: &[&[&[u8]]] = &[
    &[],
    &[b"--exclude=*.o"],
    &[b"-f", b"P *.o"],
    &[b"-f", b"H *.o"],
    &[b"-f", b"R keep*", b"-f", b"P *.o"],
    &[b"-f", b"+r keep*", b"-f", b"-r *"],
    &[b"-f", b"- *.o", b"--delete-excluded"],
    &[b"-f", b"-r *.o", b"--delete-excluded"],
    &[b"-f", b"protect /zz_extra.txt"],
    &[b"-f", b"-! *.o"],
    &[b"-C"],
    &[b"-f", b"-p *.o"],
    &[b"-f", b"- gone_dir/"],
    &[b"-F"],
    &[b"-F", b"-F"],
    &[b"-f", b":e .rules"],
    &[b"-f", b"dir-merge,- .excl"],
    &[b"-f", b":n- .excl", b"-f", b"P keep*"],
];

/// `--delete` keeps exactly the extra receiver files our receiver-side check protects.
#[test]
fn deletions_match_rsync() {
    require_rsync();
    let (base, src, env, files) = fixture();
    let dst = base.path().join("dst");
    let extras: &[&[u8]] = &[
        b"gone_dir/x.o",
        b"gone_dir/y.txt",
        b"src/gone/core",
        b"src/gone/keep.o",
        b"zz.bak",
        b"zz.old",
        b"src/zz.bak",
        b"docs/zz.txt",
        b"src/main.extra",
        b"b.txt.extra",
        b"src/keep.o.extra",
        b"src/lib/zz.old",
        b"src/lib/x.c.extra",
        b"zz_extra.txt",
        b"zz_extra.o",
        b"keep_extra",
        b"src/zz_extra.o",
        b"src/zz_extra.txt",
        b"docs/keep_extra.c",
        b"docs/core",
    ];
    let mut failures = Vec::new();
    let (mut kept, mut deleted) = (0, 0);
    for combo in DELETE_COMBOS {
        let mut args = expand(combo, &files);
        args.push(OsString::from("--delete"));
        let _ = fs::remove_dir_all(&dst);
        // Seed the receiver with a plain copy plus the extra files.
        let seeded = Command::new("rsync")
            .arg("-rl")
            .arg(format!("{}/", src.display()))
            .arg(&dst)
            .status()
            .expect("rsync");
        assert!(seeded.success());
        for e in extras {
            write(&dst, e, b"extra");
        }
        let out = Command::new("rsync")
            .arg("-rl")
            .args(&args)
            .arg(format!("{}/", src.display()))
            .arg(&dst)
            .env("HOME", &env.home)
            .env("CVSIGNORE", &env.cvsignore)
            .output()
            .expect("rsync");
        assert!(
            out.status.success(),
            "rsync failed for {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let rules = apply_args(&args, &env).expect("our rules");
        for e in extras {
            let survived = dst.join(OsStr::from_bytes(e)).exists();
            // The receiver reads per-directory merge files from its own tree.
            let mut walker = rules.fork();
            let mut abs = dst.clone();
            let mut rel = Vec::new();
            let _root = walker.enter_dir(&abs, b"").expect("enter");
            let comps: Vec<&[u8]> = e.split(|&b| b == b'/').collect();
            let mut parents_sent = true;
            for comp in &comps[..comps.len() - 1] {
                abs.push(OsStr::from_bytes(comp));
                rel = join_rel(&rel, comp);
                parents_sent &= !walker.excluded_for_transfer(&rel, true);
                let _t = walker.enter_dir(&abs, &rel).expect("enter");
            }
            if !parents_sent {
                // rsync never looks inside a directory the sender leaves out.
                continue;
            }
            let parent_rel = &e[..e.len() - comps[comps.len() - 1].len()]
                .strip_suffix(b"/")
                .unwrap_or(b"");
            let protected =
                if !parent_rel.is_empty() && !src.join(OsStr::from_bytes(parent_rel)).exists() {
                    // The directory itself goes: its contents are deleted with perishable rules
                    // ignored, unless the directory is protected as a whole.
                    walker.protected_from_delete(parent_rel, true)
                        || walker.protected_in_deleted_dir(e, false)
                } else {
                    walker.protected_from_delete(e, false)
                };
            if survived {
                kept += 1;
            } else {
                deleted += 1;
            }
            if survived != protected {
                failures.push(format!(
                    "{args:?}: {} survived={survived} ours protected={protected}",
                    String::from_utf8_lossy(e)
                ));
            }
        }
    }
    // Both outcomes must occur, or the comparison proves little.
    eprintln!("deletion scenarios: kept {kept}, deleted {deleted}");
    assert!(kept > 20 && deleted > 20, "kept {kept}, deleted {deleted}");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Encodes a filter list as rsync puts it on the wire: (int32 LE length, bytes)..., int32 0.
fn encode_list(rules: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for r in rules {
        out.extend_from_slice(&(r.len() as u32).to_le_bytes());
        out.extend_from_slice(r);
    }
    out.extend_from_slice(&0u32.to_le_bytes());
    out
}

const WIRE_COMBOS: &[&[&[u8]]] = &[
    &[b"--exclude=*.o"],
    &[b"-f", b"+ */", b"-f", b"+ *.c", b"-f", b"- *"],
    &[
        b"-f",
        b"H *.tmp",
        b"-f",
        b"S keep.tmp",
        b"-f",
        b"P *.log",
        b"-f",
        b"R x.log",
    ],
    &[b"-f", b"-/ {SRC}/a.c", b"-f", b"-! */", b"-f", b"-p junk/"],
    &[
        b"-f",
        b": .rules",
        b"-f",
        b":n- .excl",
        b"-f",
        b"dir-merge,e .x",
    ],
    &[b"-f", b"merge {MERGE}"],
    &[b"--exclude-from={EXCL_FROM}"],
    &[b"-C", b"--include=core"],
    &[b"-F", b"-F"],
    &[b"--delete-excluded", b"--exclude=*.o", b"-f", b"-r *.keep"],
    &[b"-f", b"- caf\xe9*", b"-f", b"+ dir_name/***"],
];

/// The rules our client would send equal the bytes a real rsync client sends.
#[test]
fn wire_filter_lists_match_rsync() {
    require_rsync();
    let (base, src, env, files) = fixture();
    let rsh = base.path().join("fake-rsh");
    // Runs the server locally and records what the client sends it.
    // The recorder is stopped when the server exits (it would otherwise wait for more input
    // from the client, which waits for the remote shell to exit).
    fs::write(
        &rsh,
        "#!/bin/sh\nshift\nrm -f \"$CAPTURE.fifo\"\nmkfifo \"$CAPTURE.fifo\"\nexec 3<&0\n\
         tee \"$CAPTURE\" <&3 > \"$CAPTURE.fifo\" &\nrecorder=$!\n\"$@\" < \"$CAPTURE.fifo\" 3<&-\n\
         status=$?\nkill $recorder 2>/dev/null\nexit $status\n",
    )
    .expect("write");
    fs::set_permissions(&rsh, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    let capture = base.path().join("capture");
    let dst = base.path().join("dst");
    let mut failures = Vec::new();
    for combo in WIRE_COMBOS {
        let args = expand(combo, &files);
        let rules = apply_args(&args, &env).expect("our rules");
        for (role, protocol) in [
            (arsync_filter::WireRole::ClientReceiver, 31),
            (arsync_filter::WireRole::ClientSender, 31),
            (arsync_filter::WireRole::ClientReceiver, 29),
        ] {
            let _ = fs::remove_dir_all(&dst);
            fs::create_dir_all(&dst).expect("mkdir");
            // A hung exchange must fail the test, not stall it.
            let mut cmd = Command::new("timeout");
            cmd.args(["60", "rsync"])
                .arg("-r")
                .arg("-e")
                .arg(&rsh)
                .arg(format!("--protocol={protocol}"));
            cmd.args(&args);
            match role {
                arsync_filter::WireRole::ClientReceiver => {
                    cmd.arg(format!("fakehost:{}/", src.display())).arg(&dst);
                }
                arsync_filter::WireRole::ClientSender => {
                    cmd.arg("--delete")
                        .arg(format!("{}/", src.display()))
                        .arg(format!("fakehost:{}/", dst.display()));
                }
            }
            let out = cmd
                .env("CAPTURE", &capture)
                .env("HOME", &env.home)
                .env("CVSIGNORE", &env.cvsignore)
                .output()
                .expect("rsync");
            let ours = rules.to_wire_rules(role, protocol);
            if !out.status.success() {
                if ours.is_ok() {
                    failures.push(format!(
                        "{args:?} {role:?} p{protocol}: rsync failed ({}) but we produced a list",
                        String::from_utf8_lossy(&out.stderr).trim()
                    ));
                }
                continue;
            }
            let sent = fs::read(&capture).expect("capture");
            let ours = match ours {
                Ok(r) => r,
                Err(e) => {
                    failures.push(format!(
                        "{args:?} {role:?} p{protocol}: rsync sent a list, we failed: {e}"
                    ));
                    continue;
                }
            };
            let encoded = encode_list(&ours);
            if !sent.windows(encoded.len()).any(|w| w == encoded.as_slice()) {
                let shown: Vec<String> = ours
                    .iter()
                    .map(|r| String::from_utf8_lossy(r).into_owned())
                    .collect();
                failures.push(format!(
                    "{args:?} {role:?} p{protocol}: our list {shown:?} is not in what rsync sent: {:?}",
                    String::from_utf8_lossy(&sent[..sent.len().min(600)])
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Random rule lists from a grammar of prefixes, modifiers and pattern pieces; every list's
/// file set must equal rsync's.
#[test]
fn random_rule_lists_match_rsync() {
    require_rsync();
    let (base, src, env, _files) = fixture();
    let dst = base.path().join("dst");
    let mut next = xorshift(0x5eed_f11e_u64);
    const PREFIXES: &[&str] = &[
        "-", "+", "H", "S", "-!", "+!", "-p", "+s", "-r", "P", "exclude,", "include,",
    ];
    const PIECES: &[&str] = &[
        "a",
        "src",
        "lib",
        "deep",
        "docs",
        "x",
        "y",
        "foo",
        "*",
        "**",
        "?",
        "*.c",
        "*.o",
        "*.txt",
        "[a-c]*",
        "[!x]*",
        "*a*",
        "d*",
        "*e?",
        "[[:upper:]]*",
        "b.txt",
        "sub",
        "dir_name",
        "*\\**",
        "q",
    ];
    let mut failures = Vec::new();
    for round in 0..150 {
        let count = 1 + next(4);
        let mut args: Vec<OsString> = Vec::new();
        for _ in 0..count {
            let mut pat = String::new();
            if next(3) == 0 {
                pat.push('/');
            }
            let parts = 1 + next(3);
            for p in 0..parts {
                if p > 0 {
                    pat.push('/');
                }
                pat.push_str(PIECES[next(PIECES.len())]);
            }
            match next(6) {
                0 => pat.push('/'),
                1 => pat.push_str("/***"),
                _ => {}
            }
            args.push("-f".into());
            args.push(format!("{} {}", PREFIXES[next(PREFIXES.len())], pat).into());
        }
        if let Verdict::Differ(d) = compare_walk(&args, &src, &dst, &env) {
            failures.push(format!("round {round} {args:?}: {d}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} random list(s) differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Module filters of an rsync daemon (rsyncd.conf `filter`, `include`, `exclude`,
/// `include from`, `exclude from`) hide the same files from a pulling client.
#[test]
fn daemon_module_filters_match_rsync() {
    require_rsync();
    let (base, src, _env, files) = fixture();
    let rsh = base.path().join("daemon-rsh");
    // Runs `rsync --server --daemon .` locally with our configuration file.
    fs::write(
        &rsh,
        "#!/bin/sh\nshift\ncmd=$1\nshift\nexec \"$cmd\" --config=\"$RSYNCD_CONF\" \"$@\"\n",
    )
    .expect("write");
    fs::set_permissions(&rsh, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    let excl_from = files
        .iter()
        .find(|(k, _)| *k == "{EXCL_FROM}")
        .map(|(_, p)| p.clone())
        .expect("file");
    let incl_from = files
        .iter()
        .find(|(k, _)| *k == "{INCL_FROM}")
        .map(|(_, p)| p.clone())
        .expect("file");
    let conf = base.path().join("rsyncd.conf");
    let dst = base.path().join("dst");
    use arsync_filter::DaemonParam::*;
    let cases: Vec<Vec<(arsync_filter::DaemonParam, Vec<u8>)>> = vec![
        vec![(Filter, b"- *.o - /docs/b.txt".to_vec())],
        vec![(Exclude, b"foo/ src/lib/".to_vec())],
        vec![
            (Include, b"keep.o".to_vec()),
            (Exclude, b"*.o deep/".to_vec()),
        ],
        vec![(Filter, b"+ */ + *.c - *".to_vec())],
        vec![(Filter, b"- /src/*.c - docs/foo/ - lib/*.c -! */".to_vec())],
        vec![(Filter, b"- dir_name/*** + x/*** - /x".to_vec())],
        vec![(ExcludeFrom, excl_from.as_os_str().as_bytes().to_vec())],
        vec![
            (IncludeFrom, incl_from.as_os_str().as_bytes().to_vec()),
            (Exclude, b"*".to_vec()),
        ],
    ];
    let param_name = |p: arsync_filter::DaemonParam| match p {
        Filter => "filter",
        Include => "include",
        Exclude => "exclude",
        IncludeFrom => "include from",
        ExcludeFrom => "exclude from",
    };
    let mut failures = Vec::new();
    for case in &cases {
        let mut text = format!(
            "[mod]\npath = {}\nuse chroot = no\nread only = yes\nuid = 0\ngid = 0\n",
            src.display()
        );
        let mut rules = FilterRules::new();
        rules.set_transfer_root(Path::new("/"));
        for (param, value) in case {
            text.push_str(&format!(
                "{} = {}\n",
                param_name(*param),
                String::from_utf8_lossy(value)
            ));
            rules
                .add_daemon_param(*param, value)
                .expect("daemon rules parse");
        }
        fs::write(&conf, text).expect("write conf");
        let _ = fs::remove_dir_all(&dst);
        let out = Command::new("timeout")
            .args(["60", "rsync", "-rl", "-e"])
            .arg(&rsh)
            .arg("fakehost::mod/")
            .arg(&dst)
            .env("RSYNCD_CONF", &conf)
            .output()
            .expect("rsync");
        assert!(
            out.status.success(),
            "{case:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut theirs = PathSet::new();
        list_dir(&dst, b"", &mut theirs);
        let mut ours = PathSet::new();
        our_walk(&mut rules, &src, b"", &mut ours).expect("walk");
        if theirs != ours {
            let only_rsync: PathSet = theirs.difference(&ours).cloned().collect();
            let only_ours: PathSet = ours.difference(&theirs).cloned().collect();
            failures.push(format!(
                "{case:?}\n--- only rsync copied:\n{}\n--- only we include:\n{}\n",
                show(&only_rsync),
                show(&only_ours)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// `-X` copies the xattr names our selection picks (root: all namespaces but system.*).
#[test]
fn xattr_selection_matches_rsync() {
    let is_root = fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false);
    require_rsync();
    if !is_root {
        eprintln!("needs root (trusted.* xattrs): skipped");
        return;
    }
    let base = tempfile::tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .expect("tempdir");
    let src = base.path().join("src");
    fs::create_dir_all(&src).expect("mkdir");
    let file = src.join("f");
    fs::write(&file, b"x").expect("write");
    let names: &[&str] = &[
        "user.a",
        "user.secret",
        "user.keep.me",
        "trusted.t",
        "security.s",
    ];
    for n in names {
        let st = Command::new("setfattr")
            .args(["-n", n, "-v", "1"])
            .arg(&file)
            .status();
        if !st.map(|s| s.success()).unwrap_or(false) {
            eprintln!("setfattr unavailable or unsupported: skipped");
            return;
        }
    }
    let combos: &[&[&str]] = &[
        &[],
        &["-f", "-x user.secret"],
        &["-f", "+x user.keep*", "-f", "-x user.*"],
        &["-f", "-x *"],
    ];
    for combo in combos {
        let dst = base.path().join("dst");
        let _ = fs::remove_dir_all(&dst);
        let out = Command::new("rsync")
            .arg("-rX")
            .args(*combo)
            .arg(format!("{}/", src.display()))
            .arg(&dst)
            .output()
            .expect("rsync");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut rules = FilterRules::new();
        let mut i = 0;
        while i < combo.len() {
            rules.add_rule(combo[i + 1]).expect("rule");
            i += 2;
        }
        for n in names {
            let got = Command::new("getfattr")
                .args(["--only-values", "-n", n])
                .arg(dst.join("f"))
                .output()
                .expect("getfattr")
                .status
                .success();
            let ours = rules.xattr_selected(n.as_bytes(), arsync_filter::Side::Sender, true);
            assert_eq!(got, ours, "{combo:?} {n}");
        }
    }
}

/// Random per-directory merge files (random rules, random merge modifiers) over the tree.
#[test]
fn random_per_directory_rules_match_rsync() {
    require_rsync();
    let (base, src, env, _files) = fixture();
    let dst = base.path().join("dst");
    let mut next = xorshift(0xd1ce_5eed_u64);
    const DIRS: &[&str] = &[
        "",
        "src",
        "src/lib",
        "docs",
        "x",
        "x/y",
        "dir_name",
        "deep/deep",
    ];
    const LINES: &[&str] = &[
        "- *.c",
        "+ *.c",
        "- *.txt",
        "+ keep.o",
        "- *.o",
        "- /anch",
        "- anch",
        "+ /x/",
        "- lib/",
        "- deep/",
        "H *.txt",
        "S b.txt",
        "P *.c",
        "!",
        "- y",
        "- */",
        "-! */",
        "+ */",
        "- *",
        "- foo/",
        "+ foo/***",
        "- /file.txt",
        "- [a-f]*",
        "# comment",
        "",
    ];
    const MODIFIERS: &[&str] = &["", "n", "e", "ne", "-", "n-", "+"];
    let mut both_failed = 0;
    let mut failures = Vec::new();
    for round in 0..80 {
        for d in DIRS {
            let path = src.join(d).join(".pd");
            if next(3) == 0 {
                let _ = fs::remove_file(&path);
                continue;
            }
            let mut text = String::new();
            for _ in 0..1 + next(4) {
                text.push_str(LINES[next(LINES.len())]);
                text.push('\n');
            }
            fs::write(&path, text).expect("write");
        }
        let mut args: Vec<OsString> = Vec::new();
        if next(2) == 0 {
            args.push("-f".into());
            args.push(["- *.old", "+ src/", "- /docs/b.txt", "H .pd"][next(4)].into());
        }
        args.push("-f".into());
        args.push(format!(":{} .pd", MODIFIERS[next(MODIFIERS.len())]).into());
        if next(2) == 0 {
            args.push("-f".into());
            args.push(["- *.c", "+ *", "- x/"][next(3)].into());
        }
        match compare_walk(&args, &src, &dst, &env) {
            Verdict::Same => {}
            Verdict::BothFailed => both_failed += 1,
            Verdict::Differ(d) => {
                let files: Vec<String> = DIRS
                    .iter()
                    .filter_map(|d| {
                        fs::read_to_string(src.join(d).join(".pd"))
                            .ok()
                            .map(|t| format!("{d}/.pd: {t:?}"))
                    })
                    .collect();
                failures.push(format!("round {round} {args:?}\n{}\n{d}", files.join("\n")));
            }
        }
        if failures.len() >= 3 {
            break;
        }
    }
    // Most rounds must exercise matching rather than agree on a syntax error.
    eprintln!("rounds where both rejected the rules: {both_failed}");
    assert!(
        both_failed < 20,
        "{both_failed} rounds failed on both sides"
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
