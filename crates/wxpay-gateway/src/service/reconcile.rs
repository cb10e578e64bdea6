//! Reconciliation: one day's WeChat Pay bill against the database, order by order and refund
//! by refund, and, when asked, each difference settled through `orderquery`/`refundquery`
//! (never by trusting the bill alone), with what changed written into each order's history.
//!
//! The bill (`downloadbill`, `ALL`) lists a payment on the day it succeeded and a refund on
//! the day WeChat Pay accepted it. The database is read the same way: orders paid that day,
//! refunds accepted that day; a row of the bill that the day's records lack is looked up by
//! its number before it is called missing. Amounts are exact fen on both sides (the bill's
//! yuan are parsed without rounding). Refund statuses in the bill are a snapshot taken when it
//! was made, so only contradictions count (`SUCCESS` there and not here, or the reverse).

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use serde::Serialize;
use wxpay_protocol::{BeijingTime, OutRefundNo, OutTradeNo};

use crate::provider::{BillEntry, BillKind, PaymentState, Provider, ProviderError, Refusal};
use crate::service::refunds::Synced;
use crate::service::state::Service;
use crate::store::{ImportedRefund, Order, OrderStatus, Refund, RefundCreated, RefundStatus};
use crate::time::Millis;

/// A day (Beijing has no daylight saving time).
const DAY: std::time::Duration = std::time::Duration::from_secs(86_400);
/// A day's bill: its rows.
type Bill = [BillEntry];

/// Why a reconciliation could not be carried out (a difference is not an error: it is in
/// the report).
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The date or merchant asked for is not usable.
    #[error("{0}")]
    Invalid(String),
    /// WeChat Pay has not made the day's bill yet.
    #[error(
        "WeChat Pay has not made the bill of {0} yet: it makes it from 09:00 the next day (Beijing time); try after 10:00"
    )]
    NotReady(String),
    /// The bill could not be had or read.
    #[error("the bill: {0}")]
    Bill(String),
    /// The database failed.
    #[error("{0}")]
    Store(#[from] crate::store::StoreError),
}

/// What a reconciliation reports while it runs (a progress bar on a terminal, nothing in
/// JSON mode or in `serve`).
pub trait Progress: Send + Sync {
    /// A new stage starts: `total` steps when known.
    fn stage(&self, name: &str, total: Option<u64>);
    /// `n` more steps of the current stage are done.
    fn advance(&self, n: u64);
    /// The current stage is done.
    fn done(&self);
    /// Bytes of the bill received so far, of `total` when WeChat Pay said.
    fn downloaded(&self, bytes: u64, total: Option<u64>) {
        let _ = (bytes, total);
    }
}

/// No progress shown.
#[derive(Debug, Clone, Copy, Default)]
pub struct Quiet;

impl Progress for Quiet {
    fn stage(&self, _: &str, _: Option<u64>) {}
    fn advance(&self, _: u64) {}
    fn done(&self) {}
}

/// What kind of difference.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DifferenceKind {
    /// In the bill, not in the database.
    MissingLocally,
    /// In the database, not in the bill.
    MissingUpstream,
    /// Both have it, with other amounts.
    AmountDiffers,
    /// Both have it, in contradicting states.
    StatusDiffers,
}

/// One difference between the bill and the database.
#[derive(Clone, Debug, Serialize)]
pub struct Difference {
    /// What kind.
    pub kind: DifferenceKind,
    /// `payment` or `refund`.
    pub record: &'static str,
    /// The order.
    pub out_trade_no: String,
    /// The refund, for a refund.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub out_refund_no: Option<String>,
    /// What the bill says (amount in fen, status), when it has the record.
    pub upstream: Option<String>,
    /// What the database says, when it has the record.
    pub local: Option<String>,
    /// The bill row's time (Unix ms): for a refund, when WeChat Pay accepted it.
    #[serde(skip)]
    pub bill_time_ms: Option<i64>,
}

/// What `--repair` did about one difference.
#[derive(Clone, Debug, Serialize)]
pub struct Repair {
    /// The difference.
    pub difference: Difference,
    /// How it was checked: `orderquery`, `refundquery`.
    pub checked_with: &'static str,
    /// `settled` (the database now agrees with WeChat Pay) or `unresolved`.
    pub result: &'static str,
    /// What was found and done.
    pub detail: String,
}

