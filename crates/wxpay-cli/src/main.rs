//! `wxpay`: the one binary of wxpay.
//!
//! This crate is the only place that reads arguments, environment variables and files. It
//! turns them into values of the library crates and maps their errors to messages and exit
//! codes: 0 for success, 1 for "checked, and it is wrong" (a signature that does not
//! verify), 2 for input that cannot be used.

mod config;
mod console;
mod demo;
mod doctor;
mod reconcile;
mod serve;
mod simulator;

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use wxpay_protocol::SignType;
use wxpay_protocol::lang::Lang;

/// wxpay: a self-hosted WeChat Pay gateway for mini program payments.
#[derive(Debug, Parser)]
#[command(name = "wxpay", version, about, long_about = None, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Sign APIv2 parameters and show the exact string that is signed.
    ///
    /// Parameters come as name=value arguments, as a JSON object (--json), or as an XML or
    /// JSON body on standard input. Empty values and an existing `sign` are left out, as
    /// WeChat Pay does. Mini program parameters (appId, timeStamp, nonceStr, package,
    /// signType) are signed into paySign.
    #[command(after_help = "Example (the official example of WeChat Pay's signature page):\n  \
        wxpay sign --key 192006250b4c09247ec02edce69f6a2d \\\n    \
        appid=wxd930ea5d5a258f4f mch_id=10000100 device_info=1000 body=test nonce_str=ibuaiVcKdpRxkhJA")]
    Sign(SignArgs),
    /// Check the signature of a body, and explain why it fails ("签名错误").
    ///
    /// Reads an APIv2 XML body (or the JSON parameters of wx.requestPayment) from FILE or
    /// standard input. Exits 0 and prints OK only when the signature verifies with the key
    /// and sign type given; otherwise exits 1 and names the most likely cause, confirming
    /// each one it can reproduce. With --v3, FILE is an APIv3 notification or answer as
    /// received: its Wechatpay-* header lines, an empty line, then the raw body.
    #[command(
        after_help = "Examples:\n  wxpay verify --key-file apikey.txt --sign-type HMAC-SHA256 < notify.xml\n  wxpay verify --v3 --public-key pub_key.pem --public-key-id PUB_KEY_ID_0112… --apiv3-key-file apiv3key.txt notify.http"
    )]
    Verify(VerifyArgs),
    /// Decrypt the req_info of an APIv2 refund notification, or an APIv3 resource.
    ///
    /// Takes the req_info value as an argument, or on standard input either alone or inside
    /// the whole notification body. Prints the decrypted <root> document. With --v3, decrypts
    /// the resource of an APIv3 notification (its JSON body, on standard input or as the
    /// argument) with the APIv3 key.
    #[command(
        after_help = "Examples:\n  wxpay decrypt --key-file apikey.txt < refund-notify.xml\n  wxpay decrypt --v3 --apiv3-key-file apiv3key.txt < notify.json"
    )]
    Decrypt(DecryptArgs),
    /// Run the WeChat Pay simulator alone.
    ///
    /// It serves the real APIv2 paths (/pay/unifiedorder, /pay/orderquery, /pay/closeorder,
    /// /secapi/pay/refund, /pay/refundquery, /pay/downloadbill, /sns/jscode2session) and the
    /// APIv3 ones (/v3/pay/transactions/…, /v3/refund/domestic/refunds…, /v3/certificates,
    /// /v3/bill/tradebill) with WeChat Pay's rules, signatures and errors, and control
    /// endpoints under /simulator/.
    /// Without --config it serves the built-in test merchant (see the README).
    #[command(after_help = "Example:\n  wxpay simulator --mode auto --time-scale 60")]
    Simulator(simulator::SimulatorArgs),
    /// Run the embedded demo: gateway + simulator + SQLite in one process, no account needed.
    ///
    /// Open the printed /demo address: it plays a mini program that logs in, orders, pays
    /// on the simulator's checkout page and sees the order paid, with every call shown. The
    /// database, the demo API token and the webhook secret are kept in --data-dir.
    #[command(after_help = "Example:\n  wxpay demo --listen 127.0.0.1:8080 --data-dir ./wxpay-demo")]
    Demo(demo::DemoArgs),
    /// Run the gateway from a configuration file.
    ///
    /// Serves the /v1 API for the business backend, WeChat Pay's notifications at
    /// /notify/v2/pay, /healthz, /readyz, /metrics and /openapi.json, and runs the background
    /// work (queries of unconfirmed orders, closing expired ones, webhook delivery). The
    /// schema is brought up to date at start.
    #[command(
        after_help = "Example:\n  wxpay serve --config wxpay.toml\n  WXPAY_DATABASE_URL=postgres://wxpay@db/wxpay wxpay serve --config wxpay.toml"
    )]
    Serve(serve::ServeArgs),
    /// Create or upgrade the database schema, and exit.
    #[command(after_help = "Example:\n  wxpay migrate --config wxpay.toml")]
    Migrate(serve::MigrateArgs),
    /// Reconcile a day's WeChat Pay bill against the database.
    ///
    /// Downloads the day's bill (downloadbill, ALL), parses it with exact fen, and compares
    /// it with the database order by order and refund by refund: missing here, missing at
    /// WeChat Pay, amount differs, status differs, and the totals. With --repair each
    /// difference is settled through orderquery/refundquery (never on the bill's word alone)
    /// and recorded in the order's history. Exits 0 only when the books balance (after
    /// repair, if asked), 1 when differences remain, 2 when it could not run.
    #[command(
        after_help = "Examples:\n  wxpay reconcile --config wxpay.toml --date 2026-11-26\n  wxpay reconcile --config wxpay.toml --date 2026-11-26 --repair --format json"
    )]
    Reconcile(reconcile::ReconcileArgs),
    /// The operator console: hash its password for `[console] password_hash`.
    #[command(after_help = "Example:\n  read -rs P && printf '%s\\n' \"$P\" | wxpay console hash-password")]
    Console(console::ConsoleArgs),
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum LogFormat {
    /// For people.
    Pretty,
    /// One JSON object a line, for log collectors.
    Json,
}

