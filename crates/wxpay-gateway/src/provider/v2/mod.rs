//! WeChat Pay APIv2 as a [`Provider`]: XML calls signed with the API key (`client.rs`), and
//! the notifications of that protocol read into typed events ([`V2Inbox`]). Every APIv2 field
//! name the gateway knows is in this folder.

use std::collections::HashMap;
use std::sync::Arc;

use wxpay_protocol::v2::{
    Bill, BillType, CloseOrder, DownloadBill, NotificationFields, OrderQuery, OrderRef, Refund, RefundQuery,
    RefundStatus, UnifiedOrder,
};
use wxpay_protocol::{BeijingTime, Merchant, Nonce, OutRefundNo, OutTradeNo};

use crate::config::{MerchantConfig, UpstreamConfig};
use crate::metrics::Metrics;
use crate::provider::{
    BillEntry, CLIPPED, Fut, NoticeOutcome, NoticeRejected, PayParams, PaymentNotice, PaymentState, PaymentTerms,
    Provider, ProviderError, Received, RefundAccepted, RefundNotice, RefundReport, RefundState, RefundTerms,
    RefundsOfOrder,
};
use crate::time::{Clock, Millis};
use crate::util::clip;

pub(crate) mod client;

use client::{CallError, V2Link};

/// One merchant over APIv2.
pub(crate) struct V2Provider {
    link: V2Link,
    /// Where WeChat Pay sends this gateway's notifications.
    public_url: String,
}

impl V2Provider {
    /// The provider of `merchant`, whose notifications come to `public_url`.
    pub(crate) fn new(
        merchant: MerchantConfig,
        upstream: &UpstreamConfig,
        public_url: &str,
        metrics: Arc<Metrics>,
        clock: Clock,
    ) -> Result<V2Provider, String> {
        Ok(V2Provider {
            link: V2Link::new(merchant, upstream, metrics, clock)?,
            public_url: public_url.trim_end_matches('/').to_owned(),
        })
    }

    fn unified_order(&self, t: &PaymentTerms<'_>) -> UnifiedOrder {
        let mut call = UnifiedOrder::jsapi(
            t.description,
            t.out_trade_no.clone(),
            t.amount,
            t.client_ip,
            format!("{}/notify/v2/pay", self.public_url),
            t.openid,
        );
        call.attach = t.attach.map(str::to_owned);
        call.time_expire = Some(BeijingTime::from_unix(t.expires_at.unix_secs()));
        call
    }

    fn refund_call(&self, t: &RefundTerms<'_>) -> Refund {
        let mut call = Refund::new(
            OrderRef::OutTradeNo(t.out_trade_no.clone()),
            t.out_refund_no.clone(),
            t.order_amount,
            t.amount,
        );
        call.refund_desc = t.reason.map(str::to_owned);
        call.notify_url = Some(format!("{}/notify/v2/refund", self.public_url));
        call
    }
}

/// The moment of a Beijing time.
fn ms(t: BeijingTime) -> Millis {
    Millis::from_unix_secs(t.unix())
}

fn refund_state(s: &RefundStatus) -> RefundState {
    match s {
        RefundStatus::Success => RefundState::Succeeded,
        RefundStatus::RefundClose => RefundState::Closed,
        RefundStatus::Processing => RefundState::Processing,
        RefundStatus::Change => RefundState::Abnormal,
        RefundStatus::Other(o) => RefundState::Other(o.clone()),
    }
}

impl Provider for V2Provider {
    fn merchant(&self) -> &MerchantConfig {
        &self.link.config
    }

    fn lacks_client_cert(&self, now: Millis) -> bool {
        self.link.lacks_client_cert(now)
    }

    fn check_payment(&self, terms: &PaymentTerms<'_>) -> Result<(), String> {
        self.unified_order(terms).check().map_err(|e| e.to_string())
    }

