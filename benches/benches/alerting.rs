//! Micro-benchmarks of alerting: routing a sighting to units with 1,000 zones and 500 units,
//! and the clone rule's per-read check.
//!
//! Run: `cargo bench -p greenplate-benches --bench alerting`

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use greenplate_alerting::zones::{Zone, ZoneKind, ZoneMap, parse_geojson};
use greenplate_alerting::{CloneConfig, CloneWatch};
use greenplate_registry::{Reader, TagId};

/// 1,000 square zones on a 40 x 25 grid over Chaoyang, 500 units with two zones each.
fn district() -> ZoneMap {
    let mut map = ZoneMap::default();
    let (south, west, dlat, dlon) = (23.17, 116.35, 0.23 / 25.0, 0.40 / 40.0);
    for i in 0..1000 {
        let (r, c) = (i / 40, i % 40);
        let (s, w) = (south + r as f64 * dlat, west + c as f64 * dlon);
        let (n, e) = (s + dlat, w + dlon);
        let geojson = format!(
            r#"{{"type":"Polygon","coordinates":[[[{w},{s}],[{e},{s}],[{e},{n}],[{w},{n}],[{w},{s}]]]}}"#
        );
        map.add_zone(Zone {
            id: format!("z{i}"),
            name: format!("Zone {i}"),
            kind: ZoneKind::Patrol,
            area: parse_geojson(&geojson).unwrap(),
        });
    }
    for u in 0..500 {
        map.assign(&format!("u{u}"), &format!("z{}", (u * 2) % 1000));
        map.assign(&format!("u{u}"), &format!("z{}", (u * 2 + 1) % 1000));
    }
    map
}

fn bench_routing(c: &mut Criterion) {
    let map = district();
    let mut i = 0u64;
    c.bench_function("routing/units_covering_1000_zones_500_units", |b| {
        b.iter(|| {
            i = i.wrapping_add(7919);
            let lat = 23.17 + (i % 230) as f64 / 1000.0;
            let lon = 116.35 + (i % 400) as f64 / 1000.0;
            black_box(map.units_covering(lat, lon))
        })
    });
}

fn bench_clone(c: &mut Criterion) {
    let watch = CloneWatch::new(CloneConfig::default());
    let readers: Vec<Arc<Reader>> = (0..1000)
        .map(|i| {
            Arc::new(Reader::new(
                format!("rd-{i}"),
                "r".into(),
                23.17 + (i % 25) as f64 * 0.0092,
                116.35 + (i / 25) as f64 * 0.01,
                "s",
            ))
        })
        .collect();
    let tags: Vec<TagId> = (0..210_000u64)
        .map(|i| TagId::parse(&format!("E2801160{i:016X}")).unwrap())
        .collect();
    let mut t = 1_700_000_000_000i64;
    let mut i = 0usize;
    c.bench_function("clone/observe_210k_tags", |b| {
        b.iter(|| {
            i = (i + 7919) % tags.len();
            t += 1000;
            // Each tag stays with its own reader: the common, innocent case.
            black_box(watch.observe(tags[i], &readers[i % 1000], t))
        })
    });
}

criterion_group!(benches, bench_routing, bench_clone);
criterion_main!(benches);
