//! Time: the gateway stores Unix milliseconds, shows RFC 3339 in UTC, and reads the time from
//! one [`Clock`] that tests can move.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// The gateway's clock: the system clock plus an offset that only ever grows. Production
/// never moves it; tests move it forward to make orders expire or fall due for a check
/// without waiting.
/// Cloning gives another handle on the same clock: the calls to WeChat Pay read the time
/// the rest of the gateway reads.
#[derive(Clone, Debug, Default)]
pub struct Clock {
    offset: Arc<AtomicI64>,
}

impl Clock {
    /// Moves the clock forward.
    pub fn advance(&self, by: std::time::Duration) {
        self.offset.fetch_add(by.as_millis() as i64, Ordering::Relaxed);
    }

    /// Milliseconds since the Unix epoch, by this clock.
    pub fn now_ms(&self) -> i64 {
        now_ms() + self.offset.load(Ordering::Relaxed)
    }
}

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
