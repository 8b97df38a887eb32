//! Micro-benchmarks of the ingest hot path: opening a sealed batch, decoding sightings,
//! hot-index lookups at district size (210,000 tags), smoothing reads into passes, and the
//! whole per-read path of a pipeline worker (decode, lookup, smooth, clone watch, rule
//! check) on traffic from 1,000 readers.
//!
//! Run: `cargo bench -p greenplate-benches --bench hot_path`

use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use std::sync::Arc;

use greenplate_alerting::{CloneConfig, CloneWatch, Sighted};
use greenplate_ingest::pipeline::smooth::{Folded, SmoothConfig, Smoother};
use greenplate_ingest::pipeline::{decode, open};
use greenplate_proto::seal::ReaderKey;
use greenplate_proto::topics;
use greenplate_proto::v1::{Sighting, SightingBatch};
use greenplate_registry::{HotIndex, Reader, Readers, TagId, TagState};
use prost::Message;

const TAGS: u64 = 210_000;
const BATCH: usize = 50;

fn tag(i: u64) -> String {
    format!("E2801160{:016X}", i)
}

fn batch(seq: u64) -> SightingBatch {
    let now = 1_700_000_000_000;
    SightingBatch {
        reader_id: "rd-0001".into(),
        seq,
        sent_at_ms: now,
        sightings: (0..BATCH as u64)
            .map(|i| Sighting {
                tag_id: tag(i * 4111 % TAGS),
                first_seen_ms: now - 200,
                last_seen_ms: now,
                read_count: 4,
                peak_rssi_dbm: -50,
                antenna: 1,
            })
            .collect(),
    }
}

fn bench_open(c: &mut Criterion) {
    let readers = Readers::default();
    readers.insert(Reader::new(
        "rd-0001".into(),
        "R".into(),
        23.3,
        116.6,
        "secret",
    ));
    let key = ReaderKey::derive("secret");
    let topic = topics::sightings("rd-0001");
    let mut g = c.benchmark_group("open");
    g.throughput(Throughput::Elements(BATCH as u64));
    let admissions = open::Admissions::default();
    let mut seq = 0;
    g.bench_function("open_sealed_batch_of_50", |b| {
        b.iter_batched(
            || {
                seq += 1;
                key.seal(&batch(seq)).encode_to_vec()
            },
            |payload| {
                open::open(&readers, &admissions, topic.as_bytes(), black_box(&payload)).unwrap()
            },
            BatchSize::SmallInput,
        )
    });
    let b50 = batch(1);
    g.bench_function("decode_50_sightings", |b| {
        b.iter(|| {
            for s in &b50.sightings {
                black_box(decode::decode(s, 1_700_000_000_000, 86_400_000).unwrap());
            }
        })
    });
    g.finish();
}

fn bench_index(c: &mut Criterion) {
    let mut g = c.benchmark_group("hot_index");
    g.throughput(Throughput::Elements(1));
    for (label, n) in [("210k", 210_000u64), ("10M", 10_000_000)] {
        let index = HotIndex::default();
        let tags: Vec<TagId> = (0..n).map(|i| TagId::parse(&tag(i)).unwrap()).collect();
        for (i, t) in tags.iter().enumerate() {
            index.set(*t, TagState::new(i as i64));
        }
        eprintln!(
            "hot_index {label}: {} tags, {} bytes, {:.1} bytes per tag",
            index.len(),
            index.memory_bytes(),
            index.memory_bytes() as f64 / index.len() as f64
        );
        let mut i = 0usize;
        g.bench_function(format!("lookup_hit_{label}"), |b| {
            b.iter(|| {
                i = (i + 7919) % tags.len();
                black_box(index.lookup(tags[i]))
            })
        });
        let absent: Vec<TagId> = (0..65_536u64)
            .map(|j| TagId::parse(&format!("FFFFFFFF{:016X}", j * 7919)).unwrap())
            .collect();
        let mut j = 0usize;
        g.bench_function(format!("lookup_miss_{label}"), |b| {
            b.iter(|| {
                j = (j + 1) & 65_535;
                black_box(index.lookup(absent[j]))
            })
        });
    }
    g.bench_function("parse_tag_id", |b| {
        b.iter(|| black_box(TagId::parse(black_box("e2801160600002070000abcd"))))
    });
    g.finish();
}

fn smoother() -> Smoother {
    Smoother::new(SmoothConfig {
        gap_ms: 5_000,
        max_open: 1_000_000,
    })
}

