//! Directory listings: open, read in pages, close. A listing is taken whole when reading
//! starts, so entries added or removed meanwhile never appear twice or go missing.

use std::sync::Arc;

use crate::id::Ino;
use crate::limits::READDIR_ENTRIES_MAX;
use crate::tree::Kind;

use super::file::Handle;
use super::{DirEntry, Error, Result, Vfs};

impl Vfs {
    /// Opens directory `ino` for reading.
    ///
    /// # Errors
    /// [`Error::NotDir`], [`Error::NotFound`].
    pub fn opendir(&self, ino: Ino) -> Result<u64> {
        self.dir_record(ino)?;
        Ok(self.new_handle(Handle::Dir { ino, entries: None }))
    }

    fn list_dir(&self, ino: Ino) -> Result<Vec<DirEntry>> {
        let dir = self.dir_record(ino)?;
        let parent_ino = if dir.id == crate::id::FileId::ROOT {
            dir.ino
        } else {
            self.live_record(dir.parent)?.ino
        };
        let mut out = vec![
            DirEntry {
                ino: dir.ino,
                offset: 1,
                kind: Kind::Dir,
                name: b".".to_vec(),
            },
            DirEntry {
                ino: parent_ino,
                offset: 2,
                kind: Kind::Dir,
                name: b"..".to_vec(),
            },
        ];
        let mut after: Option<Vec<u8>> = None;
        loop {
            let batch = self
                .tables
                .children(dir.id, after.as_deref(), READDIR_ENTRIES_MAX)?;
            let done = batch.len() < READDIR_ENTRIES_MAX;
            for (name, id) in batch {
                match self.live_record(id) {
                    Ok(r) => {
                        let offset = out.len() as u64 + 1;
                        out.push(DirEntry {
                            ino: r.ino,
                            offset,
                            kind: r.kind,
                            name: name.clone(),
                        });
                    }
                    // An entry whose file is gone (a tombstone, or removed meanwhile) is
                    // not listed; a store that cannot be read fails the listing instead
                    // of hiding the entry.
                    Err(Error::NotFound) => {}
                    Err(e) => return Err(e),
                }
                after = Some(name);
            }
            if done {
                return Ok(out);
            }
        }
    }

    /// Entries of an open directory from position `offset` (0 to start), at most
    /// [`READDIR_ENTRIES_MAX`]. The listing is taken when reading starts at 0, so entries
    /// added or removed meanwhile never make another entry appear twice or not at all.
    ///
    /// # Errors
    /// [`Error::BadHandle`]; store errors.
    pub fn readdir(&self, fh: u64, offset: u64) -> Result<Vec<DirEntry>> {
        let (ino, cached) = match self.handles.lock().get(&fh) {
            Some(Handle::Dir { ino, entries }) => (*ino, entries.clone()),
            Some(Handle::File { .. }) | None => return Err(Error::BadHandle),
        };
        let entries = match cached {
            Some(e) if offset != 0 => e,
            Some(_) | None => {
                let e = Arc::new(self.list_dir(ino)?);
                if let Some(Handle::Dir { entries, .. }) = self.handles.lock().get_mut(&fh) {
                    *entries = Some(Arc::clone(&e));
                }
                e
            }
        };
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(entries.len());
        Ok(entries[start..]
            .iter()
            .take(READDIR_ENTRIES_MAX)
            .cloned()
            .collect())
    }

    /// Closes a directory handle.
    pub fn releasedir(&self, fh: u64) {
        self.handles.lock().remove(&fh);
    }
}
