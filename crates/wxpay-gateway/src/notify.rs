//! `POST /notify/v2/pay` and `POST /notify/v2/refund`: WeChat Pay's notifications.
//!
//! In this order: the body size limit (the router's), the hardened XML reader, the merchant
//! found by `mch_id` and `appid`, the signature with that merchant's configured algorithm,
//! then one transaction that checks the amount against the stored order and moves it
//! `pending → paid` with its event and outbox row, or changes nothing. Only after the commit
//! is the exact SUCCESS reply sent. Anything rejected changes nothing, is recorded with its
//! reason, logged as a warning (never with a secret), and answered FAIL so that a genuine
//! notification comes again.
//!
//! A refund notification carries no signature: its `req_info` is AES-256-ECB encrypted with
//! the MD5 of the merchant's key, and ECB authenticates nothing. It is therefore a hint: a
//! `SUCCESS` settles a refund only when it matches one that wxpay asked for (the number, the
//! order and the amount); a failure (`REFUNDCLOSE`, `CHANGE`), which would give the reserved
//! amount back, is only a reason to ask WeChat Pay (`refundquery`), whose signed answer
//! decides; anything else changes nothing and is logged.

use std::net::SocketAddr;

use axum::Extension;
use axum::extract::{ConnectInfo, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use wxpay_protocol::v2::{NOTIFY_SUCCESS_REPLY, NotificationFields, notify_fail_reply};

use crate::app::App;
use crate::store::{self, NotificationRecord, Payment, PaymentOutcome, RefundOutcome, RefundResult, Source};

fn reply(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "text/xml; charset=utf-8")], body).into_response()
}

fn success() -> Response {
    reply(StatusCode::OK, NOTIFY_SUCCESS_REPLY.to_owned())
}

struct Rejection<'a> {
    kind: &'static str,
    status: StatusCode,
    reason: String,
    merchant: Option<String>,
    fields: Option<&'a NotificationFields<'a>>,
}

/// At most this many characters of a value from a rejected notification are kept or logged:
/// the sender chooses them, up to the whole body.
const CLIPPED: usize = 128;

/// The first `max` characters of `s`.
fn clip(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

/// Answers a rejected notification. It is counted, and within the budget of
/// [`crate::rejections`] logged and recorded, never written on this request's path:
/// rejected traffic must not take turns from the writes of verified notifications, nor fill
/// the log.
fn reject(app: &App, peer: Option<SocketAddr>, body: &[u8], r: Rejection<'_>) -> Response {
    app.inner.metrics.notification("rejected");
    let received_at = app.now();
    // Beyond the budget nothing more is done: no digest, no copy, no log line.
    if app.inner.rejections.within_budget(app, received_at) {
        let field = |name: &str| {
            r.fields
                .and_then(|f| f.fields().optional(name))
                .map(|v| clip(v, CLIPPED))
        };
        let record = NotificationRecord {
            received_at,
            kind: r.kind.into(),
            merchant: r.merchant,
            out_trade_no: field("out_trade_no"),
            transaction_id: field("transaction_id"),
            verdict: "rejected".into(),
            reason: Some(clip(&r.reason, 2 * CLIPPED)),
            body: store::truncated_body(body, store::REJECTED_BODY_KEPT),
            peer: peer.map(|p| p.to_string()),
            body_sha256: Some(crate::api::sha256_hex(body)),
        };
        tracing::warn!(kind = r.kind, reason = ?record.reason.as_deref().unwrap_or_default(), out_trade_no = ?record.out_trade_no.as_deref().unwrap_or("-"), peer = ?record.peer.as_deref().unwrap_or("-"), "notification rejected");
        app.inner.rejections.keep(app, record);
    }
    // The caller is not known to be WeChat Pay: the reply says nothing of why (whether a
    // merchant exists, which check failed); the reason is in the log and the record.
    reply(r.status, notify_fail_reply(REJECTED))
}

/// The `return_msg` of every rejection.
const REJECTED: &str = "invalid notification";

/// The steps both notifications share: the hardened read, then the merchant by `mch_id` and
/// `appid` (its index); anything else is rejected, recorded and answered here.
fn read_for_merchant<'a>(
    app: &App,
    peer: Option<SocketAddr>,
    body: &'a Bytes,
    kind: &'static str,
) -> Result<(NotificationFields<'a>, usize), Box<Response>> {
    let fields = match NotificationFields::read(body) {
        Ok(f) => f,
        Err(e) => {
            let r = Rejection {
                kind,
                status: StatusCode::BAD_REQUEST,
                reason: format!("not a well-formed notification: {e}"),
                merchant: None,
                fields: None,
            };
            return Err(Box::new(reject(app, peer, body, r)));
        }
    };
    let key = (
        fields.mch_id().unwrap_or("").to_owned(),
        fields.appid().unwrap_or("").to_owned(),
    );
    match app.inner.by_mch_app.get(&key) {
        Some(&idx) => Ok((fields, idx)),
        None => {
            let r = Rejection {
                kind,
                status: StatusCode::BAD_REQUEST,
                reason: format!("no merchant configured for mch_id {:?} and appid {:?}", key.0, key.1),
                merchant: None,
                fields: Some(&fields),
            };
            Err(Box::new(reject(app, peer, body, r)))
        }
    }
}

