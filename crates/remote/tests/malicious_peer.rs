//! A scripted (malicious or faulty) sender against our receiving client:
//! every bad input ends in a clear error and nothing is written outside the
//! destination.

use std::io::{Cursor, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};

use arsync_proto::checksum::{file_sum, ChecksumAlgo};
use arsync_proto::flist::{encode_id_list, mode, FileEntry, FlistEncoder, FlistOptions};
use arsync_proto::handshake::CompatFlags;
use arsync_proto::item::{decode_item, ItemAttrs, NdxItem};
use arsync_proto::mux::{encode_data, encode_int_msg, Demuxer, Event, MsgTag};
use arsync_proto::ndx::{NdxCodec, NDX_DONE, NDX_FLIST_EOF, NDX_FLIST_OFFSET};
use arsync_proto::stats::Stats;
use arsync_proto::sums::SumHead;
use arsync_proto::token::{encode_block, encode_end, encode_literal};
use arsync_proto::wire::{put_i32, put_varint, put_varlong, put_vstring, Reader};
use arsync_remote::error::RemoteError;
use arsync_remote::fsys::DestSpec;
use arsync_remote::pull::{run_pull, PullOptions, TransferSummary};

#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Vec<u8>>>);

impl Write for Shared {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Bytes our client writes before the generator's first request: version
/// int, checksum list (`xxh128 xxh3 xxh64 md5 md4 sha1`), and the empty
/// filter list in one DATA frame.
const CLIENT_PREAMBLE: usize = 4 + 31 + 8;

/// Feeds a script, holding back the part after `gate` until the client has
/// written more than `CLIENT_PREAMBLE` bytes (its generator has spoken), like
/// a real sender that answers requests.
struct GatedReader {
    data: Vec<u8>,
    pos: usize,
    gate: usize,
    out: Shared,
}

impl std::io::Read for GatedReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.pos == self.gate && self.gate < self.data.len() {
            let t0 = std::time::Instant::now();
            while self.out.0.lock().unwrap().len() <= CLIENT_PREAMBLE && t0.elapsed().as_secs() < 5
            {
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
        }
        let end = if self.pos < self.gate {
            self.gate
        } else {
            self.data.len()
        };
        let n = buf.len().min(end - self.pos);
        buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// The server's side of a protocol-32 session as a byte script.
struct Script {
    raw: Vec<u8>,
    data: Vec<u8>,
    opts: FlistOptions,
    ndx: NdxCodec,
    /// Offset in `data` where file transfers start (the gate).
    transfers_at: Option<usize>,
}

impl Script {
    fn new() -> Self {
        let mut raw = Vec::new();
        put_i32(&mut raw, 32);
        put_varint(
            &mut raw,
            CompatFlags::server_reply("LsfxCIvu", false).0 as i32,
        );
        put_vstring(&mut raw, b"xxh128 xxh3 xxh64 md5 md4 none").unwrap();
        put_i32(&mut raw, 12345);
        Script {
            raw,
            data: Vec::new(),
            opts: FlistOptions::archive(32),
            ndx: NdxCodec::new(),
            transfers_at: None,
        }
    }

    fn flist(&mut self, entries: &[FileEntry]) -> &mut Self {
        let mut enc = FlistEncoder::new(self.opts.clone());
        for e in entries {
            enc.encode(e, 0, &mut self.data).unwrap();
        }
        self.end_flist(&enc)
    }

    fn end_flist(&mut self, enc: &FlistEncoder) -> &mut Self {
        enc.encode_end(0, &mut self.data);
        encode_id_list(&[], Some(b"root"), true, &mut self.data);
        encode_id_list(&[], Some(b"root"), true, &mut self.data);
        self
    }

