//! Every known-answer vector in `testdata/vectors` (official examples and derived ones).

use wxpay_protocol::v2::{PayParams, RefundNotification, decrypt_req_info, encrypt_req_info};
use wxpay_protocol::{ApiKey, AppId, Fields, MchId, Merchant, Nonce, SignType, sign};

use crate::support::load_json;

fn str_of<'a>(v: &'a serde_json::Value, k: &str) -> &'a str {
    v[k].as_str().unwrap_or_else(|| panic!("vector field {k} missing"))
}

#[test]
fn every_v2_sign_vector_gives_its_string_and_signature() {
    let doc = load_json("v2_sign.json");
    let cases = doc["cases"].as_array().unwrap();
    // The shared vectors hold exactly this many: fewer means a case was lost on the way.
    assert_eq!(cases.len(), 7, "v2_sign.json cases");
    for case in cases {
        let name = str_of(case, "name");
        let key = ApiKey::new(str_of(case, "key")).unwrap();
        let t: SignType = str_of(case, "sign_type").parse().unwrap();
        let params = case["params"].as_object().unwrap();
        let fields: Fields<'_> = params.iter().map(|(k, v)| (k.as_str(), v.as_str().unwrap())).collect();
        assert_eq!(fields.string_a(), str_of(case, "string_a"), "{name}: stringA");
        let temp = format!("{}&key={}", fields.string_a(), key.expose());
        assert_eq!(temp, str_of(case, "string_sign_temp"), "{name}: stringSignTemp");
        let expected = str_of(case, "sign");
        assert_eq!(fields.signature(&key, t).as_str(), expected, "{name}: sign");
        assert_eq!(
            sign::sign_string(temp.as_bytes(), key.expose().as_bytes(), t).as_str(),
            expected,
            "{name}: hash of the string"
        );
        // The signed fields verify, and through their XML form too.
        let mut signed = fields.clone();
        signed.sign(&key, t);
        assert!(signed.verify(&key, t).is_ok(), "{name}: verify");
        let xml = signed.to_xml().unwrap();
        let back = wxpay_protocol::xml::read(xml.as_bytes()).unwrap();
        assert!(back.verify(&key, t).is_ok(), "{name}: verify after XML");
    }
}

#[test]
fn every_paysign_vector_gives_its_pay_sign() {
    let doc = load_json("v2_paysign.json");
    let cases = doc["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 2, "v2_paysign.json cases");
    for case in cases {
        let name = str_of(case, "name");
        let key = ApiKey::new(str_of(case, "key")).unwrap();
        let t: SignType = str_of(case, "sign_type").parse().unwrap();
        let p = &case["params"];
        let package = str_of(p, "package");
        let prepay_id = package.strip_prefix("prepay_id=").unwrap();
        let params = PayParams::sign_for(
            &AppId::new(str_of(p, "appId")).unwrap(),
            prepay_id,
            str_of(p, "timeStamp").parse().unwrap(),
            &Nonce::new(str_of(p, "nonceStr")).unwrap(),
            &key,
            t,
        )
        .unwrap();
        assert_eq!(params.pay_sign, str_of(case, "sign"), "{name}");
        assert_eq!(params.sign_type, str_of(p, "signType"), "{name}");
        let a = wxpay_protocol::sign::string_a(params.signed_pairs(), "paySign");
        assert_eq!(a, str_of(case, "string_a"), "{name}: stringA");
        assert!(params.verify(&key, t).is_ok(), "{name}");
        // The JSON handed to the mini program has the exact camelCase names.
        let json = serde_json::to_value(&params).unwrap();
        for field in ["appId", "timeStamp", "nonceStr", "package", "signType", "paySign"] {
            assert!(json.get(field).is_some(), "{name}: {field} in {json}");
        }
    }
}

#[test]
fn every_refund_vector_decrypts_to_its_plaintext_and_back() {
    let doc = load_json("v2_refund_notify.json");
    let cases = doc["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 2, "v2_refund_notify.json cases");
    for case in cases {
        let name = str_of(case, "name");
        let key = ApiKey::new(str_of(case, "api_key")).unwrap();
        let plain = decrypt_req_info(str_of(case, "req_info"), &key).unwrap();
        assert_eq!(plain, str_of(case, "plaintext"), "{name}");
        assert_eq!(
            encrypt_req_info(&plain, &key),
            str_of(case, "req_info"),
            "{name}: encryption is deterministic (ECB)"
        );
    }
}

#[test]
fn the_wechatpy_refund_notification_reads_as_typed_fields() {
    let doc = load_json("v2_refund_notify.json");
    let case = &doc["cases"][0];
    let merchant = Merchant {
        appid: AppId::new("wx4f4bc4dec97d474b").unwrap(),
        mch_id: MchId::new("12345678").unwrap(),
        key: ApiKey::new(str_of(case, "api_key")).unwrap(),
        sign_type: SignType::Md5,
    };
    let body = format!(
        "<xml><return_code>SUCCESS</return_code><appid><![CDATA[wx4f4bc4dec97d474b]]></appid><mch_id><![CDATA[12345678]]></mch_id><nonce_str><![CDATA[TeqClE3i0mvn3DrK]]></nonce_str><req_info><![CDATA[{}]]></req_info></xml>",
        str_of(case, "req_info")
    );
    let n = RefundNotification::parse(body.as_bytes(), &merchant).unwrap();
    assert_eq!(n.out_refund_no, "1234");
    assert_eq!(n.out_trade_no, "2020010418301551404339261814");
    assert_eq!(n.transaction_id, "4200000483202001042069747825");
    assert_eq!(n.refund_id, "50300103182020010413419046597");
    assert_eq!(n.refund_fee.get(), 1);
    assert_eq!(n.total_fee.get(), 1);
    assert_eq!(n.refund_status.as_str(), "SUCCESS");
    assert_eq!(n.success_time.unwrap().to_dashed(), "2020-01-04 18:34:24");
    assert_eq!(n.refund_recv_accout.as_deref(), Some("招商银行信用卡8915"));
    assert_eq!(n.refund_request_source.as_deref(), Some("API"));
    assert!(n.extra.is_empty(), "{:?}", n.extra);
}
