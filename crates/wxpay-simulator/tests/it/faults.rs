//! Every fault on demand.

use wxpay_protocol::v2::{
    self, ErrCode, OrderQuery, PaymentNotification, PaymentOutcome, TradeState, UnifiedOrder, V2Call,
};
use wxpay_protocol::{Error, OutTradeNo};

use crate::support::{eventually, nonce, spawn};

#[tokio::test]
async fn systemerror_changes_nothing_and_the_retry_succeeds() {
    let env = spawn().await;
    env.fault(serde_json::json!({"kind": "system_error", "api": "unifiedorder", "count": 1}))
        .await;
    let err = env.call(&env.order("no-f-1", 1)).await.unwrap_err();
    match err {
        Error::Business { code, .. } => {
            assert_eq!(code, ErrCode::SystemError);
            assert_eq!(code.retry(), v2::Retry::SameParameters);
        }
        other => panic!("{other:?}"),
    }
    let q = env
        .call(&OrderQuery::by_out_trade_no(OutTradeNo::new("no-f-1").unwrap()))
        .await
        .unwrap_err();
    assert!(
        matches!(
            q,
            Error::Business {
                code: ErrCode::OrderNotExist,
                ..
            }
        ),
        "nothing was created"
    );
    env.create("no-f-1", 1).await;
}

#[tokio::test]
async fn a_delay_holds_the_answer() {
    let env = spawn().await;
    env.fault(serde_json::json!({"kind": "delay", "api": "orderquery", "delay_ms": 300}))
        .await;
    env.create("no-f-2", 1).await;
    let started = std::time::Instant::now();
    env.call(&OrderQuery::by_out_trade_no(OutTradeNo::new("no-f-2").unwrap()))
        .await
        .unwrap();
    assert!(started.elapsed() >= std::time::Duration::from_millis(300));
}

#[tokio::test]
async fn a_lost_answer_still_took_effect() {
    let env = spawn().await;
    env.fault(serde_json::json!({"kind": "lose_answer", "api": "unifiedorder", "out_trade_no": "no-f-3"}))
        .await;
    let body = v2::encode(&env.order("no-f-3", 1), &env.merchant, &nonce()).unwrap();
    let result = async {
        env.http
            .post(env.url(UnifiedOrder::PATH))
            .body(body)
            .send()
            .await?
            .bytes()
            .await
    }
    .await;
    assert!(result.is_err(), "the connection was dropped: {result:?}");
    // The order exists: a retry with the same parameters converges on it.
    let q = env
        .call(&OrderQuery::by_out_trade_no(OutTradeNo::new("no-f-3").unwrap()))
        .await
        .unwrap();
    assert_eq!(q.trade_state, TradeState::NotPay);
    env.create("no-f-3", 1).await;
}

#[tokio::test]
async fn a_bad_answer_signature_is_caught_by_the_client() {
    let env = spawn().await;
    env.fault(serde_json::json!({"kind": "bad_answer_signature", "api": "unifiedorder"}))
        .await;
    let err = env.call(&env.order("no-f-4", 1)).await.unwrap_err();
    assert!(matches!(err, Error::BadSignature { .. }), "{err}");
}

#[tokio::test]
async fn duplicated_notifications_arrive_together() {
    let env = spawn().await;
    env.fault(serde_json::json!({"kind": "notify_duplicate", "out_trade_no": "no-f-5", "copies": 3}))
        .await;
    env.create("no-f-5", 1).await;
    env.pay("no-f-5", "success").await;
    eventually("three copies", || async { env.receiver.received().len() == 3 }).await;
    let bodies = env.receiver.received();
    assert!(
        bodies
            .iter()
            .all(|b| PaymentNotification::parse(b.as_bytes(), &env.merchant).is_ok())
    );
}

