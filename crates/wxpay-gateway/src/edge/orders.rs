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

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use wxpay_protocol::{Fen, OutTradeNo};

use crate::edge::app::App;
use crate::edge::body::{Body, Path, Query, parse_json};
use crate::edge::error::{ApiError, ErrorBody};
use crate::edge::idempotency::{IdempotencyKey, TokenScope, idempotent};
use crate::edge::refunds::RefundView;
use crate::provider::PayParams;
use crate::service::numbers::Numbers;
use crate::service::orders::{OrderRequest, Placed};
use crate::store::{Order, OrderFilter, OrderStatus};
use crate::time::Millis;

/// The body of `POST /v1/openid`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct OpenidRequest {
    /// The one-time code `wx.login` gave the mini program.
    code: String,
    /// The merchant (by its configured `name`) whose mini program the code is for; the
    /// first configured merchant when left out.
    #[schema(min_length = 1)]
    merchant: Option<String>,
}

/// The payer behind a `wx.login` code.
#[derive(Serialize, ToSchema)]
pub(crate) struct OpenidView {
    /// The user's openid for this mini program.
    openid: String,
    /// The user's unionid, when the mini program belongs to an Open Platform account.
    unionid: Option<String>,
}

/// Turn a `wx.login` code into the user's openid (`jscode2session`).
///
/// The session key never leaves the gateway: it is neither returned nor logged.
#[utoipa::path(
    post,
    path = "/v1/openid",
    tag = "orders",
    request_body = OpenidRequest,
    responses(
        (status = 200, description = "The payer.", body = OpenidView),
        (status = 400, description = "The body is not JSON.", body = ErrorBody),
        (status = 422, description = "A field is missing or wrong, or WeChat refused the code.", body = ErrorBody),
        (status = 503, description = "WeChat did not answer.", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn openid(State(app): State<App>, Body(body): Body) -> Result<Response, ApiError> {
    let req: OpenidRequest = parse_json(&body)?;
    let payer = app.openid(req.merchant.as_deref(), &req.code).await?;
    Ok(Json(OpenidView {
        openid: payer.openid,
        unionid: payer.unionid,
    })
    .into_response())
}

/// The body of `POST /v1/orders`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateOrderRequest {
    /// What is sold, as the payer sees it (WeChat Pay's `body`/`description`).
    description: String,
    /// The amount in fen (1 yuan = 100 fen), a positive integer; a number with a decimal
    /// point (`15.0`) is refused, since it is almost always an amount in yuan.
    #[schema(minimum = 1, maximum = 9223372036854775807_u64)]
    amount_fen: u64,
    /// The payer's openid for the merchant's mini program (from `POST /v1/openid`).
    openid: String,
    /// Your order number, 6 to 32 letters, digits, `_`, `-`, `|`, `*`; made by the gateway
    /// when left out.
    #[schema(min_length = 6, max_length = 32, pattern = r"^[0-9A-Za-z_|*-]+$")]
    out_trade_no: Option<String>,
    /// Your data, given back unchanged in the order and its events.
    attach: Option<String>,
    /// How long the order can be paid, in seconds (a minute to a week); the configured
    /// default when left out.
    #[schema(minimum = 60, maximum = 604800)]
    expires_in_secs: Option<u64>,
    /// The payer's IP address, as WeChat Pay asks for it.
    client_ip: Option<String>,
    /// The merchant (by its configured `name`); the first configured merchant when left out.
    #[schema(min_length = 1)]
    merchant: Option<String>,
}

/// An order as the API shows it.
#[derive(Serialize, ToSchema)]
#[schema(as = Order)]
pub(crate) struct OrderView {
    /// The merchant's order number.
    #[schema(value_type = String)]
    out_trade_no: OutTradeNo,
    /// The merchant (its configured `name`).
    merchant: String,
    status: OrderStatus,
    /// The amount in fen.
    #[schema(value_type = u64)]
    amount_fen: Fen,
    /// How much of it has been refunded, in fen.
    #[schema(value_type = u64)]
    refunded_fen: Fen,
    description: String,
    openid: String,
    attach: Option<String>,
    /// WeChat Pay's prepay id, once it has the order.
    prepay_id: Option<String>,
    /// WeChat Pay's number of the payment, once paid.
    transaction_id: Option<String>,
    #[schema(format = DateTime)]
    created_at: String,
    #[schema(format = DateTime)]
    expires_at: String,
    #[schema(format = DateTime)]
    paid_at: Option<String>,
    #[schema(format = DateTime)]
    closed_at: Option<String>,
    /// Why WeChat Pay refused the order, when it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    upstream_error: Option<String>,
    /// The order's history, oldest first (only on `GET /v1/orders/{out_trade_no}`).
    #[serde(skip_serializing_if = "Option::is_none")]
    events: Option<Vec<EventView>>,
    /// The order's refunds (only on `GET /v1/orders/{out_trade_no}`).
    #[serde(skip_serializing_if = "Option::is_none")]
    refunds: Option<Vec<RefundView>>,
}

/// One step of an order's history.
#[derive(Serialize, ToSchema)]
#[schema(as = Event)]
pub(crate) struct EventView {
    #[schema(format = DateTime)]
    at: String,
    /// What happened (`order.paid`, `order.closed`, `refund.succeeded`, …).
    kind: String,
    /// The facts of it.
    #[schema(value_type = Object)]
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

/// A created order and what `wx.requestPayment` needs to pay it.
#[derive(Serialize, ToSchema)]
#[schema(as = PlacedOrder)]
pub(crate) struct PlacedView {
    #[schema(value_type = String)]
    out_trade_no: OutTradeNo,
    merchant: String,
    status: OrderStatus,
    #[schema(value_type = u64)]
    amount_fen: Fen,
    prepay_id: Option<String>,
    #[schema(format = DateTime)]
    expires_at: String,
    pay_params: PayParamsView,
}

/// The arguments of `wx.requestPayment`: hand them to the mini program unchanged.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = PayParams)]
pub(crate) struct PayParamsView {
    app_id: String,
    time_stamp: String,
    nonce_str: String,
    /// `prepay_id=…`.
    package: String,
    /// `MD5` or `HMAC-SHA256` (APIv2), `RSA` (APIv3).
    sign_type: String,
    pay_sign: String,
}

impl From<&PayParams> for PayParamsView {
    fn from(p: &PayParams) -> Self {
        PayParamsView {
            app_id: p.app_id.clone(),
            time_stamp: p.time_stamp.clone(),
            nonce_str: p.nonce_str.clone(),
            package: p.package.clone(),
            sign_type: p.sign_type.clone(),
            pay_sign: p.pay_sign.clone(),
        }
    }
}

/// The answer to a create request: the order and its pay parameters.
fn placed(p: &Placed) -> (StatusCode, serde_json::Value) {
    let o = &p.order;
    let view = PlacedView {
        out_trade_no: o.out_trade_no.clone(),
        merchant: o.merchant.clone(),
        status: o.status,
        amount_fen: o.amount_fen,
        prepay_id: o.prepay_id.clone(),
        expires_at: o.expires_at.rfc3339(),
        pay_params: PayParamsView::from(&p.pay_params),
    };
    (
        if p.new { StatusCode::CREATED } else { StatusCode::OK },
        serde_json::to_value(view).unwrap_or(serde_json::Value::Null),
    )
}

/// Create an order: stored first, then created at WeChat Pay (APIv2 `unifiedorder` or
/// APIv3 JSAPI); the answer carries the `wx.requestPayment` parameters.
///
/// An `out_trade_no` given again with the same parameters gets its order again (200). With
/// an `Idempotency-Key`, a repetition with the same body gets the first answer again, status
/// included, and the same key with another body is refused (409).
#[utoipa::path(
    post,
    path = "/v1/orders",
    tag = "orders",
    request_body = CreateOrderRequest,
    params(IdempotencyKey),
    responses(
        (status = 201, description = "The order is placed.", body = PlacedView),
        (status = 200, description = "The order of this `out_trade_no`, placed before with the same parameters.", body = PlacedView),
        (status = 400, description = "The body is not JSON, or the `Idempotency-Key` is not 1 to 255 ASCII characters.", body = ErrorBody),
        (status = 409, description = "The order number or the key is used by another request.", body = ErrorBody),
        (status = 422, description = "A field is missing or wrong (a yuan amount, an unknown merchant, …).", body = ErrorBody),
        (status = 502, description = "WeChat Pay refused the order; a new one is recorded `failed`, one placed before stays `pending`.", body = ErrorBody),
        (status = 503, description = "WeChat Pay did not answer, asked to try later, or contradicted itself; the order is kept and may be repeated.", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn create_order(
    State(app): State<App>,
    Extension(scope): Extension<TokenScope>,
    headers: HeaderMap,
    Body(body): Body,
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

/// The query of `GET /v1/orders/{out_trade_no}`.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct GetOrderQuery {
    /// The merchant (its configured `name`); when left out, the one that has an order of
    /// this number (a number several merchants have must name its merchant).
    #[param(min_length = 1)]
    merchant: Option<String>,
    /// Ask WeChat Pay first (`orderquery`) and apply what it says.
    sync: Option<bool>,
}

/// An order, its history and its refunds.
#[utoipa::path(
    get,
    path = "/v1/orders/{out_trade_no}",
    tag = "orders",
    params(("out_trade_no" = String, Path, description = "The merchant's order number."), GetOrderQuery),
    responses(
        (status = 200, description = "The order.", body = OrderView),
        (status = 404, description = "No such order.", body = ErrorBody),
        (status = 422, description = "No merchant of that name, a number several merchants other than the first have and no merchant named, or `sync` is not `true` or `false`.", body = ErrorBody),
        (status = 503, description = "`sync=true` and WeChat Pay did not answer.", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
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

/// The query of `GET /v1/orders`.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListQuery {
    /// Only orders in this status.
    #[param(value_type = Option<OrderStatus>)]
    status: Option<String>,
    /// At most this many (default 50).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<u32>,
    /// The `next_cursor` of the page before.
    cursor: Option<i64>,
}

/// A page of orders, newest first.
#[derive(Serialize, ToSchema)]
#[schema(as = OrderPage)]
pub(crate) struct OrderPage {
    orders: Vec<OrderView>,
    /// Pass as `cursor` for the next page; null on the last.
    next_cursor: Option<i64>,
}

/// Orders, newest first, a page at a time.
#[utoipa::path(
    get,
    path = "/v1/orders",
    tag = "orders",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of orders.", body = OrderPage),
        (status = 422, description = "An unknown status, a limit out of range, or a parameter of the wrong type.", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn list_orders(State(app): State<App>, Query(q): Query<ListQuery>) -> Result<Response, ApiError> {
    let status = match q.status.as_deref() {
        None => None,
        Some(s) => Some(OrderStatus::parse(s).ok_or_else(|| {
            ApiError::Invalid(format!(
                "status {s:?} is not one of pending, paid, closed, failed, refunded"
            ))
        })?),
    };
    let limit = q.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::Invalid(format!("limit {limit} is not between 1 and 500")));
    }
    let filter = OrderFilter {
        status,
        ..OrderFilter::default()
    };
    let orders = app.list_orders(filter, limit + 1, q.cursor).await?;
    let more = orders.len() > limit as usize;
    let page: Vec<&Order> = orders.iter().take(limit as usize).collect();
    let next_cursor = if more { page.last().map(|o| o.id) } else { None };
    let orders = page.into_iter().map(view).collect();
    Ok(Json(OrderPage { orders, next_cursor }).into_response())
}

/// The body of `POST /v1/orders/{out_trade_no}/close`, which may be empty.
#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CloseRequest {
    /// The merchant (its configured `name`); when left out, the one that has an order of
    /// this number (a number several merchants have must name its merchant).
    #[schema(min_length = 1)]
    merchant: Option<String>,
}

/// Close an unpaid order with WeChat Pay (never a paid one).
#[utoipa::path(
    post,
    path = "/v1/orders/{out_trade_no}/close",
    tag = "orders",
    params(("out_trade_no" = String, Path, description = "The merchant's order number.")),
    request_body(content = Option<CloseRequest>, description = "May be left out, or `null`."),
    responses(
        (status = 200, description = "The order, closed.", body = OrderView),
        (status = 404, description = "No such order.", body = ErrorBody),
        (status = 422, description = "No merchant of that name, a number several merchants other than the first have and no merchant named, or a field of the wrong type.", body = ErrorBody),
        (status = 409, description = "The order is paid (or refunded), and stays so.", body = ErrorBody),
        (status = 503, description = "WeChat Pay did not answer; the order stays open.", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn close_order(
    State(app): State<App>,
    Path(out_trade_no): Path<String>,
    Body(body): Body,
) -> Result<Response, ApiError> {
    let req: CloseRequest = if body.iter().all(u8::is_ascii_whitespace) {
        CloseRequest::default()
    } else {
        parse_json::<Option<CloseRequest>>(&body)?.unwrap_or_default()
    };
    let order = app.close_order(req.merchant.as_deref(), out_trade_no).await?;
    Ok(Json(view(&order)).into_response())
}
