//! Heap allocations per operation, counted with dhat's allocator (deterministic, unlike
//! timings). Run with `cargo bench -p wxpay-protocol --bench allocations`.

use wxpay_protocol::v2::{self, PaymentNotification};
use wxpay_protocol::{SignType, xml};

mod fixtures;

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

fn count<R>(label: &str, n: u64, mut f: impl FnMut() -> R) -> f64 {
    // Warm up once so that lazily initialised state is not counted.
    drop(f());
    let before = dhat::HeapStats::get();
    for _ in 0..n {
        drop(std::hint::black_box(f()));
    }
    let after = dhat::HeapStats::get();
    let blocks = (after.total_blocks - before.total_blocks) as f64 / n as f64;
    let bytes = (after.total_bytes - before.total_bytes) as f64 / n as f64;
    println!("{label:<48} {blocks:>6.2} allocations/op {bytes:>8.0} bytes/op");
    blocks
}

fn main() {
    let _profiler = dhat::Profiler::builder().testing().build();
    let n = 10_000;
    for t in [SignType::Md5, SignType::HmacSha256] {
        let m = fixtures::merchant(t);
        let fields = fixtures::order_fields(t);
        let order = fixtures::order();
        let nonce = fixtures::nonce();
        let body = fixtures::notification(t);
        let name = t.as_str();
        let sign = count(&format!("sign 12 fields ({name})"), n, || fields.signature(&m.key, t));
        assert_eq!(sign, 0.0, "signing allocates nothing");
        count(&format!("unifiedorder signed XML ({name})"), n, || {
            v2::encode(&order, &m, &nonce).unwrap()
        });
        count(&format!("notification read only ({name})"), n, || {
            xml::read(body.as_bytes()).unwrap()
        });
        let notify = count(&format!("notification parse + verify, typed ({name})"), n, || {
            PaymentNotification::parse(body.as_bytes(), &m).unwrap()
        });
        let verify_only = count(&format!("notification read + verify, untyped ({name})"), n, || {
            let f = xml::read(body.as_bytes()).unwrap();
            f.verify(&m.key, t).unwrap();
        });
        assert!(
            verify_only <= 1.0,
            "reading and verifying a notification allocates at most its field table"
        );
        assert!(notify < 20.0);
    }
}