/// Keeps the log writer's thread running; dropping it writes out what is still queued. Hold
/// it until the command ends.
pub(crate) type LogGuard = Option<tracing_appender::non_blocking::WorkerGuard>;

/// Installs the log subscriber: `WXPAY_LOG` (or `RUST_LOG`) filters, `info` by default.
#[must_use = "dropping the guard stops the log writer"]
pub(crate) fn init_logging(format: LogFormat) -> LogGuard {
    init_logging_at(format, "info")
}

/// Installs the log subscriber with another default level (`warn` for commands whose output
/// is their report).
///
/// Lines go to stderr through a writer thread of their own: a request that logs (every paid
/// order does, at `info`) queues its line and goes on, instead of waiting for a `write` to
/// stderr on its worker thread. The queue blocks rather than drops when it is full, so no
/// line is lost to a burst; the writer thread batches what it finds queued into one write.
#[must_use = "dropping the guard stops the log writer"]
pub(crate) fn init_logging_at(format: LogFormat, default: &str) -> LogGuard {
    use tracing_subscriber::EnvFilter;
    let filter = std::env::var("WXPAY_LOG")
        .ok()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::new(default));
    // Colours only for a terminal: a log file or collector gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .thread_name("wxpay-log")
        .finish(std::io::BufWriter::new(std::io::stderr()));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(writer);
    let installed = match format {
        LogFormat::Pretty => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    installed.ok().map(|()| guard)
}

/// Completes on Ctrl-C or SIGTERM.
pub(crate) async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

/// Where the APIv2 key comes from.
#[derive(Debug, Args)]
struct KeyArgs {
    /// The APIv2 key (32 characters). Prefer --key-file: a key on the command line is
    /// visible to other users of the machine.
    #[arg(
        long,
        env = "WXPAY_API_KEY",
        hide_env_values = true,
        conflicts_with = "key_file",
        value_name = "KEY"
    )]
    key: Option<String>,
    /// A file holding the APIv2 key (one trailing line break is ignored).
    #[arg(long, value_name = "FILE")]
    key_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct SignArgs {
    #[command(flatten)]
    key: KeyArgs,
    /// The algorithm: MD5 (WeChat Pay's default) or HMAC-SHA256. Without it, a body's own
    /// sign_type field is used, or MD5.
    #[arg(long, value_name = "TYPE", value_parser = parse_sign_type)]
    sign_type: Option<SignType>,
    /// The parameters as one JSON object instead of name=value arguments.
    #[arg(long, value_name = "JSON", conflicts_with = "params")]
    json: Option<String>,
    /// What to print on standard output.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    output: Output,
    /// Parameters as name=value.
    #[arg(value_name = "NAME=VALUE")]
    params: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    /// The signed string (key masked), the sign type and the signature.
    Text,
    /// The signed XML body, ready to send.
    Xml,
    /// A JSON object with the parameters and the signature.
    Json,
}

