//! Fixtures shared by the integration tests: a vfs over the in-memory store or over a real
//! RocksDB store in a temporary home.

#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::path::Path;
use std::sync::Arc;

use keibi::chunk::{ChunkStore, Cipher};
use keibi::home::{Home, InitOptions};
use keibi::store::Backend;
use keibi::store::mem::MemBackend;
use keibi::store::tables::Tables;
use keibi::vfs::{Creator, OpenFlags, Vfs};

pub const ME: Creator = Creator {
    uid: 1000,
    gid: 1000,
};

pub type TestResult = Result<(), Box<dyn std::error::Error>>;

/// A vfs and what is under it.
pub struct Fixture {
    pub vfs: Vfs,
    pub backend: Arc<dyn Backend>,
    pub chunks: Arc<ChunkStore>,
}

/// A vfs over a fresh in-memory store with encryption on.
pub fn mem() -> Fixture {
    let backend: Arc<dyn Backend> = Arc::new(MemBackend::new());
    Tables::initialise(backend.as_ref(), 7, 1, 1000, 1000).expect("initialise");
    let tables = Tables::open(Arc::clone(&backend), Path::new("mem")).expect("tables");
    let cipher = Cipher::new(&[9u8; 32]).expect("cipher");
    let chunks = Arc::new(ChunkStore::new(Arc::clone(&backend), Some(cipher)));
    let vfs = Vfs::new(tables, Arc::clone(&chunks), Path::new("/")).expect("vfs");
    Fixture {
        vfs,
        backend,
        chunks,
    }
}

/// A vfs over the RocksDB store in `home`, created with encryption if absent.
pub fn rocks(home: &Path) -> Fixture {
    let h = Home::new(home);
    if !h.store_dir().exists() {
        h.init(InitOptions { encrypt: true }).expect("init");
    }
    let store = h.open().expect("open");
    let vfs = Vfs::new(store.tables, Arc::clone(&store.chunks), home).expect("vfs");
    Fixture {
        vfs,
        backend: store.backend,
        chunks: store.chunks,
    }
}

/// Writes `data` as a new file `name` in the root, closes it, returns its inode.
pub fn put_file(vfs: &Vfs, parent: u64, name: &str, data: &[u8]) -> u64 {
    let (attr, fh) = vfs
        .create(parent, name.as_bytes(), 0o644, ME, OpenFlags::default())
        .expect("create");
    let mut off = 0;
    for piece in data.chunks(1 << 20) {
        vfs.write(fh, off, piece).expect("write");
        off += piece.len() as u64;
    }
    vfs.release(fh).expect("release");
    attr.ino
}

/// Reads the whole file `ino` through a fresh handle.
pub fn read_all(vfs: &Vfs, ino: u64) -> Vec<u8> {
    let fh = vfs.open(ino, OpenFlags::default()).expect("open");
    let mut out = Vec::new();
    loop {
        let piece = vfs.read(fh, out.len() as u64, 128 * 1024).expect("read");
        if piece.is_empty() {
            break;
        }
        out.extend_from_slice(&piece);
    }
    vfs.release(fh).expect("release");
    out
}

/// Deterministic incompressible bytes.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect()
}
