//! The reader directory: every roadside reader's position, sealing key and counters, in
//! memory, for the broker's authentication callback and for ingest.
//!
//! Secrets are stored sealed with the at-rest key (the server needs them to derive each
//! reader's sealing key); here only a SHA-256 of the secret is kept, compared in constant
//! time, and the derived [`ReaderKey`].

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};

use arc_swap::ArcSwap;
use greenplate_proto::seal::{self, OpenError, ReaderKey};
use greenplate_proto::v1::{ReaderStatus, SealedSightingBatch, SightingBatch};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::Row;
use subtle::ConstantTimeEq;

use crate::cameras::{Camera, CameraLink};
use crate::db::{Db, now_ms};
use crate::error::RegistryError;
use crate::secrets::SecretBox;

/// How a reader's MQTT payloads are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// A `SealedSightingBatch` (the native contract); opened by ingest's `pipeline::open`.
    #[default]
    Sealed,
    /// greenplate JSON (ingest's `formats::json`).
    Json,
    /// Impinj IoT device interface tag inventory events (`formats::impinj`).
    Impinj,
    /// Zebra IoT Connector tag data events (`formats::zebra`).
    Zebra,
}

impl Format {
    /// Every format, in the order they are documented.
    pub const ALL: [Format; 4] = [Format::Sealed, Format::Json, Format::Impinj, Format::Zebra];

    /// The name operators write in configuration and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Sealed => "sealed",
            Format::Json => "json",
            Format::Impinj => "impinj",
            Format::Zebra => "zebra",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A format name that is none of `sealed`, `json`, `impinj`, `zebra`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown reader format {0:?}: expected sealed, json, impinj or zebra")]
pub struct UnknownFormat(pub String);

impl FromStr for Format {
    type Err = UnknownFormat;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Format::ALL
            .into_iter()
            .find(|f| f.as_str() == s)
            .ok_or_else(|| UnknownFormat(s.to_owned()))
    }
}

/// One reader as the hot path sees it.
#[derive(Debug)]
pub struct Reader {
    pub id: String,
    pub name: String,
    pub lat: f64,
    pub lon: f64,
    /// How its payloads are written (sealed unless an operator chose otherwise).
    pub format: Format,
    credentials: ArcSwap<Credentials>,
    enabled: AtomicBool,
    /// Last accepted batch, Unix ms (0: never).
    pub last_seen_ms: AtomicI64,
    pub batches_accepted: AtomicU64,
    pub sightings_accepted: AtomicU64,
    /// Last status message taken, Unix ms by the server clock (0: never).
    pub last_status_ms: AtomicI64,
    /// What its status messages and silences said (see ingest's status stage).
    pub liveness: std::sync::Mutex<Liveness>,
    /// The cameras nearest it (video linkage; see [`crate::cameras`]).
    cameras: ArcSwap<Vec<Camera>>,
}

/// A reader's connection state as its status messages and silences tell it.
#[derive(Debug, Default, Clone)]
pub struct Liveness {
    /// The session of the last ONLINE status taken; empty once its will was taken.
    pub session: String,
    /// The reader's clock in the last ONLINE status taken (an older one is a replay).
    pub status_at_ms: i64,
    /// What the reader said about itself (firmware version), at most 64 characters.
    pub firmware: String,
    /// Since when it is offline (its will, or silent too long), server clock; `None` while
    /// it is (or may be) online.
    pub offline_since_ms: Option<i64>,
}

/// A reader's secret as the server uses it: the sealing key and a hash of the MQTT login
/// password (both derived from the secret, by its version: see `greenplate_proto::seal`);
/// after a rotation, the previous ones until the grace period ends.
struct Credentials {
    key: ReaderKey,
    hash: [u8; 32],
    version: u32,
    previous: Option<(ReaderKey, [u8; 32], i64)>,
}

impl Credentials {
    fn new(secret: &str) -> Self {
        Self {
            key: ReaderKey::derive(secret),
            hash: Sha256::digest(seal::login_password(secret).as_bytes()).into(),
            version: seal::key_version(secret),
            previous: None,
        }
    }

