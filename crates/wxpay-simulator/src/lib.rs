//! A faithful local WeChat Pay server (APIv2 and APIv3), for tests, demos and load runs.
//!
//! It speaks the real wire protocol on the real paths (`/pay/unifiedorder`,
//! `/pay/orderquery`, `/pay/closeorder`, `/secapi/pay/refund`, `/pay/refundquery`,
//! `/pay/downloadbill`, `/sns/jscode2session`), checks every merchant signature, signs every
//! answer, keeps WeChat Pay's order state machine and error codes, pays orders on request (or
//! on its own in [`Mode::Auto`]), delivers signed payment notifications and encrypted refund
//! notifications on WeChat Pay's retry schedule, and misbehaves on demand (`/simulator/faults`).
//! With [`SimConfig::v3`] set it also serves the APIv3 paths (`/v3/pay/transactions/…`,
//! `/v3/refund/domestic/refunds…`, `/v3/certificates`, `/v3/bill/tradebill`) for merchants
//! with APIv3 credentials, with RSA-signed answers and encrypted, signed notifications.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use wxpay_simulator::{SimConfig, Simulator};
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let handle = Simulator::new(SimConfig::new())?.serve(listener).await?;
//! println!("WeChat Pay stand-in at {}", handle.base_url());
//! handle.shutdown().await;
//! # Ok(()) }
//! ```

mod bill;
mod checkout;
mod config;
mod control;
mod faults;
mod http_client;
mod ids;
mod metrics;
mod notifier;
mod orders;
mod requests;
mod sns;
mod store;
mod tls;
mod v2;
mod v3;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use wxpay_protocol::{ApiKey, AppId, AppSecret, Fen, MchId};

pub use config::{
    Mode, SimConfig, SimMerchant, SimV3Merchant, TEST_API_KEY, TEST_APIV3_KEY, TEST_APP_SECRET, TEST_APPID,
    TEST_MCH_ID, TlsConfig, V3Config, V3Signer,
};
pub use faults::{Fault, FaultKind, FaultRequest};
pub use notifier::Attempt;
pub use requests::ReceivedCall;
pub use sns::{openid, openid_issued_for};
pub use v3::V3Files;
pub use wxpay_http::Limits;

use crate::faults::Faults;
use crate::metrics::Metrics;
use crate::notifier::Notifier;
use crate::store::Store;

/// Why the simulator could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is not usable; the message says which part.
    #[error("simulator configuration: {0}")]
    Config(String),
    /// Listening, TLS files, or the certificates could not be set up.
    #[error("simulator: {0}")]
    Io(#[from] std::io::Error),
}

/// A merchant as the simulator serves it: its keys and its mini programs.
pub(crate) struct MerchantEntry {
    pub mch_id: MchId,
    /// The APIv2 key; `None` for a merchant served on APIv3 only.
    pub key: Option<ApiKey>,
    pub apps: Vec<(AppId, AppSecret)>,
    /// The APIv3 credentials, as configured.
    pub v3: Option<SimV3Merchant>,
    /// What is left for refunds, in fen, when `POST /simulator/balance` set it; negative
    /// means no limit (the default). A refund above it is refused with `NOTENOUGH`.
    pub refund_balance: std::sync::atomic::AtomicI64,
}

impl MerchantEntry {
    pub(crate) fn has_app(&self, appid: &str) -> bool {
        self.apps.iter().any(|(a, _)| a.as_str() == appid)
    }

    /// Takes `fee` from the refundable balance: false, taking nothing, when less is left;
    /// true always when no balance is set.
    pub(crate) fn take_balance(&self, fee: Fen) -> bool {
        let fee = i64::try_from(fee.get()).unwrap_or(i64::MAX);
        self.refund_balance
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                if left < 0 {
                    Some(left)
                } else {
                    left.checked_sub(fee).filter(|rest| *rest >= 0)
                }
            })
            .is_ok()
    }

    /// Gives `fee` back to the refundable balance, when one is set (a closed refund).
    pub(crate) fn give_back_balance(&self, fee: Fen) {
        let fee = i64::try_from(fee.get()).unwrap_or(i64::MAX);
        let _ = self
            .refund_balance
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                (left >= 0).then(|| left.saturating_add(fee))
            });
    }
}

