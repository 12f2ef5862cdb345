//! Snapshots: copy-on-write at extent level. A snapshot copies the live tree's metadata
//! (inodes, directory entries, extent maps, xattrs) into a new tree id and takes a reference on
//! every extent; no file data is copied. Because extents are immutable, later writes to the live
//! tree create new extents and leave the snapshot's untouched.

use crate::error::{Error, Result};
use crate::meta::{self, SnapRec, Ts, DIRENTS, EXTMAP, INODES, LIVE, SNAPS, XATTRS};
use crate::pool::Pool;
use redb::{ReadableTable, WriteTransaction};

const BATCH: usize = 1024;

/// A batch of `((ino, name), value)` rows.
type NamedRows = Vec<((u64, Vec<u8>), Vec<u8>)>;

/// Copy tree `from` into tree `to` (which must be empty), taking extent references.
fn copy_tree(tx: &WriteTransaction, from: u64, to: u64) -> Result<()> {
    // Inodes.
    let mut cursor = 0u64;
    loop {
        let batch: Vec<(u64, Vec<u8>)> = {
            let t = tx.open_table(INODES)?;
            let r = t.range((from, cursor)..(from + 1, 0))?;
            r.take(BATCH)
                .map(|row| row.map(|(k, v)| (k.value().1, v.value().to_vec())))
                .collect::<std::result::Result<_, _>>()?
        };
        let Some(last) = batch.last().map(|(k, _)| *k) else {
            break;
        };
        let mut t = tx.open_table(INODES)?;
        for (ino, v) in &batch {
            t.insert((to, *ino), v.as_slice())?;
        }
        cursor = last + 1;
    }
    // Extent maps.
    let mut cursor = (0u64, 0u64);
    loop {
        let batch: Vec<((u64, u64), u64)> = {
            let t = tx.open_table(EXTMAP)?;
            let r = t.range((from, cursor.0, cursor.1)..(from + 1, 0, 0))?;
            r.take(BATCH)
                .map(|row| row.map(|(k, v)| ((k.value().1, k.value().2), v.value())))
                .collect::<std::result::Result<_, _>>()?
        };
        let Some(last) = batch.last().map(|(k, _)| *k) else {
            break;
        };
        for ((ino, idx), id) in &batch {
            tx.open_table(EXTMAP)?.insert((to, *ino, *idx), *id)?;
            Pool::incref(tx, *id)?;
        }
        cursor = match last.1.checked_add(1) {
            Some(n) => (last.0, n),
            None => (last.0 + 1, 0),
        };
    }
    // Directory entries and xattrs share a key shape.
    for table in [0, 1] {
        let mut cursor: (u64, Vec<u8>) = (0, Vec::new());
        loop {
            let batch: NamedRows = if table == 0 {
                let t = tx.open_table(DIRENTS)?;
                let r = t.range((from, cursor.0, cursor.1.as_slice())..(from + 1, 0, &[][..]))?;
                r.take(BATCH)
                    .map(|row| {
                        row.map(|(k, v)| {
                            (
                                (k.value().1, k.value().2.to_vec()),
                                v.value().to_le_bytes().to_vec(),
                            )
                        })
                    })
                    .collect::<std::result::Result<_, _>>()?
            } else {
                let t = tx.open_table(XATTRS)?;
                let r = t.range((from, cursor.0, cursor.1.as_slice())..(from + 1, 0, &[][..]))?;
                r.take(BATCH)
                    .map(|row| {
                        row.map(|(k, v)| ((k.value().1, k.value().2.to_vec()), v.value().to_vec()))
                    })
                    .collect::<std::result::Result<_, _>>()?
            };
            let Some(last) = batch.last().map(|(k, _)| k.clone()) else {
                break;
            };
            for ((ino, name), v) in &batch {
                if table == 0 {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(&v[..8]);
                    tx.open_table(DIRENTS)?
                        .insert((to, *ino, name.as_slice()), u64::from_le_bytes(b))?;
                } else {
                    tx.open_table(XATTRS)?
                        .insert((to, *ino, name.as_slice()), v.as_slice())?;
                }
            }
            // Next key after `last`: same ino, name + "\0".
            let mut n = last.1;
            n.push(0);
            cursor = (last.0, n);
        }
    }
    Ok(())
}

