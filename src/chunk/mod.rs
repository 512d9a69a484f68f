//! The chunk store: content-addressed 512 KiB chunks, framed (zstd, AES-256-GCM) and kept
//! in the `chunks` column family, with a small `chunk_index` entry per chunk for presence
//! checks. Knows nothing of files.
//!
//! Every chunk read from disk is checked against its hash. Writes are never synced here:
//! the commit that references a chunk syncs the write-ahead log, which makes every earlier
//! write durable with it. No tasks are spawned.
//!
//! gc coordination: while a gc run is active, every chunk written or found present by a
//! writer is added to a protected set first; gc deletes a chunk only while holding the same
//! lock and only if it is not protected. A writer that lost the race finds the chunk absent
//! and writes it again.

pub mod crypt;
pub mod frame;
mod gc;
pub mod pieces;
mod space;

use std::collections::{HashSet, VecDeque};
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Instant;

use blake3::hazmat::ChainingValue;
use lru::LruCache;
use parking_lot::{Mutex, RwLock};

use crate::id::ChunkId;
use crate::limits::{
    CHUNK_BYTES, CHUNK_BYTES_U64, CHUNK_CACHE_ENTRIES_MAX, GC_PROTECTED_CHUNKS_MAX, PIECE_BYTES,
    PIECES_PER_CHUNK_MAX, UNLOGGED_CHUNKS_MAX,
};
use crate::store::{self, Backend, Batch, Cf, Durability, keys};

pub use crypt::Cipher;
pub use space::free_space_floor;

/// Errors of the chunk layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A stored or received chunk does not decode to data with its hash.
    #[error("chunk {chunk} is corrupt: {reason}")]
    Corrupt {
        /// The chunk's id.
        chunk: ChunkId,
        /// What is wrong with it.
        reason: String,
    },
    /// A chunk a record needs is not in the store.
    #[error("chunk {0} is missing from the store")]
    Missing(ChunkId),
    /// A chunk the store lacks could not be fetched from a peer in time.
    #[error("chunk {chunk} is not here yet and could not be fetched from a peer: {reason}")]
    Unavailable {
        /// The chunk's id.
        chunk: ChunkId,
        /// Why the fetch failed.
        reason: String,
    },
    /// Key handling failed (wrong identity, no key for an encrypted store).
    #[error("{0}")]
    Key(String),
    /// zstd failed to compress.
    #[error("compression failed: {0}")]
    Codec(String),
    /// The key-value layer failed.
    #[error(transparent)]
    Store(#[from] store::Error),
    /// Too many chunks were written while a gc run was marking.
    #[error(
        "gc stopped: more than {GC_PROTECTED_CHUNKS_MAX} chunks written during the run; run it again"
    )]
    GcOverrun,
}

/// Number of chunks of a file of `size` bytes.
#[must_use]
pub fn chunk_count(size: u64) -> u64 {
    size.div_ceil(CHUNK_BYTES_U64)
}

/// Length of chunk `index` of a file of `size` bytes (0 past the end).
#[must_use]
pub fn chunk_len(size: u64, index: u64) -> usize {
    let start = index.saturating_mul(CHUNK_BYTES_U64);
    usize::try_from(size.saturating_sub(start).min(CHUNK_BYTES_U64)).unwrap_or(CHUNK_BYTES)
}

/// Splits `data` into chunk-sized pieces (the last shorter; none for empty data).
pub fn split(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    data.chunks(CHUNK_BYTES)
}

/// State of a gc run, shared with writers.
#[derive(Default)]
struct GcGuard {
    /// True between [`ChunkStore::gc_begin`] and [`ChunkStore::gc_end`].
    active: bool,
    /// Chunks written or referenced by writers since the run began.
    protected: HashSet<ChunkId>,
    /// Set when `protected` outgrew its bound; the run must abort.
    overrun: bool,
}

