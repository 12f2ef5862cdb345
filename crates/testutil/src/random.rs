//! Reproducible random trees.

use std::io;
use std::path::{Path, PathBuf};

use crate::meta::{AclEntry, AclKind, AclTag, FileTime};
use crate::tree::{bytes_path, SeededBytes, TreeBuilder};

/// What [`random_tree`] creates. Counts are upper bounds on what is attempted.
#[derive(Clone, Debug)]
pub struct RandomTreeParams {
    /// Directories (besides the root).
    pub dirs: usize,
    /// Regular files.
    pub files: usize,
    /// Maximum directory depth.
    pub max_depth: usize,
    /// Largest regular file; sizes are skewed towards small files.
    pub max_file_size: u64,
    /// Symbolic links (a mix of relative, absolute and dangling).
    pub symlinks: usize,
    /// Extra hard links to existing files, across directories.
    pub hard_links: usize,
    /// Sparse files.
    pub sparse_files: usize,
    /// FIFOs, sockets and (when root) devices.
    pub specials: bool,
    /// Random owners (needs root).
    pub owners: bool,
    /// Random modes, including setuid/setgid/sticky.
    pub modes: bool,
    /// Random nanosecond mtimes and atimes (directories last, so they stick).
    pub times: bool,
    /// `user.*` xattrs (and `trusted.*` when root).
    pub xattrs: bool,
    /// POSIX ACLs.
    pub acls: bool,
    /// Names with bytes that are not UTF-8.
    pub non_utf8_names: bool,
}

impl Default for RandomTreeParams {
    fn default() -> Self {
        RandomTreeParams {
            dirs: 20,
            files: 100,
            max_depth: 5,
            max_file_size: 256 * 1024,
            symlinks: 10,
            hard_links: 5,
            sparse_files: 2,
            specials: true,
            owners: is_root(),
            modes: true,
            times: true,
            xattrs: true,
            acls: true,
            non_utf8_names: true,
        }
    }
}

/// True when running as root.
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// What [`random_tree`] made.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TreeSummary {
    /// Directories created (besides the root).
    pub dirs: usize,
    /// Regular files created (sparse ones included, hard links not).
    pub files: usize,
    /// Symlinks created.
    pub symlinks: usize,
    /// Extra hard links created.
    pub hard_links: usize,
    /// Special files created.
    pub specials: usize,
    /// Bytes of regular-file content (apparent sizes).
    pub bytes: u64,
}

fn pick<'a, T>(rng: &mut SeededBytes, v: &'a [T]) -> &'a T {
    &v[rng.below(v.len() as u64) as usize]
}

fn name(rng: &mut SeededBytes, prefix: &str, i: usize, non_utf8: bool) -> PathBuf {
    let mut n = format!("{prefix}{i}").into_bytes();
    match rng.below(8) {
        0 if non_utf8 => n.extend_from_slice(b"-\xe9\xff"),
        1 => n.extend_from_slice(b" with space"),
        2 => n.extend_from_slice(b".txt"),
        3 => n.extend_from_slice(b"-\xc3\xa9t\xc3\xa9"),
        _ => {}
    }
    bytes_path(&n)
}

fn random_time(rng: &mut SeededBytes) -> FileTime {
    // Between 2001 and 2033, any nanosecond.
    FileTime::new(
        1_000_000_000 + rng.below(1_000_000_000) as i64,
        rng.below(1_000_000_000) as u32,
    )
}

