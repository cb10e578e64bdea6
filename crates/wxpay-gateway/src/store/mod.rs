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
use std::sync::Arc;

use serde::Serialize;
use wxpay_protocol::{Fen, OutRefundNo, OutTradeNo};

use crate::time::Millis;

pub mod postgres;
pub(crate) mod rules;
pub mod sqlite;

/// A boxed future of a store result: the trait is used as `Arc<dyn Store>`.
pub type Fut<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// What went wrong in the database. Every message is for the log, not for clients; the
/// errors of the engines' libraries are kept as sources. Cloning shares them: one failed
/// commit fails every write of its batch with the same error.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// SQLite refused or failed.
    #[error("database: {0}")]
    Sqlite(#[source] Arc<rusqlite::Error>),
    /// SQLite refused or failed at a step of the writer's own.
    #[error("database: {at}: {source}")]
    SqliteAt {
        /// The step.
        at: &'static str,
        /// SQLite's error.
        #[source]
        source: Arc<rusqlite::Error>,
    },
    /// PostgreSQL (or the connection to it) refused or failed.
    #[error("database: {message}")]
    Postgres {
        /// PostgreSQL's own message (see [`describe_sqlx`]).
        message: String,
        /// sqlx's error.
        #[source]
        source: Arc<sqlx::Error>,
    },
    /// The operating system refused (creating the database file, starting the writer).
    #[error("database: {what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The system's error.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// A task of the store ended abnormally (it panicked or was cancelled).
    #[error("database: a store task ended abnormally: {0}")]
    Task(#[source] Arc<tokio::task::JoinError>),
    /// A worker of the store is gone (the SQLite writer, a PostgreSQL batcher): the process
    /// is stopping.
    #[error("database: {0} stopped")]
    Stopped(&'static str),
    /// The store found one of its own rules broken (a row that changed under a transaction
    /// that holds it, a batch answered for other rows): a bug, said so rather than hidden.
    #[error("database: {0}")]
    Broken(String),
    /// The schema is newer than this program, or a migration failed.
    #[error("database schema: {0}")]
    Schema(String),
    /// The database URL names nothing wxpay can open.
    #[error("database URL: {0}")]
    Url(String),
    /// The database server cannot be reached or refuses the connection; the message names
    /// where and why.
    #[error("database: {0}")]
    Connect(String),
    /// A row holds a value its type does not allow.
    #[error("database: {0}")]
    Damaged(#[from] Damaged),
}

impl StoreError {
    /// Whether the database is out of reach for now rather than refusing this request: the
    /// PostgreSQL server down, restarting or out of connections, no pooled connection to be
    /// had, SQLite's disk full or its lock held past the busy timeout. The same request may
    /// succeed later, so the API answers 503 and WeChat Pay's notification gets FAIL, never a
    /// 500 that says the gateway is broken.
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Sqlite(e) | StoreError::SqliteAt { source: e, .. } => matches!(
                e.sqlite_error_code(),
                Some(
                    rusqlite::ErrorCode::DiskFull
                        | rusqlite::ErrorCode::DatabaseBusy
                        | rusqlite::ErrorCode::DatabaseLocked
                )
            ),
            StoreError::Postgres { source, .. } => match source.as_ref() {
                sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut => true,
                // Class 08: connection exceptions; 57P01-57P03: the server shutting down,
                // crashed, or not yet accepting connections; 53300: too many connections.
                sqlx::Error::Database(db) => db
                    .code()
                    .is_some_and(|c| c.starts_with("08") || matches!(&*c, "57P01" | "57P02" | "57P03" | "53300")),
                _ => false,
            },
            _ => false,
        }
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        // A row mapper's refusal of a damaged value is the same error on both engines.
        if let rusqlite::Error::FromSqlConversionFailure(_, _, inner) = &e {
            if let Some(d) = inner.downcast_ref::<Damaged>() {
                return StoreError::Damaged(d.clone());
            }
        }
        StoreError::Sqlite(Arc::new(e))
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::Postgres {
            message: describe_sqlx(&e),
            source: Arc::new(e),
        }
    }
}

impl From<tokio::task::JoinError> for StoreError {
    fn from(e: tokio::task::JoinError) -> Self {
        StoreError::Task(Arc::new(e))
    }
}

/// A sqlx error for people: PostgreSQL's own message without the server's source line
/// (`… at line 948`), an I/O error as the system says it ("Connection refused").
pub(crate) fn describe_sqlx(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(db) => db.message().to_owned(),
        sqlx::Error::Io(io) => match io.kind() {
            std::io::ErrorKind::ConnectionRefused => "connection refused (is PostgreSQL running on that port?)".into(),
            _ => io.to_string(),
        },
        other => other.to_string(),
    }
}

/// An order's status, as the API shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, utoipa::ToSchema)]
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

/// A stored value that breaks the rules of its type: a damaged row (or a row written by
/// something else than wxpay), said so rather than guessed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a stored {what} {value:?} is not valid")]
pub struct Damaged {
    /// What the column holds.
    pub what: &'static str,
    /// What it holds instead.
    pub value: String,
}

/// Reading typed values from columns, for both engines: an amount is a `BIGINT` of fen
/// (written with [`Fen::as_i64`]), numbers and statuses are text.
pub(crate) mod col {
    use wxpay_protocol::{Fen, OutRefundNo, OutTradeNo};

    use crate::store::{Damaged, OrderStatus, RefundStatus, Upstream};

    fn damaged(what: &'static str, value: impl ToString) -> Damaged {
        Damaged {
            what,
            value: value.to_string(),
        }
    }

    /// A stored amount; a negative one is damaged.
    pub(crate) fn fen(v: i64) -> Result<Fen, Damaged> {
        u64::try_from(v)
            .ok()
            .and_then(|v| Fen::new(v).ok())
            .ok_or_else(|| damaged("amount", v))
    }

    /// A stored order number.
    pub(crate) fn trade_no(v: String) -> Result<OutTradeNo, Damaged> {
        OutTradeNo::new(v).map_err(|e| damaged("out_trade_no", e))
    }

    /// A stored refund number.
    pub(crate) fn refund_no(v: String) -> Result<OutRefundNo, Damaged> {
        OutRefundNo::new(v).map_err(|e| damaged("out_refund_no", e))
    }

