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
    /// One call (the probe) is under way since then; the others are refused until it ends.
    /// A probe that never tells how it went (its request was dropped, or ended before
    /// calling WeChat Pay) is given up after the open time, and the next call probes.
    Probing { since: Millis },
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

/// Whether a call may go: with a permit, or refused until a time.
#[derive(Debug)]
pub(crate) enum Admission<'b> {
    /// The call may go; tell the permit how WeChat Pay did.
    Go(Permit<'b>),
    /// The breaker is open (or a probe is under way) until then.
    Refused { until: Millis },
}

/// Leave for one call. Its outcome counts only if the breaker is still in the state it was
/// given in: a call that started before the breaker opened does not decide a probe. A probe
/// dropped without an outcome (its request cancelled, or ended before WeChat Pay was called)
/// lets the next call probe at once.
#[derive(Debug)]
pub(crate) struct Permit<'b> {
    breaker: &'b Breaker,
    /// When this call started probing, if it is the probe.
    probe: Option<Millis>,
    told: bool,
}

impl Permit<'_> {
    /// WeChat Pay answered (whatever it said): the breaker closes.
    pub(crate) fn answered(mut self) {
        self.told = true;
        let mut state = self.breaker.lock();
        match (*state, self.probe) {
            (State::Closed { .. }, None) => *state = State::Closed { failures: 0 },
            (State::Probing { since }, Some(p)) if since == p => *state = State::Closed { failures: 0 },
            // Open, another call probes, or this probe was given up: the probe decides.
            _ => {}
        }
    }

    /// WeChat Pay failed the call at `now`: one more in a row; enough of them, or a failed
    /// probe, open the breaker. True when this failure opened it.
    pub(crate) fn failed(mut self, now: Millis) -> bool {
        self.told = true;
        let b = self.breaker;
        let mut state = b.lock();
        let failures = match (*state, self.probe) {
            (State::Closed { failures }, None) => failures + 1,
            (State::Probing { since }, Some(p)) if since == p => b.after,
            // Open, another call probes, or this probe was given up: the probe decides.
            _ => return false,
        };
        if b.after > 0 && failures >= b.after {
            *state = State::Open {
                until: now + b.open_for,
            };
            true
        } else {
            *state = State::Closed { failures };
            false
        }
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if let (false, Some(p)) = (self.told, self.probe) {
            let mut state = self.breaker.lock();
            if *state == (State::Probing { since: p }) {
                // Open until a moment already past: the next call probes.
                *state = State::Open { until: p };
            }
        }
    }
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

    /// Until when calls are refused at `now`, if they are; changes nothing (a caller that may
    /// not need to call at all asks this first).
    pub(crate) fn refused_until(&self, now: Millis) -> Option<Millis> {
        match *self.lock() {
            State::Open { until } if now < until => Some(until),
            State::Probing { since } if now < since + self.open_for => Some(since + self.open_for),
            _ => None,
        }
    }

    /// Whether a call may go at `now`. Once the breaker's time is up the first call is the
    /// probe; the calls that come while it is under way are refused until it ends, or until
    /// the open time has passed without its outcome (then the next call probes).
    pub(crate) fn admit(&self, now: Millis) -> Admission<'_> {
        let mut state = self.lock();
        let probe = match *state {
            State::Closed { .. } => None,
            State::Open { until } if now < until => return Admission::Refused { until },
            State::Probing { since } if now < since + self.open_for => {
                return Admission::Refused {
                    until: since + self.open_for,
                };
            }
            State::Open { .. } | State::Probing { .. } => {
                *state = State::Probing { since: now };
                Some(now)
            }
        };
        Admission::Go(Permit {
            breaker: self,
            probe,
            told: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: Millis = Millis::from_unix_ms(1_795_000_000_000);

    fn at(secs: u64) -> Millis {
        T0 + Duration::from_secs(secs)
    }

    fn go(b: &Breaker, now: Millis) -> Permit<'_> {
        match b.admit(now) {
            Admission::Go(p) => p,
            Admission::Refused { until } => panic!("refused until {until:?}"),
        }
    }

    fn refused(b: &Breaker, now: Millis) -> Option<Millis> {
        match b.admit(now) {
            Admission::Go(_) => None,
            Admission::Refused { until } => Some(until),
        }
    }

    #[test]
    fn it_opens_after_failures_in_a_row_and_an_answer_in_between_resets_them() {
        let b = Breaker::new(3, Duration::from_secs(30));
        assert!(!go(&b, at(0)).failed(at(0)) && !go(&b, at(1)).failed(at(1)));
        go(&b, at(1)).answered();
        assert!(!go(&b, at(2)).failed(at(2)) && !go(&b, at(3)).failed(at(3)));
        assert!(go(&b, at(4)).failed(at(4)), "the third in a row opens it");
        assert_eq!(refused(&b, at(5)), Some(at(34)));
        assert_eq!(b.refused_until(at(33)), Some(at(34)));
        assert_eq!(b.refused_until(at(34)), None, "asking changes nothing");
    }

    #[test]
    fn once_open_one_probe_goes_and_its_outcome_decides() {
        let b = Breaker::new(1, Duration::from_secs(30));
        assert!(go(&b, at(0)).failed(at(0)));
        let probe = go(&b, at(30));
        assert_eq!(refused(&b, at(31)), Some(at(60)), "while it probes");
        assert!(probe.failed(at(32)), "a failed probe opens it again");
        assert_eq!(refused(&b, at(40)), Some(at(62)));
        go(&b, at(62)).answered();
        assert_eq!(b.refused_until(at(63)), None, "closed: calls go");
    }

    #[test]
    fn a_call_from_before_it_opened_does_not_decide_the_probe() {
        let b = Breaker::new(1, Duration::from_secs(30));
        let slow = go(&b, at(0));
        assert!(go(&b, at(1)).failed(at(1)));
        let probe = go(&b, at(31));
        // The slow call, admitted while closed, ends during the probe: it changes nothing.
        slow.answered();
        assert_eq!(refused(&b, at(32)), Some(at(61)));
        probe.answered();
        assert_eq!(b.refused_until(at(32)), None);
    }

    #[test]
    fn a_probe_dropped_without_its_outcome_lets_the_next_call_probe() {
        // Its request was cancelled, or ended before WeChat Pay was called.
        let b = Breaker::new(1, Duration::from_secs(30));
        assert!(go(&b, at(0)).failed(at(0)));
        drop(go(&b, at(30)));
        let next = go(&b, at(31));
        assert_eq!(refused(&b, at(32)), Some(at(61)), "the next one probes");
        next.answered();
        assert_eq!(b.refused_until(at(33)), None);
    }

    #[test]
    fn a_probe_never_heard_of_again_is_given_up_after_the_open_time() {
        // A request that hangs, its permit alive: the breaker still recovers.
        let b = Breaker::new(1, Duration::from_secs(30));
        assert!(go(&b, at(0)).failed(at(0)));
        let hung = go(&b, at(30));
        assert_eq!(refused(&b, at(59)), Some(at(60)));
        let next = go(&b, at(60));
        next.answered();
        hung.failed(at(61));
        assert_eq!(b.refused_until(at(61)), None, "the given-up probe decides nothing");
    }

    #[test]
    fn a_breaker_set_to_zero_never_opens() {
        let b = Breaker::new(0, Duration::from_secs(30));
        for s in 0..100 {
            assert!(!go(&b, at(s)).failed(at(s)));
        }
        assert_eq!(b.refused_until(at(100)), None);
    }
}
