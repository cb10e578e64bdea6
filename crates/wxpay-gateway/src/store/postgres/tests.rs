//! The set-based payment statements against the rules: random stored orders and random
//! batches of payments (duplicates, wrong amounts, unknown orders, transaction ids of other
//! orders) must give, through the batch statement and through the single statement alike,
//! the verdicts and the final rows of [`rules::payment_verdict`] applied payment by payment.
//! Skipped without `DATABASE_URL` (a failure with `WXPAY_REQUIRE_POSTGRES=1`, as in CI).

use std::sync::atomic::{AtomicUsize, Ordering};

use proptest::prelude::*;

use super::PgStore;
use super::batch::{PaymentJob, apply_batch, apply_one, call_batch, set_based_fits};
use crate::store::rules::{OrderFacts, PaymentVerdict, payment_verdict};
use crate::store::{NotificationRecord, OrderStatus, Payment, PaymentOutcome, Source, StoreError, order_status};
use sqlx::postgres::PgPool;
use sqlx::{Connection, Row};
use tokio::sync::oneshot;

const MERCHANT: &str = "m";

/// The server to test against, or `None` to skip.
fn admin_url() -> Option<String> {
    match std::env::var("DATABASE_URL") {
        Ok(url) if url.starts_with("postgres") => Some(url),
        _ if std::env::var("WXPAY_REQUIRE_POSTGRES").as_deref() == Ok("1") => {
            panic!("WXPAY_REQUIRE_POSTGRES=1 but DATABASE_URL names no PostgreSQL server")
        }
        _ => None,
    }
}

/// `url` naming the database `name` instead of its own.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = url.split_once('?').map_or((url, None), |(b, q)| (b, Some(q)));
    let (server, _) = base.rsplit_once('/').expect("a URL with a database");
    match query {
        Some(q) => format!("{server}/{name}?{q}"),
        None => format!("{server}/{name}"),
    }
}

/// A fresh database, dropped when the test ends.
struct Db {
    admin: String,
    name: String,
    store: PgStore,
}

impl Db {
    async fn create(admin: &str) -> Db {
        let name = format!("wxpay_rules_{}", crate::util::random_hex::<6>());
        let mut conn = sqlx::PgConnection::connect(admin).await.expect("DATABASE_URL connects");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .expect("CREATE DATABASE");
        let _ = conn.close().await;
        let store = PgStore::connect(&with_database(admin, &name), 4)
            .await
            .expect("the store opens");
        Db {
            admin: admin.to_owned(),
            name,
            store,
        }
    }

    async fn drop_database(self) {
        self.store.pool.close().await;
        let mut conn = sqlx::PgConnection::connect(&self.admin)
            .await
            .expect("DATABASE_URL connects");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP DATABASE {} WITH (FORCE)", self.name)))
            .execute(&mut conn)
            .await
            .expect("DROP DATABASE");
    }
}

/// A stored order.
#[derive(Clone, Debug)]
struct Stored {
    amount: i64,
    status: OrderStatus,
    txid: Option<String>,
    paid_at: Option<i64>,
}

/// A reported payment: of order `order` (one past the last: an unknown order).
#[derive(Clone, Debug)]
struct Pay {
    order: usize,
    amount: i64,
    txid: String,
    record: bool,
}

fn number(order: usize) -> String {
    format!("W{order:02}")
}