    /// A stored order status.
    pub(crate) fn order_status(v: &str) -> Result<OrderStatus, Damaged> {
        OrderStatus::parse(v).ok_or_else(|| damaged("order status", v))
    }

    /// A stored refund status.
    pub(crate) fn refund_status(v: &str) -> Result<RefundStatus, Damaged> {
        RefundStatus::parse(v).ok_or_else(|| damaged("refund status", v))
    }

    /// Where a stored call stands.
    pub(crate) fn upstream(v: &str) -> Result<Upstream, Damaged> {
        Upstream::parse(v).ok_or_else(|| damaged("upstream state", v))
    }
}

/// Where the `unifiedorder` call of an order stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
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
    pub out_trade_no: OutTradeNo,
    /// The mini program.
    pub appid: String,
    /// The merchant number.
    pub mch_id: String,
    /// What is bought.
    pub description: String,
    /// The amount.
    pub amount_fen: Fen,
    /// The payer.
    pub openid: String,
    /// Merchant data echoed by WeChat Pay.
    pub attach: Option<String>,
    /// The client's IP, sent as `spbill_create_ip`.
    pub client_ip: String,
    /// When it can no longer be paid (Unix ms).
    pub expires_at: Millis,
    /// When to ask WeChat Pay about it if no notification came (Unix ms).
    pub first_check_at: Millis,
    /// A digest of the creation parameters: the same number with other parameters is a
    /// conflict, with the same ones a retry.
    pub request_hash: String,
    /// Now (Unix ms).
    pub now: Millis,
}

/// A stored order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Order {
    /// Row id.
    pub id: i64,
    /// The merchant's name.
    pub merchant: String,
    /// The order number.
    pub out_trade_no: OutTradeNo,
    /// The mini program.
    pub appid: String,
    /// The merchant number.
    pub mch_id: String,
    /// What is bought.
    pub description: String,
    /// The amount.
    pub amount_fen: Fen,
    /// Refunded so far.
    pub refunded_fen: Fen,
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
    pub prepay_at: Option<Millis>,
    /// WeChat Pay's order number, once paid.
    pub transaction_id: Option<String>,
    /// Created (Unix ms).
    pub created_at: Millis,
    /// Last changed (Unix ms).
    pub updated_at: Millis,
    /// Expires (Unix ms).
    pub expires_at: Millis,
    /// Paid (Unix ms).
    pub paid_at: Option<Millis>,
    /// Closed (Unix ms).
    pub closed_at: Option<Millis>,
    /// The digest of the creation parameters.
    pub request_hash: String,
}

/// One entry of an order's history.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Event {
    /// When (Unix ms).
    pub at: Millis,
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
    pub out_trade_no: OutTradeNo,
    /// WeChat Pay's order number.
    pub transaction_id: String,
    /// `total_fee`, compared with the stored amount in the transaction.
    pub amount_fen: Fen,
    /// When it was paid (Unix ms).
    pub paid_at: Millis,
    /// Where the fact comes from.
    pub source: Source,
    /// Now (Unix ms).
    pub now: Millis,
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
        expected: Fen,
        /// The amount reported.
        got: Fen,
    },
    /// The transaction id belongs to another payment (another order, or this order was paid
    /// with another one): nothing changed.
    TransactionConflict(String),
}

impl PaymentOutcome {
    /// The verdict recorded with a notification.
    pub fn verdict(&self) -> Verdict {
        match self {
            PaymentOutcome::Applied(_) => Verdict::Applied,
            PaymentOutcome::AlreadyPaid(_) => Verdict::Duplicate,
            PaymentOutcome::UnknownOrder => Verdict::UnknownOrder,
            PaymentOutcome::AmountMismatch { .. } => Verdict::AmountMismatch,
            PaymentOutcome::TransactionConflict(_) => Verdict::TransactionConflict,
        }
    }
}

/// A refund's status, as the API shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RefundStatus {
    /// Stored; asked for or about to be; not settled yet.
    Pending,
    /// WeChat Pay paid the money back.
    Succeeded,
    /// WeChat Pay refused it or closed it (`REFUNDCLOSE`, `CHANGE`).
    Failed,
}

impl RefundStatus {
    /// The name in the database and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            RefundStatus::Pending => "pending",
            RefundStatus::Succeeded => "succeeded",
            RefundStatus::Failed => "failed",
        }
    }

    /// Reads a name.
    pub fn parse(s: &str) -> Option<RefundStatus> {
        [RefundStatus::Pending, RefundStatus::Succeeded, RefundStatus::Failed]
            .into_iter()
            .find(|v| v.as_str() == s)
    }
}

impl fmt::Display for RefundStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refund to store.
#[derive(Clone, Debug)]
pub struct NewRefund {
    /// The merchant's name.
    pub merchant: String,
    /// The order refunded.
    pub out_trade_no: OutTradeNo,
    /// The refund number (unique per merchant, for ever).
    pub out_refund_no: OutRefundNo,
    /// How much.
    pub amount_fen: Fen,
    /// Shown to the payer (`refund_desc`).
    pub reason: Option<String>,
    /// A digest of the parameters: the same number with others is a conflict.
    pub request_hash: String,
    /// When to look at it if nothing happens (Unix ms).
    pub first_check_at: Millis,
    /// Now (Unix ms).
    pub now: Millis,
}

/// A stored refund.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refund {
    /// Row id.
    pub id: i64,
    /// The order's row id.
    pub order_id: i64,
    /// The merchant's name.
    pub merchant: String,
    /// The order refunded.
    pub out_trade_no: OutTradeNo,
    /// The refund number.
    pub out_refund_no: OutRefundNo,
    /// How much.
    pub amount_fen: Fen,
    /// Shown to the payer.
    pub reason: Option<String>,
    /// Status.
    pub status: RefundStatus,
    /// Where the `refund` call stands (`created`: WeChat Pay accepted it).
    pub upstream: Upstream,
    /// Why WeChat Pay refused it or did not answer.
    pub upstream_error: Option<String>,
    /// WeChat Pay's refund number, once it accepted the refund.
    pub refund_id: Option<String>,
    /// Created (Unix ms).
    pub created_at: Millis,
    /// Last changed (Unix ms).
    pub updated_at: Millis,
    /// Accepted by WeChat Pay (Unix ms): the day of its bill row.
    pub accepted_at: Option<Millis>,
    /// Succeeded or failed (Unix ms).
    pub settled_at: Option<Millis>,
    /// The digest of the parameters.
    pub request_hash: String,
}

