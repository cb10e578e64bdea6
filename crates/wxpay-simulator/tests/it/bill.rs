//! downloadbill: the bill of the day, in WeChat Pay's format, parsed back with exact fen.

use std::collections::BTreeMap;

use wxpay_protocol::v2::{self, BillType, DownloadBill, OrderRef, Refund, V2Call};
use wxpay_protocol::{BeijingTime, Error, Fen, OutRefundNo, OutTradeNo};

use crate::support::{Env, nonce, spawn, spawn_with};

/// Moves the simulator's clock to the next noon in Beijing and returns that moment: the
/// bill's day then stays the same for twelve hours, whenever the test runs.
fn pin_noon(env: &Env) -> BeijingTime {
    let sim = env.sim.simulator();
    sim.advance_clock_to_beijing_hour(12);
    BeijingTime::from_unix(sim.now())
}

fn bill(t: BillType, day: BeijingTime) -> DownloadBill {
    DownloadBill {
        bill_date: day,
        bill_type: t,
        gzip: false,
        extra: BTreeMap::new(),
    }
}

#[tokio::test]
async fn the_day_bill_lists_payments_and_refunds_with_exact_amounts() {
    let env = spawn().await;
    let day = pin_noon(&env);
    for (no, fee) in [("no-b-7", 7), ("b-1999", 1999), ("b-100010", 100_010)] {
        env.create(no, fee).await;
        env.pay(no, "success").await;
    }
    env.create("b-unpaid", 5).await;
    let refund = Refund::new(
        OrderRef::OutTradeNo(OutTradeNo::new("b-1999").unwrap()),
        OutRefundNo::new("no-rb-1").unwrap(),
        Fen::new(1999).unwrap(),
        Fen::new(999).unwrap(),
    );
    env.call(&refund).await.unwrap();

    // The raw bytes have WeChat Pay's shape.
    let body = v2::encode(&bill(BillType::All, day), &env.merchant, &nonce()).unwrap();
    let (_, text) = env.post_raw(DownloadBill::PATH, body).await;
    assert!(text.starts_with('\u{FEFF}'), "a byte order mark first");
    assert!(text.contains("\r\n`"), "CRLF lines and backtick values");
    assert!(text.contains("`19.99,"), "{text}");

    let all = env.call(&bill(BillType::All, day)).await.unwrap();
    assert_eq!(
        all.rows.len(),
        4,
        "three payments and one refund; the unpaid order is not there"
    );
    let fen: Vec<u64> = all
        .rows
        .iter()
        .filter(|r| r.trade_state == "SUCCESS")
        .map(|r| r.settlement_total_fee.get())
        .collect();
    assert_eq!(fen.iter().sum::<u64>(), 7 + 1999 + 100_010);
    let refund_row = all.rows.iter().find(|r| r.trade_state == "REFUND").unwrap();
    assert_eq!(refund_row.refund_fee.get(), 999);
    assert_eq!(refund_row.out_refund_no.as_deref(), Some("no-rb-1"));
    assert_eq!(all.summary.count, 4);
    assert_eq!(all.summary.refund_fee.get(), 999);
    // 0.60 % of 1000.10 yuan is 6.0006, rounded to 6.00 yuan.
    let big = all.rows.iter().find(|r| r.out_trade_no == "b-100010").unwrap();
    assert_eq!(big.fee.to_fen_exact(), Some(600));

    assert_eq!(env.call(&bill(BillType::Success, day)).await.unwrap().rows.len(), 3);
    let refunds = env.call(&bill(BillType::Refund, day)).await.unwrap();
    assert_eq!(refunds.rows.len(), 1);
    assert!(refunds.rows[0].refund_apply_time.is_some());
}

