//! The set-based payment statements against the rules: random stored orders and random
//! batches of payments (duplicates, wrong amounts, unknown orders, transaction ids of other
//! orders) must give, through the batch statement and through the single statement alike,
//! the verdicts and the final rows of [`rules::payment_verdict`] applied payment by payment.
//! Skipped without `DATABASE_URL` (a failure with `WXPAY_REQUIRE_POSTGRES=1`, as in CI).

use std::sync::atomic::{AtomicUsize, Ordering};

use proptest::prelude::*;

use super::PgStore;
use super::batch::{PaymentJob, apply_batch, apply_one, call_batch, set_based_fits};
use crate::store::col;
use crate::store::rules::{OrderFacts, PaymentVerdict, payment_verdict};
use crate::store::{NoticeKind, NotificationRecord, OrderStatus, Payment, PaymentOutcome, Source, StoreError};
use crate::time::Millis;
use sqlx::postgres::PgPool;
use sqlx::{Connection, Row};
use tokio::sync::oneshot;

/// The merchant of the stored order `order`: two merchants, so that every statement's join
/// on the merchant is tested too.
fn merchant_of(order: usize) -> &'static str {
    ["m", "n"][order % 2]
}

/// The other merchant.
fn other(merchant: &str) -> &'static str {
    if merchant == "m" { "n" } else { "m" }
}

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
#[derive(Clone, Debug, PartialEq, Eq)]
struct Stored {
    amount: i64,
    status: OrderStatus,
    txid: Option<String>,
    paid_at: Option<Millis>,
    updated_at: Millis,
}

/// A reported payment: of order `order` (one past the last: an unknown order).
#[derive(Clone, Debug)]
struct Pay {
    order: usize,
    /// Whether it names the other merchant (for which this number is unknown).
    stray: bool,
    amount: i64,
    txid: String,
    record: bool,
}

