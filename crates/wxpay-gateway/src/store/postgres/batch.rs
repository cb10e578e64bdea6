//! The batcher: hot-path writes (payments, new orders, prepay ids) wait a moment on a channel
//! and are gathered into one set-based statement each: one transaction and one WAL flush for
//! up to 128.

use std::collections::HashMap;

use sqlx::Row;
use sqlx::postgres::{PgPool, PgRow};
use tokio::sync::{mpsc, oneshot};

use super::rows::{ORDER_COLUMNS, order_by_number_sql, order_columns_of, order_row};
use wxpay_protocol::Fen;

use crate::store::{
    Created, NewOrder, NoticeKind, NotificationRecord, Order, Payment, PaymentOutcome, StoreError, Verdict, event_id,
};
use crate::time::Millis;

/// A new order waiting for its batch.
#[derive(Debug)]
pub(super) struct CreateJob {
    pub(super) order: NewOrder,
    pub(super) reply: oneshot::Sender<Result<Created, StoreError>>,
}

/// A prepay id waiting for its batch.
#[derive(Debug)]
pub(super) struct PrepayJob {
    pub(super) order_id: i64,
    pub(super) prepay_id: String,
    pub(super) now: Millis,
    pub(super) reply: oneshot::Sender<Result<Order, StoreError>>,
}

/// A payment waiting for its batch, and where its outcome goes.
#[derive(Debug)]
pub(super) struct PaymentJob {
    pub(super) payment: Payment,
    pub(super) notification: Option<NotificationRecord>,
    pub(super) reply: oneshot::Sender<Result<PaymentOutcome, StoreError>>,
}

/// Payments per batch at most.
pub(super) const BATCH_MAX: usize = 128;
/// Batches in flight at once: while one waits for its commit, the next gathers.
pub(super) const BATCHERS: usize = 2;

/// A payment in one statement (one round trip, one commit): the order's row lock, the
/// verdict, the conditional update, its event, its outbox row and the notification record
/// are data-modifying parts of a single `WITH`, which PostgreSQL runs atomically. A
/// concurrent duplicate waits on the row lock and then sees the order paid; a transaction id
/// taken meanwhile by another order trips the unique index and nothing is written.
pub(super) fn apply_payment_sql() -> String {
    let o_cols = order_columns_of("o");
    let u_cols = order_columns_of("u");
    format!(
        "WITH o AS ( \
           SELECT {ORDER_COLUMNS} FROM orders WHERE merchant = $1 AND out_trade_no = $2 FOR UPDATE \
         ), v AS ( \
           SELECT CASE \
             WHEN NOT EXISTS (SELECT 1 FROM o) THEN 'unknown_order' \
             WHEN (SELECT amount_fen FROM o) <> $3 THEN 'amount_mismatch' \
             WHEN (SELECT status FROM o) IN ('paid', 'refunded') THEN \
               CASE WHEN (SELECT transaction_id FROM o) = $4 THEN 'duplicate' ELSE 'transaction_conflict' END \
             WHEN EXISTS (SELECT 1 FROM orders WHERE transaction_id = $4) THEN 'transaction_conflict' \
             ELSE 'applied' END AS verdict \
         ), u AS ( \
           UPDATE orders SET status = 'paid', transaction_id = $4, paid_at = $5, updated_at = $6, next_check_at = NULL \
           WHERE id = (SELECT id FROM o) AND (SELECT verdict FROM v) = 'applied' \
           RETURNING orders.* \
         ), ev AS ( \
           INSERT INTO order_events (order_id, at, kind, detail) \
           SELECT u.id, $6, 'paid', jsonb_strip_nulls(jsonb_build_object('source', $7::TEXT, 'transaction_id', $4::TEXT, \
             'anomaly', CASE WHEN o.status <> 'pending' THEN 'paid after being ' || o.status END))::TEXT \
           FROM u, o \
         ), ob AS ( \
           INSERT INTO outbox (id, order_id, type, payload, created_at, next_attempt_at) \
           SELECT $8, u.id, 'order.paid', jsonb_build_object('id', $8::TEXT, 'type', 'order.paid', \
             'created_at', wxpay_rfc3339($6), 'data', jsonb_build_object('merchant', u.merchant, \
             'out_trade_no', u.out_trade_no, 'status', u.status, 'amount_fen', u.amount_fen, \
             'refunded_fen', u.refunded_fen, 'transaction_id', u.transaction_id, 'paid_at', wxpay_rfc3339(u.paid_at), \
             'attach', u.attach))::TEXT, $6, $6 \
           FROM u \
         ), nt AS ( \
           INSERT INTO notifications (received_at, kind, merchant, out_trade_no, transaction_id, verdict, reason, body) \
           SELECT $9, $10, $11, $12, $13, v.verdict, $14, $15 FROM v WHERE $16 \
         ) \
         SELECT v.verdict, o.status AS was, {u_cols} FROM v, u, o \
         UNION ALL \
         SELECT v.verdict, o.status AS was, {o_cols} FROM v, o WHERE NOT EXISTS (SELECT 1 FROM u)"
    )
}

