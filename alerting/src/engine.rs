//! The alerting engine: one task that turns sightings of stolen bikes into alerts.
//!
//! For each batch of sightings it drains from its queue: run the rules (stolen, armed and
//! moving, revoked tag, cloned tag; inside a watch zone any of them becomes an urgent
//! watch-zone alert),
//! find or open the matter's incident, route to the units whose patrol zones contain the
//! reader (and every command center), then append every alert and its recipients to the log
//! in one transaction (group commit), and only after the commit hand them to the hub.
//! A failed commit is retried until it succeeds or the service stops: alerts are not dropped.

use std::sync::Arc;
use std::time::Duration;

use greenplate_proto::v1::{Alert, AlertKind};
use greenplate_registry::{Reader, TagId, TagState, now_ms};
use sqlx::Row;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::clone::CloneEvidence;
use crate::error::AlertingError;
use crate::store::{Alerting, LoggedAlert, record_event};

/// Sightings waiting for the engine. Only sightings of flagged bikes are sent, so this is
/// generous; a full queue makes ingest wait (backpressure), never drop.
const QUEUE: usize = 4096;
/// Sightings folded into one transaction at most.
const MAX_BATCH: usize = 256;

/// A sighting of a flagged tag (stolen, armed or revoked), from ingest.
#[derive(Debug, Clone)]
pub struct Sighted {
    pub bike_id: i64,
    pub tag: TagId,
    /// The tag's state when ingest looked it up.
    pub state: TagState,
    pub reader: Arc<Reader>,
    pub seen_at_ms: i64,
    /// Set when the clone rule's memory contradicts this sighting.
    pub clone: Option<CloneEvidence>,
    /// When ingest received the message (alert latency is measured from here to the hub).
    pub received_at: std::time::Instant,
    /// Held until the sighting's alerts are committed, then dropped (ingest uses it to
    /// acknowledge the message to an external broker only then).
    pub hold: Option<Arc<dyn std::any::Any + Send + Sync>>,
}

impl Sighted {
    /// True if a rule on the tag's state may care about this tag.
    pub fn flagged(state: TagState) -> bool {
        state.stolen() || state.armed() || state.revoked()
    }
}

/// A reader that went offline: silent past the configured time, or its last will.
#[derive(Debug, Clone)]
pub struct ReaderOffline {
    pub reader: Arc<Reader>,
    /// Its last accepted batch or status, Unix ms (0: never since the service started).
    pub last_seen_ms: i64,
    /// Why it is thought offline, for the log: "silent" or "last will".
    pub why: &'static str,
    pub detected_at: std::time::Instant,
}

/// What the engine is given.
#[derive(Debug)]
enum Work {
    Sighted(Sighted),
    ReaderOffline(ReaderOffline),
}

/// Where ingest submits sightings. Cheap to clone.
#[derive(Debug, Clone)]
pub struct EngineHandle {
    tx: mpsc::Sender<Work>,
}

impl EngineHandle {
    /// Queues a sighting; waits while the engine is behind. Fails only after shutdown.
    pub async fn submit(&self, s: Sighted) -> Result<(), Sighted> {
        self.tx.send(Work::Sighted(s)).await.map_err(|e| match e.0 {
            Work::Sighted(s) => s,
            Work::ReaderOffline(_) => unreachable!("sent a sighting"),
        })
    }

    /// Queues a reader-offline alert (to command centers). Fails only after shutdown.
    pub async fn reader_offline(&self, o: ReaderOffline) -> Result<(), ReaderOffline> {
        self.tx
            .send(Work::ReaderOffline(o))
            .await
            .map_err(|e| match e.0 {
                Work::ReaderOffline(o) => o,
                Work::Sighted(_) => unreachable!("sent a reader-offline"),
            })
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

async fn run(alerting: Arc<Alerting>, mut rx: mpsc::Receiver<Work>, shutdown: CancellationToken) {
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
            match process(&alerting, &batch).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::error!(error = %e, sightings = batch.len(), "Alert commit failed; retrying.");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        batch.clear();
    }
    tracing::debug!("Alerting engine stopped.");
}

/// One alert to write: which rule, which matter (incident), where.
struct Pending<'a> {
    bike_id: i64,
    /// The tag seen; empty for a reader alert.
    tag: String,
    reader: &'a Arc<Reader>,
    seen_at_ms: i64,
    received_at: std::time::Instant,
    /// The rule that fired.
    base: AlertKind,
    /// Names the matter, so successive sightings share one incident.
    dedup_key: String,
    plate: String,
    watch_zone: Option<String>,
    recipients: Vec<String>,
}

/// The rules, in order: a stolen bike (with an open theft report), an armed bike that moves,
/// a revoked tag. One sighting can fire several.
async fn rules(
    alerting: &Alerting,
    s: &Sighted,
) -> Result<Vec<(AlertKind, String)>, AlertingError> {
    let mut fired = Vec::new();
    if s.state.stolen() {
        // The bike may have been recovered since ingest looked.
        if let Some(report) = alerting.registry().open_theft_report(s.bike_id).await? {
            fired.push((AlertKind::StolenSighted, format!("theft:{report}")));
        }
    }
    if s.state.armed() && !s.state.stolen() {
        fired.push((AlertKind::ArmedMoved, format!("armed:{}", s.bike_id)));
    }
    if s.state.revoked() {
        fired.push((AlertKind::RevokedTagSeen, format!("revoked:{}", s.tag)));
    }
    if let Some(e) = &s.clone {
        tracing::info!(
            tag = %s.tag,
            reader = %s.reader.id,
            other_reader = %e.other_reader.id,
            km = e.distance_km,
            kmh = e.speed_kmh,
            "Suspected cloned tag."
        );
        fired.push((AlertKind::CloneSuspected, format!("clone:{}", s.tag)));
    }
    Ok(fired)
}

