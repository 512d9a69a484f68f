//! Open files: handles, reads, writes, and commits of staged content.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use parking_lot::Mutex;

use crate::chunk::{self, chunk_count, chunk_len};
use crate::id::{ChunkId, FileId, Ino};
use crate::limits::{
    JOURNAL_CHUNK_DIRTY_BYTES_MAX, JOURNAL_ENTRIES_PER_FILE_MAX, JOURNAL_FSYNC_BYTES_MAX,
};
use crate::store::{Batch, Cf, Durability, keys, tables::Tables};
use crate::tree::{Kind, Timestamp};

use super::extent::Seek;
use super::patch::Ranges;
use super::staging::{Buf, FileState, Piece, Slot};
use super::{Attr, CommitMode, Error, Result, Vfs};

/// How a file was opened.
#[derive(Clone, Copy, Debug, Default)]
pub struct OpenFlags {
    /// Writes go to the end of the file (`O_APPEND`).
    pub append: bool,
    /// Truncate to zero on open (`O_TRUNC`).
    pub truncate: bool,
}

/// An open regular file: its staging, shared by all its handles.
pub(crate) struct OpenFile {
    pub ino: Ino,
    pub state: Mutex<FileState>,
}

impl OpenFile {
    pub fn overlay_times(&self, attr: &mut Attr) {
        if let Some(t) = self.state.lock().mtime {
            attr.mtime = t;
            attr.ctime = t;
        }
    }

    pub fn staged_chunks(&self) -> Vec<ChunkId> {
        self.state.lock().staged_chunks()
    }
}

/// An open file handle: the file, and whether its writes go to the end.
pub(crate) struct Handle {
    ino: Ino,
    append: bool,
}

