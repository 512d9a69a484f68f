//! The key-value layer: column families, key encoding and atomic batches.
//!
//! [`Backend`] is the whole contract the rest of keibi needs from a database. Two
//! implementations satisfy it: [`rocks::RocksBackend`] (the real store, the only code that
//! knows RocksDB) and [`mem::MemBackend`] (an in-memory twin for tests). The same contract
//! tests run against both. No tasks are spawned here; RocksDB's own background threads stop
//! when the backend is dropped.

pub mod keys;
pub mod mem;
pub mod rocks;
pub mod tables;

use std::ops::ControlFlow;
use std::path::PathBuf;

use bytes::Bytes;

/// Version of the on-disk format described in `schema/`. A store of one of
/// [`SCHEMA_VERSIONS_UPGRADED`] is upgraded on open; one of any other version is refused.
pub const SCHEMA_VERSION: u32 = 3;
/// The earlier versions this build opens and upgrades. Version 2 added frames of pieces
/// (frame version 2); version 3 stores a frame of several pieces in parts, one key per piece.
/// Each still reads the frames of the versions before it, so the upgrade only rewrites the
/// version, and a build made for an older version then refuses the store instead of taking
/// the new frames for damage.
pub const SCHEMA_VERSIONS_UPGRADED: [u32; 2] = [1, 2];

/// The column families of a keibi store; `schema/` documents each key and value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Cf {
    /// Store metadata: schema version, index id, counters.
    Meta,
    /// Chunk hash → frame.
    Chunks,
    /// Chunk hash → plaintext and stored length: presence checks without reading the frame.
    ChunkIndex,
    /// File id → file record.
    Files,
    /// Parent file id ‖ name → child file id.
    Dirents,
    /// Local sequence number → file id.
    Seq,
    /// Local inode number → file id.
    Inodes,
    /// File id ‖ chunk index ‖ entry number → dirty range made durable by fsync.
    Journal,
}

impl Cf {
    /// Every column family, in a fixed order.
    pub const ALL: [Self; 8] = [
        Self::Meta,
        Self::Chunks,
        Self::ChunkIndex,
        Self::Files,
        Self::Dirents,
        Self::Seq,
        Self::Inodes,
        Self::Journal,
    ];

    /// The column family's name on disk.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Meta => "meta",
            Self::Chunks => "chunks",
            Self::ChunkIndex => "chunk_index",
            Self::Files => "files",
            Self::Dirents => "dirents",
            Self::Seq => "seq",
            Self::Inodes => "inodes",
            Self::Journal => "journal",
        }
    }
}

/// One write in a [`Batch`].
#[derive(Clone, Debug)]
pub enum Op {
    /// Set `key` to `value` (shared, so that the pieces of one buffer go in uncopied).
    Put(Cf, Vec<u8>, Bytes),
    /// Remove `key`.
    Delete(Cf, Vec<u8>),
    /// Remove every key in `[from, to)`.
    DeleteRange(Cf, Vec<u8>, Vec<u8>),
}

/// Writes applied atomically: all of them or none, across column families.
#[derive(Clone, Debug, Default)]
pub struct Batch {
    ops: Vec<Op>,
}

impl Batch {
    /// An empty batch.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }
    /// Adds a put.
    pub fn put(&mut self, cf: Cf, key: impl Into<Vec<u8>>, value: impl Into<Bytes>) {
        self.ops.push(Op::Put(cf, key.into(), value.into()));
    }
    /// Adds a delete.
    pub fn delete(&mut self, cf: Cf, key: impl Into<Vec<u8>>) {
        self.ops.push(Op::Delete(cf, key.into()));
    }
    /// Adds a range delete of `[from, to)`.
    pub fn delete_range(&mut self, cf: Cf, from: impl Into<Vec<u8>>, to: impl Into<Vec<u8>>) {
        self.ops.push(Op::DeleteRange(cf, from.into(), to.into()));
    }
    /// The writes, in order.
    #[must_use]
    pub fn ops(&self) -> &[Op] {
        &self.ops
    }
    /// True when the batch writes nothing.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
    /// Moves every write of `other` to the end of this batch.
    pub fn append(&mut self, other: &mut Self) {
        self.ops.append(&mut other.ops);
    }
}

/// How durable a write must be when [`Backend::write`] returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// In the write-ahead log's buffers: survives a process crash, not a power loss.
    Buffered,
    /// The write-ahead log is synced to disk, and with it every earlier write.
    Synced,
    /// Not in the write-ahead log: lost on a crash unless [`Backend::persist`] flushed its
    /// column families first. For chunk bodies, which would otherwise be written twice (log,
    /// then table file); nothing may reference them until they are persisted.
    Unlogged,
}

/// What a scan callback saw: key and value of one entry.
pub type Visit<'a> = &'a mut dyn FnMut(&[u8], &[u8]) -> ControlFlow<()>;

/// The filesystem holding a store, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskSpace {
    /// Its size.
    pub total: u64,
    /// Free.
    pub free: u64,
    /// What an unprivileged writer may still use.
    pub available: u64,
}

/// Space on the filesystem holding `path`.
///
/// # Errors
/// `statvfs` failed.
pub fn disk_space(path: &std::path::Path) -> std::io::Result<DiskSpace> {
    let s = nix::sys::statvfs::statvfs(path).map_err(std::io::Error::from)?;
    let frag = s.fragment_size();
    Ok(DiskSpace {
        total: s.blocks().saturating_mul(frag),
        free: s.blocks_free().saturating_mul(frag),
        available: s.blocks_available().saturating_mul(frag),
    })
}

