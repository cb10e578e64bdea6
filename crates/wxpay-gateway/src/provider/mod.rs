//! The one interface through which the gateway's core reaches WeChat Pay.
//!
//! A [`Provider`] speaks for one configured merchant: it creates a payment, queries and
//! closes it, refunds, queries a refund, downloads a day's bill and signs the parameters of
//! `wx.requestPayment`. The core sees typed outcomes ([`PaymentState`], [`RefundState`],
//! [`ProviderError`] with its retry class), never XML, JSON or a protocol's field names.
//! WeChat Pay APIv2 ([`v2`]) and APIv3 ([`v3`]) are its two implementations; notifications of
//! each protocol are read into the same typed events ([`PaymentNotice`], [`RefundNotice`]) by
//! [`v2::V2Inbox`] and [`v3::V3Inbox`].
//!
//! The shape follows what payment platforms with several connectors do (a connector turns
//! the platform's flows into one vendor's calls and back), kept to what wxpay needs: one
//! trait, values in, typed outcomes out, retries and host switching inside the
//! implementation.

use std::future::Future;
use std::pin::Pin;

use wxpay_protocol::{BeijingTime, Fen, Nonce, OutRefundNo, OutTradeNo};

use crate::config::{MerchantConfig, UpstreamConfig};
use crate::time::Millis;

pub(crate) mod hosts;
pub(crate) mod sns;
pub(crate) mod v2;
pub(crate) mod v3;

/// A boxed future of a provider result: providers are used as `Arc<dyn Provider>`.
pub(crate) type Fut<'a, T> = Pin<Box<dyn Future<Output = Result<T, ProviderError>> + Send + 'a>>;

/// How a call to WeChat Pay ended badly, by what the caller may do about it.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum ProviderError {
    /// A business refusal: final, or to be tried again later ([`Retry`]).
    #[error("WeChat Pay refused: {message}")]
    Refused {
        /// What the refusal means to the core.
        reason: Refusal,
        /// Whether trying again later may succeed.
        retry: Retry,
        /// WeChat Pay's code and description, for people and records.
        message: String,
    },
    /// The request itself was refused (a bad signature, a malformed request). It points at
    /// the configuration or this program, never at the payer.
    #[error("WeChat Pay refused the request: {0}")]
    Protocol(String),
    /// No trustworthy answer after every allowed attempt: the call may or may not have
    /// taken effect.
    #[error("no answer from WeChat Pay: {0}")]
    NoAnswer(String),
    /// The request could not be built (a value WeChat Pay would refuse), or needs
    /// configuration the merchant lacks.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// A verified answer that lacks what it must carry.
    #[error("an incomplete answer from WeChat Pay: {0}")]
    Incomplete(String),
    /// The day's bill is not made yet.
    #[error("the bill is not made yet")]
    BillNotReady,
}

/// The refusals the core acts on; every other one is [`Refusal::Other`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The order is paid.
    OrderPaid,
    /// The order is closed.
    OrderClosed,
    /// WeChat Pay does not know the order.
    OrderNotExist,
    /// WeChat Pay does not know the refund.
    RefundNotExist,
    /// Anything else.
    Other,
}

/// Whether a refused call may succeed when made again later, unchanged. (Refusals that ask
/// for an immediate repetition are repeated inside the provider.)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Retry {
    /// Later, slower: a rate limit or a brief block.
    Later,
    /// Never: the answer is final, or needs a human or another call.
    Never,
}

impl From<wxpay_protocol::v2::Retry> for Retry {
    /// WeChat Pay's retry classes (the same for APIv2 codes and APIv3 errors), as the core
    /// acts on them: anything worth repeating is repeated later, by the checks.
    fn from(r: wxpay_protocol::v2::Retry) -> Retry {
        match r {
            wxpay_protocol::v2::Retry::Final => Retry::Never,
            wxpay_protocol::v2::Retry::SameParameters | wxpay_protocol::v2::Retry::WaitAndRetry => Retry::Later,
        }
    }
}

impl ProviderError {
    /// What a refusal of a call that changes WeChat Pay's state (places, closes, refunds)
    /// means when `lost_attempt`: an earlier attempt of the same call got no trustworthy
    /// answer. That attempt may have taken effect, and the refusal may come from that effect
    /// (a refund made by the lost attempt leaves too little to refund; an order placed by it
    /// is then refused another way), so the refusal settles nothing: it is no answer, and the
    /// core asks WeChat Pay, as after any unanswered change. A refusal that states the order's
    /// or the refund's state (paid, closed, unknown) is a fact whatever the lost attempt did,
    /// and stays one.
    pub(crate) fn after_lost_attempt(self, lost_attempt: bool) -> ProviderError {
        match self {
            ProviderError::Refused { reason, .. } if !lost_attempt || reason != Refusal::Other => self,
            ProviderError::Refused { message, .. } | ProviderError::Protocol(message) if lost_attempt => {
                ProviderError::NoAnswer(format!(
                    "{message}, after an earlier attempt without an answer that may have taken effect"
                ))
            }
            other => other,
        }
    }