/// Sums of one side.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    /// Payment rows.
    pub payments: u64,
    /// Their amount, in fen.
    pub payments_fen: i64,
    /// Refund rows.
    pub refunds: u64,
    /// Their amount, in fen.
    pub refunds_fen: i64,
}

/// The result of reconciling one merchant's day.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The merchant's name.
    pub merchant: String,
    /// The day, `YYYY-MM-DD` (Beijing time).
    pub date: String,
    /// Whether the books balance: no difference left and equal totals.
    pub balanced: bool,
    /// The bill's totals (its summary line, checked against its rows).
    pub bill: Totals,
    /// The database's totals for the day.
    pub local: Totals,
    /// Differences found.
    pub found: Vec<Difference>,
    /// What `--repair` did, one entry per difference found.
    pub repairs: Vec<Repair>,
    /// Differences left (after repair, when asked).
    pub remaining: Vec<Difference>,
    /// Refunds the database dated to another day that WeChat Pay's bill puts on this one;
    /// with repair their acceptance time becomes the bill's.
    pub moved_to_this_day: Vec<String>,
    /// Milliseconds spent downloading, comparing and repairing.
    pub timings_ms: Timings,
}

/// Where the time went.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Timings {
    /// Downloading and parsing the bill.
    pub download: u64,
    /// Reading the database and comparing.
    pub compare: u64,
    /// Repairing and comparing again.
    pub repair: u64,
}

/// A day in Beijing time: its `YYYY-MM-DD` and its bounds in Unix milliseconds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Day {
    /// `YYYY-MM-DD`.
    pub date: String,
    start: BeijingTime,
}

impl Day {
    /// Reads `YYYY-MM-DD`.
    ///
    /// # Errors
    /// When it is not a real date in that form.
    pub fn parse(date: &str) -> Result<Day, ReconcileError> {
        let start = BeijingTime::parse_dashed(&format!("{date} 00:00:00"))
            .map_err(|_| ReconcileError::Invalid(format!("--date {date:?} is not a date YYYY-MM-DD")))?;
        Ok(Day {
            date: date.to_owned(),
            start,
        })
    }

    /// The day before the one that holds `at` (the day a daily run reconciles).
    pub fn before(at: Millis) -> Day {
        Day::containing(at - DAY)
    }

    /// The day that holds `at`.
    pub fn containing(at: Millis) -> Day {
        // Beijing is UTC+8 all year: its midnight is a fixed offset from UTC's.
        let unix = at.unix_secs();
        let start = BeijingTime::from_unix(unix - (unix + 8 * 3600).rem_euclid(86_400));
        Day {
            date: date_of(start),
            start,
        }
    }

    /// The day `n` days after this one (before it when `n` is negative).
    pub fn after(&self, n: i64) -> Day {
        Day::containing(Millis::from_unix_ms(self.start_ms().unix_ms() + n * 86_400_000))
    }

    /// The day counted from 1970-01-01 in Beijing, as the store's daily figures count it.
    pub fn number(&self) -> i64 {
        (self.start.unix() + 8 * 3600).div_euclid(86_400)
    }

    /// The first millisecond of the day.
    pub fn start_ms(&self) -> Millis {
        Millis::from_unix_secs(self.start.unix())
    }

    /// The first millisecond of the next day.
    pub fn end_ms(&self) -> Millis {
        self.start_ms() + DAY
    }
}

/// `YYYY-MM-DD` of a time, in Beijing.
fn date_of(t: BeijingTime) -> String {
    t.to_dashed()[..10].to_owned()
}

fn bill_totals(bill: &Bill) -> Totals {
    let mut t = Totals::default();
    for r in bill {
        match &r.kind {
            BillKind::Refund { amount, .. } => {
                t.refunds += 1;
                t.refunds_fen += amount.as_i64();
            }
            BillKind::Payment { amount } => {
                t.payments += 1;
                t.payments_fen += amount.as_i64();
            }
        }
    }
    t
}

