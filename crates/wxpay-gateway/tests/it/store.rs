//! The `Store` contract, run unchanged on SQLite and (with `DATABASE_URL`) PostgreSQL.

use std::sync::Arc;

use wxpay_gateway::store::{
    Created, IdemClaim, IdemKey, ImportedRefund, NewOrder, NewRefund, NoticeKind, NotificationRecord, OrderFilter,
    OrderStatus, Payment, PaymentOutcome, RefundCreated, RefundOutcome, RefundResult, RefundStatus, Source, Store,
    StoreError,
};

use std::time::Duration;

use wxpay_gateway::time::Millis;
use wxpay_protocol::{Fen, OutTradeNo};

use crate::support::TestDb;
use crate::support::engines;

pub(crate) const T0: Millis = Millis::from_unix_ms(1_795_000_000_000);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn fen(amount: i64) -> Fen {
    Fen::new(u64::try_from(amount).unwrap()).unwrap()
}

fn no(out_trade_no: &str) -> OutTradeNo {
    OutTradeNo::new(out_trade_no).unwrap()
}

/// An order of `merchant` numbered `no` for `amount` fen, made at `T0`.
pub(crate) fn new_order(merchant: &str, no: &str, amount: i64) -> NewOrder {
    NewOrder {
        merchant: merchant.into(),
        out_trade_no: no.parse().unwrap(),
        appid: "wxd678efh567hg6787".into(),
        mch_id: "1230000109".into(),
        description: "test".into(),
        amount_fen: fen(amount),
        openid: "openid".into(),
        attach: None,
        client_ip: "127.0.0.1".into(),
        expires_at: T0 + ms(7_200_000),
        first_check_at: T0 + ms(60_000),
        request_hash: format!("hash-{no}-{amount}"),
        now: T0,
    }
}

fn payment(no: &str, tx: &str, amount: i64) -> Payment {
    Payment {
        merchant: "default".into(),
        out_trade_no: no.parse().unwrap(),
        transaction_id: tx.into(),
        amount_fen: fen(amount),
        paid_at: T0 + ms(1000),
        source: Source::Notification,
        now: T0 + ms(1500),
    }
}

fn record(no: &str) -> NotificationRecord {
    NotificationRecord {
        received_at: T0,
        kind: NoticeKind::Payment,
        merchant: Some("default".into()),
        out_trade_no: Some(no.into()),
        transaction_id: None,
        verdict: None,
        reason: None,
        body: "<xml/>".into(),
        peer: None,
        body_sha256: None,
    }
}

async fn created(store: &Arc<dyn Store>, merchant: &str, no: &str, amount: i64) -> wxpay_gateway::store::Order {
    match store.create_order(new_order(merchant, no, amount)).await.unwrap() {
        Created::New(o) => o,
        Created::Existing(o) => panic!("{no} existed: {o:?}"),
    }
}

async fn an_order_number_is_stored_once_per_merchant(db: TestDb) {
    let store = db.store().await;
    let first = created(&store, "default", "N1", 100).await;
    assert_eq!(first.status, OrderStatus::Pending);
    match store.create_order(new_order("default", "N1", 999)).await.unwrap() {
        Created::Existing(o) => assert_eq!((o.id, o.amount_fen), (first.id, fen(100)), "{}", db.engine),
        Created::New(_) => panic!("{}: a second order with one number", db.engine),
    }
    // Another merchant may use the same number.
    created(&store, "other", "N1", 5).await;
    let events = store.events(first.id).await.unwrap();
    assert_eq!(
        events.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>(),
        ["created"],
        "{}",
        db.engine
    );
}
engines!(an_order_number_is_stored_once_per_merchant);

async fn a_payment_applies_once_and_a_repeat_changes_nothing(db: TestDb) {
    let store = db.store().await;
    let o = created(&store, "default", "P1", 100).await;
    let first = store
        .apply_payment(payment("P1", "4200000001", 100), Some(record("P1")))
        .await
        .unwrap();
    let PaymentOutcome::Applied(paid) = first else {
        panic!("{}: {first:?}", db.engine)
    };
    assert_eq!(paid.status, OrderStatus::Paid);
    assert_eq!(paid.transaction_id.as_deref(), Some("4200000001"));
    assert_eq!(paid.paid_at, Some(T0 + ms(1000)));
    let again = store
        .apply_payment(payment("P1", "4200000001", 100), Some(record("P1")))
        .await
        .unwrap();
    assert!(
        matches!(again, PaymentOutcome::AlreadyPaid(_)),
        "{}: {again:?}",
        db.engine
    );
    let kinds: Vec<String> = store.events(o.id).await.unwrap().into_iter().map(|e| e.kind).collect();
    assert_eq!(kinds, ["created", "paid"], "{}", db.engine);
    let events = store.claim_outbox(T0 + ms(2000), T0 + ms(60_000), 10).await.unwrap();
    assert_eq!(events.len(), 1, "{}: one event for one payment", db.engine);
    assert_eq!(events[0].event_type, "order.paid");
    let payload: serde_json::Value = serde_json::from_str(&events[0].payload).unwrap();
    assert_eq!(payload["id"], events[0].id.as_str());
    assert_eq!(payload["data"]["amount_fen"], 100);
}
engines!(a_payment_applies_once_and_a_repeat_changes_nothing);

