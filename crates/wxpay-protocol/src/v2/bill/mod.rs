//! The transaction bill of `pay/downloadbill`, parsed into rows with exact fen.
//!
//! The bill is CSV-like text: a header line, one line per payment or refund with every
//! value prefixed by a backtick, a summary header starting with `总交易单数`, and the summary
//! values. Columns are mapped by header name, so the current layouts (27/20/29 columns) and
//! the legacy ones (24/18/26) both read. Amounts are yuan with up to two decimals and become
//! fen without any rounding; the summary is checked against the rows, so a truncated or
//! altered bill is refused rather than half-read.
//!
//! The call that fetches it, [`DownloadBill`], lives here too, in both directions; writing a
//! bill as WeChat Pay sends it is in `write`.

use std::collections::BTreeMap;
use std::fmt;

use super::fields_util::request_extra;
use super::{FromFields, ToFields, V2Call, insert_extra};
use crate::types::parse_decimal_scaled;
use crate::{BeijingTime, Error, Fen, Fields, Merchant};

mod write;

/// `bill_type` of `downloadbill`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum BillType {
    /// `ALL`: payments and refunds.
    #[default]
    All,
    /// `SUCCESS`: payments only.
    Success,
    /// `REFUND`: refunds only.
    Refund,
    /// `RECHARGE_REFUND`: refunds of recharge coupons only.
    RechargeRefund,
}

impl BillType {
    /// The wire value.
    pub fn as_str(self) -> &'static str {
        match self {
            BillType::All => "ALL",
            BillType::Success => "SUCCESS",
            BillType::Refund => "REFUND",
            BillType::RechargeRefund => "RECHARGE_REFUND",
        }
    }

    /// Reads the wire value.
    ///
    /// # Errors
    /// [`Error::Invalid`] for anything but the four values.
    pub fn parse(s: &str) -> Result<BillType, Error> {
        match s {
            "ALL" => Ok(BillType::All),
            "SUCCESS" => Ok(BillType::Success),
            "REFUND" => Ok(BillType::Refund),
            "RECHARGE_REFUND" => Ok(BillType::RechargeRefund),
            other => Err(Error::invalid(
                "bill_type",
                format!("{other:?} is not ALL, SUCCESS, REFUND or RECHARGE_REFUND"),
            )),
        }
    }
}

/// A fee (手续费) as bills print it: yuan with five decimals, negative on refund rows. Held
/// exactly, in units of 0.00001 yuan.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct BillFee(i64);

impl BillFee {
    /// Parses `0.04000`, `-0.02000`, `0.0`, `0`.
    ///
    /// # Errors
    /// [`Error::Invalid`] for more than five significant decimals or a non-number.
    pub fn parse(s: &str) -> Result<BillFee, Error> {
        parse_decimal_scaled(s, 5, "fee").map(BillFee)
    }

    /// A fee of `v` units of 0.00001 yuan.
    pub fn from_hundred_thousandths(v: i64) -> BillFee {
        BillFee(v)
    }

    /// The fee in units of 0.00001 yuan.
    pub fn hundred_thousandths_of_yuan(self) -> i64 {
        self.0
    }

    /// The fee in whole fen, when it is one (WeChat Pay rounds fees to the fen).
    pub fn to_fen_exact(self) -> Option<i64> {
        (self.0 % 1000 == 0).then_some(self.0 / 1000)
    }
}

impl fmt::Debug for BillFee {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BillFee({self})")
    }
}

impl fmt::Display for BillFee {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let a = self.0.unsigned_abs();
        write!(f, "{sign}{}.{:05}", a / 100_000, a % 100_000)
    }
}

