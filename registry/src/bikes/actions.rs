//! The owner's actions on a registered bike: transfer, PIN, tag replacement,
//! deregistration, arming. Each is one audited transaction; the hot index follows.

use subtle::ConstantTimeEq;

use super::*;
use crate::auth::Role;
use crate::db::Backend;

impl Registry {
    /// Gives a registered bike to a new owner. The current owner's PIN authorises it at a
    /// kiosk (the admin acts without it, see [`owner_pin`]); the new owner chooses a new PIN;
    /// the bike is disarmed.
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
        let current_pin = owner_pin(caller, current_pin)?;
        pin::validate("new_pin", new_pin)?;
        let new_hash = pin::hash(new_pin).await?;
        let mut tx = self.db.begin_write().await?;
        let bike = self.lock_registered_bike(&mut tx, &plate).await?;
        let mut tx = self
            .prove_pin(tx, caller, &bike, pin::Action::Transfer, current_pin)
            .await?;
        let owner_id = self.find_or_create_owner(&mut tx, &owner, now_ms()).await?;
        sqlx::query(
            "UPDATE bikes SET owner_id = $1, pin_hash = $2, armed = 0, pin_failures = 0, \
             pin_locked_until_ms = 0 WHERE bike_id = $3",
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
    /// checked the owner's ID card: the ID number must be the registered owner's. A wrong ID
    /// number counts against the bike's PIN lockout like a wrong PIN (for every caller: the
    /// ID number is the only proof there is for a bike without a PIN).
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
        let bike = self.lock_registered_bike(&mut tx, &plate).await?;
        if bike.pin_hash.is_some() {
            return Err(RegistryError::FailedPrecondition(format!(
                "bike {plate} already has a PIN; transfer ownership to change it"
            )));
        }
        let mut tx = self
            .prove_owner(tx, caller, &bike, pin::Action::SetPin, Proof::IdNumber(&id))
            .await?;
        sqlx::query(
            "UPDATE bikes SET pin_hash = $1, pin_failures = 0, pin_locked_until_ms = 0 \
             WHERE bike_id = $2",
        )
        .bind(&new_hash)
        .bind(bike.bike_id)
        .execute(&mut *tx)
        .await?;
        let subject = format!("bike {}", bike.bike_id);
        self.finish_change(tx, caller, "set_pin", &subject, None, |s| s)
            .await
    }

