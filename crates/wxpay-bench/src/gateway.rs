//! `wxpay-bench gateway`: order creation and first-delivery payment notifications against the
//! wxpay gateway or the peer service, with the orders seeded, the notifications signed and the
//! junk traffic sent beside them.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use wxpay_protocol::{ApiKey, AppId, MchId, Merchant, SignType};

use crate::load::{Spec, authority_of, connect, run_id, run_load};
use crate::simulator::test_merchant;
use crate::workload::{ORDER_FEE, Workload, answer_ok, order_request};

/// Signed payment notifications for orders `prefix0 … prefix{count-1}` of `fee` fen, with
/// the fields WeChat Pay sends (23 of them, as the peer's load scripts send).
fn notifications(merchant: &Merchant, prefix: &str, count: usize, fee: u64) -> Result<Vec<Bytes>, String> {
    let time_end = wxpay_protocol::BeijingTime::from_unix(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0),
    )
    .to_compact();
    let fee = fee.to_string();
    (0..count)
        .map(|i| {
            let no = format!("{prefix}{i}");
            let nonce = format!("{:032x}", (i as u128).wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let tx = format!("42000{i:023}");
            let mut f = wxpay_protocol::Fields::new();
            for (k, v) in [
                ("appid", merchant.appid.as_str()),
                ("attach", "门店: 深圳南山店"),
                ("bank_type", "CMC"),
                ("cash_fee", fee.as_str()),
                ("coupon_count", "0"),
                ("coupon_fee", "0"),
                ("device_info", "WEB"),
                ("fee_type", "CNY"),
                ("is_subscribe", "N"),
                ("mch_id", merchant.mch_id.as_str()),
                ("nonce_str", nonce.as_str()),
                ("openid", "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"),
                ("out_trade_no", no.as_str()),
                ("result_code", "SUCCESS"),
                ("return_code", "SUCCESS"),
                ("return_msg", "OK"),
                ("settlement_total_fee", fee.as_str()),
                ("sign_type", "MD5"),
                ("time_end", time_end.as_str()),
                ("total_fee", fee.as_str()),
                ("trade_type", "JSAPI"),
                ("transaction_id", tx.as_str()),
            ] {
                f.insert(k, v.to_owned()).map_err(|e| e.to_string())?;
            }
            f.sign(&merchant.key, SignType::Md5);
            f.to_xml().map(Bytes::from).map_err(|e| e.to_string())
        })
        .collect()
}

