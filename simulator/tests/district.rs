//! The district simulation at small scale against a real greenplate started in-process on
//! ephemeral ports, every scenario on: the report must show every owed alert received, none
//! lost or duplicated or unexplained, and the garbage rejected. No timing is asserted.

use std::time::Duration;

use greenplate_ingest::{Config, Service};
use greenplate_simulator::district::{self, DistrictSpec, Target, TrafficMode};
use greenplate_simulator::rf::RfSpec;
use greenplate_simulator::roads::BBox;

const RUN: u64 = 9;
const BIKES: u64 = 2000;
const ADMIN_TOKEN: &str = "district-test-admin-token";

fn free_port() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_district_with_every_scenario() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config {
        data_dir: dir.path().to_owned(),
        admin_token: Some(ADMIN_TOKEN.into()),
        ..Config::default()
    };
    config.mqtt.listen = free_port();
    config.grpc.listen = "127.0.0.1:0".parse().unwrap();
    config.http.listen = "127.0.0.1:0".parse().unwrap();

    // The district's registrations, bulk imported before the service starts.
    {
        let (registry, _) = greenplate_ingest::app::open_registry(&config)
            .await
            .unwrap();
        let csv = dir.path().join("bikes.csv");
        greenplate_simulator::town::write_import_csv(&csv, BIKES, RUN).unwrap();
        let caller = greenplate_registry::Caller {
            role: greenplate_registry::Role::Admin,
            id: "test".into(),
        };
        let report = registry
            .import_csv(&caller, std::fs::File::open(&csv).unwrap(), |_| {})
            .await
            .unwrap();
        assert_eq!(report.accepted, BIKES, "{:?}", report.rejected);
        registry.db().close().await;
    }
    let service = Service::start(config).await.unwrap();

    let target = Target {
        grpc_url: Some(format!("http://{}", service.grpc_addr)),
        admin_token: ADMIN_TOKEN.into(),
        mqtt_host: "127.0.0.1".into(),
        mqtt_port: service.mqtt_addr.port(),
        metrics: Some(service.http_addr),
        server_pid: Some(std::process::id()),
        topic_prefix: None,
        relay_counter: None,
        broker_pid: None,
        more_nodes: Vec::new(),
    };
    let spec = DistrictSpec {
        readers: 20,
        bikes: BIKES as usize,
        // About 2 km by 1.5 km, a reader on every intersection: the clone's two ends are
        // more than the rule's 1 km apart.
        bbox: BBox {
            south: 23.250,
            north: 23.264,
            west: 116.600,
            east: 116.620,
        },
        intersections_per_reader: 1,
        zones: (2, 2),
        drive: Duration::from_secs(20),
        settle: Duration::from_secs(15),
        traffic: TrafficMode::Roads,
        // Every pass read, so each scenario bike's first pass is certain.
        rf: RfSpec {
            pass_miss: 0.0,
            ..RfSpec::default()
        },
        thefts: 2,
        armed: 1,
        clone: true,
        offline_reader: true,
        // More than a reader's burst (500): the budget drops the rest as `flood`.
        garbage: Some((1000, Duration::from_secs(1))),
        progress: false,
        ..DistrictSpec::chaoyang("dt-".into(), RUN)
    };
    let report = district::run(&target, &spec).await.unwrap();
    println!("{}", report.markdown());

    let a = &report.alerts;
    let kind = |k: &str| {
        a.by_kind
            .get(k)
            .map_or((0, 0), |c| (c.expected, c.received))
    };
    // Two thefts and one armed bike, each seen at least once: zone unit + command center.
    assert!(kind("STOLEN_SIGHTED").0 >= 4, "{:?}", a.by_kind);
    assert!(kind("ARMED_MOVED").0 >= 2, "{:?}", a.by_kind);
    assert!(kind("CLONE_SUSPECTED").0 >= 2, "{:?}", a.by_kind);
    assert_eq!(kind("READER_OFFLINE"), (1, 1), "{:?}", a.by_kind);
    assert_eq!(a.received, a.expected, "{:?}", a.by_kind);
    assert_eq!(a.lost, 0);
    assert_eq!(a.duplicated, 0);
    assert_eq!(a.unexpected, 0);

    let processed = report.processed.as_ref().unwrap();
    assert_eq!(processed.sightings_total, report.offered.sightings);
    let garbage = report.garbage.as_ref().unwrap();
    assert!(garbage.published > 0);
    let rejected: u64 = processed.rejected_by_reason.values().sum();
    assert!(
        rejected >= garbage.published,
        "{rejected} rejected of {} garbage: {:?}",
        garbage.published,
        processed.rejected_by_reason
    );
    // Junk never opens under its reader's key, so it is refused by its own reason (or as
    // `unauthentic_flood` past the global budget) and never spends a reader's budget.
    assert!(
        !processed.rejected_by_reason.contains_key("flood"),
        "{:?}",
        processed.rejected_by_reason
    );
    assert_eq!(report.publish_errors, 0);

    assert!(service.stop(Duration::from_secs(10)).await);
}
