//! The order APIs: answers, rules, errors and the state machine.

use wxpay_protocol::v2::{self, CloseOrder, ErrCode, OrderQuery, TradeState, UnifiedOrder, V2Call};
use wxpay_protocol::{Error, Fields, OutTradeNo, SignType};

use serde_json::json;

use crate::support::{Env, merchant, nonce, spawn, spawn_with};

#[tokio::test]
async fn unifiedorder_answers_a_signed_prepay_id_in_either_algorithm() {
    let env = spawn().await;
    for (i, t) in [SignType::Md5, SignType::HmacSha256].into_iter().enumerate() {
        let m = merchant(t);
        let r = env.call_as(&m, &env.order(&format!("sign-{i}"), 100)).await.unwrap();
        assert_eq!(r.prepay_id.len(), 36);
        assert!(r.prepay_id.starts_with("wx"));
        assert_eq!(r.trade_type.as_str(), "JSAPI");
    }
}

#[tokio::test]
async fn the_same_order_again_gets_a_fresh_prepay_id_and_other_parameters_are_refused() {
    let env = spawn().await;
    let first = env.create("reentry", 100).await;
    let again = env.create("reentry", 100).await;
    assert_ne!(first.prepay_id, again.prepay_id);
    let err = env.call(&env.order("reentry", 200)).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Business {
                code: ErrCode::InvalidRequest,
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn missing_and_malformed_fields_get_wechat_pay_error_codes() {
    let env = spawn().await;
    let m = &env.merchant;
    // A missing required field: LACK_PARAMS, signed.
    let mut f: Fields<'_> = [
        ("appid", m.appid.as_str()),
        ("mch_id", m.mch_id.as_str()),
        ("nonce_str", "abc"),
        ("body", "b"),
        ("out_trade_no", "order-x1"),
        ("spbill_create_ip", "127.0.0.1"),
        ("notify_url", "http://127.0.0.1:1/n"),
        ("trade_type", "JSAPI"),
        ("openid", "o"),
    ]
    .into_iter()
    .collect();
    f.sign(&m.key, SignType::Md5);
    let (_, answer) = env.post_raw(UnifiedOrder::PATH, f.to_xml().unwrap()).await;
    let err = v2::decode_signed::<v2::UnifiedOrderResponse>(answer.as_bytes(), m).unwrap_err();
    assert!(
        matches!(&err, Error::Business { code: ErrCode::LackParams, description } if description.contains("total_fee")),
        "{err}"
    );
    // Yuan instead of fen, a notify_url with parameters, a bad order number: INVALID_REQUEST.
    for (name, value) in [
        ("total_fee", "0.01"),
        ("notify_url", "http://127.0.0.1:1/n?x=1"),
        ("out_trade_no", "has space"),
        ("out_trade_no", "12345"),
    ] {
        let mut g = f.clone();
        g.set("total_fee", "1");
        g.set(name, value);
        g.sign(&m.key, SignType::Md5);
        let (_, answer) = env.post_raw(UnifiedOrder::PATH, g.to_xml().unwrap()).await;
        let err = v2::decode_signed::<v2::UnifiedOrderResponse>(answer.as_bytes(), m).unwrap_err();
        assert!(
            matches!(&err, Error::Business { code: ErrCode::InvalidRequest, description } if description.contains(name)),
            "{name}: {err}"
        );
    }
}

#[tokio::test]
async fn protocol_failures_come_unsigned_with_return_code_fail() {
    let env = spawn().await;
    let fail = |answer: &str| -> String {
        match v2::decode_signed::<v2::UnifiedOrderResponse>(answer.as_bytes(), &env.merchant) {
            Err(Error::ReturnFail { return_msg, .. }) => return_msg,
            other => panic!("{other:?} for {answer}"),
        }
    };
    // A body signed with another key.
    let mut wrong = env.merchant.clone();
    wrong.key = wxpay_protocol::ApiKey::new("0123456789abcdef0123456789abcdef").unwrap();
    let body = v2::encode(&env.order("sig-order", 1), &wrong, &nonce()).unwrap();
    assert_eq!(fail(&env.post_raw(UnifiedOrder::PATH, body).await.1), "签名错误");
    // Not a POST, an empty body, hostile XML, an unknown merchant.
    let r = env
        .http
        .get(env.url(UnifiedOrder::PATH))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(fail(&r), "请使用post方法");
    assert_eq!(fail(&env.post_raw(UnifiedOrder::PATH, "").await.1), "post数据为空");
    let xxe = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../testdata/vectors/xml/xxe-file.xml"
    ))
    .unwrap();
    assert_eq!(fail(&env.post_raw(UnifiedOrder::PATH, xxe).await.1), "XML格式错误");
    // A sign_type the simulator does not know.
    let mut f = wxpay_protocol::xml::read(
        v2::encode(&env.order("st-order", 1), &env.merchant, &nonce())
            .unwrap()
            .as_bytes(),
    )
    .unwrap()
    .into_owned();
    f.set("sign_type", "SHA1");
    assert!(fail(&env.post_raw(UnifiedOrder::PATH, f.to_xml().unwrap()).await.1).contains("sign_type"));
}

