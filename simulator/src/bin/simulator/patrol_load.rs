//! `simulator patrol-load`: alert latency with many concurrent patrol streams
//! ([`greenplate_simulator::patrol_load`]).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use greenplate_simulator::clients;
use greenplate_simulator::reader::now_ms;

use crate::args::admin_token;

#[derive(clap::Args)]
pub struct PatrolLoadArgs {
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

pub async fn run(args: PatrolLoadArgs) -> anyhow::Result<()> {
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