async fn concurrent_payments_of_one_order_make_exactly_one_transition(db: TestDb) {
    let store = db.store().await;
    let o = created(&store, "default", "C1", 100).await;
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .apply_payment(payment("C1", "4200000002", 100), Some(record("C1")))
                    .await
            })
        })
        .collect();
    let mut applied = 0;
    for t in tasks {
        match t.await.unwrap().unwrap() {
            PaymentOutcome::Applied(_) => applied += 1,
            PaymentOutcome::AlreadyPaid(_) => {}
            other => panic!("{}: {other:?}", db.engine),
        }
    }
    assert_eq!(applied, 1, "{}", db.engine);
    let paid = store
        .events(o.id)
        .await
        .unwrap()
        .iter()
        .filter(|e| e.kind == "paid")
        .count();
    assert_eq!(paid, 1, "{}", db.engine);
    assert_eq!(
        store
            .claim_outbox(T0 + ms(2000), T0 + ms(60_000), 100)
            .await
            .unwrap()
            .len(),
        1,
        "{}",
        db.engine
    );
}
engines!(concurrent_payments_of_one_order_make_exactly_one_transition);

async fn a_wrong_amount_an_unknown_order_or_a_reused_transaction_change_nothing(db: TestDb) {
    let store = db.store().await;
    let a = created(&store, "default", "W1", 100).await;
    created(&store, "default", "W2", 100).await;
    let wrong = store
        .apply_payment(payment("W1", "4200000003", 99), Some(record("W1")))
        .await
        .unwrap();
    assert!(
        matches!(wrong, PaymentOutcome::AmountMismatch { expected, got } if (expected, got) == (fen(100), fen(99))),
        "{}: {wrong:?}",
        db.engine
    );
    let unknown = store
        .apply_payment(payment("NOPE", "4200000004", 100), None)
        .await
        .unwrap();
    assert!(
        matches!(unknown, PaymentOutcome::UnknownOrder),
        "{}: {unknown:?}",
        db.engine
    );
    assert!(matches!(
        store
            .apply_payment(payment("W2", "4200000005", 100), None)
            .await
            .unwrap(),
        PaymentOutcome::Applied(_)
    ));
    // The transaction of W2 cannot pay W1 as well.
    let reused = store
        .apply_payment(payment("W1", "4200000005", 100), None)
        .await
        .unwrap();
    assert!(
        matches!(reused, PaymentOutcome::TransactionConflict(_)),
        "{}: {reused:?}",
        db.engine
    );
    // W2 paid again with another transaction: a conflict, not a second payment.
    let other_tx = store
        .apply_payment(payment("W2", "4200000006", 100), None)
        .await
        .unwrap();
    assert!(
        matches!(other_tx, PaymentOutcome::TransactionConflict(_)),
        "{}: {other_tx:?}",
        db.engine
    );
    let w1 = store.order("default".into(), no("W1")).await.unwrap().unwrap();
    assert_eq!(
        (w1.status, w1.transaction_id),
        (OrderStatus::Pending, None),
        "{}",
        db.engine
    );
    assert_eq!(store.events(a.id).await.unwrap().len(), 1, "{}", db.engine);
    assert_eq!(
        store
            .claim_outbox(T0 + ms(2000), T0 + ms(60_000), 100)
            .await
            .unwrap()
            .len(),
        1,
        "{}",
        db.engine
    );
}
engines!(a_wrong_amount_an_unknown_order_or_a_reused_transaction_change_nothing);

async fn a_paid_order_is_never_closed_or_failed_and_a_closed_one_can_still_be_paid(db: TestDb) {
    let store = db.store().await;
    let paid = created(&store, "default", "S1", 100).await;
    store
        .apply_payment(payment("S1", "4200000007", 100), None)
        .await
        .unwrap();
    assert!(
        store
            .close_order(paid.id, "test".into(), T0 + ms(3000))
            .await
            .unwrap()
            .is_none(),
        "{}",
        db.engine
    );
    assert!(
        store
            .fail_order(paid.id, "test".into(), T0 + ms(3000))
            .await
            .unwrap()
            .is_none(),
        "{}",
        db.engine
    );
    assert_eq!(
        store.order("default".into(), no("S1")).await.unwrap().unwrap().status,
        OrderStatus::Paid
    );

    let closed = created(&store, "default", "S2", 100).await;
    let c = store
        .close_order(closed.id, "expired".into(), T0 + ms(3000))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(c.status, OrderStatus::Closed);
    assert!(
        store
            .close_order(closed.id, "again".into(), T0 + ms(4000))
            .await
            .unwrap()
            .is_none(),
        "{}",
        db.engine
    );
    // WeChat Pay is the truth about money: a verified payment of a closed order is recorded.
    let late = store
        .apply_payment(payment("S2", "4200000008", 100), None)
        .await
        .unwrap();
    assert!(matches!(late, PaymentOutcome::Applied(_)), "{}: {late:?}", db.engine);
    // S1's payment and S2's closing are due; S2's late payment waits for its closing to be
    // delivered, so that a webhook receiver sees S2 closed and then paid, never the reverse.
    let first = store.claim_outbox(T0 + ms(9000), T0 + ms(60_000), 100).await.unwrap();
    let mut types: Vec<&str> = first.iter().map(|e| e.event_type.as_str()).collect();
    types.sort();
    assert_eq!(types, ["order.closed", "order.paid"], "{}", db.engine);
    let closing = first.iter().find(|e| e.event_type == "order.closed").unwrap();
    assert!(
        store
            .claim_outbox(T0 + ms(70_000), T0 + ms(80_000), 100)
            .await
            .unwrap()
            .iter()
            .all(|e| e.event_type != "order.paid" || e.payload.contains("\"S1\"")),
        "{}: S2's payment is not claimed while its closing waits",
        db.engine
    );
    store
        .outbox_delivered(closing.id.clone(), T0 + ms(90_000))
        .await
        .unwrap();
    let then = store.claim_outbox(T0 + ms(90_000), T0 + ms(95_000), 100).await.unwrap();
    assert!(
        then.iter()
            .any(|e| e.event_type == "order.paid" && e.payload.contains("\"S2\"")),
        "{}: {then:?}",
        db.engine
    );
}
engines!(a_paid_order_is_never_closed_or_failed_and_a_closed_one_can_still_be_paid);

