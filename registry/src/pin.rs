//! Owners' PINs: Argon2id (OWASP parameters: 19 MiB, 2 passes), hashed and checked on the
//! blocking pool so a slow hash never stalls the runtime. Wrong PINs are counted per bike
//! and lock it for a while after [`MAX_FAILURES`].

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};

use crate::error::RegistryError;

/// Wrong PINs in a row before the bike's PIN is locked.
pub const MAX_FAILURES: i64 = 5;
/// How long a locked PIN stays locked.
pub const LOCKOUT_MS: i64 = 15 * 60 * 1000;

/// Checks a PIN's shape: 4 to 8 digits.
pub fn validate(field: &'static str, pin: &str) -> Result<(), RegistryError> {
    if (4..=8).contains(&pin.len()) && pin.bytes().all(|b| b.is_ascii_digit()) {
        Ok(())
    } else {
        Err(RegistryError::invalid(field, "must be 4 to 8 digits"))
    }
}

/// Hashes a PIN into a PHC string.
pub async fn hash(pin: &str) -> Result<String, RegistryError> {
    let pin = pin.to_owned();
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>())
            .map_err(|e| RegistryError::Corrupt(format!("salt: {e}")))?;
        Argon2::default()
            .hash_password(pin.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| RegistryError::Corrupt(format!("PIN hash: {e}")))
    })
    .await
    .map_err(|e| RegistryError::Corrupt(format!("PIN hash task: {e}")))?
}

/// True if `pin` matches the stored PHC string.
pub async fn verify(pin: &str, phc: &str) -> Result<bool, RegistryError> {
    let (pin, phc) = (pin.to_owned(), phc.to_owned());
    tokio::task::spawn_blocking(move || {
        let parsed = PasswordHash::new(&phc)
            .map_err(|e| RegistryError::Corrupt(format!("stored PIN hash: {e}")))?;
        Ok(Argon2::default()
            .verify_password(pin.as_bytes(), &parsed)
            .is_ok())
    })
    .await
    .map_err(|e| RegistryError::Corrupt(format!("PIN check task: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hash_and_verify() {
        let h = hash("2468").await.unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify("2468", &h).await.unwrap());
        assert!(!verify("2469", &h).await.unwrap());
        assert!(validate("pin", "123").is_err());
        assert!(validate("pin", "12a4").is_err());
        assert!(validate("pin", "123456789").is_err());
    }
}
