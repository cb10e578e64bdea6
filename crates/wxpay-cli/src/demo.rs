//! `wxpay demo`: the embedded default. The gateway and the simulator in one process on one
//! port, SQLite under the data directory, the built-in test merchant, and a page at `/demo`
//! that plays both the mini program and the business backend.
//!
//! The page never sees the API token: like a real mini program it talks to "the business
//! backend" (the `/demo/backend/…` routes here), which calls the gateway's `/v1` API over
//! HTTP with the token, decides the amount itself, and receives the signed events on its
//! webhook (`/demo/webhook`). Every step therefore goes through the same paths a real
//! deployment uses.

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use clap::Args;
use serde_json::{Value, json};
use wxpay_gateway::{App, Config, ConsoleConfig, JobsConfig, MerchantConfig, Secret, UpstreamConfig, WebhookConfig};
use wxpay_protocol::{ApiKey, AppId, AppSecret, BeijingTime, MchId, SignType};
use wxpay_simulator::{
    SimConfig, SimMerchant, Simulator, TEST_API_KEY, TEST_APIV3_KEY, TEST_APP_SECRET, TEST_APPID, TEST_MCH_ID,
    V3Config, V3Signer,
};

use crate::CliError;

#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// Address to listen on (gateway, simulator and demo page share it). Only this machine's
    /// addresses unless --public is given.
    #[arg(long, default_value = "127.0.0.1:8080", value_name = "ADDR")]
    listen: String,
    /// Allow --listen on an address other machines can reach. The demo page then gives
    /// anybody who can reach it the demo's API token (it can refund any demo order) and the
    /// simulator's controls.
    #[arg(long)]
    public: bool,
    /// Where the SQLite database, the demo API token and the webhook secret are kept.
    #[arg(long, default_value = "wxpay-demo", value_name = "DIR")]
    data_dir: PathBuf,
    /// Log format.
    #[arg(long, value_enum, default_value_t = crate::LogFormat::Pretty)]
    log_format: crate::LogFormat,
}

/// What the demo sells. The business backend decides amounts; the page only names an item.
const ITEMS: &[(&str, &str, u64)] = &[
    ("latte", "拿铁咖啡 Latte", 2800),
    ("tea", "龙井茶 Longjing tea", 1500),
    ("cake", "芝士蛋糕 Cheesecake", 3990),
    ("cent", "测试 One fen test", 1),
];

/// The mini program of the demo's APIv3 merchant (`v3`): the test merchant's number, a
/// second app, as one merchant with two mini programs has.
const V3_APPID: &str = "wx3333333333333333";

/// How many webhook events the demo backend remembers.
const EVENTS_KEPT: usize = 500;

