//! The application: the core ([`Service`]) with what serving HTTP adds to it.

use std::sync::Arc;

use axum::Router;

use crate::config::Config;
use crate::edge::console::state::Console;
use crate::edge::inflight::InFlight;
use crate::service::jobs::Jobs;
use crate::service::state::Service;
use crate::store::Store;

/// The gateway: the core and its HTTP edge. Cheap to clone. It dereferences to the core
/// ([`Service`]), whose functions (the clock, the store, reconciliation) it offers too.
#[derive(Clone)]
pub struct App {
    pub(crate) service: Service,
    /// Creating requests running on tasks of their own.
    pub(crate) detached: Arc<InFlight>,
    /// The operator console, when configured.
    pub(crate) console: Option<Arc<Console>>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App").field("service", &self.service).finish()
    }
}

impl std::ops::Deref for App {
    type Target = Service;

    fn deref(&self) -> &Service {
        &self.service
    }
}

impl App {
    /// Builds the gateway over a store.
    ///
    /// # Errors
    /// A message when the configuration is not usable (see [`Config::validate`]).
    pub fn new(config: Config, store: Arc<dyn Store>) -> Result<App, String> {
        let console = config
            .console
            .as_ref()
            .map(|c| Arc::new(Console::new(c, &config.public_url)));
        Ok(App {
            service: Service::new(config, store)?,
            detached: Default::default(),
            console,
        })
    }

    /// The core.
    pub fn service(&self) -> &Service {
        &self.service
    }

    /// Starts the background work (see [`Service::start_jobs`]).
    pub fn start_jobs(&self) -> Jobs {
        self.service.start_jobs()
    }

    /// Waits for the creating requests still running on tasks of their own (a client that
    /// went away leaves its request running): call it after [`serve`] returns, before the
    /// runtime ends.
    pub async fn finish_requests(&self) {
        self.detached.wait_idle().await;
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
    serve_router(app.router(), app.config().limits, listener, shutdown).await
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
