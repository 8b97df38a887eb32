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
//! `mqtt.persistent_session` (and a fixed client id) Mosquitto keeps assigning the node its
//! share while it is away and delivers all of it when the node reconnects: nothing lost,
//! but late by the node's restart time.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use greenplate_proto::topics;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, Publish, QoS};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{BrokerError, Inbound};
use crate::config::MqttConfig;
use crate::metrics::Metrics;

/// Largest packet taken from the external broker (bigger ones break the connection).
const INCOMING_MAX: usize = 16 * 1024 * 1024;

/// How long the first connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Sends a message's PUBACK when dropped (the last clone of the `Arc` that holds it).
pub struct Ack {
    client: AsyncClient,
    publish: Publish,
}

impl std::fmt::Debug for Ack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Ack(pkid {})", self.publish.pkid)
    }
}

impl Drop for Ack {
    fn drop(&mut self) {
        if let Err(e) = self.client.try_ack(&self.publish) {
            // The broker will deliver it again; the seq window drops the copy if it was
            // processed here.
            tracing::warn!(pkid = self.publish.pkid, error = %e, "Could not acknowledge a message.");
        }
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
    let mut opts = MqttOptions::new(client_id.clone(), broker.host.clone(), broker.port);
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_clean_session(!config.persistent_session);
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
    let (client, mut events) = AsyncClient::new(opts, 64);
    let filters = [
        format!("$share/{}/{}", config.share_group, topics::SIGHTINGS_FILTER),
        format!("$share/{}/{}", config.share_group, topics::STATUS_FILTER),
    ];
    tokio::time::timeout(CONNECT_TIMEOUT, wait_connack(&mut events))
        .await
        .map_err(|_| BrokerError::External(format!("no CONNACK from {url} in time")))?
        .map_err(BrokerError::External)?;
    subscribe(&client, &filters).await?;
    tracing::info!(broker = %url, client_id = %client_id, group = %config.share_group, "Ingest joined the external broker.");
    tracker.spawn(forward(client, events, filters, out, metrics, shutdown));
    Ok(addr)
}

async fn wait_connack(events: &mut EventLoop) -> Result<(), String> {
    loop {
        match events.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                return if ack.code == rumqttc::ConnectReturnCode::Success {
                    Ok(())
                } else {
                    Err(format!("broker refused ingest: {:?}", ack.code))
                };
            }
            Ok(_) => {}
            Err(e) => return Err(format!("cannot connect to the broker: {e}")),
        }
    }
}

async fn subscribe(client: &AsyncClient, filters: &[String]) -> Result<(), BrokerError> {
    for f in filters {
        client
            .subscribe(f.as_str(), QoS::AtLeastOnce)
            .await
            .map_err(|e| BrokerError::External(format!("cannot subscribe to {f}: {e}")))?;
    }
    Ok(())
}

/// Polls the connection until shutdown; resubscribes after every reconnect (clean session).
async fn forward(
    client: AsyncClient,
    mut events: EventLoop,
    filters: [String; 2],
    out: mpsc::Sender<Inbound>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
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
                    ack: Some(Arc::new(Ack {
                        client: client.clone(),
                        publish,
                    })),
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
                    if let Err(e) = subscribe(&client, &filters).await {
                        tracing::error!(error = %e, "Resubscribing failed.");
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
    let _ = client.try_disconnect();
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