/// The result of storing a refund.
#[derive(Clone, Debug)]
pub enum RefundCreated {
    /// A new refund, with the order's amount now reserved for it.
    New(Refund),
    /// The number was taken: here is the refund that has it.
    Existing(Refund),
    /// No such order.
    NoOrder,
    /// The order is not paid.
    NotPaid(OrderStatus),
    /// The refunds of the order would add up to more than its amount.
    Exceeds {
        /// What can still be refunded.
        available: Fen,
    },
}

/// A refund's settlement reported by WeChat Pay (a decrypted notification or a verified
/// `refundquery` answer), checked against the stored refund before anything changes.
#[derive(Clone, Debug)]
pub struct RefundResult {
    /// The merchant's name.
    pub merchant: String,
    /// The refund number.
    pub out_refund_no: OutRefundNo,
    /// The order it says it belongs to.
    pub out_trade_no: OutTradeNo,
    /// WeChat Pay's refund number.
    pub refund_id: String,
    /// The amount it says.
    pub amount_fen: Fen,
    /// Succeeded (else failed).
    pub succeeded: bool,
    /// WeChat Pay's status word (`SUCCESS`, `REFUNDCLOSE`, `CHANGE`).
    pub upstream_status: String,
    /// When it settled (Unix ms).
    pub settled_at: Millis,
    /// Where the fact comes from.
    pub source: Source,
    /// Now (Unix ms).
    pub now: Millis,
}

/// What a refund result did.
#[derive(Clone, Debug)]
pub enum RefundOutcome {
    /// The refund was settled now (its event and outbox row were written).
    Applied(Refund),
    /// It was already settled this way: nothing changed.
    AlreadySettled(Refund),
    /// No refund with this number was asked for: nothing changed.
    UnknownRefund,
    /// The refund belongs to another order: nothing changed.
    WrongOrder,
    /// Another amount than the one asked for: nothing changed.
    AmountMismatch {
        /// The stored amount.
        expected: Fen,
        /// The amount reported.
        got: Fen,
    },
    /// It was settled the other way already (a succeeded refund never fails later).
    Conflict(Refund),
}

impl RefundOutcome {
    /// The verdict recorded with a notification.
    pub fn verdict(&self) -> Verdict {
        match self {
            RefundOutcome::Applied(_) => Verdict::Applied,
            RefundOutcome::AlreadySettled(_) => Verdict::Duplicate,
            RefundOutcome::UnknownRefund => Verdict::UnknownRefund,
            RefundOutcome::WrongOrder => Verdict::WrongOrder,
            RefundOutcome::AmountMismatch { .. } => Verdict::AmountMismatch,
            RefundOutcome::Conflict(_) => Verdict::StatusConflict,
        }
    }
}

/// A refund WeChat Pay has that wxpay did not ask for (made in the merchant platform, or
/// lost locally), confirmed by `refundquery`, recorded by reconciliation.
#[derive(Clone, Debug)]
pub struct ImportedRefund {
    /// The merchant's name.
    pub merchant: String,
    /// The order refunded.
    pub out_trade_no: OutTradeNo,
    /// The refund number.
    pub out_refund_no: OutRefundNo,
    /// WeChat Pay's refund number.
    pub refund_id: String,
    /// How much.
    pub amount_fen: Fen,
    /// Its status per `refundquery`.
    pub status: RefundStatus,
    /// When WeChat Pay accepted it (Unix ms; the bill's row time).
    pub accepted_at: Millis,
    /// Why it is recorded (for the order's history).
    pub detail: serde_json::Value,
    /// Now (Unix ms).
    pub now: Millis,
}

/// How a pending refund settles, for the engines.
#[derive(Clone, Debug)]
pub(crate) struct Settlement<'a> {
    /// Succeeded (else failed).
    pub succeeded: bool,
    /// WeChat Pay's refund number, when known.
    pub wechat_refund_id: Option<&'a str>,
    /// When (Unix ms).
    pub settled_at: Millis,
    /// The order's history entry.
    pub detail: serde_json::Value,
    /// Why it failed.
    pub error: Option<&'a str>,
}

/// Whose a day's daily reconciliation is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DailyClaim {
    /// This caller's: run it.
    Claimed,
    /// Another run (or gateway) is at it.
    Running,
    /// It ran already.
    Done,
}

/// A platform certificate downloaded from WeChat Pay for a merchant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeptCertificate {
    /// Its serial, upper-case hex.
    pub serial_no: String,
    /// The certificate, PEM.
    pub pem: String,
    /// HMAC-SHA256 of `pem` keyed with the merchant's APIv3 key, hex: what binds the row to
    /// the key whose encryption authenticated the download.
    pub mac: String,
    /// When it stops being trusted: the earlier of its own expiry and the one listed.
    pub not_after: Millis,
    /// When it was downloaded.
    pub fetched_at: Millis,
}

/// A reconciliation run, as kept for the console.
#[derive(Clone, Debug)]
pub struct ReconciliationRecord {
    /// The merchant's name.
    pub merchant: String,
    /// The bill's day, `YYYY-MM-DD`.
    pub bill_date: String,
    /// `command` or `daily`.
    pub kind: String,
    /// Started (Unix ms).
    pub started_at: Millis,
    /// Finished (Unix ms).
    pub finished_at: Millis,
    /// Whether the books balanced (after repair, when asked).
    pub balanced: bool,
    /// Differences left.
    pub differences: i64,
    /// Differences repaired.
    pub repaired: i64,
    /// The whole report (JSON).
    pub report: String,
}

