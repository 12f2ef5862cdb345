//! A compiled filter rule and how it matches a path.

use crate::parse::flag;
use crate::wildmatch::{litmatch_anchored, trailing_elements, wildmatch_anchored, Anchor};

/// A path being matched, split once for all rules.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Subject<'a> {
    /// The path as given.
    pub full: &'a [u8],
    /// Without a leading `/`.
    pub name: &'a [u8],
    /// The last `/`-separated element.
    pub last: &'a [u8],
    pub is_dir: bool,
}

impl<'a> Subject<'a> {
    pub fn new(full: &'a [u8], is_dir: bool) -> Self {
        let name = full.strip_prefix(b"/").unwrap_or(full);
        let last = match name.iter().rposition(|&b| b == b'/') {
            Some(p) => &name[p + 1..],
            None => name,
        };
        Subject {
            full,
            name,
            last,
            is_dir,
        }
    }
}

/// One rule of a filter list.
///
/// For a per-directory merge rule (`:`), `pattern` is the merge-file name and `merge_id`
/// indexes the merge definitions of the owning [`crate::FilterRules`]. A `-C` rule
/// (`CVS_IGNORE` without `MERGE_FILE`) stands for the global CVS ignore list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Rule {
    pub flags: u32,
    pub pattern: Box<[u8]>,
    pub slash_cnt: u32,
    pub merge_id: usize,
    pub shape: Shape,
}

/// Common wildcard shapes matched without the general matcher.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub(crate) enum Shape {
    /// Anything else.
    #[default]
    General,
    /// `*` followed by a wildcard-free literal (`*.o`).
    StarSuffix,
    /// A wildcard-free literal followed by `*` (`core.*`).
    PrefixStar,
}

fn shape_of(pattern: &[u8]) -> Shape {
    let plain = |s: &[u8]| !s.iter().any(|b| matches!(b, b'*' | b'?' | b'[' | b'\\'));
    match (pattern.first(), pattern.last()) {
        (Some(b'*'), _) if plain(&pattern[1..]) => Shape::StarSuffix,
        (_, Some(b'*')) if plain(&pattern[..pattern.len() - 1]) => Shape::PrefixStar,
        _ => Shape::General,
    }
}

/// `shape`-specific match of a slash-free-star pattern against a whole text.
fn shape_match(shape: Shape, pattern: &[u8], text: &[u8]) -> bool {
    match shape {
        Shape::StarSuffix => {
            let lit = &pattern[1..];
            text.len() >= lit.len()
                && text.ends_with(lit)
                && !text[..text.len() - lit.len()].contains(&b'/')
        }
        Shape::PrefixStar => {
            let lit = &pattern[..pattern.len() - 1];
            text.starts_with(lit) && !text[lit.len()..].contains(&b'/')
        }
        Shape::General => crate::wildmatch::wildmatch(pattern, text),
    }
}

impl Rule {
    /// Builds a pattern rule, deriving the directory-only and wildcard flags from the pattern
    /// the way rsync does: one trailing `/` means "directories only" and is removed.
    /// `abs_prefix` (an absolute directory without trailing slash, or empty for `/`) is put
    /// in front of an anchored pattern read from a per-directory file.
    pub fn new(pattern: &[u8], flags: u32, abs_prefix: Option<&[u8]>) -> Rule {
        Rule::build(pattern, flags, abs_prefix, false)
    }

    /// A rule from an rsync daemon's module configuration: patterns holding a `/` match the
    /// module-relative path, and directory excludes (`dir/`) also exclude everything inside
    /// (`dir/***`).
    pub fn new_daemon(pattern: &[u8], flags: u32) -> Rule {
        Rule::build(pattern, flags, None, true)
    }

    fn build(pattern: &[u8], mut flags: u32, abs_prefix: Option<&[u8]>, daemon: bool) -> Rule {
        let mut pat = pattern;
        if pat.len() > 1 && pat.last() == Some(&b'/') {
            pat = &pat[..pat.len() - 1];
            flags |= flag::DIRECTORY;
        }
        let mut full = Vec::with_capacity(pat.len() + abs_prefix.map_or(0, <[u8]>::len) + 4);
        if let Some(prefix) = abs_prefix {
            if flags & (flag::ABS_PATH | flag::MERGE_FILE) == 0 && pat.first() == Some(&b'/') {
                flags |= flag::ABS_PATH;
                full.extend_from_slice(prefix);
            }
        }
        full.extend_from_slice(pat);
        if daemon {
            if flags & (flag::ABS_PATH | flag::MERGE_FILE) == 0 && pat.contains(&b'/') {
                flags |= flag::ABS_PATH;
            }
            if flags & flag::DIRECTORY != 0 && flags & flag::INCLUDE == 0 {
                flags &= !flag::DIRECTORY;
                full.extend_from_slice(b"/***");
            }
        }
        let slash_cnt = full.iter().filter(|&&b| b == b'/').count() as u32;
        if full.iter().any(|&b| matches!(b, b'*' | b'?' | b'[')) {
            flags |= flag::WILD;
            if let Some(at) = full.windows(2).position(|w| w == b"**") {
                flags |= flag::WILD2;
                if at == 0 {
                    flags |= flag::WILD2_PREFIX;
                }
                if full.ends_with(b"***") {
                    flags |= flag::WILD3_SUFFIX;
                }
            }
        }
        let unanchored = full.strip_prefix(b"/").unwrap_or(&full);
        let shape = if flags & flag::WILD != 0 {
            shape_of(unanchored)
        } else {
            Shape::General
        };
        Rule {
            flags,
            pattern: full.into_boxed_slice(),
            slash_cnt,
            merge_id: 0,
            shape,
        }
    }