/// Creates a reproducible random tree in `root` from `seed`.
pub fn random_tree(root: &Path, seed: u64, params: &RandomTreeParams) -> io::Result<TreeSummary> {
    let tb = TreeBuilder::new(root)?;
    let mut rng = SeededBytes::new(seed);
    let mut sum = TreeSummary::default();
    let root_user = is_root();

    let mut dirs: Vec<(PathBuf, usize)> = vec![(PathBuf::new(), 0)];
    // Indices of directories that may still get children (depth below the maximum).
    let mut open_dirs: Vec<usize> = if params.max_depth > 0 {
        vec![0]
    } else {
        Vec::new()
    };
    for i in 0..params.dirs {
        let Some(&parent_index) = (!open_dirs.is_empty()).then(|| pick(&mut rng, &open_dirs))
        else {
            break;
        };
        let (parent, depth) = dirs[parent_index].clone();
        let rel = parent.join(name(&mut rng, "d", i, params.non_utf8_names));
        tb.dir(&rel)?;
        if depth + 1 < params.max_depth {
            open_dirs.push(dirs.len());
        }
        dirs.push((rel, depth + 1));
        sum.dirs += 1;
    }

    let mut files: Vec<PathBuf> = Vec::new();
    for i in 0..params.files {
        let (dir, _) = pick(&mut rng, &dirs).clone();
        let rel = dir.join(name(&mut rng, "f", i, params.non_utf8_names));
        // Mostly small files, some empty, a few up to the maximum.
        let size = match rng.below(10) {
            0 => 0,
            1..=6 => rng.below(4096.min(params.max_file_size + 1)),
            _ => rng.below(params.max_file_size + 1),
        };
        tb.file_seeded(&rel, size, rng.next_u64())?;
        sum.bytes += size;
        sum.files += 1;
        files.push(rel);
    }

    for i in 0..params.sparse_files {
        let (dir, _) = pick(&mut rng, &dirs).clone();
        let rel = dir.join(format!("sparse{i}"));
        let blocks = 64 + rng.below(192);
        let mut data = Vec::new();
        let mut b = 0;
        while b < blocks {
            let run = 1 + rng.below(8);
            if rng.below(3) == 0 {
                data.push((b * 4096, run.min(blocks - b) * 4096));
            }
            b += run;
        }
        // End with data so every copier reproduces the size without a trailing hole.
        data.push((blocks * 4096, 4096));
        let size = (blocks + 1) * 4096;
        tb.sparse_file(&rel, size, &data, rng.next_u64())?;
        sum.bytes += size;
        sum.files += 1;
        files.push(rel);
    }

    for i in 0..params.hard_links {
        if files.is_empty() {
            break;
        }
        let target = pick(&mut rng, &files).clone();
        let (dir, _) = pick(&mut rng, &dirs).clone();
        let rel = dir.join(format!("hl{i}"));
        tb.hard_link(&target, &rel)?;
        sum.hard_links += 1;
    }

    let mut symlinks = Vec::new();
    for i in 0..params.symlinks {
        let (dir, _) = pick(&mut rng, &dirs).clone();
        let rel = dir.join(format!("link{i}"));
        let target: PathBuf = match rng.below(3) {
            0 if !files.is_empty() => {
                let depth = dir.components().count();
                let mut t = PathBuf::new();
                for _ in 0..depth {
                    t.push("..");
                }
                t.join(pick(&mut rng, &files))
            }
            1 => PathBuf::from("/nonexistent/target"),
            _ => PathBuf::from(format!("dangling-{i}")),
        };
        tb.symlink(&rel, &target)?;
        symlinks.push(rel);
        sum.symlinks += 1;
    }

    let mut specials = Vec::new();
    if params.specials {
        let (dir, _) = pick(&mut rng, &dirs).clone();
        specials.push(tb.fifo(dir.join("fifo"), 0o644).map(|_| dir.join("fifo"))?);
        let (dir, _) = pick(&mut rng, &dirs).clone();
        specials.push(
            tb.socket(dir.join("sock"), 0o755)
                .map(|_| dir.join("sock"))?,
        );
        if root_user {
            let (dir, _) = pick(&mut rng, &dirs).clone();
            tb.char_device(
                dir.join("chr"),
                1 + rng.below(200) as u32,
                rng.below(256) as u32,
            )?;
            specials.push(dir.join("chr"));
            let (dir, _) = pick(&mut rng, &dirs).clone();
            tb.block_device(dir.join("blk"), 7, rng.below(256) as u32)?;
            specials.push(dir.join("blk"));
        }
        sum.specials = specials.len();
    }

    let everything: Vec<PathBuf> = files.iter().chain(&specials).cloned().collect();
    for (index, rel) in everything.iter().enumerate() {
        if params.owners && root_user && rng.below(3) == 0 {
            tb.chown(
                rel,
                1000 + rng.below(5000) as u32,
                1000 + rng.below(5000) as u32,
            )?;
        }
        if params.modes {
            let special_bits = match rng.below(10) {
                0 => 0o4000,
                1 => 0o2000,
                2 => 0o1000,
                _ => 0,
            };
            tb.chmod(rel, special_bits | 0o400 | rng.below(0o1000) as u32)?;
        }
        let regular = index < files.len();
        if params.xattrs && regular && rng.below(4) == 0 {
            let ns = if root_user && rng.below(2) == 0 {
                "trusted"
            } else {
                "user"
            };
            let mut value = vec![0u8; rng.below(64) as usize];
            rng.fill(&mut value);
            tb.set_xattr(rel, &format!("{ns}.k{}", rng.below(3)), &value)?;
        }
        if params.acls && regular && rng.below(6) == 0 {
            let perm = rng.below(8) as u8;
            tb.set_acl(
                rel,
                AclKind::Access,
                &[
                    AclEntry::new(AclTag::UserObj, 6),
                    AclEntry::new(AclTag::User(1000 + rng.below(100) as u32), perm),
                    AclEntry::new(AclTag::GroupObj, 4),
                    AclEntry::new(AclTag::Mask, 7),
                    AclEntry::new(AclTag::Other, 4),
                ],
            )?;
        }
    }
    if params.acls {
        for (dir, _) in dirs.iter().skip(1) {
            if rng.below(4) == 0 {
                tb.set_acl(
                    dir,
                    AclKind::Default,
                    &[
                        AclEntry::new(AclTag::UserObj, 7),
                        AclEntry::new(AclTag::Group(2000 + rng.below(100) as u32), 5),
                        AclEntry::new(AclTag::GroupObj, 5),
                        AclEntry::new(AclTag::Mask, 5),
                        AclEntry::new(AclTag::Other, 5),
                    ],
                )?;
            }
        }
    }
    if params.times {
        for rel in everything.iter().chain(&symlinks) {
            tb.set_times(rel, random_time(&mut rng), random_time(&mut rng))?;
        }
        // Deepest directories first, so setting a parent's time comes after its children.
        let mut by_depth = dirs.clone();
        by_depth.sort_by_key(|(_, d)| std::cmp::Reverse(*d));
        for (dir, _) in &by_depth {
            tb.set_times(dir, random_time(&mut rng), random_time(&mut rng))?;
        }
    }
    Ok(sum)
}
