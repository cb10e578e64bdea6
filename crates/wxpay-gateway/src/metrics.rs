//! Prometheus metrics, kept per instance (the demo runs the simulator in the same process,
//! and each reports only its own figures).
//!
//! Counted here: notifications by verdict, WeChat Pay calls by API (latency histogram and
//! errors by kind), webhook deliveries. The gauges read from the database (orders and refunds
//! by status, the outbox backlog and its oldest event) are kept here too: a background task
//! reads them at start, within a second of a change, and every 30 s (other instances sharing
//! the database change them too). A scrape never queries the database: anyone who can reach
//! `/metrics` could otherwise make it count tables as fast as they like.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

/// Latency buckets, in seconds.
const BUCKETS: [f64; 11] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

#[derive(Default)]
struct Inner {
    notifications: BTreeMap<String, u64>,
    upstream_latency: BTreeMap<String, Histogram>,
    upstream_errors: BTreeMap<(String, String), u64>,
    webhook: BTreeMap<String, u64>,
    checks: BTreeMap<String, u64>,
    reconciliations: BTreeMap<String, Reconciled>,
    reconcile_runs: BTreeMap<(String, &'static str), u64>,
    rejections_unrecorded: u64,
}

/// The last reconciliation of a merchant.
#[derive(Default)]
struct Reconciled {
    balanced: bool,
    remaining: usize,
    repaired: usize,
    unix: i64,
}

/// Counts one more `key`, copying the key only the first time it is seen: counters are
/// bumped on every notification.
fn bump(map: &mut BTreeMap<String, u64>, key: &str) {
    match map.get_mut(key) {
        Some(n) => *n += 1,
        None => {
            map.insert(key.to_owned(), 1);
        }
    }
}

/// The counters.
#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
    /// The gauges read from the database, and when (Unix ms).
    gauges: Mutex<Option<(crate::store::Stats, crate::time::Millis)>>,
    /// Wakes the refresher (a change made while it was not waiting is kept as a permit).
    wake: tokio::sync::Notify,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        f(&mut self.inner.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// A notification's verdict.
    pub fn notification(&self, verdict: crate::store::Verdict) {
        self.with(|i| bump(&mut i.notifications, verdict.as_str()));
    }

    /// Something the gauges count may have changed: they are read again within a second.
    pub fn changed(&self) {
        self.wake.notify_one();
    }

    /// The database figures last read, and when: kept fresh by the gauges' task (within a
    /// second of a change), so that a page need not count a million orders again.
    pub fn gauges(&self) -> Option<(crate::store::Stats, crate::time::Millis)> {
        self.gauges.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Keeps the gauges read from the database at `at` (Unix ms).
    pub fn set_gauges(&self, stats: crate::store::Stats, at: crate::time::Millis) {
        *self.gauges.lock().unwrap_or_else(|e| e.into_inner()) = Some((stats, at));
    }

    /// Waits until a change is reported or `at_most` passes.
    pub(crate) async fn wait_for_change(&self, at_most: Duration) {
        let _ = tokio::time::timeout(at_most, self.wake.notified()).await;
    }

    /// A rejected notification that was counted but not recorded (over the budget).
    pub fn rejection_unrecorded(&self) {
        self.with(|i| i.rejections_unrecorded += 1);
    }

    /// Rejected notifications not recorded; for tests.
    pub fn rejections_unrecorded(&self) -> u64 {
        self.with(|i| i.rejections_unrecorded)
    }

    /// A WeChat Pay call's duration.
    pub fn upstream_latency(&self, api: &str, d: Duration) {
        let secs = d.as_secs_f64();
        self.with(|i| {
            // The key is copied only the first time an API is seen: this runs on every call.
            if !i.upstream_latency.contains_key(api) {
                i.upstream_latency.insert(api.to_owned(), Histogram::default());
            }
            let Some(h) = i.upstream_latency.get_mut(api) else {
                return;
            };
            for (n, b) in BUCKETS.iter().enumerate() {
                if secs <= *b {
                    h.counts[n] += 1;
                }
            }
            h.count += 1;
            h.sum += secs;
        });
    }

    /// A WeChat Pay call that failed, by kind (`connect`, `no_answer`, an `err_code`, …).
    pub fn upstream_error(&self, api: &str, kind: &str) {
        self.with(|i| *i.upstream_errors.entry((api.to_owned(), kind.to_owned())).or_default() += 1);
    }

    /// A background check of a pending order or refund (`kind`: `order`, `refund`) ended:
    /// its answer, if any, is applied and its next check scheduled.
    pub fn check_done(&self, kind: &str) {
        self.with(|i| bump(&mut i.checks, kind));
    }

    /// How many checks of `kind` have ended; tests wait on it instead of sleeping.
    pub fn checks_done(&self, kind: &str) -> u64 {
        self.with(|i| i.checks.get(kind).copied().unwrap_or(0))
    }

    /// A webhook delivery attempt's outcome (`delivered`, `failed`).
    pub fn webhook(&self, outcome: &str) {
        self.with(|i| bump(&mut i.webhook, outcome));
    }

    /// A reconciliation ended: `result` is `balanced`, `unbalanced` or `error`.
    pub fn reconciliation(&self, merchant: &str, result: &'static str, remaining: usize, repaired: usize, unix: i64) {
        self.with(|i| {
            *i.reconcile_runs.entry((merchant.to_owned(), result)).or_default() += 1;
            if result != "error" {
                i.reconciliations.insert(
                    merchant.to_owned(),
                    Reconciled {
                        balanced: result == "balanced",
                        remaining,
                        repaired,
                        unix,
                    },
                );
            }
        });
    }

    /// The count of failed WeChat Pay calls of `api` of `kind`; for tests.
    pub fn upstream_errors_with(&self, api: &str, kind: &str) -> u64 {
        self.with(|i| {
            i.upstream_errors
                .get(&(api.to_owned(), kind.to_owned()))
                .copied()
                .unwrap_or(0)
        })
    }

    /// The count of notifications with a verdict; for tests.
    pub fn notifications_with(&self, verdict: &str) -> u64 {
        self.with(|i| i.notifications.get(verdict).copied().unwrap_or(0))
    }

    /// Renders everything, the gauges as last read from the database, at `now`.
    pub fn render(&self, now: crate::time::Millis) -> String {
        let mut out = String::with_capacity(4096);
        let gauges = self.gauges.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some((s, at)) = &gauges {
            out.push_str("# HELP wxpay_orders Orders by status.\n# TYPE wxpay_orders gauge\n");
            for status in crate::store::OrderStatus::ALL {
                let n = s
                    .orders_by_status
                    .iter()
                    .find(|(k, _)| k == status.as_str())
                    .map_or(0, |(_, n)| *n);
                let _ = writeln!(out, "wxpay_orders{{status=\"{status}\"}} {n}");
            }
            out.push_str("# HELP wxpay_refunds Refunds by status.\n# TYPE wxpay_refunds gauge\n");
            for status in ["pending", "succeeded", "failed"] {
                let n = s
                    .refunds_by_status
                    .iter()
                    .find(|(k, _)| k == status)
                    .map_or(0, |(_, n)| *n);
                let _ = writeln!(out, "wxpay_refunds{{status=\"{status}\"}} {n}");
            }
            out.push_str("# HELP wxpay_outbox_backlog Events not yet delivered to the webhook.\n# TYPE wxpay_outbox_backlog gauge\n");
            let _ = writeln!(out, "wxpay_outbox_backlog {}", s.outbox_backlog);
            out.push_str("# HELP wxpay_outbox_oldest_age_seconds Age of the oldest undelivered event.\n# TYPE wxpay_outbox_oldest_age_seconds gauge\n");
            let _ = writeln!(
                out,
                "wxpay_outbox_oldest_age_seconds {}",
                s.outbox_oldest_age_ms.map_or(0, |age| age + now.ms_since(*at).max(0)) as f64 / 1000.0
            );
        }
        self.with(|i| {
            out.push_str("# HELP wxpay_notifications_total Payment and refund notifications by verdict.\n# TYPE wxpay_notifications_total counter\n");
            for (verdict, n) in &i.notifications {
                let _ = writeln!(out, "wxpay_notifications_total{{verdict=\"{verdict}\"}} {n}");
            }
            out.push_str("# HELP wxpay_rejected_notifications_unrecorded_total Rejected notifications beyond the per-minute budget: counted, not recorded.\n# TYPE wxpay_rejected_notifications_unrecorded_total counter\n");
            let _ = writeln!(out, "wxpay_rejected_notifications_unrecorded_total {}", i.rejections_unrecorded);
            out.push_str("# HELP wxpay_upstream_duration_seconds WeChat Pay calls by API.\n# TYPE wxpay_upstream_duration_seconds histogram\n");
            for (api, h) in &i.upstream_latency {
                for (n, b) in BUCKETS.iter().enumerate() {
                    let _ = writeln!(out, "wxpay_upstream_duration_seconds_bucket{{api=\"{api}\",le=\"{b}\"}} {}", h.counts[n]);
                }
                let _ = writeln!(out, "wxpay_upstream_duration_seconds_bucket{{api=\"{api}\",le=\"+Inf\"}} {}", h.count);
                let _ = writeln!(out, "wxpay_upstream_duration_seconds_sum{{api=\"{api}\"}} {}", h.sum);
                let _ = writeln!(out, "wxpay_upstream_duration_seconds_count{{api=\"{api}\"}} {}", h.count);
            }
            out.push_str("# HELP wxpay_upstream_errors_total WeChat Pay calls that failed, by API and kind.\n# TYPE wxpay_upstream_errors_total counter\n");
            for ((api, kind), n) in &i.upstream_errors {
                let _ = writeln!(out, "wxpay_upstream_errors_total{{api=\"{api}\",kind=\"{kind}\"}} {n}");
            }
            out.push_str("# HELP wxpay_reconcile_runs_total Reconciliations by merchant and result.\n# TYPE wxpay_reconcile_runs_total counter\n");
            for ((merchant, result), n) in &i.reconcile_runs {
                let _ = writeln!(out, "wxpay_reconcile_runs_total{{merchant=\"{merchant}\",result=\"{result}\"}} {n}");
            }
            out.push_str("# HELP wxpay_reconcile_balanced Whether the last reconciliation balanced (1) or not (0).\n# TYPE wxpay_reconcile_balanced gauge\n");
            for (merchant, r) in &i.reconciliations {
                let _ = writeln!(out, "wxpay_reconcile_balanced{{merchant=\"{merchant}\"}} {}", u8::from(r.balanced));
            }
            out.push_str("# HELP wxpay_reconcile_differences Differences left by the last reconciliation.\n# TYPE wxpay_reconcile_differences gauge\n");
            for (merchant, r) in &i.reconciliations {
                let _ = writeln!(out, "wxpay_reconcile_differences{{merchant=\"{merchant}\"}} {}", r.remaining);
            }
            out.push_str("# HELP wxpay_reconcile_repaired Differences the last reconciliation repaired.\n# TYPE wxpay_reconcile_repaired gauge\n");
            for (merchant, r) in &i.reconciliations {
                let _ = writeln!(out, "wxpay_reconcile_repaired{{merchant=\"{merchant}\"}} {}", r.repaired);
            }
            out.push_str("# HELP wxpay_reconcile_last_run_timestamp_seconds When the last reconciliation ended.\n# TYPE wxpay_reconcile_last_run_timestamp_seconds gauge\n");
            for (merchant, r) in &i.reconciliations {
                let _ = writeln!(out, "wxpay_reconcile_last_run_timestamp_seconds{{merchant=\"{merchant}\"}} {}", r.unix);
            }
            out.push_str("# HELP wxpay_checks_total Background checks of pending orders and refunds, ended.\n# TYPE wxpay_checks_total counter\n");
            for kind in ["order", "refund"] {
                let n = i.checks.get(kind).copied().unwrap_or(0);
                let _ = writeln!(out, "wxpay_checks_total{{kind=\"{kind}\"}} {n}");
            }
            out.push_str("# HELP wxpay_webhook_deliveries_total Webhook delivery attempts by outcome.\n# TYPE wxpay_webhook_deliveries_total counter\n");
            for (outcome, n) in &i.webhook {
                let _ = writeln!(out, "wxpay_webhook_deliveries_total{{outcome=\"{outcome}\"}} {n}");
            }
        });
        out
    }
}
