//! What the user sees: `-i` itemized change strings, `--out-format` lines, `--log-file`,
//! `--stats`, `--list-only` lines, and number formatting as rsync prints them.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::fsops::{Kind, Meta};

/// The 11-character `%i` string of one item, e.g. `>f.st......` or `cd+++++++++`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Itemize {
    /// Update type: `<`, `>`, `c`, `h`, `.` or `*`.
    pub update: u8,
    /// File type: `f`, `d`, `L`, `D`, `S`.
    pub file_type: u8,
    /// The item did not exist before.
    pub new: bool,
    /// `c`: checksum (regular files, with `-c`) or value (links, devices) differs.
    pub checksum: bool,
    /// `s`: size differs.
    pub size: bool,
    /// `t` or `T` (time set to the transfer time), or `.`.
    pub time: u8,
    /// `p`: permissions differ.
    pub perms: bool,
    /// `o`: owner differs.
    pub owner: bool,
    /// `g`: group differs.
    pub group: bool,
    /// `a`: ACL differs.
    pub acl: bool,
    /// `x`: extended attributes differ.
    pub xattr: bool,
}

impl Itemize {
    /// A blank item of `kind` with update type `update`.
    pub fn new(update: u8, kind: Kind) -> Self {
        Itemize {
            update,
            file_type: type_char(kind),
            new: false,
            checksum: false,
            size: false,
            time: b'.',
            perms: false,
            owner: false,
            group: false,
            acl: false,
            xattr: false,
        }
    }

    /// True if any attribute column is set.
    pub fn any_change(&self) -> bool {
        self.new
            || self.checksum
            || self.size
            || self.time != b'.'
            || self.perms
            || self.owner
            || self.group
            || self.acl
            || self.xattr
    }

    /// The 11-character string.
    pub fn render(&self) -> String {
        let mut s = vec![self.update, self.file_type];
        if self.new {
            s.extend_from_slice(b"+++++++++");
        } else if !self.any_change() && matches!(self.update, b'.' | b'h' | b'c') {
            s.extend_from_slice(b"         ");
        } else {
            let f = |on: bool, c: u8| if on { c } else { b'.' };
            s.extend_from_slice(&[
                f(self.checksum, b'c'),
                f(self.size, b's'),
                self.time,
                f(self.perms, b'p'),
                f(self.owner, b'o'),
                f(self.group, b'g'),
                b'.',
                f(self.acl, b'a'),
                f(self.xattr, b'x'),
            ]);
        }
        String::from_utf8_lossy(&s).into_owned()
    }
}

/// rsync's one-letter type code.
pub fn type_char(kind: Kind) -> u8 {
    match kind {
        Kind::File => b'f',
        Kind::Dir => b'd',
        Kind::Symlink => b'L',
        Kind::CharDev | Kind::BlockDev => b'D',
        Kind::Fifo | Kind::Socket => b'S',
    }
}

/// One line's worth of facts for `--out-format`.
pub struct LineInfo<'a> {
    /// The name relative to the transfer root (`%n`), without the trailing `/` for dirs.
    pub name: &'a [u8],
    /// Entry kind.
    pub kind: Kind,
    /// `%i`
    pub item: Option<Itemize>,
    /// `%L`: symlink target (` -> x`) or hard-link target (` => x`).
    pub link: Option<(&'a str, &'a [u8])>,
    /// `%l`
    pub length: u64,
    /// `%b`: bytes transferred.
    pub bytes: u64,
    /// Source metadata (for `%M`, `%U`, `%G`, `%B`).
    pub meta: Option<&'a Meta>,
    /// `%o`
    pub operation: &'a str,
}

/// Renders an `--out-format` template. As in rsync, the numbers (`%l`, `%b`, `%c`) are plain
/// digits unless the field asks for more with apostrophes (`%'l`: commas, `%''l`: units),
/// whatever `-h` says; `_human` (the `-h` level) is kept for the callers' convenience.
pub fn format_line(format: &str, info: &LineInfo, _human: u8) -> Vec<u8> {
    render_line(format, info, escape_name)
}

