//! vfs core regressions found by the randomized tests, reviews and benchmarks: truncates
//! staged in an open file, two contents under one version vector, store errors in a listing,
//! a journal that fills, many files staging more than their total budget, fsyncs of random
//! writes that flushed the store or folded a journal that was not full.

use keibi::id::ROOT_INO;
use keibi::limits::{
    CHUNK_BYTES, JOURNAL_ENTRIES_PER_FILE_MAX, OVERLAY_BYTES_MAX, STAGED_BUFFERS_PER_FILE_MAX,
    STAGED_CHECK_WRITES,
};
use keibi::store::Cf;
use keibi::vfs::{OpenFlags, SetAttr};

use keibi::testing::{self as common, BoxError, ME, noise};

type TestResult = Result<(), BoxError>;

/// Opens `ino` with `O_TRUNC` and sets its size to `size`, both staged in the open file.
fn open_truncated_and_resized(v: &keibi::vfs::Vfs, ino: u64, size: u64) -> Result<u64, BoxError> {
    let fh = v.open(
        ino,
        OpenFlags {
            append: false,
            truncate: true,
        },
    )?;
    v.setattr(
        ino,
        &SetAttr {
            size: Some(size),
            ..SetAttr::default()
        },
    )?;
    Ok(fh)
}

#[test]
fn a_file_truncated_to_zero_and_extended_reads_zeros_before_any_commit() -> TestResult {
    // While the file stays open, nothing of the content it had before the truncate may show
    // through: not in the extended range, not around a small write.
    let fx = common::mem()?;
    let v = &fx.vfs;
    for (old_len, new_len) in [
        (6usize, 6u64),
        (100, 40),
        (CHUNK_BYTES + 10, CHUNK_BYTES as u64 + 10),
    ] {
        let name = format!("f{old_len}");
        let ino = common::put_file(v, ROOT_INO, &name, &noise(old_len, 5))?;
        let fh = open_truncated_and_resized(v, ino, new_len)?;
        let mut want = vec![0u8; usize::try_from(new_len)?];
        assert_eq!(
            v.read(fh, 0, u32::try_from(new_len)?)?,
            want,
            "extended {name}"
        );
        v.write(fh, 1, b"x")?;
        want[1] = b'x';
        assert_eq!(
            v.read(fh, 0, u32::try_from(new_len)?)?,
            want,
            "written {name}"
        );
        v.release(fh)?;
        assert_eq!(common::read_all(v, ino)?, want, "committed {name}");
    }
    Ok(())
}

#[test]
fn journal_entries_of_a_truncated_chunk_do_not_come_back() -> TestResult {
    // An fsynced small write goes to the journal; a truncate that cuts its chunk off and a
    // growth back over it, committed, must leave zeros there after a restart, not the
    // journaled bytes replayed onto the new content.
    let dir = tempfile::tempdir()?;
    let len = 2 * CHUNK_BYTES;
    let ino = {
        let fx = common::rocks(dir.path()).expect("fixture");
        let v = &fx.vfs;
        let ino = common::put_file(v, ROOT_INO, "db", &noise(len, 8))?;
        let fh = v.open(ino, OpenFlags::default())?;
        v.write(fh, CHUNK_BYTES as u64 + 10, &[7u8; 4096])?;
        v.fsync(fh)?;
        assert!(common::count_entries(fx.backend.as_ref(), Cf::Journal)? > 0);
        // An open with O_TRUNC while the first handle stays open: the truncate is staged,
        // not committed, until the growth back commits.
        let fh2 = open_truncated_and_resized(v, ino, len as u64)?;
        v.fsync(fh)?;
        v.release(fh2)?;
        v.release(fh)?;
        ino
    };
    let fx = common::rocks(dir.path()).expect("fixture");
    let got = common::read_all(&fx.vfs, ino)?;
    assert!(
        got == vec![0u8; len],
        "the truncated file reads zeros after a restart"
    );
    Ok(())
}

