//! `wxpay serve`, `migrate` and `demo` as processes: killed with SIGKILL mid-burst and
//! restarted, two instances on one PostgreSQL database, and the demo played through.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sqlx::Connection;
use wxpay_protocol::{ApiKey, Fields, SignType};
use wxpay_simulator::{SimConfig, SimHandle, Simulator, TEST_API_KEY, TEST_APPID, TEST_MCH_ID};

pub(crate) const TOKEN: &str = "crash-test-token-0123456789";
/// The webhook secret of the configurations the tests write.
pub(crate) const WEBHOOK_SECRET: &str = "whsec_process_test";

pub(crate) fn scratch_dir(name: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let dir = std::env::temp_dir().join(format!("wxpay-cli-{name}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// An HTTP client; reqwest is built without a default TLS provider, so the one wxpay uses is
/// installed first.
pub(crate) fn client() -> reqwest::Client {
    client_trusting(None)
}

/// An HTTP client that also trusts `ca` (the TLS simulator's test CA).
pub(crate) fn client_trusting(ca: Option<&Path>) -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(10));
    if let Some(ca) = ca {
        builder = builder.add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(ca).unwrap()).unwrap());
    }
    builder.build().unwrap()
}

/// A loopback port on which the test itself listened and then closed its listener: a
/// connection to it is refused. (Not a port to start a server on: servers bind port 0.)
pub(crate) fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    port
}

/// The address a test gives a gateway as its `public_url`: a listener the test holds for
/// its whole run, forwarding each connection to wherever the gateway listens now. Gateways
/// listen on port 0 (a restarted one gets another port), so no port is ever picked,
/// released, and hoped to be still free.
pub(crate) struct Front {
    pub(crate) url: String,
    target: Arc<Mutex<Option<std::net::SocketAddr>>>,
}

impl Front {
    pub(crate) async fn bind() -> Front {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let target: Arc<Mutex<Option<std::net::SocketAddr>>> = Arc::new(Mutex::new(None));
        let to = target.clone();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                // Without a gateway behind it, a connection is closed at once, like a refusal.
                let Some(addr) = *to.lock().unwrap() else { continue };
                tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(addr).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Front { url, target }
    }

    /// Forwards connections from now on to `server`.
    pub(crate) fn forward_to(&self, server: &Server) {
        *self.target.lock().unwrap() = Some(server.addr);
    }
}

/// A PostgreSQL database for one test, dropped afterwards; `None` without `DATABASE_URL`.
pub(crate) struct PgDb {
    admin: String,
    name: String,
    pub(crate) url: String,
}

/// The PostgreSQL server's URL from `DATABASE_URL`, when the run has one. Without it the
/// PostgreSQL tests are skipped, unless `WXPAY_REQUIRE_POSTGRES=1` (CI) makes that a failure.
pub(crate) fn postgres_admin_url() -> Option<String> {
    let url = std::env::var("DATABASE_URL").ok().filter(|u| u.starts_with("postgres"));
    let required = std::env::var("WXPAY_REQUIRE_POSTGRES").is_ok_and(|v| v == "1");
    assert!(
        url.is_some() || !required,
        "WXPAY_REQUIRE_POSTGRES=1 but DATABASE_URL names no PostgreSQL server"
    );
    url
}

/// `url` with another database name.
pub(crate) fn with_database(url: &str, name: &str) -> String {
    let (base, query) = url.split_once('?').map_or((url, None), |(b, q)| (b, Some(q)));
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let host_end = base[scheme_end..].find('/').map_or(base.len(), |i| scheme_end + i);
    format!(
        "{}/{name}{}",
        &base[..host_end],
        query.map(|q| format!("?{q}")).unwrap_or_default()
    )
}

impl PgDb {
    pub(crate) async fn create() -> Option<PgDb> {
        let admin = postgres_admin_url()?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let name = format!("wxpay_cli_test_{}_{nanos}", std::process::id());
        let mut c = sqlx::PgConnection::connect(&admin).await.unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut c)
            .await
            .unwrap();
        let url = with_database(&admin, &name);
        Some(PgDb { admin, name, url })
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        // Also when a test fails half-way: on a thread of its own, outside the test's runtime.
        let (admin, name) = (self.admin.clone(), self.name.clone());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(mut c) = sqlx::PgConnection::connect(&admin).await {
                    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                    )))
                    .execute(&mut c)
                    .await;
                }
            });
        })
        .join();
    }
}

