//! Unsealed reader formats: the JSON that readers which cannot seal publish on their own
//! topic `greenplate/readers/{id}/sightings`, parsed into the native [`SightingBatch`] so the
//! rest of the pipeline (decode checks tag ids and clocks, then lookup and alerting) does not
//! care where a batch came from.
//!
//! An operator marks each reader with a [`Format`]. [`Format::Sealed`] is the native
//! contract (a `SealedSightingBatch`, opened by `pipeline::open`); the others are parsed by
//! [`parse`]:
//! - [`json`]: greenplate's own documented JSON, a `SightingBatch` spelled in JSON, for
//!   simple gateways.
//! - [`impinj`]: Impinj IoT device interface (R700 family) tag inventory events.
//! - [`zebra`]: Zebra IoT Connector (FX7500, FX9600, ATR7000) tag data events.
//!
//! # What accepting an unsealed format trusts
//!
//! A sealed batch carries its own proof: only the holder of the reader's secret can seal a
//! batch that opens with the reader's key, and no other client of the broker can read it.
//! An unsealed payload carries no proof at all. Marking a reader with an unsealed format
//! trusts only the broker's per-reader MQTT credentials (client id = username = reader id,
//! password = the reader's secret):
//! - The payload is not authenticated end to end. Whatever arrives on the reader's topic is
//!   taken as that reader's sightings; nothing in it shows who wrote it.
//! - Any client that learns the reader's password (read off the device's configuration,
//!   sniffed on the wire: the embedded broker speaks plain MQTT, without TLS) can speak for
//!   the reader: report bikes where they are not, or hide the ones that are.
//! - The broker lets any authenticated client subscribe to any topic, so every other client
//!   subscribed to `#` (or to `greenplate/readers/+/sightings`) reads these payloads in
//!   clear: where and when each tag passed.
//! - The binding of topic to reader is only as strong as the broker's check that a client
//!   publishes on its own topic. The embedded broker today authenticates clients but does
//!   not check which reader's topic a publish goes to, and ingest does not see the
//!   publisher's identity: until one of them does, any provisioned reader's credentials can
//!   speak for every reader marked unsealed.
//! - Replay protection is weaker. The greenplate JSON format keeps a `seq` and its replay
//!   check; Impinj and Zebra readers have no batch counter, so their batches carry `seq = 0`
//!   and the pipeline must skip the seq replay check for them (for an unsealed format, and
//!   only when `seq` is 0; [`json`] refuses `seq = 0`). A re-sent or replayed message is then
//!   processed again: its sightings fold into the same pass of the tag past the reader (the
//!   alerting engine takes later sightings of a matter as updates of one incident), and
//!   `decode`'s clock-skew window bounds how late a replay is still taken.
//!
//! Use an unsealed format only for readers that cannot seal, on a network the operator
//! controls, and prefer sealing gateways where they exist.
//!
//! # Limits
//! The broker already caps the payload size (`mqtt.max_payload_bytes`). On top of that one
//! message may carry at most [`MAX_EVENTS`] events (tag reads, ignored events included) or
//! sightings; more is refused as a whole with [`FormatError::TooManyEvents`]. Nothing here
//! panics on any input: every field is read through serde and every failure is a
//! [`FormatError`] with a metric label ([`FormatError::reason`]).
//!
//! Tag ids are kept as the reader wrote them; `decode` refuses what is not an EPC-96
//! (24 hex digits), one sighting at a time.

pub mod impinj;
pub mod json;
pub mod zebra;

use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;

