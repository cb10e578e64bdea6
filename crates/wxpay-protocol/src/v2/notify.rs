//! Payment and refund notifications, and the replies WeChat Pay expects.
//!
//! A notification is read in two steps so that a gateway serving several merchants can find
//! the merchant before checking anything: [`NotificationFields::read`] runs only the hardened
//! XML reader and exposes `mch_id`/`appid`; [`NotificationFields::payment`] or
//! [`NotificationFields::refund`] then checks the notification with that merchant's
//! credentials and returns the typed value.

use std::collections::BTreeMap;

use aes::cipher::{BlockCipherDecrypt, BlockCipherEncrypt, KeyInit};
use base64::Engine;

use super::order::{Coupon, TradeType, insert_coupons, read_coupons};
use super::refund::RefundStatus;
use super::{
    ErrCode, check_merchant, check_return_code, extra_fields, fen, insert_extra, is_indexed, num, opt_fen, opt_string,
};
use crate::xml::{self, ReadOptions};
use crate::{ApiKey, BeijingTime, Error, Fen, Fields, Merchant, Nonce, SignType};

/// The reply that tells WeChat Pay a notification was received and handled. Anything else,
/// or no answer in time, makes it send the notification again.
pub const NOTIFY_SUCCESS_REPLY: &str =
    "<xml><return_code><![CDATA[SUCCESS]]></return_code><return_msg><![CDATA[OK]]></return_msg></xml>";

/// The reply that refuses a notification (WeChat Pay will retry it), with a reason.
pub fn notify_fail_reply(reason: &str) -> String {
    // A reason is free text; the writer escapes it, and a reason it cannot carry is replaced.
    super::fail_reply(reason, "refused")
}

/// A notification body that passed the hardened XML reader and nothing else yet.
#[derive(Clone, Debug)]
pub struct NotificationFields<'a> {
    fields: Fields<'a>,
}

impl<'a> NotificationFields<'a> {
    /// Reads a notification body with the hardened XML reader.
    ///
    /// # Errors
    /// [`Error::Xml`] for any body it refuses.
    pub fn read(body: &'a [u8]) -> Result<Self, Error> {
        Ok(NotificationFields {
            fields: xml::read(body)?,
        })
    }

    /// `mch_id` as sent (unverified), to find the merchant.
    pub fn mch_id(&self) -> Option<&str> {
        self.fields.optional("mch_id")
    }

    /// `appid` as sent (unverified).
    pub fn appid(&self) -> Option<&str> {
        self.fields.optional("appid")
    }

    /// `out_trade_no` as sent (unverified), for logging.
    pub fn out_trade_no(&self) -> Option<&str> {
        self.fields.optional("out_trade_no")
    }

    /// All fields as sent (unverified).
    pub fn fields(&self) -> &Fields<'a> {
        &self.fields
    }

    /// Checks a payment notification for `merchant` and returns it typed: `return_code`,
    /// the signature with the merchant's configured algorithm (a `sign_type` field cannot
    /// change it), `appid` and `mch_id`, then the payment fields. Whether the amount equals
    /// the order's is for the caller, who knows the order.
    ///
    /// # Errors
    /// [`Error::ReturnFail`], [`Error::MissingField`] (no `sign`), [`Error::SignTypeMismatch`],
    /// [`Error::BadSignature`], [`Error::MerchantMismatch`], or a field error.
    pub fn payment(&self, merchant: &Merchant) -> Result<PaymentNotification, Error> {
        let f = &self.fields;
        check_return_code(f)?;
        f.verify(&merchant.key, merchant.sign_type)?;
        check_merchant(f, merchant)?;
        PaymentNotification::from_verified(f)
    }

    /// Checks a refund notification for `merchant`: `return_code`, `appid` and `mch_id`,
    /// then decrypts `req_info` with the merchant's key. The notification carries no `sign`;
    /// its authenticity comes from the encryption, which only a holder of the key can produce.
    ///
    /// # Errors
    /// [`Error::ReturnFail`], [`Error::MerchantMismatch`], [`Error::Decrypt`], or a field error
    /// in the decrypted part.
    pub fn refund(&self, merchant: &Merchant) -> Result<RefundNotification, Error> {
        let f = &self.fields;
        check_return_code(f)?;
        check_merchant(f, merchant)?;
        let plain = decrypt_req_info(f.require("req_info")?, &merchant.key)?;
        let inner = xml::read_with(
            plain.as_bytes(),
            &ReadOptions {
                root: "root",
                ..ReadOptions::default()
            },
        )?;
        RefundNotification::from_fields(merchant, &inner)
    }
}