/// The simulator, in this test process, at a thousand times real speed so that its
/// notification retries come within milliseconds.
pub(crate) async fn simulator() -> SimHandle {
    simulator_with(|_| {}).await
}

/// The simulator as `simulator()` makes it, with `edit` applied to its configuration.
pub(crate) async fn simulator_with(edit: impl FnOnce(&mut SimConfig)) -> SimHandle {
    // In a secret scan the simulator in this process logs into the scan too.
    crate::secret_scan::install_trace_subscriber();
    let mut config = SimConfig::new();
    config.time_scale = 1000.0;
    // The fixtures' payers, fixed rather than issued through jscode2session: listed, the
    // simulator accepts them as it accepts the openids it issues.
    config.openids = ["oUpF8uMuAJO_M2pxb1Q9zNjWeS6o", "o-reconcile", "oCrash", "oTwo"]
        .map(String::from)
        .to_vec();
    edit(&mut config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    Simulator::new(config).unwrap().serve(listener).await.unwrap()
}

/// A configuration listening on port 0 with `public_url` as its public address.
pub(crate) fn write_config(
    dir: &Path,
    public_url: &str,
    database_url: &str,
    sim_url: &str,
    webhook: Option<&str>,
) -> PathBuf {
    let jobs = "first_check_after_secs = 1\nmax_check_interval_secs = 1\npoll_every_ms = 50";
    write_config_with(dir, public_url, database_url, sim_url, webhook, "", jobs)
}

/// `write_config` with more keys for the merchant and another `[jobs]` section.
pub(crate) fn write_config_with(
    dir: &Path,
    public_url: &str,
    database_url: &str,
    sim_url: &str,
    webhook: Option<&str>,
    merchant_extra: &str,
    jobs: &str,
) -> PathBuf {
    let webhook = webhook
        .map(|u| format!("[webhook]\nurl = \"{u}\"\nsecret = \"{WEBHOOK_SECRET}\"\n"))
        .unwrap_or_default();
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:0"
public_url = "{public_url}"
api_tokens = ["{TOKEN}"]

[database]
url = "{database_url}"
pool_size = 8

[[merchants]]
name = "default"
appid = "{TEST_APPID}"
app_secret = "wxpaysimulatortestappsecret00000"
mch_id = "{TEST_MCH_ID}"
api_key = "{TEST_API_KEY}"
base_url = "{sim_url}"
sns_base_url = "{sim_url}"
{merchant_extra}

[jobs]
{jobs}

{webhook}"#
    );
    static WRITTEN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = WRITTEN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = dir.join(format!("wxpay-{n}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// A `wxpay serve` started but not yet known to listen.
pub(crate) struct Starting {
    child: Child,
    rx: std::sync::mpsc::Receiver<String>,
    log: PathBuf,
    log_copier: std::thread::JoinHandle<()>,
}

impl Starting {
    /// Waits until the server says where it listens.
    pub(crate) fn listening(self) -> Server {
        let Starting {
            mut child,
            rx,
            log,
            log_copier,
        } = self;
        // The channel closes at once if the server exits without saying it.
        let Ok(addr) = rx.recv_timeout(Duration::from_secs(20)) else {
            let _ = child.kill();
            let _ = child.wait();
            let _ = log_copier.join();
            panic!(
                "wxpay serve never said where it listens; its log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        };
        let addr: std::net::SocketAddr = addr.trim().parse().unwrap();
        Server {
            child,
            url: format!("http://{addr}"),
            addr,
            log_copier: Some(log_copier),
        }
    }
}

pub(crate) struct Server {
    child: Child,
    pub(crate) url: String,
    addr: std::net::SocketAddr,
    /// Copies the server's stderr into its log file; joined once the server has exited, so
    /// that the log is complete when a test reads it.
    log_copier: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    /// `wxpay serve --config config` (listening on port 0), its stderr appended to `log`.
    pub(crate) fn start(config: &Path, log: &Path) -> Server {
        Server::start_with(config, log, &[], "warn")
    }

    /// `start` with more arguments and a log level; returns once the server has said where
    /// it listens.
    pub(crate) fn start_with(config: &Path, log: &Path, args: &[&str], level: &str) -> Server {
        Server::spawn(config, log, args, level).listening()
    }

    /// Starts `wxpay serve` without waiting for it: several can start at once (and race for
    /// the migration lock); [`Starting::listening`] waits for each.
    pub(crate) fn spawn(config: &Path, log: &Path, args: &[&str], level: &str) -> Starting {
        use std::io::{BufRead, Write};
        let mut file = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
        let mut child = crate::wxpay_command()
            .arg("serve")
            .args(args)
            .arg("--config")
            .arg(config)
            .env("WXPAY_LOG", crate::log_level(level))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let log_copier = std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                crate::scan_line(&line);
                // The address line is for the test; the log keeps only what the server logs.
                match line.strip_prefix("wxpay gateway at http://") {
                    Some(addr) => {
                        let _ = tx.send(addr.to_owned());
                    }
                    None => {
                        let _ = writeln!(file, "{line}");
                    }
                }
            }
        });
        Starting {
            child,
            rx,
            log: log.to_owned(),
            log_copier,
        }
    }

    pub(crate) async fn ready(&mut self, http: &reqwest::Client) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(r) = http.get(format!("{}/readyz", self.url)).send().await {
                if r.status() == 200 {
                    return;
                }
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("wxpay serve exited: {status}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("wxpay serve never became ready");
    }

    pub(crate) fn kill(&mut self) {
        // SIGKILL: no shutdown handler runs, nothing is flushed by the program.
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        self.join_log();
    }

    fn join_log(&mut self) {
        if let Some(copier) = self.log_copier.take() {
            let _ = copier.join();
        }
    }

    pub(crate) fn terminate(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.child.try_wait().unwrap().is_some() {
                self.join_log();
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.join_log();
    }
}

pub(crate) fn paid_notification(out_trade_no: &str, total_fee: u64, transaction_id: &str) -> String {
    let mut f = Fields::new();
    for (k, v) in [
        ("appid", TEST_APPID.to_owned()),
        ("bank_type", "CMC".to_owned()),
        ("cash_fee", total_fee.to_string()),
        ("fee_type", "CNY".to_owned()),
        ("is_subscribe", "N".to_owned()),
        ("mch_id", TEST_MCH_ID.to_owned()),
        ("nonce_str", "5d2b6c2a8db53831f7eda20af46e531c".to_owned()),
        ("openid", "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o".to_owned()),
        ("out_trade_no", out_trade_no.to_owned()),
        ("result_code", "SUCCESS".to_owned()),
        ("return_code", "SUCCESS".to_owned()),
        ("time_end", "20261127101010".to_owned()),
        ("total_fee", total_fee.to_string()),
        ("trade_type", "JSAPI".to_owned()),
        ("transaction_id", transaction_id.to_owned()),
    ] {
        f.insert(k, v).unwrap();
    }
    f.sign(&ApiKey::new(TEST_API_KEY).unwrap(), SignType::Md5);
    f.to_xml().unwrap()
}

async fn get(http: &reqwest::Client, url: &str) -> (u16, Value) {
    call(http, reqwest::Method::GET, url, None).await
}

/// A `/v1` call with the token: (status, JSON body).
pub(crate) async fn call(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = http.request(method, url).bearer_auth(TOKEN);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

/// Polls `f` until it holds, up to 15 s.
pub(crate) async fn wait_for(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("never: {what}");
}

const SUCCESS: &str =
    "<xml><return_code><![CDATA[SUCCESS]]></return_code><return_msg><![CDATA[OK]]></return_msg></xml>";

/// A webhook receiver that records every delivery.
async fn webhook_receiver() -> (Arc<Mutex<Vec<Value>>>, String) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let state = seen.clone();
    let app = axum::Router::new().route(
        "/events",
        axum::routing::post(move |body: String| {
            let state = state.clone();
            async move {
                state
                    .lock()
                    .unwrap()
                    .push(serde_json::from_str::<Value>(&body).unwrap());
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (seen, format!("http://{addr}/events"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_one_postgres_database_apply_each_payment_once_and_share_background_work() {
    let Some(pg) = PgDb::create().await else {
        eprintln!("DATABASE_URL is not set: the two-instance test needs PostgreSQL");
        return;
    };
    let dir = scratch_dir("two");
    let http = client();
    let sim = simulator().await;
    let (events, hook) = webhook_receiver().await;
    let (fa, fb) = (Front::bind().await, Front::bind().await);
    // Migrations run at the start of each; starting both at once also exercises the lock.
    let a = Server::spawn(
        &write_config(&dir, &fa.url, &pg.url, sim.base_url(), Some(&hook)),
        &dir.join("a.log"),
        &[],
        "warn",
    );
    let b = Server::spawn(
        &write_config(&dir, &fb.url, &pg.url, sim.base_url(), Some(&hook)),
        &dir.join("b.log"),
        &[],
        "warn",
    );
    let (mut a, mut b) = (a.listening(), b.listening());
    fa.forward_to(&a);
    fb.forward_to(&b);
    a.ready(&http).await;
    b.ready(&http).await;
    let urls = [a.url.clone(), b.url.clone()];

    // Forty orders paid by notifications sent to both instances, three times each, at once.
    let mut notified = Vec::new();
    for i in 0..40 {
        let no = format!("TWO{i:04}");
        let r = http
            .post(format!("{}/v1/orders", urls[i % 2]))
            .bearer_auth(TOKEN)
            .json(&json!({"description": "two", "amount_fen": 500 + i, "openid": "oTwo", "out_trade_no": no}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        notified.push((no, 500 + i as u64));
    }
    let mut sends = tokio::task::JoinSet::new();
    for (i, (no, amount)) in notified.iter().enumerate() {
        let body = paid_notification(no, *amount, &format!("4200TWO{i:08}"));
        for copy in 0..6 {
            let (http, url, body) = (http.clone(), urls[copy % 2].clone(), body.clone());
            sends.spawn(async move {
                let r = http
                    .post(format!("{url}/notify/v2/pay"))
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                (r.status().as_u16(), r.text().await.unwrap())
            });
        }
    }
    while let Some(r) = sends.join_next().await {
        assert_eq!(r.unwrap(), (200, SUCCESS.to_owned()));
    }

    // Twenty orders paid upstream whose notifications are all refused as forged: only the
    // background checks of the two instances can find them.
    let mut checked = Vec::new();
    for i in 0..20 {
        let no = format!("CHK{i:04}");
        let r = http
            .post(format!("{}/v1/orders", urls[i % 2]))
            .bearer_auth(TOKEN)
            .json(&json!({"description": "check", "amount_fen": 300, "openid": "oTwo", "out_trade_no": no}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let fault = json!({"kind": "notify_bad_signature", "out_trade_no": no, "for_ms": 120000});
        let installed = http
            .post(format!("{}/simulator/faults", sim.base_url()))
            .json(&fault)
            .send()
            .await
            .unwrap();
        assert_eq!(installed.status(), 201, "the fault was installed");
        let paid = http
            .post(format!("{}/simulator/pay", sim.base_url()))
            .json(&json!({"out_trade_no": no}))
            .send()
            .await
            .unwrap();
        assert_eq!(paid.status(), 200);
        checked.push(no);
    }

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let delivered = events.lock().unwrap().len();
        if delivered >= 60 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Every event the database holds is marked delivered: a second delivery could only come
    // from an instance that claimed an event not yet marked, and none is left.
    let mut db = sqlx::PgConnection::connect(&pg.url).await.unwrap();
    wait_for("every event is marked delivered", async || {
        let (total, undelivered): (i64, i64) =
            sqlx::query_as("SELECT COUNT(*), COUNT(*) FILTER (WHERE delivered_at IS NULL) FROM outbox")
                .fetch_one(&mut db)
                .await
                .unwrap();
        total >= 60 && undelivered == 0
    })
    .await;
    let delivered = events.lock().unwrap().clone();
    let ids: HashSet<&str> = delivered.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 60, "one event per paid order: {} ids", ids.len());
    assert_eq!(delivered.len(), 60, "each event delivered by one instance only");
    for no in notified.iter().map(|(n, _)| n).chain(checked.iter()) {
        let (_, o) = get(&http, &format!("{}/v1/orders/{no}", urls[0])).await;
        assert_eq!(o["status"], "paid", "{o}");
        let paid: Vec<&Value> = o["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] == "paid")
            .collect();
        assert_eq!(paid.len(), 1, "{o}");
        if no.starts_with("CHK") {
            assert_eq!(paid[0]["detail"]["source"], "query", "{o}");
        }
    }
    a.terminate();
    b.terminate();
    sim.shutdown().await;
    drop(pg);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn migrate_creates_the_schema_and_serve_refuses_a_bad_config_naming_the_key() {
    let dir = scratch_dir("migrate");
    let db = dir.join("m.db");
    // Neither address is ever contacted: migrate talks to the database only, and serve
    // refuses each configuration before it starts.
    let config = write_config(
        &dir,
        "http://127.0.0.1:1",
        &format!("sqlite://{}", db.display()),
        "http://127.0.0.1:9",
        None,
    );
    let out = crate::output(crate::wxpay_command().args(["migrate", "--config"]).arg(&config));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(db.exists());
    let again = crate::output(crate::wxpay_command().args(["migrate", "--config"]).arg(&config));
    assert!(again.status.success(), "migrating twice is harmless");

    let text = std::fs::read_to_string(&config).unwrap();
    for (bad, needle) in [
        (text.replace(TEST_API_KEY, "too-short"), "merchants[0].api_key"),
        (text.replace("api_key =", "apikey ="), "apikey"),
        (
            text.replace("http://127.0.0.1:1\"", "http://pay.example.com\""),
            "server.public_url",
        ),
        (text.replace("[jobs]", "[jobs]\nsign_type = 1"), "sign_type"),
        (
            format!("{text}\n[webhook]\nurl = \"http://127.0.0.1:1/e\"\n"),
            "webhook.secret",
        ),
        (
            format!("{text}\n[console]\npassword_hash = \"hunter2\"\n"),
            "console.password_hash",
        ),
    ] {
        let path = dir.join("bad.toml");
        std::fs::write(&path, bad).unwrap();
        let out = crate::output(crate::wxpay_command().args(["serve", "--config"]).arg(&path));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{needle}: {stderr}");
        assert!(stderr.contains(needle), "{needle}: {stderr}");
        assert!(!stderr.contains(TEST_API_KEY), "a secret in an error: {stderr}");
    }
    let missing = crate::output(crate::wxpay_command().args(["serve", "--config", "/nonexistent.toml"]));
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent.toml"));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn console_hash_password_makes_a_fresh_argon2id_hash_and_refuses_a_short_password() {
    let run = crate::wxpay(&["console", "hash-password"], Some(b"correct horse battery\n"), &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let hash = run.stdout.trim();
    assert!(hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{hash}");
    assert!(!run.stdout.contains("correct horse"), "the password is not echoed");
    let again = crate::wxpay(&["console", "hash-password"], Some(b"correct horse battery\n"), &[]);
    assert_ne!(again.stdout.trim(), hash, "a fresh salt each time");
    let short = crate::wxpay(&["console", "hash-password"], Some(b"hunter2\n"), &[]);
    assert_eq!(short.code, 2);
    assert!(short.stderr.contains("at least 12 characters"), "{}", short.stderr);
}

/// Starts `wxpay demo` on a free port with `dir` as its data directory: the running demo
/// (killed on drop) and its base URL.
pub(crate) fn start_demo(dir: &Path) -> (Server, String) {
    let (demo, base, _, _) = start_demo_logging(dir, "warn");
    (demo, base)
}

/// `start_demo` logging at `level`, with the lines it wrote on standard error while it
/// started; the lines after arrive on the receiver.
pub(crate) fn start_demo_logging(
    dir: &Path,
    level: &str,
) -> (Server, String, Vec<String>, std::sync::mpsc::Receiver<String>) {
    let child = crate::wxpay_command()
        .args(["demo", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .env("WXPAY_LOG", crate::log_level(level))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Killed on drop, so that a failing assertion leaves no demo running.
    let mut demo = Server {
        child,
        url: String::new(),
        addr: ([127, 0, 0, 1], 0).into(),
        log_copier: None,
    };
    let stderr = demo.child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            // The two lines that print the API token and the console password, on purpose,
            // are the demo's words to its user, not log records: the scan reads the rest. A
            // log record is written whole on a line of its own, so none hides in them.
            if !announces_a_secret(&line) {
                crate::scan_line(&line);
            }
            let _ = tx.send(line);
        }
    });
    let mut base = None;
    let mut console = None;
    let mut started = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while (base.is_none() || console.is_none()) && Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            if let Some(url) = line.trim().strip_prefix("open the demo").map(str::trim) {
                base = Some(url.trim_end_matches("/demo").to_owned());
            }
            if line.starts_with("console: ") {
                console = Some(line.clone());
            }
            started.push(line);
        }
    }
    let base = base.expect("the demo prints its address");
    list_demo_secrets(dir);
    // The console's line, on a line of its own as the product's contract has it, with the
    // password the demo keeps.
    let password = std::fs::read_to_string(dir.join("console-password")).unwrap();
    assert_eq!(
        console.as_deref(),
        Some(format!("console: {base}/console password: {}", password.trim()).as_str())
    );
    (demo, base, started, rx)
}

/// Tells the secret scan the secrets a demo made in `dir` at its start: its API token,
/// webhook secret and console password, and its simulator's private keys.
pub(crate) fn list_demo_secrets(dir: &Path) {
    for (what, file) in [
        ("the demo's API token", "api-token"),
        ("the demo's webhook secret", "webhook-secret"),
        ("the demo's console password", "console-password"),
    ] {
        if let Ok(text) = std::fs::read_to_string(dir.join(file)) {
            crate::secret_scan::secret(what, text.trim());
        }
    }
    crate::secret_scan::list_private_keys(&dir.join("simulator-keys"));
}

/// Whether a line of the demo's is one of the two that print a secret on purpose: the API
/// token (with how to present it) and the console's password.
pub(crate) fn announces_a_secret(line: &str) -> bool {
    line.starts_with("console: ") || line.contains("(Authorization: Bearer ")
}

/// Signs in to the demo's console with the password the demo printed and kept, and finds
/// the order `no` there, paid and half refunded; the pages it saw.
pub(crate) async fn console_shows_the_order(base: &str, dir: &Path, no: &str) -> Vec<String> {
    let password = std::fs::read_to_string(dir.join("console-password")).unwrap();
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let cookies = |r: &reqwest::Response| -> String {
        r.headers()
            .get_all(reqwest::header::SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_owned())
            .collect::<Vec<_>>()
            .join("; ")
    };
    let login = http.get(format!("{base}/console/login")).send().await.unwrap();
    let login_cookie = cookies(&login);
    let page = login.text().await.unwrap();
    let needle = "name=\"csrf\" value=\"";
    let at = page.find(needle).unwrap() + needle.len();
    let csrf = &page[at..at + 64];
    let signed_in = http
        .post(format!("{base}/console/login"))
        .header(reqwest::header::COOKIE, login_cookie)
        .header(reqwest::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(format!("password={}&csrf={csrf}", password.trim()))
        .send()
        .await
        .unwrap();
    assert_eq!(signed_in.status(), 303, "the printed password signs in");
    let session = cookies(&signed_in);
    let page = http
        .get(format!("{base}/console/orders?q={no}&lang=en"))
        .header(reqwest::header::COOKIE, &session)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains(no) && page.contains("¥28.00") && page.contains("¥14.00"),
        "{page}"
    );
    let mut pages = vec![page];
    for path in [
        format!("/console/orders/{no}?merchant=default"),
        "/console".to_owned(),
        "/console/outbox".to_owned(),
        "/console/rejections".to_owned(),
    ] {
        let r = http
            .get(format!("{base}{path}"))
            .header(reqwest::header::COOKIE, &session)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
        pages.push(r.text().await.unwrap());
    }
    pages
}

/// What the demo page does through the demo's backend: `wx.login` as `user`, then an order
/// of `item` under the idempotency key `key`; the order as the backend answered it.
pub(crate) async fn demo_order(http: &reqwest::Client, base: &str, user: &str, item: &str, key: &str) -> Value {
    let post = async |path: &str, body: Value| -> Value {
        http.post(format!("{base}{path}"))
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    };
    let login = post("/demo/backend/login", json!({"user": user})).await;
    let openid = login["openid"].as_str().expect("an openid").to_owned();
    post(
        "/demo/backend/orders",
        json!({"item": item, "openid": openid, "key": key}),
    )
    .await
}

/// The demo backend's view of an order: the order and the webhook events it received.
pub(crate) async fn demo_view(http: &reqwest::Client, base: &str, no: &str) -> Value {
    http.get(format!("{base}/demo/backend/orders/{no}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// A button of the simulator's checkout page: `success` or `fail`.
pub(crate) async fn demo_checkout(http: &reqwest::Client, base: &str, prepay: &str, outcome: &str) {
    let r = http
        .post(format!("{base}/simulator/checkout/{prepay}"))
        .form(&[("outcome", outcome)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_plays_a_payment_from_login_to_paid_with_a_verified_webhook() {
    let scratch = scratch_dir("demo");
    // A data directory the demo makes itself.
    let dir = scratch.join("data");
    let (mut demo, base) = start_demo(&dir);
    let http = client();
    let page = http
        .get(format!("{base}/demo"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("wx.requestPayment"));
    let order = demo_order(&http, &base, "alice", "latte", "demo-test-1").await;
    assert_eq!(order["amount_fen"], 2800, "the backend priced it: {order}");
    let prepay = order["prepay_id"].as_str().unwrap();
    let checkout = http
        .get(format!("{base}/simulator/checkout/{prepay}"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(checkout.contains("28.00"), "{checkout}");
    demo_checkout(&http, &base, prepay, "success").await;
    let no = order["out_trade_no"].as_str().unwrap();
    let order_view = async || demo_view(&http, &base, no).await;
    wait_for("the order is paid and announced to the demo backend", async || {
        let v = order_view().await;
        v["order"]["status"] == "paid" && !v["webhook_events"].as_array().unwrap().is_empty()
    })
    .await;
    let mut last = order_view().await;
    assert_eq!(last["order"]["status"], "paid", "{last}");
    assert_eq!(last["webhook_events"][0]["type"], "order.paid", "{last}");
    let token = std::fs::read_to_string(dir.join("api-token")).unwrap();
    let direct = http
        .get(format!("{base}/v1/orders/{no}"))
        .bearer_auth(token.trim())
        .send()
        .await
        .unwrap();
    assert_eq!(direct.status(), 200, "the printed token works on the API");
    // The page's "Refund half": the backend refunds through the gateway and hears of it.
    let refund = http
        .post(format!("{base}/demo/backend/orders/{no}/refund"))
        .json(&json!({"amount_fen": 1400, "key": "demo-refund-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(refund.status(), 201);
    wait_for("refund.succeeded reaches the demo backend", async || {
        order_view().await["webhook_events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "refund.succeeded")
    })
    .await;
    last = order_view().await;
    assert_eq!(last["order"]["refunded_fen"], 1400, "{last}");
    console_shows_the_order(&base, &dir, no).await;
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(demo.child.id().to_string())
        .status();
    let status = demo.child.wait().unwrap();
    assert!(status.success(), "the demo stops cleanly on SIGTERM: {status}");
    assert!(dir.join("wxpay.db").exists());
    // Nobody but its owner can read what the demo keeps.
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700, "the data directory");
    for file in ["wxpay.db", "api-token", "webhook-secret", "console-password"] {
        assert_eq!(mode(&dir.join(file)), 0o600, "{file}");
    }
    let _ = std::fs::remove_dir_all(scratch);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_pays_and_refunds_through_its_apiv3_merchant_too() {
    let scratch = scratch_dir("demo-v3");
    let dir = scratch.join("data");
    let (_demo, base) = start_demo(&dir);
    let http = client();
    let post = async |path: &str, body: Value| -> (u16, Value) {
        let r = http.post(format!("{base}{path}")).json(&body).send().await.unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    };
    let (_, login) = post("/demo/backend/login", json!({"user": "carol"})).await;
    // The openid of the APIv3 merchant's own mini program, not the other app's.
    let openid = login["openids"]["v3"].as_str().unwrap().to_owned();
    assert_ne!(Some(openid.as_str()), login["openid"].as_str());
    let (status, order) = post(
        "/demo/backend/orders",
        json!({"item": "cake", "openid": openid, "key": "demo-v3-1", "api": "v3"}),
    )
    .await;
    assert_eq!(status, 201, "{order}");
    assert_eq!(order["pay_params"]["signType"], "RSA", "an APIv3 order: {order}");
    let prepay = order["prepay_id"].as_str().unwrap();
    demo_checkout(&http, &base, prepay, "success").await;
    let no = order["out_trade_no"].as_str().unwrap().to_owned();
    let view = async || {
        http.get(format!("{base}/demo/backend/orders/{no}?api=v3"))
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()
    };
    wait_for("the APIv3 order is paid and announced", async || {
        let v = view().await;
        v["order"]["status"] == "paid" && !v["webhook_events"].as_array().unwrap().is_empty()
    })
    .await;
    let (status, refund) = post(
        &format!("/demo/backend/orders/{no}/refund"),
        json!({"amount_fen": 1995, "key": "demo-v3-refund", "api": "v3"}),
    )
    .await;
    assert_eq!(status, 201, "{refund}");
    wait_for("refund.succeeded reaches the demo backend", async || {
        view().await["webhook_events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "refund.succeeded")
    })
    .await;
    assert!(dir.join("simulator-keys").join("pub_key.pem").exists());
    let _ = std::fs::remove_dir_all(scratch);
}
