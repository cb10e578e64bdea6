//! `/simulator/…`: what the user and the tests do that WeChat Pay's servers do on their own.
//!
//! | method and path | what |
//! |---|---|
//! | `POST /simulator/pay` | the user pays (or fails to pay) an order; the notification starts |
//! | `GET /simulator/checkout/{prepay_id}` | a page with a pay button, for the demo |
//! | `GET /simulator/orders/{out_trade_no}` | the simulator's view of an order |
//! | `GET /simulator/notifications` | every delivery attempt |
//! | `POST/GET/DELETE /simulator/faults` | faults on demand |
//! | `POST /simulator/refunds/{out_refund_no}/complete` | settle a refund now, as success or failure |
//! | `POST /simulator/sink` | answers notifications with SUCCESS (a notify URL for load runs) |
//! | `POST /simulator/v3/rotate`, `/simulator/v3/retire` | APIv3: a platform certificate rotation |

use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use wxpay_protocol::v2::RefundStatus;
use wxpay_protocol::{BeijingTime, Fen};

use crate::faults::FaultRequest;
use crate::notifier::What;
use crate::store::{Loc, Order, OrderState};
use crate::v2::{expire_if_due, query_answer};
use crate::{Simulator, ids};

/// Why a payment cannot happen.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PayError {
    #[error("no such order")]
    NotFound,
    #[error("the order is {0}, not NOTPAY")]
    NotPayable(&'static str),
    #[error("the prepay_id is older than two hours; call unifiedorder again for a new one")]
    PrepayExpired,
    #[error("the order was placed for another openid: only its payer can pay it")]
    NotThePayer,
}

/// Pays (or fails) the order at `loc`, by `payer` when one is given (an order placed for an
/// openid, JSAPI's, can be paid by that user only; one placed without, NATIVE's, takes the
/// payer's); the caller starts its notification.
pub(crate) fn pay(
    sim: &Simulator,
    loc: Loc,
    success: bool,
    prepay_id: Option<&str>,
    payer: Option<&str>,
) -> Result<(), PayError> {
    let now = sim.now();
    let mut g = sim.inner.store.lock(loc.shard);
    expire_if_due(&mut g, loc.slot, now);
    let shard = g.shard();
    let o = g.get(loc.slot).ok_or(PayError::NotFound)?;
    if let Some(p) = prepay_id {
        if &*o.prepay_id != p {
            return Err(PayError::PrepayExpired);
        }
        if now - o.prepay_at > 7200 {
            return Err(PayError::PrepayExpired);
        }
    }
    if o.state != OrderState::NotPay {
        return Err(PayError::NotPayable(o.state.name()));
    }
    match payer {
        Some(p) if !o.openid.is_empty() && *o.openid != *p => return Err(PayError::NotThePayer),
        Some(p) => o.openid = p.into(),
        None => {}
    }
    let to = if success {
        o.transaction_id = Some(ids::transaction_id(shard, loc.slot, now).into_boxed_str());
        o.paid_at = Some(now);
        OrderState::Success
    } else {
        o.pay_error = Some(("NOTENOUGH".into(), "余额不足".into()));
        OrderState::PayError
    };
    g.set_state(loc.slot, to);
    Ok(())
}

/// Pays (or fails) the order at `loc` and starts its notification.
pub(crate) fn pay_and_notify(
    sim: &Simulator,
    loc: Loc,
    success: bool,
    prepay_id: Option<&str>,
    payer: Option<&str>,
) -> Result<(), PayError> {
    pay(sim, loc, success, prepay_id, payer)?;
    sim.inner.notifier.payment(loc);
    Ok(())
}

/// Settles the refund `idx` of the order at `loc` (if it is still processing) and starts its
/// notification when one was asked for.
pub(crate) fn complete_refund(sim: &Simulator, loc: Loc, idx: usize, status: RefundStatus) -> bool {
    let mut g = sim.inner.store.lock(loc.shard);
    let Some(o) = g.get(loc.slot) else {
        return false;
    };
    let merchant = &sim.inner.merchants[usize::from(o.mch)];
    let Some(r) = o.refunds.get_mut(idx) else {
        return false;
    };
    if r.status != RefundStatus::Processing {
        return false;
    }
    r.status = status;
    r.settled_at = Some(sim.now());
    if r.status == RefundStatus::RefundClose {
        // A closed refund gives its amount back to the merchant's refundable balance, as it
        // gives it back to the order.
        merchant.give_back_balance(r.refund_fee);
    }
    let notify = r.notify_url.is_some();
    g.note_if_finished(loc.slot);
    drop(g);
    if notify {
        sim.inner.notifier.refund(loc, idx);
    }
    true
}

