//! `wxpay-bench reconcile`: how long reconciling a large day takes.
//!
//! Seeds a database (SQLite or PostgreSQL) through the gateway's own store with a day of
//! paid orders and succeeded refunds, generates the matching WeChat Pay bill text (the
//! protocol crate's bill writer, which the simulator uses too), serves it gzipped (the gateway
//! asks for `tar_type=GZIP`) at `/pay/downloadbill` from this process, and times
//! `wxpay_gateway::reconcile::reconcile` on it: download, parse (exact fen), read the
//! database, compare. The books balance, so every row is compared and none is repaired.

use std::sync::Arc;
use std::time::{Duration, Instant};

use wxpay_gateway::reconcile::{Day, Quiet, reconcile};
use wxpay_gateway::store::{NewOrder, NewRefund, Payment, RefundCreated, RefundResult, Source, Store};
use wxpay_gateway::time::{Clock, Millis};
use wxpay_gateway::{App, Config, JobsConfig, MerchantConfig, ReconcileConfig, Secret, UpstreamConfig};
use wxpay_protocol::v2::{Bill, BillRow, BillType};
use wxpay_protocol::{ApiKey, AppId, BeijingTime, Fen, MchId, OutRefundNo, OutTradeNo, SignType};
use wxpay_simulator::{TEST_API_KEY, TEST_APPID, TEST_MCH_ID};

/// Options.
#[derive(Debug, clap::Args)]
pub(crate) struct ReconcileArgs {
    /// Rows in the bill: payments, and one refund row per `refund_every` payments.
    #[arg(long, default_value_t = 100_000)]
    transactions: usize,
    /// One payment in this many is also refunded (in part).
    #[arg(long, default_value_t = 10)]
    refund_every: usize,
    /// `sqlite://PATH` or `postgres://…`; a fresh SQLite file in a temporary folder when
    /// absent. The database must be empty.
    #[arg(long)]
    database: Option<String>,
    /// Timed runs.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Worker threads.
    #[arg(long, default_value_t = 2)]
    pub(crate) threads: usize,
}

fn merchant(base_url: &str) -> MerchantConfig {
    MerchantConfig {
        name: "default".into(),
        appid: AppId::new(TEST_APPID).unwrap_or_else(|e| panic!("{e}")),
        app_secret: None,
        mch_id: MchId::new(TEST_MCH_ID).unwrap_or_else(|e| panic!("{e}")),
        api_key: Some(ApiKey::new(TEST_API_KEY).unwrap_or_else(|e| panic!("{e}"))),
        sign_type: SignType::Md5,
        base_url: base_url.to_owned(),
        backup_url: None,
        sns_base_url: base_url.to_owned(),
        client_cert: None,
        ca_pem: None,
        v3: None,
    }
}

/// One seeded payment and, maybe, its refund: what the bill row and the store both get.
struct Seeded {
    out_trade_no: OutTradeNo,
    transaction_id: String,
    amount: Fen,
    refund: Option<(OutRefundNo, String, Fen)>,
}

