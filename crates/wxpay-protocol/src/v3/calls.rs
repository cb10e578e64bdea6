//! The JSAPI calls of APIv3 as values: each request knows its method, path and JSON body;
//! each answer is read from the exact bytes received (after [`super::Verifier`]) into typed
//! fields, amounts as [`Fen`]. An error answer becomes [`V3Error`] with WeChat Pay's code and
//! the same retry classes as APIv2.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::v2::Retry;
use crate::{AppId, BeijingTime, Error, Fen, MchId, OutRefundNo, OutTradeNo};

/// A request: method, path with query (what the signature covers), and body (empty for
/// GET).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// `GET` or `POST`.
    pub method: &'static str,
    /// The path and query, as signed and sent.
    pub url: String,
    /// The JSON body, exactly as signed and sent.
    pub body: String,
}

/// Escapes a path segment. Order and refund numbers are ASCII letters, digits and
/// `_ - | * @`; `|`, `*` and `@` are escaped, as WeChat Pay's SDKs do.
fn segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => char::from(b).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// What a JSAPI order is created with (`POST /v3/pay/transactions/jsapi`).
#[derive(Clone, Debug)]
pub struct CreateJsapi<'a> {
    /// The mini program.
    pub appid: &'a AppId,
    /// The merchant.
    pub mchid: &'a MchId,
    /// What is bought (at most 127 characters).
    pub description: &'a str,
    /// The order number.
    pub out_trade_no: &'a OutTradeNo,
    /// When it can no longer be paid, Unix seconds (sent as RFC 3339 in Beijing time).
    pub time_expire: Option<i64>,
    /// Merchant data echoed back (at most 128 characters).
    pub attach: Option<&'a str>,
    /// Where WeChat Pay notifies (https, no query).
    pub notify_url: &'a str,
    /// The amount.
    pub amount: Fen,
    /// The payer.
    pub openid: &'a str,
}

impl CreateJsapi<'_> {
    /// Checks what WeChat Pay would refuse, before anything is sent: a description of 1 to
    /// 127 characters, an attach of at most 128, an openid of 1 to 128, and a number that may
    /// name a new order ([`OutTradeNo::check_new`]).
    ///
    /// # Errors
    /// [`Error::InvalidField`], naming the field.
    pub fn check(&self) -> Result<(), Error> {
        if self.description.is_empty() || self.description.chars().count() > 127 {
            return Err(Error::field("description", "1 to 127 characters"));
        }
        if self.attach.is_some_and(|a| a.chars().count() > 128) {
            return Err(Error::field("attach", "at most 128 characters"));
        }
        if self.openid.is_empty() || self.openid.len() > 128 {
            return Err(Error::field(
                "openid",
                "1 to 128 characters (a JSAPI payment needs the payer's openid)",
            ));
        }
        self.out_trade_no.check_new()
    }

    /// The request.
    pub fn request(&self) -> Request {
        // Fields in the order of WeChat Pay's documentation (a struct keeps its order; a
        // JSON map would sort them).
        #[derive(Serialize)]
        struct Body<'a> {
            appid: &'a str,
            mchid: &'a str,
            description: &'a str,
            out_trade_no: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            time_expire: Option<String>,
            #[serde(skip_serializing_if = "Option::is_none")]
            attach: Option<&'a str>,
            notify_url: &'a str,
            amount: Amount,
            payer: Payer<'a>,
        }
        #[derive(Serialize)]
        struct Amount {
            total: u64,
            currency: &'static str,
        }
        #[derive(Serialize)]
        struct Payer<'a> {
            openid: &'a str,
        }
        let body = Body {
            appid: self.appid.as_str(),
            mchid: self.mchid.as_str(),
            description: self.description,
            out_trade_no: self.out_trade_no.as_str(),
            time_expire: self.time_expire.map(rfc3339_beijing),
            attach: self.attach,
            notify_url: self.notify_url,
            amount: Amount {
                total: self.amount.get(),
                currency: "CNY",
            },
            payer: Payer { openid: self.openid },
        };
        Request {
            method: "POST",
            url: "/v3/pay/transactions/jsapi".to_owned(),
            body: to_json(&body),
        }
    }
}