/// The records of the database that the day's bill should list, and those it names that
/// belong to another day.
struct Local {
    orders: HashMap<String, Order>,
    refunds: HashMap<String, Refund>,
    day_orders: HashSet<String>,
    day_refunds: HashSet<String>,
}

async fn load_local(app: &Service, merchant: &str, day: &Day, bill: &Bill) -> Result<Local, ReconcileError> {
    let store = &app.inner.store;
    let paid = store
        .orders_paid_between(merchant.to_owned(), day.start_ms(), day.end_ms())
        .await?;
    let accepted = store
        .refunds_accepted_between(merchant.to_owned(), day.start_ms(), day.end_ms())
        .await?;
    let mut local = Local {
        day_orders: paid.iter().map(|o| o.out_trade_no.to_string()).collect(),
        day_refunds: accepted.iter().map(|r| r.out_refund_no.to_string()).collect(),
        orders: paid.into_iter().map(|o| (o.out_trade_no.to_string(), o)).collect(),
        refunds: accepted.into_iter().map(|r| (r.out_refund_no.to_string(), r)).collect(),
    };
    // A number that breaks the rules was never stored: the comparison finds it missing.
    let mut orders_elsewhere = Vec::new();
    let mut refunds_elsewhere = Vec::new();
    for r in bill {
        match &r.kind {
            BillKind::Refund {
                out_refund_no: Some(no),
                ..
            } if !local.refunds.contains_key(no) => refunds_elsewhere.extend(OutRefundNo::new(no.as_str()).ok()),
            BillKind::Payment { .. } if !local.orders.contains_key(&r.out_trade_no) => {
                orders_elsewhere.extend(OutTradeNo::new(r.out_trade_no.as_str()).ok())
            }
            _ => {}
        }
    }
    if !orders_elsewhere.is_empty() {
        for o in store.orders_by_numbers(merchant.to_owned(), orders_elsewhere).await? {
            local.orders.insert(o.out_trade_no.to_string(), o);
        }
    }
    if !refunds_elsewhere.is_empty() {
        for r in store.refunds_by_numbers(merchant.to_owned(), refunds_elsewhere).await? {
            local.refunds.insert(r.out_refund_no.to_string(), r);
        }
    }
    Ok(local)
}

/// The database's side of the totals: the day's paid orders and accepted refunds, and the
/// records of other days that the bill lists for this one (a refund accepted by WeChat Pay
/// at 23:59:59.9 and answered at 00:00:00.1 is stored under the next day), so that both sides
/// count the same records.
fn local_totals(local: &Local) -> Totals {
    let mut t = Totals::default();
    for o in local.orders.values() {
        if matches!(o.status, OrderStatus::Paid | OrderStatus::Refunded) {
            t.payments += 1;
            t.payments_fen += o.amount_fen.as_i64();
        }
    }
    for r in local.refunds.values() {
        if r.accepted_at.is_some() {
            t.refunds += 1;
            t.refunds_fen += r.amount_fen.as_i64();
        }
    }
    t
}

