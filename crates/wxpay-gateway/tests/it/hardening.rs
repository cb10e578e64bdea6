//! What an attack and a first-time user found (issue 9): each test failed before its fix.

use std::time::Duration;

use reqwest::Method;
use serde_json::json;

use wxpay_gateway::UpstreamConfig;

use crate::support::SUCCESS;
use crate::support::engines;
use crate::support::{
    DEFAULT, Options, TOKEN, TestDb, eventually, notification, order_body, paid_notification, quick_jobs, spawn_app,
};

/// Counts rows of a table straight from the SQLite file.
fn sqlite_count(path: &std::path::Path, sql: &str) -> i64 {
    let c = rusqlite::Connection::open(path).unwrap();
    c.query_row(sql, [], |r| r.get(0)).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn writes_refused_for_a_lock_held_elsewhere_commit_nothing_and_the_retry_applies_once() {
    let t = spawn_app(
        TestDb::sqlite(),
        Options {
            sqlite_busy_timeout: Some(Duration::from_secs(2)),
            ..Options::default()
        },
    )
    .await;
    let o = t.create(order_body(100)).await;
    let no = o["out_trade_no"].as_str().unwrap().to_owned();
    let file = t.db.sqlite_file();

    // Another connection (an operator's shell, `wxpay migrate`, a second process) takes the
    // write lock and keeps it a little past the gateway's busy timeout: long enough for the
    // gateway's transaction not to begin, short enough for statements run after that failure
    // to get the lock.
    let (locked, is_locked) = std::sync::mpsc::channel::<()>();
    let holder_file = file.clone();
    let holder = std::thread::spawn(move || {
        let c = rusqlite::Connection::open(holder_file).unwrap();
        c.execute_batch("BEGIN IMMEDIATE").unwrap();
        locked.send(()).unwrap();
        std::thread::sleep(Duration::from_secs(3));
        c.execute_batch("ROLLBACK").unwrap();
    });
    is_locked.recv().unwrap();

    let notification = paid_notification(&no, 100, "4200000000000000000000000901");
    let mut body = order_body(200);
    body["out_trade_no"] = json!("LOCKED00000001");
    // The notification reaches the writer first, the order a moment later (in the same batch
    // or the next, which may get the lock once it is released: either way the answer and the
    // database must agree).
    let later_order = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        t.api(Method::POST, "/v1/orders", Some(body.clone()), None).await
    };
    let (notified, created) = tokio::join!(t.notify(notification.clone()), later_order);
    holder.join().unwrap();

    // The notification could not be applied while the lock was held, and was answered so.
    assert_eq!(notified.0, 500, "{notified:?}");
    assert!(notified.1.contains("FAIL"), "{notified:?}");
    // What was answered as failed left no trace.
    assert_eq!(t.order(&no).await["status"], "pending");
    assert_eq!(sqlite_count(&file, "SELECT COUNT(*) FROM outbox"), 0);
    assert_eq!(
        sqlite_count(&file, "SELECT COUNT(*) FROM order_events WHERE kind = 'paid'"),
        0
    );
    // The order creation queued behind it: stored exactly when it was answered as created.
    let stored = sqlite_count(
        &file,
        "SELECT COUNT(*) FROM orders WHERE out_trade_no = 'LOCKED00000001'",
    );
    assert_eq!(stored, i64::from(created.0 == 201), "{created:?}");

    // WeChat Pay sends the notification again: it is applied, once.
    assert_eq!(t.notify(notification.clone()).await, (200, SUCCESS.to_owned()));
    assert_eq!(t.notify(notification).await, (200, SUCCESS.to_owned()));
    assert_eq!(t.order(&no).await["status"], "paid");
    assert_eq!(sqlite_count(&file, "SELECT COUNT(*) FROM outbox"), 1);
    assert_eq!(
        sqlite_count(&file, "SELECT COUNT(*) FROM order_events WHERE kind = 'paid'"),
        1
    );
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn while_the_database_is_out_of_reach_the_api_answers_503_and_stores_nothing() {
    let t = spawn_app(
        TestDb::sqlite(),
        Options {
            sqlite_busy_timeout: Some(Duration::from_millis(200)),
            ..Options::default()
        },
    )
    .await;
    let file = t.db.sqlite_file();
    let (locked, is_locked) = std::sync::mpsc::channel::<()>();
    let (release, released) = std::sync::mpsc::channel::<()>();
    let holder = std::thread::spawn(move || {
        let c = rusqlite::Connection::open(file).unwrap();
        c.execute_batch("BEGIN IMMEDIATE").unwrap();
        locked.send(()).unwrap();
        released.recv().unwrap();
        c.execute_batch("ROLLBACK").unwrap();
    });
    is_locked.recv().unwrap();
    let mut body = order_body(300);
    body["out_trade_no"] = json!("OUTOFREACH0001");
    let (status, answer) = t.api(Method::POST, "/v1/orders", Some(body.clone()), None).await;
    release.send(()).unwrap();
    holder.join().unwrap();
    // Not a 500: the gateway is not broken, the database is busy, and the same request may
    // succeed in a moment.
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (503, Some("store_unavailable")),
        "{answer}"
    );
    let (status, _) = t.api(Method::GET, "/v1/orders/OUTOFREACH0001", None, None).await;
    assert_eq!(status, 404, "nothing was stored");
    let (status, answer) = t.api(Method::POST, "/v1/orders", Some(body), None).await;
    assert_eq!(
        status, 201,
        "once the lock is gone, the same request succeeds: {answer}"
    );
    t.stop().await;
}

