//! Key and fixed-size value encodings, as documented in `schema/`. Big-endian integers so
//! that byte order is numeric order.

use crate::id::{ChunkId, FileId, Ino};

use super::{Error, Result};

/// Meta key: schema version (u32 LE).
pub const META_SCHEMA: &[u8] = b"schema_version";
/// Meta key: this store's index id (u64 LE), random, made at init.
pub const META_INDEX_ID: &[u8] = b"index_id";
/// Meta key: the next local sequence number (u64 LE).
pub const META_NEXT_SEQ: &[u8] = b"next_seq";
/// Meta key: the next local inode number (u64 LE).
pub const META_NEXT_INO: &[u8] = b"next_ino";
/// Meta key: the chunk cipher (one byte, the frame's cipher code).
pub const META_CIPHER: &[u8] = b"cipher";
/// Prefix of `meta` keys holding, per peer store, the highest of its sequence numbers
/// applied here: `peer_applied/` followed by the peer's index id as u64 BE.
pub const META_PEER_APPLIED: &[u8] = b"peer_applied/";

/// The `meta` key of the applied-sequence watermark of peer store `index_id`.
#[must_use]
pub fn peer_applied(index_id: u64) -> Vec<u8> {
    let mut k = META_PEER_APPLIED.to_vec();
    k.extend_from_slice(&index_id.to_be_bytes());
    k
}

/// The smallest key greater than every key starting with `prefix`, `None` if there is none.
#[must_use]
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// Key of a dirent: parent id ‖ name.
#[must_use]
pub fn dirent(parent: FileId, name: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(16 + name.len());
    key.extend_from_slice(&parent.to_be_bytes());
    key.extend_from_slice(name);
    key
}

/// Splits a dirent key into parent and name.
///
/// # Errors
/// A key shorter than a file id.
pub fn parse_dirent(key: &[u8]) -> Result<(FileId, &[u8])> {
    let (parent, name) = key
        .split_at_checked(16)
        .ok_or_else(|| Error::Malformed("dirent key shorter than 16 bytes".into()))?;
    let parent =
        FileId::from_be_slice(parent).ok_or_else(|| Error::Malformed("dirent parent".into()))?;
    Ok((parent, name))
}

/// Key of a journal entry: file id ‖ chunk index ‖ entry number.
#[must_use]
pub fn journal(file: FileId, chunk: u64, entry: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(32);
    key.extend_from_slice(&file.to_be_bytes());
    key.extend_from_slice(&chunk.to_be_bytes());
    key.extend_from_slice(&entry.to_be_bytes());
    key
}

/// Splits a journal key.
///
/// # Errors
/// A key that is not 32 bytes.
pub fn parse_journal(key: &[u8]) -> Result<(FileId, u64, u64)> {
    if key.len() != 32 {
        return Err(Error::Malformed(format!(
            "journal key of {} bytes",
            key.len()
        )));
    }
    let file =
        FileId::from_be_slice(&key[..16]).ok_or_else(|| Error::Malformed("journal".into()))?;
    Ok((file, be_u64(&key[16..24])?, be_u64(&key[24..32])?))
}

/// Key of an inode-map entry.
#[must_use]
pub fn ino(ino: Ino) -> [u8; 8] {
    ino.to_be_bytes()
}

