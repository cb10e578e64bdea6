//! WeChat Pay's side of APIv2: reading requests, writing signed answers, notifications and
//! bills. The simulator is built on this; so are tests that play WeChat Pay.

use std::borrow::Cow;
use std::collections::BTreeMap;

use super::bill::{Bill, BillFee, BillRow, BillSummary, BillType};
use super::calls::opt_time;
use super::calls::{
    CloseOrder, CloseOrderResponse, Coupon, DownloadBill, OrderQuery, OrderQueryResponse, OrderRef, Refund,
    RefundQuery, RefundQueryResponse, RefundRecord, RefundRef, RefundResponse, TradeType, UnifiedOrder,
    UnifiedOrderResponse, check_transaction_id,
};
use super::notify::{PaymentNotification, PaymentOutcome, RefundNotification, encrypt_req_info};
use super::{ErrCode, FromFields, ToFields, insert_extra, num, opt_count, opt_string};
use crate::{ApiKey, BeijingTime, Error, Fen, Fields, Nonce, OutRefundNo, OutTradeNo, SignType};

/// The fields every request carries besides its own; sorted.
const REQUEST_ENVELOPE: &[&str] = &["appid", "mch_id", "nonce_str", "sign", "sign_type"];

/// The fields of a request not in `known` (sorted) nor in the envelope.
fn request_extra(f: &Fields<'_>, known: &[&str]) -> BTreeMap<String, String> {
    super::unknown_fields(f, REQUEST_ENVELOPE, known, &[])
}

fn parse_with<T>(f: &Fields<'_>, name: &str, parse: impl FnOnce(&str) -> Result<T, Error>) -> Result<T, Error> {
    parse(f.require(name)?).map_err(|e| in_field(name, e))
}

/// A value's error as an error of the field it came from.
fn in_field(name: &str, e: Error) -> Error {
    match e {
        Error::Invalid { reason, .. } => Error::field(name, reason),
        other => other,
    }
}

fn order_ref(f: &Fields<'_>) -> Result<OrderRef, Error> {
    // WeChat Pay prefers transaction_id when both are given.
    if let Some(t) = f.optional("transaction_id") {
        check_transaction_id(t)?;
        return Ok(OrderRef::TransactionId(t.to_owned()));
    }
    Ok(OrderRef::OutTradeNo(parse_with(f, "out_trade_no", |s| {
        OutTradeNo::new(s)
    })?))
}

impl FromFields for UnifiedOrder {
    fn from_fields(f: &Fields<'_>) -> Result<Self, Error> {
        let order = UnifiedOrder {
            body: f.require("body")?.to_owned(),
            out_trade_no: parse_with(f, "out_trade_no", |s| OutTradeNo::new(s))?,
            total_fee: parse_with(f, "total_fee", Fen::parse)?,
            spbill_create_ip: f.require("spbill_create_ip")?.to_owned(),
            notify_url: f.require("notify_url")?.to_owned(),
            trade_type: TradeType::parse(f.require("trade_type")?),
            openid: opt_string(f, "openid"),
            attach: opt_string(f, "attach"),
            detail: opt_string(f, "detail"),
            device_info: opt_string(f, "device_info"),
            fee_type: opt_string(f, "fee_type"),
            time_start: opt_time(f, "time_start")?,
            time_expire: opt_time(f, "time_expire")?,
            goods_tag: opt_string(f, "goods_tag"),
            limit_pay: opt_string(f, "limit_pay"),
            receipt: opt_string(f, "receipt"),
            profit_sharing: opt_string(f, "profit_sharing"),
            scene_info: opt_string(f, "scene_info"),
            extra: request_extra(
                f,
                &[
                    "attach",
                    "body",
                    "detail",
                    "device_info",
                    "fee_type",
                    "goods_tag",
                    "limit_pay",
                    "notify_url",
                    "openid",
                    "out_trade_no",
                    "profit_sharing",
                    "receipt",
                    "scene_info",
                    "spbill_create_ip",
                    "time_expire",
                    "time_start",
                    "total_fee",
                    "trade_type",
                ],
            ),
        };
        order.check()?;
        Ok(order)
    }
}

