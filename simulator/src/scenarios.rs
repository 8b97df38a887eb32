//! The scenarios a district run plays over the honest traffic, and the oracle that says
//! which alerts the server owes for what the readers published:
//! - thefts: a bike is reported stolen through the Registry API, then ridden away: every
//!   pass at a reader is a `STOLEN_SIGHTED` alert;
//! - armed bikes that move: registered through the Registry API with a PIN, armed, ridden:
//!   every pass is an `ARMED_MOVED` alert;
//! - a cloned tag: two bikes carry the same tag in different parts of town; a pass whose
//!   previous sighting of the tag was too far away too recently is a `CLONE_SUSPECTED`
//!   alert (the oracle states the rule on its own and applies it to what was published);
//! - a reader that goes offline (loses power: its MQTT last will): one `READER_OFFLINE` to
//!   the command centers;
//! - a flood of garbage from one reader: no alert, every message rejected (counted by reason
//!   in the server's metrics).
//!
//! The oracle follows the server's documented rules: reads of a tag by one reader at most
//! `pass_gap_ms` apart are one pass, rules fire on a pass's first read only, and the clone
//! rule learns from every sighting but fires only on a pass's first.

use std::collections::HashMap;

use greenplate_proto::v1::{AlertKind, Sighting};

use crate::roads::distance_km;

/// What a scenario tag is, for the rules.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Flags {
    /// Reported stolen (and the report accepted).
    pub stolen: bool,
    pub armed: bool,
    /// Carried by two bikes.
    pub cloned: bool,
}

impl Flags {
    pub fn any(self) -> bool {
        self.stolen || self.armed || self.cloned
    }
}

/// The server's rule thresholds (its defaults unless it was configured otherwise).
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    pub pass_gap_ms: i64,
    pub clone_speed_kmh: f64,
    pub clone_min_distance_km: f64,
}

impl Default for Rules {
    fn default() -> Self {
        Self {
            pass_gap_ms: 5_000,
            clone_speed_kmh: 150.0,
            clone_min_distance_km: 1.0,
        }
    }
}

/// Which alerts published sightings of scenario tags should raise.
#[derive(Debug)]
pub struct Oracle {
    rules: Rules,
    /// Reader positions by reader index.
    readers: Vec<(f64, f64)>,
    /// (reader, tag) -> last read of its open pass.
    passes: HashMap<(u32, u32), i64>,
    /// tag -> (reader, first_seen) of its latest sighting, as the clone rule keeps it.
    clone_last: HashMap<u32, (u32, i64)>,
}

impl Oracle {
    pub fn new(rules: Rules, readers: Vec<(f64, f64)>) -> Self {
        Self {
            rules,
            readers,
            passes: HashMap::new(),
            clone_last: HashMap::new(),
        }
    }

    /// A sighting of scenario tag `tag` published by `reader`, in publish order; returns the
    /// alert kinds it raises.
    pub fn observe(&mut self, tag: u32, flags: Flags, reader: u32, s: &Sighting) -> Vec<AlertKind> {
        let mut kinds = Vec::new();
        let opens = match self.passes.get_mut(&(reader, tag)) {
            Some(last) if s.first_seen_ms <= *last + self.rules.pass_gap_ms => {
                *last = (*last).max(s.last_seen_ms);
                false
            }
            _ => {
                self.passes.insert((reader, tag), s.last_seen_ms);
                true
            }
        };
        let clone = flags.cloned && self.clone_evidence(tag, reader, s.first_seen_ms);
        if !opens {
            return kinds;
        }
        if flags.stolen {
            kinds.push(AlertKind::StolenSighted);
        }
        if flags.armed && !flags.stolen {
            kinds.push(AlertKind::ArmedMoved);
        }
        if clone {
            kinds.push(AlertKind::CloneSuspected);
        }
        kinds
    }

