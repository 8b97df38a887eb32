//! Stage 1, open: from an MQTT message to a batch we trust, or a rejection with a reason.
//!
//! The topic names the reader; the envelope and the sealed batch must name the same one;
//! the batch must open with that reader's key (so it was sealed by the holder of its
//! secret). Its seq must then be new ([`crate::admit::take_seq`]: a replayed or re-sent
//! batch is processed once, and a late one inside the reader's seq window still is).

use std::sync::Arc;

use greenplate_proto::topics;
use greenplate_proto::v1::{SealedSightingBatch, SightingBatch};
use greenplate_registry::readers::Format;
use greenplate_registry::{Reader, Readers};

pub use crate::admit::Admissions;
use crate::admit::{enabled_reader, take_seq};
use crate::formats;
pub use crate::rejection::Rejection;
use prost::Message;

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
