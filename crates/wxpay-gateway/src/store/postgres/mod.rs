//! The PostgreSQL engine: a pool, one transaction per state change, and background work
//! claimed with `FOR UPDATE SKIP LOCKED` so that several gateways can share one database
//! without doing the same job twice.
//!
//! Read Committed is enough: state changes are conditional updates (`WHERE status =
//! 'pending'`) that PostgreSQL re-evaluates on the latest row version when two transactions
//! race, and a payment takes the order's row lock (`FOR UPDATE`) before it decides.

mod batch;
mod migrations;
mod ops;
mod refunds;
mod rows;
#[cfg(test)]
mod tests;
mod tx;

use sqlx::Executor;
use sqlx::postgres::{PgPool, PgPoolOptions};
use tokio::sync::mpsc;

use crate::store::StoreError;
use batch::{CreateJob, PaymentJob, PrepayJob, run_batch, run_create_batch, run_prepay_batch, spawn_batchers};
use migrations::{first_connection, migrate};
use tx::Tx;

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

impl PgStore {
    /// Connects, applies the migrations (one gateway at a time), and returns the store.
    ///
    /// # Errors
    /// When the database cannot be reached or the schema cannot be brought up to date.
    pub async fn connect(url: &str, max_connections: u32) -> Result<PgStore, StoreError> {
        let options = first_connection(url).await?;
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(2))
            // While PostgreSQL is away, a request waits this long for a connection and is then
            // refused (503, or FAIL to WeChat Pay, which sends again): at 10 s, requests queued
            // behind a batch that was itself waiting answered after up to 20 s, past the
            // patience of WeChat Pay and of most clients (measured by `long-runs.sh
            // pg-restart`). A pool this busy in normal work is overloaded anyway.
            .acquire_timeout(std::time::Duration::from_secs(3))
            // The statements are few, prepared once per connection, and their plans do not
            // depend on the values: planning each execution anew cost more than running it.
            // But a generic plan is made once, from the statistics of that moment, and kept:
            // made while `orders` was empty (a fresh deployment), the batch statements joined
            // it by a sequential scan, and kept scanning the whole table as it grew (3,289
            // scans reading 122 million rows in a minute of order creation, measured). Every
            // statement of the gateway finds its rows through an index, so sequential scans
            // are priced out: PostgreSQL still takes one where no index serves, never where
            // one does. `tests.rs` explains every hot-path statement at 0, 10,000 and
            // 1,000,000 orders and fails on a sequential scan of `orders` or `refunds`.
            .after_connect(|conn, _| {
                Box::pin(async move {
                    conn.execute("SET plan_cache_mode = force_generic_plan; SET enable_seqscan = off")
                        .await?;
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
