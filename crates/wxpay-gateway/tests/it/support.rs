//! Test databases on both engines, a gateway with the simulator in process, a webhook
//! receiver, and signed notifications made by hand.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use serde_json::{Value, json};
use sqlx::Connection;
use wxpay_gateway::store::Store;
use wxpay_gateway::{App, Config, Jobs, JobsConfig, MerchantConfig, Secret, UpstreamConfig, WebhookConfig};
use wxpay_protocol::Fields;
use wxpay_protocol::{ApiKey, AppId, AppSecret, MchId, SignType};
use wxpay_simulator::{
    SimConfig, SimHandle, SimMerchant, Simulator, TEST_API_KEY, TEST_APIV3_KEY, TEST_APP_SECRET, TEST_APPID,
    TEST_MCH_ID, V3Config, V3Signer,
};

/// The second merchant: HMAC-SHA256, another mch_id and app.
pub(crate) const HMAC_APPID: &str = "wx8888888888888888";
pub(crate) const HMAC_MCH_ID: &str = "1900000109";
pub(crate) const HMAC_KEY: &str = "HmacMerchantTestKey0000000000000";
pub(crate) const HMAC_SECRET: &str = "hmacmerchanttestappsecret0000000";

pub(crate) const TOKEN: &str = "test-token-0123456789abcdef";
pub(crate) const WEBHOOK_SECRET: &str = "whsec_test_0123456789";

fn random_suffix() -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    static N: AtomicUsize = AtomicUsize::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().subsec_nanos();
    format!("{}_{}_{}", std::process::id(), nanos, N.fetch_add(1, Ordering::Relaxed))
}

/// A database for one test: a SQLite file in its own directory, or a PostgreSQL database
/// created for the test and dropped after it.
pub(crate) struct TestDb {
    pub url: String,
    pub engine: &'static str,
    dir: Option<PathBuf>,
    pg: Option<(String, String)>,
}

/// Runs `async fn name(db: TestDb)` once per engine, as two tests with the engine in their
/// names (`name::sqlite`, `name::postgres`), so that a failure on one engine never hides the
/// other's result. The PostgreSQL test is skipped without `DATABASE_URL`, and fails instead
/// when `WXPAY_REQUIRE_POSTGRES=1` (as in CI).
macro_rules! engines {
    (multi_thread $name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread")]
            async fn sqlite() {
                super::$name(crate::support::TestDb::sqlite()).await
            }

            #[tokio::test(flavor = "multi_thread")]
            async fn postgres() {
                if let Some(db) = crate::support::TestDb::postgres().await {
                    super::$name(db).await
                }
            }
        }
    };
    ($name:ident) => {
        mod $name {
            #[tokio::test]
            async fn sqlite() {
                super::$name(crate::support::TestDb::sqlite()).await
            }

            #[tokio::test]
            async fn postgres() {
                if let Some(db) = crate::support::TestDb::postgres().await {
                    super::$name(db).await
                }
            }
        }
    };
}
pub(crate) use engines;

impl TestDb {
    pub(crate) fn sqlite() -> TestDb {
        capture_alerts();
        let dir = std::env::temp_dir().join(format!("wxpay-gw-test-{}", random_suffix()));
        std::fs::create_dir_all(&dir).unwrap();
        TestDb {
            url: format!("sqlite://{}", dir.join("wxpay.db").display()),
            engine: "sqlite",
            dir: Some(dir),
            pg: None,
        }
    }

    /// A fresh PostgreSQL database, when `DATABASE_URL` names a server.
    pub(crate) async fn postgres() -> Option<TestDb> {
        capture_alerts();
        let admin = postgres_url(
            std::env::var("DATABASE_URL").ok(),
            std::env::var("WXPAY_REQUIRE_POSTGRES").ok(),
        )?;
        let name = format!("wxpay_test_{}", random_suffix());
        let mut conn = sqlx::PgConnection::connect(&admin)
            .await
            .expect("DATABASE_URL connects");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .expect("CREATE DATABASE");
        let _ = conn.close().await;
        Some(TestDb {
            url: with_database(&admin, &name),
            engine: "postgres",
            dir: None,
            pg: Some((admin, name)),
        })
    }

    /// Every engine this run can test: SQLite always, PostgreSQL with `DATABASE_URL`.
    pub(crate) async fn store(&self) -> Arc<dyn Store> {
        wxpay_gateway::open_store(&self.url, 8).await.unwrap()
    }

    /// The SQLite file, for a second connection of the test's own.
    pub(crate) fn sqlite_file(&self) -> PathBuf {
        PathBuf::from(self.url.strip_prefix("sqlite://").expect("a SQLite database"))
    }

    /// Runs a statement on a connection of the test's own, beside the store: what another
    /// program writing to the database could do.
    pub(crate) async fn execute(&self, sql: &str) {
        if self.engine == "sqlite" {
            rusqlite::Connection::open(self.sqlite_file())
                .unwrap()
                .execute_batch(sql)
                .unwrap();
        } else {
            let mut c = <sqlx::PgConnection as sqlx::Connection>::connect(&self.url)
                .await
                .unwrap();
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
                .execute(&mut c)
                .await
                .unwrap();
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some(dir) = self.dir.take() {
            crate::secret_scan::sqlite_database(&dir.join("wxpay.db"));
            let _ = std::fs::remove_dir_all(dir);
        }
        if let Some((admin, name)) = self.pg.take() {
            // Drop runs inside the test's runtime; the drop is done on a thread of its own.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    // A copy that fails is told to the scan, and the database is dropped all
                    // the same.
                    if let Err(e) = keep_postgres_rows(&with_database(&admin, &name), &name).await {
                        crate::secret_scan::missed(&format!("the rows of {name}"), &e.to_string());
                    }
                    if let Ok(mut conn) = sqlx::PgConnection::connect(&admin).await {
                        let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                        )))
                        .execute(&mut conn)
                        .await;
                    }
                });
            })
            .join();
        }
    }
}

