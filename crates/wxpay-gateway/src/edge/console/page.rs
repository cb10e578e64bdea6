//! The console's pages: the frame every page shares, its words in Chinese and English, and
//! how money and times are shown (yuan from fen, Beijing time).

use axum::http::HeaderMap;
use wxpay_protocol::{BeijingTime, Fen};

use crate::edge::html::esc;
use crate::time::Millis;

pub(crate) use wxpay_protocol::lang::Lang;

/// The cookie that remembers the language chosen.
pub(crate) const LANG_COOKIE: &str = "wxpay_lang";

/// The language of a request: `?lang=` when it chooses one, else the one remembered, else the
/// one the browser asks for.
pub(crate) fn lang_of(chosen: Option<&str>, headers: &HeaderMap) -> Lang {
    if let Some(lang) = chosen.and_then(Lang::parse) {
        return lang;
    }
    if let Some(lang) = cookie(headers, LANG_COOKIE).and_then(Lang::parse) {
        return lang;
    }
    let accept = headers
        .get(axum::http::header::ACCEPT_LANGUAGE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    Lang::from_accept_language(accept)
}

/// The console's words in a language.
pub(crate) trait Speak {
    /// The console's words in this language.
    fn words(self) -> &'static Words;
}

impl Speak for Lang {
    fn words(self) -> &'static Words {
        match self {
            Lang::Zh => &ZH,
            Lang::En => &EN,
        }
    }
}

/// A cookie of the request, by name.
pub(crate) fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Every word the console shows, once per language, so that a page cannot show a word that
/// one language lacks.
pub(crate) struct Words {
    pub(crate) console: &'static str,
    pub(crate) sign_in: &'static str,
    pub(crate) sign_out: &'static str,
    pub(crate) password: &'static str,
    pub(crate) wrong_password: &'static str,
    pub(crate) locked_out: &'static str,
    pub(crate) form_expired: &'static str,
    pub(crate) busy: &'static str,
    pub(crate) overview: &'static str,
    pub(crate) orders: &'static str,
    pub(crate) refunds: &'static str,
    pub(crate) outbox_backlog: &'static str,
    pub(crate) oldest_undelivered: &'static str,
    pub(crate) search: &'static str,
    pub(crate) search_hint: &'static str,
    pub(crate) any_status: &'static str,
    pub(crate) any_merchant: &'static str,
    pub(crate) from: &'static str,
    pub(crate) to: &'static str,
    pub(crate) filter: &'static str,
    pub(crate) next_page: &'static str,
    pub(crate) no_orders: &'static str,
    pub(crate) created: &'static str,
    pub(crate) merchant: &'static str,
    pub(crate) amount: &'static str,
    pub(crate) refunded: &'static str,
    pub(crate) status: &'static str,
    pub(crate) description: &'static str,
    pub(crate) paid_at: &'static str,
    pub(crate) expires_at: &'static str,
    pub(crate) closed_at: &'static str,
    pub(crate) upstream_error: &'static str,
    pub(crate) timeline: &'static str,
    pub(crate) when: &'static str,
    pub(crate) what: &'static str,
    pub(crate) details: &'static str,
    pub(crate) no_refunds: &'static str,
    pub(crate) not_found: &'static str,
    pub(crate) bad_date: &'static str,
    pub(crate) api_reference: &'static str,
    pub(crate) refund: &'static str,
    pub(crate) reason: &'static str,
    pub(crate) review: &'static str,
    pub(crate) confirm_refund: &'static str,
    pub(crate) confirm: &'static str,
    pub(crate) cancel: &'static str,
    pub(crate) bad_amount: &'static str,
    pub(crate) more_than_left: &'static str,
    pub(crate) left: &'static str,
    pub(crate) outbox: &'static str,
    pub(crate) outbox_explained: &'static str,
    pub(crate) outbox_empty: &'static str,
    pub(crate) outbox_gone: &'static str,
    pub(crate) no_webhook: &'static str,
    pub(crate) attempts: &'static str,
    pub(crate) next_attempt: &'static str,
    pub(crate) last_error: &'static str,
    pub(crate) retry_now: &'static str,
    pub(crate) notification: &'static str,
    pub(crate) simulator_checkout: &'static str,
    pub(crate) today: &'static str,
    pub(crate) reconciliations: &'static str,
    pub(crate) reconciliations_explained: &'static str,
    pub(crate) reconciliations_empty: &'static str,
    pub(crate) bill_date: &'static str,
    pub(crate) differences: &'static str,
    pub(crate) repaired: &'static str,
    pub(crate) balanced: &'static str,
    pub(crate) unbalanced: &'static str,
    pub(crate) running: &'static str,
    pub(crate) last_30_days: &'static str,
    pub(crate) paid_orders: &'static str,
    pub(crate) conversion: &'static str,
    pub(crate) paid_amount: &'static str,
    pub(crate) paid_per_day: &'static str,
    pub(crate) rejections: &'static str,
    pub(crate) rejections_explained: &'static str,
    pub(crate) rejections_empty: &'static str,
    pub(crate) peer: &'static str,
    pub(crate) why: &'static str,
    pub(crate) body: &'static str,
    pub(crate) webhook: &'static str,
    pub(crate) delivered: &'static str,
    pub(crate) not_delivered: &'static str,
    pub(crate) status_names: [(&'static str, &'static str); 5],
    /// An order's events by kind, as its timeline names them.
    pub(crate) event_names: [(&'static str, &'static str); 14],
    pub(crate) checked: &'static str,
    pub(crate) times: &'static str,
    pub(crate) last_answer: &'static str,
    /// What became of a notification, by verdict (none: the verdict's own name).
    pub(crate) verdict_names: &'static [(&'static str, &'static str)],
    /// Notifications by kind (none: the kind's own name).
    pub(crate) notice_kinds: &'static [(&'static str, &'static str)],
    pub(crate) refund_status_names: [(&'static str, &'static str); 3],
}

