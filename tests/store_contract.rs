//! One test body, two stores: the key-value contract and the chunk store, run against the
//! in-memory twin and against RocksDB.
#![expect(
    clippy::expect_used,
    reason = "test helpers fail loudly on setup errors"
)]

use std::ops::ControlFlow;
use std::sync::Arc;

use keibi::chunk::{self, ChunkStore, Cipher};
use keibi::id::ChunkId;
use keibi::limits::{CHUNK_BYTES, PIECE_BYTES};
use keibi::store::mem::MemBackend;
use keibi::store::rocks::RocksBackend;
use keibi::store::{Backend, Batch, Cf, Durability, Skim, keys};

fn scan_all(b: &dyn Backend, cf: Cf, from: &[u8], to: Option<&[u8]>) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    b.scan(cf, from, to, &mut |k, v| {
        out.push((k.to_vec(), v.to_vec()));
        ControlFlow::Continue(())
    })
    .expect("scan");
    out
}

fn kv_contract(b: &dyn Backend) {
    let mut batch = Batch::new();
    for k in [&b"b"[..], b"a", b"c", b"ab", b"d"] {
        batch.put(Cf::Dirents, k.to_vec(), k.repeat(2));
    }
    batch.put(Cf::Seq, b"a".to_vec(), b"other cf".to_vec());
    b.write(batch, Durability::Synced).expect("write");
    assert_eq!(
        b.get(Cf::Dirents, b"ab").expect("get"),
        Some(b"abab".to_vec())
    );
    assert_eq!(b.get(Cf::Dirents, b"zz").expect("get"), None);
    let keys: Vec<Vec<u8>> = scan_all(b, Cf::Dirents, b"", None)
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(
        keys,
        vec![
            b"a".to_vec(),
            b"ab".to_vec(),
            b"b".to_vec(),
            b"c".to_vec(),
            b"d".to_vec()
        ]
    );
    let keys: Vec<Vec<u8>> = scan_all(b, Cf::Dirents, b"ab", Some(b"c"))
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(keys, vec![b"ab".to_vec(), b"b".to_vec()]);
    let mut n = 0;
    b.scan(Cf::Dirents, b"", None, &mut |_, _| {
        n += 1;
        if n == 2 {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })
    .expect("scan");
    assert_eq!(n, 2);
    // A key-only scan that skips past every key starting with the one it lands on.
    let mut landed = Vec::new();
    b.skim(Cf::Dirents, b"", &mut |k| {
        landed.push(k.to_vec());
        match keys::prefix_end(k) {
            Some(end) if landed.len() < 3 => Skim::SkipTo(end),
            _ => Skim::Stop,
        }
    })
    .expect("skim");
    assert_eq!(landed, vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]);
    let mut landed = Vec::new();
    b.skim(Cf::Dirents, b"ab", &mut |k| {
        landed.push(k.to_vec());
        Skim::Next
    })
    .expect("skim");
    assert_eq!(landed.len(), 4, "{landed:?}");
    let mut batch = Batch::new();
    batch.delete(Cf::Dirents, b"a".to_vec());
    batch.delete_range(Cf::Dirents, b"b".to_vec(), b"d".to_vec());
    b.write(batch, Durability::Buffered).expect("delete");
    let keys: Vec<Vec<u8>> = scan_all(b, Cf::Dirents, b"", None)
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(keys, vec![b"ab".to_vec(), b"d".to_vec()]);
    assert_eq!(
        scan_all(b, Cf::Seq, b"", None).len(),
        1,
        "column families are separate"
    );
    b.sync().expect("sync");
}

/// Point reads and ordered scans in a column family whose keys are spread at random (the
/// RocksDB backend hashes their memtables by leading bytes): keys of every length from one
/// byte, some flushed to tables and some still in memory, come back in key order.
fn ordered_contract(b: &dyn Backend, cf: Cf) {
    let old: [&[u8]; 4] = [b"\xff\x01tail", b"m", b"\x00\x00", b"ab"];
    let new: [&[u8]; 5] = [b"\xff", b"ab\x00", b"\x00", b"mm", b"\x80\x00\x00\x01"];
    let mut batch = Batch::new();
    for k in old {
        batch.put(cf, k.to_vec(), k.repeat(3));
    }
    b.write(batch, Durability::Buffered).expect("write");
    b.flush().expect("flush");
    let mut batch = Batch::new();
    for k in new {
        batch.put(cf, k.to_vec(), k.repeat(3));
    }
    b.write(batch, Durability::Buffered).expect("write");
    let mut all: Vec<Vec<u8>> = old.iter().chain(new.iter()).map(|k| k.to_vec()).collect();
    all.sort();
    for k in &all {
        assert_eq!(b.get(cf, k).expect("get"), Some(k.repeat(3)), "{k:?}");
    }
    assert_eq!(b.get(cf, b"a").expect("get"), None);
    assert_eq!(b.get(cf, b"\xff\x01").expect("get"), None);
    let keys: Vec<Vec<u8>> = scan_all(b, cf, b"", None)
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(keys, all, "{cf:?} in key order");
    let keys: Vec<Vec<u8>> = scan_all(b, cf, b"ab", Some(b"mm"))
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(
        keys,
        vec![b"ab".to_vec(), b"ab\x00".to_vec(), b"m".to_vec()]
    );
    let mut landed = Vec::new();
    b.skim(cf, b"\x01", &mut |k| {
        landed.push(k.to_vec());
        if k == b"ab" {
            Skim::SkipTo(b"n".to_vec())
        } else {
            Skim::Next
        }
    })
    .expect("skim");
    assert_eq!(
        landed,
        vec![
            b"ab".to_vec(),
            b"\x80\x00\x00\x01".to_vec(),
            b"\xff".to_vec(),
            b"\xff\x01tail".to_vec()
        ]
    );
    let mut batch = Batch::new();
    batch.delete(cf, b"m".to_vec());
    batch.delete(cf, b"\x00".to_vec());
    b.write(batch, Durability::Buffered).expect("delete");
    assert_eq!(b.get(cf, b"m").expect("get"), None);
    assert_eq!(scan_all(b, cf, b"", None).len(), all.len() - 2);
}

