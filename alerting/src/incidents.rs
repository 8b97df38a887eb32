//! Incidents: one per matter (a theft report, an armed bike, a revoked or cloned tag, a
//! reader gone offline), named by a dedup key so that successive sightings of one matter are
//! updates of one incident. Their lifecycle: opened by the engine, acknowledged by a unit,
//! resolved with an outcome (`Recovered` takes the bike off the hotlist). Each step is an
//! event in `incident_events`. A unit may act on an incident only if it was sent one of its
//! alerts, or if it is a command center.

use greenplate_proto::v1::{
    Alert, AlertKind, Incident, IncidentDetail, IncidentEvent, IncidentState, Outcome, TrackPoint,
};
use greenplate_registry::{Caller, RegistryError, now_ms};
use sqlx::Row;

use crate::error::AlertingError;
use crate::schema::{ALERT_COLUMNS, alert_from_row};
use crate::state::Alerting;

/// Steps of an incident's history returned at most.
pub const MAX_EVENTS: i64 = 2000;

/// Which incident [`Alerting::incident_detail`] is asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IncidentKey {
    Id(String),
    /// The bike's unresolved theft incident.
    Plate(String),
}

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

/// A theft reported and not seen since: an unresolved incident with no alert yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaitingTheft {
    pub incident_id: String,
    pub plate: String,
    pub opened_at_ms: i64,
}

