//! The order family of APIv2 calls: `pay/unifiedorder`, `pay/orderquery` and
//! `pay/closeorder`, each with both directions (the merchant's request and WeChat Pay's reading
//! of it; WeChat Pay's answer and the merchant's reading of it).

use std::collections::BTreeMap;

use super::fields_util::{parse_with, request_extra};
use super::{
    FromFields, ToFields, V2Call, check_notify_url, check_text, decode_signed, extra_fields, fen, insert_extra, num,
    opt_count, opt_fen, opt_string,
};
use crate::{BeijingTime, Error, Fen, Fields, Merchant, OutTradeNo};

/// `trade_type`: how the payment is made. Mini programs use [`TradeType::Jsapi`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub enum TradeType {
    /// `JSAPI`: mini programs and official accounts; needs the payer's `openid`.
    #[default]
    Jsapi,
    /// `NATIVE`: QR code payment.
    Native,
    /// `APP`: in-app payment.
    App,
    /// `MWEB`: H5 payment in a mobile browser.
    Mweb,
    /// Any other value, kept verbatim.
    Other(String),
}

impl TradeType {
    /// Reads the wire value.
    pub fn parse(s: &str) -> TradeType {
        match s {
            "JSAPI" => TradeType::Jsapi,
            "NATIVE" => TradeType::Native,
            "APP" => TradeType::App,
            "MWEB" => TradeType::Mweb,
            other => TradeType::Other(other.to_owned()),
        }
    }

    /// The wire value.
    pub fn as_str(&self) -> &str {
        match self {
            TradeType::Jsapi => "JSAPI",
            TradeType::Native => "NATIVE",
            TradeType::App => "APP",
            TradeType::Mweb => "MWEB",
            TradeType::Other(s) => s,
        }
    }
}

/// `pay/unifiedorder`: creates an order and returns the `prepay_id` that the mini program
/// passes to `wx.requestPayment`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnifiedOrder {
    /// `body`: the product description shown to the payer (at most 127 characters).
    pub body: String,
    /// `out_trade_no`.
    pub out_trade_no: OutTradeNo,
    /// `total_fee`: the amount in fen, at least 1.
    pub total_fee: Fen,
    /// `spbill_create_ip`: the IPv4 or IPv6 address of the machine calling the API.
    pub spbill_create_ip: String,
    /// `notify_url`: where WeChat Pay posts the payment notification.
    pub notify_url: String,
    /// `trade_type`; [`TradeType::Jsapi`] for mini programs.
    pub trade_type: TradeType,
    /// `openid`: the payer under this appid, required for JSAPI.
    pub openid: Option<String>,
    /// `attach`: merchant data echoed in the query answer and the notification (at most 127
    /// characters).
    pub attach: Option<String>,
    /// `detail`: JSON product details (at most 6000 characters).
    pub detail: Option<String>,
    /// `device_info`.
    pub device_info: Option<String>,
    /// `fee_type`; WeChat Pay's default is `CNY`.
    pub fee_type: Option<String>,
    /// `time_start`: when the order was made.
    pub time_start: Option<BeijingTime>,
    /// `time_expire`: after this the order can no longer be paid. WeChat Pay wants it at
    /// least 5 minutes after `time_start`, and it cannot change on a later call.
    pub time_expire: Option<BeijingTime>,
    /// `goods_tag`.
    pub goods_tag: Option<String>,
    /// `limit_pay`: `no_credit` to refuse credit cards.
    pub limit_pay: Option<String>,
    /// `receipt`: `Y` to offer an electronic invoice.
    pub receipt: Option<String>,
    /// `profit_sharing`: `Y` or `N`.
    pub profit_sharing: Option<String>,
    /// `scene_info`: JSON.
    pub scene_info: Option<String>,
    /// Any other field WeChat Pay accepts; signed and sent as is.
    pub extra: BTreeMap<String, String>,
}

impl UnifiedOrder {
    /// A JSAPI (mini program) order with the required fields and nothing optional.
    pub fn jsapi(
        body: impl Into<String>,
        out_trade_no: OutTradeNo,
        total_fee: Fen,
        spbill_create_ip: impl Into<String>,
        notify_url: impl Into<String>,
        openid: impl Into<String>,
    ) -> UnifiedOrder {
        UnifiedOrder {
            body: body.into(),
            out_trade_no,
            total_fee,
            spbill_create_ip: spbill_create_ip.into(),
            notify_url: notify_url.into(),
            trade_type: TradeType::Jsapi,
            openid: Some(openid.into()),
            attach: None,
            detail: None,
            device_info: None,
            fee_type: None,
            time_start: None,
            time_expire: None,
            goods_tag: None,
            limit_pay: None,
            receipt: None,
            profit_sharing: None,
            scene_info: None,
            extra: BTreeMap::new(),
        }
    }
}

