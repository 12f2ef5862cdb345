//! Tokenizing filter rules: the rule prefix (short or long), its modifiers and the pattern.
//!
//! The grammar is rsync's: `RULE[,MODIFIERS] PATTERN`, where the pattern follows a single
//! space or `_`. Merge files may switch parsing modes through their own modifiers (word
//! splitting, no prefixes, CVS style), which arrive here as the `template` flags.

use crate::error::{show, FilterError};

/// Rule flag bits. They mirror the meanings rsync gives its rules, so a rule can be
/// rendered back to the text rsync would send.
pub(crate) mod flag {
    /// Pattern holds `*`, `?` or `[`.
    pub const WILD: u32 = 1 << 0;
    /// Pattern holds `**`.
    pub const WILD2: u32 = 1 << 1;
    /// Pattern starts with `**`.
    pub const WILD2_PREFIX: u32 = 1 << 2;
    /// Pattern ends with `***`.
    pub const WILD3_SUFFIX: u32 = 1 << 3;
    /// Match against the absolute path (`/` modifier, or an anchored per-directory rule).
    pub const ABS_PATH: u32 = 1 << 4;
    /// An include (else an exclude).
    pub const INCLUDE: u32 = 1 << 5;
    /// Matches directories only (pattern had a trailing `/`).
    pub const DIRECTORY: u32 = 1 << 6;
    /// Merge file is split on whitespace (`w`).
    pub const WORD_SPLIT: u32 = 1 << 7;
    /// Per-directory rules are not inherited by subdirectories (`n`).
    pub const NO_INHERIT: u32 = 1 << 8;
    /// Merge file lines carry no rule prefixes (`+` / `-` modifiers).
    pub const NO_PREFIXES: u32 = 1 << 9;
    /// `.` or `:` rule.
    pub const MERGE_FILE: u32 = 1 << 10;
    /// `:` rule.
    pub const PERDIR_MERGE: u32 = 1 << 11;
    /// Also exclude the merge file itself (`e`).
    pub const EXCLUDE_SELF: u32 = 1 << 12;
    /// Matches when the pattern does not (`!`).
    pub const NEGATE: u32 = 1 << 14;
    /// `-C` or `:C`.
    pub const CVS_IGNORE: u32 = 1 << 15;
    /// Applies to the sending side (`s`, `H`, `S`).
    pub const SENDER: u32 = 1 << 16;
    /// Applies to the receiving side (`r`, `P`, `R`).
    pub const RECEIVER: u32 = 1 << 17;
    /// The `!` list-clearing rule.
    pub const CLEAR_LIST: u32 = 1 << 18;
    /// Ignored in directories that are being deleted (`p`).
    pub const PERISHABLE: u32 = 1 << 19;
    /// Matches extended-attribute names, not files (`x`).
    pub const XATTR: u32 = 1 << 20;

    /// Both side bits.
    pub const SIDES: u32 = SENDER | RECEIVER;
    /// Flags a rule read from a merge file takes over from the merge rule.
    pub const FROM_CONTAINER: u32 = ABS_PATH | INCLUDE | DIRECTORY | NEGATE | PERISHABLE;
}

/// rsync's `isspace` in the C locale.
pub(crate) fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

/// One parsed rule token: its flags and the pattern (or merge-file name) bytes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Token<'a> {
    pub flags: u32,
    pub pattern: &'a [u8],
}

/// How prefixes are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Syntax {
    /// Full filter-rule syntax (`--filter`, merge files).
    Filter,
    /// `--exclude` / `--include` style: only optional `- ` / `+ ` prefixes and a lone `!`.
    OldPrefixes,
}

/// If `s` starts with the long rule `name` followed by a space, `_`, `,` or the end,
/// returns the index at which modifier scanning starts (see [`next_token`]).
fn long_name(s: &[u8], name: &[u8]) -> Option<usize> {
    if !s.starts_with(name) {
        return None;
    }
    match s.get(name.len()) {
        None => Some(name.len() - 1),
        Some(&c) if is_space(c) || c == b'_' => Some(name.len() - 1),
        Some(b',') => Some(name.len()),
        Some(_) => None,
    }
}

