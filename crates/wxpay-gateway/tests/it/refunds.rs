//! Refunds end to end, against the simulator, on both engines.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use wxpay_protocol::v2::{RefundNotification, RefundStatus};
use wxpay_protocol::{ApiKey, BeijingTime, Fen, Nonce};
use wxpay_simulator::{TEST_API_KEY, TEST_APPID, TEST_MCH_ID};

use crate::support::SUCCESS;
use crate::support::engines;
use crate::support::{
    Options, TestApp, TestDb, alerts, event, eventually, order_body, paid_notification, spawn_app,
    with_jobs_and_webhook,
};

async fn refund(t: &TestApp, order: &str, body: Value) -> (u16, Value) {
    t.api(Method::POST, &format!("/v1/orders/{order}/refunds"), Some(body), None)
        .await
}

pub(crate) async fn get_refund(t: &TestApp, no: &str) -> Value {
    let (status, v) = t.api(Method::GET, &format!("/v1/refunds/{no}"), None, None).await;
    assert_eq!(status, 200, "{v}");
    v
}

pub(crate) async fn wait_refund(t: &TestApp, no: &str, status: &str) -> Value {
    eventually(&format!("refund {no} becomes {status}"), async || {
        get_refund(t, no).await["status"] == status
    })
    .await;
    get_refund(t, no).await
}

/// Like `with_jobs_and_webhook`, but WeChat Pay takes its time: a refund stays processing
/// until the test settles it.
fn slow_refunds() -> Options {
    Options {
        sim: Box::new(|c| c.refund_delay = Duration::from_secs(100_000_000)),
        ..with_jobs_and_webhook()
    }
}