fn case() -> impl Strategy<Value = (Vec<Stored>, Vec<Pay>)> {
    use OrderStatus::*;
    let order = (
        prop::sample::select(vec![100i64, 200]),
        prop::sample::select(vec![Pending, Pending, Closed, Failed, Paid, Refunded]),
    );
    prop::collection::vec(order, 1..6)
        .prop_flat_map(|orders| {
            let n = orders.len();
            // A payment's transaction id is mostly its order's own (one of two), sometimes
            // one that others use too (and that paid orders may already carry).
            let txid = prop_oneof![2 => (0..2usize).prop_map(|j| (false, j)), 1 => (0..3usize).prop_map(|k| (true, k))];
            // Mostly the order's amount, sometimes not.
            let right = prop::bool::weighted(0.75);
            let pay = (0..=n, right, txid, any::<bool>());
            (Just(orders), prop::collection::vec(pay, 1..16))
        })
        .prop_map(|(orders, pays)| {
            let amounts: Vec<i64> = orders.iter().map(|(a, _)| *a).collect();
            let stored = orders
                .into_iter()
                .enumerate()
                .map(|(i, (amount, status))| {
                    let paid = matches!(status, Paid | Refunded);
                    Stored {
                        amount,
                        status,
                        txid: paid.then(|| format!("T{i}")),
                        paid_at: paid.then_some(500),
                    }
                })
                .collect();
            let pays = pays
                .into_iter()
                .map(|(order, right, (shared, k), record)| Pay {
                    order,
                    amount: match amounts.get(order) {
                        Some(&a) if right => a,
                        Some(&a) => 300 - a,
                        None => 100,
                    },
                    txid: if shared {
                        format!("T{k}")
                    } else {
                        format!("P{order}_{k}")
                    },
                    record,
                })
                .collect();
            (stored, pays)
        })
}

/// The payments in the order every engine applies a batch: by order number, stable.
fn sorted(pays: &[Pay]) -> Vec<(usize, Pay)> {
    let mut v: Vec<(usize, Pay)> = pays.iter().cloned().enumerate().collect();
    v.sort_by_key(|(_, p)| number(p.order));
    v
}

/// The rules applied payment by payment: each payment's verdict, and the orders after.
fn model(stored: &[Stored], pays: &[(usize, Pay)]) -> (Vec<&'static str>, Vec<Stored>) {
    let mut state = stored.to_vec();
    let mut verdicts = Vec::new();
    for (i, p) in pays {
        let facts = state.get(p.order).map(|o| OrderFacts {
            amount_fen: o.amount,
            status: o.status,
            transaction_id: o.txid.as_deref(),
        });
        let taken = state.iter().any(|o| o.txid.as_deref() == Some(p.txid.as_str()));
        let v = payment_verdict::<()>(facts, p.amount, &p.txid, || Ok(taken)).unwrap();
        if let PaymentVerdict::Apply { .. } = v {
            let o = &mut state[p.order];
            o.status = OrderStatus::Paid;
            o.txid = Some(p.txid.clone());
            o.paid_at = Some(paid_at(*i));
        }
        verdicts.push(v.as_str());
    }
    (verdicts, state)
}

fn paid_at(i: usize) -> i64 {
    1_000 + i as i64
}

fn job(i: usize, p: &Pay) -> PaymentJob {
    let (reply, _) = oneshot::channel();
    PaymentJob {
        payment: Payment {
            merchant: MERCHANT.into(),
            out_trade_no: number(p.order),
            transaction_id: p.txid.clone(),
            amount_fen: p.amount,
            paid_at: paid_at(i),
            source: Source::Notification,
            now: 2_000,
        },
        notification: p.record.then(|| NotificationRecord {
            received_at: 2_000,
            kind: "payment".into(),
            merchant: Some(MERCHANT.into()),
            out_trade_no: Some(number(p.order)),
            transaction_id: Some(p.txid.clone()),
            verdict: String::new(),
            reason: None,
            body: "<xml/>".into(),
            peer: None,
            body_sha256: None,
        }),
        reply,
    }
}

async fn seed(pool: &PgPool, stored: &[Stored]) {
    sqlx::raw_sql("TRUNCATE orders, order_events, outbox, notifications RESTART IDENTITY CASCADE")
        .execute(pool)
        .await
        .unwrap();
    for (i, o) in stored.iter().enumerate() {
        let refunded = if o.status == OrderStatus::Refunded { o.amount } else { 0 };
        sqlx::query(
            "INSERT INTO orders (merchant, out_trade_no, appid, mch_id, description, amount_fen, refunded_fen, \
             refund_reserved_fen, openid, client_ip, status, upstream, transaction_id, created_at, updated_at, \
             expires_at, paid_at, request_hash) \
             VALUES ($1, $2, 'wx1', '1900000109', 'd', $3, $4, $4, 'o', '127.0.0.1', $5, 'created', $6, 0, 0, \
             9999999999999, $7, 'h')",
        )
        .bind(MERCHANT)
        .bind(number(i))
        .bind(o.amount)
        .bind(refunded)
        .bind(o.status.as_str())
        .bind(&o.txid)
        .bind(o.paid_at)
        .execute(pool)
        .await
        .unwrap();
    }
}

