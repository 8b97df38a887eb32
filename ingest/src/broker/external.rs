//! An external broker (Mosquitto, EMQX) instead of the embedded one.
//!
//! Ingest connects as an ordinary MQTT client and joins the shared subscription
//! `$share/{group}/greenplate/readers/+/sightings` (and `.../status`) at QoS 1, so the broker
//! hands each reader message to one node of the group. Acknowledgements are manual: each
//! message carries an [`Ack`] that sends its PUBACK when the last holder drops it — after
//! the pipeline has handled the message and, for a message with sightings of flagged bikes,
//! after the alerting engine has committed their alerts. A node that dies before that never
//! acknowledges, so the broker may deliver the message again (to this node when it comes
//! back, or to another; what a broker does with a dead member's in-flight messages is its
//! own policy: see deploy/README.md).
//!
//! The session is clean by default: a node that goes away leaves no queue behind, and
//! Mosquitto 2.0.11 drops the share it had assigned to it (observed: a killed member's
//! unacknowledged and queued messages did not go to the other member). With
//! `mqtt.persistent_session` (and a fixed client id) Mosquitto keeps the node's session,
//! its unacknowledged messages and its share of new ones, when the node dies; the node
//! announces itself on a retained presence topic with a last will, and a live node takes
//! over a dead one's session, drains it and hands the share to the live nodes
//! ([`super::peers`]). A node that stops cleanly first leaves the shares, so nothing is
//! queued for it while it is away.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;

use greenplate_proto::topics;
use prometheus_client::metrics::histogram::Histogram;
use rumqttc::{
    AsyncClient, Event, EventLoop, LastWill, MqttOptions, NetworkOptions, Outgoing, Packet,
    Publish, QoS,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::peers::{self, Peers};
use super::{BrokerError, Inbound};
use crate::config::MqttConfig;
use crate::metrics::Metrics;

/// Largest packet taken from the external broker (bigger ones break the connection).
const INCOMING_MAX: usize = 16 * 1024 * 1024;

/// How long a connection may take to be accepted.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a node that stops waits for the acknowledgements of what it still holds.
const LEAVE_GRACE: Duration = Duration::from_secs(5);

/// Sends a message's PUBACK when dropped (the last clone of the `Arc` that holds it).
pub struct Ack {
    client: AsyncClient,
    publish: Publish,
    /// Messages of this connection not yet acknowledged.
    pending: Arc<AtomicUsize>,
    /// When the message arrived, and where the time it held is recorded.
    arrived: std::time::Instant,
    held: Histogram,
}

impl Ack {
    pub(super) fn new(
        client: AsyncClient,
        publish: Publish,
        pending: Arc<AtomicUsize>,
        held: &Histogram,
    ) -> Arc<Self> {
        pending.fetch_add(1, Ordering::AcqRel);
        Arc::new(Self {
            client,
            publish,
            pending,
            arrived: std::time::Instant::now(),
            held: held.clone(),
        })
    }
}

impl std::fmt::Debug for Ack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Ack(pkid {})", self.publish.pkid)
    }
}

impl Drop for Ack {
    fn drop(&mut self) {
        if let Err(e) = self.client.try_ack(&self.publish) {
            // The connection is gone (a stop or a lost broker; counted where that is
            // logged): the broker delivers it again, and the seq window drops the copy where
            // it was processed.
            tracing::debug!(pkid = self.publish.pkid, error = %e, "Could not acknowledge a message.");
        }
        self.pending.fetch_sub(1, Ordering::AcqRel);
        self.held.observe(self.arrived.elapsed().as_secs_f64());
    }
}

/// Where an external broker is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    pub host: String,
    pub port: u16,
}

impl BrokerUrl {
    /// Parses `mqtt://HOST[:PORT]` (or `tcp://`); the port defaults to 1883.
    pub fn parse(url: &str) -> Result<Self, String> {
        let rest = url
            .strip_prefix("mqtt://")
            .or_else(|| url.strip_prefix("tcp://"))
            .ok_or_else(|| format!("{url:?}: use mqtt://HOST[:PORT]"))?;
        let rest = rest.trim_end_matches('/');
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (
                h,
                p.parse::<u16>()
                    .map_err(|_| format!("{url:?}: bad port {p:?}"))?,
            ),
            _ => (rest, 1883),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || host.contains('/') {
            return Err(format!("{url:?}: use mqtt://HOST[:PORT]"));
        }
        Ok(Self {
            host: host.to_owned(),
            port,
        })
    }

