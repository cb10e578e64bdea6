//! The application: shared state, the router, and the middleware every request goes through.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::sync::watch;
use tracing::Instrument;

use crate::config::Config;
use crate::error::{ApiError, REQUEST_ID};
use crate::metrics::Metrics;
use crate::store::Store;
use crate::upstream::{MerchantLink, Upstream};

pub(crate) struct Inner {
    pub config: Config,
    pub clock: Clock,
    pub store: Arc<dyn Store>,
    pub merchants: Vec<MerchantLink>,
    /// `(mch_id, appid)` → merchant index, to find a notification's merchant.
    pub by_mch_app: HashMap<(String, String), usize>,
    pub upstream: Upstream,
    pub webhook_http: reqwest::Client,
    pub metrics: Arc<Metrics>,
    /// Rejected notifications waiting to be recorded, within their budget.
    pub rejections: crate::rejections::Rejections,
    /// Whether the task refreshing the metrics' database figures was started.
    pub gauges_refreshed: std::sync::atomic::AtomicBool,
    /// Creating requests running on tasks of their own.
    pub detached: Arc<InFlight>,
}

/// Counts work running on tasks of its own, so that a shutdown can wait for it.
#[derive(Debug, Default)]
pub(crate) struct InFlight {
    count: std::sync::atomic::AtomicUsize,
    idle: tokio::sync::Notify,
}

/// One piece of work counted by [`InFlight`] while it lives.
pub(crate) struct Running(Arc<InFlight>);

impl Drop for Running {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl InFlight {
    /// Counts one more until the returned value is dropped.
    pub(crate) fn start(self: &Arc<Self>) -> Running {
        self.count.fetch_add(1, Ordering::AcqRel);
        Running(self.clone())
    }

    /// Waits until nothing is counted.
    pub(crate) async fn wait_idle(&self) {
        loop {
            let idle = self.idle.notified();
            let mut idle = std::pin::pin!(idle);
            idle.as_mut().enable();
            if self.count.load(Ordering::Acquire) == 0 {
                return;
            }
            idle.await;
        }
    }
}

/// The gateway: cheap to clone.
#[derive(Clone)]
pub struct App {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("engine", &self.inner.store.engine())
            .finish()
    }
}

/// The gateway's clock: the system clock plus an offset that only ever grows. Production
/// never moves it; tests move it forward to make orders expire or fall due for a check
/// without waiting.
/// Cloning gives another handle on the same clock: the calls to WeChat Pay read the time
/// the rest of the gateway reads.
#[derive(Clone, Debug, Default)]
pub struct Clock {
    offset: Arc<AtomicI64>,
}

impl Clock {
    /// Moves the clock forward.
    pub fn advance(&self, by: std::time::Duration) {
        self.offset.fetch_add(by.as_millis() as i64, Ordering::Relaxed);
    }

    /// Milliseconds since the Unix epoch, by this clock.
    pub fn now_ms(&self) -> i64 {
        crate::time::now_ms() + self.offset.load(Ordering::Relaxed)
    }
}

