//! Targeted vfs core behaviour: POSIX namespace rules, open-unlinked files, sparse and empty
//! files, the fsync journal and crash recovery, persistence.
#![expect(
    clippy::expect_used,
    reason = "test helpers fail loudly on setup errors"
)]
#![expect(
    clippy::cast_possible_truncation,
    reason = "test sizes fit in every integer type used"
)]

use keibi::id::ROOT_INO;
use keibi::limits::CHUNK_BYTES;
use keibi::store::Cf;
use keibi::tree::Kind;
use keibi::vfs::{Error, OpenFlags, RenameMode, Seek, SetAttr, TimeSet};

use keibi::testing::{self as common, BoxError, ME, noise};

type TestResult = Result<(), BoxError>;

fn put_file(vfs: &keibi::vfs::Vfs, parent: u64, name: &str, data: &[u8]) -> u64 {
    keibi::testing::put_file(vfs, parent, name, data).expect("put_file")
}

fn read_all(vfs: &keibi::vfs::Vfs, ino: u64) -> Vec<u8> {
    keibi::testing::read_all(vfs, ino).expect("read_all")
}

fn count(backend: &dyn keibi::store::Backend, cf: Cf) -> usize {
    common::count_entries(backend, cf).expect("scan")
}

#[test]
fn rename_follows_posix_rules() -> TestResult {
    let fx = common::mem().expect("fixture");
    let v = &fx.vfs;
    let a = v.mkdir(ROOT_INO, b"a", 0o755, ME)?;
    let b = v.mkdir(a.ino, b"b", 0o755, ME)?;
    put_file(v, ROOT_INO, "x", b"xx");
    put_file(v, ROOT_INO, "y", b"yyy");
    assert!(matches!(
        v.rename(ROOT_INO, b"a", b.ino, b"a2", RenameMode::Replace),
        Err(Error::Invalid(_))
    ));
    assert!(matches!(
        v.rename(ROOT_INO, b"x", ROOT_INO, b"y", RenameMode::NoReplace),
        Err(Error::Exists)
    ));
    assert!(matches!(
        v.rename(ROOT_INO, b"x", ROOT_INO, b"a", RenameMode::Replace),
        Err(Error::IsDir)
    ));
    assert!(matches!(
        v.rename(ROOT_INO, b"a", ROOT_INO, b"x", RenameMode::Replace),
        Err(Error::NotDir)
    ));
    v.rename(ROOT_INO, b"x", ROOT_INO, b"y", RenameMode::Exchange)?;
    assert_eq!(read_all(v, v.lookup(ROOT_INO, b"x")?.ino), b"yyy");
    assert_eq!(read_all(v, v.lookup(ROOT_INO, b"y")?.ino), b"xx");
    v.rename(ROOT_INO, b"x", a.ino, b"moved", RenameMode::Replace)?;
    assert!(matches!(v.lookup(ROOT_INO, b"x"), Err(Error::NotFound)));
    assert_eq!(read_all(v, v.lookup(a.ino, b"moved")?.ino), b"yyy");
    // A non-empty directory cannot be replaced; an empty one can.
    let c = v.mkdir(ROOT_INO, b"c", 0o755, ME)?;
    assert!(matches!(
        v.rename(ROOT_INO, b"c", ROOT_INO, b"a", RenameMode::Replace),
        Err(Error::NotEmpty)
    ));
    v.rename(a.ino, b"b", ROOT_INO, b"c", RenameMode::Replace)?;
    assert_eq!(v.lookup(ROOT_INO, b"c")?.ino, b.ino);
    assert_ne!(c.ino, b.ino);
    assert_eq!(v.getattr(a.ino)?.nlink, 2);
    assert_eq!(v.getattr(ROOT_INO)?.nlink, 4);
    Ok(())
}

