//! The frame: how one chunk is stored. See `schema/frame.md`.
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
//! The AEAD's associated data is the chunk id followed by the 8 header bytes, so a frame
//! moved under another key, or a header edited, fails authentication.

use std::cell::RefCell;

use crate::id::ChunkId;
use crate::limits::{CHUNK_BYTES, ZSTD_LEVEL, ZSTD_MIN_SAVING_DIVISOR, ZSTD_SAMPLE_BYTES};

use super::Error;
use super::crypt::{Cipher, NONCE_BYTES, TAG_BYTES};

/// Frame format version written by this build.
pub const FRAME_VERSION: u8 = 1;
const HEADER_BYTES: usize = 8;

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

/// Encodes the plaintext `data` of chunk `id` into a frame.
///
/// # Errors
/// A chunk over [`CHUNK_BYTES`]; compression or encryption failure.
pub fn encode(id: &ChunkId, data: &[u8], cipher: Option<&Cipher>) -> Result<Vec<u8>, Error> {
    if data.len() > CHUNK_BYTES {
        return Err(Error::Codec(format!(
            "chunk of {} bytes exceeds {CHUNK_BYTES}",
            data.len()
        )));
    }
    let compressed = if looks_incompressible(data)? {
        Vec::new()
    } else {
        compress(data)?
    };
    let use_zstd = !compressed.is_empty()
        && !data.is_empty()
        && compressed.len() + data.len() / ZSTD_MIN_SAVING_DIVISOR <= data.len();
    let (codec, payload) = if use_zstd {
        (Codec::Zstd, &compressed[..])
    } else {
        (Codec::Raw, data)
    };
    let kind = if cipher.is_some() {
        CipherKind::Aes256Gcm
    } else {
        CipherKind::None
    };
    let plain_len = u32::try_from(data.len()).map_err(|_| Error::Codec("length".into()))?;
    let mut header = [FRAME_VERSION, codec as u8, kind as u8, 0, 0, 0, 0, 0];
    header[4..8].copy_from_slice(&plain_len.to_le_bytes());
    // One allocation: header, nonce, payload, tag; the payload is sealed in place.
    let mut frame = Vec::with_capacity(HEADER_BYTES + NONCE_BYTES + payload.len() + TAG_BYTES);
    frame.extend_from_slice(&header);
    if let Some(cipher) = cipher {
        frame.extend_from_slice(&[0u8; NONCE_BYTES]);
        frame.extend_from_slice(payload);
        let nonce = cipher.seal_tail(&aad(id, &header), &mut frame, HEADER_BYTES + NONCE_BYTES)?;
        frame[HEADER_BYTES..HEADER_BYTES + NONCE_BYTES].copy_from_slice(&nonce);
    } else {
        frame.extend_from_slice(payload);
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
    if header[0] != FRAME_VERSION {
        return Err(corrupt(format!("unknown frame version {}", header[0])));
    }
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
mod tests {
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
        let f = encode(&ChunkId::of(&random), &random, None)?;
        assert_eq!(f[1], Codec::Raw as u8);
        let f = encode(&ChunkId::of(&text), &text, None)?;
        assert_eq!(f[1], Codec::Zstd as u8);
        assert!(f.len() < text.len() / 10);
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
}