    /// A file transfer: literal data then the given checksum.
    fn file(&mut self, ndx: i32, body: &[u8], sum: &[u8]) -> &mut Self {
        if self.transfers_at.is_none() {
            self.gate();
        }
        ItemAttrs::transfer(ndx)
            .encode(&mut self.ndx, &mut self.data)
            .unwrap();
        SumHead::default().encode(&mut self.data);
        encode_literal(body, &mut self.data);
        encode_end(&mut self.data);
        self.data.extend_from_slice(sum);
        self
    }

    fn done(&mut self) -> &mut Self {
        self.ndx.encode(NDX_DONE, &mut self.data);
        self
    }

    fn ending(&mut self) -> &mut Self {
        self.done().done().done();
        Stats::default().encode(&mut self.data);
        self.done()
    }

    /// Marks the start of the sender's answers (the gate).
    fn gate(&mut self) -> &mut Self {
        self.transfers_at = Some(self.data.len());
        self
    }

    /// The whole stream and the offset of the gate in it.
    fn bytes_gated(&self) -> (Vec<u8>, usize) {
        let at = self
            .transfers_at
            .unwrap_or(self.data.len())
            .min(self.data.len());
        let mut out = self.raw.clone();
        encode_data(&self.data[..at], 4096, &mut out);
        let gate = out.len();
        encode_data(&self.data[at..], 4096, &mut out);
        (out, gate)
    }

