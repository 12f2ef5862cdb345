//! The filter list a client sends to the server, as rsync writes it.
//!
//! Each entry is one rule's text (`prefix + pattern`, a `/` appended for directory-only
//! rules); the protocol layer frames them as (int32 length, bytes) and ends with 0.

use crate::error::{show, FilterError};
use crate::list::FilterRules;
use crate::parse::{flag, rule_prefix, WireCtx};
use crate::rule::Rule;

/// Which end of the transfer the client is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WireRole {
    /// The client sends files (push); the server receives and may delete.
    ClientSender,
    /// The client receives files (pull); the server builds the file list.
    ClientReceiver,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Elide {
    /// Sent, and used on both sides.
    None,
    /// Used only here: not sent.
    Local,
    /// Used only by the peer: sent, ignored here.
    Remote,
}

impl FilterRules {
    /// The rule strings rsync would send for this list, in order. `-C` (the option) adds
    /// its rules only when the client is the sender, as rsync does; rules that only the
    /// client uses (e.g. `hide` rules on a pushing client) are left out.
    ///
    /// Fails with [`FilterError::TooModern`] when a rule cannot be expressed in `protocol`.
    pub fn to_wire_rules(
        &self,
        role: WireRole,
        protocol: u32,
    ) -> Result<Vec<Vec<u8>>, FilterError> {
        let am_sender = role == WireRole::ClientSender;
        let mut out = Vec::new();
        self.wire_list(&self.rules, am_sender, protocol, false, &mut out)?;
        if am_sender {
            let tail: Vec<Rule> = self
                .tail
                .iter()
                .filter(|r| protocol >= 29 || r.flags & flag::MERGE_FILE == 0)
                .cloned()
                .collect();
            self.wire_list(&tail, am_sender, protocol, false, &mut out)?;
        }
        Ok(out)
    }

    fn wire_list(
        &self,
        rules: &[Rule],
        am_sender: bool,
        protocol: u32,
        cvs_defaults: bool,
        out: &mut Vec<Vec<u8>>,
    ) -> Result<(), FilterError> {
        for rule in rules {
            let mut flags = rule.flags;
            if cvs_defaults && protocol < 30 {
                flags &= !flag::PERISHABLE;
            }
            // --delete-excluded makes side-less rules sender-only, and rsync writes them so.
            if self.delete_excluded && flags & (flag::SIDES | flag::MERGE_FILE) == 0 {
                flags |= flag::SENDER;
            }
            let mut elide = Elide::None;
            if flags & flag::SENDER != 0 {
                elide = if am_sender {
                    Elide::Local
                } else {
                    Elide::Remote
                };
            }
            if flags & flag::RECEIVER != 0 {
                elide = if elide != Elide::None {
                    Elide::None
                } else if am_sender {
                    Elide::Remote
                } else {
                    Elide::Local
                };
            } else if self.delete_excluded
                && elide == Elide::None
                && (flags & flag::PERDIR_MERGE == 0 || flags & flag::NO_PREFIXES != 0)
            {
                elide = if am_sender {
                    Elide::Local
                } else {
                    Elide::Remote
                };
            }
            if elide == Elide::Local {
                continue;
            }
            if flags & flag::CVS_IGNORE != 0
                && flags & flag::MERGE_FILE == 0
                && (am_sender || protocol < 29)
            {
                if let Some(cvs) = &self.cvs_list {
                    self.wire_list(cvs, am_sender, protocol, true, out)?;
                }
                continue;
            }
            let ctx = WireCtx {
                protocol,
                am_sender,
                delete_excluded: self.delete_excluded,
            };
            let prefix = rule_prefix(flags, &rule.pattern, Some(&ctx)).ok_or_else(|| {
                FilterError::TooModern {
                    rule: show(&rendered(rule, flags)),
                    protocol,
                }
            })?;
            let mut text = prefix;
            text.extend_from_slice(&rule.pattern);
            if flags & flag::DIRECTORY != 0 {
                text.push(b'/');
            }
            if !text.is_empty() {
                out.push(text);
            }
        }
        Ok(())
    }

    /// The rules as `--filter` text, for logs and debugging (`- *.o`, `:n- .excl`, ...).
    pub fn describe(&self) -> Vec<String> {
        self.rules
            .iter()
            .chain(self.tail.iter())
            .map(|r| show(&rendered(r, r.flags)))
            .collect()
    }
}

pub(crate) fn rendered(rule: &Rule, flags: u32) -> Vec<u8> {
    let mut text = rule_prefix(flags, &rule.pattern, None).unwrap_or_default();
    text.extend_from_slice(&rule.pattern);
    if flags & flag::DIRECTORY != 0 {
        text.push(b'/');
    }
    text
}
