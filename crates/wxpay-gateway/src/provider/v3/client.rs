//! Calls to WeChat Pay's APIv3: signed (`Authorization`), verified (`Wechatpay-*` over the
//! raw body), retried only where it is safe, with the platform certificates refreshed when an
//! answer names a key the gateway does not have.
//!
//! A call is repeated, with the same body and a fresh signature, when no answer came (the
//! request may or may not have been processed; WeChat Pay accepts the same order number with
//! the same parameters again), when an answer does not verify, and for `SYSTEM_ERROR` and
//! `BANK_ERROR`. Every answer must verify, refusals included: an unsigned or badly signed
//! refusal, and an error page that is not WeChat Pay's JSON (a proxy, a wrong host), count as
//! no answer, because a refusal decides as much as a success does (a refund failed, an order
//! unknown). Only a file download is read unsigned; its digest is checked instead.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use wxpay_protocol::v3::auth::authorization;
use wxpay_protocol::v3::calls::{Request, V3Error, platform_certificates};
use wxpay_protocol::v3::{Certificate, SignatureHeaders, Verifier, VerifyError};

use crate::config::{MerchantConfig, UpstreamConfig, V3Credentials};
use crate::metrics::Metrics;
use crate::provider::hosts::Hosts;
use crate::provider::{CertificateKeeper, KeptCertificate, merchant_client, nonce};
use crate::provider::{LARGE_ANSWER_TIMEOUT, Received, read_observed};
use crate::time::{Clock, Millis};

/// How an APIv3 call ended badly.
#[derive(Debug, Clone)]
pub(crate) enum CallError {
    /// WeChat Pay refused it (a 4xx or 5xx with its error body), and repeating it now would
    /// not help.
    Rejected {
        /// WeChat Pay's error body, with the status.
        error: V3Error,
        /// Whether the call changes WeChat Pay's state (a `POST`) and an earlier attempt of it
        /// got no trustworthy answer ([`ProviderError::after_lost_attempt`]).
        lost_attempt: bool,
    },
    /// No trustworthy answer after every allowed attempt.
    NoAnswer(String),
}

/// A verified answer (or a file, for a download).
pub(crate) struct Answer {
    pub body: Bytes,
}

/// How often at most the platform certificates are downloaded because an answer or a
/// notification named an unknown serial: a forger sending unknown serials must not make the
/// gateway call WeChat Pay on every request.
const REFRESH_AT_MOST_EVERY: Duration = Duration::from_secs(60);

/// How long downloaded certificates are trusted before they are downloaded again.
pub(crate) const REFRESH_EVERY: Duration = Duration::from_secs(12 * 3600);

/// Whether the platform certificates are to be downloaded before a verification.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Refresh {
    /// Configured keys only, a list downloaded within twelve hours, or an attempt within
    /// the last minute.
    NotDue,
    /// Never downloaded (nor kept from an earlier run): the verification waits for it.
    First,
    /// Downloaded over twelve hours ago: the list in hand still verifies while a new one is
    /// downloaded in the background.
    Again,
}

/// A merchant's connection to WeChat Pay's APIv3, and the keys it verifies WeChat Pay with.
pub(crate) struct V3Link {
    pub(crate) config: MerchantConfig,
    pub(crate) creds: V3Credentials,
    http: reqwest::Client,
    /// The configured keys plus the downloaded platform certificates.
    verifier: RwLock<Arc<Verifier>>,
    /// Keeps downloaded certificates across restarts.
    keeper: Option<Arc<dyn CertificateKeeper>>,
    /// Set once the kept certificates were read, at the first verification; verifications
    /// that arrive meanwhile wait for it rather than verify with nothing.
    restored: tokio::sync::OnceCell<()>,
    /// Held while the certificates are downloaded.
    downloading: tokio::sync::Mutex<()>,
    /// When the certificates were last downloaded, or kept ones restored (Unix ms; 0: never).
    refreshed_at: AtomicI64,
    /// When a download was last tried, whatever came of it (Unix ms; 0: never): at most one
    /// a minute.
    attempted_at: AtomicI64,
    /// Set while a background refresh of a stale list is under way, so that one is started.
    refreshing: AtomicBool,
    /// This link, for the background refresh to own while it runs.
    me: Weak<V3Link>,
    /// The primary and backup hosts, and which one calls go to.
    hosts: Hosts,
    upstream: UpstreamConfig,
    metrics: Arc<Metrics>,
    clock: Clock,
}

