//! Alert rules, watch zones, command centers and the incident lifecycle, end to end through
//! MQTT and gRPC.

use crate::support;

use greenplate_proto::v1::{
    AcknowledgeIncidentRequest, AddPatrolUnitRequest, AddZoneRequest, Alert, AlertKind,
    GetBikeRequest, IncidentState, Outcome, ReplaceTagRequest, ReportStolenRequest,
    ResolveIncidentRequest, SetArmedRequest, StreamAlertsRequest, ZoneKind, get_bike_request,
};
use greenplate_simulator::clients;
use greenplate_simulator::reader::{ReaderClient, sighting};
use support::{ADMIN_TOKEN, TestService, bike, later, next_alert, register_stolen, stream};
use tonic::Code;
use tonic::Streaming;

fn square(west: f64, south: f64, east: f64, north: f64) -> String {
    format!(
        r#"{{"type":"Polygon","coordinates":[[[{west},{south}],[{east},{south}],[{east},{north}],[{west},{north}],[{west},{south}]]]}}"#
    )
}

const TAG_STOLEN: &str = "E28011606000000000000A01";
const TAG_ARMED: &str = "E28011606000000000000A02";
const TAG_OLD: &str = "E28011606000000000000A03";
const TAG_NEW: &str = "E28011606000000000000A04";
const TAG_PLAIN: &str = "E28011606000000000000A05";