impl Vfs {
    pub(crate) fn new_handle(&self, h: Handle) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::SeqCst);
        self.handles.lock().insert(fh, h);
        fh
    }

    pub(super) fn file_handle(&self, fh: u64) -> Result<(Arc<OpenFile>, bool)> {
        let (ino, append) = match self.handles.lock().get(&fh) {
            Some(Handle { ino, append }) => (*ino, *append),
            None => return Err(Error::BadHandle),
        };
        let f = self
            .open
            .lock()
            .get(&ino)
            .cloned()
            .ok_or(Error::BadHandle)?;
        Ok((f, append))
    }

    /// Takes a reference on the open file of `ino`, creating its staging if needed.
    pub(crate) fn acquire(&self, ino: Ino) -> Result<Arc<OpenFile>> {
        self.acquire_file(ino)?
            .ok_or_else(|| Error::Invalid("not a regular file".into()))
    }

    /// As [`Self::acquire`], or `None` when `ino` is not a regular file. The record is read
    /// under the open-file lock, so a close that commits meanwhile is not missed.
    fn acquire_file(&self, ino: Ino) -> Result<Option<Arc<OpenFile>>> {
        let mut open = self.open.lock();
        if let Some(f) = open.get(&ino) {
            f.state.lock().handles += 1;
            return Ok(Some(Arc::clone(f)));
        }
        let r = self.record_of(ino)?;
        if r.tombstone {
            return Err(Error::NotFound);
        }
        if r.kind != Kind::File {
            return Ok(None);
        }
        let mut st = FileState::from_record(&r);
        st.handles = 1;
        let f = Arc::new(OpenFile {
            ino,
            state: Mutex::new(st),
        });
        open.insert(ino, Arc::clone(&f));
        Ok(Some(f))
    }

    /// Drops a reference taken by [`Self::acquire`]; the last one commits and, for a file
    /// deleted while open, frees its content.
    pub(crate) fn unacquire(&self, f: &Arc<OpenFile>) -> Result<()> {
        let committed = self.commit_file(f, CommitMode::Seal);
        let mut open = self.open.lock();
        let mut st = f.state.lock();
        st.handles = st.handles.saturating_sub(1);
        if st.handles == 0 && committed.is_ok() {
            open.remove(&f.ino);
            let id = st.id;
            drop(st);
            self.release_if_deleted(id)?;
        }
        committed
    }

    /// Opens regular file `ino`.
    ///
    /// # Errors
    /// [`Error::NotFound`]; store errors.
    pub fn open(&self, ino: Ino, flags: OpenFlags) -> Result<u64> {
        let Some(f) = self.acquire_file(ino)? else {
            // Nodes (fifos, devices) and links have no content here; the kernel serves them.
            return Ok(self.new_handle(Handle {
                ino,
                append: flags.append,
            }));
        };
        if flags.truncate {
            let mut st = f.state.lock();
            if st.size != 0 {
                st.set_size(0, &self.chunks)?;
                st.mtime = Some(Timestamp::now());
            }
        }
        Ok(self.new_handle(Handle {
            ino,
            append: flags.append,
        }))
    }

    /// Reads up to `len` bytes at `offset`; fewer at the end of the file.
    ///
    /// # Errors
    /// [`Error::BadHandle`]; a chunk that is missing or corrupt (never zeros in its place).
    pub fn read(&self, fh: u64, offset: u64, len: u32) -> Result<Vec<u8>> {
        let (f, _) = self.file_handle(fh)?;
        match self.read_once(&f, offset, len) {
            // A commit on another handle can replace a chunk, and gc delete it, between
            // planning the read and fetching it: plan again from the new manifest, once.
            Err(Error::Chunk(e)) if matches!(*e, chunk::Error::Missing(_)) => {
                self.read_once(&f, offset, len)
            }
            other => other,
        }
    }

    /// `lseek` with `SEEK_DATA` or `SEEK_HOLE` on an open file, from `offset`.
    ///
    /// # Errors
    /// [`Error::BadHandle`]; [`Error::PastEnd`] at or past the end, or for `SEEK_DATA`
    /// when only a hole follows.
    pub fn seek(&self, fh: u64, offset: u64, what: Seek) -> Result<u64> {
        let (f, _) = self.file_handle(fh)?;
        let st = f.state.lock();
        st.seek(offset, what).ok_or(Error::PastEnd)
    }

    fn read_once(&self, f: &OpenFile, offset: u64, len: u32) -> Result<Vec<u8>> {
        let (pieces, sequential) = {
            let mut st = f.state.lock();
            let sequential = offset == st.last_read_end;
            (
                st.read_plan(offset, len, &self.sealer, &self.chunks),
                sequential,
            )
        };
        let mut out = Vec::with_capacity(
            pieces
                .iter()
                .map(|p| match p {
                    Piece::Bytes(b) => b.len(),
                    Piece::Chunk { start, end, .. } | Piece::Patched { start, end, .. } => {
                        end - start
                    }
                    Piece::Zeros(n) => *n,
                })
                .sum(),
        );
        for p in pieces {
            match p {
                Piece::Bytes(b) => out.extend_from_slice(&b),
                Piece::Zeros(n) => out.resize(out.len() + n, 0),
                Piece::Chunk { id, start, end } => {
                    self.append_chunk_range(&mut out, &id, start, end, sequential)?;
                }
                Piece::Patched {
                    id,
                    start,
                    end,
                    patches,
                } => {
                    let base = out.len();
                    self.append_chunk_range(&mut out, &id, start, end, sequential)?;
                    for (at, p) in patches {
                        let from = base + at - start;
                        out[from..from + p.len()].copy_from_slice(&p);
                    }
                }
            }
        }
        Ok(out)
    }

    /// Appends bytes `[start, end)` of chunk `id` to `out`; a chunk shorter than that is an
    /// error, never zeros. A sequential reader gets the whole chunk decoded and cached (its
    /// next reads and the read-ahead want the rest); any other read decodes only the pieces
    /// it needs.
    fn append_chunk_range(
        &self,
        out: &mut Vec<u8>,
        id: &ChunkId,
        start: usize,
        end: usize,
        sequential: bool,
    ) -> Result<()> {
        let short = |len: usize| {
            let reason = format!("{len} bytes, the file needs {end}");
            Error::Chunk(Arc::new(chunk::Error::Corrupt { chunk: *id, reason }))
        };
        if sequential {
            let data = self.chunks.get(id)?;
            out.extend_from_slice(data.get(start..end).ok_or_else(|| short(data.len()))?);
        } else {
            let before = out.len();
            self.chunks.read_range(id, start, end, out)?;
            if out.len() - before != end - start {
                let got = start + out.len() - before;
                out.truncate(before);
                return Err(short(got));
            }
        }
        Ok(())
    }

    /// Writes `data` at `offset` (at the end for an append handle); returns bytes written.
    ///
    /// # Errors
    /// [`Error::BadHandle`]; [`Error::TooBig`]; store errors.
    pub fn write(&self, fh: u64, offset: u64, data: &[u8]) -> Result<u32> {
        let (f, append) = self.file_handle(fh)?;
        let mut st = f.state.lock();
        let offset = if append { st.size } else { offset };
        st.write(offset, data, &self.chunks, &self.sealer)?;
        drop(st);
        self.bound_staged();
        u32::try_from(data.len()).map_err(|_| Error::Invalid("write larger than 4 GiB".into()))
    }

    /// Commits the file's staged content (a `close`).
    ///
    /// # Errors
    /// The commit failed (full disk, I/O): the data stays staged.
    pub fn flush(&self, fh: u64) -> Result<()> {
        match self.file_handle(fh) {
            Ok((f, _)) => self.commit_file(&f, CommitMode::Seal),
            Err(Error::BadHandle) if self.handles.lock().contains_key(&fh) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Makes the file's content durable.
    ///
    /// # Errors
    /// The commit or the sync failed.
    pub fn fsync(&self, fh: u64) -> Result<()> {
        match self.file_handle(fh) {
            Ok((f, _)) => self.commit_file(&f, CommitMode::Sync),
            Err(Error::BadHandle) if self.handles.lock().contains_key(&fh) => self.sync_all(),
            Err(e) => Err(e),
        }
    }

    /// Closes a handle; the last handle of a file commits it.
    ///
    /// # Errors
    /// The final commit failed.
    pub fn release(&self, fh: u64) -> Result<()> {
        let Ok((f, _)) = self.file_handle(fh) else {
            self.handles.lock().remove(&fh);
            return Ok(());
        };
        self.handles.lock().remove(&fh);
        self.unacquire(&f)
    }

    pub(crate) fn commit_file(&self, f: &OpenFile, mode: CommitMode) -> Result<()> {
        let mut st = f.state.lock();
        self.commit_state(&mut st, mode)
    }

    /// Adds journal entries for small dirty ranges to `batch`; returns the indices covered.
    fn journal_small_ranges(st: &FileState, batch: &mut Batch) -> Vec<(u64, u64)> {
        let mut covered = Vec::new();
        if st.size != st.committed_size || st.journal_live() >= JOURNAL_ENTRIES_PER_FILE_MAX {
            return covered;
        }
        let (mut bytes, mut entry) = (0usize, st.journal_entries);
        for (idx, slot) in &st.slots {
            let (dirty, journal_ok) = match slot {
                Slot::Buffer(b) => (&b.dirty, b.journal_ok),
                Slot::Overlay(o) => (&o.dirty, true),
                Slot::Sealing(_) | Slot::Sealed(_) => continue,
            };
            let small = dirty.bytes() <= JOURNAL_CHUNK_DIRTY_BYTES_MAX && !dirty.overflow;
            if !journal_ok
                || !small
                || *idx >= st.base.len() as u64
                || bytes + dirty.bytes() > JOURNAL_FSYNC_BYTES_MAX
            {
                continue;
            }
            let mut entries = Vec::new();
            for &(s, e) in dirty.iter() {
                let mut v = u32::try_from(s).unwrap_or(u32::MAX).to_le_bytes().to_vec();
                match slot {
                    Slot::Buffer(b) => v.extend_from_slice(&b.data[s..e]),
                    Slot::Overlay(o) => o
                        .clip(s, e)
                        .iter()
                        .for_each(|(_, p)| v.extend_from_slice(p)),
                    Slot::Sealing(_) | Slot::Sealed(_) => {}
                }
                if v.len() != 4 + (e - s) {
                    // A dirty range not covered by the overlay: seal this chunk instead.
                    entries.clear();
                    break;
                }
                entries.push(v);
            }
            if entries.is_empty() {
                continue;
            }
            let before = entry;
            for v in entries {
                batch.put(Cf::Journal, keys::journal(st.id, *idx, entry), v);
                entry += 1;
            }
            bytes += dirty.bytes();
            covered.push((*idx, entry - before));
        }
        covered
    }

    /// Sends to the seal pool every staged chunk of `st` that this commit does not keep in
    /// the journal (`keep`), and drops buffers equal to the committed chunk.
    fn seal_for_commit(
        &self,
        st: &mut FileState,
        keep: &std::collections::BTreeSet<u64>,
        mode: CommitMode,
    ) -> Result<()> {
        // A full journal is folded: every chunk with entries is sealed, the entries go, and
        // later fsyncs journal again instead of sealing every chunk they touch.
        let fold = mode == CommitMode::Sync && st.journal_live() >= JOURNAL_ENTRIES_PER_FILE_MAX;
        // Seal what is not journaled now; drop buffers equal to the committed chunk.
        let idxs: Vec<u64> = st.slots.keys().copied().collect();
        for idx in idxs {
            let clean_buffer = match st.slots.get(&idx) {
                Some(Slot::Buffer(b)) => b.journal_ok && b.dirty.is_empty(),
                Some(Slot::Overlay(o)) => o.dirty.is_empty(),
                Some(Slot::Sealing(_) | Slot::Sealed(_)) | None => false,
            };
            let folded = fold && st.journaled.contains_key(&idx);
            if keep.contains(&idx) || (clean_buffer && mode == CommitMode::Sync && !folded) {
                continue;
            }
            if clean_buffer && !st.journaled.contains_key(&idx) {
                st.slots.remove(&idx);
                continue;
            }
            if matches!(st.slots.get(&idx), Some(Slot::Overlay(_))) {
                st.load(idx, &self.chunks)?;
            }
            st.seal_slot(idx, &self.sealer, false);
            // A commit of many overlays loads each chunk whole: keep only a bounded number
            // of them in memory, not the whole file's.
            st.bound_sealing();
        }
        Ok(())
    }

    /// Commits `st`: see DESIGN.md, "Write path". On failure nothing is lost: data that was
    /// not committed stays staged.
    pub(crate) fn commit_state(&self, st: &mut FileState, mode: CommitMode) -> Result<()> {
        if st.is_clean() {
            return if mode == CommitMode::Sync {
                self.sync_all()
            } else {
                Ok(())
            };
        }
        let mut jbatch = Batch::new();
        let journaled_now = if mode == CommitMode::Sync {
            Self::journal_small_ranges(st, &mut jbatch)
        } else {
            Vec::new()
        };
        let keep: std::collections::BTreeSet<u64> = journaled_now.iter().map(|(i, _)| *i).collect();
        self.seal_for_commit(st, &keep, mode)?;
        Self::wait_sealed(st)?;
        st.sealing.clear();
        let sealed = st.indices(|s| matches!(s, Slot::Sealed(_)));
        let size_changed = st.size != st.committed_size;
        let needs_record =
            !sealed.is_empty() || size_changed || (mode == CommitMode::Seal && st.mtime.is_some());
        let durability = if mode == CommitMode::Sync {
            Durability::Synced
        } else {
            Durability::Buffered
        };
        if needs_record {
            let cut = st.base.len() as u64;
            let manifest = self.manifest_of(st)?;
            // Chunks sealed ahead of this commit, and chunks fetched from a peer that the
            // file kept, may have been stored unlogged: the record never survives a crash
            // without them.
            self.chunks.persist_unlogged(manifest.iter())?;
            let mut batch = Batch::new();
            {
                let _tree = self.tree.lock();
                let mut rec = self.tables.record(st.id)?.ok_or(Error::NotFound)?;
                rec.size = st.size;
                rec.manifest.clone_from(&manifest);
                if let Some(t) = st.mtime {
                    rec.mtime = t;
                    rec.ctime = t;
                }
                for idx in sealed.iter().filter(|i| st.journaled.contains_key(i)) {
                    Tables::delete_journal(&mut batch, st.id, *idx, *idx + 1);
                }
                // Entries of chunks past the end, or cut off by a truncate since the last
                // commit (journal entries only ever patch a chunk of the base).
                for idx in st
                    .journaled
                    .keys()
                    .filter(|i| **i >= chunk_count(st.size) || **i >= cut)
                {
                    Tables::delete_journal(&mut batch, st.id, *idx, *idx + 1);
                }
                self.tables.put_record(&mut batch, &mut rec);
                batch.append(&mut jbatch);
                self.tables.backend().write(batch, durability)?;
            }
            st.base = manifest;
            st.committed_size = st.size;
            st.mtime = None;
            for idx in &sealed {
                st.slots.remove(idx);
                st.journaled.remove(idx);
            }
            let count = chunk_count(st.size);
            st.journaled.retain(|i, _| *i < count && *i < cut);
        } else if !jbatch.is_empty() {
            self.tables.backend().write(jbatch, durability)?;
        } else if mode == CommitMode::Sync {
            self.sync_all()?;
        }
        for (idx, n) in journaled_now {
            match st.slots.get_mut(&idx) {
                Some(Slot::Buffer(b)) => b.dirty.clear(),
                Some(Slot::Overlay(o)) => o.dirty.clear(),
                Some(Slot::Sealing(_) | Slot::Sealed(_)) | None => {}
            }
            *st.journaled.entry(idx).or_default() += n;
            st.journal_entries += n;
        }
        if st.journaled.is_empty() {
            st.journal_entries = 0;
        }
        Ok(())
    }

    /// Waits for every chunk being sealed; a failed seal turns back into a buffer.
    fn wait_sealed(st: &mut FileState) -> Result<()> {
        let mut first_err = None;
        let idxs = st.indices(|s| matches!(s, Slot::Sealing(_)));
        for idx in idxs {
            let Some(Slot::Sealing(job)) = st.slots.remove(&idx) else {
                continue;
            };
            match job.wait() {
                Ok(id) => {
                    st.slots.insert(idx, Slot::Sealed(id));
                }
                Err(e) => {
                    let mut dirty = Ranges::default();
                    dirty.add(0, job.data.len());
                    st.slots.insert(
                        idx,
                        Slot::Buffer(Buf {
                            data: job.data.to_vec(),
                            dirty,
                            journal_ok: false,
                        }),
                    );
                    first_err.get_or_insert(Error::shared(e));
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    fn manifest_of(&self, st: &FileState) -> Result<Vec<ChunkId>> {
        let count = chunk_count(st.size);
        let mut manifest = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
        for idx in 0..count {
            let id = match st.slots.get(&idx) {
                Some(Slot::Sealed(id)) => *id,
                Some(Slot::Buffer(_) | Slot::Overlay(_)) | None => {
                    match st.base.get(usize::try_from(idx).unwrap_or(usize::MAX)) {
                        Some(id) => *id,
                        None => self.chunks.zeros(chunk_len(st.size, idx))?,
                    }
                }
                Some(Slot::Sealing(_)) => {
                    return Err(Error::Invalid("chunk still sealing at commit".into()));
                }
            };
            manifest.push(id);
        }
        Ok(manifest)
    }

    /// Frees the content of `id` if it was deleted and nobody has it open.
    pub(crate) fn release_if_deleted(&self, id: FileId) -> Result<()> {
        let _tree = self.tree.lock();
        let Some(mut rec) = self.tables.record(id)? else {
            return Ok(());
        };
        if rec.tombstone && !rec.manifest.is_empty() {
            rec.manifest.clear();
            rec.size = 0;
            let mut batch = Batch::new();
            self.tables.put_record(&mut batch, &mut rec);
            self.tables.backend().write(batch, Durability::Buffered)?;
        }
        Ok(())
    }
}
