//! Look-back (issue #17): owners often notice a theft hours after it. When a theft is
//! reported, the pass history is searched from the theft (`ReportStolen.stolen_at_ms`) to the
//! report, and the theft's incident is opened with what it found:
//!
//! - every pass found is a `sighted_earlier` step of the incident (`Patrol.GetIncident`),
//!   the newest [`MAX_EARLIER`] of them;
//! - the latest is alerted as `ALERT_KIND_STOLEN_SIGHTED_EARLIER` to the units whose zones
//!   hold its reader (and command centers), once;
//! - a bike with no track gets an incident with no sightings, not an error.
//!
//! Only passes whose first read came before the report are looked at: a pass begun after it
//! was seen by the live rules with the bike already on the hotlist. A pass still open at the
//! report (the bike standing at a reader) is stored when it closes, after the look-back, and
//! alerts only when the bike reaches its next reader.
//!
//! Durable and once: the work is "every open theft report without a row in
//! `theft_lookbacks`", and that row is written in the transaction that opens the incident
//! and appends the alert. [`run`] polls for it every [`POLL`] and at once when this node took
//! a report ([`greenplate_registry::Registry::thefts_reported`]); on several nodes the
//! first transaction to write the row wins and the others roll back.

use std::sync::Arc;
use std::time::Duration;

use greenplate_proto::v1::{Alert, AlertKind};
use greenplate_registry::{BikeKey, Reader, now_ms};
use sqlx::Row;
use tokio_util::sync::CancellationToken;

use crate::error::AlertingError;
use crate::history::Pass;
use crate::incidents;
use crate::state::{Alerting, ResultLabel};

/// Passes of one look-back listed in its incident at most (the newest).
pub const MAX_EARLIER: usize = 1000;
/// How often every node looks for reports still to look back (one another node took, or
/// one this node took before it crashed).
pub const POLL: Duration = Duration::from_secs(2);
/// Reports looked back per round at most.
const BATCH: i64 = 20;

/// A theft report still to look back.
#[derive(Debug, Clone)]
struct Due {
    report_id: i64,
    bike_id: i64,
    plate: String,
    stolen_at_ms: i64,
    reported_at_ms: i64,
}