static ZH: Words = Words {
    console: "wxpay 控制台",
    sign_in: "登录",
    sign_out: "退出",
    password: "密码",
    wrong_password: "密码不正确。",
    locked_out: "登录失败次数过多，请稍后再试。",
    form_expired: "页面已过期，请重新提交。",
    busy: "登录请求过多，请稍后再试。",
    overview: "概览",
    orders: "订单",
    refunds: "退款",
    outbox_backlog: "待投递事件",
    oldest_undelivered: "最早一条已等待",
    search: "搜索",
    search_hint: "商户订单号、微信支付订单号或 openid",
    any_status: "全部状态",
    any_merchant: "全部商户",
    from: "从",
    to: "到",
    filter: "筛选",
    next_page: "下一页",
    no_orders: "没有符合条件的订单。",
    created: "创建时间",
    merchant: "商户",
    amount: "金额",
    refunded: "已退款",
    status: "状态",
    description: "商品描述",
    paid_at: "支付时间",
    expires_at: "过期时间",
    closed_at: "关闭时间",
    upstream_error: "微信支付的拒绝原因",
    timeline: "时间线",
    when: "时间",
    what: "事件",
    details: "详情",
    no_refunds: "没有退款。",
    not_found: "没有这个订单。",
    bad_date: "日期应为 YYYY-MM-DD。",
    api_reference: "API 文档",
    refund: "退款",
    reason: "退款原因",
    review: "下一步",
    confirm_refund: "确认退还这笔钱给付款人？退款提交给微信支付后无法撤回。",
    confirm: "确认退款",
    cancel: "取消",
    bad_amount: "金额以元为单位，例如 14.00，且大于 0。",
    more_than_left: "超过了可退金额：",
    left: "可退",
    outbox: "待投递事件",
    outbox_explained: "这些事件还没有被你的 webhook 接收（返回 2xx）。网关会按退避策略一直重试，每次重试使用同一个事件 id；修好接收端后，可以点“立即重试”。",
    outbox_empty: "所有事件都已投递。",
    outbox_gone: "这个事件已经投递、正在投递、一分钟内本来就会重试，或者不存在。",
    no_webhook: "没有配置 [webhook]：事件会一直留在这里，不会被投递。",
    attempts: "尝试次数",
    next_attempt: "下次尝试",
    last_error: "上次失败原因",
    retry_now: "立即重试",
    notification: "通知",
    simulator_checkout: "在模拟器的收银台支付、让支付失败，或注入通知故障",
    today: "今天（北京时间）创建的订单，以及今天被拒绝的通知",
    reconciliations: "对账",
    reconciliations_explained: "每一次把微信支付对账单与数据库逐笔核对的记录：手动执行的 wxpay reconcile 和每天自动执行的对账。",
    reconciliations_empty: "还没有对过账。",
    bill_date: "账单日期",
    differences: "未解决的差异",
    repaired: "已修复",
    balanced: "账目平衡",
    unbalanced: "账目不平",
    running: "进行中",
    last_30_days: "最近 30 天创建的订单，以及被拒绝的通知",
    paid_orders: "已支付",
    conversion: "支付转化率",
    paid_amount: "其中已支付的金额",
    paid_per_day: "每天的支付金额",
    rejections: "被拒绝的通知",
    rejections_explained: "这些通知没有通过验证（签名错误、无法解析、商户或证书不对……），没有改变任何订单。一连串来自同一地址的拒绝可能是攻击；来自微信支付的拒绝通常说明密钥或证书配置有误。",
    rejections_empty: "没有被拒绝的通知。",
    peer: "来源地址",
    why: "原因",
    body: "内容（前 1 KiB）",
    status_names: [
        ("pending", "待支付"),
        ("paid", "已支付"),
        ("closed", "已关闭"),
        ("failed", "失败"),
        ("refunded", "已全额退款"),
    ],
    refund_status_names: [("pending", "处理中"), ("succeeded", "退款成功"), ("failed", "退款失败")],
    webhook: "Webhook 推送",
    checked: "向微信支付查询（未改变订单）",
    times: "次",
    last_answer: "最近一次",
    delivered: "已送达",
    not_delivered: "尚未送达",
    event_names: [
        ("created", "订单已创建"),
        ("prepay", "微信支付下单成功（prepay_id）"),
        ("upstream_rejected", "微信支付拒绝下单"),
        ("upstream_unknown", "下单无应答或被要求稍后再试"),
        ("paid", "支付成功"),
        ("closed", "订单已关闭"),
        ("failed", "订单失败"),
        ("refund_requested", "发起退款"),
        ("refund_accepted", "微信支付受理退款"),
        ("refund_upstream_unknown", "退款申请无应答（结果未知）"),
        ("refund_succeeded", "退款成功"),
        ("refund_failed", "退款失败"),
        ("refund_imported", "从对账单导入退款"),
        ("reconciled", "对账修复"),
    ],
    verdict_names: &[
        ("applied", "已应用"),
        ("duplicate", "重复"),
        ("unknown_order", "未知订单"),
        ("amount_mismatch", "金额不符"),
        ("transaction_conflict", "交易号冲突"),
        ("currency_mismatch", "币种不符"),
        ("payment_failed", "支付失败"),
        ("unknown_refund", "未知退款"),
        ("wrong_order", "订单不符"),
        ("status_conflict", "状态冲突"),
        ("not_settled", "尚未完成"),
        ("to_confirm", "待确认"),
        ("rejected", "已拒绝"),
    ],
    notice_kinds: &[("payment", "支付"), ("refund", "退款")],
};