/// What the database holds after: the orders, and per order the `paid` events and outbox
/// rows; the notification records' verdicts in the order they were written.
async fn read_back(pool: &PgPool, n: usize) -> (Vec<Stored>, Vec<(i64, i64)>, Vec<String>) {
    let mut orders = Vec::new();
    let mut written = Vec::new();
    for i in 0..n {
        let row = sqlx::query(
            "SELECT o.amount_fen, o.status, o.transaction_id, o.paid_at, \
             (SELECT count(*) FROM order_events e WHERE e.order_id = o.id AND e.kind = 'paid') AS events, \
             (SELECT count(*) FROM outbox b WHERE b.order_id = o.id AND b.type = 'order.paid') AS outbox \
             FROM orders o WHERE o.merchant = $1 AND o.out_trade_no = $2",
        )
        .bind(MERCHANT)
        .bind(number(i))
        .fetch_one(pool)
        .await
        .unwrap();
        orders.push(Stored {
            amount: row.get("amount_fen"),
            status: order_status(row.get("status")).unwrap(),
            txid: row.get("transaction_id"),
            paid_at: row.get("paid_at"),
        });
        written.push((row.get("events"), row.get("outbox")));
    }
    let records = sqlx::query("SELECT verdict FROM notifications ORDER BY id")
        .fetch_all(pool)
        .await
        .unwrap()
        .iter()
        .map(|r| r.get("verdict"))
        .collect();
    (orders, written, records)
}

fn verdict_of(o: &Result<PaymentOutcome, StoreError>) -> &'static str {
    match o.as_ref().expect("the payment applies without an error") {
        PaymentOutcome::Applied(_) => "applied",
        PaymentOutcome::AlreadyPaid(_) => "duplicate",
        PaymentOutcome::UnknownOrder => "unknown_order",
        PaymentOutcome::AmountMismatch { .. } => "amount_mismatch",
        PaymentOutcome::TransactionConflict(_) => "transaction_conflict",
    }
}

/// Checks what the engine did against the model.
async fn check(pool: &PgPool, stored: &[Stored], pays: &[(usize, Pay)], got: Vec<&'static str>, how: &str) {
    let (verdicts, after) = model(stored, pays);
    assert_eq!(got, verdicts, "{how}: verdicts of {pays:?} on {stored:?}");
    let (orders, written, records) = read_back(pool, stored.len()).await;
    for (i, (o, want)) in orders.iter().zip(&after).enumerate() {
        assert_eq!(
            (o.status, &o.txid, o.paid_at),
            (want.status, &want.txid, want.paid_at),
            "{how}: order {i} of {pays:?} on {stored:?}"
        );
        let applied = pays
            .iter()
            .zip(&verdicts)
            .filter(|((_, p), v)| p.order == i && **v == "applied")
            .count() as i64;
        assert_eq!(
            written[i],
            (applied, applied),
            "{how}: events and outbox rows of order {i}"
        );
    }
    let mut want_records: Vec<String> = pays
        .iter()
        .zip(&verdicts)
        .filter(|((_, p), _)| p.record)
        .map(|(_, v)| (*v).to_owned())
        .collect();
    let mut records = records;
    // The batch statement writes its records in one insert, in no promised order.
    want_records.sort();
    records.sort();
    assert_eq!(records, want_records, "{how}: notification records");
}

fn run<F: std::future::Future<Output = ()>>(f: F) {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f);
}

static SET_BASED: AtomicUsize = AtomicUsize::new(0);
static CASES: AtomicUsize = AtomicUsize::new(0);

