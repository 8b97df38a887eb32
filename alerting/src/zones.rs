//! Patrol zones: GeoJSON Polygon/MultiPolygon parsed into `geo` shapes and validated, and the
//! routing table that says which patrol units cover a position.

use std::collections::{BTreeSet, HashMap};

use geo::{Contains, Coord, LineString, MultiPolygon, Point, Polygon, Validation};
use geojson::{GeoJson, GeometryValue, PolygonType};

/// Why a zone's GeoJSON was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ZoneError {
    #[error("geojson is not valid GeoJSON: {0}")]
    Parse(String),
    #[error(
        "geojson must be a Polygon or MultiPolygon (or a Feature / one-feature FeatureCollection of one), not {0}"
    )]
    WrongType(String),
    #[error("geojson ring {ring} has {points} positions; a ring needs at least 4")]
    ShortRing { ring: usize, points: usize },
    #[error("geojson ring {0} is not closed (its first and last positions differ)")]
    OpenRing(usize),
    #[error(
        "geojson has an invalid coordinate {0:?}: want [lon, lat] with lon in -180..180, lat in -90..90"
    )]
    BadCoordinate(Vec<f64>),
    #[error("geojson polygon is not valid: {0}")]
    Invalid(String),
}

/// Parses and validates a zone's GeoJSON into a MultiPolygon (lon = x, lat = y).
pub fn parse_geojson(text: &str) -> Result<MultiPolygon<f64>, ZoneError> {
    let gj: GeoJson = text.parse().map_err(|e| ZoneError::Parse(format!("{e}")))?;
    let geometry = match gj {
        GeoJson::Geometry(g) => g,
        GeoJson::Feature(f) => f
            .geometry
            .ok_or_else(|| ZoneError::WrongType("a Feature without geometry".into()))?,
        GeoJson::FeatureCollection(fc) if fc.features.len() == 1 => fc
            .features
            .into_iter()
            .next()
            .and_then(|f| f.geometry)
            .ok_or_else(|| ZoneError::WrongType("a Feature without geometry".into()))?,
        GeoJson::FeatureCollection(fc) => {
            return Err(ZoneError::WrongType(format!(
                "a FeatureCollection of {} features",
                fc.features.len()
            )));
        }
    };
    let polygons = match &geometry.value {
        GeometryValue::Polygon { coordinates } => vec![coordinates],
        GeometryValue::MultiPolygon { coordinates } => coordinates.iter().collect(),
        other => return Err(ZoneError::WrongType(other.type_name().into())),
    };
    let mut ring_no = 0;
    let mut out = Vec::with_capacity(polygons.len());
    for rings in polygons {
        out.push(polygon(rings, &mut ring_no)?);
    }
    let mp = MultiPolygon::new(out);
    if let Err(e) = mp.check_validation() {
        return Err(ZoneError::Invalid(e.to_string()));
    }
    Ok(mp)
}

fn polygon(rings: &PolygonType, ring_no: &mut usize) -> Result<Polygon<f64>, ZoneError> {
    let mut converted = Vec::with_capacity(rings.len());
    for ring in rings {
        *ring_no += 1;
        if ring.len() < 4 {
            return Err(ZoneError::ShortRing {
                ring: *ring_no,
                points: ring.len(),
            });
        }
        let mut coords = Vec::with_capacity(ring.len());
        for p in ring {
            let s = p.as_slice();
            let ok = s.len() >= 2
                && s.iter().all(|v| v.is_finite())
                && (-180.0..=180.0).contains(&s[0])
                && (-90.0..=90.0).contains(&s[1]);
            if !ok {
                return Err(ZoneError::BadCoordinate(s.to_vec()));
            }
            coords.push(Coord { x: s[0], y: s[1] });
        }
        if coords.first() != coords.last() {
            return Err(ZoneError::OpenRing(*ring_no));
        }
        converted.push(LineString::new(coords));
    }
    let mut it = converted.into_iter();
    let exterior = it
        .next()
        .ok_or_else(|| ZoneError::WrongType("a Polygon without rings".into()))?;
    Ok(Polygon::new(exterior, it.collect()))
}

/// Great-circle distance in kilometres (haversine, mean Earth radius).
pub fn distance_km(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    let (p1, p2) = (lat1.to_radians(), lat2.to_radians());
    let dp = p2 - p1;
    let dl = (lon2 - lon1).to_radians();
    let a = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
    2.0 * 6371.0088 * a.sqrt().asin()
}

/// What a zone is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ZoneKind {
    /// Units assigned to it get the alerts of readers inside it.
    Patrol,
    /// Flagged bikes seen inside it raise urgent watch-zone alerts.
    Watch,
}

impl ZoneKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ZoneKind::Patrol => "patrol",
            ZoneKind::Watch => "watch",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "patrol" => Some(ZoneKind::Patrol),
            "watch" => Some(ZoneKind::Watch),
            _ => None,
        }
    }
}

/// A zone.
#[derive(Debug, Clone)]
pub struct Zone {
    pub id: String,
    pub name: String,
    pub kind: ZoneKind,
    pub area: MultiPolygon<f64>,
}

/// Zones and the units assigned to them: answers "who covers this point".
#[derive(Debug, Default, Clone)]
pub struct ZoneMap {
    zones: Vec<Zone>,
    units_by_zone: HashMap<String, Vec<String>>,
    /// Command-center units: they receive every alert.
    command_units: Vec<String>,
    /// Canary units: they receive canary alerts only.
    canary_units: Vec<String>,
}

impl ZoneMap {
    /// Marks a unit as a command center.
    pub fn add_command_unit(&mut self, unit_id: &str) {
        if !self.command_units.iter().any(|u| u == unit_id) {
            self.command_units.push(unit_id.to_owned());
        }
    }

