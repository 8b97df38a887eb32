//! A district run: provisions readers on the road network's intersections, patrol zones
//! with a unit each and a command center through the Admin API, scenario bikes through the
//! Registry API (the district's registered bikes come from a bulk import); connects every
//! reader as its own MQTT client; moves the bikes; turns passes into sealed batches; plays
//! the scenarios; listens as every patrol unit; and reports what was offered, what the
//! server processed, and which alerts arrived, lost or duplicated, and how fast.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use greenplate_proto::v1::{
    AddKioskRequest, AddPatrolUnitRequest, AddZoneRequest, AlertKind, BikeDetails, Owner,
    RegisterBikeRequest, ReportStolenRequest, SetArmedRequest, Sighting, StreamAlertsRequest,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::mpsc;

use crate::clients;
use crate::probe::{self, ProcSample, Scrape};
use crate::reader::{ReaderClient, now_ms};
use crate::report::{self, Alerts, KindCount, Latency, Processed, Rates, Report, ServerUse};
use crate::rf::{self, Read, RfSpec};
use crate::roads::{BBox, CHAOYANG, RoadNetwork, RoadSpec};
use crate::scenarios::{CloneGuard, Flags, Oracle, Rules};
use crate::town;
use crate::traffic::{Traffic, TrafficSpec};

/// How honest traffic is made.
#[derive(Debug, Clone)]
pub enum TrafficMode {
    /// Every registered bike rides the roads with the daily rhythm: what a district sees.
    Roads,
    /// Throughput: each reader reports `sightings_per_batch` of "its own" registered bikes
    /// every batch (each bike is only ever near one reader, so no honest bike looks cloned);
    /// the scenario bikes still ride the roads.
    Stress { sightings_per_batch: usize },
}

/// Where the server is.
#[derive(Debug, Clone)]
pub struct Target {
    /// gRPC URL; `None`: no greenplate at all (readers publish to a bare broker, nothing is
    /// provisioned, no scenario), for the broker-alone comparison.
    pub grpc_url: Option<String>,
    pub admin_token: String,
    pub mqtt_host: String,
    pub mqtt_port: u16,
    /// The server's HTTP address, for `/metrics`.
    pub metrics: Option<SocketAddr>,
    /// The server's pid (same machine), for CPU and memory.
    pub server_pid: Option<u32>,
    /// Publish sightings to `{prefix}{reader}/sightings` instead of greenplate's topic.
    pub topic_prefix: Option<String>,
    /// Counts messages that reached a bare subscriber (the broker-alone comparison).
    pub relay_counter: Option<Arc<AtomicU64>>,
    /// An external broker's pid (same machine), for its CPU and memory.
    pub broker_pid: Option<u32>,
}

/// What to run.
#[derive(Debug, Clone)]
pub struct DistrictSpec {
    /// A label for the report.
    pub setup: String,
    /// Prefix of every id this run provisions.
    pub prefix: String,
    /// The bulk import's run number: registered bike i has `town::tag_id(run, i)`.
    pub run: u64,
    /// Registered (imported) bikes.
    pub bikes: usize,
    pub readers: usize,
    /// The area, and intersections per reader in it.
    pub bbox: BBox,
    pub intersections_per_reader: usize,
    /// Patrol zones, columns x rows over the district.
    pub zones: (usize, usize),
    pub drive: Duration,
    /// After the drive: how long to wait for the last alerts and for ingest to catch up.
    pub settle: Duration,
    /// Each reader sends what it read every this many ms.
    pub batch_ms: u64,
    /// Most sightings in one message (more are split).
    pub batch_max: usize,
    pub traffic: TrafficMode,
    pub start_hour: f64,
    pub day_seconds: f64,
    pub rf: RfSpec,
    pub rules: Rules,
    /// Scenarios.
    pub thefts: usize,
    pub armed: usize,
    pub clone: bool,
    pub offline_reader: bool,
    /// A reader flooding garbage: messages per second, for how long.
    pub garbage: Option<(u32, Duration)>,
    pub seed: u64,
    pub progress: bool,
}

