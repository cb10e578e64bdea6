//! The API and the payment notification, end to end with the simulator in process.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use wxpay_protocol::SignType;
use wxpay_simulator::{TEST_API_KEY, TEST_APPID};

use crate::support::SUCCESS;
use crate::support::engines;
use crate::support::{
    DEFAULT, HMAC, HMAC_APPID, HMAC_KEY, HMAC_MCH_ID, Options, Signer, TEST_OPENID, TestApp, TestDb, event, eventually,
    notification, order_body, paid_notification, spawn_app, with_jobs_and_webhook,
};

async fn the_whole_flow_from_login_to_the_signed_paid_event(db: TestDb) {
    let t = spawn_app(db, with_jobs_and_webhook()).await;
    let (_, login) = t
        .sim_post("/simulator/login", json!({"appid": TEST_APPID, "user": "alice"}))
        .await;
    let (status, openid) = t
        .api(Method::POST, "/v1/openid", Some(json!({"code": login["code"]})), None)
        .await;
    assert_eq!(status, 200, "{openid}");
    let openid = openid["openid"].as_str().unwrap().to_owned();
    assert!(!openid.is_empty());

    let created = t
        .create(json!({"description": "拿铁咖啡", "amount_fen": 2800, "openid": openid, "attach": "cart-7"}))
        .await;
    let no = created["out_trade_no"].as_str().unwrap().to_owned();
    assert_eq!(created["status"], "pending");
    assert_eq!(created["amount_fen"], 2800);
    assert_pay_params_valid(&created);

    let sim_order = t.sim_get(&format!("/simulator/orders/{no}")).await;
    assert_eq!(sim_order["total_fee"], 2800, "{sim_order}");
    assert_eq!(sim_order["notify_url"], format!("{}/notify/v2/pay", t.url));

    let (status, _) = t.sim_post("/simulator/pay", json!({"out_trade_no": no})).await;
    assert_eq!(status, 200);
    let paid = t.wait_status(&no, "paid").await;
    assert!(paid["transaction_id"].as_str().unwrap().starts_with("42"));
    assert!(paid["paid_at"].is_string());
    assert_eq!(
        t.event_kinds(&no).await,
        ["created", "prepay", "paid"],
        "{}",
        t.engine()
    );

    let hook = t.webhook.clone();
    eventually("the order.paid event reaches the webhook", async || {
        !hook.delivered().is_empty()
    })
    .await;
    let events = t.webhook.delivered();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["type"], "order.paid");
    assert_eq!(events[0]["data"]["out_trade_no"], no.as_str());
    assert_eq!(events[0]["data"]["amount_fen"], 2800);
    assert_eq!(events[0]["data"]["attach"], "cart-7");
    assert!(
        t.webhook.events.lock().unwrap().iter().all(|(_, signed)| *signed),
        "every delivery is signed"
    );

    let (_, list) = t.api(Method::GET, "/v1/orders?status=paid&limit=10", None, None).await;
    assert_eq!(list["orders"][0]["out_trade_no"], no.as_str(), "{list}");
    t.stop().await;
}
engines!(the_whole_flow_from_login_to_the_signed_paid_event);

async fn the_same_idempotency_key_gives_the_same_answer_and_another_body_a_409(db: TestDb) {
    let t = spawn_app(db, Options::default()).await;
    let body = order_body(100);
    let (s1, a) = t
        .api(Method::POST, "/v1/orders", Some(body.clone()), Some("key-1"))
        .await;
    let (s2, b) = t
        .api(Method::POST, "/v1/orders", Some(body.clone()), Some("key-1"))
        .await;
    assert_eq!((s1, s2), (201, 201), "{a} {b}");
    assert_eq!(a, b, "{}: the very same answer", t.engine());
    let mut other = body.clone();
    other["amount_fen"] = json!(200);
    let (s3, c) = t.api(Method::POST, "/v1/orders", Some(other), Some("key-1")).await;
    assert_eq!(s3, 409, "{c}");
    assert_eq!(c["error"]["code"], "idempotency_key_reused");
    // Without a key, a new order each time.
    let (_, d) = t.api(Method::POST, "/v1/orders", Some(body.clone()), None).await;
    assert_ne!(d["out_trade_no"], a["out_trade_no"]);
    // The same out_trade_no with the same parameters is a retry; with others, a conflict.
    let mut fixed = body.clone();
    fixed["out_trade_no"] = json!("FIXED-1");
    let (s4, e) = t.api(Method::POST, "/v1/orders", Some(fixed.clone()), None).await;
    let (s5, f) = t.api(Method::POST, "/v1/orders", Some(fixed.clone()), None).await;
    assert_eq!((s4, s5), (201, 200), "{e} {f}");
    assert_eq!(e["prepay_id"], f["prepay_id"]);
    fixed["amount_fen"] = json!(101);
    let (s6, g) = t.api(Method::POST, "/v1/orders", Some(fixed), None).await;
    assert_eq!(
        (s6, g["error"]["code"].as_str()),
        (409, Some("out_trade_no_taken")),
        "{g}"
    );
    t.stop().await;
}
engines!(the_same_idempotency_key_gives_the_same_answer_and_another_body_a_409);

async fn an_order_and_a_refund_of_any_merchant_are_found_by_their_numbers_alone(db: TestDb) {
    let t = spawn_app(
        db,
        Options {
            second_app: true,
            ..Options::default()
        },
    )
    .await;
    // The second configured merchant's order, asked for by its number alone, as product.md's
    // paths have it.
    t.paid_order_of("hmac", "MM-PAID", 300).await;
    let (status, o) = t.api(Method::GET, "/v1/orders/MM-PAID", None, None).await;
    assert_eq!(
        (status, o["merchant"].as_str(), o["status"].as_str()),
        (200, Some("hmac"), Some("paid")),
        "{o}"
    );
    let (status, r) = t
        .api(
            Method::POST,
            "/v1/orders/MM-PAID/refunds",
            Some(json!({"amount_fen": 100, "out_refund_no": "MM-PAID-R"})),
            None,
        )
        .await;
    assert_eq!(status, 201, "{r}");
    let (status, r) = t.api(Method::GET, "/v1/refunds/MM-PAID-R", None, None).await;
    assert_eq!((status, r["merchant"].as_str()), (200, Some("hmac")), "{r}");
    let mut body = order_body(200);
    body["out_trade_no"] = json!("MM-OPEN");
    body["merchant"] = json!("hmac");
    let (status, v) = t.api(Method::POST, "/v1/orders", Some(body), None).await;
    assert_eq!(status, 201, "{v}");
    let (status, v) = t.api(Method::POST, "/v1/orders/MM-OPEN/close", None, None).await;
    assert_eq!((status, v["status"].as_str()), (200, Some("closed")), "{v}");
    // A number the first merchant also has is the first merchant's, as an order created
    // without a merchant is; the other's is asked for by name.
    let mut body = order_body(300);
    body["out_trade_no"] = json!("MM-PAID");
    let (status, v) = t.api(Method::POST, "/v1/orders", Some(body), None).await;
    assert_eq!(status, 201, "{v}");
    let (status, v) = t.api(Method::GET, "/v1/orders/MM-PAID", None, None).await;
    assert_eq!(
        (status, v["merchant"].as_str(), v["status"].as_str()),
        (200, Some("default"), Some("pending")),
        "{v}"
    );
    let (status, v) = t.api(Method::GET, "/v1/orders/MM-PAID?merchant=hmac", None, None).await;
    assert_eq!((status, v["status"].as_str()), (200, Some("paid")), "{v}");
    // A number two other merchants both have must be asked for with its merchant.
    for merchant in ["hmac", "app2"] {
        let mut body = order_body(400);
        body["out_trade_no"] = json!("MM-TWICE");
        body["merchant"] = json!(merchant);
        let (status, v) = t.api(Method::POST, "/v1/orders", Some(body), None).await;
        assert_eq!(status, 201, "{merchant}: {v}");
    }
    let (status, v) = t.api(Method::GET, "/v1/orders/MM-TWICE", None, None).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (422, Some("invalid_request")),
        "{v}"
    );
    let message = v["error"]["message"].as_str().unwrap();
    assert!(message.contains("hmac") && message.contains("app2"), "{message}");
    let (status, v) = t
        .api(Method::GET, "/v1/orders/MM-TWICE?merchant=app2", None, None)
        .await;
    assert_eq!((status, v["merchant"].as_str()), (200, Some("app2")), "{v}");
    // A number nobody has is still not found.
    let (status, _) = t.api(Method::GET, "/v1/orders/MM-NONE", None, None).await;
    assert_eq!(status, 404);
    t.stop().await;
}
engines!(an_order_and_a_refund_of_any_merchant_are_found_by_their_numbers_alone);

