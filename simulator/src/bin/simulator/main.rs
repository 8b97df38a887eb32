//! `simulator`: provisions a small town through the real APIs, drives sightings through the
//! real broker with one MQTT connection per reader, listens as the town's patrol units, and
//! reports which alerts arrived and how fast.
//!
//! Layout: one module per subcommand: [`town`], [`kiosk_load`], [`import_csv`],
//! [`patrol_load`], [`district`], [`bench`](mod@bench), [`fuzz_seeds`]; [`args`] holds what
//! they share.

mod args;
mod bench;
mod district;
mod fuzz_seeds;
mod import_csv;
mod kiosk_load;
mod patrol_load;
mod town;

use clap::{Parser, Subcommand};

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
    Town(town::TownArgs),
    /// Measure RegisterBike calls/s through gRPC with many concurrent kiosks.
    KioskLoad(kiosk_load::KioskLoadArgs),
    /// Write a CSV of synthetic registrations for `greenplate registry import`.
    ImportCsv(import_csv::ImportCsvArgs),
    /// Alert latency, publish to patrol receipt, with many concurrent patrol streams.
    PatrolLoad(patrol_load::PatrolLoadArgs),
    /// The district: readers on a road network over Chaoyang, registered bikes riding it with
    /// a daily rhythm, thefts and other scenarios, every patrol unit listening; reports what
    /// was offered, processed and alerted (JSON and Markdown).
    District(Box<district::DistrictArgs>),
    /// End-to-end benchmark, side by side: greenplate with its embedded broker, greenplate
    /// behind Mosquitto, Mosquitto alone; writes a JSON and a Markdown report.
    Bench(bench::BenchArgs),
    /// Write the binary seeds of the fuzz targets open_sealed and decode_batch (after a
    /// change to the contract; see ingest/fuzz/README.md).
    FuzzSeeds(fuzz_seeds::FuzzSeedsArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    match Cli::parse().command {
        Command::Town(args) => town::run(args).await,
        Command::KioskLoad(args) => kiosk_load::run(args).await,
        Command::ImportCsv(args) => import_csv::run(args),
        Command::PatrolLoad(args) => patrol_load::run(args).await,
        Command::District(args) => district::run(*args).await,
        Command::Bench(args) => bench::run(args).await,
        Command::FuzzSeeds(args) => fuzz_seeds::run(args),
    }
}