pub(crate) struct Inner {
    pub config: SimConfig,
    pub merchants: Vec<MerchantEntry>,
    pub by_mch: HashMap<String, u16>,
    pub store: Store,
    pub faults: Faults,
    pub metrics: Metrics,
    pub notifier: Notifier,
    pub requests: requests::RequestLog,
    /// Seconds added to the wall clock by `POST /simulator/clock`, so that tests can reach an
    /// order's `time_expire` or a prepay's two hours without waiting.
    pub clock_offset: std::sync::atomic::AtomicI64,
    /// When the simulator was made: the origin of its simulated timeline.
    pub started: std::time::Instant,
    pub logins: sns::Logins,
    urls: Mutex<HashMap<Box<str>, Arc<str>>>,
    pub tls: Option<tls::TlsMaterial>,
    pub v3: Option<v3::V3>,
}

/// The simulator: cheap to clone, shared by its server, its background tasks and callers
/// in the same process.
#[derive(Clone)]
pub struct Simulator {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Simulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Simulator")
            .field("merchants", &self.inner.merchants.len())
            .field("orders", &self.inner.store.len())
            .finish()
    }
}

impl Simulator {
    /// The `session_key`s `jscode2session` has issued (the latest 10,000, oldest first): the
    /// secrets a client must never return, log or store, for a test that checks it does not.
    pub fn session_keys(&self) -> Vec<String> {
        self.inner.logins.session_keys()
    }

