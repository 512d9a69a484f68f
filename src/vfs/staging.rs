//! Staging of one open file's dirty content: a map from chunk index to a dirty buffer, a
//! chunk being sealed, or a sealed chunk not yet committed, overlaid on the committed
//! manifest. Holds no locks itself; the caller holds the file's lock.
//!
//! Invariant: a buffer's length is always `chunk_len(size, index)`; a size change fixes up
//! the chunk that was or becomes the last one.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use crate::chunk::{ChunkStore, chunk_count, chunk_len};
use crate::id::{ChunkId, FileId};
use crate::limits::{
    CHUNK_BYTES, CHUNK_BYTES_U64, FILE_BYTES_MAX, OVERLAY_BYTES_MAX, OVERLAY_BYTES_PER_FILE_MAX,
    READAHEAD_CHUNKS, STAGED_BUFFERS_PER_FILE_MAX,
};
use crate::tree::{FileRecord, Timestamp};

use super::patch::{Overlay, Ranges};
use super::seal::{SealJob, Sealer};
use super::{Error, Result};

/// A dirty chunk in memory.
pub(crate) struct Buf {
    /// The chunk's whole plaintext as it now reads.
    pub data: Vec<u8>,
    /// Ranges changed since the last durable point (journal write or commit).
    pub dirty: Ranges,
    /// True when `data` equals the committed chunk plus the journal plus `dirty`, so that
    /// journaling `dirty` makes it durable.
    pub journal_ok: bool,
}

/// One staged chunk.
pub(crate) enum Slot {
    Buffer(Buf),
    Overlay(Overlay),
    Sealing(Arc<SealJob>),
    Sealed(ChunkId),
}

/// A piece of a read, gathered under the file lock and filled in after it.
pub(crate) enum Piece {
    Bytes(Vec<u8>),
    /// A committed chunk's bytes with patches over them.
    Patched {
        id: ChunkId,
        start: usize,
        end: usize,
        patches: Vec<(usize, Vec<u8>)>,
    },
    Chunk {
        id: ChunkId,
        start: usize,
        end: usize,
    },
    Zeros(usize),
}

/// Staged state of one open file.
pub(crate) struct FileState {
    pub id: FileId,
    /// The committed manifest.
    pub base: Vec<ChunkId>,
    /// The committed size.
    pub committed_size: u64,
    /// The size as reads see it.
    pub size: u64,
    pub slots: BTreeMap<u64, Slot>,
    /// Time of the last uncommitted content change.
    pub mtime: Option<Timestamp>,
    /// Chunk indices that have journal entries on disk, with how many each.
    pub journaled: BTreeMap<u64, u64>,
    /// Journal entries written for this file since its journal was last empty: the next
    /// entry's number (entries of a chunk apply in number order).
    pub journal_entries: u64,
    /// Open handles.
    pub handles: u32,
    /// End of the last read, to detect sequential reading.
    pub last_read_end: u64,
    /// Indices sent to the seal pool, oldest first, until their slot is reaped.
    pub sealing: VecDeque<u64>,
}

fn sub(range: &[u8], start: usize, end: usize) -> Vec<u8> {
    let mut out = vec![0u8; end - start];
    if start < range.len() {
        let e = end.min(range.len());
        out[..e - start].copy_from_slice(&range[start..e]);
    }
    out
}

impl FileState {
    pub fn from_record(r: &FileRecord) -> Self {
        Self {
            id: r.id,
            base: r.manifest.clone(),
            committed_size: r.size,
            size: r.size,
            slots: BTreeMap::new(),
            mtime: None,
            journaled: BTreeMap::new(),
            journal_entries: 0,
            handles: 0,
            last_read_end: u64::MAX,
            sealing: VecDeque::new(),
        }
    }