/// The PostgreSQL server to test against: `DATABASE_URL` when it names one. Without it the
/// PostgreSQL half of the tests is skipped, unless `WXPAY_REQUIRE_POSTGRES=1` (CI) makes
/// that a failure, so that a run cannot pass without having tested PostgreSQL.
pub(crate) fn postgres_url(database_url: Option<String>, require: Option<String>) -> Option<String> {
    let url = database_url.filter(|u| u.starts_with("postgres"));
    if url.is_none() && require.as_deref() == Some("1") {
        panic!("WXPAY_REQUIRE_POSTGRES=1 but DATABASE_URL names no PostgreSQL server (postgres://…)");
    }
    url
}

/// The admin URL with another database name.
pub(crate) fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let host_end = base[scheme_end..].find('/').map_or(base.len(), |i| scheme_end + i);
    let mut out = format!("{}/{name}", &base[..host_end]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// What the business backend's webhook received.
#[derive(Clone, Default)]
pub(crate) struct Webhook {
    pub events: Arc<Mutex<Vec<(Value, bool)>>>,
    /// While set, answer 503.
    pub down: Arc<AtomicBool>,
    pub attempts: Arc<AtomicUsize>,
    /// Event ids refused while down.
    pub refused: Arc<Mutex<Vec<String>>>,
    /// Seconds the receiver's clock is ahead of the wall clock: as far as the test moved the
    /// gateway's, so that a signature's timestamp is judged by the time the test lives in.
    pub clock_offset_secs: Arc<AtomicI64>,
}

impl Webhook {
    /// Events that arrived with a valid signature while the webhook was up.
    pub(crate) fn delivered(&self) -> Vec<Value> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, ok)| *ok)
            .map(|(v, _)| v.clone())
            .collect()
    }

    async fn spawn() -> (Webhook, String) {
        let hook = Webhook::default();
        let state = hook.clone();
        let app = Router::new().route(
            "/events",
            post(move |headers: HeaderMap, body: Bytes| {
                let state = state.clone();
                async move {
                    state.attempts.fetch_add(1, Ordering::SeqCst);
                    let text = String::from_utf8(body.to_vec()).unwrap();
                    if state.down.load(Ordering::SeqCst) {
                        let v: Value = serde_json::from_str(&text).unwrap();
                        state.refused.lock().unwrap().push(v["id"].as_str().unwrap().to_owned());
                        return StatusCode::SERVICE_UNAVAILABLE;
                    }
                    let sig = headers
                        .get("wxpay-signature")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("");
                    let now = wxpay_gateway::time::now_ms() / 1000 + state.clock_offset_secs.load(Ordering::SeqCst);
                    let ok = wxpay_gateway::verify_webhook_signature(WEBHOOK_SECRET, sig, &text, now, 300);
                    let v: Value = serde_json::from_str(&text).unwrap();
                    state.events.lock().unwrap().push((v, ok));
                    if ok {
                        StatusCode::NO_CONTENT
                    } else {
                        StatusCode::UNAUTHORIZED
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (hook, format!("http://{addr}/events"))
    }
}

/// How a test wants its gateway.
pub(crate) struct Options {
    pub jobs: JobsConfig,
    pub webhook: bool,
    pub upstream: UpstreamConfig,
    pub sim: Box<dyn FnOnce(&mut SimConfig) + Send>,
    /// Use this running simulator instead of starting one.
    pub shared_sim: Option<String>,
    /// Moves the gateway's, the simulator's and the webhook receiver's clocks to the next
    /// noon in Beijing before anything happens: a test about a day's bill then has twelve
    /// hours before its day changes, whenever it runs.
    pub pin_beijing_noon: bool,
    /// The daily reconciliation.
    pub reconcile: wxpay_gateway::ReconcileConfig,
    /// The simulator over TLS, requiring the merchant certificate for refunds: the default
    /// merchant presents its `apiclient_cert.p12`, the HMAC merchant its PEM pair (or nothing,
    /// with `hmac_without_cert`).
    pub tls: bool,
    pub hmac_without_cert: bool,
    /// A third merchant, `app2`: a second mini program (`APP2_APPID`) on the default
    /// merchant number.
    pub second_app: bool,
    /// On SQLite: how long a write waits for a lock held by another connection.
    pub sqlite_busy_timeout: Option<Duration>,
    /// The gateway's limits on its clients.
    pub limits: wxpay_gateway::Limits,
    /// The token `/metrics` asks for.
    pub metrics_token: Option<&'static str>,
    /// Events go here instead of the test's receiver (with `webhook`).
    pub webhook_url: Option<String>,
    /// The default merchant on APIv3: the simulator signs with `signer`, the gateway verifies
    /// with what `trusts` names.
    pub v3: Option<V3Setup>,
    /// The default merchant's `base_url`, given the simulator's: something in front of it.
    pub front: Option<Front>,
    /// The simulator is also the default merchant's `backup_url` (with `front` down, say).
    pub backup_is_simulator: bool,
    /// The operator console, signed in to with this password.
    pub console_password: Option<&'static str>,
}

/// What puts something in front of the simulator: given its URL, the URL to call instead.
pub(crate) type Front = Box<dyn FnOnce(&str) -> String + Send>;

/// How a test runs APIv3.
#[derive(Clone, Copy, Debug)]
pub(crate) struct V3Setup {
    /// What the simulator signs with.
    pub signer: V3Signer,
    /// What the gateway is configured to verify with.
    pub trusts: Trusts,
}

/// What a v3 merchant's configuration gives to verify WeChat Pay with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Trusts {
    /// The WeChat Pay public key and its id.
    PublicKey,
    /// The platform certificate file.
    Certificate,
    /// Both (a switch-over).
    Both,
    /// Nothing: the certificates are downloaded.
    Download,
}

/// One keys folder for the test binary: made once (RSA keys take a moment), reused by every
/// simulator, as restarts of one simulator reuse theirs.
pub(crate) fn v3_keys_dir() -> &'static std::path::Path {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        capture_alerts();
        let dir = std::env::temp_dir().join(format!("wxpay-gw-v3-keys-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut config = SimConfig::new();
        config.v3 = Some(V3Config {
            keys_dir: dir.clone(),
            signer: V3Signer::PublicKey,
        });
        Simulator::new(config).unwrap();
        crate::secret_scan::list_private_keys(&dir);
        dir
    })
}

/// The gateway's APIv3 credentials of the test merchant, trusting what `trusts` names.
pub(crate) fn v3_credentials(trusts: Trusts) -> wxpay_gateway::V3Credentials {
    use wxpay_protocol::v3::{Certificate, MerchantKey, PublicKey};
    let dir = v3_keys_dir();
    let read = |p: PathBuf| std::fs::read_to_string(p).unwrap();
    let serial = read(dir.join(TEST_MCH_ID).join("apiclient_serial"));
    let key = MerchantKey::from_pem(&read(dir.join(TEST_MCH_ID).join("apiclient_key.pem")), serial.trim()).unwrap();
    let cert = Certificate::from_pem(&read(dir.join("platform_cert.pem"))).unwrap();
    let public = (
        read(dir.join("pub_key_id")).trim().to_owned(),
        PublicKey::from_pem(&read(dir.join("pub_key.pem"))).unwrap(),
    );
    wxpay_gateway::V3Credentials {
        apiv3_key: wxpay_protocol::ApiV3Key::new(TEST_APIV3_KEY).unwrap(),
        key: Arc::new(key),
        platform_certs: match trusts {
            Trusts::Certificate | Trusts::Both => vec![cert],
            _ => Vec::new(),
        },
        public_key: match trusts {
            Trusts::PublicKey | Trusts::Both => Some(public),
            _ => None,
        },
    }
}

/// The gateway's answer to a notification it kept, written out here rather than taken from
/// the protocol crate, as an outside witness of the bytes WeChat Pay expects.
pub(crate) const SUCCESS: &str =
    "<xml><return_code><![CDATA[SUCCESS]]></return_code><return_msg><![CDATA[OK]]></return_msg></xml>";

/// The second mini program of the default merchant number (`Options::second_app`).
pub(crate) const APP2_APPID: &str = "wx2222222222222222";

impl Default for Options {
    fn default() -> Self {
        Options {
            jobs: JobsConfig {
                enabled: false,
                ..JobsConfig::default()
            },
            webhook: false,
            upstream: UpstreamConfig {
                retry_backoff: Duration::from_millis(10),
                timeout: Duration::from_secs(3),
                ..UpstreamConfig::default()
            },
            sim: Box::new(|_| {}),
            shared_sim: None,
            pin_beijing_noon: false,
            reconcile: wxpay_gateway::ReconcileConfig::default(),
            tls: false,
            hmac_without_cert: false,
            second_app: false,
            sqlite_busy_timeout: None,
            limits: wxpay_gateway::Limits::default(),
            metrics_token: None,
            webhook_url: None,
            v3: None,
            front: None,
            backup_is_simulator: false,
            console_password: None,
        }
    }
}

/// Background work that reacts within tens of milliseconds.
pub(crate) fn quick_jobs() -> JobsConfig {
    JobsConfig {
        enabled: true,
        first_check_after: Duration::from_millis(300),
        max_check_interval: Duration::from_secs(1),
        poll_every: Duration::from_millis(50),
        outbox_backoff: Duration::from_millis(50),
        outbox_max_backoff: Duration::from_millis(400),
        lease: Duration::from_secs(5),
        ..JobsConfig::default()
    }
}

/// Background work that looks for due work every 50 ms but finds an order or refund due only a
/// minute after it was made: what it does sooner, something brought forward.
pub(crate) fn prompt_but_patient_jobs() -> JobsConfig {
    JobsConfig {
        first_check_after: Duration::from_secs(60),
        max_check_interval: Duration::from_secs(600),
        ..quick_jobs()
    }
}

/// Quick background work and a webhook receiver.
pub(crate) fn with_jobs_and_webhook() -> Options {
    Options {
        jobs: quick_jobs(),
        webhook: true,
        ..Options::default()
    }
}

/// A running gateway with its simulator.
pub(crate) struct TestApp {
    pub url: String,
    pub app: App,
    pub sim: Option<SimHandle>,
    pub sim_url: String,
    pub http: reqwest::Client,
    pub webhook: Webhook,
    jobs: Option<Jobs>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
    pub db: TestDb,
    /// Renders the gateway's metrics for the secret scan when the test is over.
    _metrics: MetricsAtDrop,
}

/// Hands the gateway's metrics to the secret scan when dropped (with the [`TestApp`] that
/// holds it, however the test ends).
struct MetricsAtDrop(App);

impl Drop for MetricsAtDrop {
    fn drop(&mut self) {
        if crate::secret_scan::dir().is_some() {
            crate::secret_scan::keep(".metrics", &self.0.metrics().render(self.0.now()));
        }
    }
}

pub(crate) fn merchants(sim_url: &str) -> Vec<MerchantConfig> {
    vec![
        MerchantConfig {
            name: "default".into(),
            appid: AppId::new(TEST_APPID).unwrap(),
            app_secret: Some(AppSecret::new(TEST_APP_SECRET).unwrap()),
            mch_id: MchId::new(TEST_MCH_ID).unwrap(),
            api_key: Some(ApiKey::new(TEST_API_KEY).unwrap()),
            sign_type: SignType::Md5,
            base_url: sim_url.to_owned(),
            backup_url: None,
            sns_base_url: sim_url.to_owned(),
            client_cert: None,
            ca_pem: None,
            v3: None,
        },
        MerchantConfig {
            name: "hmac".into(),
            appid: AppId::new(HMAC_APPID).unwrap(),
            app_secret: Some(AppSecret::new(HMAC_SECRET).unwrap()),
            mch_id: MchId::new(HMAC_MCH_ID).unwrap(),
            api_key: Some(ApiKey::new(HMAC_KEY).unwrap()),
            sign_type: SignType::HmacSha256,
            base_url: sim_url.to_owned(),
            backup_url: None,
            sns_base_url: sim_url.to_owned(),
            client_cert: None,
            ca_pem: None,
            v3: None,
        },
    ]
}

pub(crate) fn sim_merchants() -> Vec<SimMerchant> {
    vec![
        SimMerchant::test_merchant(),
        SimMerchant {
            appid: AppId::new(HMAC_APPID).unwrap(),
            app_secret: AppSecret::new(HMAC_SECRET).unwrap(),
            mch_id: MchId::new(HMAC_MCH_ID).unwrap(),
            api_key: Some(ApiKey::new(HMAC_KEY).unwrap()),
            v3: None,
        },
    ]
}

/// The payer of the fixtures' orders: WeChat Pay's documented sample openid, listed in the
/// simulator's configuration (it checks that an openid belongs to the order's app).
pub(crate) const TEST_OPENID: &str = "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o";

/// Starts a simulator (explicit mode, a thousand times real speed) and a gateway on
/// `127.0.0.1:0` over `db`.
pub(crate) async fn spawn_app(db: TestDb, opts: Options) -> TestApp {
    capture_alerts();
    let (sim, sim_url) = match opts.shared_sim {
        Some(url) => (None, url),
        None => {
            let mut sim_config = SimConfig::new();
            sim_config.time_scale = 1000.0;
            sim_config.merchants = sim_merchants();
            // The fixtures pay as WeChat Pay's documented sample openid, which the simulator
            // did not issue: listed, it is accepted like an openid from jscode2session.
            sim_config.openids = vec![TEST_OPENID.to_owned()];
            // Refunds of one order back to back; the minute WeChat Pay wants between them is
            // `a_second_refund_within_the_minute_...`'s subject.
            sim_config.refund_interval = Duration::ZERO;
            if opts.second_app {
                let mut app2 = SimMerchant::test_merchant();
                app2.appid = AppId::new(APP2_APPID).unwrap();
                sim_config.merchants.push(app2);
            }
            if opts.tls {
                let dir = std::env::temp_dir().join(format!("wxpay-gw-tls-{}", random_suffix()));
                sim_config.tls = Some(wxpay_simulator::TlsConfig { dir });
            }
            if let Some(v3) = opts.v3 {
                sim_config.v3 = Some(V3Config {
                    keys_dir: v3_keys_dir().to_owned(),
                    signer: v3.signer,
                });
            }
            (opts.sim)(&mut sim_config);
            let sim_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let sim = Simulator::new(sim_config).unwrap().serve(sim_listener).await.unwrap();
            let url = sim.base_url().to_owned();
            (Some(sim), url)
        }
    };

    let tls_files = sim.as_ref().and_then(|s| s.simulator().tls_files());
    if let Some(files) = &tls_files {
        // The simulator made the merchants' client keys in the folder of its CA.
        if let Some(dir) = files.ca_cert.parent() {
            crate::secret_scan::list_private_keys(dir);
        }
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let url = format!("http://{addr}");
    let (webhook, hook_url) = Webhook::spawn().await;
    let config = Config {
        public_url: url.clone(),
        api_tokens: vec![Secret::new(TOKEN)],
        merchants: {
            let mut list = merchants(&sim_url);
            if opts.second_app {
                let mut app2 = list[0].clone();
                app2.name = "app2".into();
                app2.appid = AppId::new(APP2_APPID).unwrap();
                list.push(app2);
            }
            if let Some(v3) = opts.v3 {
                list[0].v3 = Some(v3_credentials(v3.trusts));
            }
            if let Some(front) = opts.front {
                list[0].base_url = front(&sim_url);
            }
            if opts.backup_is_simulator {
                list[0].backup_url = Some(sim_url.clone());
            }
            if let Some(files) = &tls_files {
                let ca = std::fs::read(&files.ca_cert).unwrap();
                let p12 = std::fs::read(&files.client_p12[TEST_MCH_ID]).unwrap();
                list[0].client_cert = Some(wxpay_gateway::ClientCert::from_pkcs12(&p12, TEST_MCH_ID).unwrap());
                let (cert, key) = &files.client[HMAC_MCH_ID];
                if !opts.hmac_without_cert {
                    list[1].client_cert = Some(
                        wxpay_gateway::ClientCert::from_pem(
                            &std::fs::read(cert).unwrap(),
                            &std::fs::read(key).unwrap(),
                        )
                        .unwrap(),
                    );
                }
                for m in &mut list {
                    m.ca_pem = Some(ca.clone());
                }
            }
            list
        },
        webhook: opts.webhook.then(|| WebhookConfig {
            url: opts.webhook_url.unwrap_or(hook_url),
            secret: Secret::new(WEBHOOK_SECRET),
            allow_http: false,
        }),
        upstream: opts.upstream,
        jobs: opts.jobs,
        default_order_ttl: Duration::from_secs(7200),
        reconcile: opts.reconcile,
        limits: opts.limits,
        metrics_token: opts.metrics_token.map(Secret::new),
        console: opts.console_password.map(|p| wxpay_gateway::ConsoleConfig {
            password_hash: Secret::new(wxpay_gateway::ConsoleConfig::hash_password(p, b"test-salt-16byte").unwrap()),
            session_ttl: Duration::from_secs(3600),
            // The links are checked, not followed: the test simulator has its own address.
            simulator_checkout: true,
        }),
    };
    let store: Arc<dyn Store> = match opts.sqlite_busy_timeout {
        Some(busy_timeout) if db.engine == "sqlite" => Arc::new(
            wxpay_gateway::store::sqlite::SqliteStore::open_with(
                &db.sqlite_file(),
                wxpay_gateway::store::sqlite::SqliteOptions { busy_timeout },
            )
            .unwrap(),
        ),
        _ => db.store().await,
    };
    for secret in [opts.metrics_token, opts.console_password].into_iter().flatten() {
        crate::secret_scan::secret("a metrics token or console password", secret);
    }
    let app = App::new(config, store).unwrap();
    if opts.pin_beijing_noon {
        // Before the jobs start, so that the daily work sees one day only.
        let secs = wxpay_simulator::seconds_until_beijing_hour(app.now().unix_secs(), 12);
        app.clock().advance(Duration::from_secs(secs as u64));
        webhook.clock_offset_secs.fetch_add(secs, Ordering::SeqCst);
        let sim = sim.as_ref().expect("a pinned day needs the test's own simulator");
        sim.simulator().advance_clock(secs);
    }
    let jobs = app.start_jobs();
    let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let served = app.clone();
    let server = tokio::spawn(async move {
        wxpay_gateway::serve(&served, listener, async {
            let _ = stop_rx.await;
        })
        .await
        .unwrap();
    });
    let http = match &tls_files {
        // The test talks to the simulator's control endpoints over its TLS too.
        Some(files) => {
            let ca = reqwest::Certificate::from_pem(&std::fs::read(&files.ca_cert).unwrap()).unwrap();
            reqwest::Client::builder().add_root_certificate(ca).build().unwrap()
        }
        None => reqwest::Client::new(),
    };
    let metrics = MetricsAtDrop(app.clone());
    TestApp {
        url,
        app,
        sim,
        sim_url,
        http,
        webhook,
        jobs: Some(jobs),
        stop: Some(stop),
        server: Some(server),
        db,
        _metrics: metrics,
    }
}

impl TestApp {
    /// Stops the gateway only: its database and its simulator stay, for a restart.
    pub(crate) async fn stop_gateway(mut self) -> (TestDb, Option<SimHandle>) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(j) = self.jobs.take() {
            j.stop().await;
        }
        if let Some(s) = self.server.take() {
            let _ = s.await;
        }
        self.app.finish_requests().await;
        (self.db, self.sim.take())
    }

    pub(crate) async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(j) = self.jobs.take() {
            j.stop().await;
        }
        if let Some(s) = self.server.take() {
            let _ = s.await;
        }
        self.app.finish_requests().await;
        if let Some(sim) = self.sim.take() {
            list_session_keys(sim.simulator());
            sim.shutdown().await;
        }
    }

    pub(crate) fn engine(&self) -> &'static str {
        self.db.engine
    }

    /// A `/v1` call with the token: (status, JSON body).
    pub(crate) async fn api(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        idem: Option<&str>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(TOKEN);
        if let Some(k) = idem {
            req = req.header("Idempotency-Key", k);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    pub(crate) async fn create(&self, body: Value) -> Value {
        let (status, v) = self.api(reqwest::Method::POST, "/v1/orders", Some(body), None).await;
        assert_eq!(status, 201, "{v}");
        v
    }

    pub(crate) async fn order(&self, no: &str) -> Value {
        let (status, v) = self
            .api(reqwest::Method::GET, &format!("/v1/orders/{no}"), None, None)
            .await;
        assert_eq!(status, 200, "{v}");
        v
    }

    /// Moves the gateway's clock forward, and the webhook receiver's with it, so that it
    /// still judges the signatures' timestamps by the gateway's time.
    pub(crate) fn advance(&self, by: Duration) {
        self.app.clock().advance(by);
        self.webhook
            .clock_offset_secs
            .fetch_add(by.as_secs() as i64, Ordering::SeqCst);
    }

    /// Waits until the order has `status`, up to a few seconds.
    pub(crate) async fn wait_status(&self, no: &str, status: &str) -> Value {
        for _ in 0..200 {
            let o = self.order(no).await;
            if o["status"] == status {
                return o;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("order {no} never became {status}: {}", self.order(no).await);
    }

    /// An order of `amount` fen for `merchant` (`default`, `hmac` or `app2`), paid through the
    /// simulator, once the gateway has it paid.
    pub(crate) async fn paid_order_of(&self, merchant: &str, no: &str, amount: u64) {
        let mut body = order_body(amount);
        body["out_trade_no"] = json!(no);
        body["merchant"] = json!(merchant);
        let (status, v) = self.api(reqwest::Method::POST, "/v1/orders", Some(body), None).await;
        assert_eq!(status, 201, "{v}");
        let mut pay = json!({"out_trade_no": no});
        if merchant == "hmac" {
            pay["mch_id"] = json!(HMAC_MCH_ID);
        }
        let (status, v) = self.sim_post("/simulator/pay", pay).await;
        assert_eq!(status, 200, "{v}");
        let path = format!("/v1/orders/{no}?merchant={merchant}");
        eventually(&format!("order {no} is paid"), async || {
            self.api(reqwest::Method::GET, &path, None, None).await.1["status"] == "paid"
        })
        .await;
    }

    /// An order of the default merchant, paid.
    pub(crate) async fn paid_order(&self, no: &str, amount: u64) {
        self.paid_order_of("default", no, amount).await;
    }

    /// `POST /simulator/…` on the simulator.
    pub(crate) async fn sim_post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.sim_url))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// How many orders the store holds, of every merchant.
    pub(crate) async fn stored_orders(&self) -> usize {
        self.app
            .store()
            .list_orders(wxpay_gateway::store::OrderFilter::default(), 500, None)
            .await
            .unwrap()
            .len()
    }

    /// Removes every simulator fault.
    pub(crate) async fn clear_faults(&self) {
        let r = self
            .http
            .delete(format!("{}/simulator/faults", self.sim_url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "the faults were not removed");
    }

    /// Installs a simulator fault, and checks that it was installed.
    pub(crate) async fn fault(&self, fault: Value) {
        let (status, v) = self.sim_post("/simulator/faults", fault.clone()).await;
        assert_eq!(status, 201, "the fault {fault} was not installed: {v}");
    }

    /// The user pays in the simulator (`POST /simulator/pay`), and the simulator took it.
    pub(crate) async fn sim_pay(&self, pay: Value) {
        let (status, v) = self.sim_post("/simulator/pay", pay.clone()).await;
        assert_eq!(status, 200, "the simulator refused the payment {pay}: {v}");
    }

    /// The fields of every `api` call the simulator received for `out_trade_no`, oldest first.
    pub(crate) async fn sim_requests(&self, api: &str, out_trade_no: &str) -> Vec<serde_json::Map<String, Value>> {
        self.sim_requests_having(api, "out_trade_no", out_trade_no).await
    }

    /// The fields of every `api` call the simulator received whose `field` is `value`.
    pub(crate) async fn sim_requests_having(
        &self,
        api: &str,
        field: &str,
        value: &str,
    ) -> Vec<serde_json::Map<String, Value>> {
        let v = self
            .sim_get(&format!("/simulator/requests?api={api}&{field}={value}"))
            .await;
        v["requests"]
            .as_array()
            .unwrap_or_else(|| panic!("GET /simulator/requests answered {v}"))
            .iter()
            .map(|c| {
                c["fields"]
                    .as_object()
                    .expect("a request the simulator could read")
                    .clone()
            })
            .collect()
    }

    /// Checks that each call of `api` for `out_trade_no` after the first carries the first
    /// one's fields, value for value, apart from the fresh nonce and the signature over it;
    /// returns how many calls there were.
    pub(crate) async fn assert_retries_repeat_the_first(&self, api: &str, out_trade_no: &str) -> usize {
        self.assert_calls_repeat_the_first(api, "out_trade_no", out_trade_no)
            .await
    }

    /// `assert_retries_repeat_the_first` for the calls whose `field` is `value`.
    pub(crate) async fn assert_calls_repeat_the_first(&self, api: &str, field: &str, value: &str) -> usize {
        let calls = self.sim_requests_having(api, field, value).await;
        let Some(first) = calls.first() else {
            panic!("the simulator received no {api} call with {field}={value}");
        };
        let significant = |c: &serde_json::Map<String, Value>| {
            let mut c = c.clone();
            c.remove("nonce_str");
            c.remove("sign");
            c
        };
        for (i, retry) in calls.iter().enumerate().skip(1) {
            assert_eq!(
                significant(retry),
                significant(first),
                "{api} call {} with {field}={value} differs from the first",
                i + 1
            );
        }
        calls.len()
    }

    /// How many calls of `api` the simulator received, whatever their result.
    pub(crate) async fn sim_calls(&self, api: &str) -> u64 {
        self.sim_counter(&format!("wxpay_sim_requests_total{{api=\"{api}\","))
            .await
    }

    /// How many calls of `api` the simulator answered with `result` (`success`,
    /// `business_error`, `protocol_error`).
    pub(crate) async fn sim_calls_with(&self, api: &str, result: &str) -> u64 {
        self.sim_counter(&format!(
            "wxpay_sim_requests_total{{api=\"{api}\",result=\"{result}\"}}"
        ))
        .await
    }

    /// How many times the simulator's faults of `kind` fired.
    pub(crate) async fn sim_faults_fired(&self, kind: &str) -> u64 {
        self.sim_counter(&format!("wxpay_sim_faults_injected_total{{kind=\"{kind}\"}}"))
            .await
    }

    /// The sum of the simulator's metric lines that start with `prefix`; a prefix that
    /// matches no line is a mistake in the test, not a zero.
    async fn sim_counter(&self, prefix: &str) -> u64 {
        let text = self
            .http
            .get(format!("{}/metrics", self.sim_url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let values: Vec<u64> = text
            .lines()
            .filter(|l| l.starts_with(prefix))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .collect();
        assert!(!values.is_empty(), "no simulator metric starts with {prefix}");
        values.iter().sum()
    }

    pub(crate) async fn sim_get(&self, path: &str) -> Value {
        self.http
            .get(format!("{}{path}", self.sim_url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Posts a payment notification body to the gateway: (status, reply body).
    pub(crate) async fn notify(&self, body: String) -> (u16, String) {
        self.notify_to("/notify/v2/pay", body).await
    }

    /// Posts a notification body to one of the gateway's notify paths: (status, reply body).
    pub(crate) async fn notify_to(&self, path: &str, body: String) -> (u16, String) {
        let r = self
            .http
            .post(format!("{}{path}", self.url))
            .header("Content-Type", "text/xml")
            .body(body)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    /// The text of `/metrics`.
    /// The verdict and reason of every notification record kept about `out_trade_no`, oldest
    /// first, read from the database (no API shows them).
    pub(crate) async fn notification_records(&self, out_trade_no: &str) -> Vec<(String, Option<String>)> {
        let sql = "SELECT verdict, reason FROM notifications WHERE out_trade_no = $1 ORDER BY id";
        if self.db.engine == "sqlite" {
            let c = rusqlite::Connection::open(self.db.sqlite_file()).unwrap();
            let mut stmt = c.prepare(sql).unwrap();
            stmt.query_map([out_trade_no], |r| Ok((r.get(0)?, r.get(1)?)))
                .unwrap()
                .map(Result::unwrap)
                .collect()
        } else {
            let mut c = <sqlx::PgConnection as sqlx::Connection>::connect(&self.db.url)
                .await
                .unwrap();
            sqlx::query_as(sql).bind(out_trade_no).fetch_all(&mut c).await.unwrap()
        }
    }

    /// Waits until every event has been delivered (the outbox is empty), read from the
    /// database itself rather than from a gauge that may lag.
    pub(crate) async fn outbox_drained(&self) {
        let store = self.app.store().clone();
        let now = self.app.now();
        eventually("the outbox is empty", async || {
            store.stats(now).await.unwrap().outbox_backlog == 0
        })
        .await;
    }

    /// Waits until the simulator has had an answer from the gateway to a notification about
    /// `out_trade_no`: the gateway has then decided on it.
    pub(crate) async fn notification_answered(&self, out_trade_no: &str) {
        eventually(
            &format!("a notification about {out_trade_no} is answered"),
            async || {
                let v = self
                    .sim_get(&format!("/simulator/notifications?out_trade_no={out_trade_no}"))
                    .await;
                v["attempts"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|x| x["status"].is_u64()))
            },
        )
        .await;
    }

    pub(crate) async fn metrics_text(&self) -> String {
        let r = self.http.get(format!("{}/metrics", self.url)).send().await.unwrap();
        assert_eq!(r.status(), 200);
        r.text().await.unwrap()
    }

    /// Waits until `/metrics` has a line; its gauges are refreshed within a second of a change.
    pub(crate) async fn wait_metric(&self, line: &str) {
        let mut last = String::new();
        for _ in 0..150 {
            last = self.metrics_text().await;
            if last.lines().any(|l| l == line) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("/metrics never had {line:?}:\n{last}");
    }

    /// The kinds of an order's history.
    pub(crate) async fn event_kinds(&self, no: &str) -> Vec<String> {
        self.order(no).await["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["kind"].as_str().unwrap().to_owned())
            .collect()
    }
}

/// The first event of `kind` in an order view's history; a missing one fails the test.
pub(crate) fn event(order: &Value, kind: &str) -> Value {
    order["events"]
        .as_array()
        .unwrap_or_else(|| panic!("no events in {order}"))
        .iter()
        .find(|e| e["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} event in {order}"))
        .clone()
}

/// A new order's body for the default merchant.
pub(crate) fn order_body(amount_fen: u64) -> Value {
    json!({"description": "测试商品 test item", "amount_fen": amount_fen, "openid": TEST_OPENID})
}

/// A payment notification as WeChat Pay sends it, signed with `key` and `sign_type`; `edit`
/// changes fields before signing.
/// Who a notification claims to come from, and how it is signed.
#[derive(Clone, Copy)]
pub(crate) struct Signer<'a> {
    pub appid: &'a str,
    pub mch_id: &'a str,
    pub key: &'a str,
    pub sign_type: SignType,
}

/// The default merchant, signing correctly.
pub(crate) const DEFAULT: Signer<'static> = Signer {
    appid: TEST_APPID,
    mch_id: TEST_MCH_ID,
    key: TEST_API_KEY,
    sign_type: SignType::Md5,
};

/// The HMAC merchant, signing correctly.
pub(crate) const HMAC: Signer<'static> = Signer {
    appid: HMAC_APPID,
    mch_id: HMAC_MCH_ID,
    key: HMAC_KEY,
    sign_type: SignType::HmacSha256,
};

pub(crate) fn notification(
    from: Signer<'_>,
    out_trade_no: &str,
    total_fee: u64,
    transaction_id: &str,
    edit: impl FnOnce(&mut Fields<'static>),
) -> String {
    let Signer {
        appid,
        mch_id,
        key,
        sign_type,
    } = from;
    let mut f = Fields::new();
    let values: Vec<(&str, String)> = vec![
        ("appid", appid.to_owned()),
        ("bank_type", "CMC".to_owned()),
        ("cash_fee", total_fee.to_string()),
        ("fee_type", "CNY".to_owned()),
        ("is_subscribe", "N".to_owned()),
        ("mch_id", mch_id.to_owned()),
        ("nonce_str", "5d2b6c2a8db53831f7eda20af46e531c".to_owned()),
        ("openid", TEST_OPENID.to_owned()),
        ("out_trade_no", out_trade_no.to_owned()),
        ("result_code", "SUCCESS".to_owned()),
        ("return_code", "SUCCESS".to_owned()),
        ("time_end", "20261127101010".to_owned()),
        ("total_fee", total_fee.to_string()),
        ("trade_type", "JSAPI".to_owned()),
        ("transaction_id", transaction_id.to_owned()),
    ];
    for (k, v) in values {
        f.insert(k, v).unwrap();
    }
    if sign_type == SignType::HmacSha256 {
        f.insert("sign_type", "HMAC-SHA256").unwrap();
    }
    edit(&mut f);
    if f.get("sign").is_none() {
        f.sign(&ApiKey::new(key).unwrap(), sign_type);
    }
    f.to_xml().unwrap()
}

/// A correctly signed payment notification for the default merchant.
pub(crate) fn paid_notification(out_trade_no: &str, total_fee: u64, transaction_id: &str) -> String {
    notification(DEFAULT, out_trade_no, total_fee, transaction_id, |_| {})
}

/// Records a figure of the running test for the trust report (`scripts/trust-report`), when
/// it asks for them: `WXPAY_TRUST_FIGURES` names the file the figures are appended to, one
/// JSON line each, under the test's name (libtest names each test's thread after the test)
/// and the promises of `docs/trust/promises.toml` it is a figure of.
pub(crate) fn figure(promises: &[&str], text: impl std::fmt::Display) {
    use std::io::Write;
    let Some(path) = std::env::var_os("WXPAY_TRUST_FIGURES") else {
        return;
    };
    let test = std::thread::current().name().unwrap_or("").to_owned();
    let line = serde_json::json!({ "test": test, "promises": promises, "figure": text.to_string() });
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("the figures file opens");
    // One write of one line: appends from tests running at once do not interleave.
    file.write_all(format!("{line}\n").as_bytes())
        .expect("a figure is written");
}

/// Polls `f` until it returns true, up to about five seconds.
pub(crate) async fn eventually(what: &str, mut f: impl AsyncFnMut() -> bool) {
    for _ in 0..250 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("never: {what}");
}

/// Every WARN and ERROR record the gateways of this test binary have logged, one JSON line
/// each, since [`capture_alerts`] was first called.
static ALERTS: std::sync::Mutex<Vec<u8>> = std::sync::Mutex::new(Vec::new());

/// Where the captured records are written.
struct AlertWriter;

impl std::io::Write for AlertWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        ALERTS.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Captures the WARN and ERROR records of every gateway of this process from now on: the
/// reliability checklist's "alert" is such a record naming the order and why. One
/// subscriber for the process, shared by the tests that run at once, so a test looks for
/// records naming its own orders.
pub(crate) fn capture_alerts() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        use tracing_subscriber::Layer as _;
        use tracing_subscriber::layer::SubscriberExt as _;
        use tracing_subscriber::util::SubscriberInitExt as _;
        let alerts = tracing_subscriber::fmt::layer()
            .json()
            .with_writer(|| AlertWriter)
            .with_filter(tracing_subscriber::filter::LevelFilter::WARN);
        // The whole-suite secret scan: everything, at TRACE, into the scan's folder.
        let scan = crate::secret_scan::trace_layer();
        let _ = tracing_subscriber::registry().with(alerts).with(scan).try_init();
        list_fixed_secrets();
    });
}

/// The captured records whose message contains `message` and whose every named field
/// contains its value (a field's value as logged, quotes and all).
pub(crate) fn alerts(message: &str, fields: &[(&str, &str)]) -> Vec<Value> {
    let text = String::from_utf8_lossy(&ALERTS.lock().unwrap()).into_owned();
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| {
            let field = |name: &str| match &v["fields"][name] {
                Value::String(s) => s.clone(),
                Value::Null => String::new(),
                other => other.to_string(),
            };
            field("message").contains(message) && fields.iter().all(|(name, value)| field(name).contains(value))
        })
        .collect()
}

/// Lists, for the secret scan, the secrets every test of this binary may hand to a gateway
/// or a simulator.
fn list_fixed_secrets() {
    use md5::Digest as _;

    use crate::secret_scan::secret;
    if crate::secret_scan::dir().is_none() {
        return;
    }
    for (what, key) in [
        ("the APIv2 key", TEST_API_KEY),
        ("the HMAC merchant's APIv2 key", HMAC_KEY),
    ] {
        secret(what, key);
        // The MD5 of an APIv2 key is the AES key of its refund notifications.
        let md5: String = md5::Md5::digest(key.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        secret(&format!("the MD5 of {what}"), &md5);
        secret(&format!("the MD5 of {what}, upper case"), &md5.to_uppercase());
    }
    secret("the APIv3 key", TEST_APIV3_KEY);
    secret("the app secret", TEST_APP_SECRET);
    secret("the HMAC merchant's app secret", HMAC_SECRET);
    secret("the webhook secret", WEBHOOK_SECRET);
    secret("the API token", TOKEN);
}

/// Lists the `session_key`s the simulator issued to this test's gateway (`POST /v1/openid`):
/// per-call secrets the gateway must never return, log or store.
fn list_session_keys(sim: &wxpay_simulator::Simulator) {
    for key in sim.session_keys() {
        crate::secret_scan::secret("a session_key jscode2session issued", &key);
    }
}

/// Keeps every row of every table of a PostgreSQL database for the secret scan, as text,
/// one row a line (nothing when this run is not a scan).
async fn keep_postgres_rows(url: &str, name: &str) -> Result<(), Box<dyn std::error::Error>> {
    use sqlx::Row;
    let Some(dir) = crate::secret_scan::dir() else {
        return Ok(());
    };
    let mut conn = sqlx::PgConnection::connect(url).await?;
    let tables: Vec<String> =
        sqlx::query_scalar("SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public'")
            .fetch_all(&mut conn)
            .await?;
    let mut text = String::new();
    for table in tables {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT t::text FROM \"{table}\" t")))
            .fetch_all(&mut conn)
            .await?;
        for row in rows {
            text.push_str(&table);
            text.push('\t');
            text.push_str(&row.try_get::<String, _>(0)?);
            text.push('\n');
        }
    }
    let _ = conn.close().await;
    std::fs::write(dir.join("db").join(format!("{name}.pg.txt")), text)?;
    Ok(())
}
