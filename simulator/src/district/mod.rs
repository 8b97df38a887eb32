//! A district run: provisions readers on the road network's intersections, patrol zones
//! with a unit each and a command center through the Admin API, scenario bikes through the
//! Registry API (the district's registered bikes come from a bulk import); connects every
//! reader as its own MQTT client; moves the bikes; turns passes into sealed batches; plays
//! the scenarios; listens as every patrol unit; and reports what was offered, what the
//! server processed, and which alerts arrived, lost or duplicated, and how fast.
//!
//! Layout, a module per stage, in the order of a run:
//! - `spec`: what to run ([`DistrictSpec`], [`TrafficMode`]) and where the server is
//!   ([`Target`]).
//! - `provision`: zones, patrol units, the command center, readers, a kiosk, armed bikes.
//! - `bikes`: the tags, the scenario bikes and their flags, the traffic; thefts reported.
//! - `alerts`: what the server owes and what the patrol streams received, in a tally.
//! - `readers`: a connection and a task per reader, publishing what the drive hands it.
//! - `drive`: the loop: traffic, passes into sightings, the oracle, batches to the readers.
//! - `metrics`: what the server processed, from its `/metrics`.
//!
//! [`run`] strings them together, settles, and makes the [`Report`].

mod alerts;
mod bikes;
mod drive;
mod metrics;
mod provision;
mod readers;
mod spec;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::clients;
use crate::probe::{self, ProcSample};
use crate::report::{self, Alerts, Latency, Processed, Rates, Report, ServerUse};
use crate::roads::{RoadNetwork, RoadSpec};

use alerts::Tally;
use bikes::Bikes;
use drive::{Drive, Driven, progress_bar};
use metrics::processed;
use provision::Provisioned;
use readers::Readers;
pub use spec::{DistrictSpec, Target, TrafficMode};

