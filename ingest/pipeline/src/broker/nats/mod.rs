//! NATS JetStream as the source of reader messages (issue #16, first step).
//!
//! Readers keep speaking MQTT, to NATS's MQTT listener, with the same topics, payloads and
//! sealing; NATS turns the topic `greenplate/readers/{id}/sightings` into the subject
//! `greenplate.readers.{id}.sightings`. A JetStream stream (work-queue retention) keeps
//! every reader message, and each node pulls from one durable consumer. A message is
//! acknowledged exactly when an MQTT [`super::client::Ack`] would send its PUBACK: when its
//! last holder drops it, after the pipeline handled it and, for sightings of flagged bikes,
//! after their alerts were committed. A node that dies or hangs before that never
//! acknowledges, and JetStream hands the message to a live node once the consumer's
//! ack-wait has passed; the seq window takes a redelivered batch once.
//!
//! With `nats.partitions`, each reader's messages go to one node at a time: nats-server maps
//! a reader's subjects into one of N partitions, each partition has its own consumer, and a
//! node pulls only from the partitions whose lease it holds ([`Owner`]).
//!
//! A node that takes partitions over first loads the seq windows their readers' previous
//! owner stored ([`OnAcquire`]): a batch that node finished is refused as a repeat
//! (`redelivered_processed`), one it had not finished is taken. A node holds a partition
//! only while its lease is fresh ([`Fence`]): one paused past its lease leaves what it had
//! pulled unacknowledged, for the new owner. What can still be done twice (a batch whose
//! alerts were committed just before its node died, before its window was stored) is
//! written once: alerts and passes are unique by sighting in the database.
//!
//! [`logins`] writes the reader logins nats-server checks (`nats.logins_file`).

pub mod logins;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, kv, message::Acker, stream};
use bytes::Bytes;
use futures::StreamExt;
use futures::future::BoxFuture;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{BrokerError, Delivery, Inbound};
use crate::Input;
use crate::config::NatsConfig;
use crate::metrics::{ACK_NATS_FAILED, Metrics};

/// The subjects reader messages arrive on (NATS's names for the contract's MQTT topics).
pub const SUBJECTS: [&str; 2] = [
    "greenplate.readers.*.sightings",
    "greenplate.readers.*.status",
];
/// With partitions: where nats-server's mapping puts them, `greenplate.part.{p}.{id}.{kind}`.
pub const PARTITIONED: &str = "greenplate.part.*.*.*";
const PARTITION_PREFIX: &str = "greenplate.part.";

/// How long to wait before pulling again after the consumer's stream failed.
const RETRY: Duration = Duration::from_millis(500);
/// How long one pull request lasts, and the heartbeat NATS sends while it does.
const PULL_EXPIRES: Duration = Duration::from_secs(5);
const PULL_HEARTBEAT: Duration = Duration::from_secs(2);
/// How often a node reads the readers' stream's backlog into its metrics.
pub const BACKLOG_EVERY: Duration = Duration::from_secs(1);

/// The MQTT topic a NATS subject stands for: NATS maps `/` to `.` and `.` to `//`, so this
/// maps them back (`greenplate.readers.rd//1.sightings` is `greenplate/readers/rd.1/sightings`).
pub fn topic_of(subject: &str) -> String {
    // A partitioned subject: greenplate.part.{p}.{id}.{kind} stands for greenplate.readers.{id}.{kind}.
    let unpartitioned;
    let subject = match subject
        .strip_prefix(PARTITION_PREFIX)
        .and_then(|rest| rest.split_once('.'))
    {
        Some((_, rest)) => {
            unpartitioned = format!("greenplate.readers.{rest}");
            unpartitioned.as_str()
        }
        None => subject,
    };
    let mut topic = String::with_capacity(subject.len());
    let mut rest = subject;
    while let Some(c) = rest.chars().next() {
        if let Some(after) = rest.strip_prefix("//") {
            topic.push('.');
            rest = after;
        } else {
            topic.push(if c == '.' { '/' } else { c });
            rest = &rest[c.len_utf8()..];
        }
    }
    topic
}