pub(crate) fn run(args: DemoArgs) -> Result<(), CliError> {
    let _log = crate::init_logging(args.log_format);
    let exposed = reachable_from_elsewhere(&args.listen)?;
    if exposed && !args.public {
        return Err(CliError::Usage(format!(
            "--listen {} can be reached from other machines, and the demo has no sign-in: its page uses the demo API token \
             (which can refund any demo order) and the simulator's controls. Listen on 127.0.0.1 (the default), or add \
             --public if that is what you want",
            args.listen
        )));
    }
    let dir = &args.data_dir;
    create_private_dir(dir).map_err(|e| CliError::Usage(format!("cannot create {}: {e}", dir.display())))?;
    let token = load_or_create_secret(&dir.join("api-token"), "demo_")?;
    let webhook_secret = load_or_create_secret(&dir.join("webhook-secret"), "whsec_")?;
    let console_password = load_or_create_secret(&dir.join("console-password"), "console_")?;
    let console = ConsoleConfig {
        password_hash: Secret::new(crate::console::hash(&console_password)?),
        session_ttl: Duration::from_secs(12 * 3600),
        simulator_checkout: true,
    };
    let db_path = dir.join("wxpay.db");
    let runtime =
        tokio::runtime::Runtime::new().map_err(|e| CliError::Usage(format!("cannot start the runtime: {e}")))?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&args.listen).await.map_err(|e| {
            CliError::Usage(format!(
                "cannot listen on {}: {e} (choose another address with --listen)",
                args.listen
            ))
        })?;
        let addr = listener.local_addr().map_err(|e| CliError::Usage(e.to_string()))?;
        // The gateway calls the simulator, and the simulator notifies the gateway, through
        // this process's own port; an unspecified listen address is reached over loopback.
        let own = if addr.ip().is_unspecified() {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), addr.port())
        } else {
            addr
        };
        let base = format!("http://{own}");

        let mut sim_config = SimConfig::new();
        sim_config.bills_immediately = true;
        // The test merchant on APIv3 too, for a second mini program; WeChat Pay's keys (and
        // the merchant's APIv3 key and certificate) are made once under the data directory.
        let keys_dir = dir.join("simulator-keys");
        sim_config.v3 = Some(V3Config {
            keys_dir: keys_dir.clone(),
            signer: V3Signer::PublicKey,
        });
        let mut v3_app = SimMerchant::test_merchant();
        v3_app.appid = AppId::new(V3_APPID).expect("the demo's v3 appid is valid");
        sim_config.merchants.push(v3_app);
        // A refund settles two seconds after it is asked for: long enough to watch it pending.
        sim_config.refund_delay = Duration::from_secs(2);
        let sim = Simulator::new(sim_config).map_err(|e| CliError::Usage(e.to_string()))?;
        let stop_simulator = sim.start_background();

        let files = sim
            .v3_files()
            .ok_or_else(|| CliError::Usage("the demo's simulator has no APIv3 keys".into()))?;
        let v3 = v3_credentials(&files)?;
        let mut config = demo_config(&base, &token, &webhook_secret, v3);
        config.console = Some(console);
        let url = format!("sqlite://{}", db_path.display());
        let store = wxpay_gateway::open_store(&url, 4)
            .await
            .map_err(|e| CliError::Usage(format!("{e} ({})", db_path.display())))?;
        let app = App::new(config, store).map_err(CliError::Usage)?;
        let demo = Demo {
            gateway: base.clone(),
            token: token.clone(),
            webhook_secret,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .build()
                .map_err(|e| CliError::Usage(e.to_string()))?,
            events: Mutex::new(VecDeque::new()),
        };
        let router = app.router().merge(sim.api_router()).merge(demo_router(Arc::new(demo)));
        let jobs = app.start_jobs();

        eprintln!("wxpay demo: gateway + WeChat Pay simulator + SQLite, one process");
        eprintln!();
        if exposed {
            eprintln!("  WARNING: --public: anybody who can reach {addr} can use the demo page, which holds the");
            eprintln!("  demo API token (it can create, close and refund any demo order), read the orders, and");
            eprintln!("  pay or fail them through the simulator's controls. The demo has no sign-in.");
            eprintln!();
        }
        eprintln!("  open the demo      {base}/demo");
        eprintln!("  gateway API        {base}/v1/orders   (Authorization: Bearer {token})");
        eprintln!("  API reference      {base}/docs   (OpenAPI: {base}/openapi.json)");
        // On a line of its own, unindented, as the product's contract prints it.
        eprintln!("console: {base}/console password: {console_password}");
        eprintln!("  simulator          {base}/pay/unifiedorder, {base}/simulator/notifications");
        eprintln!("  metrics            {base}/metrics");
        eprintln!("  database           {}", db_path.display());
        eprintln!();
        eprintln!("  test merchant      appid {TEST_APPID}, mch_id {TEST_MCH_ID} (test-only keys, see the README)");
        eprintln!(
            "  APIv3              merchant \"v3\" (appid {V3_APPID}): the page's APIv3 switch; keys in {}",
            keys_dir.display()
        );
        eprintln!("  stop with Ctrl-C");
        let served = wxpay_gateway::serve_router(
            router,
            wxpay_gateway::Limits::default(),
            listener,
            crate::shutdown_signal(),
        )
        .await;
        eprintln!("shutting down");
        app.finish_requests().await;
        jobs.stop().await;
        let _ = stop_simulator.send(true);
        served.map_err(|e| CliError::Usage(format!("the server stopped: {e}")))
    })
}

