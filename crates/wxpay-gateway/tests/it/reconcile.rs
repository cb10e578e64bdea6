//! Reconciliation against the simulator's bill, on both engines.

use reqwest::Method;
use serde_json::json;
use wxpay_gateway::ReconcileConfig;
use wxpay_gateway::reconcile::{Day, DifferenceKind, Quiet, Report, reconcile};
use wxpay_protocol::v2::{OrderRef, Refund};
use wxpay_protocol::{Fen, Nonce, OutRefundNo, OutTradeNo};

use crate::support::engines;
use crate::support::{Options, TestApp, TestDb, eventually, order_body, quick_jobs, spawn_app};

fn with_bills(jobs: bool) -> Options {
    Options {
        jobs: if jobs { quick_jobs() } else { Options::default().jobs },
        sim: Box::new(|c| c.bills_immediately = true),
        pin_beijing_noon: true,
        ..Options::default()
    }
}

async fn run(t: &TestApp, repair: bool) -> Report {
    let day = Day::containing(t.app.now());
    reconcile(&t.app, None, &day, repair, &Quiet).await.unwrap()
}

/// A refund asked for directly at WeChat Pay (as the merchant platform does), not through
/// wxpay.
pub(crate) async fn refund_upstream_only(t: &TestApp, order: &str, out_refund_no: &str, total: u64, fee: u64) {
    let merchant = crate::support::merchants(&t.sim_url)[0].credentials().unwrap();
    let call = Refund::new(
        OrderRef::OutTradeNo(OutTradeNo::new(order).unwrap()),
        OutRefundNo::new(out_refund_no).unwrap(),
        Fen::new(total).unwrap(),
        Fen::new(fee).unwrap(),
    );
    let body = wxpay_protocol::v2::encode(&call, &merchant, &Nonce::from_random_bytes([3; 16])).unwrap();
    let answer = t
        .http
        .post(format!("{}/secapi/pay/refund", t.sim_url))
        .body(body)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        answer.contains("<result_code><![CDATA[SUCCESS]]></result_code>"),
        "{answer}"
    );
}

async fn a_clean_day_balances_and_yuan_amounts_in_the_bill_become_exact_fen(db: TestDb) {
    let t = spawn_app(
        db,
        Options {
            webhook: true,
            ..with_bills(true)
        },
    )
    .await;
    // 0.07, 19.99 and 1000.10 yuan in the bill.
    for (no, fen) in [("RC-0007", 7), ("RC-1999", 1999), ("RC-100010", 100_010)] {
        t.paid_order(no, fen).await;
    }
    let (status, r) = t
        .api(
            Method::POST,
            "/v1/orders/RC-1999/refunds",
            Some(json!({"amount_fen": 999})),
            None,
        )
        .await;
    assert_eq!(status, 201, "{r}");
    eventually("the refund succeeds", async || {
        t.order("RC-1999").await["refunded_fen"] == 999
    })
    .await;

    let report = run(&t, false).await;
    assert!(report.balanced, "{}: {report:#?}", t.engine());
    assert!(report.found.is_empty());
    assert_eq!(
        (
            report.bill.payments,
            report.bill.payments_fen,
            report.bill.refunds,
            report.bill.refunds_fen
        ),
        (3, 7 + 1999 + 100_010, 1, 999)
    );
    assert_eq!(report.bill, report.local);
    // The bill came as gzip (several times smaller on the wire) and was unpacked.
    let asked = t.sim_requests_having("downloadbill", "tar_type", "GZIP").await;
    assert_eq!(asked.len(), 1, "{asked:?}");
    t.stop().await;
}
engines!(a_clean_day_balances_and_yuan_amounts_in_the_bill_become_exact_fen);

