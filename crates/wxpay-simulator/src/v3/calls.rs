//! The business side of the APIv3 calls: JSON in, WeChat Pay's rules (shared with APIv2 in
//! [`crate::orders`]), JSON out.

use std::collections::VecDeque;
use std::sync::Mutex;

use axum::http::Uri;
use serde_json::{Value, json};
use wxpay_protocol::v2::{BillType, RefundStatus};
use wxpay_protocol::v3::calls::{parse_rfc3339, rfc3339_beijing};
use wxpay_protocol::{BeijingTime, Fen, OutRefundNo, OutTradeNo, SignType};

use super::{Api, Reply, V3};
use crate::bill::{BillRefusal, bill_text};
use crate::orders::{CloseRefusal, NewOrder, Reentry, RefundAsk, RefundRefusal, place_order, place_refund};
use crate::store::{Loc, Order, OrderState, RefundRec};
use crate::v2::{expire_if_due, locate};
use crate::{Simulator, ids};

/// What a call is answered with.
pub(crate) struct Ctx<'a> {
    pub sim: &'a Simulator,
    pub v3: &'a V3,
    pub mch: u16,
    pub now: i64,
    /// The `Host` the client used, for the bill's download URL.
    pub host: &'a str,
}

impl Ctx<'_> {
    fn mch_id(&self) -> &str {
        self.sim.inner.merchants[usize::from(self.mch)].mch_id.as_str()
    }
}

/// Decodes `%XX` escapes of a path segment; `None` for a broken escape or non-UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The number a path carries (an order, a transaction or a refund), decoded.
pub(crate) fn path_segment(path: &str, api: Api) -> Option<String> {
    let rest = match api {
        Api::QueryByOutTradeNo => path.strip_prefix("/v3/pay/transactions/out-trade-no/")?,
        Api::Close => path
            .strip_prefix("/v3/pay/transactions/out-trade-no/")?
            .strip_suffix("/close")?,
        Api::QueryById => path.strip_prefix("/v3/pay/transactions/id/")?,
        Api::RefundQuery => path.strip_prefix("/v3/refund/domestic/refunds/")?,
        _ => return None,
    };
    percent_decode(rest)
}

/// The value of `name` in the query string, decoded.
fn query_param(uri: &Uri, name: &str) -> Option<String> {
    uri.query()?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .and_then(|(_, v)| percent_decode(v))
}

/// Reads a JSON body; anything but an object is `PARAM_ERROR`.
fn json_body(body: &[u8]) -> Result<Value, Reply> {
    match serde_json::from_slice::<Value>(body) {
        Ok(v) if v.is_object() => Ok(v),
        Ok(_) => Err(Reply::param("/", "请求体必须是JSON对象")),
        Err(e) => Err(Reply::error(400, "PARAM_ERROR", &format!("请求体不是合法的JSON: {e}"))),
    }
}

/// A string field at a JSON pointer, at most `max` characters.
fn optional<'v>(v: &'v Value, pointer: &str, max: usize) -> Result<Option<&'v str>, Reply> {
    match v.pointer(pointer) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.chars().count() > max => Err(Reply::param(pointer, &format!("长度超过{max}"))),
        Some(Value::String(s)) if s.is_empty() => Err(Reply::param(pointer, "不能为空")),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(Reply::param(pointer, "必须是字符串")),
    }
}

fn required<'v>(v: &'v Value, pointer: &str, max: usize) -> Result<&'v str, Reply> {
    optional(v, pointer, max)?.ok_or_else(|| Reply::param(pointer, "此字段为必填项"))
}

/// An amount in fen at a JSON pointer: a whole number of at least 1.
fn amount(v: &Value, pointer: &str) -> Result<Fen, Reply> {
    match v.pointer(pointer) {
        None | Some(Value::Null) => Err(Reply::param(pointer, "此字段为必填项")),
        Some(Value::Number(n)) => n
            .as_u64()
            .filter(|n| *n >= 1)
            .and_then(|n| Fen::new(n).ok())
            .ok_or_else(|| Reply::param(pointer, "必须是大于0的整数（单位为分）")),
        Some(_) => Err(Reply::param(pointer, "必须是整数（单位为分）")),
    }
}