    /// The clone rule, stated on its own (the server's is `alerting/src/rules/clone.rs`): a
    /// sighting at a reader at least `clone_min_distance_km` from the reader of the tag's
    /// latest sighting (latest by the readers' clocks) is a clone when distance / time
    /// between them exceeds `clone_speed_kmh`. No time at all is infinitely fast. (The
    /// server floors the time at 3.6 ms, which changes the answer only for limits above
    /// a million km/h.)
    fn clone_evidence(&mut self, tag: u32, reader: u32, at_ms: i64) -> bool {
        let latest = self.clone_last.get(&tag).copied();
        if latest.is_none_or(|(_, then)| at_ms >= then) {
            self.clone_last.insert(tag, (reader, at_ms));
        }
        let Some((other, then)) = latest else {
            return false;
        };
        if other == reader {
            return false;
        }
        let (a, b) = (self.readers[other as usize], self.readers[reader as usize]);
        let km = distance_km(a.0, a.1, b.0, b.1);
        let hours = at_ms.abs_diff(then) as f64 / 3_600_000.0;
        km >= self.rules.clone_min_distance_km && km / hours > self.rules.clone_speed_kmh
    }
}

/// Keeps the two carriers of a cloned tag from being read within `margin_ms` of each other,
/// so the order in which the server sees their sightings is the order they were published
/// (two readers' batches of the same instant may be taken in either order): a carrier's pass
/// that would come too close to the other's is left unread, as a missed pass.
#[derive(Debug, Default)]
pub struct CloneGuard {
    windows: [Option<(i64, i64)>; 2],
    pub margin_ms: i64,
}

impl CloneGuard {
    pub fn new(margin_ms: i64) -> Self {
        Self {
            windows: [None, None],
            margin_ms,
        }
    }