/// The record of a verified notification; its verdict and reason are set where they are
/// decided.
fn verified(
    now: i64,
    kind: &str,
    merchant: &str,
    out_trade_no: &str,
    transaction_id: Option<&str>,
    body: &[u8],
) -> NotificationRecord {
    NotificationRecord {
        received_at: now,
        kind: kind.into(),
        merchant: Some(merchant.to_owned()),
        out_trade_no: Some(out_trade_no.to_owned()),
        transaction_id: transaction_id.map(str::to_owned),
        verdict: String::new(),
        reason: None,
        body: store::stored_body(body),
        peer: None,
        body_sha256: None,
    }
}

/// Keeps a verified notification that changes no order, then gives `answer` (FAIL, so that
/// it comes again, when it could not be kept).
async fn keep_then(app: &App, record: NotificationRecord, answer: Response) -> Response {
    match app.inner.store.record_notifications(vec![record]).await {
        Ok(()) => answer,
        Err(e) => {
            tracing::error!(error = ?e, "cannot record a notification");
            temporary_failure()
        }
    }
}

/// Keeps a verified notification that changes no order, and acknowledges it.
async fn acknowledge(app: &App, record: NotificationRecord) -> Response {
    keep_then(app, record, success()).await
}

/// Nothing was committed: FAIL makes WeChat Pay send the notification again.
fn temporary_failure() -> Response {
    reply(
        StatusCode::INTERNAL_SERVER_ERROR,
        notify_fail_reply("temporary failure"),
    )
}

/// The peer's address, which the server (`wxpay-http`) gives every request.
type Peer = Option<Extension<ConnectInfo<SocketAddr>>>;

fn peer_of(peer: Peer) -> Option<SocketAddr> {
    peer.map(|Extension(ConnectInfo(p))| p)
}

