//! The end-to-end benchmark, side by side in one command, with the same readers, the same
//! sealed batches and the same offered load for each setup:
//! 1. `greenplate` with its embedded broker (spawned on free ports);
//! 2. `greenplate` behind the machine's Mosquitto (shared subscription of its own group);
//! 3. Mosquitto alone relaying the same messages to one subscriber that only counts them:
//!    the cost of just moving the bytes;
//! 4. `greenplate` behind NATS JetStream (a running nats-server: its MQTT listener for the
//!    readers, a stream and durable consumers for greenplate), one node, or two on one
//!    PostgreSQL (`--database-url`) sharing the partitions;
//! 5. NATS alone: the same readers through NATS's MQTT listener into a work-queue stream of
//!    the bench's own, drained by a durable consumer that only counts and acknowledges
//!    each message (as many pull loops as greenplate has partitions): what JetStream costs
//!    before greenplate does anything.
//!
//! Each setup gets a fresh `greenplate` with the district's registrations bulk imported and
//! its readers provisioned through the Admin API; thefts ride the roads meanwhile, so alert
//! latency is measured under the load. Reads/s are reported for each and as a ratio to
//! Mosquitto alone.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde::Serialize;

use crate::district::{self, DistrictSpec, Target, TrafficMode};
use crate::probe;
use crate::reader::now_ms;
use crate::report::Report;
use crate::server::{ServerSpec, SpawnedServer};

/// Which setups to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
pub enum Setup {
    /// greenplate with its embedded broker.
    Embedded,
    /// greenplate behind the machine's Mosquitto.
    Mosquitto,
    /// Mosquitto alone relaying to a counting subscriber.
    MosquittoAlone,
    /// greenplate taking reader messages from NATS JetStream (`--nats-url`, readers on
    /// `--nats-mqtt`, `[nats] partitions = --nats-partitions`).
    Nats,
    /// Two greenplate nodes behind NATS JetStream on one PostgreSQL (`--database-url`),
    /// sharing the partitions; counters and CPU summed over both.
    Nats2,
    /// NATS alone: the readers into a stream of the bench's own, drained by a consumer
    /// that only counts and acknowledges.
    NatsAlone,
}

