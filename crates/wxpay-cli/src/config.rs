//! The TOML configuration file shared by `serve`, `migrate`, `reconcile` and `simulator`,
//! with `WXPAY_…` environment overrides, parsed here and only here, with messages that name
//! the key at fault.
//!
//! Overrides: `WXPAY_<SECTION>_<KEY>` sets `[section] key` (`WXPAY_SERVER_PUBLIC_URL`,
//! `WXPAY_DATABASE_URL`, `WXPAY_WEBHOOK_SECRET`, …); `WXPAY_MERCHANTS_<N>_<KEY>` sets a key of
//! the N-th `[[merchants]]` entry, counting from 0 (`WXPAY_MERCHANTS_0_API_KEY`). Lists take
//! comma-separated values (`WXPAY_SERVER_API_TOKENS=a,b`).

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use wxpay_gateway::{
    ClientCert, Config, ConsoleConfig, JobsConfig, Limits, MerchantConfig, ReconcileConfig, Secret, UpstreamConfig,
    V3Credentials, WebhookConfig,
};
use wxpay_protocol::v3::{Certificate, MerchantKey, PublicKey};
use wxpay_protocol::{ApiKey, ApiV3Key, AppId, AppSecret, MchId, SignType};
use wxpay_simulator::{SimMerchant, SimV3Merchant};

use crate::CliError;

/// The file, as written. Every section is parsed, so that a misspelt key is refused even by
/// a command that does not use it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileConfig {
    #[serde(default)]
    pub merchants: Vec<MerchantFile>,
    pub simulator: Option<SimulatorFile>,
    pub server: Option<ServerFile>,
    pub database: Option<DatabaseFile>,
    pub webhook: Option<WebhookFile>,
    pub jobs: Option<JobsFile>,
    pub reconcile: Option<ReconcileFile>,
    pub console: Option<ConsoleFile>,
}

/// `[console]`: the operator console at `/console`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConsoleFile {
    /// The Argon2id hash of the console password (`wxpay console hash-password`); without
    /// it the console is off.
    pub password_hash: Option<String>,
    /// How long a sign-in lasts, in hours (default 12).
    #[serde(default, deserialize_with = "lenient")]
    pub session_hours: Option<u64>,
}

/// `[reconcile]`: the daily reconciliation of `wxpay serve`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReconcileFile {
    /// Run it every day (default false).
    #[serde(default, deserialize_with = "lenient")]
    pub daily: Option<bool>,
    /// When, Beijing time, `HH:MM` (default `10:30`: WeChat Pay makes the bill from 09:00 and
    /// advises fetching it after 10:00).
    pub at: Option<String>,
    /// Settle differences through `orderquery`/`refundquery` (default true).
    #[serde(default, deserialize_with = "lenient")]
    pub repair: Option<bool>,
}

/// `[server]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ServerFile {
    pub listen: Option<String>,
    pub public_url: Option<String>,
    #[serde(default)]
    pub api_tokens: Vec<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub default_order_ttl_secs: Option<u64>,
    /// From a request's first byte to the end of its header (default 10).
    #[serde(default, deserialize_with = "lenient")]
    pub header_read_timeout_secs: Option<u64>,
    /// From the end of a request's header to the end of its body (default 30).
    #[serde(default, deserialize_with = "lenient")]
    pub body_read_timeout_secs: Option<u64>,
    /// A connection without a request in progress and without traffic is closed after this
    /// (default 60).
    #[serde(default, deserialize_with = "lenient")]
    pub idle_timeout_secs: Option<u64>,
    /// Connections served at once (default 10,000).
    #[serde(default, deserialize_with = "lenient")]
    pub max_connections: Option<usize>,
    /// When set, `/metrics` needs `Authorization: Bearer <this>`.
    pub metrics_token: Option<String>,
}

/// `[database]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DatabaseFile {
    pub url: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub pool_size: Option<u32>,
}

/// `[webhook]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct WebhookFile {
    pub url: Option<String>,
    pub secret: Option<String>,
    /// Allow a plain `http://` URL outside this machine (default false).
    #[serde(default, deserialize_with = "lenient")]
    pub allow_http: Option<bool>,
}

/// `[jobs]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct JobsFile {
    #[serde(default, deserialize_with = "lenient")]
    pub enabled: Option<bool>,
    #[serde(default, deserialize_with = "lenient")]
    pub first_check_after_secs: Option<u64>,
    #[serde(default, deserialize_with = "lenient")]
    pub max_check_interval_secs: Option<u64>,
    #[serde(default, deserialize_with = "lenient")]
    pub poll_every_ms: Option<u64>,
}

