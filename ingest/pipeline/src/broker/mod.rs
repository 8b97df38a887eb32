//! The embedded MQTT broker (rumqttd), wrapped so the rest of the service does not care
//! about its quirks:
//! - rumqttd has no shutdown API: its listener runs as a task here and is dropped when the
//!   service stops (the router thread lives until the process exits).
//! - it cannot report a port bound to 0, so the caller gives a concrete address (tests
//!   reserve a free port first) and a port in use is found before starting.
//! - authentication asks the registry's reader directory (client id = username = reader id,
//!   password = the reader's secret); a refused client gets its socket closed.
//! - readers get no dynamic filters: a publish to a topic nobody subscribed is refused and
//!   the reader disconnected, so a reader cannot make the broker allocate logs at will.
//! - the in-process link must be woken after `Unschedule`, or it stalls after ~200 messages.
//! - its listener binds asynchronously, so `start` returns only once a probe client has
//!   completed an MQTT CONNECT (with a one-time credential).
//!
//! Ingest receives what readers publish as [`Inbound`] messages on a bounded channel.
//! [`external`] is the other way in: an external broker with a shared subscription;
//! [`peers`] lets a live node drain the broker session of a dead one; [`client`] is the MQTT
//! client plumbing both use (URL, options, CONNACK, the manual [`client::Ack`]).

pub mod client;
pub mod external;
pub mod peers;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use greenplate_proto::topics;
use greenplate_registry::Readers;
use rumqttd::local::{LinkRx, LinkTx};
use rumqttd::protocol::v4::V4;
use rumqttd::{
    ConnectionSettings, LinkType, Notification, Router, RouterConfig, Server, ServerSettings,
};
use subtle::ConstantTimeEq;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::MqttConfig;
use crate::metrics::Metrics;

/// The id of the server's own in-process MQTT client (reader ids may not start with
/// `greenplate`, so no reader can take it).
pub const INGEST_CLIENT_ID: &str = "greenplate-ingest";

/// The client id of the readiness probe that connects once at start.
const PROBE_CLIENT_ID: &str = "greenplate-probe";

/// How long the broker may take to start listening.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// One message a reader published.
#[derive(Debug, Clone)]
pub struct Inbound {
    pub topic: Bytes,
    pub payload: Bytes,
    /// When the broker handed it to ingest (the start of the alert-latency histogram).
    pub received_at: std::time::Instant,
    /// From an external broker: acknowledges the message once every holder dropped it.
    pub ack: Option<Arc<client::Ack>>,
}

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("MQTT address {addr} is not available: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot attach ingest to the MQTT router: {0}")]
    Link(String),
    #[error("external MQTT broker: {0}")]
    External(String),
    #[error(
        "MQTT broker did not accept connections on {addr} within {READY_TIMEOUT:?}: {last_error}"
    )]
    NotReady {
        addr: SocketAddr,
        last_error: String,
    },
}

