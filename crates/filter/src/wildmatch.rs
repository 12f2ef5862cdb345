//! Byte-oriented wildcard matching with rsync's semantics.
//!
//! Patterns and names are raw bytes (file names need not be UTF-8).
//!
//! - `?` matches one byte other than `/`.
//! - `*` matches any run of bytes without `/`; `**` (or more stars) matches any run, `/` included.
//! - `[...]` is a character class: ranges `a-z`, negation with `!` or `^`, POSIX classes
//!   such as `[:alpha:]` (ASCII only), and `\` escapes inside it. A class never matches `/`.
//! - `\` makes the next pattern byte literal.
//!
//! The matcher backtracks, but bounds the work the same way rsync's does: when a single `*`
//! reaches a `/` it gives up to the nearest enclosing `**`, and when the text runs out while
//! the pattern still needs bytes the whole match is abandoned. This keeps patterns such as
//! `*a*a*a*a*b` from taking exponential time.

/// Outcome of matching a pattern suffix against a text suffix.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Outcome {
    Match,
    NoMatch,
    /// No later start position of the text can match either.
    AbortAll,
    /// A single `*` hit a `/`: only an enclosing `**` may retry further along.
    AbortToStarStar,
}

/// True when `pattern` matches the whole of `text`.
pub fn wildmatch(pattern: &[u8], text: &[u8]) -> bool {
    dowild(pattern, text) == Outcome::Match
}

/// Where a pattern may start matching within a path.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Anchor {
    /// The pattern must match the whole text.
    Whole,
    /// The pattern must match the last `n` slash-separated elements of the text.
    TrailingElements(usize),
    /// The pattern may match the whole text or any suffix that starts right after a `/`.
    AfterAnySlash,
}

/// Returns the suffix of `text` made of its last `count` slash-separated elements, or `None`
/// when the text has fewer elements.
pub fn trailing_elements(text: &[u8], count: usize) -> Option<&[u8]> {
    if count == 0 {
        return None;
    }
    let mut remaining = count;
    for (i, &b) in text.iter().enumerate().rev() {
        if b == b'/' {
            remaining -= 1;
            if remaining == 0 {
                return Some(&text[i + 1..]);
            }
        }
    }
    if remaining == 1 {
        Some(text)
    } else {
        None
    }
}

/// Wildcard match of `pattern` against `text` with the given anchoring.
pub fn wildmatch_anchored(pattern: &[u8], text: &[u8], anchor: Anchor) -> bool {
    match anchor {
        Anchor::Whole => dowild(pattern, text) == Outcome::Match,
        Anchor::TrailingElements(n) => match trailing_elements(text, n) {
            Some(t) => dowild(pattern, t) == Outcome::Match,
            None => false,
        },
        Anchor::AfterAnySlash => {
            let first = dowild(pattern, text);
            if first == Outcome::Match {
                return true;
            }
            if first == Outcome::AbortAll {
                return false;
            }
            for (i, &b) in text.iter().enumerate() {
                if b != b'/' {
                    continue;
                }
                match dowild(pattern, &text[i + 1..]) {
                    Outcome::Match => return true,
                    Outcome::AbortAll => return false,
                    Outcome::NoMatch | Outcome::AbortToStarStar => {}
                }
            }
            false
        }
    }
}

/// Literal (wildcard-free) comparison with the same anchoring as [`wildmatch_anchored`]
/// (only `Whole` and `TrailingElements` are meaningful for literals).
pub fn litmatch_anchored(literal: &[u8], text: &[u8], anchor: Anchor) -> bool {
    match anchor {
        Anchor::TrailingElements(n) => trailing_elements(text, n) == Some(literal),
        Anchor::Whole | Anchor::AfterAnySlash => text == literal,
    }
}