/// One line of a bill: a payment (`trade_state` `SUCCESS`) or a refund (`REFUND`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BillRow {
    /// 交易时间: payment success time, or for a refund row when the refund was accepted.
    pub trade_time: BeijingTime,
    /// 公众账号ID.
    pub appid: String,
    /// 商户号.
    pub mch_id: String,
    /// 特约商户号 / 子商户号 (`0` for a direct merchant).
    pub sub_mch_id: String,
    /// 设备号.
    pub device_info: String,
    /// 微信订单号.
    pub transaction_id: String,
    /// 商户订单号.
    pub out_trade_no: String,
    /// 用户标识 (openid).
    pub openid: String,
    /// 交易类型 (`JSAPI` for mini programs).
    pub trade_type: String,
    /// 交易状态: `SUCCESS` on payment rows, `REFUND` on refund rows.
    pub trade_state: String,
    /// 付款银行.
    pub bank_type: String,
    /// 货币种类.
    pub currency: String,
    /// 应结订单金额 (legacy: 总金额).
    pub settlement_total_fee: Fen,
    /// 代金券金额 (legacy: 代金券或立减优惠金额).
    pub coupon_fee: Fen,
    /// 退款申请时间 (REFUND bills only).
    pub refund_apply_time: Option<BeijingTime>,
    /// 退款成功时间 (REFUND bills only, when it succeeded).
    pub refund_success_time: Option<BeijingTime>,
    /// 微信退款单号 (`None` on payment rows, where the bill prints `0`).
    pub refund_id: Option<String>,
    /// 商户退款单号.
    pub out_refund_no: Option<String>,
    /// 退款金额.
    pub refund_fee: Fen,
    /// 充值券退款金额 (legacy: 代金券或立减优惠退款金额).
    pub coupon_refund_fee: Fen,
    /// 退款类型 (`ORIGINAL`, `BALANCE`).
    pub refund_type: Option<String>,
    /// 退款状态 at the time the bill was made.
    pub refund_status: Option<String>,
    /// 商品名称 (`body`).
    pub body: String,
    /// 商户数据包 (`attach`).
    pub attach: String,
    /// 手续费.
    pub fee: BillFee,
    /// 费率, such as `0.60%`.
    pub rate: String,
    /// 订单金额 (current layouts only).
    pub total_fee: Option<Fen>,
    /// 申请退款金额 (current layouts only).
    pub refund_apply_fee: Option<Fen>,
    /// 费率备注.
    pub rate_remark: Option<String>,
    /// Columns this crate does not know, by header name.
    pub extra: BTreeMap<String, String>,
}

impl Default for BillRow {
    /// An empty row: zero amounts, empty texts, the Unix epoch as its time.
    fn default() -> BillRow {
        BillRow {
            trade_time: BeijingTime::from_unix(0),
            appid: String::new(),
            mch_id: String::new(),
            sub_mch_id: String::new(),
            device_info: String::new(),
            transaction_id: String::new(),
            out_trade_no: String::new(),
            openid: String::new(),
            trade_type: String::new(),
            trade_state: String::new(),
            bank_type: String::new(),
            currency: String::new(),
            settlement_total_fee: Fen::ZERO,
            coupon_fee: Fen::ZERO,
            refund_apply_time: None,
            refund_success_time: None,
            refund_id: None,
            out_refund_no: None,
            refund_fee: Fen::ZERO,
            coupon_refund_fee: Fen::ZERO,
            refund_type: None,
            refund_status: None,
            body: String::new(),
            attach: String::new(),
            fee: BillFee::default(),
            rate: String::new(),
            total_fee: None,
            refund_apply_fee: None,
            rate_remark: None,
            extra: BTreeMap::new(),
        }
    }
}

/// The summary line of a bill.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BillSummary {
    /// 总交易单数: the number of rows.
    pub count: u64,
    /// 应结订单总金额 (legacy: 总交易额).
    pub settlement_total_fee: Fen,
    /// 退款总金额.
    pub refund_fee: Fen,
    /// 充值券退款总金额 (legacy: 总代金券或立减优惠退款金额).
    pub coupon_refund_fee: Fen,
    /// 手续费总金额.
    pub fee: BillFee,
    /// 订单总金额 (current layout only).
    pub total_fee: Option<Fen>,
    /// 申请退款总金额 (current layout only).
    pub refund_apply_fee: Option<Fen>,
}

/// A parsed bill whose summary agrees with its rows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bill {
    /// The header names as printed.
    pub columns: Vec<String>,
    /// The rows in order.
    pub rows: Vec<BillRow>,
    /// The summary.
    pub summary: BillSummary,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Col {
    TradeTime,
    Appid,
    MchId,
    SubMchId,
    DeviceInfo,
    TransactionId,
    OutTradeNo,
    Openid,
    TradeType,
    TradeState,
    BankType,
    Currency,
    SettlementTotal,
    Coupon,
    RefundApplyTime,
    RefundSuccessTime,
    RefundId,
    OutRefundNo,
    RefundFee,
    CouponRefund,
    RefundType,
    RefundStatus,
    Body,
    Attach,
    Fee,
    Rate,
    TotalFee,
    RefundApplyFee,
    RateRemark,
    Unknown,
}

