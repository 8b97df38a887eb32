//! Ingest's Prometheus metrics (the pipeline, the brokers, the history writer). Every drop
//! and rejection is counted with a reason. The other crates register their own; the
//! service composes them into one registry.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

/// A `reason` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    pub reason: &'static str,
}

/// A `reader` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReaderLabel {
    pub reader: String,
}

/// `messages_lost` reason: the embedded broker overwrote messages in its ring before ingest
/// read them (they had been acknowledged to the reader).
pub const LOST_RING_OVERWRITTEN: &str = "broker_ring_overwritten";
/// `flagged_sightings_lost` reason: the alerting engine had stopped.
pub const LOST_ENGINE_STOPPED: &str = "engine_stopped";
/// `mqtt_acks_failed` reason: the connection to the external broker was gone when the
/// PUBACK was due (the broker delivers the message again).
pub const ACK_DISCONNECTED: &str = "disconnected";
/// `mqtt_acks_failed` reason: NATS did not take a JetStream acknowledgement (it redelivers the
/// message after the consumer's ack-wait; the seq window takes it once).
pub const ACK_NATS_FAILED: &str = "nats_ack_failed";
/// `nats_logins_failed` reasons: the readers could not be read; the logins file could not
/// be written (or a password hashed); the reload command failed.
pub const LOGINS_READ_FAILED: &str = "read";
pub const LOGINS_WRITE_FAILED: &str = "write";
pub const LOGINS_RELOAD_FAILED: &str = "reload";
const LOGINS_FAILED_REASONS: [&str; 3] = [
    LOGINS_READ_FAILED,
    LOGINS_WRITE_FAILED,
    LOGINS_RELOAD_FAILED,
];

/// `mqtt_refused` reason (the embedded broker's reader ACL): a PUBLISH to a topic other than
/// the reader's own two.
pub const REFUSED_TOPIC: &str = "publish_topic";
/// `mqtt_refused` reason: a PUBLISH with the retain flag.
pub const REFUSED_RETAIN: &str = "retain";
/// `mqtt_refused` reason: a SUBSCRIBE or UNSUBSCRIBE.
pub const REFUSED_SUBSCRIBE: &str = "subscribe";
/// `mqtt_refused` reason: a last will on another topic than the reader's own status topic.
pub const REFUSED_WILL: &str = "will_topic";
/// `mqtt_refused` reason: a second CONNECT on one connection.
pub const REFUSED_RECONNECT: &str = "second_connect";

/// Every `mqtt_refused` reason, exported at 0 from the start.
const REFUSED_REASONS: [&str; 5] = [
    REFUSED_TOPIC,
    REFUSED_RETAIN,
    REFUSED_SUBSCRIBE,
    REFUSED_WILL,
    REFUSED_RECONNECT,
];

/// Every `messages_lost` reason, exported at 0 from the start so that a rate and an alert
/// rule see the series before the first loss.
const LOST_REASONS: [&str; 1] = [LOST_RING_OVERWRITTEN];
const FLAGGED_LOST_REASONS: [&str; 1] = [LOST_ENGINE_STOPPED];
const ACK_FAILED_REASONS: [&str; 2] = [ACK_DISCONNECTED, ACK_NATS_FAILED];

