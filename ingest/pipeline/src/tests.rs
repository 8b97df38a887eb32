use greenplate_proto::seal::ReaderKey;
use greenplate_proto::topics;
use greenplate_proto::v1::{Sighting, SightingBatch};
use greenplate_registry::{Reader, Readers};
use prost::Message;

use super::admit::Admissions;
use super::decode::{SightingRejection, decode};
use super::open::{Rejection, open};

fn readers() -> Readers {
    let r = Readers::default();
    r.insert(Reader::new(
        "r1".into(),
        "R1".into(),
        23.3,
        116.6,
        "secret-1",
    ));
    r.insert(Reader::new(
        "r2".into(),
        "R2".into(),
        23.3,
        116.6,
        "secret-2",
    ));
    r
}

fn batch(reader: &str, seq: u64) -> SightingBatch {
    SightingBatch {
        reader_id: reader.into(),
        seq,
        sent_at_ms: 1,
        sightings: vec![],
    }
}

fn sealed(secret: &str, b: &SightingBatch) -> Vec<u8> {
    ReaderKey::derive(secret).seal(b).encode_to_vec()
}

#[test]
fn accepts_a_sealed_batch_once() {
    let readers = readers();
    let admissions = Admissions::default();
    let topic = topics::sightings("r1");
    let payload = sealed("secret-1", &batch("r1", 5));
    let (reader, b) = open(&readers, &admissions, topic.as_bytes(), &payload).unwrap();
    assert_eq!((reader.id.as_str(), b.seq), ("r1", 5));
    assert_eq!(
        open(&readers, &admissions, topic.as_bytes(), &payload).unwrap_err(),
        Rejection::Replay {
            seq: 5,
            last: 5,
            too_old: false
        }
    );
    // A late batch never processed is taken once (a broker redelivery, say)...
    let late = sealed("secret-1", &batch("r1", 4));
    assert!(open(&readers, &admissions, topic.as_bytes(), &late).is_ok());
    let reason = |p: &[u8]| {
        open(&readers, &admissions, topic.as_bytes(), p)
            .unwrap_err()
            .reason()
    };
    assert_eq!(reason(&late), "replay");
    // ...but one older than the window cannot be told from a replay.
    open(
        &readers,
        &admissions,
        topic.as_bytes(),
        &sealed("secret-1", &batch("r1", 5000)),
    )
    .unwrap();
    assert_eq!(
        reason(&sealed("secret-1", &batch("r1", 300))),
        "seq_too_old"
    );
}

#[test]
fn rejects_each_kind_of_bad_message() {
    let readers = readers();
    let admissions = Admissions::default();
    let r1 = topics::sightings("r1");
    let reason = |topic: &str, payload: &[u8]| {
        open(&readers, &admissions, topic.as_bytes(), payload)
            .unwrap_err()
            .reason()
    };
    assert_eq!(reason("other/topic", b""), "topic");
    assert_eq!(reason(&topics::sightings("r9"), b""), "unknown_reader");
    assert_eq!(reason(&r1, b"\xff\xff\xff garbage"), "malformed");
    // Sealed by r2 (with r2's key) but published on r1's topic.
    assert_eq!(
        reason(&r1, &sealed("secret-2", &batch("r2", 1))),
        "reader_mismatch"
    );
    // Claims to be r1 but sealed with another key.
    assert_eq!(
        reason(&r1, &sealed("secret-2", &batch("r1", 1))),
        "unsealed"
    );
    // Envelope says r1, sealed batch inside says r2.
    let inner_r2 = ReaderKey::derive("secret-1")
        .seal_bytes("r1", &batch("r2", 1).encode_to_vec())
        .encode_to_vec();
    assert_eq!(reason(&r1, &inner_r2), "reader_mismatch");
    // Opens, but the plaintext is not a batch.
    let junk = ReaderKey::derive("secret-1")
        .seal_bytes("r1", b"\xff\xff\xff")
        .encode_to_vec();
    assert_eq!(reason(&r1, &junk), "malformed_batch");
}

#[test]
fn decodes_and_checks_sightings() {
    let now = 1_700_000_000_000;
    let good = Sighting {
        tag_id: "e2801160600002070000abcd".into(),
        first_seen_ms: now - 10,
        last_seen_ms: now,
        read_count: 3,
        peak_rssi_dbm: -40,
        antenna: 1,
    };
    let read = decode(&good, now, 1000).unwrap();
    assert_eq!(read.tag.to_string(), "E2801160600002070000ABCD");
    let bad_tag = Sighting {
        tag_id: "xyz".into(),
        ..good.clone()
    };
    assert_eq!(
        decode(&bad_tag, now, 1000),
        Err(SightingRejection::BadTagId)
    );
    let future = Sighting {
        first_seen_ms: now + 5000,
        last_seen_ms: now + 5000,
        ..good.clone()
    };
    assert_eq!(
        decode(&future, now, 1000),
        Err(SightingRejection::BadTimestamp)
    );
    let backwards = Sighting {
        first_seen_ms: now,
        last_seen_ms: now - 1,
        ..good
    };
    assert_eq!(
        decode(&backwards, now, 1000),
        Err(SightingRejection::BadTimestamp)
    );
    // Long into the past, short into the future (and never further than the past bound).
    let at = |offset: i64| Sighting {
        tag_id: "e2801160600002070000abcd".into(),
        first_seen_ms: now + offset,
        last_seen_ms: now + offset,
        read_count: 1,
        peak_rssi_dbm: -40,
        antenna: 1,
    };
    let skew = crate::decode::Skew::new(3_600_000, 120_000);
    assert!(decode(&at(-3_600_000), now, skew).is_ok());
    assert!(decode(&at(-3_600_001), now, skew).is_err());
    assert!(decode(&at(120_000), now, skew).is_ok());
    assert!(decode(&at(120_001), now, skew).is_err());
    assert_eq!(crate::decode::Skew::new(60_000, 120_000).future_ms, 60_000);
}
