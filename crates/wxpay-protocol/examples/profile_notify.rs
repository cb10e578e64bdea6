//! Parses and verifies one notification many times, for profilers:
//! `cargo build --release -p wxpay-protocol --example profile_notify` then run it under
//! `perf record` or `valgrind --tool=callgrind`.

// The fixtures are shared with the benchmarks; this driver uses only the notification.
#[allow(dead_code)]
#[path = "../benches/fixtures/mod.rs"]
mod fixtures;

fn main() {
    let n: u64 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(200_000);
    let t = wxpay_protocol::SignType::Md5;
    let m = fixtures::merchant(t);
    let body = fixtures::notification(t);
    let mut paid = 0u64;
    for _ in 0..n {
        let p = wxpay_protocol::v2::PaymentNotification::parse(std::hint::black_box(body.as_bytes()), &m).unwrap();
        paid += u64::from(matches!(p.outcome, wxpay_protocol::v2::PaymentOutcome::Paid { .. }));
    }
    println!("{paid}");
}
