//! The police hit workflow (issue #17), end to end through MQTT and gRPC.
//!
//! Look-back: a theft reported hours late searches the pass history from the theft to the
//! report; its incident lists every pass found, and the latest goes out as
//! `STOLEN_SIGHTED_EARLIER` to the units whose zones hold its reader.
//!
//! Watch lists: command centers watch plates and tags; hits carry the entry's priority,
//! reason and case number, covert ones reach command centers only, and entries end.

use crate::support;

use greenplate_proto::v1::{
    AddZoneRequest, AlertKind, GetIncidentRequest, GetTrackRequest, ReportStolenRequest, ZoneKind,
    get_incident_request, get_track_request,
};
use greenplate_simulator::reader::{ReaderClient, now_ms, sighting};
use std::time::Duration;
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

/// The patrol zone "east", 116.59-116.605 E by 23.29-23.305 N: rd-a and rd-a2 are inside,
/// the other readers of these tests are not.
async fn add_east_zone(svc: &TestService) {
    svc.admin()
        .await
        .add_zone(AddZoneRequest {
            zone_id: "east".into(),
            name: "East".into(),
            geojson: r#"{"type":"Polygon","coordinates":[[[116.59,23.29],[116.605,23.29],[116.605,23.305],[116.59,23.305],[116.59,23.29]]]}"#.into(),
            kind: ZoneKind::Patrol as i32,
        })
        .await
        .unwrap();
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
    add_east_zone(&svc).await;
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
    // One second apart, so the track's order is the publishing order (back to back, two
    // passes could share a first-read millisecond and then tie).
    for (i, ((id, _, _), secret)) in readers.iter().zip(&secrets).enumerate() {
        let mut r = ReaderClient::connect("127.0.0.1", port, id, secret)
            .await
            .unwrap();
        let mut s = sighting(TAG, 2, -50);
        let earlier = (readers.len() - 1 - i) as i64 * 1_000;
        s.first_seen_ms -= earlier;
        s.last_seen_ms -= earlier;
        r.publish(vec![s]).await.unwrap();
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

const W1_TAG: &str = "E28011606000000000000C21";
const W1_PLATE: &str = "粤D7C021";
/// On a watch list by tag; no bike has it.
const LOOSE_TAG: &str = "E28011606000000000000C22";
const W3_TAG: &str = "E28011606000000000000C23";
const W3_PLATE: &str = "粤D7C023";
/// A stolen bike: its alerts mark where a stream is, so "nothing came before it" is seen.
const MARK_TAG: &str = "E28011606000000000000C24";
const MARK_PLATE: &str = "粤D7C024";
/// Watched by plate before it is registered.
const LATE_TAG: &str = "E28011606000000000000C25";
const LATE_PLATE: &str = "粤D7C025";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_lists_alert_by_priority_covertly_and_until_they_end() {
    watch_lists(TestService::start_configured(config).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (GREENPLATE_TEST_PG)"]
async fn watch_lists_alert_by_priority_covertly_and_until_they_end_on_postgres() {
    watch_lists(TestService::start_postgres_configured(config).await).await;
}

async fn watch_lists(svc: TestService) {
    use greenplate_proto::v1::{
        AddWatchEntryRequest, ListWatchEntriesRequest, RemoveWatchEntryRequest,
        UpdateWatchEntryRequest, WatchPriority,
    };
    use greenplate_simulator::clients;

    add_east_zone(&svc).await;
    let mut readers = std::collections::HashMap::new();
    for (id, lat, lon) in [
        ("rd-a", 23.30, 116.60),
        ("rd-b", 23.35, 116.65),
        ("rd-c", 23.36, 116.66),
    ] {
        let secret = svc.add_reader(id, lat, lon).await;
        let client = ReaderClient::connect("127.0.0.1", svc.mqtt_port(), id, &secret)
            .await
            .unwrap();
        readers.insert(id, client);
    }
    let hq_token = support::new_unit_token(svc.channel().await, "hq", &[], true).await;
    let hq = clients::patrol(svc.channel().await, &hq_token).unwrap();
    let mut command = clients::command(svc.channel().await, &hq_token).unwrap();
    let east_token = support::new_unit_token(svc.channel().await, "u-east", &["east"], false).await;
    let east = clients::patrol(svc.channel().await, &east_token).unwrap();
    let mut hq_alerts = stream(&hq, 0).await;
    let mut east_alerts = stream(&east, 0).await;
    let mut kiosk = svc.add_kiosk("k-watch").await;
    for (tag, plate) in [(W1_TAG, W1_PLATE), (W3_TAG, W3_PLATE)] {
        kiosk.register_bike(bike(tag, plate)).await.unwrap();
    }
    support::register_stolen(&svc, MARK_TAG, MARK_PLATE).await;
    let hour = now_ms() + HOUR_MS;

    // Only command centers (and the admin) keep watch lists.
    let mut not_command = clients::command(svc.channel().await, &east_token).unwrap();
    let refused = not_command
        .list_watch_entries(ListWatchEntriesRequest::default())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    let bad = command
        .add_watch_entry(AddWatchEntryRequest {
            plate: W1_PLATE.into(),
            priority: WatchPriority::Urgent as i32,
            reason: "robbery".into(),
            expires_at_ms: now_ms() - 1,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument, "{bad:?}");

    // A plate, urgent, open: the zone's unit and the command center hear, with the reason.
    let w1 = command
        .add_watch_entry(AddWatchEntryRequest {
            plate: W1_PLATE.into(),
            priority: WatchPriority::Urgent as i32,
            reason: "used in a robbery".into(),
            case_number: "2026-88".into(),
            expires_at_ms: hour,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(w1.added_by, "patrol:hq");
    let rd_a = readers.get_mut("rd-a").unwrap();
    rd_a.publish(vec![sighting(W1_TAG, 1, -50)]).await.unwrap();
    let hit = next_alert(&mut hq_alerts).await;
    assert_eq!(hit.kind(), AlertKind::WatchListHit);
    assert_eq!(
        (hit.plate.as_str(), hit.tag_id.as_str()),
        (W1_PLATE, W1_TAG)
    );
    assert_eq!(hit.priority, 2);
    assert_eq!(
        (
            hit.watch_entry_id.as_str(),
            hit.reason.as_str(),
            hit.case_number.as_str()
        ),
        (w1.entry_id.as_str(), "used in a robbery", "2026-88")
    );
    assert_eq!(next_alert(&mut east_alerts).await.seq, hit.seq);

    // A tag no bike has, critical and covert: the command center only. The stolen bike in
    // the same batch is the next thing the zone's unit hears.
    let loose = command
        .add_watch_entry(AddWatchEntryRequest {
            tag_id: LOOSE_TAG.into(),
            priority: WatchPriority::Critical as i32,
            reason: "suspect's bike".into(),
            covert: true,
            expires_at_ms: hour,
            entry_id: "PS-2026-0091".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(loose.covert);
    rd_a.publish(vec![
        sighting(LOOSE_TAG, 1, -50),
        sighting(MARK_TAG, 1, -50),
    ])
    .await
    .unwrap();
    let covert = next_alert(&mut hq_alerts).await;
    assert_eq!(
        (covert.kind(), covert.tag_id.as_str(), covert.priority),
        (AlertKind::WatchListHit, LOOSE_TAG, 3)
    );
    assert_eq!(covert.watch_entry_id, "PS-2026-0091");
    let mark = next_alert(&mut hq_alerts).await;
    assert_eq!(mark.kind(), AlertKind::StolenSighted);
    assert_eq!(next_alert(&mut east_alerts).await.seq, mark.seq);
    // Importing the same entry again changes it; it stays one entry.
    command
        .add_watch_entry(AddWatchEntryRequest {
            tag_id: LOOSE_TAG.into(),
            priority: WatchPriority::Critical as i32,
            reason: "suspect's bike (confirmed)".into(),
            covert: true,
            expires_at_ms: hour,
            entry_id: "PS-2026-0091".into(),
            ..Default::default()
        })
        .await
        .unwrap();

    // An entry ends by itself at its expiry.
    let expires = now_ms() + 1500;
    command
        .add_watch_entry(AddWatchEntryRequest {
            plate: W3_PLATE.into(),
            priority: WatchPriority::Normal as i32,
            reason: "seen near a burglary".into(),
            expires_at_ms: expires,
            ..Default::default()
        })
        .await
        .unwrap();
    let rd_b = readers.get_mut("rd-b").unwrap();
    rd_b.publish(vec![sighting(W3_TAG, 1, -50)]).await.unwrap();
    let before = next_alert(&mut hq_alerts).await;
    assert_eq!(
        (before.kind(), before.plate.as_str(), before.priority),
        (AlertKind::WatchListHit, W3_PLATE, 1)
    );
    // Waiting for the clock, not for readiness: the entry ends at `expires`.
    let left = expires + 100 - now_ms();
    tokio::time::sleep(Duration::from_millis(left.max(0) as u64)).await;
    let rd_c = readers.get_mut("rd-c").unwrap();
    rd_c.publish(vec![sighting(W3_TAG, 1, -50), sighting(MARK_TAG, 1, -50)])
        .await
        .unwrap();
    let after = next_alert(&mut hq_alerts).await;
    assert_eq!(
        (after.kind(), after.reader_id.as_str()),
        (AlertKind::StolenSighted, "rd-c"),
        "an expired entry alerted: {after:?}"
    );
    let active = command
        .list_watch_entries(ListWatchEntriesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .entries;
    let mut ids: Vec<_> = active.iter().map(|e| e.entry_id.clone()).collect();
    ids.sort();
    let mut want = vec![w1.entry_id.clone(), "PS-2026-0091".to_owned()];
    want.sort();
    assert_eq!(ids, want);
    let all = command
        .list_watch_entries(ListWatchEntriesRequest {
            include_ended: true,
        })
        .await
        .unwrap()
        .into_inner()
        .entries;
    assert_eq!(all.len(), 3);
    let ended = all.iter().find(|e| e.plate == W3_PLATE).unwrap();
    assert_eq!(
        (ended.removed_by.as_str(), ended.removed_at_ms),
        ("expired", expires)
    );

    // Raised to critical, then removed.
    let raised = command
        .update_watch_entry(UpdateWatchEntryRequest {
            entry_id: w1.entry_id.clone(),
            priority: Some(WatchPriority::Critical as i32),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(raised.priority, WatchPriority::Critical as i32);
    assert_eq!(raised.reason, "used in a robbery");
    let rd_b = readers.get_mut("rd-b").unwrap();
    rd_b.publish(vec![sighting(W1_TAG, 1, -50)]).await.unwrap();
    let critical = next_alert(&mut hq_alerts).await;
    assert_eq!(
        (critical.kind(), critical.priority),
        (AlertKind::WatchListHit, 3)
    );
    assert_eq!(
        critical.incident_id, hit.incident_id,
        "one incident per entry"
    );
    let removed = command
        .remove_watch_entry(RemoveWatchEntryRequest {
            entry_id: w1.entry_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(removed.removed_by, "patrol:hq");
    let rd_a = readers.get_mut("rd-a").unwrap();
    rd_a.publish(vec![sighting(W1_TAG, 1, -50), sighting(MARK_TAG, 1, -50)])
        .await
        .unwrap();
    let last = next_alert(&mut hq_alerts).await;
    assert_eq!(
        (last.kind(), last.reader_id.as_str()),
        (AlertKind::StolenSighted, "rd-a"),
        "a removed entry alerted: {last:?}"
    );

    // A plate watched before its bike is registered: the bike alerts once registered.
    command
        .add_watch_entry(AddWatchEntryRequest {
            plate: LATE_PLATE.into(),
            priority: WatchPriority::Urgent as i32,
            reason: "plate named in a robbery report".into(),
            expires_at_ms: hour,
            ..Default::default()
        })
        .await
        .unwrap();
    kiosk
        .register_bike(bike(LATE_TAG, LATE_PLATE))
        .await
        .unwrap();
    let rd_b = readers.get_mut("rd-b").unwrap();
    rd_b.publish(vec![sighting(LATE_TAG, 1, -50)])
        .await
        .unwrap();
    let late = next_alert(&mut hq_alerts).await;
    assert_eq!(
        (late.kind(), late.plate.as_str()),
        (AlertKind::WatchListHit, LATE_PLATE)
    );

    // Every change and every listing is audited under the command center.
    let audit = svc.audit_log().await;
    for action in [
        "add_watch_entry",
        "change_watch_entry",
        "remove_watch_entry",
        "list_watch_entries",
    ] {
        assert!(
            audit
                .iter()
                .any(|e| e.action == action && e.actor == "patrol:hq"),
            "{action} not audited"
        );
    }
    for (_, r) in readers {
        r.disconnect().await;
    }
    svc.stop().await;
}

const IMPORT_WATCH_TAG: &str = "E28011606000000000000C31";
const IMPORT_WATCH_PLATE: &str = "粤D7C031";
const IMPORT_THEFT_TAG: &str = "E28011606000000000000C32";
const IMPORT_THEFT_PLATE: &str = "粤D7C032";

/// The police system's watch list (CSV) and theft list (JSON): each row like the single
/// call, bad rows reported by line while the others go in, and a second import of the same
/// files adds nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn police_lists_import_once_with_errors_per_row() {
    use greenplate_proto::v1::{ImportListRequest, ListFormat, ListKind};
    use greenplate_simulator::clients;

    let svc = TestService::start_configured(config).await;
    let secret = svc.add_reader("rd-a", 23.30, 116.60).await;
    let hq_token = support::new_unit_token(svc.channel().await, "hq", &[], true).await;
    let hq = clients::patrol(svc.channel().await, &hq_token).unwrap();
    let mut command = clients::command(svc.channel().await, &hq_token).unwrap();
    let mut hq_alerts = stream(&hq, 0).await;
    let mut kiosk = svc.add_kiosk("k-import").await;
    for (tag, plate) in [
        (IMPORT_WATCH_TAG, IMPORT_WATCH_PLATE),
        (IMPORT_THEFT_TAG, IMPORT_THEFT_PLATE),
    ] {
        kiosk.register_bike(bike(tag, plate)).await.unwrap();
    }
    let until = now_ms() + HOUR_MS;
    let watch_csv = format!(
        "entry_id,plate,tag_id,priority,reason,case_number,covert,expires_at_ms\n\
         PS-10,{IMPORT_WATCH_PLATE},,urgent,robbery getaway bike,2026-90,no,{until}\n\
         PS-11,,E28011606000000000000C33,3,suspect's tag,2026-91,yes,{until}\n\
         PS-12,{IMPORT_WATCH_PLATE},,9,bad priority,,no,{until}\n\
         ,{IMPORT_WATCH_PLATE},,1,no id,,no,{until}\n"
    );
    let import = |kind: ListKind, format: ListFormat, data: Vec<u8>| ImportListRequest {
        kind: kind as i32,
        format: format as i32,
        data,
    };
    for round in 0..2 {
        let r = command
            .import_list(import(
                ListKind::Watch,
                ListFormat::Csv,
                watch_csv.clone().into_bytes(),
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.rows, 4);
        let lines: Vec<u64> = r.errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, [4, 5], "{:?}", r.errors);
        assert!(r.errors[0].reason.contains("priority"), "{:?}", r.errors);
        assert!(r.errors[1].reason.contains("entry_id"), "{:?}", r.errors);
        // The first import adds both good rows; the second changes them.
        let want = if round == 0 { (2, 0) } else { (0, 2) };
        assert_eq!((r.added, r.unchanged_or_changed), want);
    }
    let theft_json = serde_json::json!([
        {"plate": IMPORT_THEFT_PLATE, "stolen_at_ms": now_ms() - HOUR_MS, "place": "东门"},
        {"plate": "粤Z0000"}
    ])
    .to_string();
    for round in 0..2 {
        let r = command
            .import_list(import(
                ListKind::Theft,
                ListFormat::Json,
                theft_json.clone().into_bytes(),
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.rows, 2);
        assert_eq!(r.errors.len(), 1, "{:?}", r.errors);
        assert_eq!(r.errors[0].line, 2);
        let want = if round == 0 { (1, 0) } else { (0, 1) };
        assert_eq!((r.added, r.unchanged_or_changed), want);
    }
    let unreadable = command
        .import_list(import(ListKind::Theft, ListFormat::Json, b"{".to_vec()))
        .await
        .unwrap_err();
    assert_eq!(unreadable.code(), Code::InvalidArgument);

    // What was imported alerts.
    let mut rd = ReaderClient::connect("127.0.0.1", svc.mqtt_port(), "rd-a", &secret)
        .await
        .unwrap();
    rd.publish(vec![
        sighting(IMPORT_WATCH_TAG, 1, -50),
        sighting(IMPORT_THEFT_TAG, 1, -50),
    ])
    .await
    .unwrap();
    let watched = next_alert(&mut hq_alerts).await;
    assert_eq!(
        (
            watched.kind(),
            watched.watch_entry_id.as_str(),
            watched.priority
        ),
        (AlertKind::WatchListHit, "PS-10", 2)
    );
    let stolen = next_alert(&mut hq_alerts).await;
    assert_eq!(
        (stolen.kind(), stolen.plate.as_str()),
        (AlertKind::StolenSighted, IMPORT_THEFT_PLATE)
    );
    let audit = svc.audit_log().await;
    for action in ["import_watch_list", "import_theft_list"] {
        assert!(
            audit
                .iter()
                .any(|e| e.action == action && e.actor == "patrol:hq"),
            "{action} not audited"
        );
    }
    rd.disconnect().await;
    svc.stop().await;
}

const HIT_TAG: &str = "E28011606000000000000C41";
const HIT_PLATE: &str = "粤D7C041";

/// The officer at the scene confirms a hit or rejects it with a reason: each verdict is in
/// the incident's history and counted; a misread goes up to the command center as
/// HIT_REJECTED, and the incident stays open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn officers_confirm_and_reject_hits_and_misreads_reach_the_command_center() {
    use greenplate_proto::v1::{ConfirmHitRequest, IncidentState, RejectHitRequest, RejectReason};

    let svc = TestService::start_configured(config).await;
    add_east_zone(&svc).await;
    let secret = svc.add_reader("rd-a", 23.30, 116.60).await;
    let hq = svc.add_unit("hq", &[], true).await;
    let mut east = svc.add_unit("u-east", &["east"], false).await;
    let mut elsewhere = svc.add_unit("u-else", &[], false).await;
    let mut hq_alerts = stream(&hq, 0).await;
    let mut east_alerts = stream(&east, 0).await;
    support::register_stolen(&svc, HIT_TAG, HIT_PLATE).await;
    let mut rd = ReaderClient::connect("127.0.0.1", svc.mqtt_port(), "rd-a", &secret)
        .await
        .unwrap();
    rd.publish(vec![sighting(HIT_TAG, 1, -50)]).await.unwrap();
    let hit = next_alert(&mut hq_alerts).await;
    assert_eq!(next_alert(&mut east_alerts).await.seq, hit.seq);
    let incident_id = hit.incident_id.clone();

    let confirmed = east
        .confirm_hit(ConfirmHitRequest {
            incident_id: incident_id.clone(),
            note: "plate matches, rider fled".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(confirmed.state(), IncidentState::Open);

    // A reason is required; a unit never sent the hit cannot judge it.
    let unspecified = east
        .reject_hit(RejectHitRequest {
            incident_id: incident_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(unspecified.code(), Code::InvalidArgument);
    let stranger = elsewhere
        .reject_hit(RejectHitRequest {
            incident_id: incident_id.clone(),
            reason: RejectReason::WrongBike as i32,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(stranger.code(), Code::NotFound);

    // A misread goes up to the command center, in the same incident, at the hit's reader.
    let rejected = east
        .reject_hit(RejectHitRequest {
            incident_id: incident_id.clone(),
            alert_id: hit.alert_id.clone(),
            reason: RejectReason::Misread as i32,
            note: "tag read off a passing scooter".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rejected.state(), IncidentState::Open);
    let raised = next_alert(&mut hq_alerts).await;
    assert_eq!(raised.kind(), AlertKind::HitRejected);
    assert_eq!(
        (
            raised.incident_id.as_str(),
            raised.reader_id.as_str(),
            raised.plate.as_str()
        ),
        (incident_id.as_str(), "rd-a", HIT_PLATE)
    );
    assert!(
        raised
            .reason
            .starts_with("misread by patrol:u-east: tag read off"),
        "{}",
        raised.reason
    );
    // A wrong bike is recorded and counted, not raised.
    east.reject_hit(RejectHitRequest {
        incident_id: incident_id.clone(),
        reason: RejectReason::WrongBike as i32,
        ..Default::default()
    })
    .await
    .unwrap();

    let detail = east
        .get_incident(GetIncidentRequest {
            key: Some(get_incident_request::Key::IncidentId(incident_id.clone())),
            reason: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let steps: Vec<_> = detail
        .events
        .iter()
        .filter(|e| e.actor == "patrol:u-east")
        .map(|e| e.action.as_str())
        .collect();
    assert_eq!(steps, ["confirm", "reject:misread", "reject:wrong_bike"]);
    let judged = |v: &str, r: &str| {
        format!("greenplate_alerting_hits_judged_total{{verdict=\"{v}\",reason=\"{r}\"}}")
    };
    assert_eq!(svc.metric(&judged("confirmed", "")).await, 1.0);
    assert_eq!(svc.metric(&judged("rejected", "misread")).await, 1.0);
    assert_eq!(svc.metric(&judged("rejected", "wrong_bike")).await, 1.0);
    // The zone's unit was not sent the command center's alert: its next is the next hit.
    let rd_b = svc.add_reader("rd-a2", 23.301, 116.601).await;
    let mut b = ReaderClient::connect("127.0.0.1", svc.mqtt_port(), "rd-a2", &rd_b)
        .await
        .unwrap();
    b.publish(vec![sighting(HIT_TAG, 1, -50)]).await.unwrap();
    let next = next_alert(&mut east_alerts).await;
    assert_eq!(
        (next.kind(), next.reader_id.as_str()),
        (AlertKind::StolenSighted, "rd-a2")
    );
    rd.disconnect().await;
    b.disconnect().await;
    svc.stop().await;
}

const ESC_TAG: &str = "E28011606000000000000C51";
const ESC_PLATE: &str = "粤D7C051";
const ACKED_TAG: &str = "E28011606000000000000C52";
const ACKED_PLATE: &str = "粤D7C052";

/// An urgent hit nobody acknowledges within the configured time is sent again, raised, to
/// the zone's unit and the command center, with a step in the incident's history; one
/// acknowledged in time is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_urgent_hit_nobody_acknowledges_is_escalated() {
    use greenplate_proto::v1::{AcknowledgeIncidentRequest, AddWatchEntryRequest, WatchPriority};
    use greenplate_simulator::clients;

    let svc = TestService::start_configured(|c| {
        config(c);
        c.alerting.escalation = vec![greenplate_ingest::config::EscalationConfig {
            kinds: vec!["WATCH_LIST_HIT".into()],
            min_priority: 2,
            after_s: 1,
        }];
    })
    .await;
    add_east_zone(&svc).await;
    let secret = svc.add_reader("rd-a", 23.30, 116.60).await;
    let hq_token = support::new_unit_token(svc.channel().await, "hq", &[], true).await;
    let hq = clients::patrol(svc.channel().await, &hq_token).unwrap();
    let mut command = clients::command(svc.channel().await, &hq_token).unwrap();
    let mut east = svc.add_unit("u-east", &["east"], false).await;
    let mut hq_alerts = stream(&hq, 0).await;
    let mut east_alerts = stream(&east, 0).await;
    let mut kiosk = svc.add_kiosk("k-esc").await;
    for (tag, plate) in [(ESC_TAG, ESC_PLATE), (ACKED_TAG, ACKED_PLATE)] {
        kiosk.register_bike(bike(tag, plate)).await.unwrap();
        command
            .add_watch_entry(AddWatchEntryRequest {
                plate: plate.into(),
                priority: WatchPriority::Urgent as i32,
                reason: "armed robbery".into(),
                expires_at_ms: now_ms() + HOUR_MS,
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let mut rd = ReaderClient::connect("127.0.0.1", svc.mqtt_port(), "rd-a", &secret)
        .await
        .unwrap();
    rd.publish(vec![sighting(ACKED_TAG, 1, -50), sighting(ESC_TAG, 1, -50)])
        .await
        .unwrap();
    let acked = next_alert(&mut east_alerts).await;
    let ignored = next_alert(&mut east_alerts).await;
    assert_eq!(
        (acked.plate.as_str(), ignored.plate.as_str()),
        (ACKED_PLATE, ESC_PLATE)
    );
    east.acknowledge_incident(AcknowledgeIncidentRequest {
        incident_id: acked.incident_id.clone(),
        note: "on my way".into(),
    })
    .await
    .unwrap();

    // About a second later, the ignored one comes again, raised, to both.
    let raised = next_alert(&mut east_alerts).await;
    assert_eq!(
        (raised.plate.as_str(), raised.escalation, raised.priority),
        (ESC_PLATE, 1, 3),
        "{raised:?}"
    );
    assert_eq!(raised.incident_id, ignored.incident_id);
    assert_eq!(raised.kind(), AlertKind::WatchListHit);
    assert_eq!(raised.reason, "armed robbery");
    let on_hq: Vec<_> = [
        next_alert(&mut hq_alerts).await,
        next_alert(&mut hq_alerts).await,
        next_alert(&mut hq_alerts).await,
    ]
    .into_iter()
    .map(|a| (a.plate, a.escalation))
    .collect();
    assert_eq!(
        on_hq,
        [
            (ACKED_PLATE.to_owned(), 0),
            (ESC_PLATE.to_owned(), 0),
            (ESC_PLATE.to_owned(), 1)
        ]
    );
    let detail = hq
        .clone()
        .get_incident(GetIncidentRequest {
            key: Some(get_incident_request::Key::IncidentId(
                ignored.incident_id.clone(),
            )),
            reason: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        detail.events.iter().any(|e| e.action == "escalate"),
        "{:?}",
        detail.events
    );
    // The acknowledged one is not escalated: past its time (waiting for the clock), the
    // next thing the zone's unit hears is the next hit.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        svc.metric("greenplate_alerting_escalations_total").await,
        1.0
    );
    let mut rd2 = {
        let s = svc.add_reader("rd-a2", 23.301, 116.601).await;
        ReaderClient::connect("127.0.0.1", svc.mqtt_port(), "rd-a2", &s)
            .await
            .unwrap()
    };
    rd2.publish(vec![sighting(ACKED_TAG, 1, -50)])
        .await
        .unwrap();
    let next = next_alert(&mut east_alerts).await;
    assert_eq!(
        (
            next.plate.as_str(),
            next.reader_id.as_str(),
            next.escalation
        ),
        (ACKED_PLATE, "rd-a2", 0)
    );
    rd.disconnect().await;
    rd2.disconnect().await;
    svc.stop().await;
}

const SUBJECT_TAG: &str = "E28011606000000000000C61";
const SUBJECT_PLATE: &str = "粤D7C061";
const RIDER_TAG: &str = "E28011606000000000000C62";
const RIDER_PLATE: &str = "粤D7C062";
const PASSER_TAG: &str = "E28011606000000000000C63";
const PASSER_PLATE: &str = "粤D7C063";
/// No bike has it.
const UNKNOWN_RIDER_TAG: &str = "E28011606000000000000C64";

/// Investigations: a stakeout of readers (named, or inside a polygon) and a companion
/// search, both through gRPC, bounded, command-center only and audited with their reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stakeouts_and_companion_searches_find_who_rode_along() {
    investigations(TestService::start_configured(config).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (GREENPLATE_TEST_PG)"]
async fn stakeouts_and_companion_searches_find_who_rode_along_on_postgres() {
    investigations(TestService::start_postgres_configured(config).await).await;
}

async fn investigations(svc: TestService) {
    use greenplate_proto::v1::{CompanionsRequest, StakeoutRequest, companions_request};
    use greenplate_simulator::clients;

    let mut kiosk = svc.add_kiosk("k-inv").await;
    for (tag, plate) in [
        (SUBJECT_TAG, SUBJECT_PLATE),
        (RIDER_TAG, RIDER_PLATE),
        (PASSER_TAG, PASSER_PLATE),
    ] {
        kiosk.register_bike(bike(tag, plate)).await.unwrap();
    }
    // The subject rides past rd-1, rd-2, rd-3 with RIDER alongside; the unknown tag rides
    // along for rd-2 and rd-3; PASSER is at rd-1 with it once, then alone at rd-4.
    let route: [(&str, f64, f64, Vec<&str>); 4] = [
        (
            "rd-1",
            23.30,
            116.60,
            vec![SUBJECT_TAG, RIDER_TAG, PASSER_TAG],
        ),
        (
            "rd-2",
            23.31,
            116.61,
            vec![SUBJECT_TAG, RIDER_TAG, UNKNOWN_RIDER_TAG],
        ),
        (
            "rd-3",
            23.32,
            116.62,
            vec![SUBJECT_TAG, RIDER_TAG, UNKNOWN_RIDER_TAG],
        ),
        ("rd-4", 23.40, 116.70, vec![PASSER_TAG]),
    ];
    let from = now_ms() - 60_000;
    let mut stored = 0.0;
    for (id, lat, lon, tags) in &route {
        let secret = svc.add_reader(id, *lat, *lon).await;
        let mut r = ReaderClient::connect("127.0.0.1", svc.mqtt_port(), id, &secret)
            .await
            .unwrap();
        r.publish(tags.iter().map(|t| sighting(t, 1, -50)).collect())
            .await
            .unwrap();
        r.disconnect().await;
        // One tag no bike has is read but makes no pass.
        stored += tags.iter().filter(|t| **t != UNKNOWN_RIDER_TAG).count() as f64;
    }
    svc.wait_metric("greenplate_history_passes_stored_total", stored)
        .await;
    let to = now_ms() + 60_000;

    let hq_token = support::new_unit_token(svc.channel().await, "hq", &[], true).await;
    let mut command = clients::command(svc.channel().await, &hq_token).unwrap();
    let plate = |p: &str| Some(companions_request::Subject::Plate(p.into()));
    let companions = |min_readers: u32| CompanionsRequest {
        subject: plate(SUBJECT_PLATE),
        from_ms: from,
        to_ms: to,
        min_readers,
        reason: "case 2026-5".into(),
        ..Default::default()
    };
    let found = command
        .companions(companions(0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(found.subject_passes, 3);
    let got: Vec<_> = found
        .companions
        .iter()
        .map(|c| (c.tag_id.as_str(), c.plate.as_str(), c.readers, c.passes))
        .collect();
    assert_eq!(got, [(RIDER_TAG, RIDER_PLATE, 3, 3)]);
    let two = command
        .companions(companions(2))
        .await
        .unwrap()
        .into_inner();
    let got: Vec<_> = two.companions.iter().map(|c| c.tag_id.as_str()).collect();
    assert_eq!(
        got,
        [RIDER_TAG],
        "a tag no bike has makes no pass to ride along with"
    );

    // Stakeout by reader, and by a polygon holding rd-1 and rd-2.
    let by_reader = command
        .stakeout(StakeoutRequest {
            reader_ids: vec!["rd-1".into()],
            from_ms: from,
            to_ms: to,
            reason: "case 2026-5".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut seen: Vec<_> = by_reader
        .passes
        .iter()
        .map(|p| (p.tag_id.as_str(), p.plate.as_str(), p.reader_id.as_str()))
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            (SUBJECT_TAG, SUBJECT_PLATE, "rd-1"),
            (RIDER_TAG, RIDER_PLATE, "rd-1"),
            (PASSER_TAG, PASSER_PLATE, "rd-1"),
        ]
    );
    assert!(!by_reader.truncated);
    let polygon = r#"{"type":"Polygon","coordinates":[[[116.595,23.295],[116.615,23.295],[116.615,23.315],[116.595,23.315],[116.595,23.295]]]}"#;
    let by_area = command
        .stakeout(StakeoutRequest {
            polygon_geojson: polygon.into(),
            from_ms: from,
            to_ms: to,
            limit: 4,
            reason: "case 2026-5".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_area.reader_ids, ["rd-1", "rd-2"]);
    assert_eq!(by_area.passes.len(), 4);
    assert!(by_area.truncated, "5 passes matched, 4 asked for");

    // Bounded, with a reason, for command centers only.
    let no_reason = command
        .stakeout(StakeoutRequest {
            reader_ids: vec!["rd-1".into()],
            from_ms: from,
            to_ms: to,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(no_reason.code(), Code::InvalidArgument);
    let too_long = command
        .companions(CompanionsRequest {
            to_ms: from + 8 * 24 * HOUR_MS,
            ..companions(3)
        })
        .await
        .unwrap_err();
    assert_eq!(too_long.code(), Code::InvalidArgument);
    let patrol_token = support::new_unit_token(svc.channel().await, "u-1", &[], false).await;
    let refused = clients::command(svc.channel().await, &patrol_token)
        .unwrap()
        .companions(companions(3))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    let audit = svc.audit_log().await;
    for action in ["stakeout", "companions"] {
        assert!(
            audit.iter().any(|e| e.action == action
                && e.actor == "patrol:hq"
                && e.subject.ends_with("; reason: case 2026-5")),
            "{action} not audited with its reason"
        );
    }
    svc.stop().await;
}

const VIDEO_TAG: &str = "E28011606000000000000C51";
const VIDEO_PLATE: &str = "粤D7C051";

/// Video linkage (雪亮工程): a reader names its cameras; its alerts, on the stream and in
/// the incident's view, carry them with the URL filled in for the sighting's moment; an
/// operator can change them, and bad templates are refused at their field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_and_incidents_carry_the_readers_cameras() {
    use greenplate_proto::v1::{
        AddReaderRequest, Camera, ListReadersRequest, SetReaderCamerasRequest, get_incident_request,
    };
    let svc = TestService::start_configured(config).await;
    let mut admin = svc.admin().await;
    let cam = |id: &str, url: &str| Camera {
        camera_id: id.into(),
        name: format!("西门 {id}"),
        url_template: url.into(),
    };
    let secret = admin
        .add_reader(AddReaderRequest {
            reader_id: "rd-v".into(),
            name: "West gate".into(),
            lat: 23.30,
            lon: 116.60,
            cameras: vec![
                cam(
                    "cam-1",
                    "https://video.example/play?c={camera_id}&from={from_s}&to={to_s}",
                ),
                cam("cam-2", ""),
            ],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .secret;
    let hq = svc.add_unit("hq", &[], true).await;
    let mut alerts = stream(&hq, 0).await;
    support::register_stolen(&svc, VIDEO_TAG, VIDEO_PLATE).await;
    let mut reader = ReaderClient::connect("127.0.0.1", svc.mqtt_port(), "rd-v", &secret)
        .await
        .unwrap();
    reader
        .publish(vec![sighting(VIDEO_TAG, 5, -48)])
        .await
        .unwrap();
    let alert = loop {
        let a = next_alert(&mut alerts).await;
        if a.plate == VIDEO_PLATE && a.kind == AlertKind::StolenSighted as i32 {
            break a;
        }
    };
    let t = alert.seen_at_ms / 1000;
    let links: Vec<(String, String, String)> = alert
        .cameras
        .iter()
        .map(|c| (c.camera_id.clone(), c.name.clone(), c.url.clone()))
        .collect();
    assert_eq!(
        links,
        [
            (
                "cam-1".to_owned(),
                "西门 cam-1".to_owned(),
                format!(
                    "https://video.example/play?c=cam-1&from={}&to={}",
                    t - 30,
                    t + 30
                )
            ),
            ("cam-2".to_owned(), "西门 cam-2".to_owned(), String::new()),
        ]
    );

    // The incident's view carries its alerts with their cameras.
    let detail = hq
        .clone()
        .get_incident(GetIncidentRequest {
            key: Some(get_incident_request::Key::IncidentId(
                alert.incident_id.clone(),
            )),
            reason: "checking on video".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let shown = detail
        .alerts
        .iter()
        .find(|a| a.seq == alert.seq)
        .expect("the incident lists its alert");
    assert_eq!(shown.cameras, alert.cameras);

    // Changed: what is delivered from now on (a replay too) carries the new cameras.
    admin
        .set_reader_cameras(SetReaderCamerasRequest {
            reader_id: "rd-v".into(),
            cameras: vec![cam("cam-9", "rtsp://10.0.0.9/live?at={iso}")],
        })
        .await
        .unwrap();
    let mut replay = stream(&hq, alert.seq - 1).await;
    let again = next_alert(&mut replay).await;
    assert_eq!(again.seq, alert.seq);
    assert_eq!(again.cameras.len(), 1);
    assert_eq!(again.cameras[0].camera_id, "cam-9");
    let iso = time::OffsetDateTime::from_unix_timestamp(t)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    assert_eq!(
        again.cameras[0].url,
        format!("rtsp://10.0.0.9/live?at={iso}")
    );
    let listed = admin
        .list_readers(ListReadersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .readers;
    let rd = listed.iter().find(|r| r.reader_id == "rd-v").unwrap();
    assert_eq!(rd.cameras, [cam("cam-9", "rtsp://10.0.0.9/live?at={iso}")]);

    // Refused at the field: an unknown placeholder, a script URL; and for the admin only.
    for bad in ["https://v.example/{time}", "javascript:alert(1)"] {
        let e = admin
            .set_reader_cameras(SetReaderCamerasRequest {
                reader_id: "rd-v".into(),
                cameras: vec![cam("cam-x", bad)],
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{bad}");
        assert!(e.message().contains("url_template"), "{}", e.message());
    }
    let token = support::new_unit_token(svc.channel().await, "u-1", &[], false).await;
    let refused = greenplate_simulator::clients::admin(svc.channel().await, &token)
        .unwrap()
        .set_reader_cameras(SetReaderCamerasRequest {
            reader_id: "rd-v".into(),
            cameras: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert!(
        svc.audit_log()
            .await
            .iter()
            .any(|e| e.action == "set_reader_cameras" && e.subject == "rd-v: [cam-9]")
    );
    reader.disconnect().await;
    svc.stop().await;
}
