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

use std::sync::Arc;
use std::time::Duration;

use greenplate_proto::v1::AlertKind;
use greenplate_registry::store::audit;
use greenplate_registry::{Caller, RegistryError, TagId, TagState, now_ms};
use sqlx::Row;
use tokio_util::sync::CancellationToken;

use crate::canaries::Canaries;
use crate::engine::EngineHandle;
use crate::error::AlertingError;
use crate::state::Alerting;

/// The longest schedule a canary may have, s (a day).
pub const MAX_EVERY_S: u32 = 86_400;

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
