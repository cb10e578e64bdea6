//! WeChat Pay APIv3 as a [`Provider`]: JSON calls signed with the merchant's RSA key and
//! answers verified with WeChat Pay's keys (`client.rs`), and the notifications of that
//! protocol verified, decrypted and read into typed events ([`V3Inbox`]). Every APIv3 field
//! name the gateway knows is in this folder or in `wxpay-protocol::v3`.

use std::collections::HashMap;
use std::sync::Arc;

use wxpay_protocol::v3::SignatureHeaders;
use wxpay_protocol::v3::auth::pay_params;
use wxpay_protocol::v3::calls::{
    self, CreateJsapi, CreateRefund, RefundRecord, RefundStatus, TradeState, V3Error, bill_location, prepay_id,
    refund_record, transaction,
};
use wxpay_protocol::v3::notify::{Envelope, Event, NotifyError};
use wxpay_protocol::{BeijingTime, Nonce, OutRefundNo, OutTradeNo};

use crate::config::{MerchantConfig, UpstreamConfig};
use crate::metrics::Metrics;
use crate::provider::{
    BillEntry, CLIPPED, Fut, NoticeOutcome, NoticeRejected, PayParams, PaymentNotice, PaymentState, PaymentTerms,
    Provider, ProviderError, Received, RefundAccepted, RefundNotice, RefundReport, RefundState, RefundTerms,
    RefundsOfOrder, Refusal,
};
use crate::time::{Clock, Millis};
use crate::util::clip;

pub(crate) mod client;

pub(crate) use client::signature_headers;
use client::{CallError, V3Link};

/// One merchant over APIv3.
pub(crate) struct V3Provider {
    link: Arc<V3Link>,
    /// Where WeChat Pay sends this merchant's notifications: `<public_url>/notify/v3/<name>`.
    notify_url: String,
}

impl V3Provider {
    /// The provider of `merchant`, whose notifications come to `public_url`.
    pub(crate) fn new(
        merchant: MerchantConfig,
        upstream: &UpstreamConfig,
        public_url: &str,
        metrics: Arc<Metrics>,
        clock: Clock,
        keeper: Option<Arc<dyn crate::provider::CertificateKeeper>>,
    ) -> Result<V3Provider, String> {
        let notify_url = format!("{}/notify/v3/{}", public_url.trim_end_matches('/'), merchant.name);
        Ok(V3Provider {
            link: V3Link::new(merchant, upstream, metrics, clock, keeper)?,
            notify_url,
        })
    }

    /// The connection, shared with the inbox (which verifies with the same keys).
    pub(crate) fn link(&self) -> Arc<V3Link> {
        self.link.clone()
    }

    fn jsapi<'a>(&'a self, t: &'a PaymentTerms<'a>) -> CreateJsapi<'a> {
        let c = &self.link.config;
        CreateJsapi {
            appid: &c.appid,
            mchid: &c.mch_id,
            description: t.description,
            out_trade_no: t.out_trade_no,
            time_expire: Some(t.expires_at.unix_secs()),
            attach: t.attach,
            notify_url: &self.notify_url,
            amount: t.amount,
            openid: t.openid,
        }
    }

    fn refund_ask<'a>(&'a self, t: &'a RefundTerms<'a>) -> CreateRefund<'a> {
        CreateRefund {
            out_trade_no: t.out_trade_no,
            out_refund_no: t.out_refund_no,
            reason: t.reason,
            notify_url: Some(&self.notify_url),
            refund: t.amount,
            total: t.order_amount,
        }
    }
}

/// What a refusal means to the core; `not_found` is what a 404 means for this call.
fn refused(e: V3Error, not_found: Refusal) -> ProviderError {
    let reason = match e.code.as_str() {
        "ORDERPAID" => Refusal::OrderPaid,
        "ORDER_CLOSED" | "ORDERCLOSED" => Refusal::OrderClosed,
        "ORDER_NOT_EXIST" | "ORDERNOTEXIST" => Refusal::OrderNotExist,
        "RESOURCE_NOT_EXISTS" => not_found,
        _ => Refusal::Other,
    };
    if e.status == 401 || e.code == "SIGN_ERROR" {
        // The request itself: the key, its serial, or the clock.
        return ProviderError::Protocol(e.to_string());
    }
    ProviderError::Refused {
        reason,
        retry: e.retry().into(),
        message: format!("{} {}", e.code, e.message),
    }
}