/// Only CNY is accepted for domestic merchants.
fn currency(v: &Value, pointer: &str, needed: bool) -> Result<(), Reply> {
    match optional(v, pointer, 16)? {
        None if needed => Err(Reply::param(pointer, "此字段为必填项")),
        None | Some("CNY") => Ok(()),
        Some(_) => Err(Reply::param(pointer, "境内商户仅支持人民币CNY")),
    }
}

/// A digest of a request's business parameters (the JSON with its keys sorted), to tell a
/// re-entry with the same parameters from one with others.
fn fingerprint(v: &Value) -> [u8; 16] {
    let d = ring::digest::digest(&ring::digest::SHA256, v.to_string().as_bytes());
    let mut out = [0u8; 16];
    out.copy_from_slice(&d.as_ref()[..16]);
    out
}

/// `notify_url`: http(s), no query string. WeChat Pay wants https; the simulator takes http
/// too, so that local runs need no TLS.
fn notify_url<'v>(v: &'v Value, pointer: &str, max: usize, needed: bool) -> Result<Option<&'v str>, Reply> {
    let url = match optional(v, pointer, max)? {
        None if needed => return Err(Reply::param(pointer, "此字段为必填项")),
        None => return Ok(None),
        Some(u) => u,
    };
    if !(url.starts_with("https://") || url.starts_with("http://")) || url.contains('?') {
        return Err(Reply::param(pointer, "必须是https地址，且不能携带参数"));
    }
    Ok(Some(url))
}

pub(crate) fn jsapi(ctx: &Ctx<'_>, body: &[u8]) -> Reply {
    match jsapi_inner(ctx, body) {
        Ok(r) | Err(r) => r,
    }
}

fn jsapi_inner(ctx: &Ctx<'_>, body: &[u8]) -> Result<Reply, Reply> {
    let v = json_body(body)?;
    let appid = required(&v, "/appid", 32)?;
    let mchid = required(&v, "/mchid", 32)?;
    if mchid != ctx.mch_id() {
        return Err(Reply::param("/mchid", "与Authorization中的mchid不一致"));
    }
    let description = required(&v, "/description", 127)?;
    let out_trade_no = required(&v, "/out_trade_no", 32)?;
    if OutTradeNo::new(out_trade_no).and_then(|n| n.check_new()).is_err() {
        return Err(Reply::param("/out_trade_no", "须为6-32位数字、大小写字母或_-|*"));
    }
    let attach = optional(&v, "/attach", 128)?;
    let notify = notify_url(&v, "/notify_url", 255, true)?.unwrap_or_default();
    let total = amount(&v, "/amount/total")?;
    currency(&v, "/amount/currency", false)?;
    let openid = required(&v, "/payer/openid", 128)?;
    let time_expire = match optional(&v, "/time_expire", 64)? {
        None => None,
        Some(t) => {
            let at = parse_rfc3339(t)
                .map_err(|_| Reply::param("/time_expire", "须为RFC 3339格式，如2018-06-08T10:34:56+08:00"))?;
            // An expiry earlier than a minute from now is raised to a minute (protocol.md C).
            Some(at.max(ctx.now + 60))
        }
    };
    let merchant = &ctx.sim.inner.merchants[usize::from(ctx.mch)];
    if !merchant.has_app(appid) {
        return Err(Reply::error(400, "APPID_MCHID_NOT_MATCH", "appid和mch_id不匹配"));
    }
    if !ctx.sim.payer_of(appid, openid) {
        return Err(Reply::error(400, "PARAM_ERROR", "appid和openid不匹配"));
    }
    let order = NewOrder {
        mch: ctx.mch,
        appid: appid.into(),
        out_trade_no: out_trade_no.into(),
        body: description.into(),
        attach: attach.map(Into::into),
        device_info: None,
        total_fee: total,
        notify_url: ctx.sim.intern_url(notify),
        openid: openid.into(),
        trade_type: "JSAPI".into(),
        fingerprint: fingerprint(&v),
        // Unused on APIv3 (its notifications are signed with RSA).
        sign_type: SignType::Md5,
        time_expire,
        v3: true,
    };
    // APIv3 raises a near time_expire (above) instead of refusing it.
    match place_order(ctx.sim, order, ctx.now, None) {
        Ok(placed) => Ok(Reply::ok(&json!({ "prepay_id": placed.prepay_id }))),
        Err(Reentry::Paid) => Err(Reply::error(403, "ORDERPAID", "该订单已支付")),
        Err(Reentry::Closed) => Err(Reply::error(400, "ORDER_CLOSED", "该订单已关闭")),
        Err(Reentry::Used) => Err(Reply::error(403, "OUT_TRADE_NO_USED", "商户订单号重复")),
        Err(Reentry::Different) => Err(Reply::error(
            400,
            "INVALID_REQUEST",
            "商户订单号重复: 订单重入时，要求参数值与原请求一致",
        )),
        Err(Reentry::ExpiresTooSoon) => Err(Reply::param("/time_expire", "距当前时间过近")),
    }
}