impl Setup {
    fn label(self) -> &'static str {
        match self {
            Setup::Embedded => "greenplate, embedded broker",
            Setup::Mosquitto => "greenplate behind Mosquitto",
            Setup::MosquittoAlone => "Mosquitto alone (counting subscriber)",
            Setup::Nats => "greenplate behind NATS JetStream",
            Setup::Nats2 => "greenplate behind NATS JetStream, 2 nodes",
            Setup::NatsAlone => "NATS JetStream alone (ack-only consumer)",
        }
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchSpec {
    pub binary: PathBuf,
    /// host:port of the machine's Mosquitto (anonymous).
    pub mosquitto: String,
    pub setups: Vec<Setup>,
    pub readers: usize,
    pub bikes: usize,
    pub seconds: u64,
    pub batch_ms: u64,
    pub sightings_per_batch: usize,
    pub thefts: usize,
    /// The spawned servers' `mqtt.buffer_mib` (default: the server's).
    pub mqtt_buffer_mib: Option<usize>,
    /// Mosquitto's pid, for its CPU (default: the process listening on its port).
    pub mosquitto_pid: Option<u32>,
    /// Mosquitto alone's subscriber joins a shared subscription and acknowledges each
    /// message itself (manual acks), as greenplate's ingest does, instead of a plain one.
    pub alone_like_ingest: bool,
    /// For [`Setup::Nats`]: a running nats-server (JetStream, MQTT, the partition mapping),
    /// its client URL, its MQTT listener (host:port), its pid (for its CPU), and the
    /// partitions its mapping makes.
    pub nats: Option<NatsTarget>,
    /// For [`Setup::Nats2`]: the PostgreSQL both nodes share (each run imports its own
    /// bikes and provisions its own readers there).
    pub database_url: Option<String>,
    pub progress: bool,
    /// The command line, for the report.
    pub command: String,
}

/// A running nats-server for [`Setup::Nats`].
#[derive(Debug, Clone)]
pub struct NatsTarget {
    pub url: String,
    pub mqtt: std::net::SocketAddr,
    pub pid: Option<u32>,
    pub partitions: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct SetupResult {
    pub setup: Setup,
    pub label: String,
    /// Reads/s taken end to end (greenplate's `/metrics`), or relayed (Mosquitto alone).
    pub reads_per_s: f64,
    pub messages_per_s: f64,
    /// reads_per_s over Mosquitto alone's.
    pub ratio_to_mosquitto_alone: Option<f64>,
    /// reads_per_s over NATS alone's.
    pub ratio_to_nats_alone: Option<f64>,
    pub import_seconds: Option<f64>,
    /// The server log's most frequent warnings and errors (count, message).
    pub server_warnings: Vec<(usize, String)>,
    pub report: Report,
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub date_utc: String,
    pub machine: String,
    pub command: String,
    pub results: Vec<SetupResult>,
}

/// Runs the setups one after the other.
pub async fn run(spec: &BenchSpec) -> anyhow::Result<BenchReport> {
    let (mq_host, mq_port) = spec
        .mosquitto
        .rsplit_once(':')
        .context("--mosquitto must be HOST:PORT")?;
    let mq_port: u16 = mq_port.parse().context("--mosquitto port")?;
    // The broker that listens on that port (others may run their own Mosquitto beside it).
    let mosquitto_pid = spec
        .mosquitto_pid
        .or_else(|| probe::pid_listening_on(mq_port))
        .or_else(|| probe::pid_of("mosquitto"));
    let run = now_ms() as u64 / 1000 % 4000;
    let mut results = Vec::new();
    for &setup in &spec.setups {
        let prefix = format!("b{}{}-", now_ms() / 1000 % 100_000, setup_letter(setup));
        let dspec = DistrictSpec {
            setup: setup.label().into(),
            bikes: spec.bikes,
            readers: spec.readers,
            drive: Duration::from_secs(spec.seconds),
            settle: Duration::from_secs(10),
            batch_ms: spec.batch_ms,
            batch_max: spec.sightings_per_batch.max(1) + 50,
            traffic: TrafficMode::Stress {
                sightings_per_batch: spec.sightings_per_batch,
            },
            thefts: if matches!(setup, Setup::MosquittoAlone | Setup::NatsAlone) {
                0
            } else {
                spec.thefts
            },
            armed: 0,
            clone: false,
            offline_reader: false,
            garbage: None,
            progress: spec.progress,
            ..DistrictSpec::chaoyang(prefix.clone(), run)
        };
        eprintln!("== {} ==", setup.label());
        let mut server_warnings = Vec::new();
        let (report, import_seconds) = match setup {
            Setup::Embedded | Setup::Mosquitto | Setup::Nats | Setup::Nats2 => {
                let nats = match (setup, &spec.nats) {
                    (Setup::Nats | Setup::Nats2, Some(n)) => Some(n),
                    (Setup::Nats | Setup::Nats2, None) => {
                        anyhow::bail!("--setups nats needs --nats-url and --nats-mqtt")
                    }
                    _ => None,
                };
                // Two nodes share one PostgreSQL and one at-rest key.
                let top_toml = if setup == Setup::Nats2 {
                    let url = spec
                        .database_url
                        .as_ref()
                        .context("--setups nats2 needs --database-url (PostgreSQL)")?;
                    format!(
                        "database_url = {url:?}\nsecret_key = {:?}\n",
                        hex::encode(rand::random::<[u8; 32]>())
                    )
                } else {
                    String::new()
                };
                let server_spec = ServerSpec {
                    binary: spec.binary.clone(),
                    bikes: spec.bikes,
                    run,
                    mqtt_url: (setup == Setup::Mosquitto)
                        .then(|| format!("mqtt://{}", spec.mosquitto)),
                    mqtt_buffer_mib: spec.mqtt_buffer_mib,
                    extra_toml: nats.map_or_else(String::new, |n| {
                        format!("[nats]\nurl = {:?}\npartitions = {}\n", n.url, n.partitions)
                    }),
                    top_toml,
                    readers_mqtt: nats.map(|n| n.mqtt),
                };
                let server = SpawnedServer::start(&server_spec).await?;
                // The second node: the same database, nothing more to import.
                let second = if setup == Setup::Nats2 {
                    Some(
                        SpawnedServer::start(&ServerSpec {
                            bikes: 0,
                            ..server_spec.clone()
                        })
                        .await?,
                    )
                } else {
                    None
                };
                let mut target = server.target();
                if let Some(b) = &second {
                    target.more_nodes.push((b.http, b.pid));
                }
                if setup == Setup::Mosquitto {
                    target.broker_pid = mosquitto_pid;
                }
                if let Some(n) = nats {
                    target.broker_pid = n.pid;
                }
                let r = district::run(&target, &dspec).await;
                let import = server.import_seconds;
                if r.is_err() {
                    eprintln!("server log:\n{}", server.log_tail());
                }
                server_warnings = server.log_warnings();
                if let Some(b) = second {
                    server_warnings.extend(b.log_warnings());
                    b.stop().await?;
                }
                server.stop().await?;
                (r?, Some(import))
            }
            Setup::MosquittoAlone => {
                let counter = Arc::new(AtomicU64::new(0));
                let topic_prefix = format!("gpbench/{prefix}readers/");
                let filter = if spec.alone_like_ingest {
                    format!("$share/gpbench-{prefix}/{topic_prefix}#")
                } else {
                    format!("{topic_prefix}#")
                };
                let sub = counting_subscriber(
                    mq_host,
                    mq_port,
                    &filter,
                    spec.alone_like_ingest,
                    counter.clone(),
                )
                .await?;
                let target = Target::relay(
                    mq_host.to_owned(),
                    mq_port,
                    topic_prefix,
                    counter,
                    mosquitto_pid,
                );
                let r = district::run(&target, &dspec).await;
                sub.abort();
                (r?, None)
            }
            Setup::NatsAlone => {
                let n = spec
                    .nats
                    .as_ref()
                    .context("--setups nats-alone needs --nats-url and --nats-mqtt")?;
                let counter = Arc::new(AtomicU64::new(0));
                let topic_prefix = format!("gpbench/{prefix}readers/");
                let sub = NatsCounter::start(n, &topic_prefix, &format!("GPBENCH_{run}"), &counter)
                    .await?;
                let target = Target::relay(
                    n.mqtt.ip().to_string(),
                    n.mqtt.port(),
                    topic_prefix,
                    counter,
                    n.pid,
                );
                let r = district::run(&target, &dspec).await;
                sub.stop().await;
                (r?, None)
            }
        };
        let processed = report.processed.clone().unwrap_or_default();
        eprintln!("{}", report.markdown());
        results.push(SetupResult {
            setup,
            label: setup.label().into(),
            reads_per_s: processed.during_drive.reads_per_s,
            messages_per_s: processed.during_drive.messages_per_s,
            ratio_to_mosquitto_alone: None,
            ratio_to_nats_alone: None,
            import_seconds,
            server_warnings,
            report,
        });
    }
    let base = |alone: Setup| {
        results
            .iter()
            .find(|r| r.setup == alone)
            .map(|r| r.reads_per_s)
            .filter(|b| *b > 0.0)
    };
    let (mosquitto, nats) = (base(Setup::MosquittoAlone), base(Setup::NatsAlone));
    for r in &mut results {
        r.ratio_to_mosquitto_alone = mosquitto.map(|b| r.reads_per_s / b);
        r.ratio_to_nats_alone = nats.map(|b| r.reads_per_s / b);
    }
    Ok(BenchReport {
        date_utc: command_output("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        machine: machine(),
        command: spec.command.clone(),
        results,
    })
}

fn setup_letter(s: Setup) -> char {
    match s {
        Setup::Embedded => 'e',
        Setup::Mosquitto => 'm',
        Setup::MosquittoAlone => 'a',
        Setup::Nats => 'n',
        Setup::Nats2 => 'k',
        Setup::NatsAlone => 'j',
    }
}

/// NATS alone's consumer: a work-queue stream of the bench's own on the readers' subjects,
/// one durable pull consumer, and pull loops that count and acknowledge each message.
struct NatsCounter {
    js: async_nats::jetstream::Context,
    stream: String,
    loops: Vec<tokio::task::JoinHandle<()>>,
}

impl NatsCounter {
    async fn start(
        nats: &NatsTarget,
        topic_prefix: &str,
        stream: &str,
        counter: &Arc<AtomicU64>,
    ) -> anyhow::Result<Self> {
        use async_nats::jetstream::{consumer, stream as js_stream};
        use futures::StreamExt;
        let client = async_nats::connect(nats.url.as_str())
            .await
            .with_context(|| format!("connect to {}", nats.url))?;
        let js = async_nats::jetstream::new(client);
        // NATS names an MQTT topic a/b/c as the subject a.b.c.
        let subjects = format!("{}>", topic_prefix.replace('/', "."));
        let _ = js.delete_stream(stream).await;
        let s = js
            .create_stream(js_stream::Config {
                name: stream.to_owned(),
                subjects: vec![subjects],
                retention: js_stream::RetentionPolicy::WorkQueue,
                storage: js_stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(|e| anyhow::anyhow!("create stream {stream}: {e}"))?;
        // greenplate's defaults: explicit acks, 30 s ack-wait, 20,000 unacknowledged.
        let consumer: consumer::PullConsumer = s
            .create_consumer(consumer::pull::Config {
                durable_name: Some("gpbench-count".into()),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: Duration::from_secs(30),
                max_ack_pending: 20_000,
                ..Default::default()
            })
            .await
            .map_err(|e| anyhow::anyhow!("create consumer: {e}"))?;
        let loops = (0..nats.partitions.max(1))
            .map(|_| {
                let consumer = consumer.clone();
                let counter = counter.clone();
                tokio::spawn(async move {
                    loop {
                        let Ok(mut messages) = consumer.messages().await else {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        };
                        while let Some(Ok(m)) = messages.next().await {
                            counter.fetch_add(1, Ordering::Relaxed);
                            let _ = m.ack().await;
                        }
                    }
                })
            })
            .collect();
        Ok(Self {
            js,
            stream: stream.to_owned(),
            loops,
        })
    }

    async fn stop(self) {
        for l in &self.loops {
            l.abort();
        }
        let _ = self.js.delete_stream(&self.stream).await;
    }
}

/// A subscriber that counts what arrives and does nothing else.
async fn counting_subscriber(
    host: &str,
    port: u16,
    filter: &str,
    manual_acks: bool,
    counter: Arc<AtomicU64>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let mut opts = MqttOptions::new(
        format!("gpbench-count-{}", hex::encode(rand::random::<[u8; 4]>())),
        host,
        port,
    );
    opts.set_max_packet_size(1024 * 1024, 1024 * 1024);
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_manual_acks(manual_acks);
    let (client, mut events) = AsyncClient::new(opts, 1024);
    client.subscribe(filter, QoS::AtLeastOnce).await?;
    // Wait for the SUBACK so nothing published after this returns is missed.
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(anyhow::anyhow!("counting subscriber: {e}")),
            }
        }
    })
    .await
    .context("no SUBACK from Mosquitto")??;
    Ok(tokio::spawn(async move {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    counter.fetch_add(1, Ordering::Relaxed);
                    if manual_acks {
                        let _ = client.try_ack(&p);
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }))
}

fn command_output(cmd: &str, args: &[&str]) -> String {
    std::process::Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// CPUs, model and memory of this machine.
fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_default();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        })
        .map(|kib| format!("{:.0} GiB", kib / 1024.0 / 1024.0))
        .unwrap_or_default();
    format!(
        "{} CPUs ({model}), {mem}, {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        command_output("uname", &["-sr"])
    )
}

