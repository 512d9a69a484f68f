//! The filesystem core, free of FUSE: inodes, directories, open handles, staging of dirty
//! chunks, and commits. `src/fuse/` translates kernel requests into calls here; tests drive
//! it directly.
//!
//! Concurrency: namespace changes and record writes are serialised by one tree lock, so the
//! sequence index follows commit order. File content is staged per open file under that
//! file's own lock; a commit takes the file lock, then the tree lock (never the reverse).
//! Tasks: the [`seal::Sealer`] pool. Shutdown: [`Vfs::shutdown`] commits every open file;
//! dropping the `Vfs` stops the pool.

mod apply;
mod conflict;
mod dir;
mod extent;
mod file;
mod listing;
mod patch;
mod recover;
pub mod seal;
mod staging;
mod xattr;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use crate::chunk::{self, ChunkStore};
use crate::id::{ChunkId, FileId, Ino};
use crate::limits::{CHUNK_BYTES_U64, STAGED_BYTES_TOTAL_MAX, STAGED_CHECK_WRITES};
use crate::store::{self, tables::Tables};
use crate::tree::{FileRecord, Kind, Timestamp};

pub use apply::{Applied, KernelCache, Outcome};
pub use conflict::conflict_name;
pub use dir::RenameMode;
pub use extent::Seek;
pub use file::OpenFlags;
pub use xattr::XattrSet;

/// Errors of the vfs core; `src/fuse/errno.rs` maps each to an errno.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No such file, directory or inode (ENOENT).
    #[error("no such file or directory")]
    NotFound,
    /// The name exists already (EEXIST).
    #[error("file exists")]
    Exists,
    /// A directory was needed (ENOTDIR).
    #[error("not a directory")]
    NotDir,
    /// A non-directory was needed (EISDIR).
    #[error("is a directory")]
    IsDir,
    /// The directory is not empty (ENOTEMPTY).
    #[error("directory not empty")]
    NotEmpty,
    /// A name longer than 255 bytes (ENAMETOOLONG).
    #[error("name too long")]
    NameTooLong,
    /// An invalid argument or name (EINVAL).
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// The operation is not supported by keibi (EPERM), such as hard links.
    #[error("operation not permitted: {0}")]
    NotPermitted(&'static str),
    /// Unknown file handle (EBADF).
    #[error("bad file handle")]
    BadHandle,
    /// Past the largest file keibi stores (EFBIG).
    #[error("file too large")]
    TooBig,
    /// A seek for data or a hole at or past the end of the file (ENXIO).
    #[error("no such device or address")]
    PastEnd,
    /// No such extended attribute (ENODATA).
    #[error("no such attribute")]
    NoAttr,
    /// An extended attribute outside the namespaces keibi stores (EOPNOTSUPP).
    #[error("operation not supported")]
    Unsupported,
    /// The store's disk is full (ENOSPC).
    #[error("no space left: {0}")]
    NoSpace(String),
    /// A chunk failed (corrupt, missing) or the store failed (EIO).
    #[error(transparent)]
    Chunk(#[from] Arc<chunk::Error>),
    /// The key-value layer failed (EIO).
    #[error(transparent)]
    Store(#[from] store::Error),
}

impl From<chunk::Error> for Error {
    fn from(e: chunk::Error) -> Self {
        match e {
            chunk::Error::Store(store::Error::NoSpace(m)) => Self::NoSpace(m),
            chunk::Error::Store(s) => Self::Store(s),
            other @ (chunk::Error::Corrupt { .. }
            | chunk::Error::Missing(_)
            | chunk::Error::Unavailable { .. }
            | chunk::Error::Key(_)
            | chunk::Error::Codec(_)
            | chunk::Error::GcOverrun) => Self::Chunk(Arc::new(other)),
        }
    }
}

impl Error {
    /// An error shared by a seal job with whoever waits for it; a full disk stays
    /// [`Error::NoSpace`].
    pub(crate) fn shared(e: Arc<chunk::Error>) -> Self {
        match &*e {
            chunk::Error::Store(store::Error::NoSpace(m)) => Self::NoSpace(m.clone()),
            chunk::Error::Store(_)
            | chunk::Error::Corrupt { .. }
            | chunk::Error::Missing(_)
            | chunk::Error::Unavailable { .. }
            | chunk::Error::Key(_)
            | chunk::Error::Codec(_)
            | chunk::Error::GcOverrun => Self::Chunk(e),
        }
    }
}

/// Result of the vfs core.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Preferred I/O size reported in `st_blksize`.
pub const BLKSIZE: u32 = 128 * 1024;

/// Attributes of an inode, as `stat` reports them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attr {
    /// Inode number.
    pub ino: Ino,
    /// What it is.
    pub kind: Kind,
    /// Size in bytes.
    pub size: u64,
    /// 512-byte blocks.
    pub blocks: u64,
    /// Last access.
    pub atime: Timestamp,
    /// Last content change.
    pub mtime: Timestamp,
    /// Last status change.
    pub ctime: Timestamp,
    /// Permission bits (`0o7777`).
    pub perm: u32,
    /// Link count.
    pub nlink: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Device number of device nodes.
    pub rdev: u64,
}

/// A time to set with `setattr`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeSet {
    /// The current time (`UTIME_NOW`).
    Now,
    /// This time.
    At(Timestamp),
}