fn compare(bill: &Bill, local: &Local, progress: &dyn Progress) -> Vec<Difference> {
    let mut out = Vec::new();
    let mut seen_orders: HashSet<&str> = HashSet::with_capacity(local.day_orders.len());
    let mut seen_refunds: HashSet<&str> = HashSet::with_capacity(local.day_refunds.len());
    let step = (bill.len() as u64 / 100).max(1);
    for (i, row) in bill.iter().enumerate() {
        if i as u64 % step == 0 && i > 0 {
            progress.advance(step);
        }
        if let BillKind::Refund {
            out_refund_no,
            amount,
            status: upstream_status,
        } = &row.kind
        {
            let amount = *amount;
            let no = out_refund_no.clone().unwrap_or_default();
            seen_refunds.insert(out_refund_no.as_deref().unwrap_or(""));
            let upstream = Some(format!("{amount} fen, {upstream_status}"));
            let diff = |kind, local: Option<String>| Difference {
                kind,
                record: "refund",
                out_trade_no: row.out_trade_no.clone(),
                out_refund_no: Some(no.clone()),
                upstream: upstream.clone(),
                local,
                bill_time_ms: Some(row.at.unix_ms()),
            };
            let Some(r) = local.refunds.get(&no) else {
                out.push(diff(DifferenceKind::MissingLocally, None));
                continue;
            };
            let mine = Some(format!("{} fen, {}", r.amount_fen, r.status));
            if r.amount_fen != amount {
                out.push(diff(DifferenceKind::AmountDiffers, mine));
                continue;
            }
            if r.accepted_at.is_none() {
                // The bill says WeChat Pay accepted it; the gateway never heard (every answer
                // lost): the totals cannot agree until it knows.
                let mine = Some(format!("{} fen, {}, not known as accepted", r.amount_fen, r.status));
                out.push(diff(DifferenceKind::StatusDiffers, mine));
                continue;
            }
            let contradicts = match upstream_status.as_str() {
                "SUCCESS" => r.status != RefundStatus::Succeeded,
                "REFUNDCLOSE" | "CHANGE" | "FAIL" => r.status == RefundStatus::Succeeded,
                // PROCESSING (or empty): a snapshot that any later state may follow.
                _ => false,
            };
            if contradicts || r.upstream == crate::store::Upstream::Rejected {
                out.push(diff(DifferenceKind::StatusDiffers, mine));
            }
        } else if let BillKind::Payment { amount } = &row.kind {
            let amount = *amount;
            seen_orders.insert(row.out_trade_no.as_str());
            let upstream = Some(format!("{amount} fen, paid, transaction {}", row.transaction_id));
            let diff = |kind, local: Option<String>| Difference {
                kind,
                record: "payment",
                out_trade_no: row.out_trade_no.clone(),
                out_refund_no: None,
                upstream: upstream.clone(),
                local,
                bill_time_ms: Some(row.at.unix_ms()),
            };
            let Some(o) = local.orders.get(&row.out_trade_no) else {
                out.push(diff(DifferenceKind::MissingLocally, None));
                continue;
            };
            let mine = Some(format!(
                "{} fen, {}, transaction {}",
                o.amount_fen,
                o.status,
                o.transaction_id.as_deref().unwrap_or("none")
            ));
            if !matches!(o.status, OrderStatus::Paid | OrderStatus::Refunded)
                || o.transaction_id.as_deref() != Some(row.transaction_id.as_str())
            {
                out.push(diff(DifferenceKind::StatusDiffers, mine));
            } else if o.amount_fen != amount {
                out.push(diff(DifferenceKind::AmountDiffers, mine));
            }
        }
    }
    let mut missing_orders: Vec<&String> = local
        .day_orders
        .iter()
        .filter(|no| !seen_orders.contains(no.as_str()))
        .collect();
    missing_orders.sort();
    for no in missing_orders {
        let o = &local.orders[no];
        out.push(Difference {
            kind: DifferenceKind::MissingUpstream,
            record: "payment",
            out_trade_no: no.clone(),
            out_refund_no: None,
            upstream: None,
            local: Some(format!("{} fen, {}", o.amount_fen, o.status)),
            bill_time_ms: None,
        });
    }
    let mut missing_refunds: Vec<&String> = local
        .day_refunds
        .iter()
        .filter(|no| !seen_refunds.contains(no.as_str()))
        .collect();
    missing_refunds.sort();
    for no in missing_refunds {
        let r = &local.refunds[no];
        out.push(Difference {
            kind: DifferenceKind::MissingUpstream,
            record: "refund",
            out_trade_no: r.out_trade_no.to_string(),
            out_refund_no: Some(no.clone()),
            upstream: None,
            local: Some(format!("{} fen, {}", r.amount_fen, r.status)),
            bill_time_ms: None,
        });
    }
    out
}

/// Downloads the day's bill; a day without transactions is an empty bill.
async fn download(
    provider: &dyn Provider,
    day: &Day,
    progress: &dyn Progress,
) -> Result<Vec<BillEntry>, ReconcileError> {
    let received = |bytes, total| progress.downloaded(bytes, total);
    match provider.download_bill(day.start, &received).await {
        Ok(bill) => Ok(bill),
        Err(ProviderError::BillNotReady) => Err(ReconcileError::NotReady(day.date.clone())),
        Err(e) => Err(ReconcileError::Bill(e.to_string())),
    }
}