/// A transaction as queries answer it and payment notifications carry it; `total` lets a
/// fault report another amount.
pub(crate) fn transaction_json(o: &Order, mchid: &str, total: Fen) -> Value {
    let refunded = !o.refunds.is_empty();
    let (state, desc) = match o.state {
        OrderState::NotPay => ("NOTPAY", "订单未支付"),
        OrderState::Closed => ("CLOSED", "订单已关闭"),
        OrderState::PayError => ("PAYERROR", "支付失败，请重新下单支付"),
        OrderState::Success if refunded => ("REFUND", "转入退款"),
        OrderState::Success => ("SUCCESS", "支付成功"),
    };
    let paid = o.state == OrderState::Success;
    let mut t = json!({
        "appid": &*o.appid,
        "mchid": mchid,
        "out_trade_no": &*o.out_trade_no,
        "trade_type": &*o.trade_type,
        "trade_state": state,
        "trade_state_desc": desc,
        "amount": { "total": total.get(), "currency": "CNY" },
    });
    if paid {
        t["transaction_id"] = json!(o.transaction_id.as_deref().unwrap_or_default());
        t["bank_type"] = json!("OTHERS");
        t["success_time"] = json!(rfc3339_beijing(o.paid_at.unwrap_or_default()));
        t["payer"] = json!({ "openid": &*o.openid });
        t["amount"]["payer_total"] = json!(total.get());
        t["amount"]["payer_currency"] = json!("CNY");
    }
    // Merchant data comes back once the order is paid or closed, as on APIv2.
    if let Some(a) = o.attach.as_deref().filter(|_| paid || o.state == OrderState::Closed) {
        t["attach"] = json!(a);
    }
    t
}

/// `?mchid=` must be there and name the caller.
fn check_mchid_query(ctx: &Ctx<'_>, uri: &Uri) -> Result<(), Reply> {
    match query_param(uri, "mchid") {
        None => Err(Reply::error_with(
            400,
            "PARAM_ERROR",
            "缺少参数mchid",
            Some(json!({ "field": "mchid", "location": "query", "issue": "此字段为必填项" })),
        )),
        Some(m) if m == ctx.mch_id() => Ok(()),
        Some(_) => Err(Reply::error(400, "PARAM_ERROR", "mchid与Authorization中的mchid不一致")),
    }
}

fn answer_order(ctx: &Ctx<'_>, loc: Option<Loc>) -> Reply {
    let not_found = || Reply::error(404, "ORDER_NOT_EXIST", "订单不存在");
    let Some(loc) = loc else {
        return not_found();
    };
    let mut g = ctx.sim.inner.store.lock(loc.shard);
    expire_if_due(&mut g, loc.slot, ctx.now);
    let Some(o) = g.get(loc.slot).filter(|o| o.mch == ctx.mch) else {
        return not_found();
    };
    let answer = transaction_json(o, ctx.mch_id(), o.total_fee);
    drop(g);
    Reply::ok(&answer)
}

