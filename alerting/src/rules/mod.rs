//! The rules: which sightings become alerts, and which matter (incident) each belongs to.
//!
//! In order: a stolen bike (with an open theft report), an armed bike that moves, a revoked
//! tag, and a tag seen at an impossible speed (a suspected clone). One sighting can fire
//! several. Inside a watch zone any of them becomes an urgent watch-zone alert (in
//! [`crate::engine`], which knows the route). The clone rule needs to remember where each
//! tag was last seen: that memory is [`clone::CloneWatch`], which ingest consults for every
//! read of a registered tag and whose verdict arrives here as [`Sighted::clone`].
//!
//! Layout: this file ([`fire`], the dedup keys); [`clone`] (the clone rule's memory).

pub mod clone;

use std::collections::HashMap;
use std::sync::Arc;

use greenplate_proto::v1::{Alert, AlertKind};
use greenplate_registry::{AlertFacts, Reader, TagId, TagState, WatchEntry, now_ms};

use crate::error::AlertingError;
use crate::rules::clone::CloneEvidence;
use crate::state::Alerting;

/// A sighting of a flagged tag (stolen, armed or revoked), from ingest.
#[derive(Debug, Clone)]
pub struct Sighted {
    pub bike_id: i64,
    pub tag: TagId,
    /// The tag's state when ingest looked it up.
    pub state: TagState,
    pub reader: Arc<Reader>,
    pub seen_at_ms: i64,
    /// Set when the clone rule's memory contradicts this sighting.
    pub clone: Option<CloneEvidence>,
    /// When ingest received the message (alert latency is measured from here to the hub).
    pub received_at: std::time::Instant,
    /// Held until the sighting's alerts are committed, then dropped (ingest uses it to
    /// acknowledge the message to an external broker only then).
    pub hold: Option<Arc<dyn std::any::Any + Send + Sync>>,
}

impl Sighted {
    /// True if a rule on the tag's state may care about this tag (a canary's too).
    pub fn flagged(state: TagState) -> bool {
        state.stolen() || state.armed() || state.revoked() || state.canary() || state.watched()
    }
}

/// A reader that went offline: silent past the configured time, or its last will.
#[derive(Debug, Clone)]
pub struct ReaderOffline {
    pub reader: Arc<Reader>,
    /// Its last accepted batch or status, Unix ms (0: never since the service started).
    pub last_seen_ms: i64,
    /// Why it is thought offline, for the log: "silent" or "last will".
    pub why: &'static str,
    pub detected_at: std::time::Instant,
}

/// What the engine is given: the rules' input.
#[derive(Debug)]
pub(crate) enum Work {
    Sighted(Sighted),
    ReaderOffline(ReaderOffline),
    CanaryMissed(CanaryMissed),
}

/// A canary not seen on schedule (from [`crate::canary::watch`]).
#[derive(Debug)]
pub(crate) struct CanaryMissed {
    pub(crate) tag: TagId,
    /// Its last reader; a placeholder with an empty id when it was never seen.
    pub(crate) reader: Arc<Reader>,
    pub(crate) last_seen_ms: i64,
    pub(crate) detected_at: std::time::Instant,
}

/// One alert to write: which rule, which matter (incident), where.
pub(crate) struct Pending<'a> {
    pub(crate) bike_id: i64,
    /// The tag seen; empty for a reader alert.
    pub(crate) tag: String,
    pub(crate) reader: &'a Arc<Reader>,
    pub(crate) seen_at_ms: i64,
    pub(crate) received_at: std::time::Instant,
    /// The rule that fired.
    pub(crate) base: AlertKind,
    /// Names the matter, so successive sightings share one incident; empty: no incident
    /// (a canary sighting).
    pub(crate) dedup_key: String,
    /// Names the sighting and the rule (`{reader}/{tag}/{seen_at_ms}/{kind}`), so that a
    /// batch processed twice alerts once ([`crate::log`]); None for alerts that are not
    /// about one sighting.
    pub(crate) source: Option<String>,
    pub(crate) plate: String,
    pub(crate) watch_zone: Option<String>,
    /// The watch-list entry of an `AlertKind::WatchListHit`.
    pub(crate) watch: Option<WatchHit>,
    pub(crate) recipients: Vec<String>,
}

/// What a watch-list hit carries of its entry.
#[derive(Debug, Clone)]
pub(crate) struct WatchHit {
    pub(crate) entry_id: String,
    pub(crate) priority: u32,
    pub(crate) reason: String,
    pub(crate) case_number: String,
}

