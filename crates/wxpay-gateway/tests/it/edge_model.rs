//! The model-based test of item 25 through the gateway's edge, where `model.rs` drives the
//! store: random histories of payments (some with hostile, repeated or failed
//! notifications), failed payments, merchant queries, closes, refunds settled either way,
//! and restarts of the gateway, for a merchant on APIv2 and one on APIv3, on each engine,
//! with the simulator as WeChat Pay. Each step goes through the HTTP API or the simulator;
//! then the gateway must come to agree with a small model of what WeChat Pay now holds
//! (checked against the simulator's own view too), and:
//! - at most one `paid` event per order, carrying the transaction WeChat Pay reported;
//! - the refunded sum never passes the amount and equals the refunds that succeeded;
//! - a refund is accepted exactly when the order is paid and the amount fits;
//! - every transition reached the webhook: one `order.paid`, `order.closed`,
//!   `refund.succeeded` or `refund.failed` event each (by event id; redeliveries of one id
//!   across a restart are allowed, as at-least-once delivery has them), nothing else.
//!
//! A restart stops the gateway (its background work, its server, its pools) and starts a
//! new one on the same database and simulator, in this process; the SIGKILL runs of `wxpay
//! serve` (`crash.rs` of the command's tests) restart the process.
//!
//! `WXPAY_EDGE_MODEL_CASES` sets how many histories per engine and protocol (16 by default;
//! the trust report's full mode runs 500).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use reqwest::Method;
use serde_json::{Value, json};
use wxpay_simulator::{SimHandle, V3Signer};

use crate::support::{Options, TestApp, TestDb, Trusts, V3Setup, engines, figure, order_body, spawn_app};

/// Orders in one history.
const ORDERS: usize = 2;
/// Refunds one order may be asked for.
const REFUNDS: usize = 3;

/// How a payment's first notification goes wrong, if it does (the simulator retries it).
#[derive(Clone, Copy, Debug)]
enum Trouble {
    None,
    /// Sent several times at once.
    Duplicated,
    /// Signed with the wrong key.
    BadSignature,
    /// Carries another amount.
    WrongAmount,
    /// APIv3 only: a `WECHATPAY/SIGNTEST/` probe signature.
    Probe,
    /// APIv3 only: a resource whose GCM tag was tampered with.
    TamperedTag,
}

#[derive(Clone, Debug)]
enum Op {
    /// The customer pays; the notification may be troubled.
    Pay { order: usize, trouble: Trouble },
    /// The customer's payment fails (WeChat Pay's PAYERROR).
    PayFails { order: usize },
    /// The merchant asks for the order with `?sync=true`.
    Query { order: usize },
    /// The merchant closes it.
    Close { order: usize },
    /// The merchant asks for a refund of `size`.
    Refund { order: usize, size: Size },
    /// WeChat Pay settles one of the order's pending refunds (chosen by `refund`), if any.
    Settle {
        order: usize,
        refund: usize,
        succeeded: bool,
    },
    /// The gateway stops and starts again on its database.
    Restart,
}

fn op(v3: bool) -> impl Strategy<Value = Op> {
    let order = 0..ORDERS;
    let troubles = if v3 {
        vec![
            Trouble::None,
            Trouble::Duplicated,
            Trouble::BadSignature,
            Trouble::WrongAmount,
            Trouble::Probe,
            Trouble::TamperedTag,
        ]
    } else {
        vec![
            Trouble::None,
            Trouble::Duplicated,
            Trouble::BadSignature,
            Trouble::WrongAmount,
        ]
    };
    prop_oneof![
        6 => (order.clone(), prop::sample::select(troubles)).prop_map(|(order, trouble)| Op::Pay { order, trouble }),
        1 => order.clone().prop_map(|order| Op::PayFails { order }),
        2 => order.clone().prop_map(|order| Op::Query { order }),
        2 => order.clone().prop_map(|order| Op::Close { order }),
        4 => (order.clone(), prop_oneof![2 => Just(Size::Rest), 1 => Just(Size::Half), 2 => (1u16..=300).prop_map(Size::Fen)])
            .prop_map(|(order, size)| Op::Refund { order, size }),
        4 => (order, 0..REFUNDS, prop::bool::weighted(0.7))
            .prop_map(|(order, refund, succeeded)| Op::Settle { order, refund, succeeded }),
        1 => Just(Op::Restart),
    ]
}

