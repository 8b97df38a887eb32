//! Starts the real service in-process on ephemeral ports, and small helpers to talk to it
//! through its real interfaces.

#![allow(dead_code)]

pub mod node;
pub mod sms;
pub mod web;

use std::net::SocketAddr;
use std::time::Duration;

use greenplate_ingest::{Config, Service, StartError};
use greenplate_proto::v1::admin_client::AdminClient;
use greenplate_proto::v1::patrol_client::PatrolClient;
use greenplate_proto::v1::registry_client::RegistryClient;
use greenplate_proto::v1::{
    AddKioskRequest, AddPatrolUnitRequest, Alert, BikeDetails, Owner, RegisterBikeRequest,
    ReportStolenRequest, Sighting, StreamAlertsRequest,
};
use greenplate_registry::testing::{PgTestDb, eventually};
use greenplate_simulator::clients::{self, Authed};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Streaming;
use tonic::transport::Channel;

pub const ADMIN_TOKEN: &str = "test-admin-token";

/// The at-rest key of tests where several nodes share one database (they must share it).
pub const SHARED_KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

/// The external broker of the multi-node tests: the machine's Mosquitto, or
/// `GREENPLATE_TEST_MQTT_URL`.
/// Panics, saying what to do, when nothing listens there.
pub fn broker_url() -> String {
    let url = std::env::var("GREENPLATE_TEST_MQTT_URL")
        .unwrap_or_else(|_| "mqtt://127.0.0.1:1883".into());
    let addr = url
        .split_once("://")
        .map_or(url.as_str(), |(_, rest)| rest)
        .split(['/', '?'])
        .next()
        .unwrap_or_default();
    let reachable = std::net::ToSocketAddrs::to_socket_addrs(addr)
        .ok()
        .and_then(|mut a| a.next())
        .is_some_and(|a| std::net::TcpStream::connect_timeout(&a, Duration::from_secs(2)).is_ok());
    assert!(
        reachable,
        "no MQTT broker listens at {url}. This test needs one (Mosquitto): start it \
         (.ci/test starts the machine's), point GREENPLATE_TEST_MQTT_URL at another broker, \
         or leave these tests out (.ci/test --no-services, or cargo test without \
         --include-ignored)."
    );
    url
}

/// A running service in a temporary data directory; `stop` shuts it down and checks it drained.
pub struct TestService {
    pub service: Service,
    pub grpc_url: String,
    pub dir: tempfile::TempDir,
    /// For PostgreSQL runs: the database to drop at `stop`.
    pg: Option<PgTestDb>,
    /// The PostgreSQL database it runs on, for a second node to join.
    pub database_url: Option<String>,
    /// With `[tls]`: the (self-signed) certificate, trusted by [`TestService::channel`].
    pub ca_pem: Option<String>,
}

impl TestService {
    pub async fn start() -> Self {
        Self::start_in(tempfile::tempdir().unwrap()).await
    }

    /// Starts on an existing data directory (for restart tests).
    pub async fn start_in(dir: tempfile::TempDir) -> Self {
        Self::start_with(dir, None, |_| {}).await
    }

    /// Starts on an existing data directory with some configuration changed.
    pub async fn start_in_configured(dir: tempfile::TempDir, tweak: impl Fn(&mut Config)) -> Self {
        Self::start_with(dir, None, tweak).await
    }

    /// Starts with some configuration changed.
    pub async fn start_configured(tweak: impl Fn(&mut Config)) -> Self {
        Self::start_with(tempfile::tempdir().unwrap(), None, tweak).await
    }

    /// Starts on a fresh database of the PostgreSQL server at `GREENPLATE_TEST_PG`
    /// (default `postgres://postgres@127.0.0.1:5432/test`).
    pub async fn start_postgres() -> Self {
        Self::start_postgres_configured(|_| {}).await
    }

