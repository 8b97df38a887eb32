//! `simulator town`: provisions a small town, reports a bike stolen, rides it past the
//! readers among honest traffic, and prints the alerts the patrol units received and how fast.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use greenplate_proto::v1::{AlertKind, ReportStolenRequest, StreamAlertsRequest};
use greenplate_simulator::clients;
use greenplate_simulator::reader::{ReaderClient, now_ms, sighting};
use greenplate_simulator::town::{self, TownSpec};
use rand::{Rng, SeedableRng};
use tokio::sync::Mutex;

use crate::args::admin_token;

#[derive(clap::Args)]
pub struct TownArgs {
    /// greenplate gRPC URL.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    grpc: String,
    /// greenplate MQTT broker, HOST:PORT.
    #[arg(long, default_value = "127.0.0.1:1883")]
    mqtt: String,
    /// Admin token (or use --admin-token-file).
    #[arg(long, env = "GREENPLATE_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// File holding the admin token (the service writes <data-dir>/admin-token).
    #[arg(long, default_value = "greenplate-data/admin-token")]
    admin_token_file: PathBuf,
    /// Readers, on a grid over the town.
    #[arg(long, default_value_t = 16)]
    readers: usize,
    /// Registered bikes.
    #[arg(long, default_value_t = 200)]
    bikes: usize,
    /// Sightings per reader batch.
    #[arg(long, default_value_t = 5)]
    batch: usize,
    /// Each reader publishes a batch this often, milliseconds.
    #[arg(long, default_value_t = 500)]
    interval_ms: u64,
    /// How long to drive traffic, seconds.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// How fast the thief rides from reader to reader, km/h (above the server's clone
    /// speed, 150 by default, the thief's tag also looks cloned).
    #[arg(long, default_value_t = 60.0)]
    thief_kmh: f64,
}

/// Great-circle distance, km (the same formula the server's clone rule uses).
fn distance_km(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    let (p1, p2) = (lat1.to_radians(), lat2.to_radians());
    let a = ((p2 - p1) / 2.0).sin().powi(2)
        + p1.cos() * p2.cos() * ((lon2 - lon1).to_radians() / 2.0).sin().powi(2);
    2.0 * 6371.0088 * a.sqrt().asin()
}

#[derive(Default)]
struct Tally {
    /// (unit, reader) -> stolen sightings published that the unit should hear about.
    expected: HashMap<String, u64>,
    received: HashMap<String, u64>,
    duplicates: u64,
    /// reader -> when the stolen bike's sighting was published there (Unix ms).
    published_at: HashMap<String, i64>,
    /// Alerts of other kinds (e.g. a clone suspicion when the thief rides too fast).
    other_kinds: HashMap<String, u64>,
    latencies_ms: Vec<i64>,
}