impl Alerting {
    /// Unresolved incidents with no alert yet (a theft reported, the bike not seen since),
    /// newest first, at most `limit`: the command center's "waiting for a sighting" list,
    /// which [`Alerting::open_incidents`] cannot show (it lists incidents by their latest
    /// alert).
    pub async fn waiting_thefts(&self, limit: i64) -> Result<Vec<WaitingTheft>, AlertingError> {
        let rows = sqlx::query(
            "SELECT i.incident_id, i.opened_at_ms, b.plate FROM incidents i \
             JOIN bikes b ON b.bike_id = i.bike_id \
             WHERE i.state <> 'resolved' \
               AND NOT EXISTS (SELECT 1 FROM alerts a WHERE a.incident_id = i.incident_id) \
             ORDER BY i.opened_at_ms DESC, i.incident_id LIMIT $1",
        )
        .bind(limit)
        .fetch_all(self.db().pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(WaitingTheft {
                    incident_id: r.try_get("incident_id")?,
                    plate: r.try_get("plate")?,
                    opened_at_ms: r.try_get("opened_at_ms")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(Into::into)
    }

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

    /// The latest escalations and rejected hits (misread, suspected clone), newest first,
    /// at most `limit`: the command center's panels (command centers receive every alert).
    pub async fn notable_alerts(&self, limit: i64) -> Result<Vec<Alert>, AlertingError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {ALERT_COLUMNS} FROM alerts a WHERE a.escalation > 0 OR a.kind = 11 \
             ORDER BY a.seq DESC LIMIT $1"
        )))
        .bind(limit)
        .fetch_all(self.db().pool())
        .await?;
        rows.iter()
            .map(|r| alert_from_row(r).map(|a| self.with_cameras(a)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(Into::into)
    }

    /// A theft report's case as its owner sees it: the incident's state and when the bike
    /// was last seen (an alert), if the incident is open.
    pub async fn theft_case(
        &self,
        report_id: i64,
    ) -> Result<Option<(String, Option<i64>)>, AlertingError> {
        let row = sqlx::query(
            "SELECT i.state, (SELECT MAX(a.seen_at_ms) FROM alerts a \
                              WHERE a.incident_id = i.incident_id) AS last_seen \
             FROM incidents i WHERE i.dedup_key = $1 ORDER BY i.opened_at_ms DESC LIMIT 1",
        )
        .bind(format!("theft:{report_id}"))
        .fetch_optional(self.db().pool())
        .await?;
        row.map(|r| {
            Ok::<_, sqlx::Error>((
                r.try_get("state")?,
                r.try_get::<Option<i64>, _>("last_seen")?,
            ))
        })
        .transpose()
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

    /// An incident and its history, oldest step first (at most [`MAX_EVENTS`]). `key` is
    /// an incident id, or a plate for the bike's unresolved theft incident. The entitlement
    /// of [`Alerting::acknowledge`]; every request, answered or refused, is in the audit log.
    pub async fn incident_detail(
        &self,
        caller: &Caller,
        key: &IncidentKey,
        reason: &str,
    ) -> Result<IncidentDetail, AlertingError> {
        let detail = self.incident_detail_unaudited(caller, key).await;
        let subject = match key {
            IncidentKey::Id(id) => format!("incident {id}"),
            IncidentKey::Plate(p) => format!("theft incident of plate {p}"),
        };
        self.registry
            .audit_lookup(caller, "get_incident", &subject, detail.is_ok(), reason)
            .await?;
        detail
    }

    async fn incident_detail_unaudited(
        &self,
        caller: &Caller,
        key: &IncidentKey,
    ) -> Result<IncidentDetail, AlertingError> {
        let incident_id = match key {
            IncidentKey::Id(id) => id.clone(),
            IncidentKey::Plate(plate) => {
                let plate = greenplate_registry::validate::plate("plate", plate)?;
                sqlx::query(
                    "SELECT i.incident_id FROM incidents i                      JOIN theft_reports t ON i.dedup_key = 'theft:' || CAST(t.report_id AS TEXT)                      JOIN bikes b ON b.bike_id = t.bike_id                      WHERE b.plate = $1 AND i.state <> 'resolved'                      ORDER BY i.opened_at_ms DESC LIMIT 1",
                )
                .bind(&plate)
                .fetch_optional(self.db().pool())
                .await?
                .map(|r| r.try_get::<String, _>("incident_id"))
                .transpose()?
                .ok_or_else(|| {
                    RegistryError::NotFound(format!("an unresolved theft incident of {plate}"))
                })?
            }
        };
        self.require_entitled(caller, &incident_id).await?;
        let mut conn = self.db().pool().acquire().await?;
        let incident = incident_row(&mut conn, &incident_id).await?;
        let rows = sqlx::query(
            "SELECT at_ms, actor, action, note, tag_id, reader_id, lat, lon, last_seen_ms,                     reads, peak_rssi_dbm              FROM incident_events WHERE incident_id = $1 ORDER BY event_id LIMIT $2",
        )
        .bind(&incident_id)
        .bind(MAX_EVENTS)
        .fetch_all(&mut *conn)
        .await?;
        let events = rows
            .iter()
            .map(|r| {
                let at_ms: i64 = r.try_get("at_ms")?;
                let pass = match r.try_get::<Option<String>, _>("reader_id")? {
                    Some(reader_id) => Some(TrackPoint {
                        reader_id,
                        lat: r.try_get::<Option<f64>, _>("lat")?.unwrap_or_default(),
                        lon: r.try_get::<Option<f64>, _>("lon")?.unwrap_or_default(),
                        first_seen_ms: at_ms,
                        last_seen_ms: r
                            .try_get::<Option<i64>, _>("last_seen_ms")?
                            .unwrap_or(at_ms),
                        reads: r
                            .try_get::<Option<i64>, _>("reads")?
                            .map_or(0, |n| u32::try_from(n).unwrap_or(u32::MAX)),
                        peak_rssi_dbm: r
                            .try_get::<Option<i64>, _>("peak_rssi_dbm")?
                            .map_or(0, |n| i32::try_from(n).unwrap_or(i32::MIN)),
                        tag_id: r
                            .try_get::<Option<String>, _>("tag_id")?
                            .unwrap_or_default(),
                    }),
                    None => None,
                };
                Ok(IncidentEvent {
                    at_ms,
                    actor: r.try_get("actor")?,
                    action: r.try_get("action")?,
                    note: r.try_get("note")?,
                    pass,
                    cameras: Vec::new(),
                })
            })
            .collect::<Result<Vec<IncidentEvent>, sqlx::Error>>()?;
        let events = events
            .into_iter()
            .map(|mut e| {
                if let Some(p) = &e.pass {
                    e.cameras = self.camera_links(&p.reader_id, e.at_ms);
                }
                e
            })
            .collect();
        let sees_all = caller.role == greenplate_registry::Role::Admin
            || self.router.zones_read().is_command_unit(&caller.id);
        let alerts = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {ALERT_COLUMNS} FROM alerts a WHERE a.incident_id = $1 \
             AND ($2 = 1 OR EXISTS (SELECT 1 FROM alert_recipients r \
                                    WHERE r.seq = a.seq AND r.unit_id = $3)) \
             ORDER BY a.seq LIMIT $4"
        )))
        .bind(&incident_id)
        .bind(i64::from(sees_all))
        .bind(&caller.id)
        .bind(MAX_EVENTS)
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(|r| alert_from_row(r).map(|a| self.with_cameras(a)))
        .collect::<Result<_, sqlx::Error>>()?;
        Ok(IncidentDetail {
            incident: Some(incident),
            events,
            alerts,
        })
    }

    pub(crate) async fn require_entitled(
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

/// Records a pass the incident's bike made before its theft was reported (look-back): a
/// `sighted_earlier` step at the pass's first read.
pub(crate) async fn record_pass(
    conn: &mut sqlx::AnyConnection,
    incident_id: &str,
    pass: &crate::history::Pass,
    lat: f64,
    lon: f64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO incident_events (incident_id, at_ms, actor, action, note, tag_id,                                       reader_id, lat, lon, last_seen_ms, reads, peak_rssi_dbm)          VALUES ($1, $2, 'engine', 'sighted_earlier', '', $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(incident_id)
    .bind(pass.first_seen_ms)
    .bind(pass.tag.to_string())
    .bind(pass.reader_id.to_string())
    .bind(lat)
    .bind(lon)
    .bind(pass.last_seen_ms)
    .bind(i64::from(pass.reads))
    .bind(i64::from(pass.peak_rssi_dbm))
    .execute(conn)
    .await?;
    Ok(())
}

/// An incident as the API shows it (the kind of the rule that opened it; the plate of its
/// bike, empty for an incident with no bike: a reader gone offline is stored with
/// `bike_id` 0, so the join must not drop it).
pub(crate) async fn incident_row(
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