impl FromFields for OrderQuery {
    fn from_fields(f: &Fields<'_>) -> Result<Self, Error> {
        Ok(OrderQuery {
            order: order_ref(f)?,
            extra: request_extra(f, &["out_trade_no", "transaction_id"]),
        })
    }
}

impl FromFields for CloseOrder {
    fn from_fields(f: &Fields<'_>) -> Result<Self, Error> {
        Ok(CloseOrder {
            out_trade_no: parse_with(f, "out_trade_no", |s| OutTradeNo::new(s))?,
            extra: request_extra(f, &["out_trade_no"]),
        })
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

impl FromFields for DownloadBill {
    fn from_fields(f: &Fields<'_>) -> Result<Self, Error> {
        let date = f.require("bill_date")?;
        let bill_date = if date.len() == 8 {
            BeijingTime::parse_compact(&format!("{date}000000")).ok()
        } else {
            None
        }
        .ok_or_else(|| Error::field("bill_date", format!("{date:?} is not a yyyyMMdd date")))?;
        let bill_type = match f.optional("bill_type") {
            None => BillType::All,
            Some(t) => BillType::parse(t).map_err(|e| Error::field("bill_type", e.to_string()))?,
        };
        Ok(DownloadBill {
            bill_date,
            bill_type,
            extra: request_extra(f, &["bill_date", "bill_type"]),
        })
    }
}

fn insert_coupons<'a>(out: &mut Fields<'a>, coupons: &'a [Coupon]) -> Result<(), Error> {
    if coupons.is_empty() {
        return Ok(());
    }
    out.insert("coupon_count", num(coupons.len()))?;
    for (n, c) in coupons.iter().enumerate() {
        out.insert(format!("coupon_id_{n}"), c.id.as_str())?;
        out.insert(format!("coupon_fee_{n}"), num(c.fee))?;
        if let Some(k) = &c.kind {
            out.insert(format!("coupon_type_{n}"), k.as_str())?;
        }
    }
    Ok(())
}

impl ToFields for UnifiedOrderResponse {
    fn to_fields<'a>(&'a self, out: &mut Fields<'a>) -> Result<(), Error> {
        out.insert("prepay_id", self.prepay_id.as_str())?;
        out.insert("trade_type", self.trade_type.as_str())?;
        out.insert_opt("code_url", self.code_url.as_deref())?;
        out.insert_opt("mweb_url", self.mweb_url.as_deref())?;
        out.insert_opt("device_info", self.device_info.as_deref())?;
        insert_extra(out, &self.extra)
    }
}

impl ToFields for OrderQueryResponse {
    fn to_fields<'a>(&'a self, out: &mut Fields<'a>) -> Result<(), Error> {
        out.insert("trade_state", self.trade_state.as_str())?;
        out.insert_opt("trade_state_desc", self.trade_state_desc.as_deref())?;
        out.insert("out_trade_no", self.out_trade_no.as_str())?;
        out.insert_opt("transaction_id", self.transaction_id.as_deref())?;
        out.insert_opt("total_fee", self.total_fee.map(num))?;
        out.insert_opt("cash_fee", self.cash_fee.map(num))?;
        out.insert_opt("settlement_total_fee", self.settlement_total_fee.map(num))?;
        out.insert_opt("coupon_fee", self.coupon_fee.map(num))?;
        insert_coupons(out, &self.coupons)?;
        out.insert_opt("fee_type", self.fee_type.as_deref())?;
        out.insert_opt("cash_fee_type", self.cash_fee_type.as_deref())?;
        out.insert_opt("openid", self.openid.as_deref())?;
        out.insert_opt("is_subscribe", self.is_subscribe.as_deref())?;
        out.insert_opt("trade_type", self.trade_type.as_ref().map(TradeType::as_str))?;
        out.insert_opt("bank_type", self.bank_type.as_deref())?;
        out.insert_opt("time_end", self.time_end.map(BeijingTime::to_compact))?;
        out.insert_opt("attach", self.attach.as_deref())?;
        out.insert_opt("device_info", self.device_info.as_deref())?;
        insert_extra(out, &self.extra)
    }
}

