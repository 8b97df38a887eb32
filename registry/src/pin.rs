//! Owners' PINs: Argon2id (OWASP parameters: 19 MiB, 2 passes), hashed and checked on a
//! dedicated thread pool so a slow hash never stalls the runtime. Wrong PINs (and wrong ID
//! numbers at SetPin) are counted per bike and lock it for a while after [`MAX_FAILURES`];
//! [`Failures`] counts every refusal for /metrics, by action and reason.

use std::sync::{Arc, LazyLock, Mutex, mpsc};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use argon2::password_hash::{self, Output, ParamsString, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use subtle::ConstantTimeEq;
use tokio::sync::oneshot;

use crate::error::RegistryError;

/// Wrong PINs (or wrong ID numbers at SetPin) in a row before the bike's PIN is locked.
pub const MAX_FAILURES: i64 = 5;
/// How long a locked PIN stays locked.
pub const LOCKOUT_MS: i64 = 15 * 60 * 1000;

/// The owner action a proof was asked for: the `action` label of
/// `registry_pin_failures_total`, and named in the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    SetArmed,
    Transfer,
    SetPin,
    ReportRecovered,
    ReplaceTag,
}

impl Action {
    pub const ALL: [Action; 5] = [
        Action::SetArmed,
        Action::Transfer,
        Action::SetPin,
        Action::ReportRecovered,
        Action::ReplaceTag,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::SetArmed => "set_armed",
            Action::Transfer => "transfer",
            Action::SetPin => "set_pin",
            Action::ReportRecovered => "report_recovered",
            Action::ReplaceTag => "replace_tag",
        }
    }

    /// What proves the owner for this action: the ID number for SetPin (the bike has no
    /// PIN yet), the PIN for the rest.
    fn wrong_proof(self) -> Refusal {
        match self {
            Action::SetPin => Refusal::WrongIdNumber,
            _ => Refusal::WrongPin,
        }
    }
}

/// Why an owner proof was refused: the `reason` label of `registry_pin_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    WrongPin,
    WrongIdNumber,
    /// The bike's PIN was locked: nothing was checked.
    Locked,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::WrongPin => "wrong_pin",
            Refusal::WrongIdNumber => "wrong_id_number",
            Refusal::Locked => "locked",
        }
    }
}

/// The labels of `registry_pin_failures_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    pub action: &'static str,
    pub reason: &'static str,
}

/// Owner proofs refused (wrong PIN, wrong ID number, or refused unchecked while locked), by
/// action and reason. Every series that can occur is there at 0 from the start, so a rate
/// and an alert rule see it before the first failure.
#[derive(Debug)]
pub struct Failures {
    pub family: Family<FailureLabels, Counter>,
}

impl Default for Failures {
    fn default() -> Self {
        let family = Family::<FailureLabels, Counter>::default();
        for action in Action::ALL {
            for reason in [action.wrong_proof(), Refusal::Locked] {
                let _ = family.get_or_create(&labels(action, reason));
            }
        }
        Self { family }
    }
}

fn labels(action: Action, reason: Refusal) -> FailureLabels {
    FailureLabels {
        action: action.as_str(),
        reason: reason.as_str(),
    }
}

impl Failures {
    /// Counts one refusal: a wrong proof (`locked` false) or a refusal while locked.
    pub(crate) fn count(&self, action: Action, locked: bool) {
        let reason = if locked {
            Refusal::Locked
        } else {
            action.wrong_proof()
        };
        self.family.get_or_create(&labels(action, reason)).inc();
    }

