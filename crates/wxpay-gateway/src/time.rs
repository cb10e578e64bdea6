//! Time: the gateway stores moments as Unix milliseconds ([`Millis`]), shows RFC 3339 in UTC,
//! and reads the time from one [`Clock`] that tests can move.

use std::fmt;
use std::ops::{Add, Sub};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A moment, in milliseconds since the Unix epoch: how records keep time, so that a moment
/// cannot be mistaken for an amount, an id or a count of seconds.
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct Millis(i64);

impl Millis {
    /// The moment `ms` milliseconds after the epoch.
    pub const fn from_unix_ms(ms: i64) -> Millis {
        Millis(ms)
    }

    /// The moment `secs` whole seconds after the epoch.
    pub const fn from_unix_secs(secs: i64) -> Millis {
        Millis(secs.saturating_mul(1000))
    }

    /// Milliseconds since the epoch.
    pub const fn unix_ms(self) -> i64 {
        self.0
    }

    /// Whole seconds since the epoch (rounded down).
    pub const fn unix_secs(self) -> i64 {
        self.0.div_euclid(1000)
    }

    /// Milliseconds from `earlier` to this moment (negative when `earlier` is later).
    pub const fn ms_since(self, earlier: Millis) -> i64 {
        self.0.saturating_sub(earlier.0)
    }

    /// `2026-11-27T03:04:05.678Z`.
    pub fn rfc3339(self) -> String {
        rfc3339(self.0)
    }
}

fn ms_of(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Add<Duration> for Millis {
    type Output = Millis;
    fn add(self, d: Duration) -> Millis {
        Millis(self.0.saturating_add(ms_of(d)))
    }
}

impl Sub<Duration> for Millis {
    type Output = Millis;
    fn sub(self, d: Duration) -> Millis {
        Millis(self.0.saturating_sub(ms_of(d)))
    }
}

impl fmt::Debug for Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Millis({})", self.0)
    }
}

impl fmt::Display for Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.rfc3339())
    }
}

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
    pub fn advance(&self, by: Duration) {
        self.offset.fetch_add(ms_of(by), Ordering::Relaxed);
    }

    /// Now, by this clock.
    pub fn now(&self) -> Millis {
        Millis(now_ms() + self.offset.load(Ordering::Relaxed))
    }
}

/// Now, in Unix milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(ms_of).unwrap_or(0)
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

    #[test]
    fn a_moment_moves_by_durations_and_never_overflows() {
        let t = Millis::from_unix_ms(1_795_747_302_648);
        assert_eq!((t + Duration::from_secs(2)).unix_ms(), 1_795_747_304_648);
        assert_eq!((t - Duration::from_millis(648)).unix_secs(), 1_795_747_302);
        assert_eq!((t + Duration::from_secs(1)).ms_since(t), 1000);
        assert_eq!(Millis::from_unix_ms(-1).unix_secs(), -1);
        assert_eq!(
            Millis::from_unix_ms(i64::MAX - 1) + Duration::MAX,
            Millis::from_unix_ms(i64::MAX)
        );
        assert_eq!(t.to_string(), "2026-11-27T02:41:42.648Z");
    }
}
