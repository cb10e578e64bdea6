//! APIv2: typed calls, notifications, mini program pay parameters and the signature doctor.
//!
//! A call is a value implementing [`V2Call`]: it knows its path, whether it needs the
//! merchant's client certificate, how to become fields, and how to read its answer.
//! [`encode`] turns it into a signed XML body; the call's [`V2Call::decode`] turns the answer
//! into a typed response after checking, in WeChat Pay's order, `return_code`, the
//! signature, the merchant, and `result_code`.
//!
//! ```
//! use wxpay_protocol::v2::{self, OrderQuery, V2Call};
//! use wxpay_protocol::{ApiKey, AppId, MchId, Merchant, Nonce, OutTradeNo, SignType};
//!
//! let merchant = Merchant {
//!     appid: AppId::new("wxd678efh567hg6787")?,
//!     mch_id: MchId::new("1230000109")?,
//!     key: ApiKey::new("192006250b4c09247ec02edce69f6a2d")?,
//!     sign_type: SignType::HmacSha256,
//! };
//! let call = OrderQuery::by_out_trade_no(OutTradeNo::new("order-1")?);
//! let body = v2::encode(&call, &merchant, &Nonce::new("5K8264ILTKCH16CQ2502SI8ZNMTM67VS")?)?;
//! assert_eq!(OrderQuery::PATH, "/pay/orderquery");
//! assert!(body.starts_with("<xml><appid>"));
//! # Ok::<(), wxpay_protocol::Error>(())
//! ```

use std::borrow::Cow;
use std::collections::BTreeMap;

use crate::fields::cmp_names;
use crate::{Error, Fen, Fields, Merchant, Nonce};

mod bill;
pub mod doctor;
mod errcode;
mod fields_util;
mod jsapi;
mod notify;
mod order;
mod refund;
pub mod server;

pub use bill::{Bill, BillFee, BillRow, BillSummary, BillType, DownloadBill, MAX_BILL_BYTES, gunzip, gzip, is_gzip};
pub use errcode::{ErrCode, Retry};
pub use jsapi::PayParams;
pub use notify::{
    NOTIFY_SUCCESS_REPLY, NotificationFields, PaymentNotification, PaymentOutcome, RefundNotification,
    decrypt_req_info, encrypt_req_info, notify_fail_reply,
};
pub use order::{
    CloseOrder, CloseOrderResponse, Coupon, OrderQuery, OrderQueryResponse, OrderRef, TradeState, TradeType,
    UnifiedOrder, UnifiedOrderResponse,
};
pub use refund::{Refund, RefundQuery, RefundQueryResponse, RefundRecord, RefundRef, RefundResponse, RefundStatus};

/// A value that becomes the business fields of an APIv2 message.
pub trait ToFields {
    /// Adds this value's fields to `out`. The common fields (`appid`, `mch_id`,
    /// `nonce_str`, `sign_type`, `sign`) are added by [`encode`].
    ///
    /// # Errors
    /// [`Error`] when a value breaks a rule of the API (a field too long, an amount of zero,
    /// a `notify_url` with a query string, an extra field that clashes with a standard one).
    fn to_fields<'a>(&'a self, out: &mut Fields<'a>) -> Result<(), Error>;
}

/// A value read from the fields of an APIv2 message whose envelope was already checked.
pub trait FromFields: Sized {
    /// Reads the value.
    ///
    /// # Errors
    /// [`Error::MissingField`] or [`Error::InvalidField`] when the message lacks what the
    /// value needs.
    fn from_fields(fields: &Fields<'_>) -> Result<Self, Error>;
}

/// One APIv2 call: a request value with its path and answer type.
pub trait V2Call: ToFields {
    /// The typed answer.
    type Response;
    /// The path under the API host, such as `/pay/unifiedorder`.
    const PATH: &'static str;
    /// Whether the call needs the merchant's client certificate (mutual TLS).
    const CLIENT_CERT: bool = false;
    /// Whether the answer may be large (a day's bill: tens of megabytes), so that a client
    /// allows it more time than an ordinary call.
    const LARGE_ANSWER: bool = false;
    /// Whether the call changes what WeChat Pay holds (places, closes or refunds) rather
    /// than reads it. A lost answer leaves such a call's effect unknown, so a refusal that a
    /// later attempt gets does not prove the call had no effect.
    const CHANGES: bool;

