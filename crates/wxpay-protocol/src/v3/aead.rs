//! `AEAD_AES_256_GCM` with the APIv3 key: notification resources and downloaded platform
//! certificates are encrypted this way (a 12-character nonce, an `associated_data`, and the
//! ciphertext with its 16-byte tag, base64).

use base64::Engine;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};

/// Why a resource could not be decrypted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AeadError {
    /// The APIv3 key is not 32 bytes.
    #[error("the APIv3 key must be 32 bytes, it has {0}")]
    KeyLength(usize),
    /// The nonce is not 12 bytes.
    #[error("the nonce must be 12 bytes, it has {0}")]
    NonceLength(usize),
    /// The ciphertext is not base64.
    #[error("the ciphertext is not base64")]
    NotBase64,
    /// The tag does not match: another APIv3 key, another nonce or associated data, or a
    /// ciphertext changed on its way.
    #[error("the ciphertext does not open with this APIv3 key, nonce and associated data")]
    Tag,
}

fn key(api_v3_key: &[u8]) -> Result<LessSafeKey, AeadError> {
    UnboundKey::new(&AES_256_GCM, api_v3_key)
        .map(LessSafeKey::new)
        .map_err(|_| AeadError::KeyLength(api_v3_key.len()))
}

fn nonce(nonce: &[u8]) -> Result<Nonce, AeadError> {
    Nonce::try_assume_unique_for_key(nonce).map_err(|_| AeadError::NonceLength(nonce.len()))
}

/// Decrypts a resource.
///
/// # Errors
/// [`AeadError`], which says what does not fit.
pub fn decrypt(
    api_v3_key: &[u8],
    nonce_text: &str,
    associated_data: &str,
    ciphertext: &str,
) -> Result<Vec<u8>, AeadError> {
    let key = key(api_v3_key)?;
    let nonce = nonce(nonce_text.as_bytes())?;
    let mut data = base64::engine::general_purpose::STANDARD
        .decode(ciphertext.as_bytes())
        .map_err(|_| AeadError::NotBase64)?;
    let plain = key
        .open_in_place(nonce, Aad::from(associated_data.as_bytes()), &mut data)
        .map_err(|_| AeadError::Tag)?;
    let len = plain.len();
    data.truncate(len);
    Ok(data)
}

/// Encrypts a resource (what WeChat Pay, and so the simulator, does), base64 with the tag.
///
/// # Errors
/// [`AeadError::KeyLength`] or [`AeadError::NonceLength`].
pub fn encrypt(
    api_v3_key: &[u8],
    nonce_text: &str,
    associated_data: &str,
    plaintext: &[u8],
) -> Result<String, AeadError> {
    let key = key(api_v3_key)?;
    let nonce = nonce(nonce_text.as_bytes())?;
    let mut data = plaintext.to_vec();
    key.seal_in_place_append_tag(nonce, Aad::from(associated_data.as_bytes()), &mut data)
        .map_err(|_| AeadError::Tag)?;
    Ok(base64::engine::general_purpose::STANDARD.encode(data))
}
