//! gc: safe under concurrent writers, frees disk space, refuses to sweep after a failed mark,
//! and runs on its own in a mount.
#![expect(
    clippy::expect_used,
    reason = "test helpers fail loudly on setup errors"
)]
#![expect(
    clippy::cast_possible_truncation,
    reason = "test sizes fit in every integer type used"
)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use keibi::gc::auto::AutoGc;
use keibi::gc::{self, GcPlan};
use keibi::id::ChunkId;
use keibi::id::ROOT_INO;
use keibi::limits::CHUNK_BYTES;
use keibi::store::{Batch, Cf, Durability};
use keibi::vfs::{OpenFlags, RenameMode, Vfs};

use keibi::testing::{self as common, BoxError, ME, noise};

type TestResult = Result<(), BoxError>;

fn put_file(vfs: &keibi::vfs::Vfs, parent: u64, name: &str, data: &[u8]) -> u64 {
    keibi::testing::put_file(vfs, parent, name, data).expect("put_file")
}

fn read_all(vfs: &keibi::vfs::Vfs, ino: u64) -> Vec<u8> {
    keibi::testing::read_all(vfs, ino).expect("read_all")
}

/// One writer: rewrites, renames and deletes its own files; returns what they should hold.
fn writer(vfs: &Vfs, me: usize, stop: &AtomicBool) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    let dir = vfs
        .mkdir(ROOT_INO, format!("w{me}").as_bytes(), 0o755, ME)
        .expect("mkdir")
        .ino;
    let mut round = 0u64;
    while !stop.load(Ordering::Relaxed) && round < 400 {
        round += 1;
        let name = format!("f{}", round % 7);
        // Content repeats across writers and rounds, so dedup hits chunks gc considers dead.
        let len = (round as usize * 7919) % (3 * CHUNK_BYTES) + 1;
        let data = noise(len, round % 5);
        match round % 5 {
            0 => {
                if files.remove(&name).is_some() {
                    vfs.unlink(dir, name.as_bytes()).expect("unlink");
                }
            }
            1 if files.contains_key(&name) => {
                let to = format!("r{}", round % 3);
                vfs.rename(
                    dir,
                    name.as_bytes(),
                    dir,
                    to.as_bytes(),
                    RenameMode::Replace,
                )
                .expect("rename");
                let v = files.remove(&name).expect("content");
                files.insert(to, v);
            }
            _ => {
                if files.contains_key(&name) {
                    let ino = vfs.lookup(dir, name.as_bytes()).expect("lookup").ino;
                    let fh = vfs
                        .open(
                            ino,
                            OpenFlags {
                                truncate: true,
                                ..OpenFlags::default()
                            },
                        )
                        .expect("open");
                    vfs.write(fh, 0, &data).expect("write");
                    vfs.release(fh).expect("release");
                } else {
                    put_file(vfs, dir, &name, &data);
                }
                files.insert(name, data);
            }
        }
    }
    files
}

#[test]
fn gc_under_concurrent_writers_loses_nothing() -> TestResult {
    let dir = tempfile::tempdir()?;
    let fx = common::rocks(dir.path()).expect("fixture");
    let vfs = Arc::new(fx.vfs);
    let stop = Arc::new(AtomicBool::new(false));
    let handles: Vec<_> = (0..2)
        .map(|me| {
            let (vfs, stop) = (Arc::clone(&vfs), Arc::clone(&stop));
            std::thread::spawn(move || writer(&vfs, me, &stop))
        })
        .collect();
    let mut deleted = 0;
    let mut runs = 0;
    // gc runs back to back for as long as the writers write (bounded in count).
    while handles.iter().any(|h| !h.is_finished()) && runs < 10_000 {
        let plan = GcPlan::compute(&fx.chunks, &|| vfs.staged_chunks())?;
        deleted += plan.execute()?.deleted_chunks;
        runs += 1;
    }
    stop.store(true, Ordering::Relaxed);
    eprintln!("{runs} gc runs during the writes deleted {deleted} chunks");
    assert!(runs > 1, "gc must overlap the writers");
    let expected: Vec<BTreeMap<String, Vec<u8>>> = handles
        .into_iter()
        .map(|h| h.join().expect("writer"))
        .collect();
    let plan = GcPlan::compute(&fx.chunks, &|| vfs.staged_chunks())?;
    deleted += plan.execute()?.deleted_chunks;
    assert!(
        deleted > 0,
        "the writers made garbage, gc must have collected some"
    );
    for (me, files) in expected.iter().enumerate() {
        let d = vfs.lookup(ROOT_INO, format!("w{me}").as_bytes())?.ino;
        for (name, data) in files {
            let ino = vfs.lookup(d, name.as_bytes())?.ino;
            assert!(
                read_all(&vfs, ino) == *data,
                "w{me}/{name} differs after gc"
            );
        }
    }
    let report = keibi::verify::run(
        fx.backend.as_ref(),
        fx.chunks.cipher(),
        keibi::verify::Options {
            sample_percent: 100,
            progress: false,
        },
    );
    assert_eq!(report.findings_total, 0, "{:?}", report.findings);
    Ok(())
}

