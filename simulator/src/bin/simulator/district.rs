//! `simulator district`: the district run ([`greenplate_simulator::district`]) against a
//! running server or a spawned one, its report printed as Markdown and written as JSON and
//! Markdown.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use greenplate_simulator::reader::now_ms;

use crate::args::admin_token;

#[derive(clap::Args)]
pub struct DistrictArgs {
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
    /// Each reader publishes at its own phase of the batch interval, as real readers do,
    /// instead of all readers at once on the tick (latency is measured from each publish).
    #[arg(long)]
    spread_readers: bool,
}

pub async fn run(args: DistrictArgs) -> anyhow::Result<()> {
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
        spread_readers: args.spread_readers,
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
                top_toml: String::new(),
                readers_mqtt: None,
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
                more_nodes: Vec::new(),
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
