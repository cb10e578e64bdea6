//! `/v1/…`: the API of the business backend.
//!
//! | method and path | what |
//! |---|---|
//! | `POST /v1/openid` `{code, merchant?}` | `jscode2session`; returns `{openid}` (never the session key) |
//! | `POST /v1/orders` + `Idempotency-Key` | stores the order, then calls `unifiedorder`; returns the pay parameters |
//! | `GET /v1/orders/{out_trade_no}` (`?sync=true`, `?merchant=`) | the order and its history |
//! | `GET /v1/orders?status=&limit=&cursor=` | orders, newest first |
//! | `POST /v1/orders/{out_trade_no}/close` | closes an unpaid order (never a paid one) |
//! | `POST /v1/orders/{out_trade_no}/refunds`, `GET /v1/refunds/{out_refund_no}` | refunds (`refunds.rs`) |

use std::future::Future;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tracing::Instrument;
use wxpay_protocol::v2::{CloseOrder, ErrCode, OrderQuery, PayParams, TradeState, UnifiedOrder};
use wxpay_protocol::{BeijingTime, Fen, OutTradeNo};

use crate::app::{App, TokenScope};
use crate::error::ApiError;
use crate::store::{
    Created, IdemClaim, IdemKey, NewOrder, Order, OrderStatus, Payment, PaymentOutcome, Source, Upstream,
};
use crate::time::rfc3339;
use crate::upstream::{MerchantLink, UpstreamError};

pub(crate) fn parse_json<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        let msg = e.to_string();
        match e.classify() {
            // Well-formed JSON with a wrong field: the request is understood but invalid.
            serde_json::error::Category::Data => {
                // Integers here are only amounts; a yuan amount ("1.50", 1.5) is the classic
                // mistake, so the message says what is expected.
                let hint = if msg.contains("amount_fen") || msg.contains("u64") || msg.contains("floating point") {
                    ": amount_fen is a positive integer number of fen (1 yuan = 100 fen)"
                } else {
                    ""
                };
                ApiError::Invalid(format!("{msg}{hint}"))
            }
            _ => ApiError::BadRequest(format!("the JSON body cannot be read: {msg}")),
        }
    })
}

pub(crate) fn sha256_hex(data: &[u8]) -> String {
    crate::hex(ring::digest::digest(&ring::digest::SHA256, data).as_ref())
}

/// `POST /v1/openid`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OpenidRequest {
    code: String,
    merchant: Option<String>,
}

pub(crate) async fn openid(State(app): State<App>, body: Bytes) -> Result<Response, ApiError> {
    let req: OpenidRequest = parse_json(&body)?;
    let link = app.merchant(req.merchant.as_deref())?;
    if link.config.app_secret.is_none() {
        return Err(ApiError::Invalid(format!(
            "merchant {:?} has no app_secret configured",
            link.config.name
        )));
    }
    match app.inner.upstream.code2session(link, &req.code).await {
        Ok(s) => Ok(Json(serde_json::json!({ "openid": s.openid, "unionid": s.unionid })).into_response()),
        Err(wxpay_protocol::Error::Sns { errcode, errmsg }) if matches!(errcode, 40029 | 40163 | 40226) => {
            Err(ApiError::Invalid(format!(
                "WeChat refused the login code (errcode {errcode}: {}); get a fresh one with wx.login",
                errmsg.split(", rid").next().unwrap_or("")
            )))
        }
        Err(wxpay_protocol::Error::Sns { errcode, .. }) => Err(ApiError::Rejected(format!(
            "jscode2session failed with errcode {errcode}"
        ))),
        Err(wxpay_protocol::Error::Invalid { reason, .. }) => Err(ApiError::Invalid(format!("code: {reason}"))),
        Err(e) => Err(ApiError::Unavailable(format!("jscode2session: {e}"))),
    }
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
    out_trade_no: String,
    merchant: String,
    status: OrderStatus,
    amount_fen: i64,
    refunded_fen: i64,
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
    refunds: Option<Vec<crate::refunds::RefundView>>,
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
        created_at: rfc3339(o.created_at),
        expires_at: rfc3339(o.expires_at),
        paid_at: o.paid_at.map(rfc3339),
        closed_at: o.closed_at.map(rfc3339),
        upstream_error: o.upstream_error.clone(),
        events: None,
        refunds: None,
    }
}

/// A new order (`W`) or refund (`R`) number: the prefix, the Beijing time to the second, and
/// 12 random letters and digits.
fn new_number(prefix: char, now: i64) -> String {
    let mut b = [0u8; 12];
    crate::random_bytes(&mut b);
    number_with(prefix, now, b)
}

