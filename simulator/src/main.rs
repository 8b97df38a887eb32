//! `simulator`: provisions a small town through the real APIs, drives sightings through the
//! real broker with one MQTT connection per reader, listens as the town's patrol units, and
//! reports which alerts arrived and how fast.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};
use greenplate_proto::v1::{AlertKind, ReportStolenRequest, StreamAlertsRequest};
use greenplate_simulator::clients;
use greenplate_simulator::reader::{ReaderClient, now_ms, sighting};
use greenplate_simulator::town::{self, TownSpec};
use rand::{Rng, SeedableRng};
use tokio::sync::Mutex;

#[derive(Parser)]
#[command(
    name = "simulator",
    version,
    about = "Load generator and demo town for greenplate."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Provision a small town, steal a bike, ride it past the readers, print the alerts.
    Town(TownArgs),
    /// Measure RegisterBike calls/s through gRPC with many concurrent kiosks.
    KioskLoad(KioskLoadArgs),
    /// Write a CSV of synthetic registrations for `greenplate registry import`.
    ImportCsv(ImportCsvArgs),
    /// Alert latency, publish to patrol receipt, with many concurrent patrol streams.
    PatrolLoad(PatrolLoadArgs),
    /// The district: readers on a road network over Chaoyang, registered bikes riding it with
    /// a daily rhythm, thefts and other scenarios, every patrol unit listening; reports what
    /// was offered, processed and alerted (JSON and Markdown).
    District(Box<DistrictArgs>),
    /// End-to-end benchmark, side by side: greenplate with its embedded broker, greenplate
    /// behind Mosquitto, Mosquitto alone; writes a JSON and a Markdown report.
    Bench(BenchArgs),
    /// Write the binary seeds of the fuzz targets open_sealed and decode_batch (after a
    /// change to the contract; see ingest/fuzz/README.md).
    FuzzSeeds(FuzzSeedsArgs),
}

#[derive(clap::Args)]
struct FuzzSeedsArgs {
    /// The corpus directory; the seeds go to its open_sealed/ and decode_batch/.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../ingest/fuzz/corpus"))]
    corpus: PathBuf,
}

#[derive(clap::Args)]
struct DistrictArgs {
    /// Spawn this greenplate binary (fresh data directory, free ports, the bikes bulk
    /// imported) instead of using a running server.
    #[arg(long)]
    spawn: Option<PathBuf>,
    /// greenplate gRPC URL (a running server).
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    grpc: String,
    /// greenplate's MQTT broker, HOST:PORT (a running server).
    #[arg(long, default_value = "127.0.0.1:1883")]
    mqtt: String,
    /// greenplate's HTTP address, HOST:PORT, for /metrics (a running server).
    #[arg(long)]
    metrics: Option<std::net::SocketAddr>,
    /// The running server's pid, for its CPU and peak RSS (same machine).
    #[arg(long)]
    server_pid: Option<u32>,
    /// Admin token (or use --admin-token-file).
    #[arg(long, env = "GREENPLATE_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// File holding the admin token.
    #[arg(long, default_value = "greenplate-data/admin-token")]
    admin_token_file: PathBuf,
    /// The bulk import's run number (`simulator import-csv --run`): bike i has that run's
    /// tag i.
    #[arg(long, default_value_t = 1)]
    run: u64,
    /// Registered bikes (imported).
    #[arg(long, default_value_t = 210_000)]
    bikes: usize,
    /// Readers, on intersections.
    #[arg(long, default_value_t = 1000)]
    readers: usize,
    /// How long to drive, seconds.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Each reader sends what it read every this many milliseconds.
    #[arg(long, default_value_t = 200)]
    batch_ms: u64,
    /// Most sightings per message.
    #[arg(long, default_value_t = 200)]
    batch_max: usize,
    /// Throughput instead of roads: each reader reports this many sightings of its own
    /// bikes every batch (0: every bike rides the roads).
    #[arg(long, default_value_t = 0)]
    stress: usize,
    /// Simulated hour of day at the start.
    #[arg(long, default_value_t = 18.0)]
    start_hour: f64,
    /// Seconds per simulated day (86400: real time; the hour only sets how many ride).
    #[arg(long, default_value_t = 86_400.0)]
    day_seconds: f64,
    /// Bikes reported stolen and ridden away.
    #[arg(long, default_value_t = 5)]
    thefts: usize,
    /// Bikes registered with a PIN, armed, and ridden.
    #[arg(long, default_value_t = 3)]
    armed: usize,
    /// No cloned tag.
    #[arg(long)]
    no_clone: bool,
    /// No reader going offline.
    #[arg(long)]
    no_offline: bool,
    /// Garbage messages per second from one reader (0: none).
    #[arg(long, default_value_t = 2000)]
    garbage_rate: u32,
    /// For how long, seconds.
    #[arg(long, default_value_t = 3)]
    garbage_seconds: u64,
    /// Seconds to wait after driving for the last alerts.
    #[arg(long, default_value_t = 10)]
    settle: u64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the report as Markdown here.
    #[arg(long)]
    md: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

#[derive(clap::Args)]
struct BenchArgs {
    /// The greenplate binary to spawn (build it with --release).
    #[arg(long, default_value = "target/release/greenplate")]
    greenplate: PathBuf,
    /// The machine's Mosquitto, HOST:PORT (anonymous).
    #[arg(long, default_value = "127.0.0.1:1883")]
    mosquitto: String,
    /// Setups to run, in order.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "embedded,mosquitto,mosquitto-alone"
    )]
    setups: Vec<greenplate_simulator::bench::Setup>,
    #[arg(long, default_value_t = 1000)]
    readers: usize,
    #[arg(long, default_value_t = 210_000)]
    bikes: usize,
    /// Seconds of load per setup.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Each reader publishes a batch every this many milliseconds.
    #[arg(long, default_value_t = 100)]
    batch_ms: u64,
    /// Sightings per batch (each folds 1-8 reads).
    #[arg(long, default_value_t = 50)]
    sightings_per_batch: usize,
    /// Stolen bikes riding the roads meanwhile (alert latency under load).
    #[arg(long, default_value_t = 100)]
    thefts: usize,
    /// The spawned servers' embedded-broker buffer, MiB (mqtt.buffer_mib; default: the
    /// server's default).
    #[arg(long)]
    mqtt_buffer_mib: Option<usize>,
    /// Mosquitto's pid, for its CPU (default: the process listening on its port).
    #[arg(long)]
    mosquitto_pid: Option<u32>,
    /// Mosquitto alone's counting subscriber joins a shared subscription and acknowledges
    /// each message itself (manual acks), as greenplate's ingest does.
    #[arg(long)]
    alone_like_ingest: bool,
    /// Writes OUT.json and OUT.md.
    #[arg(long, default_value = "benches/reports/e2e")]
    out: PathBuf,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

