//! The APIv3 paths, with WeChat Pay's rules and answers.
//!
//! Every call goes through the same gate, in WeChat Pay's order: `Accept` and `User-Agent`
//! present, an `Authorization` of the right scheme with its five fields, a merchant served on
//! APIv3, the serial of that merchant's certificate, a timestamp within five minutes, the
//! signature over `METHOD\nURL\nTIMESTAMP\nNONCE\nBODY\n`; then the faults asked for, then the
//! business rules. Every answer, errors included, is signed with the key `--v3-signer` names
//! (`Wechatpay-Timestamp/Nonce/Signature/Serial/Signature-Type`), so clients verify all of
//! them as they must with WeChat Pay.

mod calls;
pub(crate) mod keys;
pub(crate) mod notify;

use std::path::Path;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use serde_json::{Value, json};
use wxpay_protocol::ApiV3Key;
use wxpay_protocol::v3::auth::{MAX_SKEW_SECS, SCHEME};
use wxpay_protocol::v3::{Certificate, SignedHeaders};

use crate::faults::FaultKind;
use crate::{MerchantEntry, Simulator, V3Config, V3Signer, ids};

pub use keys::V3Files;

/// What the simulator holds for APIv3.
pub(crate) struct V3 {
    pub signer: V3Signer,
    /// The platform certificates listed on `/v3/certificates`, each with the expiry the list
    /// gives it, and which one signs (in certificate mode). A rotation adds one and moves the
    /// old one's listed expiry up; retiring drops all but the signing one.
    platforms: std::sync::RwLock<Platforms>,
    pub pub_key: keys::SigningKey,
    pub files: V3Files,
    /// By merchant index: the merchant's APIv3 credentials, when it has them.
    pub merchants: Vec<Option<V3Merchant>>,
    /// Bills handed out by `/v3/bill/tradebill`, by download token.
    pub bills: calls::BillTokens,
}

/// The platform certificates, and the one that signs.
struct Platforms {
    list: Vec<(Arc<keys::Platform>, i64)>,
    active: usize,
}

/// A merchant on APIv3.
pub(crate) struct V3Merchant {
    pub apiv3_key: ApiV3Key,
    pub certificate: Certificate,
}

impl V3 {
    /// Reads (or makes, at first start) the keys, and the certificates of the merchants whose
    /// certificate the simulator issues.
    pub(crate) fn load(config: &V3Config, merchants: &[MerchantEntry], now: i64) -> std::io::Result<V3> {
        let dir: &Path = &config.keys_dir;
        let platform = keys::platform(dir, now)?;
        let not_after = platform.not_after;
        let (pub_key, files) = keys::public_key(dir)?;
        let mut v3_merchants = Vec::with_capacity(merchants.len());
        for m in merchants {
            v3_merchants.push(match &m.v3 {
                None => None,
                Some(c) => Some(V3Merchant {
                    apiv3_key: c.apiv3_key.clone(),
                    certificate: match &c.certificate {
                        Some(cert) => cert.clone(),
                        None => keys::issued_merchant(dir, &m.mch_id, now)?,
                    },
                }),
            });
        }
        Ok(V3 {
            signer: config.signer,
            platforms: std::sync::RwLock::new(Platforms {
                list: vec![(Arc::new(platform), not_after)],
                active: 0,
            }),
            pub_key,
            files,
            merchants: v3_merchants,
            bills: calls::BillTokens::default(),
        })
    }

    fn platforms(&self) -> std::sync::RwLockReadGuard<'_, Platforms> {
        self.platforms.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The platform certificates listed, with their listed expiry (Unix seconds).
    pub(crate) fn listed_platforms(&self) -> Vec<(Arc<keys::Platform>, i64)> {
        self.platforms().list.clone()
    }

    /// Announces a new platform certificate and signs with it from now on (in certificate
    /// mode); the old one stays listed, its expiry moved to a day from `now`. Returns the new
    /// serial.
    pub(crate) fn rotate(&self, fresh: keys::Platform, now: i64) -> String {
        let mut p = self.platforms.write().unwrap_or_else(|e| e.into_inner());
        for (_, expire) in &mut p.list {
            *expire = (*expire).min(now + 86_400);
        }
        let serial = fresh.signing.id().to_owned();
        let not_after = fresh.not_after;
        p.list.push((Arc::new(fresh), not_after));
        p.active = p.list.len() - 1;
        serial
    }

