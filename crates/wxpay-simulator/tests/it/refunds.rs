//! Refunds: limits, idempotency, completion, queries and refund notifications.

use std::time::Duration;

use wxpay_protocol::v2::{
    ErrCode, OrderQuery, OrderRef, Refund, RefundNotification, RefundQuery, RefundRef, RefundResponse, RefundStatus,
    TradeState,
};
use wxpay_protocol::{Error, Fen, OutRefundNo, OutTradeNo};

use crate::support::{Env, eventually, spawn, spawn_with};

fn refund(env: &Env, no: &str, refund_no: &str, total: u64, fee: u64) -> Refund {
    let mut r = Refund::new(
        OrderRef::OutTradeNo(OutTradeNo::new(no).unwrap()),
        OutRefundNo::new(refund_no).unwrap(),
        Fen::new(total).unwrap(),
        Fen::new(fee).unwrap(),
    );
    r.notify_url = Some(env.notify_url.clone());
    r
}

async fn paid(env: &Env, no: &str, fee: u64) {
    env.create(no, fee).await;
    assert_eq!(env.pay(no, "success").await.0, 200);
}

async fn query(env: &Env, refund_no: &str) -> wxpay_protocol::v2::RefundRecord {
    env.call(&RefundQuery::by_out_refund_no(OutRefundNo::new(refund_no).unwrap()))
        .await
        .unwrap()
        .refunds
        .remove(0)
}

#[tokio::test]
async fn a_partial_refund_is_accepted_then_completes_and_notifies() {
    let env = spawn().await;
    paid(&env, "no-r-1", 1000).await;
    let accepted = env.call(&refund(&env, "no-r-1", "no-rf-1", 1000, 300)).await.unwrap();
    assert_eq!(accepted.refund_fee.get(), 300);
    assert_eq!(accepted.refund_id.len(), 29);
    // Five seconds at a thousand times: five milliseconds.
    eventually("the refund completes", || async {
        query(&env, "no-rf-1").await.refund_status == RefundStatus::Success
    })
    .await;
    let r = query(&env, "no-rf-1").await;
    assert!(r.refund_success_time.is_some());
    assert_eq!(r.refund_recv_accout.as_deref(), Some("支付用户的零钱"));
    // The order now says REFUND.
    let q = env
        .call(&OrderQuery::by_out_trade_no(OutTradeNo::new("no-r-1").unwrap()))
        .await
        .unwrap();
    assert_eq!(q.trade_state, TradeState::Refund);
    // The refund notification decrypts with the merchant's key.
    eventually("the refund notification", || async {
        env.receiver.received().iter().any(|b| b.contains("req_info"))
    })
    .await;
    let body = env
        .receiver
        .received()
        .into_iter()
        .find(|b| b.contains("req_info"))
        .unwrap();
    let n = RefundNotification::parse(body.as_bytes(), &env.merchant).unwrap();
    assert_eq!(n.out_refund_no, "no-rf-1");
    assert_eq!(n.refund_fee.get(), 300);
    assert_eq!(n.total_fee.get(), 1000);
    assert_eq!(n.refund_status, RefundStatus::Success);
}

