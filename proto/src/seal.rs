//! Sealing of reader batches, as the contract specifies.
//!
//! A reader's secret is versioned by its form (issue #15, point 3):
//! - **v2** (`gp2_` + 64 hex digits, what AddReader issues): the MQTT login password is
//!   hex(HKDF-SHA256(ikm = secret, info = [`HKDF_INFO_LOGIN_V2`], 32 bytes)) and the sealing
//!   key HKDF-SHA256(secret, info = [`HKDF_INFO_SEAL_V2`]). The password travels to the
//!   broker (and, without TLS, over the wire); it does not give away the sealing key.
//! - **v1** (anything else, readers provisioned before v2): the password is the secret
//!   itself and the key HKDF-SHA256(secret, info = [`HKDF_INFO`]), so whoever reads the
//!   password can also seal and open. Rotate such a reader to a v2 secret once its
//!   firmware supports it.
//!
//! [`login_password`] and [`ReaderKey::derive`] pick the version from the secret.
//!
//! key = HKDF-SHA256(ikm = reader secret (UTF-8), no salt, info = per version, 32 bytes);
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

/// HKDF `info` for the sealing key of a v1 secret.
pub const HKDF_INFO: &[u8] = b"greenplate reader seal v1";
/// HKDF `info` for the sealing key of a v2 secret.
pub const HKDF_INFO_SEAL_V2: &[u8] = b"greenplate reader seal v2";
/// HKDF `info` for the MQTT login password of a v2 secret.
pub const HKDF_INFO_LOGIN_V2: &[u8] = b"greenplate reader login v2";
/// How a v2 secret begins.
pub const SECRET_V2_PREFIX: &str = "gp2_";

/// The version of a reader secret: 2 for `gp2_...`, 1 otherwise.
pub fn key_version(secret: &str) -> u32 {
    if secret.starts_with(SECRET_V2_PREFIX) {
        2
    } else {
        1
    }
}

fn hkdf32(secret: &str, info: &[u8]) -> [u8; 32] {
    let hk = Hkdf::<Sha256>::new(None, secret.as_bytes());
    let mut okm = [0u8; 32];
    hk.expand(info, &mut okm)
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    okm
}

/// The MQTT password a reader logs in with: for a v2 secret derived from it (64 hex
/// digits), for a v1 secret the secret itself.
pub fn login_password(secret: &str) -> String {
    match key_version(secret) {
        2 => hex::encode(hkdf32(secret, HKDF_INFO_LOGIN_V2)),
        _ => secret.to_owned(),
    }
}

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
    /// Derives the key from a reader's secret (v1 or v2, by its form).
    pub fn derive(secret: &str) -> Self {
        let info = match key_version(secret) {
            2 => HKDF_INFO_SEAL_V2,
            _ => HKDF_INFO,
        };
        let okm = hkdf32(secret, info);
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

    #[test]
    fn a_v2_password_gives_away_neither_the_secret_nor_the_key() {
        let v2 = "gp2_00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
        assert_eq!(key_version(v2), 2);
        let password = login_password(v2);
        assert_eq!(password.len(), 64);
        assert_ne!(password, v2);
        // The password, used as a secret, seals under another key than the secret's.
        let batch = SightingBatch {
            reader_id: "rd-1".into(),
            seq: 1,
            ..Default::default()
        };
        let sealed = ReaderKey::derive(v2).seal(&batch);
        assert!(ReaderKey::derive(&password).open(&sealed).is_err());
        assert!(ReaderKey::derive(v2).open(&sealed).is_ok());
        // A v1 secret is its own password, and its key is the v1 derivation (readers
        // provisioned before v2 keep working).
        let v1 = "00112233445566778899aabbccddeeff0011223344556677";
        assert_eq!((key_version(v1), login_password(v1).as_str()), (1, v1));
        let old = ReaderKey::derive(v1).seal(&batch);
        let hk = Hkdf::<Sha256>::new(None, v1.as_bytes());
        let mut okm = [0u8; 32];
        hk.expand(b"greenplate reader seal v1", &mut okm).unwrap();
        let by_spec = ReaderKey {
            cipher: ChaCha20Poly1305::new(Key::from_slice(&okm)),
        };
        assert!(by_spec.open(&old).is_ok());
    }
}
