//! The refund family of APIv2 calls: `secapi/pay/refund` and `pay/refundquery`, each with
//! both directions (the merchant's request and WeChat Pay's reading of it; WeChat Pay's answer
//! and the merchant's reading of it).

use std::borrow::Cow;
use std::collections::BTreeMap;

use super::fields_util::{in_field, parse_with, request_extra};
use super::order::{OrderRef, check_transaction_id, order_ref};
use super::{
    FromFields, ToFields, V2Call, check_notify_url, check_text, decode_signed, extra_fields, fen, insert_extra, num,
    opt_count, opt_fen, opt_string,
};
use crate::{BeijingTime, Error, Fen, Fields, Merchant, OutRefundNo, OutTradeNo};

/// `secapi/pay/refund`: asks for a refund of part or all of a paid order. Needs the
/// merchant's client certificate. A success answer means the refund was *accepted*; its
/// outcome comes from [`RefundQuery`] or the refund notification. To retry, send the same
/// `out_refund_no` with the same amounts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refund {
    /// The order refunded.
    pub order: OrderRef,
    /// `out_refund_no`: the merchant's refund number; one number is refunded at most once.
    pub out_refund_no: OutRefundNo,
    /// `total_fee`: the order's amount.
    pub total_fee: Fen,
    /// `refund_fee`: the amount to refund, at least 1 and at most `total_fee`.
    pub refund_fee: Fen,
    /// `refund_fee_type`; default `CNY`.
    pub refund_fee_type: Option<String>,
    /// `refund_desc`: the reason shown to the payer (at most 80 characters).
    pub refund_desc: Option<String>,
    /// `refund_account`: `REFUND_SOURCE_UNSETTLED_FUNDS` or `REFUND_SOURCE_RECHARGE_FUNDS`.
    pub refund_account: Option<String>,
    /// `notify_url`: where the refund notification goes.
    pub notify_url: Option<String>,
    /// Any other field; signed and sent as is.
    pub extra: BTreeMap<String, String>,
}

impl Refund {
    /// A refund of `refund_fee` out of an order of `total_fee`.
    pub fn new(order: OrderRef, out_refund_no: OutRefundNo, total_fee: Fen, refund_fee: Fen) -> Refund {
        Refund {
            order,
            out_refund_no,
            total_fee,
            refund_fee,
            refund_fee_type: None,
            refund_desc: None,
            refund_account: None,
            notify_url: None,
            extra: BTreeMap::new(),
        }
    }
}

impl Refund {
    /// Checks the rules WeChat Pay applies to a refund request: amounts of at least 1 fen,
    /// a refund no larger than the order, the reason's length, the notification URL and the
    /// funds account.
    ///
    /// # Errors
    /// [`Error::InvalidField`] naming the field.
    pub fn check(&self) -> Result<(), Error> {
        if self.total_fee == Fen::ZERO {
            return Err(Error::field("total_fee", "must be at least 1 fen"));
        }
        if self.refund_fee == Fen::ZERO {
            return Err(Error::field("refund_fee", "must be at least 1 fen"));
        }
        if self.refund_fee > self.total_fee {
            return Err(Error::field(
                "refund_fee",
                format!(
                    "{} fen is more than the order's {} fen",
                    self.refund_fee, self.total_fee
                ),
            ));
        }
        if let OrderRef::TransactionId(t) = &self.order {
            check_transaction_id(t)?;
        }
        if let Some(d) = &self.refund_desc {
            check_text("refund_desc", d, 80)?;
        }
        if let Some(u) = &self.notify_url {
            check_notify_url("notify_url", u)?;
        }
        if let Some(a) = &self.refund_account {
            if !matches!(
                a.as_str(),
                "REFUND_SOURCE_UNSETTLED_FUNDS" | "REFUND_SOURCE_RECHARGE_FUNDS"
            ) {
                return Err(Error::field(
                    "refund_account",
                    format!("{a:?} is not REFUND_SOURCE_UNSETTLED_FUNDS or REFUND_SOURCE_RECHARGE_FUNDS"),
                ));
            }
        }
        Ok(())
    }
}

impl ToFields for Refund {
    fn to_fields<'a>(&'a self, out: &mut Fields<'a>) -> Result<(), Error> {
        self.check()?;
        self.order.to_fields(out)?;
        out.insert("out_refund_no", self.out_refund_no.as_str())?;
        out.insert("total_fee", num(self.total_fee))?;
        out.insert("refund_fee", num(self.refund_fee))?;
        out.insert_opt("refund_fee_type", self.refund_fee_type.as_deref())?;
        out.insert_opt("refund_desc", self.refund_desc.as_deref())?;
        out.insert_opt("refund_account", self.refund_account.as_deref())?;
        out.insert_opt("notify_url", self.notify_url.as_deref())?;
        insert_extra(out, &self.extra)
    }
}

