//! The police hit workflow (issue #17), end to end through MQTT and gRPC.
//!
//! Look-back: a theft reported hours late searches the pass history from the theft to the
//! report; its incident lists every pass found, and the latest goes out as
//! `STOLEN_SIGHTED_EARLIER` to the units whose zones hold its reader.

use crate::support;

use greenplate_proto::v1::{
    AddZoneRequest, AlertKind, GetIncidentRequest, GetTrackRequest, ReportStolenRequest, ZoneKind,
    get_incident_request, get_track_request,
};
use greenplate_simulator::reader::{ReaderClient, now_ms, sighting};
use support::{TestService, bike, next_alert, stream};
use tonic::Code;

const TAG: &str = "E28011606000000000000C11";
const PLATE: &str = "粤D7C011";
const UNTRACKED_TAG: &str = "E28011606000000000000C12";
const UNTRACKED_PLATE: &str = "粤D7C012";
const HOUR_MS: i64 = 3_600_000;

fn config(c: &mut greenplate_ingest::Config) {
    c.ingest.pass_gap_ms = 400;
    c.alerting.clone_speed_kmh = 1e9;
}

fn by_plate(plate: &str) -> GetIncidentRequest {
    GetIncidentRequest {
        key: Some(get_incident_request::Key::Plate(plate.into())),
        reason: "case 2026-117".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_theft_reported_late_alerts_where_the_bike_was_seen_since() {
    look_back(TestService::start_configured(config).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (GREENPLATE_TEST_PG)"]
async fn a_theft_reported_late_alerts_where_the_bike_was_seen_since_on_postgres() {
    look_back(TestService::start_postgres_configured(config).await).await;
}

async fn look_back(svc: TestService) {
    let mut admin = svc.admin().await;
    admin
        .add_zone(AddZoneRequest {
            zone_id: "east".into(),
            name: "East".into(),
            geojson: r#"{"type":"Polygon","coordinates":[[[116.59,23.29],[116.605,23.29],[116.605,23.305],[116.59,23.305],[116.59,23.29]]]}"#.into(),
            kind: ZoneKind::Patrol as i32,
        })
        .await
        .unwrap();
    // rd-a is inside "east"; rd-b and rd-c are not.
    let readers = [
        ("rd-b", 23.35, 116.65),
        ("rd-c", 23.36, 116.66),
        ("rd-a", 23.30, 116.60),
    ];
    let mut secrets = Vec::new();
    for (id, lat, lon) in readers {
        secrets.push(svc.add_reader(id, lat, lon).await);
    }
    let mut hq = svc.add_unit("hq", &[], true).await;
    let mut east = svc.add_unit("u-east", &["east"], false).await;
    let mut elsewhere = svc.add_unit("u-else", &[], false).await;
    let mut hq_alerts = stream(&hq, 0).await;
    let mut east_alerts = stream(&east, 0).await;

    // The bike is registered, not yet missed: three passes (rd-b, rd-c, then rd-a) alert
    // nobody and reach the history.
    let mut kiosk = svc.add_kiosk("k-police").await;
    kiosk.register_bike(bike(TAG, PLATE)).await.unwrap();
    kiosk
        .register_bike(bike(UNTRACKED_TAG, UNTRACKED_PLATE))
        .await
        .unwrap();
    let first_pass_at = now_ms();
    let port = svc.mqtt_port();
    for ((id, _, _), secret) in readers.iter().zip(&secrets) {
        let mut r = ReaderClient::connect("127.0.0.1", port, id, secret)
            .await
            .unwrap();
        r.publish(vec![sighting(TAG, 2, -50)]).await.unwrap();
        r.disconnect().await;
    }
    svc.wait_metric("greenplate_history_passes_stored_total", 3.0)
        .await;
    let track = hq
        .get_track(GetTrackRequest {
            subject: Some(get_track_request::Subject::Plate(PLATE.into())),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(track.points.len(), 3);
    let latest = track.points.last().unwrap().clone();
    assert_eq!(latest.reader_id, "rd-a");

    // Reported two hours after it was taken (two hours before the first pass).
    let report = kiosk
        .report_stolen(ReportStolenRequest {
            plate: PLATE.into(),
            stolen_at_ms: first_pass_at - 2 * HOUR_MS,
            place: "和平路口".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!report.already_open);

    // The latest pass goes to the command center and to the zone holding its reader.
    let alert = next_alert(&mut hq_alerts).await;
    assert_eq!(alert.kind(), AlertKind::StolenSightedEarlier);
    assert_eq!((alert.plate.as_str(), alert.tag_id.as_str()), (PLATE, TAG));
    assert_eq!(alert.reader_id, "rd-a");
    assert_eq!((alert.lat, alert.lon), (23.30, 116.60));
    assert_eq!(alert.seen_at_ms, latest.last_seen_ms);
    assert!(!alert.incident_id.is_empty());
    assert_eq!(next_alert(&mut east_alerts).await.seq, alert.seq);

    // The incident lists the three passes, oldest first, after its opening and look-back.
    let detail = hq.get_incident(by_plate(PLATE)).await.unwrap().into_inner();
    let incident = detail.incident.unwrap();
    assert_eq!(incident.incident_id, alert.incident_id);
    assert_eq!(incident.kind(), AlertKind::StolenSighted);
    assert_eq!(incident.plate, PLATE);
    let actions: Vec<_> = detail.events.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions,
        [
            "open",
            "look_back",
            "sighted_earlier",
            "sighted_earlier",
            "sighted_earlier"
        ]
    );
    let passes: Vec<_> = detail
        .events
        .iter()
        .filter_map(|e| e.pass.clone())
        .collect();
    assert_eq!(passes, track.points);
    // The zone unit was sent its alert and may read it; a unit that was not may not.
    let by_id = GetIncidentRequest {
        key: Some(get_incident_request::Key::IncidentId(
            alert.incident_id.clone(),
        )),
        reason: String::new(),
    };
    assert_eq!(
        east.get_incident(by_id.clone())
            .await
            .unwrap()
            .into_inner()
            .events
            .len(),
        5
    );
    let refused = elsewhere.get_incident(by_id).await.unwrap_err();
    assert_eq!(refused.code(), Code::NotFound);
    assert_eq!(
        svc.metric("greenplate_alerting_lookbacks_total{result=\"sighted\"}")
            .await,
        1.0
    );

    // Seen again after the report: a live alert, in the same incident.
    let mut b = ReaderClient::connect("127.0.0.1", port, "rd-b", &secrets[0])
        .await
        .unwrap();
    b.publish(vec![sighting(TAG, 1, -60)]).await.unwrap();
    let live = next_alert(&mut hq_alerts).await;
    assert_eq!(live.kind(), AlertKind::StolenSighted);
    assert_eq!(live.incident_id, alert.incident_id);
    b.disconnect().await;

    // A bike with no track (bulk-imported, never seen): an incident with no sightings.
    kiosk
        .report_stolen(ReportStolenRequest {
            plate: UNTRACKED_PLATE.into(),
            stolen_at_ms: now_ms() - 2 * HOUR_MS,
            ..Default::default()
        })
        .await
        .unwrap();
    svc.wait_metric(
        "greenplate_alerting_lookbacks_total{result=\"no_track\"}",
        1.0,
    )
    .await;
    let detail = hq
        .get_incident(by_plate(UNTRACKED_PLATE))
        .await
        .unwrap()
        .into_inner();
    let actions: Vec<_> = detail.events.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["open", "look_back"]);
    assert!(
        detail.events[1].note.ends_with(": 0"),
        "{}",
        detail.events[1].note
    );
    // Each lookup is audited as the caller's.
    let audit = svc.audit_log().await;
    assert!(
        audit
            .iter()
            .any(|e| e.action == "get_incident" && e.subject.contains(PLATE)),
        "{audit:?}"
    );
    svc.stop().await;
}
