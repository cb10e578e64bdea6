//! Refunds: `POST /v1/orders/{out_trade_no}/refunds`, `GET /v1/refunds/{out_refund_no}`, the
//! `refund` call with the merchant certificate, and the checks that settle refunds WeChat Pay
//! never notified.
//!
//! A refund is stored, with the order's amount reserved for it, before WeChat Pay is called:
//! the reservation and the insert are one transaction guarded by a `CHECK` on the order, so
//! the refunds of an order never add up to more than its amount, however many requests race.
//! The `refund` call is repeated only with the same `out_refund_no` and identical
//! parameters, which WeChat Pay treats as the same refund. A `SUCCESS` answer only means
//! "accepted"; the refund settles through the refund notification or `refundquery`.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use wxpay_protocol::v2::{ErrCode, OrderRef, Refund as RefundCall, RefundQuery, RefundStatus as WxRefundStatus, Retry};
use wxpay_protocol::{Fen, OutRefundNo, OutTradeNo};

use crate::api::{Numbers, find_order, idempotent, parse_json, sha256_hex};
use crate::app::{App, TokenScope};
use crate::error::ApiError;
use crate::store::{
    NewRefund, Order, Refund, RefundCreated, RefundOutcome, RefundResult, RefundStatus, Source, Upstream,
};
use crate::time::rfc3339;
use crate::upstream::{MerchantLink, UpstreamError};

/// `POST /v1/orders/{out_trade_no}/refunds`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RefundRequest {
    amount_fen: u64,
    out_refund_no: Option<String>,
    reason: Option<String>,
    merchant: Option<String>,
}

/// A refund as the API shows it.
#[derive(Serialize)]
pub(crate) struct RefundView {
    out_refund_no: String,
    out_trade_no: String,
    merchant: String,
    amount_fen: i64,
    status: RefundStatus,
    reason: Option<String>,
    refund_id: Option<String>,
    created_at: String,
    accepted_at: Option<String>,
    settled_at: Option<String>,
    /// Whether WeChat Pay has it: `created` (accepted), `new`/`unknown` (being sent),
    /// `rejected`.
    upstream: Upstream,
    #[serde(skip_serializing_if = "Option::is_none")]
    upstream_error: Option<String>,
}

pub(crate) fn view(r: &Refund) -> RefundView {
    RefundView {
        out_refund_no: r.out_refund_no.clone(),
        out_trade_no: r.out_trade_no.clone(),
        merchant: r.merchant.clone(),
        amount_fen: r.amount_fen,
        status: r.status,
        reason: r.reason.clone(),
        refund_id: r.refund_id.clone(),
        created_at: rfc3339(r.created_at),
        accepted_at: r.accepted_at.map(rfc3339),
        settled_at: r.settled_at.map(rfc3339),
        upstream: r.upstream,
        upstream_error: r.upstream_error.clone(),
    }
}

fn json(r: &Refund) -> serde_json::Value {
    serde_json::to_value(view(r)).unwrap_or(serde_json::Value::Null)
}

/// What makes a refund for WeChat Pay: the same for a refund about to be stored and for a
/// stored one, so that every repetition of `refund` has identical parameters.
struct RefundTerms<'a> {
    out_trade_no: &'a str,
    out_refund_no: &'a str,
    amount_fen: i64,
    reason: Option<&'a str>,
}

impl<'a> From<&'a Refund> for RefundTerms<'a> {
    fn from(r: &'a Refund) -> Self {
        RefundTerms {
            out_trade_no: &r.out_trade_no,
            out_refund_no: &r.out_refund_no,
            amount_fen: r.amount_fen,
            reason: r.reason.as_deref(),
        }
    }
}

impl<'a> From<&'a NewRefund> for RefundTerms<'a> {
    fn from(r: &'a NewRefund) -> Self {
        RefundTerms {
            out_trade_no: &r.out_trade_no,
            out_refund_no: &r.out_refund_no,
            amount_fen: r.amount_fen,
            reason: r.reason.as_deref(),
        }
    }
}

/// What `refund` is sent for a refund of an order of `order_amount` fen.
fn refund_call(app: &App, r: RefundTerms<'_>, order_amount: i64) -> Result<RefundCall, ApiError> {
    let internal = |e: wxpay_protocol::Error| ApiError::Internal(e.to_string());
    let order = OrderRef::OutTradeNo(OutTradeNo::new(r.out_trade_no).map_err(internal)?);
    let mut call = RefundCall::new(
        order,
        OutRefundNo::new(r.out_refund_no).map_err(internal)?,
        Fen::new(order_amount as u64).map_err(internal)?,
        Fen::new(r.amount_fen as u64).map_err(internal)?,
    );
    call.refund_desc = r.reason.map(str::to_owned);
    call.notify_url = Some(format!(
        "{}/notify/v2/refund",
        app.inner.config.public_url.trim_end_matches('/')
    ));
    Ok(call)
}

