//! A partner target on NATS JetStream: each alert published to a subject that a JetStream
//! stream captures, and delivered once the stream acknowledges it (at least once; the
//! `Nats-Msg-Id` header is the alert id, so JetStream's own duplicate window drops a
//! repeat). The body and the signature headers are those of a webhook ([`super::payload`]).
//! A subject no stream captures has no responders: retried, then a dead letter.

use std::time::Duration;

use greenplate_proto::v1::Alert;
use greenplate_registry::now_ms;

use super::{Delivered, Format, error_chain, payload};

/// A NATS subject and how to reach it.
pub struct NatsSink {
    url: String,
    subject: String,
    secret: String,
    format: Format,
    js: tokio::sync::Mutex<Option<async_nats::jetstream::Context>>,
}

impl std::fmt::Debug for NatsSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsSink")
            .field("url", &self.url)
            .field("subject", &self.subject)
            .field("format", &self.format)
            .finish()
    }
}

impl NatsSink {
    pub fn new(url: String, subject: String, secret: String, format: Format) -> Self {
        Self {
            url,
            subject,
            secret,
            format,
            js: tokio::sync::Mutex::new(None),
        }
    }

    /// The JetStream context, connecting the first time (the client reconnects by itself
    /// after that).
    async fn context(&self, timeout: Duration) -> Result<async_nats::jetstream::Context, String> {
        let mut js = self.js.lock().await;
        if let Some(c) = js.as_ref() {
            return Ok(c.clone());
        }
        let options = async_nats::ConnectOptions::new()
            .name("greenplate-forward")
            .connection_timeout(timeout);
        let client = options
            .connect(self.url.as_str())
            .await
            .map_err(|e| error_chain(&e))?;
        let context = async_nats::jetstream::new(client);
        *js = Some(context.clone());
        Ok(context)
    }

    /// One attempt: publish and wait for the stream's acknowledgement.
    pub(crate) async fn publish(
        &self,
        alert: &Alert,
        sender: &str,
        target: &str,
        timeout: Duration,
    ) -> Result<Delivered, String> {
        let js = self.context(timeout).await?;
        let body = self.format.body(alert, sender);
        let timestamp = now_ms() / 1000;
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", alert.alert_id.as_str());
        headers.insert("Content-Type", self.format.content_type());
        headers.insert("Greenplate-Seq", alert.seq.to_string().as_str());
        headers.insert("Greenplate-Target", target);
        headers.insert("Greenplate-Timestamp", timestamp.to_string().as_str());
        headers.insert(
            "Greenplate-Signature",
            payload::signature(self.secret.as_bytes(), timestamp, &body).as_str(),
        );
        let ack = js
            .publish_with_headers(self.subject.clone(), headers, bytes::Bytes::from(body))
            .await
            .map_err(|e| error_chain(&e))?;
        match tokio::time::timeout(timeout, ack.into_future()).await {
            Ok(Ok(_)) => Ok(Delivered::Sent),
            Ok(Err(e)) => Err(error_chain(&e)),
            Err(_) => Err(format!("no acknowledgement within {timeout:?}")),
        }
    }
}
