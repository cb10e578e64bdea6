//! A merchant on APIv3 end to end, against the simulator's APIv3, on both engines: orders,
//! `wx.requestPayment` parameters, notifications verified and applied once, refunds, the
//! keys (public key, platform certificates, downloaded certificates, both at once), hostile
//! notifications, and the day's bill.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use wxpay_gateway::reconcile::{Day, Quiet, reconcile};
use wxpay_protocol::v3::notify::{Envelope, Resource};
use wxpay_protocol::v3::{MerchantKey, SignedHeaders};
use wxpay_simulator::{TEST_APIV3_KEY, TEST_APPID, TEST_MCH_ID, V3Signer};

use crate::support::engines;
use crate::support::{
    Options, TestApp, TestDb, Trusts, V3Setup, eventually, order_body, quick_jobs, spawn_app, v3_keys_dir,
};

fn v3(signer: V3Signer, trusts: Trusts) -> Options {
    Options {
        v3: Some(V3Setup { signer, trusts }),
        ..Options::default()
    }
}

/// The notification attempts the simulator made for an order: (HTTP status, acknowledged).
async fn attempts(t: &TestApp, no: &str) -> Vec<(Option<u64>, bool)> {
    t.sim_get(&format!("/simulator/notifications?out_trade_no={no}")).await["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["status"].as_u64(), a["acknowledged"] == true))
        .collect()
}

async fn refund(t: &TestApp, order: &str, body: Value) -> Value {
    let (status, v) = t
        .api(Method::POST, &format!("/v1/orders/{order}/refunds"), Some(body), None)
        .await;
    assert_eq!(status, 201, "{v}");
    v
}

async fn refund_status(t: &TestApp, no: &str) -> Value {
    t.api(Method::GET, &format!("/v1/refunds/{no}"), None, None).await.1["status"].clone()
}

async fn a_v3_rate_limit_or_unavailable_answer_keeps_the_order_pending_for_a_later_repeat(db: TestDb) {
    let t = spawn_app(db, v3(V3Signer::PublicKey, Trusts::PublicKey)).await;
    for (i, code) in ["SERVICE_UNAVAILABLE", "FREQUENCY_LIMITED"].into_iter().enumerate() {
        t.fault(json!({"kind": "error_code", "api": "v3_jsapi", "count": 1, "err_code": code}))
            .await;
        let no = format!("V3-LATER-{i}");
        let mut body = order_body(400 + i as u64);
        body["out_trade_no"] = json!(no);
        let (s, v) = t.api(Method::POST, "/v1/orders", Some(body.clone()), None).await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (503, Some("wechatpay_unavailable")),
            "{}: {code} says not now, not never: {v}",
            t.engine()
        );
        assert_eq!(t.order(&no).await["status"], "pending", "{code}");
        assert_eq!(t.event_kinds(&no).await, ["created", "upstream_unknown"], "{code}");
        let o = t.create(body).await;
        let sim = t.sim_get(&format!("/simulator/orders/{no}")).await;
        assert_eq!(o["prepay_id"], sim["prepay_id"], "{code}: {o} {sim}");
    }
    assert_eq!(t.sim_faults_fired("error_code").await, 2);
    t.stop().await;
}
engines!(a_v3_rate_limit_or_unavailable_answer_keeps_the_order_pending_for_a_later_repeat);