    /// Drops every platform certificate but the one that signs; returns the serials dropped.
    pub(crate) fn retire(&self) -> Vec<String> {
        let mut p = self.platforms.write().unwrap_or_else(|e| e.into_inner());
        let active = p.list[p.active].clone();
        let dropped = p
            .list
            .iter()
            .filter(|(c, _)| !Arc::ptr_eq(c, &active.0))
            .map(|(c, _)| c.signing.id().to_owned())
            .collect();
        p.list = vec![active];
        p.active = 0;
        dropped
    }

    /// Signs `body` at `now` with the key in use.
    pub(crate) fn sign(&self, body: &[u8], now: i64) -> SignedHeaders {
        let platform;
        let key = match self.signer {
            V3Signer::PublicKey => &self.pub_key,
            V3Signer::Certificate => {
                let p = self.platforms();
                platform = p.list[p.active].0.clone();
                &platform.signing
            }
        };
        let nonce = ids::nonce();
        // Signing with a key parsed at start cannot fail; an empty signature would only make
        // the client refuse the answer, which is what a broken WeChat Pay would cause too.
        SignedHeaders::sign(&key.key, key.id(), now, nonce.as_str(), body).unwrap_or_else(|_| SignedHeaders {
            timestamp: now.to_string(),
            nonce: nonce.as_str().to_owned(),
            signature: String::new(),
            serial: key.id().to_owned(),
        })
    }
}

/// The APIv3 calls, named as in the metrics and fault rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Api {
    Jsapi,
    QueryByOutTradeNo,
    QueryById,
    Close,
    Refund,
    RefundQuery,
    Certificates,
    TradeBill,
    BillDownload,
}

impl Api {
    /// The index in `metrics::APIS`.
    fn metric(self) -> usize {
        match self {
            Api::Jsapi => 7,
            Api::QueryByOutTradeNo | Api::QueryById => 8,
            Api::Close => 9,
            Api::Refund => 10,
            Api::RefundQuery => 11,
            Api::Certificates => 12,
            Api::TradeBill => 13,
            Api::BillDownload => 14,
        }
    }

    pub(crate) fn name(self) -> &'static str {
        crate::metrics::APIS[self.metric()]
    }
}

const SUCCESS: usize = 0;
const BUSINESS_ERROR: usize = 1;
const PROTOCOL_ERROR: usize = 2;

/// An answer before it is signed.
pub(crate) struct Reply {
    status: StatusCode,
    body: String,
    result: usize,
    /// A file (the bill download): sent as is, without signature headers, as WeChat Pay does.
    file: Option<Vec<u8>>,
}

impl Reply {
    pub(crate) fn ok(body: &Value) -> Reply {
        Reply {
            status: StatusCode::OK,
            body: body.to_string(),
            result: SUCCESS,
            file: None,
        }
    }

    pub(crate) fn no_content() -> Reply {
        Reply {
            status: StatusCode::NO_CONTENT,
            body: String::new(),
            result: SUCCESS,
            file: None,
        }
    }

    pub(crate) fn file(bytes: Vec<u8>) -> Reply {
        Reply {
            status: StatusCode::OK,
            body: String::new(),
            result: SUCCESS,
            file: Some(bytes),
        }
    }

    /// A refusal with WeChat Pay's error body.
    pub(crate) fn error(status: u16, code: &str, message: &str) -> Reply {
        Reply::error_with(status, code, message, None)
    }

    pub(crate) fn error_with(status: u16, code: &str, message: &str, detail: Option<Value>) -> Reply {
        let mut body = json!({ "code": code, "message": message });
        if let Some(d) = detail {
            body["detail"] = d;
        }
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        Reply {
            status,
            body: body.to_string(),
            result: if matches!(code, "SIGN_ERROR" | "INVALID_REQUEST") || status == StatusCode::UNAUTHORIZED {
                PROTOCOL_ERROR
            } else {
                BUSINESS_ERROR
            },
            file: None,
        }
    }