/// Records that a notification was acknowledged.
pub(crate) fn mark_notified(sim: &Simulator, loc: Loc, what: What) {
    let mut g = sim.inner.store.lock(loc.shard);
    if let Some(o) = g.get(loc.slot) {
        match what {
            What::Payment => o.notified = true,
            What::RefundNotify(i) => {
                if let Some(r) = o.refunds.get_mut(i) {
                    r.notified = true;
                }
            }
            _ => {}
        }
    }
    g.note_if_finished(loc.slot);
}

fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (
        status,
        Json(serde_json::json!({"error": {"code": code, "message": message.into()}})),
    )
        .into_response()
}

fn boxed_error(status: StatusCode, code: &str, message: impl Into<String>) -> Box<Response> {
    Box::new(error(status, code, message))
}

/// Finds an order by number, in the merchant given or in any merchant.
fn find(sim: &Simulator, out_trade_no: &str, mch_id: Option<&str>) -> Result<Loc, Box<Response>> {
    let merchants: Vec<u16> = match mch_id {
        Some(m) => match sim.inner.by_mch.get(m) {
            Some(i) => vec![*i],
            None => {
                return Err(boxed_error(
                    StatusCode::NOT_FOUND,
                    "unknown_merchant",
                    format!("no merchant {m}"),
                ));
            }
        },
        None => (0..sim.inner.merchants.len() as u16).collect(),
    };
    let mut found = Vec::new();
    for mch in merchants {
        let shard = sim.inner.store.shard_of(mch, out_trade_no);
        if let Some(slot) = sim.inner.store.lock(shard).find(mch, out_trade_no) {
            found.push(Loc { shard, slot });
        }
    }
    match found.as_slice() {
        [loc] => Ok(*loc),
        [] => Err(boxed_error(
            StatusCode::NOT_FOUND,
            "order_not_found",
            format!("no order {out_trade_no}"),
        )),
        _ => Err(boxed_error(
            StatusCode::CONFLICT,
            "ambiguous",
            "several merchants have this order number; give mch_id",
        )),
    }
}

/// The simulator's view of an order.
#[derive(Serialize)]
pub(crate) struct OrderView {
    pub(crate) mch_id: String,
    pub(crate) appid: String,
    pub(crate) out_trade_no: String,
    pub(crate) trade_state: String,
    pub(crate) total_fee: Fen,
    pub(crate) refunded_fee: Fen,
    pub(crate) body: String,
    pub(crate) attach: Option<String>,
    pub(crate) openid: String,
    pub(crate) notify_url: String,
    pub(crate) prepay_id: String,
    pub(crate) transaction_id: Option<String>,
    pub(crate) created_at: String,
    pub(crate) time_expire: Option<String>,
    pub(crate) paid_at: Option<String>,
    pub(crate) notified: bool,
    pub(crate) refunds: Vec<RefundView>,
}

#[derive(Serialize)]
pub(crate) struct RefundView {
    out_refund_no: String,
    refund_id: String,
    refund_fee: Fen,
    status: String,
    accepted_at: String,
    settled_at: Option<String>,
    notify_url: Option<String>,
    notified: bool,
}

fn dashed(t: i64) -> String {
    BeijingTime::from_unix(t).to_dashed()
}

