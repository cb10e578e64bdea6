//! The operator console over HTTP, as a browser without scripts uses it: sign-in, the
//! session cookie, CSRF, the lockout, the orders and an order's timeline, both languages.

use std::collections::HashMap;

use reqwest::header::{ACCEPT_LANGUAGE, COOKIE, LOCATION, SET_COOKIE};
use reqwest::{Response, StatusCode};

use crate::support::engines;
use crate::support::{Options, TestApp, TestDb, paid_notification, spawn_app, with_jobs_and_webhook};

const PASSWORD: &str = "correct horse battery staple";

/// A browser: its cookies, no redirects followed, so that each answer is seen.
struct Browser {
    http: reqwest::Client,
    base: String,
    cookies: HashMap<String, String>,
    /// The `Set-Cookie` lines of the last answer.
    last_set: Vec<String>,
}

impl Browser {
    fn new(t: &TestApp) -> Browser {
        Browser {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            base: t.url.clone(),
            cookies: HashMap::new(),
            last_set: Vec::new(),
        }
    }

    fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn keep(&mut self, r: &Response) {
        self.last_set = r
            .headers()
            .get_all(SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect();
        for line in &self.last_set {
            let (pair, attributes) = line.split_once(';').unwrap_or((line, ""));
            let (name, value) = pair.split_once('=').unwrap();
            if attributes.contains("Max-Age=0") {
                self.cookies.remove(name);
            } else {
                if name == "wxpay_console" {
                    // A session is a bearer secret: the secret scan (item 37) searches every
                    // log line and row for it, and for its MAC alone.
                    crate::secret_scan::secret(crate::secret_scan::CONSOLE_SESSION, value);
                    if let Some(mac) = value.rsplit('.').next() {
                        crate::secret_scan::secret("a console session cookie's MAC", mac);
                    }
                }
                self.cookies.insert(name.to_owned(), value.to_owned());
            }
        }
    }

    async fn get(&mut self, path: &str) -> (StatusCode, String, Option<String>) {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .header(COOKIE, self.cookie_header())
            .send()
            .await
            .unwrap();
        self.answer(r).await
    }

    async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> (StatusCode, String, Option<String>) {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .header(COOKIE, self.cookie_header())
            .header(reqwest::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(encode(form))
            .send()
            .await
            .unwrap();
        self.answer(r).await
    }

    async fn answer(&mut self, r: Response) -> (StatusCode, String, Option<String>) {
        self.keep(&r);
        let status = r.status();
        let location = r.headers().get(LOCATION).map(|v| v.to_str().unwrap().to_owned());
        (status, r.text().await.unwrap(), location)
    }

    /// The sign-in page's form token.
    async fn login_token(&mut self) -> String {
        let (status, page, _) = self.get("/console/login").await;
        assert_eq!(status, 200, "{page}");
        hidden(&page, "csrf")
    }

    async fn sign_in(&mut self, password: &str) -> (StatusCode, String, Option<String>) {
        let token = self.login_token().await;
        self.post("/console/login", &[("password", password), ("csrf", &token)])
            .await
    }
}

/// A form's fields, URL-encoded.
fn encode(form: &[(&str, &str)]) -> String {
    let enc = |s: &str| -> String {
        s.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                    char::from(b).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect()
    };
    form.iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// The value of a hidden field of a page.
fn hidden(page: &str, name: &str) -> String {
    let at = page
        .find(&format!("name=\"{name}\" value=\""))
        .unwrap_or_else(|| panic!("no {name} field in {page}"));
    let rest = &page[at + name.len() + 15..];
    rest[..rest.find('"').unwrap()].to_owned()
}

fn with_console() -> Options {
    Options {
        console_password: Some(PASSWORD),
        ..Options::default()
    }
}

#[tokio::test]
async fn without_a_password_hash_the_console_is_off() {
    let t = spawn_app(TestDb::sqlite(), Options::default()).await;
    let mut b = Browser::new(&t);
    for path in ["/console", "/console/login", "/console/orders"] {
        let (status, page, _) = b.get(path).await;
        assert_eq!(status, 404, "{path}");
        assert!(page.contains("[console] password_hash"), "{page}");
    }
    t.stop().await;
}

#[tokio::test]
async fn signing_in_takes_the_password_on_a_form_this_browser_was_given() {
    let t = spawn_app(TestDb::sqlite(), with_console()).await;
    let mut b = Browser::new(&t);
    let (status, _, location) = b.get("/console").await;
    assert_eq!(
        (status, location.as_deref()),
        (StatusCode::SEE_OTHER, Some("/console/login"))
    );

    let (status, page, _) = b.sign_in("wrong password").await;
    assert_eq!(status, 401);
    assert!(page.contains("The password is not right."), "{page}");
    assert!(!b.cookies.contains_key("wxpay_console"));

    // The right password on a form made for another browser (no login cookie here).
    let token = b.login_token().await;
    let mut other = Browser::new(&t);
    let (status, _, _) = other
        .post("/console/login", &[("password", PASSWORD), ("csrf", &token)])
        .await;
    assert_eq!(status, 403);
    assert!(!other.cookies.contains_key("wxpay_console"));

    let (status, _, location) = b.sign_in(PASSWORD).await;
    assert_eq!((status, location.as_deref()), (StatusCode::SEE_OTHER, Some("/console")));
    let session = b
        .last_set
        .iter()
        .find(|c| c.starts_with("wxpay_console="))
        .unwrap()
        .clone();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/console", "Max-Age=3600"] {
        assert!(session.contains(attribute), "{session}");
    }
    assert!(!session.contains("Secure"), "the test gateway is served over http");
    let (status, page, _) = b.get("/console").await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("Overview") && page.contains("Sign out"), "{page}");
    // A tampered cookie is no session.
    let forged = b.cookies["wxpay_console"].replacen('1', "2", 1);
    b.cookies.insert("wxpay_console".into(), forged);
    let (status, _, _) = b.get("/console").await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    t.stop().await;
}

#[tokio::test]
async fn signing_out_needs_the_csrf_token_and_ends_the_session() {
    let t = spawn_app(TestDb::sqlite(), with_console()).await;
    let mut b = Browser::new(&t);
    b.sign_in(PASSWORD).await;
    let (_, page, _) = b.get("/console").await;
    let csrf = hidden(&page, "csrf");
    let session = b.cookies["wxpay_console"].clone();

    let (status, _, _) = b.post("/console/logout", &[]).await;
    assert_eq!(status, 403, "no token");
    let (status, _, _) = b.post("/console/logout", &[("csrf", "00")]).await;
    assert_eq!(status, 403, "a wrong token");
    assert_eq!(b.get("/console").await.0, 200, "still signed in");

    let (status, _, location) = b.post("/console/logout", &[("csrf", &csrf)]).await;
    assert_eq!(
        (status, location.as_deref()),
        (StatusCode::SEE_OTHER, Some("/console/login"))
    );
    assert!(!b.cookies.contains_key("wxpay_console"), "the cookie is cleared");
    // The old cookie, kept by a thief, no longer signs in.
    b.cookies.insert("wxpay_console".into(), session);
    assert_eq!(b.get("/console").await.0, StatusCode::SEE_OTHER);
    t.stop().await;
}

#[tokio::test]
async fn five_wrong_passwords_lock_the_address_out_before_any_check() {
    let t = spawn_app(TestDb::sqlite(), with_console()).await;
    let mut b = Browser::new(&t);
    for _ in 0..5 {
        assert_eq!(b.sign_in("guess").await.0, 401);
    }
    let (status, page, _) = b.sign_in(PASSWORD).await;
    assert_eq!(status, 429, "even the right password, for the rest of the window");
    assert!(page.contains("Too many failed sign-ins"), "{page}");
    t.stop().await;
}

#[tokio::test]
async fn sign_ins_sent_at_once_are_turned_away_beyond_two_checks_without_locking_anyone_out() {
    let t = spawn_app(TestDb::sqlite(), with_console()).await;
    let mut b = Browser::new(&t);
    let token = b.login_token().await;
    let cookie = b.cookie_header();
    let attempts = (0..12).map(|i| {
        let (http, url, cookie, token) = (
            b.http.clone(),
            format!("{}/console/login", t.url),
            cookie.clone(),
            token.clone(),
        );
        async move {
            http.post(url)
                .header(COOKIE, cookie)
                .header(reqwest::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(encode(&[("password", &format!("guess {i}")), ("csrf", &token)]))
                .send()
                .await
                .unwrap()
                .status()
        }
    });
    let statuses = futures_util::future::join_all(attempts).await;
    let count = |code: u16| statuses.iter().filter(|s| s.as_u16() == code).count();
    let (checked, busy, locked) = (count(401), count(503), count(429));
    assert_eq!(checked + busy + locked, 12, "{statuses:?}");
    assert!(busy > 0, "twelve at once do not all get a check: {statuses:?}");
    // Only the attempts that were checked count against the address: the ones turned away
    // busy must not lock the operator out.
    let expected = if checked + locked >= 5 { 429 } else { 303 };
    assert_eq!(b.sign_in(PASSWORD).await.0, expected, "{statuses:?}");
    t.stop().await;
}

async fn an_order_is_found_by_its_numbers_or_openid_and_shows_its_timeline(db: TestDb) {
    let t = spawn_app(db, with_console()).await;
    let o = t.create(crate::support::order_body(2800)).await;
    let no = o["out_trade_no"].as_str().unwrap().to_owned();
    t.notify(paid_notification(&no, 2800, "4200000000000000000000000042"))
        .await;
    t.wait_status(&no, "paid").await;
    let other = t.create(crate::support::order_body(100)).await;
    let other_no = other["out_trade_no"].as_str().unwrap().to_owned();

    let mut b = Browser::new(&t);
    b.sign_in(PASSWORD).await;
    let (status, page, _) = b.get("/console/orders").await;
    assert_eq!(status, 200);
    assert!(page.contains(&no) && page.contains(&other_no), "{page}");
    assert!(
        page.contains("¥28.00") && page.contains("¥1.00"),
        "amounts in yuan: {page}"
    );

    for q in [no.as_str(), "4200000000000000000000000042"] {
        let (_, page, _) = b.get(&format!("/console/orders?q={q}")).await;
        assert!(page.contains(&no) && !page.contains(&other_no), "{q}: {page}");
    }
    // Both orders are the same payer's.
    let (_, page, _) = b
        .get(&format!("/console/orders?q={}", crate::support::TEST_OPENID))
        .await;
    assert!(page.contains(&no) && page.contains(&other_no), "{page}");
    let (_, page, _) = b.get("/console/orders?q=oSomebodyElse&merchant=default").await;
    assert!(page.contains("No order matches."), "{page}");
    let (_, page, _) = b.get("/console/orders?status=pending").await;
    assert!(!page.contains(&no) && page.contains(&other_no), "{page}");
    let (_, page, _) = b.get("/console/orders?from=2000-01-01&to=2000-01-02").await;
    assert!(page.contains("No order matches."), "{page}");
    // Today in Beijing, which starts at 16:00 UTC the day before.
    let today = wxpay_protocol::BeijingTime::from_unix(t.app.now().unix_secs()).to_dashed()[..10].to_owned();
    let (_, page, _) = b.get(&format!("/console/orders?from={today}&to={today}")).await;
    assert!(page.contains(&no), "{today}: {page}");
    let (_, page, _) = b.get(&format!("/console/orders?to={today}&status=paid")).await;
    assert!(page.contains(&no) && !page.contains(&other_no), "{page}");
    let (_, page, _) = b.get("/console/orders?from=yesterday").await;
    assert!(page.contains("Dates are YYYY-MM-DD."), "{page}");

    let (status, page, _) = b.get(&format!("/console/orders/{no}?merchant=default")).await;
    assert_eq!(status, 200, "{page}");
    // The language switch keeps the merchant.
    assert!(
        page.contains(&format!("href=\"/console/orders/{no}?merchant=default&amp;lang=zh\"")),
        "{page}"
    );
    assert!(page.contains("4200000000000000000000000042"), "{page}");
    assert!(
        page.contains("Timeline") && page.contains("<td>Paid</td>"),
        "the paid event: {page}"
    );
    // The unpaid one links to the simulator's checkout (the demo's), the paid one no more.
    let prepay = other["prepay_id"].as_str().unwrap();
    let (_, page, _) = b.get(&format!("/console/orders/{other_no}?merchant=default")).await;
    assert!(
        page.contains(&format!("href=\"/simulator/checkout/{prepay}?lang=en\"")),
        "{page}"
    );
    let (_, page, _) = b.get(&format!("/console/orders/{no}?merchant=default")).await;
    assert!(!page.contains("/simulator/checkout/"), "{page}");
    let (status, _, _) = b.get("/console/orders/NOSUCHORDER1").await;
    assert_eq!(status, 404);
    t.stop().await;
}
engines!(an_order_is_found_by_its_numbers_or_openid_and_shows_its_timeline);

async fn a_paid_order_is_refunded_from_the_console_after_a_confirmation(db: TestDb) {
    let t = spawn_app(db, with_console()).await;
    t.paid_order("CREF000001", 2800).await;
    let mut b = Browser::new(&t);
    b.sign_in(PASSWORD).await;
    let (_, page, _) = b.get("/console/orders/CREF000001?merchant=default").await;
    assert!(
        page.contains("action=\"/console/orders/CREF000001/refund?merchant=default\""),
        "{page}"
    );
    let csrf = hidden(&page, "csrf");
    let path = "/console/orders/CREF000001/refund?merchant=default";
    let (status, _, _) = b.post(path, &[("step", "review"), ("amount", "14.00")]).await;
    assert_eq!(status, 400, "no token, no form");
    let (status, _, _) = b
        .post(path, &[("csrf", "00"), ("step", "review"), ("amount", "14.00")])
        .await;
    assert_eq!(status, 403, "a wrong token");
    let (status, _, _) = b
        .post(path, &[("csrf", &csrf), ("step", "review"), ("amount", "14")])
        .await;
    assert_eq!(status, 200, "whole yuan are fine");
    let (status, page, _) = b
        .post(path, &[("csrf", &csrf), ("step", "review"), ("amount", "1400 fen")])
        .await;
    assert_eq!(status, 422, "{page}");

    // The review shows what will happen and names the refund; nothing is refunded yet.
    let (status, review, _) = b
        .post(
            path,
            &[
                ("csrf", &csrf),
                ("step", "review"),
                ("amount", "14.00"),
                ("reason", "少了一杯"),
            ],
        )
        .await;
    assert_eq!(status, 200, "{review}");
    assert!(
        review.contains("¥14.00") && review.contains("¥28.00") && review.contains("少了一杯"),
        "{review}"
    );
    let number = hidden(&review, "out_refund_no");
    let token = hidden(&review, "review");
    assert!(t.order("CREF000001").await["refunds"].as_array().unwrap().is_empty());
    let confirm = [
        ("csrf", csrf.as_str()),
        ("step", "confirm"),
        ("amount", "14.00"),
        ("reason", "少了一杯"),
        ("out_refund_no", number.as_str()),
        ("review", token.as_str()),
    ];
    // A confirmation of something else than was reviewed, or of no review, is refused.
    let mut changed = confirm;
    changed[2].1 = "20.00";
    assert_eq!(b.post(path, &changed).await.0, 403, "another amount than reviewed");
    assert_eq!(b.post(path, &confirm[..5]).await.0, 403, "no review");
    assert!(t.order("CREF000001").await["refunds"].as_array().unwrap().is_empty());
    for _ in 0..2 {
        // Sent twice (a double click, a reload): one refund.
        let (status, _, location) = b.post(path, &confirm).await;
        assert_eq!(status, StatusCode::SEE_OTHER);
        assert_eq!(location.as_deref(), Some("/console/orders/CREF000001?merchant=default"));
    }
    let order = t.order("CREF000001").await;
    let refunds = order["refunds"].as_array().unwrap();
    assert_eq!(refunds.len(), 1, "{order}");
    assert_eq!(
        (refunds[0]["amount_fen"].as_u64(), refunds[0]["out_refund_no"].as_str()),
        (Some(1400), Some(number.as_str()))
    );
    assert_eq!(refunds[0]["reason"], "少了一杯");
    let (_, page, _) = b.get("/console/orders/CREF000001?merchant=default").await;
    assert!(page.contains(&number) && page.contains("≤ 14.00"), "{page}");

    // More than is left is refused at the review, before any confirmation.
    let (status, page, _) = b
        .post(path, &[("csrf", &csrf), ("step", "review"), ("amount", "20.00")])
        .await;
    assert_eq!(status, 409, "{page}");
    assert!(page.contains("More than is left to refund: ¥14.00"), "{page}");
    assert_eq!(t.order("CREF000001").await["refunds"].as_array().unwrap().len(), 1);
    t.stop().await;
}
engines!(a_paid_order_is_refunded_from_the_console_after_a_confirmation);

async fn an_undelivered_event_is_listed_and_retried_now_on_request(db: TestDb) {
    // No webhook here: the order.paid event stays in the outbox. It is made to look like a
    // delivery that failed and waits an hour.
    let t = spawn_app(db, with_console()).await;
    t.paid_order("COUT000001", 500).await;
    let store = t.app.store().clone();
    let event = store.undelivered(10).await.unwrap().remove(0);
    assert_eq!(
        (event.event_type.as_str(), event.out_trade_no.as_deref()),
        ("order.paid", Some("COUT000001"))
    );
    let in_an_hour = t.app.now() + std::time::Duration::from_secs(3600);
    store
        .outbox_retry(event.id.clone(), in_an_hour, "503 from the receiver".into())
        .await
        .unwrap();

    let mut b = Browser::new(&t);
    b.sign_in(PASSWORD).await;
    let (status, page, _) = b.get("/console/outbox").await;
    assert_eq!(status, 200);
    assert!(
        page.contains("order.paid") && page.contains("COUT000001") && page.contains("503 from the receiver"),
        "{page}"
    );
    let action = format!("/console/outbox/{}/retry", event.id);
    assert!(page.contains(&format!("action=\"{action}\"")), "{page}");
    let csrf = hidden(&page, "csrf");
    assert_eq!(b.post(&action, &[]).await.0, 403, "no token");
    let (status, _, location) = b.post(&action, &[("csrf", &csrf)]).await;
    assert_eq!(
        (status, location.as_deref()),
        (StatusCode::SEE_OTHER, Some("/console/outbox"))
    );
    let again = store.undelivered(10).await.unwrap().remove(0);
    assert!(again.next_attempt_at <= t.app.now(), "due now: {again:?}");
    assert_eq!(
        b.post("/console/outbox/nosuchevent/retry", &[("csrf", &csrf)]).await.0,
        404
    );
    // Due now, it is not released again (it may be in a deliverer's hands).
    assert_eq!(b.post(&action, &[("csrf", &csrf)]).await.0, 404, "due already");
    assert!(page.contains("No [webhook] is configured"), "{page}");
    // The order's timeline says how its delivery is going.
    let (_, page, _) = b.get("/console/orders/COUT000001?merchant=default").await;
    assert!(
        page.contains("Webhook <code>order.paid</code>")
            && page.contains("not delivered yet")
            && page.contains("503 from the receiver"),
        "{page}"
    );
    t.stop().await;
}
engines!(an_undelivered_event_is_listed_and_retried_now_on_request);

async fn an_orders_timeline_shows_its_queries_and_its_webhook_deliveries(db: TestDb) {
    let t = spawn_app(
        db,
        Options {
            console_password: Some(PASSWORD),
            ..with_jobs_and_webhook()
        },
    )
    .await;
    let o = t.create(crate::support::order_body(600)).await;
    let no = o["out_trade_no"].as_str().unwrap().to_owned();
    // Unpaid, the order is checked with WeChat Pay, which says NOTPAY: that changes nothing,
    // yet the operator sees the calls. The order counts them and keeps the last, so that its
    // history does not grow with every check.
    let store = t.app.store().clone();
    let number = wxpay_protocol::OutTradeNo::new(no.as_str()).unwrap();
    let id = store.order("default".into(), number).await.unwrap().unwrap().id;
    crate::support::eventually("two checks of the unpaid order are counted", async || {
        let checks = store.checks(id).await.unwrap();
        checks.checks >= 2 && checks.last.is_some_and(|c| c.said == "query: NOTPAY")
    })
    .await;
    let kinds: Vec<String> = t.order(&no).await["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(kinds, ["created", "prepay"], "checks add no event");
    t.sim_pay(serde_json::json!({"out_trade_no": no})).await;
    t.wait_status(&no, "paid").await;
    let hook = t.webhook.clone();
    crate::support::eventually("order.paid is delivered", async || {
        hook.delivered().iter().any(|e| e["type"] == "order.paid")
    })
    .await;
    t.outbox_drained().await;

    let mut b = Browser::new(&t);
    b.sign_in(PASSWORD).await;
    let path = format!("/console/orders/{no}?merchant=default");
    let (_, page, _) = b.get(&path).await;
    for needle in [
        "<td>Order created</td>",
        "<td>Placed with WeChat Pay (prepay_id)</td>",
        "<td>Checked with WeChat Pay (nothing changed)</td>",
        "<code>query: NOTPAY</code>",
        "<td>Paid</td>",
        "Webhook <code>order.paid</code>",
        "<span class=\"st paid\">delivered</span> Attempts: 1",
    ] {
        assert!(page.contains(needle), "{needle}: {page}");
    }
    let (_, page, _) = b.get(&format!("{path}&lang=zh")).await;
    for needle in [
        "<td>向微信支付查询（未改变订单）</td>",
        "<td>支付成功</td>",
        "已送达",
        "通知 (支付)",
        "<span class=\"st applied\">已应用</span>",
    ] {
        assert!(page.contains(needle), "{needle}: {page}");
    }
    t.stop().await;
}
engines!(an_orders_timeline_shows_its_queries_and_its_webhook_deliveries);

async fn notifications_show_on_the_timeline_and_rejected_ones_on_their_page(db: TestDb) {
    let t = spawn_app(db, with_console()).await;
    let o = t.create(crate::support::order_body(300)).await;
    let no = o["out_trade_no"].as_str().unwrap().to_owned();
    let paid = paid_notification(&no, 300, "4200000000000000000000000077");
    t.notify(paid.clone()).await;
    t.notify(paid.clone()).await;
    // The same body with another amount: its signature no longer matches.
    let forged = paid.replace("<total_fee>300</total_fee>", "<total_fee>1</total_fee>");
    assert_ne!(forged, paid);
    t.notify(forged).await;

    let mut b = Browser::new(&t);
    b.sign_in(PASSWORD).await;
    let (_, page, _) = b.get(&format!("/console/orders/{no}?merchant=default")).await;
    for verdict in ["applied", "duplicate", "rejected"] {
        assert!(
            page.contains(&format!("<span class=\"st {verdict}\">{verdict}</span>")),
            "{verdict}: {page}"
        );
    }
    assert!(page.contains("notification (payment)"), "{page}");
    let (status, page, _) = b.get("/console/rejections").await;
    assert_eq!(status, 200);
    assert!(
        page.contains(&no) && page.contains("SHA-256") && page.contains("&lt;total_fee&gt;1"),
        "{page}"
    );
    assert_eq!(
        page.matches("<tr>").count(),
        2,
        "the header and the one rejection: {page}"
    );
    // Today's figures: one order, paid, for ¥3.00, and one rejected notification.
    let (_, page, _) = b.get("/console").await;
    let today =
        &page[page.find("Orders created today").unwrap()..page.find("Orders created in the last 30 days").unwrap()];
    for card in [
        "Orders<b>1</b>",
        "Paid<b>1</b>",
        "Conversion<b>100.0 %</b>",
        "Amount paid of them<b>¥3.00</b>",
        "Rejected notifications<b>1</b>",
    ] {
        assert!(today.contains(card), "{card}: {today}");
    }
    assert!(page.contains("<svg viewBox=\"0 0 600 100\""), "the chart: {page}");
    t.stop().await;
}
engines!(notifications_show_on_the_timeline_and_rejected_ones_on_their_page);

async fn reconciliation_runs_are_listed_with_their_outcome(db: TestDb) {
    let t = spawn_app(db, with_console()).await;
    let mut b = Browser::new(&t);
    b.sign_in(PASSWORD).await;
    let (_, page, _) = b.get("/console/reconciliations").await;
    assert!(page.contains("No day has been reconciled yet."), "{page}");
    let now = t.app.now();
    t.app
        .store()
        .record_reconciliation(wxpay_gateway::store::ReconciliationRecord {
            merchant: "default".into(),
            bill_date: "2026-12-03".into(),
            kind: "daily".into(),
            started_at: now,
            finished_at: now,
            balanced: false,
            differences: 2,
            repaired: 1,
            report: "{\"missing_here\":[\"<W1>\"]}".into(),
        })
        .await
        .unwrap();
    let (status, page, _) = b.get("/console/reconciliations").await;
    assert_eq!(status, 200);
    for needle in [
        "2026-12-03",
        "not balanced",
        "<td class=\"n\">2</td>",
        "<td class=\"n\">1</td>",
        "&lt;W1&gt;",
    ] {
        assert!(page.contains(needle), "{needle}: {page}");
    }
    t.stop().await;
}
engines!(reconciliation_runs_are_listed_with_their_outcome);

#[tokio::test]
async fn what_a_client_stored_is_shown_as_text_never_as_markup() {
    let t = spawn_app(TestDb::sqlite(), with_console()).await;
    let mut body = crate::support::order_body(100);
    body["description"] = serde_json::json!("<script>alert(1)</script>");
    body["out_trade_no"] = serde_json::json!("XSS-0001*a");
    let o = t.create(body).await;
    assert_eq!(o["out_trade_no"], "XSS-0001*a");
    let mut b = Browser::new(&t);
    b.sign_in(PASSWORD).await;
    let (_, list, _) = b.get("/console/orders").await;
    // The number goes into the link percent-encoded, and into the text escaped.
    assert!(
        list.contains("href=\"/console/orders/XSS-0001%2Aa?merchant=default\""),
        "{list}"
    );
    let (status, page, _) = b.get("/console/orders/XSS-0001%2Aa?merchant=default").await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"), "{page}");
    assert!(!page.contains("<script>"), "{page}");
    t.stop().await;
}

#[tokio::test]
async fn the_console_speaks_chinese_to_a_chinese_browser_and_remembers_a_choice() {
    let t = spawn_app(TestDb::sqlite(), with_console()).await;
    let http = reqwest::Client::new();
    let page = http
        .get(format!("{}/console/login", t.url))
        .header(ACCEPT_LANGUAGE, "zh-CN,zh;q=0.9,en;q=0.8")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("<html lang=\"zh-CN\">") && page.contains("登录"),
        "{page}"
    );

    let mut b = Browser::new(&t);
    b.sign_in(PASSWORD).await;
    let (_, page, _) = b.get("/console/orders?lang=zh").await;
    assert!(page.contains("订单") && page.contains("全部状态"), "{page}");
    assert_eq!(b.cookies.get("wxpay_lang").map(String::as_str), Some("zh"));
    let (_, page, _) = b.get("/console").await;
    assert!(page.contains("概览"), "remembered: {page}");
    let (_, page, _) = b.get("/console?lang=en").await;
    assert!(page.contains("Overview"), "{page}");
    t.stop().await;
}

#[tokio::test]
async fn console_pages_load_nothing_from_elsewhere_and_are_never_cached() {
    let t = spawn_app(TestDb::sqlite(), with_console()).await;
    let r = reqwest::get(format!("{}/console/login", t.url)).await.unwrap();
    let h = r.headers();
    assert_eq!(h["cache-control"], "no-store");
    let csp = h["content-security-policy"].to_str().unwrap();
    assert!(
        csp.starts_with("default-src 'none'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    let page = r.text().await.unwrap();
    for outside in ["<script", " src=", "http://", "https://"] {
        assert!(!page.contains(outside), "the page has {outside}");
    }
    t.stop().await;
}
