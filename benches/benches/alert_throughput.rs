//! Alert throughput: how many alerts a second the engine commits to the alert log and hands
//! to every streaming unit, when many stolen bikes pass many readers at once.
//!
//! 100 stolen bikes each pass 400 readers (40,000 flagged sightings, submitted as fast as
//! the engine takes them); every reader is in one patrol zone, so every alert goes to that
//! zone's units and to the command center. Each unit's stream is a hub subscriber that counts
//! what it receives; the run ends when every unit has every alert.
//!
//! ```text
//! cargo bench -p greenplate-benches --bench alert_throughput              # SQLite
//! GREENPLATE_BENCH_PG=postgres://postgres@127.0.0.1:5432/test \
//!   cargo bench -p greenplate-benches --bench alert_throughput             # and PostgreSQL
//! ```
//! Options (environment): GREENPLATE_BENCH_BIKES (100), GREENPLATE_BENCH_READERS (400),
//! GREENPLATE_BENCH_UNITS (10), GREENPLATE_BENCH_FORWARD (0): that many webhook targets
//! ([`greenplate_alerting::forward`], greenplate JSON, signed) to local HTTP receivers that
//! answer 200, whose time to take every alert is reported too.

use std::sync::Arc;
use std::time::{Duration, Instant};

use greenplate_alerting::{Alerting, RoutingConfig, Sighted, UnitRole, ZoneKind, engine};
use greenplate_registry::{
    Caller, Db, NewBike, NewOwner, Reader, Registry, Role, SecretBox, TagId, TheftDetails,
};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const ZONE: &str = r#"{"type":"Polygon","coordinates":[[[116.50,23.20],[116.70,23.20],[116.70,23.40],[116.50,23.40],[116.50,23.20]]]}"#;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn admin() -> Caller {
    Caller {
        role: Role::Admin,
        id: "admin".into(),
    }
}

struct Outcome {
    alerts: usize,
    units: usize,
    elapsed: Duration,
    latency_mean_ms: f64,
    /// Webhook targets, and the time until the slowest had every alert.
    forwarded: Option<(usize, Duration)>,
}