/// Background work running for an [`App`]; stop it with [`Jobs::stop`].
#[derive(Debug)]
pub struct Jobs {
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Jobs {
    /// Stops the background work and waits for the current round to finish.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

impl App {
    /// Builds the gateway over a store.
    ///
    /// # Errors
    /// A message when the configuration is not usable (see [`Config::validate`]).
    pub fn new(config: Config, store: Arc<dyn Store>) -> Result<App, String> {
        config.validate()?;
        // Calls to WeChat Pay and webhook deliveries go over rustls with ring, as everywhere in
        // wxpay; installing the provider twice (the simulator in the same process) is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let metrics = Arc::new(Metrics::default());
        let clock = Clock::default();
        let upstream = Upstream::new(config.upstream.clone(), metrics.clone(), clock.clone())?;
        let webhook_http = crate::upstream::strict_client()
            .timeout(std::time::Duration::from_secs(10))
            .build()
            .map_err(|e| format!("webhook client: {e}"))?;
        let merchants = config
            .merchants
            .iter()
            .map(|m| MerchantLink::new(m.clone(), &config.upstream))
            .collect::<Result<Vec<_>, _>>()?;
        let by_mch_app = merchants
            .iter()
            .enumerate()
            .map(|(i, m)| {
                (
                    (m.config.mch_id.as_str().to_owned(), m.config.appid.as_str().to_owned()),
                    i,
                )
            })
            .collect();
        Ok(App {
            inner: Arc::new(Inner {
                config,
                clock,
                store,
                merchants,
                by_mch_app,
                upstream,
                webhook_http,
                metrics,
                rejections: Default::default(),
                gauges_refreshed: Default::default(),
                detached: Default::default(),
            }),
        })
    }

    /// Now, in Unix milliseconds, as the gateway sees it.
    pub fn now(&self) -> i64 {
        self.inner.clock.now_ms()
    }

    /// When something started at `now` (an order, a refund) is first looked at if WeChat Pay
    /// says nothing.
    pub(crate) fn first_check_at(&self, now: i64) -> i64 {
        now + self.inner.config.jobs.first_check_after.as_millis() as i64
    }

    /// Waits for the creating requests still running on tasks of their own (a client that
    /// went away leaves its request running): call it after [`serve`] returns, before the
    /// runtime ends.
    pub async fn finish_requests(&self) {
        self.inner.detached.wait_idle().await;
    }

    /// The gateway's clock, which tests move forward to reach expiry and check times.
    pub fn clock(&self) -> &Clock {
        &self.inner.clock
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// The routes: `/v1/…` (bearer token), `/notify/v2/pay`, `/notify/v2/refund`,
    /// `/healthz`, `/readyz`, `/metrics`, `/openapi.json`. The first call starts the task that
    /// keeps the metrics' database figures fresh, so it must be made within a Tokio runtime.
    pub fn router(&self) -> Router {
        if !self.inner.gauges_refreshed.swap(true, Ordering::Relaxed) {
            tokio::spawn(refresh_gauges(Arc::downgrade(&self.inner)));
        }
        let v1 = Router::new()
            .route("/v1/openid", post(crate::api::openid))
            .route(
                "/v1/orders",
                post(crate::api::create_order).get(crate::api::list_orders),
            )
            .route("/v1/orders/{out_trade_no}", get(crate::api::get_order))
            .route("/v1/orders/{out_trade_no}/close", post(crate::api::close_order))
            .route("/v1/orders/{out_trade_no}/refunds", post(crate::refunds::create_refund))
            .route("/v1/refunds/{out_refund_no}", get(crate::refunds::get_refund))
            .layer(middleware::from_fn_with_state(self.clone(), auth));
        let notify = Router::new()
            .route("/notify/v2/pay", post(crate::notify::payment))
            .route("/notify/v2/refund", post(crate::notify::refund))
            .layer(DefaultBodyLimit::max(wxpay_protocol::xml::DEFAULT_MAX_LEN));
        Router::new()
            .merge(v1)
            .merge(notify)
            .route("/healthz", get(|| async { "ok" }))
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics))
            .route("/openapi.json", get(crate::api::openapi))
            // Every answer, a wrong path or method included, has the JSON error body.
            .fallback(|| async { ApiError::NotFound("no such path".into()) })
            .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
            .layer(DefaultBodyLimit::max(64 * 1024))
            .layer(middleware::from_fn_with_state(self.clone(), request_id))
            .with_state(self.clone())
    }

    /// Starts the background work (order and refund checks, expiry, event delivery, the
    /// daily reconciliation when configured), unless the configuration turned it off.
    pub fn start_jobs(&self) -> Jobs {
        let (stop, rx) = watch::channel(false);
        let mut tasks = Vec::new();
        if self.inner.config.jobs.enabled {
            tasks.push(tokio::spawn(crate::jobs::checks(self.clone(), rx.clone())));
            tasks.push(tokio::spawn(crate::jobs::daily_reconciliation(
                self.clone(),
                rx.clone(),
            )));
            tasks.push(tokio::spawn(crate::jobs::outbox(self.clone(), rx)));
        }
        Jobs { stop, tasks }
    }

    /// A configured merchant by the name stored with its orders.
    pub(crate) fn merchant_named(&self, name: &str) -> Option<&MerchantLink> {
        self.inner.merchants.iter().find(|m| m.config.name == name)
    }

    pub(crate) fn merchant(&self, name: Option<&str>) -> Result<&MerchantLink, ApiError> {
        match name {
            None => Ok(&self.inner.merchants[0]),
            Some(n) => self
                .merchant_named(n)
                .ok_or_else(|| ApiError::Invalid(format!("no merchant named {n:?}"))),
        }
    }
}

/// Serves the app on `listener`, within the configured [`Limits`](wxpay_http::Limits), until
/// `shutdown` completes, then lets requests in flight finish.
///
/// # Errors
/// When serving fails.
pub async fn serve(
    app: &App,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_router(app.router(), app.inner.config.limits, listener, shutdown).await
}

/// Serves `router` (the gateway's, perhaps with more routes merged, as the demo does) within
/// `limits` until `shutdown` completes.
///
/// # Errors
/// When serving fails.
pub async fn serve_router(
    router: Router,
    limits: wxpay_http::Limits,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    wxpay_http::serve(listener, router, limits, shutdown).await
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
        .unwrap_or_else(crate::random_hex::<8>);
    let span = tracing::info_span!("request", request_id = %id, method = %req.method(), path = ?req.uri().path());
    // A request that is not a read, and succeeded, may have changed what the metrics'
    // gauges count (refused and anonymous junk did not, and must not make them read again).
    let changes = !matches!(*req.method(), axum::http::Method::GET | axum::http::Method::HEAD);
    let mut response = REQUEST_ID.scope(id.clone(), next.run(req)).instrument(span).await;
    if changes && response.status().is_success() {
        app.inner.metrics.changed();
    }
    if let Ok(v) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", v);
    }
    response
}