/// Counters and gauges, registered in their own registry (one per service instance).
#[derive(Debug)]
pub struct Metrics {
    pub batches_accepted: Counter,
    pub batches_rejected: Family<Reason, Counter>,
    pub sightings_accepted: Counter,
    pub sightings_rejected: Family<Reason, Counter>,
    pub sightings_unregistered: Counter,
    pub stolen_sightings: Counter,
    pub flagged_sightings: Counter,
    pub clone_suspects: Counter,
    pub mqtt_auth_failures: Counter,
    pub reads: Counter,
    pub passes_opened: Counter,
    pub passes_closed: Counter,
    pub passes_evicted: Counter,
    pub open_passes: Gauge,
    pub passes_stored: Counter,
    pub history_queue: Gauge,
    pub history_backpressure: Counter,
    pub history_backpressure_seconds: Counter<f64, AtomicU64>,
    pub history_write_errors: Counter,
    pub history_write_seconds: Histogram,
    pub history_lag_seconds: Gauge<f64, AtomicU64>,
    pub passes_purged: Counter,
    pub pipeline_queue: Gauge,
    /// NATS partitions of reader subjects this node holds the lease of (issue #16).
    pub nats_partitions_owned: Gauge,
    /// `nats.partitions`, so an alert can compare it with the sum of what the nodes own.
    pub nats_partitions: Gauge,
    /// Messages NATS delivered again (a node did not acknowledge them within the ack-wait).
    pub nats_redelivered: Counter,
    /// The readers' stream as NATS holds it, read every [`BACKLOG_EVERY`]: messages not yet
    /// acknowledged by any node (waiting, or delivered and in flight), and the age of the
    /// oldest (0 when none). Every node reports the same stream, so take the max.
    ///
    /// [`BACKLOG_EVERY`]: crate::broker::nats::BACKLOG_EVERY
    pub nats_backlog_messages: Gauge,
    pub nats_backlog_oldest_seconds: Gauge<f64, AtomicU64>,
    /// Reader users in the NATS logins file (`nats.logins_file`), and its rewrites.
    pub nats_logins: Gauge,
    pub nats_logins_written: Counter,
    pub nats_logins_failed: Family<Reason, Counter>,
    /// How many messages the workers' queues hold at most.
    pub pipeline_queue_capacity: Gauge,
    pub statuses_accepted: Counter,
    pub reader_wills: Counter,
    pub mqtt_disconnects: Counter,
    /// External broker: from a message's arrival to its PUBACK being handed to the client
    /// (how long it holds a slot of the broker's in-flight window).
    pub mqtt_ack_seconds: Histogram,
    /// Rejected batches of every reason, for the command-center page's rate (not exported:
    /// `batches_rejected` has them by reason).
    pub batches_rejected_all: Counter,
    /// Reader messages that reached greenplate and were then lost, by reason.
    pub messages_lost: Family<Reason, Counter>,
    /// Sightings of flagged bikes that were decoded but never reached alerting, by reason.
    pub flagged_sightings_lost: Family<Reason, Counter>,
    /// Seqs of a reader's batches that left its seq window never processed, by reader.
    pub reader_batches_missing: Family<ReaderLabel, Counter>,
    /// PUBACKs to the external broker that could not be sent, by reason.
    pub mqtt_acks_failed: Family<Reason, Counter>,
    /// Embedded broker: connections closed for doing what a reader may not, by reason.
    pub mqtt_refused: Family<Reason, Counter>,
}

impl Metrics {
    /// The metrics, zero; [`Metrics::register`] exports them.
    pub fn new() -> Self {
        Self {
            batches_accepted: Counter::default(),
            batches_rejected: Family::default(),
            batches_rejected_all: Counter::default(),
            sightings_accepted: Counter::default(),
            sightings_rejected: Family::default(),
            sightings_unregistered: Counter::default(),
            stolen_sightings: Counter::default(),
            flagged_sightings: Counter::default(),
            clone_suspects: Counter::default(),
            mqtt_auth_failures: Counter::default(),
            reads: Counter::default(),
            passes_opened: Counter::default(),
            passes_closed: Counter::default(),
            passes_evicted: Counter::default(),
            open_passes: Gauge::default(),
            passes_stored: Counter::default(),
            history_queue: Gauge::default(),
            history_backpressure: Counter::default(),
            history_backpressure_seconds: Counter::default(),
            history_write_errors: Counter::default(),
            history_write_seconds: Histogram::new([0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0]),
            history_lag_seconds: Gauge::default(),
            passes_purged: Counter::default(),
            pipeline_queue: Gauge::default(),
            nats_partitions_owned: Gauge::default(),
            nats_partitions: Gauge::default(),
            nats_redelivered: Counter::default(),
            nats_backlog_messages: Gauge::default(),
            nats_backlog_oldest_seconds: Gauge::default(),
            nats_logins: Gauge::default(),
            nats_logins_written: Counter::default(),
            nats_logins_failed: zeroed(&LOGINS_FAILED_REASONS),
            pipeline_queue_capacity: Gauge::default(),
            statuses_accepted: Counter::default(),
            reader_wills: Counter::default(),
            mqtt_disconnects: Counter::default(),
            mqtt_ack_seconds: Histogram::new([
                0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0,
            ]),
            messages_lost: zeroed(&LOST_REASONS),
            flagged_sightings_lost: zeroed(&FLAGGED_LOST_REASONS),
            reader_batches_missing: Family::default(),
            mqtt_acks_failed: zeroed(&ACK_FAILED_REASONS),
            mqtt_refused: zeroed(&REFUSED_REASONS),
        }
    }

