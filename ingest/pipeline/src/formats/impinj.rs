//! Impinj IoT device interface (Impinj R700 family; "Impinj IoT Device Interface", formerly
//! "RESTful interface", firmware 7.x and 8.x): tag inventory events, as the reader publishes
//! them to an MQTT broker configured with `PUT /api/v1/mqtt` (`eventTopic` set to
//! `greenplate/readers/{id}/sightings`, `clientId` and `username` the reader id, `password`
//! its secret).
//!
//! Each event is a `ReaderEvent`:
//!
//! ```json
//! {
//!   "timestamp": "2023-11-14T22:13:20.512345678Z",
//!   "hostname": "impinj-14-1f-23",
//!   "eventType": "tagInventory",
//!   "tagInventoryEvent": {
//!     "epc": "4oARYGAAAgk01vr3",
//!     "epcHex": "E28011606000020934D6FAF7",
//!     "antennaPort": 1,
//!     "antennaName": "Northbound lane",
//!     "peakRssiCdbm": -5350,
//!     "frequency": 920625,
//!     "transmitPowerCdbm": 3000,
//!     "lastSeenTime": "2023-11-14T22:13:20.498101Z"
//!   }
//! }
//! ```
//!
//! What is read:
//! - `eventType` (required): only `tagInventory` events become sightings. Every other event
//!   (`inventoryStatus`, `antennaConnected`, `antennaDisconnected`, `overflow`, ...) is
//!   skipped without refusing the message; it still counts towards the event limit.
//! - `timestamp` (required, RFC 3339, UTC): when the reader queued the event.
//! - `tagInventoryEvent` (required for `tagInventory`):
//!   - `epcHex`, or else `epc` (the same bytes in base64; which of the two the reader sends
//!     is set in its `tagInventory` event configuration). The hex is kept as written;
//!     `decode` drops anything but an EPC-96 (24 hex digits).
//!   - `lastSeenTime` (optional, RFC 3339): when the tag was last seen; the event's
//!     `timestamp` when absent. There is no first-seen time: one event is one read (or one
//!     report per `reportingIntervalSeconds`).
//!   - `peakRssiCdbm` (optional): centi-dBm, rounded to the nearest dBm (halves up).
//!   - `antennaPort` (optional).
//! - Everything else (`hostname`, `antennaName`, `tid`, `frequency`, ...) is ignored.
//!
//! One MQTT message may carry one event, a JSON array of events (as the webhook output
//! batches them) or newline-delimited events (as `GET /api/v1/data/stream` writes them), so
//! a relay can forward either unchanged. The reads of one message are folded into one
//! sighting per tag (first and last time, reads counted, strongest signal and its antenna).
//! These readers have no batch counter: the batch has `seq = 0`, and the pipeline skips the
//! replay check for it (see [the module doc](super)).
//!
//! Sources:
//! - Impinj, "Impinj IoT Device Interface API - Overview":
//!   <https://support.impinj.com/hc/en-us/articles/32123172324755-Impinj-IoT-Device-Interface-API-Overview>
//!   and <https://platform.impinj.com/site/docs/reader_api_welcome/> (HTTP stream, Kafka
//!   and MQTT outputs; the event schema is in the OpenAPI document the reader serves at
//!   `/api/v1/openapi.json`).
//! - The `ReaderEvent` and `TagInventoryEvent` schemas of that OpenAPI document (version
//!   1.7.0), as rendered by a client generated from it:
//!   <https://github.com/saji-ttarius/impinj-reader-config-api-v1.7.0/blob/master/docs/ReaderEvent.md>,
//!   `docs/TagInventoryEvent.md`, `docs/MqttConfiguration.md` and
//!   `docs/EventWebhookConfiguration.md` there (`eventType` and `timestamp` required, every
//!   `tagInventoryEvent` field optional, `peakRssiCdbm` in cdBm, `lastSeenTime` UTC).
//!
//! Not verified against a reader: whether the MQTT output ever puts more than one event in
//! a message (its configuration has no batching setting, unlike the webhook's
//! `eventBatchLimit`), and the exact number of fraction digits in the times (any are
//! taken).

use base64::Engine;
use greenplate_proto::v1::SightingBatch;
use serde::Deserialize;