#[test]
fn payment_statements_give_the_verdicts_and_rows_of_the_rules() {
    let Some(admin) = admin_url() else { return };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let db = rt.block_on(Db::create(&admin));
    let config = ProptestConfig {
        cases: 150,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest!(config, |((stored, pays) in case())| {
        let pays = sorted(&pays);
        let pool = &db.store.pool;
        rt.block_on(async {
            // The batch, through the statement when it fits (else payment by payment).
            seed(pool, &stored).await;
            let jobs: Vec<PaymentJob> = pays.iter().map(|(i, p)| job(*i, p)).collect();
            CASES.fetch_add(1, Ordering::Relaxed);
            let outcomes = if jobs.len() > 1 && set_based_fits(&jobs) {
                SET_BASED.fetch_add(1, Ordering::Relaxed);
                call_batch(pool, &jobs).await.expect("the batch statement runs")
            } else {
                apply_batch(pool, jobs).await.1
            };
            check(pool, &stored, &pays, outcomes.iter().map(verdict_of).collect(), "batch").await;

            // The same payments through the single statement, one by one.
            seed(pool, &stored).await;
            let mut one_by_one = Vec::new();
            for (i, p) in &pays {
                let j = job(*i, p);
                one_by_one.push(apply_one(pool, j.payment, j.notification).await);
            }
            check(pool, &stored, &pays, one_by_one.iter().map(verdict_of).collect(), "single").await;
        });
    });
    rt.block_on(db.drop_database());
    // Most batches went through the set-based statement, so that the test is of it.
    let (set_based, cases) = (SET_BASED.load(Ordering::Relaxed), CASES.load(Ordering::Relaxed));
    eprintln!("{set_based} of {cases} batches were set-based");
    assert!(
        set_based * 4 >= cases,
        "only {set_based} of {cases} batches were set-based"
    );
}

#[test]
fn a_transaction_reported_for_two_orders_makes_a_batch_go_one_by_one() {
    let pay = |order, txid: &str| Pay {
        order,
        amount: 100,
        txid: txid.into(),
        record: false,
    };
    let jobs = |pays: &[Pay]| pays.iter().enumerate().map(|(i, p)| job(i, p)).collect::<Vec<_>>();
    assert!(set_based_fits(&jobs(&[pay(0, "A"), pay(0, "A"), pay(1, "B")])));
    assert!(!set_based_fits(&jobs(&[pay(0, "A"), pay(1, "A")])));
    // The case the statement alone gets wrong: order 1's first payment loses its
    // transaction to order 0, and its second, with another transaction, applies.
    let Some(admin) = admin_url() else { return };
    run(async {
        let db = Db::create(&admin).await;
        let stored = vec![
            Stored {
                amount: 100,
                status: OrderStatus::Pending,
                txid: None,
                paid_at: None,
            };
            2
        ];
        let pays = sorted(&[pay(0, "A"), pay(1, "A"), pay(1, "C")]);
        seed(&db.store.pool, &stored).await;
        let jobs: Vec<PaymentJob> = pays.iter().map(|(i, p)| job(*i, p)).collect();
        let (_, outcomes) = apply_batch(&db.store.pool, jobs).await;
        let got: Vec<&str> = outcomes.iter().map(verdict_of).collect();
        assert_eq!(got, ["applied", "transaction_conflict", "applied"]);
        check(&db.store.pool, &stored, &pays, got, "batch").await;
        db.drop_database().await;
    });
}

/// The statements on the hot paths (payments, new orders, prepay ids, lookups, the checks'
/// claims), by name.
fn hot_path_statements() -> Vec<(&'static str, String)> {
    use super::batch::{
        apply_payment_sql, apply_payments_sql, create_batch_sql, create_one_sql, prepay_batch_sql, prepay_one_sql,
    };
    use super::rows::{ORDER_COLUMNS, REFUND_COLUMNS, order_by_number_sql};
    use super::tx::claim_due_sql;
    vec![
        ("payment", apply_payment_sql()),
        ("payment batch", apply_payments_sql()),
        ("new order", create_one_sql()),
        ("new order batch", create_batch_sql()),
        ("order by number", order_by_number_sql()),
        ("prepay id", prepay_one_sql()),
        ("prepay id batch", prepay_batch_sql()),
        ("orders due for a check", claim_due_sql("orders", ORDER_COLUMNS)),
        ("refunds due for a check", claim_due_sql("refunds", REFUND_COLUMNS)),
    ]
}

/// The plan the store's own connections (the pool's settings: generic plans) make for `sql`:
/// prepared, then explained with every parameter NULL (a generic plan does not look at them).
async fn generic_plan(pool: &PgPool, sql: &str) -> String {
    let mut conn = pool.acquire().await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("PREPARE hot AS {sql}")))
        .execute(&mut *conn)
        .await
        .unwrap_or_else(|e| panic!("PREPARE {sql}: {e}"));
    let params: i32 = sqlx::query(
        "SELECT coalesce(array_length(parameter_types, 1), 0) AS n FROM pg_prepared_statements WHERE name = 'hot'",
    )
    .fetch_one(&mut *conn)
    .await
    .unwrap()
    .get("n");
    let nulls = vec!["NULL"; params as usize].join(", ");
    let explain = if params == 0 {
        "EXPLAIN EXECUTE hot".to_owned()
    } else {
        format!("EXPLAIN EXECUTE hot({nulls})")
    };
    let rows = sqlx::raw_sql(sqlx::AssertSqlSafe(explain))
        .fetch_all(&mut *conn)
        .await
        .unwrap();
    sqlx::raw_sql("DEALLOCATE hot").execute(&mut *conn).await.unwrap();
    rows.iter()
        .map(|r| r.get::<String, _>(0))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Grows `orders` to `orders` rows and `refunds` to a tenth of that, without `ANALYZE`: the