/// A partner's endpoint that takes everything: counts requests, answers 200.
async fn receiver() -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let count = Arc::new(AtomicUsize::new(0));
    let counted = count.clone();
    let app = axum::Router::new().route(
        "/alerts",
        axum::routing::post(move || {
            let counted = counted.clone();
            async move {
                counted.fetch_add(1, Ordering::Relaxed);
                axum::http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/alerts", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, count)
}

async fn run(db: Db, follow_url: Option<String>) -> Outcome {
    let bikes = env("GREENPLATE_BENCH_BIKES", 100);
    let readers = env("GREENPLATE_BENCH_READERS", 400);
    let units = env("GREENPLATE_BENCH_UNITS", 10);
    let registry = Registry::open(db, SecretBox::new(&[7; 32]), "admin-token")
        .await
        .unwrap();
    let alerting = Alerting::open(registry.clone(), RoutingConfig::default())
        .await
        .unwrap();
    alerting
        .add_zone(&admin(), "z", "Z", ZoneKind::Patrol, ZONE)
        .await
        .unwrap();
    for u in 0..units {
        alerting
            .add_patrol_unit(
                &admin(),
                &format!("u{u}"),
                "U",
                &["z".to_owned()],
                UnitRole::Patrol,
                None,
            )
            .await
            .unwrap();
    }
    alerting
        .add_patrol_unit(&admin(), "cc", "CC", &[], UnitRole::CommandCenter, None)
        .await
        .unwrap();
    let kiosk = Caller {
        role: Role::Kiosk,
        id: "k".into(),
    };
    let mut stolen = Vec::new();
    for b in 0..bikes {
        let tag = format!("E2801160600002070000{b:04X}");
        let plate = format!("潮阳A{:05}", 10_000 + b);
        let id = registry
            .register_bike(
                &kiosk,
                NewBike {
                    tag_id: tag.clone(),
                    plate: plate.clone(),
                    owner: NewOwner {
                        name: "陈伟".into(),
                        id_number: "440513199001011230".into(),
                        phone: "13812345678".into(),
                    },
                    make: "Honda".into(),
                    model: "Wave".into(),
                    color: "red".into(),
                    frame_number: format!("LHJ{b:05}"),
                    ..NewBike::default()
                },
            )
            .await
            .unwrap()
            .bike_id;
        registry
            .report_stolen(&admin(), &plate, &TheftDetails::default())
            .await
            .unwrap();
        let tag = TagId::parse(&tag).unwrap();
        let state = registry.index().lookup(tag).expect("registered");
        assert!(state.stolen());
        stolen.push((id, tag, state));
    }
    let readers: Vec<Arc<Reader>> = (0..readers)
        .map(|r| {
            let (lat, lon) = (
                23.21 + (r % 20) as f64 * 0.009,
                116.51 + (r / 20) as f64 * 0.009,
            );
            Arc::new(Reader::new(format!("rd-{r}"), "R".into(), lat, lon, "s"))
        })
        .collect();

    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    if let Some(url) = follow_url {
        let follower = greenplate_alerting::log::follow::start(alerting.clone(), url)
            .await
            .expect("start the alert log follower");
        tracker.spawn(follower.run(shutdown.clone()));
    }
    let expected = bikes * readers.len();
    let recipients = units + 1;
    // Partner targets, each registered (its cursor at the log's end) before any alert.
    let mut receivers = Vec::new();
    let mut targets = Vec::new();
    for t in 0..env("GREENPLATE_BENCH_FORWARD", 0) {
        let (url, count) = receiver().await;
        receivers.push(count);
        targets.push(greenplate_alerting::forward::Target {
            name: format!("bench-{t}"),
            sink: greenplate_alerting::forward::Sink::Webhook {
                url,
                secret: "bench".into(),
                format: greenplate_alerting::forward::Format::Json,
            },
            filter: Default::default(),
            give_up_after: Duration::from_secs(600),
            timeout: Duration::from_secs(10),
        });
    }
    if !targets.is_empty() {
        let n = targets.len() as i64;
        tracker.spawn(greenplate_alerting::forward::run(
            alerting.clone(),
            targets,
            Default::default(),
            shutdown.clone(),
        ));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let row = sqlx::query("SELECT COUNT(*) AS n FROM forward_targets")
                .fetch_one(registry.db().pool())
                .await
                .unwrap();
            if sqlx::Row::try_get::<i64, _>(&row, "n").unwrap() == n {
                break;
            }
            assert!(Instant::now() < deadline, "the targets did not register");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // Each unit's stream: a hub subscriber counting the alerts addressed to it.
    let mut streams = Vec::new();
    for u in (0..units).map(|u| format!("u{u}")).chain(["cc".to_owned()]) {
        let mut rx = alerting.subscribe();
        streams.push(tokio::spawn(async move {
            let mut got = 0;
            while got < expected {
                match rx.recv().await {
                    Ok(a) if a.recipients.contains(&u) => got += 1,
                    Ok(_) => {}
                    // A lagging stream catches up from the log in the service; here it
                    // would only miscount, so it fails the run.
                    Err(e) => panic!("stream {u}: {e}"),
                }
            }
            got
        }));
    }
    let handle = engine::spawn(alerting.clone(), shutdown.clone(), &tracker);
    let started = Instant::now();
    for reader in &readers {
        for &(bike_id, tag, state) in &stolen {
            let s = Sighted {
                bike_id,
                tag,
                state,
                reader: reader.clone(),
                seen_at_ms: greenplate_registry::now_ms(),
                clone: None,
                received_at: Instant::now(),
                hold: None,
            };
            if handle.submit(s).await.is_err() {
                panic!("the engine stopped");
            }
        }
    }
    let mut delivered = 0;
    for s in streams {
        delivered += tokio::time::timeout(Duration::from_secs(600), s)
            .await
            .expect("every stream got every alert within 10 minutes")
            .unwrap();
    }
    let elapsed = started.elapsed();
    assert_eq!(delivered, expected * recipients);
    let forwarded = if receivers.is_empty() {
        None
    } else {
        let deadline = Instant::now() + Duration::from_secs(1800);
        while receivers
            .iter()
            .any(|c| c.load(std::sync::atomic::Ordering::Relaxed) < expected)
        {
            assert!(Instant::now() < deadline, "forwarding took over 30 minutes");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Some((receivers.len(), started.elapsed()))
    };
    let latency_mean_ms = {
        use prometheus_client::encoding::text::encode;
        let mut reg = prometheus_client::registry::Registry::default();
        alerting.register_metrics(&mut reg);
        let mut text = String::new();
        encode(&mut text, &reg).unwrap();
        let field = |name: &str| -> f64 {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
                .unwrap_or(0.0)
        };
        field("alert_latency_seconds_sum") / field("alert_latency_seconds_count").max(1.0) * 1e3
    };
    shutdown.cancel();
    tracker.close();
    tracker.wait().await;
    registry.db().close().await;
    Outcome {
        alerts: expected,
        units: recipients,
        elapsed,
        latency_mean_ms,
        forwarded,
    }
}

fn report(backend: &str, o: &Outcome) {
    let s = o.elapsed.as_secs_f64();
    println!(
        "{backend}: {} alerts committed and streamed to {} units each in {:.2} s: {:.0} alerts/s \
         ({:.0} deliveries/s); engine latency (submit to hub) mean {:.1} ms",
        o.alerts,
        o.units,
        s,
        o.alerts as f64 / s,
        (o.alerts * o.units) as f64 / s,
        o.latency_mean_ms,
    );
    if let Some((targets, took)) = o.forwarded {
        let s = took.as_secs_f64();
        println!(
            "{backend}: every alert forwarded to each of {targets} webhook targets in {s:.2} s \
             from the first sighting: {:.0} alerts/s per target",
            o.alerts as f64 / s,
        );
    }
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing we use. Only run
    // when benchmarking, not when the test harness lists it.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::connect(&Db::sqlite_url(&dir.path().join("bench.db")))
            .await
            .unwrap();
        report("SQLite", &run(db, None).await);
        if let Ok(base) = std::env::var("GREENPLATE_BENCH_PG") {
            let name = format!("gp_bench_{}", std::process::id());
            let server = Db::connect(&base).await.unwrap();
            sqlx_exec(&server, &format!("CREATE DATABASE {name}")).await;
            let url = match base.rsplit_once('/') {
                Some((server, _)) => format!("{server}/{name}"),
                None => panic!("GREENPLATE_BENCH_PG has no database path"),
            };
            let db = Db::connect(&url).await.unwrap();
            report("PostgreSQL", &run(db, Some(url)).await);
            sqlx_exec(&server, &format!("DROP DATABASE {name}")).await;
        }
    });
}

async fn sqlx_exec(db: &Db, sql: &str) {
    sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(db.pool())
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}