/// The gateway configuration of the demo: the built-in test merchant served by the
/// simulator on the same port, the demo backend's webhook, and quick background checks so
/// that an order left unpaid on the page is seen to be queried.
fn demo_config(base: &str, token: &str, webhook_secret: &str, v3: wxpay_gateway::V3Credentials) -> Config {
    let merchant = MerchantConfig {
        name: "default".to_owned(),
        appid: AppId::new(TEST_APPID).expect("the test appid is valid"),
        app_secret: Some(AppSecret::new(TEST_APP_SECRET).expect("the test app secret is valid")),
        mch_id: MchId::new(TEST_MCH_ID).expect("the test mch_id is valid"),
        api_key: Some(ApiKey::new(TEST_API_KEY).expect("the test key is valid")),
        sign_type: SignType::Md5,
        base_url: base.to_owned(),
        backup_url: None,
        sns_base_url: base.to_owned(),
        client_cert: None,
        ca_pem: None,
        v3: None,
    };
    // The same merchant number on APIv3, for the second mini program: orders with
    // `"merchant": "v3"` go through the APIv3 provider.
    let v3_merchant = MerchantConfig {
        name: "v3".to_owned(),
        appid: AppId::new(V3_APPID).expect("the demo's v3 appid is valid"),
        api_key: None,
        v3: Some(v3),
        ..merchant.clone()
    };
    let jobs = JobsConfig {
        first_check_after: Duration::from_secs(30),
        max_check_interval: Duration::from_secs(60),
        poll_every: Duration::from_millis(500),
        ..JobsConfig::default()
    };
    Config {
        public_url: base.to_owned(),
        api_tokens: vec![Secret::new(token)],
        merchants: vec![merchant, v3_merchant],
        webhook: Some(WebhookConfig {
            url: format!("{base}/demo/webhook"),
            secret: Secret::new(webhook_secret),
            // The demo's backend is in this very process, on the demo's own address.
            allow_http: true,
        }),
        upstream: UpstreamConfig::default(),
        jobs,
        default_order_ttl: Duration::from_secs(15 * 60),
        reconcile: Default::default(),
        limits: wxpay_gateway::Limits::default(),
        metrics_token: None,
        console: None,
    }
}

/// The gateway's APIv3 credentials of the test merchant, from the files the simulator made:
/// its key and serial, and WeChat Pay's public key.
fn v3_credentials(files: &wxpay_simulator::V3Files) -> Result<wxpay_gateway::V3Credentials, CliError> {
    use wxpay_protocol::v3::{MerchantKey, PublicKey};
    let read = |p: PathBuf| {
        std::fs::read_to_string(&p).map_err(|e| CliError::Usage(format!("cannot read {}: {e}", p.display())))
    };
    let merchant = files.dir.join(TEST_MCH_ID);
    let serial = read(merchant.join("apiclient_serial"))?;
    let key = MerchantKey::from_pem(&read(merchant.join("apiclient_key.pem"))?, serial.trim())?;
    let id = files.pub_key_id.clone();
    let public = PublicKey::from_pem(&read(files.pub_key.clone())?)?;
    Ok(wxpay_gateway::V3Credentials {
        apiv3_key: wxpay_protocol::ApiV3Key::new(TEST_APIV3_KEY)?,
        key: Arc::new(key),
        platform_certs: Vec::new(),
        public_key: Some((id, public)),
    })
}

/// Whether `listen` names an address other machines can reach: anything but loopback (the
/// unspecified 0.0.0.0 and :: listen on every interface).
fn reachable_from_elsewhere(listen: &str) -> Result<bool, CliError> {
    use std::net::ToSocketAddrs;
    let addrs: Vec<SocketAddr> = listen
        .to_socket_addrs()
        .map_err(|e| CliError::Usage(format!("--listen {listen}: not an address to listen on ({e})")))?
        .collect();
    if addrs.is_empty() {
        return Err(CliError::Usage(format!("--listen {listen}: names no address")));
    }
    Ok(addrs.iter().any(|a| !a.ip().is_loopback()))
}

/// Creates the data directory (and its missing parents) for its owner only (0700): it holds
/// the database, the API token and the webhook secret.
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

/// Reads a secret kept in the data directory, or makes one (owner-only on Unix), so that a
/// restarted demo keeps its token.
fn load_or_create_secret(path: &Path, prefix: &str) -> Result<String, CliError> {
    if let Ok(s) = std::fs::read_to_string(path) {
        let s = s.trim();
        if s.len() >= 24 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Ok(s.to_owned());
        }
    }
    use ring::rand::SecureRandom;
    let mut b = [0u8; 20];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| CliError::Usage("the system random source failed".into()))?;
    let s: String = std::iter::once(prefix.to_owned())
        .chain(b.iter().map(|x| format!("{x:02x}")))
        .collect();
    write_private(path, &s).map_err(|e| CliError::Usage(format!("cannot write {}: {e}", path.display())))?;
    Ok(s)
}

#[cfg(unix)]
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())?;
    f.write_all(b"\n")
}

#[cfg(not(unix))]
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    std::fs::write(path, format!("{text}\n"))
}

/// The demo's business backend.
struct Demo {
    gateway: String,
    token: String,
    webhook_secret: String,
    http: reqwest::Client,
    /// Events received on the webhook, newest last.
    events: Mutex<VecDeque<Value>>,
}

fn demo_router(demo: Arc<Demo>) -> Router {
    Router::new()
        .route("/", get(|| async { Redirect::to("/demo") }))
        .route("/demo", get(page))
        .route("/demo/backend/items", get(items))
        .route("/demo/backend/login", post(login))
        .route("/demo/backend/orders", post(create_order))
        .route("/demo/backend/orders/{out_trade_no}", get(get_order))
        .route("/demo/backend/orders/{out_trade_no}/refund", post(refund_order))
        .route("/demo/webhook", post(webhook))
        .with_state(demo)
}

