//! The APIv2 paths, with WeChat Pay's rules and answers.
//!
//! Every call goes through the same gate, in WeChat Pay's order: POST, a body, the hardened
//! XML reader, a known `mch_id`, a valid `sign_type`, the signature; then the faults asked
//! for, then the business rules of the API. Protocol refusals are unsigned
//! `return_code=FAIL`; business refusals are signed `result_code=FAIL` with WeChat Pay's
//! `err_code`.

use std::collections::BTreeMap;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::{Extension, Router};
use bytes::Bytes;
use wxpay_protocol::v2::server::{AnswerSigner, return_fail};
use wxpay_protocol::v2::{
    CloseOrder, CloseOrderResponse, DownloadBill, ErrCode, FromFields, OrderQuery, OrderQueryResponse, OrderRef,
    Refund, RefundQuery, RefundQueryResponse, RefundRecord, RefundRef, RefundResponse, RefundStatus, ToFields,
    TradeState, TradeType, UnifiedOrder, UnifiedOrderResponse,
};
use wxpay_protocol::{ApiKey, BeijingTime, Error, Fen, Fields, Nonce, SignType};

use crate::faults::FaultKind;
use crate::ids;
use crate::orders::{CloseRefusal, NewOrder, Reentry, RefundAsk, RefundRefusal, place_order, place_refund};
use crate::store::{Loc, Order, OrderState, RefundRec, ShardGuard};
use crate::tls::{PeerCert, PeerCertSource};
use crate::{MerchantEntry, Simulator};

/// The APIv2 calls, indexed as in the metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Api {
    UnifiedOrder = 0,
    OrderQuery = 1,
    CloseOrder = 2,
    Refund = 3,
    RefundQuery = 4,
    DownloadBill = 5,
}

impl Api {
    pub(crate) fn name(self) -> &'static str {
        crate::metrics::APIS[self as usize]
    }
}

const SUCCESS: usize = 0;
const BUSINESS_ERROR: usize = 1;
const PROTOCOL_ERROR: usize = 2;

/// An answer and how the call ended, for the metrics.
pub(crate) struct Reply {
    body: String,
    result: usize,
    kind: ReplyKind,
}

/// What an answer's bytes are.
enum ReplyKind {
    /// XML, the usual answer.
    Xml,
    /// A plain-text bill.
    Text,
    /// A bill asked for with `tar_type=GZIP`: these bytes, not `body`.
    Gzip(Vec<u8>),
}

impl Reply {
    fn fail(msg: &str) -> Reply {
        Reply {
            body: return_fail(msg),
            result: PROTOCOL_ERROR,
            kind: ReplyKind::Xml,
        }
    }
}

/// What a call is answered with: who signs, with what.
pub(crate) struct Ctx<'a> {
    pub sim: &'a Simulator,
    pub merchant: &'a MerchantEntry,
    /// The merchant's APIv2 key (the gate let the call through, so it has one).
    pub key: &'a ApiKey,
    pub mch: u16,
    pub appid: &'a str,
    pub sign_type: SignType,
    pub nonce: Nonce,
    pub now: i64,
}

impl Ctx<'_> {
    fn signer(&self) -> AnswerSigner<'_> {
        AnswerSigner {
            appid: self.appid,
            mch_id: self.merchant.mch_id.as_str(),
            key: self.key,
            sign_type: self.sign_type,
            nonce: &self.nonce,
        }
    }

    fn ok(&self, answer: &impl ToFields) -> Reply {
        match self.signer().success(answer) {
            Ok(body) => Reply {
                body,
                result: SUCCESS,
                kind: ReplyKind::Xml,
            },
            Err(e) => {
                tracing::error!(error = ?e, "cannot encode an answer");
                Reply::fail("系统错误")
            }
        }
    }

    fn biz(&self, code: ErrCode, description: &str) -> Reply {
        match self.signer().business_error(&code, description) {
            Ok(body) => Reply {
                body,
                result: BUSINESS_ERROR,
                kind: ReplyKind::Xml,
            },
            Err(_) => Reply::fail("系统错误"),
        }
    }
}

