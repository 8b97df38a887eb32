//! Service configuration: file, then environment, then flags ([`layers`]). Every field is
//! documented in the embedded default file that `greenplate generate-config` prints.

pub mod layers;

use std::net::SocketAddr;

pub use greenplate_ingest_pipeline::config::{IngestConfig, MqttConfig, NatsConfig};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The default configuration file, printed by `greenplate generate-config`.
pub const DEFAULT_TOML: &str = include_str!("../../greenplate.toml");

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid config: {0}")]
    Invalid(String),
}

/// The whole service configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Directory for the SQLite database, the generated admin token and the at-rest key.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Database URL: `sqlite://PATH` or `postgres://...`; default `<data_dir>/greenplate.db`.
    #[serde(default)]
    pub database_url: Option<String>,
    /// Admin bearer token. Without one, a token is generated at first start and written to
    /// `<data_dir>/admin-token` (mode 0600). Also `GREENPLATE_ADMIN_TOKEN`.
    #[serde(default)]
    pub admin_token: Option<String>,
    /// At-rest key (64 hex digits) sealing owners' personal data and readers' secrets. Without
    /// one, a key is generated at first start in `<data_dir>/secret.key` (mode 0600).
    /// Also `GREENPLATE_SECRET_KEY`. Losing it makes stored personal data unreadable.
    #[serde(default)]
    pub secret_key: Option<String>,
    #[serde(default)]
    pub mqtt: MqttConfig,
    /// NATS JetStream as the source of reader messages, instead of an MQTT broker.
    #[serde(default)]
    pub nats: NatsConfig,
    #[serde(default)]
    pub grpc: GrpcConfig,
    #[serde(default)]
    pub http: HttpConfig,
    #[serde(default)]
    pub ingest: IngestConfig,
    #[serde(default)]
    pub alerting: AlertingConfig,
    /// Partner systems that receive alerts (`[[forward.targets]]`).
    #[serde(default)]
    pub forward: ForwardConfig,
    /// Texts to owners through an SMS gateway (`[sms]`); off unless `url` is set.
    #[serde(default)]
    pub sms: SmsConfig,
    /// Signed insurance claim records (`[claims]`).
    #[serde(default)]
    pub claims: ClaimsConfig,
    #[serde(default)]
    pub log: LogConfig,
    /// TLS for the gRPC and HTTP ports (and, with `mqtt.tls`, the embedded MQTT listener).
    /// None by default: plain text for a quick start on a network you control.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
}

/// The server's certificate chain and private key, PEM files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The certificate chain, leaf first (PEM).
    pub cert_file: PathBuf,
    /// The private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
}

/// How the service logs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `text` (one line per event; colours only on a terminal) or `json` (one object per
    /// line). Also `--log-format`. The filter is `RUST_LOG`.
    #[serde(default)]
    pub format: crate::logging::LogFormat,
    /// An OpenTelemetry collector to export spans to over OTLP/gRPC, e.g.
    /// `http://otel-collector:4317`; none by default. Also `--otlp-endpoint`.
    #[serde(default)]
    pub otlp_endpoint: Option<String>,
}

/// Who hears about an alert beyond the units of the zones around the reader.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertingConfig {
    /// Also alert up to this many on-duty units nearest the reader (0: zones only).
    #[serde(default = "default_nearest_units")]
    pub nearest_units: usize,
    /// ...within this distance, km.
    #[serde(default = "default_nearest_radius_km")]
    pub nearest_radius_km: f64,
    /// A unit's position (Patrol.UpdatePosition) older than this is not used, seconds.
    #[serde(default = "default_position_max_age_s")]
    pub position_max_age_s: u64,
    /// One tag seen by two readers faster apart than this is a suspected clone, km/h.
    #[serde(default = "default_clone_speed_kmh")]
    pub clone_speed_kmh: f64,
    /// Readers closer than this may both see a tag at once; the clone rule ignores them, km.
    #[serde(default = "default_clone_min_distance_km")]
    pub clone_min_distance_km: f64,
    /// When an incident nobody acknowledged is raised (its latest alert sent again, one
    /// priority higher, to the zone's units and command centers): the first rule matching
    /// an alert's kind and priority gives the time. Default: priority 3 after 30 s,
    /// priority 2 after 60 s. An empty list turns escalation off.
    #[serde(default = "default_escalation")]
    pub escalation: Vec<EscalationConfig>,
}