pub(crate) async fn payment(State(app): State<App>, peer: Peer, body: Bytes) -> Response {
    let peer = peer_of(peer);
    let (fields, idx) = match read_for_merchant(&app, peer, &body, "payment") {
        Ok(found) => found,
        Err(rejected) => return *rejected,
    };
    let link = &app.inner.merchants[idx];
    let name = link.config.name.clone();
    let notification = match fields.payment(&link.credentials) {
        Ok(n) => n,
        Err(e) => {
            let reason = format!("verification failed: {e}");
            return reject(
                &app,
                peer,
                &body,
                Rejection {
                    kind: "payment",
                    status: StatusCode::BAD_REQUEST,
                    reason,
                    merchant: Some(name),
                    fields: Some(&fields),
                },
            );
        }
    };
    let now = app.now();
    let (transaction_id, total_fee, time_end) = match &notification.outcome {
        wxpay_protocol::v2::PaymentOutcome::Paid {
            transaction_id,
            total_fee,
            time_end,
        } => (transaction_id.clone(), *total_fee, *time_end),
        wxpay_protocol::v2::PaymentOutcome::Failed { code, description } => {
            // A verified report of a failed payment. It is not the order's state (the payer
            // may try again): WeChat Pay is asked at the check loop's next round, and its
            // answer applied (PAYERROR fails the order), so the payer sees the result within
            // a second rather than at the order's next check. The report is kept and
            // acknowledged.
            app.inner.metrics.notification("payment_failed");
            check_soon_after_failed_payment(&app, idx, &notification.out_trade_no).await;
            let record = NotificationRecord {
                verdict: "payment_failed".into(),
                reason: Some(format!("{code} {description}")),
                ..verified(now, "payment", &name, &notification.out_trade_no, None, &body)
            };
            return acknowledge(&app, record).await;
        }
    };
    let record = verified(
        now,
        "payment",
        &name,
        &notification.out_trade_no,
        Some(&transaction_id),
        &body,
    );
    if let Some(reported) = crate::api::foreign_currency(notification.fee_type.as_deref()) {
        // Rejected like a wrong amount: the same number in another currency is another sum.
        tracing::warn!(out_trade_no = ?notification.out_trade_no, fee_type = ?reported, "payment notification in another currency");
        app.inner.metrics.notification("currency_mismatch");
        let record = NotificationRecord {
            verdict: "currency_mismatch".into(),
            reason: Some(format!(
                "fee_type {reported:?}, the order is in {}",
                crate::api::ORDER_CURRENCY
            )),
            ..record
        };
        let refused = reply(
            StatusCode::BAD_REQUEST,
            notify_fail_reply("currency does not match the order"),
        );
        return keep_then(&app, record, refused).await;
    }
    let payment = Payment {
        merchant: name.clone(),
        out_trade_no: notification.out_trade_no.clone(),
        transaction_id: transaction_id.clone(),
        amount_fen: total_fee.get() as i64,
        paid_at: time_end.unix() * 1000,
        source: Source::Notification,
        now,
    };
    let outcome = match app.inner.store.apply_payment(payment, Some(record)).await {
        Ok(o) => o,
        Err(e) => {
            tracing::error!(error = ?e, out_trade_no = ?notification.out_trade_no, "cannot apply a payment notification");
            return temporary_failure();
        }
    };
    app.inner.metrics.notification(outcome.verdict());
    match outcome {
        PaymentOutcome::Applied(o) => {
            tracing::info!(out_trade_no = ?o.out_trade_no, "order paid");
            success()
        }
        PaymentOutcome::AlreadyPaid(_) => success(),
        PaymentOutcome::UnknownOrder => {
            tracing::warn!(out_trade_no = ?notification.out_trade_no, "payment notification for an unknown order");
            reply(StatusCode::NOT_FOUND, notify_fail_reply("unknown order"))
        }
        PaymentOutcome::AmountMismatch { expected, got } => {
            tracing::warn!(out_trade_no = ?notification.out_trade_no, expected, got, "payment notification with another amount");
            reply(
                StatusCode::BAD_REQUEST,
                notify_fail_reply("amount does not match the order"),
            )
        }
        PaymentOutcome::TransactionConflict(reason) => {
            tracing::warn!(out_trade_no = ?notification.out_trade_no, ?reason, "payment notification conflicts with a recorded payment");
            reply(
                StatusCode::CONFLICT,
                notify_fail_reply("conflicts with a recorded payment"),
            )
        }
    }
}

pub(crate) async fn refund(State(app): State<App>, peer: Peer, body: Bytes) -> Response {
    let peer = peer_of(peer);
    let (fields, idx) = match read_for_merchant(&app, peer, &body, "refund") {
        Ok(found) => found,
        Err(rejected) => return *rejected,
    };
    let link = &app.inner.merchants[idx];
    let name = link.config.name.clone();
    let n = match fields.refund(&link.credentials) {
        Ok(n) => n,
        Err(e) => {
            // A wrong key, a damaged or forged req_info: nothing readable, nothing changes.
            let r = Rejection {
                kind: "refund",
                status: StatusCode::BAD_REQUEST,
                reason: format!("req_info cannot be read with this merchant's key: {e}"),
                merchant: Some(name),
                fields: Some(&fields),
            };
            return reject(&app, peer, &body, r);
        }
    };
    let now = app.now();
    let record = verified(now, "refund", &name, &n.out_trade_no, Some(&n.transaction_id), &body);
    let Some(succeeded) = crate::refunds::settles(&n.refund_status) else {
        // WeChat Pay notifies settled refunds only; anything else is kept and acknowledged.
        let mut record = record;
        record.verdict = "not_settled".into();
        record.reason = Some(format!("refund_status {}", n.refund_status.as_str()));
        return acknowledge(&app, record).await;
    };
    if !succeeded {
        return refund_failure_reported(&app, idx, &n, record).await;
    }
    let result = RefundResult {
        merchant: name,
        out_refund_no: n.out_refund_no.clone(),
        out_trade_no: n.out_trade_no.clone(),
        refund_id: n.refund_id.clone(),
        amount_fen: n.refund_fee.get() as i64,
        succeeded,
        upstream_status: n.refund_status.as_str().to_owned(),
        settled_at: n.success_time.map_or(now, |t| t.unix() * 1000),
        source: Source::Notification,
        now,
    };
    let outcome = match app.inner.store.apply_refund(result, Some(record)).await {
        Ok(o) => o,
        Err(e) => {
            tracing::error!(error = ?e, out_refund_no = ?n.out_refund_no, "cannot apply a refund notification");
            return temporary_failure();
        }
    };
    let verdict = outcome.verdict();
    app.inner.metrics.notification(verdict);
    match outcome {
        RefundOutcome::Applied(r) => {
            tracing::info!(out_refund_no = ?r.out_refund_no, status = %r.status, "refund settled")
        }
        RefundOutcome::AlreadySettled(_) => {}
        RefundOutcome::UnknownRefund => {
            tracing::warn!(out_refund_no = ?n.out_refund_no, "refund notification for a refund wxpay did not ask for")
        }
        RefundOutcome::WrongOrder => {
            tracing::warn!(out_refund_no = ?n.out_refund_no, out_trade_no = ?n.out_trade_no, "refund notification names another order")
        }
        RefundOutcome::AmountMismatch { expected, got } => {
            tracing::warn!(out_refund_no = ?n.out_refund_no, expected, got, "refund notification with another amount")
        }
        RefundOutcome::Conflict(r) => {
            tracing::error!(out_refund_no = ?r.out_refund_no, status = %r.status, reported = n.refund_status.as_str(), "refund notification contradicts a settled refund")
        }
    }
    refund_answer(verdict)
}

