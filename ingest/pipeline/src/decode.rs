//! Stage 2, decode: each sighting of an opened batch checked and turned into a [`Read`].

use greenplate_proto::v1::Sighting;
use greenplate_registry::TagId;

/// A checked sighting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Read {
    pub tag: TagId,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    /// Reads the reader folded into this sighting (at least 1).
    pub reads: u32,
    pub peak_rssi_dbm: i32,
}

/// Why one sighting in a batch was dropped (the rest of the batch is kept).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SightingRejection {
    #[error("tag id is not 24 hex digits")]
    BadTagId,
    #[error("timestamps are out of order or too far from the server clock")]
    BadTimestamp,
}

impl SightingRejection {
    pub fn reason(self) -> &'static str {
        match self {
            SightingRejection::BadTagId => "bad_tag_id",
            SightingRejection::BadTimestamp => "bad_timestamp",
        }
    }
}

/// Checks one sighting against the server clock `now_ms`.
pub fn decode(s: &Sighting, now_ms: i64, max_skew_ms: i64) -> Result<Read, SightingRejection> {
    let tag = TagId::parse(&s.tag_id).ok_or(SightingRejection::BadTagId)?;
    let in_window = |t: i64| {
        (now_ms.saturating_sub(max_skew_ms)..=now_ms.saturating_add(max_skew_ms)).contains(&t)
    };
    if s.last_seen_ms < s.first_seen_ms || !in_window(s.first_seen_ms) || !in_window(s.last_seen_ms)
    {
        return Err(SightingRejection::BadTimestamp);
    }
    Ok(Read {
        tag,
        first_seen_ms: s.first_seen_ms,
        last_seen_ms: s.last_seen_ms,
        reads: s.read_count.max(1),
        peak_rssi_dbm: s.peak_rssi_dbm,
    })
}