impl FromFields for Refund {
    fn from_fields(f: &Fields<'_>) -> Result<Self, Error> {
        let refund = Refund {
            order: order_ref(f)?,
            out_refund_no: parse_with(f, "out_refund_no", |s| OutRefundNo::new(s))?,
            total_fee: parse_with(f, "total_fee", Fen::parse)?,
            refund_fee: parse_with(f, "refund_fee", Fen::parse)?,
            refund_fee_type: opt_string(f, "refund_fee_type"),
            refund_desc: opt_string(f, "refund_desc"),
            refund_account: opt_string(f, "refund_account"),
            notify_url: opt_string(f, "notify_url"),
            extra: request_extra(
                f,
                &[
                    "notify_url",
                    "out_refund_no",
                    "out_trade_no",
                    "refund_account",
                    "refund_desc",
                    "refund_fee",
                    "refund_fee_type",
                    "total_fee",
                    "transaction_id",
                ],
            ),
        };
        refund.check()?;
        Ok(refund)
    }
}

/// The answer to [`Refund`]: the refund was accepted (not yet completed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefundResponse {
    /// `transaction_id`.
    pub transaction_id: String,
    /// `out_trade_no`.
    pub out_trade_no: String,
    /// `out_refund_no`.
    pub out_refund_no: String,
    /// `refund_id`: WeChat Pay's refund number.
    pub refund_id: String,
    /// `refund_fee`.
    pub refund_fee: Fen,
    /// `settlement_refund_fee`.
    pub settlement_refund_fee: Option<Fen>,
    /// `total_fee`.
    pub total_fee: Fen,
    /// `settlement_total_fee`.
    pub settlement_total_fee: Option<Fen>,
    /// `cash_fee`.
    pub cash_fee: Option<Fen>,
    /// `cash_refund_fee`.
    pub cash_refund_fee: Option<Fen>,
    /// `coupon_refund_fee`.
    pub coupon_refund_fee: Option<Fen>,
    /// `coupon_refund_count`.
    pub coupon_refund_count: Option<u32>,
    /// `fee_type`.
    pub fee_type: Option<String>,
    /// `refund_channel` (usually empty).
    pub refund_channel: Option<String>,
    /// Fields this crate has no name for.
    pub extra: BTreeMap<String, String>,
}

impl FromFields for RefundResponse {
    fn from_fields(f: &Fields<'_>) -> Result<Self, Error> {
        Ok(RefundResponse {
            transaction_id: f.require("transaction_id")?.to_owned(),
            out_trade_no: f.require("out_trade_no")?.to_owned(),
            out_refund_no: f.require("out_refund_no")?.to_owned(),
            refund_id: f.require("refund_id")?.to_owned(),
            refund_fee: fen(f, "refund_fee")?,
            settlement_refund_fee: opt_fen(f, "settlement_refund_fee")?,
            total_fee: fen(f, "total_fee")?,
            settlement_total_fee: opt_fen(f, "settlement_total_fee")?,
            cash_fee: opt_fen(f, "cash_fee")?,
            cash_refund_fee: opt_fen(f, "cash_refund_fee")?,
            coupon_refund_fee: opt_fen(f, "coupon_refund_fee")?,
            coupon_refund_count: opt_count(f, "coupon_refund_count")?,
            fee_type: opt_string(f, "fee_type"),
            refund_channel: opt_string(f, "refund_channel"),
            extra: extra_fields(
                f,
                &[
                    "cash_fee",
                    "cash_refund_fee",
                    "coupon_refund_count",
                    "coupon_refund_fee",
                    "fee_type",
                    "out_refund_no",
                    "out_trade_no",
                    "refund_channel",
                    "refund_fee",
                    "refund_id",
                    "settlement_refund_fee",
                    "settlement_total_fee",
                    "total_fee",
                    "transaction_id",
                ],
                &[],
            ),
        })
    }
}