impl V3Link {
    pub(crate) fn new(
        config: MerchantConfig,
        upstream: &UpstreamConfig,
        metrics: Arc<Metrics>,
        clock: Clock,
        keeper: Option<Arc<dyn CertificateKeeper>>,
    ) -> Result<Arc<V3Link>, String> {
        let creds = config
            .v3
            .clone()
            .ok_or_else(|| format!("merchant {}: APIv3 needs its v3 credentials", config.name))?;
        let http = merchant_client(&config, upstream, false)?;
        let now = clock.now().unix_secs();
        for c in &creds.platform_certs {
            let days_left = (c.not_after() - now) / 86_400;
            if days_left < 30 {
                tracing::warn!(merchant = ?config.name, serial = c.serial_no(), days_left, "the configured platform certificate expires soon (or has expired): configure the WeChat Pay public key or a new certificate");
            }
        }
        let verifier = configured(&creds);
        let hosts = Hosts::new(&config);
        Ok(Arc::new_cyclic(|me| V3Link {
            config,
            creds,
            http,
            verifier: RwLock::new(Arc::new(verifier)),
            keeper,
            restored: tokio::sync::OnceCell::new(),
            downloading: tokio::sync::Mutex::new(()),
            refreshed_at: AtomicI64::new(0),
            attempted_at: AtomicI64::new(0),
            refreshing: AtomicBool::new(false),
            me: me.clone(),
            hosts,
            upstream: upstream.clone(),
            metrics,
            clock,
        }))
    }

