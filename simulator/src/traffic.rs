//! Bikes moving along the roads in real time, with a daily rhythm: how many ride follows the
//! hour (morning and evening peaks, quiet nights), each trip a random walk of a few to a few
//! dozen blocks at 60-100 % of the road's limit, then the bike parks where it is. Arrivals at
//! intersections with a reader are what the readers see.
//!
//! Motion is always real time, so the readers' timestamps show real speeds (the server's
//! clone rule would flag anything else); only the hour can run faster (`day_seconds`), which
//! changes how many bikes ride, not how fast.

use std::sync::Arc;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::roads::RoadNetwork;

/// What to move.
#[derive(Debug, Clone)]
pub struct TrafficSpec {
    pub bikes: usize,
    pub seed: u64,
    /// The hour of day when the simulation starts (0-24).
    pub start_hour: f64,
    /// Seconds of wall time per simulated day (86,400: real time).
    pub day_seconds: f64,
    /// A ride's speed as a share of the road's limit, lowest and highest.
    pub speed_share: (f32, f32),
    /// Blocks per trip, fewest and most.
    pub trip_blocks: (u16, u16),
}

impl TrafficSpec {
    pub fn new(bikes: usize, seed: u64) -> Self {
        Self {
            bikes,
            seed,
            start_hour: 18.0,
            day_seconds: 86_400.0,
            speed_share: (0.6, 1.0),
            trip_blocks: (3, 30),
        }
    }
}

/// The share of bikes on the road at an hour of the day: peaks around 07:45 and 18:00, a
/// smaller one at noon, very few at night.
pub fn activity(hour: f64) -> f64 {
    let h = hour.rem_euclid(24.0);
    let g = |mu: f64, sigma: f64| (-((h - mu) / sigma).powi(2) / 2.0).exp();
    0.01 + 0.20 * g(7.75, 0.9) + 0.08 * g(12.5, 1.2) + 0.22 * g(18.0, 1.1) + 0.04 * g(21.0, 1.5)
}

/// A bike reached an intersection with a reader.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Arrival {
    pub bike: u32,
    pub reader: u32,
    pub at_ms: i64,
    pub speed_mps: f32,
}

#[derive(Debug, Clone, Copy)]
struct Bike {
    from: u32,
    to: u32,
    length_m: f32,
    pos_m: f32,
    speed_mps: f32,
    blocks_left: u16,
    riding: bool,
    /// Moved by a scenario, not by the daily rhythm.
    managed: bool,
}

/// Every bike's position, advanced by [`Traffic::step`].
pub struct Traffic {
    net: Arc<RoadNetwork>,
    spec: TrafficSpec,
    bikes: Vec<Bike>,
    rng: StdRng,
    started_ms: i64,
    last_ms: i64,
    riding_unmanaged: usize,
    unmanaged: usize,
}

impl Traffic {
    /// Parks every bike on a random intersection, then sets the hour's share riding, each
    /// somewhere along its first block.
    pub fn new(net: Arc<RoadNetwork>, spec: TrafficSpec, now_ms: i64) -> Self {
        let mut rng = StdRng::seed_from_u64(spec.seed);
        let with_roads: Vec<u32> = (0..net.nodes.len() as u32)
            .filter(|&n| !net.edges[n as usize].is_empty())
            .collect();
        let bikes = (0..spec.bikes)
            .map(|_| {
                let at = with_roads[rng.random_range(0..with_roads.len())];
                Bike {
                    from: at,
                    to: at,
                    length_m: 0.0,
                    pos_m: 0.0,
                    speed_mps: 0.0,
                    blocks_left: 0,
                    riding: false,
                    managed: false,
                }
            })
            .collect();
        let mut t = Self {
            net,
            unmanaged: spec.bikes,
            spec,
            bikes,
            rng,
            started_ms: now_ms,
            last_ms: now_ms,
            riding_unmanaged: 0,
        };
        let target = (activity(t.hour(now_ms)) * t.spec.bikes as f64) as usize;
        for b in 0..t.bikes.len() {
            if t.riding_unmanaged >= target {
                break;
            }
            t.start(b);
            // Spread them along their blocks, so arrivals do not come in waves.
            let bike = &mut t.bikes[b];
            bike.pos_m = t.rng.random_range(0.0..bike.length_m.max(1.0));
        }
        t
    }

