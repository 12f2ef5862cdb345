//! Property test: random sequences of file operations give identical results on the io_uring
//! backend, the thread-pool backend and plain `std::fs`.

use arsync_io::{IoConfig, Mode, Runtime};
use proptest::prelude::*;
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

const NAMES: [&str; 3] = ["a", "b", "d/c"];

#[derive(Clone, Debug)]
enum FsOp {
    Write { f: usize, off: u64, data: Vec<u8> },
    Read { f: usize, off: u64, len: usize },
    Truncate { f: usize, len: u64 },
    Rename { from: usize, to: usize },
    Unlink { f: usize },
    Mkdir,
    Rmdir,
    Stat { f: usize },
    Link { from: usize, to: usize },
}

fn op() -> impl Strategy<Value = FsOp> {
    let f = 0..NAMES.len();
    prop_oneof![
        (
            f.clone(),
            0..64u64,
            proptest::collection::vec(any::<u8>(), 0..48)
        )
            .prop_map(|(f, off, data)| FsOp::Write { f, off, data }),
        (f.clone(), 0..80u64, 0..64usize).prop_map(|(f, off, len)| FsOp::Read { f, off, len }),
        (f.clone(), 0..100u64).prop_map(|(f, len)| FsOp::Truncate { f, len }),
        (f.clone(), f.clone()).prop_map(|(from, to)| FsOp::Rename { from, to }),
        f.clone().prop_map(|f| FsOp::Unlink { f }),
        Just(FsOp::Mkdir),
        Just(FsOp::Rmdir),
        f.clone().prop_map(|f| FsOp::Stat { f }),
        (f.clone(), f).prop_map(|(from, to)| FsOp::Link { from, to }),
    ]
}

/// What an operation observed: a value or an errno.
type Outcome = Result<String, i32>;

fn errno(e: std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(-1)
}

fn run_std(root: &Path, ops: &[FsOp]) -> Vec<Outcome> {
    let p = |i: usize| root.join(NAMES[i]);
    ops.iter()
        .map(|o| match o {
            FsOp::Write { f, off, data } => (|| {
                let mut file = fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(p(*f))?;
                file.seek(SeekFrom::Start(*off))?;
                file.write_all(data)?;
                Ok(String::new())
            })()
            .map_err(errno),
            FsOp::Read { f, off, len } => (|| {
                let mut file = fs::File::open(p(*f))?;
                file.seek(SeekFrom::Start(*off))?;
                let mut buf = Vec::new();
                file.take(*len as u64).read_to_end(&mut buf)?;
                Ok(format!("{buf:?}"))
            })()
            .map_err(errno),
            FsOp::Truncate { f, len } => fs::OpenOptions::new()
                .write(true)
                .open(p(*f))
                .and_then(|file| file.set_len(*len))
                .map(|_| String::new())
                .map_err(errno),
            FsOp::Rename { from, to } => fs::rename(p(*from), p(*to))
                .map(|_| String::new())
                .map_err(errno),
            FsOp::Unlink { f } => fs::remove_file(p(*f)).map(|_| String::new()).map_err(errno),
            FsOp::Mkdir => fs::DirBuilder::new()
                .mode_0755()
                .create(root.join("d"))
                .map(|_| String::new())
                .map_err(errno),
            FsOp::Rmdir => fs::remove_dir(root.join("d"))
                .map(|_| String::new())
                .map_err(errno),
            FsOp::Stat { f } => fs::metadata(p(*f))
                .map(|m| format!("{} {:o} {}", m.size(), m.mode(), m.nlink()))
                .map_err(errno),
            FsOp::Link { from, to } => fs::hard_link(p(*from), p(*to))
                .map(|_| String::new())
                .map_err(errno),
        })
        .collect()
}

trait Mode0755 {
    fn mode_0755(&mut self) -> &mut Self;
}
impl Mode0755 for fs::DirBuilder {
    fn mode_0755(&mut self) -> &mut Self {
        use std::os::unix::fs::DirBuilderExt;
        self.mode(0o755)
    }
}

fn run_io(root: &Path, mode: Mode, ops: &[FsOp]) -> Vec<Outcome> {
    let rt = Runtime::with_config(IoConfig::default().mode(mode)).unwrap();
    let io = rt.io();
    let dir = fs::File::open(root).unwrap();
    let dfd = dir.as_raw_fd();
    let ops = ops.to_vec();
    rt.block_on(async move {
        let mut out = Vec::new();
        for o in &ops {
            let r: Outcome = match o {
                FsOp::Write { f, off, data } => async {
                    let file = io
                        .open(dfd, NAMES[*f], libc::O_WRONLY | libc::O_CREAT, 0o666)
                        .await?;
                    let (r, _) = io.write_all_at(&file, data.clone(), *off).await;
                    r?;
                    io.close(file).await?;
                    Ok(String::new())
                }
                .await
                .map_err(errno),
                FsOp::Read { f, off, len } => async {
                    let file = io.open(dfd, NAMES[*f], libc::O_RDONLY, 0).await?;
                    let (r, buf) = io.read_full_at(&file, Vec::with_capacity(*len), *off).await;
                    r?;
                    Ok(format!("{buf:?}"))
                }
                .await
                .map_err(errno),
                FsOp::Truncate { f, len } => async {
                    let file = io.open(dfd, NAMES[*f], libc::O_WRONLY, 0).await?;
                    io.ftruncate(&file, *len).await?;
                    Ok(String::new())
                }
                .await
                .map_err(errno),
                FsOp::Rename { from, to } => io
                    .rename(dfd, NAMES[*from], dfd, NAMES[*to], 0)
                    .await
                    .map(|_| String::new())
                    .map_err(errno),
                FsOp::Unlink { f } => io
                    .unlink(dfd, NAMES[*f], 0)
                    .await
                    .map(|_| String::new())
                    .map_err(errno),
                FsOp::Mkdir => io
                    .mkdir(dfd, "d", 0o755)
                    .await
                    .map(|_| String::new())
                    .map_err(errno),
                FsOp::Rmdir => io
                    .unlink(dfd, "d", libc::AT_REMOVEDIR)
                    .await
                    .map(|_| String::new())
                    .map_err(errno),
                FsOp::Stat { f } => io
                    .statx(dfd, NAMES[*f], 0)
                    .await
                    .map(|s| format!("{} {:o} {}", s.size, s.mode, s.nlink))
                    .map_err(errno),
                FsOp::Link { from, to } => io
                    .link(dfd, NAMES[*from], dfd, NAMES[*to], 0)
                    .await
                    .map(|_| String::new())
                    .map_err(errno),
            };
            out.push(r);
        }
        out
    })
    .unwrap()
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn backends_agree_with_std(ops in proptest::collection::vec(op(), 1..40)) {
        let (a, b, c) = (tmp(), tmp(), tmp());
        let want = run_std(a.path(), &ops);
        let uring = run_io(b.path(), Mode::Uring, &ops);
        let threads = run_io(c.path(), Mode::Threads, &ops);
        prop_assert_eq!(&uring, &want);
        prop_assert_eq!(&threads, &want);
    }
}
