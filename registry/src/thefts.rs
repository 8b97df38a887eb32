//! Theft and recovery reports: the hotlist.

use sqlx::Row;

use crate::auth::Caller;
use crate::bikes::{BikeKey, owner_pin, registered_bike};
use crate::db::now_ms;
use crate::error::RegistryError;
use crate::pin;
use crate::store::Registry;
use crate::validate::{self, TagId};

/// What a kiosk or officer says about a theft.
#[derive(Debug, Clone, Default)]
pub struct TheftDetails {
    /// When it happened, Unix ms; 0 for now.
    pub stolen_at_ms: i64,
    pub place: String,
    pub notes: String,
}

/// What the alerting engine reads of a bike once per batch ([`Registry::alert_facts`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertFacts {
    pub plate: String,
    pub open_theft_report: Option<i64>,
}

/// Result of [`Registry::report_stolen`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TheftReport {
    pub report_id: i64,
    /// True when the bike already had an open report (this one).
    pub already_open: bool,
}

impl Registry {
    /// Puts a bike on the hotlist; a second report of an open theft returns the open one.
    pub async fn report_stolen(
        &self,
        caller: &Caller,
        plate: &str,
        details: &TheftDetails,
    ) -> Result<TheftReport, RegistryError> {
        let plate = validate::plate("plate", plate)?;
        let now = now_ms();
        let stolen_at = match details.stolen_at_ms {
            0 => now,
            t if t > now + 60_000 => {
                return Err(RegistryError::invalid("stolen_at_ms", "is in the future"));
            }
            t if t < 946_684_800_000 => {
                return Err(RegistryError::invalid(
                    "stolen_at_ms",
                    "is before the year 2000",
                ));
            }
            t => t,
        };
        let place = validate::optional_text("place", &details.place, 200)?;
        let notes = validate::optional_text("notes", &details.notes, 2000)?;
        let mut tx = self.db.begin_write().await?;
        let bike = registered_bike(&mut tx, &plate).await?;
        let open = sqlx::query(
            "SELECT report_id FROM theft_reports WHERE bike_id = $1 AND recovered_at_ms IS NULL",
        )
        .bind(bike.bike_id)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(row) = open {
            return Ok(TheftReport {
                report_id: row.try_get("report_id")?,
                already_open: true,
            });
        }
        let report_id: i64 = sqlx::query(
            "INSERT INTO theft_reports (bike_id, stolen_at_ms, place, notes, reported_by, reported_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING report_id",
        )
        .bind(bike.bike_id)
        .bind(stolen_at)
        .bind(&place)
        .bind(&notes)
        .bind(caller.audit_name())
        .bind(now)
        .fetch_one(&mut *tx)
        .await?
        .try_get("report_id")?;
        self.finish_change(
            tx,
            caller,
            "report_stolen",
            &format!("bike {} plate {plate} report {report_id}", bike.bike_id),
            bike.tag,
            |s| s.with_stolen(true),
        )
        .await?;
        self.thefts_reported.notify_one();
        Ok(TheftReport {
            report_id,
            already_open: false,
        })
    }

    /// Takes a bike off the hotlist. The owner's PIN authorises it at a kiosk; the admin,
    /// and a police officer resolving the theft's incident as recovered, act without it (see
    /// `owner_pin` in `bikes/actions.rs`). A bike not reported stolen is refused before the
    /// PIN is checked, so that costs the owner no PIN attempt.
    pub async fn report_recovered(
        &self,
        caller: &Caller,
        plate: &str,
        pin_given: &str,
    ) -> Result<(), RegistryError> {
        let plate = validate::plate("plate", plate)?;
        let pin_given = owner_pin(caller, pin_given)?;
        let mut tx = self.db.begin_write().await?;
        let bike = self.lock_registered_bike(&mut tx, &plate).await?;
        let open = sqlx::query(
            "SELECT report_id FROM theft_reports WHERE bike_id = $1 AND recovered_at_ms IS NULL",
        )
        .bind(bike.bike_id)
        .fetch_optional(&mut *tx)
        .await?;
        if open.is_none() {
            return Err(RegistryError::FailedPrecondition(format!(
                "bike {plate} is not reported stolen"
            )));
        }
        let mut tx = self
            .prove_pin(tx, caller, &bike, pin::Action::ReportRecovered, pin_given)
            .await?;
        sqlx::query(
            "UPDATE theft_reports SET recovered_by = $1, recovered_at_ms = $2 \
             WHERE bike_id = $3 AND recovered_at_ms IS NULL",
        )
        .bind(caller.audit_name())
        .bind(now_ms())
        .bind(bike.bike_id)
        .execute(&mut *tx)
        .await?;
        self.finish_change(
            tx,
            caller,
            "report_recovered",
            &format!("bike {} plate {plate}", bike.bike_id),
            bike.tag,
            |s| s.with_stolen(false),
        )
        .await
    }