/// What a node does when it takes partitions over, before it pulls from them: loads the
/// seq windows that the readers' previous owner stored (so a batch it processed is taken
/// once, and one it did not finish is taken here).
pub type OnAcquire = Arc<dyn Fn() -> BoxFuture<'static, ()> + Send + Sync>;

/// Connects to NATS, makes sure the stream and the durable consumer exist, and feeds every
/// message to `out` until `shutdown`.
pub async fn start(
    config: &NatsConfig,
    url: &str,
    metrics: Arc<Metrics>,
    out: Input,
    on_acquire: OnAcquire,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) -> Result<(), BrokerError> {
    let nats = |e: &dyn std::fmt::Display| BrokerError::Nats(format!("{url}: {e}"));
    let mut options = async_nats::ConnectOptions::new()
        .name("greenplate-ingest")
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(5));
    if let Some(user) = &config.username {
        options =
            options.user_and_password(user.clone(), config.password.clone().unwrap_or_default());
    }
    // `nats://a:4222,nats://b:4222`: every server of the cluster, so any live one will do.
    let servers = url
        .split(',')
        .map(|u| u.trim().parse::<async_nats::ServerAddr>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| nats(&e))?;
    let client = tokio::time::timeout(Duration::from_secs(10), options.connect(servers))
        .await
        .map_err(|e| nats(&e))?
        .map_err(|e| nats(&e))?;
    let js = jetstream::new(client);
    let subjects = if config.partitions == 0 {
        SUBJECTS.iter().map(|s| s.to_string()).collect()
    } else {
        vec![PARTITIONED.to_string()]
    };
    let stream = js
        .get_or_create_stream(stream::Config {
            name: config.stream.clone(),
            subjects,
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            num_replicas: config.replicas,
            ..Default::default()
        })
        .await
        .map_err(|e| nats(&e))?;
    let (acks_tx, acks_rx) = mpsc::unbounded_channel();
    tracker.spawn(release(acks_rx, metrics.clone()));
    tracker.spawn(watch_backlog(
        stream.clone(),
        metrics.clone(),
        shutdown.clone(),
    ));
    metrics.nats_partitions.set(i64::from(config.partitions));
    if config.partitions == 0 {
        let consumer = consumer_for(&stream, config, &config.consumer, None)
            .await
            .map_err(|e| nats(&e))?;
        tracker.spawn(pull(consumer, None, acks_tx, out, metrics, shutdown));
        return Ok(());
    }
    let bucket = format!("{}_leases", config.stream);
    // The bucket's stream made as a key-value bucket's is (async-nats's create_key_value
    // cannot read nats-server 2.9's answer): one value per key, expiring after lease_s.
    js.get_or_create_stream(stream::Config {
        name: format!("KV_{bucket}"),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        max_age: Duration::from_secs(config.lease_s.max(1)),
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: stream::DiscardPolicy::New,
        storage: stream::StorageType::File,
        num_replicas: config.replicas,
        ..Default::default()
    })
    .await
    .map_err(|e| nats(&e))?;
    let leases = js.get_key_value(&bucket).await.map_err(|e| nats(&e))?;
    let node = hex::encode(rand::random::<[u8; 6]>());
    let owner = Owner {
        stream,
        leases,
        config: config.clone(),
        node,
        acks: acks_tx,
        out,
        on_acquire,
        metrics,
        tracker: tracker.clone(),
    };
    tracker.spawn(owner.run(shutdown));
    Ok(())
}

/// The durable consumer `name` (of partition `partition`'s subjects, or of them all).
async fn consumer_for(
    stream: &jetstream::stream::Stream,
    config: &NatsConfig,
    name: &str,
    partition: Option<u32>,
) -> Result<consumer::PullConsumer, async_nats::Error> {
    Ok(stream
        .get_or_create_consumer(
            name,
            consumer::pull::Config {
                durable_name: Some(name.to_owned()),
                filter_subject: partition
                    .map(|p| format!("{PARTITION_PREFIX}{p}.*.*"))
                    .unwrap_or_default(),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: Duration::from_secs(config.ack_wait_s.max(1)),
                max_ack_pending: config.max_ack_pending,
                ..Default::default()
            },
        )
        .await?)
}

