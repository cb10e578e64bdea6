//! With TLS, a refund needs the merchant's client certificate, as WeChat Pay requires.

use wxpay_protocol::v2::{self, OrderRef, Refund, V2Call};
use wxpay_protocol::{Error, Fen, OutRefundNo, OutTradeNo};
use wxpay_simulator::{SimConfig, Simulator, TEST_MCH_ID, TlsConfig};

use crate::support::{merchant, nonce};

#[tokio::test]
async fn a_refund_over_tls_needs_the_merchant_certificate() {
    let dir = std::env::temp_dir().join(format!("wxpay-sim-tls-{}-{}", std::process::id(), line!()));
    let mut config = SimConfig::new();
    config.tls = Some(TlsConfig { dir: dir.clone() });
    config.time_scale = 1000.0;
    let sim = Simulator::new(config).unwrap();
    let files = sim.tls_files().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let handle = sim.serve(listener).await.unwrap();
    assert!(handle.base_url().starts_with("https://"));
    let ca = reqwest::Certificate::from_pem(&std::fs::read(&files.ca_cert).unwrap()).unwrap();
    let (cert, key) = &files.client[TEST_MCH_ID];
    let mut pem = std::fs::read(cert).unwrap();
    pem.extend(std::fs::read(key).unwrap());
    let identity = reqwest::Identity::from_pem(&pem).unwrap();
    let plain = reqwest::Client::builder()
        .add_root_certificate(ca.clone())
        .build()
        .unwrap();
    let with_cert = reqwest::Client::builder()
        .add_root_certificate(ca)
        .identity(identity)
        .build()
        .unwrap();
    let m = merchant(wxpay_protocol::SignType::Md5);
    let post = |client: &reqwest::Client, path: &'static str, body: String| {
        let req = client.post(format!("{}{path}", handle.base_url())).body(body);
        async move { req.send().await.unwrap().bytes().await.unwrap() }
    };
    // Ordering and paying need no certificate. The notification goes where the test listened
    // and closed its listener: it is not what this test is about.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let notify_url = format!("http://{}/n", closed.local_addr().unwrap());
    drop(closed);
    let order = v2::UnifiedOrder::jsapi(
        "t",
        OutTradeNo::new("no-tls-1").unwrap(),
        Fen::new(10).unwrap(),
        "127.0.0.1",
        &notify_url,
        wxpay_simulator::openid(m.appid.as_str(), "user-1"),
    );
    let answer = post(
        &plain,
        v2::UnifiedOrder::PATH,
        v2::encode(&order, &m, &nonce()).unwrap(),
    )
    .await;
    v2::UnifiedOrder::decode(&answer, &m).unwrap();
    let paid = plain
        .post(format!("{}/simulator/pay", handle.base_url()))
        .json(&serde_json::json!({"out_trade_no": "no-tls-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(paid.status(), 200);
    let refund = Refund::new(
        OrderRef::OutTradeNo(OutTradeNo::new("no-tls-1").unwrap()),
        OutRefundNo::new("no-tr-1").unwrap(),
        Fen::new(10).unwrap(),
        Fen::new(10).unwrap(),
    );
    let body = v2::encode(&refund, &m, &nonce()).unwrap();
    // Without the certificate: refused.
    let answer = post(&plain, Refund::PATH, body.clone()).await;
    assert!(
        matches!(Refund::decode(&answer, &m), Err(Error::ReturnFail { .. })),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    // With it: accepted.
    let answer = post(&with_cert, Refund::PATH, body).await;
    assert_eq!(Refund::decode(&answer, &m).unwrap().refund_fee.get(), 10);
    handle.shutdown().await;
    // The material is kept and read back on the next start.
    let again = Simulator::new({
        let mut c = SimConfig::new();
        c.tls = Some(TlsConfig { dir: dir.clone() });
        c
    })
    .unwrap();
    assert_eq!(
        std::fs::read(&again.tls_files().unwrap().ca_cert).unwrap(),
        std::fs::read(&files.ca_cert).unwrap()
    );
    std::fs::remove_dir_all(dir).ok();
}
