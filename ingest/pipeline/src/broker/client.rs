//! The MQTT client side shared by the external broker's connection ([`super::external`])
//! and the takeover of a dead node's session ([`super::peers`]): the broker URL, the
//! connection options, the CONNACK, and [`Ack`], the manual acknowledgement each message
//! carries.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use prometheus_client::metrics::histogram::Histogram;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, NetworkOptions, Packet, Publish};

use crate::config::MqttConfig;

/// Largest packet taken from the external broker (bigger ones break the connection).
const INCOMING_MAX: usize = 16 * 1024 * 1024;

/// How long a connection may take to be accepted.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

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