/// What a verdict of the payment statement or function means, with the order it returned.
pub(super) fn payment_outcome(
    verdict: &str,
    was: Option<&str>,
    row: Option<&PgRow>,
    got: Fen,
) -> Result<PaymentOutcome, StoreError> {
    let order = || -> Result<Order, StoreError> {
        order_row(row.ok_or_else(|| StoreError::Broken(format!("a {verdict} payment without its order")))?)
    };
    Ok(match Verdict::parse(verdict) {
        Some(Verdict::UnknownOrder) => PaymentOutcome::UnknownOrder,
        Some(Verdict::Applied) => {
            let order = order()?;
            if was.is_some_and(|w| w != "pending") {
                tracing::error!(out_trade_no = ?order.out_trade_no, was = ?was, "payment for an order that was not pending");
            }
            PaymentOutcome::Applied(order)
        }
        Some(Verdict::Duplicate) => PaymentOutcome::AlreadyPaid(order()?),
        Some(Verdict::AmountMismatch) => PaymentOutcome::AmountMismatch {
            expected: order()?.amount_fen,
            got,
        },
        Some(Verdict::TransactionConflict) => match order()?.transaction_id {
            Some(t) => PaymentOutcome::TransactionConflict(format!("the order is already paid with transaction {t}")),
            None => PaymentOutcome::TransactionConflict("the transaction id belongs to another order".into()),
        },
        _ => return Err(StoreError::Broken(format!("unexpected payment verdict {verdict:?}"))),
    })
}

pub(super) fn empty_record() -> NotificationRecord {
    NotificationRecord {
        received_at: Millis::default(),
        kind: NoticeKind::Payment,
        merchant: None,
        out_trade_no: None,
        transaction_id: None,
        verdict: None,
        reason: None,
        body: String::new(),
        peer: None,
        body_sha256: None,
    }
}

/// One payment in one statement.
pub(super) async fn apply_one(
    pool: &PgPool,
    p: Payment,
    notification: Option<NotificationRecord>,
) -> Result<PaymentOutcome, StoreError> {
    let record = notification.is_some();
    let n = notification.unwrap_or_else(empty_record);
    let row = sqlx::query(sqlx::AssertSqlSafe(apply_payment_sql()))
        .bind(&p.merchant)
        .bind(p.out_trade_no.as_str())
        .bind(p.amount_fen.as_i64())
        .bind(&p.transaction_id)
        .bind(p.paid_at)
        .bind(p.now)
        .bind(p.source.as_str())
        .bind(event_id())
        .bind(n.received_at)
        .bind(n.kind.as_str())
        .bind(&n.merchant)
        .bind(&n.out_trade_no)
        .bind(&n.transaction_id)
        .bind(&n.reason)
        .bind(&n.body)
        .bind(record)
        .fetch_optional(pool)
        .await?;
    let Some(row) = row else {
        return Ok(PaymentOutcome::UnknownOrder);
    };
    let verdict: String = row.try_get("verdict")?;
    let was: Option<String> = row.try_get("was")?;
    payment_outcome(&verdict, was.as_deref(), Some(&row), p.amount_fen)
}

