//! Unsealed reader formats end to end: readers provisioned as json, impinj and zebra publish
//! their own JSON through the embedded broker; each sighting of a stolen bike alerts, a
//! broken payload is counted by reason, and without the operator's consent the embedded
//! broker refuses unsealed formats.

use crate::support;

use greenplate_proto::topics;
use greenplate_proto::v1::{AddReaderRequest, AlertKind};
use greenplate_simulator::reader::{ReaderClient, now_ms};
use support::{TestService, later, next_alert, register_stolen, stream};

const TAG: &str = "E28011606000000000000E01";

fn rfc3339(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

fn json_payload(reader: &str, seq: u64, at: i64) -> String {
    format!(
        r#"{{"reader_id":"{reader}","seq":{seq},"sent_at_ms":{at},"sightings":[{{"tag_id":"{TAG}","first_seen_ms":{at},"last_seen_ms":{at},"read_count":2,"peak_rssi_dbm":-50}}]}}"#
    )
}

fn impinj_payload(at: i64) -> String {
    format!(
        r#"{{"timestamp":"{t}","hostname":"impinj-14-1f-23","eventType":"tagInventory","tagInventoryEvent":{{"epcHex":"{TAG}","antennaPort":1,"peakRssiCdbm":-5350,"lastSeenTime":"{t}"}}}}
{{"timestamp":"{t}","hostname":"impinj-14-1f-23","eventType":"inventoryStatus","inventoryStatusEvent":{{"status":"running"}}}}"#,
        t = rfc3339(at)
    )
}

fn zebra_payload(at: i64) -> String {
    format!(
        r#"[{{"data":{{"eventNum":1,"format":"epc","idHex":"{}","antenna":1,"peakRssi":-52,"reads":3}},"timestamp":"{}","type":"SIMPLE"}}]"#,
        TAG.to_lowercase(),
        rfc3339(at)
    )
}

async fn add(svc: &TestService, id: &str, format: &str, lon: f64) -> String {
    svc.admin()
        .await
        .add_reader(AddReaderRequest {
            reader_id: id.into(),
            name: id.into(),
            lat: 23.30,
            lon,
            format: format.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .secret
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_unsealed_format_alerts_when_the_operator_allows_it() {
    let svc = TestService::start_configured(|c| {
        c.ingest.unsealed_on_embedded_broker = true;
        c.alerting.clone_speed_kmh = 1e9;
    })
    .await;
    let readers = [
        (
            "rd-json",
            "json",
            add(&svc, "rd-json", "json", 116.60).await,
        ),
        (
            "rd-impinj",
            "impinj",
            add(&svc, "rd-impinj", "impinj", 116.61).await,
        ),
        (
            "rd-zebra",
            "zebra",
            add(&svc, "rd-zebra", "zebra", 116.62).await,
        ),
    ];
    let bad = svc
        .admin()
        .await
        .add_reader(AddReaderRequest {
            reader_id: "rd-bad".into(),
            name: "bad".into(),
            lat: 23.3,
            lon: 116.6,
            format: "xml".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    let hq = svc.add_unit("hq", &[], true).await;
    let mut alerts = stream(&hq, 0).await;
    register_stolen(&svc, TAG, "粤D7E001").await;

    for (id, format, secret) in &readers {
        let r = ReaderClient::connect("127.0.0.1", svc.mqtt_port(), id, secret)
            .await
            .unwrap();
        let at = now_ms();
        let payload = match *format {
            "json" => json_payload(id, 1, at),
            "impinj" => impinj_payload(at),
            _ => zebra_payload(at),
        };
        r.publish_raw(&topics::sightings(id), payload.into_bytes())
            .await
            .unwrap();
        let a = next_alert(&mut alerts).await;
        assert_eq!(
            (a.kind(), a.reader_id.as_str(), a.tag_id.as_str()),
            (AlertKind::StolenSighted, *id, TAG)
        );
        // A broken payload is dropped and counted by its reason.
        r.publish_raw(&topics::sightings(id), b"{\"rea".to_vec())
            .await
            .unwrap();
        r.disconnect().await;
    }
    svc.wait_metric(
        "greenplate_ingest_batches_rejected_total{reason=\"malformed_json\"}",
        3.0,
    )
    .await;

    // greenplate JSON keeps its seq: a replay is dropped; the next seq is taken.
    let (id, _, secret) = &readers[0];
    let r = ReaderClient::connect("127.0.0.1", svc.mqtt_port(), id, secret)
        .await
        .unwrap();
    let at = later(greenplate_simulator::reader::sighting(TAG, 1, -50), 1).first_seen_ms;
    r.publish_raw(&topics::sightings(id), json_payload(id, 1, at).into_bytes())
        .await
        .unwrap();
    svc.wait_metric(
        "greenplate_ingest_batches_rejected_total{reason=\"replay\"}",
        1.0,
    )
    .await;
    r.publish_raw(&topics::sightings(id), json_payload(id, 2, at).into_bytes())
        .await
        .unwrap();
    let a = next_alert(&mut alerts).await;
    assert_eq!(a.reader_id, "rd-json", "{a:?}");
    r.disconnect().await;
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_broker_refuses_unsealed_formats_by_default() {
    let svc = TestService::start().await;
    let secret = add(&svc, "rd-json", "json", 116.6).await;
    let r = ReaderClient::connect("127.0.0.1", svc.mqtt_port(), "rd-json", &secret)
        .await
        .unwrap();
    r.publish_raw(
        &topics::sightings("rd-json"),
        json_payload("rd-json", 1, now_ms()).into_bytes(),
    )
    .await
    .unwrap();
    svc.wait_metric(
        "greenplate_ingest_batches_rejected_total{reason=\"unsealed_not_allowed\"}",
        1.0,
    )
    .await;
    assert_eq!(
        svc.metric("greenplate_ingest_batches_accepted_total").await,
        0.0
    );
    r.disconnect().await;
    svc.stop().await;
}
