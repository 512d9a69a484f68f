//! The frame: how one chunk is stored. See `schema/frame.md`.
//!
//! Version 2 (written by this build) stores a chunk that does not compress as pieces of
//! [`PIECE_BYTES`], each encrypted on its own, with the chaining value of every piece, so a
//! small read decodes and checks one piece ([`decode_range`]); a chunk that compresses is
//! one zstd piece:
//!
//! ```text
//! 0      version (2)
//! 1      reserved (0)
//! 2      cipher  (0 none, 1 AES-256-GCM)
//! 3      pieces n (1, or one per 64 KiB)
//! 4..8   plaintext length, u32 LE
//! ...    n entries: stored length u32 LE (top bit: zstd), then (cipher 1) a 12-byte nonce
//! ...    n > 1 only: n chaining values of 32 bytes (see `pieces`)
//! ...    n payloads (cipher 1: ciphertext then 16-byte tag)
//! ```
//! Piece `i`'s associated data is the chunk id, the 8 header bytes and `i` (u32 LE): a piece
//! moved to another place or frame fails authentication. The chaining values are checked
//! against the chunk id, and each decoded piece against its chaining value.
//!
//! Version 1 (one payload, no pieces) is still read:
//!
//! ```text
//! 0      version (1)
//! 1      codec   (0 raw, 1 zstd)
//! 2      cipher  (0 none, 1 AES-256-GCM)
//! 3      reserved (0)
//! 4..8   plaintext length, u32 LE
//! 8..20  nonce (cipher 1 only)
//! ...    payload (cipher 1: ciphertext then 16-byte tag)
//! ```
//! Its associated data is the chunk id followed by the 8 header bytes.

use std::cell::RefCell;

use blake3::hazmat::ChainingValue;

use crate::id::ChunkId;
use crate::limits::{
    CHUNK_BYTES, PIECE_BYTES, PIECES_PER_CHUNK_MAX, ZSTD_LEVEL, ZSTD_MIN_SAVING_DIVISOR,
    ZSTD_SAMPLE_BYTES,
};

use super::Error;
use super::crypt::{Cipher, NONCE_BYTES, TAG_BYTES};
use super::pieces;

mod parts;
pub use parts::{decode_range_parts, head_pieces, is_head, parts};

/// Frame format version written by this build.
pub const FRAME_VERSION: u8 = 2;
/// The version before pieces, still read.
const FRAME_VERSION_WHOLE: u8 = 1;
const HEADER_BYTES: usize = 8;
/// Set in a piece's stored length when the piece is zstd-compressed.
const PIECE_ZSTD: u32 = 1 << 31;
const CV_BYTES: usize = 32;

/// Codec of a frame's payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Codec {
    /// Stored as is: compression did not pay.
    Raw = 0,
    /// zstd.
    Zstd = 1,
}

/// Cipher code of a frame (and of a store).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CipherKind {
    /// Plaintext payloads.
    None = 0,
    /// AES-256-GCM with a random 96-bit nonce per frame.
    Aes256Gcm = 1,
}

impl CipherKind {
    /// Reads a cipher code.
    #[must_use]
    pub fn from_code(code: u8) -> Option<Self> {
        match code {
            0 => Some(Self::None),
            1 => Some(Self::Aes256Gcm),
            _ => None,
        }
    }
}

thread_local! {
    static COMPRESSOR: RefCell<Option<zstd::bulk::Compressor<'static>>> = const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
}

fn compress(data: &[u8]) -> Result<Vec<u8>, Error> {
    COMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(
                zstd::bulk::Compressor::new(ZSTD_LEVEL).map_err(|e| Error::Codec(e.to_string()))?,
            );
        }
        let c = slot
            .as_mut()
            .ok_or_else(|| Error::Codec("no compressor".into()))?;
        c.compress(data).map_err(|e| Error::Codec(e.to_string()))
    })
}

