//! Prometheus metrics of the simulator, as plain atomic counters owned by the instance (not
//! a process-wide recorder: the demo runs the simulator and the gateway in one process, and
//! each must report only its own figures).

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

use crate::Simulator;
use crate::faults::FaultKind;

/// The APIs counted, in this order.
pub(crate) const APIS: [&str; 15] = [
    "unifiedorder",
    "orderquery",
    "closeorder",
    "refund",
    "refundquery",
    "downloadbill",
    "jscode2session",
    "v3_jsapi",
    "v3_query",
    "v3_close",
    "v3_refund",
    "v3_refund_query",
    "v3_certificates",
    "v3_tradebill",
    "v3_billdownload",
];
/// How a call ended.
pub(crate) const RESULTS: [&str; 3] = ["success", "business_error", "protocol_error"];
const NOTIFY_KINDS: [&str; 2] = ["payment", "refund"];
const NOTIFY_OUTCOMES: [&str; 3] = ["acknowledged", "refused", "unreachable"];
const FAULTS: [FaultKind; 17] = [
    FaultKind::SystemError,
    FaultKind::FrequencyLimited,
    FaultKind::ErrorCode,
    FaultKind::Delay,
    FaultKind::LoseAnswer,
    FaultKind::LateAnswer,
    FaultKind::BadAnswerSignature,
    FaultKind::BillGzipError,
    FaultKind::NotifyDuplicate,
    FaultKind::NotifyReorder,
    FaultKind::NotifyBadSignature,
    FaultKind::NotifyWrongAmount,
    FaultKind::NotifyResultFail,
    FaultKind::NotifyProbe,
    FaultKind::NotifyStaleTimestamp,
    FaultKind::NotifyUnknownSerial,
    FaultKind::NotifyTamperedTag,
];

#[derive(Default)]
pub(crate) struct Metrics {
    requests: [[AtomicU64; 3]; APIS.len()],
    notifications: [[AtomicU64; 3]; 2],
    faults: [AtomicU64; FAULTS.len()],
}

impl Metrics {
    pub(crate) fn request(&self, api: usize, result: usize) {
        self.requests[api][result].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn notification(&self, refund: bool, outcome: usize) {
        self.notifications[usize::from(refund)][outcome].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn fault(&self, kind: FaultKind) {
        if let Some(i) = FAULTS.iter().position(|k| *k == kind) {
            self.faults[i].fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn render(sim: &Simulator) -> String {
    let inner = &sim.inner;
    let m = &inner.metrics;
    let mut out = String::with_capacity(4096);
    out.push_str("# HELP wxpay_sim_requests_total WeChat Pay API calls by API and result.\n# TYPE wxpay_sim_requests_total counter\n");
    for (a, api) in APIS.iter().enumerate() {
        for (r, result) in RESULTS.iter().enumerate() {
            let v = m.requests[a][r].load(Ordering::Relaxed);
            let _ = writeln!(out, "wxpay_sim_requests_total{{api=\"{api}\",result=\"{result}\"}} {v}");
        }
    }
    out.push_str("# HELP wxpay_sim_orders Orders held, by state.\n# TYPE wxpay_sim_orders gauge\n");
    for (state, n) in inner.store.state_counts() {
        let _ = writeln!(out, "wxpay_sim_orders{{state=\"{}\"}} {n}", state.name());
    }
    out.push_str("# HELP wxpay_sim_orders_evicted_total Finished orders forgotten to bound memory.\n# TYPE wxpay_sim_orders_evicted_total counter\n");
    let _ = writeln!(out, "wxpay_sim_orders_evicted_total {}", inner.store.evicted());
    out.push_str("# HELP wxpay_sim_notifications_total Notification attempts by kind and outcome.\n# TYPE wxpay_sim_notifications_total counter\n");
    for (k, kind) in NOTIFY_KINDS.iter().enumerate() {
        for (o, outcome) in NOTIFY_OUTCOMES.iter().enumerate() {
            let v = m.notifications[k][o].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "wxpay_sim_notifications_total{{kind=\"{kind}\",outcome=\"{outcome}\"}} {v}"
            );
        }
    }
    out.push_str("# HELP wxpay_sim_notifications_pending Notifications waiting for their next attempt.\n# TYPE wxpay_sim_notifications_pending gauge\n");
    let _ = writeln!(out, "wxpay_sim_notifications_pending {}", inner.notifier.pending());
    out.push_str("# HELP wxpay_sim_faults_injected_total Faults that fired, by kind.\n# TYPE wxpay_sim_faults_injected_total counter\n");
    for (i, kind) in FAULTS.iter().enumerate() {
        let _ = writeln!(
            out,
            "wxpay_sim_faults_injected_total{{kind=\"{}\"}} {}",
            kind.name(),
            m.faults[i].load(Ordering::Relaxed)
        );
    }
    out
}

async fn metrics(State(sim): State<Simulator>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        render(&sim),
    )
}

pub(crate) fn router() -> Router<Simulator> {
    router_at("/metrics")
}

pub(crate) fn router_at(path: &str) -> Router<Simulator> {
    Router::new().route(path, get(metrics))
}