fn dowild(pattern: &[u8], text: &[u8]) -> Outcome {
    let mut p = 0usize;
    let mut t = 0usize;
    while p < pattern.len() {
        let p_ch = pattern[p];
        let t_ch = text.get(t).copied();
        if t_ch.is_none() && p_ch != b'*' {
            return Outcome::AbortAll;
        }
        match p_ch {
            b'\\' => {
                // A trailing backslash must match a literal NUL, which no name holds.
                p += 1;
                match pattern.get(p) {
                    Some(&c) if Some(c) == t_ch => {}
                    _ => return Outcome::NoMatch,
                }
            }
            b'?' => {
                if t_ch == Some(b'/') {
                    return Outcome::NoMatch;
                }
            }
            b'*' => {
                p += 1;
                let double = pattern.get(p) == Some(&b'*');
                while pattern.get(p) == Some(&b'*') {
                    p += 1;
                }
                let rest = &pattern[p..];
                let tail = &text[t..];
                if rest.is_empty() {
                    // Trailing `**` matches everything, trailing `*` only a slash-free rest.
                    if !double && tail.contains(&b'/') {
                        return Outcome::NoMatch;
                    }
                    return Outcome::Match;
                }
                // When the rest starts with a plain byte, only positions holding that byte can
                // match; the others would fail on their first byte (a plain `NoMatch`).
                let first = match rest[0] {
                    b'*' | b'?' | b'[' | b'\\' => None,
                    c => Some(c),
                };
                let mut i = 0usize;
                loop {
                    if i == tail.len() {
                        return Outcome::AbortAll;
                    }
                    if let Some(c) = first {
                        if tail[i] != c {
                            if !double && tail[i] == b'/' {
                                return Outcome::AbortToStarStar;
                            }
                            i += 1;
                            continue;
                        }
                    }
                    let m = dowild(rest, &tail[i..]);
                    if m != Outcome::NoMatch {
                        if !double || m != Outcome::AbortToStarStar {
                            return m;
                        }
                    } else if !double && tail[i] == b'/' {
                        return Outcome::AbortToStarStar;
                    }
                    i += 1;
                }
            }
            b'[' => {
                let Some(t_ch) = t_ch else {
                    return Outcome::AbortAll;
                };
                match match_class(pattern, p + 1, t_ch) {
                    ClassResult::Malformed => return Outcome::AbortAll,
                    ClassResult::Done { matched, end } => {
                        if !matched || t_ch == b'/' {
                            return Outcome::NoMatch;
                        }
                        p = end;
                    }
                }
            }
            c => {
                if Some(c) != t_ch {
                    return Outcome::NoMatch;
                }
            }
        }
        p += 1;
        t += 1;
    }
    if t == text.len() {
        Outcome::Match
    } else {
        Outcome::NoMatch
    }
}

enum ClassResult {
    /// `end` is the index of the closing `]`.
    Done {
        matched: bool,
        end: usize,
    },
    Malformed,
}

/// Matches `t_ch` against the class whose body starts at `start` (just after `[`).
fn match_class(pattern: &[u8], start: usize, t_ch: u8) -> ClassResult {
    let at = |i: usize| pattern.get(i).copied().unwrap_or(0);
    let mut p = start;
    let mut p_ch = at(p);
    let negated = p_ch == b'!' || p_ch == b'^';
    if negated {
        p += 1;
        p_ch = at(p);
    }
    let mut prev_ch: u8 = 0;
    let mut matched = false;
    loop {
        if p_ch == 0 {
            return ClassResult::Malformed;
        }
        if p_ch == b'\\' {
            p += 1;
            p_ch = at(p);
            if p_ch == 0 {
                return ClassResult::Malformed;
            }
            if t_ch == p_ch {
                matched = true;
            }
        } else if p_ch == b'-' && prev_ch != 0 && at(p + 1) != 0 && at(p + 1) != b']' {
            p += 1;
            p_ch = at(p);
            if p_ch == b'\\' {
                p += 1;
                p_ch = at(p);
                if p_ch == 0 {
                    return ClassResult::Malformed;
                }
            }
            if t_ch <= p_ch && t_ch >= prev_ch {
                matched = true;
            }
            p_ch = 0;
        } else if p_ch == b'[' && at(p + 1) == b':' {
            let name_start = p + 2;
            let mut q = name_start;
            while at(q) != 0 && at(q) != b']' {
                q += 1;
            }
            if at(q) == 0 {
                return ClassResult::Malformed;
            }
            // `q` is at the first `]`; a POSIX class needs `:]` there.
            if q == name_start || at(q - 1) != b':' {
                // Not a `[:name:]` class: the `[` is an ordinary member.
                if t_ch == b'[' {
                    matched = true;
                }
                p_ch = b'[';
                prev_ch = p_ch;
                p += 1;
                p_ch = at(p);
                if p_ch == b']' {
                    break;
                }
                continue;
            }
            let name = &pattern[name_start..q - 1];
            match posix_class(name, t_ch) {
                Some(true) => matched = true,
                Some(false) => {}
                None => return ClassResult::Malformed,
            }
            p = q;
            p_ch = 0;
        } else if t_ch == p_ch {
            matched = true;
        }
        prev_ch = p_ch;
        p += 1;
        p_ch = at(p);
        if p_ch == b']' {
            break;
        }
    }
    ClassResult::Done {
        matched: matched != negated,
        end: p,
    }
}

