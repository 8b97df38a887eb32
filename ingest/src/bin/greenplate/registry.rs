//! `greenplate registry import` (registrations from CSV) and `greenplate registry rotate-key`
//! (a new at-rest key).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use greenplate_ingest::rotate_key::Rotation;

use crate::args::StoreArgs;

#[derive(clap::Subcommand)]
pub enum RegistryCommand {
    /// Import existing registrations from a CSV file with the header
    /// tag_id,plate,owner_name,owner_id_number,owner_phone,make,model,color,frame_number.
    /// Re-running the same file changes nothing. Stop the service first, or restart it
    /// afterwards, so its in-memory index includes the imported bikes.
    Import(ImportArgs),
    /// Move the database to a new at-rest key (owners' ID numbers and phones, readers'
    /// secrets), in one transaction. Stop every node first. With the key in the data
    /// directory, the new key replaces it there (generated unless --new-key is given); with
    /// secret_key / GREENPLATE_SECRET_KEY, give --new-key and then set it on every node.
    RotateKey(RotateKeyArgs),
}

#[derive(clap::Args)]
pub struct RotateKeyArgs {
    /// The new key, 64 hex digits.
    #[arg(long, env = "GREENPLATE_NEW_SECRET_KEY", hide_env_values = true)]
    new_key: Option<String>,
    #[command(flatten)]
    store: StoreArgs,
}

#[derive(clap::Args)]
pub struct ImportArgs {
    /// The CSV file.
    file: PathBuf,
    #[command(flatten)]
    store: StoreArgs,
}

pub async fn run(command: RegistryCommand) -> anyhow::Result<ExitCode> {
    match command {
        RegistryCommand::Import(args) => import(args).await,
        RegistryCommand::RotateKey(args) => rotate_key(args).await,
    }
}

async fn rotate_key(args: RotateKeyArgs) -> anyhow::Result<ExitCode> {
    let config = args.store.load(Vec::new())?;
    match greenplate_ingest::rotate_key::rotate_key(&config, args.new_key.as_deref()).await? {
        Rotation::Rotated { rekeyed, key_file } => {
            println!(
                "Re-sealed {} owners, {} readers and {} server keys under the new key.",
                rekeyed.owners, rekeyed.readers, rekeyed.keys
            );
            match key_file {
                Some(f) => println!("The new key is in {}.", f.display()),
                None => println!(
                    "Now set the new key as secret_key (GREENPLATE_SECRET_KEY) on every node."
                ),
            }
        }
        Rotation::Finished { key_file } => println!(
            "An interrupted rotation had committed; its key is now in {}.",
            key_file.display()
        ),
        Rotation::AlreadyRotated => println!("The database is already under the new key."),
    }
    Ok(ExitCode::SUCCESS)
}

async fn import(args: ImportArgs) -> anyhow::Result<ExitCode> {
    let config = args.store.load(Vec::new())?;
    let (registry, _) = greenplate_ingest::app::open_registry(&config).await?;
    let file = std::fs::File::open(&args.file)
        .with_context(|| format!("cannot open {}", args.file.display()))?;
    // Count lines for the progress bar (cheap next to the import itself).
    let total = std::fs::read(&args.file)
        .map(|b| b.iter().filter(|&&c| c == b'\n').count().saturating_sub(1) as u64)
        .unwrap_or(0);
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{elapsed_precise} [{bar:40}] {pos}/{len} rows ({per_sec}, eta {eta})",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let caller = greenplate_registry::Caller {
        role: greenplate_registry::Role::Admin,
        id: format!("import:{}", args.file.display()),
    };
    let started = std::time::Instant::now();
    let result = registry
        .import_csv(&caller, std::io::BufReader::new(file), |n| {
            bar.set_position(n)
        })
        .await;
    bar.finish_and_clear();
    registry.db().close().await;
    let report = result.context("import failed")?;
    for r in &report.rejected {
        println!("line {}: {}", r.line, r.reason);
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{} rows in {secs:.1} s ({:.0} rows/s): {} imported, {} already there, {} rejected.",
        report.rows,
        report.rows as f64 / secs.max(1e-9),
        report.accepted,
        report.unchanged,
        report.rejected.len()
    );
    if report.accepted > 0 {
        println!(
            "Running nodes on PostgreSQL reload the new bikes now; restart a node on \
             SQLite so its hot index includes them."
        );
    }
    Ok(ExitCode::SUCCESS)
}