/// Holds this node's share of the partitions: each partition's lease is a key in a
/// JetStream key-value bucket whose entries expire after `lease_s`. The node renews the
/// leases it holds every third of that, takes free ones up to its fair share (the
/// partitions over the live nodes, each node also renewing a `node.{id}` key), gives back
/// what is over it, and pulls from the consumers of exactly the partitions it holds. A
/// node that dies stops renewing; its keys expire and live nodes take its partitions, and
/// JetStream redelivers what it held unacknowledged once the ack-wait has passed.
struct Owner {
    stream: jetstream::stream::Stream,
    leases: kv::Store,
    config: NatsConfig,
    node: String,
    acks: mpsc::UnboundedSender<Finished>,
    out: Input,
    on_acquire: OnAcquire,
    metrics: Arc<Metrics>,
    tracker: TaskTracker,
}

impl Owner {
    async fn run(self, shutdown: CancellationToken) {
        let lease = Duration::from_secs(self.config.lease_s.max(1));
        let node_key = format!("node.{}", self.node);
        // partition -> (the lease's revision, what stops its pulling, its fence)
        let mut held: BTreeMap<u32, (u64, CancellationToken, Arc<Fence>)> = BTreeMap::new();
        // Where this node starts looking for free partitions, so nodes spread out.
        let start = self
            .node
            .bytes()
            .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(b as u32));
        let mut live = 1;
        loop {
            // Renew what is held first, before anything that can be slow: a round that
            // takes longer than the lease lets every held lease expire.
            let mut lost = Vec::new();
            let asked = Instant::now();
            let renewals = futures::future::join_all(
                held.iter()
                    .map(|(p, (revision, _, _))| self.renew(*p, *revision)),
            )
            .await;
            for ((p, (revision, _, fence)), renewal) in held.iter_mut().zip(renewals) {
                match renewal {
                    Renewal::Renewed(r) => {
                        *revision = r;
                        fence.hold_until(asked + fence_for(lease));
                    }
                    Renewal::Lost => lost.push(*p),
                    // NATS is electing a leader, or slow: keep the partition and try again
                    // next round (the fence stops this node acting on it meanwhile).
                    Renewal::Unsure => {}
                }
            }
            if let Err(e) = bounded(self.leases.put(&node_key, self.node.clone().into())).await {
                tracing::warn!(error = %e, "Cannot renew this node's presence in NATS.");
            }
            // Counting live nodes lists the bucket's keys, which makes a consumer; on
            // nats-server before 2.9.12 one placed on a dead server takes the whole request
            // timeout. Keep the last count rather than wait.
            match tokio::time::timeout(STEP, self.live_nodes()).await {
                Ok(Some(n)) => live = n.max(1),
                Ok(None) | Err(_) => {
                    tracing::debug!("Could not count live nodes in NATS; keeping the last count.")
                }
            }
            let share = self.config.partitions.div_ceil(live) as usize;
            for p in lost {
                if let Some((_, stop, fence)) = held.remove(&p) {
                    fence.release();
                    stop.cancel();
                }
            }
            // Give back what is over the fair share, highest first.
            while held.len() > share {
                let Some((p, (revision, stop, fence))) = held.pop_last() else {
                    break;
                };
                fence.release();
                stop.cancel();
                let _ = self
                    .leases
                    .delete_expect_revision(partition_key(p), Some(revision))
                    .await;
                tracing::info!(
                    partition = p,
                    "Gave a NATS partition back (more nodes now)."
                );
            }
            // Take free partitions up to the fair share; first load what the readers'
            // previous owners stored, once for all the partitions taken this round.
            let mut loaded = false;
            for i in 0..self.config.partitions {
                if held.len() >= share {
                    break;
                }
                let p = (start.wrapping_add(i)) % self.config.partitions;
                if held.contains_key(&p) {
                    continue;
                }
                let asked = Instant::now();
                let Ok(Ok(revision)) = bounded(
                    self.leases
                        .create(partition_key(p), self.node.clone().into()),
                )
                .await
                else {
                    continue;
                };
                if !loaded {
                    (self.on_acquire)().await;
                    loaded = true;
                }
                let name = format!("{}-p{p}", self.config.consumer);
                // Bounded like every step here: a round must not outlast the leases held.
                let opened = tokio::time::timeout(
                    STEP * 2,
                    consumer_for(&self.stream, &self.config, &name, Some(p)),
                )
                .await
                .unwrap_or_else(|_| Err("timed out".into()));
                match opened {
                    Ok(consumer) => {
                        let stop = shutdown.child_token();
                        let fence = Arc::new(Fence::default());
                        fence.hold_until(asked + fence_for(lease));
                        self.tracker.spawn(pull(
                            consumer,
                            Some(fence.clone()),
                            self.acks.clone(),
                            self.out.clone(),
                            self.metrics.clone(),
                            stop.clone(),
                        ));
                        held.insert(p, (revision, stop, fence));
                        tracing::info!(partition = p, "Took a NATS partition.");
                    }
                    Err(e) => {
                        tracing::error!(partition = p, error = %e, "Cannot open a partition's consumer; giving it back.");
                        let _ = bounded(self.leases.delete(partition_key(p))).await;
                    }
                }
            }
            self.metrics.nats_partitions_owned.set(held.len() as i64);
            tokio::select! {
                _ = tokio::time::sleep(lease / 3) => {}
                _ = shutdown.cancelled() => break,
            }
        }
        // Leaving: hand the partitions over now rather than after the leases expire.
        for (p, (revision, stop, fence)) in held {
            fence.release();
            stop.cancel();
            let _ = self
                .leases
                .delete_expect_revision(partition_key(p), Some(revision))
                .await;
        }
        let _ = self.leases.delete(&node_key).await;
        self.metrics.nats_partitions_owned.set(0);
    }

    /// Renews partition `p`'s lease, held at `revision`.
    async fn renew(&self, p: u32, revision: u64) -> Renewal {
        let key = partition_key(p);
        let update = self.leases.update(&key, self.node.clone().into(), revision);
        match bounded(update).await {
            Ok(Ok(r)) => Renewal::Renewed(r),
            Ok(Err(e)) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                // Expired, taken by another node, or renewed by a request whose answer was
                // lost: the entry says which.
                match bounded(self.leases.entry(&key)).await {
                    Ok(Ok(Some(entry)))
                        if entry.operation == kv::Operation::Put
                            && entry.value.as_ref() == self.node.as_bytes() =>
                    {
                        Renewal::Renewed(entry.revision)
                    }
                    Ok(Ok(_)) => {
                        tracing::warn!(
                            partition = p,
                            "Lost a NATS partition's lease (expired or taken)."
                        );
                        Renewal::Lost
                    }
                    _ => Renewal::Unsure,
                }
            }
            Ok(Err(e)) => {
                tracing::warn!(partition = p, error = %e, "Cannot renew a NATS partition's lease; trying again.");
                Renewal::Unsure
            }
            Err(_) => Renewal::Unsure,
        }
    }

    /// Nodes whose `node.{id}` key has not expired; None if NATS could not say.
    async fn live_nodes(&self) -> Option<u32> {
        let mut keys = self.leases.keys().await.ok()?;
        let mut n = 0;
        while let Some(k) = keys.next().await {
            if k.ok()?.starts_with("node.") {
                n += 1;
            }
        }
        Some(n)
    }
}