fn posix_class(name: &[u8], c: u8) -> Option<bool> {
    let r = match name {
        b"alnum" => c.is_ascii_alphanumeric(),
        b"alpha" => c.is_ascii_alphabetic(),
        b"blank" => c == b' ' || c == b'\t',
        b"cntrl" => c.is_ascii_control(),
        b"digit" => c.is_ascii_digit(),
        b"graph" => c.is_ascii_graphic(),
        b"lower" => c.is_ascii_lowercase(),
        b"print" => c.is_ascii_graphic() || c == b' ',
        b"punct" => c.is_ascii_punctuation(),
        b"space" => matches!(c, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c),
        b"upper" => c.is_ascii_uppercase(),
        b"xdigit" => c.is_ascii_hexdigit(),
        _ => return None,
    };
    Some(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, t: &str) -> bool {
        wildmatch(p.as_bytes(), t.as_bytes())
    }

    #[test]
    fn literals_and_question_mark() {
        assert!(m("foo", "foo"));
        assert!(!m("foo", "fo"));
        assert!(!m("foo", "fooo"));
        assert!(m("f?o", "fxo"));
        assert!(!m("f?o", "f/o"));
        assert!(!m("???", "ab"));
    }

    #[test]
    fn single_star_stops_at_slash() {
        assert!(m("*.c", "main.c"));
        assert!(!m("*.c", "src/main.c"));
        assert!(m("*", ""));
        assert!(!m("*", "a/b"));
        assert!(m("a*b", "ab"));
        assert!(m("a*/b", "axx/b"));
        assert!(!m("a*b", "a/b"));
    }

    #[test]
    fn double_star_crosses_slashes() {
        assert!(m("**", "a/b/c"));
        assert!(m("a/**", "a/b/c"));
        assert!(m("a/**/c", "a/b/x/c"));
        assert!(!m("a/**/c", "a/c"));
        assert!(m("**/c", "a/b/c"));
        assert!(m("a**c", "a/b/c"));
        assert!(m("***", "x/y"));
    }

    #[test]
    fn classes() {
        assert!(m("[abc]", "b"));
        assert!(!m("[abc]", "d"));
        assert!(m("[a-c]x", "cx"));
        assert!(m("[!a-c]", "d"));
        assert!(m("[^a-c]", "d"));
        assert!(!m("[!a-c]", "a"));
        assert!(m("[[:digit:]]", "7"));
        assert!(!m("[[:digit:]]", "x"));
        assert!(m("[[:alpha:][:digit:]]", "x"));
        assert!(m("[]]", "]"));
        assert!(m("[a-]", "-"));
        assert!(m("[\\]]", "]"));
        assert!(!m("[!a]", "/"));
        assert!(!m("[/]", "/"));
        // Unterminated classes never match.
        assert!(!m("[abc", "a"));
        // A bogus POSIX class name is an error: no match.
        assert!(!m("[[:bogus:]]", "a"));
        // `[[x]` is a class of `[` and `x`.
        assert!(m("[[x]", "["));
        assert!(m("[[x]", "x"));
    }

    #[test]
    fn escapes() {
        assert!(m("\\*", "*"));
        assert!(!m("\\*", "a"));
        assert!(m("a\\?b", "a?b"));
        assert!(!m("a\\", "a"));
    }

    #[test]
    fn non_utf8_bytes() {
        assert!(wildmatch(b"caf\xe9*", b"caf\xe9.txt"));
        assert!(wildmatch(b"?", b"\xff"));
        assert!(wildmatch(b"[\x80-\xff]", b"\xa0"));
    }

    #[test]
    fn pathological_pattern_is_fast() {
        let text = "a".repeat(60);
        assert!(!m("*a*a*a*a*a*a*a*a*a*a*b", &text));
        assert!(!m("**a**a**a**a**a**a**a**a**b", &text));
    }

    #[test]
    fn anchoring() {
        assert_eq!(trailing_elements(b"a/b/c", 2), Some(&b"b/c"[..]));
        assert_eq!(trailing_elements(b"a/b/c", 3), Some(&b"a/b/c"[..]));
        assert_eq!(trailing_elements(b"a/b/c", 4), None);
        assert!(wildmatch_anchored(
            b"b/*",
            b"a/b/c",
            Anchor::TrailingElements(2)
        ));
        assert!(!wildmatch_anchored(
            b"b/*",
            b"b/c/d",
            Anchor::TrailingElements(2)
        ));
        assert!(wildmatch_anchored(
            b"b/**",
            b"a/b/c/d",
            Anchor::AfterAnySlash
        ));
        assert!(!wildmatch_anchored(
            b"b/**",
            b"ab/c/d",
            Anchor::AfterAnySlash
        ));
        assert!(litmatch_anchored(
            b"b/c",
            b"a/b/c",
            Anchor::TrailingElements(2)
        ));
        assert!(!litmatch_anchored(
            b"b/c",
            b"a/xb/c",
            Anchor::TrailingElements(2)
        ));
    }
}

