//! Outside witnesses: the fixtures of `testdata/golden`, made by `make_golden.py` without any
//! wxpay code (Python's hashlib, hmac and `cryptography`). Elsewhere the crate's wire formats
//! are checked against the crate itself, so a mistake made the same way on both sides (the
//! signer and the verifier, the encryption and the decryption) would pass; here one side is
//! an independent implementation of the protocol.
//!
//! Requests are compared byte for byte. Their layout (field order, CDATA) is wxpay's own
//! choice, which the script copies on purpose; the signature inside them is what the protocol
//! decides. Answers, notifications and the bill are written the way WeChat Pay writes them,
//! and the crate must read them to the values the script recorded in `golden.json`.

use std::collections::BTreeMap;

use serde_json::Value;
use wxpay_protocol::v2::{
    self, BillType, CloseOrder, Coupon, DownloadBill, ErrCode, NotificationFields, OrderQuery, OrderRef,
    PaymentNotification, PaymentOutcome, Refund, RefundNotification, RefundQuery, RefundRef, UnifiedOrder, V2Call,
    decrypt_req_info, encrypt_req_info,
};
use wxpay_protocol::{ApiKey, AppId, BeijingTime, Error, Fen, MchId, Merchant, Nonce, OutRefundNo, OutTradeNo};

use crate::golden_index::{cases, golden_dir, index, text};

/// The exact bytes of one fixture file.
fn fixture(name: &str) -> Vec<u8> {
    let path = golden_dir().join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// A string that the index writes as `null` when the crate should see nothing.
fn opt_text<'a>(v: &'a Value, k: &str) -> Option<&'a str> {
    v.get(k).and_then(Value::as_str)
}

fn int(v: &Value, k: &str) -> i64 {
    v[k].as_i64()
        .unwrap_or_else(|| panic!("golden.json: {k} missing in {v}"))
}

fn fen(v: &Value, k: &str) -> Fen {
    Fen::new(
        v[k].as_u64()
            .unwrap_or_else(|| panic!("golden.json: {k} missing in {v}")),
    )
    .unwrap()
}

fn opt_fen(v: &Value, k: &str) -> Option<Fen> {
    v.get(k).and_then(Value::as_u64).map(|n| Fen::new(n).unwrap())
}

fn opt_unix(v: &Value, k: &str) -> Option<i64> {
    v.get(k).and_then(Value::as_i64)
}

fn owned(v: Option<&str>) -> Option<String> {
    v.map(str::to_owned)
}

/// One of the two merchants of the index (`md5` or `hmac`), as the crate takes it.
fn merchant(doc: &Value, who: &str) -> Merchant {
    let m = &doc["merchants"][who];
    Merchant {
        appid: AppId::new(text(m, "appid")).unwrap(),
        mch_id: MchId::new(text(m, "mch_id")).unwrap(),
        key: ApiKey::new(text(m, "key")).unwrap(),
        sign_type: text(m, "sign_type").parse().unwrap(),
    }
}

fn coupons(v: &Value) -> Vec<Coupon> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|c| Coupon {
            id: text(c, "id").to_owned(),
            kind: owned(opt_text(c, "kind")),
            fee: fen(c, "fee"),
        })
        .collect()
}

/// The body with one hex digit of its `sign` value replaced by another: a copy that differs
/// from the genuine one in a single byte.
fn with_sign_changed(body: &[u8], sign: &str) -> Vec<u8> {
    let text = std::str::from_utf8(body).unwrap();
    let at = text.find(sign).expect("the sign is in the body") + 5;
    let mut out = body.to_vec();
    out[at] = if out[at] == b'0' { b'1' } else { b'0' };
    out
}

// --- Requests -------------------------------------------------------------------------------

/// The signature and the body the crate makes for a call.
fn signed<C: V2Call>(call: &C, m: &Merchant, nonce: &Nonce) -> (String, String) {
    let fields = v2::signed_fields(call, m, nonce).unwrap();
    let sign = fields.get("sign").unwrap().to_owned();
    (sign, v2::encode(call, m, nonce).unwrap())
}

fn order_ref(i: &Value) -> OrderRef {
    match opt_text(i, "transaction_id") {
        Some(t) => OrderRef::TransactionId(t.to_owned()),
        None => OrderRef::OutTradeNo(OutTradeNo::new(text(i, "out_trade_no")).unwrap()),
    }
}

