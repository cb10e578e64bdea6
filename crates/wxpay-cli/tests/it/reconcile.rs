//! `wxpay serve` refunding over mutual TLS with the `apiclient_cert.p12`, and `wxpay
//! reconcile` as a process: JSON, table, exit status, and `--repair`.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use wxpay_gateway::reconcile::Day;
use wxpay_simulator::{SimHandle, TEST_MCH_ID, TlsConfig};

use crate::serve::{
    Front, PgDb, Server, call, client_trusting, scratch_dir, simulator_with, wait_for, write_config_with,
};
use crate::{Run, wxpay};

async fn tls_simulator(dir: &Path) -> SimHandle {
    let tls = dir.join("sim-tls");
    simulator_with(move |c| {
        c.bills_immediately = true;
        c.tls = Some(TlsConfig { dir: tls });
    })
    .await
}

/// The process tests' configuration, with the merchant's `.p12` and the simulator's CA, and
/// no background work (so that only `--repair` settles what it finds).
fn config(dir: &Path, public_url: &str, database_url: &str, sim: &SimHandle) -> std::path::PathBuf {
    let files = sim.simulator().tls_files().unwrap();
    let merchant_extra = format!(
        "cert_path = \"{}\"\nca_path = \"{}\"",
        files.client_p12[TEST_MCH_ID].display(),
        files.ca_cert.display()
    );
    write_config_with(
        dir,
        public_url,
        database_url,
        sim.base_url(),
        None,
        &merchant_extra,
        "enabled = false",
    )
}

/// Waits, if the Beijing day has less than `needed` left, until the next one begins; returns
/// the day (YYYY-MM-DD) the caller then has `needed` of.
async fn one_beijing_day_ahead(needed: Duration) -> String {
    let now = || wxpay_gateway::time::now_ms().div_euclid(1000);
    let left = wxpay_simulator::seconds_until_beijing_hour(now(), 0);
    if left < needed.as_secs() as i64 {
        tokio::time::sleep(Duration::from_secs(left as u64 + 1)).await;
    }
    Day::containing(wxpay_gateway::time::Millis::from_unix_ms(now() * 1000)).date
}

fn reconcile(config: &Path, date: &str, extra: &[&str]) -> Run {
    let mut args = vec!["reconcile", "--config", config.to_str().unwrap(), "--date", date];
    args.extend_from_slice(extra);
    wxpay(&args, None, &[])
}