impl UnifiedOrder {
    /// Checks the rules WeChat Pay applies to an order: required fields present, lengths,
    /// characters, an amount of at least 1 fen, an IP address, a notification URL without
    /// parameters, an `openid` for JSAPI, `time_expire` after `time_start`.
    ///
    /// # Errors
    /// [`Error::MissingField`] or [`Error::InvalidField`] naming the field.
    pub fn check(&self) -> Result<(), Error> {
        if self.body.is_empty() {
            return Err(Error::MissingField("body".into()));
        }
        check_text("body", &self.body, 127)?;
        self.out_trade_no.check_new()?;
        if self.total_fee == Fen::ZERO {
            return Err(Error::field("total_fee", "must be at least 1 fen"));
        }
        if self.spbill_create_ip.parse::<std::net::IpAddr>().is_err() {
            return Err(Error::field(
                "spbill_create_ip",
                format!("{:?} is not an IPv4 or IPv6 address", self.spbill_create_ip),
            ));
        }
        check_notify_url("notify_url", &self.notify_url)?;
        match (&self.trade_type, self.openid.as_deref()) {
            (TradeType::Jsapi, None | Some("")) => {
                return Err(Error::MissingField("openid".into()));
            }
            (_, Some(openid)) => check_text("openid", openid, 128)?,
            _ => {}
        }
        for (name, value, max) in self.optional_texts() {
            if let Some(v) = value {
                check_text(name, v, max)?;
            }
        }
        if let (Some(start), Some(expire)) = (self.time_start, self.time_expire) {
            if expire <= start {
                return Err(Error::field("time_expire", "must be after time_start"));
            }
        }
        Ok(())
    }

    fn optional_texts(&self) -> [(&'static str, &Option<String>, usize); 9] {
        [
            ("attach", &self.attach, 127),
            ("detail", &self.detail, 6000),
            ("device_info", &self.device_info, 32),
            ("fee_type", &self.fee_type, 16),
            ("goods_tag", &self.goods_tag, 32),
            ("limit_pay", &self.limit_pay, 32),
            ("receipt", &self.receipt, 8),
            ("profit_sharing", &self.profit_sharing, 16),
            ("scene_info", &self.scene_info, 256),
        ]
    }
}

impl ToFields for UnifiedOrder {
    fn to_fields<'a>(&'a self, out: &mut Fields<'a>) -> Result<(), Error> {
        self.check()?;
        for (name, value, _) in self.optional_texts() {
            out.insert_opt(name, value.as_deref())?;
        }
        out.insert("body", self.body.as_str())?;
        out.insert("out_trade_no", self.out_trade_no.as_str())?;
        out.insert("total_fee", num(self.total_fee))?;
        out.insert("spbill_create_ip", self.spbill_create_ip.as_str())?;
        out.insert("notify_url", self.notify_url.as_str())?;
        out.insert("trade_type", self.trade_type.as_str())?;
        out.insert_opt("openid", self.openid.as_deref())?;
        out.insert_opt("time_start", self.time_start.map(BeijingTime::to_compact))?;
        out.insert_opt("time_expire", self.time_expire.map(BeijingTime::to_compact))?;
        insert_extra(out, &self.extra)
    }
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

/// The answer to [`UnifiedOrder`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnifiedOrderResponse {
    /// `prepay_id`, valid for two hours; `wx.requestPayment` gets it as `package=prepay_id=…`.
    pub prepay_id: String,
    /// `trade_type` echoed.
    pub trade_type: TradeType,
    /// `code_url` (NATIVE only).
    pub code_url: Option<String>,
    /// `mweb_url` (MWEB only).
    pub mweb_url: Option<String>,
    /// `device_info` echoed.
    pub device_info: Option<String>,
    /// Fields this crate has no name for.
    pub extra: BTreeMap<String, String>,
}

