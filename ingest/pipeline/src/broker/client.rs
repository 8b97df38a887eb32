//! The MQTT client side of the external broker's connection ([`super::external`]): the
//! broker URL, the connection options, the CONNACK, and [`Ack`], the manual
//! acknowledgement each message carries.

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, NetworkOptions, Packet, Publish};
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

use crate::config::MqttConfig;
use crate::metrics::{ACK_DISCONNECTED, Metrics};

/// Requests (PUBACKs, mostly) queued for rumqttc's event loop: at least a broker's
/// in-flight window plus its queue (Mosquitto: `max_inflight_messages` and
/// `max_queued_messages`, 1,000 each in deploy/), so acknowledgements rarely wait.
const REQUEST_CAPACITY: usize = 4096;

/// Largest packet taken from the external broker (bigger ones break the connection).
const INCOMING_MAX: usize = 16 * 1024 * 1024;

/// How long a connection may take to be accepted.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The PUBACKs of one connection. Each message gets an [`Ack`] when it arrives; when the
/// last holder drops it, the ack goes to this connection's release task, which sends the
/// PUBACKs in the order the PUBLISHes arrived (MQTT 3.1.1, MQTT-4.6.0-2), waiting on
/// rumqttc's request channel rather than dropping a PUBACK when it is full (a PUBACK that
/// never leaves holds one of the broker's in-flight slots for good). A PUBACK that cannot be
/// sent is counted (`greenplate_mqtt_acks_failed_total`); the broker then delivers the
/// message again, and the seq window drops the copy where it was processed.
///
/// After the connection drops, what arrived on it is not acknowledged on the next one (the
/// packet ids belong to the old session): call [`AckQueue::disconnected`].
pub struct AckQueue {
    tx: mpsc::UnboundedSender<Finished>,
    next: AtomicU64,
    epoch: Arc<AtomicU64>,
    pending: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
}

/// A message the pipeline is done with, waiting for its turn to be acknowledged.
struct Finished {
    index: u64,
    epoch: u64,
    publish: Publish,
    arrived: std::time::Instant,
}

impl AckQueue {
    /// A queue for `client`'s connection, with its release task on `tracker`.
    pub(super) fn start(
        client: AsyncClient,
        metrics: Arc<Metrics>,
        tracker: &TaskTracker,
    ) -> Arc<Self> {
        let (tx, rx) = mpsc::unbounded_channel();
        let queue = Arc::new(Self {
            tx,
            next: AtomicU64::new(0),
            epoch: Arc::new(AtomicU64::new(0)),
            pending: Arc::new(AtomicUsize::new(0)),
            metrics: metrics.clone(),
        });
        tracker.spawn(release(
            client,
            rx,
            queue.epoch.clone(),
            queue.pending.clone(),
            metrics,
        ));
        queue
    }

    /// The acknowledgement of a message that just arrived. Call in arrival order.
    pub(super) fn track(&self, publish: Publish) -> Arc<Ack> {
        self.pending.fetch_add(1, Ordering::AcqRel);
        Arc::new(Ack {
            tx: self.tx.clone(),
            metrics: self.metrics.clone(),
            finished: Some(Finished {
                index: self.next.fetch_add(1, Ordering::AcqRel),
                epoch: self.epoch.load(Ordering::Acquire),
                publish,
                arrived: std::time::Instant::now(),
            }),
        })
    }

    /// The connection dropped: what arrived before is not acknowledged on the next one.
    pub(super) fn disconnected(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }

    /// Messages tracked and not yet acknowledged (or given up).
    pub(super) fn pending(&self) -> usize {
        self.pending.load(Ordering::Acquire)
    }
}

/// Sends the PUBACKs in arrival order as messages finish.
async fn release(
    client: AsyncClient,
    mut rx: mpsc::UnboundedReceiver<Finished>,
    epoch: Arc<AtomicU64>,
    pending: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
) {
    let mut next = 0u64;
    let mut finished: BTreeMap<u64, Finished> = BTreeMap::new();
    while let Some(f) = rx.recv().await {
        finished.insert(f.index, f);
        while let Some(f) = finished.remove(&next) {
            next += 1;
            let sent =
                f.epoch == epoch.load(Ordering::Acquire) && client.ack(&f.publish).await.is_ok();
            if sent {
                metrics
                    .mqtt_ack_seconds
                    .observe(f.arrived.elapsed().as_secs_f64());
            } else {
                metrics.ack_failed(ACK_DISCONNECTED);
                tracing::debug!(
                    pkid = f.publish.pkid,
                    "Could not acknowledge a message; the broker delivers it again."
                );
            }
            pending.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// A message's acknowledgement: hands it to its [`AckQueue`] when dropped (the last clone of
/// the `Arc` that holds it).
pub struct Ack {
    tx: mpsc::UnboundedSender<Finished>,
    metrics: Arc<Metrics>,
    finished: Option<Finished>,
}

impl std::fmt::Debug for Ack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.finished {
            Some(m) => write!(f, "Ack(pkid {})", m.publish.pkid),
            None => write!(f, "Ack(done)"),
        }
    }
}

impl Drop for Ack {
    fn drop(&mut self) {
        if let Some(f) = self.finished.take()
            && self.tx.send(f).is_err()
        {
            // The release task ended: the service is stopping.
            self.metrics.ack_failed(ACK_DISCONNECTED);
        }
    }
}

/// Where an external broker is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    pub host: String,
    pub port: u16,
    /// `mqtts://`: TLS, checked against `mqtt.ca_file`.
    pub tls: bool,
}

