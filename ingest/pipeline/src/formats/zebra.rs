//! Zebra IoT Connector (FX7500, FX9600 and ATR7000 fixed readers; "Zebra IoT Connector",
//! ZIOTC): tag data events, as the reader publishes them on its Data interface when that is
//! set to an MQTT endpoint (data topic `greenplate/readers/{id}/sightings`, client id and
//! username the reader id, password its secret).
//!
//! Each event:
//!
//! ```json
//! {
//!   "data": {
//!     "antenna": 1,
//!     "eventNum": 5059,
//!     "format": "epc",
//!     "idHex": "e28011606000020934d6faf7",
//!     "peakRssi": -53,
//!     "reads": 14
//!   },
//!   "timestamp": "2023-11-15T06:13:21.004+0800",
//!   "type": "INVENTORY"
//! }
//! ```
//!
//! What is read:
//! - `type` (required): the operating mode that produced the event. `SIMPLE`, `INVENTORY`,
//!   `PORTAL`, `CONVEYOR` and `CUSTOM` events are tag reads. `DIRECTIONALITY` events are
//!   refused (`unsupported_event`): they report movement through zones, not reads. Any
//!   other type (management events such as `heartbeat` or `gpi`, should the management
//!   interface share the topic) is skipped without refusing the message; it still counts
//!   towards the event limit.
//! - `timestamp` (required for tag reads): when the tag was read, ISO 8601 with an offset,
//!   which the reader writes without a colon (`+0800`); RFC 3339 is taken too.
//! - `data` (required for tag reads):
//!   - `idHex` (required): the tag id in hex, kept as written; `decode` drops anything but
//!     an EPC-96 (24 hex digits).
//!   - `format` (optional): what `idHex` holds; only `epc` is taken, anything else refuses
//!     the message (`unsupported_event`).
//!   - `peakRssi` (optional, `RSSI` metadata): strongest signal since the previous report,
//!     dBm.
//!   - `reads` (optional, `SEEN_COUNT` metadata, default 1): reads since the previous
//!     report.
//!   - `antenna` (optional, `ANTENNA` metadata): the antenna port.
//!   - Everything else (`eventNum`, `channel`, `phase`, `PC`, `CRC`, `TID`, ...) is ignored.
//!
//! One MQTT message carries one event, or a JSON array of events when tag data batching is
//! on (`maxPayloadSizePerReport`, `reportingInterval`); newline-delimited events are taken
//! too. The reads of one message are folded into one sighting per tag (first and last
//! time, reads added up, strongest signal and its antenna). There is no batch counter:
//! `eventNum` counts events but starts over when the IoT Connector restarts, so the batch
//! has `seq = 0` and the pipeline skips the replay check for it (see
//! [the module doc](super)).
//!
//! Sources:
//! - Zebra, "Zebra IoT Connector" documentation:
//!   <https://zebradevs.github.io/rfid-ziotc-docs/introduction/intro/index.html> (the Data
//!   interface over MQTT),
//!   <https://zebradevs.github.io/rfid-ziotc-docs/controlling_operating_modes/index.html>
//!   and <https://zebradevs.github.io/rfid-ziotc-docs/_static/operating_mode_schema/redoc-static.html>
//!   (the modes and their names),
//!   <https://zebradevs.github.io/rfid-ziotc-docs/migration/RFIDAPI3/tagstorage.html>
//!   (`tagMetaData`: RSSI is the peak in dBm since the last report, SEEN_COUNT the reads
//!   since the previous report),
//!   <https://zebradevs.github.io/rfid-ziotc-docs/batching_and_retention/tag_data/batching.html>
//!   (batching groups tag data events into one message; off by default for MQTT).
//! - Zebra's MQTT sample, which models the event as `data` / `timestamp` / `type` and
//!   reads a payload as one event or an array:
//!   <https://github.com/ZebraDevs/RFID-IoTConnector-MQTT-dotnet-DockDoorSample>
//!   (`Models/TagData/TagDataEvent.cs`, `Models/TagData/Data.cs`,
//!   `Subscriptions/SubscriptionEventParser.cs`), and the reader apps in
//!   <https://github.com/ZebraDevs/RFID_ZIOTC_Examples> (`data.idHex`, `data.antenna`,
//!   `data.peakRssi`, `data.reads`).
//!
//! Not verified against Zebra's own text: the timestamp format (`+hhmm` offsets, three
//! fraction digits) is what published payloads from these readers show, not a documented
//! schema; and the values `format` can take besides `epc`.

