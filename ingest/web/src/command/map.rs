//! The district map, drawn as SVG from the district's own data: readers, zones, the latest
//! position of every open incident, a bike's track, and (optionally) map tiles under them.

use std::sync::Arc;

use greenplate_alerting::{OpenIncident, Zone, ZoneKind};
use greenplate_registry::Reader;
use maud::{Markup, html};

use super::online;

/// Map drawing size (SVG user units).
const MAP_W: f64 = 800.0;
const MAP_H: f64 = 560.0;

/// A linear map projection fitted to the district's extent (a district is small enough
/// that longitude scaled by cos(latitude) is as good as any projection).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Proj {
    min_lon: f64,
    max_lat: f64,
    /// SVG units per degree.
    kx: f64,
    ky: f64,
}

impl Proj {
    pub(super) fn fit(points: impl Iterator<Item = (f64, f64)>) -> Self {
        let (mut lo_lat, mut hi_lat, mut lo_lon, mut hi_lon) = (
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::INFINITY,
            f64::NEG_INFINITY,
        );
        for (lat, lon) in points.filter(|(a, o)| a.is_finite() && o.is_finite()) {
            lo_lat = lo_lat.min(lat);
            hi_lat = hi_lat.max(lat);
            lo_lon = lo_lon.min(lon);
            hi_lon = hi_lon.max(lon);
        }
        if !lo_lat.is_finite() {
            // Nothing provisioned yet: Chaoyang.
            (lo_lat, hi_lat, lo_lon, hi_lon) = (23.22, 23.30, 116.55, 116.65);
        }
        // At least ~1 km across, plus a margin.
        let pad_lat = ((hi_lat - lo_lat) * 0.08).max(0.005);
        let pad_lon = ((hi_lon - lo_lon) * 0.08).max(0.005);
        let (lo_lat, hi_lat) = (lo_lat - pad_lat, hi_lat + pad_lat);
        let (lo_lon, hi_lon) = (lo_lon - pad_lon, hi_lon + pad_lon);
        let cos = ((lo_lat + hi_lat) / 2.0).to_radians().cos().max(0.01);
        let k = (MAP_W / ((hi_lon - lo_lon) * cos)).min(MAP_H / (hi_lat - lo_lat));
        // Centre the extent in the drawing.
        let used_w = (hi_lon - lo_lon) * cos * k;
        let used_h = (hi_lat - lo_lat) * k;
        Self {
            min_lon: lo_lon - (MAP_W - used_w) / 2.0 / (cos * k),
            max_lat: hi_lat + (MAP_H - used_h) / 2.0 / k,
            kx: cos * k,
            ky: k,
        }
    }

    fn x(&self, lon: f64) -> f64 {
        (lon - self.min_lon) * self.kx
    }

    fn y(&self, lat: f64) -> f64 {
        (self.max_lat - lat) * self.ky
    }

    fn lon(&self, x: f64) -> f64 {
        self.min_lon + x / self.kx
    }

    fn lat(&self, y: f64) -> f64 {
        self.max_lat - y / self.ky
    }
}

/// Web-Mercator tiles covering the map, at a zoom where about four span its width.
fn tiles(template: &str, proj: &Proj) -> Vec<(String, f64, f64, f64, f64)> {
    use std::f64::consts::PI;
    let (west, east) = (proj.lon(0.0), proj.lon(MAP_W));
    let (north, south) = (proj.lat(0.0), proj.lat(MAP_H));
    let span = (east - west).max(1e-6);
    let z = ((360.0 * 4.0 / span).log2().floor()).clamp(1.0, 19.0) as u32;
    let n = f64::from(1u32 << z);
    let tx = |lon: f64| ((lon + 180.0) / 360.0 * n).floor();
    let ty = |lat: f64| {
        let r = lat.to_radians();
        ((1.0 - (r.tan() + 1.0 / r.cos()).ln() / PI) / 2.0 * n).floor()
    };
    let tlon = |x: f64| x / n * 360.0 - 180.0;
    let tlat = |y: f64| (PI * (1.0 - 2.0 * y / n)).sinh().atan().to_degrees();
    let mut out = Vec::new();
    let (x0, x1, y0, y1) = (tx(west), tx(east), ty(north), ty(south));
    if (x1 - x0 + 1.0) * (y1 - y0 + 1.0) > 64.0 {
        return out;
    }
    let mut y = y0;
    while y <= y1 {
        let mut x = x0;
        while x <= x1 {
            let url = template
                .replace("{z}", &z.to_string())
                .replace("{x}", &(x as u64).to_string())
                .replace("{y}", &(y as u64).to_string());
            let (px, py) = (proj.x(tlon(x)), proj.y(tlat(y)));
            let (qx, qy) = (proj.x(tlon(x + 1.0)), proj.y(tlat(y + 1.0)));
            out.push((url, px, py, qx - px, qy - py));
            x += 1.0;
        }
        y += 1.0;
    }
    out
}

