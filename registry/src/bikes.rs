//! Bikes and their owners: registration (free, idempotent), lookups, transfers, tag
//! replacement, deregistration, arming. Each change is one transaction with its audit
//! record; the hot index follows after the commit.

use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use crate::auth::Caller;
use crate::db::now_ms;
use crate::error::RegistryError;
use crate::hot_index::TagState;
use crate::pin;
use crate::store::{Registry, already_exists, audit};
use crate::validate::{self, TagId};

/// A bike to register, as a kiosk typed it (validated by [`Registry::register_bike`]).
#[derive(Debug, Clone, Default)]
pub struct NewBike {
    pub tag_id: String,
    pub plate: String,
    pub owner: NewOwner,
    pub make: String,
    pub model: String,
    pub color: String,
    pub frame_number: String,
    /// Idempotency key chosen by the kiosk; empty for none.
    pub request_id: String,
    /// The owner's PIN; required at a kiosk, absent in bulk imports.
    pub pin: Option<String>,
}

/// An owner as typed at a kiosk.
#[derive(Debug, Clone, Default)]
pub struct NewOwner {
    pub name: String,
    pub id_number: String,
    pub phone: String,
}

/// A validated bike, ready to store.
#[derive(Debug, Clone)]
pub(crate) struct ValidBike {
    pub tag: TagId,
    pub plate: String,
    pub owner: ValidOwner,
    pub make: String,
    pub model: String,
    pub color: String,
    pub frame_number: String,
    pub request_id: Option<String>,
}

#[derive(Debug, Clone)]
pub(crate) struct ValidOwner {
    pub name: String,
    pub id_number: String,
    pub phone: String,
}

impl NewOwner {
    pub(crate) fn validate(&self, prefix: Prefix) -> Result<ValidOwner, RegistryError> {
        Ok(ValidOwner {
            name: validate::text(prefix.name, &self.name, 100)?,
            id_number: validate::resident_id(prefix.id_number, &self.id_number)?,
            phone: validate::phone(prefix.phone, &self.phone)?,
        })
    }
}

/// Field names for owner errors (`owner.*` at registration, `new_owner.*` at transfer).
#[derive(Clone, Copy)]
pub(crate) struct Prefix {
    name: &'static str,
    id_number: &'static str,
    phone: &'static str,
}

pub(crate) const OWNER: Prefix = Prefix {
    name: "owner.name",
    id_number: "owner.id_number",
    phone: "owner.phone",
};
const NEW_OWNER: Prefix = Prefix {
    name: "new_owner.name",
    id_number: "new_owner.id_number",
    phone: "new_owner.phone",
};

impl NewBike {
    /// Checks every field; the first bad one is named in the error.
    pub(crate) fn validate(&self) -> Result<ValidBike, RegistryError> {
        let request_id = match self.request_id.trim() {
            "" => None,
            r if r.len() > 100 => {
                return Err(RegistryError::invalid("request_id", "is too long"));
            }
            r => Some(r.to_owned()),
        };
        Ok(ValidBike {
            tag: TagId::parse_field("tag_id", &self.tag_id)?,
            plate: validate::plate("plate", &self.plate)?,
            owner: self.owner.validate(OWNER)?,
            make: validate::text("bike.make", &self.make, 100)?,
            model: validate::text("bike.model", &self.model, 100)?,
            color: validate::text("bike.color", &self.color, 50)?,
            frame_number: validate::frame_number("bike.frame_number", &self.frame_number)?,
            request_id,
        })
    }
}

/// How to find a bike.
#[derive(Debug, Clone)]
pub enum BikeKey {
    /// A registered bike's plate.
    Plate(String),
    /// Any tag the bike ever had (a revoked tag still names its bike).
    Tag(String),
}

/// A bike with its owner's personal data masked.
#[derive(Debug, Clone, PartialEq)]
pub struct BikeRecord {
    pub bike_id: i64,
    /// The current tag; empty once deregistered.
    pub tag_id: String,
    pub plate: String,
    pub owner_name: String,
    pub owner_id_number_masked: String,
    pub owner_phone_masked: String,
    pub make: String,
    pub model: String,
    pub color: String,
    pub frame_number: String,
    pub stolen: bool,
    pub armed: bool,
    pub registered: bool,
    pub registered_at_ms: i64,
}

