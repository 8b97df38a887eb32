//! greenplate JSON: the native `SightingBatch` spelled in JSON, for simple gateways that
//! cannot seal. One MQTT message on `greenplate/readers/{id}/sightings` is one batch:
//!
//! ```json
//! {
//!   "reader_id": "rd-chaoyang-0042",
//!   "seq": 17,
//!   "sent_at_ms": 1700000002000,
//!   "sightings": [
//!     {
//!       "tag_id": "E2801160600002070000ABCD",
//!       "first_seen_ms": 1700000000120,
//!       "last_seen_ms": 1700000000870,
//!       "read_count": 3,
//!       "peak_rssi_dbm": -52,
//!       "antenna": 1
//!     },
//!     { "tag_id": "e28011606000020700001234", "first_seen_ms": 1700000001500 }
//!   ]
//! }
//! ```
//!
//! The batch:
//! - `reader_id` (string, optional): the reader's id; when present it must equal the id in
//!   the topic, or the message is refused (`reader_mismatch`).
//! - `seq` (integer, required, 1 or more): increases by one per batch, and must stay above
//!   every seq already sent, across the gateway's restarts too (start from the clock in
//!   milliseconds, for example). A batch whose seq was already processed is dropped, as for
//!   sealed readers. `0` is refused (`zero_seq`): the pipeline skips replay protection for
//!   seq 0.
//! - `sent_at_ms` (integer, required): when the batch was sent, Unix milliseconds.
//! - `sightings` (array, required, at most 10,000, may be empty): one entry per tag seen
//!   since the previous batch.
//!
//! Each sighting:
//! - `tag_id` (string, required): the EPC-96 tag id, 24 hex digits, any case.
//! - `first_seen_ms` (integer, required): first time the tag was seen, Unix milliseconds.
//! - `last_seen_ms` (integer, optional, default `first_seen_ms`): last time it was seen.
//! - `read_count` (integer, optional, default 1): reads folded into this sighting.
//! - `peak_rssi_dbm` (integer, optional, default 0 = not reported): strongest signal, dBm.
//! - `antenna` (integer, optional, default 0 = not reported): antenna port that saw it.
//!
//! Any other field, anywhere, refuses the message (`unknown_field`), so a typo is an error
//! and not a silently missing value. The whole message is refused for a JSON or schema
//! error; a sighting whose tag id or times are wrong (not 24 hex digits, last before
//! first, too far from the server's clock) is dropped on its own by `pipeline::decode`.
//!
//! The payload is not authenticated: see [the module doc](super) for what accepting it
//! trusts.

use greenplate_proto::v1::{Sighting, SightingBatch};
use serde::Deserialize;