static EN: Words = Words {
    console: "wxpay console",
    sign_in: "Sign in",
    sign_out: "Sign out",
    password: "Password",
    wrong_password: "The password is not right.",
    locked_out: "Too many failed sign-ins; try again later.",
    form_expired: "The page had expired; please submit it again.",
    busy: "Too many sign-ins at once; try again in a moment.",
    overview: "Overview",
    orders: "Orders",
    refunds: "Refunds",
    outbox_backlog: "Events waiting for delivery",
    oldest_undelivered: "the oldest has waited",
    search: "Search",
    search_hint: "out_trade_no, transaction_id or openid",
    any_status: "Any status",
    any_merchant: "Any merchant",
    from: "From",
    to: "To",
    filter: "Filter",
    next_page: "Next page",
    no_orders: "No order matches.",
    created: "Created",
    merchant: "Merchant",
    amount: "Amount",
    refunded: "Refunded",
    status: "Status",
    description: "Description",
    paid_at: "Paid at",
    expires_at: "Expires at",
    closed_at: "Closed at",
    upstream_error: "Why WeChat Pay refused",
    timeline: "Timeline",
    when: "When",
    what: "What",
    details: "Details",
    no_refunds: "No refunds.",
    not_found: "No such order.",
    bad_date: "Dates are YYYY-MM-DD.",
    api_reference: "API reference",
    refund: "Refund",
    reason: "Reason",
    review: "Review",
    confirm_refund: "Give this money back to the payer? Once WeChat Pay has the refund it cannot be undone.",
    confirm: "Confirm the refund",
    cancel: "Cancel",
    bad_amount: "The amount is in yuan, such as 14.00, and more than 0.",
    more_than_left: "More than is left to refund:",
    left: "left",
    outbox: "Outbox",
    outbox_explained: "These events have not been taken by your webhook (a 2xx answer) yet. The gateway keeps trying with backoff, with the same event id each time; once the receiver is fixed, Retry now skips the wait.",
    outbox_empty: "Every event has been delivered.",
    outbox_gone: "This event has been delivered, is being delivered, is due within the minute anyway, or does not exist.",
    no_webhook: "No [webhook] is configured: events stay here and nothing delivers them.",
    attempts: "Attempts",
    next_attempt: "Next attempt",
    last_error: "Last error",
    retry_now: "Retry now",
    notification: "notification",
    simulator_checkout: "Pay it, fail it, or pay it with a faulty notification, on the simulator's checkout",
    today: "Orders created today (Beijing time), and notifications rejected today",
    reconciliations: "Reconciliations",
    reconciliations_explained: "Each time a day's WeChat Pay bill was compared with the database, order by order and refund by refund: runs of wxpay reconcile and the daily one.",
    reconciliations_empty: "No day has been reconciled yet.",
    bill_date: "Bill date",
    differences: "Differences left",
    repaired: "Repaired",
    balanced: "balanced",
    unbalanced: "not balanced",
    running: "running",
    last_30_days: "Orders created in the last 30 days, and notifications rejected",
    paid_orders: "Paid",
    conversion: "Conversion",
    paid_amount: "Amount paid of them",
    paid_per_day: "Amount paid each day",
    rejections: "Rejected notifications",
    rejections_explained: "These notifications did not verify (a wrong signature, an unreadable body, an unknown merchant or certificate, …) and changed nothing. A run of them from one address may be an attack; from WeChat Pay, they usually mean a misconfigured key or certificate.",
    rejections_empty: "No notification has been rejected.",
    peer: "From",
    why: "Why",
    body: "Body (first KiB)",
    status_names: [
        ("pending", "pending"),
        ("paid", "paid"),
        ("closed", "closed"),
        ("failed", "failed"),
        ("refunded", "refunded"),
    ],
    refund_status_names: [("pending", "pending"), ("succeeded", "succeeded"), ("failed", "failed")],
    webhook: "Webhook",
    checked: "Checked with WeChat Pay (nothing changed)",
    times: "times",
    last_answer: "the last",
    delivered: "delivered",
    not_delivered: "not delivered yet",
    event_names: [
        ("created", "Order created"),
        ("prepay", "Placed with WeChat Pay (prepay_id)"),
        ("upstream_rejected", "WeChat Pay refused the order"),
        (
            "upstream_unknown",
            "Placing it got no answer, or was asked to try later",
        ),
        ("paid", "Paid"),
        ("closed", "Closed"),
        ("failed", "Order failed"),
        ("refund_requested", "Refund asked for"),
        ("refund_accepted", "WeChat Pay accepted the refund"),
        (
            "refund_upstream_unknown",
            "Asking for the refund got no answer (outcome unknown)",
        ),
        ("refund_succeeded", "Refund succeeded"),
        ("refund_failed", "Refund failed"),
        ("refund_imported", "Refund imported from the bill"),
        ("reconciled", "Repaired by reconciliation"),
    ],
    // Operators and logs share these names, so English keeps them as they are.
    verdict_names: &[],
    notice_kinds: &[],
};

