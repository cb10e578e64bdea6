//! `/v1/…`: the API of the business backend, orders and openids.
//!
//! | method and path | what |
//! |---|---|
//! | `POST /v1/openid` `{code, merchant?}` | `jscode2session`; returns `{openid}` (never the session key) |
//! | `POST /v1/orders` + `Idempotency-Key` | stores the order, then calls WeChat Pay; returns the pay parameters |
//! | `GET /v1/orders/{out_trade_no}` (`?sync=true`, `?merchant=`) | the order and its history |
//! | `GET /v1/orders?status=&limit=&cursor=` | orders, newest first |
//! | `POST /v1/orders/{out_trade_no}/close` | closes an unpaid order (never a paid one) |
//! | `POST /v1/orders/{out_trade_no}/refunds`, `GET /v1/refunds/{out_refund_no}` | refunds (`refunds.rs`) |

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use wxpay_protocol::{Fen, OutTradeNo};

use crate::edge::app::App;
use crate::edge::body::parse_json;
use crate::edge::error::ApiError;
use crate::edge::idempotency::{TokenScope, idempotent};
use crate::edge::refunds::RefundView;
use crate::service::numbers::Numbers;
use crate::service::orders::{OrderRequest, Placed};
use crate::store::{Order, OrderStatus};
use crate::time::Millis;

/// `POST /v1/openid`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OpenidRequest {
    code: String,
    merchant: Option<String>,
}

pub(crate) async fn openid(State(app): State<App>, body: Bytes) -> Result<Response, ApiError> {
    let req: OpenidRequest = parse_json(&body)?;
    let payer = app.openid(req.merchant.as_deref(), &req.code).await?;
    Ok(Json(serde_json::json!({ "openid": payer.openid, "unionid": payer.unionid })).into_response())
}

/// `POST /v1/orders`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateOrderRequest {
    description: String,
    amount_fen: u64,
    openid: String,
    out_trade_no: Option<String>,
    attach: Option<String>,
    expires_in_secs: Option<u64>,
    client_ip: Option<String>,
    merchant: Option<String>,
}

/// An order as the API shows it.
#[derive(Serialize)]
struct OrderView {
    out_trade_no: OutTradeNo,
    merchant: String,
    status: OrderStatus,
    amount_fen: Fen,
    refunded_fen: Fen,
    description: String,
    openid: String,
    attach: Option<String>,
    prepay_id: Option<String>,
    transaction_id: Option<String>,
    created_at: String,
    expires_at: String,
    paid_at: Option<String>,
    closed_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    upstream_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    events: Option<Vec<EventView>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    refunds: Option<Vec<RefundView>>,
}

#[derive(Serialize)]
struct EventView {
    at: String,
    kind: String,
    detail: serde_json::Value,
}

fn view(o: &Order) -> OrderView {
    OrderView {
        out_trade_no: o.out_trade_no.clone(),
        merchant: o.merchant.clone(),
        status: o.status,
        amount_fen: o.amount_fen,
        refunded_fen: o.refunded_fen,
        description: o.description.clone(),
        openid: o.openid.clone(),
        attach: o.attach.clone(),
        prepay_id: o.prepay_id.clone(),
        transaction_id: o.transaction_id.clone(),
        created_at: o.created_at.rfc3339(),
        expires_at: o.expires_at.rfc3339(),
        paid_at: o.paid_at.map(Millis::rfc3339),
        closed_at: o.closed_at.map(Millis::rfc3339),
        upstream_error: o.upstream_error.clone(),
        events: None,
        refunds: None,
    }
}

/// The answer to a create request: the order and its pay parameters.
fn placed(p: &Placed) -> (StatusCode, serde_json::Value) {
    let o = &p.order;
    (
        if p.new { StatusCode::CREATED } else { StatusCode::OK },
        serde_json::json!({
            "out_trade_no": o.out_trade_no,
            "merchant": o.merchant,
            "status": o.status,
            "amount_fen": o.amount_fen,
            "prepay_id": o.prepay_id,
            "expires_at": o.expires_at.rfc3339(),
            "pay_params": p.pay_params,
        }),
    )
}

pub(crate) async fn create_order(
    State(app): State<App>,
    Extension(scope): Extension<TokenScope>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let hash = crate::util::sha256_hex(&body);
    let run = {
        let app = app.clone();
        move |numbers: Numbers| async move {
            let req: CreateOrderRequest = parse_json(&body)?;
            let req = OrderRequest {
                merchant: req.merchant,
                description: req.description,
                amount_fen: req.amount_fen,
                openid: req.openid,
                out_trade_no: req.out_trade_no,
                attach: req.attach,
                expires_in_secs: req.expires_in_secs,
                client_ip: req.client_ip,
            };
            Ok(placed(&app.create_order(req, &numbers).await?))
        }
    };
    idempotent(&app, scope.0, &headers, hash, run).await
}

#[derive(Deserialize)]
pub(crate) struct GetOrderQuery {
    merchant: Option<String>,
    sync: Option<bool>,
}

pub(crate) async fn get_order(
    State(app): State<App>,
    Path(out_trade_no): Path<String>,
    Query(q): Query<GetOrderQuery>,
) -> Result<Response, ApiError> {
    let detail = app
        .order_detail(q.merchant.as_deref(), out_trade_no, q.sync == Some(true))
        .await?;
    let mut v = view(&detail.order);
    v.refunds = Some(detail.refunds.iter().map(crate::edge::refunds::view).collect());
    v.events = Some(
        detail
            .events
            .into_iter()
            .map(|e| EventView {
                at: e.at.rfc3339(),
                kind: e.kind,
                detail: e.detail,
            })
            .collect(),
    );
    Ok(Json(v).into_response())
}

#[derive(Deserialize)]
pub(crate) struct ListQuery {
    status: Option<String>,
    limit: Option<u32>,
    cursor: Option<i64>,
}

pub(crate) async fn list_orders(State(app): State<App>, Query(q): Query<ListQuery>) -> Result<Response, ApiError> {
    let status = match q.status.as_deref() {
        None | Some("") => None,
        Some(s) => Some(OrderStatus::parse(s).ok_or_else(|| {
            ApiError::Invalid(format!(
                "status {s:?} is not one of pending, paid, closed, failed, refunded"
            ))
        })?),
    };
    let limit = q.limit.unwrap_or(50).clamp(1, 500);
    let orders = app.list_orders(status, limit + 1, q.cursor).await?;
    let more = orders.len() > limit as usize;
    let page: Vec<&Order> = orders.iter().take(limit as usize).collect();
    let next_cursor = if more { page.last().map(|o| o.id) } else { None };
    let views: Vec<OrderView> = page.into_iter().map(view).collect();
    Ok(Json(serde_json::json!({ "orders": views, "next_cursor": next_cursor })).into_response())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct CloseRequest {
    merchant: Option<String>,
}

pub(crate) async fn close_order(
    State(app): State<App>,
    Path(out_trade_no): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: CloseRequest = if body.iter().all(u8::is_ascii_whitespace) {
        CloseRequest::default()
    } else {
        parse_json(&body)?
    };
    let order = app.close_order(req.merchant.as_deref(), out_trade_no).await?;
    Ok(Json(view(&order)).into_response())
}

/// `GET /openapi.json`: the OpenAPI document of `/v1`.
pub(crate) async fn openapi() -> Response {
    ([(axum::http::header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

/// The OpenAPI 3.1 document of `/v1`, kept beside the handlers it describes; a test checks
/// that every route is in it.
pub const OPENAPI: &str = include_str!("openapi.json");