/// Changes for [`Vfs::setattr`]; `None` leaves a field alone (`UTIME_OMIT`).
#[derive(Clone, Debug, Default)]
pub struct SetAttr {
    /// New permission bits.
    pub mode: Option<u32>,
    /// New owner.
    pub uid: Option<u32>,
    /// New group.
    pub gid: Option<u32>,
    /// New size (truncate or extend).
    pub size: Option<u64>,
    /// New access time.
    pub atime: Option<TimeSet>,
    /// New modification time.
    pub mtime: Option<TimeSet>,
}

/// Who is creating a node: its owner, and the permission bits after the umask.
#[derive(Clone, Copy, Debug)]
pub struct Creator {
    /// Owner uid.
    pub uid: u32,
    /// Owner gid (replaced by the parent's gid in a set-group-id directory).
    pub gid: u32,
}

/// One directory entry returned by [`Vfs::readdir`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    /// Inode number.
    pub ino: Ino,
    /// Position to pass to the next `readdir` call to continue after this entry.
    pub offset: u64,
    /// What it is.
    pub kind: Kind,
    /// Name.
    pub name: Vec<u8>,
}

/// Filesystem figures for `statfs`.
#[derive(Clone, Debug, Default)]
pub struct StatFs {
    /// Total blocks of `bsize`.
    pub blocks: u64,
    /// Free blocks.
    pub bfree: u64,
    /// Free blocks for unprivileged users.
    pub bavail: u64,
    /// Total inodes (an estimate).
    pub files: u64,
    /// Free inodes (an estimate).
    pub ffree: u64,
    /// Block size.
    pub bsize: u32,
    /// Longest name.
    pub namelen: u32,
}

/// How durable [`Vfs::fsync`] and friends make a commit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CommitMode {
    /// Close: seal every dirty chunk into the manifest; not synced.
    Seal,
    /// fsync: small dirty ranges may go to the journal; synced.
    Sync,
}

/// The filesystem core. See the module doc for its locking.
pub struct Vfs {
    tables: Tables,
    chunks: Arc<ChunkStore>,
    /// Serialises namespace changes and every record write.
    tree: Mutex<()>,
    /// Staging of every open regular file, by inode.
    open: Mutex<HashMap<Ino, Arc<file::OpenFile>>>,
    /// Open file handles.
    handles: Mutex<HashMap<u64, file::Handle>>,
    /// Listing pages read last ([`listing`]).
    listings: Mutex<listing::KeptPages>,
    /// Next handle number.
    next_fh: AtomicU64,
    /// The seal and prefetch pool.
    sealer: seal::Sealer,
    /// Directory whose filesystem `statfs` reports.
    statfs_path: PathBuf,
    /// Kernel caches to invalidate after applying a peer's change (set by the mount).
    kernel: parking_lot::RwLock<Option<Arc<dyn KernelCache>>>,
    /// Writes so far, to check the staged total every [`STAGED_CHECK_WRITES`].
    writes: AtomicU64,
    /// The staged total allowed over every open file ([`STAGED_BYTES_TOTAL_MAX`]).
    staged_budget: AtomicU64,
}

impl Vfs {
    /// Opens the filesystem over `tables` and `chunks`, first folding any journal left by a
    /// crash into chunks and releasing files deleted while open.
    ///
    /// # Errors
    /// Store or chunk errors during recovery.
    pub fn new(tables: Tables, chunks: Arc<ChunkStore>, statfs_path: &Path) -> Result<Self> {
        let vfs = Self {
            tables,
            sealer: seal::Sealer::start(Arc::clone(&chunks)),
            chunks,
            tree: Mutex::new(()),
            open: Mutex::new(HashMap::new()),
            handles: Mutex::new(HashMap::new()),
            listings: Mutex::new(listing::KeptPages::default()),
            next_fh: AtomicU64::new(1),
            statfs_path: statfs_path.to_path_buf(),
            kernel: parking_lot::RwLock::new(None),
            writes: AtomicU64::new(0),
            staged_budget: AtomicU64::new(STAGED_BYTES_TOTAL_MAX),
        };
        vfs.recover()?;
        Ok(vfs)
    }

