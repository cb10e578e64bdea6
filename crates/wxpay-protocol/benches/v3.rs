//! APIv3 hot paths, with the project's own vectors (`testdata/vectors/v3.json` and its
//! test-only keys): the RSA-2048 signature every request and `paySign` costs, the
//! verification and decryption every notification costs, and the whole notification read.
//! `scripts/bench-protocol-v3.sh` runs this beside `openssl speed rsa2048` and prints the
//! ratios.

use std::hint::black_box;
use std::path::PathBuf;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde_json::Value;
use wxpay_protocol::v3::auth::{SignatureHeaders, authorization};
use wxpay_protocol::v3::notify::Envelope;
use wxpay_protocol::v3::{Certificate, MerchantKey, Verifier, aead};
use wxpay_protocol::{MchId, Nonce};

fn vectors() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata/vectors")
}

fn read(name: &str) -> String {
    std::fs::read_to_string(vectors().join(name)).unwrap()
}

fn text(v: &Value) -> &str {
    v.as_str().unwrap()
}

fn v3(c: &mut Criterion) {
    let v: Value = serde_json::from_str(&read("v3.json")).unwrap();
    let key = MerchantKey::from_pem(
        &read("keys/merchant_private_key.pem"),
        text(&v["merchant"]["serial_no"]),
    )
    .unwrap();
    let request = &v["request_signatures"][0];
    let message = text(&request["message"]).to_owned();
    let mchid = MchId::new(text(&v["merchant"]["mchid"])).unwrap();
    let nonce = Nonce::new(text(&request["nonce"])).unwrap();
    let timestamp: i64 = text(&request["timestamp"]).parse().unwrap();
    let (method, url, body) = (text(&request["method"]), text(&request["url"]), text(&request["body"]));

    let n = &v["notification"];
    let h = &n["headers"];
    let headers = SignatureHeaders {
        timestamp: text(&h["Wechatpay-Timestamp"]),
        nonce: text(&h["Wechatpay-Nonce"]),
        signature: text(&h["Wechatpay-Signature"]),
        serial: text(&h["Wechatpay-Serial"]),
    };
    let now: i64 = headers.timestamp.parse().unwrap();
    let notification = text(&n["body"]).as_bytes().to_vec();
    let verifier = Verifier::new().with_certificate(&Certificate::from_pem(&read("keys/platform_cert.pem")).unwrap());
    let apiv3_key = text(&v["apiv3_key"]).as_bytes().to_vec();
    let envelope = Envelope::read(&notification).unwrap();
    // The checks the benchmark relies on: every path succeeds on these inputs.
    verifier.verify(&headers, &notification, now).unwrap();
    envelope.event(&apiv3_key).unwrap();

    let mut g = c.benchmark_group("v3");
    g.throughput(Throughput::Elements(1));
    g.bench_function("rsa_sign", |b| {
        b.iter(|| key.sign(black_box(message.as_bytes())).unwrap())
    });
    g.bench_function("authorization", |b| {
        b.iter(|| authorization(&mchid, &key, method, url, timestamp, &nonce, black_box(body)).unwrap())
    });
    g.bench_function("rsa_verify", |b| {
        b.iter(|| verifier.verify(&headers, black_box(&notification), now).unwrap())
    });
    let r = &envelope.resource;
    g.bench_function("aes_gcm_decrypt", |b| {
        b.iter(|| aead::decrypt(&apiv3_key, &r.nonce, &r.associated_data, black_box(&r.ciphertext)).unwrap())
    });
    g.bench_function("notify_verify_decrypt", |b| {
        b.iter(|| {
            verifier.verify(&headers, black_box(&notification), now).unwrap();
            Envelope::read(&notification).unwrap().event(&apiv3_key).unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, v3);
criterion_main!(benches);