/// How the payment ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PaymentOutcome {
    /// `result_code=SUCCESS`: the money was taken.
    Paid {
        /// `transaction_id`: WeChat Pay's order number.
        transaction_id: String,
        /// `total_fee`: compare it with the order's amount before believing anything.
        total_fee: Fen,
        /// `time_end`: when it was paid.
        time_end: BeijingTime,
    },
    /// `result_code=FAIL`: the payment failed.
    Failed {
        /// `err_code`.
        code: ErrCode,
        /// `err_code_des`.
        description: String,
    },
}

/// A payment notification whose signature and merchant were checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PaymentNotification {
    /// `appid`.
    pub appid: String,
    /// `mch_id`.
    pub mch_id: String,
    /// `out_trade_no`.
    pub out_trade_no: String,
    /// Paid or failed.
    pub outcome: PaymentOutcome,
    /// `openid` of the payer.
    pub openid: Option<String>,
    /// `cash_fee`.
    pub cash_fee: Option<Fen>,
    /// `settlement_total_fee`.
    pub settlement_total_fee: Option<Fen>,
    /// `coupon_fee`.
    pub coupon_fee: Option<Fen>,
    /// The coupons used.
    pub coupons: Vec<Coupon>,
    /// `fee_type`.
    pub fee_type: Option<String>,
    /// `cash_fee_type`.
    pub cash_fee_type: Option<String>,
    /// `bank_type`.
    pub bank_type: Option<String>,
    /// `trade_type`.
    pub trade_type: Option<TradeType>,
    /// `is_subscribe`.
    pub is_subscribe: Option<String>,
    /// `attach` echoed from the order.
    pub attach: Option<String>,
    /// `device_info` echoed from the order.
    pub device_info: Option<String>,
    /// Fields this crate has no name for.
    pub extra: BTreeMap<String, String>,
}

impl PaymentNotification {
    /// Reads and checks a payment notification for one merchant; see
    /// [`NotificationFields::payment`].
    ///
    /// # Errors
    /// As [`NotificationFields::read`] and [`NotificationFields::payment`].
    pub fn parse(body: &[u8], merchant: &Merchant) -> Result<PaymentNotification, Error> {
        NotificationFields::read(body)?.payment(merchant)
    }