impl DistrictSpec {
    /// The district at its real size, with every scenario.
    pub fn chaoyang(prefix: String, run: u64) -> Self {
        Self {
            setup: "district".into(),
            prefix,
            run,
            bikes: 210_000,
            readers: 1000,
            bbox: CHAOYANG,
            intersections_per_reader: 4,
            zones: (4, 4),
            drive: Duration::from_secs(60),
            settle: Duration::from_secs(10),
            batch_ms: 200,
            batch_max: 200,
            traffic: TrafficMode::Roads,
            start_hour: 18.0,
            day_seconds: 86_400.0,
            rf: RfSpec::default(),
            rules: Rules::default(),
            thefts: 5,
            armed: 3,
            clone: true,
            offline_reader: true,
            garbage: Some((2000, Duration::from_secs(3))),
            seed: 1,
            progress: true,
        }
    }
}

/// A delivery the oracle says is owed: to `unit`, of `kind`, for `tag` at `reader`.
type Key = (String, i32, String, String);

#[derive(Default)]
struct Tally {
    prefix: String,
    owed: HashMap<Key, VecDeque<Instant>>,
    expected: u64,
    received: u64,
    unexpected: u64,
    unexpected_samples: Vec<String>,
    duplicated: u64,
    foreign: u64,
    by_kind: BTreeMap<String, KindCount>,
    seqs: HashMap<String, HashSet<u64>>,
    latencies: Vec<f64>,
    offline_latency: Option<f64>,
}

impl Tally {
    fn owe(&mut self, o: &Owed, at: Instant) {
        for unit in &o.units {
            self.expected += 1;
            self.by_kind.entry(kind_name(o.kind)).or_default().expected += 1;
            self.owed
                .entry((unit.clone(), o.kind, o.tag.clone(), o.reader.clone()))
                .or_default()
                .push_back(at);
        }
    }

    fn receive(&mut self, unit: &str, a: &greenplate_proto::v1::Alert) {
        if !a.reader_id.starts_with(&self.prefix) {
            self.foreign += 1;
            return;
        }
        if !self.seqs.entry(unit.to_owned()).or_default().insert(a.seq) {
            self.duplicated += 1;
            return;
        }
        let key = (
            unit.to_owned(),
            a.kind,
            a.tag_id.clone(),
            a.reader_id.clone(),
        );
        match self.owed.get_mut(&key).and_then(|q| q.pop_front()) {
            Some(at) => {
                self.received += 1;
                self.by_kind.entry(kind_name(a.kind)).or_default().received += 1;
                let ms = at.elapsed().as_secs_f64() * 1000.0;
                if a.kind == AlertKind::ReaderOffline as i32 {
                    self.offline_latency = Some(ms);
                } else {
                    self.latencies.push(ms);
                }
            }
            None => {
                self.unexpected += 1;
                if self.unexpected_samples.len() < 10 {
                    self.unexpected_samples.push(format!(
                        "{unit}: {} tag {} at {}",
                        kind_name(a.kind),
                        a.tag_id,
                        a.reader_id
                    ));
                }
            }
        }
    }
}

fn kind_name(kind: i32) -> String {
    AlertKind::try_from(kind)
        .map(|k| k.as_str_name().trim_start_matches("ALERT_KIND_").to_owned())
        .unwrap_or_else(|_| format!("KIND_{kind}"))
}

/// An alert owed once a batch is published.
#[derive(Debug, Clone)]
struct Owed {
    units: Vec<String>,
    kind: i32,
    tag: String,
    reader: String,
}

enum ToReader {
    Batch(Vec<Sighting>, Vec<Owed>),
    /// Lose power: drop the connection without DISCONNECT (the broker sends the last will).
    Kill(Vec<Owed>),
    Garbage(u32, Duration),
}