    /// Whether WeChat Pay failed rather than answered: no answer (which is also what
    /// `SYSTEMERROR` and `BIZERR_NEED_RETRY` become after every attempt), or a refusal to try
    /// again later (a rate limit, APIv3's 503). What the circuit breaker counts.
    pub(crate) fn is_outage(&self) -> bool {
        matches!(
            self,
            ProviderError::NoAnswer(_)
                | ProviderError::Refused {
                    retry: Retry::Later,
                    ..
                }
        )
    }

    /// The refusal's meaning, when this is a business refusal.
    pub(crate) fn refusal(&self) -> Option<Refusal> {
        match self {
            ProviderError::Refused { reason, .. } => Some(*reason),
            _ => None,
        }
    }
}

/// What makes a payment: the same for an order about to be stored and for a stored one, so
/// that a repeated creation has identical parameters.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PaymentTerms<'a> {
    /// What the payer sees.
    pub description: &'a str,
    /// The order's number.
    pub out_trade_no: &'a OutTradeNo,
    /// The amount.
    pub amount: Fen,
    /// The payer's IP address.
    pub client_ip: &'a str,
    /// The payer.
    pub openid: &'a str,
    /// Returned as given in notifications and queries.
    pub attach: Option<&'a str>,
    /// When the order expires, Unix ms.
    pub expires_at: Millis,
}

/// What makes a refund: the same for every repetition of the call.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RefundTerms<'a> {
    /// The order refunded.
    pub out_trade_no: &'a OutTradeNo,
    /// The refund's number.
    pub out_refund_no: &'a OutRefundNo,
    /// The order's amount.
    pub order_amount: Fen,
    /// The amount refunded.
    pub amount: Fen,
    /// The reason the payer sees.
    pub reason: Option<&'a str>,
}

/// What a query says of a payment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum PaymentState {
    /// Paid (and perhaps refunded since).
    Paid {
        /// WeChat Pay's number of the payment.
        transaction_id: String,
        /// The amount paid.
        amount: Fen,
        /// When it was paid (Unix ms), when WeChat Pay says.
        paid_at: Option<Millis>,
        /// The currency, when WeChat Pay names one.
        currency: Option<String>,
        /// Whether a refund was made.
        refunded: bool,
    },
    /// Not paid; the payer can still pay.
    NotPaid,
    /// Closed.
    Closed,
    /// The payment failed.
    Failed,
    /// Anything else (paying, revoked, accepted, unknown), by WeChat Pay's name: nothing to
    /// change.
    Other(String),
}

impl PaymentState {
    /// What a query's `trade_state` means, the same names in both API versions; a paid
    /// state needs its number and amount.
    pub(crate) fn from_trade_state(
        state: wxpay_protocol::v2::TradeState,
        transaction_id: Option<String>,
        amount: Option<Fen>,
        paid_at: Option<Millis>,
        currency: Option<String>,
    ) -> Result<PaymentState, ProviderError> {
        use wxpay_protocol::v2::TradeState;
        Ok(match state {
            TradeState::Success | TradeState::Refund => {
                let (Some(transaction_id), Some(amount)) = (transaction_id, amount) else {
                    return Err(ProviderError::Incomplete(
                        "a paid order's state without its transaction_id or amount".into(),
                    ));
                };
                PaymentState::Paid {
                    transaction_id,
                    amount,
                    paid_at,
                    currency,
                    refunded: state == TradeState::Refund,
                }
            }
            TradeState::NotPay => PaymentState::NotPaid,
            TradeState::Closed => PaymentState::Closed,
            TradeState::PayError => PaymentState::Failed,
            other => PaymentState::Other(other.as_str().to_owned()),
        })
    }

    /// WeChat Pay's name of the state (`SUCCESS`, `REFUND`, `NOTPAY`, …), for people.
    pub(crate) fn as_str(&self) -> &str {
        match self {
            PaymentState::Paid { refunded: false, .. } => "SUCCESS",
            PaymentState::Paid { refunded: true, .. } => "REFUND",
            PaymentState::NotPaid => "NOTPAY",
            PaymentState::Closed => "CLOSED",
            PaymentState::Failed => "PAYERROR",
            PaymentState::Other(s) => s,
        }
    }
}