/// What the rules read for a batch, in one query each ([`facts_for`]).
#[derive(Debug, Default)]
pub(crate) struct Facts {
    /// Plates and open theft reports, by bike.
    pub(crate) bikes: HashMap<i64, AlertFacts>,
    /// The active watch-list entries naming a watched sighting's tag or plate.
    pub(crate) watches: Vec<WatchEntry>,
}

impl Pending<'_> {
    /// The alert to log for this pending one, in `incident_id` (its seq still 0). Inside a
    /// watch zone the alert is an urgent watch-zone alert.
    pub(crate) fn into_alert(self, incident_id: String) -> (Alert, Vec<String>) {
        let (kind, priority) = match (&self.watch, &self.watch_zone) {
            // A watch-list hit keeps its kind and its entry's priority, in a watch zone too
            // (zone_id says where).
            (Some(w), _) => (self.base, w.priority),
            (None, Some(_)) => (AlertKind::WatchZone, 2u32),
            // A probe, not a matter for anyone to act on.
            (None, None) if self.base == AlertKind::CanarySeen => (self.base, 0u32),
            (None, None) => (self.base, 1u32),
        };
        let watch = self.watch.unwrap_or(WatchHit {
            entry_id: String::new(),
            priority: 0,
            reason: String::new(),
            case_number: String::new(),
        });
        let alert = Alert {
            seq: 0,
            alert_id: new_alert_id(),
            kind: kind as i32,
            plate: self.plate,
            tag_id: self.tag,
            reader_id: self.reader.id.clone(),
            lat: self.reader.lat,
            lon: self.reader.lon,
            seen_at_ms: self.seen_at_ms,
            incident_id,
            priority,
            zone_id: self.watch_zone.unwrap_or_default(),
            watch_entry_id: watch.entry_id,
            reason: watch.reason,
            case_number: watch.case_number,
            escalation: 0,
            cameras: Vec::new(),
        };
        (alert, self.recipients)
    }
}

/// A new alert id: `al-` and 16 hex digits.
pub(crate) fn new_alert_id() -> String {
    format!("al-{}", hex::encode(rand::random::<[u8; 8]>()))
}

/// What the rules need of the bikes of a batch, read in one query: plates and open theft
/// reports (read fresh for each batch: a bike may have been recovered since ingest looked).
pub(crate) async fn facts_for(alerting: &Alerting, batch: &[Work]) -> Result<Facts, AlertingError> {
    let mut ids: Vec<i64> = batch
        .iter()
        .filter_map(|w| match w {
            Work::Sighted(s) if !s.state.canary() && s.bike_id != 0 => Some(s.bike_id),
            _ => None,
        })
        .collect();
    let mut facts = Facts::default();
    if !ids.is_empty() {
        ids.sort_unstable();
        ids.dedup();
        facts.bikes = alerting.registry().alert_facts(&ids).await?;
    }
    // Watch entries are read here, not trusted from the index's flag: one that ended since
    // ingest looked does not alert.
    let mut tags = Vec::new();
    let mut plates = Vec::new();
    for w in batch {
        if let Work::Sighted(s) = w
            && s.state.watched()
        {
            tags.push(s.tag.to_string());
            if let Some(b) = facts.bikes.get(&s.bike_id) {
                plates.push(b.plate.clone());
            }
        }
    }
    if !tags.is_empty() {
        tags.sort_unstable();
        tags.dedup();
        plates.sort_unstable();
        plates.dedup();
        facts.watches = alerting
            .registry()
            .active_watch_entries(&plates, &tags, now_ms())
            .await?;
    }
    Ok(facts)
}