/// Forwarding alerts to partner systems (issue #18; `greenplate_alerting::forward`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardConfig {
    #[serde(default)]
    pub targets: Vec<ForwardTargetConfig>,
}

/// One partner target (`[[forward.targets]]`): an HTTPS webhook.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardTargetConfig {
    /// Unique, `[A-Za-z0-9_.-]`: names the target's cursor, metrics and dead letters.
    pub name: String,
    /// Where alerts are POSTed (https; http only for a receiver on a network you control),
    /// or a NATS server (`nats://HOST:PORT`, with `subject`).
    pub url: String,
    /// For a `nats://` url: the subject alerts are published to, which a JetStream stream
    /// must capture (delivered once the stream acknowledges).
    #[serde(default)]
    pub subject: Option<String>,
    /// The HMAC-SHA256 key of `X-Greenplate-Signature`, at least 16 characters.
    pub secret: String,
    /// `json` (greenplate JSON, the default) or `cap` (OASIS CAP 1.2 XML).
    #[serde(default = "default_forward_format")]
    pub format: String,
    /// Alert kinds sent (`STOLEN_SIGHTED`, `WATCH_LIST_HIT`, ...); empty or absent: all.
    #[serde(default)]
    pub kinds: Vec<String>,
    /// Zone ids the alert's position must be in; empty or absent: anywhere.
    #[serde(default)]
    pub zones: Vec<String>,
    /// Alerts of at least this priority (1 normal, 2 urgent, 3 critical).
    #[serde(default = "default_forward_min_priority")]
    pub min_priority: u32,
    /// Covert watch-list hits too (default false: they reach command centers only).
    #[serde(default)]
    pub include_covert: bool,
    /// How long one alert is retried before it becomes a dead letter, seconds.
    #[serde(default = "default_forward_give_up_after_s")]
    pub give_up_after_s: u64,
    /// One request's time limit, seconds.
    #[serde(default = "default_forward_timeout_s")]
    pub timeout_s: u64,
}

fn default_forward_format() -> String {
    "json".into()
}
fn default_forward_min_priority() -> u32 {
    1
}
fn default_forward_give_up_after_s() -> u64 {
    3600
}
fn default_forward_timeout_s() -> u64 {
    10
}