async fn a_v3_payment_and_refund_go_through_with_every_notification_applied_once(db: TestDb) {
    let t = spawn_app(
        db,
        Options {
            jobs: quick_jobs(),
            ..v3(V3Signer::PublicKey, Trusts::PublicKey)
        },
    )
    .await;
    let mut body = order_body(2588);
    body["out_trade_no"] = json!("V3-FLOW-1");
    let o = t.create(body).await;
    assert_eq!(o["status"], "pending", "{o}");
    // wx.requestPayment with signType RSA, signed with the merchant key: it verifies with the
    // merchant certificate.
    let p = &o["pay_params"];
    assert_eq!(p["signType"], "RSA", "{o}");
    let message = format!(
        "{}\n{}\n{}\n{}\n",
        p["appId"].as_str().unwrap(),
        p["timeStamp"].as_str().unwrap(),
        p["nonceStr"].as_str().unwrap(),
        p["package"].as_str().unwrap()
    );
    let cert = wxpay_protocol::v3::Certificate::from_pem(
        &std::fs::read_to_string(v3_keys_dir().join(TEST_MCH_ID).join("apiclient_cert.pem")).unwrap(),
    )
    .unwrap();
    let sig = base64_decode(p["paySign"].as_str().unwrap());
    assert!(cert.public_key().verifies(message.as_bytes(), &sig), "paySign verifies");
    assert_eq!(p["appId"], TEST_APPID);

    t.sim_pay(json!({"out_trade_no": "V3-FLOW-1"})).await;
    let paid = t.wait_status("V3-FLOW-1", "paid").await;
    assert!(paid["transaction_id"].as_str().unwrap().starts_with("4200"), "{paid}");
    // Answered 204: the simulator does not send it again.
    assert_eq!(attempts(&t, "V3-FLOW-1").await, [(Some(204), true)]);
    assert_eq!(t.event_kinds("V3-FLOW-1").await, ["created", "prepay", "paid"]);

    let r = refund(
        &t,
        "V3-FLOW-1",
        json!({"amount_fen": 588, "out_refund_no": "V3-FLOW-1-R1"}),
    )
    .await;
    assert_eq!(r["status"], "pending", "{r}");
    eventually("the refund succeeds", async || {
        refund_status(&t, "V3-FLOW-1-R1").await == "succeeded"
    })
    .await;
    let o = t.order("V3-FLOW-1").await;
    assert_eq!(o["refunded_fen"], 588, "{o}");
    t.stop().await;
}
engines!(a_v3_payment_and_refund_go_through_with_every_notification_applied_once);

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

async fn v3_notifications_that_are_not_wechat_pays_change_nothing(db: TestDb) {
    // WeChat Pay's first retry comes 1.5 s after a refusal here: time to see that the refused
    // delivery changed nothing before the genuine one arrives.
    let t = spawn_app(
        db,
        Options {
            sim: Box::new(|c| c.time_scale = 10.0),
            ..v3(V3Signer::PublicKey, Trusts::PublicKey)
        },
    )
    .await;
    let cases = [
        ("notify_probe", "V3-BAD-PROBE"),
        ("notify_stale_timestamp", "V3-BAD-STALE"),
        ("notify_unknown_serial", "V3-BAD-SERIAL"),
        ("notify_bad_signature", "V3-BAD-SIGN"),
        ("notify_tampered_tag", "V3-BAD-TAG"),
        ("notify_wrong_amount", "V3-BAD-AMOUNT"),
    ];
    for (kind, no) in cases {
        let mut body = order_body(300);
        body["out_trade_no"] = json!(no);
        t.create(body).await;
        t.fault(json!({"kind": kind, "out_trade_no": no})).await;
        t.sim_pay(json!({"out_trade_no": no})).await;
    }
    for (kind, no) in cases {
        eventually(&format!("{kind} is answered"), async || {
            !attempts(&t, no).await.is_empty()
        })
        .await;
        let first = attempts(&t, no).await[0];
        assert_eq!(first, (Some(400), false), "{kind} on {}", t.engine());
        assert_eq!(t.order(no).await["status"], "pending", "{kind} on {}", t.engine());
    }
    // The fault was for one delivery: WeChat Pay's next one is genuine and is applied (the
    // wrong amount one too: its retry carries the right amount).
    for (kind, no) in cases {
        t.wait_status(no, "paid").await;
        let all = attempts(&t, no).await;
        assert_eq!(all.last(), Some(&(Some(204), true)), "{kind}: {all:?}");
    }
    t.stop().await;
}
engines!(v3_notifications_that_are_not_wechat_pays_change_nothing);

async fn a_storm_of_duplicate_v3_notifications_pays_the_order_once(db: TestDb) {
    let t = spawn_app(db, v3(V3Signer::PublicKey, Trusts::PublicKey)).await;
    let mut body = order_body(100);
    body["out_trade_no"] = json!("V3-STORM");
    t.create(body).await;
    t.fault(json!({"kind": "notify_duplicate", "out_trade_no": "V3-STORM", "copies": 20}))
        .await;
    t.sim_pay(json!({"out_trade_no": "V3-STORM"})).await;
    t.wait_status("V3-STORM", "paid").await;
    let app = t.app.clone();
    eventually("twenty copies arrive", async || {
        app.metrics().notifications_with("applied") + app.metrics().notifications_with("duplicate") >= 20
    })
    .await;
    assert_eq!(t.app.metrics().notifications_with("applied"), 1, "{}", t.engine());
    assert_eq!(t.event_kinds("V3-STORM").await, ["created", "prepay", "paid"]);
    t.stop().await;
}
engines!(a_storm_of_duplicate_v3_notifications_pays_the_order_once);

