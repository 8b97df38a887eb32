//! Alert latency with many patrol streams: one stolen bike ridden past a reader again and
//! again (each sighting a new pass), while `streams` patrol streams of the unit covering the
//! reader listen. Measures, per (stream, alert), the time from the reader's publish to the
//! stream's receipt, and counts lost and duplicated alerts.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use greenplate_proto::v1::{ReportStolenRequest, StreamAlertsRequest};
use tokio::sync::Mutex;
use tonic::transport::Channel;

use crate::clients;
use crate::reader::{ReaderClient, now_ms, sighting};
use crate::town::{self, TownSpec};

/// What to run.
#[derive(Debug, Clone)]
pub struct PatrolLoadSpec {
    pub prefix: String,
    /// Concurrent StreamAlerts streams (all of the unit covering the reader).
    pub streams: usize,
    /// gRPC connections the streams are spread over.
    pub connections: usize,
    /// Alerts to produce.
    pub alerts: usize,
    /// One sighting (so one alert) this often.
    pub interval: Duration,
}

/// What it saw.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PatrolLoadReport {
    pub streams: usize,
    pub alerts_published: usize,
    pub deliveries_expected: usize,
    pub deliveries: usize,
    pub lost: usize,
    pub duplicated: usize,
    pub latency_ms_p50: f64,
    pub latency_ms_p99: f64,
    pub latency_ms_max: f64,
}

/// Provisions a one-reader town through the APIs, opens the streams, drives the sightings,
/// and reports.
pub async fn run(
    channel: Channel,
    grpc_url: &str,
    admin_token: &str,
    mqtt_host: &str,
    mqtt_port: u16,
    spec: &PatrolLoadSpec,
) -> anyhow::Result<PatrolLoadReport> {
    let town = town::provision(
        channel.clone(),
        admin_token,
        &TownSpec {
            prefix: spec.prefix.clone(),
            // A 2x2 grid: no reader sits on the border between the two patrol zones.
            readers: 4,
            bikes: 1,
        },
    )
    .await?;
    let reader = &town.readers[0];
    let unit = town
        .unit_covering(reader.lon)
        .context("no unit covers the reader")?
        .clone();
    let bike = town.bikes[0].clone();
    clients::registry(channel.clone(), &town.kiosk_token)?
        .report_stolen(ReportStolenRequest {
            plate: bike.plate.clone(),
            ..Default::default()
        })
        .await
        .context("ReportStolen")?;

    // Receipt times per alert index, per stream; the index is the alert's rank in seq order.
    let published: Arc<Mutex<Vec<Instant>>> = Arc::new(Mutex::new(Vec::new()));
    let mut streams = Vec::with_capacity(spec.streams);
    let mut channels = Vec::new();
    for _ in 0..spec.connections.max(1) {
        channels.push(clients::channel(grpc_url).await?);
    }
    for i in 0..spec.streams {
        let mut patrol = clients::patrol(channels[i % channels.len()].clone(), &unit.token)?;
        let mut stream = patrol
            .stream_alerts(StreamAlertsRequest { resume_after: 0 })
            .await
            .context("StreamAlerts")?
            .into_inner();
        let expected = spec.alerts;
        streams.push(tokio::spawn(async move {
            let mut got: Vec<(u64, Instant)> = Vec::with_capacity(expected);
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            while got.len() < expected {
                match tokio::time::timeout_at(deadline, stream.message()).await {
                    Ok(Ok(Some(a))) => got.push((a.seq, Instant::now())),
                    _ => break,
                }
            }
            got
        }));
    }

    let mut r = ReaderClient::connect(mqtt_host, mqtt_port, &reader.id, &reader.secret).await?;
    let started = now_ms();
    let mut tick = tokio::time::interval(spec.interval);
    for k in 0..spec.alerts {
        tick.tick().await;
        // Each sighting 10 s after the one before on the reader's clock: a new pass each.
        let mut s = sighting(&bike.tag_id, 2, -50);
        let shift = k as i64 * 10_000;
        s.first_seen_ms = started + shift;
        s.last_seen_ms = started + shift;
        published.lock().await.push(Instant::now());
        r.publish(vec![s]).await?;
    }

    let published = published.lock().await.clone();
    let mut latencies = Vec::with_capacity(spec.streams * spec.alerts);
    let (mut deliveries, mut duplicated) = (0, 0);
    for handle in streams {
        let got = handle.await?;
        deliveries += got.len();
        let mut last = 0;
        for (i, (seq, at)) in got.iter().enumerate() {
            if *seq <= last {
                duplicated += 1;
            }
            last = *seq;
            if let Some(p) = published.get(i) {
                latencies.push(at.saturating_duration_since(*p).as_secs_f64() * 1000.0);
            }
        }
    }
    r.disconnect().await;
    if latencies.is_empty() {
        bail!("no alert arrived");
    }
    latencies.sort_by(f64::total_cmp);
    let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p).round() as usize];
    let expected = spec.streams * spec.alerts;
    Ok(PatrolLoadReport {
        streams: spec.streams,
        alerts_published: spec.alerts,
        deliveries_expected: expected,
        deliveries,
        lost: expected.saturating_sub(deliveries),
        duplicated,
        latency_ms_p50: pct(0.50),
        latency_ms_p99: pct(0.99),
        latency_ms_max: *latencies.last().unwrap_or(&0.0),
    })
}