fn column(header: &str) -> Col {
    match header {
        "交易时间" => Col::TradeTime,
        "公众账号ID" | "服务商的APPID" => Col::Appid,
        "商户号" => Col::MchId,
        "特约商户号" | "子商户号" => Col::SubMchId,
        "设备号" => Col::DeviceInfo,
        "微信订单号" => Col::TransactionId,
        "商户订单号" => Col::OutTradeNo,
        "用户标识" => Col::Openid,
        "交易类型" => Col::TradeType,
        "交易状态" => Col::TradeState,
        "付款银行" => Col::BankType,
        "货币种类" => Col::Currency,
        "应结订单金额" | "总金额" => Col::SettlementTotal,
        "代金券金额" | "代金券或立减优惠金额" => Col::Coupon,
        "退款申请时间" => Col::RefundApplyTime,
        "退款成功时间" => Col::RefundSuccessTime,
        "微信退款单号" => Col::RefundId,
        "商户退款单号" => Col::OutRefundNo,
        "退款金额" => Col::RefundFee,
        "充值券退款金额" | "代金券或立减优惠退款金额" => Col::CouponRefund,
        "退款类型" => Col::RefundType,
        "退款状态" => Col::RefundStatus,
        "商品名称" => Col::Body,
        "商户数据包" => Col::Attach,
        "手续费" | "返还手续费" => Col::Fee,
        "费率" => Col::Rate,
        "订单金额" => Col::TotalFee,
        "申请退款金额" => Col::RefundApplyFee,
        "费率备注" => Col::RateRemark,
        _ => Col::Unknown,
    }
}

/// Splits a value line: each value starts with a backtick and values are separated by
/// commas, so the separator is ",`".
fn split_values(line: &str) -> Result<Vec<&str>, String> {
    let Some(rest) = line.strip_prefix('`') else {
        return Err("a value line must start with a backtick".into());
    };
    Ok(rest.split(",`").collect())
}

fn optional_time(v: &str, what: &str) -> Result<Option<BeijingTime>, String> {
    if v.is_empty() {
        return Ok(None);
    }
    BeijingTime::parse_dashed(v)
        .map(Some)
        .map_err(|e| format!("{what}: {e}"))
}

fn none_if_placeholder(v: &str) -> Option<String> {
    // Payment rows print `0` in the refund number columns.
    (!v.is_empty() && v != "0").then(|| v.to_owned())
}

fn yuan(v: &str, header: &str) -> Result<Fen, String> {
    Fen::from_yuan(v).map_err(|e| format!("{header}: {e}"))
}