fn bench_smooth(c: &mut Criterion) {
    let reader = Arc::new(Reader::new("rd-0".into(), "R".into(), 23.3, 116.6, "s"));
    let read = |t: u64, at: i64| decode::Read {
        tag: TagId::parse(&tag(t)).unwrap(),
        first_seen_ms: at,
        last_seen_ms: at,
        reads: 2,
        peak_rssi_dbm: -50,
    };
    let mut g = c.benchmark_group("smooth");
    g.throughput(Throughput::Elements(1));
    // A tag lingering in front of the reader: every read extends its open pass.
    let mut s = smoother();
    let mut closed = Vec::new();
    let mut one = read(1, 1_700_000_000_000);
    s.observe(&reader, &one, one.first_seen_ms, &mut closed);
    g.bench_function("extend_open_pass", |b| {
        b.iter(|| {
            one.first_seen_ms += 1;
            one.last_seen_ms += 1;
            black_box(s.observe(&reader, black_box(&one), one.first_seen_ms, &mut closed))
        })
    });
    // 10,000 tags coming back after the gap: every read closes a pass and opens one.
    let mut s = smoother();
    let tags: Vec<decode::Read> = (0..10_000).map(|t| read(t, 0)).collect();
    let mut i = 0usize;
    let mut round = 0i64;
    g.bench_function("close_and_open_pass", |b| {
        b.iter(|| {
            i += 1;
            if i == tags.len() {
                i = 0;
                round += 1;
                closed.clear();
            }
            let mut r = tags[i];
            r.first_seen_ms = round * 10_000;
            r.last_seen_ms = r.first_seen_ms;
            black_box(s.observe(&reader, &r, r.first_seen_ms, &mut closed))
        })
    });
    g.finish();
}

/// One worker's work per read, as `pipeline::handle` does it after the batch opened.
fn bench_per_read(c: &mut Criterion) {
    let index = HotIndex::default();
    for i in 0..TAGS {
        index.set(TagId::parse(&tag(i)).unwrap(), TagState::new(i as i64));
    }
    let readers: Vec<Arc<Reader>> = (0..1000)
        .map(|i| {
            Arc::new(Reader::new(
                format!("rd-{i}"),
                "R".into(),
                23.17 + (i / 32) as f64 * 0.007,
                116.35 + (i % 32) as f64 * 0.0125,
                "s",
            ))
        })
        .collect();
    let clones = CloneWatch::new(CloneConfig::default());
    let mut smooth = smoother();
    let mut closed = Vec::new();
    let now = 1_700_000_000_000i64;
    // Batches of 50 sightings; reader r sees tags r*50.. at each round, 10 s apart, so every
    // read opens a pass (the rules' case) and closes the one before.
    let batches: Vec<SightingBatch> = (0..1000u64)
        .map(|r| SightingBatch {
            reader_id: format!("rd-{r}"),
            seq: 1,
            sent_at_ms: now,
            sightings: (0..BATCH as u64)
                .map(|i| Sighting {
                    tag_id: tag((r * 50 + i) % TAGS),
                    first_seen_ms: now,
                    last_seen_ms: now,
                    read_count: 3,
                    peak_rssi_dbm: -55,
                    antenna: 1,
                })
                .collect(),
        })
        .collect();
    let mut g = c.benchmark_group("per_read");
    g.throughput(Throughput::Elements(BATCH as u64));
    let (mut r, mut round) = (0usize, 0i64);
    g.bench_function("decode_lookup_smooth_clone_rules_batch_of_50", |b| {
        b.iter(|| {
            r += 1;
            if r == readers.len() {
                r = 0;
                round += 1;
                closed.clear();
            }
            let reader = &readers[r];
            let at = now + round * 10_000;
            let mut flagged = 0;
            for s in &batches[r].sightings {
                let mut read = decode::decode(s, now, i64::MAX / 4).unwrap();
                read.first_seen_ms = at;
                read.last_seen_ms = at;
                let Some(state) = index.lookup(read.tag) else {
                    continue;
                };
                let folded = smooth.observe(reader, &read, at, &mut closed);
                let clone = clones.observe(read.tag, reader, read.first_seen_ms);
                if folded == Folded::Opened && (Sighted::flagged(state) || clone.is_some()) {
                    flagged += 1;
                }
            }
            black_box(flagged)
        })
    });
    g.finish();
}

criterion_group!(
    benches,
    bench_open,
    bench_index,
    bench_smooth,
    bench_per_read
);
criterion_main!(benches);
