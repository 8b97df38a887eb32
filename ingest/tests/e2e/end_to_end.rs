//! The whole path through the real interfaces only: gRPC Admin/Registry provisioning, a
//! reader publishing sealed batches through the embedded MQTT broker with rumqttc, and
//! patrol units receiving alerts over gRPC `Patrol.StreamAlerts`.

use crate::support;

use greenplate_proto::v1::{
    AddKioskRequest, AddPatrolUnitRequest, AddReaderRequest, AddZoneRequest, AlertKind,
    BikeDetails, GetBikeRequest, ListReadersRequest, Owner, RegisterBikeRequest,
    ReportRecoveredRequest, ReportStolenRequest, StreamAlertsRequest, get_bike_request,
};
use greenplate_simulator::clients;
use greenplate_simulator::reader::{ReaderClient, sighting};
use support::{ADMIN_TOKEN, TestService, later, next_alert};
use tonic::Code;

const WEST_ZONE: &str = r#"{"type":"Polygon","coordinates":[[[116.50,23.20],[116.58,23.20],[116.58,23.32],[116.50,23.32],[116.50,23.20]]]}"#;
const EAST_ZONE: &str = r#"{"type":"Feature","properties":{},"geometry":{"type":"Polygon","coordinates":[[[116.58,23.20],[116.66,23.20],[116.66,23.32],[116.58,23.32],[116.58,23.20]]]}}"#;

const TAG_STOLEN: &str = "e28011606000020700000001";
const TAG_OTHER: &str = "E28011606000020700000002";
const PLATE_STOLEN: &str = "潮阳A10001";
const PLATE_OTHER: &str = "潮阳A10002";