impl Bill {
    /// Parses the text of a bill.
    ///
    /// # Errors
    /// [`Error::Bill`] naming the line and what is wrong: an unknown layout, a line with the
    /// wrong number of values, an amount that is not exact, a missing summary, or a summary
    /// that disagrees with the rows.
    pub fn parse(text: &str) -> Result<Bill, Error> {
        let text = text.strip_prefix('\u{FEFF}').unwrap_or(text);
        let mut lines = text
            .split('\n')
            .map(|l| l.strip_suffix('\r').unwrap_or(l))
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty());
        let (_, header) = lines.next().ok_or_else(|| Error::Bill("the bill is empty".into()))?;
        let columns: Vec<String> = header.split(',').map(|h| h.trim().to_owned()).collect();
        let cols: Vec<Col> = columns.iter().map(|h| column(h)).collect();
        for (needed, name) in [
            (Col::TradeTime, "交易时间"),
            (Col::TransactionId, "微信订单号"),
            (Col::OutTradeNo, "商户订单号"),
            (Col::TradeState, "交易状态"),
            (Col::SettlementTotal, "应结订单金额"),
        ] {
            if !cols.contains(&needed) {
                return Err(Error::Bill(format!(
                    "the header has no {name} column; is this a transaction bill?"
                )));
            }
        }
        let mut rows = Vec::new();
        let mut summary = None;
        while let Some((no, line)) = lines.next() {
            let line_no = no + 1;
            if line.starts_with("总交易单数") {
                let names: Vec<&str> = line.split(',').map(str::trim).collect();
                let (vno, values) = lines
                    .next()
                    .ok_or_else(|| Error::Bill("the summary header has no values line".into()))?;
                let values = split_values(values).map_err(|e| Error::Bill(format!("line {}: {e}", vno + 1)))?;
                summary =
                    Some(Self::summary(&names, &values).map_err(|e| Error::Bill(format!("line {}: {e}", vno + 1)))?);
                if let Some((extra_no, _)) = lines.next() {
                    return Err(Error::Bill(format!("line {}: content after the summary", extra_no + 1)));
                }
                break;
            }
            let values = split_values(line).map_err(|e| Error::Bill(format!("line {line_no}: {e}")))?;
            if values.len() != cols.len() {
                return Err(Error::Bill(format!(
                    "line {line_no}: {} values for {} columns (a backtick and comma inside a product name?)",
                    values.len(),
                    cols.len()
                )));
            }
            rows.push(Self::row(&columns, &cols, &values).map_err(|e| Error::Bill(format!("line {line_no}: {e}")))?);
        }
        let summary =
            summary.ok_or_else(|| Error::Bill("no summary line (总交易单数): the bill is incomplete".into()))?;
        let bill = Bill { columns, rows, summary };
        bill.check_summary()?;
        Ok(bill)
    }

    fn row(headers: &[String], cols: &[Col], values: &[&str]) -> Result<BillRow, String> {
        let mut row = BillRow::default();
        for ((header, col), v) in headers.iter().zip(cols).zip(values) {
            let v = *v;
            match col {
                Col::TradeTime => {
                    row.trade_time = BeijingTime::parse_dashed(v).map_err(|e| format!("{header}: {e}"))?
                }
                Col::Appid => row.appid = v.to_owned(),
                Col::MchId => row.mch_id = v.to_owned(),
                Col::SubMchId => row.sub_mch_id = v.to_owned(),
                Col::DeviceInfo => row.device_info = v.to_owned(),
                Col::TransactionId => row.transaction_id = v.to_owned(),
                Col::OutTradeNo => row.out_trade_no = v.to_owned(),
                Col::Openid => row.openid = v.to_owned(),
                Col::TradeType => row.trade_type = v.to_owned(),
                Col::TradeState => row.trade_state = v.to_owned(),
                Col::BankType => row.bank_type = v.to_owned(),
                Col::Currency => row.currency = v.to_owned(),
                Col::SettlementTotal => row.settlement_total_fee = yuan(v, header)?,
                Col::Coupon => row.coupon_fee = yuan(v, header)?,
                Col::RefundApplyTime => row.refund_apply_time = optional_time(v, header)?,
                Col::RefundSuccessTime => row.refund_success_time = optional_time(v, header)?,
                Col::RefundId => row.refund_id = none_if_placeholder(v),
                Col::OutRefundNo => row.out_refund_no = none_if_placeholder(v),
                Col::RefundFee => row.refund_fee = yuan(v, header)?,
                Col::CouponRefund => row.coupon_refund_fee = yuan(v, header)?,
                Col::RefundType => row.refund_type = (!v.is_empty()).then(|| v.to_owned()),
                Col::RefundStatus => row.refund_status = (!v.is_empty()).then(|| v.to_owned()),
                Col::Body => row.body = v.to_owned(),
                Col::Attach => row.attach = v.to_owned(),
                Col::Fee => row.fee = BillFee::parse(v).map_err(|e| format!("{header}: {e}"))?,
                Col::Rate => row.rate = v.to_owned(),
                Col::TotalFee => row.total_fee = Some(yuan(v, header)?),
                Col::RefundApplyFee => row.refund_apply_fee = Some(yuan(v, header)?),
                Col::RateRemark => row.rate_remark = (!v.is_empty()).then(|| v.to_owned()),
                Col::Unknown => {
                    row.extra.insert(header.clone(), v.to_owned());
                }
            }
        }
        Ok(row)
    }

    fn summary(names: &[&str], values: &[&str]) -> Result<BillSummary, String> {
        if names.len() != values.len() {
            return Err(format!(
                "{} summary values for {} summary columns",
                values.len(),
                names.len()
            ));
        }
        let mut s = BillSummary {
            count: 0,
            settlement_total_fee: Fen::ZERO,
            refund_fee: Fen::ZERO,
            coupon_refund_fee: Fen::ZERO,
            fee: BillFee::default(),
            total_fee: None,
            refund_apply_fee: None,
        };
        let mut saw_count = false;
        for (name, v) in names.iter().zip(values) {
            match *name {
                "总交易单数" => {
                    // Test-environment bills print the count as `45.0`.
                    let n = parse_decimal_scaled(v, 0, "row count").map_err(|e| e.to_string())?;
                    s.count = u64::try_from(n).map_err(|_| format!("negative row count {v:?}"))?;
                    saw_count = true;
                }
                "应结订单总金额" | "总交易额" => s.settlement_total_fee = yuan(v, name)?,
                "退款总金额" | "总退款金额" => s.refund_fee = yuan(v, name)?,
                "充值券退款总金额" | "总代金券或立减优惠退款金额" => {
                    s.coupon_refund_fee = yuan(v, name)?
                }
                "手续费总金额" => s.fee = BillFee::parse(v).map_err(|e| format!("{name}: {e}"))?,
                "订单总金额" => s.total_fee = Some(yuan(v, name)?),
                "申请退款总金额" => s.refund_apply_fee = Some(yuan(v, name)?),
                _ => {}
            }
        }
        if !saw_count {
            return Err("the summary has no 总交易单数".into());
        }
        Ok(s)
    }

    /// Checks that the summary line agrees with the rows: the row count and every total.
    ///
    /// # Errors
    /// [`Error::Bill`] naming the first total that disagrees.
    pub fn check_summary(&self) -> Result<(), Error> {
        let s = &self.summary;
        if s.count != self.rows.len() as u64 {
            return Err(Error::Bill(format!(
                "the summary counts {} rows but the bill has {}",
                s.count,
                self.rows.len()
            )));
        }
        let sum = |f: fn(&BillRow) -> u64| -> u64 { self.rows.iter().map(f).sum() };
        let checks = [
            (
                "应结订单总金额",
                s.settlement_total_fee.get(),
                sum(|r| r.settlement_total_fee.get()),
            ),
            ("退款总金额", s.refund_fee.get(), sum(|r| r.refund_fee.get())),
            (
                "充值券退款总金额",
                s.coupon_refund_fee.get(),
                sum(|r| r.coupon_refund_fee.get()),
            ),
        ];
        for (name, said, computed) in checks {
            if said != computed {
                return Err(Error::Bill(format!(
                    "the summary says {name} is {said} fen, the rows add up to {computed} fen"
                )));
            }
        }
        let fee: i64 = self.rows.iter().map(|r| r.fee.0).sum();
        if fee != s.fee.0 {
            return Err(Error::Bill(format!(
                "the summary says 手续费总金额 is {}, the rows add up to {}",
                s.fee,
                BillFee(fee)
            )));
        }
        if let Some(total) = s.total_fee {
            let computed = sum(|r| r.total_fee.map_or(0, Fen::get));
            if total.get() != computed {
                return Err(Error::Bill(format!(
                    "the summary says 订单总金额 is {total} fen, the rows add up to {computed} fen"
                )));
            }
        }
        if let Some(total) = s.refund_apply_fee {
            let computed = sum(|r| r.refund_apply_fee.map_or(0, Fen::get));
            if total.get() != computed {
                return Err(Error::Bill(format!(
                    "the summary says 申请退款总金额 is {total} fen, the rows add up to {computed} fen"
                )));
            }
        }
        Ok(())
    }
}