/// A key of `owner`.
fn idem(scope: &str, key: &str, owner: &str) -> IdemKey {
    IdemKey {
        scope: scope.into(),
        key: key.into(),
        owner: owner.into(),
    }
}

fn in_progress(hash: &str) -> IdemClaim {
    IdemClaim::InProgress {
        request_hash: hash.into(),
    }
}

async fn an_idempotency_key_is_claimed_once_then_answers_from_the_stored_response(db: TestDb) {
    let store = db.store().await;
    let claim = |owner: &str| store.idem_claim(idem("scope", "key-1", owner), "h1".into(), T0, LEASE);
    assert_eq!(
        claim("a").await.unwrap(),
        IdemClaim::Claimed { created_at: T0 },
        "{}",
        db.engine
    );
    assert_eq!(claim("b").await.unwrap(), in_progress("h1"), "{}", db.engine);
    store.idem_release(idem("scope", "key-1", "a")).await.unwrap();
    assert_eq!(
        claim("b").await.unwrap(),
        IdemClaim::Claimed { created_at: T0 },
        "{}: a released key is free",
        db.engine
    );
    assert!(
        store
            .idem_finish(idem("scope", "key-1", "b"), 201, "{\"a\":1}".into())
            .await
            .unwrap()
    );
    assert_eq!(
        claim("c").await.unwrap(),
        IdemClaim::Done {
            request_hash: "h1".into(),
            status: 201,
            response: "{\"a\":1}".into()
        },
        "{}",
        db.engine
    );
    // Keys are scoped: another token's key of the same name is its own.
    let other = store
        .idem_claim(idem("scope2", "key-1", "d"), "h2".into(), T0, LEASE)
        .await
        .unwrap();
    assert_eq!(other, IdemClaim::Claimed { created_at: T0 }, "{}", db.engine);
}
engines!(an_idempotency_key_is_claimed_once_then_answers_from_the_stored_response);

const LEASE: Duration = Duration::from_secs(60);

async fn a_key_left_unrenewed_past_its_lease_is_taken_over_only_by_the_same_request(db: TestDb) {
    let store = db.store().await;
    let claim = |owner: &'static str, hash: &'static str, at: Millis| {
        store.idem_claim(idem("s", "k", owner), hash.into(), at, LEASE)
    };
    assert_eq!(
        claim("a", "h1", T0).await.unwrap(),
        IdemClaim::Claimed { created_at: T0 },
        "{}",
        db.engine
    );
    // Within the lease the first request still owns it.
    assert_eq!(
        claim("b", "h1", T0 + LEASE - ms(1)).await.unwrap(),
        in_progress("h1"),
        "{}",
        db.engine
    );
    // Its owner renews it: the lease runs from then.
    assert!(store.idem_renew(idem("s", "k", "a"), T0 + ms(30_000)).await.unwrap());
    assert!(
        !store.idem_renew(idem("s", "k", "x"), T0 + ms(30_000)).await.unwrap(),
        "not x's"
    );
    assert_eq!(
        claim("b", "h1", T0 + LEASE).await.unwrap(),
        in_progress("h1"),
        "{}",
        db.engine
    );
    // Past it, another body still does not get it; the same body does, once.
    let late = T0 + ms(30_000) + LEASE;
    assert_eq!(
        claim("c", "h2", late).await.unwrap(),
        in_progress("h1"),
        "{}",
        db.engine
    );
    assert_eq!(
        claim("b", "h1", late).await.unwrap(),
        IdemClaim::Claimed { created_at: T0 },
        "{}: the key keeps its first time",
        db.engine
    );
    assert_eq!(
        claim("d", "h1", late + ms(1)).await.unwrap(),
        in_progress("h1"),
        "{}: the lease starts again for the new owner",
        db.engine
    );
    // The first owner, still running, can neither renew, answer nor release it any more.
    assert!(!store.idem_renew(idem("s", "k", "a"), late + ms(2)).await.unwrap());
    assert!(!store.idem_finish(idem("s", "k", "a"), 500, "{}".into()).await.unwrap());
    store.idem_release(idem("s", "k", "a")).await.unwrap();
    assert_eq!(
        claim("e", "h1", late + ms(3)).await.unwrap(),
        in_progress("h1"),
        "{}",
        db.engine
    );
    // The new owner's answer is kept, and a key with an answer is never taken over.
    assert!(store.idem_finish(idem("s", "k", "b"), 201, "{}".into()).await.unwrap());
    assert!(
        matches!(
            claim("f", "h1", T0 + 10 * LEASE).await.unwrap(),
            IdemClaim::Done { status: 201, .. }
        ),
        "{}",
        db.engine
    );
}
engines!(a_key_left_unrenewed_past_its_lease_is_taken_over_only_by_the_same_request);