/// `2026-12-03T16:00:00+08:00` for Unix seconds.
pub fn rfc3339_beijing(unix: i64) -> String {
    let dashed = BeijingTime::from_unix(unix).to_dashed();
    format!("{}T{}+08:00", &dashed[..10], &dashed[11..])
}

/// Unix seconds of an RFC 3339 time as WeChat Pay writes them (`…T…+08:00`, or `Z`).
///
/// # Errors
/// [`Error::Invalid`] for another shape.
pub fn parse_rfc3339(s: &str) -> Result<i64, Error> {
    let invalid = || {
        Error::invalid(
            "time",
            format!("{s:?} is not an RFC 3339 time such as 2018-06-08T10:34:56+08:00"),
        )
    };
    // Byte offsets below: only an ASCII text can be sliced at them.
    if !s.is_ascii() {
        return Err(invalid());
    }
    let (local, offset) = match s.len() {
        20 if s.ends_with('Z') => (&s[..19], 0),
        25 => {
            let (sign, hh, mm) = (&s[19..20], &s[20..22], &s[23..25]);
            let minutes = hh.parse::<i64>().map_err(|_| invalid())? * 60 + mm.parse::<i64>().map_err(|_| invalid())?;
            match (sign, &s[22..23]) {
                ("+", ":") => (&s[..19], minutes * 60),
                ("-", ":") => (&s[..19], -minutes * 60),
                _ => return Err(invalid()),
            }
        }
        _ => return Err(invalid()),
    };
    if local.as_bytes().get(10) != Some(&b'T') {
        return Err(invalid());
    }
    let as_beijing = BeijingTime::parse_dashed(&local.replacen('T', " ", 1)).map_err(|_| invalid())?;
    // parse_dashed reads the clock time as Beijing's (+08:00); move it to the stated offset.
    Ok(as_beijing.unix() + 8 * 3600 - offset)
}

/// `{"prepay_id": …}`, the answer to [`CreateJsapi`].
///
/// # Errors
/// [`Error::MissingField`] or a JSON error as [`Error::InvalidField`].
pub fn prepay_id(body: &[u8]) -> Result<String, Error> {
    #[derive(Deserialize)]
    struct Answer {
        prepay_id: Option<String>,
    }
    let answer: Answer = parse(body)?;
    answer
        .prepay_id
        .filter(|p| !p.is_empty())
        .ok_or_else(|| Error::MissingField("prepay_id".to_owned()))
}

/// A request body as JSON; the bodies here are plain structs, which always serialize.
fn to_json<T: Serialize>(body: &T) -> String {
    serde_json::to_string(body).unwrap_or_default()
}

/// The fields of an answer's JSON object, read by name.
struct Object<'a>(&'a Value);

impl Object<'_> {
    /// A non-empty text field.
    fn text(&self, name: &str) -> Option<&str> {
        self.0.get(name).and_then(Value::as_str).filter(|s| !s.is_empty())
    }

    /// A text field that must be there.
    fn required(&self, name: &str) -> Result<String, Error> {
        self.text(name)
            .map(str::to_owned)
            .ok_or_else(|| Error::MissingField(name.to_owned()))
    }

    /// `amount.<name>`, a whole number of fen, when given.
    fn fen(&self, name: &str) -> Result<Option<Fen>, Error> {
        match self.0.get("amount").and_then(|a| a.get(name)) {
            None | Some(Value::Null) => Ok(None),
            Some(t) => t
                .as_u64()
                .ok_or_else(|| Error::InvalidField {
                    field: format!("amount.{name}"),
                    reason: format!("{t} is not a whole number of fen"),
                })
                .and_then(Fen::new)
                .map(Some),
        }
    }

    /// A time field, RFC 3339, when given.
    fn time(&self, name: &str) -> Result<Option<i64>, Error> {
        self.text(name).map(parse_rfc3339).transpose()
    }
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Error> {
    serde_json::from_slice(body).map_err(|e| Error::InvalidField {
        field: "body".to_owned(),
        reason: format!("not the JSON expected: {e}"),
    })
}