pub(crate) fn query_by_out_trade_no(ctx: &Ctx<'_>, uri: &Uri) -> Reply {
    if let Err(r) = check_mchid_query(ctx, uri) {
        return r;
    }
    let Some(no) = path_segment(uri.path(), Api::QueryByOutTradeNo).and_then(|n| OutTradeNo::new(n).ok()) else {
        return Reply::error(404, "ORDER_NOT_EXIST", "订单不存在");
    };
    answer_order(
        ctx,
        locate(ctx.sim, ctx.mch, &wxpay_protocol::v2::OrderRef::OutTradeNo(no)),
    )
}

pub(crate) fn query_by_id(ctx: &Ctx<'_>, uri: &Uri) -> Reply {
    if let Err(r) = check_mchid_query(ctx, uri) {
        return r;
    }
    let id = path_segment(uri.path(), Api::QueryById).unwrap_or_default();
    answer_order(
        ctx,
        locate(ctx.sim, ctx.mch, &wxpay_protocol::v2::OrderRef::TransactionId(id)),
    )
}

pub(crate) fn close(ctx: &Ctx<'_>, uri: &Uri, body: &[u8]) -> Reply {
    let v = match json_body(body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    match required(&v, "/mchid", 32) {
        Ok(m) if m == ctx.mch_id() => {}
        Ok(_) => return Reply::param("/mchid", "与Authorization中的mchid不一致"),
        Err(r) => return r,
    }
    let not_found = || Reply::error(404, "ORDER_NOT_EXIST", "订单不存在");
    let Some(no) = path_segment(uri.path(), Api::Close).and_then(|n| OutTradeNo::new(n).ok()) else {
        return not_found();
    };
    let Some(loc) = locate(ctx.sim, ctx.mch, &wxpay_protocol::v2::OrderRef::OutTradeNo(no)) else {
        return not_found();
    };
    match crate::orders::close_order(ctx.sim, loc, ctx.now) {
        Ok(()) => Reply::no_content(),
        Err(CloseRefusal::NotFound) => not_found(),
        Err(CloseRefusal::Paid) => Reply::error(403, "ORDERPAID", "订单已支付"),
        Err(CloseRefusal::Closed) => Reply::error(400, "ORDER_CLOSED", "订单已关闭"),
    }
}

fn refund_status(s: &RefundStatus) -> &'static str {
    match s {
        RefundStatus::Success => "SUCCESS",
        RefundStatus::RefundClose => "CLOSED",
        RefundStatus::Processing => "PROCESSING",
        _ => "ABNORMAL",
    }
}

/// A refund as its creation and query answer it.
pub(crate) fn refund_json(o: &Order, r: &RefundRec) -> Value {
    let mut v = json!({
        "refund_id": &*r.refund_id,
        "out_refund_no": &*r.out_refund_no,
        "transaction_id": o.transaction_id.as_deref().unwrap_or_default(),
        "out_trade_no": &*o.out_trade_no,
        "channel": "ORIGINAL",
        "user_received_account": "支付用户零钱",
        "create_time": rfc3339_beijing(r.accepted_at),
        "status": refund_status(&r.status),
        "funds_account": "UNSETTLED",
        "amount": {
            "total": o.total_fee.get(),
            "refund": r.refund_fee.get(),
            "payer_total": o.total_fee.get(),
            "payer_refund": r.refund_fee.get(),
            "settlement_total": o.total_fee.get(),
            "settlement_refund": r.refund_fee.get(),
            "discount_refund": 0,
            "currency": "CNY",
            "refund_fee": 0,
        },
        "promotion_detail": [],
    });
    if let Some(t) = r.settled_at.filter(|_| r.status == RefundStatus::Success) {
        v["success_time"] = json!(rfc3339_beijing(t));
    }
    v
}

pub(crate) fn refund(ctx: &Ctx<'_>, body: &[u8]) -> Reply {
    match refund_inner(ctx, body) {
        Ok(r) | Err(r) => r,
    }
}