async fn a_close_whose_answer_is_lost_and_whose_repeat_hears_orderclosed_is_closed(db: TestDb) {
    let t = spawn_app(db, Options::default()).await;
    let mut body = order_body(100);
    body["out_trade_no"] = json!("LOST-CLOSE-1");
    t.create(body).await;
    // The first attempt closes it and its answer is lost; the repeat hears ORDERCLOSED, which
    // states the order's state whatever the lost attempt did.
    t.fault(json!({"kind": "lose_answer", "api": "closeorder", "count": 1}))
        .await;
    let (status, v) = t.api(Method::POST, "/v1/orders/LOST-CLOSE-1/close", None, None).await;
    assert_eq!(
        (status, v["status"].as_str()),
        (200, Some("closed")),
        "{}: {v}",
        t.engine()
    );
    assert_eq!(t.sim_faults_fired("lose_answer").await, 1);
    t.stop().await;
}
engines!(a_close_whose_answer_is_lost_and_whose_repeat_hears_orderclosed_is_closed);

#[tokio::test]
async fn bad_requests_get_clear_errors_and_store_nothing() {
    let t = spawn_app(TestDb::sqlite(), Options::default()).await;
    let cases = [
        (
            json!({"description": "x", "amount_fen": 0, "openid": "o"}),
            422,
            "amount_fen",
        ),
        (
            json!({"description": "x", "amount_fen": 1.5, "openid": "o"}),
            422,
            "integer number of fen",
        ),
        (
            json!({"description": "x", "amount_fen": "100", "openid": "o"}),
            422,
            "integer number of fen",
        ),
        (
            json!({"description": "x", "amount_fen": -1, "openid": "o"}),
            422,
            "amount_fen",
        ),
        (json!({"description": "x", "openid": "o"}), 422, "amount_fen"),
        (
            json!({"description": "x", "amount_fen": 100, "openid": "o", "out_trade_no": "含中文"}),
            422,
            "out_trade_no",
        ),
        (
            json!({"description": "x", "amount_fen": 100, "openid": "o", "merchant": "nobody"}),
            422,
            "nobody",
        ),
        (
            json!({"description": "x", "amount_fen": 100, "openid": "o", "expires_in_secs": 5}),
            422,
            "expires_in_secs",
        ),
        (
            json!({"description": "x", "amount_fen": 100, "openid": "o", "surprise": 1}),
            422,
            "surprise",
        ),
    ];
    for (body, status, needle) in cases {
        let (s, v) = t.api(Method::POST, "/v1/orders", Some(body.clone()), None).await;
        assert_eq!(s, status, "{body} → {v}");
        let message = v["error"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "{body} → {message}");
        assert!(
            v["error"]["request_id"].is_string() || v["request_id"].is_string(),
            "{v}"
        );
    }
    let r = t
        .http
        .post(format!("{}/v1/orders", t.url))
        .bearer_auth(crate::support::TOKEN)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let (_, list) = t.api(Method::GET, "/v1/orders", None, None).await;
    assert_eq!(list["orders"].as_array().unwrap().len(), 0, "{list}");
    // No token, a wrong token.
    let r = t.http.get(format!("{}/v1/orders", t.url)).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = t
        .http
        .get(format!("{}/v1/orders", t.url))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let (s, v) = t.api(Method::GET, "/v1/orders/NOPE", None, None).await;
    assert_eq!((s, v["error"]["code"].as_str()), (404, Some("not_found")));
    t.stop().await;
}

async fn a_hundred_concurrent_duplicate_notifications_move_the_order_exactly_once(db: TestDb) {
    let t = spawn_app(db, with_jobs_and_webhook()).await;
    let o = t.create(order_body(1999)).await;
    let no = o["out_trade_no"].as_str().unwrap().to_owned();
    let body = paid_notification(&no, 1999, "4200000000000000000000000001");
    let replies = futures_util::future::join_all((0..100).map(|_| t.notify(body.clone()))).await;
    for (status, reply) in &replies {
        assert_eq!((*status, reply.as_str()), (200, SUCCESS), "{}", t.engine());
    }
    let order = t.order(&no).await;
    assert_eq!(order["status"], "paid");
    let kinds = t.event_kinds(&no).await;
    let transitions = kinds.iter().filter(|k| *k == "paid").count();
    assert_eq!(transitions, 1, "{}: {kinds:?}", t.engine());
    let hook = t.webhook.clone();
    eventually("the event is delivered", async || !hook.delivered().is_empty()).await;
    t.outbox_drained().await;
    let delivered = t.webhook.delivered().len();
    assert_eq!(delivered, 1, "{}: one event", t.engine());
    assert_eq!(t.app.metrics().notifications_with("applied"), 1);
    assert_eq!(t.app.metrics().notifications_with("duplicate"), 99);
    crate::support::figure(
        &["17"],
        format!(
            "{}: {} concurrent duplicates → {} SUCCESS replies, {transitions} paid transition, {delivered} event delivered",
            t.engine(),
            replies.len(),
            replies.iter().filter(|(s, r)| *s == 200 && r == SUCCESS).count(),
        ),
    );
    t.stop().await;
}
engines!(a_hundred_concurrent_duplicate_notifications_move_the_order_exactly_once);

async fn the_simulators_duplicated_notifications_move_the_order_once(db: TestDb) {
    let t = spawn_app(db, Options::default()).await;
    let o = t.create(order_body(100)).await;
    let no = o["out_trade_no"].as_str().unwrap().to_owned();
    t.fault(json!({"kind": "notify_duplicate", "out_trade_no": no, "copies": 20}))
        .await;
    t.sim_pay(json!({"out_trade_no": no})).await;
    t.wait_status(&no, "paid").await;
    let app = t.app.clone();
    eventually("twenty copies arrive", async || {
        app.metrics().notifications_with("applied") + app.metrics().notifications_with("duplicate") >= 20
    })
    .await;
    assert_eq!(t.app.metrics().notifications_with("applied"), 1, "{}", t.engine());
    assert_eq!(t.event_kinds(&no).await, ["created", "prepay", "paid"]);
    t.stop().await;
}
engines!(the_simulators_duplicated_notifications_move_the_order_once);

