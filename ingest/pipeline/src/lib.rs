//! greenplate ingest's broker side and pipeline: reader messages in, sightings of flagged
//! bikes out to alerting, closed passes out to the pass history. See `ingest/ARCHITECTURE.md`.
//!
//! ```text
//! Inbound (topic, payload) --shard by topic--> worker: admit -> open (-> seq window) ->
//!   decode -> hot index ->
//!   smooth (pass opened?) -> clone watch (impossible speed?) ->
//!   flagged (stolen, armed, revoked) or clone? -> alerting engine
//!   ... closed passes -> history writer (batched writes, after the alerts are handed on)
//! ```
//! Messages are sharded by topic over a few workers, so one reader's batches stay in order
//! (its seq check relies on that) and its passes live in one worker, while different readers
//! are handled in parallel. Nothing on the alert path touches the database: the hot index
//! answers every lookup from memory, and history is written by its own task.

//!
//! Layout, in the order a message goes:
//! - [`broker`]: the embedded rumqttd broker and its in-process link, or an external broker
//!   ([`broker::external`], [`broker::client`]), or NATS JetStream ([`broker::nats`]).
//! - this file: the workers ([`spawn`], [`Context`]), one reader's messages on one worker.
//! - [`admit`] (size, topic, reader, budget; the seq window) -> [`open`] (format, seal) ->
//!   [`decode`] (tag ids, clocks; [`formats`] for vendor JSON) -> hot index ->
//!   [`smooth`] (passes) -> alerting; [`status`] for statuses and silences;
//!   [`history`], the history writer.
//! - [`rejection`]: why a message was dropped, one reason each; [`metrics`] counts them.
//! - [`config`]: `[mqtt]` and `[ingest]`.

pub mod admit;
pub mod broker;
pub mod config;
pub mod decode;
pub mod formats;
pub mod history;
pub mod metrics;
pub mod open;
pub mod rejection;
pub mod smooth;
pub mod status;
#[cfg(test)]
mod tests;

use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::time::{Duration, Instant};

use greenplate_alerting::{CloneEvidence, CloneWatch, EngineHandle, Pass, Sighted};
use greenplate_registry::readers::Format;
use greenplate_registry::{HotIndex, Reader, Readers, TagState, now_ms};
use history::StoreInput;
use smooth::{Folded, SmoothConfig, Smoother};
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

use crate::broker::Inbound;
use crate::metrics::Metrics;
use crate::rejection::Rejection;

/// Messages queued per worker before the broker link waits (backpressure into the broker).
const WORKER_QUEUE: usize = 1024;

/// What the workers need.
#[derive(Debug, Clone)]
pub struct Context {
    pub readers: Arc<Readers>,
    /// Each reader's budget and seq window (stage 0, [`admit`]).
    pub admissions: Arc<admit::Admissions>,
    pub index: Arc<HotIndex>,
    pub engine: EngineHandle,
    pub clones: Arc<CloneWatch>,
    pub metrics: Arc<Metrics>,
    /// How far from the server's clock reader timestamps may be.
    pub skew: decode::Skew,
    /// Whether readers provisioned with an unsealed format are taken (see `open`).
    pub unsealed_allowed: bool,
    /// Each reader's message budget: this many a second, this many saved up at most.
    pub reader_messages_per_s: f64,
    pub reader_messages_burst: f64,
    /// The global budget of messages that do not open under their reader's key.
    pub unauthentic_messages_per_s: f64,
    pub unauthentic_messages_burst: f64,
    /// Larger payloads are dropped unread (the embedded broker already closes a reader's
    /// connection for them; an external broker may not).
    pub max_payload_bytes: usize,
    pub smooth: SmoothConfig,
    pub store: StoreInput,
}

impl Context {
    /// What admission checks messages against.
    fn limits(&self) -> admit::Limits {
        admit::Limits {
            max_payload_bytes: self.max_payload_bytes,
            messages_per_s: self.reader_messages_per_s,
            messages_burst: self.reader_messages_burst,
            unauthentic_per_s: self.unauthentic_messages_per_s,
            unauthentic_burst: self.unauthentic_messages_burst,
        }
    }
}

/// The pipeline's entrance, where the broker puts each message (one hop: no relay task in
/// between). Dropping every clone lets the workers drain and stop.
#[derive(Debug, Clone)]
pub struct Input {
    shards: Vec<mpsc::Sender<Inbound>>,
    hasher: RandomState,
    metrics: Arc<Metrics>,
}

impl Input {
    /// Queues a message on its topic's worker; waits while that worker is behind (and the
    /// broker's buffer takes the rest).
    pub async fn send(&self, msg: Inbound) -> Result<(), Inbound> {
        let i = (self.hasher.hash_one(&msg.topic) % self.shards.len() as u64) as usize;
        self.shards[i].send(msg).await.map_err(|e| e.0)?;
        self.metrics.pipeline_queue.set(self.queued() as i64);
        Ok(())
    }