    /// Makes chunk `idx` a buffer of the right length and returns it.
    pub fn load(&mut self, idx: u64, chunks: &ChunkStore) -> Result<&mut Buf> {
        let len = chunk_len(self.size, idx);
        let fresh = match self.slots.get(&idx) {
            Some(Slot::Buffer(_)) => None,
            Some(Slot::Overlay(o)) => {
                let id = self
                    .base
                    .get(usize::try_from(idx).unwrap_or(usize::MAX))
                    .ok_or(Error::Invalid("overlay past the manifest".into()))?;
                let mut data = chunks.get(id)?.to_vec();
                o.apply(&mut data, 0);
                let ok = chunk_len(self.committed_size, idx) == len;
                Some(Buf {
                    data,
                    dirty: o.dirty.clone(),
                    journal_ok: ok,
                })
            }
            Some(Slot::Sealing(job)) => Some(Buf {
                data: job.data.to_vec(),
                dirty: Ranges::default(),
                journal_ok: false,
            }),
            Some(Slot::Sealed(id)) => Some(Buf {
                data: chunks.get(id)?.to_vec(),
                dirty: Ranges::default(),
                journal_ok: false,
            }),
            None => Some(
                if let Some(id) = self.base.get(usize::try_from(idx).unwrap_or(usize::MAX)) {
                    let ok = chunk_len(self.committed_size, idx) == len;
                    Buf {
                        data: chunks.get(id)?.to_vec(),
                        dirty: Ranges::default(),
                        journal_ok: ok,
                    }
                } else {
                    Buf {
                        data: Vec::new(),
                        dirty: Ranges::default(),
                        journal_ok: false,
                    }
                },
            ),
        };
        if let Some(b) = fresh {
            self.slots.insert(idx, Slot::Buffer(b));
        }
        match self.slots.get_mut(&idx) {
            Some(Slot::Buffer(b)) => {
                if b.data.len() != len {
                    b.data.resize(len, 0);
                    b.journal_ok = false;
                }
                Ok(b)
            }
            Some(Slot::Overlay(_) | Slot::Sealing(_) | Slot::Sealed(_)) | None => {
                Err(Error::Invalid("staging slot vanished".into()))
            }
        }
    }

    /// Sets the size, fixing up the chunk that was last and the one that becomes last.
    pub fn set_size(&mut self, new_size: u64, chunks: &ChunkStore) -> Result<()> {
        if new_size > FILE_BYTES_MAX {
            return Err(Error::TooBig);
        }
        let old = self.size;
        if new_size == old {
            return Ok(());
        }
        let old_last_partial = old % CHUNK_BYTES_U64 != 0;
        let old_last = chunk_count(old).saturating_sub(1);
        self.size = new_size;
        if new_size > old {
            if old_last_partial && self.has_content(old_last) {
                self.load(old_last, chunks)?;
            }
        } else {
            let keep = chunk_count(new_size);
            self.slots.retain(|idx, _| *idx < keep);
            if new_size % CHUNK_BYTES_U64 != 0 {
                self.load(keep - 1, chunks)?;
            }
            // The committed chunks past the new end are gone for this file: growing it again
            // before a commit must show zeros there, not them (and the commit must not
            // reference them, nor keep their journal entries).
            self.base
                .truncate(usize::try_from(keep).unwrap_or(usize::MAX));
        }
        Ok(())
    }

    fn has_content(&self, idx: u64) -> bool {
        self.slots.contains_key(&idx) || idx < self.base.len() as u64
    }

