//! Payment notifications: signed as WeChat Pay signs them, acknowledged only by the exact
//! SUCCESS reply, retried on the schedule until then.

use std::sync::atomic::Ordering;

use wxpay_protocol::SignType;
use wxpay_protocol::v2::{PaymentNotification, PaymentOutcome, UnifiedOrder};

use crate::support::{eventually, merchant, spawn, spawn_with};

#[tokio::test]
async fn a_payment_is_notified_signed_with_the_order_algorithm() {
    let env = spawn().await;
    let hmac = merchant(SignType::HmacSha256);
    env.call_as(&hmac, &env.order("no-n-1", 888)).await.unwrap();
    env.pay("no-n-1", "success").await;
    eventually("the notification", || async { !env.receiver.received().is_empty() }).await;
    let body = env.receiver.received().remove(0);
    assert!(
        body.contains("<sign_type><![CDATA[HMAC-SHA256]]></sign_type>"),
        "{body}"
    );
    let n = PaymentNotification::parse(body.as_bytes(), &hmac).unwrap();
    match n.outcome {
        PaymentOutcome::Paid {
            total_fee,
            transaction_id,
            ..
        } => {
            assert_eq!(total_fee.get(), 888);
            assert_eq!(transaction_id.len(), 28);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(n.openid, Some(env.openid()));
    eventually("acknowledged", || async {
        env.get_json("/simulator/orders/no-n-1").await["notified"] == true
    })
    .await;
    let attempts = env.attempts("no-n-1").await;
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0]["acknowledged"], true);
    assert_eq!(attempts[0]["attempt"], 1);
}

#[tokio::test]
async fn a_refused_notification_is_retried_on_the_schedule_until_acknowledged() {
    let env = spawn().await;
    env.receiver.fail_next.store(3, Ordering::SeqCst);
    env.create("no-n-2", 1).await;
    env.pay("no-n-2", "success").await;
    eventually("four attempts", || async { env.attempts("no-n-2").await.len() == 4 }).await;
    let attempts = env.attempts("no-n-2").await;
    let acked: Vec<bool> = attempts.iter().map(|a| a["acknowledged"].as_bool().unwrap()).collect();
    assert_eq!(acked, [false, false, false, true]);
    // 15 s, 15 s, 30 s at a thousand times: at least 15, 15 and 30 ms apart.
    let at: Vec<u64> = attempts.iter().map(|a| a["at_ms"].as_u64().unwrap()).collect();
    assert!(
        at[1] - at[0] >= 14 && at[2] - at[1] >= 14 && at[3] - at[2] >= 29,
        "{at:?}"
    );
    assert_eq!(attempts[3]["attempt"], 4);
}

#[tokio::test]
async fn only_the_exact_success_reply_counts_and_an_unreachable_url_is_retried() {
    let env = spawn_with(|c| c.notify_timeout = std::time::Duration::from_millis(500)).await;
    // A notify URL that answers plain "success" (a common mistake) is not acknowledged.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().route("/n", axum::routing::post(|| async { "success" }));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let mut order = env.order("no-n-3", 1);
    order.notify_url = format!("http://{addr}/n");
    env.call(&order).await.unwrap();
    env.pay("no-n-3", "success").await;
    eventually("three refused attempts", || async {
        env.attempts("no-n-3").await.len() >= 3
    })
    .await;
    assert!(
        env.attempts("no-n-3")
            .await
            .iter()
            .all(|a| a["acknowledged"] == false && a["status"] == 200)
    );
    // Nobody listening (the test listened there and closed its listener): an error is
    // recorded and the schedule goes on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let mut order: UnifiedOrder = env.order("no-n-4", 1);
    order.notify_url = format!("http://{addr}/nothing");
    env.call(&order).await.unwrap();
    env.pay("no-n-4", "success").await;
    eventually("two unreachable attempts", || async {
        env.attempts("no-n-4").await.len() >= 2
    })
    .await;
    let a = &env.attempts("no-n-4").await[0];
    assert!(a["status"].is_null() && a["error"].is_string(), "{a}");
}

#[tokio::test]
async fn a_failed_payment_is_notified_with_result_code_fail() {
    let env = spawn().await;
    env.create("no-n-5", 1).await;
    env.pay("no-n-5", "fail").await;
    eventually("the notification", || async { !env.receiver.received().is_empty() }).await;
    let n = PaymentNotification::parse(env.receiver.received()[0].as_bytes(), &env.merchant).unwrap();
    assert!(matches!(n.outcome, PaymentOutcome::Failed { .. }), "{n:?}");
}

#[tokio::test]
async fn auto_mode_pays_every_new_order_after_the_delay() {
    let env = spawn_with(|c| c.mode = wxpay_simulator::Mode::Auto).await;
    env.create("auto-1", 5).await;
    env.create("auto-2", 6).await;
    eventually("both paid and notified", || async {
        env.receiver.received().len() >= 2
    })
    .await;
    assert_eq!(env.get_json("/simulator/orders/auto-1").await["trade_state"], "SUCCESS");
    assert_eq!(env.get_json("/simulator/orders/auto-2").await["trade_state"], "SUCCESS");
}