async fn a_bill_wechat_pay_cannot_gzip_is_asked_for_again_as_text(db: TestDb) {
    let t = spawn_app(db, with_bills(false)).await;
    t.paid_order("RZ-GZIP-1", 4321).await;
    // "CompressGZip Error": WeChat Pay's compression failed, the bill itself is there.
    t.fault(json!({"kind": "bill_gzip_error"})).await;
    let report = run(&t, false).await;
    assert!(report.balanced, "{}: {report:#?}", t.engine());
    assert_eq!((report.bill.payments, report.bill.payments_fen), (1, 4321));
    assert_eq!(t.sim_faults_fired("bill_gzip_error").await, 1);
    let calls = t.sim_requests_having("downloadbill", "bill_type", "ALL").await;
    let asked: Vec<_> = calls.iter().map(|c| c.get("tar_type").cloned()).collect();
    assert_eq!(asked, [Some(json!("GZIP")), None], "gzip first, then text");
    t.stop().await;
}
engines!(a_bill_wechat_pay_cannot_gzip_is_asked_for_again_as_text);

async fn seeded_differences_are_each_reported_and_settled_by_repair(db: TestDb) {
    let t = spawn_app(db, with_bills(false)).await;
    // A clean order, for contrast.
    t.paid_order("RD-CLEAN", 100).await;
    // 1. Paid upstream, pending here: every notification for it fails verification.
    t.fault(json!({"kind": "notify_bad_signature", "out_trade_no": "RD-PENDING", "for_ms": 600_000}))
        .await;
    let mut body = order_body(300);
    body["out_trade_no"] = json!("RD-PENDING");
    t.create(body).await;
    t.sim_pay(json!({"out_trade_no": "RD-PENDING"})).await;
    // Its forged notification has been answered, so the gateway has decided on it.
    t.notification_answered("RD-PENDING").await;
    assert_eq!(
        t.sim_get("/simulator/orders/RD-PENDING").await["trade_state"],
        "SUCCESS"
    );
    assert_eq!(t.order("RD-PENDING").await["status"], "pending");
    // 2. An amount mismatch: the database says 400 fen for a 500 fen payment.
    t.paid_order("RD-AMOUNT", 500).await;
    let store = t.app.store();
    let o = store
        .order("default".into(), "RD-AMOUNT".parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    store
        .correct_amount(
            o.id,
            Fen::new(400).unwrap(),
            json!({"seeded": "by the test"}),
            t.app.now(),
        )
        .await
        .unwrap()
        .unwrap();
    // 3. A refund only upstream.
    t.paid_order("RD-REFUND", 1000).await;
    refund_upstream_only(&t, "RD-REFUND", "RD-UP-ONLY", 1000, 300).await;
    eventually("WeChat Pay settles the refund", async || {
        t.sim_get("/simulator/orders/RD-REFUND").await["refunds"][0]["status"] == "SUCCESS"
    })
    .await;

    let report = run(&t, false).await;
    assert!(!report.balanced, "{report:#?}");
    let mut found: Vec<(DifferenceKind, &str, &str)> = report
        .found
        .iter()
        .map(|d| {
            (
                d.kind,
                d.record,
                d.out_refund_no.as_deref().unwrap_or(d.out_trade_no.as_str()),
            )
        })
        .collect();
    found.sort_by_key(|f| f.2.to_owned());
    assert_eq!(
        found,
        [
            (DifferenceKind::AmountDiffers, "payment", "RD-AMOUNT"),
            (DifferenceKind::StatusDiffers, "payment", "RD-PENDING"),
            (DifferenceKind::MissingLocally, "refund", "RD-UP-ONLY"),
        ],
        "{}",
        t.engine()
    );
    assert!(report.repairs.is_empty());
    assert_ne!(report.bill, report.local);

    let repaired = run(&t, true).await;
    assert!(repaired.balanced, "{}: {repaired:#?}", t.engine());
    assert_eq!(repaired.repairs.len(), 3);
    assert!(repaired.repairs.iter().all(|r| r.result == "settled"), "{repaired:#?}");
    assert!(repaired.remaining.is_empty());
    assert_eq!(repaired.bill, repaired.local);

    let pending = t.order("RD-PENDING").await;
    assert_eq!(pending["status"], "paid");
    let amount = t.order("RD-AMOUNT").await;
    assert_eq!(amount["amount_fen"], 500);
    let kinds: Vec<&str> = amount["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds.last(), Some(&"reconciled"), "{kinds:?}");
    let refunded = t.order("RD-REFUND").await;
    assert_eq!(refunded["refunded_fen"], 300, "{refunded}");
    assert_eq!(refunded["refunds"][0]["out_refund_no"], "RD-UP-ONLY");
    assert_eq!(refunded["refunds"][0]["status"], "succeeded");

    // The next run finds nothing.
    let again = run(&t, false).await;
    assert!(again.balanced && again.found.is_empty(), "{again:#?}");
    t.stop().await;
}
engines!(seeded_differences_are_each_reported_and_settled_by_repair);

#[tokio::test]
async fn a_day_without_transactions_balances_when_the_database_has_none_either() {
    let t = spawn_app(TestDb::sqlite(), with_bills(false)).await;
    let day = Day::before(t.app.now());
    let report = reconcile(&t.app, Some("hmac"), &day, true, &Quiet).await.unwrap();
    assert!(report.balanced && report.found.is_empty(), "{report:#?}");
    assert_eq!(report.merchant, "hmac");
    assert!(reconcile(&t.app, Some("nobody"), &day, false, &Quiet).await.is_err());
    assert!(Day::parse("2026-02-30").is_err());
    assert!(Day::parse("yesterday").is_err());
    t.stop().await;
}

async fn the_daily_reconciliation_runs_once_and_reports_in_the_metrics(db: TestDb) {
    let t = spawn_app(
        db,
        Options {
            reconcile: ReconcileConfig {
                daily_at_minute: Some(0),
                repair: true,
            },
            ..with_bills(true)
        },
    )
    .await;
    let metrics = async || t.metrics_text().await;
    eventually("both merchants reconciled", async || {
        let m = metrics().await;
        m.contains("wxpay_reconcile_balanced{merchant=\"default\"} 1")
            && m.contains("wxpay_reconcile_balanced{merchant=\"hmac\"} 1")
    })
    .await;
    // That a second run does not happen can only be seen over a window: three rounds of the
    // daily loop, which pauses 20 × poll_every between rounds.
    tokio::time::sleep(quick_jobs().poll_every * 20 * 3).await;
    let m = metrics().await;
    assert!(
        m.contains("wxpay_reconcile_runs_total{merchant=\"default\",result=\"balanced\"} 1"),
        "{}: one run a day\n{m}",
        t.engine()
    );
    t.stop().await;
}
engines!(the_daily_reconciliation_runs_once_and_reports_in_the_metrics);

async fn a_refund_settled_upstream_but_pending_here_is_settled_by_refundquery(db: TestDb) {
    let t = spawn_app(db, with_bills(false)).await;
    t.paid_order("RS-0001", 800).await;
    // Its refund notifications never verify, and no background check runs.
    t.fault(json!({"kind": "notify_bad_signature", "out_trade_no": "RS-0001", "for_ms": 600_000}))
        .await;
    let (status, r) = t
        .api(
            Method::POST,
            "/v1/orders/RS-0001/refunds",
            Some(json!({"amount_fen": 800, "out_refund_no": "RS-1-R"})),
            None,
        )
        .await;
    assert_eq!(status, 201, "{r}");
    eventually("WeChat Pay settles it", async || {
        t.sim_get("/simulator/orders/RS-0001").await["refunds"][0]["status"] == "SUCCESS"
    })
    .await;
    let report = run(&t, false).await;
    let kinds: Vec<_> = report.found.iter().map(|d| (d.kind, d.record)).collect();
    assert_eq!(
        kinds,
        [(DifferenceKind::StatusDiffers, "refund")],
        "{}: {report:#?}",
        t.engine()
    );
    let repaired = run(&t, true).await;
    assert!(repaired.balanced, "{repaired:#?}");
    let o = t.order("RS-0001").await;
    assert_eq!(
        (o["status"].as_str(), o["refunded_fen"].as_i64()),
        (Some("refunded"), Some(800)),
        "{o}"
    );
    t.stop().await;
}
engines!(a_refund_settled_upstream_but_pending_here_is_settled_by_refundquery);

async fn a_refund_the_bill_lists_but_the_gateway_never_heard_accepted_is_reported_and_repaired(db: TestDb) {
    let mut options = with_bills(false);
    // WeChat Pay keeps the refund processing: only its acceptance is in question.
    options.sim = Box::new(|c| {
        c.bills_immediately = true;
        c.refund_delay = std::time::Duration::from_secs(100_000_000);
    });
    let t = spawn_app(db, options).await;
    t.paid_order("RU-0001", 500).await;
    // WeChat Pay makes the refund and every answer is lost: the gateway has it pending, its
    // acceptance unknown, and no background check runs.
    t.fault(json!({"kind": "lose_answer", "api": "refund", "count": 3}))
        .await;
    let (status, r) = t
        .api(
            Method::POST,
            "/v1/orders/RU-0001/refunds",
            Some(json!({"amount_fen": 200, "out_refund_no": "RU-1-R"})),
            None,
        )
        .await;
    assert_eq!((status, r["upstream"].as_str()), (201, Some("unknown")), "{r}");
    // The bill lists it as processing: the day does not balance, and the report says why.
    let report = run(&t, false).await;
    assert!(!report.balanced, "{report:#?}");
    let kinds: Vec<_> = report.found.iter().map(|d| (d.kind, d.record)).collect();
    assert_eq!(
        kinds,
        [(DifferenceKind::StatusDiffers, "refund")],
        "{}: {report:#?}",
        t.engine()
    );
    // An hour later, repair asks refundquery, records the acceptance at the bill's time (not
    // the repair's), and the day balances.
    t.app.clock().advance(std::time::Duration::from_secs(3600));
    let repaired = run(&t, true).await;
    assert!(repaired.balanced, "{}: {repaired:#?}", t.engine());
    let (_, r) = t.api(Method::GET, "/v1/refunds/RU-1-R", None, None).await;
    assert_eq!(
        (r["upstream"].as_str(), r["status"].as_str()),
        (Some("created"), Some("pending")),
        "{r}"
    );
    let (asked, accepted) = (r["created_at"].as_str().unwrap(), r["accepted_at"].as_str().unwrap());
    assert_eq!(
        accepted[..15],
        asked[..15],
        "accepted at the bill's time, not the repair's"
    );
    let again = run(&t, false).await;
    assert!(again.balanced && again.found.is_empty(), "{again:#?}");
    t.stop().await;
}
engines!(a_refund_the_bill_lists_but_the_gateway_never_heard_accepted_is_reported_and_repaired);

async fn a_payment_wechat_pay_does_not_have_is_reported_and_never_downgraded(db: TestDb) {
    let t = spawn_app(db, with_bills(false)).await;
    t.paid_order("RM-REAL", 100).await;
    // Paid here by a correctly signed notification, while WeChat Pay has the order unpaid
    // (a leaked key, or a notification from a test system): the bill does not list it.
    let mut body = order_body(500);
    body["out_trade_no"] = json!("RM-GHOST");
    t.create(body).await;
    let now = wxpay_protocol::BeijingTime::from_unix(t.app.now().unix_secs()).to_compact();
    let forged = crate::support::notification(
        crate::support::DEFAULT,
        "RM-GHOST",
        500,
        "4200000000202611279999999999",
        |f| f.set("time_end", now),
    );
    let (status, reply) = t.notify(forged).await;
    assert_eq!(status, 200, "{reply}");
    let report = run(&t, true).await;
    let ghost: Vec<_> = report
        .remaining
        .iter()
        .filter(|d| d.out_trade_no == "RM-GHOST")
        .collect();
    assert_eq!(ghost.len(), 1, "{}: {report:#?}", t.engine());
    assert_eq!(ghost[0].kind, DifferenceKind::MissingUpstream);
    assert!(!report.balanced);
    let repair = report
        .repairs
        .iter()
        .find(|r| r.difference.out_trade_no == "RM-GHOST")
        .unwrap();
    assert_eq!(repair.result, "unresolved");
    assert!(repair.detail.contains("never downgraded"), "{}", repair.detail);
    assert_eq!(t.order("RM-GHOST").await["status"], "paid");
    t.stop().await;
}
engines!(a_payment_wechat_pay_does_not_have_is_reported_and_never_downgraded);

#[tokio::test]
async fn two_mini_programs_on_one_merchant_number_each_reconcile_their_own_rows() {
    let t = spawn_app(
        TestDb::sqlite(),
        Options {
            second_app: true,
            ..with_bills(false)
        },
    )
    .await;
    t.paid_order("RA-DEFAULT", 100).await;
    t.paid_order_of("app2", "RA-APP2", 250).await;
    let day = Day::containing(t.app.now());
    for (merchant, fen) in [("default", 100), ("app2", 250)] {
        let report = reconcile(&t.app, Some(merchant), &day, false, &Quiet).await.unwrap();
        assert!(report.balanced, "{merchant}: {report:#?}");
        assert_eq!((report.bill.payments, report.bill.payments_fen), (1, fen), "{merchant}");
    }
    t.stop().await;
}

async fn a_refund_accepted_across_midnight_balances_both_days_after_repair(db: TestDb) {
    let t = spawn_app(db, with_bills(true)).await;
    t.paid_order("RN-0001", 600).await;
    let (status, r) = t
        .api(
            Method::POST,
            "/v1/orders/RN-0001/refunds",
            Some(json!({"amount_fen": 200, "out_refund_no": "RN-1-R"})),
            None,
        )
        .await;
    assert_eq!(status, 201, "{r}");
    eventually("the refund succeeds", async || {
        t.order("RN-0001").await["refunded_fen"] == 200
    })
    .await;
    // The gateway heard WeChat Pay's answer on the other side of midnight: its record
    // dates the acceptance to the day before the bill's.
    let today = Day::containing(t.app.now());
    let yesterday = Day::before(t.app.now());
    let store = t.app.store();
    let refund = store
        .refund("default".into(), "RN-1-R".parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    store
        .move_refund_accepted_at(
            refund.id,
            today.start_ms() - std::time::Duration::from_millis(100),
            json!({"seeded": "by the test"}),
            t.app.now(),
        )
        .await
        .unwrap();
    // Today balances: the bill's refund is found by its number and counted on both sides.
    let report = reconcile(&t.app, None, &today, false, &Quiet).await.unwrap();
    assert!(report.balanced, "{}: {report:#?}", t.engine());
    // Yesterday has it but the bill of yesterday does not.
    let report = reconcile(&t.app, None, &yesterday, false, &Quiet).await.unwrap();
    assert_eq!(report.found.len(), 1, "{report:#?}");
    assert_eq!(report.found[0].kind, DifferenceKind::MissingUpstream);
    // Repairing today moves it to the bill's day; then both days balance.
    let report = reconcile(&t.app, None, &today, true, &Quiet).await.unwrap();
    assert_eq!(report.moved_to_this_day, ["RN-1-R"], "{report:#?}");
    let report = reconcile(&t.app, None, &yesterday, false, &Quiet).await.unwrap();
    assert!(report.balanced, "{report:#?}");
    let report = reconcile(&t.app, None, &today, false, &Quiet).await.unwrap();
    assert!(report.balanced && report.found.is_empty(), "{report:#?}");
    t.stop().await;
}
engines!(a_refund_accepted_across_midnight_balances_both_days_after_repair);
