//! User and group names for the uid/gid lists, read from /etc/passwd and
//! /etc/group (no NSS).

use std::collections::HashMap;

static PRELOADED: std::sync::OnceLock<IdNames> = std::sync::OnceLock::new();

/// Name <-> id tables.
#[derive(Debug, Default, Clone)]
pub struct IdNames {
    users: HashMap<u32, Vec<u8>>,
    groups: HashMap<u32, Vec<u8>>,
}

fn parse(text: &[u8]) -> HashMap<u32, Vec<u8>> {
    let mut m = HashMap::new();
    for line in text.split(|&b| b == b'\n') {
        let mut f = line.split(|&b| b == b':');
        let (Some(name), Some(_), Some(id)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        if let Some(id) = std::str::from_utf8(id)
            .ok()
            .and_then(|s| s.parse::<u32>().ok())
        {
            if !name.is_empty() && name.len() <= 255 {
                m.entry(id).or_insert_with(|| name.to_vec());
            }
        }
    }
    m
}

impl IdNames {
    /// Loads the local databases (missing files give empty tables), or
    /// the tables kept by [`IdNames::preload`].
    pub fn load() -> Self {
        if let Some(p) = PRELOADED.get() {
            return p.clone();
        }
        Self::read()
    }

    /// Reads the databases once for the rest of the process: a daemon does
    /// this before a connection chroots into a module without them.
    pub fn preload() {
        let _ = PRELOADED.set(Self::read());
    }

    fn read() -> Self {
        IdNames {
            users: parse(&std::fs::read("/etc/passwd").unwrap_or_default()),
            groups: parse(&std::fs::read("/etc/group").unwrap_or_default()),
        }
    }

    /// Name of a uid.
    pub fn user(&self, uid: u32) -> Option<&[u8]> {
        self.users.get(&uid).map(|v| v.as_slice())
    }

    /// Name of a gid.
    pub fn group(&self, gid: u32) -> Option<&[u8]> {
        self.groups.get(&gid).map(|v| v.as_slice())
    }

    /// Local uid for a user name.
    pub fn uid_of(&self, name: &[u8]) -> Option<u32> {
        self.users
            .iter()
            .find(|(_, n)| n.as_slice() == name)
            .map(|(id, _)| *id)
    }

    /// Local gid for a group name.
    pub fn gid_of(&self, name: &[u8]) -> Option<u32> {
        self.groups
            .iter()
            .find(|(_, n)| n.as_slice() == name)
            .map(|(id, _)| *id)
    }
}

/// Maps the sender's ids to ours through the names in the id lists; ids
/// without a name (or with an unknown name) stay numeric, as rsync does.
#[derive(Debug, Default, Clone)]
pub struct IdMap {
    map: HashMap<u32, u32>,
}

impl IdMap {
    /// Builds the map from a received list with a name lookup.
    pub fn new(list: &[(u32, Vec<u8>)], lookup: impl Fn(&[u8]) -> Option<u32>) -> Self {
        let map = list
            .iter()
            .filter_map(|(id, name)| lookup(name).map(|local| (*id, local)))
            .collect();
        IdMap { map }
    }

    /// Our id for the sender's `id`.
    pub fn map(&self, id: u32) -> u32 {
        self.map.get(&id).copied().unwrap_or(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_maps() {
        let m =
            parse(b"root:x:0:0:root:/root:/bin/bash\nalice:x:1000:1000::/home/a:/bin/sh\nbroken\n");
        assert_eq!(m.get(&1000).map(|v| v.as_slice()), Some(&b"alice"[..]));
        assert_eq!(m.len(), 2);
        let map = IdMap::new(
            &[(5000, b"alice".to_vec()), (6000, b"nobody-here".to_vec())],
            |n| m.iter().find(|(_, v)| v.as_slice() == n).map(|(k, _)| *k),
        );
        assert_eq!(map.map(5000), 1000);
        assert_eq!(map.map(6000), 6000);
        assert!(IdNames::load().user(0).is_some());
    }
}
