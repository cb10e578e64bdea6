//! Every typed call: its signed request body, and its answer read back through the checks
//! WeChat Pay's answers must pass.

use std::collections::BTreeMap;

use wxpay_protocol::v2::{
    self, BillType, CloseOrder, DownloadBill, ErrCode, OrderQuery, Refund, RefundQuery, RefundRef, RefundStatus, Retry,
    TradeState, UnifiedOrder, V2Call,
};
use wxpay_protocol::{BeijingTime, Error, Fen, Merchant, Nonce, OutRefundNo, OutTradeNo, SignType, xml};

use crate::support::{answer, merchant};

fn nonce() -> Nonce {
    Nonce::new("5K8264ILTKCH16CQ2502SI8ZNMTM67VS").unwrap()
}

fn order() -> UnifiedOrder {
    let mut o = UnifiedOrder::jsapi(
        "腾讯充值中心-QQ会员充值",
        OutTradeNo::new("20150806125346").unwrap(),
        Fen::new(888).unwrap(),
        "123.12.12.123",
        "https://pay.example.com/notify/v2/pay",
        "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o",
    );
    o.attach = Some("深圳分店".into());
    o.time_expire = Some(BeijingTime::parse_compact("20150806130346").unwrap());
    o.extra.insert("new_field_from_2030".into(), "kept".into());
    o
}

#[test]
fn a_unified_order_request_is_signed_with_every_field_including_unknown_ones() {
    for t in [SignType::Md5, SignType::HmacSha256] {
        let m = merchant(t);
        let body = v2::encode(&order(), &m, &nonce()).unwrap();
        let f = xml::read(body.as_bytes()).unwrap();
        assert!(f.verify(&m.key, t).is_ok(), "{body}");
        for (k, v) in [
            ("appid", "wxd678efh567hg6787"),
            ("mch_id", "1230000109"),
            ("nonce_str", "5K8264ILTKCH16CQ2502SI8ZNMTM67VS"),
            ("sign_type", t.as_str()),
            ("body", "腾讯充值中心-QQ会员充值"),
            ("out_trade_no", "20150806125346"),
            ("total_fee", "888"),
            ("spbill_create_ip", "123.12.12.123"),
            ("notify_url", "https://pay.example.com/notify/v2/pay"),
            ("trade_type", "JSAPI"),
            ("openid", "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"),
            ("attach", "深圳分店"),
            ("time_expire", "20150806130346"),
            ("new_field_from_2030", "kept"),
        ] {
            assert_eq!(f.get(k), Some(v), "{k}");
        }
        assert_eq!(f.get("sign").unwrap().len(), t.hex_len());
        assert!(!body.contains(m.key.expose()), "the key never appears in a body");
    }
}

#[test]
fn a_unified_order_refuses_what_wechat_pay_would_refuse() {
    let m = merchant(SignType::Md5);
    type Change = Box<dyn Fn(&mut UnifiedOrder)>;
    let cases: Vec<(&str, Change)> = vec![
        ("openid", Box::new(|o| o.openid = None)),
        ("total_fee", Box::new(|o| o.total_fee = Fen::ZERO)),
        (
            "notify_url",
            Box::new(|o| o.notify_url = "https://x.example.com/n?order=1".into()),
        ),
        (
            "spbill_create_ip",
            Box::new(|o| o.spbill_create_ip = "localhost".into()),
        ),
        ("body", Box::new(|o| o.body = "x".repeat(128))),
        ("body", Box::new(|o| o.body = "pizza 🍕".into())),
        (
            "sign",
            Box::new(|o| {
                o.extra.insert("sign".into(), "x".into());
            }),
        ),
        (
            "appid",
            Box::new(|o| {
                o.extra.insert("appid".into(), "wxother".into());
            }),
        ),
    ];
    for (field, change) in cases {
        let mut o = order();
        change(&mut o);
        let err = v2::encode(&o, &m, &nonce()).unwrap_err();
        assert!(
            matches!(&err, Error::InvalidField { field: f, .. } | Error::MissingField(f) if f == field),
            "{field}: {err}"
        );
    }
}

#[test]
fn a_unified_order_answer_is_typed_and_keeps_unknown_fields() {
    let m = merchant(SignType::HmacSha256);
    let body = answer(
        &m,
        &[
            ("prepay_id", "wx201411101639507cbf6ffd8b0779950874"),
            ("trade_type", "JSAPI"),
            ("brand_new", "1"),
        ],
    );
    let r = UnifiedOrder::decode(body.as_bytes(), &m).unwrap();
    assert_eq!(r.prepay_id, "wx201411101639507cbf6ffd8b0779950874");
    assert_eq!(r.trade_type.as_str(), "JSAPI");
    assert_eq!(r.extra, BTreeMap::from([("brand_new".to_owned(), "1".to_owned())]));
}