#[test]
fn names_and_links_are_checked() -> TestResult {
    let fx = common::mem().expect("fixture");
    let v = &fx.vfs;
    let long = vec![b'n'; 255];
    put_file(v, ROOT_INO, std::str::from_utf8(&long)?, b"");
    assert!(matches!(
        v.mkdir(ROOT_INO, &vec![b'n'; 256], 0o755, ME),
        Err(Error::NameTooLong)
    ));
    assert!(matches!(
        v.mkdir(ROOT_INO, b"a/b", 0o755, ME),
        Err(Error::Invalid(_))
    ));
    let f = v.lookup(ROOT_INO, &long)?;
    assert!(matches!(
        v.link(f.ino, ROOT_INO, b"hard"),
        Err(Error::NotPermitted(_))
    ));
    let s = v.symlink(ROOT_INO, b"s", b"../target", ME)?;
    assert_eq!(s.kind, Kind::Symlink);
    assert_eq!(v.readlink(s.ino)?, b"../target");
    assert!(matches!(
        v.unlink(ROOT_INO, b"missing"),
        Err(Error::NotFound)
    ));
    let d = v.mkdir(ROOT_INO, b"d", 0o2775, ME)?;
    let sub = v.mkdir(d.ino, b"sub", 0o755, keibi::vfs::Creator { uid: 5, gid: 6 })?;
    assert_eq!(
        sub.gid, d.gid,
        "set-group-id directories pass their group on"
    );
    assert_eq!(sub.perm & 0o2000, 0o2000);
    assert!(matches!(v.unlink(ROOT_INO, b"d"), Err(Error::IsDir)));
    assert!(matches!(v.rmdir(ROOT_INO, b"d"), Err(Error::NotEmpty)));
    Ok(())
}

#[test]
fn empty_files_stay_empty() -> TestResult {
    let fx = common::mem().expect("fixture");
    let v = &fx.vfs;
    let ino = put_file(v, ROOT_INO, "e", b"");
    assert_eq!(v.getattr(ino)?.size, 0);
    assert!(read_all(v, ino).is_empty());
    let ino2 = put_file(v, ROOT_INO, "f", b"content");
    v.setattr(
        ino2,
        &SetAttr {
            size: Some(0),
            ..SetAttr::default()
        },
    )?;
    assert!(read_all(v, ino2).is_empty());
    let fh = v.open(
        ino2,
        OpenFlags {
            truncate: true,
            ..OpenFlags::default()
        },
    )?;
    v.release(fh)?;
    assert_eq!(v.getattr(ino2)?.size, 0);
    Ok(())
}

#[test]
fn open_unlinked_file_stays_readable_until_release() -> TestResult {
    let fx = common::mem().expect("fixture");
    let v = &fx.vfs;
    let data = noise(3 * CHUNK_BYTES, 1);
    let ino = put_file(v, ROOT_INO, "f", &data);
    let fh = v.open(ino, OpenFlags::default())?;
    v.unlink(ROOT_INO, b"f")?;
    assert!(matches!(v.lookup(ROOT_INO, b"f"), Err(Error::NotFound)));
    assert_eq!(v.read(fh, 0, 100)?, data[..100]);
    let plan = keibi::gc::GcPlan::compute(&fx.chunks, &|| v.staged_chunks())?;
    assert!(
        plan.doomed.is_empty(),
        "chunks of an open file must survive gc"
    );
    drop(plan);
    v.release(fh)?;
    let plan = keibi::gc::GcPlan::compute(&fx.chunks, &|| v.staged_chunks())?;
    assert_eq!(
        plan.doomed.len(),
        3,
        "after the last close the content is garbage"
    );
    Ok(())
}

#[test]
fn sparse_files_read_zeros_and_store_one_zero_chunk() -> TestResult {
    let fx = common::mem().expect("fixture");
    let v = &fx.vfs;
    let (attr, fh) = v.create(ROOT_INO, b"sparse", 0o644, ME, OpenFlags::default())?;
    let far = 10 * CHUNK_BYTES as u64 + 5;
    v.write(fh, far, b"end")?;
    v.release(fh)?;
    assert_eq!(v.getattr(attr.ino)?.size, far + 3);
    let data = read_all(v, attr.ino);
    assert!(data[..far as usize].iter().all(|b| *b == 0));
    assert_eq!(&data[far as usize..], b"end");
    // Ten full zero chunks share one stored chunk; plus the last chunk.
    assert_eq!(count(fx.backend.as_ref(), Cf::ChunkIndex), 2);
    // Extending by truncate adds a hole too.
    v.setattr(
        attr.ino,
        &SetAttr {
            size: Some(far + 3 + 2 * CHUNK_BYTES as u64),
            ..SetAttr::default()
        },
    )?;
    let data = read_all(v, attr.ino);
    assert_eq!(&data[far as usize..far as usize + 3], b"end");
    assert!(data[far as usize + 3..].iter().all(|b| *b == 0));
    Ok(())
}

