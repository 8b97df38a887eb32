//! The alerting engine: one task that turns sightings of stolen bikes into alerts.
//!
//! For each batch of sightings it drains from its queue: find the open theft (the bike may
//! have been recovered since ingest looked), find or open the theft's incident, route to the
//! units whose zones contain the reader, then append every alert and its recipients to the
//! log in one transaction (group commit), and only after the commit hand them to the hub.
//! A failed commit is retried until it succeeds or the service stops: alerts are not dropped.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use greenplate_proto::v1::{Alert, AlertKind};
use greenplate_registry::{Reader, TagId, now_ms};
use sqlx::Row;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::error::AlertingError;
use crate::store::{Alerting, LoggedAlert};

/// Sightings waiting for the engine. Only sightings of flagged bikes are sent, so this is
/// generous; a full queue makes ingest wait (backpressure), never drop.
const QUEUE: usize = 4096;
/// Sightings folded into one transaction at most.
const MAX_BATCH: usize = 256;

/// A sighting of a flagged bike, from ingest.
#[derive(Debug, Clone)]
pub struct Sighted {
    pub bike_id: i64,
    pub tag: TagId,
    pub reader: Arc<Reader>,
    pub seen_at_ms: i64,
}

/// Where ingest submits sightings. Cheap to clone.
#[derive(Debug, Clone)]
pub struct EngineHandle {
    tx: mpsc::Sender<Sighted>,
}

impl EngineHandle {
    /// Queues a sighting; waits while the engine is behind. Fails only after shutdown.
    pub async fn submit(&self, s: Sighted) -> Result<(), Sighted> {
        self.tx.send(s).await.map_err(|e| e.0)
    }
}

/// Starts the engine on `tracker`; it drains its queue and stops after `shutdown`.
pub fn spawn(
    alerting: Arc<Alerting>,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) -> EngineHandle {
    let (tx, rx) = mpsc::channel(QUEUE);
    tracker.spawn(run(alerting, rx, shutdown));
    EngineHandle { tx }
}

async fn run(
    alerting: Arc<Alerting>,
    mut rx: mpsc::Receiver<Sighted>,
    shutdown: CancellationToken,
) {
    let mut incidents: HashMap<i64, String> = HashMap::new();
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        let n = tokio::select! {
            n = rx.recv_many(&mut batch, MAX_BATCH) => n,
            _ = shutdown.cancelled() => {
                rx.close();
                rx.recv_many(&mut batch, usize::MAX).await
            }
        };
        if n == 0 {
            break;
        }
        loop {
            match process(&alerting, &mut incidents, &batch).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::error!(error = %e, sightings = batch.len(), "Alert commit failed; retrying.");
                    incidents.clear();
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        batch.clear();
    }
    tracing::debug!("Alerting engine stopped.");
}

async fn process(
    alerting: &Alerting,
    incidents: &mut HashMap<i64, String>,
    batch: &[Sighted],
) -> Result<(), AlertingError> {
    let registry = alerting.registry();
    let mut pending = Vec::with_capacity(batch.len());
    for s in batch {
        let Some(report_id) = registry.open_theft_report(s.bike_id).await? else {
            continue; // recovered since ingest looked
        };
        let (plate, tag_id) = registry.bike_plate_and_tag(s.bike_id).await?;
        let recipients = alerting.units_covering(s.reader.lat, s.reader.lon);
        pending.push((s, report_id, plate, tag_id, recipients));
    }
    if pending.is_empty() {
        return Ok(());
    }
    let now = now_ms();
    let mut tx = registry.db().begin_write().await?;
    let mut committed = Vec::with_capacity(pending.len());
    for (s, report_id, plate, tag_id, recipients) in pending {
        let incident_id = match incidents.get(&report_id) {
            Some(id) => id.clone(),
            None => {
                sqlx::query(
                    "INSERT INTO incidents (incident_id, bike_id, report_id, state, opened_at_ms, updated_at_ms) \
                     VALUES ($1, $2, $3, 'open', $4, $4) ON CONFLICT (report_id) DO NOTHING",
                )
                .bind(format!("inc-{}", hex::encode(rand::random::<[u8; 8]>())))
                .bind(s.bike_id)
                .bind(report_id)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                sqlx::query("SELECT incident_id FROM incidents WHERE report_id = $1")
                    .bind(report_id)
                    .fetch_one(&mut *tx)
                    .await?
                    .try_get("incident_id")?
            }
        };
        let mut alert = Alert {
            seq: 0,
            alert_id: format!("al-{}", hex::encode(rand::random::<[u8; 8]>())),
            kind: AlertKind::StolenSighted as i32,
            plate,
            tag_id,
            reader_id: s.reader.id.clone(),
            lat: s.reader.lat,
            lon: s.reader.lon,
            seen_at_ms: s.seen_at_ms,
            incident_id: incident_id.clone(),
        };
        let seq: i64 = sqlx::query(
            "INSERT INTO alerts (alert_id, kind, plate, tag_id, reader_id, lat, lon, seen_at_ms, incident_id, created_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING seq",
        )
        .bind(&alert.alert_id)
        .bind(i64::from(alert.kind))
        .bind(&alert.plate)
        .bind(&alert.tag_id)
        .bind(&alert.reader_id)
        .bind(alert.lat)
        .bind(alert.lon)
        .bind(alert.seen_at_ms)
        .bind(&alert.incident_id)
        .bind(now)
        .fetch_one(&mut *tx)
        .await?
        .try_get("seq")?;
        alert.seq = seq as u64;
        for unit in &recipients {
            sqlx::query("INSERT INTO alert_recipients (unit_id, seq) VALUES ($1, $2)")
                .bind(unit)
                .bind(seq)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query("UPDATE incidents SET updated_at_ms = $1 WHERE incident_id = $2")
            .bind(now)
            .bind(&incident_id)
            .execute(&mut *tx)
            .await?;
        committed.push((report_id, LoggedAlert { alert, recipients }));
    }
    tx.commit().await?;
    for (report_id, logged) in committed {
        tracing::info!(
            seq = logged.alert.seq,
            plate = %logged.alert.plate,
            reader = %logged.alert.reader_id,
            units = logged.recipients.len(),
            "Stolen bike sighted."
        );
        incidents.insert(report_id, logged.alert.incident_id.clone());
        alerting.publish(logged);
    }
    Ok(())
}
