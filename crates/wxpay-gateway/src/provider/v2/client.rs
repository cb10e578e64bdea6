//! Calls to WeChat Pay: signed, verified, retried only where it is safe, with the backup host.
//!
//! A call is repeated, with the same business parameters (a fresh nonce and signature), only
//! when `protocol.md` says repeating is safe: `SYSTEMERROR`/`BIZERR_NEED_RETRY`, no answer
//! (the request may or may not have been processed: the same `out_trade_no` with the same
//! parameters is accepted again), an answer whose signature does not verify, or a 5xx
//! without a WeChat Pay body. Connection failures and such 5xx count against the host (see
//! [`Hosts`]).

use std::sync::Arc;
use std::time::Instant;

use wxpay_protocol::v2::{self, ErrCode, Retry, V2Call};
use wxpay_protocol::{Error as ProtoError, Merchant};

use crate::config::{MerchantConfig, UpstreamConfig};
use crate::metrics::Metrics;
use crate::provider::hosts::Hosts;
use crate::provider::{LARGE_ANSWER_TIMEOUT, ProviderError, Refusal, merchant_client, nonce, read_observed};
use crate::time::{Clock, Millis};

/// How an APIv2 call ended badly; the provider turns it into a [`ProviderError`].
#[derive(Debug, Clone)]
pub(crate) enum CallError {
    /// A business refusal that is not to be repeated now (`ORDERPAID`, `FREQUENCY_LIMITED`, …).
    Rejected {
        /// `err_code`.
        code: ErrCode,
        /// `err_code_des`.
        description: String,
        /// Whether the call changes WeChat Pay's state and an earlier attempt of it got no
        /// trustworthy answer ([`ProviderError::after_lost_attempt`]).
        lost_attempt: bool,
    },
    /// `return_code=FAIL`: a bad signature, a malformed request.
    Refused {
        /// `return_msg`.
        message: String,
        /// As for [`CallError::Rejected`].
        lost_attempt: bool,
    },
    /// No trustworthy answer after every allowed attempt.
    NoAnswer(String),
    /// The request could not be built.
    Invalid(String),
}

impl From<CallError> for ProviderError {
    fn from(e: CallError) -> Self {
        match e {
            CallError::Rejected {
                code,
                description,
                lost_attempt,
            } => ProviderError::Refused {
                reason: match code {
                    ErrCode::OrderPaid => Refusal::OrderPaid,
                    ErrCode::OrderClosed => Refusal::OrderClosed,
                    ErrCode::OrderNotExist => Refusal::OrderNotExist,
                    ErrCode::RefundNotExist => Refusal::RefundNotExist,
                    _ => Refusal::Other,
                },
                retry: code.retry().into(),
                message: format!("{code} {description}"),
            }
            .after_lost_attempt(lost_attempt),
            CallError::Refused { message, lost_attempt } => {
                ProviderError::Protocol(message).after_lost_attempt(lost_attempt)
            }
            CallError::NoAnswer(m) => ProviderError::NoAnswer(m),
            CallError::Invalid(m) => ProviderError::Invalid(m),
        }
    }
}

/// A merchant's connection to WeChat Pay's APIv2 hosts.
pub(crate) struct V2Link {
    pub(crate) config: MerchantConfig,
    pub(crate) credentials: Merchant,
    /// This merchant's HTTP client: its own because it presents the merchant's certificate
    /// (refunds) and may trust an extra CA (the simulator's).
    http: reqwest::Client,
    hosts: Hosts,
    upstream: UpstreamConfig,
    metrics: Arc<Metrics>,
    /// The gateway's clock, for how long the backup host is used.
    clock: Clock,
}

impl V2Link {
    pub(crate) fn new(
        config: MerchantConfig,
        upstream: &UpstreamConfig,
        metrics: Arc<Metrics>,
        clock: Clock,
    ) -> Result<V2Link, String> {
        let http = merchant_client(&config, upstream, true)?;
        let credentials = config
            .credentials()
            .ok_or_else(|| format!("merchant {}: APIv2 needs the API key (api_key)", config.name))?;
        Ok(V2Link {
            credentials,
            hosts: Hosts::new(&config),
            config,
            http,
            upstream: upstream.clone(),
            metrics,
            clock,
        })
    }

    /// Whether calls that need the merchant certificate (`/secapi/…`) cannot be made at
    /// `now`: no certificate is configured and the host speaks TLS. Over plain HTTP (the
    /// simulator on this machine) there is no TLS to present it in.
    pub(crate) fn lacks_client_cert(&self, now: Millis) -> bool {
        self.config.client_cert.is_none() && self.host(now).starts_with("https://")
    }

    /// The host to call at `now` (the gateway's clock).
    fn host(&self, now: Millis) -> &str {
        self.hosts.current(now)
    }
}

impl V2Link {
    /// Makes an APIv2 call for this merchant.
    pub(crate) async fn call<C: V2Call>(&self, call: &C) -> Result<C::Response, CallError> {
        self.call_observed(call, &|_, _| {}).await
    }