/// Builds the typed request the script described by its inputs, and signs it.
fn request(call: &str, i: &Value, m: &Merchant, nonce: &Nonce) -> (String, String) {
    let time = |k: &str| opt_unix(i, k).map(BeijingTime::from_unix);
    match call {
        "unifiedorder" => {
            let mut o = UnifiedOrder::jsapi(
                text(i, "body"),
                OutTradeNo::new(text(i, "out_trade_no")).unwrap(),
                fen(i, "total_fee"),
                text(i, "spbill_create_ip"),
                text(i, "notify_url"),
                text(i, "openid"),
            );
            o.attach = owned(opt_text(i, "attach"));
            o.detail = owned(opt_text(i, "detail"));
            o.goods_tag = owned(opt_text(i, "goods_tag"));
            o.limit_pay = owned(opt_text(i, "limit_pay"));
            o.time_start = time("time_start_unix");
            o.time_expire = time("time_expire_unix");
            signed(&o, m, nonce)
        }
        "orderquery" => signed(
            &OrderQuery {
                order: order_ref(i),
                extra: BTreeMap::new(),
            },
            m,
            nonce,
        ),
        "closeorder" => signed(
            &CloseOrder::new(OutTradeNo::new(text(i, "out_trade_no")).unwrap()),
            m,
            nonce,
        ),
        "refund" => {
            let mut r = Refund::new(
                order_ref(i),
                OutRefundNo::new(text(i, "out_refund_no")).unwrap(),
                fen(i, "total_fee"),
                fen(i, "refund_fee"),
            );
            r.refund_fee_type = owned(opt_text(i, "refund_fee_type"));
            r.refund_desc = owned(opt_text(i, "refund_desc"));
            r.refund_account = owned(opt_text(i, "refund_account"));
            r.notify_url = owned(opt_text(i, "notify_url"));
            signed(&r, m, nonce)
        }
        "refundquery" => {
            let by = if let Some(id) = opt_text(i, "refund_id") {
                RefundRef::RefundId(id.to_owned())
            } else if let Some(no) = opt_text(i, "out_refund_no") {
                RefundRef::OutRefundNo(OutRefundNo::new(no).unwrap())
            } else if let Some(t) = opt_text(i, "transaction_id") {
                RefundRef::TransactionId(t.to_owned())
            } else {
                RefundRef::OutTradeNo(OutTradeNo::new(text(i, "out_trade_no")).unwrap())
            };
            let offset = i
                .get("offset")
                .and_then(Value::as_u64)
                .map(|n| u32::try_from(n).unwrap());
            signed(
                &RefundQuery {
                    by,
                    offset,
                    extra: BTreeMap::new(),
                },
                m,
                nonce,
            )
        }
        "downloadbill" => signed(
            &DownloadBill {
                bill_date: BeijingTime::from_unix(int(i, "bill_date_unix")),
                bill_type: BillType::parse(text(i, "bill_type")).unwrap(),
                gzip: false,
                extra: BTreeMap::new(),
            },
            m,
            nonce,
        ),
        other => panic!("golden.json names an unknown call {other:?}"),
    }
}