/// The most a gzip bill may unpack to: far above a day of the busiest merchant (a million
/// rows of about 300 bytes), and a bound on what a broken or hostile stream can make us hold.
pub const MAX_BILL_BYTES: u64 = 1 << 30;

/// Whether `bytes` start as a gzip stream (RFC 1952's magic and deflate method).
pub fn is_gzip(bytes: &[u8]) -> bool {
    bytes.starts_with(&[0x1F, 0x8B, 0x08])
}

/// A bill as WeChat Pay sends it when asked with `tar_type=GZIP`: one gzip member, compressed
/// (several times smaller than the text). What the simulator serves, and the bench.
pub fn gzip(bill: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut e = flate2::write::GzEncoder::new(Vec::with_capacity(bill.len() / 4 + 32), flate2::Compression::default());
    // Writing into memory cannot fail.
    e.write_all(bill).expect("writing into memory");
    e.finish().expect("writing into memory")
}

/// Unpacks a bill downloaded with `tar_type=GZIP` (APIv2 and APIv3 alike), checking each
/// member's CRC-32 and length, so that a cut or altered download is refused rather than read
/// in part.
///
/// # Errors
/// [`Error::Bill`] for a stream that is not gzip, is broken, or unpacks to more than
/// [`MAX_BILL_BYTES`].
pub fn gunzip(bytes: &[u8]) -> Result<Vec<u8>, Error> {
    gunzip_at_most(bytes, MAX_BILL_BYTES)
}