/// A reconciliation run as the console lists it: one still running has no outcome yet.
#[derive(Clone, Debug)]
pub struct ReconciliationRun {
    /// The merchant's name.
    pub merchant: String,
    /// The bill's day, `YYYY-MM-DD`.
    pub bill_date: String,
    /// `command` or `daily`.
    pub kind: String,
    /// Started.
    pub started_at: Millis,
    /// Finished, when it has.
    pub finished_at: Option<Millis>,
    /// Whether the books balanced (after repair, when asked).
    pub balanced: Option<bool>,
    /// Differences left.
    pub differences: Option<i64>,
    /// Differences repaired.
    pub repaired: Option<i64>,
    /// The whole report (JSON).
    pub report: Option<String>,
}

/// The statement of [`Store::reconciliations`] for both engines (`?1`: how many); the
/// four-byte integers of PostgreSQL widened.
pub(crate) const RECONCILIATIONS: &str = "SELECT merchant, bill_date, kind, started_at, finished_at, \
     CAST(balanced AS BIGINT), CAST(differences AS BIGINT), CAST(repaired AS BIGINT), report \
     FROM reconciliations ORDER BY id DESC LIMIT ?1";

/// Which notification.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoticeKind {
    /// A payment notification.
    Payment,
    /// A refund notification.
    Refund,
}

impl NoticeKind {
    /// The name in records and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            NoticeKind::Payment => "payment",
            NoticeKind::Refund => "refund",
        }
    }
}

/// What became of a received notification: its record's verdict and its metric's label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// It changed an order or a refund.
    Applied,
    /// It was applied before: nothing changed.
    Duplicate,
    /// No such order.
    UnknownOrder,
    /// Another amount than the order's or the refund's.
    AmountMismatch,
    /// The transaction belongs to another payment.
    TransactionConflict,
    /// Another currency than the order's.
    CurrencyMismatch,
    /// A verified report of a failed payment: kept, and the order checked.
    PaymentFailed,
    /// No such refund was asked for.
    UnknownRefund,
    /// The refund belongs to another order.
    WrongOrder,
    /// It contradicts the refund's recorded settlement.
    StatusConflict,
    /// A refund not settled yet: kept.
    NotSettled,
    /// A refund's failure, to be confirmed by a signed query.
    ToConfirm,
    /// Refused before verification: nothing in it is trusted.
    Rejected,
}

impl Verdict {
    /// Every verdict.
    pub const ALL: [Verdict; 13] = [
        Verdict::Applied,
        Verdict::Duplicate,
        Verdict::UnknownOrder,
        Verdict::AmountMismatch,
        Verdict::TransactionConflict,
        Verdict::CurrencyMismatch,
        Verdict::PaymentFailed,
        Verdict::UnknownRefund,
        Verdict::WrongOrder,
        Verdict::StatusConflict,
        Verdict::NotSettled,
        Verdict::ToConfirm,
        Verdict::Rejected,
    ];

    /// The name in records and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Applied => "applied",
            Verdict::Duplicate => "duplicate",
            Verdict::UnknownOrder => "unknown_order",
            Verdict::AmountMismatch => "amount_mismatch",
            Verdict::TransactionConflict => "transaction_conflict",
            Verdict::CurrencyMismatch => "currency_mismatch",
            Verdict::PaymentFailed => "payment_failed",
            Verdict::UnknownRefund => "unknown_refund",
            Verdict::WrongOrder => "wrong_order",
            Verdict::StatusConflict => "status_conflict",
            Verdict::NotSettled => "not_settled",
            Verdict::ToConfirm => "to_confirm",
            Verdict::Rejected => "rejected",
        }
    }

    /// Reads a name.
    pub fn parse(s: &str) -> Option<Verdict> {
        Verdict::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A received notification, kept raw with its verdict.
#[derive(Clone, Debug)]
pub struct NotificationRecord {
    /// When (Unix ms).
    pub received_at: Millis,
    /// Which notification.
    pub kind: NoticeKind,
    /// The merchant, when found.
    pub merchant: Option<String>,
    /// The order number as the notification names it, when readable: the record of a
    /// rejected notification keeps what its sender wrote, valid or not.
    pub out_trade_no: Option<String>,
    /// The transaction, when readable.
    pub transaction_id: Option<String>,
    /// What became of it. `None` only on a record handed to [`Store::apply_payment`] or
    /// [`Store::apply_refund`], which decide the verdict and set it in their transaction.
    pub verdict: Option<Verdict>,
    /// Why it was rejected.
    pub reason: Option<String>,
    /// The body as received (lossily decoded, truncated: 16 KiB for verified notifications,
    /// [`REJECTED_BODY_KEPT`] for rejected ones).
    pub body: String,
    /// The address it came from (kept for rejected notifications).
    pub peer: Option<String>,
    /// The SHA-256 of the whole body, hex (kept for rejected notifications).
    pub body_sha256: Option<String>,
}

/// How much of a rejected notification's body is kept: enough to see what it was.
pub const REJECTED_BODY_KEPT: usize = 1024;

/// An idempotency key, with the request that claims or owns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdemKey {
    /// Whose keys (a digest of the bearer token, and the route).
    pub scope: String,
    /// The `Idempotency-Key`.
    pub key: String,
    /// The request's own random token.
    pub owner: String,
}

/// An idempotency key's state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IdemClaim {
    /// The key is new, or taken over: this request owns it now.
    Claimed {
        /// When the key was first made (Unix ms): the same for every owner.
        created_at: Millis,
    },
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

/// A key's state from its row: answered when both the status and the body are there.
pub(crate) fn idem_state(request_hash: String, status: Option<i64>, response: Option<String>) -> IdemClaim {
    match (status, response) {
        (Some(s), Some(body)) => IdemClaim::Done {
            request_hash,
            status: u16::try_from(s).unwrap_or(500),
            response: body,
        },
        _ => IdemClaim::InProgress { request_hash },
    }
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
    pub created_at: Millis,
    /// Attempts so far.
    pub attempts: i64,
}

/// One Beijing day's figures, for the console's dashboard.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Daily {
    /// The day, counted in days from 1970-01-01 in Beijing.
    pub day: i64,
    /// Orders created that day.
    pub orders: i64,
    /// Of those, the ones paid.
    pub paid: i64,
    /// Their amount, in fen.
    pub paid_fen: i64,
    /// What was refunded of them, in fen.
    pub refunded_fen: i64,
    /// Notifications rejected that day.
    pub rejected: i64,
}