async fn page() -> Html<&'static str> {
    Html(include_str!("demo.html"))
}

async fn items() -> Json<Value> {
    Json(Value::Array(
        ITEMS
            .iter()
            .map(|(id, name, fen)| json!({"id": id, "name": name, "amount_fen": fen}))
            .collect(),
    ))
}

/// An answer passed through from the gateway (or a 502 naming what failed).
fn relay(status: u16, body: Value) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    (status, Json(body)).into_response()
}

impl Demo {
    async fn call(
        &self,
        method: reqwest::Method,
        url: String,
        body: Option<Value>,
        auth: bool,
        idem: Option<String>,
    ) -> (u16, Value) {
        let mut req = self.http.request(method, url);
        if auth {
            req = req.header(header::AUTHORIZATION.as_str(), format!("Bearer {}", self.token));
        }
        if let Some(k) = idem {
            req = req.header("idempotency-key", k);
        }
        if let Some(b) = body {
            req = req
                .header(header::CONTENT_TYPE.as_str(), "application/json")
                .body(b.to_string());
        }
        match req.send().await {
            Ok(r) => {
                let status = r.status().as_u16();
                let text = r.text().await.unwrap_or_default();
                (
                    status,
                    serde_json::from_str(&text).unwrap_or_else(|_| json!({"text": text})),
                )
            }
            Err(e) => (
                502,
                json!({"error": {"code": "demo_backend", "message": format!("calling the gateway: {e}")}}),
            ),
        }
    }
}

#[derive(serde::Deserialize)]
struct LoginRequest {
    user: String,
}

/// `wx.login` (the simulator's login helper gives the code) and the backend's
/// `POST /v1/openid`.
async fn login(State(demo): State<Arc<Demo>>, Json(req): Json<LoginRequest>) -> Response {
    let user = req.user.trim();
    if user.is_empty() || user.len() > 32 {
        return relay(
            400,
            json!({"error": {"code": "invalid", "message": "user: 1 to 32 characters"}}),
        );
    }
    // One openid per mini program: an openid belongs to the appid it was issued for, so the
    // APIv3 merchant's orders (its own mini program) need the user's openid in that app.
    let mut openids = serde_json::Map::new();
    let mut first_code = String::new();
    for (api, appid, merchant) in [("v2", TEST_APPID, "default"), ("v3", V3_APPID, "v3")] {
        let (status, login) = demo
            .call(
                reqwest::Method::POST,
                format!("{}/simulator/login", demo.gateway),
                Some(json!({"appid": appid, "user": user})),
                false,
                None,
            )
            .await;
        let Some(code) = login.get("code").and_then(Value::as_str).map(str::to_owned) else {
            return relay(status, login);
        };
        let (status, openid) = demo
            .call(
                reqwest::Method::POST,
                format!("{}/v1/openid", demo.gateway),
                Some(json!({"code": code, "merchant": merchant})),
                true,
                None,
            )
            .await;
        if status != 200 {
            return relay(status, openid);
        }
        if first_code.is_empty() {
            first_code = code;
        }
        openids.insert(api.to_owned(), openid.get("openid").cloned().unwrap_or(Value::Null));
    }
    relay(
        200,
        json!({"code": first_code, "openid": openids.get("v2"), "openids": openids}),
    )
}

#[derive(serde::Deserialize)]
struct OrderRequest {
    item: String,
    openid: String,
    key: Option<String>,
    /// `v3` for the APIv3 merchant; APIv2 otherwise.
    api: Option<String>,
}

/// The gateway merchant an `api` choice of the page names.
fn merchant_for(api: Option<&str>) -> &'static str {
    if api == Some("v3") { "v3" } else { "default" }
}

/// The backend prices the item and asks the gateway for the order and its pay parameters.
async fn create_order(State(demo): State<Arc<Demo>>, Json(req): Json<OrderRequest>) -> Response {
    let Some((_, name, fen)) = ITEMS.iter().find(|(id, _, _)| *id == req.item) else {
        return relay(400, json!({"error": {"code": "invalid", "message": "no such item"}}));
    };
    let body = json!({
        "description": name,
        "amount_fen": fen,
        "openid": req.openid,
        "attach": format!("demo:{}", req.item),
        "merchant": merchant_for(req.api.as_deref()),
    });
    let (status, answer) = demo
        .call(
            reqwest::Method::POST,
            format!("{}/v1/orders", demo.gateway),
            Some(body),
            true,
            req.key,
        )
        .await;
    relay(status, answer)
}

