//! [`Registry`]: the registry's operations over the database, each one transaction with its
//! audit record, followed by the in-memory updates (hot index, reader directory, tokens)
//! once it has committed.

use std::sync::Arc;

use rand::RngCore;
use sqlx::{AnyConnection, Row};

use crate::auth::{Authenticator, Caller, Role};
use crate::db::{Db, Migrations, now_ms};
use crate::error::{RegistryError, is_unique_violation};
use crate::hot_index::{HotIndex, TagState};
use crate::readers::{Reader, Readers};
use crate::secrets::SecretBox;
use crate::validate::{self, TagId};

/// The registry's schema, for [`Db::migrate`].
pub fn migrations() -> Migrations {
    Migrations {
        owner: "registry",
        sqlite: sqlx::migrate!("./migrations/sqlite"),
        postgres: sqlx::migrate!("./migrations/postgres"),
    }
}

/// A bike to register, as a kiosk typed it (validated by [`Registry::register_bike`]).
#[derive(Debug, Clone, Default)]
pub struct NewBike {
    pub tag_id: String,
    pub plate: String,
    pub owner_name: String,
    pub owner_id_number: String,
    pub owner_phone: String,
    pub make: String,
    pub model: String,
    pub color: String,
}

/// How to find a bike.
#[derive(Debug, Clone)]
pub enum BikeKey {
    Plate(String),
    Tag(String),
}

/// A registered bike with its owner's personal data masked.
#[derive(Debug, Clone, PartialEq)]
pub struct BikeRecord {
    pub bike_id: i64,
    pub tag_id: String,
    pub plate: String,
    pub owner_name: String,
    pub owner_id_number_masked: String,
    pub owner_phone_masked: String,
    pub make: String,
    pub model: String,
    pub color: String,
    pub stolen: bool,
    pub registered_at_ms: i64,
}

/// The registry: database, at-rest key, and the in-memory state ingest reads.
#[derive(Debug)]
pub struct Registry {
    db: Db,
    secrets: SecretBox,
    index: Arc<HotIndex>,
    readers: Arc<Readers>,
    auth: Arc<Authenticator>,
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

    pub fn auth(&self) -> &Arc<Authenticator> {
        &self.auth
    }

    /// Adds a reader and returns its new MQTT secret.
    pub async fn add_reader(
        &self,
        caller: &Caller,
        reader_id: &str,
        name: &str,
        lat: f64,
        lon: f64,
    ) -> Result<String, RegistryError> {
        let reader_id = validate::ident("reader_id", reader_id)?;
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
        let mut raw = [0u8; 24];
        rand::rng().fill_bytes(&mut raw);
        let secret = hex::encode(raw);
        let mut tx = self.db.pool().begin().await?;
        sqlx::query(
            "INSERT INTO readers (reader_id, name, lat, lon, secret_sealed, enabled, created_at_ms) \
             VALUES ($1, $2, $3, $4, $5, 1, $6)",
        )
        .bind(&reader_id)
        .bind(&name)
        .bind(lat)
        .bind(lon)
        .bind(self.secrets.seal(secret.as_bytes()))
        .bind(now_ms())
        .execute(&mut *tx)
        .await
        .map_err(|e| already_exists(e, || format!("reader {reader_id}")))?;
        audit(&mut tx, caller, "add_reader", &reader_id).await?;
        tx.commit().await?;
        self.readers
            .insert(Reader::new(reader_id, name, lat, lon, &secret));
        Ok(secret)
    }

    /// Adds a kiosk and returns its token.
    pub async fn add_kiosk(
        &self,
        caller: &Caller,
        kiosk_id: &str,
        name: &str,
    ) -> Result<String, RegistryError> {
        let kiosk_id = validate::ident("kiosk_id", kiosk_id)?;
        let name = validate::text("name", name, 200)?;
        let mut tx = self.db.pool().begin().await?;
        sqlx::query("INSERT INTO kiosks (kiosk_id, name, created_at_ms) VALUES ($1, $2, $3)")
            .bind(&kiosk_id)
            .bind(&name)
            .bind(now_ms())
            .execute(&mut *tx)
            .await
            .map_err(|e| already_exists(e, || format!("kiosk {kiosk_id}")))?;
        let issued = Authenticator::issue(&mut tx, Role::Kiosk, &kiosk_id).await?;
        audit(&mut tx, caller, "add_kiosk", &kiosk_id).await?;
        tx.commit().await?;
        self.auth.activate(&issued);
        Ok(issued.token)
    }