fn provider_error(e: CallError, not_found: Refusal) -> ProviderError {
    match e {
        CallError::Rejected { error, lost_attempt } => refused(error, not_found).after_lost_attempt(lost_attempt),
        CallError::NoAnswer(m) => ProviderError::NoAnswer(m),
    }
}

/// The path (and query) of a bill's `download_url`. The file is fetched from the host calls
/// go to now (the primary, or the backup while it is used), whatever host the URL names: the
/// signed request goes nowhere else.
fn download_path(url: &str) -> Result<String, ProviderError> {
    url.find("://")
        .and_then(|i| url[i + 3..].find('/').map(|j| url[i + 3 + j..].to_owned()))
        .ok_or_else(|| ProviderError::Incomplete(format!("download_url {:?} has no path", clip(url, CLIPPED))))
}

fn incomplete(e: wxpay_protocol::Error) -> ProviderError {
    ProviderError::Incomplete(e.to_string())
}

fn ms(unix_secs: i64) -> Millis {
    Millis::from_unix_secs(unix_secs)
}

fn refund_state(s: &RefundStatus) -> RefundState {
    match s {
        RefundStatus::Success => RefundState::Succeeded,
        RefundStatus::Closed => RefundState::Closed,
        RefundStatus::Processing => RefundState::Processing,
        RefundStatus::Abnormal => RefundState::Abnormal,
        RefundStatus::Other(o) => RefundState::Other(o.clone()),
    }
}

fn report(r: &RefundRecord) -> RefundReport {
    RefundReport {
        out_refund_no: r.out_refund_no.clone(),
        refund_id: r.refund_id.clone(),
        amount: r.refund,
        state: refund_state(&r.status),
        settled_at: r.success_time.map(ms),
    }
}

impl Provider for V3Provider {
    fn merchant(&self) -> &MerchantConfig {
        &self.link.config
    }

    fn lacks_client_cert(&self, _now: Millis) -> bool {
        // APIv3 signs refunds like every other request: no TLS client certificate.
        false
    }

    fn check_payment(&self, t: &PaymentTerms<'_>) -> Result<(), String> {
        self.jsapi(t).check().map_err(|e| e.to_string())
    }