fn gunzip_at_most(bytes: &[u8], limit: u64) -> Result<Vec<u8>, Error> {
    use std::io::Read as _;
    if !is_gzip(bytes) {
        return Err(Error::Bill("the bill asked for as gzip is not a gzip stream".into()));
    }
    let mut out = Vec::with_capacity(bytes.len().saturating_mul(4).min(1 << 26));
    // Every member, one after the other, as `gzip -d` reads them: a stream written in parts
    // holds the bill in several. Bytes after the last member that do not start another are
    // refused (a broken header), not ignored.
    flate2::bufread::MultiGzDecoder::new(bytes)
        .take(limit + 1)
        .read_to_end(&mut out)
        .map_err(|e| Error::Bill(format!("the gzip stream of the bill is broken: {e}")))?;
    if out.len() as u64 > limit {
        return Err(Error::Bill(format!(
            "the gzip stream of the bill unpacks to more than {limit} bytes"
        )));
    }
    Ok(out)
}

/// `pay/downloadbill`: the day's transaction bill. The answer is not XML but the bill text,
/// or a gzip stream of it when asked; failures (`No Bill Exist`, `Bill Creating`, …) come as
/// unsigned XML either way.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DownloadBill {
    /// `bill_date`: the day, in Beijing time.
    pub bill_date: BeijingTime,
    /// `bill_type`.
    pub bill_type: BillType,
    /// `tar_type=GZIP`: the bill comes as a gzip stream, several times smaller than the text.
    pub gzip: bool,
    /// Any other field; signed and sent as is.
    pub extra: BTreeMap<String, String>,
}

impl ToFields for DownloadBill {
    fn to_fields<'a>(&'a self, out: &mut Fields<'a>) -> Result<(), Error> {
        out.insert("bill_date", self.bill_date.to_date_compact())?;
        out.insert("bill_type", self.bill_type.as_str())?;
        if self.gzip {
            out.insert("tar_type", "GZIP")?;
        }
        insert_extra(out, &self.extra)
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
        let gzip = match f.optional("tar_type") {
            None => false,
            Some("GZIP") => true,
            Some(t) => return Err(Error::field("tar_type", format!("{t:?}: only GZIP"))),
        };
        Ok(DownloadBill {
            bill_date,
            bill_type,
            gzip,
            extra: request_extra(f, &["bill_date", "bill_type", "tar_type"]),
        })
    }
}

impl V2Call for DownloadBill {
    type Response = Bill;
    const PATH: &'static str = "/pay/downloadbill";
    const CHANGES: bool = false;
    const LARGE_ANSWER: bool = true;

