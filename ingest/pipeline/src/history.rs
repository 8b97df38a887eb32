//! Stage 5, the history writer: closed passes to the pass history, in batches, off the alert
//! path.
//!
//! Workers hand closed passes to one writer over a bounded queue, after they have handed
//! that message's sightings to alerting, so alerts never wait for history. The writer folds
//! whatever is queued into one transaction (up to `batch` passes) and retries a failed
//! write until it succeeds or the service stops: passes are not dropped. When the database
//! is slower than the readers, the queue fills and workers wait for room (backpressure into
//! the broker); both the waits and the queue depth are in the metrics.

use std::sync::Arc;
use std::time::{Duration, Instant};

use greenplate_alerting::{History, Pass};
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

use crate::metrics::Metrics;

/// How the writer batches.
#[derive(Debug, Clone, Copy)]
pub struct StoreConfig {
    /// Closed passes queued for the writer at most.
    pub queue: usize,
    /// Passes per transaction at most.
    pub batch: usize,
    /// How long the writer waits for a batch to fill before writing what it has.
    pub linger: Duration,
}

/// A closed pass and when it closed (for the store-lag metric).
#[derive(Debug)]
struct Closed {
    pass: Pass,
    at: Instant,
}

/// Where workers send closed passes. Cheap to clone; the writer stops once every clone is
/// dropped and the queue is written.
#[derive(Debug, Clone)]
pub struct StoreInput {
    tx: mpsc::Sender<Closed>,
    metrics: Arc<Metrics>,
}

impl StoreInput {
    /// Queues closed passes, waiting for room when the writer is behind.
    pub async fn send(&self, passes: &mut Vec<Pass>) {
        let now = Instant::now();
        for pass in passes.drain(..) {
            let item = Closed { pass, at: now };
            match self.tx.try_send(item) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(item)) => {
                    self.metrics.history_backpressure.inc();
                    let started = Instant::now();
                    if self.tx.send(item).await.is_err() {
                        tracing::error!("The history writer has stopped; a pass was not stored.");
                        return;
                    }
                    self.metrics
                        .history_backpressure_seconds
                        .inc_by(started.elapsed().as_secs_f64());
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    tracing::error!("The history writer has stopped; a pass was not stored.");
                    return;
                }
            }
        }
        self.metrics
            .history_queue
            .set((self.tx.max_capacity() - self.tx.capacity()) as i64);
    }
}

/// Starts the writer on `tracker`.
pub fn spawn(
    history: History,
    config: StoreConfig,
    metrics: Arc<Metrics>,
    tracker: &TaskTracker,
) -> StoreInput {
    let (tx, rx) = mpsc::channel(config.queue.max(1));
    tracker.spawn(writer(history, config, rx, metrics.clone()));
    StoreInput { tx, metrics }
}

async fn writer(
    history: History,
    config: StoreConfig,
    mut rx: mpsc::Receiver<Closed>,
    metrics: Arc<Metrics>,
) {
    let batch = config.batch.max(1);
    let mut buf: Vec<Closed> = Vec::with_capacity(batch);
    let mut passes: Vec<Pass> = Vec::with_capacity(batch);
    loop {
        if rx.recv_many(&mut buf, batch).await == 0 {
            break;
        }
        // Let a small batch fill a little: one transaction per pass would compete with the
        // alert log for the database's write lock.
        let deadline = tokio::time::Instant::now() + config.linger;
        while buf.len() < batch {
            let room = batch - buf.len();
            match tokio::time::timeout_at(deadline, rx.recv_many(&mut buf, room)).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        let oldest = buf.iter().map(|c| c.at).min();
        passes.extend(buf.drain(..).map(|c| c.pass));
        let started = Instant::now();
        let mut attempt = 0u32;
        loop {
            match history.append(&passes).await {
                Ok(()) => break,
                Err(e) => {
                    attempt += 1;
                    metrics.history_write_errors.inc();
                    tracing::error!(error = %e, passes = passes.len(), attempt, "Writing passes failed; retrying.");
                    let backoff = Duration::from_millis(100 * u64::from(attempt.min(50)));
                    tokio::time::sleep(backoff).await;
                }
            }
        }
        metrics
            .history_write_seconds
            .observe(started.elapsed().as_secs_f64());
        metrics.passes_stored.inc_by(passes.len() as u64);
        if let Some(oldest) = oldest {
            metrics
                .history_lag_seconds
                .set(oldest.elapsed().as_secs_f64());
        }
        metrics.history_queue.set(rx.len() as i64);
        passes.clear();
    }
    metrics.history_queue.set(0);
    tracing::debug!("History writer stopped.");
}
