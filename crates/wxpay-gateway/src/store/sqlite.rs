//! The SQLite engine: WAL, `synchronous=FULL`, group commit on one writer thread.
//!
//! Every write is a closure sent to the writer thread. The thread takes all the writes
//! waiting at that moment, runs them in one `BEGIN IMMEDIATE` transaction, commits once (one
//! fsync for the lot), and only then answers each caller. When one write fails, the
//! transaction is rolled back and the others run again without it (see [`commit_batch`]), so
//! that one failing write does not undo the others. An answer therefore always means the
//! write is on disk, and a thousand concurrent notifications cost a handful of fsyncs.
//! Reads run on a few reader connections beside it, which WAL lets proceed during writes.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};

use super::rules::{
    self, OrderFacts, PaymentVerdict, RefundVerdict, Refunded, payment_refused, payment_verdict, refund_facts,
    refund_refused, refund_verdict,
};
use super::{CHECKS_OF_ORDER, Call, Checks, SCHEDULE_ORDER_CHECK, checks_from};
use super::{
    Created, DELIVERIES_OF_ORDER, DailyClaim, Delivery, Event, FilterValue, Fut, IdemClaim, IdemKey, ImportedRefund,
    KeptCertificate, NewOrder, NewRefund, Notice, NoticesOf, NotificationRecord, Order, OrderFilter, OrderStatus,
    OutboxEvent, Payment, PaymentOutcome, ReconciliationRecord, Refund, RefundCreated, RefundOutcome, RefundResult,
    RefundStatus, Settlement, Stats, Store, StoreError, UNDELIVERED, Verdict, col, event_id, event_payload,
    refund_event_payload,
};
use super::{Daily, RECONCILIATIONS, ReconciliationRun, daily_sql, merge_daily};
use crate::store::Damaged;
use crate::time::Millis;
use rusqlite::types::Type;
use wxpay_protocol::{Fen, OutRefundNo, OutTradeNo};

/// A moment is an `INTEGER` of Unix milliseconds.
impl rusqlite::ToSql for Millis {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        Ok(self.unix_ms().into())
    }
}

impl rusqlite::types::FromSql for Millis {
    fn column_result(v: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
        i64::column_result(v).map(Millis::from_unix_ms)
    }
}

const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../../migrations/sqlite/0001_init.sql")),
    (2, include_str!("../../migrations/sqlite/0002_refunds.sql")),
    (3, include_str!("../../migrations/sqlite/0003_idempotency_lease.sql")),
    (4, include_str!("../../migrations/sqlite/0004_rejections.sql")),
    (
        5,
        include_str!("../../migrations/sqlite/0005_platform_certificates.sql"),
    ),
    (6, include_str!("../../migrations/sqlite/0006_order_search.sql")),
    (7, include_str!("../../migrations/sqlite/0007_notification_reads.sql")),
    (8, include_str!("../../migrations/sqlite/0008_console_timeline.sql")),
    (9, include_str!("../../migrations/sqlite/0009_outbox_order.sql")),
];

/// The most writes committed together.
const MAX_BATCH: usize = 512;
/// Reads under way at once, each on a blocking thread with a connection of its own; the
/// connections are kept open for the next reads.
const READERS: usize = 4;
/// Of the [`READERS`], how many may serve heavy reads at once (the console's searches and
/// counts, reconciliation's day, the lists): the others stay free for the payment path and
/// `/readyz`, whatever the console or a reconciliation asks.
const HEAVY_READERS: usize = READERS / 2;

/// A write waiting for the writer thread. It runs inside a transaction the writer owns, and
/// may run again from the start when that transaction was rolled back; its caller is told
/// once, when its last run's transaction ended.
trait WriteJob: Send {
    /// Runs the write on the connection and keeps its result: whether it succeeded.
    fn run(&mut self, conn: &Connection) -> bool;
    /// Tells the caller the kept result, or `error` when the transaction did not commit (or
    /// never began: then the write never ran, since outside a transaction each statement
    /// would commit on its own while its caller is told it failed).
    fn finish(self: Box<Self>, error: Option<StoreError>);
}

type Job = Box<dyn WriteJob>;

/// A write, its result once run, and the channel the result goes back on.
struct Write<F, T> {
    f: F,
    result: Option<Result<T, StoreError>>,
    tx: tokio::sync::oneshot::Sender<Result<T, StoreError>>,
}

impl<F, T> WriteJob for Write<F, T>
where
    F: Fn(&Connection) -> Result<T, StoreError> + Send,
    T: Send,
{
    fn run(&mut self, conn: &Connection) -> bool {
        let result = (self.f)(conn);
        let ok = result.is_ok();
        self.result = Some(result);
        ok
    }

    fn finish(self: Box<Self>, error: Option<StoreError>) {
        let result = match (error, self.result) {
            (Some(e), _) => Err(e),
            (None, Some(r)) => r,
            (None, None) => Err(StoreError::Broken("a write was answered without being run".into())),
        };
        let _ = self.tx.send(result);
    }
}

/// The SQLite store.
pub struct SqliteStore {
    writer: mpsc::Sender<Job>,
    readers: Arc<Readers>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").field("path", &self.readers.path).finish()
    }
}

struct Readers {
    path: PathBuf,
    options: SqliteOptions,
    idle: Mutex<Vec<Connection>>,
    /// A read waits here, without a thread, until one of the [`READERS`] is free. Without
    /// it, a stall of the database (an fsync held up by a busy disk) made every request
    /// start a blocking thread that opened a connection of its own: in a soak the gateway
    /// reached 517 threads and 270 MiB.
    permits: Arc<tokio::sync::Semaphore>,
    /// Taken before `permits` by a heavy read: at most [`HEAVY_READERS`] at once.
    heavy: Arc<tokio::sync::Semaphore>,
    /// Reader connections opened so far.
    opened: std::sync::atomic::AtomicUsize,
}

/// How the SQLite store opens its connections.
#[derive(Clone, Copy, Debug)]
pub struct SqliteOptions {
    /// How long a write waits for another connection (another process, an operator's shell,
    /// `wxpay reconcile`) to release the database before it fails.
    pub busy_timeout: Duration,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            busy_timeout: Duration::from_secs(10),
        }
    }
}

fn open(path: &Path, options: SqliteOptions) -> Result<Connection, StoreError> {
    let conn = Connection::open(path)?;
    // FULL: a commit is on disk before it returns; the gateway answers SUCCESS to WeChat Pay
    // only after that, and WeChat Pay does not send again once answered.
    // temp_store = MEMORY: SQLite copies pages a statement may have to undo to the statement
    // journal; on disk that journal spills to a temporary file once it passes 64 KiB and is
    // then never truncated within a transaction (when the writer still ran each job under a
    // savepoint, those `pwrite`s were a fifth of the gateway's CPU per notification, measured
    // with perf). In memory it is a copy. It holds nothing durable: a crash loses only the
    // uncommitted transaction, as before.
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = FULL;
         PRAGMA foreign_keys = ON;
         PRAGMA temp_store = MEMORY;",
    )?;
    conn.busy_timeout(options.busy_timeout)?;
    // rusqlite keeps 16 prepared statements by default; the writer alone uses over fifty
    // (every operation's statements and the transaction control ones), and a statement
    // pushed out of the cache is parsed again on its next use.
    conn.set_prepared_statement_cache_capacity(128);
    Ok(conn)
}

/// Applies the migrations this program knows and the database lacks.
fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)",
    )?;
    let newest: i64 = conn.query_row("SELECT COALESCE(MAX(version), 0) FROM schema_migrations", [], |r| {
        r.get(0)
    })?;
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
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        tx.execute_batch(sql)
            .map_err(|e| StoreError::Schema(format!("migration {version}: {e}")))?;
        tx.execute(
            "INSERT INTO schema_migrations (version, applied_at) VALUES (?1, ?2)",
            params![version, crate::time::now_ms()],
        )?;
        tx.commit()?;
        tracing::info!(version, "applied SQLite migration");
    }
    Ok(())
}

/// The write connection: the file created if needed (its folder must exist: a mistyped path
/// should not quietly make folders), brought up to date.
fn open_migrated(path: &Path, options: SqliteOptions) -> Result<Connection, StoreError> {
    create_private(path).map_err(|e| StoreError::Io {
        what: format!("cannot create {}", path.display()),
        source: Arc::new(e),
    })?;
    let mut conn = open(path, options)?;
    migrate(&mut conn)?;
    Ok(conn)
}

/// Creates the database file readable by its owner only (0600) when it does not exist yet: it
/// holds every order, openid and notification. SQLite gives the `-wal` and `-shm` files it
/// makes beside it the same permissions.
fn create_private(path: &Path) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