fn view(sim: &Simulator, o: &Order) -> OrderView {
    OrderView {
        mch_id: sim.inner.merchants[usize::from(o.mch)].mch_id.as_str().to_owned(),
        appid: o.appid.to_string(),
        out_trade_no: o.out_trade_no.to_string(),
        trade_state: query_answer(o).trade_state.as_str().to_owned(),
        total_fee: o.total_fee,
        refunded_fee: o.refunded(),
        body: o.body.to_string(),
        attach: o.attach.as_deref().map(str::to_owned),
        openid: o.openid.to_string(),
        notify_url: o.notify_url.to_string(),
        prepay_id: o.prepay_id.to_string(),
        transaction_id: o.transaction_id.as_deref().map(str::to_owned),
        created_at: dashed(o.created_at),
        time_expire: o.time_expire.map(dashed),
        paid_at: o.paid_at.map(dashed),
        notified: o.notified,
        refunds: o
            .refunds
            .iter()
            .map(|r| RefundView {
                out_refund_no: r.out_refund_no.to_string(),
                refund_id: r.refund_id.to_string(),
                refund_fee: r.refund_fee,
                status: r.status.as_str().to_owned(),
                accepted_at: dashed(r.accepted_at),
                settled_at: r.settled_at.map(dashed),
                notify_url: r.notify_url.as_deref().map(str::to_owned),
                notified: r.notified,
            })
            .collect(),
    }
}

pub(crate) fn view_at(sim: &Simulator, loc: Loc) -> Option<OrderView> {
    let now = sim.now();
    let mut g = sim.inner.store.lock(loc.shard);
    expire_if_due(&mut g, loc.slot, now);
    g.get(loc.slot).map(|o| view(sim, o))
}

#[derive(Deserialize)]
struct PayRequest {
    out_trade_no: String,
    mch_id: Option<String>,
    outcome: Option<String>,
    /// Who pays: the order's own openid, or any for an order placed without one (NATIVE).
    openid: Option<String>,
}

async fn pay_endpoint(State(sim): State<Simulator>, Json(req): Json<PayRequest>) -> Response {
    let success = match req.outcome.as_deref() {
        None | Some("success") => true,
        Some("fail") => false,
        Some(other) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_outcome",
                format!("outcome {other:?} is not success or fail"),
            );
        }
    };
    let loc = match find(&sim, &req.out_trade_no, req.mch_id.as_deref()) {
        Ok(l) => l,
        Err(r) => return *r,
    };
    if req.openid.as_deref().is_some_and(|p| p.is_empty() || p.len() > 128) {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_openid",
            "openid must be 1 to 128 characters",
        );
    }
    match pay_and_notify(&sim, loc, success, None, req.openid.as_deref()) {
        Ok(()) => Json(view_at(&sim, loc)).into_response(),
        Err(e @ PayError::NotFound) => error(StatusCode::NOT_FOUND, "order_not_found", e.to_string()),
        Err(e @ PayError::NotThePayer) => error(StatusCode::CONFLICT, "openid_mismatch", e.to_string()),
        Err(e) => error(StatusCode::CONFLICT, "not_payable", e.to_string()),
    }
}

#[derive(Deserialize)]
struct MchQuery {
    mch_id: Option<String>,
}

async fn order_endpoint(State(sim): State<Simulator>, Path(no): Path<String>, Query(q): Query<MchQuery>) -> Response {
    match find(&sim, &no, q.mch_id.as_deref()) {
        Ok(loc) => match view_at(&sim, loc) {
            Some(v) => Json(v).into_response(),
            None => error(StatusCode::NOT_FOUND, "order_not_found", "gone"),
        },
        Err(r) => *r,
    }
}

#[derive(Deserialize)]
struct NotificationsQuery {
    out_trade_no: Option<String>,
    limit: Option<usize>,
}

async fn notifications_endpoint(State(sim): State<Simulator>, Query(q): Query<NotificationsQuery>) -> Response {
    let attempts = sim
        .inner
        .notifier
        .attempts(q.out_trade_no.as_deref(), q.limit.unwrap_or(1000).min(10_000));
    Json(serde_json::json!({ "attempts": attempts, "pending": sim.inner.notifier.pending() })).into_response()
}