/// One `[[merchants]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MerchantFile {
    pub name: Option<String>,
    pub appid: String,
    pub app_secret: Option<String>,
    pub mch_id: String,
    pub api_version: Option<String>,
    pub api_key: Option<String>,
    pub sign_type: Option<String>,
    pub base_url: Option<String>,
    pub backup_url: Option<String>,
    pub sns_base_url: Option<String>,
    pub cert_path: Option<String>,
    pub key_path: Option<String>,
    /// The password of a `.p12` `cert_path` (WeChat Pay sets it to the merchant number).
    pub cert_password: Option<String>,
    /// Extra CA certificates (PEM) to trust for `base_url` (the simulator's `ca.pem`).
    pub ca_path: Option<String>,
    // APIv3 (api_version = "v3"; the simulator serves any entry that has the first two).
    pub apiv3_key: Option<String>,
    pub serial_no: Option<String>,
    pub platform_cert_path: Option<String>,
    pub wechatpay_public_key_path: Option<String>,
    pub wechatpay_public_key_id: Option<String>,
}

/// The optional `[simulator]` section.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SimulatorFile {
    #[serde(default, deserialize_with = "lenient")]
    pub auto_pay_delay_ms: Option<u64>,
    #[serde(default, deserialize_with = "lenient")]
    pub refund_delay_ms: Option<u64>,
    #[serde(default, deserialize_with = "lenient")]
    pub max_orders: Option<usize>,
    #[serde(default, deserialize_with = "lenient")]
    pub notification_log: Option<usize>,
    #[serde(default, deserialize_with = "lenient")]
    pub notify_concurrency: Option<usize>,
    #[serde(default, deserialize_with = "lenient")]
    pub notify_timeout_ms: Option<u64>,
    #[serde(default, deserialize_with = "lenient")]
    pub bills_immediately: Option<bool>,
    pub openids: Option<Vec<String>>,
    #[serde(default, deserialize_with = "lenient")]
    pub refund_interval_ms: Option<u64>,
}

/// Reads and parses a configuration file, applying `WXPAY_…` overrides from the process
/// environment.
pub(crate) fn load(path: &Path) -> Result<FileConfig, CliError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::Usage(format!("cannot read the configuration {}: {e}", path.display())))?;
    let env: Vec<(String, String)> = std::env::vars().filter(|(k, _)| k.starts_with("WXPAY_")).collect();
    parse_with_env(&text, &env).map_err(|e| CliError::Usage(format!("{}: {e}", path.display())))
}

#[cfg(test)]
pub(crate) fn parse(text: &str) -> Result<FileConfig, String> {
    parse_with_env(text, &[])
}

const SECTIONS: &[&str] = &[
    "server",
    "database",
    "webhook",
    "jobs",
    "simulator",
    "reconcile",
    "console",
];

/// Parses the file after applying overrides. An override is typed like the value it replaces;
/// one the file leaves out is text, which the numbers and booleans of the file also accept
/// ([`lenient`]), so that an all-digit secret or merchant number stays text.
pub(crate) fn parse_with_env(text: &str, env: &[(String, String)]) -> Result<FileConfig, String> {
    let table: toml::Table = toml::from_str(text).map_err(|e| e.to_string())?;
    FileConfig::deserialize(toml::Value::Table(overridden(table, env)?)).map_err(|e| e.to_string())
}

/// A number or a boolean of the file, given as such or as text (an environment override of a
/// key the file leaves out is text: `WXPAY_DATABASE_POOL_SIZE=8`).
fn lenient<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de> + std::str::FromStr,
    T::Err: std::fmt::Display,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Given<T> {
        Value(T),
        Text(String),
    }
    match Option::<Given<T>>::deserialize(d)? {
        None => Ok(None),
        Some(Given::Value(v)) => Ok(Some(v)),
        Some(Given::Text(t)) => t
            .trim()
            .parse()
            .map(Some)
            .map_err(|e| serde::de::Error::custom(format!("{t:?}: {e}"))),
    }
}

