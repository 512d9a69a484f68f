//! Whole-chunk views of an open file: which chunks are holes (`lseek` with `SEEK_DATA` and
//! `SEEK_HOLE`), and copies that reference stored chunks instead of moving bytes
//! (`copy_file_range`). The caller holds the file's lock, as for the rest of staging.

use crate::chunk::{ChunkStore, chunk_count, chunk_len};
use crate::id::ChunkId;
use crate::limits::{CHUNK_BYTES, CHUNK_BYTES_U64, COPY_RANGE_BYTES_MAX, COPY_RANGE_CHUNKS_MAX};
use crate::tree::Timestamp;

use super::staging::{FileState, Slot};
use super::{Result, Vfs};

impl Vfs {
    /// `copy_file_range`: copies up to `len` bytes of open file `fh_in` from `off_in` to
    /// open file `fh_out` at `off_out`, and returns how many it copied (0 at the end of the
    /// input; fewer than asked is a partial copy the caller continues). Where both offsets
    /// start a chunk, whole stored chunks are referenced, as a rename would: nothing is read,
    /// written or stored, and peers fetch nothing. Elsewhere bytes are copied, up to the next
    /// chunk boundary when both offsets share their place in a chunk (so the next call
    /// references chunks) and up to [`COPY_RANGE_BYTES_MAX`] otherwise.
    ///
    /// # Errors
    /// [`super::Error::BadHandle`]; read and write errors.
    pub fn copy_range(
        &self,
        fh_in: u64,
        off_in: u64,
        fh_out: u64,
        off_out: u64,
        len: u64,
    ) -> Result<u64> {
        let (src, _) = self.file_handle(fh_in)?;
        let (dst, _) = self.file_handle(fh_out)?;
        let size_in = src.state.lock().size;
        let len = len.min(size_in.saturating_sub(off_in));
        if len == 0 {
            return Ok(0);
        }
        let (phase_in, phase_out) = (off_in % CHUNK_BYTES_U64, off_out % CHUNK_BYTES_U64);
        if phase_in == 0 && phase_out == 0 {
            // Whole chunks, and the input's last chunk when the copy reaches its end.
            let whole = len / CHUNK_BYTES_U64
                + u64::from(off_in + len == size_in && len % CHUNK_BYTES_U64 != 0);
            let ids = src
                .state
                .lock()
                .stored_chunks(off_in / CHUNK_BYTES_U64, whole.min(COPY_RANGE_CHUNKS_MAX));
            if !ids.is_empty() {
                let placed =
                    dst.state
                        .lock()
                        .place_chunks(off_out / CHUNK_BYTES_U64, &ids, &self.chunks)?;
                if placed > 0 {
                    return Ok(placed);
                }
            }
        }
        let n = if phase_in == phase_out && phase_in != 0 {
            len.min(CHUNK_BYTES_U64 - phase_in)
        } else {
            len.min(COPY_RANGE_BYTES_MAX)
        };
        #[expect(
            clippy::cast_possible_truncation,
            reason = "at most COPY_RANGE_BYTES_MAX"
        )]
        let data = self.read(fh_in, off_in, n as u32)?;
        if data.is_empty() {
            return Ok(0);
        }
        Ok(u64::from(self.write(fh_out, off_out, &data)?))
    }
}

/// What `lseek` looks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seek {
    /// `SEEK_DATA`: the next offset that is not in a hole.
    Data,
    /// `SEEK_HOLE`: the next offset in a hole (the end of the file counts as one).
    Hole,
}

impl FileState {
    /// The first offset at or after `offset` that is data or a hole, as `what` asks;
    /// `None` for `SEEK_DATA` past the last data, or `offset` at or past the end. A hole is
    /// a whole chunk that reads as zeros and has nothing staged: never written, or written
    /// as zeros (stored as the one zero chunk of its length). Anything else counts as data.
    pub fn seek(&self, offset: u64, what: Seek) -> Option<u64> {
        if offset >= self.size {
            return None;
        }
        let count = chunk_count(self.size);
        let want_hole = what == Seek::Hole;
        (offset / CHUNK_BYTES_U64..count)
            .find(|idx| self.is_hole(*idx) == want_hole)
            .map(|idx| (idx * CHUNK_BYTES_U64).max(offset))
            .or(if want_hole { Some(self.size) } else { None })
    }

