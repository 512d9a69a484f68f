//! `keibi gc`: mark and sweep of chunks that no record references.
//!
//! [`GcPlan::compute`] starts gc protection in the chunk store (every chunk written or
//! referenced from then on is kept), marks every chunk referenced by a record (tombstones
//! of files still open included), by staged data or fetched ahead of its record within the
//! hour, and lists the rest. The plan also lists orphans: chunk frames without an index
//! entry (left by a crash or a full disk between the two flushes of chunks written
//! unlogged) that no record references; gc deletes them like unreferenced chunks. Printing
//! the plan is `--dry-run`; [`GcPlan::execute`] deletes in bounded batches and compacts so
//! that the disk space is freed. Any read error during the mark aborts the run: a chunk is
//! never deleted on the strength of an incomplete mark. No tasks are spawned here; the
//! mount's automatic runs ([`auto`]) have a thread of their own.

pub mod auto;

use std::collections::HashSet;
use std::ops::ControlFlow;

use serde::Serialize;

use crate::chunk::{self, ChunkStore};
use crate::id::ChunkId;
use crate::limits::GC_DELETE_BATCH_CHUNKS;
use crate::store::{self, Cf, Skim, keys};
use crate::tree::FileRecord;

/// Errors of a gc run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Another gc run is active on this store.
    #[error("another gc run is active on this store")]
    Busy,
    /// The mark could not read everything; nothing was deleted.
    #[error("gc aborted, nothing deleted: the mark failed to read {0}")]
    MarkFailed(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] store::Error),
    /// The chunk layer failed.
    #[error(transparent)]
    Chunk(#[from] chunk::Error),
}

/// What a gc run will delete.
pub struct GcPlan<'a> {
    chunks: &'a ChunkStore,
    /// Chunks referenced by records or staging.
    pub live_chunks: u64,
    /// Chunks in the store when the mark ended.
    pub stored_chunks: u64,
    /// Chunks to delete, with their stored sizes.
    pub doomed: Vec<(ChunkId, u64)>,
    /// Frames without an index entry that no record references, to delete too.
    pub orphans: Vec<ChunkId>,
}

/// What a gc run did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct GcReport {
    /// Chunks deleted.
    pub deleted_chunks: u64,
    /// Stored bytes of the deleted chunks.
    pub deleted_bytes: u64,
    /// Frames without an index entry deleted.
    pub deleted_orphans: u64,
    /// Chunks kept because a writer used them during the run.
    pub kept_in_use: u64,
    /// Disk bytes of the chunk store before the run.
    pub disk_bytes_before: u64,
    /// Disk bytes of the chunk store after deleting and compacting.
    pub disk_bytes_after: u64,
}

impl<'a> GcPlan<'a> {
    /// Marks live chunks and lists the others. `staged` lists chunks referenced by data not
    /// yet committed (the mount's open files); it is called after protection has started.
    ///
    /// # Errors
    /// [`Error::Busy`]; [`Error::MarkFailed`] on any read error.
    pub fn compute(
        chunks: &'a ChunkStore,
        staged: &dyn Fn() -> Vec<ChunkId>,
    ) -> Result<Self, Error> {
        if !chunks.gc_begin() {
            return Err(Error::Busy);
        }
        let mut plan = Self {
            chunks,
            live_chunks: 0,
            stored_chunks: 0,
            doomed: Vec::new(),
            orphans: Vec::new(),
        };
        let mut live: HashSet<ChunkId> = staged().into_iter().collect();
        live.extend(chunks.kept_ahead());
        let backend = chunks.backend();
        let mut bad = None;
        backend
            .scan(
                Cf::Files,
                &[],
                None,
                &mut |k, v| match FileRecord::decode(v) {
                    Ok(r) => {
                        live.extend(r.manifest);
                        ControlFlow::Continue(())
                    }
                    Err(e) => {
                        bad = Some(format!(
                            "file record {}: {}",
                            data_encoding::HEXLOWER.encode(k),
                            e.0
                        ));
                        ControlFlow::Break(())
                    }
                },
            )
            .map_err(|e| Error::MarkFailed(e.to_string()))?;
        if let Some(b) = bad {
            return Err(Error::MarkFailed(b));
        }
        plan.live_chunks = live.len() as u64;
        // Index keys come in order: the orphan pass below walks frames in the same order.
        let mut indexed: Vec<ChunkId> = Vec::new();
        backend
            .scan(Cf::ChunkIndex, &[], None, &mut |k, v| {
                plan.stored_chunks += 1;
                match (keys::chunk_id(k), keys::parse_chunk_info(v)) {
                    (Ok(id), Ok((_, stored))) => {
                        if !live.contains(&id) {
                            plan.doomed.push((id, u64::from(stored)));
                        }
                        indexed.push(id);
                        ControlFlow::Continue(())
                    }
                    (Err(e), _) | (_, Err(e)) => {
                        bad = Some(e.to_string());
                        ControlFlow::Break(())
                    }
                }
            })
            .map_err(|e| Error::MarkFailed(e.to_string()))?;
        if let Some(b) = bad {
            return Err(Error::MarkFailed(b));
        }
        plan.orphans = orphans(backend.as_ref(), &indexed, &live)?;
        Ok(plan)
    }