#[tokio::test]
async fn an_unknown_appid_or_mch_id_does_not_exist_and_another_merchants_does_not_match() {
    let env = spawn_with(|c| {
        let mut other = wxpay_simulator::SimMerchant::test_merchant();
        other.appid = "wx1111111111111111".parse().unwrap();
        other.mch_id = "1900000109".parse().unwrap();
        other.v3 = None;
        c.merchants.push(other);
    })
    .await;
    let mut m = env.merchant.clone();
    m.appid = "wx0000000000000000".parse().unwrap();
    let err = env.call_as(&m, &env.order("app-order", 1)).await.unwrap_err();
    assert!(
        matches!(
            &err,
            Error::Business {
                code: ErrCode::AppidNotExist,
                ..
            }
        ),
        "{err}"
    );
    m.appid = "wx1111111111111111".parse().unwrap();
    let err = env.call_as(&m, &env.order("app-order", 1)).await.unwrap_err();
    assert!(
        matches!(
            &err,
            Error::Business {
                code: ErrCode::AppidMchidNotMatch,
                ..
            }
        ),
        "{err}"
    );
    // An mch_id no merchant has: MCHID_NOT_EXIST, unsigned (there is no key to sign with),
    // so a client that checks signatures cannot take it for a verified answer.
    let mut unknown = env.merchant.clone();
    unknown.mch_id = "1999999999".parse().unwrap();
    let body = v2::encode(&env.order("mch-order", 1), &unknown, &nonce()).unwrap();
    let (_, answer) = env.post_raw(UnifiedOrder::PATH, body).await;
    let f = wxpay_protocol::xml::read(answer.as_bytes()).unwrap();
    assert_eq!(f.optional("return_code"), Some("SUCCESS"), "{answer}");
    assert_eq!(f.optional("result_code"), Some("FAIL"), "{answer}");
    assert_eq!(f.optional("err_code"), Some("MCHID_NOT_EXIST"), "{answer}");
    assert!(f.optional("sign").is_none(), "{answer}");
    assert!(v2::decode_signed::<v2::UnifiedOrderResponse>(answer.as_bytes(), &unknown).is_err());
}

/// `return_msg` of an unsigned refusal.
fn return_msg(answer: &str) -> String {
    wxpay_protocol::xml::read(answer.as_bytes())
        .ok()
        .and_then(|f| f.optional("return_msg").map(str::to_owned))
        .unwrap_or_else(|| answer.to_owned())
}