async fn refund_then_reconcile(database_url: &str, dir: &Path) {
    // The gateway here is another process on the wall clock, which the test cannot move as
    // it moves an in-process one; so it starts only when a Beijing day has at least two
    // minutes left, and the payment, the refund and the bill all fall on that day.
    let day = one_beijing_day_ahead(Duration::from_secs(120)).await;
    let sim = tls_simulator(dir).await;
    let front = Front::bind().await;
    let cfg = config(dir, &front.url, database_url, &sim);
    let http = client_trusting(Some(&sim.simulator().tls_files().unwrap().ca_cert));
    let mut server = Server::start(&cfg, &dir.join("serve.log"));
    front.forward_to(&server);
    server.ready(&http).await;
    let base = server.url.clone();

    // An order, paid, then refunded in part over mutual TLS with the .p12.
    let (status, o) = call(
        &http,
        reqwest::Method::POST,
        &format!("{base}/v1/orders"),
        Some(json!({"description": "对账 test", "amount_fen": 1999, "openid": "o-reconcile", "out_trade_no": "CLI-RC-1"})),
    )
    .await;
    assert_eq!(status, 201, "{o}");
    let paid = http
        .post(format!("{}/simulator/pay", sim.base_url()))
        .json(&json!({"out_trade_no": "CLI-RC-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(paid.status(), 200);
    wait_for("paid", async || {
        call(&http, reqwest::Method::GET, &format!("{base}/v1/orders/CLI-RC-1"), None)
            .await
            .1["status"]
            == "paid"
    })
    .await;
    let (status, r) = call(
        &http,
        reqwest::Method::POST,
        &format!("{base}/v1/orders/CLI-RC-1/refunds"),
        Some(json!({"amount_fen": 999, "out_refund_no": "CLI-RF-1"})),
    )
    .await;
    assert_eq!(status, 201, "{r}");
    wait_for("the refund succeeds", async || {
        call(
            &http,
            reqwest::Method::GET,
            &format!("{base}/v1/refunds/CLI-RF-1"),
            None,
        )
        .await
        .1["status"]
            == "succeeded"
    })
    .await;

    let today = day;
    let Run { code, stdout, stderr } = reconcile(&cfg, &today, &["--format", "json"]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let doc: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(doc["balanced"], true);
    let report = &doc["reports"][0];
    assert_eq!(
        (
            report["bill"]["payments_fen"].as_i64(),
            report["bill"]["refunds_fen"].as_i64()
        ),
        (Some(1999), Some(999)),
        "{doc}"
    );

    // Paid at WeChat Pay, pending here: every notification for it fails verification.
    let fault = http
        .post(format!("{}/simulator/faults", sim.base_url()))
        .json(&json!({"kind": "notify_bad_signature", "out_trade_no": "CLI-RC-2", "for_ms": 600_000}))
        .send()
        .await
        .unwrap();
    assert_eq!(fault.status(), 201, "the fault was installed");
    let (status, _) = call(
        &http,
        reqwest::Method::POST,
        &format!("{base}/v1/orders"),
        Some(
            json!({"description": "对账 test 2", "amount_fen": 7, "openid": "o-reconcile", "out_trade_no": "CLI-RC-2"}),
        ),
    )
    .await;
    assert_eq!(status, 201);
    let paid = http
        .post(format!("{}/simulator/pay", sim.base_url()))
        .json(&json!({"out_trade_no": "CLI-RC-2"}))
        .send()
        .await
        .unwrap();
    assert_eq!(paid.status(), 200);
    // The gateway has refused the forged notification once the simulator has its answer.
    wait_for("the notification is answered", async || {
        let v: Value = http
            .get(format!(
                "{}/simulator/notifications?out_trade_no=CLI-RC-2",
                sim.base_url()
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["attempts"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x["status"].is_u64()))
    })
    .await;
    let Run { code, stdout, stderr } = reconcile(&cfg, &today, &["--format", "json"]);
    assert_eq!(code, 1, "differences exit 1: {stdout}\n{stderr}");
    let doc: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(doc["reports"][0]["found"][0]["kind"], "status_differs", "{doc}");
    assert_eq!(doc["reports"][0]["found"][0]["out_trade_no"], "CLI-RC-2");

    let Run { code, stdout, stderr } = reconcile(&cfg, &today, &["--repair"]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(stdout.contains("BALANCED after repair"), "{stdout}");
    assert!(stdout.contains("CLI-RC-2"), "{stdout}");
    let (_, o) = call(&http, reqwest::Method::GET, &format!("{base}/v1/orders/CLI-RC-2"), None).await;
    assert_eq!(o["status"], "paid", "{o}");

    let Run { code, stderr, .. } = reconcile(&cfg, "2026-13-01", &[]);
    assert_eq!(code, 2);
    assert!(stderr.contains("--date"), "{stderr}");
    let Run { code, stderr, .. } = reconcile(&cfg, &today, &["--merchant", "nobody"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("nobody"), "{stderr}");
    server.terminate();
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_refunds_with_the_p12_and_reconcile_reports_repairs_and_exits_by_the_result_on_sqlite() {
    let dir = scratch_dir("reconcile");
    refund_then_reconcile(&format!("sqlite://{}", dir.join("r.db").display()), &dir).await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_refunds_with_the_p12_and_reconcile_reports_repairs_and_exits_by_the_result_on_postgres() {
    let Some(pg) = PgDb::create().await else { return };
    let dir = scratch_dir("reconcile-pg");
    refund_then_reconcile(&pg.url, &dir).await;
    drop(pg);
    let _ = std::fs::remove_dir_all(dir);
}