/// [`format_line`] for `--log-file`: rsync escapes only control characters there.
pub fn format_log_line(format: &str, info: &LineInfo) -> Vec<u8> {
    render_line(format, info, escape_controls)
}

fn render_line(format: &str, info: &LineInfo, escape_name: fn(&[u8]) -> Vec<u8>) -> Vec<u8> {
    let mut out = Vec::new();
    let f = format.as_bytes();
    let mut i = 0;
    while i < f.len() {
        if f[i] != b'%' {
            out.push(f[i]);
            i += 1;
            continue;
        }
        i += 1;
        let start = i;
        while i < f.len() && (f[i] == b'-' || f[i] == b'\'' || f[i].is_ascii_digit()) {
            i += 1;
        }
        let modifiers = &f[start..i];
        let humanize =
            u8::try_from(modifiers.iter().filter(|&&b| b == b'\'').count()).unwrap_or(u8::MAX);
        let Some(&c) = f.get(i) else {
            out.push(b'%');
            break;
        };
        i += 1;
        let mut field: Vec<u8> = match c {
            b'%' => b"%".to_vec(),
            b'n' => {
                let mut v = escape_name(info.name);
                if info.kind == Kind::Dir && !v.ends_with(b"/") {
                    v.push(b'/');
                }
                v
            }
            b'f' => escape_name(info.name),
            b'L' => match info.link {
                Some((arrow, target)) => {
                    let mut v = format!(" {arrow} ").into_bytes();
                    v.extend_from_slice(&escape_name(target));
                    v
                }
                None => Vec::new(),
            },
            b'i' => info
                .item
                .map(|it| it.render())
                .unwrap_or_default()
                .into_bytes(),
            b'l' => num(info.length, humanize).into_bytes(),
            b'b' | b'c' => num(info.bytes, humanize).into_bytes(),
            b'o' => info.operation.as_bytes().to_vec(),
            b't' => format_time(now_secs()).into_bytes(),
            // rsync's %M joins date and time with a dash.
            b'M' => info
                .meta
                .map(|m| format_time(m.mtime.sec).replace(' ', "-"))
                .unwrap_or_default()
                .into_bytes(),
            b'U' => info
                .meta
                .map(|m| m.uid.to_string())
                .unwrap_or_default()
                .into_bytes(),
            b'G' => info
                .meta
                .map(|m| m.gid.to_string())
                .unwrap_or_default()
                .into_bytes(),
            b'B' => info
                .meta
                .map(|m| perm_string(m.mode)[1..].to_string())
                .unwrap_or_default()
                .into_bytes(),
            b'p' => std::process::id().to_string().into_bytes(),
            b'm' | b'h' | b'a' | b'P' | b'u' => Vec::new(),
            other => vec![b'%', other],
        };
        let left = modifiers.contains(&b'-');
        let width: usize = std::str::from_utf8(modifiers)
            .unwrap_or("")
            .trim_matches(|c| c == '-' || c == '\'')
            .parse()
            .unwrap_or(0);
        if field.len() < width {
            let pad = vec![b' '; width - field.len()];
            if left {
                field.extend_from_slice(&pad);
            } else {
                let mut p = pad;
                p.extend_from_slice(&field);
                field = p;
            }
        }
        out.extend_from_slice(&field);
    }
    out
}

static EIGHT_BIT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// `-8`: bytes with the high bit set are printed as they are.
pub fn set_eight_bit(on: bool) {
    EIGHT_BIT.store(on, Ordering::Relaxed);
}

/// Escapes a name for output as rsync does: control characters (other than tab) and bytes
/// that are not valid UTF-8 become `\#ooo` (octal).
pub fn escape_name(name: &[u8]) -> Vec<u8> {
    if EIGHT_BIT.load(Ordering::Relaxed) {
        return escape_controls(name);
    }
    let mut out = Vec::with_capacity(name.len());
    let mut rest = name;
    while !rest.is_empty() {
        let (valid, bad) = match std::str::from_utf8(rest) {
            Ok(s) => (s.len(), 0),
            Err(e) => (
                e.valid_up_to(),
                e.error_len().unwrap_or(rest.len() - e.valid_up_to()),
            ),
        };
        for &b in &rest[..valid] {
            if (b < 0x20 && b != b'\t') || b == 0x7f {
                out.extend_from_slice(format!("\\#{b:03o}").as_bytes());
            } else {
                out.push(b);
            }
        }
        for &b in &rest[valid..valid + bad] {
            out.extend_from_slice(format!("\\#{b:03o}").as_bytes());
        }
        rest = &rest[valid + bad..];
    }
    out
}