/// WeChat Pay calls patient enough for the delays these tests inject (up to 5 s).
fn patient_upstream() -> UpstreamConfig {
    UpstreamConfig {
        timeout: Duration::from_secs(10),
        retry_backoff: Duration::from_millis(10),
        ..UpstreamConfig::default()
    }
}

async fn a_creating_request_whose_client_went_away_finishes_and_its_key_answers_the_retry(db: TestDb) {
    let t = spawn_app(
        db,
        Options {
            upstream: patient_upstream(),
            ..Options::default()
        },
    )
    .await;
    t.fault(json!({"kind": "delay", "api": "unifiedorder", "count": 1, "delay_ms": 5000}))
        .await;
    let mut body = order_body(100);
    let no = format!("DROP{}", t.engine().to_uppercase());
    body["out_trade_no"] = json!(no);
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let gone = impatient
        .post(format!("{}/v1/orders", t.url))
        .bearer_auth(TOKEN)
        .header("Idempotency-Key", "went-away")
        .json(&body)
        .send()
        .await;
    assert!(
        gone.is_err_and(|e| e.is_timeout()),
        "{}: the client gives up",
        t.engine()
    );

    // The first request goes on without its client: it finishes when the order has its
    // prepay (the simulator's 5 s delay), and only then does the retry come.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while t.order(&no).await["prepay_id"].is_null() {
        assert!(
            std::time::Instant::now() < deadline,
            "{}: the first request never finished",
            t.engine()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, answer) = t.api(Method::POST, "/v1/orders", Some(body), Some("went-away")).await;
    assert_eq!(status, 201, "{}: {answer}", t.engine());
    assert_eq!(answer["out_trade_no"], no.as_str());
    assert!(answer["pay_params"]["paySign"].is_string(), "{answer}");
    let prepay = answer["prepay_id"].as_str().unwrap();
    let order = t.order(&no).await;
    assert_eq!(
        order["prepay_id"],
        prepay,
        "{}: the one order the first request made",
        t.engine()
    );
    assert_eq!(t.sim_calls("unifiedorder").await, 1, "{}", t.engine());
    t.stop().await;
}
engines!(multi_thread a_creating_request_whose_client_went_away_finishes_and_its_key_answers_the_retry);

async fn idempotency_keys_are_forgotten_after_a_day_by_the_background_work(db: TestDb) {
    let t = spawn_app(
        db,
        Options {
            jobs: quick_jobs(),
            ..Options::default()
        },
    )
    .await;
    let (status, _) = t
        .api(Method::POST, "/v1/orders", Some(order_body(100)), Some("day-old"))
        .await;
    assert_eq!(status, 201);
    let (status, _) = t
        .api(Method::POST, "/v1/orders", Some(order_body(200)), Some("day-old"))
        .await;
    assert_eq!(status, 409, "{}: the key is kept", t.engine());
    t.app.clock().advance(Duration::from_secs(25 * 3600));
    eventually("the key is forgotten", async || {
        t.api(Method::POST, "/v1/orders", Some(order_body(200)), Some("day-old"))
            .await
            .0
            == 201
    })
    .await;
    t.stop().await;
}
engines!(multi_thread idempotency_keys_are_forgotten_after_a_day_by_the_background_work);

