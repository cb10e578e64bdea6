//! The PostgreSQL engine: a pool, one transaction per state change, and background work
//! claimed with `FOR UPDATE SKIP LOCKED` so that several gateways can share one database
//! without doing the same job twice.
//!
//! Read Committed is enough: state changes are conditional updates (`WHERE status =
//! 'pending'`) that PostgreSQL re-evaluates on the latest row version when two transactions
//! race, and a payment takes the order's row lock (`FOR UPDATE`) before it decides.

use sqlx::postgres::{PgPool, PgPoolOptions, PgRow};
use sqlx::{Executor, Postgres, Row, Transaction};

use super::{
    Created, Event, Fut, IdemClaim, NewOrder, NotificationRecord, Order, OrderStatus, OutboxEvent, Payment,
    PaymentOutcome, Stats, Store, StoreError, Upstream, event_id, event_payload,
};

const MIGRATIONS: &[(i64, &str)] = &[(1, include_str!("../../migrations/postgres/0001_init.sql"))];
/// The advisory lock that serialises migrations of several gateways starting together.
const MIGRATION_LOCK: i64 = 0x7778_7061_7900;

/// The PostgreSQL store.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
}

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
        "INSERT INTO notifications (received_at, kind, merchant, out_trade_no, transaction_id, verdict, reason, body) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(n.received_at)
    .bind(&n.kind)
    .bind(&n.merchant)
    .bind(&n.out_trade_no)
    .bind(&n.transaction_id)
    .bind(&n.verdict)
    .bind(&n.reason)
    .bind(&n.body)
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

async fn apply_payment(tx: &mut Tx, p: &Payment) -> Result<PaymentOutcome, StoreError> {
    // The row lock serialises concurrent notifications and queries for this order.
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {ORDER_COLUMNS} FROM orders WHERE merchant = $1 AND out_trade_no = $2 FOR UPDATE"
    )))
    .bind(&p.merchant)
    .bind(&p.out_trade_no)
    .fetch_optional(&mut **tx)
    .await?;
    let Some(row) = row else {
        return Ok(PaymentOutcome::UnknownOrder);
    };
    let order = order_row(&row)?;
    if order.amount_fen != p.amount_fen {
        return Ok(PaymentOutcome::AmountMismatch {
            expected: order.amount_fen,
            got: p.amount_fen,
        });
    }
    if matches!(order.status, OrderStatus::Paid | OrderStatus::Refunded) {
        return Ok(if order.transaction_id.as_deref() == Some(p.transaction_id.as_str()) {
            PaymentOutcome::AlreadyPaid(order)
        } else {
            PaymentOutcome::TransactionConflict(format!(
                "the order is already paid with transaction {}",
                order.transaction_id.as_deref().unwrap_or("?")
            ))
        });
    }
    // The unique index on transaction_id is the guard; ON CONFLICT is not available for
    // UPDATE, so a savepoint keeps a violation from aborting the whole transaction.
    sqlx::query("SAVEPOINT pay").execute(&mut **tx).await?;
    let updated = sqlx::query(
        "UPDATE orders SET status = 'paid', transaction_id = $1, paid_at = $2, updated_at = $3, next_check_at = NULL \
         WHERE id = $4 AND status = $5",
    )
    .bind(&p.transaction_id)
    .bind(p.paid_at)
    .bind(p.now)
    .bind(order.id)
    .bind(order.status.as_str())
    .execute(&mut **tx)
    .await;
    match updated {
        Ok(r) if r.rows_affected() == 1 => {
            sqlx::query("RELEASE SAVEPOINT pay").execute(&mut **tx).await?;
        }
        Ok(_) => return Err(StoreError::Db("the order changed under its row lock".into())),
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
            sqlx::query("ROLLBACK TO SAVEPOINT pay").execute(&mut **tx).await?;
            return Ok(PaymentOutcome::TransactionConflict(
                "the transaction id belongs to another order".into(),
            ));
        }
        Err(e) => return Err(e.into()),
    }
    let paid = order_by_id(tx, order.id).await?;
    let mut detail = serde_json::json!({ "source": p.source.as_str(), "transaction_id": p.transaction_id });
    if order.status != OrderStatus::Pending {
        detail["anomaly"] = serde_json::json!(format!("paid after being {}", order.status));
        tracing::error!(out_trade_no = %order.out_trade_no, was = %order.status, "payment for an order that was not pending");
    }
    add_event(tx, order.id, p.now, "paid", &detail).await?;
    add_outbox(tx, &paid, "order.paid", p.now).await?;
    Ok(PaymentOutcome::Applied(paid))
}

