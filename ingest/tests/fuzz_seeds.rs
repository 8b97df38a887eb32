//! The binary seeds of the fuzz targets `open_sealed` and `decode_batch` (`ingest/fuzz`),
//! made with the real sealing code, and a check that the committed ones still do what
//! their names say.
//!
//! After a change to the contract, rewrite them with
//! `cargo test -p greenplate-ingest --test fuzz_seeds -- --ignored`.

use std::path::PathBuf;

use greenplate_ingest::pipeline::open;
use greenplate_proto::seal::ReaderKey;
use greenplate_proto::topics;
use greenplate_proto::v1::{SealedSightingBatch, Sighting, SightingBatch};
use greenplate_registry::{Reader, Readers};
use prost::Message;

/// The reader the `open_sealed` target provisions (keep in step with
/// `ingest/fuzz/fuzz_targets/open_sealed.rs`).
const READER_ID: &str = "rd-fuzz";
const SECRET: &str = "fuzz-secret-not-for-production";

/// 2023-11-14T22:13:20Z, the `now` of the `decode_batch` target.
const NOW_MS: i64 = 1_700_000_000_000;

fn corpus(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

fn sighting(tag: &str, first: i64, last: i64) -> Sighting {
    Sighting {
        tag_id: tag.into(),
        first_seen_ms: first,
        last_seen_ms: last,
        read_count: 3,
        peak_rssi_dbm: -52,
        antenna: 1,
    }
}

fn batch(reader_id: &str, seq: u64, sightings: Vec<Sighting>) -> SightingBatch {
    SightingBatch {
        reader_id: reader_id.into(),
        seq,
        sent_at_ms: NOW_MS,
        sightings,
    }
}

fn two_sightings() -> Vec<Sighting> {
    vec![
        sighting("E2801160600002070000ABCD", NOW_MS - 900, NOW_MS - 120),
        sighting("e28011606000020934d6faf7", NOW_MS - 500, NOW_MS - 500),
    ]
}

/// `open_sealed` input: topic length, topic, payload.
fn open_input(topic: &str, payload: &[u8]) -> Vec<u8> {
    let mut input = vec![u8::try_from(topic.len()).expect("topics here are short")];
    input.extend_from_slice(topic.as_bytes());
    input.extend_from_slice(payload);
    input
}

/// The `open_sealed` seeds, and what `open` says of each.
fn open_sealed_seeds() -> Vec<(&'static str, Vec<u8>, Result<(), &'static str>)> {
    let key = ReaderKey::derive(SECRET);
    let topic = topics::sightings(READER_ID);
    let sealed = |b: &SightingBatch| key.seal(b).encode_to_vec();
    let many: Vec<Sighting> = (0..40)
        .map(|i| sighting(&format!("E28011606000020700{i:06X}"), NOW_MS - i, NOW_MS))
        .collect();
    let valid = sealed(&batch(READER_ID, 1, two_sightings()));
    let mut bad_nonce = key.seal(&batch(READER_ID, 2, two_sightings()));
    bad_nonce.nonce.pop();
    let inner_mismatch = key.seal_bytes(
        READER_ID,
        &batch("rd-other", 3, two_sightings()).encode_to_vec(),
    );
    vec![
        ("valid-two-sightings", open_input(&topic, &valid), Ok(())),
        (
            "valid-empty-batch",
            open_input(&topic, &sealed(&batch(READER_ID, 7, vec![]))),
            Ok(()),
        ),
        (
            "valid-forty-sightings",
            open_input(&topic, &sealed(&batch(READER_ID, 1_700_000_000_000, many))),
            Ok(()),
        ),
        (
            "broken-other-reader-topic",
            open_input(&topics::sightings("rd-other"), &valid),
            Err("unknown_reader"),
        ),
        (
            "broken-status-topic",
            open_input("greenplate/readers/rd-fuzz/status", &valid),
            Err("topic"),
        ),
        (
            "broken-envelope-names-other-reader",
            open_input(
                &topic,
                &key.seal(&batch("rd-other", 4, two_sightings()))
                    .encode_to_vec(),
            ),
            Err("reader_mismatch"),
        ),
        (
            "broken-batch-names-other-reader",
            open_input(&topic, &inner_mismatch.encode_to_vec()),
            Err("reader_mismatch"),
        ),
        (
            "broken-wrong-secret",
            open_input(
                &topic,
                &ReaderKey::derive("not-the-secret")
                    .seal(&batch(READER_ID, 5, two_sightings()))
                    .encode_to_vec(),
            ),
            Err("unsealed"),
        ),
        (
            "broken-short-nonce",
            open_input(&topic, &bad_nonce.encode_to_vec()),
            Err("unsealed"),
        ),
        (
            "broken-seq-zero",
            open_input(&topic, &sealed(&batch(READER_ID, 0, two_sightings()))),
            Err("seq_too_old"),
        ),
        (
            "broken-sealed-garbage",
            open_input(
                &topic,
                &key.seal_bytes(READER_ID, b"\xff\xff\xff not a batch")
                    .encode_to_vec(),
            ),
            Err("malformed_batch"),
        ),
        (
            "broken-truncated",
            open_input(&topic, &valid[..valid.len() - 5]),
            Err("malformed"),
        ),
    ]
}

/// The `decode_batch` seeds: encoded `SightingBatch`es.
fn decode_batch_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let enc = |s: Vec<Sighting>| batch(READER_ID, 1, s).encode_to_vec();
    vec![
        ("valid-two-sightings", enc(two_sightings())),
        ("valid-empty-batch", enc(vec![])),
        (
            "mixed-bad-tags-and-times",
            enc(vec![
                sighting("E2801160600002070000ABCD", NOW_MS, NOW_MS),
                sighting("E2801160600002070000ABC", NOW_MS, NOW_MS),
                sighting(" e2801160600002070000abcd ", NOW_MS, NOW_MS),
                sighting("E2801160600002070000ABCG", NOW_MS, NOW_MS),
                sighting("E28011606000020934D6FAF700112233", NOW_MS, NOW_MS),
                sighting("E2801160600002070000ABCD", NOW_MS, NOW_MS - 1),
                sighting("E2801160600002070000ABCD", i64::MIN, i64::MAX),
                sighting("E2801160600002070000ABCD", NOW_MS + 86_400_001, NOW_MS),
                sighting("", 0, 0),
            ]),
        ),
        (
            "sealed-envelope-not-a-batch",
            SealedSightingBatch {
                reader_id: READER_ID.into(),
                nonce: vec![0; 12],
                ciphertext: vec![1, 2, 3],
            }
            .encode_to_vec(),
        ),
    ]
}

