//! Canaries end to end: a canary tag read by a real reader over MQTT reaches a canary
//! unit's gRPC stream (and no patrol's), and a canary that stops being seen raises
//! CANARY_MISSED to command centers and the miss metrics.

use crate::support;

use greenplate_proto::v1::{
    AddCanaryRequest, AddPatrolUnitRequest, AddZoneRequest, AlertKind, ListCanariesRequest,
    ZoneKind,
};
use greenplate_registry::testing::eventually;
use greenplate_simulator::clients;
use greenplate_simulator::reader::{ReaderClient, sighting};
use support::{ADMIN_TOKEN, TestService, later, next_alert, register_stolen, stream};
use tonic::Code;

const CANARY: &str = "E280116060000000000CA001";
const STOLEN: &str = "E280116060000000000CA002";
const ZONE: &str = r#"{"type":"Polygon","coordinates":[[[116.50,23.20],[116.60,23.20],[116.60,23.30],[116.50,23.30],[116.50,23.20]]]}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_goes_the_whole_way_to_canary_units_and_its_silence_is_raised() {
    let svc = TestService::start().await;
    let channel = svc.channel().await;
    let mut admin = clients::admin(channel.clone(), ADMIN_TOKEN).unwrap();
    admin
        .add_zone(AddZoneRequest {
            zone_id: "town".into(),
            name: "Town".into(),
            geojson: ZONE.into(),
            kind: ZoneKind::Patrol as i32,
        })
        .await
        .unwrap();
    let patrol = svc.add_unit("u-town", &["town"], false).await;
    let hq = svc.add_unit("hq", &[], true).await;
    let canary_token = admin
        .add_patrol_unit(AddPatrolUnitRequest {
            unit_id: "canary-watch".into(),
            name: "Canary watch".into(),
            canary: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .token;
    let canary_unit = clients::patrol(channel.clone(), &canary_token).unwrap();
    // A unit is a command center or a canary unit, not both; a canary unit has no zones.
    for bad in [
        AddPatrolUnitRequest {
            unit_id: "both".into(),
            name: "Both".into(),
            command_center: true,
            canary: true,
            ..Default::default()
        },
        AddPatrolUnitRequest {
            unit_id: "zoned".into(),
            name: "Zoned".into(),
            zone_ids: vec!["town".into()],
            canary: true,
            ..Default::default()
        },
    ] {
        let e = admin.add_patrol_unit(bad).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    }
    let secret = svc.add_reader("rd-gate", 23.25, 116.55).await;
    register_stolen(&svc, STOLEN, "潮阳K00001").await;
    // A bike's tag cannot be a canary; the schedule must be sane.
    let e = admin
        .add_canary(AddCanaryRequest {
            tag_id: STOLEN.into(),
            expected_every_s: 60,
            note: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    let e = admin
        .add_canary(AddCanaryRequest {
            tag_id: CANARY.into(),
            expected_every_s: 0,
            note: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    admin
        .add_canary(AddCanaryRequest {
            tag_id: CANARY.into(),
            expected_every_s: 2,
            note: "in front of rd-gate".into(),
        })
        .await
        .unwrap();

    let mut patrol_stream = stream(&patrol, 0).await;
    let mut hq_stream = stream(&hq, 0).await;
    let mut canary_stream = stream(&canary_unit, 0).await;
    let mut gate = ReaderClient::connect("127.0.0.1", svc.mqtt_port(), "rd-gate", &secret)
        .await
        .unwrap();

    // The canary, then a stolen bike, in one batch from a reader inside the patrol zone.
    gate.publish(vec![
        sighting(CANARY, 4, -40),
        later(sighting(STOLEN, 2, -60), 1),
    ])
    .await
    .unwrap();
    let seen = next_alert(&mut canary_stream).await;
    assert_eq!(
        (seen.kind(), seen.tag_id.as_str(), seen.reader_id.as_str()),
        (AlertKind::CanarySeen, CANARY, "rd-gate")
    );
    assert_eq!((seen.priority, seen.incident_id.as_str()), (0, ""));
    // The patrol and the command center get the stolen bike, and not the canary (the next
    // alert on each stream is the stolen bike's).
    assert_eq!(next_alert(&mut patrol_stream).await.tag_id, STOLEN);
    assert_eq!(next_alert(&mut hq_stream).await.tag_id, STOLEN);

    // Then the canary falls silent: after its 2 s, command centers hear of it, once.
    let missed = next_alert(&mut hq_stream).await;
    assert_eq!(
        (
            missed.kind(),
            missed.tag_id.as_str(),
            missed.reader_id.as_str()
        ),
        (AlertKind::CanaryMissed, CANARY, "rd-gate")
    );
    assert!(
        !missed.incident_id.is_empty(),
        "a miss is a matter to act on"
    );
    let sample = format!("greenplate_canary_misses_total{{tag=\"{CANARY}\"}}");
    assert_eq!(svc.metric(&sample).await, 1.0);
    assert_eq!(svc.metric("greenplate_canaries_overdue").await, 1.0);
    let listed = admin
        .list_canaries(ListCanariesRequest {})
        .await
        .unwrap()
        .into_inner()
        .canaries;
    assert_eq!(listed.len(), 1);
    let c = &listed[0];
    assert_eq!(
        (
            c.tag_id.as_str(),
            c.expected_every_s,
            c.note.as_str(),
            c.last_reader_id.as_str(),
            c.overdue
        ),
        (CANARY, 2, "in front of rd-gate", "rd-gate", true)
    );
    assert_eq!(c.last_seen_ms, seen.seen_at_ms);

    // Seen again: no longer overdue, and a canary unit hears of it.
    gate.publish(vec![later(sighting(CANARY, 4, -40), 2)])
        .await
        .unwrap();
    assert_eq!(
        next_alert(&mut canary_stream).await.kind(),
        AlertKind::CanarySeen
    );
    eventually(
        "the canary no longer overdue",
        std::time::Duration::from_secs(10),
        || async {
            match svc.metric("greenplate_canaries_overdue").await {
                0.0 => Ok(()),
                n => Err(n),
            }
        },
    )
    .await;
    assert_eq!(svc.metric(&sample).await, 1.0, "one miss, counted once");
    svc.stop().await;
}
