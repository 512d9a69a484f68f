//! At-rest encryption of chunk payloads: AES-256-GCM under a random per-store data key, the
//! key kept wrapped with `age` to the peer's own identity.

use std::path::Path;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::rand;

use super::Error;

/// Length of a data key in bytes.
pub const KEY_BYTES: usize = 32;
/// Length of the authentication tag appended to each ciphertext.
pub const TAG_BYTES: usize = 16;
/// Length of the random nonce stored in each encrypted frame.
pub const NONCE_BYTES: usize = NONCE_LEN;

/// The store's data key, ready to seal and open chunk payloads.
pub struct Cipher {
    key: LessSafeKey,
}

impl Cipher {
    /// A cipher for `key`.
    ///
    /// # Errors
    /// A key of the wrong length.
    pub fn new(key: &[u8]) -> Result<Self, Error> {
        let unbound = UnboundKey::new(&AES_256_GCM, key)
            .map_err(|_| Error::Key("data key has the wrong length".into()))?;
        Ok(Self {
            key: LessSafeKey::new(unbound),
        })
    }

    /// A fresh random data key.
    ///
    /// # Errors
    /// The system's random source failed.
    pub fn generate_key() -> Result<[u8; KEY_BYTES], Error> {
        let mut key = [0u8; KEY_BYTES];
        rand::fill(&mut key).map_err(|_| Error::Key("random source failed".into()))?;
        Ok(key)
    }

    /// Encrypts `buf[from..]` in place under a fresh random nonce, appends the tag to `buf`,
    /// and returns the nonce.
    ///
    /// # Errors
    /// The system's random source failed.
    pub fn seal_tail(
        &self,
        aad: &[u8],
        buf: &mut Vec<u8>,
        from: usize,
    ) -> Result<[u8; NONCE_BYTES], Error> {
        let mut nonce = [0u8; NONCE_BYTES];
        rand::fill(&mut nonce).map_err(|_| Error::Key("random source failed".into()))?;
        let tag = self
            .key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut buf[from..],
            )
            .map_err(|_| Error::Key("encryption failed".into()))?;
        buf.extend_from_slice(tag.as_ref());
        Ok(nonce)
    }

    /// Decrypts `payload` (ciphertext then tag) in place; `None` when authentication fails.
    #[must_use]
    pub fn open<'a>(
        &self,
        nonce: [u8; NONCE_BYTES],
        aad: &[u8],
        payload: &'a mut [u8],
    ) -> Option<&'a mut [u8]> {
        self.key
            .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(aad), payload)
            .ok()
    }
}

/// Creates a new age identity (the peer's own key for wrapping the data key).
#[must_use]
pub fn new_identity() -> age::x25519::Identity {
    age::x25519::Identity::generate()
}

/// Reads an age identity file (the text of [`identity_text`], as `keibi init` writes it).
///
/// # Errors
/// Unreadable file or not an age X25519 identity.
pub fn read_identity(path: &Path) -> Result<age::x25519::Identity, Error> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Key(format!("cannot read identity {}: {e}", path.display())))?;
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .ok_or_else(|| Error::Key(format!("{} holds no age identity", path.display())))?
        .parse::<age::x25519::Identity>()
        .map_err(|e| Error::Key(format!("{} is not an age identity: {e}", path.display())))
}

/// The identity's text form, for writing to a 0600 file.
#[must_use]
pub fn identity_text(identity: &age::x25519::Identity) -> String {
    use age::secrecy::ExposeSecret;
    format!(
        "# keibi store identity; public key: {}\n{}\n",
        identity.to_public(),
        identity.to_string().expose_secret()
    )
}

/// Wraps `key` to `identity` with age.
///
/// # Errors
/// age failed to encrypt.
pub fn wrap_key(identity: &age::x25519::Identity, key: &[u8]) -> Result<Vec<u8>, Error> {
    age::encrypt(&identity.to_public(), key)
        .map_err(|e| Error::Key(format!("wrapping data key: {e}")))
}

/// Unwraps a data key made by [`wrap_key`].
///
/// # Errors
/// Wrong identity or damaged file.
pub fn unwrap_key(identity: &age::x25519::Identity, wrapped: &[u8]) -> Result<Vec<u8>, Error> {
    age::decrypt(identity, wrapped).map_err(|e| {
        Error::Key(format!(
            "unwrapping data key (wrong identity or damaged key file): {e}"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_and_tamper_detection() -> Result<(), Error> {
        let cipher = Cipher::new(&Cipher::generate_key()?)?;
        let mut data = b"hello chunk".to_vec();
        let nonce = cipher.seal_tail(b"aad", &mut data, 0)?;
        assert_eq!(data.len(), 11 + TAG_BYTES);
        let mut copy = data.clone();
        assert_eq!(
            cipher.open(nonce, b"aad", &mut copy).map(|p| p.to_vec()),
            Some(b"hello chunk".to_vec())
        );
        let mut copy = data.clone();
        assert!(cipher.open(nonce, b"other", &mut copy).is_none());
        data[0] ^= 1;
        assert!(cipher.open(nonce, b"aad", &mut data).is_none());
        Ok(())
    }

    #[test]
    fn wrapped_key_needs_the_identity() -> Result<(), Error> {
        let id = new_identity();
        let key = Cipher::generate_key()?;
        let wrapped = wrap_key(&id, &key)?;
        assert_eq!(unwrap_key(&id, &wrapped)?, key.to_vec());
        assert!(unwrap_key(&new_identity(), &wrapped).is_err());
        Ok(())
    }
}