/// Reconciles `merchant`'s `day`: downloads the bill, compares, and with `repair` settles
/// each difference through `orderquery`/`refundquery`, then compares again.
///
/// # Errors
/// When the merchant is unknown, the bill cannot be had (not made yet, refused, unreadable),
/// or the database fails.
pub async fn reconcile(
    app: &Service,
    merchant: Option<&str>,
    day: &Day,
    repair: bool,
    progress: &dyn Progress,
) -> Result<Report, ReconcileError> {
    let provider = app
        .merchant(merchant)
        .map_err(|e| ReconcileError::Invalid(e.to_string()))?;
    let name = provider.merchant().name.clone();
    let started = Instant::now();
    progress.stage(&format!("downloading the bill of {} ({name})", day.date), None);
    let mut bill = download(provider, day, progress).await?;
    // The bill is per merchant number; with several mini programs on one number, each
    // configured merchant reconciles its own app's rows.
    let appid = provider.merchant().appid.as_str();
    bill.retain(|r| r.appid.is_empty() || r.appid == appid);
    progress.done();
    let download_ms = started.elapsed().as_millis() as u64;

    let started = Instant::now();
    progress.stage(&format!("comparing {} bill rows", bill.len()), Some(bill.len() as u64));
    let local = load_local(app, &name, day, &bill).await?;
    let found = compare(&bill, &local, progress);
    progress.done();
    let bill_totals = bill_totals(&bill);
    let mut local_totals = local_totals(&local);
    let compare_ms = started.elapsed().as_millis() as u64;

    let started = Instant::now();
    let mut repairs = Vec::new();
    let mut remaining = found.clone();
    let mut moved = Vec::new();
    if repair {
        moved = move_to_bill_day(app, day, &bill, &local).await;
    }
    if repair && (!found.is_empty() || !moved.is_empty()) {
        progress.stage(
            &format!("repairing {} differences", found.len()),
            Some(found.len() as u64),
        );
        for d in &found {
            repairs.push(repair_one(app, provider, day, d, &local).await);
            progress.advance(1);
        }
        progress.done();
        let local = load_local(app, &name, day, &bill).await?;
        remaining = compare(&bill, &local, &Quiet);
        local_totals = self::local_totals(&local);
    }
    let repair_ms = started.elapsed().as_millis() as u64;
    Ok(Report {
        merchant: name,
        date: day.date.clone(),
        balanced: remaining.is_empty() && bill_totals == local_totals,
        bill: bill_totals,
        local: local_totals,
        found,
        repairs,
        remaining,
        moved_to_this_day: moved,
        timings_ms: Timings {
            download: download_ms,
            compare: compare_ms,
            repair: repair_ms,
        },
    })
}

fn unresolved(d: &Difference, checked_with: &'static str, detail: String) -> Repair {
    Repair {
        difference: d.clone(),
        checked_with,
        result: "unresolved",
        detail,
    }
}

fn settled(d: &Difference, checked_with: &'static str, detail: String) -> Repair {
    Repair {
        difference: d.clone(),
        checked_with,
        result: "settled",
        detail,
    }
}

/// The history entry of a refund whose acceptance takes the bill's time.
fn dated_by_bill(day: &Day, out_refund_no: &str, from: Option<Millis>, to: Millis) -> serde_json::Value {
    serde_json::json!({
        "bill_date": day.date,
        "out_refund_no": out_refund_no,
        "accepted_at": {"from": from, "to": to},
        "note": "WeChat Pay's bill dates the refund's acceptance to this day",
    })
}

/// With repair: a refund this day's bill lists but the database dates to another day
/// (WeChat Pay accepted it just before midnight and the gateway heard after it, or the answer
/// was lost and the notification came later) takes the bill's time, so that no day reports
/// it missing.
async fn move_to_bill_day(app: &Service, day: &Day, bill: &Bill, local: &Local) -> Vec<String> {
    let mut moved = Vec::new();
    for row in bill {
        let BillKind::Refund {
            out_refund_no: Some(no),
            ..
        } = &row.kind
        else {
            continue;
        };
        let Some(r) = local.refunds.get(no) else { continue };
        let Some(at) = r.accepted_at else { continue };
        let bill_at = row.at;
        // The bill is WeChat Pay's record of when it accepted the refund; the gateway's is when
        // it heard (the answer, or days later a notification when the answer was lost).
        if local.day_refunds.contains(no) {
            continue;
        }
        match app
            .inner
            .store
            .move_refund_accepted_at(r.id, bill_at, dated_by_bill(day, no, Some(at), bill_at), app.now())
            .await
        {
            Ok(()) => moved.push(no.clone()),
            Err(e) => tracing::error!(error = ?e, out_refund_no = ?no, "cannot move a refund's acceptance time"),
        }
    }
    moved
}

