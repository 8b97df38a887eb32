//! The embedded MQTT broker (rumqttd), wrapped so the rest of the service does not care
//! about its quirks:
//! - rumqttd has no shutdown API: its listener runs as a task here and is dropped when the
//!   service stops (the router thread lives until the process exits).
//! - it cannot report a port bound to 0, so the caller gives a concrete address (tests
//!   reserve a free port first) and a port in use is found before starting.
//! - authentication asks the registry's reader directory (client id = username = reader id,
//!   password = the reader's secret); a refused client gets its socket closed.
//! - readers get no dynamic filters, and [`acl`] holds each connection to the contract:
//!   it publishes on its own two topics only, retains nothing but its will, subscribes to
//!   nothing; anything else closes the connection and is counted.
//! - the in-process link must be woken after `Unschedule`, or it stalls after ~200 messages.
//! - its listener binds asynchronously, so `start` returns only once a probe client has
//!   completed an MQTT CONNECT (with a one-time credential).
//!
//! - it acknowledges a QoS 1 publish once its router has appended it to a ring of segments,
//!   and overwrites the oldest segment when ingest falls behind. Ingest reads the ring
//!   straight into the pipeline's workers (no relay in between) and counts what was
//!   overwritten before it was read: each message's offset in its filter's log is
//!   consecutive, so a jump is exactly the number lost
//!   (`greenplate_ingest_messages_lost_total{reason="broker_ring_overwritten"}`).
//!
//! Ingest receives what readers publish as [`Inbound`] messages, sharded onto the workers.
//! [`external`] is another way in: an external broker with a shared subscription, and
//! [`client`] its MQTT client plumbing (URL, options, CONNACK, the manual
//! [`client::Ack`]). [`nats`] is the way in for several nodes: NATS JetStream.

pub mod acl;
pub mod client;
pub mod external;
pub mod nats;

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
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::MqttConfig;
use crate::metrics::{LOST_RING_OVERWRITTEN, Metrics};
use crate::{Input, RateLimitedLog};

/// The id of the server's own in-process MQTT client (reader ids may not start with
/// `greenplate`, so no reader can take it).
pub const INGEST_CLIENT_ID: &str = "greenplate-ingest";

/// The client id of the readiness probe that connects once at start.
const PROBE_CLIENT_ID: &str = "greenplate-probe";

/// How long the broker may take to start listening.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// The size of one segment of the ring, at most (rumqttd's floor is 1 KiB).
const MAX_SEGMENT_BYTES: usize = 4 * 1024 * 1024;

/// Segments in the ring, at least, so that overwriting one drops a small part of it.
const MIN_SEGMENTS: usize = 8;

/// At shutdown, the ring is read until it has been quiet this long (or for at most
/// [`DRAIN_MAX`]), so what readers had been acknowledged is processed before the workers stop.
const DRAIN_QUIET: Duration = Duration::from_millis(200);
const DRAIN_MAX: Duration = Duration::from_secs(5);

/// What acknowledges a message to its source when its last holder drops it.
pub type Hold = Arc<dyn std::any::Any + Send + Sync>;

/// What a source that redelivers (NATS JetStream) says about one message, and hears back.
pub trait Delivery: Send + Sync {
    /// The message was delivered before and not acknowledged: a batch seq seen already is
    /// then a repeat of this source's, not a replay by someone else.
    fn redelivered(&self) -> bool;
    /// Whether this node may still process it: it holds the lease of the message's
    /// partition (a node that was paused past its lease must leave the message to the
    /// node that holds it now).
    fn owned(&self) -> bool;
    /// Runs `f` once the message is settled (processed all the way and acknowledged), and
    /// not if it is abandoned.
    fn on_settled(&self, f: Box<dyn FnOnce() + Send>);
    /// Gives the message back unprocessed: it is not acknowledged, so the source delivers
    /// it again (after its ack-wait).
    fn abandon(&self);
}