impl ToFields for RefundResponse {
    fn to_fields<'a>(&'a self, out: &mut Fields<'a>) -> Result<(), Error> {
        out.insert("transaction_id", self.transaction_id.as_str())?;
        out.insert("out_trade_no", self.out_trade_no.as_str())?;
        out.insert("out_refund_no", self.out_refund_no.as_str())?;
        out.insert("refund_id", self.refund_id.as_str())?;
        out.insert("refund_fee", num(self.refund_fee))?;
        out.insert_opt("settlement_refund_fee", self.settlement_refund_fee.map(num))?;
        out.insert("total_fee", num(self.total_fee))?;
        out.insert_opt("settlement_total_fee", self.settlement_total_fee.map(num))?;
        out.insert_opt("cash_fee", self.cash_fee.map(num))?;
        out.insert_opt("cash_refund_fee", self.cash_refund_fee.map(num))?;
        out.insert_opt("coupon_refund_fee", self.coupon_refund_fee.map(num))?;
        out.insert_opt("coupon_refund_count", self.coupon_refund_count.map(num))?;
        out.insert_opt("fee_type", self.fee_type.as_deref())?;
        // Live answers carry an empty refund_channel; empty fields take no part in the sign.
        out.insert("refund_channel", self.refund_channel.as_deref().unwrap_or(""))?;
        insert_extra(out, &self.extra)
    }
}

impl V2Call for Refund {
    type Response = RefundResponse;
    const PATH: &'static str = "/secapi/pay/refund";
    const CHANGES: bool = true;
    const CLIENT_CERT: bool = true;
    fn decode(body: &[u8], merchant: &Merchant) -> Result<Self::Response, Error> {
        decode_signed(body, merchant)
    }
}

/// Which refunds a [`RefundQuery`] asks about, in WeChat Pay's order of precedence.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum RefundRef {
    /// One refund by WeChat Pay's refund number.
    RefundId(String),
    /// One refund by the merchant's refund number.
    OutRefundNo(OutRefundNo),
    /// All refunds of an order by WeChat Pay's order number.
    TransactionId(String),
    /// All refunds of an order by the merchant's order number.
    OutTradeNo(OutTradeNo),
}

/// `pay/refundquery`: the state of refunds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefundQuery {
    /// What is asked about.
    pub by: RefundRef,
    /// `offset`: for orders with more than 10 refunds, the first refund to return.
    pub offset: Option<u32>,
    /// Any other field; signed and sent as is.
    pub extra: BTreeMap<String, String>,
}

impl RefundQuery {
    /// Asks about the refund `out_refund_no`.
    pub fn by_out_refund_no(out_refund_no: OutRefundNo) -> RefundQuery {
        RefundQuery {
            by: RefundRef::OutRefundNo(out_refund_no),
            offset: None,
            extra: BTreeMap::new(),
        }
    }
}

impl ToFields for RefundQuery {
    fn to_fields<'a>(&'a self, out: &mut Fields<'a>) -> Result<(), Error> {
        match &self.by {
            RefundRef::RefundId(id) => {
                if id.is_empty() || id.len() > 32 || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
                    return Err(Error::field(
                        "refund_id",
                        format!("{id:?} is not a WeChat Pay refund number"),
                    ));
                }
                out.insert("refund_id", id.as_str())?;
            }
            RefundRef::OutRefundNo(n) => out.insert("out_refund_no", n.as_str())?,
            RefundRef::TransactionId(t) => {
                check_transaction_id(t)?;
                out.insert("transaction_id", t.as_str())?;
            }
            RefundRef::OutTradeNo(n) => out.insert("out_trade_no", n.as_str())?,
        }
        out.insert_opt("offset", self.offset.map(num))?;
        insert_extra(out, &self.extra)
    }
}

impl FromFields for RefundQuery {
    fn from_fields(f: &Fields<'_>) -> Result<Self, Error> {
        // WeChat Pay's precedence: refund_id, out_refund_no, transaction_id, out_trade_no.
        let by = if let Some(id) = f.optional("refund_id") {
            RefundRef::RefundId(id.to_owned())
        } else if let Some(no) = f.optional("out_refund_no") {
            RefundRef::OutRefundNo(OutRefundNo::new(no).map_err(|e| in_field("out_refund_no", e))?)
        } else if let Some(t) = f.optional("transaction_id") {
            check_transaction_id(t)?;
            RefundRef::TransactionId(t.to_owned())
        } else if let Some(no) = f.optional("out_trade_no") {
            RefundRef::OutTradeNo(OutTradeNo::new(no).map_err(|e| in_field("out_trade_no", e))?)
        } else {
            return Err(Error::MissingField("out_refund_no".into()));
        };
        let offset = opt_count(f, "offset")?;
        Ok(RefundQuery {
            by,
            offset,
            extra: request_extra(
                f,
                &["offset", "out_refund_no", "out_trade_no", "refund_id", "transaction_id"],
            ),
        })
    }
}

