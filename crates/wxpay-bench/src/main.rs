//! `wxpay-bench`: a closed-loop load generator for the simulator (and, later, the gateway).
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
    match cli.command {
        Command::Simulator(args) => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(args.threads.max(1))
                .enable_all()
                .build()
                .expect("a tokio runtime");
            if let Err(e) = runtime.block_on(simulator(args)) {
                eprintln!("wxpay-bench: {e}");
                std::process::exit(1);
            }
        }
    }
}

struct Shared {
    merchant: Merchant,
    notify_url: String,
    host: String,
    authority: String,
    run: String,
    recording: AtomicBool,
    stop: AtomicBool,
    budget: Option<AtomicU64>,
    /// Time between two requests of one connection, in an open-loop run.
    interval: Option<Duration>,
    errors: AtomicU64,
    sent: AtomicU64,
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

async fn simulator(args: SimArgs) -> Result<(), String> {
    let authority = args
        .target
        .strip_prefix("http://")
        .ok_or("the target must be http://host:port")?
        .trim_end_matches('/')
        .to_owned();
    let merchant = Merchant {
        appid: AppId::new(wxpay_simulator::TEST_APPID).map_err(|e| e.to_string())?,
        mch_id: MchId::new(wxpay_simulator::TEST_MCH_ID).map_err(|e| e.to_string())?,
        key: ApiKey::new(wxpay_simulator::TEST_API_KEY).map_err(|e| e.to_string())?,
        sign_type: if args.hmac { SignType::HmacSha256 } else { SignType::Md5 },
    };
    let run = format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
            % 0xff_ffff
    );
    let shared = Arc::new(Shared {
        notify_url: args
            .notify_url
            .clone()
            .unwrap_or_else(|| format!("http://{authority}/simulator/sink")),
        host: authority.clone(),
        authority,
        merchant,
        run,
        recording: AtomicBool::new(args.orders.is_some()),
        stop: AtomicBool::new(false),
        budget: args.orders.map(AtomicU64::new),
        interval: args
            .rate
            .filter(|r| *r > 0.0)
            .map(|r| Duration::from_secs_f64(args.connections as f64 / r)),
        errors: AtomicU64::new(0),
        sent: AtomicU64::new(0),
        epoch: Instant::now(),
        slow: std::sync::Mutex::new(Vec::new()),
    });
    let rss_before = args.pid.and_then(rss_kib);
    let faults_before = args.pid.and_then(major_faults);
    let mut tasks = Vec::new();
    for conn in 0..args.connections {
        let shared = shared.clone();
        tasks.push(tokio::spawn(async move { connection(conn, shared).await }));
    }
    let started;
    if args.orders.is_some() {
        started = Instant::now();
    } else {
        tokio::time::sleep(Duration::from_secs(args.warmup)).await;
        shared.recording.store(true, Ordering::SeqCst);
        started = Instant::now();
        tokio::time::sleep(Duration::from_secs(args.duration)).await;
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
    if !slow.is_empty() {
        // Group slow answers by the 100 ms window they started in.
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
    let mode = args
        .rate
        .map_or_else(|| "closed loop".to_owned(), |r| format!("open loop at {r:.0}/s"));
    say!(
        "unifiedorder x{} connections, {mode}, {:.1} s: {} requests, {:.0} req/s, errors {}",
        args.connections,
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
        "bench": "simulator.unifiedorder",
        "connections": args.connections,
        "offered_rps": args.rate,
        "seconds": elapsed,
        "requests": n,
        "rps": rate,
        "errors": errors,
        "p50_ms": pct(50.0), "p90_ms": pct(90.0), "p99_ms": pct(99.0), "p999_ms": pct(99.9),
        "orders_created": shared.sent.load(Ordering::Relaxed),
    });
    if let Some(pid) = args.pid {
        if let Some((rss, hwm)) = rss_kib(pid) {
            say!(
                "simulator memory: RSS {:.1} MiB (peak {:.1} MiB; {:.1} MiB before the run)",
                rss as f64 / 1024.0,
                hwm as f64 / 1024.0,
                rss_before.map_or(0.0, |r| r.0 as f64 / 1024.0)
            );
            json["rss_mib"] = serde_json::json!(rss as f64 / 1024.0);
            if let (Some(a), Some(b)) = (faults_before, major_faults(pid)) {
                say!("simulator major page faults during the run: {}", b - a);
                json["major_faults"] = serde_json::json!(b - a);
            }
            json["peak_rss_mib"] = serde_json::json!(hwm as f64 / 1024.0);
        }
    }
    say!("{json}");
    if errors > 0 {
        return Err(format!("{errors} requests failed"));
    }
    Ok(())
}

async fn connect(shared: &Shared) -> Result<http1::SendRequest<Full<Bytes>>, String> {
    let stream = tokio::net::TcpStream::connect(&shared.authority)
        .await
        .map_err(|e| format!("connect {}: {e}", shared.authority))?;
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
    let mut sender = connect(&shared).await?;
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
        let req = hyper::Request::post("/pay/unifiedorder")
            .header(hyper::header::HOST, shared.host.as_str())
            .header(hyper::header::CONTENT_TYPE, "text/xml")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
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
            sender = connect(&shared).await?;
        }
        let ok = match sender.send_request(req).await {
            Ok(resp) => {
                let status = resp.status();
                match resp.into_body().collect().await {
                    Ok(b) => status == 200 && memchr_ok(&b.to_bytes()),
                    Err(_) => false,
                }
            }
            Err(_) => {
                sender = connect(&shared).await?;
                false
            }
        };
        previous_done = Instant::now();
        let micros = previous_done.duration_since(t0).as_micros().min(u128::from(u32::MAX)) as u32;
        if ok {
            shared.sent.fetch_add(1, Ordering::Relaxed);
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

/// Whether an answer says `result_code` SUCCESS (a byte search, to keep the generator light;
/// the simulator's tests check answers properly).
fn memchr_ok(body: &[u8]) -> bool {
    const NEEDLE: &[u8] = b"<result_code><![CDATA[SUCCESS]]></result_code>";
    body.windows(NEEDLE.len()).any(|w| w == NEEDLE)
}
