//! The alerting engine: one task, the batch loop that turns sightings of flagged bikes into
//! alerts.
//!
//! For each batch it drains from its queue: run the [`rules`](crate::rules) (which also
//! [`route`](crate::route) what fired), commit every alert to the
//! [`log`](crate::log) in one transaction (group commit; each finds or opens its
//! [incident](crate::incidents)), and only after the commit hand them to the
//! [`hub`](crate::hub). A failed commit is retried until it succeeds or the service stops:
//! alerts are not dropped.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::error::AlertingError;
use crate::log;
use crate::rules::{self, CanaryMissed, ReaderOffline, Sighted, Work};
use crate::state::Alerting;
use greenplate_registry::{Reader, TagId};

/// Sightings waiting for the engine. Only sightings of flagged bikes are sent, so this is
/// generous; a full queue makes ingest wait (backpressure), never drop.
const QUEUE: usize = 4096;
/// Sightings folded into one transaction at most.
const MAX_BATCH: usize = 256;

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
            _ => unreachable!("sent a sighting"),
        })
    }

    /// Queues a reader-offline alert (to command centers). Fails only after shutdown.
    pub async fn reader_offline(&self, o: ReaderOffline) -> Result<(), ReaderOffline> {
        self.tx
            .send(Work::ReaderOffline(o))
            .await
            .map_err(|e| match e.0 {
                Work::ReaderOffline(o) => o,
                _ => unreachable!("sent a reader-offline"),
            })
    }

    /// Queues a canary-missed alert (to command centers). `reader` is the canary's last
    /// reader, if it was ever seen. Fails only after shutdown.
    pub(crate) async fn canary_missed(
        &self,
        tag: TagId,
        reader: Option<Arc<Reader>>,
        last_seen_ms: i64,
    ) -> Result<(), ()> {
        let reader = reader
            .unwrap_or_else(|| Arc::new(Reader::new(String::new(), String::new(), 0.0, 0.0, "")));
        self.tx
            .send(Work::CanaryMissed(CanaryMissed {
                tag,
                reader,
                last_seen_ms,
                detected_at: std::time::Instant::now(),
            }))
            .await
            .map_err(|_| ())
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

async fn process(alerting: &Alerting, batch: &[Work]) -> Result<(), AlertingError> {
    let facts = rules::facts_for(alerting, batch).await?;
    let mut pending = Vec::with_capacity(batch.len());
    for work in batch {
        rules::evaluate(alerting, &facts, work, &mut pending);
    }
    if pending.is_empty() {
        return Ok(());
    }
    let received: Vec<_> = pending.iter().map(|p| p.received_at).collect();
    let committed = log::commit(alerting, pending).await?;
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
            alerting.hub.publish(logged);
        }
    }
    for at in received {
        alerting.alert_latency.observe(at.elapsed().as_secs_f64());
    }
    Ok(())
}
