//! What each request of a run is, how an order request is built, and which answer counts as a
//! success: shared by the load engine and the workloads that set runs up.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;

/// What each request is.
pub(crate) enum Workload {
    /// A freshly signed `unifiedorder` to a simulator.
    SimUnifiedOrder,
    /// `POST /v1/orders` to the wxpay gateway, a new order each time.
    GatewayOrders { token: String },
    /// `POST /orders` to the peer service (wechatpy + FastAPI), a new order each time.
    PeerOrders,
    /// Pre-signed payment notifications, each sent once: connection c sends bodies c, c + C,
    /// c + 2C, … and stops when its share is sent. APIv3's carry their signature in headers
    /// (`headers[i]`, empty for APIv2) and are acknowledged with 204.
    Notify {
        path: &'static str,
        bodies: Arc<Vec<Bytes>>,
        headers: Arc<Vec<Vec<(&'static str, String)>>>,
        content_type: &'static str,
        acknowledged: u16,
        connections: usize,
    },
}

/// A new order `no`, as the gateway (`POST /v1/orders`, bearer token) or the peer
/// (`POST /orders`) takes it.
pub(crate) fn order_request(
    workload: &Workload,
    authority: &str,
    no: &str,
) -> Result<hyper::Request<Full<Bytes>>, String> {
    let (path, body, token) = match workload {
        Workload::GatewayOrders { token } => ("/v1/orders", order_json("amount_fen", no, ORDER_FEE), Some(token)),
        Workload::PeerOrders => ("/orders", order_json("total_fee", no, ORDER_FEE), None),
        _ => return Err("not an order workload".into()),
    };
    let mut req = hyper::Request::post(path)
        .header(hyper::header::HOST, authority)
        .header(hyper::header::CONTENT_TYPE, "application/json");
    if let Some(t) = token {
        req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {t}"));
    }
    req.body(Full::new(Bytes::from(body))).map_err(|e| e.to_string())
}

/// The amount of every order of a gateway run: the peer's load scripts use 88.00 yuan.
pub(crate) const ORDER_FEE: u64 = 8800;

/// The body of a new order; the gateway calls the amount `amount_fen`, the peer `total_fee`.
fn order_json(amount_field: &str, out_trade_no: &str, fee: u64) -> String {
    serde_json::json!({
        "out_trade_no": out_trade_no,
        "openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o",
        amount_field: fee,
        "description": "微信小程序商城-精品咖啡豆 250g×2",
    })
    .to_string()
}

/// Whether an answer is the success of its workload.
pub(crate) fn answer_ok(workload: &Workload, status: u16, body: &[u8]) -> bool {
    let has = |needle: &[u8]| body.windows(needle.len()).any(|w| w == needle);
    match workload {
        // A byte search keeps the generator light; the simulator's tests check answers properly.
        Workload::SimUnifiedOrder => status == 200 && has(b"<result_code><![CDATA[SUCCESS]]></result_code>"),
        Workload::GatewayOrders { .. } => status == 201 && has(b"\"paySign\""),
        Workload::PeerOrders => status == 200 && has(b"\"paySign\""),
        Workload::Notify { acknowledged: 204, .. } => status == 204,
        Workload::Notify { .. } => status == 200 && has(b"SUCCESS"),
    }
}
