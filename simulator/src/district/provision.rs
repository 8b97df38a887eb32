//! Provisioning through the Admin API: a patrol zone with its unit over each sector of the
//! district and a command center, every reader on its intersection (and the garbage reader),
//! a kiosk, and the armed bikes registered through the Registry API with their owner's PIN.
//! Without a server (a bare broker), the readers only get random secrets.

use anyhow::Context;
use futures::StreamExt;
use greenplate_proto::v1::registry_client::RegistryClient;
use greenplate_proto::v1::{
    AddKioskRequest, AddPatrolUnitRequest, AddZoneRequest, BikeDetails, Owner, RegisterBikeRequest,
    SetArmedRequest,
};
use tonic::transport::Channel;

use super::{DistrictSpec, Target};
use crate::clients::{self, Authed};
use crate::reader::now_ms;
use crate::roads::RoadNetwork;
use crate::town;

/// What provisioning made.
pub(super) struct Provisioned {
    /// A patrol unit per zone, (unit id, token), zones row by row from the south-west.
    pub(super) units: Vec<(String, String)>,
    /// The command center, (unit id, token).
    pub(super) command: Option<(String, String)>,
    /// Each reader's secret, by reader index.
    pub(super) secrets: Vec<String>,
    pub(super) garbage_secret: String,
    /// The district's kiosk, which reports the thefts.
    pub(super) kiosk: Option<RegistryClient<Authed>>,
    /// The armed bikes' tags.
    pub(super) armed_tags: Vec<String>,
}

/// Provisions the district on the server behind `channel` (`None`: a bare broker).
pub(super) async fn provision(
    channel: &Option<Channel>,
    target: &Target,
    spec: &DistrictSpec,
    net: &RoadNetwork,
    positions: &[(f64, f64)],
    reader_ids: &[String],
    garbage_id: &str,
) -> anyhow::Result<Provisioned> {
    let p = &spec.prefix;
    let mut units = Vec::new();
    let mut command = None;
    let mut secrets = vec![String::new(); spec.readers];
    let mut garbage_secret = String::new();
    let mut kiosk = None;
    let mut armed_tags = Vec::new();
    if let Some(channel) = &channel {
        let mut admin = clients::admin(channel.clone(), &target.admin_token)?;
        let (nx, ny) = (spec.zones.0.max(1), spec.zones.1.max(1));
        let b = net.bbox;
        for zy in 0..ny {
            for zx in 0..nx {
                let (w, e) = (
                    b.west + (b.east - b.west) * zx as f64 / nx as f64,
                    b.west + (b.east - b.west) * (zx + 1) as f64 / nx as f64,
                );
                let (s, n) = (
                    b.south + (b.north - b.south) * zy as f64 / ny as f64,
                    b.south + (b.north - b.south) * (zy + 1) as f64 / ny as f64,
                );
                let zone_id = format!("{p}zone-{zx}-{zy}");
                admin
                    .add_zone(AddZoneRequest {
                        zone_id: zone_id.clone(),
                        name: format!("Chaoyang sector {zx}-{zy}"),
                        geojson: format!(
                            r#"{{"type":"Polygon","coordinates":[[[{w},{s}],[{e},{s}],[{e},{n}],[{w},{n}],[{w},{s}]]]}}"#
                        ),
                        ..Default::default()
                    })
                    .await
                    .with_context(|| format!("AddZone {zone_id}"))?;
                let unit_id = format!("{p}unit-{zx}-{zy}");
                let token = admin
                    .add_patrol_unit(AddPatrolUnitRequest {
                        unit_id: unit_id.clone(),
                        name: format!("Patrol {zx}-{zy}"),
                        zone_ids: vec![zone_id],
                        command_center: false,
                        canary: false,
                        ..Default::default()
                    })
                    .await
                    .with_context(|| format!("AddPatrolUnit {unit_id}"))?
                    .into_inner()
                    .token;
                units.push((unit_id, token));
            }
        }
        let cc = format!("{p}command");
        let token = admin
            .add_patrol_unit(AddPatrolUnitRequest {
                unit_id: cc.clone(),
                name: "Command center".into(),
                zone_ids: vec![],
                command_center: true,
                canary: false,
                ..Default::default()
            })
            .await
            .context("AddPatrolUnit (command center)")?
            .into_inner()
            .token;
        command = Some((cc, token));

        // Readers, sixteen calls at a time.
        let mut wanted: Vec<(usize, String, f64, f64)> = reader_ids
            .iter()
            .enumerate()
            .map(|(k, id)| (k, id.clone(), positions[k].0, positions[k].1))
            .collect();
        if spec.garbage.is_some() {
            wanted.push((
                usize::MAX,
                garbage_id.to_owned(),
                b.south + 0.001,
                b.west + 0.001,
            ));
        }
        let results: Vec<anyhow::Result<(usize, String)>> = futures::stream::iter(wanted)
            .map(|(k, id, lat, lon)| {
                let mut admin = admin.clone();
                async move {
                    let name = format!("Intersection {id}");
                    let secret = clients::add_reader(&mut admin, &id, name, lat, lon).await?;
                    Ok((k, secret))
                }
            })
            .buffer_unordered(16)
            .collect()
            .await;
        for r in results {
            let (k, secret) = r?;
            if k == usize::MAX {
                garbage_secret = secret;
            } else {
                secrets[k] = secret;
            }
        }

        let kiosk_token = admin
            .add_kiosk(AddKioskRequest {
                kiosk_id: format!("{p}kiosk"),
                name: "District kiosk".into(),
                ..Default::default()
            })
            .await
            .context("AddKiosk")?
            .into_inner()
            .token;
        let mut registry = clients::registry(channel.clone(), &kiosk_token)?;
        // Armed bikes: registered here, through the Registry API, with their owner's PIN.
        let nonce = (now_ms() / 1000 % 4000) as u64;
        for j in 0..spec.armed {
            let i = 500_000 + nonce * 10 + j as u64;
            let (tag, plate) = (town::tag_id(spec.run, i), town::plate(spec.run, i));
            registry
                .register_bike(RegisterBikeRequest {
                    tag_id: tag.clone(),
                    plate: plate.clone(),
                    owner: Some(Owner {
                        name: format!("车主A{j}"),
                        id_number: town::resident_id(spec.run + 7, i),
                        phone: format!("137{:08}", i % 100_000_000),
                    }),
                    bike: Some(BikeDetails {
                        make: "Yadea".into(),
                        model: "DE2".into(),
                        color: "green".into(),
                        frame_number: format!("ARM{:04}{i:09}", spec.run),
                    }),
                    request_id: format!("{p}armed-{j}"),
                    pin: town::PIN.into(),
                })
                .await
                .with_context(|| format!("RegisterBike {plate}"))?;
            registry
                .set_armed(SetArmedRequest {
                    plate: plate.clone(),
                    pin: town::PIN.into(),
                    armed: true,
                })
                .await
                .with_context(|| format!("SetArmed {plate}"))?;
            armed_tags.push(tag);
        }
        kiosk = Some(registry);
    } else {
        for s in &mut secrets {
            *s = hex::encode(rand::random::<[u8; 16]>());
        }
        garbage_secret = hex::encode(rand::random::<[u8; 16]>());
    }
    Ok(Provisioned {
        units,
        command,
        secrets,
        garbage_secret,
        kiosk,
        armed_tags,
    })
}
