//! The clone rule's memory: where and when each registered tag was last seen, so that one
//! tag seen by two readers too far apart for the time between (faster than any motorcycle
//! in town) is flagged as a suspected clone.
//!
//! It runs on ingest's hot path for every read of a registered tag, so it is a sharded map
//! (one short, uncontended lock per read; no allocation once a tag has an entry).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use greenplate_registry::{Reader, TagId};

use crate::zones::distance_km;

const SHARDS: usize = 64;

/// Thresholds of the clone rule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CloneConfig {
    /// Faster than this between two readers is impossible, km/h.
    pub max_speed_kmh: f64,
    /// Readers closer than this may both see a tag at once (overlapping fields), km.
    pub min_distance_km: f64,
}

impl Default for CloneConfig {
    fn default() -> Self {
        Self {
            max_speed_kmh: 150.0,
            min_distance_km: 1.0,
        }
    }
}

/// The earlier sighting that makes this one impossible.
#[derive(Debug, Clone)]
pub struct CloneEvidence {
    pub other_reader: Arc<Reader>,
    pub other_seen_at_ms: i64,
    pub distance_km: f64,
    pub speed_kmh: f64,
}

/// Only registered tags reach this map (ingest looks the tag up in the hot index first).
type TagMap = HashMap<u128, Last, greenplate_registry::validate::TagBuildHasher>;

#[derive(Debug)]
struct Last {
    reader: Arc<Reader>,
    at_ms: i64,
}

/// Last sighting per tag.
#[derive(Debug)]
pub struct CloneWatch {
    config: CloneConfig,
    shards: Vec<Mutex<TagMap>>,
}

impl CloneWatch {
    pub fn new(config: CloneConfig) -> Self {
        Self {
            config,
            shards: (0..SHARDS).map(|_| Mutex::new(TagMap::default())).collect(),
        }
    }

    /// Records a sighting; returns evidence if it contradicts the tag's last one.
    pub fn observe(&self, tag: TagId, reader: &Arc<Reader>, at_ms: i64) -> Option<CloneEvidence> {
        let key = tag.as_u128();
        // Shard on middle bits: hashbrown takes its bucket from the low bits and its tag
        // byte from the top 7, which must stay varied within a shard.
        let mixed = ((key as u64) ^ ((key >> 64) as u64).rotate_left(29))
            .wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let shard = &self.shards[(mixed >> 32) as usize % SHARDS];
        let mut map = shard.lock().unwrap_or_else(|p| p.into_inner());
        let Some(last) = map.get_mut(&key) else {
            map.insert(
                key,
                Last {
                    reader: reader.clone(),
                    at_ms,
                },
            );
            return None;
        };
        if Arc::ptr_eq(&last.reader, reader) {
            // The common case: the same reader again. No distance, no refcount traffic.
            last.at_ms = last.at_ms.max(at_ms);
            return None;
        }
        let mut evidence = None;
        if last.reader.id != reader.id {
            let d = distance_km(last.reader.lat, last.reader.lon, reader.lat, reader.lon);
            if d >= self.config.min_distance_km {
                let hours = ((at_ms - last.at_ms).abs() as f64 / 3_600_000.0).max(1e-6);
                let speed = d / hours;
                if speed > self.config.max_speed_kmh {
                    evidence = Some(CloneEvidence {
                        other_reader: last.reader.clone(),
                        other_seen_at_ms: last.at_ms,
                        distance_km: d,
                        speed_kmh: speed,
                    });
                }
            }
        }
        if at_ms >= last.at_ms {
            last.reader = reader.clone();
            last.at_ms = at_ms;
        }
        evidence
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reader(id: &str, lat: f64, lon: f64) -> Arc<Reader> {
        Arc::new(Reader::new(id.into(), id.into(), lat, lon, "s"))
    }

    #[test]
    fn impossible_speed_is_flagged_plausible_is_not() {
        let w = CloneWatch::new(CloneConfig::default());
        let tag = TagId::parse("E28011606000000000000001").unwrap();
        let a = reader("a", 23.20, 116.50);
        let b = reader("b", 23.30, 116.50); // ~11 km north
        let near = reader("near", 23.2005, 116.5005); // ~70 m from a
        let t0 = 1_700_000_000_000;
        assert!(w.observe(tag, &a, t0).is_none());
        // Same reader again, and a neighbouring reader at the same moment: fine.
        assert!(w.observe(tag, &a, t0 + 1000).is_none());
        assert!(w.observe(tag, &near, t0 + 1000).is_none());
        // 11 km in 10 minutes is 66 km/h: plausible.
        assert!(w.observe(tag, &b, t0 + 600_000).is_none());
        // Back to a 1 minute later: 660 km/h.
        let e = w.observe(tag, &a, t0 + 660_000).unwrap();
        assert_eq!(e.other_reader.id, "b");
        assert!(
            e.speed_kmh > 600.0 && (10.0..12.0).contains(&e.distance_km),
            "{e:?}"
        );
        // Another tag is independent.
        let other = TagId::parse("E28011606000000000000002").unwrap();
        assert!(w.observe(other, &b, t0).is_none());
    }
}