/// The scope of a token for idempotency keys: a digest, never the token itself.
#[derive(Clone, Debug)]
pub(crate) struct TokenScope(pub String);

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
    // Every configured token is compared, in constant time, whatever matches first.
    let mut matched: Option<usize> = None;
    for (i, t) in app.inner.config.api_tokens.iter().enumerate() {
        if t.matches(presented) && matched.is_none() {
            matched = Some(i);
        }
    }
    let Some(i) = matched else {
        return ApiError::Unauthorized.into_response();
    };
    let digest = ring::digest::digest(
        &ring::digest::SHA256,
        app.inner.config.api_tokens[i].expose().as_bytes(),
    );
    let scope = crate::hex(&digest.as_ref()[..8]);
    req.extensions_mut().insert(TokenScope(scope));
    next.run(req).await
}

async fn readyz(State(app): State<App>) -> Response {
    match app.inner.store.ping().await {
        Ok(()) => (StatusCode::OK, "ready").into_response(),
        Err(e) => {
            tracing::warn!(error = ?e, "not ready: the database does not answer");
            (StatusCode::SERVICE_UNAVAILABLE, "the database does not answer").into_response()
        }
    }
}

async fn metrics(State(app): State<App>, headers: HeaderMap) -> Response {
    if let Some(token) = &app.inner.config.metrics_token {
        if !token.matches(bearer(&headers)) {
            return ApiError::Unauthorized.into_response();
        }
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        app.inner.metrics.render(app.now()),
    )
        .into_response()
}

/// Keeps the database gauges of the metrics fresh: read at start, within a second after a
/// change is reported, and every 30 s in any case, never more than once a second. It stops
/// when the app is gone.
async fn refresh_gauges(app: std::sync::Weak<Inner>) {
    loop {
        let Some(inner) = app.upgrade() else {
            return;
        };
        let now = App { inner: inner.clone() }.now();
        match inner.store.stats(now).await {
            Ok(stats) => inner.metrics.set_gauges(stats, now),
            Err(e) => tracing::warn!(error = ?e, "cannot read the metrics' figures from the database"),
        }
        let metrics = inner.metrics.clone();
        drop(inner);
        let read = tokio::time::Instant::now();
        metrics.wait_for_change(std::time::Duration::from_secs(30)).await;
        tokio::time::sleep_until(read + std::time::Duration::from_secs(1)).await;
    }
}
