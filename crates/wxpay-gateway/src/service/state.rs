//! The core's shared state: the configuration, the clock, the store, one provider per
//! merchant, the metrics.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::provider::sns::Sns;
use crate::provider::v2::{V2Inbox, V2Provider};
use crate::provider::v3::{V3Inbox, V3Provider};
use crate::provider::{CertificateKeeper, KeptCertificate, Provider};
use crate::service::breaker::Breaker;
use crate::service::error::ServiceError;
use crate::service::rejections::Rejections;
use crate::store::Store;
use crate::time::Clock;

pub(crate) struct Inner {
    pub(crate) config: Config,
    pub(crate) clock: Clock,
    pub(crate) store: Arc<dyn Store>,
    /// One provider per configured merchant, in the configuration's order.
    pub(crate) merchants: Vec<Box<dyn Provider>>,
    /// The circuit breaker on each merchant's order creation, in the same order.
    pub(crate) breakers: Vec<Breaker>,
    /// Reads APIv2 notifications and finds their merchant.
    pub(crate) v2_inbox: V2Inbox,
    /// Reads APIv3 notifications of the merchant their path names.
    pub(crate) v3_inbox: V3Inbox,
    pub(crate) sns: Sns,
    pub(crate) webhook_http: reqwest::Client,
    pub(crate) metrics: Arc<Metrics>,
    /// Rejected notifications waiting to be recorded, within their budget.
    pub(crate) rejections: Arc<Rejections>,
    /// Whether the task refreshing the metrics' database figures was started.
    pub(crate) gauges_refreshed: AtomicBool,
}

/// Keeps a provider's downloaded platform certificates in the store.
struct StoreKeeper(Arc<dyn Store>);

impl CertificateKeeper for StoreKeeper {
    fn load<'a>(
        &'a self,
        merchant: &'a str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Vec<KeptCertificate>> + Send + 'a>> {
        Box::pin(async move {
            self.0
                .platform_certificates(merchant.to_owned())
                .await
                .unwrap_or_else(|e| {
                    tracing::warn!(merchant, error = %e, "kept platform certificates could not be read");
                    Vec::new()
                })
        })
    }

    fn keep<'a>(
        &'a self,
        merchant: &'a str,
        certificates: Vec<KeptCertificate>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>> {
        Box::pin(async move {
            if let Err(e) = self
                .0
                .keep_platform_certificates(merchant.to_owned(), certificates)
                .await
            {
                tracing::warn!(merchant, error = %e, "downloaded platform certificates could not be kept");
            }
        })
    }
}

/// The gateway's core: orders, refunds, notifications, reconciliation and the background
/// work, over a store and WeChat Pay. It knows no HTTP. Cheap to clone.
#[derive(Clone)]
pub struct Service {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("engine", &self.inner.store.engine())
            .finish()
    }
}

impl Service {
    /// Builds the core over a store.
    ///
    /// # Errors
    /// A message when the configuration is not usable (see [`Config::validate`]).
    pub fn new(config: Config, store: Arc<dyn Store>) -> Result<Service, String> {
        config.validate()?;
        // Calls to WeChat Pay and webhook deliveries go over rustls with ring, as everywhere in
        // wxpay; installing the provider twice (the simulator in the same process) is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let metrics = Arc::new(Metrics::default());
        let clock = Clock::default();
        let webhook_http = crate::provider::strict_client()
            .timeout(std::time::Duration::from_secs(10))
            .build()
            .map_err(|e| format!("webhook client: {e}"))?;
        let mut merchants: Vec<Box<dyn Provider>> = Vec::with_capacity(config.merchants.len());
        let mut v3_links = Vec::new();
        for (i, m) in config.merchants.iter().enumerate() {
            let (upstream, public_url) = (&config.upstream, &config.public_url);
            if m.v3.is_some() {
                let keeper: Arc<dyn CertificateKeeper> = Arc::new(StoreKeeper(store.clone()));
                let p = V3Provider::new(
                    m.clone(),
                    upstream,
                    public_url,
                    metrics.clone(),
                    clock.clone(),
                    Some(keeper),
                )?;
                v3_links.push((i, p.link()));
                merchants.push(Box::new(p));
            } else {
                merchants.push(Box::new(V2Provider::new(
                    m.clone(),
                    upstream,
                    public_url,
                    metrics.clone(),
                    clock.clone(),
                )?));
            }
        }
        let breakers = merchants
            .iter()
            .map(|_| Breaker::new(config.upstream.breaker_after_failures, config.upstream.breaker_open_for))
            .collect();
        let v2_inbox = V2Inbox::new(&config.merchants);
        let v3_inbox = V3Inbox::new(v3_links);
        let sns = Sns::new(&config.upstream, metrics.clone())?;
        Ok(Service {
            inner: Arc::new(Inner {
                config,
                clock,
                store,
                merchants,
                breakers,
                v2_inbox,
                v3_inbox,
                sns,
                webhook_http,
                metrics,
                rejections: Default::default(),
                gauges_refreshed: Default::default(),
            }),
        })
    }