/// SVG points of a ring of (lon, lat).
fn ring_points(proj: &Proj, ring: impl Iterator<Item = (f64, f64)>) -> String {
    ring.map(|(lon, lat)| format!("{:.1},{:.1}", proj.x(lon), proj.y(lat)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The district map as SVG: tiles (if configured), zones, readers, incidents, a track.
pub(super) fn map_svg(
    proj: &Proj,
    tile_url: Option<&str>,
    zones: &[Zone],
    readers: &[Arc<Reader>],
    incidents: &[OpenIncident],
    track: &[(f64, f64)],
) -> Markup {
    html! {
        svg #map viewBox=(format!("0 0 {MAP_W} {MAP_H}")) role="img"
            aria-label="区域地图 / District map"
            data-min-lon=(proj.min_lon) data-max-lat=(proj.max_lat)
            data-kx=(proj.kx) data-ky=(proj.ky) xmlns="http://www.w3.org/2000/svg" {
            rect.sea x="0" y="0" width=(MAP_W) height=(MAP_H) {}
            @if let Some(t) = tile_url {
                g.tiles {
                    @for (url, x, y, w, h) in tiles(t, proj) {
                        image href=(url) x=(format!("{x:.1}")) y=(format!("{y:.1}"))
                            width=(format!("{w:.1}")) height=(format!("{h:.1}"))
                            preserveAspectRatio="none" {}
                    }
                }
            }
            g.zones {
                @for z in zones {
                    @for poly in &z.area.0 {
                        polygon class=(match z.kind { ZoneKind::Watch => "zone watch", ZoneKind::Patrol => "zone patrol" })
                            points=(ring_points(proj, poly.exterior().0.iter().map(|c| (c.x, c.y)))) {
                            title { (z.name) " (" (z.id) ")" }
                        }
                    }
                }
            }
            @if !track.is_empty() {
                g.track {
                    polyline points=(track.iter().map(|(lat, lon)| format!("{:.1},{:.1}", proj.x(*lon), proj.y(*lat))).collect::<Vec<_>>().join(" ")) {}
                    @for (lat, lon) in track {
                        circle cx=(format!("{:.1}", proj.x(*lon))) cy=(format!("{:.1}", proj.y(*lat))) r="3" {}
                    }
                }
            }
            g.readers {
                @for r in readers {
                    circle class=(if online(r) { "reader online" } else { "reader offline" })
                        data-reader=(r.id)
                        cx=(format!("{:.1}", proj.x(r.lon))) cy=(format!("{:.1}", proj.y(r.lat))) r="4" {
                        title { (r.id) " " (r.name) }
                    }
                }
            }
            g #markers {
                @for i in incidents {
                    g class=(format!("marker kind-{}", i.kind)) data-incident=(i.last.incident_id)
                        transform=(format!("translate({:.1},{:.1})", proj.x(i.last.lon), proj.y(i.last.lat))) {
                        circle r="8" {}
                        text x="11" y="4" { (i.last.plate) }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_map_fits_the_district_and_round_trips() {
        let pts = [(23.20, 116.50), (23.32, 116.66)];
        let p = Proj::fit(pts.iter().copied());
        for (lat, lon) in pts {
            let (x, y) = (p.x(lon), p.y(lat));
            assert!(
                (0.0..=MAP_W).contains(&x) && (0.0..=MAP_H).contains(&y),
                "{x},{y}"
            );
            assert!((p.lat(y) - lat).abs() < 1e-9 && (p.lon(x) - lon).abs() < 1e-9);
        }
        // North is up.
        assert!(p.y(23.32) < p.y(23.20));
        // An empty district still draws.
        let empty = Proj::fit(std::iter::empty());
        assert!(empty.kx.is_finite() && empty.ky > 0.0);
    }

    #[test]
    fn tiles_cover_the_map() {
        let p = Proj::fit([(23.20, 116.50), (23.32, 116.66)].into_iter());
        let t = tiles("http://tiles.local/{z}/{x}/{y}.png", &p);
        assert!(!t.is_empty() && t.len() <= 64, "{}", t.len());
        assert!(t[0].0.starts_with("http://tiles.local/"));
        let (_, x, y, w, h) = &t[0];
        assert!(*x <= 0.0 && *y <= 0.0 && *w > 0.0 && *h > 0.0);
    }
}
