//! Fixtures for keibi's own tests and benchmarks: a vfs over the in-memory store or over a
//! real store in a home directory, and deterministic data. Not a stable API.

use std::path::Path;
use std::sync::Arc;

use crate::chunk::{ChunkStore, Cipher};
use crate::home::{Home, InitOptions};
use crate::id::Ino;
use crate::store::mem::MemBackend;
use crate::store::tables::Tables;
use crate::store::{self, Backend, Cf};
use crate::vfs::{Creator, OpenFlags, Vfs};

/// The owner tests create files as.
pub const ME: Creator = Creator {
    uid: 1000,
    gid: 1000,
};

/// Error type of fixtures.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A vfs and what is under it.
pub struct Fixture {
    /// The filesystem core.
    pub vfs: Vfs,
    /// Its database.
    pub backend: Arc<dyn Backend>,
    /// Its chunk store.
    pub chunks: Arc<ChunkStore>,
}

impl Fixture {
    /// `verify` over the whole store, every chunk decoded and checked.
    #[must_use]
    pub fn verify_all(&self) -> crate::verify::Report {
        crate::verify::run(
            self.backend.as_ref(),
            self.chunks.cipher(),
            crate::verify::Options {
                sample_percent: 100,
                progress: false,
            },
        )
    }
}

/// A vfs over a fresh in-memory store, encrypting with a fixed key.
///
/// # Errors
/// Setup failures.
pub fn mem() -> Result<Fixture, BoxError> {
    let backend: Arc<dyn Backend> = Arc::new(MemBackend::new());
    Tables::initialise(backend.as_ref(), 7, 1, ME.uid, ME.gid)?;
    reopen_mem(&backend)
}

/// A new vfs over an existing in-memory store (a remount).
///
/// # Errors
/// Setup failures.
pub fn reopen_mem(backend: &Arc<dyn Backend>) -> Result<Fixture, BoxError> {
    let tables = Tables::open(Arc::clone(backend), Path::new("memory"))?;
    let chunks = Arc::new(ChunkStore::new(
        Arc::clone(backend),
        Some(Cipher::new(&[9u8; 32])?),
    ));
    let vfs = Vfs::new(tables, Arc::clone(&chunks), Path::new("/"))?;
    Ok(Fixture {
        vfs,
        backend: Arc::clone(backend),
        chunks,
    })
}

/// A backend that passes everything to `inner` but fails point reads of one key once it is
/// told which ([`Self::fail_reads_of`]): a store error in one place, for error paths that
/// the in-memory store cannot reach. It also counts persists ([`Self::persists`]).
pub struct FailingBackend {
    inner: Arc<dyn Backend>,
    failing: parking_lot::Mutex<Option<(Cf, Vec<u8>)>>,
    persists: std::sync::atomic::AtomicU64,
}

impl FailingBackend {
    /// Wraps `inner`; nothing fails until told.
    #[must_use]
    pub fn new(inner: Arc<dyn Backend>) -> Self {
        Self {
            inner,
            failing: parking_lot::Mutex::new(None),
            persists: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// How many times a column family was persisted (on RocksDB: a memtable flush).
    #[must_use]
    pub fn persists(&self) -> u64 {
        self.persists.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// From now on, reads of `key` in `cf` fail with an I/O error.
    pub fn fail_reads_of(&self, cf: Cf, key: &[u8]) {
        *self.failing.lock() = Some((cf, key.to_vec()));
    }
}

impl Backend for FailingBackend {
    fn get(&self, cf: Cf, key: &[u8]) -> store::Result<Option<Vec<u8>>> {
        if self
            .failing
            .lock()
            .as_ref()
            .is_some_and(|(c, k)| *c == cf && k == key)
        {
            return Err(store::Error::Io("injected read failure".into()));
        }
        self.inner.get(cf, key)
    }
    fn scan(
        &self,
        cf: Cf,
        from: &[u8],
        to: Option<&[u8]>,
        visit: store::Visit<'_>,
    ) -> store::Result<()> {
        self.inner.scan(cf, from, to, visit)
    }
    fn skim(
        &self,
        cf: Cf,
        from: &[u8],
        visit: &mut dyn FnMut(&[u8]) -> store::Skim,
    ) -> store::Result<()> {
        self.inner.skim(cf, from, visit)
    }
    fn write(&self, batch: store::Batch, durability: store::Durability) -> store::Result<()> {
        self.inner.write(batch, durability)
    }
    fn compact(&self, cf: Cf) -> store::Result<()> {
        self.inner.compact(cf)
    }
    fn disk_space(&self) -> store::Result<Option<store::DiskSpace>> {
        self.inner.disk_space()
    }
    fn disk_bytes(&self, cf: Cf) -> store::Result<u64> {
        self.inner.disk_bytes(cf)
    }
    fn sync(&self) -> store::Result<()> {
        self.inner.sync()
    }
    fn flush(&self) -> store::Result<()> {
        self.inner.flush()
    }
    fn persist(&self, cf: Cf) -> store::Result<()> {
        self.persists
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.inner.persist(cf)
    }
}

/// A vfs over the store in `home`, created (encrypted) if absent.
///
/// # Errors
/// Setup failures.
pub fn rocks(home: &Path) -> Result<Fixture, BoxError> {
    let h = Home::new(home);
    if !h.store_dir().exists() {
        h.init(InitOptions { encrypt: true })?;
    }
    let store = h.open()?;
    let vfs = Vfs::new(store.tables, Arc::clone(&store.chunks), home)?;
    Ok(Fixture {
        vfs,
        backend: store.backend,
        chunks: store.chunks,
    })
}

/// A new encrypted home in `dir`, for a replicating peer: its identity, and a vfs over its
/// store.
///
/// # Errors
/// Setup failures.
pub fn peer_home(dir: &Path) -> Result<(crate::replication::tls::Identity, Arc<Vfs>), BoxError> {
    let home = Home::new(dir);
    home.init(InitOptions { encrypt: true })?;
    let identity = crate::replication::tls::Identity::load(&home)?;
    let store = home.open()?;
    let vfs = Arc::new(Vfs::new(store.tables, store.chunks, dir)?);
    Ok((identity, vfs))
}

/// Writes `data` as a new file `name` in `parent` in 1 MiB writes, closes it.
///
/// # Errors
/// vfs errors.
pub fn put_file(vfs: &Vfs, parent: Ino, name: &str, data: &[u8]) -> Result<Ino, BoxError> {
    let (attr, fh) = vfs.create(parent, name.as_bytes(), 0o644, ME, OpenFlags::default())?;
    let mut off = 0;
    for piece in data.chunks(1 << 20) {
        vfs.write(fh, off, piece)?;
        off += piece.len() as u64;
    }
    vfs.release(fh)?;
    Ok(attr.ino)
}

/// Reads all of file `ino` through a fresh handle, 128 KiB at a time.
///
/// # Errors
/// vfs errors.
pub fn read_all(vfs: &Vfs, ino: Ino) -> Result<Vec<u8>, BoxError> {
    let fh = vfs.open(ino, OpenFlags::default())?;
    let mut out = Vec::new();
    loop {
        let piece = vfs.read(fh, out.len() as u64, 128 * 1024)?;
        if piece.is_empty() {
            break;
        }
        out.extend_from_slice(&piece);
    }
    vfs.release(fh)?;
    Ok(out)
}

/// Entries in column family `cf` of `backend`.
///
/// # Errors
/// The scan failed.
pub fn count_entries(backend: &dyn Backend, cf: Cf) -> Result<usize, BoxError> {
    let mut n = 0;
    backend.scan(cf, &[], None, &mut |_, _| {
        n += 1;
        std::ops::ControlFlow::Continue(())
    })?;
    Ok(n)
}

/// Deterministic incompressible bytes (xorshift).
#[must_use]
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()[4]
        })
        .collect()
}