/// `prefix`, the Beijing time of `at` to the second, and 12 letters and digits from `tail`.
fn number_with(prefix: char, at: i64, tail: [u8; 12]) -> String {
    const SET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let tail: String = tail
        .iter()
        .map(|x| char::from(SET[usize::from(*x) % SET.len()]))
        .collect();
    format!("{prefix}{}{tail}", BeijingTime::from_unix(at / 1000).to_compact())
}

/// What makes an order for WeChat Pay: the same for an order about to be stored and for a
/// stored one, so that a repeated `unifiedorder` has identical parameters.
struct OrderTerms<'a> {
    description: &'a str,
    out_trade_no: &'a str,
    amount_fen: i64,
    client_ip: &'a str,
    openid: &'a str,
    attach: Option<&'a str>,
    expires_at: i64,
}

impl<'a> From<&'a Order> for OrderTerms<'a> {
    fn from(o: &'a Order) -> Self {
        OrderTerms {
            description: &o.description,
            out_trade_no: &o.out_trade_no,
            amount_fen: o.amount_fen,
            client_ip: &o.client_ip,
            openid: &o.openid,
            attach: o.attach.as_deref(),
            expires_at: o.expires_at,
        }
    }
}

impl<'a> From<&'a NewOrder> for OrderTerms<'a> {
    fn from(o: &'a NewOrder) -> Self {
        OrderTerms {
            description: &o.description,
            out_trade_no: &o.out_trade_no,
            amount_fen: o.amount_fen,
            client_ip: &o.client_ip,
            openid: &o.openid,
            attach: o.attach.as_deref(),
            expires_at: o.expires_at,
        }
    }
}

/// What `unifiedorder` is sent for an order.
fn unified_order(app: &App, o: OrderTerms<'_>) -> Result<UnifiedOrder, ApiError> {
    let mut call = UnifiedOrder::jsapi(
        o.description,
        OutTradeNo::new(o.out_trade_no).map_err(|e| ApiError::Internal(e.to_string()))?,
        Fen::new(o.amount_fen as u64).map_err(|e| ApiError::Internal(e.to_string()))?,
        o.client_ip,
        format!("{}/notify/v2/pay", app.inner.config.public_url.trim_end_matches('/')),
        o.openid,
    );
    call.attach = o.attach.map(str::to_owned);
    call.time_expire = Some(BeijingTime::from_unix(o.expires_at / 1000));
    Ok(call)
}

fn pay_params(link: &MerchantLink, prepay_id: &str) -> Result<PayParams, ApiError> {
    PayParams::sign(
        &link.credentials,
        prepay_id,
        (crate::time::now_ms() / 1000) as u64,
        &crate::upstream::nonce(),
    )
    .map_err(|e| ApiError::Internal(e.to_string()))
}

/// Answers a create request with the order and its pay parameters.
fn created_response(
    link: &MerchantLink,
    o: &Order,
    status: StatusCode,
) -> Result<(StatusCode, serde_json::Value), ApiError> {
    let prepay = o
        .prepay_id
        .as_deref()
        .ok_or_else(|| ApiError::Internal("an order without prepay_id".into()))?;
    let params = pay_params(link, prepay)?;
    Ok((
        status,
        serde_json::json!({
            "out_trade_no": o.out_trade_no,
            "merchant": o.merchant,
            "status": o.status,
            "amount_fen": o.amount_fen,
            "prepay_id": prepay,
            "expires_at": rfc3339(o.expires_at),
            "pay_params": params,
        }),
    ))
}

pub(crate) async fn create_order(
    State(app): State<App>,
    Extension(scope): Extension<TokenScope>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let hash = sha256_hex(&body);
    let run = {
        let app = app.clone();
        move |numbers: Numbers| async move { create(&app, &body, numbers).await }
    };
    idempotent(&app, scope.0, &headers, hash, run).await
}

/// How long a request's hold on its `Idempotency-Key` lasts without being renewed. The
/// request renews it every third of this while it runs, so only a request whose process died
/// (or that could not record its answer) loses its key, to a retry with the same body.
pub(crate) const IDEMPOTENCY_LEASE: Duration = Duration::from_secs(60);

/// How long an `Idempotency-Key` and its answer are kept, as Stripe does.
pub(crate) const IDEMPOTENCY_KEPT: Duration = Duration::from_secs(24 * 3600);