    /// Now, in Unix milliseconds, as the gateway sees it.
    pub fn now(&self) -> crate::time::Millis {
        self.inner.clock.now()
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

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// When something started at `now` (an order, a refund) is first looked at if WeChat Pay
    /// says nothing.
    pub(crate) fn first_check_at(&self, now: crate::time::Millis) -> crate::time::Millis {
        now + self.inner.config.jobs.first_check_after
    }

    /// A configured merchant by the name stored with its orders.
    pub(crate) fn merchant_named(&self, name: &str) -> Option<&dyn Provider> {
        self.inner
            .merchants
            .iter()
            .find(|m| m.merchant().name == name)
            .map(|m| &**m)
    }

    /// The circuit breaker on `provider`'s order creation.
    pub(crate) fn breaker(&self, provider: &dyn Provider) -> &Breaker {
        let name = &provider.merchant().name;
        let i = self
            .inner
            .merchants
            .iter()
            .position(|m| &m.merchant().name == name)
            .unwrap_or(0);
        &self.inner.breakers[i]
    }

    /// The merchant a request names, or the first configured one.
    pub(crate) fn merchant(&self, name: Option<&str>) -> Result<&dyn Provider, ServiceError> {
        match name {
            None => Ok(&*self.inner.merchants[0]),
            Some(n) => self
                .merchant_named(n)
                .ok_or_else(|| ServiceError::Invalid(format!("no merchant named {n:?}"))),
        }
    }

    /// The record a request names by its number, with its merchant's provider: `read` reads
    /// one merchant's record (by the merchant's name). Under the merchant the request names;
    /// when it names none, under each configured merchant in turn, and the first merchant's
    /// record wins (as a request that names no merchant means the first when it creates an
    /// order), so that the others are read only when it has none. [`ServiceError::NotFound`]
    /// when no merchant has `what`; when several others have it, a refusal that asks the
    /// request to name its merchant.
    pub(crate) async fn find_under<'a, T>(
        &'a self,
        merchant: Option<&str>,
        what: &str,
        read: impl Fn(String) -> crate::store::Fut<'a, Option<T>>,
    ) -> Result<(&'a dyn Provider, T), ServiceError> {
        let providers: Vec<&dyn Provider> = match merchant {
            Some(_) => vec![self.merchant(merchant)?],
            None => self.inner.merchants.iter().map(|m| &**m).collect(),
        };
        let mut found = Vec::new();
        for (i, provider) in providers.into_iter().enumerate() {
            if let Some(t) = read(provider.merchant().name.clone()).await? {
                found.push((provider, t));
                if i == 0 {
                    break;
                }
            }
        }
        if found.len() > 1 {
            let names: Vec<&str> = found.iter().map(|(p, _)| p.merchant().name.as_str()).collect();
            return Err(ServiceError::Invalid(format!(
                "{what} exists under merchants {}: name one with ?merchant= (or \"merchant\" in the body)",
                names.join(", ")
            )));
        }
        found.pop().ok_or_else(|| ServiceError::NotFound(format!("no {what}")))
    }

    /// The reader of APIv2 notifications.
    pub(crate) fn v2_inbox(&self) -> &V2Inbox {
        &self.inner.v2_inbox
    }

    /// The reader of APIv3 notifications.
    pub(crate) fn v3_inbox(&self) -> &V3Inbox {
        &self.inner.v3_inbox
    }

    /// The merchant at an index of the configuration.
    pub(crate) fn merchant_at(&self, index: usize) -> &dyn Provider {
        &*self.inner.merchants[index]
    }
}