/// `GET /v3/pay/transactions/out-trade-no/{no}?mchid=…`.
pub fn query_by_out_trade_no(out_trade_no: &OutTradeNo, mchid: &MchId) -> Request {
    Request {
        method: "GET",
        url: format!(
            "/v3/pay/transactions/out-trade-no/{}?mchid={}",
            segment(out_trade_no.as_str()),
            mchid.as_str()
        ),
        body: String::new(),
    }
}

/// `GET /v3/pay/transactions/id/{transaction_id}?mchid=…`.
pub fn query_by_transaction_id(transaction_id: &str, mchid: &MchId) -> Request {
    Request {
        method: "GET",
        url: format!(
            "/v3/pay/transactions/id/{}?mchid={}",
            segment(transaction_id),
            mchid.as_str()
        ),
        body: String::new(),
    }
}

/// `POST /v3/pay/transactions/out-trade-no/{no}/close`; WeChat Pay answers 204 without a
/// body.
pub fn close(out_trade_no: &OutTradeNo, mchid: &MchId) -> Request {
    Request {
        method: "POST",
        url: format!(
            "/v3/pay/transactions/out-trade-no/{}/close",
            segment(out_trade_no.as_str())
        ),
        body: json!({ "mchid": mchid.as_str() }).to_string(),
    }
}

/// A transaction's state (`trade_state`): the same states and names as APIv2's.
pub use crate::v2::TradeState;

/// A transaction, as a query answers it and a `TRANSACTION.SUCCESS` notification's resource
/// holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transaction {
    /// The mini program.
    pub appid: String,
    /// The merchant.
    pub mchid: String,
    /// The order number.
    pub out_trade_no: OutTradeNo,
    /// WeChat Pay's number, once paid.
    pub transaction_id: Option<String>,
    /// Where it stands.
    pub trade_state: TradeState,
    /// When it was paid (Unix seconds), once paid.
    pub success_time: Option<i64>,
    /// The order's amount, when given.
    pub total: Option<Fen>,
    /// The currency, when given.
    pub currency: Option<String>,
    /// The payer, when given.
    pub openid: Option<String>,
    /// Merchant data, when given.
    pub attach: Option<String>,
}

/// Reads a transaction (a query's answer, or a decrypted `transaction` resource).
///
/// # Errors
/// [`Error`] when a field is missing or of another shape (an amount that is not whole fen).
pub fn transaction(body: &[u8]) -> Result<Transaction, Error> {
    let v: Value = parse(body)?;
    let o = Object(&v);
    let amount = v.get("amount");
    Ok(Transaction {
        appid: o.required("appid")?,
        mchid: o.required("mchid")?,
        out_trade_no: OutTradeNo::new(o.required("out_trade_no")?)?,
        transaction_id: o.text("transaction_id").map(str::to_owned),
        trade_state: TradeState::parse(&o.required("trade_state")?),
        success_time: o.time("success_time")?,
        total: o.fen("total")?,
        currency: amount
            .and_then(|a| a.get("currency"))
            .and_then(Value::as_str)
            .map(str::to_owned),
        openid: v
            .get("payer")
            .and_then(|p| p.get("openid"))
            .and_then(Value::as_str)
            .map(str::to_owned),
        attach: o.text("attach").map(str::to_owned),
    })
}

/// What a refund is asked with (`POST /v3/refund/domestic/refunds`).
#[derive(Clone, Debug)]
pub struct CreateRefund<'a> {
    /// The order refunded.
    pub out_trade_no: &'a OutTradeNo,
    /// The refund's number.
    pub out_refund_no: &'a OutRefundNo,
    /// Shown to the payer (at most 80 characters).
    pub reason: Option<&'a str>,
    /// Where WeChat Pay notifies the refund's end.
    pub notify_url: Option<&'a str>,
    /// How much.
    pub refund: Fen,
    /// The order's amount.
    pub total: Fen,
}