/// One message a reader published.
#[derive(Clone)]
pub struct Inbound {
    pub topic: Bytes,
    pub payload: Bytes,
    /// When the broker handed it to ingest (the start of the alert-latency histogram).
    pub received_at: std::time::Instant,
    /// From an external broker or NATS: acknowledges the message once every holder dropped
    /// it ([`client::Ack`], [`nats::NatsAck`]).
    pub ack: Option<Hold>,
    /// From NATS: what the source says about this delivery ([`Delivery`]).
    pub delivery: Option<Arc<dyn Delivery>>,
}

impl std::fmt::Debug for Inbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inbound")
            .field("topic", &String::from_utf8_lossy(&self.topic))
            .field("payload_bytes", &self.payload.len())
            .field("acknowledged_later", &self.ack.is_some())
            .field(
                "redelivered",
                &self.delivery.as_ref().map(|d| d.redelivered()),
            )
            .finish()
    }
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
    #[error("NATS: {0}")]
    Nats(String),
    #[error(
        "MQTT broker did not accept connections on {addr} within {READY_TIMEOUT:?}: {last_error}"
    )]
    NotReady {
        addr: SocketAddr,
        last_error: String,
    },
}

/// The ring's segment size and count for a ring of `bytes`: segments of at most 4 MiB, at
/// least [`MIN_SEGMENTS`] of them, none under rumqttd's 1 KiB floor.
pub fn ring_segments(bytes: usize) -> (usize, usize) {
    let size = (bytes / MIN_SEGMENTS).clamp(1024, MAX_SEGMENT_BYTES);
    (size, (bytes / size).max(1))
}

/// The certificate chain and key (PEM files) of the embedded listener, when it speaks TLS.
#[derive(Debug, Clone)]
pub struct ListenerTls {
    pub cert_file: std::path::PathBuf,
    pub key_file: std::path::PathBuf,
}

