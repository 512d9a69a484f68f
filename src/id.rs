//! Identifier newtypes: chunk hashes, stable file ids, local inode numbers, device ids.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// BLAKE3 hash of a chunk's plaintext: the chunk's name everywhere in keibi.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ChunkId(pub [u8; 32]);

impl ChunkId {
    /// Hashes `data` with BLAKE3.
    #[must_use]
    pub fn of(data: &[u8]) -> Self {
        Self(*blake3::hash(data).as_bytes())
    }

    /// The id of a chunk of `len` zero bytes.
    #[must_use]
    pub fn of_zeros(len: usize) -> Self {
        let mut hasher = blake3::Hasher::new();
        let zeros = [0u8; 4096];
        let mut left = len;
        while left > 0 {
            let n = left.min(zeros.len());
            hasher.update(&zeros[..n]);
            left -= n;
        }
        Self(*hasher.finalize().as_bytes())
    }

    /// The id of a whole chunk (`limits::CHUNK_BYTES`) of zeros: what a hole in the middle
    /// of a file refers to. Computed once.
    #[must_use]
    pub fn of_zero_chunk() -> Self {
        static ID: std::sync::LazyLock<ChunkId> =
            std::sync::LazyLock::new(|| ChunkId::of_zeros(crate::limits::CHUNK_BYTES));
        *ID
    }

    /// Builds an id from a 32-byte slice, `None` for any other length.
    #[must_use]
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        <[u8; 32]>::try_from(bytes).ok().map(Self)
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&data_encoding::HEXLOWER.encode(&self.0))
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ChunkId({})",
            &data_encoding::HEXLOWER.encode(&self.0[..8])
        )
    }
}

impl FromStr for ChunkId {
    type Err = IdParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes = data_encoding::HEXLOWER_PERMISSIVE
            .decode(s.as_bytes())
            .map_err(|_| IdParseError("chunk id: not hex"))?;
        Self::from_slice(&bytes).ok_or(IdParseError("chunk id: not 32 bytes"))
    }
}

/// A file's stable identity, the same on every peer, kept across renames.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct FileId(pub u128);

impl FileId {
    /// The root directory, the same id on every peer.
    pub const ROOT: Self = Self(1);

    /// Big-endian bytes, the key encoding (sorts as the number does).
    #[must_use]
    pub fn to_be_bytes(self) -> [u8; 16] {
        self.0.to_be_bytes()
    }

    /// Reads a file id from 16 big-endian bytes, `None` for any other length.
    #[must_use]
    pub fn from_be_slice(bytes: &[u8]) -> Option<Self> {
        <[u8; 16]>::try_from(bytes)
            .ok()
            .map(|b| Self(u128::from_be_bytes(b)))
    }
}

impl fmt::Display for FileId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl fmt::Debug for FileId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FileId({:x})", self.0)
    }
}

/// A local inode number; 1 is the root. Never leaves this peer.
pub type Ino = u64;
/// The root directory's inode number.
pub const ROOT_INO: Ino = 1;

/// A peer's device id: the BLAKE3 hash of its certificate's public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DeviceId(pub [u8; 32]);

impl DeviceId {
    /// The device id of a public key given as DER `SubjectPublicKeyInfo`.
    #[must_use]
    pub fn of_public_key(spki_der: &[u8]) -> Self {
        Self(*blake3::hash(spki_der).as_bytes())
    }
}

/// Letters per group in a device id's text form.
const DEVICE_ID_GROUP: usize = 4;

impl fmt::Display for DeviceId {
    /// Base32 (RFC 4648, no padding) in dash-separated groups of four: easy to read aloud.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = data_encoding::BASE32_NOPAD.encode(&self.0);
        for (i, group) in text.as_bytes().chunks(DEVICE_ID_GROUP).enumerate() {
            if i > 0 {
                f.write_str("-")?;
            }
            f.write_str(std::str::from_utf8(group).map_err(|_| fmt::Error)?)?;
        }
        Ok(())
    }
}

impl fmt::Debug for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceId({self})")
    }
}

impl FromStr for DeviceId {
    type Err = IdParseError;
    /// Accepts the printed form with or without dashes and spaces, in any letter case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let clean: String = s
            .chars()
            .filter(|c| !matches!(c, '-' | ' '))
            .map(|c| c.to_ascii_uppercase())
            .collect();
        let bytes = data_encoding::BASE32_NOPAD
            .decode(clean.as_bytes())
            .map_err(|_| IdParseError("device id: not base32"))?;
        <[u8; 32]>::try_from(bytes.as_slice())
            .map(Self)
            .map_err(|_| IdParseError("device id: not 32 bytes"))
    }
}

/// A text id that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("invalid {0}")]
pub struct IdParseError(&'static str);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_id_text_round_trips_with_any_spacing() {
        let id = DeviceId::of_public_key(b"some key");
        let text = id.to_string();
        assert_eq!(text.len(), 52 + 12);
        assert_eq!(text.parse::<DeviceId>().ok(), Some(id));
        let loose = text.replace('-', " ").to_lowercase();
        assert_eq!(loose.parse::<DeviceId>().ok(), Some(id));
        assert!("ABCD".parse::<DeviceId>().is_err());
    }

    #[test]
    fn zero_chunk_id_matches_hash_of_zeros() {
        for len in [0, 1, 4095, 4096, 4097, 512 * 1024] {
            assert_eq!(ChunkId::of_zeros(len), ChunkId::of(&vec![0; len]));
        }
    }

    #[test]
    fn file_id_key_bytes_sort_as_numbers() {
        let a = FileId(5).to_be_bytes();
        let b = FileId(1 << 70).to_be_bytes();
        assert!(a < b);
        assert_eq!(FileId::from_be_slice(&b), Some(FileId(1 << 70)));
        let c: ChunkId = ChunkId::of(b"x");
        assert_eq!(c.to_string().parse::<ChunkId>().ok(), Some(c));
    }
}