    /// `PARAM_ERROR` about one field of the body, with WeChat Pay's `detail`.
    pub(crate) fn param(field: &str, issue: &str) -> Reply {
        Reply::error_with(
            400,
            "PARAM_ERROR",
            &format!("参数错误: {field} {issue}"),
            Some(json!({ "field": field, "location": "body", "issue": issue })),
        )
    }
}

/// The HTTP status WeChat Pay answers a business error code with (`protocol.md` B.6).
pub(crate) fn status_of(code: &str) -> u16 {
    match code {
        "SIGN_ERROR" => 401,
        "TRADE_ERROR"
        | "RULE_LIMIT"
        | "OUT_TRADE_NO_USED"
        | "NOT_ENOUGH"
        | "NOTENOUGH"
        | "NO_AUTH"
        | "ACCOUNT_ERROR"
        | "USER_ACCOUNT_ABNORMAL"
        | "REQUEST_BLOCKED"
        | "ORDERPAID" => 403,
        "ORDER_NOT_EXIST" | "ORDERNOTEXIST" | "RESOURCE_NOT_EXISTS" => 404,
        "FREQUENCY_LIMITED" | "RATELIMIT_EXCEEDED" => 429,
        "SYSTEM_ERROR" | "INVALID_TRANSACTIONID" | "BANK_ERROR" | "OPENID_MISMATCH" => 500,
        "SERVICE_UNAVAILABLE" => 503,
        _ => 400,
    }
}

/// A request that passed the gate: who signed it.
pub(crate) struct Caller {
    pub mch: u16,
}

/// The five fields of `Authorization`.
struct Authorization<'a> {
    mchid: &'a str,
    nonce_str: &'a str,
    signature: &'a str,
    timestamp: &'a str,
    serial_no: &'a str,
}

fn sign_error(message: &str) -> Reply {
    Reply::error(401, "SIGN_ERROR", message)
}

/// Reads `WECHATPAY2-SHA256-RSA2048 k="v",…`; every field once, in any order.
fn parse_authorization(value: &str) -> Result<Authorization<'_>, Reply> {
    let malformed = || sign_error("Http头Authorization值格式错误，请参考《微信支付商户REST API签名规则》");
    let rest = value
        .strip_prefix(SCHEME)
        .and_then(|r| r.strip_prefix(' '))
        .ok_or_else(|| sign_error("错误的签名方式，请检查Authorization中的认证类型是否为WECHATPAY2-SHA256-RSA2048"))?;
    let mut fields: [Option<&str>; 5] = [None; 5];
    for part in rest.split(',') {
        let (k, v) = part.trim().split_once('=').ok_or_else(malformed)?;
        let v = v
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .ok_or_else(malformed)?;
        let i = match k {
            "mchid" => 0,
            "nonce_str" => 1,
            "signature" => 2,
            "timestamp" => 3,
            "serial_no" => 4,
            _ => return Err(malformed()),
        };
        if fields[i].replace(v).is_some() {
            return Err(malformed());
        }
    }
    let [
        Some(mchid),
        Some(nonce_str),
        Some(signature),
        Some(timestamp),
        Some(serial_no),
    ] = fields
    else {
        return Err(sign_error(
            "Http头Authorization中缺少mchid、nonce_str、signature、timestamp或serial_no",
        ));
    };
    Ok(Authorization {
        mchid,
        nonce_str,
        signature,
        timestamp,
        serial_no,
    })
}

fn header_text<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.trim().is_empty())
}

