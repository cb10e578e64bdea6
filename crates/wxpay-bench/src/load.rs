//! The load engine: a run's connections, each sending its next request as soon as it may,
//! and the figures measured over them (exact latency percentiles, the target's memory).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use wxpay_protocol::v2::{self, UnifiedOrder};
use wxpay_protocol::{Fen, Merchant, Nonce, OutTradeNo};

use crate::process::{cpu_seconds, major_faults, rss_kib};
use crate::workload::{Workload, answer_ok, order_request};

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

/// The `host:port` of a plain-http base URL, which is all the connections need.
pub(crate) fn authority_of(target: &str) -> Result<String, String> {
    Ok(target
        .strip_prefix("http://")
        .ok_or("the target must be http://host:port")?
        .trim_end_matches('/')
        .to_owned())
}

/// A short tag of this run (the clock in seconds, in hex), which order numbers start with so
/// that one run does not reuse another's.
pub(crate) fn run_id() -> String {
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
pub(crate) struct Spec {
    /// The run's name in the printed figures and in the JSON (`bench`).
    pub(crate) label: String,
    /// The target's `host:port`.
    pub(crate) authority: String,
    /// What each request is.
    pub(crate) workload: Workload,
    /// The merchant that signs `unifiedorder` requests.
    pub(crate) merchant: Merchant,
    /// The `notify_url` of `unifiedorder` requests.
    pub(crate) notify_url: String,
    /// Concurrent connections.
    pub(crate) connections: usize,
    /// Timed runs: warm-up and measured seconds. Budgeted runs: the number of requests.
    pub(crate) warmup: u64,
    pub(crate) duration: u64,
    pub(crate) budget: Option<u64>,
    /// Offered requests per second (open loop); `None` for a closed loop.
    pub(crate) rate: Option<f64>,
    /// The target's pid, to report its memory and major page faults.
    pub(crate) pid: Option<u32>,
    /// Stop at the first failed request.
    pub(crate) strict: bool,
}

/// What a run measured.
pub(crate) struct Report {
    /// Successful requests per second of the measured time.
    pub(crate) rps: f64,
    /// Successful requests measured.
    pub(crate) requests: usize,
    /// Median latency, in ms.
    pub(crate) p50: f64,
    /// 99th-percentile latency, in ms.
    pub(crate) p99: f64,
    /// The target's peak resident memory in MiB, when its pid was given.
    pub(crate) rss_mib: Option<f64>,
    /// The target's CPU time (user + system) per successful request, in µs, when its pid
    /// was given.
    pub(crate) cpu_us: Option<f64>,
    /// The figures, as printed in JSON.
    pub(crate) json: serde_json::Value,
}

/// Runs the connections, prints the figures (with `label`), and returns them.
pub(crate) async fn run_load(spec: Spec) -> Result<Report, String> {
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
    // The target's CPU time is read where the measured window starts and after the last
    // answer: CPU per request is a figure that drifts far less than throughput on a shared
    // machine, because other work slows the target without adding to its own CPU time.
    let cpu_before;
    if finite {
        cpu_before = spec.pid.and_then(cpu_seconds);
        started = Instant::now();
    } else {
        tokio::time::sleep(Duration::from_secs(spec.warmup)).await;
        cpu_before = spec.pid.and_then(cpu_seconds);
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
    let cpu_after = spec.pid.and_then(cpu_seconds);
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
    let mut cpu_us = None;
    if let (Some((u0, s0)), Some((u1, s1))) = (cpu_before, cpu_after) {
        if n > 0 {
            let per = (u1 - u0 + s1 - s0) * 1e6 / n as f64;
            say!(
                "server CPU: {per:.0} µs per request ({:.2} s user + {:.2} s system for {n} requests)",
                u1 - u0,
                s1 - s0
            );
            json["cpu_us_per_request"] = serde_json::json!(per);
            json["cpu_user_s"] = serde_json::json!(u1 - u0);
            json["cpu_system_s"] = serde_json::json!(s1 - s0);
            cpu_us = Some(per);
        }
    }
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
        cpu_us,
        json,
    })
}

/// Opens one HTTP/1.1 connection to `authority`, with Nagle's algorithm off.
pub(crate) async fn connect(authority: &str) -> Result<http1::SendRequest<Full<Bytes>>, String> {
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
            headers,
            content_type,
            connections,
            ..
        } => {
            let i = conn + (seq as usize - 1) * connections;
            let Some(body) = bodies.get(i) else {
                return Ok(None);
            };
            let mut req = builder(path, content_type);
            for (name, value) in headers.get(i).map(Vec::as_slice).unwrap_or_default() {
                req = req.header(*name, value.as_str());
            }
            req.body(Full::new(body.clone()))
        }
    };
    req.map(Some).map_err(|e| e.to_string())
}