impl FromFields for UnifiedOrderResponse {
    fn from_fields(f: &Fields<'_>) -> Result<Self, Error> {
        Ok(UnifiedOrderResponse {
            prepay_id: f.require("prepay_id")?.to_owned(),
            trade_type: TradeType::parse(f.require("trade_type")?),
            code_url: opt_string(f, "code_url"),
            mweb_url: opt_string(f, "mweb_url"),
            device_info: opt_string(f, "device_info"),
            extra: extra_fields(
                f,
                &["code_url", "device_info", "mweb_url", "prepay_id", "trade_type"],
                &[],
            ),
        })
    }
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

impl V2Call for UnifiedOrder {
    type Response = UnifiedOrderResponse;
    const PATH: &'static str = "/pay/unifiedorder";
    const CHANGES: bool = true;
    fn decode(body: &[u8], merchant: &Merchant) -> Result<Self::Response, Error> {
        decode_signed(body, merchant)
    }
}

/// Which order a query or refund is about. WeChat Pay prefers `transaction_id` when both
/// would be given, so a value names exactly one.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum OrderRef {
    /// The merchant's order number.
    OutTradeNo(OutTradeNo),
    /// WeChat Pay's order number (`transaction_id`).
    TransactionId(String),
}

impl OrderRef {
    pub(super) fn to_fields<'a>(&'a self, out: &mut Fields<'a>) -> Result<(), Error> {
        match self {
            OrderRef::OutTradeNo(n) => out.insert("out_trade_no", n.as_str()),
            OrderRef::TransactionId(t) => {
                check_transaction_id(t)?;
                out.insert("transaction_id", t.as_str())
            }
        }
    }
}

pub(crate) fn check_transaction_id(t: &str) -> Result<(), Error> {
    if t.is_empty() || t.len() > 32 || !t.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(Error::field(
            "transaction_id",
            format!("{t:?} is not a WeChat Pay order number (up to 32 letters and digits)"),
        ));
    }
    Ok(())
}

pub(super) fn order_ref(f: &Fields<'_>) -> Result<OrderRef, Error> {
    // WeChat Pay prefers transaction_id when both are given.
    if let Some(t) = f.optional("transaction_id") {
        check_transaction_id(t)?;
        return Ok(OrderRef::TransactionId(t.to_owned()));
    }
    Ok(OrderRef::OutTradeNo(parse_with(f, "out_trade_no", |s| {
        OutTradeNo::new(s)
    })?))
}

/// `pay/orderquery`: the state of an order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrderQuery {
    /// The order asked about.
    pub order: OrderRef,
    /// Any other field; signed and sent as is.
    pub extra: BTreeMap<String, String>,
}

impl OrderQuery {
    /// Queries by the merchant's order number.
    pub fn by_out_trade_no(out_trade_no: OutTradeNo) -> OrderQuery {
        OrderQuery {
            order: OrderRef::OutTradeNo(out_trade_no),
            extra: BTreeMap::new(),
        }
    }

    /// Queries by WeChat Pay's order number.
    pub fn by_transaction_id(transaction_id: impl Into<String>) -> OrderQuery {
        OrderQuery {
            order: OrderRef::TransactionId(transaction_id.into()),
            extra: BTreeMap::new(),
        }
    }
}

impl ToFields for OrderQuery {
    fn to_fields<'a>(&'a self, out: &mut Fields<'a>) -> Result<(), Error> {
        self.order.to_fields(out)?;
        insert_extra(out, &self.extra)
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

/// `trade_state`: where an order is in its life.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum TradeState {
    /// `SUCCESS`: paid.
    Success,
    /// `REFUND`: paid, and a refund was made.
    Refund,
    /// `NOTPAY`: not paid yet; the user can still pay.
    NotPay,
    /// `CLOSED`: closed, by `closeorder` or by expiry.
    Closed,
    /// `REVOKED`: revoked (micropay only).
    Revoked,
    /// `USERPAYING`: the user is paying (micropay only).
    UserPaying,
    /// `PAYERROR`: the payment failed.
    PayError,
    /// `ACCEPT`: accepted, waiting for the deduction.
    Accept,
    /// A state this crate does not know; a caller should leave its own record unchanged.
    Other(String),
}

impl TradeState {
    /// Reads the wire value.
    pub fn parse(s: &str) -> TradeState {
        match s {
            "SUCCESS" => TradeState::Success,
            "REFUND" => TradeState::Refund,
            "NOTPAY" => TradeState::NotPay,
            "CLOSED" => TradeState::Closed,
            "REVOKED" => TradeState::Revoked,
            "USERPAYING" => TradeState::UserPaying,
            "PAYERROR" => TradeState::PayError,
            "ACCEPT" => TradeState::Accept,
            other => TradeState::Other(other.to_owned()),
        }
    }