    /// The simulator's time (unix seconds): the wall clock, moved on by `POST /simulator/clock`.
    pub fn now(&self) -> i64 {
        ids::now_unix() + self.inner.clock_offset.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Milliseconds on the simulated timeline, for rules finer than a second (the least time
    /// between two refunds): real time since the process started, multiplied by the time
    /// scale, plus what `POST /simulator/clock` added. Monotonic, so a wall clock stepping
    /// back cannot make a gap negative; a minute on it is a minute of the rule whatever the
    /// scale, and advancing the clock by a minute clears it.
    pub(crate) fn timeline_ms(&self) -> i64 {
        let real = self.inner.started.elapsed().as_secs_f64();
        let scaled = real * self.inner.config.time_scale.max(0.0) * 1000.0;
        scaled as i64 + 1000 * self.inner.clock_offset.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether `openid` may pay under `appid`: one the simulator issued for that app, or one
    /// the configuration lists.
    pub(crate) fn payer_of(&self, appid: &str, openid: &str) -> bool {
        sns::openid_issued_for(appid, openid) || self.inner.config.openids.iter().any(|o| o == openid)
    }

    /// Moves the simulator's time on by `secs`; returns the new time.
    pub fn advance_clock(&self, secs: i64) -> i64 {
        self.inner
            .clock_offset
            .fetch_add(secs, std::sync::atomic::Ordering::Relaxed);
        self.now()
    }

    /// Moves the simulator's time on to the next moment (now included) when it is `hour`:00
    /// in Beijing; returns how many seconds it moved. A test that pins its day at noon has
    /// twelve hours before the bill's day changes under it.
    pub fn advance_clock_to_beijing_hour(&self, hour: u8) -> i64 {
        let secs = seconds_until_beijing_hour(self.now(), hour);
        self.advance_clock(secs);
        secs
    }

    /// Checks the configuration and builds the simulator (no task runs until
    /// [`Simulator::serve`] or [`Simulator::start_background`]).
    ///
    /// # Errors
    /// [`StartError::Config`] for no merchant, one `mch_id` with two keys, a time scale that is
    /// not positive; [`StartError::Io`] when TLS material cannot be made or read.
    pub fn new(config: SimConfig) -> Result<Simulator, StartError> {
        if config.merchants.is_empty() {
            return Err(StartError::Config("at least one merchant is needed".into()));
        }
        if !(config.time_scale.is_finite() && config.time_scale > 0.0) {
            return Err(StartError::Config(format!(
                "time scale must be a positive number, not {}",
                config.time_scale
            )));
        }
        let mut merchants: Vec<MerchantEntry> = Vec::new();
        let mut by_mch = HashMap::new();
        for m in &config.merchants {
            match by_mch.get(m.mch_id.as_str()) {
                Some(&i) => {
                    let e: &mut MerchantEntry = &mut merchants[usize::from(i)];
                    if e.key != m.api_key {
                        return Err(StartError::Config(format!(
                            "merchant {} is listed twice with different API keys",
                            m.mch_id
                        )));
                    }
                    if e.v3.as_ref().map(|v| &v.apiv3_key) != m.v3.as_ref().map(|v| &v.apiv3_key) {
                        return Err(StartError::Config(format!(
                            "merchant {} is listed twice with different APIv3 keys",
                            m.mch_id
                        )));
                    }
                    if !e.has_app(m.appid.as_str()) {
                        e.apps.push((m.appid.clone(), m.app_secret.clone()));
                    }
                }
                None => {
                    let i =
                        u16::try_from(merchants.len()).map_err(|_| StartError::Config("too many merchants".into()))?;
                    by_mch.insert(m.mch_id.as_str().to_owned(), i);
                    if m.api_key.is_none() && m.v3.is_none() {
                        return Err(StartError::Config(format!(
                            "merchant {} has neither an APIv2 key nor APIv3 credentials",
                            m.mch_id
                        )));
                    }
                    merchants.push(MerchantEntry {
                        mch_id: m.mch_id.clone(),
                        key: m.api_key.clone(),
                        apps: vec![(m.appid.clone(), m.app_secret.clone())],
                        v3: m.v3.clone(),
                        refund_balance: std::sync::atomic::AtomicI64::new(-1),
                    });
                }
            }
        }
        // Notifications go out over rustls; the process-wide provider is ring, as everywhere in
        // wxpay. Installing it twice (the gateway in the same process) is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let tls = match &config.tls {
            Some(t) => Some(tls::TlsMaterial::load_or_create(&t.dir, &merchants)?),
            None => None,
        };
        let v3 = match &config.v3 {
            Some(c) => Some(v3::V3::load(c, &merchants, ids::now_unix())?),
            None => None,
        };
        let notifier = Notifier::new(&config)?;
        Ok(Simulator {
            inner: Arc::new(Inner {
                store: Store::new(config.max_orders),
                faults: Faults::default(),
                metrics: Metrics::default(),
                notifier,
                requests: requests::RequestLog::default(),
                clock_offset: std::sync::atomic::AtomicI64::new(0),
                started: std::time::Instant::now(),
                logins: sns::Logins::default(),
                urls: Mutex::new(HashMap::new()),
                tls,
                v3,
                merchants,
                by_mch,
                config,
            }),
        })
    }

    /// The routes of the simulator: the WeChat Pay paths, `/simulator/…` and `/metrics`.
    pub fn router(&self) -> Router {
        self.api_router().merge(metrics::router().with_state(self.clone()))
    }

    /// The WeChat Pay paths and `/simulator/…`, with the metrics at `/simulator/metrics`:
    /// for mounting beside another service that has its own `/metrics` (the demo).
    pub fn api_router(&self) -> Router {
        Router::new()
            .merge(v2::router())
            .merge(v3::router())
            .merge(sns::router())
            .merge(control::router())
            .merge(metrics::router_at("/simulator/metrics"))
            .with_state(self.clone())
    }

    /// Starts the background work (automatic payments, refund completion, notification
    /// delivery) and returns a sender that stops it.
    pub fn start_background(&self) -> watch::Sender<bool> {
        let (stop_tx, stop_rx) = watch::channel(false);
        notifier::start(self.clone(), stop_rx);
        stop_tx
    }

    /// Serves on `listener` (with TLS when configured) until [`SimHandle::shutdown`].
    ///
    /// # Errors
    /// When the listener's address cannot be read.
    pub async fn serve(self, listener: TcpListener) -> Result<SimHandle, StartError> {
        let addr = listener.local_addr()?;
        let stop_background = self.start_background();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let app = self.router();
        let scheme = if self.inner.tls.is_some() { "https" } else { "http" };
        let limits = self.inner.config.limits;
        let shutdown = async {
            let _ = stop_rx.await;
        };
        let task = match &self.inner.tls {
            Some(material) => tokio::spawn(tls::serve(listener, app, material.server_config()?, limits, shutdown)),
            None => tokio::spawn(async move {
                if let Err(e) = wxpay_http::serve(listener, app, limits, shutdown).await {
                    tracing::error!(error = %e, "simulator server stopped");
                }
            }),
        };
        tracing::info!(%addr, mode = ?self.inner.config.mode, time_scale = self.inner.config.time_scale, "WeChat Pay simulator listening");
        Ok(SimHandle {
            sim: self,
            addr,
            base_url: format!("{scheme}://{addr}"),
            stop: Some(stop_tx),
            stop_background,
            task: Some(task),
        })
    }

    /// Interns a notification URL: every order of a merchant usually has the same one.
    pub(crate) fn intern_url(&self, url: &str) -> Arc<str> {
        let mut urls = self.inner.urls.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(u) = urls.get(url) {
            return u.clone();
        }
        let u: Arc<str> = Arc::from(url);
        // Bounded: a client inventing a URL per order must not grow this without end.
        if urls.len() < 4096 {
            urls.insert(Box::from(url), u.clone());
        }
        u
    }

    /// WeChat Pay's APIv3 key files (platform certificate, public key and its id), when APIv3
    /// is on.
    pub fn v3_files(&self) -> Option<V3Files> {
        self.inner.v3.as_ref().map(|v| v.files.clone())
    }

    /// The files of the test CA and the merchants' client certificates, when TLS is on.
    pub fn tls_files(&self) -> Option<TlsFiles> {
        self.inner.tls.as_ref().map(|t| t.files.clone())
    }
}

/// Where the TLS material is, for clients: the CA to trust and each merchant's client
/// certificate and key.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// The test CA certificate (PEM).
    pub ca_cert: std::path::PathBuf,
    /// Per `mch_id`: the client certificate and private key (PEM).
    pub client: HashMap<String, (std::path::PathBuf, std::path::PathBuf)>,
    /// Per `mch_id`: the same certificate and key as `apiclient_cert.p12`, password the
    /// merchant number.
    pub client_p12: HashMap<String, std::path::PathBuf>,
}

/// A running simulator.
#[derive(Debug)]
pub struct SimHandle {
    sim: Simulator,
    addr: SocketAddr,
    base_url: String,
    stop: Option<oneshot::Sender<()>>,
    stop_background: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl SimHandle {
    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT` (or `https://…`): the `base_url` (and `sns_base_url`) to
    /// give clients instead of `https://api.mch.weixin.qq.com`.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The simulator itself, for inspection from the same process.
    pub fn simulator(&self) -> &Simulator {
        &self.sim
    }

    /// Stops accepting, lets requests in flight finish, stops background work.
    pub async fn shutdown(mut self) {
        let _ = self.stop_background.send(true);
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

/// Seconds from `now` (unix) to the next `hour`:00:00 in Beijing (UTC+8), 0 when `now` is one.
pub fn seconds_until_beijing_hour(now: i64, hour: u8) -> i64 {
    let since_midnight = (now + 8 * 3600).rem_euclid(86_400);
    (i64::from(hour % 24) * 3600 - since_midnight).rem_euclid(86_400)
}

#[cfg(test)]
mod clock_tests {
    use super::seconds_until_beijing_hour;

    #[test]
    fn the_next_beijing_noon_is_found_from_either_side_of_midnight() {
        // 2026-12-03 04:00:00 UTC is 12:00 in Beijing.
        let noon = 1_796_270_400;
        assert_eq!(seconds_until_beijing_hour(noon, 12), 0);
        assert_eq!(seconds_until_beijing_hour(noon - 1, 12), 1);
        assert_eq!(seconds_until_beijing_hour(noon + 1, 12), 86_399);
        // 23:59:59 Beijing, the second before the day changes, is 12 h 1 s before noon.
        assert_eq!(seconds_until_beijing_hour(noon + 12 * 3600 - 1, 12), 12 * 3600 + 1);
        assert_eq!(seconds_until_beijing_hour(noon, 0), 12 * 3600);
    }
}
