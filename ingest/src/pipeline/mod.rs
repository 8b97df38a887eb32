//! The ingest pipeline: reader messages in, sightings of flagged bikes out to alerting.
//!
//! ```text
//! Inbound (topic, payload) --shard by topic--> worker: open -> decode -> hot index ->
//!   clone watch (impossible speed?) -> flagged (stolen, armed, revoked) or clone? -> engine
//! ```
//! Messages are sharded by topic over a few workers, so one reader's batches stay in order
//! (its seq check relies on that) while different readers are handled in parallel. Nothing
//! here touches the database: the hot index answers every lookup from memory.

pub mod decode;
pub mod open;
#[cfg(test)]
mod tests;

use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::time::{Duration, Instant};

use greenplate_alerting::{CloneWatch, EngineHandle, Sighted};
use greenplate_registry::{HotIndex, Readers, now_ms};
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

use crate::broker::Inbound;
use crate::metrics::Metrics;

/// Messages queued per worker before the broker link waits (backpressure into the broker).
const WORKER_QUEUE: usize = 1024;

/// What the workers need.
#[derive(Debug, Clone)]
pub struct Context {
    pub readers: Arc<Readers>,
    pub index: Arc<HotIndex>,
    pub engine: EngineHandle,
    pub clones: Arc<CloneWatch>,
    pub metrics: Arc<Metrics>,
    pub max_clock_skew_ms: i64,
}

/// The pipeline's entrance. Dropping every clone lets the workers drain and stop.
#[derive(Debug, Clone)]
pub struct Input {
    shards: Vec<mpsc::Sender<Inbound>>,
    hasher: RandomState,
}

impl Input {
    /// Queues a message on its topic's worker; waits while that worker is behind.
    pub async fn send(&self, msg: Inbound) -> Result<(), Inbound> {
        let i = (self.hasher.hash_one(&msg.topic) % self.shards.len() as u64) as usize;
        self.shards[i].send(msg).await.map_err(|e| e.0)
    }
}

/// Starts `workers` workers on `tracker`.
pub fn spawn(ctx: Context, workers: usize, tracker: &TaskTracker) -> Input {
    let shards = (0..workers.max(1))
        .map(|_| {
            let (tx, rx) = mpsc::channel(WORKER_QUEUE);
            tracker.spawn(worker(ctx.clone(), rx));
            tx
        })
        .collect();
    Input {
        shards,
        hasher: RandomState::new(),
    }
}

async fn worker(ctx: Context, mut rx: mpsc::Receiver<Inbound>) {
    let mut log = RateLimitedLog::new(Duration::from_secs(10));
    while let Some(msg) = rx.recv().await {
        handle(&ctx, &mut log, &msg).await;
    }
}

/// Handles one reader message end to end.
pub(crate) async fn handle(ctx: &Context, log: &mut RateLimitedLog, msg: &Inbound) {
    let (reader, batch) = match open::open(&ctx.readers, &msg.topic, &msg.payload) {
        Ok(ok) => ok,
        Err(rejection) => {
            let reason = rejection.reason();
            ctx.metrics.reject_batch(reason);
            if log.allow(reason) {
                tracing::warn!(
                    topic = %String::from_utf8_lossy(&msg.topic),
                    reason,
                    error = %rejection,
                    "Dropped a reader message (further drops for this reason are counted, not logged, for 10 s)."
                );
            }
            return;
        }
    };
    ctx.metrics.batches_accepted.inc();
    let now = now_ms();
    let mut accepted = 0;
    for sighting in &batch.sightings {
        let read = match decode::decode(sighting, now, ctx.max_clock_skew_ms) {
            Ok(r) => r,
            Err(rejection) => {
                ctx.metrics.reject_sighting(rejection.reason());
                if log.allow(rejection.reason()) {
                    tracing::warn!(reader = %reader.id, reason = rejection.reason(), "Dropped a sighting.");
                }
                continue;
            }
        };
        accepted += 1;
        let Some(state) = ctx.index.lookup(read.tag) else {
            ctx.metrics.sightings_unregistered.inc();
            continue;
        };
        let clone = ctx.clones.observe(read.tag, &reader, read.first_seen_ms);
        if clone.is_some() {
            ctx.metrics.clone_suspects.inc();
        }
        if Sighted::flagged(state) || clone.is_some() {
            if state.stolen() {
                ctx.metrics.stolen_sightings.inc();
            }
            ctx.metrics.flagged_sightings.inc();
            let sighted = Sighted {
                bike_id: state.bike_id,
                tag: read.tag,
                state,
                reader: reader.clone(),
                seen_at_ms: read.first_seen_ms,
                clone,
            };
            if ctx.engine.submit(sighted).await.is_err() {
                tracing::error!(reader = %reader.id, "Alerting engine has stopped; sighting not alerted.");
            }
        }
    }
    ctx.metrics.sightings_accepted.inc_by(accepted);
    reader.record_batch(accepted as usize);
}

/// Logs a given reason at most once per period; the metrics count every occurrence.
#[derive(Debug)]
pub(crate) struct RateLimitedLog {
    period: Duration,
    last: Vec<(&'static str, Instant)>,
}

impl RateLimitedLog {
    pub(crate) fn new(period: Duration) -> Self {
        Self {
            period,
            last: Vec::new(),
        }
    }

    pub(crate) fn allow(&mut self, reason: &'static str) -> bool {
        let now = Instant::now();
        match self.last.iter_mut().find(|(r, _)| *r == reason) {
            Some((_, at)) if now.duration_since(*at) < self.period => false,
            Some((_, at)) => {
                *at = now;
                true
            }
            None => {
                self.last.push((reason, now));
                true
            }
        }
    }
}
