//! The drive: every batch interval, the traffic moves; each pass by a reader becomes reads
//! ([`rf`]), folded into one sighting per tag; the oracle says which alerts a scenario
//! sighting owes; each reader's sightings go to its task in messages of at most `batch_max`
//! (a heartbeat when it read nothing for 30 s). Meanwhile the garbage reader floods and one
//! reader loses power, and the progress bar shows what was offered and alerted.

use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use greenplate_proto::v1::{AlertKind, Sighting};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::mpsc;

use super::alerts::{Owed, Tally};
use super::bikes::Bikes;
use super::readers::{Counters, ToReader};
use super::{DistrictSpec, TrafficMode};
use crate::reader::now_ms;
use crate::rf::{self, Read};
use crate::scenarios::{CloneGuard, Oracle};

/// What the drive works with.
pub(super) struct Drive<'a> {
    pub(super) spec: &'a DistrictSpec,
    /// A server is there (not a bare broker): a reader may go offline.
    pub(super) live: bool,
    /// Each reader's (lat, lon).
    pub(super) positions: &'a [(f64, f64)],
    pub(super) reader_ids: &'a [String],
    /// The command center, (unit id, token).
    pub(super) command: &'a Option<(String, String)>,
    /// The units an alert at reader k is owed to.
    pub(super) unit_of_reader: &'a (dyn Fn(usize) -> Vec<String> + Sync),
    pub(super) bikes: &'a mut Bikes,
    pub(super) to_readers: &'a [mpsc::Sender<ToReader>],
    pub(super) garbage_tx: &'a Option<mpsc::Sender<ToReader>>,
    pub(super) tally: &'a Mutex<Tally>,
    pub(super) counters: &'a Counters,
    pub(super) progress: &'a Option<indicatif::ProgressBar>,
    /// The server's processed reads/s, for the progress bar.
    pub(super) live_rate: &'a Mutex<String>,
}

/// When the drive started (Unix ms), how long it took (s), and the simulated hours of day
/// at its start and end.
pub(super) struct Driven {
    pub(super) started_ms: i64,
    pub(super) drive_s: f64,
    pub(super) hour0: f64,
    pub(super) hour1: f64,
}

