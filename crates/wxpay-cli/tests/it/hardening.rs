//! What an attack and a first-time user found (issue 9), tried on the `wxpay` binary.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use wxpay_simulator::{TEST_APPID, TEST_MCH_ID};

use crate::serve::{Front, Server, client, closed_port, scratch_dir, simulator, write_config};

#[tokio::test(flavor = "multi_thread")]
async fn text_from_outside_is_logged_escaped_and_cannot_forge_a_log_line_in_either_format() {
    let sim = simulator().await;
    let http = client();
    let forged_line = "2026-12-03T08:00:00.000000Z  INFO order paid out_trade_no=FORGED-LINE";
    for format in ["pretty", "json"] {
        let dir = scratch_dir("log-injection");
        let front = Front::bind().await;
        let db = format!("sqlite://{}", dir.join("wxpay.db").display());
        let config = write_config(&dir, &front.url, &db, sim.base_url(), None);
        let log = dir.join("serve.log");
        let mut server = Server::start_with(&config, &log, &["--log-format", format], "info");
        front.forward_to(&server);
        server.ready(&http).await;
        let url = server.url.clone();
        for body in [
            // return_msg, shown in the reason of the rejection.
            format!(
                "<xml><return_code>FAIL</return_code><return_msg><![CDATA[bad\n{forged_line}\r\n{forged_line}]]></return_msg>\
                 <appid>{TEST_APPID}</appid><mch_id>{TEST_MCH_ID}</mch_id></xml>"
            ),
            // A sign_type that names itself in the reason.
            format!(
                "<xml><return_code>SUCCESS</return_code><result_code>SUCCESS</result_code><appid>{TEST_APPID}</appid>\
                 <mch_id>{TEST_MCH_ID}</mch_id><out_trade_no>X1</out_trade_no><sign_type><![CDATA[MD5\n{forged_line}]]></sign_type>\
                 <sign>00000000000000000000000000000000</sign></xml>"
            ),
            // An unknown merchant whose number carries the line.
            format!(
                "<xml><return_code>SUCCESS</return_code><appid>{TEST_APPID}</appid><mch_id><![CDATA[1\n{forged_line}]]></mch_id></xml>"
            ),
        ] {
            let r = http
                .post(format!("{url}/notify/v2/pay"))
                .header("Content-Type", "text/xml")
                .body(body)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 400);
        }
        server.terminate();
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(
            text.contains("FORGED-LINE"),
            "{format}: the rejections were logged:\n{text}"
        );
        for line in text.lines() {
            if format == "json" {
                assert!(
                    serde_json::from_str::<serde_json::Value>(line).is_ok(),
                    "not a JSON line: {line}"
                );
            }
            assert!(
                !line.contains("FORGED-LINE") || line.contains("notification rejected"),
                "{format}: a forged log line:\n{line}\n\nin\n{text}"
            );
        }
        assert_eq!(
            text.matches("notification rejected").count(),
            3,
            "{format}: one line per rejection:\n{text}"
        );
    }
    sim.shutdown().await;
}