/// The day of a moment in Beijing, as [`Daily::day`] counts it, in SQL over a column of Unix
/// milliseconds (both engines divide integers as integers).
fn beijing_day_sql(column: &str) -> String {
    format!("(({column} + 28800000) / 86400000)")
}

/// The statements of [`Store::daily`] for both engines (`?1`, `?2`: the window): the orders
/// created in it by day, then the rejected notifications received in it by day.
pub(crate) fn daily_sql() -> (String, String) {
    let orders = format!(
        "SELECT {day} AS day, COUNT(*), \
         CAST(SUM(CASE WHEN paid_at IS NOT NULL THEN 1 ELSE 0 END) AS BIGINT), \
         CAST(SUM(CASE WHEN paid_at IS NOT NULL THEN amount_fen ELSE 0 END) AS BIGINT), \
         CAST(SUM(refunded_fen) AS BIGINT) \
         FROM orders WHERE created_at >= ?1 AND created_at < ?2 GROUP BY day ORDER BY day",
        day = beijing_day_sql("created_at")
    );
    let rejected = format!(
        "SELECT {day} AS day, COUNT(*) FROM notifications \
         WHERE verdict = 'rejected' AND received_at >= ?1 AND received_at < ?2 GROUP BY day ORDER BY day",
        day = beijing_day_sql("received_at")
    );
    (orders, rejected)
}

/// The days of both statements of [`daily_sql`] merged, the earliest first.
pub(crate) fn merge_daily(orders: Vec<Daily>, rejected: Vec<(i64, i64)>) -> Vec<Daily> {
    let mut days: std::collections::BTreeMap<i64, Daily> = orders.into_iter().map(|d| (d.day, d)).collect();
    for (day, n) in rejected {
        days.entry(day)
            .or_insert_with(|| Daily {
                day,
                ..Daily::default()
            })
            .rejected = n;
    }
    days.into_values().collect()
}

/// Which notifications to read.
#[derive(Clone, Debug)]
pub enum NoticesOf {
    /// The rejected ones (forged, unreadable, of an unknown merchant, …).
    Rejected,
    /// Those that named this order of this merchant.
    Order {
        /// The merchant's configured name.
        merchant: String,
        /// The order's number.
        out_trade_no: String,
    },
}

impl NoticesOf {
    /// The statement for both engines, `param(n)` writing the n-th placeholder, and its text
    /// values in order; how many to read is the placeholder after them.
    pub(crate) fn query(&self, param: impl Fn(usize) -> String) -> (String, Vec<&str>) {
        const COLUMNS: &str = "received_at, kind, merchant, out_trade_no, verdict, reason, peer, body, body_sha256";
        match self {
            NoticesOf::Rejected => (
                format!(
                    "SELECT {COLUMNS} FROM notifications WHERE verdict = 'rejected' ORDER BY id DESC LIMIT {}",
                    param(1)
                ),
                Vec::new(),
            ),
            NoticesOf::Order { merchant, out_trade_no } => (
                format!(
                    "SELECT {COLUMNS} FROM notifications WHERE merchant = {} AND out_trade_no = {} \
                     ORDER BY id DESC LIMIT {}",
                    param(1),
                    param(2),
                    param(3)
                ),
                vec![merchant.as_str(), out_trade_no.as_str()],
            ),
        }
    }
}

/// A notification as it was recorded.
#[derive(Clone, Debug)]
pub struct Notice {
    /// When it arrived.
    pub received_at: Millis,
    /// `payment` or `refund`.
    pub kind: String,
    /// The merchant, when found.
    pub merchant: Option<String>,
    /// The order number it named, when readable.
    pub out_trade_no: Option<String>,
    /// What became of it (`applied`, `duplicate`, `rejected`, …).
    pub verdict: String,
    /// Why, when it was not applied.
    pub reason: Option<String>,
    /// Where it came from (kept for rejected ones).
    pub peer: Option<String>,
    /// The body as kept (truncated).
    pub body: String,
    /// The SHA-256 of the whole body (kept for rejected ones).
    pub body_sha256: Option<String>,
}

/// A call to WeChat Pay about an order that changed nothing: a query answered `NOTPAY`, a
/// query or a close that failed. The order keeps the last one beside its count of checks,
/// rather than one event per check, so that its history grows only with what happened to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Call {
    /// When it was made (Unix ms).
    pub at: Millis,
    /// What WeChat Pay said, or why there was no answer (`query: NOTPAY`, `close failed: …`).
    pub said: String,
}

/// How an order's checks with WeChat Pay went.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Checks {
    /// How many times its check was scheduled after one was made.
    pub checks: i64,
    /// The last call that changed nothing, if any.
    pub last: Option<Call>,
}

/// Reads the `checks`, `last_call_at` and `last_call` columns of an order (`?1`).
pub(crate) const CHECKS_OF_ORDER: &str =
    "SELECT CAST(checks AS BIGINT), last_call_at, last_call FROM orders WHERE id = ?1";

/// Builds [`Checks`] from its columns; a call without its time (or a time without its call)
/// cannot be shown, so it is left out.
pub(crate) fn checks_from(checks: i64, at: Option<Millis>, said: Option<String>) -> Checks {
    Checks {
        checks,
        last: at.zip(said).map(|(at, said)| Call { at, said }),
    }
}

/// Reschedules an unpaid order's check (`?1`: when, `?2`: its id) and counts it; with a call
/// (`?3`: when, `?4`: what was said), keeps that as the order's last call.
pub(crate) const SCHEDULE_ORDER_CHECK: &str = "UPDATE orders SET next_check_at = ?1, checks = checks + 1, \
     last_call_at = COALESCE(?3, last_call_at), last_call = COALESCE(?4, last_call) WHERE id = ?2 AND status = 'pending'";

/// The columns of a [`Delivery`], in its fields' order, for both engines.
/// (`attempts` is an `INTEGER`, four bytes on PostgreSQL: widened here for both.)
macro_rules! delivery_select {
    () => {
        "SELECT x.id, x.type, o.out_trade_no, o.merchant, x.created_at, CAST(x.attempts AS BIGINT), \
         x.next_attempt_at, x.last_error, x.delivered_at FROM outbox x LEFT JOIN orders o ON o.id = x.order_id "
    };
}

