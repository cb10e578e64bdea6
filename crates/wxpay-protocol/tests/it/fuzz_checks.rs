//! The invariants the fuzz targets check, shared with them (`fuzz/fuzz_targets/*.rs` include
//! this file), and a test that applies them to every seed and past crash in the repository.

use wxpay_protocol::v2::{Bill, NotificationFields, PaymentNotification, RefundNotification, doctor};
use wxpay_protocol::v3::notify::{Envelope, Event, Resource};
use wxpay_protocol::v3::{PublicKey, SignatureHeaders, Verifier};
use wxpay_protocol::{ApiKey, AppId, Fields, MchId, Merchant, SignType, xml};

/// The test-only APIv3 key of the vectors (`testdata/vectors/v3.json`).
const API_V3_KEY: &[u8] = b"a7cde1ZJB1kG2e7VfTs3jQzaWizur8Gb";
/// The platform's test public key, which signed the vectors' notification.
const PLATFORM_PUBLIC_KEY: &str = include_str!("../../../../testdata/vectors/keys/platform_public_key.pem");
/// The vectors' notification, at whose timestamp the v3 target verifies.
const V3_SERIAL: &str = "5157F09EFDC096DE15EBE81A47057A7232F1B8E1";
const V3_NOW: i64 = 1_528_425_296;

fn merchant(sign_type: SignType) -> Merchant {
    Merchant {
        appid: AppId::new("wxd678efh567hg6787").unwrap(),
        mch_id: MchId::new("1230000109").unwrap(),
        key: ApiKey::new("192006250b4c09247ec02edce69f6a2d").unwrap(),
        sign_type,
    }
}

/// The reader never panics, and whatever it accepts writes back and reads again to the
/// same fields.
pub(crate) fn check_xml_reader(data: &[u8]) {
    if let Ok(fields) = xml::read(data) {
        let written = fields.to_xml().expect("accepted fields can be written");
        let again = xml::read(written.as_bytes()).expect("written fields can be read");
        assert_eq!(fields, again);
    }
    let opts = xml::ReadOptions {
        root: "root",
        ..xml::ReadOptions::default()
    };
    let _ = xml::read_with(data, &opts);
}

/// The v2 notification paths and the doctor never panic, and a payment
/// notification is accepted only when it carries the merchant's signature.
pub(crate) fn check_notification(data: &[u8]) {
    for t in [SignType::Md5, SignType::HmacSha256] {
        let m = merchant(t);
        if let Ok(n) = PaymentNotification::parse(data, &m) {
            let f = NotificationFields::read(data).unwrap();
            assert!(f.fields().verify(&m.key, t).is_ok());
            assert_eq!(n.mch_id, "1230000109");
        }
        let _ = RefundNotification::parse(data, &m);
    }
    let _ = doctor::diagnose(data, "192006250b4c09247ec02edce69f6a2d", SignType::Md5);
}

/// A refund notification's `req_info`: arbitrary text never panics the decryption, and any
/// inner document, encrypted as WeChat Pay does, is read back to the same fields or refused.
pub(crate) fn check_refund_req_info(data: &[u8]) {
    let m = merchant(SignType::Md5);
    let Ok(inner) = std::str::from_utf8(data) else {
        return;
    };
    let _ = wxpay_protocol::v2::decrypt_req_info(inner, &m.key);
    // The structure-aware half: the bytes as the decrypted document, so that the parser behind
    // the decryption sees them rather than padding errors.
    let body = sealed_refund_notification(inner, &m);
    if let Ok(n) = RefundNotification::parse(body.as_bytes(), &m) {
        // Accepted: what it says is what the document says.
        let opts = xml::ReadOptions {
            root: "root",
            ..xml::ReadOptions::default()
        };
        let fields = xml::read_with(inner.as_bytes(), &opts).expect("an accepted document reads");
        assert_eq!(fields.get("out_refund_no"), Some(n.out_refund_no.as_str()));
        assert_eq!(fields.get("refund_fee"), Some(n.refund_fee.to_string().as_str()));
    }
}