fn bike(tag: &str, plate: &str, id_number: &str) -> RegisterBikeRequest {
    RegisterBikeRequest {
        tag_id: tag.into(),
        plate: plate.into(),
        owner: Some(Owner {
            name: "林晓".into(),
            id_number: id_number.into(),
            phone: "13912345678".into(),
        }),
        bike: Some(BikeDetails {
            make: "Yadea".into(),
            model: "DE3".into(),
            color: "green".into(),
            frame_number: "LYDDE3000123".into(),
        }),
        request_id: String::new(),
        pin: "1357".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stolen_bike_sighting_reaches_the_right_patrol_and_survives_reconnects() {
    // The bike hops between readers 8 km apart within seconds here; the clone rule has its
    // own test (alerting_rules.rs), so keep it out of this one.
    let svc = TestService::start_configured(|c| c.alerting.clone_speed_kmh = 1e9).await;
    // Each sighting below is stamped 10 s after the one before (`later`), so each is a new
    // pass and runs the rules, as a bike passing the reader again would.
    let channel = svc.channel().await;
    let mut admin = clients::admin(channel.clone(), ADMIN_TOKEN).unwrap();

    // 2. Provision the world through Admin.
    admin
        .add_zone(AddZoneRequest {
            zone_id: "z-west".into(),
            name: "West".into(),
            geojson: WEST_ZONE.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    admin
        .add_zone(AddZoneRequest {
            zone_id: "z-east".into(),
            name: "East".into(),
            geojson: EAST_ZONE.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let bad_zone = admin
        .add_zone(AddZoneRequest {
            zone_id: "z-bad".into(),
            name: "Open ring".into(),
            geojson: r#"{"type":"Polygon","coordinates":[[[0,0],[1,0],[1,1],[0,1]]]}"#.into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad_zone.code(), Code::InvalidArgument, "{bad_zone:?}");
    let west_token = admin
        .add_patrol_unit(AddPatrolUnitRequest {
            unit_id: "u-west".into(),
            name: "West patrol".into(),
            zone_ids: vec!["z-west".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .token;
    let east_token = admin
        .add_patrol_unit(AddPatrolUnitRequest {
            unit_id: "u-east".into(),
            name: "East patrol".into(),
            zone_ids: vec!["z-east".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .token;
    let west_secret = admin
        .add_reader(AddReaderRequest {
            reader_id: "rd-west".into(),
            name: "West gate".into(),
            lat: 23.26,
            lon: 116.54,
            format: String::new(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .secret;
    let east_secret = admin
        .add_reader(AddReaderRequest {
            reader_id: "rd-east".into(),
            name: "East gate".into(),
            lat: 23.26,
            lon: 116.62,
            format: String::new(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .secret;
    let kiosk_token = admin
        .add_kiosk(AddKioskRequest {
            kiosk_id: "k-1".into(),
            name: "Town hall".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .token;

    // 6. Calls without a valid token, or with the wrong role, are refused.
    let mut anon = clients::admin(channel.clone(), "not-a-token").unwrap();
    let err = anon.list_readers(ListReadersRequest {}).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let mut no_header = greenplate_proto::v1::registry_client::RegistryClient::new(channel.clone());
    let err = no_header
        .get_bike(GetBikeRequest {
            key: Some(get_bike_request::Key::Plate(PLATE_STOLEN.into())),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let mut kiosk_as_admin = clients::admin(channel.clone(), &kiosk_token).unwrap();
    let err = kiosk_as_admin
        .list_readers(ListReadersRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);

    // 3. A kiosk registers two bikes, free; one is reported stolen.
    let mut registry = clients::registry(channel.clone(), &kiosk_token).unwrap();
    registry
        .register_bike(bike(TAG_STOLEN, PLATE_STOLEN, "11010519491231002X"))
        .await
        .unwrap();
    registry
        .register_bike(bike(TAG_OTHER, PLATE_OTHER, "11010519491231002X"))
        .await
        .unwrap();
    let shown = registry
        .get_bike(GetBikeRequest {
            key: Some(get_bike_request::Key::TagId(TAG_STOLEN.into())),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let owner = shown.owner.unwrap();
    assert_eq!(owner.id_number, "110***************");
    assert_eq!(owner.phone, "139****5678");
    let dup = registry
        .register_bike(bike(TAG_STOLEN, "潮阳A19999", "11010519491231002X"))
        .await
        .unwrap_err();
    assert_eq!(dup.code(), Code::AlreadyExists);
    registry
        .report_stolen(ReportStolenRequest {
            plate: PLATE_STOLEN.into(),
            ..Default::default()
        })
        .await
        .unwrap();

    // Patrol streams, opened before anything is sighted.
    let mut west_patrol = clients::patrol(channel.clone(), &west_token).unwrap();
    let mut west = west_patrol
        .stream_alerts(StreamAlertsRequest { resume_after: 0 })
        .await
        .unwrap()
        .into_inner();
    let mut east = clients::patrol(channel.clone(), &east_token)
        .unwrap()
        .stream_alerts(StreamAlertsRequest { resume_after: 0 })
        .await
        .unwrap()
        .into_inner();

    // 6. A wrong reader password is refused by the broker.
    let refused = ReaderClient::connect("127.0.0.1", svc.mqtt_port(), "rd-west", "wrong").await;
    assert!(refused.is_err(), "broker accepted a wrong password");
    svc.wait_metric("greenplate_mqtt_auth_failures_total", 1.0)
        .await;

    // 4./5. A reader publishes; a sighting of a bike that is not stolen makes no alert,
    // a sighting of the stolen bike alerts the west unit only.
    let mut west_reader =
        ReaderClient::connect("127.0.0.1", svc.mqtt_port(), "rd-west", &west_secret)
            .await
            .unwrap();
    west_reader
        .publish(vec![later(sighting(TAG_OTHER, 4, -52), 1)])
        .await
        .unwrap();
    svc.wait_metric("greenplate_ingest_sightings_accepted_total", 1.0)
        .await;
    west_reader
        .publish(vec![
            later(sighting(TAG_OTHER, 2, -60), 2),
            later(sighting(TAG_STOLEN, 5, -48), 3),
        ])
        .await
        .unwrap();
    let first = next_alert(&mut west).await;
    assert_eq!(first.kind, AlertKind::StolenSighted as i32);
    assert_eq!(first.plate, PLATE_STOLEN);
    assert_eq!(first.tag_id, TAG_STOLEN.to_uppercase());
    assert_eq!(first.reader_id, "rd-west");
    assert_eq!((first.lat, first.lon), (23.26, 116.54));
    assert!(first.seq > 0 && !first.incident_id.is_empty() && !first.alert_id.is_empty());

    // 6. A malformed payload is counted and dropped; the reader and service carry on.
    west_reader
        .publish_raw(
            &greenplate_proto::topics::sightings("rd-west"),
            b"\x0a\xff\xff not protobuf".to_vec(),
        )
        .await
        .unwrap();
    svc.wait_metric(
        "greenplate_ingest_batches_rejected_total{reason=\"malformed\"}",
        1.0,
    )
    .await;

    // The east unit was not sent the west alert: its first alert is the east sighting's.
    let mut east_reader =
        ReaderClient::connect("127.0.0.1", svc.mqtt_port(), "rd-east", &east_secret)
            .await
            .unwrap();
    east_reader
        .publish(vec![later(sighting(TAG_STOLEN, 3, -55), 4)])
        .await
        .unwrap();
    let east_first = next_alert(&mut east).await;
    assert_eq!(east_first.reader_id, "rd-east");
    assert!(east_first.seq > first.seq);
    // One incident for successive sightings of the same theft.
    assert_eq!(east_first.incident_id, first.incident_id);

    // 5. Resume: the west unit disconnects, misses two alerts, reconnects with resume_after.
    drop(west);
    west_reader
        .publish(vec![later(sighting(TAG_STOLEN, 1, -70), 5)])
        .await
        .unwrap();
    west_reader
        .publish(vec![later(sighting(TAG_STOLEN, 2, -65), 6)])
        .await
        .unwrap();
    svc.wait_metric("greenplate_ingest_stolen_sightings_total", 4.0)
        .await;
    let mut west = west_patrol
        .stream_alerts(StreamAlertsRequest {
            resume_after: first.seq,
        })
        .await
        .unwrap()
        .into_inner();
    let missed1 = next_alert(&mut west).await;
    let missed2 = next_alert(&mut west).await;
    assert!(first.seq < missed1.seq && missed1.seq < missed2.seq);
    assert_eq!(
        (missed1.reader_id.as_str(), missed2.reader_id.as_str()),
        ("rd-west", "rd-west")
    );
    // ...and then goes live without a duplicate.
    west_reader
        .publish(vec![later(sighting(TAG_STOLEN, 1, -50), 7)])
        .await
        .unwrap();
    let live = next_alert(&mut west).await;
    assert!(live.seq > missed2.seq);

    // A recovered bike is off the hotlist: its next sighting makes no alert. Prove it by
    // ordering: sight the recovered bike, then a newly stolen one; the next alert is the latter.
    registry
        .report_recovered(ReportRecoveredRequest {
            plate: PLATE_STOLEN.into(),
            pin: "1357".into(),
        })
        .await
        .unwrap();
    west_reader
        .publish(vec![later(sighting(TAG_STOLEN, 3, -50), 8)])
        .await
        .unwrap();
    registry
        .report_stolen(ReportStolenRequest {
            plate: PLATE_OTHER.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    west_reader
        .publish(vec![later(sighting(TAG_OTHER, 3, -50), 9)])
        .await
        .unwrap();
    let next = next_alert(&mut west).await;
    assert_eq!(next.plate, PLATE_OTHER);
    assert_ne!(next.incident_id, first.incident_id);

    // The reader's counters are visible to the operator.
    let readers = admin
        .list_readers(ListReadersRequest {})
        .await
        .unwrap()
        .into_inner()
        .readers;
    let w = readers.iter().find(|r| r.reader_id == "rd-west").unwrap();
    assert!(w.batches_accepted >= 7 && w.last_seen_ms > 0, "{w:?}");

    west_reader.disconnect().await;
    east_reader.disconnect().await;
    drop((west, east));
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_metrics_and_restart_keep_state() {
    let svc = TestService::start().await;
    assert_eq!(svc.http_get("/healthz").await, "ok\n");
    let mut admin = clients::admin(svc.channel().await, ADMIN_TOKEN).unwrap();
    let secret = admin
        .add_reader(AddReaderRequest {
            reader_id: "rd-1".into(),
            name: "Gate".into(),
            lat: 23.3,
            lon: 116.6,
            format: String::new(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .secret;
    let dir = svc.stop().await;

    // After a restart the reader's credentials still work (secrets sealed at rest).
    let svc = TestService::start_in(dir).await;
    let reader = ReaderClient::connect("127.0.0.1", svc.mqtt_port(), "rd-1", &secret)
        .await
        .unwrap();
    assert!(
        svc.http_get("/metrics")
            .await
            .contains("greenplate_registry_readers 1")
    );
    reader.disconnect().await;
    svc.stop().await;
}
