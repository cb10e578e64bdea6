//! Payment notifications: verified, typed, and refused when forged, tampered, misdirected
//! or downgraded; and the exact replies.

use wxpay_protocol::v2::{
    ErrCode, NOTIFY_SUCCESS_REPLY, NotificationFields, PaymentNotification, PaymentOutcome, notify_fail_reply,
};
use wxpay_protocol::{Error, Fields, SignType, xml};

use crate::support::merchant;

/// A realistic 20-field notification, as WeChat Pay sends it.
fn notification(sign_type: SignType, total_fee: &str) -> String {
    let m = merchant(sign_type);
    let mut f: Fields<'_> = [
        ("appid", "wxd678efh567hg6787"),
        ("attach", "支付测试"),
        ("bank_type", "CFT"),
        ("cash_fee", total_fee),
        ("fee_type", "CNY"),
        ("is_subscribe", "N"),
        ("mch_id", "1230000109"),
        ("nonce_str", "5d2b6c2a8db53831f7eda20af46e531c"),
        ("openid", "oUpF8uMEb4qRXf22hE3X68TekukE"),
        ("out_trade_no", "1409811653"),
        ("result_code", "SUCCESS"),
        ("return_code", "SUCCESS"),
        ("time_end", "20140903131540"),
        ("total_fee", total_fee),
        ("trade_type", "JSAPI"),
        ("transaction_id", "1004400740201409030005092168"),
        ("device_info", "WEB"),
        ("cash_fee_type", "CNY"),
        ("sign_type", sign_type.as_str()),
    ]
    .into_iter()
    .collect();
    f.sign(&m.key, sign_type);
    f.to_xml().unwrap()
}

#[test]
fn a_genuine_notification_is_verified_and_typed() {
    for t in [SignType::Md5, SignType::HmacSha256] {
        let body = notification(t, "100");
        let n = PaymentNotification::parse(body.as_bytes(), &merchant(t)).unwrap();
        assert_eq!(n.out_trade_no, "1409811653");
        match n.outcome {
            PaymentOutcome::Paid {
                transaction_id,
                total_fee,
                time_end,
            } => {
                assert_eq!(transaction_id, "1004400740201409030005092168");
                assert_eq!(total_fee.get(), 100);
                assert_eq!(time_end.to_compact(), "20140903131540");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(n.attach.as_deref(), Some("支付测试"));
        assert!(n.extra.is_empty(), "{:?}", n.extra);
    }
}

#[test]
fn a_tampered_amount_is_refused() {
    let body = notification(SignType::Md5, "100").replace("<total_fee>100</total_fee>", "<total_fee>1</total_fee>");
    assert!(matches!(
        PaymentNotification::parse(body.as_bytes(), &merchant(SignType::Md5)),
        Err(Error::BadSignature { .. })
    ));
}

#[test]
fn md5_sent_to_an_hmac_merchant_is_refused_even_when_its_md5_is_right() {
    let body = notification(SignType::Md5, "100");
    assert!(matches!(
        PaymentNotification::parse(body.as_bytes(), &merchant(SignType::HmacSha256)),
        Err(Error::SignTypeMismatch { .. })
    ));
    // Without a sign_type field the configured algorithm still decides, and MD5 fails.
    let no_type = body.replace("<sign_type><![CDATA[MD5]]></sign_type>", "");
    assert!(!no_type.contains("sign_type"));
    assert!(matches!(
        PaymentNotification::parse(no_type.as_bytes(), &merchant(SignType::HmacSha256)),
        Err(Error::BadSignature { .. })
    ));
}

#[test]
fn a_missing_signature_and_another_merchant_are_refused() {
    let body = notification(SignType::Md5, "100");
    let f = xml::read(body.as_bytes()).unwrap();
    let unsigned = body.replace(&format!("<sign><![CDATA[{}]]></sign>", f.get("sign").unwrap()), "");
    assert!(
        matches!(PaymentNotification::parse(unsigned.as_bytes(), &merchant(SignType::Md5)), Err(Error::MissingField(s)) if s == "sign")
    );
    let mut other = merchant(SignType::Md5);
    other.appid = "wx0000000000000000".parse().unwrap();
    assert!(matches!(
        PaymentNotification::parse(body.as_bytes(), &other),
        Err(Error::MerchantMismatch { field: "appid", .. })
    ));
}

#[test]
fn the_merchant_is_found_before_anything_is_checked() {
    let body = notification(SignType::Md5, "100");
    let raw = NotificationFields::read(body.as_bytes()).unwrap();
    assert_eq!(raw.mch_id(), Some("1230000109"));
    assert_eq!(raw.appid(), Some("wxd678efh567hg6787"));
    assert_eq!(raw.out_trade_no(), Some("1409811653"));
    assert!(raw.payment(&merchant(SignType::Md5)).is_ok());
}

#[test]
fn a_failed_payment_is_typed_not_an_error() {
    let m = merchant(SignType::Md5);
    let mut f: Fields<'_> = [
        ("return_code", "SUCCESS"),
        ("result_code", "FAIL"),
        ("err_code", "NOTENOUGH"),
        ("err_code_des", "余额不足"),
        ("appid", "wxd678efh567hg6787"),
        ("mch_id", "1230000109"),
        ("nonce_str", "n"),
        ("out_trade_no", "1409811653"),
    ]
    .into_iter()
    .collect();
    f.sign(&m.key, m.sign_type);
    let n = PaymentNotification::parse(f.to_xml().unwrap().as_bytes(), &m).unwrap();
    assert_eq!(
        n.outcome,
        PaymentOutcome::Failed {
            code: ErrCode::NotEnough,
            description: "余额不足".into()
        }
    );
}

#[test]
fn the_replies_are_exactly_what_wechat_pay_expects() {
    assert_eq!(
        NOTIFY_SUCCESS_REPLY,
        "<xml><return_code><![CDATA[SUCCESS]]></return_code><return_msg><![CDATA[OK]]></return_msg></xml>"
    );
    let fail = notify_fail_reply("签名失败");
    assert_eq!(
        fail,
        "<xml><return_code><![CDATA[FAIL]]></return_code><return_msg><![CDATA[签名失败]]></return_msg></xml>"
    );
}
