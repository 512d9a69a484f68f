//! Directory listings of the vfs core, which keeps no directory handles: pages read through
//! in part, entries removed while listed, offsets sought back to, kept pages that went
//! stale or were pushed out by other listings.
#![expect(
    clippy::expect_used,
    reason = "test helpers fail loudly on setup errors"
)]

use std::collections::BTreeSet;

use keibi::id::ROOT_INO;
use keibi::limits::{LISTING_PAGES_KEPT, READDIR_ENTRIES_MAX};
use keibi::testing::{self as common, BoxError, ME};
use keibi::vfs::Vfs;

type TestResult = Result<(), BoxError>;

fn put_file(vfs: &Vfs, parent: u64, name: &str, data: &[u8]) -> u64 {
    keibi::testing::put_file(vfs, parent, name, data).expect("put_file")
}

/// Every name listed in `dir` from `offset` on, and the offsets, reading as the kernel
/// does.
fn list_from(v: &Vfs, dir: u64, mut offset: u64) -> Result<Vec<(u64, Vec<u8>)>, BoxError> {
    let mut out = Vec::new();
    for _ in 0..10_000 {
        let batch = v.readdir(dir, offset)?;
        let Some(last) = batch.last() else {
            return Ok(out);
        };
        offset = last.offset;
        out.extend(batch.into_iter().map(|e| (e.offset, e.name)));
    }
    Err("the listing did not end".into())
}

#[test]
fn readdir_listing_is_stable_while_entries_are_removed() -> TestResult {
    let fx = common::mem().expect("fixture");
    let v = &fx.vfs;
    for i in 0..2500 {
        put_file(v, ROOT_INO, &format!("f{i:05}"), b"");
    }
    let mut seen = Vec::new();
    let mut offset = 0;
    loop {
        let batch = v.readdir(ROOT_INO, offset)?;
        let Some(last) = batch.last() else { break };
        offset = last.offset;
        for e in batch {
            if e.name.starts_with(b"f") {
                v.unlink(ROOT_INO, &e.name)?;
                seen.push(e.name);
            }
        }
        // The mount reads on to fill the kernel's buffer, which is full: the next request
        // goes on from the entry just removed, whose page is no longer the one kept.
        v.readdir(ROOT_INO, offset)?;
    }
    assert_eq!(
        seen.len(),
        2500,
        "rm -rf style removal sees every entry once"
    );
    v.rmdir(ROOT_INO, b"nothing").expect_err("no such dir");
    assert!(!fx.vfs.tables().has_children(keibi::id::FileId::ROOT)?);
    Ok(())
}

#[test]
fn readdir_pages_through_a_large_directory_read_in_part_and_sought_back() -> TestResult {
    let fx = common::mem().expect("fixture");
    let v = &fx.vfs;
    for i in 0..3000 {
        put_file(v, ROOT_INO, &format!("m{i:05}"), b"");
    }
    // As the kernel does when its buffer fills: take part of each answer, go on from there.
    let mut listed: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut offset = 0;
    for round in 0..100 {
        let batch = v.readdir(ROOT_INO, offset)?;
        if batch.is_empty() {
            break;
        }
        assert!(batch.len() <= keibi::limits::READDIR_ENTRIES_MAX);
        for e in batch.into_iter().take(700) {
            offset = e.offset;
            listed.push((e.offset, e.name));
        }
        if round == 1 {
            // Entries added meanwhile, before and after the reader's position.
            put_file(v, ROOT_INO, "a-new", b"");
            put_file(v, ROOT_INO, "z-new", b"");
        }
    }
    let names: std::collections::BTreeSet<&[u8]> =
        listed.iter().map(|(_, n)| n.as_slice()).collect();
    assert_eq!(names.len(), listed.len(), "no entry listed twice");
    for i in 0..3000 {
        assert!(
            names.contains(format!("m{i:05}").as_bytes()),
            "m{i:05} missing"
        );
    }
    assert!(names.contains(b"." as &[u8]) && names.contains(b".." as &[u8]));
    // seekdir back to an earlier entry: the listing goes on from the entry after it.
    let (at, _) = listed[1500];
    let again = v.readdir(ROOT_INO, at)?;
    assert_eq!(again.first().map(|e| &e.name), Some(&listed[1501].1));
    let (at, _) = listed[10];
    assert_eq!(
        v.readdir(ROOT_INO, at)?.first().map(|e| &e.name),
        Some(&listed[11].1)
    );
    assert!(
        v.readdir(ROOT_INO, offset)?.is_empty(),
        "the end stays the end"
    );
    // Entries added meanwhile do not move the position of the others.
    put_file(v, ROOT_INO, "b-newer", b"");
    let (at, _) = listed[2000];
    assert_eq!(
        v.readdir(ROOT_INO, at)?.first().map(|e| &e.name),
        Some(&listed[2001].1)
    );
    Ok(())
}