/// Remove every row of tree `tree`, dropping extent references; returns extents now unreferenced.
fn drop_tree(tx: &WriteTransaction, tree: u64) -> Result<Vec<(u64, meta::Extent)>> {
    let mut freed = Vec::new();
    tx.open_table(INODES)?
        .retain_in((tree, 0)..(tree + 1, 0), |_, _| false)?;
    loop {
        let batch: Vec<((u64, u64, u64), u64)> = {
            let t = tx.open_table(EXTMAP)?;
            let r = t.range((tree, 0, 0)..(tree + 1, 0, 0))?;
            r.take(BATCH)
                .map(|row| row.map(|(k, v)| (k.value(), v.value())))
                .collect::<std::result::Result<_, _>>()?
        };
        if batch.is_empty() {
            break;
        }
        for (k, id) in batch {
            tx.open_table(EXTMAP)?.remove(k)?;
            if let Some(f) = Pool::decref(tx, id)? {
                freed.push(f);
            }
        }
    }
    tx.open_table(DIRENTS)?
        .retain_in((tree, 0, &[][..])..(tree + 1, 0, &[][..]), |_, _| false)?;
    tx.open_table(XATTRS)?
        .retain_in((tree, 0, &[][..])..(tree + 1, 0, &[][..]), |_, _| false)?;
    Ok(freed)
}

fn find(tx: &WriteTransaction, name: &str) -> Result<Option<SnapRec>> {
    let t = tx.open_table(SNAPS)?;
    for row in t.iter()? {
        let (_, v) = row?;
        let s: SnapRec = meta::dec(v.value())?;
        if s.name == name {
            return Ok(Some(s));
        }
    }
    Ok(None)
}

/// Create a snapshot of the live tree named `name`. Copies no file data.
pub fn create(pool: &Pool, name: &str) -> Result<SnapRec> {
    if name.is_empty() || name.len() > 255 || name.contains('/') {
        return Err(Error::Invalid(format!("invalid snapshot name {name:?}")));
    }
    pool.meta.write(|tx| {
        if find(tx, name)?.is_some() {
            return Err(Error::Invalid(format!("snapshot {name:?} already exists")));
        }
        let tree = meta::alloc(tx, "next_snap", 1)?;
        copy_tree(tx, LIVE, tree)?;
        let rec = SnapRec {
            tree,
            name: name.to_string(),
            created: Ts::now(),
        };
        tx.open_table(SNAPS)?
            .insert(tree, meta::enc(&rec)?.as_slice())?;
        Ok(rec)
    })
}

/// All snapshots, oldest first.
pub fn list(pool: &Pool) -> Result<Vec<SnapRec>> {
    let tx = pool.meta.read()?;
    let t = match tx.open_table(SNAPS) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let mut v = Vec::new();
    for row in t.iter()? {
        v.push(meta::dec(row?.1.value())?);
    }
    Ok(v)
}

/// Delete a snapshot, freeing extents only it referenced.
pub fn delete(pool: &Pool, name: &str) -> Result<()> {
    let freed = pool.meta.write(|tx| {
        let s =
            find(tx, name)?.ok_or_else(|| Error::Invalid(format!("no snapshot named {name:?}")))?;
        tx.open_table(SNAPS)?.remove(s.tree)?;
        drop_tree(tx, s.tree)
    })?;
    pool.free_extents(&freed);
    Ok(())
}

/// Replace the live tree with the contents of snapshot `name` (the snapshot is kept).
/// The pool must not be mounted (the caller holds the pool lock).
pub fn restore(pool: &Pool, name: &str) -> Result<()> {
    let freed = pool.meta.write(|tx| {
        let s =
            find(tx, name)?.ok_or_else(|| Error::Invalid(format!("no snapshot named {name:?}")))?;
        let freed = drop_tree(tx, LIVE)?;
        copy_tree(tx, s.tree, LIVE)?;
        Ok(freed)
    })?;
    pool.free_extents(&freed);
    Ok(())
}
