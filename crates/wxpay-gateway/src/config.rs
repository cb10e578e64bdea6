//! The gateway's configuration, as typed values. The CLI builds it from the TOML file and
//! `WXPAY_…` variables; tests build it directly.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use argon2::{Argon2, PasswordHash, PasswordHasher};
use wxpay_protocol::v3::{Certificate, MerchantKey, PublicKey};
use wxpay_protocol::{ApiKey, ApiV3Key, AppId, AppSecret, MchId, Merchant, SignType};

/// A secret compared in constant time and never shown (API tokens, the webhook secret).
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    /// The secret itself. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether `presented` is this secret, compared in constant time.
    pub fn matches(&self, presented: &str) -> bool {
        subtle::ConstantTimeEq::ct_eq(self.0.as_bytes(), presented.as_bytes()).into()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// One merchant and mini program the gateway serves.
#[derive(Clone, Debug)]
pub struct MerchantConfig {
    /// Its name in the API (`merchant` in requests) and in the database.
    pub name: String,
    /// The mini program's AppID.
    pub appid: AppId,
    /// The AppSecret, for `jscode2session` (`POST /v1/openid`).
    pub app_secret: Option<AppSecret>,
    /// The merchant number.
    pub mch_id: MchId,
    /// The APIv2 key: required for an APIv2 merchant; for an APIv3 one it lets the gateway
    /// also read the APIv2 notifications WeChat Pay still sends for refunds made by hand.
    pub api_key: Option<ApiKey>,
    /// The algorithm of every request, answer and notification of this merchant.
    pub sign_type: SignType,
    /// WeChat Pay (`https://api.mch.weixin.qq.com`) or the simulator.
    pub base_url: String,
    /// Used after repeated connection failures of `base_url` (`https://api2.mch.weixin.qq.com`).
    pub backup_url: Option<String>,
    /// The WeChat API host for `jscode2session` (`https://api.weixin.qq.com`).
    pub sns_base_url: String,
    /// The merchant API certificate that `/secapi/pay/refund` requires (mutual TLS).
    pub client_cert: Option<ClientCert>,
    /// Extra certificate authorities (PEM) trusted for `base_url`, besides the system's: the
    /// simulator's test CA, or a corporate proxy's.
    pub ca_pem: Option<Vec<u8>>,
    /// APIv3 credentials: with them the merchant is served on APIv3 (`api_version = "v3"`).
    pub v3: Option<V3Credentials>,
}

/// What a merchant on APIv3 signs and verifies with.
#[derive(Clone)]
pub struct V3Credentials {
    /// The APIv3 key: notification resources and downloaded platform certificates.
    pub apiv3_key: ApiV3Key,
    /// The merchant API private key, with its certificate's serial (`serial_no`).
    pub key: Arc<MerchantKey>,
    /// Platform certificates configured (`platform_cert_path`). When none is configured and
    /// no public key either, they are downloaded from `/v3/certificates`.
    pub platform_certs: Vec<Certificate>,
    /// The WeChat Pay public key and its id (`PUB_KEY_ID_…`).
    pub public_key: Option<(String, PublicKey)>,
}

impl fmt::Debug for V3Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("V3Credentials")
            .field("serial_no", &self.key.serial_no())
            .field(
                "platform_certs",
                &self
                    .platform_certs
                    .iter()
                    .map(Certificate::serial_no)
                    .collect::<Vec<_>>(),
            )
            .field("public_key_id", &self.public_key.as_ref().map(|(id, _)| id))
            .finish_non_exhaustive()
    }
}

/// A merchant API certificate with its private key, loaded from the `apiclient_cert.pem` +
/// `apiclient_key.pem` pair or the `apiclient_cert.p12` that WeChat Pay issues. Its `Debug`
/// shows nothing of it.
#[derive(Clone)]
pub struct ClientCert {
    identity: reqwest::Identity,
}

impl fmt::Debug for ClientCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientCert(<redacted>)")
    }
}