/// The checks before any business rule, in WeChat Pay's order.
fn gate(
    sim: &Simulator,
    v3: &V3,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
    now: i64,
) -> Result<Caller, Reply> {
    if header_text(headers, "accept").is_none() || header_text(headers, "user-agent").is_none() {
        return Err(Reply::error(400, "INVALID_REQUEST", "Http头缺少Accept或User-Agent"));
    }
    let Some(value) = header_text(headers, "authorization") else {
        return Err(sign_error("Http头缺少Authorization"));
    };
    let auth = parse_authorization(value)?;
    let Some(&mch) = sim.inner.by_mch.get(auth.mchid) else {
        return Err(Reply::error(400, "MCH_NOT_EXISTS", "商户号不存在"));
    };
    let Some(merchant) = v3.merchants.get(usize::from(mch)).and_then(Option::as_ref) else {
        return Err(Reply::error(
            400,
            "MCH_NOT_EXISTS",
            "商户号未开通APIv3（没有设置APIv3密钥和商户API证书）",
        ));
    };
    if !auth.serial_no.eq_ignore_ascii_case(merchant.certificate.serial_no()) {
        return Err(sign_error(
            "Http头Authorization中的serial_no不是商户当前可用的API证书序列号",
        ));
    }
    let timestamp: i64 = auth
        .timestamp
        .parse()
        .map_err(|_| sign_error("Http头Authorization中的timestamp不是秒级Unix时间戳"))?;
    if now.abs_diff(timestamp) > MAX_SKEW_SECS.unsigned_abs() {
        return Err(sign_error(
            "Http头Authorization中的timestamp与发起请求的时间不得超过5分钟",
        ));
    }
    let url = uri.path_and_query().map_or_else(|| uri.path(), |p| p.as_str());
    let body_text = std::str::from_utf8(body).map_err(|_| Reply::param("/", "请求体不是UTF-8编码"))?;
    // The message of `request_message`, written out here because WeChat Pay takes any nonce a
    // client sends, not only the letters and digits `Nonce` allows.
    let message = format!(
        "{}\n{url}\n{}\n{}\n{body_text}\n",
        method.as_str(),
        auth.timestamp,
        auth.nonce_str
    );
    let signature = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, auth.signature);
    let valid = signature.is_ok_and(|s| merchant.certificate.public_key().verifies(message.as_bytes(), &s));
    if !valid {
        let shown: String = message.chars().take(64).collect();
        return Err(Reply::error_with(
            401,
            "SIGN_ERROR",
            "签名错误，请检查后再试",
            Some(json!({
                "detail": { "issue": "sign not match" },
                "field": "signature",
                "location": "authorization",
                "sign_information": {
                    "method": method.as_str(),
                    "url": url,
                    "truncated_sign_message": shown,
                    "sign_message_length": message.len(),
                }
            })),
        ));
    }
    if *method == Method::POST
        && !header_text(headers, "content-type").is_some_and(|t| t.starts_with("application/json"))
    {
        return Err(Reply::error(
            400,
            "INVALID_REQUEST",
            "Http头Content-Type值必须为application/json",
        ));
    }
    Ok(Caller { mch })
}

pub(crate) fn router() -> Router<Simulator> {
    macro_rules! route {
        ($api:expr) => {
            |State(sim): State<Simulator>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes| async move {
                call(sim, $api, method, uri, headers, body).await
            }
        };
    }
    Router::new()
        .route("/v3/pay/transactions/jsapi", post(route!(Api::Jsapi)))
        .route(
            "/v3/pay/transactions/out-trade-no/{no}",
            get(route!(Api::QueryByOutTradeNo)),
        )
        .route("/v3/pay/transactions/out-trade-no/{no}/close", post(route!(Api::Close)))
        .route("/v3/pay/transactions/id/{id}", get(route!(Api::QueryById)))
        .route("/v3/refund/domestic/refunds", post(route!(Api::Refund)))
        .route("/v3/refund/domestic/refunds/{no}", get(route!(Api::RefundQuery)))
        .route("/v3/certificates", get(route!(Api::Certificates)))
        .route("/v3/bill/tradebill", get(route!(Api::TradeBill)))
        .route("/v3/billdownload/file", get(route!(Api::BillDownload)))
        .layer(DefaultBodyLimit::max(64 * 1024))
}

