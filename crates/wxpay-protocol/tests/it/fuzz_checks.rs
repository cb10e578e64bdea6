//! The invariants the fuzz targets check, shared with them (`fuzz/fuzz_targets/*.rs` include
//! this file), and a test that applies them to every seed and past crash in the repository.

use wxpay_protocol::v2::{Bill, NotificationFields, PaymentNotification, RefundNotification, doctor};
use wxpay_protocol::{ApiKey, AppId, MchId, Merchant, SignType, xml};

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

/// The notification paths, the doctor and the bill parser never panic, and a payment
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
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(bill) = Bill::parse(text) {
            assert_eq!(bill.rows.len() as u64, bill.summary.count);
        }
        let _ = wxpay_protocol::v2::decrypt_req_info(text, &merchant(SignType::Md5).key);
    }
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
}

const SEEDS: &[(&str, Seed)] = &[
    ("fuzz/notify-md5.xml", Seed::Notification),
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
    let mut found = Vec::new();
    for dir in ["fuzz", "vectors/xml", "cli"] {
        for entry in std::fs::read_dir(root.join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if matches!(path.extension().and_then(|e| e.to_str()), Some("xml" | "json")) {
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
        }
    }
}