fn open_seed(input: &[u8]) -> Result<(), &'static str> {
    let (&n, rest) = input.split_first().expect("seed is not empty");
    let (topic, payload) = rest.split_at(usize::from(n));
    let readers = Readers::default();
    readers.insert(Reader::new(
        READER_ID.into(),
        "fuzz".into(),
        23.25,
        116.6,
        SECRET,
    ));
    open::open(&readers, &open::Admissions::default(), topic, payload)
        .map(|_| ())
        .map_err(|r| r.reason())
}

#[test]
#[ignore = "writes ingest/fuzz/corpus with GREENPLATE_WRITE_FUZZ_SEEDS=1, after a contract change"]
fn write_seeds() {
    // CI runs ignored tests too; writing the seeds while the checks below read them would
    // race, so this only writes when asked: GREENPLATE_WRITE_FUZZ_SEEDS=1.
    if std::env::var_os("GREENPLATE_WRITE_FUZZ_SEEDS").is_none() {
        return;
    }
    for (target, seeds) in [
        (
            "open_sealed",
            open_sealed_seeds()
                .into_iter()
                .map(|(name, bytes, _)| (name, bytes))
                .collect(),
        ),
        ("decode_batch", decode_batch_seeds()),
    ] {
        let dir = corpus(target);
        std::fs::create_dir_all(&dir).unwrap();
        for (name, bytes) in seeds {
            std::fs::write(dir.join(format!("{name}.bin")), bytes).unwrap();
        }
    }
}

/// The sealed seeds are random (fresh nonces), so the committed files are checked for
/// what they do rather than compared byte for byte.
#[test]
fn committed_open_sealed_seeds_open_or_fail_as_named() {
    for (name, _, expected) in open_sealed_seeds() {
        let path = corpus("open_sealed").join(format!("{name}.bin"));
        let input = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(open_seed(&input), expected, "{name}");
    }
}

#[test]
fn committed_decode_batch_seeds_are_current() {
    for (name, bytes) in decode_batch_seeds() {
        let path = corpus("decode_batch").join(format!("{name}.bin"));
        let committed = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(
            committed, bytes,
            "{name}: rewrite the seeds (see the file's doc)"
        );
    }
}
