//! What a reader's antenna makes of a bike passing: while the tag is inside the read zone
//! the reader interrogates it several times a second; each attempt can miss (orientation,
//! other tags, a truck in the way), and now and then a whole pass goes unread. The signal
//! strength follows free-space path loss from the antenna (on a pole above the lane) with
//! some noise, strongest when the bike is closest.
//!
//! A reader then folds the reads of each tag over its batching window into one
//! [`Sighting`] (first and last read, count, peak RSSI), as real readers do.

use greenplate_proto::v1::Sighting;
use rand::Rng;

/// The radio model.
#[derive(Debug, Clone)]
pub struct RfSpec {
    /// The tag is readable within this distance along the road of the antenna, m.
    pub read_radius_m: f32,
    /// Interrogations per second of a tag in the zone.
    pub attempts_per_s: f32,
    /// Chance that one interrogation gets no answer.
    pub read_miss: f64,
    /// Chance that a whole pass goes unread.
    pub pass_miss: f64,
    /// RSSI at 1 m, dBm.
    pub rssi_at_1m_dbm: f32,
    /// Standard deviation of the RSSI noise, dB.
    pub rssi_noise_db: f32,
    /// Antenna height above the lane, m.
    pub antenna_height_m: f32,
}

impl Default for RfSpec {
    fn default() -> Self {
        Self {
            read_radius_m: 15.0,
            attempts_per_s: 4.0,
            read_miss: 0.3,
            pass_miss: 0.02,
            rssi_at_1m_dbm: -32.0,
            rssi_noise_db: 2.0,
            antenna_height_m: 5.0,
        }
    }
}

/// One successful interrogation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Read {
    pub at_ms: i64,
    pub rssi_dbm: i32,
}

/// The reads of one pass: a bike at `speed_mps` that is closest to the antenna at
/// `closest_ms`. Empty when the pass goes unread.
pub fn pass(spec: &RfSpec, rng: &mut impl Rng, closest_ms: i64, speed_mps: f32) -> Vec<Read> {
    if rng.random_bool(spec.pass_miss.clamp(0.0, 1.0)) {
        return Vec::new();
    }
    let v = speed_mps.max(0.5);
    let dwell_s = 2.0 * spec.read_radius_m / v;
    let period_s = 1.0 / spec.attempts_per_s.max(0.1);
    // The reader's interrogation clock does not care when the bike arrives.
    let mut t = -dwell_s / 2.0 + rng.random_range(0.0..period_s);
    let lane_m: f32 = rng.random_range(2.0..8.0);
    let mut reads = Vec::new();
    while t <= dwell_s / 2.0 {
        if !rng.random_bool(spec.read_miss.clamp(0.0, 1.0)) {
            let along = v * t;
            let d = (along * along + lane_m * lane_m + spec.antenna_height_m.powi(2)).sqrt();
            let rssi = spec.rssi_at_1m_dbm - 20.0 * d.log10() + gauss(rng) * spec.rssi_noise_db;
            reads.push(Read {
                at_ms: closest_ms + (t * 1000.0) as i64,
                rssi_dbm: rssi.round().clamp(-95.0, -20.0) as i32,
            });
        }
        t += period_s;
    }
    reads
}

/// Folds one tag's reads (any order, non-empty) into a sighting.
pub fn fold(tag_id: &str, reads: &[Read]) -> Sighting {
    let first = reads.iter().map(|r| r.at_ms).min().unwrap_or(0);
    let last = reads.iter().map(|r| r.at_ms).max().unwrap_or(0);
    Sighting {
        tag_id: tag_id.to_owned(),
        first_seen_ms: first,
        last_seen_ms: last,
        read_count: reads.len() as u32,
        peak_rssi_dbm: reads.iter().map(|r| r.rssi_dbm).max().unwrap_or(-90),
        antenna: 1,
    }
}

/// A standard normal sample (Box-Muller).
fn gauss(rng: &mut impl Rng) -> f32 {
    let u1: f32 = rng.random_range(f32::EPSILON..1.0);
    let u2: f32 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f32::consts::PI * u2).cos()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn a_pass_at_40_kmh_gives_several_reads_around_the_closest_point() {
        let spec = RfSpec::default();
        let mut rng = StdRng::seed_from_u64(1);
        let v = 40.0 / 3.6;
        let mut counts = Vec::new();
        for _ in 0..2000 {
            let reads = pass(&spec, &mut rng, 1_000_000, v);
            if reads.is_empty() {
                continue;
            }
            // 2.7 s in the zone, 4 attempts a second, 30 % missed: about 7-8 reads.
            for r in &reads {
                assert!((r.at_ms - 1_000_000).abs() <= 1400, "{r:?}");
                assert!((-95..=-20).contains(&r.rssi_dbm));
            }
            counts.push(reads.len());
        }
        let mean = counts.iter().sum::<usize>() as f64 / counts.len() as f64;
        assert!((6.5..8.5).contains(&mean), "{mean}");
        assert!(counts.iter().all(|&k| (1..=12).contains(&k)));
    }

    #[test]
    fn missed_reads_and_passes_within_bounds() {
        let spec = RfSpec::default();
        let mut rng = StdRng::seed_from_u64(2);
        let (mut unread, mut reads, mut attempts) = (0, 0usize, 0usize);
        let n = 20_000;
        for _ in 0..n {
            let r = pass(&spec, &mut rng, 0, 10.0);
            if r.is_empty() {
                unread += 1;
            } else {
                reads += r.len();
                // 3 s in the zone at 4 Hz: 12 or 13 attempts.
                attempts += 12;
            }
        }
        let pass_miss = unread as f64 / n as f64;
        assert!((0.01..0.03).contains(&pass_miss), "{pass_miss}");
        let read_rate = reads as f64 / attempts as f64;
        assert!((0.66..0.78).contains(&read_rate), "{read_rate}");
    }

    #[test]
    fn the_peak_rssi_is_near_the_antenna() {
        let spec = RfSpec {
            rssi_noise_db: 0.0,
            read_miss: 0.0,
            pass_miss: 0.0,
            ..RfSpec::default()
        };
        let mut rng = StdRng::seed_from_u64(3);
        let reads = pass(&spec, &mut rng, 5000, 5.0);
        let s = fold("E28011600000000000000001", &reads);
        assert_eq!(s.read_count as usize, reads.len());
        let closest = reads.iter().min_by_key(|r| (r.at_ms - 5000).abs()).unwrap();
        assert!(s.peak_rssi_dbm - closest.rssi_dbm <= 1);
        assert!(s.first_seen_ms < 5000 && s.last_seen_ms > 5000);
        assert!(s.peak_rssi_dbm <= -32 - 14 && s.peak_rssi_dbm >= -32 - 20);
    }
}
