//! Incidents: one per matter (a theft report, an armed bike, a revoked or cloned tag, a
//! reader gone offline), named by a dedup key so that successive sightings of one matter are
//! updates of one incident. Their lifecycle: opened by the engine, acknowledged by a unit,
//! resolved with an outcome (`Recovered` takes the bike off the hotlist). Each step is an
//! event in `incident_events`. A unit may act on an incident only if it was sent one of its
//! alerts, or if it is a command center.

use greenplate_proto::v1::{Alert, AlertKind, Incident, IncidentState, Outcome};
use greenplate_registry::{Caller, RegistryError, now_ms};
use sqlx::Row;

use crate::error::AlertingError;
use crate::schema::{ALERT_COLUMNS, alert_from_row};
use crate::state::Alerting;

/// An unresolved incident and its latest alert (see [`Alerting::open_incidents`]).
#[derive(Debug, Clone, PartialEq)]
pub struct OpenIncident {
    /// The rule that opened it (`AlertKind` as i32).
    pub kind: i32,
    /// Acknowledged (else open).
    pub acknowledged: bool,
    pub acknowledged_by: String,
    pub opened_at_ms: i64,
    pub updated_at_ms: i64,
    /// Its latest alert: incident id, plate, reader and position, seq.
    pub last: Alert,
}

