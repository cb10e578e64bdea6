//! `POST /v1/orders/{out_trade_no}/refunds` and `GET /v1/refunds/{out_refund_no}`.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use wxpay_protocol::{Fen, OutRefundNo, OutTradeNo};

use crate::edge::app::App;
use crate::edge::body::{Body, Path, Query, parse_json};
use crate::edge::error::{ApiError, ErrorBody};
use crate::edge::idempotency::{IdempotencyKey, TokenScope, idempotent};
use crate::service::numbers::Numbers;
use crate::service::refunds::RefundRequest;
use crate::store::{Refund, RefundStatus, Upstream};
use crate::time::Millis;

/// The body of `POST /v1/orders/{out_trade_no}/refunds`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RefundBody {
    /// How much to give back, in fen; the refunds of an order never add up to more than its
    /// amount.
    #[schema(minimum = 1)]
    amount_fen: u64,
    /// Your refund number, 1 to 64 letters, digits, `_`, `-`, `|`, `*`, `@`; made by the
    /// gateway when left out.
    #[schema(min_length = 1, max_length = 64, pattern = r"^[0-9A-Za-z_|*@-]+$")]
    out_refund_no: Option<String>,
    /// Why, as the payer sees it.
    reason: Option<String>,
    /// The merchant (its configured `name`); when left out, the one that has the order (a
    /// number several merchants have must name its merchant).
    #[schema(min_length = 1)]
    merchant: Option<String>,
}

/// A refund as the API shows it.
#[derive(Serialize, ToSchema)]
#[schema(as = Refund)]
pub(crate) struct RefundView {
    /// The merchant's refund number.
    #[schema(value_type = String)]
    out_refund_no: OutRefundNo,
    /// The refunded order's number.
    #[schema(value_type = String)]
    out_trade_no: OutTradeNo,
    merchant: String,
    /// The amount given back, in fen.
    #[schema(value_type = u64)]
    amount_fen: Fen,
    status: RefundStatus,
    reason: Option<String>,
    /// WeChat Pay's number of the refund, once it has it.
    refund_id: Option<String>,
    #[schema(format = DateTime)]
    created_at: String,
    #[schema(format = DateTime)]
    accepted_at: Option<String>,
    #[schema(format = DateTime)]
    settled_at: Option<String>,
    upstream: Upstream,
    /// Why WeChat Pay refused the refund, when it did.
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

/// Refund all or part of a paid order.
///
/// The refund is stored, and its amount reserved, before WeChat Pay is called, so the
/// refunds of an order never add up to more than its amount. Its outcome arrives later, as a
/// `refund.succeeded` or `refund.failed` event. An `out_refund_no` given again with the same
/// parameters gets its refund again (200). With an `Idempotency-Key`, a repetition with the
/// same body gets the first answer again, status included.
#[utoipa::path(
    post,
    path = "/v1/orders/{out_trade_no}/refunds",
    tag = "refunds",
    params(("out_trade_no" = String, Path, description = "The order's number."), IdempotencyKey),
    request_body = RefundBody,
    responses(
        (status = 201, description = "The refund is stored and sent.", body = RefundView),
        (status = 200, description = "The refund of this `out_refund_no`, asked for before with the same parameters.", body = RefundView),
        (status = 400, description = "The body is not JSON, or the `Idempotency-Key` is not 1 to 255 ASCII characters.", body = ErrorBody),
        (status = 404, description = "No such order.", body = ErrorBody),
        (status = 409, description = "The order is not paid, the amount is more than is left, or the number or key is used.", body = ErrorBody),
        (status = 422, description = "A field is missing or wrong.", body = ErrorBody),
        (status = 502, description = "WeChat Pay refused the refund; it is recorded `failed`.", body = ErrorBody),
        (status = 503, description = "WeChat Pay did not answer, or the merchant certificate is not configured; the refund is kept and sent again.", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn create_refund(
    State(app): State<App>,
    Extension(scope): Extension<TokenScope>,
    Path(out_trade_no): Path<String>,
    headers: HeaderMap,
    Body(body): Body,
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

/// The query of `GET /v1/refunds/{out_refund_no}`.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct GetRefundQuery {
    /// The merchant (its configured `name`); when left out, the one that has a refund of
    /// this number (a number several merchants have must name its merchant).
    #[param(min_length = 1)]
    merchant: Option<String>,
}

/// A refund and its status.
#[utoipa::path(
    get,
    path = "/v1/refunds/{out_refund_no}",
    tag = "refunds",
    params(("out_refund_no" = String, Path, description = "The merchant's refund number."), GetRefundQuery),
    responses(
        (status = 200, description = "The refund.", body = RefundView),
        (status = 404, description = "No such refund.", body = ErrorBody),
        (status = 422, description = "No merchant of that name, or a number several merchants other than the first have and no merchant named.", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn get_refund(
    State(app): State<App>,
    Path(out_refund_no): Path<String>,
    Query(q): Query<GetRefundQuery>,
) -> Result<Response, ApiError> {
    let refund = app.refund(q.merchant.as_deref(), out_refund_no).await?;
    Ok(Json(view(&refund)).into_response())
}