#[test]
fn two_contents_under_one_version_settle_on_one() -> TestResult {
    // Two peers that merged the same concurrent pair, each while holding a different version
    // of the other's, can each keep its own side under the same merged vector (seen in the
    // randomized replication schedules: a directory named differently on each peer, with
    // equal versions). Exchanging the two records must settle both peers on one of them.
    let (a, b) = (common::mem()?, common::mem()?);
    let d = a.vfs.mkdir(ROOT_INO, b"d", 0o755, ME)?;
    let id = a.vfs.tables().file_of_ino(d.ino)?.ok_or("no id")?;
    let base = a.vfs.tables().record(id)?.ok_or("no record")?;
    assert!(!b.vfs.apply_remote(1, &base, true)?.outcome.waits());
    let third = 777;
    let mut merged = base.version.clone();
    merged.0.push((third, 1));
    for (peer, name) in [(&a, b"x"), (&b, b"y")] {
        let mut rec = base.clone();
        rec.name = name.to_vec();
        rec.version = merged.clone();
        assert!(!peer.vfs.apply_remote(third, &rec, true)?.outcome.waits());
    }
    let from_a = a.vfs.tables().record(id)?.ok_or("no record")?;
    let from_b = b.vfs.tables().record(id)?.ok_or("no record")?;
    assert_eq!(from_a.version, from_b.version);
    assert_ne!(from_a.name, from_b.name);
    b.vfs.apply_remote(1, &from_a, true)?;
    a.vfs.apply_remote(2, &from_b, true)?;
    let (ra, rb) = (
        a.vfs.tables().record(id)?.ok_or("no record")?,
        b.vfs.tables().record(id)?.ok_or("no record")?,
    );
    assert_eq!((&ra.name, ra.parent), (&rb.name, rb.parent));
    let listed = |v: &keibi::vfs::Vfs| -> Result<Vec<Vec<u8>>, BoxError> {
        let names = v
            .readdir(ROOT_INO, 0)?
            .into_iter()
            .map(|e| e.name)
            .filter(|n| n != b"." && n != b"..")
            .collect();
        Ok(names)
    };
    assert_eq!(listed(&a.vfs)?, listed(&b.vfs)?);
    assert_eq!(listed(&a.vfs)?.len(), 1, "one directory, under one name");
    Ok(())
}

#[test]
fn an_entry_whose_record_cannot_be_read_fails_the_listing_instead_of_vanishing() -> TestResult {
    // A store error reading one child's record must reach the reader: hiding the entry
    // would make the file look deleted.
    let fx = common::mem()?;
    common::put_file(&fx.vfs, ROOT_INO, "a", b"1")?;
    let b = common::put_file(&fx.vfs, ROOT_INO, "b", b"2")?;
    let id = fx.vfs.tables().file_of_ino(b)?.ok_or("no id")?;
    let failing = std::sync::Arc::new(common::FailingBackend::new(std::sync::Arc::clone(
        &fx.backend,
    )));
    let backend: std::sync::Arc<dyn keibi::store::Backend> = failing.clone();
    let remounted = common::reopen_mem(&backend)?;
    let v = &remounted.vfs;
    assert_eq!(v.readdir(ROOT_INO, 0)?.len(), 4, "., .., a and b");
    failing.fail_reads_of(Cf::Files, &id.to_be_bytes());
    let listed = v.readdir(ROOT_INO, 0);
    assert!(
        listed.is_err(),
        "the listing failed instead of leaving b out: {listed:?}"
    );
    Ok(())
}

