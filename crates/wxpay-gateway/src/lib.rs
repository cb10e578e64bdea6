//! The wxpay gateway: the service a merchant runs beside its backend.
//!
//! The business backend asks it for orders over a small JSON API (`/v1/…`); it stores every
//! order before calling WeChat Pay, verifies every notification before a single transaction
//! moves an order, answers WeChat Pay in its exact format, checks unconfirmed orders itself,
//! closes expired ones, and delivers events to the backend's webhook from a durable outbox.
//!
//! This crate reads no environment, arguments or files but the database it is given: the CLI
//! builds a [`Config`], opens a store with [`open_store`], and serves [`App::router`].

mod api;
mod app;
pub mod config;
mod error;
mod jobs;
pub mod metrics;
mod notify;
pub mod reconcile;
mod refunds;
mod rejections;
pub mod store;
pub mod time;
mod upstream;

pub use api::OPENAPI;
pub use app::{App, Clock, Jobs, serve, serve_router};
pub use config::{
    ClientCert, Config, JobsConfig, MerchantConfig, ReconcileConfig, Secret, UpstreamConfig, WebhookConfig,
};
pub use error::ApiError;
pub use jobs::{verify_webhook_signature, webhook_signature};
pub use upstream::UpstreamError;
pub use wxpay_http::Limits;

/// Opens the store a database URL names: `sqlite://path` (or a bare path) or
/// `postgres://…`, applying migrations.
///
/// # Errors
/// When the database cannot be opened or brought up to date.
pub async fn open_store(url: &str, pool_size: u32) -> Result<std::sync::Arc<dyn store::Store>, store::StoreError> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(std::sync::Arc::new(
            store::postgres::PgStore::connect(url, pool_size).await?,
        ))
    } else {
        let path = sqlite_path(url);
        let store = tokio::task::spawn_blocking(move || store::sqlite::SqliteStore::open(&path))
            .await
            .map_err(|e| store::StoreError::Db(e.to_string()))??;
        Ok(std::sync::Arc::new(store))
    }
}

/// Applies the migrations of the database a URL names, and returns (`wxpay migrate`).
///
/// # Errors
/// As [`open_store`].
pub async fn migrate(url: &str) -> Result<(), store::StoreError> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        store::postgres::PgStore::migrate_only(url).await
    } else {
        let path = sqlite_path(url);
        tokio::task::spawn_blocking(move || store::sqlite::SqliteStore::migrate_only(&path))
            .await
            .map_err(|e| store::StoreError::Db(e.to_string()))?
    }
}

/// The file of a SQLite URL: `sqlite://path`, `sqlite:path` or a bare path.
fn sqlite_path(url: &str) -> std::path::PathBuf {
    let path = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .unwrap_or(url);
    std::path::PathBuf::from(path)
}

/// Lowercase hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    s
}

/// `N` random bytes from the system's secure source, in lowercase hex.
pub(crate) fn random_hex<const N: usize>() -> String {
    let mut b = [0u8; N];
    random_bytes(&mut b);
    hex(&b)
}

/// Fills `buf` from the system's secure random source.
pub(crate) fn random_bytes(buf: &mut [u8]) {
    use ring::rand::SecureRandom;
    // The system source failing is not recoverable in a payment service.
    ring::rand::SystemRandom::new()
        .fill(buf)
        .expect("the system random source works");
}
