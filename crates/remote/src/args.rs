//! The command line that starts the peer: `[rsh...] rsync --server
//! [--sender] -<flags>e.<caps> [--protocol=N] . <path>`.

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use crate::opts::TransferOpts;

/// Capability letters we offer: everything rsync 3.2+ offers except
/// incremental recursion (`i`), which [`ServerCommand::wire_caps`] adds
/// when the transfer can use it.
pub const CLIENT_CAPS: &str = "LsfxCIvu";

/// Whether a receiver with these packed short flags and options can take
/// an incremental file list. rsync's rule (`set_allow_inc_recurse`): only
/// with `-r`, and a receiver not with `--delete-before`/`--delete-after`,
/// `--delay-updates` or `--prune-empty-dirs`. arsync's receiver further
/// declines it with `-H`, `-A` and `-X` (their state spans the whole list),
/// and its callers with `--remove-source-files`.
pub fn receiver_allows_inc_recurse(
    flags: &str,
    late_delete: bool,
    delay_updates: bool,
    prune_empty_dirs: bool,
) -> bool {
    flags.contains('r')
        // -R lists may name absolute paths, stripped only after the whole list is sorted.
        && !flags.contains('R')
        && !flags.contains('H')
        && !flags.contains('A')
        && !flags.contains('X')
        && !late_delete
        && !delay_updates
        && !prune_empty_dirs
}

/// Options that become the server's argument vector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerCommand {
    /// Program and arguments that run a command on the remote side; empty
    /// to run `rsync_path` locally. For ssh: `["ssh", "host"]`.
    pub remote_shell: Vec<String>,
    /// Path of rsync on the remote side.
    pub rsync_path: String,
    /// True when the server sends (we pull).
    pub server_sends: bool,
    /// Packed short flags, e.g. `logDtpr`.
    pub flags: String,
    /// Capability letters after `e.`.
    pub caps: String,
    /// Force a protocol version on the server (`--protocol=N`).
    pub protocol: Option<i32>,
    /// The remote path.
    pub path: OsString,
    /// Further remote paths (a pull of several sources).
    pub more_paths: Vec<OsString>,
    /// Delete extraneous files on the receiving side (`--delete`).
    pub delete: bool,
    /// Send uids/gids as numbers only (`--numeric-ids`: no name lists).
    pub numeric_ids: bool,
    /// `--delay-updates`: received files are renamed into place at the end.
    pub delay_updates: bool,
    /// `--delete-after` / `--delete-delay`: delete after the transfer.
    pub delete_after: bool,
    /// `--partial`: keep partially received files.
    pub partial: bool,
    /// Offer incremental recursion when the options allow it (false:
    /// `--no-inc-recursive`).
    pub inc_recurse: bool,
    /// Further options (quick-check variants, selection, receiver
    /// options), sent as rsync's client sends them.
    pub opts: TransferOpts,
}

impl ServerCommand {
    /// A command for `-logDtpr` (archive without hard links) on `path`.
    pub fn archive(server_sends: bool, path: impl Into<OsString>) -> Self {
        ServerCommand {
            remote_shell: Vec::new(),
            rsync_path: "rsync".into(),
            server_sends,
            flags: "logDtpr".into(),
            caps: CLIENT_CAPS.into(),
            protocol: None,
            path: path.into(),
            more_paths: Vec::new(),
            delete: false,
            numeric_ids: false,
            delay_updates: false,
            delete_after: false,
            partial: false,
            inc_recurse: true,
            opts: TransferOpts::default(),
        }
    }

    /// The capability letters sent to the server: [`ServerCommand::caps`],
    /// with `i` first when we pull and the options allow an incremental
    /// file list (see [`receiver_allows_inc_recurse`]; a push adds it in
    /// `push::with_inc_offer`).
    pub fn wire_caps(&self) -> String {
        let inc = self.server_sends
            && self.inc_recurse
            && !self.opts.remove_source_files
            && !self.caps.contains('i')
            && self.caps.contains('v')
            && receiver_allows_inc_recurse(
                &self.flags,
                self.delete && self.delete_after,
                self.delay_updates,
                self.opts.prune_empty_dirs,
            );
        match inc {
            true => format!("i{}", self.caps),
            false => self.caps.clone(),
        }
    }

