//! [`Alerting`]: the alerting state shared by the engine and the Patrol service: patrol
//! zones and units (provisioned through Admin), the durable alert log, and the live hub that
//! fans committed alerts out to open streams.

use std::sync::{Arc, RwLock};

use greenplate_proto::v1::Alert;
use greenplate_registry::db::Migrations;
use greenplate_registry::store::{already_exists, audit};
use greenplate_registry::{Authenticator, Caller, Db, Registry, RegistryError, Role, now_ms};
use sqlx::Row;
use sqlx::any::AnyRow;
use tokio::sync::broadcast;

use crate::error::AlertingError;
use crate::zones::{Zone, ZoneMap, parse_geojson};

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

/// An alert as committed to the log, with the units entitled to it.
#[derive(Debug, Clone)]
pub struct LoggedAlert {
    pub alert: Alert,
    pub recipients: Vec<String>,
}

/// Shared alerting state.
#[derive(Debug)]
pub struct Alerting {
    registry: Arc<Registry>,
    zones: RwLock<ZoneMap>,
    hub: broadcast::Sender<Arc<LoggedAlert>>,
}

impl Alerting {
    /// Migrates the alerting tables and loads zones and unit assignments.
    pub async fn open(registry: Arc<Registry>) -> Result<Arc<Self>, greenplate_registry::Error> {
        let db = registry.db();
        db.migrate(migrations()).await?;
        let mut map = ZoneMap::default();
        let zones = sqlx::query("SELECT zone_id, name, geojson FROM zones")
            .fetch_all(db.pool())
            .await
            .map_err(RegistryError::from)?;
        for row in zones {
            let id: String = row.try_get("zone_id").map_err(RegistryError::from)?;
            let text: String = row.try_get("geojson").map_err(RegistryError::from)?;
            match parse_geojson(&text) {
                Ok(area) => map.add_zone(Zone {
                    name: row.try_get("name").map_err(RegistryError::from)?,
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
        let (hub, _) = broadcast::channel(HUB_CAPACITY);
        Ok(Arc::new(Self {
            registry,
            zones: RwLock::new(map),
            hub,
        }))
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    fn db(&self) -> &Db {
        self.registry.db()
    }

    /// Adds a patrol zone from GeoJSON.
    pub async fn add_zone(
        &self,
        caller: &Caller,
        zone_id: &str,
        name: &str,
        geojson: &str,
    ) -> Result<(), AlertingError> {
        let zone_id = greenplate_registry::validate::ident("zone_id", zone_id)?;
        let name = greenplate_registry::validate::text("name", name, 200)?;
        let area = parse_geojson(geojson)?;
        let mut tx = self.db().begin_write().await?;
        sqlx::query(
            "INSERT INTO zones (zone_id, name, geojson, created_at_ms) VALUES ($1, $2, $3, $4)",
        )
        .bind(&zone_id)
        .bind(&name)
        .bind(geojson)
        .bind(now_ms())
        .execute(&mut *tx)
        .await
        .map_err(|e| already_exists(e, || format!("zone {zone_id}")))?;
        audit(&mut tx, caller, "add_zone", &zone_id).await?;
        tx.commit().await?;
        self.zones_mut().add_zone(Zone {
            id: zone_id,
            name,
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
        sqlx::query("INSERT INTO patrol_units (unit_id, name, created_at_ms) VALUES ($1, $2, $3)")
            .bind(&unit_id)
            .bind(&name)
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
        tx.commit().await?;
        self.registry.auth().activate(&issued);
        let mut zones = self.zones_mut();
        for zone in zone_ids {
            zones.assign(&unit_id, zone);
        }
        Ok(issued.token)
    }

    /// The units entitled to an alert at (lat, lon).
    pub fn units_covering(&self, lat: f64, lon: f64) -> Vec<String> {
        self.zones_read().units_covering(lat, lon)
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
        let rows = sqlx::query(
            "SELECT a.seq, a.alert_id, a.kind, a.plate, a.tag_id, a.reader_id, a.lat, a.lon, \
                    a.seen_at_ms, a.incident_id \
             FROM alerts a JOIN alert_recipients r ON r.seq = a.seq \
             WHERE r.unit_id = $1 AND a.seq > $2 ORDER BY a.seq LIMIT $3",
        )
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

    fn zones_mut(&self) -> std::sync::RwLockWriteGuard<'_, ZoneMap> {
        self.zones.write().unwrap_or_else(|p| p.into_inner())
    }
}

fn alert_from_row(row: &AnyRow) -> Result<Alert, sqlx::Error> {
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
    })
}