/// Runs the rules on one piece of work and adds what fired to `out`, routed: each alert with
/// its units and watch zone. `facts` holds what [`facts_for`] read for the batch.
pub(crate) fn evaluate<'a>(
    alerting: &Alerting,
    facts: &Facts,
    work: &'a Work,
    out: &mut Vec<Pending<'a>>,
) {
    let s = match work {
        Work::Sighted(s) => s,
        Work::ReaderOffline(o) => {
            tracing::warn!(reader = %o.reader.id, why = o.why, last_seen_ms = o.last_seen_ms, "Reader offline.");
            out.push(Pending {
                bike_id: 0,
                tag: String::new(),
                reader: &o.reader,
                seen_at_ms: if o.last_seen_ms > 0 {
                    o.last_seen_ms
                } else {
                    now_ms()
                },
                received_at: o.detected_at,
                base: AlertKind::ReaderOffline,
                dedup_key: format!("reader-offline:{}", o.reader.id),
                source: None,
                plate: String::new(),
                watch_zone: None,
                watch: None,
                recipients: alerting.router().command_units(),
            });
            return;
        }
        Work::CanaryMissed(m) => {
            out.push(Pending {
                bike_id: 0,
                tag: m.tag.to_string(),
                reader: &m.reader,
                seen_at_ms: m.last_seen_ms,
                received_at: m.detected_at,
                base: AlertKind::CanaryMissed,
                dedup_key: format!("canary-missed:{}", m.tag),
                source: None,
                plate: String::new(),
                watch_zone: None,
                watch: None,
                recipients: alerting.router().command_units(),
            });
            return;
        }
    };
    if s.state.canary() {
        // A probe: to canary units only, never a watch-zone alert, no incident; one per
        // quarter of its schedule.
        if alerting.canaries().admit(s.tag, now_ms()) {
            out.push(Pending {
                bike_id: 0,
                tag: s.tag.to_string(),
                reader: &s.reader,
                seen_at_ms: s.seen_at_ms,
                received_at: s.received_at,
                base: AlertKind::CanarySeen,
                dedup_key: String::new(),
                source: None,
                plate: String::new(),
                watch_zone: None,
                watch: None,
                recipients: alerting.router().canary_units(),
            });
        }
        return;
    }
    let bike = facts.bikes.get(&s.bike_id);
    let plate = bike.map(|b| b.plate.clone()).unwrap_or_default();
    let tag = s.tag.to_string();
    let hits: Vec<&WatchEntry> = if s.state.watched() {
        facts
            .watches
            .iter()
            .filter(|e| e.tag_id == tag || (!plate.is_empty() && e.plate == plate))
            .collect()
    } else {
        Vec::new()
    };
    let fired = fire(bike, s);
    if fired.is_empty() && hits.is_empty() {
        return;
    }
    let recipients = alerting.router().units_for(&s.reader);
    let watch_zone = alerting.router().route(&s.reader).watch_zone.clone();
    for e in hits {
        let base = AlertKind::WatchListHit;
        out.push(Pending {
            bike_id: s.bike_id,
            tag: tag.clone(),
            reader: &s.reader,
            seen_at_ms: s.seen_at_ms,
            received_at: s.received_at,
            base,
            dedup_key: format!("watch:{}", e.entry_id),
            source: Some(format!(
                "{}/{}/{}/{}/{}",
                s.reader.id, s.tag, s.seen_at_ms, base as i32, e.entry_id
            )),
            plate: plate.clone(),
            watch_zone: watch_zone.clone(),
            watch: Some(WatchHit {
                entry_id: e.entry_id.clone(),
                priority: e.priority,
                reason: e.reason.clone(),
                case_number: e.case_number.clone(),
            }),
            // Covert: command centers only, never the zone's or the nearest units.
            recipients: if e.covert {
                alerting.router().command_units()
            } else {
                recipients.clone()
            },
        });
    }
    for (base, dedup_key) in fired {
        out.push(Pending {
            bike_id: s.bike_id,
            tag: s.tag.to_string(),
            reader: &s.reader,
            seen_at_ms: s.seen_at_ms,
            received_at: s.received_at,
            base,
            dedup_key,
            source: Some(format!(
                "{}/{}/{}/{}",
                s.reader.id, s.tag, s.seen_at_ms, base as i32
            )),
            plate: plate.clone(),
            watch_zone: watch_zone.clone(),
            watch: None,
            recipients: recipients.clone(),
        });
    }
}

/// The rules that fire for one sighting, each with its matter's dedup key (successive
/// sightings of one matter share an incident). `bike` is what the batch read of its bike.
fn fire(bike: Option<&AlertFacts>, s: &Sighted) -> Vec<(AlertKind, String)> {
    let mut fired = Vec::new();
    if s.state.stolen() {
        // The bike may have been recovered since ingest looked.
        if let Some(report) = bike.and_then(|b| b.open_theft_report) {
            fired.push((AlertKind::StolenSighted, format!("theft:{report}")));
        }
    }
    if s.state.armed() && !s.state.stolen() {
        fired.push((AlertKind::ArmedMoved, format!("armed:{}", s.bike_id)));
    }
    if s.state.revoked() {
        fired.push((AlertKind::RevokedTagSeen, format!("revoked:{}", s.tag)));
    }
    if let Some(e) = &s.clone {
        tracing::info!(
            tag = %s.tag,
            reader = %s.reader.id,
            other_reader = %e.other_reader.id,
            km = e.distance_km,
            kmh = e.speed_kmh,
            "Suspected cloned tag."
        );
        fired.push((AlertKind::CloneSuspected, format!("clone:{}", s.tag)));
    }
    fired
}
