//! Reader status end to end: a reader's sealed ONLINE status and last will through the
//! embedded broker, silence detection, READER_OFFLINE to command centers only, and the
//! reader list operators see; secret rotation and disabling.

use crate::support;

use std::time::{Duration, Instant};

use greenplate_proto::seal::ReaderKey;
use greenplate_proto::topics;
use greenplate_proto::v1::{
    AcknowledgeIncidentRequest, AddZoneRequest, AlertKind, IncidentState, ListAuditRequest,
    ListReadersRequest, Outcome, ReaderInfo, ReaderState, ReaderStatus, ResolveIncidentRequest,
    RotateReaderSecretRequest, SetReaderEnabledRequest, SightingBatch, ZoneKind,
};
use greenplate_registry::testing::eventually;
use greenplate_simulator::reader::{ReaderClient, now_ms, sighting};
use prost::Message;
use support::{TestService, next_alert, register_stolen, stream};

/// A patrol zone around every reader of these tests.
const ALL: &str = r#"{"type":"Polygon","coordinates":[[[116.3,23.1],[116.8,23.1],[116.8,23.5],[116.3,23.5],[116.3,23.1]]]}"#;

async fn add_zone_all(svc: &TestService) {
    svc.admin()
        .await
        .add_zone(AddZoneRequest {
            zone_id: "all".into(),
            name: "All".into(),
            geojson: ALL.into(),
            kind: ZoneKind::Patrol as i32,
        })
        .await
        .unwrap();
}