/// The file's table with the `WXPAY_…` overrides in `env` applied.
fn overridden(mut table: toml::Table, env: &[(String, String)]) -> Result<toml::Table, String> {
    for (name, value) in env {
        let rest = name["WXPAY_".len()..].to_ascii_lowercase();
        if let Some(m) = rest.strip_prefix("merchants_") {
            let Some((index, key)) = m.split_once('_') else {
                continue;
            };
            let Ok(index) = index.parse::<usize>() else {
                return Err(format!(
                    "{name}: the merchant index must be a number (WXPAY_MERCHANTS_0_API_KEY)"
                ));
            };
            let list = table
                .entry("merchants")
                .or_insert_with(|| toml::Value::Array(Vec::new()));
            let Some(list) = list.as_array_mut() else {
                return Err("merchants: must be a list of [[merchants]] entries".into());
            };
            let Some(entry) = list.get_mut(index).and_then(toml::Value::as_table_mut) else {
                return Err(format!("{name}: there is no [[merchants]] entry {index} to override"));
            };
            entry.insert(key.to_owned(), typed(entry.get(key), value));
            continue;
        }
        let Some(section) = SECTIONS.iter().find(|s| rest.starts_with(&format!("{s}_"))) else {
            // WXPAY_API_KEY, WXPAY_LOG and the like belong to other commands.
            continue;
        };
        let key = &rest[section.len() + 1..];
        let entry = table
            .entry(section.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        let Some(t) = entry.as_table_mut() else {
            return Err(format!("{section}: must be a table"));
        };
        let v = if key == "api_tokens" {
            toml::Value::Array(
                value
                    .split(',')
                    .map(|s| toml::Value::String(s.trim().to_owned()))
                    .filter(|v| v.as_str() != Some(""))
                    .collect(),
            )
        } else {
            typed(t.get(key), value)
        };
        t.insert(key.to_owned(), v);
    }
    Ok(table)
}

/// An override's value, typed like the value it replaces (integers and booleans stay so);
/// text otherwise, which [`lenient`] fields read as numbers and booleans.
fn typed(existing: Option<&toml::Value>, value: &str) -> toml::Value {
    let text = || toml::Value::String(value.to_owned());
    match existing {
        Some(toml::Value::Integer(_)) => value.parse().map_or_else(|_| text(), toml::Value::Integer),
        Some(toml::Value::Boolean(_)) => value.parse().map_or_else(|_| text(), toml::Value::Boolean),
        _ => text(),
    }
}

/// The merchants of a file as the simulator needs them.
pub(crate) fn sim_merchants(file: &FileConfig) -> Result<Vec<SimMerchant>, String> {
    if file.merchants.is_empty() {
        return Err("no [[merchants]] entry".into());
    }
    file.merchants
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let at = |key: &str| format!("merchants[{i}].{key}");
            let appid = AppId::new(m.appid.as_str()).map_err(|e| format!("{}: {e}", at("appid")))?;
            let mch_id = MchId::new(m.mch_id.as_str()).map_err(|e| format!("{}: {e}", at("mch_id")))?;
            let api_key = m
                .api_key
                .as_deref()
                .map(|k| ApiKey::new(k).map_err(|e| format!("{}: {e}", at("api_key"))))
                .transpose()?;
            let v3 = sim_v3(m, &at)?;
            if api_key.is_none() && v3.is_none() {
                return Err(format!(
                    "{} is missing: the simulator checks APIv2 signatures with it (or give apiv3_key, serial_no and cert_path to serve the merchant on APIv3)",
                    at("api_key")
                ));
            }
            let secret = m.app_secret.as_deref().ok_or_else(|| {
                format!(
                    "{} is missing: the simulator checks it in jscode2session",
                    at("app_secret")
                )
            })?;
            let app_secret = AppSecret::new(secret).map_err(|e| format!("{}: {e}", at("app_secret")))?;
            Ok(SimMerchant {
                appid,
                app_secret,
                mch_id,
                api_key,
                v3,
            })
        })
        .collect()
}

/// A merchant's APIv3 credentials as the simulator needs them: the APIv3 key, and the
/// merchant certificate whose key checks `Authorization` (its serial must be `serial_no`).
/// `None` when the entry has none of them.
fn sim_v3(m: &MerchantFile, at: &dyn Fn(&str) -> String) -> Result<Option<SimV3Merchant>, String> {
    let Some(key) = m.apiv3_key.as_deref() else {
        if m.serial_no.is_some() {
            return Err(format!(
                "{} is missing: serial_no is given, so APIv3 is meant",
                at("apiv3_key")
            ));
        }
        return Ok(None);
    };
    let apiv3_key = ApiV3Key::new(key).map_err(|e| format!("{}: {e}", at("apiv3_key")))?;
    let serial = m
        .serial_no
        .as_deref()
        .ok_or_else(|| format!("{} is missing: the serial of the merchant certificate", at("serial_no")))?;
    let path = m.cert_path.as_deref().ok_or_else(|| {
        format!(
            "{} is missing: the merchant certificate (PEM) checks APIv3 signatures",
            at("cert_path")
        )
    })?;
    let certificate = merchant_certificate(path, serial.trim(), at)?;
    Ok(Some(SimV3Merchant {
        apiv3_key,
        certificate: Some(certificate),
    }))
}

/// The merchant certificate at `path` (`cert_path`), which must have `serial` (`serial_no`):
/// otherwise WeChat Pay, and the simulator, answer every request SIGN_ERROR.
fn merchant_certificate(path: &str, serial: &str, at: &dyn Fn(&str) -> String) -> Result<Certificate, String> {
    let pem = std::fs::read_to_string(path).map_err(|e| format!("{}: cannot read {path:?}: {e}", at("cert_path")))?;
    let certificate = Certificate::from_pem(&pem).map_err(|e| format!("{}: {e}", at("cert_path")))?;
    if !certificate.serial_no().eq_ignore_ascii_case(serial) {
        return Err(format!(
            "{}: {serial:?} is not the serial of {path:?} ({}); WeChat Pay would answer SIGN_ERROR",
            at("serial_no"),
            certificate.serial_no()
        ));
    }
    Ok(certificate)
}

