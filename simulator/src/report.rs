//! A district run's report, as JSON and as Markdown.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::probe::ProcSample;

/// Counts and rates over the drive.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Rates {
    pub messages: u64,
    pub sightings: u64,
    pub reads: u64,
    pub messages_per_s: f64,
    pub sightings_per_s: f64,
    pub reads_per_s: f64,
}

impl Rates {
    pub fn new(messages: u64, sightings: u64, reads: u64, seconds: f64) -> Self {
        let s = seconds.max(1e-9);
        Self {
            messages,
            sightings,
            reads,
            messages_per_s: messages as f64 / s,
            sightings_per_s: sightings as f64 / s,
            reads_per_s: reads as f64 / s,
        }
    }
}

/// What the server says it processed (deltas of its `/metrics`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Processed {
    /// During the drive (batches accepted, sightings accepted, reads).
    pub during_drive: Rates,
    /// Everything taken by the end of the settle time.
    pub batches_total: u64,
    pub sightings_total: u64,
    pub reads_total: u64,
    /// Messages dropped by the server, by reason (every reason the server counts).
    pub rejected_by_reason: BTreeMap<String, u64>,
    pub sightings_rejected_by_reason: BTreeMap<String, u64>,
    /// Messages the server says it lost, by reason (`greenplate_ingest_messages_lost_total`).
    pub lost_by_reason: BTreeMap<String, u64>,
    /// Batch seqs the server says never arrived (`greenplate_ingest_reader_batches_missing_total`,
    /// all readers; counted once they leave the 1,024-wide window, so a short run shows few).
    pub batches_missing: u64,
    /// The server's own alert latency histogram: count and mean, ms (ingest to live feed).
    pub server_alerts: u64,
    pub server_alert_latency_mean_ms: f64,
}

/// Latency percentiles, ms.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    pub count: usize,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

impl Latency {
    pub fn of(mut ms: Vec<f64>) -> Self {
        if ms.is_empty() {
            return Self::default();
        }
        ms.sort_by(f64::total_cmp);
        let pct = |p: f64| ms[((ms.len() - 1) as f64 * p).round() as usize];
        Self {
            count: ms.len(),
            p50: pct(0.5),
            p99: pct(0.99),
            max: ms[ms.len() - 1],
        }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct KindCount {
    pub expected: u64,
    pub received: u64,
}

/// Alerts owed by the oracle against alerts the patrol streams received.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Alerts {
    /// (unit, alert) deliveries owed.
    pub expected: u64,
    pub received: u64,
    pub lost: u64,
    pub duplicated: u64,
    /// Deliveries of this run's readers that no scenario explains.
    pub unexpected: u64,
    /// `STOLEN_SIGHTED_EARLIER` deliveries (look-backs of thefts reported late): the server
    /// finds them in its own pass history, which the oracle does not model, so they are
    /// counted here and neither owed nor unexpected.
    pub look_back: u64,
    pub by_kind: BTreeMap<String, KindCount>,
    /// From the publish of the batch holding a pass's first read to a stream's receipt.
    pub latency_ms: Latency,
    /// From the reader's loss of power to the command center's receipt.
    pub reader_offline_latency_ms: Option<f64>,
}

/// The server process while driving.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ServerUse {
    pub pid: u32,
    /// CPU used during the drive, cores (1.0 = one core busy).
    pub cpu_cores: f64,
    pub peak_rss_mib: f64,
    pub rss_mib_end: f64,
    /// Whether the process is the simulator itself (server started in-process): then CPU and
    /// memory include the simulator's.
    pub includes_simulator: bool,
}