pub(crate) fn router() -> Router<Simulator> {
    macro_rules! route {
        ($api:expr) => {
            any(
                |State(sim): State<Simulator>,
                 method: Method,
                 source: Option<Extension<PeerCertSource>>,
                 body: Bytes| async move {
                    // Only refunds need the client certificate; other calls skip the lookup.
                    let cert = match (&sim.inner.tls, source) {
                        (Some(tls), Some(Extension(s))) if $api == Api::Refund => Some(tls.identify(&s)),
                        _ => None,
                    };
                    call(sim, $api, method, cert, body).await
                },
            )
        };
    }
    Router::new()
        .route("/pay/unifiedorder", route!(Api::UnifiedOrder))
        .route("/pay/orderquery", route!(Api::OrderQuery))
        .route("/pay/closeorder", route!(Api::CloseOrder))
        .route("/secapi/pay/refund", route!(Api::Refund))
        .route("/pay/refundquery", route!(Api::RefundQuery))
        .route("/pay/downloadbill", route!(Api::DownloadBill))
        // The reader refuses larger bodies anyway; this stops them before they are read.
        .layer(DefaultBodyLimit::max(wxpay_protocol::xml::DEFAULT_MAX_LEN))
}

/// What a verified request looks like before the business rules.
struct Gate<'b> {
    fields: Fields<'b>,
    mch: u16,
    sign_type: SignType,
}

fn gate<'b>(
    sim: &Simulator,
    api: Api,
    method: &Method,
    cert: Option<&PeerCert>,
    body: &'b [u8],
) -> Result<Gate<'b>, Reply> {
    let bill = api == Api::DownloadBill;
    let fail = |msg: &str, code: &str| {
        if bill {
            // downloadbill's failures carry an error_code and say SIGN ERROR in capitals.
            let body = wxpay_protocol::xml::write(
                "xml",
                [("return_code", "FAIL"), ("return_msg", msg), ("error_code", code)],
            )
            .unwrap_or_else(|_| return_fail(msg));
            Reply {
                body,
                result: PROTOCOL_ERROR,
                kind: ReplyKind::Xml,
            }
        } else {
            Reply::fail(msg)
        }
    };
    if method != Method::POST {
        return Err(fail("请使用post方法", "20001"));
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(fail("post数据为空", "20001"));
    }
    if std::str::from_utf8(body).is_err() {
        // A GBK (or other) body: WeChat Pay names the encoding, not the XML.
        return Err(fail("NOT_UTF8: 编码格式错误，请使用UTF-8编码", "20001"));
    }
    let fields = wxpay_protocol::xml::read(body).map_err(|e| {
        tracing::info!(api = api.name(), error = ?e, "refused a request body");
        fail("XML格式错误", "20001")
    })?;
    let Some(mch_id) = fields.optional("mch_id") else {
        return Err(fail("缺少参数mch_id", "20001"));
    };
    let Some(&mch) = sim.inner.by_mch.get(mch_id) else {
        if bill {
            return Err(fail("mch_id参数错误: 商户号不存在", "20001"));
        }
        // A business failure, but unsigned: there is no merchant key to sign it with. A
        // client that checks signatures (as it must) reports it as unverifiable.
        let body = wxpay_protocol::xml::write(
            "xml",
            [
                ("return_code", "SUCCESS"),
                ("return_msg", "OK"),
                ("mch_id", mch_id),
                ("result_code", "FAIL"),
                ("err_code", "MCHID_NOT_EXIST"),
                ("err_code_des", "mch_id参数错误: 商户号不存在"),
            ],
        )
        .unwrap_or_else(|_| return_fail("mch_id参数错误"));
        return Err(Reply {
            body,
            result: BUSINESS_ERROR,
            kind: ReplyKind::Xml,
        });
    };
    let sign_type = match fields.optional("sign_type") {
        None => SignType::Md5,
        Some(t) => t
            .parse::<SignType>()
            .map_err(|_| fail("sign_type参数格式错误", "20001"))?,
    };
    // A merchant served on APIv3 only has no APIv2 key: nothing it signs can verify.
    let verified = match &sim.inner.merchants[usize::from(mch)].key {
        Some(key) => fields.verify(key, sign_type),
        None => Err(Error::InvalidField {
            field: "sign".to_owned(),
            reason: "no APIv2 key".to_owned(),
        }),
    };
    if let Err(e) = verified {
        let msg = match e {
            Error::MissingField(_) => "缺少参数sign",
            _ if bill => "SIGN ERROR",
            _ => "签名错误",
        };
        return Err(fail(msg, "20001"));
    }
    match fields.optional("nonce_str") {
        None => return Err(fail("缺少参数nonce_str", "20001")),
        Some(n) if n.chars().count() > 32 => return Err(fail("nonce_str参数长度有误: 最长32位", "20001")),
        Some(_) => {}
    }
    if api == Api::Refund && sim.inner.tls.is_some() {
        match cert {
            None => return Err(fail("请求需要商户API证书: 未提供证书", "20001")),
            Some(c) if c.mch_id.as_deref() != Some(mch_id) => {
                return Err(fail("证书与商户号不匹配", "20001"));
            }
            Some(_) => {}
        }
    }
    Ok(Gate { fields, mch, sign_type })
}

