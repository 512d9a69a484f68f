//! Directory listings, read in pages without open handles. A listing is read from the store
//! one page at a time, in name order, each page continuing after the last name of the one
//! before, so the first entries come at once however large the directory is. An entry
//! present for the whole listing is listed exactly once; one added, removed or renamed
//! meanwhile may or may not be (as POSIX allows).
//!
//! An entry's offset, the position the kernel (and `telldir`) gives back to continue after
//! it, is a hash of its name ([`offset_of`]), not a count: it stays valid while other
//! entries come and go, so a `seekdir` to it goes on from the same entry.
//!
//! There are no directory handles: the mount lets the kernel open directories without
//! asking (two round trips fewer per listing). The pages read last, [`LISTING_PAGES_KEPT`]
//! of them over all directories, are kept to find where an offset is. A kept page is
//! served as it was read only while its directory is unchanged (the same ctime, which every
//! change of its entries sets); otherwise the listing goes on from the store after the name
//! at that offset, so a listing started after a change never shows what the change removed.

use std::sync::Arc;

use crate::id::{FileId, Ino};
use crate::limits::{LISTING_PAGES_KEPT, READDIR_ENTRIES_MAX};
use crate::tree::{FileRecord, Kind, Timestamp};

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

/// One page of a listing, as read from the store.
pub(crate) struct Page {
    /// The directory.
    ino: Ino,
    /// Its ctime when the page was read: the page is current while this holds.
    ctime: Timestamp,
    /// Entries in name order; `.` and `..` start the first page.
    entries: Vec<DirEntry>,
    /// Offset of the last entry listed before this page. The kernel may go on from it when
    /// this page's first entry did not fit its buffer, and that entry may be gone by then
    /// (`rm -rf` removes what it has read).
    before: Option<u64>,
    /// The name this page was read after (`None` for the first page).
    from: Option<Vec<u8>>,
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

/// The pages read last, most recent first: at most [`LISTING_PAGES_KEPT`].
#[derive(Default)]
pub(crate) struct KeptPages(std::collections::VecDeque<Arc<Page>>);

impl KeptPages {
    /// The most recent page of `ino` holding the position after `offset`, and the index
    /// there; a page of the directory as it is now (`ctime`) before any older one.
    fn find(&self, ino: Ino, ctime: Timestamp, offset: u64) -> Option<(Arc<Page>, usize)> {
        let mut stale = None;
        for p in self.0.iter().filter(|p| p.ino == ino) {
            if let Some(i) = p.after_offset(offset) {
                if p.ctime == ctime {
                    return Some((Arc::clone(p), i));
                }
                if stale.is_none() {
                    stale = Some((Arc::clone(p), i));
                }
            }
        }
        stale
    }

    fn keep(&mut self, page: &Arc<Page>) {
        self.0.retain(|p| !Arc::ptr_eq(p, page));
        self.0.push_front(Arc::clone(page));
        self.0.truncate(LISTING_PAGES_KEPT);
    }
}

impl Vfs {
    /// Checks that `ino` is a directory that can be listed (an `opendir`).
    ///
    /// # Errors
    /// [`Error::NotDir`], [`Error::NotFound`].
    pub fn opendir(&self, ino: Ino) -> Result<()> {
        self.dir_record(ino).map(|_| ())
    }

    /// The listing's first page of directory `dir`: `.`, `..` and the first children.
    fn first_page(&self, dir: &FileRecord) -> Result<Page> {
        let parent_ino = if dir.id == FileId::ROOT {
            dir.ino
        } else {
            self.live_record(dir.parent)?.ino
        };
        let mut page = self.next_page(dir, None, None)?;
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

    /// The page of directory `dir` (as read for this listing) after name `after` (whose
    /// entry, if listed, was at offset `before`): up to [`READDIR_ENTRIES_MAX`] names read,
    /// of which those whose file is live are listed.
    fn next_page(
        &self,
        dir: &FileRecord,
        after: Option<&[u8]>,
        before: Option<u64>,
    ) -> Result<Page> {
        let batch = self.tables.children(dir.id, after, READDIR_ENTRIES_MAX)?;
        let mut page = Page {
            ino: dir.ino,
            ctime: dir.ctime,
            entries: Vec::with_capacity(batch.len() + 2),
            before,
            from: after.map(<[u8]>::to_vec),
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

    /// Entries of directory `ino` after the one at `offset` (0 to start), at most
    /// [`READDIR_ENTRIES_MAX`]; empty at the end. Going on from an entry of a page read
    /// lately costs at most one page; from an entry further back (a `seekdir`), the listing
    /// is read again up to it. An offset whose entry has gone meanwhile ends the listing.
    ///
    /// # Errors
    /// [`Error::NotDir`], [`Error::NotFound`]; store errors.
    pub fn readdir(&self, ino: Ino, offset: u64) -> Result<Vec<DirEntry>> {
        // The ctime is read before any page: a change after it makes the page read stale.
        let dir = self.dir_record(ino)?;
        let kept = if offset > DOTDOT_OFFSET {
            self.listings.lock().find(ino, dir.ctime, offset)
        } else {
            None
        };
        let (mut page, mut start) = match kept {
            Some((p, i)) if p.ctime == dir.ctime => (p, i),
            // Changed since: go on from the store after the entry at `offset` (the page's
            // own start when the entry is the one before it).
            Some((p, i)) => {
                let from = match i.checked_sub(1) {
                    Some(i) => p.entries.get(i).map(|e| e.name.as_slice()),
                    None => p.from.as_deref(),
                };
                match from {
                    Some(name) => (Arc::new(self.next_page(&dir, Some(name), Some(offset))?), 0),
                    None => self.seek_listing(&dir, offset)?,
                }
            }
            None if offset == 0 => (Arc::new(self.first_page(&dir)?), 0),
            None => self.seek_listing(&dir, offset)?,
        };
        // Each page read either ends the listing or starts after a later name.
        while start >= page.entries.len() && !page.done {
            page = Arc::new(self.next_page(&dir, page.after.as_deref(), page.last_offset())?);
            start = 0;
        }
        let out = page.entries[start.min(page.entries.len())..]
            .iter()
            .take(READDIR_ENTRIES_MAX)
            .cloned()
            .collect();
        self.listings.lock().keep(&page);
        Ok(out)
    }

    /// Reads the listing of `dir` from the start up to the entry at `offset`: its page and
    /// the index after it, or the last page and its end when no entry has that offset.
    fn seek_listing(&self, dir: &FileRecord, offset: u64) -> Result<(Arc<Page>, usize)> {
        let mut page = self.first_page(dir)?;
        loop {
            if let Some(i) = page.after_offset(offset) {
                return Ok((Arc::new(page), i));
            }
            if page.done {
                let end = page.entries.len();
                return Ok((Arc::new(page), end));
            }
            page = self.next_page(dir, page.after.as_deref(), page.last_offset())?;
        }
    }
}