use greenplate_proto::v1::SightingBatch;
use serde::Deserialize;

use super::{Fold, FormatError, Read, events, from_json, unix_ms};

/// The operating modes whose events are tag reads.
const TAG_READ_MODES: [&str; 5] = ["SIMPLE", "INVENTORY", "PORTAL", "CONVEYOR", "CUSTOM"];

#[derive(Debug, Deserialize)]
struct Event {
    #[serde(rename = "type")]
    kind: String,
    timestamp: Option<String>,
    /// Read only for tag reads: other events put other things here.
    data: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TagData {
    id_hex: String,
    format: Option<String>,
    antenna: Option<u32>,
    peak_rssi: Option<i32>,
    reads: Option<u32>,
}

/// Parses one MQTT payload of Zebra IoT Connector events from the reader `reader_id`.
pub fn parse(reader_id: &str, payload: &[u8]) -> Result<SightingBatch, FormatError> {
    let mut fold = Fold::default();
    for event in events::<Event>(payload)? {
        if event.kind == "DIRECTIONALITY" {
            return Err(FormatError::UnsupportedEvent(
                "DIRECTIONALITY mode events (set the reader to SIMPLE, INVENTORY, PORTAL, CONVEYOR or CUSTOM)".into(),
            ));
        }
        if !TAG_READ_MODES.contains(&event.kind.as_str()) {
            continue;
        }
        let data = event
            .data
            .ok_or_else(|| FormatError::MissingField("data".into()))?;
        let data = TagData::deserialize(data).map_err(|e| match from_json(e) {
            FormatError::MissingField(f) => FormatError::MissingField(format!("data.{f}")),
            other => other,
        })?;
        match data.format.as_deref() {
            None | Some("epc") => {}
            Some(other) => {
                return Err(FormatError::UnsupportedEvent(format!(
                    "data.format {:?}: only \"epc\" tag ids are taken",
                    other.chars().take(32).collect::<String>()
                )));
            }
        }
        let timestamp = event
            .timestamp
            .ok_or_else(|| FormatError::MissingField("timestamp".into()))?;
        fold.add(Read {
            tag_id: data.id_hex,
            seen_ms: unix_ms("timestamp", &timestamp)?,
            read_count: data.reads.unwrap_or(1),
            rssi_dbm: data.peak_rssi,
            antenna: data.antenna.unwrap_or(0),
        });
    }
    Ok(fold.finish(reader_id))
}

#[cfg(test)]
mod tests {
    use greenplate_proto::v1::Sighting;

    use super::super::{Format, MAX_EVENTS, parse as parse_format};
    use super::*;

    const SIMPLE: &[u8] = include_bytes!("../../../tests/data/formats/zebra-simple.json");
    const BATCH: &[u8] = include_bytes!("../../../tests/data/formats/zebra-inventory-batch.json");
    const CUSTOM: &[u8] = include_bytes!("../../../tests/data/formats/zebra-custom.json");

    /// 2023-11-14T22:13:20Z.
    const T0: i64 = 1_700_000_000_000;

    fn reason(payload: &str) -> &'static str {
        parse("rd-1", payload.as_bytes()).unwrap_err().reason()
    }