pub(crate) async fn create_refund(
    State(app): State<App>,
    Extension(scope): Extension<TokenScope>,
    Path(out_trade_no): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    // The same key and body on another order is another request.
    let hash = sha256_hex(format!("{out_trade_no}\n{}", String::from_utf8_lossy(&body)).as_bytes());
    let run = {
        let app = app.clone();
        move |numbers: Numbers| async move { create(&app, out_trade_no, &body, numbers).await }
    };
    idempotent(&app, format!("{}/refunds", scope.0), &headers, hash, run).await
}

async fn create(
    app: &App,
    out_trade_no: String,
    body: &[u8],
    numbers: Numbers,
) -> Result<(StatusCode, serde_json::Value), ApiError> {
    let req: RefundRequest = parse_json(body)?;
    let link = app.merchant(req.merchant.as_deref())?;
    let now = app.now();
    if req.amount_fen == 0 {
        return Err(ApiError::Invalid("amount_fen must be at least 1".into()));
    }
    Fen::new(req.amount_fen).map_err(|e| ApiError::Invalid(e.to_string()))?;
    let out_refund_no = match &req.out_refund_no {
        Some(n) => OutRefundNo::new(n.clone())
            .map_err(|e| ApiError::Invalid(e.to_string()))?
            .to_string(),
        None => numbers.number('R', now),
    };
    if link.lacks_client_cert(now) {
        return Err(ApiError::NotConfigured(format!(
            "refunds need the merchant API certificate of merchant {:?}: set cert_path and key_path (or a .p12 cert_path) in its configuration",
            link.config.name
        )));
    }
    let order = find_order(app, link, out_trade_no).await?;
    if req.amount_fen as i64 > order.amount_fen {
        return Err(ApiError::Conflict {
            code: "refund_exceeds_amount",
            message: format!(
                "refunding {} fen would exceed order {}'s amount of {} fen",
                req.amount_fen, order.out_trade_no, order.amount_fen
            ),
        });
    }
    let request_hash = sha256_hex(
        serde_json::json!([
            link.config.name,
            order.out_trade_no,
            out_refund_no,
            req.amount_fen,
            req.reason
        ])
        .to_string()
        .as_bytes(),
    );
    let new = NewRefund {
        merchant: link.config.name.clone(),
        out_trade_no: order.out_trade_no.clone(),
        out_refund_no,
        amount_fen: req.amount_fen as i64,
        reason: req.reason.clone(),
        request_hash: request_hash.clone(),
        first_check_at: app.first_check_at(now),
        now,
    };
    // Check everything else WeChat Pay would refuse (the amount, the reason's length) before
    // anything is stored.
    refund_call(app, RefundTerms::from(&new), order.amount_fen)?
        .check()
        .map_err(|e| ApiError::Invalid(e.to_string()))?;

    let refund = match app.inner.store.create_refund(new).await? {
        RefundCreated::New(r) => r,
        RefundCreated::Existing(r) if r.request_hash != request_hash => {
            return Err(ApiError::Conflict {
                code: "out_refund_no_taken",
                message: format!("refund {} exists with other parameters", r.out_refund_no),
            });
        }
        RefundCreated::Existing(r) => {
            if r.status != RefundStatus::Pending || r.upstream == Upstream::Created {
                return Ok((StatusCode::OK, json(&r)));
            }
            // The same refund again, not yet accepted: send it again, identical.
            r
        }
        RefundCreated::NoOrder => return Err(ApiError::NotFound(format!("no order {}", order.out_trade_no))),
        RefundCreated::NotPaid(status) => {
            return Err(ApiError::Conflict {
                code: "order_not_paid",
                message: format!(
                    "order {} is {status}: only paid orders can be refunded",
                    order.out_trade_no
                ),
            });
        }
        RefundCreated::Exceeds { available } => {
            return Err(ApiError::Conflict {
                code: "refund_exceeds_amount",
                message: format!(
                    "refunding {} fen would exceed order {}'s amount of {} fen: {available} fen can still be refunded",
                    req.amount_fen, order.out_trade_no, order.amount_fen
                ),
            });
        }
    };
    let refund = submit(app, link, refund, order.amount_fen).await?;
    match refund.status {
        RefundStatus::Failed => Err(ApiError::Rejected(format!(
            "WeChat Pay refused refund {}: {}",
            refund.out_refund_no,
            refund.upstream_error.as_deref().unwrap_or("no reason given")
        ))),
        _ => Ok((StatusCode::CREATED, json(&refund))),
    }
}