    fn verifier(&self) -> Arc<Verifier> {
        self.verifier.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Whether the list is missing or old, and no download was tried within the minute.
    /// Configured keys are never downloaded for; an unknown serial is handled apart, in
    /// [`V3Link::verify`].
    fn refresh_due(&self, now: Millis) -> Refresh {
        let configured = self.creds.public_key.is_some() || !self.creds.platform_certs.is_empty();
        let at = self.refreshed_at.load(Ordering::Relaxed);
        let fresh = at != 0 && now.unix_ms() - at <= REFRESH_EVERY.as_millis() as i64;
        if configured || fresh || !self.may_attempt(now) {
            Refresh::NotDue
        } else if at == 0 {
            Refresh::First
        } else {
            Refresh::Again
        }
    }

    /// At most one download a minute, whatever a forger sends and however often WeChat Pay
    /// fails to answer.
    fn may_attempt(&self, now: Millis) -> bool {
        now.unix_ms() - self.attempted_at.load(Ordering::Relaxed) >= REFRESH_AT_MOST_EVERY.as_millis() as i64
    }

    /// Downloads a stale list in the background, once at a time: the list in hand still
    /// verifies (its certificates are trusted until they expire), so no request waits for
    /// WeChat Pay's answer to a routine refresh.
    fn refresh_in_background(&self) {
        if self.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        let Some(me) = self.me.upgrade() else {
            self.refreshing.store(false, Ordering::Release);
            return;
        };
        tokio::spawn(async move {
            {
                let _one = me.downloading.lock().await;
                if me.refresh_due(me.clock.now()) == Refresh::Again {
                    me.download_now().await;
                }
            }
            me.refreshing.store(false, Ordering::Release);
        });
    }

    /// Verifies `body` with `headers` at the gateway's time; downloads the platform
    /// certificates once (at most once a minute) when the serial is unknown.
    pub(crate) async fn verify(&self, headers: &SignatureHeaders<'_>, body: &[u8]) -> Result<(), VerifyError> {
        self.restored.get_or_init(|| self.restore()).await;
        let now = self.clock.now();
        match self.refresh_due(now) {
            Refresh::First => {
                // One download at a time; the others wait for it and then verify with its
                // list, rather than with nothing.
                let _one = self.downloading.lock().await;
                if self.refresh_due(self.clock.now()) == Refresh::First {
                    self.download_now().await;
                }
            }
            Refresh::Again => self.refresh_in_background(),
            Refresh::NotDue => {}
        }
        match self.verifier().verify(headers, body, now.unix_secs()) {
            // A public key id is never on /v3/certificates: downloading would not help.
            Err(VerifyError::UnknownSerial(serial)) if !serial.starts_with("PUB_KEY_ID_") => {
                // At most one download a minute, whatever a forger sends; callers that arrive
                // during one wait for it and verify with the new list.
                let _one = self.downloading.lock().await;
                if self.may_attempt(self.clock.now()) {
                    self.download_now().await;
                }
                self.verifier().verify(headers, body, self.clock.now().unix_secs())
            }
            other => other,
        }
    }

    /// Downloads the certificates now (the caller holds `downloading`), logging a failure:
    /// the list in use stays, and the next attempt may come a minute later.
    async fn download_now(&self) {
        self.attempted_at.store(self.clock.now().unix_ms(), Ordering::Relaxed);
        match self.download_certificates().await {
            Ok(()) => self.refreshed_at.store(self.clock.now().unix_ms(), Ordering::Relaxed),
            Err(e) => {
                tracing::warn!(merchant = ?self.config.name, error = %e, "platform certificates could not be downloaded")
            }
        }
    }

    /// Trusts the certificates kept from an earlier run, as downloaded when they were: a
    /// gateway restarted while WeChat Pay is unreachable verifies with them.
    async fn restore(&self) {
        let Some(keeper) = &self.keeper else {
            return;
        };
        let kept = keeper.load(&self.config.name).await;
        // Only the last download's list: a certificate WeChat Pay stopped listing since (a
        // rotation, a withdrawal) stays in the table, older, and is not trusted again.
        let Some(newest) = kept.iter().map(|k| k.fetched_at).max() else {
            return;
        };
        let key = self.creds.apiv3_key.expose();
        let mut certs = Vec::new();
        for k in kept.iter().filter(|k| k.fetched_at == newest) {
            // Kept with another APIv3 key (another merchant or environment under this name):
            // not what this merchant downloaded.
            if !crate::util::hmac_sha256_hex_matches(key, k.pem.as_bytes(), &k.mac) {
                tracing::warn!(merchant = ?self.config.name, serial = %k.serial_no, "a kept platform certificate is not this merchant's: ignored");
                continue;
            }
            match Certificate::from_pem(&k.pem) {
                Ok(c) => certs.push((c, k.not_after.unix_secs())),
                Err(e) => {
                    tracing::warn!(merchant = ?self.config.name, serial = %k.serial_no, error = %e, "a kept platform certificate does not parse: ignored")
                }
            }
        }
        if certs.is_empty() {
            return;
        }
        let _ = self
            .refreshed_at
            .fetch_max(newest.unix_ms().min(self.clock.now().unix_ms()), Ordering::AcqRel);
        tracing::info!(merchant = ?self.config.name, kept = certs.len(), "platform certificates kept from an earlier run");
        self.trust(&certs);
    }

    /// Verifies from now on with the configured keys and the downloaded certificates, each
    /// until the expiry WeChat Pay listed (which a rotation moves earlier): the verifier checks
    /// every certificate's expiry at each verification. A configured certificate comes first
    /// and keeps its own expiry, even when the list gives the same serial an earlier one.
    fn trust(&self, downloaded: &[(Certificate, i64)]) {
        let mut verifier = configured(&self.creds);
        for (c, expire) in downloaded {
            verifier = verifier.with_certificate_until(c, *expire);
        }
        *self.verifier.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(verifier);
    }

    /// Downloads `/v3/certificates` and trusts those in force besides the configured keys. The
    /// list is authenticated by its encryption: only WeChat Pay and the merchant have the
    /// APIv3 key.
    async fn download_certificates(&self) -> Result<(), String> {
        let req = wxpay_protocol::v3::calls::certificates();
        let (status, _, body) = self
            .send(&req, "certificates", None)
            .await
            .map_err(|e| format!("{e:?}"))?;
        if status != 200 {
            return Err(format!("HTTP {status}: {}", V3Error::read(status, &body)));
        }
        let certs = platform_certificates(&body, self.creds.apiv3_key.expose()).map_err(|e| e.to_string())?;
        // The earlier of the certificate's own expiry and the one listed (moved up during a
        // rotation).
        let listed: Vec<(Certificate, i64)> = certs
            .iter()
            .map(|c| {
                let listed = wxpay_protocol::v3::calls::parse_rfc3339(&c.expire_time).unwrap_or(i64::MAX);
                (c.certificate.clone(), listed.min(c.certificate.not_after()))
            })
            .collect();
        self.trust(&listed);
        if let Some(keeper) = &self.keeper {
            let fetched_at = self.clock.now();
            let key = self.creds.apiv3_key.expose();
            let kept = certs
                .iter()
                .zip(&listed)
                .map(|(c, (_, expire))| KeptCertificate {
                    serial_no: c.serial_no.clone(),
                    pem: c.pem.clone(),
                    mac: crate::util::hmac_sha256_hex(key, c.pem.as_bytes()),
                    not_after: Millis::from_unix_secs(*expire),
                    fetched_at,
                })
                .collect();
            keeper.keep(&self.config.name, kept).await;
        }
        tracing::info!(merchant = ?self.config.name, serials = ?certs.iter().map(|c| c.serial_no.as_str()).collect::<Vec<_>>(), "platform certificates downloaded");
        Ok(())
    }

    /// One signed request, its answer unverified: status, the `Wechatpay-*` headers, body.
    /// With `download`, the answer is a file: it is read chunk by chunk, telling its progress,
    /// and given at least [`LARGE_ANSWER_TIMEOUT`].
    async fn send(
        &self,
        req: &Request,
        api: &'static str,
        download: Option<Received<'_>>,
    ) -> Result<(u16, reqwest::header::HeaderMap, Bytes), (bool, String)> {
        let now = self.clock.now();
        let auth = authorization(
            &self.config.mch_id,
            &self.creds.key,
            req.method,
            &req.url,
            now.unix_secs(),
            &nonce(),
            &req.body,
        )
        .map_err(|e| (false, e.to_string()))?;
        let url = format!("{}{}", self.hosts.current(now), req.url);
        let builder = match req.method {
            "GET" => self.http.get(&url),
            _ => self
                .http
                .post(&url)
                .header("Content-Type", "application/json")
                .body(req.body.clone()),
        };
        let builder = match download {
            // A day's bill of a busy merchant is tens of megabytes (uncompressed).
            Some(_) => builder.timeout(self.upstream.timeout.max(LARGE_ANSWER_TIMEOUT)),
            None => builder,
        };
        let started = Instant::now();
        let sent = builder
            .header("Authorization", auth)
            .header("Accept", "application/json")
            .send()
            .await;
        let result = match sent {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let headers = resp.headers().clone();
                let body = match download {
                    Some(received) => read_observed(resp, received).await,
                    None => resp.bytes().await,
                };
                body.map(|b| (status, headers, b))
                    .map_err(|e| (false, format!("the answer broke off: {e}")))
            }
            Err(e) => Err((e.is_connect(), e.to_string())),
        };
        self.metrics.upstream_latency(api, started.elapsed());
        result
    }

