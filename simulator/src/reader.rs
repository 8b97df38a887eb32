//! A roadside reader: one MQTT connection with the reader's own credentials, publishing
//! sealed sighting batches to `greenplate/readers/{id}/sightings`, as a real reader would.
//! On connecting it publishes a sealed ONLINE status for a fresh session and leaves a sealed
//! OFFLINE status of that session as its MQTT last will.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use greenplate_proto::seal::ReaderKey;
use greenplate_proto::topics;
use greenplate_proto::v1::{ReaderState, ReaderStatus, Sighting, SightingBatch};
use prost::Message;
use rumqttc::{AsyncClient, Event, EventLoop, LastWill, MqttOptions, Packet, QoS};

/// How long to wait for the broker to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A connected reader.
pub struct ReaderClient {
    pub id: String,
    key: ReaderKey,
    client: AsyncClient,
    seq: u64,
    /// Where batches go: `greenplate/readers/{id}/sightings` unless set otherwise.
    sightings_topic: String,
    driver: tokio::task::JoinHandle<()>,
}

impl ReaderClient {
    /// Connects with client id = username = `reader_id` and waits for the broker's CONNACK.
    /// Fails if the broker refuses (it closes the socket) or does not answer in time.
    ///
    /// A dropped attempt is retried twice, as a real reader would: rumqttd 0.20 can drop a
    /// new connection that takes the connection slot of one closing at the same moment (its
    /// late `Disconnect` event names the slot, not the client). A refused login fails all
    /// three attempts.
    pub async fn connect(
        host: &str,
        port: u16,
        reader_id: &str,
        secret: &str,
    ) -> anyhow::Result<Self> {
        Self::connect_with(host, port, reader_id, secret, None, false).await
    }

    /// [`ReaderClient::connect`] with a persistent MQTT session: the broker keeps the
    /// session across a dropped connection, and what this client had queued or not yet had
    /// acknowledged is sent again after it reconnects. (With a clean session rumqttc drops
    /// all of that on reconnect: the broker says no session is present.)
    pub async fn connect_persistent(
        host: &str,
        port: u16,
        reader_id: &str,
        secret: &str,
    ) -> anyhow::Result<Self> {
        Self::connect_with(host, port, reader_id, secret, None, true).await
    }

    /// [`ReaderClient::connect`] over TLS, trusting the CA certificates in `ca_pem`, with
    /// `host` as the server's name.
    pub async fn connect_tls(
        host: &str,
        port: u16,
        reader_id: &str,
        secret: &str,
        ca_pem: &[u8],
    ) -> anyhow::Result<Self> {
        let tls = greenplate_proto::tls::client_config(ca_pem)?;
        Self::connect_with(host, port, reader_id, secret, Some(tls), false).await
    }