    /// Writes `data` at `offset`; full chunks go to the seal pool at once.
    pub fn write(
        &mut self,
        offset: u64,
        data: &[u8],
        chunks: &ChunkStore,
        sealer: &Sealer,
    ) -> Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let end = offset.checked_add(data.len() as u64).ok_or(Error::TooBig)?;
        if end > self.size {
            self.set_size(end, chunks)?;
        }
        let first = offset / CHUNK_BYTES_U64;
        let last = (end - 1) / CHUNK_BYTES_U64;
        for idx in first..=last {
            let cstart = idx * CHUNK_BYTES_U64;
            let (s, e) = (
                offset.max(cstart) - cstart,
                end.min(cstart + CHUNK_BYTES_U64) - cstart,
            );
            #[expect(
                clippy::cast_possible_truncation,
                reason = "offset into data, below its length"
            )]
            let from = (cstart + s - offset) as usize;
            #[expect(clippy::cast_possible_truncation, reason = "within one chunk")]
            let (s, e) = (s as usize, e as usize);
            if self.write_overlay(idx, s, &data[from..from + (e - s)], chunks, sealer)? {
                continue;
            }
            let buf = self.load(idx, chunks)?;
            buf.data[s..e].copy_from_slice(&data[from..from + (e - s)]);
            buf.dirty.add(s, e);
            if buf.data.len() == CHUNK_BYTES && buf.dirty.covers(CHUNK_BYTES) {
                // Written whole: peers may fetch it before the file is committed.
                self.seal_slot_with(idx, |data| sealer.seal_whole_ahead(data));
            }
        }
        self.mtime = Some(Timestamp::now());
        self.relieve_pressure(last, sealer);
        self.reap_sealed();
        Ok(())
    }

    /// Turns finished seal jobs into sealed slots, so their buffers are freed (the chunk
    /// cache may keep a copy, within its own bound).
    pub fn reap_sealed(&mut self) {
        let slots = &mut self.slots;
        // Out of order: a finished job behind a slow one is freed too, so the jobs kept here
        // are only those queued or running, which the seal pool bounds.
        self.sealing.retain(|idx| match slots.get_mut(idx) {
            Some(slot @ Slot::Sealing(_)) => {
                let done = match &*slot {
                    Slot::Sealing(job) => job.done_id(),
                    Slot::Buffer(_) | Slot::Overlay(_) | Slot::Sealed(_) => None,
                };
                match done {
                    Some(id) => {
                        *slot = Slot::Sealed(id);
                        false
                    }
                    None => true,
                }
            }
            Some(Slot::Buffer(_) | Slot::Overlay(_) | Slot::Sealed(_)) | None => false,
        });
    }

    /// Writes a small change into an overlay over committed chunk `idx` when that is
    /// possible (the chunk is committed, keeps its length, and has no other slot); returns
    /// whether it did. An overlay that grows past its bound becomes a buffer.
    fn write_overlay(
        &mut self,
        idx: u64,
        start: usize,
        data: &[u8],
        chunks: &ChunkStore,
        sealer: &Sealer,
    ) -> Result<bool> {
        let committed = idx < self.base.len() as u64
            && chunk_len(self.committed_size, idx) == chunk_len(self.size, idx);
        match self.slots.get_mut(&idx) {
            Some(Slot::Overlay(o)) => {
                o.write(start, data);
                if o.bytes() > OVERLAY_BYTES_MAX || o.dirty.overflow {
                    self.load(idx, chunks)?;
                }
                Ok(true)
            }
            None if committed && data.len() <= OVERLAY_BYTES_MAX => {
                let mut o = Overlay::default();
                o.write(start, data);
                self.slots.insert(idx, Slot::Overlay(o));
                self.relieve_overlays(chunks, sealer).map(|()| true)
            }
            Some(Slot::Buffer(_) | Slot::Sealing(_) | Slot::Sealed(_)) | None => Ok(false),
        }
    }

    /// Turns overlays into sealed chunks (oldest indices first) while they hold more than
    /// [`OVERLAY_BYTES_PER_FILE_MAX`], keeping at most [`STAGED_BUFFERS_PER_FILE_MAX`] of
    /// them in memory at once.
    fn relieve_overlays(&mut self, chunks: &ChunkStore, sealer: &Sealer) -> Result<()> {
        let mut total: usize = self
            .slots
            .values()
            .map(|s| {
                if let Slot::Overlay(o) = s {
                    o.bytes()
                } else {
                    0
                }
            })
            .sum();
        if total <= OVERLAY_BYTES_PER_FILE_MAX {
            return Ok(());
        }
        for idx in self.indices(|s| matches!(s, Slot::Overlay(_))) {
            if total <= OVERLAY_BYTES_PER_FILE_MAX / 2 {
                break;
            }
            if let Some(Slot::Overlay(o)) = self.slots.get(&idx) {
                total -= o.bytes();
            }
            self.load(idx, chunks)?;
            // Logged: random writes commit often, and each commit would otherwise flush.
            self.seal_slot(idx, sealer, false);
            self.bound_sealing();
        }
        Ok(())
    }

    /// Frees finished seal jobs, then waits for the oldest ones while more than
    /// [`STAGED_BUFFERS_PER_FILE_MAX`] chunks of this file are being sealed: each holds a
    /// whole chunk in memory until it is stored. A failed job stays for the commit to report.
    pub fn bound_sealing(&mut self) {
        self.reap_sealed();
        if self.sealing.len() <= STAGED_BUFFERS_PER_FILE_MAX {
            return;
        }
        let excess = self.sealing.len() - STAGED_BUFFERS_PER_FILE_MAX / 2;
        self.wait_oldest_seals(excess);
    }

    /// Waits for the `n` oldest seal jobs of this file, then frees the finished ones.
    fn wait_oldest_seals(&mut self, n: usize) {
        let oldest: Vec<u64> = self.sealing.iter().take(n).copied().collect();
        for idx in oldest {
            if let Some(Slot::Sealing(job)) = self.slots.get(&idx) {
                // The outcome is kept in the job: reap or the commit reads it.
                let _ = job.wait();
            }
        }
        self.reap_sealed();
    }

    /// Sends buffer `idx` to the seal pool; `ahead` marks a chunk sealed while the file is
    /// being written, stored unlogged until the commit persists it (see `Sealer::seal`).
    pub fn seal_slot(&mut self, idx: u64, sealer: &Sealer, ahead: bool) {
        self.seal_slot_with(idx, |data| sealer.seal(data, ahead));
    }

    fn seal_slot_with(&mut self, idx: u64, seal: impl FnOnce(Vec<u8>) -> Arc<SealJob>) {
        match self.slots.remove(&idx) {
            Some(Slot::Buffer(b)) => {
                self.slots.insert(idx, Slot::Sealing(seal(b.data)));
                self.sealing.push_back(idx);
            }
            Some(other) => {
                self.slots.insert(idx, other);
            }
            None => {}
        }
    }

    /// Seals every overlay and buffer and waits for the seals, so this file holds (almost)
    /// nothing in memory: relief when all open files together stage too much.
    ///
    /// # Errors
    /// Reading a chunk under an overlay failed; that overlay stays.
    pub fn relieve_all(&mut self, chunks: &ChunkStore, sealer: &Sealer) -> Result<()> {
        for idx in self.indices(|s| matches!(s, Slot::Overlay(_))) {
            self.load(idx, chunks)?;
            self.seal_slot(idx, sealer, false);
            self.bound_sealing();
        }
        for idx in self.indices(|s| matches!(s, Slot::Buffer(_))) {
            self.seal_slot(idx, sealer, true);
            self.bound_sealing();
        }
        self.wait_oldest_seals(self.sealing.len());
        Ok(())
    }

    /// Seals the lowest buffers when more than [`STAGED_BUFFERS_PER_FILE_MAX`] are held.
    ///
    /// A buffer of a chunk with journal entries belongs to a file that is fsynced while it
    /// is written at random: its seal is logged, since the next fsync's record refers to it
    /// and an unlogged chunk would make that fsync flush the memtables (fio's random job:
    /// 320 flushes in 12 s, and 2.8 ms per fsync against 2.2 ms logged). A buffer written
    /// in one go is sealed unlogged and persisted once, by the commit at close.
    fn relieve_pressure(&mut self, keep: u64, sealer: &Sealer) {
        let buffers = self.indices(|s| matches!(s, Slot::Buffer(_)));
        if buffers.len() <= STAGED_BUFFERS_PER_FILE_MAX {
            return;
        }
        let excess = buffers.len() - STAGED_BUFFERS_PER_FILE_MAX / 2;
        for idx in buffers.into_iter().filter(|i| *i != keep).take(excess) {
            let logged = self.journaled.contains_key(&idx);
            self.seal_slot(idx, sealer, !logged);
        }
    }

    /// What a read of `len` bytes at `offset` returns, as pieces to fill in.
    pub fn read_plan(
        &mut self,
        offset: u64,
        len: u32,
        sealer: &Sealer,
        chunks: &ChunkStore,
    ) -> Vec<Piece> {
        let end = offset.saturating_add(u64::from(len)).min(self.size);
        let mut pieces = Vec::new();
        if offset >= end {
            return pieces;
        }
        let sequential = offset == self.last_read_end;
        self.last_read_end = end;
        let (first, last) = (offset / CHUNK_BYTES_U64, (end - 1) / CHUNK_BYTES_U64);
        for idx in first..=last {
            let cstart = idx * CHUNK_BYTES_U64;
            #[expect(clippy::cast_possible_truncation, reason = "within one chunk")]
            let (s, e) = (
                (offset.max(cstart) - cstart) as usize,
                (end.min(cstart + CHUNK_BYTES_U64) - cstart) as usize,
            );
            pieces.push(match self.slots.get(&idx) {
                Some(Slot::Buffer(b)) => Piece::Bytes(sub(&b.data, s, e)),
                Some(Slot::Overlay(o)) => {
                    match self.base.get(usize::try_from(idx).unwrap_or(usize::MAX)) {
                        Some(id) => Piece::Patched {
                            id: *id,
                            start: s,
                            end: e,
                            patches: o.clip(s, e),
                        },
                        None => Piece::Zeros(e - s),
                    }
                }
                Some(Slot::Sealing(job)) => Piece::Bytes(sub(&job.data, s, e)),
                Some(Slot::Sealed(id)) => Piece::Chunk {
                    id: *id,
                    start: s,
                    end: e,
                },
                None => match self.base.get(usize::try_from(idx).unwrap_or(usize::MAX)) {
                    Some(id) => Piece::Chunk {
                        id: *id,
                        start: s,
                        end: e,
                    },
                    None => Piece::Zeros(e - s),
                },
            });
        }
        if sequential {
            for ahead in last + 1..=last + READAHEAD_CHUNKS {
                if self.slots.contains_key(&ahead) {
                    continue;
                }
                if let Some(id) = self.base.get(usize::try_from(ahead).unwrap_or(usize::MAX)) {
                    if !chunks.is_cached(id) {
                        sealer.prefetch(*id);
                    }
                }
            }
        }
        pieces
    }

    /// Ids of staged chunks, waiting for chunks still being sealed.
    pub fn staged_chunks(&self) -> Vec<ChunkId> {
        self.slots
            .values()
            .filter_map(|s| match s {
                Slot::Sealed(id) => Some(*id),
                Slot::Sealing(job) => job.wait().ok(),
                Slot::Buffer(_) | Slot::Overlay(_) => None,
            })
            .collect()
    }

    /// Indices of the slots that satisfy `pred`, in order.
    pub fn indices(&self, pred: impl Fn(&Slot) -> bool) -> Vec<u64> {
        self.slots
            .iter()
            .filter(|(_, s)| pred(s))
            .map(|(i, _)| *i)
            .collect()
    }

    /// Bytes held in memory: buffers and chunks being sealed.
    pub fn staged_bytes(&self) -> u64 {
        self.slots
            .values()
            .map(|s| match s {
                Slot::Buffer(b) => b.data.len() as u64,
                Slot::Overlay(o) => o.bytes() as u64,
                Slot::Sealing(job) => job.data.len() as u64,
                Slot::Sealed(_) => 0,
            })
            .sum()
    }

    /// Journal entries of this file on disk: those of chunks not sealed since.
    pub fn journal_live(&self) -> u64 {
        self.journaled.values().sum()
    }

    /// True when there is nothing to commit.
    pub fn is_clean(&self) -> bool {
        self.slots.is_empty()
            && self.size == self.committed_size
            && self.mtime.is_none()
            && self.journaled.is_empty()
    }
}