/// Sends a stored refund to WeChat Pay and records the answer: accepted; refused for good
/// (the refund fails, unless an earlier attempt without an answer turns out to have been
/// accepted); or anything else (no answer, "slow down", a refusal of the request itself such
/// as a signature or certificate problem): it stays pending and is sent again, identical, by
/// the checks.
pub(crate) async fn submit(
    app: &App,
    link: &MerchantLink,
    refund: Refund,
    order_amount: i64,
) -> Result<Refund, ApiError> {
    let call = refund_call(app, RefundTerms::from(&refund), order_amount)?;
    let store = &app.inner.store;
    let result = app.inner.upstream.call(link, &call).await;
    let now = app.now();
    let retry_later = async |error: String| {
        tracing::warn!(out_refund_no = ?refund.out_refund_no, ?error, "refund not accepted yet; it will be sent again");
        store
            .refund_upstream_failure(refund.id, false, error, now, app.first_check_at(now))
            .await
    };
    let refund = match result {
        Ok(answer) => {
            if answer.refund_fee.get() as i64 != refund.amount_fen {
                tracing::error!(out_refund_no = ?refund.out_refund_no, accepted = ?answer.refund_fee, asked = refund.amount_fen, "WeChat Pay accepted a refund of another amount");
            }
            store
                .refund_accepted(refund.id, answer.refund_id, now, app.first_check_at(now))
                .await?
        }
        Err(UpstreamError::Rejected { code, description }) if code.retry() == Retry::Final => {
            if refund.upstream == Upstream::Unknown {
                // An earlier attempt had no answer and may have been accepted: a refusal now
                // (a changed balance, a rate limit) proves nothing about it. Ask.
                match sync(app, link, refund.clone()).await {
                    Ok((r, Synced::NotFound)) => {
                        store
                            .refund_upstream_failure(r.id, true, format!("{code} {description}"), now, now)
                            .await?
                    }
                    Ok((r, _)) => r,
                    Err(e) => retry_later(format!("{code} {description}; refundquery: {e}")).await?,
                }
            } else {
                tracing::warn!(out_refund_no = ?refund.out_refund_no, ?code, "WeChat Pay refused a refund");
                store
                    .refund_upstream_failure(refund.id, true, format!("{code} {description}"), now, now)
                    .await?
            }
        }
        Err(e) => retry_later(e.to_string()).await?,
    };
    Ok(refund)
}

#[derive(Deserialize)]
pub(crate) struct GetRefundQuery {
    merchant: Option<String>,
}

pub(crate) async fn get_refund(
    State(app): State<App>,
    Path(out_refund_no): Path<String>,
    Query(q): Query<GetRefundQuery>,
) -> Result<Response, ApiError> {
    let link = app.merchant(q.merchant.as_deref())?;
    let refund = app
        .inner
        .store
        .refund(link.config.name.clone(), out_refund_no.clone())
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no refund {out_refund_no}")))?;
    Ok(Json(view(&refund)).into_response())
}

/// A settlement WeChat Pay reports for a refund (`SUCCESS`, `REFUNDCLOSE`, `CHANGE`), or
/// `None` while it is processing.
pub(crate) fn settles(status: &WxRefundStatus) -> Option<bool> {
    match status {
        WxRefundStatus::Success => Some(true),
        // CHANGE: the money could not reach the payer (a closed card); the merchant settles
        // it by hand in the merchant platform, so for the API the refund failed.
        WxRefundStatus::RefundClose | WxRefundStatus::Change => Some(false),
        WxRefundStatus::Processing | WxRefundStatus::Other(_) => None,
    }
}

/// What `refundquery` said about a refund.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Synced {
    /// WeChat Pay does not know it.
    NotFound,
    /// WeChat Pay has it, still processing.
    Processing,
    /// WeChat Pay's settlement is recorded (now or before).
    Settled,
    /// WeChat Pay says something the stored refund contradicts (a settled refund the other
    /// way, another order or amount): nothing was changed.
    Contradicts(String),
}