impl ToFields for CloseOrderResponse {
    fn to_fields<'a>(&'a self, out: &mut Fields<'a>) -> Result<(), Error> {
        out.insert_opt("result_msg", self.result_msg.as_deref())?;
        insert_extra(out, &self.extra)
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

/// The protocol-level refusal WeChat Pay sends when it cannot even look at a request (bad
/// XML, bad signature, not POST): `return_code=FAIL` with a message, and no signature.
pub fn return_fail(return_msg: &str) -> String {
    super::fail_reply(return_msg, "FAIL")
}

/// Who signs an answer, and with what: the merchant's appid and key, the algorithm of the
/// request, and a fresh nonce.
#[derive(Debug, Clone, Copy)]
pub struct AnswerSigner<'m> {
    /// The appid the request named.
    pub appid: &'m str,
    /// The merchant.
    pub mch_id: &'m str,
    /// The merchant's key.
    pub key: &'m ApiKey,
    /// The algorithm of the request.
    pub sign_type: SignType,
    /// A fresh nonce for this answer.
    pub nonce: &'m Nonce,
}

impl AnswerSigner<'_> {
    fn envelope<'a>(&'a self, result_code: &'a str) -> Result<Fields<'a>, Error> {
        let mut f = Fields::with_capacity(24);
        f.insert("return_code", "SUCCESS")?;
        f.insert("return_msg", "OK")?;
        f.insert("appid", self.appid)?;
        f.insert("mch_id", self.mch_id)?;
        f.insert("nonce_str", self.nonce.as_str())?;
        f.insert("result_code", result_code)?;
        Ok(f)
    }

    /// A signed success answer carrying `answer`'s fields.
    ///
    /// # Errors
    /// When the answer's fields clash with the envelope, or cannot be written as XML.
    pub fn success(&self, answer: &impl ToFields) -> Result<String, Error> {
        let mut f = self.envelope("SUCCESS")?;
        answer.to_fields(&mut f)?;
        f.sign(self.key, self.sign_type);
        f.to_xml()
    }

    /// A signed business refusal (`result_code=FAIL`, `err_code`, `err_code_des`).
    ///
    /// # Errors
    /// When the description cannot be written as XML.
    pub fn business_error(&self, code: &ErrCode, description: &str) -> Result<String, Error> {
        let mut f = self.envelope("FAIL")?;
        f.insert("err_code", code.as_str())?;
        f.insert("err_code_des", description)?;
        f.sign(self.key, self.sign_type);
        f.to_xml()
    }
}

