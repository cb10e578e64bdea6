//! `wxpay-bench soak`: mixed traffic at a steady rate for a long time, or through a fault,
//! with every acknowledged write kept in a ledger and checked against the gateway at the end.
//!
//! Each customer (started `--rate` times a second, open loop) creates an order; most pay it
//! through the simulator (which notifies the gateway, and retries as WeChat Pay does), the
//! others send the payment notification themselves; some send that notification again (a
//! duplicate), some refund part of the paid order, some read it, and one in ten also sends
//! junk (an amount in yuan, a forged notification) that must be refused. Every minute a line
//! gives what was answered, the latency percentiles, the gateway's resident memory and the
//! database's size; at the end every order, payment and refund that was acknowledged must be
//! found as acknowledged. With `--tolerate-outage`, 503 answers and FAIL replies are counted
//! as refusals (what a fault run expects while the database is away), not as errors.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::Semaphore;
use wxpay_protocol::{Fields, SignType};

use crate::process::rss_kib;
use crate::simulator::test_merchant;

/// What `wxpay-bench soak` takes.
#[derive(Debug, clap::Args)]
pub(crate) struct SoakArgs {
    /// The gateway.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    target: String,
    /// The simulator the gateway talks to (explicit mode): customers pay through it.
    #[arg(long, default_value = "http://127.0.0.1:8090")]
    simulator: String,
    /// The gateway's API token.
    #[arg(long, default_value = "bench-token-0123456789")]
    token: String,
    /// Customers started each second.
    #[arg(long)]
    rate: f64,
    /// Seconds of traffic.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// The most customers under way at once: beyond it, new ones wait (so a rate above what
    /// the gateway can do measures what it can do).
    #[arg(long, default_value_t = 2000)]
    max_inflight: usize,
    /// The gateway's pid, for its resident memory.
    #[arg(long)]
    pid: Option<u32>,
    /// The SQLite database file, for its size (with its -wal).
    #[arg(long)]
    db_file: Option<PathBuf>,
    /// Count 503 answers, FAIL replies and refused connections as refusals, not errors.
    #[arg(long)]
    tolerate_outage: bool,
    /// Seconds to wait at the end for payments the simulator is still notifying.
    #[arg(long, default_value_t = 120)]
    settle_seconds: u64,
    /// Seconds between report lines.
    #[arg(long, default_value_t = 60)]
    report_every: u64,
    /// Where to write the summary as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Worker threads of the generator.
    #[arg(long, default_value_t = 2)]
    pub(crate) threads: usize,
}

/// What happened in one minute (or the whole run).
#[derive(Default, Clone)]
struct Window {
    ok: u64,
    refused: u64,
    errors: u64,
    /// Request latencies in microseconds.
    latencies: Vec<u32>,
}

/// What was acknowledged, and what went wrong.
#[derive(Default)]
struct Ledger {
    /// out_trade_no → amount, for every order answered 201.
    orders: HashMap<String, u64>,
    /// Orders whose payment was acknowledged: the simulator took it (it notifies until the
    /// gateway says SUCCESS), or the gateway answered our own notification SUCCESS.
    paid: Vec<String>,
    /// out_refund_no → out_trade_no, for every refund answered 201.
    refunds: HashMap<String, String>,
    window: Window,
    total: Window,
    /// The first unexpected answers, for the report.
    samples: Vec<String>,
    customers: u64,
}

/// How an answer counts.
enum Outcome {
    Ok,
    Refused,
    Error(String),
}

struct Soak {
    http: reqwest::Client,
    args: SoakArgs,
    run: String,
    ledger: Mutex<Ledger>,
    merchant: wxpay_protocol::Merchant,
}

impl Soak {
    fn record(&self, started: Instant, outcome: Outcome) {
        let micros = started.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
        let mut l = self.ledger.lock().unwrap();
        l.window.latencies.push(micros);
        match outcome {
            Outcome::Ok => l.window.ok += 1,
            Outcome::Refused => l.window.refused += 1,
            Outcome::Error(e) => {
                l.window.errors += 1;
                if l.samples.len() < 20 {
                    l.samples.push(e);
                }
            }
        }
    }