    /// Messages queued on the workers now.
    pub fn queued(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.max_capacity() - s.capacity())
            .sum()
    }
}

/// Starts `workers` workers on `tracker`.
pub fn spawn(ctx: Context, workers: usize, tracker: &TaskTracker) -> Input {
    ctx.metrics
        .pipeline_queue_capacity
        .set((workers.max(1) * WORKER_QUEUE) as i64);
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
        metrics: ctx.metrics.clone(),
    }
}

/// One worker's own state.
pub(crate) struct Worker {
    pub(crate) log: RateLimitedLog,
    pub(crate) smoother: Smoother,
    /// Passes closed while handling the current message, sent to the store after it.
    pub(crate) closed: Vec<Pass>,
}

impl Worker {
    pub(crate) fn new(smooth: SmoothConfig) -> Self {
        Self {
            log: RateLimitedLog::new(Duration::from_secs(10)),
            smoother: Smoother::new(smooth),
            closed: Vec::new(),
        }
    }
}

async fn worker(ctx: Context, mut rx: mpsc::Receiver<Inbound>) {
    let mut w = Worker::new(ctx.smooth);
    // Idle passes are closed at a quarter of the gap's resolution.
    let period = Duration::from_millis((ctx.smooth.gap_ms / 4).clamp(10, 1000) as u64);
    let mut sweep = tokio::time::interval(period);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            msg = rx.recv() => match msg {
                Some(msg) => handle(&ctx, &mut w, &msg).await,
                None => break,
            },
            _ = sweep.tick() => {
                let before = w.smoother.len();
                w.smoother.sweep(now_ms(), &mut w.closed);
                ctx.metrics.open_passes.inc_by(w.smoother.len() as i64 - before as i64);
                flush_closed(&ctx, &mut w).await;
            }
        }
    }
    // Draining at shutdown: what is open now is closed and stored.
    let before = w.smoother.len();
    w.smoother.flush(&mut w.closed);
    ctx.metrics.open_passes.dec_by(before as i64);
    flush_closed(&ctx, &mut w).await;
}

async fn flush_closed(ctx: &Context, w: &mut Worker) {
    if !w.closed.is_empty() {
        ctx.metrics.passes_closed.inc_by(w.closed.len() as u64);
        ctx.store.send(&mut w.closed).await;
    }
}