/// Where chunks the store lacks come from: the replication fetcher. The chunk layer knows
/// nothing of peers; it only asks.
pub trait Remote: Send + Sync {
    /// Fetches `id` ahead of any queued work, verifies it, stores it, and returns once it is
    /// stored; an error (after a bounded wait) when no peer delivered it.
    ///
    /// # Errors
    /// Why the chunk could not be had, for the reader's EIO.
    fn fetch_now(&self, id: &ChunkId) -> Result<(), String>;
}

/// Content-addressed chunk storage over a [`Backend`].
pub struct ChunkStore {
    backend: Arc<dyn Backend>,
    /// Data key, when the store encrypts at rest.
    cipher: Option<Cipher>,
    /// Decoded chunks recently read or written, bounded by [`CHUNK_CACHE_ENTRIES_MAX`].
    cache: Mutex<LruCache<ChunkId, Arc<Vec<u8>>>>,
    /// Pieces recently read in part ([`Self::read_range`]), by chunk and piece index,
    /// bounded like the cache: a chunk whose piece is read a second time is decoded whole and
    /// cached. Keyed by piece, not chunk, so reads spread at random over a large file (each
    /// chunk touched now and then, in different places) do not decode whole chunks for one
    /// small read each.
    read_in_part: Mutex<LruCache<(ChunkId, usize), ()>>,
    /// gc coordination; writers hold it only to insert into the protected set.
    gc: Mutex<GcGuard>,
    /// Chunks written without the write-ahead log ([`Durability::Unlogged`]) and not yet
    /// persisted: a commit that references one persists them first. At most
    /// [`UNLOGGED_CHUNKS_MAX`]; the put that would pass it persists instead.
    unlogged: Mutex<HashSet<ChunkId>>,
    /// Source of chunks that records reference but the store lacks, while replication runs.
    remote: RwLock<Option<Arc<dyn Remote>>>,
    /// Chunks stored ahead of the record that will reference them (fetched on a peer's
    /// announcement), oldest first with when they were stored: gc keeps them for
    /// [`CHUNK_AHEAD_KEPT_SECS`], at most [`CHUNKS_AHEAD_KEPT_MAX`] of them.
    ahead: Mutex<VecDeque<(Instant, ChunkId)>>,
    /// The last look at the free space of the store's disk.
    space: Mutex<space::SpaceCheck>,
}

impl ChunkStore {
    /// A chunk store over `backend`, encrypting with `cipher` when given.
    #[must_use]
    pub fn new(backend: Arc<dyn Backend>, cipher: Option<Cipher>) -> Self {
        let entries = NonZeroUsize::new(CHUNK_CACHE_ENTRIES_MAX).unwrap_or(NonZeroUsize::MIN);
        Self {
            backend,
            cipher,
            cache: Mutex::new(LruCache::new(entries)),
            read_in_part: Mutex::new(LruCache::new(entries)),
            gc: Mutex::new(GcGuard::default()),
            unlogged: Mutex::new(HashSet::new()),
            remote: RwLock::new(None),
            ahead: Mutex::new(VecDeque::new()),
            space: Mutex::new(space::SpaceCheck::default()),
        }
    }

    /// Makes [`Self::get`] fetch missing chunks through `remote`; `None` stops it (the
    /// replication layer clears it when it stops, which also breaks the reference cycle).
    pub fn set_remote(&self, remote: Option<Arc<dyn Remote>>) {
        *self.remote.write() = remote;
    }

    /// The backend underneath.
    #[must_use]
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// The data key, when the store encrypts.
    #[must_use]
    pub fn cipher(&self) -> Option<&Cipher> {
        self.cipher.as_ref()
    }

    fn protect(&self, id: ChunkId) {
        let mut gc = self.gc.lock();
        if gc.active {
            if gc.protected.len() >= GC_PROTECTED_CHUNKS_MAX {
                gc.overrun = true;
            } else {
                gc.protected.insert(id);
            }
        }
    }