    /// [`TestService::start_postgres`] with some configuration changed.
    pub async fn start_postgres_configured(tweak: impl Fn(&mut Config)) -> Self {
        let pg = PgTestDb::create().await;
        let url = pg.url.clone();
        let mut svc =
            Self::start_with(tempfile::tempdir().unwrap(), Some(url.clone()), tweak).await;
        svc.pg = Some(pg);
        svc.database_url = Some(url);
        svc
    }

    async fn start_with(
        dir: tempfile::TempDir,
        database_url: Option<String>,
        tweak: impl Fn(&mut Config),
    ) -> Self {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "info,rumqttd=warn".into()),
            )
            .with_test_writer()
            .try_init();
        // rumqttd cannot report a port it chose, so reserve one; retry if another test
        // takes it between the reservation and the broker's bind.
        for attempt in 0.. {
            let mut config = Config {
                data_dir: dir.path().to_owned(),
                admin_token: Some(ADMIN_TOKEN.into()),
                database_url: database_url.clone(),
                ..Config::default()
            };
            config.mqtt.listen = free_port();
            config.grpc.listen = "127.0.0.1:0".parse().unwrap();
            config.http.listen = "127.0.0.1:0".parse().unwrap();
            // Tests stamp sightings into the future to make separate passes (`later`): allow
            // the whole skew window ahead (the service's default is 2 minutes).
            config.ingest.max_future_skew_ms = config.ingest.max_clock_skew_ms;
            tweak(&mut config);
            let ca_pem = config
                .tls
                .as_ref()
                .map(|t| std::fs::read_to_string(&t.cert_file).unwrap());
            match Service::start(config).await {
                Ok(service) => {
                    let grpc_url = match ca_pem {
                        None => format!("http://{}", service.grpc_addr),
                        Some(_) => format!("https://localhost:{}", service.grpc_addr.port()),
                    };
                    return Self {
                        service,
                        grpc_url,
                        dir,
                        pg: None,
                        database_url: None,
                        ca_pem,
                    };
                }
                Err(StartError::Broker(e)) if attempt < 5 => {
                    eprintln!("retrying after: {e}");
                }
                Err(e) => panic!("service did not start: {e}"),
            }
        }
        unreachable!()
    }

    pub fn mqtt_port(&self) -> u16 {
        self.service.mqtt_addr.port()
    }

    pub async fn channel(&self) -> tonic::transport::Channel {
        match &self.ca_pem {
            None => greenplate_simulator::clients::channel(&self.grpc_url)
                .await
                .unwrap(),
            Some(ca) => tonic::transport::Channel::from_shared(self.grpc_url.clone())
                .unwrap()
                .tls_config(
                    tonic::transport::ClientTlsConfig::new()
                        .ca_certificate(tonic::transport::Certificate::from_pem(ca))
                        .domain_name("localhost"),
                )
                .unwrap()
                .connect_lazy(),
        }
    }

    /// GET a path on the HTTP port; returns the body.
    pub async fn http_get(&self, path: &str) -> String {
        http_get(self.service.http_addr, path).await
    }

    /// The value of one metric sample (see [`metric`]: a missing sample fails the test).
    pub async fn metric(&self, sample: &str) -> f64 {
        metric(self.service.http_addr, sample).await
    }

    /// The value of a labelled counter's sample, 0 if that label set was never written (see
    /// [`metric_or_zero`] for when that may be used).
    pub async fn metric_or_zero(&self, sample: &str) -> f64 {
        metric_or_zero(self.service.http_addr, sample).await
    }

    /// Polls a metric until it reaches `at_least`, or fails after a deadline (a labelled
    /// sample is absent until it is first counted; the failure lists the closest names).
    pub async fn wait_metric(&self, sample: &str, at_least: f64) {
        wait_metric(self.service.http_addr, sample, at_least).await
    }

    /// An Admin client with the admin token.
    pub async fn admin(&self) -> AdminClient<Authed> {
        clients::admin(self.channel().await, ADMIN_TOKEN).unwrap()
    }

    /// The whole audit log (up to 1,000 entries), oldest first.
    pub async fn audit_log(&self) -> Vec<greenplate_proto::v1::AuditEntry> {
        self.admin()
            .await
            .list_audit(greenplate_proto::v1::ListAuditRequest {
                after_id: 0,
                limit: 1000,
            })
            .await
            .unwrap()
            .into_inner()
            .entries
    }

    /// Provisions a reader; returns its MQTT secret.
    pub async fn add_reader(&self, id: &str, lat: f64, lon: f64) -> String {
        new_reader(self.channel().await, id, lat, lon).await
    }

    /// Provisions a patrol unit; returns a Patrol client with its token.
    pub async fn add_unit(
        &self,
        id: &str,
        zones: &[&str],
        command_center: bool,
    ) -> PatrolClient<Authed> {
        let token = new_unit_token(self.channel().await, id, zones, command_center).await;
        clients::patrol(self.channel().await, &token).unwrap()
    }

    /// Provisions a kiosk; returns a Registry client with its token.
    pub async fn add_kiosk(&self, id: &str) -> RegistryClient<Authed> {
        let token = new_kiosk_token(self.channel().await, id).await;
        clients::registry(self.channel().await, &token).unwrap()
    }

    /// Stops the service and returns its data directory.
    pub async fn stop(self) -> tempfile::TempDir {
        assert!(
            self.service.stop(Duration::from_secs(10)).await,
            "service did not drain within 10 s"
        );
        if let Some(pg) = self.pg {
            pg.drop_db().await;
        }
        self.dir
    }
}

fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// Polls a metric on the HTTP port at `addr` until it reaches `at_least` (see
/// [`TestService::wait_metric`]).
pub async fn wait_metric(addr: SocketAddr, sample: &str, at_least: f64) {
    let what = format!("metric {sample} at least {at_least}");
    eventually(&what, Duration::from_secs(10), || async {
        let body = http_get(addr, "/metrics").await;
        match sample_value(&body, sample) {
            Some(v) if v >= at_least => Ok(()),
            Some(v) => Err(v.to_string()),
            None => Err(missing(&body, sample)),
        }
    })
    .await
}

pub async fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: test\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.unwrap();
    let (head, body) = buf.split_once("\r\n\r\n").unwrap_or((&buf, ""));
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    body.to_owned()
}

/// Opens a unit's alert stream.
pub async fn stream(unit: &PatrolClient<Authed>, resume_after: u64) -> Streaming<Alert> {
    unit.clone()
        .stream_alerts(StreamAlertsRequest { resume_after })
        .await
        .unwrap()
        .into_inner()
}

/// The next alert on a stream, or a failure after a deadline.
pub async fn next_alert(stream: &mut Streaming<Alert>) -> Alert {
    match tokio::time::timeout(Duration::from_secs(10), stream.message()).await {
        Ok(Ok(Some(a))) => a,
        Ok(Ok(None)) => panic!("alert stream ended"),
        Ok(Err(status)) => panic!("alert stream failed: {status}"),
        Err(_) => panic!("no alert within 10 s"),
    }
}

/// A bike registration with valid owner data and PIN 2468.
pub fn bike(tag: &str, plate: &str) -> RegisterBikeRequest {
    RegisterBikeRequest {
        tag_id: tag.into(),
        plate: plate.into(),
        owner: Some(Owner {
            name: "黄敏".into(),
            id_number: "11010519491231002X".into(),
            phone: "13712345678".into(),
        }),
        bike: Some(BikeDetails {
            make: "Yadea".into(),
            model: "G5".into(),
            color: "green".into(),
            frame_number: "LYDG5RULES1".into(),
        }),
        request_id: String::new(),
        pin: "2468".into(),
    }
}

/// Registers a bike through a new kiosk and reports it stolen.
pub async fn register_stolen(svc: &TestService, tag: &str, plate: &str) {
    let mut kiosk = svc.add_kiosk(&format!("k-{tag}")).await;
    kiosk.register_bike(bike(tag, plate)).await.unwrap();
    kiosk
        .report_stolen(ReportStolenRequest {
            plate: plate.into(),
            ..Default::default()
        })
        .await
        .unwrap();
}