#[test]
fn answers_are_checked_in_wechat_pay_order() {
    let m = merchant(SignType::Md5);
    // return_code=FAIL: a protocol refusal, carrying return_msg.
    let fail = "<xml><return_code><![CDATA[FAIL]]></return_code><return_msg><![CDATA[签名错误]]></return_msg></xml>";
    assert_eq!(
        UnifiedOrder::decode(fail.as_bytes(), &m).unwrap_err(),
        Error::ReturnFail {
            return_msg: "签名错误".into(),
            error_code: None
        }
    );
    // A tampered answer: the signature check runs before the business fields are read.
    let good = answer(&m, &[("prepay_id", "wx1"), ("trade_type", "JSAPI")]);
    let tampered = good.replace("wx1", "wx2");
    assert!(matches!(
        UnifiedOrder::decode(tampered.as_bytes(), &m),
        Err(Error::BadSignature { .. })
    ));
    // An answer signed for another merchant with the same key.
    let mut other = m.clone();
    other.mch_id = "1900000109".parse().unwrap();
    let foreign = answer(&other, &[("prepay_id", "wx1"), ("trade_type", "JSAPI")]);
    assert!(matches!(
        UnifiedOrder::decode(foreign.as_bytes(), &m),
        Err(Error::MerchantMismatch { field: "mch_id", .. })
    ));
    // A signed business error is typed with its retry class.
    let busy = answer(
        &m,
        &[
            ("result_code", "FAIL"),
            ("err_code", "SYSTEMERROR"),
            ("err_code_des", "系统超时"),
        ],
    );
    match UnifiedOrder::decode(busy.as_bytes(), &m) {
        Err(Error::Business { code, description }) => {
            assert_eq!(code, ErrCode::SystemError);
            assert_eq!(code.retry(), Retry::SameParameters);
            assert_eq!(description, "系统超时");
        }
        other => panic!("{other:?}"),
    }
    // An unsigned business error (a forged ORDERPAID, say) is not believed.
    let forged = "<xml><return_code>SUCCESS</return_code><result_code>FAIL</result_code><err_code>ORDERPAID</err_code><appid>wxd678efh567hg6787</appid><mch_id>1230000109</mch_id></xml>";
    assert!(matches!(CloseOrder::decode(forged.as_bytes(), &m), Err(Error::MissingField(f)) if f == "sign"));
    // An answer that names MD5 to an HMAC merchant cannot downgrade the check.
    let hmac = merchant(SignType::HmacSha256);
    let md5_answer = answer(
        &m,
        &[("sign_type", "MD5"), ("prepay_id", "wx1"), ("trade_type", "JSAPI")],
    );
    assert!(matches!(
        UnifiedOrder::decode(md5_answer.as_bytes(), &hmac),
        Err(Error::SignTypeMismatch { .. })
    ));
}

#[test]
fn an_order_query_reads_paid_and_unpaid_orders() {
    let m = merchant(SignType::Md5);
    let q = OrderQuery::by_out_trade_no(OutTradeNo::new("1415757673").unwrap());
    let req = xml::read(v2::encode(&q, &m, &nonce()).unwrap().as_bytes())
        .unwrap()
        .into_owned();
    assert_eq!(req.get("out_trade_no"), Some("1415757673"));
    assert_eq!(req.get("transaction_id"), None);

    let paid = answer(
        &m,
        &[
            ("trade_state", "SUCCESS"),
            ("out_trade_no", "1415757673"),
            ("transaction_id", "4200000000000000000000000001"),
            ("total_fee", "101"),
            ("cash_fee", "100"),
            ("coupon_fee", "1"),
            ("coupon_count", "1"),
            ("coupon_id_0", "10000"),
            ("coupon_fee_0", "1"),
            ("time_end", "20141030133525"),
            ("openid", "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"),
            ("trade_type", "JSAPI"),
            ("bank_type", "CMC"),
            ("device_info", ""),
            ("attach", ""),
            ("trade_state_desc", "支付成功"),
        ],
    );
    let r = OrderQuery::decode(paid.as_bytes(), &m).unwrap();
    assert_eq!(r.trade_state, TradeState::Success);
    assert!(r.trade_state.is_paid());
    assert_eq!(r.total_fee, Some(Fen::new(101).unwrap()));
    assert_eq!(r.coupons.len(), 1);
    assert_eq!(r.coupons[0].fee.get(), 1);
    assert_eq!(r.time_end.unwrap().to_compact(), "20141030133525");
    assert_eq!(r.attach, None, "an empty attach is absent");
    assert!(r.extra.is_empty(), "{:?}", r.extra);

    let unpaid = answer(
        &m,
        &[
            ("trade_state", "NOTPAY"),
            ("out_trade_no", "1415757673"),
            ("trade_state_desc", "订单未支付"),
        ],
    );
    let r = OrderQuery::decode(unpaid.as_bytes(), &m).unwrap();
    assert_eq!(r.trade_state, TradeState::NotPay);
    assert_eq!(r.transaction_id, None);

    // A paid answer without its transaction number is refused rather than half-read.
    let broken = answer(
        &m,
        &[
            ("trade_state", "SUCCESS"),
            ("out_trade_no", "1415757673"),
            ("total_fee", "101"),
        ],
    );
    assert!(matches!(OrderQuery::decode(broken.as_bytes(), &m), Err(Error::MissingField(f)) if f == "transaction_id"));
    // A yuan amount is refused.
    let yuan = answer(
        &m,
        &[
            ("trade_state", "SUCCESS"),
            ("out_trade_no", "1"),
            ("transaction_id", "42"),
            ("total_fee", "1.01"),
        ],
    );
    assert!(
        matches!(OrderQuery::decode(yuan.as_bytes(), &m), Err(Error::InvalidField { field, .. }) if field == "total_fee")
    );
}

