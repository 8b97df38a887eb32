//! Micro-benchmarks of the ingest hot path: opening a sealed batch, decoding sightings,
//! and hot-index lookups at district size (210,000 tags).
//!
//! Run: `cargo bench -p greenplate-benches --bench hot_path`

use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
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
    let mut seq = 0;
    g.bench_function("open_sealed_batch_of_50", |b| {
        b.iter_batched(
            || {
                seq += 1;
                key.seal(&batch(seq)).encode_to_vec()
            },
            |payload| open::open(&readers, topic.as_bytes(), black_box(&payload)).unwrap(),
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

criterion_group!(benches, bench_open, bench_index);
criterion_main!(benches);
