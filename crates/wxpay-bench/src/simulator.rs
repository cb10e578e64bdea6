//! `wxpay-bench simulator`: `unifiedorder` against a WeChat Pay simulator, signed as its
//! built-in test merchant.

use wxpay_protocol::{ApiKey, AppId, MchId, Merchant, SignType};

use crate::load::{Spec, authority_of, run_load};
use crate::workload::Workload;

/// Options of `wxpay-bench simulator`.
#[derive(Debug, clap::Args)]
pub(crate) struct SimArgs {
    /// The simulator's base URL (plain http).
    #[arg(long, default_value = "http://127.0.0.1:8090")]
    target: String,
    /// Concurrent connections.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Seconds measured (after the warm-up).
    #[arg(long, default_value_t = 20)]
    duration: u64,
    /// Seconds of warm-up, not measured.
    #[arg(long, default_value_t = 3)]
    warmup: u64,
    /// Instead of a timed run, create this many orders as fast as possible, then report.
    #[arg(long)]
    orders: Option<u64>,
    /// The simulator's pid, to report its resident memory.
    #[arg(long)]
    pid: Option<u32>,
    /// The orders' notify_url (default: the simulator's own sink, which answers SUCCESS).
    #[arg(long)]
    notify_url: Option<String>,
    /// Sign with HMAC-SHA256 instead of MD5.
    #[arg(long)]
    hmac: bool,
    /// Worker threads of the load generator.
    #[arg(long, default_value_t = 1)]
    pub(crate) threads: usize,
    /// Offered load in requests per second, spread over the connections (open loop, like
    /// wrk2). Latency then counts from when each request was due, so that a slow answer
    /// that delays the next request is not hidden. Without it, each connection sends as
    /// fast as answers come (closed loop, like wrk): the maximum throughput.
    #[arg(long)]
    rate: Option<f64>,
}

/// The simulator's built-in test merchant, signing with HMAC-SHA256 when `hmac` and MD5
/// otherwise.
pub(crate) fn test_merchant(hmac: bool) -> Result<Merchant, String> {
    Ok(Merchant {
        appid: AppId::new(wxpay_simulator::TEST_APPID).map_err(|e| e.to_string())?,
        mch_id: MchId::new(wxpay_simulator::TEST_MCH_ID).map_err(|e| e.to_string())?,
        key: ApiKey::new(wxpay_simulator::TEST_API_KEY).map_err(|e| e.to_string())?,
        sign_type: if hmac { SignType::HmacSha256 } else { SignType::Md5 },
    })
}

/// `wxpay-bench simulator`: one run of `unifiedorder` against the simulator.
pub(crate) async fn simulator(args: SimArgs) -> Result<(), String> {
    let authority = authority_of(&args.target)?;
    run_load(Spec {
        label: "unifiedorder".into(),
        notify_url: args
            .notify_url
            .clone()
            .unwrap_or_else(|| format!("http://{authority}/simulator/sink")),
        authority,
        workload: Workload::SimUnifiedOrder,
        merchant: test_merchant(args.hmac)?,
        connections: args.connections,
        warmup: args.warmup,
        duration: args.duration,
        budget: args.orders,
        rate: args.rate,
        pid: args.pid,
        strict: true,
    })
    .await
    .map(|_| ())
}