fn pem_block(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

impl ClientCert {
    /// The certificate (chain) and the private key, both PEM.
    ///
    /// # Errors
    /// When either holds no PEM block of its kind.
    pub fn from_pem(cert: &[u8], key: &[u8]) -> Result<ClientCert, String> {
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        let cert = text(cert);
        let key = text(key);
        if !cert.contains("-----BEGIN CERTIFICATE-----") {
            return Err("the certificate file holds no PEM certificate".into());
        }
        if !key.contains("PRIVATE KEY-----") {
            return Err("the key file holds no PEM private key".into());
        }
        let identity = reqwest::Identity::from_pem(format!("{key}\n{cert}").as_bytes())
            .map_err(|e| format!("the certificate and key do not load: {e}"))?;
        Ok(ClientCert { identity })
    }

    /// A PKCS#12 file (`apiclient_cert.p12`); WeChat Pay sets its password to the merchant
    /// number.
    ///
    /// # Errors
    /// A wrong password, a damaged file, or one without a private key and its certificate.
    pub fn from_pkcs12(der: &[u8], password: &str) -> Result<ClientCert, String> {
        let store = p12_keystore::KeyStore::from_pkcs12(der, password, p12_keystore::Pkcs12ImportPolicy::Relaxed)
            .map_err(|e| format!("the PKCS#12 file cannot be opened (wrong password or damaged file): {e}"))?;
        let (_, chain) = store
            .private_key_chain()
            .ok_or("the PKCS#12 file holds no private key with its certificate")?;
        if chain.certs().is_empty() {
            return Err("the PKCS#12 file holds a private key without its certificate".into());
        }
        let mut pem = pem_block("PRIVATE KEY", chain.key().as_der());
        for c in chain.certs() {
            pem.push_str(&pem_block("CERTIFICATE", c.as_der()));
        }
        let identity =
            reqwest::Identity::from_pem(pem.as_bytes()).map_err(|e| format!("the PKCS#12 key does not load: {e}"))?;
        Ok(ClientCert { identity })
    }

    /// The identity for the HTTP client.
    pub(crate) fn identity(&self) -> reqwest::Identity {
        self.identity.clone()
    }
}

impl MerchantConfig {
    /// The protocol crate's view of the credentials.
    pub fn credentials(&self) -> Option<Merchant> {
        Some(Merchant {
            appid: self.appid.clone(),
            mch_id: self.mch_id.clone(),
            key: self.api_key.clone()?,
            sign_type: self.sign_type,
        })
    }
}

/// Where events go.
#[derive(Clone, Debug)]
pub struct WebhookConfig {
    /// The business backend's endpoint.
    pub url: String,
    /// The HMAC-SHA256 secret of `Wxpay-Signature`.
    pub secret: Secret,
    /// Allow a plain `http://` URL on another host: events (and their signatures) then cross
    /// the network unencrypted. Loopback is always allowed.
    pub allow_http: bool,
}

/// How WeChat Pay is called.
#[derive(Clone, Debug)]
pub struct UpstreamConfig {
    /// The whole call.
    pub timeout: Duration,
    /// Connecting.
    pub connect_timeout: Duration,
    /// Attempts of one call when it is safe to repeat it (`SYSTEMERROR`, no answer).
    pub attempts: u32,
    /// First pause between attempts; doubled each time.
    pub retry_backoff: Duration,
    /// Connection failures of the primary host in a row before the backup host is used.
    pub backup_after_failures: u32,
    /// How long the backup host is used before the primary is tried again.
    pub backup_for: Duration,
    /// Orders of one merchant that WeChat Pay failed in a row (no answer, or `SYSTEMERROR`
    /// after every attempt) before new orders are refused at once (0: never).
    pub breaker_after_failures: u32,
    /// How long new orders are refused before one is let through as a probe.
    pub breaker_open_for: Duration,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            timeout: Duration::from_secs(8),
            connect_timeout: Duration::from_secs(6),
            attempts: 3,
            retry_backoff: Duration::from_millis(200),
            backup_after_failures: 3,
            backup_for: Duration::from_secs(180),
            breaker_after_failures: 5,
            breaker_open_for: Duration::from_secs(30),
        }
    }
}

/// Background work.
#[derive(Clone, Debug)]
pub struct JobsConfig {
    /// Whether this instance runs background work at all.
    pub enabled: bool,
    /// How long after creation an order without notification is first queried.
    pub first_check_after: Duration,
    /// The longest pause between two queries of one order (they back off up to it).
    pub max_check_interval: Duration,
    /// How often due work is looked for.
    pub poll_every: Duration,
    /// Orders claimed per round.
    pub batch: u32,
    /// First pause before an event is delivered again; doubled each time.
    pub outbox_backoff: Duration,
    /// The longest pause between two deliveries of an event.
    pub outbox_max_backoff: Duration,
    /// How long a claim lasts before another instance may take the work over.
    pub lease: Duration,
}