    /// Registers every metric of the pipeline and the broker under `registry` (the
    /// service's, prefixed `greenplate`): `ingest_*`, `mqtt_*`, `history_*`.
    pub fn register(&self, registry: &mut Registry) {
        let sub = registry.sub_registry_with_prefix("ingest");
        sub.register(
            "batches_accepted",
            "Sealed sighting batches accepted",
            self.batches_accepted.clone(),
        );
        sub.register(
            "batches_rejected",
            "Reader messages dropped, by reason",
            self.batches_rejected.clone(),
        );
        sub.register(
            "sightings_accepted",
            "Sightings accepted from accepted batches",
            self.sightings_accepted.clone(),
        );
        sub.register(
            "sightings_rejected",
            "Sightings dropped from accepted batches, by reason",
            self.sightings_rejected.clone(),
        );
        sub.register(
            "sightings_unregistered",
            "Sightings of tags not in the registry",
            self.sightings_unregistered.clone(),
        );
        sub.register(
            "stolen_sightings",
            "Sightings of bikes on the hotlist",
            self.stolen_sightings.clone(),
        );
        sub.register(
            "flagged_sightings",
            "Sightings of stolen, armed or revoked tags, handed to alerting",
            self.flagged_sightings.clone(),
        );
        sub.register(
            "clone_suspects",
            "Sightings at an impossible speed from the tag's last sighting",
            self.clone_suspects.clone(),
        );
        sub.register(
            "reads",
            "Tag reads in accepted sightings (a sighting may fold several)",
            self.reads.clone(),
        );
        sub.register(
            "passes_opened",
            "Passes opened (first read of a tag by a reader after the gap); rules run here",
            self.passes_opened.clone(),
        );
        sub.register(
            "passes_closed",
            "Passes closed and handed to the history writer",
            self.passes_closed.clone(),
        );
        sub.register(
            "passes_evicted",
            "Times the open-pass cap was reached and every pass was closed early",
            self.passes_evicted.clone(),
        );
        sub.register("open_passes", "Passes open now", self.open_passes.clone());
        sub.register(
            "queue",
            "Reader messages queued on the pipeline workers (set as messages arrive)",
            self.pipeline_queue.clone(),
        );
        sub.register(
            "queue_capacity",
            "Reader messages the pipeline workers' queues hold at most; behind them, the broker",
            self.pipeline_queue_capacity.clone(),
        );
        sub.register(
            "reader_statuses_accepted",
            "Reader status messages taken",
            self.statuses_accepted.clone(),
        );
        sub.register(
            "messages_lost",
            "Reader messages that reached greenplate and were lost before the pipeline, by reason",
            self.messages_lost.clone(),
        );
        sub.register(
            "flagged_sightings_lost",
            "Sightings of flagged bikes that never reached alerting, by reason",
            self.flagged_sightings_lost.clone(),
        );
        sub.register(
            "reader_batches_missing",
            "Batch seqs a reader numbered that left its seq window never processed (lost before \
             greenplate, lost in it, or refused before the seq was read), by reader",
            self.reader_batches_missing.clone(),
        );
        sub.register(
            "reader_wills",
            "Readers' last wills taken (the reader went offline)",
            self.reader_wills.clone(),
        );
        let sub = registry.sub_registry_with_prefix("mqtt");
        sub.register(
            "auth_failures",
            "MQTT logins refused",
            self.mqtt_auth_failures.clone(),
        );
        sub.register(
            "external_disconnects",
            "Times ingest lost its connection to the external broker",
            self.mqtt_disconnects.clone(),
        );
        sub.register(
            "ack_seconds",
            "External broker: seconds from a message's arrival to its acknowledgement",
            self.mqtt_ack_seconds.clone(),
        );
        sub.register(
            "refused",
            "Embedded broker: reader connections closed for a publish outside their own topics, \
             a retained publish, a subscribe or a will elsewhere, by reason",
            self.mqtt_refused.clone(),
        );
        sub.register(
            "acks_failed",
            "External broker: PUBACKs that could not be sent, by reason (the broker redelivers)",
            self.mqtt_acks_failed.clone(),
        );
        registry.sub_registry_with_prefix("nats").register(
            "partitions_owned",
            "Partitions of the readers' NATS subjects whose lease this node holds",
            self.nats_partitions_owned.clone(),
        );
        registry.sub_registry_with_prefix("nats").register(
            "partitions",
            "Partitions of the readers' NATS subjects (nats.partitions; 0: one consumer for all)",
            self.nats_partitions.clone(),
        );
        registry.sub_registry_with_prefix("nats").register(
            "redelivered",
            "Reader messages NATS delivered again: the node that had them did not acknowledge them within the ack-wait (it died, hung, or was too slow)",
            self.nats_redelivered.clone(),
        );
        let nats = registry.sub_registry_with_prefix("nats");
        nats.register(
            "backlog_messages",
            "Reader messages in the NATS stream that no node has acknowledged yet (waiting, or delivered and in flight); the same stream on every node",
            self.nats_backlog_messages.clone(),
        );
        nats.register(
            "backlog_oldest_seconds",
            "Age of the oldest reader message in the NATS stream not yet acknowledged (0 when none)",
            self.nats_backlog_oldest_seconds.clone(),
        );
        nats.register(
            "logins",
            "Reader users in the NATS logins file (nats.logins_file)",
            self.nats_logins.clone(),
        );
        nats.register(
            "logins_written",
            "Times the NATS logins file was rewritten (readers added, disabled or re-keyed)",
            self.nats_logins_written.clone(),
        );
        nats.register(
            "logins_failed",
            "Failures keeping the NATS logins file, by reason (read, write, reload); retried",
            self.nats_logins_failed.clone(),
        );
        let sub = registry.sub_registry_with_prefix("history");
        sub.register(
            "passes_stored",
            "Passes written to the pass history",
            self.passes_stored.clone(),
        );
        sub.register(
            "queue",
            "Closed passes waiting for the history writer",
            self.history_queue.clone(),
        );
        sub.register(
            "backpressure",
            "Times a worker waited because the history queue was full",
            self.history_backpressure.clone(),
        );
        sub.register(
            "backpressure_seconds",
            "Time workers spent waiting for room in the history queue",
            self.history_backpressure_seconds.clone(),
        );
        sub.register(
            "write_errors",
            "Failed history writes (retried, not dropped)",
            self.history_write_errors.clone(),
        );
        sub.register(
            "write_seconds",
            "Time per history transaction",
            self.history_write_seconds.clone(),
        );
        sub.register(
            "lag_seconds",
            "Store lag: age of the oldest pass in the last written batch, from its close",
            self.history_lag_seconds.clone(),
        );
        sub.register(
            "passes_purged",
            "Passes deleted by the retention job",
            self.passes_purged.clone(),
        );
    }

