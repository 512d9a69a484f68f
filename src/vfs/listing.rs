//! Directory listings: open, read in pages, close. A listing is read from the store one page
//! at a time, in name order, each page continuing after the last name of the one before:
//! memory stays one page per open directory however large it is, and the first entries
//! come at once. An entry present for the whole listing is listed exactly once; one added,
//! removed or renamed meanwhile may or may not be (as POSIX allows).
//!
//! An entry's offset, the position the kernel (and `telldir`) gives back to continue after
//! it, is a hash of its name ([`offset_of`]), not a count: it stays valid while other
//! entries come and go, so a `seekdir` to it goes on from the same entry.

use std::sync::Arc;

use crate::id::{FileId, Ino};
use crate::limits::READDIR_ENTRIES_MAX;
use crate::tree::Kind;

use super::file::Handle;
use super::{DirEntry, Error, Result, Vfs};

/// Offsets of `.` and `..`; a name's offset is above them.
const DOT_OFFSET: u64 = 1;
const DOTDOT_OFFSET: u64 = 2;

/// The offset of the entry `name`: 62 bits of its hash, above [`DOTDOT_OFFSET`], below 2^63
/// (the kernel keeps directory positions as signed 64-bit numbers).
fn offset_of(name: &[u8]) -> u64 {
    let h = blake3::hash(name);
    let mut b = [0u8; 8];
    b.copy_from_slice(&h.as_bytes()[..8]);
    (u64::from_le_bytes(b) >> 2) + DOTDOT_OFFSET + 1
}

/// One page of a listing: what an open directory keeps between two reads.
pub(crate) struct Page {
    /// Entries in name order; `.` and `..` start the first page.
    entries: Vec<DirEntry>,
    /// Offset of the last entry listed before this page. The kernel may go on from it when
    /// this page's first entry did not fit its buffer, and that entry may be gone by then
    /// (`rm -rf` removes what it has read).
    before: Option<u64>,
    /// The last name read from the store, listed or not: the next page starts after it.
    after: Option<Vec<u8>>,
    /// No entries follow.
    done: bool,
}

impl Page {
    /// Index of the entry after the one at `offset`, if that one is in this page.
    fn after_offset(&self, offset: u64) -> Option<usize> {
        if self.before == Some(offset) {
            return Some(0);
        }
        self.entries
            .iter()
            .position(|e| e.offset == offset)
            .map(|i| i + 1)
    }

    /// The offset the next page is read after.
    fn last_offset(&self) -> Option<u64> {
        self.entries.last().map(|e| e.offset).or(self.before)
    }
}

impl Vfs {
    /// Opens directory `ino` for reading.
    ///
    /// # Errors
    /// [`Error::NotDir`], [`Error::NotFound`].
    pub fn opendir(&self, ino: Ino) -> Result<u64> {
        self.dir_record(ino)?;
        Ok(self.new_handle(Handle::Dir { ino, page: None }))
    }

    /// The listing's first page: `.`, `..` and the first children.
    fn first_page(&self, ino: Ino) -> Result<Page> {
        let dir = self.dir_record(ino)?;
        let parent_ino = if dir.id == FileId::ROOT {
            dir.ino
        } else {
            self.live_record(dir.parent)?.ino
        };
        let mut page = self.next_page(dir.id, None, None)?;
        let dots = [
            DirEntry {
                ino: dir.ino,
                offset: DOT_OFFSET,
                kind: Kind::Dir,
                name: b".".to_vec(),
            },
            DirEntry {
                ino: parent_ino,
                offset: DOTDOT_OFFSET,
                kind: Kind::Dir,
                name: b"..".to_vec(),
            },
        ];
        page.entries.splice(0..0, dots);
        Ok(page)
    }

    /// The page of directory `dir` after name `after` (whose entry, if listed, was at offset
    /// `before`): up to [`READDIR_ENTRIES_MAX`] names read, of which those whose file is
    /// live are listed.
    fn next_page(&self, dir: FileId, after: Option<&[u8]>, before: Option<u64>) -> Result<Page> {
        let batch = self.tables.children(dir, after, READDIR_ENTRIES_MAX)?;
        let mut page = Page {
            entries: Vec::with_capacity(batch.len() + 2),
            before,
            after: after.map(<[u8]>::to_vec),
            done: batch.len() < READDIR_ENTRIES_MAX,
        };
        for (name, id) in batch {
            match self.live_record(id) {
                Ok(r) => page.entries.push(DirEntry {
                    ino: r.ino,
                    offset: offset_of(&name),
                    kind: r.kind,
                    name: name.clone(),
                }),
                // An entry whose file is gone (a tombstone, or removed meanwhile) is not
                // listed; a store that cannot be read fails the listing instead of hiding
                // the entry.
                Err(Error::NotFound) => {}
                Err(e) => return Err(e),
            }
            page.after = Some(name);
        }
        Ok(page)
    }

    /// Entries of an open directory after the one at `offset` (0 to start), at most
    /// [`READDIR_ENTRIES_MAX`]; empty at the end. Going on from an entry of the last page
    /// read costs at most one page; from an entry further back (a `seekdir`), the listing
    /// is read again up to it. An offset whose entry has gone meanwhile ends the listing.
    ///
    /// # Errors
    /// [`Error::BadHandle`]; store errors.
    pub fn readdir(&self, fh: u64, offset: u64) -> Result<Vec<DirEntry>> {
        let (ino, kept) = match self.handles.lock().get(&fh) {
            Some(Handle::Dir { ino, page }) => (*ino, page.clone()),
            Some(Handle::File { .. }) | None => return Err(Error::BadHandle),
        };
        let (mut page, mut start) = match kept {
            Some(p) if offset != 0 => match p.after_offset(offset) {
                Some(i) => (p, i),
                None => self.seek_listing(ino, offset)?,
            },
            Some(_) | None => (Arc::new(self.first_page(ino)?), 0),
        };
        // Each page read either ends the listing or starts after a later name.
        while start >= page.entries.len() && !page.done {
            let dir = self.dir_record(ino)?.id;
            page = Arc::new(self.next_page(dir, page.after.as_deref(), page.last_offset())?);
            start = 0;
        }
        let out = page.entries[start.min(page.entries.len())..]
            .iter()
            .take(READDIR_ENTRIES_MAX)
            .cloned()
            .collect();
        if let Some(Handle::Dir { page: kept, .. }) = self.handles.lock().get_mut(&fh) {
            *kept = Some(page);
        }
        Ok(out)
    }

    /// Reads the listing of `ino` from the start up to the entry at `offset`: its page and
    /// the index after it, or the last page and its end when no entry has that offset.
    fn seek_listing(&self, ino: Ino, offset: u64) -> Result<(Arc<Page>, usize)> {
        let mut page = self.first_page(ino)?;
        loop {
            if let Some(i) = page.after_offset(offset) {
                return Ok((Arc::new(page), i));
            }
            if page.done {
                let end = page.entries.len();
                return Ok((Arc::new(page), end));
            }
            let dir = self.dir_record(ino)?.id;
            page = self.next_page(dir, page.after.as_deref(), page.last_offset())?;
        }
    }

    /// Closes a directory handle.
    pub fn releasedir(&self, fh: u64) {
        self.handles.lock().remove(&fh);
    }
}
