//! `jscode2session`: a mini program's login code exchanged for the payer's openid. It is
//! WeChat's login API, not WeChat Pay's, and the same whichever payment protocol a merchant
//! speaks.

use std::sync::Arc;
use std::time::Instant;

use wxpay_protocol::Error as ProtoError;

use crate::config::{MerchantConfig, UpstreamConfig};
use crate::metrics::Metrics;

/// Why a login code gave no openid.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum LoginError {
    /// WeChat refused the code itself (invalid, used, expired): the mini program needs a
    /// fresh one.
    #[error("WeChat refused the login code (errcode {errcode}: {message}); get a fresh one with wx.login")]
    CodeRefused {
        /// WeChat's code.
        errcode: i64,
        /// WeChat's message, without its request id.
        message: String,
    },
    /// WeChat refused for another reason (a wrong secret, a rate limit).
    #[error("jscode2session failed with errcode {0}")]
    Refused(i64),
    /// The code is not one WeChat could have issued.
    #[error("code: {0}")]
    InvalidCode(String),
    /// No usable answer.
    #[error("jscode2session: {0}")]
    Unavailable(String),
}

/// The client of WeChat's login API.
pub(crate) struct Sns {
    http: reqwest::Client,
    metrics: Arc<Metrics>,
}

impl Sns {
    /// A client with the configured timeouts.
    pub(crate) fn new(config: &UpstreamConfig, metrics: Arc<Metrics>) -> Result<Sns, String> {
        let http = super::client_builder(config)
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        Ok(Sns { http, metrics })
    }

    /// `jscode2session` for `merchant`'s mini program.
    pub(crate) async fn code2session(
        &self,
        merchant: &MerchantConfig,
        code: &str,
    ) -> Result<wxpay_protocol::sns::Session, LoginError> {
        self.exchange(merchant, code).await.map_err(|e| match e {
            ProtoError::Sns { errcode, errmsg } if matches!(errcode, 40029 | 40163 | 40226) => {
                LoginError::CodeRefused {
                    errcode,
                    message: errmsg.split(", rid").next().unwrap_or("").to_owned(),
                }
            }
            ProtoError::Sns { errcode, .. } => LoginError::Refused(errcode),
            ProtoError::Invalid { reason, .. } => LoginError::InvalidCode(reason),
            other => LoginError::Unavailable(other.to_string()),
        })
    }

    async fn exchange(
        &self,
        merchant: &MerchantConfig,
        code: &str,
    ) -> Result<wxpay_protocol::sns::Session, ProtoError> {
        let secret = merchant
            .app_secret
            .clone()
            .ok_or_else(|| ProtoError::MissingField("app_secret".into()))?;
        let call = wxpay_protocol::sns::Code2Session::new(merchant.appid.clone(), secret, code)?;
        let url = format!(
            "{}{}",
            merchant.sns_base_url.trim_end_matches('/'),
            call.path_and_query()
        );
        let started = Instant::now();
        let resp = self.http.get(&url).send().await;
        self.metrics.upstream_latency("jscode2session", started.elapsed());
        let body = match resp {
            Ok(r) => r
                .bytes()
                .await
                .map_err(|e| ProtoError::Json(format!("reading the answer: {e}")))?,
            Err(e) => {
                self.metrics.upstream_error("jscode2session", "no_answer");
                // The URL holds the secret: only say what failed.
                return Err(ProtoError::Json(format!(
                    "no answer from the WeChat API ({})",
                    if e.is_timeout() { "timeout" } else { "connection" }
                )));
            }
        };
        wxpay_protocol::sns::Code2Session::decode(&body)
    }
}