/// A merchant's APIv3 credentials for the gateway: the APIv3 key, the private key with its
/// certificate's serial, and what verifies WeChat Pay (the public key, platform certificates,
/// or both during a switch-over; with neither, certificates are downloaded).
fn v3_credentials(m: &MerchantFile, at: &dyn Fn(&str) -> String) -> Result<V3Credentials, String> {
    let text =
        |key: &str, p: &str| std::fs::read_to_string(p).map_err(|e| format!("{}: cannot read {p:?}: {e}", at(key)));
    let missing = |key: &str, what: &str| format!("{} is missing: {what}", at(key));
    let apiv3_key = m
        .apiv3_key
        .as_deref()
        .ok_or_else(|| missing("apiv3_key", "the 32-byte APIv3 key decrypts notifications"))?;
    let apiv3_key = ApiV3Key::new(apiv3_key).map_err(|e| format!("{}: {e}", at("apiv3_key")))?;
    let serial = m
        .serial_no
        .as_deref()
        .ok_or_else(|| missing("serial_no", "the serial number of the merchant API certificate"))?
        .trim();
    let key_path = m
        .key_path
        .as_deref()
        .ok_or_else(|| missing("key_path", "apiclient_key.pem signs every APIv3 request"))?;
    let key =
        MerchantKey::from_pem(&text("key_path", key_path)?, serial).map_err(|e| format!("{}: {e}", at("key_path")))?;
    if let Some(cert_path) = m
        .cert_path
        .as_deref()
        .filter(|p| !p.ends_with(".p12") && !p.ends_with(".pfx"))
    {
        merchant_certificate(cert_path, serial, at)?;
    }
    let platform_certs = match m.platform_cert_path.as_deref() {
        Some(p) => vec![
            Certificate::from_pem(&text("platform_cert_path", p)?)
                .map_err(|e| format!("{}: {e}", at("platform_cert_path")))?,
        ],
        None => Vec::new(),
    };
    let public_key = match (
        m.wechatpay_public_key_path.as_deref(),
        m.wechatpay_public_key_id.as_deref(),
    ) {
        (None, None) => None,
        (Some(p), Some(id)) => {
            let id = id.trim();
            if !id.starts_with("PUB_KEY_ID_") {
                return Err(format!(
                    "{}: {id:?} does not start with PUB_KEY_ID_",
                    at("wechatpay_public_key_id")
                ));
            }
            let key = PublicKey::from_pem(&text("wechatpay_public_key_path", p)?)
                .map_err(|e| format!("{}: {e}", at("wechatpay_public_key_path")))?;
            Some((id.to_owned(), key))
        }
        (Some(_), None) => {
            return Err(missing(
                "wechatpay_public_key_id",
                "the id (PUB_KEY_ID_…) of the public key given",
            ));
        }
        (None, Some(_)) => {
            return Err(missing(
                "wechatpay_public_key_path",
                "the public key (pub_key.pem) of the id given",
            ));
        }
    };
    Ok(V3Credentials {
        apiv3_key,
        key: std::sync::Arc::new(key),
        platform_certs,
        public_key,
    })
}

/// What `serve` needs besides the gateway's own configuration.
pub(crate) struct ServeSettings {
    pub listen: String,
    pub database_url: String,
    pub pool_size: u32,
}