    /// Carrier `who` (0 or 1) would be read from `first` to `last`; true if it may.
    pub fn admit(&mut self, who: usize, first_ms: i64, last_ms: i64) -> bool {
        if let Some((f, l)) = self.windows[1 - who]
            && first_ms <= l + self.margin_ms
            && last_ms >= f - self.margin_ms
        {
            return false;
        }
        let w = self.windows[who].get_or_insert((first_ms, last_ms));
        if first_ms > w.1 + self.margin_ms {
            *w = (first_ms, last_ms);
        } else {
            w.1 = w.1.max(last_ms);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(first: i64, last: i64) -> Sighting {
        Sighting {
            tag_id: "E28011600000000000000001".into(),
            first_seen_ms: first,
            last_seen_ms: last,
            read_count: 3,
            peak_rssi_dbm: -50,
            antenna: 1,
        }
    }

    fn readers() -> Vec<(f64, f64)> {
        // 0 and 1 are 0.5 km apart; 2 is 20 km east.
        vec![(23.25, 116.40), (23.2545, 116.40), (23.25, 116.596)]
    }

    #[test]
    fn a_stolen_bike_raises_one_alert_per_pass() {
        let mut o = Oracle::new(Rules::default(), readers());
        let f = Flags {
            stolen: true,
            ..Flags::default()
        };
        assert_eq!(
            o.observe(1, f, 0, &s(1000, 1200)),
            [AlertKind::StolenSighted]
        );
        // The same pass, next batch.
        assert!(o.observe(1, f, 0, &s(1400, 1600)).is_empty());
        // Another reader: its own pass.
        assert_eq!(
            o.observe(1, f, 1, &s(60_000, 60_100)),
            [AlertKind::StolenSighted]
        );
        // Back at reader 0 after more than the gap: a new pass.
        assert_eq!(
            o.observe(1, f, 0, &s(120_000, 120_100)),
            [AlertKind::StolenSighted]
        );
        let armed = Flags {
            armed: true,
            ..Flags::default()
        };
        assert_eq!(
            o.observe(2, armed, 0, &s(1000, 1000)),
            [AlertKind::ArmedMoved]
        );
    }

    #[test]
    fn the_clone_rule_replayed() {
        let mut o = Oracle::new(Rules::default(), readers());
        let f = Flags {
            cloned: true,
            ..Flags::default()
        };
        assert!(o.observe(1, f, 0, &s(1000, 1500)).is_empty());
        // 20 km in 10 s: a clone.
        assert_eq!(
            o.observe(1, f, 2, &s(11_000, 11_500)),
            [AlertKind::CloneSuspected]
        );
        // The same pass goes on: evidence, but not a pass's first read.
        assert!(o.observe(1, f, 2, &s(11_700, 11_900)).is_empty());
        // Back west after 100 s: 720 km/h, a clone again.
        assert_eq!(
            o.observe(1, f, 0, &s(111_000, 111_000)),
            [AlertKind::CloneSuspected]
        );
        // A neighbour 0.5 km away: under the rule's minimum distance.
        assert!(o.observe(1, f, 1, &s(115_000, 115_000)).is_empty());
    }

    const CLONED: Flags = Flags {
        stolen: false,
        armed: false,
        cloned: true,
    };

    /// Whether the second of two sightings, at readers 0 and 2, `dt_ms` apart, is a clone
    /// under `rules`.
    fn second_is_a_clone(rules: Rules, dt_ms: i64) -> bool {
        let mut o = Oracle::new(rules, readers());
        assert!(o.observe(1, CLONED, 0, &s(1_000_000, 1_000_000)).is_empty());
        let at = 1_000_000 + dt_ms;
        o.observe(1, CLONED, 2, &s(at, at)) == [AlertKind::CloneSuspected]
    }

    /// Readers 0 and 2, km.
    fn apart() -> f64 {
        let r = readers();
        distance_km(r[0].0, r[0].1, r[2].0, r[2].1)
    }

    #[test]
    fn the_clone_rule_at_its_edges() {
        let km = apart();
        assert!((19.0..21.0).contains(&km), "{km}");
        // Exactly at the speed limit (the speed over 10 minutes) is not faster than it; a
        // hair over is.
        let hours = 600_000.0 / 3_600_000.0;
        let at_limit = |kmh: f64| Rules {
            clone_speed_kmh: kmh,
            ..Rules::default()
        };
        assert!(!second_is_a_clone(at_limit(km / hours), 600_000));
        assert!(second_is_a_clone(
            at_limit(km / hours * (1.0 - 1e-9)),
            600_000
        ));
        assert!(!second_is_a_clone(at_limit(km / hours), 600_001));
        assert!(second_is_a_clone(at_limit(km / hours), 599_999));
        // Exactly the minimum distance counts; a hair more than the distance does not.
        let min = |d: f64| Rules {
            clone_min_distance_km: d,
            ..Rules::default()
        };
        assert!(second_is_a_clone(min(km), 1_000));
        assert!(!second_is_a_clone(min(km * (1.0 + 1e-9)), 1_000));
        // No time between two readers 20 km apart: infinitely fast. And the order of the
        // readers' clocks does not matter.
        assert!(second_is_a_clone(Rules::default(), 0));
        assert!(second_is_a_clone(Rules::default(), -10_000));
        assert!(!second_is_a_clone(Rules::default(), -3_600_000));
    }

    #[test]
    fn the_clone_rule_compares_with_the_latest_sighting_by_time() {
        let mut o = Oracle::new(Rules::default(), readers());
        assert!(o.observe(1, CLONED, 2, &s(3_600_000, 3_600_000)).is_empty());
        // A late sighting at reader 0, an hour before by its clock: 20 km/h from reader 2,
        // plausible, and not the latest.
        assert!(o.observe(1, CLONED, 0, &s(0, 0)).is_empty());
        // At reader 1 10 s after reader 2's: 20 km in 10 s. (Compared with reader 0's, the
        // last to arrive, it would be under the minimum distance.)
        assert_eq!(
            o.observe(1, CLONED, 1, &s(3_610_000, 3_610_000)),
            [AlertKind::CloneSuspected]
        );
    }

    #[test]
    fn the_clone_guard_keeps_the_carriers_apart() {
        let mut g = CloneGuard::new(2000);
        assert!(g.admit(0, 10_000, 12_000));
        assert!(!g.admit(1, 13_000, 14_000));
        assert!(g.admit(1, 14_500, 16_000));
        assert!(!g.admit(0, 17_000, 18_000));
        assert!(g.admit(0, 30_000, 31_000));
    }
}
