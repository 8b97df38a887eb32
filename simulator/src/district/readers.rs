//! The readers: each its own MQTT connection and its own task, which publishes the batches
//! the drive hands it (owing their alerts as it sends them), loses power when told, or floods
//! garbage; and the counts of what was offered.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use greenplate_proto::v1::Sighting;
use rand::Rng;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::alerts::{Owed, Tally};
use super::{DistrictSpec, Target};
use crate::reader::ReaderClient;

pub(super) enum ToReader {
    /// Sightings to publish after waiting the delay (the reader's phase), and the alerts
    /// they owe.
    Batch(Vec<Sighting>, Vec<Owed>, Duration),
    /// Lose power: drop the connection without DISCONNECT (the broker sends the last will).
    Kill(Vec<Owed>),
    Garbage(u32, Duration),
}

#[derive(Default)]
pub(super) struct Counters {
    pub(super) messages: AtomicU64,
    pub(super) sightings: AtomicU64,
    pub(super) reads: AtomicU64,
    pub(super) errors: AtomicU64,
    pub(super) garbage: AtomicU64,
}

/// The connected readers.
pub(super) struct Readers {
    pub(super) counters: Arc<Counters>,
    /// To each reader's task, by reader index.
    pub(super) to_readers: Vec<mpsc::Sender<ToReader>>,
    pub(super) reader_tasks: Vec<JoinHandle<()>>,
    /// To the garbage reader's task, if there is one.
    pub(super) garbage_tx: Option<mpsc::Sender<ToReader>>,
}

/// Connects every reader (and the garbage reader) and starts its task.
pub(super) async fn connect(
    target: &Target,
    spec: &DistrictSpec,
    reader_ids: &[String],
    secrets: &[String],
    garbage_id: &str,
    garbage_secret: &str,
    tally: &Arc<Mutex<Tally>>,
) -> anyhow::Result<Readers> {
    let counters = Arc::new(Counters::default());
    let mut to_readers = Vec::with_capacity(spec.readers);
    let mut reader_tasks = Vec::new();
    let mut wanted: Vec<(usize, String, String)> = reader_ids
        .iter()
        .cloned()
        .zip(secrets.iter().cloned())
        .enumerate()
        .map(|(k, (id, s))| (k, id, s))
        .collect();
    if spec.garbage.is_some() {
        wanted.push((usize::MAX, garbage_id.to_owned(), garbage_secret.to_owned()));
    }
    let (host, port) = (target.mqtt_host.clone(), target.mqtt_port);
    let connected: Vec<anyhow::Result<(usize, ReaderClient)>> = futures::stream::iter(wanted)
        .map(|(k, id, secret)| {
            let host = host.clone();
            let prefix = target.topic_prefix.clone();
            async move {
                let mut c = ReaderClient::connect(&host, port, &id, &secret)
                    .await
                    .with_context(|| format!("reader {id} connecting to {host}:{port}"))?;
                if let Some(prefix) = prefix {
                    c.set_sightings_topic(format!("{prefix}{id}/sightings"));
                }
                Ok((k, c))
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    let mut clients_by_k: Vec<Option<ReaderClient>> = (0..spec.readers).map(|_| None).collect();
    let mut garbage_client = None;
    for c in connected {
        let (k, c) = c?;
        if k == usize::MAX {
            garbage_client = Some(c);
        } else {
            clients_by_k[k] = Some(c);
        }
    }
    for c in clients_by_k {
        let c = c.context("a reader did not connect")?;
        let (tx, rx) = mpsc::channel(64);
        to_readers.push(tx);
        reader_tasks.push(tokio::spawn(reader_task(
            c,
            rx,
            tally.clone(),
            counters.clone(),
        )));
    }
    let garbage_tx = garbage_client.map(|c| {
        let (tx, rx) = mpsc::channel(4);
        reader_tasks.push(tokio::spawn(reader_task(
            c,
            rx,
            tally.clone(),
            counters.clone(),
        )));
        tx
    });
    Ok(Readers {
        counters,
        to_readers,
        reader_tasks,
        garbage_tx,
    })
}

async fn reader_task(
    mut client: ReaderClient,
    mut rx: mpsc::Receiver<ToReader>,
    tally: Arc<Mutex<Tally>>,
    counters: Arc<Counters>,
) {
    while let Some(m) = rx.recv().await {
        match m {
            ToReader::Batch(sightings, owed, phase) => {
                if !phase.is_zero() {
                    tokio::time::sleep(phase).await;
                }
                let n = sightings.len() as u64;
                let reads: u64 = sightings.iter().map(|s| u64::from(s.read_count)).sum();
                if !owed.is_empty() {
                    let at = Instant::now();
                    let mut t = tally.lock().unwrap_or_else(|e| e.into_inner());
                    for o in &owed {
                        t.owe(o, at);
                    }
                }
                match client.publish(sightings).await {
                    Ok(_) => {
                        counters.messages.fetch_add(1, Ordering::Relaxed);
                        counters.sightings.fetch_add(n, Ordering::Relaxed);
                        counters.reads.fetch_add(reads, Ordering::Relaxed);
                    }
                    Err(e) => {
                        counters.errors.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(reader = %client.id, error = %e, "Publish failed.");
                    }
                }
            }
            ToReader::Kill(owed) => {
                // What it sent just before goes out; then the power goes.
                tokio::time::sleep(Duration::from_millis(300)).await;
                {
                    let at = Instant::now();
                    let mut t = tally.lock().unwrap_or_else(|e| e.into_inner());
                    for o in &owed {
                        t.owe(o, at);
                    }
                }
                client.kill();
                return;
            }
            ToReader::Garbage(per_s, lasting) => {
                let topic = client.sightings_topic().to_owned();
                let until = Instant::now() + lasting;
                let mut tick =
                    tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(per_s.max(1))));
                while Instant::now() < until {
                    tick.tick().await;
                    let len = rand::rng().random_range(16..1024);
                    let junk: Vec<u8> = (0..len).map(|_| rand::random::<u8>()).collect();
                    if client.publish_raw(&topic, junk).await.is_ok() {
                        counters.garbage.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
    }
    client.disconnect().await;
}