impl SqliteStore {
    /// Opens (creating it if needed) the database at `path`, applies the migrations and
    /// starts the writer thread.
    ///
    /// # Errors
    /// When the file cannot be opened or the schema cannot be brought up to date.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        SqliteStore::open_with(path, SqliteOptions::default())
    }

    /// [`SqliteStore::open`] with other options.
    ///
    /// # Errors
    /// As [`SqliteStore::open`].
    pub fn open_with(path: &Path, options: SqliteOptions) -> Result<SqliteStore, StoreError> {
        let conn = open_migrated(path, options)?;
        let mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
        let sync: i64 = conn.query_row("PRAGMA synchronous", [], |r| r.get(0))?;
        tracing::info!(path = ?path.display(), journal_mode = %mode, synchronous = sync, "SQLite store open (synchronous 2 = FULL)");
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("wxpay-sqlite-writer".into())
            .spawn(move || writer(conn, rx))
            .map_err(|e| StoreError::Io {
                what: "cannot start the writer thread".into(),
                source: Arc::new(e),
            })?;
        Ok(SqliteStore {
            writer: tx,
            readers: Arc::new(Readers {
                path: path.to_owned(),
                options,
                idle: Mutex::new(Vec::new()),
                permits: Arc::new(tokio::sync::Semaphore::new(READERS)),
                heavy: Arc::new(tokio::sync::Semaphore::new(HEAVY_READERS)),
                opened: std::sync::atomic::AtomicUsize::new(0),
            }),
        })
    }

    /// Applies the migrations and returns (for `wxpay migrate`).
    ///
    /// # Errors
    /// As [`SqliteStore::open`].
    pub fn migrate_only(path: &Path) -> Result<(), StoreError> {
        open_migrated(path, SqliteOptions::default()).map(drop)
    }

    /// Queues a write for the writer thread. It must be re-runnable (`Fn`): when another
    /// write of its batch fails, the transaction is rolled back and the write runs again.
    fn write<T: Send + 'static>(
        &self,
        f: impl Fn(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Fut<'_, T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(Write { f, result: None, tx });
        let sent = self.writer.send(job);
        Box::pin(async move {
            sent.map_err(|_| StoreError::Stopped("the SQLite writer"))?;
            rx.await.map_err(|_| StoreError::Stopped("the SQLite writer"))?
        })
    }

    /// A read that touches a few rows by key: an order, its events, a refund, the ping.
    fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Fut<'_, T> {
        self.read_as(false, f)
    }

    /// A read that may scan many rows (searches, counts, a day's orders): it waits for one of
    /// the [`HEAVY_READERS`] first, so that heavy reads never hold every connection.
    fn read_heavy<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Fut<'_, T> {
        self.read_as(true, f)
    }

    fn read_as<T: Send + 'static>(
        &self,
        heavy: bool,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Fut<'_, T> {
        let readers = self.readers.clone();
        Box::pin(async move {
            let stopped = |_| StoreError::Stopped("the SQLite readers");
            let heavy = if heavy {
                Some(readers.heavy.clone().acquire_owned().await.map_err(stopped)?)
            } else {
                None
            };
            // Both held by the blocking task, so that a read whose caller went away still
            // counts until it has finished.
            let permit = readers.permits.clone().acquire_owned().await.map_err(stopped)?;
            tokio::task::spawn_blocking(move || {
                let _permits = (permit, heavy);
                let conn = readers.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
                let conn = match conn {
                    Some(c) => c,
                    None => {
                        readers.opened.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        open(&readers.path, readers.options)?
                    }
                };
                let result = f(&conn);
                let mut idle = readers.idle.lock().unwrap_or_else(|e| e.into_inner());
                if idle.len() < READERS {
                    idle.push(conn);
                }
                result
            })
            .await
            .map_err(StoreError::from)?
        })
    }
}

/// Runs a transaction control statement (`BEGIN IMMEDIATE`, `COMMIT`) from the connection's
/// statement cache.
fn control(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([])?;
    Ok(())
}

/// The writer thread: group commit. It takes every write waiting when it wakes (up to
/// [`MAX_BATCH`]) and commits them together.
fn writer(conn: Connection, rx: mpsc::Receiver<Job>) {
    while let Ok(first) = rx.recv() {
        let mut jobs = VecDeque::from([first]);
        while jobs.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => jobs.push_back(j),
                Err(_) => break,
            }
        }
        commit_batch(&conn, jobs);
    }
}

/// Runs writes in as few transactions as their failures allow, and answers each once its
/// last transaction ended.
///
/// There is no savepoint per write: a savepoint made SQLite copy every page a write touched
/// to the statement journal. Instead, when write `i` fails, the transaction is rolled back;
/// the `i` writes before it, which succeeded, run again as one transaction; then the failed
/// write runs first in the next one, where a failure is its own (it is answered with it and
/// the transaction rolled back); then the rest. A failure costs its batch one transaction
/// more, and a write that fails every time (a damaged row) runs twice at most.
fn commit_batch(conn: &Connection, mut jobs: VecDeque<Job>) {
    let mut limit = jobs.len();
    while !jobs.is_empty() {
        if let Err(e) = control(conn, "BEGIN IMMEDIATE") {
            // Another process holds the database past the busy timeout: fail what is left
            // without running any of it (one wait, not one per write).
            tracing::error!(error = ?e, jobs = jobs.len(), "SQLite write lock not obtained; the waiting writes fail");
            let e = StoreError::SqliteAt {
                at: "the database is locked by another connection",
                source: Arc::new(e),
            };
            jobs.into_iter().for_each(|job| job.finish(Some(e.clone())));
            std::thread::sleep(Duration::from_millis(10));
            return;
        }
        let n = limit.min(jobs.len());
        match jobs.iter_mut().take(n).position(|job| !job.run(conn)) {
            None => {
                let done = jobs.drain(..n);
                match control(conn, "COMMIT") {
                    Ok(()) => done.for_each(|job| job.finish(None)),
                    Err(e) => {
                        tracing::error!(error = ?e, "SQLite commit failed; the batch is rolled back");
                        let _ = conn.execute_batch("ROLLBACK");
                        let e = StoreError::from(e);
                        done.for_each(|job| job.finish(Some(e.clone())));
                    }
                }
                limit = jobs.len();
            }
            Some(0) => {
                // It ran first: its failure is its own. Undo it and answer it.
                let _ = conn.execute_batch("ROLLBACK");
                if let Some(job) = jobs.pop_front() {
                    job.finish(None);
                }
                limit = jobs.len();
            }
            Some(i) => {
                let _ = conn.execute_batch("ROLLBACK");
                tracing::warn!(ran = i, "a write failed; the writes before it run again without it");
                limit = i;
            }
        }
    }
}

const ORDER_COLUMNS: &str = "id, merchant, out_trade_no, appid, mch_id, description, amount_fen, refunded_fen, openid, attach, \
client_ip, status, upstream, upstream_error, prepay_id, prepay_at, transaction_id, created_at, updated_at, expires_at, paid_at, \
closed_at, request_hash";

fn order_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Order> {
    Ok(Order {
        id: r.get(0)?,
        merchant: r.get(1)?,
        out_trade_no: typed(2, Type::Text, col::trade_no(r.get(2)?))?,
        appid: r.get(3)?,
        mch_id: r.get(4)?,
        description: r.get(5)?,
        amount_fen: typed(6, Type::Integer, col::fen(r.get(6)?))?,
        refunded_fen: typed(7, Type::Integer, col::fen(r.get(7)?))?,
        openid: r.get(8)?,
        attach: r.get(9)?,
        client_ip: r.get(10)?,
        status: typed(11, Type::Text, col::order_status(r.get_ref(11)?.as_str()?))?,
        upstream: typed(12, Type::Text, col::upstream(r.get_ref(12)?.as_str()?))?,
        upstream_error: r.get(13)?,
        prepay_id: r.get(14)?,
        prepay_at: r.get(15)?,
        transaction_id: r.get(16)?,
        created_at: r.get(17)?,
        updated_at: r.get(18)?,
        expires_at: r.get(19)?,
        paid_at: r.get(20)?,
        closed_at: r.get(21)?,
        request_hash: r.get(22)?,
    })
}

/// A column's typed value, or rusqlite's error for a value of the wrong kind.
fn typed<T>(column: usize, kind: Type, v: Result<T, Damaged>) -> rusqlite::Result<T> {
    v.map_err(|e| rusqlite::Error::FromSqlConversionFailure(column, kind, Box::new(e)))
}

/// A row of [`UNDELIVERED`] or [`DELIVERIES_OF_ORDER`].
fn delivery_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Delivery> {
    Ok(Delivery {
        id: r.get(0)?,
        event_type: r.get(1)?,
        out_trade_no: r.get(2)?,
        merchant: r.get(3)?,
        created_at: r.get(4)?,
        attempts: r.get(5)?,
        next_attempt_at: r.get(6)?,
        last_error: r.get(7)?,
        delivered_at: r.get(8)?,
    })
}