impl CreateRefund<'_> {
    /// Checks what WeChat Pay would refuse, before anything is sent: a reason of at most 80
    /// characters.
    ///
    /// # Errors
    /// [`Error::InvalidField`], naming the field.
    pub fn check(&self) -> Result<(), Error> {
        if self.reason.is_some_and(|r| r.chars().count() > 80) {
            return Err(Error::field("reason", "at most 80 characters"));
        }
        Ok(())
    }

    /// The request.
    pub fn request(&self) -> Request {
        #[derive(Serialize)]
        struct Body<'a> {
            out_trade_no: &'a str,
            out_refund_no: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            reason: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            notify_url: Option<&'a str>,
            amount: Amount,
        }
        #[derive(Serialize)]
        struct Amount {
            refund: u64,
            total: u64,
            currency: &'static str,
        }
        let body = Body {
            out_trade_no: self.out_trade_no.as_str(),
            out_refund_no: self.out_refund_no.as_str(),
            reason: self.reason,
            notify_url: self.notify_url,
            amount: Amount {
                refund: self.refund.get(),
                total: self.total.get(),
                currency: "CNY",
            },
        };
        Request {
            method: "POST",
            url: "/v3/refund/domestic/refunds".to_owned(),
            body: to_json(&body),
        }
    }
}

/// `GET /v3/refund/domestic/refunds/{out_refund_no}`.
pub fn query_refund(out_refund_no: &OutRefundNo) -> Request {
    Request {
        method: "GET",
        url: format!("/v3/refund/domestic/refunds/{}", segment(out_refund_no.as_str())),
        body: String::new(),
    }
}

/// A refund's state (`status`, or `refund_status` in a notification).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RefundStatus {
    /// Paid back.
    Success,
    /// Closed without paying back.
    Closed,
    /// Being processed.
    Processing,
    /// Failed at the payer's side (a closed card): to be handled in the merchant platform.
    Abnormal,
    /// Any other state, verbatim.
    Other(String),
}

impl RefundStatus {
    fn parse(s: &str) -> RefundStatus {
        match s {
            "SUCCESS" => RefundStatus::Success,
            "CLOSED" => RefundStatus::Closed,
            "PROCESSING" => RefundStatus::Processing,
            "ABNORMAL" => RefundStatus::Abnormal,
            other => RefundStatus::Other(other.to_owned()),
        }
    }
}

/// A refund, as its creation and query answer it and a refund notification's resource holds
/// it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefundRecord {
    /// WeChat Pay's number.
    pub refund_id: String,
    /// The refund's number.
    pub out_refund_no: OutRefundNo,
    /// The order.
    pub out_trade_no: OutTradeNo,
    /// The payment.
    pub transaction_id: Option<String>,
    /// Where it stands.
    pub status: RefundStatus,
    /// When it succeeded (Unix seconds).
    pub success_time: Option<i64>,
    /// How much.
    pub refund: Fen,
    /// The order's amount.
    pub total: Option<Fen>,
}

/// Reads a refund (an answer, or a decrypted `refund` resource, whose state is
/// `refund_status`).
///
/// # Errors
/// [`Error`] when a field is missing or of another shape.
pub fn refund_record(body: &[u8]) -> Result<RefundRecord, Error> {
    let v: Value = parse(body)?;
    let o = Object(&v);
    let status = o
        .text("status")
        .or_else(|| o.text("refund_status"))
        .ok_or_else(|| Error::MissingField("status".to_owned()))?;
    Ok(RefundRecord {
        refund_id: o.required("refund_id")?,
        out_refund_no: OutRefundNo::new(o.required("out_refund_no")?)?,
        out_trade_no: OutTradeNo::new(o.required("out_trade_no")?)?,
        transaction_id: o.text("transaction_id").map(str::to_owned),
        status: RefundStatus::parse(status),
        success_time: o.time("success_time")?,
        refund: o
            .fen("refund")?
            .ok_or_else(|| Error::MissingField("amount.refund".to_owned()))?,
        total: o.fen("total")?,
    })
}

/// `GET /v3/certificates`: the platform certificates, each encrypted with the APIv3 key.
pub fn certificates() -> Request {
    Request {
        method: "GET",
        url: "/v3/certificates".to_owned(),
        body: String::new(),
    }
}