use super::{Fold, FormatError, Read, events, unix_ms};

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReaderEvent {
    event_type: String,
    timestamp: String,
    tag_inventory_event: Option<TagInventoryEvent>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TagInventoryEvent {
    epc: Option<String>,
    epc_hex: Option<String>,
    antenna_port: Option<u32>,
    peak_rssi_cdbm: Option<i32>,
    last_seen_time: Option<String>,
}

/// Parses one MQTT payload of Impinj events from the reader `reader_id`.
pub fn parse(reader_id: &str, payload: &[u8]) -> Result<SightingBatch, FormatError> {
    let mut fold = Fold::default();
    for event in events::<ReaderEvent>(payload)? {
        if event.event_type != "tagInventory" {
            continue;
        }
        let tag = event
            .tag_inventory_event
            .ok_or_else(|| FormatError::MissingField("tagInventoryEvent".into()))?;
        let tag_id = match (tag.epc_hex, tag.epc) {
            (Some(hex), _) => hex,
            (None, Some(b64)) => epc_from_base64(&b64)?,
            (None, None) => {
                return Err(FormatError::MissingField("tagInventoryEvent.epcHex".into()));
            }
        };
        let seen_ms = match &tag.last_seen_time {
            Some(t) => unix_ms("tagInventoryEvent.lastSeenTime", t)?,
            None => unix_ms("timestamp", &event.timestamp)?,
        };
        fold.add(Read {
            tag_id,
            seen_ms,
            read_count: 1,
            rssi_dbm: tag.peak_rssi_cdbm.map(dbm_from_cdbm),
            antenna: tag.antenna_port.unwrap_or(0),
        });
    }
    Ok(fold.finish(reader_id))
}

/// The base64 `epc` as upper-case hex.
fn epc_from_base64(b64: &str) -> Result<String, FormatError> {
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    LENIENT
        .decode(b64)
        .map(hex::encode_upper)
        .map_err(|e| FormatError::WrongType(format!("tagInventoryEvent.epc is not base64: {e}")))
}

/// Centi-dBm to dBm, rounded to the nearest (halves up).
fn dbm_from_cdbm(cdbm: i32) -> i32 {
    // |cdbm + 50| / 100 fits an i32 for every i32 cdbm.
    i32::try_from((i64::from(cdbm) + 50).div_euclid(100)).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use greenplate_proto::v1::Sighting;

    use super::super::{Format, MAX_EVENTS, parse as parse_format};
    use super::*;

    const SINGLE: &[u8] = include_bytes!("../../../tests/data/formats/impinj-tag-inventory.json");
    const WEBHOOK: &[u8] = include_bytes!("../../../tests/data/formats/impinj-webhook-batch.json");
    const STREAM: &[u8] = include_bytes!("../../../tests/data/formats/impinj-http-stream.json");

    /// 2023-11-14T22:13:20Z.
    const T0: i64 = 1_700_000_000_000;

    fn reason(payload: &str) -> &'static str {
        parse("rd-1", payload.as_bytes()).unwrap_err().reason()
    }

    fn tag_event(tag: &str) -> String {
        format!(
            r#"{{"timestamp":"2023-11-14T22:13:20Z","eventType":"tagInventory","tagInventoryEvent":{tag}}}"#
        )
    }

    #[test]
    fn documented_single_event() {
        let batch = parse_format(Format::Impinj, "rd-1", SINGLE).unwrap();
        assert_eq!(
            batch,
            SightingBatch {
                reader_id: "rd-1".into(),
                seq: 0,
                sent_at_ms: T0 + 498,
                sightings: vec![Sighting {
                    tag_id: "E28011606000020934D6FAF7".into(),
                    first_seen_ms: T0 + 498,
                    last_seen_ms: T0 + 498,
                    read_count: 1,
                    peak_rssi_dbm: -53,
                    antenna: 1,
                }],
            }
        );
    }

    #[test]
    fn the_doc_example_is_the_example_file_less_tid_pc_and_phase() {
        let doc = include_str!("impinj.rs");
        let block: String = doc
            .split("```json")
            .nth(1)
            .and_then(|rest| rest.split("//! ```").next())
            .unwrap()
            .lines()
            .map(|l| l.trim_start().trim_start_matches("//!"))
            .collect();
        let documented: serde_json::Value = serde_json::from_str(&block).unwrap();
        let mut file: serde_json::Value = serde_json::from_slice(SINGLE).unwrap();
        let tag = file["tagInventoryEvent"].as_object_mut().unwrap();
        for extra in ["tid", "tidHex", "pc", "phaseAngle"] {
            tag.remove(extra);
        }
        assert_eq!(documented, file);
    }

    #[test]
    fn webhook_array_and_http_stream_give_the_same_batch() {
        let expected = SightingBatch {
            reader_id: "rd-1".into(),
            seq: 0,
            sent_at_ms: T0 + 1_015,
            sightings: vec![
                Sighting {
                    tag_id: "E28011606000020934D6FAF7".into(),
                    first_seen_ms: T0 + 498,
                    // The third event has only the base64 epc and no lastSeenTime.
                    last_seen_ms: T0 + 1_015,
                    read_count: 2,
                    peak_rssi_dbm: -49,
                    antenna: 2,
                },
                Sighting {
                    tag_id: "E2801170200014CD9B5A08EC".into(),
                    first_seen_ms: T0 + 730,
                    last_seen_ms: T0 + 730,
                    read_count: 1,
                    peak_rssi_dbm: -61,
                    antenna: 2,
                },
            ],
        };
        assert_eq!(parse("rd-1", WEBHOOK), Ok(expected.clone()));
        assert_eq!(parse("rd-1", STREAM), Ok(expected));
    }

    #[test]
    fn other_event_types_are_skipped() {
        let only_status = r#"{"timestamp":"2023-11-14T22:13:20Z","hostname":"impinj-14-1f-23","eventType":"inventoryStatus","inventoryStatusEvent":{"status":"idle"}}"#;
        let batch = parse("rd-1", only_status.as_bytes()).unwrap();
        assert!(batch.sightings.is_empty());
        assert_eq!(batch.sent_at_ms, 0);
        let unknown = r#"[{"timestamp":"2030-01-01T00:00:00Z","eventType":"somethingNew","somethingNewEvent":{"x":[1,2]}}]"#;
        assert_eq!(
            parse("rd-1", unknown.as_bytes()).map(|b| b.sightings.len()),
            Ok(0)
        );
        // The time of a skipped event is not parsed.
        let odd = r#"{"timestamp":"not a time","eventType":"overflow","tagInventoryEvent":null}"#;
        assert!(parse("rd-1", odd.as_bytes()).is_ok());
    }

    #[test]
    fn rssi_rounding() {
        assert_eq!(dbm_from_cdbm(-5200), -52);
        assert_eq!(dbm_from_cdbm(-5249), -52);
        assert_eq!(dbm_from_cdbm(-5250), -52);
        assert_eq!(dbm_from_cdbm(-5251), -53);
        assert_eq!(dbm_from_cdbm(49), 0);
        assert_eq!(dbm_from_cdbm(i32::MIN), i32::MIN / 100);
        assert_eq!(dbm_from_cdbm(i32::MAX), i32::MAX / 100);
    }

    #[test]
    fn base64_epc_and_odd_epcs() {
        let b64 = tag_event(r#"{"epc":"4oARYGAAAgk01vr3","antennaPort":3}"#);
        let batch = parse("rd-1", b64.as_bytes()).unwrap();
        assert_eq!(batch.sightings[0].tag_id, "E28011606000020934D6FAF7");
        assert_eq!(batch.sightings[0].antenna, 3);
        assert_eq!(batch.sightings[0].peak_rssi_dbm, 0);
        assert_eq!(batch.sightings[0].first_seen_ms, T0);
        let unpadded = tag_event(r#"{"epc":"4oARYGAAAgk01vr3AAA"}"#);
        assert_eq!(
            parse("rd-1", unpadded.as_bytes()).unwrap().sightings[0].tag_id,
            "E28011606000020934D6FAF70000"
        );
        // A 128-bit EPC is kept as is; decode drops it.
        let long = tag_event(r#"{"epcHex":"E28011606000020934D6FAF700112233"}"#);
        assert_eq!(
            parse("rd-1", long.as_bytes()).unwrap().sightings[0].tag_id,
            "E28011606000020934D6FAF700112233"
        );
        assert_eq!(reason(&tag_event(r#"{"epc":"not base64!"}"#)), "wrong_type");
    }

    #[test]
    fn malformed_json() {
        for bad in [
            "",
            "   ",
            "{",
            "[{]",
            "tagInventory",
            "{\"eventType\":\"tagInventory\",}",
        ] {
            assert_eq!(reason(bad), "malformed_json", "{bad:?}");
        }
        let truncated = &STREAM[..STREAM.len() / 2];
        assert_eq!(
            parse("rd-1", truncated).unwrap_err().reason(),
            "malformed_json"
        );
    }

    #[test]
    fn missing_fields() {
        let e = parse("rd-1", br#"{"timestamp":"2023-11-14T22:13:20Z"}"#).unwrap_err();
        assert_eq!(e, FormatError::MissingField("eventType".into()));
        assert_eq!(e.reason(), "missing_field");
        let e = parse("rd-1", br#"{"eventType":"inventoryStatus"}"#).unwrap_err();
        assert_eq!(e, FormatError::MissingField("timestamp".into()));
        let e = parse(
            "rd-1",
            br#"{"timestamp":"2023-11-14T22:13:20Z","eventType":"tagInventory"}"#,
        );
        assert_eq!(
            e,
            Err(FormatError::MissingField("tagInventoryEvent".into()))
        );
        let e = parse("rd-1", tag_event(r#"{"antennaPort":1}"#).as_bytes());
        assert_eq!(
            e,
            Err(FormatError::MissingField("tagInventoryEvent.epcHex".into()))
        );
    }

    #[test]
    fn wrong_types() {
        for bad in [
            r#"{"timestamp":"2023-11-14T22:13:20Z","eventType":7}"#.to_owned(),
            r#"{"timestamp":1700000000,"eventType":"tagInventory"}"#.to_owned(),
            r#"{"timestamp":"2023-11-14T22:13:20Z","eventType":"tagInventory","tagInventoryEvent":"E280"}"#.to_owned(),
            tag_event(r#"{"epcHex":7}"#),
            tag_event(r#"{"epcHex":"E280","antennaPort":-1}"#),
            tag_event(r#"{"epcHex":"E280","antennaPort":"1"}"#),
            tag_event(r#"{"epcHex":"E280","peakRssiCdbm":-52.5}"#),
            tag_event(r#"{"epcHex":"E280","peakRssiCdbm":-3000000000}"#),
            tag_event(r#"{"epcHex":"E280","lastSeenTime":1700000000000}"#),
            "42".to_owned(),
            "[1]".to_owned(),
            r#"{"timestamp":"2023-11-14T22:13:20Z","eventType":"x"} 7"#.to_owned(),
        ] {
            assert_eq!(reason(&bad), "wrong_type", "{bad}");
        }
    }

    #[test]
    fn bad_timestamps() {
        let e = parse(
            "rd-1",
            tag_event(r#"{"epcHex":"E280","lastSeenTime":"yesterday"}"#).as_bytes(),
        )
        .unwrap_err();
        assert_eq!(
            e,
            FormatError::BadTimestampFormat {
                field: "tagInventoryEvent.lastSeenTime",
                value: "yesterday".into()
            }
        );
        assert_eq!(e.reason(), "bad_timestamp_format");
        let no_zone = r#"{"timestamp":"2023-11-14T22:13:20","eventType":"tagInventory","tagInventoryEvent":{"epcHex":"E280"}}"#;
        assert_eq!(reason(no_zone), "bad_timestamp_format");
        let unix = r#"{"timestamp":"1700000000000","eventType":"tagInventory","tagInventoryEvent":{"epcHex":"E280"}}"#;
        assert_eq!(reason(unix), "bad_timestamp_format");
    }

    #[test]
    fn too_many_events() {
        let status = r#"{"timestamp":"2023-11-14T22:13:20Z","eventType":"inventoryStatus"}"#;
        let lines = |n| vec![status; n].join("\n");
        assert!(parse("rd-1", lines(MAX_EVENTS).as_bytes()).is_ok());
        let e = parse("rd-1", lines(MAX_EVENTS + 1).as_bytes()).unwrap_err();
        assert_eq!(e, FormatError::TooManyEvents);
        let array = format!("[{}]", vec![status; MAX_EVENTS + 1].join(","));
        assert_eq!(reason(&array), "too_many_events");
    }

    #[test]
    fn the_reader_id_comes_from_the_topic() {
        // `hostname` is the device's network name, not greenplate's reader id: not compared.
        assert_eq!(parse("rd-9", SINGLE).unwrap().reader_id, "rd-9");
    }
}