/// Starts the embedded broker on `config.listen` (over TLS with `tls`) and feeds every
/// reader publish to `out`.
pub async fn start(
    config: &MqttConfig,
    tls: Option<&ListenerTls>,
    readers: Arc<Readers>,
    metrics: Arc<Metrics>,
    out: Input,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) -> Result<(), BrokerError> {
    let addr = config.listen;
    // rumqttd binds inside its accept loop and only logs a failure; find it here instead.
    drop(std::net::TcpListener::bind(addr).map_err(|source| BrokerError::Bind { addr, source })?);

    let (segment, segments) = ring_segments(config.ring_bytes());
    let router = Router::new(
        0,
        RouterConfig {
            max_connections: config.max_connections + 1,
            max_outgoing_packet_count: 200,
            max_segment_size: segment,
            max_segment_count: segments,
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
    let auth_metrics = metrics.clone();
    connections.set_auth_handler(move |client_id: String, user: String, pass: String| {
        let probe = client_id == PROBE_CLIENT_ID
            && user == PROBE_CLIENT_ID
            && bool::from(pass.as_bytes().ct_eq(probe_check.as_bytes()));
        let ok = probe || readers.authenticate(&client_id, &user, &pass);
        if !ok {
            auth_metrics.mqtt_auth_failures.inc();
            tracing::warn!(client_id = %client_id, user = %user, "Refused an MQTT login.");
        }
        async move { ok }
    });
    let settings = ServerSettings {
        name: "greenplate-mqtt".into(),
        listen: addr,
        // rumqttd's own rustls listener; no client certificates (readers log in with their
        // password, and their batches are sealed).
        tls: tls.map(|t| rumqttd::TlsConfig::Rustls {
            capath: None,
            certpath: t.cert_file.display().to_string(),
            keypath: t.key_file.display().to_string(),
        }),
        next_connection_delay_ms: 0,
        connections,
    };
    let mut server = Server::new(
        settings,
        router_tx,
        acl::ReaderAcl::new(V4, metrics.clone()),
    );
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
    tracker.spawn(forward(link_tx, link_rx, out, metrics, shutdown.clone()));
    if tls.is_some() {
        // The probe speaks plain MQTT; over TLS, a listening socket is the readiness sign
        // (the certificate files were checked at the service's start).
        return wait_listening(addr).await;
    }
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

/// rumqttd binds inside its accept loop; wait until it accepts a TCP connection.
async fn wait_listening(addr: SocketAddr) -> Result<(), BrokerError> {
    let target = match addr.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => {
            SocketAddr::from(([127, 0, 0, 1], addr.port()))
        }
        ip if ip.is_unspecified() => SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, addr.port())),
        _ => addr,
    };
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    let mut last_error = String::from("no attempt");
    while tokio::time::Instant::now() < deadline {
        match tokio::net::TcpStream::connect(target).await {
            Ok(_) => return Ok(()),
            Err(e) => last_error = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Err(BrokerError::NotReady { addr, last_error })
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

/// Reads the router link into the pipeline's workers, waking the link when the router
/// pauses it, and counts what the ring overwrote before it was read. At shutdown it goes on
/// until the ring is quiet, so what was acknowledged to readers is processed.
async fn forward(
    // Held so the router keeps the link's subscription for as long as it is read.
    _link_tx: LinkTx,
    mut link: LinkRx,
    out: Input,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let mut ring = RingCursor::default();
    let mut log = RateLimitedLog::new(Duration::from_secs(60));
    let mut drain_until = None;
    loop {
        let next = match drain_until {
            None => tokio::select! {
                n = link.next() => n,
                _ = shutdown.cancelled() => {
                    drain_until = Some(tokio::time::Instant::now() + DRAIN_MAX);
                    continue;
                }
            },
            Some(until) => {
                let quiet = (tokio::time::Instant::now() + DRAIN_QUIET).min(until);
                match tokio::time::timeout_at(quiet, link.next()).await {
                    Ok(n) => n,
                    Err(_) => break,
                }
            }
        };
        match next {
            Ok(Some(Notification::Forward(f))) => {
                if let Some((_, offset)) = f.cursor {
                    let lost = ring.advance(&f.publish.topic, offset);
                    if lost > 0 {
                        metrics.lost(LOST_RING_OVERWRITTEN, lost);
                        if log.allow(LOST_RING_OVERWRITTEN) {
                            tracing::warn!(
                                lost,
                                "The MQTT broker's ring overwrote reader messages before ingest read them (mqtt.buffer_mib is too small for this load, or ingest is behind); counted in greenplate_ingest_messages_lost_total, logged once a minute."
                            );
                        }
                    }
                }
                let msg = Inbound {
                    topic: f.publish.topic,
                    payload: f.publish.payload,
                    received_at: std::time::Instant::now(),
                    ack: None,
                    delivery: None,
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

/// The next offset ingest expects in each of the two logs it reads (one per filter).
/// rumqttd numbers a filter's messages consecutively across the ring's segments, so a
/// message whose offset is past the expected one means the ones between were overwritten.
#[derive(Debug, Default)]
struct RingCursor {
    sightings: u64,
    status: u64,
}

impl RingCursor {
    /// Takes the offset of a message read from the log of `topic`'s filter; returns how many
    /// messages before it were never read.
    fn advance(&mut self, topic: &[u8], offset: u64) -> u64 {
        let next = if topic.ends_with(b"/status") {
            &mut self.status
        } else {
            &mut self.sightings
        };
        let lost = offset.saturating_sub(*next);
        *next = (*next).max(offset + 1);
        lost
    }
}

#[cfg(test)]
mod tests {
    use std::hash::RandomState;

    use greenplate_registry::Reader;
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    use tokio::sync::mpsc;

    use super::*;
    use crate::metrics::Reason;

    /// A port nobody listens on (rumqttd cannot bind port 0 and report it).
    fn free_port() -> SocketAddr {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    }

    /// A stalled pipeline behind a 1 MiB ring: readers are acknowledged, the ring overwrites
    /// what ingest has not read, and every message is either delivered or counted as lost.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn what_the_ring_overwrites_unread_is_counted_exactly() {
        const SENT: usize = 3_000;
        let readers = Arc::new(Readers::default());
        readers.insert(Reader::new(
            "r1".into(),
            "R1".into(),
            23.3,
            116.6,
            "secret-1",
        ));
        let metrics = Arc::new(Metrics::new());
        // One worker queue of one message that nobody reads until the reader is done.
        let (tx, mut rx) = mpsc::channel(1);
        let input = Input {
            shards: vec![tx],
            hasher: RandomState::new(),
            metrics: metrics.clone(),
        };
        let config = MqttConfig {
            listen: free_port(),
            buffer_mib: 1,
            ..MqttConfig::default()
        };
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        start(
            &config,
            None,
            readers,
            metrics.clone(),
            input,
            shutdown.clone(),
            &tracker,
        )
        .await
        .unwrap();

        let mut opts = MqttOptions::new("r1", "127.0.0.1", config.listen.port());
        opts.set_credentials("r1", "secret-1");
        let (client, mut events) = AsyncClient::new(opts, 64);
        let acked = tokio::spawn(async move {
            let mut acked = 0;
            while acked < SENT {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(_))) => acked += 1,
                    Ok(_) => {}
                    Err(e) => panic!("reader connection failed after {acked} PUBACKs: {e}"),
                }
            }
            acked
        });
        let topic = greenplate_proto::topics::sightings("r1");
        for i in 0..SENT {
            let mut payload = vec![0u8; 1000];
            payload[..8].copy_from_slice(&(i as u64).to_be_bytes());
            client
                .publish(topic.as_str(), QoS::AtLeastOnce, false, payload)
                .await
                .unwrap();
        }
        // Every message was acknowledged to the reader: the broker took them all.
        let acked = tokio::time::timeout(Duration::from_secs(30), acked)
            .await
            .expect("the broker did not acknowledge every publish in 30 s")
            .unwrap();
        assert_eq!(acked, SENT);

        let lost = || {
            metrics
                .messages_lost
                .get_or_create(&Reason {
                    reason: LOST_RING_OVERWRITTEN,
                })
                .get() as usize
        };
        let mut delivered = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while delivered.len() + lost() < SENT {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(msg)) => {
                    let i = u64::from_be_bytes(msg.payload[..8].try_into().unwrap());
                    delivered.push(i);
                }
                Ok(None) => panic!("the broker link stopped"),
                Err(_) => panic!(
                    "after 30 s: {} delivered + {} counted lost of {SENT}",
                    delivered.len(),
                    lost()
                ),
            }
        }
        assert!(
            lost() > 0,
            "a stalled pipeline behind a 1 MiB ring lost nothing"
        );
        assert_eq!(delivered.len() + lost(), SENT);
        // What arrived arrived once and in order; the gaps are what was counted.
        assert!(
            delivered.windows(2).all(|w| w[0] < w[1]),
            "out of order or repeated"
        );
        let gaps: u64 = delivered.windows(2).map(|w| w[1] - w[0] - 1).sum::<u64>()
            + delivered[0]
            + (SENT as u64 - 1 - delivered[delivered.len() - 1]);
        assert_eq!(gaps as usize, lost());
        shutdown.cancel();
        drop(rx);
        tracker.close();
    }

    #[test]
    fn ring_segments_are_small_enough_to_lose_little_and_never_under_the_floor() {
        assert_eq!(ring_segments(64 << 20), (4 << 20, 16));
        assert_eq!(ring_segments(8 << 20), (1 << 20, 8));
        assert_eq!(ring_segments(16 << 10), (2 << 10, 8));
        assert_eq!(ring_segments(4 << 10), (1024, 4));
        assert_eq!(ring_segments(100), (1024, 1));
    }

    #[test]
    fn ring_cursor_counts_each_jump_once_per_log() {
        let mut c = RingCursor::default();
        let s = b"greenplate/readers/r1/sightings".as_slice();
        let st = b"greenplate/readers/r1/status".as_slice();
        assert_eq!(c.advance(s, 0), 0);
        assert_eq!(c.advance(s, 1), 0);
        assert_eq!(c.advance(st, 0), 0);
        // 2..=9 were overwritten.
        assert_eq!(c.advance(s, 10), 8);
        assert_eq!(c.advance(s, 11), 0);
        // The status log is its own.
        assert_eq!(c.advance(st, 3), 2);
    }
}