impl ForwardConfig {
    /// The targets as the alerting library takes them, or what is wrong with one.
    pub fn targets(&self) -> Result<Vec<greenplate_alerting::forward::Target>, String> {
        use greenplate_alerting::forward::{Filter, Format, Sink, Target};
        let mut names = std::collections::HashSet::new();
        self.targets
            .iter()
            .map(|t| {
                let at = format!("forward.targets {:?}", t.name);
                if t.name.is_empty()
                    || t.name.len() > 64
                    || !t
                        .name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
                {
                    return Err(format!("{at}: name must be 1-64 of [A-Za-z0-9_.-]"));
                }
                if !names.insert(t.name.clone()) {
                    return Err(format!("{at}: two targets have this name"));
                }
                let url = t.url.trim();
                let nats = url.starts_with("nats://") || url.starts_with("tls://");
                if !(nats || url.starts_with("https://") || url.starts_with("http://"))
                    || reqwest_url_ok(url).is_err()
                {
                    return Err(format!("{at}: url must be an http(s) or nats:// URL"));
                }
                let subject = t.subject.as_deref().map(str::trim).unwrap_or_default();
                if nats
                    && (subject.is_empty()
                        || subject.contains(['*', '>', ' '])
                        || subject.starts_with('.')
                        || subject.ends_with('.'))
                {
                    return Err(format!(
                        "{at}: a nats:// target needs a subject without wildcards"
                    ));
                }
                if !nats && !subject.is_empty() {
                    return Err(format!("{at}: subject is for nats:// targets"));
                }
                if t.secret.len() < 16 {
                    return Err(format!("{at}: secret must be at least 16 characters"));
                }
                let format = match t.format.as_str() {
                    "json" => Format::Json,
                    "cap" => Format::Cap,
                    _ => return Err(format!("{at}: format must be json or cap")),
                };
                let kinds = t
                    .kinds
                    .iter()
                    .map(|k| {
                        greenplate_proto::v1::AlertKind::from_str_name(&format!("ALERT_KIND_{k}"))
                            .filter(|k| *k != greenplate_proto::v1::AlertKind::Unspecified)
                            .ok_or_else(|| format!("{at}: {k:?} is not an alert kind"))
                    })
                    .collect::<Result<_, _>>()?;
                if !(1..=3).contains(&t.min_priority) {
                    return Err(format!("{at}: min_priority must be 1, 2 or 3"));
                }
                if t.give_up_after_s == 0 || t.timeout_s == 0 {
                    return Err(format!(
                        "{at}: give_up_after_s and timeout_s must be at least 1"
                    ));
                }
                if t.name.starts_with("greenplate") {
                    return Err(format!(
                        "{at}: names starting with greenplate are the server's own"
                    ));
                }
                Ok(Target {
                    name: t.name.clone(),
                    sink: if nats {
                        Sink::Nats(std::sync::Arc::new(
                            greenplate_alerting::forward::nats::NatsSink::new(
                                url.to_owned(),
                                subject.to_owned(),
                                t.secret.clone(),
                                format,
                            ),
                        ))
                    } else {
                        Sink::Webhook {
                            url: url.to_owned(),
                            secret: t.secret.clone(),
                            format,
                        }
                    },
                    filter: Filter {
                        kinds,
                        zones: t.zones.clone(),
                        min_priority: t.min_priority,
                        include_covert: t.include_covert,
                    },
                    give_up_after: std::time::Duration::from_secs(t.give_up_after_s),
                    timeout: std::time::Duration::from_secs(t.timeout_s),
                })
            })
            .collect()
    }
}

/// Owners' texts (`[sms]`, `greenplate_alerting::forward::sms`): one small HTTP interface
/// that an adapter at the provider speaks (deploy/README.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmsConfig {
    /// The gateway's URL; none: no texts.
    #[serde(default)]
    pub url: Option<String>,
    /// Sent as `Authorization: Bearer`; required with `url`.
    #[serde(default)]
    pub token: Option<String>,
    /// Texts one owner gets in an hour at most; the rest are counted and dropped.
    #[serde(default = "default_sms_max_per_owner_per_hour")]
    pub max_per_owner_per_hour: u32,
    /// How long one text is retried before it becomes a dead letter of
    /// `greenplate-owner-sms`, seconds.
    #[serde(default = "default_sms_give_up_after_s")]
    pub give_up_after_s: u64,
    /// One request's time limit, seconds.
    #[serde(default = "default_forward_timeout_s")]
    pub timeout_s: u64,
    /// The texts, with `{plate}`, `{time}` and `{reader}` filled in; absent: the built-in
    /// Chinese ones.
    #[serde(default)]
    pub templates: SmsTemplates,
}

/// Insurance claim records (`[claims]`, `greenplate_alerting::claims`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimsConfig {
    /// A theft unresolved this many days after its report gets a signed claim record.
    #[serde(default = "default_claims_after_days")]
    pub after_days: u32,
    /// The Ed25519 signing key, 64 hex digits. Default: the key stored (sealed with the
    /// at-rest key) in the database, made by the first node to start, so every node on one
    /// database signs with the same key (from `<data_dir>/claims.key` if an earlier version
    /// left one there, else new). Set here, it overrides the stored one on this node.
    #[serde(default)]
    pub signing_key: Option<String>,
}

fn default_claims_after_days() -> u32 {
    30
}

impl Default for ClaimsConfig {
    fn default() -> Self {
        Self {
            after_days: default_claims_after_days(),
            signing_key: None,
        }
    }
}