#[tokio::test]
async fn refunds_never_exceed_the_order_and_a_full_refund_ends_it() {
    // Refunds back to back: the minute between them is another test's.
    let env = spawn_with(|c| c.refund_interval = Duration::ZERO).await;
    paid(&env, "no-r-2", 100).await;
    env.call(&refund(&env, "no-r-2", "a", 100, 60)).await.unwrap();
    let err = env.call(&refund(&env, "no-r-2", "b", 100, 41)).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Business {
                code: ErrCode::RefundFeeInvalid,
                ..
            }
        ),
        "{err}"
    );
    env.call(&refund(&env, "no-r-2", "c", 100, 40)).await.unwrap();
    let err = env.call(&refund(&env, "no-r-2", "d", 100, 1)).await.unwrap_err();
    assert!(
        matches!(&err, Error::Business { code: ErrCode::Error, description } if description.contains("全额")),
        "{err}"
    );
    // The order's amount must be the order's.
    paid(&env, "no-r-3", 100).await;
    let err = env.call(&refund(&env, "no-r-3", "e", 99, 1)).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Business {
                code: ErrCode::ParamError,
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn the_same_out_refund_no_is_one_refund_and_other_parameters_are_refused() {
    let env = spawn().await;
    paid(&env, "no-r-4", 100).await;
    let first = env.call(&refund(&env, "no-r-4", "same", 100, 10)).await.unwrap();
    let again = env.call(&refund(&env, "no-r-4", "same", 100, 10)).await.unwrap();
    assert_eq!(first.refund_id, again.refund_id);
    let view = env.get_json("/simulator/orders/no-r-4").await;
    assert_eq!(view["refunds"].as_array().unwrap().len(), 1);
    assert_eq!(view["refunded_fee"], 10);
    let err = env.call(&refund(&env, "no-r-4", "same", 100, 20)).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Business {
                code: ErrCode::ParamError,
                ..
            }
        ),
        "{err}"
    );
    // Nor can another order take it.
    paid(&env, "no-r-5", 100).await;
    let err = env.call(&refund(&env, "no-r-5", "same", 100, 10)).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Business {
                code: ErrCode::ParamError,
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn an_order_takes_at_most_fifty_refunds() {
    let env = spawn_with(|c| c.refund_interval = Duration::ZERO).await;
    paid(&env, "no-r-6", 100).await;
    for i in 0..50 {
        env.call(&refund(&env, "no-r-6", &format!("p{i}"), 100, 1))
            .await
            .unwrap();
    }
    let err = env.call(&refund(&env, "no-r-6", "p50", 100, 1)).await.unwrap_err();
    assert!(
        matches!(&err, Error::Business { code: ErrCode::Error, description } if description.contains("50")),
        "{err}"
    );
    // Ten a page; offset pages and gives the total.
    let q = RefundQuery {
        by: RefundRef::OutTradeNo(OutTradeNo::new("no-r-6").unwrap()),
        offset: None,
        extra: Default::default(),
    };
    let page = env.call(&q).await.unwrap();
    assert_eq!(page.refunds.len(), 10);
    assert_eq!(page.total_refund_count, None);
    let q = RefundQuery { offset: Some(45), ..q };
    let page = env.call(&q).await.unwrap();
    assert_eq!(page.refunds.len(), 5);
    assert_eq!(page.total_refund_count, Some(50));
    assert_eq!(page.refunds[0].out_refund_no, "p45");
}

#[tokio::test]
async fn an_unpaid_or_unknown_order_cannot_be_refunded() {
    let env = spawn().await;
    env.create("no-r-7", 100).await;
    let err = env.call(&refund(&env, "no-r-7", "x", 100, 1)).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Business {
                code: ErrCode::Error,
                ..
            }
        ),
        "{err}"
    );
    let err = env.call(&refund(&env, "r-none", "y", 100, 1)).await.unwrap_err();
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
        .call(&RefundQuery::by_out_refund_no(OutRefundNo::new("zzz").unwrap()))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Business {
                code: ErrCode::RefundNotExist,
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn a_refund_can_be_found_by_each_of_its_numbers() {
    let env = spawn().await;
    paid(&env, "no-r-8", 100).await;
    let r = env.call(&refund(&env, "no-r-8", "find-me", 100, 7)).await.unwrap();
    for by in [
        RefundRef::RefundId(r.refund_id.clone()),
        RefundRef::OutRefundNo(OutRefundNo::new("find-me").unwrap()),
        RefundRef::TransactionId(r.transaction_id.clone()),
        RefundRef::OutTradeNo(OutTradeNo::new("no-r-8").unwrap()),
    ] {
        let q = env
            .call(&RefundQuery {
                by: by.clone(),
                offset: None,
                extra: Default::default(),
            })
            .await
            .unwrap();
        assert_eq!(q.refunds[0].out_refund_no, "find-me", "{by:?}");
        assert_eq!(q.refunds[0].refund_fee.get(), 7);
        assert_eq!(q.refund_fee.unwrap().get(), 7);
    }
}

#[tokio::test]
async fn a_refund_can_be_settled_as_failed_by_the_control_endpoint() {
    let env = spawn_with(|c| {
        c.refund_delay = Duration::from_secs(3600);
        c.refund_interval = Duration::ZERO;
    })
    .await;
    paid(&env, "no-r-9", 100).await;
    env.call(&refund(&env, "no-r-9", "closed", 100, 100)).await.unwrap();
    assert_eq!(query(&env, "closed").await.refund_status, RefundStatus::Processing);
    let (status, _) = env
        .post_json(
            "/simulator/refunds/closed/complete",
            serde_json::json!({"status": "REFUNDCLOSE"}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(query(&env, "closed").await.refund_status, RefundStatus::RefundClose);
    // A closed refund gives its amount back to the order.
    env.call(&refund(&env, "no-r-9", "again", 100, 100)).await.unwrap();
    let (status, _) = env
        .post_json("/simulator/refunds/closed/complete", serde_json::json!({}))
        .await;
    assert_eq!(status, 409);
}

#[tokio::test]
async fn refunds_of_one_order_arriving_together_or_within_the_minute_are_refused() {
    // Real time here, so that "together" (within a second) is a real second; the minute is
    // then passed by moving the simulator's clock on.
    let env = spawn_with(|c| c.time_scale = 1.0).await;
    paid(&env, "no-r-20", 100).await;
    env.call(&refund(&env, "no-r-20", "first", 100, 10)).await.unwrap();
    let code = |r: Result<RefundResponse, Error>| match r {
        Err(Error::Business { code, .. }) => code,
        other => panic!("{other:?}"),
    };
    let advance = async |secs: u32| {
        let (status, _) = env
            .post_json("/simulator/clock", serde_json::json!({"advance_secs": secs}))
            .await;
        assert_eq!(status, 200);
    };
    // Right after the first: concurrent, to be retried with the same parameters.
    assert_eq!(
        code(env.call(&refund(&env, "no-r-20", "second", 100, 10)).await),
        ErrCode::BizerrNeedRetry
    );
    // Two seconds on, still within the minute: limited.
    advance(2).await;
    assert_eq!(
        code(env.call(&refund(&env, "no-r-20", "second", 100, 10)).await),
        ErrCode::FrequencyLimited
    );
    // The first one asked again is its own answer, not a new refund: not limited.
    env.call(&refund(&env, "no-r-20", "first", 100, 10)).await.unwrap();
    // A minute on, the second one is accepted, and the refused attempts left nothing behind.
    advance(60).await;
    env.call(&refund(&env, "no-r-20", "second", 100, 10)).await.unwrap();
    assert_eq!(query(&env, "second").await.refund_fee, Fen::new(10).unwrap());
    assert_eq!(query(&env, "first").await.refund_fee, Fen::new(10).unwrap());
}

#[tokio::test]
async fn a_balance_request_without_fen_is_refused_and_changes_nothing() {
    let env = spawn_with(|c| c.refund_interval = Duration::ZERO).await;
    paid(&env, "no-r-22", 100).await;
    let mch_id = env.merchant.mch_id.as_str();
    let (status, _) = env
        .post_json("/simulator/balance", serde_json::json!({"mch_id": mch_id, "fen": 10}))
        .await;
    assert_eq!(status, 200);
    // A forgotten `fen` is a mistake, not a wish to lift the limit (that is `"fen": null`).
    let (status, v) = env
        .post_json("/simulator/balance", serde_json::json!({"mch_id": mch_id}))
        .await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (400, Some("invalid_balance")),
        "{v}"
    );
    assert!(v["error"]["message"].as_str().unwrap().contains("null"), "{v}");
    // The balance set before still holds.
    let err = env.call(&refund(&env, "no-r-22", "bal-x", 100, 11)).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Business {
                code: ErrCode::NotEnough,
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_refund_above_the_merchants_balance_is_notenough_and_takes_nothing() {
    let env = spawn_with(|c| c.refund_interval = Duration::ZERO).await;
    paid(&env, "no-r-21", 100).await;
    let (status, _) = env
        .post_json(
            "/simulator/balance",
            serde_json::json!({"mch_id": env.merchant.mch_id.as_str(), "fen": 50}),
        )
        .await;
    assert_eq!(status, 200);
    env.call(&refund(&env, "no-r-21", "bal-1", 100, 30)).await.unwrap();
    let err = env.call(&refund(&env, "no-r-21", "bal-2", 100, 30)).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Business {
                code: ErrCode::NotEnough,
                ..
            }
        ),
        "{err}"
    );
    // What is left (20) still goes; then nothing does, until the limit is lifted.
    env.call(&refund(&env, "no-r-21", "bal-3", 100, 20)).await.unwrap();
    assert!(env.call(&refund(&env, "no-r-21", "bal-4", 100, 1)).await.is_err());
    let (status, _) = env
        .post_json(
            "/simulator/balance",
            serde_json::json!({"mch_id": env.merchant.mch_id.as_str(), "fen": null}),
        )
        .await;
    assert_eq!(status, 200);
    env.call(&refund(&env, "no-r-21", "bal-4", 100, 1)).await.unwrap();
    // A refund WeChat Pay closes gives its amount back to the balance.
    let (status, _) = env
        .post_json(
            "/simulator/balance",
            serde_json::json!({"mch_id": env.merchant.mch_id.as_str(), "fen": 5}),
        )
        .await;
    assert_eq!(status, 200);
    env.call(&refund(&env, "no-r-21", "bal-5", 100, 5)).await.unwrap();
    assert!(env.call(&refund(&env, "no-r-21", "bal-6", 100, 5)).await.is_err());
    let (status, _) = env
        .post_json(
            "/simulator/refunds/bal-5/complete",
            serde_json::json!({"status": "REFUNDCLOSE"}),
        )
        .await;
    assert_eq!(status, 200);
    env.call(&refund(&env, "no-r-21", "bal-6", 100, 5)).await.unwrap();
}