use greenplate_proto::v1::{Sighting, SightingBatch};
use serde::de::{self, DeserializeOwned, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// The most events (or sightings) one message may carry.
pub const MAX_EVENTS: usize = 10_000;

pub use greenplate_registry::readers::{Format, UnknownFormat};

/// Why an unsealed payload was dropped as a whole. Each has a metric label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("the sealed format is opened by pipeline::open, not parsed as an unsealed format")]
    Sealed,
    #[error("payload is not JSON: {0}")]
    MalformedJson(String),
    #[error("missing field `{0}`")]
    MissingField(String),
    #[error("unknown field `{0}`")]
    UnknownField(String),
    #[error("a field has the wrong type or value: {0}")]
    WrongType(String),
    #[error("unsupported event: {0}")]
    UnsupportedEvent(String),
    #[error("`{field}` is not an RFC 3339 date-time: {value:?}")]
    BadTimestampFormat { field: &'static str, value: String },
    #[error("reader id {found:?} in the payload differs from the topic's {expected:?}")]
    ReaderMismatch { expected: String, found: String },
    #[error("seq must be 1 or more (0 would turn replay protection off)")]
    ZeroSeq,
    #[error("more than {MAX_EVENTS} events in one message")]
    TooManyEvents,
}

impl FormatError {
    /// The metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            FormatError::Sealed => "sealed_format",
            FormatError::MalformedJson(_) => "malformed_json",
            FormatError::MissingField(_) => "missing_field",
            FormatError::UnknownField(_) => "unknown_field",
            FormatError::WrongType(_) => "wrong_type",
            FormatError::UnsupportedEvent(_) => "unsupported_event",
            FormatError::BadTimestampFormat { .. } => "bad_timestamp_format",
            FormatError::ReaderMismatch { .. } => "reader_mismatch",
            FormatError::ZeroSeq => "zero_seq",
            FormatError::TooManyEvents => "too_many_events",
        }
    }
}

/// Parses one unsealed payload from the reader `reader_id` (the id in its topic) into a
/// native batch. [`Format::Sealed`] is refused: sealed batches go through `pipeline::open`.
pub fn parse(
    format: Format,
    reader_id: &str,
    payload: &[u8],
) -> Result<SightingBatch, FormatError> {
    match format {
        Format::Sealed => Err(FormatError::Sealed),
        Format::Json => json::parse(reader_id, payload),
        Format::Impinj => impinj::parse(reader_id, payload),
        Format::Zebra => zebra::parse(reader_id, payload),
    }
}

/// The start of the error message of [`Capped`] when a list is too long (and of no message
/// serde writes itself).
const TOO_MANY: &str = "greenplate: too many events";

/// Maps a serde_json error to a typed rejection.
///
/// serde_json reports every schema mismatch as [`serde_json::error::Category::Data`]; the
/// kind is told by the start of the message, which is serde's own wording for
/// `de::Error::missing_field` ("missing field `x`") and `de::Error::unknown_field`
/// ("unknown field `x`, expected ..."). The unit tests of each format pin these.
fn from_json(e: serde_json::Error) -> FormatError {
    use serde_json::error::Category;
    let msg = e.to_string();
    match e.classify() {
        Category::Io | Category::Syntax | Category::Eof => FormatError::MalformedJson(msg),
        Category::Data if msg.starts_with(TOO_MANY) => FormatError::TooManyEvents,
        Category::Data if msg.starts_with("missing field") => {
            FormatError::MissingField(quoted(&msg).to_owned())
        }
        Category::Data if msg.starts_with("unknown field") => {
            FormatError::UnknownField(quoted(&msg).to_owned())
        }
        Category::Data => FormatError::WrongType(msg),
    }
}

/// The first `quoted` name in a serde message, or the whole message.
fn quoted(msg: &str) -> &str {
    msg.split('`').nth(1).unwrap_or(msg)
}

/// A JSON array of at most [`MAX_EVENTS`] elements; reading stops at the first one more.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Capped<T>(pub Vec<T>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Capped<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct CappedVisitor<T>(PhantomData<T>);

        impl<'de, T: Deserialize<'de>> Visitor<'de> for CappedVisitor<T> {
            type Value = Capped<T>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "an array of at most {MAX_EVENTS} elements")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
                while let Some(item) = seq.next_element()? {
                    if items.len() == MAX_EVENTS {
                        return Err(de::Error::custom(TOO_MANY));
                    }
                    items.push(item);
                }
                Ok(Capped(items))
            }
        }

        deserializer.deserialize_seq(CappedVisitor(PhantomData))
    }
}