/// The gateway's configuration from a file, every value checked with a message naming its key.
pub(crate) fn gateway_config(file: &FileConfig) -> Result<(Config, ServeSettings), String> {
    let server = file
        .server
        .as_ref()
        .ok_or("the [server] section is missing (listen, public_url, api_tokens)")?;
    let public_url = server
        .public_url
        .clone()
        .ok_or("server.public_url is missing: WeChat Pay posts notifications to <public_url>/notify/v2/pay")?;
    let database = file
        .database
        .as_ref()
        .ok_or("the [database] section is missing (url)")?;
    let database_url = database
        .url
        .clone()
        .ok_or("database.url is missing (sqlite://wxpay.db or postgres://…)")?;
    let mut merchants = Vec::new();
    for (i, m) in file.merchants.iter().enumerate() {
        let at = |key: &str| format!("merchants[{i}].{key}");
        let v3 = match m.api_version.as_deref() {
            None | Some("v2") => false,
            Some("v3") => true,
            Some(other) => return Err(format!("{}: {other:?} is not \"v2\" or \"v3\"", at("api_version"))),
        };
        let api_key = match m.api_key.as_deref() {
            Some(k) => Some(ApiKey::new(k).map_err(|e| format!("{}: {e}", at("api_key")))?),
            None if v3 => None,
            None => return Err(format!("{} is missing (the 32-character APIv2 key)", at("api_key"))),
        };
        let sign_type = match m.sign_type.as_deref() {
            None => SignType::Md5,
            Some(s) => s.parse::<SignType>().map_err(|e| format!("{}: {e}", at("sign_type")))?,
        };
        let read = |key: &str, p: &str| std::fs::read(p).map_err(|e| format!("{}: cannot read {p:?}: {e}", at(key)));
        let v3 = if v3 { Some(v3_credentials(m, &at)?) } else { None };
        let client_cert = match (&m.cert_path, &m.key_path) {
            // APIv3 signs every request instead of presenting a TLS certificate.
            _ if v3.is_some() => None,
            (None, None) => None,
            (Some(c), None) if c.ends_with(".p12") || c.ends_with(".pfx") => {
                let password = m.cert_password.clone().unwrap_or_else(|| m.mch_id.clone());
                Some(
                    ClientCert::from_pkcs12(&read("cert_path", c)?, &password)
                        .map_err(|e| format!("{}: {e}", at("cert_path")))?,
                )
            }
            (Some(c), Some(k)) => Some(
                ClientCert::from_pem(&read("cert_path", c)?, &read("key_path", k)?)
                    .map_err(|e| format!("{}: {e}", at("cert_path")))?,
            ),
            (Some(_), None) => {
                return Err(format!(
                    "{} is missing: a PEM cert_path needs its apiclient_key.pem (or give the apiclient_cert.p12 as cert_path)",
                    at("key_path")
                ));
            }
            (None, Some(_)) => {
                return Err(format!(
                    "{} is missing: key_path is the key of cert_path",
                    at("cert_path")
                ));
            }
        };
        let ca_pem = m.ca_path.as_deref().map(|p| read("ca_path", p)).transpose()?;
        let app_secret = match &m.app_secret {
            Some(s) => Some(AppSecret::new(s.as_str()).map_err(|e| format!("{}: {e}", at("app_secret")))?),
            None => None,
        };
        merchants.push(MerchantConfig {
            name: m.name.clone().unwrap_or_else(|| {
                if i == 0 {
                    "default".to_owned()
                } else {
                    format!("merchant{i}")
                }
            }),
            appid: AppId::new(m.appid.as_str()).map_err(|e| format!("{}: {e}", at("appid")))?,
            app_secret,
            mch_id: MchId::new(m.mch_id.as_str()).map_err(|e| format!("{}: {e}", at("mch_id")))?,
            api_key,
            sign_type,
            base_url: m
                .base_url
                .clone()
                .unwrap_or_else(|| "https://api.mch.weixin.qq.com".to_owned()),
            // WeChat Pay's backup host (every API of both versions) when the primary is
            // WeChat Pay's own.
            backup_url: m.backup_url.clone().or_else(|| {
                m.base_url
                    .is_none()
                    .then(|| "https://api2.mch.weixin.qq.com".to_owned())
            }),
            sns_base_url: m
                .sns_base_url
                .clone()
                .unwrap_or_else(|| "https://api.weixin.qq.com".to_owned()),
            client_cert,
            ca_pem,
            v3,
        });
    }
    if merchants.iter().any(|m| m.app_secret.is_none()) {
        tracing_missing_secret(&merchants);
    }
    let webhook = match &file.webhook {
        Some(w) => Some(WebhookConfig {
            url: w.url.clone().ok_or("webhook.url is missing")?,
            secret: Secret::new(
                w.secret
                    .clone()
                    .ok_or("webhook.secret is missing: events are signed with it")?,
            ),
            allow_http: w.allow_http.unwrap_or(false),
        }),
        None => None,
    };
    let mut jobs = JobsConfig::default();
    if let Some(j) = &file.jobs {
        if let Some(v) = j.enabled {
            jobs.enabled = v;
        }
        if let Some(v) = j.first_check_after_secs {
            jobs.first_check_after = Duration::from_secs(v);
        }
        if let Some(v) = j.max_check_interval_secs {
            jobs.max_check_interval = Duration::from_secs(v);
        }
        if let Some(v) = j.poll_every_ms {
            jobs.poll_every = Duration::from_millis(v.max(10));
        }
    }
    let mut reconcile = ReconcileConfig::default();
    if let Some(r) = &file.reconcile {
        if r.daily == Some(true) {
            let at = r.at.as_deref().unwrap_or("10:30");
            let parsed = at
                .split_once(':')
                .and_then(|(h, m)| Some((h.parse::<u32>().ok()?, m.parse::<u32>().ok()?)))
                .filter(|&(h, m)| h < 24 && m < 60);
            let Some((h, m)) = parsed else {
                return Err(format!(
                    "reconcile.at: {at:?} is not a time of day HH:MM (Beijing time)"
                ));
            };
            reconcile.daily_at_minute = Some(h * 60 + m);
        }
        if let Some(v) = r.repair {
            reconcile.repair = v;
        }
    }
    let limits = server_limits(server)?;
    let config = Config {
        public_url,
        api_tokens: server.api_tokens.iter().map(|t| Secret::new(t.as_str())).collect(),
        merchants,
        webhook,
        upstream: UpstreamConfig::default(),
        jobs,
        default_order_ttl: Duration::from_secs(server.default_order_ttl_secs.unwrap_or(7200)),
        reconcile,
        limits,
        metrics_token: server.metrics_token.as_deref().map(Secret::new),
        console: file.console.as_ref().and_then(|c| {
            let hash = c.password_hash.as_deref()?;
            Some(ConsoleConfig {
                password_hash: Secret::new(hash),
                session_ttl: Duration::from_secs(c.session_hours.unwrap_or(12).saturating_mul(3600)),
                simulator_checkout: false,
            })
        }),
    };
    config.validate()?;
    Ok((
        config,
        ServeSettings {
            listen: server.listen.clone().unwrap_or_else(|| "127.0.0.1:8080".to_owned()),
            database_url,
            pool_size: database.pool_size.unwrap_or(16),
        },
    ))
}