    /// Reads WeChat Pay's answer to this call.
    ///
    /// # Errors
    /// [`Error::Xml`] for a body the hardened reader refuses, [`Error::ReturnFail`] for a
    /// protocol-level refusal, [`Error::BadSignature`] or [`Error::MerchantMismatch`] for an
    /// answer that is not from WeChat Pay for this merchant, [`Error::Business`] for a
    /// business refusal (with its retry class), or a field error.
    fn decode(body: &[u8], merchant: &Merchant) -> Result<Self::Response, Error>;
}

/// Builds the signed XML body of a call: the call's fields, plus `appid`, `mch_id`,
/// `nonce_str`, `sign_type` and `sign`.
///
/// # Errors
/// As [`ToFields::to_fields`], or [`Error::InvalidField`] when the call's own fields try
/// to set a common field.
pub fn encode<C: V2Call + ?Sized>(call: &C, merchant: &Merchant, nonce: &Nonce) -> Result<String, Error> {
    let fields = signed_fields(call, merchant, nonce)?;
    crate::xml::write("xml", fields.iter())
}

/// The fields of a call with the common fields and `sign` added, for callers that want to
/// see or log what is sent (signature included, key never).
///
/// # Errors
/// As [`encode`].
pub fn signed_fields<'a, C: ToFields + ?Sized>(
    call: &'a C,
    merchant: &'a Merchant,
    nonce: &'a Nonce,
) -> Result<Fields<'a>, Error> {
    let mut f = Fields::with_capacity(16);
    call.to_fields(&mut f)?;
    if f.get("sign").is_some() {
        return Err(Error::field("sign", "is computed by the encoder and cannot be given"));
    }
    f.insert("appid", merchant.appid.as_str())?;
    f.insert("mch_id", merchant.mch_id.as_str())?;
    f.insert("nonce_str", nonce.as_str())?;
    f.insert("sign_type", merchant.sign_type.as_str())?;
    f.sign(&merchant.key, merchant.sign_type);
    Ok(f)
}

/// Reads a signed answer in WeChat Pay's order: the hardened XML reader, `return_code`, the
/// signature (with the merchant's configured algorithm), the merchant, `result_code`, and
/// finally the typed fields.
///
/// # Errors
/// As [`V2Call::decode`].
pub fn decode_signed<T: FromFields>(body: &[u8], merchant: &Merchant) -> Result<T, Error> {
    let fields = crate::xml::read(body)?;
    check_envelope(&fields, merchant)?;
    T::from_fields(&fields)
}

/// Checks `return_code`, the signature, `appid`/`mch_id` and `result_code` of fields read
/// from an answer.
///
/// # Errors
/// As [`V2Call::decode`].
pub fn check_envelope(fields: &Fields<'_>, merchant: &Merchant) -> Result<(), Error> {
    check_return_code(fields)?;
    fields.verify(&merchant.key, merchant.sign_type)?;
    check_merchant(fields, merchant)?;
    check_result_code(fields)
}

pub(crate) fn check_return_code(fields: &Fields<'_>) -> Result<(), Error> {
    match fields.require("return_code")? {
        "SUCCESS" => Ok(()),
        "FAIL" => Err(Error::ReturnFail {
            return_msg: fields.get("return_msg").unwrap_or_default().to_owned(),
            error_code: fields.optional("error_code").map(str::to_owned),
        }),
        other => Err(Error::field(
            "return_code",
            format!("{other:?} is neither SUCCESS nor FAIL"),
        )),
    }
}

pub(crate) fn check_merchant(fields: &Fields<'_>, merchant: &Merchant) -> Result<(), Error> {
    for (name, expected) in [("appid", merchant.appid.as_str()), ("mch_id", merchant.mch_id.as_str())] {
        let got = fields.require(name)?;
        if got != expected {
            return Err(Error::MerchantMismatch {
                field: name,
                expected: expected.to_owned(),
                received: got.to_owned(),
            });
        }
    }
    Ok(())
}