#[test]
fn a_full_journal_is_folded_and_fsyncs_journal_again() -> TestResult {
    // A file kept open and written in small pieces with fsyncs (a database) fills its
    // journal. The fsync that finds it full must fold it (seal every chunk with entries), so
    // that later fsyncs journal again instead of sealing every chunk they touch.
    let fx = common::mem()?;
    let v = &fx.vfs;
    let chunks = 8usize;
    let mut model = noise(chunks * CHUNK_BYTES, 11);
    let ino = common::put_file(v, ROOT_INO, "db", &model)?;
    let fh = v.open(ino, OpenFlags::default())?;
    let ranges = 32usize;
    let rounds = usize::try_from(JOURNAL_ENTRIES_PER_FILE_MAX)? / ranges + 1;
    let mut write_round = |round: usize| -> TestResult {
        // Each round touches one chunk: the others keep their entries, clean.
        let base = (round % chunks) * CHUNK_BYTES;
        for r in 0..ranges {
            let at = base + r * 1024 + (round / chunks) % 512;
            let bytes = [u8::try_from(round % 251)?; 4];
            v.write(fh, at as u64, &bytes)?;
            model[at..at + 4].copy_from_slice(&bytes);
        }
        v.fsync(fh)?;
        Ok(())
    };
    for round in 0..rounds {
        write_round(round)?;
    }
    let left = common::count_entries(fx.backend.as_ref(), Cf::Journal)?;
    assert!(
        left == 0,
        "the fsync that found the journal full folded it: {left} entries left"
    );
    write_round(rounds)?;
    let journaled = common::count_entries(fx.backend.as_ref(), Cf::Journal)?;
    assert!(
        journaled == ranges,
        "the next fsync journals its {ranges} writes again: {journaled} entries"
    );
    v.release(fh)?;
    let got = common::read_all(v, ino)?;
    assert!(got == model, "the file reads every write");
    Ok(())
}

#[test]
fn many_files_written_at_random_stay_within_the_staged_budget() -> TestResult {
    // Each file alone stays far below its own bounds; together they pass the budget, which
    // must seal the largest instead of letting the total grow with the number of files.
    let fx = common::mem()?;
    let v = &fx.vfs;
    let budget = 1024 * 1024;
    v.set_staged_budget(budget);
    let (files, chunks) = (8usize, 16usize);
    let mut models = Vec::new();
    let mut handles = Vec::new();
    for i in 0..files {
        let model = noise(chunks * CHUNK_BYTES, 20 + u64::try_from(i)?);
        let ino = common::put_file(v, ROOT_INO, &format!("f{i}"), &model)?;
        handles.push((ino, v.open(ino, OpenFlags::default())?));
        models.push(model);
    }
    let mut peak = 0;
    // 288 KiB of small patches per chunk of every file, more than an overlay holds: each
    // chunk's overlay becomes a whole buffer, and every file holds all 16, below its own
    // bound: 64 MiB staged without the total bound.
    let patch = 12 * 1024;
    assert!(
        24 * patch > OVERLAY_BYTES_MAX,
        "the patches outgrow an overlay"
    );
    for round in 0..24usize {
        for c in 0..chunks {
            for (i, (_, fh)) in handles.iter().enumerate() {
                let at = c * CHUNK_BYTES + round * 20_000 + i * 512;
                let bytes = vec![u8::try_from((round * 31 + c + i) % 251)?; patch];
                v.write(*fh, at as u64, &bytes)?;
                models[i][at..at + bytes.len()].copy_from_slice(&bytes);
                peak = peak.max(v.staged_bytes());
            }
        }
    }
    // Slack: a chunk for each write between two checks, and one being relieved.
    let slack = (STAGED_CHECK_WRITES + 2) * CHUNK_BYTES as u64;
    assert!(
        peak <= budget + slack,
        "staged peaked at {peak} bytes over a budget of {budget}"
    );
    for ((ino, fh), model) in handles.into_iter().zip(&models) {
        v.release(fh)?;
        assert!(
            common::read_all(v, ino)? == *model,
            "file {ino} reads every write"
        );
    }
    Ok(())
}