/// Result of [`Registry::register_bike`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Registered {
    pub bike_id: i64,
    /// False when the request id had already registered this bike (a retry).
    pub created: bool,
}

const BIKE_COLUMNS: &str = "b.bike_id, b.tag_id, b.plate, b.make, b.model, b.color, \
     b.frame_number, b.armed, b.state, b.registered_at_ms, \
     o.name, o.id_number_sealed, o.phone_sealed, \
     (SELECT COUNT(*) FROM theft_reports t \
       WHERE t.bike_id = b.bike_id AND t.recovered_at_ms IS NULL) AS open_thefts";

impl Registry {
    /// Registers a bike, free of charge. A retry with the same request id returns the bike
    /// the first call registered.
    pub async fn register_bike(
        &self,
        caller: &Caller,
        new: NewBike,
    ) -> Result<Registered, RegistryError> {
        let bike = new.validate()?;
        let pin_hash = match &new.pin {
            Some(p) => {
                pin::validate("pin", p)?;
                Some(pin::hash(p).await?)
            }
            None => None,
        };
        let mut tx = self.db.begin_write().await?;
        let out = self
            .insert_bike(&mut tx, caller, &bike, pin_hash.as_deref())
            .await?;
        if out.created {
            crate::changes::announce(&mut tx, &crate::changes::Change::Tag(bike.tag)).await?;
        }
        tx.commit().await?;
        if out.created {
            self.index.set(bike.tag, TagState::new(out.bike_id));
        }
        Ok(out)
    }

