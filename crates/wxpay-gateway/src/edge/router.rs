//! The routes, and the middleware every request goes through: a request id, and bearer
//! tokens compared in constant time.

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use tracing::Instrument;
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::edge::app::App;
use crate::edge::error::{ApiError, REQUEST_ID};
use crate::edge::html::SELF_CONTAINED;
use crate::edge::idempotency::TokenScope;
use crate::edge::reference::{self, ApiDoc};
use crate::edge::{console, notify, orders, refunds};

/// The `/v1` routes, each registered from its handler's `#[utoipa::path]`, and the OpenAPI
/// document made from the same annotations: a route cannot be served undocumented, nor
/// documented at a path or method the router does not serve.
fn v1() -> (Router<App>, utoipa::openapi::OpenApi) {
    let (router, mut doc) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(orders::openid))
        .routes(routes!(orders::create_order, orders::list_orders))
        .routes(routes!(orders::get_order))
        .routes(routes!(orders::close_order))
        .routes(routes!(refunds::create_refund))
        .routes(routes!(refunds::get_refund))
        .split_for_parts();
    reference::add_common_answers(&mut doc);
    (router, doc)
}

impl App {
    /// The routes: `/v1/…` (bearer token), `/notify/v2/pay`, `/notify/v2/refund`,
    /// `/notify/v3/{merchant}`,
    /// `/healthz`, `/readyz`, `/metrics`, `/openapi.json`, `/docs`. The first call starts the
    /// task that keeps the metrics' database figures fresh, so it must be made within a Tokio
    /// runtime.
    pub fn router(&self) -> Router {
        self.service.start_gauges();
        let (v1, doc) = v1();
        let v1 = v1.layer(middleware::from_fn_with_state(self.clone(), auth));
        // Both are made once, here, and served as they are.
        let doc = serde_json::to_value(doc).unwrap_or_default();
        let page = Bytes::from(reference::render(&doc));
        let doc = Bytes::from(serde_json::to_string_pretty(&doc).unwrap_or_default());
        let notify = Router::new()
            .route("/notify/v2/pay", post(notify::payment))
            .route("/notify/v2/refund", post(notify::refund))
            .route("/notify/v3/{merchant}", post(notify::v3))
            .layer(DefaultBodyLimit::max(wxpay_protocol::xml::DEFAULT_MAX_LEN));
        Router::new()
            .merge(v1)
            .merge(notify)
            .merge(console::routes())
            .route("/healthz", get(|| async { "ok" }))
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics))
            .route(
                "/openapi.json",
                get(move || std::future::ready(([(header::CONTENT_TYPE, "application/json")], doc.clone()))),
            )
            .route(
                "/docs",
                get(move || {
                    std::future::ready((
                        [
                            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                            // The page is self-contained: nothing but its own inline style runs.
                            (header::CONTENT_SECURITY_POLICY, SELF_CONTAINED),
                            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
                        ],
                        page.clone(),
                    ))
                }),
            )
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
    let answered = async {
        let response = next.run(req).await;
        let refused = response.status().is_client_error() || response.status().is_server_error();
        if refused && tracing::enabled!(tracing::Level::TRACE) {
            trace_refusal(response).await
        } else {
            response
        }
    };
    let mut response = REQUEST_ID.scope(id.clone(), answered).instrument(span).await;
    if changes && response.status().is_success() {
        app.metrics().changed();
    }
    if let Ok(v) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", v);
    }
    response
}

/// Logs, at TRACE, the body of a refusal (a 4xx or 5xx answer of the gateway's routes): what
/// a client was told when it reports one, and what the secret scan of the trust report (item
/// 37) reads as the error bodies. Only at TRACE, because the body is read into memory to be
/// logged. The body is logged escaped (`?`), so that one answer stays one log line.
async fn trace_refusal(response: Response) -> Response {
    use axum::body::HttpBody as _;
    // The gateway's refusals are a few hundred bytes; a body of unknown or larger size is
    // passed on untouched, so logging never changes what the client gets.
    const MAX: u64 = 64 * 1024;
    let (parts, body) = response.into_parts();
    let status = parts.status.as_u16();
    if body.size_hint().upper().is_none_or(|n| n > MAX) {
        tracing::trace!(status, "answered, with a body too large to log");
        return Response::from_parts(parts, body);
    }
    match axum::body::to_bytes(body, MAX as usize).await {
        Ok(bytes) => {
            tracing::trace!(status, body = ?String::from_utf8_lossy(&bytes), "answered");
            Response::from_parts(parts, axum::body::Body::from(bytes))
        }
        Err(e) => {
            // A body that fails while read is lost whether logged or not; the client gets the
            // status with an empty body, and no length that would promise more.
            tracing::trace!(status, error = %e, "answered; its body failed");
            let mut parts = parts;
            parts.headers.remove(header::CONTENT_LENGTH);
            Response::from_parts(parts, axum::body::Body::empty())
        }
    }
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

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use axum::body::Body;

    use super::*;

    /// Runs `trace_refusal` on `response` under a TRACE subscriber of its own: the answer it
    /// passes on (status, body) and what it logged.
    fn traced(response: Response) -> (u16, Vec<u8>, String) {
        #[derive(Clone, Default)]
        struct Log(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Log {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let log = Log::default();
        let writer = log.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        let (status, body) = tracing::subscriber::with_default(subscriber, || {
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            rt.block_on(async {
                let r = trace_refusal(response).await;
                let status = r.status().as_u16();
                (
                    status,
                    axum::body::to_bytes(r.into_body(), usize::MAX).await.unwrap().to_vec(),
                )
            })
        });
        let text = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
        (status, body, text)
    }

    #[test]
    fn at_trace_a_refusal_is_logged_with_its_body_and_still_answered_whole() {
        let body = r#"{"error":{"code":"invalid_request","message":"amount_fen: must be at least 1"}}"#;
        let (status, got, log) = traced((StatusCode::UNPROCESSABLE_ENTITY, body).into_response());
        assert_eq!((status, got.as_slice()), (422, body.as_bytes()));
        assert!(log.contains("answered status=422 body="), "{log}");
        assert!(log.contains("amount_fen: must be at least 1"), "{log}");
        // Escaped: a body of several lines stays on the answer's one log line.
        let (_, _, log) = traced((StatusCode::BAD_REQUEST, "line one\nline two").into_response());
        assert_eq!(log.lines().count(), 1, "{log}");
        assert!(log.contains(r"line one\nline two"), "{log}");
    }

    #[test]
    fn a_refusal_too_large_to_log_is_passed_on_untouched() {
        let body = "x".repeat(100 * 1024);
        let (status, got, log) = traced((StatusCode::BAD_GATEWAY, body.clone()).into_response());
        assert_eq!((status, got.len()), (502, body.len()));
        assert!(log.contains("answered, with a body too large to log"), "{log}");
        assert!(!log.contains("xxxx"), "{log}");
        // A stream's length is unknown until it ends: reading it to log it could hold the
        // answer back, so it is not read either.
        let stream = Body::from_stream(futures_util::stream::iter([Ok::<_, std::io::Error>(Bytes::from(
            "abc",
        ))]));
        let (status, got, log) = traced(Response::builder().status(500).body(stream).unwrap());
        assert_eq!((status, got.as_slice()), (500, b"abc".as_slice()));
        assert!(log.contains("too large to log"), "{log}");
    }
}
