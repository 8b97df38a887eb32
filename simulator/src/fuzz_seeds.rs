//! The binary seeds of the fuzz targets `open_sealed` and `decode_batch` (`ingest/fuzz`),
//! made with the real sealing code: what `simulator fuzz-seeds` writes to
//! `ingest/fuzz/corpus/`, after a change to the contract. `ingest/tests/e2e/fuzz_seeds.rs`
//! checks that the committed files still do what their names say.

use std::path::Path;

use anyhow::Context;
use greenplate_proto::seal::ReaderKey;
use greenplate_proto::topics;
use greenplate_proto::v1::{SealedSightingBatch, Sighting, SightingBatch};
use prost::Message;

/// The reader the `open_sealed` target provisions (keep in step with
/// `ingest/fuzz/fuzz_targets/open_sealed.rs`).
pub const READER_ID: &str = "rd-fuzz";
pub const SECRET: &str = "fuzz-secret-not-for-production";

/// 2023-11-14T22:13:20Z, the `now` of the `decode_batch` target.
pub const NOW_MS: i64 = 1_700_000_000_000;

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

/// The `open_sealed` seeds: name, input, and what ingest's `pipeline::open::open` says of
/// it (`Err` holds the rejection's metric reason).
pub fn open_sealed_seeds() -> Vec<(&'static str, Vec<u8>, Result<(), &'static str>)> {
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

/// The `decode_batch` seeds: name and an encoded `SightingBatch`.
pub fn decode_batch_seeds() -> Vec<(&'static str, Vec<u8>)> {
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

/// Writes every seed to `corpus/<target>/<name>.bin`; returns how many. The sealed seeds
/// get fresh nonces each time, so their bytes change on every run.
pub fn write(corpus: &Path) -> anyhow::Result<usize> {
    let open_sealed: Vec<(&str, Vec<u8>)> = open_sealed_seeds()
        .into_iter()
        .map(|(name, bytes, _)| (name, bytes))
        .collect();
    let mut written = 0;
    for (target, seeds) in [
        ("open_sealed", open_sealed),
        ("decode_batch", decode_batch_seeds()),
    ] {
        let dir = corpus.join(target);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        for (name, bytes) in seeds {
            let path = dir.join(format!("{name}.bin"));
            std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
            written += 1;
        }
    }
    Ok(written)
}