/// Starts `BATCHERS` tasks that gather the jobs waiting on one channel into batches of up to
/// `BATCH_MAX` and hand each batch to `run`: one statement, one transaction and one WAL flush
/// for many writes instead of one each. Each job carries its own reply, sent only after its
/// batch committed. The tasks end when the store (the last sender) is dropped.
pub(super) fn spawn_batchers<J, F, R>(pool: &PgPool, run: F) -> mpsc::Sender<J>
where
    J: Send + 'static,
    F: Fn(PgPool, Vec<J>) -> R + Send + Sync + Copy + 'static,
    R: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = mpsc::channel::<J>(4 * BATCH_MAX * BATCHERS);
    let rx = std::sync::Arc::new(tokio::sync::Mutex::new(rx));
    for _ in 0..BATCHERS {
        let (pool, rx) = (pool.clone(), rx.clone());
        tokio::spawn(async move {
            loop {
                let mut jobs = Vec::with_capacity(BATCH_MAX);
                {
                    let mut rx = rx.lock().await;
                    match rx.recv().await {
                        Some(j) => jobs.push(j),
                        None => return,
                    }
                    while jobs.len() < BATCH_MAX {
                        match rx.try_recv() {
                            Ok(j) => jobs.push(j),
                            Err(_) => break,
                        }
                    }
                }
                run(pool.clone(), jobs).await;
            }
        });
    }
    tx
}

pub(super) async fn run_batch(pool: PgPool, jobs: Vec<PaymentJob>) {
    let (jobs, outcomes) = apply_batch(&pool, jobs).await;
    for (job, outcome) in jobs.into_iter().zip(outcomes) {
        let _ = job.reply.send(outcome);
    }
}

/// Whether the set-based statement gives a batch the verdicts of its payments applied one
/// by one. It does unless one transaction id is reported for two orders: then an order whose
/// first fitting payment loses that transaction to another order may have a later payment
/// that would apply, which the statement, picking one candidate per order first, does not
/// see. Such a batch (a forgery, or a WeChat Pay fault) is applied payment by payment.
pub(super) fn set_based_fits(jobs: &[PaymentJob]) -> bool {
    let mut orders_of: HashMap<&str, (&str, &str)> = HashMap::with_capacity(jobs.len());
    jobs.iter().all(|j| {
        let p = &j.payment;
        let order = (p.merchant.as_str(), p.out_trade_no.as_str());
        *orders_of.entry(p.transaction_id.as_str()).or_insert(order) == order
    })
}

/// Applies a batch of payments: sorted by order number, in one set-based statement when it
/// fits, else (or when the statement fails) one by one. The jobs come back in the order of
/// their outcomes.
pub(super) async fn apply_batch(
    pool: &PgPool,
    mut jobs: Vec<PaymentJob>,
) -> (Vec<PaymentJob>, Vec<Result<PaymentOutcome, StoreError>>) {
    // One lock order for every batch: no two batches can wait on each other.
    jobs.sort_by(|a, b| {
        (&a.payment.merchant, &a.payment.out_trade_no).cmp(&(&b.payment.merchant, &b.payment.out_trade_no))
    });
    if jobs.len() > 1 && set_based_fits(&jobs) {
        match call_batch(pool, &jobs).await {
            Ok(outcomes) if outcomes.len() == jobs.len() => return (jobs, outcomes),
            // The database is away: trying each payment alone would make each wait for a
            // connection in turn, holding the last for minutes. All are refused now (FAIL:
            // WeChat Pay sends them again).
            Err(e) if e.is_unavailable() => {
                let outcomes = jobs.iter().map(|_| Err(e.clone())).collect();
                return (jobs, outcomes);
            }
            // A batch fails as a whole (a transaction id taken by a concurrent batch, a
            // lost connection): nothing of it was committed, so each payment is tried again
            // on its own, where such a failure only touches itself.
            Err(e) => {
                tracing::warn!(error = ?e, size = jobs.len(), "payment batch failed; applying its payments one by one")
            }
            Ok(_) => tracing::error!(
                size = jobs.len(),
                "a payment batch answered for another number of payments"
            ),
        }
    }
    let mut outcomes = Vec::with_capacity(jobs.len());
    for j in &jobs {
        outcomes.push(apply_one(pool, j.payment.clone(), j.notification.clone()).await);
    }
    (jobs, outcomes)
}

