//! Metadata replicas on M + 1 disks: which disks hold them, what survives losing or damaging
//! any M disks (replica holders included), stale former replicas, moves on drain and removal,
//! policy overrides raising the count, and pools made with a replica on every disk.

mod common;

use common::*;
use dynfs_core::meta::{self, Kind, ROOT_INO};
use dynfs_core::status::Status;
use dynfs_core::{disk, scrub, Health, Pool};
use proptest::prelude::*;
use std::path::{Path, PathBuf};

/// Disk ids whose directory holds a metadata file.
fn files_on(tp: &TestPool) -> Vec<u32> {
    (0..tp.disks.len())
        .filter(|&i| disk::meta_path(&tp.disks[i]).exists())
        .map(|i| i as u32 + 1)
        .collect()
}

/// The recorded replica set of the metadata file at `path`.
fn recorded_set(path: &Path) -> Vec<u32> {
    let db = redb::Database::open(path).unwrap();
    let tx = db.begin_read().unwrap();
    let t = tx.open_table(meta::STATE).unwrap();
    let v = t.get(meta::REPLICA_SET).unwrap().unwrap();
    meta::dec(v.value()).unwrap()
}

fn generation(path: &Path) -> u64 {
    let db = redb::Database::open(path).unwrap();
    let tx = db.begin_read().unwrap();
    let t = tx.open_table(meta::SUPER).unwrap();
    let v = t.get("generation").unwrap().unwrap().value();
    v
}

/// Small (inline) and larger (fragment) files.
fn sample(n: usize) -> Vec<(String, Vec<u8>)> {
    (0..n)
        .map(|i| {
            let len = if i % 3 == 2 { 70_000 } else { 100 + i * 37 };
            (format!("f{i}"), bytes(i as u64 + 1, len))
        })
        .collect()
}

fn check(tp: &TestPool, files: &[(String, Vec<u8>)]) {
    let fs = tp.open();
    for (name, data) in files {
        assert_eq!(&get_file(&fs, name), data, "{name}");
    }
}

/// Moves a disk's directory away (the disk goes missing) and back.
fn hide(d: &Path) -> PathBuf {
    let h = d.with_extension("away");
    std::fs::rename(d, &h).unwrap();
    h
}

#[test]
fn replicas_on_m_plus_one_disks_recorded_in_each_and_shown_by_status() {
    let tp = TestPool::new(6, "rs:4+2", 65536);
    let fs = tp.open();
    let pool = fs.pool();
    assert_eq!(pool.meta_replicas_needed(), 3);
    assert_eq!(pool.meta.replica_disks(), vec![1, 2, 3]);
    assert_eq!(pool.meta.recorded_replica_disks().unwrap(), vec![1, 2, 3]);
    let st = Status::gather(pool).unwrap();
    assert_eq!(st.metadata_replicas_needed, 3);
    assert_eq!(st.metadata_replica_disks, vec![1, 2, 3]);
    let holders: Vec<u32> = st
        .disks
        .iter()
        .filter(|d| d.metadata_replica)
        .map(|d| d.id)
        .collect();
    assert_eq!(holders, vec![1, 2, 3]);
    assert!(st
        .render()
        .contains("metadata replicas: 3 of 3 needed, on disks 1, 2, 3"));
    drop(fs);
    assert_eq!(files_on(&tp), vec![1, 2, 3]);
    for i in 0..3 {
        assert_eq!(recorded_set(&disk::meta_path(&tp.disks[i])), vec![1, 2, 3]);
    }
}

/// How a disk is lost in [`losing_any_m_disks_loses_no_metadata`].
#[derive(Debug, Clone, Copy)]
enum Loss {
    /// The whole disk directory is gone.
    Missing,
    /// Its metadata file is deleted.
    Deleted,
    /// Its metadata file is overwritten with garbage.
    Corrupt,
}