/// The undelivered events, the next due first (`?1`: how many): the partial index
/// `outbox_due` holds exactly these rows, in this order.
pub(crate) const UNDELIVERED: &str = concat!(
    delivery_select!(),
    "WHERE x.delivered_at IS NULL ORDER BY x.next_attempt_at LIMIT ?1"
);

/// Every event about one order (`?1`: its id), oldest first, through `outbox_by_order`.
pub(crate) const DELIVERIES_OF_ORDER: &str =
    concat!(delivery_select!(), "WHERE x.order_id = ?1 ORDER BY x.created_at, x.id");

/// An event of the outbox and how its delivery to the webhook went, as the console shows it.
#[derive(Clone, Debug)]
pub struct Delivery {
    /// The event id.
    pub id: String,
    /// `order.paid`, `order.closed`, …
    pub event_type: String,
    /// The number of the order it is about, when it is about one.
    pub out_trade_no: Option<String>,
    /// The merchant of that order.
    pub merchant: Option<String>,
    /// Created (Unix ms).
    pub created_at: Millis,
    /// Attempts so far.
    pub attempts: i64,
    /// When the next attempt is due.
    pub next_attempt_at: Millis,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// When the webhook took it (a 2xx), if it has.
    pub delivered_at: Option<Millis>,
}

/// Figures for the metrics.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// Orders per status.
    pub orders_by_status: Vec<(String, i64)>,
    /// Refunds per status.
    pub refunds_by_status: Vec<(String, i64)>,
    /// Events not yet delivered.
    pub outbox_backlog: i64,
    /// The age of the oldest undelivered event, in ms.
    pub outbox_oldest_age_ms: Option<i64>,
}

/// Which orders a listing shows; each field that is set narrows it.
#[derive(Clone, Debug, Default)]
pub struct OrderFilter {
    /// Only orders in this status.
    pub status: Option<OrderStatus>,
    /// Only this merchant's (its configured name).
    pub merchant: Option<String>,
    /// Only orders created at or after this.
    pub created_from: Option<Millis>,
    /// Only orders created before this.
    pub created_before: Option<Millis>,
    /// Only the orders whose `out_trade_no`, `transaction_id` or `openid` is exactly this.
    pub search: Option<String>,
}

/// A value of an [`OrderFilter`]'s clause, for an engine to bind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum FilterValue {
    Text(String),
    Int(i64),
}

impl OrderFilter {
    /// The `WHERE` condition of the orders this lets through before the row id `before`, and
    /// its values in order; `param(n)` writes the n-th placeholder (`?n`, `$n`). Only the
    /// filters that are set appear: a catch-all `(? IS NULL OR …)` would keep SQLite and
    /// PostgreSQL alike from using the index of any of them (a search measured 160 ms at a
    /// million orders that way, against well under a millisecond through the indexes).
    pub(crate) fn condition(&self, before: Option<i64>, param: impl Fn(usize) -> String) -> (String, Vec<FilterValue>) {
        let mut terms: Vec<String> = Vec::new();
        let mut values: Vec<FilterValue> = Vec::new();
        let mut term = |values: &mut Vec<FilterValue>, v: FilterValue, sql: &dyn Fn(&str) -> String| {
            values.push(v);
            terms.push(sql(&param(values.len())));
        };
        if let Some(s) = self.status {
            term(&mut values, FilterValue::Text(s.as_str().to_owned()), &|p| {
                format!("status = {p}")
            });
        }
        if let Some(m) = &self.merchant {
            term(&mut values, FilterValue::Text(m.clone()), &|p| {
                format!("merchant = {p}")
            });
        }
        if let Some(t) = self.created_from {
            term(&mut values, FilterValue::Int(t.unix_ms()), &|p| {
                format!("created_at >= {p}")
            });
        }
        if let Some(t) = self.created_before {
            term(&mut values, FilterValue::Int(t.unix_ms()), &|p| {
                format!("created_at < {p}")
            });
        }
        if let Some(q) = &self.search {
            term(&mut values, FilterValue::Text(q.clone()), &|p| {
                format!("(out_trade_no = {p} OR transaction_id = {p} OR openid = {p})")
            });
        }
        if let Some(id) = before {
            term(&mut values, FilterValue::Int(id), &|p| format!("id < {p}"));
        }
        let condition = if terms.is_empty() {
            "1 = 1".to_owned()
        } else {
            terms.join(" AND ")
        };
        (condition, values)
    }
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
    fn set_prepay(&self, order_id: i64, prepay_id: String, now: Millis) -> Fut<'_, Order>;

    /// Records that `unifiedorder` failed: for good (`rejected`: the order becomes
    /// `failed`) or without an answer (`unknown`: it stays `pending` and is checked later).
    fn set_upstream_failure(&self, order_id: i64, rejected: bool, error: String, now: Millis) -> Fut<'_, Order>;

    /// An order by merchant and number.
    fn order(&self, merchant: String, out_trade_no: OutTradeNo) -> Fut<'_, Option<Order>>;

    /// An order's history, oldest first.
    fn events(&self, order_id: i64) -> Fut<'_, Vec<Event>>;

    /// The orders `filter` lets through, newest first, before the row id `before`.
    fn list_orders(&self, filter: OrderFilter, limit: u32, before: Option<i64>) -> Fut<'_, Vec<Order>>;

    /// Applies a verified payment in one transaction, and records the notification (if it
    /// came from one) with its verdict in the same transaction.
    fn apply_payment(&self, payment: Payment, notification: Option<NotificationRecord>) -> Fut<'_, PaymentOutcome>;

    /// Moves a pending order to `closed` (WeChat Pay confirmed the close), with its event and
    /// `order.closed` outbox row. `None` when it was not pending.
    fn close_order(&self, order_id: i64, reason: String, now: Millis) -> Fut<'_, Option<Order>>;

    /// Moves a pending order to `failed`. `None` when it was not pending.
    fn fail_order(&self, order_id: i64, reason: String, now: Millis) -> Fut<'_, Option<Order>>;

    /// Adds an entry to an order's history.
    fn add_event(&self, order_id: i64, kind: String, detail: serde_json::Value, now: Millis) -> Fut<'_, ()>;

