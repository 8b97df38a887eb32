//! [`Alerting`]: the alerting state shared by the engine and the Patrol service: patrol
//! zones and units (provisioned through Admin), the durable alert log, and the live hub that
//! fans committed alerts out to open streams.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock};

use greenplate_proto::v1::{Alert, AlertKind, Incident, IncidentState, Outcome};
use greenplate_registry::db::Migrations;
use greenplate_registry::store::{already_exists, audit};
use greenplate_registry::{
    Authenticator, BikeKey, Caller, Db, Reader, Registry, RegistryError, Role, TrackSubject, now_ms,
};
use prometheus_client::metrics::histogram::Histogram;
use sqlx::Row;
use sqlx::any::AnyRow;
use tokio::sync::broadcast;

use crate::error::AlertingError;
use crate::history::{History, Pass};
use crate::zones::{Zone, ZoneKind, ZoneMap, distance_km, parse_geojson};

/// Alerts kept in the live hub for streams that fall behind; a stream that lags further
/// catches up from the alert log instead.
const HUB_CAPACITY: usize = 1024;

/// The alerting crate's schema, for [`Db::migrate`].
pub fn migrations() -> Migrations {
    Migrations {
        owner: "alerting",
        sqlite: sqlx::migrate!("./migrations/sqlite"),
        postgres: sqlx::migrate!("./migrations/postgres"),
    }
}

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
    let commands = sqlx::query("SELECT unit_id FROM patrol_units WHERE command_center = 1")
        .fetch_all(db.pool())
        .await
        .map_err(RegistryError::from)?;
    for row in commands {
        let unit: String = row.try_get("unit_id").map_err(RegistryError::from)?;
        map.add_command_unit(&unit);
    }
    Ok(map)
}

/// An unresolved incident and its latest alert (see [`Alerting::open_incidents`]).
#[derive(Debug, Clone, PartialEq)]
pub struct OpenIncident {
    /// The rule that opened it (`AlertKind` as i32).
    pub kind: i32,
    /// Acknowledged (else open).
    pub acknowledged: bool,
    pub acknowledged_by: String,
    pub opened_at_ms: i64,
    pub updated_at_ms: i64,
    /// Its latest alert: incident id, plate, reader and position, seq.
    pub last: Alert,
}

/// An alert as committed to the log, with the units entitled to it.
#[derive(Debug, Clone)]
pub struct LoggedAlert {
    pub alert: Alert,
    pub recipients: Vec<String>,
}

/// How alerts reach units beyond their zones.
#[derive(Debug, Clone, PartialEq)]
pub struct RoutingConfig {
    /// Also alert up to this many on-duty units nearest the reader...
    pub nearest_units: usize,
    /// ...within this distance, km.
    pub nearest_radius_km: f64,
    /// A position older than this is not used, ms.
    pub position_max_age_ms: i64,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        Self {
            nearest_units: 3,
            nearest_radius_km: 5.0,
            position_max_age_ms: 10 * 60 * 1000,
        }
    }
}

/// What the zones say about one reader's position.
#[derive(Debug, Default)]
pub struct ReaderRoute {
    /// Units of the patrol zones containing the reader, and every command center.
    pub zone_units: Vec<String>,
    /// The watch zone containing the reader, if any.
    pub watch_zone: Option<String>,
}

/// A unit's last reported position.
#[derive(Debug, Clone, Copy)]
struct Position {
    lat: f64,
    lon: f64,
    at_ms: i64,
    on_duty: bool,
}

