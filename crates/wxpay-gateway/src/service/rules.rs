//! Decisions of the core that depend only on their arguments, written once as pure functions
//! so that every caller takes the same one and tests need no clock.

use std::time::Duration;

use crate::config::JobsConfig;
use crate::time::Millis;

/// When something made at `created_at` (an order, a refund) and checked at `now` is checked
/// next: after a pause as long as it is old (so checks thin out as it ages), at least the
/// first delay, at most the longest interval.
pub(crate) fn next_check_at(cfg: &JobsConfig, created_at: Millis, now: Millis) -> Millis {
    let age = Duration::from_millis(u64::try_from(now.ms_since(created_at)).unwrap_or(0));
    let second = Duration::from_secs(1);
    now + age.clamp(cfg.first_check_after.max(second), cfg.max_check_interval.max(second))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_thin_out_with_age_between_the_first_delay_and_the_longest_interval() {
        let cfg = JobsConfig {
            first_check_after: Duration::from_secs(5),
            max_check_interval: Duration::from_secs(600),
            ..JobsConfig::default()
        };
        let now = 1_800_000_000_000;
        let next_check_at = |cfg, created: i64, now: i64| {
            next_check_at(cfg, Millis::from_unix_ms(created), Millis::from_unix_ms(now)).unix_ms()
        };
        // Young: the first delay. Middle-aged: as long as its age. Old: the longest interval.
        assert_eq!(next_check_at(&cfg, now - 1_000, now), now + 5_000);
        assert_eq!(next_check_at(&cfg, now - 60_000, now), now + 60_000);
        assert_eq!(next_check_at(&cfg, now - 86_400_000, now), now + 600_000);
        // Never sooner than a second, whatever the configuration.
        let eager = JobsConfig {
            first_check_after: Duration::from_millis(50),
            max_check_interval: Duration::from_millis(100),
            ..JobsConfig::default()
        };
        assert_eq!(next_check_at(&eager, now, now), now + 1_000);
    }
}
