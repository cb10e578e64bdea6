//! `wxpay serve` killed with SIGKILL at random instants under a burst of order creations and
//! payment notifications, round after round, then restarted: every write a client saw
//! acknowledged is there exactly once, every committed payment has its outbox event, the
//! notifications that got no answer are sent again (as WeChat Pay does) and apply once, and
//! SQLite's `PRAGMA integrity_check` says `ok`. On PostgreSQL, also with two instances killed
//! alternately while the other keeps serving. And events killed in the middle of their
//! delivery to the webhook: delivered after the restart, with the ids they were stored with.
//!
//! How hard: `WXPAY_CRASH_ROUNDS` rounds (1 by default) of `WXPAY_CRASH_CLIENTS` concurrent
//! clients (16 by default); the trust report's `--full` mode runs 20 rounds of 1,000, the
//! reliability checklist's items 33 and 34.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use sqlx::Connection;

use crate::serve::{
    Front, PgDb, Server, TOKEN, client, paid_notification, scratch_dir, simulator, wait_for, write_config,
};

const SUCCESS: &str =
    "<xml><return_code><![CDATA[SUCCESS]]></return_code><return_msg><![CDATA[OK]]></return_msg></xml>";

/// Rounds and concurrent clients, from the environment.
fn scale() -> (usize, usize) {
    let var = |name: &str, default: usize| {
        std::env::var(name)
            .ok()
            .map(|v| v.parse().unwrap_or_else(|_| panic!("{name}={v} is not a number")))
            .unwrap_or(default)
    };
    (var("WXPAY_CRASH_ROUNDS", 1), var("WXPAY_CRASH_CLIENTS", 16))
}

/// A small deterministic generator for the kill instants, seeded from the clock and printed,
/// so that a failing round can be replayed with `WXPAY_CRASH_SEED`.
struct Rng(u64);

impl Rng {
    fn new() -> (Rng, u64) {
        let seed = std::env::var("WXPAY_CRASH_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
                    | 1
            });
        (Rng(seed), seed)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// What the clients got acknowledged, over every round.
#[derive(Default)]
struct Acks {
    /// out_trade_no → amount of each order answered 201.
    orders: HashMap<String, u64>,
    /// out_trade_no → transaction_id of each notification answered SUCCESS.
    payments: HashMap<String, String>,
    /// Notifications of acknowledged orders that got no answer: WeChat Pay sends them again.
    unanswered: Vec<(String, u64, String)>,
    /// Every HTTP answer that was neither: a 5xx or "database is locked" is a defect.
    unexpected: Vec<String>,
    /// Requests cut off by a kill.
    cut_off: usize,
}

/// One client: creates orders and posts their payment notifications until `stop`.
async fn client_loop(
    http: reqwest::Client,
    base: String,
    prefix: String,
    acks: Arc<Mutex<Acks>>,
    stop: Arc<AtomicBool>,
) {
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let no = format!("{prefix}X{i:04}");
        let amount = 100 + i % 50;
        let body = json!({"description": "crash test", "amount_fen": amount, "openid": "oCrash", "out_trade_no": no});
        match http
            .post(format!("{base}/v1/orders"))
            .bearer_auth(TOKEN)
            .json(&body)
            .send()
            .await
        {
            Ok(r) if r.status() == 201 => {
                acks.lock().unwrap().orders.insert(no.clone(), amount);
            }
            Ok(r) => {
                let status = r.status();
                let text = r.text().await.unwrap_or_default();
                acks.lock()
                    .unwrap()
                    .unexpected
                    .push(format!("order {no}: {status} {text}"));
                continue;
            }
            Err(_) => {
                acks.lock().unwrap().cut_off += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
        }
        let tx = format!("4200{prefix}{i:06}");
        let sent = http
            .post(format!("{base}/notify/v2/pay"))
            .body(paid_notification(&no, amount, &tx))
            .send()
            .await;
        let answer = match sent {
            Ok(r) => {
                let status = r.status();
                r.text().await.map(|t| (status, t))
            }
            Err(e) => Err(e),
        };
        let mut acks = acks.lock().unwrap();
        match answer {
            Ok((status, t)) if status == 200 && t == SUCCESS => {
                acks.payments.insert(no, tx);
            }
            Ok((status, t)) => acks.unexpected.push(format!("notification {no}: {status} {t}")),
            Err(_) => {
                acks.cut_off += 1;
                acks.unanswered.push((no, amount, tx));
            }
        }
    }
}

/// A database the test reads directly, whichever engine.
enum Db {
    Sqlite(std::path::PathBuf),
    Postgres(String),
}

impl Db {
    /// Rows of text columns.
    async fn rows(&self, sql: &str) -> Vec<Vec<String>> {
        match self {
            Db::Sqlite(path) => {
                let c = rusqlite::Connection::open(path).unwrap();
                let mut st = c.prepare(sql).unwrap();
                let n = st.column_count();
                st.query_map([], |r| {
                    (0..n)
                        .map(|i| {
                            r.get::<_, rusqlite::types::Value>(i).map(|v| match v {
                                rusqlite::types::Value::Integer(i) => i.to_string(),
                                rusqlite::types::Value::Text(t) => t,
                                rusqlite::types::Value::Null => String::new(),
                                other => format!("{other:?}"),
                            })
                        })
                        .collect::<Result<Vec<_>, _>>()
                })
                .unwrap()
                .collect::<Result<Vec<_>, _>>()
                .unwrap()
            }
            Db::Postgres(url) => {
                use sqlx::Row;
                let mut c = sqlx::PgConnection::connect(url).await.unwrap();
                let rows = sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
                    .fetch_all(&mut c)
                    .await
                    .unwrap();
                rows.iter()
                    .map(|r| {
                        (0..r.len())
                            .map(|i| r.try_get::<Option<String>, _>(i).unwrap().unwrap_or_default())
                            .collect()
                    })
                    .collect()
            }
        }
    }