    /// Reads the bill (unpacked first when it is a gzip stream), or the XML error that
    /// replaces it. The bill itself is not signed: WeChat Pay sends it unsigned over TLS.
    fn decode(body: &[u8], _merchant: &Merchant) -> Result<Bill, Error> {
        let unpacked;
        let body = if is_gzip(body) {
            unpacked = gunzip(body)?;
            &unpacked[..]
        } else {
            body
        };
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

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: &str = "\u{FEFF}交易时间,公众账号ID,商户号,特约商户号,设备号,微信订单号,商户订单号,用户标识,交易类型,交易状态,付款银行,货币种类,应结订单金额,代金券金额,微信退款单号,商户退款单号,退款金额,充值券退款金额,退款类型,退款状态,商品名称,商户数据包,手续费,费率,订单金额,申请退款金额,费率备注\r\n\
`2019-02-19 05:01:46,`wxab8acd895ab1638a,`1921000401,`0,`,`4200000263201902167700134212,`autotest_1,`oHkLxtx0vUqe,`JSAPI,`REFUND,`OTHERS,`CNY,`0.00,`0.00,`50000709672019011908420787722,`REF42,`0.07,`0.00,`ORIGINAL,`SUCCESS,`咖啡,`,`-0.00000,`0.60%,`0.00,`0.07,`\r\n\
`2019-02-19 18:19:32,`wxab8acd895ab1638a,`1921000401,`0,`,`4200000263201902167700134203,`autotest_2,`oHkLxt5HnHcB,`JSAPI,`SUCCESS,`OTHERS,`CNY,`19.99,`0.00,`0,`0,`0.00,`0.00,`,`,`咖啡,`,`0.12000,`0.60%,`19.99,`0.00,`\r\n\
`2019-02-19 19:00:00,`wxab8acd895ab1638a,`1921000401,`0,`,`4200000263201902167700134204,`autotest_3,`oHkLxt5HnHcB,`JSAPI,`SUCCESS,`CFT,`CNY,`1000.10,`0.00,`0,`0,`0.00,`0.00,`,`,`会员,`attach-x,`6.00000,`0.60%,`1000.10,`0.00,`\r\n\
总交易单数,应结订单总金额,退款总金额,充值券退款总金额,手续费总金额,订单总金额,申请退款总金额\r\n\
`3,`1020.09,`0.07,`0.00,`6.12000,`1020.09,`0.07\r\n";

    #[test]
    fn a_current_all_bill_reads_with_exact_fen() {
        let bill = Bill::parse(ALL).unwrap();
        assert_eq!(bill.rows.len(), 3);
        let refund = &bill.rows[0];
        assert_eq!(refund.trade_state, "REFUND");
        assert_eq!(refund.refund_fee.get(), 7);
        assert_eq!(refund.refund_id.as_deref(), Some("50000709672019011908420787722"));
        let paid = &bill.rows[1];
        assert_eq!(paid.settlement_total_fee.get(), 1999);
        assert_eq!(paid.refund_id, None);
        assert_eq!(paid.fee.to_fen_exact(), Some(12));
        assert_eq!(bill.rows[2].settlement_total_fee.get(), 100_010);
        assert_eq!(bill.rows[2].attach, "attach-x");
        assert_eq!(bill.summary.count, 3);
        assert_eq!(bill.summary.fee.to_string(), "6.12000");
    }

    #[test]
    fn a_summary_that_disagrees_with_the_rows_is_refused() {
        let tampered = ALL.replace("`3,`1020.09", "`3,`1020.10");
        let err = Bill::parse(&tampered).unwrap_err().to_string();
        assert!(err.contains("应结订单总金额"), "{err}");
        let truncated: String = ALL.lines().take(3).map(|l| format!("{l}\n")).collect();
        assert!(Bill::parse(&truncated).unwrap_err().to_string().contains("no summary"));
        let wrong_count = ALL.replace("`3,`1020.09", "`4,`1020.09");
        assert!(
            Bill::parse(&wrong_count)
                .unwrap_err()
                .to_string()
                .contains("counts 4 rows")
        );
    }

    #[test]
    fn a_legacy_bill_with_loose_numbers_reads() {
        let text = "交易时间,公众账号ID,商户号,子商户号,设备号,微信订单号,商户订单号,用户标识,交易类型,交易状态,付款银行,货币种类,总金额,代金券或立减优惠金额,商品名称,商户数据包,手续费,费率\n\
`2014-11-10 16:33:45,`wx2421b1c4370ec43b,`10000100,`0,`1000,`1001690740201411100005734289,`1415640626,`085e9858e3ba5186aafcbaed1,`MICROPAY,`SUCCESS,`OTHERS,`CNY,`0.01,`0.0,`被扫支付测试,`订单额外描述,`0,`0.60%\n\
总交易单数,总交易额,总退款金额,总代金券或立减优惠退款金额,手续费总金额\n\
`1.0,`0.01,`0,`0.0,`0\n";
        let bill = Bill::parse(text).unwrap();
        assert_eq!(bill.rows[0].settlement_total_fee.get(), 1);
        assert_eq!(bill.rows[0].total_fee, None);
        assert_eq!(bill.summary.count, 1);
    }

    #[test]
    fn amounts_with_fractions_of_a_fen_are_refused() {
        let bad = ALL.replace("`19.99,`0.00,`0,", "`19.995,`0.00,`0,");
        let err = Bill::parse(&bad).unwrap_err().to_string();
        assert!(err.contains("line 3") && err.contains("exactly"), "{err}");
    }

    #[test]
    fn a_gzip_bill_is_unpacked_before_it_is_read_and_a_broken_one_refused() {
        let merchant = Merchant {
            appid: crate::AppId::new("wxd678efh567hg6787").unwrap(),
            mch_id: crate::MchId::new("1230000109").unwrap(),
            key: crate::ApiKey::new("192006250b4c09247ec02edce69f6a2d").unwrap(),
            sign_type: crate::SignType::Md5,
        };
        let gz = gzip(ALL.as_bytes());
        assert_eq!(gunzip(&gzip(b"")).unwrap(), b"");
        assert!(gz.len() < ALL.len(), "compressed, not stored blocks");
        assert_eq!(gunzip(&gz).unwrap(), ALL.as_bytes());
        assert_eq!(DownloadBill::decode(&gz, &merchant).unwrap(), Bill::parse(ALL).unwrap());
        // A cut download, and an altered one (its CRC-32 no longer matches), are refused.
        let cut = &gz[..gz.len() - 10];
        assert!(gunzip(cut).unwrap_err().to_string().contains("broken"));
        let mut altered = gz.clone();
        let n = altered.len();
        altered[n - 8] ^= 1;
        assert!(gunzip(&altered).unwrap_err().to_string().contains("broken"));
        assert!(
            gunzip(ALL.as_bytes())
                .unwrap_err()
                .to_string()
                .contains("not a gzip stream")
        );
        // Bytes after the stream that are not another member are refused; a second member is
        // the bill's continuation.
        let mut extended = gz.clone();
        extended.extend_from_slice(b"`4,`9.99");
        assert!(gunzip(&extended).unwrap_err().to_string().contains("broken"));
        let (head, tail) = ALL.split_at(ALL.len() / 2);
        let mut two_members = gzip(head.as_bytes());
        two_members.extend_from_slice(&gzip(tail.as_bytes()));
        assert_eq!(gunzip(&two_members).unwrap(), ALL.as_bytes());
        // The XML error of a failed download is read as before, gzip asked for or not.
        let error = b"<xml><return_code><![CDATA[FAIL]]></return_code><return_msg><![CDATA[No Bill Exist]]></return_msg><error_code><![CDATA[20002]]></error_code></xml>";
        assert!(
            DownloadBill::decode(error, &merchant)
                .unwrap_err()
                .to_string()
                .contains("No Bill Exist")
        );
    }

    #[test]
    fn a_bill_is_compressed_and_unpacks_to_itself() {
        let bill = "`2026-12-03 12:00:00,`wxd678efh567hg6787,`1230000109,`0.60%\r\n".repeat(1000);
        let g = gzip(bill.as_bytes());
        assert_eq!(&g[..3], &[0x1F, 0x8B, 8]);
        assert!(g.len() * 10 < bill.len(), "{} bytes for {}", g.len(), bill.len());
        assert_eq!(gunzip(&g).unwrap(), bill.as_bytes());
    }

    #[test]
    fn a_gzip_bill_that_unpacks_beyond_the_limit_is_refused() {
        // A megabyte of zeros compresses to about a kilobyte: the limit, not the stream's
        // size, bounds what is held.
        let bomb = gzip(&vec![0u8; 1 << 20]);
        assert!(bomb.len() < 2048);
        assert_eq!(gunzip_at_most(&bomb, 1 << 20).unwrap().len(), 1 << 20);
        let err = gunzip_at_most(&bomb, (1 << 20) - 1).unwrap_err().to_string();
        assert!(err.contains("more than 1048575 bytes"), "{err}");
    }

    #[test]
    fn download_bill_asks_for_gzip_when_told_and_reads_it_back() {
        let call = DownloadBill {
            bill_date: BeijingTime::parse_compact("20261203000000").unwrap(),
            bill_type: BillType::All,
            gzip: true,
            extra: BTreeMap::new(),
        };
        let mut fields = Fields::new();
        call.to_fields(&mut fields).unwrap();
        assert_eq!(fields.optional("tar_type"), Some("GZIP"));
        assert_eq!(DownloadBill::from_fields(&fields).unwrap(), call);
        let mut zip = Fields::new();
        zip.insert("bill_date", "20261203").unwrap();
        zip.insert("tar_type", "ZIP").unwrap();
        assert!(
            DownloadBill::from_fields(&zip)
                .unwrap_err()
                .to_string()
                .contains("only GZIP")
        );
    }
}