pub async fn run(args: TownArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.readers >= 1, "--readers must be at least 1");
    anyhow::ensure!(args.bikes >= 2, "--bikes must be at least 2");
    let admin_token = admin_token(args.admin_token, &args.admin_token_file)?;
    let (host, port) = args
        .mqtt
        .rsplit_once(':')
        .context("--mqtt must be HOST:PORT")?;
    let port: u16 = port.parse().context("--mqtt port")?;
    let channel = clients::channel(&args.grpc)
        .await
        .with_context(|| format!("connecting to {}", args.grpc))?;

    let prefix = format!("t{}-", now_ms() / 1000 % 1_000_000);
    let started = Instant::now();
    let town = town::provision(
        channel.clone(),
        &admin_token,
        &TownSpec {
            prefix: prefix.clone(),
            readers: args.readers,
            bikes: args.bikes,
        },
    )
    .await?;
    println!(
        "Provisioned town {prefix}: {} readers, {} patrol units, {} bikes in {:.1?}.",
        town.readers.len(),
        town.units.len(),
        town.bikes.len(),
        started.elapsed()
    );

    let tally = Arc::new(Mutex::new(Tally::default()));
    for unit in &town.units {
        let mut stream = clients::patrol(channel.clone(), &unit.token)?
            .stream_alerts(StreamAlertsRequest { resume_after: 0 })
            .await?
            .into_inner();
        let tally = tally.clone();
        let unit_id = unit.id.clone();
        tokio::spawn(async move {
            let mut last_seq = 0;
            while let Ok(Some(alert)) = stream.message().await {
                let mut t = tally.lock().await;
                let latency = t
                    .published_at
                    .get(&alert.reader_id)
                    .map_or(-1, |at| now_ms() - at);
                println!(
                    "ALERT to {unit_id}: stolen bike {} (tag {}) seen by {} at ({:.4}, {:.4}), incident {}, seq {}, {latency} ms after publish",
                    alert.plate,
                    alert.tag_id,
                    alert.reader_id,
                    alert.lat,
                    alert.lon,
                    alert.incident_id,
                    alert.seq
                );
                if alert.seq <= last_seq {
                    t.duplicates += 1;
                }
                last_seq = last_seq.max(alert.seq);
                match alert.kind() {
                    AlertKind::StolenSighted | AlertKind::WatchZone => {
                        *t.received.entry(unit_id.clone()).or_default() += 1;
                        t.latencies_ms.push(latency);
                    }
                    other => {
                        *t.other_kinds
                            .entry(other.as_str_name().to_owned())
                            .or_default() += 1;
                    }
                }
            }
        });
    }

    let mut readers = Vec::with_capacity(town.readers.len());
    for r in &town.readers {
        readers.push(
            ReaderClient::connect(host, port, &r.id, &r.secret)
                .await
                .with_context(|| format!("reader {} connecting to {}", r.id, args.mqtt))?,
        );
    }
    println!("{} readers connected to {}.", readers.len(), args.mqtt);

    let stolen = town.bikes[0].clone();
    clients::registry(channel.clone(), &town.kiosk_token)?
        .report_stolen(ReportStolenRequest {
            plate: stolen.plate.clone(),
            place: "Simulated street".into(),
            ..Default::default()
        })
        .await?;
    println!(
        "Reported {} stolen; riding it past the readers.",
        stolen.plate
    );

    let interval = Duration::from_millis(args.interval_ms.max(10));
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let (mut batches, mut sightings) = (0u64, 0u64);
    let mut tick = tokio::time::interval(interval);
    let mut rng = rand::rngs::StdRng::from_os_rng();
    // The thief rides along the readers in order at --thief-kmh.
    let mut thief_reader = 0usize;
    let mut thief_due = Instant::now();
    while Instant::now() < deadline {
        tick.tick().await;
        let thief_at = Instant::now() >= thief_due;
        if thief_at && readers.len() > 1 {
            let (a, b) = (
                &town.readers[thief_reader],
                &town.readers[(thief_reader + 1) % readers.len()],
            );
            let hours = distance_km(a.lat, a.lon, b.lat, b.lon) / args.thief_kmh.max(1.0);
            thief_due = Instant::now() + Duration::from_secs_f64(hours * 3600.0);
        }
        let readers_len = readers.len();
        for (i, reader) in readers.iter_mut().enumerate() {
            // Bike 0 is the stolen one; the others are honest traffic that stays in its own
            // neighbourhood (bike k near reader k mod readers), so no honest bike appears
            // to jump across town (which the clone rule would rightly flag).
            let locals = (1..town.bikes.len())
                .filter(|k| k % readers_len == i)
                .collect::<Vec<_>>();
            let mut batch: Vec<_> = (0..args.batch)
                .filter_map(|_| {
                    let k = *locals.get(rng.random_range(0..locals.len().max(1)))?;
                    let b = &town.bikes[k];
                    Some(sighting(
                        &b.tag_id,
                        rng.random_range(1..8),
                        -rng.random_range(40..75),
                    ))
                })
                .collect();
            if thief_at && i == thief_reader {
                batch.push(sighting(&stolen.tag_id, 4, -45));
                let r = &town.readers[i];
                let mut t = tally.lock().await;
                if let Some(unit) = town.unit_covering(r.lon) {
                    *t.expected.entry(unit.id.clone()).or_default() += 1;
                }
                t.published_at.insert(r.id.clone(), now_ms());
            }
            sightings += batch.len() as u64;
            reader.publish(batch).await?;
            batches += 1;
        }
        if thief_at {
            thief_reader = (thief_reader + 1) % readers.len();
        }
    }

    // Give the last alerts a moment to arrive, then report.
    let settle = Instant::now() + Duration::from_secs(3);
    loop {
        let t = tally.lock().await;
        let done = t
            .expected
            .iter()
            .all(|(u, n)| t.received.get(u).copied().unwrap_or(0) >= *n);
        drop(t);
        if done || Instant::now() > settle {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut t = tally.lock().await;
    t.latencies_ms.sort_unstable();
    let pct = |p: f64| {
        t.latencies_ms
            .get(((t.latencies_ms.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or(0)
    };
    let expected: u64 = t.expected.values().sum();
    let received: u64 = t.received.values().sum();
    println!(
        "\nSummary: {batches} batches, {sightings} sightings published in {}s.",
        args.seconds
    );
    println!(
        "Alerts: expected {expected}, received {received}, lost {}, duplicated {}; latency publish->patrol p50 {} ms, max {} ms.",
        expected.saturating_sub(received),
        t.duplicates,
        pct(0.5),
        pct(1.0)
    );
    for (kind, n) in &t.other_kinds {
        println!("Also {n} alerts of kind {kind}.");
    }
    for r in readers {
        r.disconnect().await;
    }
    Ok(())
}
