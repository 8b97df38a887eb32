//! Why a reader message was dropped: [`Rejection`], one variant per reason, each with its
//! metric label (`greenplate_ingest_batches_rejected_total{reason}`). Every stage that can
//! refuse a message names its reason here.

use greenplate_proto::seal::OpenError;

use crate::formats::FormatError;

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
    #[error(
        "batch seq {seq} was redelivered (its node did not acknowledge it in time) and was \
         processed already"
    )]
    RedeliveredProcessed { seq: u64 },
    #[error(
        "batch seq {seq} was redelivered while this node still processes it; left \
         unacknowledged, so it comes again if that does not finish"
    )]
    RedeliveredInProgress { seq: u64 },
    #[error(
        "this node's lease of the message's partition lapsed (it was paused, or lost the \
         lease); left unacknowledged for the partition's owner"
    )]
    PartitionNotHeld,
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
    #[error(
        "message does not open under its reader's key, and such messages are over their \
         global budget (ingest.unauthentic_messages_per_s)"
    )]
    UnauthenticFlood,
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
            Rejection::RedeliveredProcessed { .. } => "redelivered_processed",
            Rejection::RedeliveredInProgress { .. } => "redelivered_in_progress",
            Rejection::PartitionNotHeld => "partition_not_held",
            Rejection::StatusTime => "status_time",
            Rejection::StaleStatus => "stale_status",
            Rejection::Format(e) => e.reason(),
            Rejection::UnsealedNotAllowed => "unsealed_not_allowed",
            Rejection::Oversized(_) => "oversized",
            Rejection::Flood => "flood",
            Rejection::UnauthenticFlood => "unauthentic_flood",
        }
    }
}