    /// The previous key and hash, while still in their grace period.
    fn previous(&self) -> Option<(&ReaderKey, &[u8; 32])> {
        self.previous
            .as_ref()
            .filter(|(_, _, until)| now_ms() < *until)
            .map(|(k, h, _)| (k, h))
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Credentials(..)")
    }
}

impl Reader {
    /// An in-memory reader (the registry builds these from its table).
    pub fn new(id: String, name: String, lat: f64, lon: f64, secret: &str) -> Self {
        Self {
            id,
            name,
            lat,
            lon,
            format: Format::Sealed,
            credentials: ArcSwap::from_pointee(Credentials::new(secret)),
            cameras: ArcSwap::from_pointee(Vec::new()),
            enabled: AtomicBool::new(true),
            last_seen_ms: AtomicI64::new(0),
            batches_accepted: AtomicU64::new(0),
            sightings_accepted: AtomicU64::new(0),
            last_status_ms: AtomicI64::new(0),
            liveness: std::sync::Mutex::new(Liveness::default()),
        }
    }

    /// The reader with payloads in `format`.
    pub fn with_format(mut self, format: Format) -> Self {
        self.format = format;
        self
    }

    /// The last time anything authentic came from the reader (batch or status), Unix ms.
    pub fn last_activity_ms(&self) -> i64 {
        self.last_seen_ms
            .load(Ordering::Relaxed)
            .max(self.last_status_ms.load(Ordering::Relaxed))
    }