/// Shared alerting state.
#[derive(Debug)]
pub struct Alerting {
    registry: Arc<Registry>,
    routing: RoutingConfig,
    zones: RwLock<ZoneMap>,
    positions: RwLock<HashMap<String, Position>>,
    /// Reader id -> its zone routing, computed once per reader and cleared whenever zones or
    /// units change (readers do not move).
    routes: RwLock<HashMap<String, Arc<ReaderRoute>>>,
    hub: broadcast::Sender<Arc<LoggedAlert>>,
    history: History,
    /// Times a stream fell behind the live hub and caught up from the log.
    pub stream_catchups: AtomicU64,
    /// Seconds from ingest receiving a sighting to its alert reaching the live hub
    /// (committed to the log); exported by the service's /metrics.
    pub alert_latency: Histogram,
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
        let (hub, _) = broadcast::channel(HUB_CAPACITY);
        let history = History::new(db.clone());
        let engine_publishes = db.backend() == greenplate_registry::Backend::Sqlite;
        Ok(Arc::new(Self {
            registry,
            routing,
            zones: RwLock::new(map),
            positions: RwLock::new(HashMap::new()),
            routes: RwLock::new(HashMap::new()),
            hub,
            history,
            stream_catchups: AtomicU64::new(0),
            engine_publishes,
            alert_latency: Histogram::new([
                0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
        }))
    }

    /// Reloads zones, units and command centers from the database (another node changed
    /// them), and forgets the routes computed from the old ones.
    pub async fn reload_zones(&self) -> Result<(), greenplate_registry::Error> {
        let map = load_zone_map(self.db()).await?;
        *self.zones.write().unwrap_or_else(|p| p.into_inner()) = map;
        self.routes
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        Ok(())
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    fn db(&self) -> &Db {
        self.registry.db()
    }

    /// Adds a zone from GeoJSON.
    pub async fn add_zone(
        &self,
        caller: &Caller,
        zone_id: &str,
        name: &str,
        kind: ZoneKind,
        geojson: &str,
    ) -> Result<(), AlertingError> {
        let zone_id = greenplate_registry::validate::ident("zone_id", zone_id)?;
        let name = greenplate_registry::validate::text("name", name, 200)?;
        let area = parse_geojson(geojson)?;
        let mut tx = self.db().begin_write().await?;
        sqlx::query(
            "INSERT INTO zones (zone_id, name, kind, geojson, created_at_ms) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&zone_id)
        .bind(&name)
        .bind(kind.as_str())
        .bind(geojson)
        .bind(now_ms())
        .execute(&mut *tx)
        .await
        .map_err(|e| already_exists(e, || format!("zone {zone_id}")))?;
        audit(&mut tx, caller, "add_zone", &zone_id).await?;
        greenplate_registry::sync::announce(&mut tx, &greenplate_registry::sync::Change::Zones)
            .await?;
        tx.commit().await?;
        self.zones_mut().add_zone(Zone {
            id: zone_id,
            name,
            kind,
            area,
        });
        Ok(())
    }

    /// Adds a patrol unit assigned to existing zones and returns its token.
    pub async fn add_patrol_unit(
        &self,
        caller: &Caller,
        unit_id: &str,
        name: &str,
        zone_ids: &[String],
        command_center: bool,
    ) -> Result<String, AlertingError> {
        let unit_id = greenplate_registry::validate::ident("unit_id", unit_id)?;
        let name = greenplate_registry::validate::text("name", name, 200)?;
        if let Some(missing) = {
            let zones = self.zones_read();
            zone_ids.iter().find(|z| !zones.has_zone(z)).cloned()
        } {
            return Err(RegistryError::NotFound(format!("zone {missing}")).into());
        }
        let mut tx = self.db().begin_write().await?;
        sqlx::query(
            "INSERT INTO patrol_units (unit_id, name, command_center, created_at_ms) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind(&unit_id)
        .bind(&name)
        .bind(i64::from(command_center))
        .bind(now_ms())
        .execute(&mut *tx)
        .await
        .map_err(|e| already_exists(e, || format!("patrol unit {unit_id}")))?;
        for zone in zone_ids {
            sqlx::query(
                "INSERT INTO unit_zones (unit_id, zone_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            )
            .bind(&unit_id)
            .bind(zone)
            .execute(&mut *tx)
            .await?;
        }
        let issued = Authenticator::issue(&mut tx, Role::Patrol, &unit_id).await?;
        audit(&mut tx, caller, "add_patrol_unit", &unit_id).await?;
        greenplate_registry::sync::announce(&mut tx, &greenplate_registry::sync::Change::Zones)
            .await?;
        tx.commit().await?;
        self.registry.auth().activate(&issued);
        let mut zones = self.zones_mut();
        for zone in zone_ids {
            zones.assign(&unit_id, zone);
        }
        if command_center {
            zones.add_command_unit(&unit_id);
        }
        Ok(issued.token)
    }

    /// The zone routing of a reader, from the per-reader cache.
    pub fn route(&self, reader: &Reader) -> Arc<ReaderRoute> {
        if let Some(r) = self
            .routes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&reader.id)
        {
            return r.clone();
        }
        // Compute and cache under the zones read lock: a zone change (which clears the
        // cache under the write lock) cannot slip in between and leave a stale route.
        let zones = self.zones_read();
        let route = Arc::new(ReaderRoute {
            zone_units: zones.units_covering(reader.lat, reader.lon),
            watch_zone: zones
                .watch_zone_at(reader.lat, reader.lon)
                .map(|z| z.id.clone()),
        });
        self.routes
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(reader.id.clone(), route.clone());
        drop(zones);
        route
    }

    /// The units entitled to an alert at a reader: those of the patrol zones containing it,
    /// every command center, and the nearest on-duty units within the radius.
    pub fn units_for(&self, reader: &Reader) -> Vec<String> {
        let route = self.route(reader);
        self.with_nearest(route.zone_units.clone(), reader.lat, reader.lon)
    }

    /// The units entitled to an alert at (lat, lon) (no cache: for positions that are not
    /// readers).
    pub fn units_covering(&self, lat: f64, lon: f64) -> Vec<String> {
        let units = self.zones_read().units_covering(lat, lon);
        self.with_nearest(units, lat, lon)
    }

    fn with_nearest(&self, mut units: Vec<String>, lat: f64, lon: f64) -> Vec<String> {
        let now = now_ms();
        let positions = self.positions.read().unwrap_or_else(|p| p.into_inner());
        let mut near: Vec<(f64, &String)> = positions
            .iter()
            .filter(|(_, p)| p.on_duty && now - p.at_ms <= self.routing.position_max_age_ms)
            .map(|(u, p)| (distance_km(lat, lon, p.lat, p.lon), u))
            .filter(|(d, _)| *d <= self.routing.nearest_radius_km)
            .collect();
        near.sort_by(|a, b| a.0.total_cmp(&b.0));
        for (_, unit) in near.into_iter().take(self.routing.nearest_units) {
            if !units.contains(unit) {
                units.push(unit.clone());
            }
        }
        units.sort();
        units
    }

    /// Records where a unit is.
    pub fn update_position(
        &self,
        unit_id: &str,
        lat: f64,
        lon: f64,
        on_duty: bool,
    ) -> Result<(), AlertingError> {
        if !(-90.0..=90.0).contains(&lat) {
            return Err(RegistryError::invalid("lat", "must be between -90 and 90").into());
        }
        if !(-180.0..=180.0).contains(&lon) {
            return Err(RegistryError::invalid("lon", "must be between -180 and 180").into());
        }
        self.positions
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                unit_id.to_owned(),
                Position {
                    lat,
                    lon,
                    at_ms: now_ms(),
                    on_duty,
                },
            );
        Ok(())
    }

    /// The watch zone containing (lat, lon), if any.
    pub fn watch_zone_at(&self, lat: f64, lon: f64) -> Option<String> {
        self.zones_read()
            .watch_zone_at(lat, lon)
            .map(|z| z.id.clone())
    }

    /// True if the unit may act on the incident: it was sent one of its alerts, or it is
    /// a command center.
    async fn entitled(&self, unit_id: &str, incident_id: &str) -> Result<bool, AlertingError> {
        if self.zones_read().is_command_unit(unit_id) {
            return Ok(true);
        }
        let row = sqlx::query(
            "SELECT 1 AS yes FROM alerts a JOIN alert_recipients r ON r.seq = a.seq \
             WHERE a.incident_id = $1 AND r.unit_id = $2 LIMIT 1",
        )
        .bind(incident_id)
        .bind(unit_id)
        .fetch_optional(self.db().pool())
        .await?;
        Ok(row.is_some())
    }

    /// Every command-center unit (they receive operators' alerts such as a reader offline).
    pub fn command_units(&self) -> Vec<String> {
        self.zones_read().command_units().to_vec()
    }

    /// True if the unit is a command center (it receives every alert and may act on, and
    /// track, anything).
    pub fn is_command_unit(&self, unit_id: &str) -> bool {
        self.zones_read().is_command_unit(unit_id)
    }

    /// A copy of every zone (for maps).
    pub fn zones(&self) -> Vec<Zone> {
        self.zones_read().zones().to_vec()
    }

    /// The highest seq in the alert log (0 when it is empty).
    pub async fn last_seq(&self) -> Result<u64, AlertingError> {
        let row = sqlx::query("SELECT COALESCE(MAX(seq), 0) AS last FROM alerts")
            .fetch_one(self.db().pool())
            .await?;
        Ok(u64::try_from(row.try_get::<i64, _>("last")?).unwrap_or(0))
    }

    /// Incidents changed (opened, updated by an alert, acknowledged, resolved) at or after
    /// `since_ms`, with their state (`open`, `acknowledged`, `resolved`), at most `limit`:
    /// for live pages to follow what other users did.
    pub async fn incident_changes(
        &self,
        since_ms: i64,
        limit: i64,
    ) -> Result<Vec<(String, String)>, AlertingError> {
        let rows = sqlx::query(
            "SELECT incident_id, state FROM incidents WHERE updated_at_ms >= $1 \
             ORDER BY updated_at_ms LIMIT $2",
        )
        .bind(since_ms)
        .bind(limit)
        .fetch_all(self.db().pool())
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("incident_id")?, r.try_get("state")?)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(Into::into)
    }

    /// Unresolved incidents, most recently updated first, at most `limit`, each with its
    /// latest alert (where the bike or reader was last seen).
    pub async fn open_incidents(&self, limit: i64) -> Result<Vec<OpenIncident>, AlertingError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {ALERT_COLUMNS}, i.kind AS incident_kind, i.state AS incident_state, \
                    i.opened_at_ms, i.updated_at_ms, i.acknowledged_by \
             FROM incidents i JOIN alerts a ON a.seq = \
                 (SELECT MAX(l.seq) FROM alerts l WHERE l.incident_id = i.incident_id) \
             WHERE i.state <> 'resolved' ORDER BY i.updated_at_ms DESC, a.seq DESC LIMIT $1"
        )))
        .bind(limit)
        .fetch_all(self.db().pool())
        .await?;
        rows.iter()
            .map(|row| {
                let state: String = row.try_get("incident_state")?;
                Ok(OpenIncident {
                    kind: row.try_get::<i64, _>("incident_kind")? as i32,
                    acknowledged: state == "acknowledged",
                    acknowledged_by: row
                        .try_get::<Option<String>, _>("acknowledged_by")?
                        .unwrap_or_default(),
                    opened_at_ms: row.try_get("opened_at_ms")?,
                    updated_at_ms: row.try_get("updated_at_ms")?,
                    last: alert_from_row(row)?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(Into::into)
    }

    /// Where a bike or tag was seen in `[from_ms, to_ms]`, oldest first, at most `limit`
    /// passes; the bool says more matched. Admins and command centers may track any bike;
    /// another unit only a bike with an unresolved incident it was alerted about.
    pub async fn track(
        &self,
        caller: &Caller,
        key: &BikeKey,
        from_ms: i64,
        to_ms: i64,
        limit: usize,
    ) -> Result<(TrackSubject, Vec<Pass>, bool), AlertingError> {
        let subject = self.registry.track_subject(key).await?;
        let anyone = caller.role == greenplate_registry::Role::Admin
            || self.zones_read().is_command_unit(&caller.id);
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
                return Err(RegistryError::NotFound(match key {
                    BikeKey::Plate(p) => format!("track of plate {p}"),
                    BikeKey::Tag(t) => format!("track of tag {t}"),
                })
                .into());
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

    /// The pass history store.
    pub fn history(&self) -> &History {
        &self.history
    }

    /// A unit takes an incident on.
    pub async fn acknowledge(
        &self,
        caller: &Caller,
        incident_id: &str,
        note: &str,
    ) -> Result<Incident, AlertingError> {
        let note = greenplate_registry::validate::optional_text("note", note, 2000)?;
        self.require_entitled(caller, incident_id).await?;
        let now = now_ms();
        let mut tx = self.db().begin_write().await?;
        let current = incident_row(&mut tx, incident_id).await?;
        match current.state() {
            IncidentState::Resolved => {
                return Err(RegistryError::FailedPrecondition(format!(
                    "incident {incident_id} is resolved"
                ))
                .into());
            }
            IncidentState::Acknowledged => {}
            _ => {
                sqlx::query(
                    "UPDATE incidents SET state = 'acknowledged', acknowledged_by = $1, \
                     acknowledged_at_ms = $2, updated_at_ms = $2 WHERE incident_id = $3",
                )
                .bind(caller.audit_name())
                .bind(now)
                .bind(incident_id)
                .execute(&mut *tx)
                .await?;
            }
        }
        record_event(
            &mut tx,
            incident_id,
            &caller.audit_name(),
            "acknowledge",
            &note,
            now,
        )
        .await?;
        let out = incident_row(&mut tx, incident_id).await?;
        tx.commit().await?;
        Ok(out)
    }

    /// Closes an incident with an outcome; `Recovered` takes the bike off the hotlist too.
    pub async fn resolve(
        &self,
        caller: &Caller,
        incident_id: &str,
        outcome: Outcome,
        note: &str,
    ) -> Result<Incident, AlertingError> {
        let note = greenplate_registry::validate::optional_text("note", note, 2000)?;
        if outcome == Outcome::Unspecified {
            return Err(RegistryError::invalid(
                "outcome",
                "must be RECOVERED, FALSE_ALARM or LOST_TRACK",
            )
            .into());
        }
        self.require_entitled(caller, incident_id).await?;
        let now = now_ms();
        let mut tx = self.db().begin_write().await?;
        let current = incident_row(&mut tx, incident_id).await?;
        if current.state() == IncidentState::Resolved {
            return Err(RegistryError::FailedPrecondition(format!(
                "incident {incident_id} is already resolved"
            ))
            .into());
        }
        sqlx::query(
            "UPDATE incidents SET state = 'resolved', resolved_by = $1, resolved_at_ms = $2, \
             updated_at_ms = $2, outcome = $3, note = $4 WHERE incident_id = $5",
        )
        .bind(caller.audit_name())
        .bind(now)
        .bind(i64::from(outcome as i32))
        .bind(&note)
        .bind(incident_id)
        .execute(&mut *tx)
        .await?;
        record_event(
            &mut tx,
            incident_id,
            &caller.audit_name(),
            &format!("resolve:{}", outcome.as_str_name()),
            &note,
            now,
        )
        .await?;
        let out = incident_row(&mut tx, incident_id).await?;
        tx.commit().await?;
        if outcome == Outcome::Recovered && out.kind == AlertKind::StolenSighted as i32 {
            match self.registry.report_recovered(caller, &out.plate).await {
                Ok(()) | Err(RegistryError::FailedPrecondition(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(out)
    }

    async fn require_entitled(
        &self,
        caller: &Caller,
        incident_id: &str,
    ) -> Result<(), AlertingError> {
        if caller.role == greenplate_registry::Role::Admin
            || self.entitled(&caller.id, incident_id).await?
        {
            Ok(())
        } else {
            // Do not tell a unit whether an incident it may not see exists.
            Err(RegistryError::NotFound(format!("incident {incident_id}")).into())
        }
    }

    /// A receiver of every alert committed from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<LoggedAlert>> {
        self.hub.subscribe()
    }

    /// Publishes committed alerts to open streams (in seq order).
    pub(crate) fn publish(&self, alert: LoggedAlert) {
        // No receiver is fine: the alert is in the log for whoever connects later.
        let _ = self.hub.send(Arc::new(alert));
    }

    /// Up to `limit` alerts for `unit_id` with seq > `after`, oldest first.
    pub async fn replay(
        &self,
        unit_id: &str,
        after: u64,
        limit: i64,
    ) -> Result<Vec<Alert>, AlertingError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {ALERT_COLUMNS} FROM alerts a JOIN alert_recipients r ON r.seq = a.seq \
             WHERE r.unit_id = $1 AND a.seq > $2 ORDER BY a.seq LIMIT $3"
        )))
        .bind(unit_id)
        .bind(i64::try_from(after).unwrap_or(i64::MAX))
        .bind(limit)
        .fetch_all(self.db().pool())
        .await?;
        rows.iter()
            .map(alert_from_row)
            .collect::<Result<_, _>>()
            .map_err(Into::into)
    }

    fn zones_read(&self) -> std::sync::RwLockReadGuard<'_, ZoneMap> {
        self.zones.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The zone map, for a change; the per-reader routes are dropped with it.
    fn zones_mut(&self) -> std::sync::RwLockWriteGuard<'_, ZoneMap> {
        let zones = self.zones.write().unwrap_or_else(|p| p.into_inner());
        self.routes
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        zones
    }
}

pub(crate) async fn record_event(
    conn: &mut sqlx::AnyConnection,
    incident_id: &str,
    actor: &str,
    action: &str,
    note: &str,
    now: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO incident_events (incident_id, at_ms, actor, action, note) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(incident_id)
    .bind(now)
    .bind(actor)
    .bind(action)
    .bind(note)
    .execute(conn)
    .await?;
    Ok(())
}

/// An incident as the API shows it (the kind of the rule that opened it; the plate of its
/// bike).
async fn incident_row(
    conn: &mut sqlx::AnyConnection,
    incident_id: &str,
) -> Result<Incident, AlertingError> {
    let row = sqlx::query(
        "SELECT i.incident_id, i.kind, i.state, i.opened_at_ms, i.updated_at_ms, \
                i.acknowledged_by, i.resolved_by, i.outcome, i.note, b.plate \
         FROM incidents i JOIN bikes b ON b.bike_id = i.bike_id WHERE i.incident_id = $1",
    )
    .bind(incident_id)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| RegistryError::NotFound(format!("incident {incident_id}")))?;
    let state: String = row.try_get("state")?;
    Ok(Incident {
        incident_id: row.try_get("incident_id")?,
        kind: row.try_get::<i64, _>("kind")? as i32,
        state: match state.as_str() {
            "open" => IncidentState::Open,
            "acknowledged" => IncidentState::Acknowledged,
            "resolved" => IncidentState::Resolved,
            _ => IncidentState::Unspecified,
        } as i32,
        plate: row.try_get("plate")?,
        opened_at_ms: row.try_get("opened_at_ms")?,
        updated_at_ms: row.try_get("updated_at_ms")?,
        acknowledged_by: row
            .try_get::<Option<String>, _>("acknowledged_by")?
            .unwrap_or_default(),
        resolved_by: row
            .try_get::<Option<String>, _>("resolved_by")?
            .unwrap_or_default(),
        outcome: row.try_get::<Option<i64>, _>("outcome")?.unwrap_or(0) as i32,
        note: row.try_get("note")?,
    })
}

/// The columns [`alert_from_row`] reads, of `alerts a`.
pub(crate) const ALERT_COLUMNS: &str = "a.seq, a.alert_id, a.kind, a.priority, a.plate, \
     a.tag_id, a.reader_id, a.lat, a.lon, a.seen_at_ms, a.incident_id, a.zone_id";

pub(crate) fn alert_from_row(row: &AnyRow) -> Result<Alert, sqlx::Error> {
    Ok(Alert {
        seq: row.try_get::<i64, _>("seq")? as u64,
        alert_id: row.try_get("alert_id")?,
        kind: row.try_get::<i64, _>("kind")? as i32,
        plate: row.try_get("plate")?,
        tag_id: row.try_get("tag_id")?,
        reader_id: row.try_get("reader_id")?,
        lat: row.try_get("lat")?,
        lon: row.try_get("lon")?,
        seen_at_ms: row.try_get("seen_at_ms")?,
        incident_id: row.try_get("incident_id")?,
        priority: row.try_get::<i64, _>("priority")? as u32,
        zone_id: row.try_get("zone_id")?,
    })
}