impl Default for JobsConfig {
    fn default() -> Self {
        JobsConfig {
            enabled: true,
            first_check_after: Duration::from_secs(60),
            max_check_interval: Duration::from_secs(600),
            poll_every: Duration::from_secs(1),
            batch: 100,
            outbox_backoff: Duration::from_secs(1),
            outbox_max_backoff: Duration::from_secs(600),
            lease: Duration::from_secs(60),
        }
    }
}

/// The gateway's configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// The gateway's public address: notifications go to `<public_url>/notify/v2/pay`.
    pub public_url: String,
    /// Bearer tokens of the business backend.
    pub api_tokens: Vec<Secret>,
    /// The merchants; the first is the default.
    pub merchants: Vec<MerchantConfig>,
    /// Where events go (none: they stay in the outbox).
    pub webhook: Option<WebhookConfig>,
    /// How WeChat Pay is called.
    pub upstream: UpstreamConfig,
    /// Background work.
    pub jobs: JobsConfig,
    /// How long an order can be paid when the request does not say.
    pub default_order_ttl: Duration,
    /// The daily reconciliation.
    pub reconcile: ReconcileConfig,
    /// What clients may take of the server: header, body and idle timeouts, connections.
    pub limits: wxpay_http::Limits,
    /// When set, `/metrics` needs `Authorization: Bearer <this>`.
    pub metrics_token: Option<Secret>,
    /// The operator console at `/console`; `None`: no console (its paths answer 404).
    pub console: Option<ConsoleConfig>,
}

/// The operator console.
#[derive(Clone, Debug)]
pub struct ConsoleConfig {
    /// The Argon2 hash (PHC string, `$argon2id$…`) of the console password, as
    /// `wxpay console hash-password` makes it.
    pub password_hash: Secret,
    /// How long a sign-in lasts.
    pub session_ttl: Duration,
    /// The WeChat Pay simulator answers on the gateway's own address (`wxpay demo`): an
    /// unpaid order's page links to its checkout, to pay it or fail it.
    pub simulator_checkout: bool,
}

impl ConsoleConfig {
    /// The Argon2id hash (PHC string) of `password` with `salt`, as `[console] password_hash`
    /// holds it: Argon2's default cost (19 MiB, two passes), which takes tens of milliseconds.
    ///
    /// # Errors
    /// A message when the salt is shorter than 8 bytes.
    pub fn hash_password(password: &str, salt: &[u8]) -> Result<String, String> {
        Argon2::default()
            .hash_password_with_salt(password.as_bytes(), salt)
            .map(|h| h.to_string())
            .map_err(|e| format!("cannot hash the password: {e}"))
    }
}

/// Checks that `hash` is an Argon2id hash whose cost a sign-in can afford.
///
/// # Errors
/// What is wrong with it, for the configuration's error message.
pub(crate) fn check_password_hash(hash: &str) -> Result<(), String> {
    let parsed = PasswordHash::new(hash)
        .map_err(|e| format!("not an Argon2 hash made by `wxpay console hash-password` ({e})"))?;
    if parsed.algorithm.as_str() != "argon2id" {
        return Err(format!("{} is not argon2id", parsed.algorithm.as_str()));
    }
    // The cost comes from the hash: a memory cost above 256 MiB, or more than 16 passes or
    // lanes, would let each sign-in attempt take that much memory or time.
    let memory_kib = parsed.params.get_decimal("m").unwrap_or(0);
    if memory_kib > 256 * 1024 {
        return Err(format!("its memory cost m={memory_kib} KiB is above 262144"));
    }
    for param in ["t", "p"] {
        let v = parsed.params.get_decimal(param).unwrap_or(0);
        if v > 16 {
            return Err(format!("its cost {param}={v} is above 16"));
        }
    }
    Ok(())
}

/// The daily reconciliation of `wxpay serve`.
#[derive(Clone, Debug)]
pub struct ReconcileConfig {
    /// When to reconcile the previous day, in minutes after midnight, Beijing time; `None`:
    /// never (the `wxpay reconcile` command still works).
    pub daily_at_minute: Option<u32>,
    /// Settle differences through `orderquery`/`refundquery`.
    pub repair: bool,
}

impl Default for ReconcileConfig {
    fn default() -> Self {
        ReconcileConfig {
            daily_at_minute: None,
            repair: true,
        }
    }
}