async fn keys_older_than_the_cut_are_forgotten_in_bounded_steps(db: TestDb) {
    let store = db.store().await;
    for i in 0..7 {
        let at = if i < 5 { T0 } else { T0 + ms(1000) };
        let claimed = store
            .idem_claim(idem("s", &format!("k{i}"), "a"), "h".into(), at, LEASE)
            .await
            .unwrap();
        assert_eq!(claimed, IdemClaim::Claimed { created_at: at });
    }
    assert_eq!(store.idem_purge(T0 + ms(1), 3).await.unwrap(), 3, "{}", db.engine);
    assert_eq!(store.idem_purge(T0 + ms(1), 3).await.unwrap(), 2, "{}", db.engine);
    assert_eq!(store.idem_purge(T0 + ms(1), 3).await.unwrap(), 0, "{}", db.engine);
    // The two newer keys are still there, still owned.
    let kept = store
        .idem_claim(idem("s", "k6", "b"), "h".into(), T0 + ms(1001), LEASE)
        .await
        .unwrap();
    assert_eq!(kept, in_progress("h"), "{}", db.engine);
    let forgotten = store
        .idem_claim(idem("s", "k0", "b"), "other".into(), T0 + ms(1001), LEASE)
        .await
        .unwrap();
    assert_eq!(
        forgotten,
        IdemClaim::Claimed {
            created_at: T0 + ms(1001)
        },
        "{}: a forgotten key is new again",
        db.engine
    );
}
engines!(keys_older_than_the_cut_are_forgotten_in_bounded_steps);

async fn background_work_is_leased_so_a_second_claim_gets_nothing(db: TestDb) {
    let store = db.store().await;
    let o = created(&store, "default", "L1", 100).await;
    // Not due before first_check_at.
    assert!(
        store
            .claim_checks(T0 + ms(1000), T0 + ms(2000), 10)
            .await
            .unwrap()
            .is_empty(),
        "{}",
        db.engine
    );
    let due = T0 + ms(60_000);
    let claimed = store.claim_checks(due, due + ms(30_000), 10).await.unwrap();
    assert_eq!(
        claimed.iter().map(|o| o.id).collect::<Vec<_>>(),
        [o.id],
        "{}",
        db.engine
    );
    assert!(
        store
            .claim_checks(due + ms(1), due + ms(30_000), 10)
            .await
            .unwrap()
            .is_empty(),
        "{}: leased",
        db.engine
    );
    assert_eq!(
        store
            .claim_checks(due + ms(30_000), due + ms(60_000), 10)
            .await
            .unwrap()
            .len(),
        1,
        "{}: lease over",
        db.engine
    );
    store.schedule_check(o.id, None, None).await.unwrap();
    assert!(
        store
            .claim_checks(due + ms(999_999), due + ms(2_000_000), 10)
            .await
            .unwrap()
            .is_empty(),
        "{}",
        db.engine
    );

    store
        .apply_payment(payment("L1", "4200000009", 100), None)
        .await
        .unwrap();
    let ev = store.claim_outbox(T0 + ms(2000), T0 + ms(10_000), 10).await.unwrap();
    assert_eq!(ev.len(), 1);
    assert!(
        store
            .claim_outbox(T0 + ms(2001), T0 + ms(10_000), 10)
            .await
            .unwrap()
            .is_empty(),
        "{}: leased",
        db.engine
    );
    store
        .outbox_retry(ev[0].id.clone(), T0 + ms(20_000), "HTTP 503".into())
        .await
        .unwrap();
    assert!(
        store
            .claim_outbox(T0 + ms(19_999), T0 + ms(30_000), 10)
            .await
            .unwrap()
            .is_empty(),
        "{}",
        db.engine
    );
    let again = store.claim_outbox(T0 + ms(20_000), T0 + ms(30_000), 10).await.unwrap();
    assert_eq!(
        (again[0].id.as_str(), again[0].attempts),
        (ev[0].id.as_str(), 1),
        "{}: same id",
        db.engine
    );
    let stats = store.stats(T0 + ms(21_000)).await.unwrap();
    assert_eq!(stats.outbox_backlog, 1, "{}", db.engine);
    store.outbox_delivered(ev[0].id.clone(), T0 + ms(21_000)).await.unwrap();
    assert!(
        store
            .claim_outbox(T0 + ms(99_999), T0 + ms(199_999), 10)
            .await
            .unwrap()
            .is_empty(),
        "{}",
        db.engine
    );
    assert_eq!(
        store.stats(T0 + ms(21_000)).await.unwrap().outbox_backlog,
        0,
        "{}",
        db.engine
    );
}
engines!(background_work_is_leased_so_a_second_claim_gets_nothing);

async fn a_stored_value_its_type_forbids_is_an_error_never_a_guess(db: TestDb) {
    let store = db.store().await;
    created(&store, "default", "D1", 100).await;
    // Another program (a migration by hand, a restore) writes a number wxpay never accepts.
    db.execute("UPDATE orders SET out_trade_no = 'D 1' WHERE out_trade_no = 'D1'")
        .await;
    match store.list_orders(OrderFilter::default(), 10, None).await {
        Err(StoreError::Damaged(d)) => assert_eq!((d.what, d.value.contains("D 1")), ("out_trade_no", true)),
        other => panic!("{}: a damaged row read as {other:?}", db.engine),
    }
    // The check loop goes on without it: the damaged order is taken out of the checks, the
    // others are claimed as before.
    let good = created(&store, "default", "D2", 100).await;
    let due = T0 + ms(3_600_000);
    let claimed = store.claim_checks(due, due + ms(60_000), 10).await.unwrap();
    assert_eq!(
        claimed.iter().map(|o| o.id).collect::<Vec<_>>(),
        [good.id],
        "{}",
        db.engine
    );
    let later = due + ms(120_000);
    let again = store.claim_checks(later, later + ms(60_000), 10).await.unwrap();
    assert!(again.iter().all(|o| o.id == good.id), "{}: {again:?}", db.engine);
}
engines!(a_stored_value_its_type_forbids_is_an_error_never_a_guess);