/// Parses the next rule from `input`, returning it and the unparsed rest, or `None`
/// when the input holds no more rules.
pub(crate) fn next_token(
    input: &[u8],
    template: u32,
    syntax: Syntax,
) -> Result<Option<(Token<'_>, &[u8])>, FilterError> {
    let mut rule_start = input;
    if template & flag::WORD_SPLIT != 0 {
        let skip = input.iter().take_while(|&&b| is_space(b)).count();
        rule_start = &input[skip..];
    }
    if rule_start.is_empty() {
        return Ok(None);
    }
    let s = rule_start;
    let at = |i: usize| s.get(i).copied().unwrap_or(0);
    let mut flags = template & flag::FROM_CONTAINER;
    // Index of the pattern start within `s`.
    let mut pos: usize = 0;

    if template & flag::NO_PREFIXES != 0 {
        if s[0] == b'!' && template & flag::CVS_IGNORE != 0 {
            flags |= flag::CLEAR_LIST;
        }
    } else if syntax == Syntax::OldPrefixes {
        if s[0] == b'-' && at(1) == b' ' {
            flags &= !flag::INCLUDE;
            pos = 2;
        } else if s[0] == b'+' && at(1) == b' ' {
            flags |= flag::INCLUDE;
            pos = 2;
        } else if s[0] == b'!' {
            flags |= flag::CLEAR_LIST;
        }
    } else {
        const LONG: [(&[u8], u8); 9] = [
            (b"clear", b'!'),
            (b"dir-merge", b':'),
            (b"exclude", b'-'),
            (b"hide", b'H'),
            (b"include", b'+'),
            (b"merge", b'.'),
            (b"protect", b'P'),
            (b"risk", b'R'),
            (b"show", b'S'),
        ];
        let unknown = || FilterError::UnknownRule { rule: show(s) };
        let (ch, mut i) = if matches!(
            s[0],
            b'c' | b'd' | b'e' | b'h' | b'i' | b'm' | b'p' | b'r' | b's'
        ) {
            let found = LONG
                .iter()
                .filter(|(name, _)| name[0] == s[0])
                .find_map(|(name, ch)| long_name(s, name).map(|i| (*ch, i)));
            found.ok_or_else(unknown)?
        } else if at(1) == b',' {
            (s[0], 1)
        } else {
            (s[0], 0)
        };
        let mut side_from_prefix = false;
        match ch {
            b':' => flags |= flag::PERDIR_MERGE | flag::MERGE_FILE,
            b'.' => flags |= flag::MERGE_FILE,
            b'+' => flags |= flag::INCLUDE,
            b'-' => {}
            b'S' => {
                flags |= flag::INCLUDE | flag::SENDER;
                side_from_prefix = true;
            }
            b'H' => {
                flags |= flag::SENDER;
                side_from_prefix = true;
            }
            b'R' => {
                flags |= flag::INCLUDE | flag::RECEIVER;
                side_from_prefix = true;
            }
            b'P' => {
                flags |= flag::RECEIVER;
                side_from_prefix = true;
            }
            b'!' => flags |= flag::CLEAR_LIST,
            _ => return Err(unknown()),
        }
        if ch != b'!' {
            loop {
                i += 1;
                let c = at(i);
                if i >= s.len() || c == b' ' || c == b'_' {
                    break;
                }
                if template & flag::WORD_SPLIT != 0 && is_space(c) {
                    i -= 1;
                    break;
                }
                let invalid = || FilterError::InvalidModifier {
                    modifier: char::from(c),
                    position: i,
                    rule: show(s),
                };
                let merge = flags & flag::MERGE_FILE != 0;
                match c {
                    b'-' | b'+' => {
                        if !merge || flags & flag::NO_PREFIXES != 0 {
                            return Err(invalid());
                        }
                        flags |= flag::NO_PREFIXES;
                        if c == b'+' {
                            flags |= flag::INCLUDE;
                        }
                    }
                    b'/' => flags |= flag::ABS_PATH,
                    b'!' => {
                        if merge {
                            return Err(invalid());
                        }
                        flags |= flag::NEGATE;
                    }
                    b'C' => {
                        if flags & flag::NO_PREFIXES != 0 || side_from_prefix {
                            return Err(invalid());
                        }
                        flags |= flag::NO_PREFIXES
                            | flag::WORD_SPLIT
                            | flag::NO_INHERIT
                            | flag::CVS_IGNORE;
                    }
                    b'e' | b'n' | b'w' => {
                        if !merge {
                            return Err(invalid());
                        }
                        flags |= match c {
                            b'e' => flag::EXCLUDE_SELF,
                            b'n' => flag::NO_INHERIT,
                            _ => flag::WORD_SPLIT,
                        };
                    }
                    b'p' => flags |= flag::PERISHABLE,
                    b'r' | b's' => {
                        if side_from_prefix {
                            return Err(invalid());
                        }
                        flags |= if c == b'r' {
                            flag::RECEIVER
                        } else {
                            flag::SENDER
                        };
                    }
                    b'x' => flags |= flag::XATTR,
                    _ => return Err(invalid()),
                }
            }
        }
        // Step over the separator (or, for `!`, the rule character itself).
        pos = if i < s.len() { i + 1 } else { i };
    }

    if template & flag::SIDES != 0 {
        if flags & flag::SIDES != 0 {
            return Err(FilterError::SideConflict { rule: show(s) });
        }
        flags |= template & flag::SIDES;
    }

    let rest = &s[pos.min(s.len())..];
    let len = if template & flag::WORD_SPLIT != 0 {
        rest.iter().take_while(|&&b| !is_space(b)).count()
    } else {
        rest.len()
    };

    if flags & flag::CLEAR_LIST != 0 {
        if template & flag::NO_PREFIXES == 0 && syntax != Syntax::OldPrefixes && len > 0 {
            return Err(FilterError::ClearWithArgument { rule: show(s) });
        }
        if len > 1 {
            flags &= !flag::CLEAR_LIST;
        }
    } else if len == 0 && flags & flag::CVS_IGNORE == 0 {
        return Err(FilterError::UnexpectedEnd { rule: show(s) });
    }

    Ok(Some((
        Token {
            flags,
            pattern: &rest[..len],
        },
        &rest[len..],
    )))
}

