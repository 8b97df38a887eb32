//! Smoothing and pass history end to end: reads published through MQTT fold into passes,
//! the rules run once per pass, closed passes are stored, and `Patrol.GetTrack` shows them
//! to the units entitled to see them.

use crate::support;

use greenplate_proto::v1::{
    AddZoneRequest, GetTrackRequest, Outcome, ResolveIncidentRequest, ZoneKind,
    get_track_request::Subject,
};
use greenplate_simulator::reader::{ReaderClient, now_ms, sighting};
use support::{TestService, bike, later, next_alert, register_stolen, stream};
use tonic::Code;

const TAG: &str = "E28011606000000000000B01";
const PLATE: &str = "粤D7B001";

fn by_plate(plate: &str) -> GetTrackRequest {
    GetTrackRequest {
        subject: Some(Subject::Plate(plate.into())),
        ..Default::default()
    }
}

fn config(c: &mut greenplate_ingest::Config) {
    c.ingest.pass_gap_ms = 400;
    c.alerting.clone_speed_kmh = 1e9;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_fold_into_passes_and_the_track_shows_them() {
    passes_and_track(TestService::start_configured(config).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (GREENPLATE_TEST_PG)"]
async fn reads_fold_into_passes_and_the_track_shows_them_on_postgres() {
    passes_and_track(TestService::start_postgres_configured(config).await).await;
}

async fn passes_and_track(svc: TestService) {
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
    let secret_a = svc.add_reader("rd-a", 23.30, 116.60).await;
    let secret_b = svc.add_reader("rd-b", 23.35, 116.65).await;
    let mut hq = svc.add_unit("hq", &[], true).await;
    let mut east = svc.add_unit("u-east", &["east"], false).await;
    let mut elsewhere = svc.add_unit("u-else", &[], false).await;
    register_stolen(&svc, TAG, PLATE).await;
    let mut hq_alerts = stream(&hq, 0).await;
    let mut east_alerts = stream(&east, 0).await;

    let port = svc.mqtt_port();
    let mut a = ReaderClient::connect("127.0.0.1", port, "rd-a", &secret_a)
        .await
        .unwrap();
    let mut b = ReaderClient::connect("127.0.0.1", port, "rd-b", &secret_b)
        .await
        .unwrap();
    // Three batches within the gap at one reader: one pass, one alert.
    for rssi in [-60, -45, -55] {
        a.publish(vec![sighting(TAG, 2, rssi)]).await.unwrap();
    }
    let first = next_alert(&mut hq_alerts).await;
    assert_eq!(first.reader_id, "rd-a");
    assert_eq!(next_alert(&mut east_alerts).await.seq, first.seq);
    svc.wait_metric("greenplate_ingest_sightings_accepted_total", 3.0)
        .await;
    // Another reader opens another pass: an update of the same incident.
    b.publish(vec![sighting(TAG, 1, -70)]).await.unwrap();
    let second = next_alert(&mut hq_alerts).await;
    assert_eq!(second.reader_id, "rd-b");
    assert_eq!(second.incident_id, first.incident_id);
    assert_eq!(
        svc.metric("greenplate_ingest_passes_opened_total").await,
        2.0
    );
    assert_eq!(svc.metric("greenplate_ingest_reads_total").await, 7.0);

    // Both passes close after the gap and reach the history.
    svc.wait_metric("greenplate_history_passes_stored_total", 2.0)
        .await;
    let track = hq.get_track(by_plate(PLATE)).await.unwrap().into_inner();
    assert_eq!(track.plate, PLATE);
    assert!(!track.truncated);
    let points: Vec<_> = track
        .points
        .iter()
        .map(|p| {
            (
                p.reader_id.as_str(),
                p.reads,
                p.peak_rssi_dbm,
                p.tag_id.as_str(),
            )
        })
        .collect();
    assert_eq!(points, [("rd-a", 6, -45, TAG), ("rd-b", 1, -70, TAG)]);
    assert_eq!((track.points[0].lat, track.points[0].lon), (23.30, 116.60));
    assert!(track.points[0].first_seen_ms <= track.points[0].last_seen_ms);
    assert!(track.points[0].first_seen_ms <= track.points[1].first_seen_ms);

    // By tag, with a limit.
    let one = hq
        .get_track(GetTrackRequest {
            subject: Some(Subject::TagId(TAG.to_lowercase())),
            limit: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((one.points.len(), one.truncated), (1, true));

    // The unit alerted about the incident may see the track; a unit that was not may not
    // (and cannot tell the bike from one that does not exist).
    assert_eq!(
        east.get_track(by_plate(PLATE))
            .await
            .unwrap()
            .into_inner()
            .points
            .len(),
        2
    );
    let denied = elsewhere.get_track(by_plate(PLATE)).await.unwrap_err();
    assert_eq!(denied.code(), Code::NotFound);
    let missing = elsewhere.get_track(by_plate("粤D9Z999")).await.unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    // Once the incident is resolved, the zone unit loses access; the command center keeps it.
    east.resolve_incident(ResolveIncidentRequest {
        incident_id: first.incident_id.clone(),
        outcome: Outcome::Recovered as i32,
        note: "found".into(),
    })
    .await
    .unwrap();
    assert_eq!(
        east.get_track(by_plate(PLATE)).await.unwrap_err().code(),
        Code::NotFound
    );
    assert_eq!(
        hq.get_track(by_plate(PLATE))
            .await
            .unwrap()
            .into_inner()
            .points
            .len(),
        2
    );
    // A bad window is the caller's error.
    let bad = hq
        .get_track(GetTrackRequest {
            from_ms: 20,
            to_ms: 10,
            ..by_plate(PLATE)
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    a.disconnect().await;
    b.disconnect().await;
    svc.stop().await;
}

/// A history store that stops writing (its table locked by another session) does not hold
/// up alerts while its queue has room; once the queue is full ingest waits (counted), and
/// when the store comes back every pass is written and every alert delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (GREENPLATE_TEST_PG)"]
async fn a_stalled_history_store_buffers_then_pushes_back_and_loses_nothing() {
    let svc = TestService::start_postgres_configured(|c| {
        c.ingest.pass_gap_ms = 200;
        c.ingest.history_queue = 10;
        c.alerting.clone_speed_kmh = 1e9;
    })
    .await;
    let secret = svc.add_reader("rd-a", 23.30, 116.60).await;
    let hq = svc.add_unit("hq", &[], true).await;
    let mut alerts = stream(&hq, 0).await;
    register_stolen(&svc, TAG, PLATE).await;
    let mut reader = ReaderClient::connect("127.0.0.1", svc.mqtt_port(), "rd-a", &secret)
        .await
        .unwrap();

    // Another session locks the history table: every history write waits.
    let db = greenplate_registry::Db::connect(svc.database_url.as_deref().unwrap())
        .await
        .unwrap();
    let mut lock = db.pool().begin().await.unwrap();
    sqlx::query("LOCK TABLE passes IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();

    // Within the queue: every sighting (a new pass each) still alerts at once.
    for k in 0..8 {
        reader
            .publish(vec![later(sighting(TAG, 1, -50), k)])
            .await
            .unwrap();
        next_alert(&mut alerts).await;
    }
    svc.wait_metric("greenplate_ingest_passes_closed_total", 8.0)
        .await;
    assert_eq!(
        svc.metric("greenplate_history_passes_stored_total").await,
        0.0
    );
    assert_eq!(
        svc.metric("greenplate_history_backpressure_total").await,
        0.0
    );

    // Past the queue: ingest waits for the store, and says so.
    for k in 8..30 {
        reader
            .publish(vec![later(sighting(TAG, 1, -50), k)])
            .await
            .unwrap();
    }
    svc.wait_metric("greenplate_history_backpressure_total", 1.0)
        .await;
    assert_eq!(
        svc.metric("greenplate_history_passes_stored_total").await,
        0.0
    );

    // The store comes back: nothing was lost.
    lock.rollback().await.unwrap();
    for _ in 8..30 {
        next_alert(&mut alerts).await;
    }
    svc.wait_metric("greenplate_history_passes_stored_total", 30.0)
        .await;
    let track = hq
        .clone()
        .get_track(GetTrackRequest {
            subject: Some(Subject::Plate(PLATE.into())),
            from_ms: 1,
            to_ms: i64::MAX / 2,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(track.points.len(), 30);
    db.close().await;
    reader.disconnect().await;
    svc.stop().await;
}

/// Passes are kept `ingest.history_retention_days`: the retention job (run at start, then
/// hourly) deletes those that ended before the cutoff, counts them in
/// `greenplate_history_passes_purged_total`, and GetTrack no longer shows them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passes_past_the_retention_are_purged_and_counted() {
    const DAY_MS: i64 = 24 * 3600 * 1000;
    const HOUR_MS: i64 = 3600 * 1000;
    // Readers' clocks may be days behind here, so old passes can be recorded at all.
    let skew = |c: &mut greenplate_ingest::Config| c.ingest.max_clock_skew_ms = 4 * DAY_MS;
    let svc = TestService::start_configured(skew).await;
    let secret = svc.add_reader("rd-old", 23.30, 116.60).await;
    let mut kiosk = svc.add_kiosk("k-old").await;
    kiosk.register_bike(bike(TAG, PLATE)).await.unwrap();
    let mut r = ReaderClient::connect("127.0.0.1", svc.mqtt_port(), "rd-old", &secret)
        .await
        .unwrap();
    let now = now_ms();
    let at = |ago_ms: i64| {
        let mut s = sighting(TAG, 1, -50);
        s.first_seen_ms = now - ago_ms - 200;
        s.last_seen_ms = now - ago_ms;
        s
    };
    // An hour either side of a 2-day cutoff, and a minute ago: three passes.
    for ago in [2 * DAY_MS + HOUR_MS, 2 * DAY_MS - HOUR_MS, 60_000] {
        r.publish(vec![at(ago)]).await.unwrap();
    }
    svc.wait_metric("greenplate_ingest_passes_opened_total", 3.0)
        .await;
    r.disconnect().await;
    // Stopping closes the open passes and stores them; at 90 days (the default) the job
    // deleted nothing.
    assert_eq!(
        svc.metric("greenplate_history_passes_purged_total").await,
        0.0
    );
    let dir = svc.stop().await;

    // Restarted keeping 2 days: the job runs at start and deletes the pass that ended
    // before the cutoff, only that one.
    let svc = TestService::start_in_configured(dir, |c| {
        skew(c);
        c.ingest.history_retention_days = 2;
    })
    .await;
    svc.wait_metric("greenplate_history_passes_purged_total", 1.0)
        .await;
    let track = svc
        .add_unit("hq", &[], true)
        .await
        .get_track(GetTrackRequest {
            subject: Some(Subject::Plate(PLATE.into())),
            from_ms: now - 10 * DAY_MS,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let ended: Vec<i64> = track.points.iter().map(|p| p.last_seen_ms).collect();
    assert_eq!(ended, [now - (2 * DAY_MS - HOUR_MS), now - 60_000]);
    assert_eq!(
        svc.metric("greenplate_history_passes_purged_total").await,
        1.0
    );
    svc.stop().await;
}