async fn the_payment_notification_replayed_after_a_full_refund_changes_nothing_and_announces_nothing(db: TestDb) {
    let t = spawn_app(db, with_jobs_and_webhook()).await;
    let mut body = order_body(300);
    body["out_trade_no"] = json!("RF-REPLAY");
    t.create(body).await;
    t.sim_pay(json!({"out_trade_no": "RF-REPLAY"})).await;
    let paid = t.wait_status("RF-REPLAY", "paid").await;
    // The payment's notification again, signed as WeChat Pay signs it, for its transaction.
    let original = paid_notification("RF-REPLAY", 300, paid["transaction_id"].as_str().unwrap());
    let (status, r) = refund(
        &t,
        "RF-REPLAY",
        json!({"amount_fen": 300, "out_refund_no": "RF-REPLAY-1"}),
    )
    .await;
    assert_eq!(status, 201, "{r}");
    wait_refund(&t, "RF-REPLAY-1", "succeeded").await;
    t.wait_status("RF-REPLAY", "refunded").await;
    // The same notification again, days later: acknowledged, and nothing else.
    assert_eq!(t.notify(original).await, (200, SUCCESS.to_owned()));
    let o = t.order("RF-REPLAY").await;
    assert_eq!(
        (o["status"].as_str(), o["refunded_fen"].as_i64()),
        (Some("refunded"), Some(300)),
        "{}: {o}",
        t.engine()
    );
    assert_eq!(
        o["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] == "paid")
            .count(),
        1,
        "{o}"
    );
    t.outbox_drained().await;
    let delivered = t.webhook.delivered();
    let of = |kind: &str| {
        delivered
            .iter()
            .filter(|e| e["type"] == kind && e["data"]["out_trade_no"] == "RF-REPLAY")
            .count()
    };
    assert_eq!(
        (of("order.paid"), of("refund.succeeded")),
        (1, 1),
        "{}: one callback each, none for the replay: {delivered:?}",
        t.engine()
    );
    crate::support::figure(
        &["20"],
        format!(
            "{}: the payment notification replayed after a full refund → SUCCESS, order stays refunded (300 of 300 fen), 1 paid event, 1 order.paid and 1 refund.succeeded delivered",
            t.engine()
        ),
    );
    t.stop().await;
}
engines!(the_payment_notification_replayed_after_a_full_refund_changes_nothing_and_announces_nothing);

async fn a_partial_then_a_full_refund_succeed_with_events_and_the_order_ends_refunded(db: TestDb) {
    let t = spawn_app(db, with_jobs_and_webhook()).await;
    t.paid_order("RF-PART", 100).await;
    let (status, r) = refund(
        &t,
        "RF-PART",
        json!({"amount_fen": 30, "out_refund_no": "RF-PART-1", "reason": "尺码不合适"}),
    )
    .await;
    assert_eq!(status, 201, "{r}");
    assert_eq!(
        (r["out_refund_no"].as_str(), r["amount_fen"].as_i64()),
        (Some("RF-PART-1"), Some(30))
    );
    assert_eq!(r["status"], "pending");
    let r = wait_refund(&t, "RF-PART-1", "succeeded").await;
    assert!(r["refund_id"].as_str().is_some_and(|id| !id.is_empty()), "{r}");
    let o = t.order("RF-PART").await;
    assert_eq!(
        (o["status"].as_str(), o["refunded_fen"].as_i64()),
        (Some("paid"), Some(30)),
        "{}",
        t.engine()
    );

    // The rest, with a generated number.
    let (status, r) = refund(&t, "RF-PART", json!({"amount_fen": 70})).await;
    assert_eq!(status, 201, "{r}");
    let no = r["out_refund_no"].as_str().unwrap().to_owned();
    wait_refund(&t, &no, "succeeded").await;
    let o = t.wait_status("RF-PART", "refunded").await;
    assert_eq!(o["refunded_fen"], 100);
    assert_eq!(o["refunds"].as_array().unwrap().len(), 2);
    // Nothing is left to refund.
    let (status, e) = refund(&t, "RF-PART", json!({"amount_fen": 1})).await;
    assert_eq!(
        (status, e["error"]["code"].as_str()),
        (409, Some("refund_exceeds_amount")),
        "{e}"
    );

    let sim = t.sim_get("/simulator/orders/RF-PART").await;
    assert_eq!(sim["refunded_fee"], 100, "{sim}");
    eventually("two refund.succeeded events", async || {
        t.webhook
            .delivered()
            .iter()
            .filter(|e| e["type"] == "refund.succeeded" && e["data"]["out_trade_no"] == "RF-PART")
            .count()
            == 2
    })
    .await;
    let events = t.webhook.delivered();
    let first = events
        .iter()
        .find(|e| e["type"] == "refund.succeeded" && e["data"]["out_refund_no"] == "RF-PART-1")
        .unwrap();
    assert_eq!(first["data"]["amount_fen"], 30);
    assert_eq!(first["data"]["reason"], "尺码不合适");
    t.wait_metric("wxpay_refunds{status=\"succeeded\"} 2").await;
    t.wait_metric("wxpay_orders{status=\"refunded\"} 1").await;
    t.stop().await;
}
engines!(a_partial_then_a_full_refund_succeed_with_events_and_the_order_ends_refunded);

#[tokio::test]
async fn refunds_of_unpaid_or_unknown_orders_and_bad_amounts_get_clear_errors() {
    let t = spawn_app(TestDb::sqlite(), Options::default()).await;
    let mut body = order_body(100);
    body["out_trade_no"] = json!("RF-UNPAID");
    t.create(body).await;
    let (status, e) = refund(&t, "RF-UNPAID", json!({"amount_fen": 10})).await;
    assert_eq!(
        (status, e["error"]["code"].as_str()),
        (409, Some("order_not_paid")),
        "{e}"
    );
    let (status, e) = refund(&t, "RF-NOPE", json!({"amount_fen": 10})).await;
    assert_eq!(status, 404, "{e}");
    t.paid_order("RF-BAD", 100).await;
    for (body, code) in [
        (json!({"amount_fen": 0}), 422),
        (json!({"amount_fen": 1.5}), 422),
        (json!({"amount_fen": "10"}), 422),
        (json!({"amount_fen": 101}), 409),
        (json!({"amount_fen": 10, "out_refund_no": "bad no!"}), 422),
        (json!({"amount_fen": 10, "extra": 1}), 422),
        (json!({"amount_fen": 10, "reason": "长".repeat(81)}), 422),
    ] {
        let (status, e) = refund(&t, "RF-BAD", body.clone()).await;
        assert_eq!(status, code, "{body}: {e}");
        assert!(e["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{e}");
    }
    let (status, _) = t.api(Method::GET, "/v1/refunds/none", None, None).await;
    assert_eq!(status, 404);
    // Nothing reached WeChat Pay.
    let sim = t.sim_get("/simulator/orders/RF-BAD").await;
    assert_eq!(sim["refunds"].as_array().unwrap().len(), 0, "{sim}");
    t.stop().await;
}

async fn concurrent_refunds_that_would_exceed_the_amount_only_the_allowed_ones_succeed(db: TestDb) {
    let t = spawn_app(db, with_jobs_and_webhook()).await;
    t.paid_order("RF-RACE", 100).await;
    let tasks: Vec<_> = (0..12)
        .map(|i| {
            let http = t.http.clone();
            let url = format!("{}/v1/orders/RF-RACE/refunds", t.url);
            tokio::spawn(async move {
                http.post(url)
                    .bearer_auth(crate::support::TOKEN)
                    .json(&json!({"amount_fen": 30, "out_refund_no": format!("RF-RACE-{i}")}))
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16()
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for task in tasks {
        statuses.push(task.await.unwrap());
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 201).count(),
        3,
        "{statuses:?} on {}",
        t.engine()
    );
    assert_eq!(statuses.iter().filter(|s| **s == 409).count(), 9, "{statuses:?}");
    eventually("three refunds succeed", async || {
        t.order("RF-RACE").await["refunded_fen"] == 90
    })
    .await;
    let sim = t.sim_get("/simulator/orders/RF-RACE").await;
    assert_eq!(
        (sim["refunded_fee"].as_i64(), sim["refunds"].as_array().unwrap().len()),
        (Some(90), 3),
        "{sim}"
    );
    t.stop().await;
}
engines!(concurrent_refunds_that_would_exceed_the_amount_only_the_allowed_ones_succeed);

async fn the_same_idempotency_key_returns_the_same_refund_and_one_refund_upstream(db: TestDb) {
    let t = spawn_app(db, with_jobs_and_webhook()).await;
    t.paid_order("RF-IDEM", 100).await;
    let path = "/v1/orders/RF-IDEM/refunds";
    let (s1, a) = t
        .api(Method::POST, path, Some(json!({"amount_fen": 25})), Some("k-refund-1"))
        .await;
    let (s2, b) = t
        .api(Method::POST, path, Some(json!({"amount_fen": 25})), Some("k-refund-1"))
        .await;
    assert_eq!((s1, s2), (201, 201), "{a} {b}");
    assert_eq!(a["out_refund_no"], b["out_refund_no"]);
    let (s3, e) = t
        .api(Method::POST, path, Some(json!({"amount_fen": 26})), Some("k-refund-1"))
        .await;
    assert_eq!(s3, 409, "{e}");
    // The same out_refund_no with other parameters is another refund: refused.
    let no = a["out_refund_no"].as_str().unwrap();
    let (s4, e) = refund(&t, "RF-IDEM", json!({"amount_fen": 26, "out_refund_no": no})).await;
    assert_eq!(
        (s4, e["error"]["code"].as_str()),
        (409, Some("out_refund_no_taken")),
        "{e}"
    );
    // And with the same ones, the same refund.
    let (s5, c) = refund(&t, "RF-IDEM", json!({"amount_fen": 25, "out_refund_no": no})).await;
    assert!(s5 == 200 || s5 == 201, "{s5} {c}");
    let sim = t.sim_get("/simulator/orders/RF-IDEM").await;
    assert_eq!(sim["refunds"].as_array().unwrap().len(), 1, "{sim}");
    t.stop().await;
}
engines!(the_same_idempotency_key_returns_the_same_refund_and_one_refund_upstream);

async fn a_systemerror_on_refund_is_retried_with_the_same_out_refund_no(db: TestDb) {
    let t = spawn_app(db, with_jobs_and_webhook()).await;
    t.paid_order("RF-SYS", 100).await;
    t.fault(json!({"kind": "system_error", "api": "refund", "count": 2}))
        .await;
    let (status, r) = refund(&t, "RF-SYS", json!({"amount_fen": 40, "out_refund_no": "RF-SYS-1"})).await;
    assert_eq!(status, 201, "{r}");
    assert_eq!(r["upstream"], "created", "{r}");
    wait_refund(&t, "RF-SYS-1", "succeeded").await;
    assert_eq!(t.sim_faults_fired("system_error").await, 2);
    assert_eq!(t.sim_calls_with("refund", "business_error").await, 2);
    assert_eq!(t.assert_retries_repeat_the_first("refund", "RF-SYS").await, 3);
    let sim = t.sim_get("/simulator/orders/RF-SYS").await;
    assert_eq!(sim["refunds"].as_array().unwrap().len(), 1, "{sim}");
    t.stop().await;
}
engines!(a_systemerror_on_refund_is_retried_with_the_same_out_refund_no);

async fn lost_refund_answers_leave_it_pending_and_it_is_sent_again_into_one_refund(db: TestDb) {
    let t = spawn_app(db, slow_refunds()).await;
    t.paid_order("RF-LOST", 100).await;
    // Every attempt of the first request is carried out and its answer lost.
    t.fault(json!({"kind": "lose_answer", "api": "refund", "count": 3}))
        .await;
    let (status, r) = refund(&t, "RF-LOST", json!({"amount_fen": 50, "out_refund_no": "RF-LOST-1"})).await;
    assert_eq!(status, 201, "{r}");
    assert_eq!(
        (r["status"].as_str(), r["upstream"].as_str()),
        (Some("pending"), Some("unknown")),
        "{r}"
    );
    // The checks send it again with the same number: WeChat Pay answers with the refund it
    // made the first time.
    eventually("the refund is sent again and accepted", async || {
        get_refund(&t, "RF-LOST-1").await["upstream"] == "created"
    })
    .await;
    let (status, v) = t.sim_post("/simulator/refunds/RF-LOST-1/complete", json!({})).await;
    assert_eq!(status, 200, "{v}");
    wait_refund(&t, "RF-LOST-1", "succeeded").await;
    let sim = t.sim_get("/simulator/orders/RF-LOST").await;
    assert_eq!(
        (sim["refunds"].as_array().unwrap().len(), sim["refunded_fee"].as_i64()),
        (1, Some(50)),
        "{sim}"
    );
    assert_eq!(t.order("RF-LOST").await["refunded_fen"], 50);
    // Three answers were lost, and every call was the same refund.
    assert_eq!(t.sim_faults_fired("lose_answer").await, 3);
    assert!(t.assert_retries_repeat_the_first("refund", "RF-LOST").await >= 4);
    t.stop().await;
}
engines!(lost_refund_answers_leave_it_pending_and_it_is_sent_again_into_one_refund);

async fn repeating_a_refund_request_answers_the_refund_and_resends_it_only_while_unacknowledged(db: TestDb) {
    let t = spawn_app(db, Options::default()).await;
    t.paid_order("RF-REP", 100).await;
    // Accepted: a repeat answers 200 with the same refund, and WeChat Pay is not called again.
    let body = json!({"amount_fen": 40, "out_refund_no": "RF-REP-1"});
    let (status, first) = refund(&t, "RF-REP", body.clone()).await;
    assert_eq!((status, first["upstream"].as_str()), (201, Some("created")), "{first}");
    let calls = t.sim_calls("refund").await;
    let (status, again) = refund(&t, "RF-REP", body).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["refund_id"], first["refund_id"]);
    assert_eq!(t.sim_calls("refund").await, calls, "{}: no second call", t.engine());
    // Other terms under the same number are refused.
    let (status, v) = refund(&t, "RF-REP", json!({"amount_fen": 41, "out_refund_no": "RF-REP-1"})).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (409, Some("out_refund_no_taken")),
        "{v}"
    );
    // Unacknowledged (WeChat Pay busy on every attempt of the first request): the repeat
    // sends it again, identical, and it is accepted.
    t.fault(json!({"kind": "system_error", "api": "refund", "count": 100}))
        .await;
    let body = json!({"amount_fen": 30, "out_refund_no": "RF-REP-2"});
    let (status, r) = refund(&t, "RF-REP", body.clone()).await;
    assert_eq!((status, r["status"].as_str()), (201, Some("pending")), "{r}");
    assert_ne!(r["upstream"], "created", "{r}");
    let busy = t.sim_faults_fired("system_error").await;
    let cleared = t
        .http
        .delete(format!("{}/simulator/faults", t.sim_url))
        .send()
        .await
        .unwrap();
    assert_eq!(cleared.status(), 200);
    let (status, r) = refund(&t, "RF-REP", body).await;
    assert_eq!((status, r["upstream"].as_str()), (201, Some("created")), "{r}");
    assert_eq!(
        t.assert_calls_repeat_the_first("refund", "out_refund_no", "RF-REP-2")
            .await as u64,
        busy + 1
    );
    t.stop().await;
}
engines!(repeating_a_refund_request_answers_the_refund_and_resends_it_only_while_unacknowledged);

async fn a_refund_wechat_pay_refuses_for_good_fails_and_frees_nothing_it_did_not_take(db: TestDb) {
    let t = spawn_app(db, Options::default()).await;
    t.paid_order("RF-FINAL", 100).await;
    // Refunded in full at WeChat Pay directly (as the merchant platform can): WeChat Pay
    // refuses any further refund, for good.
    crate::reconcile::refund_upstream_only(&t, "RF-FINAL", "RF-ELSEWHERE", 100, 100).await;
    let (status, v) = refund(&t, "RF-FINAL", json!({"amount_fen": 40, "out_refund_no": "RF-FINAL-1"})).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (502, Some("wechatpay_rejected")),
        "{v}"
    );
    let r = get_refund(&t, "RF-FINAL-1").await;
    assert_eq!(r["status"], "failed", "{r}");
    assert_eq!(t.order("RF-FINAL").await["refunded_fen"], 0);
    assert_eq!(t.sim_calls_with("refund", "business_error").await, 1);
    // Its one attempt was answered, so the refusal is taken as it is: nothing to ask.
    assert_eq!(t.sim_calls("refundquery").await, 0);
    t.stop().await;
}
engines!(a_refund_wechat_pay_refuses_for_good_fails_and_frees_nothing_it_did_not_take);

async fn a_rate_limited_refund_stays_pending_and_is_sent_again_later(db: TestDb) {
    let t = spawn_app(db, with_jobs_and_webhook()).await;
    t.paid_order("RF-SLOW", 100).await;
    // Limited twice: the request, then the first check's attempt.
    t.fault(json!({"kind": "frequency_limited", "api": "refund", "count": 2}))
        .await;
    let (status, r) = refund(&t, "RF-SLOW", json!({"amount_fen": 50, "out_refund_no": "RF-SLOW-1"})).await;
    assert_eq!(status, 201, "{r}");
    assert_eq!(r["status"], "pending", "FREQUENCY_LIMITED is not a refusal: {r}");
    // The checks send it again, identical, and WeChat Pay accepts it. A check whose attempt
    // was limited schedules the next at the check interval (a second here), not at the end
    // of its five-second lease: `wait_refund` gives up after five seconds.
    wait_refund(&t, "RF-SLOW-1", "succeeded").await;
    assert_eq!(t.sim_faults_fired("frequency_limited").await, 2);
    assert_eq!(
        t.assert_calls_repeat_the_first("refund", "out_refund_no", "RF-SLOW-1")
            .await,
        3
    );
    t.stop().await;
}
engines!(a_rate_limited_refund_stays_pending_and_is_sent_again_later);

async fn a_second_refund_within_the_minute_stays_pending_and_is_sent_again_after_it(db: TestDb) {
    // WeChat Pay's rule, not a fault: refunds of one order some time apart (a minute live;
    // ten here, 600 ms at the simulator's speed, so that the second request surely lands
    // within it and the gateway's next check, a second later, after it).
    let t = spawn_app(
        db,
        Options {
            sim: Box::new(|c| c.refund_interval = Duration::from_secs(600)),
            ..with_jobs_and_webhook()
        },
    )
    .await;
    t.paid_order("RF-MINUTE", 100).await;
    let (status, r) = refund(
        &t,
        "RF-MINUTE",
        json!({"amount_fen": 10, "out_refund_no": "RF-MINUTE-1"}),
    )
    .await;
    assert_eq!(status, 201, "{r}");
    let (status, r) = refund(
        &t,
        "RF-MINUTE",
        json!({"amount_fen": 20, "out_refund_no": "RF-MINUTE-2"}),
    )
    .await;
    assert_eq!(status, 201, "{r}");
    assert_eq!(
        r["status"], "pending",
        "a refund within the minute is not refused for good: {r}"
    );
    wait_refund(&t, "RF-MINUTE-1", "succeeded").await;
    wait_refund(&t, "RF-MINUTE-2", "succeeded").await;
    assert!(t.sim_calls_with("refund", "business_error").await >= 1);
    assert_eq!(t.order("RF-MINUTE").await["refunded_fen"], 30);
    t.stop().await;
}
engines!(a_second_refund_within_the_minute_stays_pending_and_is_sent_again_after_it);

async fn a_resend_refused_for_good_is_not_believed_when_wechat_pay_has_the_refund(db: TestDb) {
    let t = spawn_app(db, slow_refunds()).await;
    t.paid_order("RF-SYNC", 100).await;
    // The first request's answers are all lost (WeChat Pay made the refund), then the check's
    // resend is refused for good. The refusal proves nothing about the lost attempt: the
    // gateway asks refundquery, which says PROCESSING, and records the refund as accepted.
    t.fault(json!({"kind": "lose_answer", "api": "refund", "count": 3}))
        .await;
    t.fault(json!({"kind": "error_code", "api": "refund", "count": 1, "err_code": "NOTENOUGH"}))
        .await;
    let (status, r) = refund(&t, "RF-SYNC", json!({"amount_fen": 60, "out_refund_no": "RF-SYNC-1"})).await;
    assert_eq!((status, r["upstream"].as_str()), (201, Some("unknown")), "{r}");
    eventually("the refund is recorded as accepted", async || {
        get_refund(&t, "RF-SYNC-1").await["upstream"] == "created"
    })
    .await;
    let accepted = get_refund(&t, "RF-SYNC-1").await;
    assert_eq!(accepted["status"], "pending", "{accepted}");
    assert_eq!(t.sim_faults_fired("error_code").await, 1);
    // Accepted by the query, not by yet another resend.
    assert_eq!(t.sim_calls("refund").await, 4, "{}", t.engine());
    assert_eq!(
        t.assert_calls_repeat_the_first("refund", "out_refund_no", "RF-SYNC-1")
            .await,
        4
    );
    // Later queries that still say PROCESSING leave the acceptance as it was.
    let queries = t.sim_calls_with("refundquery", "success").await;
    eventually("another query", async || {
        t.sim_calls_with("refundquery", "success").await > queries
    })
    .await;
    let checks = t.app.metrics().checks_done("refund");
    eventually("its check ends", async || {
        t.app.metrics().checks_done("refund") > checks
    })
    .await;
    assert_eq!(
        get_refund(&t, "RF-SYNC-1").await["accepted_at"],
        accepted["accepted_at"]
    );
    assert_eq!(t.order("RF-SYNC").await["refunded_fen"], 0, "still pending");
    t.stop().await;
}
engines!(a_resend_refused_for_good_is_not_believed_when_wechat_pay_has_the_refund);

async fn a_refusal_after_a_lost_answer_within_one_request_leaves_the_refund_pending(db: TestDb) {
    let t = spawn_app(db, slow_refunds()).await;
    t.paid_order("RF-MIX", 100).await;
    // The request's first attempt is carried out (WeChat Pay makes the refund) and its answer
    // lost; its second attempt is refused for good. The refusal may come from the refund the
    // first attempt made, so it must not fail the refund.
    t.fault(json!({"kind": "lose_answer", "api": "refund", "count": 1}))
        .await;
    t.fault(json!({"kind": "error_code", "api": "refund", "count": 1, "err_code": "NOTENOUGH"}))
        .await;
    let (status, r) = refund(&t, "RF-MIX", json!({"amount_fen": 60, "out_refund_no": "RF-MIX-1"})).await;
    assert_eq!(
        (status, r["status"].as_str(), r["upstream"].as_str()),
        (201, Some("pending"), Some("unknown")),
        "{}: {r}",
        t.engine()
    );
    assert_eq!(t.sim_faults_fired("error_code").await, 1);
    // The checks send it again, identical, and WeChat Pay answers with the refund it made.
    eventually("the refund is recorded as accepted", async || {
        get_refund(&t, "RF-MIX-1").await["upstream"] == "created"
    })
    .await;
    let sim = t.sim_get("/simulator/orders/RF-MIX").await;
    assert_eq!(
        (
            sim["refunds"].as_array().unwrap().len(),
            sim["refunds"][0]["refund_fee"].as_i64()
        ),
        (1, Some(60)),
        "{sim}"
    );
    assert_eq!(get_refund(&t, "RF-MIX-1").await["status"], "pending");
    t.stop().await;
}
engines!(a_refusal_after_a_lost_answer_within_one_request_leaves_the_refund_pending);

fn refund_notification(key: &str, order: &str, refund_no: &str, fee: u64, status: RefundStatus) -> String {
    let n = RefundNotification {
        appid: TEST_APPID.into(),
        mch_id: TEST_MCH_ID.into(),
        transaction_id: "4200000000202611270000000001".into(),
        out_trade_no: order.into(),
        refund_id: "50300000000000000000000000001".into(),
        out_refund_no: refund_no.into(),
        total_fee: Fen::new(100).unwrap(),
        settlement_total_fee: None,
        refund_fee: Fen::new(fee).unwrap(),
        settlement_refund_fee: None,
        success_time: Some(BeijingTime::from_unix(1_795_000_000)),
        refund_status: status,
        refund_recv_accout: Some("支付用户的零钱".into()),
        refund_account: Some("REFUND_SOURCE_UNSETTLED_FUNDS".into()),
        refund_request_source: Some("API".into()),
        extra: Default::default(),
    };
    n.encode(&ApiKey::new(key).unwrap(), &Nonce::from_random_bytes([7; 16]))
        .unwrap()
}

async fn post_refund_notification(t: &TestApp, body: String) -> (u16, String) {
    t.notify_to("/notify/v2/refund", body).await
}

async fn refund_notifications_with_a_wrong_key_an_unknown_refund_or_another_amount_change_nothing(db: TestDb) {
    let t = spawn_app(db, slow_refunds()).await;
    // Numbers of this engine's own: the warnings of both engines' runs share one log.
    let no = format!("RF-NOTE-{}", t.engine().to_uppercase());
    let (no, r1, r9) = (no.as_str(), &format!("{no}-1"), &format!("{no}-9"));
    t.paid_order(no, 100).await;
    let (status, r) = refund(&t, no, json!({"amount_fen": 40, "out_refund_no": r1})).await;
    assert_eq!(status, 201, "{r}");
    let wrong_key = "0000000000000000000000000000000A";
    for (body, code) in [
        (refund_notification(wrong_key, no, r1, 40, RefundStatus::Success), 400),
        (
            refund_notification(TEST_API_KEY, no, r9, 40, RefundStatus::Success),
            404,
        ),
        (
            refund_notification(TEST_API_KEY, no, r1, 41, RefundStatus::Success),
            400,
        ),
        (
            refund_notification(TEST_API_KEY, "RF-OTHER", r1, 40, RefundStatus::Success),
            400,
        ),
        // A failure report naming another order does not even bring the check forward.
        (
            refund_notification(TEST_API_KEY, "RF-OTHER", r1, 40, RefundStatus::RefundClose),
            400,
        ),
        ("<xml><return_code>SUCCESS</return_code></xml>".to_owned(), 400),
    ] {
        let (status, reply) = post_refund_notification(&t, body).await;
        assert_eq!(status, code, "{reply}");
        assert!(reply.contains("<return_code><![CDATA[FAIL]]></return_code>"), "{reply}");
    }
    assert_eq!(t.app.metrics().notifications_with("wrong_order"), 2);
    // Each refusal of a decrypted notification is a warning naming the order, the refund and
    // why (the wrong key's cannot name them: nothing could be read).
    for (message, fields) in [
        (
            "refund notification for a refund wxpay did not ask for",
            vec![("out_trade_no", no), ("out_refund_no", r9.as_str())],
        ),
        (
            "refund notification with another amount",
            vec![
                ("out_trade_no", no),
                ("out_refund_no", r1.as_str()),
                ("expected", "Fen(40)"),
                ("got", "Fen(41)"),
            ],
        ),
        (
            "refund notification names another order",
            vec![("out_trade_no", "RF-OTHER"), ("out_refund_no", r1.as_str())],
        ),
    ] {
        assert!(
            !alerts(message, &fields).is_empty(),
            "a warning '{message}' with {fields:?}"
        );
    }
    let r = get_refund(&t, r1).await;
    assert_eq!(r["status"], "pending", "{} on {}", r, t.engine());
    assert_eq!(t.order(no).await["refunded_fen"], 0);

    // The genuine one settles it; its repeats change nothing.
    let genuine = refund_notification(TEST_API_KEY, no, r1, 40, RefundStatus::Success);
    for _ in 0..3 {
        let (status, reply) = post_refund_notification(&t, genuine.clone()).await;
        assert_eq!(status, 200, "{reply}");
        assert!(reply.contains("SUCCESS"), "{reply}");
    }
    let settled = get_refund(&t, r1).await;
    assert_eq!(settled["status"], "succeeded");
    // Settled when WeChat Pay says the money moved (the notification's success_time,
    // 1,795,000,000 s), not when the notification arrived.
    assert_eq!(
        settled["settled_at"],
        wxpay_gateway::time::rfc3339(1_795_000_000_000),
        "{settled}"
    );
    let kinds = t.event_kinds(no).await;
    assert_eq!(
        kinds.iter().filter(|k| *k == "refund_succeeded").count(),
        1,
        "{kinds:?}"
    );
    // A later REFUNDCLOSE for it is a contradiction: refused, nothing changes.
    let close = refund_notification(TEST_API_KEY, no, r1, 40, RefundStatus::RefundClose);
    assert_eq!(post_refund_notification(&t, close).await.0, 409);
    assert_eq!(t.order(no).await["refunded_fen"], 40);
    t.stop().await;
}
engines!(refund_notifications_with_a_wrong_key_an_unknown_refund_or_another_amount_change_nothing);

async fn a_refund_whose_notifications_never_verify_completes_through_refundquery(db: TestDb) {
    let t = spawn_app(db, with_jobs_and_webhook()).await;
    t.paid_order("RF-QUERY", 100).await;
    // Every refund notification for a while comes encrypted with a wrong key.
    t.fault(json!({"kind": "notify_bad_signature", "for_ms": 60_000})).await;
    let (status, r) = refund(
        &t,
        "RF-QUERY",
        json!({"amount_fen": 100, "out_refund_no": "RF-QUERY-1"}),
    )
    .await;
    assert_eq!(status, 201, "{r}");
    wait_refund(&t, "RF-QUERY-1", "succeeded").await;
    t.wait_status("RF-QUERY", "refunded").await;
    let settled = event(&t.order("RF-QUERY").await, "refund_succeeded");
    assert_eq!(settled["detail"]["source"], "query", "{settled}");
    // Settled when WeChat Pay's refundquery says the money moved, not when it was asked.
    let sim = t.sim_get("/simulator/orders/RF-QUERY").await;
    let upstream = sim["refunds"][0]["settled_at"].as_str().unwrap().to_owned();
    let at = wxpay_protocol::BeijingTime::parse_dashed(&upstream).unwrap().unix() * 1000;
    assert_eq!(
        get_refund(&t, "RF-QUERY-1").await["settled_at"],
        wxpay_gateway::time::rfc3339(at),
        "{sim}"
    );
    t.stop().await;
}
engines!(a_refund_whose_notifications_never_verify_completes_through_refundquery);

async fn a_refund_wechat_pay_closes_fails_and_gives_its_amount_back(db: TestDb) {
    let t = spawn_app(db, slow_refunds()).await;
    t.paid_order("RF-CLOSE", 100).await;
    let (status, _) = refund(
        &t,
        "RF-CLOSE",
        json!({"amount_fen": 100, "out_refund_no": "RF-CLOSE-1"}),
    )
    .await;
    assert_eq!(status, 201);
    let (status, v) = t
        .sim_post(
            "/simulator/refunds/RF-CLOSE-1/complete",
            json!({"status": "REFUNDCLOSE"}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    wait_refund(&t, "RF-CLOSE-1", "failed").await;
    eventually("a refund.failed event", async || {
        t.webhook.delivered().iter().any(|e| e["type"] == "refund.failed")
    })
    .await;
    let o = t.order("RF-CLOSE").await;
    assert_eq!(
        (o["status"].as_str(), o["refunded_fen"].as_i64()),
        (Some("paid"), Some(0))
    );
    // The whole amount can be refunded again.
    let (status, r) = refund(
        &t,
        "RF-CLOSE",
        json!({"amount_fen": 100, "out_refund_no": "RF-CLOSE-2"}),
    )
    .await;
    assert_eq!(status, 201, "{r} on {}", t.engine());
    t.stop().await;
}
engines!(a_refund_wechat_pay_closes_fails_and_gives_its_amount_back);

async fn a_refund_failure_from_a_notification_alone_frees_nothing_until_refundquery_confirms_it(db: TestDb) {
    // Refunds fall due for a check a minute after they are made: whatever settles the
    // refund here is a check the notification brought forward.
    let t = spawn_app(
        db,
        Options {
            sim: Box::new(|c| c.refund_delay = Duration::from_secs(100_000_000)),
            webhook: true,
            jobs: crate::support::prompt_but_patient_jobs(),
            ..Options::default()
        },
    )
    .await;
    t.paid_order("RF-SPLICE", 100).await;
    let (status, r) = refund(
        &t,
        "RF-SPLICE",
        json!({"amount_fen": 100, "out_refund_no": "RF-SPLICE-1"}),
    )
    .await;
    assert_eq!(status, 201, "{r}");
    let queries = t.sim_calls("refundquery").await;
    let answered = t.sim_calls_with("refundquery", "success").await;
    let checks = t.app.metrics().checks_done("refund");

    // A correctly encrypted REFUNDCLOSE that WeChat Pay never sent (spliced from genuine
    // blocks, or replayed): WeChat Pay still says PROCESSING.
    let forged = refund_notification(TEST_API_KEY, "RF-SPLICE", "RF-SPLICE-1", 100, RefundStatus::RefundClose);
    let (status, reply) = post_refund_notification(&t, forged).await;
    assert_eq!(status, 200, "{reply}");
    // Asked, and answered (PROCESSING): a check whose query failed would leave the refund
    // pending without deciding anything.
    eventually("the gateway asks WeChat Pay and is answered", async || {
        t.sim_calls_with("refundquery", "success").await > answered
    })
    .await;
    // Each check asks once and applies the answer before it ends: once as many checks have
    // ended as queries were made, every answer has been applied.
    eventually("the checks that asked have ended", async || {
        let asked = t.sim_calls("refundquery").await - queries;
        t.app.metrics().checks_done("refund") - checks >= asked
    })
    .await;
    assert_eq!(
        get_refund(&t, "RF-SPLICE-1").await["status"],
        "pending",
        "{}",
        t.engine()
    );
    // The amount stays reserved: nothing more can be refunded.
    let (status, v) = refund(&t, "RF-SPLICE", json!({"amount_fen": 1})).await;
    assert_eq!(status, 409, "{}: {v}", t.engine());
    assert_eq!(v["error"]["code"], "refund_exceeds_amount");

    // WeChat Pay really closes it: its notification makes the gateway ask, and the signed
    // answer fails the refund.
    let (status, v) = t
        .sim_post(
            "/simulator/refunds/RF-SPLICE-1/complete",
            json!({"status": "REFUNDCLOSE"}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let failed = wait_refund(&t, "RF-SPLICE-1", "failed").await;
    let settled = event(&t.order("RF-SPLICE").await, "refund_failed");
    assert_eq!(settled["detail"]["source"], "query", "{failed} {settled}");
    // The same failure reported again about the failed refund: acknowledged as a duplicate.
    let again = refund_notification(TEST_API_KEY, "RF-SPLICE", "RF-SPLICE-1", 100, RefundStatus::RefundClose);
    let duplicates = t.app.metrics().notifications_with("duplicate");
    let (status, reply) = post_refund_notification(&t, again).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(t.app.metrics().notifications_with("duplicate"), duplicates + 1);
    let (status, v) = refund(&t, "RF-SPLICE", json!({"amount_fen": 100})).await;
    assert_eq!(status, 201, "{}: the amount is free again: {v}", t.engine());
    t.stop().await;
}
engines!(a_refund_failure_from_a_notification_alone_frees_nothing_until_refundquery_confirms_it);

#[tokio::test]
async fn refunds_go_over_mutual_tls_with_the_p12_or_the_pem_pair_and_never_without_a_certificate() {
    let t = spawn_app(
        TestDb::sqlite(),
        Options {
            tls: true,
            ..with_jobs_and_webhook()
        },
    )
    .await;
    assert!(t.sim_url.starts_with("https://"), "{}", t.sim_url);
    // The default merchant presents its apiclient_cert.p12.
    t.paid_order("RF-TLS", 100).await;
    let (status, r) = refund(&t, "RF-TLS", json!({"amount_fen": 10, "out_refund_no": "RF-TLS-1"})).await;
    assert_eq!(status, 201, "{r}");
    wait_refund(&t, "RF-TLS-1", "succeeded").await;
    // The HMAC merchant presents its PEM pair.
    t.paid_order_of("hmac", "RF-TLS-H", 100).await;
    let (status, r) = refund(
        &t,
        "RF-TLS-H",
        json!({"amount_fen": 100, "merchant": "hmac", "out_refund_no": "RF-TLS-H1"}),
    )
    .await;
    assert_eq!(status, 201, "{r}");
    t.stop().await;

    let t = spawn_app(
        TestDb::sqlite(),
        Options {
            tls: true,
            hmac_without_cert: true,
            ..Options::default()
        },
    )
    .await;
    t.paid_order_of("hmac", "RF-NOCERT", 100).await;
    let (status, e) = refund(
        &t,
        "RF-NOCERT",
        json!({"amount_fen": 10, "merchant": "hmac", "out_refund_no": "RF-NOCERT-1"}),
    )
    .await;
    // Refused before anything is stored: the number stays free for when it is configured.
    assert_eq!(
        (status, e["error"]["code"].as_str()),
        (503, Some("not_configured")),
        "{e}"
    );
    assert!(e["error"]["message"].as_str().unwrap().contains("certificate"), "{e}");
    let (status, _) = t
        .api(Method::GET, "/v1/refunds/RF-NOCERT-1?merchant=hmac", None, None)
        .await;
    assert_eq!(status, 404);
    let o = t
        .api(Method::GET, "/v1/orders/RF-NOCERT?merchant=hmac", None, None)
        .await
        .1;
    assert_eq!(o["refunds"].as_array().unwrap().len(), 0, "{o}");
    t.stop().await;
}

#[test]
fn a_client_certificate_loads_from_the_pem_pair_or_the_p12_and_a_wrong_password_is_named() {
    crate::support::capture_alerts();
    let dir = std::env::temp_dir().join(format!("wxpay-cert-test-{}", std::process::id()));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let files = rt.block_on(async {
        let mut c = wxpay_simulator::SimConfig::new();
        c.tls = Some(wxpay_simulator::TlsConfig { dir: dir.clone() });
        wxpay_simulator::Simulator::new(c).unwrap().tls_files().unwrap()
    });
    let (cert, key) = &files.client[TEST_MCH_ID];
    let (cert, key) = (std::fs::read(cert).unwrap(), std::fs::read(key).unwrap());
    let p12 = std::fs::read(&files.client_p12[TEST_MCH_ID]).unwrap();
    assert!(wxpay_gateway::ClientCert::from_pem(&cert, &key).is_ok());
    assert!(wxpay_gateway::ClientCert::from_pkcs12(&p12, TEST_MCH_ID).is_ok());
    let e = wxpay_gateway::ClientCert::from_pkcs12(&p12, "wrong").unwrap_err();
    assert!(e.contains("password"), "{e}");
    let e = wxpay_gateway::ClientCert::from_pem(&key, &cert).unwrap_err();
    assert!(e.contains("certificate"), "{e}");
    // Debug never shows the key.
    let c = wxpay_gateway::ClientCert::from_pem(&cert, &key).unwrap();
    assert!(!format!("{c:?}").contains("PRIVATE"));
    let _ = std::fs::remove_dir_all(dir);
}