    /// A copy of its liveness (a poisoned lock still holds valid data: plain fields).
    pub fn liveness(&self) -> Liveness {
        self.liveness
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Constant-time check of an MQTT password against the reader's secret (or, during a
    /// rotation's grace period, its previous one).
    pub fn check_password(&self, password: &str) -> bool {
        let h: [u8; 32] = Sha256::digest(password.as_bytes()).into();
        let c = self.credentials.load();
        let current = bool::from(h.ct_eq(&c.hash));
        let previous = c
            .previous()
            .is_some_and(|(_, old)| bool::from(h.ct_eq(old)));
        current | previous
    }

    /// Whether `secret` is the reader's current secret (not a previous one in its grace).
    pub fn check_secret_current(&self, secret: &str) -> bool {
        let h: [u8; 32] = Sha256::digest(seal::login_password(secret).as_bytes()).into();
        bool::from(h.ct_eq(&self.credentials.load().hash))
    }

    /// Opens a sealed batch with the reader's key (or, during a rotation's grace period,
    /// its previous key).
    pub fn open_batch(&self, sealed: &SealedSightingBatch) -> Result<SightingBatch, OpenError> {
        let c = self.credentials.load();
        match c.key.open(sealed) {
            Err(OpenError::Unauthentic) => match c.previous() {
                Some((old, _)) => old.open(sealed),
                None => Err(OpenError::Unauthentic),
            },
            other => other,
        }
    }

    /// Opens a sealed status, like [`Reader::open_batch`].
    pub fn open_status(&self, sealed: &SealedSightingBatch) -> Result<ReaderStatus, OpenError> {
        let c = self.credentials.load();
        match c.key.open_status(sealed) {
            Err(OpenError::Unauthentic) => match c.previous() {
                Some((old, _)) => old.open_status(sealed),
                None => Err(OpenError::Unauthentic),
            },
            other => other,
        }
    }

    /// The version of the reader's current secret (1 or 2, see `greenplate_proto::seal`).
    pub fn key_version(&self) -> u32 {
        self.credentials.load().version
    }

    /// Takes a new secret in memory; the old one stays valid for `grace_ms` (so a reader
    /// can be given its new secret and reconnect without losing batches).
    pub fn rotate(&self, secret: &str, grace_ms: i64) {
        let old = self.credentials.load();
        let mut next = Credentials::new(secret);
        next.previous = Some((old.key.clone(), old.hash, now_ms().saturating_add(grace_ms)));
        self.credentials.store(Arc::new(next));
    }

    /// Enables or disables the reader in memory (the registry calls this after its commit).
    /// The cameras nearest it.
    pub fn cameras(&self) -> Arc<Vec<Camera>> {
        self.cameras.load_full()
    }

    /// The cameras with their URLs filled in for a sighting at `at_ms`.
    pub fn camera_links(&self, at_ms: i64) -> Vec<CameraLink> {
        self.cameras
            .load()
            .iter()
            .map(|c| c.link(&self.id, at_ms))
            .collect()
    }

    pub fn set_cameras(&self, cameras: Vec<Camera>) {
        self.cameras.store(Arc::new(cameras));
    }

    pub fn set_enabled(&self, enabled: bool) {
        self.enabled.store(enabled, Ordering::Relaxed);
    }

    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// Records an accepted batch.
    pub fn record_batch(&self, sightings: usize) {
        self.last_seen_ms.store(now_ms(), Ordering::Relaxed);
        self.batches_accepted.fetch_add(1, Ordering::Relaxed);
        self.sightings_accepted
            .fetch_add(sightings as u64, Ordering::Relaxed);
    }
}

/// The columns of `readers` that [`Reader::from_row`] reads.
pub(crate) const READER_COLUMNS: &str =
    "reader_id, name, lat, lon, secret_sealed, enabled, format, cameras";

impl Reader {
    /// A reader as stored (a row of [`READER_COLUMNS`]), with its secret opened.
    pub(crate) fn from_row(
        row: &sqlx::any::AnyRow,
        secrets: &SecretBox,
    ) -> Result<(Reader, String), RegistryError> {
        let sealed: Vec<u8> = row.try_get("secret_sealed")?;
        let secret = secrets.open_string(&sealed)?;
        let format: String = row.try_get("format")?;
        let reader = Reader::new(
            row.try_get("reader_id")?,
            row.try_get("name")?,
            row.try_get("lat")?,
            row.try_get("lon")?,
            &secret,
        )
        .with_format(format.parse().unwrap_or_else(|e| {
            tracing::error!(error = %e, "Stored reader format unknown; treating it as sealed.");
            Format::Sealed
        }));
        reader.set_enabled(row.try_get::<i64, _>("enabled")? != 0);
        let cameras: String = row.try_get("cameras")?;
        reader.set_cameras(crate::cameras::from_json(&reader.id, &cameras));
        Ok((reader, secret))
    }
}

/// All readers, by id.
#[derive(Debug, Default)]
pub struct Readers {
    map: papaya::HashMap<String, Arc<Reader>>,
}

impl Readers {
    pub(crate) async fn load(db: &Db, secrets: &SecretBox) -> Result<Self, RegistryError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {READER_COLUMNS} FROM readers"
        )))
        .fetch_all(db.pool())
        .await?;
        let readers = Self::default();
        for row in rows {
            readers.insert(Reader::from_row(&row, secrets)?.0);
        }
        Ok(readers)
    }

    /// Adds or replaces a reader in memory only; the registry calls this after its commit.
    pub fn insert(&self, reader: Reader) {
        self.map.pin().insert(reader.id.clone(), Arc::new(reader));
    }

    pub fn get(&self, id: &str) -> Option<Arc<Reader>> {
        self.map.pin().get(id).cloned()
    }

    /// The broker's authentication decision: the client id and username must both be the
    /// reader id, the reader must be enabled, and the password must be its secret.
    pub fn authenticate(&self, client_id: &str, username: &str, password: &str) -> bool {
        client_id == username
            && self
                .get(username)
                .is_some_and(|r| r.enabled() && r.check_password(password))
    }

    pub fn all(&self) -> Vec<Arc<Reader>> {
        let mut v: Vec<_> = self.map.pin().values().cloned().collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authenticate_checks_everything() {
        let readers = Readers::default();
        readers.insert(Reader::new("r1".into(), "R1".into(), 23.3, 116.6, "pw"));
        assert!(readers.authenticate("r1", "r1", "pw"));
        assert!(!readers.authenticate("r1", "r1", "bad"));
        assert!(!readers.authenticate("other", "r1", "pw"));
        assert!(!readers.authenticate("r2", "r2", "pw"));
        readers
            .get("r1")
            .unwrap()
            .enabled
            .store(false, Ordering::Relaxed);
        assert!(!readers.authenticate("r1", "r1", "pw"));
    }
}