pub(crate) fn check_result_code(fields: &Fields<'_>) -> Result<(), Error> {
    match fields.require("result_code")? {
        "SUCCESS" => Ok(()),
        "FAIL" => Err(Error::Business {
            code: ErrCode::parse(fields.get("err_code").unwrap_or_default()),
            description: fields.get("err_code_des").unwrap_or_default().to_owned(),
        }),
        other => Err(Error::field(
            "result_code",
            format!("{other:?} is neither SUCCESS nor FAIL"),
        )),
    }
}

/// The fields every signed answer carries; they are not repeated in `extra`.
const ENVELOPE: &[&str] = &[
    "appid",
    "err_code",
    "err_code_des",
    "mch_id",
    "nonce_str",
    "result_code",
    "return_code",
    "return_msg",
    "sign",
    "sign_type",
];

/// The fields not in `known` (nor in the envelope, nor matching `prefix_<n>…` for one of
/// `indexed`), so that answers keep what WeChat Pay adds after this crate was written.
/// `known` must be sorted by bytes: it is searched, not scanned.
pub(crate) fn extra_fields(fields: &Fields<'_>, known: &[&str], indexed: &[&str]) -> BTreeMap<String, String> {
    unknown_fields(fields, ENVELOPE, known, indexed)
}

/// The fields in neither `envelope` nor `known` (both sorted by bytes) and not indexed
/// under one of `indexed`: the `extra` of answers, notifications and requests.
pub(crate) fn unknown_fields(
    fields: &Fields<'_>,
    envelope: &[&str],
    known: &[&str],
    indexed: &[&str],
) -> BTreeMap<String, String> {
    debug_assert!(
        known.is_sorted_by(|a, b| a.as_bytes() < b.as_bytes()),
        "known names must be sorted: {known:?}"
    );
    debug_assert!(envelope.is_sorted_by(|a, b| a.as_bytes() < b.as_bytes()));
    let listed = |list: &[&str], k: &str| list.binary_search_by(|p| cmp_names(p.as_bytes(), k.as_bytes())).is_ok();
    fields
        .iter()
        .filter(|(k, _)| !listed(envelope, k) && !listed(known, k) && !indexed.iter().any(|p| is_indexed(k, p)))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// `return_code=FAIL` with a message, unsigned; `fallback` when the message cannot be
/// written (the writer refuses what XML cannot carry).
pub(crate) fn fail_reply(return_msg: &str, fallback: &str) -> String {
    crate::xml::write("xml", [("return_code", "FAIL"), ("return_msg", return_msg)])
        .or_else(|_| crate::xml::write("xml", [("return_code", "FAIL"), ("return_msg", fallback)]))
        .unwrap_or_else(|_| "<xml><return_code><![CDATA[FAIL]]></return_code></xml>".to_owned())
}

/// Whether `name` is `prefix_<digits>` or `prefix_<digits>_<digits>`.
pub(crate) fn is_indexed(name: &str, prefix: &str) -> bool {
    let Some(rest) = name.strip_prefix(prefix).and_then(|r| r.strip_prefix('_')) else {
        return false;
    };
    !rest.is_empty()
        && rest
            .split('_')
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        && rest.split('_').count() <= 2
}

/// Reads a required amount field.
pub(crate) fn fen(fields: &Fields<'_>, name: &str) -> Result<Fen, Error> {
    let v = fields.require(name)?;
    Fen::parse(v).map_err(|e| Error::field(name, e.to_string()))
}

/// Reads an optional amount field.
pub(crate) fn opt_fen(fields: &Fields<'_>, name: &str) -> Result<Option<Fen>, Error> {
    fields
        .optional(name)
        .map(|v| Fen::parse(v).map_err(|e| Error::field(name, e.to_string())))
        .transpose()
}

/// A non-negative integer count: digits only (no sign, no space).
pub(crate) fn parse_count(name: &str, v: &str) -> Result<u32, Error> {
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        if let Ok(n) = v.parse::<u32>() {
            return Ok(n);
        }
    }
    Err(Error::field(name, format!("{v:?} is not a count")))
}