#[test]
fn losing_any_m_disks_loses_no_metadata() {
    // rs:2+2 on 5 disks: M = 2, replicas on 3 disks; lose every pair of disks in turn.
    let tp = TestPool::new(5, "rs:2+2", 16384);
    let files = sample(6);
    {
        let fs = tp.open();
        for (name, data) in &files {
            put_file(&fs, name, data);
        }
    }
    let kinds = [Loss::Missing, Loss::Deleted, Loss::Corrupt];
    let mut round = 0;
    for a in 0..5 {
        for b in a + 1..5 {
            let kind = kinds[round % 3];
            round += 1;
            let mut hidden = Vec::new();
            for i in [a, b] {
                let m = disk::meta_path(&tp.disks[i]);
                match kind {
                    Loss::Missing => hidden.push((tp.disks[i].clone(), hide(&tp.disks[i]))),
                    Loss::Deleted if m.exists() => std::fs::remove_file(&m).unwrap(),
                    Loss::Corrupt if m.exists() => std::fs::write(&m, b"not a database").unwrap(),
                    _ => {}
                }
            }
            {
                let fs = tp.open();
                for (name, data) in &files {
                    assert_eq!(&get_file(&fs, name), data, "{name}, lost {a} {b} {kind:?}");
                }
                let live = fs.pool().meta.replica_disks();
                assert_eq!(live.len(), 3, "lost {a} {b} {kind:?}: {live:?}");
                // A new file after the loss.
                put_file(&fs, &format!("after{round}"), b"x");
            }
            for (d, h) in hidden {
                std::fs::rename(h, d).unwrap();
            }
            // Back to full strength: stale former replicas are never taken for current.
            let fs = tp.open();
            assert_eq!(get_file(&fs, &format!("after{round}")), b"x");
            assert_eq!(fs.pool().meta.replica_disks().len(), 3);
            drop(fs);
            assert_eq!(files_on(&tp).len(), 3, "lost {a} {b} {kind:?}");
        }
    }
    check(&tp, &files);
}

#[test]
fn a_stale_former_replica_is_never_taken_for_current() {
    // replicate:3 on 5 disks: M = 2, replicas on disks 1, 2, 3.
    let tp = TestPool::new(5, "replicate:3", 16384);
    {
        let fs = tp.open();
        put_file(&fs, "old", b"old");
    }
    // Disk 1 goes missing: its replica moves to disk 4.
    let h = hide(&tp.disks[0]);
    {
        let fs = tp.open();
        assert_eq!(fs.pool().meta.replica_disks().len(), 3);
        assert_eq!(
            fs.pool().meta.recorded_replica_disks().unwrap(),
            vec![2, 3, 4]
        );
        put_file(&fs, "new", b"new");
    }
    std::fs::rename(&h, &tp.disks[0]).unwrap();
    let old_gen = generation(&disk::meta_path(&tp.disks[0]));
    // Disk 1 is back with its stale replica while disks 2 and 3 (current replicas) are
    // missing: disk 4's newer generation wins, and disk 1's file is deleted as a former
    // replica.
    let h2 = hide(&tp.disks[1]);
    let h3 = hide(&tp.disks[2]);
    {
        let fs = tp.open();
        assert!(fs.pool().open_report.generation > old_gen);
        assert_eq!(fs.pool().open_report.source_disk, 4);
        assert_eq!(get_file(&fs, "new"), b"new");
        assert_eq!(get_file(&fs, "old"), b"old");
        assert_eq!(fs.pool().open_report.stale_removed, vec![1]);
        // Replicas replaced on the disks present: 1, 4 and 5.
        assert_eq!(
            fs.pool().meta.recorded_replica_disks().unwrap(),
            vec![1, 4, 5]
        );
    }
    std::fs::rename(&h2, &tp.disks[1]).unwrap();
    std::fs::rename(&h3, &tp.disks[2]).unwrap();
    let fs = tp.open();
    assert_eq!(get_file(&fs, "new"), b"new");
    assert_eq!(fs.pool().open_report.stale_removed, vec![2, 3]);
    drop(fs);
    assert_eq!(files_on(&tp), vec![1, 4, 5]);
}

