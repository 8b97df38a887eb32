//! [`Alerting`]: the alerting state shared by the engine and the Patrol service. It is one
//! value with its parts in the stage modules: the zones and units ([`crate::provision`],
//! [`crate::route`]), the incidents ([`crate::incidents`]), the durable alert log
//! ([`crate::log`]), the live fan-out ([`crate::hub`]) and the pass history
//! ([`crate::history`]). This file holds the value itself and how it is opened.

use std::sync::Arc;

use greenplate_registry::{Db, Registry, RegistryError};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use sqlx::Row;
use tokio::sync::broadcast;

use crate::canaries::Canaries;
use crate::history::History;
use crate::hub::{Hub, LoggedAlert};
use crate::route::{Router, RoutingConfig};
use crate::schema::migrations;
use crate::zones::{Zone, ZoneKind, ZoneMap, parse_geojson};

/// Zones, their units and the command centers, from the database.
async fn load_zone_map(db: &Db) -> Result<ZoneMap, greenplate_registry::Error> {
    let mut map = ZoneMap::default();
    let zones = sqlx::query("SELECT zone_id, name, kind, geojson FROM zones")
        .fetch_all(db.pool())
        .await
        .map_err(RegistryError::from)?;
    for row in zones {
        let id: String = row.try_get("zone_id").map_err(RegistryError::from)?;
        let text: String = row.try_get("geojson").map_err(RegistryError::from)?;
        let kind: String = row.try_get("kind").map_err(RegistryError::from)?;
        match parse_geojson(&text) {
            Ok(area) => map.add_zone(Zone {
                name: row.try_get("name").map_err(RegistryError::from)?,
                kind: ZoneKind::parse(&kind).unwrap_or(ZoneKind::Patrol),
                id,
                area,
            }),
            Err(e) => tracing::error!(zone = %id, error = %e, "Skipped a stored zone."),
        }
    }
    let assignments = sqlx::query("SELECT unit_id, zone_id FROM unit_zones")
        .fetch_all(db.pool())
        .await
        .map_err(RegistryError::from)?;
    for row in assignments {
        let unit: String = row.try_get("unit_id").map_err(RegistryError::from)?;
        let zone: String = row.try_get("zone_id").map_err(RegistryError::from)?;
        map.assign(&unit, &zone);
    }
    // Command centers and canary units, in one read.
    let special = sqlx::query(
        "SELECT unit_id, command_center, canary FROM patrol_units \
         WHERE command_center = 1 OR canary = 1",
    )
    .fetch_all(db.pool())
    .await
    .map_err(RegistryError::from)?;
    for row in special {
        let unit: String = row.try_get("unit_id").map_err(RegistryError::from)?;
        if row
            .try_get::<i64, _>("command_center")
            .map_err(RegistryError::from)?
            == 1
        {
            map.add_command_unit(&unit);
        }
        if row
            .try_get::<i64, _>("canary")
            .map_err(RegistryError::from)?
            == 1
        {
            map.add_canary_unit(&unit);
        }
    }
    Ok(map)
}

/// How often [`Alerting::reload_zones`] reads again when this node changed the zones meanwhile.
const ZONE_RELOAD_TRIES: usize = 4;

/// Look-backs of theft reports ([`crate::lookback`]) done, by result, and failed rounds
/// (retried at the next poll).
#[derive(Debug, Default)]
pub struct LookbackMetrics {
    pub done: Family<ResultLabel, Counter>,
    pub failed: Counter,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct ResultLabel {
    /// `sighted` (passes found, the latest alerted) or `no_track`.
    pub result: &'static str,
}

/// A verdict on a hit ([`crate::hits`]) and, for a rejection, its reason.
#[derive(Debug, Clone, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct VerdictLabel {
    pub verdict: &'static str,
    pub reason: &'static str,
}

/// Shared alerting state.
#[derive(Debug)]
pub struct Alerting {
    pub(crate) registry: Arc<Registry>,
    /// Zones, units, positions: who gets an alert.
    pub(crate) router: Router,
    pub(crate) hub: Hub,
    pub(crate) history: History,
    /// Canary tags and what this node saw of them.
    pub(crate) canaries: Canaries,
    /// `Patrol/StreamAlerts` calls refused because the unit held the most allowed.
    pub streams_refused: Counter,
    /// Times a stream fell behind the live hub and caught up from the log.
    pub stream_catchups: Counter,
    /// Alerts not written because the log held their sighting's alert already.
    pub duplicates_dropped: Counter,
    /// Seconds from ingest receiving a sighting to its alert reaching the live hub
    /// (committed to the log); exported by the service's /metrics.
    pub alert_latency: Histogram,
    /// Theft reports looked back, by result, and failed rounds.
    pub lookbacks: LookbackMetrics,
    /// Officers' verdicts on hits, by verdict and reason.
    pub hits_judged: Family<VerdictLabel, Counter>,
    /// Incidents escalated: not acknowledged in time ([`crate::escalation`]).
    pub escalations: Counter,
    /// On SQLite (one node) the engine hands committed alerts to the hub itself; on
    /// PostgreSQL the log follower does, for every node's alerts, in seq order.
    pub(crate) engine_publishes: bool,
}

