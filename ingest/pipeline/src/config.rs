//! The configuration of the broker side and the pipeline: `[mqtt]` and `[ingest]` of the
//! service's config file (the service's `Config` holds them; every field is documented in
//! the default file `greenplate generate-config` prints).

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// The embedded MQTT broker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// Address readers connect to.
    #[serde(default = "default_mqtt_listen")]
    pub listen: SocketAddr,
    /// Largest MQTT payload accepted, bytes; a larger publish closes the connection.
    #[serde(default = "default_max_payload")]
    pub max_payload_bytes: usize,
    /// Most simultaneous MQTT connections.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Memory for reader messages waiting for ingest, in MiB: a ring of segments (at most
    /// 4 MiB each, at least 8 of them) whose oldest is dropped when full, read or not: how
    /// far ingest may fall behind. What is dropped unread is counted in
    /// `greenplate_ingest_messages_lost_total{reason="broker_ring_overwritten"}`. It stays
    /// resident once filled, so it is sized for a second or so at 1 M reads/s, not more.
    #[serde(default = "default_buffer_mib")]
    pub buffer_mib: usize,
    /// An external broker instead of the embedded one: `mqtt://HOST[:PORT]`, or
    /// `mqtts://HOST[:PORT]` for TLS (checked against `ca_file`). Ingest then
    /// subscribes to the reader topics with a shared subscription, QoS 1, and acknowledges
    /// each message only once it is handed on.
    #[serde(default)]
    pub url: Option<String>,
    /// Credentials for the external broker, if it asks for them.
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    /// This node's MQTT client id on the external broker; default `greenplate-` + random.
    #[serde(default)]
    pub client_id: Option<String>,
    /// The shared-subscription group every node of one deployment joins.
    #[serde(default = "default_share_group")]
    pub share_group: String,
    /// Removed (issue #16): the takeover of a dead node's persistent session on Mosquitto
    /// gave way to NATS JetStream (`[nats]`). Still read, only so that a config that sets
    /// it is refused with a message that says what to do instead; not written.
    #[serde(default, skip_serializing)]
    pub persistent_session: Option<bool>,
    /// The embedded listener speaks MQTT over TLS (readers connect with TLS, to the same
    /// `listen` address), with the service's `[tls]` certificate. Off by default.
    #[serde(default)]
    pub tls: bool,
    /// With an `mqtts://` external broker: the CA certificate(s) (PEM) to check it by.
    #[serde(default)]
    pub ca_file: Option<std::path::PathBuf>,
}

/// NATS JetStream as the source of reader messages (issue #16): readers publish over MQTT to
/// NATS's MQTT listener, a JetStream stream keeps their messages, and every node consumes
/// them through one durable consumer, acknowledging each message once it is handled. A
/// message a node took and did not acknowledge within `ack_wait_s` (the node died or hung)
/// goes to another node: JetStream redelivers it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    /// `nats://HOST:PORT[,nats://HOST:PORT...]`; none (the default) leaves NATS out.
    #[serde(default)]
    pub url: Option<String>,
    /// Login on NATS, if it asks for one.
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    /// The stream that keeps reader messages (created if missing).
    #[serde(default = "default_nats_stream")]
    pub stream: String,
    /// Replicas of the stream when this node creates it (3 on a three-server cluster).
    #[serde(default = "default_nats_replicas")]
    pub replicas: usize,
    /// The durable consumer every node pulls from.
    #[serde(default = "default_nats_consumer")]
    pub consumer: String,
    /// How long a message may stay unacknowledged before JetStream hands it to another node.
    #[serde(default = "default_nats_ack_wait_s")]
    pub ack_wait_s: u64,
    /// Messages out at once, unacknowledged, over all nodes (per partition).
    #[serde(default = "default_nats_max_ack_pending")]
    pub max_ack_pending: i64,
    /// Per-reader affinity: 0 (the default) pulls every reader's messages from one consumer
    /// on `greenplate.readers.*.*`. N > 0 needs nats-server to map
    /// `greenplate.readers.*.*` to `greenplate.part.{{partition(N,1)}}.{{wildcard(1)}}.{{wildcard(2)}}`
    /// (deploy/nats): each partition then has its own consumer, and one node at a time
    /// pulls from it, holding a lease in a JetStream key-value bucket; so a reader's
    /// messages go to one node at a time.
    #[serde(default)]
    pub partitions: u32,
    /// How long a partition's lease lasts unless renewed (every third of it): a dead node's
    /// partitions go to live nodes after this.
    #[serde(default = "default_nats_lease_s")]
    pub lease_s: u64,
    /// Reader logins for nats-server: this node writes, to this file, an `authorization`
    /// block with one user per enabled reader (its MQTT password as bcrypt, allowed to
    /// publish only on its own two subjects) and this node's own user (`username`,
    /// `password`), and rewrites it when readers are added, disabled or re-keyed.
    /// nats-server's config includes it (`include greenplate-logins.conf`). None (the
    /// default): nats-server's logins are kept by hand.
    #[serde(default)]
    pub logins_file: Option<std::path::PathBuf>,
    /// Run after each rewrite of `logins_file` so nats-server reloads it, for example
    /// `["nats-server", "--signal", "reload=/var/run/nats-server.pid"]`. Empty (the
    /// default): nothing is run (reload it another way: deploy/README).
    #[serde(default)]
    pub reload_command: Vec<String>,
    /// How often the readers are checked for changes to the logins, in seconds.
    #[serde(default = "default_nats_logins_check_s")]
    pub logins_check_s: u64,
    /// bcrypt cost of the reader passwords in `logins_file` (4..=31). The passwords are
    /// random (256 bits for v2 secrets), so a low cost keeps rewrites and NATS's check of
    /// each login cheap without making them guessable.
    #[serde(default = "default_nats_login_bcrypt_cost")]
    pub login_bcrypt_cost: u32,
}