    /// Marks a unit as a canary unit.
    pub fn add_canary_unit(&mut self, unit_id: &str) {
        if !self.canary_units.iter().any(|u| u == unit_id) {
            self.canary_units.push(unit_id.to_owned());
        }
    }

    pub fn canary_units(&self) -> &[String] {
        &self.canary_units
    }

    pub fn command_units(&self) -> &[String] {
        &self.command_units
    }

    pub fn is_command_unit(&self, unit_id: &str) -> bool {
        self.command_units.iter().any(|u| u == unit_id)
    }

    /// The first watch zone containing (lat, lon).
    pub fn watch_zone_at(&self, lat: f64, lon: f64) -> Option<&Zone> {
        let p = Point::new(lon, lat);
        self.zones
            .iter()
            .find(|z| z.kind == ZoneKind::Watch && z.area.contains(&p))
    }

    /// Every zone.
    pub fn zones(&self) -> &[Zone] {
        &self.zones
    }

    pub fn add_zone(&mut self, zone: Zone) {
        self.zones.retain(|z| z.id != zone.id);
        self.zones.push(zone);
    }

    pub fn has_zone(&self, id: &str) -> bool {
        self.zones.iter().any(|z| z.id == id)
    }

    pub fn assign(&mut self, unit_id: &str, zone_id: &str) {
        let units = self.units_by_zone.entry(zone_id.to_owned()).or_default();
        if !units.iter().any(|u| u == unit_id) {
            units.push(unit_id.to_owned());
        }
    }

    /// The units assigned to any patrol zone that contains (lat, lon), and every command
    /// center: sorted, without repeats.
    pub fn units_covering(&self, lat: f64, lon: f64) -> Vec<String> {
        let p = Point::new(lon, lat);
        let set: BTreeSet<&String> = self
            .zones
            .iter()
            .filter(|z| z.kind == ZoneKind::Patrol && z.area.contains(&p))
            .filter_map(|z| self.units_by_zone.get(&z.id))
            .flatten()
            .chain(self.command_units.iter())
            .collect();
        set.into_iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SQUARE: &str = r#"{"type":"Polygon","coordinates":[[[116.5,23.2],[116.7,23.2],[116.7,23.4],[116.5,23.4],[116.5,23.2]]]}"#;

    #[test]
    fn parses_polygon_feature_and_multipolygon() {
        assert_eq!(parse_geojson(SQUARE).unwrap().0.len(), 1);
        let feature = format!(r#"{{"type":"Feature","properties":{{}},"geometry":{SQUARE}}}"#);
        assert!(parse_geojson(&feature).is_ok());
        let multi = r#"{"type":"MultiPolygon","coordinates":[[[[0,0],[1,0],[1,1],[0,0]]],[[[2,2],[3,2],[3,3],[2,2]]]]}"#;
        assert_eq!(parse_geojson(multi).unwrap().0.len(), 2);
    }

    #[test]
    fn refuses_bad_zones() {
        assert!(matches!(parse_geojson("{"), Err(ZoneError::Parse(_))));
        assert!(matches!(
            parse_geojson(r#"{"type":"Point","coordinates":[1,2]}"#),
            Err(ZoneError::WrongType(_))
        ));
        assert_eq!(
            parse_geojson(r#"{"type":"Polygon","coordinates":[[[0,0],[1,0],[1,1],[0,1]]]}"#),
            Err(ZoneError::OpenRing(1))
        );
        assert!(matches!(
            parse_geojson(r#"{"type":"Polygon","coordinates":[[[0,0],[1,0],[0,0]]]}"#),
            Err(ZoneError::ShortRing { .. })
        ));
        assert!(matches!(
            parse_geojson(r#"{"type":"Polygon","coordinates":[[[0,0],[200,0],[1,1],[0,0]]]}"#),
            Err(ZoneError::BadCoordinate(_))
        ));
        // A bow tie crosses itself.
        assert!(matches!(
            parse_geojson(r#"{"type":"Polygon","coordinates":[[[0,0],[1,1],[1,0],[0,1],[0,0]]]}"#),
            Err(ZoneError::Invalid(_))
        ));
    }

    #[test]
    fn distances() {
        // Shantou to Chaoyang town centre, roughly 20 km.
        let d = distance_km(23.354, 116.682, 23.265, 116.602);
        assert!((12.0..14.0).contains(&d), "{d}");
        assert_eq!(distance_km(23.0, 116.0, 23.0, 116.0), 0.0);
    }

    #[test]
    fn routes_by_containment() {
        let mut map = ZoneMap::default();
        map.add_zone(Zone {
            id: "z1".into(),
            name: "Z1".into(),
            kind: ZoneKind::Patrol,
            area: parse_geojson(SQUARE).unwrap(),
        });
        map.add_zone(Zone {
            id: "exit".into(),
            name: "Exit".into(),
            kind: ZoneKind::Watch,
            area: parse_geojson(SQUARE).unwrap(),
        });
        map.assign("u1", "z1");
        map.assign("u2", "z1");
        map.assign("u3", "elsewhere");
        map.assign("u4", "exit");
        assert_eq!(map.units_covering(23.3, 116.6), vec!["u1", "u2"]);
        assert!(map.units_covering(23.5, 116.6).is_empty());
        assert_eq!(map.watch_zone_at(23.3, 116.6).unwrap().id, "exit");
        assert!(map.watch_zone_at(23.5, 116.6).is_none());
        map.add_command_unit("hq");
        assert_eq!(map.units_covering(23.3, 116.6), vec!["hq", "u1", "u2"]);
        assert_eq!(map.units_covering(23.5, 116.6), vec!["hq"]);
    }
}
