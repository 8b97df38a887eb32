//! Texts to owners (issue #18) through a real HTTP server in the test standing in for the
//! SMS gateway: an armed bike that moves, a stolen bike seen, a recovery; the owner's phone
//! in the request and nowhere else; an owner over the hourly limit counted, not texted.

use crate::support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use greenplate_proto::v1::{
    AlertKind, Owner, ReportRecoveredRequest, ReportStolenRequest, SetArmedRequest,
};
use greenplate_simulator::reader::{ReaderClient, sighting};
use support::{TestService, bike, next_alert, stream};

const TOKEN: &str = "sms-gateway-token";
const ARMED: (&str, &str) = ("E28011606000000000000E01", "粤D7E001");
const STOLEN: (&str, &str) = ("E28011606000000000000E02", "粤D7E002");
const ARMED_PHONE: &str = "13712345678";
const STOLEN_PHONE: &str = "13800138000";

#[derive(Debug, Clone)]
struct Text {
    to: String,
    kind: String,
    text: String,
    id: String,
    auth: String,
    key: String,
}

async fn gateway(
    State(got): State<Arc<Mutex<Vec<Text>>>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let Ok(body) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return StatusCode::BAD_REQUEST;
    };
    let h = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let s = |k: &str| body[k].as_str().unwrap_or_default().to_owned();
    got.lock().unwrap().push(Text {
        to: s("to"),
        kind: s("kind"),
        text: s("text"),
        id: s("id"),
        auth: h("authorization"),
        key: h("idempotency-key"),
    });
    StatusCode::ACCEPTED
}

async fn wait_texts(got: &Arc<Mutex<Vec<Text>>>, kind: &str, n: usize) -> Vec<Text> {
    greenplate_registry::testing::eventually(
        &format!("{n} {kind} texts"),
        Duration::from_secs(10),
        || {
            let texts: Vec<Text> = got
                .lock()
                .unwrap()
                .iter()
                .filter(|t| t.kind == kind)
                .cloned()
                .collect();
            async move {
                if texts.len() >= n {
                    Ok(())
                } else {
                    Err(format!("{texts:?}"))
                }
            }
        },
    )
    .await;
    got.lock()
        .unwrap()
        .iter()
        .filter(|t| t.kind == kind)
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owners_are_texted_when_their_bike_moves_is_seen_or_is_recovered() {
    let got: Arc<Mutex<Vec<Text>>> = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/send", listener.local_addr().unwrap());
    let app = axum::Router::new()
        .route("/send", axum::routing::post(gateway))
        .with_state(got.clone());
    let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let svc = TestService::start_configured(move |c| {
        c.alerting.clone_speed_kmh = 1e9;
        c.ingest.pass_gap_ms = 300;
        c.sms.url = Some(url.clone());
        c.sms.token = Some(TOKEN.into());
        c.sms.max_per_owner_per_hour = 2;
    })
    .await;
    let mut secrets = Vec::new();
    for (id, lat) in [("rd-1", 23.30), ("rd-2", 23.32), ("rd-3", 23.34)] {
        secrets.push(svc.add_reader(id, lat, 116.60).await);
    }
    let hq = svc.add_unit("hq", &[], true).await;
    let mut alerts = stream(&hq, 0).await;
    let mut kiosk = svc.add_kiosk("k-1").await;
    kiosk.register_bike(bike(ARMED.0, ARMED.1)).await.unwrap();
    kiosk
        .set_armed(SetArmedRequest {
            plate: ARMED.1.into(),
            pin: "2468".into(),
            armed: true,
        })
        .await
        .unwrap();
    let mut other = bike(STOLEN.0, STOLEN.1);
    other.owner = Some(Owner {
        name: "陈伟".into(),
        id_number: "440513198001011236".into(),
        phone: STOLEN_PHONE.into(),
    });
    kiosk.register_bike(other).await.unwrap();
    kiosk
        .report_stolen(ReportStolenRequest {
            plate: STOLEN.1.into(),
            ..Default::default()
        })
        .await
        .unwrap();

    // The armed bike passes rd-1, the stolen one too.
    let mut rd1 = ReaderClient::connect("127.0.0.1", svc.mqtt_port(), "rd-1", &secrets[0])
        .await
        .unwrap();
    rd1.publish(vec![sighting(ARMED.0, 2, -50), sighting(STOLEN.0, 2, -50)])
        .await
        .unwrap();
    let moved = wait_texts(&got, "armed_moved", 1).await;
    assert_eq!(moved[0].to, ARMED_PHONE);
    assert!(moved[0].text.contains(ARMED.1), "{}", moved[0].text);
    assert!(moved[0].text.contains("经过rd-1"), "{}", moved[0].text);
    assert!(moved[0].text.contains("110"), "{}", moved[0].text);
    assert_eq!(moved[0].auth, format!("Bearer {TOKEN}"));
    assert_eq!(moved[0].key, moved[0].id);
    let seen = wait_texts(&got, "stolen_seen", 1).await;
    assert_eq!(seen[0].to, STOLEN_PHONE);
    assert!(seen[0].text.contains(STOLEN.1), "{}", seen[0].text);

    // The armed bike goes on past rd-2 and rd-3: its owner's budget is 2 an hour, so the
    // third text is counted and dropped.
    for (i, id) in [(1, "rd-2"), (2, "rd-3")] {
        let mut rd = ReaderClient::connect("127.0.0.1", svc.mqtt_port(), id, &secrets[i])
            .await
            .unwrap();
        rd.publish(vec![sighting(ARMED.0, 2, -50)]).await.unwrap();
        rd.disconnect().await;
    }
    let mut armed_alerts = 0;
    while armed_alerts < 3 {
        if next_alert(&mut alerts).await.kind == AlertKind::ArmedMoved as i32 {
            armed_alerts += 1;
        }
    }
    svc.wait_metric(
        "greenplate_owner_sms_total{kind=\"armed_moved\",result=\"rate_limited\"}",
        1.0,
    )
    .await;
    let moved = wait_texts(&got, "armed_moved", 2).await;
    assert_eq!(moved.len(), 2, "{moved:?}");
    svc.wait_metric(
        "greenplate_forward_skipped_total{target=\"greenplate-owner-sms\",reason=\"rate_limited\"}",
        1.0,
    )
    .await;

    // Recovered at the kiosk: its owner is told.
    kiosk
        .report_recovered(ReportRecoveredRequest {
            plate: STOLEN.1.into(),
            pin: "2468".into(),
        })
        .await
        .unwrap();
    let recovered = wait_texts(&got, "recovered", 1).await;
    assert_eq!(recovered[0].to, STOLEN_PHONE);
    assert!(recovered[0].text.contains("找回"), "{}", recovered[0].text);
    svc.wait_metric(
        "greenplate_owner_sms_total{kind=\"recovered\",result=\"sent\"}",
        1.0,
    )
    .await;
    // Each text once (the recovery is marked told).
    let all = got.lock().unwrap().clone();
    let mut ids: Vec<&str> = all.iter().map(|t| t.id.as_str()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), all.len(), "{all:?}");

    rd1.disconnect().await;
    svc.stop().await;
    server.abort();
}
