//! The companion search (伴随, issue #17) on a district-sized day of passes: 210,000 bikes
//! riding 4 trips a day past 8 readers each (6.7 million passes) over 1,000 readers on a
//! 40 x 25 grid, and 20 subject bikes with a companion riding one trip alongside 10 s
//! behind. Times `Command.Companions`' query (`Alerting::companions`, audit included) for
//! each subject over the whole day, on SQLite and, with GREENPLATE_BENCH_PG set to an empty
//! database, on PostgreSQL. Checks each search finds its companion.
//!
//! Run: `cargo bench -p greenplate-benches --bench companions`
//! (GREENPLATE_BENCH_BIKES, default 210000, scales it down.)

use std::sync::Arc;
use std::time::{Duration, Instant};

use greenplate_alerting::investigate::CompanionQuery;
use greenplate_alerting::{Alerting, History, Pass, RoutingConfig};
use greenplate_registry::{BikeKey, Caller, Db, Registry, Role, SecretBox, TagId};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const READERS: usize = 1000;
const COLS: usize = 40;
const TRIPS: usize = 4;
const STOPS: usize = 8;
const SUBJECTS: usize = 20;
/// 2026-12-01 00:00 UTC+8.
const DAY: i64 = 1_764_518_400_000;

fn tag(bike: usize) -> TagId {
    TagId::parse(&format!("E2801160600000{bike:010X}")).unwrap()
}

fn reader_id(r: usize) -> Arc<str> {
    format!("rd-{r:04}").into()
}

/// A neighbour on the grid (a random walk along the roads).
fn step(r: usize, rng: &mut StdRng) -> usize {
    let (row, col) = (r / COLS, r % COLS);
    let rows = READERS / COLS;
    let (row, col) = match rng.random_range(0..4) {
        0 if row > 0 => (row - 1, col),
        1 if row + 1 < rows => (row + 1, col),
        2 if col > 0 => (row, col - 1),
        _ if col + 1 < COLS => (row, col + 1),
        _ => (row, col.saturating_sub(1)),
    };
    row * COLS + col
}

/// One trip: STOPS readers, 60-120 s apart, from `start` at reader `from`.
fn trip(bike: usize, from: usize, start: i64, rng: &mut StdRng) -> Vec<Pass> {
    let mut out = Vec::with_capacity(STOPS);
    let (mut r, mut t) = (from, start);
    for _ in 0..STOPS {
        out.push(Pass {
            tag: tag(bike),
            reader_id: reader_id(r),
            first_seen_ms: t,
            last_seen_ms: t + 5_000,
            reads: 3,
            peak_rssi_dbm: -55,
        });
        r = step(r, rng);
        t += rng.random_range(60_000..120_000);
    }
    out
}

/// Writes the day into `history`; returns how many passes.
async fn day(history: &History, bikes: usize) -> usize {
    let mut rng = StdRng::seed_from_u64(17);
    let mut batch = Vec::with_capacity(60_000);
    let mut total = 0;
    let started = Instant::now();
    for bike in 0..bikes {
        let home = rng.random_range(0..READERS);
        for k in 0..TRIPS {
            // Trips between 06:00 and 22:00.
            let start = DAY + rng.random_range(6 * 3_600_000..22 * 3_600_000);
            let passes = trip(bike, home, start, &mut rng);
            // The first subjects' companions ride their first trip 10 s behind.
            if bike < SUBJECTS && k == 0 {
                for p in &passes {
                    batch.push(Pass {
                        tag: tag(bikes + bike),
                        first_seen_ms: p.first_seen_ms + 10_000,
                        last_seen_ms: p.last_seen_ms + 10_000,
                        ..p.clone()
                    });
                }
            }
            batch.extend(passes);
        }
        if batch.len() >= 50_000 {
            total += batch.len();
            history.append(&batch).await.unwrap();
            batch.clear();
        }
    }
    total += batch.len();
    history.append(&batch).await.unwrap();
    eprintln!(
        "  wrote {total} passes in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    total
}

async fn run(name: &str, url: &str, bikes: usize) {
    eprintln!("{name}: {url}");
    let db = Db::connect(url).await.unwrap();
    let registry = Registry::open(db, SecretBox::new(&[7; 32]), "bench-admin")
        .await
        .unwrap();
    let alerting = Alerting::open(registry, RoutingConfig::default())
        .await
        .unwrap();
    let passes = day(alerting.history(), bikes).await;
    let caller = Caller {
        role: Role::Admin,
        id: "admin".into(),
    };
    let mut times = Vec::new();
    for subject in 0..SUBJECTS {
        let query = CompanionQuery {
            subject: BikeKey::Tag(tag(subject).to_string()),
            from_ms: DAY,
            to_ms: DAY + 24 * 3_600_000 - 1,
            delta_ms: 60_000,
            min_readers: 3,
            limit: 100,
        };
        let started = Instant::now();
        let (found, searched) = alerting.companions(&caller, &query, "bench").await.unwrap();
        times.push(started.elapsed());
        assert_eq!(searched, TRIPS * STOPS);
        let companion = tag(bikes + subject).to_string();
        assert!(
            found.iter().any(|c| c.tag_id == companion),
            "subject {subject}: companion not found in {found:?}"
        );
    }
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "companions/{name}: {passes} passes, {SUBJECTS} searches over 24 h: \
         median {:.1} ms, max {:.1} ms (each found its companion)",
        ms(times[times.len() / 2]),
        ms(*times.last().unwrap())
    );
}

fn main() {
    let bikes: usize = std::env::var("GREENPLATE_BENCH_BIKES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(210_000);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let url = Db::sqlite_url(&dir.path().join("companions.db"));
        run("sqlite", &url, bikes).await;
        if let Ok(url) = std::env::var("GREENPLATE_BENCH_PG") {
            run("postgres", &url, bikes).await;
        }
    });
}
