//! Bikes and their owners: registration (free, idempotent), lookups, transfers, tag
//! replacement, deregistration, arming. Each change is one transaction with its audit
//! record; the hot index follows after the commit.
//!
//! Layout: this file (what a kiosk sends, validated; registration); [`lookup`] (a bike by
//! plate or tag, an owner's bikes, masked); [`actions`] (the owner's actions: transfer, PIN,
//! tag replacement, deregistration, arming; and the owner proof they need: PIN or ID number,
//! one lockout per bike).

mod actions;
mod lookup;

pub(crate) use actions::{owner_pin, registered_bike};

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
    /// Masked: the family name and a `*` for each other character.
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
            let watched = !self
                .watched_among(&[(bike.tag, bike.plate.clone())])
                .await?
                .is_empty();
            self.index
                .set(bike.tag, TagState::new(out.bike_id).with_watched(watched));
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
}