    fn from_verified(f: &Fields<'_>) -> Result<PaymentNotification, Error> {
        // One pass over the sorted fields with a match, instead of a lookup per field: this
        // runs for every notification the gateway receives.
        #[derive(Default)]
        struct Seen<'f> {
            appid: Option<&'f str>,
            mch_id: Option<&'f str>,
            out_trade_no: Option<&'f str>,
            result_code: Option<&'f str>,
            err_code: Option<&'f str>,
            err_code_des: Option<&'f str>,
            transaction_id: Option<&'f str>,
            total_fee: Option<&'f str>,
            time_end: Option<&'f str>,
            openid: Option<&'f str>,
            cash_fee: Option<&'f str>,
            settlement_total_fee: Option<&'f str>,
            coupon_fee: Option<&'f str>,
            coupon_count: Option<&'f str>,
            fee_type: Option<&'f str>,
            cash_fee_type: Option<&'f str>,
            bank_type: Option<&'f str>,
            trade_type: Option<&'f str>,
            is_subscribe: Option<&'f str>,
            attach: Option<&'f str>,
            device_info: Option<&'f str>,
        }
        let mut s = Seen::default();
        let mut extra = BTreeMap::new();
        for (k, v) in f.iter() {
            let slot = match k {
                "appid" => &mut s.appid,
                "mch_id" => &mut s.mch_id,
                "out_trade_no" => &mut s.out_trade_no,
                "result_code" => &mut s.result_code,
                "err_code" => &mut s.err_code,
                "err_code_des" => &mut s.err_code_des,
                "transaction_id" => &mut s.transaction_id,
                "total_fee" => &mut s.total_fee,
                "time_end" => &mut s.time_end,
                "openid" => &mut s.openid,
                "cash_fee" => &mut s.cash_fee,
                "settlement_total_fee" => &mut s.settlement_total_fee,
                "coupon_fee" => &mut s.coupon_fee,
                "coupon_count" => &mut s.coupon_count,
                "fee_type" => &mut s.fee_type,
                "cash_fee_type" => &mut s.cash_fee_type,
                "bank_type" => &mut s.bank_type,
                "trade_type" => &mut s.trade_type,
                "is_subscribe" => &mut s.is_subscribe,
                "attach" => &mut s.attach,
                "device_info" => &mut s.device_info,
                "nonce_str" | "return_code" | "return_msg" | "sign" | "sign_type" => continue,
                _ if ["coupon_id", "coupon_type", "coupon_fee"]
                    .iter()
                    .any(|p| is_indexed(k, p)) =>
                {
                    continue;
                }
                _ => {
                    extra.insert(k.to_owned(), v.to_owned());
                    continue;
                }
            };
            // An empty value counts as absent, as it does for the signature.
            *slot = Some(v).filter(|v| !v.is_empty());
        }
        fn need<'s>(v: Option<&'s str>, name: &str) -> Result<&'s str, Error> {
            v.ok_or_else(|| Error::MissingField(name.to_owned()))
        }
        let amount = |v: Option<&str>, name: &str| {
            v.map(|v| Fen::parse(v).map_err(|e| Error::field(name, e.to_string())))
                .transpose()
        };
        let owned = |v: Option<&str>| v.map(str::to_owned);
        let outcome = match need(s.result_code, "result_code")? {
            "SUCCESS" => PaymentOutcome::Paid {
                transaction_id: need(s.transaction_id, "transaction_id")?.to_owned(),
                total_fee: Fen::parse(need(s.total_fee, "total_fee")?)
                    .map_err(|e| Error::field("total_fee", e.to_string()))?,
                time_end: BeijingTime::parse_compact(need(s.time_end, "time_end")?)
                    .map_err(|e| Error::field("time_end", e.to_string()))?,
            },
            "FAIL" => PaymentOutcome::Failed {
                code: ErrCode::parse(s.err_code.unwrap_or_default()),
                description: s.err_code_des.unwrap_or_default().to_owned(),
            },
            other => {
                return Err(Error::field(
                    "result_code",
                    format!("{other:?} is neither SUCCESS nor FAIL"),
                ));
            }
        };
        let coupon_count = s
            .coupon_count
            .map(|v| super::parse_count("coupon_count", v))
            .transpose()?;
        Ok(PaymentNotification {
            appid: need(s.appid, "appid")?.to_owned(),
            mch_id: need(s.mch_id, "mch_id")?.to_owned(),
            out_trade_no: need(s.out_trade_no, "out_trade_no")?.to_owned(),
            outcome,
            openid: owned(s.openid),
            cash_fee: amount(s.cash_fee, "cash_fee")?,
            settlement_total_fee: amount(s.settlement_total_fee, "settlement_total_fee")?,
            coupon_fee: amount(s.coupon_fee, "coupon_fee")?,
            coupons: read_coupons(f, coupon_count)?,
            fee_type: owned(s.fee_type),
            cash_fee_type: owned(s.cash_fee_type),
            bank_type: owned(s.bank_type),
            trade_type: s.trade_type.map(TradeType::parse),
            is_subscribe: owned(s.is_subscribe),
            attach: owned(s.attach),
            device_info: owned(s.device_info),
            extra,
        })
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

/// A refund notification, decrypted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefundNotification {
    /// `appid` of the outer message.
    pub appid: String,
    /// `mch_id` of the outer message.
    pub mch_id: String,
    /// `transaction_id`.
    pub transaction_id: String,
    /// `out_trade_no`.
    pub out_trade_no: String,
    /// `refund_id`: WeChat Pay's refund number.
    pub refund_id: String,
    /// `out_refund_no`: match it against a refund the merchant asked for.
    pub out_refund_no: String,
    /// `total_fee` of the order.
    pub total_fee: Fen,
    /// `settlement_total_fee`.
    pub settlement_total_fee: Option<Fen>,
    /// `refund_fee`: the amount refunded.
    pub refund_fee: Fen,
    /// `settlement_refund_fee`.
    pub settlement_refund_fee: Option<Fen>,
    /// `refund_status`: `SUCCESS`, `CHANGE` or `REFUNDCLOSE`.
    pub refund_status: RefundStatus,
    /// `success_time`, when it succeeded.
    pub success_time: Option<BeijingTime>,
    /// `refund_recv_accout` (WeChat Pay's spelling): where the money went.
    pub refund_recv_accout: Option<String>,
    /// `refund_account`.
    pub refund_account: Option<String>,
    /// `refund_request_source`: `API` or `VENDOR_PLATFORM`.
    pub refund_request_source: Option<String>,
    /// Decrypted fields this crate has no name for.
    pub extra: BTreeMap<String, String>,
}