/// Compares every request of one merchant with the script's, and reports all differences at
/// once: the signature first (the protocol's part), then the bytes (wxpay's layout too).
fn requests_match_the_script(who: &str) {
    let doc = index();
    let mine: Vec<&Value> = cases(&doc, "requests", 12)
        .iter()
        .filter(|c| text(c, "merchant") == who)
        .collect();
    assert_eq!(mine.len(), 6, "one request of each of the six calls for {who}");
    let m = merchant(&doc, who);
    let mut wrong = Vec::new();
    for case in mine {
        let name = text(case, "name");
        let nonce = Nonce::new(text(case, "nonce")).unwrap();
        let (sign, body) = request(text(case, "call"), &case["inputs"], &m, &nonce);
        if sign != text(case, "sign") {
            wrong.push(format!(
                "{name}: the crate signed {sign}, the script {} over {:?}",
                text(case, "sign"),
                text(case, "string_sign_temp")
            ));
        }
        let golden = fixture(text(case, "file"));
        if body.as_bytes() != golden {
            wrong.push(format!(
                "{name}: the bodies differ\n  crate:  {body}\n  script: {}",
                String::from_utf8_lossy(&golden)
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn every_md5_request_is_byte_for_byte_what_the_independent_script_made() {
    requests_match_the_script("md5");
}

#[test]
fn every_hmac_request_is_byte_for_byte_what_the_independent_script_made() {
    requests_match_the_script("hmac");
}

// --- Answers --------------------------------------------------------------------------------

/// Decodes an answer with its call's decoder and compares the typed values with what the
/// script recorded. Errors of the decoder are returned, so that the same function serves the
/// refusal of tampered copies.
fn decode_answer(call: &str, body: &[u8], m: &Merchant, e: &Value, name: &str) -> Result<(), Error> {
    match call {
        "unifiedorder" => {
            let r = UnifiedOrder::decode(body, m)?;
            assert_eq!(r.prepay_id, text(e, "prepay_id"), "{name}");
            assert_eq!(r.trade_type.as_str(), text(e, "trade_type"), "{name}");
            assert!(r.extra.is_empty(), "{name}: {:?}", r.extra);
        }
        "orderquery" => {
            let r = OrderQuery::decode(body, m)?;
            assert_eq!(r.trade_state.as_str(), text(e, "trade_state"), "{name}");
            assert_eq!(r.trade_state_desc.as_deref(), opt_text(e, "trade_state_desc"), "{name}");
            assert_eq!(r.out_trade_no, text(e, "out_trade_no"), "{name}");
            assert_eq!(r.transaction_id.as_deref(), opt_text(e, "transaction_id"), "{name}");
            assert_eq!(r.total_fee, opt_fen(e, "total_fee"), "{name}");
            assert_eq!(r.cash_fee, opt_fen(e, "cash_fee"), "{name}");
            assert_eq!(r.coupon_fee, opt_fen(e, "coupon_fee"), "{name}");
            assert_eq!(r.coupons, coupons(&e["coupons"]), "{name}");
            assert_eq!(r.fee_type.as_deref(), opt_text(e, "fee_type"), "{name}");
            assert_eq!(r.cash_fee_type.as_deref(), opt_text(e, "cash_fee_type"), "{name}");
            assert_eq!(r.openid.as_deref(), opt_text(e, "openid"), "{name}");
            assert_eq!(r.is_subscribe.as_deref(), opt_text(e, "is_subscribe"), "{name}");
            assert_eq!(
                r.trade_type.as_ref().map(|t| t.as_str()),
                opt_text(e, "trade_type"),
                "{name}"
            );
            assert_eq!(r.bank_type.as_deref(), opt_text(e, "bank_type"), "{name}");
            assert_eq!(
                r.time_end.map(BeijingTime::unix),
                opt_unix(e, "time_end_unix"),
                "{name}"
            );
            // An empty element (as live answers carry) reads as absent.
            assert_eq!(r.attach.as_deref(), opt_text(e, "attach"), "{name}");
            assert_eq!(r.device_info.as_deref(), opt_text(e, "device_info"), "{name}");
            assert!(r.extra.is_empty(), "{name}: {:?}", r.extra);
        }
        "refund" => {
            let r = Refund::decode(body, m)?;
            assert_eq!(r.transaction_id, text(e, "transaction_id"), "{name}");
            assert_eq!(r.out_trade_no, text(e, "out_trade_no"), "{name}");
            assert_eq!(r.out_refund_no, text(e, "out_refund_no"), "{name}");
            assert_eq!(r.refund_id, text(e, "refund_id"), "{name}");
            assert_eq!(r.refund_fee, fen(e, "refund_fee"), "{name}");
            assert_eq!(r.total_fee, fen(e, "total_fee"), "{name}");
            assert_eq!(r.cash_fee, opt_fen(e, "cash_fee"), "{name}");
            assert_eq!(r.cash_refund_fee, opt_fen(e, "cash_refund_fee"), "{name}");
            assert_eq!(r.coupon_refund_fee, opt_fen(e, "coupon_refund_fee"), "{name}");
            assert_eq!(
                r.coupon_refund_count.map(u64::from),
                e["coupon_refund_count"].as_u64(),
                "{name}"
            );
            assert_eq!(r.refund_channel.as_deref(), opt_text(e, "refund_channel"), "{name}");
            assert!(r.extra.is_empty(), "{name}: {:?}", r.extra);
        }
        "refundquery" => {
            let r = RefundQuery::decode(body, m)?;
            assert_eq!(r.transaction_id, text(e, "transaction_id"), "{name}");
            assert_eq!(r.out_trade_no, text(e, "out_trade_no"), "{name}");
            assert_eq!(r.total_fee, fen(e, "total_fee"), "{name}");
            assert_eq!(r.cash_fee, opt_fen(e, "cash_fee"), "{name}");
            assert_eq!(r.refund_fee, opt_fen(e, "refund_fee"), "{name}");
            let expected = e["refunds"].as_array().unwrap();
            assert_eq!(r.refunds.len(), expected.len(), "{name}");
            for (got, want) in r.refunds.iter().zip(expected) {
                assert_eq!(got.out_refund_no, text(want, "out_refund_no"), "{name}");
                assert_eq!(got.refund_id, text(want, "refund_id"), "{name}");
                assert_eq!(got.refund_fee, fen(want, "refund_fee"), "{name}");
                assert_eq!(got.refund_status.as_str(), text(want, "refund_status"), "{name}");
                assert_eq!(
                    got.refund_channel.as_deref(),
                    opt_text(want, "refund_channel"),
                    "{name}"
                );
                assert_eq!(
                    got.refund_account.as_deref(),
                    opt_text(want, "refund_account"),
                    "{name}"
                );
                assert_eq!(
                    got.refund_recv_accout.as_deref(),
                    opt_text(want, "refund_recv_accout"),
                    "{name}"
                );
                assert_eq!(
                    got.refund_success_time.map(BeijingTime::unix),
                    opt_unix(want, "refund_success_time_unix"),
                    "{name}"
                );
            }
            assert!(r.extra.is_empty(), "{name}: {:?}", r.extra);
        }
        "closeorder" => match CloseOrder::decode(body, m) {
            // The signed business error is the expected outcome; a bad signature comes out
            // as the error it is.
            Err(Error::Business { code, description }) => {
                assert_eq!(code, ErrCode::parse(text(e, "err_code")), "{name}");
                assert_eq!(description, text(e, "err_code_des"), "{name}");
            }
            Err(other) => return Err(other),
            Ok(r) => panic!("{name}: a business error read as success: {r:?}"),
        },
        other => panic!("golden.json names an unknown call {other:?}"),
    }
    Ok(())
}

#[test]
fn every_signed_answer_of_the_script_verifies_and_reads_as_its_recorded_values() {
    let doc = index();
    for case in cases(&doc, "answers", 10) {
        let name = text(case, "name");
        let m = merchant(&doc, text(case, "merchant"));
        let body = fixture(text(case, "file"));
        if let Err(e) = decode_answer(text(case, "call"), &body, &m, &case["expect"], name) {
            panic!("{name}: refused: {e}");
        }
    }
}

#[test]
fn an_answer_with_one_byte_of_its_sign_changed_is_refused() {
    let doc = index();
    for case in cases(&doc, "answers", 10) {
        let name = text(case, "name");
        let m = merchant(&doc, text(case, "merchant"));
        let tampered = with_sign_changed(&fixture(text(case, "file")), text(case, "sign"));
        let result = decode_answer(text(case, "call"), &tampered, &m, &case["expect"], name);
        assert!(matches!(result, Err(Error::BadSignature { .. })), "{name}: {result:?}");
    }
}

// --- Notifications --------------------------------------------------------------------------

#[test]
fn the_scripts_payment_notifications_verify_and_read_as_their_recorded_values() {
    let doc = index();
    for case in cases(&doc, "payment_notifications", 2) {
        let name = text(case, "name");
        let m = merchant(&doc, text(case, "merchant"));
        let e = &case["expect"];
        let n = PaymentNotification::parse(&fixture(text(case, "file")), &m)
            .unwrap_or_else(|err| panic!("{name}: refused: {err}"));
        assert_eq!(n.appid, text(e, "appid"), "{name}");
        assert_eq!(n.mch_id, text(e, "mch_id"), "{name}");
        assert_eq!(n.out_trade_no, text(e, "out_trade_no"), "{name}");
        assert_eq!(
            n.outcome,
            PaymentOutcome::Paid {
                transaction_id: text(e, "transaction_id").to_owned(),
                total_fee: fen(e, "total_fee"),
                time_end: BeijingTime::from_unix(int(e, "time_end_unix")),
            },
            "{name}"
        );
        assert_eq!(n.cash_fee, opt_fen(e, "cash_fee"), "{name}");
        assert_eq!(n.coupon_fee, opt_fen(e, "coupon_fee"), "{name}");
        assert_eq!(n.coupons, coupons(&e["coupons"]), "{name}");
        assert_eq!(n.openid.as_deref(), opt_text(e, "openid"), "{name}");
        assert_eq!(n.attach.as_deref(), opt_text(e, "attach"), "{name}");
        assert_eq!(n.bank_type.as_deref(), opt_text(e, "bank_type"), "{name}");
        assert_eq!(n.is_subscribe.as_deref(), opt_text(e, "is_subscribe"), "{name}");
        assert_eq!(n.fee_type.as_deref(), opt_text(e, "fee_type"), "{name}");
        assert_eq!(
            n.trade_type.as_ref().map(|t| t.as_str()),
            opt_text(e, "trade_type"),
            "{name}"
        );
        assert!(n.extra.is_empty(), "{name}: {:?}", n.extra);
    }
}

#[test]
fn a_payment_notification_with_a_changed_sign_or_amount_is_refused() {
    let doc = index();
    for case in cases(&doc, "payment_notifications", 2) {
        let name = text(case, "name");
        let m = merchant(&doc, text(case, "merchant"));
        let body = fixture(text(case, "file"));
        let bad_sign = with_sign_changed(&body, text(case, "sign"));
        let total = case["expect"]["total_fee"].as_u64().unwrap();
        let genuine = String::from_utf8(body).unwrap();
        let amount = format!("<total_fee>{total}</total_fee>");
        assert!(genuine.contains(&amount), "{name}: the amount is written bare");
        let bad_amount = genuine.replace(&amount, "<total_fee>1</total_fee>");
        for (what, tampered) in [("sign", bad_sign), ("amount", bad_amount.into_bytes())] {
            let result = PaymentNotification::parse(&tampered, &m);
            assert!(
                matches!(result, Err(Error::BadSignature { .. })),
                "{name}, changed {what}: {result:?}"
            );
        }
    }
}

#[test]
fn the_scripts_refund_notifications_decrypt_to_its_plaintext_and_recorded_values() {
    let doc = index();
    for case in cases(&doc, "refund_notifications", 2) {
        let name = text(case, "name");
        let m = merchant(&doc, text(case, "merchant"));
        let body = fixture(text(case, "file"));
        let raw = NotificationFields::read(&body).unwrap();
        let req_info = raw.fields().get("req_info").unwrap();
        // Both directions: the crate decrypts the script's ciphertext, and (ECB being
        // deterministic) encrypts the script's plaintext to the same ciphertext, which is what
        // the simulator sends.
        assert_eq!(
            decrypt_req_info(req_info, &m.key).unwrap(),
            text(case, "plaintext"),
            "{name}"
        );
        assert_eq!(encrypt_req_info(text(case, "plaintext"), &m.key), req_info, "{name}");

        let e = &case["expect"];
        let n = RefundNotification::parse(&body, &m).unwrap_or_else(|err| panic!("{name}: refused: {err}"));
        assert_eq!(n.appid, text(e, "appid"), "{name}");
        assert_eq!(n.mch_id, text(e, "mch_id"), "{name}");
        assert_eq!(n.transaction_id, text(e, "transaction_id"), "{name}");
        assert_eq!(n.out_trade_no, text(e, "out_trade_no"), "{name}");
        assert_eq!(n.refund_id, text(e, "refund_id"), "{name}");
        assert_eq!(n.out_refund_no, text(e, "out_refund_no"), "{name}");
        assert_eq!(n.total_fee, fen(e, "total_fee"), "{name}");
        assert_eq!(n.settlement_total_fee, opt_fen(e, "settlement_total_fee"), "{name}");
        assert_eq!(n.refund_fee, fen(e, "refund_fee"), "{name}");
        assert_eq!(n.settlement_refund_fee, opt_fen(e, "settlement_refund_fee"), "{name}");
        assert_eq!(n.refund_status.as_str(), text(e, "refund_status"), "{name}");
        assert_eq!(
            n.success_time.map(BeijingTime::unix),
            opt_unix(e, "success_time_unix"),
            "{name}"
        );
        assert_eq!(
            n.refund_recv_accout.as_deref(),
            opt_text(e, "refund_recv_accout"),
            "{name}"
        );
        assert_eq!(n.refund_account.as_deref(), opt_text(e, "refund_account"), "{name}");
        assert_eq!(
            n.refund_request_source.as_deref(),
            opt_text(e, "refund_request_source"),
            "{name}"
        );
        assert!(n.extra.is_empty(), "{name}: {:?}", n.extra);
    }
}

#[test]
fn a_refund_notification_with_a_changed_req_info_is_refused() {
    let doc = index();
    for case in cases(&doc, "refund_notifications", 2) {
        let name = text(case, "name");
        let m = merchant(&doc, text(case, "merchant"));
        let body = String::from_utf8(fixture(text(case, "file"))).unwrap();
        let raw = NotificationFields::read(body.as_bytes()).unwrap();
        let req_info = raw.fields().get("req_info").unwrap().to_owned();
        // One Base64 character inside the last AES block: ECB decrypts that block to noise,
        // so its PKCS#7 padding no longer holds. (The notification has no signature; the
        // encryption is its only proof of origin.)
        let mut changed = req_info.clone().into_bytes();
        let at = changed.len() - 8;
        changed[at] = if changed[at] == b'A' { b'B' } else { b'A' };
        let tampered = body.replace(&req_info, std::str::from_utf8(&changed).unwrap());
        assert_ne!(tampered, body);
        let result = RefundNotification::parse(tampered.as_bytes(), &m);
        assert!(matches!(result, Err(Error::Decrypt(_))), "{name}: {result:?}");
    }
}

// --- The bill -------------------------------------------------------------------------------

#[test]
fn the_scripts_all_bill_reads_to_its_recorded_rows_and_totals() {
    let doc = index();
    let golden = &doc["bill"];
    assert_eq!(text(golden, "bill_type"), "ALL");
    let expected = cases(golden, "rows", 4);
    // The bill is read as the gateway reads it: through the call's decoder, from bytes with
    // their BOM and CRLF line ends.
    let m = merchant(&doc, "md5");
    let bill = DownloadBill::decode(&fixture(text(golden, "file")), &m).unwrap();
    assert_eq!(bill.columns.len(), 27);
    assert_eq!(bill.rows.len(), expected.len());
    for (i, (row, e)) in bill.rows.iter().zip(expected).enumerate() {
        assert_eq!(row.trade_time.unix(), int(e, "trade_time_unix"), "row {i}");
        assert_eq!(row.trade_time.to_dashed(), text(e, "trade_time"), "row {i}");
        assert_eq!(row.appid, text(e, "appid"), "row {i}");
        assert_eq!(row.mch_id, text(e, "mch_id"), "row {i}");
        assert_eq!(row.transaction_id, text(e, "transaction_id"), "row {i}");
        assert_eq!(row.out_trade_no, text(e, "out_trade_no"), "row {i}");
        assert_eq!(row.openid, text(e, "openid"), "row {i}");
        assert_eq!(row.trade_state, text(e, "trade_state"), "row {i}");
        assert_eq!(row.bank_type, text(e, "bank_type"), "row {i}");
        assert_eq!(row.settlement_total_fee, fen(e, "settlement_total_fee"), "row {i}");
        assert_eq!(row.coupon_fee, fen(e, "coupon_fee"), "row {i}");
        assert_eq!(row.refund_id.as_deref(), opt_text(e, "refund_id"), "row {i}");
        assert_eq!(row.out_refund_no.as_deref(), opt_text(e, "out_refund_no"), "row {i}");
        assert_eq!(row.refund_fee, fen(e, "refund_fee"), "row {i}");
        assert_eq!(row.coupon_refund_fee, fen(e, "coupon_refund_fee"), "row {i}");
        assert_eq!(row.refund_type.as_deref(), opt_text(e, "refund_type"), "row {i}");
        assert_eq!(row.refund_status.as_deref(), opt_text(e, "refund_status"), "row {i}");
        assert_eq!(row.body, text(e, "body"), "row {i}");
        assert_eq!(row.attach, text(e, "attach"), "row {i}");
        assert_eq!(row.fee.hundred_thousandths_of_yuan(), int(e, "fee"), "row {i}");
        assert_eq!(row.fee.to_string(), text(e, "fee_text"), "row {i}");
        assert_eq!(row.rate, text(e, "rate"), "row {i}");
        assert_eq!(row.total_fee, opt_fen(e, "total_fee"), "row {i}");
        assert_eq!(row.refund_apply_fee, opt_fen(e, "refund_apply_fee"), "row {i}");
    }
    let s = &golden["summary"];
    assert_eq!(bill.summary.count, s["count"].as_u64().unwrap());
    assert_eq!(bill.summary.settlement_total_fee, fen(s, "settlement_total_fee"));
    assert_eq!(bill.summary.refund_fee, fen(s, "refund_fee"));
    assert_eq!(bill.summary.coupon_refund_fee, fen(s, "coupon_refund_fee"));
    assert_eq!(bill.summary.fee.hundred_thousandths_of_yuan(), int(s, "fee"));
    assert_eq!(bill.summary.fee.to_string(), text(s, "fee_text"));
    assert_eq!(bill.summary.total_fee, opt_fen(s, "total_fee"));
    assert_eq!(bill.summary.refund_apply_fee, opt_fen(s, "refund_apply_fee"));
}