/// A refund notification whose `req_info` is `inner`, encrypted as WeChat Pay does.
fn sealed_refund_notification(inner: &str, m: &Merchant) -> String {
    let req_info = wxpay_protocol::v2::encrypt_req_info(inner, &m.key);
    assert_eq!(wxpay_protocol::v2::decrypt_req_info(&req_info, &m.key).unwrap(), inner);
    let mut outer = Fields::with_capacity(5);
    for (name, value) in [
        ("return_code", "SUCCESS"),
        ("appid", m.appid.as_str()),
        ("mch_id", m.mch_id.as_str()),
        ("nonce_str", "5K8264ILTKCH16CQ2502SI8ZNMTM67VS"),
        ("req_info", req_info.as_str()),
    ] {
        outer.insert(name, value).unwrap();
    }
    outer.to_xml().unwrap()
}

/// The bill parser never panics, and a bill it accepts adds up: as many rows as its summary
/// counts.
pub(crate) fn check_bill(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(bill) = Bill::parse(text) {
        assert_eq!(bill.rows.len() as u64, bill.summary.count);
    }
}

/// The APIv3 notification path: the envelope and the resource readers never panic, a sealed
/// resource opens to the same bytes, and the verifier accepts nothing but the one notification
/// the platform key really signed.
pub(crate) fn check_v3_notification(data: &[u8]) {
    if let Ok(envelope) = Envelope::read(data) {
        let _ = envelope.event(API_V3_KEY);
    }
    let _ = wxpay_protocol::v3::doctor::open(data, API_V3_KEY);
    // The bytes as the decrypted resource, under both event types, so that the transaction
    // and refund readers see them.
    for (event_type, original_type) in [("TRANSACTION.SUCCESS", "transaction"), ("REFUND.SUCCESS", "refund")] {
        let resource = Resource::seal(API_V3_KEY, original_type, "fuzznonce123", data).unwrap();
        let body = Envelope::new("EV-1", "2026-12-05T10:00:00+08:00", event_type, "s", resource).to_json();
        let envelope = Envelope::read(body.as_bytes()).expect("a sealed envelope reads");
        assert_eq!(envelope.decrypt(API_V3_KEY).unwrap(), data);
        match envelope.event(API_V3_KEY) {
            Ok(Event::Transaction(_)) => assert_eq!(event_type, "TRANSACTION.SUCCESS"),
            Ok(Event::Refund(_)) => assert_eq!(event_type, "REFUND.SUCCESS"),
            Err(_) => {}
        }
    }
    let (headers, body) = v3_lines(data);
    let verifier = platform_verifier();
    if verifier.verify(&headers, body, V3_NOW).is_ok() {
        let (timestamp, nonce, signature, signed) = vector_notification();
        assert_eq!(
            (headers.timestamp, headers.nonce, headers.signature, body),
            (
                timestamp.as_str(),
                nonce.as_str(),
                signature.as_str(),
                signed.as_slice()
            )
        );
    }
    let _ = wxpay_protocol::v3::doctor::diagnose(&headers, body, &verifier, V3_NOW, Some(API_V3_KEY));
}

/// The bytes as four header lines (timestamp, nonce, signature, serial) and a body.
fn v3_lines(data: &[u8]) -> (SignatureHeaders<'_>, &[u8]) {
    let mut parts = data.splitn(5, |b| *b == b'\n');
    let mut header = || parts.next().and_then(|p| std::str::from_utf8(p).ok()).unwrap_or("");
    let (timestamp, nonce, signature, serial) = (header(), header(), header(), header());
    let headers = SignatureHeaders {
        timestamp,
        nonce,
        signature,
        serial,
    };
    (headers, parts.next().unwrap_or(b""))
}

/// A verifier that trusts the vectors' platform public key under the vectors' serial.
fn platform_verifier() -> Verifier {
    Verifier::new().with_public_key(V3_SERIAL, PublicKey::from_pem(PLATFORM_PUBLIC_KEY).unwrap())
}

/// The vectors' signed notification: timestamp, nonce, signature and body.
fn vector_notification() -> (String, String, String, Vec<u8>) {
    let v: serde_json::Value = serde_json::from_str(include_str!("../../../../testdata/vectors/v3.json")).unwrap();
    let n = &v["notification"];
    let h = |name: &str| n["headers"][name].as_str().unwrap().to_owned();
    (
        h("Wechatpay-Timestamp"),
        h("Wechatpay-Nonce"),
        h("Wechatpay-Signature"),
        n["body"].as_str().unwrap().as_bytes().to_vec(),
    )
}

