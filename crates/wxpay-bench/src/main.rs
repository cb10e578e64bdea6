//! `wxpay-bench`: a closed-loop load generator for the simulator, the gateway, and the peer
//! service a merchant would run instead (`../shared/bench`), with the same connections,
//! requests and arithmetic for each, so that their figures compare.
//!
//! Each of `--connections` tasks keeps one HTTP/1.1 keep-alive connection and sends its next
//! request as soon as the previous answer is in, like `wrk`. Every request is a freshly
//! signed `unifiedorder` with its own `out_trade_no`, so each one creates an order. Latencies
//! are kept exactly (not bucketed) and sorted at the end; the target's resident memory is
//! read from `/proc` when its pid is given.
//!
//! ```text
//! cargo run --release -p wxpay-bench -- simulator --target http://127.0.0.1:8090 --pid $(pgrep -f 'wxpay simulator')
//! ```

mod reconcile;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Parser, Subcommand};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use wxpay_protocol::v2::{self, UnifiedOrder};
use wxpay_protocol::{ApiKey, AppId, Fen, MchId, Merchant, Nonce, OutTradeNo, SignType};

/// Prints a line, and stops quietly when the reader went away (`… | head`).
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write;
        if writeln!(std::io::stdout().lock(), $($arg)*).is_err() {
            std::process::exit(0);
        }
    }};
}

#[derive(Debug, Parser)]
#[command(name = "wxpay-bench", about = "Load runs for the wxpay simulator and gateway")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// `unifiedorder` against a WeChat Pay simulator (the built-in test merchant).
    Simulator(SimArgs),
    /// Order creation and first-delivery payment notifications against the wxpay gateway,
    /// or against the peer service of `../shared/bench` with `--api peer`.
    Gateway(GatewayArgs),
    /// Reconciling a generated day of 100,000 bill rows against a seeded database.
    Reconcile(reconcile::ReconcileArgs),
}

#[derive(Debug, clap::Args)]
struct SimArgs {
    /// The simulator's base URL (plain http).
    #[arg(long, default_value = "http://127.0.0.1:8090")]
    target: String,
    /// Concurrent connections.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Seconds measured (after the warm-up).
    #[arg(long, default_value_t = 20)]
    duration: u64,
    /// Seconds of warm-up, not measured.
    #[arg(long, default_value_t = 3)]
    warmup: u64,
    /// Instead of a timed run, create this many orders as fast as possible, then report.
    #[arg(long)]
    orders: Option<u64>,
    /// The simulator's pid, to report its resident memory.
    #[arg(long)]
    pid: Option<u32>,
    /// The orders' notify_url (default: the simulator's own sink, which answers SUCCESS).
    #[arg(long)]
    notify_url: Option<String>,
    /// Sign with HMAC-SHA256 instead of MD5.
    #[arg(long)]
    hmac: bool,
    /// Worker threads of the load generator.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Offered load in requests per second, spread over the connections (open loop, like
    /// wrk2). Latency then counts from when each request was due, so that a slow answer
    /// that delays the next request is not hidden. Without it, each connection sends as
    /// fast as answers come (closed loop, like wrk): the maximum throughput.
    #[arg(long)]
    rate: Option<f64>,
}