/// `[sms.templates]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmsTemplates {
    #[serde(default)]
    pub armed_moved: Option<String>,
    #[serde(default)]
    pub stolen_seen: Option<String>,
    #[serde(default)]
    pub recovered: Option<String>,
}

fn default_sms_max_per_owner_per_hour() -> u32 {
    5
}
fn default_sms_give_up_after_s() -> u64 {
    600
}

impl Default for SmsConfig {
    fn default() -> Self {
        Self {
            url: None,
            token: None,
            max_per_owner_per_hour: default_sms_max_per_owner_per_hour(),
            give_up_after_s: default_sms_give_up_after_s(),
            timeout_s: default_forward_timeout_s(),
            templates: SmsTemplates::default(),
        }
    }
}

impl SmsConfig {
    /// The owners' texts as a forwarding target, if configured; or what is wrong.
    pub fn target(&self) -> Result<Option<greenplate_alerting::forward::Target>, String> {
        use greenplate_alerting::forward::sms::{Gateway, OWNER_SMS, Templates};
        use greenplate_alerting::forward::{Filter, Sink, Target};
        use greenplate_proto::v1::AlertKind;
        let Some(url) = self.url.as_deref().map(str::trim).filter(|u| !u.is_empty()) else {
            return Ok(None);
        };
        if !(url.starts_with("https://") || url.starts_with("http://"))
            || reqwest_url_ok(url).is_err()
        {
            return Err("sms.url must be an http(s) URL".into());
        }
        let token = self
            .token
            .clone()
            .filter(|t| !t.is_empty())
            .ok_or("sms.token is required with sms.url")?;
        if self.max_per_owner_per_hour == 0 || self.give_up_after_s == 0 || self.timeout_s == 0 {
            return Err(
                "sms.max_per_owner_per_hour, give_up_after_s and timeout_s must be at least 1"
                    .into(),
            );
        }
        let d = Templates::default();
        let templates = Templates {
            armed_moved: self.templates.armed_moved.clone().unwrap_or(d.armed_moved),
            stolen_seen: self.templates.stolen_seen.clone().unwrap_or(d.stolen_seen),
            recovered: self.templates.recovered.clone().unwrap_or(d.recovered),
        };
        Ok(Some(Target {
            name: OWNER_SMS.into(),
            sink: Sink::OwnerSms(std::sync::Arc::new(Gateway::new(
                url.to_owned(),
                token,
                templates,
                self.max_per_owner_per_hour,
            ))),
            filter: Filter {
                kinds: vec![
                    AlertKind::ArmedMoved,
                    AlertKind::StolenSighted,
                    AlertKind::StolenSightedEarlier,
                ],
                zones: Vec::new(),
                min_priority: 1,
                include_covert: false,
            },
            give_up_after: std::time::Duration::from_secs(self.give_up_after_s),
            timeout: std::time::Duration::from_secs(self.timeout_s),
        }))
    }
}

/// A URL with a host (what the HTTP client will be asked to reach).
fn reqwest_url_ok(url: &str) -> Result<(), ()> {
    let rest = url.split_once("://").map(|(_, r)| r).ok_or(())?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err(());
    }
    Ok(())
}

/// One escalation rule (`[[alerting.escalation]]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EscalationConfig {
    /// Alert kinds it applies to, as named in the contract without the prefix
    /// (`STOLEN_SIGHTED`, `WATCH_LIST_HIT`, ...); empty or absent: any kind.
    #[serde(default)]
    pub kinds: Vec<String>,
    /// Alerts of at least this priority (1 normal, 2 urgent, 3 critical).
    pub min_priority: u32,
    /// Seconds without an acknowledgement.
    pub after_s: u64,
}

fn default_escalation() -> Vec<EscalationConfig> {
    greenplate_alerting::EscalationRule::defaults()
        .into_iter()
        .map(|r| EscalationConfig {
            kinds: Vec::new(),
            min_priority: r.min_priority,
            after_s: u64::try_from(r.after_ms / 1000).unwrap_or(0),
        })
        .collect()
}

