//! The owner's actions on a registered bike: transfer, PIN, tag replacement,
//! deregistration, arming. Each is one audited transaction; the hot index follows.

use super::*;

impl Registry {
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

type Tx = crate::db::WriteTx;

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