    /// Records notifications that changed nothing (rejected before they reached an order, or
    /// verified but settling nothing), in one transaction.
    fn record_notifications(&self, records: Vec<NotificationRecord>) -> Fut<'_, ()>;

    /// Claims an idempotency key for a request (`owner`, a token of its own), or tells what
    /// happened to it. A key whose owner has not renewed it for `lease` is taken over by a
    /// request with the same digest (its first owner died or could not record its answer).
    fn idem_claim(
        &self,
        key: IdemKey,
        request_hash: String,
        now: Millis,
        lease: std::time::Duration,
    ) -> Fut<'_, IdemClaim>;

    /// Renews the owner's hold on a key still in progress; false when it is no longer the
    /// owner's.
    fn idem_renew(&self, key: IdemKey, now: Millis) -> Fut<'_, bool>;

    /// Stores the answer given to the request that owns a key; false (and nothing stored)
    /// when the key is no longer the owner's.
    fn idem_finish(&self, key: IdemKey, status: u16, response: String) -> Fut<'_, bool>;

    /// Releases a key whose request ended without a definite answer, so a retry runs again;
    /// nothing when the key is no longer the owner's.
    fn idem_release(&self, key: IdemKey) -> Fut<'_, ()>;

    /// Forgets up to `limit` idempotency keys made before `created_before` (Unix ms); returns
    /// how many.
    fn idem_purge(&self, created_before: Millis, limit: u32) -> Fut<'_, u64>;

    /// Claims up to `limit` pending orders due for a check (`next_check_at <= now`), moving
    /// their next check to `lease_until` so that no one else takes them meanwhile.
    fn claim_checks(&self, now: Millis, lease_until: Millis, limit: u32) -> Fut<'_, Vec<Order>>;

    /// Sets when a pending order is checked next (`None`: never), counting the check.
    fn schedule_check(&self, order_id: i64, at: Option<Millis>, call: Option<Call>) -> Fut<'_, ()>;

    /// How an order's checks with WeChat Pay went.
    fn checks(&self, order_id: i64) -> Fut<'_, Checks>;

    /// Claims up to `limit` undelivered events that are due, leasing them until `lease_until`.
    fn claim_outbox(&self, now: Millis, lease_until: Millis, limit: u32) -> Fut<'_, Vec<OutboxEvent>>;

    /// Marks an event delivered.
    fn outbox_delivered(&self, id: String, now: Millis) -> Fut<'_, ()>;

    /// Schedules another attempt of an event.
    fn outbox_retry(&self, id: String, next_at: Millis, error: String) -> Fut<'_, ()>;

    /// The figures of each Beijing day from `from` to before `to` that had orders or rejected
    /// notifications, the earliest first.
    fn daily(&self, from: Millis, to: Millis) -> Fut<'_, Vec<Daily>>;

    /// The latest reconciliation runs, newest first.
    fn reconciliations(&self, limit: u32) -> Fut<'_, Vec<ReconciliationRun>>;

    /// The notifications `of` names, newest first.
    fn notifications(&self, of: NoticesOf, limit: u32) -> Fut<'_, Vec<Notice>>;

    /// The events not delivered yet, the next due first, with their order's number.
    fn undelivered(&self, limit: u32) -> Fut<'_, Vec<Delivery>>;

    /// Every event about an order, delivered or not, oldest first.
    fn deliveries(&self, order_id: i64) -> Fut<'_, Vec<Delivery>>;

    /// Makes an undelivered event due at `now` (an operator's retry), unless its next attempt
    /// is due by `lease_end` (`now` plus the delivery lease) anyway: a claimed event waits
    /// exactly until its lease ends, so this never releases one being delivered to a second
    /// deliverer. False when there is no such event, or it was delivered or is due by then.
    fn deliver_now(&self, id: String, now: Millis, lease_end: Millis) -> Fut<'_, bool>;

    /// Stores a refund of a paid order with its event, raising the order's reserved refund
    /// sum in the same transaction (the database refuses a sum above the amount), or says
    /// why not.
    fn create_refund(&self, new: NewRefund) -> Fut<'_, RefundCreated>;

    /// A refund by merchant and number.
    fn refund(&self, merchant: String, out_refund_no: OutRefundNo) -> Fut<'_, Option<Refund>>;

    /// An order's refunds, oldest first.
    fn refunds_of(&self, order_id: i64) -> Fut<'_, Vec<Refund>>;

    /// Records that WeChat Pay accepted a refund (`upstream = created`), and when to check it.
    fn refund_accepted(
        &self,
        refund_id: i64,
        wechat_refund_id: String,
        now: Millis,
        next_check_at: Millis,
    ) -> Fut<'_, Refund>;

    /// Records that the `refund` call failed: for good (`rejected`: the refund fails, its
    /// reservation is released and `refund.failed` is queued) or without an answer
    /// (`unknown`: it stays pending and is sent again, identical, at `next_check_at`).
    fn refund_upstream_failure(
        &self,
        refund_id: i64,
        rejected: bool,
        error: String,
        now: Millis,
        next_check_at: Millis,
    ) -> Fut<'_, Refund>;

    /// Applies a refund's settlement in one transaction (refund, order sums and status,
    /// event, outbox row), and records the notification (if it came from one) with its
    /// verdict in the same transaction.
    fn apply_refund(&self, result: RefundResult, notification: Option<NotificationRecord>) -> Fut<'_, RefundOutcome>;

    /// Claims up to `limit` pending refunds due for a check, leasing them until `lease_until`.
    fn claim_refund_checks(&self, now: Millis, lease_until: Millis, limit: u32) -> Fut<'_, Vec<Refund>>;

    /// Sets when a pending refund is checked next (`None`: never), counting the check.
    fn schedule_refund_check(&self, refund_id: i64, at: Option<Millis>) -> Fut<'_, ()>;

    /// Paid orders of a merchant whose payment time is in `[from, to)` (Unix ms).
    fn orders_paid_between(&self, merchant: String, from: Millis, to: Millis) -> Fut<'_, Vec<Order>>;

    /// Orders of a merchant by number (those that exist).
    fn orders_by_numbers(&self, merchant: String, numbers: Vec<OutTradeNo>) -> Fut<'_, Vec<Order>>;

