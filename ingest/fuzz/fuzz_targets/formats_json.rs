//! Unsealed format, greenplate JSON: any bytes give a batch for the topic's reader or a typed
//! rejection, and what parses goes through decode without trouble.
#![no_main]

use greenplate_ingest::pipeline::decode;
use greenplate_ingest::pipeline::formats::{self, Format, MAX_EVENTS};
use libfuzzer_sys::fuzz_target;

/// 2023-11-14T22:13:20Z, and the default clock skew (24 h).
const NOW_MS: i64 = 1_700_000_000_000;
const SKEW_MS: i64 = 24 * 3600 * 1000;

fuzz_target!(|data: &[u8]| {
    match formats::parse(Format::Json, "rd-fuzz", data) {
        Ok(batch) => {
            assert_eq!(batch.reader_id, "rd-fuzz");
            assert!(batch.seq >= 1, "json batches keep replay protection");
            assert!(batch.sightings.len() <= MAX_EVENTS);
            for s in &batch.sightings {
                if let Ok(read) = decode::decode(s, NOW_MS, SKEW_MS) {
                    assert!(read.first_seen_ms <= read.last_seen_ms);
                }
            }
        }
        Err(e) => {
            assert!(!e.reason().is_empty());
            let _ = e.to_string();
        }
    }
});