    /// [`V2Link::call`], telling `received(bytes so far, Content-Length)` as the answer of
    /// a call with a large answer arrives (the progress of a download).
    pub(crate) async fn call_observed<C: V2Call>(
        &self,
        call: &C,
        received: &(dyn Fn(u64, Option<u64>) + Send + Sync),
    ) -> Result<C::Response, CallError> {
        let api = C::PATH.rsplit('/').next().unwrap_or(C::PATH);
        if C::CLIENT_CERT && self.lacks_client_cert(self.clock.now()) {
            return Err(CallError::Invalid(format!(
                "{api} needs the merchant API certificate: set cert_path and key_path (or a .p12 cert_path) for merchant {}",
                self.config.name
            )));
        }
        let mut last = CallError::NoAnswer("no attempt made".into());
        // Whether an attempt of this call reached WeChat Pay, or may have, without a
        // trustworthy answer: from then on, a refusal does not prove that the call (a change)
        // had no effect, since the refusal may come from what that attempt did.
        let mut uncertain = false;
        for attempt in 0..self.upstream.attempts.max(1) {
            if attempt > 0 {
                let pause = self.upstream.retry_backoff * 2u32.saturating_pow(attempt - 1);
                tokio::time::sleep(pause).await;
            }
            let body = v2::encode(call, &self.credentials, &nonce()).map_err(|e| CallError::Invalid(e.to_string()))?;
            let url = format!("{}{}", self.host(self.clock.now()), C::PATH);
            let started = Instant::now();
            let mut request = self.http.post(&url);
            if C::LARGE_ANSWER {
                // A day's bill of a busy merchant is tens of megabytes.
                request = request.timeout(self.upstream.timeout.max(LARGE_ANSWER_TIMEOUT));
            }
            let sent = request
                .header("Content-Type", "text/xml; charset=utf-8")
                .body(body)
                .send()
                .await;
            let answer = match sent {
                Ok(resp) => {
                    let status = resp.status();
                    let body = if C::LARGE_ANSWER {
                        read_observed(resp, received).await
                    } else {
                        resp.bytes().await
                    };
                    body.map(|b| (status, b))
                        .map_err(|e| (false, format!("the answer broke off: {e}")))
                }
                Err(e) => Err((e.is_connect(), e.to_string())),
            };
            self.metrics.upstream_latency(api, started.elapsed());
            let (status, bytes) = match answer {
                Ok(a) => a,
                Err((before_sending, message)) => {
                    // Connecting failed: nothing was sent, the host may be down. Otherwise the
                    // request may have been processed and its answer lost: both are repeated,
                    // with the same parameters.
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
            // A server error counts as WeChat Pay's answer only when it is one (signed, or a
            // bill, which WeChat Pay does not sign). A proxy's or load balancer's page (HTML
            // starts with `<` too) and an unsigned `return_code=FAIL` are the host failing, as
            // if nothing had answered: they count towards the backup host, and never refuse an
            // order for good.
            let decoded = C::decode(&bytes, &self.credentials);
            if status.is_server_error() && !matches!(decoded, Ok(_) | Err(ProtoError::Business { .. })) {
                self.hosts.failed(&self.upstream, self.clock.now());
                self.metrics.upstream_error(api, "http_5xx");
                uncertain = true;
                last = CallError::NoAnswer(format!("HTTP {status}"));
                continue;
            }
            self.hosts.answered();
            // A refusal of a change after a lost attempt: said here, where the call is known;
            // what it means is decided by `ProviderError::after_lost_attempt`.
            let lost_attempt = |refusal: &dyn std::fmt::Display| {
                let lost = uncertain && C::CHANGES;
                if lost {
                    tracing::warn!(api, %refusal, "a refusal after an attempt without an answer");
                }
                lost
            };
            match decoded {
                Ok(r) => return Ok(r),
                Err(ProtoError::Business { code, description }) => {
                    self.metrics.upstream_error(api, code.as_str());
                    if code.retry() == Retry::SameParameters {
                        tracing::warn!(api, attempt, code = ?code, "WeChat Pay asks to retry");
                        uncertain = true;
                        last = CallError::NoAnswer(format!("{code} {description}"));
                        continue;
                    }
                    let lost_attempt = lost_attempt(&format_args!("{code} {description}"));
                    return Err(CallError::Rejected {
                        code,
                        description,
                        lost_attempt,
                    });
                }
                Err(ProtoError::ReturnFail { return_msg, .. }) => {
                    self.metrics.upstream_error(api, "return_fail");
                    let lost_attempt = lost_attempt(&return_msg);
                    return Err(CallError::Refused {
                        message: return_msg,
                        lost_attempt,
                    });
                }
                Err(e) => {
                    // An answer we cannot trust (bad signature, not XML): as if none came.
                    self.metrics.upstream_error(api, "bad_answer");
                    tracing::warn!(api, attempt, error = ?e, "untrustworthy answer from WeChat Pay");
                    uncertain = true;
                    last = CallError::NoAnswer(format!("untrustworthy answer: {e}"));
                }
            }
        }
        Err(last)
    }
}