    /// Makes a call; a 2xx answer is verified, a refusal read into [`V3Error`].
    pub(crate) async fn call(&self, req: &Request, api: &'static str) -> Result<Answer, CallError> {
        self.call_with(req, api, None).await
    }

    /// A download: its answer carries no signature (WeChat Pay does not sign files); the
    /// caller checks its digest instead.
    /// It is read chunk by chunk, telling `received(bytes so far, Content-Length)`, and given
    /// at least [`LARGE_ANSWER_TIMEOUT`] whatever the configured timeout.
    pub(crate) async fn download(
        &self,
        req: &Request,
        api: &'static str,
        received: Received<'_>,
    ) -> Result<Answer, CallError> {
        self.call_with(req, api, Some(received)).await
    }

    async fn call_with(
        &self,
        req: &Request,
        api: &'static str,
        download: Option<Received<'_>>,
    ) -> Result<Answer, CallError> {
        let signed = download.is_none();
        let mut last = CallError::NoAnswer("no attempt made".into());
        // Whether an attempt reached WeChat Pay, or may have, without a trustworthy answer:
        // from then on a refusal of a change (a `POST`: an order, a close, a refund) does not
        // prove the change had no effect, since the refusal may come from what that attempt did.
        let mut uncertain = false;
        let changes = req.method != "GET";
        let refused = |error: V3Error, uncertain: bool| {
            // Said here, where the call is known; what it means is decided by
            // `ProviderError::after_lost_attempt`.
            let lost_attempt = uncertain && changes;
            if lost_attempt {
                tracing::warn!(api, refusal = %error, "a refusal after an attempt without an answer");
            }
            CallError::Rejected { error, lost_attempt }
        };
        for attempt in 0..self.upstream.attempts.max(1) {
            if attempt > 0 {
                let pause = self.upstream.retry_backoff * 2u32.saturating_pow(attempt - 1);
                tokio::time::sleep(pause).await;
            }
            let (status, headers, body) = match self.send(req, api, download).await {
                Ok(a) => a,
                Err((before_sending, message)) => {
                    // Connecting failed: nothing was sent, the host may be down.
                    if before_sending {
                        self.hosts.failed(&self.upstream, self.clock.now());
                    }
                    self.metrics
                        .upstream_error(api, if before_sending { "connect" } else { "no_answer" });
                    tracing::warn!(api, attempt, error = ?message, "WeChat Pay call without an answer");
                    uncertain |= !before_sending;
                    last = CallError::NoAnswer(message);
                    continue;
                }
            };
            let sig = signature_headers(&headers);
            let success = (200..300).contains(&status);
            let error = (!success).then(|| V3Error::read(status, &body));
            // A server error that is not WeChat Pay's verified answer (a proxy's page, an
            // unsigned or badly signed body) is the host failing: it counts towards the backup.
            let host_down = || {
                if status >= 500 {
                    self.hosts.failed(&self.upstream, self.clock.now());
                }
            };
            if let Some(e) = error.as_ref().filter(|e| e.code.is_empty()) {
                // Not WeChat Pay's error body (a proxy's page, a wrong base_url): no answer
                // from WeChat Pay at all, whatever the status says.
                host_down();
                self.metrics.upstream_error(api, "http_error");
                tracing::warn!(api, attempt, status, "an answer without WeChat Pay's error body");
                uncertain = true;
                last = CallError::NoAnswer(format!("HTTP {status} without WeChat Pay's error body: {}", e.message));
                continue;
            }
            if signed {
                // A refusal decides as much as a success (a refund failed, an order unknown),
                // so it is trusted only when signed too: an unsigned one is no answer.
                // WeChat Pay signs only answers to requests whose signature it verified: a
                // SIGN_ERROR comes unsigned. It decides nothing (a protocol error settles no
                // order or refund), so it is read, and the operator sees the real cause.
                if sig.signature.is_empty() && status == 401 {
                    if let Some(e) = error {
                        self.hosts.answered();
                        self.metrics.upstream_error(api, &e.code);
                        return Err(refused(e, uncertain));
                    }
                }
                if sig.signature.is_empty() && !success {
                    host_down();
                    self.metrics.upstream_error(api, "unsigned_refusal");
                    uncertain = true;
                    let e = error.as_ref().map(ToString::to_string).unwrap_or_default();
                    last = CallError::NoAnswer(format!("an unsigned refusal is not acted on: {e}"));
                    continue;
                }
                if let Err(e) = self.verify(&sig, &body).await {
                    host_down();
                    self.metrics.upstream_error(api, "bad_answer");
                    tracing::warn!(api, attempt, error = %e, "untrustworthy answer from WeChat Pay");
                    uncertain = true;
                    last = CallError::NoAnswer(format!("untrustworthy answer: {e}"));
                    continue;
                }
            }
            self.hosts.answered();
            let Some(error) = error else {
                return Ok(Answer { body });
            };
            self.metrics.upstream_error(api, &error.code);
            if error.retry() == wxpay_protocol::v2::Retry::SameParameters {
                tracing::warn!(api, attempt, code = ?error.code, status, "WeChat Pay asks to retry");
                uncertain = true;
                last = CallError::NoAnswer(error.to_string());
                continue;
            }
            return Err(refused(error, uncertain));
        }
        Err(last)
    }
}

