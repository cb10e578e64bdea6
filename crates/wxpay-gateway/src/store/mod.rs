//! Persistence: one [`Store`] trait, two engines.
//!
//! Every state change is one transaction guarded by the database: `UNIQUE (merchant,
//! out_trade_no)`, `UNIQUE (transaction_id)`, and updates conditional on the current status.
//! A repeated notification or request therefore changes nothing by construction. The event
//! history and the outbox row of a change are written in the same transaction as the change.
//!
//! - [`sqlite::SqliteStore`]: WAL, `synchronous=FULL`, one writer thread that commits every
//!   write waiting at that moment in one transaction (group commit: one fsync for many
//!   acknowledged writes), `BEGIN IMMEDIATE`, a busy timeout, reader connections beside it.
//! - [`postgres::PgStore`]: a connection pool; background work is claimed with
//!   `FOR UPDATE SKIP LOCKED`, so several gateways share one database.

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use serde::Serialize;

pub mod postgres;
pub mod sqlite;

/// A boxed future of a store result: the trait is used as `Arc<dyn Store>`.
pub type Fut<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// What went wrong in the database.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The database refused or failed; the message is for the log, not for clients.
    #[error("database: {0}")]
    Db(String),
    /// The schema is newer than this program, or a migration failed.
    #[error("database schema: {0}")]
    Schema(String),
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Db(e.to_string())
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::Db(e.to_string())
    }
}

/// An order's status, as the API shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OrderStatus {
    /// Created, not paid (yet).
    Pending,
    /// Paid: a verified notification or query said so.
    Paid,
    /// Closed unpaid, confirmed by WeChat Pay.
    Closed,
    /// WeChat Pay refused the order, or the payment failed.
    Failed,
    /// Paid and fully refunded.
    Refunded,
}

impl OrderStatus {
    /// All statuses, for metrics.
    pub const ALL: [OrderStatus; 5] = [
        OrderStatus::Pending,
        OrderStatus::Paid,
        OrderStatus::Closed,
        OrderStatus::Failed,
        OrderStatus::Refunded,
    ];

    /// The name in the database and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Pending => "pending",
            OrderStatus::Paid => "paid",
            OrderStatus::Closed => "closed",
            OrderStatus::Failed => "failed",
            OrderStatus::Refunded => "refunded",
        }
    }

    /// Reads a name.
    pub fn parse(s: &str) -> Option<OrderStatus> {
        OrderStatus::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

impl fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where the `unifiedorder` call of an order stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Upstream {
    /// Not called yet (or the call is in flight).
    New,
    /// WeChat Pay gave a prepay_id.
    Created,
    /// WeChat Pay refused it for good.
    Rejected,
    /// The answer never came: WeChat Pay may or may not have the order.
    Unknown,
}

impl Upstream {
    /// The name in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Upstream::New => "new",
            Upstream::Created => "created",
            Upstream::Rejected => "rejected",
            Upstream::Unknown => "unknown",
        }
    }

    /// Reads a name.
    pub fn parse(s: &str) -> Option<Upstream> {
        [Upstream::New, Upstream::Created, Upstream::Rejected, Upstream::Unknown]
            .into_iter()
            .find(|v| v.as_str() == s)
    }
}

/// An order to store.
#[derive(Clone, Debug)]
pub struct NewOrder {
    /// The merchant's name in the configuration.
    pub merchant: String,
    /// The order number.
    pub out_trade_no: String,
    /// The mini program.
    pub appid: String,
    /// The merchant number.
    pub mch_id: String,
    /// What is bought.
    pub description: String,
    /// The amount in fen.
    pub amount_fen: i64,
    /// The payer.
    pub openid: String,
    /// Merchant data echoed by WeChat Pay.
    pub attach: Option<String>,
    /// The client's IP, sent as `spbill_create_ip`.
    pub client_ip: String,
    /// When it can no longer be paid (Unix ms).
    pub expires_at: i64,
    /// When to ask WeChat Pay about it if no notification came (Unix ms).
    pub first_check_at: i64,
    /// A digest of the creation parameters: the same number with other parameters is a
    /// conflict, with the same ones a retry.
    pub request_hash: String,
    /// Now (Unix ms).
    pub now: i64,
}

/// A stored order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Order {
    /// Row id.
    pub id: i64,
    /// The merchant's name.
    pub merchant: String,
    /// The order number.
    pub out_trade_no: String,
    /// The mini program.
    pub appid: String,
    /// The merchant number.
    pub mch_id: String,
    /// What is bought.
    pub description: String,
    /// The amount in fen.
    pub amount_fen: i64,
    /// Refunded so far, in fen.
    pub refunded_fen: i64,
    /// The payer.
    pub openid: String,
    /// Merchant data.
    pub attach: Option<String>,
    /// The client's IP.
    pub client_ip: String,
    /// Status.
    pub status: OrderStatus,
    /// Where the `unifiedorder` call stands.
    pub upstream: Upstream,
    /// Why it failed, when it did.
    pub upstream_error: Option<String>,
    /// The prepay_id, once WeChat Pay gave one.
    pub prepay_id: Option<String>,
    /// When the prepay_id was given (Unix ms).
    pub prepay_at: Option<i64>,
    /// WeChat Pay's order number, once paid.
    pub transaction_id: Option<String>,
    /// Created (Unix ms).
    pub created_at: i64,
    /// Last changed (Unix ms).
    pub updated_at: i64,
    /// Expires (Unix ms).
    pub expires_at: i64,
    /// Paid (Unix ms).
    pub paid_at: Option<i64>,
    /// Closed (Unix ms).
    pub closed_at: Option<i64>,
    /// The digest of the creation parameters.
    pub request_hash: String,
}