    fn create_payment<'a>(&'a self, terms: &'a PaymentTerms<'a>) -> Fut<'a, String> {
        Box::pin(async move {
            let answer = self.link.call(&self.unified_order(terms)).await?;
            Ok(answer.prepay_id)
        })
    }

    fn pay_params(&self, prepay_id: &str, now_secs: u64, nonce: &Nonce) -> Result<PayParams, ProviderError> {
        PayParams::sign(&self.link.credentials, prepay_id, now_secs, nonce)
            .map_err(|e| ProviderError::Invalid(e.to_string()))
    }

    fn query_payment<'a>(&'a self, out_trade_no: &'a OutTradeNo) -> Fut<'a, PaymentState> {
        Box::pin(async move {
            let answer = self
                .link
                .call(&OrderQuery::by_out_trade_no(out_trade_no.clone()))
                .await?;
            PaymentState::from_trade_state(
                answer.trade_state,
                answer.transaction_id,
                answer.total_fee,
                answer.time_end.map(ms),
                answer.fee_type,
            )
        })
    }

    fn close_payment<'a>(&'a self, out_trade_no: &'a OutTradeNo) -> Fut<'a, ()> {
        Box::pin(async move {
            self.link.call(&CloseOrder::new(out_trade_no.clone())).await?;
            Ok(())
        })
    }

    fn check_refund(&self, terms: &RefundTerms<'_>) -> Result<(), String> {
        self.refund_call(terms).check().map_err(|e| e.to_string())
    }

    fn refund<'a>(&'a self, terms: &'a RefundTerms<'a>) -> Fut<'a, RefundAccepted> {
        Box::pin(async move {
            let answer = self.link.call(&self.refund_call(terms)).await?;
            Ok(RefundAccepted {
                refund_id: answer.refund_id,
                amount: answer.refund_fee,
            })
        })
    }

    fn query_refund<'a>(&'a self, out_refund_no: &'a OutRefundNo) -> Fut<'a, RefundsOfOrder> {
        Box::pin(async move {
            let answer = self
                .link
                .call(&RefundQuery::by_out_refund_no(out_refund_no.clone()))
                .await?;
            let incomplete = |e: wxpay_protocol::Error| ProviderError::Incomplete(e.to_string());
            Ok(RefundsOfOrder {
                out_trade_no: OutTradeNo::new(answer.out_trade_no).map_err(incomplete)?,
                refunds: answer
                    .refunds
                    .into_iter()
                    .map(|r| {
                        Ok(RefundReport {
                            state: refund_state(&r.refund_status),
                            out_refund_no: OutRefundNo::new(r.out_refund_no).map_err(incomplete)?,
                            refund_id: r.refund_id,
                            amount: r.refund_fee,
                            settled_at: r.refund_success_time.map(ms),
                        })
                    })
                    .collect::<Result<_, ProviderError>>()?,
            })
        })
    }

    fn download_bill<'a>(&'a self, day: BeijingTime, received: Received<'a>) -> Fut<'a, Vec<BillEntry>> {
        Box::pin(async move {
            // A busy merchant's day is tens of megabytes of text, and compresses several times;
            // the protocol unpacks it (and reads a failure's XML as before).
            let mut gzip = true;
            let bill: Bill = loop {
                let call = DownloadBill {
                    bill_date: day,
                    bill_type: BillType::All,
                    gzip,
                    extra: Default::default(),
                };
                match self.link.call_observed(&call, received).await {
                    Ok(bill) => break bill,
                    // A day without transactions has no bill: an empty one.
                    Err(CallError::Refused { message: msg, .. })
                        if msg.to_ascii_lowercase().contains("no bill exist") =>
                    {
                        return Ok(Vec::new());
                    }
                    Err(CallError::Refused { message: msg, .. })
                        if msg.to_ascii_lowercase().contains("bill creating") =>
                    {
                        return Err(ProviderError::BillNotReady);
                    }
                    // WeChat Pay's own compression failed: the same bill as text, at once,
                    // rather than the whole run failing.
                    Err(CallError::Refused { message: msg, .. }) if gzip && gzip_failed(&msg) => {
                        tracing::warn!(return_msg = %msg, "WeChat Pay could not gzip the bill: asking for it as text");
                        gzip = false;
                    }
                    Err(e) => return Err(e.into()),
                }
            };
            Ok(bill.rows.into_iter().map(crate::provider::bill_entry).collect())
        })
    }
}

/// Reads APIv2 notifications: finds the merchant by `mch_id` and `appid`, then verifies the
/// signature (payments) or decrypts `req_info` (refunds) with that merchant's key.
pub(crate) struct V2Inbox {
    /// `(mch_id, appid)` → the merchant's index and credentials.
    merchants: HashMap<(String, String), (usize, Merchant)>,
}

