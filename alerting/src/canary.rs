//! Canaries: proof, in production, that the whole path works.
//!
//! An operator marks tags as canaries (Admin/AddCanary): fixed tags in front of chosen
//! readers, or tags on patrol bikes, each with the longest time allowed between two
//! sightings. A canary tag is in the hot index with the canary flag, so a read of it goes
//! through everything a stolen bike's does (the broker, open, decode, the hot index, the
//! engine, the alert log's commit, the live feed) and becomes an `ALERT_KIND_CANARY_SEEN`
//! for canary units only: patrols never see it, and it opens no incident. A fixed canary is
//! read in every batch, so the rules let one through per canary every quarter of its
//! schedule (at least 1 s, at most 1 min apart).
//!
//! [`watch`] follows the live feed like a stream does and records each canary sighting that
//! reached it. A canary not seen for longer than its schedule is overdue: it is counted
//! (`greenplate_canary_misses_total{tag}`, `greenplate_canaries_overdue`) and command
//! centers get one `ALERT_KIND_CANARY_MISSED` until it is seen again. That catches a
//! silent failure no per-stage counter sees (a stalled link, a wedged engine, a feed that
//! stopped), as long as the canary's reader itself is up.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use greenplate_proto::v1::AlertKind;
use greenplate_registry::store::audit;
use greenplate_registry::{Caller, Reader, RegistryError, TagId, TagState, now_ms};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use sqlx::Row;
use tokio_util::sync::CancellationToken;

use crate::engine::EngineHandle;
use crate::error::AlertingError;
use crate::state::Alerting;

/// The longest schedule a canary may have, s (a day).
pub const MAX_EVERY_S: u32 = 86_400;

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
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<TagId, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Puts `defs` (tag, schedule, note) in force: new canaries start their schedule now,
    /// known ones keep what was seen of them, and canaries not in `defs` are forgotten.
    fn replace(&self, defs: Vec<(TagId, i64, String)>, now: i64) {
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
        self.overdue
            .set(entries.values().filter(|e| e.overdue).count() as i64);
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
    fn seen(&self, tag: TagId, reader: Option<Arc<Reader>>, at_ms: i64) {
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
        self.overdue
            .set(entries.values().filter(|e| e.overdue).count() as i64);
    }

    /// The canaries that went overdue by `now` (each once until it is seen again), with
    /// their last reader.
    fn newly_overdue(&self, now: i64) -> Vec<(TagId, Option<Arc<Reader>>, i64)> {
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
        self.overdue
            .set(entries.values().filter(|e| e.overdue).count() as i64);
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

    /// The shortest schedule, ms (how often [`watch`] looks).
    fn shortest_every_ms(&self) -> Option<i64> {
        self.lock().values().map(|e| e.every_ms).min()
    }
}

impl Alerting {
    /// Adds a canary, or changes its schedule and note. Refused for a registered bike's tag.
    pub async fn add_canary(
        &self,
        caller: &Caller,
        tag_id: &str,
        every_s: u32,
        note: &str,
    ) -> Result<(), AlertingError> {
        let tag = TagId::parse(tag_id)
            .ok_or_else(|| RegistryError::invalid("tag_id", "must be 24 hex digits"))?;
        if every_s == 0 || every_s > MAX_EVERY_S {
            return Err(RegistryError::invalid("expected_every_s", "must be 1 to 86400").into());
        }
        let note = greenplate_registry::validate::optional_text("note", note, 200)?;
        if let Some(state) = self.registry().index().lookup(tag)
            && !state.canary()
        {
            return Err(RegistryError::FailedPrecondition(format!(
                "tag {tag} belongs to a registered bike; a canary needs a tag of its own"
            ))
            .into());
        }
        let mut tx = self.db().begin_write().await?;
        sqlx::query(
            "INSERT INTO canaries (tag_id, every_ms, note, created_at_ms) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (tag_id) DO UPDATE SET every_ms = excluded.every_ms, note = excluded.note",
        )
        .bind(tag.to_string())
        .bind(i64::from(every_s) * 1000)
        .bind(&note)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        audit(
            &mut tx,
            caller,
            "add_canary",
            &format!("{tag} every {every_s} s"),
        )
        .await?;
        greenplate_registry::sync::announce(&mut tx, &greenplate_registry::sync::Change::Zones)
            .await?;
        tx.commit().await?;
        self.load_canaries().await?;
        Ok(())
    }

    /// Loads the canaries from the database and flags their tags in the hot index.
    pub(crate) async fn load_canaries(&self) -> Result<(), RegistryError> {
        let rows = sqlx::query("SELECT tag_id, every_ms, note FROM canaries")
            .fetch_all(self.db().pool())
            .await?;
        let mut defs = Vec::with_capacity(rows.len());
        for row in rows {
            let tag: String = row.try_get("tag_id")?;
            let Some(tag) = TagId::parse(&tag) else {
                tracing::warn!(tag = %tag, "Skipped a malformed canary tag.");
                continue;
            };
            self.registry().index().set(tag, TagState::canary_tag());
            defs.push((tag, row.try_get("every_ms")?, row.try_get("note")?));
        }
        self.canaries.replace(defs, now_ms());
        Ok(())
    }

    /// The canaries and what this node saw of them.
    pub fn canaries(&self) -> &Canaries {
        &self.canaries
    }
}

/// Follows the live feed for canary sightings and raises `ALERT_KIND_CANARY_MISSED` (to
/// command centers, through `engine`) for each canary overdue, until `shutdown`.
pub async fn watch(alerting: Arc<Alerting>, engine: EngineHandle, shutdown: CancellationToken) {
    let mut feed = alerting.subscribe();
    let period = |a: &Alerting| {
        Duration::from_millis(
            a.canaries
                .shortest_every_ms()
                .map_or(1_000, |ms| (ms / 4).clamp(100, 5_000)) as u64,
        )
    };
    let mut tick = tokio::time::interval(period(&alerting));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            a = feed.recv() => match a {
                Ok(a) if a.alert.kind == AlertKind::CanarySeen as i32 => {
                    if let Some(tag) = TagId::parse(&a.alert.tag_id) {
                        let reader = alerting.registry().readers().get(&a.alert.reader_id);
                        alerting.canaries.seen(tag, reader, a.alert.seen_at_ms.min(now_ms()));
                    }
                }
                Ok(_) => {}
                // Fell behind the feed: a canary sighting may have gone by unseen here; the
                // next one (a quarter of its schedule later) is.
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            },
            _ = tick.tick() => {
                for (tag, reader, last_seen_ms) in alerting.canaries.newly_overdue(now_ms()) {
                    tracing::warn!(tag = %tag, last_seen_ms, "Canary overdue: not seen on schedule.");
                    if engine.canary_missed(tag, reader, last_seen_ms).await.is_err() {
                        return;
                    }
                }
                let every = period(&alerting);
                if every != tick.period() {
                    tick = tokio::time::interval(every);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                }
            }
            _ = shutdown.cancelled() => return,
        }
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