/// Settles one difference by asking WeChat Pay, and records what changed in the order's
/// history.
async fn repair_one(app: &Service, provider: &dyn Provider, day: &Day, d: &Difference, local: &Local) -> Repair {
    match d.record {
        "payment" => repair_payment(app, provider, day, d, local.orders.get(&d.out_trade_no)).await,
        _ => {
            let no = d.out_refund_no.clone().unwrap_or_default();
            repair_refund(app, provider, day, d, local.refunds.get(&no)).await
        }
    }
}

async fn note(app: &Service, order_id: i64, day: &Day, d: &Difference, action: &str) {
    let detail = serde_json::json!({
        "bill_date": day.date,
        "difference": d.kind,
        "record": d.record,
        "out_refund_no": d.out_refund_no,
        "bill": d.upstream,
        "was": d.local,
        "action": action,
    });
    if let Err(e) = app
        .inner
        .store
        .add_event(order_id, "reconciled".into(), detail, app.now())
        .await
    {
        tracing::error!(error = ?e, "cannot record a reconciliation in an order's history");
    }
}

async fn repair_payment(
    app: &Service,
    provider: &dyn Provider,
    day: &Day,
    d: &Difference,
    order: Option<&Order>,
) -> Repair {
    const Q: &str = "orderquery";
    let Ok(no) = OutTradeNo::new(d.out_trade_no.clone()) else {
        return unresolved(d, Q, "the bill's order number is not a valid out_trade_no".into());
    };
    let answer = match provider.query_payment(&no).await {
        Ok(a) => a,
        Err(e) => return unresolved(d, Q, format!("orderquery failed: {e}")),
    };
    let (paid, transaction_id, total, paid_at) = match &answer {
        PaymentState::Paid {
            transaction_id,
            amount,
            paid_at,
            ..
        } => (true, Some(transaction_id.clone()), Some(*amount), *paid_at),
        _ => (false, None, None, None),
    };
    let Some(order) = order else {
        return unresolved(
            d,
            Q,
            format!(
                "WeChat Pay reports it {} but the database has no such order (created outside wxpay, or lost): fulfil or refund it by hand",
                answer.as_str()
            ),
        );
    };
    match d.kind {
        DifferenceKind::StatusDiffers if paid => match app.apply_state(order.clone(), &answer).await {
            // Settled only when the order now carries WeChat Pay's payment.
            Ok(o)
                if matches!(o.status, OrderStatus::Paid | OrderStatus::Refunded)
                    && o.transaction_id.is_some()
                    && o.transaction_id == transaction_id =>
            {
                note(app, o.id, day, d, "paid per orderquery").await;
                settled(
                    d,
                    Q,
                    format!("WeChat Pay reports {}: the order is now {}", answer.as_str(), o.status),
                )
            }
            Ok(o) => unresolved(
                d,
                Q,
                format!(
                    "WeChat Pay reports {} with transaction {:?}, which does not fit the order (still {})",
                    answer.as_str(),
                    transaction_id,
                    o.status
                ),
            ),
            Err(e) => unresolved(d, Q, format!("applying the answer failed: {e}")),
        },
        DifferenceKind::AmountDiffers if paid => {
            let Some(total) = total else {
                return unresolved(d, Q, "orderquery gave no total_fee".into());
            };
            if total == order.amount_fen {
                return unresolved(
                    d,
                    Q,
                    format!(
                        "orderquery confirms the database's {total} fen; the bill disagrees with WeChat Pay's own answer"
                    ),
                );
            }
            let detail = serde_json::json!({
                "bill_date": day.date,
                "difference": d.kind,
                "field": "amount_fen",
                "from": order.amount_fen,
                "to": total,
                "source": Q,
            });
            match app.inner.store.correct_amount(order.id, total, detail, app.now()).await {
                Ok(Some(_)) => settled(
                    d,
                    Q,
                    format!(
                        "WeChat Pay charged {total} fen: the order's amount was corrected from {} fen",
                        order.amount_fen
                    ),
                ),
                Ok(None) => unresolved(
                    d,
                    Q,
                    format!("WeChat Pay charged {total} fen, less than the order's refunds: settle it by hand"),
                ),
                Err(e) => unresolved(d, Q, format!("correcting the amount failed: {e}")),
            }
        }
        DifferenceKind::MissingUpstream if paid => {
            let paid_day = paid_at.map(|t| Day::containing(t).date);
            unresolved(
                d,
                Q,
                format!(
                    "WeChat Pay reports it paid on {}, not in this day's bill; check the bill of that day",
                    paid_day.as_deref().unwrap_or("an unknown day")
                ),
            )
        }
        _ => {
            // Paid here, not paid per WeChat Pay: never downgraded; money may be at stake.
            tracing::error!(out_trade_no = ?d.out_trade_no, trade_state = answer.as_str(), local = %order.status, "reconciliation: WeChat Pay contradicts a paid order");
            unresolved(
                d,
                Q,
                format!(
                    "WeChat Pay reports {} while the database says {}: a paid order is never downgraded; check it by hand",
                    answer.as_str(),
                    order.status
                ),
            )
        }
    }
}