#[tokio::test]
async fn a_day_without_transactions_has_no_bill() {
    let env = spawn().await;
    let day = pin_noon(&env);
    let err = env.call(&bill(BillType::All, day)).await.unwrap_err();
    assert_eq!(
        err,
        Error::ReturnFail {
            return_msg: "No Bill Exist".into(),
            error_code: Some("20002".into())
        }
    );
    let mut future = bill(BillType::All, day);
    future.bill_date = BeijingTime::from_unix(future.bill_date.unix() + 3 * 86_400);
    let err = env.call(&future).await.unwrap_err();
    assert!(matches!(err, Error::ReturnFail { return_msg, .. } if return_msg == "invalid bill_date"));
}

#[tokio::test]
async fn today_bill_is_still_being_made_unless_asked_for_at_once() {
    let env = spawn_with(|c| c.bills_immediately = false).await;
    let day = pin_noon(&env);
    env.create("no-t-1", 1).await;
    env.pay("no-t-1", "success").await;
    let err = env.call(&bill(BillType::All, day)).await.unwrap_err();
    assert!(matches!(err, Error::ReturnFail { return_msg, .. } if return_msg == "Bill Creating"));
}

#[tokio::test]
async fn a_bad_signature_on_downloadbill_says_sign_error() {
    let env = spawn().await;
    let day = pin_noon(&env);
    let mut wrong = env.merchant.clone();
    wrong.key = wxpay_protocol::ApiKey::new("0123456789abcdef0123456789abcdef").unwrap();
    let err = env.call_as(&wrong, &bill(BillType::All, day)).await.unwrap_err();
    assert!(matches!(err, Error::ReturnFail { return_msg, error_code: Some(_) } if return_msg == "SIGN ERROR"));
}

/// `gzip -dc` of `bytes`: the system's gunzip, not the simulator's own idea of gzip.
pub(crate) fn gunzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut child = std::process::Command::new("gzip")
        .arg("-dc")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("gzip is installed");
    child.stdin.take().unwrap().write_all(bytes).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "gzip -dc refused the stream");
    out.stdout
}

#[tokio::test]
async fn a_bill_asked_for_as_gzip_is_a_gzip_stream_of_the_same_bytes() {
    let env = spawn().await;
    let day = pin_noon(&env);
    env.create("no-bz-1", 4321).await;
    env.pay("no-bz-1", "success").await;
    let plain = v2::encode(&bill(BillType::All, day), &env.merchant, &nonce()).unwrap();
    let plain = env
        .http
        .post(env.url(DownloadBill::PATH))
        .body(plain)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let mut zipped = bill(BillType::All, day);
    zipped.gzip = true;
    let body = v2::encode(&zipped, &env.merchant, &nonce()).unwrap();
    let gz = env
        .http
        .post(env.url(DownloadBill::PATH))
        .body(body)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(&gz[..2], &[0x1F, 0x8B], "a gzip stream, not the text");
    assert_eq!(gunzip(&gz), plain.to_vec());
    // WeChat Pay failing to compress, on demand: a bill asked for as text is served and
    // leaves the rule for the next gzip request.
    env.fault(serde_json::json!({"kind": "bill_gzip_error"})).await;
    let text = v2::encode(&bill(BillType::All, day), &env.merchant, &nonce()).unwrap();
    let (_, served) = env.post_raw(DownloadBill::PATH, text).await;
    assert_eq!(served.as_bytes(), &plain[..]);
    let body = v2::encode(&zipped, &env.merchant, &nonce()).unwrap();
    let (_, failed) = env.post_raw(DownloadBill::PATH, body).await;
    assert!(
        failed.contains("CompressGZip Error") && failed.contains("FAIL"),
        "{failed}"
    );
    let metrics = env.metrics_text().await;
    assert!(
        metrics.contains("wxpay_sim_faults_injected_total{kind=\"bill_gzip_error\"} 1"),
        "{metrics}"
    );
    // Another tar_type is refused as WeChat Pay refuses it.
    zipped.gzip = false;
    zipped.extra.insert("tar_type".into(), "ZIP".into());
    let body = v2::encode(&zipped, &env.merchant, &nonce()).unwrap();
    let (_, text) = env.post_raw(DownloadBill::PATH, body).await;
    assert!(text.contains("invalid tar_type, Only GZIP supported"), "{text}");
}