    /// True when the rule's pattern (ignoring its include/exclude meaning) selects `fname`.
    /// `root` is the absolute transfer root without its leading `/` (empty when the root
    /// is `/` or unknown); it is used only for `ABS_PATH` rules.
    #[cfg(test)]
    pub fn matches(&self, fname: &[u8], is_dir: bool, root: &[u8]) -> bool {
        self.matches_subject(&Subject::new(fname, is_dir), root)
    }

    /// [`Rule::matches`] for a path already split up by [`Subject::new`].
    pub fn matches_subject(&self, subject: &Subject<'_>, root: &[u8]) -> bool {
        let hit = !self.negated();
        let (fname, name, is_dir) = (subject.full, subject.name, subject.is_dir);
        if name.is_empty() {
            return false;
        }
        let flags = self.flags;
        let mut base: &[u8] = name;
        let mut prefix: &[u8] = b"";
        let mut prefix_slash = false;
        if self.slash_cnt == 0 && flags & flag::WILD2 == 0 {
            base = subject.last;
        } else if flags & flag::ABS_PATH != 0 && !fname.starts_with(b"/") && !root.is_empty() {
            prefix = root;
            prefix_slash = true;
        } else if flags & flag::WILD2_PREFIX != 0 && !fname.starts_with(b"/") {
            prefix_slash = true;
        }
        let suffix_slash = is_dir && flags & flag::WILD3_SUFFIX != 0;
        if !is_dir && flags & flag::DIRECTORY != 0 {
            return !hit;
        }
        let several = prefix_slash || suffix_slash;
        let joined: Vec<u8>;
        let text: &[u8] = if several {
            let mut v = Vec::with_capacity(prefix.len() + base.len() + 2);
            v.extend_from_slice(prefix);
            if prefix_slash {
                v.push(b'/');
            }
            v.extend_from_slice(base);
            if suffix_slash {
                v.push(b'/');
            }
            joined = v;
            &joined
        } else {
            base
        };

        let (anchored, pattern) = match self.pattern.strip_prefix(b"/") {
            Some(rest) => (true, rest),
            None => (false, &self.pattern[..]),
        };
        let anchor = if !anchored && self.slash_cnt > 0 && flags & flag::WILD2 == 0 {
            Anchor::TrailingElements(self.slash_cnt as usize + 1)
        } else if !anchored && flags & flag::WILD2_PREFIX == 0 && flags & flag::WILD2 != 0 {
            Anchor::AfterAnySlash
        } else {
            Anchor::Whole
        };

        let matched = if flags & flag::WILD != 0 {
            match (self.shape, anchor) {
                (Shape::General, _) | (_, Anchor::AfterAnySlash) => {
                    wildmatch_anchored(pattern, text, anchor)
                }
                (shape, Anchor::Whole) => shape_match(shape, pattern, text),
                (shape, Anchor::TrailingElements(n)) => {
                    trailing_elements(text, n).is_some_and(|t| shape_match(shape, pattern, t))
                }
            }
        } else if several || anchored {
            litmatch_anchored(pattern, text, anchor)
        } else {
            // Plain name: equal to the last components, at an element boundary.
            text.len() >= pattern.len()
                && text.ends_with(pattern)
                && (text.len() == pattern.len() || text[text.len() - pattern.len() - 1] == b'/')
        };
        if matched {
            hit
        } else {
            !hit
        }
    }

