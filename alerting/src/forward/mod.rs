//! Forwarding alerts to partner systems (110 dispatch, the city's governance centre): each
//! configured [`Target`] gets the alerts its [`Filter`] lets through, from the alert log,
//! at least once, in seq order.
//!
//! The alert log's seq is the outbox cursor, stored per target ([`outbox`]), so a restart or
//! a node's death resumes with no gap. One node at a time delivers for a target (a lease in
//! the same row), so with several nodes each alert goes out once per target, not once per
//! node. A receiver that fails is retried with exponential backoff and full jitter, the
//! target's later alerts waiting behind (order is kept); after `give_up_after` the alert
//! becomes a dead letter, which an operator can list and replay (`Admin.ListDeadLetters`,
//! `Admin.ReplayDeadLetters`), and the target moves on. Every request is signed and carries
//! an idempotency key ([`payload`]).
//!
//! Covert watch-list hits reach command centers only: they are never forwarded unless a
//! target says `include_covert`. Every alert a target is not sent is counted by reason.
//!
//! Layout:
//! - this file: [`Target`], [`Filter`], the per-target worker ([`run`]), [`ForwardMetrics`];
//! - [`outbox`]: cursors, leases and dead letters in the database;
//! - [`payload`]: greenplate JSON, CAP 1.2, the signature.

pub mod nats;
pub mod outbox;
pub mod payload;
pub mod sms;

use std::sync::Arc;
use std::time::Duration;

use geo::{Contains, Point};
use greenplate_proto::v1::{Alert, AlertKind};
use greenplate_registry::now_ms;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use tokio_util::sync::CancellationToken;

use crate::state::Alerting;
pub use outbox::DeadLetter;
pub use payload::Format;

/// Alerts read from the log at a time.
const PAGE: i64 = 100;
/// How often an idle worker looks at the log (it also wakes on every new alert) and
/// renews its lease.
const IDLE: Duration = Duration::from_secs(1);
/// First retry delay; doubles up to [`MAX_BACKOFF`], with full jitter.
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How often the cursor is stored while alerts flow (and at the end of each page, before a
/// retry's wait, and at shutdown). One write per alert took a database write per alert per
/// target, which slowed the engine's own commits (benches/README); a node that dies loses at
/// most this much progress, and its successor sends those alerts again (at least once, with
/// the same idempotency keys).
const STORE_CURSOR_EVERY: Duration = Duration::from_millis(200);

/// Which alerts a target takes.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Alert kinds; empty: every kind.
    pub kinds: Vec<AlertKind>,
    /// Zones (patrol or watch zone ids) the alert's position must be in; empty: anywhere.
    pub zones: Vec<String>,
    /// Alerts of at least this priority (1-3).
    pub min_priority: u32,
    /// Covert watch-list hits too (default: never).
    pub include_covert: bool,
}

/// Where a target's alerts go.
#[derive(Debug, Clone)]
pub enum Sink {
    /// A partner system's HTTPS endpoint: signed POSTs ([`payload`]).
    Webhook {
        url: String,
        /// The HMAC key of the signature.
        secret: String,
        format: Format,
    },
    /// A subject on NATS JetStream, acknowledged by the stream that captures it ([`nats`]).
    Nats(Arc<nats::NatsSink>),
    /// Texts to the bikes' owners through the SMS gateway ([`sms`]).
    OwnerSms(Arc<sms::Gateway>),
}

