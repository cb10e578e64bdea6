//! The gateway's request bodies on arbitrary bytes, through the whole HTTP edge: the check is
//! shared with the fuzz target `gateway_bodies` (`fuzz/fuzz_targets/gateway_bodies.rs`
//! includes this file), and a test applies it to the seeds in `testdata/fuzz/gateway/`.
//!
//! Every body goes to every route that reads one. Whatever it holds, the answer is a refusal
//! or an outcome the API documents, never an internal error (500), and on the `/v1` routes it
//! is the JSON error body. WeChat Pay is a closed port here: an order that passes the edge
//! reaches the provider, fails, and opens the breaker, so that later ones are refused at once.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use tower::ServiceExt;
use wxpay_gateway::{App, Config, JobsConfig, MerchantConfig, ReconcileConfig, Secret, UpstreamConfig};
use wxpay_protocol::{ApiKey, AppId, MchId, SignType};

const TOKEN: &str = "fuzz-token-0123456789";

/// The routes that read a body, each with the answers the API documents for it.
const ROUTES: &[&str] = &[
    "/v1/orders",
    "/v1/openid",
    "/v1/orders/FUZZ000001/refunds",
    "/v1/orders/FUZZ000001/close",
    "/notify/v2/pay",
    "/notify/v2/refund",
];

/// A gateway over a fresh SQLite file whose WeChat Pay is a closed port, and the runtime it
/// runs on, made once per process.
pub(crate) struct BodyFuzzer {
    runtime: tokio::runtime::Runtime,
    router: Router,
}

impl BodyFuzzer {
    /// The one instance of this process.
    pub(crate) fn get() -> &'static BodyFuzzer {
        static FUZZER: OnceLock<BodyFuzzer> = OnceLock::new();
        FUZZER.get_or_init(BodyFuzzer::new)
    }

    fn new() -> BodyFuzzer {
        crate::support::capture_alerts();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let dir = std::env::temp_dir().join(format!("wxpay-fuzz-bodies-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let url = format!("sqlite://{}", dir.join("wxpay.db").display());
        // Port 9 (discard) is closed on the machines this runs on: every call fails at once.
        let closed = "http://127.0.0.1:9".to_owned();
        let config = Config {
            public_url: "http://127.0.0.1:8080".into(),
            api_tokens: vec![Secret::new(TOKEN)],
            merchants: vec![MerchantConfig {
                name: "default".into(),
                appid: AppId::new("wxd678efh567hg6787").unwrap(),
                app_secret: None,
                mch_id: MchId::new("1230000109").unwrap(),
                api_key: Some(ApiKey::new("192006250b4c09247ec02edce69f6a2d").unwrap()),
                sign_type: SignType::Md5,
                base_url: closed.clone(),
                backup_url: None,
                sns_base_url: closed,
                client_cert: None,
                ca_pem: None,
                v3: None,
            }],
            webhook: None,
            upstream: UpstreamConfig {
                timeout: Duration::from_millis(200),
                connect_timeout: Duration::from_millis(200),
                attempts: 1,
                retry_backoff: Duration::ZERO,
                breaker_after_failures: 1,
                breaker_open_for: Duration::from_secs(24 * 3600),
                ..UpstreamConfig::default()
            },
            jobs: JobsConfig {
                enabled: false,
                ..JobsConfig::default()
            },
            default_order_ttl: Duration::from_secs(7200),
            reconcile: ReconcileConfig::default(),
            limits: wxpay_gateway::Limits::default(),
            metrics_token: None,
            console: None,
        };
        let router = runtime.block_on(async {
            wxpay_gateway::migrate(&url).await.unwrap();
            let store: Arc<dyn wxpay_gateway::store::Store> = wxpay_gateway::open_store(&url, 2).await.unwrap();
            App::new(config, store).unwrap().router()
        });
        BodyFuzzer { runtime, router }
    }

    /// Posts `data` to every route that reads a body, checks each answer, and gives the
    /// statuses in the order of [`ROUTES`].
    pub(crate) fn check(&self, data: &[u8]) -> Vec<StatusCode> {
        let mut statuses = Vec::with_capacity(ROUTES.len());
        for route in ROUTES {
            let (status, body) = self.runtime.block_on(self.post(route, data));
            assert_ne!(
                status,
                StatusCode::INTERNAL_SERVER_ERROR,
                "{route} answered 500 to {:?}: {}",
                String::from_utf8_lossy(data),
                String::from_utf8_lossy(&body)
            );
            if route.starts_with("/v1/") && !status.is_success() {
                let error: serde_json::Value = serde_json::from_slice(&body)
                    .unwrap_or_else(|_| panic!("{route} {status}: the error is not JSON: {body:?}"));
                assert!(error["error"]["code"].is_string(), "{route} {status}: {error}");
            }
            statuses.push(status);
        }
        statuses
    }

    async fn post(&self, route: &str, data: &[u8]) -> (StatusCode, Vec<u8>) {
        let request = Request::post(route)
            .header("authorization", format!("Bearer {TOKEN}"))
            .header("content-type", "application/json")
            .body(Body::from(data.to_vec()))
            .unwrap();
        let answer = self.router.clone().oneshot(request).await.unwrap();
        let status = answer.status();
        let body = answer.into_body().collect().await.unwrap().to_bytes().to_vec();
        (status, body)
    }
}

#[test]
fn fuzz_seeds_get_documented_answers_and_reach_past_the_parser() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata");
    let mut seeds: Vec<_> = std::fs::read_dir(dir.join("fuzz/gateway"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    seeds.push(dir.join("golden/notify-pay-md5.xml"));
    seeds.sort();
    let fuzzer = BodyFuzzer::get();
    let mut reached = Vec::new();
    for path in &seeds {
        let statuses = fuzzer.check(&std::fs::read(path).unwrap());
        reached.push((
            path.file_name().unwrap().to_str().unwrap().to_owned(),
            statuses[0].as_u16(),
        ));
    }
    // The seeds are worth their place only if they get past the parser: a valid order reaches
    // WeChat Pay (a closed port: 503), a yuan amount is understood and refused (422).
    assert!(reached.contains(&("order.json".into(), 503)), "{reached:?}");
    assert!(reached.contains(&("order-yuan.json".into(), 422)), "{reached:?}");
}