/// One entry of an order's history.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Event {
    /// When (Unix ms).
    pub at: i64,
    /// What: `created`, `prepay`, `paid`, `closed`, `failed`, …
    pub kind: String,
    /// Details (JSON).
    pub detail: serde_json::Value,
}

/// The result of storing an order.
#[derive(Clone, Debug)]
pub enum Created {
    /// A new order.
    New(Order),
    /// The number was taken: here is the order that has it.
    Existing(Order),
}

/// Where a payment fact comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// A verified notification.
    Notification,
    /// A verified `orderquery` answer.
    Query,
}

impl Source {
    /// The name in events.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Notification => "notification",
            Source::Query => "query",
        }
    }
}

/// A payment reported by WeChat Pay, already verified.
#[derive(Clone, Debug)]
pub struct Payment {
    /// The merchant's name.
    pub merchant: String,
    /// The order number.
    pub out_trade_no: String,
    /// WeChat Pay's order number.
    pub transaction_id: String,
    /// `total_fee`, compared with the stored amount in the transaction.
    pub amount_fen: i64,
    /// When it was paid (Unix ms).
    pub paid_at: i64,
    /// Where the fact comes from.
    pub source: Source,
    /// Now (Unix ms).
    pub now: i64,
}

/// What a payment did.
#[derive(Clone, Debug)]
pub enum PaymentOutcome {
    /// The order went to `paid` (this is the one transition; its event and outbox row were
    /// written).
    Applied(Order),
    /// The order was already paid with this transaction: nothing changed.
    AlreadyPaid(Order),
    /// No such order: nothing changed.
    UnknownOrder,
    /// `total_fee` is not the order's amount: nothing changed.
    AmountMismatch {
        /// The stored amount.
        expected: i64,
        /// The amount reported.
        got: i64,
    },
    /// The transaction id belongs to another payment (another order, or this order was paid
    /// with another one): nothing changed.
    TransactionConflict(String),
}

impl PaymentOutcome {
    /// The verdict recorded with a notification.
    pub fn verdict(&self) -> &'static str {
        match self {
            PaymentOutcome::Applied(_) => "applied",
            PaymentOutcome::AlreadyPaid(_) => "duplicate",
            PaymentOutcome::UnknownOrder => "unknown_order",
            PaymentOutcome::AmountMismatch { .. } => "amount_mismatch",
            PaymentOutcome::TransactionConflict(_) => "transaction_conflict",
        }
    }
}

/// A received notification, kept raw with its verdict.
#[derive(Clone, Debug)]
pub struct NotificationRecord {
    /// When (Unix ms).
    pub received_at: i64,
    /// `payment` (refunds come later).
    pub kind: String,
    /// The merchant, when found.
    pub merchant: Option<String>,
    /// The order number, when readable.
    pub out_trade_no: Option<String>,
    /// The transaction, when readable.
    pub transaction_id: Option<String>,
    /// `applied`, `duplicate`, `rejected`, …
    pub verdict: String,
    /// Why it was rejected.
    pub reason: Option<String>,
    /// The body as received (lossily decoded, truncated to 16 KiB).
    pub body: String,
}

/// An idempotency key's state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IdemClaim {
    /// The key is new: this request owns it now.
    Claimed,
    /// Another request with this key is running.
    InProgress {
        /// The digest of that request.
        request_hash: String,
    },
    /// A request with this key finished: its answer.
    Done {
        /// The digest of that request.
        request_hash: String,
        /// Its HTTP status.
        status: u16,
        /// Its body.
        response: String,
    },
}

/// An event waiting to go to the business backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxEvent {
    /// The event id, the same on every attempt.
    pub id: String,
    /// `order.paid`, `order.closed`, …
    pub event_type: String,
    /// The JSON body to post.
    pub payload: String,
    /// Created (Unix ms).
    pub created_at: i64,
    /// Attempts so far.
    pub attempts: i64,
}

/// Figures for the metrics.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// Orders per status.
    pub orders_by_status: Vec<(String, i64)>,
    /// Events not yet delivered.
    pub outbox_backlog: i64,
    /// The age of the oldest undelivered event, in ms.
    pub outbox_oldest_age_ms: Option<i64>,
}