#[derive(serde::Deserialize)]
struct RefundRequest {
    amount_fen: u64,
    key: Option<String>,
    api: Option<String>,
}

#[derive(serde::Deserialize)]
struct ApiQuery {
    api: Option<String>,
}

/// The backend refunds (part of) an order through the gateway.
async fn refund_order(
    State(demo): State<Arc<Demo>>,
    UrlPath(out_trade_no): UrlPath<String>,
    Json(req): Json<RefundRequest>,
) -> Response {
    if !valid_number(&out_trade_no) {
        return relay(400, json!({"error": {"code": "invalid", "message": "out_trade_no"}}));
    }
    let (status, answer) = demo
        .call(
            reqwest::Method::POST,
            format!("{}/v1/orders/{out_trade_no}/refunds", demo.gateway),
            Some(json!({"amount_fen": req.amount_fen, "reason": "demo refund", "merchant": merchant_for(req.api.as_deref())})),
            true,
            req.key,
        )
        .await;
    relay(status, answer)
}

/// `2026-12-03 16:04:05 UTC+8` for the gateway's `2026-12-03T08:04:05.123Z`.
fn beijing(at: &str) -> Option<String> {
    let (date, time) = at.strip_suffix('Z')?.split_once('T')?;
    let seconds = time.split('.').next()?;
    // Read as if it were Beijing time, then moved by the eight hours it is not.
    let as_if = BeijingTime::parse_dashed(&format!("{date} {seconds}")).ok()?;
    Some(format!(
        "{} UTC+8",
        BeijingTime::from_unix(as_if.unix() + 8 * 3600).to_dashed()
    ))
}

fn valid_number(n: &str) -> bool {
    !n.is_empty() && n.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-|*".contains(&b))
}

/// The order as the gateway has it, with the events the backend's webhook received for it.
async fn get_order(
    State(demo): State<Arc<Demo>>,
    UrlPath(out_trade_no): UrlPath<String>,
    axum::extract::Query(q): axum::extract::Query<ApiQuery>,
) -> Response {
    if !valid_number(&out_trade_no) {
        return relay(400, json!({"error": {"code": "invalid", "message": "out_trade_no"}}));
    }
    let (status, mut order) = demo
        .call(
            reqwest::Method::GET,
            format!(
                "{}/v1/orders/{out_trade_no}?merchant={}",
                demo.gateway,
                merchant_for(q.api.as_deref())
            ),
            None,
            true,
            None,
        )
        .await;
    // The page shows Beijing time, as WeChat Pay and the order numbers do, with its zone.
    if let Some(events) = order.get_mut("events").and_then(Value::as_array_mut) {
        for e in events {
            if let Some(at) = e["at"].as_str().and_then(beijing) {
                e["at_beijing"] = Value::String(at);
            }
        }
    }
    let events: Vec<Value> = demo
        .events
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|e| e["data"]["out_trade_no"].as_str() == Some(out_trade_no.as_str()))
        .cloned()
        .collect();
    relay(status, json!({"order": order, "webhook_events": events}))
}

/// The backend's webhook: it checks `Wxpay-Signature` before it believes anything, and
/// keeps each event id once (deliveries are at least once).
async fn webhook(State(demo): State<Arc<Demo>>, headers: HeaderMap, body: Bytes) -> Response {
    let signature = headers
        .get("wxpay-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let text = String::from_utf8_lossy(&body);
    let now = wxpay_gateway::time::now_ms() / 1000;
    if !wxpay_gateway::verify_webhook_signature(&demo.webhook_secret, signature, &text, now, 300) {
        tracing::warn!("demo webhook: an event with a bad signature was refused");
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let Ok(mut event) = serde_json::from_str::<Value>(&text) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    event["verified_signature"] = Value::String(signature.to_owned());
    let mut events = demo.events.lock().unwrap_or_else(|e| e.into_inner());
    if !events.iter().any(|e| e["id"] == event["id"]) {
        if events.len() == EVENTS_KEPT {
            events.pop_front();
        }
        events.push_back(event);
    }
    StatusCode::NO_CONTENT.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_shows_beijing_time_with_its_zone() {
        assert_eq!(
            beijing("2026-12-03T08:04:05.123Z").as_deref(),
            Some("2026-12-03 16:04:05 UTC+8")
        );
        assert_eq!(
            beijing("2026-12-03T20:00:00.000Z").as_deref(),
            Some("2026-12-04 04:00:00 UTC+8")
        );
        assert_eq!(beijing("not a time"), None);
    }
}