fn main() {
    let cli = Cli::parse();
    let threads = match &cli.command {
        Command::Simulator(a) => a.threads,
        Command::Gateway(a) => a.threads,
        Command::Reconcile(a) => a.threads,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let result = match cli.command {
        Command::Simulator(args) => runtime.block_on(simulator(args)),
        Command::Gateway(args) => runtime.block_on(gateway(args)),
        Command::Reconcile(args) => runtime.block_on(reconcile::run(args)),
    };
    if let Err(e) = result {
        eprintln!("wxpay-bench: {e}");
        std::process::exit(1);
    }
}

/// What each request is.
enum Workload {
    /// A freshly signed `unifiedorder` to a simulator.
    SimUnifiedOrder,
    /// `POST /v1/orders` to the wxpay gateway, a new order each time.
    GatewayOrders { token: String },
    /// `POST /orders` to the peer service (wechatpy + FastAPI), a new order each time.
    PeerOrders,
    /// Pre-signed payment notifications, each sent once: connection c sends bodies c, c + C,
    /// c + 2C, … and stops when its share is sent.
    Notify {
        path: &'static str,
        bodies: Arc<Vec<Bytes>>,
        connections: usize,
    },
}

struct Shared {
    workload: Workload,
    merchant: Merchant,
    notify_url: String,
    authority: String,
    run: String,
    recording: AtomicBool,
    stop: AtomicBool,
    budget: Option<AtomicU64>,
    /// Time between two requests of one connection, in an open-loop run.
    interval: Option<Duration>,
    errors: AtomicU64,
    epoch: Instant,
    /// Answers slower than 5 ms: (ms since start, µs), to tell one stall of everything from
    /// slowness spread over the run.
    slow: std::sync::Mutex<Vec<(u64, u32)>>,
}

fn rss_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// Major page faults of a process so far (`/proc/<pid>/stat`, field 12): pages read back from
/// disk. On these machines the host reclaims cold file pages (the binary's own code among
/// them), and every fault on one stalls a request for milliseconds: worth reporting beside
/// the latencies it explains.
fn major_faults(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_comm = &stat[stat.rfind(')')? + 2..];
    after_comm.split_whitespace().nth(9)?.parse().ok()
}

fn authority_of(target: &str) -> Result<String, String> {
    Ok(target
        .strip_prefix("http://")
        .ok_or("the target must be http://host:port")?
        .trim_end_matches('/')
        .to_owned())
}

fn run_id() -> String {
    format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
            % 0xff_ffff
    )
}

/// One load run.
struct Spec {
    label: String,
    authority: String,
    workload: Workload,
    merchant: Merchant,
    notify_url: String,
    connections: usize,
    /// Timed runs: warm-up and measured seconds. Budgeted runs: the number of requests.
    warmup: u64,
    duration: u64,
    budget: Option<u64>,
    rate: Option<f64>,
    pid: Option<u32>,
    /// Stop at the first failed request.
    strict: bool,
}

/// What a run measured.
struct Report {
    rps: f64,
    requests: usize,
    p50: f64,
    p99: f64,
    rss_mib: Option<f64>,
    json: serde_json::Value,
}

