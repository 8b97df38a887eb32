//! The service's Prometheus metrics. Every drop and rejection is counted with a reason.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

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
    pub stream_catchups: Gauge,
    pub readers: Gauge,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("greenplate");
        let m = Self {
            batches_accepted: Counter::default(),
            batches_rejected: Family::default(),
            sightings_accepted: Counter::default(),
            sightings_rejected: Family::default(),
            sightings_unregistered: Counter::default(),
            stolen_sightings: Counter::default(),
            flagged_sightings: Counter::default(),
            clone_suspects: Counter::default(),
            mqtt_auth_failures: Counter::default(),
            registered_tags: Gauge::default(),
            stream_catchups: Gauge::default(),
            readers: Gauge::default(),
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
        Self { registry, ..m }
    }

    /// Counts a rejected batch.
    pub fn reject_batch(&self, reason: &'static str) {
        self.batches_rejected
            .get_or_create(&Reason { reason })
            .inc();
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
        Self::new()
    }
}