fn history(v3: bool) -> impl Strategy<Value = (Vec<u16>, Vec<Op>)> {
    (
        prop::collection::vec(1u16..=300, ORDERS),
        prop::collection::vec(op(v3), 1..12),
    )
}

impl Trouble {
    /// The simulator's fault that makes the first notification so (for the order, once).
    fn fault(self) -> Option<Value> {
        match self {
            Trouble::None => None,
            Trouble::Duplicated => Some(json!({"kind": "notify_duplicate", "copies": 5})),
            Trouble::BadSignature => Some(json!({"kind": "notify_bad_signature", "count": 1})),
            Trouble::WrongAmount => Some(json!({"kind": "notify_wrong_amount", "count": 1})),
            Trouble::Probe => Some(json!({"kind": "notify_probe", "count": 1})),
            Trouble::TamperedTag => Some(json!({"kind": "notify_tampered_tag", "count": 1})),
        }
    }
}

/// How much a refund asks for.
#[derive(Clone, Copy, Debug)]
enum Size {
    /// What is left of the order (all of it, for the first): the order becomes refunded.
    Rest,
    /// Half of what is left.
    Half,
    /// So many fen, which may be more than is left.
    Fen(u16),
}

/// What WeChat Pay holds of an order, as the model sees it.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Trade {
    NotPay,
    Success,
    Closed,
    PayError,
}

#[derive(Clone, Debug, PartialEq)]
enum RefundState {
    Pending,
    Succeeded,
    Failed,
}

#[derive(Debug)]
struct OrderModel {
    no: String,
    amount: u64,
    trade: Trade,
    refunds: Vec<(String, u64, RefundState)>,
    /// Refunds asked for, accepted or not: each under a number of its own.
    asked: usize,
}

impl OrderModel {
    fn refunded(&self) -> u64 {
        self.refunds
            .iter()
            .filter(|r| r.2 == RefundState::Succeeded)
            .map(|r| r.1)
            .sum()
    }

    /// What refunds not failed hold of the amount.
    fn reserved(&self) -> u64 {
        self.refunds
            .iter()
            .filter(|r| r.2 != RefundState::Failed)
            .map(|r| r.1)
            .sum()
    }

    fn status(&self) -> &'static str {
        match self.trade {
            Trade::NotPay => "pending",
            Trade::Closed => "closed",
            Trade::PayError => "failed",
            Trade::Success if self.refunded() == self.amount => "refunded",
            Trade::Success => "paid",
        }
    }
}

#[derive(Default)]
struct Tally {
    histories: u64,
    steps: u64,
    restarts: u64,
    troubled: u64,
    refused_refunds: u64,
    redeliveries: u64,
    refunded_in_full: u64,
    ops: BTreeMap<&'static str, u64>,
}

/// The gateway under test, the simulator it shares across restarts, and the webhook events
/// the gateways before a restart received.
struct Rig {
    app: Option<TestApp>,
    sim: Option<SimHandle>,
    earlier_events: Vec<Value>,
}

fn options(v3: bool, shared_sim: Option<String>) -> Options {
    Options {
        shared_sim,
        v3: v3.then_some(V3Setup {
            signer: V3Signer::PublicKey,
            trusts: Trusts::PublicKey,
        }),
        // Refunds wait for the step that settles them.
        sim: Box::new(|c| c.refund_delay = std::time::Duration::from_secs(100_000_000)),
        ..crate::support::with_jobs_and_webhook()
    }
}

fn check(ok: bool, what: impl FnOnce() -> String) -> Result<(), TestCaseError> {
    if ok { Ok(()) } else { Err(TestCaseError::fail(what())) }
}

