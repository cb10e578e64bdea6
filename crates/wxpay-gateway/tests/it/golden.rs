//! Outside witnesses for the gateway: fixtures of `testdata/golden`, made by `make_golden.py`
//! without any wxpay code. The `Wxpay-Signature` of webhook deliveries is compared with the
//! script's HMAC, and the script's payment notifications, which are signed with this test
//! configuration's merchant keys, are posted to a running gateway.

use reqwest::Method;
use serde_json::json;
use wxpay_protocol::v2::NOTIFY_SUCCESS_REPLY;
use wxpay_simulator::{TEST_API_KEY, TEST_APPID, TEST_MCH_ID};

#[path = "../../../wxpay-protocol/tests/it/golden_index.rs"]
mod golden_index;

use crate::support::engines;
use golden_index::{cases, golden_dir, index, text};

use crate::support::{HMAC_APPID, HMAC_KEY, HMAC_MCH_ID, Options, TestDb, WEBHOOK_SECRET, spawn_app};

#[test]
fn wxpay_signature_is_what_the_independent_script_computed() {
    let doc = index();
    for case in cases(&doc, "webhook_signatures", 3) {
        let secret = text(case, "secret");
        let body = text(case, "body");
        let t = case["t"].as_i64().unwrap();
        let header = text(case, "header");
        // The script's secret is the one the test webhook receiver checks with.
        assert_eq!(secret, WEBHOOK_SECRET);
        assert_eq!(wxpay_gateway::webhook_signature(secret, t, body), header, "t={t}");
        // A receiver following the README accepts it, and refuses it for another body.
        assert!(
            wxpay_gateway::verify_webhook_signature(secret, header, body, t, 300),
            "t={t}"
        );
        let other = format!("{body} ");
        assert!(
            !wxpay_gateway::verify_webhook_signature(secret, header, &other, t, 300),
            "t={t}"
        );
    }
}

async fn the_golden_payment_notifications_pay_their_orders_exactly_once(db: TestDb) {
    let doc = index();
    let notifications = cases(&doc, "payment_notifications", 2);
    // The script must sign with this configuration's keys for the gateway to believe it.
    for (who, appid, mch_id, key) in [
        ("md5", TEST_APPID, TEST_MCH_ID, TEST_API_KEY),
        ("hmac", HMAC_APPID, HMAC_MCH_ID, HMAC_KEY),
    ] {
        let m = &doc["merchants"][who];
        assert_eq!(
            (text(m, "appid"), text(m, "mch_id"), text(m, "key")),
            (appid, mch_id, key),
            "the script's {who} merchant is the gateway tests' one"
        );
    }
    // The script's payers are its own fixed openids: listed, the simulator accepts them.
    let payers: Vec<String> = notifications
        .iter()
        .map(|case| text(&case["expect"], "openid").to_owned())
        .collect();
    let t = spawn_app(
        db,
        Options {
            sim: Box::new(move |c| c.openids.extend(payers)),
            ..Options::default()
        },
    )
    .await;
    for case in notifications {
        let e = &case["expect"];
        let merchant = text(&doc["merchants"][text(case, "merchant")], "gateway");
        let no = text(e, "out_trade_no");
        let amount = e["total_fee"].as_u64().unwrap();
        t.create(json!({
            "description": "golden",
            "amount_fen": amount,
            "openid": text(e, "openid"),
            "out_trade_no": no,
            "merchant": merchant,
        }))
        .await;
        let body = std::fs::read_to_string(golden_dir().join(text(case, "file"))).unwrap();
        // WeChat Pay delivers a notification at least once: the second copy is a duplicate.
        for attempt in 0..2 {
            assert_eq!(
                t.notify(body.clone()).await,
                (200, NOTIFY_SUCCESS_REPLY.to_owned()),
                "{}: {} attempt {attempt}",
                t.engine(),
                text(case, "name")
            );
        }
        let (status, order) = t
            .api(Method::GET, &format!("/v1/orders/{no}?merchant={merchant}"), None, None)
            .await;
        assert_eq!(status, 200, "{order}");
        assert_eq!(order["status"], "paid", "{}: {order}", t.engine());
        assert_eq!(order["transaction_id"], text(e, "transaction_id"), "{order}");
        // The script converted time_end from Beijing time to UTC on its own.
        assert_eq!(order["paid_at"], text(e, "paid_at"), "{order}");
        let paid_events = order["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|ev| ev["kind"] == "paid")
            .count();
        assert_eq!(paid_events, 1, "{}: {order}", t.engine());
    }
    assert_eq!(t.app.metrics().notifications_with("applied"), 2, "{}", t.engine());
    assert_eq!(t.app.metrics().notifications_with("duplicate"), 2, "{}", t.engine());
    t.stop().await;
}
engines!(the_golden_payment_notifications_pay_their_orders_exactly_once);