async fn call(sim: Simulator, api: Api, method: Method, cert: Option<PeerCert>, body: Bytes) -> Response {
    let now = sim.now();
    sim.inner.requests.record(api.name(), now, &body);
    let gate = match gate(&sim, api, &method, cert.as_ref(), &body) {
        Ok(g) => g,
        Err(reply) => return finish(&sim, api, reply, None),
    };
    let merchant = &sim.inner.merchants[usize::from(gate.mch)];
    let Some(key) = merchant.key.as_ref() else {
        return finish(&sim, api, Reply::fail("签名错误"), None);
    };
    let appid = gate.fields.optional("appid").unwrap_or("");
    let ctx = Ctx {
        sim: &sim,
        merchant,
        key,
        mch: gate.mch,
        appid,
        sign_type: gate.sign_type,
        nonce: ids::nonce(),
        now,
    };
    if appid.is_empty() {
        return finish(&sim, api, biz_or_fail(&ctx, api, "缺少参数appid"), None);
    }
    if !merchant.has_app(appid) {
        // An appid no merchant has does not exist; one of another merchant's does not match.
        let known = sim.inner.merchants.iter().any(|m| m.has_app(appid));
        let reply = if known {
            ctx.biz(ErrCode::AppidMchidNotMatch, "appid和mch_id不匹配")
        } else {
            ctx.biz(ErrCode::AppidNotExist, "appid不存在")
        };
        return finish(&sim, api, reply, None);
    }
    let mut after = None;
    let mut late = std::time::Duration::ZERO;
    // `bill_gzip_error` is WeChat Pay failing to compress: a bill asked for as text neither
    // meets nor uses up such a rule.
    let gzip_asked = api == Api::DownloadBill && gate.fields.optional("tar_type") == Some("GZIP");
    if let Some(hit) = sim
        .inner
        .faults
        .take_call_of(api.name(), gate.fields.optional("out_trade_no"), |kind| {
            kind != FaultKind::BillGzipError || gzip_asked
        })
    {
        sim.inner.metrics.fault(hit.kind);
        match hit.kind {
            FaultKind::SystemError => {
                return finish(&sim, api, ctx.biz(ErrCode::SystemError, "系统繁忙,请稍后再试"), None);
            }
            FaultKind::FrequencyLimited => {
                return finish(&sim, api, ctx.biz(ErrCode::FrequencyLimited, "频率限制"), None);
            }
            FaultKind::ErrorCode => {
                let code = ErrCode::parse(hit.err_code.as_deref().unwrap_or_default());
                return finish(&sim, api, ctx.biz(code, "simulated error (fault)"), None);
            }
            FaultKind::BillGzipError => return finish(&sim, api, bill_gzip_error(), None),
            FaultKind::Delay => tokio::time::sleep(hit.delay).await,
            FaultKind::LateAnswer => late = hit.delay,
            other => after = Some(other),
        }
    }
    let reply = match api {
        Api::UnifiedOrder => unified_order(&ctx, &gate.fields),
        Api::OrderQuery => order_query(&ctx, &gate.fields),
        Api::CloseOrder => close_order(&ctx, &gate.fields),
        Api::Refund => refund(&ctx, &gate.fields),
        Api::RefundQuery => refund_query(&ctx, &gate.fields),
        Api::DownloadBill => crate::bill::download(&ctx, &gate.fields),
    };
    if !late.is_zero() {
        // Carried out; the answer leaves once the caller has (perhaps) stopped waiting.
        tokio::time::sleep(late).await;
    }
    finish(&sim, api, reply, after)
}