async fn call(sim: Simulator, api: Api, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let now = sim.now();
    sim.inner.requests.record(api.name(), now, &body);
    let Some(v3) = sim.inner.v3.as_ref() else {
        return (StatusCode::NOT_FOUND, "APIv3 is not enabled on this simulator").into_response();
    };
    let caller = match gate(&sim, v3, &method, &uri, &headers, &body, now) {
        Ok(c) => c,
        Err(reply) => return finish(&sim, v3, api, reply, None, now),
    };
    let mut after = None;
    let mut late = std::time::Duration::ZERO;
    let path_no = calls::path_segment(uri.path(), api);
    if let Some(hit) = sim.inner.faults.take_call(api.name(), path_no.as_deref()) {
        sim.inner.metrics.fault(hit.kind);
        match hit.kind {
            FaultKind::SystemError => {
                return finish(
                    &sim,
                    v3,
                    api,
                    Reply::error(500, "SYSTEM_ERROR", "系统异常，请稍后重试"),
                    None,
                    now,
                );
            }
            FaultKind::FrequencyLimited => {
                return finish(
                    &sim,
                    v3,
                    api,
                    Reply::error(429, "FREQUENCY_LIMITED", "频率超限"),
                    None,
                    now,
                );
            }
            FaultKind::ErrorCode => {
                let code = hit.err_code.as_deref().unwrap_or("SYSTEM_ERROR");
                let reply = Reply::error(status_of(code), code, "simulated error (fault)");
                return finish(&sim, v3, api, reply, None, now);
            }
            FaultKind::Delay => tokio::time::sleep(hit.delay).await,
            FaultKind::LateAnswer => late = hit.delay,
            other => after = Some(other),
        }
    }
    let ctx = calls::Ctx {
        sim: &sim,
        v3,
        mch: caller.mch,
        now,
        host: header_text(&headers, "host").unwrap_or("127.0.0.1"),
    };
    let reply = match api {
        Api::Jsapi => calls::jsapi(&ctx, &body),
        Api::QueryByOutTradeNo => calls::query_by_out_trade_no(&ctx, &uri),
        Api::QueryById => calls::query_by_id(&ctx, &uri),
        Api::Close => calls::close(&ctx, &uri, &body),
        Api::Refund => calls::refund(&ctx, &body),
        Api::RefundQuery => calls::refund_query(&ctx, &uri),
        Api::Certificates => calls::certificates(&ctx),
        Api::TradeBill => calls::trade_bill(&ctx, &uri),
        Api::BillDownload => calls::bill_download(&ctx, &uri),
    };
    let signed_at = if late.is_zero() {
        now
    } else {
        // Carried out; the answer leaves once the caller has (perhaps) stopped waiting, and
        // is signed when it leaves, as WeChat Pay's would be.
        tokio::time::sleep(late).await;
        sim.now()
    };
    finish(&sim, v3, api, reply, after, signed_at)
}

fn finish(sim: &Simulator, v3: &V3, api: Api, reply: Reply, after: Option<FaultKind>, now: i64) -> Response {
    sim.inner.metrics.request(api.metric(), reply.result);
    if let Some(bytes) = reply.file {
        return (
            reply.status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            )],
            bytes,
        )
            .into_response();
    }
    let mut signed = v3.sign(reply.body.as_bytes(), now);
    if after == Some(FaultKind::BadAnswerSignature) {
        signed.signature = corrupt(&signed.signature);
    }
    let mut response = if after == Some(FaultKind::LoseAnswer) {
        // The call took effect; now the answer is lost mid-flight.
        let stream = futures_util::stream::once(async {
            Err::<Bytes, std::io::Error>(std::io::Error::other("answer lost (simulated fault)"))
        });
        Response::new(Body::from_stream(stream))
    } else {
        Response::new(Body::from(reply.body.clone()))
    };
    *response.status_mut() = reply.status;
    let h = response.headers_mut();
    if !reply.body.is_empty() {
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
    }
    for (name, value) in signed.headers() {
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.insert(name, v);
        }
    }
    if let Ok(v) = HeaderValue::from_str(&ids::random_alnum(32)) {
        h.insert("Request-ID", v);
    }
    response
}

/// The same base64 signature with one character changed (still base64, so only the
/// verification itself catches it).
pub(crate) fn corrupt(signature: &str) -> String {
    let mut out = signature.to_owned();
    if let Some(c) = out.chars().next() {
        out.replace_range(0..c.len_utf8(), if c == 'A' { "B" } else { "A" });
    }
    out
}