/// What renewing a lease found.
enum Renewal {
    Renewed(u64),
    /// Another node holds it, or it expired.
    Lost,
    /// No answer (NATS electing a leader, or a timeout): still held, as far as we know.
    Unsure,
}

/// The longest one lease step may take (a renewal, the presence, counting nodes).
const STEP: Duration = Duration::from_secs(1);

/// `f`, given at most [`STEP`].
async fn bounded<F: std::future::Future>(f: F) -> Result<F::Output, tokio::time::error::Elapsed> {
    tokio::time::timeout(STEP, f).await
}

fn partition_key(p: u32) -> String {
    format!("partition.{p}")
}

/// How long after asking for a lease (or its renewal) this node may act on it: two thirds
/// of the lease, so it stops before the lease can expire in NATS and another node take it,
/// with a renewal (every third) in between to keep it going.
fn fence_for(lease: Duration) -> Duration {
    lease * 2 / 3
}

/// Until when this node holds a partition's lease, as far as it knows: messages of the
/// partition are processed only before then ([`Delivery::owned`]). A node paused (SIGSTOP,
/// a long GC-like stall of the host) past it finds its lease lapsed when it wakes, and
/// leaves what it had pulled to the partition's new owner.
#[derive(Debug, Default)]
pub struct Fence {
    /// Milliseconds after [`epoch`]; 0: not held.
    until_ms: AtomicU64,
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

impl Fence {
    fn hold_until(&self, until: Instant) {
        let ms = until.saturating_duration_since(epoch()).as_millis() as u64;
        self.until_ms.store(ms.max(1), Ordering::Release);
    }