#[test]
fn fsyncs_of_random_writes_do_not_flush_the_store() -> TestResult {
    // A database-like file: small writes at random, an fsync every 64. Chunks whose overlay
    // outgrows its bound become whole buffers, and past the per-file number of buffers the
    // lowest are sealed. Those chunks have journal entries; sealed unlogged, the next fsync's
    // record would refer to them and flush the memtables on every such fsync.
    let fx = common::mem()?;
    let counting = std::sync::Arc::new(common::FailingBackend::new(std::sync::Arc::clone(
        &fx.backend,
    )));
    let backend: std::sync::Arc<dyn keibi::store::Backend> = counting.clone();
    let remounted = common::reopen_mem(&backend)?;
    let v = &remounted.vfs;
    let chunks = 2 * STAGED_BUFFERS_PER_FILE_MAX + 8;
    let mut model = noise(chunks * CHUNK_BYTES, 33);
    let ino = common::put_file(v, ROOT_INO, "db", &model)?;
    let fh = v.open(ino, OpenFlags::default())?;
    let before = counting.persists();
    // Enough 4 KiB writes into every chunk to pass its overlay bound, interleaved over the
    // chunks as a random writer would.
    let per_chunk = OVERLAY_BYTES_MAX / 4096 + 4;
    let mut writes = 0usize;
    for round in 0..per_chunk {
        for c in 0..chunks {
            let at = c * CHUNK_BYTES + ((round * 37 + c * 11) % 120) * 4096;
            let bytes = vec![u8::try_from((round + c) % 251)?; 4096];
            v.write(fh, at as u64, &bytes)?;
            model[at..at + bytes.len()].copy_from_slice(&bytes);
            writes += 1;
            if writes % 64 == 0 {
                v.fsync(fh)?;
            }
        }
    }
    v.fsync(fh)?;
    let flushed = counting.persists() - before;
    assert!(
        flushed == 0,
        "{writes} random writes with an fsync every 64 flushed the store {flushed} times"
    );
    v.release(fh)?;
    assert!(
        common::read_all(v, ino)? == model,
        "the file reads every write"
    );
    Ok(())
}

#[test]
fn a_journal_whose_chunks_are_sealed_as_it_goes_is_not_folded() -> TestResult {
    // Random writes with an fsync every 64 over more chunks than a file keeps buffers for:
    // chunks are sealed under memory pressure as the writes go, which deletes their journal
    // entries. The journal's fill must count the entries still on disk, not every entry
    // written since open, or after that many writes an fsync would reseal every chunk with
    // entries at once (a 0.4-0.9 s fsync in fio's random job).
    let fx = common::mem()?;
    let v = &fx.vfs;
    let chunks = 48usize;
    let mut model = noise(chunks * CHUNK_BYTES, 44);
    let ino = common::put_file(v, ROOT_INO, "db", &model)?;
    let fh = v.open(ino, OpenFlags::default())?;
    let writes = usize::try_from(JOURNAL_ENTRIES_PER_FILE_MAX)? + 4096;
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let (mut worst, mut journal_peak) = (0usize, 0usize);
    for w in 0..writes {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let block = usize::try_from(x % (chunks * CHUNK_BYTES / 4096) as u64)?;
        let at = block * 4096;
        let bytes = vec![u8::try_from(w % 251)?; 4096];
        v.write(fh, at as u64, &bytes)?;
        model[at..at + 4096].copy_from_slice(&bytes);
        if w % 64 == 63 {
            let before = common::count_entries(fx.backend.as_ref(), Cf::ChunkIndex)?;
            v.fsync(fh)?;
            let after = common::count_entries(fx.backend.as_ref(), Cf::ChunkIndex)?;
            worst = worst.max(after.saturating_sub(before));
            journal_peak =
                journal_peak.max(common::count_entries(fx.backend.as_ref(), Cf::Journal)?);
        }
    }
    assert!(
        journal_peak > 0 && journal_peak < usize::try_from(JOURNAL_ENTRIES_PER_FILE_MAX)?,
        "the journal was used and stayed below its bound: {journal_peak} entries at most"
    );
    assert!(
        worst <= STAGED_BUFFERS_PER_FILE_MAX,
        "an fsync stored {worst} new chunks at once: the journal was folded"
    );
    v.release(fh)?;
    assert!(
        common::read_all(v, ino)? == model,
        "the file reads every write"
    );
    Ok(())
}