/// The numbers a creating request gives what it creates when the caller names none. Under an
/// `Idempotency-Key` they follow from the key, so that a retry that takes the key over finds
/// the order or refund the first attempt made instead of making a second one.
pub(crate) struct Numbers {
    /// The key's scope, the key, and when it was first claimed (Unix ms).
    key: Option<(String, String, i64)>,
}

impl Numbers {
    /// A number for something created at `now`: `prefix`, the Beijing time to the second, and
    /// 12 letters and digits (random, or from the key).
    pub(crate) fn number(&self, prefix: char, now: i64) -> String {
        match &self.key {
            None => new_number(prefix, now),
            Some((scope, key, created_at)) => {
                let digest = ring::digest::digest(&ring::digest::SHA256, format!("{scope}\n{key}").as_bytes());
                let mut tail = [0u8; 12];
                tail.copy_from_slice(&digest.as_ref()[..12]);
                number_with(prefix, *created_at, tail)
            }
        }
    }
}

/// Runs `fut` on a task of its own, in the request's span and with its request id, and waits
/// for it: when the client goes away and the handler is dropped, the work (an order stored and
/// sent to WeChat Pay, its answer recorded for the key) still runs to its end, and shutdown
/// waits for it ([`App::finish_requests`]).
async fn detached<T: Send + 'static>(
    app: &App,
    fut: impl Future<Output = Result<T, ApiError>> + Send + 'static,
) -> Result<T, ApiError> {
    let request_id = crate::error::current_request_id();
    let running = app.inner.detached.start();
    let task = async move {
        let result = match request_id {
            Some(id) => crate::error::REQUEST_ID.scope(id, fut).await,
            None => fut.await,
        };
        drop(running);
        result
    };
    tokio::spawn(task.instrument(tracing::Span::current()))
        .await
        .map_err(|e| ApiError::Internal(format!("the request's task ended abnormally: {e}")))?
}

/// An answer under an `Idempotency-Key`: made now, or the one kept for the key.
enum Answer {
    Made(StatusCode, serde_json::Value),
    Kept(u16, String),
}

/// What a request gets when another request holds its key (`theirs`, the digest of that
/// request's body; `kept`, its answer if it has one): that answer for the same body, a 409 for
/// another body or while the first one still runs.
fn held_by_another(theirs: &str, ours: &str, kept: Option<(u16, String)>) -> Result<Answer, ApiError> {
    if theirs != ours {
        return Err(ApiError::Conflict {
            code: "idempotency_key_reused",
            message: "this Idempotency-Key was used with another request body".into(),
        });
    }
    match kept {
        Some((status, response)) => Ok(Answer::Kept(status, response)),
        None => Err(ApiError::Conflict {
            code: "idempotency_in_progress",
            message: "a request with this Idempotency-Key is still running; retry later".into(),
        }),
    }
}