async fn seed(
    store: Arc<dyn Store>,
    n_payments: usize,
    refund_every: usize,
    now: Millis,
) -> Result<Arc<Vec<Seeded>>, String> {
    let seeded: Vec<Seeded> = (0..n_payments)
        .map(|i| {
            let amount = 1 + (i as u64 * 7919) % 200_000;
            let fen = |f: u64| Fen::new(f).unwrap_or_else(|e| panic!("{e}"));
            Seeded {
                out_trade_no: OutTradeNo::new(format!("BENCH{i:010}")).unwrap_or_else(|e| panic!("{e}")),
                transaction_id: format!("4200{i:024}"),
                amount: fen(amount),
                refund: (refund_every > 0 && i % refund_every == 0).then(|| {
                    let no = OutRefundNo::new(format!("BRF{i:010}")).unwrap_or_else(|e| panic!("{e}"));
                    (no, format!("5030{i:025}"), fen((amount / 2).max(1)))
                }),
            }
        })
        .collect();
    let seeded = Arc::new(seeded);
    let workers = 128;
    let mut tasks = Vec::new();
    for w in 0..workers {
        let store = store.clone();
        let seeded = seeded.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = w;
            while i < seeded.len() {
                let s = &seeded[i];
                store
                    .create_order(NewOrder {
                        merchant: "default".into(),
                        out_trade_no: s.out_trade_no.clone(),
                        appid: TEST_APPID.into(),
                        mch_id: TEST_MCH_ID.into(),
                        description: "bench".into(),
                        amount_fen: s.amount,
                        openid: "o-bench".into(),
                        attach: None,
                        client_ip: "127.0.0.1".into(),
                        expires_at: now + Duration::from_secs(7_200),
                        first_check_at: now + Duration::from_secs(3_600),
                        request_hash: String::new(),
                        now,
                    })
                    .await
                    .map_err(|e| e.to_string())?;
                store
                    .apply_payment(
                        Payment {
                            merchant: "default".into(),
                            out_trade_no: s.out_trade_no.clone(),
                            transaction_id: s.transaction_id.clone(),
                            amount_fen: s.amount,
                            paid_at: now,
                            source: Source::Query,
                            now,
                        },
                        None,
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                if let Some((no, id, fee)) = &s.refund {
                    let created = store
                        .create_refund(NewRefund {
                            merchant: "default".into(),
                            out_trade_no: s.out_trade_no.clone(),
                            out_refund_no: no.clone(),
                            amount_fen: *fee,
                            reason: None,
                            request_hash: String::new(),
                            first_check_at: now + Duration::from_secs(3_600),
                            now,
                        })
                        .await
                        .map_err(|e| e.to_string())?;
                    let RefundCreated::New(r) = created else {
                        return Err(format!("refund {no} not created: {created:?}"));
                    };
                    store
                        .refund_accepted(r.id, id.clone(), now, now + Duration::from_secs(3_600))
                        .await
                        .map_err(|e| e.to_string())?;
                    store
                        .apply_refund(
                            RefundResult {
                                merchant: "default".into(),
                                out_refund_no: no.clone(),
                                out_trade_no: s.out_trade_no.clone(),
                                refund_id: id.clone(),
                                amount_fen: *fee,
                                succeeded: true,
                                upstream_status: "SUCCESS".into(),
                                settled_at: now,
                                source: Source::Query,
                                now,
                            },
                            None,
                        )
                        .await
                        .map_err(|e| e.to_string())?;
                }
                i += workers;
            }
            Ok::<(), String>(())
        }));
    }
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    Ok(seeded)
}

fn bill_text(seeded: &[Seeded], now: Millis) -> String {
    let time = BeijingTime::from_unix(now.unix_secs());
    let mut rows = Vec::with_capacity(seeded.len() + seeded.len() / 8);
    let base = |s: &Seeded| BillRow {
        trade_time: time,
        appid: TEST_APPID.into(),
        mch_id: TEST_MCH_ID.into(),
        sub_mch_id: "0".into(),
        transaction_id: s.transaction_id.clone(),
        out_trade_no: s.out_trade_no.to_string(),
        openid: "o-bench".into(),
        trade_type: "JSAPI".into(),
        trade_state: "SUCCESS".into(),
        bank_type: "OTHERS".into(),
        currency: "CNY".into(),
        body: "bench".into(),
        total_fee: Some(Fen::ZERO),
        refund_apply_fee: Some(Fen::ZERO),
        ..BillRow::default()
    };
    for s in seeded {
        let mut row = base(s);
        let amount = s.amount;
        row.settlement_total_fee = amount;
        row.total_fee = Some(amount);
        rows.push(row);
        if let Some((no, id, fee)) = &s.refund {
            let mut row = base(s);
            let fee = *fee;
            row.trade_state = "REFUND".into();
            row.refund_id = Some(id.clone());
            row.out_refund_no = Some(no.to_string());
            row.refund_fee = fee;
            row.refund_apply_fee = Some(fee);
            row.refund_type = Some("ORIGINAL".into());
            row.refund_status = Some("SUCCESS".into());
            rows.push(row);
        }
    }
    Bill::from_rows(BillType::All, rows).to_text()
}

