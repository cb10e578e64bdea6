//! The PostgreSQL engine: a pool, one transaction per state change, and background work
//! claimed with `FOR UPDATE SKIP LOCKED` so that several gateways can share one database
//! without doing the same job twice.
//!
//! Read Committed is enough: state changes are conditional updates (`WHERE status =
//! 'pending'`) that PostgreSQL re-evaluates on the latest row version when two transactions
//! race, and a payment takes the order's row lock (`FOR UPDATE`) before it decides.

use std::collections::HashMap;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::{ConnectOptions, Connection, Executor, Postgres, Row, Transaction};
use tokio::sync::{mpsc, oneshot};

use super::rules::{self, RefundVerdict, Refunded};
use super::{
    Created, DailyClaim, Event, Fut, IdemClaim, IdemKey, ImportedRefund, NewOrder, NewRefund, NotificationRecord,
    Order, OrderStatus, OutboxEvent, Payment, PaymentOutcome, ReconciliationRecord, Refund, RefundCreated,
    RefundOutcome, RefundResult, RefundStatus, Settlement, Stats, Store, StoreError, Upstream, event_id, event_payload,
    order_status, refund_event_payload, refund_facts, refund_refused,
};

const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../../migrations/postgres/0001_init.sql")),
    (2, include_str!("../../migrations/postgres/0002_rfc3339.sql")),
    (3, include_str!("../../migrations/postgres/0003_refunds.sql")),
    (4, include_str!("../../migrations/postgres/0004_idempotency_lease.sql")),
    (5, include_str!("../../migrations/postgres/0005_rejections.sql")),
];
/// The advisory lock that serialises migrations of several gateways starting together.
const MIGRATION_LOCK: i64 = 0x7778_7061_7900;

/// The PostgreSQL store.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
    /// Payments waiting for a batch.
    payments: mpsc::Sender<PaymentJob>,
    /// New orders waiting for a batch.
    creates: mpsc::Sender<CreateJob>,
    /// Prepay ids waiting for a batch.
    prepays: mpsc::Sender<PrepayJob>,
}

/// A new order waiting for its batch.
#[derive(Debug)]
struct CreateJob {
    order: NewOrder,
    reply: oneshot::Sender<Result<Created, StoreError>>,
}

/// A prepay id waiting for its batch.
#[derive(Debug)]
struct PrepayJob {
    order_id: i64,
    prepay_id: String,
    now: i64,
    reply: oneshot::Sender<Result<Order, StoreError>>,
}

/// A payment waiting for its batch, and where its outcome goes.
#[derive(Debug)]
struct PaymentJob {
    payment: Payment,
    notification: Option<NotificationRecord>,
    reply: oneshot::Sender<Result<PaymentOutcome, StoreError>>,
}

/// Payments per batch at most.
const BATCH_MAX: usize = 128;
/// Batches in flight at once: while one waits for its commit, the next gathers.
const BATCHERS: usize = 2;

const ORDER_COLUMNS: &str = "id, merchant, out_trade_no, appid, mch_id, description, amount_fen, refunded_fen, openid, attach, \
client_ip, status, upstream, upstream_error, prepay_id, prepay_at, transaction_id, created_at, updated_at, expires_at, paid_at, \
closed_at, request_hash";

fn order_row(r: &PgRow) -> Result<Order, StoreError> {
    let status: String = r.try_get("status")?;
    let upstream: String = r.try_get("upstream")?;
    Ok(Order {
        id: r.try_get("id")?,
        merchant: r.try_get("merchant")?,
        out_trade_no: r.try_get("out_trade_no")?,
        appid: r.try_get("appid")?,
        mch_id: r.try_get("mch_id")?,
        description: r.try_get("description")?,
        amount_fen: r.try_get("amount_fen")?,
        refunded_fen: r.try_get("refunded_fen")?,
        openid: r.try_get("openid")?,
        attach: r.try_get("attach")?,
        client_ip: r.try_get("client_ip")?,
        status: OrderStatus::parse(&status).unwrap_or(OrderStatus::Pending),
        upstream: Upstream::parse(&upstream).unwrap_or(Upstream::Unknown),
        upstream_error: r.try_get("upstream_error")?,
        prepay_id: r.try_get("prepay_id")?,
        prepay_at: r.try_get("prepay_at")?,
        transaction_id: r.try_get("transaction_id")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
        expires_at: r.try_get("expires_at")?,
        paid_at: r.try_get("paid_at")?,
        closed_at: r.try_get("closed_at")?,
        request_hash: r.try_get("request_hash")?,
    })
}

type Tx = Transaction<'static, Postgres>;

async fn order_by_id(tx: &mut Tx, id: i64) -> Result<Order, StoreError> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {ORDER_COLUMNS} FROM orders WHERE id = $1"
    )))
    .bind(id)
    .fetch_one(&mut **tx)
    .await?;
    order_row(&row)
}

async fn add_event(
    tx: &mut Tx,
    order_id: i64,
    at: i64,
    kind: &str,
    detail: &serde_json::Value,
) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO order_events (order_id, at, kind, detail) VALUES ($1, $2, $3, $4)")
        .bind(order_id)
        .bind(at)
        .bind(kind)
        .bind(detail.to_string())
        .execute(&mut **tx)
        .await?;
    Ok(())
}

async fn add_outbox(tx: &mut Tx, order: &Order, event_type: &str, now: i64) -> Result<(), StoreError> {
    let id = event_id();
    let payload = event_payload(&id, event_type, now, order);
    sqlx::query(
        "INSERT INTO outbox (id, order_id, type, payload, created_at, next_attempt_at) VALUES ($1, $2, $3, $4, $5, $5)",
    )
    .bind(&id)
    .bind(order.id)
    .bind(event_type)
    .bind(payload)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn insert_notification(tx: &mut Tx, n: &NotificationRecord) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO notifications (received_at, kind, merchant, out_trade_no, transaction_id, verdict, reason, body, \
         peer, body_sha256) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(n.received_at)
    .bind(&n.kind)
    .bind(&n.merchant)
    .bind(&n.out_trade_no)
    .bind(&n.transaction_id)
    .bind(&n.verdict)
    .bind(&n.reason)
    .bind(&n.body)
    .bind(&n.peer)
    .bind(&n.body_sha256)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Moves a pending order to `to` if it is still pending; writes the event and, for
/// `event_type`, the outbox row. Returns the order after the change, or `None`.
async fn transition(
    tx: &mut Tx,
    order_id: i64,
    to: OrderStatus,
    kind: &str,
    detail: serde_json::Value,
    event_type: Option<&str>,
    now: i64,
) -> Result<Option<Order>, StoreError> {
    let column = if to == OrderStatus::Closed {
        ", closed_at = $3"
    } else {
        ""
    };
    let sql = format!(
        "UPDATE orders SET status = $1, updated_at = $3, next_check_at = NULL{column} WHERE id = $2 AND status = $4"
    );
    let changed = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(to.as_str())
        .bind(order_id)
        .bind(now)
        .bind(OrderStatus::Pending.as_str())
        .execute(&mut **tx)
        .await?
        .rows_affected();
    if changed == 0 {
        return Ok(None);
    }
    let order = order_by_id(tx, order_id).await?;
    add_event(tx, order_id, now, kind, &detail).await?;
    if let Some(t) = event_type {
        add_outbox(tx, &order, t, now).await?;
    }
    Ok(Some(order))
}

const REFUND_COLUMNS: &str = "id, order_id, merchant, out_trade_no, out_refund_no, amount_fen, reason, status, upstream, \
upstream_error, refund_id, created_at, updated_at, accepted_at, settled_at, request_hash";

fn refund_row(r: &PgRow) -> Result<Refund, StoreError> {
    let status: String = r.try_get("status")?;
    let upstream: String = r.try_get("upstream")?;
    Ok(Refund {
        id: r.try_get("id")?,
        order_id: r.try_get("order_id")?,
        merchant: r.try_get("merchant")?,
        out_trade_no: r.try_get("out_trade_no")?,
        out_refund_no: r.try_get("out_refund_no")?,
        amount_fen: r.try_get("amount_fen")?,
        reason: r.try_get("reason")?,
        status: RefundStatus::parse(&status).unwrap_or(RefundStatus::Pending),
        upstream: Upstream::parse(&upstream).unwrap_or(Upstream::Unknown),
        upstream_error: r.try_get("upstream_error")?,
        refund_id: r.try_get("refund_id")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
        accepted_at: r.try_get("accepted_at")?,
        settled_at: r.try_get("settled_at")?,
        request_hash: r.try_get("request_hash")?,
    })
}

async fn refund_by_id(tx: &mut Tx, id: i64) -> Result<Refund, StoreError> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {REFUND_COLUMNS} FROM refunds WHERE id = $1"
    )))
    .bind(id)
    .fetch_one(&mut **tx)
    .await?;
    refund_row(&row)
}

