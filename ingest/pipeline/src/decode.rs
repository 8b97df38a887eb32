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

/// How far from the server's clock a reader's timestamps may be: long into the past (a
/// reader's buffer after an outage), short into the future (a clock ahead of time would make
/// a captured batch alert "today"; `ingest.max_future_skew_ms`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Skew {
    pub past_ms: i64,
    pub future_ms: i64,
}

impl Skew {
    /// `past_ms` back, and `future_ms` ahead but never further than `past_ms`.
    pub fn new(past_ms: i64, future_ms: i64) -> Self {
        Self {
            past_ms,
            future_ms: future_ms.min(past_ms),
        }
    }

    /// Whether `t` is inside the window around `now_ms`.
    pub fn contains(self, now_ms: i64, t: i64) -> bool {
        (now_ms.saturating_sub(self.past_ms)..=now_ms.saturating_add(self.future_ms)).contains(&t)
    }
}

/// The same bound both ways.
impl From<i64> for Skew {
    fn from(ms: i64) -> Self {
        Self::new(ms, ms)
    }
}

/// Checks one sighting against the server clock `now_ms`.
pub fn decode(s: &Sighting, now_ms: i64, skew: impl Into<Skew>) -> Result<Read, SightingRejection> {
    let skew = skew.into();
    let tag = TagId::parse(&s.tag_id).ok_or(SightingRejection::BadTagId)?;
    let in_window = |t: i64| skew.contains(now_ms, t);
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