#[test]
fn a_replica_that_recorded_its_own_departure_is_former_even_at_the_same_generation() {
    // replicate:2 on 3 disks: replicas on 1 and 2.
    let tp = TestPool::new(3, "replicate:2", 16384);
    let keep = tp.root.path().join("departed.redb");
    {
        let fs = tp.open();
        put_file(&fs, "a", b"a");
        // A second name for disk 1's replica file: it sees the commits disk 1 makes, and
        // survives the deletion of the file when the replica leaves.
        std::fs::hard_link(disk::meta_path(&tp.disks[0]), &keep).unwrap();
        fs.pool().set_health(1, Health::Draining).unwrap();
        assert_eq!(fs.pool().meta.recorded_replica_disks().unwrap(), vec![2, 3]);
        assert!(!disk::meta_path(&tp.disks[0]).exists());
    }
    // As if deleting it had not happened (a crash just before): same generation as the
    // current replicas, but a set without itself.
    std::fs::copy(&keep, disk::meta_path(&tp.disks[0])).unwrap();
    assert_eq!(recorded_set(&disk::meta_path(&tp.disks[0])), vec![2, 3]);
    assert_eq!(
        generation(&disk::meta_path(&tp.disks[0])),
        generation(&disk::meta_path(&tp.disks[1]))
    );
    let fs = tp.open();
    assert_eq!(fs.pool().open_report.members, vec![2, 3]);
    assert_eq!(fs.pool().open_report.stale_removed, vec![1]);
    assert_eq!(get_file(&fs, "a"), b"a");
    drop(fs);
    assert_eq!(files_on(&tp), vec![2, 3]);
}

#[test]
fn draining_failing_and_removing_a_replica_disk_moves_its_replica_first() {
    let tp = TestPool::new(5, "rs:2+1", 16384);
    let files = sample(4);
    let fs = tp.open();
    for (name, data) in &files {
        put_file(&fs, name, data);
    }
    let pool = fs.pool().clone();
    assert_eq!(pool.meta.replica_disks(), vec![1, 2]);
    // Drain disk 1 (a replica holder): the replica moves to disk 3.
    scrub::drain(&pool, 1, &mut |_, _| {}).unwrap();
    assert_eq!(pool.meta.recorded_replica_disks().unwrap(), vec![2, 3]);
    assert!(!disk::meta_path(&tp.disks[0]).exists());
    pool.remove_disk(1).unwrap();
    // Suspect and failed disks give up their replica too.
    pool.set_health(2, Health::Suspect).unwrap();
    assert_eq!(pool.meta.recorded_replica_disks().unwrap(), vec![3, 4]);
    pool.set_health(3, Health::Failed).unwrap();
    assert_eq!(pool.meta.recorded_replica_disks().unwrap(), vec![4, 5]);
    // Disk 4 starts draining: its replica goes to disk 2, suspect but better than draining.
    pool.set_health(4, Health::Draining).unwrap();
    assert_eq!(pool.meta.recorded_replica_disks().unwrap(), vec![2, 5]);
    // Adding a disk moves nothing when the count is met... except off a suspect disk.
    let extra = tp.root.path().join("extra");
    std::fs::create_dir(&extra).unwrap();
    let id = pool.add_disk(&extra).unwrap();
    assert_eq!(pool.meta.recorded_replica_disks().unwrap(), vec![5, id]);
    assert!(disk::meta_path(&extra).exists());
    assert!(!disk::meta_path(&tp.disks[1]).exists());
    drop((pool, fs));
    let fs = tp.open();
    assert_eq!(fs.pool().meta.replica_disks().len(), 2);
    for (name, data) in &files {
        assert_eq!(&get_file(&fs, name), data, "{name}");
    }
}

#[test]
fn a_replica_disk_cannot_leave_when_no_other_disk_can_take_its_replica() {
    let tp = TestPool::new(3, "replicate:2", 16384);
    let fs = tp.open();
    fs.setxattr(ROOT_INO, b"user.dynfs.policy", b"replicate:3", 0)
        .unwrap();
    assert_eq!(fs.pool().meta.replica_disks(), vec![1, 2, 3]);
    let err = fs.pool().remove_disk(3).unwrap_err().to_string();
    assert!(err.contains("holds a metadata replica"), "{err}");
    assert_eq!(fs.pool().meta.replica_disks(), vec![1, 2, 3]);
    // With a fourth disk it can.
    let extra = tp.root.path().join("extra");
    std::fs::create_dir(&extra).unwrap();
    let id = fs.pool().add_disk(&extra).unwrap();
    fs.pool().remove_disk(3).unwrap();
    assert_eq!(fs.pool().meta.replica_disks().len(), 3);
    assert_eq!(
        fs.pool().meta.recorded_replica_disks().unwrap(),
        vec![1, 2, id]
    );
}