impl PaymentNotification {
    /// The notification as WeChat Pay posts it, signed with `key` and `sign_type`. A
    /// `sign_type` field is included for HMAC-SHA256, as WeChat Pay does.
    ///
    /// # Errors
    /// When a field cannot be written as XML.
    pub fn encode(&self, key: &ApiKey, sign_type: SignType, nonce: &Nonce) -> Result<String, Error> {
        let mut f = Fields::with_capacity(32);
        f.insert("return_code", "SUCCESS")?;
        f.insert("appid", self.appid.as_str())?;
        f.insert("mch_id", self.mch_id.as_str())?;
        f.insert("nonce_str", nonce.as_str())?;
        f.insert("out_trade_no", self.out_trade_no.as_str())?;
        if sign_type == SignType::HmacSha256 {
            f.insert("sign_type", sign_type.as_str())?;
        }
        match &self.outcome {
            PaymentOutcome::Paid {
                transaction_id,
                total_fee,
                time_end,
            } => {
                f.insert("result_code", "SUCCESS")?;
                f.insert("transaction_id", transaction_id.as_str())?;
                f.insert("total_fee", num(total_fee))?;
                f.insert("time_end", time_end.to_compact())?;
            }
            PaymentOutcome::Failed { code, description } => {
                f.insert("result_code", "FAIL")?;
                f.insert("err_code", code.as_str())?;
                f.insert("err_code_des", description.as_str())?;
            }
        }
        f.insert_opt("openid", self.openid.as_deref())?;
        f.insert_opt("cash_fee", self.cash_fee.map(num))?;
        f.insert_opt("settlement_total_fee", self.settlement_total_fee.map(num))?;
        f.insert_opt("coupon_fee", self.coupon_fee.map(num))?;
        insert_coupons(&mut f, &self.coupons)?;
        f.insert_opt("fee_type", self.fee_type.as_deref())?;
        f.insert_opt("cash_fee_type", self.cash_fee_type.as_deref())?;
        f.insert_opt("bank_type", self.bank_type.as_deref())?;
        f.insert_opt("trade_type", self.trade_type.as_ref().map(TradeType::as_str))?;
        f.insert_opt("is_subscribe", self.is_subscribe.as_deref())?;
        f.insert_opt("attach", self.attach.as_deref())?;
        f.insert_opt("device_info", self.device_info.as_deref())?;
        insert_extra(&mut f, &self.extra)?;
        f.sign(key, sign_type);
        f.to_xml()
    }
}

impl RefundNotification {
    /// The notification as WeChat Pay posts it: the refund's fields in a `<root>` document,
    /// encrypted into `req_info` with `key`; no signature.
    ///
    /// # Errors
    /// When a field cannot be written as XML.
    pub fn encode(&self, key: &ApiKey, nonce: &Nonce) -> Result<String, Error> {
        let mut inner = Fields::with_capacity(16);
        inner.insert("transaction_id", self.transaction_id.as_str())?;
        inner.insert("out_trade_no", self.out_trade_no.as_str())?;
        inner.insert("refund_id", self.refund_id.as_str())?;
        inner.insert("out_refund_no", self.out_refund_no.as_str())?;
        inner.insert("total_fee", num(self.total_fee))?;
        inner.insert_opt("settlement_total_fee", self.settlement_total_fee.map(num))?;
        inner.insert("refund_fee", num(self.refund_fee))?;
        inner.insert_opt("settlement_refund_fee", self.settlement_refund_fee.map(num))?;
        inner.insert("refund_status", self.refund_status.as_str())?;
        inner.insert_opt("success_time", self.success_time.map(BeijingTime::to_dashed))?;
        inner.insert_opt("refund_recv_accout", self.refund_recv_accout.as_deref())?;
        inner.insert_opt("refund_account", self.refund_account.as_deref())?;
        inner.insert_opt("refund_request_source", self.refund_request_source.as_deref())?;
        insert_extra(&mut inner, &self.extra)?;
        let plain = crate::xml::write("root", inner.iter())?;
        let req_info = encrypt_req_info(&plain, key);
        crate::xml::write(
            "xml",
            [
                ("return_code", "SUCCESS"),
                ("appid", self.appid.as_str()),
                ("mch_id", self.mch_id.as_str()),
                ("nonce_str", nonce.as_str()),
                ("req_info", req_info.as_str()),
            ],
        )
    }
}