#[tokio::test]
async fn nonce_str_encoding_currency_and_native_product_id_are_checked_as_wechat_pay_does() {
    let env = spawn().await;
    let signed = |edit: &dyn Fn(&mut wxpay_protocol::Fields<'static>)| {
        let body = v2::encode(&env.order("checks-1", 1), &env.merchant, &nonce()).unwrap();
        let mut f = wxpay_protocol::xml::read(body.as_bytes()).unwrap().into_owned();
        edit(&mut f);
        f.remove("sign");
        f.sign(&env.merchant.key, SignType::Md5);
        f.to_xml().unwrap()
    };
    // nonce_str: required, at most 32 characters.
    let body = signed(&|f| {
        f.remove("nonce_str");
    });
    assert_eq!(
        return_msg(&env.post_raw(UnifiedOrder::PATH, body).await.1),
        "缺少参数nonce_str"
    );
    let body = signed(&|f| f.set("nonce_str", "nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn"));
    assert!(return_msg(&env.post_raw(UnifiedOrder::PATH, body).await.1).contains("nonce_str"));
    // A GBK body is named as such, not as malformed XML.
    let gbk = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata/cli/gbk-body.xml")).unwrap();
    assert!(return_msg(&env.post_raw(UnifiedOrder::PATH, gbk).await.1).starts_with("NOT_UTF8"));
    // Domestic merchants are paid in CNY only.
    let body = signed(&|f| f.set("fee_type", "USD"));
    let answer = env.post_raw(UnifiedOrder::PATH, body).await.1;
    assert!(
        answer.contains("PARAM_ERROR") && answer.contains("fee_type"),
        "{answer}"
    );
    // NATIVE needs product_id.
    let body = signed(&|f| {
        f.set("trade_type", "NATIVE");
        f.remove("openid");
    });
    let answer = env.post_raw(UnifiedOrder::PATH, body).await.1;
    assert!(
        answer.contains("LACK_PARAMS") && answer.contains("product_id"),
        "{answer}"
    );
}

#[tokio::test]
async fn only_its_payer_pays_a_jsapi_order_and_a_native_order_takes_the_payer_given() {
    let env = spawn().await;
    env.create("payer-1", 100).await;
    // Another user of the mini program cannot pay an order placed for someone else.
    let other = wxpay_simulator::openid(env.merchant.appid.as_str(), "user-2");
    let (status, v) = env
        .post_json("/simulator/pay", json!({"out_trade_no": "payer-1", "openid": other}))
        .await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (409, Some("openid_mismatch")),
        "{v}"
    );
    assert_eq!(env.get_json("/simulator/orders/payer-1").await["trade_state"], "NOTPAY");
    let (status, v) = env
        .post_json("/simulator/pay", json!({"out_trade_no": "payer-1", "openid": ""}))
        .await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (400, Some("invalid_openid")),
        "{v}"
    );
    // Its own payer can.
    let (status, v) = env
        .post_json(
            "/simulator/pay",
            json!({"out_trade_no": "payer-1", "openid": env.openid()}),
        )
        .await;
    assert_eq!((status, v["trade_state"].as_str()), (200, Some("SUCCESS")), "{v}");
    // A NATIVE order is placed for nobody: whoever scans and pays is its payer, and the query
    // names them.
    let body = v2::encode(&env.order("payer-2", 100), &env.merchant, &nonce()).unwrap();
    let mut f = wxpay_protocol::xml::read(body.as_bytes()).unwrap().into_owned();
    f.set("trade_type", "NATIVE");
    f.set("product_id", "coffee-1");
    f.remove("openid");
    f.remove("sign");
    f.sign(&env.merchant.key, SignType::Md5);
    let answer = env.post_raw(UnifiedOrder::PATH, f.to_xml().unwrap()).await.1;
    assert!(answer.contains("<result_code><![CDATA[SUCCESS]]>"), "{answer}");
    let (status, v) = env
        .post_json("/simulator/pay", json!({"out_trade_no": "payer-2", "openid": other}))
        .await;
    assert_eq!(status, 200, "{v}");
    let q = env
        .call(&OrderQuery::by_out_trade_no(OutTradeNo::new("payer-2").unwrap()))
        .await
        .unwrap();
    assert_eq!(q.openid.as_deref(), Some(other.as_str()), "{q:?}");
}