#[test]
fn adding_a_disk_needs_no_replica_when_the_count_is_met() {
    let tp = TestPool::new(3, "replicate:2", 16384);
    let fs = tp.open();
    let extra = tp.root.path().join("extra");
    std::fs::create_dir(&extra).unwrap();
    fs.pool().add_disk(&extra).unwrap();
    assert_eq!(fs.pool().meta.replica_disks(), vec![1, 2]);
    assert!(!disk::meta_path(&extra).exists());
}

#[test]
fn a_policy_override_with_higher_tolerance_raises_the_count() {
    let tp = TestPool::new(6, "rs:4+2", 16384);
    let small = bytes(9, 3000);
    {
        let fs = tp.open();
        let (dir, _) = fs
            .mknod(ROOT_INO, b"six", Kind::Dir, 0o755, 0, 0, 0, b"")
            .unwrap();
        assert_eq!(fs.pool().meta_replicas_needed(), 3);
        fs.setxattr(dir, b"user.dynfs.policy", b"replicate:6", 0)
            .unwrap();
        assert_eq!(fs.pool().meta_replicas_needed(), 6);
        assert_eq!(fs.pool().meta.replica_disks().len(), 6);
        // A small file under replicate:6 lives inline in the metadata.
        let (f, _) = fs
            .mknod(dir, b"small", Kind::File, 0o644, 0, 0, 0, b"")
            .unwrap();
        fs.open(f).unwrap();
        fs.write(f, 0, &small).unwrap();
        fs.release(f).unwrap();
        fs.sync().unwrap();
    }
    assert_eq!(files_on(&tp), vec![1, 2, 3, 4, 5, 6]);
    // Any five disks' metadata lost: the sixth alone holds the file.
    for keep in 0..6 {
        let hidden: Vec<PathBuf> = (0..6)
            .filter(|&i| i != keep)
            .map(|i| {
                let m = disk::meta_path(&tp.disks[i]);
                let h = m.with_extension("hide");
                std::fs::rename(&m, &h).unwrap();
                h
            })
            .collect();
        {
            let fs = tp.open();
            assert_eq!(fs.pool().meta_replicas_needed(), 6);
            let (dir, _) = fs.lookup(ROOT_INO, b"six").unwrap();
            let (f, _) = fs.lookup(dir, b"small").unwrap();
            assert_eq!(fs.read(f, 0, 65536).unwrap(), small, "kept disk {keep}");
        }
        for h in hidden {
            std::fs::rename(&h, h.with_extension("redb")).unwrap();
        }
    }
}

/// Turn a pool into one made before the replica set was recorded: the same replica on every
/// disk, with neither the set nor the tolerance counter.
fn make_legacy(tp: &TestPool) {
    let src = disk::meta_path(&tp.disks[0]);
    let tmp = tp.root.path().join("legacy.redb");
    std::fs::copy(&src, &tmp).unwrap();
    {
        let db = redb::Database::open(&tmp).unwrap();
        let tx = db.begin_write().unwrap();
        tx.open_table(meta::STATE)
            .unwrap()
            .remove(meta::REPLICA_SET)
            .unwrap();
        tx.open_table(meta::SUPER)
            .unwrap()
            .remove(meta::TOLERANCE)
            .unwrap();
        tx.commit().unwrap();
    }
    for d in &tp.disks {
        std::fs::copy(&tmp, disk::meta_path(d)).unwrap();
    }
}

#[test]
fn pools_with_a_replica_on_every_disk_open_and_converge() {
    let tp = TestPool::new(6, "rs:4+2", 16384);
    let files = sample(4);
    {
        let fs = tp.open();
        for (name, data) in &files {
            put_file(&fs, name, data);
        }
        // An override of higher tolerance, which the legacy pool does not count.
        let (d, _) = fs
            .mknod(ROOT_INO, b"d", Kind::Dir, 0o755, 0, 0, 0, b"")
            .unwrap();
        fs.setxattr(d, b"user.dynfs.policy", b"replicate:4", 0)
            .unwrap();
    }
    make_legacy(&tp);
    assert_eq!(files_on(&tp).len(), 6);
    {
        let fs = tp.open();
        let report = &fs.pool().open_report;
        assert_eq!(report.members, vec![1, 2, 3, 4, 5, 6]);
        // The scan finds replicate:4 (tolerance 3): four replicas.
        assert_eq!(fs.pool().meta_replicas_needed(), 4);
        assert_eq!(fs.pool().meta.replica_disks(), vec![1, 2, 3, 4]);
        for (name, data) in &files {
            assert_eq!(&get_file(&fs, name), data, "{name}");
        }
    }
    assert_eq!(files_on(&tp), vec![1, 2, 3, 4]);
    let fs = tp.open();
    assert_eq!(fs.pool().open_report.members, vec![1, 2, 3, 4]);
    assert!(fs.pool().open_report.resynced.is_empty());
}