    /// Inserts one validated bike inside the caller's transaction.
    pub(crate) async fn insert_bike(
        &self,
        tx: &mut AnyConnection,
        caller: &Caller,
        bike: &ValidBike,
        pin_hash: Option<&str>,
    ) -> Result<Registered, RegistryError> {
        let tag_text = bike.tag.to_string();
        // One round trip for the three things that can already be taken.
        let taken = sqlx::query(
            "SELECT (SELECT bike_id FROM bikes WHERE request_id = $1) AS by_request, \
                    (SELECT state FROM tags WHERE tag_id = $2) AS tag_state, \
                    (SELECT bike_id FROM bikes WHERE plate = $3 AND state = 'registered') AS by_plate",
        )
        .bind(bike.request_id.as_deref())
        .bind(&tag_text)
        .bind(&bike.plate)
        .fetch_one(&mut *tx)
        .await?;
        if let (Some(rid), Some(done)) = (
            &bike.request_id,
            taken.try_get::<Option<i64>, _>("by_request")?,
        ) {
            let row = sqlx::query("SELECT tag_id, plate FROM bikes WHERE bike_id = $1")
                .bind(done)
                .fetch_one(&mut *tx)
                .await?;
            let same = row.try_get::<Option<String>, _>("tag_id")?.as_deref()
                == Some(tag_text.as_str())
                && row.try_get::<String, _>("plate")? == bike.plate;
            if !same {
                return Err(RegistryError::AlreadyExists(format!(
                    "request_id {rid} (used for a different bike)"
                )));
            }
            return Ok(Registered {
                bike_id: done,
                created: false,
            });
        }
        if let Some(state) = taken.try_get::<Option<String>, _>("tag_state")? {
            return Err(RegistryError::AlreadyExists(if state == "revoked" {
                format!("tag {tag_text} (revoked; a revoked tag is never bound again)")
            } else {
                format!("tag {tag_text}")
            }));
        }
        if taken.try_get::<Option<i64>, _>("by_plate")?.is_some() {
            return Err(RegistryError::AlreadyExists(format!(
                "plate {}",
                bike.plate
            )));
        }
        let now = now_ms();
        let owner_id = self.find_or_create_owner(tx, &bike.owner, now).await?;
        let bike_id: i64 = sqlx::query(
            "INSERT INTO bikes (tag_id, plate, owner_id, make, model, color, frame_number, \
                                pin_hash, request_id, registered_by, registered_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING bike_id",
        )
        .bind(&tag_text)
        .bind(&bike.plate)
        .bind(owner_id)
        .bind(&bike.make)
        .bind(&bike.model)
        .bind(&bike.color)
        .bind(&bike.frame_number)
        .bind(pin_hash)
        .bind(bike.request_id.as_deref())
        .bind(caller.audit_name())
        .bind(now)
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| already_exists(e, || format!("tag {tag_text} or plate {}", bike.plate)))?
        .try_get("bike_id")?;
        sqlx::query(
            "INSERT INTO tags (tag_id, bike_id, state, bound_at_ms) VALUES ($1, $2, 'active', $3)",
        )
        .bind(&tag_text)
        .bind(bike_id)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(|e| already_exists(e, || format!("tag {tag_text}")))?;
        audit(
            tx,
            caller,
            "register_bike",
            &format!("bike {bike_id} plate {} tag {tag_text}", bike.plate),
        )
        .await?;
        Ok(Registered {
            bike_id,
            created: true,
        })
    }

    async fn find_or_create_owner(
        &self,
        tx: &mut AnyConnection,
        owner: &ValidOwner,
        now: i64,
    ) -> Result<i64, RegistryError> {
        let id_hash = self.secrets.keyed_hash(owner.id_number.as_bytes());
        // Another registration may be creating the same owner right now: the database
        // decides (ON CONFLICT), and RETURNING gives the id of whichever row won. The
        // existing owner's details are kept.
        Ok(sqlx::query(
            "INSERT INTO owners (name, id_number_hash, id_number_sealed, phone_sealed, created_at_ms) \
             VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (id_number_hash) DO UPDATE SET id_number_hash = excluded.id_number_hash \
             RETURNING owner_id",
        )
        .bind(&owner.name)
        .bind(&id_hash)
        .bind(self.secrets.seal(owner.id_number.as_bytes()))
        .bind(self.secrets.seal(owner.phone.as_bytes()))
        .bind(now)
        .fetch_one(&mut *tx)
        .await?
        .try_get("owner_id")?)
    }

    /// Finds a bike; the owner's personal data comes back masked.
    pub async fn get_bike(&self, key: &BikeKey) -> Result<BikeRecord, RegistryError> {
        let row = match key {
            BikeKey::Plate(p) => {
                let plate = validate::plate("plate", p)?;
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT {BIKE_COLUMNS} FROM bikes b JOIN owners o ON o.owner_id = b.owner_id \
                     WHERE b.plate = $1 AND b.state = 'registered'"
                )))
                .bind(&plate)
                .fetch_optional(self.db.pool())
                .await?
                .ok_or_else(|| RegistryError::NotFound(format!("bike with plate {plate}")))?
            }
            BikeKey::Tag(t) => {
                let tag = TagId::parse_field("tag_id", t)?.to_string();
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT {BIKE_COLUMNS} FROM tags g JOIN bikes b ON b.bike_id = g.bike_id \
                     JOIN owners o ON o.owner_id = b.owner_id WHERE g.tag_id = $1"
                )))
                .bind(&tag)
                .fetch_optional(self.db.pool())
                .await?
                .ok_or_else(|| RegistryError::NotFound(format!("bike with tag {tag}")))?
            }
        };
        self.bike_record(&row)
    }

    /// Every registered bike of the owner with this resident ID number.
    pub async fn list_owner_bikes(
        &self,
        id_number: &str,
    ) -> Result<Vec<BikeRecord>, RegistryError> {
        let id = validate::resident_id("id_number", id_number)?;
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {BIKE_COLUMNS} FROM bikes b JOIN owners o ON o.owner_id = b.owner_id \
             WHERE o.id_number_hash = $1 AND b.state = 'registered' ORDER BY b.bike_id"
        )))
        .bind(self.secrets.keyed_hash(id.as_bytes()))
        .fetch_all(self.db.pool())
        .await?;
        rows.iter().map(|r| self.bike_record(r)).collect()
    }

    fn bike_record(&self, row: &AnyRow) -> Result<BikeRecord, RegistryError> {
        let id_number = self
            .secrets
            .open_string(&row.try_get::<Vec<u8>, _>("id_number_sealed")?)?;
        let phone = self
            .secrets
            .open_string(&row.try_get::<Vec<u8>, _>("phone_sealed")?)?;
        Ok(BikeRecord {
            bike_id: row.try_get("bike_id")?,
            tag_id: row
                .try_get::<Option<String>, _>("tag_id")?
                .unwrap_or_default(),
            plate: row.try_get("plate")?,
            owner_name: row.try_get("name")?,
            owner_id_number_masked: validate::mask_resident_id(&id_number),
            owner_phone_masked: validate::mask_phone(&phone),
            make: row.try_get("make")?,
            model: row.try_get("model")?,
            color: row.try_get("color")?,
            frame_number: row.try_get("frame_number")?,
            stolen: row.try_get::<i64, _>("open_thefts")? > 0,
            armed: row.try_get::<i64, _>("armed")? != 0,
            registered: row.try_get::<String, _>("state")? == "registered",
            registered_at_ms: row.try_get("registered_at_ms")?,
        })
    }

    /// Gives a registered bike to a new owner. The current owner's PIN authorises it; the
    /// new owner chooses a new PIN; the bike is disarmed.
    pub async fn transfer_ownership(
        &self,
        caller: &Caller,
        plate: &str,
        new_owner: &NewOwner,
        current_pin: &str,
        new_pin: &str,
    ) -> Result<(), RegistryError> {
        let plate = validate::plate("plate", plate)?;
        let owner = new_owner.validate(NEW_OWNER)?;
        pin::validate("new_pin", new_pin)?;
        let new_hash = pin::hash(new_pin).await?;
        let mut tx = self.db.begin_write().await?;
        let bike = registered_bike(&mut tx, &plate).await?;
        let mut tx = self.check_pin(tx, caller, &bike, current_pin).await?;
        let owner_id = self.find_or_create_owner(&mut tx, &owner, now_ms()).await?;
        sqlx::query(
            "UPDATE bikes SET owner_id = $1, pin_hash = $2, armed = 0, pin_failures = 0 \
             WHERE bike_id = $3",
        )
        .bind(owner_id)
        .bind(&new_hash)
        .bind(bike.bike_id)
        .execute(&mut *tx)
        .await?;
        self.finish_change(
            tx,
            caller,
            "transfer_ownership",
            &format!("bike {} plate {plate} to owner {owner_id}", bike.bike_id),
            bike.tag,
            |s| s.with_armed(false),
        )
        .await
    }

    /// Sets the PIN of a bike that has none yet (bulk-imported bikes), after the kiosk has
    /// checked the owner's ID card: the ID number must be the registered owner's.
    pub async fn set_pin(
        &self,
        caller: &Caller,
        plate: &str,
        owner_id_number: &str,
        new_pin: &str,
    ) -> Result<(), RegistryError> {
        let plate = validate::plate("plate", plate)?;
        let id = validate::resident_id("owner_id_number", owner_id_number)?;
        pin::validate("new_pin", new_pin)?;
        let new_hash = pin::hash(new_pin).await?;
        let mut tx = self.db.begin_write().await?;
        let bike = registered_bike(&mut tx, &plate).await?;
        if bike.pin_hash.is_some() {
            return Err(RegistryError::FailedPrecondition(format!(
                "bike {plate} already has a PIN; transfer ownership to change it"
            )));
        }
        let owner_hash: Vec<u8> = sqlx::query(
            "SELECT o.id_number_hash FROM owners o JOIN bikes b ON b.owner_id = o.owner_id \
             WHERE b.bike_id = $1",
        )
        .bind(bike.bike_id)
        .fetch_one(&mut *tx)
        .await?
        .try_get("id_number_hash")?;
        if owner_hash != self.secrets.keyed_hash(id.as_bytes()) {
            return Err(RegistryError::PermissionDenied(
                "owner_id_number is not the registered owner's".into(),
            ));
        }
        sqlx::query("UPDATE bikes SET pin_hash = $1, pin_failures = 0 WHERE bike_id = $2")
            .bind(&new_hash)
            .bind(bike.bike_id)
            .execute(&mut *tx)
            .await?;
        let subject = format!("bike {}", bike.bike_id);
        self.finish_change(tx, caller, "set_pin", &subject, None, |s| s)
            .await
    }

    /// Binds a new tag to a bike; the old tag is revoked for ever.
    pub async fn replace_tag(
        &self,
        caller: &Caller,
        plate: &str,
        new_tag: &str,
    ) -> Result<(), RegistryError> {
        let plate = validate::plate("plate", plate)?;
        let new_tag = TagId::parse_field("new_tag_id", new_tag)?;
        let new_text = new_tag.to_string();
        let now = now_ms();
        let mut tx = self.db.begin_write().await?;
        let bike = registered_bike(&mut tx, &plate).await?;
        let used = sqlx::query("SELECT state FROM tags WHERE tag_id = $1")
            .bind(&new_text)
            .fetch_optional(&mut *tx)
            .await?;
        if used.is_some() {
            return Err(RegistryError::AlreadyExists(format!(
                "tag {new_text} (a tag is bound to one bike, ever)"
            )));
        }
        if let Some(old) = bike.tag {
            revoke_tag(&mut tx, old, "replaced", now).await?;
        }
        sqlx::query(
            "INSERT INTO tags (tag_id, bike_id, state, bound_at_ms) VALUES ($1, $2, 'active', $3)",
        )
        .bind(&new_text)
        .bind(bike.bike_id)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(|e| already_exists(e, || format!("tag {new_text}")))?;
        sqlx::query("UPDATE bikes SET tag_id = $1 WHERE bike_id = $2")
            .bind(&new_text)
            .bind(bike.bike_id)
            .execute(&mut *tx)
            .await?;
        let old_text = bike.tag.map(|t| t.to_string()).unwrap_or_default();
        audit(
            &mut tx,
            caller,
            "replace_tag",
            &format!("bike {} tag {old_text} -> {new_text}", bike.bike_id),
        )
        .await?;
        crate::changes::announce(&mut tx, &crate::changes::Change::Tag(new_tag)).await?;
        tx.commit().await?;
        let carried = match bike.tag {
            Some(old) => {
                let before = self
                    .index
                    .lookup(old)
                    .unwrap_or(TagState::new(bike.bike_id));
                self.index.update(old, |s| s.with_revoked(true));
                before.with_revoked(false)
            }
            None => TagState::new(bike.bike_id),
        };
        self.index.set(new_tag, carried);
        Ok(())
    }

    /// Removes a bike from the registry: its tag is revoked, its plate freed.
    pub async fn deregister_bike(
        &self,
        caller: &Caller,
        plate: &str,
        reason: &str,
    ) -> Result<(), RegistryError> {
        let plate = validate::plate("plate", plate)?;
        let reason = validate::text("reason", reason, 200)?;
        let now = now_ms();
        let mut tx = self.db.begin_write().await?;
        let bike = registered_bike(&mut tx, &plate).await?;
        let open = sqlx::query(
            "SELECT report_id FROM theft_reports WHERE bike_id = $1 AND recovered_at_ms IS NULL",
        )
        .bind(bike.bike_id)
        .fetch_optional(&mut *tx)
        .await?;
        if open.is_some() {
            return Err(RegistryError::FailedPrecondition(format!(
                "bike {plate} is reported stolen; report it recovered first"
            )));
        }
        if let Some(tag) = bike.tag {
            revoke_tag(&mut tx, tag, "deregistered", now).await?;
        }
        sqlx::query(
            "UPDATE bikes SET state = 'deregistered', tag_id = NULL, armed = 0, \
             deregistered_at_ms = $1 WHERE bike_id = $2",
        )
        .bind(now)
        .bind(bike.bike_id)
        .execute(&mut *tx)
        .await?;
        self.finish_change(
            tx,
            caller,
            "deregister_bike",
            &format!("bike {} plate {plate}: {reason}", bike.bike_id),
            bike.tag,
            |s| s.with_revoked(true).with_armed(false),
        )
        .await
    }

    /// Arms or disarms a bike with the owner's PIN. Returns the new state.
    pub async fn set_armed(
        &self,
        caller: &Caller,
        plate: &str,
        pin_given: &str,
        armed: bool,
    ) -> Result<bool, RegistryError> {
        let plate = validate::plate("plate", plate)?;
        let mut tx = self.db.begin_write().await?;
        let bike = registered_bike(&mut tx, &plate).await?;
        let mut tx = self.check_pin(tx, caller, &bike, pin_given).await?;
        sqlx::query("UPDATE bikes SET armed = $1 WHERE bike_id = $2")
            .bind(i64::from(armed))
            .bind(bike.bike_id)
            .execute(&mut *tx)
            .await?;
        let action = if armed { "arm" } else { "disarm" };
        let subject = format!("bike {}", bike.bike_id);
        self.finish_change(tx, caller, action, &subject, bike.tag, |s| {
            s.with_armed(armed)
        })
        .await?;
        Ok(armed)
    }

    /// The common end of a change to a registered bike: audit it, commit, then apply
    /// `change` to the bike's tag in the hot index (only once the change is durable; pass
    /// no tag when the index is not concerned).
    pub(crate) async fn finish_change(
        &self,
        mut tx: Tx,
        caller: &Caller,
        action: &str,
        subject: &str,
        tag: Option<TagId>,
        change: impl Fn(TagState) -> TagState,
    ) -> Result<(), RegistryError> {
        audit(&mut tx, caller, action, subject).await?;
        if let Some(tag) = tag {
            crate::changes::announce(&mut tx, &crate::changes::Change::Tag(tag)).await?;
        }
        tx.commit().await?;
        if let Some(tag) = tag {
            self.index.update(tag, change);
        }
        Ok(())
    }

    /// Checks a PIN inside a write transaction and gives the transaction back to continue
    /// with. A wrong PIN is counted (locking the PIN after [`pin::MAX_FAILURES`]) and that
    /// count is committed, so it survives the refusal.
    async fn check_pin(
        &self,
        mut tx: Tx,
        caller: &Caller,
        bike: &BikeRow,
        given: &str,
    ) -> Result<Tx, RegistryError> {
        let Some(phc) = &bike.pin_hash else {
            return Err(RegistryError::FailedPrecondition(format!(
                "bike {} has no PIN yet; the owner sets one at a kiosk (SetPin)",
                bike.plate
            )));
        };
        let now = now_ms();
        if bike.pin_locked_until_ms > now {
            return Err(RegistryError::PermissionDenied(format!(
                "PIN locked after {} wrong attempts; try again in {} minutes",
                pin::MAX_FAILURES,
                (bike.pin_locked_until_ms - now + 59_999) / 60_000
            )));
        }
        if pin::verify(given, phc).await? {
            if bike.pin_failures > 0 {
                sqlx::query("UPDATE bikes SET pin_failures = 0 WHERE bike_id = $1")
                    .bind(bike.bike_id)
                    .execute(&mut *tx)
                    .await?;
            }
            return Ok(tx);
        }
        let failures = bike.pin_failures + 1;
        let (failures, locked_until) = if failures >= pin::MAX_FAILURES {
            (0, now + pin::LOCKOUT_MS)
        } else {
            (failures, 0)
        };
        sqlx::query(
            "UPDATE bikes SET pin_failures = $1, pin_locked_until_ms = $2 WHERE bike_id = $3",
        )
        .bind(failures)
        .bind(locked_until)
        .bind(bike.bike_id)
        .execute(&mut *tx)
        .await?;
        let subject = format!("bike {}", bike.bike_id);
        self.finish_change(tx, caller, "pin_failed", &subject, None, |s| s)
            .await?;
        Err(RegistryError::PermissionDenied("PIN does not match".into()))
    }
}

