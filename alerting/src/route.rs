//! Routing: which units an alert at a reader goes to. The units of the patrol zones that
//! contain the reader (computed once per reader and cached until zones or units change),
//! every command center, and the nearest on-duty units within a radius (from the positions
//! units report). Watch zones make an alert urgent.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use greenplate_registry::{Reader, RegistryError, now_ms};

use crate::error::AlertingError;
use crate::zones::{Zone, ZoneMap, distance_km};

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

/// Zones, units, positions and the per-reader route cache.
#[derive(Debug)]
pub struct Router {
    routing: RoutingConfig,
    zones: RwLock<ZoneMap>,
    positions: RwLock<HashMap<String, Position>>,
    /// Reader id -> its zone routing, computed once per reader and cleared whenever zones or
    /// units change (readers do not move).
    routes: RwLock<HashMap<String, Arc<ReaderRoute>>>,
    /// Bumped by every change this node makes in memory ([`Router::zones_mut`], right after
    /// its commit). A reload whose database read began before such a change may miss it
    /// ([`Router::replace_unless_changed`]).
    epoch: AtomicU64,
}

impl Router {
    pub(crate) fn new(routing: RoutingConfig, zones: ZoneMap) -> Self {
        Self {
            routing,
            zones: RwLock::new(zones),
            positions: RwLock::new(HashMap::new()),
            routes: RwLock::new(HashMap::new()),
            epoch: AtomicU64::new(0),
        }
    }

    /// Where the changes made in memory are: take it before reading the zones from the
    /// database, and give it to [`Router::replace_unless_changed`].
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Replaces the zone map with one read from the database (and forgets the routes
    /// computed from the old one), unless this node changed the zones in memory since
    /// `epoch`: the read may then predate that change, and installing it would drop a zone
    /// or unit just added here (an AddPatrolUnit right after AddZone refused as NOT_FOUND,
    /// alerts routed without it). Returns whether it replaced.
    pub(crate) fn replace_unless_changed(&self, zones: ZoneMap, epoch: u64) -> bool {
        let mut current = self.zones.write().unwrap_or_else(|p| p.into_inner());
        if self.epoch.load(Ordering::Acquire) != epoch {
            return false;
        }
        *current = zones;
        self.forget_routes();
        true
    }

    /// Drops the per-reader routes (the zones under them changed); called with the zones'
    /// write lock held.
    fn forget_routes(&self) {
        self.routes
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
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

    /// Every command-center unit (they receive operators' alerts such as a reader offline).
    pub fn command_units(&self) -> Vec<String> {
        self.zones_read().command_units().to_vec()
    }

    /// Every canary unit (they receive canary alerts only).
    pub fn canary_units(&self) -> Vec<String> {
        self.zones_read().canary_units().to_vec()
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

    pub(crate) fn zones_read(&self) -> std::sync::RwLockReadGuard<'_, ZoneMap> {
        self.zones.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The zone map, for a change this node made (after its commit); the per-reader routes
    /// are dropped with it.
    pub(crate) fn zones_mut(&self) -> std::sync::RwLockWriteGuard<'_, ZoneMap> {
        let zones = self.zones.write().unwrap_or_else(|p| p.into_inner());
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.forget_routes();
        zones
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::zones::{Zone, ZoneKind};

    fn zone(id: &str) -> Zone {
        Zone {
            id: id.into(),
            name: id.into(),
            kind: ZoneKind::Patrol,
            area: crate::zones::parse_geojson(
                r#"{"type":"Polygon","coordinates":[[[116.6,23.3],[116.7,23.3],[116.7,23.4],[116.6,23.3]]]}"#,
            )
            .unwrap(),
        }
    }

    /// A reload that read the database before a zone was added here must not drop it; one
    /// with nothing added meanwhile is installed.
    #[test]
    fn a_reload_older_than_a_local_change_is_not_installed() {
        let routing = RoutingConfig {
            nearest_units: 0,
            nearest_radius_km: 1.0,
            position_max_age_ms: 1,
        };
        let router = Router::new(routing, ZoneMap::default());
        let epoch = router.epoch();
        let read_before = ZoneMap::default();
        router.zones_mut().add_zone(zone("z-new"));
        assert!(!router.replace_unless_changed(read_before, epoch));
        assert!(router.zones_read().has_zone("z-new"));

        let epoch = router.epoch();
        let mut read_after = ZoneMap::default();
        read_after.add_zone(zone("z-new"));
        read_after.add_zone(zone("z-other-node"));
        assert!(router.replace_unless_changed(read_after, epoch));
        assert!(router.zones_read().has_zone("z-other-node"));
    }
}