/// Escapes only control characters (other than tab) as `\#ooo`: names under `-8`, and in
/// the `--log-file`, where rsync writes other bytes as they are.
pub fn escape_controls(name: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(name.len());
    for &b in name {
        if (b < 0x20 && b != b'\t') || b == 0x7f {
            out.extend_from_slice(format!("\\#{b:03o}").as_bytes());
        } else {
            out.push(b);
        }
    }
    out
}

/// Seconds since the epoch, now.
pub fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// `YYYY/MM/DD HH:MM:SS` in UTC.
pub fn format_time(secs: i64) -> String {
    let days = secs.div_euclid(86400);
    let rem = secs.rem_euclid(86400);
    // Civil-from-days (proleptic Gregorian).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}/{m:02}/{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// `drwxr-xr-x` style permission string.
pub fn perm_string(mode: u32) -> String {
    let t = match mode & libc::S_IFMT {
        libc::S_IFDIR => 'd',
        libc::S_IFLNK => 'l',
        libc::S_IFCHR => 'c',
        libc::S_IFBLK => 'b',
        libc::S_IFIFO => 'p',
        libc::S_IFSOCK => 's',
        _ => '-',
    };
    let mut s = String::with_capacity(10);
    s.push(t);
    let bits = [
        (0o400, 'r'),
        (0o200, 'w'),
        (0o100, 'x'),
        (0o040, 'r'),
        (0o020, 'w'),
        (0o010, 'x'),
        (0o004, 'r'),
        (0o002, 'w'),
        (0o001, 'x'),
    ];
    for (i, (bit, c)) in bits.iter().enumerate() {
        let on = mode & bit != 0;
        let special = match i {
            2 => mode & 0o4000 != 0,
            5 => mode & 0o2000 != 0,
            8 => mode & 0o1000 != 0,
            _ => false,
        };
        let ch = match (i, on, special) {
            (8, true, true) => 't',
            (8, false, true) => 'T',
            (_, true, true) => 's',
            (_, false, true) => 'S',
            (_, true, false) => *c,
            _ => '-',
        };
        s.push(ch);
    }
    s
}

/// A number with thousands separators (`-h` once: with separators; twice: K/M/G units).
pub fn num(n: u64, human: u8) -> String {
    if human == 0 {
        return n.to_string();
    }
    if human >= 2 {
        // -h counts in thousands, -hh (and more) in powers of 1024, as rsync.
        let mult = if human == 2 { 1000.0 } else { 1024.0 };
        let units = ["", "K", "M", "G", "T", "P"];
        let mut v = n as f64;
        let mut u = 0;
        while v >= mult && u + 1 < units.len() {
            v /= mult;
            u += 1;
        }
        if u == 0 {
            return n.to_string();
        }
        return format!("{v:.2}{}", units[u]);
    }
    commas(n)
}

/// `1234567` -> `1,234,567`.
pub fn commas(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// rsync's `--progress` figures (its progress.c): `done` bytes (as [`num`]
/// writes them) right-aligned in 15 columns, the percent of `size`, the rate
/// (`bytes_per_sec`, shown in kB/s, MB/s or GB/s) and a time of `secs` as
/// `H:MM:SS` (`??:??:??` when negative or unknown). No `\r`, no line end.
pub fn progress_figures(done: u64, size: u64, bytes_per_sec: f64, secs: f64, human: u8) -> String {
    let pct = match done == size {
        true => 100,
        false => (100.0 * done as f64 / size as f64) as u64,
    };
    let mut rate = bytes_per_sec / 1024.0;
    let unit = if rate > 1024.0 * 1024.0 {
        rate /= 1024.0 * 1024.0;
        "GB/s"
    } else if rate > 1024.0 {
        rate /= 1024.0;
        "MB/s"
    } else {
        "kB/s"
    };
    let time = match secs {
        s if !(0.0..=9999.0 * 3600.0).contains(&s) => "  ??:??:??".to_string(),
        s => {
            let s = s as u64;
            format!("{:>4}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
        }
    };
    format!(
        "{:>15} {pct:>3}% {rate:>7.2}{unit} {time}",
        num(done, human)
    )
}

thread_local! {
    /// Lines printed by this thread while it works on one sequenced piece of work.
    static CAPTURE: RefCell<Option<Vec<Vec<u8>>>> = const { RefCell::new(None) };
}

/// Starts capturing this thread's output lines (see [`Sequencer`]).
pub fn begin_capture() {
    CAPTURE.with(|c| *c.borrow_mut() = Some(Vec::new()));
}

/// Goes on capturing after `lines` (lines taken with [`end_capture`] to set some apart).
pub fn resume_capture(lines: Vec<Vec<u8>>) {
    CAPTURE.with(|c| *c.borrow_mut() = Some(lines));
}

/// Stops capturing and returns the captured lines.
pub fn end_capture() -> Vec<Vec<u8>> {
    CAPTURE.with(|c| c.borrow_mut().take().unwrap_or_default())
}

/// Prints pieces of output in the order their work was handed out, whatever order the
/// workers finish in, so that `-i`/`-v` output is rsync's file-list order.
#[derive(Default)]
pub struct Sequencer {
    next_id: AtomicU64,
    state: Mutex<(u64, Pieces)>,
}

/// Finished output pieces waiting for their turn, by position.
type Pieces = BTreeMap<u64, Vec<Vec<u8>>>;

impl Sequencer {
    /// Hands out the next position in the output order.
    pub fn alloc(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Records the lines of position `id` and prints every complete prefix.
    pub fn complete(&self, out: &Output, id: u64, lines: Vec<Vec<u8>>) {
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        st.1.insert(id, lines);
        loop {
            let next = st.0;
            let Some(lines) = st.1.remove(&next) else {
                break;
            };
            for l in lines {
                out.print(&l);
            }
            st.0 = next + 1;
        }
    }
}

/// Where output lines go: standard output and, with `--log-file`, a log file.
pub struct Output {
    stdout: Mutex<std::io::Stdout>,
    log: Option<Mutex<File>>,
    log_format: String,
    quiet: bool,
}

impl Output {
    /// Output to stdout and an optional log file.
    pub fn new(log: Option<File>, log_format: Option<String>, quiet: bool) -> Self {
        Output {
            stdout: Mutex::new(std::io::stdout()),
            log: log.map(Mutex::new),
            log_format: log_format.unwrap_or_else(|| "%i %n%L".to_string()),
            quiet,
        }
    }

    /// Prints one line to stdout (unless `-q`); while this thread captures (see
    /// [`Sequencer`]), the line is kept for ordered printing instead.
    pub fn line(&self, bytes: &[u8]) {
        if self.quiet {
            return;
        }
        let captured = CAPTURE.with(|c| match c.borrow_mut().as_mut() {
            Some(v) => {
                v.push(bytes.to_vec());
                true
            }
            None => false,
        });
        if !captured {
            self.print(bytes);
        }
    }

    /// Prints one line to stdout now.
    pub fn print(&self, bytes: &[u8]) {
        if let Ok(mut o) = self.stdout.lock() {
            let _ = o.write_all(bytes);
            let _ = o.write_all(b"\n");
            let _ = o.flush();
        }
    }

    /// Writes raw bytes to stdout without a newline (progress lines ending in `\r`).
    pub fn raw(&self, bytes: &[u8]) {
        if self.quiet {
            return;
        }
        if let Ok(mut o) = self.stdout.lock() {
            let _ = o.write_all(bytes);
            let _ = o.flush();
        }
    }

    /// Writes a message to the log file, if any.
    pub fn log_msg(&self, msg: &[u8]) {
        if let Some(l) = &self.log {
            if let Ok(mut f) = l.lock() {
                let mut v =
                    format!("{} [{}] ", format_time(now_secs()), std::process::id()).into_bytes();
                v.extend_from_slice(msg);
                v.push(b'\n');
                let _ = f.write_all(&v);
            }
        }
    }

    /// Logs one item with the log-file format.
    pub fn log_item(&self, info: &LineInfo, _human: u8) {
        if self.log.is_some() {
            let line = format_log_line(&self.log_format, info);
            self.log_msg(&line);
        }
    }

    /// Prints a message to stderr and the log.
    pub fn error(&self, msg: &str) {
        eprintln!("{msg}");
        self.log_msg(msg.as_bytes());
    }
}

/// Counters for `--stats`.
#[derive(Default)]
pub struct Stats {
    /// Files seen, per type.
    pub files_reg: AtomicU64,
    /// Directories seen.
    pub files_dir: AtomicU64,
    /// Symlinks seen.
    pub files_link: AtomicU64,
    /// Devices seen.
    pub files_dev: AtomicU64,
    /// Specials seen.
    pub files_special: AtomicU64,
    /// Created, per type.
    pub created_reg: AtomicU64,
    /// Created directories.
    pub created_dir: AtomicU64,
    /// Created symlinks.
    pub created_link: AtomicU64,
    /// Created devices.
    pub created_dev: AtomicU64,
    /// Created specials.
    pub created_special: AtomicU64,
    /// Deleted entries.
    pub deleted: AtomicU64,
    /// Deleted entries per type (reg, dir, link, dev, special), when known:
    /// then `--stats` shows the breakdown as rsync does.
    pub deleted_by_kind: [AtomicU64; 5],
    /// Regular files transferred.
    pub transferred: AtomicU64,
    /// Total size of all files.
    pub total_size: AtomicU64,
    /// Total size of transferred files.
    pub transferred_size: AtomicU64,
    /// Bytes written as literal data.
    pub literal: AtomicU64,
    /// Bytes matched (unchanged in place or reflinked).
    pub matched: AtomicU64,
    /// Bytes sent and received on a connection (remote mode); without them
    /// the totals are estimated from the counters.
    pub wire_bytes: std::sync::OnceLock<(u64, u64)>,
    /// A dry run: the summary says so, as rsync's does.
    pub dry_run: std::sync::atomic::AtomicBool,
}

impl Stats {
    /// Counts one seen entry.
    pub fn seen(&self, kind: Kind, size: u64) {
        let c = match kind {
            Kind::File => &self.files_reg,
            Kind::Dir => &self.files_dir,
            Kind::Symlink => &self.files_link,
            Kind::CharDev | Kind::BlockDev => &self.files_dev,
            Kind::Fifo | Kind::Socket => &self.files_special,
        };
        c.fetch_add(1, Ordering::Relaxed);
        if matches!(kind, Kind::File | Kind::Symlink) {
            self.total_size.fetch_add(size, Ordering::Relaxed);
        }
    }

    /// Entries seen so far, all types.
    pub fn files_seen(&self) -> u64 {
        [
            &self.files_reg,
            &self.files_dir,
            &self.files_link,
            &self.files_dev,
            &self.files_special,
        ]
        .iter()
        .map(|a| a.load(Ordering::Relaxed))
        .sum()
    }

    /// Counts one created entry.
    pub fn created(&self, kind: Kind) {
        let c = match kind {
            Kind::File => &self.created_reg,
            Kind::Dir => &self.created_dir,
            Kind::Symlink => &self.created_link,
            Kind::CharDev | Kind::BlockDev => &self.created_dev,
            Kind::Fifo | Kind::Socket => &self.created_special,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    fn breakdown(counts: [u64; 5]) -> String {
        let total: u64 = counts.iter().sum();
        let names = ["reg", "dir", "link", "dev", "special"];
        let parts: Vec<String> = names
            .iter()
            .zip(counts)
            .filter(|(_, c)| *c > 0)
            .map(|(n, c)| format!("{n}: {}", commas(c)))
            .collect();
        if parts.is_empty() {
            commas(total)
        } else {
            format!("{} ({})", commas(total), parts.join(", "))
        }
    }

    /// The `--stats` block plus the two summary lines, as rsync prints them.
    pub fn render(&self, elapsed: f64, human: u8) -> String {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let files = [
            l(&self.files_reg),
            l(&self.files_dir),
            l(&self.files_link),
            l(&self.files_dev),
            l(&self.files_special),
        ];
        let created = [
            l(&self.created_reg),
            l(&self.created_dir),
            l(&self.created_link),
            l(&self.created_dev),
            l(&self.created_special),
        ];
        let (sent, recv) = self.wire_estimate();
        let mut s = String::new();
        s.push_str(&format!("\nNumber of files: {}\n", Self::breakdown(files)));
        s.push_str(&format!(
            "Number of created files: {}\n",
            Self::breakdown(created)
        ));
        let deleted = self.deleted_by_kind.each_ref().map(l);
        s.push_str(&format!(
            "Number of deleted files: {}\n",
            match deleted.iter().sum::<u64>() {
                0 => commas(l(&self.deleted)),
                _ => Self::breakdown(deleted),
            }
        ));
        s.push_str(&format!(
            "Number of regular files transferred: {}\n",
            commas(l(&self.transferred))
        ));
        let b = |n: u64| format!("{} bytes", num(n, human));
        s.push_str(&format!("Total file size: {}\n", b(l(&self.total_size))));
        s.push_str(&format!(
            "Total transferred file size: {}\n",
            b(l(&self.transferred_size))
        ));
        s.push_str(&format!("Literal data: {}\n", b(l(&self.literal))));
        s.push_str(&format!("Matched data: {}\n", b(l(&self.matched))));
        s.push_str("File list size: 0\n");
        s.push_str("File list generation time: 0.001 seconds\n");
        s.push_str("File list transfer time: 0.000 seconds\n");
        s.push_str(&format!("Total bytes sent: {}\n", num(sent, human)));
        s.push_str(&format!("Total bytes received: {}\n\n", num(recv, human)));
        s.push_str(&self.summary(elapsed, human));
        s
    }

    /// Estimated bytes an rsync pipe would have carried (data plus per-file overhead).
    fn wire_estimate(&self) -> (u64, u64) {
        if let Some(&w) = self.wire_bytes.get() {
            return w;
        }
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let files: u64 = [
            &self.files_reg,
            &self.files_dir,
            &self.files_link,
            &self.files_dev,
            &self.files_special,
        ]
        .iter()
        .map(|a| l(a))
        .sum();
        (
            l(&self.literal) + files * 40 + 30,
            l(&self.transferred) * 20 + 20,
        )
    }

    /// The `sent ... received ...` / `total size is ...` lines.
    pub fn summary(&self, elapsed: f64, human: u8) -> String {
        let (sent, recv) = self.wire_estimate();
        let total = self.total_size.load(Ordering::Relaxed);
        // rsync divides by whole elapsed seconds plus one half.
        let rate = (sent + recv) as f64 / (0.5 + elapsed.floor());
        let speedup = if sent + recv > 0 {
            total as f64 / (sent + recv) as f64
        } else {
            0.0
        };
        format!(
            "sent {} bytes  received {} bytes  {} bytes/sec\ntotal size is {}  speedup is {}{}",
            num(sent, human),
            num(recv, human),
            rate_str(rate, human),
            num(total, human),
            fixed2(speedup, human),
            if self.dry_run.load(Ordering::Relaxed) {
                " (DRY RUN)"
            } else {
                ""
            }
        )
    }
}

fn rate_str(rate: f64, human: u8) -> String {
    if human >= 2 {
        return num(rate as u64, human);
    }
    fixed2(rate, human)
}

/// A number with two decimals, the whole part grouped by commas unless `--no-h` (rsync's
/// `comma_dnum`).
fn fixed2(x: f64, human: u8) -> String {
    let text = format!("{x:.2}");
    if human == 0 {
        return text;
    }
    match text.split_once('.') {
        Some((whole, frac)) => match whole.parse::<u64>() {
            Ok(w) => format!("{}.{frac}", commas(w)),
            Err(_) => text,
        },
        None => text,
    }
}

/// An `--list-only` line: `drwxr-xr-x          4,096 2026/11/21 09:06:54 name`.
pub fn list_line(meta: &Meta, name: &[u8], link: Option<&[u8]>, human: u8) -> Vec<u8> {
    let size = if meta.kind().is_device() {
        0
    } else {
        meta.size
    };
    let mut v = format!(
        "{} {:>14} {} ",
        perm_string(meta.mode),
        num(size, human),
        format_time(meta.mtime.sec)
    )
    .into_bytes();
    v.extend_from_slice(name);
    if let Some(t) = link {
        v.extend_from_slice(b" -> ");
        v.extend_from_slice(t);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn itemize_strings() {
        let mut it = Itemize::new(b'>', Kind::File);
        it.new = true;
        assert_eq!(it.render(), ">f+++++++++");
        let mut it = Itemize::new(b'.', Kind::Dir);
        assert_eq!(it.render(), ".d         ");
        it.time = b't';
        assert_eq!(it.render(), ".d..t......");
        let mut it = Itemize::new(b'>', Kind::File);
        it.size = true;
        it.time = b'T';
        it.perms = true;
        assert_eq!(it.render(), ">f.sTp.....");
    }

    #[test]
    fn numbers_and_times() {
        assert_eq!(commas(0), "0");
        assert_eq!(commas(1234567), "1,234,567");
        assert_eq!(format_time(0), "1970/01/01 00:00:00");
        assert_eq!(format_time(1_700_000_000), "2023/11/14 22:13:20");
        assert_eq!(perm_string(0o104755), "-rwsr-xr-x");
        assert_eq!(perm_string(0o041777), "drwxrwxrwt");
    }

    #[test]
    fn progress_figures_as_rsync_prints_them() {
        assert_eq!(
            progress_figures(3_000_000, 3_000_000, 370_000_000.0, 0.4, 1),
            "      3,000,000 100%  352.86MB/s    0:00:00"
        );
        assert_eq!(
            progress_figures(32_768, 3_000_000, 0.0, 0.0, 1),
            "         32,768   1%    0.00kB/s    0:00:00"
        );
        assert_eq!(
            progress_figures(5 << 30, 10 << 30, 2.5 * (1u64 << 30) as f64, 3725.0, 1),
            "  5,368,709,120  50%    2.50GB/s    1:02:05"
        );
        assert!(progress_figures(1, 2, 1.0, f64::INFINITY, 0).ends_with("  ??:??:??"));
        assert!(progress_figures(1, 2, 1.0, -1.0, 0).ends_with("  ??:??:??"));
    }

    #[test]
    fn names_are_escaped_like_rsync() {
        assert_eq!(escape_name(b"caf\xe9 x"), b"caf\\#351 x");
        assert_eq!(escape_name(b"new\nline"), b"new\\#012line");
        assert_eq!(escape_name("tab\té".as_bytes()), "tab\té".as_bytes());
    }

    #[test]
    fn out_format_escapes() {
        let info = LineInfo {
            name: b"dir",
            kind: Kind::Dir,
            item: None,
            link: None,
            length: 1234,
            bytes: 0,
            meta: None,
            operation: "recv",
        };
        assert_eq!(
            format_line("%o %n %l %-6f|", &info, 1),
            b"recv dir/ 1234 dir   |"
        );
        assert_eq!(
            format_line("%'l|%''l|%'''8l", &info, 1),
            b"1,234|1.23K|   1.21K"
        );
        let big = LineInfo {
            length: 5_228_553,
            ..info
        };
        assert_eq!(format_line("%''l %'''l", &big, 1), b"5.23M 4.99M");
        let odd = LineInfo {
            name: b"new\nline\xff",
            ..info
        };
        // (A directory: %n ends with a slash.)
        assert_eq!(format_line("%n", &odd, 1), b"new\\#012line\\#377/");
        assert_eq!(
            format_log_line("%n|%f", &odd),
            b"new\\#012line\xff/|new\\#012line\xff"
        );
    }
}
