//! `wxpay serve` and `wxpay migrate`: the production gateway from a configuration file.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use clap::Args;
use wxpay_gateway::{App, Config};

use crate::{CliError, config};

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// The configuration file (TOML); every key can be overridden by a WXPAY_… variable.
    #[arg(long, value_name = "FILE", env = "WXPAY_CONFIG")]
    config: PathBuf,
    /// Log format.
    #[arg(long, value_enum, default_value_t = crate::LogFormat::Pretty)]
    log_format: crate::LogFormat,
}

#[derive(Debug, Args)]
pub(crate) struct MigrateArgs {
    /// The configuration file (TOML); only [database] is used.
    #[arg(long, value_name = "FILE", env = "WXPAY_CONFIG")]
    config: PathBuf,
}

pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Runtime::new().map_err(|e| CliError::Usage(format!("cannot start the runtime: {e}")))
}

/// The gateway's configuration from a file, every value checked, errors naming the file.
pub(crate) fn load_gateway(path: &Path) -> Result<(Config, config::ServeSettings), CliError> {
    let file = config::load(path)?;
    config::gateway_config(&file).map_err(|e| CliError::Usage(format!("{}: {e}", path.display())))
}

/// Opens the database (migrating it) and builds the gateway over it.
pub(crate) async fn open_app(path: &Path, cfg: Config, database_url: &str, pool_size: u32) -> Result<App, CliError> {
    let store = wxpay_gateway::open_store(database_url, pool_size)
        .await
        .map_err(|e| CliError::Usage(e.to_string()))?;
    App::new(cfg, store).map_err(|e| CliError::Usage(format!("{}: {e}", path.display())))
}

/// Runs the gateway until SIGTERM or Ctrl-C, then lets requests in flight and the current
/// round of background work finish.
pub(crate) fn serve(args: ServeArgs) -> Result<(), CliError> {
    let _log = crate::init_logging(args.log_format);
    let (cfg, settings) = load_gateway(&args.config)?;
    let merchants: Vec<String> = cfg
        .merchants
        .iter()
        .map(|m| format!("{} (mch_id {}, {})", m.name, m.mch_id, m.base_url))
        .collect();
    runtime()?.block_on(async move {
        let app = open_app(&args.config, cfg, &settings.database_url, settings.pool_size).await?;
        let listener = tokio::net::TcpListener::bind(&settings.listen)
            .await
            .map_err(|e| CliError::Usage(format!("cannot listen on {}: {e}", settings.listen)))?;
        let addr = listener.local_addr().map_err(|e| CliError::Usage(e.to_string()))?;
        let jobs = app.start_jobs();
        tracing::info!(%addr, engine = app.store().engine(), merchants = %merchants.join(", "), "wxpay gateway listening");
        // One line in a fixed form on stderr, whatever the log format, so that scripts and
        // tests can listen on port 0 and read the address the system chose.
        // A closed stderr (`wxpay serve 2>&1 | head -1`) must not stop the gateway.
        let _ = writeln!(std::io::stderr(), "wxpay gateway at http://{addr}");
        let served = wxpay_gateway::serve(&app, listener, crate::shutdown_signal()).await;
        tracing::info!("shutting down: finishing requests whose clients went away, then background work");
        app.finish_requests().await;
        jobs.stop().await;
        served.map_err(|e| CliError::Usage(format!("the server stopped: {e}")))
    })
}

/// Creates or upgrades the schema and exits.
pub(crate) fn migrate(args: MigrateArgs) -> Result<(), CliError> {
    let _log = crate::init_logging(crate::LogFormat::Pretty);
    let file = config::load(&args.config)?;
    let url = file
        .database
        .as_ref()
        .and_then(|d| d.url.clone())
        .ok_or_else(|| CliError::Usage(format!("{}: database.url is missing", args.config.display())))?;
    runtime()?.block_on(async {
        wxpay_gateway::migrate(&url)
            .await
            .map_err(|e| CliError::Usage(e.to_string()))?;
        eprintln!("the database is up to date");
        Ok(())
    })
}