async fn forged_tampered_and_hostile_notifications_change_nothing(db: TestDb) {
    let t = spawn_app(db, Options::default()).await;
    let o = t.create(order_body(500)).await;
    let no = o["out_trade_no"].as_str().unwrap().to_owned();
    let hmac = t
        .create(json!({"description": "x", "amount_fen": 500, "openid": TEST_OPENID, "merchant": "hmac"}))
        .await;
    let hmac_no = hmac["out_trade_no"].as_str().unwrap().to_owned();
    let tx = "4200000000000000000000000002";
    let signed = paid_notification(&no, 500, tx);
    let without_sign = {
        let start = signed.find("<sign>").unwrap();
        let end = signed.find("</sign>").unwrap() + "</sign>".len();
        format!("{}{}", &signed[..start], &signed[end..])
    };
    let md5_to_hmac = notification(
        Signer {
            sign_type: SignType::Md5,
            ..HMAC
        },
        &hmac_no,
        500,
        tx,
        |f| {
            f.remove("sign_type");
        },
    );
    // The signature as received, changed by one character three ways (reliability checklist
    // item 3): a hex digit flipped, one dropped, one added.
    let sign = {
        let start = signed.find("<sign>").unwrap() + "<sign>".len();
        let end = signed.find("</sign>").unwrap();
        signed[start..end]
            .trim_start_matches("<![CDATA[")
            .trim_end_matches("]]>")
            .to_owned()
    };
    assert_eq!(sign.len(), 32, "{signed}");
    let flipped = {
        let last = sign.chars().last().unwrap();
        let other = if last == '0' { '1' } else { '0' };
        format!("{}{other}", &sign[..31])
    };
    let with_sign = |s: &str| signed.replacen(&sign, s, 1);
    let no_sign_no_code = without_sign
        .replace("<return_code><![CDATA[SUCCESS]]></return_code>", "")
        .replace("<return_code>SUCCESS</return_code>", "");
    assert!(!no_sign_no_code.contains("return_code"), "{no_sign_no_code}");
    let mut cases: Vec<(String, String)> = vec![
        ("wrong amount".into(), paid_notification(&no, 499, tx)),
        ("an amount one above".into(), paid_notification(&no, 501, tx)),
        ("a signature digit flipped".into(), with_sign(&flipped)),
        ("a signature one digit short".into(), with_sign(&sign[..31])),
        ("a signature one digit long".into(), with_sign(&format!("{sign}0"))),
        (
            // WxJava #1890: neither a signature nor a return_code, for a configured merchant.
            "no signature and no return_code".into(),
            no_sign_no_code,
        ),
        (
            // Two numbers: whichever a lax reader keeps, the other was signed.
            "two out_trade_no".into(),
            signed.replacen("<xml>", "<xml><out_trade_no>NO-SUCH-ORDER</out_trade_no>", 1),
        ),
        (
            // wechat-pay #54: correctly signed, but naming no app and no merchant.
            "no appid and no mch_id".into(),
            notification(DEFAULT, &no, 500, tx, |f| {
                f.remove("appid");
                f.remove("mch_id");
            }),
        ),
        (
            "wrong merchant".into(),
            notification(
                Signer {
                    mch_id: "1999999999",
                    ..DEFAULT
                },
                &no,
                500,
                tx,
                |_| {},
            ),
        ),
        (
            "wrong app".into(),
            notification(
                Signer {
                    appid: "wx0000000000000000",
                    ..DEFAULT
                },
                &no,
                500,
                tx,
                |_| {},
            ),
        ),
        (
            "another merchant's app".into(),
            notification(
                Signer {
                    appid: HMAC_APPID,
                    ..DEFAULT
                },
                &no,
                500,
                tx,
                |_| {},
            ),
        ),
        (
            "bad signature".into(),
            notification(DEFAULT, &no, 500, tx, |f| {
                f.set("sign", "0".repeat(32));
            }),
        ),
        (
            "signed with another key".into(),
            notification(
                Signer {
                    key: HMAC_KEY,
                    ..DEFAULT
                },
                &no,
                500,
                tx,
                |_| {},
            ),
        ),
        ("missing signature".into(), without_sign),
        ("MD5 sent to an HMAC merchant".into(), md5_to_hmac),
        (
            "HMAC named but MD5 merchant".into(),
            notification(
                Signer {
                    sign_type: SignType::HmacSha256,
                    ..DEFAULT
                },
                &no,
                500,
                tx,
                |_| {},
            ),
        ),
        ("unknown order".into(), paid_notification("NO-SUCH-ORDER", 500, tx)),
        (
            "tampered after signing".into(),
            signed.replace("<total_fee>500</total_fee>", "<total_fee>5</total_fee>"),
        ),
        ("empty".into(), String::new()),
        ("not XML".into(), "{\"return_code\":\"SUCCESS\"}".into()),
    ];
    let xml_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/vectors/xml");
    for entry in std::fs::read_dir(&xml_dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "xml") {
            let bytes = std::fs::read(&path).unwrap();
            cases.push((
                format!("hostile {}", path.display()),
                String::from_utf8_lossy(&bytes).into_owned(),
            ));
        }
    }
    let hostile_count = cases.iter().filter(|(n, _)| n.starts_with("hostile")).count();
    assert!(hostile_count >= 8, "the hostile samples are in testdata");
    for (name, body) in &cases {
        let (status, reply) = t.notify(body.clone()).await;
        assert!((400..500).contains(&status), "{}: {name} answered {status}", t.engine());
        assert!(
            reply.contains("<return_code><![CDATA[FAIL]]></return_code>"),
            "{name}: {reply}"
        );
        assert!(
            !reply.contains(TEST_API_KEY) && !reply.contains(HMAC_KEY),
            "{name}: a key in the reply"
        );
    }
    for path in [
        format!("/v1/orders/{no}"),
        format!("/v1/orders/{hmac_no}?merchant=hmac"),
    ] {
        let (_, order) = t.api(Method::GET, &path, None, None).await;
        assert_eq!(order["status"], "pending", "{}: {order}", t.engine());
        let kinds: Vec<&str> = order["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["kind"].as_str().unwrap())
            .collect();
        assert_eq!(kinds, ["created", "prepay"]);
    }
    assert_eq!(t.app.metrics().notifications_with("applied"), 0);
    // No notification made an order (reliability checklist item 6): the two there were.
    assert_eq!(t.stored_orders().await, 2, "{}", t.engine());
    // A body of a mebibyte is refused by its size (reliability checklist item 13).
    let huge = format!("<xml><attach>{}</attach></xml>", "a".repeat(1 << 20));
    let (status, _) = t.notify(huge).await;
    assert_eq!(status, 413, "{}", t.engine());
    // The genuine notification still works afterwards.
    assert_eq!(t.notify(signed).await, (200, SUCCESS.to_owned()));
    assert_eq!(t.order(&no).await["status"], "paid");
    crate::support::figure(
        &["2", "3", "5", "6", "9", "10", "12", "13"],
        format!(
            "{}: {} forged, tampered or hostile notifications ({hostile_count} hostile samples) → all refused with FAIL, 0 applied, both orders unchanged",
            t.engine(),
            cases.len()
        ),
    );
    t.stop().await;
}
engines!(forged_tampered_and_hostile_notifications_change_nothing);