    /// The tables underneath.
    #[must_use]
    pub fn tables(&self) -> &Tables {
        &self.tables
    }

    /// The chunk store underneath.
    #[must_use]
    pub fn chunks(&self) -> &Arc<ChunkStore> {
        &self.chunks
    }

    /// Whole chunks stored for files still being written, for replication to announce.
    #[must_use]
    pub fn announced(&self) -> &seal::Announced {
        self.sealer.announced()
    }

    fn record_of(&self, ino: Ino) -> Result<FileRecord> {
        let id = self.tables.file_of_ino(ino)?.ok_or(Error::NotFound)?;
        self.tables.record(id)?.ok_or(Error::NotFound)
    }

    fn live_record(&self, id: FileId) -> Result<FileRecord> {
        match self.tables.record(id)? {
            Some(r) if !r.tombstone => Ok(r),
            Some(_) | None => Err(Error::NotFound),
        }
    }

    fn attr_of(&self, r: &FileRecord) -> Attr {
        // Blocks in use: whole chunks of zeros (holes) take none, so that `cp`, `tar` and
        // `rsync` see a sparse file as sparse and skip its holes with SEEK_DATA. An open
        // file's holes are those with nothing staged.
        let open = self.open.lock().get(&r.ino).map(|f| {
            let st = f.state.lock();
            (st.size, st.hole_bytes())
        });
        let (size, hole_bytes) = open.unwrap_or_else(|| {
            let zeros = ChunkId::of_zero_chunk();
            let holes = r.manifest.iter().filter(|c| **c == zeros).count() as u64;
            (r.size, holes * CHUNK_BYTES_U64)
        });
        Attr {
            ino: r.ino,
            kind: r.kind,
            size,
            blocks: size.saturating_sub(hole_bytes).div_ceil(512),
            atime: r.atime,
            mtime: r.mtime,
            ctime: r.ctime,
            perm: r.mode & 0o7777,
            nlink: r.nlink(),
            uid: r.uid,
            gid: r.gid,
            rdev: r.rdev,
        }
    }

    /// Attributes of `ino`.
    ///
    /// # Errors
    /// [`Error::NotFound`]; store errors.
    pub fn getattr(&self, ino: Ino) -> Result<Attr> {
        let r = self.record_of(ino)?;
        if r.tombstone && !self.open.lock().contains_key(&ino) {
            return Err(Error::NotFound);
        }
        let mut attr = self.attr_of(&r);
        if let Some(f) = self.open.lock().get(&ino).cloned() {
            f.overlay_times(&mut attr);
        }
        Ok(attr)
    }

    /// Chunk ids referenced by staged, not yet committed data: gc marks them.
    #[must_use]
    pub fn staged_chunks(&self) -> Vec<ChunkId> {
        let files: Vec<_> = self.open.lock().values().cloned().collect();
        files.iter().flat_map(|f| f.staged_chunks()).collect()
    }

    /// Chunks referenced by live files that this store lacks: at most `limit`.
    ///
    /// # Errors
    /// Store errors.
    pub fn missing_chunks(&self, limit: usize) -> Result<Vec<ChunkId>> {
        let mut out = Vec::new();
        let mut failure = None;
        let mut seen = std::collections::HashSet::new();
        self.tables.for_each_record(&mut |r| {
            if r.tombstone || r.kind != Kind::File {
                return true;
            }
            for c in &r.manifest {
                match self.chunks.contains(c) {
                    Ok(true) => {}
                    Ok(false) => {
                        if seen.insert(*c) {
                            out.push(*c);
                        }
                    }
                    Err(e) => {
                        failure = Some(e);
                        return false;
                    }
                }
            }
            out.len() < limit
        })?;
        if let Some(e) = failure {
            return Err(e.into());
        }
        out.truncate(limit);
        Ok(out)
    }

    /// Bytes of file content held in memory by staging (dirty buffers and chunks being
    /// sealed), over every open file.
    #[must_use]
    pub fn staged_bytes(&self) -> u64 {
        let files: Vec<_> = self.open.lock().values().cloned().collect();
        files.iter().map(|f| f.state.lock().staged_bytes()).sum()
    }