/// `?api=refund&out_refund_no=R1`: the calls of an API whose fields have the other
/// parameters' values.
async fn requests_endpoint(
    State(sim): State<Simulator>,
    Query(q): Query<std::collections::BTreeMap<String, String>>,
) -> Response {
    let having: Vec<(&str, &str)> = q
        .iter()
        .filter(|(k, _)| k.as_str() != "api")
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let calls = sim.inner.requests.list(q.get("api").map(String::as_str), &having);
    Json(serde_json::json!({ "requests": calls })).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClockRequest {
    advance_secs: Option<u32>,
    until_beijing_hour: Option<u8>,
}

/// Moves the simulator's time on (never back: WeChat Pay's time only goes forward), by a
/// number of seconds or to the next time it is a given hour in Beijing.
async fn clock_endpoint(State(sim): State<Simulator>, Json(req): Json<ClockRequest>) -> Response {
    let moved = match (req.advance_secs, req.until_beijing_hour) {
        (Some(secs), None) => {
            sim.advance_clock(i64::from(secs));
            i64::from(secs)
        }
        (None, Some(hour)) if hour < 24 => sim.advance_clock_to_beijing_hour(hour),
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_clock",
                "give either advance_secs or until_beijing_hour (0-23)",
            );
        }
    };
    Json(serde_json::json!({ "now": sim.now(), "moved_secs": moved })).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BalanceRequest {
    mch_id: String,
    /// Fen left for refunds; `null` lifts the limit. Absent (the outer `None`) is refused:
    /// a forgotten field must not silently lift the limit a test relies on.
    #[serde(default, deserialize_with = "present")]
    fen: Option<Option<u64>>,
}

/// A field that may be `null` but must be there: `Some(value)` when given, `None` (by
/// `#[serde(default)]`) when absent.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<u64>>, D::Error> {
    Option::<u64>::deserialize(d).map(Some)
}

/// Sets what a merchant has left for refunds: each accepted refund takes its amount, and one
/// above what is left is refused with `NOTENOUGH` (APIv3: `NOT_ENOUGH`), as WeChat Pay refuses
/// refunds when the merchant's funds run short. Unlimited until set.
async fn balance_endpoint(State(sim): State<Simulator>, Json(req): Json<BalanceRequest>) -> Response {
    let Some(&mch) = sim.inner.by_mch.get(req.mch_id.as_str()) else {
        return error(StatusCode::NOT_FOUND, "unknown_merchant", "no merchant has this mch_id");
    };
    let Some(fen) = req.fen else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_balance",
            "give fen: the fen left for refunds, or null to lift the limit",
        );
    };
    let value = match fen.map(i64::try_from) {
        None => -1,
        Some(Ok(v)) => v,
        Some(Err(_)) => return error(StatusCode::BAD_REQUEST, "invalid_balance", "fen is too large"),
    };
    sim.inner.merchants[usize::from(mch)]
        .refund_balance
        .store(value, std::sync::atomic::Ordering::SeqCst);
    Json(serde_json::json!({ "mch_id": req.mch_id, "fen": fen })).into_response()
}

/// APIv3: announces a new platform certificate on `/v3/certificates` (the old one listed
/// beside it, expiring in a day) and signs with it from now on, in certificate mode; WeChat
/// Pay's rotation. It lasts until the simulator stops (the keys folder keeps the first one).
async fn rotate_endpoint(State(sim): State<Simulator>) -> Response {
    if sim.inner.v3.is_none() {
        return error(StatusCode::NOT_FOUND, "no_v3", "APIv3 is not enabled on this simulator");
    }
    let now = sim.now();
    // Making an RSA key takes a moment: off the threads that answer calls.
    let fresh = match tokio::task::spawn_blocking(move || crate::v3::keys::fresh_platform(now)).await {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => return error(StatusCode::INTERNAL_SERVER_ERROR, "keygen", e.to_string()),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, "keygen", e.to_string()),
    };
    let Some(v3) = sim.inner.v3.as_ref() else {
        return error(StatusCode::NOT_FOUND, "no_v3", "APIv3 is not enabled on this simulator");
    };
    let serial = v3.rotate(fresh, now);
    Json(serde_json::json!({ "serial_no": serial })).into_response()
}

/// APIv3: retires every platform certificate but the one that signs.
async fn retire_endpoint(State(sim): State<Simulator>) -> Response {
    match sim.inner.v3.as_ref() {
        Some(v3) => Json(serde_json::json!({ "retired": v3.retire() })).into_response(),
        None => error(StatusCode::NOT_FOUND, "no_v3", "APIv3 is not enabled on this simulator"),
    }
}

