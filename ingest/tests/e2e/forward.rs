//! Forwarding alerts to partner systems (issue #18), against a real HTTP receiver in the
//! test: it refuses the first requests and is down for a while, and every alert still
//! arrives, at least once, in seq order per target, signed, and the metrics say so. A
//! receiver that never answers in time gets dead letters, which an operator replays. On
//! PostgreSQL with two nodes, each alert goes out once per target, not once per node.

use crate::support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use greenplate_proto::v1::{ListDeadLettersRequest, ReplayDeadLettersRequest};
use greenplate_simulator::reader::{ReaderClient, sighting};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use support::{TestService, next_alert, register_stolen, stream};
use tokio::sync::oneshot;

const SECRET: &str = "partner-secret-0123456789";
const SHARED_KEY: &str = "5f5e5d5c5b5a595857565554535251504f4e4d4c4b4a49484746454443424140";

/// One request the receiver took.
#[derive(Debug, Clone)]
struct Got {
    path: String,
    seq: u64,
    alert_id: String,
    content_type: String,
    body: Vec<u8>,
}

#[derive(Default)]
struct Inbox {
    got: Mutex<Vec<Got>>,
    /// Requests still to refuse with 503.
    fail_next: AtomicUsize,
    refused: AtomicUsize,
    /// Requests whose signature did not verify.
    forged: AtomicUsize,
}

/// A partner's HTTP endpoint, on a port of its own; it can go down and come back on the
/// same port.
struct Receiver {
    addr: SocketAddr,
    inbox: Arc<Inbox>,
    stop: Option<(oneshot::Sender<()>, tokio::task::JoinHandle<()>)>,
}

async fn hook(
    State(inbox): State<Arc<Inbox>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let h = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    // Verified independently of the server's code: HMAC-SHA256 of "{timestamp}.{body}".
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(h("x-greenplate-timestamp").as_bytes());
    mac.update(b".");
    mac.update(&body);
    let expected = format!("v1={}", hex::encode(mac.finalize().into_bytes()));
    if h("x-greenplate-signature") != expected {
        inbox.forged.fetch_add(1, Ordering::SeqCst);
        return StatusCode::UNAUTHORIZED;
    }
    if inbox
        .fail_next
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        inbox.refused.fetch_add(1, Ordering::SeqCst);
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    inbox.got.lock().unwrap().push(Got {
        path: uri.path().to_owned(),
        seq: h("x-greenplate-seq").parse().unwrap_or(0),
        alert_id: h("idempotency-key"),
        content_type: h("content-type"),
        body: body.to_vec(),
    });
    StatusCode::NO_CONTENT
}

impl Receiver {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut r = Self {
            addr,
            inbox: Arc::default(),
            stop: None,
        };
        r.serve(listener);
        r
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) {
        let app = axum::Router::new()
            .fallback(axum::routing::post(hook))
            .with_state(self.inbox.clone());
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await
                .unwrap();
        });
        self.stop = Some((tx, task));
    }

    /// Down: the port refuses connections.
    async fn down(&mut self) {
        if let Some((tx, task)) = self.stop.take() {
            let _ = tx.send(());
            let _ = task.await;
        }
    }

    /// Up again, on the same port.
    async fn up(&mut self) {
        let listener = tokio::net::TcpListener::bind(self.addr).await.unwrap();
        self.serve(listener);
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn got(&self) -> Vec<Got> {
        self.inbox.got.lock().unwrap().clone()
    }
}

fn target(
    name: &str,
    url: String,
    format: &str,
    give_up_after_s: u64,
) -> greenplate_ingest::config::ForwardTargetConfig {
    greenplate_ingest::config::ForwardTargetConfig {
        name: name.into(),
        url,
        subject: None,
        secret: SECRET.into(),
        format: format.into(),
        kinds: Vec::new(),
        zones: Vec::new(),
        min_priority: 1,
        include_covert: false,
        give_up_after_s,
        timeout_s: 5,
    }
}

/// Polls a gauge until it is at most `max`.
async fn wait_metric_at_most(svc: &TestService, sample: &str, max: f64) {
    greenplate_registry::testing::eventually(
        &format!("{sample} at most {max}"),
        Duration::from_secs(10),
        || async {
            let v = svc.metric(sample).await;
            if v <= max { Ok(()) } else { Err(v.to_string()) }
        },
    )
    .await
}