    /// Sets the staged total allowed over every open file (default
    /// [`STAGED_BYTES_TOTAL_MAX`]): for tests, and for machines with less memory.
    pub fn set_staged_budget(&self, bytes: u64) {
        self.staged_budget.store(bytes, Ordering::Relaxed);
    }

    /// Called after each write: every [`STAGED_CHECK_WRITES`], when the open files together
    /// stage more than the budget, seals the content of the largest until half is left.
    /// The writer waits for those seals, which is the backpressure.
    pub(crate) fn bound_staged(&self) {
        if self.writes.fetch_add(1, Ordering::Relaxed) % STAGED_CHECK_WRITES != 0 {
            return;
        }
        let budget = self.staged_budget.load(Ordering::Relaxed);
        let files: Vec<_> = self.open.lock().values().cloned().collect();
        let mut sizes: Vec<_> = files
            .into_iter()
            .map(|f| {
                let bytes = f.state.lock().staged_bytes();
                (bytes, f)
            })
            .collect();
        let mut total: u64 = sizes.iter().map(|(b, _)| b).sum();
        if total <= budget {
            return;
        }
        sizes.sort_by_key(|(bytes, _)| std::cmp::Reverse(*bytes));
        for (bytes, f) in sizes {
            if total <= budget / 2 {
                break;
            }
            let mut st = f.state.lock();
            // Another file's relief failing (a chunk under an overlay unreadable) is not this
            // writer's error: that content stays staged, and its own commit reports.
            if let Err(e) = st.relieve_all(&self.chunks, &self.sealer) {
                tracing::warn!(ino = f.ino, error = %e, "could not seal staged content");
            }
            total = total.saturating_sub(bytes) + st.staged_bytes();
        }
    }

    /// Statistics of the filesystem holding the store.
    ///
    /// # Errors
    /// The store directory cannot be examined.
    pub fn statfs(&self) -> Result<StatFs> {
        let total = store::disk_space(&self.statfs_path)
            .map_err(|e| Error::Store(store::Error::Io(e.to_string())))?;
        let bsize = 4096u64;
        Ok(StatFs {
            blocks: total.total / bsize,
            bfree: total.free / bsize,
            // What the store keeps free is not available to files.
            bavail: total
                .available
                .saturating_sub(crate::chunk::free_space_floor(total.total))
                / bsize,
            files: u64::from(u32::MAX),
            ffree: u64::from(u32::MAX) / 2,
            bsize: 4096,
            namelen: 255,
        })
    }

    /// Makes every committed change durable (fsync of a directory).
    ///
    /// # Errors
    /// Store errors.
    pub fn sync_all(&self) -> Result<()> {
        Ok(self.tables.backend().sync()?)
    }

    /// Commits the changes of open files that have not changed for `quiet`, as a close
    /// would: writes not yet fsynced, and fsynced ones that only the journal holds, get a
    /// record. Replication calls it, so that a file kept open (a database held open for
    /// days, a log) reaches the peers without being closed. A file busy in another request
    /// is left for the next call. Returns how many files were committed.
    ///
    /// # Errors
    /// The first commit that failed (the others are still attempted); its data stays staged.
    pub fn commit_quiet_files(&self, quiet: std::time::Duration) -> Result<usize> {
        let files: Vec<_> = self.open.lock().values().cloned().collect();
        let now = std::time::SystemTime::now();
        let (mut committed, mut first) = (0, None);
        for f in files {
            let Some(mut st) = f.state.try_lock() else {
                continue;
            };
            let is_quiet = st.mtime.is_some_and(|t| {
                now.duration_since(t.into())
                    .is_ok_and(|since| since >= quiet)
            });
            if !is_quiet {
                continue;
            }
            match self.commit_state(&mut st, CommitMode::Seal) {
                Ok(()) => committed += 1,
                Err(e) => {
                    first.get_or_insert(e);
                }
            }
        }
        first.map_or(Ok(committed), Err)
    }

    /// Commits every open file and syncs: used at unmount.
    ///
    /// # Errors
    /// The first commit that failed (the others are still attempted).
    pub fn shutdown(&self) -> Result<()> {
        let files: Vec<_> = self.open.lock().values().cloned().collect();
        let mut first = None;
        for f in files {
            if let Err(e) = self.commit_file(&f, CommitMode::Seal) {
                first.get_or_insert(e);
            }
        }
        if let Err(e) = self.sync_all() {
            first.get_or_insert(e);
        }
        first.map_or(Ok(()), Err)
    }
}
