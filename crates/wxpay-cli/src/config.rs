//! The TOML configuration file shared by `serve`, `migrate`, `reconcile` and `simulator`,
//! parsed here and only here, with messages that name the key at fault.

use std::path::Path;

use serde::Deserialize;
use wxpay_protocol::{ApiKey, AppId, AppSecret, MchId};
use wxpay_simulator::SimMerchant;

use crate::CliError;

/// The file, as written. Every section is parsed, so that a misspelt key is refused even by
/// a command that does not use it; the gateway's sections are read by `wxpay serve`.
#[allow(dead_code)]
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileConfig {
    #[serde(default)]
    pub merchants: Vec<MerchantFile>,
    pub simulator: Option<SimulatorFile>,
    // The gateway's sections; `wxpay serve` reads them.
    pub server: Option<toml::Table>,
    pub database: Option<toml::Table>,
    pub webhook: Option<toml::Table>,
    pub reconcile: Option<toml::Table>,
}

/// One `[[merchants]]` entry. The simulator reads the APIv2 credentials; the rest is the
/// gateway's.
#[allow(dead_code)]
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
    pub sns_base_url: Option<String>,
    pub cert_path: Option<String>,
    pub key_path: Option<String>,
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
    pub auto_pay_delay_ms: Option<u64>,
    pub refund_delay_ms: Option<u64>,
    pub max_orders: Option<usize>,
    pub notification_log: Option<usize>,
    pub notify_concurrency: Option<usize>,
    pub notify_timeout_ms: Option<u64>,
    pub bills_immediately: Option<bool>,
}

/// Reads and parses a configuration file.
pub(crate) fn load(path: &Path) -> Result<FileConfig, CliError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::Usage(format!("cannot read the configuration {}: {e}", path.display())))?;
    parse(&text).map_err(|e| CliError::Usage(format!("{}: {e}", path.display())))
}

pub(crate) fn parse(text: &str) -> Result<FileConfig, String> {
    toml::from_str(text).map_err(|e| e.to_string())
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
            let key = m.api_key.as_deref().ok_or_else(|| {
                format!(
                    "{} is missing: the simulator checks APIv2 signatures with it",
                    at("api_key")
                )
            })?;
            let api_key = ApiKey::new(key).map_err(|e| format!("{}: {e}", at("api_key")))?;
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
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
[server]
listen = "127.0.0.1:8080"

[[merchants]]
name = "default"
appid = "wxd678efh567hg6787"
app_secret = "wxpaysimulatortestappsecret00000"
mch_id = "1230000109"
api_key = "wxpaySimulatorTestKey0000000000A"
sign_type = "MD5"

[simulator]
auto_pay_delay_ms = 500
"#;

    #[test]
    fn the_documented_layout_parses() {
        let f = parse(EXAMPLE).unwrap();
        let m = sim_merchants(&f).unwrap();
        assert_eq!(m[0].mch_id.as_str(), "1230000109");
        assert_eq!(f.simulator.unwrap().auto_pay_delay_ms, Some(500));
    }

    #[test]
    fn mistakes_name_the_key() {
        let short = EXAMPLE.replace("wxpaySimulatorTestKey0000000000A", "short");
        assert!(
            sim_merchants(&parse(&short).unwrap())
                .unwrap_err()
                .contains("merchants[0].api_key")
        );
        let typo = EXAMPLE.replace("app_secret", "appsecret");
        assert!(parse(&typo).unwrap_err().contains("appsecret"));
        let unknown = format!("{EXAMPLE}\n[bogus]\nx = 1\n");
        assert!(parse(&unknown).unwrap_err().contains("bogus"));
    }
}