    fn negated(&self) -> bool {
        self.flags & flag::NEGATE != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(p: &str) -> Rule {
        Rule::new(p.as_bytes(), 0, None)
    }

    fn hit(p: &str, name: &str, dir: bool) -> bool {
        r(p).matches(name.as_bytes(), dir, b"")
    }

    #[test]
    fn plain_names_match_last_component() {
        assert!(hit("foo", "foo", false));
        assert!(hit("foo", "a/b/foo", false));
        assert!(!hit("foo", "a/foo/b", false));
        assert!(!hit("foo", "xfoo", false));
        assert!(hit("*.o", "a/b.o", false));
        assert!(!hit("*.o", "a.o/b", false));
    }

    #[test]
    fn slashes_match_trailing_elements() {
        assert!(hit("b/c", "a/b/c", false));
        assert!(hit("b/c", "b/c", false));
        assert!(!hit("b/c", "xb/c", false));
        assert!(hit("foo/*/bar", "x/foo/y/bar", false));
        assert!(!hit("foo/*/bar", "foo/y/z/bar", false));
    }

    #[test]
    fn anchored_patterns_match_from_root() {
        assert!(hit("/foo", "foo", false));
        assert!(!hit("/foo", "a/foo", false));
        assert!(hit("/a/*", "a/b", false));
        assert!(!hit("/a/*", "a/b/c", false));
        assert!(hit("/foo/**/bar", "foo/x/y/bar", false));
        assert!(!hit("/foo/**/bar", "foo/bar", false));
    }

    #[test]
    fn directory_only_patterns() {
        assert!(hit("foo/", "a/foo", true));
        assert!(!hit("foo/", "a/foo", false));
        let rule = r("foo/");
        assert_ne!(rule.flags & flag::DIRECTORY, 0);
        assert_eq!(&*rule.pattern, b"foo");
        // A lone "/" stays a pattern of its own.
        assert_eq!(&*r("/").pattern, b"/");
    }

    #[test]
    fn double_star_forms() {
        assert!(hit("**/foo", "foo", false));
        assert!(hit("**/foo", "a/b/foo", false));
        assert!(hit("a/**", "x/a/b/c", false));
        assert!(hit("a/**", "a/b", false));
        assert!(!hit("a/**", "xa/b", false));
        assert!(hit("dir/***", "dir", true));
        assert!(!hit("dir/***", "dir", false));
        assert!(hit("dir/***", "p/dir/x/y", false));
        assert!(hit("/dir/***", "dir", true));
        assert!(!hit("/dir/***", "p/dir", true));
    }

    #[test]
    fn negation() {
        let rule = Rule::new(b"*/", flag::NEGATE, None);
        assert!(rule.matches(b"file", false, b""));
        assert!(!rule.matches(b"dir", true, b""));
        // Empty names never match, negated or not.
        assert!(!rule.matches(b"", false, b""));
    }

    #[test]
    fn absolute_rules_use_the_root() {
        let rule = Rule::new(b"/src/x", flag::ABS_PATH, None);
        assert!(rule.matches(b"x", false, b"src"));
        assert!(!rule.matches(b"x", false, b"other"));
        let rule = Rule::new(b"subdir/foo", flag::ABS_PATH, None);
        assert!(rule.matches(b"foo", false, b"home/subdir"));
        // Anchored rule from a per-directory file in /top/dir.
        let rule = Rule::new(b"/foo", 0, Some(b"/top/dir"));
        assert_ne!(rule.flags & flag::ABS_PATH, 0);
        assert!(rule.matches(b"dir/foo", false, b"top"));
        assert!(!rule.matches(b"foo", false, b"top"));
    }

    #[test]
    fn escapes_only_count_with_wildcards() {
        assert!(hit("foo\\bar", "foo\\bar", false));
        assert!(hit("foo\\\\bar*", "foo\\bar.txt", false));
        assert!(hit("a\\*", "a*", false));
        assert!(!hit("a\\*", "ab", false));
    }

    proptest::proptest! {
        #[test]
        fn shapes_agree_with_the_general_matcher(
            lit in proptest::collection::vec(proptest::sample::select(b"ab./-".to_vec()), 0..5),
            text in proptest::collection::vec(proptest::sample::select(b"ab./-".to_vec()), 0..12),
        ) {
            let mut star_suffix = b"*".to_vec();
            star_suffix.extend_from_slice(&lit);
            let mut prefix_star = lit.clone();
            prefix_star.push(b'*');
            for p in [star_suffix, prefix_star] {
                let shape = shape_of(&p);
                proptest::prop_assert_ne!(shape, Shape::General);
                proptest::prop_assert_eq!(
                    shape_match(shape, &p, &text),
                    crate::wildmatch::wildmatch(&p, &text),
                    "pattern {:?} text {:?}", String::from_utf8_lossy(&p), String::from_utf8_lossy(&text)
                );
            }
        }
    }

    #[test]
    fn non_utf8() {
        let rule = Rule::new(b"\xff*", 0, None);
        assert!(rule.matches(b"d/\xff\xfe", false, b""));
    }
}