/// Reads the vendor framings of events: one JSON object, a JSON array of objects, or
/// objects one after the other (newline-delimited JSON, as the readers' HTTP streams
/// write). At most [`MAX_EVENTS`] in all.
fn events<T: DeserializeOwned>(payload: &[u8]) -> Result<Vec<T>, FormatError> {
    let start = payload.iter().position(|b| !b.is_ascii_whitespace());
    match start.and_then(|i| payload.get(i)) {
        None => Err(FormatError::MalformedJson("empty payload".into())),
        Some(b'[') => serde_json::from_slice::<Capped<T>>(payload)
            .map(|c| c.0)
            .map_err(from_json),
        Some(_) => {
            let mut out = Vec::new();
            for event in serde_json::Deserializer::from_slice(payload).into_iter::<T>() {
                if out.len() == MAX_EVENTS {
                    return Err(FormatError::TooManyEvents);
                }
                out.push(event.map_err(from_json)?);
            }
            Ok(out)
        }
    }
}

/// An RFC 3339 date-time (any number of fraction digits up to nanoseconds, `Z` or an
/// offset) as Unix milliseconds. An offset without its colon (`+0000`, ISO 8601 basic, as
/// Zebra writes it) is also taken.
fn unix_ms(field: &'static str, value: &str) -> Result<i64, FormatError> {
    let bad = || FormatError::BadTimestampFormat {
        field,
        value: value.chars().take(64).collect(),
    };
    let parsed = match OffsetDateTime::parse(value, &Rfc3339) {
        Ok(t) => t,
        Err(_) => {
            let fixed = offset_with_colon(value).ok_or_else(bad)?;
            OffsetDateTime::parse(&fixed, &Rfc3339).map_err(|_| bad())?
        }
    };
    i64::try_from(parsed.unix_timestamp_nanos().div_euclid(1_000_000)).map_err(|_| bad())
}

/// `...+hhmm` -> `...+hh:mm`, or `None` if the value does not end that way.
fn offset_with_colon(value: &str) -> Option<String> {
    let (head, offset) = value.split_at_checked(value.len().checked_sub(5)?)?;
    let (sign, digits) = offset.split_at_checked(1)?;
    if !(sign == "+" || sign == "-") || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (hh, mm) = digits.split_at_checked(2)?;
    Some(format!("{head}{sign}{hh}:{mm}"))
}

/// Folds the tag reads of one message into one [`Sighting`] per tag, as a native reader
/// folds its reads over a window: first and last time seen, reads added up, the strongest
/// signal and the antenna that saw it. Tags are told apart without regard to hex case;
/// each keeps the spelling of its first read.
#[derive(Debug, Default)]
struct Fold {
    sightings: Vec<Sighting>,
    peaks: Vec<Option<i32>>,
    by_tag: HashMap<String, usize>,
    latest_ms: Option<i64>,
}

/// One tag read, as the vendor reported it.
#[derive(Debug, Clone, PartialEq)]
struct Read {
    tag_id: String,
    seen_ms: i64,
    read_count: u32,
    rssi_dbm: Option<i32>,
    antenna: u32,
}

