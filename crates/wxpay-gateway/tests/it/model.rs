//! A model-based test of the order and refund state machine (reliability checklist item 25):
//! random histories of payments (right or wrong amount, new or reused transaction, from a
//! notification or a query, repeated), closes, failures, refunds asked for, accepted,
//! refused and settled either way (repeated, with wrong amounts), and restarts of the store,
//! run against the store of each engine and, step by step, against a small model of what
//! the rules allow. After every step the database must agree with the model, and:
//! - no transition outside pending → paid | closed | failed, closed | failed → paid (a
//!   payment is never dropped), paid → refunded;
//! - at most one `paid` event per order, and its transaction never changes;
//! - the refunded sum never passes the amount, and equals the refunds that succeeded;
//! - every committed transition has its outbox event, and nothing else has one.
//!
//! `WXPAY_MODEL_CASES` sets how many histories (256 by default; the trust report's full mode
//! runs 10,000).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use wxpay_gateway::store::{
    Created, NewRefund, OrderStatus, Payment, PaymentOutcome, RefundCreated, RefundResult, RefundStatus, Source, Store,
};
use wxpay_gateway::time::Millis;
use wxpay_protocol::{Fen, OutRefundNo, OutTradeNo};

use crate::support::{TestDb, engines, figure};

use crate::store::T0;
/// Orders in one history.
const ORDERS: usize = 2;
/// Transaction ids a history draws from: few, so that one is often reused on the other order.
const TRANSACTIONS: u8 = 3;
/// Refund numbers per order a history draws from.
const REFUND_NUMBERS: u8 = 2;

#[derive(Clone, Debug)]
enum Op {
    /// A payment of `order`: transaction `tx`, its amount `off` fen from the order's.
    Pay { order: usize, tx: u8, off: i8, query: bool },
    /// The expiry job closes it.
    Close { order: usize },
    /// WeChat Pay never had it.
    Fail { order: usize },
    /// A refund of `fen` asked for, under `number`; WeChat Pay accepts it or refuses it.
    Refund {
        order: usize,
        number: u8,
        fen: u16,
        refused: bool,
    },
    /// A refund settles: a notification or a query says it succeeded or failed, of `off` fen
    /// from its amount.
    Settle {
        order: usize,
        number: u8,
        succeeded: bool,
        off: i8,
    },
    /// The process stops and starts again: the store is opened anew.
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    let order = 0..ORDERS;
    prop_oneof![
        6 => (order.clone(), 0..TRANSACTIONS, prop_oneof![8 => Just(0i8), 1 => Just(-1i8), 1 => Just(1i8)], any::<bool>())
            .prop_map(|(order, tx, off, query)| Op::Pay { order, tx, off, query }),
        1 => order.clone().prop_map(|order| Op::Close { order }),
        1 => order.clone().prop_map(|order| Op::Fail { order }),
        4 => (order.clone(), 0..REFUND_NUMBERS, 1u16..=200, prop::bool::weighted(0.15))
            .prop_map(|(order, number, fen, refused)| Op::Refund { order, number, fen, refused }),
        4 => (order, 0..REFUND_NUMBERS, any::<bool>(), prop_oneof![8 => Just(0i8), 1 => Just(1i8)])
            .prop_map(|(order, number, succeeded, off)| Op::Settle { order, number, succeeded, off }),
        1 => Just(Op::Restart),
    ]
}

/// A history: the orders' amounts, then what happens to them.
fn history() -> impl Strategy<Value = (Vec<u16>, Vec<Op>)> {
    (
        prop::collection::vec(1u16..=300, ORDERS),
        prop::collection::vec(op(), 1..24),
    )
}

/// What the rules say an order is.
#[derive(Clone, Debug)]
struct Model {
    amount: u64,
    status: OrderStatus,
    tx: Option<u8>,
    refunded: u64,
    reserved: u64,
    /// Refund number → (amount, status).
    refunds: BTreeMap<u8, (u64, RefundStatus)>,
    /// Outbox events expected, by type.
    events: BTreeMap<&'static str, usize>,
    /// Transitions committed, by event kind.
    transitions: BTreeMap<&'static str, usize>,
}

impl Model {
    fn new(amount: u64) -> Model {
        Model {
            amount,
            status: OrderStatus::Pending,
            tx: None,
            refunded: 0,
            reserved: 0,
            refunds: BTreeMap::new(),
            events: BTreeMap::new(),
            transitions: BTreeMap::new(),
        }
    }