#[derive(clap::Args)]
struct PatrolLoadArgs {
    /// greenplate gRPC URL.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    grpc: String,
    /// greenplate MQTT broker, HOST:PORT.
    #[arg(long, default_value = "127.0.0.1:1883")]
    mqtt: String,
    /// Admin token (or use --admin-token-file).
    #[arg(long, env = "GREENPLATE_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// File holding the admin token.
    #[arg(long, default_value = "greenplate-data/admin-token")]
    admin_token_file: PathBuf,
    /// Concurrent patrol streams.
    #[arg(long, default_value_t = 1000)]
    streams: usize,
    /// gRPC connections the streams share.
    #[arg(long, default_value_t = 50)]
    connections: usize,
    /// Alerts to produce.
    #[arg(long, default_value_t = 500)]
    alerts: usize,
    /// One alert every this many milliseconds.
    #[arg(long, default_value_t = 20)]
    interval_ms: u64,
    /// Also write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(clap::Args)]
struct KioskLoadArgs {
    /// greenplate gRPC URL.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    grpc: String,
    /// Admin token (or use --admin-token-file).
    #[arg(long, env = "GREENPLATE_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// File holding the admin token.
    #[arg(long, default_value = "greenplate-data/admin-token")]
    admin_token_file: PathBuf,
    /// Concurrent kiosks, each with its own token and connection.
    #[arg(long, default_value_t = 16)]
    kiosks: usize,
    /// Registrations in all.
    #[arg(long, default_value_t = 2000)]
    bikes: usize,
}

#[derive(clap::Args)]
struct ImportCsvArgs {
    /// Rows to write.
    #[arg(long, default_value_t = 210_000)]
    rows: u64,
    /// Output file.
    #[arg(long)]
    out: PathBuf,
    /// Distinguishes the tags, plates and owners of one file from another's.
    #[arg(long, default_value_t = 1)]
    run: u64,
}

#[derive(clap::Args)]
struct TownArgs {
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    match Cli::parse().command {
        Command::Town(args) => run_town(args).await,
        Command::KioskLoad(args) => kiosk_load(args).await,
        Command::ImportCsv(args) => import_csv(args),
        Command::PatrolLoad(args) => patrol_load(args).await,
        Command::District(args) => district(*args).await,
        Command::Bench(args) => bench(args).await,
        Command::FuzzSeeds(args) => {
            let n = greenplate_simulator::fuzz_seeds::write(&args.corpus)?;
            println!("Wrote {n} seeds under {}.", args.corpus.display());
            Ok(())
        }
    }
}

async fn district(args: DistrictArgs) -> anyhow::Result<()> {
    use greenplate_simulator::district::{self, DistrictSpec, Target, TrafficMode};
    use greenplate_simulator::server::{ServerSpec, SpawnedServer};
    let spec = DistrictSpec {
        setup: if args.spawn.is_some() {
            "spawned greenplate, embedded broker".into()
        } else {
            format!("greenplate at {}", args.grpc)
        },
        bikes: args.bikes,
        readers: args.readers,
        drive: Duration::from_secs(args.seconds),
        settle: Duration::from_secs(args.settle),
        batch_ms: args.batch_ms,
        batch_max: args.batch_max,
        traffic: if args.stress > 0 {
            TrafficMode::Stress {
                sightings_per_batch: args.stress,
            }
        } else {
            TrafficMode::Roads
        },
        start_hour: args.start_hour,
        day_seconds: args.day_seconds,
        thefts: args.thefts,
        armed: args.armed,
        clone: !args.no_clone,
        offline_reader: !args.no_offline,
        garbage: (args.garbage_rate > 0 && args.garbage_seconds > 0)
            .then(|| (args.garbage_rate, Duration::from_secs(args.garbage_seconds))),
        seed: args.seed,
        progress: !args.quiet,
        ..DistrictSpec::chaoyang(format!("d{}-", now_ms() / 1000 % 1_000_000), args.run)
    };
    let mut server = None;
    let target = match &args.spawn {
        Some(binary) => {
            eprintln!(
                "Starting {} with {} imported bikes...",
                binary.display(),
                args.bikes
            );
            let s = SpawnedServer::start(&ServerSpec {
                binary: binary.clone(),
                bikes: args.bikes,
                run: args.run,
                mqtt_url: None,
                mqtt_buffer_mib: None,
                extra_toml: String::new(),
            })
            .await?;
            eprintln!(
                "greenplate pid {} up (import took {:.1} s): gRPC {}, MQTT {}, HTTP {}.",
                s.pid, s.import_seconds, s.grpc_url, s.mqtt, s.http
            );
            let t = s.target();
            server = Some(s);
            t
        }
        None => {
            let (host, port) = args
                .mqtt
                .rsplit_once(':')
                .context("--mqtt must be HOST:PORT")?;
            Target {
                grpc_url: Some(args.grpc.clone()),
                admin_token: admin_token(args.admin_token, &args.admin_token_file)?,
                mqtt_host: host.to_owned(),
                mqtt_port: port.parse().context("--mqtt port")?,
                metrics: args.metrics,
                server_pid: args.server_pid,
                topic_prefix: None,
                relay_counter: None,
                broker_pid: None,
            }
        }
    };
    let result = district::run(&target, &spec).await;
    if let Some(s) = server {
        if result.is_err() {
            eprintln!("server log:\n{}", s.log_tail());
        }
        s.stop().await?;
    }
    let report = result?;
    let md = report.markdown();
    println!("{md}");
    if let Some(path) = args.json {
        std::fs::write(&path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = args.md {
        std::fs::write(&path, md).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

async fn bench(args: BenchArgs) -> anyhow::Result<()> {
    use greenplate_simulator::bench::{self, BenchSpec};
    let spec = BenchSpec {
        binary: args.greenplate,
        mosquitto: args.mosquitto,
        setups: args.setups,
        readers: args.readers,
        bikes: args.bikes,
        seconds: args.seconds,
        batch_ms: args.batch_ms,
        sightings_per_batch: args.sightings_per_batch,
        thefts: args.thefts,
        mqtt_buffer_mib: args.mqtt_buffer_mib,
        mosquitto_pid: args.mosquitto_pid,
        alone_like_ingest: args.alone_like_ingest,
        progress: !args.quiet,
        command: std::env::args()
            .enumerate()
            .map(|(i, a)| if i == 0 { "simulator".to_owned() } else { a })
            .collect::<Vec<_>>()
            .join(" "),
    };
    let report = bench::run(&spec).await?;
    let md = report.markdown();
    println!("{md}");
    if let Some(dir) = args.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let json = args.out.with_extension("json");
    let mdp = args.out.with_extension("md");
    std::fs::write(&json, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("writing {}", json.display()))?;
    std::fs::write(&mdp, md).with_context(|| format!("writing {}", mdp.display()))?;
    eprintln!("Wrote {} and {}.", json.display(), mdp.display());
    Ok(())
}

async fn patrol_load(args: PatrolLoadArgs) -> anyhow::Result<()> {
    let admin_token = admin_token(args.admin_token, &args.admin_token_file)?;
    let (host, port) = args
        .mqtt
        .rsplit_once(':')
        .context("--mqtt must be HOST:PORT")?;
    let port: u16 = port.parse().context("--mqtt port")?;
    let channel = clients::channel(&args.grpc)
        .await
        .with_context(|| format!("connecting to {}", args.grpc))?;
    let spec = greenplate_simulator::patrol_load::PatrolLoadSpec {
        prefix: format!("pl{}-", now_ms() / 1000 % 1_000_000),
        streams: args.streams,
        connections: args.connections,
        alerts: args.alerts,
        interval: Duration::from_millis(args.interval_ms),
    };
    let report = greenplate_simulator::patrol_load::run(
        channel,
        &args.grpc,
        &admin_token,
        host,
        port,
        &spec,
    )
    .await?;
    println!(
        "{} streams, {} alerts: {} of {} deliveries, {} lost, {} duplicated; \
         publish to patrol p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        report.streams,
        report.alerts_published,
        report.deliveries,
        report.deliveries_expected,
        report.lost,
        report.duplicated,
        report.latency_ms_p50,
        report.latency_ms_p99,
        report.latency_ms_max
    );
    if let Some(path) = args.json {
        std::fs::write(&path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Great-circle distance, km (the same formula the server's clone rule uses).
fn distance_km(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    let (p1, p2) = (lat1.to_radians(), lat2.to_radians());
    let a = ((p2 - p1) / 2.0).sin().powi(2)
        + p1.cos() * p2.cos() * ((lon2 - lon1).to_radians() / 2.0).sin().powi(2);
    2.0 * 6371.0088 * a.sqrt().asin()
}

fn admin_token(token: Option<String>, file: &std::path::Path) -> anyhow::Result<String> {
    match token {
        Some(t) => Ok(t),
        None => Ok(std::fs::read_to_string(file)
            .with_context(|| {
                format!(
                    "reading the admin token from {} (or pass --admin-token)",
                    file.display()
                )
            })?
            .trim()
            .to_owned()),
    }
}

async fn kiosk_load(args: KioskLoadArgs) -> anyhow::Result<()> {
    use greenplate_proto::v1::{AddKioskRequest, BikeDetails, Owner, RegisterBikeRequest};
    anyhow::ensure!(args.kiosks >= 1, "--kiosks must be at least 1");
    let token = admin_token(args.admin_token, &args.admin_token_file)?;
    let channel = clients::channel(&args.grpc).await?;
    let mut admin = clients::admin(channel.clone(), &token)?;
    let run = (now_ms() / 1000 % 4000) as u64;
    let mut kiosks = Vec::new();
    for k in 0..args.kiosks {
        let token = admin
            .add_kiosk(AddKioskRequest {
                kiosk_id: format!("load{run}-k{k}"),
                name: format!("Load kiosk {k}"),
            })
            .await?
            .into_inner()
            .token;
        // Each kiosk has its own HTTP/2 connection, as separate kiosks would.
        kiosks.push(clients::registry(
            clients::channel(&args.grpc).await?,
            &token,
        )?);
    }
    let per = args.bikes.div_ceil(args.kiosks);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (k, mut client) in kiosks.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(per);
            for j in 0..per {
                let i = (k * per + j) as u64;
                let t = Instant::now();
                client
                    .register_bike(RegisterBikeRequest {
                        tag_id: town::tag_id(run, i),
                        plate: town::plate(run, i),
                        owner: Some(Owner {
                            name: format!("车主{i}"),
                            id_number: town::resident_id(run, i),
                            phone: format!("139{:08}", i % 100_000_000),
                        }),
                        bike: Some(BikeDetails {
                            make: "Yadea".into(),
                            model: "G5".into(),
                            color: "green".into(),
                            frame_number: format!("LOAD{run:04}{i:08}"),
                        }),
                        request_id: format!("load{run}-{i}"),
                        pin: town::PIN.into(),
                    })
                    .await?;
                latencies.push(t.elapsed());
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await??);
    }
    let secs = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize];
    println!(
        "{} registrations by {} kiosks in {secs:.2} s: {:.0} calls/s; latency p50 {:?}, p99 {:?}, max {:?}",
        latencies.len(),
        args.kiosks,
        latencies.len() as f64 / secs,
        pct(0.5),
        pct(0.99),
        pct(1.0)
    );
    Ok(())
}

fn import_csv(args: ImportCsvArgs) -> anyhow::Result<()> {
    town::write_import_csv(&args.out, args.rows, args.run)
        .with_context(|| format!("writing {}", args.out.display()))?;
    println!("Wrote {} rows to {}.", args.rows, args.out.display());
    Ok(())
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

async fn run_town(args: TownArgs) -> anyhow::Result<()> {
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