/// Key of a sequence-index entry.
#[must_use]
pub fn seq(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

/// Reads a big-endian u64 key.
///
/// # Errors
/// A slice that is not 8 bytes.
pub fn be_u64(bytes: &[u8]) -> Result<u64> {
    <[u8; 8]>::try_from(bytes)
        .map(u64::from_be_bytes)
        .map_err(|_| Error::Malformed(format!("expected 8-byte key, got {}", bytes.len())))
}

/// Reads a little-endian u64 value.
///
/// # Errors
/// A slice that is not 8 bytes.
pub fn le_u64(bytes: &[u8]) -> Result<u64> {
    <[u8; 8]>::try_from(bytes)
        .map(u64::from_le_bytes)
        .map_err(|_| Error::Malformed(format!("expected 8-byte value, got {}", bytes.len())))
}

/// Reads a file id value.
///
/// # Errors
/// A slice that is not 16 bytes.
pub fn file_id(bytes: &[u8]) -> Result<FileId> {
    FileId::from_be_slice(bytes)
        .ok_or_else(|| Error::Malformed(format!("expected 16-byte file id, got {}", bytes.len())))
}

/// Reads a chunk id key.
///
/// # Errors
/// A slice that is not 32 bytes.
pub fn chunk_id(bytes: &[u8]) -> Result<ChunkId> {
    ChunkId::from_slice(bytes)
        .ok_or_else(|| Error::Malformed(format!("expected 32-byte chunk id, got {}", bytes.len())))
}

/// Length of [`chunk_piece`] keys.
pub const CHUNK_PIECE_KEY_BYTES: usize = 33;

/// Key of payload `piece` of a chunk whose frame is stored in parts: the chunk id and the
/// piece index, so a chunk's parts sort right after its head.
#[must_use]
pub fn chunk_piece(id: &ChunkId, piece: u8) -> [u8; CHUNK_PIECE_KEY_BYTES] {
    let mut k = [0u8; CHUNK_PIECE_KEY_BYTES];
    k[..32].copy_from_slice(&id.0);
    k[32] = piece;
    k
}

/// Upper bound (exclusive) of the keys of a chunk's parts.
#[must_use]
pub fn chunk_pieces_end(id: &ChunkId) -> [u8; CHUNK_PIECE_KEY_BYTES] {
    chunk_piece(id, u8::MAX)
}

/// Value of a chunk-index entry: plaintext length and stored frame length, u32 LE each.
#[must_use]
pub fn chunk_info(plain_len: u32, stored_len: u32) -> [u8; 8] {
    let mut v = [0u8; 8];
    v[..4].copy_from_slice(&plain_len.to_le_bytes());
    v[4..].copy_from_slice(&stored_len.to_le_bytes());
    v
}

/// Reads a chunk-index value into (plaintext length, stored length).
///
/// # Errors
/// A value that is not 8 bytes.
pub fn parse_chunk_info(v: &[u8]) -> Result<(u32, u32)> {
    let raw = le_u64(v)?;
    #[expect(
        clippy::cast_possible_truncation,
        reason = "splitting a u64 into halves"
    )]
    Ok((raw as u32, (raw >> 32) as u32))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn prefix_end_bounds_every_extension() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(&[1, 255]), Some(vec![2]));
        assert_eq!(prefix_end(&[255, 255]), None);
    }

    proptest! {
        #[test]
        fn dirent_keys_group_by_parent(a in any::<u128>(), b in any::<u128>(),
                                       n1 in proptest::collection::vec(any::<u8>(), 0..40),
                                       n2 in proptest::collection::vec(any::<u8>(), 0..40)) {
            let k1 = dirent(FileId(a), &n1);
            let k2 = dirent(FileId(b), &n2);
            if a == b {
                prop_assert_eq!(k1 < k2, n1 < n2);
            } else {
                prop_assert_eq!(k1 < k2, a < b);
            }
            let (p, n) = parse_dirent(&k1).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(p, FileId(a));
            prop_assert_eq!(n, &n1[..]);
        }

        #[test]
        fn journal_keys_round_trip_and_sort(f in any::<u128>(), c in any::<u64>(), e in any::<u64>(), e2 in any::<u64>()) {
            let k = journal(FileId(f), c, e);
            prop_assert_eq!(parse_journal(&k).ok(), Some((FileId(f), c, e)));
            prop_assert_eq!(k < journal(FileId(f), c, e2), e < e2);
        }

        #[test]
        fn seq_keys_sort_numerically(a in any::<u64>(), b in any::<u64>()) {
            prop_assert_eq!(seq(a) < seq(b), a < b);
        }

        #[test]
        fn chunk_info_round_trips(p in any::<u32>(), s in any::<u32>()) {
            prop_assert_eq!(parse_chunk_info(&chunk_info(p, s)).ok(), Some((p, s)));
        }
    }
}
