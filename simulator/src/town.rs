//! A small town provisioned through the real Admin and Registry APIs: readers on a grid over
//! part of Chaoyang, two patrol zones (west and east halves), a unit for each, a kiosk, and
//! registered bikes with valid synthetic owners.

use anyhow::Context;
use greenplate_proto::v1::{
    AddKioskRequest, AddPatrolUnitRequest, AddZoneRequest, BikeDetails, Owner, RegisterBikeRequest,
};
use tonic::transport::Channel;

use crate::clients;

/// The town's bounding box (part of Chaoyang district, Shantou).
pub const SOUTH: f64 = 23.20;
pub const NORTH: f64 = 23.32;
pub const WEST: f64 = 116.50;
pub const EAST: f64 = 116.66;

/// The PIN every simulated owner chooses.
pub const PIN: &str = "2468";

/// What to build.
#[derive(Debug, Clone)]
pub struct TownSpec {
    /// Prefix of every id, so a town can be provisioned again next to an earlier one.
    pub prefix: String,
    pub readers: usize,
    pub bikes: usize,
}

#[derive(Debug, Clone)]
pub struct ReaderCreds {
    pub id: String,
    pub secret: String,
    pub lat: f64,
    pub lon: f64,
}

#[derive(Debug, Clone)]
pub struct UnitCreds {
    pub id: String,
    pub token: String,
    /// The zone's west and east longitudes.
    pub lon_range: (f64, f64),
}

#[derive(Debug, Clone)]
pub struct BikeInfo {
    pub tag_id: String,
    pub plate: String,
}

/// Everything provisioned, with the credentials the APIs returned.
#[derive(Debug, Clone)]
pub struct Town {
    pub readers: Vec<ReaderCreds>,
    pub units: Vec<UnitCreds>,
    pub kiosk_token: String,
    pub bikes: Vec<BikeInfo>,
}

impl Town {
    /// The unit whose zone covers a longitude.
    pub fn unit_covering(&self, lon: f64) -> Option<&UnitCreds> {
        self.units
            .iter()
            .find(|u| lon >= u.lon_range.0 && lon < u.lon_range.1)
    }
}

fn square(west: f64, east: f64) -> String {
    format!(
        r#"{{"type":"Polygon","coordinates":[[[{west},{SOUTH}],[{east},{SOUTH}],[{east},{NORTH}],[{west},{NORTH}],[{west},{SOUTH}]]]}}"#
    )
}

/// Provisions the town.
pub async fn provision(
    channel: Channel,
    admin_token: &str,
    spec: &TownSpec,
) -> anyhow::Result<Town> {
    let mut admin = clients::admin(channel.clone(), admin_token)?;
    let p = &spec.prefix;
    let mid = (WEST + EAST) / 2.0;
    let mut units = Vec::new();
    for (name, west, east) in [("west", WEST, mid), ("east", mid, EAST)] {
        let zone_id = format!("{p}zone-{name}");
        admin
            .add_zone(AddZoneRequest {
                zone_id: zone_id.clone(),
                name: format!("Chaoyang {name}"),
                geojson: square(west, east),
                ..Default::default()
            })
            .await
            .with_context(|| format!("AddZone {zone_id}"))?;
        let unit_id = format!("{p}patrol-{name}");
        let token = admin
            .add_patrol_unit(AddPatrolUnitRequest {
                unit_id: unit_id.clone(),
                name: format!("Patrol {name}"),
                zone_ids: vec![zone_id],
                ..Default::default()
            })
            .await
            .with_context(|| format!("AddPatrolUnit {unit_id}"))?
            .into_inner()
            .token;
        units.push(UnitCreds {
            id: unit_id,
            token,
            lon_range: (west, east),
        });
    }

    let cols = (spec.readers as f64).sqrt().ceil().max(1.0) as usize;
    let rows = spec.readers.div_ceil(cols);
    let mut readers = Vec::with_capacity(spec.readers);
    for i in 0..spec.readers {
        let (r, c) = (i / cols, i % cols);
        let lat = SOUTH + (NORTH - SOUTH) * (r as f64 + 0.5) / rows as f64;
        let lon = WEST + (EAST - WEST) * (c as f64 + 0.5) / cols as f64;
        let id = format!("{p}rd-{i:04}");
        let secret =
            crate::clients::add_reader(&mut admin, &id, format!("Intersection {i}"), lat, lon)
                .await?;
        readers.push(ReaderCreds {
            id,
            secret,
            lat,
            lon,
        });
    }

    let kiosk_token = admin
        .add_kiosk(AddKioskRequest {
            kiosk_id: format!("{p}kiosk-1"),
            name: "Town hall kiosk".into(),
            ..Default::default()
        })
        .await
        .context("AddKiosk")?
        .into_inner()
        .token;

    let mut registry = clients::registry(channel, &kiosk_token)?;
    let run = seed_of(p);
    let mut bikes = Vec::with_capacity(spec.bikes);
    for i in 0..spec.bikes {
        let bike = BikeInfo {
            tag_id: tag_id(run, i as u64),
            plate: plate(run, i as u64),
        };
        registry
            .register_bike(RegisterBikeRequest {
                tag_id: bike.tag_id.clone(),
                plate: bike.plate.clone(),
                owner: Some(Owner {
                    name: format!("车主{i}"),
                    id_number: resident_id(run, i as u64),
                    phone: format!("138{:08}", (run * 7919 + i as u64) % 100_000_000),
                }),
                bike: Some(BikeDetails {
                    make: "Yadea".into(),
                    model: "G5".into(),
                    color: ["green", "white", "black", "red"][i % 4].into(),
                    frame_number: format!("LYDG5{run:04}{i:07}"),
                }),
                request_id: format!("{p}reg-{i}"),
                pin: PIN.into(),
            })
            .await
            .with_context(|| format!("RegisterBike {}", bike.plate))?;
        bikes.push(bike);
    }
    Ok(Town {
        readers,
        units,
        kiosk_token,
        bikes,
    })
}