/// Where a refund stands at WeChat Pay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum RefundState {
    /// Still going.
    Processing,
    /// The money went back.
    Succeeded,
    /// Closed: it failed.
    Closed,
    /// The money could not reach the payer (a closed card); the merchant settles it by hand
    /// in the merchant platform, so for the API the refund failed.
    Abnormal,
    /// A state by WeChat Pay's name that wxpay does not know.
    Other(String),
}

impl RefundState {
    /// WeChat Pay's name of the state (`SUCCESS`, `REFUNDCLOSE`, …), for people and records.
    pub(crate) fn as_str(&self) -> &str {
        match self {
            RefundState::Processing => "PROCESSING",
            RefundState::Succeeded => "SUCCESS",
            RefundState::Closed => "REFUNDCLOSE",
            RefundState::Abnormal => "CHANGE",
            RefundState::Other(s) => s,
        }
    }

    /// The settlement it reports (`true` succeeded, `false` failed), or `None` while it is
    /// processing or unknown.
    pub(crate) fn settles(&self) -> Option<bool> {
        match self {
            RefundState::Succeeded => Some(true),
            RefundState::Closed | RefundState::Abnormal => Some(false),
            RefundState::Processing | RefundState::Other(_) => None,
        }
    }
}

/// A refund WeChat Pay accepted.
#[derive(Clone, Debug)]
pub(crate) struct RefundAccepted {
    /// WeChat Pay's number of the refund.
    pub refund_id: String,
    /// The amount it accepted.
    pub amount: Fen,
}

/// One refund as WeChat Pay reports it (a query or a notification).
#[derive(Clone, Debug)]
pub(crate) struct RefundReport {
    /// The refund's number.
    pub out_refund_no: OutRefundNo,
    /// WeChat Pay's number of the refund.
    pub refund_id: String,
    /// The amount refunded.
    pub amount: Fen,
    /// Where it stands.
    pub state: RefundState,
    /// When it succeeded (Unix ms), when WeChat Pay says.
    pub settled_at: Option<Millis>,
}

/// What a refund query says.
#[derive(Clone, Debug)]
pub(crate) struct RefundsOfOrder {
    /// The order the refunds belong to.
    pub out_trade_no: OutTradeNo,
    /// The refunds listed.
    pub refunds: Vec<RefundReport>,
}

/// A verified payment notification.
#[derive(Clone, Debug)]
pub(crate) struct PaymentNotice {
    /// The order.
    pub out_trade_no: OutTradeNo,
    /// What it reports.
    pub outcome: NoticeOutcome,
}

/// What a payment notification reports.
#[derive(Clone, Debug)]
pub(crate) enum NoticeOutcome {
    /// Paid.
    Paid {
        /// WeChat Pay's number of the payment.
        transaction_id: String,
        /// The amount paid.
        amount: Fen,
        /// When (Unix ms).
        paid_at: Millis,
        /// The currency, when named.
        currency: Option<String>,
    },
    /// The payment failed (the payer may try again).
    Failed {
        /// WeChat Pay's code and description.
        reason: String,
    },
}

/// A decrypted refund notification.
#[derive(Clone, Debug)]
pub(crate) struct RefundNotice {
    /// The order refunded.
    pub out_trade_no: OutTradeNo,
    /// WeChat Pay's number of the payment.
    pub transaction_id: String,
    /// The refund.
    pub refund: RefundReport,
}

/// At most this many characters of a value a rejected notification's sender chose are kept
/// or logged: the sender chooses them, up to the whole body.
pub(crate) const CLIPPED: usize = 128;

/// A notification refused before it was verified: nothing in it is trusted.
#[derive(Debug)]
pub(crate) struct NoticeRejected {
    /// Why, for the log and the record.
    pub reason: String,
    /// The merchant it names, when one is configured.
    pub merchant: Option<usize>,
    /// The order number it names (unverified).
    pub out_trade_no: Option<String>,
    /// The transaction number it names (unverified).
    pub transaction_id: Option<String>,
}

/// One row of a day's bill.
#[derive(Clone, Debug)]
pub(crate) struct BillEntry {
    /// The mini program (empty when the bill does not say).
    pub appid: String,
    /// The order.
    pub out_trade_no: String,
    /// WeChat Pay's number of the payment.
    pub transaction_id: String,
    /// When it happened (Unix ms): paid, or for a refund, accepted.
    pub at: Millis,
    /// A payment or a refund.
    pub kind: BillKind,
}

