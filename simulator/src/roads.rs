//! A synthetic road network over Chaoyang: a jittered grid of intersections with arterial
//! roads every few blocks, local streets between them (a few missing, as in a real town),
//! and readers on intersections, arterial crossings first.

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

/// Chaoyang district's area (Shantou): south, north, west, east.
pub const CHAOYANG: BBox = BBox {
    south: 23.17,
    north: 23.40,
    west: 116.35,
    east: 116.75,
};

/// A latitude/longitude box.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BBox {
    pub south: f64,
    pub north: f64,
    pub west: f64,
    pub east: f64,
}

impl BBox {
    pub fn contains(&self, lat: f64, lon: f64) -> bool {
        (self.south..=self.north).contains(&lat) && (self.west..=self.east).contains(&lon)
    }
    fn width_km(&self) -> f64 {
        distance_km(self.mid_lat(), self.west, self.mid_lat(), self.east)
    }
    fn height_km(&self) -> f64 {
        distance_km(self.south, self.west, self.north, self.west)
    }
    fn mid_lat(&self) -> f64 {
        (self.south + self.north) / 2.0
    }
}

/// An intersection.
#[derive(Debug, Clone, Copy)]
pub struct Node {
    pub lat: f64,
    pub lon: f64,
}

/// A road from one intersection to a neighbour.
#[derive(Debug, Clone, Copy)]
pub struct Edge {
    pub to: u32,
    pub length_m: f32,
    /// Speed limit, m/s (arterial 60 km/h, local 40 km/h).
    pub limit_mps: f32,
}

/// What to build.
#[derive(Debug, Clone)]
pub struct RoadSpec {
    pub bbox: BBox,
    /// Intersections, about (the grid rounds).
    pub intersections: usize,
    /// Readers, each on its own intersection (at most `intersections`).
    pub readers: usize,
    /// Every this many rows and columns is an arterial road.
    pub arterial_every: usize,
    /// Share of local street segments missing.
    pub missing_streets: f64,
    pub seed: u64,
}

impl RoadSpec {
    /// Chaoyang with `readers` readers and four intersections per reader.
    pub fn chaoyang(readers: usize, seed: u64) -> Self {
        Self {
            bbox: CHAOYANG,
            intersections: (readers * 4).max(16),
            readers,
            arterial_every: 4,
            missing_streets: 0.1,
            seed,
        }
    }
}

/// The road network with its readers.
#[derive(Debug, Clone)]
pub struct RoadNetwork {
    pub bbox: BBox,
    pub nodes: Vec<Node>,
    /// Outgoing roads per node (every road is two-way: it appears at both ends).
    pub edges: Vec<Vec<Edge>>,
    /// The intersections with a reader, by reader index.
    pub reader_nodes: Vec<u32>,
    /// Per node: its reader index, if any.
    pub reader_at: Vec<Option<u32>>,
}