    /// The server's options (from `--server` up to, not including, `.`).
    pub fn server_args(&self) -> Vec<OsString> {
        let mut v: Vec<OsString> = vec!["--server".into()];
        if self.server_sends {
            v.push("--sender".into());
        }
        v.push(
            format!(
                "-{}{}e.{}",
                self.flags,
                self.opts.packed_flags(self.server_sends),
                self.wire_caps()
            )
            .into(),
        );
        if let Some(p) = self.protocol {
            v.push(format!("--protocol={p}").into());
        }
        if self.numeric_ids {
            v.push("--numeric-ids".into());
        }
        // A pulling client deletes locally; only a receiving server needs it.
        if self.delete && !self.server_sends {
            v.push(
                if self.delete_after {
                    "--delete-after"
                } else {
                    "--delete"
                }
                .into(),
            );
        }
        if self.delay_updates && !self.server_sends {
            v.push("--delay-updates".into());
        }
        // As rsync's client: --partial-dir stands for --partial, and
        // --inplace clears it.
        let partial = self.partial && self.opts.partial_dir.is_none() && !self.opts.inplace;
        if partial && !self.server_sends {
            v.push("--partial".into());
        }
        v.extend(self.opts.server_args(self.server_sends));
        v
    }

    /// The full argument vector (program first). Behind a remote shell the
    /// remote command's words are shell-quoted, because ssh joins them with
    /// spaces and hands the line to the remote user's shell.
    pub fn argv(&self) -> Vec<OsString> {
        let mut words: Vec<OsString> = vec![self.rsync_path.clone().into()];
        words.extend(self.server_args());
        words.push(".".into());
        words.push(self.path.clone());
        words.extend(self.more_paths.iter().cloned());
        if self.remote_shell.is_empty() {
            return words;
        }
        let mut v: Vec<OsString> = self.remote_shell.iter().map(OsString::from).collect();
        v.extend(words.iter().map(|w| shell_quote_bytes(w.as_bytes())));
        v
    }
}

/// Quotes a word for a POSIX shell (unchanged if it needs no quoting).
pub fn shell_quote(w: &str) -> String {
    let q = shell_quote_bytes(w.as_bytes()).into_vec();
    String::from_utf8(q).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// [`shell_quote`] for a word of any bytes (a path need not be UTF-8).
pub fn shell_quote_bytes(w: &[u8]) -> OsString {
    let safe = |c: &u8| c.is_ascii_alphanumeric() || b"_./=:,+-@%".contains(c);
    if !w.is_empty() && w.iter().all(safe) {
        return OsString::from_vec(w.to_vec());
    }
    let mut v = vec![b'\''];
    for &c in w {
        match c {
            b'\'' => v.extend_from_slice(b"'\\''"),
            c => v.push(c),
        }
    }
    v.push(b'\'');
    OsString::from_vec(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incremental_recursion_offered_as_rsync_allows_it() {
        let mut c = ServerCommand::archive(true, "/src/");
        assert_eq!(c.wire_caps(), "iLsfxCIvu");
        c.server_sends = false;
        assert_eq!(c.wire_caps(), "LsfxCIvu", "our sender sends whole lists");
        c.server_sends = true;
        for (flags, late, delay, prune) in [
            ("logDtpR", false, false, false),
            ("logDtprH", false, false, false),
            ("logDtprX", false, false, false),
            ("logDtpr", true, false, false),
            ("logDtpr", false, true, false),
            ("logDtpr", false, false, true),
        ] {
            c.flags = flags.into();
            c.delete = late;
            c.delete_after = late;
            c.delay_updates = delay;
            c.opts.prune_empty_dirs = prune;
            assert_eq!(c.wire_caps(), "LsfxCIvu", "{flags} {late} {delay} {prune}");
        }
    }

    #[test]
    fn pull_and_push_argv() {
        let mut c = ServerCommand::archive(true, "/src/");
        assert_eq!(
            c.argv(),
            [
                "rsync",
                "--server",
                "--sender",
                "-logDtpre.iLsfxCIvu",
                ".",
                "/src/"
            ]
        );
        c.server_sends = false;
        c.protocol = Some(30);
        c.remote_shell = vec!["ssh".into(), "host".into()];
        assert_eq!(
            c.argv(),
            [
                "ssh",
                "host",
                "rsync",
                "--server",
                "-logDtpre.LsfxCIvu",
                "--protocol=30",
                ".",
                "/src/"
            ]
        );
        c.path = "/my dir/it's/".into();
        assert_eq!(c.argv().last().unwrap(), "'/my dir/it'\\''s/'");
        assert_eq!(shell_quote(""), "''");
        // A path that is not UTF-8 is quoted and passed as bytes.
        c.path = OsString::from_vec(b"/d\xe9 x/".to_vec());
        assert_eq!(c.argv().last().unwrap().as_bytes(), b"'/d\xe9 x/'");
        c.path = OsString::from_vec(b"/d\xe9".to_vec());
        assert_eq!(c.argv().last().unwrap().as_bytes(), b"'/d\xe9'");
    }
}