async fn orders_are_listed_newest_first_by_status_with_a_cursor(db: TestDb) {
    let store = db.store().await;
    for i in 0..5 {
        created(&store, "default", &format!("LS{i}"), 100).await;
    }
    store
        .apply_payment(payment("LS3", "4200000010", 100), None)
        .await
        .unwrap();
    let all = store.list_orders(OrderFilter::default(), 3, None).await.unwrap();
    assert_eq!(
        all.iter().map(|o| o.out_trade_no.as_str()).collect::<Vec<_>>(),
        ["LS4", "LS3", "LS2"],
        "{}",
        db.engine
    );
    let rest = store
        .list_orders(OrderFilter::default(), 3, Some(all[2].id))
        .await
        .unwrap();
    assert_eq!(
        rest.iter().map(|o| o.out_trade_no.as_str()).collect::<Vec<_>>(),
        ["LS1", "LS0"],
        "{}",
        db.engine
    );
    let paid = OrderFilter {
        status: Some(OrderStatus::Paid),
        ..OrderFilter::default()
    };
    let paid = store.list_orders(paid, 10, None).await.unwrap();
    assert_eq!(paid.len(), 1, "{}", db.engine);
    // A number, a transaction id and an openid are each found exactly; a merchant and a
    // creation window narrow the list.
    for search in ["LS1", "4200000010"] {
        let filter = OrderFilter {
            search: Some(search.to_owned()),
            ..OrderFilter::default()
        };
        let found = store.list_orders(filter, 10, None).await.unwrap();
        assert_eq!(found.len(), 1, "{}: {search}", db.engine);
    }
    let by_openid = OrderFilter {
        search: Some(all[0].openid.clone()),
        merchant: Some("default".to_owned()),
        ..OrderFilter::default()
    };
    assert_eq!(
        store.list_orders(by_openid, 10, None).await.unwrap().len(),
        5,
        "{}",
        db.engine
    );
    let other = OrderFilter {
        merchant: Some("hmac".to_owned()),
        ..OrderFilter::default()
    };
    assert!(
        store.list_orders(other, 10, None).await.unwrap().is_empty(),
        "{}",
        db.engine
    );
    // Orders an hour and two hours later: a window finds those created in it, both bounds
    // counted (the five above are at T0).
    for (no, hours) in [("LT1", 1), ("LT2", 2)] {
        let mut later = new_order("default", no, 100);
        later.now = T0 + ms(hours * 3_600_000);
        store.create_order(later).await.unwrap();
    }
    let window = |from: u64, before: u64| OrderFilter {
        created_from: Some(T0 + ms(from * 3_600_000)),
        created_before: Some(T0 + ms(before * 3_600_000)),
        ..OrderFilter::default()
    };
    let numbers = async |f: OrderFilter| -> Vec<String> {
        let orders = store.list_orders(f, 10, None).await.unwrap();
        orders.iter().map(|o| o.out_trade_no.as_str().to_owned()).collect()
    };
    assert_eq!(numbers(window(1, 2)).await, ["LT1"], "{}", db.engine);
    assert_eq!(numbers(window(1, 3)).await, ["LT2", "LT1"], "{}", db.engine);
    assert_eq!(numbers(window(0, 1)).await.len(), 5, "{}", db.engine);
    let stats = store.stats(T0).await.unwrap();
    let pending = stats
        .orders_by_status
        .iter()
        .find(|(s, _)| s == "pending")
        .map(|(_, n)| *n);
    assert_eq!(pending, Some(6), "{}: {:?}", db.engine, stats.orders_by_status);
}
engines!(orders_are_listed_newest_first_by_status_with_a_cursor);

async fn a_second_store_on_the_same_database_sees_the_same_orders_and_migrations_are_idempotent(db: TestDb) {
    let a = db.store().await;
    created(&a, "default", "M1", 100).await;
    wxpay_gateway::migrate(&db.url).await.unwrap();
    let b = db.store().await;
    assert!(
        b.order("default".into(), no("M1")).await.unwrap().is_some(),
        "{}",
        db.engine
    );
    assert!(matches!(
        b.create_order(new_order("default", "M1", 100)).await.unwrap(),
        Created::Existing(_)
    ));
}
engines!(a_second_store_on_the_same_database_sees_the_same_orders_and_migrations_are_idempotent);