#[test]
fn close_order_answers_and_its_orderpaid_error() {
    let m = merchant(SignType::Md5);
    let c = CloseOrder::new(OutTradeNo::new("1217752501201407033233368018").unwrap());
    assert_eq!(CloseOrder::PATH, "/pay/closeorder");
    assert!(
        v2::encode(&c, &m, &nonce())
            .unwrap()
            .contains("<out_trade_no><![CDATA[1217752501201407033233368018]]></out_trade_no>")
    );
    let ok = answer(&m, &[("result_msg", "OK")]);
    assert_eq!(
        CloseOrder::decode(ok.as_bytes(), &m).unwrap().result_msg.as_deref(),
        Some("OK")
    );
    let paid = answer(
        &m,
        &[
            ("result_code", "FAIL"),
            ("err_code", "ORDERPAID"),
            ("err_code_des", "订单已支付"),
        ],
    );
    assert!(matches!(
        CloseOrder::decode(paid.as_bytes(), &m),
        Err(Error::Business {
            code: ErrCode::OrderPaid,
            ..
        })
    ));
}

#[test]
fn a_refund_needs_the_client_certificate_and_sane_amounts() {
    let m = merchant(SignType::HmacSha256);
    const { assert!(Refund::CLIENT_CERT) };
    assert_eq!(Refund::PATH, "/secapi/pay/refund");
    let order = v2::OrderRef::OutTradeNo(OutTradeNo::new("o1").unwrap());
    let no = OutRefundNo::new("r-1@x").unwrap();
    let mut r = Refund::new(order.clone(), no.clone(), Fen::new(100).unwrap(), Fen::new(30).unwrap());
    r.notify_url = Some("https://pay.example.com/notify/v2/refund".into());
    let body = v2::encode(&r, &m, &nonce()).unwrap();
    let f = xml::read(body.as_bytes()).unwrap();
    assert_eq!(f.get("refund_fee"), Some("30"));
    assert_eq!(f.get("out_refund_no"), Some("r-1@x"));
    assert!(f.verify(&m.key, SignType::HmacSha256).is_ok());

    let too_much = Refund::new(
        order.clone(),
        no.clone(),
        Fen::new(100).unwrap(),
        Fen::new(101).unwrap(),
    );
    assert!(
        matches!(v2::encode(&too_much, &m, &nonce()), Err(Error::InvalidField { field, .. }) if field == "refund_fee")
    );
    let zero = Refund::new(order, no, Fen::new(100).unwrap(), Fen::ZERO);
    assert!(v2::encode(&zero, &m, &nonce()).is_err());

    let ok = answer(
        &m,
        &[
            ("transaction_id", "4200000000000000000000000001"),
            ("out_trade_no", "o1"),
            ("out_refund_no", "r-1@x"),
            ("refund_id", "50000000000000000000000000001"),
            ("refund_channel", ""),
            ("refund_fee", "30"),
            ("coupon_refund_fee", "0"),
            ("total_fee", "100"),
            ("cash_fee", "100"),
            ("coupon_refund_count", "0"),
            ("cash_refund_fee", "30"),
        ],
    );
    let a = Refund::decode(ok.as_bytes(), &m).unwrap();
    assert_eq!(a.refund_fee.get(), 30);
    assert_eq!(a.coupon_refund_count, Some(0));
    assert_eq!(a.refund_channel, None);
}

