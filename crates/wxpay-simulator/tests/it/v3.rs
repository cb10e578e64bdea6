//! APIv3 driven through `wxpay-protocol::v3` as a merchant's code would drive WeChat Pay:
//! every answer verified with the key files the simulator wrote, every notification verified
//! and decrypted.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use serde_json::{Value, json};
use wxpay_protocol::v3::auth::authorization;
use wxpay_protocol::v3::calls::{
    self, CreateJsapi, CreateRefund, Request, TradeState, Transaction, V3Error, bill_location, platform_certificates,
    refund_record, transaction,
};
use wxpay_protocol::v3::notify::{Envelope, Event};
use wxpay_protocol::v3::{Certificate, MerchantKey, PublicKey, SignatureHeaders, Verifier, VerifyError};
use wxpay_protocol::{AppId, Fen, MchId, Nonce, OutRefundNo, OutTradeNo};
use wxpay_simulator::{SimConfig, Simulator, TEST_APIV3_KEY, TEST_APPID, TEST_MCH_ID, V3Config, V3Signer};

use crate::support::{Env, eventually, spawn_with};

/// The payer: an openid the simulator issues for the test mini program.
static OPENID: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| wxpay_simulator::openid(TEST_APPID, "user-1"));

/// One keys folder for the whole test binary: RSA keys take a while to make, and a second
/// start on the folder must reuse them anyway.
fn keys_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("wxpay-sim-v3-keys-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut config = SimConfig::new();
        config.v3 = Some(V3Config {
            keys_dir: dir.clone(),
            signer: V3Signer::PublicKey,
        });
        // Making the simulator makes the files.
        Simulator::new(config).unwrap();
        dir
    })
}

/// A notification as received: headers and raw body.
type Received = (HeaderMap, Vec<u8>);

/// What the merchant's v3 notify URL received.
#[derive(Clone, Default)]
struct Inbox {
    got: Arc<Mutex<Vec<Received>>>,
    /// Answer 500 to this many deliveries before 204.
    fail_next: Arc<std::sync::atomic::AtomicUsize>,
}

impl Inbox {
    fn all(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }
}