async fn what_the_mini_program_reports_changes_nothing_and_only_a_verified_notification_pays(db: TestDb) {
    let t = spawn_app(db, Options::default()).await;
    let mut body = order_body(1999);
    body["out_trade_no"] = json!("FRONT-END-01");
    t.create(body.clone()).await;
    // wx.requestPayment said ok (or was faked to), and a backend passes it on, every way an
    // integration might try: the API has no way to take it.
    let claim = json!({"status": "paid", "amount_fen": 1, "errMsg": "requestPayment:ok"});
    let mut refusals = Vec::new();
    for (method, path) in [
        (Method::PATCH, "/v1/orders/FRONT-END-01"),
        (Method::PUT, "/v1/orders/FRONT-END-01"),
        (Method::POST, "/v1/orders/FRONT-END-01"),
        (Method::POST, "/v1/orders/FRONT-END-01/pay"),
        (Method::POST, "/v1/orders/FRONT-END-01/paid"),
    ] {
        let (status, answer) = t.api(method.clone(), path, Some(claim.clone()), None).await;
        assert!(matches!(status, 404 | 405), "{method} {path}: {status} {answer}");
        refusals.push(status);
    }
    // The same order again with the client's amount: another order's parameters, refused.
    body["amount_fen"] = json!(1);
    let (status, answer) = t.api(Method::POST, "/v1/orders", Some(body), None).await;
    assert_eq!(status, 409, "{answer}");
    // A notification for the amount the client claims: refused, however well signed.
    let (status, reply) = t
        .notify(paid_notification("FRONT-END-01", 1, "4200000000000000000000000888"))
        .await;
    assert!(status >= 400 && reply.contains("FAIL"), "{status} {reply}");
    let o = t.order("FRONT-END-01").await;
    assert_eq!(
        (o["status"].as_str(), o["amount_fen"].as_i64()),
        (Some("pending"), Some(1999)),
        "{o}"
    );
    // Only WeChat Pay's verified word for the order's own amount pays it.
    let (status, reply) = t
        .notify(paid_notification("FRONT-END-01", 1999, "4200000000000000000000000889"))
        .await;
    assert_eq!((status, reply.as_str()), (200, SUCCESS));
    assert_eq!(t.order("FRONT-END-01").await["status"], "paid");
    crate::support::figure(
        &["38"],
        format!(
            "{}: a client's requestPayment:ok sent 5 ways → {refusals:?}, its 1-fen amount → 409 and a refused notification; paid only by the verified notification of 1999 fen",
            t.engine()
        ),
    );
    t.stop().await;
}
engines!(what_the_mini_program_reports_changes_nothing_and_only_a_verified_notification_pays);

#[tokio::test]
async fn an_hmac_merchant_is_paid_through_its_own_notifications() {
    let t = spawn_app(TestDb::sqlite(), Options::default()).await;
    let o = t
        .create(json!({"description": "x", "amount_fen": 321, "openid": TEST_OPENID, "merchant": "hmac"}))
        .await;
    assert_eq!(o["pay_params"]["signType"], "HMAC-SHA256");
    let no = o["out_trade_no"].as_str().unwrap().to_owned();
    t.sim_pay(json!({"out_trade_no": no, "mch_id": HMAC_MCH_ID})).await;
    let app = t.app.clone();
    eventually("the HMAC notification applies", async || {
        app.metrics().notifications_with("applied") == 1
    })
    .await;
    let (status, paid) = t
        .api(Method::GET, &format!("/v1/orders/{no}?merchant=hmac"), None, None)
        .await;
    assert_eq!(status, 200, "{paid}");
    assert_eq!(paid["status"], "paid", "{paid}");
    assert_eq!(paid["amount_fen"], 321);
    assert_eq!(event(&paid, "paid")["detail"]["source"], "notification", "{paid}");
    // The notification the simulator signed was HMAC-SHA256, so that is what was verified.
    let attempts = t.sim_get(&format!("/simulator/notifications?out_trade_no={no}")).await;
    let body = attempts["attempts"][0]["body"].as_str().unwrap().to_owned();
    assert!(body.contains("HMAC-SHA256"), "{body}");
    t.stop().await;
}

/// The `wx.requestPayment` parameters of an order of the default merchant: its app, its
/// prepay id, and a paySign that verifies with the merchant key over the five fields, as
/// WeChat checks it.
fn assert_pay_params_valid(order: &serde_json::Value) {
    let params = &order["pay_params"];
    assert_eq!(params["appId"], TEST_APPID);
    assert_eq!(
        params["package"],
        format!("prepay_id={}", order["prepay_id"].as_str().unwrap())
    );
    assert_eq!(params["signType"], "MD5");
    let mut f = wxpay_protocol::Fields::new();
    for k in ["appId", "timeStamp", "nonceStr", "package", "signType"] {
        f.insert(k, params[k].as_str().unwrap().to_owned()).unwrap();
    }
    f.insert("sign", params["paySign"].as_str().unwrap().to_owned())
        .unwrap();
    f.verify(&wxpay_protocol::ApiKey::new(TEST_API_KEY).unwrap(), SignType::Md5)
        .unwrap();
}

async fn a_systemerror_is_retried_with_identical_parameters_into_one_upstream_order(db: TestDb) {
    let t = spawn_app(db, Options::default()).await;
    t.fault(json!({"kind": "system_error", "api": "unifiedorder", "count": 2}))
        .await;
    let mut body = order_body(700);
    body["out_trade_no"] = json!("SYSERR-1");
    let o = t.create(body).await;
    assert_eq!(o["status"], "pending");
    let sim = t.sim_get("/simulator/orders/SYSERR-1").await;
    assert_eq!(sim["trade_state"], "NOTPAY", "{sim}");
    // The mini program can pay it: the parameters name the one order WeChat Pay made.
    assert_pay_params_valid(&o);
    assert_eq!(o["prepay_id"], sim["prepay_id"], "{}", t.engine());
    assert_eq!(t.event_kinds("SYSERR-1").await, ["created", "prepay"], "{}", t.engine());
    // The faults really fired, and the third call repeated the first two exactly.
    assert_eq!(t.sim_faults_fired("system_error").await, 2);
    assert_eq!(t.sim_calls_with("unifiedorder", "business_error").await, 2);
    assert_eq!(t.sim_calls_with("unifiedorder", "success").await, 1);
    assert_eq!(t.assert_retries_repeat_the_first("unifiedorder", "SYSERR-1").await, 3);
    t.stop().await;
}
engines!(a_systemerror_is_retried_with_identical_parameters_into_one_upstream_order);

async fn a_lost_answer_converges_on_the_order_wechat_pay_made(db: TestDb) {
    let t = spawn_app(db, Options::default()).await;
    t.fault(json!({"kind": "lose_answer", "api": "unifiedorder", "count": 1}))
        .await;
    let mut body = order_body(800);
    body["out_trade_no"] = json!("LOST-1");
    let o = t.create(body.clone()).await;
    let sim = t.sim_get("/simulator/orders/LOST-1").await;
    assert_eq!(
        o["prepay_id"],
        sim["prepay_id"],
        "{}: the prepay WeChat Pay kept",
        t.engine()
    );
    // The answer really was lost once, and the retry asked for the very same order.
    assert_eq!(t.sim_faults_fired("lose_answer").await, 1);
    assert!(t.assert_retries_repeat_the_first("unifiedorder", "LOST-1").await >= 2);
    t.sim_pay(json!({"out_trade_no": "LOST-1"})).await;
    t.wait_status("LOST-1", "paid").await;
    t.stop().await;
}
engines!(a_lost_answer_converges_on_the_order_wechat_pay_made);