async fn add_fault(State(sim): State<Simulator>, Json(req): Json<FaultRequest>) -> Response {
    match sim.inner.faults.add(req) {
        Ok(f) => (StatusCode::CREATED, Json(f)).into_response(),
        Err(msg) => error(StatusCode::BAD_REQUEST, "invalid_fault", msg),
    }
}

async fn list_faults(State(sim): State<Simulator>) -> Response {
    Json(serde_json::json!({ "faults": sim.inner.faults.list() })).into_response()
}

async fn clear_faults(State(sim): State<Simulator>) -> Response {
    Json(serde_json::json!({ "removed": sim.inner.faults.clear(None) })).into_response()
}

async fn clear_fault(State(sim): State<Simulator>, Path(id): Path<u64>) -> Response {
    match sim.inner.faults.clear(Some(id)) {
        0 => error(StatusCode::NOT_FOUND, "fault_not_found", format!("no fault {id}")),
        n => Json(serde_json::json!({ "removed": n })).into_response(),
    }
}

#[derive(Deserialize)]
struct CompleteRequest {
    mch_id: Option<String>,
    status: Option<String>,
}

async fn complete_refund_endpoint(
    State(sim): State<Simulator>,
    Path(out_refund_no): Path<String>,
    Json(req): Json<CompleteRequest>,
) -> Response {
    let status = match req.status.as_deref().unwrap_or("SUCCESS") {
        "SUCCESS" => RefundStatus::Success,
        "REFUNDCLOSE" => RefundStatus::RefundClose,
        "CHANGE" => RefundStatus::Change,
        other => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_status",
                format!("{other:?} is not SUCCESS, REFUNDCLOSE or CHANGE"),
            );
        }
    };
    let mchs: Vec<u16> = match req.mch_id.as_deref() {
        Some(m) => sim.inner.by_mch.get(m).copied().into_iter().collect(),
        None => (0..sim.inner.merchants.len() as u16).collect(),
    };
    let Some((loc, idx)) = mchs
        .iter()
        .find_map(|m| sim.inner.store.find_refund(*m, &out_refund_no))
    else {
        return error(
            StatusCode::NOT_FOUND,
            "refund_not_found",
            format!("no refund {out_refund_no}"),
        );
    };
    if complete_refund(&sim, loc, idx, status) {
        Json(view_at(&sim, loc)).into_response()
    } else {
        error(StatusCode::CONFLICT, "not_processing", "the refund is already settled")
    }
}

async fn sink() -> Response {
    (
        [(header::CONTENT_TYPE, "text/xml")],
        wxpay_protocol::v2::NOTIFY_SUCCESS_REPLY,
    )
        .into_response()
}

async fn health(State(sim): State<Simulator>) -> Response {
    Json(serde_json::json!({
        "status": "ok",
        "orders": sim.inner.store.len(),
        "mode": format!("{:?}", sim.inner.config.mode).to_lowercase(),
        "time_scale": sim.inner.config.time_scale,
    }))
    .into_response()
}

pub(crate) fn router() -> Router<Simulator> {
    Router::new()
        .route("/simulator/pay", post(pay_endpoint))
        .route("/simulator/orders/{out_trade_no}", get(order_endpoint))
        .route("/simulator/notifications", get(notifications_endpoint))
        .route("/simulator/requests", get(requests_endpoint))
        .route("/simulator/clock", post(clock_endpoint))
        .route("/simulator/balance", post(balance_endpoint))
        .route(
            "/simulator/faults",
            post(add_fault).get(list_faults).delete(clear_faults),
        )
        .route("/simulator/faults/{id}", delete(clear_fault))
        .route(
            "/simulator/refunds/{out_refund_no}/complete",
            post(complete_refund_endpoint),
        )
        .route("/simulator/sink", post(sink))
        .route("/simulator/v3/rotate", post(rotate_endpoint))
        .route("/simulator/v3/retire", post(retire_endpoint))
        .route("/simulator/health", get(health))
        .merge(crate::checkout::router())
}