/// The gateway's persistence.
pub trait Store: Send + Sync + 'static {
    /// `sqlite` or `postgres`.
    fn engine(&self) -> &'static str;

    /// Checks the database answers (readiness).
    fn ping(&self) -> Fut<'_, ()>;

    /// Stores a new order (status `pending`) with its `created` event, or returns the
    /// order that already has this number.
    fn create_order(&self, new: NewOrder) -> Fut<'_, Created>;

    /// Records the prepay_id of an order (`upstream = created`).
    fn set_prepay(&self, order_id: i64, prepay_id: String, now: i64) -> Fut<'_, Order>;

    /// Records that `unifiedorder` failed: for good (`rejected`: the order becomes
    /// `failed`) or without an answer (`unknown`: it stays `pending` and is checked later).
    fn set_upstream_failure(&self, order_id: i64, rejected: bool, error: String, now: i64) -> Fut<'_, Order>;

    /// An order by merchant and number.
    fn order(&self, merchant: String, out_trade_no: String) -> Fut<'_, Option<Order>>;

    /// An order's history, oldest first.
    fn events(&self, order_id: i64) -> Fut<'_, Vec<Event>>;

    /// Orders newest first, optionally of one status, before the row id `before`.
    fn list_orders(&self, status: Option<OrderStatus>, limit: u32, before: Option<i64>) -> Fut<'_, Vec<Order>>;

    /// Applies a verified payment in one transaction, and records the notification (if it
    /// came from one) with its verdict in the same transaction.
    fn apply_payment(&self, payment: Payment, notification: Option<NotificationRecord>) -> Fut<'_, PaymentOutcome>;

    /// Moves a pending order to `closed` (WeChat Pay confirmed the close), with its event and
    /// `order.closed` outbox row. `None` when it was not pending.
    fn close_order(&self, order_id: i64, reason: String, now: i64) -> Fut<'_, Option<Order>>;

    /// Moves a pending order to `failed`. `None` when it was not pending.
    fn fail_order(&self, order_id: i64, reason: String, now: i64) -> Fut<'_, Option<Order>>;

    /// Adds an entry to an order's history.
    fn add_event(&self, order_id: i64, kind: String, detail: serde_json::Value, now: i64) -> Fut<'_, ()>;

    /// Records a notification that changed nothing (rejected before it reached an order).
    fn record_notification(&self, record: NotificationRecord) -> Fut<'_, ()>;

    /// Claims an idempotency key for a request, or tells what happened to it.
    fn idem_claim(&self, scope: String, key: String, request_hash: String, now: i64) -> Fut<'_, IdemClaim>;

    /// Stores the answer given to the request that owns a key.
    fn idem_finish(&self, scope: String, key: String, status: u16, response: String) -> Fut<'_, ()>;

    /// Releases a key whose request ended without a definite answer, so a retry runs again.
    fn idem_release(&self, scope: String, key: String) -> Fut<'_, ()>;

    /// Claims up to `limit` pending orders due for a check (`next_check_at <= now`), moving
    /// their next check to `lease_until` so that no one else takes them meanwhile.
    fn claim_checks(&self, now: i64, lease_until: i64, limit: u32) -> Fut<'_, Vec<Order>>;

    /// Sets when a pending order is checked next (`None`: never), counting the check.
    fn schedule_check(&self, order_id: i64, at: Option<i64>) -> Fut<'_, ()>;

    /// Claims up to `limit` undelivered events that are due, leasing them until `lease_until`.
    fn claim_outbox(&self, now: i64, lease_until: i64, limit: u32) -> Fut<'_, Vec<OutboxEvent>>;

    /// Marks an event delivered.
    fn outbox_delivered(&self, id: String, now: i64) -> Fut<'_, ()>;

    /// Schedules another attempt of an event.
    fn outbox_retry(&self, id: String, next_at: i64, error: String) -> Fut<'_, ()>;

    /// Figures for the metrics.
    fn stats(&self, now: i64) -> Fut<'_, Stats>;
}

/// An event id: `evt_` and 24 random hex digits.
pub(crate) fn event_id() -> String {
    format!("evt_{}", crate::random_hex::<12>())
}

/// The JSON body of an outbox event: `{id, type, created_at, data}`.
pub(crate) fn event_payload(id: &str, event_type: &str, now: i64, order: &Order) -> String {
    serde_json::json!({
        "id": id,
        "type": event_type,
        "created_at": crate::time::rfc3339(now),
        "data": {
            "merchant": order.merchant,
            "out_trade_no": order.out_trade_no,
            "status": order.status,
            "amount_fen": order.amount_fen,
            "refunded_fen": order.refunded_fen,
            "transaction_id": order.transaction_id,
            "paid_at": order.paid_at.map(crate::time::rfc3339),
            "attach": order.attach,
        }
    })
    .to_string()
}

/// A notification body as stored: lossy UTF-8, at most 16 KiB.
pub fn stored_body(body: &[u8]) -> String {
    let cut = &body[..body.len().min(16 * 1024)];
    String::from_utf8_lossy(cut).into_owned()
}
