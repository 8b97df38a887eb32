//! Composition: builds every part from a [`Config`], binds the ports, and returns a
//! [`Service`] handle whose [`Service::stop`] is the one shutdown path (cancel, drain, close).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use greenplate_alerting::{AdminService, Alerting, PatrolService};
use greenplate_registry::{Db, Registry, RegistryService, SecretBox};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, ConfigError, parse_key};
use crate::metrics::Metrics;
use crate::{broker, data_dir, http, pipeline};

/// The claim-signing key's name in the registry's shared server keys.
const CLAIMS_KEY: &str = "claims_signing";
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{what} address {addr} is not available: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Db(#[from] greenplate_registry::DbError),
    #[error(transparent)]
    Registry(#[from] greenplate_registry::Error),
    #[error(transparent)]
    Broker(#[from] broker::BrokerError),
    #[error("TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("gRPC reflection: {0}")]
    Reflection(String),
    #[error("the HTTP/JSON API's OpenAPI document: {0}")]
    OpenApi(#[from] crate::api::OpenApiError),
    #[error("alert log: {0}")]
    AlertLog(#[source] greenplate_alerting::AlertingError),
    #[error(
        "{0} is there: a key rotation was interrupted; run `greenplate registry rotate-key` \
         again to finish it"
    )]
    InterruptedRotation(PathBuf),
    #[error(
        "the database's sealed data does not open with the configured at-rest key \
         (secret_key / GREENPLATE_SECRET_KEY, or <data_dir>/secret.key)"
    )]
    WrongKey,
}

/// A running service.
#[derive(Debug)]
pub struct Service {
    /// The embedded broker's listen address, or the external broker's.
    pub mqtt_addr: SocketAddr,
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    /// The admin token in force (from config, env, or generated into the data dir).
    pub admin_token: String,
    pub metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    http_stop: CancellationToken,
    http_task: tokio::task::JoinHandle<()>,
    db: Db,
    /// Readers' seq windows and where their highs are stored (flushed after the drain).
    seqs: (Arc<pipeline::admit::Admissions>, Arc<Registry>),
}

