//! The building blocks of transactions: reading and locking rows, writing an order's
//! history, its outbox rows and notification records, conditional transitions, and claiming
//! due work with `FOR UPDATE SKIP LOCKED`.

use sqlx::postgres::{PgPool, PgRow};
use sqlx::{Postgres, Row, Transaction};

use super::rows::{ORDER_COLUMNS, REFUND_COLUMNS, order_row, refund_row};
use crate::store::{
    NotificationRecord, Order, OrderStatus, Refund, StoreError, Verdict, event_id, event_payload, refund_event_payload,
};
use crate::time::Millis;

pub(super) type Tx = Transaction<'static, Postgres>;

pub(super) async fn order_by_id(tx: &mut Tx, id: i64) -> Result<Order, StoreError> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {ORDER_COLUMNS} FROM orders WHERE id = $1"
    )))
    .bind(id)
    .fetch_one(&mut **tx)
    .await?;
    order_row(&row)
}

pub(super) async fn add_event(
    tx: &mut Tx,
    order_id: i64,
    at: Millis,
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

pub(super) async fn add_outbox(tx: &mut Tx, order: &Order, event_type: &str, now: Millis) -> Result<(), StoreError> {
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

pub(super) async fn insert_notification(tx: &mut Tx, n: &NotificationRecord) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO notifications (received_at, kind, merchant, out_trade_no, transaction_id, verdict, reason, body, \
         peer, body_sha256) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(n.received_at)
    .bind(n.kind.as_str())
    .bind(&n.merchant)
    .bind(&n.out_trade_no)
    .bind(&n.transaction_id)
    .bind(n.verdict.map(Verdict::as_str))
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
pub(super) async fn transition(
    tx: &mut Tx,
    order_id: i64,
    to: OrderStatus,
    kind: &str,
    detail: serde_json::Value,
    event_type: Option<&str>,
    now: Millis,
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

pub(super) async fn refund_by_id(tx: &mut Tx, id: i64) -> Result<Refund, StoreError> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {REFUND_COLUMNS} FROM refunds WHERE id = $1"
    )))
    .bind(id)
    .fetch_one(&mut **tx)
    .await?;
    refund_row(&row)
}

/// A refund by number; `lock` takes its row lock (after its order's: see `lock_order`).
pub(super) async fn refund_by_number(
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
pub(super) async fn lock_order(tx: &mut Tx, merchant: &str, out_trade_no: &str) -> Result<Option<Order>, StoreError> {
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
pub(super) async fn lock_order_of_refund(tx: &mut Tx, refund_id: i64) -> Result<(), StoreError> {
    sqlx::query("SELECT o.id FROM orders o JOIN refunds r ON r.order_id = o.id WHERE r.id = $1 FOR UPDATE OF o")
        .bind(refund_id)
        .fetch_optional(&mut **tx)
        .await?;
    Ok(())
}

pub(super) async fn add_refund_outbox(
    tx: &mut Tx,
    refund: &Refund,
    order: &Order,
    event_type: &str,
    now: Millis,
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

/// Claims up to `limit` pending rows of `table` (`orders` or `refunds`: the same
/// `status`/`next_check_at` columns) due for a check, leasing them until `lease_until`.
/// SKIP LOCKED: rows another gateway is claiming right now are left to it.
/// Claims up to `$3` pending rows of `table` due at `$1` for a check, leasing them until `$2`.
/// The claimed ids are gathered into an array first: with `id IN (subquery)` the generic plan
/// estimated a tenth of the table for an unknown `LIMIT` and joined the whole primary key
/// index against it at a million rows; `id = ANY(array)` is always a keyed lookup.
pub(super) fn claim_due_sql(table: &str, columns: &str) -> String {
    format!(
        "UPDATE {table} SET next_check_at = $2 WHERE id = ANY(ARRAY( \
           SELECT id FROM {table} WHERE status = 'pending' AND next_check_at IS NOT NULL AND next_check_at <= $1 \
           ORDER BY next_check_at LIMIT $3 FOR UPDATE SKIP LOCKED)) \
         RETURNING {columns}"
    )
}

pub(super) async fn claim_due(
    pool: &PgPool,
    table: &str,
    columns: &str,
    now: Millis,
    lease_until: Millis,
    limit: u32,
) -> Result<Vec<PgRow>, StoreError> {
    Ok(sqlx::query(sqlx::AssertSqlSafe(claim_due_sql(table, columns)))
        .bind(now)
        .bind(lease_until)
        .bind(i64::from(limit))
        .fetch_all(pool)
        .await?)
}

/// The claimed rows read as records. A damaged row would fail every claim, and the checks of
/// every other row with it: it is taken out of the checks (`next_check_at` cleared), and said
/// so.
pub(super) async fn claimed<T>(
    pool: &PgPool,
    table: &str,
    rows: &[PgRow],
    read: fn(&PgRow) -> Result<T, StoreError>,
) -> Result<Vec<T>, StoreError> {
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        match read(row) {
            Ok(v) => out.push(v),
            Err(StoreError::Damaged(d)) => {
                let id: i64 = row.try_get("id")?;
                tracing::error!(table, id, error = %d, "a damaged row is taken out of the checks");
                schedule(pool, table, id, None).await?;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// Sets when a pending row of `table` is checked next (`None`: never), counting the check.
pub(super) async fn schedule(pool: &PgPool, table: &str, id: i64, at: Option<Millis>) -> Result<(), StoreError> {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE {table} SET next_check_at = $1, checks = checks + 1 WHERE id = $2 AND status = 'pending'"
    )))
    .bind(at)
    .bind(id)
    .execute(pool)
    .await?;
    Ok(())
}