/// A missing or malformed parameter: a signed business error where WeChat Pay gives one,
/// a protocol refusal elsewhere.
fn biz_or_fail(ctx: &Ctx<'_>, api: Api, msg: &str) -> Reply {
    match api {
        Api::UnifiedOrder => ctx.biz(ErrCode::LackParams, msg),
        Api::Refund | Api::RefundQuery => ctx.biz(ErrCode::ParamError, msg),
        _ => Reply::fail(msg),
    }
}

/// Maps a request that does not parse to WeChat Pay's answer for that API.
fn param_error(ctx: &Ctx<'_>, api: Api, e: &Error) -> Reply {
    match (api, e) {
        (Api::UnifiedOrder, Error::MissingField(f)) => ctx.biz(ErrCode::LackParams, &format!("缺少参数{f}")),
        (Api::UnifiedOrder, Error::InvalidField { field, reason }) => {
            ctx.biz(ErrCode::InvalidRequest, &format!("{field}参数格式错误: {reason}"))
        }
        (Api::Refund | Api::RefundQuery, Error::MissingField(f)) => {
            ctx.biz(ErrCode::ParamError, &format!("缺少参数{f}"))
        }
        (Api::Refund | Api::RefundQuery, Error::InvalidField { field, reason }) => {
            ctx.biz(ErrCode::ParamError, &format!("{field}参数格式错误: {reason}"))
        }
        (_, Error::MissingField(f)) => Reply::fail(&format!("缺少参数{f}")),
        (_, Error::InvalidField { field, .. }) => Reply::fail(&format!("{field}参数格式错误")),
        (_, other) => Reply::fail(&format!("参数格式校验错误: {other}")),
    }
}

fn finish(sim: &Simulator, api: Api, reply: Reply, after: Option<FaultKind>) -> Response {
    sim.inner.metrics.request(api as usize, reply.result);
    let content_type = match reply.kind {
        ReplyKind::Xml => "text/xml; charset=utf-8",
        ReplyKind::Text => "text/plain; charset=utf-8",
        ReplyKind::Gzip(bytes) => {
            return (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/octet-stream")],
                bytes,
            )
                .into_response();
        }
    };
    match after {
        Some(FaultKind::LoseAnswer) => {
            // The call took effect; now the answer is lost: the body fails mid-flight, and the
            // server drops the connection without completing the response.
            let stream = futures_util::stream::once(async {
                Err::<Bytes, std::io::Error>(std::io::Error::other("answer lost (simulated fault)"))
            });
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, content_type)],
                Body::from_stream(stream),
            )
                .into_response()
        }
        Some(FaultKind::BadAnswerSignature) => {
            let body = corrupt_signature(&reply.body);
            (StatusCode::OK, [(header::CONTENT_TYPE, content_type)], body).into_response()
        }
        _ => (StatusCode::OK, [(header::CONTENT_TYPE, content_type)], reply.body).into_response(),
    }
}

/// The same answer with one character of its signature changed.
fn corrupt_signature(body: &str) -> String {
    let Some(start) = body
        .find("<sign><![CDATA[")
        .map(|i| i + 15)
        .or_else(|| body.find("<sign>").map(|i| i + 6))
    else {
        return body.to_owned();
    };
    let mut out = body.to_owned();
    let c = out.as_bytes()[start];
    let replacement = if c == b'0' { "1" } else { "0" };
    out.replace_range(start..start + 1, replacement);
    out
}

/// A digest of the business parameters of an order, to compare re-entries.
fn fingerprint(fields: &Fields<'_>) -> [u8; 16] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for (k, v) in fields.iter() {
        if matches!(k, "appid" | "mch_id" | "nonce_str" | "sign" | "sign_type") || v.is_empty() {
            continue;
        }
        ctx.update(k.as_bytes());
        ctx.update(b"=");
        ctx.update(v.as_bytes());
        ctx.update(b"\n");
    }
    let d = ctx.finish();
    let mut out = [0u8; 16];
    out.copy_from_slice(&d.as_ref()[..16]);
    out
}

/// Closes an unpaid order whose `time_expire` has passed, as WeChat Pay does.
pub(crate) fn expire_if_due(g: &mut ShardGuard<'_>, slot: u32, now: i64) {
    let due = g
        .get(slot)
        .is_some_and(|o| o.state == OrderState::NotPay && o.time_expire.is_some_and(|t| t <= now));
    if due {
        g.set_state(slot, OrderState::Closed);
    }
}