    fn commit(&mut self, kind: &'static str, event: Option<&'static str>) {
        *self.transitions.entry(kind).or_default() += 1;
        if let Some(e) = event {
            *self.events.entry(e).or_default() += 1;
        }
    }
}

/// Figures of a run, for the trust report.
#[derive(Default)]
struct Tally {
    histories: u64,
    steps: u64,
    restarts: u64,
    transitions: BTreeMap<&'static str, u64>,
}

/// One history against `store`, its numbers unique to history `case`.
async fn run(
    store: &Mutex<Arc<dyn Store>>,
    url: &str,
    case: u64,
    amounts: &[u16],
    ops: &[Op],
    tally: &Mutex<Tally>,
) -> Result<(), TestCaseError> {
    let current = || store.lock().unwrap().clone();
    let no = |i: usize| OutTradeNo::new(format!("M{case}O{i}")).unwrap();
    let tx = |t: u8| format!("42{case:012}{t:04}");
    let refund_no = |i: usize, n: u8| OutRefundNo::new(format!("M{case}O{i}R{n}")).unwrap();
    let mut models: Vec<Model> = amounts.iter().map(|a| Model::new(u64::from(*a))).collect();
    for m in &mut models {
        m.commit("created", None);
    }
    let mut ids = Vec::new();
    for (i, amount) in amounts.iter().enumerate() {
        let new = crate::store::new_order("default", no(i).as_str(), i64::from(*amount));
        match current().create_order(new).await.unwrap() {
            Created::New(o) => ids.push(o.id),
            Created::Existing(o) => return Err(TestCaseError::fail(format!("order {} existed", o.out_trade_no))),
        }
    }
    let mut at = T0;
    for (step, op) in ops.iter().enumerate() {
        at = at + Duration::from_millis(1000);
        let s = current();
        match *op {
            Op::Pay {
                order,
                tx: t,
                off,
                query,
            } => {
                let m = &models[order];
                let amount = m.amount.saturating_add_signed(i64::from(off)).max(1);
                let outcome = s
                    .apply_payment(
                        Payment {
                            merchant: "default".into(),
                            out_trade_no: no(order),
                            transaction_id: tx(t),
                            amount_fen: Fen::new(amount).unwrap(),
                            paid_at: at,
                            source: if query { Source::Query } else { Source::Notification },
                            now: at,
                        },
                        None,
                    )
                    .await
                    .unwrap();
                let taken_elsewhere = models
                    .iter()
                    .enumerate()
                    .any(|(j, other)| j != order && other.tx == Some(t));
                let m = &mut models[order];
                let applies = amount == m.amount
                    && matches!(
                        m.status,
                        OrderStatus::Pending | OrderStatus::Closed | OrderStatus::Failed
                    )
                    && !taken_elsewhere;
                prop_assert_eq!(
                    matches!(outcome, PaymentOutcome::Applied(_)),
                    applies,
                    "step {} {:?}: {:?} for {:?}",
                    step,
                    op,
                    outcome,
                    m
                );
                if applies {
                    m.status = OrderStatus::Paid;
                    m.tx = Some(t);
                    m.commit("paid", Some("order.paid"));
                }
            }
            Op::Close { order } | Op::Fail { order } => {
                let closing = matches!(op, Op::Close { .. });
                let changed = if closing {
                    s.close_order(ids[order], "model".into(), at).await.unwrap()
                } else {
                    s.fail_order(ids[order], "model".into(), at).await.unwrap()
                };
                let m = &mut models[order];
                let applies = m.status == OrderStatus::Pending;
                prop_assert_eq!(changed.is_some(), applies, "step {} {:?} for {:?}", step, op, m);
                if applies && closing {
                    m.status = OrderStatus::Closed;
                    m.commit("closed", Some("order.closed"));
                } else if applies {
                    m.status = OrderStatus::Failed;
                    m.commit("failed", None);
                }
            }
            Op::Refund {
                order,
                number,
                fen,
                refused,
            } => {
                let created = s
                    .create_refund(NewRefund {
                        merchant: "default".into(),
                        out_trade_no: no(order),
                        out_refund_no: refund_no(order, number),
                        amount_fen: Fen::new(u64::from(fen)).unwrap(),
                        reason: None,
                        request_hash: format!("model-{case}-{order}-{number}-{fen}"),
                        first_check_at: at + Duration::from_secs(60),
                        now: at,
                    })
                    .await
                    .unwrap();
                let m = &mut models[order];
                let fen = u64::from(fen);
                let expected_new = !m.refunds.contains_key(&number)
                    && matches!(m.status, OrderStatus::Paid | OrderStatus::Refunded)
                    && fen <= m.amount - m.reserved;
                let paid = matches!(m.status, OrderStatus::Paid | OrderStatus::Refunded);
                let refund = match (&created, expected_new) {
                    (RefundCreated::New(r), true) => r.clone(),
                    (RefundCreated::Existing(_), false) if m.refunds.contains_key(&number) => continue,
                    (RefundCreated::NotPaid(_), false) if !paid => continue,
                    (RefundCreated::Exceeds { available }, false)
                        if paid && !m.refunds.contains_key(&number) && fen > m.amount - m.reserved =>
                    {
                        prop_assert_eq!(available.get(), m.amount - m.reserved, "step {}: {:?}", step, m);
                        continue;
                    }
                    (other, _) => {
                        return Err(TestCaseError::fail(format!("step {step} {op:?}: {other:?} for {m:?}")));
                    }
                };
                m.reserved += fen;
                m.refunds.insert(number, (fen, RefundStatus::Pending));
                m.commit("refund_requested", None);
                if refused {
                    // WeChat Pay refuses it for good: it fails, its reservation is released.
                    s.refund_upstream_failure(refund.id, true, "NOTENOUGH".into(), at, at + Duration::from_secs(60))
                        .await
                        .unwrap();
                    m.reserved -= fen;
                    m.refunds.insert(number, (fen, RefundStatus::Failed));
                    m.commit("refund_failed", Some("refund.failed"));
                } else {
                    m.commit("refund_accepted", None);
                    s.refund_accepted(
                        refund.id,
                        format!("50{case:012}{order}{number}"),
                        at,
                        at + Duration::from_secs(60),
                    )
                    .await
                    .unwrap();
                }
            }
            Op::Settle {
                order,
                number,
                succeeded,
                off,
            } => {
                let m = &models[order];
                let Some(&(fen, status)) = m.refunds.get(&number) else {
                    // Nothing was asked for under that number: a settlement of it is unknown.
                    let outcome = s
                        .apply_refund(
                            settlement(&no(order), &refund_no(order, number), 1, succeeded, at),
                            None,
                        )
                        .await
                        .unwrap();
                    prop_assert_eq!(outcome.verdict().as_str(), "unknown_refund", "step {}", step);
                    continue;
                };
                let amount = fen.saturating_add_signed(i64::from(off));
                let outcome = s
                    .apply_refund(
                        settlement(&no(order), &refund_no(order, number), amount, succeeded, at),
                        None,
                    )
                    .await
                    .unwrap();
                let expected = match (amount == fen, status, succeeded) {
                    (false, ..) => "amount_mismatch",
                    (true, RefundStatus::Pending, _) => "applied",
                    (true, RefundStatus::Succeeded, true) | (true, RefundStatus::Failed, false) => "duplicate",
                    (true, _, _) => "status_conflict",
                };
                prop_assert_eq!(
                    outcome.verdict().as_str(),
                    expected,
                    "step {} {:?}: {:?}",
                    step,
                    op,
                    outcome
                );
                if expected == "applied" {
                    let m = &mut models[order];
                    if succeeded {
                        m.refunded += fen;
                        m.refunds.insert(number, (fen, RefundStatus::Succeeded));
                        m.commit("refund_succeeded", Some("refund.succeeded"));
                        if m.refunded == m.amount {
                            m.status = OrderStatus::Refunded;
                        }
                    } else {
                        m.reserved -= fen;
                        m.refunds.insert(number, (fen, RefundStatus::Failed));
                        m.commit("refund_failed", Some("refund.failed"));
                    }
                }
            }
            Op::Restart => {
                let reopened = wxpay_gateway::open_store(url, 4).await.unwrap();
                *store.lock().unwrap() = reopened;
                tally.lock().unwrap().restarts += 1;
            }
        }
        // The database agrees with the model, and the invariants hold, after every step.
        let s = current();
        for (i, m) in models.iter().enumerate() {
            let o = s.order("default".into(), no(i)).await.unwrap().unwrap();
            prop_assert_eq!(o.status, m.status, "step {} {:?}: order {}", step, op, i);
            prop_assert_eq!(o.transaction_id.clone(), m.tx.map(tx), "step {}: order {}", step, i);
            prop_assert_eq!(o.refunded_fen.get(), m.refunded, "step {}: order {}", step, i);
            prop_assert!(m.refunded <= m.amount && m.reserved <= m.amount);
            let refunds = s.refunds_of(o.id).await.unwrap();
            let succeeded: u64 = refunds
                .iter()
                .filter(|r| r.status == RefundStatus::Succeeded)
                .map(|r| r.amount_fen.get())
                .sum();
            prop_assert_eq!(
                succeeded,
                o.refunded_fen.get(),
                "step {}: refunded is the succeeded refunds",
                step
            );
            for (n, (fen, status)) in &m.refunds {
                let r = refunds
                    .iter()
                    .find(|r| r.out_refund_no == refund_no(i, *n))
                    .expect("a refund the model has");
                prop_assert_eq!(
                    (r.amount_fen.get(), r.status),
                    (*fen, *status),
                    "step {}: refund {}",
                    step,
                    n
                );
            }
            let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
            for e in s.events(o.id).await.unwrap() {
                *kinds.entry(e.kind).or_default() += 1;
            }
            prop_assert!(
                kinds.get("paid").copied().unwrap_or(0) <= 1,
                "step {}: {:?}",
                step,
                kinds
            );
            // Every event the model expects, and no other.
            let expected_kinds: BTreeMap<String, usize> =
                m.transitions.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect();
            prop_assert_eq!(&kinds, &expected_kinds, "step {} {:?}: events of order {}", step, op, i);
            let mut events: BTreeMap<String, usize> = BTreeMap::new();
            for d in s.deliveries(o.id).await.unwrap() {
                *events.entry(d.event_type).or_default() += 1;
            }
            let expected: BTreeMap<String, usize> = m.events.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect();
            prop_assert_eq!(&events, &expected, "step {} {:?}: outbox of order {}", step, op, i);
        }
    }
    let mut t = tally.lock().unwrap();
    t.histories += 1;
    t.steps += ops.len() as u64;
    for m in &models {
        for (kind, n) in &m.transitions {
            *t.transitions.entry(kind).or_default() += *n as u64;
        }
    }
    Ok(())
}

