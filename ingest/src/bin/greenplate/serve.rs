//! `greenplate serve`: load the config, start the service, tell systemd it is ready, wait for
//! SIGINT/SIGTERM, drain.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use greenplate_ingest::Service;
use greenplate_ingest::logging::{self, LogFormat};

use crate::args::{StoreArgs, push};

/// How long the drain may take before the process gives up on it.
const DRAIN_GRACE: Duration = Duration::from_secs(10);

#[derive(clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// MQTT listen address of the embedded broker, HOST:PORT.
    #[arg(long)]
    mqtt_listen: Option<SocketAddr>,
    /// Use an external MQTT broker, mqtt://HOST[:PORT], instead of the embedded one.
    #[arg(long, env = "GREENPLATE_MQTT_URL")]
    mqtt_url: Option<String>,
    /// Take reader messages from NATS JetStream, nats://HOST:PORT[,...], instead of an MQTT
    /// broker (config `nats.url`).
    #[arg(long, env = "GREENPLATE_NATS_URL")]
    nats_url: Option<String>,
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
    /// Log lines as text or as JSON objects (config `log.format`).
    #[arg(long, env = "GREENPLATE_LOG_FORMAT", value_enum)]
    log_format: Option<LogFormat>,
    /// Also export spans to this OpenTelemetry collector, OTLP/gRPC, e.g.
    /// http://otel-collector:4317 (config `log.otlp_endpoint`).
    #[arg(long)]
    otlp_endpoint: Option<String>,
}

pub fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let mut o = Vec::new();
    push(&mut o, "mqtt.listen", args.mqtt_listen);
    push(&mut o, "mqtt.url", args.mqtt_url);
    push(&mut o, "nats.url", args.nats_url);
    push(&mut o, "mqtt.client_id", args.mqtt_client_id);
    push(&mut o, "mqtt.username", args.mqtt_username);
    push(&mut o, "mqtt.password", args.mqtt_password);
    push(&mut o, "grpc.listen", args.grpc_listen);
    push(&mut o, "http.listen", args.http_listen);
    push(&mut o, "admin_token", args.admin_token);
    push(
        &mut o,
        "log.format",
        args.log_format.map(|f| match f {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }),
    );
    push(&mut o, "log.otlp_endpoint", args.otlp_endpoint);
    let config = args.store.load(o)?;
    let runtime = tokio::runtime::Runtime::new()?;
    // Inside the runtime: the OTLP exporter's gRPC client needs one.
    let telemetry = runtime.block_on(async {
        logging::init(
            config.log.format,
            "info,rumqttd=warn",
            config.log.otlp_endpoint.as_deref(),
        )
    })?;
    let code = runtime.block_on(async move {
        let service = Service::start(config).await?;
        // systemd (Type=notify): every listener is bound and the data is loaded. Without a
        // NOTIFY_SOCKET this does nothing.
        if let Err(e) = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]) {
            tracing::warn!(error = %e, "Could not tell systemd the service is ready.");
        }
        wait_for_signal().await;
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
        tracing::info!("Stopping: draining work.");
        if service.stop(DRAIN_GRACE).await {
            tracing::info!("Stopped.");
            Ok::<_, anyhow::Error>(ExitCode::SUCCESS)
        } else {
            Ok(ExitCode::FAILURE)
        }
    });
    // Within the runtime too: the exporter's client runs on it.
    runtime.block_on(async { telemetry.shutdown() });
    code
}

async fn wait_for_signal() {
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