async fn inbox() -> (Inbox, String) {
    let inbox = Inbox::default();
    let state = inbox.clone();
    let app = Router::new().route(
        "/notify/v3",
        post(move |headers: HeaderMap, body: axum::body::Bytes| {
            let state = state.clone();
            async move {
                state.got.lock().unwrap().push((headers, body.to_vec()));
                let failing = state.fail_next.load(std::sync::atomic::Ordering::SeqCst);
                if failing > 0 {
                    state.fail_next.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                    return StatusCode::INTERNAL_SERVER_ERROR;
                }
                StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (inbox, format!("http://{addr}/notify/v3"))
}

/// A merchant's APIv3 client: signs requests with the key the simulator issued to the test
/// merchant, verifies answers with the WeChat Pay public key and the platform certificate.
struct Client {
    env: Env,
    mchid: MchId,
    key: MerchantKey,
    verifier: Verifier,
    inbox: Inbox,
    notify_url: String,
    platform_serial: String,
    pub_key_id: String,
}

/// An answer: status, `Wechatpay-*` headers, raw body.
struct Answer {
    status: u16,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    fn error(&self) -> V3Error {
        V3Error::read(self.status, &self.body)
    }
}

fn signature_headers(h: &HeaderMap) -> SignatureHeaders<'_> {
    let get = |n: &str| h.get(n).and_then(|v| v.to_str().ok()).unwrap_or("");
    SignatureHeaders {
        timestamp: get("wechatpay-timestamp"),
        nonce: get("wechatpay-nonce"),
        signature: get("wechatpay-signature"),
        serial: get("wechatpay-serial"),
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

async fn client(signer: V3Signer) -> Client {
    let dir = keys_dir().to_owned();
    let env = spawn_with(|c| {
        c.v3 = Some(V3Config {
            keys_dir: dir.clone(),
            signer,
        });
    })
    .await;
    let read = |p: PathBuf| std::fs::read_to_string(p).unwrap();
    let mch_dir = dir.join(TEST_MCH_ID);
    let serial = read(mch_dir.join("apiclient_serial"));
    let key = MerchantKey::from_pem(&read(mch_dir.join("apiclient_key.pem")), serial.trim()).unwrap();
    let platform = Certificate::from_pem(&read(dir.join("platform_cert.pem"))).unwrap();
    let pub_key_id = read(dir.join("pub_key_id")).trim().to_owned();
    let verifier = Verifier::new().with_certificate(&platform).with_public_key(
        &pub_key_id,
        PublicKey::from_pem(&read(dir.join("pub_key.pem"))).unwrap(),
    );
    let (inbox, notify_url) = inbox().await;
    Client {
        env,
        mchid: MchId::new(TEST_MCH_ID).unwrap(),
        key,
        verifier,
        inbox,
        notify_url,
        platform_serial: platform.serial_no().to_owned(),
        pub_key_id,
    }
}

impl Client {
    /// Sends `req` signed at `timestamp`, with the usual headers, and verifies the answer's
    /// signature (except for a file download, which WeChat Pay does not sign).
    async fn send_at(&self, req: &Request, timestamp: i64) -> Answer {
        let nonce = Nonce::from_random_bytes(rand_bytes());
        let auth = authorization(
            &self.mchid,
            &self.key,
            req.method,
            &req.url,
            timestamp,
            &nonce,
            &req.body,
        )
        .unwrap();
        self.send_raw(
            req,
            &[
                ("Authorization", auth.as_str()),
                ("Accept", "application/json"),
                ("User-Agent", "wxpay-tests"),
            ],
        )
        .await
    }

    async fn send(&self, req: &Request) -> Answer {
        let a = self.send_at(req, now()).await;
        if !req.url.starts_with("/v3/billdownload/") {
            self.verifier
                .verify(&signature_headers(&a.headers), &a.body, now())
                .unwrap_or_else(|e| panic!("answer to {} not verified: {e}", req.url));
        }
        a
    }

    async fn send_raw(&self, req: &Request, headers: &[(&str, &str)]) -> Answer {
        let url = self.env.url(&req.url);
        let mut r = match req.method {
            "GET" => self.env.http.get(url),
            _ => self
                .env
                .http
                .post(url)
                .header("Content-Type", "application/json")
                .body(req.body.clone()),
        };
        for (n, v) in headers {
            r = r.header(*n, *v);
        }
        let resp = r.send().await.unwrap();
        Answer {
            status: resp.status().as_u16(),
            headers: resp.headers().clone(),
            body: resp.bytes().await.unwrap().to_vec(),
        }
    }

    fn create(&self, no: &str, fee: u64) -> Request {
        CreateJsapi {
            appid: &AppId::new(TEST_APPID).unwrap(),
            mchid: &self.mchid,
            description: "咖啡",
            out_trade_no: &OutTradeNo::new(no).unwrap(),
            time_expire: None,
            attach: Some("table 7"),
            notify_url: &self.notify_url,
            amount: Fen::new(fee).unwrap(),
            openid: &OPENID,
        }
        .request()
    }

    async fn query(&self, no: &str) -> Transaction {
        let a = self
            .send(&calls::query_by_out_trade_no(
                &OutTradeNo::new(no).unwrap(),
                &self.mchid,
            ))
            .await;
        assert_eq!(a.status, 200, "{}", a.json());
        transaction(&a.body).unwrap()
    }

    /// Creates and pays an order (through `/simulator/pay`).
    async fn paid(&self, no: &str, fee: u64) {
        let a = self.send(&self.create(no, fee)).await;
        assert_eq!(a.status, 200, "{}", a.json());
        let (status, answer) = self.env.pay(no, "success").await;
        assert_eq!(status, 200, "{answer}");
    }

    /// The notifications received so far that verify, decrypted.
    fn events(&self) -> Vec<Event> {
        self.inbox
            .all()
            .iter()
            .filter(|(h, b)| self.verifier.verify(&signature_headers(h), b, now()).is_ok())
            .map(|(_, b)| Envelope::read(b).unwrap().event(TEST_APIV3_KEY.as_bytes()).unwrap())
            .collect()
    }
}

fn rand_bytes() -> [u8; 16] {
    let mut b = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).unwrap();
    b
}

#[tokio::test]
async fn a_v3_order_is_created_paid_notified_queried_and_refunded_with_every_answer_signed() {
    let c = client(V3Signer::PublicKey).await;
    let a = c.send(&c.create("v3flow-1", 1250)).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.header("wechatpay-serial"), c.pub_key_id);
    assert_eq!(a.header("wechatpay-signature-type"), "WECHATPAY2-SHA256-RSA2048");
    assert!(a.json()["prepay_id"].as_str().unwrap().starts_with("wx"));
    let t = c.query("v3flow-1").await;
    assert_eq!(t.trade_state, TradeState::NotPay);
    assert_eq!(t.total, Some(Fen::new(1250).unwrap()));

    let (status, _) = c.env.pay("v3flow-1", "success").await;
    assert_eq!(status, 200);
    eventually("the payment notification", || async { !c.events().is_empty() }).await;
    let Event::Transaction(paid) = &c.events()[0] else {
        panic!("not a transaction: {:?}", c.events());
    };
    assert_eq!(paid.trade_state, TradeState::Success);
    assert_eq!(paid.total, Some(Fen::new(1250).unwrap()));
    assert_eq!(paid.attach.as_deref(), Some("table 7"));
    assert_eq!(paid.openid.as_deref(), Some(OPENID.as_str()));
    // A 204 acknowledges: the simulator does not deliver it again.
    let attempts = c.env.attempts("v3flow-1").await;
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0]["acknowledged"], true);

    let transaction_id = paid.transaction_id.clone().unwrap();
    let by_id = c.send(&calls::query_by_transaction_id(&transaction_id, &c.mchid)).await;
    assert_eq!(transaction(&by_id.body).unwrap().trade_state, TradeState::Success);

    let refund = CreateRefund {
        out_trade_no: &OutTradeNo::new("v3flow-1").unwrap(),
        out_refund_no: &OutRefundNo::new("v3flow-1-r1").unwrap(),
        reason: Some("cold coffee"),
        notify_url: Some(&c.notify_url),
        refund: Fen::new(250).unwrap(),
        total: Fen::new(1250).unwrap(),
    }
    .request();
    let a = c.send(&refund).await;
    assert_eq!(a.status, 200, "{}", a.json());
    let r = refund_record(&a.body).unwrap();
    assert_eq!(r.status, calls::RefundStatus::Processing);
    assert_eq!(r.refund, Fen::new(250).unwrap());
    // The same refund again is the same refund, once.
    let again = refund_record(&c.send(&refund).await.body).unwrap();
    assert_eq!(again.refund_id, r.refund_id);

    eventually("the refund notification", || async { c.events().len() >= 2 }).await;
    let Event::Refund(done) = &c.events()[1] else {
        panic!("not a refund: {:?}", c.events());
    };
    assert_eq!(done.status, calls::RefundStatus::Success);
    assert_eq!(done.refund_id, r.refund_id);
    let q = c
        .send(&calls::query_refund(&OutRefundNo::new("v3flow-1-r1").unwrap()))
        .await;
    assert_eq!(refund_record(&q.body).unwrap().status, calls::RefundStatus::Success);
    assert_eq!(c.query("v3flow-1").await.trade_state, TradeState::Refund);
}

#[tokio::test]
async fn requests_that_are_not_signed_right_are_refused_as_wechat_pay_refuses_them() {
    let c = client(V3Signer::PublicKey).await;
    let req = c.create("v3auth-1", 100);
    // No User-Agent.
    let a = c.send_raw(&req, &[("Accept", "application/json")]).await;
    assert_eq!((a.status, a.error().code.as_str()), (400, "INVALID_REQUEST"));
    // No Authorization.
    let a = c
        .send_raw(&req, &[("Accept", "application/json"), ("User-Agent", "t")])
        .await;
    assert_eq!((a.status, a.error().code.as_str()), (401, "SIGN_ERROR"));
    // Ten minutes old.
    let a = c.send_at(&req, now() - 600).await;
    assert_eq!((a.status, a.error().code.as_str()), (401, "SIGN_ERROR"));
    assert!(a.error().message.contains("5分钟"), "{}", a.error().message);
    // The body changed after signing.
    let mut tampered = req.clone();
    tampered.body = tampered.body.replace("100", "1");
    let nonce = Nonce::new("abc").unwrap();
    let auth = authorization(&c.mchid, &c.key, "POST", &req.url, now(), &nonce, &req.body).unwrap();
    let a = c
        .send_raw(
            &tampered,
            &[("Authorization", &auth), ("Accept", "*/*"), ("User-Agent", "t")],
        )
        .await;
    assert_eq!((a.status, a.error().code.as_str()), (401, "SIGN_ERROR"));
    assert_eq!(
        a.error().detail.unwrap()["sign_information"]["url"],
        "/v3/pay/transactions/jsapi"
    );
    // Another serial than the merchant certificate's.
    let other = MerchantKey::from_pem(
        &std::fs::read_to_string(keys_dir().join(TEST_MCH_ID).join("apiclient_key.pem")).unwrap(),
        "1234ABCD",
    )
    .unwrap();
    let auth = authorization(&c.mchid, &other, "POST", &req.url, now(), &nonce, &req.body).unwrap();
    let a = c
        .send_raw(
            &req,
            &[("Authorization", &auth), ("Accept", "*/*"), ("User-Agent", "t")],
        )
        .await;
    assert_eq!((a.status, a.error().code.as_str()), (401, "SIGN_ERROR"));
    // A merchant number the simulator does not know.
    let stranger = MchId::new("1999999999").unwrap();
    let auth = authorization(&stranger, &c.key, "POST", &req.url, now(), &nonce, &req.body).unwrap();
    let a = c
        .send_raw(
            &req,
            &[("Authorization", &auth), ("Accept", "*/*"), ("User-Agent", "t")],
        )
        .await;
    assert_eq!((a.status, a.error().code.as_str()), (400, "MCH_NOT_EXISTS"));
    // None of them made an order.
    let q = c
        .send(&calls::query_by_out_trade_no(
            &OutTradeNo::new("v3auth-1").unwrap(),
            &c.mchid,
        ))
        .await;
    assert_eq!((q.status, q.error().code.as_str()), (404, "ORDER_NOT_EXIST"));
}

#[tokio::test]
async fn business_refusals_carry_wechat_pays_codes_and_http_statuses() {
    let c = client(V3Signer::PublicKey).await;
    let code = |a: &Answer| (a.status, a.error().code);
    // Re-entry with other parameters.
    assert_eq!(c.send(&c.create("v3biz-1", 100)).await.status, 200);
    let a = c.send(&c.create("v3biz-1", 101)).await;
    assert_eq!(code(&a), (400, "INVALID_REQUEST".to_owned()));
    // Closed: 204, then the number is spent.
    let a = c
        .send(&calls::close(&OutTradeNo::new("v3biz-1").unwrap(), &c.mchid))
        .await;
    assert_eq!((a.status, a.body.len()), (204, 0));
    assert_eq!(
        code(&c.send(&c.create("v3biz-1", 100)).await),
        (400, "ORDER_CLOSED".to_owned())
    );
    // Paid: the same order again says so.
    c.paid("v3biz-2", 100).await;
    assert_eq!(
        code(&c.send(&c.create("v3biz-2", 100)).await),
        (403, "ORDERPAID".to_owned())
    );
    let a = c
        .send(&calls::close(&OutTradeNo::new("v3biz-2").unwrap(), &c.mchid))
        .await;
    assert_eq!(code(&a), (403, "ORDERPAID".to_owned()));
    // Another currency.
    let mut usd = c.create("v3biz-3", 100);
    usd.body = usd.body.replace("\"CNY\"", "\"USD\"");
    let a = c.send(&usd).await;
    assert_eq!(code(&a), (400, "PARAM_ERROR".to_owned()));
    assert_eq!(a.error().detail.unwrap()["field"], "/amount/currency");
    // Refunds of what does not exist, and more than was paid.
    let refund = |no: &str, amount: u64| {
        CreateRefund {
            out_trade_no: &OutTradeNo::new(no).unwrap(),
            out_refund_no: &OutRefundNo::new(format!("{no}-r")).unwrap(),
            reason: None,
            notify_url: None,
            refund: Fen::new(amount).unwrap(),
            total: Fen::new(100).unwrap(),
        }
        .request()
    };
    assert_eq!(
        code(&c.send(&refund("v3biz-404", 1)).await),
        (404, "RESOURCE_NOT_EXISTS".to_owned())
    );
    assert_eq!(
        code(&c.send(&refund("v3biz-2", 101)).await),
        (400, "INVALID_REQUEST".to_owned())
    );
    let a = c.send(&calls::query_refund(&OutRefundNo::new("nope").unwrap())).await;
    assert_eq!(code(&a), (404, "RESOURCE_NOT_EXISTS".to_owned()));
    // WeChat Pay's refusals on demand, with their statuses.
    c.env
        .fault(json!({"kind": "error_code", "api": "v3_refund", "err_code": "NOT_ENOUGH"}))
        .await;
    let a = c.send(&refund("v3biz-2", 10)).await;
    assert_eq!(code(&a), (403, "NOT_ENOUGH".to_owned()));
    assert_eq!(a.error().retry(), wxpay_protocol::v2::Retry::Final);
    c.env.fault(json!({"kind": "system_error", "api": "v3_query"})).await;
    let a = c
        .send(&calls::query_by_out_trade_no(
            &OutTradeNo::new("v3biz-2").unwrap(),
            &c.mchid,
        ))
        .await;
    assert_eq!(code(&a), (500, "SYSTEM_ERROR".to_owned()));
    assert_eq!(a.error().retry(), wxpay_protocol::v2::Retry::SameParameters);
    // A payer of another mini program.
    let mut stranger = c.create("v3biz-4", 100);
    stranger.body = stranger.body.replace(
        OPENID.as_str(),
        &wxpay_simulator::openid("wx1111111111111111", "user-1"),
    );
    let a = c.send(&stranger).await;
    assert_eq!(code(&a), (400, "PARAM_ERROR".to_owned()));
    assert!(a.error().message.contains("openid"), "{:?}", a.error());
    // Two refunds of one order within the minute: the second two seconds after the first
    // (the simulator's clock moved on, not a sleep), then a minute after.
    assert_eq!(c.send(&refund("v3biz-2", 10)).await.status, 200);
    let advance = async |secs: u32| {
        let (status, _) = c.env.post_json("/simulator/clock", json!({"advance_secs": secs})).await;
        assert_eq!(status, 200);
    };
    advance(2).await;
    let again = CreateRefund {
        out_trade_no: &OutTradeNo::new("v3biz-2").unwrap(),
        out_refund_no: &OutRefundNo::new("v3biz-2-r2").unwrap(),
        reason: None,
        notify_url: None,
        refund: Fen::new(10).unwrap(),
        total: Fen::new(100).unwrap(),
    }
    .request();
    let a = c.send(&again).await;
    assert_eq!(code(&a), (429, "FREQUENCY_LIMITED".to_owned()));
    assert_eq!(a.error().retry(), wxpay_protocol::v2::Retry::WaitAndRetry);
    advance(60).await;
    assert_eq!(c.send(&again).await.status, 200);
}

#[tokio::test]
async fn certificates_are_listed_encrypted_and_answers_name_the_signer_chosen() {
    for (signer, expect_certificate) in [(V3Signer::Certificate, true), (V3Signer::PublicKey, false)] {
        let c = client(signer).await;
        let a = c.send(&calls::certificates()).await;
        assert_eq!(a.status, 200);
        let expected_serial = if expect_certificate {
            &c.platform_serial
        } else {
            &c.pub_key_id
        };
        assert_eq!(a.header("wechatpay-serial"), expected_serial);
        let certs = platform_certificates(&a.body, TEST_APIV3_KEY.as_bytes()).unwrap();
        assert_eq!(certs.len(), 1);
        assert_eq!(certs[0].serial_no, c.platform_serial);
        assert!(certs[0].certificate.not_after() > now() + 4 * 365 * 86_400);
        // The wrong APIv3 key does not open them.
        assert!(platform_certificates(&a.body, b"0123456789abcdef0123456789abcdef").is_err());
    }
}

#[tokio::test]
async fn notification_faults_arrive_as_probes_replays_unknown_serials_and_tampered_tags() {
    let c = client(V3Signer::PublicKey).await;
    let cases = [
        ("notify_probe", "v3fault-probe"),
        ("notify_stale_timestamp", "v3fault-stale"),
        ("notify_unknown_serial", "v3fault-serial"),
        ("notify_bad_signature", "v3fault-sign"),
        ("notify_tampered_tag", "v3fault-tag"),
    ];
    for (kind, no) in cases {
        c.env.fault(json!({"kind": kind, "out_trade_no": no})).await;
        c.paid(no, 300).await;
    }
    eventually("one notification per order", || async {
        c.inbox.all().len() >= cases.len()
    })
    .await;
    let mut seen = Vec::new();
    for (headers, body) in c.inbox.all().into_iter().take(cases.len()) {
        let verdict = c.verifier.verify(&signature_headers(&headers), &body, now());
        let envelope = Envelope::read(&body).unwrap();
        let decrypted = envelope.event(TEST_APIV3_KEY.as_bytes());
        let out_trade_no = match &decrypted {
            Ok(Event::Transaction(t)) => t.out_trade_no.as_str().to_owned(),
            _ => "v3fault-tag".to_owned(),
        };
        seen.push((out_trade_no, verdict, decrypted.is_ok()));
    }
    seen.sort_by(|a, b| a.0.cmp(&b.0));
    let find = |no: &str| {
        seen.iter()
            .find(|s| s.0 == no)
            .unwrap_or_else(|| panic!("{no}: {seen:?}"))
    };
    assert_eq!(find("v3fault-probe").1, Err(VerifyError::Probe));
    assert!(matches!(find("v3fault-stale").1, Err(VerifyError::Stale { skew_secs }) if skew_secs >= 600));
    assert!(matches!(find("v3fault-serial").1, Err(VerifyError::UnknownSerial(_))));
    assert!(matches!(find("v3fault-sign").1, Err(VerifyError::BadSignature { .. })));
    let tag = find("v3fault-tag");
    assert_eq!(tag.1, Ok(()), "the tampered notification is signed as sent");
    assert!(!tag.2, "but its resource does not decrypt");
}

#[tokio::test]
async fn the_trade_bill_is_downloaded_and_matches_its_digest() {
    let c = client(V3Signer::PublicKey).await;
    c.paid("v3bill-1", 880).await;
    let today = wxpay_protocol::BeijingTime::from_unix(now()).to_dashed()[..10].to_owned();
    let a = c.send(&calls::trade_bill(&today, false)).await;
    assert_eq!(a.status, 200, "{}", a.json());
    let location = bill_location(&a.body).unwrap();
    let url = location.download_url.clone();
    let path = &url[url.find("/v3/").unwrap()..];
    let file = c
        .send(&Request {
            method: "GET",
            url: path.to_owned(),
            body: String::new(),
        })
        .await;
    assert_eq!(file.status, 200);
    assert!(file.headers.get("wechatpay-signature").is_none());
    location.check(&file.body).unwrap();
    let text = String::from_utf8(file.body.clone()).unwrap();
    assert!(text.contains("v3bill-1") && text.contains("8.80"), "{text}");
    let mut wrong = file.body.clone();
    wrong.push(b'\n');
    assert!(location.check(&wrong).is_err());
    let a = c.send(&calls::trade_bill("2001-01-01", false)).await;
    assert_eq!((a.status, a.error().code.as_str()), (400, "PARAM_ERROR"));
    // As gzip (what SDKs ask for by default): the digest is still the bill's own, "原始账单
    // (gzip需要解压缩)的摘要值" as WeChat Pay's page has it, not the gzip stream's.
    let zipped = calls::trade_bill(&today, true);
    let location = bill_location(&c.send(&zipped).await.body).unwrap();
    let url = location.download_url.clone();
    let gz = c
        .send(&Request {
            method: "GET",
            url: url[url.find("/v3/").unwrap()..].to_owned(),
            body: String::new(),
        })
        .await;
    assert_eq!(crate::bill::gunzip(&gz.body), file.body);
    location.check(&crate::bill::gunzip(&gz.body)).unwrap();
    assert!(
        location.check(&gz.body).is_err(),
        "the gzip stream's digest is not the bill's"
    );
    // The address works for thirty seconds: after that, a new one is to be asked for.
    let again = Request {
        method: "GET",
        url: url[url.find("/v3/").unwrap()..].to_owned(),
        body: String::new(),
    };
    assert_eq!(c.send(&again).await.status, 200);
    let (status, _) = c.env.post_json("/simulator/clock", json!({"advance_secs": 31})).await;
    assert_eq!(status, 200);
    let expired = c.send(&again).await;
    assert_eq!(
        (expired.status, expired.error().code.as_str()),
        (400, "INVALID_REQUEST")
    );
    assert!(expired.error().message.contains("过期"), "{}", expired.json());
    let mut unknown = again;
    unknown.url = "/v3/billdownload/file?token=nope".into();
    let a = c.send(&unknown).await;
    assert_eq!((a.status, a.error().code.as_str()), (400, "INVALID_REQUEST"));
}

#[tokio::test]
async fn a_restart_on_the_same_keys_folder_keeps_every_key_and_id() {
    let dir = keys_dir();
    let id = std::fs::read_to_string(dir.join("pub_key_id")).unwrap();
    let cert = std::fs::read_to_string(dir.join("platform_cert.pem")).unwrap();
    let merchant = std::fs::read_to_string(dir.join(TEST_MCH_ID).join("apiclient_cert.pem")).unwrap();
    let mut config = SimConfig::new();
    config.v3 = Some(V3Config {
        keys_dir: dir.to_owned(),
        signer: V3Signer::Certificate,
    });
    let sim = Simulator::new(config).unwrap();
    let files = sim.v3_files().unwrap();
    assert_eq!(files.pub_key_id, id.trim());
    assert!(files.pub_key_id.starts_with("PUB_KEY_ID_") && files.pub_key_id.len() == 45);
    assert_eq!(std::fs::read_to_string(dir.join("platform_cert.pem")).unwrap(), cert);
    assert_eq!(
        std::fs::read_to_string(dir.join(TEST_MCH_ID).join("apiclient_cert.pem")).unwrap(),
        merchant
    );
    // A public key that is not the half of the private one is refused at start, not used.
    let broken = std::env::temp_dir().join(format!("wxpay-sim-v3-broken-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&broken);
    std::fs::create_dir_all(&broken).unwrap();
    for f in [
        "platform_key.pem",
        "platform_cert.pem",
        "pub_key_id",
        "pub_key_private.pem",
    ] {
        std::fs::copy(dir.join(f), broken.join(f)).unwrap();
    }
    // Another key's public half (a test vector's).
    let other = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/vectors/keys/platform_public_key.pem");
    std::fs::copy(other, broken.join("pub_key.pem")).unwrap();
    let mut config = SimConfig::new();
    config.v3 = Some(V3Config {
        keys_dir: broken.clone(),
        signer: V3Signer::PublicKey,
    });
    let err = Simulator::new(config).unwrap_err().to_string();
    assert!(err.contains("pub_key.pem"), "{err}");
    let _ = std::fs::remove_dir_all(&broken);
}

#[tokio::test]
async fn a_payment_notification_delivered_again_after_a_refund_still_reports_the_payment() {
    let c = client(V3Signer::PublicKey).await;
    c.inbox.fail_next.store(1, std::sync::atomic::Ordering::SeqCst);
    c.paid("v3snap-1", 500).await;
    eventually("the refused first delivery", || async { !c.inbox.all().is_empty() }).await;
    let refund = CreateRefund {
        out_trade_no: &OutTradeNo::new("v3snap-1").unwrap(),
        out_refund_no: &OutRefundNo::new("v3snap-1-r").unwrap(),
        reason: None,
        notify_url: None,
        refund: Fen::new(100).unwrap(),
        total: Fen::new(500).unwrap(),
    }
    .request();
    assert_eq!(c.send(&refund).await.status, 200);
    assert_eq!(c.query("v3snap-1").await.trade_state, TradeState::Refund);
    eventually("the payment notification again", || async { c.inbox.all().len() >= 2 }).await;
    let (_, body) = &c.inbox.all()[1];
    let Event::Transaction(t) = Envelope::read(body).unwrap().event(TEST_APIV3_KEY.as_bytes()).unwrap() else {
        panic!("not a transaction");
    };
    assert_eq!(t.trade_state, TradeState::Success, "the payment as it was when paid");
}

#[tokio::test]
async fn a_rotation_announces_a_new_certificate_signs_with_it_then_retires_the_old_one() {
    let c = client(V3Signer::Certificate).await;
    let (status, rotated) = c.env.post_json("/simulator/v3/rotate", json!({})).await;
    assert_eq!(status, 200, "{rotated}");
    let new_serial = rotated["serial_no"].as_str().unwrap().to_owned();
    assert_ne!(new_serial, c.platform_serial);
    // Answers are signed with the new certificate: a client that knows only the old one
    // does not verify them until it downloads the list again.
    let a = c.send_at(&calls::certificates(), now()).await;
    assert_eq!(a.header("wechatpay-serial"), new_serial);
    assert!(matches!(
        c.verifier.verify(&signature_headers(&a.headers), &a.body, now()),
        Err(VerifyError::UnknownSerial(_))
    ));
    let listed = platform_certificates(&a.body, TEST_APIV3_KEY.as_bytes()).unwrap();
    let serials: Vec<&str> = listed.iter().map(|p| p.serial_no.as_str()).collect();
    assert_eq!(serials, [c.platform_serial.as_str(), new_serial.as_str()]);
    // The old one's listed expiry was moved up to a day from now.
    let old_expiry = wxpay_protocol::v3::calls::parse_rfc3339(&listed[0].expire_time).unwrap();
    assert!((old_expiry - now() - 86_400).abs() < 60, "{}", listed[0].expire_time);
    let refreshed = c.verifier.clone().with_certificate(&listed[1].certificate);
    refreshed
        .verify(&signature_headers(&a.headers), &a.body, now())
        .unwrap();
    let (status, retired) = c.env.post_json("/simulator/v3/retire", json!({})).await;
    assert_eq!(
        (status, retired["retired"][0].as_str()),
        (200, Some(c.platform_serial.as_str()))
    );
    let a = c.send_at(&calls::certificates(), now()).await;
    assert_eq!(
        platform_certificates(&a.body, TEST_APIV3_KEY.as_bytes()).unwrap().len(),
        1
    );
}