    /// Registers a bike, free of charge, and returns its id.
    pub async fn register_bike(&self, caller: &Caller, new: NewBike) -> Result<i64, RegistryError> {
        let tag = TagId::parse_field("tag_id", &new.tag_id)?;
        let plate = validate::plate("plate", &new.plate)?;
        let owner_name = validate::text("owner.name", &new.owner_name, 100)?;
        let id_number = validate::resident_id("owner.id_number", &new.owner_id_number)?;
        let phone = validate::phone("owner.phone", &new.owner_phone)?;
        let make = validate::text("bike.make", &new.make, 100)?;
        let model = validate::text("bike.model", &new.model, 100)?;
        let color = validate::text("bike.color", &new.color, 50)?;
        let tag_text = tag.to_string();
        let now = now_ms();

        let mut tx = self.db.pool().begin().await?;
        let taken = sqlx::query("SELECT tag_id, plate FROM bikes WHERE tag_id = $1 OR plate = $2")
            .bind(&tag_text)
            .bind(&plate)
            .fetch_optional(&mut *tx)
            .await?;
        if let Some(row) = taken {
            let t: String = row.try_get("tag_id")?;
            return Err(RegistryError::AlreadyExists(if t == tag_text {
                format!("tag {tag_text}")
            } else {
                format!("plate {plate}")
            }));
        }
        let id_hash = self.secrets.keyed_hash(id_number.as_bytes());
        let owner = sqlx::query("SELECT owner_id FROM owners WHERE id_number_hash = $1")
            .bind(&id_hash)
            .fetch_optional(&mut *tx)
            .await?;
        let owner_id: i64 = match owner {
            Some(row) => row.try_get("owner_id")?,
            None => sqlx::query(
                "INSERT INTO owners (name, id_number_hash, id_number_sealed, phone_sealed, created_at_ms) \
                 VALUES ($1, $2, $3, $4, $5) RETURNING owner_id",
            )
            .bind(&owner_name)
            .bind(&id_hash)
            .bind(self.secrets.seal(id_number.as_bytes()))
            .bind(self.secrets.seal(phone.as_bytes()))
            .bind(now)
            .fetch_one(&mut *tx)
            .await?
            .try_get("owner_id")?,
        };
        let bike_id: i64 = sqlx::query(
            "INSERT INTO bikes (tag_id, plate, owner_id, make, model, color, registered_by, registered_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING bike_id",
        )
        .bind(&tag_text)
        .bind(&plate)
        .bind(owner_id)
        .bind(&make)
        .bind(&model)
        .bind(&color)
        .bind(caller.audit_name())
        .bind(now)
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| already_exists(e, || format!("tag {tag_text} or plate {plate}")))?
        .try_get("bike_id")?;
        audit(
            &mut tx,
            caller,
            "register_bike",
            &format!("bike {bike_id} plate {plate}"),
        )
        .await?;
        tx.commit().await?;
        self.index.set(tag, TagState::new(bike_id));
        Ok(bike_id)
    }

    /// Finds a bike; the owner's personal data comes back masked.
    pub async fn get_bike(&self, key: &BikeKey) -> Result<BikeRecord, RegistryError> {
        let (column, value) = match key {
            BikeKey::Plate(p) => ("plate", validate::plate("plate", p)?),
            BikeKey::Tag(t) => ("tag_id", TagId::parse_field("tag_id", t)?.to_string()),
        };
        // Plates start with district characters and tag ids are hex, so one value never
        // matches both columns.
        let row = sqlx::query(
            "SELECT b.bike_id, b.tag_id, b.plate, b.make, b.model, b.color, b.registered_at_ms, \
                    o.name, o.id_number_sealed, o.phone_sealed, \
                    (SELECT COUNT(*) FROM theft_reports t \
                      WHERE t.bike_id = b.bike_id AND t.recovered_at_ms IS NULL) AS open_thefts \
             FROM bikes b JOIN owners o ON o.owner_id = b.owner_id \
             WHERE b.plate = $1 OR b.tag_id = $1",
        )
        .bind(&value)
        .fetch_optional(self.db.pool())
        .await?
        .ok_or_else(|| RegistryError::NotFound(format!("bike with {column} {value}")))?;
        let id_number = self
            .secrets
            .open_string(&row.try_get::<Vec<u8>, _>("id_number_sealed")?)?;
        let phone = self
            .secrets
            .open_string(&row.try_get::<Vec<u8>, _>("phone_sealed")?)?;
        Ok(BikeRecord {
            bike_id: row.try_get("bike_id")?,
            tag_id: row.try_get("tag_id")?,
            plate: row.try_get("plate")?,
            owner_name: row.try_get("name")?,
            owner_id_number_masked: validate::mask_resident_id(&id_number),
            owner_phone_masked: validate::mask_phone(&phone),
            make: row.try_get("make")?,
            model: row.try_get("model")?,
            color: row.try_get("color")?,
            stolen: row.try_get::<i64, _>("open_thefts")? > 0,
            registered_at_ms: row.try_get("registered_at_ms")?,
        })
    }

    /// Puts a bike on the hotlist; a second report of an open theft returns the open one.
    pub async fn report_stolen(&self, caller: &Caller, plate: &str) -> Result<i64, RegistryError> {
        let plate = validate::plate("plate", plate)?;
        let mut tx = self.db.pool().begin().await?;
        let (bike_id, tag) = bike_by_plate(&mut tx, &plate).await?;
        let open = sqlx::query(
            "SELECT report_id FROM theft_reports WHERE bike_id = $1 AND recovered_at_ms IS NULL",
        )
        .bind(bike_id)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(row) = open {
            return Ok(row.try_get("report_id")?);
        }
        let report_id: i64 = sqlx::query(
            "INSERT INTO theft_reports (bike_id, reported_by, reported_at_ms) \
             VALUES ($1, $2, $3) RETURNING report_id",
        )
        .bind(bike_id)
        .bind(caller.audit_name())
        .bind(now_ms())
        .fetch_one(&mut *tx)
        .await?
        .try_get("report_id")?;
        audit(
            &mut tx,
            caller,
            "report_stolen",
            &format!("bike {bike_id} report {report_id}"),
        )
        .await?;
        tx.commit().await?;
        self.index.update(tag, |s| s.with_stolen(true));
        Ok(report_id)
    }

    /// Takes a bike off the hotlist.
    pub async fn report_recovered(
        &self,
        caller: &Caller,
        plate: &str,
    ) -> Result<(), RegistryError> {
        let plate = validate::plate("plate", plate)?;
        let mut tx = self.db.pool().begin().await?;
        let (bike_id, tag) = bike_by_plate(&mut tx, &plate).await?;
        let done = sqlx::query(
            "UPDATE theft_reports SET recovered_by = $1, recovered_at_ms = $2 \
             WHERE bike_id = $3 AND recovered_at_ms IS NULL",
        )
        .bind(caller.audit_name())
        .bind(now_ms())
        .bind(bike_id)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Err(RegistryError::FailedPrecondition(format!(
                "bike {plate} is not reported stolen"
            )));
        }
        audit(
            &mut tx,
            caller,
            "report_recovered",
            &format!("bike {bike_id}"),
        )
        .await?;
        tx.commit().await?;
        self.index.update(tag, |s| s.with_stolen(false));
        Ok(())
    }

    /// Plate and tag of a bike, for alerts.
    pub async fn bike_plate_and_tag(
        &self,
        bike_id: i64,
    ) -> Result<(String, String), RegistryError> {
        let row = sqlx::query("SELECT plate, tag_id FROM bikes WHERE bike_id = $1")
            .bind(bike_id)
            .fetch_optional(self.db.pool())
            .await?
            .ok_or_else(|| RegistryError::NotFound(format!("bike {bike_id}")))?;
        Ok((row.try_get("plate")?, row.try_get("tag_id")?))
    }

    /// The open theft report of a bike, if any.
    pub async fn open_theft_report(&self, bike_id: i64) -> Result<Option<i64>, RegistryError> {
        let row = sqlx::query(
            "SELECT report_id FROM theft_reports WHERE bike_id = $1 AND recovered_at_ms IS NULL",
        )
        .bind(bike_id)
        .fetch_optional(self.db.pool())
        .await?;
        Ok(match row {
            Some(r) => Some(r.try_get("report_id")?),
            None => None,
        })
    }
}

async fn bike_by_plate(
    conn: &mut AnyConnection,
    plate: &str,
) -> Result<(i64, TagId), RegistryError> {
    let row = sqlx::query("SELECT bike_id, tag_id FROM bikes WHERE plate = $1")
        .bind(plate)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| RegistryError::NotFound(format!("bike with plate {plate}")))?;
    let tag: String = row.try_get("tag_id")?;
    let tag = TagId::parse(&tag).ok_or_else(|| RegistryError::Corrupt(format!("tag id {tag}")))?;
    Ok((row.try_get("bike_id")?, tag))
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

/// Maps a unique violation to ALREADY_EXISTS with a description of what was taken.
pub fn already_exists(e: sqlx::Error, what: impl FnOnce() -> String) -> RegistryError {
    if is_unique_violation(&e) {
        RegistryError::AlreadyExists(what())
    } else {
        RegistryError::Db(e)
    }
}
