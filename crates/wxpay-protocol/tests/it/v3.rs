//! APIv3 against the known answers of `v3.json`, made with the test-only keys in
//! `testdata/vectors/keys/`, at a fixed clock.

use serde_json::Value;
use wxpay_protocol::v3::auth::{self, SignatureHeaders};
use wxpay_protocol::v3::notify::{Envelope, Resource};
use wxpay_protocol::v3::{AeadError, Certificate, MerchantKey, PublicKey, SignedHeaders, Verifier, VerifyError, aead};
use wxpay_protocol::{AppId, MchId, Nonce};

use crate::support::{load_json, vectors_dir};

fn pem(name: &str) -> String {
    std::fs::read_to_string(vectors_dir().join("keys").join(name)).unwrap()
}

fn text(v: &Value) -> &str {
    v.as_str().unwrap()
}

fn merchant_key(v: &Value) -> MerchantKey {
    MerchantKey::from_pem(&pem("merchant_private_key.pem"), text(&v["merchant"]["serial_no"])).unwrap()
}

#[test]
fn requests_are_signed_and_authorized_byte_for_byte_as_the_vectors_say() {
    let v = load_json("v3.json");
    let key = merchant_key(&v);
    let mchid = MchId::new(text(&v["merchant"]["mchid"])).unwrap();
    for r in v["request_signatures"].as_array().unwrap() {
        let nonce = Nonce::new(text(&r["nonce"])).unwrap();
        let timestamp: i64 = text(&r["timestamp"]).parse().unwrap();
        let (method, url, body) = (text(&r["method"]), text(&r["url"]), text(&r["body"]));
        assert_eq!(
            auth::request_message(method, url, timestamp, &nonce, body),
            text(&r["message"]),
            "{url}"
        );
        assert_eq!(
            key.sign(text(&r["message"]).as_bytes()).unwrap(),
            text(&r["signature"]),
            "{url}"
        );
        assert_eq!(
            auth::authorization(&mchid, &key, method, url, timestamp, &nonce, body).unwrap(),
            text(&r["authorization"]),
            "{url}"
        );
    }
}

