//! Stage 1, open: from an MQTT message to a batch we trust, or a rejection with a reason.
//!
//! The topic names the reader; the envelope and the sealed batch must name the same one;
//! the batch must open with that reader's key (so it was sealed by the holder of its
//! secret). Its seq must then be new ([`super::admit::take_seq`]: a replayed or re-sent
//! batch is processed once, and a late one inside the reader's seq window still is).

use std::sync::Arc;

use greenplate_proto::seal::OpenError;
use greenplate_proto::topics;
use greenplate_proto::v1::{SealedSightingBatch, SightingBatch};
use greenplate_registry::readers::Format;
use greenplate_registry::{Reader, Readers};

pub use super::admit::Admissions;
use super::admit::take_seq;
use super::formats::{self, FormatError};
use prost::Message;

/// Why a reader message was dropped. Each has a metric label.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum Rejection {
    #[error("topic is not greenplate/readers/{{id}}/sightings or .../status")]
    Topic,
    #[error("payload is not a SealedSightingBatch: {0}")]
    Malformed(String),
    #[error("reader is not provisioned")]
    UnknownReader,
    #[error("reader is disabled")]
    ReaderDisabled,
    #[error("reader id in the envelope or batch differs from the topic's")]
    ReaderMismatch,
    #[error("batch does not open: {0}")]
    Unsealed(#[from] OpenError),
    #[error("batch seq {seq} was already processed or is too old (highest {last})")]
    Replay { seq: u64, last: u64, too_old: bool },
    #[error("status time is too far from the server clock")]
    StatusTime,
    #[error("status is a replay, or a will of a session that is not the reader's current one")]
    StaleStatus,
    #[error(transparent)]
    Format(#[from] FormatError),
    #[error(
        "reader sends an unsealed format, which the embedded broker cannot bind to the reader \
         (see ingest.unsealed_on_embedded_broker)"
    )]
    UnsealedNotAllowed,
    #[error("payload of {0} bytes is over mqtt.max_payload_bytes")]
    Oversized(usize),
    #[error("reader is over its message budget (ingest.reader_messages_per_s)")]
    Flood,
}

impl Rejection {
    /// The metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            Rejection::Topic => "topic",
            Rejection::Malformed(_) => "malformed",
            Rejection::UnknownReader => "unknown_reader",
            Rejection::ReaderDisabled => "reader_disabled",
            Rejection::ReaderMismatch => "reader_mismatch",
            Rejection::Unsealed(OpenError::Decode(_)) => "malformed_batch",
            Rejection::Unsealed(_) => "unsealed",
            Rejection::Replay { too_old: false, .. } => "replay",
            Rejection::Replay { too_old: true, .. } => "seq_too_old",
            Rejection::StatusTime => "status_time",
            Rejection::StaleStatus => "stale_status",
            Rejection::Format(e) => e.reason(),
            Rejection::UnsealedNotAllowed => "unsealed_not_allowed",
            Rejection::Oversized(_) => "oversized",
            Rejection::Flood => "flood",
        }
    }
}

/// Opens one message from a reader that seals (the native contract). The topic is checked
/// before anything is decoded.
pub fn open(
    readers: &Readers,
    admissions: &Admissions,
    topic: &[u8],
    payload: &[u8],
) -> Result<(Arc<Reader>, SightingBatch), Rejection> {
    open_message(readers, admissions, topic, payload, false)
}

/// Opens one message in whatever format its reader was provisioned with. Unsealed formats
/// prove nothing about who wrote them, so they are taken only where `unsealed_allowed`
/// (an external broker whose ACLs bind each reader to its topic, or an operator's explicit
/// choice); otherwise they are refused with `unsealed_not_allowed`.
pub fn open_message(
    readers: &Readers,
    admissions: &Admissions,
    topic: &[u8],
    payload: &[u8],
    unsealed_allowed: bool,
) -> Result<(Arc<Reader>, SightingBatch), Rejection> {
    let topic = std::str::from_utf8(topic).map_err(|_| Rejection::Topic)?;
    let reader_id = topics::reader_of_sightings_topic(topic).ok_or(Rejection::Topic)?;
    let reader = enabled_reader(readers, reader_id)?;
    let batch = open_batch(&reader, payload, unsealed_allowed)?;
    take_seq(&admissions.of(&reader), &reader, &batch)?;
    Ok((reader, batch))
}

/// The provisioned, enabled reader `id`.
pub fn enabled_reader(readers: &Readers, id: &str) -> Result<Arc<Reader>, Rejection> {
    let reader = readers.get(id).ok_or(Rejection::UnknownReader)?;
    if !reader.enabled() {
        return Err(Rejection::ReaderDisabled);
    }
    Ok(reader)
}

/// Opens a sightings payload of a reader already found from its topic (see
/// [`open_message`]): its format and seal; the seq is [`take_seq`]'s.
pub fn open_batch(
    reader: &Reader,
    payload: &[u8],
    unsealed_allowed: bool,
) -> Result<SightingBatch, Rejection> {
    let batch = match reader.format {
        Format::Sealed => open_sealed(reader, payload)?,
        format if unsealed_allowed => {
            let batch = formats::parse(format, &reader.id, payload)?;
            if batch.reader_id != reader.id {
                return Err(Rejection::ReaderMismatch);
            }
            batch
        }
        _ => return Err(Rejection::UnsealedNotAllowed),
    };
    Ok(batch)
}

/// The envelope and the sealed batch must name the reader, and open with its key.
fn open_sealed(reader: &Reader, payload: &[u8]) -> Result<SightingBatch, Rejection> {
    let sealed =
        SealedSightingBatch::decode(payload).map_err(|e| Rejection::Malformed(e.to_string()))?;
    if sealed.reader_id != reader.id {
        return Err(Rejection::ReaderMismatch);
    }
    let batch = reader.open_batch(&sealed)?;
    if batch.reader_id != reader.id {
        return Err(Rejection::ReaderMismatch);
    }
    Ok(batch)
}
