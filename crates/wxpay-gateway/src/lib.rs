//! The wxpay gateway: the service a merchant runs beside its backend.
//!
//! The business backend asks it for orders over a small JSON API (`/v1/…`); it stores every
//! order before calling WeChat Pay, verifies every notification before a single transaction
//! moves an order, answers WeChat Pay in its exact format, checks unconfirmed orders itself,
//! closes expired ones, and delivers events to the backend's webhook from a durable outbox.
//!
//! This crate reads no environment, arguments or files but the database it is given: the CLI
//! builds a [`Config`], opens a store with [`open_store`], and serves [`App::router`].

pub mod config;
mod edge;
pub mod metrics;
mod provider;
pub mod service;
pub mod store;
pub mod time;
mod util;

pub use config::{
    ClientCert, Config, ConsoleConfig, JobsConfig, MerchantConfig, ReconcileConfig, Secret, UpstreamConfig,
    V3Credentials, WebhookConfig,
};
pub use edge::{ApiError, App, serve, serve_router};
pub use service::jobs::{verify_webhook_signature, webhook_signature};
pub use service::reconcile;
pub use service::{Jobs, Service, ServiceError};
pub use time::Clock;
pub use wxpay_http::Limits;

/// The database a URL names.
#[derive(Debug, PartialEq, Eq)]
enum Database {
    /// `postgres://…` or `postgresql://…`.
    Postgres,
    /// `sqlite://path`, `sqlite:path` or a bare path.
    Sqlite(std::path::PathBuf),
}

/// Reads a database URL: PostgreSQL, or a SQLite file whose folder exists. Any other scheme
/// (`mysql://…`) is refused by name rather than taken for a file name.
fn database(url: &str) -> Result<Database, store::StoreError> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(Database::Postgres);
    }
    let path = match url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")) {
        Some(p) => p,
        None => {
            if let Some((scheme, _)) = url.split_once("://") {
                return Err(store::StoreError::Url(format!(
                    "{scheme:?} is not a database wxpay speaks: use sqlite://PATH or postgres://USER@HOST/DB"
                )));
            }
            url
        }
    };
    if path.is_empty() {
        return Err(store::StoreError::Url(
            "no file named: use sqlite://PATH, e.g. sqlite://wxpay.db".into(),
        ));
    }
    let path = std::path::PathBuf::from(path);
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.is_dir() {
            return Err(store::StoreError::Url(format!(
                "the folder {} of the SQLite file does not exist: create it first",
                dir.display()
            )));
        }
    }
    Ok(Database::Sqlite(path))
}

/// Opens the store a database URL names: `sqlite://path` (or a bare path) or
/// `postgres://…`, applying migrations.
///
/// # Errors
/// When the URL names no database wxpay speaks, or the database cannot be opened or brought
/// up to date.
pub async fn open_store(url: &str, pool_size: u32) -> Result<std::sync::Arc<dyn store::Store>, store::StoreError> {
    match database(url)? {
        Database::Postgres => Ok(std::sync::Arc::new(
            store::postgres::PgStore::connect(url, pool_size).await?,
        )),
        Database::Sqlite(path) => {
            let store = tokio::task::spawn_blocking(move || store::sqlite::SqliteStore::open(&path))
                .await
                .map_err(store::StoreError::from)??;
            Ok(std::sync::Arc::new(store))
        }
    }
}

/// Applies the migrations of the database a URL names, and returns (`wxpay migrate`).
///
/// # Errors
/// As [`open_store`].
pub async fn migrate(url: &str) -> Result<(), store::StoreError> {
    match database(url)? {
        Database::Postgres => store::postgres::PgStore::migrate_only(url).await,
        Database::Sqlite(path) => tokio::task::spawn_blocking(move || store::sqlite::SqliteStore::migrate_only(&path))
            .await
            .map_err(store::StoreError::from)?,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_urls_name_postgres_or_a_sqlite_file_in_an_existing_folder() {
        assert_eq!(database("postgres://u@h/db").unwrap(), Database::Postgres);
        assert_eq!(database("postgresql://u@h/db").unwrap(), Database::Postgres);
        let here = |p: &str| Database::Sqlite(std::path::PathBuf::from(p));
        assert_eq!(database("sqlite://wxpay.db").unwrap(), here("wxpay.db"));
        assert_eq!(database("sqlite:wxpay.db").unwrap(), here("wxpay.db"));
        assert_eq!(database("wxpay.db").unwrap(), here("wxpay.db"));
        assert_eq!(database("sqlite:///tmp/wxpay.db").unwrap(), here("/tmp/wxpay.db"));
        for (url, needle) in [
            ("mysql://root@localhost/x", "\"mysql\" is not a database"),
            ("redis://127.0.0.1", "\"redis\""),
            ("sqlite:///nonexistent/dir/x.db", "/nonexistent/dir"),
            ("sqlite://", "no file"),
        ] {
            let e = database(url).unwrap_err().to_string();
            assert!(e.contains(needle), "{url}: {e}");
        }
    }
}