async fn reader_info(svc: &TestService, id: &str) -> ReaderInfo {
    svc.admin()
        .await
        .list_readers(ListReadersRequest {})
        .await
        .unwrap()
        .into_inner()
        .readers
        .into_iter()
        .find(|r| r.reader_id == id)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wills_and_silence_raise_reader_offline_for_command_centers() {
    let svc = TestService::start_configured(|c| c.ingest.reader_offline_after_s = 1).await;
    add_zone_all(&svc).await;
    let secret_1 = svc.add_reader("rd-1", 23.30, 116.60).await;
    let secret_2 = svc.add_reader("rd-2", 23.31, 116.61).await;
    let hq = svc.add_unit("hq", &[], true).await;
    let zone_unit = svc.add_unit("u-zone", &["all"], false).await;
    let mut hq_alerts = stream(&hq, 0).await;
    let mut zone_alerts = stream(&zone_unit, 0).await;
    let port = svc.mqtt_port();

    // Connecting publishes a sealed ONLINE status.
    let r1 = ReaderClient::connect("127.0.0.1", port, "rd-1", &secret_1)
        .await
        .unwrap();
    let r2 = ReaderClient::connect("127.0.0.1", port, "rd-2", &secret_2)
        .await
        .unwrap();
    svc.wait_metric("greenplate_ingest_reader_statuses_accepted_total", 2.0)
        .await;
    let info = reader_info(&svc, "rd-1").await;
    assert!(info.online && info.enabled, "{info:?}");
    assert!(info.firmware.starts_with("greenplate-simulator"));
    assert!(info.last_status_ms > 0);

    // rd-1 loses power: its will says so at once. rd-2 stays connected but silent.
    r1.kill();
    svc.wait_metric("greenplate_ingest_reader_wills_total", 1.0)
        .await;
    let mut offline = Vec::new();
    while offline.len() < 2 {
        let a = next_alert(&mut hq_alerts).await;
        assert_eq!(a.kind(), AlertKind::ReaderOffline, "{a:?}");
        assert!(a.plate.is_empty() && a.tag_id.is_empty());
        if !offline.contains(&a.reader_id) {
            offline.push(a.reader_id);
        }
    }
    offline.sort();
    assert_eq!(offline, ["rd-1", "rd-2"]);
    assert!(!reader_info(&svc, "rd-1").await.online);
    assert!(!reader_info(&svc, "rd-2").await.online);

    // A replayed will (anyone subscribed to # could have recorded one) changes nothing, and
    // neither does a forged status.
    let key = ReaderKey::derive(&secret_2);
    let replay = ReaderStatus {
        reader_id: "rd-2".into(),
        state: ReaderState::Offline as i32,
        session: "0123456789abcdef0123".into(),
        at_ms: now_ms(),
        firmware: String::new(),
    };
    r2.publish_raw(
        &topics::status("rd-2"),
        key.seal_status(&replay).encode_to_vec(),
    )
    .await
    .unwrap();
    svc.wait_metric(
        "greenplate_ingest_batches_rejected_total{reason=\"stale_status\"}",
        1.0,
    )
    .await;
    let forged = ReaderKey::derive("not the secret").seal_status(&replay);
    r2.publish_raw(&topics::status("rd-2"), forged.encode_to_vec())
        .await
        .unwrap();
    svc.wait_metric(
        "greenplate_ingest_batches_rejected_total{reason=\"unsealed\"}",
        1.0,
    )
    .await;
    assert_eq!(
        svc.metric("greenplate_ingest_reader_wills_total").await,
        1.0
    );

    // rd-1 comes back and reports: online again.
    let mut r1 = ReaderClient::connect("127.0.0.1", port, "rd-1", &secret_1)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        r1.publish(vec![]).await.unwrap();
        if reader_info(&svc, "rd-1").await.online {
            break;
        }
        assert!(Instant::now() < deadline, "rd-1 never came back online");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Patrol units are not sent reader alerts: the zone unit's first alert is a theft.
    register_stolen(&svc, "E28011606000000000000C01", "粤D7C001").await;
    r1.publish(vec![sighting("E28011606000000000000C01", 1, -50)])
        .await
        .unwrap();
    let first = next_alert(&mut zone_alerts).await;
    assert_eq!(first.kind(), AlertKind::StolenSighted, "{first:?}");
    r1.disconnect().await;
    r2.disconnect().await;
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_center_acknowledges_and_resolves_a_silent_readers_incident() {
    let svc = TestService::start_configured(|c| c.ingest.reader_offline_after_s = 1).await;
    add_zone_all(&svc).await;
    let secret = svc.add_reader("rd-quiet", 23.30, 116.60).await;
    let hq = svc.add_unit("hq", &[], true).await;
    let zone_unit = svc.add_unit("u-zone", &["all"], false).await;
    let mut hq_alerts = stream(&hq, 0).await;

    // Heard from once, then silent (a clean disconnect: no will).
    let r = ReaderClient::connect("127.0.0.1", svc.mqtt_port(), "rd-quiet", &secret)
        .await
        .unwrap();
    svc.wait_metric("greenplate_ingest_reader_statuses_accepted_total", 1.0)
        .await;
    r.disconnect().await;
    let alert = next_alert(&mut hq_alerts).await;
    assert_eq!(alert.kind(), AlertKind::ReaderOffline, "{alert:?}");
    assert_eq!(alert.reader_id, "rd-quiet");
    let incident = alert.incident_id.clone();

    // A zone unit was not sent it: for it the incident does not exist.
    let refused = zone_unit
        .clone()
        .acknowledge_incident(AcknowledgeIncidentRequest {
            incident_id: incident.clone(),
            note: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::NotFound, "{refused:?}");

    // The command center takes it on, then closes it.
    let acked = hq
        .clone()
        .acknowledge_incident(AcknowledgeIncidentRequest {
            incident_id: incident.clone(),
            note: "technician on the way".into(),
        })
        .await
        .unwrap_or_else(|e| panic!("AcknowledgeIncident of a reader-offline incident: {e}"))
        .into_inner();
    assert_eq!(acked.incident_id, incident);
    assert_eq!(acked.kind(), AlertKind::ReaderOffline);
    assert_eq!(acked.state(), IncidentState::Acknowledged);
    assert_eq!(acked.acknowledged_by, "patrol:hq");
    assert_eq!(acked.plate, "", "a reader's incident has no bike");
    let resolved = hq
        .clone()
        .resolve_incident(ResolveIncidentRequest {
            incident_id: incident.clone(),
            outcome: Outcome::FalseAlarm as i32,
            note: "power restored".into(),
        })
        .await
        .unwrap_or_else(|e| panic!("ResolveIncident of a reader-offline incident: {e}"))
        .into_inner();
    assert_eq!(resolved.state(), IncidentState::Resolved);
    assert_eq!(resolved.outcome(), Outcome::FalseAlarm);
    assert_eq!(resolved.resolved_by, "patrol:hq");
    assert_eq!(resolved.note, "power restored");
    let again = hq
        .clone()
        .resolve_incident(ResolveIncidentRequest {
            incident_id: incident,
            outcome: Outcome::FalseAlarm as i32,
            note: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(again.code(), tonic::Code::FailedPrecondition, "{again:?}");
    svc.stop().await;
}

/// Keeps a reader heard from (an empty batch every 100 ms) until [`Heartbeat::stop`].
struct Heartbeat {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<ReaderClient>,
}

impl Heartbeat {
    fn start(mut reader: ReaderClient) -> Self {
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tokio::select! {
                    _ = tick.tick() => reader.publish(vec![]).await.unwrap(),
                    _ = &mut stopped => return reader,
                };
            }
        });
        Self { stop, task }
    }

    /// Stops beating; the reader was last heard from now.
    async fn stop(self) -> ReaderClient {
        let _ = self.stop.send(());
        self.task.await.unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silence_alerts_once_until_heard_from_again_and_disabled_readers_are_not_watched() {
    let svc = TestService::start_configured(|c| c.ingest.reader_offline_after_s = 2).await;
    let mut admin = svc.admin().await;
    // Disabled at once, long before its silence (counted from the start) reaches 2 s.
    svc.add_reader("rd-off", 23.32, 116.62).await;
    admin
        .set_reader_enabled(SetReaderEnabledRequest {
            reader_id: "rd-off".into(),
            enabled: false,
        })
        .await
        .unwrap();
    let quiet_secret = svc.add_reader("rd-quiet", 23.30, 116.60).await;
    // Named to sort after rd-off: the watch goes through readers by id.
    let control_secret = svc.add_reader("rd-x-control", 23.31, 116.61).await;
    let hq = svc.add_unit("hq", &[], true).await;
    let mut alerts = stream(&hq, 0).await;
    let port = svc.mqtt_port();
    let quiet = ReaderClient::connect("127.0.0.1", port, "rd-quiet", &quiet_secret)
        .await
        .unwrap();
    let control = ReaderClient::connect("127.0.0.1", port, "rd-x-control", &control_secret)
        .await
        .unwrap();
    let beat = Heartbeat::start(control);
    svc.wait_metric("greenplate_ingest_reader_statuses_accepted_total", 2.0)
        .await;

    // rd-quiet goes silent (a clean disconnect: no will). Its alert is the first one: had
    // the disabled rd-off been watched, silent since the start, its alert would be first.
    quiet.disconnect().await;
    let first = next_alert(&mut alerts).await;
    assert_eq!(
        (first.kind(), first.reader_id.as_str()),
        (AlertKind::ReaderOffline, "rd-quiet"),
        "{first:?}"
    );

    // Still silent: no second alert. The control reader goes silent now; its alert comes
    // 2 s later, several rounds of the watch in which rd-quiet stayed silent, and it must be
    // the next alert.
    let control = beat.stop().await;
    control.disconnect().await;
    let next = next_alert(&mut alerts).await;
    assert_eq!(
        (next.kind(), next.reader_id.as_str()),
        (AlertKind::ReaderOffline, "rd-x-control"),
        "rd-quiet alerted twice while silent (or rd-off was watched): {next:?}"
    );
    assert!(!reader_info(&svc, "rd-quiet").await.online);

    // Heard from again, then silent again: a new alert, an update of the incident still open.
    let quiet = ReaderClient::connect("127.0.0.1", port, "rd-quiet", &quiet_secret)
        .await
        .unwrap();
    eventually("rd-quiet back online", Duration::from_secs(10), || async {
        let info = reader_info(&svc, "rd-quiet").await;
        if info.online { Ok(()) } else { Err(info) }
    })
    .await;
    quiet.disconnect().await;
    let again = next_alert(&mut alerts).await;
    assert_eq!(
        (again.kind(), again.reader_id.as_str()),
        (AlertKind::ReaderOffline, "rd-quiet"),
        "{again:?}"
    );
    assert!(again.seq > next.seq);
    assert_eq!(again.incident_id, first.incident_id);

    // The disabled reader was never reported, nor shown online.
    let off = reader_info(&svc, "rd-off").await;
    assert!(!off.enabled && !off.online, "{off:?}");
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_rotate_with_a_grace_period_and_disabled_readers_are_refused() {
    let svc = TestService::start().await;
    let old_secret = svc.add_reader("rd-r", 23.30, 116.60).await;
    let port = svc.mqtt_port();
    let mut admin = svc.admin().await;
    let accepted = "greenplate_ingest_batches_accepted_total";
    let mut r = ReaderClient::connect("127.0.0.1", port, "rd-r", &old_secret)
        .await
        .unwrap();
    r.publish(vec![]).await.unwrap();
    svc.wait_metric(accepted, 1.0).await;

    // Rotate with a minute's grace: the old connection's batches still open.
    let new_secret = admin
        .rotate_reader_secret(RotateReaderSecretRequest {
            reader_id: "rd-r".into(),
            grace_s: 60,
        })
        .await
        .unwrap()
        .into_inner()
        .secret;
    assert_ne!(new_secret, old_secret);
    r.publish(vec![]).await.unwrap();
    svc.wait_metric(accepted, 2.0).await;
    r.disconnect().await;
    // ...and during the grace the old secret still logs in, and its batches open.
    let mut r = ReaderClient::connect("127.0.0.1", port, "rd-r", &old_secret)
        .await
        .expect("the old secret logs in during its grace period");
    r.publish(vec![]).await.unwrap();
    svc.wait_metric(accepted, 3.0).await;
    r.disconnect().await;
    let mut r = ReaderClient::connect("127.0.0.1", port, "rd-r", &new_secret)
        .await
        .unwrap();
    r.publish(vec![]).await.unwrap();
    svc.wait_metric(accepted, 4.0).await;
    r.disconnect().await;

    // Rotate with no grace: the secret before is refused at once, at login and in batches.
    let newest = admin
        .rotate_reader_secret(RotateReaderSecretRequest {
            reader_id: "rd-r".into(),
            grace_s: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .secret;
    assert!(
        ReaderClient::connect("127.0.0.1", port, "rd-r", &new_secret)
            .await
            .is_err()
    );
    let mut r = ReaderClient::connect("127.0.0.1", port, "rd-r", &newest)
        .await
        .unwrap();
    r.publish(vec![]).await.unwrap();
    svc.wait_metric(accepted, 5.0).await;

    // Disabled: what the connected reader still sends is dropped, and it cannot log in again.
    admin
        .set_reader_enabled(SetReaderEnabledRequest {
            reader_id: "rd-r".into(),
            enabled: false,
        })
        .await
        .unwrap();
    r.publish(vec![]).await.unwrap();
    svc.wait_metric(
        "greenplate_ingest_batches_rejected_total{reason=\"reader_disabled\"}",
        1.0,
    )
    .await;
    assert!(!reader_info(&svc, "rd-r").await.enabled);
    r.disconnect().await;
    assert!(
        ReaderClient::connect("127.0.0.1", port, "rd-r", &newest)
            .await
            .is_err()
    );
    admin
        .set_reader_enabled(SetReaderEnabledRequest {
            reader_id: "rd-r".into(),
            enabled: true,
        })
        .await
        .unwrap();
    let mut r = ReaderClient::connect("127.0.0.1", port, "rd-r", &newest)
        .await
        .unwrap();
    r.publish(vec![]).await.unwrap();
    svc.wait_metric(accepted, 6.0).await;

    // Rotate with two seconds' grace: the old secret works at first, then no longer, for
    // logins and for sealing batches.
    let last = admin
        .rotate_reader_secret(RotateReaderSecretRequest {
            reader_id: "rd-r".into(),
            grace_s: 2,
        })
        .await
        .unwrap()
        .into_inner()
        .secret;
    r.disconnect().await;
    let mut r = ReaderClient::connect("127.0.0.1", port, "rd-r", &newest)
        .await
        .expect("the old secret logs in during its grace");
    r.publish(vec![]).await.unwrap();
    svc.wait_metric(accepted, 7.0).await;
    r.disconnect().await;
    eventually(
        "the old secret refused once its grace ended",
        Duration::from_secs(10),
        || async {
            match ReaderClient::connect("127.0.0.1", port, "rd-r", &newest).await {
                Ok(still) => {
                    still.disconnect().await;
                    Err("still accepted")
                }
                Err(_) => Ok(()),
            }
        },
    )
    .await;
    let mut r = ReaderClient::connect("127.0.0.1", port, "rd-r", &last)
        .await
        .unwrap();
    let sealed_with_old = ReaderKey::derive(&newest).seal(&SightingBatch {
        reader_id: "rd-r".into(),
        seq: 1,
        sent_at_ms: now_ms(),
        sightings: vec![],
    });
    r.publish_raw(&topics::sightings("rd-r"), sealed_with_old.encode_to_vec())
        .await
        .unwrap();
    svc.wait_metric(
        "greenplate_ingest_batches_rejected_total{reason=\"unsealed\"}",
        1.0,
    )
    .await;
    r.publish(vec![]).await.unwrap();
    svc.wait_metric(accepted, 8.0).await;
    assert_eq!(svc.metric(accepted).await, 8.0);
    r.disconnect().await;

    // The grace is at most 7 days.
    let too_long = admin
        .rotate_reader_secret(RotateReaderSecretRequest {
            reader_id: "rd-r".into(),
            grace_s: 7 * 24 * 3600 + 1,
        })
        .await
        .unwrap_err();
    assert_eq!(
        too_long.code(),
        tonic::Code::InvalidArgument,
        "{too_long:?}"
    );
    assert!(too_long.message().contains("grace_s"), "{too_long:?}");
    let week = admin
        .rotate_reader_secret(RotateReaderSecretRequest {
            reader_id: "rd-r".into(),
            grace_s: 7 * 24 * 3600,
        })
        .await
        .unwrap()
        .into_inner()
        .secret;
    let r = ReaderClient::connect("127.0.0.1", port, "rd-r", &last)
        .await
        .expect("the old secret logs in during a 7-day grace");
    r.disconnect().await;

    // Every change is in the audit log; no secret is.
    let audit = admin
        .list_audit(ListAuditRequest::default())
        .await
        .unwrap()
        .into_inner()
        .entries;
    let actions: Vec<_> = audit.iter().map(|e| e.action.as_str()).collect();
    for a in ["rotate_reader_secret", "disable_reader", "enable_reader"] {
        assert!(actions.contains(&a), "{actions:?}");
    }
    for secret in [&old_secret, &new_secret, &newest, &last, &week] {
        assert!(audit.iter().all(|e| !e.subject.contains(secret.as_str())));
    }
    let missing = admin
        .set_reader_enabled(SetReaderEnabledRequest {
            reader_id: "rd-none".into(),
            enabled: false,
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
    svc.stop().await;
}

/// A rotation's grace is kept in memory only: a restart ends it, however long it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_ends_the_grace_period() {
    let svc = TestService::start().await;
    let old = svc.add_reader("rd-g", 23.30, 116.60).await;
    let new = svc
        .admin()
        .await
        .rotate_reader_secret(RotateReaderSecretRequest {
            reader_id: "rd-g".into(),
            grace_s: 24 * 3600,
        })
        .await
        .unwrap()
        .into_inner()
        .secret;
    ReaderClient::connect("127.0.0.1", svc.mqtt_port(), "rd-g", &old)
        .await
        .expect("the old secret logs in during its day of grace")
        .disconnect()
        .await;
    let dir = svc.stop().await;

    let svc = TestService::start_in(dir).await;
    let port = svc.mqtt_port();
    assert!(
        ReaderClient::connect("127.0.0.1", port, "rd-g", &old)
            .await
            .is_err(),
        "the old secret still logs in after a restart"
    );
    let mut r = ReaderClient::connect("127.0.0.1", port, "rd-g", &new)
        .await
        .unwrap();
    r.publish(vec![]).await.unwrap();
    svc.wait_metric("greenplate_ingest_batches_accepted_total", 1.0)
        .await;
    r.disconnect().await;
    svc.stop().await;
}

/// Statuses taken or refused for their clock. (`status_time` is written once first
/// counted: absent is 0. The test below refuses one first, so a misspelt name fails there.)
async fn statuses_handled(svc: &TestService) -> f64 {
    svc.metric("greenplate_ingest_reader_statuses_accepted_total")
        .await
        + svc
            .metric_or_zero("greenplate_ingest_batches_rejected_total{reason=\"status_time\"}")
            .await
}

/// A bare MQTT connection as `reader` (no status of its own at connect, unlike
/// [`ReaderClient`]), to publish hand-made statuses on its own topic.
async fn bare_connection(svc: &TestService, reader: &str, secret: &str) -> rumqttc::AsyncClient {
    let mut opts = rumqttc::MqttOptions::new(reader, "127.0.0.1", svc.mqtt_port());
    opts.set_credentials(reader, greenplate_proto::seal::login_password(secret));
    let (client, mut events) = rumqttc::AsyncClient::new(opts, 16);
    tokio::spawn(async move { while events.poll().await.is_ok() {} });
    client
}

/// Publishes a sealed ONLINE status of `reader` stamped `at_ms` on `via` (a connection as
/// that reader), and waits until ingest handled it.
async fn publish_status(
    svc: &TestService,
    via: &rumqttc::AsyncClient,
    reader: &str,
    secret: &str,
    at_ms: i64,
    firmware: &str,
) {
    let before = statuses_handled(svc).await;
    let status = ReaderStatus {
        reader_id: reader.into(),
        state: ReaderState::Online as i32,
        session: "clock-skew-session-0001".into(),
        at_ms,
        firmware: firmware.into(),
    };
    via.publish(
        topics::status(reader),
        rumqttc::QoS::AtLeastOnce,
        false,
        ReaderKey::derive(secret)
            .seal_status(&status)
            .encode_to_vec(),
    )
    .await
    .unwrap();
    eventually("the status handled", Duration::from_secs(10), || async {
        let now = statuses_handled(svc).await;
        if now > before { Ok(()) } else { Err(now) }
    })
    .await;
}

/// A reader's ONLINE status is taken only if its clock is within `ingest.max_clock_skew_ms`
/// of the server's, past or future: configured to a minute, 55 s either way is taken and
/// 65 s is refused (`status_time`); at the default (24 hours) 65 s is fine and a day and a
/// minute is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statuses_are_taken_within_the_clock_skew_window() {
    const S: i64 = 1000;
    for (skew_ms, cases) in [
        (
            Some(60 * S),
            // (offset from now, taken), in an order where each taken one is the newest yet.
            vec![
                (-65 * S, false),
                (-55 * S, true),
                (65 * S, false),
                (55 * S, true),
            ],
        ),
        (
            None,
            vec![
                (-(24 * 3600 + 60) * S, false),
                (-65 * S, true),
                ((24 * 3600 + 60) * S, false),
                // The future bound is 2 minutes by default (ingest.max_future_skew_ms).
                (125 * S, false),
                (65 * S, true),
            ],
        ),
    ] {
        let svc = TestService::start_configured(|c| {
            // The service's own future bound (tests otherwise allow a day ahead).
            c.ingest.max_future_skew_ms =
                greenplate_ingest::pipeline::config::IngestConfig::default().max_future_skew_ms;
            if let Some(ms) = skew_ms {
                c.ingest.max_clock_skew_ms = ms;
            }
        })
        .await;
        let secret = svc.add_reader("rd-clock", 23.31, 116.61).await;
        let via = bare_connection(&svc, "rd-clock", &secret).await;
        // A first status, older than every case taken below and within the window, so the
        // counts below start from 1.
        let first = if skew_ms.is_some() { -58 * S } else { -70 * S };
        publish_status(
            &svc,
            &via,
            "rd-clock",
            &secret,
            now_ms() + first,
            "fw-start",
        )
        .await;
        svc.wait_metric("greenplate_ingest_reader_statuses_accepted_total", 1.0)
            .await;
        let mut taken = 0.0;
        let mut refused = 0.0;
        for (i, (offset, ok)) in cases.iter().enumerate() {
            let firmware = format!("fw-{i}");
            publish_status(
                &svc,
                &via,
                "rd-clock",
                &secret,
                now_ms() + offset,
                &firmware,
            )
            .await;
            let info = reader_info(&svc, "rd-clock").await;
            if *ok {
                taken += 1.0;
                assert_eq!(
                    info.firmware, firmware,
                    "skew {skew_ms:?}, offset {offset} ms"
                );
            } else {
                refused += 1.0;
                assert_ne!(
                    info.firmware, firmware,
                    "skew {skew_ms:?}, offset {offset} ms"
                );
            }
            assert_eq!(
                svc.metric("greenplate_ingest_reader_statuses_accepted_total")
                    .await,
                1.0 + taken,
                "skew {skew_ms:?}, offset {offset} ms"
            );
            assert_eq!(
                svc.metric_or_zero(
                    "greenplate_ingest_batches_rejected_total{reason=\"status_time\"}"
                )
                .await,
                refused,
                "skew {skew_ms:?}, offset {offset} ms"
            );
        }
        let _ = via.disconnect().await;
        svc.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_reader_is_held_to_its_budget_without_disturbing_others() {
    let svc = TestService::start_configured(|c| {
        c.ingest.reader_messages_per_s = 5.0;
        c.ingest.reader_messages_burst = 20.0;
    })
    .await;
    let flood_secret = svc.add_reader("rd-flood", 23.30, 116.60).await;
    let calm_secret = svc.add_reader("rd-calm", 23.35, 116.65).await;
    let hq = svc.add_unit("hq", &[], true).await;
    let mut alerts = stream(&hq, 0).await;
    register_stolen(&svc, "E28011606000000000000C02", "粤D7C002").await;
    let port = svc.mqtt_port();
    let mut flood = ReaderClient::connect("127.0.0.1", port, "rd-flood", &flood_secret)
        .await
        .unwrap();
    let mut calm = ReaderClient::connect("127.0.0.1", port, "rd-calm", &calm_secret)
        .await
        .unwrap();
    for _ in 0..300 {
        flood.publish(vec![]).await.unwrap();
    }
    svc.wait_metric(
        "greenplate_ingest_batches_rejected_total{reason=\"flood\"}",
        200.0,
    )
    .await;
    // The calm reader's sighting still alerts.
    calm.publish(vec![sighting("E28011606000000000000C02", 1, -50)])
        .await
        .unwrap();
    let a = next_alert(&mut alerts).await;
    assert_eq!(a.reader_id, "rd-calm");
    let flood_info = reader_info(&svc, "rd-flood").await;
    // The burst (20, less its ONLINE status) and what the rate refilled meanwhile.
    assert!(flood_info.batches_accepted < 100, "{flood_info:?}");
    assert!(flood_info.batches_accepted >= 10, "{flood_info:?}");
    flood.disconnect().await;
    calm.disconnect().await;
    svc.stop().await;
}