#[test]
fn pool_open_no_gc_reports_replicas_too() {
    let tp = TestPool::new(4, "replicate:3", 16384);
    let pool = Pool::open_no_gc(&tp.pool, std::sync::Arc::new(dynfs_core::io::StdIo)).unwrap();
    assert_eq!(pool.meta.replica_disks(), vec![1, 2, 3]);
    assert_eq!(pool.open_report.members, vec![1, 2, 3]);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 8, ..ProptestConfig::default() })]

    /// Random histories of writes, lost disks (up to M at a time, then back) and reopens:
    /// every file written stays readable, and the pool always ends with M + 1 replicas.
    #[test]
    fn random_losses_of_up_to_m_disks_lose_no_metadata(
        steps in prop::collection::vec((0usize..5, 0usize..5, 1usize..4), 1..6)
    ) {
        // rs:2+2 on 5 disks: M = 2.
        let tp = TestPool::new(5, "rs:2+2", 16384);
        let mut files: Vec<(String, Vec<u8>)> = Vec::new();
        for (step, (a, b, n)) in steps.iter().enumerate() {
            let lost: Vec<usize> = if a == b { vec![*a] } else { vec![*a, *b] };
            let hidden: Vec<(PathBuf, PathBuf)> =
                lost.iter().map(|&i| (tp.disks[i].clone(), hide(&tp.disks[i]))).collect();
            {
                let fs = tp.open();
                for (name, data) in &files {
                    prop_assert_eq!(&get_file(&fs, name), data);
                }
                prop_assert_eq!(fs.pool().meta.replica_disks().len(), 3);
                for k in 0..*n {
                    let name = format!("s{step}k{k}");
                    // Fragments need four disks: larger files only while one is missing.
                    let big = k == 2 && lost.len() == 1;
                    let data = bytes((step * 10 + k) as u64, if big { 40_000 } else { 500 });
                    put_file(&fs, &name, &data);
                    files.push((name, data));
                }
            }
            for (d, h) in hidden {
                std::fs::rename(h, d).unwrap();
            }
        }
        let fs = tp.open();
        for (name, data) in &files {
            prop_assert_eq!(&get_file(&fs, name), data);
        }
        drop(fs);
        prop_assert_eq!(files_on(&tp).len(), 3);
    }
}

#[test]
fn placement_prefers_health_then_current_holders_then_spreading() {
    use dynfs_core::pool::{choose_meta_disks, MetaCandidate};
    let c = |id, tier, device| MetaCandidate { id, tier, device };
    // Spread over devices first among new choices: 1 and 3 are on device 10, 2 on 20.
    let cands = [c(1, 0, 10), c(3, 0, 10), c(2, 0, 20), c(4, 0, 30)];
    assert_eq!(choose_meta_disks(&cands, &[], 3), vec![1, 2, 4]);
    // Current holders stay (no move when a disk is added).
    assert_eq!(choose_meta_disks(&cands, &[1, 3], 2), vec![1, 3]);
    // A healthier disk wins over a holder on a draining disk.
    let cands = [c(1, 3, 1), c(2, 0, 2), c(3, 0, 3), c(4, 2, 4)];
    assert_eq!(choose_meta_disks(&cands, &[1, 2], 2), vec![2, 3]);
    // Too few candidates: all of them, in tier order.
    assert_eq!(choose_meta_disks(&cands, &[], 9), vec![1, 2, 3, 4]);
    assert_eq!(choose_meta_disks(&cands, &[], 3), vec![2, 3, 4]);
    assert!(choose_meta_disks(&[], &[1], 2).is_empty());
}