impl BenchReport {
    pub fn markdown(&self) -> String {
        let mut m = format!(
            "# End-to-end benchmark\n\n{}; {}.\n\n`{}`\n\n\
             | setup | messages/s | reads/s | ratio to Mosquitto alone | ratio to NATS alone | alerts expected / received / lost / dup | alert latency p50 / p99 / max | server CPU | server peak RSS | broker CPU |\n\
             |---|---|---|---|---|---|---|---|---|---|\n",
            self.date_utc, self.machine, self.command
        );
        for r in &self.results {
            let a = &r.report.alerts;
            let s = r.report.server.as_ref();
            let b = r.report.broker.as_ref();
            m.push_str(&format!(
                "| {} | {:.0} | {:.0} | {} | {} | {} / {} / {} / {} | {:.1} / {:.1} / {:.1} ms | {} | {} | {} |\n",
                r.label,
                r.messages_per_s,
                r.reads_per_s,
                r.ratio_to_mosquitto_alone
                    .map(|x| format!("{x:.2}"))
                    .unwrap_or_else(|| "-".into()),
                r.ratio_to_nats_alone
                    .map(|x| format!("{x:.2}"))
                    .unwrap_or_else(|| "-".into()),
                a.expected,
                a.received,
                a.lost,
                a.duplicated,
                a.latency_ms.p50,
                a.latency_ms.p99,
                a.latency_ms.max,
                s.map(|s| format!("{:.2} cores", s.cpu_cores)).unwrap_or_else(|| "-".into()),
                s.map(|s| format!("{:.0} MiB", s.peak_rss_mib)).unwrap_or_else(|| "-".into()),
                b.map(|b| format!("{:.2} cores", b.cpu_cores)).unwrap_or_else(|| "-".into()),
            ));
        }
        m.push_str(
            "\nWhere every message went (by the end of the settle time; the server's own counters):\n\n\
             | setup | offered | processed | rejected | counted as lost | unaccounted for |\n\
             |---|---|---|---|---|---|\n",
        );
        for r in &self.results {
            let offered = r.report.offered.messages;
            let Some(p) = r.report.processed.as_ref() else {
                continue;
            };
            let rejected: u64 = p.rejected_by_reason.values().sum();
            let lost: u64 = p.lost_by_reason.values().sum();
            m.push_str(&format!(
                "| {} | {offered} | {} | {rejected} | {lost} | {} |\n",
                r.label,
                p.batches_total,
                offered.saturating_sub(p.batches_total + rejected + lost),
            ));
        }
        m.push('\n');
        for r in &self.results {
            m.push_str(&r.report.markdown());
            for (n, w) in &r.server_warnings {
                m.push_str(&format!("Server log: {n} x `{}`\n", w.trim()));
            }
            m.push('\n');
        }
        m
    }
}