impl Alerting {
    /// Incidents changed (opened, updated by an alert, acknowledged, resolved) at or after
    /// `since_ms`, with their state (`open`, `acknowledged`, `resolved`), at most `limit`:
    /// for live pages to follow what other users did.
    pub async fn incident_changes(
        &self,
        since_ms: i64,
        limit: i64,
    ) -> Result<Vec<(String, String)>, AlertingError> {
        let rows = sqlx::query(
            "SELECT incident_id, state FROM incidents WHERE updated_at_ms >= $1 \
             ORDER BY updated_at_ms LIMIT $2",
        )
        .bind(since_ms)
        .bind(limit)
        .fetch_all(self.db().pool())
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("incident_id")?, r.try_get("state")?)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(Into::into)
    }

    /// Unresolved incidents, most recently updated first, at most `limit`, each with its
    /// latest alert: the one seen last (where the bike or reader was last seen), not the one
    /// logged last, so a late sighting (a reader's buffer after an outage, a redelivery)
    /// never moves an incident's position back in time.
    pub async fn open_incidents(&self, limit: i64) -> Result<Vec<OpenIncident>, AlertingError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {ALERT_COLUMNS}, i.kind AS incident_kind, i.state AS incident_state, \
                    i.opened_at_ms, i.updated_at_ms, i.acknowledged_by \
             FROM incidents i JOIN alerts a ON a.seq = \
                 (SELECT l.seq FROM alerts l WHERE l.incident_id = i.incident_id \
                  ORDER BY l.seen_at_ms DESC, l.seq DESC LIMIT 1) \
             WHERE i.state <> 'resolved' ORDER BY i.updated_at_ms DESC, a.seq DESC LIMIT $1"
        )))
        .bind(limit)
        .fetch_all(self.db().pool())
        .await?;
        rows.iter()
            .map(|row| {
                let state: String = row.try_get("incident_state")?;
                Ok(OpenIncident {
                    kind: row.try_get::<i64, _>("incident_kind")? as i32,
                    acknowledged: state == "acknowledged",
                    acknowledged_by: row
                        .try_get::<Option<String>, _>("acknowledged_by")?
                        .unwrap_or_default(),
                    opened_at_ms: row.try_get("opened_at_ms")?,
                    updated_at_ms: row.try_get("updated_at_ms")?,
                    last: alert_from_row(row)?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(Into::into)
    }

    /// A unit takes an incident on.
    pub async fn acknowledge(
        &self,
        caller: &Caller,
        incident_id: &str,
        note: &str,
    ) -> Result<Incident, AlertingError> {
        let note = greenplate_registry::validate::optional_text("note", note, 2000)?;
        self.require_entitled(caller, incident_id).await?;
        let now = now_ms();
        let mut tx = self.db().begin_write().await?;
        let current = incident_row(&mut tx, incident_id).await?;
        match current.state() {
            IncidentState::Resolved => {
                return Err(RegistryError::FailedPrecondition(format!(
                    "incident {incident_id} is resolved"
                ))
                .into());
            }
            IncidentState::Acknowledged => {}
            _ => {
                sqlx::query(
                    "UPDATE incidents SET state = 'acknowledged', acknowledged_by = $1, \
                     acknowledged_at_ms = $2, updated_at_ms = $2 WHERE incident_id = $3",
                )
                .bind(caller.audit_name())
                .bind(now)
                .bind(incident_id)
                .execute(&mut *tx)
                .await?;
            }
        }
        record_event(
            &mut tx,
            incident_id,
            &caller.audit_name(),
            "acknowledge",
            &note,
            now,
        )
        .await?;
        let out = incident_row(&mut tx, incident_id).await?;
        tx.commit().await?;
        Ok(out)
    }

    /// Closes an incident with an outcome; `Recovered` takes the bike off the hotlist too.
    pub async fn resolve(
        &self,
        caller: &Caller,
        incident_id: &str,
        outcome: Outcome,
        note: &str,
    ) -> Result<Incident, AlertingError> {
        let note = greenplate_registry::validate::optional_text("note", note, 2000)?;
        if outcome == Outcome::Unspecified {
            return Err(RegistryError::invalid(
                "outcome",
                "must be RECOVERED, FALSE_ALARM or LOST_TRACK",
            )
            .into());
        }
        self.require_entitled(caller, incident_id).await?;
        let now = now_ms();
        let mut tx = self.db().begin_write().await?;
        let current = incident_row(&mut tx, incident_id).await?;
        if current.state() == IncidentState::Resolved {
            return Err(RegistryError::FailedPrecondition(format!(
                "incident {incident_id} is already resolved"
            ))
            .into());
        }
        sqlx::query(
            "UPDATE incidents SET state = 'resolved', resolved_by = $1, resolved_at_ms = $2, \
             updated_at_ms = $2, outcome = $3, note = $4 WHERE incident_id = $5",
        )
        .bind(caller.audit_name())
        .bind(now)
        .bind(i64::from(outcome as i32))
        .bind(&note)
        .bind(incident_id)
        .execute(&mut *tx)
        .await?;
        record_event(
            &mut tx,
            incident_id,
            &caller.audit_name(),
            &format!("resolve:{}", outcome.as_str_name()),
            &note,
            now,
        )
        .await?;
        let out = incident_row(&mut tx, incident_id).await?;
        tx.commit().await?;
        if outcome == Outcome::Recovered && out.kind == AlertKind::StolenSighted as i32 {
            // A police officer's word: no owner PIN (the registry asks it of kiosks only).
            match self.registry.report_recovered(caller, &out.plate, "").await {
                Ok(()) | Err(RegistryError::FailedPrecondition(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(out)
    }

    async fn require_entitled(
        &self,
        caller: &Caller,
        incident_id: &str,
    ) -> Result<(), AlertingError> {
        if caller.role == greenplate_registry::Role::Admin
            || self.entitled(&caller.id, incident_id).await?
        {
            Ok(())
        } else {
            // Do not tell a unit whether an incident it may not see exists.
            Err(RegistryError::NotFound(format!("incident {incident_id}")).into())
        }
    }

    /// True if the unit may act on the incident: it was sent one of its alerts, or it is
    /// a command center.
    async fn entitled(&self, unit_id: &str, incident_id: &str) -> Result<bool, AlertingError> {
        if self.router.zones_read().is_command_unit(unit_id) {
            return Ok(true);
        }
        let row = sqlx::query(
            "SELECT 1 AS yes FROM alerts a JOIN alert_recipients r ON r.seq = a.seq \
             WHERE a.incident_id = $1 AND r.unit_id = $2 LIMIT 1",
        )
        .bind(incident_id)
        .bind(unit_id)
        .fetch_optional(self.db().pool())
        .await?;
        Ok(row.is_some())
    }
}

/// Opens the incident of a matter, or finds the unresolved one it already has; returns its
/// id. Part of the engine's commit.
pub(crate) async fn open_or_join(
    tx: &mut sqlx::AnyConnection,
    kind: AlertKind,
    bike_id: i64,
    dedup_key: &str,
    now: i64,
) -> Result<String, sqlx::Error> {
    let opened: Option<String> = sqlx::query(
        "INSERT INTO incidents (incident_id, kind, bike_id, dedup_key, state, opened_at_ms, updated_at_ms) \
         VALUES ($1, $2, $3, $4, 'open', $5, $5) \
         ON CONFLICT (dedup_key) WHERE state <> 'resolved' DO NOTHING RETURNING incident_id",
    )
    .bind(format!("inc-{}", hex::encode(rand::random::<[u8; 8]>())))
    .bind(i64::from(kind as i32))
    .bind(bike_id)
    .bind(dedup_key)
    .bind(now)
    .fetch_optional(&mut *tx)
    .await?
    .map(|r| r.try_get("incident_id"))
    .transpose()?;
    match opened {
        Some(id) => {
            record_event(tx, &id, "engine", "open", dedup_key, now).await?;
            Ok(id)
        }
        None => sqlx::query(
            "SELECT incident_id FROM incidents WHERE dedup_key = $1 AND state <> 'resolved'",
        )
        .bind(dedup_key)
        .fetch_one(&mut *tx)
        .await?
        .try_get("incident_id"),
    }
}

/// Marks an incident as updated by a new alert.
pub(crate) async fn touch(
    tx: &mut sqlx::AnyConnection,
    incident_id: &str,
    now: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE incidents SET updated_at_ms = $1 WHERE incident_id = $2")
        .bind(now)
        .bind(incident_id)
        .execute(tx)
        .await?;
    Ok(())
}

pub(crate) async fn record_event(
    conn: &mut sqlx::AnyConnection,
    incident_id: &str,
    actor: &str,
    action: &str,
    note: &str,
    now: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO incident_events (incident_id, at_ms, actor, action, note) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(incident_id)
    .bind(now)
    .bind(actor)
    .bind(action)
    .bind(note)
    .execute(conn)
    .await?;
    Ok(())
}

/// An incident as the API shows it (the kind of the rule that opened it; the plate of its
/// bike, empty for an incident with no bike: a reader gone offline is stored with
/// `bike_id` 0, so the join must not drop it).
async fn incident_row(
    conn: &mut sqlx::AnyConnection,
    incident_id: &str,
) -> Result<Incident, AlertingError> {
    let row = sqlx::query(
        "SELECT i.incident_id, i.kind, i.state, i.opened_at_ms, i.updated_at_ms, \
                i.acknowledged_by, i.resolved_by, i.outcome, i.note, b.plate \
         FROM incidents i LEFT JOIN bikes b ON b.bike_id = i.bike_id WHERE i.incident_id = $1",
    )
    .bind(incident_id)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| RegistryError::NotFound(format!("incident {incident_id}")))?;
    let state: String = row.try_get("state")?;
    Ok(Incident {
        incident_id: row.try_get("incident_id")?,
        kind: row.try_get::<i64, _>("kind")? as i32,
        state: match state.as_str() {
            "open" => IncidentState::Open,
            "acknowledged" => IncidentState::Acknowledged,
            "resolved" => IncidentState::Resolved,
            _ => IncidentState::Unspecified,
        } as i32,
        plate: row
            .try_get::<Option<String>, _>("plate")?
            .unwrap_or_default(),
        opened_at_ms: row.try_get("opened_at_ms")?,
        updated_at_ms: row.try_get("updated_at_ms")?,
        acknowledged_by: row
            .try_get::<Option<String>, _>("acknowledged_by")?
            .unwrap_or_default(),
        resolved_by: row
            .try_get::<Option<String>, _>("resolved_by")?
            .unwrap_or_default(),
        outcome: row.try_get::<Option<i64>, _>("outcome")?.unwrap_or(0) as i32,
        note: row.try_get("note")?,
    })
}
