//! What owners' notifications need of the registry: an owner's phone, opened only at the
//! moment of sending (never logged, never kept), and the recoveries whose owner has not been
//! told yet.

use sqlx::Row;

use crate::error::RegistryError;
use crate::store::Registry;

/// Where to text a bike's owner. `Debug` does not show the phone.
#[derive(Clone, PartialEq, Eq)]
pub struct OwnerContact {
    pub owner_id: i64,
    pub bike_id: i64,
    pub plate: String,
    /// The owner's phone, opened from its sealed form.
    pub phone: String,
}

impl std::fmt::Debug for OwnerContact {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OwnerContact")
            .field("owner_id", &self.owner_id)
            .field("bike_id", &self.bike_id)
            .field("plate", &self.plate)
            .field("phone", &"<hidden>")
            .finish()
    }
}

/// A bike as its owner sees it on the owner page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerBike {
    pub bike_id: i64,
    pub plate: String,
    pub tag_id: String,
    pub make: String,
    pub model: String,
    pub color: String,
    pub armed: bool,
    /// Its open theft report, if it is stolen.
    pub theft: Option<OpenTheft>,
}

/// An open theft report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenTheft {
    pub report_id: i64,
    pub stolen_at_ms: i64,
    pub reported_at_ms: i64,
}

/// A recovery whose owner has not been told yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovery {
    pub report_id: i64,
    pub bike_id: i64,
    pub recovered_at_ms: i64,
}

const CONTACT: &str = "SELECT b.bike_id, b.plate, o.owner_id, o.phone_sealed \
     FROM bikes b JOIN owners o ON o.owner_id = b.owner_id";

impl Registry {
    fn contact_of(&self, row: &sqlx::any::AnyRow) -> Result<OwnerContact, RegistryError> {
        Ok(OwnerContact {
            owner_id: row.try_get("owner_id")?,
            bike_id: row.try_get("bike_id")?,
            plate: row.try_get("plate")?,
            phone: self
                .secrets()
                .open_string(&row.try_get::<Vec<u8>, _>("phone_sealed")?)?,
        })
    }

    /// The owner of the registered bike carrying `tag_id`, if any.
    pub async fn owner_contact_by_tag(
        &self,
        tag_id: &str,
    ) -> Result<Option<OwnerContact>, RegistryError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{CONTACT} WHERE b.tag_id = $1 AND b.state = 'registered'"
        )))
        .bind(tag_id)
        .fetch_optional(self.db().pool())
        .await?;
        row.map(|r| self.contact_of(&r)).transpose()
    }

    /// The owner of the registered bike with `plate`, if any.
    pub async fn owner_contact_by_plate(
        &self,
        plate: &str,
    ) -> Result<Option<OwnerContact>, RegistryError> {
        let plate = crate::validate::plate("plate", plate)?;
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{CONTACT} WHERE b.plate = $1 AND b.state = 'registered'"
        )))
        .bind(&plate)
        .fetch_optional(self.db().pool())
        .await?;
        row.map(|r| self.contact_of(&r)).transpose()
    }

    /// An owner's registered bikes, by plate, with what the owner page shows of each.
    pub async fn owner_bikes(&self, owner_id: i64) -> Result<Vec<OwnerBike>, RegistryError> {
        let rows = sqlx::query(
            "SELECT b.bike_id, b.plate, b.tag_id, b.make, b.model, b.color, b.armed, \
                    t.report_id, t.stolen_at_ms, t.reported_at_ms \
             FROM bikes b LEFT JOIN theft_reports t \
                 ON t.bike_id = b.bike_id AND t.recovered_at_ms IS NULL \
             WHERE b.owner_id = $1 AND b.state = 'registered' ORDER BY b.plate",
        )
        .bind(owner_id)
        .fetch_all(self.db().pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(OwnerBike {
                    bike_id: r.try_get("bike_id")?,
                    plate: r.try_get("plate")?,
                    tag_id: r
                        .try_get::<Option<String>, _>("tag_id")?
                        .unwrap_or_default(),
                    make: r.try_get("make")?,
                    model: r.try_get("model")?,
                    color: r.try_get("color")?,
                    armed: r.try_get::<i64, _>("armed")? != 0,
                    theft: match r.try_get::<Option<i64>, _>("report_id")? {
                        Some(report_id) => Some(OpenTheft {
                            report_id,
                            stolen_at_ms: r.try_get::<Option<i64>, _>("stolen_at_ms")?.unwrap_or(0),
                            reported_at_ms: r
                                .try_get::<Option<i64>, _>("reported_at_ms")?
                                .unwrap_or(0),
                        }),
                        None => None,
                    },
                })
            })
            .collect()
    }

    /// The owner of a bike, by its id.
    pub async fn owner_contact_by_bike(
        &self,
        bike_id: i64,
    ) -> Result<Option<OwnerContact>, RegistryError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{CONTACT} WHERE b.bike_id = $1"
        )))
        .bind(bike_id)
        .fetch_optional(self.db().pool())
        .await?;
        row.map(|r| self.contact_of(&r)).transpose()
    }

    /// Recoveries since `since_ms` whose owner has not been told, oldest first.
    pub async fn recoveries_to_notify(
        &self,
        since_ms: i64,
        limit: i64,
    ) -> Result<Vec<Recovery>, RegistryError> {
        let rows = sqlx::query(
            "SELECT report_id, bike_id, recovered_at_ms FROM theft_reports \
             WHERE recovered_at_ms IS NOT NULL AND recovery_notified = 0 \
               AND recovered_at_ms >= $1 ORDER BY report_id LIMIT $2",
        )
        .bind(since_ms)
        .bind(limit)
        .fetch_all(self.db().pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Recovery {
                    report_id: r.try_get("report_id")?,
                    bike_id: r.try_get("bike_id")?,
                    recovered_at_ms: r.try_get("recovered_at_ms")?,
                })
            })
            .collect()
    }

    /// Marks a recovery's owner as told (or given up on).
    pub async fn recovery_notified(&self, report_id: i64) -> Result<(), RegistryError> {
        sqlx::query("UPDATE theft_reports SET recovery_notified = 1 WHERE report_id = $1")
            .bind(report_id)
            .execute(self.db().pool())
            .await?;
        Ok(())
    }
}
