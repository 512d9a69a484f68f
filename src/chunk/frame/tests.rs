//! Frame round trips, ranges, damage and the version 1 format.

use super::*;
use proptest::prelude::*;

fn cipher() -> Cipher {
    Cipher::new(&[7u8; 32]).unwrap_or_else(|_| unreachable!())
}

proptest! {
    #[test]
    fn frames_round_trip(data in proptest::collection::vec(any::<u8>(), 0..4096), rep in 1usize..64, enc in any::<bool>()) {
        let data: Vec<u8> = data.iter().copied().cycle().take(data.len() * rep).collect();
        let c = cipher();
        let c = enc.then_some(&c);
        let id = ChunkId::of(&data);
        let frame = encode(&id, &data, c).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let back = decode(&id, &frame, c).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(back, data);
    }
}

#[test]
fn no_flipped_byte_yields_wrong_data() -> Result<(), Error> {
    let data: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
    let id = ChunkId::of(&data);
    for enc in [false, true] {
        let c = cipher();
        let c = enc.then_some(&c);
        let frame = encode(&id, &data, c)?;
        for i in 0..frame.len() {
            let mut bad = frame.clone();
            bad[i] ^= 0x10;
            match decode(&id, &bad, c) {
                Err(_) => {}
                // Without a cipher a flip may be harmless (a zstd header flag); it must
                // never yield other data.
                Ok(back) if !enc => assert_eq!(back, data, "flip at {i} gave wrong data"),
                Ok(_) => panic!("flip at {i} undetected under encryption"),
            }
        }
    }
    Ok(())
}

#[test]
fn random_data_is_stored_raw_and_text_compressed() -> Result<(), Error> {
    let mut x = 0x2545_f491_4f6c_dd1d_u64;
    let random: Vec<u8> = (0..65536)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()[5]
        })
        .collect();
    let text = b"the same line again\n".repeat(1000);
    let zstd_pieces = |f: &[u8]| {
        (0..usize::from(f[3]))
            .filter(|i| f[HEADER_BYTES + 4 * i + 3] & 0x80 != 0)
            .count()
    };
    let f = encode(&ChunkId::of(&random), &random, None)?;
    assert_eq!(zstd_pieces(&f), 0);
    assert!(f.len() > random.len());
    let f = encode(&ChunkId::of(&text), &text, None)?;
    assert_eq!(zstd_pieces(&f), 1);
    assert!(f.len() < text.len() / 10);
    Ok(())
}

fn mixed(len: usize) -> Vec<u8> {
    // Text-like and random stretches, so some pieces compress and some do not.
    let mut x = 0x9e37_79b9_u64;
    (0..len)
        .map(|i| {
            if (i / PIECE_BYTES) % 2 == 0 {
                b"some text that repeats "[i % 23]
            } else {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x.to_le_bytes()[2]
            }
        })
        .collect()
}

#[test]
fn ranges_decode_only_what_they_ask_and_match_the_whole() -> Result<(), Error> {
    let c = cipher();
    let lens = [
        0,
        100,
        PIECE_BYTES,
        PIECE_BYTES + 1,
        3 * PIECE_BYTES + 5,
        CHUNK_BYTES,
    ];
    for (len, kind) in lens.into_iter().flat_map(|l| [(l, 0), (l, 1)]) {
        // Compressible chunks are one piece, the others one per 64 KiB.
        let data = if kind == 0 {
            mixed(len)
        } else {
            crate::testing::noise(len, 3)
        };
        if kind == 1 && len > PIECE_BYTES {
            let f = encode(&ChunkId::of(&data), &data, None)?;
            assert_eq!(usize::from(f[3]), pieces::count(len));
        }
        let id = ChunkId::of(&data);
        for enc in [None, Some(&c)] {
            let f = encode(&id, &data, enc)?;
            assert_eq!(decode(&id, &f, enc)?, data, "length {len}");
            for (s, e) in [
                (0, 1),
                (0, 4096),
                (PIECE_BYTES - 10, PIECE_BYTES + 10),
                (len / 2, len / 2 + 4096),
                (len.saturating_sub(3), len + 100),
                (len + 5, len + 10),
            ] {
                let want = &data[s.min(len)..e.min(len)];
                assert_eq!(decode_range(&id, &f, enc, s, e)?, want, "{len}: {s}..{e}");
            }
        }
    }
    Ok(())
}

#[test]
fn a_damaged_piece_fails_its_reads_and_only_those() -> Result<(), Error> {
    let data = crate::testing::noise(3 * PIECE_BYTES, 3);
    let id = ChunkId::of(&data);
    for enc in [false, true] {
        let c = cipher();
        let c = enc.then_some(&c);
        let mut f = encode(&id, &data, c)?;
        let last = f.len() - 20;
        f[last] ^= 1;
        assert!(decode(&id, &f, c).is_err());
        assert!(decode_range(&id, &f, c, 2 * PIECE_BYTES, 2 * PIECE_BYTES + 1).is_err());
        assert_eq!(decode_range(&id, &f, c, 0, 4096)?, &data[..4096]);
        // Any flipped byte of the table or the chaining values fails every read.
        let entry = 4 + if enc { NONCE_BYTES } else { 0 };
        let f = encode(&id, &data, c)?;
        for i in 0..HEADER_BYTES + 3 * (entry + CV_BYTES) {
            let mut bad = f.clone();
            bad[i] ^= 0x04;
            match decode_range(&id, &bad, c, 0, 4096) {
                Err(_) => {}
                Ok(back) => assert_eq!(back, &data[..4096], "flip at {i} gave wrong data"),
            }
            assert!(decode(&id, &bad, c).is_err(), "flip at {i} undetected");
        }
    }
    Ok(())
}

#[test]
fn version_1_frames_still_decode() -> Result<(), Error> {
    // A version 1 frame as earlier builds wrote it: header, then the raw payload.
    let data = b"written before pieces".to_vec();
    let id = ChunkId::of(&data);
    let mut f = vec![
        FRAME_VERSION_WHOLE,
        Codec::Raw as u8,
        CipherKind::None as u8,
        0,
    ];
    f.extend_from_slice(&u32::try_from(data.len()).unwrap_or(0).to_le_bytes());
    f.extend_from_slice(&data);
    assert_eq!(decode(&id, &f, None)?, data);
    assert_eq!(decode_range(&id, &f, None, 8, 14)?, b"before");
    f[10] ^= 1;
    assert!(decode(&id, &f, None).is_err());
    Ok(())
}

#[test]
fn empty_chunk_stays_empty() -> Result<(), Error> {
    let id = ChunkId::of(b"");
    assert_eq!(
        decode(&id, &encode(&id, b"", None)?, None)?,
        Vec::<u8>::new()
    );
    Ok(())
}
