//! Runs the built `wxpay` binary on the fixtures in `testdata/`, as a user would.

mod crash;
mod docs;
mod hardening;
mod reconcile;
// The gateway's test binary and this one share the secret scan's files; this one keeps no
// metrics or databases of its own, so part of the module is unused here.
#[allow(dead_code)]
#[path = "../../../wxpay-gateway/tests/it/secret_scan.rs"]
mod secret_scan;
mod serve;

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

const KEY: &str = "192006250b4c09247ec02edce69f6a2d";

fn testdata(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata")
        .join(rel)
}

pub(crate) struct Run {
    pub(crate) code: i32,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

/// The built `wxpay` binary as a command that inherits no `WXPAY_*` variable: a developer's
/// `WXPAY_DATABASE_URL` or `WXPAY_CONFIG` must never point a test at a real database or
/// another configuration. Tests set the ones they mean with `.env`. Its locale is `C`, so
/// that the doctor explains itself in English on a Chinese developer's machine too.
pub(crate) fn wxpay_command() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wxpay"));
    without_wxpay_vars(&mut cmd, std::env::vars_os().map(|(k, _)| k));
    cmd.env_remove("LC_ALL").env_remove("LC_MESSAGES").env("LANG", "C");
    if secret_scan::dir().is_some() {
        cmd.env("WXPAY_LOG", "trace");
    }
    cmd
}

/// The log level a spawned `wxpay` gets: the test's own, or TRACE in a secret scan, which
/// reads every line every command logs (`scripts/secret-scan`).
pub(crate) fn log_level(level: &str) -> &str {
    if secret_scan::dir().is_some() { "trace" } else { level }
}

/// Runs `cmd` to its end, as `Command::output` does, handing what it wrote on standard error
/// to the secret scan.
pub(crate) fn output(cmd: &mut Command) -> std::process::Output {
    let out = cmd.output().expect("the wxpay binary runs");
    scan_text(&out.stderr);
    out
}

/// Hands every line of `text` (what a finished `wxpay` wrote on standard error) to the scan.
fn scan_text(text: &[u8]) {
    for line in String::from_utf8_lossy(text).lines() {
        scan_line(line);
    }
}

/// Hands what a spawned `wxpay` writes on standard error, line by line, to the secret scan
/// (from a thread of its own, until the process closes it).
pub(crate) fn scan_stderr(child: &mut std::process::Child) {
    use std::io::BufRead;
    if let Some(stderr) = child.stderr.take() {
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                scan_line(&line);
            }
        });
    }
}

/// Hands a line a spawned `wxpay` wrote on standard error to the secret scan, when this run
/// is one; the scan is told the secrets this binary's tests hand out the first time.
pub(crate) fn scan_line(line: &str) {
    static LISTED: std::sync::Once = std::sync::Once::new();
    let Some(mut file) = secret_scan::log_file() else {
        return;
    };
    LISTED.call_once(|| {
        use wxpay_simulator::{TEST_API_KEY, TEST_APIV3_KEY, TEST_APP_SECRET};
        for (what, value) in [
            ("the sample APIv2 key", KEY),
            ("the APIv2 key", TEST_API_KEY),
            ("the APIv3 key", TEST_APIV3_KEY),
            ("the app secret", TEST_APP_SECRET),
            ("the API token", serve::TOKEN),
            ("the webhook secret", serve::WEBHOOK_SECRET),
        ] {
            secret_scan::secret(what, value);
        }
    });
    // One write a line: lines of commands running at once do not interleave.
    file.write_all(format!("{line}\n").as_bytes())
        .expect("a line is kept for the scan");
}

/// Records a figure of the running test for the trust report (`scripts/trust-report`), and
/// prints it: `WXPAY_TRUST_FIGURES` names the file the figures are appended to, one JSON line
/// each, under the test's name (libtest names each test's thread after the test) and the
/// promises of `docs/trust/promises.toml` it is a figure of.
pub(crate) fn figure(promises: &[&str], text: impl std::fmt::Display) {
    use std::io::Write;
    let text = text.to_string();
    eprintln!("{text}");
    let Some(path) = std::env::var_os("WXPAY_TRUST_FIGURES") else {
        return;
    };
    let test = std::thread::current().name().unwrap_or("").to_owned();
    let line = serde_json::json!({ "test": test, "promises": promises, "figure": text });
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("the figures file opens");
    // One write of one line: appends from tests running at once do not interleave.
    file.write_all(format!("{line}\n").as_bytes())
        .expect("a figure is written");
}