/// The columns of the current (2018+) bill layouts, in order, with the layouts that have
/// them: `ALL` (27 columns), `SUCCESS` (20), `REFUND` (29).
const COLUMNS: &[(&str, u8)] = {
    const A: u8 = 1;
    const S: u8 = 2;
    const R: u8 = 4;
    &[
        ("交易时间", A | S | R),
        ("公众账号ID", A | S | R),
        ("商户号", A | S | R),
        ("特约商户号", A | S | R),
        ("设备号", A | S | R),
        ("微信订单号", A | S | R),
        ("商户订单号", A | S | R),
        ("用户标识", A | S | R),
        ("交易类型", A | S | R),
        ("交易状态", A | S | R),
        ("付款银行", A | S | R),
        ("货币种类", A | S | R),
        ("应结订单金额", A | S | R),
        ("代金券金额", A | S | R),
        ("退款申请时间", R),
        ("退款成功时间", R),
        ("微信退款单号", A | R),
        ("商户退款单号", A | R),
        ("退款金额", A | R),
        ("充值券退款金额", A | R),
        ("退款类型", A | R),
        ("退款状态", A | R),
        ("商品名称", A | S | R),
        ("商户数据包", A | S | R),
        ("手续费", A | S | R),
        ("费率", A | S | R),
        ("订单金额", A | S | R),
        ("申请退款金额", A | R),
        ("费率备注", A | S | R),
    ]
};

/// The header of a bill type's layout.
fn layout(bill_type: BillType) -> Vec<String> {
    let mask = match bill_type {
        BillType::All | BillType::RechargeRefund => 1,
        BillType::Success => 2,
        BillType::Refund => 4,
    };
    COLUMNS
        .iter()
        .filter(|(_, layouts)| layouts & mask != 0)
        .map(|(name, _)| (*name).to_owned())
        .collect()
}

impl Bill {
    /// A bill of `bill_type` from its rows, with the summary computed from them.
    pub fn from_rows(bill_type: BillType, rows: Vec<BillRow>) -> Bill {
        let sum = |f: fn(&BillRow) -> u64| Fen::new(rows.iter().map(f).sum()).unwrap_or(Fen::MAX);
        let summary = BillSummary {
            count: rows.len() as u64,
            settlement_total_fee: sum(|r| r.settlement_total_fee.get()),
            refund_fee: sum(|r| r.refund_fee.get()),
            coupon_refund_fee: sum(|r| r.coupon_refund_fee.get()),
            fee: BillFee::from_hundred_thousandths(rows.iter().map(|r| r.fee.hundred_thousandths_of_yuan()).sum()),
            total_fee: Some(sum(|r| r.total_fee.map_or(0, Fen::get))),
            refund_apply_fee: Some(sum(|r| r.refund_apply_fee.map_or(0, Fen::get))),
        };
        Bill {
            columns: layout(bill_type),
            rows,
            summary,
        }
    }

    /// The bill as WeChat Pay sends it: UTF-8 with a byte order mark, CRLF line ends, every
    /// value behind a backtick, amounts in yuan with two decimals, fees with five.
    pub fn to_text(&self) -> String {
        let mut out = String::with_capacity(256 + self.rows.len() * 300);
        out.push('\u{FEFF}');
        out.push_str(&self.columns.join(","));
        out.push_str("\r\n");
        for row in &self.rows {
            for (i, column) in self.columns.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push('`');
                out.push_str(&cell(row, column));
            }
            out.push_str("\r\n");
        }
        let s = &self.summary;
        out.push_str(
            "总交易单数,应结订单总金额,退款总金额,充值券退款总金额,手续费总金额,订单总金额,申请退款总金额\r\n",
        );
        let values = [
            s.count.to_string(),
            s.settlement_total_fee.to_yuan(),
            s.refund_fee.to_yuan(),
            s.coupon_refund_fee.to_yuan(),
            s.fee.to_string(),
            s.total_fee.unwrap_or_default().to_yuan(),
            s.refund_apply_fee.unwrap_or_default().to_yuan(),
        ];
        out.push('`');
        out.push_str(&values.join(",`"));
        out.push_str("\r\n");
        out
    }
}