/// Where alerts go: a partner system, or the owners' SMS.
#[derive(Debug, Clone)]
pub struct Target {
    /// Unique; names the cursor, the metrics and the dead letters.
    pub name: String,
    pub sink: Sink,
    pub filter: Filter,
    /// How long one alert is retried before it becomes a dead letter.
    pub give_up_after: Duration,
    /// One request's time limit.
    pub timeout: Duration,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetLabel {
    pub target: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SkipLabel {
    pub target: String,
    /// `filtered` (kind, zone or priority) or `covert`.
    pub reason: String,
}

/// Per-target counters and gauges (`greenplate_forward_*`).
#[derive(Debug, Clone, Default)]
pub struct ForwardMetrics {
    /// Alerts the target took (a 2xx answer).
    pub delivered: Family<TargetLabel, Counter>,
    /// Requests that failed and were tried again.
    pub retries: Family<TargetLabel, Counter>,
    /// Alerts given up on (dead letters).
    pub failed: Family<TargetLabel, Counter>,
    /// Alerts not for this target, by reason.
    pub skipped: Family<SkipLabel, Counter>,
    /// Alerts in the log after the target's cursor.
    pub lag_seq: Family<TargetLabel, Gauge>,
    /// Age of the oldest alert after the target's cursor, seconds (0 when none).
    pub lag_seconds: Family<TargetLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// Dead letters waiting.
    pub dead_letters: Family<TargetLabel, Gauge>,
}

impl ForwardMetrics {
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        let r = registry.sub_registry_with_prefix("forward");
        r.register(
            "delivered",
            "Alerts a partner target took (2xx), by target",
            self.delivered.clone(),
        );
        r.register(
            "retries",
            "Deliveries to a target that failed and were tried again",
            self.retries.clone(),
        );
        r.register(
            "failed",
            "Alerts a target did not take within its give_up_after_s: dead letters",
            self.failed.clone(),
        );
        r.register(
            "skipped",
            "Alerts not sent to a target, by reason (filtered, covert)",
            self.skipped.clone(),
        );
        r.register(
            "lag_seq",
            "Alerts in the log after a target's cursor",
            self.lag_seq.clone(),
        );
        r.register(
            "lag_seconds",
            "Age of the oldest alert after a target's cursor",
            self.lag_seconds.clone(),
        );
        r.register(
            "dead_letters",
            "Dead letters of a target waiting for a replay",
            self.dead_letters.clone(),
        );
    }
}

impl Filter {
    /// Why `a` is not for this target, if it is not.
    fn refuses(&self, alerting: &Alerting, a: &Alert, covert: bool) -> Option<&'static str> {
        if covert && !self.include_covert {
            return Some("covert");
        }
        if a.priority < self.min_priority
            || (!self.kinds.is_empty() && !self.kinds.iter().any(|k| *k as i32 == a.kind))
        {
            return Some("filtered");
        }
        if !self.zones.is_empty() {
            let at = Point::new(a.lon, a.lat);
            let inside = alerting
                .zones()
                .iter()
                .any(|z| self.zones.contains(&z.id) && z.area.contains(&at));
            if !inside {
                return Some("filtered");
            }
        }
        None
    }
}

/// What became of one attempt that did not fail.
pub(crate) enum Delivered {
    /// The receiver took it (2xx).
    Sent,
    /// Not for this receiver after all (an SMS for a bike with no owner, an owner over the
    /// rate): counted by reason, not retried.
    Skipped(&'static str),
}

/// Why a delivery stopped short of a 2xx.
enum Stop {
    /// Given up after `give_up_after`: (attempts, last error).
    GaveUp(u32, String),
    /// This node lost the target's lease, or is stopping: leave the alert to whoever holds
    /// the lease next.
    Interrupted,
}

/// One target's worker on this node.
struct Worker {
    alerting: Arc<Alerting>,
    target: Target,
    client: reqwest::Client,
    node: String,
    metrics: ForwardMetrics,
    sender: String,
    shutdown: CancellationToken,
}

/// How far a worker got in a page: the last alert done (sent, skipped or dead-lettered) and
/// the last stored.
struct Cursor {
    done: u64,
    stored: u64,
    stored_at: std::time::Instant,
}

impl Cursor {
    fn new(stored: u64) -> Self {
        Self {
            done: stored,
            stored,
            stored_at: std::time::Instant::now(),
        }
    }
}

/// Delivers to every target until `shutdown`: one worker per target on each node, the one
/// holding a target's lease sending.
pub async fn run(
    alerting: Arc<Alerting>,
    targets: Vec<Target>,
    metrics: ForwardMetrics,
    shutdown: CancellationToken,
) {
    if targets.is_empty() {
        return;
    }
    let node = format!("node-{}", hex::encode(rand::random::<[u8; 6]>()));
    let client = match reqwest::Client::builder()
        .user_agent(concat!("greenplate/", env!("CARGO_PKG_VERSION")))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "Cannot build the forwarding HTTP client: nothing is forwarded.");
            return;
        }
    };
    let mut tasks = tokio::task::JoinSet::new();
    for target in targets {
        if let Sink::OwnerSms(gateway) = &target.sink {
            tasks.spawn(sms::run_recoveries(
                alerting.clone(),
                gateway.clone(),
                client.clone(),
                target.timeout,
                node.clone(),
                shutdown.clone(),
            ));
        }
        let worker = Worker {
            alerting: alerting.clone(),
            sender: format!("greenplate@{}", node),
            client: client.clone(),
            node: node.clone(),
            metrics: metrics.clone(),
            target,
            shutdown: shutdown.clone(),
        };
        tasks.spawn(worker.run());
    }
    while tasks.join_next().await.is_some() {}
}

/// An error with its causes (reqwest's own message names only the URL).
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        msg = format!("{msg}: {s}");
        source = s.source();
    }
    msg
}

fn backoff(attempt: u32) -> Duration {
    let cap = FIRST_BACKOFF
        .saturating_mul(1u32 << attempt.min(16))
        .min(MAX_BACKOFF);
    // Full jitter: anywhere from nothing to the cap, so many nodes or targets retrying at
    // once do not knock on the receiver in step.
    cap.mul_f64(rand::random::<f64>())
}

