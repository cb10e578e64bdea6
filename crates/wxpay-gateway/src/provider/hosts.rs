//! WeChat Pay's two API hosts for one merchant: the primary (`base_url`) and, when configured,
//! the backup (`backup_url`, "cross-city disaster recovery": `api2.mch.weixin.qq.com`, which
//! serves every API of both versions). Shared by the APIv2 and APIv3 clients.
//!
//! A call that finds the host down (its connection refused, or a server error that is not
//! WeChat Pay's answer: a proxy's page) counts against it; after `backup_after_failures` in a
//! row the backup is used for `backup_for`, then the primary is tried again. As many failures
//! in a row on the backup end its time at once: a backup that is down too (api2 blocked by a
//! firewall) must not keep calls from a primary that may be back. Any answer from WeChat Pay,
//! and every switch, resets the count. A timeout after the request was sent does not count:
//! the host was reached, and the call may have taken effect there.

use std::sync::atomic::{AtomicI64, AtomicU32, Ordering};

use crate::config::{MerchantConfig, UpstreamConfig};
use crate::time::Millis;

/// Which host a merchant's calls go to, and the failures that decide it.
pub(crate) struct Hosts {
    merchant: String,
    primary: String,
    backup: Option<String>,
    /// Failures of the current host in a row.
    failures: AtomicU32,
    /// Until when (Unix ms) calls go to the backup.
    backup_until: AtomicI64,
}

impl Hosts {
    /// The hosts of a merchant's configuration, starting on the primary.
    pub(crate) fn new(config: &MerchantConfig) -> Hosts {
        Hosts {
            merchant: config.name.clone(),
            primary: config.base_url.trim_end_matches('/').to_owned(),
            backup: config.backup_url.as_ref().map(|b| b.trim_end_matches('/').to_owned()),
            failures: AtomicU32::new(0),
            backup_until: AtomicI64::new(0),
        }
    }

    /// The host to call at `now` (the gateway's clock), without a trailing `/`: the backup
    /// while it is switched to, else the primary.
    pub(crate) fn current(&self, now: Millis) -> &str {
        match &self.backup {
            Some(b) if self.backup_until.load(Ordering::Relaxed) > now.unix_ms() => b,
            _ => &self.primary,
        }
    }

    /// A call found the current host down; enough in a row switch to the other one.
    pub(crate) fn failed(&self, cfg: &UpstreamConfig, now: Millis) {
        let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n < cfg.backup_after_failures || self.backup.is_none() {
            return;
        }
        self.failures.store(0, Ordering::Relaxed);
        if self.backup_until.load(Ordering::Relaxed) > now.unix_ms() {
            self.backup_until.store(0, Ordering::Relaxed);
            tracing::warn!(merchant = ?self.merchant, failures = n, "the backup WeChat Pay host is failing too: back to the primary");
        } else {
            self.backup_until
                .store((now + cfg.backup_for).unix_ms(), Ordering::Relaxed);
            tracing::warn!(merchant = ?self.merchant, failures = n, "switching to the backup WeChat Pay host");
        }
    }

    /// WeChat Pay answered: the failures in a row start again from zero.
    pub(crate) fn answered(&self) {
        self.failures.store(0, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn hosts(backup: Option<&str>) -> Hosts {
        Hosts {
            merchant: "m".into(),
            primary: "http://primary".into(),
            backup: backup.map(str::to_owned),
            failures: AtomicU32::new(0),
            backup_until: AtomicI64::new(0),
        }
    }

    fn upstream() -> UpstreamConfig {
        UpstreamConfig {
            backup_after_failures: 3,
            backup_for: Duration::from_secs(180),
            ..UpstreamConfig::default()
        }
    }

    #[test]
    fn failures_in_a_row_switch_to_the_backup_until_its_time_is_up() {
        let h = hosts(Some("http://backup"));
        let now = Millis::from_unix_ms(1_000_000);
        h.failed(&upstream(), now);
        h.failed(&upstream(), now);
        assert_eq!(h.current(now), "http://primary");
        h.failed(&upstream(), now);
        assert_eq!(h.current(now), "http://backup");
        assert_eq!(h.current(now + Duration::from_secs(179)), "http://backup");
        assert_eq!(h.current(now + Duration::from_secs(180)), "http://primary");
    }

    #[test]
    fn an_answer_between_failures_keeps_the_primary() {
        let h = hosts(Some("http://backup"));
        let now = Millis::from_unix_ms(1_000_000);
        h.failed(&upstream(), now);
        h.failed(&upstream(), now);
        h.answered();
        h.failed(&upstream(), now);
        h.failed(&upstream(), now);
        assert_eq!(h.current(now), "http://primary");
    }

    #[test]
    fn a_backup_that_fails_as_often_hands_calls_back_to_the_primary() {
        let h = hosts(Some("http://backup"));
        let now = Millis::from_unix_ms(1_000_000);
        for _ in 0..3 {
            h.failed(&upstream(), now);
        }
        assert_eq!(h.current(now), "http://backup");
        // The switch started the count again: two failures of the backup keep it.
        h.failed(&upstream(), now);
        h.failed(&upstream(), now);
        assert_eq!(h.current(now), "http://backup");
        h.failed(&upstream(), now);
        assert_eq!(h.current(now), "http://primary", "the backup failed as often");
        // And the primary gets its own count from zero.
        h.failed(&upstream(), now);
        h.failed(&upstream(), now);
        assert_eq!(h.current(now), "http://primary");
    }

    #[test]
    fn without_a_backup_the_primary_stays() {
        let h = hosts(None);
        let now = Millis::from_unix_ms(1_000_000);
        for _ in 0..10 {
            h.failed(&upstream(), now);
        }
        assert_eq!(h.current(now), "http://primary");
    }
}
