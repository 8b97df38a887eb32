//! The durable alert log: every alert, with the units entitled to it, appended in the
//! engine's transaction and given its seq there. This is the commit point: an alert is
//! streamed only once it is here, and a stream that reconnects or falls behind replays from
//! here after the last seq it saw ([`Alerting::replay`]). On PostgreSQL the [`follow`]er
//! feeds the hub from this log, for every node's alerts.
//!
//! Layout:
//! - this file: [`LoggedAlert`], the engine's group commit, the reads
//!   ([`Alerting::last_seq`], [`Alerting::replay`]) and the row mapping;
//! - [`follow`]: on PostgreSQL, the log follower (NOTIFY on commit, strict seq order).

pub mod follow;

use std::collections::HashMap;

use greenplate_proto::v1::Alert;
use greenplate_registry::now_ms;
use sqlx::Row;

use crate::error::AlertingError;
use crate::hub::LoggedAlert;
use crate::incidents;
use crate::rules::Pending;
use crate::schema::{ALERT_COLUMNS, alert_from_row};
use crate::state::Alerting;

/// Commits pending alerts in one transaction (group commit): each finds or opens its
/// incident, is appended with its recipients and gets its seq. On PostgreSQL the commit
/// also tells every node's follower. Returns the committed alerts, in seq order.
pub(crate) async fn commit(
    alerting: &Alerting,
    pending: Vec<Pending<'_>>,
) -> Result<Vec<LoggedAlert>, AlertingError> {
    let now = now_ms();
    let mut tx = alerting.db().begin_write().await?;
    let mut committed = Vec::with_capacity(pending.len());
    // Many alerts of a batch share a matter (one stolen bike past many readers): each
    // incident is found or opened once per batch, and touched once.
    let mut incident_of: HashMap<String, String> = HashMap::new();
    for p in pending {
        let incident_id = match incident_of.get(&p.dedup_key) {
            Some(id) => id.clone(),
            None if p.dedup_key.is_empty() => String::new(),
            None => {
                let id =
                    incidents::open_or_join(&mut tx, p.base, p.bike_id, &p.dedup_key, now).await?;
                incident_of.insert(p.dedup_key.clone(), id.clone());
                id
            }
        };
        let source = p.source.clone();
        let (mut alert, recipients) = p.into_alert(incident_id);
        if append(&mut tx, &mut alert, source.as_deref(), &recipients, now).await? {
            committed.push(LoggedAlert { alert, recipients });
        } else {
            // This sighting's alert is in the log already: its batch was processed twice
            // (a redelivery after a node died between commit and acknowledgement).
            alerting.duplicates_dropped.inc();
            tracing::info!(
                source = source.as_deref().unwrap_or(""),
                "An alert already in the log was not written again."
            );
        }
    }
    for incident_id in incident_of.values() {
        incidents::touch(&mut tx, incident_id, now).await?;
    }
    if !alerting.engine_publishes && !committed.is_empty() {
        // Delivered on commit to every node's log follower (this one's too).
        announce(&mut tx).await?;
    }
    tx.commit().await?;
    Ok(committed)
}

/// Appends an alert (its seq still 0) and its recipients to the log in `tx`; sets its seq.
/// An alert whose `source` (the sighting and rule) is in the log already is not appended:
/// returns false. The check comes before the insert so that no seq is spent on it (a seq
/// spent and never committed is a hole the followers wait on); the unique index catches
/// two nodes committing the same source at once.
pub(crate) async fn append(
    tx: &mut sqlx::AnyConnection,
    alert: &mut Alert,
    source: Option<&str>,
    recipients: &[String],
    now: i64,
) -> Result<bool, sqlx::Error> {
    let row = sqlx::query(
        "INSERT INTO alerts (alert_id, kind, priority, plate, tag_id, reader_id, lat, lon, \
                             seen_at_ms, incident_id, zone_id, created_at_ms, source, \
                             watch_entry_id, reason, case_number, escalation) \
         SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17 \
         WHERE NOT EXISTS (SELECT 1 FROM alerts WHERE source = $13) \
         ON CONFLICT DO NOTHING RETURNING seq",
    )
    .bind(&alert.alert_id)
    .bind(i64::from(alert.kind))
    .bind(i64::from(alert.priority))
    .bind(&alert.plate)
    .bind(&alert.tag_id)
    .bind(&alert.reader_id)
    .bind(alert.lat)
    .bind(alert.lon)
    .bind(alert.seen_at_ms)
    .bind(&alert.incident_id)
    .bind(&alert.zone_id)
    .bind(now)
    .bind(source)
    .bind(&alert.watch_entry_id)
    .bind(&alert.reason)
    .bind(&alert.case_number)
    .bind(i64::from(alert.escalation))
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else {
        return Ok(false);
    };
    let seq: i64 = row.try_get("seq")?;
    alert.seq = seq as u64;
    // One statement for the recipients (in chunks well under the parameter limits).
    for chunk in recipients.chunks(400) {
        let values = (0..chunk.len())
            .map(|i| format!("(${}, ${})", 2 * i + 1, 2 * i + 2))
            .collect::<Vec<_>>()
            .join(", ");
        let mut q = sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO alert_recipients (unit_id, seq) VALUES {values}"
        )));
        for unit in chunk {
            q = q.bind(unit).bind(seq);
        }
        q.execute(&mut *tx).await?;
    }
    Ok(true)
}