    /// Refunds of a merchant accepted by WeChat Pay in `[from, to)` (Unix ms).
    fn refunds_accepted_between(&self, merchant: String, from: Millis, to: Millis) -> Fut<'_, Vec<Refund>>;

    /// Refunds of a merchant by number (those that exist).
    fn refunds_by_numbers(&self, merchant: String, numbers: Vec<OutRefundNo>) -> Fut<'_, Vec<Refund>>;

    /// Corrects a paid order's amount to what WeChat Pay charged (reconciliation, confirmed
    /// by `orderquery`), with a history entry. `None` when the order is gone, its refunds
    /// exceed the new amount, or one of its refunds is still being sent (a repeated `refund`
    /// must carry the same `total_fee`).
    fn correct_amount(
        &self,
        order_id: i64,
        amount_fen: Fen,
        detail: serde_json::Value,
        now: Millis,
    ) -> Fut<'_, Option<Order>>;

    /// Sets when WeChat Pay accepted a refund to the time its bill says (reconciliation),
    /// with a history entry on its order.
    fn move_refund_accepted_at(
        &self,
        refund_id: i64,
        accepted_at: Millis,
        detail: serde_json::Value,
        now: Millis,
    ) -> Fut<'_, ()>;

    /// Records a refund WeChat Pay has and wxpay did not ask for, with its effect on the
    /// order (sums, status), a history entry and, when settled, its outbox event.
    fn import_refund(&self, refund: ImportedRefund) -> Fut<'_, RefundCreated>;

    /// Claims the daily reconciliation of a merchant's day, or says who has it.
    fn claim_daily_reconciliation(&self, merchant: String, bill_date: String, now: Millis) -> Fut<'_, DailyClaim>;

    /// Keeps the result of a reconciliation (a daily one updates its claim).
    fn record_reconciliation(&self, record: ReconciliationRecord) -> Fut<'_, ()>;

    /// Keeps the platform certificates downloaded for `merchant` (a serial kept before is
    /// replaced; those no longer listed stay, older, and are not trusted at a restart), so
    /// that a restart can verify before WeChat Pay answers again.
    fn keep_platform_certificates(&self, merchant: String, certificates: Vec<KeptCertificate>) -> Fut<'_, ()>;

    /// The platform certificates kept for `merchant`.
    fn platform_certificates(&self, merchant: String) -> Fut<'_, Vec<KeptCertificate>>;

    /// Figures for the metrics.
    fn stats(&self, now: Millis) -> Fut<'_, Stats>;
}

/// An event id: `evt_` and 24 random hex digits.
pub(crate) fn event_id() -> String {
    format!("evt_{}", crate::util::random_hex::<12>())
}

/// The JSON body of an outbox event: `{id, type, created_at, data}`.
pub(crate) fn event_payload(id: &str, event_type: &str, now: Millis, order: &Order) -> String {
    serde_json::json!({
        "id": id,
        "type": event_type,
        "created_at": now.rfc3339(),
        "data": {
            "merchant": order.merchant,
            "out_trade_no": order.out_trade_no,
            "status": order.status,
            "amount_fen": order.amount_fen,
            "refunded_fen": order.refunded_fen,
            "transaction_id": order.transaction_id,
            "paid_at": order.paid_at.map(Millis::rfc3339),
            "attach": order.attach,
        }
    })
    .to_string()
}

/// The JSON body of a refund's outbox event: `{id, type, created_at, data}`.
pub(crate) fn refund_event_payload(id: &str, event_type: &str, now: Millis, refund: &Refund, order: &Order) -> String {
    serde_json::json!({
        "id": id,
        "type": event_type,
        "created_at": now.rfc3339(),
        "data": {
            "merchant": refund.merchant,
            "out_refund_no": refund.out_refund_no,
            "out_trade_no": refund.out_trade_no,
            "refund_id": refund.refund_id,
            "amount_fen": refund.amount_fen,
            "status": refund.status,
            "reason": refund.reason,
            "settled_at": refund.settled_at.map(Millis::rfc3339),
            "upstream_error": refund.upstream_error,
            "order": {
                "status": order.status,
                "amount_fen": order.amount_fen,
                "refunded_fen": order.refunded_fen,
                "transaction_id": order.transaction_id,
            },
        }
    })
    .to_string()
}

/// A notification body as stored: lossy UTF-8, at most 16 KiB.
pub fn stored_body(body: &[u8]) -> String {
    truncated_body(body, 16 * 1024)
}

/// At most `max` bytes of a body, lossy UTF-8.
pub fn truncated_body(body: &[u8], max: usize) -> String {
    String::from_utf8_lossy(&body[..body.len().min(max)]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_order_filter_names_only_the_columns_it_filters_on() {
        let (sql, values) = OrderFilter::default().condition(None, |n| format!("?{n}"));
        assert_eq!((sql.as_str(), values.len()), ("1 = 1", 0));
        let f = OrderFilter {
            status: Some(OrderStatus::Paid),
            merchant: Some("default".into()),
            created_from: Some(Millis::from_unix_ms(1_000)),
            created_before: Some(Millis::from_unix_ms(2_000)),
            search: Some("o1".into()),
        };
        let (sql, values) = f.condition(Some(42), |n| format!("${n}"));
        assert_eq!(
            sql,
            "status = $1 AND merchant = $2 AND created_at >= $3 AND created_at < $4 \
             AND (out_trade_no = $5 OR transaction_id = $5 OR openid = $5) AND id < $6"
        );
        assert_eq!(
            values,
            [
                FilterValue::Text("paid".into()),
                FilterValue::Text("default".into()),
                FilterValue::Int(1_000),
                FilterValue::Int(2_000),
                FilterValue::Text("o1".into()),
                FilterValue::Int(42),
            ]
        );
        let only_search = OrderFilter {
            search: Some("x".into()),
            ..OrderFilter::default()
        };
        let (sql, _) = only_search.condition(Some(7), |n| format!("?{n}"));
        assert_eq!(
            sql,
            "(out_trade_no = ?1 OR transaction_id = ?1 OR openid = ?1) AND id < ?2"
        );
    }
}