/// Runs a request that creates something under its `Idempotency-Key`, when it has one: the
/// first request with a key runs `run`; a later one with the same key and the same request
/// digest gets the first one's answer, with another digest a 409. `run` is not started when
/// an earlier answer is given. The claim, `run` and the recording of its answer happen on a
/// task of their own, so they finish even if the client goes away; while `run` runs, its hold
/// on the key is renewed, and an answer it can no longer record (the key was taken over) is
/// not recorded.
pub(crate) async fn idempotent<F, R>(
    app: &App,
    scope: String,
    headers: &HeaderMap,
    request_hash: String,
    run: F,
) -> Result<Response, ApiError>
where
    F: FnOnce(Numbers) -> R + Send + 'static,
    R: Future<Output = Result<(StatusCode, serde_json::Value), ApiError>> + Send + 'static,
{
    let key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => {
            let k = v
                .to_str()
                .map_err(|_| ApiError::BadRequest("Idempotency-Key must be ASCII".into()))?;
            if k.is_empty() || k.len() > 255 {
                return Err(ApiError::BadRequest(
                    "Idempotency-Key must have 1 to 255 characters".into(),
                ));
            }
            Some(k.to_owned())
        }
    };
    let Some(key) = key else {
        let (status, body) = detached(app, run(Numbers { key: None })).await?;
        return Ok((status, Json(body)).into_response());
    };
    let owned = app.clone();
    let answer = detached(app, async move {
        let app = owned;
        let store = app.inner.store.clone();
        let hash = request_hash;
        let k = IdemKey {
            scope,
            key,
            owner: crate::random_hex::<16>(),
        };
        let lease = IDEMPOTENCY_LEASE.as_millis() as i64;
        let created_at = match store.idem_claim(k.clone(), hash.clone(), app.now(), lease).await? {
            IdemClaim::Claimed { created_at } => created_at,
            IdemClaim::InProgress { request_hash } => return held_by_another(&request_hash, &hash, None),
            IdemClaim::Done {
                request_hash,
                status,
                response,
            } => return held_by_another(&request_hash, &hash, Some((status, response))),
        };
        let numbers = Numbers {
            key: Some((k.scope.clone(), k.key.clone(), created_at)),
        };
        let mut running = std::pin::pin!(run(numbers));
        let result = loop {
            tokio::select! {
                result = &mut running => break result,
                () = tokio::time::sleep(IDEMPOTENCY_LEASE / 3) => {
                    match store.idem_renew(k.clone(), app.now()).await {
                        Ok(true) => {}
                        Ok(false) => tracing::error!("this request's Idempotency-Key was taken over; its answer will not be kept"),
                        Err(e) => tracing::warn!(error = ?e, "cannot renew an Idempotency-Key"),
                    }
                }
            }
        };
        let kept = match &result {
            // A definite answer is kept for the key; an answer that depended on WeChat Pay not
            // answering is not, so that the same request can be tried again.
            Ok((status, body)) => store.idem_finish(k, status.as_u16(), body.to_string()).await?,
            Err(ApiError::Unavailable(_) | ApiError::Internal(_)) => {
                store.idem_release(k).await?;
                true
            }
            Err(e) => store.idem_finish(k, e.status().as_u16(), e.body().to_string()).await?,
        };
        if !kept {
            tracing::error!("an answer was not kept for its Idempotency-Key: a retry took the key over");
        }
        let (status, body) = result?;
        Ok(Answer::Made(status, body))
    })
    .await?;
    Ok(match answer {
        Answer::Made(status, body) => (status, Json(body)).into_response(),
        Answer::Kept(status, response) => (
            StatusCode::from_u16(status).unwrap_or(StatusCode::OK),
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            response,
        )
            .into_response(),
    })
}

async fn create(app: &App, body: &[u8], numbers: Numbers) -> Result<(StatusCode, serde_json::Value), ApiError> {
    let req: CreateOrderRequest = parse_json(body)?;
    let link = app.merchant(req.merchant.as_deref())?;
    let now = app.now();
    let amount = Fen::new(req.amount_fen).map_err(|e| ApiError::Invalid(e.to_string()))?;
    if amount == Fen::ZERO {
        return Err(ApiError::Invalid("amount_fen must be at least 1".into()));
    }
    let out_trade_no = match &req.out_trade_no {
        Some(n) => OutTradeNo::new(n.clone())
            .map_err(|e| ApiError::Invalid(e.to_string()))?
            .to_string(),
        None => numbers.number('W', now),
    };
    let ttl = req
        .expires_in_secs
        .map_or(app.inner.config.default_order_ttl.as_secs(), |s| s);
    if !(60..=7 * 24 * 3600).contains(&ttl) {
        return Err(ApiError::Invalid(
            "expires_in_secs must be between 60 and 604800".into(),
        ));
    }
    let client_ip = req.client_ip.clone().unwrap_or_else(|| "127.0.0.1".to_owned());
    // The parameters that make an order: the same number with others is a conflict.
    let request_hash = sha256_hex(
        serde_json::json!([
            link.config.name,
            out_trade_no,
            req.description,
            req.amount_fen,
            req.openid,
            req.attach,
            client_ip,
            ttl
        ])
        .to_string()
        .as_bytes(),
    );
    let new = NewOrder {
        merchant: link.config.name.clone(),
        out_trade_no: out_trade_no.clone(),
        appid: link.config.appid.to_string(),
        mch_id: link.config.mch_id.to_string(),
        description: req.description.clone(),
        amount_fen: amount.get() as i64,
        openid: req.openid.clone(),
        attach: req.attach.clone(),
        client_ip,
        expires_at: now + ttl as i64 * 1000,
        first_check_at: app.first_check_at(now),
        request_hash: request_hash.clone(),
        now,
    };
    // Check everything WeChat Pay would refuse before anything is stored.
    unified_order(app, OrderTerms::from(&new))?
        .check()
        .map_err(|e| ApiError::Invalid(e.to_string()))?;

    let order = match app.inner.store.create_order(new).await? {
        Created::New(o) => o,
        Created::Existing(o) if o.request_hash != request_hash => {
            return Err(ApiError::Conflict {
                code: "out_trade_no_taken",
                message: format!("order {} exists with other parameters", o.out_trade_no),
            });
        }
        Created::Existing(o) => match o.status {
            // The same order again (a retry): finish what the first request started.
            OrderStatus::Pending
                if o.upstream == Upstream::Created && o.prepay_at.is_some_and(|t| now - t < 7_000_000) =>
            {
                return created_response(link, &o, StatusCode::OK);
            }
            OrderStatus::Pending => o,
            status => {
                return Err(ApiError::Conflict {
                    code: "order_not_pending",
                    message: format!("order {} is {status}", o.out_trade_no),
                });
            }
        },
    };
    let call = unified_order(app, OrderTerms::from(&order))?;
    match app.inner.upstream.call(link, &call).await {
        Ok(answer) => {
            let order = app
                .inner
                .store
                .set_prepay(order.id, answer.prepay_id, app.now())
                .await?;
            created_response(link, &order, StatusCode::CREATED)
        }
        Err(UpstreamError::Rejected {
            code: ErrCode::OrderPaid,
            ..
        }) => {
            let order = sync(app, link, order).await?;
            Err(ApiError::Conflict {
                code: "order_paid",
                message: format!("order {} is already paid", order.out_trade_no),
            })
        }
        Err(UpstreamError::NoAnswer(e)) => {
            app.inner
                .store
                .set_upstream_failure(order.id, false, e.clone(), app.now())
                .await?;
            Err(ApiError::Unavailable(format!(
                "WeChat Pay did not answer ({e}); the order is recorded as pending, repeat the request to try again"
            )))
        }
        Err(e) => {
            app.inner
                .store
                .set_upstream_failure(order.id, true, e.to_string(), app.now())
                .await?;
            Err(ApiError::Rejected(e.to_string()))
        }
    }
}

