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
//! The session is clean: a node that goes away leaves no queue behind. What happens to the
//! messages a dead member held is the broker's policy: Mosquitto 2.0 drops them (observed
//! here: a killed member's unacknowledged and queued messages did not go to the other
//! member; eclipse-mosquitto/mosquitto#2662), EMQX redispatches them to the live members.
//! Several nodes that must lose nothing when one dies run behind NATS JetStream instead
//! ([`super::nats`]). A node that stops cleanly first leaves the shares, then sends the
//! acknowledgements of what it still finishes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use greenplate_proto::topics;
use rumqttc::{AsyncClient, Event, EventLoop, Outgoing, Packet, QoS};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::client::{AckQueue, BrokerUrl, CONNECT_TIMEOUT, connection, options, wait_connack};
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
    opts.set_clean_session(true);
    let (client, mut events) = connection(opts);
    let filters = [
        format!("$share/{}/{}", config.share_group, topics::SIGHTINGS_FILTER),
        format!("$share/{}/{}", config.share_group, topics::STATUS_FILTER),
    ];
    tokio::time::timeout(CONNECT_TIMEOUT, wait_connack(&mut events))
        .await
        .map_err(|_| BrokerError::External(format!("no CONNACK from {url} in time")))?
        .map_err(BrokerError::External)?;
    join(&client, &filters).await?;
    tracing::info!(broker = %url, client_id = %client_id, group = %config.share_group, "Ingest joined the external broker.");
    let acks = AckQueue::start(client.clone(), metrics.clone(), tracker);
    tracker.spawn(forward(Link {
        client,
        acks,
        events,
        filters,
        out,
        metrics,
        shutdown,
    }));
    Ok(addr)
}

/// Subscribes to the shares.
async fn join(client: &AsyncClient, filters: &[String]) -> Result<(), BrokerError> {
    for f in filters {
        client
            .subscribe(f.as_str(), QoS::AtLeastOnce)
            .await
            .map_err(|e| BrokerError::External(format!("cannot subscribe to {f}: {e}")))?;
    }
    Ok(())
}

/// The main connection and what its messages feed.
struct Link {
    client: AsyncClient,
    acks: Arc<AckQueue>,
    events: EventLoop,
    filters: [String; 2],
    out: Input,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
}

/// Polls the connection until shutdown; joins again after every reconnect (the session is
/// clean, so the broker forgot the subscriptions), then leaves.
async fn forward(link: Link) {
    let Link {
        client,
        acks,
        mut events,
        filters,
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
                tokio::spawn(async move {
                    if let Err(e) = join(&client, &filters).await {
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
        leave(&client, &mut events, &filters, &acks).await;
    }
}

/// A clean stop: leave the shares (so the broker sends new messages to the live nodes),
/// send the acknowledgements of what the pipeline still finishes, and disconnect.
async fn leave(client: &AsyncClient, events: &mut EventLoop, filters: &[String], acks: &AckQueue) {
    for f in filters {
        let _ = client.try_unsubscribe(f.as_str());
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