#[test]
fn a_listing_that_goes_on_after_a_change_reads_the_directory_as_it_is_now() -> TestResult {
    // Pages are kept between reads, without handles: one read before a change must not be
    // served after it, or a listing started after a removal could show the removed file.
    let fx = common::mem()?;
    let v = &fx.vfs;
    for i in 0..100 {
        put_file(v, ROOT_INO, &format!("n{i:03}"), b"");
    }
    let first = v.readdir(ROOT_INO, 0)?;
    assert_eq!(first.len(), 102, "., .. and 100 names in one page");
    let at = first[11].offset;
    for i in 50..60 {
        v.unlink(ROOT_INO, format!("n{i:03}").as_bytes())?;
    }
    put_file(v, ROOT_INO, "n999", b"");
    let rest: Vec<Vec<u8>> = list_from(v, ROOT_INO, at)?
        .into_iter()
        .map(|(_, n)| n)
        .collect();
    let want: Vec<Vec<u8>> = (10..100)
        .filter(|i| !(50..60).contains(i))
        .map(|i| format!("n{i:03}").into_bytes())
        .chain([b"n999".to_vec()])
        .collect();
    assert_eq!(
        rest, want,
        "the names after n009 as the directory holds them now"
    );
    Ok(())
}

#[test]
fn a_listing_goes_on_after_its_pages_were_pushed_out_by_other_listings() -> TestResult {
    let fx = common::mem()?;
    let v = &fx.vfs;
    let big = v.mkdir(ROOT_INO, b"big", 0o755, ME)?.ino;
    for i in 0..READDIR_ENTRIES_MAX + 500 {
        put_file(v, big, &format!("b{i:05}"), b"");
    }
    let mut others = Vec::new();
    for d in 0..=LISTING_PAGES_KEPT {
        let ino = v
            .mkdir(ROOT_INO, format!("d{d}").as_bytes(), 0o755, ME)?
            .ino;
        put_file(v, ino, "x", b"");
        others.push(ino);
    }
    let first = v.readdir(big, 0)?;
    let at = first[600].offset;
    // More listings than pages are kept: the big directory's page is no longer among them.
    for ino in &others {
        assert_eq!(v.readdir(*ino, 0)?.len(), 3);
    }
    let rest = list_from(v, big, at)?;
    let names: Vec<Vec<u8>> = rest.iter().map(|(_, n)| n.clone()).collect();
    let want: Vec<Vec<u8>> = (599..READDIR_ENTRIES_MAX + 500)
        .map(|i| format!("b{i:05}").into_bytes())
        .collect();
    assert_eq!(
        names, want,
        "the listing goes on after b00598, read again from the store"
    );
    let offsets: BTreeSet<u64> = rest.iter().map(|(o, _)| *o).collect();
    assert_eq!(offsets.len(), rest.len(), "every entry its own offset");
    Ok(())
}