/// A refund by number; `lock` takes its row lock (after its order's: see `lock_order`).
async fn refund_by_number(
    tx: &mut Tx,
    merchant: &str,
    out_refund_no: &str,
    lock: bool,
) -> Result<Option<Refund>, StoreError> {
    let lock = if lock { " FOR UPDATE" } else { "" };
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {REFUND_COLUMNS} FROM refunds WHERE merchant = $1 AND out_refund_no = $2{lock}"
    )))
    .bind(merchant)
    .bind(out_refund_no)
    .fetch_optional(&mut **tx)
    .await?;
    row.as_ref().map(refund_row).transpose()
}

/// An order by number with its row lock. Every refund change takes the order's lock first and
/// the refund's second, so two of them never wait on each other in opposite orders.
async fn lock_order(tx: &mut Tx, merchant: &str, out_trade_no: &str) -> Result<Option<Order>, StoreError> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {ORDER_COLUMNS} FROM orders WHERE merchant = $1 AND out_trade_no = $2 FOR UPDATE"
    )))
    .bind(merchant)
    .bind(out_trade_no)
    .fetch_optional(&mut **tx)
    .await?;
    row.as_ref().map(order_row).transpose()
}

/// Locks the order of a refund (see `lock_order`).
async fn lock_order_of_refund(tx: &mut Tx, refund_id: i64) -> Result<(), StoreError> {
    sqlx::query("SELECT o.id FROM orders o JOIN refunds r ON r.order_id = o.id WHERE r.id = $1 FOR UPDATE OF o")
        .bind(refund_id)
        .fetch_optional(&mut **tx)
        .await?;
    Ok(())
}

async fn add_refund_outbox(
    tx: &mut Tx,
    refund: &Refund,
    order: &Order,
    event_type: &str,
    now: i64,
) -> Result<(), StoreError> {
    let id = event_id();
    let payload = refund_event_payload(&id, event_type, now, refund, order);
    sqlx::query(
        "INSERT INTO outbox (id, order_id, type, payload, created_at, next_attempt_at) VALUES ($1, $2, $3, $4, $5, $5)",
    )
    .bind(&id)
    .bind(order.id)
    .bind(event_type)
    .bind(payload)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Raises a locked, paid order's reserved refund sum by `amount` if it stays within the
/// amount; otherwise says why not.
async fn reserve(tx: &mut Tx, order: &Order, amount: i64, now: i64) -> Result<Option<RefundCreated>, StoreError> {
    let before = figures(tx, order.id).await?;
    match rules::reserve(order.amount_fen, before, amount) {
        Ok(after) => {
            set_figures(tx, order.id, before, after, now).await?;
            Ok(None)
        }
        Err(refused) => Ok(Some(refused.into())),
    }
}

/// An order's refund figures. Its row must be locked.
async fn figures(tx: &mut Tx, order_id: i64) -> Result<Refunded, StoreError> {
    let row = sqlx::query("SELECT status, refunded_fen, refund_reserved_fen FROM orders WHERE id = $1")
        .bind(order_id)
        .fetch_one(&mut **tx)
        .await?;
    Ok(Refunded {
        status: order_status(row.try_get("status")?)?,
        refunded_fen: row.try_get("refunded_fen")?,
        reserved_fen: row.try_get("refund_reserved_fen")?,
    })
}

/// Writes an order's refund figures, if they are still `before` (its row is locked, so they
/// are; say so if not).
async fn set_figures(
    tx: &mut Tx,
    order_id: i64,
    before: Refunded,
    after: Refunded,
    now: i64,
) -> Result<(), StoreError> {
    let changed = sqlx::query(
        "UPDATE orders SET status = $1, refunded_fen = $2, refund_reserved_fen = $3, updated_at = $4 \
         WHERE id = $5 AND status = $6 AND refunded_fen = $7 AND refund_reserved_fen = $8",
    )
    .bind(after.status.as_str())
    .bind(after.refunded_fen)
    .bind(after.reserved_fen)
    .bind(now)
    .bind(order_id)
    .bind(before.status.as_str())
    .bind(before.refunded_fen)
    .bind(before.reserved_fen)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    if changed == 0 {
        return Err(StoreError::Db("the order changed during a refund's transaction".into()));
    }
    Ok(())
}

/// Settles a pending refund (see the SQLite engine's twin). The order's row must be locked.
async fn settle_refund(
    tx: &mut Tx,
    refund_id: i64,
    s: &Settlement<'_>,
    now: i64,
) -> Result<Option<Refund>, StoreError> {
    let status = if s.succeeded {
        RefundStatus::Succeeded
    } else {
        RefundStatus::Failed
    };
    let changed = sqlx::query(
        "UPDATE refunds SET status = $1, refund_id = COALESCE(refund_id, $2), settled_at = $3, updated_at = $4, \
         upstream_error = COALESCE($5, upstream_error), next_check_at = NULL WHERE id = $6 AND status = 'pending'",
    )
    .bind(status.as_str())
    .bind(s.wechat_refund_id)
    .bind(s.settled_at)
    .bind(now)
    .bind(s.error)
    .bind(refund_id)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    if changed == 0 {
        return Ok(None);
    }
    let refund = refund_by_id(tx, refund_id).await?;
    let order = order_by_id(tx, refund.order_id).await?;
    let before = figures(tx, order.id).await?;
    let after = rules::settle(order.amount_fen, before, refund.amount_fen, s.succeeded);
    set_figures(tx, order.id, before, after, now).await?;
    let order = order_by_id(tx, refund.order_id).await?;
    let (kind, event_type) = if s.succeeded {
        ("refund_succeeded", "refund.succeeded")
    } else {
        ("refund_failed", "refund.failed")
    };
    add_event(tx, order.id, now, kind, &s.detail).await?;
    add_refund_outbox(tx, &refund, &order, event_type, now).await?;
    Ok(Some(refund))
}

async fn create_refund(tx: &mut Tx, n: &NewRefund) -> Result<RefundCreated, StoreError> {
    let Some(order) = lock_order(tx, &n.merchant, &n.out_trade_no).await? else {
        return Ok(RefundCreated::NoOrder);
    };
    if let Some(existing) = refund_by_number(tx, &n.merchant, &n.out_refund_no, false).await? {
        return Ok(RefundCreated::Existing(existing));
    }
    if let Some(refused) = reserve(tx, &order, n.amount_fen, n.now).await? {
        return Ok(refused);
    }
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO refunds (order_id, merchant, out_trade_no, out_refund_no, amount_fen, reason, status, upstream, \
         created_at, updated_at, next_check_at, request_hash) VALUES ($1, $2, $3, $4, $5, $6, 'pending', 'new', $7, $7, $8, $9) \
         RETURNING {REFUND_COLUMNS}"
    )))
    .bind(order.id)
    .bind(&n.merchant)
    .bind(&n.out_trade_no)
    .bind(&n.out_refund_no)
    .bind(n.amount_fen)
    .bind(&n.reason)
    .bind(n.now)
    .bind(n.first_check_at)
    .bind(&n.request_hash)
    .fetch_one(&mut **tx)
    .await?;
    let refund = refund_row(&row)?;
    let detail = serde_json::json!({ "out_refund_no": n.out_refund_no, "amount_fen": n.amount_fen });
    add_event(tx, order.id, n.now, "refund_requested", &detail).await?;
    Ok(RefundCreated::New(refund))
}

