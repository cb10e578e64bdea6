//! The checkout page: what the WeChat app's cashier shows a payer, played in a browser. It
//! pays or fails an order by its `prepay_id` and, one click away, pays it with a fault in
//! the notification that follows, so that a demo shows what a merchant's server does with a
//! duplicated, forged or replayed notification. It speaks Chinese or English.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::{Form, Router, routing::get};
use serde::Deserialize;

use wxpay_protocol::lang::Lang;

use crate::faults::{FaultKind, FaultRequest};
use crate::store::Loc;
use crate::{Simulator, ids};

/// The page's language: `?lang=` when given, else the one the browser asks for.
fn lang_of(chosen: Option<&str>, headers: &HeaderMap) -> Lang {
    chosen.and_then(Lang::parse).unwrap_or_else(|| {
        let accept = headers
            .get(header::ACCEPT_LANGUAGE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        Lang::from_accept_language(accept)
    })
}

fn words(lang: Lang) -> &'static Words {
    match lang {
        Lang::Zh => &ZH,
        Lang::En => &EN,
    }
}

/// How many copies the duplicate fault sends at once.
const COPIES: u32 = 5;

/// How long an offered fault waits for its notification: one whose payment never happened
/// (two clicks at once, one of them refused) must not wait for a later one.
const FAULT_WINDOW_MS: u64 = 10 * 60 * 1000;

/// The faults the page offers, in its order.
const OFFERED: [FaultKind; 6] = [
    FaultKind::NotifyDuplicate,
    FaultKind::NotifyBadSignature,
    FaultKind::NotifyWrongAmount,
    FaultKind::NotifyProbe,
    FaultKind::NotifyStaleTimestamp,
    FaultKind::NotifyTamperedTag,
];