impl Words {
    /// The name of a status in this language.
    pub(crate) fn status<'k>(&self, status: &'k str) -> &'k str {
        named(&self.status_names, status)
    }

    /// The name of a refund's status in this language.
    pub(crate) fn refund_status<'k>(&self, status: &'k str) -> &'k str {
        named(&self.refund_status_names, status)
    }

    /// The name of an order event's kind in this language, or the kind itself for one this
    /// console does not know (written by a newer gateway on the same database).
    pub(crate) fn event<'k>(&self, kind: &'k str) -> &'k str {
        named(&self.event_names, kind)
    }

    /// The name of a notification's verdict in this language (or the verdict itself).
    pub(crate) fn verdict<'k>(&self, verdict: &'k str) -> &'k str {
        named(self.verdict_names, verdict)
    }

    /// The name of a notification's kind in this language (or the kind itself).
    pub(crate) fn notice_kind<'k>(&self, kind: &'k str) -> &'k str {
        named(self.notice_kinds, kind)
    }
}

/// `key`'s name among `names`, or `key` itself for one written by a newer gateway on the same
/// database.
fn named<'k>(names: &[(&'static str, &'static str)], key: &'k str) -> &'k str {
    names.iter().find(|(k, _)| *k == key).map_or(key, |(_, name)| name)
}