async fn an_answer_later_than_the_read_timeout_converges_on_the_order_wechat_pay_made(db: TestDb) {
    let mut options = Options::default();
    options.upstream.timeout = Duration::from_secs(1);
    let t = spawn_app(db, options).await;
    // WeChat Pay makes the order, and its answer leaves 2.5 s later: the gateway has stopped
    // waiting at 1 s and asks again.
    t.fault(json!({"kind": "late_answer", "api": "unifiedorder", "count": 1, "delay_ms": 2500}))
        .await;
    let mut body = order_body(850);
    body["out_trade_no"] = json!("LATE-1");
    let o = t.create(body).await;
    let sim = t.sim_get("/simulator/orders/LATE-1").await;
    assert_eq!(
        o["prepay_id"],
        sim["prepay_id"],
        "{}: the prepay WeChat Pay kept",
        t.engine()
    );
    assert_eq!(t.sim_faults_fired("late_answer").await, 1);
    let calls = t.assert_retries_repeat_the_first("unifiedorder", "LATE-1").await;
    assert!(calls >= 2, "{calls}");
    t.sim_pay(json!({"out_trade_no": "LATE-1"})).await;
    let paid = t.wait_status("LATE-1", "paid").await;
    assert_eq!(paid["amount_fen"], 850);
    crate::support::figure(
        &["27"],
        format!(
            "{}: unifiedorder carried out and answered 2.5 s later, past the 1 s read timeout → {calls} calls with the same fields, one order at the simulator, its prepay_id kept, paid once",
            t.engine()
        ),
    );
    t.stop().await;
}
engines!(an_answer_later_than_the_read_timeout_converges_on_the_order_wechat_pay_made);

#[tokio::test]
async fn when_wechat_pay_never_answers_the_order_is_kept_pending_and_a_retry_completes_it() {
    let t = spawn_app(TestDb::sqlite(), Options::default()).await;
    t.fault(json!({"kind": "lose_answer", "api": "unifiedorder", "count": 3}))
        .await;
    let mut body = order_body(900);
    body["out_trade_no"] = json!("NOANSWER-1");
    let (s, v) = t
        .api(Method::POST, "/v1/orders", Some(body.clone()), Some("k-noanswer"))
        .await;
    assert_eq!(s, 503, "{v}");
    assert_eq!(v["error"]["code"], "wechatpay_unavailable");
    let stored = t.order("NOANSWER-1").await;
    assert_eq!(stored["status"], "pending", "a truthful record: {stored}");
    assert!(stored["upstream_error"].is_string(), "{stored}");
    // The key was released: the same request runs again and completes.
    let (s, v) = t.api(Method::POST, "/v1/orders", Some(body), Some("k-noanswer")).await;
    assert_eq!(s, 201, "{v}");
    t.stop().await;
}

#[tokio::test]
async fn an_answer_with_a_bad_signature_is_not_trusted() {
    let t = spawn_app(TestDb::sqlite(), Options::default()).await;
    t.fault(json!({"kind": "bad_answer_signature", "api": "unifiedorder", "count": 3}))
        .await;
    let mut body = order_body(900);
    body["out_trade_no"] = json!("BADSIG-1");
    let (s, v) = t.api(Method::POST, "/v1/orders", Some(body), None).await;
    assert_eq!(s, 503, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("untrustworthy"), "{v}");
    assert!(t.order("BADSIG-1").await["prepay_id"].is_null());
    t.stop().await;
}

#[tokio::test]
async fn a_refused_order_is_recorded_as_failed() {
    let t = spawn_app(TestDb::sqlite(), Options::default()).await;
    // The simulator has this number with another amount: INVALID_REQUEST, a final refusal.
    let mut first = order_body(100);
    first["out_trade_no"] = json!("REFUSED-1");
    t.create(first).await;
    let other = spawn_app(
        TestDb::sqlite(),
        Options {
            shared_sim: Some(t.sim_url.clone()),
            ..Options::default()
        },
    )
    .await;
    let mut second = order_body(200);
    second["out_trade_no"] = json!("REFUSED-1");
    let (s, v) = other.api(Method::POST, "/v1/orders", Some(second), None).await;
    assert_eq!(s, 502, "{v}");
    assert_eq!(v["error"]["code"], "wechatpay_rejected");
    let o = other.order("REFUSED-1").await;
    assert_eq!(o["status"], "failed", "{o}");
    other.stop().await;
    t.stop().await;
}

async fn an_openid_of_another_mini_program_is_refused_with_wechat_pays_reason(db: TestDb) {
    let t = spawn_app(db, Options::default()).await;
    let mut body = order_body(100);
    body["out_trade_no"] = json!("STRANGER-1");
    body["openid"] = json!(wxpay_simulator::openid("wx1111111111111111", "user-1"));
    let (s, v) = t.api(Method::POST, "/v1/orders", Some(body), None).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (502, Some("wechatpay_rejected")),
        "{v}"
    );
    assert!(
        v["error"]["message"].as_str().is_some_and(|m| m.contains("openid")),
        "{v}"
    );
    assert_eq!(t.order("STRANGER-1").await["status"], "failed");
    t.stop().await;
}
engines!(an_openid_of_another_mini_program_is_refused_with_wechat_pays_reason);

async fn a_rate_limit_keeps_the_order_pending_and_the_same_request_later_goes_through(db: TestDb) {
    let t = spawn_app(db, Options::default()).await;
    t.fault(json!({"kind": "frequency_limited", "api": "unifiedorder", "count": 1}))
        .await;
    let mut body = order_body(300);
    body["out_trade_no"] = json!("LIMITED-1");
    let (s, v) = t.api(Method::POST, "/v1/orders", Some(body.clone()), None).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (503, Some("wechatpay_unavailable")),
        "{}: FREQUENCY_LIMITED says not now, not never: {v}",
        t.engine()
    );
    assert_eq!(t.sim_faults_fired("frequency_limited").await, 1);
    assert_eq!(t.order("LIMITED-1").await["status"], "pending");
    assert_eq!(t.event_kinds("LIMITED-1").await, ["created", "upstream_unknown"]);
    // The same request later places the order, rather than meeting a failed one.
    let o = t.create(body).await;
    assert_eq!(o["status"], "pending", "{o}");
    let sim = t.sim_get("/simulator/orders/LIMITED-1").await;
    assert_eq!(o["prepay_id"], sim["prepay_id"], "{sim}");
    assert_pay_params_valid(&o);
    t.stop().await;
}
engines!(a_rate_limit_keeps_the_order_pending_and_the_same_request_later_goes_through);

async fn a_rate_limited_query_or_close_answers_503_and_leaves_the_order_as_it_was(db: TestDb) {
    let t = spawn_app(db, Options::default()).await;
    let o = t.create(order_body(310)).await;
    let no = o["out_trade_no"].as_str().unwrap().to_owned();
    t.fault(json!({"kind": "frequency_limited", "api": "orderquery", "count": 1}))
        .await;
    let (s, v) = t
        .api(Method::GET, &format!("/v1/orders/{no}?sync=true"), None, None)
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (503, Some("wechatpay_unavailable")),
        "{}: a rate limit is not a refusal: {v}",
        t.engine()
    );
    t.fault(json!({"kind": "frequency_limited", "api": "closeorder", "count": 1}))
        .await;
    let (s, v) = t.api(Method::POST, &format!("/v1/orders/{no}/close"), None, None).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (503, Some("wechatpay_unavailable")),
        "{v}"
    );
    assert_eq!(t.sim_faults_fired("frequency_limited").await, 2);
    assert_eq!(t.order(&no).await["status"], "pending");
    // Repeated once WeChat Pay takes calls again, the close goes through.
    let (s, v) = t.api(Method::POST, &format!("/v1/orders/{no}/close"), None, None).await;
    assert_eq!((s, v["status"].as_str()), (200, Some("closed")), "{v}");
    t.stop().await;
}
engines!(a_rate_limited_query_or_close_answers_503_and_leaves_the_order_as_it_was);