#[test]
fn gc_frees_disk_space() -> TestResult {
    let dir = tempfile::tempdir()?;
    let fx = common::rocks(dir.path()).expect("fixture");
    for i in 0..8 {
        put_file(
            &fx.vfs,
            ROOT_INO,
            &format!("f{i}"),
            &noise(8 * CHUNK_BYTES, i),
        );
    }
    fx.vfs.sync_all()?;
    fx.backend.flush()?;
    for i in 0..8 {
        fx.vfs.unlink(ROOT_INO, format!("f{i}").as_bytes())?;
    }
    let plan = GcPlan::compute(&fx.chunks, &|| fx.vfs.staged_chunks())?;
    assert_eq!(plan.doomed.len(), 64);
    assert!(plan.doomed_bytes() >= 64 * CHUNK_BYTES as u64);
    let report = plan.execute()?;
    assert_eq!(report.deleted_chunks, 64);
    assert!(
        report.disk_bytes_before >= 32 << 20,
        "before: {}",
        report.disk_bytes_before
    );
    assert!(
        report.disk_bytes_after < report.disk_bytes_before / 8,
        "{report:?}"
    );
    Ok(())
}

#[test]
fn gc_deletes_nothing_when_the_mark_fails() -> TestResult {
    let fx = common::mem().expect("fixture");
    put_file(&fx.vfs, ROOT_INO, "a", &noise(1000, 1));
    let mut batch = Batch::new();
    batch.put(Cf::Files, vec![0u8; 16], b"\x01garbage".to_vec());
    fx.backend.write(batch, Durability::Buffered)?;
    match GcPlan::compute(&fx.chunks, &Vec::new) {
        Err(gc::Error::MarkFailed(_)) => {}
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("gc planned a sweep over a failed mark"),
    }
    assert!(
        matches!(
            GcPlan::compute(&fx.chunks, &Vec::new),
            Err(gc::Error::MarkFailed(_))
        ),
        "protection was released"
    );
    Ok(())
}

/// Chunk frames without an index entry, as a crash between the flushes of chunks written
/// unlogged leaves them: gc deletes those no record references and keeps the others.
#[test]
fn gc_deletes_frames_left_without_an_index_entry() -> TestResult {
    let dir = tempfile::tempdir()?;
    let fx = common::rocks(dir.path()).expect("fixture");
    let kept = noise(2 * CHUNK_BYTES + 100, 1);
    let kept_ino = put_file(&fx.vfs, ROOT_INO, "kept", &kept);
    // One frame of several pieces and one small frame stored whole, neither referenced.
    let orphan_big = fx.chunks.put(&noise(CHUNK_BYTES, 2))?;
    let orphan_small = fx.chunks.put(&noise(3000, 3))?;
    // And a chunk of `kept` that lost its index entry the same way.
    let kept_first = fx.chunks.put(&kept[..CHUNK_BYTES])?;
    let mut batch = Batch::new();
    for id in [orphan_big, orphan_small, kept_first] {
        batch.delete(Cf::ChunkIndex, id.0.to_vec());
    }
    fx.backend.write(batch, Durability::Buffered)?;
    fx.backend.flush()?;
    assert_eq!(fx.verify_all().orphan_chunks, 2);

    let plan = GcPlan::compute(&fx.chunks, &|| fx.vfs.staged_chunks())?;
    let mut planned = plan.orphans.clone();
    planned.sort();
    let mut expected = vec![orphan_big, orphan_small];
    expected.sort();
    assert_eq!(planned, expected);
    let report = plan.execute()?;
    assert_eq!(report.deleted_orphans, 2, "{report:?}");

    let after = fx.verify_all();
    assert_eq!(after.orphan_chunks, 0);
    assert!(
        fx.backend.get(Cf::Chunks, &orphan_big.0)?.is_none(),
        "the orphan's head is still stored"
    );
    let mut pieces = 0;
    fx.backend
        .scan(Cf::Chunks, &orphan_big.0, None, &mut |k, _| {
            if k.starts_with(&orphan_big.0) {
                pieces += 1;
            }
            std::ops::ControlFlow::Continue(())
        })?;
    assert_eq!(pieces, 0, "pieces of the orphan are still stored");
    assert!(
        fx.backend.get(Cf::Chunks, &kept_first.0)?.is_some(),
        "a referenced frame without an index entry was deleted"
    );
    assert!(read_all(&fx.vfs, kept_ino) == kept, "kept changed");
    // The next run finds nothing more to delete.
    let again = GcPlan::compute(&fx.chunks, &|| fx.vfs.staged_chunks())?;
    assert!(again.orphans.is_empty() && again.doomed.is_empty());
    Ok(())
}