#[tokio::test]
async fn an_order_goes_from_notpay_to_success_and_then_cannot_be_ordered_or_closed() {
    let env = spawn().await;
    env.create("life-1", 1999).await;
    let q = OrderQuery::by_out_trade_no(OutTradeNo::new("life-1").unwrap());
    let before = env.call(&q).await.unwrap();
    assert_eq!(before.trade_state, TradeState::NotPay);
    assert_eq!(before.trade_state_desc.as_deref(), Some("订单未支付"));
    assert_eq!(before.transaction_id, None);
    let (status, view) = env.pay("life-1", "success").await;
    assert_eq!(status, 200, "{view}");
    let after = env.call(&q).await.unwrap();
    assert_eq!(after.trade_state, TradeState::Success);
    assert_eq!(after.total_fee.unwrap().get(), 1999);
    let tid = after.transaction_id.clone().unwrap();
    assert_eq!(tid.len(), 28);
    // Found by transaction_id as well.
    let by_tid = env.call(&OrderQuery::by_transaction_id(tid)).await.unwrap();
    assert_eq!(by_tid.out_trade_no, "life-1");
    // Paid: no new prepay, no close, no second payment.
    let err = env.call(&env.order("life-1", 1999)).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Business {
                code: ErrCode::OrderPaid,
                ..
            }
        ),
        "{err}"
    );
    let err = env
        .call(&CloseOrder::new(OutTradeNo::new("life-1").unwrap()))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Business {
                code: ErrCode::OrderPaid,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(env.pay("life-1", "success").await.0, 409);
}