impl Worker {
    fn label(&self) -> TargetLabel {
        TargetLabel {
            target: self.target.name.clone(),
        }
    }

    async fn run(self) {
        let name = self.target.name.clone();
        let db = self.alerting.db().clone();
        let mut live = self.alerting.subscribe();
        let mut registered = false;
        while !self.shutdown.is_cancelled() {
            let now = now_ms();
            if !registered {
                match outbox::register(&db, &name, now).await {
                    Ok(()) => registered = true,
                    Err(e) => {
                        tracing::error!(target_name = %name, error = %e, "Registering a forwarding target failed.")
                    }
                }
            }
            self.update_lag(now).await;
            let progressed = match outbox::lease(&db, &name, &self.node, now).await {
                Ok(Some(cursor)) => match self.step(cursor).await {
                    Ok(progressed) => progressed,
                    Err(e) => {
                        tracing::error!(target_name = %name, error = %e, "Forwarding failed; retrying.");
                        false
                    }
                },
                // Another node holds the lease.
                Ok(None) => false,
                Err(e) => {
                    tracing::error!(target_name = %name, error = %e, "Taking the forwarding lease failed.");
                    false
                }
            };
            if !progressed {
                tokio::select! {
                    _ = self.shutdown.cancelled() => break,
                    _ = live.recv() => {}
                    _ = tokio::time::sleep(IDLE) => {}
                }
            }
        }
        if let Err(e) = outbox::release(&db, &name, &self.node).await {
            tracing::warn!(target_name = %name, error = %e, "Releasing the forwarding lease failed.");
        }
    }

    async fn update_lag(&self, now: i64) {
        let db = self.alerting.db();
        if let Ok((behind, age_ms)) = outbox::lag(db, &self.target.name, now).await {
            self.metrics
                .lag_seq
                .get_or_create(&self.label())
                .set(i64::try_from(behind).unwrap_or(i64::MAX));
            self.metrics
                .lag_seconds
                .get_or_create(&self.label())
                .set(age_ms as f64 / 1000.0);
        }
        if let Ok(n) = outbox::dead_count(db, &self.target.name).await {
            self.metrics
                .dead_letters
                .get_or_create(&self.label())
                .set(n);
        }
    }

    /// Sends what is due while this node holds the lease: replays first, then the log
    /// after `cursor`. True if it got anywhere (more may be waiting).
    async fn step(&self, cursor: u64) -> Result<bool, sqlx::Error> {
        let db = self.alerting.db();
        let name = &self.target.name;
        let mut progressed = false;
        for l in outbox::to_replay(db, name, PAGE).await? {
            match self.deliver(&l.alert, &mut Cursor::new(cursor)).await {
                Ok(()) => {
                    outbox::delivered_again(db, name, l.alert.seq).await?;
                    tracing::info!(target_name = %name, seq = l.alert.seq, "A dead letter was delivered.");
                    progressed = true;
                }
                Err(Stop::GaveUp(attempts, error)) => {
                    outbox::dead_letter(db, name, &l.alert, attempts, &error, now_ms()).await?;
                    self.metrics.failed.get_or_create(&self.label()).inc();
                }
                Err(Stop::Interrupted) => return Ok(false),
            }
        }
        // Only what the hub has settled: on PostgreSQL a lower seq may commit after a
        // higher one, and a cursor past it would skip it for good.
        let upto = self.alerting.hub.published();
        let page = outbox::after(db, cursor, upto, PAGE).await?;
        let mut cursor = Cursor::new(cursor);
        for l in &page {
            let alert = self.alerting.with_cameras(l.alert.clone());
            match self.target.filter.refuses(&self.alerting, &alert, l.covert) {
                Some(reason) => {
                    self.metrics
                        .skipped
                        .get_or_create(&SkipLabel {
                            target: name.clone(),
                            reason: reason.into(),
                        })
                        .inc();
                }
                None => match self.deliver(&alert, &mut cursor).await {
                    Ok(()) => {}
                    Err(Stop::GaveUp(attempts, error)) => {
                        outbox::dead_letter(db, name, &alert, attempts, &error, now_ms()).await?;
                        self.metrics.failed.get_or_create(&self.label()).inc();
                        tracing::error!(
                            target_name = %name,
                            seq = alert.seq,
                            alert = %alert.alert_id,
                            attempts,
                            error = %error,
                            "A partner target did not take an alert in time: dead letter."
                        );
                    }
                    Err(Stop::Interrupted) => {
                        self.store(&mut cursor).await?;
                        return Ok(progressed);
                    }
                },
            }
            cursor.done = l.alert.seq;
            progressed = true;
            if cursor.stored_at.elapsed() >= STORE_CURSOR_EVERY && !self.store(&mut cursor).await? {
                return Ok(false);
            }
        }
        if !self.store(&mut cursor).await? {
            return Ok(false);
        }
        Ok(progressed)
    }