#[test]
fn times_can_be_set_and_omitted() -> TestResult {
    let fx = common::mem().expect("fixture");
    let v = &fx.vfs;
    let ino = put_file(v, ROOT_INO, "t", b"x");
    let t = keibi::tree::Timestamp {
        secs: 1_000_000,
        nanos: 5,
    };
    let before = v.getattr(ino)?;
    let a = v.setattr(
        ino,
        &SetAttr {
            mtime: Some(TimeSet::At(t)),
            ..SetAttr::default()
        },
    )?;
    assert_eq!(a.mtime, t);
    assert_eq!(a.atime, before.atime, "an omitted time stays");
    assert!(a.ctime >= before.ctime);
    let a = v.setattr(
        ino,
        &SetAttr {
            mode: Some(0o4755),
            uid: Some(3),
            gid: Some(4),
            ..SetAttr::default()
        },
    )?;
    assert_eq!((a.perm, a.uid, a.gid), (0o4755, 3, 4));
    Ok(())
}

#[test]
fn small_fsynced_writes_use_the_journal_and_survive_a_crash() -> TestResult {
    let dir = tempfile::tempdir()?;
    let data = noise(4 * CHUNK_BYTES, 2);
    let mut expect = data.clone();
    let ino = {
        let fx = common::rocks(dir.path()).expect("fixture");
        let ino = put_file(&fx.vfs, ROOT_INO, "db", &data);
        let chunks_before = count(fx.backend.as_ref(), Cf::ChunkIndex);
        let fh = fx.vfs.open(ino, OpenFlags::default())?;
        for i in 0..64u64 {
            let off = (i * 97_003) % (data.len() as u64 - 4096);
            let page = noise(4096, 100 + i);
            fx.vfs.write(fh, off, &page)?;
            expect[off as usize..off as usize + 4096].copy_from_slice(&page);
            if i % 16 == 15 {
                fx.vfs.fsync(fh)?;
            }
        }
        assert!(
            count(fx.backend.as_ref(), Cf::Journal) > 0,
            "fsync of small writes goes to the journal"
        );
        assert_eq!(
            count(fx.backend.as_ref(), Cf::ChunkIndex),
            chunks_before,
            "fsync of small writes seals no chunk"
        );
        assert_eq!(fx.vfs.read(fh, 0, expect.len() as u32)?, expect);
        // Crash: no release, no shutdown; the store closes as a killed process's would.
        ino
    };
    let fx = common::rocks(dir.path()).expect("fixture");
    assert_eq!(
        count(fx.backend.as_ref(), Cf::Journal),
        0,
        "recovery folds the journal"
    );
    assert_eq!(read_all(&fx.vfs, ino), expect, "every fsynced byte is back");
    let report = fx.verify_all();
    assert_eq!(report.findings_total, 0, "{:?}", report.findings);
    Ok(())
}

