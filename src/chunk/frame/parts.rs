//! Frames stored in parts (schema version 3, `schema/frame.md`): the head (header, piece
//! table and chaining values) under the chunk id, each payload under its own key.

use super::{
    CV_BYTES, Cipher, CipherKind, Error, FRAME_VERSION, HEADER_BYTES, Layout, NONCE_BYTES,
    PIECE_ZSTD, PIECES_PER_CHUNK_MAX, corrupt,
};
use crate::id::ChunkId;

/// How a frame of several pieces is stored in parts: the head (header, piece table and
/// chaining values) under the chunk id, each payload under its own key, so a small read
/// fetches one piece. Returns where the payloads start and their stored lengths, or `None`
/// for a frame stored whole (version 1, one piece, or lengths that do not add up: such a
/// frame is stored as it is and fails its checks on read).
#[must_use]
pub fn parts(frame: &[u8]) -> Option<(usize, Vec<usize>)> {
    let (at, lens) = head_layout(frame)?;
    let total = lens.iter().try_fold(at, |sum, l| sum.checked_add(*l))?;
    (total == frame.len()).then_some((at, lens))
}

/// True when `stored` is the head of a frame stored in parts ([`parts`]): a version 2
/// header of several pieces that ends where its payloads would start. A frame stored whole
/// always has payload bytes after its table.
#[must_use]
pub fn is_head(stored: &[u8]) -> bool {
    head_layout(stored).is_some_and(|(at, _)| at == stored.len())
}

/// Pieces of the frame whose head (or whole frame) is `stored`, from its header alone; 0
/// when it is not a version 2 frame.
#[must_use]
pub fn head_pieces(stored: &[u8]) -> usize {
    match stored.get(..HEADER_BYTES) {
        Some(h) if h[0] == FRAME_VERSION => usize::from(h[3]),
        _ => 0,
    }
}

/// Payload start and stored lengths of a version 2 frame of several pieces, from its header
/// and table alone.
fn head_layout(frame: &[u8]) -> Option<(usize, Vec<usize>)> {
    let header = frame.get(..HEADER_BYTES)?;
    let n = usize::from(header[3]);
    if header[0] != FRAME_VERSION || !(2..=PIECES_PER_CHUNK_MAX).contains(&n) {
        return None;
    }
    let entry = 4 + match CipherKind::from_code(header[2])? {
        CipherKind::None => 0,
        CipherKind::Aes256Gcm => NONCE_BYTES,
    };
    let at = HEADER_BYTES + n * (entry + CV_BYTES);
    let table = frame.get(HEADER_BYTES..HEADER_BYTES + n * entry)?;
    let lens = table
        .chunks_exact(entry)
        .map(|e| (u32::from_le_bytes([e[0], e[1], e[2], e[3]]) & !PIECE_ZSTD) as usize)
        .collect();
    Some((at, lens))
}

/// As [`decode_range`](super::decode_range), for a frame stored in parts: `head` as
/// [`is_head`] accepts, and `payload(i)` giving piece `i`'s stored payload (`None` when it
/// is missing).
///
/// # Errors
/// As [`decode`](super::decode); a missing or wrongly sized payload is [`Error::Corrupt`].
pub fn decode_range_parts(
    id: &ChunkId,
    head: &[u8],
    cipher: Option<&Cipher>,
    start: usize,
    end: usize,
    payload: &mut dyn FnMut(usize) -> Result<Option<Vec<u8>>, Error>,
) -> Result<Vec<u8>, Error> {
    let layout = Layout::parse(id, head, cipher)?;
    let end = end.min(layout.len);
    let start = start.min(end);
    let mut out = Vec::with_capacity(end - start);
    for i in 0..layout.n {
        let (p_start, p_end) = layout.bounds(i);
        if p_end <= start || p_start >= end {
            continue;
        }
        let stored = (layout.word(i) & !PIECE_ZSTD) as usize;
        let bytes = payload(i)?.ok_or_else(|| corrupt(id, format!("piece {i} is missing")))?;
        if bytes.len() != stored {
            return Err(corrupt(
                id,
                format!(
                    "piece {i} is {} bytes stored, {stored} expected",
                    bytes.len()
                ),
            ));
        }
        let piece = layout.open_piece(i, bytes.into(), p_end - p_start)?;
        out.extend_from_slice(&piece[start.max(p_start) - p_start..end.min(p_end) - p_start]);
    }
    Ok(out)
}