async fn repair_refund(
    app: &Service,
    provider: &dyn Provider,
    day: &Day,
    d: &Difference,
    refund: Option<&Refund>,
) -> Repair {
    const Q: &str = "refundquery";
    let no = d.out_refund_no.clone().unwrap_or_default();
    let Ok(number) = OutRefundNo::new(no.clone()) else {
        return unresolved(d, Q, "the bill's refund number is not a valid out_refund_no".into());
    };
    if let Some(r) = refund {
        if d.kind == DifferenceKind::StatusDiffers || d.kind == DifferenceKind::MissingUpstream {
            let unheard = r.accepted_at.is_none();
            return match app.sync_refund(provider, r.clone()).await {
                // Accepted, as the bill says, and now known: its acceptance is dated as the
                // bill dates it, so that this day (and not the day of the repair) counts it.
                Ok((after, Synced::Settled | Synced::Processing)) if unheard && after.accepted_at.is_some() => {
                    let at = d.bill_time_ms.map_or(day.start_ms(), Millis::from_unix_ms);
                    let detail = dated_by_bill(day, &no, after.accepted_at, at);
                    if let Err(e) = app
                        .inner
                        .store
                        .move_refund_accepted_at(after.id, at, detail, app.now())
                        .await
                    {
                        return unresolved(d, Q, format!("the acceptance could not be dated: {e}"));
                    }
                    note(app, r.order_id, day, d, "accepted per refundquery").await;
                    settled(
                        d,
                        Q,
                        format!("refundquery: WeChat Pay accepted it; the refund is {}", after.status),
                    )
                }
                Ok((after, Synced::Settled)) if after.status != r.status => {
                    note(app, r.order_id, day, d, "settled per refundquery").await;
                    settled(d, Q, format!("refundquery: the refund is now {}", after.status))
                }
                Ok((after, Synced::Settled | Synced::Processing)) => unresolved(
                    d,
                    Q,
                    format!(
                        "refundquery agrees with the database ({}); the bill's snapshot is older",
                        after.status
                    ),
                ),
                Ok((_, Synced::NotFound)) => unresolved(d, Q, "WeChat Pay does not know this refund".into()),
                Ok((_, Synced::Contradicts(why))) => unresolved(d, Q, format!("{why}: check it by hand")),
                Err(e) => unresolved(d, Q, format!("refundquery failed: {e}")),
            };
        }
        return unresolved(
            d,
            Q,
            "a refund's amount is fixed when it is asked for: check it in the merchant platform".into(),
        );
    }
    // In the bill only: a refund made outside wxpay (the merchant platform), or lost here.
    let answer = match provider.query_refund(&number).await {
        Ok(a) => a,
        Err(e) if e.refusal() == Some(Refusal::RefundNotExist) => {
            return unresolved(d, Q, "refundquery: WeChat Pay does not know this refund".into());
        }
        Err(e) => return unresolved(d, Q, format!("refundquery failed: {e}")),
    };
    let Some(record) = answer.refunds.iter().find(|r| r.out_refund_no == number) else {
        return unresolved(d, Q, "refundquery does not list this refund".into());
    };
    let status = match record.state.settles() {
        Some(true) => RefundStatus::Succeeded,
        Some(false) => RefundStatus::Failed,
        None => RefundStatus::Pending,
    };
    let accepted_at = d.bill_time_ms.map_or(day.start_ms(), Millis::from_unix_ms);
    let imported = ImportedRefund {
        merchant: provider.merchant().name.clone(),
        out_trade_no: answer.out_trade_no.clone(),
        out_refund_no: number.clone(),
        refund_id: record.refund_id.clone(),
        amount_fen: record.amount,
        status,
        accepted_at,
        detail: serde_json::json!({
            "bill_date": day.date,
            "difference": d.kind,
            "out_refund_no": no,
            "refund_id": record.refund_id,
            "amount_fen": record.amount.get(),
            "status": record.state.as_str(),
            "source": Q,
            "note": "a refund WeChat Pay made that wxpay did not ask for",
        }),
        now: app.now(),
    };
    match app.inner.store.import_refund(imported).await {
        Ok(RefundCreated::New(r)) => settled(
            d,
            Q,
            format!(
                "refundquery confirms it ({}): recorded as a {} refund of {} fen",
                record.state.as_str(),
                r.status,
                r.amount_fen
            ),
        ),
        Ok(RefundCreated::NoOrder) => unresolved(d, Q, format!("the database has no order {}", answer.out_trade_no)),
        Ok(RefundCreated::NotPaid(s)) => {
            unresolved(d, Q, format!("order {} is {s} in the database", answer.out_trade_no))
        }
        Ok(RefundCreated::Exceeds { available }) => unresolved(
            d,
            Q,
            format!("recording it would exceed the order's amount ({available} fen left): check the order by hand"),
        ),
        Ok(RefundCreated::Existing(_)) => settled(d, Q, "recorded meanwhile".into()),
        Err(e) => unresolved(d, Q, format!("recording it failed: {e}")),
    }
}