impl Alerting {
    /// Migrates the alerting tables and loads zones and unit assignments.
    pub async fn open(
        registry: Arc<Registry>,
        routing: RoutingConfig,
    ) -> Result<Arc<Self>, greenplate_registry::Error> {
        let db = registry.db();
        db.migrate(migrations()).await?;
        let map = load_zone_map(db).await?;
        let history = History::new(db.clone());
        let engine_publishes = db.backend() == greenplate_registry::Backend::Sqlite;
        let alerting = Arc::new(Self {
            registry,
            router: Router::new(routing, map),
            hub: Hub::new(),
            history,
            canaries: Canaries::default(),
            stream_catchups: Counter::default(),
            duplicates_dropped: Counter::default(),
            streams_refused: Counter::default(),
            engine_publishes,
            lookbacks: Default::default(),
            hits_judged: Family::default(),
            escalations: Counter::default(),
            alert_latency: Histogram::new([
                0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
        });
        alerting.load_canaries().await?;
        // What the log holds now is replayed from it; the hub publishes what comes after.
        let top: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM alerts")
            .fetch_one(alerting.db().pool())
            .await
            .map_err(greenplate_registry::RegistryError::from)?;
        alerting.hub.advance_to(u64::try_from(top).unwrap_or(0));
        Ok(alerting)
    }

    /// Reloads zones, units and command centers from the database (a node changed them),
    /// and forgets the routes computed from the old ones.
    ///
    /// A read that began before this node changed the zones in memory is not installed
    /// (it would drop the change) but read again. If changes keep coming, the last read is
    /// left out: each change was announced in its own transaction, so the reload its
    /// announcement brings reads everything committed before it.
    pub async fn reload_zones(&self) -> Result<(), greenplate_registry::Error> {
        for _ in 0..ZONE_RELOAD_TRIES {
            let epoch = self.router.epoch();
            let zones = load_zone_map(self.db()).await?;
            if self.router.replace_unless_changed(zones, epoch) {
                break;
            }
        }
        self.load_canaries().await?;
        Ok(())
    }

    /// Registers alerting's metrics under the service's registry (prefixed `greenplate`):
    /// `alert_latency_seconds` and `alerting_stream_catchups`.
    pub fn register_metrics(&self, metrics: &mut prometheus_client::registry::Registry) {
        metrics.register(
            "alert_latency_seconds",
            "From ingest receiving a sighting to its alert committed and on the live feed",
            self.alert_latency.clone(),
        );
        metrics.sub_registry_with_prefix("alerting").register(
            "stream_catchups",
            "Times a patrol stream fell behind the live feed and caught up from the alert log",
            self.stream_catchups.clone(),
        );
        metrics.sub_registry_with_prefix("alerting").register(
            "streams_refused",
            "Patrol/StreamAlerts calls refused: the unit held grpc.max_streams_per_unit live streams",
            self.streams_refused.clone(),
        );
        metrics.sub_registry_with_prefix("alerting").register(
            "duplicates_dropped",
            "Alerts not written again: their sighting's alert was in the log already (its batch was processed twice, as after a node died before acknowledging it)",
            self.duplicates_dropped.clone(),
        );
        metrics.sub_registry_with_prefix("alerting").register(
            "escalations",
            "Incidents whose latest alert was sent again, raised, because nobody acknowledged them within [[alerting.escalation]]'s time",
            self.escalations.clone(),
        );
        metrics.sub_registry_with_prefix("alerting").register(
            "hits_judged",
            "Officers' verdicts on hits (Patrol.ConfirmHit, RejectHit), by verdict and rejection reason",
            self.hits_judged.clone(),
        );
        metrics.sub_registry_with_prefix("alerting").register(
            "lookbacks",
            "Theft reports looked back in the pass history, by result (sighted: the latest pass was alerted; no_track)",
            self.lookbacks.done.clone(),
        );
        metrics.sub_registry_with_prefix("alerting").register(
            "lookback_failures",
            "Rounds of theft-report look-backs that failed (database errors; retried at the next poll)",
            self.lookbacks.failed.clone(),
        );
        metrics.register(
            "canary_misses",
            "Times a canary tag was not seen on the live feed within its schedule, by tag",
            self.canaries.misses.clone(),
        );
        metrics.register(
            "canaries_overdue",
            "Canary tags not seen within their schedule now",
            self.canaries.overdue.clone(),
        );
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// The cameras a reader names, with their URLs filled in for `at_ms` (video linkage);
    /// none for a reader it does not know.
    pub fn camera_links(
        &self,
        reader_id: &str,
        at_ms: i64,
    ) -> Vec<greenplate_proto::v1::CameraLink> {
        self.registry
            .readers()
            .get(reader_id)
            .map(|r| {
                r.camera_links(at_ms)
                    .into_iter()
                    .map(|c| greenplate_proto::v1::CameraLink {
                        camera_id: c.id,
                        name: c.name,
                        url: c.url,
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// An alert as delivered: with its reader's cameras at the moment of the sighting.
    pub fn with_cameras(
        &self,
        mut alert: greenplate_proto::v1::Alert,
    ) -> greenplate_proto::v1::Alert {
        alert.cameras = self.camera_links(&alert.reader_id, alert.seen_at_ms);
        alert
    }

    pub(crate) fn db(&self) -> &Db {
        self.registry.db()
    }

    /// The pass history store.
    pub fn history(&self) -> &History {
        &self.history
    }

    /// Who gets an alert: zones, units, positions.
    pub fn router(&self) -> &Router {
        &self.router
    }

    /// True if the unit is a command center (it receives every alert and may act on, and
    /// track, anything).
    pub fn is_command_unit(&self, unit_id: &str) -> bool {
        self.router.is_command_unit(unit_id)
    }

    /// A copy of every zone (for maps).
    pub fn zones(&self) -> Vec<Zone> {
        self.router.zones()
    }

    /// A receiver of every alert committed from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<LoggedAlert>> {
        self.hub.subscribe()
    }
}