impl RoadNetwork {
    pub fn generate(spec: &RoadSpec) -> Self {
        let mut rng = StdRng::seed_from_u64(spec.seed);
        let b = spec.bbox;
        let (w, h) = (b.width_km(), b.height_km());
        let n = spec.intersections.max(spec.readers).max(4);
        let cols = ((n as f64 * w / h).sqrt().ceil() as usize).max(2);
        let rows = n.div_ceil(cols).max(2);
        let dlat = (b.north - b.south) / rows as f64;
        let dlon = (b.east - b.west) / cols as f64;
        let mut nodes = Vec::with_capacity(rows * cols);
        for r in 0..rows {
            for c in 0..cols {
                // Jitter within the cell, so no two intersections line up exactly.
                let lat = b.south + dlat * (r as f64 + 0.5 + rng.random_range(-0.3..0.3));
                let lon = b.west + dlon * (c as f64 + 0.5 + rng.random_range(-0.3..0.3));
                nodes.push(Node { lat, lon });
            }
        }
        let every = spec.arterial_every.max(1);
        let idx = |r: usize, c: usize| (r * cols + c) as u32;
        let mut edges: Vec<Vec<Edge>> = vec![Vec::new(); nodes.len()];
        let mut add = |a: u32, bn: u32, arterial: bool, nodes: &[Node]| {
            let (na, nb) = (nodes[a as usize], nodes[bn as usize]);
            // Streets are not straight: 10 % longer than the crow flies.
            let length_m = (distance_km(na.lat, na.lon, nb.lat, nb.lon) * 1100.0) as f32;
            let limit_mps = if arterial { 60.0 / 3.6 } else { 40.0 / 3.6 };
            edges[a as usize].push(Edge {
                to: bn,
                length_m,
                limit_mps,
            });
            edges[bn as usize].push(Edge {
                to: a,
                length_m,
                limit_mps,
            });
        };
        for r in 0..rows {
            for c in 0..cols {
                if c + 1 < cols {
                    let arterial = r % every == 0;
                    // Local streets may be missing; arterials (and the grid's edge) never.
                    if arterial || r == rows - 1 || !rng.random_bool(spec.missing_streets) {
                        add(idx(r, c), idx(r, c + 1), arterial, &nodes);
                    }
                }
                if r + 1 < rows {
                    let arterial = c % every == 0;
                    if arterial || c == cols - 1 || !rng.random_bool(spec.missing_streets) {
                        add(idx(r, c), idx(r + 1, c), arterial, &nodes);
                    }
                }
            }
        }
        // Readers: arterial crossings first, then arterial intersections, then the rest.
        let rank = |i: usize| {
            let (r, c) = (i / cols, i % cols);
            match (r % every == 0, c % every == 0) {
                (true, true) => 0,
                (true, false) | (false, true) => 1,
                _ => 2,
            }
        };
        let mut order: Vec<usize> = (0..nodes.len()).collect();
        order.shuffle(&mut rng);
        order.sort_by_key(|&i| rank(i));
        let reader_nodes: Vec<u32> = order
            .into_iter()
            .filter(|&i| !edges[i].is_empty())
            .take(spec.readers)
            .map(|i| i as u32)
            .collect();
        let mut reader_at = vec![None; nodes.len()];
        for (k, &node) in reader_nodes.iter().enumerate() {
            reader_at[node as usize] = Some(k as u32);
        }
        Self {
            bbox: b,
            nodes,
            edges,
            reader_nodes,
            reader_at,
        }
    }

    /// Where reader `k` stands.
    pub fn reader_position(&self, k: usize) -> Node {
        self.nodes[self.reader_nodes[k] as usize]
    }
}

/// Great-circle distance, km (the formula the server's clone rule uses).
pub fn distance_km(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    let (p1, p2) = (lat1.to_radians(), lat2.to_radians());
    let a = ((p2 - p1) / 2.0).sin().powi(2)
        + p1.cos() * p2.cos() * ((lon2 - lon1).to_radians() / 2.0).sin().powi(2);
    2.0 * 6371.0088 * a.sqrt().asin()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_network_over_chaoyang_with_readers_on_distinct_intersections() {
        let net = RoadNetwork::generate(&RoadSpec::chaoyang(1000, 7));
        assert!(net.nodes.len() >= 4000, "{}", net.nodes.len());
        assert!(net.nodes.iter().all(|n| CHAOYANG.contains(n.lat, n.lon)));
        assert_eq!(net.reader_nodes.len(), 1000);
        let mut seen = std::collections::HashSet::new();
        assert!(net.reader_nodes.iter().all(|n| seen.insert(*n)));
        // Roads are two-way and every intersection with a reader has a road.
        for (a, out) in net.edges.iter().enumerate() {
            for e in out {
                assert!(net.edges[e.to as usize].iter().any(|b| b.to as usize == a));
                assert!(e.length_m > 50.0 && e.length_m < 2000.0, "{}", e.length_m);
            }
        }
        assert!(
            net.reader_nodes
                .iter()
                .all(|&n| !net.edges[n as usize].is_empty())
        );
        // Readers are about a kilometre apart: the clone rule's 1 km floor matters.
        let (a, b) = (net.reader_position(0), net.reader_position(1));
        assert!(distance_km(a.lat, a.lon, b.lat, b.lon) > 0.3);
    }

    #[test]
    fn the_same_seed_builds_the_same_town() {
        let a = RoadNetwork::generate(&RoadSpec::chaoyang(50, 3));
        let b = RoadNetwork::generate(&RoadSpec::chaoyang(50, 3));
        assert_eq!(a.reader_nodes, b.reader_nodes);
        assert_eq!(a.nodes[17].lat, b.nodes[17].lat);
    }
}
