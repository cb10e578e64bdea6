//! APIv2 hot paths, each beside its physical floor (the hash of the same bytes with the same
//! crates). `scripts/bench-protocol.sh` runs this and prints ops/s and the ratios.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use wxpay_protocol::v2::{self, PaymentNotification};
use wxpay_protocol::{SignType, sign, xml};

mod fixtures;

fn sign_vs_hash(c: &mut Criterion) {
    for t in [SignType::Md5, SignType::HmacSha256] {
        let m = fixtures::merchant(t);
        let fields = fixtures::order_fields(t);
        let temp = format!("{}&key={}", fields.string_a(), m.key.expose());
        let name = t.as_str();
        let mut g = c.benchmark_group(format!("v2/{name}"));
        g.throughput(Throughput::Elements(1));
        g.bench_function("hash_only", |b| {
            b.iter(|| sign::sign_string_with(black_box(temp.as_bytes()), &m.key, t))
        });
        g.bench_function("sign_12_fields", |b| b.iter(|| black_box(&fields).signature(&m.key, t)));
        g.finish();
    }
}

fn request_build(c: &mut Criterion) {
    let mut g = c.benchmark_group("v2/request");
    g.throughput(Throughput::Elements(1));
    for t in [SignType::Md5, SignType::HmacSha256] {
        let m = fixtures::merchant(t);
        let order = fixtures::order();
        let nonce = fixtures::nonce();
        g.bench_function(format!("unifiedorder_signed_xml_{}", t.as_str()), |b| {
            b.iter(|| v2::encode(black_box(&order), &m, &nonce).unwrap())
        });
    }
    g.finish();
}

fn notification(c: &mut Criterion) {
    let mut g = c.benchmark_group("v2/notify");
    g.throughput(Throughput::Elements(1));
    for t in [SignType::Md5, SignType::HmacSha256] {
        let m = fixtures::merchant(t);
        let body = fixtures::notification(t);
        let fields = xml::read(body.as_bytes()).unwrap();
        let temp = format!("{}&key={}", fields.string_a(), m.key.expose());
        g.bench_function(format!("hash_only_{}", t.as_str()), |b| {
            b.iter(|| sign::sign_string_with(black_box(temp.as_bytes()), &m.key, t))
        });
        g.bench_function(format!("read_only_{}", t.as_str()), |b| {
            b.iter(|| xml::read(black_box(body.as_bytes())).unwrap())
        });
        g.bench_function(format!("parse_verify_{}", t.as_str()), |b| {
            b.iter(|| PaymentNotification::parse(black_box(body.as_bytes()), &m).unwrap())
        });
    }
    g.finish();
}

criterion_group!(benches, sign_vs_hash, request_build, notification);
criterion_main!(benches);