/// The peer a rule list is being rendered for.
#[derive(Clone, Copy, Debug)]
pub(crate) struct WireCtx {
    pub protocol: u32,
    /// This side sends the files.
    pub am_sender: bool,
    pub delete_excluded: bool,
}

/// Renders the prefix rsync puts before a rule's pattern (`"-/ "`, `":n- "`, ...).
///
/// With `wire`, the prefix is restricted to what the peer's protocol understands; `None`
/// means the rule cannot be expressed for it.
pub(crate) fn rule_prefix(flags: u32, pattern: &[u8], wire: Option<&WireCtx>) -> Option<Vec<u8>> {
    let for_wire = wire.is_some();
    let protocol = wire.map_or(u32::MAX, |w| w.protocol);
    let am_sender = wire.is_some_and(|w| w.am_sender);
    let sender_with_delete_excluded = wire.is_some_and(|w| w.am_sender && w.delete_excluded);
    let mut out = Vec::with_capacity(8);
    let mut legal_len: usize = if for_wire && protocol < 29 { 1 } else { 15 };
    if flags & flag::PERDIR_MERGE != 0 {
        if legal_len == 1 {
            return None;
        }
        out.push(b':');
    } else if flags & flag::INCLUDE != 0 {
        out.push(b'+');
    } else if legal_len != 1
        || ((pattern.first() == Some(&b'-') || pattern.first() == Some(&b'+'))
            && pattern.get(1) == Some(&b' '))
    {
        out.push(b'-');
    } else {
        legal_len = 0;
    }
    if flags & flag::ABS_PATH != 0 {
        out.push(b'/');
    }
    if flags & flag::NEGATE != 0 {
        out.push(b'!');
    }
    if flags & flag::CVS_IGNORE != 0 {
        out.push(b'C');
    } else {
        if flags & flag::NO_INHERIT != 0 {
            out.push(b'n');
        }
        if flags & flag::WORD_SPLIT != 0 {
            out.push(b'w');
        }
        if flags & flag::NO_PREFIXES != 0 {
            out.push(if flags & flag::INCLUDE != 0 {
                b'+'
            } else {
                b'-'
            });
        }
    }
    if flags & flag::EXCLUDE_SELF != 0 {
        out.push(b'e');
    }
    if flags & flag::XATTR != 0 {
        out.push(b'x');
    }
    if flags & flag::SENDER != 0 && (!for_wire || protocol >= 29) {
        out.push(b's');
    }
    if flags & flag::RECEIVER != 0 && (!for_wire || protocol >= 29 || sender_with_delete_excluded) {
        out.push(b'r');
    }
    if flags & flag::PERISHABLE != 0 {
        if !for_wire || protocol >= 30 {
            out.push(b'p');
        } else if am_sender {
            return None;
        }
    }
    if out.len() > legal_len {
        return None;
    }
    if legal_len > 0 {
        out.push(b' ');
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tok(s: &str) -> (u32, String) {
        let (t, rest) = next_token(s.as_bytes(), 0, Syntax::Filter)
            .expect("parses")
            .expect("a rule");
        assert!(rest.is_empty());
        (
            t.flags,
            String::from_utf8(t.pattern.to_vec()).expect("utf8"),
        )
    }

    #[test]
    fn short_and_long_prefixes() {
        assert_eq!(tok("- foo"), (0, "foo".into()));
        assert_eq!(tok("exclude foo"), (0, "foo".into()));
        assert_eq!(tok("-_foo"), (0, "foo".into()));
        assert_eq!(tok("+ foo"), (flag::INCLUDE, "foo".into()));
        assert_eq!(tok("include foo"), (flag::INCLUDE, "foo".into()));
        assert_eq!(tok("H foo"), (flag::SENDER, "foo".into()));
        assert_eq!(tok("hide foo"), (flag::SENDER, "foo".into()));
        assert_eq!(tok("S foo"), (flag::SENDER | flag::INCLUDE, "foo".into()));
        assert_eq!(
            tok("show foo"),
            (flag::SENDER | flag::INCLUDE, "foo".into())
        );
        assert_eq!(tok("P foo"), (flag::RECEIVER, "foo".into()));
        assert_eq!(tok("protect foo"), (flag::RECEIVER, "foo".into()));
        assert_eq!(tok("R foo"), (flag::RECEIVER | flag::INCLUDE, "foo".into()));
        assert_eq!(
            tok("risk foo"),
            (flag::RECEIVER | flag::INCLUDE, "foo".into())
        );
        assert_eq!(tok(". f"), (flag::MERGE_FILE, "f".into()));
        assert_eq!(tok("merge f"), (flag::MERGE_FILE, "f".into()));
        assert_eq!(
            tok(": f"),
            (flag::MERGE_FILE | flag::PERDIR_MERGE, "f".into())
        );
        assert_eq!(
            tok("dir-merge f"),
            (flag::MERGE_FILE | flag::PERDIR_MERGE, "f".into())
        );
        assert_eq!(tok("!"), (flag::CLEAR_LIST, "".into()));
        assert_eq!(tok("clear"), (flag::CLEAR_LIST, "".into()));
    }

    #[test]
    fn extra_spaces_belong_to_the_pattern() {
        assert_eq!(tok("-  foo "), (0, " foo ".into()));
        assert_eq!(tok("- a b"), (0, "a b".into()));
    }

    #[test]
    fn modifiers() {
        assert_eq!(tok("-/ x"), (flag::ABS_PATH, "x".into()));
        assert_eq!(tok("-! */"), (flag::NEGATE, "*/".into()));
        assert_eq!(tok("-,p x"), (flag::PERISHABLE, "x".into()));
        assert_eq!(tok("exclude,s x"), (flag::SENDER, "x".into()));
        assert_eq!(tok("+rs x"), (flag::INCLUDE | flag::SIDES, "x".into()));
        assert_eq!(tok("-x user.*"), (flag::XATTR, "user.*".into()));
        let (f, p) = tok("-C");
        assert_eq!(p, "");
        assert_ne!(f & flag::CVS_IGNORE, 0);
        let (f, p) = tok(":n- .excl");
        assert_eq!(p, ".excl");
        assert_eq!(
            f,
            flag::MERGE_FILE | flag::PERDIR_MERGE | flag::NO_INHERIT | flag::NO_PREFIXES
        );
        let (f, _) = tok("dir-merge,+we .inc");
        assert_eq!(
            f & (flag::INCLUDE | flag::WORD_SPLIT | flag::EXCLUDE_SELF | flag::NO_PREFIXES),
            flag::INCLUDE | flag::WORD_SPLIT | flag::EXCLUDE_SELF | flag::NO_PREFIXES
        );
    }

    #[test]
    fn errors() {
        let err = |s: &str| next_token(s.as_bytes(), 0, Syntax::Filter).unwrap_err();
        assert!(matches!(err("x foo"), FilterError::UnknownRule { .. }));
        assert!(matches!(
            err("excludes foo"),
            FilterError::UnknownRule { .. }
        ));
        assert!(matches!(err("-"), FilterError::UnexpectedEnd { .. }));
        assert!(matches!(err("- "), FilterError::UnexpectedEnd { .. }));
        assert!(matches!(err("! x"), FilterError::ClearWithArgument { .. }));
        assert!(matches!(
            err("-e foo"),
            FilterError::InvalidModifier {
                modifier: 'e',
                position: 1,
                ..
            }
        ));
        assert!(matches!(err("Hs foo"), FilterError::InvalidModifier { .. }));
        assert!(matches!(err(".! f"), FilterError::InvalidModifier { .. }));
        assert!(matches!(err("-n foo"), FilterError::InvalidModifier { .. }));
        assert!(matches!(err("PC"), FilterError::InvalidModifier { .. }));
        assert!(matches!(err(":-+ f"), FilterError::InvalidModifier { .. }));
    }

    #[test]
    fn old_prefix_syntax() {
        let t = |s: &str, template: u32| {
            let (t, _) = next_token(s.as_bytes(), template, Syntax::OldPrefixes)
                .expect("ok")
                .expect("rule");
            (
                t.flags,
                String::from_utf8(t.pattern.to_vec()).expect("utf8"),
            )
        };
        assert_eq!(t("foo", 0), (0, "foo".into()));
        assert_eq!(t("- foo", flag::INCLUDE), (0, "foo".into()));
        assert_eq!(t("+ foo", 0), (flag::INCLUDE, "foo".into()));
        assert_eq!(t("!", 0), (flag::CLEAR_LIST, "!".into()));
        assert_eq!(t("!x", 0), (0, "!x".into()));
        assert_eq!(t("H foo", 0), (0, "H foo".into()));
    }

    #[test]
    fn word_split_tokens() {
        let template = flag::WORD_SPLIT | flag::NO_PREFIXES | flag::CVS_IGNORE;
        let mut input: &[u8] = b"  *.o  core\t!  ";
        let mut got = Vec::new();
        while let Some((t, rest)) = next_token(input, template, Syntax::Filter).expect("ok") {
            got.push((t.flags & flag::CLEAR_LIST != 0, t.pattern.to_vec()));
            input = rest;
        }
        assert_eq!(
            got,
            vec![
                (false, b"*.o".to_vec()),
                (false, b"core".to_vec()),
                (true, b"!".to_vec())
            ]
        );
    }

    #[test]
    fn prefixes_render_back() {
        let p = |flags: u32| {
            String::from_utf8(rule_prefix(flags, b"x", None).expect("prefix")).expect("utf8")
        };
        assert_eq!(p(0), "- ");
        assert_eq!(p(flag::INCLUDE | flag::ABS_PATH), "+/ ");
        assert_eq!(p(flag::NEGATE | flag::SENDER), "-!s ");
        assert_eq!(
            p(flag::PERDIR_MERGE | flag::MERGE_FILE | flag::NO_INHERIT | flag::NO_PREFIXES),
            ":n- "
        );
        assert_eq!(p(flag::PERISHABLE | flag::RECEIVER), "-rp ");
        // Old protocols: perishable and per-dir rules cannot be sent.
        assert!(rule_prefix(
            flag::PERISHABLE,
            b"x",
            Some(&WireCtx {
                protocol: 29,
                am_sender: true,
                delete_excluded: false
            })
        )
        .is_none());
        assert_eq!(
            rule_prefix(
                flag::PERISHABLE,
                b"x",
                Some(&WireCtx {
                    protocol: 29,
                    am_sender: false,
                    delete_excluded: false
                })
            ),
            Some(b"- ".to_vec())
        );
        assert!(rule_prefix(
            flag::PERDIR_MERGE,
            b"x",
            Some(&WireCtx {
                protocol: 28,
                am_sender: false,
                delete_excluded: false
            })
        )
        .is_none());
        assert_eq!(
            rule_prefix(
                0,
                b"x",
                Some(&WireCtx {
                    protocol: 28,
                    am_sender: false,
                    delete_excluded: false
                })
            ),
            Some(Vec::new())
        );
        assert_eq!(
            rule_prefix(
                0,
                b"- x",
                Some(&WireCtx {
                    protocol: 28,
                    am_sender: false,
                    delete_excluded: false
                })
            ),
            Some(b"- ".to_vec())
        );
    }
}