#[cfg(test)]
mod reference {
    //! A plain backtracking matcher without the pruning, to check the pruned one against.

    use super::{match_class, ClassResult};

    fn naive(p: &[u8], t: &[u8]) -> bool {
        let Some(&c) = p.first() else {
            return t.is_empty();
        };
        match c {
            b'\\' => match (p.get(1), t.first()) {
                (Some(a), Some(b)) if a == b => naive(&p[2..], &t[1..]),
                _ => false,
            },
            b'?' => matches!(t.first(), Some(&b) if b != b'/') && naive(&p[1..], &t[1..]),
            b'*' => {
                let stars = p.iter().take_while(|&&b| b == b'*').count();
                let rest = &p[stars..];
                for i in 0..=t.len() {
                    if naive(rest, &t[i..]) {
                        return true;
                    }
                    if stars == 1 && t.get(i) == Some(&b'/') {
                        return false;
                    }
                }
                false
            }
            b'[' => {
                let Some(&tc) = t.first() else {
                    return false;
                };
                match match_class(p, 1, tc) {
                    ClassResult::Malformed => false,
                    ClassResult::Done { matched, end } => {
                        matched && tc != b'/' && naive(&p[end + 1..], &t[1..])
                    }
                }
            }
            _ => t.first() == Some(&c) && naive(&p[1..], &t[1..]),
        }
    }

    /// A malformed class anywhere makes rsync's matcher fail outright.
    fn has_malformed_class(p: &[u8]) -> bool {
        let mut i = 0;
        while i < p.len() {
            match p[i] {
                b'\\' => i += 2,
                b'[' => match match_class(p, i + 1, b'a') {
                    ClassResult::Malformed => return true,
                    ClassResult::Done { end, .. } => i = end + 1,
                },
                _ => i += 1,
            }
        }
        false
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(4000))]
        #[test]
        fn pruned_matcher_agrees_with_plain_backtracking(
            p in proptest::collection::vec(proptest::sample::select(b"ab/*?[]!-\\\\".to_vec()), 0..10),
            t in proptest::collection::vec(proptest::sample::select(b"ab/-[]*".to_vec()), 0..10),
        ) {
            let expected = !has_malformed_class(&p) && naive(&p, &t);
            proptest::prop_assert_eq!(
                super::wildmatch(&p, &t),
                expected,
                "pattern {:?} text {:?}",
                String::from_utf8_lossy(&p),
                String::from_utf8_lossy(&t)
            );
        }
    }
}
