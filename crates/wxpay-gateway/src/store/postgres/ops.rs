//! The [`Store`] operations of the PostgreSQL engine.

use sqlx::Row;
use tokio::sync::{mpsc, oneshot};

use super::PgStore;
use super::batch::{CreateJob, PaymentJob, PrepayJob, apply_one, create_one, prepay_one};
use super::refunds::{apply_refund, create_refund, import_refund, settle_refund};
use super::rows::{self, ORDER_COLUMNS, REFUND_COLUMNS, dollars, order_by_number_sql, order_row, refund_row};
use super::tx::{
    add_event, claim_due, claimed, insert_notification, lock_order_of_refund, order_by_id, refund_by_id, schedule,
    transition,
};
use wxpay_protocol::{Fen, OutRefundNo, OutTradeNo};

use crate::store::{CHECKS_OF_ORDER, Call, Checks, SCHEDULE_ORDER_CHECK, checks_from};
use crate::store::{
    Created, DELIVERIES_OF_ORDER, DailyClaim, Delivery, Event, FilterValue, Fut, IdemClaim, IdemKey, ImportedRefund,
    KeptCertificate, NewOrder, NewRefund, Notice, NoticesOf, NotificationRecord, Order, OrderFilter, OrderStatus,
    OutboxEvent, Payment, PaymentOutcome, ReconciliationRecord, Refund, RefundCreated, RefundOutcome, RefundResult,
    RefundStatus, Settlement, Stats, Store, StoreError, UNDELIVERED,
};
use crate::store::{Daily, RECONCILIATIONS, ReconciliationRun, daily_sql, merge_daily};
use crate::time::Millis;

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
            answer.await.map_err(|_| StoreError::Stopped("the order batcher"))?
        })
    }

    fn set_prepay(&self, order_id: i64, prepay_id: String, now: Millis) -> Fut<'_, Order> {
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
            answer.await.map_err(|_| StoreError::Stopped("the prepay batcher"))?
        })
    }

    fn set_upstream_failure(&self, order_id: i64, rejected: bool, error: String, now: Millis) -> Fut<'_, Order> {
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

    fn order(&self, merchant: String, out_trade_no: OutTradeNo) -> Fut<'_, Option<Order>> {
        Box::pin(async move {
            let row = sqlx::query(sqlx::AssertSqlSafe(order_by_number_sql()))
                .bind(merchant)
                .bind(out_trade_no.as_str())
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

    fn list_orders(&self, f: OrderFilter, limit: u32, before: Option<i64>) -> Fut<'_, Vec<Order>> {
        Box::pin(async move {
            let (condition, values) = f.condition(before, |n| format!("${n}"));
            let mut query = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {ORDER_COLUMNS} FROM orders WHERE {condition} ORDER BY id DESC LIMIT {limit}"
            )));
            for v in values {
                query = match v {
                    FilterValue::Text(s) => query.bind(s),
                    FilterValue::Int(i) => query.bind(i),
                };
            }
            let rows = query.fetch_all(&self.pool).await?;
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
            answer.await.map_err(|_| StoreError::Stopped("the payment batcher"))?
        })
    }

    fn close_order(&self, order_id: i64, reason: String, now: Millis) -> Fut<'_, Option<Order>> {
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

    fn fail_order(&self, order_id: i64, reason: String, now: Millis) -> Fut<'_, Option<Order>> {
        Box::pin(async move {
            let mut tx = self.begin().await?;
            let detail = serde_json::json!({ "reason": reason });
            let out = transition(&mut tx, order_id, OrderStatus::Failed, "failed", detail, None, now).await?;
            tx.commit().await?;
            Ok(out)
        })
    }

    fn add_event(&self, order_id: i64, kind: String, detail: serde_json::Value, now: Millis) -> Fut<'_, ()> {
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

    fn idem_claim(
        &self,
        k: IdemKey,
        request_hash: String,
        now: Millis,
        lease: std::time::Duration,
    ) -> Fut<'_, IdemClaim> {
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
            let taken: Option<Millis> = sqlx::query_scalar(
                "UPDATE idempotency_keys SET claimed_at = $4, owner = $5 WHERE scope = $1 AND key = $2 \
                 AND request_hash = $3 AND status IS NULL AND COALESCE(claimed_at, created_at) <= $6 \
                 RETURNING created_at",
            )
            .bind(&k.scope)
            .bind(&k.key)
            .bind(&request_hash)
            .bind(now)
            .bind(&k.owner)
            .bind(now - lease)
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
            Ok(crate::store::idem_state(
                row.try_get("request_hash")?,
                status.map(i64::from),
                row.try_get("response")?,
            ))
        })
    }

    fn idem_renew(&self, k: IdemKey, now: Millis) -> Fut<'_, bool> {
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

    fn idem_purge(&self, created_before: Millis, limit: u32) -> Fut<'_, u64> {
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

    fn claim_checks(&self, now: Millis, lease_until: Millis, limit: u32) -> Fut<'_, Vec<Order>> {
        Box::pin(async move {
            let rows = claim_due(&self.pool, "orders", ORDER_COLUMNS, now, lease_until, limit).await?;
            claimed(&self.pool, "orders", &rows, order_row).await
        })
    }

    fn schedule_check(&self, order_id: i64, at: Option<Millis>, call: Option<Call>) -> Fut<'_, ()> {
        Box::pin(async move {
            let (call_at, said) = call.map(|c| (c.at, c.said)).unzip();
            sqlx::query(sqlx::AssertSqlSafe(dollars(SCHEDULE_ORDER_CHECK)))
                .bind(at)
                .bind(order_id)
                .bind(call_at)
                .bind(said)
                .execute(&self.pool)
                .await?;
            Ok(())
        })
    }

    fn checks(&self, order_id: i64) -> Fut<'_, Checks> {
        Box::pin(async move {
            let row = sqlx::query(sqlx::AssertSqlSafe(dollars(CHECKS_OF_ORDER)))
                .bind(order_id)
                .fetch_optional(&self.pool)
                .await?;
            Ok(match row {
                Some(r) => checks_from(r.try_get(0)?, r.try_get(1)?, r.try_get(2)?),
                None => Checks::default(),
            })
        })
    }

    fn claim_outbox(&self, now: Millis, lease_until: Millis, limit: u32) -> Fut<'_, Vec<OutboxEvent>> {
        Box::pin(async move {
            // `attempts` counts claims; the event carries the attempts made before this one,
            // as on SQLite. An event waits while an earlier one of its order does (a smaller
            // `seq`), whether or not another instance holds that one.
            let rows = sqlx::query(
                "UPDATE outbox SET next_attempt_at = $2, attempts = attempts + 1 WHERE id IN ( \
                   SELECT id FROM outbox x WHERE delivered_at IS NULL AND next_attempt_at <= $1 \
                   AND NOT EXISTS (SELECT 1 FROM outbox e WHERE e.order_id = x.order_id \
                     AND e.delivered_at IS NULL AND e.seq < x.seq) \
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

    fn outbox_delivered(&self, id: String, now: Millis) -> Fut<'_, ()> {
        Box::pin(async move {
            sqlx::query("UPDATE outbox SET delivered_at = $1, last_error = NULL WHERE id = $2")
                .bind(now)
                .bind(id)
                .execute(&self.pool)
                .await?;
            Ok(())
        })
    }

    fn outbox_retry(&self, id: String, next_at: Millis, error: String) -> Fut<'_, ()> {
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

    fn reconciliations(&self, limit: u32) -> Fut<'_, Vec<ReconciliationRun>> {
        Box::pin(async move {
            let rows = sqlx::query(sqlx::AssertSqlSafe(dollars(RECONCILIATIONS)))
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?;
            rows.iter()
                .map(|r| {
                    Ok(ReconciliationRun {
                        merchant: r.try_get(0)?,
                        bill_date: r.try_get(1)?,
                        kind: r.try_get(2)?,
                        started_at: r.try_get(3)?,
                        finished_at: r.try_get(4)?,
                        balanced: r.try_get::<Option<i64>, _>(5)?.map(|b| b != 0),
                        differences: r.try_get(6)?,
                        repaired: r.try_get(7)?,
                        report: r.try_get(8)?,
                    })
                })
                .collect()
        })
    }

    fn daily(&self, from: Millis, to: Millis) -> Fut<'_, Vec<Daily>> {
        Box::pin(async move {
            let (orders, rejected) = daily_sql();
            let orders = sqlx::query(sqlx::AssertSqlSafe(dollars(&orders)))
                .bind(from)
                .bind(to)
                .fetch_all(&self.pool)
                .await?
                .iter()
                .map(|r| {
                    Ok(Daily {
                        day: r.try_get(0)?,
                        orders: r.try_get(1)?,
                        paid: r.try_get(2)?,
                        paid_fen: r.try_get(3)?,
                        refunded_fen: r.try_get(4)?,
                        rejected: 0,
                    })
                })
                .collect::<Result<Vec<_>, StoreError>>()?;
            let rejected = sqlx::query(sqlx::AssertSqlSafe(dollars(&rejected)))
                .bind(from)
                .bind(to)
                .fetch_all(&self.pool)
                .await?
                .iter()
                .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
                .collect::<Result<Vec<_>, StoreError>>()?;
            Ok(merge_daily(orders, rejected))
        })
    }

    fn notifications(&self, of: NoticesOf, limit: u32) -> Fut<'_, Vec<Notice>> {
        Box::pin(async move {
            let (sql, texts) = of.query(|n| format!("${n}"));
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for t in texts {
                query = query.bind(t.to_owned());
            }
            let rows = query.bind(i64::from(limit)).fetch_all(&self.pool).await?;
            rows.iter()
                .map(|r| {
                    Ok(Notice {
                        received_at: r.try_get(0)?,
                        kind: r.try_get(1)?,
                        merchant: r.try_get(2)?,
                        out_trade_no: r.try_get(3)?,
                        verdict: r.try_get(4)?,
                        reason: r.try_get(5)?,
                        peer: r.try_get(6)?,
                        body: r.try_get(7)?,
                        body_sha256: r.try_get(8)?,
                    })
                })
                .collect()
        })
    }

    fn undelivered(&self, limit: u32) -> Fut<'_, Vec<Delivery>> {
        Box::pin(async move {
            let rows = sqlx::query(sqlx::AssertSqlSafe(dollars(UNDELIVERED)))
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?;
            rows.iter().map(rows::delivery_row).collect()
        })
    }

    fn deliveries(&self, order_id: i64) -> Fut<'_, Vec<Delivery>> {
        Box::pin(async move {
            let rows = sqlx::query(sqlx::AssertSqlSafe(dollars(DELIVERIES_OF_ORDER)))
                .bind(order_id)
                .fetch_all(&self.pool)
                .await?;
            rows.iter().map(rows::delivery_row).collect()
        })
    }

    fn deliver_now(&self, id: String, now: Millis, lease_end: Millis) -> Fut<'_, bool> {
        Box::pin(async move {
            let done = sqlx::query(
                "UPDATE outbox SET next_attempt_at = $1 WHERE id = $2 AND delivered_at IS NULL AND next_attempt_at > $3",
            )
            .bind(now)
            .bind(id)
            .bind(lease_end)
                .execute(&self.pool)
                .await?;
            Ok(done.rows_affected() == 1)
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

    fn refund(&self, merchant: String, out_refund_no: OutRefundNo) -> Fut<'_, Option<Refund>> {
        Box::pin(async move {
            let row = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {REFUND_COLUMNS} FROM refunds WHERE merchant = $1 AND out_refund_no = $2"
            )))
            .bind(merchant)
            .bind(out_refund_no.as_str())
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
        now: Millis,
        next_check_at: Millis,
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
        now: Millis,
        next_check_at: Millis,
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
                n.verdict = Some(outcome.verdict());
                insert_notification(&mut tx, &n).await?;
            }
            tx.commit().await?;
            Ok(outcome)
        })
    }

    fn claim_refund_checks(&self, now: Millis, lease_until: Millis, limit: u32) -> Fut<'_, Vec<Refund>> {
        Box::pin(async move {
            let rows = claim_due(&self.pool, "refunds", REFUND_COLUMNS, now, lease_until, limit).await?;
            claimed(&self.pool, "refunds", &rows, refund_row).await
        })
    }

    fn schedule_refund_check(&self, refund_id: i64, at: Option<Millis>) -> Fut<'_, ()> {
        Box::pin(schedule(&self.pool, "refunds", refund_id, at))
    }

    fn orders_paid_between(&self, merchant: String, from: Millis, to: Millis) -> Fut<'_, Vec<Order>> {
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

    fn orders_by_numbers(&self, merchant: String, numbers: Vec<OutTradeNo>) -> Fut<'_, Vec<Order>> {
        Box::pin(async move {
            let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {ORDER_COLUMNS} FROM orders WHERE merchant = $1 AND out_trade_no = ANY($2)"
            )))
            .bind(merchant)
            .bind(numbers.into_iter().map(String::from).collect::<Vec<_>>())
            .fetch_all(&self.pool)
            .await?;
            rows.iter().map(order_row).collect()
        })
    }

    fn refunds_accepted_between(&self, merchant: String, from: Millis, to: Millis) -> Fut<'_, Vec<Refund>> {
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

    fn refunds_by_numbers(&self, merchant: String, numbers: Vec<OutRefundNo>) -> Fut<'_, Vec<Refund>> {
        Box::pin(async move {
            let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {REFUND_COLUMNS} FROM refunds WHERE merchant = $1 AND out_refund_no = ANY($2)"
            )))
            .bind(merchant)
            .bind(numbers.into_iter().map(String::from).collect::<Vec<_>>())
            .fetch_all(&self.pool)
            .await?;
            rows.iter().map(refund_row).collect()
        })
    }

    fn correct_amount(
        &self,
        order_id: i64,
        amount_fen: Fen,
        detail: serde_json::Value,
        now: Millis,
    ) -> Fut<'_, Option<Order>> {
        Box::pin(async move {
            let mut tx = self.begin().await?;
            let changed = sqlx::query(
                "UPDATE orders SET amount_fen = $1, updated_at = $2, \
                 status = CASE WHEN refunded_fen = $1 THEN 'refunded' ELSE 'paid' END \
                 WHERE id = $3 AND status IN ('paid', 'refunded') AND refund_reserved_fen <= $1 \
                 AND NOT EXISTS (SELECT 1 FROM refunds WHERE order_id = $3 AND status = 'pending' AND upstream != 'created')",
            )
            .bind(amount_fen.as_i64())
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
        accepted_at: Millis,
        detail: serde_json::Value,
        now: Millis,
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

    fn claim_daily_reconciliation(&self, merchant: String, bill_date: String, now: Millis) -> Fut<'_, DailyClaim> {
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

    fn keep_platform_certificates(&self, merchant: String, certificates: Vec<KeptCertificate>) -> Fut<'_, ()> {
        Box::pin(async move {
            // One list, one transaction: a restart never reads half of a download.
            let mut tx = self.pool.begin().await?;
            for k in &certificates {
                sqlx::query(
                    "INSERT INTO platform_certificates (merchant, serial_no, pem, mac, not_after, fetched_at) \
                     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (merchant, serial_no) DO UPDATE SET \
                     pem = excluded.pem, mac = excluded.mac, not_after = excluded.not_after, fetched_at = excluded.fetched_at",
                )
                .bind(&merchant)
                .bind(&k.serial_no)
                .bind(&k.pem)
                .bind(&k.mac)
                .bind(k.not_after)
                .bind(k.fetched_at)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            Ok(())
        })
    }

    fn platform_certificates(&self, merchant: String) -> Fut<'_, Vec<KeptCertificate>> {
        Box::pin(async move {
            let rows: Vec<(String, String, String, Millis, Millis)> = sqlx::query_as(
                "SELECT serial_no, pem, mac, not_after, fetched_at FROM platform_certificates WHERE merchant = $1 ORDER BY serial_no",
            )
            .bind(&merchant)
            .fetch_all(&self.pool)
            .await?;
            Ok(rows
                .into_iter()
                .map(|(serial_no, pem, mac, not_after, fetched_at)| KeptCertificate {
                    serial_no,
                    pem,
                    mac,
                    not_after,
                    fetched_at,
                })
                .collect())
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

    fn stats(&self, now: Millis) -> Fut<'_, Stats> {
        Box::pin(async move {
            // These counts read whole tables by design; the pool prices sequential scans out
            // (for the hot paths, see mod.rs), so they are allowed back for this transaction.
            let mut tx = self.begin().await?;
            sqlx::query("SET LOCAL enable_seqscan = on").execute(&mut *tx).await?;
            let rows = sqlx::query("SELECT status, COUNT(*) AS n FROM orders GROUP BY status")
                .fetch_all(&mut *tx)
                .await?;
            let orders_by_status = rows
                .iter()
                .map(|r| Ok((r.try_get::<String, _>("status")?, r.try_get::<i64, _>("n")?)))
                .collect::<Result<Vec<_>, StoreError>>()?;
            let row =
                sqlx::query("SELECT COUNT(*) AS n, MIN(created_at) AS oldest FROM outbox WHERE delivered_at IS NULL")
                    .fetch_one(&mut *tx)
                    .await?;
            let oldest: Option<Millis> = row.try_get("oldest")?;
            let rows = sqlx::query("SELECT status, COUNT(*) AS n FROM refunds GROUP BY status")
                .fetch_all(&mut *tx)
                .await?;
            tx.commit().await?;
            let refunds_by_status = rows
                .iter()
                .map(|r| Ok((r.try_get::<String, _>("status")?, r.try_get::<i64, _>("n")?)))
                .collect::<Result<Vec<_>, StoreError>>()?;
            Ok(Stats {
                orders_by_status,
                refunds_by_status,
                outbox_backlog: row.try_get("n")?,
                outbox_oldest_age_ms: oldest.map(|o| now.ms_since(o)),
            })
        })
    }
}