async fn a_correctly_signed_payment_in_another_currency_is_refused_like_a_wrong_amount(db: TestDb) {
    let t = spawn_app(db, Options::default()).await;
    let o = t.create(order_body(100)).await;
    let no = o["out_trade_no"].as_str().unwrap().to_owned();
    let usd = notification(DEFAULT, &no, 100, "4200000000000000000000000904", |f| {
        f.set("fee_type", "USD");
    });
    let (status, reply) = t.notify(usd).await;
    assert_eq!(status, 400, "{}: {reply}", t.engine());
    assert!(reply.contains("FAIL"), "{reply}");
    assert_eq!(t.order(&no).await["status"], "pending", "{}", t.engine());
    assert_eq!(t.app.metrics().notifications_with("currency_mismatch"), 1);
    assert_eq!(
        t.notification_records(&no).await,
        [(
            "currency_mismatch".to_owned(),
            Some("fee_type \"USD\", the order is in CNY".to_owned())
        )]
    );
    // Without fee_type the payment is in CNY, WeChat Pay's default.
    let cny = notification(DEFAULT, &no, 100, "4200000000000000000000000904", |f| {
        f.remove("fee_type");
    });
    assert_eq!(t.notify(cny).await, (200, SUCCESS.to_owned()));
    assert_eq!(t.order(&no).await["status"], "paid");
    t.stop().await;
}
engines!(a_correctly_signed_payment_in_another_currency_is_refused_like_a_wrong_amount);

/// Reads from `s` until the server closes it; how long that took.
async fn until_closed(s: &mut tokio::net::TcpStream, within: Duration) -> Option<std::time::Instant> {
    use tokio::io::AsyncReadExt;
    let mut sink = Vec::new();
    tokio::time::timeout(within, s.read_to_end(&mut sink))
        .await
        .ok()
        .map(|_| std::time::Instant::now())
}

