//! Row mapping: the columns read and the records built from them.

use sqlx::Row;
use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::postgres::{PgArgumentBuffer, PgRow, PgTypeInfo, PgValueRef, Postgres};

use crate::time::Millis;

use crate::store::{Delivery, Order, Refund, StoreError, col};

pub(super) const ORDER_COLUMNS: &str = "id, merchant, out_trade_no, appid, mch_id, description, amount_fen, refunded_fen, openid, attach, \
client_ip, status, upstream, upstream_error, prepay_id, prepay_at, transaction_id, created_at, updated_at, expires_at, paid_at, \
closed_at, request_hash";

pub(super) fn order_row(r: &PgRow) -> Result<Order, StoreError> {
    Ok(Order {
        id: r.try_get("id")?,
        merchant: r.try_get("merchant")?,
        out_trade_no: col::trade_no(r.try_get("out_trade_no")?)?,
        appid: r.try_get("appid")?,
        mch_id: r.try_get("mch_id")?,
        description: r.try_get("description")?,
        amount_fen: col::fen(r.try_get("amount_fen")?)?,
        refunded_fen: col::fen(r.try_get("refunded_fen")?)?,
        openid: r.try_get("openid")?,
        attach: r.try_get("attach")?,
        client_ip: r.try_get("client_ip")?,
        status: col::order_status(r.try_get("status")?)?,
        upstream: col::upstream(r.try_get("upstream")?)?,
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

pub(super) const REFUND_COLUMNS: &str = "id, order_id, merchant, out_trade_no, out_refund_no, amount_fen, reason, status, upstream, \
upstream_error, refund_id, created_at, updated_at, accepted_at, settled_at, request_hash";

pub(super) fn refund_row(r: &PgRow) -> Result<Refund, StoreError> {
    Ok(Refund {
        id: r.try_get("id")?,
        order_id: r.try_get("order_id")?,
        merchant: r.try_get("merchant")?,
        out_trade_no: col::trade_no(r.try_get("out_trade_no")?)?,
        out_refund_no: col::refund_no(r.try_get("out_refund_no")?)?,
        amount_fen: col::fen(r.try_get("amount_fen")?)?,
        reason: r.try_get("reason")?,
        status: col::refund_status(r.try_get("status")?)?,
        upstream: col::upstream(r.try_get("upstream")?)?,
        upstream_error: r.try_get("upstream_error")?,
        refund_id: r.try_get("refund_id")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
        accepted_at: r.try_get("accepted_at")?,
        settled_at: r.try_get("settled_at")?,
        request_hash: r.try_get("request_hash")?,
    })
}

/// The columns of `orders` prefixed with a table alias, for statements that join.
pub(super) fn order_columns_of(alias: &str) -> String {
    ORDER_COLUMNS
        .split(", ")
        .map(|c| format!("{alias}.{c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// An order by its merchant and number.
pub(super) fn order_by_number_sql() -> String {
    format!("SELECT {ORDER_COLUMNS} FROM orders WHERE merchant = $1 AND out_trade_no = $2")
}

/// A moment is a `BIGINT` of Unix milliseconds.
impl sqlx::Type<Postgres> for Millis {
    fn type_info() -> PgTypeInfo {
        <i64 as sqlx::Type<Postgres>>::type_info()
    }

    fn compatible(ty: &PgTypeInfo) -> bool {
        <i64 as sqlx::Type<Postgres>>::compatible(ty)
    }
}

impl sqlx::postgres::PgHasArrayType for Millis {
    fn array_type_info() -> PgTypeInfo {
        <i64 as sqlx::postgres::PgHasArrayType>::array_type_info()
    }
}

impl sqlx::Encode<'_, Postgres> for Millis {
    fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        <i64 as sqlx::Encode<'_, Postgres>>::encode_by_ref(&self.unix_ms(), buf)
    }
}

impl sqlx::Decode<'_, Postgres> for Millis {
    fn decode(value: PgValueRef<'_>) -> Result<Self, BoxDynError> {
        <i64 as sqlx::Decode<'_, Postgres>>::decode(value).map(Millis::from_unix_ms)
    }
}

/// A row of `UNDELIVERED` or `DELIVERIES_OF_ORDER`.
pub(super) fn delivery_row(r: &PgRow) -> Result<Delivery, StoreError> {
    Ok(Delivery {
        id: r.try_get(0)?,
        event_type: r.try_get(1)?,
        out_trade_no: r.try_get(2)?,
        merchant: r.try_get(3)?,
        created_at: r.try_get(4)?,
        attempts: r.try_get(5)?,
        next_attempt_at: r.try_get(6)?,
        last_error: r.try_get(7)?,
        delivered_at: r.try_get(8)?,
    })
}

/// A statement shared with SQLite (`?1`, `?2`, …) in PostgreSQL's placeholders (`$1`, …).
/// Numbers are replaced from the highest down, so that `?1` never eats the start of `?10`.
pub(super) fn dollars(sql: &str) -> String {
    (1..=12)
        .rev()
        .fold(sql.to_owned(), |s, n| s.replace(&format!("?{n}"), &format!("${n}")))
}