    /// The simulated hour of day.
    pub fn hour(&self, now_ms: i64) -> f64 {
        let elapsed_s = (now_ms - self.started_ms) as f64 / 1000.0;
        (self.spec.start_hour + elapsed_s / self.spec.day_seconds.max(1.0) * 24.0).rem_euclid(24.0)
    }

    pub fn riding(&self) -> usize {
        self.bikes.iter().filter(|b| b.riding).count()
    }

    /// Takes a bike out of the daily rhythm (a scenario moves it); parks it.
    pub fn manage(&mut self, bike: u32) {
        let b = &mut self.bikes[bike as usize];
        if !b.managed {
            b.managed = true;
            self.unmanaged -= 1;
            if b.riding {
                self.riding_unmanaged -= 1;
            }
            b.riding = false;
            b.from = b.to;
        }
    }

    /// Sends a managed bike riding for `blocks` blocks.
    pub fn ride(&mut self, bike: u32, blocks: u16) {
        self.start(bike as usize);
        self.bikes[bike as usize].blocks_left = blocks.max(1);
    }

    /// Sends a managed bike riding for `blocks` blocks, starting `before_m` metres short of
    /// intersection `node` on one of the roads into it (a scenario's bike is seen at once).
    pub fn ride_towards(&mut self, bike: u32, node: u32, before_m: f32, blocks: u16) {
        let out = &self.net.edges[node as usize];
        if out.is_empty() {
            return self.ride(bike, blocks);
        }
        let e = out[self.rng.random_range(0..out.len())];
        let (lo, hi) = self.spec.speed_share;
        let share = self.rng.random_range(lo..=hi.max(lo));
        let b = &mut self.bikes[bike as usize];
        if !b.riding && !b.managed {
            self.riding_unmanaged += 1;
        }
        b.from = e.to;
        b.to = node;
        b.length_m = e.length_m;
        b.pos_m = (e.length_m - before_m).max(0.0);
        b.speed_mps = e.limit_mps * share;
        b.riding = true;
        b.blocks_left = blocks.max(1);
    }

    /// Parks a managed bike at a given intersection (placing it there).
    pub fn place(&mut self, bike: u32, node: u32) {
        let b = &mut self.bikes[bike as usize];
        b.from = node;
        b.to = node;
        b.riding = false;
    }

    /// Where a bike is (or will be, riding: the end of its block).
    pub fn node_of(&self, bike: u32) -> u32 {
        self.bikes[bike as usize].to
    }

    pub fn is_riding(&self, bike: u32) -> bool {
        self.bikes[bike as usize].riding
    }

    fn start(&mut self, b: usize) {
        let (lo, hi) = self.spec.trip_blocks;
        let blocks = self.rng.random_range(lo.max(1)..=hi.max(lo.max(1)));
        let bike = self.bikes[b];
        if !bike.riding && !bike.managed {
            self.riding_unmanaged += 1;
        }
        let at = bike.to;
        self.enter_next_block(b, at, at);
        let bike = &mut self.bikes[b];
        bike.riding = true;
        bike.blocks_left = blocks;
    }

    /// Puts bike `b`, at intersection `at` having come from `came_from`, on a next block.
    fn enter_next_block(&mut self, b: usize, at: u32, came_from: u32) {
        let out = &self.net.edges[at as usize];
        let choices = out.iter().filter(|e| e.to != came_from).count();
        let e = if choices == 0 {
            out[0]
        } else {
            *out.iter()
                .filter(|e| e.to != came_from)
                .nth(self.rng.random_range(0..choices))
                .unwrap_or(&out[0])
        };
        let (lo, hi) = self.spec.speed_share;
        let share = self.rng.random_range(lo..=hi.max(lo));
        let bike = &mut self.bikes[b];
        bike.from = at;
        bike.to = e.to;
        bike.length_m = e.length_m;
        bike.pos_m = 0.0;
        bike.speed_mps = e.limit_mps * share;
    }

