//! What a district run is asked to do ([`DistrictSpec`], its [`TrafficMode`]) and where the
//! server is ([`Target`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use crate::rf::RfSpec;
use crate::roads::{BBox, CHAOYANG};
use crate::scenarios::Rules;

/// How honest traffic is made.
#[derive(Debug, Clone)]
pub enum TrafficMode {
    /// Every registered bike rides the roads with the daily rhythm: what a district sees.
    Roads,
    /// Throughput: each reader reports `sightings_per_batch` of "its own" registered bikes
    /// every batch (each bike is only ever near one reader, so no honest bike looks cloned);
    /// the scenario bikes still ride the roads.
    Stress { sightings_per_batch: usize },
}

/// Where the server is.
#[derive(Debug, Clone)]
pub struct Target {
    /// gRPC URL; `None`: no greenplate at all (readers publish to a bare broker, nothing is
    /// provisioned, no scenario), for the broker-alone comparison.
    pub grpc_url: Option<String>,
    pub admin_token: String,
    pub mqtt_host: String,
    pub mqtt_port: u16,
    /// The server's HTTP address, for `/metrics`.
    pub metrics: Option<SocketAddr>,
    /// The server's pid (same machine), for CPU and memory.
    pub server_pid: Option<u32>,
    /// Publish sightings to `{prefix}{reader}/sightings` instead of greenplate's topic.
    pub topic_prefix: Option<String>,
    /// Counts messages that reached a bare subscriber (the broker-alone comparison).
    pub relay_counter: Option<Arc<AtomicU64>>,
    /// An external broker's pid (same machine), for its CPU and memory.
    pub broker_pid: Option<u32>,
    /// More nodes of the same deployment (HTTP address for `/metrics`, pid): their
    /// counters and CPU are added to the server's.
    pub more_nodes: Vec<(SocketAddr, u32)>,
}

impl Target {
    /// A bare broker at `host:port` relaying the readers' messages (published under
    /// `topic_prefix`) to a subscriber that counts them in `counter`: no greenplate.
    pub fn relay(
        host: String,
        port: u16,
        topic_prefix: String,
        counter: Arc<AtomicU64>,
        broker_pid: Option<u32>,
    ) -> Self {
        Self {
            grpc_url: None,
            admin_token: String::new(),
            mqtt_host: host,
            mqtt_port: port,
            metrics: None,
            server_pid: None,
            topic_prefix: Some(topic_prefix),
            relay_counter: Some(counter),
            broker_pid,
            more_nodes: Vec::new(),
        }
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct DistrictSpec {
    /// A label for the report.
    pub setup: String,
    /// Prefix of every id this run provisions.
    pub prefix: String,
    /// The bulk import's run number: registered bike i has `town::tag_id(run, i)`.
    pub run: u64,
    /// Registered (imported) bikes.
    pub bikes: usize,
    pub readers: usize,
    /// The area, and intersections per reader in it.
    pub bbox: BBox,
    pub intersections_per_reader: usize,
    /// Patrol zones, columns x rows over the district.
    pub zones: (usize, usize),
    pub drive: Duration,
    /// After the drive: how long to wait for the last alerts and for ingest to catch up.
    pub settle: Duration,
    /// Each reader sends what it read every this many ms.
    pub batch_ms: u64,
    /// Most sightings in one message (more are split).
    pub batch_max: usize,
    pub traffic: TrafficMode,
    pub start_hour: f64,
    pub day_seconds: f64,
    pub rf: RfSpec,
    pub rules: Rules,
    /// Scenarios.
    pub thefts: usize,
    pub armed: usize,
    pub clone: bool,
    pub offline_reader: bool,
    /// A reader flooding garbage: messages per second, for how long.
    pub garbage: Option<(u32, Duration)>,
    pub seed: u64,
    pub progress: bool,
    /// Readers publish at their own phase of the batch interval (reader k waits
    /// k * batch_ms / readers), as real readers do, instead of all at once on the tick.
    /// Latency is measured from each publish either way.
    pub spread_readers: bool,
}

impl DistrictSpec {
    /// The district at its real size, with every scenario.
    pub fn chaoyang(prefix: String, run: u64) -> Self {
        Self {
            setup: "district".into(),
            prefix,
            run,
            bikes: 210_000,
            readers: 1000,
            bbox: CHAOYANG,
            intersections_per_reader: 4,
            zones: (4, 4),
            drive: Duration::from_secs(60),
            settle: Duration::from_secs(10),
            batch_ms: 200,
            batch_max: 200,
            traffic: TrafficMode::Roads,
            start_hour: 18.0,
            day_seconds: 86_400.0,
            rf: RfSpec::default(),
            rules: Rules::default(),
            thefts: 5,
            armed: 3,
            clone: true,
            offline_reader: true,
            garbage: Some((2000, Duration::from_secs(3))),
            seed: 1,
            progress: true,
            spread_readers: false,
        }
    }
}