fn refund_inner(ctx: &Ctx<'_>, body: &[u8]) -> Result<Reply, Reply> {
    let v = json_body(body)?;
    let transaction_id = optional(&v, "/transaction_id", 32)?;
    let out_trade_no = optional(&v, "/out_trade_no", 32)?;
    let out_refund_no = required(&v, "/out_refund_no", 64)?;
    if OutRefundNo::new(out_refund_no).is_err() {
        return Err(Reply::param("/out_refund_no", "须为数字、大小写字母或_-|*@"));
    }
    optional(&v, "/reason", 80)?;
    let notify = notify_url(&v, "/notify_url", 256, false)?;
    let refund = amount(&v, "/amount/refund")?;
    let total = amount(&v, "/amount/total")?;
    currency(&v, "/amount/currency", true)?;
    let order = match (transaction_id, out_trade_no) {
        (Some(t), _) => wxpay_protocol::v2::OrderRef::TransactionId(t.to_owned()),
        (None, Some(n)) => wxpay_protocol::v2::OrderRef::OutTradeNo(
            OutTradeNo::new(n).map_err(|_| Reply::param("/out_trade_no", "格式错误"))?,
        ),
        (None, None) => return Err(Reply::param("/out_trade_no", "transaction_id和out_trade_no必须二选一")),
    };
    let Some(loc) = locate(ctx.sim, ctx.mch, &order) else {
        return Err(Reply::error(404, "RESOURCE_NOT_EXISTS", "订单不存在"));
    };
    let ask = RefundAsk {
        out_refund_no,
        refund_fee: refund,
        total_fee: total,
        notify_url: notify,
        fingerprint: fingerprint(&v),
        v3: true,
    };
    match place_refund(ctx.sim, ctx.mch, loc, &ask, ctx.now) {
        Ok(view) => Ok(Reply::ok(&refund_json(&view.order, &view.refund))),
        Err(e) => Err(match e {
            RefundRefusal::OrderNotFound => Reply::error(404, "RESOURCE_NOT_EXISTS", "订单不存在"),
            RefundRefusal::OtherOrder => Reply::error(400, "INVALID_REQUEST", "退款单号已用于其他订单"),
            RefundRefusal::Mismatch => Reply::error(400, "INVALID_REQUEST", "同一退款单号参数不一致，请核实后再试"),
            RefundRefusal::NotPaid => Reply::error(400, "INVALID_REQUEST", "订单未支付，不能退款"),
            RefundRefusal::TotalMismatch => Reply::param("/amount/total", "与订单金额不一致"),
            RefundRefusal::TooMany => Reply::error(403, "RULE_LIMIT", "订单已退款50次，不能再退款"),
            RefundRefusal::FullyRefunded => Reply::error(400, "INVALID_REQUEST", "订单已全额退款"),
            RefundRefusal::Exceeds => Reply::error(400, "INVALID_REQUEST", "申请退款金额超过订单可退金额"),
            // APIv3 has no BIZERR_NEED_RETRY; its "retry with the same parameters" is SYSTEM_ERROR.
            RefundRefusal::Concurrent => Reply::error(500, "SYSTEM_ERROR", "系统繁忙,请稍后重试"),
            RefundRefusal::TooSoon => {
                Reply::error(429, "FREQUENCY_LIMITED", "频率超限: 同一笔订单的多次退款需间隔1分钟")
            }
            RefundRefusal::NotEnough => Reply::error(403, "NOT_ENOUGH", "基本账户余额不足，请充值后重新发起"),
        }),
    }
}

pub(crate) fn refund_query(ctx: &Ctx<'_>, uri: &Uri) -> Reply {
    let not_found = || Reply::error(404, "RESOURCE_NOT_EXISTS", "退款单不存在");
    let Some(no) = path_segment(uri.path(), Api::RefundQuery) else {
        return not_found();
    };
    let Some((loc, idx)) = ctx.sim.inner.store.find_refund(ctx.mch, &no) else {
        return not_found();
    };
    let mut g = ctx.sim.inner.store.lock(loc.shard);
    let Some(o) = g.get(loc.slot).filter(|o| o.mch == ctx.mch) else {
        return not_found();
    };
    let Some(r) = o.refunds.get(idx) else {
        return not_found();
    };
    let answer = refund_json(o, r);
    drop(g);
    Reply::ok(&answer)
}