/// What a bill row records.
#[derive(Clone, Debug)]
pub(crate) enum BillKind {
    /// A payment of this amount.
    Payment {
        /// The amount.
        amount: Fen,
    },
    /// A refund.
    Refund {
        /// Its number, when the bill has it.
        out_refund_no: Option<String>,
        /// The amount asked for.
        amount: Fen,
        /// Its state when the bill was made, by WeChat Pay's name (empty when not given).
        status: String,
    },
}

/// A row of a day's bill: the same file for APIv2's `downloadbill` and APIv3's trade bill.
pub(crate) fn bill_entry(r: wxpay_protocol::v2::BillRow) -> BillEntry {
    let kind = if r.trade_state == "REFUND" || r.out_refund_no.is_some() {
        BillKind::Refund {
            // 申请退款金额 where the layout has it, else 退款金额.
            amount: r.refund_apply_fee.unwrap_or(r.refund_fee),
            out_refund_no: r.out_refund_no,
            status: r.refund_status.unwrap_or_default(),
        }
    } else {
        // 订单金额 where the layout has it, else 应结订单金额.
        BillKind::Payment {
            amount: r.total_fee.unwrap_or(r.settlement_total_fee),
        }
    };
    BillEntry {
        appid: r.appid,
        out_trade_no: r.out_trade_no,
        transaction_id: r.transaction_id,
        at: Millis::from_unix_secs(r.trade_time.unix()),
        kind,
    }
}

/// The parameters of `wx.requestPayment` (`appId`, `timeStamp`, `nonceStr`, `package`,
/// `signType`, `paySign`): the mini program's API, the same whichever payment protocol
/// signed them, so the protocol crate's one type serves every provider.
pub(crate) use wxpay_protocol::v2::PayParams;

/// What a progress display is told as a large answer arrives: bytes so far, and the total
/// when known.
pub(crate) type Received<'a> = &'a (dyn Fn(u64, Option<u64>) + Send + Sync);

/// Where a provider keeps what it downloads (platform certificates) across restarts. The
/// core hands one in, backed by the store, so that a restarted gateway verifies WeChat Pay
/// before WeChat Pay answers again.
pub(crate) trait CertificateKeeper: Send + Sync {
    /// The certificates kept for `merchant` (none when the store cannot say).
    fn load<'a>(&'a self, merchant: &'a str) -> Pin<Box<dyn Future<Output = Vec<KeptCertificate>> + Send + 'a>>;

    /// Keeps `certificates` for `merchant` (a failure is logged, not returned: the
    /// certificates are in use either way).
    fn keep<'a>(
        &'a self,
        merchant: &'a str,
        certificates: Vec<KeptCertificate>,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>>;
}

pub(crate) use crate::store::KeptCertificate;

/// WeChat Pay, for one merchant.
pub(crate) trait Provider: Send + Sync + 'static {
    /// The merchant's configuration.
    fn merchant(&self) -> &MerchantConfig;

    /// Whether calls that need the merchant certificate (refunds) cannot be made at `now`.
    fn lacks_client_cert(&self, now: Millis) -> bool;

    /// Checks everything WeChat Pay would refuse in a payment, before anything is stored;
    /// the error says what is wrong.
    fn check_payment(&self, terms: &PaymentTerms<'_>) -> Result<(), String>;

    /// Creates the payment; answers its prepay id.
    fn create_payment<'a>(&'a self, terms: &'a PaymentTerms<'a>) -> Fut<'a, String>;

    /// Signs the parameters of `wx.requestPayment` for a prepay id, at `now_secs` with
    /// `nonce`.
    fn pay_params(&self, prepay_id: &str, now_secs: u64, nonce: &Nonce) -> Result<PayParams, ProviderError>;

    /// Asks where a payment stands.
    fn query_payment<'a>(&'a self, out_trade_no: &'a OutTradeNo) -> Fut<'a, PaymentState>;

    /// Closes an unpaid payment.
    fn close_payment<'a>(&'a self, out_trade_no: &'a OutTradeNo) -> Fut<'a, ()>;

    /// Checks everything WeChat Pay would refuse in a refund, before anything is stored; the
    /// error says what is wrong.
    fn check_refund(&self, terms: &RefundTerms<'_>) -> Result<(), String>;

    /// Asks for a refund; accepted is not settled.
    fn refund<'a>(&'a self, terms: &'a RefundTerms<'a>) -> Fut<'a, RefundAccepted>;

    /// Asks where a refund stands.
    fn query_refund<'a>(&'a self, out_refund_no: &'a OutRefundNo) -> Fut<'a, RefundsOfOrder>;

    /// Downloads the day's bill of every payment and refund (empty when the day had none).
    fn download_bill<'a>(&'a self, day: BeijingTime, received: Received<'a>) -> Fut<'a, Vec<BillEntry>>;
}

