//! Sealing of reader batches, as the contract specifies.
//!
//! key = HKDF-SHA256(ikm = reader secret (UTF-8), no salt, info = [`HKDF_INFO`], 32 bytes);
//! cipher = ChaCha20-Poly1305 with a 12-byte nonce; associated data = the reader id (UTF-8)
//! for a batch, and [`STATUS_AD_PREFIX`] + the reader id for a reader status.
//! A reader derives its [`ReaderKey`] once and seals every batch with a fresh random nonce.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use hkdf::Hkdf;
use prost::Message;
use rand::RngCore;
use sha2::Sha256;

use crate::v1::{ReaderStatus, SealedSightingBatch, SightingBatch};

/// HKDF `info` for the reader sealing key.
pub const HKDF_INFO: &[u8] = b"greenplate reader seal v1";

/// Associated-data prefix of a sealed [`ReaderStatus`] (then the reader id), so a status
/// and a batch can never be taken for each other.
pub const STATUS_AD_PREFIX: &[u8] = b"status\0";

/// Nonce length of ChaCha20-Poly1305.
pub const NONCE_LEN: usize = 12;

/// Why a sealed batch was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OpenError {
    #[error("nonce is {0} bytes, want 12")]
    BadNonce(usize),
    #[error("batch does not open with the reader's key")]
    Unauthentic,
    #[error("opened batch is not a valid SightingBatch: {0}")]
    Decode(String),
}

/// A reader's sealing key, derived from its secret.
#[derive(Clone)]
pub struct ReaderKey {
    cipher: ChaCha20Poly1305,
}

impl std::fmt::Debug for ReaderKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReaderKey(..)")
    }
}

impl ReaderKey {
    /// Derives the key from a reader's secret.
    pub fn derive(secret: &str) -> Self {
        let hk = Hkdf::<Sha256>::new(None, secret.as_bytes());
        let mut okm = [0u8; 32];
        hk.expand(HKDF_INFO, &mut okm)
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        Self {
            cipher: ChaCha20Poly1305::new(Key::from_slice(&okm)),
        }
    }

    /// Seals an encoded batch for `reader_id` with a fresh random nonce.
    pub fn seal_bytes(&self, reader_id: &str, plaintext: &[u8]) -> SealedSightingBatch {
        self.seal_with_ad(reader_id, reader_id.as_bytes(), plaintext)
    }

    /// Encodes and seals a reader status; the envelope names `status.reader_id`.
    pub fn seal_status(&self, status: &ReaderStatus) -> SealedSightingBatch {
        let ad = [STATUS_AD_PREFIX, status.reader_id.as_bytes()].concat();
        self.seal_with_ad(&status.reader_id, &ad, &status.encode_to_vec())
    }

    /// Opens and decodes a sealed reader status.
    pub fn open_status(&self, sealed: &SealedSightingBatch) -> Result<ReaderStatus, OpenError> {
        let ad = [STATUS_AD_PREFIX, sealed.reader_id.as_bytes()].concat();
        let plain = self.open_with_ad(sealed, &ad)?;
        ReaderStatus::decode(plain.as_slice()).map_err(|e| OpenError::Decode(e.to_string()))
    }

    fn seal_with_ad(&self, reader_id: &str, ad: &[u8], plaintext: &[u8]) -> SealedSightingBatch {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let ciphertext = self
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: ad,
                },
            )
            .expect("ChaCha20-Poly1305 encryption of an in-memory buffer cannot fail");
        SealedSightingBatch {
            reader_id: reader_id.to_owned(),
            nonce: nonce.to_vec(),
            ciphertext,
        }
    }

    /// Encodes and seals a batch; the envelope names `batch.reader_id`.
    pub fn seal(&self, batch: &SightingBatch) -> SealedSightingBatch {
        self.seal_bytes(&batch.reader_id, &batch.encode_to_vec())
    }

    /// Opens a sealed batch's ciphertext, with the envelope's reader id as associated data.
    pub fn open_bytes(&self, sealed: &SealedSightingBatch) -> Result<Vec<u8>, OpenError> {
        self.open_with_ad(sealed, sealed.reader_id.as_bytes())
    }

    fn open_with_ad(&self, sealed: &SealedSightingBatch, ad: &[u8]) -> Result<Vec<u8>, OpenError> {
        if sealed.nonce.len() != NONCE_LEN {
            return Err(OpenError::BadNonce(sealed.nonce.len()));
        }
        self.cipher
            .decrypt(
                Nonce::from_slice(&sealed.nonce),
                Payload {
                    msg: &sealed.ciphertext,
                    aad: ad,
                },
            )
            .map_err(|_| OpenError::Unauthentic)
    }

    /// Opens and decodes a sealed batch.
    pub fn open(&self, sealed: &SealedSightingBatch) -> Result<SightingBatch, OpenError> {
        let plain = self.open_bytes(sealed)?;
        SightingBatch::decode(plain.as_slice()).map_err(|e| OpenError::Decode(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::Sighting;

    fn batch() -> SightingBatch {
        SightingBatch {
            reader_id: "r1".into(),
            seq: 7,
            sent_at_ms: 1_700_000_000_000,
            sightings: vec![Sighting {
                tag_id: "E2801160600002070000ABCD".into(),
                first_seen_ms: 1,
                last_seen_ms: 2,
                read_count: 3,
                peak_rssi_dbm: -50,
                antenna: 1,
            }],
        }
    }

    #[test]
    fn seal_then_open() {
        let key = ReaderKey::derive("s3cret");
        let sealed = key.seal(&batch());
        assert_eq!(key.open(&sealed).unwrap(), batch());
    }

    #[test]
    fn wrong_key_or_reader_does_not_open() {
        let sealed = ReaderKey::derive("s3cret").seal(&batch());
        assert_eq!(
            ReaderKey::derive("other").open(&sealed),
            Err(OpenError::Unauthentic)
        );
        let mut renamed = sealed.clone();
        renamed.reader_id = "r2".into();
        assert_eq!(
            ReaderKey::derive("s3cret").open(&renamed),
            Err(OpenError::Unauthentic)
        );
        let mut bad_nonce = sealed;
        bad_nonce.nonce.pop();
        assert_eq!(
            ReaderKey::derive("s3cret").open(&bad_nonce),
            Err(OpenError::BadNonce(11))
        );
    }

    #[test]
    fn a_status_never_opens_as_a_batch_nor_a_batch_as_a_status() {
        let key = ReaderKey::derive("s3cret");
        let status = ReaderStatus {
            reader_id: "r1".into(),
            state: crate::v1::ReaderState::Offline as i32,
            session: "0123456789abcdef".into(),
            at_ms: 5,
            firmware: String::new(),
        };
        let sealed = key.seal_status(&status);
        assert_eq!(key.open_status(&sealed).unwrap(), status);
        assert_eq!(key.open(&sealed), Err(OpenError::Unauthentic));
        assert_eq!(
            key.open_status(&key.seal(&batch())),
            Err(OpenError::Unauthentic)
        );
    }

    #[test]
    fn nonces_are_fresh() {
        let key = ReaderKey::derive("s3cret");
        assert_ne!(key.seal(&batch()).nonce, key.seal(&batch()).nonce);
    }
}