/// `refund_status_$n`: where a refund is.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum RefundStatus {
    /// `SUCCESS`: the money went back.
    Success,
    /// `REFUNDCLOSE`: the refund was closed; it failed.
    RefundClose,
    /// `PROCESSING`: still going.
    Processing,
    /// `CHANGE`: abnormal (the card was frozen or cancelled); needs a human.
    Change,
    /// A value this crate does not know.
    Other(String),
}

impl RefundStatus {
    /// Reads the wire value.
    pub fn parse(s: &str) -> RefundStatus {
        match s {
            "SUCCESS" => RefundStatus::Success,
            "REFUNDCLOSE" => RefundStatus::RefundClose,
            "PROCESSING" => RefundStatus::Processing,
            "CHANGE" => RefundStatus::Change,
            other => RefundStatus::Other(other.to_owned()),
        }
    }

    /// The wire value.
    pub fn as_str(&self) -> &str {
        match self {
            RefundStatus::Success => "SUCCESS",
            RefundStatus::RefundClose => "REFUNDCLOSE",
            RefundStatus::Processing => "PROCESSING",
            RefundStatus::Change => "CHANGE",
            RefundStatus::Other(s) => s,
        }
    }
}

/// One refund in a [`RefundQueryResponse`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefundRecord {
    /// `out_refund_no_$n`.
    pub out_refund_no: String,
    /// `refund_id_$n`.
    pub refund_id: String,
    /// `refund_fee_$n`.
    pub refund_fee: Fen,
    /// `settlement_refund_fee_$n`.
    pub settlement_refund_fee: Option<Fen>,
    /// `refund_status_$n`.
    pub refund_status: RefundStatus,
    /// `refund_channel_$n`.
    pub refund_channel: Option<String>,
    /// `refund_account_$n`.
    pub refund_account: Option<String>,
    /// `refund_recv_accout_$n` (WeChat Pay's spelling).
    pub refund_recv_accout: Option<String>,
    /// `refund_success_time_$n` (`yyyy-MM-dd HH:mm:ss`).
    pub refund_success_time: Option<BeijingTime>,
    /// `coupon_refund_fee_$n`.
    pub coupon_refund_fee: Option<Fen>,
    /// `coupon_refund_count_$n`.
    pub coupon_refund_count: Option<u32>,
}

/// The answer to [`RefundQuery`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefundQueryResponse {
    /// `transaction_id`.
    pub transaction_id: String,
    /// `out_trade_no`.
    pub out_trade_no: String,
    /// `total_fee`.
    pub total_fee: Fen,
    /// `settlement_total_fee`.
    pub settlement_total_fee: Option<Fen>,
    /// `cash_fee`.
    pub cash_fee: Option<Fen>,
    /// `fee_type`.
    pub fee_type: Option<String>,
    /// `refund_fee`: the sum of the refunds in this answer.
    pub refund_fee: Option<Fen>,
    /// `total_refund_count` (only when `offset` was sent).
    pub total_refund_count: Option<u32>,
    /// The refunds, from `_0` to `_{refund_count-1}`.
    pub refunds: Vec<RefundRecord>,
    /// Fields this crate has no name for.
    pub extra: BTreeMap<String, String>,
}

