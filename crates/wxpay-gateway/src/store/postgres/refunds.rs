//! Refund changes: plain transactions that take the order's row lock first and the refund's
//! second, with the rules of `store/rules.rs` deciding.

use sqlx::Row;

use super::rows::{REFUND_COLUMNS, refund_row};
use super::tx::{Tx, add_event, add_refund_outbox, lock_order, order_by_id, refund_by_id, refund_by_number};
use crate::store::rules::{self, RefundVerdict, Refunded, refund_facts, refund_refused};
use crate::store::{
    ImportedRefund, NewRefund, Order, Refund, RefundCreated, RefundOutcome, RefundResult, RefundStatus, Settlement,
    StoreError, col,
};
use crate::time::Millis;
use wxpay_protocol::Fen;

/// Raises a locked, paid order's reserved refund sum by `amount` if it stays within the
/// amount; otherwise says why not.
pub(super) async fn reserve(
    tx: &mut Tx,
    order: &Order,
    amount: Fen,
    now: Millis,
) -> Result<Option<RefundCreated>, StoreError> {
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
pub(super) async fn figures(tx: &mut Tx, order_id: i64) -> Result<Refunded, StoreError> {
    let row = sqlx::query("SELECT status, refunded_fen, refund_reserved_fen FROM orders WHERE id = $1")
        .bind(order_id)
        .fetch_one(&mut **tx)
        .await?;
    Ok(Refunded {
        status: col::order_status(row.try_get("status")?)?,
        refunded_fen: col::fen(row.try_get("refunded_fen")?)?,
        reserved_fen: col::fen(row.try_get("refund_reserved_fen")?)?,
    })
}

/// Writes an order's refund figures, if they are still `before` (its row is locked, so they
/// are; say so if not).
pub(super) async fn set_figures(
    tx: &mut Tx,
    order_id: i64,
    before: Refunded,
    after: Refunded,
    now: Millis,
) -> Result<(), StoreError> {
    let changed = sqlx::query(
        "UPDATE orders SET status = $1, refunded_fen = $2, refund_reserved_fen = $3, updated_at = $4 \
         WHERE id = $5 AND status = $6 AND refunded_fen = $7 AND refund_reserved_fen = $8",
    )
    .bind(after.status.as_str())
    .bind(after.refunded_fen.as_i64())
    .bind(after.reserved_fen.as_i64())
    .bind(now)
    .bind(order_id)
    .bind(before.status.as_str())
    .bind(before.refunded_fen.as_i64())
    .bind(before.reserved_fen.as_i64())
    .execute(&mut **tx)
    .await?
    .rows_affected();
    if changed == 0 {
        return Err(StoreError::Broken(
            "the order changed during a refund's transaction".into(),
        ));
    }
    Ok(())
}

/// Settles a pending refund (see the SQLite engine's twin). The order's row must be locked.
pub(super) async fn settle_refund(
    tx: &mut Tx,
    refund_id: i64,
    s: &Settlement<'_>,
    now: Millis,
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
    let after = rules::settle(order.amount_fen, before, refund.amount_fen, s.succeeded)?;
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

pub(super) async fn create_refund(tx: &mut Tx, n: &NewRefund) -> Result<RefundCreated, StoreError> {
    let Some(order) = lock_order(tx, &n.merchant, n.out_trade_no.as_str()).await? else {
        return Ok(RefundCreated::NoOrder);
    };
    if let Some(existing) = refund_by_number(tx, &n.merchant, n.out_refund_no.as_str(), false).await? {
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
    .bind(n.out_trade_no.as_str())
    .bind(n.out_refund_no.as_str())
    .bind(n.amount_fen.as_i64())
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

pub(super) async fn apply_refund(tx: &mut Tx, r: &RefundResult) -> Result<RefundOutcome, StoreError> {
    let verdict = |found: Option<&Refund>| {
        rules::refund_verdict(found.map(refund_facts), &r.out_trade_no, r.amount_fen, r.succeeded)
    };
    // Read once to find the order whose row to lock (the order's first, then the refund's,
    // as every refund change does), then again under the lock, where the verdict is made.
    let Some(found) = refund_by_number(tx, &r.merchant, r.out_refund_no.as_str(), false).await? else {
        return Ok(RefundOutcome::UnknownRefund);
    };
    if verdict(Some(&found)) == RefundVerdict::WrongOrder {
        return Ok(RefundOutcome::WrongOrder);
    }
    lock_order(tx, &found.merchant, found.out_trade_no.as_str()).await?;
    let locked = refund_by_number(tx, &r.merchant, r.out_refund_no.as_str(), true).await?;
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
        None => Err(StoreError::Broken("the refund changed during its settlement".into())),
    }
}

pub(super) async fn import_refund(tx: &mut Tx, i: &ImportedRefund) -> Result<RefundCreated, StoreError> {
    let Some(order) = lock_order(tx, &i.merchant, i.out_trade_no.as_str()).await? else {
        return Ok(RefundCreated::NoOrder);
    };
    if let Some(existing) = refund_by_number(tx, &i.merchant, i.out_refund_no.as_str(), false).await? {
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
    .bind(i.out_trade_no.as_str())
    .bind(i.out_refund_no.as_str())
    .bind(i.amount_fen.as_i64())
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