async fn apply_refund(tx: &mut Tx, r: &RefundResult) -> Result<RefundOutcome, StoreError> {
    let verdict = |found: Option<&Refund>| {
        rules::refund_verdict(found.map(refund_facts), &r.out_trade_no, r.amount_fen, r.succeeded)
    };
    // Read once to find the order whose row to lock (the order's first, then the refund's,
    // as every refund change does), then again under the lock, where the verdict is made.
    let Some(found) = refund_by_number(tx, &r.merchant, &r.out_refund_no, false).await? else {
        return Ok(RefundOutcome::UnknownRefund);
    };
    if verdict(Some(&found)) == RefundVerdict::WrongOrder {
        return Ok(RefundOutcome::WrongOrder);
    }
    lock_order(tx, &found.merchant, &found.out_trade_no).await?;
    let locked = refund_by_number(tx, &r.merchant, &r.out_refund_no, true).await?;
    let v = verdict(locked.as_ref());
    let refund = match (locked, v) {
        (Some(refund), RefundVerdict::Settle) => refund,
        (locked, v) => return refund_refused(v, locked, r.amount_fen),
    };
    let wechat_id = (!r.refund_id.is_empty()).then_some(r.refund_id.as_str());
    // WeChat Pay reports it, so WeChat Pay has it, whatever became of our call's answer.
    sqlx::query(
        "UPDATE refunds SET upstream = 'created', accepted_at = COALESCE(accepted_at, $1) WHERE id = $2 AND upstream != 'created'",
    )
    .bind(r.now)
    .bind(refund.id)
    .execute(&mut **tx)
    .await?;
    let error = (!r.succeeded).then(|| format!("WeChat Pay reports {}", r.upstream_status));
    let settlement = Settlement {
        succeeded: r.succeeded,
        wechat_refund_id: wechat_id,
        settled_at: r.settled_at,
        detail: serde_json::json!({
            "out_refund_no": r.out_refund_no,
            "amount_fen": r.amount_fen,
            "refund_id": wechat_id,
            "status": r.upstream_status,
            "source": r.source.as_str(),
        }),
        error: error.as_deref(),
    };
    match settle_refund(tx, refund.id, &settlement, r.now).await? {
        Some(settled) => Ok(RefundOutcome::Applied(settled)),
        None => Err(StoreError::Db("the refund changed during its settlement".into())),
    }
}

async fn import_refund(tx: &mut Tx, i: &ImportedRefund) -> Result<RefundCreated, StoreError> {
    let Some(order) = lock_order(tx, &i.merchant, &i.out_trade_no).await? else {
        return Ok(RefundCreated::NoOrder);
    };
    if let Some(existing) = refund_by_number(tx, &i.merchant, &i.out_refund_no, false).await? {
        return Ok(RefundCreated::Existing(existing));
    }
    if i.status != RefundStatus::Failed {
        if let Some(refused) = reserve(tx, &order, i.amount_fen, i.now).await? {
            return Ok(refused);
        }
    }
    let id: i64 = sqlx::query(
        "INSERT INTO refunds (order_id, merchant, out_trade_no, out_refund_no, amount_fen, status, upstream, refund_id, \
         created_at, updated_at, accepted_at, next_check_at, request_hash) \
         VALUES ($1, $2, $3, $4, $5, 'pending', 'created', $6, $7, $7, $8, $7, 'imported') RETURNING id",
    )
    .bind(order.id)
    .bind(&i.merchant)
    .bind(&i.out_trade_no)
    .bind(&i.out_refund_no)
    .bind(i.amount_fen)
    .bind(&i.refund_id)
    .bind(i.now)
    .bind(i.accepted_at)
    .fetch_one(&mut **tx)
    .await?
    .try_get("id")?;
    add_event(tx, order.id, i.now, "refund_imported", &i.detail).await?;
    if i.status == RefundStatus::Failed {
        // Nothing was reserved for it: mark it failed without releasing anything.
        sqlx::query("UPDATE refunds SET status = 'failed', settled_at = $1, next_check_at = NULL WHERE id = $2")
            .bind(i.now)
            .bind(id)
            .execute(&mut **tx)
            .await?;
    } else if i.status == RefundStatus::Succeeded {
        let settlement = Settlement {
            succeeded: true,
            wechat_refund_id: Some(&i.refund_id),
            settled_at: i.now,
            detail: i.detail.clone(),
            error: None,
        };
        settle_refund(tx, id, &settlement, i.now).await?;
    }
    Ok(RefundCreated::New(refund_by_id(tx, id).await?))
}

/// Claims up to `limit` pending rows of `table` (`orders` or `refunds`: the same
/// `status`/`next_check_at` columns) due for a check, leasing them until `lease_until`.
/// SKIP LOCKED: rows another gateway is claiming right now are left to it.
async fn claim_due(
    pool: &PgPool,
    table: &str,
    columns: &str,
    now: i64,
    lease_until: i64,
    limit: u32,
) -> Result<Vec<PgRow>, StoreError> {
    Ok(sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE {table} SET next_check_at = $2 WHERE id IN ( \
           SELECT id FROM {table} WHERE status = 'pending' AND next_check_at IS NOT NULL AND next_check_at <= $1 \
           ORDER BY next_check_at LIMIT $3 FOR UPDATE SKIP LOCKED) \
         RETURNING {columns}"
    )))
    .bind(now)
    .bind(lease_until)
    .bind(i64::from(limit))
    .fetch_all(pool)
    .await?)
}

/// Sets when a pending row of `table` is checked next (`None`: never), counting the check.
async fn schedule(pool: &PgPool, table: &str, id: i64, at: Option<i64>) -> Result<(), StoreError> {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE {table} SET next_check_at = $1, checks = checks + 1 WHERE id = $2 AND status = 'pending'"
    )))
    .bind(at)
    .bind(id)
    .execute(pool)
    .await?;
    Ok(())
}

