//! The schema: migrations applied at start (one gateway at a time, under an advisory lock),
//! and the first connection, which names the server and the cause when it fails.

use sqlx::postgres::{PgConnectOptions, PgPool};
use sqlx::{ConnectOptions, Connection, Executor, Row};

use crate::store::StoreError;

pub(super) const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../../../migrations/postgres/0001_init.sql")),
    (2, include_str!("../../../migrations/postgres/0002_rfc3339.sql")),
    (3, include_str!("../../../migrations/postgres/0003_refunds.sql")),
    (
        4,
        include_str!("../../../migrations/postgres/0004_idempotency_lease.sql"),
    ),
    (5, include_str!("../../../migrations/postgres/0005_rejections.sql")),
    (
        6,
        include_str!("../../../migrations/postgres/0006_platform_certificates.sql"),
    ),
    (7, include_str!("../../../migrations/postgres/0007_order_search.sql")),
    (
        8,
        include_str!("../../../migrations/postgres/0008_notification_reads.sql"),
    ),
    (
        9,
        include_str!("../../../migrations/postgres/0009_console_timeline.sql"),
    ),
    (10, include_str!("../../../migrations/postgres/0010_outbox_order.sql")),
];
/// The advisory lock that serialises migrations of several gateways starting together.
pub(super) const MIGRATION_LOCK: i64 = 0x7778_7061_7900;

/// How long the first connection may take before the server is declared unreachable.
pub(super) const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Reads the URL and makes one connection, so that a wrong host, port, password or database
/// is named at once ("cannot connect to PostgreSQL at 127.0.0.1:5433: connection refused"),
/// rather than after the pool's acquire timeout as "pool timed out".
pub(super) async fn first_connection(url: &str) -> Result<PgConnectOptions, StoreError> {
    let options: PgConnectOptions = url
        .parse()
        .map_err(|e| StoreError::Url(format!("not a PostgreSQL URL: {}", crate::store::describe_sqlx(&e))))?;
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
        Ok(Err(e)) => crate::store::describe_sqlx(&e),
        Err(_) => format!("no answer within {} s", CONNECT_TIMEOUT.as_secs()),
    };
    Err(StoreError::Connect(format!(
        "cannot connect to PostgreSQL at {at}: {cause}"
    )))
}

pub(super) async fn migrate(pool: &PgPool) -> Result<(), StoreError> {
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