/// Runs the district against a server and reports.
pub async fn run(target: &Target, spec: &DistrictSpec) -> anyhow::Result<Report> {
    anyhow::ensure!(spec.readers >= 2, "a district needs at least 2 readers");
    let scenario_tags = spec.thefts + usize::from(spec.clone);
    anyhow::ensure!(
        spec.bikes > scenario_tags,
        "{} bikes cannot hold {scenario_tags} scenario bikes",
        spec.bikes
    );
    let live = target.grpc_url.is_some();
    let p = &spec.prefix;
    let net = Arc::new(RoadNetwork::generate(&RoadSpec {
        bbox: spec.bbox,
        intersections: spec.readers * spec.intersections_per_reader.max(1),
        ..RoadSpec::chaoyang(spec.readers, spec.seed)
    }));
    let positions: Vec<(f64, f64)> = (0..spec.readers)
        .map(|k| {
            let n = net.reader_position(k);
            (n.lat, n.lon)
        })
        .collect();
    let reader_ids: Vec<String> = (0..spec.readers).map(|k| format!("{p}rd-{k:05}")).collect();
    let garbage_id = format!("{p}rd-garbage");

    // Provisioning.
    let t0 = Instant::now();
    let channel = match &target.grpc_url {
        Some(url) => Some(
            clients::channel(url)
                .await
                .with_context(|| format!("connecting to {url}"))?,
        ),
        None => None,
    };
    let Provisioned {
        units,
        command,
        secrets,
        garbage_secret,
        mut kiosk,
        armed_tags,
    } = provision::provision(
        &channel,
        target,
        spec,
        &net,
        &positions,
        &reader_ids,
        &garbage_id,
    )
    .await?;
    let unit_of_reader = |k: usize| -> Vec<String> {
        let (nx, ny) = (spec.zones.0.max(1), spec.zones.1.max(1));
        let b = net.bbox;
        let (lat, lon) = positions[k];
        let zx = (((lon - b.west) / (b.east - b.west) * nx as f64) as usize).min(nx - 1);
        let zy = (((lat - b.south) / (b.north - b.south) * ny as f64) as usize).min(ny - 1);
        let mut v = Vec::new();
        if let Some((u, _)) = units.get(zy * nx + zx) {
            v.push(u.clone());
        }
        if let Some((c, _)) = &command {
            v.push(c.clone());
        }
        v
    };

    // Bikes: the tags, the scenario bikes, the traffic.
    let mut bikes = Bikes::new(spec, &net, &positions, &armed_tags, scenario_tags);
    let provisioned_in = t0.elapsed();

    // Patrol streams: every zone unit and the command center.
    let tally = Arc::new(Mutex::new(Tally {
        prefix: p.clone(),
        ..Tally::default()
    }));
    let stream_tasks = alerts::listen(&channel, &units, &command, &tally).await?;

    // Readers: each its own connection, its own task.
    let Readers {
        counters,
        to_readers,
        reader_tasks,
        garbage_tx,
    } = readers::connect(
        target,
        spec,
        &reader_ids,
        &secrets,
        &garbage_id,
        &garbage_secret,
        &tally,
    )
    .await?;

    // Thefts: reported through the Registry API, then ridden away.
    bikes.report_thefts(&mut kiosk, spec).await?;
    bikes.set_off(&net, spec, live);

    // Drive. With several nodes, counters and CPU are summed over them.
    let more_metrics: Vec<SocketAddr> = target.more_nodes.iter().map(|n| n.0).collect();
    let more_pids: Vec<u32> = target.more_nodes.iter().map(|n| n.1).collect();
    let metrics_before = match target.metrics {
        Some(addr) => Some(probe::scrape_all(addr, &more_metrics).await?),
        None => None,
    };
    let relay_before = target
        .relay_counter
        .as_ref()
        .map(|c| c.load(Ordering::Relaxed));
    let proc_before = target
        .server_pid
        .map(|p| ProcSample::read_all(p, &more_pids))
        .transpose()?;
    let broker_before = target.broker_pid.map(ProcSample::read).transpose()?;
    let progress = spec.progress.then(|| progress_bar(spec.drive));
    let live_rate = Arc::new(Mutex::new(String::new()));
    let watcher = target.metrics.map(|addr| {
        let live_rate = live_rate.clone();
        let more_metrics = more_metrics.clone();
        tokio::spawn(async move {
            let mut last: Option<(Instant, f64)> = None;
            loop {
                if let Ok(s) = probe::scrape_all(addr, &more_metrics).await {
                    let reads = s.get("greenplate_ingest_reads_total");
                    if let Some((at, before)) = last {
                        let rate = (reads - before) / at.elapsed().as_secs_f64().max(1e-3);
                        *live_rate.lock().unwrap_or_else(|e| e.into_inner()) =
                            format!("processed {:.0} reads/s", rate);
                    }
                    last = Some((Instant::now(), reads));
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    });

    let Driven {
        started_ms,
        drive_s,
        hour0,
        hour1,
    } = drive::drive(Drive {
        spec,
        live,
        positions: &positions,
        reader_ids: &reader_ids,
        command: &command,
        unit_of_reader: &unit_of_reader,
        bikes: &mut bikes,
        to_readers: &to_readers,
        garbage_tx: &garbage_tx,
        tally: &tally,
        counters: &counters,
        progress: &progress,
        live_rate: &live_rate,
    })
    .await;
    let offered = Rates::new(
        counters.messages.load(Ordering::Relaxed),
        counters.sightings.load(Ordering::Relaxed),
        counters.reads.load(Ordering::Relaxed),
        drive_s,
    );
    let metrics_drive_end = match target.metrics {
        Some(addr) => Some(probe::scrape_all(addr, &more_metrics).await?),
        None => None,
    };
    let relay_drive_end = target
        .relay_counter
        .as_ref()
        .map(|c| c.load(Ordering::Relaxed));
    let proc_after = target
        .server_pid
        .map(|p| ProcSample::read_all(p, &more_pids))
        .transpose()?;
    let broker_after = target.broker_pid.map(ProcSample::read).transpose()?;
    let load_average = probe::load_average();
    if let Some(bar) = &progress {
        bar.set_message("settling: waiting for the last alerts and for ingest to catch up");
    }

    // Settle: until every owed alert arrived and the server has taken what was offered.
    let deadline = Instant::now() + spec.settle;
    let mut metrics_end = metrics_drive_end.clone();
    let mut relay_end = relay_drive_end;
    loop {
        let alerts_done = {
            let t = tally.lock().unwrap_or_else(|e| e.into_inner());
            t.received >= t.expected
        };
        let mut ingest_done = true;
        if let (Some(addr), Some(before)) = (target.metrics, &metrics_before) {
            let s = probe::scrape_all(addr, &more_metrics).await?;
            let taken = s.get("greenplate_ingest_sightings_accepted_total")
                - before.get("greenplate_ingest_sightings_accepted_total");
            ingest_done = taken >= offered.sightings as f64;
            metrics_end = Some(s);
        }
        if let (Some(c), Some(_)) = (&target.relay_counter, relay_before) {
            let n = c.load(Ordering::Relaxed);
            ingest_done = n >= relay_before.unwrap_or(0) + offered.messages;
            relay_end = Some(n);
        }
        if (alerts_done && ingest_done) || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if let Some(bar) = progress {
        bar.finish_and_clear();
    }
    if let Some(w) = watcher {
        w.abort();
    }

    // Readers disconnect cleanly (no last will).
    drop(to_readers);
    drop(garbage_tx);
    for t in reader_tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    for t in stream_tasks {
        t.abort();
    }

    let processed = match (&metrics_before, &metrics_drive_end, &metrics_end) {
        (Some(b), Some(d), Some(e)) => Some(processed(b, d, e, drive_s)),
        _ => match (relay_before, relay_drive_end, relay_end) {
            (Some(b), Some(d), Some(e)) => {
                // A bare subscriber counts messages; sightings and reads per message are what
                // the readers put in them.
                let per = |x: u64| x as f64 / offered.messages.max(1) as f64;
                let (m, n) = (d - b, e - b);
                Some(Processed {
                    during_drive: Rates::new(
                        m,
                        (m as f64 * per(offered.sightings)) as u64,
                        (m as f64 * per(offered.reads)) as u64,
                        drive_s,
                    ),
                    batches_total: n,
                    sightings_total: (n as f64 * per(offered.sightings)) as u64,
                    reads_total: (n as f64 * per(offered.reads)) as u64,
                    ..Processed::default()
                })
            }
            _ => None,
        },
    };
    let t = tally.lock().unwrap_or_else(|e| e.into_inner());
    if t.unexpected > 0 {
        tracing::warn!(samples = ?t.unexpected_samples, "Alerts no scenario explains.");
    }
    tracing::info!(?provisioned_in, foreign = t.foreign, "District run done.");
    Ok(Report {
        setup: spec.setup.clone(),
        started_at_ms: started_ms,
        mode: match spec.traffic {
            TrafficMode::Roads => "roads".into(),
            TrafficMode::Stress {
                sightings_per_batch,
            } => {
                format!("stress ({sightings_per_batch} sightings per reader batch)")
            }
        },
        readers: spec.readers,
        bikes: spec.bikes + armed_tags.len(),
        batch_ms: spec.batch_ms,
        drive_seconds: drive_s,
        load_average,
        offered,
        processed,
        processed_by: if target.metrics.is_some() {
            "server /metrics".into()
        } else {
            "relayed to a counting subscriber".into()
        },
        alerts: Alerts {
            expected: t.expected,
            received: t.received,
            lost: t.expected.saturating_sub(t.received),
            duplicated: t.duplicated,
            unexpected: t.unexpected,
            look_back: t.look_back,
            by_kind: t.by_kind.clone(),
            latency_ms: Latency::of(t.latencies.clone()),
            reader_offline_latency_ms: t.offline_latency,
        },
        server: match (target.server_pid, proc_before, proc_after) {
            (Some(pid), Some(b), Some(a)) => Some(ServerUse::between(pid, b, a, drive_s)),
            _ => None,
        },
        broker: match (target.broker_pid, broker_before, broker_after) {
            (Some(pid), Some(b), Some(a)) => Some(ServerUse::between(pid, b, a, drive_s)),
            _ => None,
        },
        garbage: spec.garbage.filter(|_| live).map(|_| report::Garbage {
            reader: garbage_id.clone(),
            published: counters.garbage.load(Ordering::Relaxed),
        }),
        hours: (hour0, hour1),
        publish_errors: counters.errors.load(Ordering::Relaxed),
    })
}