/// A chunk whose index entry was lost (a commit interrupted between flushing chunk bodies
/// and their index) is harmless when nothing references it, and a finding when a record does.
#[test]
fn verify_tells_orphan_chunks_from_unindexed_referenced_ones() -> TestResult {
    let fx = common::mem()?;
    let run = || fx.verify_all();
    let orphan = fx.chunks.put(b"content no record refers to")?;
    let ino = put_file(&fx.vfs, ROOT_INO, "f", b"content a record refers to");
    let used = keibi::id::ChunkId::of(b"content a record refers to");
    assert_eq!(read_all(&fx.vfs, ino), b"content a record refers to");

    let mut batch = keibi::store::Batch::new();
    batch.delete(Cf::ChunkIndex, orphan.0.to_vec());
    fx.backend
        .write(batch, keibi::store::Durability::Buffered)?;
    let report = run();
    assert_eq!(report.findings_total, 0, "{:?}", report.findings);
    assert_eq!(report.orphan_chunks, 1);

    let mut batch = keibi::store::Batch::new();
    batch.delete(Cf::ChunkIndex, used.0.to_vec());
    fx.backend
        .write(batch, keibi::store::Durability::Buffered)?;
    let report = run();
    assert_eq!(report.findings_total, 1, "{:?}", report.findings);
    assert_eq!(report.findings[0].kind, "unindexed-chunk");
    assert_eq!(report.orphan_chunks, 1);
    Ok(())
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 24, ..proptest::prelude::ProptestConfig::default() })]

    /// Small writes into a committed file (the overlay path), with fsyncs and closes between
    /// them, read back as a plain byte array model says.
    #[test]
    fn small_writes_into_committed_chunks_match_a_model(
        ops in proptest::collection::vec((0u64..(3 * CHUNK_BYTES as u64 - 70_000), 1usize..70_000, proptest::prelude::any::<u8>(), 0u8..8), 1..60)
    ) {
        let fx = common::mem().expect("fixture");
        let v = &fx.vfs;
        let mut model = noise(3 * CHUNK_BYTES, 11);
        let ino = put_file(v, ROOT_INO, "f", &model);
        let mut fh = v.open(ino, OpenFlags::default()).expect("open");
        for (off, len, byte, action) in ops {
            // Cluster writes so that they overlap and touch each other.
            let off = off % 4 * 40_000 + off % 3_000;
            let data: Vec<u8> = (0..len).map(|i| byte ^ (i as u8)).collect();
            v.write(fh, off, &data).expect("write");
            model[off as usize..off as usize + len].copy_from_slice(&data);
            match action {
                0 => v.fsync(fh).expect("fsync"),
                1 => {
                    v.release(fh).expect("release");
                    fh = v.open(ino, OpenFlags::default()).expect("open");
                }
                _ => {}
            }
            let got = v.read(fh, 0, model.len() as u32).expect("read");
            proptest::prop_assert!(got == model, "content differs");
        }
        v.release(fh).expect("release");
        proptest::prop_assert!(read_all(v, ino) == model);
    }
}

#[test]
fn committed_files_persist_across_reopen() -> TestResult {
    let dir = tempfile::tempdir()?;
    let data = noise(CHUNK_BYTES + 77, 3);
    {
        let fx = common::rocks(dir.path()).expect("fixture");
        let d = fx.vfs.mkdir(ROOT_INO, b"dir", 0o750, ME)?;
        put_file(&fx.vfs, d.ino, "file", &data);
        fx.vfs.symlink(d.ino, b"link", b"file", ME)?;
        fx.vfs.shutdown()?;
    }
    let fx = common::rocks(dir.path()).expect("fixture");
    let d = fx.vfs.lookup(ROOT_INO, b"dir")?;
    assert_eq!(d.perm, 0o750);
    let f = fx.vfs.lookup(d.ino, b"file")?;
    assert_eq!(read_all(&fx.vfs, f.ino), data);
    assert_eq!(
        fx.vfs.readlink(fx.vfs.lookup(d.ino, b"link")?.ino)?,
        b"file"
    );
    Ok(())
}