/// The columns of `orders` prefixed with a table alias, for statements that join.
fn order_columns_of(alias: &str) -> String {
    ORDER_COLUMNS
        .split(", ")
        .map(|c| format!("{alias}.{c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A payment in one statement (one round trip, one commit): the order's row lock, the
/// verdict, the conditional update, its event, its outbox row and the notification record
/// are data-modifying parts of a single `WITH`, which PostgreSQL runs atomically. A
/// concurrent duplicate waits on the row lock and then sees the order paid; a transaction id
/// taken meanwhile by another order trips the unique index and nothing is written.
fn apply_payment_sql() -> String {
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
fn payment_outcome(
    verdict: &str,
    was: Option<&str>,
    row: Option<&PgRow>,
    got: i64,
) -> Result<PaymentOutcome, StoreError> {
    let order = || -> Result<Order, StoreError> {
        order_row(row.ok_or_else(|| StoreError::Db(format!("a {verdict} payment without its order")))?)
    };
    Ok(match verdict {
        "unknown_order" => PaymentOutcome::UnknownOrder,
        "applied" => {
            let order = order()?;
            if was.is_some_and(|w| w != "pending") {
                tracing::error!(out_trade_no = ?order.out_trade_no, was = ?was, "payment for an order that was not pending");
            }
            PaymentOutcome::Applied(order)
        }
        "duplicate" => PaymentOutcome::AlreadyPaid(order()?),
        "amount_mismatch" => PaymentOutcome::AmountMismatch {
            expected: order()?.amount_fen,
            got,
        },
        "transaction_conflict" => match order()?.transaction_id {
            Some(t) => PaymentOutcome::TransactionConflict(format!("the order is already paid with transaction {t}")),
            None => PaymentOutcome::TransactionConflict("the transaction id belongs to another order".into()),
        },
        other => return Err(StoreError::Db(format!("unexpected payment verdict {other:?}"))),
    })
}

fn empty_record() -> NotificationRecord {
    NotificationRecord {
        received_at: 0,
        kind: String::new(),
        merchant: None,
        out_trade_no: None,
        transaction_id: None,
        verdict: String::new(),
        reason: None,
        body: String::new(),
        peer: None,
        body_sha256: None,
    }
}

/// One payment in one statement.
async fn apply_one(
    pool: &PgPool,
    p: Payment,
    notification: Option<NotificationRecord>,
) -> Result<PaymentOutcome, StoreError> {
    let record = notification.is_some();
    let n = notification.unwrap_or_else(empty_record);
    let row = sqlx::query(sqlx::AssertSqlSafe(apply_payment_sql()))
        .bind(&p.merchant)
        .bind(&p.out_trade_no)
        .bind(p.amount_fen)
        .bind(&p.transaction_id)
        .bind(p.paid_at)
        .bind(p.now)
        .bind(p.source.as_str())
        .bind(event_id())
        .bind(n.received_at)
        .bind(&n.kind)
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
fn spawn_batchers<J, F, R>(pool: &PgPool, run: F) -> mpsc::Sender<J>
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

async fn run_batch(pool: PgPool, jobs: Vec<PaymentJob>) {
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
fn set_based_fits(jobs: &[PaymentJob]) -> bool {
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
async fn apply_batch(
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
fn apply_payments_sql() -> String {
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

async fn call_batch(pool: &PgPool, jobs: &[PaymentJob]) -> Result<Vec<Result<PaymentOutcome, StoreError>>, StoreError> {
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
        out_trade_no.push(p.out_trade_no.clone());
        amount.push(p.amount_fen);
        transaction_id.push(p.transaction_id.clone());
        paid_at.push(p.paid_at);
        now.push(p.now);
        source.push(p.source.as_str().to_owned());
        event.push(event_id());
        record.push(j.notification.is_some());
        let r = j.notification.clone().unwrap_or_else(empty_record);
        received_at.push(r.received_at);
        kind.push(r.kind);
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
        let i = usize::try_from(idx - 1).map_err(|_| StoreError::Db("bad batch index".into()))?;
        let got = jobs.get(i).map_or(0, |j| j.payment.amount_fen);
        let row = (verdict != "unknown_order").then_some(row);
        if let Some(slot) = out.get_mut(i) {
            *slot = Some(payment_outcome(&verdict, was.as_deref(), row, got));
        }
    }
    out.into_iter()
        .map(|o| o.ok_or_else(|| StoreError::Db("a payment missing from its batch".into())))
        .collect()
}

/// One new order in one statement.
async fn create_one(pool: &PgPool, n: NewOrder) -> Result<Created, StoreError> {
    // One statement: the insert (or nothing, when the number is taken) and its
    // `created` event.
    let i_cols = order_columns_of("i");
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
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
    )))
    .bind(&n.merchant)
    .bind(&n.out_trade_no)
    .bind(&n.appid)
    .bind(&n.mch_id)
    .bind(&n.description)
    .bind(n.amount_fen)
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
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {ORDER_COLUMNS} FROM orders WHERE merchant = $1 AND out_trade_no = $2"
    )))
    .bind(&n.merchant)
    .bind(&n.out_trade_no)
    .fetch_one(pool)
    .await?;
    Ok(Created::Existing(order_row(&row)?))
}

/// One prepay id in one statement.
async fn prepay_one(pool: &PgPool, order_id: i64, prepay_id: String, now: i64) -> Result<Order, StoreError> {
    let u_cols = order_columns_of("u");
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "WITH u AS ( \
           UPDATE orders SET prepay_id = $1, prepay_at = $2, upstream = 'created', upstream_error = NULL, updated_at = $2 \
           WHERE id = $3 RETURNING * \
         ), ev AS ( \
           INSERT INTO order_events (order_id, at, kind, detail) \
           SELECT u.id, $2, 'prepay', jsonb_build_object('prepay_id', u.prepay_id)::TEXT FROM u \
         ) \
         SELECT {u_cols} FROM u"
    )))
    .bind(&prepay_id)
    .bind(now)
    .bind(order_id)
    .fetch_one(pool)
    .await?;
    order_row(&row)
}

async fn run_create_batch(pool: PgPool, jobs: Vec<CreateJob>) {
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
async fn create_batch(pool: &PgPool, jobs: &[CreateJob]) -> Result<Vec<Option<Order>>, StoreError> {
    let col = |f: fn(&NewOrder) -> String| jobs.iter().map(|j| f(&j.order)).collect::<Vec<_>>();
    let num = |f: fn(&NewOrder) -> i64| jobs.iter().map(|j| f(&j.order)).collect::<Vec<_>>();
    let out = order_columns_of("n");
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
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
    )))
    .bind(col(|o| o.merchant.clone()))
    .bind(col(|o| o.out_trade_no.clone()))
    .bind(col(|o| o.appid.clone()))
    .bind(col(|o| o.mch_id.clone()))
    .bind(col(|o| o.description.clone()))
    .bind(num(|o| o.amount_fen))
    .bind(col(|o| o.openid.clone()))
    .bind(jobs.iter().map(|j| j.order.attach.clone()).collect::<Vec<_>>())
    .bind(col(|o| o.client_ip.clone()))
    .bind(num(|o| o.now))
    .bind(num(|o| o.expires_at))
    .bind(num(|o| o.first_check_at))
    .bind(col(|o| o.request_hash.clone()))
    .fetch_all(pool)
    .await?;
    if rows.len() != jobs.len() {
        return Err(StoreError::Db("an order batch answered for other orders".into()));
    }
    rows.iter()
        .map(|r| {
            let id: Option<i64> = r.try_get("id")?;
            id.map(|_| order_row(r)).transpose()
        })
        .collect()
}