    /// Whether chunk `idx` is a hole: it reads as zeros and has nothing staged (never
    /// written, or committed as the zero chunk of its length).
    fn is_hole(&self, idx: u64) -> bool {
        !self.slots.contains_key(&idx)
            && !self.journaled.contains_key(&idx)
            && self.committed_as_hole(idx)
    }

    /// Whether the committed manifest has chunk `idx` as zeros: past its end (the file was
    /// extended), or the zero chunk of its length.
    fn committed_as_hole(&self, idx: u64) -> bool {
        match self.base.get(usize::try_from(idx).unwrap_or(usize::MAX)) {
            None => true,
            Some(id) => match chunk_len(self.size, idx) {
                CHUNK_BYTES => *id == ChunkId::of_zero_chunk(),
                len => *id == ChunkId::of_zeros(len),
            },
        }
    }

    /// Bytes of the file in whole chunks that are holes: what `st_blocks` leaves out. A
    /// partial last chunk counts as data, as in a committed file's attributes. Costs a
    /// pass over the committed manifest and one look at each staged chunk, as a
    /// committed file's count does.
    pub fn hole_bytes(&self) -> u64 {
        let count = chunk_count(self.size);
        let whole = |idx: u64| chunk_len(self.size, idx) == CHUNK_BYTES;
        let zeros = ChunkId::of_zero_chunk();
        let committed = self
            .base
            .iter()
            .zip(0..count)
            .filter(|(id, idx)| **id == zeros && whole(*idx))
            .count() as u64;
        // Whole chunks past the committed manifest: all up to the end, but a partial last.
        let past = count.saturating_sub(self.base.len() as u64);
        let past_whole = past - u64::from(past > 0 && !whole(count - 1));
        let staged: std::collections::BTreeSet<u64> = self
            .slots
            .keys()
            .chain(self.journaled.keys())
            .copied()
            .filter(|idx| *idx < count && whole(*idx) && self.committed_as_hole(*idx))
            .collect();
        (committed + past_whole).saturating_sub(staged.len() as u64) * CHUNK_BYTES_U64
    }

    /// The chunks `first..first + n` as stored, each with its length, for a copy that
    /// references them: up to the first chunk with writes not yet sealed (or journaled), or
    /// a hole the file gained since its last commit (no zero chunk stands for it yet).
    pub fn stored_chunks(&self, first: u64, n: u64) -> Vec<(ChunkId, usize)> {
        let mut out = Vec::new();
        for idx in first..(first + n).min(chunk_count(self.size)) {
            let id = match self.slots.get(&idx) {
                Some(Slot::Sealed(id)) => *id,
                Some(_) => break,
                None if self.journaled.contains_key(&idx) => break,
                None => match self.base.get(usize::try_from(idx).unwrap_or(usize::MAX)) {
                    Some(id) => *id,
                    // Past the committed manifest, a hole not stored yet as a zero chunk.
                    None => break,
                },
            };
            out.push((id, chunk_len(self.size, idx)));
        }
        out
    }

    /// Makes chunks `first..` of this file the stored chunks `ids` (with their lengths),
    /// staged as sealed, as a copy from another file: no byte is read or written. Stops
    /// before a chunk being sealed, and before a short chunk that would not end the file;
    /// returns the bytes placed.
    pub fn place_chunks(
        &mut self,
        first: u64,
        ids: &[(ChunkId, usize)],
        chunks: &ChunkStore,
    ) -> Result<u64> {
        let mut placed = 0u64;
        for (i, (id, len)) in (first..).zip(ids) {
            let start = i * CHUNK_BYTES_U64;
            let end = start + *len as u64;
            let short = *len < CHUNK_BYTES;
            if matches!(self.slots.get(&i), Some(Slot::Sealing(_))) || (short && end < self.size) {
                break;
            }
            if end > self.size {
                self.set_size(end, chunks)?;
            }
            self.slots.insert(i, Slot::Sealed(*id));
            placed += *len as u64;
            if short {
                break;
            }
        }
        if placed > 0 {
            self.mtime = Some(Timestamp::now());
        }
        Ok(placed)
    }
}
