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
    /// Registry maintenance.
    #[command(subcommand)]
    Registry(RegistryCommand),
    /// The patrol client: print a unit's alerts as they arrive; acknowledge or resolve.
    Patrol(PatrolArgs),
    /// Zone maintenance.
    #[command(subcommand)]
    Zones(ZonesCommand),
}

#[derive(Subcommand)]
enum ZonesCommand {
    /// Add the zones of a GeoJSON FeatureCollection through the running service (each
    /// feature: properties.id, optional name, optional kind patrol|watch).
    Import {
        file: PathBuf,
        /// greenplate gRPC URL.
        #[arg(long, default_value = "http://127.0.0.1:50051")]
        server: String,
        /// Admin token.
        #[arg(long, env = "GREENPLATE_ADMIN_TOKEN", hide_env_values = true)]
        admin_token: String,
    },
}

#[derive(clap::Args)]
struct PatrolArgs {
    /// greenplate gRPC URL.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    server: String,
    /// The patrol unit's token.
    #[arg(long, env = "GREENPLATE_TOKEN", hide_env_values = true)]
    token: String,
    /// Print alerts after this seq (0: everything this unit was sent).
    #[arg(long, default_value_t = 0)]
    resume_after: u64,
    #[command(subcommand)]
    action: Option<PatrolAction>,
}

#[derive(Subcommand)]
enum PatrolAction {
    /// Take an incident on.
    Ack {
        incident_id: String,
        #[arg(long, default_value = "")]
        note: String,
    },
    /// Close an incident.
    Resolve {
        incident_id: String,
        /// recovered (takes the bike off the hotlist), false-alarm or lost-track.
        #[arg(long)]
        outcome: OutcomeArg,
        #[arg(long, default_value = "")]
        note: String,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum OutcomeArg {
    Recovered,
    FalseAlarm,
    LostTrack,
}

#[derive(Subcommand)]
enum RegistryCommand {
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
struct RotateKeyArgs {
    /// The new key, 64 hex digits.
    #[arg(long, env = "GREENPLATE_NEW_SECRET_KEY", hide_env_values = true)]
    new_key: Option<String>,
    #[command(flatten)]
    store: StoreArgs,
}

#[derive(clap::Args)]
struct ImportArgs {
    /// The CSV file.
    file: PathBuf,
    #[command(flatten)]
    store: StoreArgs,
}

/// Where the data lives (the same flags as `serve`).
#[derive(clap::Args)]
struct StoreArgs {
    /// Configuration file (TOML); flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Data directory (SQLite database, generated admin token and at-rest key).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Database URL: sqlite://PATH or postgres://...
    #[arg(long, env = "GREENPLATE_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// At-rest key, 64 hex digits.
    #[arg(long, env = "GREENPLATE_SECRET_KEY", hide_env_values = true)]
    secret_key: Option<String>,
}

impl StoreArgs {
    /// The config file (or defaults) with these flags applied.
    fn load(&self) -> Result<Config, greenplate_ingest::config::ConfigError> {
        let mut config = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        if let Some(v) = &self.data_dir {
            config.data_dir = v.clone();
        }
        if let Some(v) = &self.database_url {
            config.database_url = Some(v.clone());
        }
        if let Some(v) = &self.secret_key {
            config.secret_key = Some(v.clone());
        }
        Ok(config)
    }
}

#[derive(clap::Args)]
struct ServeArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// MQTT listen address of the embedded broker, HOST:PORT.
    #[arg(long)]
    mqtt_listen: Option<SocketAddr>,
    /// Use an external MQTT broker, mqtt://HOST[:PORT], instead of the embedded one.
    #[arg(long, env = "GREENPLATE_MQTT_URL")]
    mqtt_url: Option<String>,
    /// This node's client id on the external broker (unique per node).
    #[arg(long, env = "GREENPLATE_MQTT_CLIENT_ID")]
    mqtt_client_id: Option<String>,
    /// Username on the external broker.
    #[arg(long, env = "GREENPLATE_MQTT_USERNAME")]
    mqtt_username: Option<String>,
    /// Password on the external broker.
    #[arg(long, env = "GREENPLATE_MQTT_PASSWORD", hide_env_values = true)]
    mqtt_password: Option<String>,
    /// gRPC listen address, HOST:PORT.
    #[arg(long)]
    grpc_listen: Option<SocketAddr>,
    /// HTTP listen address, HOST:PORT.
    #[arg(long)]
    http_listen: Option<SocketAddr>,
    /// Admin bearer token.
    #[arg(long, env = "GREENPLATE_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::GenerateConfig => {
            print!("{DEFAULT_TOML}");
            ExitCode::SUCCESS
        }
        Command::Serve(args) => run(serve(args), "info,rumqttd=warn"),
        Command::Registry(RegistryCommand::Import(args)) => run(import(args), "warn"),
        Command::Registry(RegistryCommand::RotateKey(args)) => run(rotate_key(args), "warn"),
        Command::Patrol(args) => run(patrol(args), "warn"),
        Command::Zones(ZonesCommand::Import {
            file,
            server,
            admin_token,
        }) => run(zones_import(file, server, admin_token), "warn"),
    }
}

