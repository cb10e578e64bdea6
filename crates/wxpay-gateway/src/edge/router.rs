//! The routes, and the middleware every request goes through: a request id, and bearer
//! tokens compared in constant time.

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tracing::Instrument;

use crate::edge::app::App;
use crate::edge::error::{ApiError, REQUEST_ID};
use crate::edge::idempotency::TokenScope;
use crate::edge::{notify, orders, refunds};

impl App {
    /// The routes: `/v1/…` (bearer token), `/notify/v2/pay`, `/notify/v2/refund`,
    /// `/notify/v3/{merchant}`,
    /// `/healthz`, `/readyz`, `/metrics`, `/openapi.json`. The first call starts the task that
    /// keeps the metrics' database figures fresh, so it must be made within a Tokio runtime.
    pub fn router(&self) -> Router {
        self.service.start_gauges();
        let v1 = Router::new()
            .route("/v1/openid", post(orders::openid))
            .route("/v1/orders", post(orders::create_order).get(orders::list_orders))
            .route("/v1/orders/{out_trade_no}", get(orders::get_order))
            .route("/v1/orders/{out_trade_no}/close", post(orders::close_order))
            .route("/v1/orders/{out_trade_no}/refunds", post(refunds::create_refund))
            .route("/v1/refunds/{out_refund_no}", get(refunds::get_refund))
            .layer(middleware::from_fn_with_state(self.clone(), auth));
        let notify = Router::new()
            .route("/notify/v2/pay", post(notify::payment))
            .route("/notify/v2/refund", post(notify::refund))
            .route("/notify/v3/{merchant}", post(notify::v3))
            .layer(DefaultBodyLimit::max(wxpay_protocol::xml::DEFAULT_MAX_LEN));
        Router::new()
            .merge(v1)
            .merge(notify)
            .route("/healthz", get(|| async { "ok" }))
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics))
            .route("/openapi.json", get(orders::openapi))
            // Every answer, a wrong path or method included, has the JSON error body.
            .fallback(|| async { ApiError::NotFound("no such path".into()) })
            .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
            .layer(DefaultBodyLimit::max(64 * 1024))
            .layer(middleware::from_fn_with_state(self.clone(), request_id))
            .with_state(self.clone())
    }
}

/// Gives every request an id (the client's `x-request-id` when it is sane), runs it in a
/// span carrying the id, and returns the id in a header; after a request that may have
/// changed something, tells the metrics.
async fn request_id(State(app): State<App>, req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty() && v.len() <= 64 && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        .map(str::to_owned)
        .unwrap_or_else(crate::util::random_hex::<8>);
    let span = tracing::info_span!("request", request_id = %id, method = %req.method(), path = ?req.uri().path());
    // A request that is not a read, and succeeded, may have changed what the metrics'
    // gauges count (refused and anonymous junk did not, and must not make them read again).
    let changes = !matches!(*req.method(), axum::http::Method::GET | axum::http::Method::HEAD);
    let mut response = REQUEST_ID.scope(id.clone(), next.run(req)).instrument(span).await;
    if changes && response.status().is_success() {
        app.metrics().changed();
    }
    if let Ok(v) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", v);
    }
    response
}

/// The bearer token a request presents (empty when it presents none).
fn bearer(headers: &HeaderMap) -> &str {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .unwrap_or("")
}

async fn auth(State(app): State<App>, mut req: Request, next: Next) -> Response {
    let presented = bearer(req.headers());
    let tokens = &app.config().api_tokens;
    // Every configured token is compared, in constant time, whatever matches first.
    let mut matched: Option<usize> = None;
    for (i, t) in tokens.iter().enumerate() {
        if t.matches(presented) && matched.is_none() {
            matched = Some(i);
        }
    }
    let Some(i) = matched else {
        return ApiError::Unauthorized.into_response();
    };
    let digest = ring::digest::digest(&ring::digest::SHA256, tokens[i].expose().as_bytes());
    let scope = crate::util::hex(&digest.as_ref()[..8]);
    req.extensions_mut().insert(TokenScope(scope));
    next.run(req).await
}

async fn readyz(State(app): State<App>) -> Response {
    match app.store().ping().await {
        Ok(()) => (StatusCode::OK, "ready").into_response(),
        Err(e) => {
            tracing::warn!(error = ?e, "not ready: the database does not answer");
            (StatusCode::SERVICE_UNAVAILABLE, "the database does not answer").into_response()
        }
    }
}

async fn metrics(State(app): State<App>, headers: HeaderMap) -> Response {
    if let Some(token) = &app.config().metrics_token {
        if !token.matches(bearer(&headers)) {
            return ApiError::Unauthorized.into_response();
        }
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        app.metrics().render(app.now()),
    )
        .into_response()
}
