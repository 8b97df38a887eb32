//! What a node knows of the canaries (see [`crate::canary`]): each one's schedule and its
//! last sighting on the live feed, whether it is overdue, and the miss counters. A leaf:
//! [`crate::state`] holds it, [`crate::canary`] fills and reads it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use greenplate_registry::{Reader, TagId};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

/// A `tag` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TagLabel {
    pub tag: String,
}

/// What the API shows of a canary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanaryInfo {
    pub tag: TagId,
    pub every_ms: i64,
    pub note: String,
    /// Unix ms of its last sighting on the live feed since this node started; 0: none.
    pub last_seen_ms: i64,
    pub last_reader: String,
    pub overdue: bool,
}

/// One canary: its schedule and what this node saw of it.
#[derive(Debug, Clone)]
struct Entry {
    every_ms: i64,
    note: String,
    /// Its schedule runs from here until the first sighting (when it was added, or when
    /// this node loaded it).
    since_ms: i64,
    last_seen_ms: i64,
    last_reader: Option<Arc<Reader>>,
    /// When the rules last let one of its sightings through to the log.
    last_admitted_ms: i64,
    overdue: bool,
}

/// Every canary, in memory (a handful: they are the operator's probes, not traffic).
#[derive(Debug, Default)]
pub struct Canaries {
    entries: Mutex<BTreeMap<TagId, Entry>>,
    /// Times a canary went overdue, by tag.
    pub misses: Family<TagLabel, Counter>,
    /// Canaries overdue now.
    pub overdue: Gauge,
}

impl Canaries {
    fn count_overdue(&self, entries: &BTreeMap<TagId, Entry>) {
        self.overdue
            .set(entries.values().filter(|e| e.overdue).count() as i64);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<TagId, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Puts `defs` (tag, schedule, note) in force: new canaries start their schedule now,
    /// known ones keep what was seen of them, and canaries not in `defs` are forgotten.
    pub(crate) fn replace(&self, defs: Vec<(TagId, i64, String)>, now: i64) {
        let mut entries = self.lock();
        let mut next = BTreeMap::new();
        for (tag, every_ms, note) in defs {
            let entry = match entries.remove(&tag) {
                Some(mut e) => {
                    e.every_ms = every_ms;
                    e.note = note;
                    e
                }
                None => Entry {
                    every_ms,
                    note,
                    since_ms: now,
                    last_seen_ms: 0,
                    last_reader: None,
                    last_admitted_ms: 0,
                    overdue: false,
                },
            };
            next.insert(tag, entry);
        }
        *entries = next;
        self.count_overdue(&entries);
    }

    /// Whether a sighting of canary `tag` at `now` goes on to the log: one per quarter of
    /// its schedule (1 s to 1 min apart), so a fixed canary read in every batch does not
    /// fill the log.
    pub(crate) fn admit(&self, tag: TagId, now: i64) -> bool {
        let mut entries = self.lock();
        let Some(e) = entries.get_mut(&tag) else {
            return false;
        };
        let gap = (e.every_ms / 4).clamp(1_000, 60_000);
        if e.last_admitted_ms != 0 && now - e.last_admitted_ms < gap {
            return false;
        }
        e.last_admitted_ms = now;
        true
    }

    /// A sighting of `tag` by `reader` reached the live feed.
    pub(crate) fn seen(&self, tag: TagId, reader: Option<Arc<Reader>>, at_ms: i64) {
        let mut entries = self.lock();
        if let Some(e) = entries.get_mut(&tag) {
            e.last_seen_ms = e.last_seen_ms.max(at_ms);
            if reader.is_some() {
                e.last_reader = reader;
            }
            if e.overdue {
                e.overdue = false;
                tracing::info!(tag = %tag, "Canary seen again.");
            }
        }
        self.count_overdue(&entries);
    }

    /// The canaries that went overdue by `now` (each once until it is seen again), with
    /// their last reader.
    pub(crate) fn newly_overdue(&self, now: i64) -> Vec<(TagId, Option<Arc<Reader>>, i64)> {
        let mut entries = self.lock();
        let mut out = Vec::new();
        for (tag, e) in entries.iter_mut() {
            let last = e.last_seen_ms.max(e.since_ms);
            if !e.overdue && now - last > e.every_ms {
                e.overdue = true;
                self.misses
                    .get_or_create(&TagLabel {
                        tag: tag.to_string(),
                    })
                    .inc();
                out.push((*tag, e.last_reader.clone(), e.last_seen_ms));
            }
        }
        self.count_overdue(&entries);
        out
    }

    /// Every canary, by tag.
    pub fn list(&self) -> Vec<CanaryInfo> {
        self.lock()
            .iter()
            .map(|(tag, e)| CanaryInfo {
                tag: *tag,
                every_ms: e.every_ms,
                note: e.note.clone(),
                last_seen_ms: e.last_seen_ms,
                last_reader: e
                    .last_reader
                    .as_ref()
                    .map(|r| r.id.clone())
                    .unwrap_or_default(),
                overdue: e.overdue,
            })
            .collect()
    }

    /// The shortest schedule, ms (how often [`crate::canary::watch`] looks).
    pub(crate) fn shortest_every_ms(&self) -> Option<i64> {
        self.lock().values().map(|e| e.every_ms).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag(n: u8) -> TagId {
        TagId::parse(&format!("E2801160600002070000CA{n:02X}")).unwrap()
    }

    #[test]
    fn a_canary_is_overdue_once_past_its_schedule_until_seen_again() {
        let c = Canaries::default();
        c.replace(vec![(tag(1), 10_000, String::new())], 1_000_000);
        assert!(c.newly_overdue(1_010_000).is_empty(), "exactly on schedule");
        assert_eq!(c.newly_overdue(1_010_001).len(), 1);
        assert!(
            c.newly_overdue(1_020_000).is_empty(),
            "once until seen again"
        );
        assert_eq!(c.overdue.get(), 1);
        c.seen(tag(1), None, 1_020_000);
        assert_eq!(c.overdue.get(), 0);
        assert!(c.newly_overdue(1_029_000).is_empty());
        assert_eq!(c.newly_overdue(1_030_001).len(), 1);
        let misses = c
            .misses
            .get_or_create(&TagLabel {
                tag: tag(1).to_string(),
            })
            .get();
        assert_eq!(misses, 2);
        // A change of schedule keeps what was seen; a canary no longer defined is gone.
        c.replace(vec![(tag(1), 60_000, "moved".into())], 2_000_000);
        let l = c.list();
        assert_eq!(
            (l.len(), l[0].last_seen_ms, l[0].every_ms),
            (1, 1_020_000, 60_000)
        );
        c.replace(vec![], 2_000_000);
        assert!(c.list().is_empty());
    }

    #[test]
    fn sightings_are_let_through_a_quarter_of_the_schedule_apart() {
        let c = Canaries::default();
        c.replace(
            vec![
                (tag(1), 60_000, String::new()),
                (tag(2), 1_000, String::new()),
            ],
            0,
        );
        assert!(c.admit(tag(1), 100_000));
        assert!(!c.admit(tag(1), 114_999));
        assert!(c.admit(tag(1), 115_000));
        // At least 1 s apart even for a short schedule.
        assert!(c.admit(tag(2), 100_000));
        assert!(!c.admit(tag(2), 100_999));
        assert!(c.admit(tag(2), 101_000));
        assert!(!c.admit(tag(3), 100_000), "not a canary");
    }
}
