//! greenplate registry: where a bike, its plate tag and its owner are bound, free of charge,
//! at a kiosk, and where thefts and recoveries are recorded. It also owns the identities the
//! rest of the system checks (readers, kiosks, API tokens) and the in-memory hot index that
//! ingest consults for every read. See `ARCHITECTURE.md` beside this crate's `src/`.
//!
//! Layout:
//! - [`db`]: the database handle (sqlx `Any`: SQLite or PostgreSQL) and per-crate migrations.
//! - [`store`]: [`Registry`]: opening, readers, kiosks, the audit log.
//! - [`bikes`]: registration (free, idempotent), lookups, transfer, tag replacement,
//!   deregistration, arming — one transaction each, audited.
//! - [`thefts`]: theft and recovery reports (the hotlist).
//! - [`import`]: bulk import of existing registrations from CSV.
//! - [`owners`]: what owners' notifications need: a phone opened at sending, recoveries
//!   not yet told.
//! - [`pin`]: owners' PINs (Argon2id, lockout), and the counters of refused owner proofs.
//! - [`service`]: the `greenplate.v1.Registry` gRPC service.
//! - [`hot_index`]: tag -> (bike, stolen, armed, revoked), lock-free reads.
//! - `metrics`: `registry_tags` and `registry_readers`, read at each scrape; the refusal
//!   counters (owner lookups over the rate, owner proofs by action and reason).
//! - [`readers`]: the reader directory (positions, sealing keys, counters) for the broker.
//! - [`cameras`]: the cameras nearest each reader (video linkage), and their URL templates.
//! - [`auth`]: bearer tokens and roles; the tonic interceptor.
//! - [`secrets`]: sealing and keyed hashing of data at rest.
//! - [`rekey`]: rotating the at-rest key (re-sealing everything in one transaction).
//! - [`seqs`]: each reader's seq window (processed batch seqs), stored across restarts and
//!   handovers.
//! - [`limits`]: per-caller rate limits on lookups of personal data.
//! - [`changes`]: what a node announces when it commits a change (NOTIFY on commit);
//!   [`sync`]: the other nodes' side (listen, reload).
//! - [`validate`]: tag ids, plates, resident ID numbers, phones; masking.
//! - [`clock`]: now, and times as text (RFC 3339, China Standard Time) for every crate.
//! - `testing` (feature `test-util`): throwaway PostgreSQL databases for tests.

pub mod auth;
pub mod bikes;
pub mod cameras;
pub mod changes;
pub mod clock;
pub mod db;
mod error;
pub mod hot_index;
pub mod import;
pub mod limits;
pub mod lists;
mod metrics;
pub mod owners;
pub mod pin;
pub mod readers;
pub mod rekey;
pub mod secrets;
pub mod seqs;
pub mod service;
pub mod store;
pub mod sync;
#[cfg(any(test, feature = "test-util"))]
pub mod testing;
pub mod thefts;
pub mod validate;
pub mod watch;

pub use auth::{Authenticator, Caller, Credential, Role};
pub use bikes::{BikeKey, BikeRecord, NewBike, NewOwner, Registered};
pub use cameras::{Camera, CameraLink};
pub use clock::now_ms;
pub use db::{Backend, Db, DbError};
pub use error::RegistryError;
pub use hot_index::{HotIndex, TagState};
pub use owners::{OpenTheft, OwnerBike, OwnerContact, Recovery};
pub use readers::{Liveness, Reader, Readers};
pub use secrets::SecretBox;
pub use seqs::StoredSeqs;
pub use service::RegistryService;
pub use store::{AuditEntry, ReaderLogin, Registry};
pub use thefts::{AlertFacts, TheftDetails, TheftReport, TrackSubject};
pub use validate::TagId;
pub use watch::{NewWatchEntry, WatchChange, WatchEntry};

/// Errors opening the registry.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

#[cfg(test)]
mod tests;