    /// The wire value.
    pub fn as_str(&self) -> &str {
        match self {
            TradeState::Success => "SUCCESS",
            TradeState::Refund => "REFUND",
            TradeState::NotPay => "NOTPAY",
            TradeState::Closed => "CLOSED",
            TradeState::Revoked => "REVOKED",
            TradeState::UserPaying => "USERPAYING",
            TradeState::PayError => "PAYERROR",
            TradeState::Accept => "ACCEPT",
            TradeState::Other(s) => s,
        }
    }

    /// Whether money was taken: `SUCCESS` or `REFUND`.
    pub fn is_paid(&self) -> bool {
        matches!(self, TradeState::Success | TradeState::Refund)
    }
}

/// A coupon used on an order (`coupon_type_$n`, `coupon_id_$n`, `coupon_fee_$n`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Coupon {
    /// `coupon_id_$n`.
    pub id: String,
    /// `coupon_type_$n`: `CASH` or `NO_CASH`, when sent.
    pub kind: Option<String>,
    /// `coupon_fee_$n`.
    pub fee: Fen,
}

pub(crate) fn read_coupons(f: &Fields<'_>, count: Option<u32>) -> Result<Vec<Coupon>, Error> {
    let mut out = Vec::new();
    for n in 0..count.unwrap_or(0).min(100) {
        let id = format!("coupon_id_{n}");
        let Some(coupon_id) = f.optional(&id) else {
            return Err(Error::MissingField(id));
        };
        out.push(Coupon {
            id: coupon_id.to_owned(),
            kind: opt_string(f, &format!("coupon_type_{n}")),
            fee: fen(f, &format!("coupon_fee_{n}"))?,
        });
    }
    Ok(out)
}

pub(super) fn insert_coupons<'a>(out: &mut Fields<'a>, coupons: &'a [Coupon]) -> Result<(), Error> {
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

/// The answer to [`OrderQuery`]. For an unpaid or closed order WeChat Pay sends only a few
/// fields, so the payment fields are optional; they are present when [`TradeState::is_paid`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrderQueryResponse {
    /// `trade_state`.
    pub trade_state: TradeState,
    /// `trade_state_desc`.
    pub trade_state_desc: Option<String>,
    /// `out_trade_no`.
    pub out_trade_no: String,
    /// `transaction_id`, once paid.
    pub transaction_id: Option<String>,
    /// `total_fee`.
    pub total_fee: Option<Fen>,
    /// `cash_fee`: paid in cash.
    pub cash_fee: Option<Fen>,
    /// `settlement_total_fee`: with non-recharge coupons, the amount that settles.
    pub settlement_total_fee: Option<Fen>,
    /// `coupon_fee`.
    pub coupon_fee: Option<Fen>,
    /// The coupons used.
    pub coupons: Vec<Coupon>,
    /// `fee_type`.
    pub fee_type: Option<String>,
    /// `cash_fee_type`.
    pub cash_fee_type: Option<String>,
    /// `openid` of the payer.
    pub openid: Option<String>,
    /// `is_subscribe`.
    pub is_subscribe: Option<String>,
    /// `trade_type`.
    pub trade_type: Option<TradeType>,
    /// `bank_type`.
    pub bank_type: Option<String>,
    /// `time_end`: when it was paid.
    pub time_end: Option<BeijingTime>,
    /// `attach` echoed.
    pub attach: Option<String>,
    /// `device_info` echoed.
    pub device_info: Option<String>,
    /// Fields this crate has no name for.
    pub extra: BTreeMap<String, String>,
}

const ORDER_QUERY_KNOWN: &[&str] = &[
    "attach",
    "bank_type",
    "cash_fee",
    "cash_fee_type",
    "coupon_count",
    "coupon_fee",
    "device_info",
    "fee_type",
    "is_subscribe",
    "openid",
    "out_trade_no",
    "settlement_total_fee",
    "time_end",
    "total_fee",
    "trade_state",
    "trade_state_desc",
    "trade_type",
    "transaction_id",
];

fn opt_time(f: &Fields<'_>, name: &str) -> Result<Option<BeijingTime>, Error> {
    f.optional(name)
        .map(|v| BeijingTime::parse_compact(v).map_err(|e| Error::field(name, e.to_string())))
        .transpose()
}