    /// What the alerting engine needs of each of `bike_ids` in one query: its plate and its
    /// open theft report, if any (a bike recovered since ingest looked has none). Bikes
    /// not found are left out.
    pub async fn alert_facts(
        &self,
        bike_ids: &[i64],
    ) -> Result<std::collections::HashMap<i64, AlertFacts>, RegistryError> {
        let mut facts = std::collections::HashMap::with_capacity(bike_ids.len());
        // Chunks keep the statement's parameters well under every backend's limit.
        for chunk in bike_ids.chunks(500) {
            let params = (1..=chunk.len())
                .map(|i| format!("${i}"))
                .collect::<Vec<_>>()
                .join(", ");
            let sql = format!(
                "SELECT b.bike_id, b.plate, t.report_id FROM bikes b \
                 LEFT JOIN theft_reports t ON t.bike_id = b.bike_id AND t.recovered_at_ms IS NULL \
                 WHERE b.bike_id IN ({params})"
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for id in chunk {
                q = q.bind(*id);
            }
            for row in q.fetch_all(self.db.pool()).await? {
                let bike_id: i64 = row.try_get("bike_id")?;
                facts.insert(
                    bike_id,
                    AlertFacts {
                        plate: row.try_get("plate")?,
                        open_theft_report: row.try_get("report_id")?,
                    },
                );
            }
        }
        Ok(facts)
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

    /// What a track request names: a plate names a registered bike and every tag it ever
    /// had (a replaced tag's passes are still its history); a tag names itself, and its bike
    /// if it was ever bound to one.
    pub async fn track_subject(&self, key: &BikeKey) -> Result<TrackSubject, RegistryError> {
        match key {
            BikeKey::Plate(p) => {
                let plate = validate::plate("plate", p)?;
                let bike_id: i64 = sqlx::query(
                    "SELECT bike_id FROM bikes WHERE plate = $1 AND state = 'registered'",
                )
                .bind(&plate)
                .fetch_optional(self.db.pool())
                .await?
                .ok_or_else(|| RegistryError::NotFound(format!("bike with plate {plate}")))?
                .try_get("bike_id")?;
                let tags = sqlx::query("SELECT tag_id FROM tags WHERE bike_id = $1")
                    .bind(bike_id)
                    .fetch_all(self.db.pool())
                    .await?
                    .iter()
                    .filter_map(|r| r.try_get::<String, _>("tag_id").ok())
                    .filter_map(|t| TagId::parse(&t))
                    .collect();
                Ok(TrackSubject {
                    bike_id: Some(bike_id),
                    plate,
                    tags,
                })
            }
            BikeKey::Tag(t) => {
                let tag = TagId::parse_field("tag_id", t)?;
                let row = sqlx::query(
                    "SELECT g.bike_id, b.plate FROM tags g JOIN bikes b ON b.bike_id = g.bike_id \
                     WHERE g.tag_id = $1",
                )
                .bind(tag.to_string())
                .fetch_optional(self.db.pool())
                .await?;
                let (bike_id, plate) = match row {
                    Some(r) => (Some(r.try_get("bike_id")?), r.try_get("plate")?),
                    None => (None, String::new()),
                };
                Ok(TrackSubject {
                    bike_id,
                    plate,
                    tags: vec![tag],
                })
            }
        }
    }
}

/// Result of [`Registry::track_subject`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackSubject {
    /// The bike, if the plate or tag names one.
    pub bike_id: Option<i64>,
    /// Its plate; empty for a tag never bound.
    pub plate: String,
    pub tags: Vec<TagId>,
}