fn default_clone_speed_kmh() -> f64 {
    150.0
}
fn default_clone_min_distance_km() -> f64 {
    1.0
}

fn default_nearest_units() -> usize {
    3
}
fn default_nearest_radius_km() -> f64 {
    5.0
}
fn default_position_max_age_s() -> u64 {
    600
}

impl Default for AlertingConfig {
    fn default() -> Self {
        Self {
            nearest_units: default_nearest_units(),
            nearest_radius_km: default_nearest_radius_km(),
            position_max_age_s: default_position_max_age_s(),
            clone_speed_kmh: default_clone_speed_kmh(),
            clone_min_distance_km: default_clone_min_distance_km(),
            escalation: default_escalation(),
        }
    }
}

impl AlertingConfig {
    /// The clone rule's thresholds.
    pub fn clone_rule(&self) -> greenplate_alerting::CloneConfig {
        greenplate_alerting::CloneConfig {
            max_speed_kmh: self.clone_speed_kmh,
            min_distance_km: self.clone_min_distance_km,
        }
    }

    /// The escalation rules, or which kind name is not one.
    pub fn escalation_rules(&self) -> Result<Vec<greenplate_alerting::EscalationRule>, String> {
        self.escalation
            .iter()
            .map(|e| {
                let kinds = e
                    .kinds
                    .iter()
                    .map(|k| {
                        greenplate_proto::v1::AlertKind::from_str_name(&format!("ALERT_KIND_{k}"))
                            .filter(|k| *k != greenplate_proto::v1::AlertKind::Unspecified)
                            .ok_or_else(|| {
                                format!("alerting.escalation: {k:?} is not an alert kind")
                            })
                    })
                    .collect::<Result<_, _>>()?;
                if e.min_priority == 0 || e.min_priority > 3 {
                    return Err("alerting.escalation: min_priority must be 1, 2 or 3".into());
                }
                if e.after_s == 0 {
                    return Err("alerting.escalation: after_s must be at least 1".into());
                }
                Ok(greenplate_alerting::EscalationRule {
                    kinds,
                    min_priority: e.min_priority,
                    after_ms: i64::try_from(e.after_s.saturating_mul(1000)).unwrap_or(i64::MAX),
                })
            })
            .collect()
    }

    /// The alerting crate's routing settings.
    pub fn routing(&self) -> greenplate_alerting::RoutingConfig {
        greenplate_alerting::RoutingConfig {
            nearest_units: self.nearest_units,
            nearest_radius_km: self.nearest_radius_km,
            position_max_age_ms: i64::try_from(self.position_max_age_s.saturating_mul(1000))
                .unwrap_or(i64::MAX),
        }
    }
}

/// The gRPC port (Admin, Registry, Patrol, reflection).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcConfig {
    #[serde(default = "default_grpc_listen")]
    pub listen: SocketAddr,
    /// Live `Patrol/StreamAlerts` calls one unit's token may hold open at once; more are
    /// refused with RESOURCE_EXHAUSTED (and counted), so one token cannot exhaust the node.
    #[serde(default = "default_max_streams_per_unit")]
    pub max_streams_per_unit: usize,
    /// Concurrent calls (HTTP/2 streams) one gRPC connection may have open; a client past
    /// it waits for one to end (HTTP/2 flow control, not an error).
    #[serde(default = "default_max_concurrent_streams")]
    pub max_concurrent_streams: u32,
}

/// The HTTP port (`/healthz`, `/readyz`, `/metrics`, and the kiosk and command-center web
/// pages).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    #[serde(default = "default_http_listen")]
    pub listen: SocketAddr,
    /// A web page session (kiosk or command center) unused this long is signed out, seconds.
    #[serde(default = "default_session_idle_s")]
    pub session_idle_s: u64,
    /// Optional map tiles behind the command-center map, e.g.
    /// `http://tiles.local/{z}/{x}/{y}.png` (a server on the district network). Without
    /// one the map is drawn from the district's own data only (readers, zones, incidents).
    #[serde(default)]
    pub map_tile_url: Option<String>,
    /// A connection must send a request's headers within this many seconds, and an idle
    /// keep-alive connection is closed after it (counted in
    /// `greenplate_http_connections_closed_total{reason="header_timeout"}`).
    #[serde(default = "default_header_timeout_s")]
    pub header_timeout_s: u64,
}

