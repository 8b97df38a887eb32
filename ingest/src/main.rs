//! `greenplate`: the service binary. Parses flags, loads config, starts the [`Service`],
//! waits for SIGINT/SIGTERM, drains.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use greenplate_ingest::config::{Config, DEFAULT_TOML};
use greenplate_ingest::{Service, StartError};

/// Exit code for a configuration error (EX_USAGE).
const EXIT_CONFIG: u8 = 64;

#[derive(Parser)]
#[command(
    name = "greenplate",
    version,
    about = "Theft alerts from roadside RFID reads of plate tags."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service: MQTT broker, gRPC (Admin, Registry, Patrol), HTTP (/healthz, /metrics).
    Serve(Box<ServeArgs>),
    /// Print the default configuration (TOML).
    GenerateConfig,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Configuration file (TOML); flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Data directory (SQLite database, generated admin token and at-rest key).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Database URL: sqlite://PATH or postgres://...
    #[arg(long)]
    database_url: Option<String>,
    /// MQTT listen address, HOST:PORT.
    #[arg(long)]
    mqtt_listen: Option<SocketAddr>,
    /// gRPC listen address, HOST:PORT.
    #[arg(long)]
    grpc_listen: Option<SocketAddr>,
    /// HTTP listen address, HOST:PORT.
    #[arg(long)]
    http_listen: Option<SocketAddr>,
    /// Admin bearer token.
    #[arg(long, env = "GREENPLATE_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// At-rest key, 64 hex digits.
    #[arg(long, env = "GREENPLATE_SECRET_KEY", hide_env_values = true)]
    secret_key: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::GenerateConfig => {
            print!("{DEFAULT_TOML}");
            ExitCode::SUCCESS
        }
        Command::Serve(args) => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| "info,rumqttd=warn".into()),
                )
                .init();
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("greenplate: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            runtime.block_on(serve(args))
        }
    }
}

async fn serve(args: Box<ServeArgs>) -> ExitCode {
    let mut config = match &args.config {
        Some(path) => match Config::from_file(path) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("greenplate: {e}");
                return ExitCode::from(EXIT_CONFIG);
            }
        },
        None => Config::default(),
    };
    if let Some(v) = args.data_dir {
        config.data_dir = v;
    }
    if let Some(v) = args.database_url {
        config.database_url = Some(v);
    }
    if let Some(v) = args.mqtt_listen {
        config.mqtt.listen = v;
    }
    if let Some(v) = args.grpc_listen {
        config.grpc.listen = v;
    }
    if let Some(v) = args.http_listen {
        config.http.listen = v;
    }
    if let Some(v) = args.admin_token {
        config.admin_token = Some(v);
    }
    if let Some(v) = args.secret_key {
        config.secret_key = Some(v);
    }
    let service = match Service::start(config).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("greenplate: {e}");
            return ExitCode::from(match e {
                StartError::Config(_) => EXIT_CONFIG,
                _ => 1,
            });
        }
    };
    wait_for_signal().await;
    tracing::info!("Stopping: draining work.");
    if service.stop(Duration::from_secs(10)).await {
        tracing::info!("Stopped.");
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