    /// Binds a new tag to a bike; the old tag is revoked for ever. The owner's PIN
    /// authorises it at a kiosk (the admin acts without it, see [`owner_pin`]); the tag is
    /// checked first, so a tag already taken costs the owner no PIN attempt.
    pub async fn replace_tag(
        &self,
        caller: &Caller,
        plate: &str,
        new_tag: &str,
        pin_given: &str,
    ) -> Result<(), RegistryError> {
        let plate = validate::plate("plate", plate)?;
        let new_tag = TagId::parse_field("new_tag_id", new_tag)?;
        let pin_given = owner_pin(caller, pin_given)?;
        let new_text = new_tag.to_string();
        let mut tx = self.db.begin_write().await?;
        let bike = self.lock_registered_bike(&mut tx, &plate).await?;
        let used = sqlx::query("SELECT state FROM tags WHERE tag_id = $1")
            .bind(&new_text)
            .fetch_optional(&mut *tx)
            .await?;
        if used.is_some() {
            return Err(RegistryError::AlreadyExists(format!(
                "tag {new_text} (a tag is bound to one bike, ever)"
            )));
        }
        let mut tx = self
            .prove_pin(tx, caller, &bike, pin::Action::ReplaceTag, pin_given)
            .await?;
        let now = now_ms();
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

    /// Arms or disarms a bike with the owner's PIN (from every caller, the admin too:
    /// arming is the owner's own choice). Returns the new state.
    pub async fn set_armed(
        &self,
        caller: &Caller,
        plate: &str,
        pin_given: &str,
        armed: bool,
    ) -> Result<bool, RegistryError> {
        let plate = validate::plate("plate", plate)?;
        pin::validate_given("pin", pin_given)?;
        let mut tx = self.db.begin_write().await?;
        let bike = self.lock_registered_bike(&mut tx, &plate).await?;
        let mut tx = self
            .prove_owner(
                tx,
                caller,
                &bike,
                pin::Action::SetArmed,
                Proof::Pin(pin_given),
            )
            .await?;
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

    /// The registered bike with this plate, its row locked until `tx` ends, for an owner
    /// action: owner proofs of one bike then go one at a time, each seeing the failures
    /// committed before it, so sixteen concurrent wrong PINs cannot all read "0 failures"
    /// and all be checked. On PostgreSQL that is `SELECT .. FOR UPDATE`; a SQLite write
    /// transaction already holds the whole database ([`crate::db::Db::begin_write`]).
    pub(crate) async fn lock_registered_bike(
        &self,
        tx: &mut Tx,
        plate: &str,
    ) -> Result<BikeRow, RegistryError> {
        select_registered_bike(tx, plate, self.db.backend() == Backend::Postgres).await
    }

    /// [`Registry::prove_owner`] by the PIN that [`owner_pin`] asked of `caller`; with none
    /// (the admin, an officer), nothing is checked and the transaction goes on as it was.
    pub(crate) async fn prove_pin(
        &self,
        tx: Tx,
        caller: &Caller,
        bike: &BikeRow,
        action: pin::Action,
        pin_given: Option<&str>,
    ) -> Result<Tx, RegistryError> {
        match pin_given {
            Some(given) => {
                self.prove_owner(tx, caller, bike, action, Proof::Pin(given))
                    .await
            }
            None => Ok(tx),
        }
    }

    /// Proves the owner inside a write transaction that holds the bike's row
    /// ([`Registry::lock_registered_bike`]) and gives the transaction back to continue with.
    ///
    /// While the bike's PIN is locked nothing is checked. A wrong PIN or ID number is
    /// counted in the database itself (`pin_failures + 1`, and the lock set by the same
    /// statement at the [`pin::MAX_FAILURES`]th), then audited and committed, so the count
    /// survives the refusal. A right one resets the count. Every refusal is counted in
    /// `registry_pin_failures_total`.
    pub(crate) async fn prove_owner(
        &self,
        mut tx: Tx,
        caller: &Caller,
        bike: &BikeRow,
        action: pin::Action,
        proof: Proof<'_>,
    ) -> Result<Tx, RegistryError> {
        if let (Proof::Pin(_), None) = (proof, &bike.pin_hash) {
            return Err(RegistryError::FailedPrecondition(format!(
                "bike {} has no PIN yet; the owner sets one at a kiosk (SetPin)",
                bike.plate
            )));
        }
        let now = now_ms();
        let subject = format!("bike {} ({})", bike.bike_id, action.as_str());
        if bike.pin_locked_until_ms > now {
            self.pin_failures.count(action, true);
            self.finish_change(tx, caller, "pin_locked", &subject, None, |s| s)
                .await?;
            return Err(RegistryError::PermissionDenied(format!(
                "PIN locked after {} wrong PINs or ID numbers in a row; try again in {} minutes",
                pin::MAX_FAILURES,
                (bike.pin_locked_until_ms - now + 59_999) / 60_000
            )));
        }
        let right = match proof {
            Proof::Pin(given) => match &bike.pin_hash {
                Some(phc) => pin::verify(given, phc).await?,
                None => false,
            },
            Proof::IdNumber(id) => {
                let owner_hash: Vec<u8> = sqlx::query(
                    "SELECT o.id_number_hash FROM owners o JOIN bikes b ON b.owner_id = o.owner_id \
                     WHERE b.bike_id = $1",
                )
                .bind(bike.bike_id)
                .fetch_one(&mut *tx)
                .await?
                .try_get("id_number_hash")?;
                bool::from(
                    owner_hash
                        .as_slice()
                        .ct_eq(&self.secrets.keyed_hash(id.as_bytes())),
                )
            }
        };
        if right {
            if bike.pin_failures > 0 {
                sqlx::query("UPDATE bikes SET pin_failures = 0 WHERE bike_id = $1")
                    .bind(bike.bike_id)
                    .execute(&mut *tx)
                    .await?;
            }
            return Ok(tx);
        }
        self.pin_failures.count(action, false);
        let locked_until: i64 = sqlx::query(
            "UPDATE bikes SET \
               pin_failures = CASE WHEN pin_failures + 1 >= $2 THEN 0 ELSE pin_failures + 1 END, \
               pin_locked_until_ms = CASE WHEN pin_failures + 1 >= $2 THEN $3 \
                                          ELSE pin_locked_until_ms END \
             WHERE bike_id = $1 RETURNING pin_locked_until_ms",
        )
        .bind(bike.bike_id)
        .bind(pin::MAX_FAILURES)
        .bind(now + pin::LOCKOUT_MS)
        .fetch_one(&mut *tx)
        .await?
        .try_get("pin_locked_until_ms")?;
        let now_locked = locked_until > now;
        let (audit_action, refusal) = match proof {
            Proof::Pin(_) => ("pin_failed", "PIN does not match"),
            Proof::IdNumber(_) => (
                "owner_id_failed",
                "owner_id_number is not the registered owner's",
            ),
        };
        let subject = if now_locked {
            format!("{subject}: PIN locked")
        } else {
            subject
        };
        self.finish_change(tx, caller, audit_action, &subject, None, |s| s)
            .await?;
        Err(RegistryError::PermissionDenied(if now_locked {
            format!(
                "{refusal}; {} wrong in a row, so the PIN is locked for {} minutes",
                pin::MAX_FAILURES,
                pin::LOCKOUT_MS / 60_000
            )
        } else {
            refusal.to_owned()
        }))
    }
}

/// What proves the owner for an owner action.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Proof<'a> {
    /// The bike's PIN.
    Pin(&'a str),
    /// The owner's resident ID number (validated), for a bike with no PIN yet.
    IdNumber(&'a str),
}

/// The PIN `caller` must give for an owner action that needs the owner's PIN or an
/// official (ReportRecovered, ReplaceTag, TransferOwnership): a kiosk gives it (checked for
/// shape here, before anything is counted); the admin acts on its own authority and a
/// police officer resolving an incident as recovered (a patrol caller, reaching the
/// registry through alerting) on theirs, so for them `None`: no PIN is checked and any
/// given is ignored. Either way the action is audited under the caller's name.
pub(crate) fn owner_pin<'a>(
    caller: &Caller,
    given: &'a str,
) -> Result<Option<&'a str>, RegistryError> {
    match caller.role {
        Role::Kiosk | Role::Owner => {
            pin::validate_given("pin", given)?;
            Ok(Some(given))
        }
        Role::Admin | Role::Patrol => Ok(None),
        Role::Insurer => Err(RegistryError::PermissionDenied(
            "insurers read claim records only".into(),
        )),
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
    select_registered_bike(conn, plate, false).await
}

macro_rules! select_bike_row {
    () => {
        "SELECT bike_id, tag_id, pin_hash, pin_failures, pin_locked_until_ms FROM bikes \
         WHERE plate = $1 AND state = 'registered'"
    };
}

/// The registered bike with this plate; with `for_update` (PostgreSQL only), its row locked
/// until the transaction ends.
async fn select_registered_bike(
    conn: &mut AnyConnection,
    plate: &str,
    for_update: bool,
) -> Result<BikeRow, RegistryError> {
    let sql = if for_update {
        concat!(select_bike_row!(), " FOR UPDATE")
    } else {
        select_bike_row!()
    };
    let row = sqlx::query(sql)
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
