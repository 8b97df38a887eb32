//! Time as greenplate shows it: Unix milliseconds everywhere inside, turned into text at
//! the edges (camera URLs, partner payloads, owners' texts, the web pages) by these, in UTC
//! or in China Standard Time (UTC+8, no daylight saving), where the district is.

use time::{OffsetDateTime, UtcOffset};

/// China Standard Time, UTC+8.
pub const CST: UtcOffset = match UtcOffset::from_hms(8, 0, 0) {
    Ok(o) => o,
    Err(_) => UtcOffset::UTC,
};

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Unix ms as a date and time at `offset` (to the second); `None` out of `time`'s range.
pub fn at(ms: i64, offset: UtcOffset) -> Option<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000))
        .ok()
        .map(|t| t.to_offset(offset))
}

/// Unix ms as RFC 3339 at `offset`, to the second (`2026-12-06T08:30:00Z`,
/// `2026-12-06T16:30:00+08:00`); empty out of range.
pub fn rfc3339(ms: i64, offset: UtcOffset) -> String {
    at(ms, offset)
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_and_china_standard_time() {
        let ms = 1_765_000_000_123;
        assert_eq!(rfc3339(ms, UtcOffset::UTC), "2025-12-06T05:46:40Z");
        assert_eq!(rfc3339(ms, CST), "2025-12-06T13:46:40+08:00");
        assert_eq!(at(ms, CST).unwrap().hour(), 13);
        assert_eq!(rfc3339(i64::MAX, CST), "");
    }
}