/// Chunks of two files written in turn share blob files, so deleting one frees no blob file
/// whole: gc then relocates the other file's chunks to give the space back.
#[test]
fn gc_frees_the_space_of_chunks_stored_beside_live_ones() -> TestResult {
    let dir = tempfile::tempdir()?;
    let fx = common::rocks(dir.path()).expect("fixture");
    let a = fx
        .vfs
        .create(ROOT_INO, b"a", 0o644, ME, OpenFlags::default())?;
    let b = fx
        .vfs
        .create(ROOT_INO, b"b", 0o644, ME, OpenFlags::default())?;
    let mut kept = Vec::new();
    for i in 0..64u64 {
        let at = i * CHUNK_BYTES as u64;
        fx.vfs.write(a.1, at, &noise(CHUNK_BYTES, 1000 + i))?;
        let piece = noise(CHUNK_BYTES, 2000 + i);
        fx.vfs.write(b.1, at, &piece)?;
        kept.extend_from_slice(&piece);
    }
    fx.vfs.release(a.1)?;
    fx.vfs.release(b.1)?;
    fx.vfs.sync_all()?;
    fx.backend.flush()?;
    fx.vfs.unlink(ROOT_INO, b"a")?;
    let report = GcPlan::compute(&fx.chunks, &|| fx.vfs.staged_chunks())?.execute()?;
    assert_eq!(report.deleted_chunks, 64, "{report:?}");
    assert!(
        report.disk_bytes_after < report.disk_bytes_before * 2 / 3,
        "{report:?}"
    );
    assert!(read_all(&fx.vfs, b.0.ino) == kept, "b changed");
    Ok(())
}

/// The automatic gc of a mount: it deletes the chunks of a removed file on its own, keeps
/// those still referenced, does not run again while no record changes, and skips a run
/// while a manual one is active.
#[test]
fn automatic_gc_collects_the_chunks_of_a_removed_file() -> TestResult {
    let dir = tempfile::tempdir()?;
    let fx = common::rocks(dir.path()).expect("fixture");
    let gone = noise(3 * CHUNK_BYTES, 7);
    let kept = noise(2 * CHUNK_BYTES, 8);
    put_file(&fx.vfs, ROOT_INO, "gone", &gone);
    let kept_ino = put_file(&fx.vfs, ROOT_INO, "kept", &kept);
    let ids: Vec<ChunkId> = gone.chunks(CHUNK_BYTES).map(ChunkId::of).collect();
    let vfs = Arc::new(fx.vfs);
    let auto = AutoGc::start(Arc::clone(&vfs), Duration::from_millis(50))?;
    assert!(
        common::wait_until(30, || auto.last_run().is_some()),
        "no automatic run within 30 s"
    );
    for id in &ids {
        assert!(fx.chunks.contains(id)?, "a referenced chunk was deleted");
    }
    vfs.unlink(ROOT_INO, b"gone")?;
    assert!(
        common::wait_until(30, || ids
            .iter()
            .all(|id| !fx.chunks.contains(id).unwrap_or(true))),
        "the removed file's chunks are still stored: {:?}",
        auto.last_run()
    );
    // The run that deleted them has ended (its compaction included).
    assert!(
        common::wait_until(30, || auto.last_run().is_some_and(|r| r.deleted_chunks > 0)),
        "{:?}",
        auto.last_run()
    );
    let runs = auto.last_run().expect("ran").runs;
    std::thread::sleep(Duration::from_millis(500));
    let last = auto.last_run().expect("ran");
    assert_eq!(last.runs, runs, "gc ran again with no record changed");
    assert!(last.error.is_none(), "{last:?}");
    // While a manual run holds the store, a change makes the next automatic run a skip.
    let manual = GcPlan::compute(&fx.chunks, &|| vfs.staged_chunks())?;
    put_file(&vfs, ROOT_INO, "new", b"a change");
    assert!(
        common::wait_until(30, || auto.last_run().is_some_and(|r| r.skipped)),
        "{:?}",
        auto.last_run()
    );
    drop(manual);
    auto.stop();
    assert!(read_all(&vfs, kept_ino) == kept, "kept changed");
    Ok(())
}