    /// SQLite's own check of the file, as the killed process left it.
    fn integrity(&self) -> Option<String> {
        match self {
            Db::Sqlite(path) => {
                let c = rusqlite::Connection::open(path).unwrap();
                Some(c.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap())
            }
            Db::Postgres(_) => None,
        }
    }
}

/// Checks the database against everything acknowledged so far.
async fn check(db: &Db, acks: &Acks, resent: &HashMap<String, String>, what: &str) {
    let orders: HashMap<String, (u64, String, String)> = db
        .rows("SELECT out_trade_no, CAST(amount_fen AS TEXT), status, COALESCE(transaction_id, '') FROM orders")
        .await
        .into_iter()
        .map(|r| (r[0].clone(), (r[1].parse().unwrap(), r[2].clone(), r[3].clone())))
        .collect();
    for (no, amount) in &acks.orders {
        let stored = orders
            .get(no)
            .unwrap_or_else(|| panic!("{what}: acknowledged order {no} lost"));
        assert_eq!(stored.0, *amount, "{what}: {no} stored with another amount");
    }
    for (no, tx) in acks.payments.iter().chain(resent) {
        let (_, status, stored_tx) = &orders[no];
        assert_eq!(status, "paid", "{what}: acknowledged payment of {no} lost");
        assert_eq!(stored_tx, tx, "{what}: {no}");
    }
    let twice = db
        .rows(
            "SELECT CAST(order_id AS TEXT) FROM order_events WHERE kind = 'paid' GROUP BY order_id HAVING COUNT(*) > 1",
        )
        .await;
    assert!(twice.is_empty(), "{what}: orders paid twice: {twice:?}");
    // Every committed payment has exactly its one event in the outbox, in the same commit.
    let unannounced = db
        .rows(
            "SELECT o.out_trade_no FROM orders o WHERE o.status = 'paid' AND \
             (SELECT COUNT(*) FROM outbox x WHERE x.order_id = o.id AND x.type = 'order.paid') <> 1",
        )
        .await;
    assert!(
        unannounced.is_empty(),
        "{what}: paid orders without their one event: {unannounced:?}"
    );
    let orphans = db
        .rows(
            "SELECT x.id FROM outbox x JOIN orders o ON o.id = x.order_id \
             WHERE x.type = 'order.paid' AND o.status <> 'paid'",
        )
        .await;
    assert!(
        orphans.is_empty(),
        "{what}: events of payments that did not commit: {orphans:?}"
    );
}

/// Rounds of bursts against `instances` servers on `database_url`, one killed at a random
/// instant each round (alternately, with two), restarted, and everything checked.
async fn crash_rounds(database_url: &str, db: Db, dir: &Path, instances: usize) {
    let (rounds, clients) = scale();
    // Each instance is killed at least once.
    let rounds = rounds.max(instances);
    let (mut rng, seed) = Rng::new();
    let engine = if database_url.starts_with("postgres") {
        "postgres"
    } else {
        "sqlite"
    };
    eprintln!("crash test: {rounds} rounds × {clients} clients, WXPAY_CRASH_SEED={seed}");
    let what = format!("{engine}, {instances} instance(s), seed {seed}");
    let http = client();
    let sim = simulator().await;
    let mut fronts = Vec::new();
    let mut servers = Vec::new();
    let mut configs = Vec::new();
    for n in 0..instances {
        let front = Front::bind().await;
        let own = dir.join(format!("i{n}"));
        std::fs::create_dir_all(&own).unwrap();
        let config = write_config(&own, &front.url, database_url, sim.base_url(), None);
        let log = dir.join(format!("serve-{n}.log"));
        let mut server = Server::start_with(&config, &log, &[], "info");
        front.forward_to(&server);
        server.ready(&http).await;
        if engine == "sqlite" {
            // The durability the promises rest on, as the server reports it at start.
            wait_for("the SQLite store reports its durability", async || {
                std::fs::read_to_string(&log).unwrap_or_default().lines().any(|l| {
                    l.contains("SQLite store open") && l.contains("journal_mode=wal") && l.contains("synchronous=2")
                })
            })
            .await;
        }
        fronts.push(front);
        servers.push(server);
        configs.push(config);
    }
    let mut acks = Acks::default();
    let mut resent: HashMap<String, String> = HashMap::new();
    let mut kills_at = Vec::new();
    for round in 0..rounds {
        let shared = Arc::new(Mutex::new(Acks::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let tasks: Vec<_> = (0..clients)
            .map(|c| {
                let base = servers[c % instances].url.clone();
                tokio::spawn(client_loop(
                    http.clone(),
                    base,
                    format!("R{round:02}C{c:04}"),
                    shared.clone(),
                    stop.clone(),
                ))
            })
            .collect();
        // Once the burst has acknowledged something, a random instant within the next 1.5 s.
        let started = Instant::now();
        while shared.lock().unwrap().payments.is_empty() && started.elapsed() < Duration::from_secs(30) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let wait = rng.below(1500);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        let victim = round % instances;
        servers[victim].kill();
        kills_at.push(started.elapsed().as_millis());
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            t.await.unwrap();
        }
        let got = std::mem::take(&mut *shared.lock().unwrap());
        assert!(
            got.unexpected.is_empty(),
            "{what}, round {round}: every answer was a success: {} were not, first {:?}",
            got.unexpected.len(),
            got.unexpected.first()
        );
        assert!(!got.payments.is_empty(), "{what}, round {round}: the burst ran");
        if let Some(verdict) = db.integrity() {
            assert_eq!(verdict, "ok", "{what}, round {round}: integrity_check after SIGKILL");
        }
        servers[victim] = Server::start(&configs[victim], &dir.join(format!("serve-{victim}.log")));
        fronts[victim].forward_to(&servers[victim]);
        servers[victim].ready(&http).await;
        // WeChat Pay sends again what got no answer: each applies, once.
        for (no, amount, tx) in &got.unanswered {
            let r = http
                .post(format!("{}/notify/v2/pay", servers[0].url))
                .body(paid_notification(no, *amount, tx))
                .send()
                .await
                .unwrap();
            assert_eq!(r.text().await.unwrap(), SUCCESS, "{what}: {no} sent again");
            resent.insert(no.clone(), tx.clone());
        }
        acks.orders.extend(got.orders);
        acks.payments.extend(got.payments);
        acks.cut_off += got.cut_off;
        acks.unanswered.extend(got.unanswered);
        check(&db, &acks, &resent, &format!("{what}, after round {round}")).await;
    }
    crate::figure(
        &["33", "34"],
        format!(
            "{engine}, {instances} instance(s): {rounds} rounds × {clients} concurrent clients, SIGKILL {} ms after the burst started → {} orders and {} payments acknowledged, {} requests cut off, {} unanswered notifications sent again: all present once, every payment with its one outbox event{}",
            kills_at.iter().map(u128::to_string).collect::<Vec<_>>().join("/"),
            acks.orders.len(),
            acks.payments.len(),
            acks.cut_off,
            resent.len(),
            if engine == "sqlite" {
                ", integrity_check ok each round"
            } else {
                ""
            }
        ),
    );
    for mut s in servers {
        s.terminate();
    }
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_sigkills_mid_burst_every_acknowledged_order_and_payment_is_there_exactly_once_on_sqlite() {
    let dir = scratch_dir("crash");
    let file = dir.join("wxpay.db");
    crash_rounds(
        &format!("sqlite://{}", file.display()),
        Db::Sqlite(file.clone()),
        &dir,
        1,
    )
    .await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_sigkills_mid_burst_every_acknowledged_order_and_payment_is_there_exactly_once_on_postgres() {
    let Some(pg) = PgDb::create().await else { return };
    let dir = scratch_dir("crash-pg");
    crash_rounds(&pg.url, Db::Postgres(pg.url.clone()), &dir, 1).await;
    drop(pg);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_postgres_killed_alternately_lose_no_acknowledged_write() {
    let Some(pg) = PgDb::create().await else { return };
    let dir = scratch_dir("crash-two");
    crash_rounds(&pg.url, Db::Postgres(pg.url.clone()), &dir, 2).await;
    drop(pg);
    let _ = std::fs::remove_dir_all(dir);
}

/// What the webhook receiver of [`events_cut_off_by_a_sigkill`] saw: each delivery's
/// `Wxpay-Event-Id` header and body, and whether it was answered.
#[derive(Default)]
struct Deliveries {
    /// While set, a delivery is recorded and never answered: the gateway is mid-delivery.
    hang: bool,
    seen: Vec<(String, serde_json::Value, bool)>,
}

/// A receiver that records every delivery, answering 204 unless told to hang.
async fn hanging_receiver() -> (Arc<Mutex<Deliveries>>, String) {
    let state = Arc::new(Mutex::new(Deliveries {
        hang: true,
        ..Deliveries::default()
    }));
    let shared = state.clone();
    let app = axum::Router::new().route(
        "/events",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: String| {
            let shared = shared.clone();
            async move {
                let id = headers["wxpay-event-id"].to_str().unwrap().to_owned();
                let event: serde_json::Value = serde_json::from_str(&body).unwrap();
                let hang = {
                    let mut s = shared.lock().unwrap();
                    let hang = s.hang;
                    s.seen.push((id, event, !hang));
                    hang
                };
                if hang {
                    std::future::pending::<()>().await;
                }
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (state, format!("http://{addr}/events"))
}

/// Payments committed, their events sent to a receiver that does not answer, the gateway
/// killed with SIGKILL in the middle of those deliveries, then restarted: each event arrives
/// again and is acknowledged, with the id it was stored with and that the first, cut-off
/// delivery carried, so that a receiver which keeps the ids it has seen applies each once.
async fn events_cut_off_by_a_sigkill(database_url: &str, db: Db, dir: &Path) {
    const ORDERS: usize = 10;
    let engine = if database_url.starts_with("postgres") {
        "postgres"
    } else {
        "sqlite"
    };
    let http = client();
    let sim = simulator().await;
    let (deliveries, hook) = hanging_receiver().await;
    let front = Front::bind().await;
    let config = write_config(dir, &front.url, database_url, sim.base_url(), Some(&hook));
    let log = dir.join("serve.log");
    let mut server = Server::start_with(&config, &log, &[], "info");
    front.forward_to(&server);
    server.ready(&http).await;
    let mut numbers = Vec::new();
    for i in 0..ORDERS {
        let no = format!("OUTBOX{i:04}");
        let r = http
            .post(format!("{}/v1/orders", server.url))
            .bearer_auth(TOKEN)
            .json(&json!({"description": "outbox", "amount_fen": 700 + i, "openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o", "out_trade_no": no}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        numbers.push(no);
    }
    // Paid at once, so that one round of deliveries takes them all.
    let mut paying = tokio::task::JoinSet::new();
    for (i, no) in numbers.iter().enumerate() {
        let (http, url) = (http.clone(), server.url.clone());
        let body = paid_notification(no, 700 + i as u64, &format!("4200OUTBOX{i:08}"));
        paying.spawn(async move {
            let r = http
                .post(format!("{url}/notify/v2/pay"))
                .body(body)
                .send()
                .await
                .unwrap();
            r.text().await.unwrap()
        });
    }
    while let Some(answer) = paying.join_next().await {
        assert_eq!(answer.unwrap(), SUCCESS);
    }
    // Every event is committed and on its way: the receiver holds each delivery open. (A
    // round of deliveries ends when its slowest does, at the webhook's 10 s timeout, so an
    // event paid after the round began may wait for the next.)
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ids: std::collections::HashSet<String> =
            deliveries.lock().unwrap().seen.iter().map(|d| d.0.clone()).collect();
        if ids.len() == ORDERS {
            break;
        }
        assert!(Instant::now() < deadline, "{engine}: the first deliveries never came");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stored: HashMap<String, (String, String)> = db
        .rows(
            "SELECT o.out_trade_no, x.id, CASE WHEN x.delivered_at IS NULL THEN 'waiting' ELSE 'delivered' END \
             FROM outbox x JOIN orders o ON o.id = x.order_id WHERE x.type = 'order.paid'",
        )
        .await
        .into_iter()
        .map(|r| (r[0].clone(), (r[1].clone(), r[2].clone())))
        .collect();
    assert_eq!(stored.len(), ORDERS, "{engine}: one event per payment");
    assert!(
        stored.values().all(|(_, state)| state == "waiting"),
        "{engine}: nothing was acknowledged before the kill: {stored:?}"
    );
    server.kill();
    // A delivery the killed process had sent but the receiver had not yet read is read
    // now, while the receiver still holds deliveries open: it counts as cut off.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let cut_off: Vec<(String, serde_json::Value)> = {
        let mut d = deliveries.lock().unwrap();
        d.hang = false;
        d.seen.iter().map(|(id, e, _)| (id.clone(), e.clone())).collect()
    };
    let killed = Instant::now();
    let mut server = Server::start_with(&config, &log, &[], "info");
    front.forward_to(&server);
    server.ready(&http).await;
    // The claims of the killed process lapse after their lease (a minute); then the events
    // are delivered again.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let answered = deliveries.lock().unwrap().seen.iter().filter(|d| d.2).count();
        let delivered = db
            .rows("SELECT id FROM outbox WHERE type = 'order.paid' AND delivered_at IS NOT NULL")
            .await
            .len();
        if answered >= ORDERS && delivered == ORDERS {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{engine}: {answered} deliveries answered and {delivered} events marked delivered after the restart"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = killed.elapsed();
    let seen = deliveries.lock().unwrap().seen.clone();
    for no in &numbers {
        let id = &stored[no].0;
        let of_order = |answered: bool| {
            seen.iter()
                .filter(|(_, e, a)| *a == answered && e["data"]["out_trade_no"] == no.as_str())
                .collect::<Vec<_>>()
        };
        for (header, event, _) in of_order(false).into_iter().chain(of_order(true)) {
            assert_eq!(header, id, "{engine}: {no}'s deliveries carry its stored id");
            assert_eq!(event["id"], id.as_str(), "{engine}: {no}'s body names its stored id");
            assert_eq!(event["type"], "order.paid");
        }
        assert!(!of_order(false).is_empty(), "{engine}: {no} was cut off in delivery");
        assert_eq!(
            of_order(true).len(),
            1,
            "{engine}: {no} acknowledged once after the restart"
        );
    }
    assert_eq!(seen.len(), cut_off.len() + ORDERS, "{engine}: no other event was sent");
    crate::figure(
        &["35"],
        format!(
            "{engine}: {ORDERS} payments committed, their events held open by the receiver, SIGKILL mid-delivery → after the restart each delivered again {:.0} s later (its claim's lease) with the id it was stored with and the cut-off delivery carried, {ORDERS} acknowledged once each",
            after.as_secs_f64()
        ),
    );
    server.terminate();
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_cut_off_by_a_sigkill_is_delivered_after_the_restart_with_its_stored_id_on_sqlite() {
    let dir = scratch_dir("outbox-crash");
    let file = dir.join("wxpay.db");
    events_cut_off_by_a_sigkill(&format!("sqlite://{}", file.display()), Db::Sqlite(file.clone()), &dir).await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_cut_off_by_a_sigkill_is_delivered_after_the_restart_with_its_stored_id_on_postgres() {
    let Some(pg) = PgDb::create().await else { return };
    let dir = scratch_dir("outbox-crash-pg");
    events_cut_off_by_a_sigkill(&pg.url, Db::Postgres(pg.url.clone()), &dir).await;
    drop(pg);
    let _ = std::fs::remove_dir_all(dir);
}