async fn a_placed_order_asked_again_after_wechat_pay_closed_it_is_closed_not_failed(db: TestDb) {
    let t = spawn_app(db, Options::default()).await;
    let mut body = order_body(330);
    body["out_trade_no"] = json!("REPLACE-1");
    body["expires_in_secs"] = json!(7200);
    let first = t.create(body.clone()).await;
    assert_eq!(first["status"], "pending", "{first}");
    // The gateway's clock passes the prepay_id's lifetime but not the order's expiry, so the
    // same request asks WeChat Pay for a fresh prepay_id; WeChat Pay's passes its time_expire.
    t.app.clock().advance(Duration::from_secs(7001));
    asked_again_once_wechat_pay_closed_it(&t, body, 7201).await;
    t.stop().await;
}

/// Moves WeChat Pay's clock past the order's `time_expire` (`secs`), so that it closes the
/// order, and repeats the order's creation: WeChat Pay says `ORDERCLOSED`, and the gateway
/// closes the order after a query instead of failing it.
async fn asked_again_once_wechat_pay_closed_it(t: &TestApp, body: Value, secs: u64) {
    let (status, v) = t.sim_post("/simulator/clock", json!({"advance_secs": secs})).await;
    assert_eq!(status, 200, "{v}");
    let no = body["out_trade_no"].as_str().unwrap().to_owned();
    let (s, v) = t.api(Method::POST, "/v1/orders", Some(body), None).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (409, Some("order_not_pending")),
        "{}: {v}",
        t.engine()
    );
    assert_eq!(t.order(&no).await["status"], "closed", "{}", t.engine());
}
engines!(a_placed_order_asked_again_after_wechat_pay_closed_it_is_closed_not_failed);

async fn an_unanswered_order_that_wechat_pay_closed_is_closed_when_asked_again(db: TestDb) {
    let t = spawn_app(db, Options::default()).await;
    // Every attempt reaches WeChat Pay, which makes the order, and every answer is lost.
    t.fault(json!({"kind": "lose_answer", "api": "unifiedorder", "count": 3}))
        .await;
    let mut body = order_body(350);
    body["out_trade_no"] = json!("REPLACE-3");
    body["expires_in_secs"] = json!(600);
    let (s, v) = t.api(Method::POST, "/v1/orders", Some(body.clone()), None).await;
    assert_eq!(s, 503, "{v}");
    asked_again_once_wechat_pay_closed_it(&t, body, 601).await;
    t.stop().await;
}
engines!(an_unanswered_order_that_wechat_pay_closed_is_closed_when_asked_again);

async fn an_orderclosed_the_query_does_not_confirm_settles_nothing(db: TestDb) {
    let t = spawn_app(db, Options::default()).await;
    // ORDERCLOSED for a number WeChat Pay has no order of (its query says ORDERNOTEXIST).
    t.fault(json!({"kind": "error_code", "api": "unifiedorder", "count": 1, "err_code": "ORDERCLOSED"}))
        .await;
    let mut body = order_body(360);
    body["out_trade_no"] = json!("REPLACE-4");
    let (s, v) = t.api(Method::POST, "/v1/orders", Some(body.clone()), None).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (503, Some("wechatpay_unavailable")),
        "{}: the two answers disagree: {v}",
        t.engine()
    );
    assert_eq!(t.order("REPLACE-4").await["status"], "pending");
    let o = t.create(body).await;
    let sim = t.sim_get("/simulator/orders/REPLACE-4").await;
    assert_eq!(o["prepay_id"], sim["prepay_id"], "{o} {sim}");
    t.stop().await;
}
engines!(an_orderclosed_the_query_does_not_confirm_settles_nothing);

async fn a_refused_fresh_prepay_id_leaves_a_placed_order_pending(db: TestDb) {
    let t = spawn_app(db, Options::default()).await;
    let mut body = order_body(340);
    body["out_trade_no"] = json!("REPLACE-2");
    body["expires_in_secs"] = json!(7200);
    let first = t.create(body.clone()).await;
    t.app.clock().advance(Duration::from_secs(7001));
    t.fault(json!({"kind": "error_code", "api": "unifiedorder", "count": 1, "err_code": "PARAM_ERROR"}))
        .await;
    let (s, v) = t.api(Method::POST, "/v1/orders", Some(body), None).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (502, Some("wechatpay_rejected")),
        "{v}"
    );
    // WeChat Pay refused the new prepay_id, not the order it has: still payable as placed.
    let o = t.order("REPLACE-2").await;
    assert_eq!(o["status"], "pending", "{}: {o}", t.engine());
    assert_eq!(
        t.event_kinds("REPLACE-2").await,
        ["created", "prepay"],
        "nothing recorded against it"
    );
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("stays pending")),
        "the 502 says the order is still payable: {v}"
    );
    // Paid with the parameters of the first answer.
    assert_eq!(
        t.sim_get("/simulator/orders/REPLACE-2").await["prepay_id"],
        first["prepay_id"]
    );
    t.sim_pay(json!({"out_trade_no": "REPLACE-2"})).await;
    t.wait_status("REPLACE-2", "paid").await;
    t.stop().await;
}
engines!(a_refused_fresh_prepay_id_leaves_a_placed_order_pending);

async fn a_refusal_for_good_is_asked_once_surfaced_and_keeps_its_number(db: TestDb) {
    let t = spawn_app(db, Options::default()).await;
    let codes = ["PARAM_ERROR", "SIGNERROR", "NOAUTH", "OUT_TRADE_NO_USED"];
    for (i, code) in codes.iter().enumerate() {
        t.fault(json!({"kind": "error_code", "api": "unifiedorder", "count": 1, "err_code": code}))
            .await;
        let no = format!("FINAL-{i}");
        let mut body = order_body(100 + i as u64);
        body["out_trade_no"] = json!(no);
        let before = t.sim_calls("unifiedorder").await;
        let (s, v) = t.api(Method::POST, "/v1/orders", Some(body), None).await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (502, Some("wechatpay_rejected")),
            "{code}: {v}"
        );
        assert!(
            v["error"]["message"].as_str().is_some_and(|m| m.contains(code)),
            "{code} is named: {v}"
        );
        assert_eq!(
            t.sim_calls("unifiedorder").await,
            before + 1,
            "{code}: asked once, not again"
        );
        let o = t.order(&no).await;
        assert_eq!(o["status"], "failed", "{code}: {o}");
    }
    assert_eq!(t.sim_faults_fired("error_code").await, codes.len() as u64);
    // No other number was made up for a retry: the gateway holds these orders and no more.
    let (s, list) = t.api(Method::GET, "/v1/orders?limit=100", None, None).await;
    assert_eq!(s, 200, "{list}");
    let numbers: Vec<&str> = list["orders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["out_trade_no"].as_str().unwrap())
        .collect();
    assert_eq!(numbers.len(), codes.len(), "{numbers:?}");
    crate::support::figure(
        &["28"],
        format!(
            "{}: {} → 1 unifiedorder each, 502 wechatpay_rejected naming the code, the order failed under its own number, no other number made",
            t.engine(),
            codes.join(", ")
        ),
    );
    t.stop().await;
}
engines!(a_refusal_for_good_is_asked_once_surfaced_and_keeps_its_number);