    fn create_payment<'a>(&'a self, terms: &'a PaymentTerms<'a>) -> Fut<'a, String> {
        Box::pin(async move {
            let answer = self
                .link
                .call(&self.jsapi(terms).request(), "v3_jsapi")
                .await
                .map_err(|e| provider_error(e, Refusal::OrderNotExist))?;
            prepay_id(&answer.body).map_err(incomplete)
        })
    }

    fn pay_params(&self, prepay_id: &str, now_secs: u64, nonce: &Nonce) -> Result<PayParams, ProviderError> {
        pay_params(
            &self.link.creds.key,
            &self.link.config.appid,
            prepay_id,
            now_secs,
            nonce,
        )
        .map_err(|e| ProviderError::Invalid(e.to_string()))
    }

    fn query_payment<'a>(&'a self, out_trade_no: &'a OutTradeNo) -> Fut<'a, PaymentState> {
        Box::pin(async move {
            let req = calls::query_by_out_trade_no(out_trade_no, &self.link.config.mch_id);
            let answer = self
                .link
                .call(&req, "v3_query")
                .await
                .map_err(|e| provider_error(e, Refusal::OrderNotExist))?;
            let t = transaction(&answer.body).map_err(incomplete)?;
            PaymentState::from_trade_state(
                t.trade_state,
                t.transaction_id,
                t.total,
                t.success_time.map(ms),
                t.currency,
            )
        })
    }

    fn close_payment<'a>(&'a self, out_trade_no: &'a OutTradeNo) -> Fut<'a, ()> {
        Box::pin(async move {
            let req = calls::close(out_trade_no, &self.link.config.mch_id);
            self.link
                .call(&req, "v3_close")
                .await
                .map_err(|e| provider_error(e, Refusal::OrderNotExist))?;
            Ok(())
        })
    }

    fn check_refund(&self, t: &RefundTerms<'_>) -> Result<(), String> {
        self.refund_ask(t).check().map_err(|e| e.to_string())
    }

    fn refund<'a>(&'a self, terms: &'a RefundTerms<'a>) -> Fut<'a, RefundAccepted> {
        Box::pin(async move {
            let answer = self
                .link
                .call(&self.refund_ask(terms).request(), "v3_refund")
                .await
                .map_err(|e| provider_error(e, Refusal::OrderNotExist))?;
            let r = refund_record(&answer.body).map_err(incomplete)?;
            Ok(RefundAccepted {
                refund_id: r.refund_id,
                amount: r.refund,
            })
        })
    }

    fn query_refund<'a>(&'a self, out_refund_no: &'a OutRefundNo) -> Fut<'a, RefundsOfOrder> {
        Box::pin(async move {
            let answer = self
                .link
                .call(&calls::query_refund(out_refund_no), "v3_refund_query")
                .await
                .map_err(|e| provider_error(e, Refusal::RefundNotExist))?;
            let r = refund_record(&answer.body).map_err(incomplete)?;
            Ok(RefundsOfOrder {
                out_trade_no: r.out_trade_no.clone(),
                refunds: vec![report(&r)],
            })
        })
    }

    fn download_bill<'a>(&'a self, day: BeijingTime, received: Received<'a>) -> Fut<'a, Vec<BillEntry>> {
        Box::pin(async move {
            let dashed = day.to_dashed();
            // The download address works for a short while only (30 s to 5 minutes): a
            // download refused as an invalid or expired link (a slow first attempt, a pause
            // between the two calls) asks for a fresh address once.
            let mut fresh_address_asked = false;
            let (location, file) = loop {
                // As gzip: a busy merchant's day is tens of megabytes of text, and compresses
                // several times.
                let located = self
                    .link
                    .call(&calls::trade_bill(&dashed[..10], true), "v3_tradebill")
                    .await;
                let location = match located {
                    Ok(a) => bill_location(&a.body).map_err(incomplete)?,
                    Err(CallError::Rejected { error: e, .. }) if e.code == "NO_STATEMENT_EXIST" => {
                        return Ok(Vec::new());
                    }
                    Err(CallError::Rejected { error: e, .. }) if e.code == "STATEMENT_CREATING" => {
                        return Err(ProviderError::BillNotReady);
                    }
                    Err(e) => return Err(provider_error(e, Refusal::Other)),
                };
                let req = calls::Request {
                    method: "GET",
                    url: download_path(&location.download_url)?,
                    body: String::new(),
                };
                match self.link.download(&req, "v3_billdownload", received).await {
                    Ok(file) => break (location, file),
                    Err(CallError::Rejected { error: e, .. })
                        if e.code == "INVALID_REQUEST" && !fresh_address_asked =>
                    {
                        tracing::warn!(error = %e, "the bill's download address was refused: asking for a fresh one");
                        fresh_address_asked = true;
                    }
                    Err(e) => return Err(provider_error(e, Refusal::Other)),
                }
            };
            let bill = location.read_gzip(&file.body).map_err(incomplete)?;
            Ok(bill.rows.into_iter().map(crate::provider::bill_entry).collect())
        })
    }
}

/// What a verified APIv3 notification reports.
pub(crate) enum V3Notice {
    /// `TRANSACTION.SUCCESS`.
    Payment(PaymentNotice),
    /// `REFUND.*`.
    Refund(RefundNotice),
}

/// Reads APIv3 notifications: the merchant is named by the path (`/notify/v3/{merchant}`);
/// its keys verify the headers over the raw body, then its APIv3 key opens the resource.
pub(crate) struct V3Inbox {
    /// Merchant name → its index and connection.
    merchants: HashMap<String, (usize, Arc<V3Link>)>,
}

