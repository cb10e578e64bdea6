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

#[test]
fn fuzz_inputs_keep_their_invariants() {
    let root = crate::support::vectors_dir().join("..");
    let mut n = 0;
    for dir in ["fuzz", "vectors/xml", "cli"] {
        for entry in std::fs::read_dir(root.join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if !matches!(path.extension().and_then(|e| e.to_str()), Some("xml" | "json")) {
                continue;
            }
            let data = std::fs::read(&path).unwrap();
            check_xml_reader(&data);
            check_notification(&data);
            n += 1;
        }
    }
    assert!(n >= 16, "only {n} inputs found");
}