/// Polls the gateway until `orders` all read as the model says, up to about twenty seconds
/// (a notification's retries, on a loaded machine); the last reading when they never do.
async fn agreed(t: &TestApp, orders: &[OrderModel]) -> Result<Vec<Value>, String> {
    let mut last = Vec::new();
    for _ in 0..1000 {
        last.clear();
        let mut all = true;
        for o in orders {
            let v = t.order(&o.no).await;
            let mut same = v["status"] == o.status() && v["refunded_fen"] == o.refunded();
            for (no, _, state) in &o.refunds {
                let r = t.api(Method::GET, &format!("/v1/refunds/{no}"), None, None).await.1;
                let want = match state {
                    RefundState::Pending => "pending",
                    RefundState::Succeeded => "succeeded",
                    RefundState::Failed => "failed",
                };
                same &= r["status"] == want;
            }
            all &= same;
            last.push(v);
        }
        if all {
            return Ok(last);
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    Err(format!("{last:?}"))
}

async fn run(
    rig: &Mutex<Rig>,
    v3: bool,
    case: u64,
    amounts: &[u16],
    ops: &[Op],
    tally: &Mutex<Tally>,
) -> Result<(), TestCaseError> {
    use futures_util::FutureExt as _;
    let mut app = rig.lock().unwrap().app.take();
    // A helper's assertion that panics fails this history only: the gateway is put back for
    // the next one (proptest's shrinking runs many), as it is after a failure it reports.
    let result = std::panic::AssertUnwindSafe(steps(&mut app, rig, v3, case, amounts, ops, tally))
        .catch_unwind()
        .await
        .unwrap_or_else(|panic| {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default();
            Err(TestCaseError::fail(format!("a step panicked: {message}")))
        });
    rig.lock().unwrap().app = app;
    result
}

async fn steps(
    app: &mut Option<TestApp>,
    rig: &Mutex<Rig>,
    v3: bool,
    case: u64,
    amounts: &[u16],
    ops: &[Op],
    tally: &Mutex<Tally>,
) -> Result<(), TestCaseError> {
    let tag = if v3 { "V3" } else { "V2" };
    let mut orders = Vec::new();
    let t = app.as_ref().expect("the gateway of the last history");
    for (i, &amount) in amounts.iter().enumerate() {
        let no = format!("EM{tag}{case:05}{i}");
        let mut body = order_body(u64::from(amount));
        body["out_trade_no"] = json!(no);
        let (status, v) = t.api(Method::POST, "/v1/orders", Some(body), None).await;
        check(status == 201, || format!("create {no}: {status} {v}"))?;
        orders.push(OrderModel {
            no,
            amount: u64::from(amount),
            trade: Trade::NotPay,
            refunds: Vec::new(),
            asked: 0,
        });
    }
    for op in ops {
        let name = match op {
            Op::Pay { .. } => "pay",
            Op::PayFails { .. } => "payment failed",
            Op::Query { .. } => "query",
            Op::Close { .. } => "close",
            Op::Refund { .. } => "refund",
            Op::Settle { .. } => "refund settled",
            Op::Restart => "restart",
        };
        *tally.lock().unwrap().ops.entry(name).or_default() += 1;
        let t = app.as_ref().expect("the gateway");
        match *op {
            Op::Pay { order, .. } | Op::PayFails { order } => {
                let o = &mut orders[order];
                let (fails, fault) = match *op {
                    Op::Pay { trouble, .. } => (false, trouble.fault()),
                    _ => (true, None),
                };
                let payable = o.trade == Trade::NotPay;
                if let (Some(mut fault), true) = (fault, payable) {
                    fault["out_trade_no"] = json!(o.no);
                    t.fault(fault).await;
                    tally.lock().unwrap().troubled += 1;
                }
                let mut pay = json!({"out_trade_no": o.no});
                if fails {
                    pay["outcome"] = json!("fail");
                }
                let (status, v) = t.sim_post("/simulator/pay", pay).await;
                check((status == 200) == payable, || {
                    format!("{name} of {} ({:?}): {status} {v}", o.no, o.trade)
                })?;
                if payable {
                    o.trade = if fails { Trade::PayError } else { Trade::Success };
                }
            }
            Op::Query { order } => {
                let no = &orders[order].no;
                let (status, v) = t
                    .api(Method::GET, &format!("/v1/orders/{no}?sync=true"), None, None)
                    .await;
                check(status == 200, || format!("query {no}: {status} {v}"))?;
            }
            Op::Close { order } => {
                let o = &mut orders[order];
                let (status, v) = t
                    .api(Method::POST, &format!("/v1/orders/{}/close", o.no), None, None)
                    .await;
                // Closing an unpaid order closes it at WeChat Pay; a paid one stays paid
                // (ORDERPAID), however the gateway answers.
                check(status < 500, || format!("close {}: {status} {v}", o.no))?;
                if o.trade == Trade::NotPay {
                    check(status == 200, || format!("close {}: {status} {v}", o.no))?;
                    o.trade = Trade::Closed;
                }
            }
            Op::Refund { order, size } => {
                let o = &mut orders[order];
                if o.refunds.len() >= REFUNDS {
                    // The history keeps at most REFUNDS per order; this one is not asked.
                    continue;
                }
                let left = o.amount.saturating_sub(o.reserved());
                let fen = match size {
                    Size::Rest => left.max(1),
                    Size::Half => (left / 2).max(1),
                    Size::Fen(fen) => u64::from(fen),
                };
                let no = format!("{}R{}", o.no, o.asked);
                o.asked += 1;
                let fits = o.trade == Trade::Success && o.reserved() + fen <= o.amount;
                let (status, v) = t
                    .api(
                        Method::POST,
                        &format!("/v1/orders/{}/refunds", o.no),
                        Some(json!({"amount_fen": fen, "out_refund_no": no})),
                        None,
                    )
                    .await;
                check(
                    (status == 201) == fits && (fits || (400..500).contains(&status)),
                    || {
                        format!(
                            "refund {fen} of {} ({:?}, {} reserved of {}): {status} {v}",
                            o.no,
                            o.trade,
                            o.reserved(),
                            o.amount
                        )
                    },
                )?;
                if fits {
                    o.refunds.push((no, fen, RefundState::Pending));
                } else {
                    tally.lock().unwrap().refused_refunds += 1;
                }
            }
            Op::Settle {
                order,
                refund,
                succeeded,
            } => {
                let o = &mut orders[order];
                let mut pending: Vec<_> = o.refunds.iter_mut().filter(|r| r.2 == RefundState::Pending).collect();
                if pending.is_empty() {
                    continue;
                }
                let n = pending.len();
                let r = &mut pending[refund % n];
                let body = if succeeded {
                    json!({})
                } else {
                    json!({"status": "REFUNDCLOSE"})
                };
                let (status, v) = t.sim_post(&format!("/simulator/refunds/{}/complete", r.0), body).await;
                check(status == 200, || format!("settle {}: {status} {v}", r.0))?;
                r.2 = if succeeded {
                    RefundState::Succeeded
                } else {
                    RefundState::Failed
                };
            }
            Op::Restart => {
                tally.lock().unwrap().restarts += 1;
                let old = app.take().expect("the gateway");
                let sim_url = old.sim_url.clone();
                // Read after the stop: a delivery under way when it began ends first.
                let received = old.webhook.events.clone();
                let (db, sim) = old.stop_gateway().await;
                {
                    let mut r = rig.lock().unwrap();
                    let received = received.lock().unwrap();
                    r.earlier_events
                        .extend(received.iter().filter(|(_, ok)| *ok).map(|(e, _)| e.clone()));
                    if let Some(sim) = sim {
                        r.sim = Some(sim);
                    }
                }
                *app = Some(spawn_app(db, options(v3, Some(sim_url))).await);
            }
        }
        tally.lock().unwrap().steps += 1;
        let t = app.as_ref().expect("the gateway");
        // The gateway comes to agree with the model, and the invariants hold.
        let seen = agreed(t, &orders).await.map_err(|last| {
            TestCaseError::fail(format!(
                "after {op:?}: the gateway never agreed with {orders:?}: {last}"
            ))
        })?;
        for (o, v) in orders.iter().zip(&seen) {
            let sim = t.sim_get(&format!("/simulator/orders/{}", o.no)).await;
            let paid: Vec<&Value> = v["events"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| e["kind"] == "paid")
                .collect();
            check(paid.len() <= 1, || format!("{}: two payments: {v}", o.no))?;
            if o.trade == Trade::Success {
                check(paid.len() == 1 && v["transaction_id"] == sim["transaction_id"], || {
                    format!("{}: paid once, with WeChat Pay's transaction: {v} {sim}", o.no)
                })?;
            }
            check(v["refunded_fen"].as_u64().unwrap_or(0) <= o.amount, || {
                format!("{}: refunded more than the amount: {v}", o.no)
            })?;
        }
    }
    // The backend learns of every transition from the webhook alone: each must reach it,
    // once by event id, and nothing else may.
    let t = app.as_ref().expect("the gateway");
    t.outbox_drained().await;
    let mut events = rig.lock().unwrap().earlier_events.clone();
    events.extend(t.webhook.delivered());
    for o in &orders {
        let mut ids: HashMap<&str, HashSet<&str>> = HashMap::new();
        let mut deliveries = 0;
        for e in events.iter().filter(|e| e["data"]["out_trade_no"] == o.no.as_str()) {
            ids.entry(e["type"].as_str().unwrap_or("?"))
                .or_default()
                .insert(e["id"].as_str().unwrap_or("?"));
            deliveries += 1;
        }
        let count = |kind: &str| ids.get(kind).map_or(0, HashSet::len);
        let refunds = |state: RefundState| o.refunds.iter().filter(|r| r.2 == state).count();
        let want = [
            ("order.paid", usize::from(o.trade == Trade::Success)),
            ("order.closed", usize::from(o.trade == Trade::Closed)),
            ("refund.succeeded", refunds(RefundState::Succeeded)),
            ("refund.failed", refunds(RefundState::Failed)),
        ];
        let distinct: usize = ids.values().map(HashSet::len).sum();
        check(
            want.iter().all(|(kind, n)| count(kind) == *n) && distinct == want.iter().map(|w| w.1).sum::<usize>(),
            || format!("{}: events {ids:?}, the model {o:?}", o.no),
        )?;
        let mut tally = tally.lock().unwrap();
        tally.redeliveries += (deliveries - distinct) as u64;
        tally.refunded_in_full += u64::from(o.status() == "refunded");
    }
    tally.lock().unwrap().histories += 1;
    Ok(())
}

async fn random_histories_through_the_edge_agree_with_wechat_pay(db: TestDb) {
    let cases = crate::model::cases("WXPAY_EDGE_MODEL_CASES", 16);
    let engine = db.engine;
    let mut lines = Vec::new();
    // Each protocol on a database of its own: a gateway's background work would otherwise
    // ask the other protocol's simulator about orders it never had.
    let mut db = Some(db);
    for v3 in [false, true] {
        let db = match db.take() {
            Some(db) => db,
            None if engine == "sqlite" => TestDb::sqlite(),
            None => TestDb::postgres().await.expect("PostgreSQL, as for the first protocol"),
        };
        let t = spawn_app(db, options(v3, None)).await;
        let rig = Mutex::new(Rig {
            app: Some(t),
            sim: None,
            earlier_events: Vec::new(),
        });
        let tally = Mutex::new(Tally::default());
        let result = crate::model::histories(cases, &history(v3), |n, (amounts, ops)| {
            let (rig, tally) = (&rig, &tally);
            async move { run(rig, v3, n, &amounts, &ops, tally).await }
        });
        if let Err(e) = result {
            panic!("{engine}, {}: {e}", if v3 { "APIv3" } else { "APIv2" });
        }
        let rig = rig.into_inner().unwrap();
        let t = rig.app.expect("the gateway");
        let (_db, sim) = t.stop_gateway().await;
        if let Some(sim) = sim.or(rig.sim) {
            sim.shutdown().await;
        }
        let t = tally.into_inner().unwrap();
        let ops: Vec<String> = t.ops.iter().map(|(k, n)| format!("{n} {k}")).collect();
        lines.push(format!(
            "{}: {} histories, {} steps ({}; {} notifications troubled, {} refunds refused, {} orders refunded in full, {} restarts, {} webhook redeliveries)",
            if v3 { "APIv3" } else { "APIv2" },
            t.histories,
            t.steps,
            ops.join(", "),
            t.troubled,
            t.refused_refunds,
            t.refunded_in_full,
            t.restarts,
            t.redeliveries,
        ));
    }
    figure(
        &["25"],
        format!(
            "{engine}, through the HTTP API and the simulator: {} → the gateway agreed with WeChat Pay after every step: ≤ 1 paid per order with WeChat Pay's transaction, refunded ≤ amount, refunds accepted exactly when they fit, every transition delivered to the webhook once by id",
            lines.join("; ")
        ),
    );
}
engines!(multi_thread random_histories_through_the_edge_agree_with_wechat_pay);
