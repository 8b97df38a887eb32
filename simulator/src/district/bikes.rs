//! The district's bikes: every registered bike's tag, the scenario bikes among them (stolen,
//! armed, the cloned tag and its twin) with their flags, which bikes ride the roads and the
//! [`Traffic`] that moves them; then the thefts reported and the scenario bikes set off.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::Context;
use greenplate_proto::v1::ReportStolenRequest;
use greenplate_proto::v1::registry_client::RegistryClient;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{DistrictSpec, TrafficMode};
use crate::clients::Authed;
use crate::reader::now_ms;
use crate::roads::RoadNetwork;
use crate::scenarios::Flags;
use crate::town;
use crate::traffic::{Traffic, TrafficSpec};

/// Who rides, and as what. A bike has a tag index (into `tags`) and, if it rides the roads, a
/// traffic index (into `road_tags`).
pub(super) struct Bikes {
    /// Tag ids by tag index: the imported bikes', then the armed ones'.
    pub(super) tags: Vec<String>,
    /// The scenario bikes' flags, by tag index.
    pub(super) flags: HashMap<u32, Flags>,
    /// The cloned tag.
    pub(super) clone_tag: u32,
    /// Bikes on the roads: traffic index -> tag index.
    pub(super) road_tags: Vec<u32>,
    /// The first armed bike's traffic index (the armed bikes follow it).
    pub(super) first_armed_bike: u32,
    /// The traffic index of the bike carrying the cloned tag's twin.
    pub(super) twin_bike: u32,
    /// Stress: the registered bikes each reader reports, by reader.
    pub(super) locals: Vec<Vec<u32>>,
    pub(super) traffic: Traffic,
    /// The readers at the district's west and east ends, where the clone's carriers ride.
    pub(super) west_end: Option<usize>,
    pub(super) east_end: Option<usize>,
    /// The clone's carriers: traffic index -> which carrier.
    pub(super) carriers: HashMap<u32, usize>,
}

impl Bikes {
    pub(super) fn new(
        spec: &DistrictSpec,
        net: &Arc<RoadNetwork>,
        positions: &[(f64, f64)],
        armed_tags: &[String],
        scenario_tags: usize,
    ) -> Self {
        // Tags: the imported ones, then the armed ones registered above.
        let mut tags: Vec<String> = (0..spec.bikes as u64)
            .map(|i| town::tag_id(spec.run, i))
            .collect();
        let armed_base = tags.len() as u32;
        tags.extend(armed_tags.iter().cloned());
        let mut flags: HashMap<u32, Flags> = HashMap::new();
        let clone_tag = spec.thefts as u32;
        // Bikes on the roads (traffic index -> tag index).
        let mut road_tags: Vec<u32> = match spec.traffic {
            TrafficMode::Roads => (0..spec.bikes as u32).collect(),
            TrafficMode::Stress { .. } => (0..scenario_tags as u32).collect(),
        };
        let first_armed_bike = road_tags.len() as u32;
        road_tags.extend((0..armed_tags.len() as u32).map(|j| armed_base + j));
        for j in 0..armed_tags.len() as u32 {
            flags.insert(
                armed_base + j,
                Flags {
                    armed: true,
                    ..Flags::default()
                },
            );
        }
        let twin_bike = road_tags.len() as u32;
        if spec.clone {
            road_tags.push(clone_tag);
            flags.insert(
                clone_tag,
                Flags {
                    cloned: true,
                    ..Flags::default()
                },
            );
        }
        // Stress: every other registered bike belongs to one reader.
        let mut locals: Vec<Vec<u32>> = vec![Vec::new(); spec.readers];
        if let TrafficMode::Stress { .. } = spec.traffic {
            for i in scenario_tags..spec.bikes {
                locals[i % spec.readers].push(i as u32);
            }
        }
        let mut traffic = Traffic::new(
            net.clone(),
            TrafficSpec {
                start_hour: spec.start_hour,
                day_seconds: spec.day_seconds,
                ..TrafficSpec::new(road_tags.len(), spec.seed ^ 0x5eed)
            },
            now_ms(),
        );
        if let TrafficMode::Stress { .. } = spec.traffic {
            // Only scenario bikes ride: keep the honest rhythm out of it.
            for b in 0..road_tags.len() as u32 {
                traffic.manage(b);
            }
        }
        for b in (0..spec.thefts as u32).chain(first_armed_bike..road_tags.len() as u32) {
            traffic.manage(b);
        }
        // The clone's carriers ride at the west and the east ends of the district.
        let (mut west_end, mut east_end) = (None, None);
        let carriers: HashMap<u32, usize> = if spec.clone {
            traffic.manage(clone_tag);
            traffic.manage(twin_bike);
            west_end = (0..spec.readers).min_by(|a, b| positions[*a].1.total_cmp(&positions[*b].1));
            east_end = (0..spec.readers).max_by(|a, b| positions[*a].1.total_cmp(&positions[*b].1));
            HashMap::from([(clone_tag, 0), (twin_bike, 1)])
        } else {
            HashMap::new()
        };
        Bikes {
            tags,
            flags,
            clone_tag,
            road_tags,
            first_armed_bike,
            twin_bike,
            locals,
            traffic,
            west_end,
            east_end,
            carriers,
        }
    }

    /// Thefts: reported through the Registry API (they will be ridden away).
    pub(super) async fn report_thefts(
        &mut self,
        kiosk: &mut Option<RegistryClient<Authed>>,
        spec: &DistrictSpec,
    ) -> anyhow::Result<()> {
        let flags = &mut self.flags;
        if let Some(kiosk) = kiosk {
            for i in 0..spec.thefts as u64 {
                let plate = town::plate(spec.run, i);
                kiosk
                    .report_stolen(ReportStolenRequest {
                        plate: plate.clone(),
                        place: "Simulated street".into(),
                        ..Default::default()
                    })
                    .await
                    .with_context(|| {
                        format!(
                            "ReportStolen {plate} (was the district imported with --run {}?)",
                            spec.run
                        )
                    })?;
                flags.insert(
                    i as u32,
                    Flags {
                        stolen: true,
                        ..Flags::default()
                    },
                );
            }
        }
        Ok(())
    }

    /// With a server, sets each scenario bike off towards a reader; without one, no bike is a
    /// scenario bike.
    pub(super) fn set_off(&mut self, net: &RoadNetwork, spec: &DistrictSpec, live: bool) {
        let (clone_tag, twin_bike, first_armed_bike) =
            (self.clone_tag, self.twin_bike, self.first_armed_bike);
        let (west_end, east_end) = (self.west_end, self.east_end);
        let Bikes {
            flags,
            road_tags,
            traffic,
            ..
        } = self;
        if live {
            // Each scenario bike starts a few metres short of a reader, so it is seen at once.
            let mut pick = StdRng::seed_from_u64(spec.seed ^ 0xb1ce);
            for b in (0..spec.thefts as u32).chain(first_armed_bike..road_tags.len() as u32) {
                if spec.clone && b == twin_bike {
                    continue;
                }
                let k = pick.random_range(0..spec.readers);
                let before = pick.random_range(10.0..60.0);
                traffic.ride_towards(b, net.reader_nodes[k], before, u16::MAX);
            }
            if let (Some(w), Some(e)) = (west_end, east_end) {
                // The clone's carriers: the original next to the west end's reader, the twin
                // further from the east end's, so their passes are seconds apart.
                traffic.ride_towards(clone_tag, net.reader_nodes[w], 10.0, u16::MAX);
                traffic.ride_towards(twin_bike, net.reader_nodes[e], 100.0, u16::MAX);
            }
        } else {
            flags.clear();
        }
    }
}