    /// Sends a request and classifies the answer: `ok` says which statuses succeed.
    async fn call(
        &self,
        what: &str,
        req: reqwest::RequestBuilder,
        ok: &[u16],
        body_has: Option<&str>,
    ) -> Option<Value> {
        let started = Instant::now();
        let answer = match req.send().await {
            Ok(r) => {
                let status = r.status().as_u16();
                r.text().await.map(|t| (status, t))
            }
            Err(e) => Err(e),
        };
        match answer {
            Ok((status, text)) if ok.contains(&status) && body_has.is_none_or(|n| text.contains(n)) => {
                self.record(started, Outcome::Ok);
                Some(serde_json::from_str(&text).unwrap_or(Value::Null))
            }
            Ok((status, text)) => {
                let outage = status == 503 || (status >= 500 && text.contains("FAIL"));
                let outcome = if outage && self.args.tolerate_outage {
                    Outcome::Refused
                } else {
                    Outcome::Error(format!(
                        "{what}: {status} {}",
                        text.chars().take(200).collect::<String>()
                    ))
                };
                self.record(started, outcome);
                None
            }
            Err(e) => {
                let outcome = if self.args.tolerate_outage && e.is_connect() {
                    Outcome::Refused
                } else {
                    Outcome::Error(format!("{what}: {e}"))
                };
                self.record(started, outcome);
                None
            }
        }
    }

    fn api(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.args.target))
            .bearer_auth(&self.args.token)
    }

    /// A payment notification for `no`, signed with the test merchant's key (or forged).
    fn notification(&self, no: &str, amount: u64, tx: &str, forged: bool) -> String {
        let amount = amount.to_string();
        let mut f = Fields::new();
        for (k, v) in [
            ("appid", self.merchant.appid.as_str()),
            ("bank_type", "CMC"),
            ("cash_fee", amount.as_str()),
            ("fee_type", "CNY"),
            ("is_subscribe", "N"),
            ("mch_id", self.merchant.mch_id.as_str()),
            ("nonce_str", "5d2b6c2a8db53831f7eda20af46e531c"),
            ("openid", "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"),
            ("out_trade_no", no),
            ("result_code", "SUCCESS"),
            ("return_code", "SUCCESS"),
            ("time_end", "20261205120000"),
            ("total_fee", amount.as_str()),
            ("trade_type", "JSAPI"),
            ("transaction_id", tx),
        ] {
            f.insert(k, v.to_owned()).expect("plain fields");
        }
        f.sign(&self.merchant.key, SignType::Md5);
        let xml = f.to_xml().expect("plain fields");
        if forged {
            xml.replacen("<sign><![CDATA[", "<sign><![CDATA[0", 1)
        } else {
            xml
        }
    }

    /// One customer's visit.
    async fn customer(self: Arc<Self>, i: u64) {
        let no = format!("SK{}{i:07}", self.run);
        let amount = 100 + i % 900;
        let body = json!({"description": "soak", "amount_fen": amount, "openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o", "out_trade_no": no});
        if self
            .call(
                "create",
                self.api(reqwest::Method::POST, "/v1/orders").json(&body),
                &[201],
                Some("paySign"),
            )
            .await
            .is_none()
        {
            return;
        }
        self.ledger.lock().unwrap().orders.insert(no.clone(), amount);
        if i % 10 == 0 {
            let yuan = json!({"description": "soak", "amount_fen": 1.5, "openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"});
            self.call(
                "junk order",
                self.api(reqwest::Method::POST, "/v1/orders").json(&yuan),
                &[422],
                None,
            )
            .await;
            let forged = self.notification(&no, amount, "4200000000000000000000000000", true);
            let notify = self
                .http
                .post(format!("{}/notify/v2/pay", self.args.target))
                .body(forged);
            self.call("forged notification", notify, &[400, 401, 403, 404], Some("FAIL"))
                .await;
        }
        // Three in four pay through WeChat Pay; the fourth's notification is its own.
        let tx = if i % 4 == 3 {
            let tx = format!("4200{}{i:016}", self.run);
            let notify = self
                .http
                .post(format!("{}/notify/v2/pay", self.args.target))
                .body(self.notification(&no, amount, &tx, false));
            if self
                .call("notification", notify, &[200], Some("SUCCESS"))
                .await
                .is_none()
            {
                return;
            }
            self.ledger.lock().unwrap().paid.push(no.clone());
            tx
        } else {
            let pay = self
                .http
                .post(format!("{}/simulator/pay", self.args.simulator))
                .json(&json!({"out_trade_no": no}));
            if self.call("pay", pay, &[200], None).await.is_none() {
                return;
            }
            self.ledger.lock().unwrap().paid.push(no.clone());
            // Wait for the simulator's notification to land, reading the order as a mini
            // program would.
            let mut tx = None;
            for _ in 0..20 {
                tokio::time::sleep(Duration::from_millis(250)).await;
                let o = self
                    .call(
                        "read",
                        self.api(reqwest::Method::GET, &format!("/v1/orders/{no}")),
                        &[200],
                        None,
                    )
                    .await;
                if let Some(t) = o.as_ref().and_then(|o| o["transaction_id"].as_str()) {
                    tx = Some(t.to_owned());
                    break;
                }
            }
            let Some(tx) = tx else { return };
            tx
        };
        if i % 5 == 0 {
            // WeChat Pay's duplicate: the same notification again.
            let again = self
                .http
                .post(format!("{}/notify/v2/pay", self.args.target))
                .body(self.notification(&no, amount, &tx, false));
            self.call("duplicate", again, &[200], Some("SUCCESS")).await;
        }
        if i % 4 == 1 {
            let refund_no = format!("{no}R");
            let refund = self
                .api(reqwest::Method::POST, &format!("/v1/orders/{no}/refunds"))
                .json(&json!({"amount_fen": amount / 2, "out_refund_no": refund_no}));
            if self.call("refund", refund, &[201], None).await.is_some() {
                self.ledger.lock().unwrap().refunds.insert(refund_no, no);
            }
        }
    }
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[i]) / 1000.0
}