async fn get_with_sync_asks_wechat_pay_and_close_never_closes_a_paid_order(db: TestDb) {
    let t = spawn_app(db, Options::default()).await;
    let o = t.create(order_body(600)).await;
    let no = o["out_trade_no"].as_str().unwrap().to_owned();
    // Paid upstream, but every notification is refused as forged: only asking tells.
    t.fault(json!({"kind": "notify_bad_signature", "out_trade_no": no, "for_ms": 60000}))
        .await;
    t.sim_pay(json!({"out_trade_no": no})).await;
    assert_eq!(t.order(&no).await["status"], "pending");
    let (s, v) = t.api(Method::POST, &format!("/v1/orders/{no}/close"), None, None).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (409, Some("order_paid")),
        "{}: {v}",
        t.engine()
    );
    let synced = t.order(&no).await;
    assert_eq!(synced["status"], "paid", "ORDERPAID made it paid: {synced}");
    let kinds = t.event_kinds(&no).await;
    assert!(!kinds.contains(&"closed".to_owned()), "{kinds:?}");

    let o2 = t.create(order_body(601)).await;
    let no2 = o2["out_trade_no"].as_str().unwrap().to_owned();
    t.fault(json!({"kind": "notify_bad_signature", "out_trade_no": no2, "for_ms": 60000}))
        .await;
    t.sim_pay(json!({"out_trade_no": no2})).await;
    let (_, v) = t
        .api(Method::GET, &format!("/v1/orders/{no2}?sync=true"), None, None)
        .await;
    assert_eq!(v["status"], "paid", "{v}");
    assert_eq!(event(&v, "paid")["detail"]["source"], "query");

    let o3 = t.create(order_body(602)).await;
    let no3 = o3["out_trade_no"].as_str().unwrap().to_owned();
    let (s, v) = t
        .api(Method::POST, &format!("/v1/orders/{no3}/close"), None, None)
        .await;
    assert_eq!((s, v["status"].as_str()), (200, Some("closed")), "{v}");
    let sim = t.sim_get(&format!("/simulator/orders/{no3}")).await;
    assert_eq!(sim["trade_state"], "CLOSED");
    t.stop().await;
}
engines!(get_with_sync_asks_wechat_pay_and_close_never_closes_a_paid_order);

#[tokio::test]
async fn a_rejection_is_kept_with_the_senders_values_clipped() {
    let t = spawn_app(TestDb::sqlite(), Options::default()).await;
    let long = "9".repeat(1000);
    let no = format!("REJ-{}", "x".repeat(300));
    let body = format!("<xml><mch_id>{long}</mch_id><appid>wx0</appid><out_trade_no>{no}</out_trade_no></xml>");
    let (status, _) = t.notify(body).await;
    assert_eq!(status, 400);
    // The order number is clipped to 128 characters, the reason (which quotes the merchant
    // number) to 256; the records are written a moment later, in a batch.
    let clipped_no: String = no.chars().take(128).collect();
    eventually("the rejection is kept", async || {
        !t.notification_records(&clipped_no).await.is_empty()
    })
    .await;
    let records = t.notification_records(&clipped_no).await;
    let (verdict, reason) = &records[0];
    assert_eq!(verdict, "rejected");
    let reason = reason.as_deref().unwrap();
    assert!(
        reason.starts_with("no merchant configured for mch_id \"999"),
        "{reason}"
    );
    assert_eq!(reason.chars().count(), 256, "{reason}");
    t.stop().await;
}

#[tokio::test]
async fn a_failed_payment_notification_is_acknowledged_and_leaves_the_order_payable() {
    let t = spawn_app(TestDb::sqlite(), Options::default()).await;
    let o = t.create(order_body(100)).await;
    let no = o["out_trade_no"].as_str().unwrap().to_owned();
    let body = notification(DEFAULT, &no, 100, "", |f| {
        f.set("result_code", "FAIL");
        f.set("err_code", "NOTENOUGH");
        f.set("err_code_des", "余额不足");
        f.remove("transaction_id");
    });
    assert_eq!(t.notify(body).await, (200, SUCCESS.to_owned()));
    assert_eq!(t.order(&no).await["status"], "pending");
    // The report is kept as what it is, with WeChat Pay's reason.
    assert_eq!(
        t.notification_records(&no).await,
        [("payment_failed".to_owned(), Some("NOTENOUGH 余额不足".to_owned()))]
    );
    // Payable: the payer tries again and succeeds, and the order is paid.
    t.sim_pay(json!({"out_trade_no": no})).await;
    let paid = t.wait_status(&no, "paid").await;
    assert_eq!(paid["amount_fen"], 100, "{paid}");
    t.stop().await;
}