    /// The first address the host resolves to.
    pub fn resolve(&self) -> Result<SocketAddr, String> {
        (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve {}: {e}", self.host))?
            .next()
            .ok_or_else(|| format!("{} resolves to no address", self.host))
    }
}

/// The MQTT options of a connection to the external broker as `client_id` (clean session,
/// manual acknowledgements, this node's login and packet limits).
pub(super) fn options(config: &MqttConfig, broker: &BrokerUrl, client_id: &str) -> MqttOptions {
    let mut opts = MqttOptions::new(client_id, broker.host.clone(), broker.port);
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_manual_acks(true);
    // A packet over rumqttc's limit breaks the whole connection, so accept up to
    // INCOMING_MAX and let the pipeline drop what is over mqtt.max_payload_bytes (counted as
    // `oversized`); cap the broker's message size too (Mosquitto: message_size_limit).
    opts.set_max_packet_size(
        INCOMING_MAX.max(config.max_payload_bytes + 1024),
        config.max_payload_bytes,
    );
    if let Some(user) = &config.username {
        opts.set_credentials(user.clone(), config.password.clone().unwrap_or_default());
    }
    opts
}

/// A client and its event loop for `opts`. PUBACKs are small writes sent one by one as the
/// pipeline finishes messages, and the broker sends a node no more than its in-flight
/// window (Mosquitto: `max_inflight_messages`, 20 by default) before they arrive, so
/// Nagle's algorithm, which may hold a small write back until the previous one is
/// acknowledged, is off.
pub(super) fn connection(opts: MqttOptions) -> (AsyncClient, EventLoop) {
    let (client, mut events) = AsyncClient::new(opts, 64);
    let mut network = NetworkOptions::new();
    network.set_tcp_nodelay(true);
    events.set_network_options(network);
    (client, events)
}

/// Connects to the external broker, joins the shared subscriptions, and forwards every
/// reader message to `out`. Returns the broker's address once the first CONNACK arrived.
pub async fn start(
    config: &MqttConfig,
    url: &str,
    metrics: Arc<Metrics>,
    out: mpsc::Sender<Inbound>,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) -> Result<SocketAddr, BrokerError> {
    let broker = BrokerUrl::parse(url).map_err(BrokerError::External)?;
    let addr = broker.resolve().map_err(BrokerError::External)?;
    let client_id = config
        .client_id
        .clone()
        .unwrap_or_else(|| format!("greenplate-{}", hex::encode(rand::random::<[u8; 6]>())));
    let mut opts = options(config, &broker, &client_id);
    opts.set_clean_session(!config.persistent_session);
    // With a persistent session the node's queue outlives it, so the others must know when
    // it dies: its presence, retained, with a last will.
    let presence = config
        .persistent_session
        .then(|| topics::node_state(&client_id));
    if let Some(topic) = &presence {
        opts.set_last_will(LastWill::new(topic, peers::OFFLINE, QoS::AtLeastOnce, true));
    }
    let (client, mut events) = connection(opts);
    let filters = [
        format!("$share/{}/{}", config.share_group, topics::SIGHTINGS_FILTER),
        format!("$share/{}/{}", config.share_group, topics::STATUS_FILTER),
    ];
    tokio::time::timeout(CONNECT_TIMEOUT, wait_connack(&mut events))
        .await
        .map_err(|_| BrokerError::External(format!("no CONNACK from {url} in time")))?
        .map_err(BrokerError::External)?;
    join(&client, &filters, presence.as_deref()).await?;
    let peers = presence.is_some().then(|| {
        Peers::new(
            client_id.clone(),
            peers::Context {
                config: config.clone(),
                broker: broker.clone(),
                filters: filters.clone(),
                out: out.clone(),
                metrics: metrics.clone(),
                shutdown: shutdown.clone(),
                tracker: tracker.clone(),
            },
        )
    });
    tracing::info!(broker = %url, client_id = %client_id, group = %config.share_group, persistent = config.persistent_session, "Ingest joined the external broker.");
    tracker.spawn(forward(Link {
        client,
        events,
        filters,
        presence,
        peers,
        out,
        metrics,
        shutdown,
    }));
    Ok(addr)
}

/// Waits for the CONNACK; returns whether the broker still had a session for the client.
pub(super) async fn wait_connack(events: &mut EventLoop) -> Result<bool, String> {
    loop {
        match events.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                return if ack.code == rumqttc::ConnectReturnCode::Success {
                    Ok(ack.session_present)
                } else {
                    Err(format!("broker refused the connection: {:?}", ack.code))
                };
            }
            Ok(_) => {}
            Err(e) => return Err(format!("cannot connect to the broker: {e}")),
        }
    }
}

/// Subscribes to the shares and, with a presence topic, announces this node and watches
/// the others.
async fn join(
    client: &AsyncClient,
    filters: &[String],
    presence: Option<&str>,
) -> Result<(), BrokerError> {
    for f in filters {
        client
            .subscribe(f.as_str(), QoS::AtLeastOnce)
            .await
            .map_err(|e| BrokerError::External(format!("cannot subscribe to {f}: {e}")))?;
    }
    if let Some(topic) = presence {
        client
            .publish(topic, QoS::AtLeastOnce, true, peers::ONLINE)
            .await
            .map_err(|e| BrokerError::External(format!("cannot announce the node: {e}")))?;
        client
            .subscribe(topics::NODE_STATE_FILTER, QoS::AtLeastOnce)
            .await
            .map_err(|e| BrokerError::External(format!("cannot watch the nodes: {e}")))?;
    }
    Ok(())
}