impl Service {
    /// Starts everything. Ports given as 0 (gRPC, HTTP) are chosen by the OS; the MQTT
    /// address must be concrete (rumqttd cannot report a port it chose).
    pub async fn start(config: Config) -> Result<Self, StartError> {
        config.validate()?;
        let tls = config
            .tls
            .as_ref()
            .map(crate::tls::Identity::load)
            .transpose()?;
        let grpc = bind("gRPC", config.grpc.listen).await?;
        let http = bind("HTTP", config.http.listen).await?;
        let grpc_addr = local_addr("gRPC", &grpc, config.grpc.listen)?;
        let http_addr = local_addr("HTTP", &http, config.http.listen)?;

        let (registry, admin_token) = open_registry(&config).await?;
        let db = registry.db().clone();
        let alerting = Alerting::open(registry.clone(), config.alerting.routing()).await?;
        // Each crate registers its own metrics; /metrics encodes them all.
        let metrics = Arc::new(Metrics::new());
        let mut exported = prometheus_client::registry::Registry::with_prefix("greenplate");
        metrics.register(&mut exported);
        alerting.register_metrics(&mut exported);
        let forward_metrics = greenplate_alerting::forward::ForwardMetrics::default();
        forward_metrics.register(&mut exported);
        // Partner targets and the owners' texts (checked by Config::validate).
        let mut forward_targets = config.forward.targets().unwrap_or_default();
        let mut owner_sms = None;
        if let Some(sms) = config.sms.target().ok().flatten() {
            if let greenplate_alerting::forward::Sink::OwnerSms(gateway) = &sms.sink {
                gateway.register_metrics(&mut exported);
                owner_sms = Some(crate::web::OwnerSms::new(gateway.clone(), sms.timeout));
            }
            forward_targets.push(sms);
        }
        registry.register_metrics(&mut exported);
        let http_metrics = http::HttpMetrics::new();
        http_metrics.register(&mut exported);
        let web_metrics = crate::web::WebMetrics::new();
        web_metrics.register(&mut exported);
        let api_metrics = crate::api::ApiMetrics::new();
        api_metrics.register(&mut exported);
        let exported = Arc::new(exported);

        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        let engine =
            greenplate_alerting::engine::spawn(alerting.clone(), shutdown.clone(), &tracker);
        let history = alerting.history().clone();
        let store = pipeline::history::spawn(
            history.clone(),
            config.ingest.store(),
            metrics.clone(),
            &tracker,
        );
        let purged = metrics.clone();
        tracker.spawn(greenplate_alerting::history::run_retention(
            history,
            config.ingest.history_retention(),
            Duration::from_secs(3600),
            shutdown.clone(),
            move |n| {
                purged.passes_purged.inc_by(n);
            },
        ));
        // On PostgreSQL, streams are fed from the shared alert log (every node's alerts).
        if db.backend() == greenplate_registry::Backend::Postgres {
            // Listening and at the log's end before the service reports up, so no alert
            // committed from here on is behind the follower's cursor.
            let follower =
                greenplate_alerting::log::follow::start(alerting.clone(), config.database_url())
                    .await
                    .map_err(StartError::AlertLog)?;
            tracker.spawn(follower.run(shutdown.clone()));
        }
        // Other nodes on the same PostgreSQL: apply their committed changes here.
        let zones_of = alerting.clone();
        tracker.spawn(greenplate_registry::sync::listen(
            registry.clone(),
            config.database_url(),
            shutdown.clone(),
            move |change| {
                let alerting = zones_of.clone();
                async move {
                    use greenplate_registry::sync::Change;
                    if matches!(change, Change::Zones | Change::All)
                        && let Err(e) = alerting.reload_zones().await
                    {
                        tracing::error!(error = %e, "Reloading zones failed.");
                    }
                }
            },
        ));
        tracker.spawn(greenplate_alerting::command::expire(
            alerting.clone(),
            shutdown.clone(),
        ));
        tracker.spawn(greenplate_alerting::escalation::run(
            alerting.clone(),
            // Checked by Config::validate.
            config.alerting.escalation_rules().unwrap_or_default(),
            shutdown.clone(),
        ));
        tracker.spawn(greenplate_alerting::lookback::run(
            alerting.clone(),
            shutdown.clone(),
        ));
        tracker.spawn(greenplate_alerting::forward::run(
            alerting.clone(),
            forward_targets,
            forward_metrics,
            shutdown.clone(),
        ));
        tracker.spawn(greenplate_alerting::canary::watch(
            alerting.clone(),
            engine.clone(),
            shutdown.clone(),
        ));
        tracker.spawn(pipeline::status::watch(
            registry.readers().clone(),
            engine.clone(),
            Duration::from_secs(config.ingest.reader_offline_after_s),
            shutdown.clone(),
        ));
        // Each reader's seq window starts from the stored one (no replay across a restart),
        // and the windows are stored every second and at the end of the drain.
        let admissions = Arc::new(pipeline::admit::Admissions::default());
        admissions.restore(
            registry
                .reader_seqs()
                .await
                .map_err(greenplate_registry::Error::from)?,
        );
        tracker.spawn(pipeline::admit::persist_seqs(
            admissions.clone(),
            registry.clone(),
            Duration::from_secs(1),
            shutdown.clone(),
        ));
        let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
        let input = pipeline::spawn(
            pipeline::Context {
                readers: registry.readers().clone(),
                admissions: admissions.clone(),
                index: registry.index().clone(),
                engine,
                clones: Arc::new(greenplate_alerting::CloneWatch::new(
                    config.alerting.clone_rule(),
                )),
                metrics: metrics.clone(),
                skew: config.ingest.skew(),
                unsealed_allowed: config.mqtt.url.is_some()
                    || config.ingest.unsealed_on_embedded_broker,
                reader_messages_per_s: config.ingest.reader_messages_per_s,
                reader_messages_burst: config.ingest.reader_messages_burst,
                unauthentic_messages_per_s: config.ingest.unauthentic_messages_per_s,
                unauthentic_messages_burst: config.ingest.unauthentic_messages_burst,
                max_payload_bytes: config.mqtt.max_payload_bytes,
                smooth: config.ingest.smooth(),
                store,
            },
            workers,
            &tracker,
        );
        let mqtt_addr = match (&config.nats.url, &config.mqtt.url) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::Invalid(
                    "nats.url and mqtt.url name two sources of reader messages; use one".into(),
                )
                .into());
            }
            (Some(url), None) => {
                // The reader logins nats-server checks: written before connecting (this
                // node's own login is in the file too), then kept up to date.
                let logins = broker::nats::logins::Logins::new(
                    &config.nats,
                    registry.clone(),
                    metrics.clone(),
                )
                .map_err(|e| ConfigError::Invalid(e.to_string()))?;
                if let Some(mut logins) = logins {
                    if let Err(e) = logins.refresh().await {
                        logins.fail(&e);
                    }
                    tracker.spawn(logins.keep(
                        Duration::from_secs(config.nats.logins_check_s.max(1)),
                        shutdown.clone(),
                    ));
                }
                // Taking partitions over: first the windows their readers' owners stored.
                let on_acquire: broker::nats::OnAcquire = {
                    let (admissions, registry) = (admissions.clone(), registry.clone());
                    Arc::new(move || {
                        let (admissions, registry) = (admissions.clone(), registry.clone());
                        Box::pin(async move {
                            match registry.reader_seqs().await {
                                Ok(stored) => admissions.merge(stored),
                                Err(e) => tracing::error!(
                                    error = %e,
                                    "Cannot load the readers' stored seq windows; batches a \
                                     previous owner processed may be processed again."
                                ),
                            }
                        })
                    })
                };
                broker::nats::start(
                    &config.nats,
                    url,
                    metrics.clone(),
                    input,
                    on_acquire,
                    shutdown.clone(),
                    &tracker,
                )
                .await?;
                // Readers connect to NATS's MQTT listener, not to this node.
                config.mqtt.listen
            }
            (None, Some(url)) => {
                broker::external::start(
                    &config.mqtt,
                    url,
                    metrics.clone(),
                    input,
                    shutdown.clone(),
                    &tracker,
                )
                .await?
            }
            (None, None) => {
                let mqtt_tls = match (&config.tls, config.mqtt.tls) {
                    (_, false) => None,
                    (Some(t), true) => Some(broker::ListenerTls {
                        cert_file: t.cert_file.clone(),
                        key_file: t.key_file.clone(),
                    }),
                    (None, true) => {
                        return Err(ConfigError::Invalid(
                            "mqtt.tls needs the [tls] certificate and key files".into(),
                        )
                        .into());
                    }
                };
                broker::start(
                    &config.mqtt,
                    mqtt_tls.as_ref(),
                    registry.readers().clone(),
                    metrics.clone(),
                    input,
                    shutdown.clone(),
                    &tracker,
                )
                .await?;
                config.mqtt.listen
            }
        };

        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(greenplate_proto::FILE_DESCRIPTOR_SET)
            .build_v1()
            .map_err(|e| StartError::Reflection(e.to_string()))?;
        let (health, health_service) = tonic_health::server::health_reporter();
        for name in crate::health::SERVICES {
            health
                .set_service_status(name, tonic_health::ServingStatus::Serving)
                .await;
        }
        tracker.spawn(crate::health::run(health, db.clone(), shutdown.clone()));
        let mut grpc_builder = tonic::transport::Server::builder();
        if let Some(identity) = &tls {
            grpc_builder = grpc_builder
                .tls_config(identity.grpc())
                .map_err(|e| StartError::Tls(crate::tls::TlsError::Config(e.to_string())))?;
        }
        let grpc_server = grpc_builder
            // Streams one HTTP/2 connection may hold open (h2 tells the client, which waits).
            .max_concurrent_streams(Some(config.grpc.max_concurrent_streams))
            .http2_keepalive_interval(Some(Duration::from_secs(20)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            // A span per call, named by its method (`/greenplate.v1.Patrol/StreamAlerts`).
            .trace_fn(|req| tracing::info_span!("grpc", method = %req.uri().path()))
            .add_service(health_service)
            .add_service(AdminService::server(alerting.clone()))
            .add_service(greenplate_alerting::CommandService::server(
                alerting.clone(),
            ))
            .add_service(RegistryService::server(registry.clone()))
            .add_service(PatrolService::server(
                alerting.clone(),
                shutdown.clone(),
                config.grpc.max_streams_per_unit,
            ))
            .add_service(reflection)
            .serve_with_incoming_shutdown(
                // TCP_NODELAY on every accepted socket: tonic sets it only on listeners it
                // binds itself, and with Nagle on, an alert's DATA frames wait for the
                // client's delayed ACK (about 40 ms; benches/README).
                tonic::transport::server::TcpIncoming::from(grpc).with_nodelay(Some(true)),
                shutdown.clone().cancelled_owned(),
            );
        tracker.spawn(async move {
            if let Err(e) = grpc_server.await {
                tracing::error!(error = %e, "gRPC server failed.");
            }
        });

        // The HTTP port outlives the drain (it stops after the other tasks), so /readyz can
        // answer 503 while the node drains and /metrics shows the drain.
        let http_stop = CancellationToken::new();
        let totals_of = metrics.clone();
        let web = crate::web::WebState::new(
            alerting.clone(),
            Arc::new(move || crate::web::IngestTotals {
                reads: totals_of.reads.get(),
                batches: totals_of.batches_accepted.get(),
                sightings: totals_of.sightings_accepted.get(),
                rejected: totals_of.batches_rejected_all.get(),
            }),
            shutdown.clone(),
            Duration::from_secs(config.http.session_idle_s),
            config.http.map_tile_url.clone(),
            web_metrics,
            tls.is_some(),
        );
        let web = match owner_sms {
            Some(sms) => web.with_owner_sms(sms),
            None => web,
        };
        // Configured (checked by Config::validate), or the one every node on this database
        // shares: made by the first node to start, from its data directory's claims.key
        // where an earlier version left one, else new.
        let claims_key = match &config.claims.signing_key {
            Some(k) => k.clone(),
            None => {
                let file = config.data_dir.join(data_dir::CLAIMS_KEY_FILE);
                let earlier = match std::fs::read_to_string(&file) {
                    Ok(k) => Some(k.trim().to_owned()),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                    Err(source) => return Err(StartError::DataDir { path: file, source }),
                };
                registry
                    .shared_key(CLAIMS_KEY, || {
                        earlier
                            .unwrap_or_else(greenplate_alerting::claims::ClaimSigner::generate_hex)
                    })
                    .await
                    .map_err(greenplate_registry::Error::from)?
            }
        };
        let claims_signer = Arc::new(
            greenplate_alerting::claims::ClaimSigner::from_hex(&claims_key).map_err(|e| {
                StartError::Config(ConfigError::Invalid(format!("claims key: {e}")))
            })?,
        );
        // The HTTP/JSON API runs the gRPC services' own methods behind the same interceptor.
        let api = crate::api::router(
            registry.auth().interceptor(),
            RegistryService::new(registry.clone()),
            PatrolService::new(
                alerting.clone(),
                shutdown.clone(),
                config.grpc.max_streams_per_unit,
            ),
            api_metrics,
        )?;
        let claims = greenplate_alerting::claims::Claims {
            signer: claims_signer,
            after_days: config.claims.after_days,
        };
        let web = web.with_claims(claims.clone());
        let http_task = tokio::spawn(http::serve(
            http,
            http::router(
                exported,
                alerting.clone(),
                shutdown.clone(),
                web,
                claims,
                api,
            ),
            Duration::from_secs(config.http.header_timeout_s),
            tls.as_ref().map(|t| t.http_acceptor()).transpose()?,
            http_metrics,
            http_stop.clone(),
        ));

        tracing::info!(
            mqtt = %mqtt_addr,
            external_broker = config.mqtt.url.is_some(),
            grpc = %grpc_addr,
            http = %http_addr,
            data_dir = %config.data_dir.display(),
            "greenplate is serving."
        );
        Ok(Self {
            mqtt_addr,
            grpc_addr,
            http_addr,
            admin_token,
            metrics,
            shutdown,
            tracker,
            http_stop,
            http_task,
            db,
            seqs: (admissions, registry.clone()),
        })
    }

    /// A token that stops the service when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Stops taking work, drains the tasks (at most `grace`), and closes the database.
    /// Returns false if tasks were still running when the grace period ended.
    pub async fn stop(self, grace: Duration) -> bool {
        self.shutdown.cancel();
        self.tracker.close();
        let drained = tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_ok();
        if !drained {
            tracing::warn!(?grace, "Tasks still running after the grace period.");
        }
        // The workers are done: store the last seqs they took.
        let (admissions, registry) = &self.seqs;
        if let Err(e) = pipeline::admit::flush_seqs(admissions, registry).await {
            tracing::warn!(error = %e, "Could not store readers' highest seqs at the stop.");
        }
        self.http_stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(2), self.http_task).await;
        self.db.close().await;
        drained
    }
}

