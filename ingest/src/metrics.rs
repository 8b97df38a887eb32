//! The service's Prometheus metrics. Every drop and rejection is counted with a reason.

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
    registry: Registry,
    pub batches_accepted: Counter,
    pub batches_rejected: Family<Reason, Counter>,
    pub sightings_accepted: Counter,
    pub sightings_rejected: Family<Reason, Counter>,
    pub sightings_unregistered: Counter,
    pub stolen_sightings: Counter,
    pub flagged_sightings: Counter,
    pub clone_suspects: Counter,
    pub mqtt_auth_failures: Counter,
    pub registered_tags: Gauge,
    pub stream_catchups: Counter,
    pub readers: Gauge,
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
    pub alert_latency_seconds: Histogram,
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
    /// The metrics, with alerting's latency histogram (kept by the engine) among them.
    pub fn new(alert_latency_seconds: Histogram) -> Self {
        let mut registry = Registry::with_prefix("greenplate");
        let m = Self {
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
            registered_tags: Gauge::default(),
            stream_catchups: Counter::default(),
            readers: Gauge::default(),
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
            alert_latency_seconds,
            statuses_accepted: Counter::default(),
            reader_wills: Counter::default(),
            mqtt_disconnects: Counter::default(),
            mqtt_takeovers: Counter::default(),
            mqtt_takeover_messages: Counter::default(),
            mqtt_ack_seconds: Histogram::new([
                0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0,
            ]),
            registry: Registry::default(),
        };
        registry.register(
            "ingest_batches_accepted",
            "Sealed sighting batches accepted",
            m.batches_accepted.clone(),
        );
        registry.register(
            "ingest_batches_rejected",
            "Reader messages dropped, by reason",
            m.batches_rejected.clone(),
        );
        registry.register(
            "ingest_sightings_accepted",
            "Sightings accepted from accepted batches",
            m.sightings_accepted.clone(),
        );
        registry.register(
            "ingest_sightings_rejected",
            "Sightings dropped from accepted batches, by reason",
            m.sightings_rejected.clone(),
        );
        registry.register(
            "ingest_sightings_unregistered",
            "Sightings of tags not in the registry",
            m.sightings_unregistered.clone(),
        );
        registry.register(
            "ingest_stolen_sightings",
            "Sightings of bikes on the hotlist",
            m.stolen_sightings.clone(),
        );
        registry.register(
            "ingest_flagged_sightings",
            "Sightings of stolen, armed or revoked tags, handed to alerting",
            m.flagged_sightings.clone(),
        );
        registry.register(
            "ingest_clone_suspects",
            "Sightings at an impossible speed from the tag's last sighting",
            m.clone_suspects.clone(),
        );
        registry.register(
            "mqtt_auth_failures",
            "MQTT logins refused",
            m.mqtt_auth_failures.clone(),
        );
        registry.register(
            "registry_tags",
            "Tags in the hot index",
            m.registered_tags.clone(),
        );
        registry.register("registry_readers", "Readers provisioned", m.readers.clone());
        registry.register(
            "alerting_stream_catchups",
            "Times a patrol stream fell behind the live feed and caught up from the alert log",
            m.stream_catchups.clone(),
        );
        registry.register(
            "ingest_reads",
            "Tag reads in accepted sightings (a sighting may fold several)",
            m.reads.clone(),
        );
        registry.register(
            "ingest_passes_opened",
            "Passes opened (first read of a tag by a reader after the gap); rules run here",
            m.passes_opened.clone(),
        );
        registry.register(
            "ingest_passes_closed",
            "Passes closed and handed to the history writer",
            m.passes_closed.clone(),
        );
        registry.register(
            "ingest_passes_evicted",
            "Times the open-pass cap was reached and every pass was closed early",
            m.passes_evicted.clone(),
        );
        registry.register(
            "ingest_open_passes",
            "Passes open now",
            m.open_passes.clone(),
        );
        registry.register(
            "history_passes_stored",
            "Passes written to the pass history",
            m.passes_stored.clone(),
        );
        registry.register(
            "history_queue",
            "Closed passes waiting for the history writer",
            m.history_queue.clone(),
        );
        registry.register(
            "history_backpressure",
            "Times a worker waited because the history queue was full",
            m.history_backpressure.clone(),
        );
        registry.register(
            "history_backpressure_seconds",
            "Time workers spent waiting for room in the history queue",
            m.history_backpressure_seconds.clone(),
        );
        registry.register(
            "history_write_errors",
            "Failed history writes (retried, not dropped)",
            m.history_write_errors.clone(),
        );
        registry.register(
            "history_write_seconds",
            "Time per history transaction",
            m.history_write_seconds.clone(),
        );
        registry.register(
            "history_lag_seconds",
            "Store lag: age of the oldest pass in the last written batch, from its close",
            m.history_lag_seconds.clone(),
        );
        registry.register(
            "history_passes_purged",
            "Passes deleted by the retention job",
            m.passes_purged.clone(),
        );
        registry.register(
            "ingest_queue",
            "Reader messages waiting between the broker and the pipeline workers",
            m.pipeline_queue.clone(),
        );
        registry.register(
            "alert_latency_seconds",
            "From ingest receiving a sighting to its alert committed and on the live feed",
            m.alert_latency_seconds.clone(),
        );
        registry.register(
            "ingest_reader_statuses_accepted",
            "Reader status messages taken",
            m.statuses_accepted.clone(),
        );
        registry.register(
            "ingest_reader_wills",
            "Readers' last wills taken (the reader went offline)",
            m.reader_wills.clone(),
        );
        registry.register(
            "mqtt_external_disconnects",
            "Times ingest lost its connection to the external broker",
            m.mqtt_disconnects.clone(),
        );
        registry.register(
            "mqtt_takeovers",
            "Sessions of dead peer nodes this node drained on the external broker",
            m.mqtt_takeovers.clone(),
        );
        registry.register(
            "mqtt_ack_seconds",
            "External broker: seconds from a message's arrival to its acknowledgement",
            m.mqtt_ack_seconds.clone(),
        );
        registry.register(
            "mqtt_takeover_messages",
            "Messages taken from dead peer nodes' sessions",
            m.mqtt_takeover_messages.clone(),
        );
        Self { registry, ..m }
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

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new(Histogram::new([0.001, 0.01, 0.1, 1.0]))
    }
}