fn default_nats_logins_check_s() -> u64 {
    5
}

fn default_nats_login_bcrypt_cost() -> u32 {
    6
}

fn default_nats_lease_s() -> u64 {
    6
}

fn default_nats_stream() -> String {
    "GREENPLATE_READERS".into()
}
fn default_nats_replicas() -> usize {
    1
}
fn default_nats_consumer() -> String {
    "greenplate-ingest".into()
}
fn default_nats_ack_wait_s() -> u64 {
    30
}
fn default_nats_max_ack_pending() -> i64 {
    20_000
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            url: None,
            username: None,
            password: None,
            stream: default_nats_stream(),
            replicas: default_nats_replicas(),
            consumer: default_nats_consumer(),
            ack_wait_s: default_nats_ack_wait_s(),
            max_ack_pending: default_nats_max_ack_pending(),
            partitions: 0,
            lease_s: default_nats_lease_s(),
            logins_file: None,
            reload_command: Vec::new(),
            logins_check_s: default_nats_logins_check_s(),
            login_bcrypt_cost: default_nats_login_bcrypt_cost(),
        }
    }
}

/// Checks on what readers send.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestConfig {
    /// A sighting (or status) stamped further than this from the server clock is rejected,
    /// milliseconds: the bound into the past (a reader's buffer after an outage), and an
    /// upper limit of the bound into the future.
    #[serde(default = "default_max_clock_skew_ms")]
    pub max_clock_skew_ms: i64,
    /// A sighting (or status) stamped further than this into the future is rejected,
    /// milliseconds (at most `max_clock_skew_ms`). Short: a batch stamped ahead of time
    /// would alert as if seen then.
    #[serde(default = "default_max_future_skew_ms")]
    pub max_future_skew_ms: i64,
    /// Reads of a tag by a reader no further apart than this are one pass; a pass this long
    /// without a read closes, milliseconds.
    #[serde(default = "default_pass_gap_ms")]
    pub pass_gap_ms: i64,
    /// Most passes open at once per pipeline worker (a memory bound).
    #[serde(default = "default_max_open_passes")]
    pub max_open_passes: usize,
    /// Closed passes queued for the history writer before workers wait.
    #[serde(default = "default_history_queue")]
    pub history_queue: usize,
    /// Pass history is kept this many days.
    #[serde(default = "default_history_retention_days")]
    pub history_retention_days: u32,
    /// Take unsealed formats (json, impinj, zebra) through the embedded broker, which cannot
    /// tell which reader published a message: any provisioned reader could then speak for
    /// every unsealed one. Off by default; with an external broker, its ACLs bind readers to
    /// their topics and unsealed formats are taken.
    #[serde(default)]
    pub unsealed_on_embedded_broker: bool,
    /// Messages (batches and statuses) a reader may send a second on average; more are
    /// dropped as `flood`. Only messages that open under the reader's key count (for an
    /// unsealed format, every message on its topic).
    #[serde(default = "default_reader_messages_per_s")]
    pub reader_messages_per_s: f64,
    /// Messages a reader may send at once after a quiet spell.
    #[serde(default = "default_reader_messages_burst")]
    pub reader_messages_burst: f64,
    /// Messages that do not open under their reader's key (junk, forgeries, replays), all
    /// readers together, a second on average; more are counted as `unauthentic_flood`
    /// instead of by their own reason. They never spend a reader's budget.
    #[serde(default = "default_unauthentic_messages_per_s")]
    pub unauthentic_messages_per_s: f64,
    /// Unauthentic messages counted by their own reason at once after a quiet spell.
    #[serde(default = "default_unauthentic_messages_burst")]
    pub unauthentic_messages_burst: f64,
    /// A reader with no accepted batch and no status for this long is offline, seconds.
    #[serde(default = "default_reader_offline_after_s")]
    pub reader_offline_after_s: u64,
}