/// A batch of payments in one statement, set-based: a handful of statements' worth of work
/// for the whole batch instead of per payment.
///
/// `input` numbers the payments (they come sorted by order number); `locked` takes the
/// orders' row locks in that order (so concurrent batches cannot deadlock) and sees their
/// latest versions; `win` picks, per order, the first payment that may apply (right amount,
/// order not yet paid, transaction id not recorded anywhere), and per transaction id the
/// first such order; `u` applies the winners; every payment gets the verdict it would get
/// alone (a later copy of a winner is a duplicate); events, outbox rows and notification
/// records are written from those. A transaction id recorded meanwhile by another
/// transaction trips the unique index and the whole batch is refused, to be retried payment
/// by payment.
pub(super) fn apply_payments_sql() -> String {
    let cols: Vec<&str> = ORDER_COLUMNS.split(", ").collect();
    let out = cols
        .iter()
        .map(|c| format!("CASE WHEN u.id IS NOT NULL THEN u.{c} ELSE l.{c} END AS {c}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "WITH input AS ( \
           SELECT * FROM unnest($1::TEXT[], $2::TEXT[], $3::BIGINT[], $4::TEXT[], $5::BIGINT[], $6::BIGINT[], $7::TEXT[], \
             $8::TEXT[], $9::BOOLEAN[], $10::BIGINT[], $11::TEXT[], $12::TEXT[], $13::TEXT[], $14::TEXT[], $15::TEXT[], \
             $16::TEXT[]) WITH ORDINALITY AS t(merchant, out_trade_no, amount, txid, paid_at, now, source, event_id, record, \
             received_at, kind, n_merchant, n_out_trade_no, n_txid, reason, body, idx) \
         ), locked AS ( \
           SELECT o.* FROM orders o WHERE (o.merchant, o.out_trade_no) IN (SELECT merchant, out_trade_no FROM input) \
           ORDER BY o.merchant, o.out_trade_no FOR UPDATE \
         ), cand AS ( \
           SELECT i.idx, l.id AS order_id, i.txid FROM input i \
           JOIN locked l ON l.merchant = i.merchant AND l.out_trade_no = i.out_trade_no \
           WHERE l.amount_fen = i.amount AND l.status IN ('pending', 'closed', 'failed') \
             AND NOT EXISTS (SELECT 1 FROM orders t WHERE t.transaction_id = i.txid) \
         ), win1 AS ( \
           SELECT DISTINCT ON (order_id) idx, order_id, txid FROM cand ORDER BY order_id, idx \
         ), win AS ( \
           SELECT DISTINCT ON (txid) idx, order_id, txid FROM win1 ORDER BY txid, idx \
         ), u AS ( \
           UPDATE orders SET status = 'paid', transaction_id = w.txid, paid_at = i.paid_at, updated_at = i.now, \
             next_check_at = NULL \
           FROM win w JOIN input i ON i.idx = w.idx \
           WHERE orders.id = w.order_id \
           RETURNING orders.*, w.idx AS win_idx \
         ), verdicts AS ( \
           SELECT i.idx, l.id AS order_id, l.status AS was, CASE \
             WHEN l.id IS NULL THEN 'unknown_order' \
             WHEN l.amount_fen <> i.amount THEN 'amount_mismatch' \
             WHEN w.idx IS NOT NULL THEN 'applied' \
             WHEN l.status IN ('paid', 'refunded') THEN \
               CASE WHEN l.transaction_id = i.txid THEN 'duplicate' ELSE 'transaction_conflict' END \
             WHEN wo.txid IS NOT NULL THEN CASE WHEN wo.txid = i.txid THEN 'duplicate' ELSE 'transaction_conflict' END \
             ELSE 'transaction_conflict' END AS verdict \
           FROM input i \
           LEFT JOIN locked l ON l.merchant = i.merchant AND l.out_trade_no = i.out_trade_no \
           LEFT JOIN win w ON w.idx = i.idx \
           LEFT JOIN win wo ON wo.order_id = l.id \
         ), ev AS ( \
           INSERT INTO order_events (order_id, at, kind, detail) \
           SELECT u.id, i.now, 'paid', jsonb_strip_nulls(jsonb_build_object('source', i.source, 'transaction_id', i.txid, \
             'anomaly', CASE WHEN l.status <> 'pending' THEN 'paid after being ' || l.status END))::TEXT \
           FROM u JOIN input i ON i.idx = u.win_idx JOIN locked l ON l.id = u.id \
         ), ob AS ( \
           INSERT INTO outbox (id, order_id, type, payload, created_at, next_attempt_at) \
           SELECT i.event_id, u.id, 'order.paid', jsonb_build_object('id', i.event_id, 'type', 'order.paid', \
             'created_at', wxpay_rfc3339(i.now), 'data', jsonb_build_object('merchant', u.merchant, \
             'out_trade_no', u.out_trade_no, 'status', u.status, 'amount_fen', u.amount_fen, \
             'refunded_fen', u.refunded_fen, 'transaction_id', u.transaction_id, 'paid_at', wxpay_rfc3339(u.paid_at), \
             'attach', u.attach))::TEXT, i.now, i.now \
           FROM u JOIN input i ON i.idx = u.win_idx \
         ), nt AS ( \
           INSERT INTO notifications (received_at, kind, merchant, out_trade_no, transaction_id, verdict, reason, body) \
           SELECT i.received_at, i.kind, i.n_merchant, i.n_out_trade_no, i.n_txid, v.verdict, i.reason, i.body \
           FROM input i JOIN verdicts v ON v.idx = i.idx WHERE i.record \
         ) \
         SELECT v.idx AS r_idx, v.verdict AS r_verdict, v.was AS r_was, {out} \
         FROM verdicts v LEFT JOIN u ON u.id = v.order_id LEFT JOIN locked l ON l.id = v.order_id \
         ORDER BY v.idx"
    )
}

pub(super) async fn call_batch(
    pool: &PgPool,
    jobs: &[PaymentJob],
) -> Result<Vec<Result<PaymentOutcome, StoreError>>, StoreError> {
    let n = jobs.len();
    let mut merchant = Vec::with_capacity(n);
    let mut out_trade_no = Vec::with_capacity(n);
    let mut amount = Vec::with_capacity(n);
    let mut transaction_id = Vec::with_capacity(n);
    let mut paid_at = Vec::with_capacity(n);
    let mut now = Vec::with_capacity(n);
    let mut source = Vec::with_capacity(n);
    let mut event = Vec::with_capacity(n);
    let mut record = Vec::with_capacity(n);
    let mut received_at = Vec::with_capacity(n);
    let mut kind = Vec::with_capacity(n);
    let mut n_merchant: Vec<Option<String>> = Vec::with_capacity(n);
    let mut n_out_trade_no: Vec<Option<String>> = Vec::with_capacity(n);
    let mut n_transaction_id: Vec<Option<String>> = Vec::with_capacity(n);
    let mut reason: Vec<Option<String>> = Vec::with_capacity(n);
    let mut body = Vec::with_capacity(n);
    for j in jobs {
        let p = &j.payment;
        merchant.push(p.merchant.clone());
        out_trade_no.push(p.out_trade_no.as_str().to_owned());
        amount.push(p.amount_fen.as_i64());
        transaction_id.push(p.transaction_id.clone());
        paid_at.push(p.paid_at);
        now.push(p.now);
        source.push(p.source.as_str().to_owned());
        event.push(event_id());
        record.push(j.notification.is_some());
        let r = j.notification.clone().unwrap_or_else(empty_record);
        received_at.push(r.received_at);
        kind.push(r.kind.as_str());
        n_merchant.push(r.merchant);
        n_out_trade_no.push(r.out_trade_no);
        n_transaction_id.push(r.transaction_id);
        reason.push(r.reason);
        body.push(r.body);
    }
    let rows = sqlx::query(sqlx::AssertSqlSafe(apply_payments_sql()))
        .bind(merchant)
        .bind(out_trade_no)
        .bind(amount)
        .bind(transaction_id)
        .bind(paid_at)
        .bind(now)
        .bind(source)
        .bind(event)
        .bind(record)
        .bind(received_at)
        .bind(kind)
        .bind(n_merchant)
        .bind(n_out_trade_no)
        .bind(n_transaction_id)
        .bind(reason)
        .bind(body)
        .fetch_all(pool)
        .await?;
    let mut out: Vec<Option<Result<PaymentOutcome, StoreError>>> = (0..n).map(|_| None).collect();
    for row in &rows {
        let idx: i64 = row.try_get("r_idx")?;
        let verdict: String = row.try_get("r_verdict")?;
        let was: Option<String> = row.try_get("r_was")?;
        let i = usize::try_from(idx - 1).map_err(|_| StoreError::Broken("bad batch index".into()))?;
        let got = jobs.get(i).map_or(Fen::ZERO, |j| j.payment.amount_fen);
        let row = (verdict != "unknown_order").then_some(row);
        if let Some(slot) = out.get_mut(i) {
            *slot = Some(payment_outcome(&verdict, was.as_deref(), row, got));
        }
    }
    out.into_iter()
        .map(|o| o.ok_or_else(|| StoreError::Broken("a payment missing from its batch".into())))
        .collect()
}

/// A new order and its `created` event in one statement; nothing when the number is taken.
pub(super) fn create_one_sql() -> String {
    let i_cols = order_columns_of("i");
    format!(
        "WITH i AS ( \
           INSERT INTO orders (merchant, out_trade_no, appid, mch_id, description, amount_fen, openid, attach, client_ip, \
           status, upstream, created_at, updated_at, expires_at, next_check_at, request_hash) \
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'pending', 'new', $10, $10, $11, $12, $13) \
           ON CONFLICT (merchant, out_trade_no) DO NOTHING RETURNING * \
         ), ev AS ( \
           INSERT INTO order_events (order_id, at, kind, detail) \
           SELECT i.id, $10, 'created', jsonb_build_object('amount_fen', i.amount_fen)::TEXT FROM i \
         ) \
         SELECT {i_cols} FROM i"
    )
}

/// A prepay id and its `prepay` event in one statement.
pub(super) fn prepay_one_sql() -> String {
    let u_cols = order_columns_of("u");
    format!(
        "WITH u AS ( \
           UPDATE orders SET prepay_id = $1, prepay_at = $2, upstream = 'created', upstream_error = NULL, updated_at = $2 \
           WHERE id = $3 RETURNING * \
         ), ev AS ( \
           INSERT INTO order_events (order_id, at, kind, detail) \
           SELECT u.id, $2, 'prepay', jsonb_build_object('prepay_id', u.prepay_id)::TEXT FROM u \
         ) \
         SELECT {u_cols} FROM u"
    )
}

/// New orders and their `created` events in one statement, set-based.
pub(super) fn create_batch_sql() -> String {
    let out = order_columns_of("n");
    format!(
        "WITH input AS ( \
           SELECT * FROM unnest($1::TEXT[], $2::TEXT[], $3::TEXT[], $4::TEXT[], $5::TEXT[], $6::BIGINT[], $7::TEXT[], \
             $8::TEXT[], $9::TEXT[], $10::BIGINT[], $11::BIGINT[], $12::BIGINT[], $13::TEXT[]) WITH ORDINALITY \
             AS t(merchant, out_trade_no, appid, mch_id, description, amount_fen, openid, attach, client_ip, now, expires_at, \
             first_check_at, request_hash, idx) \
         ), n AS ( \
           INSERT INTO orders (merchant, out_trade_no, appid, mch_id, description, amount_fen, openid, attach, client_ip, \
             status, upstream, created_at, updated_at, expires_at, next_check_at, request_hash) \
           SELECT merchant, out_trade_no, appid, mch_id, description, amount_fen, openid, attach, client_ip, 'pending', 'new', \
             now, now, expires_at, first_check_at, request_hash FROM input ORDER BY merchant, out_trade_no \
           ON CONFLICT (merchant, out_trade_no) DO NOTHING RETURNING * \
         ), ev AS ( \
           INSERT INTO order_events (order_id, at, kind, detail) \
           SELECT n.id, n.created_at, 'created', jsonb_build_object('amount_fen', n.amount_fen)::TEXT FROM n \
         ) \
         SELECT i.idx AS r_idx, {out} FROM input i LEFT JOIN n ON n.merchant = i.merchant AND n.out_trade_no = i.out_trade_no \
         ORDER BY i.idx"
    )
}

/// Prepay ids and their `prepay` events in one statement, set-based.
pub(super) fn prepay_batch_sql() -> String {
    let out = order_columns_of("u");
    format!(
        "WITH input AS ( \
           SELECT * FROM unnest($1::BIGINT[], $2::TEXT[], $3::BIGINT[]) AS t(id, prepay_id, now) \
         ), u AS ( \
           UPDATE orders SET prepay_id = i.prepay_id, prepay_at = i.now, upstream = 'created', upstream_error = NULL, \
             updated_at = i.now \
           FROM input i WHERE orders.id = i.id RETURNING orders.* \
         ), ev AS ( \
           INSERT INTO order_events (order_id, at, kind, detail) \
           SELECT u.id, u.prepay_at, 'prepay', jsonb_build_object('prepay_id', u.prepay_id)::TEXT FROM u \
         ) \
         SELECT {out} FROM u"
    )
}

/// One new order in one statement.
pub(super) async fn create_one(pool: &PgPool, n: NewOrder) -> Result<Created, StoreError> {
    // One statement: the insert (or nothing, when the number is taken) and its
    // `created` event.
    let row = sqlx::query(sqlx::AssertSqlSafe(create_one_sql()))
        .bind(&n.merchant)
        .bind(n.out_trade_no.as_str())
        .bind(&n.appid)
        .bind(&n.mch_id)
        .bind(&n.description)
        .bind(n.amount_fen.as_i64())
        .bind(&n.openid)
        .bind(&n.attach)
        .bind(&n.client_ip)
        .bind(n.now)
        .bind(n.expires_at)
        .bind(n.first_check_at)
        .bind(&n.request_hash)
        .fetch_optional(pool)
        .await?;
    if let Some(row) = row {
        return Ok(Created::New(order_row(&row)?));
    }
    // The number is taken: a fresh statement sees the order that has it.
    let row = sqlx::query(sqlx::AssertSqlSafe(order_by_number_sql()))
        .bind(&n.merchant)
        .bind(n.out_trade_no.as_str())
        .fetch_one(pool)
        .await?;
    Ok(Created::Existing(order_row(&row)?))
}

/// One prepay id in one statement.
pub(super) async fn prepay_one(
    pool: &PgPool,
    order_id: i64,
    prepay_id: String,
    now: Millis,
) -> Result<Order, StoreError> {
    let row = sqlx::query(sqlx::AssertSqlSafe(prepay_one_sql()))
        .bind(&prepay_id)
        .bind(now)
        .bind(order_id)
        .fetch_one(pool)
        .await?;
    order_row(&row)
}

pub(super) async fn run_create_batch(pool: PgPool, jobs: Vec<CreateJob>) {
    // Two orders with one number in one batch: the later ones go alone, after the batch,
    // where they find the first as the existing order.
    let mut seen = std::collections::HashSet::new();
    let (batch, later): (Vec<CreateJob>, Vec<CreateJob>) = jobs
        .into_iter()
        .partition(|j| seen.insert((j.order.merchant.clone(), j.order.out_trade_no.clone())));
    if batch.len() > 1 {
        match create_batch(&pool, &batch).await {
            Ok(rows) => {
                for (job, row) in batch.into_iter().zip(rows) {
                    let result = match row {
                        Some(order) => Ok(Created::New(order)),
                        None => create_one(&pool, job.order).await,
                    };
                    let _ = job.reply.send(result);
                }
            }
            // The database is away: every order of the batch is refused at once (see
            // `apply_batch`).
            Err(e) if e.is_unavailable() => {
                for j in batch {
                    let _ = j.reply.send(Err(e.clone()));
                }
            }
            Err(e) => {
                tracing::warn!(error = ?e, "order batch failed; storing its orders one by one");
                for j in batch {
                    let _ = j.reply.send(create_one(&pool, j.order).await);
                }
            }
        }
    } else {
        for j in batch {
            let _ = j.reply.send(create_one(&pool, j.order).await);
        }
    }
    for j in later {
        let _ = j.reply.send(create_one(&pool, j.order).await);
    }
}

/// New orders in one statement, with their `created` events; `None` for a number already
/// taken (the caller looks the existing order up).
pub(super) async fn create_batch(pool: &PgPool, jobs: &[CreateJob]) -> Result<Vec<Option<Order>>, StoreError> {
    let col = |f: fn(&NewOrder) -> String| jobs.iter().map(|j| f(&j.order)).collect::<Vec<_>>();
    let num = |f: fn(&NewOrder) -> i64| jobs.iter().map(|j| f(&j.order)).collect::<Vec<_>>();
    let at = |f: fn(&NewOrder) -> Millis| jobs.iter().map(|j| f(&j.order)).collect::<Vec<_>>();
    let rows = sqlx::query(sqlx::AssertSqlSafe(create_batch_sql()))
        .bind(col(|o| o.merchant.clone()))
        .bind(col(|o| o.out_trade_no.as_str().to_owned()))
        .bind(col(|o| o.appid.clone()))
        .bind(col(|o| o.mch_id.clone()))
        .bind(col(|o| o.description.clone()))
        .bind(num(|o| o.amount_fen.as_i64()))
        .bind(col(|o| o.openid.clone()))
        .bind(jobs.iter().map(|j| j.order.attach.clone()).collect::<Vec<_>>())
        .bind(col(|o| o.client_ip.clone()))
        .bind(at(|o| o.now))
        .bind(at(|o| o.expires_at))
        .bind(at(|o| o.first_check_at))
        .bind(col(|o| o.request_hash.clone()))
        .fetch_all(pool)
        .await?;
    if rows.len() != jobs.len() {
        return Err(StoreError::Broken("an order batch answered for other orders".into()));
    }
    rows.iter()
        .map(|r| {
            let id: Option<i64> = r.try_get("id")?;
            id.map(|_| order_row(r)).transpose()
        })
        .collect()
}

pub(super) async fn run_prepay_batch(pool: PgPool, jobs: Vec<PrepayJob>) {
    let mut seen = std::collections::HashSet::new();
    let (mut batch, later): (Vec<PrepayJob>, Vec<PrepayJob>) = jobs.into_iter().partition(|j| seen.insert(j.order_id));
    // Rows locked in id order by every batch.
    batch.sort_by_key(|j| j.order_id);
    if batch.len() > 1 {
        match prepay_batch(&pool, &batch).await {
            Ok(orders) => {
                let mut by_id: std::collections::HashMap<i64, Order> = orders.into_iter().map(|o| (o.id, o)).collect();
                for j in batch {
                    let result = by_id.remove(&j.order_id).ok_or_else(|| {
                        StoreError::Broken(format!("no order {} to record a prepay_id for", j.order_id))
                    });
                    let _ = j.reply.send(result);
                }
            }
            Err(e) if e.is_unavailable() => {
                for j in batch {
                    let _ = j.reply.send(Err(e.clone()));
                }
            }
            Err(e) => {
                tracing::warn!(error = ?e, "prepay batch failed; recording its prepay ids one by one");
                for j in batch {
                    let _ = j.reply.send(prepay_one(&pool, j.order_id, j.prepay_id, j.now).await);
                }
            }
        }
    } else {
        for j in batch {
            let _ = j.reply.send(prepay_one(&pool, j.order_id, j.prepay_id, j.now).await);
        }
    }
    for j in later {
        let _ = j.reply.send(prepay_one(&pool, j.order_id, j.prepay_id, j.now).await);
    }
}

/// Prepay ids in one statement, with their `prepay` events.
pub(super) async fn prepay_batch(pool: &PgPool, jobs: &[PrepayJob]) -> Result<Vec<Order>, StoreError> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(prepay_batch_sql()))
        .bind(jobs.iter().map(|j| j.order_id).collect::<Vec<_>>())
        .bind(jobs.iter().map(|j| j.prepay_id.clone()).collect::<Vec<_>>())
        .bind(jobs.iter().map(|j| j.now).collect::<Vec<_>>())
        .fetch_all(pool)
        .await?;
    rows.iter().map(order_row).collect()
}
