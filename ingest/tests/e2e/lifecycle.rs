//! One node's life as an operator sees it, through the real binary: SIGTERM drains (open
//! passes stored, patrol streams ended cleanly, exit 0), and after SIGKILL a restart on the
//! same data directory recovers everything that was acknowledged (registry, hotlist,
//! incidents, the alert log).

use crate::support;

use std::path::Path;
use std::time::Duration;

use greenplate_proto::v1::patrol_client::PatrolClient;
use greenplate_proto::v1::{
    GetBikeRequest, GetTrackRequest, ReportStolenRequest, StreamAlertsRequest, get_bike_request,
    get_track_request::Subject,
};
use greenplate_simulator::clients::{self, Authed};
use greenplate_simulator::reader::{ReaderClient, sighting};
use support::node::Node;
use support::{ADMIN_TOKEN, bike, later, new_kiosk_token, new_reader, new_unit_token, next_alert};
use tonic::transport::Channel;

const TAG: &str = "E28011606000000000000A71";
const PLATE: &str = "粤D7A071";

/// A reader, a command-center unit, and a stolen bike; returns the reader's secret and the
/// unit's token.
async fn provision(node: &Node) -> (String, String) {
    let ch = node.channel().await;
    let secret = new_reader(ch.clone(), "rd-1", 23.3, 116.6).await;
    let unit = new_unit_token(ch.clone(), "hq", &[], true).await;
    let kiosk = new_kiosk_token(ch.clone(), "k-1").await;
    register_stolen_at(ch, &kiosk).await;
    (secret, unit)
}

async fn register_stolen_at(ch: Channel, kiosk: &str) {
    let mut registry = clients::registry(ch, kiosk).unwrap();
    registry.register_bike(bike(TAG, PLATE)).await.unwrap();
    registry
        .report_stolen(ReportStolenRequest {
            plate: PLATE.into(),
            ..Default::default()
        })
        .await
        .unwrap();
}

async fn patrol(node: &Node, token: &str) -> PatrolClient<Authed> {
    clients::patrol(node.channel().await, token).unwrap()
}

/// A provisioned node whose unit has had one alert.
struct Alerted {
    node: Node,
    secret: String,
    unit: String,
    stream: tonic::Streaming<greenplate_proto::v1::Alert>,
    reader: ReaderClient,
    alert: greenplate_proto::v1::Alert,
}

/// Starts a node on `dir`, provisions it, and has the reader sight the stolen bike
/// (`reads` reads) until the unit's stream gets the alert.
async fn alerted(dir: &Path, reads: u32) -> Alerted {
    let node = Node::start(dir).await;
    let (secret, unit) = provision(&node).await;
    let mut stream = patrol(&node, &unit)
        .await
        .stream_alerts(StreamAlertsRequest { resume_after: 0 })
        .await
        .unwrap()
        .into_inner();
    let mut reader = ReaderClient::connect("127.0.0.1", node.mqtt.port(), "rd-1", &secret)
        .await
        .unwrap();
    reader
        .publish(vec![sighting(TAG, reads, -50)])
        .await
        .unwrap();
    let alert = next_alert(&mut stream).await;
    Alerted {
        node,
        secret,
        unit,
        stream,
        reader,
        alert,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_open_passes_and_streams_then_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let Alerted {
        node,
        unit,
        mut stream,
        reader,
        alert,
        ..
    } = alerted(dir.path(), 3).await;
    // The pass is still open (the gap is 5 s): only a drain stores it now.
    node.signal("-TERM");
    let ended = tokio::time::timeout(Duration::from_secs(15), stream.message())
        .await
        .expect("the stream ended at shutdown");
    assert!(matches!(ended, Ok(None)), "stream ended with {ended:?}");
    let status = node.exit(Duration::from_secs(20)).await;
    assert_eq!(status.code(), Some(0));
    drop(reader);

    // Back up: the pass that was open at SIGTERM is in the history; the alert in the log.
    let node = Node::start(dir.path()).await;
    let track = patrol(&node, ADMIN_TOKEN)
        .await
        .get_track(GetTrackRequest {
            subject: Some(Subject::Plate(PLATE.into())),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(track.points.len(), 1, "{track:?}");
    assert_eq!(track.points[0].reads, 3);
    let mut replay = patrol(&node, &unit)
        .await
        .stream_alerts(StreamAlertsRequest { resume_after: 0 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next_alert(&mut replay).await.alert_id, alert.alert_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_sigkill_a_restart_recovers_what_was_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let Alerted {
        node,
        secret,
        unit,
        reader,
        alert: first,
        ..
    } = alerted(dir.path(), 2).await;
    node.signal("-KILL");
    let status = node.exit(Duration::from_secs(10)).await;
    assert_eq!(status.code(), None, "killed by a signal");
    drop(reader);

    let node = Node::start(dir.path()).await;
    // The registry and the hotlist: the bike is still stolen...
    let kiosk_channel = node.channel().await;
    let kiosk = new_kiosk_token(kiosk_channel.clone(), "k-2").await;
    let shown = clients::registry(kiosk_channel, &kiosk)
        .unwrap()
        .get_bike(GetBikeRequest {
            key: Some(get_bike_request::Key::Plate(PLATE.into())),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(shown.stolen);
    // ...the alert log replays what the unit had (same seq, same alert)...
    let mut stream = patrol(&node, &unit)
        .await
        .stream_alerts(StreamAlertsRequest { resume_after: 0 })
        .await
        .unwrap()
        .into_inner();
    let replayed = next_alert(&mut stream).await;
    assert_eq!(
        (replayed.seq, &replayed.alert_id),
        (first.seq, &first.alert_id)
    );
    // ...and the next sighting is an update of the same open incident (hot index and
    // incidents recovered).
    let mut reader = ReaderClient::connect("127.0.0.1", node.mqtt.port(), "rd-1", &secret)
        .await
        .unwrap();
    reader
        .publish(vec![later(sighting(TAG, 1, -50), 1)])
        .await
        .unwrap();
    let next = next_alert(&mut stream).await;
    assert!(next.seq > first.seq);
    assert_eq!(next.incident_id, first.incident_id);
    reader.disconnect().await;
}