/// What each input in the seed folders is, so that the invariants are applied to inputs that
/// reach the code they guard: a seed that stops parsing, or a hostile file that starts to, is
/// a failure here and not a silent loss of coverage.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Seed {
    /// A payment notification signed with the documentation key (MD5).
    Notification,
    /// Well-formed fields the reader accepts.
    Fields,
    /// Refused by the reader.
    Refused,
    /// Not XML at all (the CLI's JSON fixtures).
    Json,
    /// The decrypted document of a refund notification's `req_info`.
    RefundInner,
    /// The vectors' APIv3 notification as the v3 target reads it: four header lines, a body.
    V3Lines,
    /// A bill as `downloadbill` answers it.
    Bill,
}

const SEEDS: &[(&str, Seed)] = &[
    ("fuzz/doctor-many-fields.xml", Seed::Fields),
    ("fuzz/notify-md5.xml", Seed::Notification),
    ("fuzz/refund-inner.xml", Seed::RefundInner),
    ("fuzz/v3-notification.txt", Seed::V3Lines),
    ("golden/bill-all.txt", Seed::Bill),
    ("vectors/xml/billion-laughs.xml", Seed::Refused),
    ("vectors/xml/duplicate-field.xml", Seed::Refused),
    ("vectors/xml/nested.xml", Seed::Refused),
    ("vectors/xml/non-utf8.xml", Seed::Refused),
    ("vectors/xml/truncated.xml", Seed::Refused),
    ("vectors/xml/wrong-root.xml", Seed::Refused),
    ("vectors/xml/xxe-file.xml", Seed::Refused),
    ("vectors/xml/xxe-http.xml", Seed::Refused),
    ("cli/empty-field-signed.xml", Seed::Fields),
    ("cli/gbk-body.xml", Seed::Refused),
    ("cli/lowercase-sign.xml", Seed::Fields),
    ("cli/official-hmac.xml", Seed::Fields),
    ("cli/official-md5.xml", Seed::Fields),
    ("cli/paysign-lowercase-names.json", Seed::Json),
    ("cli/paysign-official.json", Seed::Json),
];

#[test]
fn fuzz_inputs_keep_their_invariants() {
    let root = crate::support::vectors_dir().join("..");
    // The bill is a golden file, shared with the bill tests rather than copied.
    let mut found = vec!["golden/bill-all.txt".to_owned()];
    for dir in ["fuzz", "vectors/xml", "cli"] {
        for entry in std::fs::read_dir(root.join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if matches!(path.extension().and_then(|e| e.to_str()), Some("xml" | "json" | "txt")) {
                found.push(format!("{dir}/{}", path.file_name().unwrap().to_str().unwrap()));
            }
        }
    }
    found.sort();
    let mut listed: Vec<String> = SEEDS.iter().map(|(f, _)| (*f).to_owned()).collect();
    listed.sort();
    assert_eq!(
        found, listed,
        "every seed has an expectation in SEEDS, and every expectation a file"
    );
    for &(file, seed) in SEEDS {
        let data = std::fs::read(root.join(file)).unwrap();
        check_xml_reader(&data);
        check_notification(&data);
        check_refund_req_info(&data);
        check_bill(&data);
        check_v3_notification(&data);
        let read = xml::read(&data);
        match seed {
            Seed::Notification => {
                let n = PaymentNotification::parse(&data, &merchant(SignType::Md5));
                assert!(n.is_ok(), "{file} no longer reads as a verified notification: {n:?}");
            }
            Seed::Fields => assert!(read.is_ok(), "{file} no longer reads: {read:?}"),
            Seed::Refused => assert!(read.is_err(), "{file} is read: {read:?}"),
            Seed::Json => assert!(
                serde_json::from_slice::<serde_json::Value>(&data).is_ok() && read.is_err(),
                "{file}"
            ),
            Seed::RefundInner => {
                let m = merchant(SignType::Md5);
                let body = sealed_refund_notification(std::str::from_utf8(&data).unwrap(), &m);
                let n = RefundNotification::parse(body.as_bytes(), &m);
                assert!(n.is_ok(), "{file} no longer reads as a refund: {n:?}");
            }
            Seed::V3Lines => {
                let (headers, body) = v3_lines(&data);
                let verified = platform_verifier().verify(&headers, body, V3_NOW);
                assert!(verified.is_ok(), "{file} no longer verifies: {verified:?}");
            }
            Seed::Bill => {
                let bill = Bill::parse(std::str::from_utf8(&data).unwrap());
                assert!(bill.is_ok(), "{file} no longer reads as a bill: {bill:?}");
            }
        }
    }
}