async fn a_mixed_burst_of_payments_gets_the_verdict_each_would_get_alone(db: TestDb) {
    let store = db.store().await;
    for i in 0..20 {
        created(&store, "default", &format!("B{i}"), 100 + i).await;
    }
    // For each order: three copies of its payment, one with a wrong amount, one for an
    // order that does not exist, all at once, so that PostgreSQL batches them together.
    let mut tasks = Vec::new();
    for i in 0..20i64 {
        let mut jobs = vec![
            (payment(&format!("B{i}"), &format!("TXB{i}"), 100 + i), "ok"),
            (payment(&format!("B{i}"), &format!("TXB{i}"), 100 + i), "ok"),
            (payment(&format!("B{i}"), &format!("TXB{i}"), 100 + i), "ok"),
            (payment(&format!("B{i}"), &format!("TXB{i}"), 1), "amount"),
            (payment(&format!("NOPE{i}"), &format!("TXN{i}"), 5), "unknown"),
        ];
        for (p, expect) in jobs.drain(..) {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                (expect, store.apply_payment(p, Some(record("B"))).await.unwrap())
            }));
        }
    }
    let mut applied = 0;
    for t in tasks {
        let (expect, outcome) = t.await.unwrap();
        match (expect, &outcome) {
            ("ok", PaymentOutcome::Applied(o)) => {
                applied += 1;
                assert_eq!(o.status, OrderStatus::Paid);
            }
            ("ok", PaymentOutcome::AlreadyPaid(_)) => {}
            ("amount", PaymentOutcome::AmountMismatch { got, .. }) if *got == fen(1) => {}
            ("unknown", PaymentOutcome::UnknownOrder) => {}
            _ => panic!("{}: {expect} got {outcome:?}", db.engine),
        }
    }
    assert_eq!(applied, 20, "{}", db.engine);
    // A transaction id of one order cannot pay another, also in a burst.
    created(&store, "default", "B-OTHER", 100).await;
    let conflict = store
        .apply_payment(payment("B-OTHER", "TXB0", 100), None)
        .await
        .unwrap();
    assert!(
        matches!(conflict, PaymentOutcome::TransactionConflict(_)),
        "{}: {conflict:?}",
        db.engine
    );
    let events = store.claim_outbox(T0 + ms(9000), T0 + ms(60_000), 1000).await.unwrap();
    assert_eq!(events.len(), 20, "{}: one event per paid order", db.engine);
    for e in &events {
        let v: serde_json::Value = serde_json::from_str(&e.payload).unwrap();
        assert_eq!(v["type"], "order.paid");
        assert!(v["data"]["paid_at"].as_str().unwrap().ends_with('Z'), "{}", e.payload);
        assert_eq!(
            v["created_at"].as_str().unwrap().len(),
            "2026-11-27T03:04:05.678Z".len(),
            "{}",
            e.payload
        );
    }
}
engines!(a_mixed_burst_of_payments_gets_the_verdict_each_would_get_alone);

async fn concurrent_creations_store_each_number_once_and_record_every_prepay(db: TestDb) {
    let store = db.store().await;
    // Twenty distinct numbers and ten copies of one more, all at once, so that
    // PostgreSQL gathers them into batches that hold one number several times.
    let mut tasks = Vec::new();
    for i in 0..30 {
        let no = if i < 20 { format!("CC{i}") } else { "CC-SAME".to_owned() };
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store.create_order(new_order("default", &no, 100)).await.unwrap()
        }));
    }
    let mut new_same = 0;
    let mut ids = std::collections::HashSet::new();
    for t in tasks {
        match t.await.unwrap() {
            Created::New(o) => {
                if o.out_trade_no.as_str() == "CC-SAME" {
                    new_same += 1;
                }
                assert!(ids.insert(o.id), "{}: one id twice", db.engine);
            }
            Created::Existing(o) => assert_eq!(o.out_trade_no.as_str(), "CC-SAME", "{}", db.engine),
        }
    }
    assert_eq!((new_same, ids.len()), (1, 21), "{}", db.engine);
    let prepays: Vec<_> = ids
        .iter()
        .map(|&id| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .set_prepay(id, format!("wx-prepay-{id}"), T0 + ms(5))
                    .await
                    .unwrap()
            })
        })
        .collect();
    for p in prepays {
        let o = p.await.unwrap();
        assert_eq!(o.prepay_id, Some(format!("wx-prepay-{}", o.id)), "{}", db.engine);
        assert_eq!(o.upstream, wxpay_gateway::store::Upstream::Created);
        let kinds: Vec<String> = store.events(o.id).await.unwrap().into_iter().map(|e| e.kind).collect();
        assert_eq!(kinds, ["created", "prepay"], "{}", db.engine);
    }
}
engines!(concurrent_creations_store_each_number_once_and_record_every_prepay);

fn new_refund(order: &str, no: &str, amount: i64) -> NewRefund {
    NewRefund {
        merchant: "default".into(),
        out_trade_no: order.parse().unwrap(),
        out_refund_no: no.parse().unwrap(),
        amount_fen: fen(amount),
        reason: None,
        request_hash: format!("refund-{no}-{amount}"),
        first_check_at: T0 + ms(60_000),
        now: T0 + ms(2000),
    }
}

fn refund_result(order: &str, no: &str, amount: i64, succeeded: bool) -> RefundResult {
    RefundResult {
        merchant: "default".into(),
        out_refund_no: no.parse().unwrap(),
        out_trade_no: order.parse().unwrap(),
        refund_id: format!("50300{no}"),
        amount_fen: fen(amount),
        succeeded,
        upstream_status: if succeeded { "SUCCESS" } else { "REFUNDCLOSE" }.into(),
        settled_at: T0 + ms(3000),
        source: Source::Notification,
        now: T0 + ms(3000),
    }
}

async fn paid(store: &Arc<dyn Store>, no: &str, amount: i64) {
    created(store, "default", no, amount).await;
    let outcome = store
        .apply_payment(payment(no, &format!("4200{no}"), amount), None)
        .await
        .unwrap();
    assert!(matches!(outcome, PaymentOutcome::Applied(_)), "{outcome:?}");
}