/// True when a sample of `data` does not compress by the saving a frame needs to be stored
/// compressed (1/[`ZSTD_MIN_SAVING_DIVISOR`]): then the whole is not tried. zstd on barely
/// compressible data costs several times the hashing (fio's default buffers, which save 4%,
/// spent a third of a mount's write CPU in zstd before the sample asked for the full saving).
fn looks_incompressible(data: &[u8]) -> Result<bool, Error> {
    if data.len() < 4 * ZSTD_SAMPLE_BYTES {
        return Ok(false);
    }
    let sample = compress(&data[..ZSTD_SAMPLE_BYTES])?;
    Ok(sample.len() + ZSTD_SAMPLE_BYTES / ZSTD_MIN_SAVING_DIVISOR > ZSTD_SAMPLE_BYTES)
}

fn decompress(data: &[u8], plain_len: usize) -> Result<Vec<u8>, String> {
    DECOMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(zstd::bulk::Decompressor::new().map_err(|e| e.to_string())?);
        }
        let d = slot.as_mut().ok_or("no decompressor")?;
        d.decompress(data, plain_len).map_err(|e| e.to_string())
    })
}

fn aad(id: &ChunkId, header: &[u8]) -> [u8; 32 + HEADER_BYTES] {
    let mut aad = [0u8; 32 + HEADER_BYTES];
    aad[..32].copy_from_slice(&id.0);
    aad[32..].copy_from_slice(header);
    aad
}

fn piece_aad(id: &ChunkId, header: &[u8], index: usize) -> [u8; 32 + HEADER_BYTES + 4] {
    let mut aad = [0u8; 32 + HEADER_BYTES + 4];
    aad[..32 + HEADER_BYTES].copy_from_slice(&self::aad(id, header));
    aad[32 + HEADER_BYTES..]
        .copy_from_slice(&u32::try_from(index).unwrap_or(u32::MAX).to_le_bytes());
    aad
}

/// Encodes the plaintext `data` of chunk `id` into a frame (hashing its pieces if it is
/// stored in pieces).
///
/// # Errors
/// A chunk over [`CHUNK_BYTES`]; compression or encryption failure.
pub fn encode(id: &ChunkId, data: &[u8], cipher: Option<&Cipher>) -> Result<Vec<u8>, Error> {
    encode_with(id, None, data, cipher)
}

/// As [`encode`], with the chaining values of the pieces that [`pieces::hash`] gave along
/// with `id` (none for a chunk of one piece).
///
/// # Errors
/// A chunk over [`CHUNK_BYTES`]; chaining values that do not fit the length; compression or
/// encryption failure.
pub fn encode_hashed(
    id: &ChunkId,
    cvs: &[ChainingValue],
    data: &[u8],
    cipher: Option<&Cipher>,
) -> Result<Vec<u8>, Error> {
    encode_with(id, Some(cvs), data, cipher)
}