fn cell(r: &BillRow, column: &str) -> String {
    let opt_time = |t: Option<BeijingTime>| t.map(BeijingTime::to_dashed).unwrap_or_default();
    match column {
        "交易时间" => r.trade_time.to_dashed(),
        "公众账号ID" => r.appid.clone(),
        "商户号" => r.mch_id.clone(),
        "特约商户号" => r.sub_mch_id.clone(),
        "设备号" => r.device_info.clone(),
        "微信订单号" => r.transaction_id.clone(),
        "商户订单号" => r.out_trade_no.clone(),
        "用户标识" => r.openid.clone(),
        "交易类型" => r.trade_type.clone(),
        "交易状态" => r.trade_state.clone(),
        "付款银行" => r.bank_type.clone(),
        "货币种类" => r.currency.clone(),
        "应结订单金额" => r.settlement_total_fee.to_yuan(),
        "代金券金额" => r.coupon_fee.to_yuan(),
        "退款申请时间" => opt_time(r.refund_apply_time),
        "退款成功时间" => opt_time(r.refund_success_time),
        "微信退款单号" => r.refund_id.clone().unwrap_or_else(|| "0".to_owned()),
        "商户退款单号" => r.out_refund_no.clone().unwrap_or_else(|| "0".to_owned()),
        "退款金额" => r.refund_fee.to_yuan(),
        "充值券退款金额" => r.coupon_refund_fee.to_yuan(),
        "退款类型" => r.refund_type.clone().unwrap_or_default(),
        "退款状态" => r.refund_status.clone().unwrap_or_default(),
        "商品名称" => r.body.clone(),
        "商户数据包" => r.attach.clone(),
        "手续费" => r.fee.to_string(),
        "费率" => r.rate.clone(),
        "订单金额" => r.total_fee.unwrap_or_default().to_yuan(),
        "申请退款金额" => r.refund_apply_fee.unwrap_or_default().to_yuan(),
        "费率备注" => r.rate_remark.clone().unwrap_or_default(),
        _ => r.extra.get(column).cloned().unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v2::{V2Call, decode_signed};
    use crate::{AppId, MchId, Merchant};

    fn merchant() -> Merchant {
        Merchant {
            appid: AppId::new("wxd678efh567hg6787").unwrap(),
            mch_id: MchId::new("1230000109").unwrap(),
            key: ApiKey::new("192006250b4c09247ec02edce69f6a2d").unwrap(),
            sign_type: SignType::HmacSha256,
        }
    }

    #[test]
    fn requests_round_trip_through_their_wire_form() {
        let m = merchant();
        let nonce = Nonce::new("n1").unwrap();
        let mut order = UnifiedOrder::jsapi(
            "咖啡",
            OutTradeNo::new("o-1").unwrap(),
            Fen::new(1999).unwrap(),
            "127.0.0.1",
            "http://127.0.0.1:1/notify",
            "openid-1",
        );
        order.attach = Some("a".into());
        order.extra.insert("future_field".into(), "x".into());
        let body = crate::v2::encode(&order, &m, &nonce).unwrap();
        let f = crate::xml::read(body.as_bytes()).unwrap();
        assert_eq!(UnifiedOrder::from_fields(&f).unwrap(), order);

        let refund = Refund::new(
            OrderRef::TransactionId("4200000001".into()),
            OutRefundNo::new("r1").unwrap(),
            Fen::new(100).unwrap(),
            Fen::new(10).unwrap(),
        );
        let body = crate::v2::encode(&refund, &m, &nonce).unwrap();
        assert_eq!(
            Refund::from_fields(&crate::xml::read(body.as_bytes()).unwrap()).unwrap(),
            refund
        );

        let q = RefundQuery::by_out_refund_no(OutRefundNo::new("r1").unwrap());
        let body = crate::v2::encode(&q, &m, &nonce).unwrap();
        assert_eq!(
            RefundQuery::from_fields(&crate::xml::read(body.as_bytes()).unwrap()).unwrap(),
            q
        );
    }

    #[test]
    fn a_request_missing_a_field_says_which() {
        let f: Fields<'_> = [("appid", "wx1"), ("body", "b")].into_iter().collect();
        assert!(matches!(UnifiedOrder::from_fields(&f), Err(Error::MissingField(n)) if n == "out_trade_no"));
        let f: Fields<'_> = [("out_trade_no", "bad no")].into_iter().collect();
        assert!(
            matches!(CloseOrder::from_fields(&f), Err(Error::InvalidField { field, .. }) if field == "out_trade_no")
        );
    }

    #[test]
    fn answers_signed_here_decode_on_the_client_side() {
        let m = merchant();
        let nonce = Nonce::new("n2").unwrap();
        let signer = AnswerSigner {
            appid: m.appid.as_str(),
            mch_id: m.mch_id.as_str(),
            key: &m.key,
            sign_type: m.sign_type,
            nonce: &nonce,
        };
        let answer = UnifiedOrderResponse {
            prepay_id: "wx1".into(),
            trade_type: TradeType::Jsapi,
            code_url: None,
            mweb_url: None,
            device_info: None,
            extra: BTreeMap::new(),
        };
        let body = signer.success(&answer).unwrap();
        assert_eq!(UnifiedOrder::decode(body.as_bytes(), &m).unwrap(), answer);
        let err = signer.business_error(&ErrCode::OrderPaid, "订单已支付").unwrap();
        assert!(matches!(
            decode_signed::<CloseOrderResponse>(err.as_bytes(), &m),
            Err(Error::Business {
                code: ErrCode::OrderPaid,
                ..
            })
        ));
        assert!(matches!(
            UnifiedOrder::decode(return_fail("签名错误").as_bytes(), &m),
            Err(Error::ReturnFail { return_msg, .. }) if return_msg == "签名错误"
        ));
    }

    #[test]
    fn a_written_bill_reads_back_with_the_same_rows() {
        let row = |state: &str, fen: u64, refund: u64| BillRow {
            trade_time: BeijingTime::parse_compact("20261127101010").unwrap(),
            appid: "wx1".into(),
            mch_id: "1230000109".into(),
            sub_mch_id: "0".into(),
            device_info: String::new(),
            transaction_id: "4200000001".into(),
            out_trade_no: "o1".into(),
            openid: "op".into(),
            trade_type: "JSAPI".into(),
            trade_state: state.into(),
            bank_type: "CFT".into(),
            currency: "CNY".into(),
            settlement_total_fee: Fen::new(fen).unwrap(),
            coupon_fee: Fen::ZERO,
            refund_apply_time: None,
            refund_success_time: None,
            refund_id: (refund > 0).then(|| "5000001".into()),
            out_refund_no: (refund > 0).then(|| "r1".into()),
            refund_fee: Fen::new(refund).unwrap(),
            coupon_refund_fee: Fen::ZERO,
            refund_type: (refund > 0).then(|| "ORIGINAL".into()),
            refund_status: (refund > 0).then(|| "SUCCESS".into()),
            body: "咖啡, 大杯".into(),
            attach: String::new(),
            fee: BillFee::parse("0.12000").unwrap(),
            rate: "0.60%".into(),
            total_fee: Some(Fen::new(fen).unwrap()),
            refund_apply_fee: Some(Fen::new(refund).unwrap()),
            rate_remark: None,
            extra: BTreeMap::new(),
        };
        let bill = Bill::from_rows(BillType::All, vec![row("SUCCESS", 1999, 0), row("REFUND", 0, 7)]);
        let text = bill.to_text();
        assert!(text.starts_with("\u{FEFF}交易时间,"));
        assert!(text.contains("\r\n`2026-11-27 10:10:10,`wx1,"));
        let back = Bill::parse(&text).unwrap();
        assert_eq!(back.rows, bill.rows);
        assert_eq!(back.summary, bill.summary);
    }
}