/// Starts the embedded broker on `config.listen` and forwards every reader publish to `out`.
pub async fn start(
    config: &MqttConfig,
    readers: Arc<Readers>,
    metrics: Arc<Metrics>,
    out: mpsc::Sender<Inbound>,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) -> Result<(), BrokerError> {
    let addr = config.listen;
    // rumqttd binds inside its accept loop and only logs a failure; find it here instead.
    drop(std::net::TcpListener::bind(addr).map_err(|source| BrokerError::Bind { addr, source })?);

    let segment = 4 * 1024 * 1024;
    let router = Router::new(
        0,
        RouterConfig {
            max_connections: config.max_connections + 1,
            max_outgoing_packet_count: 200,
            max_segment_size: segment,
            max_segment_count: (config.buffer_mib * 1024 * 1024 / segment).max(1),
            custom_segment: None,
            initialized_filters: Some(vec![
                topics::SIGHTINGS_FILTER.to_owned(),
                topics::STATUS_FILTER.to_owned(),
            ]),
            shared_subscriptions_strategy: Default::default(),
        },
    );
    let router_tx = router.spawn();

    let link_router_tx = router_tx.clone();
    let (mut link_tx, link_rx) = tokio::task::spawn_blocking(move || {
        rumqttd::local::LinkBuilder::new(INGEST_CLIENT_ID, link_router_tx)
            .build()
            .map(|(tx, rx, _ack)| (tx, rx))
            .map_err(|e| BrokerError::Link(e.to_string()))
    })
    .await
    .map_err(|e| BrokerError::Link(e.to_string()))??;
    for filter in [topics::SIGHTINGS_FILTER, topics::STATUS_FILTER] {
        link_tx
            .subscribe(filter)
            .map_err(|e| BrokerError::Link(e.to_string()))?;
    }

    let mut connections = ConnectionSettings {
        connection_timeout_ms: 10_000,
        max_payload_size: config.max_payload_bytes,
        max_inflight_count: 100,
        auth: None,
        external_auth: None,
        dynamic_filters: false,
    };
    // A one-time credential for the readiness probe below; nothing else can log in with
    // the reserved `greenplate` client-id prefix.
    let probe_secret = hex::encode(rand::random::<[u8; 16]>());
    let probe_check = probe_secret.clone();
    connections.set_auth_handler(move |client_id: String, user: String, pass: String| {
        let probe = client_id == PROBE_CLIENT_ID
            && user == PROBE_CLIENT_ID
            && bool::from(pass.as_bytes().ct_eq(probe_check.as_bytes()));
        let ok = probe || readers.authenticate(&client_id, &user, &pass);
        if !ok {
            metrics.mqtt_auth_failures.inc();
            tracing::warn!(client_id = %client_id, user = %user, "Refused an MQTT login.");
        }
        async move { ok }
    });
    let settings = ServerSettings {
        name: "greenplate-mqtt".into(),
        listen: addr,
        tls: None,
        next_connection_delay_ms: 0,
        connections,
    };
    let mut server = Server::new(settings, router_tx, V4);
    let stop = shutdown.clone();
    tracker.spawn(async move {
        tokio::select! {
            r = server.start(LinkType::Remote) => {
                if let Err(e) = r {
                    tracing::error!(error = %e, "MQTT listener failed.");
                }
            }
            _ = stop.cancelled() => {}
        }
    });
    tracker.spawn(forward(link_tx, link_rx, out, shutdown.clone()));
    let (probe, mut probe_events) = wait_ready(addr, &probe_secret).await?;
    // Keep the probe connected until shutdown: rumqttd logs every client disconnect as an
    // error, and a connection that stays is harmless.
    tracker.spawn(async move {
        let _probe = probe;
        loop {
            tokio::select! {
                r = probe_events.poll() => if r.is_err() {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                },
                _ = shutdown.cancelled() => break,
            }
        }
    });
    Ok(())
}

/// rumqttd binds inside its accept loop; wait until it answers a real MQTT CONNECT, so the
/// service is only reported up once readers can connect.
async fn wait_ready(
    addr: SocketAddr,
    secret: &str,
) -> Result<(rumqttc::AsyncClient, rumqttc::EventLoop), BrokerError> {
    let host = match addr.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => "127.0.0.1".to_owned(),
        ip if ip.is_unspecified() => "::1".to_owned(),
        ip => ip.to_string(),
    };
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    let mut last_error = String::from("no attempt");
    while tokio::time::Instant::now() < deadline {
        let mut opts = rumqttc::MqttOptions::new(PROBE_CLIENT_ID, host.as_str(), addr.port());
        opts.set_credentials(PROBE_CLIENT_ID, secret);
        let (client, mut events) = rumqttc::AsyncClient::new(opts, 1);
        let attempt = tokio::time::timeout(Duration::from_secs(2), async {
            loop {
                match events.poll().await {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => return Ok(()),
                    Ok(_) => {}
                    Err(e) => return Err(e.to_string()),
                }
            }
        })
        .await;
        match attempt {
            Ok(Ok(())) => return Ok((client, events)),
            Ok(Err(e)) => last_error = e,
            Err(_) => last_error = "timed out waiting for CONNACK".into(),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Err(BrokerError::NotReady { addr, last_error })
}

/// Moves publishes from the router link to ingest, waking the link when the router pauses it.
async fn forward(
    // Held so the router keeps the link's subscription for as long as it is read.
    _link_tx: LinkTx,
    mut link: LinkRx,
    out: mpsc::Sender<Inbound>,
    shutdown: CancellationToken,
) {
    loop {
        let next = tokio::select! {
            n = link.next() => n,
            _ = shutdown.cancelled() => break,
        };
        match next {
            Ok(Some(Notification::Forward(f))) => {
                let msg = Inbound {
                    topic: f.publish.topic,
                    payload: f.publish.payload,
                    received_at: std::time::Instant::now(),
                    ack: None,
                };
                if out.send(msg).await.is_err() {
                    break;
                }
            }
            Ok(Some(Notification::Unschedule)) => {
                if let Err(e) = link.wake().await {
                    tracing::error!(error = %e, "Cannot wake the ingest link.");
                    break;
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::error!(error = %e, "The ingest link to the MQTT router failed.");
                break;
            }
        }
    }
}