fn chunk_contract(backend: Arc<dyn Backend>) {
    let store = ChunkStore::new(
        Arc::clone(&backend),
        Some(Cipher::new(&[3u8; 32]).expect("cipher")),
    );
    let data = b"some chunk data".repeat(1000);
    let id = store.put(&data).expect("put");
    assert_eq!(id, ChunkId::of(&data));
    assert!(store.contains(&id).expect("contains"));
    assert_eq!(store.put(&data).expect("put again"), id, "dedup");
    let fresh = ChunkStore::new(
        Arc::clone(&backend),
        Some(Cipher::new(&[3u8; 32]).expect("cipher")),
    );
    assert_eq!(*fresh.get(&id).expect("get"), data);
    let missing = ChunkId::of(b"never stored");
    assert!(matches!(fresh.get(&missing), Err(chunk::Error::Missing(_))));
    // A frame stored under the wrong id is caught on read.
    let other = ChunkId::of(b"other");
    let mut batch = Batch::new();
    batch.put(
        Cf::Chunks,
        other.0.to_vec(),
        backend.get(Cf::Chunks, &id.0).expect("get").expect("frame"),
    );
    backend.write(batch, Durability::Buffered).expect("write");
    let reader = ChunkStore::new(
        Arc::clone(&backend),
        Some(Cipher::new(&[3u8; 32]).expect("cipher")),
    );
    assert!(matches!(
        reader.get(&other),
        Err(chunk::Error::Corrupt { .. })
    ));
    // The wrong key cannot read it.
    let wrong = ChunkStore::new(backend, Some(Cipher::new(&[4u8; 32]).expect("cipher")));
    assert!(matches!(wrong.get(&id), Err(chunk::Error::Corrupt { .. })));
}

/// A chunk of several pieces is stored in parts (a head under its id, a key per piece):
/// small reads fetch one piece, a frame stored whole (as version 2 stores wrote it) still
/// reads, a damaged or missing part is reported as damage, and gc removes every part.
fn parts_contract(backend: &Arc<dyn Backend>, key: Option<[u8; 32]>) {
    let cipher = || key.map(|k| Cipher::new(&k).expect("cipher"));
    let data = keibi::testing::noise(CHUNK_BYTES, 21);
    let store = ChunkStore::new(Arc::clone(backend), cipher());
    let id = store.put(&data).expect("put");
    let parts = scan_all(
        backend.as_ref(),
        Cf::Chunks,
        &id.0,
        Some(&keys::chunk_pieces_end(&id)),
    );
    let pieces = CHUNK_BYTES / PIECE_BYTES;
    assert_eq!(parts.len(), 1 + pieces, "a head and one key per piece");
    assert!(parts[0].1.len() < 1024, "the head holds no payload");
    let fresh = || ChunkStore::new(Arc::clone(backend), cipher());
    let range = |s: &ChunkStore, start: usize, end: usize| {
        let mut out = Vec::new();
        s.read_range(&id, start, end, &mut out).map(|()| out)
    };
    let at = 3 * PIECE_BYTES - 100;
    assert_eq!(
        range(&fresh(), at, at + 300).expect("range"),
        data[at..at + 300]
    );
    assert_eq!(*fresh().get(&id).expect("get"), data);
    // The same frame stored whole reads the same.
    let whole: Vec<u8> = parts.iter().flat_map(|(_, v)| v.clone()).collect();
    let mut batch = Batch::new();
    for (k, _) in &parts[1..] {
        batch.delete(Cf::Chunks, k.clone());
    }
    batch.put(Cf::Chunks, id.0.to_vec(), whole);
    backend.write(batch, Durability::Buffered).expect("write");
    assert_eq!(
        range(&fresh(), at, at + 300).expect("range"),
        data[at..at + 300]
    );
    assert_eq!(*fresh().get(&id).expect("get"), data);
    // Parts again, then one piece lost: that piece's bytes and the whole chunk are damage,
    // the other pieces still read.
    let mut batch = Batch::new();
    for (k, v) in &parts {
        batch.put(Cf::Chunks, k.clone(), v.clone());
    }
    batch.delete(Cf::Chunks, parts[3].0.clone());
    backend.write(batch, Durability::Buffered).expect("write");
    assert_eq!(range(&fresh(), 0, 10).expect("range"), data[..10]);
    let lost = 2 * PIECE_BYTES + 5;
    assert!(matches!(
        range(&fresh(), lost, lost + 10),
        Err(chunk::Error::Corrupt { .. })
    ));
    assert!(matches!(
        fresh().get(&id),
        Err(chunk::Error::Corrupt { .. })
    ));
    // A piece that does not belong: damage too.
    let mut batch = Batch::new();
    batch.put(Cf::Chunks, parts[3].0.clone(), parts[4].1.clone());
    backend.write(batch, Durability::Buffered).expect("write");
    assert!(matches!(
        range(&fresh(), lost, lost + 10),
        Err(chunk::Error::Corrupt { .. })
    ));
    // gc removes the head and every part.
    let gc = fresh();
    assert!(gc.gc_begin());
    assert_eq!(gc.gc_delete(&[id]).expect("gc"), vec![id]);
    gc.gc_end();
    assert!(
        scan_all(
            backend.as_ref(),
            Cf::Chunks,
            &id.0,
            Some(&keys::chunk_pieces_end(&id))
        )
        .is_empty()
    );
}