/// The reply to a verified refund notification, by its verdict: `SUCCESS` when it is settled,
/// was already, or is being confirmed; `FAIL` (so that WeChat Pay sends it again) otherwise.
fn refund_answer(verdict: &str) -> Response {
    let (status, why) = match verdict {
        "unknown_refund" => (StatusCode::NOT_FOUND, "unknown refund"),
        "wrong_order" => (StatusCode::BAD_REQUEST, "refund does not belong to this order"),
        "amount_mismatch" => (StatusCode::BAD_REQUEST, "amount does not match the refund"),
        "status_conflict" => (StatusCode::CONFLICT, "conflicts with the recorded refund"),
        _ => return success(),
    };
    reply(status, notify_fail_reply(why))
}

/// Brings forward the check of an order whose payment a notification says failed: the check
/// loop asks WeChat Pay (`orderquery`) at its next round and applies the signed answer. A
/// check, rather than a query of its own, so that replayed notifications cannot multiply
/// calls to WeChat Pay: however many arrive, the order is asked about once a round.
async fn check_soon_after_failed_payment(app: &App, idx: usize, out_trade_no: &str) {
    let link = &app.inner.merchants[idx];
    let store = &app.inner.store;
    match store.order(link.config.name.clone(), out_trade_no.to_owned()).await {
        Ok(Some(o)) if o.status == store::OrderStatus::Pending => {
            if let Err(e) = store.schedule_check(o.id, Some(app.now())).await {
                tracing::warn!(error = ?e, "cannot bring an order's check forward after a failed payment");
            }
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = ?e, "cannot read an order after a failed payment"),
    }
}

/// A refund notification that says the refund failed (`REFUNDCLOSE`, `CHANGE`). The
/// notification authenticates nothing (AES-ECB: blocks of genuine notifications can be cut and
/// spliced), and failing a refund gives its reserved amount back to be refunded again, so the
/// notification alone never fails a refund: it brings the refund's check forward, so that the
/// check loop asks WeChat Pay (`refundquery`, whose answer is signed), and the answer decides.
async fn refund_failure_reported(
    app: &App,
    idx: usize,
    n: &wxpay_protocol::v2::RefundNotification,
    mut record: NotificationRecord,
) -> Response {
    let link = &app.inner.merchants[idx];
    let found = match app
        .inner
        .store
        .refund(link.config.name.clone(), n.out_refund_no.clone())
        .await
    {
        Ok(found) => found,
        Err(e) => {
            tracing::error!(error = ?e, "cannot read a refund for its notification");
            return temporary_failure();
        }
    };
    let verdict = match found {
        None => "unknown_refund",
        Some(r) if r.out_trade_no != n.out_trade_no => "wrong_order",
        Some(r) if r.status == crate::store::RefundStatus::Succeeded => {
            tracing::error!(out_refund_no = ?r.out_refund_no, reported = ?n.refund_status.as_str(), "refund notification contradicts a succeeded refund");
            "status_conflict"
        }
        Some(r) if r.status == crate::store::RefundStatus::Failed => "duplicate",
        Some(r) => {
            // The check loop asks WeChat Pay at its next round (a check, not a query of its
            // own, so that replayed notifications cannot multiply calls to WeChat Pay).
            if let Err(e) = app.inner.store.schedule_refund_check(r.id, Some(app.now())).await {
                tracing::error!(error = ?e, "cannot bring a refund's check forward");
                return temporary_failure();
            }
            "to_confirm"
        }
    };
    app.inner.metrics.notification(verdict);
    record.verdict = verdict.into();
    record.reason = Some(format!("refund_status {}", n.refund_status.as_str()));
    keep_then(app, record, refund_answer(verdict)).await
}