    /// Stores the cursor if it moved; false if this node lost the lease meanwhile.
    async fn store(&self, cursor: &mut Cursor) -> Result<bool, sqlx::Error> {
        cursor.stored_at = std::time::Instant::now();
        if cursor.done <= cursor.stored {
            return Ok(true);
        }
        let name = &self.target.name;
        if !outbox::advance(self.alerting.db(), name, &self.node, cursor.done, now_ms()).await? {
            tracing::warn!(target_name = %name, "Lost the forwarding lease; another node goes on.");
            return Ok(false);
        }
        cursor.stored = cursor.done;
        Ok(true)
    }

    /// One attempt at a webhook: a signed POST.
    async fn post(
        &self,
        url: &str,
        secret: &str,
        format: Format,
        alert: &Alert,
    ) -> Result<Delivered, String> {
        let body = format.body(alert, &self.sender);
        let timestamp = now_ms() / 1000;
        let sent = self
            .client
            .post(url)
            .timeout(self.target.timeout)
            .header(reqwest::header::CONTENT_TYPE, format.content_type())
            .header("Idempotency-Key", &alert.alert_id)
            .header("X-Greenplate-Seq", alert.seq.to_string())
            .header("X-Greenplate-Target", &self.target.name)
            .header("X-Greenplate-Timestamp", timestamp.to_string())
            .header(
                "X-Greenplate-Signature",
                payload::signature(secret.as_bytes(), timestamp, &body),
            )
            .body(body)
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => Ok(Delivered::Sent),
            Ok(r) => Err(format!("HTTP {}", r.status())),
            Err(e) => Err(error_chain(&e)),
        }
    }

    /// Sends one alert until the target takes it (2xx), retrying with backoff; gives up
    /// after the target's `give_up_after`.
    async fn deliver(&self, alert: &Alert, cursor: &mut Cursor) -> Result<(), Stop> {
        let started = std::time::Instant::now();
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            let tried = match &self.target.sink {
                Sink::Webhook {
                    url,
                    secret,
                    format,
                } => self.post(url, secret, *format, alert).await,
                Sink::Nats(sink) => {
                    sink.publish(alert, &self.sender, &self.target.name, self.target.timeout)
                        .await
                }
                Sink::OwnerSms(gateway) => {
                    gateway
                        .send_alert(&self.alerting, &self.client, self.target.timeout, alert)
                        .await
                }
            };
            let error = match tried {
                Ok(Delivered::Sent) => {
                    self.metrics.delivered.get_or_create(&self.label()).inc();
                    return Ok(());
                }
                Ok(Delivered::Skipped(reason)) => {
                    self.metrics
                        .skipped
                        .get_or_create(&SkipLabel {
                            target: self.target.name.clone(),
                            reason: reason.into(),
                        })
                        .inc();
                    return Ok(());
                }
                Err(e) => e,
            };
            if started.elapsed() >= self.target.give_up_after {
                return Err(Stop::GaveUp(attempt, error));
            }
            self.metrics.retries.get_or_create(&self.label()).inc();
            // What went out before this alert is stored before waiting on the receiver.
            if attempt == 1 {
                match self.store(cursor).await {
                    Ok(true) => {}
                    Ok(false) => return Err(Stop::Interrupted),
                    Err(e) => {
                        tracing::warn!(error = %e, "Storing the forwarding cursor failed.");
                        return Err(Stop::Interrupted);
                    }
                }
            }
            tracing::debug!(target_name = %self.target.name, seq = alert.seq, attempt, error = %error, "Delivery failed; retrying.");
            let wait =
                backoff(attempt).min(self.target.give_up_after.saturating_sub(started.elapsed()));
            tokio::select! {
                _ = self.shutdown.cancelled() => return Err(Stop::Interrupted),
                _ = tokio::time::sleep(wait) => {}
            }
            // Still this node's target? (A long outage must not let two nodes send.)
            match outbox::lease(self.alerting.db(), &self.target.name, &self.node, now_ms()).await {
                Ok(Some(_)) => {}
                Ok(None) => return Err(Stop::Interrupted),
                Err(e) => {
                    tracing::warn!(error = %e, "Renewing the forwarding lease failed.");
                    return Err(Stop::Interrupted);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap_with_jitter() {
        for attempt in 0..40 {
            let cap = FIRST_BACKOFF
                .saturating_mul(1u32 << attempt.min(16))
                .min(MAX_BACKOFF);
            for _ in 0..20 {
                assert!(backoff(attempt) <= cap);
            }
        }
        let spread: std::collections::HashSet<_> = (0..50).map(|_| backoff(5)).collect();
        assert!(spread.len() > 10, "jittered: {spread:?}");
    }
}
