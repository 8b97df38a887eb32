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

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use greenplate_proto::topics;
use rumqttc::{AsyncClient, Event, EventLoop, LastWill, Outgoing, Packet, QoS};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::client::{AckQueue, BrokerUrl, CONNECT_TIMEOUT, connection, options, wait_connack};
use super::peers::{self, Peers};
use super::{BrokerError, Inbound};
use crate::Input;
use crate::config::MqttConfig;
use crate::metrics::Metrics;

/// How long a node that stops waits for the acknowledgements of what it still holds.
const LEAVE_GRACE: Duration = Duration::from_secs(5);

pub async fn start(
    config: &MqttConfig,
    url: &str,
    metrics: Arc<Metrics>,
    out: Input,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) -> Result<SocketAddr, BrokerError> {
    let broker = BrokerUrl::parse(url).map_err(BrokerError::External)?;
    let addr = broker.resolve().map_err(BrokerError::External)?;
    let client_id = config
        .client_id
        .clone()
        .unwrap_or_else(|| format!("greenplate-{}", hex::encode(rand::random::<[u8; 6]>())));
    let mut opts = options(config, &broker, &client_id).map_err(BrokerError::External)?;
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
    let acks = AckQueue::start(client.clone(), metrics.clone(), tracker);
    tracker.spawn(forward(Link {
        client,
        acks,
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
    acks: Arc<AckQueue>,
    events: EventLoop,
    filters: [String; 2],
    presence: Option<String>,
    peers: Option<Arc<Peers>>,
    out: Input,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
}

/// Polls the connection until shutdown; joins again after every reconnect (a peer may have
/// taken the session and left the shares meanwhile), then leaves.
async fn forward(link: Link) {
    let Link {
        client,
        acks,
        mut events,
        filters,
        presence,
        peers,
        out,
        metrics,
        shutdown,
    } = link;
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
                    drop(acks.track(publish));
                    continue;
                }
                let msg = Inbound {
                    topic: publish.topic.clone().into(),
                    payload: publish.payload.clone(),
                    received_at: std::time::Instant::now(),
                    ack: Some(acks.track(publish) as super::Hold),
                    delivery: None,
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
                acks.disconnected();
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
        leave(&client, &mut events, &filters, presence.as_deref(), &acks).await;
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
    acks: &AckQueue,
) {
    if presence.is_some() {
        for f in filters {
            let _ = client.try_unsubscribe(f.as_str());
        }
    }
    let deadline = tokio::time::Instant::now() + LEAVE_GRACE;
    while acks.pending() > 0 {
        // Short slices, so the count is seen soon after the last acknowledgement went out.
        let slice = tokio::time::Instant::now() + Duration::from_millis(100);
        match tokio::time::timeout_at(slice.min(deadline), events.poll()).await {
            Ok(Ok(_)) => {}
            Err(_) if tokio::time::Instant::now() < deadline => {}
            _ => {
                tracing::warn!(
                    unacknowledged = acks.pending(),
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