/// Everything the page says, in one language.
struct Words {
    title: &'static str,
    simulator: &'static str,
    merchant: &'static str,
    pay: &'static str,
    fail: &'static str,
    state: &'static str,
    paid: &'static str,
    paid_note: &'static str,
    failed: &'static str,
    failed_note: &'static str,
    cannot_pay: &'static str,
    unknown: &'static str,
    unknown_note: &'static str,
    with_fault: &'static str,
    fault_note: &'static str,
    fault_added: &'static str,
    other_language: (&'static str, &'static str),
    /// What each fault of [`OFFERED`] does, in its order.
    faults: [&'static str; OFFERED.len()],
}

static ZH: Words = Words {
    title: "微信支付",
    simulator: "微信支付模拟器",
    merchant: "商户号",
    pay: "支付",
    fail: "让支付失败",
    state: "状态",
    paid: "支付成功",
    paid_note: "已支付，正在通知商户。",
    failed: "支付失败",
    failed_note: "支付失败（模拟）。",
    cannot_pay: "无法支付",
    unknown: "订单不存在",
    unknown_note: "该 prepay_id 不存在或已被替换。",
    with_fault: "支付，但让随后的支付通知出错：",
    fault_note: "商户服务器应当拒绝出错的通知，并且只记一次支付：微信支付稍后会重发正确的通知，网关也会主动查询订单。",
    fault_added: "已注入故障：",
    other_language: ("en", "English"),
    faults: [
        "同一通知同时发送 5 次",
        "第一次通知签名错误（伪造）",
        "第一次通知金额不符",
        "先发一次签名探测（仅 APIv3）",
        "第一次通知是十分钟前的（重放，仅 APIv3）",
        "第一次通知的密文被篡改（仅 APIv3）",
    ],
};

static EN: Words = Words {
    title: "WeChat Pay",
    simulator: "WeChat Pay simulator",
    merchant: "Merchant",
    pay: "Pay",
    fail: "Fail the payment",
    state: "State",
    paid: "Paid",
    paid_note: "Paid. The merchant is being notified.",
    failed: "Payment failed",
    failed_note: "The payment failed (simulated).",
    cannot_pay: "Cannot pay",
    unknown: "No such order",
    unknown_note: "This prepay_id is unknown or was replaced.",
    with_fault: "Pay, but make the payment notification that follows go wrong:",
    fault_note: "The merchant's server must refuse a bad notification and count the payment once: WeChat Pay sends the right notification again later, and the gateway queries the order meanwhile.",
    fault_added: "Fault injected:",
    other_language: ("zh", "中文"),
    faults: [
        "the same notification sent 5 times at once",
        "the first notification wrongly signed (a forgery)",
        "the first notification with another amount",
        "a signature probe first (APIv3 only)",
        "the first notification ten minutes old (a replay; APIv3 only)",
        "the first notification's ciphertext tampered with (APIv3 only)",
    ],
};

impl Words {
    /// The faults that apply to an order placed on APIv3 (`v3`) or APIv2, with what each
    /// does.
    fn faults_for(&self, v3: bool) -> impl Iterator<Item = (FaultKind, &'static str)> + '_ {
        OFFERED
            .into_iter()
            .zip(self.faults)
            .filter(move |(kind, _)| v3 || !kind.only_v3())
    }
}

pub(crate) fn router() -> Router<Simulator> {
    Router::new().route("/simulator/checkout/{prepay_id}", get(checkout).post(checkout_pay))
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn page(lang: Lang, prepay_id: &str, body: &str) -> Html<String> {
    let w = words(lang);
    let (code, name) = w.other_language;
    Html(format!(
        "<!doctype html><html lang=\"{lang}\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\">\
<title>{title}</title><style>body{{font-family:system-ui,\"PingFang SC\",sans-serif;max-width:26rem;margin:1rem auto;padding:0 1rem;color:#222}}\
h1{{font-size:1.5rem;margin:.4rem 0}}.amount{{font-size:2.4rem;margin:.4rem 0}}button{{font-size:1.1rem;padding:.7rem 1.4rem;margin:.3rem .3rem 0 0;border:0;border-radius:.4rem;cursor:pointer}}\
.pay{{background:#07c160;color:#fff}}.fail{{background:#eee}}.fault{{font-size:.85rem;padding:.4rem .7rem;background:#fdf1e6}}\
.note{{color:#777;font-size:.85rem;word-break:break-all}}.lang{{float:right;font-size:.85rem}}</style></head>\
<body><a class=\"lang\" href=\"/simulator/checkout/{prepay}?lang={code}\">{name}</a>{body}</body></html>",
        lang = lang.code(),
        title = w.title,
        prepay = escape(&percent(prepay_id)),
    ))
}

/// `s` percent-encoded for a path segment (a prepay_id is letters and digits, but a page
/// must not trust that).
fn percent(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn by_prepay(sim: &Simulator, prepay_id: &str) -> Option<(Loc, bool)> {
    let (shard, slot) = ids::parse_prepay_id(prepay_id)?;
    let mut g = sim.inner.store.lock(shard);
    g.get(slot)
        .filter(|o| &*o.prepay_id == prepay_id)
        .map(|o| (Loc { shard, slot }, o.v3))
}

#[derive(Deserialize)]
struct LangQuery {
    lang: Option<String>,
}

fn not_found(lang: Lang, prepay_id: &str) -> Response {
    let w = words(lang);
    let body = format!("<h1>{}</h1><p>{}</p>", w.unknown, w.unknown_note);
    (StatusCode::NOT_FOUND, page(lang, prepay_id, &body)).into_response()
}

async fn checkout(
    State(sim): State<Simulator>,
    Path(prepay_id): Path<String>,
    Query(q): Query<LangQuery>,
    headers: HeaderMap,
) -> Response {
    let lang = lang_of(q.lang.as_deref(), &headers);
    let w = words(lang);
    let Some((loc, v3)) = by_prepay(&sim, &prepay_id) else {
        return not_found(lang, &prepay_id);
    };
    let Some(v) = crate::control::view_at(&sim, loc) else {
        return not_found(lang, &prepay_id);
    };
    let action = format!(
        "/simulator/checkout/{}?lang={}",
        escape(&percent(&prepay_id)),
        lang.code()
    );
    let state = if v.trade_state == "NOTPAY" {
        let faults: String = w
            .faults_for(v3)
            .map(|(kind, label)| {
                format!(
                    "<button class=\"fault\" name=\"fault\" value=\"{}\">{label}</button><br>",
                    kind.name()
                )
            })
            .collect();
        format!(
            "<form method=\"post\" action=\"{action}\"><button class=\"pay\" name=\"outcome\" value=\"success\">{pay}</button>\
<button class=\"fail\" name=\"outcome\" value=\"fail\">{fail}</button></form>\
<form method=\"post\" action=\"{action}\"><p>{with_fault}</p><input type=\"hidden\" name=\"outcome\" value=\"success\">{faults}\
<p class=\"note\">{fault_note}</p></form>",
            pay = w.pay,
            fail = w.fail,
            with_fault = w.with_fault,
            fault_note = w.fault_note,
        )
    } else {
        format!("<p>{}: <b>{}</b></p>", w.state, escape(&v.trade_state))
    };
    let body = format!(
        "<p class=\"note\">{simulator} · {merchant} {mch}</p><h1>{desc}</h1><p class=\"amount\">¥{amount}</p>{state}\
<p class=\"note\">out_trade_no {no}<br>prepay_id {prepay}</p>",
        simulator = w.simulator,
        merchant = w.merchant,
        mch = escape(&v.mch_id),
        desc = escape(&v.body),
        amount = v.total_fee.to_yuan(),
        no = escape(&v.out_trade_no),
        prepay = escape(&prepay_id),
    );
    page(lang, &prepay_id, &body).into_response()
}

#[derive(Deserialize)]
struct CheckoutForm {
    outcome: Option<String>,
    /// A notification fault to pay with (one of those the page offers).
    fault: Option<String>,
}

async fn checkout_pay(
    State(sim): State<Simulator>,
    Path(prepay_id): Path<String>,
    Query(q): Query<LangQuery>,
    headers: HeaderMap,
    Form(form): Form<CheckoutForm>,
) -> Response {
    let lang = lang_of(q.lang.as_deref(), &headers);
    let w = words(lang);
    let Some((loc, v3)) = by_prepay(&sim, &prepay_id) else {
        return not_found(lang, &prepay_id);
    };
    let success = form.outcome.as_deref() != Some("fail");
    // Only the faults this page offers for this order, so that a form cannot ask for an
    // answer fault or a v3 fault on a v2 notification.
    let fault = match form.fault.as_deref() {
        None => None,
        Some(name) => match w.faults_for(v3).find(|(kind, _)| kind.name() == name) {
            Some((kind, label)) if success => Some((kind, label)),
            _ => {
                let body = format!("<h1>{}</h1><p>fault {}</p>", w.cannot_pay, escape(name));
                return (StatusCode::BAD_REQUEST, page(lang, &prepay_id, &body)).into_response();
            }
        },
    };
    let Some(v) = crate::control::view_at(&sim, loc) else {
        return not_found(lang, &prepay_id);
    };
    let added = match fault {
        Some((kind, label)) if v.trade_state == "NOTPAY" => {
            let rule = FaultRequest {
                kind,
                api: None,
                out_trade_no: Some(v.out_trade_no.clone()),
                count: Some(1),
                for_ms: Some(FAULT_WINDOW_MS),
                delay_ms: None,
                copies: (kind == FaultKind::NotifyDuplicate).then_some(COPIES),
                err_code: None,
            };
            match sim.inner.faults.add(rule) {
                Ok(f) => Some((f.id, label)),
                Err(e) => {
                    let body = format!("<h1>{}</h1><p>{}</p>", w.cannot_pay, escape(&e));
                    return (StatusCode::BAD_REQUEST, page(lang, &prepay_id, &body)).into_response();
                }
            }
        }
        _ => None,
    };
    let (status, message) = match crate::control::pay_and_notify(&sim, loc, success, Some(&prepay_id), None) {
        Ok(()) if success => {
            let fault = added.map_or(String::new(), |(_, label)| {
                format!("<p class=\"note\">{} {label}</p>", w.fault_added)
            });
            (
                StatusCode::OK,
                format!("<h1>{}</h1><p>{}</p>{fault}", w.paid, w.paid_note),
            )
        }
        Ok(()) => (StatusCode::OK, format!("<h1>{}</h1><p>{}</p>", w.failed, w.failed_note)),
        Err(e) => {
            // Nothing was paid, so nothing will be notified: the fault must not wait for
            // another payment of the same order.
            if let Some((id, _)) = added {
                sim.inner.faults.clear(Some(id));
            }
            (
                StatusCode::CONFLICT,
                format!("<h1>{}</h1><p>{}</p>", w.cannot_pay, escape(&e.to_string())),
            )
        }
    };
    (status, page(lang, &prepay_id, &message)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asking(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT_LANGUAGE, value.parse().unwrap());
        h
    }

    #[test]
    fn the_page_speaks_chinese_when_the_browser_asks_for_it_first_or_when_chosen() {
        assert_eq!(lang_of(None, &asking("zh-CN,zh;q=0.9,en;q=0.8")), Lang::Zh);
        assert_eq!(lang_of(None, &asking("en-US,zh-CN;q=0.8")), Lang::En);
        assert_eq!(lang_of(None, &HeaderMap::new()), Lang::En);
        assert_eq!(lang_of(Some("zh-CN"), &asking("en")), Lang::Zh);
        assert_eq!(lang_of(Some("en"), &asking("zh-CN")), Lang::En);
    }

    #[test]
    fn an_apiv2_order_is_offered_only_the_faults_of_apiv2_notifications() {
        let v2: Vec<_> = EN.faults_for(false).map(|(k, _)| k).collect();
        assert_eq!(
            v2,
            [
                FaultKind::NotifyDuplicate,
                FaultKind::NotifyBadSignature,
                FaultKind::NotifyWrongAmount
            ]
        );
        assert_eq!(ZH.faults_for(true).count(), OFFERED.len());
        for kind in OFFERED {
            assert!(kind.is_notification(), "{kind:?}");
        }
        let copies = COPIES.to_string();
        assert!(EN.faults[0].contains(&copies) && ZH.faults[0].contains(&copies));
    }
}
