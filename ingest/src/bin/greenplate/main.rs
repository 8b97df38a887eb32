//! `greenplate`: the service binary. Parses flags, loads config, and hands each subcommand to
//! its module; `serve` starts the [`greenplate_ingest::Service`], waits for SIGINT/SIGTERM and
//! drains. Errors are one line on stderr; a configuration error exits with 64 (EX_USAGE).
//!
//! Layout: one module per subcommand: [`serve`], [`registry`] (`import`, `rotate-key`),
//! [`patrol`], [`zones`]; [`args`] holds the flags they share.

mod args;
mod patrol;
mod registry;
mod serve;
mod zones;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use greenplate_ingest::config::{ConfigError, DEFAULT_TOML};
use greenplate_ingest::logging::{self, LogFormat};

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
    Serve(Box<serve::ServeArgs>),
    /// Print the default configuration (TOML).
    GenerateConfig,
    /// Registry maintenance.
    #[command(subcommand)]
    Registry(registry::RegistryCommand),
    /// The patrol client: print a unit's alerts as they arrive; acknowledge or resolve.
    Patrol(patrol::PatrolArgs),
    /// Zone maintenance.
    #[command(subcommand)]
    Zones(zones::ZonesCommand),
}

/// An error the user fixes by changing what they typed (exit code 64).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Usage(String);

fn main() -> anyhow::Result<ExitCode> {
    let result = match Cli::parse().command {
        Command::GenerateConfig => {
            print!("{DEFAULT_TOML}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve(args) => serve::run(*args),
        Command::Registry(c) => on_runtime(LogFormat::Text, "warn", registry::run(c)),
        Command::Patrol(args) => on_runtime(LogFormat::Text, "warn", patrol::run(args)),
        Command::Zones(c) => on_runtime(LogFormat::Text, "warn", zones::run(c)),
    };
    Ok(result.unwrap_or_else(report))
}

/// Sets up logging and a runtime, and runs a command on it.
fn on_runtime(
    format: LogFormat,
    default_log: &str,
    command: impl std::future::Future<Output = anyhow::Result<ExitCode>>,
) -> anyhow::Result<ExitCode> {
    let _telemetry = logging::init(format, default_log, None)?;
    tokio::runtime::Runtime::new()
        .map_err(|e| anyhow::anyhow!("cannot start the runtime: {e}"))?
        .block_on(command)
}

/// Prints an error as one line and picks the exit code: 64 for what the user must fix in
/// their configuration or flags (TLS certificate and key files among them), 1 for anything
/// else.
fn report(e: anyhow::Error) -> ExitCode {
    eprintln!("greenplate: {}", format!("{e:#}").replace('\n', " "));
    let usage = e.chain().any(|c| {
        c.is::<Usage>()
            || c.is::<ConfigError>()
            || matches!(
                c.downcast_ref::<greenplate_ingest::StartError>(),
                Some(
                    greenplate_ingest::StartError::Config(_)
                        | greenplate_ingest::StartError::Tls(_)
                )
            )
    });
    ExitCode::from(if usage { EXIT_CONFIG } else { 1 })
}