    fn release(&self) {
        self.until_ms.store(0, Ordering::Release);
    }

    fn held(&self) -> bool {
        let now = Instant::now()
            .saturating_duration_since(epoch())
            .as_millis() as u64;
        now < self.until_ms.load(Ordering::Acquire)
    }
}

/// Pulls messages and hands them to the pipeline, each with its [`NatsAck`].
async fn pull(
    consumer: consumer::PullConsumer,
    fence: Option<Arc<Fence>>,
    acks: mpsc::UnboundedSender<Finished>,
    out: Input,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    loop {
        let mut messages = tokio::select! {
            // Short-lived pull requests with a quick heartbeat: a pull request that went to
            // a NATS server that died is replaced within seconds, not after 30 s.
            m = consumer
                .stream()
                .expires(PULL_EXPIRES)
                .heartbeat(PULL_HEARTBEAT)
                .messages() => match m {
                Ok(m) => m,
                Err(e) => {
                    tracing::error!(error = %e, "Cannot pull from the NATS consumer; retrying.");
                    tokio::select! {
                        _ = tokio::time::sleep(RETRY) => continue,
                        _ = shutdown.cancelled() => return,
                    }
                }
            },
            _ = shutdown.cancelled() => return,
        };
        loop {
            let next = tokio::select! {
                n = messages.next() => n,
                _ = shutdown.cancelled() => return,
            };
            let message = match next {
                Some(Ok(m)) => m,
                Some(Err(e)) => {
                    // Heartbeats missed (the server holding the pull request died, say):
                    // pull afresh.
                    tracing::warn!(error = %e, "Pulling from NATS failed; pulling again.");
                    break;
                }
                None => break,
            };
            let redelivered = message.info().is_ok_and(|i| i.delivered > 1);
            if redelivered {
                metrics.nats_redelivered.inc();
            }
            let (message, acker) = message.split();
            let received_at = Instant::now();
            let ack = Arc::new(NatsAck {
                tx: acks.clone(),
                finished: Some(Finished {
                    acker,
                    arrived: received_at,
                }),
                redelivered,
                fence: fence.clone(),
                abandoned: AtomicBool::new(false),
                settled: Mutex::new(None),
            });
            let inbound = Inbound {
                topic: Bytes::from(topic_of(message.subject.as_str())),
                payload: message.payload,
                received_at,
                ack: Some(ack.clone()),
                delivery: Some(ack),
            };
            if out.send(inbound).await.is_err() {
                // The pipeline stopped: the service is stopping (the message is redelivered).
                return;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(RETRY) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// Reads the readers' stream's state every [`BACKLOG_EVERY`] into the backlog gauges. It is
/// a work-queue stream, so what it holds is exactly what no node has acknowledged. A read
/// that fails (no NATS server answering) leaves the last figures and is logged once a
/// minute.
async fn watch_backlog(
    stream: jetstream::stream::Stream,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let mut log = crate::RateLimitedLog::new(Duration::from_secs(60));
    let mut every = tokio::time::interval(BACKLOG_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        match bounded(stream.get_info()).await {
            Ok(Ok(info)) => {
                let state = &info.state;
                let first_ms = state.first_timestamp.unix_timestamp_nanos() / 1_000_000;
                let age = oldest_age_s(state.messages, first_ms, greenplate_registry::now_ms());
                metrics
                    .nats_backlog_messages
                    .set(i64::try_from(state.messages).unwrap_or(i64::MAX));
                metrics.nats_backlog_oldest_seconds.set(age);
            }
            Ok(Err(e)) if log.allow("backlog") => {
                tracing::warn!(error = %e, "Cannot read the NATS stream's backlog.");
            }
            Err(_) if log.allow("backlog") => {
                tracing::warn!("Reading the NATS stream's backlog timed out.");
            }
            _ => {}
        }
    }
}

/// Seconds since the oldest of `messages` was stored at `first_ms`, as of `now_ms`; 0 for
/// an empty stream (whose first timestamp is the epoch or a deleted message's).
fn oldest_age_s(messages: u64, first_ms: i128, now_ms: i64) -> f64 {
    if messages == 0 {
        return 0.0;
    }
    let age_ms = i128::from(now_ms).saturating_sub(first_ms).max(0);
    age_ms as f64 / 1000.0
}

/// A JetStream message the pipeline is done with.
struct Finished {
    acker: Acker,
    arrived: Instant,
}

/// A JetStream message's acknowledgement: sent when the last holder drops it, unless the
/// message was abandoned ([`Delivery::abandon`]).
pub struct NatsAck {
    tx: mpsc::UnboundedSender<Finished>,
    finished: Option<Finished>,
    redelivered: bool,
    /// The lease of the message's partition (None: no partitions, every node may).
    fence: Option<Arc<Fence>>,
    abandoned: AtomicBool,
    settled: Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

impl Delivery for NatsAck {
    fn redelivered(&self) -> bool {
        self.redelivered
    }

    fn owned(&self) -> bool {
        self.fence.as_ref().is_none_or(|f| f.held())
    }

    fn on_settled(&self, f: Box<dyn FnOnce() + Send>) {
        *self.settled.lock().unwrap_or_else(|p| p.into_inner()) = Some(f);
    }

    fn abandon(&self) {
        self.abandoned.store(true, Ordering::Release);
    }
}

impl Drop for NatsAck {
    fn drop(&mut self) {
        if self.abandoned.load(Ordering::Acquire) {
            // Not acknowledged: JetStream delivers it again once the ack-wait has passed.
            return;
        }
        let settled = self
            .settled
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(settled) = settled {
            // Recorded as processed before the acknowledgement leaves.
            settled();
        }
        if let Some(f) = self.finished.take() {
            // The release task ended only when the service stops; NATS redelivers then.
            let _ = self.tx.send(f);
        }
    }
}

/// Sends the acknowledgements (JetStream acknowledges each message on its own, so no
/// order is kept).
async fn release(mut rx: mpsc::UnboundedReceiver<Finished>, metrics: Arc<Metrics>) {
    while let Some(f) = rx.recv().await {
        match f.acker.ack().await {
            Ok(()) => metrics
                .mqtt_ack_seconds
                .observe(f.arrived.elapsed().as_secs_f64()),
            Err(e) => {
                metrics.ack_failed(ACK_NATS_FAILED);
                tracing::debug!(error = %e, "NATS did not take an acknowledgement; it redelivers.");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backlog_age_is_that_of_the_oldest_message_and_zero_when_empty() {
        assert_eq!(oldest_age_s(0, 0, 1_700_000_000_000), 0.0);
        assert_eq!(oldest_age_s(3, 1_700_000_000_000, 1_700_000_002_500), 2.5);
        // A server clock ahead of ours is no negative age.
        assert_eq!(oldest_age_s(1, 1_700_000_001_000, 1_700_000_000_000), 0.0);
    }

    #[test]
    fn subjects_map_back_to_the_contracts_topics() {
        assert_eq!(
            topic_of("greenplate.readers.rd-1.sightings"),
            "greenplate/readers/rd-1/sightings"
        );
        assert_eq!(
            topic_of("greenplate.readers.rd//1.status"),
            "greenplate/readers/rd.1/status"
        );
        assert_eq!(topic_of("读者.一"), "读者/一");
        assert_eq!(
            topic_of("greenplate.part.3.rd-1.sightings"),
            "greenplate/readers/rd-1/sightings"
        );
    }
}