/// The main connection and what its messages feed.
struct Link {
    client: AsyncClient,
    events: EventLoop,
    filters: [String; 2],
    presence: Option<String>,
    peers: Option<Arc<Peers>>,
    out: mpsc::Sender<Inbound>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
}

/// Polls the connection until shutdown; joins again after every reconnect (a peer may have
/// taken the session and left the shares meanwhile), then leaves.
async fn forward(link: Link) {
    let Link {
        client,
        mut events,
        filters,
        presence,
        peers,
        out,
        metrics,
        shutdown,
    } = link;
    let pending = Arc::new(AtomicUsize::new(0));
    let mut connected = true;
    loop {
        let event = tokio::select! {
            e = events.poll() => e,
            _ = shutdown.cancelled() => break,
        };
        match event {
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                if topics::node_of_state_topic(&publish.topic).is_some() {
                    if let Some(peers) = &peers {
                        peers.observe(&publish.topic, &publish.payload);
                    }
                    let _ = client.try_ack(&publish);
                    continue;
                }
                let msg = Inbound {
                    topic: publish.topic.clone().into(),
                    payload: publish.payload.clone(),
                    received_at: std::time::Instant::now(),
                    ack: Some(Ack::new(
                        client.clone(),
                        publish,
                        pending.clone(),
                        &metrics.mqtt_ack_seconds,
                    )),
                };
                // A full pipeline stops this loop, so the broker holds the rest (its
                // in-flight window) instead of ingest buffering without bound.
                if out.send(msg).await.is_err() {
                    break;
                }
            }
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                tracing::info!("Reconnected to the external broker.");
                connected = true;
                let client = client.clone();
                let filters = filters.clone();
                let presence = presence.clone();
                tokio::spawn(async move {
                    if let Err(e) = join(&client, &filters, presence.as_deref()).await {
                        tracing::error!(error = %e, "Joining again failed.");
                    }
                });
            }
            Ok(_) => {}
            Err(e) => {
                if connected {
                    metrics.mqtt_disconnects.inc();
                    tracing::error!(error = %e, "Lost the external broker; reconnecting.");
                }
                connected = false;
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = shutdown.cancelled() => break,
                }
            }
        }
    }
    drop(out);
    if connected {
        leave(
            &client,
            &mut events,
            &filters,
            presence.as_deref(),
            &pending,
        )
        .await;
    }
}

/// A clean stop: leave the shares (so nothing is queued for this node while it is away),
/// send the acknowledgements of what the pipeline still finishes, clear the presence (a
/// node that left is not taken over), and disconnect.
async fn leave(
    client: &AsyncClient,
    events: &mut EventLoop,
    filters: &[String],
    presence: Option<&str>,
    pending: &AtomicUsize,
) {
    if presence.is_some() {
        for f in filters {
            let _ = client.try_unsubscribe(f.as_str());
        }
    }
    let deadline = tokio::time::Instant::now() + LEAVE_GRACE;
    while pending.load(Ordering::Acquire) > 0 {
        // Short slices, so the count is seen soon after the last acknowledgement went out.
        let slice = tokio::time::Instant::now() + Duration::from_millis(100);
        match tokio::time::timeout_at(slice.min(deadline), events.poll()).await {
            Ok(Ok(_)) => {}
            Err(_) if tokio::time::Instant::now() < deadline => {}
            _ => {
                tracing::warn!(
                    unacknowledged = pending.load(Ordering::Acquire),
                    "Left the broker with messages unacknowledged; it delivers them again."
                );
                return;
            }
        }
    }
    if let Some(topic) = presence {
        let _ = client.try_publish(topic, QoS::AtLeastOnce, true, Bytes::new());
    }
    let _ = client.try_disconnect();
    let _ = tokio::time::timeout_at(deadline, async {
        while let Ok(e) = events.poll().await {
            if matches!(e, Event::Outgoing(Outgoing::Disconnect)) {
                break;
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls() {
        let u = |h: &str, p| BrokerUrl {
            host: h.into(),
            port: p,
        };
        assert_eq!(
            BrokerUrl::parse("mqtt://127.0.0.1:1883"),
            Ok(u("127.0.0.1", 1883))
        );
        assert_eq!(BrokerUrl::parse("mqtt://emqx"), Ok(u("emqx", 1883)));
        assert_eq!(
            BrokerUrl::parse("tcp://broker:2883/"),
            Ok(u("broker", 2883))
        );
        assert_eq!(BrokerUrl::parse("mqtt://[::1]:1884"), Ok(u("::1", 1884)));
        assert!(BrokerUrl::parse("http://x").is_err());
        assert!(BrokerUrl::parse("mqtt://:1883").is_err());
        assert!(BrokerUrl::parse("mqtt://h:notaport").is_err());
    }
}
