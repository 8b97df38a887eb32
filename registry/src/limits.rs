//! Per-caller rate limits on lookups of personal data (a leaf: the registry holds them,
//! the lookups spend them).

use std::collections::HashMap;
use std::sync::Mutex;

use prometheus_client::metrics::counter::Counter;

/// Owner lookups (ListOwnerBikes) a kiosk may make a minute, on average and at once.
pub const OWNER_LOOKUPS_PER_MINUTE: u32 = 30;

/// Each caller's budget of owner lookups: a token bucket per caller id.
#[derive(Debug, Default)]
pub struct OwnerLookups {
    buckets: Mutex<HashMap<String, (f64, i64)>>,
    /// Owner lookups refused over the rate.
    pub refused: Counter,
}

impl OwnerLookups {
    /// Takes one lookup of `caller`'s budget at `now_ms`, if there is one.
    pub(crate) fn take(&self, caller: &str, now_ms: i64) -> bool {
        let per_ms = f64::from(OWNER_LOOKUPS_PER_MINUTE) / 60_000.0;
        let burst = f64::from(OWNER_LOOKUPS_PER_MINUTE);
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let (tokens, last) = buckets.entry(caller.to_owned()).or_insert((burst, now_ms));
        *tokens = (*tokens + (now_ms - *last).max(0) as f64 * per_ms).min(burst);
        *last = now_ms;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}
