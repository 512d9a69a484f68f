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
use keibi::store::mem::MemBackend;
use keibi::store::rocks::RocksBackend;
use keibi::store::{Backend, Batch, Cf, Durability};

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

#[test]
fn memory_backend_meets_the_contract() {
    kv_contract(&MemBackend::new());
    chunk_contract(Arc::new(MemBackend::new()));
}

#[test]
fn rocksdb_backend_meets_the_contract() {
    let dir = tempfile::tempdir().expect("tempdir");
    kv_contract(&RocksBackend::open(&dir.path().join("a"), true).expect("open"));
    chunk_contract(Arc::new(
        RocksBackend::open(&dir.path().join("b"), true).expect("open"),
    ));
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