/// `s` moved `passes` × 10 s into the future (the reader's clock), so that repeated
/// sightings at one reader are separate passes (the default gap is 5 s) without waiting:
/// each runs the rules again. Within the clock-skew limit the tests' services allow ahead
/// (`TestService`, `Node`: a day, where the service's default is 2 minutes) for up to 8,000
/// passes.
pub fn later(mut s: Sighting, passes: i64) -> Sighting {
    s.first_seen_ms += passes * 10_000;
    s.last_seen_ms += passes * 10_000;
    s
}

/// Provisions a reader through Admin at `channel`; returns its MQTT secret.
pub async fn new_reader(channel: Channel, id: &str, lat: f64, lon: f64) -> String {
    let mut admin = clients::admin(channel, ADMIN_TOKEN).unwrap();
    clients::add_reader(&mut admin, id, id.into(), lat, lon)
        .await
        .unwrap()
}

/// Provisions a patrol unit through Admin at `channel`; returns its token.
pub async fn new_unit_token(
    channel: Channel,
    id: &str,
    zones: &[&str],
    command_center: bool,
) -> String {
    clients::admin(channel, ADMIN_TOKEN)
        .unwrap()
        .add_patrol_unit(AddPatrolUnitRequest {
            unit_id: id.into(),
            name: id.into(),
            zone_ids: zones.iter().map(|z| z.to_string()).collect(),
            command_center,
            canary: false,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .token
}

/// Provisions a kiosk through Admin at `channel`; returns its token.
pub async fn new_kiosk_token(channel: Channel, id: &str) -> String {
    clients::admin(channel, ADMIN_TOKEN)
        .unwrap()
        .add_kiosk(AddKioskRequest {
            kiosk_id: id.into(),
            name: id.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .token
}

/// The value of one metric sample on the HTTP port at `addr`, e.g.
/// `greenplate_ingest_batches_accepted_total` or
/// `greenplate_ingest_batches_rejected_total{reason="replay"}`. A sample that is not
/// exposed fails the test, naming it and the exposed samples closest to it: a renamed or
/// unregistered metric must not read as 0 and satisfy an `== 0.0` check.
pub async fn metric(addr: SocketAddr, sample: &str) -> f64 {
    let body = http_get(addr, "/metrics").await;
    match sample_value(&body, sample) {
        Some(v) => v,
        None => panic!("{}", missing(&body, sample)),
    }
}

/// Like [`metric`], but 0 when the sample is absent. Only for a sample of a labelled
/// counter (a `Family`, such as `..._rejected_total{reason="..."}`) that may never have been
/// incremented, where absence is the expected case: prometheus-client writes a label set
/// only once it has been used, and a family with none not at all, not even its `# TYPE`
/// line. So this cannot tell "never counted" from "misspelt": each use must name a sample
/// that some check requires to appear (a [`TestService::wait_metric`], or an equality with
/// a count above 0), and say which.
pub async fn metric_or_zero(addr: SocketAddr, sample: &str) -> f64 {
    let body = http_get(addr, "/metrics").await;
    sample_value(&body, sample).unwrap_or(0.0)
}

/// One sample's value in a Prometheus text exposition, `None` when it is not there.
pub fn sample_value(body: &str, sample: &str) -> Option<f64> {
    body.lines().find_map(|l| {
        l.strip_prefix(sample)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// Why a sample is missing: its name and the exposed samples that share the longest
/// prefix with it.
fn missing(body: &str, sample: &str) -> String {
    let common = |a: &str| {
        a.bytes()
            .zip(sample.bytes())
            .take_while(|(x, y)| x == y)
            .count()
    };
    let mut names: Vec<&str> = body
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' ').map(|(name, _)| name))
        .collect();
    names.sort_by_key(|n| std::cmp::Reverse(common(n)));
    names.dedup();
    names.truncate(8);
    format!(
        "metric sample {sample} is not exposed on /metrics; closest: {}",
        names.join(", ")
    )
}