async fn concurrent_refunds_never_add_up_to_more_than_the_order_amount(db: TestDb) {
    let store = db.store().await;
    paid(&store, "R-CONC", 100).await;
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move { store.create_refund(new_refund("R-CONC", &format!("RF{i}"), 30)).await })
        })
        .collect();
    let mut new = 0;
    let mut exceeded = 0;
    for t in tasks {
        match t.await.unwrap().unwrap() {
            RefundCreated::New(_) => new += 1,
            RefundCreated::Exceeds { available } => {
                assert_eq!(available, fen(10), "{}", db.engine);
                exceeded += 1;
            }
            other => panic!("{}: {other:?}", db.engine),
        }
    }
    assert_eq!((new, exceeded), (3, 17), "{}", db.engine);
    // A failed refund gives its amount back: 40 fit again, 41 do not.
    let o = store.order("default".into(), no("R-CONC")).await.unwrap().unwrap();
    let first = store.refunds_of(o.id).await.unwrap().remove(0);
    let failed = store
        .apply_refund(refund_result("R-CONC", first.out_refund_no.as_str(), 30, false), None)
        .await
        .unwrap();
    assert!(
        matches!(failed, RefundOutcome::Applied(ref r) if r.status == RefundStatus::Failed),
        "{failed:?}"
    );
    assert!(matches!(
        store.create_refund(new_refund("R-CONC", "RF-41", 41)).await.unwrap(),
        RefundCreated::Exceeds { available } if available == fen(40)
    ));
    assert!(matches!(
        store.create_refund(new_refund("R-CONC", "RF-40", 40)).await.unwrap(),
        RefundCreated::New(_)
    ));
}
engines!(concurrent_refunds_never_add_up_to_more_than_the_order_amount);

async fn a_refund_settles_once_and_the_order_becomes_refunded_at_its_full_amount(db: TestDb) {
    let store = db.store().await;
    paid(&store, "R-FULL", 100).await;
    created(&store, "default", "R-UNPAID", 100).await;
    assert!(matches!(
        store.create_refund(new_refund("R-UNPAID", "RU1", 10)).await.unwrap(),
        RefundCreated::NotPaid(OrderStatus::Pending)
    ));
    assert!(matches!(
        store.create_refund(new_refund("R-NONE", "RN1", 10)).await.unwrap(),
        RefundCreated::NoOrder
    ));
    let RefundCreated::New(a) = store.create_refund(new_refund("R-FULL", "RA", 40)).await.unwrap() else {
        panic!("not new");
    };
    assert_eq!((a.status, a.amount_fen), (RefundStatus::Pending, fen(40)));
    // The same number again is the same refund, whatever it asks now.
    assert!(matches!(
        store.create_refund(new_refund("R-FULL", "RA", 50)).await.unwrap(),
        RefundCreated::Existing(r) if r.id == a.id && r.amount_fen == fen(40)
    ));
    let RefundCreated::New(_) = store.create_refund(new_refund("R-FULL", "RB", 60)).await.unwrap() else {
        panic!("not new");
    };
    // Wrong order, wrong amount, unknown number: nothing changes.
    assert!(matches!(
        store
            .apply_refund(refund_result("R-OTHER", "RA", 40, true), None)
            .await
            .unwrap(),
        RefundOutcome::WrongOrder
    ));
    assert!(matches!(
        store
            .apply_refund(refund_result("R-FULL", "RA", 41, true), None)
            .await
            .unwrap(),
        RefundOutcome::AmountMismatch { expected, got } if (expected, got) == (fen(40), fen(41))
    ));
    assert!(matches!(
        store
            .apply_refund(refund_result("R-FULL", "RZ", 40, true), None)
            .await
            .unwrap(),
        RefundOutcome::UnknownRefund
    ));
    let o = store.order("default".into(), no("R-FULL")).await.unwrap().unwrap();
    assert_eq!((o.status, o.refunded_fen), (OrderStatus::Paid, fen(0)), "{}", db.engine);

    // Ten concurrent copies of one success: one transition.
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.apply_refund(refund_result("R-FULL", "RA", 40, true), None).await })
        })
        .collect();
    let mut applied = 0;
    for t in tasks {
        match t.await.unwrap().unwrap() {
            RefundOutcome::Applied(_) => applied += 1,
            RefundOutcome::AlreadySettled(_) => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(applied, 1, "{}", db.engine);
    // A succeeded refund never fails afterwards.
    assert!(matches!(
        store
            .apply_refund(refund_result("R-FULL", "RA", 40, false), None)
            .await
            .unwrap(),
        RefundOutcome::Conflict(_)
    ));
    let o = store.order("default".into(), no("R-FULL")).await.unwrap().unwrap();
    assert_eq!((o.status, o.refunded_fen), (OrderStatus::Paid, fen(40)));
    let r = store
        .apply_refund(refund_result("R-FULL", "RB", 60, true), None)
        .await
        .unwrap();
    assert!(matches!(r, RefundOutcome::Applied(_)));
    let o = store.order("default".into(), no("R-FULL")).await.unwrap().unwrap();
    assert_eq!(
        (o.status, o.refunded_fen),
        (OrderStatus::Refunded, fen(100)),
        "{}",
        db.engine
    );
    // A late payment notification never moves a refunded order back to paid.
    let again = store
        .apply_payment(payment("R-FULL", "4200R-FULL", 100), None)
        .await
        .unwrap();
    assert!(
        matches!(again, PaymentOutcome::AlreadyPaid(ref o) if o.status == OrderStatus::Refunded),
        "{again:?}"
    );
    let events = store.events(o.id).await.unwrap();
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == "refund_succeeded").count(),
        2,
        "{kinds:?}"
    );
    // An imported refund (made outside wxpay) counts like any other.
    paid(&store, "R-IMP", 50).await;
    let imported = store
        .import_refund(ImportedRefund {
            merchant: "default".into(),
            out_trade_no: no("R-IMP"),
            out_refund_no: "R-IMP-1".parse().unwrap(),
            refund_id: "50300999".into(),
            amount_fen: fen(20),
            status: RefundStatus::Succeeded,
            accepted_at: T0 + ms(5000),
            detail: serde_json::json!({"source": "reconciliation"}),
            now: T0 + ms(6000),
        })
        .await
        .unwrap();
    assert!(
        matches!(imported, RefundCreated::New(ref r) if r.status == RefundStatus::Succeeded),
        "{imported:?}"
    );
    let o = store.order("default".into(), no("R-IMP")).await.unwrap().unwrap();
    assert_eq!(o.refunded_fen, fen(20));
    assert!(matches!(
        store.create_refund(new_refund("R-IMP", "R-IMP-2", 31)).await.unwrap(),
        RefundCreated::Exceeds { available } if available == fen(30)
    ));
}
engines!(a_refund_settles_once_and_the_order_becomes_refunded_at_its_full_amount);