/// What a tree holds, by path: kind, permission bits, and the content (file bytes' hash,
/// symlink target, then a hash of the extended attributes if there are any), read through
/// the vfs (so a missing chunk is fetched or fails).
///
/// # Errors
/// vfs errors.
pub fn snapshot(
    vfs: &Vfs,
) -> Result<std::collections::BTreeMap<String, (crate::tree::Kind, u32, String)>, BoxError> {
    use crate::tree::Kind;
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![(crate::id::ROOT_INO, String::new())];
    while let Some((dir, path)) = stack.pop() {
        let mut offset = 0;
        loop {
            let entries = vfs.readdir(dir, offset)?;
            if entries.is_empty() {
                break;
            }
            for e in entries {
                offset = e.offset;
                if e.name == b"." || e.name == b".." {
                    continue;
                }
                let p = format!("{path}/{}", String::from_utf8_lossy(&e.name));
                let attr = vfs.getattr(e.ino)?;
                let content = match e.kind {
                    Kind::File => blake3::hash(&read_all(vfs, e.ino)?).to_hex()[..16].to_string(),
                    Kind::Symlink => String::from_utf8_lossy(&vfs.readlink(e.ino)?).into_owned(),
                    Kind::Dir => {
                        stack.push((e.ino, p.clone()));
                        String::new()
                    }
                    Kind::Fifo | Kind::Socket | Kind::CharDevice | Kind::BlockDevice => {
                        String::new()
                    }
                };
                let names = vfs.listxattr(e.ino)?;
                let content = if names.is_empty() {
                    content
                } else {
                    let mut h = blake3::Hasher::new();
                    for name in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
                        h.update(name)
                            .update(&[0])
                            .update(&vfs.getxattr(e.ino, name)?);
                    }
                    format!("{content} xattrs {}", &h.finalize().to_hex()[..16])
                };
                out.insert(p, (e.kind, attr.perm, content));
            }
        }
    }
    Ok(out)
}

/// Polls `ok` every 50 ms for at most `secs` seconds; true as soon as it holds.
pub fn wait_until(secs: u64, mut ok: impl FnMut() -> bool) -> bool {
    let end = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while std::time::Instant::now() < end {
        if ok() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    ok()
}

/// A TCP port on 127.0.0.1 that was free a moment ago, below the kernel's ephemeral range
/// (32768 and up here): a peer that a test stops and starts again listens on the same
/// port, and a port from the ephemeral range can meanwhile be taken as the local port of
/// any outgoing connection on the machine (seen once: a restart found it taken for 5 s).
///
/// # Errors
/// Binding or reading the local address failed.
pub fn free_port() -> std::io::Result<u16> {
    use std::hash::{BuildHasher, Hasher};
    const LOW: u16 = 20_000;
    const HIGH: u16 = 32_000;
    const ATTEMPTS: u64 = 200;
    let seed = std::collections::hash_map::RandomState::new();
    for attempt in 0..ATTEMPTS {
        let mut h = seed.build_hasher();
        h.write_u64(attempt);
        let port = LOW + u16::try_from(h.finish() % u64::from(HIGH - LOW)).unwrap_or(0);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