/// Whether a URL points at this machine (where plain http is acceptable): its host, as an
/// HTTP client reads it, is `localhost` or a loopback address. Other names ending in
/// `.localhost` are not trusted to resolve to this machine.
pub fn is_local_url(url: &str) -> bool {
    let Ok(parsed) = reqwest::Url::parse(url) else {
        return false;
    };
    let Some(host) = parsed.host_str() else {
        return false;
    };
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || bare.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Whether WeChat Pay or the gateway may be reached at `url`: https, or plain http on this
/// machine.
fn secure_or_local(url: &str) -> bool {
    url.starts_with("https://") || (url.starts_with("http://") && is_local_url(url))
}

impl Config {
    /// Checks what the types cannot: at least one merchant and token, unique merchant names,
    /// one key per merchant number, https outside this machine.
    ///
    /// # Errors
    /// A message naming the key at fault.
    pub fn validate(&self) -> Result<(), String> {
        if self.merchants.is_empty() {
            return Err("merchants: at least one [[merchants]] entry is needed".into());
        }
        if self.api_tokens.is_empty() {
            return Err("server.api_tokens: at least one token is needed for the business backend".into());
        }
        for (i, t) in self.api_tokens.iter().enumerate() {
            if t.expose().len() < 16 {
                return Err(format!(
                    "server.api_tokens[{i}]: a token must have at least 16 characters (a random one: `openssl rand -hex 24`)"
                ));
            }
        }
        if !secure_or_local(&self.public_url) {
            return Err(format!(
                "server.public_url: {:?} must be https (WeChat Pay posts notifications to it); plain http is accepted only for localhost",
                self.public_url
            ));
        }
        if self.public_url.contains('?') || self.public_url.contains('#') {
            return Err(
                "server.public_url: no query string or fragment (WeChat Pay refuses notify URLs with parameters)"
                    .into(),
            );
        }
        for (i, m) in self.merchants.iter().enumerate() {
            if self.merchants[..i].iter().any(|o| o.name == m.name) {
                return Err(format!("merchants[{i}].name: {:?} is used twice", m.name));
            }
            let url_safe = |n: &str| {
                (1..=64).contains(&n.len()) && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            };
            if m.v3.is_some() && !url_safe(&m.name) {
                return Err(format!(
                    "merchants[{i}].name: {:?} is in the APIv3 notify URL (<public_url>/notify/v3/<name>): 1 to 64 ASCII letters, digits, - or _",
                    m.name
                ));
            }
            if m.v3.is_none() && m.api_key.is_none() {
                return Err(format!("merchants[{i}].api_key: an APIv2 merchant needs its API key"));
            }
            if self.merchants[..i]
                .iter()
                .any(|o| o.mch_id == m.mch_id && o.api_key.is_some() && m.api_key.is_some() && o.api_key != m.api_key)
            {
                return Err(format!(
                    "merchants[{i}].api_key: merchant {} has another API key in an earlier entry",
                    m.mch_id
                ));
            }
            if self.merchants[..i]
                .iter()
                .any(|o| o.mch_id == m.mch_id && o.appid == m.appid)
            {
                return Err(format!(
                    "merchants[{i}]: mch_id {} with appid {} is listed twice",
                    m.mch_id, m.appid
                ));
            }
            for (key, url) in [
                ("base_url", Some(&m.base_url)),
                ("backup_url", m.backup_url.as_ref()),
                ("sns_base_url", Some(&m.sns_base_url)),
            ] {
                if let Some(url) = url {
                    if !secure_or_local(url) {
                        return Err(format!(
                            "merchants[{i}].{key}: {url:?} must be https (http only for localhost)"
                        ));
                    }
                }
            }
        }
        if self.metrics_token.as_ref().is_some_and(|t| t.expose().len() < 16) {
            return Err("server.metrics_token: at least 16 characters (a random one: `openssl rand -hex 24`)".into());
        }
        if let Some(c) = &self.console {
            check_password_hash(c.password_hash.expose()).map_err(|e| format!("console.password_hash: {e}"))?;
            if c.session_ttl < Duration::from_secs(60) {
                return Err("console.session_hours: a sign-in must last at least a minute".into());
            }
        }
        if let Some(w) = &self.webhook {
            if !(w.url.starts_with("https://") || w.url.starts_with("http://")) {
                return Err(format!("webhook.url: {:?} is not an http(s) URL", w.url));
            }
            if !w.allow_http && !secure_or_local(&w.url) {
                return Err(format!(
                    "webhook.url: {:?} must be https (events carry order data; http only for localhost, or set webhook.allow_http = true)",
                    w.url
                ));
            }
            if w.secret.expose().len() < 16 {
                return Err("webhook.secret: at least 16 characters (a random one: `openssl rand -hex 24`)".into());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_console_hash_that_is_not_argon2id_or_costs_too_much_is_refused() {
        let good = ConsoleConfig::hash_password("correct horse", b"0123456789abcdef").unwrap();
        check_password_hash(&good).unwrap();
        assert!(check_password_hash("secret").is_err());
        let argon2i = "$argon2i$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo";
        assert!(check_password_hash(argon2i).unwrap_err().contains("not argon2id"));
        let greedy = "$argon2id$v=19$m=4194304,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo";
        assert!(check_password_hash(greedy).unwrap_err().contains("memory cost"));
        let mut config = config_with_webhook("https://hooks.example.com/wxpay", false);
        config.console = Some(ConsoleConfig {
            password_hash: Secret::new("plain text"),
            session_ttl: Duration::from_secs(3600),
            simulator_checkout: false,
        });
        assert!(config.validate().unwrap_err().starts_with("console.password_hash: "));
    }

    fn config_with_webhook(url: &str, allow_http: bool) -> Config {
        Config {
            public_url: "https://pay.example.com".into(),
            api_tokens: vec![Secret::new("token-0123456789abcdef")],
            merchants: vec![MerchantConfig {
                name: "default".into(),
                appid: AppId::new("wxd678efh567hg6787").unwrap(),
                app_secret: None,
                mch_id: MchId::new("1230000109").unwrap(),
                api_key: Some(ApiKey::new("wxpaySimulatorTestKey0000000000A").unwrap()),
                sign_type: SignType::Md5,
                base_url: "https://api.mch.weixin.qq.com".into(),
                backup_url: None,
                sns_base_url: "https://api.weixin.qq.com".into(),
                client_cert: None,
                ca_pem: None,
                v3: None,
            }],
            webhook: Some(WebhookConfig {
                url: url.into(),
                secret: Secret::new("whsec-0123456789abcdef"),
                allow_http,
            }),
            upstream: UpstreamConfig::default(),
            jobs: JobsConfig::default(),
            default_order_ttl: Duration::from_secs(7200),
            reconcile: ReconcileConfig::default(),
            limits: wxpay_http::Limits::default(),
            metrics_token: None,
            console: None,
        }
    }

    #[test]
    fn a_plain_http_webhook_is_refused_outside_this_machine_unless_allowed() {
        let err = config_with_webhook("http://backend.example.com/events", false)
            .validate()
            .unwrap_err();
        assert!(err.contains("webhook.url") && err.contains("allow_http"), "{err}");
        for (url, allow) in [
            ("https://backend.example.com/events", false),
            ("http://127.0.0.1:9000/events", false),
            ("http://localhost/events", false),
            ("http://backend.internal/events", true),
        ] {
            assert_eq!(config_with_webhook(url, allow).validate(), Ok(()), "{url}");
        }
    }

    #[test]
    fn a_short_token_or_secret_is_refused_with_a_way_to_make_a_good_one() {
        // product.md's sample token, "change-me", is a placeholder to be replaced.
        let mut config = config_with_webhook("https://hooks.example.com/wxpay", false);
        config.api_tokens = vec![Secret::new("change-me")];
        let err = config.validate().unwrap_err();
        assert!(
            err.starts_with("server.api_tokens[0]: ") && err.contains("openssl rand -hex 24"),
            "{err}"
        );
        let mut config = config_with_webhook("https://hooks.example.com/wxpay", false);
        config.webhook.as_mut().unwrap().secret = Secret::new("short");
        let err = config.validate().unwrap_err();
        assert!(
            err.starts_with("webhook.secret: ") && err.contains("openssl rand"),
            "{err}"
        );
        let mut config = config_with_webhook("https://hooks.example.com/wxpay", false);
        config.metrics_token = Some(Secret::new("short"));
        let err = config.validate().unwrap_err();
        assert!(
            err.starts_with("server.metrics_token: ") && err.contains("openssl rand"),
            "{err}"
        );
    }

    #[test]
    fn local_urls_are_recognised() {
        for u in [
            "http://127.0.0.1:8080",
            "http://localhost/x",
            "http://[::1]:9/",
            "http://127.8.9.10",
        ] {
            assert!(is_local_url(u), "{u}");
        }
        for u in [
            "http://pay.example.com",
            "http://10.0.0.1",
            "http://127.0.0.1.evil.com",
            // Tricks a hand-made splitter took for localhost while the client went elsewhere.
            "http://evil.com\\.localhost/",
            "http://evil.com#.localhost",
            "http://evil.com?.localhost",
            "http://localhost@evil.com/",
            "http://app.localhost",
            "not a url",
        ] {
            assert!(!is_local_url(u), "{u}");
        }
    }
}