/// A platform certificate as `/v3/certificates` lists it, decrypted.
#[derive(Clone, Debug)]
pub struct PlatformCertificate {
    /// The serial the list names (checked against the certificate's own).
    pub serial_no: String,
    /// When it takes effect (RFC 3339, as listed).
    pub effective_time: String,
    /// When it expires (RFC 3339, as listed; moved earlier during a rotation).
    pub expire_time: String,
    /// The certificate's PEM.
    pub pem: String,
    /// The certificate, parsed.
    pub certificate: super::Certificate,
}

/// Reads `/v3/certificates`' answer (after its signature is verified) and decrypts every
/// certificate with the APIv3 key. A certificate whose serial is not the one listed is
/// refused: the list must not name a key for another.
///
/// # Errors
/// [`Error::InvalidField`] for a list that is not the expected JSON, a certificate that does
/// not decrypt or parse, or a serial that does not match.
pub fn platform_certificates(body: &[u8], api_v3_key: &[u8]) -> Result<Vec<PlatformCertificate>, Error> {
    #[derive(Deserialize)]
    struct List {
        data: Vec<Item>,
    }
    #[derive(Deserialize)]
    struct Item {
        serial_no: String,
        #[serde(default)]
        effective_time: String,
        #[serde(default)]
        expire_time: String,
        encrypt_certificate: Encrypted,
    }
    #[derive(Deserialize)]
    struct Encrypted {
        algorithm: String,
        nonce: String,
        #[serde(default)]
        associated_data: String,
        ciphertext: String,
    }
    let field = |reason: String| Error::InvalidField {
        field: "data".to_owned(),
        reason,
    };
    let list: List = parse(body)?;
    list.data
        .into_iter()
        .map(|item| {
            let e = &item.encrypt_certificate;
            if e.algorithm != "AEAD_AES_256_GCM" {
                return Err(field(format!("certificate {} uses {:?}", item.serial_no, e.algorithm)));
            }
            let plain = super::aead::decrypt(api_v3_key, &e.nonce, &e.associated_data, &e.ciphertext)
                .map_err(|err| field(format!("certificate {}: {err}", item.serial_no)))?;
            let pem =
                String::from_utf8(plain).map_err(|_| field(format!("certificate {} is not text", item.serial_no)))?;
            let certificate = super::Certificate::from_pem(&pem)?;
            if !certificate.serial_no().eq_ignore_ascii_case(&item.serial_no) {
                return Err(field(format!(
                    "the list names serial {} for a certificate with serial {}",
                    item.serial_no,
                    certificate.serial_no()
                )));
            }
            Ok(PlatformCertificate {
                serial_no: certificate.serial_no().to_owned(),
                effective_time: item.effective_time,
                expire_time: item.expire_time,
                pem,
                certificate,
            })
        })
        .collect()
}

/// `GET /v3/bill/tradebill?bill_date=YYYY-MM-DD&bill_type=ALL`: where to download a day's
/// trade bill; with `gzip`, `&tar_type=GZIP`, and the file is a gzip stream of the bill
/// ([`crate::v2::gunzip`]).
pub fn trade_bill(bill_date: &str, gzip: bool) -> Request {
    let tar_type = if gzip { "&tar_type=GZIP" } else { "" };
    Request {
        method: "GET",
        url: format!(
            "/v3/bill/tradebill?bill_date={}&bill_type=ALL{tar_type}",
            segment(bill_date)
        ),
        body: String::new(),
    }
}

/// Where a bill is, and the digest its bytes must have.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct BillLocation {
    /// `SHA1`.
    pub hash_type: String,
    /// The digest, hex.
    pub hash_value: String,
    /// Where to download it (a signed GET whose answer carries no signature).
    pub download_url: String,
}

/// Reads the answer to [`trade_bill`].
///
/// # Errors
/// [`Error::InvalidField`] when it is not the expected JSON.
pub fn bill_location(body: &[u8]) -> Result<BillLocation, Error> {
    parse(body)
}