impl ServerUse {
    pub fn between(pid: u32, before: ProcSample, after: ProcSample, seconds: f64) -> Self {
        Self {
            pid,
            cpu_cores: (after.cpu_s - before.cpu_s) / seconds.max(1e-9),
            peak_rss_mib: after.peak_rss_mib,
            rss_mib_end: after.rss_mib,
            includes_simulator: pid == std::process::id(),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Garbage {
    pub reader: String,
    pub published: u64,
}

/// The whole report.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub setup: String,
    /// When the drive started, Unix ms.
    pub started_at_ms: i64,
    pub mode: String,
    pub readers: usize,
    pub bikes: usize,
    pub batch_ms: u64,
    pub drive_seconds: f64,
    /// The machine's load average (1, 5, 15 min) at the end of the drive.
    pub load_average: String,
    pub offered: Rates,
    pub processed: Option<Processed>,
    /// Where `processed` comes from: the server's `/metrics`, or a bare subscriber's count.
    pub processed_by: String,
    pub alerts: Alerts,
    pub server: Option<ServerUse>,
    /// The external broker's process (Mosquitto), when there is one.
    pub broker: Option<ServerUse>,
    pub garbage: Option<Garbage>,
    /// Simulated hour at the start and end.
    pub hours: (f64, f64),
    pub publish_errors: u64,
}

impl Report {
    /// Markdown: a few tables a person reads.
    pub fn markdown(&self) -> String {
        let mut m = String::new();
        let p = |m: &mut String, s: String| {
            m.push_str(&s);
            m.push('\n');
        };
        p(&mut m, format!("## District run: {}", self.setup));
        p(&mut m, String::new());
        p(
            &mut m,
            format!(
                "{} readers, {} bikes, `{}` traffic, batches every {} ms, {:.1} s of driving \
                 (simulated hours {:.2} to {:.2}); load average at the end {}.",
                self.readers,
                self.bikes,
                self.mode,
                self.batch_ms,
                self.drive_seconds,
                self.hours.0,
                self.hours.1,
                self.load_average
            ),
        );
        p(&mut m, String::new());
        p(&mut m, "| | messages/s | sightings/s | reads/s |".into());
        p(&mut m, "|---|---|---|---|".into());
        let o = &self.offered;
        p(
            &mut m,
            format!(
                "| offered (published by the readers) | {:.0} | {:.0} | {:.0} |",
                o.messages_per_s, o.sightings_per_s, o.reads_per_s
            ),
        );
        if let Some(pr) = &self.processed {
            let d = &pr.during_drive;
            p(
                &mut m,
                format!(
                    "| processed ({}) | {:.0} | {:.0} | {:.0} |",
                    self.processed_by, d.messages_per_s, d.sightings_per_s, d.reads_per_s
                ),
            );
            p(&mut m, String::new());
            p(
                &mut m,
                format!(
                    "Offered in all: {} messages, {} sightings, {} reads; processed by the end \
                     of the settle time: {} batches, {} sightings, {} reads.",
                    o.messages,
                    o.sightings,
                    o.reads,
                    pr.batches_total,
                    pr.sightings_total,
                    pr.reads_total
                ),
            );
            if !pr.rejected_by_reason.is_empty() {
                p(
                    &mut m,
                    format!("Messages rejected, by reason: {:?}.", pr.rejected_by_reason),
                );
            }
            let rejected: u64 = pr.rejected_by_reason.values().sum();
            let lost: u64 = pr.lost_by_reason.values().sum();
            p(
                &mut m,
                format!(
                    "Counted as lost by the server: {lost} messages {:?}; batch seqs missing: {}. \
                     Offered and neither processed, rejected nor counted: {}.",
                    pr.lost_by_reason,
                    pr.batches_missing,
                    o.messages
                        .saturating_sub(pr.batches_total + rejected + lost)
                ),
            );
            if !pr.sightings_rejected_by_reason.is_empty() {
                p(
                    &mut m,
                    format!(
                        "Sightings rejected, by reason: {:?}.",
                        pr.sightings_rejected_by_reason
                    ),
                );
            }
        }
        let a = &self.alerts;
        p(&mut m, String::new());
        p(
            &mut m,
            "| alerts (unit deliveries) | expected | received |".into(),
        );
        p(&mut m, "|---|---|---|".into());
        for (kind, c) in &a.by_kind {
            p(
                &mut m,
                format!("| {kind} | {} | {} |", c.expected, c.received),
            );
        }
        p(
            &mut m,
            format!("| **all** | **{}** | **{}** |", a.expected, a.received),
        );
        p(&mut m, String::new());
        p(
            &mut m,
            format!(
                "Lost {}, duplicated {}, unexpected {}, look-back (not checked) {}. Latency from \
                 the reader's publish to the patrol's receipt over {} deliveries: p50 {:.2} ms, \
                 p99 {:.2} ms, max {:.2} ms.{}",
                a.lost,
                a.duplicated,
                a.unexpected,
                a.look_back,
                a.latency_ms.count,
                a.latency_ms.p50,
                a.latency_ms.p99,
                a.latency_ms.max,
                a.reader_offline_latency_ms
                    .map(|l| format!(
                        " Reader offline (power cut) to the command center: {l:.0} ms."
                    ))
                    .unwrap_or_default()
            ),
        );
        if let Some(g) = &self.garbage {
            p(
                &mut m,
                format!(
                    "Garbage: reader {} published {} messages of random bytes.",
                    g.reader, g.published
                ),
            );
        }
        if let Some(s) = &self.server {
            p(
                &mut m,
                format!(
                    "Server (pid {}{}): {:.2} cores while driving, peak RSS {:.0} MiB, RSS at the end {:.0} MiB.",
                    s.pid,
                    if s.includes_simulator {
                        ", in-process with the simulator"
                    } else {
                        ""
                    },
                    s.cpu_cores,
                    s.peak_rss_mib,
                    s.rss_mib_end
                ),
            );
        }
        if let Some(s) = &self.broker {
            p(
                &mut m,
                format!(
                    "Broker (pid {}): {:.2} cores while driving, peak RSS {:.0} MiB.",
                    s.pid, s.cpu_cores, s.peak_rss_mib
                ),
            );
        }
        if self.publish_errors > 0 {
            p(&mut m, format!("Publish errors: {}.", self.publish_errors));
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let l = Latency::of((1..=100).map(f64::from).collect());
        assert_eq!((l.p50, l.p99, l.max, l.count), (51.0, 99.0, 100.0, 100));
        assert_eq!(Latency::of(vec![]).count, 0);
    }
}