/// Handles one reader message end to end.
pub(crate) async fn handle(ctx: &Context, w: &mut Worker, msg: &Inbound) {
    let limits = ctx.limits();
    if let Some(d) = &msg.delivery
        && !d.owned()
    {
        d.abandon();
        return dropped(ctx, &mut w.log, msg, &Rejection::PartitionNotHeld);
    }
    let (reader, admission) = match admit::admit(&ctx.readers, &ctx.admissions, limits, msg) {
        Ok(admitted) => admitted,
        Err(rejection) => return dropped(ctx, &mut w.log, msg, &rejection),
    };
    if msg.topic.ends_with(b"/status") {
        return handle_status(ctx, w, msg, reader, &admission).await;
    }
    let log = &mut w.log;
    let sealed = reader.format == Format::Sealed;
    let batch = match open::open_batch(&reader, &msg.payload, ctx.unsealed_allowed)
        .and_then(|batch| admit::take_seq(&admission, &reader, &batch).map(|gone| (batch, gone)))
    {
        Ok((batch, missing)) => {
            if missing > 0 {
                ctx.metrics.batches_missing(&reader.id, missing);
            }
            if batch.seq != 0 {
                finish_with_message(msg, &admission, batch.seq);
            }
            batch
        }
        // A redelivery of a batch this node (or the reader's previous owner) took: the source
        // repeating itself, not a replay.
        Err(Rejection::Replay {
            seq,
            too_old: false,
            ..
        }) if msg.delivery.as_ref().is_some_and(|d| d.redelivered()) => {
            let rejection = if admission.is_finished(seq) {
                Rejection::RedeliveredProcessed { seq }
            } else {
                // Still on its way here: acknowledging this copy now could lose it if this
                // node dies before the first copy is done.
                if let Some(d) = &msg.delivery {
                    d.abandon();
                }
                Rejection::RedeliveredInProgress { seq }
            };
            return dropped(ctx, log, msg, &rejection);
        }
        // Did not open under the reader's key, or a replay: not the reader's own traffic,
        // so it spends the global unauthentic budget, never the reader's.
        Err(rejection) if sealed => {
            let rejection = admit::unauthentic(&ctx.admissions, limits, rejection);
            return dropped(ctx, log, msg, &rejection);
        }
        Err(rejection) => return dropped(ctx, log, msg, &rejection),
    };
    if sealed && let Err(rejection) = admit::charge(&admission, limits) {
        return dropped(ctx, log, msg, &rejection);
    }
    ctx.metrics.batches_accepted.inc();
    let now = now_ms();
    let mut accepted = 0;
    let mut reads = 0;
    for sighting in &batch.sightings {
        let read = match decode::decode(sighting, now, ctx.skew) {
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
        reads += u64::from(read.reads);
        let Some(state) = ctx.index.lookup(read.tag) else {
            ctx.metrics.sightings_unregistered.inc();
            continue;
        };
        if state.canary() {
            // A probe of the whole path: every read goes to alerting (which lets one per
            // quarter of its schedule through), none to passes or the clone rule.
            to_alerting(ctx, msg, &reader, &read, state, None).await;
            continue;
        }
        let before = w.smoother.len();
        let folded = w.smoother.observe(&reader, &read, now, &mut w.closed);
        ctx.metrics
            .open_passes
            .inc_by(w.smoother.len() as i64 - before as i64);
        // The clone rule learns from every read, but, like every rule, fires only on the
        // first read of a pass.
        let clone = ctx.clones.observe(read.tag, &reader, read.first_seen_ms);
        if folded == Folded::Extended {
            continue;
        }
        ctx.metrics.passes_opened.inc();
        if clone.is_some() {
            ctx.metrics.clone_suspects.inc();
        }
        if Sighted::flagged(state) || clone.is_some() {
            if state.stolen() {
                ctx.metrics.stolen_sightings.inc();
            }
            ctx.metrics.flagged_sightings.inc();
            to_alerting(ctx, msg, &reader, &read, state, clone).await;
        }
    }
    ctx.metrics.sightings_accepted.inc_by(accepted);
    ctx.metrics.reads.inc_by(reads);
    reader.record_batch(accepted as usize);
    if w.smoother.evictions > 0 {
        ctx.metrics.passes_evicted.inc_by(w.smoother.evictions);
        w.smoother.evictions = 0;
    }
    flush_closed(ctx, w).await;
}

/// Records the batch `seq` as processed once its message is settled: for a source that
/// redelivers (NATS), when the message is acknowledged; otherwise now.
fn finish_with_message(msg: &Inbound, admission: &Arc<admit::Admission>, seq: u64) {
    match &msg.delivery {
        Some(d) => {
            let admission = admission.clone();
            d.on_settled(Box::new(move || admission.finished(seq)));
        }
        None => admission.finished(seq),
    }
}

/// Hands a read of a flagged (or canary) tag to the alerting engine, holding the message's
/// acknowledgement until its alerts are committed; counts it if the engine has stopped.
async fn to_alerting(
    ctx: &Context,
    msg: &Inbound,
    reader: &Arc<Reader>,
    read: &decode::Read,
    state: TagState,
    clone: Option<CloneEvidence>,
) {
    let sighted = Sighted {
        bike_id: state.bike_id,
        tag: read.tag,
        state,
        reader: reader.clone(),
        seen_at_ms: read.first_seen_ms,
        clone,
        received_at: msg.received_at,
        hold: msg.ack.clone(),
    };
    if ctx.engine.submit(sighted).await.is_err() {
        ctx.metrics.flagged_lost(metrics::LOST_ENGINE_STOPPED);
        tracing::error!(reader = %reader.id, "Alerting engine has stopped; sighting not alerted.");
    }
}

/// Handles a reader's status message (or its last will).
async fn handle_status(
    ctx: &Context,
    w: &mut Worker,
    msg: &Inbound,
    reader: Arc<Reader>,
    admission: &admit::Admission,
) {
    // Statuses are always sealed: one that does not open, or a replay, spends the global
    // unauthentic budget; a genuine one its reader's.
    let outcome = status::open_status(&reader, &msg.payload)
        .and_then(|s| status::apply(&reader, &s, now_ms(), ctx.skew))
        .map_err(|r| admit::unauthentic(&ctx.admissions, ctx.limits(), r))
        .and_then(|change| admit::charge(admission, ctx.limits()).map(|()| change));
    match outcome {
        Ok(change) => {
            ctx.metrics.statuses_accepted.inc();
            if change == status::StatusChange::WentOffline {
                ctx.metrics.reader_wills.inc();
                status::report_offline(&ctx.engine, &reader, "last will").await;
            }
        }
        Err(rejection) => dropped(ctx, &mut w.log, msg, &rejection),
    }
}

/// Counts a dropped reader message by its reason, and logs it unless that reason was logged
/// in the last 10 s.
fn dropped(ctx: &Context, log: &mut RateLimitedLog, msg: &Inbound, rejection: &Rejection) {
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