pub(crate) fn certificates(ctx: &Ctx<'_>) -> Reply {
    let Some(merchant) = ctx.v3.merchants.get(usize::from(ctx.mch)).and_then(Option::as_ref) else {
        return Reply::error(500, "SYSTEM_ERROR", "系统异常，请稍后重试");
    };
    let mut data = Vec::new();
    for (platform, expire) in ctx.v3.listed_platforms() {
        let nonce = ids::random_alnum(12);
        let Ok(ciphertext) = wxpay_protocol::v3::aead::encrypt(
            merchant.apiv3_key.expose(),
            &nonce,
            "certificate",
            platform.cert_pem.as_bytes(),
        ) else {
            return Reply::error(500, "SYSTEM_ERROR", "系统异常，请稍后重试");
        };
        data.push(json!({
            "serial_no": platform.signing.id(),
            "effective_time": rfc3339_beijing(platform.not_before),
            "expire_time": rfc3339_beijing(expire),
            "encrypt_certificate": {
                "algorithm": "AEAD_AES_256_GCM",
                "nonce": nonce,
                "associated_data": "certificate",
                "ciphertext": ciphertext,
            }
        }));
    }
    Reply::ok(&json!({ "data": data }))
}

/// Bills handed out for download, by token: the bytes are kept so that the file downloaded
/// is exactly the one whose digest was given.
#[derive(Default)]
pub(crate) struct BillTokens {
    files: Mutex<VecDeque<Handed>>,
}

/// A bill handed out: its token, its merchant, when its `download_url` was given, the file.
struct Handed {
    token: String,
    mch: u16,
    issued_at: i64,
    file: Vec<u8>,
}

/// How many bills are kept for download; older tokens expire.
const BILLS_KEPT: usize = 64;

/// How long a `download_url` works, in seconds. WeChat Pay's pages give 30 s (the download
/// page: "URL有效期30s") and five minutes (the newer page of the bill request); the shorter
/// one is kept, so that a client that waits before downloading fails here first.
pub(crate) const DOWNLOAD_URL_SECS: i64 = 30;

/// Why a bill token does not give its file.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum TokenRefusal {
    /// No bill was handed out under it (or it is long gone).
    Unknown,
    /// Another merchant's bill.
    OtherMerchant,
    /// Handed out more than [`DOWNLOAD_URL_SECS`] ago.
    Expired,
}

impl BillTokens {
    fn put(&self, mch: u16, file: Vec<u8>, now: i64) -> String {
        let token = ids::random_alnum(32);
        let mut files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        if files.len() >= BILLS_KEPT {
            files.pop_front();
        }
        files.push_back(Handed {
            token: token.clone(),
            mch,
            issued_at: now,
            file,
        });
        token
    }

    fn get(&self, mch: u16, token: &str, now: i64) -> Result<Vec<u8>, TokenRefusal> {
        let files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        let handed = files.iter().find(|h| h.token == token).ok_or(TokenRefusal::Unknown)?;
        if handed.mch != mch {
            return Err(TokenRefusal::OtherMerchant);
        }
        if now - handed.issued_at > DOWNLOAD_URL_SECS {
            return Err(TokenRefusal::Expired);
        }
        Ok(handed.file.clone())
    }
}