/// An amount as people read it: `¥28.00`.
pub(crate) fn yuan(fen: Fen) -> String {
    format!("¥{}", fen.to_yuan())
}

/// A moment in Beijing time, `2026-12-04 20:15:03`.
pub(crate) fn beijing(t: Millis) -> String {
    BeijingTime::from_unix(t.unix_secs()).to_dashed()
}

/// A whole page: the frame (title, the language switch, the navigation and sign-out for a
/// signed-in operator) around `body`, which is HTML already.
pub(crate) fn frame(lang: Lang, title: &str, csrf: Option<&str>, here: &str, body: &str) -> String {
    let w = lang.words();
    let other = match lang {
        Lang::Zh => ("en", "English"),
        Lang::En => ("zh", "中文"),
    };
    // The switch keeps the page as it is (its filters, its merchant), in the other language.
    let switch = format!(
        "<a href=\"{here}{sep}lang={code}\" class=\"lang\">{name}</a>",
        here = esc(here),
        sep = if here.contains('?') { "&amp;" } else { "?" },
        code = other.0,
        name = other.1,
    );
    let nav = match csrf {
        Some(token) => format!(
            "<nav><a href=\"/console\">{overview}</a> <a href=\"/console/orders\">{orders}</a> \
             <a href=\"/console/outbox\">{outbox}</a> <a href=\"/console/rejections\">{rejections}</a> \
             <a href=\"/console/reconciliations\">{reconciliations}</a> \
             <a href=\"/docs\">{api}</a> {switch}\
             <form method=\"post\" action=\"/console/logout\"><input type=\"hidden\" name=\"csrf\" value=\"{token}\">\
             <button>{sign_out}</button></form></nav>",
            overview = w.overview,
            orders = w.orders,
            api = w.api_reference,
            outbox = w.outbox,
            rejections = w.rejections,
            reconciliations = w.reconciliations,
            token = esc(token),
            sign_out = w.sign_out,
        ),
        None => format!("<nav>{switch}</nav>"),
    };
    format!(
        "<!doctype html><html lang=\"{lang}\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title} · {console}</title><style>{STYLE}</style></head>\
         <body><header><strong>{console}</strong>{nav}</header><main><h1>{title}</h1>{body}</main></body></html>",
        lang = if lang == Lang::Zh { "zh-CN" } else { "en" },
        title = esc(title),
        console = w.console,
    )
}

