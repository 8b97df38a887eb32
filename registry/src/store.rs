//! [`Registry`]: the registry's operations over the database, each one transaction with its
//! audit record, followed by the in-memory updates (hot index, reader directory, tokens)
//! once it has committed.

use std::sync::Arc;

use rand::RngCore;
use sqlx::{AnyConnection, Row};

use crate::auth::{Authenticator, Caller, IssuedToken, Role};
use crate::cameras::Camera;
use crate::changes::Change;
use crate::db::{Db, Migrations, now_ms};
use crate::error::{RegistryError, is_unique_violation};
use crate::hot_index::HotIndex;
use crate::readers::{Format, Reader, Readers, UnknownFormat};
use crate::secrets::SecretBox;
use crate::validate;

/// The registry's schema, for [`Db::migrate`].
pub fn migrations() -> Migrations {
    Migrations {
        owner: "registry",
        sqlite: sqlx::migrate!("./migrations/sqlite"),
        postgres: sqlx::migrate!("./migrations/postgres"),
    }
}

/// The registry: database, at-rest key, and the in-memory state ingest reads.
#[derive(Debug)]
pub struct Registry {
    pub(crate) db: Db,
    pub(crate) secrets: SecretBox,
    pub(crate) index: Arc<HotIndex>,
    pub(crate) readers: Arc<Readers>,
    pub(crate) auth: Arc<Authenticator>,
    /// Each kiosk's budget of owner lookups (ListOwnerBikes by ID number).
    pub(crate) owner_lookups: crate::limits::OwnerLookups,
    /// Owner proofs refused (wrong PINs, wrong ID numbers, refusals while locked).
    pub(crate) pin_failures: crate::pin::Failures,
    /// Woken after a theft report commits ([`Registry::thefts_reported`]).
    pub(crate) thefts_reported: tokio::sync::Notify,
}

/// A reader's login for an external broker ([`Registry::reader_logins`]).
#[derive(Clone, PartialEq, Eq)]
pub struct ReaderLogin {
    pub reader_id: String,
    /// The MQTT password ([`greenplate_proto::seal::login_password`] of its secret).
    pub password: String,
}

impl std::fmt::Debug for ReaderLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReaderLogin")
            .field("reader_id", &self.reader_id)
            .finish_non_exhaustive()
    }
}