    /// True when the chunk is stored (checks the index, not the frame).
    ///
    /// # Errors
    /// Store errors.
    pub fn contains(&self, id: &ChunkId) -> Result<bool, Error> {
        Ok(self.backend.get(Cf::ChunkIndex, &id.0)?.is_some())
    }

    /// Stores `data` (at most one chunk) unless already present, and returns its id.
    /// Not synced: the commit that references it syncs.
    ///
    /// # Errors
    /// Store errors; a chunk over [`CHUNK_BYTES`].
    pub fn put(&self, data: &[u8]) -> Result<ChunkId, Error> {
        let (id, cvs) = pieces::hash(data);
        self.store_frame(id, Some(&cvs), data, Durability::Buffered)?;
        self.cache.lock().put(id, Arc::new(data.to_vec()));
        Ok(id)
    }

    /// Stores `data` whose hash the caller computed (or checked) as `id`.
    ///
    /// # Errors
    /// Store errors.
    pub fn put_with_id(&self, id: ChunkId, data: &[u8]) -> Result<(), Error> {
        self.store_frame(id, None, data, Durability::Buffered)?;
        self.cache.lock().put(id, Arc::new(data.to_vec()));
        Ok(())
    }

    /// Stores a chunk the caller shares: the same buffer goes into the read cache, uncopied.
    ///
    /// # Errors
    /// Store errors.
    pub fn put_shared(&self, data: Arc<Vec<u8>>) -> Result<ChunkId, Error> {
        let (id, cvs) = pieces::hash(&data);
        self.store_frame(id, Some(&cvs), &data, Durability::Buffered)?;
        self.cache.lock().put(id, data);
        Ok(id)
    }

    /// As [`Self::put_shared`], but the chunk bypasses the write-ahead log, so its bytes are
    /// written to disk once instead of twice. Until [`Self::persist_unlogged`] runs, a crash
    /// loses it: whoever references it in a record must call that first (a commit does).
    ///
    /// # Errors
    /// Store errors.
    pub fn put_shared_unlogged(&self, data: Arc<Vec<u8>>) -> Result<ChunkId, Error> {
        let (id, cvs) = pieces::hash(&data);
        self.put_unlogged_with_id(id, Some(&cvs), data)?;
        Ok(id)
    }

    /// Stores a chunk fetched from a peer, whose bytes the wire edge checked against `id`
    /// (`cvs`: the chaining values of its pieces, from that check): unlogged, as
    /// [`Self::put_shared_unlogged`]. A crash before it is persisted loses it; the record
    /// that references it is already here, so the fetcher finds it missing and asks for it
    /// again.
    ///
    /// # Errors
    /// Store errors.
    pub fn put_fetched(
        &self,
        id: ChunkId,
        data: Arc<Vec<u8>>,
        cvs: &[ChainingValue],
    ) -> Result<(), Error> {
        self.put_unlogged_with_id(id, Some(cvs), data)
    }

    fn put_unlogged_with_id(
        &self,
        id: ChunkId,
        cvs: Option<&[ChainingValue]>,
        data: Arc<Vec<u8>>,
    ) -> Result<(), Error> {
        // Listed before the write, so a commit that finds the chunk stored also finds it here.
        let full = {
            let mut u = self.unlogged.lock();
            u.insert(id);
            u.len() > UNLOGGED_CHUNKS_MAX
        };
        // Kept listed even when it was stored before: another writer may have written it
        // unlogged a moment ago. Persisting a chunk that needed none costs one flush.
        self.store_frame(id, cvs, &data, Durability::Unlogged)?;
        self.cache.lock().put(id, data);
        if full {
            self.persist_all_unlogged()?;
        }
        Ok(())
    }

    /// Persists every chunk written unlogged so far, if any: the fetcher's, and those of
    /// files being written (the fetcher calls it once it has been idle for a moment).
    ///
    /// # Errors
    /// Store errors.
    pub fn persist_pending(&self) -> Result<(), Error> {
        if self.unlogged.lock().is_empty() {
            return Ok(());
        }
        self.persist_all_unlogged()
    }