fn default_session_idle_s() -> u64 {
    1800
}

fn default_header_timeout_s() -> u64 {
    15
}

fn default_max_concurrent_streams() -> u32 {
    256
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("./greenplate-data")
}
fn default_grpc_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 50051))
}
fn default_max_streams_per_unit() -> usize {
    16
}
fn default_http_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 8080))
}
impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: default_data_dir(),
            database_url: None,
            admin_token: None,
            secret_key: None,
            mqtt: MqttConfig::default(),
            nats: NatsConfig::default(),
            grpc: GrpcConfig::default(),
            http: HttpConfig::default(),
            ingest: IngestConfig::default(),
            alerting: AlertingConfig::default(),
            forward: ForwardConfig::default(),
            sms: SmsConfig::default(),
            claims: ClaimsConfig::default(),
            log: LogConfig::default(),
            tls: None,
        }
    }
}

impl Default for GrpcConfig {
    fn default() -> Self {
        Self {
            listen: default_grpc_listen(),
            max_streams_per_unit: default_max_streams_per_unit(),
            max_concurrent_streams: default_max_concurrent_streams(),
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: default_http_listen(),
            session_idle_s: default_session_idle_s(),
            map_tile_url: None,
            header_timeout_s: default_header_timeout_s(),
        }
    }
}

impl Config {
    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.mqtt.max_payload_bytes < 1024 {
            return Err(ConfigError::Invalid(
                "mqtt.max_payload_bytes must be at least 1024".into(),
            ));
        }
        if self.mqtt.buffer_mib == 0 {
            return Err(ConfigError::Invalid(
                "mqtt.buffer_mib must be at least 1".into(),
            ));
        }
        if !(1..=30 * 86_400_000).contains(&self.ingest.max_clock_skew_ms) {
            return Err(ConfigError::Invalid(
                "ingest.max_clock_skew_ms must be between 1 and 2592000000 (30 days)".into(),
            ));
        }
        if !(0..=30 * 86_400_000).contains(&self.ingest.max_future_skew_ms) {
            return Err(ConfigError::Invalid(
                "ingest.max_future_skew_ms must be between 0 and 2592000000 (30 days)".into(),
            ));
        }
        self.alerting
            .escalation_rules()
            .map_err(ConfigError::Invalid)?;
        self.forward.targets().map_err(ConfigError::Invalid)?;
        self.sms.target().map_err(ConfigError::Invalid)?;
        if let Some(k) = &self.claims.signing_key {
            greenplate_alerting::claims::ClaimSigner::from_hex(k)
                .map_err(|e| ConfigError::Invalid(format!("claims.signing_key: {e}")))?;
        }
        if self.mqtt.persistent_session.is_some() {
            return Err(ConfigError::Invalid(
                "mqtt.persistent_session was removed with the takeover of dead nodes' sessions \
                 on Mosquitto: remove the key. Nodes behind one external broker keep clean \
                 sessions; several nodes that must lose nothing when one dies run behind NATS \
                 JetStream ([nats], --nats-url; deploy/README.md)"
                    .into(),
            ));
        }
        if let Some(id) = &self.mqtt.client_id
            && (id.is_empty() || id.len() > 64 || id.contains(['/', '+', '#', '\0']))
        {
            return Err(ConfigError::Invalid(
                "mqtt.client_id must be 1 to 64 characters without '/', '+', '#'".into(),
            ));
        }
        let i = &self.ingest;
        for (name, ok) in [
            ("ingest.pass_gap_ms", i.pass_gap_ms > 0),
            ("ingest.max_open_passes", i.max_open_passes > 0),
            ("ingest.history_queue", i.history_queue > 0),
            (
                "ingest.history_retention_days",
                i.history_retention_days > 0,
            ),
            (
                "ingest.reader_offline_after_s",
                i.reader_offline_after_s > 0,
            ),
            ("http.session_idle_s", self.http.session_idle_s > 0),
            ("http.header_timeout_s", self.http.header_timeout_s > 0),
            (
                "grpc.max_concurrent_streams",
                self.grpc.max_concurrent_streams > 0,
            ),
        ] {
            if !ok {
                return Err(ConfigError::Invalid(format!("{name} must be positive")));
            }
        }
        let speed = self.alerting.clone_speed_kmh;
        if speed.is_nan() || speed <= 0.0 {
            return Err(ConfigError::Invalid(
                "alerting.clone_speed_kmh must be positive".into(),
            ));
        }
        let radius = self.alerting.nearest_radius_km;
        if radius.is_nan() || radius < 0.0 {
            return Err(ConfigError::Invalid(
                "alerting.nearest_radius_km must be zero or more".into(),
            ));
        }
        if let Some(k) = &self.secret_key {
            parse_key(k)?;
        }
        Ok(())
    }

    /// The database URL in force.
    pub fn database_url(&self) -> String {
        self.database_url.clone().unwrap_or_else(|| {
            greenplate_registry::Db::sqlite_url(&self.data_dir.join(crate::data_dir::DATABASE_FILE))
        })
    }
}

