//! Insurance claim evidence: for a theft still unresolved after the configured number of
//! days, a record of the case (the report, every pass of the bike since the theft, the
//! outcome so far) signed by the server with Ed25519. An insurer checks it against the
//! public key the server publishes (`GET /claims/public-key`), without having to trust
//! whoever operates greenplate: the record cannot be changed after signing.
//!
//! The record is JSON; the signature is over its exact bytes, which are returned as a
//! string beside it, so nothing needs to be re-serialised to check it. It names the bike
//! (plate, tag, make, model, colour, frame number) and not its owner.

use ed25519_dalek::{Signer, SigningKey};
use greenplate_registry::{Caller, RegistryError, TagId, now_ms};
use serde::Serialize;
use sqlx::Row;

use crate::error::AlertingError;
use crate::state::Alerting;

/// Passes listed in a record at most (the oldest first).
pub const MAX_SIGHTINGS: usize = 10_000;

/// The server's claim-signing key.
pub struct ClaimSigner {
    key: SigningKey,
}

impl std::fmt::Debug for ClaimSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClaimSigner({})", self.public_key_hex())
    }
}

impl ClaimSigner {
    /// From the 32-byte secret key (64 hex digits in the configuration or key file).
    pub fn from_hex(hex_key: &str) -> Result<Self, String> {
        let bytes = hex::decode(hex_key.trim()).map_err(|e| format!("not hex: {e}"))?;
        let bytes: [u8; 32] = bytes
            .try_into()
            .map_err(|_| "must be 32 bytes (64 hex digits)".to_owned())?;
        Ok(Self {
            key: SigningKey::from_bytes(&bytes),
        })
    }

    /// A new random key, as 64 hex digits.
    pub fn generate_hex() -> String {
        hex::encode(rand::random::<[u8; 32]>())
    }

    pub fn public_key_hex(&self) -> String {
        hex::encode(self.key.verifying_key().to_bytes())
    }

    fn sign(&self, bytes: &[u8]) -> String {
        hex::encode(self.key.sign(bytes).to_bytes())
    }
}

/// Where claim records are given (the insurers' `GET /claims/PLATE`, the owner page): the
/// key, and after how many days an unresolved theft gets one.
#[derive(Debug, Clone)]
pub struct Claims {
    pub signer: std::sync::Arc<ClaimSigner>,
    pub after_days: u32,
}

/// A signed record: `record` is the JSON text that `signature` (hex Ed25519) signs.
#[derive(Debug, Clone, Serialize)]
pub struct SignedClaim {
    pub algorithm: &'static str,
    pub public_key: String,
    pub record: String,
    pub signature: String,
}

#[derive(Serialize)]
struct Bike {
    plate: String,
    tag_id: String,
    make: String,
    model: String,
    color: String,
    frame_number: String,
}

#[derive(Serialize)]
struct Theft {
    report_id: i64,
    stolen_at_ms: i64,
    reported_at_ms: i64,
    place: String,
}

#[derive(Serialize)]
struct Outcome {
    /// `unresolved`: no recovery recorded.
    state: &'static str,
    days_unresolved: i64,
    incident_id: String,
    incident_state: String,
}

#[derive(Serialize)]
struct Sighting {
    reader_id: String,
    reader_name: String,
    lat: f64,
    lon: f64,
    first_seen_ms: i64,
    last_seen_ms: i64,
    reads: u32,
}

#[derive(Serialize)]
struct Record {
    version: u32,
    kind: &'static str,
    issued_at_ms: i64,
    issued_by: String,
    bike: Bike,
    theft: Theft,
    outcome: Outcome,
    /// Every pass of the bike's tag from the theft to now, oldest first.
    sightings: Vec<Sighting>,
    sightings_truncated: bool,
}

const DAY_MS: i64 = 86_400_000;

impl Alerting {
    /// The signed claim record of `plate`'s latest theft, if it is unresolved after
    /// `after_days`; audited whether given or refused.
    pub async fn claim_record(
        &self,
        caller: &Caller,
        signer: &ClaimSigner,
        plate: &str,
        after_days: u32,
    ) -> Result<SignedClaim, AlertingError> {
        let found = self
            .claim_unaudited(caller, signer, plate, after_days)
            .await;
        self.registry
            .audit_lookup(
                caller,
                "claim_record",
                &format!("plate {plate}"),
                found.is_ok(),
                "",
            )
            .await?;
        found
    }

