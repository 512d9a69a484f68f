//! gc's side of the chunk store: a run marks its start, deletes only chunks no writer
//! protected meanwhile, and ends (see the module doc of [`super`]); chunks stored ahead of
//! their record are listed for the mark to keep.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use crate::id::ChunkId;
use crate::limits::{CHUNK_AHEAD_KEPT_SECS, CHUNKS_AHEAD_KEPT_MAX};
use crate::store::{Batch, Cf, Durability};

use super::{ChunkStore, Error, delete_frame};

impl ChunkStore {
    /// Notes that `id` is being stored ahead of the record that will reference it, so that a gc
    /// in the meantime keeps it (for a while: the record may never come).
    pub fn stored_ahead(&self, id: ChunkId) {
        let mut ahead = self.ahead.lock();
        if ahead.len() >= CHUNKS_AHEAD_KEPT_MAX {
            ahead.pop_front();
        }
        ahead.push_back((Instant::now(), id));
    }

    /// The chunks stored ahead of their record in the last [`CHUNK_AHEAD_KEPT_SECS`] (older
    /// ones are forgotten): gc's mark counts them as referenced.
    pub fn kept_ahead(&self) -> Vec<ChunkId> {
        let mut ahead = self.ahead.lock();
        let keep = Duration::from_secs(CHUNK_AHEAD_KEPT_SECS);
        while ahead.front().is_some_and(|(at, _)| at.elapsed() > keep) {
            ahead.pop_front();
        }
        ahead.iter().map(|(_, id)| *id).collect()
    }

    /// Starts gc protection: from now on every written or referenced chunk is protected.
    /// False when a gc run is already active.
    #[must_use]
    pub fn gc_begin(&self) -> bool {
        let mut gc = self.gc.lock();
        if gc.active {
            return false;
        }
        gc.active = true;
        gc.overrun = false;
        gc.protected.clear();
        true
    }

    /// Ends gc protection.
    pub fn gc_end(&self) {
        let mut gc = self.gc.lock();
        gc.active = false;
        gc.protected = HashSet::new();
    }

    /// Deletes those of `ids` that no writer protected since [`Self::gc_begin`], atomically
    /// with respect to writers; returns the ids deleted.
    ///
    /// # Errors
    /// [`Error::GcOverrun`]; store errors.
    pub fn gc_delete(&self, ids: &[ChunkId]) -> Result<Vec<ChunkId>, Error> {
        let gc = self.gc.lock();
        if gc.overrun {
            return Err(Error::GcOverrun);
        }
        let doomed: Vec<ChunkId> = ids
            .iter()
            .filter(|id| !gc.protected.contains(id))
            .copied()
            .collect();
        let mut batch = Batch::new();
        for id in &doomed {
            delete_frame(&mut batch, id);
            batch.delete(Cf::ChunkIndex, id.0.to_vec());
        }
        self.backend.write(batch, Durability::Buffered)?;
        drop(gc);
        let mut cache = self.cache.lock();
        for id in &doomed {
            cache.pop(id);
        }
        Ok(doomed)
    }
}
