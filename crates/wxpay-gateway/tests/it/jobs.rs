//! Background work: checks of unconfirmed orders, expiry, and webhook delivery.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

use reqwest::Method;
use serde_json::json;
use wxpay_gateway::JobsConfig;

use crate::refunds::wait_refund;
use crate::support::engines;
use crate::support::{
    Options, TestDb, alerts, event, eventually, figure, order_body, paid_notification, quick_jobs, spawn_app,
    with_jobs_and_webhook,
};

async fn without_a_notification_the_query_path_marks_the_order_paid(db: TestDb) {
    let t = spawn_app(db, with_jobs_and_webhook()).await;
    let o = t.create(order_body(300)).await;
    let no = o["out_trade_no"].as_str().unwrap().to_owned();
    t.fault(json!({"kind": "notify_bad_signature", "out_trade_no": no, "for_ms": 60000}))
        .await;
    t.sim_pay(json!({"out_trade_no": no})).await;
    let paid = t.wait_status(&no, "paid").await;
    assert_eq!(
        event(&paid, "paid")["detail"]["source"],
        "query",
        "{}: {paid}",
        t.engine()
    );
    let hook = t.webhook.clone();
    eventually("order.paid is delivered", async || {
        hook.delivered().iter().any(|e| e["type"] == "order.paid")
    })
    .await;
    t.stop().await;
}
engines!(without_a_notification_the_query_path_marks_the_order_paid);

async fn an_expired_unpaid_order_is_closed_with_wechat_pay_and_announced(db: TestDb) {
    let t = spawn_app(db, with_jobs_and_webhook()).await;
    let mut body = order_body(400);
    // Two minutes, not the minimum of one: the simulator refuses a time_expire less than a
    // minute ahead of its own clock, and a second boundary passing mid-call would make a
    // one-minute order a refused one. (Not more than a few: the webhook receiver checks
    // the signature's timestamp against the wall clock, within five minutes.)
    body["expires_in_secs"] = json!(120);
    let o = t.create(body).await;
    let no = o["out_trade_no"].as_str().unwrap().to_owned();
    t.app.clock().advance(Duration::from_secs(121));
    let closed = t.wait_status(&no, "closed").await;
    assert!(closed["closed_at"].is_string());
    assert_eq!(
        t.sim_get(&format!("/simulator/orders/{no}")).await["trade_state"],
        "CLOSED",
        "{}",
        t.engine()
    );
    let hook = t.webhook.clone();
    eventually("order.closed is delivered", async || {
        hook.delivered().iter().any(|e| e["type"] == "order.closed")
    })
    .await;
    t.stop().await;
}
engines!(an_expired_unpaid_order_is_closed_with_wechat_pay_and_announced);