#[tokio::test]
async fn the_checkout_pays_with_a_fault_in_the_notification_one_click_away() {
    let env = spawn().await;
    let r = env.create("no-f-checkout", 1).await;
    let page = env
        .http
        .post(env.url(&format!("/simulator/checkout/{}?lang=zh", r.prepay_id)))
        .form(&[("outcome", "success"), ("fault", "notify_duplicate")])
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let page = page.text().await.unwrap();
    assert!(page.contains("支付成功") && page.contains("已注入故障"), "{page}");
    eventually("five copies", || async { env.receiver.received().len() == 5 }).await;
    // The rule is spent with this order's notification: a later order's arrives once.
    assert_eq!(env.get_json("/simulator/faults").await["faults"], serde_json::json!([]));
    env.create("no-f-checkout-3", 1).await;
    env.pay("no-f-checkout-3", "success").await;
    eventually("one more notification", || async { env.receiver.received().len() == 6 }).await;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(
        env.receiver.received().len(),
        6,
        "the other order's notification is not duplicated"
    );

    // A fault the page does not offer (an answer fault, or APIv3's on an APIv2 order) is
    // refused, and nothing is paid.
    let other = env.create("no-f-checkout-2", 1).await;
    for fault in ["system_error", "notify_probe", "nonsense"] {
        let refused = env
            .http
            .post(env.url(&format!("/simulator/checkout/{}", other.prepay_id)))
            .form(&[("outcome", "success"), ("fault", fault)])
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), 400, "{fault}");
    }
    assert_eq!(
        env.get_json("/simulator/orders/no-f-checkout-2").await["trade_state"],
        "NOTPAY"
    );
}

#[tokio::test]
async fn reordered_notifications_arrive_in_reverse() {
    let env = spawn().await;
    env.fault(serde_json::json!({"kind": "notify_reorder", "count": 2}))
        .await;
    env.create("no-f-6a", 1).await;
    env.create("no-f-6b", 1).await;
    env.pay("no-f-6a", "success").await;
    env.pay("no-f-6b", "success").await;
    eventually("both notifications", || async { env.receiver.received().len() == 2 }).await;
    let order: Vec<String> = env
        .receiver
        .received()
        .iter()
        .map(|b| {
            PaymentNotification::parse(b.as_bytes(), &env.merchant)
                .unwrap()
                .out_trade_no
        })
        .collect();
    assert_eq!(order, ["no-f-6b", "no-f-6a"]);
}

#[tokio::test]
async fn notifications_with_a_bad_signature_a_wrong_amount_or_fail_are_sent_on_demand() {
    let env = spawn().await;
    for (no, kind) in [
        ("no-f-7", "notify_bad_signature"),
        ("no-f-8", "notify_wrong_amount"),
        ("no-f-9", "notify_result_fail"),
    ] {
        env.fault(serde_json::json!({"kind": kind, "out_trade_no": no})).await;
        env.create(no, 100).await;
        env.pay(no, "success").await;
    }
    eventually("three notifications", || async { env.receiver.received().len() >= 3 }).await;
    let mut seen = 0;
    for body in env.receiver.received() {
        let raw = v2::NotificationFields::read(body.as_bytes()).unwrap();
        match raw.out_trade_no() {
            Some("no-f-7") => {
                assert!(matches!(raw.payment(&env.merchant), Err(Error::BadSignature { .. })));
                seen += 1;
            }
            Some("no-f-8") => {
                let n = raw.payment(&env.merchant).unwrap();
                assert!(
                    matches!(n.outcome, PaymentOutcome::Paid { total_fee, .. } if total_fee.get() != 100),
                    "{n:?}"
                );
                seen += 1;
            }
            Some("no-f-9") => {
                let n = raw.payment(&env.merchant).unwrap();
                assert!(matches!(n.outcome, PaymentOutcome::Failed { .. }));
                seen += 1;
            }
            _ => {}
        }
    }
    assert_eq!(seen, 3);
}

#[tokio::test]
async fn faults_are_listed_counted_and_removed() {
    let env = spawn().await;
    env.fault(serde_json::json!({"kind": "system_error", "for_ms": 60000}))
        .await;
    let listed = env.get_json("/simulator/faults").await;
    assert_eq!(listed["faults"].as_array().unwrap().len(), 1);
    assert!(env.call(&env.order("no-f-10", 1)).await.is_err());
    let removed = env
        .http
        .delete(env.url("/simulator/faults"))
        .send()
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap();
    assert_eq!(removed["removed"], 1);
    env.create("no-f-10", 1).await;
    let metrics = env.metrics_text().await;
    assert!(
        metrics.contains("wxpay_sim_faults_injected_total{kind=\"system_error\"} 1"),
        "{metrics}"
    );
    let (status, bad) = env
        .post_json(
            "/simulator/faults",
            serde_json::json!({"kind": "system_error", "api": "nope"}),
        )
        .await;
    assert_eq!(status, 400, "{bad}");
}