#[test]
fn the_merchant_certificate_names_the_serial_that_requests_carry() {
    let v = load_json("v3.json");
    let cert = Certificate::from_pem(&pem("merchant_cert.pem")).unwrap();
    assert_eq!(cert.serial_no(), text(&v["merchant"]["serial_no"]));
    let platform = Certificate::from_pem(&pem("platform_cert.pem")).unwrap();
    assert_eq!(platform.serial_no(), text(&v["platform"]["serial_no"]));
    // The certificate's key verifies what the private key signs.
    let key = merchant_key(&v);
    let signature = key.sign(b"hello").unwrap();
    let raw = base64_decode(&signature);
    assert!(cert.public_key().verifies(b"hello", &raw));
    assert!(!cert.public_key().verifies(b"hellO", &raw));
    assert!(!platform.public_key().verifies(b"hello", &raw));
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

#[test]
fn pay_sign_with_rsa_is_the_vectors() {
    let v = load_json("v3.json");
    let p = &v["paysign"];
    let sign = auth::pay_sign(
        &merchant_key(&v),
        &AppId::new(text(&p["appId"])).unwrap(),
        text(&p["timeStamp"]).parse().unwrap(),
        &Nonce::new(text(&p["nonceStr"])).unwrap(),
        text(&p["package"]).strip_prefix("prepay_id=").unwrap(),
    )
    .unwrap();
    assert_eq!(sign, text(&p["paySign"]));
    // The five fields as the mini program takes them, signed the same way.
    let params = auth::pay_params(
        &merchant_key(&v),
        &AppId::new(text(&p["appId"])).unwrap(),
        text(&p["package"]).strip_prefix("prepay_id=").unwrap(),
        text(&p["timeStamp"]).parse().unwrap(),
        &Nonce::new(text(&p["nonceStr"])).unwrap(),
    )
    .unwrap();
    assert_eq!(
        (
            params.sign_type.as_str(),
            params.package.as_str(),
            params.pay_sign.as_str()
        ),
        ("RSA", text(&p["package"]), text(&p["paySign"]))
    );
}

#[test]
fn resources_decrypt_to_the_vectors_and_encrypt_back() {
    let v = load_json("v3.json");
    for c in v["aes_gcm"].as_array().unwrap() {
        let (key, nonce, ad) = (
            text(&c["key"]).as_bytes(),
            text(&c["nonce"]),
            text(&c["associated_data"]),
        );
        let plain = aead::decrypt(key, nonce, ad, text(&c["ciphertext"])).unwrap();
        assert_eq!(
            String::from_utf8(plain).unwrap(),
            text(&c["plaintext"]),
            "{}",
            c["name"]
        );
        assert_eq!(
            aead::encrypt(key, nonce, ad, text(&c["plaintext"]).as_bytes()).unwrap(),
            text(&c["ciphertext"])
        );
        // Another key, other associated data, a changed ciphertext: the tag refuses them.
        let other = b"b7cde1ZJB1kG2e7VfTs3jQzaWizur8Gb";
        assert_eq!(
            aead::decrypt(other, nonce, ad, text(&c["ciphertext"])),
            Err(AeadError::Tag)
        );
        assert_eq!(
            aead::decrypt(key, nonce, "other", text(&c["ciphertext"])),
            Err(AeadError::Tag)
        );
        let mut tampered = base64_decode(text(&c["ciphertext"]));
        tampered[0] ^= 1;
        use base64::Engine;
        let tampered = base64::engine::general_purpose::STANDARD.encode(tampered);
        assert_eq!(aead::decrypt(key, nonce, ad, &tampered), Err(AeadError::Tag));
    }
    assert_eq!(
        aead::decrypt(b"short", "uluk4a9R25RW", "", "AA=="),
        Err(AeadError::KeyLength(5))
    );
    assert_eq!(
        aead::decrypt(text(&v["apiv3_key"]).as_bytes(), "short", "", "AA=="),
        Err(AeadError::NonceLength(5))
    );
}

fn notification(v: &Value) -> (SignatureHeaders<'_>, &[u8], i64) {
    let n = &v["notification"];
    let h = &n["headers"];
    let headers = SignatureHeaders {
        timestamp: text(&h["Wechatpay-Timestamp"]),
        nonce: text(&h["Wechatpay-Nonce"]),
        signature: text(&h["Wechatpay-Signature"]),
        serial: text(&h["Wechatpay-Serial"]),
    };
    let now = headers.timestamp.parse().unwrap();
    (headers, text(&n["body"]).as_bytes(), now)
}

fn platform_verifier() -> Verifier {
    Verifier::new().with_certificate(&Certificate::from_pem(&pem("platform_cert.pem")).unwrap())
}

#[test]
fn a_notification_verifies_with_its_platform_certificate_and_its_resource_decrypts() {
    let v = load_json("v3.json");
    let (headers, body, now) = notification(&v);
    platform_verifier().verify(&headers, body, now).unwrap();
    let message = text(&v["notification"]["message"]);
    assert_eq!(
        message.as_bytes(),
        [headers.timestamp, headers.nonce, text(&v["notification"]["body"]), ""]
            .join("\n")
            .as_bytes()
    );
    let parsed: Value = serde_json::from_slice(body).unwrap();
    let r = &parsed["resource"];
    let plain = aead::decrypt(
        text(&v["apiv3_key"]).as_bytes(),
        text(&r["nonce"]),
        text(&r["associated_data"]),
        text(&r["ciphertext"]),
    )
    .unwrap();
    let decrypted: Value = serde_json::from_slice(&plain).unwrap();
    let expected = &v["notification"]["decrypted_resource"];
    let expected: Value = match expected {
        Value::String(s) => serde_json::from_str(s).unwrap(),
        other => other.clone(),
    };
    assert_eq!(decrypted, expected);
}

#[test]
fn the_wechat_pay_public_key_verifies_by_its_id_beside_the_certificates() {
    let v = load_json("v3.json");
    let (headers, body, now) = notification(&v);
    let id = text(&v["platform"]["public_key_id"]);
    let by_id = SignatureHeaders { serial: id, ..headers };
    let both = platform_verifier().with_public_key(id, PublicKey::from_pem(&pem("platform_public_key.pem")).unwrap());
    both.verify(&by_id, body, now).unwrap();
    both.verify(&headers, body, now).unwrap();
    assert_eq!(
        platform_verifier().verify(&by_id, body, now),
        Err(VerifyError::UnknownSerial(id.to_owned()))
    );
}

#[test]
fn a_platform_certificate_verifies_only_until_it_expires_or_the_expiry_listed() {
    let v = load_json("v3.json");
    let (headers, body, now) = notification(&v);
    let cert = Certificate::from_pem(&pem("platform_cert.pem")).unwrap();
    let serial = cert.serial_no().to_owned();
    // Listed to expire one second before the notification was signed (as after a rotation):
    // the signature is genuine, and refused all the same.
    let listed = Verifier::new().with_certificate_until(&cert, now - 1);
    assert_eq!(
        listed.verify(&headers, body, now),
        Err(VerifyError::Expired {
            serial: serial.clone(),
            not_after: now - 1
        })
    );
    assert_eq!(
        Verifier::new()
            .with_certificate_until(&cert, now)
            .verify(&headers, body, now),
        Ok(())
    );
    // The list cannot extend a certificate past its own expiry.
    let extended = Verifier::new().with_certificate_until(&cert, i64::MAX);
    let expired_at = cert.not_after() + 1;
    let stamp = expired_at.to_string();
    let late = SignatureHeaders {
        timestamp: &stamp,
        ..headers
    };
    assert_eq!(
        extended.verify(&late, body, expired_at),
        Err(VerifyError::Expired {
            serial: serial.clone(),
            not_after: cert.not_after()
        })
    );
    // The WeChat Pay public key has no expiry of its own: the same key by its id still
    // gets as far as the signature (the signature covers the old timestamp, so it fails
    // there, not on an expiry).
    let id = text(&v["platform"]["public_key_id"]);
    let by_id = SignatureHeaders { serial: id, ..late };
    let public = Verifier::new().with_public_key(id, PublicKey::from_pem(&pem("platform_public_key.pem")).unwrap());
    assert_eq!(
        public.verify(&by_id, body, expired_at),
        Err(VerifyError::BadSignature { serial: id.to_owned() })
    );
}

#[test]
fn probes_stale_or_tampered_notifications_are_refused_each_with_its_reason() {
    let v = load_json("v3.json");
    let (headers, body, now) = notification(&v);
    let verifier = platform_verifier();
    let probe = SignatureHeaders {
        signature: "WECHATPAY/SIGNTEST/abcdefg",
        ..headers
    };
    assert_eq!(verifier.verify(&probe, body, now), Err(VerifyError::Probe));
    assert_eq!(verifier.verify(&headers, body, now + 299), Ok(()));
    assert_eq!(
        verifier.verify(&headers, body, now + 300),
        Err(VerifyError::Stale { skew_secs: 300 })
    );
    assert_eq!(
        verifier.verify(&headers, body, now - 300),
        Err(VerifyError::Stale { skew_secs: -300 })
    );
    // A body re-serialized on its way (here: a space added) no longer matches.
    let mut changed = body.to_vec();
    changed.insert(1, b' ');
    assert!(matches!(
        verifier.verify(&headers, &changed, now),
        Err(VerifyError::BadSignature { .. })
    ));
    let missing = SignatureHeaders { nonce: "", ..headers };
    assert_eq!(verifier.verify(&missing, body, now), Err(VerifyError::Missing("Nonce")));
    let garbled = SignatureHeaders {
        signature: "not base64!",
        ..headers
    };
    assert_eq!(verifier.verify(&garbled, body, now), Err(VerifyError::NotBase64));
    let hostile = SignatureHeaders {
        timestamp: "-9223372036854775808",
        ..headers
    };
    assert!(matches!(
        verifier.verify(&hostile, body, now),
        Err(VerifyError::Stale { .. })
    ));
    assert!(matches!(
        verifier.verify(
            &SignatureHeaders {
                timestamp: "soon",
                ..headers
            },
            body,
            now
        ),
        Err(VerifyError::BadTimestamp(_))
    ));
}

#[test]
fn keys_that_are_not_rsa_pem_are_refused_with_a_reason() {
    assert!(MerchantKey::from_pem("no pem here", "AB").is_err());
    assert!(MerchantKey::from_pem(&pem("merchant_public_key.pem"), "AB").is_err());
    assert!(PublicKey::from_pem(&pem("merchant_private_key.pem")).is_err());
    assert!(Certificate::from_pem(&pem("platform_public_key.pem")).is_err());
    let key = MerchantKey::from_pem(&pem("merchant_private_key.pem"), "3775b6a4").unwrap();
    assert_eq!(key.serial_no(), "3775B6A4");
    assert!(!format!("{key:?}").contains("BEGIN"));
}

#[test]
fn a_jsapi_order_is_the_body_the_vector_signs_and_its_notification_reads_as_a_transaction() {
    use wxpay_protocol::v3::calls::{self, CreateJsapi, TradeState};
    use wxpay_protocol::{Fen, OutTradeNo};
    let v = load_json("v3.json");
    let r = &v["request_signatures"][1];
    let body: Value = serde_json::from_str(text(&r["body"])).unwrap();
    let appid = AppId::new(text(&body["appid"])).unwrap();
    let mchid = MchId::new(text(&body["mchid"])).unwrap();
    let no = OutTradeNo::new(text(&body["out_trade_no"])).unwrap();
    let request = CreateJsapi {
        appid: &appid,
        mchid: &mchid,
        description: text(&body["description"]),
        out_trade_no: &no,
        time_expire: None,
        attach: None,
        notify_url: text(&body["notify_url"]),
        amount: Fen::new(body["amount"]["total"].as_u64().unwrap()).unwrap(),
        openid: text(&body["payer"]["openid"]),
    }
    .request();
    assert_eq!((request.method, request.url.as_str()), ("POST", text(&r["url"])));
    assert_eq!(request.body, text(&r["body"]));
    // The notification's resource, decrypted, is a paid transaction of 100 fen.
    let n: Value = serde_json::from_str(text(&v["notification"]["body"])).unwrap();
    let res = &n["resource"];
    let plain = aead::decrypt(
        text(&v["apiv3_key"]).as_bytes(),
        text(&res["nonce"]),
        text(&res["associated_data"]),
        text(&res["ciphertext"]),
    )
    .unwrap();
    let t = calls::transaction(&plain).unwrap();
    assert_eq!(t.trade_state, TradeState::Success);
    assert_eq!(t.total, Some(Fen::new(100).unwrap()));
    assert_eq!(t.success_time, Some(1_528_425_296));
    assert!(t.transaction_id.is_some());
    // Yuan instead of fen is refused, not rounded.
    let yuan = br#"{"appid":"a","mchid":"1","out_trade_no":"W1","trade_state":"SUCCESS","amount":{"total":1.5}}"#;
    assert!(calls::transaction(yuan).is_err());
}

#[test]
fn a_verified_notification_reads_into_its_payment_and_refuses_a_wrong_key() {
    use wxpay_protocol::v3::notify::{Envelope, Event, NotifyError};
    let v = load_json("v3.json");
    let (headers, body, now) = notification(&v);
    platform_verifier().verify(&headers, body, now).unwrap();
    let envelope = Envelope::read(body).unwrap();
    assert_eq!(envelope.event_type, "TRANSACTION.SUCCESS");
    let Event::Transaction(t) = envelope.event(text(&v["apiv3_key"]).as_bytes()).unwrap() else {
        panic!("a payment notification read as a refund");
    };
    assert_eq!(t.out_trade_no.as_str(), "1217752501201407033233368018");
    assert_eq!(
        envelope.event(b"b7cde1ZJB1kG2e7VfTs3jQzaWizur8Gb"),
        Err(NotifyError::Decrypt(AeadError::Tag))
    );
    let mut other = envelope.clone();
    other.resource.algorithm = "AEAD_AES_128_GCM".to_owned();
    assert!(matches!(
        other.event(text(&v["apiv3_key"]).as_bytes()),
        Err(NotifyError::Algorithm(_))
    ));
    assert!(matches!(Envelope::read(b"<xml/>"), Err(NotifyError::Envelope(_))));
}

#[test]
fn the_certificate_list_decrypts_and_a_serial_naming_another_certificate_is_refused() {
    use wxpay_protocol::v3::calls;
    let v = load_json("v3.json");
    let key = text(&v["apiv3_key"]);
    let cert = pem("platform_cert.pem");
    let serial = text(&v["platform"]["serial_no"]);
    let list = |listed: &str| {
        let ciphertext = aead::encrypt(key.as_bytes(), "14b16c03dc1b", "certificate", cert.as_bytes()).unwrap();
        serde_json::json!({"data": [{
            "serial_no": listed,
            "effective_time": "2023-09-19T23:15:58+08:00",
            "expire_time": "2028-09-17T23:15:58+08:00",
            "encrypt_certificate": {"algorithm": "AEAD_AES_256_GCM", "nonce": "14b16c03dc1b",
                "associated_data": "certificate", "ciphertext": ciphertext}
        }]})
        .to_string()
    };
    let certs = calls::platform_certificates(list(serial).as_bytes(), key.as_bytes()).unwrap();
    assert_eq!(certs.len(), 1);
    assert_eq!(certs[0].serial_no, serial);
    assert_eq!(certs[0].pem, cert);
    // The decrypted certificate verifies the notification it signed.
    let (headers, body, now) = notification(&v);
    Verifier::new()
        .with_certificate(&certs[0].certificate)
        .verify(&headers, body, now)
        .unwrap();
    assert!(calls::platform_certificates(list("ABCDEF").as_bytes(), key.as_bytes()).is_err());
    assert!(calls::platform_certificates(list(serial).as_bytes(), b"b7cde1ZJB1kG2e7VfTs3jQzaWizur8Gb").is_err());
}

#[test]
fn the_doctor_names_what_made_a_genuine_notification_fail() {
    /// The doctor's report, whose every line has its Chinese explanation.
    fn diagnose(
        h: &SignatureHeaders<'_>,
        body: &[u8],
        verifier: &Verifier,
        now: i64,
        key: Option<&[u8]>,
    ) -> wxpay_protocol::v3::doctor::Report {
        let r = wxpay_protocol::v3::doctor::diagnose(h, body, verifier, now, key);
        let chinese = |s: &str| s.chars().any(|c| ('\u{4e00}'..='\u{9fff}').contains(&c));
        for t in std::iter::once(&r.headline).chain(&r.confirmed).chain(&r.hints) {
            assert!(chinese(&t.zh), "{}", t.zh);
        }
        r
    }
    let v = load_json("v3.json");
    let (headers, body, now) = notification(&v);
    let verifier = platform_verifier();
    let key = text(&v["apiv3_key"]).as_bytes();

    let ok = diagnose(&headers, body, &verifier, now, Some(key));
    assert!(ok.verified && ok.headline.en.starts_with("OK"), "{ok}");
    assert!(
        ok.in_lang(wxpay_protocol::lang::Lang::Zh)
            .to_string()
            .starts_with("通过："),
        "{ok}"
    );
    assert!(ok.resource.as_deref().unwrap().contains("out_trade_no"), "{ok}");

    // Re-serialized by a framework: whitespace added, a line break at the end, CRLF.
    let text_body = std::str::from_utf8(body).unwrap();
    for (changed, what) in [
        (text_body.replace("\",\"", "\", \""), "reformatted"),
        (format!("{text_body}\n"), "line break at its end"),
    ] {
        let r = diagnose(&headers, changed.as_bytes(), &verifier, now, None);
        assert!(!r.verified, "{what}");
        assert!(r.confirmed.iter().any(|c| c.contains(what)), "{what}: {r}");
    }
    // The clock, with the signature itself genuine.
    let r = diagnose(&headers, body, &verifier, now + 900, None);
    assert!(
        r.headline.contains("900 s") && r.confirmed[0].contains("genuine"),
        "{r}"
    );
    // A probe.
    let probe = SignatureHeaders {
        signature: "WECHATPAY/SIGNTEST/abc",
        ..headers
    };
    assert!(diagnose(&probe, body, &verifier, now, None).confirmed[0].contains("probe"));
    // Signed with the public key while only certificates are known.
    let by_id = SignatureHeaders {
        serial: "PUB_KEY_ID_0000000000000024101100397200000006",
        ..headers
    };
    let r = diagnose(&by_id, body, &verifier, now, None);
    assert!(
        r.hints[0].contains("pub_key.pem") && r.hints[0].contains("configure both"),
        "{r}"
    );
    // The key files swapped: the serial names one key, the other signed.
    let swapped = Verifier::new()
        .with_public_key(
            headers.serial,
            PublicKey::from_pem(&pem("merchant_public_key.pem")).unwrap(),
        )
        .with_public_key(
            "PUB_KEY_ID_01",
            PublicKey::from_pem(&pem("platform_public_key.pem")).unwrap(),
        );
    let r = diagnose(&headers, body, &swapped, now, None);
    assert!(r.confirmed[0].contains("signed with PUB_KEY_ID_01"), "{r}");
    // Verified, but another APIv3 key (the APIv2 key is 32 characters too).
    let r = diagnose(
        &headers,
        body,
        &verifier,
        now,
        Some(b"192006250b4c09247ec02edce69f6a2d"),
    );
    assert!(!r.verified && r.headline.contains("does not decrypt"), "{r}");
    assert!(r.confirmed[0].contains("APIv2 key"), "{r}");
}

#[test]
fn a_notification_sealed_and_signed_here_verifies_and_reads_back() {
    // What the simulator and the tests that stand in for WeChat Pay make, read by what the
    // gateway runs.
    let platform = Certificate::from_pem(&pem("platform_cert.pem")).unwrap();
    let key = MerchantKey::from_pem(&pem("platform_private_key.pem"), platform.serial_no()).unwrap();
    let apiv3_key = b"0123456789abcdefghijABCDEFGHIJ12";
    let plain = br#"{"mchid":"1230000109","out_trade_no":"NOTE-1"}"#;
    let resource = Resource::seal(apiv3_key, "transaction", "0123456789ab", plain).unwrap();
    let body = Envelope::new(
        "EV-1",
        "2026-12-04T12:00:00+08:00",
        "TRANSACTION.SUCCESS",
        "支付成功",
        resource,
    )
    .to_json();
    let signed = SignedHeaders::sign(&key, platform.serial_no(), 1_780_000_000, "nonce-1", body.as_bytes()).unwrap();
    let sent = signed.headers();
    assert_eq!(sent[4], ("Wechatpay-Signature-Type", auth::SCHEME.to_owned()));
    let headers = SignatureHeaders {
        timestamp: &signed.timestamp,
        nonce: &signed.nonce,
        signature: &signed.signature,
        serial: &signed.serial,
    };
    platform_verifier()
        .verify(&headers, body.as_bytes(), 1_780_000_000)
        .unwrap();
    let read = Envelope::read(body.as_bytes()).unwrap();
    assert_eq!(read.event_type, "TRANSACTION.SUCCESS");
    assert_eq!(read.decrypt(apiv3_key).unwrap(), plain);
    assert!(read.decrypt(b"0123456789abcdefghijABCDEFGHIJ13").is_err());
}