    /// Moves every riding bike to `now_ms`; pushes the arrivals at readers, in no
    /// particular order. Starts and ends trips to follow the hour's share.
    pub fn step(&mut self, now_ms: i64, out: &mut Vec<Arrival>) {
        let dt_s = ((now_ms - self.last_ms).max(0) as f32) / 1000.0;
        let t0 = self.last_ms;
        self.last_ms = now_ms;
        for b in 0..self.bikes.len() {
            if !self.bikes[b].riding {
                continue;
            }
            let mut left_s = dt_s;
            loop {
                let bike = &mut self.bikes[b];
                let to_go = bike.length_m - bike.pos_m;
                let can = bike.speed_mps * left_s;
                if can < to_go {
                    bike.pos_m += can;
                    break;
                }
                // Reaches the intersection within this step.
                let took_s = to_go / bike.speed_mps.max(0.1);
                left_s -= took_s;
                let at_ms = t0 + ((dt_s - left_s) * 1000.0) as i64;
                let (from, to, speed) = (bike.from, bike.to, bike.speed_mps);
                if let Some(reader) = self.net.reader_at[to as usize] {
                    out.push(Arrival {
                        bike: b as u32,
                        reader,
                        at_ms,
                        speed_mps: speed,
                    });
                }
                bike.blocks_left = bike.blocks_left.saturating_sub(1);
                if bike.blocks_left == 0 {
                    bike.riding = false;
                    bike.from = to;
                    bike.pos_m = 0.0;
                    if !bike.managed {
                        self.riding_unmanaged -= 1;
                    }
                    break;
                }
                self.enter_next_block(b, to, from);
            }
        }
        self.follow_rhythm(now_ms);
    }

    fn follow_rhythm(&mut self, now_ms: i64) {
        if self.unmanaged == 0 {
            return;
        }
        let target = (activity(self.hour(now_ms)) * self.unmanaged as f64) as usize;
        if self.riding_unmanaged < target {
            // Start trips from random parked bikes (few ride, so sampling finds them fast).
            let mut need = target - self.riding_unmanaged;
            let mut tries = need * 20;
            while need > 0 && tries > 0 {
                tries -= 1;
                let b = self.rng.random_range(0..self.bikes.len());
                let bike = self.bikes[b];
                if !bike.riding && !bike.managed {
                    self.start(b);
                    need -= 1;
                }
            }
        } else if self.riding_unmanaged > target + target / 10 + 1 {
            // The hour winds down: some riders end their trip at the next intersection.
            let mut excess = self.riding_unmanaged - target;
            for bike in &mut self.bikes {
                if excess == 0 {
                    break;
                }
                if bike.riding && !bike.managed && bike.blocks_left > 1 {
                    bike.blocks_left = 1;
                    excess -= 1;
                }
            }
        }
    }