impl V3Inbox {
    /// The inbox of the APIv3 merchants (`links` by merchant index).
    pub(crate) fn new(links: Vec<(usize, Arc<V3Link>)>) -> V3Inbox {
        V3Inbox {
            merchants: links
                .into_iter()
                .map(|(i, l)| (l.config.name.clone(), (i, l)))
                .collect(),
        }
    }

    /// A notification for merchant `name`: verified, decrypted and read, or rejected with the
    /// reason (nothing in a rejected one is trusted).
    pub(crate) async fn read(
        &self,
        name: &str,
        headers: &SignatureHeaders<'_>,
        body: &[u8],
    ) -> Result<(usize, V3Notice), NoticeRejected> {
        let rejected = |merchant: Option<usize>, reason: String| NoticeRejected {
            reason,
            merchant,
            out_trade_no: None,
            transaction_id: None,
        };
        let Some((idx, link)) = self.merchants.get(name) else {
            return Err(rejected(
                None,
                format!("no APIv3 merchant named {:?}", clip(name, CLIPPED)),
            ));
        };
        let idx = *idx;
        link.verify(headers, body)
            .await
            .map_err(|e| rejected(Some(idx), format!("verification failed: {e}")))?;
        let envelope = Envelope::read(body).map_err(|e| rejected(Some(idx), format!("verified, but {e}")))?;
        let event = envelope.event(link.creds.apiv3_key.expose()).map_err(|e| {
            let why = match e {
                NotifyError::Decrypt(_) => {
                    format!("verified, but the resource does not decrypt with this merchant's APIv3 key: {e}")
                }
                other => format!("verified, but {other}"),
            };
            rejected(Some(idx), why)
        })?;
        let mch_id = link.config.mch_id.as_str();
        match event {
            Event::Transaction(t) => {
                if t.mchid != mch_id || t.appid != link.config.appid.as_str() {
                    return Err(NoticeRejected {
                        reason: format!(
                            "verified, but for mchid {:?} and appid {:?}, not this merchant's",
                            clip(&t.mchid, CLIPPED),
                            clip(&t.appid, CLIPPED)
                        ),
                        merchant: Some(idx),
                        out_trade_no: Some(t.out_trade_no.to_string()),
                        transaction_id: t.transaction_id,
                    });
                }
                // APIv3 notifies successes only, complete ones.
                let (TradeState::Success, Some(transaction_id), Some(amount), Some(paid_at)) =
                    (&t.trade_state, t.transaction_id.clone(), t.total, t.success_time)
                else {
                    return Err(NoticeRejected {
                        reason: format!(
                            "verified, but a payment notification with trade_state {} and without its transaction_id, amount or success_time",
                            t.trade_state.as_str()
                        ),
                        merchant: Some(idx),
                        out_trade_no: Some(t.out_trade_no.to_string()),
                        transaction_id: t.transaction_id,
                    });
                };
                let outcome = NoticeOutcome::Paid {
                    transaction_id,
                    amount,
                    paid_at: ms(paid_at),
                    currency: t.currency,
                };
                Ok((
                    idx,
                    V3Notice::Payment(PaymentNotice {
                        out_trade_no: t.out_trade_no,
                        outcome,
                    }),
                ))
            }
            Event::Refund(r) => Ok((
                idx,
                V3Notice::Refund(RefundNotice {
                    out_trade_no: r.out_trade_no.clone(),
                    transaction_id: r.transaction_id.clone().unwrap_or_default(),
                    refund: report(&r),
                }),
            )),
        }
    }

    /// The kind a rejected body claims to be (unverified), for the record.
    pub(crate) fn claimed_kind(body: &[u8]) -> crate::store::NoticeKind {
        match Envelope::read(body) {
            Ok(e) if e.event_type.starts_with("REFUND.") => crate::store::NoticeKind::Refund,
            _ => crate::store::NoticeKind::Payment,
        }
    }
}