/// APIv3 payment notifications for orders `prefix0 … prefix{count-1}` of `fee` fen, as the
/// simulator sends them: the transaction encrypted with the test merchant's APIv3 key, the
/// envelope signed with WeChat Pay's public-key private half from `keys`.
type V3Notices = (Vec<Bytes>, Vec<Vec<(&'static str, String)>>);

fn v3_notifications(keys: &std::path::Path, prefix: &str, count: usize, fee: u64) -> Result<V3Notices, String> {
    use wxpay_protocol::v3::SignedHeaders;
    use wxpay_protocol::v3::calls::rfc3339_beijing;
    use wxpay_protocol::v3::notify::{Envelope, Resource};
    let read = |name: &str| {
        std::fs::read_to_string(keys.join(name)).map_err(|e| format!("{}: {e}", keys.join(name).display()))
    };
    let id = read("pub_key_id")?.trim().to_owned();
    let key =
        wxpay_protocol::v3::MerchantKey::from_pem(&read("pub_key_private.pem")?, &id).map_err(|e| e.to_string())?;
    let apiv3_key = wxpay_simulator::TEST_APIV3_KEY.as_bytes();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let (mut bodies, mut headers) = (Vec::with_capacity(count), Vec::with_capacity(count));
    for i in 0..count {
        let resource = serde_json::json!({
            "appid": wxpay_simulator::TEST_APPID, "mchid": wxpay_simulator::TEST_MCH_ID,
            "out_trade_no": format!("{prefix}{i}"), "transaction_id": format!("42000{i:023}"),
            "trade_type": "JSAPI", "trade_state": "SUCCESS", "trade_state_desc": "支付成功",
            "bank_type": "OTHERS", "attach": "门店: 深圳南山店", "success_time": rfc3339_beijing(now),
            "payer": {"openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"},
            "amount": {"total": fee, "payer_total": fee, "currency": "CNY", "payer_currency": "CNY"},
        });
        let nonce = format!("{:012}", i % 1_000_000_000_000);
        let sealed = Resource::seal(apiv3_key, "transaction", &nonce, resource.to_string().as_bytes())
            .map_err(|e| e.to_string())?;
        let body = Envelope::new(
            &format!("EV-{prefix}{i}"),
            &rfc3339_beijing(now),
            "TRANSACTION.SUCCESS",
            "支付成功",
            sealed,
        )
        .to_json();
        let sign_nonce = format!("{:032x}", (i as u128).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let signed = SignedHeaders::sign(&key, &id, now, &sign_nonce, body.as_bytes()).map_err(|e| e.to_string())?;
        headers.push(signed.headers().into());
        bodies.push(Bytes::from(body));
    }
    Ok((bodies, headers))
}

/// Which service is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Api {
    /// The wxpay gateway: `POST /v1/orders` (bearer token), `POST /notify/v2/pay`.
    Wxpay,
    /// The peer service of `../shared/bench` (wechatpy + FastAPI): `POST /orders`, `POST /notify`.
    Peer,
}

/// Options of `wxpay-bench gateway`.
#[derive(Debug, clap::Args)]
pub(crate) struct GatewayArgs {
    /// The service's base URL (plain http).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    target: String,
    /// Which API the service speaks.
    #[arg(long, value_enum, default_value_t = Api::Wxpay)]
    api: Api,
    /// The bearer token (wxpay).
    #[arg(long, default_value = "bench-token-0123456789abcdef")]
    token: String,
    /// Concurrent connections.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Seconds of order creation measured (after the warm-up).
    #[arg(long, default_value_t = 15)]
    duration: u64,
    /// Seconds of warm-up, not measured.
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// Orders created (not measured) to receive one first-delivery notification each.
    #[arg(long, default_value_t = 60_000)]
    pool: usize,
    /// The service's pid, to report its resident memory.
    #[arg(long)]
    pid: Option<u32>,
    /// Offered order creations per second (open loop, latency counted from when each
    /// request was due); without it, as fast as answers come.
    #[arg(long)]
    rate: Option<f64>,
    /// Offered notifications per second (open loop); without it, as fast as answers come.
    #[arg(long)]
    notify_rate: Option<f64>,
    /// Only this part.
    #[arg(long, value_enum)]
    only: Option<Part>,
    /// During the notifications, this many more connections send junk notifications (not
    /// XML, an unknown merchant, a bad signature; 4 KB each) as fast as they are answered:
    /// what rejected traffic does to the genuine notifications beside it.
    #[arg(long, default_value_t = 0)]
    junk_connections: usize,
    /// Worker threads of the load generator.
    #[arg(long, default_value_t = 1)]
    pub(crate) threads: usize,
    /// Instead of sending the notifications, write them to this file, one body per line, for
    /// a third-party load tool (`wrk`); the orders they pay are created first, as for a run.
    #[arg(long)]
    write_notifications: Option<std::path::PathBuf>,
    /// The simulator's keys folder: the default merchant is on APIv3, and the notifications
    /// are APIv3's (to `/notify/v3/default`), signed with the WeChat Pay public key's private
    /// half the simulator writes there.
    #[arg(long, value_name = "DIR")]
    v3_keys: Option<std::path::PathBuf>,
    /// The merchant the peer service is configured with (its appid, mch_id, API key).
    #[arg(long, default_value = "wx2421b1c4370ec43b,10000100,192006250b4c09247ec02edce69f6a2d")]
    peer_merchant: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Part {
    /// Order creation.
    Orders,
    /// First-delivery payment notifications.
    Notify,
}

/// `wxpay-bench gateway`: order creation, then first-delivery payment notifications for
/// orders seeded for them (or only one of the two), then a summary.
pub(crate) async fn gateway(args: GatewayArgs) -> Result<(), String> {
    if args.write_notifications.is_some() && args.v3_keys.is_some() {
        return Err("--write-notifications writes APIv2 bodies only (APIv3's signatures are headers)".into());
    }
    let authority = authority_of(&args.target)?;
    let merchant = match args.api {
        Api::Wxpay => test_merchant(false)?,
        Api::Peer => {
            let parts: Vec<&str> = args.peer_merchant.split(',').collect();
            let [appid, mch_id, key] = parts[..] else {
                return Err("--peer-merchant is APPID,MCH_ID,KEY".into());
            };
            Merchant {
                appid: AppId::new(appid).map_err(|e| e.to_string())?,
                mch_id: MchId::new(mch_id).map_err(|e| e.to_string())?,
                key: ApiKey::new(key).map_err(|e| e.to_string())?,
                sign_type: SignType::Md5,
            }
        }
    };
    let name = match args.api {
        Api::Wxpay => "wxpay",
        Api::Peer => "peer",
    };
    let orders_workload = || match args.api {
        Api::Wxpay => Workload::GatewayOrders {
            token: args.token.clone(),
        },
        Api::Peer => Workload::PeerOrders,
    };
    let spec = |label: String, workload: Workload, rate: Option<f64>, connections: usize| Spec {
        label,
        authority: authority.clone(),
        workload,
        merchant: merchant.clone(),
        notify_url: String::new(),
        connections,
        warmup: args.warmup,
        duration: args.duration,
        budget: None,
        rate,
        pid: args.pid,
        strict: false,
    };
    let mut summary = serde_json::json!({"service": name});
    if args.only != Some(Part::Notify) {
        let r = run_load(spec(
            format!("{name} create order"),
            orders_workload(),
            args.rate,
            args.connections,
        ))
        .await?;
        summary["orders"] = r.json.clone();
        say!(
            "SUMMARY {name} orders: {:.0}/s p50 {:.2} ms p99 {:.2} ms CPU {} peak RSS {}",
            r.rps,
            r.p50,
            r.p99,
            r.cpu_us.map_or("-".to_owned(), |c| format!("{c:.0} µs/req")),
            r.rss_mib.map_or("-".to_owned(), |m| format!("{m:.1} MiB"))
        );
    }
    if args.only != Some(Part::Orders) {
        // Seed the orders the notifications pay; their numbers are known: the seeding
        // connections number them from a shared counter.
        let prefix = format!("N{}x", run_id());
        let seeded = seed(&authority, &args, &prefix, orders_workload()).await?;
        let (bodies, headers) = match &args.v3_keys {
            Some(dir) => v3_notifications(dir, &prefix, seeded, ORDER_FEE)?,
            None => (notifications(&merchant, &prefix, seeded, ORDER_FEE)?, Vec::new()),
        };
        let bodies = Arc::new(bodies);
        if let Some(file) = &args.write_notifications {
            let mut out = Vec::with_capacity(bodies.iter().map(|b| b.len() + 1).sum());
            for b in bodies.iter() {
                // One body per line: the writer puts no line break inside a notification.
                if b.contains(&b'\n') {
                    return Err("a notification body holds a line break".into());
                }
                out.extend_from_slice(b);
                out.push(b'\n');
            }
            std::fs::write(file, out).map_err(|e| format!("{}: {e}", file.display()))?;
            say!("wrote {} notifications to {}", bodies.len(), file.display());
            return Ok(());
        }
        let v3 = args.v3_keys.is_some();
        let path = match args.api {
            Api::Wxpay if v3 => "/notify/v3/default",
            Api::Wxpay => "/notify/v2/pay",
            Api::Peer => "/notify",
        };
        let workload = Workload::Notify {
            path,
            bodies,
            headers: Arc::new(headers),
            content_type: if v3 { "application/json" } else { "text/xml" },
            acknowledged: if v3 { 204 } else { 200 },
            connections: args.connections,
        };
        let stop_junk = Arc::new(AtomicBool::new(false));
        let junk: Vec<_> = (0..args.junk_connections)
            .map(|_| tokio::spawn(junk_flood(authority.clone(), path, merchant.clone(), stop_junk.clone())))
            .collect();
        let junk_started = Instant::now();
        let r = run_load(spec(
            format!("{name} payment notification"),
            workload,
            args.notify_rate,
            args.connections,
        ))
        .await?;
        stop_junk.store(true, Ordering::Relaxed);
        let mut junk_sent = 0;
        for j in junk {
            junk_sent += j.await.map_err(|e| e.to_string())??;
        }
        if args.junk_connections > 0 {
            let secs = junk_started.elapsed().as_secs_f64();
            say!(
                "junk beside it: {junk_sent} rejected notifications from {} connections ({:.0}/s)",
                args.junk_connections,
                junk_sent as f64 / secs
            );
            summary["junk"] = serde_json::json!({"sent": junk_sent, "per_second": junk_sent as f64 / secs});
        }
        summary["notify"] = r.json.clone();
        say!(
            "SUMMARY {name} notifications: {:.0}/s p50 {:.2} ms p99 {:.2} ms ({} first deliveries) CPU {} peak RSS {}",
            r.rps,
            r.p50,
            r.p99,
            r.requests,
            r.cpu_us.map_or("-".to_owned(), |c| format!("{c:.0} µs/req")),
            r.rss_mib.map_or("-".to_owned(), |m| format!("{m:.1} MiB"))
        );
    }
    say!("SUMMARY-JSON {summary}");
    Ok(())
}

/// Creates `args.pool` orders numbered `prefix0…`, as fast as the service allows (not
/// measured), and returns how many were created.
async fn seed(authority: &str, args: &GatewayArgs, prefix: &str, workload: Workload) -> Result<usize, String> {
    let counter = Arc::new(AtomicU64::new(0));
    let created = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    let workload = Arc::new(workload);
    for _ in 0..args.connections.min(32) {
        let (counter, created, workload) = (counter.clone(), created.clone(), workload.clone());
        let (pool, prefix, authority) = (args.pool as u64, prefix.to_owned(), authority.to_owned());
        tasks.push(tokio::spawn(async move {
            let mut sender = connect(&authority).await?;
            loop {
                let i = counter.fetch_add(1, Ordering::Relaxed);
                if i >= pool {
                    return Ok::<(), String>(());
                }
                let no = format!("{prefix}{i}");
                let req = order_request(&workload, &authority, &no)?;
                if sender.ready().await.is_err() {
                    sender = connect(&authority).await?;
                }
                let resp = sender.send_request(req).await.map_err(|e| format!("seeding: {e}"))?;
                let status = resp.status().as_u16();
                let body = resp
                    .into_body()
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                if !answer_ok(&workload, status, &body) {
                    return Err(format!("seeding order {no}: HTTP {status}"));
                }
                created.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    let n = created.load(Ordering::Relaxed) as usize;
    say!(
        "seeded {n} orders in {:.1} s ({:.0}/s, not measured)",
        started.elapsed().as_secs_f64(),
        n as f64 / started.elapsed().as_secs_f64()
    );
    Ok(n)
}

/// Sends junk notifications on one connection until `stop`; how many were answered.
async fn junk_flood(
    authority: String,
    path: &'static str,
    merchant: Merchant,
    stop: Arc<AtomicBool>,
) -> Result<u64, String> {
    let filler = "x".repeat(4000);
    let mut forged = wxpay_protocol::Fields::new();
    for (k, v) in [
        ("appid", merchant.appid.as_str()),
        ("mch_id", merchant.mch_id.as_str()),
        ("out_trade_no", "JUNK0001"),
        ("result_code", "SUCCESS"),
        ("return_code", "SUCCESS"),
        ("total_fee", "1"),
        ("attach", filler.as_str()),
        ("sign", "00000000000000000000000000000000"),
    ] {
        forged.insert(k, v.to_owned()).map_err(|e| e.to_string())?;
    }
    let bodies = [
        Bytes::from(format!("not xml at all {filler}")),
        Bytes::from(format!(
            "<xml><mch_id>1</mch_id><appid>wx0000000000000000</appid><pad>{filler}</pad></xml>"
        )),
        Bytes::from(forged.to_xml().map_err(|e| e.to_string())?),
    ];
    let mut sender = connect(&authority).await?;
    let mut sent = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let req = hyper::Request::post(path)
            .header(hyper::header::HOST, authority.as_str())
            .header(hyper::header::CONTENT_TYPE, "text/xml")
            .body(Full::new(bodies[(sent % 3) as usize].clone()))
            .map_err(|e| e.to_string())?;
        if sender.ready().await.is_err() {
            sender = connect(&authority).await?;
        }
        match sender.send_request(req).await {
            Ok(resp) => {
                let _ = resp.into_body().collect().await;
                sent += 1;
            }
            Err(_) => sender = connect(&authority).await?,
        }
    }
    Ok(sent)
}
