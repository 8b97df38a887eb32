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
    pub statuses_accepted: Counter,
    pub reader_wills: Counter,
    pub mqtt_disconnects: Counter,
    pub mqtt_takeovers: Counter,
    pub mqtt_takeover_messages: Counter,
    /// External broker: from a message's arrival to its PUBACK being handed to the client
    /// (how long it holds a slot of the broker's in-flight window).
    pub mqtt_ack_seconds: Histogram,
    /// Rejected batches of every reason, for the command-center page's rate (not exported:
    /// `batches_rejected` has them by reason).
    pub batches_rejected_all: Counter,
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
            statuses_accepted: Counter::default(),
            reader_wills: Counter::default(),
            mqtt_disconnects: Counter::default(),
            mqtt_takeovers: Counter::default(),
            mqtt_takeover_messages: Counter::default(),
            mqtt_ack_seconds: Histogram::new([
                0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0,
            ]),
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
            "Reader messages waiting between the broker and the pipeline workers",
            self.pipeline_queue.clone(),
        );
        sub.register(
            "reader_statuses_accepted",
            "Reader status messages taken",
            self.statuses_accepted.clone(),
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
            "takeovers",
            "Sessions of dead peer nodes this node drained on the external broker",
            self.mqtt_takeovers.clone(),
        );
        sub.register(
            "ack_seconds",
            "External broker: seconds from a message's arrival to its acknowledgement",
            self.mqtt_ack_seconds.clone(),
        );
        sub.register(
            "takeover_messages",
            "Messages taken from dead peer nodes' sessions",
            self.mqtt_takeover_messages.clone(),
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

    /// Counts a rejected sighting.
    pub fn reject_sighting(&self, reason: &'static str) {
        self.sightings_rejected
            .get_or_create(&Reason { reason })
            .inc();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