impl BillLocation {
    /// Checks the bill against the digest (the download itself is not signed). The digest is
    /// of the bill as text: a bill downloaded with `tar_type=GZIP` is checked after gunzip
    /// ("原始账单(gzip需要解压缩)的摘要值").
    ///
    /// # Errors
    /// [`Error::InvalidField`] for another hash type or digest.
    pub fn check(&self, file: &[u8]) -> Result<(), Error> {
        if !self.hash_type.eq_ignore_ascii_case("SHA1") {
            return Err(Error::InvalidField {
                field: "hash_type".to_owned(),
                reason: format!("{:?}; only SHA1 is used", self.hash_type),
            });
        }
        let digest = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, file);
        let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        if hex.eq_ignore_ascii_case(&self.hash_value) {
            Ok(())
        } else {
            Err(Error::InvalidField {
                field: "hash_value".to_owned(),
                reason: format!("the file's SHA1 is {hex}, the bill says {}", self.hash_value),
            })
        }
    }

    /// Reads the file downloaded from this location after the bill was asked for as gzip
    /// ([`trade_bill`] with `gzip`): unpacked ([`crate::v2::gunzip`]; asked for as gzip, it
    /// must be gzip), checked against the digest, which is of the bill and not of the stream,
    /// and parsed.
    ///
    /// # Errors
    /// [`Error::Bill`] for a broken stream, text that is not UTF-8 or a bill that does not
    /// read; [`Error::InvalidField`] as for [`BillLocation::check`].
    pub fn read_gzip(&self, file: &[u8]) -> Result<crate::v2::Bill, Error> {
        let bill = crate::v2::gunzip(file)?;
        self.check(&bill)?;
        let text = std::str::from_utf8(&bill).map_err(|_| Error::Bill("the bill is not UTF-8 text".into()))?;
        crate::v2::Bill::parse(text)
    }
}

/// An error answer of APIv3: the HTTP status and the body's `code`, `message` and `detail`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("WeChat Pay answered HTTP {status} {code}: {message}")]
pub struct V3Error {
    /// The HTTP status.
    pub status: u16,
    /// `code`, such as `ORDER_NOT_EXIST` (empty when the body had none).
    pub code: String,
    /// `message`, for people.
    pub message: String,
    /// `detail`, when given (`field`, `value`, `issue`, `location`).
    pub detail: Option<Value>,
}

impl V3Error {
    /// Reads an error answer; a body that is not the error JSON keeps its first 200
    /// characters as the message.
    pub fn read(status: u16, body: &[u8]) -> V3Error {
        #[derive(Deserialize)]
        struct Body {
            code: Option<String>,
            message: Option<String>,
            detail: Option<Value>,
        }
        match serde_json::from_slice::<Body>(body) {
            Ok(b) => V3Error {
                status,
                code: b.code.unwrap_or_default(),
                message: b.message.unwrap_or_default(),
                detail: b.detail,
            },
            Err(_) => V3Error {
                status,
                code: String::new(),
                message: String::from_utf8_lossy(body).chars().take(200).collect(),
                detail: None,
            },
        }
    }