pub(crate) async fn run(args: ReconcileArgs) -> Result<(), String> {
    let tmp = std::env::temp_dir().join(format!("wxpay-bench-reconcile-{}", std::process::id()));
    let result = measure(&args, &tmp).await;
    // Removed whatever the outcome: a failed run leaves no database behind.
    if args.database.is_none() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}

async fn measure(args: &ReconcileArgs, tmp: &std::path::Path) -> Result<(), String> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let per_payment = if args.refund_every > 0 {
        1.0 + 1.0 / args.refund_every as f64
    } else {
        1.0
    };
    let n_payments = ((args.transactions as f64) / per_payment).round() as usize;
    let url = match &args.database {
        Some(url) => url.clone(),
        None => {
            // The gateway opens an SQLite file only in a folder that exists.
            std::fs::create_dir_all(tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
            format!("sqlite://{}", tmp.join("bench.db").display())
        }
    };
    let store = wxpay_gateway::open_store(&url, 16).await.map_err(|e| e.to_string())?;
    let now = Clock::default().now();
    let day = Day::containing(now);
    if Day::containing(now + Duration::from_secs(600)) != day {
        return Err("too close to midnight (Beijing time): the seeded day would end during the run".into());
    }

    let started = Instant::now();
    let seeded = seed(store.clone(), n_payments, args.refund_every, now).await?;
    let refunds = seeded.iter().filter(|s| s.refund.is_some()).count();
    println!(
        "seeded {} ({n_payments} payments, {refunds} refunds) in {:.1} s on {}",
        n_payments + refunds,
        started.elapsed().as_secs_f64(),
        store.engine()
    );
    let text = Arc::new(bill_text(&seeded, now));
    drop(seeded);
    println!(
        "bill: {} rows, {:.1} MiB of text",
        n_payments + refunds,
        text.len() as f64 / 1048576.0
    );

    // The gateway asks for the bill as gzip (`tar_type=GZIP`), as WeChat Pay sends it then:
    // compressed once here, outside the timed runs.
    let gz = bytes::Bytes::from(wxpay_protocol::v2::gzip(text.as_bytes()));
    println!(
        "bill as gzip: {:.1} MiB ({:.0} % of the text)",
        gz.len() as f64 / 1048576.0,
        gz.len() as f64 * 100.0 / text.len() as f64
    );
    drop(text);
    let bill_app = axum::Router::new().route(
        "/pay/downloadbill",
        axum::routing::post(move || {
            let b = gz.clone();
            async move { b }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, bill_app).await;
    });

    let config = Config {
        public_url: "http://127.0.0.1:1".into(),
        api_tokens: vec![Secret::new("bench-token-0123456789")],
        merchants: vec![merchant(&format!("http://{addr}"))],
        webhook: None,
        upstream: UpstreamConfig {
            timeout: Duration::from_secs(120),
            ..UpstreamConfig::default()
        },
        jobs: JobsConfig {
            enabled: false,
            ..JobsConfig::default()
        },
        default_order_ttl: Duration::from_secs(7200),
        reconcile: ReconcileConfig::default(),
        limits: wxpay_gateway::Limits::default(),
        metrics_token: None,
        console: None,
    };
    let app = App::new(config, store).map_err(|e| e.to_string())?;
    for run in 1..=args.runs {
        let started = Instant::now();
        let report = reconcile(&app, None, &day, false, &Quiet)
            .await
            .map_err(|e| e.to_string())?;
        let total = started.elapsed();
        if !report.balanced {
            return Err(format!(
                "the seeded day does not balance: {:?}",
                &report.found[..report.found.len().min(5)]
            ));
        }
        println!(
            "run {run}: {} rows reconciled in {:.2} s (download+parse {} ms, database+compare {} ms), balanced, peak RSS {:.0} MiB",
            report.bill.payments + report.bill.refunds,
            total.as_secs_f64(),
            report.timings_ms.download,
            report.timings_ms.compare,
            crate::process::rss_kib(std::process::id()).map_or(0.0, |(_, peak)| peak as f64 / 1024.0)
        );
    }
    Ok(())
}