async fn run_prepay_batch(pool: PgPool, jobs: Vec<PrepayJob>) {
    let mut seen = std::collections::HashSet::new();
    let (mut batch, later): (Vec<PrepayJob>, Vec<PrepayJob>) = jobs.into_iter().partition(|j| seen.insert(j.order_id));
    // Rows locked in id order by every batch.
    batch.sort_by_key(|j| j.order_id);
    if batch.len() > 1 {
        match prepay_batch(&pool, &batch).await {
            Ok(orders) => {
                let mut by_id: std::collections::HashMap<i64, Order> = orders.into_iter().map(|o| (o.id, o)).collect();
                for j in batch {
                    let result = by_id
                        .remove(&j.order_id)
                        .ok_or_else(|| StoreError::Db(format!("no order {} to record a prepay_id for", j.order_id)));
                    let _ = j.reply.send(result);
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
async fn prepay_batch(pool: &PgPool, jobs: &[PrepayJob]) -> Result<Vec<Order>, StoreError> {
    let out = order_columns_of("u");
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
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
    )))
    .bind(jobs.iter().map(|j| j.order_id).collect::<Vec<_>>())
    .bind(jobs.iter().map(|j| j.prepay_id.clone()).collect::<Vec<_>>())
    .bind(jobs.iter().map(|j| j.now).collect::<Vec<_>>())
    .fetch_all(pool)
    .await?;
    rows.iter().map(order_row).collect()
}

impl PgStore {
    /// Connects, applies the migrations (one gateway at a time), and returns the store.
    ///
    /// # Errors
    /// When the database cannot be reached or the schema cannot be brought up to date.
    pub async fn connect(url: &str, max_connections: u32) -> Result<PgStore, StoreError> {
        let options = first_connection(url).await?;
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(2))
            .acquire_timeout(std::time::Duration::from_secs(10))
            // The statements are few, prepared once per connection, and their plans do not
            // depend on the values: planning each execution anew cost more than running it.
            .after_connect(|conn, _| {
                Box::pin(async move {
                    conn.execute("SET plan_cache_mode = force_generic_plan").await?;
                    Ok(())
                })
            })
            .connect_with(options)
            .await?;
        migrate(&pool).await?;
        let payments = spawn_batchers(&pool, run_batch);
        let creates = spawn_batchers(&pool, run_create_batch);
        let prepays = spawn_batchers(&pool, run_prepay_batch);
        Ok(PgStore {
            pool,
            payments,
            creates,
            prepays,
        })
    }

    /// Applies the migrations and returns (for `wxpay migrate`).
    ///
    /// # Errors
    /// As [`PgStore::connect`].
    pub async fn migrate_only(url: &str) -> Result<(), StoreError> {
        let options = first_connection(url).await?;
        let pool = PgPoolOptions::new().max_connections(1).connect_with(options).await?;
        migrate(&pool).await?;
        pool.close().await;
        Ok(())
    }

    async fn begin(&self) -> Result<Tx, StoreError> {
        Ok(self.pool.begin().await?)
    }
}

/// How long the first connection may take before the server is declared unreachable.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Reads the URL and makes one connection, so that a wrong host, port, password or database
/// is named at once ("cannot connect to PostgreSQL at 127.0.0.1:5433: connection refused"),
/// rather than after the pool's acquire timeout as "pool timed out".
async fn first_connection(url: &str) -> Result<PgConnectOptions, StoreError> {
    let options: PgConnectOptions = url
        .parse()
        .map_err(|e| StoreError::Url(format!("not a PostgreSQL URL: {}", super::describe_sqlx(&e))))?;
    let at = match options.get_socket() {
        Some(socket) => socket.display().to_string(),
        None => format!("{}:{}", options.get_host(), options.get_port()),
    };
    let connect = options.connect();
    let cause = match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
        Ok(Ok(conn)) => {
            let _ = conn.close().await;
            return Ok(options);
        }
        Ok(Err(e)) => super::describe_sqlx(&e),
        Err(_) => format!("no answer within {} s", CONNECT_TIMEOUT.as_secs()),
    };
    Err(StoreError::Connect(format!(
        "cannot connect to PostgreSQL at {at}: {cause}"
    )))
}

async fn migrate(pool: &PgPool) -> Result<(), StoreError> {
    let mut conn = pool.acquire().await?;
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(MIGRATION_LOCK)
        .execute(&mut *conn)
        .await?;
    let result = async {
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
        )
        .await?;
        let newest: i64 = sqlx::query("SELECT COALESCE(MAX(version), 0) AS v FROM schema_migrations")
            .fetch_one(&mut *conn)
            .await?
            .try_get("v")?;
        let known = MIGRATIONS.last().map_or(0, |m| m.0);
        if newest > known {
            return Err(StoreError::Schema(format!(
                "the database is at version {newest}, this program knows up to {known}: use a newer wxpay"
            )));
        }
        for (version, sql) in MIGRATIONS {
            if *version <= newest {
                continue;
            }
            let mut tx = sqlx::Connection::begin(&mut *conn).await?;
            tx.execute(*sql)
                .await
                .map_err(|e| StoreError::Schema(format!("migration {version}: {e}")))?;
            sqlx::query("INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)")
                .bind(version)
                .bind(crate::time::now_ms())
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            tracing::info!(version, "applied PostgreSQL migration");
        }
        Ok(())
    }
    .await;
    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(MIGRATION_LOCK)
        .execute(&mut *conn)
        .await?;
    result
}