fn db_bytes(file: &Option<PathBuf>) -> Option<u64> {
    let file = file.as_ref()?;
    let size = |p: PathBuf| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let mut wal = file.clone().into_os_string();
    wal.push("-wal");
    Some(size(file.clone()) + size(PathBuf::from(wal)))
}

/// `wxpay-bench soak`.
pub(crate) async fn soak(args: SoakArgs) -> Result<(), String> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(args.max_inflight)
        .build()
        .map_err(|e| e.to_string())?;
    let seconds = args.seconds;
    let rate = args.rate;
    let soak = Arc::new(Soak {
        http,
        run: crate::load::run_id(),
        ledger: Mutex::new(Ledger::default()),
        merchant: test_merchant(false)?,
        args,
    });
    let inflight = Arc::new(Semaphore::new(soak.args.max_inflight));
    let started = Instant::now();
    let mut minutes: Vec<Value> = Vec::new();
    let every = Duration::from_secs(soak.args.report_every.max(1));
    let mut next_report = every.min(Duration::from_secs(seconds));
    let mut tasks = tokio::task::JoinSet::new();
    let mut i = 0u64;
    let interval = Duration::from_secs_f64(1.0 / rate);
    say!("soak: {rate} customers/s for {seconds} s against {}", soak.args.target);
    loop {
        let due = interval.mul_f64(i as f64);
        let now = started.elapsed();
        if now >= Duration::from_secs(seconds) {
            break;
        }
        if now >= next_report {
            minutes.push(report_window(&soak, now));
            next_report += every;
        }
        if due > now {
            tokio::time::sleep((due - now).min(Duration::from_millis(100))).await;
            continue;
        }
        let permit = inflight.clone().acquire_owned().await.map_err(|e| e.to_string())?;
        let s = soak.clone();
        tasks.spawn(async move {
            s.customer(i).await;
            drop(permit);
        });
        soak.ledger.lock().unwrap().customers += 1;
        i += 1;
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    let elapsed = started.elapsed();
    minutes.push(report_window(&soak, elapsed));
    let verdict = verify(&soak).await;
    let l = soak.ledger.lock().unwrap();
    let mut all = l.total.latencies.clone();
    all.sort_unstable();
    let summary = json!({
        "rate": rate,
        "seconds": elapsed.as_secs_f64(),
        "customers": l.customers,
        "customers_per_second": l.customers as f64 / elapsed.as_secs_f64(),
        "requests": l.total.ok + l.total.refused + l.total.errors,
        "ok": l.total.ok,
        "refused": l.total.refused,
        "errors": l.total.errors,
        "error_samples": l.samples,
        "p50_ms": percentile(&all, 0.5),
        "p99_ms": percentile(&all, 0.99),
        "max_ms": percentile(&all, 1.0),
        "orders": l.orders.len(),
        "payments": l.paid.len(),
        "refunds": l.refunds.len(),
        "lost": verdict,
        "minutes": minutes,
    });
    say!("{summary}");
    if let Some(path) = &soak.args.json {
        std::fs::write(path, summary.to_string()).map_err(|e| e.to_string())?;
    }
    let lost = summary["lost"].as_array().map_or(0, Vec::len);
    if l.total.errors > 0 || lost > 0 {
        return Err(format!(
            "{} errors, {lost} acknowledged writes not found",
            l.total.errors
        ));
    }
    Ok(())
}

