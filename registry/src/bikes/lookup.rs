//! Lookups: a bike by plate or tag, an owner's bikes; personal data comes back masked.
//! Every lookup is audited, and owner lookups (by full ID number) are rate-limited per kiosk,
//! so that guessing ID numbers through ListOwnerBikes is slow and shows in the audit log.

use super::*;
use crate::limits::OWNER_LOOKUPS_PER_MINUTE;

impl Registry {
    /// Finds a bike; the owner's personal data comes back masked. The lookup, found or not,
    /// is in the audit log under `caller`, with `reason` if one is given.
    pub async fn get_bike(
        &self,
        caller: &Caller,
        key: &BikeKey,
        reason: &str,
    ) -> Result<BikeRecord, RegistryError> {
        let found = self.find_bike(key).await;
        let subject = match key {
            BikeKey::Plate(p) => format!("plate {p}"),
            BikeKey::Tag(t) => format!("tag {t}"),
        };
        self.audit_lookup(caller, "get_bike", &subject, found.is_ok(), reason)
            .await?;
        found
    }

    async fn find_bike(&self, key: &BikeKey) -> Result<BikeRecord, RegistryError> {
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

    /// Every registered bike of the owner with this resident ID number. The lookup is in the
    /// audit log under `caller` (the ID number masked), with `reason` if one is given.
    pub async fn list_owner_bikes(
        &self,
        caller: &Caller,
        id_number: &str,
        reason: &str,
    ) -> Result<Vec<BikeRecord>, RegistryError> {
        let id = validate::resident_id("id_number", id_number)?;
        if caller.role != crate::auth::Role::Admin && !self.owner_lookups.take(&caller.id, now_ms())
        {
            self.owner_lookups.refused.inc();
            self.audit_lookup(
                caller,
                "list_owner_bikes_refused",
                &format!("owner {} (over the rate)", validate::mask_resident_id(&id)),
                true,
                reason,
            )
            .await?;
            return Err(RegistryError::RateLimited(format!(
                "owner lookups: at most {OWNER_LOOKUPS_PER_MINUTE} a minute per kiosk; try again \
                 in a minute"
            )));
        }
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {BIKE_COLUMNS} FROM bikes b JOIN owners o ON o.owner_id = b.owner_id \
             WHERE o.id_number_hash = $1 AND b.state = 'registered' ORDER BY b.bike_id"
        )))
        .bind(self.secrets.keyed_hash(id.as_bytes()))
        .fetch_all(self.db.pool())
        .await?;
        let subject = format!(
            "owner {} ({} bikes)",
            validate::mask_resident_id(&id),
            rows.len()
        );
        self.audit_lookup(caller, "list_owner_bikes", &subject, true, reason)
            .await?;
        rows.iter().map(|r| self.bike_record(r)).collect()
    }

    /// Records a lookup of personal data in the audit log, in its own transaction.
    pub async fn audit_lookup(
        &self,
        caller: &Caller,
        action: &str,
        subject: &str,
        found: bool,
        reason: &str,
    ) -> Result<(), RegistryError> {
        let reason = validate::optional_text("reason", reason, 200)?;
        let mut subject = subject.to_owned();
        if !found {
            subject.push_str(" (not found)");
        }
        if !reason.is_empty() {
            subject.push_str(&format!("; reason: {reason}"));
        }
        let mut tx = self.db.begin_write().await?;
        crate::store::audit(&mut tx, caller, action, &subject).await?;
        tx.commit().await?;
        Ok(())
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
            owner_name: validate::mask_name(&row.try_get::<String, _>("name")?),
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
}