#[tokio::test]
async fn health_readiness_and_metrics_are_served() {
    let t = spawn_app(TestDb::sqlite(), Options::default()).await;
    let o = t.create(order_body(100)).await;
    t.notify(paid_notification(
        o["out_trade_no"].as_str().unwrap(),
        100,
        "4200000000000000000000000003",
    ))
    .await;
    // The gauges read from the database follow within a second.
    t.wait_metric("wxpay_orders{status=\"paid\"} 1").await;
    for (path, needle) in [
        ("/healthz", "ok"),
        ("/readyz", "ready"),
        ("/metrics", "wxpay_orders{status=\"paid\"} 1"),
        ("/metrics", "wxpay_notifications_total{verdict=\"applied\"} 1"),
        (
            "/metrics",
            "wxpay_upstream_duration_seconds_count{api=\"unifiedorder\"} 1",
        ),
        ("/metrics", "wxpay_outbox_backlog 1"),
    ] {
        let r = t.http.get(format!("{}{path}", t.url)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert!(r.headers().contains_key("x-request-id"));
        let text = r.text().await.unwrap();
        assert!(text.contains(needle), "{path} lacks {needle}:\n{text}");
    }
    t.stop().await;
}

/// How the primary host of [`the_backup_host_takes_over`] is down.
#[derive(Clone, Copy)]
enum Down {
    /// It answers every call 502 with a plain body, as a broken load balancer does.
    BadGateway,
    /// It answers every call 502 with an HTML page, as nginx in front of a dead upstream does.
    HtmlBadGateway,
    /// It answers every call 502 with an unsigned `return_code=FAIL`, which anyone on the way
    /// can write: not WeChat Pay's answer.
    UnsignedFail,
    /// Nothing listens on its port: every connection is refused.
    ClosedPort,
}

#[tokio::test]
async fn after_repeated_502s_the_backup_host_takes_over_until_its_time_is_up() {
    the_backup_host_takes_over(Down::BadGateway).await;
}

#[tokio::test]
async fn after_repeated_502_html_pages_the_backup_host_takes_over_until_its_time_is_up() {
    the_backup_host_takes_over(Down::HtmlBadGateway).await;
}

#[tokio::test]
async fn after_repeated_unsigned_fails_in_502s_the_backup_host_takes_over_and_no_order_fails() {
    the_backup_host_takes_over(Down::UnsignedFail).await;
}

#[tokio::test]
async fn with_the_primary_port_closed_the_backup_host_takes_over_until_its_time_is_up() {
    the_backup_host_takes_over(Down::ClosedPort).await;
}

async fn the_backup_host_takes_over(down: Down) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    let t = spawn_app(TestDb::sqlite(), Options::default()).await;
    // The primary host is the test's own, and counts the calls it gets; the backup is the
    // simulator.
    let primary_calls = Arc::new(AtomicUsize::new(0));
    let counted = primary_calls.clone();
    let page = match down {
        Down::HtmlBadGateway => {
            "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>nginx</body>\r\n</html>"
        }
        Down::UnsignedFail => {
            "<xml><return_code><![CDATA[FAIL]]></return_code><return_msg><![CDATA[系统繁忙]]></return_msg></xml>"
        }
        Down::BadGateway | Down::ClosedPort => "bad gateway",
    };
    let primary = axum::Router::new().fallback(move || {
        let counted = counted.clone();
        async move {
            counted.fetch_add(1, Ordering::SeqCst);
            (axum::http::StatusCode::BAD_GATEWAY, page)
        }
    });
    let primary_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let primary_url = format!("http://{}", primary_listener.local_addr().unwrap());
    match down {
        Down::BadGateway | Down::HtmlBadGateway | Down::UnsignedFail => {
            drop(tokio::spawn(
                async move { axum::serve(primary_listener, primary).await },
            ))
        }
        // The port was just free; with its listener gone nothing answers on it.
        Down::ClosedPort => drop(primary_listener),
    }

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let mut merchants = crate::support::merchants(&t.sim_url);
    merchants[0].base_url = primary_url;
    merchants[0].backup_url = Some(t.sim_url.clone());
    let upstream = Options::default().upstream;
    let config = wxpay_gateway::Config {
        public_url: url.clone(),
        api_tokens: vec![wxpay_gateway::Secret::new(crate::support::TOKEN)],
        merchants,
        webhook: None,
        upstream: upstream.clone(),
        jobs: Options::default().jobs,
        default_order_ttl: std::time::Duration::from_secs(7200),
        reconcile: Default::default(),
        limits: wxpay_gateway::Limits::default(),
        metrics_token: None,
        console: None,
    };
    let db = TestDb::sqlite();
    let app = wxpay_gateway::App::new(config, db.store().await).unwrap();
    let served = app.clone();
    tokio::spawn(async move { wxpay_gateway::serve(&served, listener, std::future::pending()).await });
    let http = reqwest::Client::new();
    let create = async |no: &str| {
        let mut body = order_body(100);
        body["out_trade_no"] = json!(no);
        let r = http
            .post(format!("{url}/v1/orders"))
            .bearer_auth(crate::support::TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap();
        r.status().as_u16()
    };
    let failures = upstream.backup_after_failures as usize;
    // The failures in a row (the attempts of the first call) switch to the backup.
    assert_eq!(create("BACKUP-1").await, 503);
    let refused = match down {
        Down::BadGateway | Down::HtmlBadGateway | Down::UnsignedFail => failures,
        Down::ClosedPort => 0,
    };
    assert_eq!(primary_calls.load(Ordering::SeqCst), refused);
    // The backup host answers, and the primary is left alone for `backup_for`.
    assert_eq!(create("BACKUP-2").await, 201);
    assert_eq!(t.sim_get("/simulator/orders/BACKUP-2").await["trade_state"], "NOTPAY");
    app.clock().advance(upstream.backup_for / 2);
    assert_eq!(create("BACKUP-3").await, 201);
    assert_eq!(primary_calls.load(Ordering::SeqCst), refused, "still on the backup");
    let on_backup = t.sim_calls("unifiedorder").await;
    // Once the gateway's clock has passed it, calls go to the primary again: still down, so
    // the order gets no answer, and none of its attempts reached the backup.
    app.clock().advance(upstream.backup_for / 2 + Duration::from_secs(1));
    assert_eq!(
        create("BACKUP-4").await,
        503,
        "the primary is tried again after backup_for"
    );
    assert_eq!(t.sim_calls("unifiedorder").await, on_backup);
    if !matches!(down, Down::ClosedPort) {
        assert_eq!(primary_calls.load(Ordering::SeqCst), 2 * failures);
    }
    // What the primary said was never taken as WeChat Pay's refusal: the orders it answered
    // are pending, to be repeated.
    for no in ["BACKUP-1", "BACKUP-4"] {
        let order: serde_json::Value = http
            .get(format!("{url}/v1/orders/{no}"))
            .bearer_auth(crate::support::TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(order["status"], "pending", "{no}: {order}");
    }
    t.stop().await;
}

async fn while_wechat_pay_fails_orders_new_ones_are_refused_at_once_and_notifications_still_apply(db: TestDb) {
    let mut options = Options::default();
    options.upstream.attempts = 1;
    options.upstream.breaker_after_failures = 3;
    options.upstream.breaker_open_for = Duration::from_secs(30);
    let t = spawn_app(db, options).await;
    let before = t.create(order_body(700)).await;
    let before_no = before["out_trade_no"].as_str().unwrap().to_owned();
    let mut placed_body = order_body(800);
    placed_body["out_trade_no"] = json!("CB-PLACED");
    let placed = t.create(placed_body.clone()).await;
    t.fault(json!({"kind": "system_error", "api": "unifiedorder", "for_ms": 600_000}))
        .await;
    // Three orders fail at WeChat Pay: the third opens the breaker.
    for _ in 0..3 {
        let (status, v) = t.api(Method::POST, "/v1/orders", Some(order_body(100)), None).await;
        assert!(status == 502 || status == 503, "{}: {status} {v}", t.engine());
    }
    let calls = t.sim_calls("unifiedorder").await;
    let stored_before = t.stored_orders().await;
    assert_eq!(stored_before, 5, "the first two orders and the three that failed");
    // The next is refused at once: nothing stored, nothing sent.
    let started = std::time::Instant::now();
    let (status, v) = t.api(Method::POST, "/v1/orders", Some(order_body(100)), None).await;
    let fast = started.elapsed();
    assert_eq!(status, 503, "{}: {v}", t.engine());
    assert_eq!(v["error"]["code"], "wechatpay_unavailable", "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("refused for 30 s"),
        "{v}"
    );
    assert_eq!(t.sim_calls("unifiedorder").await, calls, "no call to WeChat Pay");
    assert_eq!(t.stored_orders().await, stored_before, "no order stored");
    // Notifications need nothing from WeChat Pay: they keep applying.
    let (status, reply) = t
        .notify(paid_notification(&before_no, 700, "4200000000000000000000000700"))
        .await;
    assert_eq!((status, reply.as_str()), (200, SUCCESS));
    assert_eq!(t.order(&before_no).await["status"], "paid");
    // A retry of an order placed before needs no call: it gets its answer, open or not, and
    // takes no probe.
    let (status, again) = t.api(Method::POST, "/v1/orders", Some(placed_body.clone()), None).await;
    assert_eq!((status, &again["prepay_id"]), (200, &placed["prepay_id"]), "{again}");
    assert_eq!(t.sim_calls("unifiedorder").await, calls, "no call for it");
    // After its time one order goes through as the probe; WeChat Pay is back, so it closes.
    t.clear_faults().await;
    t.app.clock().advance(Duration::from_secs(31));
    let (status, again) = t.api(Method::POST, "/v1/orders", Some(placed_body), None).await;
    assert_eq!((status, &again["prepay_id"]), (200, &placed["prepay_id"]), "{again}");
    t.create(order_body(100)).await;
    t.create(order_body(100)).await;
    crate::support::figure(
        &["31"],
        format!(
            "{}: after 3 orders failed with SYSTEMERROR the 4th was refused in {} µs with 503, nothing stored or sent; a notification still applied; 31 s later the probe and the next order were placed",
            t.engine(),
            fast.as_micros()
        ),
    );
    t.stop().await;
}
engines!(while_wechat_pay_fails_orders_new_ones_are_refused_at_once_and_notifications_still_apply);
