//! A chunk's BLAKE3 tree cut at [`PIECE_BYTES`]: the chaining value of each piece, and the
//! chunk id computed from them. A frame keeps the chaining values, so one piece can be
//! checked against the chunk id without reading or hashing the rest of the chunk.
//!
//! Every piece but the last is a whole, aligned subtree of the chunk's BLAKE3 tree (it is a
//! power of two of BLAKE3's 1 KiB chunks), so its chaining value is that subtree's, and
//! merging them in the tree's own shape yields exactly `blake3::hash` of the chunk.

use blake3::hazmat::{
    ChainingValue, HasherExt, Mode, merge_subtrees_non_root, merge_subtrees_root,
};

use crate::id::ChunkId;
use crate::limits::PIECE_BYTES;

/// BLAKE3 chunks (of 1 KiB) in one piece.
const LEAVES_PER_PIECE: u64 = (PIECE_BYTES / blake3::CHUNK_LEN) as u64;

const _: () = assert!(PIECE_BYTES.is_power_of_two() && PIECE_BYTES >= blake3::CHUNK_LEN);

/// Pieces of a chunk of `len` bytes (an empty chunk is one empty piece).
#[must_use]
pub fn count(len: usize) -> usize {
    len.div_ceil(PIECE_BYTES).max(1)
}

/// The chaining value of piece `index` (its bytes `data`) of a chunk of more than one piece.
#[must_use]
pub fn chaining_value(index: usize, data: &[u8]) -> ChainingValue {
    let mut h = blake3::Hasher::new();
    h.set_input_offset((index * PIECE_BYTES) as u64);
    h.update(data);
    h.finalize_non_root()
}

/// The id of `data` and, when it spans more than one piece, the chaining values of its
/// pieces (none for a chunk of one piece: its id checks it). One pass over the bytes.
#[must_use]
pub fn hash(data: &[u8]) -> (ChunkId, Vec<ChainingValue>) {
    if data.len() <= PIECE_BYTES {
        return (ChunkId::of(data), Vec::new());
    }
    let cvs: Vec<ChainingValue> = data
        .chunks(PIECE_BYTES)
        .enumerate()
        .map(|(i, p)| chaining_value(i, p))
        .collect();
    let id = root(&cvs, data.len());
    (id, cvs)
}

/// The id of a chunk of `len` bytes (more than one piece) whose pieces have `cvs`; `None`
/// when the count does not fit the length.
#[must_use]
pub fn root_checked(cvs: &[ChainingValue], len: usize) -> Option<ChunkId> {
    (len > PIECE_BYTES && cvs.len() == count(len)).then(|| root(cvs, len))
}

fn root(cvs: &[ChainingValue], len: usize) -> ChunkId {
    let leaves = (len as u64).div_ceil(blake3::CHUNK_LEN as u64);
    let (left, right) = split(cvs, leaves);
    ChunkId(*merge_subtrees_root(&left, &right, Mode::Hash).as_bytes())
}

/// The two halves of the subtree over `cvs` (at least two pieces, `leaves` BLAKE3 chunks):
/// BLAKE3 puts the largest power of two of chunks that leaves some for the right on the left.
fn split(cvs: &[ChainingValue], leaves: u64) -> (ChainingValue, ChainingValue) {
    let left_leaves = 1u64 << (leaves - 1).ilog2();
    // At least two pieces means more than one piece of leaves, so the left half is a whole
    // number of pieces.
    let left_pieces = usize::try_from(left_leaves / LEAVES_PER_PIECE).unwrap_or(usize::MAX);
    (
        subtree(&cvs[..left_pieces], left_leaves),
        subtree(&cvs[left_pieces..], leaves - left_leaves),
    )
}

fn subtree(cvs: &[ChainingValue], leaves: u64) -> ChainingValue {
    if let [one] = cvs {
        return *one;
    }
    let (left, right) = split(cvs, leaves);
    merge_subtrees_non_root(&left, &right, Mode::Hash)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::noise;
    use proptest::prelude::*;

    #[test]
    fn piece_roots_equal_blake3_at_the_edges() {
        let p = PIECE_BYTES;
        for len in [
            0,
            1,
            1023,
            1024,
            1025,
            p - 1,
            p,
            p + 1,
            p + 1024,
            2 * p,
            2 * p + 7,
            3 * p,
            5 * p - 1,
            8 * p,
            crate::limits::CHUNK_BYTES - 1,
            crate::limits::CHUNK_BYTES,
        ] {
            let data = noise(len, len as u64);
            let (id, cvs) = hash(&data);
            assert_eq!(id, ChunkId::of(&data), "length {len}");
            assert_eq!(cvs.len(), if len > p { count(len) } else { 0 });
        }
    }

    proptest! {
        #[test]
        fn piece_roots_equal_blake3(len in 0usize..=crate::limits::CHUNK_BYTES, seed in any::<u64>()) {
            let data = noise(len, seed);
            prop_assert_eq!(hash(&data).0, ChunkId::of(&data));
        }
    }

    #[test]
    fn a_changed_piece_changes_the_root() {
        let data = noise(3 * PIECE_BYTES, 9);
        let (id, mut cvs) = hash(&data);
        assert_eq!(root_checked(&cvs, data.len()), Some(id));
        cvs[1][0] ^= 1;
        assert_ne!(root_checked(&cvs, data.len()), Some(id));
        assert_eq!(root_checked(&cvs[..2], data.len()), None);
    }
}