/// A gateway that gives its clients a second for a header or a body and two idle.
fn with_quick_limits() -> Options {
    Options {
        limits: wxpay_gateway::Limits {
            header_read_timeout: Duration::from_secs(1),
            body_read_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(2),
            max_connections: 64,
        },
        ..Options::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_loris_clients_are_cut_off_while_genuine_notifications_are_applied() {
    use tokio::io::AsyncWriteExt;
    let t = spawn_app(TestDb::sqlite(), with_quick_limits()).await;
    let addr = t.url.trim_start_matches("http://").to_owned();
    // Clients that send half a header, half a body, or nothing.
    let mut slow = Vec::new();
    for i in 0..30 {
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        match i % 3 {
            0 => s
                .write_all(b"POST /notify/v2/pay HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                .await
                .unwrap(),
            1 => s
                .write_all(b"POST /notify/v2/pay HTTP/1.1\r\nHost: x\r\nContent-Length: 900\r\n\r\n<xml>")
                .await
                .unwrap(),
            _ => {}
        }
        slow.push(s);
    }
    let opened = std::time::Instant::now();
    // Genuine notifications go on being applied meanwhile.
    for i in 0..10 {
        let o = t.create(order_body(100)).await;
        let no = o["out_trade_no"].as_str().unwrap().to_owned();
        let tx = format!("42000000000000000000000{i:05}");
        assert_eq!(
            t.notify(paid_notification(&no, 100, &tx)).await,
            (200, SUCCESS.to_owned())
        );
        assert_eq!(t.order(&no).await["status"], "paid");
    }
    for (i, s) in slow.iter_mut().enumerate() {
        let closed = until_closed(s, Duration::from_secs(10)).await;
        let after = closed.map(|c| c.duration_since(opened));
        // Half a header and half a body: about a second; nothing at all: the idle two.
        assert!(
            after.is_some_and(|a| a < Duration::from_secs(5)),
            "slow client {i} still open: {after:?}"
        );
    }
    t.stop().await;
}

#[tokio::test]
async fn a_request_body_that_stops_coming_is_answered_408_with_its_request_id() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let t = spawn_app(TestDb::sqlite(), with_quick_limits()).await;
    let addr = t.url.trim_start_matches("http://").to_owned();
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /v1/orders HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nX-Request-Id: slow-body-1\r\nContent-Type: application/json\r\nContent-Length: 900\r\n\r\n{{\"amount_fen\":",
        crate::support::TOKEN
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut answer))
        .await
        .expect("answered and closed within 10 s")
        .unwrap();
    let text = String::from_utf8_lossy(&answer).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 408"), "{text}");
    // The request can be found in the log by the id the client sent.
    assert!(text.contains("\r\nx-request-id: slow-body-1\r\n"), "{text}");
    assert!(text.contains("\"request_id\":\"slow-body-1\""), "{text}");
    t.stop().await;
}

/// The bytes the test's database takes: the SQLite files, or the PostgreSQL database.
async fn database_bytes(t: &crate::support::TestApp) -> u64 {
    if t.engine() == "sqlite" {
        let file = t.db.sqlite_file();
        ["", "-wal", "-shm"]
            .iter()
            .map(|suffix| {
                let mut name = file.clone().into_os_string();
                name.push(suffix);
                std::fs::metadata(name).map_or(0, |m| m.len())
            })
            .sum()
    } else {
        let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&t.db.url)
            .await
            .unwrap();
        let size: i64 = sqlx::query_scalar("SELECT pg_database_size(current_database())")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        size as u64
    }
}

async fn ten_thousand_junk_notifications_grow_the_database_by_less_than_5_mb_and_genuine_ones_still_apply(db: TestDb) {
    use futures_util::StreamExt;
    let t = spawn_app(db, Options::default()).await;
    let mut orders = Vec::new();
    for _ in 0..100 {
        let o = t.create(order_body(100)).await;
        orders.push(o["out_trade_no"].as_str().unwrap().to_owned());
    }
    let before = database_bytes(&t).await;
    let filler = "x".repeat(4000);
    let junk: Vec<String> = vec![
        format!("not xml at all {filler}"),
        // A merchant number of 50 KB: what the sender chose is clipped before it is kept.
        format!(
            "<xml><mch_id>{}</mch_id><appid>wx0000000000000000</appid></xml>",
            "1".repeat(50_000)
        ),
        notification(DEFAULT, &orders[0], 100, "4200000000000000000000000999", |f| {
            f.set("attach", filler.clone());
            f.set("sign", "0".repeat(32));
        }),
    ];
    let flood = futures_util::stream::iter(0..10_000)
        .map(|i| t.notify(junk[i % junk.len()].clone()))
        .buffer_unordered(32)
        .collect::<Vec<_>>();
    let genuine = async {
        let mut replies = Vec::new();
        for (i, no) in orders.iter().enumerate().skip(1) {
            let tx = format!("42000000000000000000001{i:05}");
            replies.push(t.notify(paid_notification(no, 100, &tx)).await);
        }
        replies
    };
    let (junk_replies, genuine_replies) = tokio::join!(flood, genuine);
    assert!(junk_replies.iter().all(|(s, _)| *s == 400), "{}", t.engine());
    assert!(
        genuine_replies.iter().all(|r| *r == (200, SUCCESS.to_owned())),
        "{}",
        t.engine()
    );
    for no in &orders[1..] {
        assert_eq!(t.order(no).await["status"], "paid", "{}", t.engine());
    }
    // The budget's records are written within a moment; the rest only counted.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let grown = database_bytes(&t).await.saturating_sub(before);
    assert!(grown < 5_000_000, "{}: the database grew by {grown} bytes", t.engine());
    let unrecorded = t.app.metrics().rejections_unrecorded();
    assert!(
        unrecorded >= 10_000 - 2 * 120,
        "{}: {unrecorded} counted only",
        t.engine()
    );
    // What is kept is what an operator needs: from where, a digest, the first KiB.
    let sql = "SELECT COUNT(*), MIN(peer), MIN(LENGTH(body_sha256)), MAX(LENGTH(body)) FROM notifications \
               WHERE verdict = 'rejected'";
    let (kept, peer, digest, longest): (i64, String, i64, i64) = if t.engine() == "sqlite" {
        let c = rusqlite::Connection::open(t.db.sqlite_file()).unwrap();
        c.query_row(sql, [], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .unwrap()
    } else {
        let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&t.db.url)
            .await
            .unwrap();
        let sql = sql.replace("COUNT(*)", "COUNT(*)::BIGINT").replace(
            "MIN(LENGTH(body_sha256)), MAX(LENGTH(body))",
            "MIN(LENGTH(body_sha256))::BIGINT, MAX(LENGTH(body))::BIGINT",
        );
        sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .fetch_one(&mut conn)
            .await
            .unwrap()
    };
    assert!((1..=2 * 120).contains(&kept), "{}: {kept} kept", t.engine());
    assert!(peer.starts_with("127.0.0.1:"), "{peer}");
    assert_eq!(digest, 64);
    assert!(longest <= 1024, "{longest}");
    t.stop().await;
}
engines!(multi_thread ten_thousand_junk_notifications_grow_the_database_by_less_than_5_mb_and_genuine_ones_still_apply);

/// Runs a statement on the test's database from a connection of the test's own.
async fn execute(t: &crate::support::TestApp, sql: &str) {
    if t.engine() == "sqlite" {
        rusqlite::Connection::open(t.db.sqlite_file())
            .unwrap()
            .execute_batch(sql)
            .unwrap();
    } else {
        let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&t.db.url)
            .await
            .unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
            .execute(&mut conn)
            .await
            .unwrap();
    }
}