    fn bytes(&self) -> Vec<u8> {
        self.bytes_gated().0
    }
}

fn dir(name: &str) -> FileEntry {
    FileEntry {
        name: name.into(),
        mode: mode::S_IFDIR | 0o755,
        mtime: 1_600_000_000,
        ..FileEntry::default()
    }
}

fn reg(name: &str, size: i64) -> FileEntry {
    FileEntry {
        name: name.into(),
        mode: mode::S_IFREG | 0o644,
        size,
        mtime: 1_600_000_000,
        ..FileEntry::default()
    }
}

fn run(script: &Script, dest: &Path) -> (Result<TransferSummary, RemoteError>, Vec<u8>) {
    let out = Shared::default();
    let mut opts = PullOptions::new("unused", dest);
    opts.echo_messages = false;
    // An existing destination directory: a list of one file would
    // otherwise be written under the destination's own name.
    std::fs::create_dir_all(dest).unwrap();
    let root = DestSpec::dir(dest);
    let (data, gate) = script.bytes_gated();
    let input = GatedReader {
        data,
        pos: 0,
        gate,
        out: out.clone(),
    };
    let res = run_pull(&opts, root, input, out.clone());
    let written = out.0.lock().unwrap().clone();
    (res, written)
}

/// Everything under `p`, recursively (nothing when `p` was never made: the
/// destination is settled only once a file list is in).
fn all_files(p: &Path) -> Vec<String> {
    let mut v = Vec::new();
    let Ok(dir) = std::fs::read_dir(p) else {
        return v;
    };
    for e in dir {
        let e = e.unwrap();
        v.push(e.file_name().to_string_lossy().into_owned());
        if e.file_type().unwrap().is_dir() {
            v.extend(
                all_files(&e.path())
                    .into_iter()
                    .map(|s| format!("{}/{s}", e.file_name().to_string_lossy())),
            );
        }
    }
    v.sort();
    v
}

/// A raw entry with an arbitrary name (the encoder refuses bad names).
fn raw_entry(data: &mut Vec<u8>, name: &[u8], long: bool) {
    let flags = 0x18 | if long { 0x40 } else { 0 };
    put_varint(data, flags);
    if long {
        put_varint(data, name.len() as i32);
    } else {
        data.push(name.len() as u8);
    }
    data.extend_from_slice(name);
    put_varlong(data, 1, 3);
    put_varlong(data, 1_600_000_000, 4);
    put_i32(data, (mode::S_IFREG | 0o644) as i32);
}

fn setup() -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let t = tempfile::tempdir_in("/dev/shm").unwrap();
    let dest = t.path().join("dest");
    let outside = t.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    (t, dest, outside)
}

#[test]
fn unsafe_names_are_refused() {
    for (name, long) in [
        (&b"../escape"[..], false),
        (b"/tmp/abs", false),
        (b"a/../../x", false),
        (&[b'n'; 5000][..], true),
    ] {
        let (_t, dest, outside) = setup();
        let mut s = Script::new();
        raw_entry(&mut s.data, name, long);
        let (res, _) = run(&s, &dest);
        let err = res.expect_err("must fail");
        assert!(
            matches!(
                err,
                RemoteError::Proto(arsync_proto::Error::Malformed { .. })
            ),
            "{err}"
        );
        assert!(all_files(&outside).is_empty());
        assert!(all_files(&dest).is_empty(), "{:?}", all_files(&dest));
    }
}

#[test]
fn symlinked_parent_is_refused() {
    let (_t, dest, outside) = setup();
    let mut s = Script::new();
    let link = FileEntry {
        name: b"link".to_vec(),
        mode: mode::S_IFLNK | 0o777,
        link_target: Some(outside.to_string_lossy().as_bytes().to_vec()),
        ..reg("link", 0)
    };
    s.flist(&[dir("."), link, reg("link/pwned", 5)]);
    // No gate: our generator refuses before it asks for anything.
    s.transfers_at = Some(usize::MAX);
    s.file(
        2,
        b"owned",
        file_sum(ChecksumAlgo::Xxh128, b"owned").as_bytes(),
    )
    .ending();
    let (res, _) = run(&s, &dest);
    let err = res.expect_err("must fail");
    // The generator refuses the path once the symlink exists; the receiver
    // refuses (or fails to find) the parent if it gets there first.
    assert!(
        matches!(err, RemoteError::Refused(_) | RemoteError::Io { .. }),
        "{err}"
    );
    assert!(all_files(&outside).is_empty());
}

#[test]
fn bad_indices_are_refused() {
    // Out of range, a directory, and the "." entry.
    for ndx in [7, 0, 1_000_000] {
        let (_t, dest, outside) = setup();
        let mut s = Script::new();
        s.flist(&[dir("."), reg("f", 5)]);
        s.file(
            ndx,
            b"hello",
            file_sum(ChecksumAlgo::Xxh128, b"hello").as_bytes(),
        )
        .ending();
        let (res, _) = run(&s, &dest);
        assert!(
            matches!(res, Err(RemoteError::Refused(_))),
            "ndx {ndx}: {res:?}"
        );
        assert!(all_files(&outside).is_empty());
        assert!(!dest.join("f").exists());
    }
}

#[test]
fn oversized_lengths_are_refused() {
    let (_t, dest, _o) = setup();
    // A sum head announcing 2^30 blocks.
    let mut s = Script::new();
    s.flist(&[dir("."), reg("f", 5)]).gate();
    ItemAttrs::transfer(1)
        .encode(&mut s.ndx, &mut s.data)
        .unwrap();
    put_i32(&mut s.data, 1 << 30);
    put_i32(&mut s.data, 700);
    put_i32(&mut s.data, 2);
    put_i32(&mut s.data, 0);
    let (res, _) = run(&s, &dest);
    assert!(matches!(res, Err(RemoteError::Proto(_))), "{res:?}");

    // A block reference with no basis blocks.
    let mut s = Script::new();
    s.flist(&[dir("."), reg("f", 5)]).gate();
    ItemAttrs::transfer(1)
        .encode(&mut s.ndx, &mut s.data)
        .unwrap();
    SumHead::default().encode(&mut s.data);
    encode_block(0, &mut s.data).unwrap();
    let (res, _) = run(&s, &dest);
    assert!(matches!(res, Err(RemoteError::Proto(_))), "{res:?}");

    // A literal run claiming 2 GiB, then the connection ends: no temp file is left.
    let mut s = Script::new();
    s.flist(&[dir("."), reg("f", 5)]).gate();
    ItemAttrs::transfer(1)
        .encode(&mut s.ndx, &mut s.data)
        .unwrap();
    SumHead::default().encode(&mut s.data);
    put_i32(&mut s.data, i32::MAX);
    s.data.extend_from_slice(&[0u8; 1000]);
    let (res, _) = run(&s, &dest);
    assert!(matches!(res, Err(RemoteError::Eof(_))), "{res:?}");
    assert!(all_files(&dest).is_empty(), "{:?}", all_files(&dest));

    // A frame with an internal tag.
    let mut s = Script::new();
    s.flist(&[dir(".")]);
    let mut bytes = s.bytes();
    bytes.extend_from_slice(&[0, 0, 0, 7 + 9]);
    let out = Shared::default();
    let mut opts = PullOptions::new("unused", &dest);
    opts.echo_messages = false;
    let res = run_pull(&opts, DestSpec::dir(&dest), Cursor::new(bytes), out);
    assert!(matches!(res, Err(RemoteError::Proto(_))), "{res:?}");
}

#[test]
fn checksum_mismatch_triggers_redo_with_full_sums() {
    let (_t, dest, _o) = setup();
    // An older copy as the basis, so the requests carry block sums.
    std::fs::create_dir_all(&dest).unwrap();
    std::fs::write(dest.join("f"), b"hellx").unwrap();
    let mut s = Script::new();
    s.flist(&[dir("."), reg("f", 5)]);
    s.file(1, b"hello", &[0u8; 16]).done();
    s.file(
        1,
        b"hello",
        file_sum(ChecksumAlgo::Xxh128, b"hello").as_bytes(),
    )
    .done();
    s.done();
    Stats::default().encode(&mut s.data);
    s.done();
    let (res, written) = run(&s, &dest);
    let sum = res.unwrap();
    assert_eq!(sum.files_redone, 1);
    assert_eq!(std::fs::read(dest.join("f")).unwrap(), b"hello");

    // Our side: filter list, request 1 (short sums), DONE, request 1 again
    // with full-length sums, DONE x3, goodbye.
    let mut raw = Reader::new(&written);
    assert_eq!(raw.i32().unwrap(), 32);
    assert_eq!(raw.vstring(100).unwrap(), b"xxh128 xxh3 xxh64 md5 md4 sha1");
    let mut d = Demuxer::new();
    d.push(raw.rest());
    let mut data = Vec::new();
    while let Some(ev) = d.next_event().unwrap() {
        if let Event::Data(b) = ev {
            data.extend(b);
        }
    }
    let mut r = Reader::new(&data);
    assert_eq!(r.i32().unwrap(), 0, "empty filter list");
    let mut c = NdxCodec::new();
    let mut seen = Vec::new();
    while r.remaining() > 0 {
        match decode_item(&mut c, &mut r).unwrap() {
            // An item without a transfer (rsync's for a directory whose
            // time differs): no sums follow.
            NdxItem::File(a) if a.iflags & arsync_proto::item::iflags::TRANSFER == 0 => {}
            NdxItem::File(a) => {
                let h = SumHead::decode(&mut r, 16).unwrap();
                r.bytes(h.count as usize * (4 + h.s2length as usize))
                    .unwrap();
                seen.push(format!("req{}:{}", a.ndx, h.s2length));
            }
            NdxItem::Done => seen.push("done".into()),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(
        seen,
        ["req1:2", "done", "req1:16", "done", "done", "done", "done"]
    );
}

/// A receiving client with -A -X against a scripted sender.
fn run_ax(script: &Script, dest: &Path) -> Result<TransferSummary, RemoteError> {
    let out = Shared::default();
    let mut opts = PullOptions::new("unused", dest);
    opts.command.flags = "logDtprAX".into();
    opts.echo_messages = false;
    let root = DestSpec::dir(dest);
    let (data, gate) = script.bytes_gated();
    let input = GatedReader {
        data,
        pos: 0,
        gate,
        out: out.clone(),
    };
    run_pull(&opts, root, input, out)
}

/// One regular entry followed by raw ACL/xattr block bytes, then the end
/// of the list and the id lists (sent because of -A).
fn ax_entry_with(blocks: &[u8]) -> Script {
    let mut s = Script::new();
    let mut enc = FlistEncoder::new(s.opts.clone());
    enc.encode(&reg("f", 1), 0, &mut s.data).unwrap();
    s.data.extend_from_slice(blocks);
    s.opts.preserve_acls = true;
    s.opts.preserve_xattrs = true;
    s.end_flist(&enc);
    s
}

#[test]
fn bad_acl_and_xattr_blocks_are_refused() {
    let varint = |v: i32| {
        let mut b = Vec::new();
        put_varint(&mut b, v);
        b
    };
    let empty_acl = [0u8, 0];
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("ACL index beyond the cache", [varint(5), vec![0]].concat()),
        ("ACL permission out of range", vec![0, 1, 9, 0]),
        (
            "ACL name count too large",
            [vec![0, 0x10], varint(1 << 30)].concat(),
        ),
        ("unknown ACL flags", vec![0, 0xE0, 0]),
        (
            "xattr index beyond the cache",
            [&empty_acl[..], &varint(9)].concat(),
        ),
        (
            "xattr count too large",
            [&empty_acl[..], &[0], &varint(1 << 28)].concat(),
        ),
        (
            "xattr value too long",
            [&empty_acl[..], &[0, 1, 7], &varint(1 << 24), b"user.a\0"].concat(),
        ),
        (
            "xattr name without NUL",
            [&empty_acl[..], &[0, 1, 3, 1], b"abc", b"v"].concat(),
        ),
        (
            "negative xattr name length",
            [&empty_acl[..], &[0, 1], &varint(-5), &[1]].concat(),
        ),
    ];
    for (what, blocks) in cases {
        let (_t, dest, _) = setup();
        let s = ax_entry_with(&blocks);
        let err = run_ax(&s, &dest).expect_err(what);
        assert!(
            matches!(
                err,
                RemoteError::Proto(arsync_proto::Error::Malformed { .. })
            ),
            "{what}: {err}"
        );
        assert!(
            all_files(&dest).is_empty(),
            "{what}: wrote {:?}",
            all_files(&dest)
        );
    }
}

#[test]
fn xattr_values_nobody_asked_for_are_refused() {
    use arsync_proto::item::iflags;
    use arsync_proto::xattr::{encode_reply, XattrSet};
    // A file with a long (abbreviated) xattr: our generator asks for it.
    let set = XattrSet::from_local(vec![(b"user.long".to_vec(), vec![3u8; 64])]);
    let entry = FileEntry {
        xattrs: Some(Arc::new(set)),
        ..reg("f", 1)
    };
    for (what, num, flags) in [
        // A reply naming an attribute the set does not have.
        (
            "number out of range",
            7,
            iflags::TRANSFER | iflags::REPORT_XATTR,
        ),
        // Values for an entry whose set is empty.
        ("values for a file without them", 1, iflags::REPORT_XATTR),
    ] {
        let (_t, dest, _) = setup();
        let mut s = Script::new();
        s.opts.preserve_acls = true;
        s.opts.preserve_xattrs = true;
        s.flist(&[reg("a", 1), entry.clone()]);
        s.gate();
        ItemAttrs {
            ndx: if flags & iflags::TRANSFER != 0 { 1 } else { 0 },
            iflags: flags,
            basis_type: None,
            xname: None,
        }
        .encode(&mut s.ndx, &mut s.data)
        .unwrap();
        encode_reply(&[(num, &[3u8; 64][..])], &mut s.data);
        SumHead::default().encode(&mut s.data);
        encode_literal(b"x", &mut s.data);
        encode_end(&mut s.data);
        let err = run_ax(&s, &dest).expect_err(what);
        assert!(
            matches!(
                err,
                RemoteError::Proto(arsync_proto::Error::Malformed { .. }) | RemoteError::Refused(_)
            ),
            "{what}: {err}"
        );
        assert!(
            !dest.join("a").exists() && !dest.join("f").exists(),
            "{what}"
        );
    }
}

#[test]
fn partial_keeps_what_arrived_when_the_sender_vanishes() {
    for partial in [false, true] {
        let (_t, dest, _) = setup();
        let mut s = Script::new();
        // 3 MiB announced, 1.5 MiB sent: the receiver writes in 1 MiB
        // batches, so at least the first batch is on disk when it breaks.
        let body: Vec<u8> = (0..3u32 << 19).map(|i| (i % 251) as u8).collect();
        s.flist(&[reg("f", 3 << 20)]);
        s.gate();
        ItemAttrs::transfer(0)
            .encode(&mut s.ndx, &mut s.data)
            .unwrap();
        SumHead::default().encode(&mut s.data);
        encode_literal(&body, &mut s.data);
        // The stream ends here: no more data, no checksum.
        let out = Shared::default();
        let mut opts = PullOptions::new("unused", &dest);
        opts.echo_messages = false;
        opts.command.partial = partial;
        // A directory to receive into (a lone file would take its name).
        std::fs::create_dir_all(&dest).unwrap();
        let root = DestSpec::dir(&dest);
        let (data, gate) = s.bytes_gated();
        let input = GatedReader {
            data,
            pos: 0,
            gate,
            out: out.clone(),
        };
        assert!(run_pull(&opts, root, input, out).is_err());
        let names = all_files(&dest);
        if partial {
            assert_eq!(names, ["f"]);
            let kept = std::fs::read(dest.join("f")).unwrap();
            assert!(kept.len() >= 1 << 20, "kept {} bytes", kept.len());
            assert_eq!(kept[..], body[..kept.len()]);
        } else {
            assert!(names.is_empty(), "{names:?}");
        }
    }
}

/// A session with incremental recursion granted: the first list (no id
/// lists after it), then `parts`: a directory index and its list, or
/// `None` for NDX_FLIST_EOF.
/// One part of an incremental session: a directory index and its list,
/// or `None` for NDX_FLIST_EOF.
type Part = (Option<i32>, Vec<FileEntry>);

fn inc_script(top: &[FileEntry], parts: &[Part]) -> Script {
    let mut s = Script::new();
    s.raw.clear();
    put_i32(&mut s.raw, 32);
    put_varint(
        &mut s.raw,
        CompatFlags::server_reply("iLsfxCIvu", true).0 as i32,
    );
    put_vstring(&mut s.raw, b"xxh128 xxh3 xxh64 md5 md4 none").unwrap();
    put_i32(&mut s.raw, 12345);
    s.opts.inc_recurse = true;
    // One encoder: the name and attribute compression spans every list.
    let mut enc = FlistEncoder::new(s.opts.clone());
    for e in top {
        enc.encode(e, 1, &mut s.data).unwrap();
    }
    enc.encode_end(0, &mut s.data);
    s.gate();
    for (dir, entries) in parts {
        match dir {
            Some(d) => {
                s.ndx.encode(NDX_FLIST_OFFSET - d, &mut s.data);
                for e in entries {
                    enc.encode(e, 0, &mut s.data).unwrap();
                }
                enc.encode_end(0, &mut s.data);
            }
            None => s.ndx.encode(NDX_FLIST_EOF, &mut s.data),
        }
    }
    s
}

#[test]
fn bad_incremental_lists_are_refused() {
    let top = [dir("."), dir("a"), reg("f", 5), dir("z")];
    let cases: Vec<(&str, Vec<Part>, &str)> = vec![
        (
            "index out of range",
            vec![(Some(7), vec![reg("a/x", 1)])],
            "invalid directory index 7",
        ),
        (
            "negative index",
            vec![(Some(-5), vec![reg("a/x", 1)])],
            "unexpected index marker Other(-96)",
        ),
        (
            "the list of '.' (its contents came first)",
            vec![(Some(0), vec![reg("x", 1)])],
            "refusing a file list for directory 0",
        ),
        (
            "a second list for a directory",
            vec![
                (Some(1), vec![reg("a/x", 1)]),
                (Some(1), vec![reg("a/y", 1)]),
            ],
            "it had one already",
        ),
        (
            "an entry outside the directory",
            vec![(Some(1), vec![reg("z/x", 1)])],
            "invalid path from the sender: z/x",
        ),
        (
            "an entry below a subdirectory",
            vec![(Some(2), vec![reg("z/q/x", 1)])],
            "invalid path from the sender: z/q/x",
        ),
        (
            "a list after NDX_FLIST_EOF",
            vec![(None, vec![]), (Some(1), vec![reg("a/x", 1)])],
            "after the end of the lists",
        ),
        (
            "NDX_FLIST_EOF twice",
            vec![(None, vec![]), (None, vec![])],
            "NDX_FLIST_EOF twice",
        ),
    ];
    for (what, parts, expect) in cases {
        let (_t, dest, outside) = setup();
        let s = inc_script(&top, &parts);
        let (res, _) = run(&s, &dest);
        match &res {
            Err(RemoteError::Refused(m)) => assert!(m.contains(expect), "{what}: {m}"),
            other => panic!("{what}: {other:?}"),
        }
        assert!(all_files(&outside).is_empty(), "{what}");
        assert!(
            !dest.join("a/x").exists() && !dest.join("x").exists(),
            "{what}"
        );
    }
}

#[test]
fn incremental_list_for_a_non_directory_is_refused() {
    // The parent index names a regular file's slot: only directories
    // have indices, so index 1 (there is one directory, ".") is out of
    // range, and "f" cannot become a parent.
    let (_t, dest, outside) = setup();
    let s = inc_script(&[dir("."), reg("f", 5)], &[(Some(1), vec![reg("f/x", 1)])]);
    let (res, _) = run(&s, &dest);
    match &res {
        Err(RemoteError::Refused(m)) => assert!(m.contains("invalid directory index 1"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert!(all_files(&outside).is_empty());
    assert!(!dest.join("f/x").exists());
}

#[test]
fn top_level_incremental_list_holds_only_top_level_names() {
    let (_t, dest, _outside) = setup();
    let s = inc_script(&[dir("."), reg("a/b", 5)], &[]);
    let (res, _) = run(&s, &dest);
    match &res {
        Err(RemoteError::Refused(m)) => assert!(m.contains("top-level list"), "{m}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn incremental_list_ends_when_the_sender_cannot_send_a_file() {
    // "f" (index 2) comes, "g" (index 3) cannot be sent (MSG_NO_SEND): the
    // top list still ends, and so does the run.
    let (_t, dest, outside) = setup();
    let mut s = inc_script(&[dir("."), reg("f", 5), reg("g", 5)], &[]);
    s.file(
        2,
        b"hello",
        file_sum(ChecksumAlgo::Xxh128, b"hello").as_bytes(),
    );
    let at = s.data.len();
    s.ndx.encode(NDX_FLIST_EOF, &mut s.data);
    s.ending();
    let gate_at = s.transfers_at.unwrap();
    let mut data = s.raw.clone();
    encode_data(&s.data[..gate_at], 4096, &mut data);
    let gate = data.len();
    encode_data(&s.data[gate_at..at], 4096, &mut data);
    encode_int_msg(MsgTag::NoSend, 3, &mut data);
    encode_data(&s.data[at..], 4096, &mut data);
    let out = Shared::default();
    let mut opts = PullOptions::new("unused", &dest);
    opts.echo_messages = false;
    let input = GatedReader {
        data,
        pos: 0,
        gate,
        out: out.clone(),
    };
    let res = run_pull(&opts, DestSpec::dir(&dest), input, out);
    let summary = res.unwrap();
    assert_eq!(summary.files_transferred, 1);
    assert_eq!(std::fs::read(dest.join("f")).unwrap(), b"hello");
    assert!(!dest.join("g").exists());
    assert!(all_files(&outside).is_empty());
}