/// A reader at (23.30, 116.60), a command center's alert stream from the start, `stolen`
/// bikes reported stolen, and the reader connected.
async fn scene(
    svc: &TestService,
    reader_id: &str,
    stolen: &[(&str, &str)],
) -> (ReaderClient, tonic::Streaming<greenplate_proto::v1::Alert>) {
    let secret = svc.add_reader(reader_id, 23.30, 116.60).await;
    let hq = svc.add_unit("hq", &[], true).await;
    let alerts = stream(&hq, 0).await;
    for (tag, plate) in stolen {
        register_stolen(svc, tag, plate).await;
    }
    let reader = ReaderClient::connect("127.0.0.1", svc.mqtt_port(), reader_id, &secret)
        .await
        .unwrap();
    (reader, alerts)
}

const TAGS: [(&str, &str); 3] = [
    ("E28011606000000000000F01", "粤D7F001"),
    ("E28011606000000000000F02", "粤D7F002"),
    ("E28011606000000000000F03", "粤D7F003"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_alert_reaches_a_flaky_partner_signed_and_in_order() {
    let mut receiver = Receiver::start().await;
    receiver.inbox.fail_next.store(3, Ordering::SeqCst);
    let (json_url, cap_url) = (receiver.url("/dispatch"), receiver.url("/cap"));
    let svc = TestService::start_configured(move |c| {
        c.alerting.clone_speed_kmh = 1e9;
        c.forward.targets = vec![
            target("dispatch", json_url.clone(), "json", 120),
            greenplate_ingest::config::ForwardTargetConfig {
                kinds: vec!["STOLEN_SIGHTED".into()],
                ..target("city-cap", cap_url.clone(), "cap", 120)
            },
        ];
    })
    .await;
    let (mut reader, mut alerts) = scene(&svc, "rd-1", &TAGS).await;

    // The first alert meets three refusals, then goes through.
    reader
        .publish(vec![sighting(TAGS[0].0, 2, -50)])
        .await
        .unwrap();
    let mut sent = vec![next_alert(&mut alerts).await];
    svc.wait_metric(
        "greenplate_forward_delivered_total{target=\"dispatch\"}",
        1.0,
    )
    .await;
    assert!(receiver.inbox.refused.load(Ordering::SeqCst) >= 3);

    // Down while two more alerts happen: they wait, retried, and arrive once it is back.
    receiver.down().await;
    reader
        .publish(vec![
            sighting(TAGS[1].0, 2, -50),
            sighting(TAGS[2].0, 2, -50),
        ])
        .await
        .unwrap();
    sent.push(next_alert(&mut alerts).await);
    sent.push(next_alert(&mut alerts).await);
    let retried = svc
        .metric("greenplate_forward_retries_total{target=\"dispatch\"}")
        .await;
    svc.wait_metric(
        "greenplate_forward_retries_total{target=\"dispatch\"}",
        retried + 2.0,
    )
    .await;
    svc.wait_metric("greenplate_forward_lag_seq{target=\"dispatch\"}", 1.0)
        .await;
    receiver.up().await;
    svc.wait_metric(
        "greenplate_forward_delivered_total{target=\"dispatch\"}",
        3.0,
    )
    .await;
    svc.wait_metric(
        "greenplate_forward_delivered_total{target=\"city-cap\"}",
        3.0,
    )
    .await;

    // Every alert, at least once, in seq order (a repeat may follow a lost answer, never
    // an earlier seq after a later one's first arrival), signed, with its id as the key.
    let got = receiver.got();
    assert_eq!(receiver.inbox.forged.load(Ordering::SeqCst), 0);
    let dispatch: Vec<&Got> = got.iter().filter(|g| g.path == "/dispatch").collect();
    let mut firsts: Vec<u64> = Vec::new();
    for g in &dispatch {
        if !firsts.contains(&g.seq) {
            firsts.push(g.seq);
        }
        assert_eq!(g.content_type, "application/json");
        let v: serde_json::Value = serde_json::from_slice(&g.body).unwrap();
        assert_eq!(v["alert_id"], g.alert_id.as_str());
        assert_eq!(v["seq"], g.seq);
        assert_eq!(v["kind"], "STOLEN_SIGHTED");
    }
    let want: Vec<u64> = sent.iter().map(|a| a.seq).collect();
    assert_eq!(firsts, want, "first arrivals in seq order");
    for a in &sent {
        let body = dispatch.iter().find(|g| g.alert_id == a.alert_id).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body.body).unwrap();
        assert_eq!(v["plate"], a.plate.as_str());
        assert_eq!(v["incident_id"], a.incident_id.as_str());
    }
    // The CAP target: the same alerts as CAP 1.2.
    let cap: Vec<&Got> = got.iter().filter(|g| g.path == "/cap").collect();
    for a in &sent {
        let g = cap
            .iter()
            .find(|g| g.alert_id == a.alert_id)
            .expect("every stolen sighting as CAP");
        assert_eq!(g.content_type, "application/cap+xml");
        let xml = String::from_utf8(g.body.clone()).unwrap();
        assert!(
            xml.contains("urn:oasis:names:tc:emergency:cap:1.2"),
            "{xml}"
        );
        assert!(
            xml.contains(&format!(
                "<identifier>greenplate-{}</identifier>",
                a.alert_id
            )),
            "{xml}"
        );
        assert!(
            xml.contains(&format!("<value>{}</value>", a.plate)),
            "{xml}"
        );
    }
    wait_metric_at_most(&svc, "greenplate_forward_lag_seq{target=\"dispatch\"}", 0.0).await;
    assert_eq!(
        svc.metric_or_zero("greenplate_forward_failed_total{target=\"dispatch\"}")
            .await,
        0.0
    );
    reader.disconnect().await;
    receiver.down().await;
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partner_down_too_long_gets_dead_letters_an_operator_replays() {
    // Nothing listens on this port until the replay.
    let reserved = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = reserved.local_addr().unwrap();
    drop(reserved);
    let url = format!("http://{addr}/hook");
    let svc = TestService::start_configured(move |c| {
        c.alerting.clone_speed_kmh = 1e9;
        c.forward.targets = vec![target("slow", url.clone(), "json", 1)];
    })
    .await;
    let (mut reader, mut alerts) = scene(&svc, "rd-1", &TAGS[..1]).await;
    reader
        .publish(vec![sighting(TAGS[0].0, 2, -50)])
        .await
        .unwrap();
    let alert = next_alert(&mut alerts).await;
    svc.wait_metric("greenplate_forward_failed_total{target=\"slow\"}", 1.0)
        .await;
    svc.wait_metric("greenplate_forward_dead_letters{target=\"slow\"}", 1.0)
        .await;
    let mut admin = svc.admin().await;
    let letters = admin
        .list_dead_letters(ListDeadLettersRequest {
            target: "slow".into(),
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .dead_letters;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].alert_id, alert.alert_id);
    assert!(letters[0].attempts >= 1);
    assert!(
        letters[0].last_error.contains("connect") || letters[0].last_error.contains("refused"),
        "{}",
        letters[0].last_error
    );

    // The partner is back: the operator replays, and the alert arrives.
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let mut receiver = Receiver {
        addr,
        inbox: Arc::default(),
        stop: None,
    };
    receiver.serve(listener);
    let marked = admin
        .replay_dead_letters(ReplayDeadLettersRequest {
            target: "slow".into(),
            seqs: vec![],
        })
        .await
        .unwrap()
        .into_inner()
        .marked;
    assert_eq!(marked, 1);
    greenplate_registry::testing::eventually(
        "the replayed alert arrives",
        Duration::from_secs(10),
        || {
            let got = receiver.got();
            let id = alert.alert_id.clone();
            async move {
                if got.iter().any(|g| g.alert_id == id) {
                    Ok(())
                } else {
                    Err(format!("{} requests", got.len()))
                }
            }
        },
    )
    .await;
    svc.wait_metric("greenplate_forward_delivered_total{target=\"slow\"}", 1.0)
        .await;
    wait_metric_at_most(
        &svc,
        "greenplate_forward_dead_letters{target=\"slow\"}",
        0.0,
    )
    .await;
    assert!(
        svc.audit_log()
            .await
            .iter()
            .any(|e| e.action == "replay_dead_letters" && e.subject == "slow: all, 1 marked")
    );
    reader.disconnect().await;
    receiver.down().await;
    svc.stop().await;
}

/// Two nodes on one PostgreSQL, both configured with the same target: each alert goes out
/// once, by whichever node holds the target's lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (GREENPLATE_TEST_PG)"]
async fn two_nodes_send_each_alert_once_per_target() {
    let mut receiver = Receiver::start().await;
    let url = receiver.url("/dispatch");
    let url_b = url.clone();
    let a = TestService::start_postgres_configured(move |c| {
        c.secret_key = Some(SHARED_KEY.into());
        c.alerting.clone_speed_kmh = 1e9;
        c.forward.targets = vec![target("dispatch", url.clone(), "json", 60)];
    })
    .await;
    let db = a.database_url.clone();
    let b = TestService::start_configured(move |c| {
        c.secret_key = Some(SHARED_KEY.into());
        c.database_url = db.clone();
        c.alerting.clone_speed_kmh = 1e9;
        c.forward.targets = vec![target("dispatch", url_b.clone(), "json", 60)];
    })
    .await;
    let (mut reader, mut alerts) = scene(&a, "rd-a", &TAGS).await;
    reader
        .publish(vec![
            sighting(TAGS[0].0, 2, -50),
            sighting(TAGS[1].0, 2, -50),
        ])
        .await
        .unwrap();
    reader
        .publish(vec![sighting(TAGS[2].0, 2, -50)])
        .await
        .unwrap();
    let mut sent = Vec::new();
    for _ in 0..3 {
        sent.push(next_alert(&mut alerts).await);
    }
    // Both nodes see the shared cursor past every alert: nobody sends them again.
    for node in [&a, &b] {
        greenplate_registry::testing::eventually(
            "the target's cursor past every alert",
            Duration::from_secs(15),
            || async {
                let lag = node
                    .metric("greenplate_forward_lag_seq{target=\"dispatch\"}")
                    .await;
                let n = receiver.got().len();
                if lag == 0.0 && n >= 3 {
                    Ok(())
                } else {
                    Err(format!("lag {lag}, {n} received"))
                }
            },
        )
        .await;
    }
    let got = receiver.got();
    let mut ids: Vec<&str> = got.iter().map(|g| g.alert_id.as_str()).collect();
    ids.sort();
    let mut want: Vec<&str> = sent.iter().map(|a| a.alert_id.as_str()).collect();
    want.sort();
    assert_eq!(ids, want, "each alert once, from one node");
    let seqs: Vec<u64> = got.iter().map(|g| g.seq).collect();
    let mut sorted = seqs.clone();
    sorted.sort();
    assert_eq!(seqs, sorted, "in seq order");
    reader.disconnect().await;
    receiver.down().await;
    b.stop().await;
    a.stop().await;
}

/// Covert watch-list hits reach command centers only: a partner target is not sent them
/// (counted as skipped, covert), and is sent the open ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn covert_hits_are_not_forwarded() {
    use greenplate_proto::v1::{AddWatchEntryRequest, AlertKind, WatchPriority};
    let mut receiver = Receiver::start().await;
    let url = receiver.url("/dispatch");
    let svc = TestService::start_configured(move |c| {
        c.alerting.clone_speed_kmh = 1e9;
        c.forward.targets = vec![greenplate_ingest::config::ForwardTargetConfig {
            kinds: vec!["WATCH_LIST_HIT".into()],
            ..target("dispatch", url.clone(), "json", 60)
        }];
    })
    .await;
    let secret = svc.add_reader("rd-1", 23.30, 116.60).await;
    let hq_token = support::new_unit_token(svc.channel().await, "hq", &[], true).await;
    let hq = greenplate_simulator::clients::patrol(svc.channel().await, &hq_token).unwrap();
    let mut command =
        greenplate_simulator::clients::command(svc.channel().await, &hq_token).unwrap();
    let mut alerts = stream(&hq, 0).await;
    let mut kiosk = svc.add_kiosk("k-1").await;
    for (i, (tag, plate)) in TAGS[..2].iter().enumerate() {
        kiosk
            .register_bike(support::bike(tag, plate))
            .await
            .unwrap();
        command
            .add_watch_entry(AddWatchEntryRequest {
                plate: (*plate).into(),
                priority: WatchPriority::Urgent as i32,
                reason: "robbery".into(),
                covert: i == 0,
                expires_at_ms: greenplate_simulator::reader::now_ms() + 3_600_000,
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let mut reader = ReaderClient::connect("127.0.0.1", svc.mqtt_port(), "rd-1", &secret)
        .await
        .unwrap();
    reader
        .publish(vec![
            sighting(TAGS[0].0, 2, -50),
            sighting(TAGS[1].0, 2, -50),
        ])
        .await
        .unwrap();
    let mut hits = Vec::new();
    while hits.len() < 2 {
        let a = next_alert(&mut alerts).await;
        if a.kind == AlertKind::WatchListHit as i32 {
            hits.push(a);
        }
    }
    svc.wait_metric(
        "greenplate_forward_skipped_total{target=\"dispatch\",reason=\"covert\"}",
        1.0,
    )
    .await;
    svc.wait_metric(
        "greenplate_forward_delivered_total{target=\"dispatch\"}",
        1.0,
    )
    .await;
    wait_metric_at_most(&svc, "greenplate_forward_lag_seq{target=\"dispatch\"}", 0.0).await;
    let got: Vec<String> = receiver.got().iter().map(|g| g.alert_id.clone()).collect();
    let open = hits.iter().find(|a| a.plate == TAGS[1].1).unwrap();
    assert_eq!(
        got,
        std::slice::from_ref(&open.alert_id),
        "only the open entry's hit"
    );
    reader.disconnect().await;
    receiver.down().await;
    svc.stop().await;
}

/// A partner on NATS JetStream: alerts published to a subject a stream captures, each with
/// its id as `Nats-Msg-Id`, signed like a webhook.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nats-server (NATS_SERVER, default nats-server on PATH)"]
async fn alerts_reach_a_partner_on_nats_jetstream() {
    use futures::StreamExt;
    let nats = crate::nats::nats_server_with("").await;
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let partner = js
        .create_stream(async_nats::jetstream::stream::Config {
            name: "PARTNER".into(),
            subjects: vec!["partner.alerts".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    let url = nats.url();
    let svc = TestService::start_configured(move |c| {
        c.alerting.clone_speed_kmh = 1e9;
        c.forward.targets = vec![greenplate_ingest::config::ForwardTargetConfig {
            subject: Some("partner.alerts".into()),
            ..target("city-nats", url.clone(), "json", 60)
        }];
    })
    .await;
    let (mut reader, mut alerts) = scene(&svc, "rd-1", &TAGS[..1]).await;
    reader
        .publish(vec![sighting(TAGS[0].0, 2, -50)])
        .await
        .unwrap();
    let alert = next_alert(&mut alerts).await;
    svc.wait_metric(
        "greenplate_forward_delivered_total{target=\"city-nats\"}",
        1.0,
    )
    .await;
    let consumer = partner
        .create_consumer(async_nats::jetstream::consumer::pull::Config::default())
        .await
        .unwrap();
    let mut messages = consumer.fetch().max_messages(10).messages().await.unwrap();
    let m = tokio::time::timeout(Duration::from_secs(10), messages.next())
        .await
        .expect("a message on the partner's stream")
        .unwrap()
        .unwrap();
    let headers = m.headers.clone().unwrap();
    assert_eq!(
        headers.get("Nats-Msg-Id").map(|v| v.as_str()),
        Some(alert.alert_id.as_str())
    );
    let ts = headers
        .get("Greenplate-Timestamp")
        .unwrap()
        .as_str()
        .to_owned();
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(ts.as_bytes());
    mac.update(b".");
    mac.update(&m.payload);
    assert_eq!(
        headers
            .get("Greenplate-Signature")
            .map(|v| v.as_str().to_owned()),
        Some(format!("v1={}", hex::encode(mac.finalize().into_bytes())))
    );
    let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
    assert_eq!(v["alert_id"], alert.alert_id.as_str());
    assert_eq!(v["plate"], TAGS[0].1);
    reader.disconnect().await;
    svc.stop().await;
}