const STYLE: &str = "body{font:15px/1.5 system-ui,-apple-system,'PingFang SC','Microsoft YaHei',sans-serif;\
margin:0;color:#1f2328;background:#f6f8fa}header{display:flex;gap:16px;align-items:center;\
padding:10px 24px;background:#07c160;color:#fff}header a{color:#fff;margin-right:12px}\
header nav{display:flex;align-items:center;flex:1;justify-content:flex-end}header form{margin:0}\
main{max-width:1100px;margin:16px auto;padding:16px 24px;background:#fff}\
table{border-collapse:collapse;width:100%;margin:8px 0}th,td{border-bottom:1px solid #d0d7de;\
padding:6px 8px;text-align:left;vertical-align:top}th{background:#f6f8fa}td.n{text-align:right}\
code{font:13px ui-monospace,Menlo,Consolas,monospace}.error{color:#cf222e}\
.st{padding:1px 8px;border-radius:10px;font-size:13px;background:#eaeef2}.st.paid{background:#dafbe1}\
.st.failed,.st.closed{background:#ffebe9}.st.refunded{background:#fff8c5}\
form.filters{display:flex;flex-wrap:wrap;gap:8px;align-items:end}label{display:flex;flex-direction:column;font-size:13px}\
input,select,button{font:inherit;padding:4px 8px}dl{display:grid;grid-template-columns:max-content 1fr;gap:4px 16px}\
dt,.muted{color:#57606a}.cards{display:flex;flex-wrap:wrap;gap:12px}.card{border:1px solid #d0d7de;border-radius:6px;\
padding:8px 16px;min-width:120px}.card b{display:block;font-size:22px}";

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn the_language_is_the_one_chosen_then_remembered_then_asked_for() {
        let zh_browser = headers(&[("accept-language", "zh-CN,zh;q=0.9,en;q=0.8")]);
        assert_eq!(lang_of(None, &zh_browser), Lang::Zh);
        assert_eq!(lang_of(Some("en"), &zh_browser), Lang::En);
        let remembered = headers(&[("accept-language", "zh-CN"), ("cookie", "a=b; wxpay_lang=en")]);
        assert_eq!(lang_of(None, &remembered), Lang::En);
        assert_eq!(
            lang_of(None, &headers(&[("accept-language", "en-US,en;q=0.9,zh;q=0.5")])),
            Lang::En
        );
        assert_eq!(lang_of(None, &HeaderMap::new()), Lang::En);
        assert_eq!(lang_of(Some("fr"), &zh_browser), Lang::Zh);
    }

    #[test]
    fn money_is_shown_in_yuan_and_times_in_beijing() {
        assert_eq!(yuan(Fen::new(2800).unwrap()), "¥28.00");
        assert_eq!(yuan(Fen::new(1).unwrap()), "¥0.01");
        // 16:00 UTC on the 4th is midnight starting the 5th in Beijing.
        assert_eq!(beijing(Millis::from_unix_ms(1_796_400_000_000)), "2026-12-05 00:00:00");
    }

    #[test]
    fn both_languages_name_every_status() {
        use crate::store::RefundStatus;
        let named = |names: &[(&str, &str)], key: &str| names.iter().any(|(k, _)| *k == key);
        for w in [&ZH, &EN] {
            for s in crate::store::OrderStatus::ALL {
                assert!(named(&w.status_names, s.as_str()), "{s:?}");
            }
            for s in [RefundStatus::Pending, RefundStatus::Succeeded, RefundStatus::Failed] {
                assert!(named(&w.refund_status_names, s.as_str()), "{s:?}");
            }
        }
        // Chinese names every verdict and kind of notification; English shows their names.
        for v in crate::store::Verdict::ALL {
            assert_ne!(ZH.verdict(v.as_str()), v.as_str(), "{v:?}");
            assert_eq!(EN.verdict(v.as_str()), v.as_str(), "{v:?}");
        }
        for k in [crate::store::NoticeKind::Payment, crate::store::NoticeKind::Refund] {
            assert_ne!(ZH.notice_kind(k.as_str()), k.as_str(), "{k:?}");
        }
        for (kind, _) in EN.event_names {
            assert_ne!(ZH.event(kind), kind, "{kind}");
        }
    }
}