/// Removes from `cmd`'s environment every name in `names` that starts with `WXPAY_`.
fn without_wxpay_vars(cmd: &mut Command, names: impl IntoIterator<Item = std::ffi::OsString>) {
    for name in names {
        if name.as_encoded_bytes().starts_with(b"WXPAY_") {
            cmd.env_remove(name);
        }
    }
}

#[test]
fn spawned_binaries_lose_every_wxpay_variable_and_keep_the_rest() {
    let mut cmd = Command::new("true");
    let shell = [
        "WXPAY_DATABASE_URL",
        "WXPAY_CONFIG",
        "WXPAY_MERCHANTS_0_API_KEY",
        "PATH",
        "XWXPAY_NOT",
    ];
    without_wxpay_vars(&mut cmd, shell.iter().map(std::ffi::OsString::from));
    let removed: Vec<String> = cmd
        .get_envs()
        .filter(|(_, v)| v.is_none())
        .map(|(k, _)| k.to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        removed,
        ["WXPAY_CONFIG", "WXPAY_DATABASE_URL", "WXPAY_MERCHANTS_0_API_KEY"]
    );
}

pub(crate) fn wxpay(args: &[&str], stdin: Option<&[u8]>, env: &[(&str, &str)]) -> Run {
    let mut cmd = wxpay_command();
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
    let mut child = cmd.spawn().expect("the wxpay binary runs");
    if let Some(input) = stdin {
        // A command that has what it needs (or refuses) may exit before reading all of its
        // input: the pipe then breaks, and what it printed is still the answer to check.
        match child.stdin.take().unwrap().write_all(input) {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
            other => other.unwrap(),
        }
    }
    let out = child.wait_with_output().unwrap();
    scan_text(&out.stderr);
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn fixture(rel: &str) -> Vec<u8> {
    std::fs::read(testdata(rel)).unwrap()
}

const OFFICIAL: &[&str] = &[
    "appid=wxd930ea5d5a258f4f",
    "mch_id=10000100",
    "device_info=1000",
    "body=test",
    "nonce_str=ibuaiVcKdpRxkhJA",
];

#[test]
fn every_command_has_help() {
    for cmd in [
        &["--help"][..],
        &["sign", "--help"],
        &["verify", "--help"],
        &["decrypt", "--help"],
        &["simulator", "--help"],
        &["demo", "--help"],
        &["serve", "--help"],
        &["migrate", "--help"],
    ] {
        let r = wxpay(cmd, None, &[]);
        assert_eq!(r.code, 0, "{cmd:?}: {}", r.stderr);
        assert!(r.stdout.contains("Usage: wxpay"), "{cmd:?}: {}", r.stdout);
    }
}

#[test]
fn sign_shows_the_signed_string_with_the_key_masked() {
    let mut args = vec!["sign", "--key", KEY];
    args.extend_from_slice(OFFICIAL);
    let r = wxpay(&args, None, &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains(
        "string to sign: appid=wxd930ea5d5a258f4f&body=test&device_info=1000&mch_id=10000100&nonce_str=ibuaiVcKdpRxkhJA&key=****************************6a2d"
    ), "{}", r.stdout);
    assert!(
        r.stdout.contains("sign:           9A0A8659F005D6984697E2CA0A9CF3B7"),
        "{}",
        r.stdout
    );
    assert!(!r.stdout.contains(KEY) && !r.stderr.contains(KEY));
}

#[test]
fn sign_with_hmac_gives_the_official_signature() {
    let mut args = vec!["sign", "--key", KEY, "--sign-type", "HMAC-SHA256"];
    args.extend_from_slice(OFFICIAL);
    let r = wxpay(&args, None, &[]);
    assert!(
        r.stdout
            .contains("6A9AE1657590FD6257D693A078E1C3E4BB6BA4DC30B23E0EE2496E54170DACD6"),
        "{}",
        r.stdout
    );
}

#[test]
fn the_key_can_come_from_a_file_or_the_environment() {
    let dir = std::env::temp_dir().join(format!("wxpay-cli-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key_file = dir.join("apikey.txt");
    std::fs::write(&key_file, format!("{KEY}\n")).unwrap();
    let mut args = vec!["sign", "--key-file", key_file.to_str().unwrap()];
    args.extend_from_slice(OFFICIAL);
    let r = wxpay(&args, None, &[]);
    assert!(
        r.stdout.contains("9A0A8659F005D6984697E2CA0A9CF3B7"),
        "{} {}",
        r.stdout,
        r.stderr
    );
    let mut args = vec!["sign"];
    args.extend_from_slice(OFFICIAL);
    let r = wxpay(&args, None, &[("WXPAY_API_KEY", KEY)]);
    assert!(
        r.stdout.contains("9A0A8659F005D6984697E2CA0A9CF3B7"),
        "{} {}",
        r.stdout,
        r.stderr
    );
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn sign_reads_a_body_on_stdin_and_replaces_its_old_signature() {
    let body = fixture("cli/official-hmac.xml");
    let r = wxpay(&["sign", "--key", KEY, "--output", "xml"], Some(&body), &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("existing `sign`"), "{}", r.stderr);
    // The body's own sign_type (HMAC-SHA256) was used, so it verifies as HMAC.
    let v = wxpay(
        &["verify", "--key", KEY, "--sign-type", "HMAC-SHA256"],
        Some(r.stdout.as_bytes()),
        &[],
    );
    assert_eq!(v.code, 0, "{}", v.stdout);
}

#[test]
fn sign_signs_mini_program_parameters_into_pay_sign() {
    let json = r#"{"appId":"wxd678efh567hg6787","timeStamp":"1490840662","nonceStr":"5K8264ILTKCH16CQ2502SI8ZNMTM67VS","package":"prepay_id=wx2017033010242291fcfe0db70013231072","signType":"MD5"}"#;
    let r = wxpay(
        &["sign", "--key", "qazwsxedcrfvtgbyhnujmikolp111111", "--json", json],
        None,
        &[],
    );
    assert!(
        r.stdout.contains("paySign:        22D9B4E54AB1950F51E0649E8810ACD6"),
        "{} {}",
        r.stdout,
        r.stderr
    );
}

#[test]
fn sign_refuses_bad_input_with_a_clear_message() {
    let cases: &[(&[&str], &str)] = &[
        (&["sign", "--key", "short", "a=b"], "32"),
        (&["sign", "a=b"], "no API key"),
        (&["sign", "--key", KEY, "novalue"], "NAME=VALUE"),
        (&["sign", "--key", KEY, "a=1", "a=2"], "twice"),
        (&["sign", "--key", KEY, "--sign-type", "md5", "a=1"], "capitals"),
        (
            &[
                "sign",
                "--key",
                KEY,
                "--sign-type",
                "MD5",
                "a=1",
                "sign_type=HMAC-SHA256",
            ],
            "must agree",
        ),
    ];
    for (args, needle) in cases {
        let r = wxpay(args, None, &[]);
        assert_eq!(r.code, 2, "{args:?}");
        assert!(r.stderr.contains(needle), "{args:?}: {}", r.stderr);
        assert!(!r.stderr.contains(KEY), "{args:?} leaked the key");
    }
}

fn verify(file: &str, key: &str, sign_type: &str) -> Run {
    wxpay(
        &["verify", "--key", key, "--sign-type", sign_type],
        Some(&fixture(file)),
        &[],
    )
}

#[test]
fn verify_says_ok_only_for_a_body_that_verifies() {
    let r = verify("cli/official-md5.xml", KEY, "MD5");
    assert_eq!(r.code, 0);
    assert!(r.stdout.starts_with("OK"), "{}", r.stdout);
    let r = verify("cli/paysign-official.json", "qazwsxedcrfvtgbyhnujmikolp111111", "MD5");
    assert_eq!(r.code, 0, "{}", r.stdout);
    // A file argument works as well as standard input.
    let path = testdata("cli/official-md5.xml");
    let r = wxpay(&["verify", "--key", KEY, path.to_str().unwrap()], None, &[]);
    assert_eq!(r.code, 0, "{}", r.stdout);
}

#[test]
fn verify_names_the_cause_of_each_classic_mistake() {
    let cases = [
        (
            "cli/official-hmac.xml",
            KEY,
            "MD5",
            "signed with HMAC-SHA256 but you check with MD5",
        ),
        (
            "cli/empty-field-signed.xml",
            KEY,
            "MD5",
            "fields with empty values were signed",
        ),
        ("cli/lowercase-sign.xml", KEY, "MD5", "lowercase hex"),
        (
            "cli/paysign-lowercase-names.json",
            "qazwsxedcrfvtgbyhnujmikolp111111",
            "MD5",
            "lowercase names",
        ),
        (
            "cli/official-md5.xml",
            "192006250b4c09247ec02edce69f6a2d ",
            "MD5",
            "without the whitespace",
        ),
        ("cli/gbk-body.xml", KEY, "MD5", "not UTF-8"),
        (
            "cli/official-md5.xml",
            "0123456789abcdef0123456789abcdef",
            "MD5",
            "not the one it was signed with",
        ),
        ("cli/official-md5.xml", "0123456789abcdef", "MD5", "has 16 characters"),
        ("vectors/xml/xxe-file.xml", KEY, "MD5", "DOCTYPE"),
        ("vectors/xml/duplicate-field.xml", KEY, "MD5", "appears twice"),
    ];
    for (file, key, t, needle) in cases {
        let r = verify(file, key, t);
        assert_eq!(r.code, 1, "{file}: {}", r.stdout);
        assert!(r.stdout.starts_with("FAILED"), "{file}: {}", r.stdout);
        assert!(
            r.stdout.contains(needle),
            "{file}: expected {needle:?} in\n{}",
            r.stdout
        );
        assert!(
            !r.stdout.contains(key.trim()) || key.len() < 32,
            "{file}: the key was printed"
        );
    }
}

#[test]
fn verify_explains_in_chinese_for_a_chinese_locale_or_when_asked() {
    let r = wxpay(
        &["verify", "--key", KEY, "--sign-type", "MD5", "--lang", "zh"],
        Some(&fixture("cli/official-hmac.xml")),
        &[],
    );
    assert_eq!(r.code, 1);
    for needle in [
        "失败：签名验证不通过（MD5）。",
        "原因（已确认：按此解释能复现收到的签名）：",
        "报文是用 HMAC-SHA256 签名的，但你用 MD5 验签",
        "参与签名的字符串（其后接 &key=<API 密钥>）：",
    ] {
        assert!(r.stdout.contains(needle), "{needle}: {}", r.stdout);
    }
    let r = wxpay(
        &["verify", "--key", KEY],
        Some(&fixture("cli/official-md5.xml")),
        &[("LC_MESSAGES", "zh_CN.UTF-8")],
    );
    assert_eq!(r.code, 0);
    assert!(r.stdout.starts_with("通过："), "{}", r.stdout);
    let r = wxpay(&["verify", "--key", KEY, "--lang", "fr"], Some(b"<xml/>"), &[]);
    assert_eq!(r.code, 2, "{}", r.stderr);
}

#[test]
fn verify_refuses_an_empty_body() {
    let r = wxpay(&["verify", "--key", KEY], Some(b"  \n"), &[]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("empty"), "{}", r.stderr);
}

#[test]
fn verify_refuses_a_body_that_is_no_message_as_unusable_input() {
    for body in [&b"hello\n"[..], b"sign=ABC&appid=wx1", b"\xEF\xBB\xBFplain text"] {
        let r = wxpay(&["verify", "--key", KEY], Some(body), &[]);
        assert_eq!(r.code, 2, "{:?}: {}", String::from_utf8_lossy(body), r.stdout);
        assert!(r.stderr.contains("nothing signed to check"), "{}", r.stderr);
    }
    // A message in UTF-16 is a message in the wrong encoding, which the doctor explains.
    let utf16: Vec<u8> = [0xFF, 0xFE]
        .into_iter()
        .chain("<xml><sign>AB</sign></xml>".encode_utf16().flat_map(u16::to_le_bytes))
        .collect();
    let r = wxpay(&["verify", "--key", KEY], Some(&utf16), &[]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.starts_with("FAILED"), "{}", r.stdout);
}

#[test]
fn decrypt_reads_req_info_alone_or_inside_the_notification() {
    let doc: serde_json::Value = serde_json::from_slice(&fixture("vectors/v2_refund_notify.json")).unwrap();
    let case = &doc["cases"][0];
    let key = case["api_key"].as_str().unwrap();
    let req_info = case["req_info"].as_str().unwrap();
    let plain = case["plaintext"].as_str().unwrap();
    let r = wxpay(&["decrypt", "--key", key, req_info], None, &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout.trim_end(), plain);
    let body = format!(
        "<xml><return_code>SUCCESS</return_code><appid>wx4f4bc4dec97d474b</appid><mch_id>12345678</mch_id><req_info><![CDATA[{req_info}]]></req_info></xml>"
    );
    let r = wxpay(&["decrypt", "--key", key], Some(body.as_bytes()), &[]);
    assert_eq!(r.stdout.trim_end(), plain, "{}", r.stderr);
    let r = wxpay(&["decrypt", "--key", KEY, req_info], None, &[]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("padding") || r.stderr.contains("UTF-8"),
        "{}",
        r.stderr
    );
}

#[test]
fn verify_v3_checks_a_notification_as_received_and_names_a_reformatted_body() {
    let cert = testdata("vectors/keys/platform_cert.pem");
    let at = "1528425296";
    let ok = wxpay(
        &[
            "verify",
            "--v3",
            "--platform-cert",
            cert.to_str().unwrap(),
            "--at",
            at,
            testdata("cli/v3-notify.http").to_str().unwrap(),
        ],
        None,
        &[],
    );
    assert_eq!(ok.code, 0, "{}{}", ok.stdout, ok.stderr);
    assert!(ok.stdout.starts_with("OK"), "{}", ok.stdout);
    let bad = wxpay(
        &[
            "verify",
            "--v3",
            "--platform-cert",
            cert.to_str().unwrap(),
            "--at",
            at,
            testdata("cli/v3-notify-reformatted.http").to_str().unwrap(),
        ],
        None,
        &[],
    );
    assert_eq!(bad.code, 1, "{}", bad.stdout);
    assert!(bad.stdout.contains("reformatted"), "{}", bad.stdout);
    // Later than five minutes: the clock, with the signature itself genuine.
    let late = wxpay(
        &[
            "verify",
            "--v3",
            "--platform-cert",
            cert.to_str().unwrap(),
            testdata("cli/v3-notify.http").to_str().unwrap(),
        ],
        None,
        &[],
    );
    assert_eq!(late.code, 1);
    assert!(late.stdout.contains("genuine"), "{}", late.stdout);
    // In Chinese, by the locale or by --lang (which wins).
    let file = testdata("cli/v3-notify-reformatted.http");
    let args = [
        "verify",
        "--v3",
        "--platform-cert",
        cert.to_str().unwrap(),
        "--at",
        at,
        file.to_str().unwrap(),
    ];
    let zh = wxpay(&args, None, &[("LANG", "zh_CN.UTF-8")]);
    assert_eq!(zh.code, 1);
    assert!(
        zh.stdout.starts_with("失败：") && zh.stdout.contains("被格式化或重新序列化了"),
        "{}",
        zh.stdout
    );
    let en = wxpay(
        &[&args[..], &["--lang", "en"]].concat(),
        None,
        &[("LC_ALL", "zh_CN.UTF-8")],
    );
    assert!(en.stdout.contains("reformatted"), "{}", en.stdout);
    // LC_ALL overrides LANG, as POSIX has it.
    let c = wxpay(&args, None, &[("LC_ALL", "C"), ("LANG", "zh_CN.UTF-8")]);
    assert!(c.stdout.starts_with("FAILED"), "{}", c.stdout);
}

#[test]
fn decrypt_v3_opens_a_resource_and_says_when_the_key_is_not_the_apiv3_key() {
    let dir = std::env::temp_dir().join(format!("wxpay-cli-v3-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(testdata("vectors/v3.json")).unwrap()).unwrap();
    let good = dir.join("apiv3.txt");
    std::fs::write(&good, format!("{}\n", v["apiv3_key"].as_str().unwrap())).unwrap();
    let wrong = dir.join("apiv2.txt");
    std::fs::write(&wrong, KEY).unwrap();
    let body = v["notification"]["body"].as_str().unwrap().as_bytes();
    let r = wxpay(
        &["decrypt", "--v3", "--apiv3-key-file", good.to_str().unwrap()],
        Some(body),
        &[],
    );
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("\"trade_state\""), "{}", r.stdout);
    let r = wxpay(
        &["decrypt", "--v3", "--apiv3-key-file", wrong.to_str().unwrap()],
        Some(body),
        &[],
    );
    assert_eq!(r.code, 1);
    assert!(r.stdout.contains("APIv2 key"), "{}", r.stdout);
    let _ = std::fs::remove_dir_all(&dir);
}