use super::{Capped, FormatError, from_json};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Batch {
    reader_id: Option<String>,
    seq: u64,
    sent_at_ms: i64,
    sightings: Capped<JsonSighting>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonSighting {
    tag_id: String,
    first_seen_ms: i64,
    last_seen_ms: Option<i64>,
    read_count: Option<u32>,
    peak_rssi_dbm: Option<i32>,
    antenna: Option<u32>,
}

/// Parses one greenplate JSON batch from the reader `reader_id` (the id in its topic).
pub fn parse(reader_id: &str, payload: &[u8]) -> Result<SightingBatch, FormatError> {
    let batch: Batch = serde_json::from_slice(payload).map_err(from_json)?;
    match batch.reader_id {
        Some(found) if found != reader_id => {
            return Err(FormatError::ReaderMismatch {
                expected: reader_id.to_owned(),
                found,
            });
        }
        _ => {}
    }
    if batch.seq == 0 {
        return Err(FormatError::ZeroSeq);
    }
    Ok(SightingBatch {
        reader_id: reader_id.to_owned(),
        seq: batch.seq,
        sent_at_ms: batch.sent_at_ms,
        sightings: batch
            .sightings
            .0
            .into_iter()
            .map(|s| Sighting {
                tag_id: s.tag_id,
                first_seen_ms: s.first_seen_ms,
                last_seen_ms: s.last_seen_ms.unwrap_or(s.first_seen_ms),
                read_count: s.read_count.unwrap_or(1),
                peak_rssi_dbm: s.peak_rssi_dbm.unwrap_or(0),
                antenna: s.antenna.unwrap_or(0),
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::super::MAX_EVENTS;
    use super::*;

    const EXAMPLE: &[u8] = include_bytes!("../../../tests/data/formats/json-batch.json");
    const MINIMAL: &[u8] = include_bytes!("../../../tests/data/formats/json-minimal.json");

    fn reason(payload: &str) -> &'static str {
        parse("rd-chaoyang-0042", payload.as_bytes())
            .unwrap_err()
            .reason()
    }

    #[test]
    fn documented_example() {
        let batch = parse("rd-chaoyang-0042", EXAMPLE).unwrap();
        assert_eq!(
            batch,
            SightingBatch {
                reader_id: "rd-chaoyang-0042".into(),
                seq: 17,
                sent_at_ms: 1_700_000_002_000,
                sightings: vec![
                    Sighting {
                        tag_id: "E2801160600002070000ABCD".into(),
                        first_seen_ms: 1_700_000_000_120,
                        last_seen_ms: 1_700_000_000_870,
                        read_count: 3,
                        peak_rssi_dbm: -52,
                        antenna: 1,
                    },
                    Sighting {
                        tag_id: "e28011606000020700001234".into(),
                        first_seen_ms: 1_700_000_001_500,
                        last_seen_ms: 1_700_000_001_500,
                        read_count: 1,
                        peak_rssi_dbm: 0,
                        antenna: 0,
                    },
                ],
            }
        );
    }

    #[test]
    fn the_doc_shows_the_example_file() {
        let example: serde_json::Value = serde_json::from_slice(EXAMPLE).unwrap();
        let doc = include_str!("json.rs");
        let block: String = doc
            .split("```json")
            .nth(1)
            .and_then(|rest| rest.split("//! ```").next())
            .unwrap()
            .lines()
            .map(|l| l.trim_start().trim_start_matches("//!"))
            .collect();
        let documented: serde_json::Value = serde_json::from_str(&block).unwrap();
        assert_eq!(documented, example);
    }

    #[test]
    fn minimal_batch_without_reader_id_or_optional_fields() {
        let batch = parse("rd-7", MINIMAL).unwrap();
        assert_eq!(batch.reader_id, "rd-7");
        assert_eq!(batch.seq, 1_700_000_000_000);
        assert_eq!(batch.sightings.len(), 1);
        assert_eq!(batch.sightings[0].read_count, 1);
        let empty = r#"{"seq": 2, "sent_at_ms": 5, "sightings": [], "reader_id": null}"#;
        assert!(
            parse("rd-7", empty.as_bytes())
                .unwrap()
                .sightings
                .is_empty()
        );
    }

    #[test]
    fn reader_id_must_match_the_topic() {
        let e = parse("rd-other", EXAMPLE).unwrap_err();
        assert_eq!(
            e,
            FormatError::ReaderMismatch {
                expected: "rd-other".into(),
                found: "rd-chaoyang-0042".into()
            }
        );
        assert_eq!(e.reason(), "reader_mismatch");
    }

    #[test]
    fn malformed_json() {
        for bad in [
            "",
            "{",
            "not json",
            r#"{"seq": 1,}"#,
            r#"{"seq":1,"sent_at_ms":1,"sightings":[]}}"#,
            "\u{feff}{}",
        ] {
            assert_eq!(reason(bad), "malformed_json", "{bad:?}");
        }
        assert_eq!(
            parse("r", b"\xff\xfe").unwrap_err().reason(),
            "malformed_json"
        );
    }

    #[test]
    fn missing_fields() {
        let e = parse("r", br#"{"sent_at_ms": 1, "sightings": []}"#).unwrap_err();
        assert_eq!(e, FormatError::MissingField("seq".into()));
        assert_eq!(e.reason(), "missing_field");
        assert_eq!(reason(r#"{"seq": 1, "sightings": []}"#), "missing_field");
        assert_eq!(reason(r#"{"seq": 1, "sent_at_ms": 1}"#), "missing_field");
        let e = parse(
            "r",
            br#"{"seq":1,"sent_at_ms":1,"sightings":[{"tag_id":"x"}]}"#,
        );
        assert_eq!(e, Err(FormatError::MissingField("first_seen_ms".into())));
        let e = parse(
            "r",
            br#"{"seq":1,"sent_at_ms":1,"sightings":[{"first_seen_ms":1}]}"#,
        );
        assert_eq!(e, Err(FormatError::MissingField("tag_id".into())));
    }

    #[test]
    fn unknown_fields_are_refused() {
        let e = parse("r", br#"{"seq":1,"sent_at_ms":1,"sightings":[],"sqe":2}"#).unwrap_err();
        assert_eq!(e, FormatError::UnknownField("sqe".into()));
        assert_eq!(e.reason(), "unknown_field");
        let s =
            r#"{"seq":1,"sent_at_ms":1,"sightings":[{"tag_id":"x","first_seen_ms":1,"rssi":-5}]}"#;
        assert_eq!(reason(s), "unknown_field");
    }

    #[test]
    fn wrong_types() {
        for bad in [
            r#"{"seq":"1","sent_at_ms":1,"sightings":[]}"#,
            r#"{"seq":-1,"sent_at_ms":1,"sightings":[]}"#,
            r#"{"seq":1.5,"sent_at_ms":1,"sightings":[]}"#,
            r#"{"seq":18446744073709551616,"sent_at_ms":1,"sightings":[]}"#,
            r#"{"seq":1,"sent_at_ms":1,"sightings":{}}"#,
            r#"{"seq":1,"sent_at_ms":1,"sightings":[1]}"#,
            r#"{"seq":1,"sent_at_ms":1,"sightings":[],"reader_id":7}"#,
            r#"{"seq":1,"sent_at_ms":1,"sightings":[{"tag_id":7,"first_seen_ms":1}]}"#,
            r#"{"seq":1,"sent_at_ms":1,"sightings":[{"tag_id":"x","first_seen_ms":"1"}]}"#,
            r#"{"seq":1,"sent_at_ms":1,"sightings":[{"tag_id":"x","first_seen_ms":1,"read_count":-1}]}"#,
            r#"{"seq":1,"sent_at_ms":1,"sightings":[{"tag_id":"x","first_seen_ms":1,"peak_rssi_dbm":-52.5}]}"#,
            r#"{"seq":1,"sent_at_ms":1,"sightings":[{"tag_id":"x","first_seen_ms":1,"antenna":4294967296}]}"#,
            "[]",
            "17",
        ] {
            assert_eq!(reason(bad), "wrong_type", "{bad}");
        }
    }

    #[test]
    fn zero_seq_is_refused() {
        let e = parse("r", br#"{"seq":0,"sent_at_ms":1,"sightings":[]}"#).unwrap_err();
        assert_eq!(e, FormatError::ZeroSeq);
        assert_eq!(e.reason(), "zero_seq");
    }

    #[test]
    fn bad_tag_ids_and_times_are_left_to_decode() {
        let s = r#"{"seq":1,"sent_at_ms":1,"sightings":[{"tag_id":"not hex","first_seen_ms":9,"last_seen_ms":2}]}"#;
        let batch = parse("r", s.as_bytes()).unwrap();
        assert_eq!(batch.sightings[0].tag_id, "not hex");
        assert_eq!(batch.sightings[0].last_seen_ms, 2);
    }

    #[test]
    fn too_many_sightings() {
        let sighting = r#"{"tag_id":"E2801160600002070000ABCD","first_seen_ms":1}"#;
        let batch = |n| {
            format!(
                r#"{{"seq":1,"sent_at_ms":1,"sightings":[{}]}}"#,
                vec![sighting; n].join(",")
            )
        };
        assert_eq!(
            parse("r", batch(MAX_EVENTS).as_bytes()).map(|b| b.sightings.len()),
            Ok(MAX_EVENTS)
        );
        let e = parse("r", batch(MAX_EVENTS + 1).as_bytes()).unwrap_err();
        assert_eq!(e, FormatError::TooManyEvents);
        assert_eq!(e.reason(), "too_many_events");
    }
}