/// A chunk that compresses is stored as one compressed piece: zstd over the whole chunk
/// keeps its ratio and speed (a small read of it decodes it whole, as before pieces). One
/// that does not (media, packed or encrypted data, databases of binary pages) is stored raw
/// in pieces, so a small read decodes and checks one piece.
fn encode_with(
    id: &ChunkId,
    cvs: Option<&[ChainingValue]>,
    data: &[u8],
    cipher: Option<&Cipher>,
) -> Result<Vec<u8>, Error> {
    if data.len() > CHUNK_BYTES {
        return Err(Error::Codec(format!(
            "chunk of {} bytes exceeds {CHUNK_BYTES}",
            data.len()
        )));
    }
    let compressed = if data.is_empty() || looks_incompressible(data)? {
        None
    } else {
        let c = compress(data)?;
        (c.len() + data.len() / ZSTD_MIN_SAVING_DIVISOR <= data.len()).then_some(c)
    };
    let n = if compressed.is_some() {
        1
    } else {
        pieces::count(data.len())
    };
    let hashed;
    let cvs: &[ChainingValue] = match cvs {
        _ if n == 1 => &[],
        Some(cvs) => cvs,
        None => {
            hashed = pieces::hash(data).1;
            &hashed
        }
    };
    if cvs.len() != if n > 1 { n } else { 0 } {
        return Err(Error::Codec(format!(
            "{} chaining values for {n} pieces",
            cvs.len()
        )));
    }
    let plain_len = u32::try_from(data.len()).map_err(|_| Error::Codec("length".into()))?;
    let kind = if cipher.is_some() {
        CipherKind::Aes256Gcm
    } else {
        CipherKind::None
    };
    let mut header = [
        FRAME_VERSION,
        0,
        kind as u8,
        u8::try_from(n).map_err(|_| Error::Codec("pieces".into()))?,
        0,
        0,
        0,
        0,
    ];
    header[4..8].copy_from_slice(&plain_len.to_le_bytes());
    let entry = 4 + if cipher.is_some() { NONCE_BYTES } else { 0 };
    let table = HEADER_BYTES;
    let overhead = if cipher.is_some() { TAG_BYTES } else { 0 };
    // One allocation: header, table, chaining values, payloads; each piece sealed in place.
    let mut frame =
        Vec::with_capacity(HEADER_BYTES + n * (entry + CV_BYTES + overhead) + data.len());
    frame.extend_from_slice(&header);
    frame.resize(table + n * entry, 0);
    for cv in cvs {
        frame.extend_from_slice(cv);
    }
    let payloads: Vec<&[u8]> = match &compressed {
        Some(c) => vec![&c[..]],
        None if n == 1 => vec![data],
        None => data.chunks(PIECE_BYTES).collect(),
    };
    for (i, payload) in payloads.into_iter().enumerate() {
        let at = frame.len();
        frame.extend_from_slice(payload);
        let slot = table + i * entry;
        if let Some(cipher) = cipher {
            let nonce = cipher.seal_tail(&piece_aad(id, &header, i), &mut frame, at)?;
            frame[slot + 4..slot + 4 + NONCE_BYTES].copy_from_slice(&nonce);
        }
        let stored = u32::try_from(frame.len() - at).map_err(|_| Error::Codec("piece".into()))?;
        let word = stored | if compressed.is_some() { PIECE_ZSTD } else { 0 };
        frame[slot..slot + 4].copy_from_slice(&word.to_le_bytes());
    }
    Ok(frame)
}

/// Plaintext length recorded in a frame's header, without decoding it.
#[must_use]
pub fn plain_len(frame: &[u8]) -> Option<u32> {
    frame
        .get(4..8)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map(u32::from_le_bytes)
}

/// Decodes a frame stored under `id` and checks the plaintext against `id`.
///
/// # Errors
/// [`Error::Corrupt`] for any frame that is malformed, fails authentication, or whose
/// plaintext does not hash to `id`; [`Error::Key`] for an encrypted frame without a key.
pub fn decode(id: &ChunkId, frame: &[u8], cipher: Option<&Cipher>) -> Result<Vec<u8>, Error> {
    if frame.first() == Some(&FRAME_VERSION_WHOLE) {
        return decode_whole(id, frame, cipher);
    }
    let len = plain_len(frame).unwrap_or(0) as usize;
    decode_range(id, frame, cipher, 0, len)
}

/// Bytes `[start, end)` of the plaintext of a frame stored under `id` (`end` clamped to the
/// plaintext's length), checked against `id`: of a version 2 frame only the pieces that
/// hold them are decoded and hashed.
///
/// # Errors
/// As [`decode`].
pub fn decode_range(
    id: &ChunkId,
    frame: &[u8],
    cipher: Option<&Cipher>,
    start: usize,
    end: usize,
) -> Result<Vec<u8>, Error> {
    if frame.first() == Some(&FRAME_VERSION_WHOLE) {
        let whole = decode_whole(id, frame, cipher)?;
        let end = end.min(whole.len());
        return Ok(whole.get(start.min(end)..end).unwrap_or(&[]).to_vec());
    }
    let layout = Layout::parse(id, frame, cipher)?;
    let end = end.min(layout.len);
    let start = start.min(end);
    let mut out = Vec::with_capacity(end - start);
    let mut at = layout.payload_at;
    for i in 0..layout.n {
        let word = layout.word(i);
        let stored = (word & !PIECE_ZSTD) as usize;
        let payload = frame
            .get(at..at.saturating_add(stored))
            .ok_or_else(|| corrupt(id, format!("piece {i} runs past the frame")))?;
        at += stored;
        if i + 1 == layout.n && at != frame.len() {
            return Err(corrupt(id, "bytes after the last piece".into()));
        }
        let (p_start, p_end) = layout.bounds(i);
        if p_end > start && p_start < end {
            let piece = layout.open_piece(i, payload.into(), p_end - p_start)?;
            out.extend_from_slice(&piece[start.max(p_start) - p_start..end.min(p_end) - p_start]);
        }
    }
    Ok(out)
}