    async fn connect_with(
        host: &str,
        port: u16,
        reader_id: &str,
        secret: &str,
        tls: Option<Arc<rumqttc::tokio_rustls::rustls::ClientConfig>>,
        persistent: bool,
    ) -> anyhow::Result<Self> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match Self::connect_once(host, port, reader_id, secret, tls.clone(), persistent).await {
                Ok(c) => return Ok(c),
                Err(e) if attempt >= 3 => return Err(e),
                Err(e) => {
                    tracing::debug!(reader = %reader_id, error = %e, "Connect failed; retrying.");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    async fn connect_once(
        host: &str,
        port: u16,
        reader_id: &str,
        secret: &str,
        tls: Option<Arc<rumqttc::tokio_rustls::rustls::ClientConfig>>,
        persistent: bool,
    ) -> anyhow::Result<Self> {
        let key = ReaderKey::derive(secret);
        let session = hex::encode(rand::random::<[u8; 16]>());
        let status = |state: ReaderState| ReaderStatus {
            reader_id: reader_id.to_owned(),
            state: state as i32,
            session: session.clone(),
            at_ms: now_ms(),
            firmware: concat!("greenplate-simulator ", env!("CARGO_PKG_VERSION")).to_owned(),
        };
        let will = key
            .seal_status(&status(ReaderState::Offline))
            .encode_to_vec();
        let mut opts = MqttOptions::new(reader_id, host, port);
        if let Some(tls) = tls {
            opts.set_transport(rumqttc::Transport::tls_with_config(
                rumqttc::TlsConfiguration::Rustls(tls),
            ));
        }
        opts.set_credentials(reader_id, greenplate_proto::seal::login_password(secret));
        opts.set_last_will(LastWill::new(
            topics::status(reader_id),
            will,
            QoS::AtLeastOnce,
            false,
        ));
        opts.set_keep_alive(Duration::from_secs(30));
        opts.set_clean_session(!persistent);
        opts.set_max_packet_size(1024 * 1024, 1024 * 1024);
        let (client, mut events) = AsyncClient::new(opts, 256);
        tokio::time::timeout(CONNECT_TIMEOUT, wait_connack(&mut events))
            .await
            .context("no CONNACK from the broker in time")??;
        let id = reader_id.to_owned();
        let driver = tokio::spawn(drive(id.clone(), events));
        let online = key
            .seal_status(&status(ReaderState::Online))
            .encode_to_vec();
        client
            .publish(topics::status(reader_id), QoS::AtLeastOnce, false, online)
            .await?;
        Ok(Self {
            sightings_topic: topics::sightings(&id),
            id,
            key,
            client,
            // Start from the clock so a restarted reader's seq still increases.
            seq: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_micros() as u64)
                .unwrap_or(1),
            driver,
        })
    }

    /// Seals and publishes one batch (QoS 1); returns its seq.
    pub async fn publish(&mut self, sightings: Vec<Sighting>) -> anyhow::Result<u64> {
        self.seq += 1;
        let batch = SightingBatch {
            reader_id: self.id.clone(),
            seq: self.seq,
            sent_at_ms: now_ms(),
            sightings,
        };
        let sealed = self.key.seal(&batch);
        let payload = sealed.encode_to_vec();
        self.client
            .publish(
                self.sightings_topic.as_str(),
                QoS::AtLeastOnce,
                false,
                payload,
            )
            .await?;
        Ok(self.seq)
    }

    /// Sends batches to another topic (the broker-alone comparison, where no greenplate
    /// listens and the topic must not reach one that does).
    pub fn set_sightings_topic(&mut self, topic: String) {
        self.sightings_topic = topic;
    }

    pub fn sightings_topic(&self) -> &str {
        &self.sightings_topic
    }

    /// Publishes arbitrary bytes to any topic (for hostile-input tests and scenarios).
    pub async fn publish_raw(&self, topic: &str, payload: Vec<u8>) -> anyhow::Result<()> {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await?;
        Ok(())
    }

    /// Subscribes to a filter (readers may; the seal is what keeps batches private).
    pub fn client(&self) -> &AsyncClient {
        &self.client
    }

    /// Drops the connection without an MQTT DISCONNECT, as a reader that loses power would:
    /// the broker publishes its last will.
    pub fn kill(self) {
        self.driver.abort();
    }

    /// Disconnects cleanly (no last will).
    pub async fn disconnect(mut self) {
        let _ = self.client.disconnect().await;
        let _ = tokio::time::timeout(Duration::from_secs(2), &mut self.driver).await;
    }
}

impl Drop for ReaderClient {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

async fn wait_connack(events: &mut EventLoop) -> anyhow::Result<()> {
    loop {
        match events.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                if ack.code == rumqttc::ConnectReturnCode::Success {
                    return Ok(());
                }
                bail!("broker refused the connection: {:?}", ack.code);
            }
            Ok(_) => {}
            Err(e) => bail!("broker refused or dropped the connection: {e}"),
        }
    }
}

/// Polls the event loop for the life of the client; reconnects after a pause on errors.
async fn drive(id: String, mut events: EventLoop) {
    let mut closing = false;
    loop {
        match events.poll().await {
            // Keep the socket until the broker closes it: rumqttd 0.20 frees the connection's
            // slot on DISCONNECT, and a socket closed from this side first makes its link
            // send a late Disconnect for that slot, which drops whichever client took it.
            Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => closing = true,
            Ok(_) => {}
            Err(_) if closing => return,
            Err(e) => {
                tracing::warn!(reader = %id, error = %e, "MQTT connection lost; reconnecting.");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// A sighting of `tag_id` now, as a reader folds a short window of reads.
pub fn sighting(tag_id: &str, read_count: u32, peak_rssi_dbm: i32) -> Sighting {
    let now = now_ms();
    Sighting {
        tag_id: tag_id.to_owned(),
        first_seen_ms: now - 150,
        last_seen_ms: now,
        read_count,
        peak_rssi_dbm,
        antenna: 1,
    }
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
