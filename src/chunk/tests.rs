//! The chunk store's own tests: splitting, what a read in part caches, the chunks kept
//! ahead of their record, and the free space kept.

use super::*;
use crate::limits::{CHUNKS_AHEAD_KEPT_MAX, STORE_FREE_BYTES_MIN};
use crate::store::mem::MemBackend;
use proptest::prelude::*;

#[test]
fn a_piece_read_twice_caches_its_chunk_and_reads_spread_over_pieces_do_not() {
    let store = ChunkStore::new(Arc::new(MemBackend::new()), None);
    let data = crate::testing::noise(CHUNK_BYTES, 5);
    let id = store.put(&data).expect("put");
    store.cache.lock().clear();
    let read = |start: usize| {
        let mut out = Vec::new();
        store
            .read_range(&id, start, start + 4096, &mut out)
            .expect("read");
        assert_eq!(out, data[start..start + 4096]);
    };
    // Small reads in different pieces, as a random reader of a large file makes them.
    for piece in 0..PIECES_PER_CHUNK_MAX {
        read(piece * PIECE_BYTES + 8192);
    }
    assert!(
        !store.is_cached(&id),
        "one read in each piece decodes no whole chunk"
    );
    // A reader that comes back to a region gets the chunk cached.
    read(3 * PIECE_BYTES);
    assert!(
        store.is_cached(&id),
        "a second read of one piece caches the chunk"
    );
    // A compressible chunk is one piece: any range decodes all of it, so a second read
    // anywhere caches it.
    let text: Vec<u8> = b"keibi "
        .iter()
        .copied()
        .cycle()
        .take(CHUNK_BYTES)
        .collect();
    let id = store.put(&text).expect("put");
    store.cache.lock().clear();
    for start in [8192, 5 * PIECE_BYTES] {
        let mut out = Vec::new();
        store
            .read_range(&id, start, start + 4096, &mut out)
            .expect("read");
        assert_eq!(out, text[start..start + 4096]);
    }
    assert!(
        store.is_cached(&id),
        "a one-piece chunk read twice is cached"
    );
}

proptest! {
    #[test]
    fn split_concatenates_back(len in prop_oneof![
        Just(0usize), Just(1), Just(CHUNK_BYTES - 1), Just(CHUNK_BYTES), Just(CHUNK_BYTES + 1),
        Just(3 * CHUNK_BYTES + 17), 0usize..(2 * CHUNK_BYTES)]) {
        let data: Vec<u8> = (0..len).map(|i| (i % 253).to_le_bytes()[0]).collect();
        let parts: Vec<&[u8]> = split(&data).collect();
        prop_assert_eq!(parts.len() as u64, chunk_count(len as u64));
        for (i, p) in parts.iter().enumerate() {
            prop_assert_eq!(p.len(), chunk_len(len as u64, i as u64));
            prop_assert!(!p.is_empty() && p.len() <= CHUNK_BYTES);
        }
        prop_assert_eq!(parts.concat(), data);
    }
}

#[test]
fn chunks_kept_ahead_of_their_record_are_bounded_oldest_first() {
    let store = ChunkStore::new(Arc::new(MemBackend::new()), None);
    let ids: Vec<ChunkId> = (0..=CHUNKS_AHEAD_KEPT_MAX as u64)
        .map(|i| ChunkId::of(&i.to_le_bytes()))
        .collect();
    for id in &ids {
        store.stored_ahead(*id);
    }
    let kept = store.kept_ahead();
    assert_eq!(kept.len(), CHUNKS_AHEAD_KEPT_MAX);
    assert_eq!(kept.first(), Some(&ids[1]), "the oldest goes first");
    assert_eq!(kept.last(), ids.last());
}

#[test]
fn the_free_space_kept_grows_with_the_disk_within_bounds() {
    const MIB: u64 = 1 << 20;
    // 10% of a small disk, 128 MiB of a middling one, 1% of a large one.
    assert_eq!(free_space_floor(256 * MIB), 256 * MIB / 10);
    assert_eq!(free_space_floor(2048 * MIB), STORE_FREE_BYTES_MIN);
    assert_eq!(free_space_floor(1 << 40), (1 << 40) / 100);
    assert_eq!(free_space_floor(0), 0);
}