impl Registry {
    /// Migrates the registry's tables and loads the hot index, readers and tokens.
    pub async fn open(
        db: Db,
        secrets: SecretBox,
        admin_token: &str,
    ) -> Result<Arc<Self>, crate::Error> {
        db.migrate(migrations()).await?;
        let index = Arc::new(HotIndex::load(&db).await?);
        let readers = Arc::new(Readers::load(&db, &secrets).await?);
        let auth = Authenticator::load(&db, admin_token).await?;
        tracing::info!(
            tags = index.len(),
            readers = readers.len(),
            "Loaded the registry."
        );
        Ok(Arc::new(Self {
            db,
            secrets,
            index,
            readers,
            auth,
            owner_lookups: Default::default(),
            pin_failures: Default::default(),
            thefts_reported: tokio::sync::Notify::new(),
        }))
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    pub fn index(&self) -> &Arc<HotIndex> {
        &self.index
    }

    pub fn readers(&self) -> &Arc<Readers> {
        &self.readers
    }

    /// Notified (one permit kept) each time a new theft report commits on this node, so the
    /// look-back (alerting) starts at once instead of at its next poll.
    pub fn thefts_reported(&self) -> &tokio::sync::Notify {
        &self.thefts_reported
    }

    /// The at-rest key's box (opens readers' secrets and owners' personal data).
    pub(crate) fn secrets(&self) -> &SecretBox {
        &self.secrets
    }

    /// The server key `name` that every node on this database shares (sealed with the
    /// at-rest key in `server_keys`): the stored one, or, the first time, `make()`'s, stored.
    /// Nodes starting together agree: the first insert wins and the others read it.
    pub async fn shared_key(
        &self,
        name: &str,
        make: impl FnOnce() -> String,
    ) -> Result<String, RegistryError> {
        let b = self.db.backend();
        let insert = format!(
            "INSERT INTO server_keys (name, sealed, created_at_ms) VALUES ({}, {}, {}) \
             ON CONFLICT (name) DO NOTHING",
            b.ph(1),
            b.ph(2),
            b.ph(3)
        );
        let select = format!("SELECT sealed FROM server_keys WHERE name = {}", b.ph(1));
        let found = sqlx::query(sqlx::AssertSqlSafe(select.clone()))
            .bind(name)
            .fetch_optional(self.db.pool())
            .await?;
        let row = match found {
            Some(row) => row,
            None => {
                sqlx::query(sqlx::AssertSqlSafe(insert))
                    .bind(name)
                    .bind(self.secrets.seal(make().as_bytes()))
                    .bind(now_ms())
                    .execute(self.db.pool())
                    .await?;
                sqlx::query(sqlx::AssertSqlSafe(select))
                    .bind(name)
                    .fetch_one(self.db.pool())
                    .await?
            }
        };
        self.secrets
            .open_string(&row.try_get::<Vec<u8>, _>("sealed")?)
    }

    pub fn auth(&self) -> &Arc<Authenticator> {
        &self.auth
    }

    /// Owner proofs refused so far, by action and reason (also in /metrics).
    pub fn pin_failures(&self) -> &crate::pin::Failures {
        &self.pin_failures
    }

    /// Adds a reader and returns its new secret.
    pub async fn add_reader(
        &self,
        caller: &Caller,
        new: NewReader<'_>,
    ) -> Result<String, RegistryError> {
        let NewReader {
            reader_id,
            name,
            lat,
            lon,
            format,
            key_version,
            cameras,
        } = new;
        let reader_id = validate::ident("reader_id", reader_id)?;
        let cameras = crate::cameras::validate(cameras)?;
        let format: Format = match format {
            "" => Format::Sealed,
            f => f.parse().map_err(|_: UnknownFormat| {
                RegistryError::invalid("format", "must be sealed, json, impinj or zebra")
            })?,
        };
        if reader_id.starts_with("greenplate") {
            return Err(RegistryError::invalid(
                "reader_id",
                "must not start with 'greenplate' (reserved for the server's own clients)",
            ));
        }
        let name = validate::text("name", name, 200)?;
        if !(-90.0..=90.0).contains(&lat) {
            return Err(RegistryError::invalid("lat", "must be between -90 and 90"));
        }
        if !(-180.0..=180.0).contains(&lon) {
            return Err(RegistryError::invalid(
                "lon",
                "must be between -180 and 180",
            ));
        }
        let secret = new_reader_secret(match key_version {
            0 | 2 => 2,
            1 => 1,
            _ => {
                return Err(RegistryError::invalid(
                    "key_version",
                    "must be 1 or 2 (0: 2)",
                ));
            }
        });
        let mut tx = self.db.begin_write().await?;
        sqlx::query(
            "INSERT INTO readers (reader_id, name, lat, lon, secret_sealed, enabled, created_at_ms, \
                                  format, cameras) VALUES ($1, $2, $3, $4, $5, 1, $6, $7, $8)",
        )
        .bind(&reader_id)
        .bind(&name)
        .bind(lat)
        .bind(lon)
        .bind(self.secrets.seal(secret.as_bytes()))
        .bind(now_ms())
        .bind(format.as_str())
        .bind(crate::cameras::to_json(&cameras))
        .execute(&mut *tx)
        .await
        .map_err(|e| already_exists(e, || format!("reader {reader_id}")))?;
        audit(
            &mut tx,
            caller,
            "add_reader",
            &if cameras.is_empty() {
                format!("{reader_id} ({format})")
            } else {
                format!("{reader_id} ({format}, {} cameras)", cameras.len())
            },
        )
        .await?;
        let change = Change::Reader {
            id: reader_id.clone(),
            grace_ms: 0,
        };
        crate::changes::announce(&mut tx, &change).await?;
        tx.commit().await?;
        let reader = Reader::new(reader_id, name, lat, lon, &secret).with_format(format);
        reader.set_cameras(cameras);
        self.readers.insert(reader);
        Ok(secret)
    }

    /// Replaces the cameras a reader names (video linkage; see [`crate::cameras`]).
    pub async fn set_reader_cameras(
        &self,
        caller: &Caller,
        reader_id: &str,
        cameras: Vec<Camera>,
    ) -> Result<(), RegistryError> {
        let reader = self
            .readers
            .get(reader_id)
            .ok_or_else(|| RegistryError::NotFound(format!("reader {reader_id}")))?;
        let cameras = crate::cameras::validate(cameras)?;
        let mut tx = self.db.begin_write().await?;
        sqlx::query("UPDATE readers SET cameras = $1 WHERE reader_id = $2")
            .bind(crate::cameras::to_json(&cameras))
            .bind(reader_id)
            .execute(&mut *tx)
            .await?;
        let ids: Vec<&str> = cameras.iter().map(|c| c.id.as_str()).collect();
        audit(
            &mut tx,
            caller,
            "set_reader_cameras",
            &format!("{reader_id}: [{}]", ids.join(", ")),
        )
        .await?;
        let change = Change::Reader {
            id: reader_id.to_owned(),
            grace_ms: 0,
        };
        crate::changes::announce(&mut tx, &change).await?;
        tx.commit().await?;
        reader.set_cameras(cameras);
        Ok(())
    }

    /// Enables or disables a reader. A disabled reader cannot log in to the embedded
    /// broker, and whatever it still sends on an open connection is dropped.
    pub async fn set_reader_enabled(
        &self,
        caller: &Caller,
        reader_id: &str,
        enabled: bool,
    ) -> Result<(), RegistryError> {
        let reader = self
            .readers
            .get(reader_id)
            .ok_or_else(|| RegistryError::NotFound(format!("reader {reader_id}")))?;
        let mut tx = self.db.begin_write().await?;
        sqlx::query("UPDATE readers SET enabled = $1 WHERE reader_id = $2")
            .bind(i64::from(enabled))
            .bind(reader_id)
            .execute(&mut *tx)
            .await?;
        let action = if enabled {
            "enable_reader"
        } else {
            "disable_reader"
        };
        audit(&mut tx, caller, action, reader_id).await?;
        let change = Change::Reader {
            id: reader_id.to_owned(),
            grace_ms: 0,
        };
        crate::changes::announce(&mut tx, &change).await?;
        tx.commit().await?;
        reader.set_enabled(enabled);
        Ok(())
    }

    /// Gives a reader a new secret and returns it. The old secret keeps working for
    /// `grace_ms` (0: not at all), for logins and for opening its batches.
    pub async fn rotate_reader_secret(
        &self,
        caller: &Caller,
        reader_id: &str,
        grace_ms: i64,
    ) -> Result<String, RegistryError> {
        let reader = self
            .readers
            .get(reader_id)
            .ok_or_else(|| RegistryError::NotFound(format!("reader {reader_id}")))?;
        // The new secret keeps the reader's version: its firmware speaks that one.
        let secret = new_reader_secret(reader.key_version());
        let mut tx = self.db.begin_write().await?;
        sqlx::query("UPDATE readers SET secret_sealed = $1 WHERE reader_id = $2")
            .bind(self.secrets.seal(secret.as_bytes()))
            .bind(reader_id)
            .execute(&mut *tx)
            .await?;
        audit(
            &mut tx,
            caller,
            "rotate_reader_secret",
            &format!("{reader_id} (grace {} s)", grace_ms / 1000),
        )
        .await?;
        let change = Change::Reader {
            id: reader_id.to_owned(),
            grace_ms,
        };
        crate::changes::announce(&mut tx, &change).await?;
        tx.commit().await?;
        reader.rotate(&secret, grace_ms);
        Ok(secret)
    }

    /// Every enabled reader with the MQTT password it logs in with (derived from its current
    /// secret), read from the database: for writing an external broker's logins (NATS).
    /// The passwords are secrets: hash them, never log them.
    pub async fn reader_logins(&self) -> Result<Vec<ReaderLogin>, RegistryError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {} FROM readers WHERE enabled <> 0 ORDER BY reader_id",
            crate::readers::READER_COLUMNS
        )))
        .fetch_all(self.db.pool())
        .await?;
        rows.iter()
            .map(|row| {
                let (reader, secret) = Reader::from_row(row, &self.secrets)?;
                Ok(ReaderLogin {
                    reader_id: reader.id.clone(),
                    password: greenplate_proto::seal::login_password(&secret),
                })
            })
            .collect()
    }

    /// Adds a kiosk and returns its token (expiring after `ttl`; `None`: never).
    pub async fn add_kiosk(
        &self,
        caller: &Caller,
        kiosk_id: &str,
        name: &str,
        ttl: Option<std::time::Duration>,
    ) -> Result<IssuedToken, RegistryError> {
        let kiosk_id = validate::ident("kiosk_id", kiosk_id)?;
        let name = validate::text("name", name, 200)?;
        let mut tx = self.db.begin_write().await?;
        sqlx::query("INSERT INTO kiosks (kiosk_id, name, created_at_ms) VALUES ($1, $2, $3)")
            .bind(&kiosk_id)
            .bind(&name)
            .bind(now_ms())
            .execute(&mut *tx)
            .await
            .map_err(|e| already_exists(e, || format!("kiosk {kiosk_id}")))?;
        let issued = Authenticator::issue(&mut tx, Role::Kiosk, &kiosk_id, ttl).await?;
        audit(&mut tx, caller, "add_kiosk", &kiosk_id).await?;
        tx.commit().await?;
        self.auth.activate(&issued);
        Ok(issued)
    }

    /// Adds an insurer (reads signed claim records only) and returns its token.
    pub async fn add_insurer(
        &self,
        caller: &Caller,
        insurer_id: &str,
        name: &str,
        ttl: Option<std::time::Duration>,
    ) -> Result<IssuedToken, RegistryError> {
        let insurer_id = validate::ident("insurer_id", insurer_id)?;
        let name = validate::text("name", name, 200)?;
        let mut tx = self.db.begin_write().await?;
        sqlx::query("INSERT INTO insurers (insurer_id, name, created_at_ms) VALUES ($1, $2, $3)")
            .bind(&insurer_id)
            .bind(&name)
            .bind(now_ms())
            .execute(&mut *tx)
            .await
            .map_err(|e| already_exists(e, || format!("insurer {insurer_id}")))?;
        let issued = Authenticator::issue(&mut tx, Role::Insurer, &insurer_id, ttl).await?;
        audit(&mut tx, caller, "add_insurer", &insurer_id).await?;
        tx.commit().await?;
        self.auth.activate(&issued);
        Ok(issued)
    }

    /// Entries of the audit log after `after_id`, oldest first.
    pub async fn list_audit(
        &self,
        after_id: i64,
        limit: i64,
    ) -> Result<Vec<AuditEntry>, RegistryError> {
        let rows = sqlx::query(
            "SELECT audit_id, at_ms, actor, action, subject FROM audit_log \
             WHERE audit_id > $1 ORDER BY audit_id LIMIT $2",
        )
        .bind(after_id)
        .bind(limit)
        .fetch_all(self.db.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(AuditEntry {
                    audit_id: r.try_get("audit_id")?,
                    at_ms: r.try_get("at_ms")?,
                    actor: r.try_get("actor")?,
                    action: r.try_get("action")?,
                    subject: r.try_get("subject")?,
                })
            })
            .collect()
    }
}

