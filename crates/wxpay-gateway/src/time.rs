//! Wall-clock helpers: the gateway stores Unix milliseconds and shows RFC 3339 in UTC.

use std::time::{SystemTime, UNIX_EPOCH};

/// Now, in Unix milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// `2026-11-27T03:04:05.678Z` for Unix milliseconds.
pub fn rfc3339(ms: i64) -> String {
    wxpay_protocol::rfc3339_utc_millis(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_is_utc_with_milliseconds() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_795_747_302_648), "2026-11-27T02:41:42.648Z");
    }
}