fn unified_order(ctx: &Ctx<'_>, f: &Fields<'_>) -> Reply {
    let req = match UnifiedOrder::from_fields(f) {
        Ok(r) => r,
        Err(e) => return param_error(ctx, Api::UnifiedOrder, &e),
    };
    if !matches!(
        req.trade_type,
        TradeType::Jsapi | TradeType::Native | TradeType::App | TradeType::Mweb
    ) {
        return ctx.biz(ErrCode::InvalidRequest, "trade_type参数格式错误");
    }
    if f.optional("fee_type").is_some_and(|t| t != "CNY") {
        return ctx.biz(ErrCode::ParamError, "fee_type参数错误: 境内商户仅支持人民币CNY");
    }
    if req.trade_type == TradeType::Native && f.optional("product_id").is_none_or(str::is_empty) {
        return ctx.biz(ErrCode::LackParams, "缺少参数product_id (trade_type=NATIVE时必传)");
    }
    let sim = ctx.sim;
    if let Some(openid) = req.openid.as_deref().filter(|o| !o.is_empty()) {
        if !sim.payer_of(ctx.appid, openid) {
            return ctx.biz(ErrCode::ParamError, "appid和openid不匹配");
        }
    }
    let order = NewOrder {
        mch: ctx.mch,
        appid: ctx.appid.into(),
        out_trade_no: req.out_trade_no.as_str().into(),
        body: req.body.as_str().into(),
        attach: req.attach.as_deref().map(Into::into),
        device_info: req.device_info.as_deref().map(Into::into),
        total_fee: req.total_fee,
        notify_url: sim.intern_url(&req.notify_url),
        openid: req.openid.as_deref().unwrap_or("").into(),
        trade_type: req.trade_type.as_str().into(),
        fingerprint: fingerprint(f),
        sign_type: ctx.sign_type,
        time_expire: req.time_expire.map(BeijingTime::unix),
        v3: false,
    };
    let prepay_id = match place_order(sim, order, ctx.now, Some(ctx.now + 60)) {
        Ok(placed) => placed.prepay_id,
        Err(Reentry::Paid) => return ctx.biz(ErrCode::OrderPaid, "该订单已支付"),
        Err(Reentry::Closed) => return ctx.biz(ErrCode::OrderClosed, "该订单已关闭"),
        Err(Reentry::Used) => return ctx.biz(ErrCode::OutTradeNoUsed, "商户订单号重复"),
        Err(Reentry::Different) => {
            return ctx.biz(
                ErrCode::InvalidRequest,
                "201 商户订单号重复: 订单重入时，要求参数值与原请求一致",
            );
        }
        Err(Reentry::ExpiresTooSoon) => {
            return ctx.biz(ErrCode::InvalidRequest, "time_expire时间过短，刷卡至少1分钟，其他5分钟");
        }
    };
    ctx.ok(&UnifiedOrderResponse {
        prepay_id,
        trade_type: req.trade_type,
        code_url: None,
        mweb_url: None,
        device_info: req.device_info,
        extra: BTreeMap::new(),
    })
}

/// Finds an order of the calling merchant by `transaction_id` or `out_trade_no`.
pub(crate) fn locate(sim: &Simulator, mch: u16, order: &OrderRef) -> Option<Loc> {
    match order {
        OrderRef::OutTradeNo(no) => {
            let shard = sim.inner.store.shard_of(mch, no.as_str());
            let g = sim.inner.store.lock(shard);
            g.find(mch, no.as_str()).map(|slot| Loc { shard, slot })
        }
        OrderRef::TransactionId(t) => {
            let (shard, slot) = ids::parse_transaction_id(t)?;
            let mut g = sim.inner.store.lock(shard);
            let o = g.get(slot)?;
            (o.mch == mch && o.transaction_id.as_deref() == Some(t.as_str())).then_some(Loc { shard, slot })
        }
    }
}

