//! Media chunks under a per-upload key: what lets an encrypted upload skip a sealed
//! request (a fresh X25519 exchange) per chunk.
//!
//! `media/create`, sealed, answers a random 32-byte upload key (`MediaCreateResp.
//! upload_key`). A chunk sent unsealed then carries
//!
//! ```text
//! MediaChunkReq.data = ChaCha20-Poly1305(upload_key, nonce, aad, bytes) ‖ tag (16 B)
//! nonce              = 4 zero bytes ‖ offset (u64 big-endian)
//! aad                = media_id (its ASCII bytes) ‖ offset (u64 big-endian)
//! ```
//!
//! **Why a nonce from the offset is safe.** A ChaCha20-Poly1305 nonce must never carry
//! two different plaintexts under one key. One key serves one upload, and an upload has
//! one content, fixed at create by its size and SHA-256: the chunk at an offset is always
//! the same bytes, so a retry or a resume encrypts the same bytes to the same ciphertext
//! and reveals nothing new. The SDK checks the content against the declared SHA-256
//! before it encrypts anything, and the server refuses to store other bytes at an offset
//! it has already acknowledged. The offset is in the associated data too (and the media
//! id), so a chunk replayed at another offset or into another upload does not open.
//!
//! Pure: no I/O, no clock. Bad input is an error value, never a panic.

use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{ChaCha20Poly1305, KeyInit};

/// Bytes of an upload key.
pub const KEY_LEN: usize = 32;
/// Bytes a chunk grows by when encrypted (the Poly1305 tag).
pub const TAG_LEN: usize = 16;

/// Why a chunk did not open (or could not be sealed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    #[error("an upload key is {KEY_LEN} bytes")]
    BadKey,
    #[error("the chunk is shorter than its tag")]
    Short,
    /// Altered, sent at another offset or to another upload, or under another key.
    #[error("the chunk does not decrypt under the upload key")]
    Decrypt,
    #[error("the chunk is too long to encrypt")]
    TooLong,
}

/// An upload key from its wire form (`MediaCreateResp.upload_key`).
pub fn key_from(bytes: &[u8]) -> Result<[u8; KEY_LEN], ChunkError> {
    bytes.try_into().map_err(|_| ChunkError::BadKey)
}

/// The nonce of the chunk at `offset`: 4 zero bytes, then the offset (u64 BE).
pub fn nonce(offset: u64) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&offset.to_be_bytes());
    n
}

/// The associated data of the chunk at `offset` of `media_id`: the id's bytes, then the
/// offset (u64 BE).
pub fn aad(media_id: &str, offset: u64) -> Vec<u8> {
    let mut a = Vec::with_capacity(media_id.len() + 8);
    a.extend_from_slice(media_id.as_bytes());
    a.extend_from_slice(&offset.to_be_bytes());
    a
}

/// Encrypts the chunk at `offset`: ciphertext then tag, `plain.len() + TAG_LEN` bytes.
pub fn seal_chunk(
    key: &[u8; KEY_LEN],
    media_id: &str,
    offset: u64,
    plain: &[u8],
) -> Result<Vec<u8>, ChunkError> {
    let mut buf = Vec::with_capacity(plain.len() + TAG_LEN);
    buf.extend_from_slice(plain);
    ChaCha20Poly1305::new(key.into())
        .encrypt_in_place(&nonce(offset).into(), &aad(media_id, offset), &mut buf)
        .map_err(|_| ChunkError::TooLong)?;
    Ok(buf)
}

/// Opens what [`seal_chunk`] wrote: the chunk's bytes, or why not (nothing is returned
/// from a chunk whose tag does not match).
pub fn open_chunk(
    key: &[u8; KEY_LEN],
    media_id: &str,
    offset: u64,
    wire: &[u8],
) -> Result<Vec<u8>, ChunkError> {
    if wire.len() < TAG_LEN {
        return Err(ChunkError::Short);
    }
    let mut buf = wire.to_vec();
    ChaCha20Poly1305::new(key.into())
        .decrypt_in_place(&nonce(offset).into(), &aad(media_id, offset), &mut buf)
        .map_err(|_| ChunkError::Decrypt)?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn nonce_and_aad_layout() {
        assert_eq!(nonce(0), [0; 12]);
        assert_eq!(
            nonce(0x0102_0304_0506_0708),
            [0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8]
        );
        assert_eq!(nonce(8192)[4..], 8192u64.to_be_bytes());
        assert_ne!(nonce(8192), nonce(16384));
        let a = aad(ID, 8192);
        assert_eq!(a.len(), 40);
        assert_eq!(&a[..32], ID.as_bytes());
        assert_eq!(a[32..], [0, 0, 0, 0, 0, 0, 0x20, 0]);
    }

    #[test]
    fn a_chunk_opens_only_where_it_was_sealed() {
        let key = [7u8; KEY_LEN];
        let plain = b"the bytes of one chunk".repeat(100);
        let wire = seal_chunk(&key, ID, 8192, &plain).unwrap();
        assert_eq!(wire.len(), plain.len() + TAG_LEN);
        assert!(!wire.windows(21).any(|w| w == &plain[..21]));
        assert_eq!(open_chunk(&key, ID, 8192, &wire).unwrap(), plain);
        // Deterministic: the same bytes at the same offset are the same ciphertext.
        assert_eq!(seal_chunk(&key, ID, 8192, &plain).unwrap(), wire);

        let other_id = "f".repeat(32);
        let mut altered = wire.clone();
        altered[5] ^= 1;
        let mut bad_tag = wire.clone();
        *bad_tag.last_mut().unwrap() ^= 0x80;
        for (k, id, off, w) in [
            (&key, ID, 16384, &wire[..]),
            (&key, other_id.as_str(), 8192, &wire[..]),
            (&[8u8; KEY_LEN], ID, 8192, &wire[..]),
            (&key, ID, 8192, &altered[..]),
            (&key, ID, 8192, &bad_tag[..]),
            (&key, ID, 8192, &wire[..wire.len() - 1]),
        ] {
            assert_eq!(open_chunk(k, id, off, w), Err(ChunkError::Decrypt));
        }
        assert_eq!(open_chunk(&key, ID, 0, &[0; 15]), Err(ChunkError::Short));
        // An empty chunk is just a tag (and opens).
        let empty = seal_chunk(&key, ID, 0, &[]).unwrap();
        assert_eq!(open_chunk(&key, ID, 0, &empty).unwrap(), b"");
    }

    #[test]
    fn keys_are_32_bytes() {
        assert_eq!(key_from(&[1; 32]).unwrap(), [1; 32]);
        assert_eq!(key_from(&[1; 31]), Err(ChunkError::BadKey));
        assert_eq!(key_from(&[]), Err(ChunkError::BadKey));
    }
}
