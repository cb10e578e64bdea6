//! A simulator on 127.0.0.1:0, a merchant's notification receiver beside it, and typed helpers.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::routing::post;
use wxpay_protocol::v2::{self, UnifiedOrder, UnifiedOrderResponse, V2Call};
use wxpay_protocol::{ApiKey, AppId, Error, Fen, MchId, Merchant, Nonce, OutTradeNo, SignType};
use wxpay_simulator::{SimConfig, SimHandle, Simulator, TEST_API_KEY, TEST_APPID, TEST_MCH_ID};

/// What the merchant's notify URL received, and how it answers.
#[derive(Clone, Default)]
pub(crate) struct Receiver {
    pub bodies: Arc<Mutex<Vec<String>>>,
    /// Answer FAIL to this many notifications before answering SUCCESS.
    pub fail_next: Arc<AtomicUsize>,
}

impl Receiver {
    pub(crate) fn received(&self) -> Vec<String> {
        self.bodies.lock().unwrap().clone()
    }
}

pub(crate) struct Env {
    pub sim: SimHandle,
    pub http: reqwest::Client,
    pub merchant: Merchant,
    pub receiver: Receiver,
    pub notify_url: String,
}

pub(crate) fn merchant(sign_type: SignType) -> Merchant {
    Merchant {
        appid: AppId::new(TEST_APPID).unwrap(),
        mch_id: MchId::new(TEST_MCH_ID).unwrap(),
        key: ApiKey::new(TEST_API_KEY).unwrap(),
        sign_type,
    }
}

async fn receiver() -> (Receiver, String) {
    let r = Receiver::default();
    let state = r.clone();
    let app = Router::new().route(
        "/notify",
        post(move |body: String| {
            let state = state.clone();
            async move {
                state.bodies.lock().unwrap().push(body);
                let failing = state.fail_next.load(Ordering::SeqCst);
                if failing > 0 {
                    state.fail_next.fetch_sub(1, Ordering::SeqCst);
                    v2::notify_fail_reply("busy")
                } else {
                    v2::NOTIFY_SUCCESS_REPLY.to_owned()
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (r, format!("http://{addr}/notify"))
}

/// A simulator in explicit mode at a thousand times real speed (15 s retries take 15 ms),
/// with bills served at once, after `tweak` adjusts its configuration.
pub(crate) async fn spawn_with(tweak: impl FnOnce(&mut SimConfig)) -> Env {
    let mut config = SimConfig::new();
    config.time_scale = 1000.0;
    config.bills_immediately = true;
    tweak(&mut config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sim = Simulator::new(config).unwrap().serve(listener).await.unwrap();
    let (receiver, notify_url) = receiver().await;
    Env {
        sim,
        http: reqwest::Client::new(),
        merchant: merchant(SignType::Md5),
        receiver,
        notify_url,
    }
}

pub(crate) async fn spawn() -> Env {
    spawn_with(|_| {}).await
}

static NONCE: AtomicUsize = AtomicUsize::new(0);

pub(crate) fn nonce() -> Nonce {
    Nonce::new(format!("n{}", NONCE.fetch_add(1, Ordering::Relaxed))).unwrap()
}

impl Env {
    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.sim.base_url())
    }

    /// Posts a raw body; returns the status and the answer.
    pub(crate) async fn post_raw(&self, path: &str, body: impl Into<reqwest::Body>) -> (u16, String) {
        let r = self.http.post(self.url(path)).body(body).send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    /// Makes a call as a merchant would, with `m`'s credentials.
    pub(crate) async fn call_as<C: V2Call>(&self, m: &Merchant, call: &C) -> Result<C::Response, Error> {
        let body = v2::encode(call, m, &nonce())?;
        let answer = self
            .http
            .post(self.url(C::PATH))
            .body(body)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        C::decode(&answer, m)
    }

    pub(crate) async fn call<C: V2Call>(&self, call: &C) -> Result<C::Response, Error> {
        self.call_as(&self.merchant, call).await
    }

    pub(crate) fn order(&self, no: &str, fee: u64) -> UnifiedOrder {
        UnifiedOrder::jsapi(
            "咖啡",
            OutTradeNo::new(no).unwrap(),
            Fen::new(fee).unwrap(),
            "127.0.0.1",
            &self.notify_url,
            self.openid(),
        )
    }

    /// The openid the simulator issues for user `user-1` of the merchant's mini program
    /// (what `jscode2session` answers after `/simulator/login`).
    pub(crate) fn openid(&self) -> String {
        wxpay_simulator::openid(self.merchant.appid.as_str(), "user-1")
    }

    pub(crate) async fn create(&self, no: &str, fee: u64) -> UnifiedOrderResponse {
        self.call(&self.order(no, fee)).await.unwrap()
    }

    /// `POST /simulator/pay`.
    pub(crate) async fn pay(&self, no: &str, outcome: &str) -> (u16, serde_json::Value) {
        let r = self
            .http
            .post(self.url("/simulator/pay"))
            .json(&serde_json::json!({"out_trade_no": no, "outcome": outcome}))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap())
    }

    pub(crate) async fn get_json(&self, path: &str) -> serde_json::Value {
        self.http
            .get(self.url(path))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    pub(crate) async fn post_json(&self, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
        let r = self.http.post(self.url(path)).json(&body).send().await.unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(serde_json::Value::Null))
    }

    /// The simulator's Prometheus text.
    pub(crate) async fn metrics_text(&self) -> String {
        self.http
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Adds a fault.
    pub(crate) async fn fault(&self, body: serde_json::Value) {
        let (status, answer) = self.post_json("/simulator/faults", body).await;
        assert_eq!(status, 201, "{answer}");
    }

    /// The notification attempts about one order.
    pub(crate) async fn attempts(&self, no: &str) -> Vec<serde_json::Value> {
        self.get_json(&format!("/simulator/notifications?out_trade_no={no}"))
            .await["attempts"]
            .as_array()
            .unwrap()
            .clone()
    }
}

/// Polls `check` until it holds, for up to five seconds.
pub(crate) async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..500 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for: {what}");
}