/// Sights the plain bike then `then` at `reader`; the next alert on `stream` must be for
/// `then`'s tag, proving nothing was sent for the plain bike.
async fn expect_next(stream: &mut Streaming<Alert>, tag: &str) -> Alert {
    let a = next_alert(stream).await;
    assert_eq!(a.tag_id, tag, "unexpected alert {a:?}");
    a
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_routing_and_incident_lifecycle() {
    // Every sighting below is stamped 10 s after the one before (`later`), so each is a new
    // pass and runs the rules: reads within the pass gap would extend one pass instead.
    // This bike hops between readers kilometres apart within seconds: keep the clone rule
    // (tested on its own below) out of this test.
    let svc = TestService::start_configured(|c| c.alerting.clone_speed_kmh = 1e9).await;
    let channel = svc.channel().await;
    let mut admin = clients::admin(channel.clone(), ADMIN_TOKEN).unwrap();
    admin
        .add_zone(AddZoneRequest {
            zone_id: "west".into(),
            name: "West".into(),
            geojson: square(116.50, 23.20, 116.58, 23.32),
            kind: ZoneKind::Patrol as i32,
        })
        .await
        .unwrap();
    admin
        .add_zone(AddZoneRequest {
            zone_id: "exit".into(),
            name: "Western exit".into(),
            geojson: square(116.50, 23.20, 116.52, 23.22),
            kind: ZoneKind::Watch as i32,
        })
        .await
        .unwrap();
    let mut west_patrol = svc.add_unit("u-west", &["west"], false).await;
    let hq_patrol = svc.add_unit("hq", &[], true).await;
    let mut idle = svc.add_unit("u-idle", &[], false).await;
    let town_secret = svc.add_reader("rd-town", 23.26, 116.55).await;
    let exit_secret = svc.add_reader("rd-exit", 23.21, 116.51).await;
    let out_secret = svc.add_reader("rd-out", 23.50, 116.90).await;
    let mut kiosk = svc.add_kiosk("k").await;
    kiosk
        .register_bike(bike(TAG_STOLEN, "潮阳R00001"))
        .await
        .unwrap();
    kiosk
        .register_bike(bike(TAG_ARMED, "潮阳R00002"))
        .await
        .unwrap();
    kiosk
        .register_bike(bike(TAG_OLD, "潮阳R00003"))
        .await
        .unwrap();
    kiosk
        .register_bike(bike(TAG_PLAIN, "潮阳R00005"))
        .await
        .unwrap();
    kiosk
        .report_stolen(ReportStolenRequest {
            plate: "潮阳R00001".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    kiosk
        .set_armed(SetArmedRequest {
            plate: "潮阳R00002".into(),
            pin: "2468".into(),
            armed: true,
        })
        .await
        .unwrap();
    kiosk
        .replace_tag(ReplaceTagRequest {
            plate: "潮阳R00003".into(),
            new_tag_id: TAG_NEW.into(),
            pin: "2468".into(),
        })
        .await
        .unwrap();

    let mut west = stream(&west_patrol, 0).await;
    let mut hq = stream(&hq_patrol, 0).await;
    let port = svc.mqtt_port();
    let mut town = ReaderClient::connect("127.0.0.1", port, "rd-town", &town_secret)
        .await
        .unwrap();
    let mut exit = ReaderClient::connect("127.0.0.1", port, "rd-exit", &exit_secret)
        .await
        .unwrap();
    let mut out = ReaderClient::connect("127.0.0.1", port, "rd-out", &out_secret)
        .await
        .unwrap();

    // Stolen, in town: the zone's unit and the command center, normal priority.
    town.publish(vec![
        later(sighting(TAG_PLAIN, 3, -50), 1),
        later(sighting(TAG_STOLEN, 3, -50), 2),
    ])
    .await
    .unwrap();
    let stolen = expect_next(&mut west, TAG_STOLEN).await;
    assert_eq!(
        (stolen.kind(), stolen.priority),
        (AlertKind::StolenSighted, 1)
    );
    assert_eq!(expect_next(&mut hq, TAG_STOLEN).await.seq, stolen.seq);

    // At the exit: urgent watch-zone alert, same incident.
    exit.publish(vec![later(sighting(TAG_STOLEN, 3, -50), 3)])
        .await
        .unwrap();
    let urgent = expect_next(&mut west, TAG_STOLEN).await;
    assert_eq!((urgent.kind(), urgent.priority), (AlertKind::WatchZone, 2));
    assert_eq!(urgent.zone_id, "exit");
    assert_eq!(urgent.incident_id, stolen.incident_id);
    expect_next(&mut hq, TAG_STOLEN).await;

    // Outside every patrol zone: only the command center hears of it.
    out.publish(vec![later(sighting(TAG_STOLEN, 3, -50), 4)])
        .await
        .unwrap();
    let outside = expect_next(&mut hq, TAG_STOLEN).await;
    assert_eq!(outside.reader_id, "rd-out");

    // Armed and moving: its own incident; a second sighting updates it.
    town.publish(vec![later(sighting(TAG_ARMED, 2, -60), 5)])
        .await
        .unwrap();
    let armed = expect_next(&mut west, TAG_ARMED).await;
    assert_eq!(armed.kind(), AlertKind::ArmedMoved);
    assert_eq!(armed.plate, "潮阳R00002");
    assert_ne!(armed.incident_id, stolen.incident_id);
    town.publish(vec![later(sighting(TAG_ARMED, 2, -60), 6)])
        .await
        .unwrap();
    let armed2 = expect_next(&mut west, TAG_ARMED).await;
    assert_eq!(armed2.incident_id, armed.incident_id);
    assert!(armed2.seq > armed.seq);

    // A revoked tag (replaced) seen: the old tag names the bike.
    town.publish(vec![later(sighting(TAG_OLD, 1, -70), 7)])
        .await
        .unwrap();
    let revoked = expect_next(&mut west, TAG_OLD).await;
    assert_eq!(revoked.kind(), AlertKind::RevokedTagSeen);
    assert_eq!(revoked.plate, "潮阳R00003");
    // The bike's new tag is not flagged.
    town.publish(vec![
        later(sighting(TAG_NEW, 1, -70), 8),
        later(sighting(TAG_OLD, 1, -70), 9),
    ])
    .await
    .unwrap();
    expect_next(&mut west, TAG_OLD).await;

    // Lifecycle: a unit that never got the incident cannot see it.
    let err = idle
        .acknowledge_incident(AcknowledgeIncidentRequest {
            incident_id: stolen.incident_id.clone(),
            note: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let acked = west_patrol
        .acknowledge_incident(AcknowledgeIncidentRequest {
            incident_id: stolen.incident_id.clone(),
            note: "Unit 7 on the way".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(acked.state(), IncidentState::Acknowledged);
    assert_eq!(acked.acknowledged_by, "patrol:u-west");
    let err = west_patrol
        .resolve_incident(ResolveIncidentRequest {
            incident_id: stolen.incident_id.clone(),
            outcome: Outcome::Unspecified as i32,
            note: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let resolved = west_patrol
        .resolve_incident(ResolveIncidentRequest {
            incident_id: stolen.incident_id.clone(),
            outcome: Outcome::Recovered as i32,
            note: "Found behind the market".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (resolved.state(), resolved.outcome()),
        (IncidentState::Resolved, Outcome::Recovered)
    );
    let err = west_patrol
        .resolve_incident(ResolveIncidentRequest {
            incident_id: stolen.incident_id.clone(),
            outcome: Outcome::FalseAlarm as i32,
            note: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);

    // Resolving as recovered took the bike off the hotlist: its next sighting is silent.
    let shown = kiosk
        .get_bike(GetBikeRequest {
            key: Some(get_bike_request::Key::Plate("潮阳R00001".into())),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!shown.stolen);
    town.publish(vec![
        later(sighting(TAG_STOLEN, 3, -50), 10),
        later(sighting(TAG_OLD, 1, -70), 11),
    ])
    .await
    .unwrap();
    expect_next(&mut west, TAG_OLD).await;

    // Stolen again: a new incident.
    kiosk
        .report_stolen(ReportStolenRequest {
            plate: "潮阳R00001".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    town.publish(vec![later(sighting(TAG_STOLEN, 3, -50), 12)])
        .await
        .unwrap();
    let again = expect_next(&mut west, TAG_STOLEN).await;
    assert_ne!(again.incident_id, stolen.incident_id);

    for r in [town, exit, out] {
        r.disconnect().await;
    }
    drop((west, hq));
    svc.stop().await;
}

/// On-duty units near a sighting hear of it even outside their zones; off-duty or distant
/// units do not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nearest_on_duty_units_hear_of_nearby_sightings() {
    use greenplate_proto::v1::UpdatePositionRequest;
    let svc = TestService::start().await;
    let secret = svc.add_reader("rd-1", 23.26, 116.60).await;
    let mut near = svc.add_unit("u-near", &[], false).await;
    let mut off = svc.add_unit("u-off", &[], false).await;
    let mut far = svc.add_unit("u-far", &[], false).await;
    let at = |lat: f64, lon: f64, on_duty: bool| UpdatePositionRequest { lat, lon, on_duty };
    near.update_position(at(23.265, 116.605, true))
        .await
        .unwrap();
    off.update_position(at(23.265, 116.605, false))
        .await
        .unwrap();
    far.update_position(at(23.45, 116.80, true)).await.unwrap();
    assert_eq!(
        near.update_position(at(91.0, 0.0, true))
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );

    register_stolen(&svc, TAG_STOLEN, "潮阳R00001").await;
    let mut near_alerts = stream(&near, 0).await;
    let mut off_alerts = stream(&off, 0).await;
    let mut far_alerts = stream(&far, 0).await;
    let mut reader = ReaderClient::connect("127.0.0.1", svc.mqtt_port(), "rd-1", &secret)
        .await
        .unwrap();

    reader
        .publish(vec![sighting(TAG_STOLEN, 2, -50)])
        .await
        .unwrap();
    let first = next_alert(&mut near_alerts).await;

    // The off-duty unit goes on duty: its first alert is the next sighting, not the first.
    off.update_position(at(23.265, 116.605, true))
        .await
        .unwrap();
    reader
        .publish(vec![later(sighting(TAG_STOLEN, 2, -50), 1)])
        .await
        .unwrap();
    let second = next_alert(&mut off_alerts).await;
    assert!(second.seq > first.seq);
    assert_eq!(next_alert(&mut near_alerts).await.seq, second.seq);

    // The distant unit drives over: likewise.
    far.update_position(at(23.261, 116.601, true))
        .await
        .unwrap();
    reader
        .publish(vec![later(sighting(TAG_STOLEN, 2, -50), 2)])
        .await
        .unwrap();
    let third = next_alert(&mut far_alerts).await;
    assert!(third.seq > second.seq);

    reader.disconnect().await;
    drop((near_alerts, off_alerts, far_alerts));
    svc.stop().await;
}

/// One tag seen by two readers 11 km apart seconds apart: a suspected clone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_at_an_impossible_speed_is_a_suspected_clone() {
    let svc = TestService::start().await;
    let mut hq = stream(&svc.add_unit("hq", &[], true).await, 0).await;
    let south = svc.add_reader("rd-south", 23.20, 116.50).await;
    let north = svc.add_reader("rd-north", 23.30, 116.50).await;
    svc.add_kiosk("k")
        .await
        .register_bike(bike(TAG_PLAIN, "潮阳R00005"))
        .await
        .unwrap();
    let port = svc.mqtt_port();
    let mut s = ReaderClient::connect("127.0.0.1", port, "rd-south", &south)
        .await
        .unwrap();
    let mut n = ReaderClient::connect("127.0.0.1", port, "rd-north", &north)
        .await
        .unwrap();
    s.publish(vec![sighting(TAG_PLAIN, 2, -50)]).await.unwrap();
    svc.wait_metric("greenplate_ingest_sightings_accepted_total", 1.0)
        .await;
    n.publish(vec![sighting(TAG_PLAIN, 2, -50)]).await.unwrap();
    let alert = next_alert(&mut hq).await;
    assert_eq!(alert.kind(), AlertKind::CloneSuspected);
    assert_eq!(
        (alert.plate.as_str(), alert.reader_id.as_str()),
        ("潮阳R00005", "rd-north")
    );
    // Back south: a new pass there (a read within the gap would extend the first one).
    s.publish(vec![later(sighting(TAG_PLAIN, 2, -50), 1)])
        .await
        .unwrap();
    let again = next_alert(&mut hq).await;
    assert_eq!(again.kind(), AlertKind::CloneSuspected);
    assert_eq!(again.incident_id, alert.incident_id);
    assert_eq!(
        svc.metric("greenplate_ingest_clone_suspects_total").await,
        2.0
    );
    s.disconnect().await;
    n.disconnect().await;
    drop(hq);
    svc.stop().await;
}

/// A unit that stops reading does not hold up the pipeline or another unit, and when it
/// reads again it gets every alert, in order, from the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_stream_neither_delays_others_nor_loses_alerts() {
    const ALERTS: usize = 3000; // well past the live hub (1024) and the stream queue (64)
    let svc = TestService::start().await;
    let slow_token = svc_unit_token(&svc, "slow").await;
    let fast = svc.add_unit("fast", &[], true).await;
    let secret = svc.add_reader("rd-1", 23.26, 116.6).await;
    register_stolen(&svc, TAG_STOLEN, "潮阳R00001").await;

    // Its own connection, with a small HTTP/2 window, so the server soon cannot send it more
    // and only its stream stalls.
    let slow_channel = tonic::transport::Endpoint::from_shared(svc.grpc_url.clone())
        .unwrap()
        .initial_stream_window_size(Some(4096))
        .connect()
        .await
        .unwrap();
    let mut slow = clients::patrol(slow_channel, &slow_token)
        .unwrap()
        .stream_alerts(StreamAlertsRequest { resume_after: 0 })
        .await
        .unwrap()
        .into_inner();
    let mut fast = stream(&fast, 0).await;
    let mut reader = ReaderClient::connect("127.0.0.1", svc.mqtt_port(), "rd-1", &secret)
        .await
        .unwrap();
    for b in 0..ALERTS / 50 {
        // Each sighting a pass of its own, so each is an alert.
        let batch = (0..50)
            .map(|i| later(sighting(TAG_STOLEN, 1, -50), (b * 50 + i) as i64))
            .collect();
        reader.publish(batch).await.unwrap();
    }
    // The fast unit gets everything while the slow one reads nothing.
    let mut last = 0;
    for _ in 0..ALERTS {
        let a = next_alert(&mut fast).await;
        assert!(a.seq > last);
        last = a.seq;
    }
    // Now the slow unit reads: all of it, in order, no gap, no duplicate.
    let mut seen = Vec::with_capacity(ALERTS);
    for _ in 0..ALERTS {
        seen.push(next_alert(&mut slow).await.seq);
    }
    assert!(
        seen.windows(2).all(|w| w[1] == w[0] + 1),
        "gap or duplicate"
    );
    assert_eq!(*seen.last().unwrap(), last);
    // ...and it did fall behind the live feed and catch up from the log.
    assert!(
        svc.metric("greenplate_alerting_stream_catchups_total")
            .await
            >= 1.0
    );
    reader.disconnect().await;
    drop((slow, fast));
    svc.stop().await;
}

/// A command-center unit's token (for a client built on a connection of its own).
async fn svc_unit_token(svc: &TestService, id: &str) -> String {
    svc.admin()
        .await
        .add_patrol_unit(AddPatrolUnitRequest {
            unit_id: id.into(),
            name: id.into(),
            zone_ids: vec![],
            command_center: true,
            canary: false,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .token
}