/// Closes the current window into a minute line.
fn report_window(soak: &Soak, at: Duration) -> Value {
    let mut l = soak.ledger.lock().unwrap();
    let mut w = std::mem::take(&mut l.window);
    l.total.ok += w.ok;
    l.total.refused += w.refused;
    l.total.errors += w.errors;
    l.total.latencies.extend_from_slice(&w.latencies);
    w.latencies.sort_unstable();
    let rss = soak.args.pid.and_then(rss_kib).map(|(rss, _)| rss);
    let line = json!({
        "at_s": at.as_secs(),
        "ok": w.ok,
        "refused": w.refused,
        "errors": w.errors,
        "p50_ms": percentile(&w.latencies, 0.5),
        "p99_ms": percentile(&w.latencies, 0.99),
        "max_ms": percentile(&w.latencies, 1.0),
        "rss_kib": rss,
        "db_bytes": db_bytes(&soak.args.db_file),
        "orders": l.orders.len(),
    });
    say!("{line}");
    line
}

/// Every acknowledged write, looked up by 32 tasks at once: the ones not found (or not as
/// acknowledged).
async fn verify(soak: &Arc<Soak>) -> Vec<String> {
    let (orders, paid, refunds) = {
        let l = soak.ledger.lock().unwrap();
        let paid: std::collections::HashSet<String> = l.paid.iter().cloned().collect();
        (l.orders.clone(), paid, l.refunds.clone())
    };
    let deadline = Instant::now() + Duration::from_secs(soak.args.settle_seconds);
    let mut work: Vec<Check> = orders
        .into_iter()
        .map(|(no, amount)| {
            let paid = paid.contains(&no);
            Check::Order { no, amount, paid }
        })
        .collect();
    work.extend(
        refunds
            .into_iter()
            .map(|(refund_no, no)| Check::Refund { refund_no, no }),
    );
    let work = Arc::new(Mutex::new(work));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..32 {
        let (soak, work) = (soak.clone(), work.clone());
        tasks.spawn(async move {
            let mut lost = Vec::new();
            loop {
                let Some(check) = work.lock().unwrap().pop() else { break };
                if let Some(missing) = check.run(&soak, deadline).await {
                    lost.push(missing);
                }
            }
            lost
        });
    }
    let mut lost = Vec::new();
    while let Some(found) = tasks.join_next().await {
        lost.extend(found.unwrap_or_default());
    }
    lost
}

/// One acknowledged write to look up.
enum Check {
    /// An order, with its amount, and whether its payment was acknowledged.
    Order { no: String, amount: u64, paid: bool },
    /// A refund of an order.
    Refund { refund_no: String, no: String },
}

impl Check {
    /// What is missing, if anything. A payment the simulator took may still be on its way
    /// (it notifies again until the gateway says SUCCESS), so it is waited for until
    /// `deadline`.
    async fn run(&self, soak: &Soak, deadline: Instant) -> Option<String> {
        let get = |path: String| async move {
            let r = soak.api(reqwest::Method::GET, &path).send().await.ok()?;
            if r.status() != 200 {
                return None;
            }
            r.json::<Value>().await.ok()
        };
        match self {
            Check::Order { no, amount, paid } => loop {
                let o = get(format!("/v1/orders/{no}")).await;
                let Some(o) = o.filter(|o| o["amount_fen"] == *amount) else {
                    return Some(format!("order {no}: not found with its amount"));
                };
                let status = o["status"].as_str().unwrap_or("");
                if !paid || status == "paid" || status == "refunded" {
                    return None;
                }
                if Instant::now() > deadline {
                    return Some(format!("payment of {no}: {status}"));
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            },
            Check::Refund { refund_no, no } => match get(format!("/v1/refunds/{refund_no}")).await {
                Some(r) if r["out_trade_no"] == no.as_str() => None,
                other => Some(format!("refund {refund_no}: {other:?}")),
            },
        }
    }
}