impl FromFields for OrderQueryResponse {
    fn from_fields(f: &Fields<'_>) -> Result<Self, Error> {
        let trade_state = TradeState::parse(f.require("trade_state")?);
        let paid = trade_state.is_paid();
        let need = |name: &str| {
            if paid {
                f.require(name).map(Some)
            } else {
                Ok(f.optional(name))
            }
        };
        let total_fee = if paid {
            Some(fen(f, "total_fee")?)
        } else {
            opt_fen(f, "total_fee")?
        };
        Ok(OrderQueryResponse {
            out_trade_no: f.require("out_trade_no")?.to_owned(),
            transaction_id: need("transaction_id")?.map(str::to_owned),
            total_fee,
            cash_fee: opt_fen(f, "cash_fee")?,
            settlement_total_fee: opt_fen(f, "settlement_total_fee")?,
            coupon_fee: opt_fen(f, "coupon_fee")?,
            coupons: read_coupons(f, opt_count(f, "coupon_count")?)?,
            fee_type: opt_string(f, "fee_type"),
            cash_fee_type: opt_string(f, "cash_fee_type"),
            openid: opt_string(f, "openid"),
            is_subscribe: opt_string(f, "is_subscribe"),
            trade_type: f.optional("trade_type").map(TradeType::parse),
            bank_type: opt_string(f, "bank_type"),
            time_end: opt_time(f, "time_end")?,
            attach: opt_string(f, "attach"),
            device_info: opt_string(f, "device_info"),
            trade_state_desc: opt_string(f, "trade_state_desc"),
            extra: extra_fields(f, ORDER_QUERY_KNOWN, &["coupon_fee", "coupon_id", "coupon_type"]),
            trade_state,
        })
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

impl V2Call for OrderQuery {
    type Response = OrderQueryResponse;
    const PATH: &'static str = "/pay/orderquery";
    const CHANGES: bool = false;
    fn decode(body: &[u8], merchant: &Merchant) -> Result<Self::Response, Error> {
        decode_signed(body, merchant)
    }
}

/// `pay/closeorder`: closes an unpaid order so that it can no longer be paid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloseOrder {
    /// The order to close.
    pub out_trade_no: OutTradeNo,
    /// Any other field; signed and sent as is.
    pub extra: BTreeMap<String, String>,
}

impl CloseOrder {
    /// Closes the order `out_trade_no`.
    pub fn new(out_trade_no: OutTradeNo) -> CloseOrder {
        CloseOrder {
            out_trade_no,
            extra: BTreeMap::new(),
        }
    }
}

impl ToFields for CloseOrder {
    fn to_fields<'a>(&'a self, out: &mut Fields<'a>) -> Result<(), Error> {
        out.insert("out_trade_no", self.out_trade_no.as_str())?;
        insert_extra(out, &self.extra)
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

/// The answer to [`CloseOrder`]: success carries nothing but `result_msg`. `ORDERPAID`
/// arrives as [`Error::Business`] and means the order must be treated as paid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloseOrderResponse {
    /// `result_msg`.
    pub result_msg: Option<String>,
    /// Fields this crate has no name for.
    pub extra: BTreeMap<String, String>,
}

impl FromFields for CloseOrderResponse {
    fn from_fields(f: &Fields<'_>) -> Result<Self, Error> {
        Ok(CloseOrderResponse {
            result_msg: opt_string(f, "result_msg"),
            extra: extra_fields(f, &["result_msg"], &[]),
        })
    }
}

impl ToFields for CloseOrderResponse {
    fn to_fields<'a>(&'a self, out: &mut Fields<'a>) -> Result<(), Error> {
        out.insert_opt("result_msg", self.result_msg.as_deref())?;
        insert_extra(out, &self.extra)
    }
}

impl V2Call for CloseOrder {
    type Response = CloseOrderResponse;
    const PATH: &'static str = "/pay/closeorder";
    const CHANGES: bool = true;
    fn decode(body: &[u8], merchant: &Merchant) -> Result<Self::Response, Error> {
        decode_signed(body, merchant)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn a_new_order_needs_an_out_trade_no_of_six_characters_or_more() {
        let order = |no: &str| {
            UnifiedOrder::jsapi(
                "b",
                OutTradeNo::new(no).unwrap(),
                Fen::new(1).unwrap(),
                "127.0.0.1",
                "http://127.0.0.1:1/n",
                "o",
            )
        };
        assert!(matches!(order("12345").check(), Err(Error::InvalidField { field, .. }) if field == "out_trade_no"));
        assert!(order("123456").check().is_ok());
        // Closing an older, shorter number stays possible.
        let f: Fields<'_> = [("out_trade_no", "1")].into_iter().collect();
        assert!(CloseOrder::from_fields(&f).is_ok());
    }
}