impl Fold {
    fn add(&mut self, read: Read) {
        self.latest_ms = Some(self.latest_ms.map_or(read.seen_ms, |t| t.max(read.seen_ms)));
        let key = read.tag_id.to_ascii_uppercase();
        let Some(&i) = self.by_tag.get(&key) else {
            self.by_tag.insert(key, self.sightings.len());
            self.peaks.push(read.rssi_dbm);
            self.sightings.push(Sighting {
                tag_id: read.tag_id,
                first_seen_ms: read.seen_ms,
                last_seen_ms: read.seen_ms,
                read_count: read.read_count,
                peak_rssi_dbm: 0,
                antenna: read.antenna,
            });
            return;
        };
        if let (Some(s), Some(peak)) = (self.sightings.get_mut(i), self.peaks.get_mut(i)) {
            s.first_seen_ms = s.first_seen_ms.min(read.seen_ms);
            s.last_seen_ms = s.last_seen_ms.max(read.seen_ms);
            s.read_count = s.read_count.saturating_add(read.read_count);
            if let Some(rssi) = read.rssi_dbm.filter(|&r| peak.is_none_or(|p| r > p)) {
                *peak = Some(rssi);
                s.antenna = read.antenna;
            }
        }
    }

    /// The batch: `seq` 0 (no counter), sent at the latest read.
    fn finish(self, reader_id: &str) -> SightingBatch {
        let mut sightings = self.sightings;
        for (s, peak) in sightings.iter_mut().zip(self.peaks) {
            s.peak_rssi_dbm = peak.unwrap_or(0);
        }
        SightingBatch {
            reader_id: reader_id.to_owned(),
            seq: 0,
            sent_at_ms: self.latest_ms.unwrap_or(0),
            sightings,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_names_round_trip() {
        for f in Format::ALL {
            assert_eq!(f.as_str().parse::<Format>(), Ok(f));
            assert_eq!(f.to_string(), f.as_str());
        }
        assert_eq!(
            "Impinj".parse::<Format>(),
            Err(UnknownFormat("Impinj".into()))
        );
        assert_eq!(Format::default(), Format::Sealed);
        #[derive(Deserialize)]
        struct C {
            format: Format,
        }
        let c: C = toml::from_str("format = \"zebra\"").unwrap();
        assert_eq!(c.format, Format::Zebra);
        assert!(toml::from_str::<C>("format = \"xml\"").is_err());
    }

    #[test]
    fn sealed_is_not_parsed_here() {
        let e = parse(Format::Sealed, "r-1", b"{}").unwrap_err();
        assert_eq!(e, FormatError::Sealed);
        assert_eq!(e.reason(), "sealed_format");
    }

    #[test]
    fn timestamps() {
        let ms = |s| unix_ms("t", s);
        assert_eq!(ms("2023-11-14T22:13:20Z"), Ok(1_700_000_000_000));
        assert_eq!(ms("2023-11-14T22:13:20.123456789Z"), Ok(1_700_000_000_123));
        assert_eq!(ms("2023-11-15T06:13:20.5+08:00"), Ok(1_700_000_000_500));
        assert_eq!(ms("2023-11-15T06:13:20.500+0800"), Ok(1_700_000_000_500));
        // RFC 3339 lets a space stand for the T.
        assert_eq!(ms("2023-11-14 22:13:20Z"), Ok(1_700_000_000_000));
        assert_eq!(ms("2023-11-14T16:13:20.001-0600"), Ok(1_700_000_000_001));
        assert_eq!(ms("1969-12-31T23:59:59.999Z"), Ok(-1));
        for bad in [
            "",
            "+0000",
            "1700000000000",
            "2023-11-14T22:13:20",
            "2023-11-14T22:13:20+8",
            "2023-13-14T22:13:20Z",
            "2023-11-14T22:13:20+08:0",
            "2023-11-14T22:13:20+ab12",
            "2023-11-14T22:13:20.Z",
            "2023-11-14T22:13:20Zé",
            "é2023-11-14T22:13:20+0000é",
        ] {
            let e = ms(bad).unwrap_err();
            assert_eq!(e.reason(), "bad_timestamp_format", "{bad:?}");
        }
    }

    #[test]
    fn fold_keeps_one_sighting_per_tag() {
        let read = |tag: &str, t, n, rssi, antenna| Read {
            tag_id: tag.into(),
            seen_ms: t,
            read_count: n,
            rssi_dbm: rssi,
            antenna,
        };
        let mut fold = Fold::default();
        fold.add(read("e2801160600002070000abcd", 20, 1, Some(-60), 1));
        fold.add(read("E28011606000020700001234", 15, 2, None, 3));
        fold.add(read("E2801160600002070000ABCD", 10, 2, Some(-50), 2));
        fold.add(read("e2801160600002070000abcd", 30, u32::MAX, Some(-70), 4));
        let batch = fold.finish("r-1");
        assert_eq!(batch.reader_id, "r-1");
        assert_eq!(batch.seq, 0);
        assert_eq!(batch.sent_at_ms, 30);
        assert_eq!(
            batch.sightings,
            vec![
                Sighting {
                    tag_id: "e2801160600002070000abcd".into(),
                    first_seen_ms: 10,
                    last_seen_ms: 30,
                    read_count: u32::MAX,
                    peak_rssi_dbm: -50,
                    antenna: 2,
                },
                Sighting {
                    tag_id: "E28011606000020700001234".into(),
                    first_seen_ms: 15,
                    last_seen_ms: 15,
                    read_count: 2,
                    peak_rssi_dbm: 0,
                    antenna: 3,
                },
            ]
        );
        assert_eq!(Fold::default().finish("r-1").sent_at_ms, 0);
    }

    #[test]
    fn framings_and_the_cap() {
        #[derive(Debug, Deserialize, PartialEq)]
        struct E {
            n: u32,
        }
        let n = |v: Vec<E>| v.into_iter().map(|e| e.n).collect::<Vec<_>>();
        assert_eq!(events::<E>(b" {\"n\":1} ").map(n), Ok(vec![1]));
        assert_eq!(events::<E>(b"[{\"n\":1},{\"n\":2}]").map(n), Ok(vec![1, 2]));
        assert_eq!(
            events::<E>(b"{\"n\":1}\n{\"n\":2}\r\n{\"n\":3}\n").map(n),
            Ok(vec![1, 2, 3])
        );
        assert_eq!(events::<E>(b"[]").map(n), Ok(vec![]));
        for bad in [
            &b""[..],
            b" \n ",
            b"[{\"n\":1}",
            b"{\"n\":1}]",
            b"[{\"n\":1}][{\"n\":2}]",
            b"\xff",
        ] {
            let e = events::<E>(bad).unwrap_err();
            assert_eq!(
                e.reason(),
                "malformed_json",
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(
            events::<E>(b"{\"n\":\"1\"}").unwrap_err().reason(),
            "wrong_type"
        );
        assert_eq!(
            events::<E>(b"{}").unwrap_err(),
            FormatError::MissingField("n".into())
        );

        let one = "{\"n\":1}";
        let array = |k| format!("[{}]", vec![one; k].join(","));
        let lines = |k| vec![one; k].join("\n");
        assert_eq!(
            events::<E>(array(MAX_EVENTS).as_bytes()).map(|v| v.len()),
            Ok(MAX_EVENTS)
        );
        assert_eq!(
            events::<E>(lines(MAX_EVENTS).as_bytes()).map(|v| v.len()),
            Ok(MAX_EVENTS)
        );
        for too_many in [array(MAX_EVENTS + 1), lines(MAX_EVENTS + 1)] {
            let e = events::<E>(too_many.as_bytes()).unwrap_err();
            assert_eq!(e, FormatError::TooManyEvents);
            assert_eq!(e.reason(), "too_many_events");
        }
        // Reading stops at the first element past the cap: what follows is not read.
        let over = array(MAX_EVENTS + 1);
        let tail = format!("{}, garbage", over.strip_suffix(']').unwrap());
        assert_eq!(
            events::<E>(tail.as_bytes()),
            Err(FormatError::TooManyEvents)
        );
        let tail = format!(
            "{}
 garbage",
            lines(MAX_EVENTS + 1)
        );
        assert_eq!(
            events::<E>(tail.as_bytes()),
            Err(FormatError::TooManyEvents)
        );
    }
}