/// An alert written outside the engine's group commit, to publish once its transaction
/// has committed ([`Alerting::publish_appended`]); none if there was no alert to write or
/// its source was in the log already.
#[must_use = "publish it once the transaction has committed"]
pub(crate) struct Appended(Option<LoggedAlert>);

impl Appended {
    pub(crate) fn logged(&self) -> Option<&LoggedAlert> {
        self.0.as_ref()
    }
}

impl Alerting {
    /// Writes an alert outside the engine's group commit (a look-back, a rejected hit, an
    /// escalation) in `tx`, as the engine would: appended with its recipients unless its
    /// `source` is logged already (named here if it has no id yet), its incident touched,
    /// every node's follower told on commit (PostgreSQL). `alert` None: the incident is
    /// only touched.
    pub(crate) async fn append_outside(
        &self,
        tx: &mut sqlx::AnyConnection,
        alert: Option<(Alert, Vec<String>, String)>,
        incident_id: &str,
        now: i64,
    ) -> Result<Appended, sqlx::Error> {
        let mut logged = None;
        if let Some((mut alert, recipients, source)) = alert {
            if alert.alert_id.is_empty() {
                alert.alert_id = crate::rules::new_alert_id();
            }
            if append(tx, &mut alert, Some(&source), &recipients, now).await? {
                logged = Some(LoggedAlert { alert, recipients });
            }
        }
        incidents::touch(tx, incident_id, now).await?;
        if logged.is_some() && !self.engine_publishes {
            announce(tx).await?;
        }
        Ok(Appended(logged))
    }

    /// Hands an alert [`Alerting::append_outside`] wrote, now committed, to this node's live
    /// streams (where the engine publishes; elsewhere the log follower does).
    pub(crate) fn publish_appended(&self, appended: Appended) {
        if let Some(logged) = appended.0
            && self.engine_publishes
        {
            self.hub.publish(logged);
        }
    }
}

/// Tells every node's [`follow`]er, on commit, that the log grew (PostgreSQL).
pub(crate) async fn announce(tx: &mut sqlx::AnyConnection) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(follow::CHANNEL)
        .execute(tx)
        .await?;
    Ok(())
}

impl Alerting {
    /// The highest seq in the alert log (0 when it is empty).
    pub async fn last_seq(&self) -> Result<u64, AlertingError> {
        let row = sqlx::query("SELECT COALESCE(MAX(seq), 0) AS last FROM alerts")
            .fetch_one(self.db().pool())
            .await?;
        Ok(u64::try_from(row.try_get::<i64, _>("last")?).unwrap_or(0))
    }

    /// Up to `limit` alerts for `unit_id` with `after` < seq <= `upto`, oldest first.
    pub async fn replay(
        &self,
        unit_id: &str,
        after: u64,
        upto: u64,
        limit: i64,
    ) -> Result<Vec<Alert>, AlertingError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {ALERT_COLUMNS} FROM alerts a JOIN alert_recipients r ON r.seq = a.seq \
             WHERE r.unit_id = $1 AND a.seq > $2 AND a.seq <= $3 ORDER BY a.seq LIMIT $4"
        )))
        .bind(unit_id)
        .bind(i64::try_from(after).unwrap_or(i64::MAX))
        .bind(i64::try_from(upto).unwrap_or(i64::MAX))
        .bind(limit)
        .fetch_all(self.db().pool())
        .await?;
        rows.iter()
            .map(alert_from_row)
            .collect::<Result<_, _>>()
            .map_err(Into::into)
    }
}