impl IngestConfig {
    /// How far from the server's clock reader timestamps may be.
    pub fn skew(&self) -> crate::decode::Skew {
        crate::decode::Skew::new(self.max_clock_skew_ms, self.max_future_skew_ms)
    }

    pub fn smooth(&self) -> crate::smooth::SmoothConfig {
        crate::smooth::SmoothConfig {
            gap_ms: self.pass_gap_ms,
            max_open: self.max_open_passes,
        }
    }

    pub fn store(&self) -> crate::history::StoreConfig {
        crate::history::StoreConfig {
            queue: self.history_queue,
            batch: 5000,
            linger: std::time::Duration::from_millis(200),
        }
    }

    pub fn history_retention(&self) -> std::time::Duration {
        std::time::Duration::from_secs(u64::from(self.history_retention_days) * 86_400)
    }
}

fn default_mqtt_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 1883))
}

fn default_max_payload() -> usize {
    256 * 1024
}

fn default_max_connections() -> usize {
    10_000
}

fn default_buffer_mib() -> usize {
    16
}

fn default_max_future_skew_ms() -> i64 {
    2 * 60 * 1000
}

fn default_max_clock_skew_ms() -> i64 {
    24 * 3600 * 1000
}

fn default_share_group() -> String {
    "greenplate".into()
}

fn default_pass_gap_ms() -> i64 {
    5_000
}

fn default_max_open_passes() -> usize {
    1_000_000
}

fn default_history_queue() -> usize {
    200_000
}

fn default_history_retention_days() -> u32 {
    90
}

fn default_reader_messages_per_s() -> f64 {
    100.0
}

fn default_reader_messages_burst() -> f64 {
    500.0
}

fn default_unauthentic_messages_per_s() -> f64 {
    1000.0
}

fn default_unauthentic_messages_burst() -> f64 {
    5000.0
}

fn default_reader_offline_after_s() -> u64 {
    300
}

impl MqttConfig {
    /// The embedded broker's ring, in bytes (`buffer_mib`, at least 1 MiB).
    pub fn ring_bytes(&self) -> usize {
        self.buffer_mib.max(1) << 20
    }
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            listen: default_mqtt_listen(),
            max_payload_bytes: default_max_payload(),
            max_connections: default_max_connections(),
            buffer_mib: default_buffer_mib(),
            url: None,
            username: None,
            password: None,
            client_id: None,
            share_group: default_share_group(),
            persistent_session: None,
            tls: false,
            ca_file: None,
        }
    }
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            max_clock_skew_ms: default_max_clock_skew_ms(),
            max_future_skew_ms: default_max_future_skew_ms(),
            pass_gap_ms: default_pass_gap_ms(),
            max_open_passes: default_max_open_passes(),
            history_queue: default_history_queue(),
            history_retention_days: default_history_retention_days(),
            reader_offline_after_s: default_reader_offline_after_s(),
            unsealed_on_embedded_broker: false,
            reader_messages_per_s: default_reader_messages_per_s(),
            reader_messages_burst: default_reader_messages_burst(),
            unauthentic_messages_per_s: default_unauthentic_messages_per_s(),
            unauthentic_messages_burst: default_unauthentic_messages_burst(),
        }
    }
}