pub(crate) fn trade_bill(ctx: &Ctx<'_>, uri: &Uri) -> Reply {
    let query_error = |field: &str, issue: &str| {
        Reply::error_with(
            400,
            "PARAM_ERROR",
            &format!("参数错误: {field} {issue}"),
            Some(json!({ "field": field, "location": "query", "issue": issue })),
        )
    };
    let Some(date) = query_param(uri, "bill_date") else {
        return query_error("bill_date", "此字段为必填项");
    };
    let Ok(day) = BeijingTime::parse_dashed(&format!("{date} 00:00:00")) else {
        return query_error("bill_date", "须为YYYY-MM-DD格式");
    };
    let bill_type = match query_param(uri, "bill_type").as_deref() {
        None | Some("ALL") => BillType::All,
        Some("SUCCESS") => BillType::Success,
        Some("REFUND") => BillType::Refund,
        Some(_) => return query_error("bill_type", "须为ALL、SUCCESS或REFUND"),
    };
    let gzip = match query_param(uri, "tar_type").as_deref() {
        None => false,
        Some("GZIP") => true,
        Some(_) => return query_error("tar_type", "仅支持GZIP"),
    };
    let text = match bill_text(ctx.sim, ctx.mch, ctx.now, day, bill_type) {
        Ok(t) => t,
        Err(BillRefusal::InvalidDate) => return query_error("bill_date", "账单日期不在可下载范围内"),
        Err(BillRefusal::Creating) => return Reply::error(400, "STATEMENT_CREATING", "账单生成中，请稍后再试"),
        Err(BillRefusal::NoBill) => return Reply::error(400, "NO_STATEMENT_EXIST", "当前日期账单不存在"),
    };
    // The digest is the bill's own, gzip or not: "原始账单(gzip需要解压缩)的摘要值" (WeChat
    // Pay's page of this API), so that a client hashing the gzip stream fails here as live.
    let digest = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, text.as_bytes());
    let file = if gzip {
        wxpay_protocol::v2::gzip(text.as_bytes())
    } else {
        text.into_bytes()
    };
    let hash: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    let token = ctx.v3.bills.put(ctx.mch, file, ctx.now);
    let scheme = if ctx.sim.inner.tls.is_some() { "https" } else { "http" };
    Reply::ok(&json!({
        "hash_type": "SHA1",
        "hash_value": hash,
        "download_url": format!("{scheme}://{}/v3/billdownload/file?token={token}", ctx.host),
    }))
}

pub(crate) fn bill_download(ctx: &Ctx<'_>, uri: &Uri) -> Reply {
    let Some(token) = query_param(uri, "token") else {
        return Reply::error(400, "PARAM_ERROR", "参数错误: token 此字段为必填项");
    };
    // WeChat Pay's answers: an unknown or expired link is "INVALID_REQUEST" (get a new
    // address from the bill request), another merchant's bill "NO_AUTH".
    match ctx.v3.bills.get(ctx.mch, &token, ctx.now) {
        Ok(file) => Reply::file(file),
        Err(TokenRefusal::Unknown) => Reply::error(400, "INVALID_REQUEST", "下载链接无效,请重新请求文件下载"),
        Err(TokenRefusal::Expired) => Reply::error(400, "INVALID_REQUEST", "下载链接过期,请重新请求文件下载"),
        Err(TokenRefusal::OtherMerchant) => {
            Reply::error(403, "NO_AUTH", "权限异常,请检查本次请求的商户是否与申请账单的商户一致")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_numbers_are_decoded_and_broken_escapes_refused() {
        assert_eq!(
            path_segment("/v3/pay/transactions/out-trade-no/A%7CB%2AC/close", Api::Close).as_deref(),
            Some("A|B*C")
        );
        assert_eq!(
            path_segment("/v3/refund/domestic/refunds/R%401", Api::RefundQuery).as_deref(),
            Some("R@1")
        );
        assert_eq!(path_segment("/v3/pay/transactions/id/%G1", Api::QueryById), None);
        assert_eq!(path_segment("/v3/pay/transactions/id/%4", Api::QueryById), None);
        let uri: Uri = "/v3/bill/tradebill?bill_date=2026-12-03&bill_type=ALL".parse().unwrap();
        assert_eq!(query_param(&uri, "bill_date").as_deref(), Some("2026-12-03"));
        assert_eq!(query_param(&uri, "tar_type"), None);
    }

    #[test]
    fn a_bill_token_gives_its_file_to_its_merchant_only_and_for_thirty_seconds() {
        let tokens = BillTokens::default();
        let token = tokens.put(0, b"bill".to_vec(), 1_000);
        assert_eq!(tokens.get(0, &token, 1_000 + DOWNLOAD_URL_SECS), Ok(b"bill".to_vec()));
        assert_eq!(tokens.get(1, &token, 1_000), Err(TokenRefusal::OtherMerchant));
        assert_eq!(
            tokens.get(0, &token, 1_001 + DOWNLOAD_URL_SECS),
            Err(TokenRefusal::Expired)
        );
        assert_eq!(tokens.get(0, "nope", 1_000), Err(TokenRefusal::Unknown));
    }
}
