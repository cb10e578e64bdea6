//! `POST /notify/v2/pay` and `POST /notify/v2/refund`: WeChat Pay's APIv2 notifications;
//! `POST /notify/v3/{merchant}`: APIv3's (both kinds), answered 204 when kept and 4xx/5xx
//! with `{"code":"FAIL","message":…}` otherwise, as WeChat Pay expects.
//!
//! In this order: the body size limit (the router's), the hardened XML reader, the merchant
//! found by `mch_id` and `appid`, the signature with that merchant's configured algorithm
//! (a refund's `req_info` decrypted with its key), all in the provider
//! ([`crate::provider::v2::V2Inbox`]); then the core decides and commits
//! ([`crate::service::notifications`]). Only after the commit is the exact SUCCESS reply
//! sent. Anything rejected before verification is answered FAIL with the same reply, which
//! says nothing of why, so that a genuine notification comes again and a forger learns
//! nothing.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use wxpay_protocol::v2::{NOTIFY_SUCCESS_REPLY, notify_fail_reply};

use crate::edge::app::App;
use crate::edge::body::Peer;
use crate::provider::v3::{V3Inbox, V3Notice, signature_headers};
use crate::service::notifications::{Misfit, NoticeAnswer, NoticeKind};

fn reply(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "text/xml; charset=utf-8")], body).into_response()
}

/// The `return_msg` of every rejection before verification: the caller is not known to be
/// WeChat Pay, so the reply says nothing of why (whether a merchant exists, which check
/// failed); the reason is in the log and the record.
const REJECTED: &str = "invalid notification";

/// The reply to a notification rejected before verification.
fn rejected() -> Response {
    reply(StatusCode::BAD_REQUEST, notify_fail_reply(REJECTED))
}

/// What a verified notification is answered with, whatever the protocol: `None` when it
/// needs not come again, else the status and why.
fn verdict(a: NoticeAnswer) -> Option<(StatusCode, &'static str)> {
    Some(match a {
        NoticeAnswer::Acknowledged => return None,
        // Nothing was committed: FAIL makes WeChat Pay send the notification again.
        NoticeAnswer::NotKept => (StatusCode::INTERNAL_SERVER_ERROR, "temporary failure"),
        NoticeAnswer::Refused(m) => match m {
            Misfit::UnknownOrder => (StatusCode::NOT_FOUND, "unknown order"),
            Misfit::AmountMismatch => (StatusCode::BAD_REQUEST, "amount does not match the order"),
            Misfit::CurrencyMismatch => (StatusCode::BAD_REQUEST, "currency does not match the order"),
            Misfit::PaymentConflict => (StatusCode::CONFLICT, "conflicts with a recorded payment"),
            Misfit::UnknownRefund => (StatusCode::NOT_FOUND, "unknown refund"),
            Misfit::WrongOrder => (StatusCode::BAD_REQUEST, "refund does not belong to this order"),
            Misfit::RefundAmountMismatch => (StatusCode::BAD_REQUEST, "amount does not match the refund"),
            Misfit::RefundConflict => (StatusCode::CONFLICT, "conflicts with the recorded refund"),
        },
    })
}

/// The reply to a verified APIv2 notification: `SUCCESS` only when it needs not come again.
fn answer(a: NoticeAnswer) -> Response {
    match verdict(a) {
        None => reply(StatusCode::OK, NOTIFY_SUCCESS_REPLY.to_owned()),
        Some((status, why)) => reply(status, notify_fail_reply(why)),
    }
}

/// An APIv3 refusal: the status decides (WeChat Pay sends again after any 4xx or 5xx); the
/// body says why.
fn v3_fail(status: StatusCode, why: &str) -> Response {
    let body = serde_json::json!({ "code": "FAIL", "message": why }).to_string();
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// The reply to a verified APIv3 notification: 204 when it needs not come again.
fn v3_answer(a: NoticeAnswer) -> Response {
    match verdict(a) {
        None => StatusCode::NO_CONTENT.into_response(),
        Some((status, why)) => v3_fail(status, why),
    }
}

pub(crate) async fn payment(State(app): State<App>, peer: Peer, body: Bytes) -> Response {
    match app.v2_inbox().payment(&body) {
        Ok((merchant, notice)) => answer(app.payment_notified(merchant, notice, &body).await),
        Err(r) => {
            app.notice_rejected(NoticeKind::Payment, r, &body, peer.0);
            rejected()
        }
    }
}

pub(crate) async fn refund(State(app): State<App>, peer: Peer, body: Bytes) -> Response {
    match app.v2_inbox().refund(&body) {
        Ok((merchant, notice)) => answer(app.refund_notified(merchant, notice, &body).await),
        Err(r) => {
            app.notice_rejected(NoticeKind::Refund, r, &body, peer.0);
            rejected()
        }
    }
}

pub(crate) async fn v3(
    State(app): State<App>,
    Path(merchant): Path<String>,
    peer: Peer,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let signature = signature_headers(&headers);
    match app.v3_inbox().read(&merchant, &signature, &body).await {
        Ok((idx, V3Notice::Payment(n))) => v3_answer(app.payment_notified(idx, n, &body).await),
        Ok((idx, V3Notice::Refund(n))) => v3_answer(app.refund_notified(idx, n, &body).await),
        Err(r) => {
            app.notice_rejected(V3Inbox::claimed_kind(&body), r, &body, peer.0);
            v3_fail(StatusCode::BAD_REQUEST, REJECTED)
        }
    }
}