fn order_by_id(conn: &Connection, id: i64) -> Result<Order, StoreError> {
    let mut st = conn.prepare_cached(&format!("SELECT {ORDER_COLUMNS} FROM orders WHERE id = ?1"))?;
    Ok(st.query_row(params![id], order_row)?)
}

fn add_event(
    conn: &Connection,
    order_id: i64,
    at: Millis,
    kind: &str,
    detail: &serde_json::Value,
) -> Result<(), StoreError> {
    let mut st =
        conn.prepare_cached("INSERT INTO order_events (order_id, at, kind, detail) VALUES (?1, ?2, ?3, ?4)")?;
    st.execute(params![order_id, at, kind, detail.to_string()])?;
    Ok(())
}

fn add_outbox(conn: &Connection, order: &Order, event_type: &str, now: Millis) -> Result<(), StoreError> {
    let id = event_id();
    let payload = event_payload(&id, event_type, now, order);
    let mut st = conn.prepare_cached(
        "INSERT INTO outbox (id, order_id, type, payload, created_at, next_attempt_at) VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
    )?;
    st.execute(params![id, order.id, event_type, payload, now])?;
    Ok(())
}

/// Records a notification with its verdict (`decided`, or the one the record carries).
fn insert_notification(conn: &Connection, n: &NotificationRecord, decided: Option<Verdict>) -> Result<(), StoreError> {
    let mut st = conn.prepare_cached(
        "INSERT INTO notifications (received_at, kind, merchant, out_trade_no, transaction_id, verdict, reason, body, \
         peer, body_sha256) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?;
    st.execute(params![
        n.received_at,
        n.kind.as_str(),
        n.merchant,
        n.out_trade_no,
        n.transaction_id,
        decided.or(n.verdict).map(Verdict::as_str),
        n.reason,
        n.body,
        n.peer,
        n.body_sha256
    ])?;
    Ok(())
}

/// Moves a pending order to `to` if it is still pending; writes the event and, for
/// `event_type`, the outbox row. Returns the order after the change, or `None`.
fn transition(
    conn: &Connection,
    order_id: i64,
    to: OrderStatus,
    kind: &str,
    detail: serde_json::Value,
    event_type: Option<&str>,
    now: Millis,
) -> Result<Option<Order>, StoreError> {
    let column = if to == OrderStatus::Closed {
        ", closed_at = ?3"
    } else {
        ""
    };
    let sql = format!(
        "UPDATE orders SET status = ?1, updated_at = ?3, next_check_at = NULL{column} WHERE id = ?2 AND status = ?4"
    );
    let changed =
        conn.prepare_cached(&sql)?
            .execute(params![to.as_str(), order_id, now, OrderStatus::Pending.as_str()])?;
    if changed == 0 {
        return Ok(None);
    }
    let order = order_by_id(conn, order_id)?;
    add_event(conn, order_id, now, kind, &detail)?;
    if let Some(t) = event_type {
        add_outbox(conn, &order, t, now)?;
    }
    Ok(Some(order))
}

const REFUND_COLUMNS: &str = "id, order_id, merchant, out_trade_no, out_refund_no, amount_fen, reason, status, upstream, \
upstream_error, refund_id, created_at, updated_at, accepted_at, settled_at, request_hash";

fn refund_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Refund> {
    Ok(Refund {
        id: r.get(0)?,
        order_id: r.get(1)?,
        merchant: r.get(2)?,
        out_trade_no: typed(3, Type::Text, col::trade_no(r.get(3)?))?,
        out_refund_no: typed(4, Type::Text, col::refund_no(r.get(4)?))?,
        amount_fen: typed(5, Type::Integer, col::fen(r.get(5)?))?,
        reason: r.get(6)?,
        status: typed(7, Type::Text, col::refund_status(r.get_ref(7)?.as_str()?))?,
        upstream: typed(8, Type::Text, col::upstream(r.get_ref(8)?.as_str()?))?,
        upstream_error: r.get(9)?,
        refund_id: r.get(10)?,
        created_at: r.get(11)?,
        updated_at: r.get(12)?,
        accepted_at: r.get(13)?,
        settled_at: r.get(14)?,
        request_hash: r.get(15)?,
    })
}

fn refund_by_id(conn: &Connection, id: i64) -> Result<Refund, StoreError> {
    let mut st = conn.prepare_cached(&format!("SELECT {REFUND_COLUMNS} FROM refunds WHERE id = ?1"))?;
    Ok(st.query_row(params![id], refund_row)?)
}

fn refund_by_number(conn: &Connection, merchant: &str, out_refund_no: &str) -> Result<Option<Refund>, StoreError> {
    let mut st = conn.prepare_cached(&format!(
        "SELECT {REFUND_COLUMNS} FROM refunds WHERE merchant = ?1 AND out_refund_no = ?2"
    ))?;
    Ok(st.query_row(params![merchant, out_refund_no], refund_row).optional()?)
}

fn order_by_number(conn: &Connection, merchant: &str, out_trade_no: &str) -> Result<Option<Order>, StoreError> {
    let mut st = conn.prepare_cached(&format!(
        "SELECT {ORDER_COLUMNS} FROM orders WHERE merchant = ?1 AND out_trade_no = ?2"
    ))?;
    Ok(st.query_row(params![merchant, out_trade_no], order_row).optional()?)
}

fn add_refund_outbox(
    conn: &Connection,
    refund: &Refund,
    order: &Order,
    event_type: &str,
    now: Millis,
) -> Result<(), StoreError> {
    let id = event_id();
    let payload = refund_event_payload(&id, event_type, now, refund, order);
    let mut st = conn.prepare_cached(
        "INSERT INTO outbox (id, order_id, type, payload, created_at, next_attempt_at) VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
    )?;
    st.execute(params![id, order.id, event_type, payload, now])?;
    Ok(())
}

/// Raises an order's reserved refund sum by `amount` if it stays within the amount and the
/// order is paid; otherwise says why not.
fn reserve(conn: &Connection, order: &Order, amount: Fen, now: Millis) -> Result<Option<RefundCreated>, StoreError> {
    let before = figures(conn, order.id)?;
    match rules::reserve(order.amount_fen, before, amount) {
        Ok(after) => {
            set_figures(conn, order.id, before, after, now)?;
            Ok(None)
        }
        Err(refused) => Ok(Some(refused.into())),
    }
}

/// An order's refund figures.
fn figures(conn: &Connection, order_id: i64) -> Result<Refunded, StoreError> {
    let (status, refunded_fen, reserved_fen): (String, i64, i64) = conn
        .prepare_cached("SELECT status, refunded_fen, refund_reserved_fen FROM orders WHERE id = ?1")?
        .query_row(params![order_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    Ok(Refunded {
        status: col::order_status(&status)?,
        refunded_fen: col::fen(refunded_fen)?,
        reserved_fen: col::fen(reserved_fen)?,
    })
}

/// Writes an order's refund figures, if they are still `before` (the writer is the only one
/// changing rows, so they are; say so if not).
fn set_figures(
    conn: &Connection,
    order_id: i64,
    before: Refunded,
    after: Refunded,
    now: Millis,
) -> Result<(), StoreError> {
    let changed = conn
        .prepare_cached(
            "UPDATE orders SET status = ?1, refunded_fen = ?2, refund_reserved_fen = ?3, updated_at = ?4 \
             WHERE id = ?5 AND status = ?6 AND refunded_fen = ?7 AND refund_reserved_fen = ?8",
        )?
        .execute(params![
            after.status.as_str(),
            after.refunded_fen.as_i64(),
            after.reserved_fen.as_i64(),
            now,
            order_id,
            before.status.as_str(),
            before.refunded_fen.as_i64(),
            before.reserved_fen.as_i64()
        ])?;
    if changed == 0 {
        return Err(StoreError::Broken(
            "the order changed during a refund's transaction".into(),
        ));
    }
    Ok(())
}

/// Settles a pending refund: succeeded (the order's refunded sum grows, and it becomes
/// `refunded` when it reaches the amount) or failed (its reservation is released). Writes the
/// order's event and the outbox row. `None` when the refund was not pending.
fn settle_refund(
    conn: &Connection,
    refund_id: i64,
    s: &Settlement<'_>,
    now: Millis,
) -> Result<Option<Refund>, StoreError> {
    let Settlement {
        succeeded,
        wechat_refund_id,
        settled_at,
        ref detail,
        error,
    } = *s;
    let status = if succeeded {
        RefundStatus::Succeeded
    } else {
        RefundStatus::Failed
    };
    let changed = conn
        .prepare_cached(
            "UPDATE refunds SET status = ?1, refund_id = COALESCE(refund_id, ?2), settled_at = ?3, updated_at = ?4, \
             upstream_error = COALESCE(?5, upstream_error), next_check_at = NULL WHERE id = ?6 AND status = 'pending'",
        )?
        .execute(params![
            status.as_str(),
            wechat_refund_id,
            settled_at,
            now,
            error,
            refund_id
        ])?;
    if changed == 0 {
        return Ok(None);
    }
    let refund = refund_by_id(conn, refund_id)?;
    let order = order_by_id(conn, refund.order_id)?;
    let before = figures(conn, order.id)?;
    let after = rules::settle(order.amount_fen, before, refund.amount_fen, succeeded)?;
    set_figures(conn, order.id, before, after, now)?;
    let order = order_by_id(conn, refund.order_id)?;
    let (kind, event_type) = if succeeded {
        ("refund_succeeded", "refund.succeeded")
    } else {
        ("refund_failed", "refund.failed")
    };
    add_event(conn, order.id, now, kind, detail)?;
    add_refund_outbox(conn, &refund, &order, event_type, now)?;
    Ok(Some(refund))
}

fn create_refund(c: &Connection, n: &NewRefund) -> Result<RefundCreated, StoreError> {
    let Some(order) = order_by_number(c, &n.merchant, n.out_trade_no.as_str())? else {
        return Ok(RefundCreated::NoOrder);
    };
    if let Some(existing) = refund_by_number(c, &n.merchant, n.out_refund_no.as_str())? {
        return Ok(RefundCreated::Existing(existing));
    }
    if let Some(refused) = reserve(c, &order, n.amount_fen, n.now)? {
        return Ok(refused);
    }
    c.prepare_cached(
        "INSERT INTO refunds (order_id, merchant, out_trade_no, out_refund_no, amount_fen, reason, status, upstream, \
         created_at, updated_at, next_check_at, request_hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'pending', 'new', ?7, ?7, ?8, ?9)",
    )?
    .execute(params![
        order.id,
        n.merchant,
        n.out_trade_no.as_str(),
        n.out_refund_no.as_str(),
        n.amount_fen.as_i64(),
        n.reason,
        n.now,
        n.first_check_at,
        n.request_hash
    ])?;
    let refund = refund_by_id(c, c.last_insert_rowid())?;
    let detail = serde_json::json!({ "out_refund_no": n.out_refund_no, "amount_fen": n.amount_fen });
    add_event(c, order.id, n.now, "refund_requested", &detail)?;
    Ok(RefundCreated::New(refund))
}

fn apply_refund(c: &Connection, r: &RefundResult) -> Result<RefundOutcome, StoreError> {
    let found = refund_by_number(c, &r.merchant, r.out_refund_no.as_str())?;
    let verdict = refund_verdict(
        found.as_ref().map(refund_facts),
        &r.out_trade_no,
        r.amount_fen,
        r.succeeded,
    );
    let refund = match (found, verdict) {
        (Some(refund), RefundVerdict::Settle) => refund,
        (found, verdict) => return refund_refused(verdict, found, r.amount_fen),
    };
    let wechat_id = (!r.refund_id.is_empty()).then_some(r.refund_id.as_str());
    // WeChat Pay reports it, so WeChat Pay has it, whatever became of our call's answer.
    c.prepare_cached(
        "UPDATE refunds SET upstream = 'created', accepted_at = COALESCE(accepted_at, ?1) WHERE id = ?2 AND upstream != 'created'",
    )?
    .execute(params![r.now, refund.id])?;
    let detail = serde_json::json!({
        "out_refund_no": r.out_refund_no,
        "amount_fen": r.amount_fen,
        "refund_id": wechat_id,
        "status": r.upstream_status,
        "source": r.source.as_str(),
    });
    let error = (!r.succeeded).then(|| format!("WeChat Pay reports {}", r.upstream_status));
    let settlement = Settlement {
        succeeded: r.succeeded,
        wechat_refund_id: wechat_id,
        settled_at: r.settled_at,
        detail,
        error: error.as_deref(),
    };
    match settle_refund(c, refund.id, &settlement, r.now)? {
        Some(settled) => Ok(RefundOutcome::Applied(settled)),
        None => Err(StoreError::Broken("the refund changed during its settlement".into())),
    }
}

fn import_refund(c: &Connection, i: &ImportedRefund) -> Result<RefundCreated, StoreError> {
    let Some(order) = order_by_number(c, &i.merchant, i.out_trade_no.as_str())? else {
        return Ok(RefundCreated::NoOrder);
    };
    if let Some(existing) = refund_by_number(c, &i.merchant, i.out_refund_no.as_str())? {
        return Ok(RefundCreated::Existing(existing));
    }
    if i.status != RefundStatus::Failed {
        if let Some(refused) = reserve(c, &order, i.amount_fen, i.now)? {
            return Ok(refused);
        }
    }
    c.prepare_cached(
        "INSERT INTO refunds (order_id, merchant, out_trade_no, out_refund_no, amount_fen, status, upstream, refund_id, \
         created_at, updated_at, accepted_at, next_check_at, request_hash) \
         VALUES (?1, ?2, ?3, ?4, ?5, 'pending', 'created', ?6, ?7, ?7, ?8, ?7, 'imported')",
    )?
    .execute(params![
        order.id,
        i.merchant,
        i.out_trade_no.as_str(),
        i.out_refund_no.as_str(),
        i.amount_fen.as_i64(),
        i.refund_id,
        i.now,
        i.accepted_at
    ])?;
    let id = c.last_insert_rowid();
    add_event(c, order.id, i.now, "refund_imported", &i.detail)?;
    if i.status == RefundStatus::Failed {
        // Nothing was reserved for it: mark it failed without releasing anything.
        c.prepare_cached("UPDATE refunds SET status = 'failed', settled_at = ?1, next_check_at = NULL WHERE id = ?2")?
            .execute(params![i.now, id])?;
    } else if i.status == RefundStatus::Succeeded {
        let settlement = Settlement {
            succeeded: true,
            wechat_refund_id: Some(&i.refund_id),
            settled_at: i.now,
            detail: i.detail.clone(),
            error: None,
        };
        settle_refund(c, id, &settlement, i.now)?;
    }
    Ok(RefundCreated::New(refund_by_id(c, id)?))
}

/// Claims up to `limit` pending rows of `table` (`orders` or `refunds`: the same
/// `status`/`next_check_at` columns) due for a check, moving their next check to
/// `lease_until` so that no one else takes them meanwhile.
fn claim_due<T>(
    c: &Connection,
    table: &str,
    now: Millis,
    lease_until: Millis,
    limit: u32,
    by_id: fn(&Connection, i64) -> Result<T, StoreError>,
) -> Result<Vec<T>, StoreError> {
    let ids: Vec<i64> = {
        let mut st = c.prepare_cached(&format!(
            "SELECT id FROM {table} WHERE status = 'pending' AND next_check_at IS NOT NULL AND next_check_at <= ?1 \
             ORDER BY next_check_at LIMIT ?2"
        ))?;
        let rows = st.query_map(params![now, limit], |r| r.get(0))?;
        rows.collect::<Result<Vec<_>, _>>()?
    };
    let mut out = Vec::with_capacity(ids.len());
    let lease = format!("UPDATE {table} SET next_check_at = ?1 WHERE id = ?2");
    for id in ids {
        match by_id(c, id) {
            Ok(row) => {
                c.prepare_cached(&lease)?.execute(params![lease_until, id])?;
                out.push(row);
            }
            // A damaged row would fail every claim, and the checks of every other row with
            // it: it is taken out of the checks, and said so.
            Err(StoreError::Damaged(d)) => {
                tracing::error!(table, id, error = %d, "a damaged row is taken out of the checks");
                c.prepare_cached(&lease)?.execute(params![Option::<Millis>::None, id])?;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// Sets when a pending row of `table` is checked next (`None`: never), counting the check.
fn schedule(c: &Connection, table: &str, id: i64, at: Option<Millis>) -> Result<(), StoreError> {
    c.prepare_cached(&format!(
        "UPDATE {table} SET next_check_at = ?1, checks = checks + 1 WHERE id = ?2 AND status = 'pending'"
    ))?
    .execute(params![at, id])?;
    Ok(())
}

fn apply_payment(conn: &Connection, p: &Payment) -> Result<PaymentOutcome, StoreError> {
    let found = order_by_number(conn, &p.merchant, p.out_trade_no.as_str())?;
    let facts = found.as_ref().map(|o| OrderFacts {
        amount_fen: o.amount_fen,
        status: o.status,
        transaction_id: o.transaction_id.as_deref(),
    });
    let verdict = payment_verdict(facts, p.amount_fen, &p.transaction_id, || {
        let taken: Option<i64> = conn
            .prepare_cached("SELECT id FROM orders WHERE transaction_id = ?1")?
            .query_row(params![p.transaction_id], |r| r.get(0))
            .optional()?;
        Ok::<_, StoreError>(taken.is_some())
    })?;
    let (order, was) = match (found, verdict) {
        (Some(order), PaymentVerdict::Apply { was }) => (order, was),
        (found, verdict) => return payment_refused(verdict, found, p.amount_fen),
    };
    let changed = conn
        .prepare_cached(
            "UPDATE orders SET status = 'paid', transaction_id = ?1, paid_at = ?2, updated_at = ?3, next_check_at = NULL \
             WHERE id = ?4 AND status = ?5",
        )?
        .execute(params![p.transaction_id, p.paid_at, p.now, order.id, was.as_str()])?;
    if changed == 0 {
        // The writer is the only one changing rows, so this cannot race; say so if it does.
        return Err(StoreError::Broken(
            "the order changed during the payment transaction".into(),
        ));
    }
    let paid = order_by_id(conn, order.id)?;
    let mut detail = serde_json::json!({ "source": p.source.as_str(), "transaction_id": p.transaction_id });
    if was != OrderStatus::Pending {
        // Money was taken for an order that was closed or failed: record it, never drop it.
        detail["anomaly"] = serde_json::json!(format!("paid after being {was}"));
        tracing::error!(out_trade_no = ?order.out_trade_no, %was, "payment for an order that was not pending");
    }
    add_event(conn, order.id, p.now, "paid", &detail)?;
    add_outbox(conn, &paid, "order.paid", p.now)?;
    Ok(PaymentOutcome::Applied(paid))
}

impl Store for SqliteStore {
    fn engine(&self) -> &'static str {
        "sqlite"
    }

    fn ping(&self) -> Fut<'_, ()> {
        self.read(|c| {
            c.query_row("SELECT 1", [], |_| Ok(()))?;
            Ok(())
        })
    }

    fn create_order(&self, n: NewOrder) -> Fut<'_, Created> {
        self.write(move |c| {
            let inserted = c
                .prepare_cached(
                    "INSERT INTO orders (merchant, out_trade_no, appid, mch_id, description, amount_fen, openid, attach, client_ip, \
                     status, upstream, created_at, updated_at, expires_at, next_check_at, request_hash) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 'pending', 'new', ?10, ?10, ?11, ?12, ?13) \
                     ON CONFLICT (merchant, out_trade_no) DO NOTHING",
                )?
                .execute(params![
                    n.merchant,
                    n.out_trade_no.as_str(),
                    n.appid,
                    n.mch_id,
                    n.description,
                    n.amount_fen.as_i64(),
                    n.openid,
                    n.attach,
                    n.client_ip,
                    n.now,
                    n.expires_at,
                    n.first_check_at,
                    n.request_hash
                ])?;
            let order = order_by_number(c, &n.merchant, n.out_trade_no.as_str())?
                .ok_or_else(|| StoreError::Broken("an order vanished after its insert".into()))?;
            if inserted == 0 {
                return Ok(Created::Existing(order));
            }
            add_event(c, order.id, n.now, "created", &serde_json::json!({ "amount_fen": n.amount_fen }))?;
            Ok(Created::New(order))
        })
    }

    fn set_prepay(&self, order_id: i64, prepay_id: String, now: Millis) -> Fut<'_, Order> {
        self.write(move |c| {
            c.prepare_cached(
                "UPDATE orders SET prepay_id = ?1, prepay_at = ?2, upstream = 'created', upstream_error = NULL, updated_at = ?2 WHERE id = ?3",
            )?
            .execute(params![prepay_id, now, order_id])?;
            add_event(c, order_id, now, "prepay", &serde_json::json!({ "prepay_id": prepay_id }))?;
            order_by_id(c, order_id)
        })
    }

    fn set_upstream_failure(&self, order_id: i64, rejected: bool, error: String, now: Millis) -> Fut<'_, Order> {
        self.write(move |c| {
            let upstream = if rejected { "rejected" } else { "unknown" };
            c.prepare_cached("UPDATE orders SET upstream = ?1, upstream_error = ?2, updated_at = ?3 WHERE id = ?4 AND upstream != 'created'")?
                .execute(params![upstream, error, now, order_id])?;
            if rejected {
                let detail = serde_json::json!({ "reason": error });
                if transition(c, order_id, OrderStatus::Failed, "failed", detail, None, now)?.is_none() {
                    add_event(c, order_id, now, "upstream_rejected", &serde_json::json!({ "reason": error }))?;
                }
            } else {
                add_event(c, order_id, now, "upstream_unknown", &serde_json::json!({ "reason": error }))?;
            }
            order_by_id(c, order_id)
        })
    }

    fn order(&self, merchant: String, out_trade_no: OutTradeNo) -> Fut<'_, Option<Order>> {
        self.read(move |c| order_by_number(c, &merchant, out_trade_no.as_str()))
    }

    fn events(&self, order_id: i64) -> Fut<'_, Vec<Event>> {
        self.read(move |c| {
            let mut st =
                c.prepare_cached("SELECT at, kind, detail FROM order_events WHERE order_id = ?1 ORDER BY id")?;
            let rows = st.query_map(params![order_id], |r| {
                let detail: String = r.get(2)?;
                Ok(Event {
                    at: r.get(0)?,
                    kind: r.get(1)?,
                    detail: serde_json::from_str(&detail).unwrap_or(serde_json::Value::Null),
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn list_orders(&self, f: OrderFilter, limit: u32, before: Option<i64>) -> Fut<'_, Vec<Order>> {
        self.read_heavy(move |c| {
            let (condition, values) = f.condition(before, |n| format!("?{n}"));
            let sql = format!("SELECT {ORDER_COLUMNS} FROM orders WHERE {condition} ORDER BY id DESC LIMIT {limit}");
            let mut st = c.prepare_cached(&sql)?;
            let values = values.into_iter().map(|v| match v {
                FilterValue::Text(s) => rusqlite::types::Value::Text(s),
                FilterValue::Int(i) => rusqlite::types::Value::Integer(i),
            });
            let rows = st.query_map(rusqlite::params_from_iter(values), order_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn apply_payment(&self, payment: Payment, notification: Option<NotificationRecord>) -> Fut<'_, PaymentOutcome> {
        self.write(move |c| {
            let outcome = apply_payment(c, &payment)?;
            if let Some(n) = &notification {
                insert_notification(c, n, Some(outcome.verdict()))?;
            }
            Ok(outcome)
        })
    }

    fn close_order(&self, order_id: i64, reason: String, now: Millis) -> Fut<'_, Option<Order>> {
        self.write(move |c| {
            let detail = serde_json::json!({ "reason": reason });
            transition(
                c,
                order_id,
                OrderStatus::Closed,
                "closed",
                detail,
                Some("order.closed"),
                now,
            )
        })
    }

    fn fail_order(&self, order_id: i64, reason: String, now: Millis) -> Fut<'_, Option<Order>> {
        self.write(move |c| {
            let detail = serde_json::json!({ "reason": reason });
            transition(c, order_id, OrderStatus::Failed, "failed", detail, None, now)
        })
    }

    fn add_event(&self, order_id: i64, kind: String, detail: serde_json::Value, now: Millis) -> Fut<'_, ()> {
        self.write(move |c| add_event(c, order_id, now, &kind, &detail))
    }

    fn record_notifications(&self, records: Vec<NotificationRecord>) -> Fut<'_, ()> {
        self.write(move |c| records.iter().try_for_each(|r| insert_notification(c, r, None)))
    }

    fn idem_claim(&self, k: IdemKey, request_hash: String, now: Millis, lease: Duration) -> Fut<'_, IdemClaim> {
        self.write(move |c| {
            let inserted = c
                .prepare_cached(
                    "INSERT INTO idempotency_keys (scope, key, request_hash, created_at, claimed_at, owner) \
                     VALUES (?1, ?2, ?3, ?4, ?4, ?5) ON CONFLICT (scope, key) DO NOTHING",
                )?
                .execute(params![k.scope, k.key, request_hash, now, k.owner])?;
            if inserted == 1 {
                return Ok(IdemClaim::Claimed { created_at: now });
            }
            // The request that holds the key stopped renewing it: this one, identical, takes
            // it over.
            let taken: Option<Millis> = c
                .prepare_cached(
                    "UPDATE idempotency_keys SET claimed_at = ?4, owner = ?5 WHERE scope = ?1 AND key = ?2 \
                     AND request_hash = ?3 AND status IS NULL AND COALESCE(claimed_at, created_at) <= ?6 \
                     RETURNING created_at",
                )?
                .query_row(params![k.scope, k.key, request_hash, now, k.owner, now - lease], |r| {
                    r.get(0)
                })
                .optional()?;
            if let Some(created_at) = taken {
                return Ok(IdemClaim::Claimed { created_at });
            }
            let (hash, status, response): (String, Option<i64>, Option<String>) = c
                .prepare_cached(
                    "SELECT request_hash, status, response FROM idempotency_keys WHERE scope = ?1 AND key = ?2",
                )?
                .query_row(params![k.scope, k.key], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
            Ok(super::idem_state(hash, status, response))
        })
    }

    fn idem_renew(&self, k: IdemKey, now: Millis) -> Fut<'_, bool> {
        self.write(move |c| {
            let n = c
                .prepare_cached(
                    "UPDATE idempotency_keys SET claimed_at = ?1 WHERE scope = ?2 AND key = ?3 AND owner = ?4 \
                     AND status IS NULL",
                )?
                .execute(params![now, k.scope, k.key, k.owner])?;
            Ok(n == 1)
        })
    }

    fn idem_finish(&self, k: IdemKey, status: u16, response: String) -> Fut<'_, bool> {
        self.write(move |c| {
            let n = c
                .prepare_cached(
                    "UPDATE idempotency_keys SET status = ?1, response = ?2 WHERE scope = ?3 AND key = ?4 \
                     AND owner = ?5 AND status IS NULL",
                )?
                .execute(params![i64::from(status), response, k.scope, k.key, k.owner])?;
            Ok(n == 1)
        })
    }

    fn idem_release(&self, k: IdemKey) -> Fut<'_, ()> {
        self.write(move |c| {
            c.prepare_cached(
                "DELETE FROM idempotency_keys WHERE scope = ?1 AND key = ?2 AND owner = ?3 AND status IS NULL",
            )?
            .execute(params![k.scope, k.key, k.owner])?;
            Ok(())
        })
    }

    fn idem_purge(&self, created_before: Millis, limit: u32) -> Fut<'_, u64> {
        self.write(move |c| {
            let n = c
                .prepare_cached(
                    "DELETE FROM idempotency_keys WHERE rowid IN \
                     (SELECT rowid FROM idempotency_keys WHERE created_at < ?1 LIMIT ?2)",
                )?
                .execute(params![created_before, limit])?;
            Ok(n as u64)
        })
    }

    fn claim_checks(&self, now: Millis, lease_until: Millis, limit: u32) -> Fut<'_, Vec<Order>> {
        self.write(move |c| claim_due(c, "orders", now, lease_until, limit, order_by_id))
    }

    fn schedule_check(&self, order_id: i64, at: Option<Millis>, call: Option<Call>) -> Fut<'_, ()> {
        self.write(move |c| {
            // The writer may run this again after a busy database: it keeps its own copy.
            let (call_at, said) = call.clone().map(|c| (c.at, c.said)).unzip();
            c.prepare_cached(SCHEDULE_ORDER_CHECK)?
                .execute(params![at, order_id, call_at, said])?;
            Ok(())
        })
    }

    fn checks(&self, order_id: i64) -> Fut<'_, Checks> {
        self.read(move |c| {
            let found = c
                .prepare_cached(CHECKS_OF_ORDER)?
                .query_row(params![order_id], |r| Ok(checks_from(r.get(0)?, r.get(1)?, r.get(2)?)))
                .optional()?;
            Ok(found.unwrap_or_default())
        })
    }

    fn claim_outbox(&self, now: Millis, lease_until: Millis, limit: u32) -> Fut<'_, Vec<OutboxEvent>> {
        self.write(move |c| {
            let events: Vec<OutboxEvent> = {
                let mut st = c.prepare_cached(
                    // An event waits while an earlier one of its order does, so that a
                    // webhook receiver sees an order's events in the order they happened.
                    "SELECT id, type, payload, created_at, attempts FROM outbox x \
                     WHERE delivered_at IS NULL AND next_attempt_at <= ?1 AND NOT EXISTS ( \
                       SELECT 1 FROM outbox e WHERE e.order_id = x.order_id AND e.delivered_at IS NULL \
                       AND e.rowid < x.rowid) \
                     ORDER BY next_attempt_at LIMIT ?2",
                )?;
                let rows = st.query_map(params![now, limit], |r| {
                    Ok(OutboxEvent {
                        id: r.get(0)?,
                        event_type: r.get(1)?,
                        payload: r.get(2)?,
                        created_at: r.get(3)?,
                        attempts: r.get(4)?,
                    })
                })?;
                rows.collect::<Result<Vec<_>, _>>()?
            };
            for e in &events {
                c.prepare_cached("UPDATE outbox SET next_attempt_at = ?1, attempts = attempts + 1 WHERE id = ?2")?
                    .execute(params![lease_until, e.id])?;
            }
            Ok(events)
        })
    }

    fn outbox_delivered(&self, id: String, now: Millis) -> Fut<'_, ()> {
        self.write(move |c| {
            c.prepare_cached("UPDATE outbox SET delivered_at = ?1, last_error = NULL WHERE id = ?2")?
                .execute(params![now, id])?;
            Ok(())
        })
    }

    fn outbox_retry(&self, id: String, next_at: Millis, error: String) -> Fut<'_, ()> {
        self.write(move |c| {
            c.prepare_cached(
                "UPDATE outbox SET next_attempt_at = ?1, last_error = ?2 WHERE id = ?3 AND delivered_at IS NULL",
            )?
            .execute(params![next_at, error, id])?;
            Ok(())
        })
    }

    fn reconciliations(&self, limit: u32) -> Fut<'_, Vec<ReconciliationRun>> {
        self.read(move |c| {
            let mut st = c.prepare_cached(RECONCILIATIONS)?;
            let rows = st.query_map(params![limit], |r| {
                Ok(ReconciliationRun {
                    merchant: r.get(0)?,
                    bill_date: r.get(1)?,
                    kind: r.get(2)?,
                    started_at: r.get(3)?,
                    finished_at: r.get(4)?,
                    balanced: r.get::<_, Option<i64>>(5)?.map(|b| b != 0),
                    differences: r.get(6)?,
                    repaired: r.get(7)?,
                    report: r.get(8)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn daily(&self, from: Millis, to: Millis) -> Fut<'_, Vec<Daily>> {
        self.read_heavy(move |c| {
            let (orders, rejected) = daily_sql();
            let orders = c
                .prepare_cached(&orders)?
                .query_map(params![from, to], |r| {
                    Ok(Daily {
                        day: r.get(0)?,
                        orders: r.get(1)?,
                        paid: r.get(2)?,
                        paid_fen: r.get(3)?,
                        refunded_fen: r.get(4)?,
                        rejected: 0,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            let rejected = c
                .prepare_cached(&rejected)?
                .query_map(params![from, to], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(merge_daily(orders, rejected))
        })
    }

    fn notifications(&self, of: NoticesOf, limit: u32) -> Fut<'_, Vec<Notice>> {
        self.read_heavy(move |c| {
            let (sql, texts) = of.query(|n| format!("?{n}"));
            let mut st = c.prepare_cached(&sql)?;
            let values = texts
                .into_iter()
                .map(|t| rusqlite::types::Value::Text(t.to_owned()))
                .chain(std::iter::once(rusqlite::types::Value::Integer(i64::from(limit))));
            let rows = st.query_map(rusqlite::params_from_iter(values), |r| {
                Ok(Notice {
                    received_at: r.get(0)?,
                    kind: r.get(1)?,
                    merchant: r.get(2)?,
                    out_trade_no: r.get(3)?,
                    verdict: r.get(4)?,
                    reason: r.get(5)?,
                    peer: r.get(6)?,
                    body: r.get(7)?,
                    body_sha256: r.get(8)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn undelivered(&self, limit: u32) -> Fut<'_, Vec<Delivery>> {
        self.read_heavy(move |c| {
            let mut st = c.prepare_cached(UNDELIVERED)?;
            let rows = st.query_map(params![limit], delivery_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn deliveries(&self, order_id: i64) -> Fut<'_, Vec<Delivery>> {
        self.read(move |c| {
            let mut st = c.prepare_cached(DELIVERIES_OF_ORDER)?;
            let rows = st.query_map(params![order_id], delivery_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn deliver_now(&self, id: String, now: Millis, lease_end: Millis) -> Fut<'_, bool> {
        self.write(move |c| {
            let n = c
                .prepare_cached(
                    "UPDATE outbox SET next_attempt_at = ?1 WHERE id = ?2 AND delivered_at IS NULL AND next_attempt_at > ?3",
                )?
                .execute(params![now, id, lease_end])?;
            Ok(n == 1)
        })
    }

    fn create_refund(&self, new: NewRefund) -> Fut<'_, RefundCreated> {
        self.write(move |c| create_refund(c, &new))
    }

    fn refund(&self, merchant: String, out_refund_no: OutRefundNo) -> Fut<'_, Option<Refund>> {
        self.read(move |c| refund_by_number(c, &merchant, out_refund_no.as_str()))
    }

    fn refunds_of(&self, order_id: i64) -> Fut<'_, Vec<Refund>> {
        self.read(move |c| {
            let mut st = c.prepare_cached(&format!(
                "SELECT {REFUND_COLUMNS} FROM refunds WHERE order_id = ?1 ORDER BY id"
            ))?;
            let rows = st.query_map(params![order_id], refund_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn refund_accepted(
        &self,
        refund_id: i64,
        wechat_refund_id: String,
        now: Millis,
        next_check_at: Millis,
    ) -> Fut<'_, Refund> {
        self.write(move |c| {
            let changed = c
                .prepare_cached(
                    "UPDATE refunds SET upstream = 'created', refund_id = COALESCE(refund_id, ?1), \
                     accepted_at = COALESCE(accepted_at, ?2), upstream_error = NULL, updated_at = ?2, \
                     next_check_at = CASE WHEN status = 'pending' THEN ?3 ELSE next_check_at END \
                     WHERE id = ?4 AND upstream != 'created'",
                )?
                .execute(params![wechat_refund_id, now, next_check_at, refund_id])?;
            let refund = refund_by_id(c, refund_id)?;
            if changed == 1 && refund.status == RefundStatus::Failed {
                tracing::error!(out_refund_no = ?refund.out_refund_no, "WeChat Pay accepted a refund recorded as failed: reconcile it");
            }
            if changed == 1 {
                let detail =
                    serde_json::json!({ "out_refund_no": refund.out_refund_no, "refund_id": wechat_refund_id });
                add_event(c, refund.order_id, now, "refund_accepted", &detail)?;
            }
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
        self.write(move |c| {
            let refund = refund_by_id(c, refund_id)?;
            let detail = serde_json::json!({ "out_refund_no": refund.out_refund_no, "reason": error });
            if rejected {
                // Only a refund WeChat Pay never accepted can fail by a refusal.
                let changed = c
                    .prepare_cached(
                        "UPDATE refunds SET upstream = 'rejected' WHERE id = ?1 AND upstream != 'created' AND status = 'pending'",
                    )?
                    .execute(params![refund_id])?;
                if changed == 0 {
                    return refund_by_id(c, refund_id);
                }
                let settlement = Settlement {
                    succeeded: false,
                    wechat_refund_id: None,
                    settled_at: now,
                    detail,
                    error: Some(&error),
                };
                settle_refund(c, refund_id, &settlement, now)?;
            } else {
                let changed = c
                    .prepare_cached(
                        "UPDATE refunds SET upstream = 'unknown', upstream_error = ?1, updated_at = ?2, next_check_at = ?3 \
                         WHERE id = ?4 AND upstream != 'created' AND status = 'pending'",
                    )?
                    .execute(params![error, now, next_check_at, refund_id])?;
                if changed == 1 {
                    add_event(c, refund.order_id, now, "refund_upstream_unknown", &detail)?;
                }
            }
            refund_by_id(c, refund_id)
        })
    }

    fn apply_refund(&self, result: RefundResult, notification: Option<NotificationRecord>) -> Fut<'_, RefundOutcome> {
        self.write(move |c| {
            let outcome = apply_refund(c, &result)?;
            if let Some(n) = &notification {
                insert_notification(c, n, Some(outcome.verdict()))?;
            }
            Ok(outcome)
        })
    }

    fn claim_refund_checks(&self, now: Millis, lease_until: Millis, limit: u32) -> Fut<'_, Vec<Refund>> {
        self.write(move |c| claim_due(c, "refunds", now, lease_until, limit, refund_by_id))
    }

    fn schedule_refund_check(&self, refund_id: i64, at: Option<Millis>) -> Fut<'_, ()> {
        self.write(move |c| schedule(c, "refunds", refund_id, at))
    }

    fn orders_paid_between(&self, merchant: String, from: Millis, to: Millis) -> Fut<'_, Vec<Order>> {
        self.read_heavy(move |c| {
            let mut st = c.prepare_cached(&format!(
                "SELECT {ORDER_COLUMNS} FROM orders WHERE merchant = ?1 AND paid_at >= ?2 AND paid_at < ?3 \
                 AND status IN ('paid', 'refunded')"
            ))?;
            let rows = st.query_map(params![merchant, from, to], order_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn orders_by_numbers(&self, merchant: String, numbers: Vec<OutTradeNo>) -> Fut<'_, Vec<Order>> {
        self.read_heavy(move |c| {
            let mut out = Vec::with_capacity(numbers.len());
            for n in &numbers {
                if let Some(o) = order_by_number(c, &merchant, n.as_str())? {
                    out.push(o);
                }
            }
            Ok(out)
        })
    }

    fn refunds_accepted_between(&self, merchant: String, from: Millis, to: Millis) -> Fut<'_, Vec<Refund>> {
        self.read_heavy(move |c| {
            let mut st = c.prepare_cached(&format!(
                "SELECT {REFUND_COLUMNS} FROM refunds WHERE merchant = ?1 AND accepted_at >= ?2 AND accepted_at < ?3"
            ))?;
            let rows = st.query_map(params![merchant, from, to], refund_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn refunds_by_numbers(&self, merchant: String, numbers: Vec<OutRefundNo>) -> Fut<'_, Vec<Refund>> {
        self.read_heavy(move |c| {
            let mut out = Vec::with_capacity(numbers.len());
            for n in &numbers {
                if let Some(r) = refund_by_number(c, &merchant, n.as_str())? {
                    out.push(r);
                }
            }
            Ok(out)
        })
    }

    fn correct_amount(
        &self,
        order_id: i64,
        amount_fen: Fen,
        detail: serde_json::Value,
        now: Millis,
    ) -> Fut<'_, Option<Order>> {
        self.write(move |c| {
            let changed = c
                .prepare_cached(
                    "UPDATE orders SET amount_fen = ?1, updated_at = ?2, \
                     status = CASE WHEN refunded_fen = ?1 THEN 'refunded' ELSE 'paid' END \
                     WHERE id = ?3 AND status IN ('paid', 'refunded') AND refund_reserved_fen <= ?1 \
                     AND NOT EXISTS (SELECT 1 FROM refunds WHERE order_id = ?3 AND status = 'pending' AND upstream != 'created')",
                )?
                .execute(params![amount_fen.as_i64(), now, order_id])?;
            if changed == 0 {
                return Ok(None);
            }
            add_event(c, order_id, now, "reconciled", &detail)?;
            Ok(Some(order_by_id(c, order_id)?))
        })
    }

    fn move_refund_accepted_at(
        &self,
        refund_id: i64,
        accepted_at: Millis,
        detail: serde_json::Value,
        now: Millis,
    ) -> Fut<'_, ()> {
        self.write(move |c| {
            let refund = refund_by_id(c, refund_id)?;
            c.prepare_cached("UPDATE refunds SET accepted_at = ?1, updated_at = ?2 WHERE id = ?3")?
                .execute(params![accepted_at, now, refund_id])?;
            add_event(c, refund.order_id, now, "reconciled", &detail)
        })
    }

    fn import_refund(&self, refund: ImportedRefund) -> Fut<'_, RefundCreated> {
        self.write(move |c| import_refund(c, &refund))
    }

    fn claim_daily_reconciliation(&self, merchant: String, bill_date: String, now: Millis) -> Fut<'_, DailyClaim> {
        self.write(move |c| {
            let inserted = c
                .prepare_cached(
                    "INSERT INTO reconciliations (merchant, bill_date, kind, started_at) VALUES (?1, ?2, 'daily', ?3) \
                     ON CONFLICT DO NOTHING",
                )?
                .execute(params![merchant, bill_date, now])?;
            if inserted == 1 {
                return Ok(DailyClaim::Claimed);
            }
            // A run that started an hour ago and never finished died with its gateway.
            let taken = c
                .prepare_cached(
                    "UPDATE reconciliations SET started_at = ?3 WHERE merchant = ?1 AND bill_date = ?2 AND kind = 'daily' \
                     AND finished_at IS NULL AND started_at < ?3 - 3600000",
                )?
                .execute(params![merchant, bill_date, now])?;
            if taken == 1 {
                return Ok(DailyClaim::Claimed);
            }
            let finished: bool = c
                .prepare_cached(
                    "SELECT finished_at IS NOT NULL FROM reconciliations WHERE merchant = ?1 AND bill_date = ?2 AND kind = 'daily'",
                )?
                .query_row(params![merchant, bill_date], |r| r.get(0))?;
            Ok(if finished { DailyClaim::Done } else { DailyClaim::Running })
        })
    }

    fn keep_platform_certificates(&self, merchant: String, certificates: Vec<KeptCertificate>) -> Fut<'_, ()> {
        self.write(move |c| {
            for k in &certificates {
                c.prepare_cached(
                    "INSERT INTO platform_certificates (merchant, serial_no, pem, mac, not_after, fetched_at) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (merchant, serial_no) DO UPDATE SET \
                     pem = excluded.pem, mac = excluded.mac, not_after = excluded.not_after, fetched_at = excluded.fetched_at",
                )?
                .execute(params![merchant, k.serial_no, k.pem, k.mac, k.not_after, k.fetched_at])?;
            }
            Ok(())
        })
    }

    fn platform_certificates(&self, merchant: String) -> Fut<'_, Vec<KeptCertificate>> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT serial_no, pem, mac, not_after, fetched_at FROM platform_certificates WHERE merchant = ?1 ORDER BY serial_no",
            )?;
            let rows = stmt.query_map([&merchant], |r| {
                Ok(KeptCertificate {
                    serial_no: r.get(0)?,
                    pem: r.get(1)?,
                    mac: r.get(2)?,
                    not_after: r.get(3)?,
                    fetched_at: r.get(4)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn record_reconciliation(&self, r: ReconciliationRecord) -> Fut<'_, ()> {
        self.write(move |c| {
            let updated = if r.kind == "daily" {
                c.prepare_cached(
                    "UPDATE reconciliations SET started_at = ?3, finished_at = ?4, balanced = ?5, differences = ?6, \
                     repaired = ?7, report = ?8 WHERE merchant = ?1 AND bill_date = ?2 AND kind = 'daily'",
                )?
                .execute(params![
                    r.merchant,
                    r.bill_date,
                    r.started_at,
                    r.finished_at,
                    r.balanced,
                    r.differences,
                    r.repaired,
                    r.report
                ])?
            } else {
                0
            };
            if updated == 0 {
                c.prepare_cached(
                    "INSERT INTO reconciliations (merchant, bill_date, kind, started_at, finished_at, balanced, differences, \
                     repaired, report) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                )?
                .execute(params![
                    r.merchant,
                    r.bill_date,
                    r.kind,
                    r.started_at,
                    r.finished_at,
                    r.balanced,
                    r.differences,
                    r.repaired,
                    r.report
                ])?;
            }
            Ok(())
        })
    }

    fn stats(&self, now: Millis) -> Fut<'_, Stats> {
        self.read_heavy(move |c| {
            let mut st = c.prepare_cached("SELECT status, COUNT(*) FROM orders GROUP BY status")?;
            let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
            let orders_by_status = rows.collect::<Result<Vec<_>, _>>()?;
            let (backlog, oldest): (i64, Option<Millis>) = c.query_row(
                "SELECT COUNT(*), MIN(created_at) FROM outbox WHERE delivered_at IS NULL",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            let mut st = c.prepare_cached("SELECT status, COUNT(*) FROM refunds GROUP BY status")?;
            let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
            let refunds_by_status = rows.collect::<Result<Vec<_>, _>>()?;
            Ok(Stats {
                orders_by_status,
                refunds_by_status,
                outbox_backlog: backlog,
                outbox_oldest_age_ms: oldest.map(|o| now.ms_since(o)),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stalled_database_holds_at_most_the_readers_threads_and_connections() {
        let dir = std::env::temp_dir().join(format!("wxpay-sqlite-unit-{}", crate::util::random_hex::<8>()));
        std::fs::create_dir_all(&dir).unwrap();
        let store = Arc::new(SqliteStore::open(&dir.join("t.db")).unwrap());
        // Sixty-four reads at once, each held 20 ms as by a slow disk: at most READERS run at
        // once, each on a connection of its own; the rest wait without a thread.
        let (now, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let mut reads = tokio::task::JoinSet::new();
        for _ in 0..64 {
            let (store, now, most) = (store.clone(), now.clone(), most.clone());
            reads.spawn(async move {
                store
                    .read(move |_| {
                        let running = now.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(running, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(20));
                        now.fetch_sub(1, Ordering::SeqCst);
                        Ok(())
                    })
                    .await
            });
        }
        while let Some(r) = reads.join_next().await {
            r.unwrap().unwrap();
        }
        let most = most.load(Ordering::SeqCst);
        assert!((1..=READERS).contains(&most), "{most} reads ran at once");
        let opened = store.readers.opened.load(Ordering::SeqCst);
        assert!(opened <= READERS, "{opened} connections were opened");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn heavy_reads_never_hold_every_connection_so_a_key_read_still_runs() {
        let dir = std::env::temp_dir().join(format!("wxpay-sqlite-unit-{}", crate::util::random_hex::<8>()));
        std::fs::create_dir_all(&dir).unwrap();
        let store = Arc::new(SqliteStore::open(&dir.join("t.db")).unwrap());
        // As many heavy reads as there are connections (console searches, a reconciliation),
        // each stuck until released.
        let (release, held) = std::sync::mpsc::channel::<()>();
        let held = Arc::new(Mutex::new(held));
        let running = Arc::new(AtomicUsize::new(0));
        let mut heavy = tokio::task::JoinSet::new();
        for _ in 0..READERS {
            let (store, held, running) = (store.clone(), held.clone(), running.clone());
            heavy.spawn(async move {
                store
                    .read_heavy(move |_| {
                        running.fetch_add(1, Ordering::SeqCst);
                        let _ = held.lock().unwrap().recv();
                        Ok(())
                    })
                    .await
            });
        }
        while running.load(Ordering::SeqCst) < HEAVY_READERS {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // A payment's read of its order (here the ping) still gets a connection at once.
        let ping = tokio::time::timeout(Duration::from_secs(5), store.ping()).await;
        assert!(matches!(ping, Ok(Ok(()))), "a key read waited behind heavy reads");
        assert_eq!(running.load(Ordering::SeqCst), HEAVY_READERS, "heavy reads at once");
        for _ in 0..READERS {
            release.send(()).unwrap();
        }
        while let Some(r) = heavy.join_next().await {
            r.unwrap().unwrap();
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn a_failing_write_undoes_only_itself_and_its_batch_mates_commit() {
        let dir = std::env::temp_dir().join(format!("wxpay-sqlite-unit-{}", crate::util::random_hex::<8>()));
        std::fs::create_dir_all(&dir).unwrap();
        let store = SqliteStore::open(&dir.join("t.db")).unwrap();
        store
            .write(|c| Ok(c.execute_batch("CREATE TABLE probe (x INTEGER NOT NULL)")?))
            .await
            .unwrap();
        let insert = |c: &Connection, x: i64| -> Result<(), StoreError> {
            c.execute("INSERT INTO probe (x) VALUES (?1)", params![x])?;
            Ok(())
        };
        // Hold the writer, so that the three writes below wait and run as one batch.
        let slow = store.write(|_| {
            std::thread::sleep(Duration::from_millis(300));
            Ok(())
        });
        std::thread::sleep(Duration::from_millis(100));
        let runs = Arc::new(AtomicUsize::new(0));
        let counted = runs.clone();
        let a = store.write(move |c| {
            counted.fetch_add(1, Ordering::SeqCst);
            insert(c, 1)
        });
        let bad_runs = Arc::new(AtomicUsize::new(0));
        let counted_bad = bad_runs.clone();
        let bad = store.write(move |c| {
            counted_bad.fetch_add(1, Ordering::SeqCst);
            insert(c, 2)?;
            Err::<(), _>(StoreError::Broken("refused after a write".into()))
        });
        let b = store.write(move |c| insert(c, 3));
        slow.await.unwrap();
        a.await.unwrap();
        assert!(matches!(bad.await, Err(StoreError::Broken(m)) if m == "refused after a write"));
        b.await.unwrap();
        let kept = store
            .read(|c| {
                let mut st = c.prepare("SELECT x FROM probe ORDER BY x")?;
                let rows = st.query_map([], |r| r.get::<_, i64>(0))?;
                Ok(rows.collect::<Result<Vec<_>, _>>()?)
            })
            .await
            .unwrap();
        assert_eq!(kept, [1, 3], "the failed write's row is undone, its batch mates' kept");
        // The batch ran until the failure and was rolled back; the write before the failed
        // one ran again, then the failed one ran first and alone, then the rest.
        assert_eq!(runs.load(Ordering::SeqCst), 2);
        assert_eq!(bad_runs.load(Ordering::SeqCst), 2);
        // A write that fails alone runs once.
        let lone = Arc::new(AtomicUsize::new(0));
        let counted_lone = lone.clone();
        let failed = store
            .write(move |_| {
                counted_lone.fetch_add(1, Ordering::SeqCst);
                Err::<(), _>(StoreError::Broken("alone".into()))
            })
            .await;
        assert!(failed.is_err());
        assert_eq!(lone.load(Ordering::SeqCst), 1);
        let _ = std::fs::remove_dir_all(dir);
    }
}