async fn metrics_answer_from_memory_and_follow_changes_and_a_token_can_protect_them(db: TestDb) {
    let t = spawn_app(
        db,
        Options {
            metrics_token: Some("metrics-token-0123456789"),
            ..Options::default()
        },
    )
    .await;
    let url = format!("{}/metrics", t.url);
    let r = t.http.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 401, "no token");
    let r = t
        .http
        .get(&url)
        .bearer_auth("wrong-token-0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "a wrong token");
    let scrape = async || {
        let r = t
            .http
            .get(&url)
            .bearer_auth("metrics-token-0123456789")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.text().await.unwrap()
    };
    // The gauges follow a change within a second.
    let o = t.create(order_body(100)).await;
    eventually("the new order is counted", async || {
        scrape().await.contains("wxpay_orders{status=\"pending\"} 1")
    })
    .await;
    let no = o["out_trade_no"].as_str().unwrap();
    t.notify(paid_notification(no, 100, "4200000000000000000000000908"))
        .await;
    eventually("the payment is counted", async || {
        scrape().await.contains("wxpay_orders{status=\"paid\"} 1")
    })
    .await;
    // A scrape reads no table: with the orders table gone from under it, it still answers
    // with the last figures.
    execute(&t, "ALTER TABLE orders RENAME TO orders_away").await;
    for _ in 0..20 {
        let text = scrape().await;
        assert!(
            text.contains("wxpay_orders{status=\"paid\"} 1"),
            "{}: {text}",
            t.engine()
        );
    }
    execute(&t, "ALTER TABLE orders_away RENAME TO orders").await;
    t.stop().await;
}
engines!(metrics_answer_from_memory_and_follow_changes_and_a_token_can_protect_them);

#[tokio::test]
async fn a_rejected_notification_is_answered_alike_whatever_failed() {
    let t = spawn_app(TestDb::sqlite(), Options::default()).await;
    let o = t.create(order_body(100)).await;
    let no = o["out_trade_no"].as_str().unwrap().to_owned();
    let replies = [
        // Not a notification at all.
        "not xml".to_owned(),
        // A merchant number nobody configured.
        notification(DEFAULT, &no, 100, "4200000000000000000000000910", |f| {
            f.set("mch_id", "1999999999");
            f.remove("sign");
        }),
        // The configured merchant, a wrong signature.
        notification(DEFAULT, &no, 100, "4200000000000000000000000910", |f| {
            f.set("sign", "0".repeat(32));
        }),
    ];
    let mut answers = Vec::new();
    for body in replies {
        answers.push(t.notify(body).await);
    }
    for a in &answers {
        assert_eq!(
            a,
            &(
                400,
                "<xml><return_code><![CDATA[FAIL]]></return_code><return_msg><![CDATA[invalid notification]]></return_msg></xml>"
                    .to_owned()
            )
        );
    }
    assert_eq!(t.order(&no).await["status"], "pending");
    t.stop().await;
}

