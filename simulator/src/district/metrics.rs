//! What the server says it processed: the differences of its `/metrics` counters over the
//! drive and up to the end of the settle.

use crate::probe::Scrape;
use crate::report::{Processed, Rates};

pub(super) fn processed(
    before: &Scrape,
    drive_end: &Scrape,
    end: &Scrape,
    drive_s: f64,
) -> Processed {
    let d = |s: &Scrape, name: &str| (s.get(name) - before.get(name)).max(0.0) as u64;
    let reasons = |name: &str| {
        let b = before.by_reason(name);
        end.by_reason(name)
            .into_iter()
            .map(|(r, v)| {
                let n = (v - b.get(&r).copied().unwrap_or(0.0)).max(0.0) as u64;
                (r, n)
            })
            .filter(|(_, n)| *n > 0)
            .collect()
    };
    let lat_sum = "greenplate_alert_latency_seconds_sum";
    let lat_count = "greenplate_alert_latency_seconds_count";
    let alerts = d(end, lat_count);
    Processed {
        during_drive: Rates::new(
            d(drive_end, "greenplate_ingest_batches_accepted_total"),
            d(drive_end, "greenplate_ingest_sightings_accepted_total"),
            d(drive_end, "greenplate_ingest_reads_total"),
            drive_s,
        ),
        batches_total: d(end, "greenplate_ingest_batches_accepted_total"),
        sightings_total: d(end, "greenplate_ingest_sightings_accepted_total"),
        reads_total: d(end, "greenplate_ingest_reads_total"),
        rejected_by_reason: reasons("greenplate_ingest_batches_rejected_total"),
        sightings_rejected_by_reason: reasons("greenplate_ingest_sightings_rejected_total"),
        lost_by_reason: reasons("greenplate_ingest_messages_lost_total"),
        batches_missing: d(end, "greenplate_ingest_reader_batches_missing_total"),
        server_alerts: alerts,
        server_alert_latency_mean_ms: if alerts > 0 {
            (end.get(lat_sum) - before.get(lat_sum)) / alerts as f64 * 1000.0
        } else {
            0.0
        },
    }
}