    fn event(kind: &str, data: &str) -> String {
        format!(r#"{{"data":{data},"timestamp":"2023-11-14T22:13:20.000+0000","type":"{kind}"}}"#)
    }

    #[test]
    fn documented_example_is_the_first_event_of_the_batch_file() {
        let doc = include_str!("zebra.rs");
        let block: String = doc
            .split("```json")
            .nth(1)
            .and_then(|rest| rest.split("//! ```").next())
            .unwrap()
            .lines()
            .map(|l| l.trim_start().trim_start_matches("//!"))
            .collect();
        let documented: serde_json::Value = serde_json::from_str(&block).unwrap();
        let file: serde_json::Value = serde_json::from_slice(BATCH).unwrap();
        assert_eq!(Some(&documented), file.get(0));
    }

    #[test]
    fn simple_mode_event() {
        let batch = parse_format(Format::Zebra, "rd-1", SIMPLE).unwrap();
        assert_eq!(
            batch,
            SightingBatch {
                reader_id: "rd-1".into(),
                seq: 0,
                sent_at_ms: T0 + 512,
                sightings: vec![Sighting {
                    tag_id: "e28011606000020934d6faf7".into(),
                    first_seen_ms: T0 + 512,
                    last_seen_ms: T0 + 512,
                    read_count: 1,
                    peak_rssi_dbm: 0,
                    antenna: 0,
                }],
            }
        );
    }

    #[test]
    fn batched_inventory_events_fold_per_tag() {
        let batch = parse("rd-1", BATCH).unwrap();
        assert_eq!(
            batch,
            SightingBatch {
                reader_id: "rd-1".into(),
                seq: 0,
                sent_at_ms: T0 + 2_006,
                sightings: vec![
                    Sighting {
                        tag_id: "e28011606000020934d6faf7".into(),
                        first_seen_ms: T0 + 1_004,
                        last_seen_ms: T0 + 2_006,
                        read_count: 20,
                        peak_rssi_dbm: -48,
                        antenna: 2,
                    },
                    Sighting {
                        tag_id: "e2801170200014cd9b5a08ec".into(),
                        first_seen_ms: T0 + 1_004,
                        last_seen_ms: T0 + 1_004,
                        read_count: 3,
                        peak_rssi_dbm: -61,
                        antenna: 2,
                    },
                ],
            }
        );
        // The same events one per line.
        let file: Vec<serde_json::Value> = serde_json::from_slice(BATCH).unwrap();
        let lines: Vec<String> = file.iter().map(|e| e.to_string()).collect();
        assert_eq!(parse("rd-1", lines.join("\n").as_bytes()), Ok(batch));
    }

    #[test]
    fn custom_mode_with_all_metadata() {
        let batch = parse("rd-1", CUSTOM).unwrap();
        assert_eq!(
            batch.sightings,
            vec![Sighting {
                tag_id: "e2801170200014cd9b5a08ec".into(),
                first_seen_ms: T0 + 851,
                last_seen_ms: T0 + 851,
                read_count: 1,
                peak_rssi_dbm: -54,
                antenna: 3,
            }]
        );
    }

    #[test]
    fn other_event_types_are_skipped() {
        let heartbeat = r#"{"component":"RG","data":{"radio_control":{"antennas":{"1":"connected"}}},"eventNum":372,"timestamp":"2023-11-14T22:13:20.000+0000","type":"heartbeat"}"#;
        let gpi = r#"{"data":{"pin":1,"state":"HIGH"},"timestamp":"whenever","type":"gpi"}"#;
        let batch = parse("rd-1", format!("[{heartbeat},{gpi}]").as_bytes()).unwrap();
        assert!(batch.sightings.is_empty());
        let mixed = format!(
            "{heartbeat}\n{}",
            event("SIMPLE", r#"{"idHex":"e28011606000020934d6faf7"}"#)
        );
        assert_eq!(parse("rd-1", mixed.as_bytes()).unwrap().sightings.len(), 1);
        // Types are the documented upper-case mode names.
        let lower = event("simple", r#"{"idHex":"e28011606000020934d6faf7"}"#);
        assert!(
            parse("rd-1", lower.as_bytes())
                .unwrap()
                .sightings
                .is_empty()
        );
    }

    #[test]
    fn unsupported_events() {
        let e = parse("rd-1", event("DIRECTIONALITY", "{}").as_bytes()).unwrap_err();
        assert_eq!(e.reason(), "unsupported_event");
        let tid = event(
            "CUSTOM",
            r#"{"idHex":"e2801170200014cd9b5a08ec","format":"tid"}"#,
        );
        let e = parse("rd-1", tid.as_bytes()).unwrap_err();
        assert!(
            matches!(e, FormatError::UnsupportedEvent(ref m) if m.contains("tid")),
            "{e}"
        );
        assert_eq!(e.reason(), "unsupported_event");
    }

    #[test]
    fn malformed_json() {
        for bad in ["", "\n", "{\"type\":", "[", "{\"type\":\"x\"}}", "SIMPLE"] {
            assert_eq!(reason(bad), "malformed_json", "{bad:?}");
        }
        assert_eq!(
            parse("rd-1", &BATCH[..BATCH.len() - 3])
                .unwrap_err()
                .reason(),
            "malformed_json"
        );
    }

    #[test]
    fn missing_fields() {
        let e = parse("rd-1", br#"{"data":{},"timestamp":"2023-11-14T22:13:20Z"}"#).unwrap_err();
        assert_eq!(e, FormatError::MissingField("type".into()));
        assert_eq!(e.reason(), "missing_field");
        let e = parse(
            "rd-1",
            event("INVENTORY", r#"{"antenna":1,"reads":2}"#).as_bytes(),
        );
        assert_eq!(e, Err(FormatError::MissingField("data.idHex".into())));
        let e = parse(
            "rd-1",
            br#"{"timestamp":"2023-11-14T22:13:20Z","type":"SIMPLE"}"#,
        );
        assert_eq!(e, Err(FormatError::MissingField("data".into())));
        let e = parse("rd-1", br#"{"data":{"idHex":"e280"},"type":"PORTAL"}"#);
        assert_eq!(e, Err(FormatError::MissingField("timestamp".into())));
    }

    #[test]
    fn wrong_types() {
        for bad in [
            r#"{"data":{"idHex":"e280"},"timestamp":"2023-11-14T22:13:20Z","type":1}"#.to_owned(),
            r#"{"data":{"idHex":"e280"},"timestamp":1700000000,"type":"SIMPLE"}"#.to_owned(),
            event("SIMPLE", r#""e280""#),
            event("SIMPLE", r#"[{"idHex":"e280"}]"#),
            event("SIMPLE", r#"{"idHex":12}"#),
            event("SIMPLE", r#"{"idHex":"e280","format":1}"#),
            event("INVENTORY", r#"{"idHex":"e280","antenna":"1"}"#),
            event("INVENTORY", r#"{"idHex":"e280","peakRssi":-52.5}"#),
            event("INVENTORY", r#"{"idHex":"e280","reads":-1}"#),
            event("INVENTORY", r#"{"idHex":"e280","reads":4294967296}"#),
            "[[]]".to_owned(),
            "true".to_owned(),
        ] {
            assert_eq!(reason(&bad), "wrong_type", "{bad}");
        }
    }

    #[test]
    fn bad_timestamps() {
        for bad in [
            "2023-11-14T22:13:20.000 +0000",
            "2023-11-14T22:13:20.000",
            "2023-11-14T22:13:20.000+000",
            "2023-11-14T25:13:20.000+0000",
            "1700000000000",
            "",
        ] {
            let e = format!(r#"{{"data":{{"idHex":"e280"}},"timestamp":"{bad}","type":"SIMPLE"}}"#);
            let e = parse("rd-1", e.as_bytes()).unwrap_err();
            assert_eq!(
                e,
                FormatError::BadTimestampFormat {
                    field: "timestamp",
                    value: bad.into()
                }
            );
            assert_eq!(e.reason(), "bad_timestamp_format");
        }
        let z = r#"{"data":{"idHex":"e280"},"timestamp":"2023-11-14T22:13:20Z","type":"SIMPLE"}"#;
        assert_eq!(parse("rd-1", z.as_bytes()).unwrap().sent_at_ms, T0);
    }

    #[test]
    fn too_many_events() {
        let one = event("SIMPLE", r#"{"idHex":"e28011606000020934d6faf7"}"#);
        let array = |n| format!("[{}]", vec![one.as_str(); n].join(","));
        let batch = parse("rd-1", array(MAX_EVENTS).as_bytes()).unwrap();
        assert_eq!(batch.sightings.len(), 1);
        assert_eq!(batch.sightings[0].read_count, MAX_EVENTS as u32);
        let e = parse("rd-1", array(MAX_EVENTS + 1).as_bytes()).unwrap_err();
        assert_eq!(e, FormatError::TooManyEvents);
        assert_eq!(e.reason(), "too_many_events");
    }
}