/// A notification made here with WeChat Pay's public-key private half (which the simulator
/// writes for tests): correctly signed and encrypted, saying what the test wants.
fn forged_payment(no: &str, total: u64, currency: &str) -> (String, Vec<(&'static str, String)>) {
    let dir = v3_keys_dir();
    let id = std::fs::read_to_string(dir.join("pub_key_id"))
        .unwrap()
        .trim()
        .to_owned();
    let key = MerchantKey::from_pem(&std::fs::read_to_string(dir.join("pub_key_private.pem")).unwrap(), &id).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let resource = json!({
        "appid": TEST_APPID, "mchid": TEST_MCH_ID, "out_trade_no": no,
        "transaction_id": "4200000000000000000000009999", "trade_type": "JSAPI",
        "trade_state": "SUCCESS", "trade_state_desc": "支付成功", "bank_type": "OTHERS",
        "success_time": wxpay_protocol::v3::calls::rfc3339_beijing(now),
        "payer": {"openid": "o"}, "amount": {"total": total, "payer_total": total, "currency": currency, "payer_currency": currency},
    });
    let sealed = Resource::seal(
        TEST_APIV3_KEY.as_bytes(),
        "transaction",
        "forgednonce1",
        resource.to_string().as_bytes(),
    )
    .unwrap();
    let body = Envelope::new(
        "EV-test",
        &wxpay_protocol::v3::calls::rfc3339_beijing(now),
        "TRANSACTION.SUCCESS",
        "支付成功",
        sealed,
    )
    .to_json();
    let signed = SignedHeaders::sign(&key, &id, now, "abcdefghijklmnopqrstuvwxyz012345", body.as_bytes()).unwrap();
    (body, signed.headers().into())
}

async fn post_v3(t: &TestApp, merchant: &str, body: String, headers: &[(&str, String)]) -> (u16, String) {
    let mut r = t.http.post(format!("{}/notify/v3/{merchant}", t.url)).body(body);
    for (k, v) in headers {
        r = r.header(*k, v.as_str());
    }
    let resp = r.send().await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

async fn a_signed_v3_payment_in_another_currency_is_refused_and_a_correct_one_applied_once(db: TestDb) {
    let t = spawn_app(db, v3(V3Signer::PublicKey, Trusts::PublicKey)).await;
    let mut body = order_body(100);
    body["out_trade_no"] = json!("V3-CURRENCY");
    t.create(body).await;
    let (b, h) = forged_payment("V3-CURRENCY", 100, "USD");
    let (status, reply) = post_v3(&t, "default", b, &h).await;
    assert_eq!(status, 400, "{}: {reply}", t.engine());
    assert!(
        reply.contains("\"code\":\"FAIL\"") && reply.contains("currency"),
        "{reply}"
    );
    assert_eq!(t.order("V3-CURRENCY").await["status"], "pending");
    // The same notification to another merchant's path is not verified with these keys.
    let (b, h) = forged_payment("V3-CURRENCY", 100, "CNY");
    let (status, _) = post_v3(&t, "hmac", b.clone(), &h).await;
    assert_eq!(status, 400);
    assert_eq!(t.order("V3-CURRENCY").await["status"], "pending");
    // In CNY: applied, then the same again changes nothing.
    assert_eq!(post_v3(&t, "default", b.clone(), &h).await.0, 204, "{}", t.engine());
    assert_eq!(post_v3(&t, "default", b, &h).await.0, 204);
    assert_eq!(t.order("V3-CURRENCY").await["status"], "paid");
    assert_eq!(t.app.metrics().notifications_with("applied"), 1);
    assert_eq!(t.app.metrics().notifications_with("duplicate"), 1);
    t.stop().await;
}
engines!(a_signed_v3_payment_in_another_currency_is_refused_and_a_correct_one_applied_once);

/// Pays an order through the gateway and the simulator under one key setup.
async fn pays_under(signer: V3Signer, trusts: Trusts) {
    let t = spawn_app(TestDb::sqlite(), v3(signer, trusts)).await;
    let no = format!("V3-KEYS-{signer:?}-{trusts:?}").replace(['(', ')'], "");
    let mut body = order_body(100);
    body["out_trade_no"] = json!(no);
    let (status, v) = t.api(Method::POST, "/v1/orders", Some(body), None).await;
    assert_eq!(status, 201, "{signer:?} verified with {trusts:?}: {v}");
    t.sim_pay(json!({"out_trade_no": no})).await;
    t.wait_status(&no, "paid").await;
    t.stop().await;
}

#[tokio::test]
async fn answers_and_notifications_verify_with_each_kind_of_key_and_with_both_during_a_switch_over() {
    pays_under(V3Signer::PublicKey, Trusts::PublicKey).await;
    pays_under(V3Signer::Certificate, Trusts::Certificate).await;
    // Nothing configured: the certificates are downloaded from /v3/certificates.
    pays_under(V3Signer::Certificate, Trusts::Download).await;
    // The switch-over: both configured, whichever WeChat Pay signs with.
    pays_under(V3Signer::PublicKey, Trusts::Both).await;
    pays_under(V3Signer::Certificate, Trusts::Both).await;
}

#[tokio::test]
async fn a_gateway_that_trusts_only_the_certificate_refuses_answers_signed_with_another_key() {
    // WeChat Pay signs with the public key; the gateway knows only the certificate, and the
    // downloaded list names only that certificate: nothing is accepted.
    let t = spawn_app(TestDb::sqlite(), v3(V3Signer::PublicKey, Trusts::Certificate)).await;
    let mut body = order_body(100);
    body["out_trade_no"] = json!("V3-UNTRUSTED");
    let (status, v) = t.api(Method::POST, "/v1/orders", Some(body), None).await;
    assert_ne!(status, 201, "an unverifiable answer must not make an order: {v}");
    assert!(
        v.to_string().contains("untrustworthy") || v.to_string().contains("serial"),
        "{v}"
    );
    t.stop().await;
}

async fn a_v3_day_reconciles_against_the_trade_bill(db: TestDb) {
    let t = spawn_app(
        db,
        Options {
            sim: Box::new(|c| c.bills_immediately = true),
            pin_beijing_noon: true,
            jobs: quick_jobs(),
            ..v3(V3Signer::PublicKey, Trusts::PublicKey)
        },
    )
    .await;
    t.paid_order("V3-RECON-1", 1999).await;
    t.paid_order("V3-RECON-2", 7).await;
    refund(
        &t,
        "V3-RECON-1",
        json!({"amount_fen": 999, "out_refund_no": "V3-RECON-1-R"}),
    )
    .await;
    eventually("the refund succeeds", async || {
        refund_status(&t, "V3-RECON-1-R").await == "succeeded"
    })
    .await;
    let day = Day::containing(t.app.now());
    let report = reconcile(&t.app, None, &day, false, &Quiet).await.unwrap();
    assert!(
        report.balanced && report.found.is_empty(),
        "{}: {report:#?}",
        t.engine()
    );
    assert_eq!(
        (
            report.bill.payments,
            report.bill.payments_fen,
            report.bill.refunds,
            report.bill.refunds_fen
        ),
        (2, 2006, 1, 999)
    );
    t.stop().await;
}
engines!(a_v3_day_reconciles_against_the_trade_bill);

async fn a_v3_bill_slower_than_an_ordinary_call_still_downloads(db: TestDb) {
    let mut options = Options {
        sim: Box::new(|c| c.bills_immediately = true),
        pin_beijing_noon: true,
        ..v3(V3Signer::PublicKey, Trusts::PublicKey)
    };
    // Ordinary calls get a second; a busy merchant's bill takes longer than that to arrive.
    options.upstream.timeout = Duration::from_secs(1);
    let t = spawn_app(db, options).await;
    t.paid_order("V3-SLOWBILL-1", 1200).await;
    // Every attempt would be as slow: only waiting for it gets the bill.
    t.fault(json!({"kind": "delay", "api": "v3_billdownload", "count": 3, "delay_ms": 1500}))
        .await;
    let day = Day::containing(t.app.now());
    let report = reconcile(&t.app, None, &day, false, &Quiet).await.unwrap();
    assert!(report.balanced, "{}: {report:#?}", t.engine());
    assert_eq!((report.bill.payments, report.bill.payments_fen), (1, 1200));
    // The one slow download was waited for, not repeated.
    assert_eq!(t.sim_faults_fired("delay").await, 1);
    t.stop().await;
}
engines!(a_v3_bill_slower_than_an_ordinary_call_still_downloads);

async fn a_v3_bill_whose_download_address_is_refused_is_asked_for_again_once(db: TestDb) {
    let t = spawn_app(
        db,
        Options {
            sim: Box::new(|c| c.bills_immediately = true),
            pin_beijing_noon: true,
            ..v3(V3Signer::PublicKey, Trusts::PublicKey)
        },
    )
    .await;
    t.paid_order("V3-STALEURL-1", 1300).await;
    let day = Day::containing(t.app.now());
    // The address expired before the download (WeChat Pay gives it 30 s to 5 minutes): a
    // fresh one is asked for, and the day balances.
    t.fault(json!({"kind": "error_code", "api": "v3_billdownload", "err_code": "INVALID_REQUEST", "count": 1}))
        .await;
    let report = reconcile(&t.app, None, &day, false, &Quiet).await.unwrap();
    assert!(report.balanced, "{}: {report:#?}", t.engine());
    assert_eq!((report.bill.payments, report.bill.payments_fen), (1, 1300));
    assert_eq!(t.sim_calls("v3_tradebill").await, 2);
    // Refused again with the fresh address too: the run fails with WeChat Pay's reason
    // instead of asking for ever.
    t.fault(json!({"kind": "error_code", "api": "v3_billdownload", "err_code": "INVALID_REQUEST", "count": 2}))
        .await;
    let error = reconcile(&t.app, None, &day, false, &Quiet).await.unwrap_err();
    assert!(error.to_string().contains("INVALID_REQUEST"), "{error}");
    assert_eq!(t.sim_calls("v3_tradebill").await, 4);
    t.stop().await;
}
engines!(a_v3_bill_whose_download_address_is_refused_is_asked_for_again_once);

/// What the stand-in proxy answers a refund call with, by the refund number's last digit.
const MADE_UP: [(u16, &str); 3] = [
    (
        403,
        r#"{"code":"NOT_ENOUGH","message":"made up by whoever is in between"}"#,
    ),
    (404, "<html><body>404 Not Found</body></html>"),
    (504, "<html>Gateway Time-out</html>"),
];

/// A stand-in for a proxy in front of WeChat Pay: everything goes through to the simulator,
/// except refund calls, answered with a refusal the proxy made up (unsigned) or an HTML error
/// page, chosen by the last digit of the refund number in the body.
async fn tampering_front() -> (String, std::sync::Arc<std::sync::Mutex<String>>) {
    use axum::body::Bytes;
    use axum::http::{HeaderMap, Method as M, StatusCode, Uri};
    use axum::response::IntoResponse;
    let target = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let to = target.clone();
    let app = axum::Router::new().fallback(move |method: M, uri: Uri, headers: HeaderMap, body: Bytes| {
        let to = to.clone();
        async move {
            // Made here, once the gateway has installed its TLS provider.
            let client = reqwest::Client::new();
            if uri.path().starts_with("/v3/refund/") {
                let text = String::from_utf8_lossy(&body);
                let digit = text
                    .find("-R")
                    .and_then(|i| text[i + 2..].chars().next())
                    .and_then(|c| c.to_digit(10));
                let (status, page) = MADE_UP[digit.unwrap_or(0) as usize % MADE_UP.len()];
                let status = StatusCode::from_u16(status).unwrap();
                return (status, [("content-type", "application/json")], page.to_owned()).into_response();
            }
            let url = format!("{}{}", to.lock().unwrap(), uri);
            let mut r = client.request(method, url).body(body);
            for (k, v) in &headers {
                if k != "host" {
                    r = r.header(k, v);
                }
            }
            let resp = r.send().await.unwrap();
            let mut out = axum::response::Response::builder().status(resp.status().as_u16());
            for (k, v) in resp.headers() {
                out = out.header(k, v);
            }
            out.body(axum::body::Body::from(resp.bytes().await.unwrap())).unwrap()
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), target)
}

async fn unsigned_refusals_and_foreign_error_pages_never_fail_a_refund(db: TestDb) {
    let (front, target) = tampering_front().await;
    let t = spawn_app(
        db,
        Options {
            front: Some(Box::new(move |sim: &str| {
                *target.lock().unwrap() = sim.to_owned();
                front
            })),
            ..v3(V3Signer::PublicKey, Trusts::PublicKey)
        },
    )
    .await;
    for (i, made_up) in MADE_UP.iter().enumerate() {
        let no = format!("V3-FRONT-{i}");
        t.paid_order(&no, 100).await;
        let r = refund(
            &t,
            &no,
            json!({"amount_fen": 40, "out_refund_no": format!("{no}-R{i}")}),
        )
        .await;
        assert_eq!(r["status"], "pending", "{made_up:?}: {r}");
        assert_eq!(
            refund_status(&t, &format!("{no}-R{i}")).await,
            "pending",
            "{made_up:?} on {}",
            t.engine()
        );
    }
    t.stop().await;
}
engines!(unsigned_refusals_and_foreign_error_pages_never_fail_a_refund);

/// How the primary host of the APIv3 backup test fails.
#[derive(Clone, Copy, Debug)]
enum V3Down {
    /// Nothing listens on its port.
    ClosedPort,
    /// It answers every call 502 with a proxy's HTML page.
    BadGatewayPage,
}

async fn a_v3_merchant_fails_over_to_the_backup_host_and_back(down: V3Down) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let primary_calls = Arc::new(AtomicUsize::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let primary = format!("http://{}", listener.local_addr().unwrap());
    match down {
        // The port was just free; with its listener gone nothing answers on it.
        V3Down::ClosedPort => drop(listener),
        V3Down::BadGatewayPage => {
            let counted = primary_calls.clone();
            let page = axum::Router::new().fallback(move || {
                let counted = counted.clone();
                async move {
                    counted.fetch_add(1, Ordering::SeqCst);
                    (
                        axum::http::StatusCode::BAD_GATEWAY,
                        "<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>",
                    )
                }
            });
            drop(tokio::spawn(async move { axum::serve(listener, page).await }));
        }
    }
    let options = Options {
        front: Some(Box::new(move |_: &str| primary)),
        backup_is_simulator: true,
        ..v3(V3Signer::PublicKey, Trusts::PublicKey)
    };
    let upstream = options.upstream.clone();
    let t = spawn_app(TestDb::sqlite(), options).await;
    let create = async |no: &str| {
        let mut body = order_body(100);
        body["out_trade_no"] = json!(no);
        t.api(Method::POST, "/v1/orders", Some(body), None).await.0
    };
    // The attempts of the first order find the primary down, and switch to the backup.
    assert_eq!(create("V3-BACKUP-1").await, 503, "{down:?}");
    let failures = match down {
        V3Down::ClosedPort => 0,
        V3Down::BadGatewayPage => upstream.backup_after_failures as usize,
    };
    assert_eq!(primary_calls.load(Ordering::SeqCst), failures);
    // The backup (the simulator) answers, verified, and the primary is left alone.
    assert_eq!(create("V3-BACKUP-2").await, 201, "{down:?}");
    assert_eq!(
        t.sim_get("/simulator/orders/V3-BACKUP-2").await["trade_state"],
        "NOTPAY"
    );
    let on_backup = t.sim_calls("v3_jsapi").await;
    assert_eq!(primary_calls.load(Ordering::SeqCst), failures);
    // Once backup_for has passed on the gateway's clock, the primary is tried again.
    t.app.clock().advance(upstream.backup_for + Duration::from_secs(1));
    assert_eq!(create("V3-BACKUP-3").await, 503, "{down:?}: the primary again");
    assert_eq!(t.sim_calls("v3_jsapi").await, on_backup);
    // Nothing the primary said was taken as WeChat Pay's refusal.
    for no in ["V3-BACKUP-1", "V3-BACKUP-3"] {
        assert_eq!(t.order(no).await["status"], "pending", "{no}");
    }
    t.stop().await;
}

#[tokio::test]
async fn a_v3_merchant_whose_primary_port_is_closed_fails_over_to_the_backup_host_and_back() {
    a_v3_merchant_fails_over_to_the_backup_host_and_back(V3Down::ClosedPort).await;
}

#[tokio::test]
async fn a_v3_merchant_whose_primary_answers_502_pages_fails_over_to_the_backup_host_and_back() {
    a_v3_merchant_fails_over_to_the_backup_host_and_back(V3Down::BadGatewayPage).await;
}

async fn a_v3_refusal_after_a_lost_answer_within_one_request_leaves_the_refund_pending(db: TestDb) {
    let t = spawn_app(
        db,
        Options {
            jobs: quick_jobs(),
            // The refund stays processing: no notification settles it behind the checks.
            sim: Box::new(|c| c.refund_delay = Duration::from_secs(100_000_000)),
            ..v3(V3Signer::PublicKey, Trusts::PublicKey)
        },
    )
    .await;
    t.paid_order("V3-MIX", 100).await;
    // The first attempt is carried out (WeChat Pay makes the refund) and its answer lost; the
    // second is refused for good, perhaps because of what the first did.
    t.fault(json!({"kind": "lose_answer", "api": "v3_refund", "count": 1}))
        .await;
    t.fault(json!({"kind": "error_code", "api": "v3_refund", "count": 1, "err_code": "NOT_ENOUGH"}))
        .await;
    let r = refund(&t, "V3-MIX", json!({"amount_fen": 60, "out_refund_no": "V3-MIX-R1"})).await;
    assert_eq!(
        (r["status"].as_str(), r["upstream"].as_str()),
        (Some("pending"), Some("unknown")),
        "{}: {r}",
        t.engine()
    );
    assert_eq!(t.sim_faults_fired("error_code").await, 1);
    // The checks send it again, identical, and WeChat Pay answers with the refund it made.
    eventually("the refund is recorded as accepted", async || {
        t.api(Method::GET, "/v1/refunds/V3-MIX-R1", None, None).await.1["upstream"] == "created"
    })
    .await;
    let sim = t.sim_get("/simulator/orders/V3-MIX").await;
    assert_eq!(
        (
            sim["refunds"].as_array().unwrap().len(),
            sim["refunds"][0]["refund_fee"].as_i64()
        ),
        (1, Some(60)),
        "{sim}"
    );
    t.stop().await;
}
engines!(a_v3_refusal_after_a_lost_answer_within_one_request_leaves_the_refund_pending);

async fn a_platform_certificate_rotation_mid_run_is_followed_without_a_restart(db: TestDb) {
    let t = spawn_app(db, v3(V3Signer::Certificate, Trusts::Certificate)).await;
    t.paid_order("V3-ROT-1", 100).await;
    let (status, v) = t.sim_post("/simulator/v3/rotate", json!({})).await;
    assert_eq!(status, 200, "{v}");
    // Answers and notifications now name a serial the gateway was not configured with: it
    // downloads the list once and goes on.
    t.paid_order("V3-ROT-2", 200).await;
    let (status, v) = t.sim_post("/simulator/v3/retire", json!({})).await;
    assert_eq!(status, 200, "{v}");
    t.paid_order("V3-ROT-3", 300).await;
    let mut body = order_body(100);
    body["out_trade_no"] = json!("V3-ROT-4");
    t.create(body).await;
    t.stop().await;
}
engines!(a_platform_certificate_rotation_mid_run_is_followed_without_a_restart);

async fn downloaded_certificates_are_kept_so_a_restart_verifies_while_wechat_pay_is_unreachable(db: TestDb) {
    let t = spawn_app(db, v3(V3Signer::Certificate, Trusts::Download)).await;
    // Nothing configured: the first answer makes the gateway download the certificates.
    t.paid_order("V3-KEPT-1", 100).await;
    let sim_url = t.sim_url.clone();
    let (db, sim) = t.stop_gateway().await;
    let sim = sim.unwrap();
    // From now on /v3/certificates fails: only what was kept can verify.
    let (status, v) = post(
        &sim_url,
        "/simulator/faults",
        json!({"kind": "system_error", "api": "v3_certificates", "for_ms": 600_000}),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    let restarted = spawn_app(
        db,
        Options {
            shared_sim: Some(sim_url.clone()),
            ..v3(V3Signer::Certificate, Trusts::Download)
        },
    )
    .await;
    restarted.paid_order("V3-KEPT-2", 200).await;
    restarted.stop().await;
    // A gateway with nothing kept cannot verify anything meanwhile: the test can fail.
    let fresh = spawn_app(
        TestDb::sqlite(),
        Options {
            shared_sim: Some(sim_url),
            ..v3(V3Signer::Certificate, Trusts::Download)
        },
    )
    .await;
    let mut body = order_body(100);
    body["out_trade_no"] = json!("V3-KEPT-3");
    let (status, v) = fresh.api(Method::POST, "/v1/orders", Some(body), None).await;
    assert_eq!(status, 503, "{v}");
    fresh.stop().await;
    sim.shutdown().await;
}
engines!(downloaded_certificates_are_kept_so_a_restart_verifies_while_wechat_pay_is_unreachable);

async fn post(base: &str, path: &str, body: Value) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(format!("{base}{path}"))
        .json(&body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

async fn the_first_answers_after_a_start_wait_for_one_certificate_download(db: TestDb) {
    // Nothing configured, nothing kept: the first verifications all need the list.
    let t = spawn_app(db, v3(V3Signer::Certificate, Trusts::Download)).await;
    let creations = (0..8).map(|i| {
        let mut body = order_body(100);
        body["out_trade_no"] = json!(format!("V3-FIRST-{i}"));
        t.api(Method::POST, "/v1/orders", Some(body), None)
    });
    for (status, v) in futures_util::future::join_all(creations).await {
        assert_eq!(status, 201, "{}: {v}", t.engine());
    }
    assert_eq!(t.sim_calls("v3_certificates").await, 1, "one download for all of them");
    // And none of them was verified with an empty list meanwhile (and so retried).
    assert_eq!(
        t.app.metrics().upstream_errors_with("v3_jsapi", "bad_answer"),
        0,
        "{}",
        t.engine()
    );
    t.stop().await;
}
engines!(the_first_answers_after_a_start_wait_for_one_certificate_download);

async fn a_list_twelve_hours_old_is_downloaded_again_without_holding_up_a_request(db: TestDb) {
    let t = spawn_app(db, v3(V3Signer::Certificate, Trusts::Download)).await;
    let create = async |no: &str| {
        let mut body = order_body(100);
        body["out_trade_no"] = json!(no);
        let started = std::time::Instant::now();
        let (status, v) = t.api(Method::POST, "/v1/orders", Some(body), None).await;
        assert_eq!(status, 201, "{}: {v}", t.engine());
        started.elapsed()
    };
    create("V3-STALE-1").await;
    assert_eq!(t.sim_calls("v3_certificates").await, 1);
    // Moves both sides' clocks on (answers are signed at the simulator's time).
    let advance = |secs: u64| {
        t.app.clock().advance(Duration::from_secs(secs));
        t.sim.as_ref().unwrap().simulator().advance_clock(secs as i64);
    };
    advance(13 * 3600);
    // WeChat Pay slow to list its certificates (1.5 s, within the gateway's 3 s timeout):
    // the order does not wait for it, and is verified with the list in hand.
    t.fault(json!({"kind": "delay", "api": "v3_certificates", "delay_ms": 1500}))
        .await;
    let took = create("V3-STALE-2").await;
    assert!(
        took < Duration::from_millis(1000),
        "the order waited {took:?} for the refresh"
    );
    eventually("the stale list is downloaded again", async || {
        t.sim_calls("v3_certificates").await == 2
    })
    .await;
    // Fresh again: the next order downloads nothing.
    create("V3-STALE-3").await;
    assert_eq!(t.sim_calls("v3_certificates").await, 2);
    // Stale again, and the refresh fails: it is tried again a minute later, not in twelve
    // hours.
    advance(13 * 3600);
    t.fault(json!({"kind": "system_error", "api": "v3_certificates"})).await;
    create("V3-STALE-4").await;
    eventually("the failed refresh was tried", async || {
        t.sim_calls("v3_certificates").await == 3
    })
    .await;
    create("V3-STALE-5").await;
    assert_eq!(t.sim_calls("v3_certificates").await, 3, "not again within the minute");
    advance(61);
    create("V3-STALE-6").await;
    eventually("the refresh is tried again a minute later", async || {
        t.sim_calls("v3_certificates").await == 4
    })
    .await;
    t.stop().await;
}
engines!(a_list_twelve_hours_old_is_downloaded_again_without_holding_up_a_request);