#[derive(Default)]
struct Counters {
    messages: AtomicU64,
    sightings: AtomicU64,
    reads: AtomicU64,
    errors: AtomicU64,
    garbage: AtomicU64,
}

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
    let mut units = Vec::new();
    let mut command = None;
    let mut secrets = vec![String::new(); spec.readers];
    let mut garbage_secret = String::new();
    let mut kiosk = None;
    let mut armed_tags = Vec::new();
    let channel = match &target.grpc_url {
        Some(url) => Some(
            clients::channel(url)
                .await
                .with_context(|| format!("connecting to {url}"))?,
        ),
        None => None,
    };
    if let Some(channel) = &channel {
        let mut admin = clients::admin(channel.clone(), &target.admin_token)?;
        let (nx, ny) = (spec.zones.0.max(1), spec.zones.1.max(1));
        let b = net.bbox;
        for zy in 0..ny {
            for zx in 0..nx {
                let (w, e) = (
                    b.west + (b.east - b.west) * zx as f64 / nx as f64,
                    b.west + (b.east - b.west) * (zx + 1) as f64 / nx as f64,
                );
                let (s, n) = (
                    b.south + (b.north - b.south) * zy as f64 / ny as f64,
                    b.south + (b.north - b.south) * (zy + 1) as f64 / ny as f64,
                );
                let zone_id = format!("{p}zone-{zx}-{zy}");
                admin
                    .add_zone(AddZoneRequest {
                        zone_id: zone_id.clone(),
                        name: format!("Chaoyang sector {zx}-{zy}"),
                        geojson: format!(
                            r#"{{"type":"Polygon","coordinates":[[[{w},{s}],[{e},{s}],[{e},{n}],[{w},{n}],[{w},{s}]]]}}"#
                        ),
                        ..Default::default()
                    })
                    .await
                    .with_context(|| format!("AddZone {zone_id}"))?;
                let unit_id = format!("{p}unit-{zx}-{zy}");
                let token = admin
                    .add_patrol_unit(AddPatrolUnitRequest {
                        unit_id: unit_id.clone(),
                        name: format!("Patrol {zx}-{zy}"),
                        zone_ids: vec![zone_id],
                        command_center: false,
                    })
                    .await
                    .with_context(|| format!("AddPatrolUnit {unit_id}"))?
                    .into_inner()
                    .token;
                units.push((unit_id, token));
            }
        }
        let cc = format!("{p}command");
        let token = admin
            .add_patrol_unit(AddPatrolUnitRequest {
                unit_id: cc.clone(),
                name: "Command center".into(),
                zone_ids: vec![],
                command_center: true,
            })
            .await
            .context("AddPatrolUnit (command center)")?
            .into_inner()
            .token;
        command = Some((cc, token));

        // Readers, sixteen calls at a time.
        let mut wanted: Vec<(usize, String, f64, f64)> = reader_ids
            .iter()
            .enumerate()
            .map(|(k, id)| (k, id.clone(), positions[k].0, positions[k].1))
            .collect();
        if spec.garbage.is_some() {
            wanted.push((
                usize::MAX,
                garbage_id.clone(),
                b.south + 0.001,
                b.west + 0.001,
            ));
        }
        let results: Vec<anyhow::Result<(usize, String)>> = futures::stream::iter(wanted)
            .map(|(k, id, lat, lon)| {
                let mut admin = admin.clone();
                async move {
                    let name = format!("Intersection {id}");
                    let secret = clients::add_reader(&mut admin, &id, name, lat, lon).await?;
                    Ok((k, secret))
                }
            })
            .buffer_unordered(16)
            .collect()
            .await;
        for r in results {
            let (k, secret) = r?;
            if k == usize::MAX {
                garbage_secret = secret;
            } else {
                secrets[k] = secret;
            }
        }

        let kiosk_token = admin
            .add_kiosk(AddKioskRequest {
                kiosk_id: format!("{p}kiosk"),
                name: "District kiosk".into(),
            })
            .await
            .context("AddKiosk")?
            .into_inner()
            .token;
        let mut registry = clients::registry(channel.clone(), &kiosk_token)?;
        // Armed bikes: registered here, through the Registry API, with their owner's PIN.
        let nonce = (now_ms() / 1000 % 4000) as u64;
        for j in 0..spec.armed {
            let i = 500_000 + nonce * 10 + j as u64;
            let (tag, plate) = (town::tag_id(spec.run, i), town::plate(spec.run, i));
            registry
                .register_bike(RegisterBikeRequest {
                    tag_id: tag.clone(),
                    plate: plate.clone(),
                    owner: Some(Owner {
                        name: format!("车主A{j}"),
                        id_number: town::resident_id(spec.run + 7, i),
                        phone: format!("137{:08}", i % 100_000_000),
                    }),
                    bike: Some(BikeDetails {
                        make: "Yadea".into(),
                        model: "DE2".into(),
                        color: "green".into(),
                        frame_number: format!("ARM{:04}{i:09}", spec.run),
                    }),
                    request_id: format!("{p}armed-{j}"),
                    pin: town::PIN.into(),
                })
                .await
                .with_context(|| format!("RegisterBike {plate}"))?;
            registry
                .set_armed(SetArmedRequest {
                    plate: plate.clone(),
                    pin: town::PIN.into(),
                    armed: true,
                })
                .await
                .with_context(|| format!("SetArmed {plate}"))?;
            armed_tags.push(tag);
        }
        kiosk = Some(registry);
    } else {
        for s in &mut secrets {
            *s = hex::encode(rand::random::<[u8; 16]>());
        }
        garbage_secret = hex::encode(rand::random::<[u8; 16]>());
    }
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

    // Tags: the imported ones, then the armed ones registered above.
    let mut tags: Vec<String> = (0..spec.bikes as u64)
        .map(|i| town::tag_id(spec.run, i))
        .collect();
    let armed_base = tags.len() as u32;
    tags.extend(armed_tags.iter().cloned());
    let mut flags: HashMap<u32, Flags> = HashMap::new();
    let clone_tag = spec.thefts as u32;
    // Bikes on the roads (traffic index -> tag index).
    let mut road_tags: Vec<u32> = match spec.traffic {
        TrafficMode::Roads => (0..spec.bikes as u32).collect(),
        TrafficMode::Stress { .. } => (0..scenario_tags as u32).collect(),
    };
    let first_armed_bike = road_tags.len() as u32;
    road_tags.extend((0..armed_tags.len() as u32).map(|j| armed_base + j));
    for j in 0..armed_tags.len() as u32 {
        flags.insert(
            armed_base + j,
            Flags {
                armed: true,
                ..Flags::default()
            },
        );
    }
    let twin_bike = road_tags.len() as u32;
    if spec.clone {
        road_tags.push(clone_tag);
        flags.insert(
            clone_tag,
            Flags {
                cloned: true,
                ..Flags::default()
            },
        );
    }
    // Stress: every other registered bike belongs to one reader.
    let mut locals: Vec<Vec<u32>> = vec![Vec::new(); spec.readers];
    if let TrafficMode::Stress { .. } = spec.traffic {
        for i in scenario_tags..spec.bikes {
            locals[i % spec.readers].push(i as u32);
        }
    }
    let mut traffic = Traffic::new(
        net.clone(),
        TrafficSpec {
            start_hour: spec.start_hour,
            day_seconds: spec.day_seconds,
            ..TrafficSpec::new(road_tags.len(), spec.seed ^ 0x5eed)
        },
        now_ms(),
    );
    if let TrafficMode::Stress { .. } = spec.traffic {
        // Only scenario bikes ride: keep the honest rhythm out of it.
        for b in 0..road_tags.len() as u32 {
            traffic.manage(b);
        }
    }
    for b in (0..spec.thefts as u32).chain(first_armed_bike..road_tags.len() as u32) {
        traffic.manage(b);
    }
    // The clone's carriers ride at the west and the east ends of the district.
    let (mut west_end, mut east_end) = (None, None);
    let carriers: HashMap<u32, usize> = if spec.clone {
        traffic.manage(clone_tag);
        traffic.manage(twin_bike);
        west_end = (0..spec.readers).min_by(|a, b| positions[*a].1.total_cmp(&positions[*b].1));
        east_end = (0..spec.readers).max_by(|a, b| positions[*a].1.total_cmp(&positions[*b].1));
        HashMap::from([(clone_tag, 0), (twin_bike, 1)])
    } else {
        HashMap::new()
    };
    let provisioned_in = t0.elapsed();

    // Patrol streams: every zone unit and the command center.
    let tally = Arc::new(Mutex::new(Tally {
        prefix: p.clone(),
        ..Tally::default()
    }));
    let mut stream_tasks = Vec::new();
    if let Some(channel) = &channel {
        for (unit, token) in units.iter().chain(command.iter()) {
            let mut stream = clients::patrol(channel.clone(), token)?
                .stream_alerts(StreamAlertsRequest { resume_after: 0 })
                .await
                .with_context(|| format!("StreamAlerts as {unit}"))?
                .into_inner();
            let (tally, unit) = (tally.clone(), unit.clone());
            stream_tasks.push(tokio::spawn(async move {
                while let Ok(Some(alert)) = stream.message().await {
                    tally
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .receive(&unit, &alert);
                }
            }));
        }
    }

    // Readers: each its own connection, its own task.
    let counters = Arc::new(Counters::default());
    let mut to_readers = Vec::with_capacity(spec.readers);
    let mut reader_tasks = Vec::new();
    let mut wanted: Vec<(usize, String, String)> = reader_ids
        .iter()
        .cloned()
        .zip(secrets.iter().cloned())
        .enumerate()
        .map(|(k, (id, s))| (k, id, s))
        .collect();
    if spec.garbage.is_some() {
        wanted.push((usize::MAX, garbage_id.clone(), garbage_secret.clone()));
    }
    let (host, port) = (target.mqtt_host.clone(), target.mqtt_port);
    let connected: Vec<anyhow::Result<(usize, ReaderClient)>> = futures::stream::iter(wanted)
        .map(|(k, id, secret)| {
            let host = host.clone();
            let prefix = target.topic_prefix.clone();
            async move {
                let mut c = ReaderClient::connect(&host, port, &id, &secret)
                    .await
                    .with_context(|| format!("reader {id} connecting to {host}:{port}"))?;
                if let Some(prefix) = prefix {
                    c.set_sightings_topic(format!("{prefix}{id}/sightings"));
                }
                Ok((k, c))
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    let mut clients_by_k: Vec<Option<ReaderClient>> = (0..spec.readers).map(|_| None).collect();
    let mut garbage_client = None;
    for c in connected {
        let (k, c) = c?;
        if k == usize::MAX {
            garbage_client = Some(c);
        } else {
            clients_by_k[k] = Some(c);
        }
    }
    for c in clients_by_k {
        let c = c.context("a reader did not connect")?;
        let (tx, rx) = mpsc::channel(64);
        to_readers.push(tx);
        reader_tasks.push(tokio::spawn(reader_task(
            c,
            rx,
            tally.clone(),
            counters.clone(),
        )));
    }
    let garbage_tx = garbage_client.map(|c| {
        let (tx, rx) = mpsc::channel(4);
        reader_tasks.push(tokio::spawn(reader_task(
            c,
            rx,
            tally.clone(),
            counters.clone(),
        )));
        tx
    });

    // Thefts: reported through the Registry API, then ridden away.
    if let Some(kiosk) = &mut kiosk {
        for i in 0..spec.thefts as u64 {
            let plate = town::plate(spec.run, i);
            kiosk
                .report_stolen(ReportStolenRequest {
                    plate: plate.clone(),
                    place: "Simulated street".into(),
                    ..Default::default()
                })
                .await
                .with_context(|| {
                    format!(
                        "ReportStolen {plate} (was the district imported with --run {}?)",
                        spec.run
                    )
                })?;
            flags.insert(
                i as u32,
                Flags {
                    stolen: true,
                    ..Flags::default()
                },
            );
        }
    }
    if live {
        // Each scenario bike starts a few metres short of a reader, so it is seen at once.
        let mut pick = StdRng::seed_from_u64(spec.seed ^ 0xb1ce);
        for b in (0..spec.thefts as u32).chain(first_armed_bike..road_tags.len() as u32) {
            if spec.clone && b == twin_bike {
                continue;
            }
            let k = pick.random_range(0..spec.readers);
            let before = pick.random_range(10.0..60.0);
            traffic.ride_towards(b, net.reader_nodes[k], before, u16::MAX);
        }
        if let (Some(w), Some(e)) = (west_end, east_end) {
            // The clone's carriers: the original next to the west end's reader, the twin
            // further from the east end's, so their passes are seconds apart.
            traffic.ride_towards(clone_tag, net.reader_nodes[w], 10.0, u16::MAX);
            traffic.ride_towards(twin_bike, net.reader_nodes[e], 100.0, u16::MAX);
        }
    } else {
        flags.clear();
    }

    // Drive.
    let metrics_before = match target.metrics {
        Some(addr) => Some(probe::scrape(addr).await?),
        None => None,
    };
    let relay_before = target
        .relay_counter
        .as_ref()
        .map(|c| c.load(Ordering::Relaxed));
    let proc_before = target.server_pid.map(ProcSample::read).transpose()?;
    let broker_before = target.broker_pid.map(ProcSample::read).transpose()?;
    let progress = spec.progress.then(|| progress_bar(spec.drive));
    let live_rate = Arc::new(Mutex::new(String::new()));
    let watcher = target.metrics.map(|addr| {
        let live_rate = live_rate.clone();
        tokio::spawn(async move {
            let mut last: Option<(Instant, f64)> = None;
            loop {
                if let Ok(s) = probe::scrape(addr).await {
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

    let mut rng = StdRng::seed_from_u64(spec.seed ^ 0xfeed);
    let mut oracle = Oracle::new(spec.rules, positions.clone());
    let mut guard = CloneGuard::new(1000);
    let mut pending: Vec<Vec<(u32, Read)>> = vec![Vec::new(); spec.readers];
    let mut last_sent = vec![0i64; spec.readers];
    let mut dead = vec![false; spec.readers];
    let mut arrivals = Vec::new();
    let mut ready: Vec<(u32, Read)> = Vec::new();
    let victim = spec.readers / 2;
    let (mut offline_done, mut garbage_done) =
        (!spec.offline_reader || !live, garbage_tx.is_none());
    let started = Instant::now();
    let started_ms = now_ms();
    let hour0 = traffic.hour(started_ms);
    let mut tick = tokio::time::interval(Duration::from_millis(spec.batch_ms.max(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut last_progress = Instant::now();
    let heartbeat_ms = 30_000;
    loop {
        tick.tick().await;
        let elapsed = started.elapsed();
        if elapsed >= spec.drive {
            break;
        }
        let now = now_ms();
        if !garbage_done && elapsed >= spec.drive / 5 {
            garbage_done = true;
            if let (Some(tx), Some((rate, secs))) = (&garbage_tx, spec.garbage) {
                let _ = tx.send(ToReader::Garbage(rate, secs)).await;
            }
        }
        if !offline_done && elapsed >= spec.drive * 2 / 5 {
            offline_done = true;
            dead[victim] = true;
            let owed = command
                .iter()
                .map(|(cc, _)| Owed {
                    units: vec![cc.clone()],
                    kind: AlertKind::ReaderOffline as i32,
                    tag: String::new(),
                    reader: reader_ids[victim].clone(),
                })
                .collect();
            let _ = to_readers[victim].send(ToReader::Kill(owed)).await;
        }
        arrivals.clear();
        traffic.step(now, &mut arrivals);
        for a in &arrivals {
            if dead[a.reader as usize] {
                continue;
            }
            let tag = road_tags[a.bike as usize];
            let reads = rf::pass(&spec.rf, &mut rng, a.at_ms, a.speed_mps);
            let (Some(first), Some(last)) = (reads.first(), reads.last()) else {
                continue;
            };
            if let Some(&who) = carriers.get(&a.bike)
                && !guard.admit(who, first.at_ms, last.at_ms)
            {
                continue;
            }
            pending[a.reader as usize].extend(reads.iter().map(|r| (tag, *r)));
        }
        for k in 0..spec.readers {
            if dead[k] {
                continue;
            }
            ready.clear();
            pending[k].retain(|(tag, r)| {
                if r.at_ms <= now {
                    ready.push((*tag, *r));
                    false
                } else {
                    true
                }
            });
            ready.sort_by_key(|(tag, r)| (*tag, r.at_ms));
            let mut sightings = Vec::new();
            let mut owed = Vec::new();
            let mut i = 0;
            while i < ready.len() {
                let tag = ready[i].0;
                let j = ready[i..]
                    .iter()
                    .position(|(t, _)| *t != tag)
                    .map_or(ready.len(), |n| i + n);
                let reads: Vec<Read> = ready[i..j].iter().map(|(_, r)| *r).collect();
                let s = rf::fold(&tags[tag as usize], &reads);
                if let Some(f) = flags.get(&tag) {
                    for kind in oracle.observe(tag, *f, k as u32, &s) {
                        owed.push(Owed {
                            units: unit_of_reader(k),
                            kind: kind as i32,
                            tag: s.tag_id.clone(),
                            reader: reader_ids[k].clone(),
                        });
                    }
                    // Scenario sightings first: they go in the first message.
                    sightings.insert(0, s);
                } else {
                    sightings.push(s);
                }
                i = j;
            }
            if let TrafficMode::Stress {
                sightings_per_batch,
            } = spec.traffic
                && !locals[k].is_empty()
            {
                for _ in 0..sightings_per_batch {
                    let tag = locals[k][rng.random_range(0..locals[k].len())];
                    let reads = rng.random_range(1..=8u32);
                    sightings.push(Sighting {
                        tag_id: tags[tag as usize].clone(),
                        first_seen_ms: now - rng.random_range(0..spec.batch_ms as i64),
                        last_seen_ms: now,
                        read_count: reads,
                        peak_rssi_dbm: -rng.random_range(42..78),
                        antenna: 1,
                    });
                }
            }
            if sightings.is_empty() && now - last_sent[k] < heartbeat_ms {
                continue;
            }
            last_sent[k] = now;
            let mut chunks: Vec<Vec<Sighting>> = if sightings.is_empty() {
                vec![Vec::new()]
            } else {
                sightings
                    .chunks(spec.batch_max.max(1))
                    .map(<[Sighting]>::to_vec)
                    .collect()
            };
            let first = chunks.remove(0);
            if to_readers[k]
                .send(ToReader::Batch(first, owed))
                .await
                .is_err()
            {
                continue;
            }
            for c in chunks {
                let _ = to_readers[k].send(ToReader::Batch(c, Vec::new())).await;
            }
        }
        if let Some(bar) = &progress
            && last_progress.elapsed() >= Duration::from_millis(500)
        {
            last_progress = Instant::now();
            let secs = started.elapsed().as_secs_f64();
            let (exp, rec) = {
                let t = tally.lock().unwrap_or_else(|e| e.into_inner());
                (t.expected, t.received)
            };
            bar.set_position(started.elapsed().as_secs());
            bar.set_message(format!(
                "{:02.0}:{:02.0} {} riding | offered {:.0} reads/s | {} | alerts {rec}/{exp}",
                traffic.hour(now).floor(),
                traffic.hour(now).fract() * 60.0,
                traffic.riding(),
                counters.reads.load(Ordering::Relaxed) as f64 / secs,
                live_rate.lock().unwrap_or_else(|e| e.into_inner()),
            ));
        }
    }
    let drive_s = started.elapsed().as_secs_f64();
    let hour1 = traffic.hour(now_ms());
    let offered = Rates::new(
        counters.messages.load(Ordering::Relaxed),
        counters.sightings.load(Ordering::Relaxed),
        counters.reads.load(Ordering::Relaxed),
        drive_s,
    );
    let metrics_drive_end = match target.metrics {
        Some(addr) => Some(probe::scrape(addr).await?),
        None => None,
    };
    let relay_drive_end = target
        .relay_counter
        .as_ref()
        .map(|c| c.load(Ordering::Relaxed));
    let proc_after = target.server_pid.map(ProcSample::read).transpose()?;
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
            let s = probe::scrape(addr).await?;
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

fn processed(before: &Scrape, drive_end: &Scrape, end: &Scrape, drive_s: f64) -> Processed {
    let d = |s: &Scrape, name: &str| (s.get(name) - before.get(name)).max(0.0) as u64;
    let reasons = |name: &str| {
        let b = before.by_reason(name);
        end.by_reason(name)
            .into_iter()
            .map(|(r, v)| {
                let n = (v - b.get(&r).copied().unwrap_or(0.0)).max(0.0) as u64;
                (r, n)
            })
            .filter(|(_, n)| *n > 0)
            .collect()
    };
    let lat_sum = "greenplate_alert_latency_seconds_sum";
    let lat_count = "greenplate_alert_latency_seconds_count";
    let alerts = d(end, lat_count);
    Processed {
        during_drive: Rates::new(
            d(drive_end, "greenplate_ingest_batches_accepted_total"),
            d(drive_end, "greenplate_ingest_sightings_accepted_total"),
            d(drive_end, "greenplate_ingest_reads_total"),
            drive_s,
        ),
        batches_total: d(end, "greenplate_ingest_batches_accepted_total"),
        sightings_total: d(end, "greenplate_ingest_sightings_accepted_total"),
        reads_total: d(end, "greenplate_ingest_reads_total"),
        rejected_by_reason: reasons("greenplate_ingest_batches_rejected_total"),
        sightings_rejected_by_reason: reasons("greenplate_ingest_sightings_rejected_total"),
        server_alerts: alerts,
        server_alert_latency_mean_ms: if alerts > 0 {
            (end.get(lat_sum) - before.get(lat_sum)) / alerts as f64 * 1000.0
        } else {
            0.0
        },
    }
}

fn progress_bar(drive: Duration) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(drive.as_secs());
    bar.set_style(
        indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} s {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar
}

async fn reader_task(
    mut client: ReaderClient,
    mut rx: mpsc::Receiver<ToReader>,
    tally: Arc<Mutex<Tally>>,
    counters: Arc<Counters>,
) {
    while let Some(m) = rx.recv().await {
        match m {
            ToReader::Batch(sightings, owed) => {
                let n = sightings.len() as u64;
                let reads: u64 = sightings.iter().map(|s| u64::from(s.read_count)).sum();
                if !owed.is_empty() {
                    let at = Instant::now();
                    let mut t = tally.lock().unwrap_or_else(|e| e.into_inner());
                    for o in &owed {
                        t.owe(o, at);
                    }
                }
                match client.publish(sightings).await {
                    Ok(_) => {
                        counters.messages.fetch_add(1, Ordering::Relaxed);
                        counters.sightings.fetch_add(n, Ordering::Relaxed);
                        counters.reads.fetch_add(reads, Ordering::Relaxed);
                    }
                    Err(e) => {
                        counters.errors.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(reader = %client.id, error = %e, "Publish failed.");
                    }
                }
            }
            ToReader::Kill(owed) => {
                // What it sent just before goes out; then the power goes.
                tokio::time::sleep(Duration::from_millis(300)).await;
                {
                    let at = Instant::now();
                    let mut t = tally.lock().unwrap_or_else(|e| e.into_inner());
                    for o in &owed {
                        t.owe(o, at);
                    }
                }
                client.kill();
                return;
            }
            ToReader::Garbage(per_s, lasting) => {
                let topic = client.sightings_topic().to_owned();
                let until = Instant::now() + lasting;
                let mut tick =
                    tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(per_s.max(1))));
                while Instant::now() < until {
                    tick.tick().await;
                    let len = rand::rng().random_range(16..1024);
                    let junk: Vec<u8> = (0..len).map(|_| rand::random::<u8>()).collect();
                    if client.publish_raw(&topic, junk).await.is_ok() {
                        counters.garbage.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
    }
    client.disconnect().await;
}
