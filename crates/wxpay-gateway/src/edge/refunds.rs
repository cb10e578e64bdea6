//! `POST /v1/orders/{out_trade_no}/refunds` and `GET /v1/refunds/{out_refund_no}`.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use wxpay_protocol::{Fen, OutRefundNo, OutTradeNo};

use crate::edge::app::App;
use crate::edge::body::parse_json;
use crate::edge::error::ApiError;
use crate::edge::idempotency::{TokenScope, idempotent};
use crate::service::numbers::Numbers;
use crate::service::refunds::RefundRequest;
use crate::store::{Refund, RefundStatus, Upstream};
use crate::time::Millis;

/// `POST /v1/orders/{out_trade_no}/refunds`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RefundBody {
    amount_fen: u64,
    out_refund_no: Option<String>,
    reason: Option<String>,
    merchant: Option<String>,
}

/// A refund as the API shows it.
#[derive(Serialize)]
pub(crate) struct RefundView {
    out_refund_no: OutRefundNo,
    out_trade_no: OutTradeNo,
    merchant: String,
    amount_fen: Fen,
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
        created_at: r.created_at.rfc3339(),
        accepted_at: r.accepted_at.map(Millis::rfc3339),
        settled_at: r.settled_at.map(Millis::rfc3339),
        upstream: r.upstream,
        upstream_error: r.upstream_error.clone(),
    }
}

fn json(r: &Refund) -> serde_json::Value {
    serde_json::to_value(view(r)).unwrap_or(serde_json::Value::Null)
}

pub(crate) async fn create_refund(
    State(app): State<App>,
    Extension(scope): Extension<TokenScope>,
    Path(out_trade_no): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    // The same key and body on another order is another request.
    let hash = crate::util::sha256_hex(format!("{out_trade_no}\n{}", String::from_utf8_lossy(&body)).as_bytes());
    let run = {
        let app = app.clone();
        move |numbers: Numbers| async move {
            let req: RefundBody = parse_json(&body)?;
            let req = RefundRequest {
                merchant: req.merchant,
                amount_fen: req.amount_fen,
                out_refund_no: req.out_refund_no,
                reason: req.reason,
            };
            let (refund, new) = app.create_refund(out_trade_no, req, &numbers).await?;
            Ok((if new { StatusCode::CREATED } else { StatusCode::OK }, json(&refund)))
        }
    };
    idempotent(&app, format!("{}/refunds", scope.0), &headers, hash, run).await
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
    let refund = app.refund(q.merchant.as_deref(), out_refund_no).await?;
    Ok(Json(view(&refund)).into_response())
}