/// Looks back every theft report still to do, now and after each report this node takes
/// (or every [`POLL`]), until `shutdown`.
pub async fn run(alerting: Arc<Alerting>, shutdown: CancellationToken) {
    loop {
        if let Err(e) = alerting.look_back_due().await {
            alerting.lookbacks.failed.inc();
            tracing::error!(error = %e, "Looking back theft reports failed; retrying.");
        }
        tokio::select! {
            _ = alerting.registry.thefts_reported().notified() => {}
            _ = tokio::time::sleep(POLL) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

impl Alerting {
    /// Looks back the theft reports still to do; returns how many this node did.
    pub async fn look_back_due(&self) -> Result<usize, AlertingError> {
        let rows = sqlx::query(
            "SELECT t.report_id, t.bike_id, t.stolen_at_ms, t.reported_at_ms, b.plate \
             FROM theft_reports t JOIN bikes b ON b.bike_id = t.bike_id \
             LEFT JOIN theft_lookbacks l ON l.report_id = t.report_id \
             WHERE l.report_id IS NULL AND t.recovered_at_ms IS NULL \
             ORDER BY t.report_id LIMIT $1",
        )
        .bind(BATCH)
        .fetch_all(self.db().pool())
        .await?;
        let mut done = 0;
        for row in rows {
            let due = Due {
                report_id: row.try_get("report_id")?,
                bike_id: row.try_get("bike_id")?,
                plate: row.try_get("plate")?,
                stolen_at_ms: row.try_get("stolen_at_ms")?,
                reported_at_ms: row.try_get("reported_at_ms")?,
            };
            if self.look_back(&due).await? {
                done += 1;
            }
        }
        Ok(done)
    }

    /// Looks back one report; false if another node did it first.
    async fn look_back(&self, due: &Due) -> Result<bool, AlertingError> {
        let subject = self
            .registry
            .track_subject(&BikeKey::Plate(due.plate.clone()))
            .await?;
        // Newest first; only passes begun before the report (see the module docs).
        let mut passes = self
            .history
            .track_newest(
                &subject.tags,
                due.stolen_at_ms,
                due.reported_at_ms,
                MAX_EARLIER + 1,
            )
            .await?;
        let truncated = passes.len() > MAX_EARLIER;
        passes.truncate(MAX_EARLIER);
        passes.reverse();
        // The bike's last known place: the pass that ended last.
        let latest = passes.iter().max_by_key(|p| p.last_seen_ms).cloned();
        let reader_of =
            |p: &Pass| -> Option<Arc<Reader>> { self.registry.readers().get(&p.reader_id) };

        let now = now_ms();
        let dedup_key = format!("theft:{}", due.report_id);
        let mut tx = self.db().begin_write().await?;
        let claimed = sqlx::query(
            "INSERT INTO theft_lookbacks (report_id, done_at_ms, passes, incident_id) \
             VALUES ($1, $2, $3, '') ON CONFLICT (report_id) DO NOTHING RETURNING report_id",
        )
        .bind(due.report_id)
        .bind(now)
        .bind(i64::try_from(passes.len()).unwrap_or(i64::MAX))
        .fetch_optional(&mut *tx)
        .await?;
        if claimed.is_none() {
            return Ok(false);
        }
        let incident_id = incidents::open_or_join(
            &mut tx,
            AlertKind::StolenSighted,
            due.bike_id,
            &dedup_key,
            now,
        )
        .await?;
        sqlx::query("UPDATE theft_lookbacks SET incident_id = $1 WHERE report_id = $2")
            .bind(&incident_id)
            .bind(due.report_id)
            .execute(&mut *tx)
            .await?;
        let summary = format!(
            "passes from {} to the report at {}: {}{}",
            due.stolen_at_ms,
            due.reported_at_ms,
            passes.len(),
            if truncated {
                " (the newest listed)"
            } else {
                ""
            }
        );
        incidents::record_event(&mut tx, &incident_id, "engine", "look_back", &summary, now)
            .await?;
        for p in &passes {
            let (lat, lon) = reader_of(p).map_or((0.0, 0.0), |r| (r.lat, r.lon));
            incidents::record_pass(&mut tx, &incident_id, p, lat, lon).await?;
        }
        let alert = latest.as_ref().map(|p| {
            let (reader, recipients) = match reader_of(p) {
                Some(r) => {
                    let units = self.router.units_for(&r);
                    (r, units)
                }
                // A reader removed since: no position, and only command centers hear.
                None => (
                    Arc::new(Reader::new(
                        p.reader_id.to_string(),
                        String::new(),
                        0.0,
                        0.0,
                        "",
                    )),
                    self.router.command_units(),
                ),
            };
            let alert = Alert {
                kind: AlertKind::StolenSightedEarlier as i32,
                plate: due.plate.clone(),
                tag_id: p.tag.to_string(),
                reader_id: reader.id.clone(),
                lat: reader.lat,
                lon: reader.lon,
                seen_at_ms: p.last_seen_ms,
                incident_id: incident_id.clone(),
                priority: 1,
                ..Default::default()
            };
            (alert, recipients, format!("lookback/{}", due.report_id))
        });
        let appended = self
            .append_outside(&mut tx, alert, &incident_id, now)
            .await?;
        tx.commit().await?;
        let result = if latest.is_some() {
            "sighted"
        } else {
            "no_track"
        };
        self.lookbacks
            .done
            .get_or_create(&ResultLabel { result })
            .inc();
        tracing::info!(
            report = due.report_id,
            plate = %due.plate,
            incident = %incident_id,
            passes = passes.len(),
            "Looked back a theft report."
        );
        self.publish_appended(appended);
        Ok(true)
    }
}