/// Reads an optional non-negative integer count field.
pub(crate) fn opt_count(fields: &Fields<'_>, name: &str) -> Result<Option<u32>, Error> {
    fields.optional(name).map(|v| parse_count(name, v)).transpose()
}

pub(crate) fn opt_string(fields: &Fields<'_>, name: &str) -> Option<String> {
    fields.optional(name).map(str::to_owned)
}

/// Checks a free-text field: at most `max` characters, and only characters WeChat Pay
/// accepts (UTF-8 of one to three bytes: no emoji, no control characters).
pub(crate) fn check_text(field: &'static str, value: &str, max: usize) -> Result<(), Error> {
    let n = value.chars().count();
    if n > max {
        return Err(Error::field(
            field,
            format!("has {n} characters, at most {max} are allowed"),
        ));
    }
    if let Some(c) = value.chars().find(|c| c.len_utf8() > 3) {
        return Err(Error::field(
            field,
            format!(
                "contains {c:?} (U+{:X}); WeChat Pay accepts only characters of one to three UTF-8 bytes, so no emoji",
                c as u32
            ),
        ));
    }
    if let Some(c) = value
        .chars()
        .find(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r'))
    {
        return Err(Error::field(
            field,
            format!("contains the control character U+{:04X}", c as u32),
        ));
    }
    Ok(())
}

/// Checks a notification URL: absolute http(s), no query string or fragment, at most 256
/// characters. Whether plain http is acceptable is the caller's policy (WeChat Pay wants
/// https for public hosts).
pub(crate) fn check_notify_url(field: &'static str, url: &str) -> Result<(), Error> {
    check_text(field, url, 256)?;
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| Error::field(field, format!("{url:?} is not an absolute http(s) URL")))?;
    if rest.is_empty() || rest.starts_with('/') {
        return Err(Error::field(field, format!("{url:?} has no host")));
    }
    if url.contains('?') || url.contains('#') {
        return Err(Error::field(
            field,
            format!("{url:?} has a query string or fragment; WeChat Pay requires a URL without parameters"),
        ));
    }
    if url.chars().any(char::is_whitespace) {
        return Err(Error::field(field, format!("{url:?} contains whitespace")));
    }
    Ok(())
}

/// A `Cow` holding a formatted number, for fields built from amounts.
pub(crate) fn num(v: impl std::fmt::Display) -> Cow<'static, str> {
    Cow::Owned(v.to_string())
}

/// Adds a request's extra fields: fields WeChat Pay accepts that this crate has no name for.
/// They are signed and sent like any other; one that clashes with a standard field is an
/// error rather than a silent override.
pub(crate) fn insert_extra<'a>(out: &mut Fields<'a>, extra: &'a BTreeMap<String, String>) -> Result<(), Error> {
    for (k, v) in extra {
        out.insert(k.as_str(), v.as_str())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexed_names_are_recognised() {
        assert!(is_indexed("coupon_id_0", "coupon_id"));
        assert!(is_indexed("coupon_refund_id_0_1", "coupon_refund_id"));
        assert!(!is_indexed("coupon_id_", "coupon_id"));
        assert!(!is_indexed("coupon_id_x", "coupon_id"));
        assert!(!is_indexed("coupon_id", "coupon_id"));
    }

    #[test]
    fn notify_urls_must_be_absolute_and_without_parameters() {
        assert!(check_notify_url("notify_url", "https://pay.example.com/notify/v2/pay").is_ok());
        assert!(check_notify_url("notify_url", "http://127.0.0.1:8080/notify/v2/pay").is_ok());
        for bad in [
            "/notify",
            "ftp://x/y",
            "https://x/y?a=1",
            "https://x/y#f",
            "https:///y",
            "https://x/ y",
        ] {
            assert!(check_notify_url("notify_url", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn text_fields_refuse_emoji_and_overlong_values() {
        assert!(check_text("body", "腾讯充值中心-QQ会员充值", 127).is_ok());
        assert!(check_text("body", "coffee ☕", 127).is_ok());
        assert!(
            check_text("body", "pizza 🍕", 127)
                .unwrap_err()
                .to_string()
                .contains("emoji")
        );
        assert!(check_text("body", &"x".repeat(128), 127).is_err());
    }
}