async fn an_expired_order_paid_at_the_last_moment_becomes_paid_and_never_closed(db: TestDb) {
    let t = spawn_app(
        db,
        Options {
            jobs: quick_jobs(),
            ..Options::default()
        },
    )
    .await;
    let mut body = order_body(450);
    body["expires_in_secs"] = json!(120);
    let o = t.create(body).await;
    let no = o["out_trade_no"].as_str().unwrap().to_owned();
    // The payer pays while the gateway's closeorder is on its way: WeChat Pay answers
    // ORDERPAID. Notifications are refused as forged, so only the gateway's own query
    // can find the payment.
    t.fault(json!({"kind": "notify_bad_signature", "out_trade_no": no, "for_ms": 60000}))
        .await;
    t.fault(json!({"kind": "delay", "api": "closeorder", "out_trade_no": no, "count": 1, "delay_ms": 1500}))
        .await;
    t.app.clock().advance(Duration::from_secs(121));
    // The simulator counts the delay when it takes it, before the wait: from then on the
    // gateway's closeorder is in flight and not yet carried out.
    eventually("closeorder is in flight", async || {
        t.sim_faults_fired("delay").await == 1
    })
    .await;
    let (status, v) = t.sim_post("/simulator/pay", json!({"out_trade_no": no})).await;
    assert_eq!(status, 200, "{v}");
    let paid = t.wait_status(&no, "paid").await;
    let kinds: Vec<&str> = paid["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert!(!kinds.contains(&"closed"), "{}: {kinds:?}", t.engine());
    // The race happened: the one closeorder arrived after the payment and was refused
    // (ORDERPAID, a business error), and no notification was accepted.
    assert_eq!(t.sim_calls("closeorder").await, 1);
    assert_eq!(t.sim_calls_with("closeorder", "business_error").await, 1);
    let close = t.sim_requests("closeorder", &no).await;
    assert_eq!(close.len(), 1, "{close:?}");
    assert_eq!(t.app.metrics().notifications_with("applied"), 0);
    assert_eq!(t.order(&no).await["status"], "paid", "and it stays paid");
    t.stop().await;
}
engines!(an_expired_order_paid_at_the_last_moment_becomes_paid_and_never_closed);

async fn a_notpay_answer_overtaken_by_the_payment_leaves_the_order_paid_with_a_warning(db: TestDb) {
    let mut options = Options {
        jobs: quick_jobs(),
        ..Options::default()
    };
    // Room for a slow machine: the notification has four seconds to be applied while the
    // query waits, and the query eight to be answered.
    options.upstream.timeout = Duration::from_secs(8);
    let t = spawn_app(db, options).await;
    // The background check's orderquery is held while the payment's notification arrives;
    // then its answer, NOTPAY (the simulator never saw the payment), comes back.
    t.fault(json!({"kind": "delay", "api": "orderquery", "count": 1, "delay_ms": 4000}))
        .await;
    let o = t.create(order_body(460)).await;
    let no = o["out_trade_no"].as_str().unwrap().to_owned();
    eventually("the check's orderquery is in flight", async || {
        t.sim_faults_fired("delay").await == 1
    })
    .await;
    let (status, reply) = t
        .notify(paid_notification(&no, 460, "4200000000000000000000046046"))
        .await;
    assert_eq!(status, 200, "{reply}");
    let fields = [
        ("out_trade_no", no.as_str()),
        ("reported", "NOTPAY"),
        ("transaction_id", "4200000000000000000000046046"),
    ];
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while alerts("orderquery contradicts a recorded payment", &fields).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "{}: no warning about the NOTPAY answer",
            t.engine()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let order = t.order(&no).await;
    assert_eq!(order["status"], "paid", "{}: {order}", t.engine());
    let kinds = t.event_kinds(&no).await;
    assert_eq!(kinds.iter().filter(|k| *k == "paid").count(), 1, "{kinds:?}");
    figure(
        &["19"],
        format!(
            "{}: an order paid by a notification while its check's orderquery was held; the query's NOTPAY came back → still paid, 1 paid event, a WARN naming the order, its transaction and NOTPAY",
            t.engine()
        ),
    );
    t.stop().await;
}
engines!(a_notpay_answer_overtaken_by_the_payment_leaves_the_order_paid_with_a_warning);

#[tokio::test]
async fn an_order_wechat_pay_never_received_fails_once_it_has_expired() {
    let t = spawn_app(
        TestDb::sqlite(),
        Options {
            jobs: quick_jobs(),
            ..Options::default()
        },
    )
    .await;
    t.fault(json!({"kind": "system_error", "api": "unifiedorder", "count": 3}))
        .await;
    let mut body = order_body(500);
    body["expires_in_secs"] = json!(120);
    body["out_trade_no"] = json!("NEVER-1");
    let (s, _) = t.api(reqwest::Method::POST, "/v1/orders", Some(body), None).await;
    assert_eq!(s, 503);
    assert_eq!(t.sim_faults_fired("system_error").await, 3);
    t.app.clock().advance(Duration::from_secs(121));
    let failed = t.wait_status("NEVER-1", "failed").await;
    assert!(failed["events"].to_string().contains("no such order"), "{failed}");
    t.stop().await;
}

async fn an_order_wechat_pay_never_got_stays_open_to_a_repeat_until_it_expires(db: TestDb) {
    let t = spawn_app(
        db,
        Options {
            jobs: quick_jobs(),
            ..Options::default()
        },
    )
    .await;
    t.fault(json!({"kind": "frequency_limited", "api": "unifiedorder", "count": 1}))
        .await;
    let mut body = order_body(520);
    body["expires_in_secs"] = json!(600);
    body["out_trade_no"] = json!("NEVER-2");
    let (s, v) = t
        .api(reqwest::Method::POST, "/v1/orders", Some(body.clone()), None)
        .await;
    assert_eq!(s, 503, "{v}");
    // The checks find that WeChat Pay has no such order (twice, so that the first one has
    // been applied); the order is not failed for it before it expires.
    eventually("two checks of the order", async || t.sim_calls("orderquery").await >= 2).await;
    assert_eq!(t.order("NEVER-2").await["status"], "pending", "{}", t.engine());
    // The client repeats the request, as the 503 said, and the order is placed.
    let o = t.create(body).await;
    let placed = t.sim_get("/simulator/orders/NEVER-2").await;
    assert_eq!(o["prepay_id"], placed["prepay_id"], "{o} {placed}");
    t.stop().await;
}
engines!(an_order_wechat_pay_never_got_stays_open_to_a_repeat_until_it_expires);

async fn events_wait_while_the_webhook_is_down_and_arrive_once_each_signed_with_the_same_id(db: TestDb) {
    let t = spawn_app(db, with_jobs_and_webhook()).await;
    t.webhook.down.store(true, Ordering::SeqCst);
    let mut numbers = Vec::new();
    for amount in [101, 102, 103] {
        let o = t.create(order_body(amount)).await;
        let no = o["out_trade_no"].as_str().unwrap().to_owned();
        t.sim_pay(json!({"out_trade_no": no})).await;
        numbers.push(no);
    }
    let hook = t.webhook.clone();
    eventually("several refused attempts", async || {
        hook.attempts.load(Ordering::SeqCst) >= 6
    })
    .await;
    assert!(t.webhook.delivered().is_empty());
    t.webhook.down.store(false, Ordering::SeqCst);
    eventually("three events delivered", async || hook.delivered().len() >= 3).await;
    t.outbox_drained().await;
    let delivered = t.webhook.delivered();
    let ids: HashSet<String> = delivered.iter().map(|e| e["id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(
        (delivered.len(), ids.len()),
        (3, 3),
        "{}: once per event: {delivered:?}",
        t.engine()
    );
    let refused: HashSet<String> = t.webhook.refused.lock().unwrap().iter().cloned().collect();
    assert!(
        refused.is_subset(&ids),
        "retries carry the same ids: {refused:?} vs {ids:?}"
    );
    for no in &numbers {
        assert!(delivered.iter().any(|e| e["data"]["out_trade_no"] == no.as_str()));
    }
    assert!(t.webhook.events.lock().unwrap().iter().all(|(_, signed)| *signed));
    t.stop().await;
}
engines!(events_wait_while_the_webhook_is_down_and_arrive_once_each_signed_with_the_same_id);

async fn after_an_hour_with_the_webhook_down_every_event_arrives_once_in_order_per_order(db: TestDb) {
    // Backoff as in production, capped at ten minutes: the hour is simulated by moving the
    // gateway's clock, a minute at a time.
    let jobs = JobsConfig {
        outbox_backoff: Duration::from_secs(1),
        outbox_max_backoff: Duration::from_secs(600),
        ..quick_jobs()
    };
    let t = spawn_app(
        db,
        Options {
            jobs,
            webhook: true,
            ..Options::default()
        },
    )
    .await;
    t.webhook.down.store(true, Ordering::SeqCst);
    const ORDERS: usize = 8;
    let mut expected: Vec<(String, Vec<String>)> = Vec::new();
    for i in 0..ORDERS {
        let o = t.create(order_body(1000 + i as u64)).await;
        let no = o["out_trade_no"].as_str().unwrap().to_owned();
        t.sim_pay(json!({"out_trade_no": no})).await;
        t.wait_status(&no, "paid").await;
        let mut events = vec!["order.paid".to_owned()];
        for r in 0..2 {
            let refund_no = format!("{no}-R{r}");
            let (status, v) = t
                .api(
                    Method::POST,
                    &format!("/v1/orders/{no}/refunds"),
                    Some(json!({"amount_fen": 100, "out_refund_no": refund_no})),
                    None,
                )
                .await;
            assert_eq!(status, 201, "{v}");
            wait_refund(&t, &refund_no, "succeeded").await;
            events.push(format!("refund.succeeded {refund_no}"));
        }
        expected.push((no, events));
    }
    let total: usize = expected.iter().map(|(_, e)| e.len()).sum();
    for _ in 0..60 {
        t.advance(Duration::from_secs(60));
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    let refused_in_the_hour = t.webhook.refused.lock().unwrap().len();
    assert!(t.webhook.delivered().is_empty());
    // Each clock step makes every backed-off event due again; how many steps the loop sees
    // depends on the machine's load, so only "more than once each" is asserted.
    assert!(
        refused_in_the_hour >= 2 * total,
        "{}: every event was tried again and again in the hour: {refused_in_the_hour} refusals",
        t.engine()
    );
    t.webhook.down.store(false, Ordering::SeqCst);
    // Past the longest backoff (ten minutes and a quarter of jitter).
    t.advance(Duration::from_secs(13 * 60));
    t.outbox_drained().await;
    let delivered = t.webhook.delivered();
    let mut seen = HashSet::new();
    let mut arrivals: Vec<(String, String)> = Vec::new();
    for e in &delivered {
        if seen.insert(e["id"].as_str().unwrap().to_owned()) {
            let what = match e["type"].as_str().unwrap() {
                "order.paid" => "order.paid".to_owned(),
                kind => format!("{kind} {}", e["data"]["out_refund_no"].as_str().unwrap_or("")),
            };
            arrivals.push((e["data"]["out_trade_no"].as_str().unwrap().to_owned(), what));
        }
    }
    assert_eq!(
        seen.len(),
        total,
        "{}: every event, none lost: {arrivals:?}",
        t.engine()
    );
    for (no, events) in &expected {
        let got: Vec<&String> = arrivals.iter().filter(|(n, _)| n == no).map(|(_, w)| w).collect();
        assert_eq!(
            got,
            events.iter().collect::<Vec<_>>(),
            "{}: the events of {no} arrive in the order they happened",
            t.engine()
        );
    }
    figure(
        &["webhook-down"],
        format!(
            "{}: webhook down for 60 simulated minutes → {refused_in_the_hour} refused attempts; afterwards {total} of {total} events delivered ({} deliveries), each order's in order",
            t.engine(),
            delivered.len()
        ),
    );
    t.stop().await;
}
engines!(after_an_hour_with_the_webhook_down_every_event_arrives_once_in_order_per_order);