/// What a key-only scan ([`Backend::skim`]) does after a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Skim {
    /// On to the next key.
    Next,
    /// On to the first key at or after this one, which must sort after the current key.
    SkipTo(Vec<u8>),
    /// Stop the scan.
    Stop,
}

/// Errors of the key-value layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Another process holds the store open.
    #[error("the store at {path} is in use by another keibi process (a running `keibi mount`?)")]
    Locked {
        /// The store directory.
        path: PathBuf,
    },
    /// The store's schema version is one this build cannot read.
    #[error(
        "the store at {path} has schema version {found}; this keibi reads version {supported} \
         (and upgrades {SCHEMA_VERSIONS_UPGRADED:?}): use a keibi release made for that version"
    )]
    SchemaUnknown {
        /// The store directory.
        path: PathBuf,
        /// Version written in the store.
        found: u32,
        /// Version this build reads.
        supported: u32,
    },
    /// The database found damaged data (checksum mismatch, unreadable file).
    #[error("store damaged: {0}")]
    Damaged(String),
    /// The disk is full.
    #[error("no space left on the device holding the store: {0}")]
    NoSpace(String),
    /// Any other database or file error.
    #[error("store I/O error: {0}")]
    Io(String),
    /// A key or value in the store does not have the documented encoding.
    #[error("store entry malformed: {0}")]
    Malformed(String),
}

/// Result of the key-value layer.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The key-value contract: column families, point reads, ordered scans, atomic batches.
pub trait Backend: Send + Sync {
    /// The value of `key`, if present.
    ///
    /// # Errors
    /// Database errors, damaged data.
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>>;

    /// Calls `read` with the value of `key` (`None` if absent), borrowed from the store
    /// where it can be, so a large value is not copied only to be decoded.
    ///
    /// # Errors
    /// Database errors, damaged data.
    fn read_with(&self, cf: Cf, key: &[u8], read: &mut dyn FnMut(Option<&[u8]>)) -> Result<()> {
        read(self.get(cf, key)?.as_deref());
        Ok(())
    }

    /// Calls `read` with the index in `keys` and the value (`None` if absent) of every key
    /// of `keys`, in order, looked up together where the backend can batch them.
    ///
    /// # Errors
    /// Database errors, damaged data.
    fn read_many(
        &self,
        cf: Cf,
        keys: &[&[u8]],
        read: &mut dyn FnMut(usize, Option<&[u8]>),
    ) -> Result<()> {
        for (i, key) in keys.iter().enumerate() {
            self.read_with(cf, key, &mut |v| read(i, v))?;
        }
        Ok(())
    }

    /// Visits the entries with `from <= key < to` (`to = None`: to the end) in key order
    /// until `visit` breaks. Entries are read from one consistent view of the store.
    ///
    /// # Errors
    /// Database errors, damaged data: the scan stops at the first.
    fn scan(&self, cf: Cf, from: &[u8], to: Option<&[u8]>, visit: Visit<'_>) -> Result<()>;

    /// Visits the keys of `cf` from `from` in key order, without their values, until `visit`
    /// stops; `visit` may skip ahead, and entries skipped over are not read (a large value,
    /// which RocksDB keeps in a blob file, is read only where the scan lands).
    ///
    /// # Errors
    /// Database errors, damaged data: the scan stops at the first.
    fn skim(&self, cf: Cf, from: &[u8], visit: &mut dyn FnMut(&[u8]) -> Skim) -> Result<()>;

    /// Applies `batch` atomically.
    ///
    /// # Errors
    /// Database errors, a full disk.
    fn write(&self, batch: Batch, durability: Durability) -> Result<()>;

    /// Rewrites the column family so that deleted entries free disk space. Large values kept
    /// apart (RocksDB's blob files) are copied only where enough of their space is garbage;
    /// below that, some of the space of deleted ones stays taken until later runs.
    ///
    /// # Errors
    /// Database errors.
    fn compact(&self, cf: Cf) -> Result<()>;

    /// Bytes the column family takes on disk (an estimate for the in-memory twin).
    ///
    /// # Errors
    /// Database errors.
    fn disk_bytes(&self, cf: Cf) -> Result<u64>;

    /// Size and space available to this process of the filesystem holding the store;
    /// `None` for a store that takes no disk space (the in-memory twin).
    ///
    /// # Errors
    /// The filesystem cannot be examined.
    fn disk_space(&self) -> Result<Option<DiskSpace>> {
        Ok(None)
    }

    /// Syncs the write-ahead log: every write so far becomes durable.
    ///
    /// # Errors
    /// Database errors.
    fn sync(&self) -> Result<()>;

    /// Writes memory tables to files (so a test can damage them), and syncs.
    ///
    /// # Errors
    /// Database errors.
    fn flush(&self) -> Result<()>;

    /// Writes the memory table of `cf` to files and waits: every [`Durability::Unlogged`]
    /// write to `cf` made before the call survives a crash afterwards.
    ///
    /// # Errors
    /// Database errors.
    fn persist(&self, cf: Cf) -> Result<()>;
}

/// Visits every entry of `cf` whose key starts with `prefix`.
///
/// # Errors
/// As [`Backend::scan`].
pub fn scan_prefix(backend: &dyn Backend, cf: Cf, prefix: &[u8], visit: Visit<'_>) -> Result<()> {
    let end = keys::prefix_end(prefix);
    backend.scan(cf, prefix, end.as_deref(), visit)
}
