//! Property tests: arbitrary input never panics, and parsing is consistent.

use arsync_filter::wildmatch::wildmatch;
use arsync_filter::{FilterRules, Side, WireRole};
use proptest::prelude::*;

fn rule_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..40),
        // Mostly-valid rules: a prefix, modifiers and a pattern built from special bytes.
        (
            prop::sample::select(vec![
                "-",
                "+",
                "H",
                "S",
                "P",
                "R",
                "!",
                ".",
                ":",
                "exclude",
                "include",
                "hide",
                "show",
                "protect",
                "risk",
                "clear",
                "merge",
                "dir-merge",
                "x"
            ]),
            proptest::collection::vec(prop::sample::select(b",/!Csrpxenw+-_ ".to_vec()), 0..5),
            proptest::collection::vec(prop::sample::select(b"ab/*?[]!^-:\\. \xff".to_vec()), 0..16),
        )
            .prop_map(|(p, m, pat)| {
                let mut v = p.as_bytes().to_vec();
                v.extend(m);
                v.push(b' ');
                v.extend(pat);
                v
            }),
    ]
}

fn pattern_bytes() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(prop::sample::select(b"ab/*?[]!^-:\\.\xff".to_vec()), 0..20)
}

fn name_bytes() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(prop::sample::select(b"ab/.-[]\\*\xff".to_vec()), 0..24)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn parsing_and_matching_never_panic(rule in rule_bytes(), name in name_bytes(), is_dir: bool) {
        // A merge of "-" reads standard input; keep the test independent of it.
        prop_assume!(!rule.ends_with(b"-"));
        let mut r = FilterRules::new();
        if r.add_rule_bytes(&rule).is_ok() {
            let _ = r.check(&name, is_dir);
            let _ = r.check_side(&name, is_dir, Side::Receiver);
            let _ = r.check_xattr(&name, Side::Sender);
            let _ = r.to_wire_rules(WireRole::ClientSender, 31);
            let _ = r.to_wire_rules(WireRole::ClientReceiver, 28);
        }
        let mut r = FilterRules::new();
        if r.add_exclude_bytes(&rule).is_ok() {
            let _ = r.check(&name, is_dir);
        }
    }

    #[test]
    fn wildmatch_never_panics(pattern in pattern_bytes(), name in name_bytes()) {
        let _ = wildmatch(&pattern, &name);
    }

    #[test]
    fn literal_patterns_match_themselves(name in proptest::collection::vec(prop::sample::select(b"abc.-_\xff".to_vec()), 1..12)) {
        prop_assert!(wildmatch(&name, &name));
        let mut r = FilterRules::new();
        let mut rule = b"- ".to_vec();
        rule.extend_from_slice(&name);
        r.add_rule_bytes(&rule).expect("valid");
        let mut path = b"dir/".to_vec();
        path.extend_from_slice(&name);
        prop_assert!(r.excluded_for_transfer(&path, false));
    }

    #[test]
    fn wire_rules_reparse(rule in rule_bytes()) {
        prop_assume!(!rule.ends_with(b"-"));
        let mut r = FilterRules::new();
        if r.add_rule_bytes(&rule).is_ok() {
            if let Ok(wire) = r.to_wire_rules(WireRole::ClientReceiver, 31) {
                let mut server = FilterRules::new();
                for w in wire {
                    prop_assert!(server.add_wire_rule(&w, 31).is_ok(), "{:?}", String::from_utf8_lossy(&w));
                }
            }
        }
    }
}
