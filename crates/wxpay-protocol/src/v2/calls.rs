//! The APIv2 calls of a mini program merchant: order, query, close, refund, refund query and
//! bill download.

use std::collections::BTreeMap;

use super::{
    FromFields, ToFields, V2Call, check_notify_url, check_text, decode_signed, extra_fields, fen, insert_extra, num,
    opt_count, opt_fen, opt_string,
};
use crate::v2::bill::{Bill, BillType};
use crate::{BeijingTime, Error, Fen, Fields, Merchant, OutRefundNo, OutTradeNo};

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

impl V2Call for UnifiedOrder {
    type Response = UnifiedOrderResponse;
    const PATH: &'static str = "/pay/unifiedorder";
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
    fn to_fields<'a>(&'a self, out: &mut Fields<'a>) -> Result<(), Error> {
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

pub(crate) fn opt_time(f: &Fields<'_>, name: &str) -> Result<Option<BeijingTime>, Error> {
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

impl V2Call for OrderQuery {
    type Response = OrderQueryResponse;
    const PATH: &'static str = "/pay/orderquery";
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

impl V2Call for CloseOrder {
    type Response = CloseOrderResponse;
    const PATH: &'static str = "/pay/closeorder";
    fn decode(body: &[u8], merchant: &Merchant) -> Result<Self::Response, Error> {
        decode_signed(body, merchant)
    }
}

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

impl V2Call for Refund {
    type Response = RefundResponse;
    const PATH: &'static str = "/secapi/pay/refund";
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

impl V2Call for RefundQuery {
    type Response = RefundQueryResponse;
    const PATH: &'static str = "/pay/refundquery";
    fn decode(body: &[u8], merchant: &Merchant) -> Result<Self::Response, Error> {
        decode_signed(body, merchant)
    }
}

/// `pay/downloadbill`: the day's transaction bill. The answer is not XML but the bill text;
/// failures (`No Bill Exist`, `Bill Creating`, …) come as unsigned XML.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DownloadBill {
    /// `bill_date`: the day, in Beijing time.
    pub bill_date: BeijingTime,
    /// `bill_type`.
    pub bill_type: BillType,
    /// Any other field; signed and sent as is.
    pub extra: BTreeMap<String, String>,
}

impl ToFields for DownloadBill {
    fn to_fields<'a>(&'a self, out: &mut Fields<'a>) -> Result<(), Error> {
        out.insert("bill_date", self.bill_date.to_date_compact())?;
        out.insert("bill_type", self.bill_type.as_str())?;
        insert_extra(out, &self.extra)
    }
}

impl V2Call for DownloadBill {
    type Response = Bill;
    const PATH: &'static str = "/pay/downloadbill";
    const LARGE_ANSWER: bool = true;

    /// Reads the bill, or the XML error that replaces it. The bill itself is not signed:
    /// WeChat Pay sends it unsigned over TLS.
    fn decode(body: &[u8], _merchant: &Merchant) -> Result<Bill, Error> {
        let text = std::str::from_utf8(body)
            .map_err(|e| Error::Bill(format!("the bill is not UTF-8 (byte {})", e.valid_up_to())))?;
        let trimmed = text.trim_start_matches('\u{FEFF}').trim_start();
        if trimmed.starts_with('<') {
            let fields = crate::xml::read(body)?;
            super::check_return_code(&fields)?;
            return Err(Error::Bill("an XML answer that is not an error".into()));
        }
        Bill::parse(text)
    }
}
