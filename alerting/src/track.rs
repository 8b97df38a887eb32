//! Tracks (`Patrol.GetTrack`): where a bike or tag was seen, read from the pass history
//! ([`crate::history`]), and who may see it. Admins and command centers may track any bike;
//! another unit only a bike with an unresolved incident it was alerted about. Anything else
//! is NOT_FOUND, the same answer as for a bike that does not exist.

use greenplate_registry::{BikeKey, Caller, RegistryError, TrackSubject};

use crate::error::AlertingError;
use crate::history::Pass;
use crate::state::Alerting;

impl Alerting {
    /// Where a bike or tag was seen in `[from_ms, to_ms]`, oldest first, at most `limit`
    /// passes; the bool says more matched. Admins and command centers may track any bike;
    /// another unit only a bike with an unresolved incident it was alerted about. Every
    /// request, answered or refused, is in the audit log under `caller`, with `reason` if
    /// one is given.
    pub async fn track(
        &self,
        caller: &Caller,
        key: &BikeKey,
        from_ms: i64,
        to_ms: i64,
        limit: usize,
        reason: &str,
    ) -> Result<(TrackSubject, Vec<Pass>, bool), AlertingError> {
        let tracked = self
            .track_unaudited(caller, key, from_ms, to_ms, limit)
            .await;
        self.registry
            .audit_lookup(caller, "get_track", &track_of(key), tracked.is_ok(), reason)
            .await?;
        tracked
    }

    async fn track_unaudited(
        &self,
        caller: &Caller,
        key: &BikeKey,
        from_ms: i64,
        to_ms: i64,
        limit: usize,
    ) -> Result<(TrackSubject, Vec<Pass>, bool), AlertingError> {
        let subject = self.registry.track_subject(key).await?;
        let anyone = caller.role == greenplate_registry::Role::Admin
            || self.router.zones_read().is_command_unit(&caller.id);
        if !anyone {
            let entitled = match subject.bike_id {
                Some(bike_id) => sqlx::query(
                    "SELECT 1 AS yes FROM incidents i \
                     JOIN alerts a ON a.incident_id = i.incident_id \
                     JOIN alert_recipients r ON r.seq = a.seq \
                     WHERE i.bike_id = $1 AND i.state <> 'resolved' AND r.unit_id = $2 LIMIT 1",
                )
                .bind(bike_id)
                .bind(&caller.id)
                .fetch_optional(self.db().pool())
                .await?
                .is_some(),
                None => false,
            };
            if !entitled {
                // The same answer as for a bike that does not exist: no probing.
                return Err(RegistryError::NotFound(track_of(key)).into());
            }
        }
        let mut passes = self
            .history
            .track(&subject.tags, from_ms, to_ms, limit.saturating_add(1))
            .await?;
        let truncated = passes.len() > limit;
        passes.truncate(limit);
        Ok((subject, passes, truncated))
    }
}

/// What a track request names, for errors and the audit log.
fn track_of(key: &BikeKey) -> String {
    match key {
        BikeKey::Plate(p) => format!("track of plate {p}"),
        BikeKey::Tag(t) => format!("track of tag {t}"),
    }
}