fn corrupt(id: &ChunkId, reason: String) -> Error {
    Error::Corrupt { chunk: *id, reason }
}

/// The parts of a version 2 frame before its payloads, checked.
struct Layout<'a> {
    id: ChunkId,
    header: [u8; HEADER_BYTES],
    cipher: Option<&'a Cipher>,
    /// Plaintext length.
    len: usize,
    /// Pieces.
    n: usize,
    /// Bytes per table entry.
    entry: usize,
    table: &'a [u8],
    cvs: Vec<ChainingValue>,
    payload_at: usize,
}

impl<'a> Layout<'a> {
    fn parse(id: &ChunkId, frame: &'a [u8], cipher: Option<&'a Cipher>) -> Result<Self, Error> {
        let header: [u8; HEADER_BYTES] = frame
            .get(..HEADER_BYTES)
            .and_then(|h| h.try_into().ok())
            .ok_or_else(|| {
                corrupt(
                    id,
                    format!("frame of {} bytes is shorter than its header", frame.len()),
                )
            })?;
        if header[0] != FRAME_VERSION {
            return Err(corrupt(id, format!("unknown frame version {}", header[0])));
        }
        if header[1] != 0 {
            return Err(corrupt(
                id,
                format!("reserved header byte is {}", header[1]),
            ));
        }
        let len = plain_len(&header).unwrap_or(0) as usize;
        if len > CHUNK_BYTES {
            return Err(corrupt(
                id,
                format!("plaintext length {len} exceeds {CHUNK_BYTES}"),
            ));
        }
        let n = usize::from(header[3]);
        if (n != 1 && n != pieces::count(len)) || n > PIECES_PER_CHUNK_MAX {
            return Err(corrupt(id, format!("{n} pieces for {len} bytes")));
        }
        let cipher = match CipherKind::from_code(header[2]) {
            None => return Err(corrupt(id, format!("unknown cipher {}", header[2]))),
            Some(CipherKind::None) => None,
            Some(CipherKind::Aes256Gcm) => Some(cipher.ok_or_else(|| {
                Error::Key(format!(
                    "chunk {id} is encrypted but the store has no data key"
                ))
            })?),
        };
        let entry = 4 + if cipher.is_some() { NONCE_BYTES } else { 0 };
        let cv_count = if n > 1 { n } else { 0 };
        let payload_at = HEADER_BYTES + n * entry + cv_count * CV_BYTES;
        let table = frame
            .get(HEADER_BYTES..payload_at)
            .ok_or_else(|| corrupt(id, "frame too short for its piece table".into()))?;
        let cvs: Vec<ChainingValue> = table[n * entry..]
            .chunks_exact(CV_BYTES)
            .map(|c| c.try_into().unwrap_or([0; CV_BYTES]))
            .collect();
        if n > 1 && pieces::root_checked(&cvs, len) != Some(*id) {
            return Err(corrupt(id, "piece hashes do not match the chunk id".into()));
        }
        Ok(Self {
            id: *id,
            header,
            cipher,
            len,
            n,
            entry,
            table,
            cvs,
            payload_at,
        })
    }

    /// Plaintext byte range of piece `i`.
    fn bounds(&self, i: usize) -> (usize, usize) {
        if self.n == 1 {
            (0, self.len)
        } else {
            (i * PIECE_BYTES, ((i + 1) * PIECE_BYTES).min(self.len))
        }
    }

    /// Table word of piece `i`: stored length and the zstd bit.
    fn word(&self, i: usize) -> u32 {
        let at = i * self.entry;
        u32::from_le_bytes([
            self.table[at],
            self.table[at + 1],
            self.table[at + 2],
            self.table[at + 3],
        ])
    }

