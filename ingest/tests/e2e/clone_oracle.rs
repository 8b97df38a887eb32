//! The district simulation's oracle (`greenplate_simulator::scenarios`) states the clone rule
//! on its own; here it must agree with the server's rule (`greenplate_alerting::CloneWatch`)
//! on the edge values (exactly at the speed limit, exactly at the minimum distance, no time
//! at all, clocks out of order) and on a seeded random run, sighting by sighting.

use std::sync::Arc;

use greenplate_alerting::zones::distance_km;
use greenplate_alerting::{CloneConfig, CloneWatch};
use greenplate_proto::v1::{AlertKind, Sighting};
use greenplate_registry::{Reader, TagId};
use greenplate_simulator::scenarios::{Flags, Oracle, Rules};
use rand::{Rng, SeedableRng};

const TAG: &str = "E28011606000000000000C99";

/// Both rules over the same readers.
struct Both {
    oracle: Oracle,
    watch: CloneWatch,
    readers: Vec<Arc<Reader>>,
}

impl Both {
    fn new(speed_kmh: f64, min_km: f64, positions: &[(f64, f64)]) -> Self {
        let rules = Rules {
            // Every sighting its own pass (even one older than the reader's last), so the
            // oracle answers for each one.
            pass_gap_ms: -(1 << 60),
            clone_speed_kmh: speed_kmh,
            clone_min_distance_km: min_km,
        };
        Self {
            oracle: Oracle::new(rules, positions.to_vec()),
            watch: CloneWatch::new(CloneConfig {
                max_speed_kmh: speed_kmh,
                min_distance_km: min_km,
            }),
            readers: positions
                .iter()
                .enumerate()
                .map(|(i, &(lat, lon))| {
                    Arc::new(Reader::new(format!("rd-{i}"), String::new(), lat, lon, "s"))
                })
                .collect(),
        }
    }

    /// A sighting at reader `r` at `at_ms`: whether each rule calls it a clone, (oracle,
    /// server).
    fn see(&mut self, r: usize, at_ms: i64) -> (bool, bool) {
        let flags = Flags {
            cloned: true,
            ..Flags::default()
        };
        let s = Sighting {
            tag_id: TAG.into(),
            first_seen_ms: at_ms,
            last_seen_ms: at_ms,
            read_count: 1,
            peak_rssi_dbm: -50,
            antenna: 1,
        };
        let oracle = self.oracle.observe(1, flags, r as u32, &s) == [AlertKind::CloneSuspected];
        let server = self
            .watch
            .observe(TagId::parse(TAG).unwrap(), &self.readers[r], at_ms)
            .is_some();
        (oracle, server)
    }
}

/// Reader 0 and reader 1 about 20 km apart.
const TWO: [(f64, f64); 2] = [(23.25, 116.40), (23.25, 116.596)];

fn km() -> f64 {
    distance_km(TWO[0].0, TWO[0].1, TWO[1].0, TWO[1].1)
}

/// (what, speed limit, minimum distance, ms from reader 0's sighting to reader 1's, clone)
fn edges() -> Vec<(&'static str, f64, f64, i64, bool)> {
    let ten_minutes = 600_000;
    let at_limit = km() / (ten_minutes as f64 / 3_600_000.0);
    vec![
        (
            "exactly at the speed limit",
            at_limit,
            1.0,
            ten_minutes,
            false,
        ),
        (
            "a hair over the speed limit",
            at_limit * (1.0 - 1e-12),
            1.0,
            ten_minutes,
            true,
        ),
        (
            "a millisecond slower",
            at_limit,
            1.0,
            ten_minutes + 1,
            false,
        ),
        ("a millisecond faster", at_limit, 1.0, ten_minutes - 1, true),
        ("exactly at the minimum distance", 150.0, km(), 1_000, true),
        (
            "a hair under the minimum distance",
            150.0,
            km() * (1.0 + 1e-12),
            1_000,
            false,
        ),
        ("no time at all", 150.0, 1.0, 0, true),
        ("a millisecond", 150.0, 1.0, 1, true),
        ("clocks out of order, too fast", 150.0, 1.0, -60_000, true),
        (
            "clocks out of order, plausible",
            150.0,
            1.0,
            -3_600_000,
            false,
        ),
    ]
}

#[test]
fn the_oracle_and_the_server_agree_on_the_edges() {
    for (what, speed, min, dt, clone) in edges() {
        let mut both = Both::new(speed, min, &TWO);
        let t0 = 1_700_000_000_000;
        assert_eq!(both.see(0, t0), (false, false), "{what}: first sighting");
        assert_eq!(
            both.see(1, t0 + dt),
            (clone, clone),
            "{what}: (oracle, server) for {} km in {dt} ms at {speed} km/h, minimum {min} km",
            km()
        );
    }
}

#[test]
fn the_oracle_and_the_server_agree_on_a_random_run() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(20);
    // Readers over 10 km, some within the minimum distance of each other.
    let positions: Vec<(f64, f64)> = (0..12)
        .map(|_| {
            (
                23.25 + rng.random_range(0.0..0.09),
                116.50 + rng.random_range(0.0..0.09),
            )
        })
        .collect();
    let mut both = Both::new(150.0, 1.0, &positions);
    let mut at = 1_700_000_000_000i64;
    let mut clones = 0;
    for step in 0..20_000 {
        // Mostly forward, now and then a late sighting from the past; sometimes 0 ms.
        at += rng.random_range(-30_000..120_000);
        let r = rng.random_range(0..positions.len());
        let (oracle, server) = both.see(r, at);
        assert_eq!(oracle, server, "step {step}: reader {r} at {at}");
        clones += usize::from(server);
    }
    // Both outcomes were exercised.
    assert!((1_000..19_000).contains(&clones), "{clones} clones");
}