/// Opens the data directory (creating the admin token and at-rest key on first use), the
/// database, and the registry. Returns the registry and the admin token in force.
pub async fn open_registry(config: &Config) -> Result<(Arc<Registry>, String), StartError> {
    data_dir::create_dir(&config.data_dir).map_err(|source| StartError::DataDir {
        path: config.data_dir.clone(),
        source,
    })?;
    let admin_token = match &config.admin_token {
        Some(t) if !t.trim().is_empty() => t.trim().to_owned(),
        _ => read_or_create(&config.data_dir.join(data_dir::ADMIN_TOKEN_FILE), || {
            hex::encode(rand::random::<[u8; 24]>())
        })?,
    };
    let key = match &config.secret_key {
        Some(k) => parse_key(k)?,
        None => {
            data_dir::check_no_interrupted_rotation(&config.data_dir)
                .map_err(StartError::InterruptedRotation)?;
            parse_key(&read_or_create(
                &config.data_dir.join(data_dir::KEY_FILE),
                || hex::encode(SecretBox::generate_key()),
            )?)?
        }
    };
    if config.database_url.is_none() {
        let file = config.data_dir.join(data_dir::DATABASE_FILE);
        data_dir::restrict_database(&file)
            .map_err(|source| StartError::DataDir { path: file, source })?;
    }
    let db = Db::connect(&config.database_url()).await?;
    let registry = Registry::open(db, SecretBox::new(&key), &admin_token).await?;
    // Readers' secrets are opened above; with no reader yet, an owner's data tells whether
    // the key is the database's (a wrong key would fail only later, per request).
    let opens = greenplate_registry::rekey::opens_with(registry.db(), &SecretBox::new(&key))
        .await
        .map_err(greenplate_registry::Error::from)?;
    if opens == Some(false) {
        return Err(StartError::WrongKey);
    }
    Ok((registry, admin_token))
}

/// [`data_dir::read_or_create`], its error naming the file.
fn read_or_create(path: &Path, make: impl FnOnce() -> String) -> Result<String, StartError> {
    data_dir::read_or_create(path, make).map_err(|source| StartError::DataDir {
        path: path.to_owned(),
        source,
    })
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { what, addr, source })
}

fn local_addr(
    what: &'static str,
    l: &TcpListener,
    addr: SocketAddr,
) -> Result<SocketAddr, StartError> {
    l.local_addr()
        .map_err(|source| StartError::Bind { what, addr, source })
}