async fn a_refund_accepted_while_its_notification_settles_it_never_deadlocks(db: TestDb) {
    let store = db.store().await;
    for i in 0..40 {
        let order = format!("R-RACE-{i}");
        paid(&store, &order, 100).await;
        let RefundCreated::New(r) = store
            .create_refund(new_refund(&order, &format!("RR{i}"), 60))
            .await
            .unwrap()
        else {
            panic!("not new");
        };
        // The call's answer and the notification arrive together, as they do when WeChat
        // Pay settles a refund at once.
        let (a, b) = tokio::join!(
            store.refund_accepted(r.id, format!("50300RR{i}"), T0 + ms(2500), T0 + ms(60_000)),
            store.apply_refund(refund_result(&order, &format!("RR{i}"), 60, true), None),
        );
        a.unwrap_or_else(|e| panic!("{}: accepted: {e}", db.engine));
        let b = b.unwrap_or_else(|e| panic!("{}: settled: {e}", db.engine));
        assert!(matches!(b, RefundOutcome::Applied(_)), "{b:?}");
    }
}
engines!(a_refund_accepted_while_its_notification_settles_it_never_deadlocks);

async fn a_refund_wechat_pay_accepted_never_fails_by_a_later_refusal(db: TestDb) {
    let store = db.store().await;
    paid(&store, "R-ACC", 100).await;
    let RefundCreated::New(r) = store.create_refund(new_refund("R-ACC", "RACC", 70)).await.unwrap() else {
        panic!("not new");
    };
    store
        .refund_accepted(r.id, "50300RACC".into(), T0 + ms(2500), T0 + ms(60_000))
        .await
        .unwrap();
    // A repeated call refused (say, rate limited) says nothing about the accepted refund.
    let after = store
        .refund_upstream_failure(r.id, true, "FREQUENCY_LIMITED".into(), T0 + ms(3000), T0 + ms(3000))
        .await
        .unwrap();
    assert_eq!(after.status, RefundStatus::Pending, "{}", db.engine);
    // Its 70 fen stay reserved.
    assert!(matches!(
        store.create_refund(new_refund("R-ACC", "RACC-2", 31)).await.unwrap(),
        RefundCreated::Exceeds { available } if available == fen(30)
    ));
    // A refusal of one never accepted fails it and frees its amount.
    let RefundCreated::New(b) = store.create_refund(new_refund("R-ACC", "RACC-3", 30)).await.unwrap() else {
        panic!("not new");
    };
    let failed = store
        .refund_upstream_failure(b.id, true, "NOTENOUGH".into(), T0 + ms(3000), T0 + ms(3000))
        .await
        .unwrap();
    assert_eq!(failed.status, RefundStatus::Failed);
    assert!(matches!(
        store.create_refund(new_refund("R-ACC", "RACC-4", 30)).await.unwrap(),
        RefundCreated::New(_)
    ));
}
engines!(a_refund_wechat_pay_accepted_never_fails_by_a_later_refusal);

async fn daily_figures_count_orders_by_their_beijing_day(db: TestDb) {
    let store = db.store().await;
    // 2026-12-04 15:59:59.999 UTC is the 4th in Beijing's last millisecond; the next is the 5th.
    let last_of_the_4th = Millis::from_unix_ms(1_796_399_999_999);
    let first_of_the_5th = Millis::from_unix_ms(1_796_400_000_000);
    for (no, at, amount) in [
        ("D4A", last_of_the_4th, 100),
        ("D5A", first_of_the_5th, 200),
        ("D5B", first_of_the_5th, 300),
    ] {
        let mut o = new_order("default", no, amount);
        o.now = at;
        store.create_order(o).await.unwrap();
    }
    let mut paid = payment("D5B", "4200000099", 300);
    paid.paid_at = first_of_the_5th + ms(1000);
    store.apply_payment(paid, None).await.unwrap();
    let days = store
        .daily(last_of_the_4th - ms(86_400_000), first_of_the_5th + ms(86_400_000))
        .await
        .unwrap();
    let fifth = (1_796_400_000 + 8 * 3600) / 86_400;
    assert_eq!(days.len(), 2, "{}: {days:?}", db.engine);
    assert_eq!(
        (days[0].day, days[0].orders, days[0].paid),
        (fifth - 1, 1, 0),
        "{}",
        db.engine
    );
    assert_eq!(
        (days[1].day, days[1].orders, days[1].paid, days[1].paid_fen),
        (fifth, 2, 1, 300),
        "{}",
        db.engine
    );
}
engines!(daily_figures_count_orders_by_their_beijing_day);