/// One audit log entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    pub audit_id: i64,
    pub at_ms: i64,
    pub actor: String,
    pub action: String,
    pub subject: String,
}

/// Appends to the audit log inside the caller's transaction.
pub async fn audit(
    conn: &mut AnyConnection,
    caller: &Caller,
    action: &str,
    subject: &str,
) -> Result<(), RegistryError> {
    sqlx::query("INSERT INTO audit_log (at_ms, actor, action, subject) VALUES ($1, $2, $3, $4)")
        .bind(now_ms())
        .bind(caller.audit_name())
        .bind(action)
        .bind(subject)
        .execute(conn)
        .await?;
    Ok(())
}

/// A reader to add: its id, name and position, its payload format (`""` for sealed) and
/// the version of its secret (0 for the default, 2; see `greenplate_proto::seal`).
#[derive(Debug, Clone, Default)]
pub struct NewReader<'a> {
    pub reader_id: &'a str,
    pub name: &'a str,
    pub lat: f64,
    pub lon: f64,
    pub format: &'a str,
    pub key_version: u32,
    /// The cameras nearest it (may be none).
    pub cameras: Vec<Camera>,
}

/// A new random reader secret of `version` (see `greenplate_proto::seal`): v2 is
/// `gp2_` + 64 hex digits, v1 48 hex digits.
fn new_reader_secret(version: u32) -> String {
    if version == 2 {
        let mut raw = [0u8; 32];
        rand::rng().fill_bytes(&mut raw);
        format!(
            "{}{}",
            greenplate_proto::seal::SECRET_V2_PREFIX,
            hex::encode(raw)
        )
    } else {
        let mut raw = [0u8; 24];
        rand::rng().fill_bytes(&mut raw);
        hex::encode(raw)
    }
}

/// Maps a unique violation to ALREADY_EXISTS with a description of what was taken.
pub fn already_exists(e: sqlx::Error, what: impl FnOnce() -> String) -> RegistryError {
    if is_unique_violation(&e) {
        RegistryError::AlreadyExists(what())
    } else {
        RegistryError::Db(e)
    }
}