/// Drives the district for `spec.drive`.
pub(super) async fn drive(d: Drive<'_>) -> Driven {
    let Drive {
        spec,
        live,
        positions,
        reader_ids,
        command,
        unit_of_reader,
        bikes,
        to_readers,
        garbage_tx,
        tally,
        counters,
        progress,
        live_rate,
    } = d;
    let Bikes {
        tags,
        flags,
        road_tags,
        locals,
        traffic,
        carriers,
        ..
    } = bikes;
    let mut rng = StdRng::seed_from_u64(spec.seed ^ 0xfeed);
    let mut oracle = Oracle::new(spec.rules, positions.to_vec());
    let mut guard = CloneGuard::new(1000);
    let mut pending: Vec<Vec<(u32, Read)>> = vec![Vec::new(); spec.readers];
    let mut last_sent = vec![0i64; spec.readers];
    let mut dead = vec![false; spec.readers];
    let mut arrivals = Vec::new();
    let mut ready: Vec<(u32, Read)> = Vec::new();
    let victim = spec.readers / 2;
    let (mut offline_done, mut garbage_done) =
        (!spec.offline_reader || !live, garbage_tx.is_none());
    let started = Instant::now();
    let started_ms = now_ms();
    let hour0 = traffic.hour(started_ms);
    let mut tick = tokio::time::interval(Duration::from_millis(spec.batch_ms.max(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let phase = |k: usize| {
        if spec.spread_readers {
            Duration::from_millis(spec.batch_ms.max(10)) * k as u32 / spec.readers.max(1) as u32
        } else {
            Duration::ZERO
        }
    };
    let mut last_progress = Instant::now();
    let heartbeat_ms = 30_000;
    loop {
        tick.tick().await;
        let elapsed = started.elapsed();
        if elapsed >= spec.drive {
            break;
        }
        let now = now_ms();
        if !garbage_done && elapsed >= spec.drive / 5 {
            garbage_done = true;
            if let (Some(tx), Some((rate, secs))) = (&garbage_tx, spec.garbage) {
                let _ = tx.send(ToReader::Garbage(rate, secs)).await;
            }
        }
        if !offline_done && elapsed >= spec.drive * 2 / 5 {
            offline_done = true;
            dead[victim] = true;
            let owed = command
                .iter()
                .map(|(cc, _)| Owed {
                    units: vec![cc.clone()],
                    kind: AlertKind::ReaderOffline as i32,
                    tag: String::new(),
                    reader: reader_ids[victim].clone(),
                })
                .collect();
            let _ = to_readers[victim].send(ToReader::Kill(owed)).await;
        }
        arrivals.clear();
        traffic.step(now, &mut arrivals);
        for a in &arrivals {
            if dead[a.reader as usize] {
                continue;
            }
            let tag = road_tags[a.bike as usize];
            let reads = rf::pass(&spec.rf, &mut rng, a.at_ms, a.speed_mps);
            let (Some(first), Some(last)) = (reads.first(), reads.last()) else {
                continue;
            };
            if let Some(&who) = carriers.get(&a.bike)
                && !guard.admit(who, first.at_ms, last.at_ms)
            {
                continue;
            }
            pending[a.reader as usize].extend(reads.iter().map(|r| (tag, *r)));
        }
        for k in 0..spec.readers {
            if dead[k] {
                continue;
            }
            ready.clear();
            pending[k].retain(|(tag, r)| {
                if r.at_ms <= now {
                    ready.push((*tag, *r));
                    false
                } else {
                    true
                }
            });
            ready.sort_by_key(|(tag, r)| (*tag, r.at_ms));
            let mut sightings = Vec::new();
            let mut owed = Vec::new();
            let mut i = 0;
            while i < ready.len() {
                let tag = ready[i].0;
                let j = ready[i..]
                    .iter()
                    .position(|(t, _)| *t != tag)
                    .map_or(ready.len(), |n| i + n);
                let reads: Vec<Read> = ready[i..j].iter().map(|(_, r)| *r).collect();
                let s = rf::fold(&tags[tag as usize], &reads);
                if let Some(f) = flags.get(&tag) {
                    for kind in oracle.observe(tag, *f, k as u32, &s) {
                        owed.push(Owed {
                            units: unit_of_reader(k),
                            kind: kind as i32,
                            tag: s.tag_id.clone(),
                            reader: reader_ids[k].clone(),
                        });
                    }
                    // Scenario sightings first: they go in the first message.
                    sightings.insert(0, s);
                } else {
                    sightings.push(s);
                }
                i = j;
            }
            if let TrafficMode::Stress {
                sightings_per_batch,
            } = spec.traffic
                && !locals[k].is_empty()
            {
                for _ in 0..sightings_per_batch {
                    let tag = locals[k][rng.random_range(0..locals[k].len())];
                    let reads = rng.random_range(1..=8u32);
                    sightings.push(Sighting {
                        tag_id: tags[tag as usize].clone(),
                        first_seen_ms: now - rng.random_range(0..spec.batch_ms as i64),
                        last_seen_ms: now,
                        read_count: reads,
                        peak_rssi_dbm: -rng.random_range(42..78),
                        antenna: 1,
                    });
                }
            }
            if sightings.is_empty() && now - last_sent[k] < heartbeat_ms {
                continue;
            }
            last_sent[k] = now;
            let mut chunks: Vec<Vec<Sighting>> = if sightings.is_empty() {
                vec![Vec::new()]
            } else {
                sightings
                    .chunks(spec.batch_max.max(1))
                    .map(<[Sighting]>::to_vec)
                    .collect()
            };
            let first = chunks.remove(0);
            if to_readers[k]
                .send(ToReader::Batch(first, owed, phase(k)))
                .await
                .is_err()
            {
                continue;
            }
            for c in chunks {
                let _ = to_readers[k]
                    .send(ToReader::Batch(c, Vec::new(), Duration::ZERO))
                    .await;
            }
        }
        if let Some(bar) = &progress
            && last_progress.elapsed() >= Duration::from_millis(500)
        {
            last_progress = Instant::now();
            let secs = started.elapsed().as_secs_f64();
            let (exp, rec) = {
                let t = tally.lock().unwrap_or_else(|e| e.into_inner());
                (t.expected, t.received)
            };
            bar.set_position(started.elapsed().as_secs());
            bar.set_message(format!(
                "{:02.0}:{:02.0} {} riding | offered {:.0} reads/s | {} | alerts {rec}/{exp}",
                traffic.hour(now).floor(),
                traffic.hour(now).fract() * 60.0,
                traffic.riding(),
                counters.reads.load(Ordering::Relaxed) as f64 / secs,
                live_rate.lock().unwrap_or_else(|e| e.into_inner()),
            ));
        }
    }
    let drive_s = started.elapsed().as_secs_f64();
    let hour1 = traffic.hour(now_ms());
    Driven {
        started_ms,
        drive_s,
        hour0,
        hour1,
    }
}

pub(super) fn progress_bar(drive: Duration) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(drive.as_secs());
    bar.set_style(
        indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} s {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar
}
