//! The circuit breaker on order creation: when WeChat Pay has failed one merchant's last
//! orders (no answer, or `SYSTEMERROR` after every allowed attempt), new orders are refused
//! at once (503) for a while instead of each waiting out the timeouts and retries; then one
//! order is let through as a probe, and its outcome closes the breaker or opens it again.
//! Notifications never pass through it: they need nothing from WeChat Pay.

use std::sync::Mutex;
use std::time::Duration;

use crate::time::Millis;

/// The breaker's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Calls go through; this many failed in a row.
    Closed { failures: u32 },
    /// Calls are refused until then.
    Open { until: Millis },
    /// One call (the probe) is under way; the others are refused until it ends.
    Probing,
}

/// A circuit breaker for one merchant's order creation.
#[derive(Debug)]
pub(crate) struct Breaker {
    state: Mutex<State>,
    /// Failures in a row that open it.
    after: u32,
    /// How long it stays open.
    open_for: Duration,
}

/// Whether a call may go: `Go` (and whether it is the probe, whose outcome must be told),
/// or refused until a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Admission {
    /// The call may go.
    Go,
    /// The breaker is open (or another call probes) until then.
    Refused { until: Millis },
}

impl Breaker {
    /// A closed breaker that opens after `after` failures in a row for `open_for`; `after`
    /// 0 never opens.
    pub(crate) fn new(after: u32, open_for: Duration) -> Breaker {
        Breaker {
            state: Mutex::new(State::Closed { failures: 0 }),
            after,
            open_for,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while the lock was held left a valid state (every write is one assignment).
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a call may go at `now`. Once the breaker's time is up the first call is the
    /// probe; the calls that come while it is under way are refused for the same time again.
    pub(crate) fn admit(&self, now: Millis) -> Admission {
        let mut state = self.lock();
        match *state {
            State::Closed { .. } => Admission::Go,
            State::Open { until } if now < until => Admission::Refused { until },
            State::Open { .. } => {
                *state = State::Probing;
                Admission::Go
            }
            State::Probing => Admission::Refused {
                until: now + self.open_for,
            },
        }
    }

    /// A call WeChat Pay answered (whatever it said): the breaker closes.
    pub(crate) fn answered(&self) {
        *self.lock() = State::Closed { failures: 0 };
    }

    /// A call WeChat Pay failed at `now`: one more in a row; enough of them, or a failed
    /// probe, open the breaker. True when this failure opened it.
    pub(crate) fn failed(&self, now: Millis) -> bool {
        let mut state = self.lock();
        let failures = match *state {
            State::Closed { failures } => failures + 1,
            // A failed probe opens it again at once; a failure of a call that went before it
            // opened changes nothing.
            State::Probing => self.after,
            State::Open { .. } => return false,
        };
        if self.after > 0 && failures >= self.after {
            *state = State::Open {
                until: now + self.open_for,
            };
            true
        } else {
            *state = State::Closed { failures };
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: Millis = Millis::from_unix_ms(1_795_000_000_000);

    fn at(secs: u64) -> Millis {
        T0 + Duration::from_secs(secs)
    }

    #[test]
    fn it_opens_after_failures_in_a_row_and_an_answer_in_between_resets_them() {
        let b = Breaker::new(3, Duration::from_secs(30));
        assert!(!b.failed(at(0)) && !b.failed(at(1)));
        b.answered();
        assert!(!b.failed(at(2)) && !b.failed(at(3)));
        assert_eq!(b.admit(at(3)), Admission::Go);
        assert!(b.failed(at(4)), "the third in a row opens it");
        assert_eq!(b.admit(at(5)), Admission::Refused { until: at(34) });
        assert_eq!(b.admit(at(33)), Admission::Refused { until: at(34) });
    }

    #[test]
    fn once_open_one_probe_goes_and_its_outcome_decides() {
        let b = Breaker::new(1, Duration::from_secs(30));
        assert!(b.failed(at(0)));
        assert_eq!(b.admit(at(30)), Admission::Go, "the probe");
        assert_eq!(b.admit(at(31)), Admission::Refused { until: at(61) }, "while it probes");
        assert!(b.failed(at(32)), "a failed probe opens it again");
        assert_eq!(b.admit(at(40)), Admission::Refused { until: at(62) });
        assert_eq!(b.admit(at(62)), Admission::Go);
        b.answered();
        assert_eq!(b.admit(at(63)), Admission::Go);
        assert_eq!(b.admit(at(63)), Admission::Go, "closed: every call goes");
    }

    #[test]
    fn a_breaker_set_to_zero_never_opens() {
        let b = Breaker::new(0, Duration::from_secs(30));
        for s in 0..100 {
            assert!(!b.failed(at(s)));
        }
        assert_eq!(b.admit(at(100)), Admission::Go);
    }
}