impl PgStore {
    /// Connects, applies the migrations (one gateway at a time), and returns the store.
    ///
    /// # Errors
    /// When the database cannot be reached or the schema cannot be brought up to date.
    pub async fn connect(url: &str, max_connections: u32) -> Result<PgStore, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(2))
            .acquire_timeout(std::time::Duration::from_secs(10))
            .connect(url)
            .await?;
        migrate(&pool).await?;
        Ok(PgStore { pool })
    }

    /// Applies the migrations and returns (for `wxpay migrate`).
    ///
    /// # Errors
    /// As [`PgStore::connect`].
    pub async fn migrate_only(url: &str) -> Result<(), StoreError> {
        let pool = PgPoolOptions::new().max_connections(1).connect(url).await?;
        migrate(&pool).await?;
        pool.close().await;
        Ok(())
    }

    /// The pool, for tests.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    async fn begin(&self) -> Result<Tx, StoreError> {
        Ok(self.pool.begin().await?)
    }
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
            let mut tx = self.begin().await?;
            let inserted = sqlx::query(
                "INSERT INTO orders (merchant, out_trade_no, appid, mch_id, description, amount_fen, openid, attach, client_ip, \
                 status, upstream, created_at, updated_at, expires_at, next_check_at, request_hash) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'pending', 'new', $10, $10, $11, $12, $13) \
                 ON CONFLICT (merchant, out_trade_no) DO NOTHING",
            )
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
            .execute(&mut *tx)
            .await?
            .rows_affected();
            let row = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {ORDER_COLUMNS} FROM orders WHERE merchant = $1 AND out_trade_no = $2"
            )))
            .bind(&n.merchant)
            .bind(&n.out_trade_no)
            .fetch_one(&mut *tx)
            .await?;
            let order = order_row(&row)?;
            if inserted == 0 {
                tx.commit().await?;
                return Ok(Created::Existing(order));
            }
            add_event(
                &mut tx,
                order.id,
                n.now,
                "created",
                &serde_json::json!({ "amount_fen": n.amount_fen }),
            )
            .await?;
            tx.commit().await?;
            Ok(Created::New(order))
        })
    }

    fn set_prepay(&self, order_id: i64, prepay_id: String, now: i64) -> Fut<'_, Order> {
        Box::pin(async move {
            let mut tx = self.begin().await?;
            sqlx::query(
                "UPDATE orders SET prepay_id = $1, prepay_at = $2, upstream = 'created', upstream_error = NULL, updated_at = $2 WHERE id = $3",
            )
            .bind(&prepay_id)
            .bind(now)
            .bind(order_id)
            .execute(&mut *tx)
            .await?;
            add_event(
                &mut tx,
                order_id,
                now,
                "prepay",
                &serde_json::json!({ "prepay_id": prepay_id }),
            )
            .await?;
            let order = order_by_id(&mut tx, order_id).await?;
            tx.commit().await?;
            Ok(order)
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

    fn apply_payment(&self, payment: Payment, notification: Option<NotificationRecord>) -> Fut<'_, PaymentOutcome> {
        Box::pin(async move {
            let mut tx = self.begin().await?;
            let outcome = apply_payment(&mut tx, &payment).await?;
            if let Some(mut n) = notification {
                n.verdict = outcome.verdict().to_owned();
                insert_notification(&mut tx, &n).await?;
            }
            tx.commit().await?;
            Ok(outcome)
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

    fn record_notification(&self, record: NotificationRecord) -> Fut<'_, ()> {
        Box::pin(async move {
            let mut tx = self.begin().await?;
            insert_notification(&mut tx, &record).await?;
            tx.commit().await?;
            Ok(())
        })
    }

    fn idem_claim(&self, scope: String, key: String, request_hash: String, now: i64) -> Fut<'_, IdemClaim> {
        Box::pin(async move {
            let inserted = sqlx::query(
                "INSERT INTO idempotency_keys (scope, key, request_hash, created_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (scope, key) DO NOTHING",
            )
            .bind(&scope)
            .bind(&key)
            .bind(&request_hash)
            .bind(now)
            .execute(&self.pool)
            .await?
            .rows_affected();
            if inserted == 1 {
                return Ok(IdemClaim::Claimed);
            }
            let row = sqlx::query(
                "SELECT request_hash, status, response FROM idempotency_keys WHERE scope = $1 AND key = $2",
            )
            .bind(&scope)
            .bind(&key)
            .fetch_one(&self.pool)
            .await?;
            let hash: String = row.try_get("request_hash")?;
            let status: Option<i32> = row.try_get("status")?;
            let response: Option<String> = row.try_get("response")?;
            Ok(match (status, response) {
                (Some(s), Some(body)) => IdemClaim::Done {
                    request_hash: hash,
                    status: u16::try_from(s).unwrap_or(500),
                    response: body,
                },
                _ => IdemClaim::InProgress { request_hash: hash },
            })
        })
    }

    fn idem_finish(&self, scope: String, key: String, status: u16, response: String) -> Fut<'_, ()> {
        Box::pin(async move {
            sqlx::query("UPDATE idempotency_keys SET status = $1, response = $2 WHERE scope = $3 AND key = $4")
                .bind(i32::from(status))
                .bind(response)
                .bind(scope)
                .bind(key)
                .execute(&self.pool)
                .await?;
            Ok(())
        })
    }

    fn idem_release(&self, scope: String, key: String) -> Fut<'_, ()> {
        Box::pin(async move {
            sqlx::query("DELETE FROM idempotency_keys WHERE scope = $1 AND key = $2 AND status IS NULL")
                .bind(scope)
                .bind(key)
                .execute(&self.pool)
                .await?;
            Ok(())
        })
    }

    fn claim_checks(&self, now: i64, lease_until: i64, limit: u32) -> Fut<'_, Vec<Order>> {
        Box::pin(async move {
            // SKIP LOCKED: rows another gateway is claiming right now are left to it.
            let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE orders SET next_check_at = $2 WHERE id IN ( \
                   SELECT id FROM orders WHERE status = 'pending' AND next_check_at IS NOT NULL AND next_check_at <= $1 \
                   ORDER BY next_check_at LIMIT $3 FOR UPDATE SKIP LOCKED) \
                 RETURNING {ORDER_COLUMNS}"
            )))
            .bind(now)
            .bind(lease_until)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
            rows.iter().map(order_row).collect()
        })
    }

    fn schedule_check(&self, order_id: i64, at: Option<i64>) -> Fut<'_, ()> {
        Box::pin(async move {
            sqlx::query(
                "UPDATE orders SET next_check_at = $1, checks = checks + 1 WHERE id = $2 AND status = 'pending'",
            )
            .bind(at)
            .bind(order_id)
            .execute(&self.pool)
            .await?;
            Ok(())
        })
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
            Ok(Stats {
                orders_by_status,
                outbox_backlog: row.try_get("n")?,
                outbox_oldest_age_ms: oldest.map(|o| now - o),
            })
        })
    }
}