/// Asks WeChat Pay about a refund (`refundquery`) and applies what it says: that it was
/// accepted (its `refund_id`), and how it settled.
pub(crate) async fn sync(app: &App, link: &MerchantLink, refund: Refund) -> Result<(Refund, Synced), ApiError> {
    let no = OutRefundNo::new(refund.out_refund_no.clone()).map_err(|e| ApiError::Internal(e.to_string()))?;
    let answer = match app.inner.upstream.call(link, &RefundQuery::by_out_refund_no(no)).await {
        Ok(a) => a,
        Err(UpstreamError::Rejected {
            code: ErrCode::RefundNotExist,
            ..
        }) => return Ok((refund, Synced::NotFound)),
        Err(UpstreamError::NoAnswer(e)) => return Err(ApiError::Unavailable(format!("refundquery: {e}"))),
        Err(e) => return Err(ApiError::Rejected(format!("refundquery: {e}"))),
    };
    let Some(record) = answer.refunds.iter().find(|r| r.out_refund_no == refund.out_refund_no) else {
        return Ok((refund, Synced::NotFound));
    };
    let store = &app.inner.store;
    let now = app.now();
    let Some(succeeded) = settles(&record.refund_status) else {
        let next = app.first_check_at(now);
        let refund = if refund.upstream == Upstream::Created || refund.status != RefundStatus::Pending {
            refund
        } else {
            store
                .refund_accepted(refund.id, record.refund_id.clone(), now, next)
                .await?
        };
        return Ok((refund, Synced::Processing));
    };
    let result = RefundResult {
        merchant: refund.merchant.clone(),
        out_refund_no: refund.out_refund_no.clone(),
        out_trade_no: answer.out_trade_no.clone(),
        refund_id: record.refund_id.clone(),
        amount_fen: record.refund_fee.get() as i64,
        succeeded,
        upstream_status: record.refund_status.as_str().to_owned(),
        settled_at: record.refund_success_time.map_or(now, |t| t.unix() * 1000),
        source: Source::Query,
        now,
    };
    let said = format!(
        "refundquery says {} for {} fen of order {}",
        record.refund_status.as_str(),
        record.refund_fee,
        answer.out_trade_no
    );
    match store.apply_refund(result, None).await? {
        RefundOutcome::Applied(r) | RefundOutcome::AlreadySettled(r) => Ok((r, Synced::Settled)),
        RefundOutcome::Conflict(r) => {
            tracing::error!(out_refund_no = ?r.out_refund_no, status = %r.status, upstream = record.refund_status.as_str(), "refundquery contradicts a settled refund");
            let why = format!("{said}, but the refund is recorded as {}", r.status);
            Ok((r, Synced::Contradicts(why)))
        }
        other => {
            tracing::error!(out_refund_no = ?refund.out_refund_no, verdict = other.verdict(), "refundquery does not fit the stored refund");
            let why = format!("{said}, which does not fit the stored refund ({})", other.verdict());
            Ok((refund, Synced::Contradicts(why)))
        }
    }
}

/// One round of the refund checks: a refund not yet accepted is sent again (identical), an
/// accepted one still pending is queried.
pub(crate) async fn check_one(app: &App, refund: Refund) {
    let store = &app.inner.store;
    let Some(link) = app.merchant_named(&refund.merchant) else {
        tracing::warn!(merchant = ?refund.merchant, "a refund of a merchant no longer configured; not checked");
        let _ = store.schedule_refund_check(refund.id, None).await;
        return;
    };
    let next = crate::jobs::next_check_at(&app.inner.config.jobs, refund.created_at, app.now());
    if refund.upstream != Upstream::Created {
        let order: Option<Order> = store
            .order(refund.merchant.clone(), refund.out_trade_no.clone())
            .await
            .ok()
            .flatten();
        let Some(order) = order else {
            let _ = store.schedule_refund_check(refund.id, Some(next)).await;
            return;
        };
        match submit(app, link, refund.clone(), order.amount_fen).await {
            Ok(r) if r.status == RefundStatus::Pending && r.upstream != Upstream::Created => {
                let _ = store.schedule_refund_check(r.id, Some(next)).await;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(out_refund_no = ?refund.out_refund_no, error = ?e, "sending a refund again failed");
                let _ = store.schedule_refund_check(refund.id, Some(next)).await;
            }
        }
        return;
    }
    match sync(app, link, refund.clone()).await {
        Ok((r, _)) if r.status != RefundStatus::Pending => {
            tracing::info!(out_refund_no = ?r.out_refund_no, status = %r.status, "refund settled by a check");
        }
        Ok((r, _)) => {
            let _ = store.schedule_refund_check(r.id, Some(next)).await;
        }
        Err(e) => {
            tracing::warn!(out_refund_no = ?refund.out_refund_no, error = ?e, "refund check failed");
            let _ = store.schedule_refund_check(refund.id, Some(next)).await;
        }
    }
}