impl Store for PgStore {
    fn engine(&self) -> &'static str {
        "postgres"
    }

    fn ping(&self) -> Fut<'_, ()> {
        Box::pin(async move {
            sqlx::query("SELECT 1").execute(&self.pool).await?;
            Ok(())
        })
    }

    fn create_order(&self, n: NewOrder) -> Fut<'_, Created> {
        Box::pin(async move {
            let (reply, answer) = oneshot::channel();
            if let Err(mpsc::error::SendError(job)) = self.creates.send(CreateJob { order: n, reply }).await {
                return create_one(&self.pool, job.order).await;
            }
            answer
                .await
                .map_err(|_| StoreError::Db("the order batcher stopped".into()))?
        })
    }

    fn set_prepay(&self, order_id: i64, prepay_id: String, now: i64) -> Fut<'_, Order> {
        Box::pin(async move {
            let (reply, answer) = oneshot::channel();
            let job = PrepayJob {
                order_id,
                prepay_id,
                now,
                reply,
            };
            if let Err(mpsc::error::SendError(job)) = self.prepays.send(job).await {
                return prepay_one(&self.pool, job.order_id, job.prepay_id, job.now).await;
            }
            answer
                .await
                .map_err(|_| StoreError::Db("the prepay batcher stopped".into()))?
        })
    }

    fn set_upstream_failure(&self, order_id: i64, rejected: bool, error: String, now: i64) -> Fut<'_, Order> {
        Box::pin(async move {
            let mut tx = self.begin().await?;
            let upstream = if rejected { "rejected" } else { "unknown" };
            sqlx::query("UPDATE orders SET upstream = $1, upstream_error = $2, updated_at = $3 WHERE id = $4 AND upstream != 'created'")
                .bind(upstream)
                .bind(&error)
                .bind(now)
                .bind(order_id)
                .execute(&mut *tx)
                .await?;
            let detail = serde_json::json!({ "reason": error });
            if rejected {
                if transition(
                    &mut tx,
                    order_id,
                    OrderStatus::Failed,
                    "failed",
                    detail.clone(),
                    None,
                    now,
                )
                .await?
                .is_none()
                {
                    add_event(&mut tx, order_id, now, "upstream_rejected", &detail).await?;
                }
            } else {
                add_event(&mut tx, order_id, now, "upstream_unknown", &detail).await?;
            }
            let order = order_by_id(&mut tx, order_id).await?;
            tx.commit().await?;
            Ok(order)
        })
    }

    fn order(&self, merchant: String, out_trade_no: String) -> Fut<'_, Option<Order>> {
        Box::pin(async move {
            let row = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {ORDER_COLUMNS} FROM orders WHERE merchant = $1 AND out_trade_no = $2"
            )))
            .bind(merchant)
            .bind(out_trade_no)
            .fetch_optional(&self.pool)
            .await?;
            row.as_ref().map(order_row).transpose()
        })
    }

    fn events(&self, order_id: i64) -> Fut<'_, Vec<Event>> {
        Box::pin(async move {
            let rows = sqlx::query("SELECT at, kind, detail FROM order_events WHERE order_id = $1 ORDER BY id")
                .bind(order_id)
                .fetch_all(&self.pool)
                .await?;
            rows.iter()
                .map(|r| {
                    let detail: String = r.try_get("detail")?;
                    Ok(Event {
                        at: r.try_get("at")?,
                        kind: r.try_get("kind")?,
                        detail: serde_json::from_str(&detail).unwrap_or(serde_json::Value::Null),
                    })
                })
                .collect()
        })
    }

    fn list_orders(&self, status: Option<OrderStatus>, limit: u32, before: Option<i64>) -> Fut<'_, Vec<Order>> {
        Box::pin(async move {
            let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {ORDER_COLUMNS} FROM orders WHERE ($1::TEXT IS NULL OR status = $1) AND ($2::BIGINT IS NULL OR id < $2) \
                 ORDER BY id DESC LIMIT $3"
            )))
            .bind(status.map(OrderStatus::as_str))
            .bind(before)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
            rows.iter().map(order_row).collect()
        })
    }

    fn apply_payment(&self, p: Payment, notification: Option<NotificationRecord>) -> Fut<'_, PaymentOutcome> {
        Box::pin(async move {
            let (reply, answer) = oneshot::channel();
            let job = PaymentJob {
                payment: p,
                notification,
                reply,
            };
            if let Err(mpsc::error::SendError(job)) = self.payments.send(job).await {
                // The batchers are gone (the runtime is shutting down): apply it here.
                return apply_one(&self.pool, job.payment, job.notification).await;
            }
            answer
                .await
                .map_err(|_| StoreError::Db("the payment batcher stopped".into()))?
        })
    }

    fn close_order(&self, order_id: i64, reason: String, now: i64) -> Fut<'_, Option<Order>> {
        Box::pin(async move {
            let mut tx = self.begin().await?;
            let detail = serde_json::json!({ "reason": reason });
            let out = transition(
                &mut tx,
                order_id,
                OrderStatus::Closed,
                "closed",
                detail,
                Some("order.closed"),
                now,
            )
            .await?;
            tx.commit().await?;
            Ok(out)
        })
    }

    fn fail_order(&self, order_id: i64, reason: String, now: i64) -> Fut<'_, Option<Order>> {
        Box::pin(async move {
            let mut tx = self.begin().await?;
            let detail = serde_json::json!({ "reason": reason });
            let out = transition(&mut tx, order_id, OrderStatus::Failed, "failed", detail, None, now).await?;
            tx.commit().await?;
            Ok(out)
        })
    }

    fn add_event(&self, order_id: i64, kind: String, detail: serde_json::Value, now: i64) -> Fut<'_, ()> {
        Box::pin(async move {
            let mut tx = self.begin().await?;
            add_event(&mut tx, order_id, now, &kind, &detail).await?;
            tx.commit().await?;
            Ok(())
        })
    }

    fn record_notifications(&self, records: Vec<NotificationRecord>) -> Fut<'_, ()> {
        Box::pin(async move {
            let mut tx = self.begin().await?;
            for r in &records {
                insert_notification(&mut tx, r).await?;
            }
            tx.commit().await?;
            Ok(())
        })
    }

    fn idem_claim(&self, k: IdemKey, request_hash: String, now: i64, lease_ms: i64) -> Fut<'_, IdemClaim> {
        Box::pin(async move {
            let inserted = sqlx::query(
                "INSERT INTO idempotency_keys (scope, key, request_hash, created_at, claimed_at, owner) \
                 VALUES ($1, $2, $3, $4, $4, $5) ON CONFLICT (scope, key) DO NOTHING",
            )
            .bind(&k.scope)
            .bind(&k.key)
            .bind(&request_hash)
            .bind(now)
            .bind(&k.owner)
            .execute(&self.pool)
            .await?
            .rows_affected();
            if inserted == 1 {
                return Ok(IdemClaim::Claimed { created_at: now });
            }
            // The request that holds the key stopped renewing it: this one, identical, takes
            // it over. The row lock makes one of several takers win.
            let taken: Option<i64> = sqlx::query_scalar(
                "UPDATE idempotency_keys SET claimed_at = $4, owner = $5 WHERE scope = $1 AND key = $2 \
                 AND request_hash = $3 AND status IS NULL AND COALESCE(claimed_at, created_at) <= $6 \
                 RETURNING created_at",
            )
            .bind(&k.scope)
            .bind(&k.key)
            .bind(&request_hash)
            .bind(now)
            .bind(&k.owner)
            .bind(now - lease_ms)
            .fetch_optional(&self.pool)
            .await?;
            if let Some(created_at) = taken {
                return Ok(IdemClaim::Claimed { created_at });
            }
            let row = sqlx::query(
                "SELECT request_hash, status, response FROM idempotency_keys WHERE scope = $1 AND key = $2",
            )
            .bind(&k.scope)
            .bind(&k.key)
            .fetch_one(&self.pool)
            .await?;
            let status: Option<i32> = row.try_get("status")?;
            Ok(super::idem_state(
                row.try_get("request_hash")?,
                status.map(i64::from),
                row.try_get("response")?,
            ))
        })
    }

    fn idem_renew(&self, k: IdemKey, now: i64) -> Fut<'_, bool> {
        Box::pin(async move {
            let n = sqlx::query(
                "UPDATE idempotency_keys SET claimed_at = $1 WHERE scope = $2 AND key = $3 AND owner = $4 \
                 AND status IS NULL",
            )
            .bind(now)
            .bind(k.scope)
            .bind(k.key)
            .bind(k.owner)
            .execute(&self.pool)
            .await?
            .rows_affected();
            Ok(n == 1)
        })
    }

    fn idem_finish(&self, k: IdemKey, status: u16, response: String) -> Fut<'_, bool> {
        Box::pin(async move {
            let n = sqlx::query(
                "UPDATE idempotency_keys SET status = $1, response = $2 WHERE scope = $3 AND key = $4 \
                 AND owner = $5 AND status IS NULL",
            )
            .bind(i32::from(status))
            .bind(response)
            .bind(k.scope)
            .bind(k.key)
            .bind(k.owner)
            .execute(&self.pool)
            .await?
            .rows_affected();
            Ok(n == 1)
        })
    }

    fn idem_release(&self, k: IdemKey) -> Fut<'_, ()> {
        Box::pin(async move {
            sqlx::query("DELETE FROM idempotency_keys WHERE scope = $1 AND key = $2 AND owner = $3 AND status IS NULL")
                .bind(k.scope)
                .bind(k.key)
                .bind(k.owner)
                .execute(&self.pool)
                .await?;
            Ok(())
        })
    }

    fn idem_purge(&self, created_before: i64, limit: u32) -> Fut<'_, u64> {
        Box::pin(async move {
            let n = sqlx::query(
                "DELETE FROM idempotency_keys WHERE ctid IN \
                 (SELECT ctid FROM idempotency_keys WHERE created_at < $1 LIMIT $2)",
            )
            .bind(created_before)
            .bind(i64::from(limit))
            .execute(&self.pool)
            .await?
            .rows_affected();
            Ok(n)
        })
    }

    fn claim_checks(&self, now: i64, lease_until: i64, limit: u32) -> Fut<'_, Vec<Order>> {
        Box::pin(async move {
            let rows = claim_due(&self.pool, "orders", ORDER_COLUMNS, now, lease_until, limit).await?;
            rows.iter().map(order_row).collect()
        })
    }

    fn schedule_check(&self, order_id: i64, at: Option<i64>) -> Fut<'_, ()> {
        Box::pin(schedule(&self.pool, "orders", order_id, at))
    }

    fn claim_outbox(&self, now: i64, lease_until: i64, limit: u32) -> Fut<'_, Vec<OutboxEvent>> {
        Box::pin(async move {
            // `attempts` counts claims; the event carries the attempts made before this one,
            // as on SQLite.
            let rows = sqlx::query(
                "UPDATE outbox SET next_attempt_at = $2, attempts = attempts + 1 WHERE id IN ( \
                   SELECT id FROM outbox WHERE delivered_at IS NULL AND next_attempt_at <= $1 \
                   ORDER BY next_attempt_at LIMIT $3 FOR UPDATE SKIP LOCKED) \
                 RETURNING id, type, payload, created_at, attempts - 1 AS attempts",
            )
            .bind(now)
            .bind(lease_until)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
            rows.iter()
                .map(|r| {
                    let attempts: i32 = r.try_get("attempts")?;
                    Ok(OutboxEvent {
                        id: r.try_get("id")?,
                        event_type: r.try_get("type")?,
                        payload: r.try_get("payload")?,
                        created_at: r.try_get("created_at")?,
                        attempts: i64::from(attempts),
                    })
                })
                .collect()
        })
    }

    fn outbox_delivered(&self, id: String, now: i64) -> Fut<'_, ()> {
        Box::pin(async move {
            sqlx::query("UPDATE outbox SET delivered_at = $1, last_error = NULL WHERE id = $2")
                .bind(now)
                .bind(id)
                .execute(&self.pool)
                .await?;
            Ok(())
        })
    }

    fn outbox_retry(&self, id: String, next_at: i64, error: String) -> Fut<'_, ()> {
        Box::pin(async move {
            sqlx::query(
                "UPDATE outbox SET next_attempt_at = $1, last_error = $2 WHERE id = $3 AND delivered_at IS NULL",
            )
            .bind(next_at)
            .bind(error)
            .bind(id)
            .execute(&self.pool)
            .await?;
            Ok(())
        })
    }

    fn create_refund(&self, new: NewRefund) -> Fut<'_, RefundCreated> {
        Box::pin(async move {
            let mut tx = self.begin().await?;
            let out = create_refund(&mut tx, &new).await?;
            tx.commit().await?;
            Ok(out)
        })
    }

    fn refund(&self, merchant: String, out_refund_no: String) -> Fut<'_, Option<Refund>> {
        Box::pin(async move {
            let row = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {REFUND_COLUMNS} FROM refunds WHERE merchant = $1 AND out_refund_no = $2"
            )))
            .bind(merchant)
            .bind(out_refund_no)
            .fetch_optional(&self.pool)
            .await?;
            row.as_ref().map(refund_row).transpose()
        })
    }

    fn refunds_of(&self, order_id: i64) -> Fut<'_, Vec<Refund>> {
        Box::pin(async move {
            let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {REFUND_COLUMNS} FROM refunds WHERE order_id = $1 ORDER BY id"
            )))
            .bind(order_id)
            .fetch_all(&self.pool)
            .await?;
            rows.iter().map(refund_row).collect()
        })
    }

    fn refund_accepted(
        &self,
        refund_id: i64,
        wechat_refund_id: String,
        now: i64,
        next_check_at: i64,
    ) -> Fut<'_, Refund> {
        Box::pin(async move {
            let mut tx = self.begin().await?;
            // The order's lock first, as every refund change takes it: the history row below
            // takes a key-share lock on the order (its foreign key), and a notification
            // settling this refund holds the order while it waits for the refund's row.
            lock_order_of_refund(&mut tx, refund_id).await?;
            let changed = sqlx::query(
                "UPDATE refunds SET upstream = 'created', refund_id = COALESCE(refund_id, $1), \
                 accepted_at = COALESCE(accepted_at, $2), upstream_error = NULL, updated_at = $2, \
                 next_check_at = CASE WHEN status = 'pending' THEN $3 ELSE next_check_at END \
                 WHERE id = $4 AND upstream != 'created'",
            )
            .bind(&wechat_refund_id)
            .bind(now)
            .bind(next_check_at)
            .bind(refund_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            let refund = refund_by_id(&mut tx, refund_id).await?;
            if changed == 1 && refund.status == RefundStatus::Failed {
                tracing::error!(out_refund_no = ?refund.out_refund_no, "WeChat Pay accepted a refund recorded as failed: reconcile it");
            }
            if changed == 1 {
                let detail =
                    serde_json::json!({ "out_refund_no": refund.out_refund_no, "refund_id": wechat_refund_id });
                add_event(&mut tx, refund.order_id, now, "refund_accepted", &detail).await?;
            }
            tx.commit().await?;
            Ok(refund)
        })
    }

    fn refund_upstream_failure(
        &self,
        refund_id: i64,
        rejected: bool,
        error: String,
        now: i64,
        next_check_at: i64,
    ) -> Fut<'_, Refund> {
        Box::pin(async move {
            let mut tx = self.begin().await?;
            lock_order_of_refund(&mut tx, refund_id).await?;
            let refund = refund_by_id(&mut tx, refund_id).await?;
            let detail = serde_json::json!({ "out_refund_no": refund.out_refund_no, "reason": error });
            if rejected {
                // Only a refund WeChat Pay never accepted can fail by a refusal.
                let changed = sqlx::query(
                    "UPDATE refunds SET upstream = 'rejected' WHERE id = $1 AND upstream != 'created' AND status = 'pending'",
                )
                .bind(refund_id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if changed == 0 {
                    tx.commit().await?;
                    return Ok(refund);
                }
                let settlement = Settlement {
                    succeeded: false,
                    wechat_refund_id: None,
                    settled_at: now,
                    detail,
                    error: Some(&error),
                };
                settle_refund(&mut tx, refund_id, &settlement, now).await?;
            } else {
                let changed = sqlx::query(
                    "UPDATE refunds SET upstream = 'unknown', upstream_error = $1, updated_at = $2, next_check_at = $3 \
                     WHERE id = $4 AND upstream != 'created' AND status = 'pending'",
                )
                .bind(&error)
                .bind(now)
                .bind(next_check_at)
                .bind(refund_id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if changed == 1 {
                    add_event(&mut tx, refund.order_id, now, "refund_upstream_unknown", &detail).await?;
                }
            }
            let refund = refund_by_id(&mut tx, refund_id).await?;
            tx.commit().await?;
            Ok(refund)
        })
    }

    fn apply_refund(&self, result: RefundResult, notification: Option<NotificationRecord>) -> Fut<'_, RefundOutcome> {
        Box::pin(async move {
            let mut tx = self.begin().await?;
            let outcome = apply_refund(&mut tx, &result).await?;
            if let Some(mut n) = notification {
                n.verdict = outcome.verdict().to_owned();
                insert_notification(&mut tx, &n).await?;
            }
            tx.commit().await?;
            Ok(outcome)
        })
    }

    fn claim_refund_checks(&self, now: i64, lease_until: i64, limit: u32) -> Fut<'_, Vec<Refund>> {
        Box::pin(async move {
            let rows = claim_due(&self.pool, "refunds", REFUND_COLUMNS, now, lease_until, limit).await?;
            rows.iter().map(refund_row).collect()
        })
    }

    fn schedule_refund_check(&self, refund_id: i64, at: Option<i64>) -> Fut<'_, ()> {
        Box::pin(schedule(&self.pool, "refunds", refund_id, at))
    }

    fn orders_paid_between(&self, merchant: String, from: i64, to: i64) -> Fut<'_, Vec<Order>> {
        Box::pin(async move {
            let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {ORDER_COLUMNS} FROM orders WHERE merchant = $1 AND paid_at >= $2 AND paid_at < $3 \
                 AND status IN ('paid', 'refunded')"
            )))
            .bind(merchant)
            .bind(from)
            .bind(to)
            .fetch_all(&self.pool)
            .await?;
            rows.iter().map(order_row).collect()
        })
    }

    fn orders_by_numbers(&self, merchant: String, numbers: Vec<String>) -> Fut<'_, Vec<Order>> {
        Box::pin(async move {
            let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {ORDER_COLUMNS} FROM orders WHERE merchant = $1 AND out_trade_no = ANY($2)"
            )))
            .bind(merchant)
            .bind(numbers)
            .fetch_all(&self.pool)
            .await?;
            rows.iter().map(order_row).collect()
        })
    }

    fn refunds_accepted_between(&self, merchant: String, from: i64, to: i64) -> Fut<'_, Vec<Refund>> {
        Box::pin(async move {
            let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {REFUND_COLUMNS} FROM refunds WHERE merchant = $1 AND accepted_at >= $2 AND accepted_at < $3"
            )))
            .bind(merchant)
            .bind(from)
            .bind(to)
            .fetch_all(&self.pool)
            .await?;
            rows.iter().map(refund_row).collect()
        })
    }

    fn refunds_by_numbers(&self, merchant: String, numbers: Vec<String>) -> Fut<'_, Vec<Refund>> {
        Box::pin(async move {
            let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {REFUND_COLUMNS} FROM refunds WHERE merchant = $1 AND out_refund_no = ANY($2)"
            )))
            .bind(merchant)
            .bind(numbers)
            .fetch_all(&self.pool)
            .await?;
            rows.iter().map(refund_row).collect()
        })
    }

    fn correct_amount(
        &self,
        order_id: i64,
        amount_fen: i64,
        detail: serde_json::Value,
        now: i64,
    ) -> Fut<'_, Option<Order>> {
        Box::pin(async move {
            let mut tx = self.begin().await?;
            let changed = sqlx::query(
                "UPDATE orders SET amount_fen = $1, updated_at = $2, \
                 status = CASE WHEN refunded_fen = $1 THEN 'refunded' ELSE 'paid' END \
                 WHERE id = $3 AND status IN ('paid', 'refunded') AND refund_reserved_fen <= $1 \
                 AND NOT EXISTS (SELECT 1 FROM refunds WHERE order_id = $3 AND status = 'pending' AND upstream != 'created')",
            )
            .bind(amount_fen)
            .bind(now)
            .bind(order_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if changed == 0 {
                return Ok(None);
            }
            add_event(&mut tx, order_id, now, "reconciled", &detail).await?;
            let order = order_by_id(&mut tx, order_id).await?;
            tx.commit().await?;
            Ok(Some(order))
        })
    }

    fn move_refund_accepted_at(
        &self,
        refund_id: i64,
        accepted_at: i64,
        detail: serde_json::Value,
        now: i64,
    ) -> Fut<'_, ()> {
        Box::pin(async move {
            let mut tx = self.begin().await?;
            lock_order_of_refund(&mut tx, refund_id).await?;
            let refund = refund_by_id(&mut tx, refund_id).await?;
            sqlx::query("UPDATE refunds SET accepted_at = $1, updated_at = $2 WHERE id = $3")
                .bind(accepted_at)
                .bind(now)
                .bind(refund_id)
                .execute(&mut *tx)
                .await?;
            add_event(&mut tx, refund.order_id, now, "reconciled", &detail).await?;
            tx.commit().await?;
            Ok(())
        })
    }

    fn import_refund(&self, refund: ImportedRefund) -> Fut<'_, RefundCreated> {
        Box::pin(async move {
            let mut tx = self.begin().await?;
            let out = import_refund(&mut tx, &refund).await?;
            tx.commit().await?;
            Ok(out)
        })
    }

    fn claim_daily_reconciliation(&self, merchant: String, bill_date: String, now: i64) -> Fut<'_, DailyClaim> {
        Box::pin(async move {
            let inserted = sqlx::query(
                "INSERT INTO reconciliations (merchant, bill_date, kind, started_at) VALUES ($1, $2, 'daily', $3) \
                 ON CONFLICT DO NOTHING",
            )
            .bind(&merchant)
            .bind(&bill_date)
            .bind(now)
            .execute(&self.pool)
            .await?
            .rows_affected();
            if inserted == 1 {
                return Ok(DailyClaim::Claimed);
            }
            // A run that started an hour ago and never finished died with its gateway.
            let taken = sqlx::query(
                "UPDATE reconciliations SET started_at = $3 WHERE merchant = $1 AND bill_date = $2 AND kind = 'daily' \
                 AND finished_at IS NULL AND started_at < $3 - 3600000",
            )
            .bind(&merchant)
            .bind(&bill_date)
            .bind(now)
            .execute(&self.pool)
            .await?
            .rows_affected();
            if taken == 1 {
                return Ok(DailyClaim::Claimed);
            }
            let finished: bool = sqlx::query(
                "SELECT finished_at IS NOT NULL AS f FROM reconciliations WHERE merchant = $1 AND bill_date = $2 AND kind = 'daily'",
            )
            .bind(&merchant)
            .bind(&bill_date)
            .fetch_one(&self.pool)
            .await?
            .try_get("f")?;
            Ok(if finished {
                DailyClaim::Done
            } else {
                DailyClaim::Running
            })
        })
    }

    fn record_reconciliation(&self, r: ReconciliationRecord) -> Fut<'_, ()> {
        Box::pin(async move {
            let balanced = i32::from(r.balanced);
            let updated = if r.kind == "daily" {
                sqlx::query(
                    "UPDATE reconciliations SET started_at = $3, finished_at = $4, balanced = $5, differences = $6, \
                     repaired = $7, report = $8 WHERE merchant = $1 AND bill_date = $2 AND kind = 'daily'",
                )
                .bind(&r.merchant)
                .bind(&r.bill_date)
                .bind(r.started_at)
                .bind(r.finished_at)
                .bind(balanced)
                .bind(r.differences as i32)
                .bind(r.repaired as i32)
                .bind(&r.report)
                .execute(&self.pool)
                .await?
                .rows_affected()
            } else {
                0
            };
            if updated == 0 {
                sqlx::query(
                    "INSERT INTO reconciliations (merchant, bill_date, kind, started_at, finished_at, balanced, differences, \
                     repaired, report) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                )
                .bind(&r.merchant)
                .bind(&r.bill_date)
                .bind(&r.kind)
                .bind(r.started_at)
                .bind(r.finished_at)
                .bind(balanced)
                .bind(r.differences as i32)
                .bind(r.repaired as i32)
                .bind(&r.report)
                .execute(&self.pool)
                .await?;
            }
            Ok(())
        })
    }

    fn stats(&self, now: i64) -> Fut<'_, Stats> {
        Box::pin(async move {
            let rows = sqlx::query("SELECT status, COUNT(*) AS n FROM orders GROUP BY status")
                .fetch_all(&self.pool)
                .await?;
            let orders_by_status = rows
                .iter()
                .map(|r| Ok((r.try_get::<String, _>("status")?, r.try_get::<i64, _>("n")?)))
                .collect::<Result<Vec<_>, StoreError>>()?;
            let row =
                sqlx::query("SELECT COUNT(*) AS n, MIN(created_at) AS oldest FROM outbox WHERE delivered_at IS NULL")
                    .fetch_one(&self.pool)
                    .await?;
            let oldest: Option<i64> = row.try_get("oldest")?;
            let rows = sqlx::query("SELECT status, COUNT(*) AS n FROM refunds GROUP BY status")
                .fetch_all(&self.pool)
                .await?;
            let refunds_by_status = rows
                .iter()
                .map(|r| Ok((r.try_get::<String, _>("status")?, r.try_get::<i64, _>("n")?)))
                .collect::<Result<Vec<_>, StoreError>>()?;
            Ok(Stats {
                orders_by_status,
                refunds_by_status,
                outbox_backlog: row.try_get("n")?,
                outbox_oldest_age_ms: oldest.map(|o| now - o),
            })
        })
    }
}

/// The set-based payment statements against the rules: random stored orders and random
/// batches of payments (duplicates, wrong amounts, unknown orders, transaction ids of other
/// orders) must give, through the batch statement and through the single statement alike,
/// the verdicts and the final rows of [`rules::payment_verdict`] applied payment by payment.
/// Skipped without `DATABASE_URL` (a failure with `WXPAY_REQUIRE_POSTGRES=1`, as in CI).
#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use proptest::prelude::*;

    use super::*;
    use crate::store::rules::{OrderFacts, PaymentVerdict, payment_verdict};

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
                let txid =
                    prop_oneof![2 => (0..2usize).prop_map(|j| (false, j)), 1 => (0..3usize).prop_map(|k| (true, k))];
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
                source: super::super::Source::Notification,
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
}
