//! Background work: checking orders that got no notification, closing expired ones, and
//! delivering events to the webhook. Work is claimed in the database (with
//! `FOR UPDATE SKIP LOCKED` on PostgreSQL) with a lease, so several instances share it and a
//! crashed instance's claims are taken over when their lease ends.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::watch;

use crate::provider::{PaymentState, Provider, Refusal};
use crate::service::error::{Conflict, ServiceError};
use crate::service::rules::next_check_at;
use crate::service::state::{Inner, Service};
use crate::store::{Call, DailyClaim, Order, OrderStatus};
use crate::time::Millis;

/// How long an `Idempotency-Key` and its answer are kept, as Stripe does.
pub(crate) const IDEMPOTENCY_KEPT: Duration = Duration::from_secs(24 * 3600);

/// Background work running for a [`Service`]; stop it with [`Jobs::stop`].
#[derive(Debug)]
pub struct Jobs {
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Jobs {
    /// Stops the background work and waits for the current round to finish.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

impl Service {
    /// Starts the background work (order and refund checks, expiry, event delivery, the
    /// daily reconciliation when configured), unless the configuration turned it off.
    pub fn start_jobs(&self) -> Jobs {
        let (stop, rx) = watch::channel(false);
        let mut tasks = Vec::new();
        if self.inner.config.jobs.enabled {
            tasks.push(tokio::spawn(checks(self.clone(), rx.clone())));
            tasks.push(tokio::spawn(daily_reconciliation(self.clone(), rx.clone())));
            tasks.push(tokio::spawn(outbox(self.clone(), rx)));
        }
        Jobs { stop, tasks }
    }

    /// Starts, once, the task that keeps the metrics' database figures fresh; it must be
    /// called within a Tokio runtime.
    pub(crate) fn start_gauges(&self) {
        if !self.inner.gauges_refreshed.swap(true, Ordering::Relaxed) {
            tokio::spawn(refresh_gauges(Arc::downgrade(&self.inner)));
        }
    }
}

/// Keeps the database gauges of the metrics fresh: read at start, within a second after a
/// change is reported, and every 30 s in any case, never more than once a second. It stops
/// when the service is gone.
async fn refresh_gauges(service: std::sync::Weak<Inner>) {
    loop {
        let Some(inner) = service.upgrade() else {
            return;
        };
        let now = inner.clock.now();
        match inner.store.stats(now).await {
            Ok(stats) => inner.metrics.set_gauges(stats, now),
            Err(e) => tracing::warn!(error = ?e, "cannot read the metrics' figures from the database"),
        }
        let metrics = inner.metrics.clone();
        drop(inner);
        let read = tokio::time::Instant::now();
        metrics.wait_for_change(Duration::from_secs(30)).await;
        tokio::time::sleep_until(read + Duration::from_secs(1)).await;
    }
}

/// The `Wxpay-Signature` header of an event: `t=<unix seconds>,v1=<hex HMAC-SHA256 of
/// "<t>.<body>" with the webhook secret>`.
pub fn webhook_signature(secret: &str, unix_seconds: i64, body: &str) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let tag = ring::hmac::sign(&key, format!("{unix_seconds}.{body}").as_bytes());
    format!("t={unix_seconds},v1={}", crate::util::hex(tag.as_ref()))
}

/// Checks a `Wxpay-Signature` header, as a receiving backend should: the HMAC in constant
/// time, and the timestamp within `tolerance_secs` of `now_secs`.
pub fn verify_webhook_signature(secret: &str, header: &str, body: &str, now_secs: i64, tolerance_secs: i64) -> bool {
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = v.parse::<i64>().ok(),
            Some(("v1", v)) => v1 = Some(v),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else {
        return false;
    };
    // abs_diff: a hostile `t` (i64::MIN) must not overflow the subtraction.
    if now_secs.abs_diff(t) > u64::try_from(tolerance_secs).unwrap_or(0) {
        return false;
    }
    let expected = webhook_signature(secret, t, body);
    let expected_v1 = expected.rsplit_once("v1=").map_or("", |(_, h)| h);
    subtle::ConstantTimeEq::ct_eq(expected_v1.as_bytes(), v1.as_bytes()).into()
}

/// Waits `pause`, or less when asked to stop; says whether to stop.
async fn stopped_after(stop: &mut watch::Receiver<bool>, pause: Duration) -> bool {
    tokio::select! {
        _ = stop.changed() => {}
        () = tokio::time::sleep(pause) => {}
    }
    *stop.borrow()
}

/// The check loop: pending orders due for a check are queried, expired ones closed; pending
/// refunds due are sent again or queried.
async fn checks(app: Service, mut stop: watch::Receiver<bool>) {
    let cfg = app.inner.config.jobs.clone();
    let mut next_purge = Millis::default();
    loop {
        let now = app.now();
        if now >= next_purge {
            forget_idempotency_keys(&app, now).await;
            next_purge = now + PURGE_EVERY;
        }
        match app.inner.store.claim_checks(now, now + cfg.lease, cfg.batch).await {
            Ok(orders) => {
                let checked = !orders.is_empty();
                for order in orders {
                    if *stop.borrow() {
                        break;
                    }
                    check_one(&app, order).await;
                    app.inner.metrics.check_done("order");
                }
                if checked {
                    app.inner.metrics.changed();
                }
            }
            Err(e) => tracing::warn!(error = ?e, "cannot claim orders to check"),
        }
        // Refunds in the same round: those WeChat Pay never acknowledged are sent again,
        // accepted ones still pending are queried.
        let now = app.now();
        match app
            .inner
            .store
            .claim_refund_checks(now, now + cfg.lease, cfg.batch)
            .await
        {
            Ok(refunds) => {
                let checked = !refunds.is_empty();
                for refund in refunds {
                    if *stop.borrow() {
                        break;
                    }
                    app.check_refund(refund).await;
                    app.inner.metrics.check_done("refund");
                }
                if checked {
                    app.inner.metrics.changed();
                }
            }
            Err(e) => tracing::warn!(error = ?e, "cannot claim refunds to check"),
        }
        if stopped_after(&mut stop, cfg.poll_every).await {
            return;
        }
    }
}

/// How often idempotency keys past their keeping time are forgotten.
const PURGE_EVERY: Duration = Duration::from_secs(600);

/// Forgets the idempotency keys older than a day, a bounded number per statement so that no
/// transaction runs long, until none is left.
async fn forget_idempotency_keys(app: &Service, now: Millis) {
    let before = now - IDEMPOTENCY_KEPT;
    let mut forgotten = 0;
    loop {
        match app.inner.store.idem_purge(before, 5000).await {
            Ok(n) => {
                forgotten += n;
                if n < 5000 {
                    break;
                }
            }
            Err(e) => {
                tracing::warn!(error = ?e, "cannot forget old idempotency keys");
                break;
            }
        }
    }
    if forgotten > 0 {
        tracing::info!(forgotten, "idempotency keys older than a day forgotten");
    }
}

/// The daily reconciliation: once the configured time of day (Beijing) has passed, the
/// previous day of each merchant is reconciled, once across every gateway sharing the
/// database (the run is claimed in it). A run that fails (the bill not made yet) is tried
/// again an hour later.
async fn daily_reconciliation(app: Service, mut stop: watch::Receiver<bool>) {
    let Some(at_minute) = app.inner.config.reconcile.daily_at_minute else {
        return;
    };
    let pause = (app.inner.config.jobs.poll_every * 20).min(Duration::from_secs(30));
    let mut done: std::collections::HashMap<String, String> = std::collections::HashMap::new();
    loop {
        let now = app.now();
        let (.., h, m, _) = wxpay_protocol::BeijingTime::from_unix(now.unix_secs()).parts();
        if (h * 60 + m) as u32 >= at_minute {
            let day = crate::service::reconcile::Day::before(now);
            for provider in &app.inner.merchants {
                let name = &provider.merchant().name;
                if done.get(name) == Some(&day.date) {
                    continue;
                }
                match app
                    .inner
                    .store
                    .claim_daily_reconciliation(name.clone(), day.date.clone(), now)
                    .await
                {
                    Ok(DailyClaim::Claimed) => {}
                    Ok(DailyClaim::Running) => continue,
                    Ok(DailyClaim::Done) => {
                        // Another gateway (or an earlier start) did it: nothing to ask again today.
                        done.insert(name.clone(), day.date.clone());
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(error = ?e, "cannot claim the daily reconciliation");
                        continue;
                    }
                }
                let repair = app.inner.config.reconcile.repair;
                let quiet = crate::service::reconcile::Quiet;
                match crate::service::reconcile::reconcile(&app, Some(name), &day, repair, &quiet).await {
                    Ok(report) => {
                        if let Err(e) = crate::service::reconcile::keep(&app, &report, "daily", now).await {
                            tracing::error!(error = ?e, "cannot keep a reconciliation");
                        }
                        done.insert(name.clone(), day.date.clone());
                    }
                    Err(e) => {
                        app.inner.metrics.reconciliation(name, "error", 0, 0, now.unix_secs());
                        tracing::error!(merchant = ?name, date = ?day.date, error = ?e, "daily reconciliation failed; it is tried again in an hour");
                    }
                }
            }
        }
        if stopped_after(&mut stop, pause).await {
            return;
        }
    }
}

async fn check_one(app: &Service, order: Order) {
    let Some(provider) = app.merchant_named(&order.merchant) else {
        tracing::warn!(merchant = ?order.merchant, "an order of a merchant no longer configured; not checked");
        let _ = app.inner.store.schedule_check(order.id, None, None).await;
        return;
    };
    let store = &app.inner.store;
    let now = app.now();
    let result = provider.query_payment(&order.out_trade_no).await;
    // What the query said, kept on the order when it changes nothing (the console shows it).
    let (order, said) = match result {
        Ok(state) => {
            match app.apply_state(order.clone(), &state).await {
                Ok(o) if o.status != OrderStatus::Pending => {
                    // Settled by this answer, or by a notification while the query was under way.
                    tracing::info!(out_trade_no = ?o.out_trade_no, status = %o.status, "order settled");
                    return;
                }
                Ok(o) => {
                    if state == PaymentState::NotPaid && o.expires_at <= now {
                        expire(app, provider, o).await;
                        return;
                    }
                    let said = match &state {
                        // The answer was logged as an error: its currency or amount does not
                        // fit the order, which stays unpaid until someone looks.
                        PaymentState::Paid { .. } => {
                            "query: SUCCESS, which does not fit the order (see the log)".to_owned()
                        }
                        PaymentState::Other(s) => format!("query: {s}"),
                        _ => "query: NOTPAY".to_owned(),
                    };
                    (o, said)
                }
                Err(e) => {
                    tracing::warn!(out_trade_no = ?order.out_trade_no, error = ?e, "check failed");
                    (order, format!("query answered, not applied: {e}"))
                }
            }
        }
        Err(e) if e.refusal() == Some(Refusal::OrderNotExist) => {
            // WeChat Pay never got the order (its unifiedorder had no answer, was rate limited,
            // or none was made). It fails once it has expired: until then the client, told to
            // repeat the request, may still place it.
            if order.expires_at <= now {
                if let Ok(Some(o)) = store
                    .fail_order(order.id, "WeChat Pay has no such order".into(), now)
                    .await
                {
                    tracing::info!(out_trade_no = ?o.out_trade_no, "order failed: unknown to WeChat Pay");
                    return;
                }
            }
            (order, "query: ORDERNOTEXIST".to_owned())
        }
        Err(e) => {
            tracing::warn!(out_trade_no = ?order.out_trade_no, error = ?e, "orderquery failed; will check again");
            (order, format!("query failed: {e}"))
        }
    };
    let next = next_check_at(&app.inner.config.jobs, order.created_at, now);
    // An expired order is closed at its next check at the latest.
    let next = if order.expires_at > now {
        next.min(order.expires_at)
    } else {
        next
    };
    let call = Call { at: now, said };
    if let Err(e) = store.schedule_check(order.id, Some(next), Some(call)).await {
        tracing::warn!(error = ?e, "cannot schedule the next check");
    }
}

async fn expire(app: &Service, provider: &dyn Provider, order: Order) {
    let no = order.out_trade_no.clone();
    match app.close(provider, order.clone()).await {
        Ok(o) if o.status == OrderStatus::Closed => tracing::info!(out_trade_no = ?no, "expired order closed"),
        Ok(_) => {}
        Err(ServiceError::Conflict {
            kind: Conflict::OrderPaid,
            ..
        }) => {
            tracing::info!(out_trade_no = ?no, "expired order was paid")
        }
        Err(e) => {
            tracing::warn!(out_trade_no = ?no, error = ?e, "cannot close an expired order; will try again");
            let now = app.now();
            let call = Call {
                at: now,
                said: format!("close failed: {e}"),
            };
            let _ = app
                .inner
                .store
                .schedule_check(order.id, Some(now + Duration::from_secs(30)), Some(call))
                .await;
        }
    }
}

/// The outbox loop: events are posted to the webhook until a 2xx, with the same id every
/// time, backing off exponentially with jitter.
async fn outbox(app: Service, mut stop: watch::Receiver<bool>) {
    let cfg = app.inner.config.jobs.clone();
    let Some(webhook) = app.inner.config.webhook.clone() else {
        tracing::info!("no webhook configured: events stay in the outbox");
        return;
    };
    loop {
        let now = app.now();
        match app.inner.store.claim_outbox(now, now + cfg.lease, cfg.batch).await {
            Ok(events) => {
                let delivering = !events.is_empty();
                let deliveries = events.into_iter().map(|e| {
                    let app = app.clone();
                    let webhook = webhook.clone();
                    async move {
                        let t = app.now().unix_secs();
                        let signature = webhook_signature(webhook.secret.expose(), t, &e.payload);
                        let result = app
                            .inner
                            .webhook_http
                            .post(&webhook.url)
                            .header("Content-Type", "application/json")
                            .header("Wxpay-Signature", signature)
                            .header("Wxpay-Event-Id", &e.id)
                            .body(e.payload.clone())
                            .send()
                            .await;
                        let error = match result {
                            Ok(r) if r.status().is_success() => None,
                            Ok(r) if r.status().is_redirection() => {
                                Some(format!("HTTP {} (a redirect is not followed)", r.status()))
                            }
                            Ok(r) => Some(format!("HTTP {}", r.status())),
                            Err(err) => Some(if err.is_timeout() { "timeout".to_owned() } else { "connection failed".to_owned() }),
                        };
                        let store = &app.inner.store;
                        match error {
                            None => {
                                app.inner.metrics.webhook("delivered");
                                if let Err(err) = store.outbox_delivered(e.id.clone(), app.now()).await {
                                    tracing::warn!(error = ?err, "cannot mark an event delivered; it will be sent again");
                                }
                            }
                            Some(reason) => {
                                app.inner.metrics.webhook("failed");
                                let exp = 1u32 << e.attempts.clamp(0, 20);
                                let mut jitter = [0u8; 2];
                                crate::util::random_bytes(&mut jitter);
                                let base = cfg.outbox_backoff.saturating_mul(exp).min(cfg.outbox_max_backoff);
                                let delay = base + base * u32::from(u16::from_le_bytes(jitter) % 250) / 1000;
                                tracing::warn!(event = ?e.id, attempts = e.attempts, ?reason, "webhook delivery failed; will retry");
                                let _ = store.outbox_retry(e.id.clone(), app.now() + delay, reason).await;
                            }
                        }
                    }
                });
                futures_util::future::join_all(deliveries).await;
                if delivering {
                    app.inner.metrics.changed();
                }
            }
            Err(e) => tracing::warn!(error = ?e, "cannot claim events to deliver"),
        }
        if stopped_after(&mut stop, cfg.poll_every).await {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_signatures_verify_and_expire() {
        let h = webhook_signature("s3cret-s3cret-s3cret", 1_700_000_000, "{\"a\":1}");
        assert!(h.starts_with("t=1700000000,v1="));
        assert!(verify_webhook_signature(
            "s3cret-s3cret-s3cret",
            &h,
            "{\"a\":1}",
            1_700_000_100,
            300
        ));
        assert!(!verify_webhook_signature(
            "s3cret-s3cret-s3cret",
            &h,
            "{\"a\":2}",
            1_700_000_100,
            300
        ));
        assert!(!verify_webhook_signature(
            "other-secret-other",
            &h,
            "{\"a\":1}",
            1_700_000_100,
            300
        ));
        assert!(!verify_webhook_signature(
            "s3cret-s3cret-s3cret",
            &h,
            "{\"a\":1}",
            1_700_001_000,
            300
        ));
        assert!(!verify_webhook_signature("s3cret-s3cret-s3cret", "v1=00", "{}", 0, 300));
    }

    #[test]
    fn a_hostile_timestamp_is_refused_without_overflowing() {
        for t in [i64::MIN, i64::MAX, i64::MIN + 1] {
            let header = format!("t={t},v1=00");
            for now in [0, 1_700_000_000, i64::MAX, i64::MIN] {
                assert!(!verify_webhook_signature(
                    "s3cret-s3cret-s3cret",
                    &header,
                    "{}",
                    now,
                    300
                ));
            }
        }
        // A negative tolerance accepts nothing, however close the timestamp.
        let h = webhook_signature("s3cret-s3cret-s3cret", 1_700_000_000, "{}");
        assert!(!verify_webhook_signature(
            "s3cret-s3cret-s3cret",
            &h,
            "{}",
            1_700_000_001,
            -300
        ));
    }
}