impl BrokerUrl {
    /// Parses `mqtt://HOST[:PORT]` (or `tcp://`; the port defaults to 1883) or
    /// `mqtts://HOST[:PORT]` (or `ssl://`; TLS, the port defaults to 8883).
    pub fn parse(url: &str) -> Result<Self, String> {
        let (rest, tls) = if let Some(r) = url
            .strip_prefix("mqtts://")
            .or_else(|| url.strip_prefix("ssl://"))
        {
            (r, true)
        } else {
            let r = url
                .strip_prefix("mqtt://")
                .or_else(|| url.strip_prefix("tcp://"))
                .ok_or_else(|| format!("{url:?}: use mqtt://HOST[:PORT] or mqtts://HOST[:PORT]"))?;
            (r, false)
        };
        let default_port = if tls { 8883 } else { 1883 };
        let rest = rest.trim_end_matches('/');
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (
                h,
                p.parse::<u16>()
                    .map_err(|_| format!("{url:?}: bad port {p:?}"))?,
            ),
            _ => (rest, default_port),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || host.contains('/') {
            return Err(format!("{url:?}: use mqtt://HOST[:PORT]"));
        }
        Ok(Self {
            host: host.to_owned(),
            port,
            tls,
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
/// manual acknowledgements, this node's login and packet limits; TLS for `mqtts://`,
/// trusting the CA certificates of `mqtt.ca_file`).
pub(super) fn options(
    config: &MqttConfig,
    broker: &BrokerUrl,
    client_id: &str,
) -> Result<MqttOptions, String> {
    let mut opts = MqttOptions::new(client_id, broker.host.clone(), broker.port);
    if broker.tls {
        let path = config
            .ca_file
            .as_ref()
            .ok_or("mqtts:// needs mqtt.ca_file, the CA certificate(s) to check the broker by")?;
        let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let tls = greenplate_proto::tls::client_config(&pem)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        opts.set_transport(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(tls),
        ));
    }
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
    Ok(opts)
}

/// A client and its event loop for `opts`. PUBACKs are small writes sent one by one as the
/// pipeline finishes messages, and the broker sends a node no more than its in-flight
/// window (Mosquitto: `max_inflight_messages`, 20 by default) before they arrive, so
/// Nagle's algorithm, which may hold a small write back until the previous one is
/// acknowledged, is off.
pub(super) fn connection(opts: MqttOptions) -> (AsyncClient, EventLoop) {
    let (client, mut events) = AsyncClient::new(opts, REQUEST_CAPACITY);
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
    use bytes::BytesMut;
    use rumqttc::mqttbytes::v4::{ConnAck, ConnectReturnCode};
    use rumqttc::{QoS, mqttbytes};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use greenplate_registry::testing::eventually;

    use super::*;
    use crate::metrics::Reason;

    async fn read_packet(sock: &mut tokio::net::TcpStream, buf: &mut BytesMut) -> Option<Packet> {
        loop {
            match Packet::read(buf, 1 << 20) {
                Ok(p) => return Some(p),
                Err(mqttbytes::Error::InsufficientBytes(_)) => {
                    if sock.read_buf(buf).await.ok()? == 0 {
                        return None;
                    }
                }
                Err(e) => panic!("the client sent a bad packet: {e:?}"),
            }
        }
    }

    fn failed(metrics: &Metrics) -> u64 {
        metrics
            .mqtt_acks_failed
            .get_or_create(&Reason {
                reason: ACK_DISCONNECTED,
            })
            .get()
    }

    /// A broker of the test's own: accepts one client, sends it `n` QoS 1 publishes (pkids
    /// 1..=n), and reports the pkid of each PUBACK in the order it came off the wire.
    async fn broker_sending(n: u16) -> (SocketAddr, mpsc::UnboundedReceiver<u16>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut buf = BytesMut::new();
            assert!(matches!(
                read_packet(&mut sock, &mut buf).await,
                Some(Packet::Connect(_))
            ));
            let mut out = BytesMut::new();
            ConnAck::new(ConnectReturnCode::Success, false)
                .write(&mut out)
                .unwrap();
            for pkid in 1..=n {
                let mut p = Publish::new("greenplate/readers/r1/sightings", QoS::AtLeastOnce, [1]);
                p.pkid = pkid;
                p.write(&mut out).unwrap();
            }
            sock.write_all(&out).await.unwrap();
            while let Some(p) = read_packet(&mut sock, &mut buf).await {
                match p {
                    Packet::PubAck(a) => {
                        let _ = tx.send(a.pkid);
                    }
                    Packet::PingReq => {
                        let mut out = BytesMut::new();
                        rumqttc::mqttbytes::v4::PingResp.write(&mut out).unwrap();
                        sock.write_all(&out).await.unwrap();
                    }
                    Packet::Disconnect => return,
                    _ => {}
                }
            }
        });
        (addr, rx)
    }

    /// Connects to `addr` with manual acks and tracks the first `n` publishes in arrival
    /// order; the event loop goes on being polled so that PUBACKs leave.
    async fn client_of(
        addr: SocketAddr,
        n: usize,
        metrics: &Arc<Metrics>,
        tracker: &TaskTracker,
    ) -> (Arc<AckQueue>, Vec<Arc<Ack>>) {
        let mut opts = MqttOptions::new("node-1", "127.0.0.1", addr.port());
        opts.set_manual_acks(true);
        let (client, mut events) = connection(opts);
        let acks = AckQueue::start(client, metrics.clone(), tracker);
        let mut held = Vec::new();
        while held.len() < n {
            if let Event::Incoming(Packet::Publish(p)) = events.poll().await.unwrap() {
                held.push(acks.track(p));
            }
        }
        tokio::spawn(async move { while events.poll().await.is_ok() {} });
        (acks, held)
    }

    #[tokio::test]
    async fn pubacks_leave_in_arrival_order_whatever_order_messages_finish_in() {
        let (addr, mut wire) = broker_sending(5).await;
        let metrics = Arc::new(Metrics::new());
        let tracker = TaskTracker::new();
        let (acks, mut held) = client_of(addr, 5, &metrics, &tracker).await;
        assert_eq!(acks.pending(), 5);
        // The pipeline finishes the fifth, third and first first...
        for i in [4, 2, 0] {
            drop(held[i].clone());
            held[i] = Arc::new(Ack {
                tx: acks.tx.clone(),
                metrics: metrics.clone(),
                finished: None,
            });
        }
        // ...so only pkid 1 may leave: 2 holds the others back.
        assert_eq!(wire.recv().await, Some(1));
        drop(held);
        let mut order = vec![1];
        while order.len() < 5 {
            order.push(wire.recv().await.unwrap());
        }
        assert_eq!(order, [1, 2, 3, 4, 5], "PUBACKs out of arrival order");
        eventually("every ack released", Duration::from_secs(5), || async {
            match acks.pending() {
                0 => Ok(()),
                n => Err(n),
            }
        })
        .await;
        assert_eq!(failed(&metrics), 0);
    }

    #[tokio::test]
    async fn what_arrived_before_a_disconnect_is_counted_not_acknowledged_on_the_next_connection() {
        let (addr, mut wire) = broker_sending(3).await;
        let metrics = Arc::new(Metrics::new());
        let tracker = TaskTracker::new();
        let (acks, held) = client_of(addr, 3, &metrics, &tracker).await;
        acks.disconnected();
        drop(held);
        eventually("every ack released", Duration::from_secs(5), || async {
            match acks.pending() {
                0 => Ok(()),
                n => Err(n),
            }
        })
        .await;
        assert_eq!(failed(&metrics), 3);
        // Nothing went on the wire for them.
        assert!(wire.try_recv().is_err());
    }

    #[test]
    fn broker_urls() {
        let u = |h: &str, p| BrokerUrl {
            host: h.into(),
            port: p,
            tls: false,
        };
        let tls = |h: &str, p| BrokerUrl {
            host: h.into(),
            port: p,
            tls: true,
        };
        assert_eq!(BrokerUrl::parse("mqtts://broker"), Ok(tls("broker", 8883)));
        assert_eq!(
            BrokerUrl::parse("ssl://broker:9883"),
            Ok(tls("broker", 9883))
        );
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