/// Keeps a report in the database (for the console) and in the metrics, and logs it.
///
/// # Errors
/// When the database fails.
pub async fn keep(app: &Service, report: &Report, kind: &str, started_at: Millis) -> Result<(), ReconcileError> {
    let now = app.now();
    let repaired = report.repairs.iter().filter(|r| r.result == "settled").count();
    app.inner.metrics.reconciliation(
        &report.merchant,
        if report.balanced { "balanced" } else { "unbalanced" },
        report.remaining.len(),
        repaired,
        now.unix_secs(),
    );
    if report.balanced {
        tracing::info!(merchant = ?report.merchant, date = ?report.date, payments = report.bill.payments, refunds = report.bill.refunds, repaired, "reconciliation: the books balance");
    } else {
        tracing::warn!(merchant = ?report.merchant, date = ?report.date, differences = report.remaining.len(), repaired, "reconciliation: the books do not balance");
    }
    let record = crate::store::ReconciliationRecord {
        merchant: report.merchant.clone(),
        bill_date: report.date.clone(),
        kind: kind.to_owned(),
        started_at,
        finished_at: now,
        balanced: report.balanced,
        differences: report.remaining.len() as i64,
        repaired: repaired as i64,
        report: serde_json::to_string(report).unwrap_or_default(),
    };
    app.inner.store.record_reconciliation(record).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_count_and_step_in_beijing_time() {
        // 16:00 UTC on 2026-12-04 starts the 5th in Beijing.
        let fifth = Day::containing(Millis::from_unix_ms(1_796_400_000_000));
        assert_eq!(fifth.date, "2026-12-05");
        assert_eq!(fifth.number(), (1_796_400_000 + 8 * 3600) / 86_400);
        assert_eq!(fifth.after(-29).date, "2026-11-06");
        assert_eq!(fifth.after(-29).number(), fifth.number() - 29);
        assert_eq!(fifth.after(1).start_ms(), fifth.end_ms());
    }
}