    /// Makes every chunk of `ids` that was written unlogged survive a crash (by flushing the
    /// chunk tables), so that a record referencing them can be committed.
    ///
    /// # Errors
    /// Store errors.
    pub fn persist_unlogged<'a>(
        &self,
        mut ids: impl Iterator<Item = &'a ChunkId>,
    ) -> Result<(), Error> {
        let pending = {
            let u = self.unlogged.lock();
            !u.is_empty() && ids.any(|id| u.contains(id))
        };
        if pending {
            self.persist_all_unlogged()?;
        }
        Ok(())
    }

    fn persist_all_unlogged(&self) -> Result<(), Error> {
        let written: Vec<ChunkId> = self.unlogged.lock().iter().copied().collect();
        // Bodies first, then the index: a crash between the two leaves a chunk without an
        // index entry (rewritten by the next put), never an index entry without its chunk.
        self.backend.persist(Cf::Chunks)?;
        self.backend.persist(Cf::ChunkIndex)?;
        let mut u = self.unlogged.lock();
        for id in &written {
            u.remove(id);
        }
        Ok(())
    }

    /// Writes the frame of `id` unless it is stored.
    /// `cvs`: the chaining values [`pieces::hash`] gave with `id`, when the caller has them.
    fn store_frame(
        &self,
        id: ChunkId,
        cvs: Option<&[ChainingValue]>,
        data: &[u8],
        durability: Durability,
    ) -> Result<(), Error> {
        self.protect(id);
        if !self.contains(&id)? {
            let frame = match cvs {
                Some(cvs) => frame::encode_hashed(&id, cvs, data, self.cipher.as_ref())?,
                None => frame::encode(&id, data, self.cipher.as_ref())?,
            };
            let plain =
                u32::try_from(data.len()).map_err(|_| Error::Codec("chunk too large".into()))?;
            let stored =
                u32::try_from(frame.len()).map_err(|_| Error::Codec("frame too large".into()))?;
            self.check_space(u64::from(stored))?;
            let mut batch = Batch::new();
            put_frame(&mut batch, &id, frame);
            batch.put(
                Cf::ChunkIndex,
                id.0.to_vec(),
                keys::chunk_info(plain, stored).to_vec(),
            );
            self.backend.write(batch, durability)?;
        }
        Ok(())
    }

    /// Marks `id` as in use by a writer that found it present and will reference it, so a
    /// concurrent gc keeps it; fails with [`Error::Missing`] if it is not stored.
    ///
    /// # Errors
    /// The chunk is missing; store errors.
    pub fn reference(&self, id: &ChunkId) -> Result<(), Error> {
        self.protect(*id);
        if self.contains(id)? {
            Ok(())
        } else {
            Err(Error::Missing(*id))
        }
    }

    /// Reads chunk `id`, checked against its hash. A chunk the store lacks is fetched from
    /// a peer first when replication runs, and the read waits for it (bounded).
    ///
    /// # Errors
    /// [`Error::Missing`], [`Error::Unavailable`], [`Error::Corrupt`], store errors.
    pub fn get(&self, id: &ChunkId) -> Result<Arc<Vec<u8>>, Error> {
        match self.get_local(id) {
            Err(Error::Missing(_)) => {
                let remote = self.remote.read().clone();
                let Some(remote) = remote else {
                    return Err(Error::Missing(*id));
                };
                remote
                    .fetch_now(id)
                    .map_err(|reason| Error::Unavailable { chunk: *id, reason })?;
                self.get_local(id)
            }
            other => other,
        }
    }

    /// Reads chunk `id` from this store only, never asking a peer.
    ///
    /// # Errors
    /// [`Error::Missing`], [`Error::Corrupt`], store errors.
    pub fn get_local(&self, id: &ChunkId) -> Result<Arc<Vec<u8>>, Error> {
        if let Some(hit) = self.cache.lock().get(id) {
            return Ok(Arc::clone(hit));
        }
        let (mut decoded, mut head) = (None, None);
        self.backend
            .read_with(Cf::Chunks, &id.0, &mut |frame| match frame {
                Some(f) if frame::is_head(f) => head = Some(f.to_vec()),
                Some(f) => decoded = Some(frame::decode(id, f, self.cipher.as_ref())),
                None => {}
            })?;
        if let Some(head) = head {
            decoded = Some(self.decode_parts(id, &head, 0, CHUNK_BYTES));
        }
        let data = Arc::new(decoded.ok_or(Error::Missing(*id))??);
        self.cache.lock().put(*id, Arc::clone(&data));
        Ok(data)
    }

    /// Appends bytes `[start, end)` of chunk `id` (fewer when the chunk is shorter) to
    /// `out`, checked against its hash: from the cache when it holds the chunk; else only
    /// the pieces that hold them are decoded, and nothing is cached, unless the piece at
    /// `start` was read in part a moment ago (a reader that comes back to a region gets its
    /// chunk cached).
    /// A chunk the store lacks is fetched whole, as by [`Self::get`].
    ///
    /// # Errors
    /// As [`Self::get`].
    pub fn read_range(
        &self,
        id: &ChunkId,
        start: usize,
        end: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), Error> {
        let cached = self.cache.lock().get(id).cloned();
        let piece = (*id, start / PIECE_BYTES);
        // A frame of one piece (compressed, or version 1) decodes whole for any range: it is
        // remembered as one region, so any second read of it caches it.
        let one_piece = (*id, ONE_PIECE);
        let again = cached.is_none() && {
            let mut seen = self.read_in_part.lock();
            seen.pop(&piece).is_some() || seen.pop(&one_piece).is_some()
        };
        let whole = match cached {
            Some(data) => Some(data),
            None if again => Some(self.get(id)?),
            None => None,
        };
        if let Some(data) = whole {
            let end = end.min(data.len());
            out.extend_from_slice(data.get(start.min(end)..end).unwrap_or(&[]));
            return Ok(());
        }
        let (mut part, mut head, mut whole_frame) = (None, None, false);
        self.backend
            .read_with(Cf::Chunks, &id.0, &mut |frame| match frame {
                Some(f) if frame::is_head(f) => head = Some(f.to_vec()),
                Some(f) => {
                    whole_frame = frame::head_pieces(f) <= 1;
                    part = Some(frame::decode_range(id, f, self.cipher.as_ref(), start, end));
                }
                None => {}
            })?;
        if let Some(head) = head {
            part = Some(self.decode_parts(id, &head, start, end));
        }
        if let Some(part) = part {
            out.extend_from_slice(&part?);
            let region = if whole_frame { one_piece } else { piece };
            self.read_in_part.lock().put(region, ());
        } else {
            let data = self.get(id)?;
            let end = end.min(data.len());
            out.extend_from_slice(data.get(start.min(end)..end).unwrap_or(&[]));
        }
        Ok(())
    }

    /// Bytes `[start, end)` of chunk `id`, whose frame is stored in parts under `head`: the
    /// payloads of the pieces that hold them are looked up together, and only those.
    fn decode_parts(
        &self,
        id: &ChunkId,
        head: &[u8],
        start: usize,
        end: usize,
    ) -> Result<Vec<u8>, Error> {
        let n = frame::head_pieces(head).max(1);
        let first = (start / PIECE_BYTES).min(n - 1);
        let last = (end.saturating_sub(1) / PIECE_BYTES).clamp(first, n - 1);
        let keys: Vec<_> = (first..=last)
            .map(|i| keys::chunk_piece(id, u8::try_from(i).unwrap_or(u8::MAX)))
            .collect();
        let refs: Vec<&[u8]> = keys.iter().map(<[u8; 33]>::as_slice).collect();
        let mut payloads: Vec<Option<Vec<u8>>> = vec![None; refs.len()];
        self.backend.read_many(Cf::Chunks, &refs, &mut |i, v| {
            payloads[i] = v.map(<[u8]>::to_vec);
        })?;
        frame::decode_range_parts(id, head, self.cipher.as_ref(), start, end, &mut |i| {
            Ok(i.checked_sub(first)
                .and_then(|j| payloads.get_mut(j))
                .and_then(Option::take))
        })
    }

    /// True when `id` is in the decoded-chunk cache.
    #[must_use]
    pub fn is_cached(&self, id: &ChunkId) -> bool {
        self.cache.lock().contains(id)
    }

    /// Stores `data`, which a peer sent for chunk `id` and which was checked against `id`
    /// (`cvs` are its pieces' chaining values), in place of whatever frame the store has
    /// for it: a damaged frame, or none (`keibi verify --repair`). The old head and every
    /// possible piece key go in the same synced batch as the new frame.
    ///
    /// # Errors
    /// Store errors.
    pub fn replace_fetched(
        &self,
        id: ChunkId,
        data: Vec<u8>,
        cvs: &[ChainingValue],
    ) -> Result<(), Error> {
        self.protect(id);
        let frame = frame::encode_hashed(&id, cvs, &data, self.cipher.as_ref())?;
        let plain =
            u32::try_from(data.len()).map_err(|_| Error::Codec("chunk too large".into()))?;
        let stored =
            u32::try_from(frame.len()).map_err(|_| Error::Codec("frame too large".into()))?;
        let mut batch = Batch::new();
        delete_frame(&mut batch, &id);
        put_frame(&mut batch, &id, frame);
        batch.put(
            Cf::ChunkIndex,
            id.0.to_vec(),
            keys::chunk_info(plain, stored).to_vec(),
        );
        self.backend.write(batch, Durability::Synced)?;
        self.cache.lock().put(id, Arc::new(data));
        Ok(())
    }

    /// The id of an all-zero chunk of `len` bytes, stored if absent (holes in sparse files).
    ///
    /// # Errors
    /// Store errors.
    pub fn zeros(&self, len: usize) -> Result<ChunkId, Error> {
        let id = ChunkId::of_zeros(len.min(CHUNK_BYTES));
        if self.reference(&id).is_err() {
            self.put_with_id(id, &vec![0u8; len.min(CHUNK_BYTES)])?;
        }
        Ok(id)
    }
}

