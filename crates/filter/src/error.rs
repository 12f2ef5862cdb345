//! Errors raised while parsing filter rules or reading rule files.

use std::io;
use std::path::PathBuf;

/// Shows rule bytes as text; bytes that are not UTF-8 appear as U+FFFD.
pub(crate) fn show(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// What went wrong with a filter rule or a rule file.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    /// The rule starts with neither a known short prefix nor a known long name.
    #[error("unknown filter rule: `{rule}` (expected one of - + . : H S P R ! or exclude, include, merge, dir-merge, hide, show, protect, risk, clear)")]
    UnknownRule {
        /// The rule text.
        rule: String,
    },
    /// A modifier that this kind of rule does not accept.
    #[error("invalid modifier '{modifier}' at position {position} in filter rule: `{rule}`")]
    InvalidModifier {
        /// The offending modifier character.
        modifier: char,
        /// Byte offset of the modifier within the rule.
        position: usize,
        /// The rule text.
        rule: String,
    },
    /// A rule that needs a pattern or file name has none.
    #[error("unexpected end of filter rule: `{rule}` (a pattern or file name must follow the rule after a space or '_')")]
    UnexpectedEnd {
        /// The rule text.
        rule: String,
    },
    /// `!` (clear) followed by more text.
    #[error("'!' rule has trailing characters: `{rule}`")]
    ClearWithArgument {
        /// The rule text.
        rule: String,
    },
    /// A rule inside a merge file names a side although the merge rule already does.
    #[error("specified-side merge file contains specified-side filter: `{rule}`")]
    SideConflict {
        /// The rule text.
        rule: String,
    },
    /// A rule file could not be opened or read.
    #[error("failed to read {what} file {path}: {source}")]
    Io {
        /// Which kind of file ("exclude", "include", "filter", "merge").
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A rule read from a file is invalid; `line` counts from 1 (0 when the file is
    /// word-split, where lines are not meaningful).
    #[error("{path} line {line}: {source}")]
    InFile {
        /// The file holding the rule.
        path: PathBuf,
        /// Line number, from 1.
        line: usize,
        /// What is wrong with the rule.
        #[source]
        source: Box<FilterError>,
    },
    /// Merge files that merge each other too deeply (or in a cycle).
    #[error("merge-file include depth limit ({limit}) exceeded at {path}")]
    MergeDepth {
        /// The file that would exceed the limit.
        path: PathBuf,
        /// The limit.
        limit: usize,
    },
    /// A rule that cannot be expressed in the peer's protocol version.
    #[error("filter rule `{rule}` is too modern for protocol {protocol}")]
    TooModern {
        /// The rule as this side would send it.
        rule: String,
        /// The negotiated protocol.
        protocol: u32,
    },
}
