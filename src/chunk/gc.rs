//! gc's side of the chunk store: a run marks its start, deletes only chunks no writer
//! protected meanwhile, and ends (see the module doc of [`super`]).

use std::collections::HashSet;

use crate::id::ChunkId;
use crate::store::{Batch, Cf, Durability};

use super::{ChunkStore, Error, delete_frame};

impl ChunkStore {
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