    /// Piece `i` of `plain` bytes from its stored `payload`: authenticated, decompressed and
    /// checked against its hash.
    fn open_piece<'p>(
        &self,
        i: usize,
        payload: std::borrow::Cow<'p, [u8]>,
        plain: usize,
    ) -> Result<std::borrow::Cow<'p, [u8]>, Error> {
        use std::borrow::Cow;
        let id = &self.id;
        let opened: Cow<'p, [u8]> = match self.cipher {
            None => payload,
            Some(cipher) => {
                let at = i * self.entry + 4;
                let nonce: [u8; NONCE_BYTES] = self.table[at..at + NONCE_BYTES]
                    .try_into()
                    .unwrap_or([0; NONCE_BYTES]);
                if payload.len() < TAG_BYTES {
                    return Err(corrupt(id, format!("piece {i} too short for its tag")));
                }
                let mut sealed = payload.into_owned();
                let opened = cipher
                    .open(nonce, &piece_aad(id, &self.header, i), &mut sealed)
                    .ok_or_else(|| {
                        corrupt(
                            id,
                            format!("piece {i}: authentication failed (tampered or damaged)"),
                        )
                    })?
                    .len();
                sealed.truncate(opened);
                Cow::Owned(sealed)
            }
        };
        let piece = if self.word(i) & PIECE_ZSTD == 0 {
            opened
        } else {
            Cow::Owned(
                decompress(&opened, plain)
                    .map_err(|e| corrupt(id, format!("piece {i}: zstd: {e}")))?,
            )
        };
        if piece.len() != plain {
            return Err(corrupt(
                id,
                format!("piece {i} is {} bytes, {plain} expected", piece.len()),
            ));
        }
        let good = if self.n > 1 {
            pieces::chaining_value(i, &piece) == self.cvs[i]
        } else {
            ChunkId::of(&piece) == *id
        };
        if !good {
            return Err(corrupt(id, format!("piece {i} does not match its hash")));
        }
        Ok(piece)
    }
}

/// Decodes a version 1 frame.
fn decode_whole(id: &ChunkId, frame: &[u8], cipher: Option<&Cipher>) -> Result<Vec<u8>, Error> {
    let corrupt = |reason: String| Error::Corrupt { chunk: *id, reason };
    let header: [u8; HEADER_BYTES] = frame
        .get(..HEADER_BYTES)
        .and_then(|h| h.try_into().ok())
        .ok_or_else(|| {
            corrupt(format!(
                "frame of {} bytes is shorter than its header",
                frame.len()
            ))
        })?;
    if header[3] != 0 {
        return Err(corrupt(format!("reserved header byte is {}", header[3])));
    }
    let plain_len = plain_len(&header).unwrap_or(0) as usize;
    if plain_len > CHUNK_BYTES {
        return Err(corrupt(format!(
            "plaintext length {plain_len} exceeds {CHUNK_BYTES}"
        )));
    }
    let kind = CipherKind::from_code(header[2])
        .ok_or_else(|| corrupt(format!("unknown cipher {}", header[2])))?;
    let body = &frame[HEADER_BYTES..];
    let payload: std::borrow::Cow<'_, [u8]> = match kind {
        CipherKind::None => std::borrow::Cow::Borrowed(body),
        CipherKind::Aes256Gcm => {
            let cipher = cipher.ok_or_else(|| {
                Error::Key(format!(
                    "chunk {id} is encrypted but the store has no data key"
                ))
            })?;
            let (nonce, sealed) = body
                .split_first_chunk::<NONCE_BYTES>()
                .filter(|(_, rest)| rest.len() >= TAG_BYTES)
                .ok_or_else(|| corrupt("encrypted frame too short".into()))?;
            let mut sealed = sealed.to_vec();
            let plain = cipher
                .open(*nonce, &aad(id, &header), &mut sealed)
                .ok_or_else(|| corrupt("authentication failed (tampered or damaged)".into()))?
                .len();
            sealed.truncate(plain);
            std::borrow::Cow::Owned(sealed)
        }
    };
    let data = match header[1] {
        0 => payload.into_owned(),
        1 => decompress(&payload, plain_len).map_err(|e| corrupt(format!("zstd: {e}")))?,
        other => return Err(corrupt(format!("unknown codec {other}"))),
    };
    if data.len() != plain_len {
        return Err(corrupt(format!(
            "plaintext is {} bytes, header says {plain_len}",
            data.len()
        )));
    }
    if ChunkId::of(&data) != *id {
        return Err(corrupt("plaintext does not match its hash".into()));
    }
    Ok(data)
}

#[cfg(test)]
mod tests;
