//! Protection of data at rest: owners' ID numbers and phones, readers' MQTT secrets.
//!
//! One 32-byte master key comes from config (never from the database). Two subkeys are
//! derived from it with HKDF-SHA256: one seals values (ChaCha20-Poly1305, random 12-byte
//! nonce stored in front of the ciphertext), one makes keyed hashes (HMAC-SHA256) so a value
//! can be found without decrypting anything.

use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

use crate::error::RegistryError;

/// Seals and hashes values with keys derived from the configured master key.
#[derive(Clone)]
pub struct SecretBox {
    cipher: ChaCha20Poly1305,
    mac_key: [u8; 32],
}

impl std::fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretBox(..)")
    }
}

impl SecretBox {
    pub fn new(master_key: &[u8; 32]) -> Self {
        let hk = Hkdf::<Sha256>::new(None, master_key);
        let mut enc = [0u8; 32];
        let mut mac_key = [0u8; 32];
        hk.expand(b"greenplate at-rest seal v1", &mut enc)
            .expect("32 bytes is a valid HKDF output length");
        hk.expand(b"greenplate at-rest hash v1", &mut mac_key)
            .expect("32 bytes is a valid HKDF output length");
        Self {
            cipher: ChaCha20Poly1305::new(Key::from_slice(&enc)),
            mac_key,
        }
    }

    /// A fresh random master key.
    pub fn generate_key() -> [u8; 32] {
        let mut k = [0u8; 32];
        rand::rng().fill_bytes(&mut k);
        k
    }

    /// nonce || ciphertext.
    pub fn seal(&self, plaintext: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; 12];
        rand::rng().fill_bytes(&mut nonce);
        let ct = self
            .cipher
            .encrypt(Nonce::from_slice(&nonce), plaintext)
            .expect("in-memory encryption cannot fail");
        let mut out = Vec::with_capacity(12 + ct.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        out
    }

    pub fn open(&self, sealed: &[u8]) -> Result<Vec<u8>, RegistryError> {
        if sealed.len() < 12 {
            return Err(RegistryError::Crypto);
        }
        let (nonce, ct) = sealed.split_at(12);
        self.cipher
            .decrypt(Nonce::from_slice(nonce), ct)
            .map_err(|_| RegistryError::Crypto)
    }

    pub fn open_string(&self, sealed: &[u8]) -> Result<String, RegistryError> {
        String::from_utf8(self.open(sealed)?).map_err(|_| RegistryError::Crypto)
    }

    /// HMAC-SHA256 of `value` under the hash subkey.
    pub fn keyed_hash(&self, value: &[u8]) -> Vec<u8> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.mac_key)
            .expect("HMAC takes keys of any length");
        mac.update(value);
        mac.finalize().into_bytes().to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_and_hash() {
        let b = SecretBox::new(&[7; 32]);
        let s = b.seal(b"13812345678");
        assert!(!s.windows(11).any(|w| w == b"13812345678"));
        assert_eq!(b.open_string(&s).unwrap(), "13812345678");
        assert!(SecretBox::new(&[8; 32]).open(&s).is_err());
        assert_eq!(b.keyed_hash(b"x"), b.keyed_hash(b"x"));
        assert_ne!(
            b.keyed_hash(b"x"),
            SecretBox::new(&[8; 32]).keyed_hash(b"x")
        );
    }
}
