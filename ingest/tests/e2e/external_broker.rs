//! Two greenplate nodes behind the machine's Mosquitto (127.0.0.1:1883, or
//! GREENPLATE_TEST_MQTT_URL) and one PostgreSQL: readers publish to the broker, the nodes
//! split the traffic through a shared subscription, and every batch is processed exactly
//! once.

use crate::support;

use std::time::Duration;

use greenplate_registry::testing::eventually;
use greenplate_simulator::reader::{ReaderClient, sighting};
use support::{SHARED_KEY, TestService, broker_url, later, register_stolen};

const TAG: &str = "E28011606000000000000D01";
const READERS: usize = 3;
const BATCHES: usize = 100;

async fn sum(nodes: &[&TestService], sample: &str) -> f64 {
    let mut total = 0.0;
    for n in nodes {
        total += n.metric(sample).await;
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Mosquitto (GREENPLATE_TEST_MQTT_URL) and PostgreSQL (GREENPLATE_TEST_PG)"]
async fn two_nodes_split_the_readers_and_process_each_batch_once() {
    // A run of its own: its share group and reader ids are unique, so other runs on the
    // same broker do not disturb it.
    let run = hex::encode(rand::random::<[u8; 4]>());
    let group = format!("gp-test-{run}");
    let (url, g) = (broker_url(), group.clone());
    let a = TestService::start_postgres_configured(move |c| {
        c.mqtt.url = Some(url.clone());
        c.mqtt.share_group = g.clone();
        c.secret_key = Some(SHARED_KEY.into());
        c.alerting.clone_speed_kmh = 1e9;
    })
    .await;
    let mut secrets = Vec::new();
    for i in 0..READERS {
        let id = format!("rd-{run}-{i}");
        let secret = a.add_reader(&id, 23.30 + i as f64 * 0.01, 116.60).await;
        secrets.push((id, secret));
    }
    register_stolen(&a, TAG, "粤D7D001").await;
    // The second node joins the same database and share group (it loads the readers and
    // the hotlist at start).
    let (url, g, db) = (broker_url(), group.clone(), a.database_url.clone());
    let b = TestService::start_configured(move |c| {
        c.mqtt.url = Some(url.clone());
        c.mqtt.share_group = g.clone();
        c.secret_key = Some(SHARED_KEY.into());
        c.database_url = db.clone();
        c.alerting.clone_speed_kmh = 1e9;
    })
    .await;
    let broker = a.service.mqtt_addr;

    let mut readers = Vec::new();
    for (id, secret) in &secrets {
        let r = ReaderClient::connect(&broker.ip().to_string(), broker.port(), id, secret)
            .await
            .unwrap();
        readers.push(r);
    }
    // Each batch: one sighting of the stolen bike, each a new pass (stamped 10 s apart), and
    // one of a tag nobody registered.
    for k in 0..BATCHES {
        for r in readers.iter_mut() {
            r.publish(vec![
                later(sighting(TAG, 2, -50), k as i64),
                sighting("E280116060000000000FFFFF", 1, -70),
            ])
            .await
            .unwrap();
        }
    }
    let total = (READERS * BATCHES) as f64;
    let nodes = [&a, &b];
    let what = format!("{total} batches accepted and alerted");
    eventually(&what, Duration::from_secs(30), || async {
        let accepted = sum(&nodes, "greenplate_ingest_batches_accepted_total").await;
        let alerted = sum(&nodes, "greenplate_alert_latency_seconds_count").await;
        if accepted >= total && alerted >= total {
            Ok(())
        } else {
            Err(format!("{accepted} accepted, {alerted} alerts"))
        }
    })
    .await;
    // Exactly once: no batch twice, none refused as a replay, one alert per pass.
    assert_eq!(
        sum(&nodes, "greenplate_ingest_batches_accepted_total").await,
        total
    );
    assert_eq!(
        sum(&nodes, "greenplate_ingest_stolen_sightings_total").await,
        total
    );
    assert_eq!(
        sum(&nodes, "greenplate_alert_latency_seconds_count").await,
        total
    );
    for n in nodes {
        // The replay label set is written only once a replay is counted, so absent is 0
        // here (formats.rs waits for this same sample to appear, so its name is right).
        assert_eq!(
            n.metric_or_zero("greenplate_ingest_batches_rejected_total{reason=\"replay\"}")
                .await,
            0.0
        );
        // Both nodes took a share.
        assert!(n.metric("greenplate_ingest_batches_accepted_total").await > 0.0);
    }
    for r in readers {
        r.disconnect().await;
    }
    b.stop().await;
    a.stop().await;
}