#[test]
fn seek_data_and_hole_follow_the_chunks_that_read_as_zeros() -> TestResult {
    let fx = common::mem().expect("fixture");
    let v = &fx.vfs;
    let c = CHUNK_BYTES as u64;
    let (attr, fh) = v.create(ROOT_INO, b"sparse", 0o644, ME, OpenFlags::default())?;
    // Data in chunk 0, chunk 10 and the last (partial) chunk 14; chunk 12 written as zeros.
    v.write(fh, 100, b"head")?;
    v.write(fh, 10 * c + 7, b"middle")?;
    v.write(fh, 12 * c, &vec![0u8; CHUNK_BYTES])?;
    v.write(fh, 14 * c + 10, b"tail")?;
    let size = 14 * c + 14;
    let check = |fh: u64, zeros_are_holes: bool| -> TestResult {
        assert_eq!(v.seek(fh, 0, Seek::Data)?, 0);
        assert_eq!(v.seek(fh, 50, Seek::Hole)?, c, "chunk 1 is a hole");
        assert_eq!(
            v.seek(fh, c + 5, Seek::Hole)?,
            c + 5,
            "inside a hole, the offset itself"
        );
        assert_eq!(v.seek(fh, c + 5, Seek::Data)?, 10 * c);
        assert_eq!(v.seek(fh, 10 * c + 3, Seek::Data)?, 10 * c + 3);
        assert_eq!(v.seek(fh, 10 * c, Seek::Hole)?, 11 * c);
        let after_11 = if zeros_are_holes { 14 * c } else { 12 * c };
        assert_eq!(v.seek(fh, 11 * c, Seek::Data)?, after_11);
        assert_eq!(v.seek(fh, 14 * c, Seek::Hole)?, size, "the end is a hole");
        assert!(matches!(v.seek(fh, size, Seek::Data), Err(Error::PastEnd)));
        assert!(matches!(
            v.seek(fh, size + 9, Seek::Hole),
            Err(Error::PastEnd)
        ));
        Ok(())
    };
    // Staged, chunk 12 is a buffer of zeros: data until committed.
    check(fh, false)?;
    v.release(fh)?;
    assert_eq!(v.getattr(attr.ino)?.size, size);
    // Committed, it is the zero chunk, a hole like the chunks never written.
    let fh = v.open(attr.ino, OpenFlags::default())?;
    check(fh, true)?;
    // Holes take no blocks, open or not; a hole written into, staged, counts as data.
    let data_bytes = size - 12 * c;
    assert_eq!(v.getattr(attr.ino)?.blocks, data_bytes.div_ceil(512));
    v.write(fh, 3 * c, b"x")?;
    assert_eq!(v.getattr(attr.ino)?.blocks, (data_bytes + c).div_ceil(512));
    // Past a truncate that extends the file, the new end reads as zeros: a hole.
    v.setattr(
        attr.ino,
        &SetAttr {
            size: Some(20 * c),
            ..SetAttr::default()
        },
    )?;
    assert_eq!(v.seek(fh, 14 * c + 20, Seek::Hole)?, 15 * c);
    assert_eq!(
        v.getattr(attr.ino)?.blocks,
        (4 * c).div_ceil(512),
        "chunks 0, 3, 10 and 14 (now whole) hold data; the new end takes no blocks"
    );
    assert!(matches!(
        v.seek(fh, 15 * c, Seek::Data),
        Err(Error::PastEnd)
    ));
    v.release(fh)?;
    Ok(())
}

#[test]
fn sequential_writes_hold_a_bounded_number_of_chunks_in_memory() -> TestResult {
    let dir = tempfile::tempdir()?;
    let fx = common::rocks(dir.path()).expect("fixture");
    let (attr, fh) = fx
        .vfs
        .create(ROOT_INO, b"big", 0o644, ME, OpenFlags::default())?;
    let piece = noise(1 << 20, 9);
    let mut peak = 0;
    for i in 0..256u64 {
        fx.vfs.write(fh, i << 20, &piece)?;
        peak = peak.max(fx.vfs.staged_bytes());
    }
    fx.vfs.release(fh)?;
    // Full chunks go to the seal pool at once; at most its queue and workers plus the chunk
    // being written are in memory, however large the file.
    let bound = (keibi::limits::SEAL_QUEUE_JOBS_MAX + 8) * CHUNK_BYTES;
    assert!(
        peak <= bound as u64,
        "peak staged {peak} bytes over {bound}"
    );
    assert_eq!(fx.vfs.getattr(attr.ino)?.size, 256 << 20);
    assert_eq!(fx.vfs.staged_bytes(), 0, "everything committed at close");
    Ok(())
}

#[test]
fn large_sequential_write_reads_back() {
    let fx = common::mem().expect("fixture");
    let data = noise(40 * CHUNK_BYTES + 12345, 4);
    let ino = put_file(&fx.vfs, ROOT_INO, "big", &data);
    assert_eq!(read_all(&fx.vfs, ino), data);
    assert_eq!(count(fx.backend.as_ref(), Cf::ChunkIndex), 41);
}