/// What verifies and decrypts APIv3 (`wxpay verify --v3`, `wxpay decrypt --v3`).
#[derive(Debug, Args)]
struct V3Args {
    /// APIv3: the input is an APIv3 notification or answer.
    #[arg(long)]
    v3: bool,
    /// The WeChat Pay public key (pub_key.pem); with --public-key-id.
    #[arg(long, value_name = "FILE", requires = "public_key_id")]
    public_key: Option<PathBuf>,
    /// The id of the public key (PUB_KEY_ID_…), as Wechatpay-Serial names it.
    #[arg(long, value_name = "ID", requires = "public_key")]
    public_key_id: Option<String>,
    /// A platform certificate (PEM); may be given several times.
    #[arg(long, value_name = "FILE")]
    platform_cert: Vec<PathBuf>,
    /// A file holding the APIv3 key (32 bytes; one trailing line break is ignored): the
    /// resource is decrypted too.
    #[arg(long, value_name = "FILE")]
    apiv3_key_file: Option<PathBuf>,
    /// Check as at this Unix time instead of now (a notification saved earlier).
    #[arg(long, value_name = "SECS")]
    at: Option<i64>,
}

/// The language the doctor explains itself in.
#[derive(Debug, Args)]
struct LangArgs {
    /// The language of the explanations: en or zh. By default the locale's (LC_ALL,
    /// LC_MESSAGES, LANG): Chinese for zh_*, English otherwise.
    #[arg(long, value_name = "LANG", value_parser = ["en", "zh"])]
    lang: Option<String>,
}