impl FromFields for RefundQueryResponse {
    fn from_fields(f: &Fields<'_>) -> Result<Self, Error> {
        let count = opt_count(f, "refund_count")?.ok_or_else(|| Error::MissingField("refund_count".into()))?;
        let mut refunds = Vec::with_capacity(count.min(50) as usize);
        for n in 0..count.min(1000) {
            let name = |p: &str| format!("{p}_{n}");
            let status = f.require(&name("refund_status"))?;
            let success_time = f
                .optional(&name("refund_success_time"))
                .map(|v| {
                    BeijingTime::parse_dashed(v).map_err(|e| Error::field(&name("refund_success_time"), e.to_string()))
                })
                .transpose()?;
            refunds.push(RefundRecord {
                out_refund_no: f.require(&name("out_refund_no"))?.to_owned(),
                refund_id: f.require(&name("refund_id"))?.to_owned(),
                refund_fee: fen(f, &name("refund_fee"))?,
                settlement_refund_fee: opt_fen(f, &name("settlement_refund_fee"))?,
                refund_status: RefundStatus::parse(status),
                refund_channel: opt_string(f, &name("refund_channel")),
                refund_account: opt_string(f, &name("refund_account")),
                refund_recv_accout: opt_string(f, &name("refund_recv_accout")),
                refund_success_time: success_time,
                coupon_refund_fee: opt_fen(f, &name("coupon_refund_fee"))?,
                coupon_refund_count: opt_count(f, &name("coupon_refund_count"))?,
            });
        }
        Ok(RefundQueryResponse {
            transaction_id: f.require("transaction_id")?.to_owned(),
            out_trade_no: f.require("out_trade_no")?.to_owned(),
            total_fee: fen(f, "total_fee")?,
            settlement_total_fee: opt_fen(f, "settlement_total_fee")?,
            cash_fee: opt_fen(f, "cash_fee")?,
            fee_type: opt_string(f, "fee_type"),
            refund_fee: opt_fen(f, "refund_fee")?,
            total_refund_count: opt_count(f, "total_refund_count")?,
            refunds,
            extra: extra_fields(
                f,
                &[
                    "cash_fee",
                    "cash_refund_fee",
                    "coupon_refund_fee",
                    "fee_type",
                    "out_trade_no",
                    "refund_count",
                    "refund_fee",
                    "settlement_total_fee",
                    "total_fee",
                    "total_refund_count",
                    "transaction_id",
                ],
                &[
                    "coupon_refund_count",
                    "coupon_refund_fee",
                    "coupon_refund_id",
                    "coupon_type",
                    "out_refund_no",
                    "refund_account",
                    "refund_channel",
                    "refund_fee",
                    "refund_id",
                    "refund_recv_accout",
                    "refund_status",
                    "refund_success_time",
                    "settlement_refund_fee",
                ],
            ),
        })
    }
}

impl ToFields for RefundQueryResponse {
    fn to_fields<'a>(&'a self, out: &mut Fields<'a>) -> Result<(), Error> {
        out.insert("transaction_id", self.transaction_id.as_str())?;
        out.insert("out_trade_no", self.out_trade_no.as_str())?;
        out.insert("total_fee", num(self.total_fee))?;
        out.insert_opt("settlement_total_fee", self.settlement_total_fee.map(num))?;
        out.insert_opt("cash_fee", self.cash_fee.map(num))?;
        out.insert_opt("fee_type", self.fee_type.as_deref())?;
        out.insert_opt("refund_fee", self.refund_fee.map(num))?;
        out.insert_opt("total_refund_count", self.total_refund_count.map(num))?;
        out.insert("refund_count", num(self.refunds.len()))?;
        for (n, r) in self.refunds.iter().enumerate() {
            refund_record_fields(out, n, r)?;
        }
        insert_extra(out, &self.extra)
    }
}

fn refund_record_fields<'a>(out: &mut Fields<'a>, n: usize, r: &'a RefundRecord) -> Result<(), Error> {
    let name = |p: &str| -> Cow<'a, str> { Cow::Owned(format!("{p}_{n}")) };
    out.insert(name("out_refund_no"), r.out_refund_no.as_str())?;
    out.insert(name("refund_id"), r.refund_id.as_str())?;
    out.insert(name("refund_fee"), num(r.refund_fee))?;
    out.insert(name("refund_status"), r.refund_status.as_str())?;
    if let Some(v) = r.settlement_refund_fee {
        out.insert(name("settlement_refund_fee"), num(v))?;
    }
    if let Some(v) = &r.refund_channel {
        out.insert(name("refund_channel"), v.as_str())?;
    }
    if let Some(v) = &r.refund_account {
        out.insert(name("refund_account"), v.as_str())?;
    }
    if let Some(v) = &r.refund_recv_accout {
        out.insert(name("refund_recv_accout"), v.as_str())?;
    }
    if let Some(v) = r.refund_success_time {
        out.insert(name("refund_success_time"), v.to_dashed())?;
    }
    if let Some(v) = r.coupon_refund_fee {
        out.insert(name("coupon_refund_fee"), num(v))?;
    }
    if let Some(v) = r.coupon_refund_count {
        out.insert(name("coupon_refund_count"), num(v))?;
    }
    Ok(())
}

impl V2Call for RefundQuery {
    type Response = RefundQueryResponse;
    const PATH: &'static str = "/pay/refundquery";
    const CHANGES: bool = false;
    fn decode(body: &[u8], merchant: &Merchant) -> Result<Self::Response, Error> {
        decode_signed(body, merchant)
    }
}