/// `orderquery`'s view of an order.
pub(crate) fn query_answer(o: &Order) -> OrderQueryResponse {
    let refunded = !o.refunds.is_empty();
    let (state, desc) = match o.state {
        OrderState::NotPay => (TradeState::NotPay, "订单未支付"),
        OrderState::Closed => (TradeState::Closed, "订单已关闭"),
        OrderState::PayError => (TradeState::PayError, "支付失败，请重新下单支付"),
        OrderState::Success if refunded => (TradeState::Refund, "订单发生过退款，退款详情请查询退款单"),
        OrderState::Success => (TradeState::Success, "支付成功"),
    };
    let paid = o.state == OrderState::Success;
    OrderQueryResponse {
        trade_state: state,
        trade_state_desc: Some(desc.to_owned()),
        out_trade_no: o.out_trade_no.to_string(),
        transaction_id: o.transaction_id.as_deref().map(str::to_owned),
        total_fee: (paid || o.state == OrderState::NotPay).then_some(o.total_fee),
        cash_fee: paid.then_some(o.total_fee),
        settlement_total_fee: None,
        coupon_fee: None,
        coupons: Vec::new(),
        fee_type: paid.then(|| "CNY".to_owned()),
        cash_fee_type: paid.then(|| "CNY".to_owned()),
        openid: paid.then(|| o.openid.to_string()),
        is_subscribe: paid.then(|| "N".to_owned()),
        trade_type: paid.then(|| TradeType::parse(&o.trade_type)),
        bank_type: paid.then(|| "OTHERS".to_owned()),
        time_end: o.paid_at.filter(|_| paid).map(BeijingTime::from_unix),
        attach: o
            .attach
            .as_deref()
            .map(str::to_owned)
            .filter(|_| paid || o.state == OrderState::Closed),
        device_info: o.device_info.as_deref().map(str::to_owned),
        extra: BTreeMap::new(),
    }
}

fn order_query(ctx: &Ctx<'_>, f: &Fields<'_>) -> Reply {
    let req = match OrderQuery::from_fields(f) {
        Ok(r) => r,
        Err(e) => return param_error(ctx, Api::OrderQuery, &e),
    };
    let Some(loc) = locate(ctx.sim, ctx.mch, &req.order) else {
        return ctx.biz(ErrCode::OrderNotExist, "order not exist");
    };
    let mut g = ctx.sim.inner.store.lock(loc.shard);
    expire_if_due(&mut g, loc.slot, ctx.now);
    let Some(o) = g.get(loc.slot) else {
        return ctx.biz(ErrCode::OrderNotExist, "order not exist");
    };
    let answer = query_answer(o);
    drop(g);
    ctx.ok(&answer)
}

fn close_order(ctx: &Ctx<'_>, f: &Fields<'_>) -> Reply {
    let req = match CloseOrder::from_fields(f) {
        Ok(r) => r,
        Err(e) => return param_error(ctx, Api::CloseOrder, &e),
    };
    let Some(loc) = locate(ctx.sim, ctx.mch, &OrderRef::OutTradeNo(req.out_trade_no)) else {
        return ctx.biz(ErrCode::OrderNotExist, "订单不存在");
    };
    match crate::orders::close_order(ctx.sim, loc, ctx.now) {
        Ok(()) => ctx.ok(&CloseOrderResponse {
            result_msg: Some("OK".into()),
            extra: BTreeMap::new(),
        }),
        Err(CloseRefusal::NotFound) => ctx.biz(ErrCode::OrderNotExist, "订单不存在"),
        Err(CloseRefusal::Paid) => ctx.biz(ErrCode::OrderPaid, "订单已支付"),
        Err(CloseRefusal::Closed) => ctx.biz(ErrCode::OrderClosed, "订单已关闭"),
    }
}