/// Every HTTP client of the gateway starts here: it follows no redirect (a redirected
/// `jscode2session` would carry `secret=` to another host; a redirected call to WeChat Pay or
/// to the webhook is not an answer from it) and sends no `Referer`.
pub(crate) fn strict_client() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .referer(false)
        .user_agent(concat!("wxpay-gateway/", env!("CARGO_PKG_VERSION")))
}

/// A merchant's own HTTP client for WeChat Pay: the configured timeouts, the extra CA when
/// configured (the simulator's, a corporate proxy's), and with `present_cert` the merchant
/// certificate for mutual TLS (APIv2 refunds; APIv3 signs instead).
pub(crate) fn merchant_client(
    config: &MerchantConfig,
    upstream: &UpstreamConfig,
    present_cert: bool,
) -> Result<reqwest::Client, String> {
    let mut builder = client_builder(upstream);
    if let Some(cert) = config.client_cert.as_ref().filter(|_| present_cert) {
        builder = builder.identity(cert.identity());
    }
    if let Some(pem) = &config.ca_pem {
        let cas = reqwest::Certificate::from_pem_bundle(pem)
            .map_err(|e| format!("merchant {}: the CA file does not load: {e}", config.name))?;
        for ca in cas {
            builder = builder.add_root_certificate(ca);
        }
    }
    builder
        .build()
        .map_err(|e| format!("merchant {}: HTTP client: {e}", config.name))
}

/// An HTTP client for WeChat's hosts, with the configured timeouts.
pub(crate) fn client_builder(config: &UpstreamConfig) -> reqwest::ClientBuilder {
    strict_client()
        .timeout(config.timeout)
        .connect_timeout(config.connect_timeout)
}

/// A fresh 32-character nonce.
pub(crate) fn nonce() -> Nonce {
    let mut b = [0u8; 16];
    crate::util::random_bytes(&mut b);
    Nonce::from_random_bytes(b)
}

/// The least time allowed for a call with a large answer (a day's bill: tens of megabytes
/// for a busy merchant), whatever the configured timeout of ordinary calls.
pub(crate) const LARGE_ANSWER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

/// Reads an answer chunk by chunk, telling `received(bytes so far, Content-Length)`.
pub(crate) async fn read_observed(
    mut resp: reqwest::Response,
    received: &(dyn Fn(u64, Option<u64>) + Send + Sync),
) -> Result<bytes::Bytes, reqwest::Error> {
    let total = resp.content_length();
    let mut body = bytes::BytesMut::with_capacity(total.unwrap_or(0).min(1 << 26) as usize);
    while let Some(chunk) = resp.chunk().await? {
        body.extend_from_slice(&chunk);
        received(body.len() as u64, total);
    }
    Ok(body.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(reason: Refusal) -> ProviderError {
        ProviderError::Refused {
            reason,
            retry: Retry::Never,
            message: "CODE description".into(),
        }
    }

    #[test]
    fn a_refusal_after_a_lost_attempt_is_no_answer_unless_it_states_the_order_or_refund() {
        for fact in [
            Refusal::OrderPaid,
            Refusal::OrderClosed,
            Refusal::OrderNotExist,
            Refusal::RefundNotExist,
        ] {
            assert_eq!(refused(fact).after_lost_attempt(true).refusal(), Some(fact));
        }
        for settles_nothing in [
            refused(Refusal::Other),
            ProviderError::Protocol("CODE description".into()),
        ] {
            match settles_nothing.after_lost_attempt(true) {
                ProviderError::NoAnswer(m) => assert!(m.starts_with("CODE description, after"), "{m}"),
                other => panic!("{other:?}"),
            }
        }
        // Without a lost attempt every refusal is WeChat Pay's answer.
        assert_eq!(
            refused(Refusal::Other).after_lost_attempt(false).refusal(),
            Some(Refusal::Other)
        );
        assert!(matches!(
            ProviderError::Protocol("x".into()).after_lost_attempt(false),
            ProviderError::Protocol(_)
        ));
        assert!(matches!(
            ProviderError::Invalid("x".into()).after_lost_attempt(true),
            ProviderError::Invalid(_)
        ));
    }
}