    /// The count of one series (for tests).
    pub fn get(&self, action: Action, reason: Refusal) -> u64 {
        self.family.get_or_create(&labels(action, reason)).get()
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// Argon2 runs on its own small pool of long-lived threads, one per core. Each hash takes
/// 19 MiB and a core for tens of milliseconds: on the general blocking pool, sixteen busy
/// kiosks meant sixteen threads, each keeping its own malloc arena full of freed 19 MiB
/// blocks (measured: 3 GB RSS); here the work queues and memory stays at a few blocks.
static POOL: LazyLock<Mutex<mpsc::Sender<Job>>> = LazyLock::new(|| {
    let (tx, rx) = mpsc::channel::<Job>();
    let rx = Arc::new(Mutex::new(rx));
    for i in 0..std::thread::available_parallelism().map_or(2, |n| n.get()) {
        let rx = rx.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("pin-hash-{i}"))
            .spawn(move || {
                loop {
                    let job = match rx.lock() {
                        Ok(rx) => rx.recv(),
                        Err(_) => return,
                    };
                    match job {
                        Ok(job) => job(),
                        Err(_) => return,
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "Cannot start a PIN hashing thread.");
        }
    }
    Mutex::new(tx)
});

/// Runs one Argon2 job on the PIN pool and waits for it without blocking the runtime.
async fn run<T: Send + 'static>(
    job: impl FnOnce() -> Result<T, RegistryError> + Send + 'static,
) -> Result<T, RegistryError> {
    let (done, result) = oneshot::channel();
    let job: Job = Box::new(move || {
        let _ = done.send(job());
    });
    POOL.lock()
        .map_err(|_| RegistryError::Corrupt("PIN pool poisoned".into()))?
        .send(job)
        .map_err(|_| RegistryError::Corrupt("PIN pool stopped".into()))?;
    result
        .await
        .map_err(|_| RegistryError::Corrupt("PIN hashing thread failed".into()))?
}

/// Checks a PIN's shape: 4 to 8 digits.
pub fn validate(field: &'static str, pin: &str) -> Result<(), RegistryError> {
    if (4..=8).contains(&pin.len()) && pin.bytes().all(|b| b.is_ascii_digit()) {
        Ok(())
    } else {
        Err(RegistryError::invalid(field, "must be 4 to 8 digits"))
    }
}

/// Checks a PIN given to prove the owner: present, and of a PIN's shape (a PIN of another
/// shape can never match, so it is refused before anything is counted).
pub fn validate_given(field: &'static str, pin: &str) -> Result<(), RegistryError> {
    if pin.is_empty() {
        return Err(RegistryError::invalid(
            field,
            "is required: the owner's PIN (a bike with none gets one with SetPin first)",
        ));
    }
    validate(field, pin)
}

thread_local! {
    /// The Argon2 working memory of this PIN thread, reused by every hash it computes.
    static MEMORY: std::cell::RefCell<Vec<Block>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Argon2id with `params` into `out`, in this thread's reused working memory.
fn argon2_into(
    params: &Params,
    pin: &[u8],
    salt: &[u8],
    out: &mut [u8],
) -> Result<(), RegistryError> {
    let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
    MEMORY.with(|m| {
        let mut m = m.borrow_mut();
        if m.len() < params.block_count() {
            m.resize(params.block_count(), Block::default());
        }
        argon
            .hash_password_into_with_memory(pin, salt, out, &mut m[..params.block_count()])
            .map_err(|e| RegistryError::Corrupt(format!("PIN hash: {e}")))
    })
}

/// Hashes a PIN into a standard PHC string (`$argon2id$v=19$m=19456,t=2,p=1$...`).
pub async fn hash(pin: &str) -> Result<String, RegistryError> {
    let pin = pin.to_owned();
    run(move || {
        let params = Params::default();
        let raw_salt: [u8; 16] = rand::random();
        let salt = SaltString::encode_b64(&raw_salt)
            .map_err(|e| RegistryError::Corrupt(format!("salt: {e}")))?;
        let mut out = [0u8; 32];
        argon2_into(&params, pin.as_bytes(), &raw_salt, &mut out)?;
        let phc = PasswordHash {
            algorithm: argon2::ARGON2ID_IDENT,
            version: Some(Version::V0x13.into()),
            params: ParamsString::try_from(&params)
                .map_err(|e| RegistryError::Corrupt(format!("PIN params: {e}")))?,
            salt: Some(salt.as_salt()),
            hash: Some(
                Output::new(&out).map_err(|e| RegistryError::Corrupt(format!("PIN hash: {e}")))?,
            ),
        };
        Ok(phc.to_string())
    })
    .await
}

/// True if `pin` matches the stored PHC string (constant-time comparison).
pub async fn verify(pin: &str, phc: &str) -> Result<bool, RegistryError> {
    let (pin, phc) = (pin.to_owned(), phc.to_owned());
    run(move || {
        let corrupt =
            |e: password_hash::Error| RegistryError::Corrupt(format!("stored PIN hash: {e}"));
        let parsed = PasswordHash::new(&phc).map_err(corrupt)?;
        let params = Params::try_from(&parsed).map_err(corrupt)?;
        let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
            return Err(RegistryError::Corrupt(
                "stored PIN hash lacks salt or hash".into(),
            ));
        };
        let mut salt_buf = [0u8; 64];
        let raw_salt = salt.decode_b64(&mut salt_buf).map_err(corrupt)?;
        let mut out = vec![0u8; expected.len()];
        argon2_into(&params, pin.as_bytes(), raw_salt, &mut out)?;
        Ok(bool::from(out.as_slice().ct_eq(expected.as_bytes())))
    })
    .await
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
        // The PHC string is standard: the argon2 crate's own verifier accepts it.
        use argon2::PasswordVerifier;
        let parsed = PasswordHash::new(&h).unwrap();
        assert!(Argon2::default().verify_password(b"2468", &parsed).is_ok());
        assert!(validate("pin", "123").is_err());
        assert!(validate("pin", "12a4").is_err());
        assert!(validate("pin", "123456789").is_err());
    }
}