/// A server that redirects every request (307, which keeps the method and body) to a second
/// one, which counts what reaches it: (the redirecting URL, the count).
async fn redirector() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let caught = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = caught.clone();
    let catcher = axum::Router::new().fallback(move || {
        let counter = counter.clone();
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            "caught"
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let catcher_url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, catcher).await.unwrap() });
    let redirect = axum::Router::new().fallback(move |uri: axum::http::Uri| {
        let to = format!("{catcher_url}{uri}");
        async move {
            (
                axum::http::StatusCode::TEMPORARY_REDIRECT,
                [(axum::http::header::LOCATION, to)],
            )
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, redirect).await.unwrap() });
    (url, caught)
}

#[tokio::test]
async fn redirects_from_wechat_hosts_are_not_followed_and_carry_no_secret_elsewhere() {
    let (url, caught) = redirector().await;
    let t = spawn_app(
        TestDb::sqlite(),
        Options {
            shared_sim: Some(url),
            ..Options::default()
        },
    )
    .await;
    let (status, v) = t
        .api(
            Method::POST,
            "/v1/openid",
            Some(json!({"code": "081aBcDe2abcDe0Fgh3"})),
            None,
        )
        .await;
    assert!(status >= 500, "{status} {v}");
    let (status, v) = t.api(Method::POST, "/v1/orders", Some(order_body(100)), None).await;
    assert!(status >= 500, "{status} {v}");
    assert_eq!(
        caught.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "a redirect was followed: jscode2session's secret went to another host"
    );
    t.stop().await;
}

#[tokio::test]
async fn a_webhook_answered_with_a_redirect_is_a_failed_delivery() {
    let (url, caught) = redirector().await;
    let t = spawn_app(
        TestDb::sqlite(),
        Options {
            webhook_url: Some(format!("{url}/events")),
            ..crate::support::with_jobs_and_webhook()
        },
    )
    .await;
    let o = t.create(order_body(100)).await;
    let no = o["out_trade_no"].as_str().unwrap();
    t.notify(paid_notification(no, 100, "4200000000000000000000000911"))
        .await;
    eventually("the delivery is tried and fails", async || {
        t.metrics_text()
            .await
            .contains("wxpay_webhook_deliveries_total{outcome=\"failed\"}")
    })
    .await;
    assert!(!t.metrics_text().await.contains("outcome=\"delivered\""));
    assert_eq!(caught.load(std::sync::atomic::Ordering::SeqCst), 0);
    t.stop().await;
}

#[tokio::test]
async fn the_sqlite_database_and_its_journal_files_are_readable_by_their_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let db = TestDb::sqlite();
    let store = db.store().await;
    // A write, so that the -wal and -shm files exist.
    let key = wxpay_gateway::store::IdemKey {
        scope: "s".into(),
        key: "k".into(),
        owner: "o".into(),
    };
    store
        .idem_claim(key, "h".into(), Default::default(), Duration::from_secs(60))
        .await
        .unwrap();
    let file = db.sqlite_file();
    for suffix in ["", "-wal", "-shm"] {
        let mut name = file.clone().into_os_string();
        name.push(suffix);
        let mode = std::fs::metadata(&name).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{name:?} is {mode:o}");
    }
}