fn refund(ctx: &Ctx<'_>, f: &Fields<'_>) -> Reply {
    let req = match Refund::from_fields(f) {
        Ok(r) => r,
        Err(e) => return param_error(ctx, Api::Refund, &e),
    };
    let Some(loc) = locate(ctx.sim, ctx.mch, &req.order) else {
        return ctx.biz(ErrCode::OrderNotExist, "订单不存在");
    };
    let ask = RefundAsk {
        out_refund_no: req.out_refund_no.as_str(),
        refund_fee: req.refund_fee,
        total_fee: req.total_fee,
        notify_url: req.notify_url.as_deref(),
        fingerprint: fingerprint(f),
        v3: false,
    };
    match place_refund(ctx.sim, ctx.mch, loc, &ask, ctx.now) {
        Ok(view) => ctx.ok(&refund_answer(&view.order, &view.refund)),
        Err(RefundRefusal::OrderNotFound) => ctx.biz(ErrCode::OrderNotExist, "订单不存在"),
        Err(RefundRefusal::OtherOrder) => ctx.biz(ErrCode::ParamError, "退款单号已用于其他订单"),
        Err(RefundRefusal::Mismatch) => ctx.biz(ErrCode::ParamError, "同一退款单号参数不一致，请核实后再试"),
        Err(RefundRefusal::NotPaid) => ctx.biz(ErrCode::Error, "订单未支付"),
        Err(RefundRefusal::TotalMismatch) => {
            ctx.biz(ErrCode::ParamError, "订单金额或退款金额与之前请求不一致，请核实后再试")
        }
        Err(RefundRefusal::TooMany) => ctx.biz(ErrCode::Error, "订单已退款50次，不能再退款"),
        Err(RefundRefusal::FullyRefunded) => ctx.biz(ErrCode::Error, "订单已全额退款"),
        Err(RefundRefusal::Exceeds) => ctx.biz(ErrCode::RefundFeeInvalid, "累计退款金额大于支付金额"),
        Err(RefundRefusal::Concurrent) => ctx.biz(ErrCode::BizerrNeedRetry, "并发情况下，业务被拒绝，商户重试即可解决"),
        Err(RefundRefusal::TooSoon) => ctx.biz(ErrCode::FrequencyLimited, "频率限制: 同一笔订单的多次退款需间隔1分钟"),
        Err(RefundRefusal::NotEnough) => ctx.biz(ErrCode::NotEnough, "基本账户余额不足，请充值后重新发起"),
    }
}

fn refund_answer(o: &Order, r: &RefundRec) -> RefundResponse {
    RefundResponse {
        transaction_id: o.transaction_id.as_deref().unwrap_or("").to_owned(),
        out_trade_no: o.out_trade_no.to_string(),
        out_refund_no: r.out_refund_no.to_string(),
        refund_id: r.refund_id.to_string(),
        refund_fee: r.refund_fee,
        settlement_refund_fee: None,
        total_fee: o.total_fee,
        settlement_total_fee: None,
        cash_fee: Some(o.total_fee),
        cash_refund_fee: Some(r.refund_fee),
        coupon_refund_fee: Some(Fen::ZERO),
        coupon_refund_count: Some(0),
        fee_type: None,
        refund_channel: None,
        extra: BTreeMap::new(),
    }
}

fn refund_record(r: &RefundRec) -> RefundRecord {
    RefundRecord {
        out_refund_no: r.out_refund_no.to_string(),
        refund_id: r.refund_id.to_string(),
        refund_fee: r.refund_fee,
        settlement_refund_fee: None,
        refund_status: r.status.clone(),
        refund_channel: Some("ORIGINAL".into()),
        refund_account: Some("REFUND_SOURCE_UNSETTLED_FUNDS".into()),
        refund_recv_accout: Some("支付用户的零钱".into()),
        refund_success_time: r
            .settled_at
            .filter(|_| r.status == RefundStatus::Success)
            .map(BeijingTime::from_unix),
        coupon_refund_fee: None,
        coupon_refund_count: None,
    }
}