#[tokio::test]
async fn a_closed_order_cannot_be_paid_or_ordered_again() {
    let env = spawn().await;
    env.create("closed-1", 10).await;
    let close = CloseOrder::new(OutTradeNo::new("closed-1").unwrap());
    assert_eq!(env.call(&close).await.unwrap().result_msg.as_deref(), Some("OK"));
    let q = env
        .call(&OrderQuery::by_out_trade_no(OutTradeNo::new("closed-1").unwrap()))
        .await
        .unwrap();
    assert_eq!(q.trade_state, TradeState::Closed);
    assert_eq!(env.pay("closed-1", "success").await.0, 409);
    let err = env.call(&env.order("closed-1", 10)).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Business {
                code: ErrCode::OrderClosed,
                ..
            }
        ),
        "{err}"
    );
    let err = env.call(&close).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Business {
                code: ErrCode::OrderClosed,
                ..
            }
        ),
        "{err}"
    );
    let err = env
        .call(&CloseOrder::new(OutTradeNo::new("never").unwrap()))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Business {
                code: ErrCode::OrderNotExist,
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn a_failed_payment_is_payerror_and_its_number_cannot_be_reused() {
    let env = spawn().await;
    env.create("fail-1", 10).await;
    assert_eq!(env.pay("fail-1", "fail").await.0, 200);
    let q = env
        .call(&OrderQuery::by_out_trade_no(OutTradeNo::new("fail-1").unwrap()))
        .await
        .unwrap();
    assert_eq!(q.trade_state, TradeState::PayError);
    let err = env.call(&env.order("fail-1", 10)).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Business {
                code: ErrCode::OutTradeNoUsed,
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn an_unknown_order_does_not_exist() {
    let env = spawn().await;
    let err = env
        .call(&OrderQuery::by_out_trade_no(OutTradeNo::new("nope").unwrap()))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Business {
                code: ErrCode::OrderNotExist,
                ..
            }
        ),
        "{err}"
    );
    let err = env
        .call(&OrderQuery::by_transaction_id("4200000000000000000000000001"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Business {
                code: ErrCode::OrderNotExist,
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn an_order_past_its_time_expire_is_closed() {
    let env = spawn().await;
    let mut order = env.order("expiring", 10);
    let now = env.sim.simulator().now();
    order.time_expire = Some(wxpay_protocol::BeijingTime::from_unix(now + 30));
    let err = env.call(&order).await.unwrap_err();
    assert!(
        matches!(&err, Error::Business { code: ErrCode::InvalidRequest, description } if description.contains("time_expire")),
        "{err}"
    );
    // Five minutes of margin: a second boundary passing during the call must not matter.
    order.time_expire = Some(wxpay_protocol::BeijingTime::from_unix(now + 300));
    env.call(&order).await.unwrap();
    let view = env.get_json("/simulator/orders/expiring").await;
    assert_eq!(view["trade_state"], "NOTPAY");
    assert!(view["time_expire"].is_string());

    // Ten seconds before time_expire it is still payable; once it has passed it is closed.
    let (status, v) = env.post_json("/simulator/clock", json!({"advance_secs": 290})).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        env.get_json("/simulator/orders/expiring").await["trade_state"],
        "NOTPAY"
    );
    let (status, _) = env.post_json("/simulator/clock", json!({"advance_secs": 11})).await;
    assert_eq!(status, 200);
    let view = env.get_json("/simulator/orders/expiring").await;
    assert_eq!(view["trade_state"], "CLOSED", "{view}");
    let query = OrderQuery::by_out_trade_no(OutTradeNo::new("expiring").unwrap());
    assert_eq!(env.call(&query).await.unwrap().trade_state, TradeState::Closed);
    let (status, v) = env.pay("expiring", "success").await;
    assert_ne!(status, 200, "a closed order cannot be paid: {v}");
}

#[tokio::test]
async fn closing_an_order_past_its_time_expire_says_closed_as_the_query_does() {
    let env = spawn().await;
    let mut order = env.order("expired-close", 10);
    let now = env.sim.simulator().now();
    order.time_expire = Some(wxpay_protocol::BeijingTime::from_unix(now + 300));
    env.call(&order).await.unwrap();
    let (status, v) = env.post_json("/simulator/clock", json!({"advance_secs": 301})).await;
    assert_eq!(status, 200, "{v}");
    // Nothing has looked at the order since it expired: the close itself must see it closed,
    // as APIv3's close and both APIs' queries do.
    let err = env
        .call(&CloseOrder::new(OutTradeNo::new("expired-close").unwrap()))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Business {
                code: ErrCode::OrderClosed,
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn the_checkout_page_pays_the_order_of_its_prepay_id() {
    let env = spawn().await;
    let r = env.create("checkout-1", 1234).await;
    let page = env
        .http
        .get(env.url(&format!("/simulator/checkout/{}", r.prepay_id)))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("¥12.34") && page.contains("<form"), "{page}");
    // English by default, Chinese for a browser that asks for it first.
    assert!(
        page.contains("<button class=\"pay\" name=\"outcome\" value=\"success\">Pay</button>"),
        "{page}"
    );
    let zh = env
        .http
        .get(env.url(&format!("/simulator/checkout/{}", r.prepay_id)))
        .header("accept-language", "zh-CN,zh;q=0.9")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        zh.contains("<html lang=\"zh\">") && zh.contains(">支付</button>"),
        "{zh}"
    );
    // An APIv2 order is offered APIv2's notification faults only.
    assert!(
        page.contains("value=\"notify_duplicate\"") && !page.contains("value=\"notify_probe\""),
        "{page}"
    );
    let paid = env
        .http
        .post(env.url(&format!("/simulator/checkout/{}", r.prepay_id)))
        .form(&[("outcome", "success")])
        .send()
        .await
        .unwrap();
    assert_eq!(paid.status(), 200);
    assert_eq!(
        env.get_json("/simulator/orders/checkout-1").await["trade_state"],
        "SUCCESS"
    );
    let unknown = env
        .http
        .get(env.url("/simulator/checkout/wx00000000000000000000000000000000ff"))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
}

#[tokio::test]
async fn finished_orders_are_forgotten_past_the_bound_and_live_ones_kept() {
    let env = spawn_with(|c| c.max_orders = 3).await;
    for i in 0..3 {
        env.create(&format!("bound-{i}"), 1).await;
        env.call(&CloseOrder::new(OutTradeNo::new(format!("bound-{i}")).unwrap()))
            .await
            .unwrap();
    }
    env.create("live-1", 1).await;
    env.create("live-2", 1).await;
    let metrics = env.metrics_text().await;
    assert!(metrics.contains("wxpay_sim_orders_evicted_total 2"), "{metrics}");
    assert_eq!(env.get_json("/simulator/orders/live-1").await["trade_state"], "NOTPAY");
    assert_eq!(env.get_json("/simulator/orders/live-2").await["trade_state"], "NOTPAY");
    let mut kept = 0;
    for i in 0..3 {
        let status = env
            .http
            .get(env.url(&format!("/simulator/orders/bound-{i}")))
            .send()
            .await
            .unwrap()
            .status();
        kept += usize::from(status == 200);
    }
    assert_eq!(kept, 1, "two of the three closed orders were forgotten");
}

#[tokio::test]
async fn metrics_count_calls_by_api_and_result() {
    let env = spawn().await;
    env.create("no-m-1", 1).await;
    let _ = env
        .call(&OrderQuery::by_out_trade_no(OutTradeNo::new("no-m-9").unwrap()))
        .await;
    let text = env.metrics_text().await;
    assert!(
        text.contains("wxpay_sim_requests_total{api=\"unifiedorder\",result=\"success\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("wxpay_sim_requests_total{api=\"orderquery\",result=\"business_error\"} 1"),
        "{text}"
    );
    assert!(text.contains("wxpay_sim_orders{state=\"NOTPAY\"} 1"), "{text}");
}

#[tokio::test]
async fn shutdown_is_graceful() {
    let env = spawn().await;
    env.create("no-s-1", 1).await;
    // A call in flight when the shutdown begins still gets its answer.
    env.fault(json!({"kind": "delay", "api": "unifiedorder", "count": 1, "delay_ms": 3000}))
        .await;
    let body = v2::encode(&env.order("no-s-2", 1), &env.merchant, &nonce()).unwrap();
    let request = env.http.post(env.url(UnifiedOrder::PATH)).body(body);
    let in_flight = tokio::spawn(async move { request.send().await?.text().await });
    crate::support::eventually("the call is in flight", async || {
        let text = env.metrics_text().await;
        text.contains("wxpay_sim_faults_injected_total{kind=\"delay\"} 1")
    })
    .await;
    let Env { sim, merchant, .. } = env;
    let addr = sim.addr();
    assert!(
        !in_flight.is_finished(),
        "the call is still in flight when the shutdown begins"
    );
    sim.shutdown().await;
    let answer = in_flight.await.unwrap().expect("the call in flight was answered");
    let prepay = UnifiedOrder::decode(answer.as_bytes(), &merchant).expect("a signed prepay");
    assert!(prepay.prepay_id.starts_with("wx"));
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn a_paid_or_closed_order_asked_again_past_its_time_expire_says_paid_or_closed() {
    let env = spawn().await;
    let now = env.sim.simulator().now();
    let mut paid = env.order("expire-paid", 10);
    paid.time_expire = Some(wxpay_protocol::BeijingTime::from_unix(now + 300));
    env.call(&paid).await.unwrap();
    env.pay("expire-paid", "success").await;
    let mut closed = env.order("expire-closed", 10);
    closed.time_expire = Some(wxpay_protocol::BeijingTime::from_unix(now + 300));
    env.call(&closed).await.unwrap();
    // Past both orders' time_expire: the unpaid one is closed by then.
    let (status, v) = env.post_json("/simulator/clock", json!({"advance_secs": 400})).await;
    assert_eq!(status, 200, "{v}");
    // The same request again (what a gateway does to learn where an order stands) says what
    // happened to the order, not that its time_expire is too short.
    let err = env.call(&paid).await.unwrap_err();
    assert!(
        matches!(
            &err,
            Error::Business {
                code: ErrCode::OrderPaid,
                ..
            }
        ),
        "{err}"
    );
    let err = env.call(&closed).await.unwrap_err();
    assert!(
        matches!(
            &err,
            Error::Business {
                code: ErrCode::OrderClosed,
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn an_openid_of_another_app_is_refused_and_a_configured_one_accepted() {
    let env = spawn_with(|c| c.openids.push("oFixtureOpenid0000000000001".into())).await;
    let with_openid = |no: &str, openid: &str| {
        let mut o = env.order(no, 1);
        o.openid = Some(openid.to_owned());
        o
    };
    // Issued for another mini program, never issued, or listed in the configuration.
    for openid in [wxpay_simulator::openid("wx1111111111111111", "user-1"), "x".to_owned()] {
        let err = env.call(&with_openid("openid-1", &openid)).await.unwrap_err();
        assert!(
            matches!(&err, Error::Business { code: ErrCode::ParamError, description } if description.contains("openid")),
            "{openid}: {err}"
        );
    }
    env.call(&with_openid("openid-2", "oFixtureOpenid0000000000001"))
        .await
        .unwrap();
    // The refused order was not created: its number is still free.
    env.create("openid-1", 1).await;
}
