//! What the web pages count and limit (a leaf: the state holds them, handlers spend them):
//! sign-ins by outcome, and the live feeds refused; sign-in attempts per client address and
//! per token, as token buckets.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

use greenplate_registry::Credential;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// Sign-in attempts one client address, or one token, may make a minute (and at once).
pub const SIGN_INS_PER_MINUTE: f64 = 10.0;

/// Live feeds (`/command/events`) one session may hold open at once.
pub const FEEDS_PER_SESSION: usize = 4;

/// Keys a limiter remembers at most; past it, the ones whose bucket is full again go.
const MAX_KEYS: usize = 100_000;

/// Sign-in outcomes, the `outcome` label.
pub const SIGNED_IN: &str = "signed_in";
pub const UNKNOWN_TOKEN: &str = "unknown_token";
pub const WRONG_KIND: &str = "wrong_kind";
pub const OTHER_SITE: &str = "other_site";
pub const RATE_LIMITED: &str = "rate_limited";
const OUTCOMES: [&str; 5] = [
    SIGNED_IN,
    UNKNOWN_TOKEN,
    WRONG_KIND,
    OTHER_SITE,
    RATE_LIMITED,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    pub outcome: &'static str,
}

/// The web pages' counters.
#[derive(Debug, Clone)]
pub struct WebMetrics {
    /// Sign-in attempts by outcome (the failed ones among them).
    pub sign_ins: Family<Outcome, Counter>,
    /// Live feeds refused: the session already held [`FEEDS_PER_SESSION`].
    pub feeds_refused: Counter,
}

impl WebMetrics {
    pub fn new() -> Self {
        let sign_ins = Family::default();
        for outcome in OUTCOMES {
            drop(sign_ins.get_or_create(&Outcome { outcome }));
        }
        Self {
            sign_ins,
            feeds_refused: Counter::default(),
        }
    }

    /// Registers `greenplate_web_sign_ins_total{outcome}` and
    /// `greenplate_web_live_feeds_refused_total`.
    pub fn register(&self, registry: &mut Registry) {
        let sub = registry.sub_registry_with_prefix("web");
        sub.register(
            "sign_ins",
            "Web sign-in attempts by outcome",
            self.sign_ins.clone(),
        );
        sub.register(
            "live_feeds_refused",
            "Command-center live feeds refused: the session held the most allowed",
            self.feeds_refused.clone(),
        );
    }

    pub fn sign_in(&self, outcome: &'static str) {
        self.sign_ins.get_or_create(&Outcome { outcome }).inc();
    }
}

impl Default for WebMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Token buckets by key: [`SIGN_INS_PER_MINUTE`] a minute, as many at once.
#[derive(Debug)]
pub struct Buckets<K> {
    map: Mutex<HashMap<K, (f64, Instant)>>,
}

impl<K> Default for Buckets<K> {
    fn default() -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: std::hash::Hash + Eq + Clone> Buckets<K> {
    /// Takes one attempt of `key`'s budget at `now`, if there is one.
    pub fn take(&self, key: &K, now: Instant) -> bool {
        let per_s = SIGN_INS_PER_MINUTE / 60.0;
        let burst = SIGN_INS_PER_MINUTE;
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_KEYS && !map.contains_key(key) {
            map.retain(|_, (tokens, at)| {
                *tokens + now.saturating_duration_since(*at).as_secs_f64() * per_s < burst
            });
        }
        let (tokens, at) = map.entry(key.clone()).or_insert((burst, now));
        *tokens = (*tokens + now.saturating_duration_since(*at).as_secs_f64() * per_s).min(burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Sign-in budgets: per client address and per token (its hash), so neither one client
/// trying many tokens nor many clients trying one token go fast.
#[derive(Debug, Default)]
pub struct SignInLimits {
    pub clients: Buckets<IpAddr>,
    pub tokens: Buckets<Credential>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let b = Buckets::<u8>::default();
        let t0 = Instant::now();
        for _ in 0..10 {
            assert!(b.take(&1, t0));
        }
        assert!(!b.take(&1, t0));
        assert!(b.take(&2, t0), "another key has its own budget");
        // One more every 6 s.
        assert!(!b.take(&1, t0 + Duration::from_secs(5)));
        assert!(b.take(&1, t0 + Duration::from_secs(12)));
    }
}
