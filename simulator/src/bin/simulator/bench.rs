//! `simulator bench`: the end-to-end benchmark ([`greenplate_simulator::bench`]), its report
//! printed and written as OUT.json and OUT.md.

use std::path::PathBuf;

use anyhow::Context;

#[derive(clap::Args)]
pub struct BenchArgs {
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
    /// For `--setups nats` and `nats-alone`: a running nats-server's client URL (JetStream
    /// on, and the partition mapping of deploy/nats/nats-server.conf).
    #[arg(long)]
    nats_url: Option<String>,
    /// Its MQTT listener, HOST:PORT, where the readers connect.
    #[arg(long)]
    nats_mqtt: Option<std::net::SocketAddr>,
    /// Its pid, for its CPU.
    #[arg(long)]
    nats_pid: Option<u32>,
    /// The partitions its mapping makes (greenplate's nats.partitions; also NATS alone's
    /// pull loops).
    #[arg(long, default_value_t = 8)]
    nats_partitions: u32,
    /// For `--setups nats2`: the PostgreSQL the two nodes share (each run imports its own
    /// bikes there; use a scratch database).
    #[arg(long)]
    database_url: Option<String>,
    /// Writes OUT.json and OUT.md.
    #[arg(long, default_value = "benches/reports/e2e")]
    out: PathBuf,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
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
        nats: match (args.nats_url, args.nats_mqtt) {
            (Some(url), Some(mqtt)) => Some(bench::NatsTarget {
                url,
                mqtt,
                pid: args.nats_pid,
                partitions: args.nats_partitions,
            }),
            (None, None) => None,
            _ => anyhow::bail!("--nats-url and --nats-mqtt go together"),
        },
        database_url: args.database_url,
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
    // Appended, not replaced: `--out e2e-1.28M` writes e2e-1.28M.json.
    let with = |ext: &str| {
        let mut p = args.out.clone().into_os_string();
        p.push(ext);
        PathBuf::from(p)
    };
    let json = with(".json");
    let mdp = with(".md");
    std::fs::write(&json, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("writing {}", json.display()))?;
    std::fs::write(&mdp, md).with_context(|| format!("writing {}", mdp.display()))?;
    eprintln!("Wrote {} and {}.", json.display(), mdp.display());
    Ok(())
}
