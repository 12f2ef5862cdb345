//! Property tests: random files under each policy read back identical after losing any M disks,
//! after corrupting up to M fragments of every extent, and after draining a disk.

mod common;

use common::*;
use dynfs_core::meta::{self, Extent};
use dynfs_core::scrub::{self, ScrubOptions};
use dynfs_core::{disk, Pool};
use proptest::prelude::*;
use redb::ReadableTable;

const POLICIES: [(usize, &str); 4] = [
    (2, "replicate:2"),
    (3, "replicate:3"),
    (3, "rs:2+1"),
    (6, "rs:4+2"),
];
const ES: u64 = 16384;

fn files_strategy() -> impl Strategy<Value = Vec<(usize, u64)>> {
    prop::collection::vec((0usize..120_000, any::<u64>()), 1..5)
}

fn write_files(tp: &TestPool, files: &[(usize, u64)]) {
    let fs = tp.open();
    for (i, (len, seed)) in files.iter().enumerate() {
        put_file(&fs, &format!("f{i}"), &bytes(*seed, *len));
    }
}

fn check_files(tp: &TestPool, files: &[(usize, u64)]) {
    let fs = tp.open();
    for (i, (len, seed)) in files.iter().enumerate() {
        assert_eq!(
            get_file(&fs, &format!("f{i}")),
            bytes(*seed, *len),
            "file f{i}"
        );
    }
}

fn extents(pool: &Pool) -> Vec<(u64, Extent)> {
    let tx = pool.meta.read().unwrap();
    let t = tx.open_table(meta::EXTENTS).unwrap();
    t.iter()
        .unwrap()
        .map(|r| {
            let (k, v) = r.unwrap();
            (k.value(), meta::dec(v.value()).unwrap())
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 8, ..ProptestConfig::default() })]

    #[test]
    fn survives_losing_any_m_disks(p in 0usize..4, files in files_strategy(), pick in any::<u64>()) {
        let (n, policy_s) = POLICIES[p];
        let tp = TestPool::new(n, policy_s, ES);
        write_files(&tp, &files);
        let m = policy(policy_s).tolerance();
        // Choose M distinct disks from `pick`.
        let mut idx: Vec<usize> = (0..n).collect();
        let mut x = pick;
        for i in (1..n).rev() {
            idx.swap(i, (x % (i as u64 + 1)) as usize);
            x = x / (i as u64 + 1) + 7;
        }
        for &i in &idx[..m] {
            std::fs::remove_dir_all(&tp.disks[i]).unwrap();
        }
        check_files(&tp, &files);
    }

    #[test]
    fn survives_corrupting_m_fragments_per_extent(p in 0usize..4, files in files_strategy(), seed in any::<u64>()) {
        let (n, policy_s) = POLICIES[p];
        let tp = TestPool::new(n, policy_s, ES);
        write_files(&tp, &files);
        let m = policy(policy_s).tolerance();
        {
            let pool = Pool::open(&tp.pool).unwrap();
            let mut x = seed | 1;
            let mut next = || { x ^= x << 13; x ^= x >> 7; x ^= x << 17; x };
            for (id, e) in extents(&pool) {
                // Inline data (small files) has no fragment file to damage.
                if e.is_inline() { continue; }
                let count = (next() % (m as u64 + 1)) as usize;
                let mut chosen: Vec<usize> = Vec::new();
                while chosen.len() < count {
                    let i = (next() % e.frags.len() as u64) as usize;
                    if !chosen.contains(&i) { chosen.push(i); }
                }
                for i in chosen {
                    let d = pool.disks().into_iter().find(|d| d.id == e.frags[i].disk).unwrap();
                    let path = disk::fragment_path(&d.path, id, i);
                    let mut b = std::fs::read(&path).unwrap();
                    match next() % 3 {
                        0 => { let k = (next() % b.len().max(1) as u64) as usize; if let Some(v) = b.get_mut(k) { *v ^= 1 << (next() % 8); } else { b.push(1); } }
                        1 => { b.truncate(b.len() / 2); }
                        _ => { std::fs::remove_file(&path).unwrap(); continue; }
                    }
                    std::fs::write(&path, b).unwrap();
                }
            }
        }
        // Reads return correct data (and repair what they touched).
        check_files(&tp, &files);
        let pool = Pool::open(&tp.pool).unwrap();
        scrub::scrub(&pool, ScrubOptions { repair: true, ..Default::default() }, &mut |_, _| {}).unwrap();
        let r = scrub::scrub(&pool, ScrubOptions::default(), &mut |_, _| {}).unwrap();
        prop_assert!(r.clean(), "{:?}", r);
        prop_assert_eq!(r.disks.values().map(|d| d.bad).sum::<u64>(), 0);
        drop(pool);
        check_files(&tp, &files);
    }

    #[test]
    fn survives_drain_and_rebuild(p in 0usize..4, files in files_strategy(), which in any::<u32>()) {
        let (n, policy_s) = POLICIES[p];
        // One spare disk so the drained disk's fragments have somewhere to go.
        let tp = TestPool::new(n + 1, policy_s, ES);
        write_files(&tp, &files);
        let victim = which % (n as u32 + 1) + 1;
        {
            let pool = Pool::open(&tp.pool).unwrap();
            let r = scrub::drain(&pool, victim, &mut |_, _| {}).unwrap();
            prop_assert_eq!(r.failed, 0);
            prop_assert_eq!(pool.fragments_on(victim).unwrap(), 0);
            pool.remove_disk(victim).unwrap();
        }
        check_files(&tp, &files);
        // Then a disk dies and is rebuilt onto a fresh one.
        let dead = tp.disks.iter().enumerate().find(|(i, _)| *i as u32 + 1 != victim).unwrap().0;
        std::fs::remove_dir_all(&tp.disks[dead]).unwrap();
        let fresh = tp.root.path().join("fresh");
        std::fs::create_dir(&fresh).unwrap();
        {
            let pool = Pool::open(&tp.pool).unwrap();
            pool.set_health(dead as u32 + 1, dynfs_core::Health::Failed).unwrap();
            pool.add_disk(&fresh).unwrap();
            let r = scrub::rebuild(&pool, None, &mut |_, _| {}).unwrap();
            prop_assert_eq!(r.failed, 0);
            let st = dynfs_core::status::Status::gather(&pool).unwrap();
            prop_assert_eq!(st.degraded_extents, 0);
        }
        check_files(&tp, &files);
    }
}
