//! Stage 2, decode: every sighting of any SightingBatch prost can decode from the bytes.
#![no_main]

use greenplate_ingest::pipeline::decode::{self, SightingRejection};
use greenplate_proto::v1::SightingBatch;
use libfuzzer_sys::fuzz_target;
use prost::Message;

/// 2023-11-14T22:13:20Z, and the default clock skew (24 h).
const NOW_MS: i64 = 1_700_000_000_000;
const SKEW_MS: i64 = 24 * 3600 * 1000;

fuzz_target!(|data: &[u8]| {
    let Ok(batch) = SightingBatch::decode(data) else {
        return;
    };
    for s in &batch.sightings {
        match decode::decode(s, NOW_MS, SKEW_MS) {
            Ok(read) => {
                assert!(read.first_seen_ms <= read.last_seen_ms);
                assert!((NOW_MS - SKEW_MS..=NOW_MS + SKEW_MS).contains(&read.first_seen_ms));
                assert!(read.tag.to_string().eq_ignore_ascii_case(s.tag_id.trim()));
            }
            Err(SightingRejection::BadTagId | SightingRejection::BadTimestamp) => {}
        }
    }
});