#[test]
fn without_database_url_postgres_tests_are_skipped_unless_postgres_is_required() {
    use crate::support::postgres_url;
    let pg = || Some("postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    assert_eq!(postgres_url(pg(), None), pg());
    assert_eq!(postgres_url(pg(), Some("1".into())), pg());
    assert_eq!(postgres_url(None, None), None, "skipped");
    assert_eq!(postgres_url(Some("sqlite://x.db".into()), Some("0".into())), None);
    let required = std::panic::catch_unwind(|| postgres_url(None, Some("1".into())));
    assert!(required.is_err(), "a run that must test PostgreSQL fails without it");
}

async fn a_failed_payment_shows_as_failed_at_once_through_orderquery(db: TestDb) {
    // Orders fall due for a check a minute after creation: only a check the failure
    // notification brought forward can fail the order within seconds.
    let t = spawn_app(
        db,
        Options {
            jobs: crate::support::prompt_but_patient_jobs(),
            ..Options::default()
        },
    )
    .await;
    let o = t.create(order_body(100)).await;
    let no = o["out_trade_no"].as_str().unwrap().to_owned();
    let (status, v) = t
        .sim_post("/simulator/pay", json!({"out_trade_no": no, "outcome": "fail"}))
        .await;
    assert_eq!(status, 200, "{v}");
    let order = t.wait_status(&no, "failed").await;
    assert!(
        order["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "failed"),
        "{order}"
    );
    assert!(t.sim_calls("orderquery").await >= 1);
    t.stop().await;
}
engines!(a_failed_payment_shows_as_failed_at_once_through_orderquery);

#[tokio::test]
async fn unknown_paths_and_methods_answer_with_the_json_error_body() {
    let t = spawn_app(TestDb::sqlite(), Options::default()).await;
    for (method, path, status, code) in [
        (Method::GET, "/nothing/here", 404, "not_found"),
        (Method::POST, "/v2/orders", 404, "not_found"),
        (Method::DELETE, "/healthz", 405, "method_not_allowed"),
        (Method::GET, "/notify/v2/pay", 405, "method_not_allowed"),
    ] {
        let r = t
            .http
            .request(method.clone(), format!("{}{path}", t.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), status, "{method} {path}");
        assert!(r.headers().contains_key("x-request-id"));
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], code, "{method} {path}: {body}");
        assert!(body["error"]["request_id"].is_string(), "{body}");
    }
    t.stop().await;
}

async fn a_retry_that_takes_over_a_refunds_key_finds_the_same_refund_and_makes_no_second(db: TestDb) {
    let t = spawn_app(
        db,
        Options {
            upstream: patient_upstream(),
            sim: Box::new(|c| c.refund_delay = Duration::from_secs(100_000_000)),
            ..Options::default()
        },
    )
    .await;
    let no = format!("TAKEOVER{}", t.engine().to_uppercase());
    t.paid_order(&no, 100).await;
    t.fault(json!({"kind": "delay", "api": "refund", "count": 1, "delay_ms": 3000}))
        .await;
    let path = format!("/v1/orders/{no}/refunds");
    let body = json!({"amount_fen": 30});
    let first = t.api(Method::POST, &path, Some(body.clone()), Some("refund-once"));
    // While the first is still waiting for WeChat Pay, its hold on the key is past the
    // lease as far as the gateway's clock goes (it has not renewed yet): a retry takes
    // the key over.
    let second = async {
        // Once the first call is held by the delay (the simulator counts it when it starts).
        eventually("the first refund call is in flight", async || {
            t.sim_faults_fired("delay").await == 1
        })
        .await;
        t.app.clock().advance(Duration::from_secs(61));
        t.api(Method::POST, &path, Some(body.clone()), Some("refund-once"))
            .await
    };
    let ((s1, r1), (s2, r2)) = tokio::join!(first, second);
    assert_eq!((s1, s2), (201, 201), "{}: {r1} {r2}", t.engine());
    assert_eq!(
        r1["out_refund_no"],
        r2["out_refund_no"],
        "{}: one refund number",
        t.engine()
    );
    let refunds = t.order(&no).await["refunds"].as_array().unwrap().len();
    assert_eq!(refunds, 1, "{}: one refund, not two", t.engine());
    // The key now answers with the refund.
    let (_, r3) = t.api(Method::POST, &path, Some(body), Some("refund-once")).await;
    assert_eq!(r3["out_refund_no"], r1["out_refund_no"]);
    t.stop().await;
}
engines!(multi_thread a_retry_that_takes_over_a_refunds_key_finds_the_same_refund_and_makes_no_second);