/// The `Wechatpay-*` headers of an answer or a notification.
pub(crate) fn signature_headers(h: &reqwest::header::HeaderMap) -> SignatureHeaders<'_> {
    let get = |name: &str| h.get(name).and_then(|v| v.to_str().ok()).unwrap_or("");
    SignatureHeaders {
        timestamp: get("wechatpay-timestamp"),
        nonce: get("wechatpay-nonce"),
        signature: get("wechatpay-signature"),
        serial: get("wechatpay-serial"),
    }
}

/// The keys the configuration gives: the WeChat Pay public key and the platform certificates
/// (each trusted until it expires, checked at every verification).
fn configured(creds: &V3Credentials) -> Verifier {
    let mut v = Verifier::new();
    for c in &creds.platform_certs {
        v = v.with_certificate(c);
    }
    if let Some((id, key)) = &creds.public_key {
        v = v.with_public_key(id, key.clone());
    }
    v
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;

    use super::*;
    use crate::config::MerchantConfig;

    fn vector(name: &str) -> String {
        std::fs::read_to_string(format!(
            "{}/../../testdata/vectors/keys/{name}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
    }

    /// A keeper that hands back fixed rows.
    struct Rows(Vec<KeptCertificate>);

    impl CertificateKeeper for Rows {
        fn load<'a>(
            &'a self,
            _: &'a str,
        ) -> Pin<Box<dyn std::future::Future<Output = Vec<KeptCertificate>> + Send + 'a>> {
            Box::pin(async move { self.0.clone() })
        }
        fn keep<'a>(
            &'a self,
            _: &'a str,
            _: Vec<KeptCertificate>,
        ) -> Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>> {
            Box::pin(async {})
        }
    }

    const APIV3: &str = "0123456789abcdefghijABCDEFGHIJ12";

    /// An APIv3 merchant of the test vectors, trusting `platform_certs` by configuration.
    fn config_with(platform_certs: Vec<Certificate>) -> MerchantConfig {
        let key = wxpay_protocol::v3::MerchantKey::from_pem(&vector("merchant_private_key.pem"), "01").unwrap();
        let creds = V3Credentials {
            apiv3_key: wxpay_protocol::ApiV3Key::new(APIV3).unwrap(),
            key: Arc::new(key),
            platform_certs,
            public_key: None,
        };
        MerchantConfig {
            name: "m".into(),
            appid: wxpay_protocol::AppId::new("wxd678efh567hg6787").unwrap(),
            app_secret: None,
            mch_id: wxpay_protocol::MchId::new("1230000109").unwrap(),
            api_key: None,
            sign_type: wxpay_protocol::SignType::Md5,
            base_url: "http://127.0.0.1:1".into(),
            backup_url: None,
            sns_base_url: "http://127.0.0.1:1".into(),
            client_cert: None,
            ca_pem: None,
            v3: Some(creds),
        }
    }

    #[tokio::test]
    async fn a_configured_platform_certificate_stops_verifying_when_it_expires_while_the_gateway_runs() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let platform = Certificate::from_pem(&vector("platform_cert.pem")).unwrap();
        let serial = platform.serial_no().to_owned();
        let signer = wxpay_protocol::v3::MerchantKey::from_pem(&vector("platform_private_key.pem"), &serial).unwrap();
        let clock = Clock::default();
        let link = V3Link::new(
            config_with(vec![platform.clone()]),
            &UpstreamConfig::default(),
            Arc::new(Metrics::default()),
            clock.clone(),
            None,
        )
        .unwrap();
        let body = br#"{"id":"EV-2018022511223320873","event_type":"TRANSACTION.SUCCESS"}"#;
        let verify_now = || {
            let signed =
                wxpay_protocol::v3::SignedHeaders::sign(&signer, &serial, clock.now().unix_secs(), "n0nce", body)
                    .unwrap();
            let headers = SignatureHeaders {
                timestamp: &signed.timestamp,
                nonce: &signed.nonce,
                signature: &signed.signature,
                serial: &signed.serial,
            };
            link.verifier().verify(&headers, body, clock.now().unix_secs())
        };
        assert_eq!(verify_now(), Ok(()), "in force when the gateway started");
        // The gateway runs on past the certificate's expiry, without a restart.
        let left = platform.not_after() - clock.now().unix_secs();
        clock.advance(std::time::Duration::from_secs(u64::try_from(left).unwrap() + 1));
        assert_eq!(
            verify_now(),
            Err(VerifyError::Expired {
                serial: serial.clone(),
                not_after: platform.not_after()
            })
        );
    }

    #[tokio::test]
    async fn a_restart_trusts_only_the_last_list_kept_with_this_merchants_apiv3_key() {
        let apiv3 = APIV3;
        let config = config_with(Vec::new());
        let (platform, other) = (vector("platform_cert.pem"), vector("merchant_cert.pem"));
        let serial = |pem: &str| Certificate::from_pem(pem).unwrap().serial_no().to_owned();
        let row = |pem: &str, mac_key: &str, fetched: i64| KeptCertificate {
            serial_no: serial(pem),
            pem: pem.to_owned(),
            mac: crate::util::hmac_sha256_hex(mac_key.as_bytes(), pem.as_bytes()),
            not_after: Millis::from_unix_secs(i64::MAX / 2000),
            fetched_at: Millis::from_unix_ms(fetched),
        };
        let _ = rustls::crypto::ring::default_provider().install_default();
        let clock = Clock::default();
        let now = clock.now().unix_ms();
        let link_with = |rows: Vec<KeptCertificate>| {
            V3Link::new(
                config.clone(),
                &UpstreamConfig::default(),
                Arc::new(Metrics::default()),
                clock.clone(),
                Some(Arc::new(Rows(rows))),
            )
            .unwrap()
        };
        // A certificate listed by an earlier download only, then the last list.
        let link = link_with(vec![
            row(&other, apiv3, now - 60_000),
            row(&platform, apiv3, now - 1_000),
        ]);
        link.restore().await;
        let ids: Vec<String> = link.verifier().ids().map(str::to_owned).collect();
        assert_eq!(ids, [serial(&platform)], "only the last list");
        // Kept under this name with another APIv3 key: not this merchant's download.
        let link = link_with(vec![row(&platform, "another-apiv3-key-0123456789abcd", now - 1_000)]);
        link.restore().await;
        assert_eq!(link.verifier().ids().count(), 0);
    }
}