#[test]
fn a_refund_query_lists_every_refund() {
    let m = merchant(SignType::Md5);
    let q = RefundQuery {
        by: RefundRef::OutTradeNo(OutTradeNo::new("o1").unwrap()),
        offset: Some(10),
        extra: BTreeMap::new(),
    };
    let f = xml::read(v2::encode(&q, &m, &nonce()).unwrap().as_bytes())
        .unwrap()
        .into_owned();
    assert_eq!(f.get("offset"), Some("10"));
    let body = answer(
        &m,
        &[
            ("transaction_id", "4200000000000000000000000001"),
            ("out_trade_no", "o1"),
            ("total_fee", "100"),
            ("cash_fee", "100"),
            ("refund_count", "2"),
            ("refund_fee", "50"),
            ("total_refund_count", "12"),
            ("out_refund_no_0", "r1"),
            ("refund_id_0", "50000000000000000000000000001"),
            ("refund_fee_0", "20"),
            ("refund_status_0", "SUCCESS"),
            ("refund_success_time_0", "2026-11-27 10:00:00"),
            ("refund_recv_accout_0", "支付用户的零钱"),
            ("out_refund_no_1", "r2"),
            ("refund_id_1", "50000000000000000000000000002"),
            ("refund_fee_1", "30"),
            ("refund_status_1", "PROCESSING"),
        ],
    );
    let r = RefundQuery::decode(body.as_bytes(), &m).unwrap();
    assert_eq!(r.refunds.len(), 2);
    assert_eq!(r.total_refund_count, Some(12));
    assert_eq!(r.refunds[0].refund_status, RefundStatus::Success);
    assert_eq!(
        r.refunds[0].refund_success_time.unwrap().to_dashed(),
        "2026-11-27 10:00:00"
    );
    assert_eq!(r.refunds[1].refund_status, RefundStatus::Processing);
    assert_eq!(r.refunds[1].refund_fee.get(), 30);
    assert!(r.extra.is_empty(), "{:?}", r.extra);

    let missing = answer(
        &m,
        &[
            ("transaction_id", "42"),
            ("out_trade_no", "o1"),
            ("total_fee", "100"),
            ("refund_count", "1"),
        ],
    );
    assert!(
        matches!(RefundQuery::decode(missing.as_bytes(), &m), Err(Error::MissingField(f)) if f == "refund_status_0")
    );
}

#[test]
fn download_bill_reads_the_bill_or_its_unsigned_error() {
    let m: Merchant = merchant(SignType::Md5);
    let call = DownloadBill {
        bill_date: BeijingTime::parse_compact("20261126000000").unwrap(),
        bill_type: BillType::All,
        gzip: false,
        extra: BTreeMap::new(),
    };
    let f = xml::read(v2::encode(&call, &m, &nonce()).unwrap().as_bytes())
        .unwrap()
        .into_owned();
    assert_eq!(f.get("bill_date"), Some("20261126"));
    assert_eq!(f.get("bill_type"), Some("ALL"));

    let none = "<xml><return_code><![CDATA[FAIL]]></return_code><return_msg><![CDATA[No Bill Exist]]></return_msg><error_code><![CDATA[20002]]></error_code></xml>";
    assert_eq!(
        DownloadBill::decode(none.as_bytes(), &m).unwrap_err(),
        Error::ReturnFail {
            return_msg: "No Bill Exist".into(),
            error_code: Some("20002".into())
        }
    );
    let bill = "交易时间,公众账号ID,商户号,特约商户号,设备号,微信订单号,商户订单号,用户标识,交易类型,交易状态,付款银行,货币种类,应结订单金额,代金券金额,商品名称,商户数据包,手续费,费率,订单金额,费率备注\r\n\
`2026-11-26 18:46:41,`wxd678efh567hg6787,`1230000109,`0,`,`4200000000000000000000000001,`o1,`oUpF8u,`JSAPI,`SUCCESS,`CFT,`CNY,`0.07,`0.00,`咖啡,`,`0.00000,`0.60%,`0.07,`\r\n\
总交易单数,应结订单总金额,退款总金额,充值券退款总金额,手续费总金额,订单总金额,申请退款总金额\r\n\
`1,`0.07,`0.00,`0.00,`0.00000,`0.07,`0.00\r\n";
    let b = DownloadBill::decode(bill.as_bytes(), &m).unwrap();
    assert_eq!(b.rows[0].settlement_total_fee.get(), 7);
    assert_eq!(b.rows[0].out_trade_no, "o1");
}