/// Asks WeChat Pay about an order and applies what it says: paid, closed, failed. A paid
/// order is never downgraded.
pub(crate) async fn sync(app: &App, link: &MerchantLink, order: Order) -> Result<Order, ApiError> {
    let no = OutTradeNo::new(order.out_trade_no.clone()).map_err(|e| ApiError::Internal(e.to_string()))?;
    let answer = match app.inner.upstream.call(link, &OrderQuery::by_out_trade_no(no)).await {
        Ok(a) => a,
        Err(UpstreamError::Rejected {
            code: ErrCode::OrderNotExist,
            ..
        }) => return Ok(order),
        Err(UpstreamError::NoAnswer(e)) => return Err(ApiError::Unavailable(format!("orderquery: {e}"))),
        Err(e) => return Err(ApiError::Rejected(format!("orderquery: {e}"))),
    };
    apply_query(app, order, &answer).await
}

/// The currency of every order: the gateway sends no `fee_type`, and WeChat Pay's default is
/// CNY. (When orders carry a currency, this becomes a column compared in the payment verdict.)
pub(crate) const ORDER_CURRENCY: &str = "CNY";

/// The currency WeChat Pay reports for a payment (`fee_type`, CNY when absent) when it is not
/// the order's: such a payment is refused like one of another amount.
pub(crate) fn foreign_currency(fee_type: Option<&str>) -> Option<&str> {
    fee_type.filter(|c| *c != ORDER_CURRENCY)
}