/// Writes a CSV of `rows` synthetic registrations (bike i: `tag_id(run, i)`,
/// `plate(run, i)`) for `greenplate registry import`. Most owners have one bike; every
/// tenth owner has two.
pub fn write_import_csv(path: &std::path::Path, rows: u64, run: u64) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    writeln!(
        out,
        "tag_id,plate,owner_name,owner_id_number,owner_phone,make,model,color,frame_number"
    )?;
    for i in 0..rows {
        let owner = if i % 10 == 9 { i - 1 } else { i };
        writeln!(
            out,
            "{},{},车主{owner},{},138{:08},Yadea,G5,{},IMP{run:04}{i:09}",
            tag_id(run, i),
            plate(run, i),
            resident_id(run, owner),
            owner % 100_000_000,
            ["green", "white", "black", "red"][(i % 4) as usize],
        )?;
    }
    out.flush()
}

fn seed_of(prefix: &str) -> u64 {
    prefix
        .bytes()
        .fold(17u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64))
        % 4096
}

/// An EPC-96 tag id: a fixed header, the run, then the bike number.
pub fn tag_id(run: u64, i: u64) -> String {
    format!("E2801160{:04X}{:012X}", run & 0xFFFF, i)
}

/// A plate: district characters, a letter, five digits, unique per (run, i) for i < 26*100000/…
pub fn plate(run: u64, i: u64) -> String {
    let letters = b"ABCDEFGHJKLMNPQRSTUVWXYZ";
    let n = run * 1_000_000 + i;
    let l1 = letters[(n / 100_000 % 24) as usize] as char;
    let l2 = letters[(n / 2_400_000 % 24) as usize] as char;
    format!("潮阳{l2}{l1}{:05}", n % 100_000)
}

/// A valid 18-character resident ID number (GB 11643) for a synthetic owner.
pub fn resident_id(run: u64, i: u64) -> String {
    // Mixed radix over (birth year, month, day, sequence): distinct for 13.4 M numbers.
    let n = (run * 1_000_000 + i) % 13_440_000;
    let d = n / 1000;
    let body = format!(
        "440513{:04}{:02}{:02}{:03}",
        1960 + d / 336 % 40,
        1 + d / 28 % 12,
        1 + d % 28,
        n % 1000
    );
    const WEIGHTS: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
    let sum: u32 = body
        .bytes()
        .zip(WEIGHTS)
        .map(|(b, w)| u32::from(b - b'0') * w)
        .sum();
    let check = b"10X98765432"[(sum % 11) as usize] as char;
    format!("{body}{check}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_ids_are_well_formed_and_distinct() {
        let mut plates = std::collections::HashSet::new();
        let mut ids = std::collections::HashSet::new();
        for i in 0..250_000 {
            assert_eq!(tag_id(3, i).len(), 24);
            assert_eq!(resident_id(3, i).len(), 18);
            assert!(plates.insert(plate(3, i)));
            assert!(ids.insert(resident_id(3, i)));
        }
    }
}