/// statistics stay those of a table that grew fast, as in a fresh deployment under load.
async fn grow(pool: &PgPool, orders: i64) {
    sqlx::query(
        "INSERT INTO orders (merchant, out_trade_no, appid, mch_id, description, amount_fen, openid, client_ip, status, \
         upstream, transaction_id, created_at, updated_at, expires_at, paid_at, next_check_at, request_hash) \
         SELECT 'm', 'G' || g, 'wx1', '1900000109', 'd', 100, 'o', '127.0.0.1', \
           CASE WHEN g % 3 = 0 THEN 'paid' ELSE 'pending' END, 'created', \
           CASE WHEN g % 3 = 0 THEN 'T' || g END, g, g, g + 7200000, CASE WHEN g % 3 = 0 THEN g END, \
           CASE WHEN g % 3 = 0 THEN NULL ELSE g END, 'h' \
         FROM generate_series((SELECT count(*) FROM orders) + 1, $1) AS g",
    )
    .bind(orders)
    .execute(pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO refunds (order_id, merchant, out_trade_no, out_refund_no, amount_fen, status, upstream, created_at, \
         updated_at, next_check_at, request_hash) \
         SELECT o.id, 'm', o.out_trade_no, 'R' || o.id, 1, 'pending', 'created', o.created_at, o.created_at, o.created_at, 'h' \
         FROM orders o WHERE o.status = 'paid' AND o.id % 10 = 0 \
           AND NOT EXISTS (SELECT 1 FROM refunds r WHERE r.order_id = o.id)",
    )
    .execute(pool)
    .await
    .unwrap();
}

#[test]
fn hot_path_statements_never_scan_orders_or_refunds_whole() {
    let Some(admin) = admin_url() else { return };
    run(async {
        let db = Db::create(&admin).await;
        let pool = &db.store.pool;
        let mut checked = 0;
        let mut whole = Vec::new();
        for (rows, analyzed) in [(0, false), (10_000, false), (1_000_000, false), (1_000_000, true)] {
            grow(pool, rows).await;
            if analyzed {
                sqlx::raw_sql("ANALYZE orders; ANALYZE refunds")
                    .execute(pool)
                    .await
                    .unwrap();
            }
            for (name, sql) in hot_path_statements() {
                let plan = generic_plan(pool, &sql).await;
                for table in ["orders", "refunds"] {
                    if plan.contains(&format!("Seq Scan on {table}")) {
                        whole.push(format!(
                            "{name} at {rows} orders (analyzed: {analyzed}) scans {table} whole:\n{plan}"
                        ));
                    }
                }
                // The plan is of the statement: it names the table the statement works on.
                assert!(plan.contains("orders") || plan.contains("refunds"), "{name}: {plan}");
                checked += 1;
            }
        }
        db.drop_database().await;
        assert_eq!(checked, 4 * hot_path_statements().len());
        assert!(
            whole.is_empty(),
            "{} plans scan a table whole:\n{}",
            whole.len(),
            whole.join("\n\n")
        );
    });
}