    /// Counts a rejected batch.
    pub fn reject_batch(&self, reason: &'static str) {
        self.batches_rejected
            .get_or_create(&Reason { reason })
            .inc();
        self.batches_rejected_all.inc();
    }

    /// Counts reader messages lost for `reason`.
    pub fn lost(&self, reason: &'static str, n: u64) {
        self.messages_lost
            .get_or_create(&Reason { reason })
            .inc_by(n);
    }

    /// Counts a flagged sighting that did not reach alerting.
    pub fn flagged_lost(&self, reason: &'static str) {
        self.flagged_sightings_lost
            .get_or_create(&Reason { reason })
            .inc();
    }

    /// Counts seqs of `reader`'s batches found missing.
    pub fn batches_missing(&self, reader: &str, n: u64) {
        self.reader_batches_missing
            .get_or_create(&ReaderLabel {
                reader: reader.to_owned(),
            })
            .inc_by(n);
    }

    /// Counts a failure to keep the NATS logins file.
    pub fn nats_logins_failed(&self, reason: &'static str) {
        self.nats_logins_failed
            .get_or_create(&Reason { reason })
            .inc();
    }

    /// Counts a PUBACK that could not be sent.
    pub fn ack_failed(&self, reason: &'static str) {
        self.mqtt_acks_failed
            .get_or_create(&Reason { reason })
            .inc();
    }

    /// Counts a reader connection the embedded broker closed.
    pub fn refused(&self, reason: &'static str) {
        self.mqtt_refused.get_or_create(&Reason { reason }).inc();
    }

    /// Counts a rejected sighting.
    pub fn reject_sighting(&self, reason: &'static str) {
        self.sightings_rejected
            .get_or_create(&Reason { reason })
            .inc();
    }
}

/// A family with a zero series for each of `reasons`.
fn zeroed(reasons: &[&'static str]) -> Family<Reason, Counter> {
    let family = Family::default();
    for &reason in reasons {
        drop(family.get_or_create(&Reason { reason }));
    }
    family
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