#[test]
fn memory_backend_meets_the_contract() {
    kv_contract(&MemBackend::new());
    for cf in [Cf::Files, Cf::Chunks, Cf::ChunkIndex, Cf::Dirents] {
        ordered_contract(&MemBackend::new(), cf);
    }
    chunk_contract(Arc::new(MemBackend::new()));
    let mem: Arc<dyn Backend> = Arc::new(MemBackend::new());
    parts_contract(&mem, None);
    let mem: Arc<dyn Backend> = Arc::new(MemBackend::new());
    parts_contract(&mem, Some([5u8; 32]));
}

#[test]
fn rocksdb_backend_meets_the_contract() {
    let dir = tempfile::tempdir().expect("tempdir");
    kv_contract(&RocksBackend::open(&dir.path().join("a"), true).expect("open"));
    for cf in [Cf::Files, Cf::Chunks, Cf::ChunkIndex, Cf::Dirents] {
        let path = dir.path().join(format!("ordered-{}", cf.name()));
        ordered_contract(&RocksBackend::open(&path, true).expect("open"), cf);
    }
    chunk_contract(Arc::new(
        RocksBackend::open(&dir.path().join("b"), true).expect("open"),
    ));
    let rocks: Arc<dyn Backend> =
        Arc::new(RocksBackend::open(&dir.path().join("c"), true).expect("open"));
    parts_contract(&rocks, Some([5u8; 32]));
}

#[test]
fn rocksdb_refuses_a_second_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _first = RocksBackend::open(dir.path(), true).expect("open");
    match RocksBackend::open(dir.path(), false) {
        Err(keibi::store::Error::Locked { .. }) => {}
        Err(e) => panic!("expected Locked, got {e}"),
        Ok(_) => panic!("second open succeeded"),
    }
}

#[test]
fn verify_checks_frames_stored_in_parts() {
    let fx = keibi::testing::mem().expect("fixture");
    let data = keibi::testing::noise(2 * CHUNK_BYTES, 4);
    keibi::testing::put_file(&fx.vfs, keibi::id::ROOT_INO, "f", &data).expect("file");
    let run = || fx.verify_all();
    let clean = run();
    assert_eq!(clean.findings_total, 0, "{:?}", clean.findings);
    assert!(clean.chunk_bytes_checked >= data.len() as u64);
    let piece = scan_all(fx.backend.as_ref(), Cf::Chunks, &[], None)
        .into_iter()
        .find(|(k, _)| k.len() == keys::CHUNK_PIECE_KEY_BYTES)
        .expect("a chunk stored in parts");
    let mut batch = Batch::new();
    let mut bad = piece.1.clone();
    bad[100] ^= 1;
    batch.put(Cf::Chunks, piece.0.clone(), bad);
    let mut stray = vec![0xeeu8; 32];
    stray.push(0);
    batch.put(Cf::Chunks, stray, piece.1.clone());
    fx.backend
        .write(batch, Durability::Buffered)
        .expect("write");
    let report = run();
    let kinds: Vec<&str> = report.findings.iter().map(|f| f.kind).collect();
    assert!(kinds.contains(&"corrupt-chunk"), "{kinds:?}");
    assert!(kinds.contains(&"orphan-chunk-piece"), "{kinds:?}");
}