/// Runs the connections, prints the figures (with `label`), and returns them.
async fn run_load(spec: Spec) -> Result<Report, String> {
    let finite = spec.budget.is_some() || matches!(spec.workload, Workload::Notify { .. });
    let shared = Arc::new(Shared {
        workload: spec.workload,
        notify_url: spec.notify_url,
        authority: spec.authority,
        merchant: spec.merchant,
        run: run_id(),
        recording: AtomicBool::new(finite),
        stop: AtomicBool::new(false),
        budget: spec.budget.map(AtomicU64::new),
        interval: spec
            .rate
            .filter(|r| *r > 0.0)
            .map(|r| Duration::from_secs_f64(spec.connections as f64 / r)),
        errors: AtomicU64::new(0),
        epoch: Instant::now(),
        slow: std::sync::Mutex::new(Vec::new()),
    });
    let rss_before = spec.pid.and_then(rss_kib);
    let faults_before = spec.pid.and_then(major_faults);
    let mut tasks = Vec::new();
    for conn in 0..spec.connections {
        let shared = shared.clone();
        tasks.push(tokio::spawn(async move { connection(conn, shared).await }));
    }
    let started;
    if finite {
        started = Instant::now();
    } else {
        tokio::time::sleep(Duration::from_secs(spec.warmup)).await;
        shared.recording.store(true, Ordering::SeqCst);
        started = Instant::now();
        tokio::time::sleep(Duration::from_secs(spec.duration)).await;
        shared.stop.store(true, Ordering::SeqCst);
    }
    let mut latencies: Vec<u32> = Vec::new();
    for t in tasks {
        match t.await {
            Ok(Ok(mut l)) => latencies.append(&mut l),
            Ok(Err(e)) => return Err(e),
            Err(e) => return Err(e.to_string()),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let n = latencies.len();
    let pct = |p: f64| -> f64 {
        if n == 0 {
            return 0.0;
        }
        let i = ((p / 100.0) * n as f64).ceil() as usize;
        f64::from(latencies[i.clamp(1, n) - 1]) / 1000.0
    };
    let rate = n as f64 / elapsed;
    let errors = shared.errors.load(Ordering::Relaxed);
    let mut slow = std::mem::take(&mut *shared.slow.lock().unwrap_or_else(|e| e.into_inner()));
    if !slow.is_empty() && slow.len() * 20 < n.max(1) {
        // Group slow answers by the 100 ms window they started in (only when they are few:
        // otherwise the run is simply slow, not stalled).
        slow.sort_unstable();
        let mut windows: Vec<(u64, usize, u32)> = Vec::new();
        for (at, us) in slow {
            match windows.last_mut() {
                Some((w, n, worst)) if *w == at / 100 => {
                    *n += 1;
                    *worst = (*worst).max(us);
                }
                _ => windows.push((at / 100, 1, us)),
            }
        }
        let list: Vec<String> = windows
            .iter()
            .map(|(w, n, worst)| format!("{:.1}s:{}x<={:.0}ms", *w as f64 / 10.0, n, f64::from(*worst) / 1000.0))
            .collect();
        say!(
            "answers over 5 ms, by 100 ms window (start: count, worst): {}",
            list.join(" ")
        );
    }
    let mode = spec
        .rate
        .map_or_else(|| "closed loop".to_owned(), |r| format!("open loop at {r:.0}/s"));
    say!(
        "{} x{} connections, {mode}, {:.1} s: {} requests, {:.0} req/s, errors {}",
        spec.label,
        spec.connections,
        elapsed,
        n,
        rate,
        errors
    );
    say!(
        "latency ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
        pct(50.0),
        pct(90.0),
        pct(99.0),
        pct(99.9),
        latencies.last().map_or(0.0, |v| f64::from(*v) / 1000.0)
    );
    let mut json = serde_json::json!({
        "bench": spec.label,
        "connections": spec.connections,
        "offered_rps": spec.rate,
        "seconds": elapsed,
        "requests": n,
        "rps": rate,
        "errors": errors,
        "p50_ms": pct(50.0), "p90_ms": pct(90.0), "p99_ms": pct(99.0), "p999_ms": pct(99.9),
    });
    let mut rss_mib = None;
    if let Some(pid) = spec.pid {
        if let Some((rss, hwm)) = rss_kib(pid) {
            say!(
                "server memory: RSS {:.1} MiB (peak {:.1} MiB; {:.1} MiB before the run)",
                rss as f64 / 1024.0,
                hwm as f64 / 1024.0,
                rss_before.map_or(0.0, |r| r.0 as f64 / 1024.0)
            );
            rss_mib = Some(hwm as f64 / 1024.0);
            json["rss_mib"] = serde_json::json!(rss as f64 / 1024.0);
            json["peak_rss_mib"] = serde_json::json!(hwm as f64 / 1024.0);
            if let (Some(a), Some(b)) = (faults_before, major_faults(pid)) {
                say!("server major page faults during the run: {}", b - a);
                json["major_faults"] = serde_json::json!(b - a);
            }
        }
    }
    say!("{json}");
    if errors > 0 && spec.strict {
        return Err(format!("{errors} requests failed"));
    }
    Ok(Report {
        rps: rate,
        requests: n,
        p50: pct(50.0),
        p99: pct(99.0),
        rss_mib,
        json,
    })
}

fn test_merchant(hmac: bool) -> Result<Merchant, String> {
    Ok(Merchant {
        appid: AppId::new(wxpay_simulator::TEST_APPID).map_err(|e| e.to_string())?,
        mch_id: MchId::new(wxpay_simulator::TEST_MCH_ID).map_err(|e| e.to_string())?,
        key: ApiKey::new(wxpay_simulator::TEST_API_KEY).map_err(|e| e.to_string())?,
        sign_type: if hmac { SignType::HmacSha256 } else { SignType::Md5 },
    })
}

async fn simulator(args: SimArgs) -> Result<(), String> {
    let authority = authority_of(&args.target)?;
    run_load(Spec {
        label: "unifiedorder".into(),
        notify_url: args
            .notify_url
            .clone()
            .unwrap_or_else(|| format!("http://{authority}/simulator/sink")),
        authority,
        workload: Workload::SimUnifiedOrder,
        merchant: test_merchant(args.hmac)?,
        connections: args.connections,
        warmup: args.warmup,
        duration: args.duration,
        budget: args.orders,
        rate: args.rate,
        pid: args.pid,
        strict: true,
    })
    .await
    .map(|_| ())
}

/// Signed payment notifications for orders `prefix0 … prefix{count-1}` of `fee` fen, with
/// the fields WeChat Pay sends (23 of them, as the peer's load scripts send).
fn notifications(merchant: &Merchant, prefix: &str, count: usize, fee: u64) -> Result<Vec<Bytes>, String> {
    let time_end = wxpay_protocol::BeijingTime::from_unix(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0),
    )
    .to_compact();
    let fee = fee.to_string();
    (0..count)
        .map(|i| {
            let no = format!("{prefix}{i}");
            let nonce = format!("{:032x}", (i as u128).wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let tx = format!("42000{i:023}");
            let mut f = wxpay_protocol::Fields::new();
            for (k, v) in [
                ("appid", merchant.appid.as_str()),
                ("attach", "门店: 深圳南山店"),
                ("bank_type", "CMC"),
                ("cash_fee", fee.as_str()),
                ("coupon_count", "0"),
                ("coupon_fee", "0"),
                ("device_info", "WEB"),
                ("fee_type", "CNY"),
                ("is_subscribe", "N"),
                ("mch_id", merchant.mch_id.as_str()),
                ("nonce_str", nonce.as_str()),
                ("openid", "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"),
                ("out_trade_no", no.as_str()),
                ("result_code", "SUCCESS"),
                ("return_code", "SUCCESS"),
                ("return_msg", "OK"),
                ("settlement_total_fee", fee.as_str()),
                ("sign_type", "MD5"),
                ("time_end", time_end.as_str()),
                ("total_fee", fee.as_str()),
                ("trade_type", "JSAPI"),
                ("transaction_id", tx.as_str()),
            ] {
                f.insert(k, v.to_owned()).map_err(|e| e.to_string())?;
            }
            f.sign(&merchant.key, SignType::Md5);
            f.to_xml().map(Bytes::from).map_err(|e| e.to_string())
        })
        .collect()
}

/// Which service is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Api {
    /// The wxpay gateway: `POST /v1/orders` (bearer token), `POST /notify/v2/pay`.
    Wxpay,
    /// The peer service of `../shared/bench` (wechatpy + FastAPI): `POST /orders`, `POST /notify`.
    Peer,
}

#[derive(Debug, clap::Args)]
struct GatewayArgs {
    /// The service's base URL (plain http).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    target: String,
    /// Which API the service speaks.
    #[arg(long, value_enum, default_value_t = Api::Wxpay)]
    api: Api,
    /// The bearer token (wxpay).
    #[arg(long, default_value = "bench-token-0123456789abcdef")]
    token: String,
    /// Concurrent connections.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Seconds of order creation measured (after the warm-up).
    #[arg(long, default_value_t = 15)]
    duration: u64,
    /// Seconds of warm-up, not measured.
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// Orders created (not measured) to receive one first-delivery notification each.
    #[arg(long, default_value_t = 60_000)]
    pool: usize,
    /// The service's pid, to report its resident memory.
    #[arg(long)]
    pid: Option<u32>,
    /// Offered order creations per second (open loop, latency counted from when each
    /// request was due); without it, as fast as answers come.
    #[arg(long)]
    rate: Option<f64>,
    /// Offered notifications per second (open loop); without it, as fast as answers come.
    #[arg(long)]
    notify_rate: Option<f64>,
    /// Only this part.
    #[arg(long, value_enum)]
    only: Option<Part>,
    /// During the notifications, this many more connections send junk notifications (not
    /// XML, an unknown merchant, a bad signature; 4 KB each) as fast as they are answered:
    /// what rejected traffic does to the genuine notifications beside it.
    #[arg(long, default_value_t = 0)]
    junk_connections: usize,
    /// Worker threads of the load generator.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// The merchant the peer service is configured with (its appid, mch_id, API key).
    #[arg(long, default_value = "wx2421b1c4370ec43b,10000100,192006250b4c09247ec02edce69f6a2d")]
    peer_merchant: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Part {
    /// Order creation.
    Orders,
    /// First-delivery payment notifications.
    Notify,
}

async fn gateway(args: GatewayArgs) -> Result<(), String> {
    let authority = authority_of(&args.target)?;
    let merchant = match args.api {
        Api::Wxpay => test_merchant(false)?,
        Api::Peer => {
            let parts: Vec<&str> = args.peer_merchant.split(',').collect();
            let [appid, mch_id, key] = parts[..] else {
                return Err("--peer-merchant is APPID,MCH_ID,KEY".into());
            };
            Merchant {
                appid: AppId::new(appid).map_err(|e| e.to_string())?,
                mch_id: MchId::new(mch_id).map_err(|e| e.to_string())?,
                key: ApiKey::new(key).map_err(|e| e.to_string())?,
                sign_type: SignType::Md5,
            }
        }
    };
    let name = match args.api {
        Api::Wxpay => "wxpay",
        Api::Peer => "peer",
    };
    let orders_workload = || match args.api {
        Api::Wxpay => Workload::GatewayOrders {
            token: args.token.clone(),
        },
        Api::Peer => Workload::PeerOrders,
    };
    let spec = |label: String, workload: Workload, rate: Option<f64>, connections: usize| Spec {
        label,
        authority: authority.clone(),
        workload,
        merchant: merchant.clone(),
        notify_url: String::new(),
        connections,
        warmup: args.warmup,
        duration: args.duration,
        budget: None,
        rate,
        pid: args.pid,
        strict: false,
    };
    let mut summary = serde_json::json!({"service": name});
    if args.only != Some(Part::Notify) {
        let r = run_load(spec(
            format!("{name} create order"),
            orders_workload(),
            args.rate,
            args.connections,
        ))
        .await?;
        summary["orders"] = r.json.clone();
        say!(
            "SUMMARY {name} orders: {:.0}/s p50 {:.2} ms p99 {:.2} ms peak RSS {}",
            r.rps,
            r.p50,
            r.p99,
            r.rss_mib.map_or("-".to_owned(), |m| format!("{m:.1} MiB"))
        );
    }
    if args.only != Some(Part::Orders) {
        // Seed the orders the notifications pay; their numbers are known: the seeding
        // connections number them from a shared counter.
        let prefix = format!("N{}x", run_id());
        let seeded = seed(&authority, &args, &prefix, orders_workload()).await?;
        let bodies = Arc::new(notifications(&merchant, &prefix, seeded, ORDER_FEE)?);
        let path = match args.api {
            Api::Wxpay => "/notify/v2/pay",
            Api::Peer => "/notify",
        };
        let workload = Workload::Notify {
            path,
            bodies,
            connections: args.connections,
        };
        let stop_junk = Arc::new(AtomicBool::new(false));
        let junk: Vec<_> = (0..args.junk_connections)
            .map(|_| tokio::spawn(junk_flood(authority.clone(), path, merchant.clone(), stop_junk.clone())))
            .collect();
        let junk_started = Instant::now();
        let r = run_load(spec(
            format!("{name} payment notification"),
            workload,
            args.notify_rate,
            args.connections,
        ))
        .await?;
        stop_junk.store(true, Ordering::Relaxed);
        let mut junk_sent = 0;
        for j in junk {
            junk_sent += j.await.map_err(|e| e.to_string())??;
        }
        if args.junk_connections > 0 {
            let secs = junk_started.elapsed().as_secs_f64();
            say!(
                "junk beside it: {junk_sent} rejected notifications from {} connections ({:.0}/s)",
                args.junk_connections,
                junk_sent as f64 / secs
            );
            summary["junk"] = serde_json::json!({"sent": junk_sent, "per_second": junk_sent as f64 / secs});
        }
        summary["notify"] = r.json.clone();
        say!(
            "SUMMARY {name} notifications: {:.0}/s p50 {:.2} ms p99 {:.2} ms ({} first deliveries) peak RSS {}",
            r.rps,
            r.p50,
            r.p99,
            r.requests,
            r.rss_mib.map_or("-".to_owned(), |m| format!("{m:.1} MiB"))
        );
    }
    say!("SUMMARY-JSON {summary}");
    Ok(())
}

/// Creates `args.pool` orders numbered `prefix0…`, as fast as the service allows (not
/// measured), and returns how many were created.
async fn seed(authority: &str, args: &GatewayArgs, prefix: &str, workload: Workload) -> Result<usize, String> {
    let counter = Arc::new(AtomicU64::new(0));
    let created = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    let workload = Arc::new(workload);
    for _ in 0..args.connections.min(32) {
        let (counter, created, workload) = (counter.clone(), created.clone(), workload.clone());
        let (pool, prefix, authority) = (args.pool as u64, prefix.to_owned(), authority.to_owned());
        tasks.push(tokio::spawn(async move {
            let mut sender = connect(&authority).await?;
            loop {
                let i = counter.fetch_add(1, Ordering::Relaxed);
                if i >= pool {
                    return Ok::<(), String>(());
                }
                let no = format!("{prefix}{i}");
                let req = order_request(&workload, &authority, &no)?;
                if sender.ready().await.is_err() {
                    sender = connect(&authority).await?;
                }
                let resp = sender.send_request(req).await.map_err(|e| format!("seeding: {e}"))?;
                let status = resp.status().as_u16();
                let body = resp
                    .into_body()
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                if !answer_ok(&workload, status, &body) {
                    return Err(format!("seeding order {no}: HTTP {status}"));
                }
                created.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    let n = created.load(Ordering::Relaxed) as usize;
    say!(
        "seeded {n} orders in {:.1} s ({:.0}/s, not measured)",
        started.elapsed().as_secs_f64(),
        n as f64 / started.elapsed().as_secs_f64()
    );
    Ok(n)
}

/// Sends junk notifications on one connection until `stop`; how many were answered.
async fn junk_flood(
    authority: String,
    path: &'static str,
    merchant: Merchant,
    stop: Arc<AtomicBool>,
) -> Result<u64, String> {
    let filler = "x".repeat(4000);
    let mut forged = wxpay_protocol::Fields::new();
    for (k, v) in [
        ("appid", merchant.appid.as_str()),
        ("mch_id", merchant.mch_id.as_str()),
        ("out_trade_no", "JUNK0001"),
        ("result_code", "SUCCESS"),
        ("return_code", "SUCCESS"),
        ("total_fee", "1"),
        ("attach", filler.as_str()),
        ("sign", "00000000000000000000000000000000"),
    ] {
        forged.insert(k, v.to_owned()).map_err(|e| e.to_string())?;
    }
    let bodies = [
        Bytes::from(format!("not xml at all {filler}")),
        Bytes::from(format!(
            "<xml><mch_id>1</mch_id><appid>wx0000000000000000</appid><pad>{filler}</pad></xml>"
        )),
        Bytes::from(forged.to_xml().map_err(|e| e.to_string())?),
    ];
    let mut sender = connect(&authority).await?;
    let mut sent = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let req = hyper::Request::post(path)
            .header(hyper::header::HOST, authority.as_str())
            .header(hyper::header::CONTENT_TYPE, "text/xml")
            .body(Full::new(bodies[(sent % 3) as usize].clone()))
            .map_err(|e| e.to_string())?;
        if sender.ready().await.is_err() {
            sender = connect(&authority).await?;
        }
        match sender.send_request(req).await {
            Ok(resp) => {
                let _ = resp.into_body().collect().await;
                sent += 1;
            }
            Err(_) => sender = connect(&authority).await?,
        }
    }
    Ok(sent)
}

async fn connect(authority: &str) -> Result<http1::SendRequest<Full<Bytes>>, String> {
    let stream = tokio::net::TcpStream::connect(authority)
        .await
        .map_err(|e| format!("connect {authority}: {e}"))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let (sender, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

async fn connection(conn: usize, shared: Arc<Shared>) -> Result<Vec<u32>, String> {
    let mut sender = connect(&shared.authority).await?;
    let mut latencies = Vec::with_capacity(1 << 16);
    let mut slow: Vec<(u64, u32)> = Vec::new();
    let mut seq: u64 = 0;
    // Open loop: request k of this connection is due at start + k × interval, staggered
    // across connections.
    let start = Instant::now()
        + shared
            .interval
            .map_or(Duration::ZERO, |i| i.mul_f64(conn as f64 / 64.0));
    let mut due = start;
    let mut previous_done = start;
    loop {
        if shared.stop.load(Ordering::Relaxed) {
            break;
        }
        if let Some(budget) = &shared.budget {
            if budget
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| b.checked_sub(1))
                .is_err()
            {
                break;
            }
        }
        seq += 1;
        let Some(req) = build_request(&shared, conn, seq)? else {
            break;
        };
        if shared.interval.is_some() {
            tokio::time::sleep_until(due.into()).await;
        }
        let sent = Instant::now();
        // Latency counts from when the request was due if the previous answer made it late
        // (a backlog), and from when it was sent if it was only the timer's slack.
        let t0 = match shared.interval {
            Some(_) if previous_done > due => due,
            _ => sent,
        };
        if let Some(interval) = shared.interval {
            due += interval;
        }
        if sender.ready().await.is_err() {
            sender = connect(&shared.authority).await?;
        }
        let ok = match sender.send_request(req).await {
            Ok(resp) => {
                let status = resp.status();
                match resp.into_body().collect().await {
                    Ok(b) => answer_ok(&shared.workload, status.as_u16(), &b.to_bytes()),
                    Err(_) => false,
                }
            }
            Err(_) => {
                sender = connect(&shared.authority).await?;
                false
            }
        };
        previous_done = Instant::now();
        let micros = previous_done.duration_since(t0).as_micros().min(u128::from(u32::MAX)) as u32;
        if ok {
            if shared.recording.load(Ordering::Relaxed) {
                latencies.push(micros);
                if micros > 5_000 {
                    slow.push((t0.duration_since(shared.epoch).as_millis() as u64, micros));
                }
            }
        } else {
            shared.errors.fetch_add(1, Ordering::Relaxed);
        }
    }
    shared.slow.lock().unwrap_or_else(|e| e.into_inner()).extend(slow);
    Ok(latencies)
}

/// The `seq`-th request of connection `conn`, or `None` when its share is sent.
fn build_request(shared: &Shared, conn: usize, seq: u64) -> Result<Option<hyper::Request<Full<Bytes>>>, String> {
    let builder = |path: &str, content_type: &str| {
        hyper::Request::post(path)
            .header(hyper::header::HOST, shared.authority.as_str())
            .header(hyper::header::CONTENT_TYPE, content_type)
    };
    let req = match &shared.workload {
        Workload::SimUnifiedOrder => {
            let no = format!("L{}{:03}x{}", shared.run, conn, seq);
            let order = UnifiedOrder::jsapi(
                "压测商品",
                OutTradeNo::new(no).map_err(|e| e.to_string())?,
                Fen::new(1 + seq % 9999).map_err(|e| e.to_string())?,
                "127.0.0.1",
                shared.notify_url.as_str(),
                "oLoadTestUser000000000000000",
            );
            let nonce = Nonce::new(format!("{conn}n{seq}")).map_err(|e| e.to_string())?;
            let body = v2::encode(&order, &shared.merchant, &nonce).map_err(|e| e.to_string())?;
            builder("/pay/unifiedorder", "text/xml").body(Full::new(Bytes::from(body)))
        }
        Workload::GatewayOrders { .. } | Workload::PeerOrders => {
            let no = format!("O{}{conn:03}x{seq}", shared.run);
            return order_request(&shared.workload, &shared.authority, &no).map(Some);
        }
        Workload::Notify {
            path,
            bodies,
            connections,
        } => {
            let i = conn + (seq as usize - 1) * connections;
            let Some(body) = bodies.get(i) else {
                return Ok(None);
            };
            builder(path, "text/xml").body(Full::new(body.clone()))
        }
    };
    req.map(Some).map_err(|e| e.to_string())
}

/// A new order `no`, as the gateway (`POST /v1/orders`, bearer token) or the peer
/// (`POST /orders`) takes it.
fn order_request(workload: &Workload, authority: &str, no: &str) -> Result<hyper::Request<Full<Bytes>>, String> {
    let (path, body, token) = match workload {
        Workload::GatewayOrders { token } => ("/v1/orders", order_json("amount_fen", no, ORDER_FEE), Some(token)),
        Workload::PeerOrders => ("/orders", order_json("total_fee", no, ORDER_FEE), None),
        _ => return Err("not an order workload".into()),
    };
    let mut req = hyper::Request::post(path)
        .header(hyper::header::HOST, authority)
        .header(hyper::header::CONTENT_TYPE, "application/json");
    if let Some(t) = token {
        req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {t}"));
    }
    req.body(Full::new(Bytes::from(body))).map_err(|e| e.to_string())
}

/// The amount of every order of a gateway run: the peer's load scripts use 88.00 yuan.
const ORDER_FEE: u64 = 8800;

/// The body of a new order; the gateway calls the amount `amount_fen`, the peer `total_fee`.
fn order_json(amount_field: &str, out_trade_no: &str, fee: u64) -> String {
    serde_json::json!({
        "out_trade_no": out_trade_no,
        "openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o",
        amount_field: fee,
        "description": "微信小程序商城-精品咖啡豆 250g×2",
    })
    .to_string()
}

/// Whether an answer is the success of its workload.
fn answer_ok(workload: &Workload, status: u16, body: &[u8]) -> bool {
    let has = |needle: &[u8]| body.windows(needle.len()).any(|w| w == needle);
    match workload {
        // A byte search keeps the generator light; the simulator's tests check answers properly.
        Workload::SimUnifiedOrder => status == 200 && has(b"<result_code><![CDATA[SUCCESS]]></result_code>"),
        Workload::GatewayOrders { .. } => status == 201 && has(b"\"paySign\""),
        Workload::PeerOrders => status == 200 && has(b"\"paySign\""),
        Workload::Notify { .. } => status == 200 && has(b"SUCCESS"),
    }
}