async fn process(alerting: &Alerting, batch: &[Work]) -> Result<(), AlertingError> {
    let registry = alerting.registry();
    let mut pending = Vec::with_capacity(batch.len());
    for work in batch {
        let s = match work {
            Work::Sighted(s) => s,
            Work::ReaderOffline(o) => {
                tracing::warn!(reader = %o.reader.id, why = o.why, last_seen_ms = o.last_seen_ms, "Reader offline.");
                pending.push(Pending {
                    bike_id: 0,
                    tag: String::new(),
                    reader: &o.reader,
                    seen_at_ms: if o.last_seen_ms > 0 {
                        o.last_seen_ms
                    } else {
                        now_ms()
                    },
                    received_at: o.detected_at,
                    base: AlertKind::ReaderOffline,
                    dedup_key: format!("reader-offline:{}", o.reader.id),
                    plate: String::new(),
                    watch_zone: None,
                    recipients: alerting.command_units(),
                });
                continue;
            }
        };
        let fired = rules(alerting, s).await?;
        if fired.is_empty() {
            continue;
        }
        let (plate, _) = registry.bike_plate_and_tag(s.bike_id).await?;
        let recipients = alerting.units_for(&s.reader);
        let watch_zone = alerting.route(&s.reader).watch_zone.clone();
        for (base, dedup_key) in fired {
            pending.push(Pending {
                bike_id: s.bike_id,
                tag: s.tag.to_string(),
                reader: &s.reader,
                seen_at_ms: s.seen_at_ms,
                received_at: s.received_at,
                base,
                dedup_key,
                plate: plate.clone(),
                watch_zone: watch_zone.clone(),
                recipients: recipients.clone(),
            });
        }
    }
    if pending.is_empty() {
        return Ok(());
    }
    let now = now_ms();
    let mut tx = registry.db().begin_write().await?;
    let mut committed = Vec::with_capacity(pending.len());
    let mut received = Vec::with_capacity(pending.len());
    for p in pending {
        received.push(p.received_at);
        let opened: Option<String> = sqlx::query(
            "INSERT INTO incidents (incident_id, kind, bike_id, dedup_key, state, opened_at_ms, updated_at_ms) \
             VALUES ($1, $2, $3, $4, 'open', $5, $5) \
             ON CONFLICT (dedup_key) WHERE state <> 'resolved' DO NOTHING RETURNING incident_id",
        )
        .bind(format!("inc-{}", hex::encode(rand::random::<[u8; 8]>())))
        .bind(i64::from(p.base as i32))
        .bind(p.bike_id)
        .bind(&p.dedup_key)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?
        .map(|r| r.try_get("incident_id"))
        .transpose()?;
        let incident_id: String = match opened {
            Some(id) => {
                record_event(&mut tx, &id, "engine", "open", &p.dedup_key, now).await?;
                id
            }
            None => sqlx::query(
                "SELECT incident_id FROM incidents WHERE dedup_key = $1 AND state <> 'resolved'",
            )
            .bind(&p.dedup_key)
            .fetch_one(&mut *tx)
            .await?
            .try_get("incident_id")?,
        };
        let (kind, priority) = match &p.watch_zone {
            Some(_) => (AlertKind::WatchZone, 2u32),
            None => (p.base, 1u32),
        };
        let mut alert = Alert {
            seq: 0,
            alert_id: format!("al-{}", hex::encode(rand::random::<[u8; 8]>())),
            kind: kind as i32,
            plate: p.plate,
            tag_id: p.tag,
            reader_id: p.reader.id.clone(),
            lat: p.reader.lat,
            lon: p.reader.lon,
            seen_at_ms: p.seen_at_ms,
            incident_id: incident_id.clone(),
            priority,
            zone_id: p.watch_zone.unwrap_or_default(),
        };
        let seq: i64 = sqlx::query(
            "INSERT INTO alerts (alert_id, kind, priority, plate, tag_id, reader_id, lat, lon, \
                                 seen_at_ms, incident_id, zone_id, created_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING seq",
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
        .fetch_one(&mut *tx)
        .await?
        .try_get("seq")?;
        alert.seq = seq as u64;
        for unit in &p.recipients {
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
        committed.push(LoggedAlert {
            alert,
            recipients: p.recipients,
        });
    }
    if !alerting.engine_publishes && !committed.is_empty() {
        // Delivered on commit to every node's log follower (this one's too).
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(crate::follow::CHANNEL)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    for logged in committed {
        tracing::info!(
            seq = logged.alert.seq,
            kind = logged.alert.kind().as_str_name(),
            plate = %logged.alert.plate,
            reader = %logged.alert.reader_id,
            units = logged.recipients.len(),
            "Alert."
        );
        if alerting.engine_publishes {
            alerting.publish(logged);
        }
    }
    for at in received {
        alerting.alert_latency.observe(at.elapsed().as_secs_f64());
    }
    Ok(())
}