type Tx = sqlx::Transaction<'static, sqlx::Any>;

/// The columns of a registered bike that changes need.
#[derive(Debug)]
pub(crate) struct BikeRow {
    pub bike_id: i64,
    pub plate: String,
    pub tag: Option<TagId>,
    pub pin_hash: Option<String>,
    pub pin_failures: i64,
    pub pin_locked_until_ms: i64,
}

/// The registered bike with this (normalised) plate.
pub(crate) async fn registered_bike(
    conn: &mut AnyConnection,
    plate: &str,
) -> Result<BikeRow, RegistryError> {
    let row = sqlx::query(
        "SELECT bike_id, tag_id, pin_hash, pin_failures, pin_locked_until_ms FROM bikes \
         WHERE plate = $1 AND state = 'registered'",
    )
    .bind(plate)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| RegistryError::NotFound(format!("bike with plate {plate}")))?;
    let tag = match row.try_get::<Option<String>, _>("tag_id")? {
        Some(t) => {
            Some(TagId::parse(&t).ok_or_else(|| RegistryError::Corrupt(format!("tag id {t}")))?)
        }
        None => None,
    };
    Ok(BikeRow {
        bike_id: row.try_get("bike_id")?,
        plate: plate.to_owned(),
        tag,
        pin_hash: row.try_get("pin_hash")?,
        pin_failures: row.try_get("pin_failures")?,
        pin_locked_until_ms: row.try_get("pin_locked_until_ms")?,
    })
}

async fn revoke_tag(
    conn: &mut AnyConnection,
    tag: TagId,
    why: &str,
    now: i64,
) -> Result<(), RegistryError> {
    sqlx::query(
        "UPDATE tags SET state = 'revoked', revoked_at_ms = $1, revoked_why = $2 WHERE tag_id = $3",
    )
    .bind(now)
    .bind(why)
    .bind(tag.to_string())
    .execute(conn)
    .await?;
    Ok(())
}