impl LangArgs {
    fn chosen(&self) -> Lang {
        match self.lang.as_deref() {
            Some("zh") => Lang::Zh,
            Some(_) => Lang::En,
            // POSIX's order: LC_ALL overrides LC_MESSAGES, which overrides LANG.
            None => ["LC_ALL", "LC_MESSAGES", "LANG"]
                .iter()
                .find_map(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
                .map_or(Lang::En, |locale| Lang::from_locale(&locale)),
        }
    }
}

#[derive(Debug, Args)]
struct VerifyArgs {
    #[command(flatten)]
    lang: LangArgs,
    #[command(flatten)]
    v3: V3Args,
    #[command(flatten)]
    key: KeyArgs,
    /// The algorithm the merchant is configured for: MD5 (default) or HMAC-SHA256. A
    /// sign_type field in the body does not change it.
    #[arg(long, value_name = "TYPE", value_parser = parse_sign_type, default_value = "MD5")]
    sign_type: SignType,
    /// The body to check; standard input when absent or `-`.
    #[arg(value_name = "FILE")]
    file: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct DecryptArgs {
    #[command(flatten)]
    lang: LangArgs,
    #[command(flatten)]
    v3: V3Args,
    #[command(flatten)]
    key: KeyArgs,
    /// The req_info value; standard input when absent.
    #[arg(value_name = "REQ_INFO")]
    req_info: Option<String>,
}

fn parse_sign_type(s: &str) -> Result<SignType, String> {
    s.parse::<SignType>().map_err(|e| e.to_string())
}

/// Why a command failed, mapped to an exit code in [`main`].
#[derive(Debug, thiserror::Error)]
enum CliError {
    /// Input that cannot be used; the message says what to do.
    #[error("{0}")]
    Usage(String),
    /// Checked, and found wrong (the report was already printed).
    #[error("the signature does not verify")]
    Failed,
}

impl From<wxpay_protocol::Error> for CliError {
    fn from(e: wxpay_protocol::Error) -> Self {
        CliError::Usage(e.to_string())
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(
        cli.command,
        Command::Serve(_) | Command::Demo(_) | Command::Simulator(_)
    ) {
        bound_malloc_arenas();
    }
    let (name, result) = match cli.command {
        Command::Sign(a) => ("sign", doctor::sign(a)),
        Command::Verify(a) => ("verify", doctor::verify(a)),
        Command::Decrypt(a) => ("decrypt", doctor::decrypt(a)),
        Command::Simulator(a) => ("simulator", simulator::run(a)),
        Command::Demo(a) => ("demo", demo::run(a)),
        Command::Serve(a) => ("serve", serve::serve(a)),
        Command::Migrate(a) => ("migrate", serve::migrate(a)),
        Command::Reconcile(a) => ("reconcile", reconcile::run(a)),
        Command::Console(a) => ("console", console::run(a)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(CliError::Failed) => ExitCode::from(1),
        Err(CliError::Usage(msg)) => {
            eprintln!("wxpay {name}: error: {msg}");
            ExitCode::from(2)
        }
    }
}

/// The environment variable that caps glibc's malloc arenas, and the cap a server runs with.
#[cfg(target_os = "linux")]
const ARENA_MAX: (&str, &str) = ("MALLOC_ARENA_MAX", "2");

/// Runs this same command again, in place (same process, same arguments), with glibc's
/// malloc capped at two arenas, unless the environment already says how many.
///
/// glibc gives the threads of a process up to eight arenas per core and keeps in each what
/// its threads freed; under steady load the gateway's SQLite reads move between the threads
/// of a blocking pool, and its resident memory grew for as long as it ran (a 30-minute soak:
/// 167 MiB in the middle third, 231 MiB in the last). With two arenas it held at 73-75 MiB
/// at the same rate and latency. glibc reads the cap only when a process starts, and the
/// workspace has no unsafe code for `mallopt`, hence the exec. mimalloc was tried instead:
/// as Rust's allocator alone it left SQLite's allocations to glibc and the growth with them;
/// as the C `malloc` too it held 2.2 GiB. On a system without glibc the variable means
/// nothing and costs one exec.
#[cfg(target_os = "linux")]
fn bound_malloc_arenas() {
    use std::os::unix::process::CommandExt;
    let (name, value) = ARENA_MAX;
    // The operator's own cap, by either of glibc's two spellings, stands.
    let tunables = std::env::var("GLIBC_TUNABLES").unwrap_or_default();
    if std::env::var_os(name).is_some() || tunables.contains("malloc.arena_max") {
        return;
    }
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(error) => {
            eprintln!("wxpay: running without {name}={value}: cannot find this program ({error})");
            return;
        }
    };
    let mut args = std::env::args_os();
    let mut again = std::process::Command::new(exe);
    if let Some(arg0) = args.next() {
        again.arg0(arg0);
    }
    // `exec` returns only when it failed (the binary replaced on disk by an upgrade, say):
    // the command then runs as it is, with glibc's default.
    let error = again.args(args).env(name, value).exec();
    eprintln!("wxpay: running without {name}={value}: {error}");
}

/// Elsewhere there is no glibc whose arenas to cap.
#[cfg(not(target_os = "linux"))]
fn bound_malloc_arenas() {}

/// Reads a key file as it is, keeping whitespace (the doctor reports it), except one trailing
/// line break, which every editor adds.
fn read_key_file(path: &std::path::Path) -> Result<Vec<u8>, CliError> {
    let mut key = std::fs::read(path)
        .map_err(|e| CliError::Usage(format!("cannot read the key file {}: {e}", path.display())))?;
    if key.ends_with(b"\n") {
        key.pop();
        if key.ends_with(b"\r") {
            key.pop();
        }
    }
    Ok(key)
}

/// Reads the key as given (see [`read_key_file`]).
fn raw_key(k: &KeyArgs) -> Result<String, CliError> {
    if let Some(path) = &k.key_file {
        return String::from_utf8(read_key_file(path)?)
            .map_err(|_| CliError::Usage(format!("the key file {} is not text", path.display())));
    }
    if let Some(key) = &k.key {
        return Ok(key.clone());
    }
    Err(CliError::Usage(
        "no API key: pass --key-file FILE (recommended), --key KEY, or set WXPAY_API_KEY".into(),
    ))
}

/// Writes to standard output. When the reader went away (`wxpay verify … | head`), the
/// rest of the output is not wanted: stop quietly instead of panicking on a broken pipe.
fn emit(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("wxpay: cannot write to standard output: {e}");
        std::process::exit(2);
    }
}

/// Reads all of standard input, refusing to wait on a terminal.
fn read_stdin(what: &str) -> Result<Vec<u8>, CliError> {
    use std::io::IsTerminal;
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        return Err(CliError::Usage(format!("{what}, or pipe it on standard input")));
    }
    let mut buf = Vec::new();
    stdin
        .lock()
        .take(16 * 1024 * 1024)
        .read_to_end(&mut buf)
        .map_err(|e| CliError::Usage(format!("cannot read standard input: {e}")))?;
    Ok(buf)
}