    /// Checks that every bike is on a road of the network, within its block, at a legal
    /// speed (for tests).
    pub fn check_invariants(&self) -> Result<(), String> {
        for (i, b) in self.bikes.iter().enumerate() {
            if !b.riding {
                continue;
            }
            let edge = self.net.edges[b.from as usize]
                .iter()
                .find(|e| e.to == b.to)
                .ok_or_else(|| format!("bike {i} rides {}->{}, not a road", b.from, b.to))?;
            if !(0.0..=edge.length_m).contains(&b.pos_m) {
                return Err(format!(
                    "bike {i} at {} m of a {} m block",
                    b.pos_m, edge.length_m
                ));
            }
            let (lo, hi) = self.spec.speed_share;
            if b.speed_mps < edge.limit_mps * lo - 1e-3 || b.speed_mps > edge.limit_mps * hi + 1e-3
            {
                return Err(format!(
                    "bike {i} at {} m/s on a {} m/s road",
                    b.speed_mps, edge.limit_mps
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::roads::{RoadSpec, distance_km};

    fn town(readers: usize, bikes: usize) -> (Arc<RoadNetwork>, Traffic) {
        let net = Arc::new(RoadNetwork::generate(&RoadSpec::chaoyang(readers, 1)));
        let t = Traffic::new(net.clone(), TrafficSpec::new(bikes, 2), 0);
        (net, t)
    }

    #[test]
    fn the_day_has_two_peaks_and_a_quiet_night() {
        assert!(activity(3.0) < 0.02);
        assert!(activity(7.75) > 0.2);
        assert!(activity(18.0) > 0.22);
        assert!(activity(12.5) > activity(10.5));
        assert!(activity(18.0) > 10.0 * activity(3.0));
        assert_eq!(activity(-6.0), activity(18.0));
    }

    #[test]
    fn bikes_stay_on_roads_at_legal_speeds_and_are_seen_at_readers() {
        let (net, mut t) = town(100, 5000);
        let riding = t.riding();
        // 18:00: about a fifth of the bikes ride.
        assert!((1000..1300).contains(&riding), "{riding}");
        let mut arrivals = Vec::new();
        let mut last_seen: std::collections::HashMap<u32, Arrival> = Default::default();
        for step in 1..=600 {
            let now = step * 100;
            let before = arrivals.len();
            t.step(now, &mut arrivals);
            t.check_invariants().unwrap();
            for a in &arrivals[before..] {
                assert!(a.at_ms >= now - 100 && a.at_ms <= now, "{a:?} at {now}");
                assert_eq!(
                    net.reader_at[net.reader_nodes[a.reader as usize] as usize],
                    Some(a.reader)
                );
                // Never faster between two readers than a motorcycle rides (the clone rule).
                if let Some(p) = last_seen.insert(a.bike, *a) {
                    let (x, y) = (
                        net.reader_position(p.reader as usize),
                        net.reader_position(a.reader as usize),
                    );
                    let km = distance_km(x.lat, x.lon, y.lat, y.lon);
                    let h = (a.at_ms - p.at_ms) as f64 / 3.6e6;
                    assert!(km / h.max(1e-9) <= 61.0 || km < 0.01, "{km} km in {h} h");
                }
            }
        }
        // One minute at 18:00, 1,100 riders on 1.8 km blocks, a reader on every fourth
        // intersection: about a hundred passes.
        assert!(arrivals.len() > 60, "{}", arrivals.len());
    }

    #[test]
    fn the_rhythm_follows_the_hour() {
        let net = Arc::new(RoadNetwork::generate(&RoadSpec::chaoyang(50, 1)));
        let mut spec = TrafficSpec::new(4000, 3);
        spec.start_hour = 3.0;
        // A day in 240 s: 10 s per hour.
        spec.day_seconds = 240.0;
        let mut t = Traffic::new(net, spec, 0);
        assert!(t.riding() < 80, "{}", t.riding());
        let mut out = Vec::new();
        let mut at_peak = 0;
        for step in 1..=1500 {
            t.step(step * 100, &mut out);
            if (t.hour(step * 100) - 7.75).abs() < 0.01 {
                at_peak = t.riding();
            }
        }
        assert!(at_peak > 600, "{at_peak}");
    }

    #[test]
    fn a_managed_bike_rides_only_when_told() {
        let (_, mut t) = town(30, 100);
        t.manage(7);
        assert!(!t.is_riding(7));
        let mut out = Vec::new();
        for s in 1..100 {
            t.step(s * 100, &mut out);
        }
        assert!(!t.is_riding(7));
        t.ride(7, 5);
        assert!(t.is_riding(7));
        t.manage(8);
        let node = t.net.reader_nodes[3];
        t.ride_towards(8, node, 20.0, 5);
        let mut out = Vec::new();
        t.step(100 * 100 + 3000, &mut out);
        t.check_invariants().unwrap();
        assert!(out.iter().any(|a| a.bike == 8 && a.reader == 3), "{out:?}");
    }
}