impl RefundNotification {
    /// Reads, checks and decrypts a refund notification for one merchant; see
    /// [`NotificationFields::refund`].
    ///
    /// # Errors
    /// As [`NotificationFields::read`] and [`NotificationFields::refund`].
    pub fn parse(body: &[u8], merchant: &Merchant) -> Result<RefundNotification, Error> {
        NotificationFields::read(body)?.refund(merchant)
    }

    fn from_fields(merchant: &Merchant, f: &Fields<'_>) -> Result<RefundNotification, Error> {
        let success_time = f
            .optional("success_time")
            .map(|v| BeijingTime::parse_dashed(v).map_err(|e| Error::field("success_time", e.to_string())))
            .transpose()?;
        Ok(RefundNotification {
            appid: merchant.appid.as_str().to_owned(),
            mch_id: merchant.mch_id.as_str().to_owned(),
            transaction_id: f.require("transaction_id")?.to_owned(),
            out_trade_no: f.require("out_trade_no")?.to_owned(),
            refund_id: f.require("refund_id")?.to_owned(),
            out_refund_no: f.require("out_refund_no")?.to_owned(),
            total_fee: fen(f, "total_fee")?,
            settlement_total_fee: opt_fen(f, "settlement_total_fee")?,
            refund_fee: fen(f, "refund_fee")?,
            settlement_refund_fee: opt_fen(f, "settlement_refund_fee")?,
            refund_status: RefundStatus::parse(f.require("refund_status")?),
            success_time,
            refund_recv_accout: opt_string(f, "refund_recv_accout"),
            refund_account: opt_string(f, "refund_account"),
            refund_request_source: opt_string(f, "refund_request_source"),
            extra: extra_fields(
                f,
                &[
                    "out_refund_no",
                    "out_trade_no",
                    "refund_account",
                    "refund_fee",
                    "refund_id",
                    "refund_recv_accout",
                    "refund_request_source",
                    "refund_status",
                    "settlement_refund_fee",
                    "settlement_total_fee",
                    "success_time",
                    "total_fee",
                    "transaction_id",
                ],
                &[],
            ),
        })
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

fn refund_cipher(key: &ApiKey) -> aes::Aes256 {
    // The AES key is the 32 ASCII characters of the lowercase hex MD5 of the API key.
    let aes_key = crate::sign::md5_lower_hex(key.expose().as_bytes());
    aes::Aes256::new(&aes_key.into())
}

/// Decrypts the `req_info` of a refund notification: Base64, then AES-256-ECB with the
/// lowercase hex MD5 of the API key as key, then PKCS#7 padding removed.
///
/// # Errors
/// [`Error::Decrypt`] when it is not Base64, not whole blocks, badly padded (the usual sign
/// of a wrong key) or not UTF-8.
pub fn decrypt_req_info(req_info: &str, key: &ApiKey) -> Result<String, Error> {
    let compact: String = req_info.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let mut data = base64::engine::general_purpose::STANDARD
        .decode(compact.as_bytes())
        .map_err(|e| Error::Decrypt(format!("req_info is not Base64 ({e})")))?;
    if data.is_empty() || data.len() % 16 != 0 {
        return Err(Error::Decrypt(format!(
            "{} bytes is not a whole number of 16-byte AES blocks",
            data.len()
        )));
    }
    let cipher = refund_cipher(key);
    for chunk in data.chunks_exact_mut(16) {
        let mut block = aes::Block::default();
        block.copy_from_slice(chunk);
        cipher.decrypt_block(&mut block);
        chunk.copy_from_slice(&block);
    }
    let pad = usize::from(*data.last().unwrap_or(&0));
    if pad == 0 || pad > 16 || !data[data.len() - pad..].iter().all(|b| usize::from(*b) == pad) {
        return Err(Error::Decrypt(
            "bad padding after decryption: the API key is probably not this merchant's".into(),
        ));
    }
    data.truncate(data.len() - pad);
    String::from_utf8(data)
        .map_err(|_| Error::Decrypt("the decrypted text is not UTF-8: the API key is probably wrong".into()))
}

/// Encrypts a refund notification's inner document into `req_info`, the inverse of
/// [`decrypt_req_info`]; the simulator and tests use it.
pub fn encrypt_req_info(plaintext: &str, key: &ApiKey) -> String {
    let mut data = plaintext.as_bytes().to_vec();
    let pad = 16 - data.len() % 16;
    data.extend(std::iter::repeat_n(pad as u8, pad));
    let cipher = refund_cipher(key);
    for chunk in data.chunks_exact_mut(16) {
        let mut block = aes::Block::default();
        block.copy_from_slice(chunk);
        cipher.encrypt_block(&mut block);
        chunk.copy_from_slice(&block);
    }
    base64::engine::general_purpose::STANDARD.encode(&data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fail_reply_escapes_its_reason() {
        let reply = notify_fail_reply("bad ]]> <sign>");
        let f = xml::read(reply.as_bytes()).unwrap();
        assert_eq!(f.get("return_code"), Some("FAIL"));
        assert_eq!(f.get("return_msg"), Some("bad ]]> <sign>"));
    }

    #[test]
    fn req_info_round_trips_and_a_wrong_key_is_reported() {
        let key = ApiKey::new("OF4Ne3znh8KqL0V4NqmALQa0uXMYKcEk").unwrap();
        let other = ApiKey::new("42cc1d91bab89b65ff55b19e28fff4f0").unwrap();
        for plain in ["", "x", "exactly sixteen!", "<root><a>1</a></root>"] {
            let enc = encrypt_req_info(plain, &key);
            assert_eq!(decrypt_req_info(&enc, &key).unwrap(), plain);
        }
        let enc = encrypt_req_info("<root><refund_fee>1</refund_fee></root>", &key);
        assert!(matches!(decrypt_req_info(&enc, &other), Err(Error::Decrypt(_))));
        assert!(matches!(decrypt_req_info("not base64!", &key), Err(Error::Decrypt(_))));
        assert!(matches!(decrypt_req_info("AAAA", &key), Err(Error::Decrypt(_))));
    }

    // The tests below were written for mutants that `scripts/mutants.sh` found surviving.

    #[test]
    fn req_info_that_is_empty_or_not_whole_blocks_is_refused_as_such() {
        let key = ApiKey::new("OF4Ne3znh8KqL0V4NqmALQa0uXMYKcEk").unwrap();
        let whole = encrypt_req_info("<root><a>1</a></root>", &key);
        let mut bytes = base64::engine::general_purpose::STANDARD.decode(&whole).unwrap();
        bytes.push(0);
        let ragged = base64::engine::general_purpose::STANDARD.encode(&bytes);
        for (req_info, len) in [("", 0), (ragged.as_str(), bytes.len())] {
            match decrypt_req_info(req_info, &key) {
                Err(Error::Decrypt(m)) => assert!(
                    m.starts_with(&format!("{len} bytes is not a whole number of 16-byte")),
                    "{m}"
                ),
                other => panic!("{len} bytes: {other:?}"),
            }
        }
    }

    fn signed(extra: &[(&str, &str)]) -> (Vec<u8>, Merchant) {
        let m = Merchant {
            appid: crate::AppId::new("wxd678efh567hg6787").unwrap(),
            mch_id: crate::MchId::new("1230000109").unwrap(),
            key: ApiKey::new("192006250b4c09247ec02edce69f6a2d").unwrap(),
            sign_type: crate::SignType::Md5,
        };
        let mut f = Fields::new();
        for (k, v) in [
            ("appid", "wxd678efh567hg6787"),
            ("mch_id", "1230000109"),
            ("nonce_str", "n1"),
            ("return_code", "SUCCESS"),
            ("result_code", "SUCCESS"),
            ("out_trade_no", "T1"),
            ("transaction_id", "4200000000202612030000000001"),
            ("total_fee", "100"),
            ("time_end", "20261203120000"),
        ]
        .iter()
        .chain(extra)
        {
            f.set(*k, *v);
        }
        f.sign(&m.key, crate::SignType::Md5);
        (f.to_xml().unwrap().into_bytes(), m)
    }

    #[test]
    fn settlement_amounts_are_read_and_unknown_fields_are_kept_but_coupon_rows_are_not() {
        let (body, m) = signed(&[
            ("settlement_total_fee", "90"),
            ("coupon_fee", "10"),
            ("coupon_count", "1"),
            ("coupon_id_0", "C1"),
            ("coupon_fee_0", "10"),
            ("promotion_detail", "{}"),
            ("coupon_idx", "kept: not an indexed coupon row"),
        ]);
        let n = PaymentNotification::parse(&body, &m).unwrap();
        assert_eq!(n.settlement_total_fee, Some(Fen::new(90).unwrap()));
        assert_eq!(n.coupon_fee, Some(Fen::new(10).unwrap()));
        let extra: Vec<&str> = n.extra.keys().map(String::as_str).collect();
        assert_eq!(extra, ["coupon_idx", "promotion_detail"]);
    }
}
