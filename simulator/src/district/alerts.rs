//! The alerts: those the server owes (the oracle's verdicts on each scenario sighting, owed to
//! the units covering its reader once the batch carrying it is sent) and those every patrol
//! unit receives on its stream, matched in a [`Tally`]: received, lost, duplicated,
//! unexpected, and how fast.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::Context;
use greenplate_proto::v1::{AlertKind, StreamAlertsRequest};
use tokio::task::JoinHandle;
use tonic::transport::Channel;

use crate::clients;
use crate::report::KindCount;

/// A delivery the oracle says is owed: to `unit`, of `kind`, for `tag` at `reader`.
type Key = (String, i32, String, String);

#[derive(Default)]
pub(super) struct Tally {
    pub(super) prefix: String,
    pub(super) owed: HashMap<Key, VecDeque<Instant>>,
    pub(super) expected: u64,
    pub(super) received: u64,
    pub(super) unexpected: u64,
    pub(super) unexpected_samples: Vec<String>,
    /// Look-back alerts (a theft reported after the bike was seen): the server searches
    /// its own pass history, which the oracle does not model; counted apart, not matched.
    pub(super) look_back: u64,
    pub(super) duplicated: u64,
    pub(super) foreign: u64,
    pub(super) by_kind: BTreeMap<String, KindCount>,
    pub(super) seqs: HashMap<String, HashSet<u64>>,
    pub(super) latencies: Vec<f64>,
    pub(super) offline_latency: Option<f64>,
}

impl Tally {
    pub(super) fn owe(&mut self, o: &Owed, at: Instant) {
        for unit in &o.units {
            self.expected += 1;
            self.by_kind.entry(kind_name(o.kind)).or_default().expected += 1;
            self.owed
                .entry((unit.clone(), o.kind, o.tag.clone(), o.reader.clone()))
                .or_default()
                .push_back(at);
        }
    }

    fn receive(&mut self, unit: &str, a: &greenplate_proto::v1::Alert) {
        if !a.reader_id.starts_with(&self.prefix) {
            self.foreign += 1;
            return;
        }
        if !self.seqs.entry(unit.to_owned()).or_default().insert(a.seq) {
            self.duplicated += 1;
            return;
        }
        if a.kind == AlertKind::StolenSightedEarlier as i32 {
            self.look_back += 1;
            return;
        }
        let key = (
            unit.to_owned(),
            a.kind,
            a.tag_id.clone(),
            a.reader_id.clone(),
        );
        match self.owed.get_mut(&key).and_then(|q| q.pop_front()) {
            Some(at) => {
                self.received += 1;
                self.by_kind.entry(kind_name(a.kind)).or_default().received += 1;
                let ms = at.elapsed().as_secs_f64() * 1000.0;
                if a.kind == AlertKind::ReaderOffline as i32 {
                    self.offline_latency = Some(ms);
                } else {
                    self.latencies.push(ms);
                }
            }
            None => {
                self.unexpected += 1;
                if self.unexpected_samples.len() < 10 {
                    self.unexpected_samples.push(format!(
                        "{unit}: {} tag {} at {}",
                        kind_name(a.kind),
                        a.tag_id,
                        a.reader_id
                    ));
                }
            }
        }
    }
}

fn kind_name(kind: i32) -> String {
    AlertKind::try_from(kind)
        .map(|k| k.as_str_name().trim_start_matches("ALERT_KIND_").to_owned())
        .unwrap_or_else(|_| format!("KIND_{kind}"))
}

/// An alert owed once a batch is published.
#[derive(Debug, Clone)]
pub(super) struct Owed {
    pub(super) units: Vec<String>,
    pub(super) kind: i32,
    pub(super) tag: String,
    pub(super) reader: String,
}

/// Patrol streams: every zone unit and the command center, each alert into the tally.
pub(super) async fn listen(
    channel: &Option<Channel>,
    units: &[(String, String)],
    command: &Option<(String, String)>,
    tally: &Arc<Mutex<Tally>>,
) -> anyhow::Result<Vec<JoinHandle<()>>> {
    let mut stream_tasks = Vec::new();
    if let Some(channel) = &channel {
        for (unit, token) in units.iter().chain(command.iter()) {
            let mut stream = clients::patrol(channel.clone(), token)?
                .stream_alerts(StreamAlertsRequest { resume_after: 0 })
                .await
                .with_context(|| format!("StreamAlerts as {unit}"))?
                .into_inner();
            let (tally, unit) = (tally.clone(), unit.clone());
            stream_tasks.push(tokio::spawn(async move {
                while let Ok(Some(alert)) = stream.message().await {
                    tally
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .receive(&unit, &alert);
                }
            }));
        }
    }
    Ok(stream_tasks)
}