    /// Stored bytes the plan would free.
    #[must_use]
    pub fn doomed_bytes(&self) -> u64 {
        self.doomed.iter().map(|(_, b)| b).sum()
    }

    /// Deletes the planned chunks that no writer used meanwhile, in bounded batches, then
    /// compacts so the space is freed on disk.
    ///
    /// # Errors
    /// Store errors; a run that outgrew its protection bound.
    pub fn execute(self) -> Result<GcReport, Error> {
        let backend = self.chunks.backend();
        let mut report = GcReport {
            disk_bytes_before: backend.disk_bytes(Cf::Chunks)?,
            ..GcReport::default()
        };
        for batch in self.orphans.chunks(GC_DELETE_BATCH_CHUNKS) {
            let deleted = self.chunks.gc_delete(batch)?.len() as u64;
            report.deleted_orphans += deleted;
            report.kept_in_use += batch.len() as u64 - deleted;
        }
        for batch in self.doomed.chunks(GC_DELETE_BATCH_CHUNKS) {
            let ids: Vec<ChunkId> = batch.iter().map(|(id, _)| *id).collect();
            let deleted: HashSet<ChunkId> = self.chunks.gc_delete(&ids)?.into_iter().collect();
            for (id, bytes) in batch {
                if deleted.contains(id) {
                    report.deleted_chunks += 1;
                    report.deleted_bytes += bytes;
                } else {
                    report.kept_in_use += 1;
                }
            }
        }
        if report.deleted_chunks + report.deleted_orphans > 0 {
            backend.compact(Cf::Chunks)?;
            backend.compact(Cf::ChunkIndex)?;
        }
        report.disk_bytes_after = backend.disk_bytes(Cf::Chunks)?;
        Ok(report)
    }
}

/// The frames of `Cf::Chunks` with no entry in `indexed` (sorted) and not in `live`: their
/// heads, read key by key with each frame's pieces skipped over unread.
///
/// # Errors
/// [`Error::MarkFailed`] on any read error.
fn orphans(
    backend: &dyn store::Backend,
    indexed: &[ChunkId],
    live: &HashSet<ChunkId>,
) -> Result<Vec<ChunkId>, Error> {
    let mut orphans = Vec::new();
    let mut at = 0;
    backend
        .skim(Cf::Chunks, &[], &mut |k| {
            // A head, or a piece whose head is absent (the scan skips the pieces of a head).
            let id = match k.len() {
                32 | keys::CHUNK_PIECE_KEY_BYTES => ChunkId::from_slice(&k[..32]),
                _ => None,
            };
            let Some(id) = id else {
                // Not a chunk's key: verify reports it; gc leaves it alone.
                return Skim::Next;
            };
            at += indexed[at..].partition_point(|i| *i < id);
            if indexed.get(at) != Some(&id) && !live.contains(&id) {
                orphans.push(id);
            }
            // On past every key of this chunk: a frame's pieces sort right after its head.
            keys::prefix_end(&id.0).map_or(Skim::Stop, Skim::SkipTo)
        })
        .map_err(|e| Error::MarkFailed(e.to_string()))?;
    Ok(orphans)
}

impl Drop for GcPlan<'_> {
    fn drop(&mut self) {
        self.chunks.gc_end();
    }
}