/// Adds the deletion of `id`'s stored frame to `batch`: the head, and every piece key a
/// frame stored in parts may have (absent keys cost a tombstone each).
fn delete_frame(batch: &mut Batch, id: &ChunkId) {
    batch.delete(Cf::Chunks, id.0.to_vec());
    for piece in 0..PIECES_PER_CHUNK_MAX {
        let piece = u8::try_from(piece).unwrap_or(u8::MAX);
        batch.delete(Cf::Chunks, keys::chunk_piece(id, piece).to_vec());
    }
}

/// The region [`ChunkStore::read_range`] remembers for a frame of one piece.
const ONE_PIECE: usize = usize::MAX;

/// Adds the stored form of `id`'s `frame` to `batch`: whole, or in parts when it has several
/// pieces ([`frame::parts`]).
fn put_frame(batch: &mut Batch, id: &ChunkId, frame: Vec<u8>) {
    let Some((head_len, lens)) = frame::parts(&frame) else {
        batch.put(Cf::Chunks, id.0.to_vec(), frame);
        return;
    };
    // The head and the pieces are slices of the one frame buffer, not copies.
    let frame = bytes::Bytes::from(frame);
    let mut at = head_len;
    for (i, len) in lens.into_iter().enumerate() {
        let piece = u8::try_from(i).unwrap_or(u8::MAX);
        batch.put(
            Cf::Chunks,
            keys::chunk_piece(id, piece).to_vec(),
            frame.slice(at..at + len),
        );
        at += len;
    }
    batch.put(Cf::Chunks, id.0.to_vec(), frame.slice(..head_len));
}

#[cfg(test)]
mod tests;