/// The limits of `[server]`, each at least a second (or one connection).
fn server_limits(server: &ServerFile) -> Result<Limits, String> {
    let mut limits = Limits::default();
    for (key, value, slot) in [
        (
            "header_read_timeout_secs",
            server.header_read_timeout_secs,
            &mut limits.header_read_timeout,
        ),
        (
            "body_read_timeout_secs",
            server.body_read_timeout_secs,
            &mut limits.body_read_timeout,
        ),
        ("idle_timeout_secs", server.idle_timeout_secs, &mut limits.idle_timeout),
    ] {
        match value {
            None => {}
            Some(0) => return Err(format!("server.{key}: at least 1 second")),
            Some(v) => *slot = Duration::from_secs(v),
        }
    }
    match server.max_connections {
        None => {}
        Some(0) => return Err("server.max_connections: at least 1".into()),
        Some(n) => limits.max_connections = n,
    }
    Ok(limits)
}

fn tracing_missing_secret(merchants: &[MerchantConfig]) {
    for m in merchants.iter().filter(|m| m.app_secret.is_none()) {
        tracing::warn!(merchant = %m.name, "no app_secret: POST /v1/openid is unavailable for this merchant");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
[server]
listen = "127.0.0.1:8080"
public_url = "https://pay.example.com"
api_tokens = ["change-me-change-me"]

[database]
url = "sqlite://wxpay.db"

[[merchants]]
name = "default"
appid = "wxd678efh567hg6787"
app_secret = "wxpaysimulatortestappsecret00000"
mch_id = "1230000109"
api_key = "wxpaySimulatorTestKey0000000000A"
sign_type = "MD5"

[webhook]
url = "https://backend.example.com/wxpay-events"
secret = "whsec-0123456789abcdef"

[simulator]
auto_pay_delay_ms = 500
"#;

    #[test]
    fn the_documented_layout_parses() {
        let f = parse(EXAMPLE).unwrap();
        let m = sim_merchants(&f).unwrap();
        assert_eq!(m[0].mch_id.as_str(), "1230000109");
        assert_eq!(f.simulator.as_ref().unwrap().auto_pay_delay_ms, Some(500));
        let (config, settings) = gateway_config(&f).unwrap();
        assert_eq!(config.merchants[0].base_url, "https://api.mch.weixin.qq.com");
        assert_eq!(
            config.merchants[0].backup_url.as_deref(),
            Some("https://api2.mch.weixin.qq.com")
        );
        assert_eq!(settings.database_url, "sqlite://wxpay.db");
    }

    #[test]
    fn server_limits_default_to_10_30_60_seconds_and_10000_connections_and_can_be_set() {
        let (config, _) = gateway_config(&parse(EXAMPLE).unwrap()).unwrap();
        assert_eq!(config.limits, Limits::default());
        assert_eq!(config.limits.header_read_timeout, Duration::from_secs(10));
        assert_eq!(config.limits.body_read_timeout, Duration::from_secs(30));
        assert_eq!(config.limits.idle_timeout, Duration::from_secs(60));
        assert_eq!(config.limits.max_connections, 10_000);
        let text = EXAMPLE.replace(
            "[database]",
            "header_read_timeout_secs = 2\nbody_read_timeout_secs = 3\nidle_timeout_secs = 4\nmax_connections = 5\n\n[database]",
        );
        let (config, _) = gateway_config(&parse(&text).unwrap()).unwrap();
        assert_eq!(
            config.limits,
            Limits {
                header_read_timeout: Duration::from_secs(2),
                body_read_timeout: Duration::from_secs(3),
                idle_timeout: Duration::from_secs(4),
                max_connections: 5,
            }
        );
        let text = EXAMPLE.replace("[database]", "idle_timeout_secs = 0\n\n[database]");
        let err = gateway_config(&parse(&text).unwrap()).map(|_| ()).unwrap_err();
        assert!(err.contains("server.idle_timeout_secs"), "{err}");
    }

    #[test]
    fn the_daily_reconciliation_is_read_in_beijing_minutes() {
        let (config, _) = gateway_config(&parse(EXAMPLE).unwrap()).unwrap();
        assert_eq!(config.reconcile.daily_at_minute, None, "off unless asked for");
        let text = format!("{EXAMPLE}\n[reconcile]\ndaily = true\nat = \"09:45\"\nrepair = false\n");
        let (config, _) = gateway_config(&parse(&text).unwrap()).unwrap();
        assert_eq!(config.reconcile.daily_at_minute, Some(9 * 60 + 45));
        assert!(!config.reconcile.repair);
        let text = format!("{EXAMPLE}\n[reconcile]\ndaily = true\n");
        let (config, _) = gateway_config(&parse(&text).unwrap()).unwrap();
        assert_eq!(config.reconcile.daily_at_minute, Some(10 * 60 + 30), "10:30 by default");
    }

    #[test]
    fn mistakes_name_the_key() {
        let cases = [
            (
                EXAMPLE.replace("wxpaySimulatorTestKey0000000000A", "short"),
                "merchants[0].api_key",
            ),
            (
                EXAMPLE.replace("sign_type = \"MD5\"", "sign_type = \"SHA1\""),
                "merchants[0].sign_type",
            ),
            (
                EXAMPLE.replace("https://pay.example.com", "http://pay.example.com"),
                "server.public_url",
            ),
            (EXAMPLE.replace("public_url", "publicurl"), "publicurl"),
            (format!("{EXAMPLE}\n[bogus]\nx = 1\n"), "bogus"),
            (
                EXAMPLE.replace("secret = \"whsec-0123456789abcdef\"", ""),
                "webhook.secret",
            ),
            (
                EXAMPLE.replace(
                    "sign_type = \"MD5\"",
                    "cert_path = \"/nonexistent/apiclient_cert.pem\"\nkey_path = \"/nonexistent/apiclient_key.pem\"",
                ),
                "merchants[0].cert_path",
            ),
            (
                EXAMPLE.replace("sign_type = \"MD5\"", "cert_path = \"/nonexistent/apiclient_cert.pem\""),
                "merchants[0].key_path",
            ),
            (
                EXAMPLE.replace("sign_type = \"MD5\"", "cert_path = \"/nonexistent/apiclient_cert.p12\""),
                "merchants[0].cert_path",
            ),
            (
                EXAMPLE.replace("sign_type = \"MD5\"", "key_path = \"/nonexistent/apiclient_key.pem\""),
                "merchants[0].cert_path",
            ),
            (
                format!("{EXAMPLE}\n[reconcile]\ndaily = true\nat = \"25:00\"\n"),
                "reconcile.at",
            ),
            (
                format!("{EXAMPLE}\n[reconcile]\ndaily = true\nwhen = \"10:30\"\n"),
                "when",
            ),
            (
                EXAMPLE.replace("https://backend.example.com", "http://backend.example.com"),
                "webhook.url",
            ),
        ];
        for (text, needle) in cases {
            let err = parse(&text).and_then(|f| gateway_config(&f).map(|_| ())).unwrap_err();
            assert!(err.contains(needle), "{needle}: {err}");
        }
    }

    #[test]
    fn a_plain_http_webhook_elsewhere_needs_allow_http() {
        let text = EXAMPLE.replace("https://backend.example.com", "http://backend.example.com");
        assert!(gateway_config(&parse(&text).unwrap()).is_err());
        let text = text.replace("[webhook]", "[webhook]\nallow_http = true");
        let (config, _) = gateway_config(&parse(&text).unwrap()).unwrap();
        assert!(config.webhook.unwrap().allow_http);
    }

    /// A v3 merchant entry over the test vectors' keys.
    fn v3_example(extra: &str) -> String {
        let keys = concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata/vectors/keys");
        EXAMPLE.replace(
            "api_key = \"wxpaySimulatorTestKey0000000000A\"\nsign_type = \"MD5\"",
            &format!(
                "api_version = \"v3\"\napiv3_key = \"wxpaySimulatorApiV3TestKey000001\"\nserial_no = \"3775B6A45ACD588826D15E583A95F5DD2A4B7B21\"\ncert_path = \"{keys}/merchant_cert.pem\"\nkey_path = \"{keys}/merchant_private_key.pem\"\n{extra}"
            ),
        )
    }

    #[test]
    fn a_v3_merchant_needs_its_apiv3_key_its_key_and_the_serial_of_its_certificate() {
        let keys = concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata/vectors/keys");
        let both = format!(
            "platform_cert_path = \"{keys}/platform_cert.pem\"\nwechatpay_public_key_path = \"{keys}/platform_public_key.pem\"\nwechatpay_public_key_id = \"PUB_KEY_ID_0000000000000024101100397200000006\"\n"
        );
        let (config, _) = gateway_config(&parse(&v3_example(&both)).unwrap()).unwrap();
        let m = &config.merchants[0];
        let v3 = m.v3.as_ref().unwrap();
        assert!(m.api_key.is_none() && m.client_cert.is_none());
        assert_eq!(v3.key.serial_no(), "3775B6A45ACD588826D15E583A95F5DD2A4B7B21");
        assert_eq!(v3.platform_certs.len(), 1);
        assert_eq!(
            v3.public_key.as_ref().unwrap().0,
            "PUB_KEY_ID_0000000000000024101100397200000006"
        );
        // Nothing to verify with is allowed: the certificates are downloaded.
        let (config, _) = gateway_config(&parse(&v3_example("")).unwrap()).unwrap();
        assert!(config.merchants[0].v3.as_ref().unwrap().platform_certs.is_empty());
        // WeChat Pay's backup host by default, as for APIv2.
        assert_eq!(
            config.merchants[0].backup_url.as_deref(),
            Some("https://api2.mch.weixin.qq.com")
        );
        for (text, key) in [
            (
                v3_example("").replace("3775B6A45ACD", "AAAAB6A45ACD"),
                "merchants[0].serial_no",
            ),
            (
                v3_example("").replace("apiv3_key = \"wxpaySimulatorApiV3TestKey000001\"\n", ""),
                "merchants[0].apiv3_key",
            ),
            (
                v3_example("").replace("merchant_private_key.pem", "nope.pem"),
                "merchants[0].key_path",
            ),
            (
                v3_example("wechatpay_public_key_id = \"PUB_KEY_ID_01\"\n"),
                "merchants[0].wechatpay_public_key_path",
            ),
            (
                v3_example("").replace("name = \"default\"", "name = \"shop v3/?\""),
                "merchants[0].name",
            ),
        ] {
            let err = gateway_config(&parse(&text).unwrap()).map(|_| ()).unwrap_err();
            assert!(err.contains(key), "{key}: {err}");
        }
    }

    #[test]
    fn environment_overrides_of_text_keys_stay_text_whatever_they_look_like() {
        // A merchant number is all digits, and so may a secret be: they stay strings, whether
        // the file has the key (typed like it) or not (the file keeps its secrets out).
        let text = EXAMPLE.replace("secret = \"whsec-0123456789abcdef\"\n", "");
        let env = vec![
            ("WXPAY_MERCHANTS_0_MCH_ID".to_owned(), "1900000109".to_owned()),
            ("WXPAY_WEBHOOK_SECRET".to_owned(), "1234567890123456".to_owned()),
            ("WXPAY_DATABASE_POOL_SIZE".to_owned(), "8".to_owned()),
            ("WXPAY_WEBHOOK_ALLOW_HTTP".to_owned(), "true".to_owned()),
        ];
        let f = parse_with_env(&text, &env).unwrap();
        let (config, settings) = gateway_config(&f).unwrap();
        assert_eq!(config.merchants[0].mch_id.as_str(), "1900000109");
        assert_eq!(config.webhook.as_ref().unwrap().secret.expose(), "1234567890123456");
        assert!(config.webhook.unwrap().allow_http);
        // Numbers and booleans the file leaves out are still read as such.
        assert_eq!(settings.pool_size, 8);
        // A number that is not one is refused, naming the value.
        let bad = vec![("WXPAY_DATABASE_POOL_SIZE".to_owned(), "eight".to_owned())];
        let err = parse_with_env(&text, &bad).map(|_| ()).unwrap_err();
        assert!(err.contains("\"eight\""), "{err}");
    }

    #[test]
    fn environment_overrides_keys_and_merchant_entries() {
        let env = vec![
            ("WXPAY_DATABASE_URL".to_owned(), "postgres://db/wxpay".to_owned()),
            (
                "WXPAY_SERVER_API_TOKENS".to_owned(),
                "token-one-token-one,token-two-token-two".to_owned(),
            ),
            (
                "WXPAY_MERCHANTS_0_API_KEY".to_owned(),
                "0123456789abcdef0123456789ABCDEF".to_owned(),
            ),
            ("WXPAY_API_KEY".to_owned(), "ignored by the file".to_owned()),
        ];
        let f = parse_with_env(EXAMPLE, &env).unwrap();
        let (config, settings) = gateway_config(&f).unwrap();
        assert_eq!(settings.database_url, "postgres://db/wxpay");
        assert_eq!(config.api_tokens.len(), 2);
        assert_eq!(
            config.merchants[0].api_key.as_ref().unwrap().expose(),
            "0123456789abcdef0123456789ABCDEF"
        );
        // Every section of the file can be overridden, the console's included.
        let hash = wxpay_gateway::ConsoleConfig::hash_password("a console password", b"0123456789abcdef").unwrap();
        let console = vec![("WXPAY_CONSOLE_PASSWORD_HASH".to_owned(), hash)];
        let (config, _) = gateway_config(&parse_with_env(EXAMPLE, &console).unwrap()).unwrap();
        assert!(config.console.is_some(), "the console is on");
        let bad = vec![("WXPAY_MERCHANTS_3_API_KEY".to_owned(), "x".to_owned())];
        assert!(
            parse_with_env(EXAMPLE, &bad)
                .unwrap_err()
                .contains("no [[merchants]] entry 3")
        );
    }
}
