//! `wxpay simulator`: the WeChat Pay simulator alone.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};
use wxpay_simulator::{Mode, SimConfig, Simulator, TlsConfig, V3Config, V3Signer};

use crate::{CliError, config};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ModeArg {
    /// Orders are paid after a short delay, on their own (load runs, demos).
    Auto,
    /// Orders are paid only through /simulator/pay or the checkout page (tests).
    Explicit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum V3SignerArg {
    /// The WeChat Pay public key (PUB_KEY_ID_…), as for merchants onboarded since late 2024.
    PublicKey,
    /// The platform certificate (Wechatpay-Serial is its serial).
    Certificate,
}

#[derive(Debug, Args)]
pub(crate) struct SimulatorArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8090", value_name = "ADDR")]
    listen: String,
    /// A wxpay configuration file; its [[merchants]] are served (and its [simulator] section
    /// read). Without it, the built-in test merchant is served.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// When orders get paid.
    #[arg(long, value_enum, default_value_t = ModeArg::Explicit)]
    mode: ModeArg,
    /// Divide every delay (automatic payment, refund completion, notification retries) by N.
    #[arg(long, default_value_t = 1.0, value_name = "N")]
    time_scale: f64,
    /// Serve HTTPS and require the merchant client certificate on /secapi/pay/refund.
    #[arg(long)]
    tls: bool,
    /// Where the test CA and certificates are made (or read): the CA to trust, and
    /// <mch_id>/apiclient_cert.pem, apiclient_key.pem and apiclient_cert.p12 (password: the
    /// mch_id) for each merchant.
    #[arg(long, default_value = "wxpay-simulator-tls", value_name = "DIR")]
    tls_dir: PathBuf,
    /// Where WeChat Pay's APIv3 keys are made at first start (or read later): platform_key.pem,
    /// platform_cert.pem, pub_key.pem, pub_key_id, pub_key_private.pem, and the built-in test
    /// merchant's <mch_id>/apiclient_key.pem, apiclient_cert.pem and apiclient_serial.
    #[arg(long, default_value = "wxpay-simulator-keys", value_name = "DIR")]
    keys_dir: PathBuf,
    /// What signs APIv3 answers and notifications, and so what Wechatpay-Serial names.
    #[arg(long, value_enum, default_value_t = V3SignerArg::PublicKey)]
    v3_signer: V3SignerArg,
    /// Serve today's bill at once instead of "Bill Creating" until 10:00 the next day.
    #[arg(long)]
    bills_immediately: bool,
    /// Accept this openid for every mini program, besides the ones the simulator issues
    /// through jscode2session (repeat the flag for more): the fixed openids of a team's own
    /// test fixtures. Any other openid is refused with "appid和openid不匹配".
    #[arg(long = "openid", value_name = "OPENID")]
    openids: Vec<String>,
    /// Log format.
    #[arg(long, value_enum, default_value_t = crate::LogFormat::Pretty)]
    log_format: crate::LogFormat,
}

pub(crate) fn run(args: SimulatorArgs) -> Result<(), CliError> {
    let _log = crate::init_logging(args.log_format);
    let mut config = SimConfig::new();
    if let Some(path) = &args.config {
        let file = config::load(path)?;
        config.merchants =
            config::sim_merchants(&file).map_err(|e| CliError::Usage(format!("{}: {e}", path.display())))?;
        if let Some(s) = file.simulator {
            if let Some(v) = s.auto_pay_delay_ms {
                config.auto_pay_delay = Duration::from_millis(v);
            }
            if let Some(v) = s.refund_delay_ms {
                config.refund_delay = Duration::from_millis(v);
            }
            if let Some(v) = s.max_orders {
                config.max_orders = v;
            }
            if let Some(v) = s.notification_log {
                config.notification_log = v;
            }
            if let Some(v) = s.notify_concurrency {
                config.notify_concurrency = v;
            }
            if let Some(v) = s.notify_timeout_ms {
                config.notify_timeout = Duration::from_millis(v);
            }
            if let Some(v) = s.bills_immediately {
                config.bills_immediately = v;
            }
            if let Some(v) = s.openids {
                config.openids = v;
            }
            if let Some(v) = s.refund_interval_ms {
                config.refund_interval = Duration::from_millis(v);
            }
        }
    }
    config.mode = match args.mode {
        ModeArg::Auto => Mode::Auto,
        ModeArg::Explicit => Mode::Explicit,
    };
    config.time_scale = args.time_scale;
    config.openids.extend(args.openids.iter().cloned());
    config.bills_immediately |= args.bills_immediately;
    config.v3 = Some(V3Config {
        keys_dir: args.keys_dir.clone(),
        signer: match args.v3_signer {
            V3SignerArg::PublicKey => V3Signer::PublicKey,
            V3SignerArg::Certificate => V3Signer::Certificate,
        },
    });
    if args.tls {
        config.tls = Some(TlsConfig {
            dir: args.tls_dir.clone(),
        });
    }
    let merchants: Vec<String> = config
        .merchants
        .iter()
        .map(|m| format!("{} (appid {})", m.mch_id, m.appid))
        .collect();
    let runtime =
        tokio::runtime::Runtime::new().map_err(|e| CliError::Usage(format!("cannot start the runtime: {e}")))?;
    runtime.block_on(async move {
        let sim = Simulator::new(config).map_err(|e| CliError::Usage(e.to_string()))?;
        let listener = tokio::net::TcpListener::bind(&args.listen)
            .await
            .map_err(|e| CliError::Usage(format!("cannot listen on {}: {e}", args.listen)))?;
        let tls_files = sim.tls_files();
        let v3_files = sim.v3_files();
        let handle = sim.serve(listener).await.map_err(|e| CliError::Usage(e.to_string()))?;
        eprintln!("WeChat Pay simulator at {}", handle.base_url());
        eprintln!("  merchants: {}", merchants.join(", "));
        eprintln!("  point base_url and sns_base_url at {}", handle.base_url());
        if let Some(files) = v3_files {
            eprintln!(
                "  APIv3: verify with {} (id {}) or the platform certificate {}; signing with the {}",
                files.pub_key.display(),
                files.pub_key_id,
                files.platform_cert.display(),
                match args.v3_signer {
                    V3SignerArg::PublicKey => "public key",
                    V3SignerArg::Certificate => "platform certificate",
                }
            );
        }
        if let Some(files) = tls_files {
            eprintln!(
                "  trust {} ; client certificates under {}",
                files.ca_cert.display(),
                args.tls_dir.display()
            );
        }
        crate::shutdown_signal().await;
        eprintln!("shutting down");
        handle.shutdown().await;
        Ok(())
    })
}