/// Parses a 64-hex-digit key.
pub fn parse_key(text: &str) -> Result<[u8; 32], ConfigError> {
    let bytes = hex::decode(text.trim())
        .map_err(|_| ConfigError::Invalid("secret_key must be 64 hex digits".into()))?;
    <[u8; 32]>::try_from(bytes.as_slice())
        .map_err(|_| ConfigError::Invalid("secret_key must be 64 hex digits".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_matches_the_code() {
        let parsed: Config = toml::from_str(DEFAULT_TOML).unwrap();
        assert_eq!(parsed, Config::default());
        parsed.validate().unwrap();
    }

    #[test]
    fn the_removed_persistent_session_is_refused_and_client_ids_are_checked() {
        let c: Config = toml::from_str("[mqtt]\npersistent_session = false\n").unwrap();
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("persistent_session was removed"), "{err}");
        assert!(err.contains("NATS"), "{err}");
        let mut c = Config::default();
        c.mqtt.client_id = Some("greenplate-node-1".into());
        c.validate().unwrap();
        for bad in ["", "a/b", "node+", "#"] {
            c.mqtt.client_id = Some(bad.into());
            assert!(c.validate().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn forward_targets_are_checked() {
        let good = r#"
[[forward.targets]]
name = "dispatch-110"
url = "https://dispatch.example/greenplate"
secret = "0123456789abcdef"
format = "cap"
kinds = ["STOLEN_SIGHTED"]
"#;
        let c: Config = toml::from_str(good).unwrap();
        c.validate().unwrap();
        let t = &c.forward.targets().unwrap()[0];
        assert!(matches!(
            t.sink,
            greenplate_alerting::forward::Sink::Webhook {
                format: greenplate_alerting::forward::Format::Cap,
                ..
            }
        ));
        assert_eq!(t.give_up_after, std::time::Duration::from_secs(3600));
        for (bad, says) in [
            (good.replace("0123456789abcdef", "short"), "secret"),
            (
                good.replace("STOLEN_SIGHTED", "STOLEN"),
                "not an alert kind",
            ),
            (good.replace("\"cap\"", "\"xml\""), "format"),
            (
                good.replace("https://dispatch.example/greenplate", "ftp://x"),
                "url",
            ),
            (good.replace("dispatch-110", "a b"), "name"),
            (
                good.replace("dispatch-110", "greenplate-x"),
                "the server's own",
            ),
            (format!("{good}{good}"), "two targets"),
        ] {
            let c: Config = toml::from_str(&bad).unwrap();
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains(says), "{says}: {err}");
        }
    }

    #[test]
    fn typos_are_errors() {
        let err = toml::from_str::<Config>("[mqtt]\nlisten_addr = \"0.0.0.0:1\"\n").unwrap_err();
        assert!(err.message().contains("listen_addr"), "{err}");
    }
}