    async fn claim_unaudited(
        &self,
        caller: &Caller,
        signer: &ClaimSigner,
        plate: &str,
        after_days: u32,
    ) -> Result<SignedClaim, AlertingError> {
        let plate = greenplate_registry::validate::plate("plate", plate)?;
        let row = sqlx::query(
            "SELECT t.report_id, t.stolen_at_ms, t.reported_at_ms, t.place, t.recovered_at_ms, \
                    b.plate, b.tag_id, b.make, b.model, b.color, b.frame_number \
             FROM theft_reports t JOIN bikes b ON b.bike_id = t.bike_id \
             WHERE b.plate = $1 ORDER BY t.report_id DESC LIMIT 1",
        )
        .bind(&plate)
        .fetch_optional(self.db().pool())
        .await?
        .ok_or_else(|| RegistryError::NotFound(format!("a theft report of {plate}")))?;
        let report_id: i64 = row.try_get("report_id")?;
        let reported_at_ms: i64 = row.try_get("reported_at_ms")?;
        let stolen_at_ms: i64 = row.try_get("stolen_at_ms")?;
        if row.try_get::<Option<i64>, _>("recovered_at_ms")?.is_some() {
            return Err(RegistryError::FailedPrecondition(format!(
                "the theft of {plate} is resolved: the bike was recovered"
            ))
            .into());
        }
        let now = now_ms();
        let days = (now - reported_at_ms) / DAY_MS;
        if now - reported_at_ms < i64::from(after_days) * DAY_MS {
            return Err(RegistryError::FailedPrecondition(format!(
                "the theft of {plate} was reported {days} days ago; a claim record is given \
                 after {after_days}"
            ))
            .into());
        }
        let tag_id: Option<String> = row.try_get("tag_id")?;
        let incident = sqlx::query(
            "SELECT incident_id, state FROM incidents WHERE dedup_key = $1 \
             ORDER BY opened_at_ms DESC LIMIT 1",
        )
        .bind(format!("theft:{report_id}"))
        .fetch_optional(self.db().pool())
        .await?;
        let (incident_id, incident_state) = match incident {
            Some(r) => (r.try_get("incident_id")?, r.try_get("state")?),
            None => (String::new(), String::new()),
        };
        let mut passes = match tag_id.as_deref().and_then(TagId::parse) {
            Some(tag) => {
                self.history
                    .track(
                        &[tag],
                        stolen_at_ms.min(reported_at_ms),
                        now,
                        MAX_SIGHTINGS + 1,
                    )
                    .await?
            }
            None => Vec::new(),
        };
        let truncated = passes.len() > MAX_SIGHTINGS;
        passes.truncate(MAX_SIGHTINGS);
        let readers = self.registry.readers();
        let record = Record {
            version: 1,
            kind: "greenplate.theft_claim",
            issued_at_ms: now,
            issued_by: caller.audit_name(),
            bike: Bike {
                plate: row.try_get("plate")?,
                tag_id: tag_id.unwrap_or_default(),
                make: row.try_get("make")?,
                model: row.try_get("model")?,
                color: row.try_get("color")?,
                frame_number: row.try_get("frame_number")?,
            },
            theft: Theft {
                report_id,
                stolen_at_ms,
                reported_at_ms,
                place: row.try_get("place")?,
            },
            outcome: Outcome {
                state: "unresolved",
                days_unresolved: days,
                incident_id,
                incident_state,
            },
            sightings: passes
                .iter()
                .map(|p| {
                    let r = readers.get(&p.reader_id);
                    Sighting {
                        reader_id: p.reader_id.to_string(),
                        reader_name: r.as_ref().map(|r| r.name.clone()).unwrap_or_default(),
                        lat: r.as_ref().map_or(0.0, |r| r.lat),
                        lon: r.as_ref().map_or(0.0, |r| r.lon),
                        first_seen_ms: p.first_seen_ms,
                        last_seen_ms: p.last_seen_ms,
                        reads: p.reads,
                    }
                })
                .collect(),
            sightings_truncated: truncated,
        };
        let text = serde_json::to_string(&record)
            .map_err(|e| RegistryError::Corrupt(format!("claim record: {e}")))?;
        Ok(SignedClaim {
            algorithm: "Ed25519",
            public_key: signer.public_key_hex(),
            signature: signer.sign(text.as_bytes()),
            record: text,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signature, Verifier, VerifyingKey};

    #[test]
    fn a_signature_checks_against_the_published_key_and_fails_on_any_change() {
        let signer = ClaimSigner::from_hex(&ClaimSigner::generate_hex()).unwrap();
        let record = br#"{"version":1,"plate":"P"}"#;
        let sig = signer.sign(record);
        let key: [u8; 32] = hex::decode(signer.public_key_hex())
            .unwrap()
            .try_into()
            .unwrap();
        let key = VerifyingKey::from_bytes(&key).unwrap();
        let sig = Signature::from_slice(&hex::decode(sig).unwrap()).unwrap();
        assert!(key.verify(record, &sig).is_ok());
        assert!(key.verify(br#"{"version":1,"plate":"Q"}"#, &sig).is_err());
        assert!(ClaimSigner::from_hex("abcd").is_err());
        assert!(ClaimSigner::from_hex("zz").is_err());
    }
}