impl V2Inbox {
    /// The inbox of the configured merchants that have an APIv2 key (indexes as in
    /// `merchants`). An APIv3 merchant with one is here too, for both kinds of APIv2
    /// notification: WeChat Pay still sends APIv2 refund notifications for refunds made by
    /// hand in the merchant platform, and its APIv2 payment notifications verify with the
    /// same key.
    pub(crate) fn new(merchants: &[MerchantConfig]) -> V2Inbox {
        V2Inbox {
            merchants: merchants
                .iter()
                .enumerate()
                .filter_map(|(i, m)| {
                    Some((
                        (m.mch_id.as_str().to_owned(), m.appid.as_str().to_owned()),
                        (i, m.credentials()?),
                    ))
                })
                .collect(),
        }
    }

    /// The hardened read, then the merchant.
    fn read<'a, 'b>(&'a self, body: &'b [u8]) -> Result<(NotificationFields<'b>, usize, &'a Merchant), NoticeRejected> {
        let fields = NotificationFields::read(body).map_err(|e| NoticeRejected {
            reason: format!("not a well-formed notification: {e}"),
            merchant: None,
            out_trade_no: None,
            transaction_id: None,
        })?;
        let key = (
            fields.mch_id().unwrap_or("").to_owned(),
            fields.appid().unwrap_or("").to_owned(),
        );
        match self.merchants.get(&key) {
            Some((idx, credentials)) => Ok((fields, *idx, credentials)),
            None => Err(rejected(
                &fields,
                None,
                format!("no merchant configured for mch_id {:?} and appid {:?}", key.0, key.1),
            )),
        }
    }

    /// A payment notification, verified with its merchant's key and algorithm: the merchant's
    /// index and what it reports.
    pub(crate) fn payment(&self, body: &[u8]) -> Result<(usize, PaymentNotice), NoticeRejected> {
        let (fields, idx, credentials) = self.read(body)?;
        let n = fields
            .payment(credentials)
            .map_err(|e| rejected(&fields, Some(idx), format!("verification failed: {e}")))?;
        let outcome = match n.outcome {
            wxpay_protocol::v2::PaymentOutcome::Paid {
                transaction_id,
                total_fee,
                time_end,
            } => NoticeOutcome::Paid {
                transaction_id,
                amount: total_fee,
                paid_at: ms(time_end),
                currency: n.fee_type,
            },
            wxpay_protocol::v2::PaymentOutcome::Failed { code, description } => NoticeOutcome::Failed {
                reason: format!("{code} {description}"),
            },
        };
        let out_trade_no =
            OutTradeNo::new(n.out_trade_no).map_err(|e| rejected(&fields, Some(idx), format!("verified, but {e}")))?;
        Ok((idx, PaymentNotice { out_trade_no, outcome }))
    }

    /// A refund notification, decrypted with its merchant's key: the merchant's index and
    /// what it reports. Nothing authenticates it (AES-ECB): it is a report to check.
    pub(crate) fn refund(&self, body: &[u8]) -> Result<(usize, RefundNotice), NoticeRejected> {
        let (fields, idx, credentials) = self.read(body)?;
        let n = fields.refund(credentials).map_err(|e| {
            rejected(
                &fields,
                Some(idx),
                format!("req_info cannot be read with this merchant's key: {e}"),
            )
        })?;
        let invalid = |e: wxpay_protocol::Error| rejected(&fields, Some(idx), format!("decrypted, but {e}"));
        Ok((
            idx,
            RefundNotice {
                out_trade_no: OutTradeNo::new(n.out_trade_no).map_err(invalid)?,
                transaction_id: n.transaction_id,
                refund: RefundReport {
                    state: refund_state(&n.refund_status),
                    out_refund_no: OutRefundNo::new(n.out_refund_no).map_err(invalid)?,
                    refund_id: n.refund_id,
                    amount: n.refund_fee,
                    settled_at: n.success_time.map(ms),
                },
            },
        ))
    }
}

/// A rejection of a notification that was read: the numbers it names are kept, clipped.
fn rejected(fields: &NotificationFields<'_>, merchant: Option<usize>, reason: String) -> NoticeRejected {
    let field = |name: &str| fields.fields().optional(name).map(|v| clip(v, CLIPPED));
    NoticeRejected {
        reason,
        merchant,
        out_trade_no: field("out_trade_no"),
        transaction_id: field("transaction_id"),
    }
}

/// Whether a `downloadbill` failure is WeChat Pay's compression failing (`CompressGZip Error`,
/// `UnCompressGZip Error` in its table), which asking for the bill as text avoids.
fn gzip_failed(return_msg: &str) -> bool {
    return_msg.to_ascii_lowercase().contains("gzip error")
}