fn settlement(order: &OutTradeNo, number: &OutRefundNo, fen: u64, succeeded: bool, at: Millis) -> RefundResult {
    RefundResult {
        merchant: "default".into(),
        out_refund_no: number.clone(),
        out_trade_no: order.clone(),
        refund_id: format!("50{}", number.as_str().len()),
        amount_fen: Fen::new(fen.max(1)).unwrap(),
        succeeded,
        upstream_status: if succeeded { "SUCCESS" } else { "CHANGE" }.into(),
        settled_at: at,
        source: Source::Notification,
        now: at,
    }
}

/// How many histories to run: the variable `name` when set, `default` otherwise.
pub(crate) fn cases(name: &str, default: u32) -> u32 {
    std::env::var(name).ok().and_then(|c| c.parse().ok()).unwrap_or(default)
}

/// Runs `cases` histories drawn from `strategy`, each the future `run(n, history)` makes (`n`
/// counts them from 0), on this test's runtime: proptest drives them synchronously, and
/// shrinks a failing one by running more.
pub(crate) fn histories<S: Strategy, F: Future<Output = Result<(), TestCaseError>>>(
    cases: u32,
    strategy: &S,
    run: impl Fn(u64, S::Value) -> F,
) -> Result<(), proptest::test_runner::TestError<S::Value>> {
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let handle = tokio::runtime::Handle::current();
    let n = std::sync::atomic::AtomicU64::new(0);
    tokio::task::block_in_place(|| {
        runner.run(strategy, |value| {
            handle.block_on(run(n.fetch_add(1, std::sync::atomic::Ordering::Relaxed), value))
        })
    })
}

async fn random_histories_keep_the_state_machine_on_every_engine(db: TestDb) {
    let store = Mutex::new(db.store().await);
    let tally = Mutex::new(Tally::default());
    let result = histories(cases("WXPAY_MODEL_CASES", 256), &history(), |n, (amounts, ops)| {
        let (store, tally, url) = (&store, &tally, &db.url);
        async move { run(store, url, n, &amounts, &ops, tally).await }
    });
    if let Err(e) = result {
        panic!("{}: {e}", db.engine);
    }
    let t = tally.lock().unwrap();
    let transitions: Vec<String> = t.transitions.iter().map(|(k, n)| format!("{n} {k}")).collect();
    figure(
        &["25"],
        format!(
            "{}: {} random histories, {} steps ({} restarts; {}) → the database agreed with the model after every step: no forbidden transition, ≤ 1 paid per order, refunded ≤ amount, every transition with its event",
            db.engine,
            t.histories,
            t.steps,
            t.restarts,
            transitions.join(", ")
        ),
    );
}
engines!(multi_thread random_histories_keep_the_state_machine_on_every_engine);