#[test]
fn the_demo_refuses_an_address_other_machines_reach_unless_told_public() {
    let dir = scratch_dir("demo-public");
    for listen in ["0.0.0.0:0", "[::]:0"] {
        let run = crate::wxpay(
            &["demo", "--listen", listen, "--data-dir", dir.to_str().unwrap()],
            None,
            &[],
        );
        assert_eq!(run.code, 2, "{listen}: {}", run.stderr);
        assert!(
            run.stderr.contains("--public") && run.stderr.contains("API token"),
            "{}",
            run.stderr
        );
    }
    // With --public it starts, and says what that exposes.
    let mut child = crate::wxpay_command()
        .args(["demo", "--public", "--listen", "0.0.0.0:0", "--data-dir"])
        .arg(dir.join("public"))
        .env("WXPAY_LOG", crate::log_level("warn"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut said = String::new();
    {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            if !crate::serve::announces_a_secret(&line) {
                crate::scan_line(&line);
            }
            said.push_str(&line);
            said.push('\n');
            if line.contains("open the demo") {
                break;
            }
        }
    }
    crate::serve::list_demo_secrets(&dir.join("public"));
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        said.contains("WARNING: --public") && said.contains("API token"),
        "{said}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// A configuration with only what `wxpay migrate` reads.
fn database_only(dir: &Path, url: &str) -> std::path::PathBuf {
    let path = dir.join("wxpay.toml");
    std::fs::write(&path, format!("[database]\nurl = \"{url}\"\n")).unwrap();
    path
}

#[test]
fn a_database_url_of_an_unknown_kind_or_a_missing_folder_is_refused_by_name() {
    let dir = scratch_dir("db-url");
    let config = database_only(&dir, "mysql://root@localhost/x");
    let run = crate::output(
        crate::wxpay_command()
            .args(["migrate", "--config"])
            .arg(&config)
            .current_dir(&dir),
    );
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("\"mysql\" is not a database"), "{stderr}");
    assert!(!dir.join("mysql:").exists(), "a SQLite file was made of the URL");

    let config = database_only(&dir, "sqlite:///nonexistent/dir/x.db");
    let run = crate::wxpay(&["migrate", "--config", config.to_str().unwrap()], None, &[]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("/nonexistent/dir"), "{}", run.stderr);
    assert!(!Path::new("/nonexistent").exists(), "the folder was made");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn postgres_that_cannot_be_reached_is_named_with_its_host_port_and_cause_within_seconds() {
    let dir = scratch_dir("pg-url");
    let port = closed_port();
    let config = database_only(&dir, &format!("postgres://postgres@127.0.0.1:{port}/wxpay"));
    let started = std::time::Instant::now();
    let run = crate::wxpay(&["migrate", "--config", config.to_str().unwrap()], None, &[]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(started.elapsed() < Duration::from_secs(8), "{:?}", started.elapsed());
    assert!(
        run.stderr.contains(&format!(
            "cannot connect to PostgreSQL at 127.0.0.1:{port}: connection refused"
        )),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("database: database"), "{}", run.stderr);

    // A database that does not exist, on a server that does.
    if let Some(admin) = crate::serve::postgres_admin_url() {
        let url = crate::serve::with_database(&admin, "wxpay_no_such_database");
        let config = database_only(&dir, &url);
        let run = crate::wxpay(&["migrate", "--config", config.to_str().unwrap()], None, &[]);
        assert_eq!(run.code, 2, "{}", run.stderr);
        assert!(
            run.stderr
                .contains("database \"wxpay_no_such_database\" does not exist"),
            "{}",
            run.stderr
        );
        assert!(!run.stderr.contains(" at line "), "{}", run.stderr);
        assert!(!run.stderr.contains("database: database"), "{}", run.stderr);
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_shows_a_failed_payment_at_once_with_beijing_times() {
    let scratch = scratch_dir("demo-fail");
    let (_demo, base) = crate::serve::start_demo(&scratch.join("data"));
    let http = client();
    let order = crate::serve::demo_order(&http, &base, "bob", "tea", "demo-fail-1").await;
    let prepay = order["prepay_id"].as_str().unwrap();
    let no = order["out_trade_no"].as_str().unwrap();
    // The checkout's Fail button.
    crate::serve::demo_checkout(&http, &base, prepay, "fail").await;
    // The demo checks unconfirmed orders after 30 s: failed sooner means the failure
    // notification's own query did it.
    let started = std::time::Instant::now();
    let mut view = serde_json::Value::Null;
    while started.elapsed() < Duration::from_secs(5) {
        view = crate::serve::demo_view(&http, &base, no).await;
        if view["order"]["status"] == "failed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(view["order"]["status"], "failed", "{view}");
    // Every history entry carries its Beijing time, with the zone said.
    let events = view["order"]["events"].as_array().unwrap();
    assert!(events.len() >= 2, "{view}");
    for e in events {
        let at = e["at_beijing"].as_str().unwrap_or_default();
        assert!(at.len() == 25 && at.ends_with(" UTC+8"), "{e}");
    }
    let _ = std::fs::remove_dir_all(scratch);
}

/// Reliability checklist item 37: the demo (gateway and simulator, APIv2 and APIv3) runs at
/// TRACE through logins, payments, refunds, forged notifications and the console; then its
/// whole log, every answer it gave, its metrics and every byte of its database (freed pages
/// and the WAL included) are searched for its secrets. Only the two lines that print the
/// API token and the console password on purpose may hold them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_trace_level_no_secret_reaches_a_log_line_an_answer_a_metric_or_a_database_byte() {
    use md5::Digest;
    use serde_json::{Value, json};
    use wxpay_simulator::{TEST_API_KEY, TEST_APIV3_KEY, TEST_APP_SECRET};

    use crate::serve::{console_shows_the_order, demo_checkout, demo_view, start_demo_logging, wait_for};

    let scratch = scratch_dir("secrets");
    let dir = scratch.join("data");
    let (mut demo, base, mut lines, log) = start_demo_logging(&dir, "trace");
    let http = client();
    let mut answers: Vec<String> = Vec::new();
    let post = async |path: &str, body: Value| -> (u16, String) {
        let r = http.post(format!("{base}{path}")).json(&body).send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    };
    let (_, login) = post("/demo/backend/login", json!({"user": "dave"})).await;
    let login: Value = serde_json::from_str(&login).unwrap();
    answers.push(login.to_string());
    for (api, openid, item, refund_fen) in [
        ("v2", login["openid"].as_str().unwrap(), "latte", 1400),
        ("v3", login["openids"]["v3"].as_str().unwrap(), "cake", 1995),
    ] {
        let (status, order) = post(
            "/demo/backend/orders",
            json!({"item": item, "openid": openid, "key": format!("secrets-{api}"), "api": api}),
        )
        .await;
        assert_eq!(status, 201, "{order}");
        answers.push(order.clone());
        let order: Value = serde_json::from_str(&order).unwrap();
        let prepay = order["prepay_id"].as_str().unwrap();
        let checkout = http
            .get(format!("{base}/simulator/checkout/{prepay}"))
            .send()
            .await
            .unwrap();
        answers.push(checkout.text().await.unwrap());
        demo_checkout(&http, &base, prepay, "success").await;
        let no = order["out_trade_no"].as_str().unwrap().to_owned();
        let view = async || {
            http.get(format!("{base}/demo/backend/orders/{no}?api={api}"))
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        };
        wait_for("the order is paid", async || view().await["order"]["status"] == "paid").await;
        let (status, refund) = post(
            &format!("/demo/backend/orders/{no}/refund"),
            json!({"amount_fen": refund_fen, "key": format!("secrets-refund-{api}"), "api": api}),
        )
        .await;
        assert_eq!(status, 201, "{refund}");
        answers.push(refund);
        wait_for("the refund succeeds", async || {
            view().await["webhook_events"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["type"] == "refund.succeeded")
        })
        .await;
        answers.push(view().await.to_string());
        if api == "v2" {
            answers.push(demo_view(&http, &base, &no).await.to_string());
            answers.extend(console_shows_the_order(&base, &dir, &no).await);
        }
    }
    // Forged and unreadable notifications, answered and logged as rejections.
    for (path, body) in [
        (
            "/notify/v2/pay",
            format!(
                "<xml><return_code>SUCCESS</return_code><appid>{TEST_APPID}</appid><mch_id>{TEST_MCH_ID}</mch_id>\
                 <out_trade_no>X1</out_trade_no><sign>00000000000000000000000000000000</sign></xml>"
            ),
        ),
        (
            "/notify/v2/refund",
            "<xml><return_code>SUCCESS</return_code><req_info>AAAA</req_info></xml>".into(),
        ),
        ("/notify/v3/v3", "{\"id\":\"x\",\"resource\":{}}".into()),
    ] {
        let r = http.post(format!("{base}{path}")).body(body).send().await.unwrap();
        answers.push(r.text().await.unwrap());
    }
    for path in ["/metrics", "/openapi.json", "/healthz", "/readyz"] {
        answers.push(
            http.get(format!("{base}{path}"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap(),
        );
    }
    // The database as it is while the demo runs, its WAL included (a clean stop checkpoints
    // and removes the WAL), and again after the stop.
    let mut database = Vec::new();
    for file in ["wxpay.db", "wxpay.db-wal"] {
        let bytes = std::fs::read(dir.join(file)).unwrap_or_default();
        assert!(!bytes.is_empty(), "{file} while the demo runs");
        database.extend(bytes);
    }
    demo.terminate();
    // Until the demo's standard error closes.
    while let Ok(line) = log.recv_timeout(Duration::from_secs(10)) {
        lines.push(line);
    }
    assert!(
        lines.iter().any(|l| l.contains("TRACE")),
        "the demo logged at TRACE: {} lines",
        lines.len()
    );

    // The secrets: the keys, the MD5 of the APIv2 key (the refund notifications' AES key),
    // the merchant's private key, the app secret, the webhook's and console's secrets, the
    // API token, and the tail of a signed string.
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap().trim().to_owned();
    let md5: String = md5::Md5::digest(TEST_API_KEY.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let keys_dir = dir.join("simulator-keys");
    let mut private_keys = Vec::new();
    for entry in crate::secret_scan::walk(&keys_dir) {
        let text = std::fs::read_to_string(&entry).unwrap_or_default();
        if text.contains("PRIVATE KEY") {
            // A line of the key's base64 body: long enough never to occur by chance.
            let line = text.lines().nth(1).unwrap().to_owned();
            private_keys.push((entry.display().to_string(), line));
        }
    }
    assert!(
        private_keys.len() >= 2,
        "the merchant's and WeChat Pay's private keys: {private_keys:?}"
    );
    let mut secrets: Vec<(String, String)> = vec![
        ("the APIv2 key".into(), TEST_API_KEY.into()),
        ("the MD5 of the APIv2 key".into(), md5.clone()),
        ("the MD5 of the APIv2 key, upper case".into(), md5.to_uppercase()),
        ("the APIv3 key".into(), TEST_APIV3_KEY.into()),
        ("the app secret".into(), TEST_APP_SECRET.into()),
        ("the webhook secret".into(), read("webhook-secret")),
        ("a private key's PEM".into(), "PRIVATE KEY".into()),
        ("a signed string's key".into(), "&key=".into()),
    ];
    secrets.extend(
        private_keys
            .into_iter()
            .map(|(file, line)| (format!("the private key {file}"), line)),
    );
    // Printed once each, on purpose, on lines of their own: only there may each be found.
    let token = read("api-token");
    let password = read("console-password");
    let announced = |secret: &str, l: &str| {
        (secret == password && l.starts_with("console: ")) || (secret == token && l.contains("(Authorization: Bearer "))
    };
    secrets.push(("the API token".into(), token.clone()));
    secrets.push(("the console password".into(), password.clone()));

    database.extend(std::fs::read(dir.join("wxpay.db")).unwrap());
    let database = String::from_utf8_lossy(&database).into_owned();
    let mut found = Vec::new();
    for (what, secret) in &secrets {
        for l in lines
            .iter()
            .filter(|l| l.contains(secret.as_str()) && !announced(secret, l))
        {
            found.push(format!("{what} in the log: {l}"));
        }
        for a in answers.iter().filter(|a| a.contains(secret.as_str())) {
            found.push(format!("{what} in an answer: {a}"));
        }
        if database.contains(secret.as_str()) {
            found.push(format!("{what} in the database"));
        }
    }
    assert!(found.is_empty(), "{} leaks:\n{}", found.len(), found.join("\n"));
    // The search sees what it searches: the printed token and password are found, where
    // they were printed on purpose.
    for (what, secret) in &secrets[secrets.len() - 2..] {
        assert!(
            lines
                .iter()
                .any(|l| l.contains(secret.as_str()) && announced(secret, l)),
            "{what} was printed"
        );
    }
    crate::figure(
        &["37"],
        format!(
            "the demo at TRACE through {} log lines, {} answers and a {} KiB database (v2 and v3: logins, payments, refunds, forged notifications, the console): 0 of {} secrets found",
            lines.len(),
            answers.len(),
            database.len() / 1024,
            secrets.len()
        ),
    );
    let _ = std::fs::remove_dir_all(scratch);
}

/// Reliability checklist items 2, 4, 6 and 22: a rejected notification is an alert, a
/// structured WARN record naming the order and why (both amounts for a wrong one), that the
/// operator's log pipeline can match on. Read from `wxpay serve`'s JSON log.
#[tokio::test(flavor = "multi_thread")]
async fn each_refused_notification_is_a_warning_naming_the_order_and_why() {
    use serde_json::{Value, json};

    use crate::serve::{TOKEN, paid_notification};

    let sim = simulator().await;
    let http = client();
    let dir = scratch_dir("alerts");
    let db = format!("sqlite://{}", dir.join("wxpay.db").display());
    let front = Front::bind().await;
    let config = write_config(&dir, &front.url, &db, sim.base_url(), None);
    let log = dir.join("serve.log");
    let mut server = Server::start_with(&config, &log, &["--log-format", "json"], "info");
    front.forward_to(&server);
    server.ready(&http).await;
    let url = server.url.clone();
    let mut numbers = Vec::new();
    for _ in 0..2 {
        let r = http
            .post(format!("{url}/v1/orders"))
            .bearer_auth(TOKEN)
            .json(&json!({"description": "alerts", "amount_fen": 500, "openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let o: Value = r.json().await.unwrap();
        numbers.push(o["out_trade_no"].as_str().unwrap().to_owned());
    }
    let (a, b) = (&numbers[0], &numbers[1]);
    let unsigned = {
        let signed = paid_notification(a, 500, "4200000000000000000000000901");
        let start = signed.find("<sign>").unwrap();
        let end = signed.find("</sign>").unwrap() + "</sign>".len();
        format!("{}{}", &signed[..start], &signed[end..])
    };
    // WxJava #1890: neither a signature nor a return_code.
    let bare = unsigned
        .replace("<return_code><![CDATA[SUCCESS]]></return_code>", "")
        .replace("<return_code>SUCCESS</return_code>", "");
    assert!(!bare.contains("return_code"), "{bare}");
    // wechat-pay #54: no appid and no mch_id (and so no merchant to verify it with).
    let anonymous = {
        let signed = paid_notification(a, 500, "4200000000000000000000000904");
        let cut = |s: &str, field: &str| {
            let start = s.find(&format!("<{field}>")).unwrap();
            let end = s.find(&format!("</{field}>")).unwrap() + field.len() + 3;
            format!("{}{}", &s[..start], &s[end..])
        };
        cut(&cut(&signed, "appid"), "mch_id")
    };
    let sends = [
        (bare, 400),
        (anonymous, 400),
        (paid_notification(a, 499, "4200000000000000000000000901"), 400),
        (paid_notification(a, 501, "4200000000000000000000000901"), 400),
        (
            paid_notification("NO-SUCH-ORDER", 500, "4200000000000000000000000902"),
            400,
        ),
        (unsigned, 400),
        (paid_notification(a, 500, "4200000000000000000000000903"), 200),
        // The transaction that paid a, reported for b.
        (paid_notification(b, 500, "4200000000000000000000000903"), 400),
    ];
    for (body, status) in &sends {
        let r = http
            .post(format!("{url}/notify/v2/pay"))
            .header("Content-Type", "text/xml")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        // Refused is anything but 200 (a wrong amount is 400, an unknown order 404).
        assert_eq!(r.status().as_u16() == 200, *status == 200, "{body}");
    }
    server.terminate();
    let text = std::fs::read_to_string(&log).unwrap();
    let warnings: Vec<Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["level"] == "WARN")
        .collect();
    let field = |v: &Value, name: &str| match &v["fields"][name] {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    // A record with this message, naming this order, whose named fields hold these values.
    let warned = |what: &str, no: &str, also: &[(&str, &str)]| {
        warnings.iter().any(|v| {
            field(v, "message").contains(what)
                && field(v, "out_trade_no").contains(no)
                && also.iter().all(|(name, value)| field(v, name).contains(value))
        })
    };
    // (message, order, named fields and what they hold)
    type Warning<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)]);
    let expected: [Warning<'_>; 7] = [
        ("notification rejected", a, &[("reason", "return_code")]),
        ("notification rejected", a, &[("reason", "mch_id")]),
        ("another amount", a, &[("expected", "500"), ("got", "499")]),
        ("another amount", a, &[("expected", "500"), ("got", "501")]),
        ("unknown order", "NO-SUCH-ORDER", &[]),
        ("notification rejected", a, &[("reason", "sign")]),
        ("conflicts with a recorded payment", b, &[("reason", "another order")]),
    ];
    for (what, no, also) in expected {
        assert!(
            warned(what, no, also),
            "a WARN '{what}' naming {no} and {also:?}:\n{}",
            warnings.iter().map(Value::to_string).collect::<Vec<_>>().join("\n")
        );
    }
    crate::figure(
        &["2", "4", "6", "22"],
        format!(
            "{} refused notifications (no signature and no return_code, no appid and no mch_id, amount −1 and +1, unknown order, unsigned, a reused transaction) → {} WARN records, each naming the order and why",
            expected.len(),
            warnings.len()
        ),
    );
    sim.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// The environment of a running process, from `/proc`.
#[cfg(target_os = "linux")]
fn environment_of(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/environ"))
        .unwrap_or_default()
        .split(|&b| b == 0)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect()
}

#[cfg(target_os = "linux")]
#[test]
fn long_running_commands_cap_glibc_malloc_arenas_unless_the_environment_already_does() {
    // Without the cap, the gateway's memory grew for as long as a 30-minute soak ran.
    let dir = scratch_dir("arenas");
    for (given, expected) in [(None, "MALLOC_ARENA_MAX=2"), (Some("4"), "MALLOC_ARENA_MAX=4")] {
        let mut cmd = crate::wxpay_command();
        cmd.args(["simulator", "--listen", "127.0.0.1:0", "--keys-dir"])
            .arg(dir.join("keys"))
            .env_remove("MALLOC_ARENA_MAX")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(v) = given {
            cmd.env("MALLOC_ARENA_MAX", v);
        }
        let mut child = cmd.spawn().unwrap();
        crate::scan_stderr(&mut child);
        // The command runs itself again in place, with the cap: the same pid, a new environment.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut seen = Vec::new();
        while std::time::Instant::now() < deadline {
            seen = environment_of(child.id());
            if seen.iter().any(|v| v.starts_with("MALLOC_ARENA_MAX=")) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let found: Vec<_> = seen.iter().filter(|v| v.starts_with("MALLOC_ARENA_MAX=")).collect();
        assert_eq!(found, [expected], "given {given:?}");
        assert!(child.try_wait().unwrap().is_none(), "the simulator still runs");
        let _ = child.kill();
        let _ = child.wait();
    }
    let _ = std::fs::remove_dir_all(dir);
}
