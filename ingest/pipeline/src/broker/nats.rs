//! NATS JetStream as the source of reader messages (issue #16, first step).
//!
//! Readers keep speaking MQTT, to NATS's MQTT listener, with the same topics, payloads and
//! sealing; NATS turns the topic `greenplate/readers/{id}/sightings` into the subject
//! `greenplate.readers.{id}.sightings`. A JetStream stream (work-queue retention) keeps
//! every reader message, and each node pulls from one durable consumer. A message is
//! acknowledged exactly when an MQTT [`super::client::Ack`] would send its PUBACK: when its
//! last holder drops it, after the pipeline handled it and, for sightings of flagged bikes,
//! after their alerts were committed. A node that dies or hangs before that never
//! acknowledges, and JetStream hands the message to a live node once the consumer's
//! ack-wait has passed; the seq window takes a redelivered batch once.
//!
//! Not yet here (issue #16): per-reader affinity (partitions owned through a KV lease), the
//! reader logins NATS checks, and the retirement of the Mosquitto takeover.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, message::Acker, stream};
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{BrokerError, Inbound};
use crate::Input;
use crate::config::NatsConfig;
use crate::metrics::{ACK_NATS_FAILED, Metrics};

/// The subjects reader messages arrive on (NATS's names for the contract's MQTT topics).
pub const SUBJECTS: [&str; 2] = [
    "greenplate.readers.*.sightings",
    "greenplate.readers.*.status",
];

/// How long to wait before pulling again after the consumer's stream failed.
const RETRY: Duration = Duration::from_millis(500);

/// The MQTT topic a NATS subject stands for: NATS maps `/` to `.` and `.` to `//`, so this
/// maps them back (`greenplate.readers.rd//1.sightings` is `greenplate/readers/rd.1/sightings`).
pub fn topic_of(subject: &str) -> String {
    let mut topic = String::with_capacity(subject.len());
    let mut rest = subject;
    while let Some(c) = rest.chars().next() {
        if let Some(after) = rest.strip_prefix("//") {
            topic.push('.');
            rest = after;
        } else {
            topic.push(if c == '.' { '/' } else { c });
            rest = &rest[c.len_utf8()..];
        }
    }
    topic
}

/// Connects to NATS, makes sure the stream and the durable consumer exist, and feeds every
/// message to `out` until `shutdown`.
pub async fn start(
    config: &NatsConfig,
    url: &str,
    metrics: Arc<Metrics>,
    out: Input,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) -> Result<(), BrokerError> {
    let nats = |e: &dyn std::fmt::Display| BrokerError::Nats(format!("{url}: {e}"));
    let mut options = async_nats::ConnectOptions::new()
        .name("greenplate-ingest")
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(5));
    if let Some(user) = &config.username {
        options =
            options.user_and_password(user.clone(), config.password.clone().unwrap_or_default());
    }
    let client = tokio::time::timeout(Duration::from_secs(10), options.connect(url))
        .await
        .map_err(|e| nats(&e))?
        .map_err(|e| nats(&e))?;
    let js = jetstream::new(client);
    let stream = js
        .get_or_create_stream(stream::Config {
            name: config.stream.clone(),
            subjects: SUBJECTS.iter().map(|s| s.to_string()).collect(),
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            num_replicas: config.replicas,
            ..Default::default()
        })
        .await
        .map_err(|e| nats(&e))?;
    let consumer: consumer::PullConsumer = stream
        .get_or_create_consumer(
            &config.consumer,
            consumer::pull::Config {
                durable_name: Some(config.consumer.clone()),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: Duration::from_secs(config.ack_wait_s.max(1)),
                max_ack_pending: config.max_ack_pending,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| nats(&e))?;
    let (acks_tx, acks_rx) = mpsc::unbounded_channel();
    tracker.spawn(release(acks_rx, metrics.clone()));
    tracker.spawn(pull(consumer, acks_tx, out, shutdown));
    Ok(())
}

/// Pulls messages and hands them to the pipeline, each with its [`NatsAck`].
async fn pull(
    consumer: consumer::PullConsumer,
    acks: mpsc::UnboundedSender<Finished>,
    out: Input,
    shutdown: CancellationToken,
) {
    loop {
        let mut messages = tokio::select! {
            m = consumer.messages() => match m {
                Ok(m) => m,
                Err(e) => {
                    tracing::error!(error = %e, "Cannot pull from the NATS consumer; retrying.");
                    tokio::select! {
                        _ = tokio::time::sleep(RETRY) => continue,
                        _ = shutdown.cancelled() => return,
                    }
                }
            },
            _ = shutdown.cancelled() => return,
        };
        loop {
            let next = tokio::select! {
                n = messages.next() => n,
                _ = shutdown.cancelled() => return,
            };
            let message = match next {
                Some(Ok(m)) => m,
                Some(Err(e)) => {
                    // Heartbeats missed, a reconnect: the stream goes on or ends.
                    tracing::warn!(error = %e, "Pulling from NATS failed.");
                    continue;
                }
                None => break,
            };
            let (message, acker) = message.split();
            let received_at = Instant::now();
            let ack = Arc::new(NatsAck {
                tx: acks.clone(),
                finished: Some(Finished {
                    acker,
                    arrived: received_at,
                }),
            });
            let inbound = Inbound {
                topic: Bytes::from(topic_of(message.subject.as_str())),
                payload: message.payload,
                received_at,
                ack: Some(ack),
            };
            if out.send(inbound).await.is_err() {
                // The pipeline stopped: the service is stopping (the message is redelivered).
                return;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(RETRY) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// A JetStream message the pipeline is done with.
struct Finished {
    acker: Acker,
    arrived: Instant,
}

/// A JetStream message's acknowledgement: sent when the last holder drops it.
pub struct NatsAck {
    tx: mpsc::UnboundedSender<Finished>,
    finished: Option<Finished>,
}

impl Drop for NatsAck {
    fn drop(&mut self) {
        if let Some(f) = self.finished.take() {
            // The release task ended only when the service stops; NATS redelivers then.
            let _ = self.tx.send(f);
        }
    }
}

/// Sends the acknowledgements (JetStream acknowledges each message on its own, so no
/// order is kept).
async fn release(mut rx: mpsc::UnboundedReceiver<Finished>, metrics: Arc<Metrics>) {
    while let Some(f) = rx.recv().await {
        match f.acker.ack().await {
            Ok(()) => metrics
                .mqtt_ack_seconds
                .observe(f.arrived.elapsed().as_secs_f64()),
            Err(e) => {
                metrics.ack_failed(ACK_NATS_FAILED);
                tracing::debug!(error = %e, "NATS did not take an acknowledgement; it redelivers.");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_map_back_to_the_contracts_topics() {
        assert_eq!(
            topic_of("greenplate.readers.rd-1.sightings"),
            "greenplate/readers/rd-1/sightings"
        );
        assert_eq!(
            topic_of("greenplate.readers.rd//1.status"),
            "greenplate/readers/rd.1/status"
        );
        assert_eq!(topic_of("读者.一"), "读者/一");
    }
}