/// Applies a verified `orderquery` answer to an order.
pub(crate) async fn apply_query(
    app: &App,
    order: Order,
    answer: &wxpay_protocol::v2::OrderQueryResponse,
) -> Result<Order, ApiError> {
    let store = &app.inner.store;
    let now = app.now();
    match &answer.trade_state {
        TradeState::Success | TradeState::Refund => {
            let (Some(tid), Some(total)) = (&answer.transaction_id, answer.total_fee) else {
                return Err(ApiError::Internal(
                    "a paid orderquery answer without transaction_id".into(),
                ));
            };
            if let Some(reported) = foreign_currency(answer.fee_type.as_deref()) {
                tracing::error!(out_trade_no = ?order.out_trade_no, fee_type = ?reported, "orderquery says paid in another currency; the order is left as it is");
                return Ok(order);
            }
            let payment = Payment {
                merchant: order.merchant.clone(),
                out_trade_no: order.out_trade_no.clone(),
                transaction_id: tid.clone(),
                amount_fen: total.get() as i64,
                paid_at: answer.time_end.map_or(now, |t| t.unix() * 1000),
                source: Source::Query,
                now,
            };
            match store.apply_payment(payment, None).await? {
                PaymentOutcome::Applied(o) | PaymentOutcome::AlreadyPaid(o) => Ok(o),
                other => {
                    tracing::error!(out_trade_no = ?order.out_trade_no, verdict = other.verdict(), "orderquery says paid, but it does not fit the order");
                    Ok(order)
                }
            }
        }
        TradeState::Closed if order.status == OrderStatus::Pending => Ok(store
            .close_order(order.id, "WeChat Pay reports the order closed".into(), now)
            .await?
            .unwrap_or(order)),
        TradeState::PayError if order.status == OrderStatus::Pending => Ok(store
            .fail_order(order.id, "WeChat Pay reports PAYERROR".into(), now)
            .await?
            .unwrap_or(order)),
        // NOTPAY and the rest: nothing to change (and a paid order is never downgraded).
        _ => Ok(order),
    }
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
    let link = app.merchant(q.merchant.as_deref())?;
    let store = &app.inner.store;
    let mut order = find_order(&app, link, out_trade_no).await?;
    if q.sync == Some(true) && order.status == OrderStatus::Pending {
        order = sync(&app, link, order).await?;
    }
    let (events, refunds) = tokio::try_join!(store.events(order.id), store.refunds_of(order.id))?;
    let mut v = view(&order);
    v.refunds = Some(refunds.iter().map(crate::refunds::view).collect());
    v.events = Some(
        events
            .into_iter()
            .map(|e| EventView {
                at: rfc3339(e.at),
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
    let orders = app.inner.store.list_orders(status, limit + 1, q.cursor).await?;
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
    let link = app.merchant(req.merchant.as_deref())?;
    let order = find_order(&app, link, out_trade_no).await?;
    let order = close(&app, link, order).await?;
    Ok(Json(view(&order)).into_response())
}

/// The order of `link`'s merchant with this number, or 404.
pub(crate) async fn find_order(app: &App, link: &MerchantLink, out_trade_no: String) -> Result<Order, ApiError> {
    let found = app
        .inner
        .store
        .order(link.config.name.clone(), out_trade_no.clone())
        .await?;
    found.ok_or_else(|| ApiError::NotFound(format!("no order {out_trade_no}")))
}

/// Closes an order with WeChat Pay and records it; `ORDERPAID` makes it paid, never closed.
pub(crate) async fn close(app: &App, link: &MerchantLink, order: Order) -> Result<Order, ApiError> {
    let store = &app.inner.store;
    match order.status {
        OrderStatus::Closed => return Ok(order),
        OrderStatus::Pending => {}
        status => {
            return Err(ApiError::Conflict {
                code: if status == OrderStatus::Paid {
                    "order_paid"
                } else {
                    "order_not_pending"
                },
                message: format!("order {} is {status} and cannot be closed", order.out_trade_no),
            });
        }
    }
    let no = OutTradeNo::new(order.out_trade_no.clone()).map_err(|e| ApiError::Internal(e.to_string()))?;
    match app.inner.upstream.call(link, &CloseOrder::new(no)).await {
        Ok(_)
        | Err(UpstreamError::Rejected {
            code: ErrCode::OrderClosed,
            ..
        }) => Ok(store
            .close_order(order.id, "closed with WeChat Pay".into(), app.now())
            .await?
            .unwrap_or(order)),
        // Never reached WeChat Pay: nothing to close there.
        Err(UpstreamError::Rejected {
            code: ErrCode::OrderNotExist,
            ..
        }) if order.upstream != Upstream::Created => Ok(store
            .close_order(order.id, "WeChat Pay never had the order".into(), app.now())
            .await?
            .unwrap_or(order)),
        Err(UpstreamError::Rejected {
            code: ErrCode::OrderPaid,
            ..
        }) => {
            let order = sync(app, link, order).await?;
            Err(ApiError::Conflict {
                code: "order_paid",
                message: format!("order {} was paid and cannot be closed", order.out_trade_no),
            })
        }
        Err(UpstreamError::NoAnswer(e)) => Err(ApiError::Unavailable(format!("closeorder: {e}"))),
        Err(e) => Err(ApiError::Rejected(format!("closeorder: {e}"))),
    }
}

/// `GET /openapi.json`: the OpenAPI document of `/v1`.
pub(crate) async fn openapi() -> Response {
    ([(axum::http::header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

/// The OpenAPI 3.1 document of `/v1`, kept beside the handlers it describes; a test checks
/// that every route is in it.
pub const OPENAPI: &str = include_str!("openapi.json");