impl Pay {
    fn merchant(&self) -> &'static str {
        if self.stray {
            other(merchant_of(self.order))
        } else {
            merchant_of(self.order)
        }
    }
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
            let stray = prop::bool::weighted(0.1);
            let pay = (0..=n, stray, right, txid, any::<bool>());
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
                        paid_at: paid.then_some(Millis::from_unix_ms(500)),
                        updated_at: Millis::default(),
                    }
                })
                .collect();
            let pays = pays
                .into_iter()
                .map(|(order, stray, right, (shared, k), record)| Pay {
                    order,
                    stray,
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

/// The payments in the order every engine applies a batch: by merchant and order number,
/// stable.
fn sorted(pays: &[Pay]) -> Vec<(usize, Pay)> {
    let mut v: Vec<(usize, Pay)> = pays.iter().cloned().enumerate().collect();
    v.sort_by_key(|(_, p)| (p.merchant(), number(p.order)));
    v
}

/// What the model says of one payment: its verdict, and for a payment that applied or was a
/// duplicate, the order as the engine must return it.
type Expected = (&'static str, Option<Stored>);

/// The rules applied payment by payment: what each payment gets, and the orders after.
fn model(stored: &[Stored], pays: &[(usize, Pay)]) -> (Vec<Expected>, Vec<Stored>) {
    let mut state = stored.to_vec();
    let mut verdicts = Vec::new();
    for (i, p) in pays {
        let found = if p.stray { None } else { state.get(p.order) };
        let facts = found.map(|o| OrderFacts {
            amount_fen: col::fen(o.amount).unwrap(),
            status: o.status,
            transaction_id: o.txid.as_deref(),
        });
        let taken = state.iter().any(|o| o.txid.as_deref() == Some(p.txid.as_str()));
        let v = payment_verdict::<()>(facts, col::fen(p.amount).unwrap(), &p.txid, || Ok(taken)).unwrap();
        if let PaymentVerdict::Apply { .. } = v {
            let o = &mut state[p.order];
            o.status = OrderStatus::Paid;
            o.txid = Some(p.txid.clone());
            o.paid_at = Some(paid_at(*i));
            o.updated_at = now(*i);
        }
        let returned =
            matches!(v, PaymentVerdict::Apply { .. } | PaymentVerdict::Duplicate).then(|| state[p.order].clone());
        verdicts.push((v.as_str(), returned));
    }
    (verdicts, state)
}

fn now(i: usize) -> Millis {
    Millis::from_unix_ms(2_000 + i as i64)
}

fn paid_at(i: usize) -> Millis {
    Millis::from_unix_ms(1_000 + i as i64)
}

fn job(i: usize, p: &Pay) -> PaymentJob {
    let (reply, _) = oneshot::channel();
    PaymentJob {
        payment: Payment {
            merchant: p.merchant().into(),
            out_trade_no: number(p.order).parse().unwrap(),
            transaction_id: p.txid.clone(),
            amount_fen: col::fen(p.amount).unwrap(),
            paid_at: paid_at(i),
            source: Source::Notification,
            now: now(i),
        },
        notification: p.record.then(|| NotificationRecord {
            received_at: now(i),
            kind: NoticeKind::Payment,
            merchant: Some(p.merchant().into()),
            out_trade_no: Some(number(p.order)),
            transaction_id: Some(p.txid.clone()),
            verdict: None,
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
        .bind(merchant_of(i))
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

/// What the database holds after: the orders, per order the `paid` events and outbox rows,
/// and the notification records (merchant, order, transaction, verdict).
async fn read_back(pool: &PgPool, n: usize) -> (Vec<Stored>, Vec<(i64, i64)>, Vec<[String; 4]>) {
    let mut orders = Vec::new();
    let mut written = Vec::new();
    for i in 0..n {
        let row = sqlx::query(
            "SELECT o.amount_fen, o.status, o.transaction_id, o.paid_at, o.updated_at, \
             (SELECT count(*) FROM order_events e WHERE e.order_id = o.id AND e.kind = 'paid') AS events, \
             (SELECT count(*) FROM outbox b WHERE b.order_id = o.id AND b.type = 'order.paid') AS outbox \
             FROM orders o WHERE o.merchant = $1 AND o.out_trade_no = $2",
        )
        .bind(merchant_of(i))
        .bind(number(i))
        .fetch_one(pool)
        .await
        .unwrap();
        orders.push(Stored {
            amount: row.get("amount_fen"),
            status: col::order_status(row.get("status")).unwrap(),
            txid: row.get("transaction_id"),
            paid_at: row.get("paid_at"),
            updated_at: row.get("updated_at"),
        });
        written.push((row.get("events"), row.get("outbox")));
    }
    let records = sqlx::query("SELECT merchant, out_trade_no, transaction_id, verdict FROM notifications ORDER BY id")
        .fetch_all(pool)
        .await
        .unwrap()
        .iter()
        .map(|r| {
            ["merchant", "out_trade_no", "transaction_id", "verdict"]
                .map(|c| r.get::<Option<String>, _>(c).unwrap_or_default())
        })
        .collect();
    (orders, written, records)
}

/// What an engine answered for one payment, in the model's terms.
fn verdict_of(o: &Result<PaymentOutcome, StoreError>) -> Expected {
    let seen = |o: &crate::store::Order| {
        Some(Stored {
            amount: o.amount_fen.as_i64(),
            status: o.status,
            txid: o.transaction_id.clone(),
            paid_at: o.paid_at,
            updated_at: o.updated_at,
        })
    };
    match o.as_ref().expect("the payment applies without an error") {
        PaymentOutcome::Applied(o) => ("applied", seen(o)),
        PaymentOutcome::AlreadyPaid(o) => ("duplicate", seen(o)),
        PaymentOutcome::UnknownOrder => ("unknown_order", None),
        PaymentOutcome::AmountMismatch { .. } => ("amount_mismatch", None),
        PaymentOutcome::TransactionConflict(_) => ("transaction_conflict", None),
    }
}

/// Checks what the engine did against the model.
async fn check(pool: &PgPool, stored: &[Stored], pays: &[(usize, Pay)], got: Vec<Expected>, how: &str) {
    let (verdicts, after) = model(stored, pays);
    assert_eq!(got, verdicts, "{how}: verdicts of {pays:?} on {stored:?}");
    let (orders, written, records) = read_back(pool, stored.len()).await;
    for (i, (o, want)) in orders.iter().zip(&after).enumerate() {
        assert_eq!(o, want, "{how}: order {i} of {pays:?} on {stored:?}");
        let applied = pays
            .iter()
            .zip(&verdicts)
            .filter(|((_, p), v)| p.order == i && !p.stray && v.0 == "applied")
            .count() as i64;
        assert_eq!(
            written[i],
            (applied, applied),
            "{how}: events and outbox rows of order {i}"
        );
    }
    let mut want_records: Vec<[String; 4]> = pays
        .iter()
        .zip(&verdicts)
        .filter(|((_, p), _)| p.record)
        .map(|((_, p), v)| [p.merchant().to_owned(), number(p.order), p.txid.clone(), v.0.to_owned()])
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
        stray: false,
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
                updated_at: Millis::default(),
            };
            2
        ];
        let pays = sorted(&[pay(0, "A"), pay(1, "A"), pay(1, "C")]);
        seed(&db.store.pool, &stored).await;
        let jobs: Vec<PaymentJob> = pays.iter().map(|(i, p)| job(*i, p)).collect();
        let (_, outcomes) = apply_batch(&db.store.pool, jobs).await;
        let got: Vec<Expected> = outcomes.iter().map(verdict_of).collect();
        let verdicts: Vec<&str> = got.iter().map(|g| g.0).collect();
        assert_eq!(verdicts, ["applied", "transaction_conflict", "applied"]);
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

/// The scans of `table` in a text plan that read it whole: a sequential scan, or an index
/// scan with no index condition (what a sequential scan priced out turns into when the
/// planner still wants every row).
fn whole_scans(plan: &str, table: &str) -> Vec<String> {
    let lines: Vec<&str> = plan.lines().collect();
    let mut found = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let node = line.trim_start().trim_start_matches("->").trim_start();
        let Some(at) = node.find(&format!(" on {table}")) else {
            continue;
        };
        let after = &node[at + 4 + table.len()..];
        if !(after.is_empty() || after.starts_with(' ')) {
            continue;
        }
        let kind = &node[..at];
        if kind.starts_with("Seq Scan") {
            found.push(kind.to_owned());
            continue;
        }
        if !(kind.starts_with("Index") || kind.starts_with("Bitmap Heap Scan")) {
            // A modification (`Update on orders`) or a lock: it works on rows found below it.
            continue;
        }
        // The node's own detail lines, up to the next node.
        let bounded = lines[i + 1..]
            .iter()
            .take_while(|l| !l.contains("->"))
            .any(|l| l.contains("Index Cond:") || l.contains("Recheck Cond:"));
        if !bounded {
            found.push(format!("{kind} without an index condition"));
        }
    }
    found
}

#[test]
fn a_plan_that_reads_a_table_whole_is_recognised() {
    let seq = "Update on orders\n  ->  Seq Scan on orders  (cost=0.00..1.00 rows=1 width=6)\n        Filter: (id = $1)";
    assert_eq!(whole_scans(seq, "orders"), ["Seq Scan"]);
    let full =
        "Hash Join\n  ->  Index Scan using orders_pkey on orders o  (cost=0.42..9.00 rows=100 width=6)\n  ->  Hash";
    assert_eq!(
        whole_scans(full, "orders"),
        ["Index Scan using orders_pkey without an index condition"]
    );
    let keyed = "Nested Loop\n  ->  Index Scan using orders_pkey on orders  (cost=0.42..8.44 rows=1 width=6)\n        Index Cond: (id = i.id)";
    assert!(whole_scans(keyed, "orders").is_empty());
    let bitmap = "Bitmap Heap Scan on refunds  (cost=4.2..9.5 rows=2 width=6)\n  Recheck Cond: (x = $1)\n  ->  Bitmap Index Scan on refunds_due\n        Index Cond: (x = $1)";
    assert!(whole_scans(bitmap, "refunds").is_empty());
    // Another table of a similar name is not this one.
    assert!(whole_scans("Seq Scan on orders_archive  (cost=0.00..1.00 rows=1 width=6)", "orders").is_empty());
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
                    for scan in whole_scans(&plan, table) {
                        whole.push(format!(
                            "{name} at {rows} orders (analyzed: {analyzed}) reads {table} whole ({scan}):\n{plan}"
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