/// Sets up logging and a runtime, and runs a command on it.
fn run(command: impl std::future::Future<Output = ExitCode>, default_log: &str) -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| default_log.into()),
        )
        .init();
    match tokio::runtime::Runtime::new() {
        Ok(rt) => rt.block_on(command),
        Err(e) => {
            eprintln!("greenplate: cannot start the runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn zones_import(file: PathBuf, server: String, admin_token: String) -> ExitCode {
    use greenplate_ingest::zones_import::{Outcome, import};
    let text = match std::fs::read_to_string(&file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("greenplate: cannot read {}: {e}", file.display());
            return ExitCode::FAILURE;
        }
    };
    let client = tonic::transport::Endpoint::from_shared(server.clone())
        .map(|e| e.connect_lazy())
        .map_err(|e| e.to_string())
        .and_then(|ch| {
            greenplate_proto::auth::Bearer::new(&admin_token)
                .map(|b| greenplate_proto::v1::admin_client::AdminClient::with_interceptor(ch, b))
                .map_err(|e| e.to_string())
        });
    let mut client = match client {
        Ok(c) => c,
        Err(e) => {
            eprintln!("greenplate: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match import(&mut client, &text).await {
        Ok(outcomes) => {
            let mut rejected = 0;
            for o in &outcomes {
                match o {
                    Outcome::Added(id) => println!("added {id}"),
                    Outcome::AlreadyThere(id) => println!("already there {id}"),
                    Outcome::Rejected { feature, reason } => {
                        rejected += 1;
                        println!("feature {feature} rejected: {reason}");
                    }
                }
            }
            if rejected == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("greenplate: {}: {e}", file.display());
            ExitCode::FAILURE
        }
    }
}

async fn patrol(args: PatrolArgs) -> ExitCode {
    use greenplate_ingest::patrol_client as pc;
    use greenplate_proto::v1::Outcome;
    let mut client = match pc::connect(&args.server, &args.token).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("greenplate: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let result = match args.action {
        None => pc::follow(&mut client, args.resume_after, &mut std::io::stdout())
            .await
            .map(|_| ()),
        Some(PatrolAction::Ack { incident_id, note }) => {
            pc::acknowledge(&mut client, &incident_id, &note)
                .await
                .map(|i| println!("{} {}", i.incident_id, i.state().as_str_name()))
        }
        Some(PatrolAction::Resolve {
            incident_id,
            outcome,
            note,
        }) => {
            let outcome = match outcome {
                OutcomeArg::Recovered => Outcome::Recovered,
                OutcomeArg::FalseAlarm => Outcome::FalseAlarm,
                OutcomeArg::LostTrack => Outcome::LostTrack,
            };
            pc::resolve(&mut client, &incident_id, outcome, &note)
                .await
                .map(|i| {
                    println!(
                        "{} {} {}",
                        i.incident_id,
                        i.state().as_str_name(),
                        i.outcome().as_str_name()
                    )
                })
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("greenplate: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn rotate_key(args: RotateKeyArgs) -> ExitCode {
    use greenplate_ingest::rotate_key::Rotation;
    let config = match args.store.load() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("greenplate: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match greenplate_ingest::rotate_key::rotate_key(&config, args.new_key.as_deref()).await {
        Ok(Rotation::Rotated { rekeyed, key_file }) => {
            println!(
                "Re-sealed {} owners and {} readers under the new key.",
                rekeyed.owners, rekeyed.readers
            );
            match key_file {
                Some(f) => println!("The new key is in {}.", f.display()),
                None => println!(
                    "Now set the new key as secret_key (GREENPLATE_SECRET_KEY) on every node."
                ),
            }
            ExitCode::SUCCESS
        }
        Ok(Rotation::Finished { key_file }) => {
            println!(
                "An interrupted rotation had committed; its key is now in {}.",
                key_file.display()
            );
            ExitCode::SUCCESS
        }
        Ok(Rotation::AlreadyRotated) => {
            println!("The database is already under the new key.");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("greenplate: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn import(args: ImportArgs) -> ExitCode {
    let config = match args.store.load() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("greenplate: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let (registry, _) = match greenplate_ingest::app::open_registry(&config).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("greenplate: {e}");
            return ExitCode::FAILURE;
        }
    };
    let file = match std::fs::File::open(&args.file) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("greenplate: cannot open {}: {e}", args.file.display());
            return ExitCode::FAILURE;
        }
    };
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
    match result {
        Ok(report) => {
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
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("greenplate: import failed: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: Box<ServeArgs>) -> ExitCode {
    let mut config = match args.store.load() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("greenplate: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if let Some(v) = args.mqtt_listen {
        config.mqtt.listen = v;
    }
    if let Some(v) = args.mqtt_url {
        config.mqtt.url = Some(v);
    }
    if let Some(v) = args.mqtt_client_id {
        config.mqtt.client_id = Some(v);
    }
    if let Some(v) = args.mqtt_username {
        config.mqtt.username = Some(v);
    }
    if let Some(v) = args.mqtt_password {
        config.mqtt.password = Some(v);
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