    /// What the caller may do: the same classes as APIv2 (`protocol.md` B.6).
    pub fn retry(&self) -> Retry {
        match (self.status, self.code.as_str()) {
            (_, "SYSTEM_ERROR" | "BANK_ERROR") => Retry::SameParameters,
            (_, "FREQUENCY_LIMITED" | "RATELIMIT_EXCEEDED" | "SERVICE_UNAVAILABLE") => Retry::WaitAndRetry,
            (429 | 502 | 503, _) => Retry::WaitAndRetry,
            // The two 500s that are business answers (B.6); any other server error leaves the
            // call's effect unknown, so it is repeated unchanged like `SYSTEM_ERROR`, never
            // taken as a final refusal.
            (500, "INVALID_TRANSACTIONID" | "OPENID_MISMATCH") => Retry::Final,
            (500..=599, _) => Retry::SameParameters,
            _ => Retry::Final,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_times_read_with_their_offset_and_write_in_beijing_time() {
        assert_eq!(parse_rfc3339("2018-06-08T10:34:56+08:00").unwrap(), 1_528_425_296);
        assert_eq!(parse_rfc3339("2018-06-08T02:34:56Z").unwrap(), 1_528_425_296);
        assert_eq!(parse_rfc3339("2018-06-07T21:34:56-05:00").unwrap(), 1_528_425_296);
        assert_eq!(rfc3339_beijing(1_528_425_296), "2018-06-08T10:34:56+08:00");
        for bad in [
            "2018-06-08 10:34:56+08:00",
            "2018-06-08T10:34:56",
            "2018-06-08T10:34:56+0800",
            "x",
            // 25 bytes with a character across the offsets that are sliced.
            "2018-06-08T10:34:5时8:00",
            "2018-06-08T10:34:56+0时0",
        ] {
            assert!(parse_rfc3339(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn numbers_in_paths_are_escaped() {
        let no = OutTradeNo::new("A|B*C").unwrap();
        let mchid = MchId::new("1900000109").unwrap();
        assert_eq!(
            query_by_out_trade_no(&no, &mchid).url,
            "/v3/pay/transactions/out-trade-no/A%7CB%2AC?mchid=1900000109"
        );
        assert_eq!(close(&no, &mchid).body, r#"{"mchid":"1900000109"}"#);
    }

    #[test]
    fn a_refund_reads_from_an_answer_and_from_a_notification_resource() {
        let answer = br#"{"refund_id":"50000000382019052709732678859","out_refund_no":"R1","transaction_id":"4200000000000000000000000001","out_trade_no":"W1","status":"PROCESSING","amount":{"refund":30,"total":100,"currency":"CNY"}}"#;
        let r = refund_record(answer).unwrap();
        assert_eq!(
            (r.status, r.refund, r.total),
            (
                RefundStatus::Processing,
                Fen::new(30).unwrap(),
                Some(Fen::new(100).unwrap())
            )
        );
        let resource = br#"{"mchid":"1900000109","transaction_id":"4200000000000000000000000001","out_trade_no":"W1","refund_id":"5000","out_refund_no":"R1","refund_status":"SUCCESS","success_time":"2018-06-08T10:34:56+08:00","amount":{"total":100,"refund":30,"payer_total":100,"payer_refund":30}}"#;
        let r = refund_record(resource).unwrap();
        assert_eq!((r.status, r.success_time), (RefundStatus::Success, Some(1_528_425_296)));
        assert!(
            refund_record(br#"{"refund_id":"1","out_refund_no":"R1","out_trade_no":"W1","status":"SUCCESS"}"#).is_err()
        );
        let request = CreateRefund {
            out_trade_no: &OutTradeNo::new("W1").unwrap(),
            out_refund_no: &OutRefundNo::new("R1").unwrap(),
            reason: None,
            notify_url: None,
            refund: Fen::new(30).unwrap(),
            total: Fen::new(100).unwrap(),
        }
        .request();
        assert_eq!(
            request.body,
            r#"{"out_trade_no":"W1","out_refund_no":"R1","amount":{"refund":30,"total":100,"currency":"CNY"}}"#
        );
    }

    #[test]
    fn a_bill_is_checked_against_its_sha1_and_its_date_goes_in_the_query() {
        assert_eq!(
            trade_bill("2026-12-02", false).url,
            "/v3/bill/tradebill?bill_date=2026-12-02&bill_type=ALL"
        );
        assert_eq!(
            trade_bill("2026-12-02", true).url,
            "/v3/bill/tradebill?bill_date=2026-12-02&bill_type=ALL&tar_type=GZIP"
        );
        let location = bill_location(
            br#"{"hash_type":"SHA1","hash_value":"a9993e364706816aba3e25717850c26c9cd0d89d","download_url":"https://api.mch.weixin.qq.com/v3/billdownload/file?token=x"}"#,
        )
        .unwrap();
        assert!(location.check(b"abc").is_ok());
        assert!(location.check(b"abd").is_err());
        let sha256 = BillLocation {
            hash_type: "SHA256".to_owned(),
            ..location
        };
        assert!(sha256.check(b"abc").is_err());
    }

    #[test]
    fn orders_and_refunds_are_checked_before_they_are_sent() {
        let (appid, mchid) = (
            AppId::new("wxd678efh567hg6787").unwrap(),
            MchId::new("1230000109").unwrap(),
        );
        let no = OutTradeNo::new("W12345").unwrap();
        let order = CreateJsapi {
            appid: &appid,
            mchid: &mchid,
            description: "咖啡",
            out_trade_no: &no,
            time_expire: None,
            attach: None,
            notify_url: "https://example.com/n",
            amount: Fen::new(1).unwrap(),
            openid: "o1",
        };
        assert!(order.check().is_ok());
        let field = |e: Error| match e {
            Error::InvalidField { field, .. } => field,
            other => panic!("{other:?}"),
        };
        let long = "长".repeat(128);
        for (bad, name) in [
            (
                CreateJsapi {
                    description: "",
                    ..order.clone()
                },
                "description",
            ),
            (
                CreateJsapi {
                    description: &long,
                    ..order.clone()
                },
                "description",
            ),
            (
                CreateJsapi {
                    attach: Some(&"a".repeat(129)),
                    ..order.clone()
                },
                "attach",
            ),
            (
                CreateJsapi {
                    openid: "",
                    ..order.clone()
                },
                "openid",
            ),
            (
                CreateJsapi {
                    out_trade_no: &OutTradeNo::new("W1").unwrap(),
                    ..order.clone()
                },
                "out_trade_no",
            ),
        ] {
            assert_eq!(field(bad.check().unwrap_err()), name);
        }
        let refund = CreateRefund {
            out_trade_no: &no,
            out_refund_no: &OutRefundNo::new("R1").unwrap(),
            reason: Some(&"因".repeat(80)),
            notify_url: None,
            refund: Fen::new(1).unwrap(),
            total: Fen::new(1).unwrap(),
        };
        assert!(refund.check().is_ok());
        let too_long = "因".repeat(81);
        assert_eq!(
            field(
                CreateRefund {
                    reason: Some(&too_long),
                    ..refund
                }
                .check()
                .unwrap_err()
            ),
            "reason"
        );
    }

    #[test]
    fn error_answers_keep_the_code_and_get_the_retry_class_of_b6() {
        let e = V3Error::read(404, r#"{"code":"ORDER_NOT_EXIST","message":"订单不存在"}"#.as_bytes());
        assert_eq!((e.code.as_str(), e.retry()), ("ORDER_NOT_EXIST", Retry::Final));
        assert_eq!(
            V3Error::read(500, br#"{"code":"SYSTEM_ERROR","message":"x"}"#).retry(),
            Retry::SameParameters
        );
        assert_eq!(
            V3Error::read(429, br#"{"code":"FREQUENCY_LIMITED","message":"x"}"#).retry(),
            Retry::WaitAndRetry
        );
        assert_eq!(V3Error::read(503, b"<html>busy</html>").retry(), Retry::WaitAndRetry);
        assert_eq!(
            V3Error::read(401, br#"{"code":"SIGN_ERROR","message":"x"}"#).retry(),
            Retry::Final
        );
        // A server error with a code B.6 does not list leaves the call's effect unknown: it
        // is repeated, never taken as final; the two business 500s are final.
        for unknown in [
            (500, r#"{"code":"INTERNAL_ERROR","message":"x"}"#),
            (501, r#"{"code":"NOT_IMPLEMENTED","message":"x"}"#),
            (504, "gateway timeout"),
        ] {
            assert_eq!(
                V3Error::read(unknown.0, unknown.1.as_bytes()).retry(),
                Retry::SameParameters,
                "{unknown:?}"
            );
        }
        assert_eq!(
            V3Error::read(500, br#"{"code":"OPENID_MISMATCH","message":"x"}"#).retry(),
            Retry::Final
        );
        assert_eq!(
            V3Error::read(500, br#"{"code":"INVALID_TRANSACTIONID","message":"x"}"#).retry(),
            Retry::Final
        );
        let odd = V3Error::read(502, b"<html>bad gateway</html>");
        assert_eq!(
            (odd.code.as_str(), odd.message.as_str()),
            ("", "<html>bad gateway</html>")
        );
    }
}
