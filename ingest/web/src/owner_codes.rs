//! One-time sign-in codes of the owner page: six digits texted to the bike's registered
//! phone, good for [`TTL`], at most [`TRIES`] wrong guesses (then the plate is locked for
//! [`LOCK`]), and a new code no sooner than [`RESEND`] after the last. Kept in memory as a
//! hash; a restart voids them (the owner asks again).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub const TTL: Duration = Duration::from_secs(300);
pub const TRIES: u8 = 5;
pub const LOCK: Duration = Duration::from_secs(900);
pub const RESEND: Duration = Duration::from_secs(60);
/// Plates with a pending code at most (the oldest goes first).
const MAX: usize = 100_000;

struct Pending {
    hash: [u8; 32],
    owner_id: i64,
    sent: Instant,
    tries_left: u8,
    locked_until: Option<Instant>,
}

/// Why a code was not issued or not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// A code was sent less than [`RESEND`] ago.
    TooSoon,
    /// Too many wrong guesses: locked until [`LOCK`] has passed.
    Locked,
    /// Wrong; this many tries are left.
    Wrong(u8),
    /// No code pending, or it expired.
    NoCode,
}

#[derive(Default)]
pub struct Codes {
    map: Mutex<HashMap<String, Pending>>,
}

fn digest(plate: &str, code: &str) -> [u8; 32] {
    Sha256::digest(format!("{plate}\n{code}").as_bytes()).into()
}

impl Codes {
    /// A new code for `plate`'s owner.
    pub fn issue(&self, plate: &str, owner_id: i64, now: Instant) -> Result<String, Refused> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = map.get(plate) {
            if p.locked_until.is_some_and(|t| now < t) {
                return Err(Refused::Locked);
            }
            if now.saturating_duration_since(p.sent) < RESEND {
                return Err(Refused::TooSoon);
            }
        }
        if map.len() >= MAX && !map.contains_key(plate) {
            map.retain(|_, p| now.saturating_duration_since(p.sent) < TTL);
            if map.len() >= MAX {
                return Err(Refused::TooSoon);
            }
        }
        let code = format!("{:06}", rand::random::<u32>() % 1_000_000);
        map.insert(
            plate.to_owned(),
            Pending {
                hash: digest(plate, &code),
                owner_id,
                sent: now,
                tries_left: TRIES,
                locked_until: None,
            },
        );
        Ok(code)
    }

    /// The owner the code signs in, once; wrong guesses count.
    pub fn check(&self, plate: &str, code: &str, now: Instant) -> Result<i64, Refused> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let Some(p) = map.get_mut(plate) else {
            return Err(Refused::NoCode);
        };
        if p.locked_until.is_some_and(|t| now < t) {
            return Err(Refused::Locked);
        }
        if p.tries_left == 0 || now.saturating_duration_since(p.sent) >= TTL {
            return Err(Refused::NoCode);
        }
        if bool::from(p.hash.ct_eq(&digest(plate, code.trim()))) {
            let owner = p.owner_id;
            map.remove(plate);
            return Ok(owner);
        }
        p.tries_left -= 1;
        if p.tries_left == 0 {
            p.locked_until = Some(now + LOCK);
            return Err(Refused::Locked);
        }
        Err(Refused::Wrong(p.tries_left))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_code_works_once_within_its_time() {
        let codes = Codes::default();
        let t0 = Instant::now();
        let code = codes.issue("P", 7, t0).unwrap();
        assert_eq!(code.len(), 6);
        assert_eq!(codes.issue("P", 7, t0 + RESEND / 2), Err(Refused::TooSoon));
        assert_eq!(codes.check("P", &code, t0 + TTL), Err(Refused::NoCode));
        let code = codes.issue("P", 7, t0 + RESEND).unwrap();
        assert_eq!(codes.check("P", &code, t0 + RESEND), Ok(7));
        assert_eq!(codes.check("P", &code, t0 + RESEND), Err(Refused::NoCode));
    }

    #[test]
    fn wrong_guesses_lock_the_plate() {
        let codes = Codes::default();
        let t0 = Instant::now();
        let code = codes.issue("P", 7, t0).unwrap();
        let wrong = if code == "000000" { "000001" } else { "000000" };
        for left in (1..TRIES).rev() {
            assert_eq!(codes.check("P", wrong, t0), Err(Refused::Wrong(left)));
        }
        assert_eq!(codes.check("P", wrong, t0), Err(Refused::Locked));
        assert_eq!(
            codes.check("P", &code, t0),
            Err(Refused::Locked),
            "even the right one"
        );
        assert_eq!(codes.issue("P", 7, t0 + RESEND), Err(Refused::Locked));
        assert!(codes.issue("P", 7, t0 + LOCK).is_ok());
    }
}