fn refund_query(ctx: &Ctx<'_>, f: &Fields<'_>) -> Reply {
    let req = match RefundQuery::from_fields(f) {
        Ok(r) => r,
        Err(e) => return param_error(ctx, Api::RefundQuery, &e),
    };
    let sim = ctx.sim;
    let (loc, only) = match &req.by {
        RefundRef::RefundId(id) => match ids::parse_refund_id(id) {
            Some((shard, slot, idx)) => (Some(Loc { shard, slot }), Some((idx, Some(id.as_str())))),
            _ => (None, None),
        },
        RefundRef::OutRefundNo(no) => match sim.inner.store.find_refund(ctx.mch, no.as_str()) {
            Some((loc, idx)) => (Some(loc), Some((idx, None))),
            None => (None, None),
        },
        RefundRef::TransactionId(t) => (locate(sim, ctx.mch, &OrderRef::TransactionId(t.clone())), None),
        RefundRef::OutTradeNo(n) => (locate(sim, ctx.mch, &OrderRef::OutTradeNo(n.clone())), None),
    };
    let not_found = || ctx.biz(ErrCode::RefundNotExist, "退款订单查询失败");
    let Some(loc) = loc else {
        return not_found();
    };
    let mut g = sim.inner.store.lock(loc.shard);
    let Some(o) = g.get(loc.slot).filter(|o| o.mch == ctx.mch) else {
        return not_found();
    };
    let records: Vec<&RefundRec> = match only {
        Some((idx, id)) => match o.refunds.get(idx) {
            Some(r) if id.is_none_or(|id| &*r.refund_id == id) => vec![r],
            _ => return not_found(),
        },
        None => o.refunds.iter().collect(),
    };
    if records.is_empty() {
        return not_found();
    }
    // Ten records a page; `offset` picks the page and adds the total.
    let offset = req.offset.unwrap_or(0) as usize;
    if offset >= records.len() && offset > 0 {
        return not_found();
    }
    let page: Vec<RefundRecord> = records.iter().skip(offset).take(10).map(|r| refund_record(r)).collect();
    let sum = Fen::new(page.iter().map(|r| r.refund_fee.get()).sum()).unwrap_or(Fen::MAX);
    let answer = RefundQueryResponse {
        transaction_id: o.transaction_id.as_deref().unwrap_or("").to_owned(),
        out_trade_no: o.out_trade_no.to_string(),
        total_fee: o.total_fee,
        settlement_total_fee: None,
        cash_fee: Some(o.total_fee),
        fee_type: None,
        refund_fee: Some(sum),
        total_refund_count: req.offset.map(|_| records.len() as u32),
        refunds: page,
        extra: BTreeMap::new(),
    };
    drop(g);
    ctx.ok(&answer)
}

/// Replies as text (the bill).
pub(crate) fn text_reply(body: String) -> Reply {
    Reply {
        body,
        result: SUCCESS,
        kind: ReplyKind::Text,
    }
}

/// Replies with a gzip file (the bill, with `tar_type=GZIP`).
pub(crate) fn gzip_reply(bytes: Vec<u8>) -> Reply {
    Reply {
        body: String::new(),
        result: SUCCESS,
        kind: ReplyKind::Gzip(bytes),
    }
}

/// Replies with downloadbill's unsigned XML error.
pub(crate) fn bill_error(msg: &str, code: &str) -> Reply {
    bill_failure(msg, Some(code))
}

/// downloadbill's unsigned XML error, with its numeric `error_code` when one is known.
fn bill_failure(msg: &str, code: Option<&str>) -> Reply {
    let fields = [("return_code", "FAIL"), ("return_msg", msg)];
    let body = wxpay_protocol::xml::write("xml", fields.into_iter().chain(code.map(|c| ("error_code", c))))
        .unwrap_or_else(|_| return_fail(msg));
    Reply {
        body,
        result: BUSINESS_ERROR,
        kind: ReplyKind::Xml,
    }
}

/// WeChat Pay's answer when its compression of a bill fails (`CompressGZip Error`, "try again
/// later" in its table). No numeric `error_code` is known for it, so none is sent.
fn bill_gzip_error() -> Reply {
    bill_failure("CompressGZip Error", None)
}

/// `bill_error` for a request that does not parse.
pub(crate) fn bill_param_error(e: &Error) -> Reply {
    let msg = match e {
        Error::InvalidField { field, .. } if field == "bill_type" => "invalid bill_type".to_owned(),
        Error::InvalidField { field, .. } if field == "tar_type" => "invalid tar_type, Only GZIP supported".to_owned(),
        Error::InvalidField { field, .. } | Error::MissingField(field) => format!("invalid {field}"),
        _ => "data format error".to_owned(),
    };
    bill_error(&msg, "20001")
}

/// Reads downloadbill's request.
pub(crate) fn parse_bill_request(f: &Fields<'_>) -> Result<DownloadBill, Error> {
    DownloadBill::from_fields(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_corrupted_signature_differs_in_one_character() {
        let body = "<xml><a>1</a><sign><![CDATA[ABC0]]></sign></xml>";
        let bad = corrupt_signature(body);
        assert_ne!(bad, body);
        assert_eq!(bad.len(), body.len());
        assert!(bad.contains("<sign><![CDATA[0BC0]]>"));
    }
}
