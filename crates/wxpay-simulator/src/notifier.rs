//! Timed work: automatic payments, refund completion, and notification delivery on WeChat
//! Pay's retry schedule.
//!
//! One dispatcher task keeps a queue ordered by due time (so a million pending retries cost
//! a few dozen bytes each, not a task each) and hands due deliveries to at most
//! `notify_concurrency` tasks at once. Only a well-formed `<xml>` answer with
//! `return_code=SUCCESS` counts as delivered; anything else is retried after
//! 15s/15s/30s/3m/10m/20m/30m/30m/30m/60m/3h/3h/3h/6h/6h, divided by the time scale.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::Instant;
use wxpay_protocol::v2::{ErrCode, PaymentNotification, PaymentOutcome, RefundNotification, RefundStatus, TradeType};
use wxpay_protocol::{ApiKey, BeijingTime, Fen};

use crate::faults::FaultKind;
use crate::http_client::NotifyClient;
use crate::store::{Loc, OrderState};
use crate::{SimConfig, Simulator, StartError, ids};

/// WeChat Pay's intervals between notification attempts (protocol.md A.5).
pub(crate) const RETRY_SCHEDULE: [u64; 15] = [
    15, 15, 30, 180, 600, 1200, 1800, 1800, 1800, 3600, 10_800, 10_800, 10_800, 21_600, 21_600,
];

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum What {
    AutoPay,
    RefundComplete(usize),
    Payment,
    RefundNotify(usize),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Job {
    due: Instant,
    seq: u64,
    loc_shard: usize,
    loc_slot: u32,
    what: What,
    attempt: u32,
}

impl Job {
    fn loc(&self) -> Loc {
        Loc {
            shard: self.loc_shard,
            slot: self.loc_slot,
        }
    }
}

fn as_str<S: serde::Serializer>(s: &Arc<str>, ser: S) -> Result<S::Ok, S::Error> {
    ser.serialize_str(s)
}

/// One notification attempt, as `GET /simulator/notifications` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct Attempt {
    /// Its number, in the order attempts were made.
    pub id: u64,
    /// `payment` or `refund`.
    pub kind: &'static str,
    /// The order.
    pub out_trade_no: String,
    /// The refund, for refund notifications.
    pub out_refund_no: Option<String>,
    /// Where it was posted.
    #[serde(serialize_with = "as_str")]
    pub url: Arc<str>,
    /// 1 for the first delivery, 2 for the first retry, …
    pub attempt: u32,
    /// When, in Unix milliseconds.
    pub at_ms: u64,
    /// The body posted.
    #[serde(serialize_with = "as_str")]
    pub body: Arc<str>,
    /// The HTTP status of the answer, if one came.
    pub status: Option<u16>,
    /// The answer (at most 2 KiB of it).
    pub answer: Option<String>,
    /// Whether the answer acknowledged the notification.
    pub acknowledged: bool,
    /// Why there was no answer.
    pub error: Option<String>,
    /// The fault applied to this attempt, if any.
    pub fault: Option<&'static str>,
}

pub(crate) struct Notifier {
    tx: mpsc::UnboundedSender<Job>,
    rx: Mutex<Option<mpsc::UnboundedReceiver<Job>>>,
    pending: Arc<AtomicUsize>,
    seq: AtomicU64,
    log: Mutex<VecDeque<Attempt>>,
    log_seq: AtomicU64,
    log_cap: usize,
    client: NotifyClient,
    concurrency: usize,
}

impl Notifier {
    pub(crate) fn new(config: &SimConfig) -> Result<Notifier, StartError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let client = NotifyClient::new(config.notify_timeout, config.notify_concurrency)
            .map_err(|e| StartError::Io(std::io::Error::other(e)))?;
        Ok(Notifier {
            tx,
            rx: Mutex::new(Some(rx)),
            pending: Arc::new(AtomicUsize::new(0)),
            seq: AtomicU64::new(0),
            log: Mutex::new(VecDeque::new()),
            log_seq: AtomicU64::new(0),
            log_cap: config.notification_log.max(1),
            client,
            concurrency: config.notify_concurrency.max(1),
        })
    }

    /// Notifications and timed work waiting.
    pub(crate) fn pending(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
    }

    fn push(&self, loc: Loc, what: What, attempt: u32, after: Duration) {
        self.pending.fetch_add(1, Ordering::Relaxed);
        let job = Job {
            due: Instant::now() + after,
            seq: self.seq.fetch_add(1, Ordering::Relaxed),
            loc_shard: loc.shard,
            loc_slot: loc.slot,
            what,
            attempt,
        };
        if self.tx.send(job).is_err() {
            self.pending.fetch_sub(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn schedule_auto_pay(&self, loc: Loc) {
        // The delay is applied by the caller's configuration at dispatch time: see `start`.
        self.push(loc, What::AutoPay, 0, Duration::ZERO);
    }

    pub(crate) fn schedule_refund_completion(&self, loc: Loc, idx: usize) {
        self.push(loc, What::RefundComplete(idx), 0, Duration::ZERO);
    }

    pub(crate) fn payment(&self, loc: Loc) {
        self.push(loc, What::Payment, 0, Duration::ZERO);
    }

    pub(crate) fn refund(&self, loc: Loc, idx: usize) {
        self.push(loc, What::RefundNotify(idx), 0, Duration::ZERO);
    }

    fn record(&self, mut a: Attempt) {
        a.id = self.log_seq.fetch_add(1, Ordering::Relaxed) + 1;
        let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        if log.len() >= self.log_cap {
            log.pop_front();
        }
        log.push_back(a);
    }

    /// The attempts kept, oldest first, optionally only those about one order.
    pub(crate) fn attempts(&self, out_trade_no: Option<&str>, limit: usize) -> Vec<Attempt> {
        let log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        let matching: Vec<&Attempt> = log
            .iter()
            .filter(|a| out_trade_no.is_none_or(|o| a.out_trade_no == o))
            .collect();
        let skip = matching.len().saturating_sub(limit);
        matching.into_iter().skip(skip).cloned().collect()
    }
}

/// Starts the dispatcher; it stops when `stop` turns true.
pub(crate) fn start(sim: Simulator, mut stop: watch::Receiver<bool>) {
    let Some(mut rx) = sim.inner.notifier.rx.lock().unwrap_or_else(|e| e.into_inner()).take() else {
        return;
    };
    tokio::spawn(async move {
        let config = &sim.inner.config;
        let auto_delay = config.scaled(config.auto_pay_delay);
        let refund_delay = config.scaled(config.refund_delay);
        let semaphore = Arc::new(Semaphore::new(sim.inner.notifier.concurrency));
        let mut heap: BinaryHeap<Reverse<Job>> = BinaryHeap::new();
        let mut held: Vec<Job> = Vec::new();
        let mut held_since = Instant::now();
        loop {
            let next_due = heap.peek().map(|Reverse(j)| j.due);
            tokio::select! {
                changed = stop.changed() => {
                    if changed.is_err() || *stop.borrow() {
                        break;
                    }
                }
                received = rx.recv() => {
                    let Some(mut job) = received else { break };
                    // Timed work gets its delay here, where the configuration is known.
                    match job.what {
                        What::AutoPay => job.due += auto_delay,
                        What::RefundComplete(_) => job.due += refund_delay,
                        _ => {}
                    }
                    heap.push(Reverse(job));
                }
                () = sleep_until_opt(next_due) => {
                    let now = Instant::now();
                    let mut batch = 0;
                    while heap.peek().is_some_and(|Reverse(j)| j.due <= now) {
                        // Requests share these threads: hand them back now and then, so that a
                        // burst of due work does not stretch the latency of calls.
                        batch += 1;
                        if batch % 32 == 0 {
                            tokio::task::yield_now().await;
                        }
                        let Some(Reverse(job)) = heap.pop() else { break };
                        if is_notification(job.what) && hold_for_reorder(&sim, &job) {
                            if held.is_empty() {
                                held_since = now;
                            }
                            held.push(job);
                            continue;
                        }
                        run(&sim, job, &semaphore).await;
                    }
                }
            }
            // Release held notifications in reverse once the reorder rule is used up, or
            // after a while, so that none is held for ever.
            if !held.is_empty()
                && (!sim.inner.faults.has_kind(FaultKind::NotifyReorder)
                    || held_since.elapsed() > Duration::from_secs(10))
            {
                for job in held.drain(..).rev() {
                    run(&sim, job, &semaphore).await;
                }
            }
        }
        tracing::debug!("simulator dispatcher stopped");
    });
}

async fn sleep_until_opt(due: Option<Instant>) {
    match due {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

fn is_notification(what: What) -> bool {
    matches!(what, What::Payment | What::RefundNotify(_))
}

fn out_trade_no_of(sim: &Simulator, loc: Loc) -> Option<String> {
    let mut g = sim.inner.store.lock(loc.shard);
    g.get(loc.slot).map(|o| o.out_trade_no.to_string())
}

fn hold_for_reorder(sim: &Simulator, job: &Job) -> bool {
    if !sim.inner.faults.has_kind(FaultKind::NotifyReorder) {
        return false;
    }
    let Some(no) = out_trade_no_of(sim, job.loc()) else {
        return false;
    };
    match sim
        .inner
        .faults
        .take_notification(&no, |k| k == FaultKind::NotifyReorder)
    {
        Some(hit) => {
            sim.inner.metrics.fault(hit.kind);
            true
        }
        None => false,
    }
}

async fn run(sim: &Simulator, job: Job, semaphore: &Arc<Semaphore>) {
    let notifier = &sim.inner.notifier;
    match job.what {
        What::AutoPay => match crate::control::pay(sim, job.loc(), true, None, None) {
            // The first delivery starts right here; the job's pending count carries over to it.
            Ok(()) => {
                let first = Job {
                    what: What::Payment,
                    attempt: 0,
                    ..job
                };
                Box::pin(run(sim, first, semaphore)).await;
            }
            Err(e) => {
                notifier.pending.fetch_sub(1, Ordering::Relaxed);
                tracing::debug!(error = ?e, "automatic payment skipped");
            }
        },
        What::RefundComplete(idx) => {
            notifier.pending.fetch_sub(1, Ordering::Relaxed);
            crate::control::complete_refund(sim, job.loc(), idx, RefundStatus::Success);
        }
        What::Payment | What::RefundNotify(_) => {
            // Waits for a free delivery slot: back pressure instead of unbounded tasks.
            let Ok(permit) = semaphore.clone().acquire_owned().await else {
                return;
            };
            let sim = sim.clone();
            tokio::spawn(async move {
                deliver(&sim, job).await;
                drop(permit);
            });
        }
    }
}

/// A notification ready to post.
struct Outgoing {
    url: Arc<str>,
    body: Arc<str>,
    out_trade_no: String,
    out_refund_no: Option<String>,
    fault: Option<&'static str>,
    copies: u32,
    /// An APIv3 notification: JSON with signed headers, acknowledged by HTTP 200 or 204.
    v3: bool,
    headers: Vec<(&'static str, String)>,
}

/// A notification read from its order, signed after the shard lock is released.
enum Unsigned {
    Payment(PaymentNotification, wxpay_protocol::SignType),
    Refund(RefundNotification),
    V3(crate::v3::notify::Resource),
}

fn build(sim: &Simulator, job: &Job) -> Option<Outgoing> {
    let loc = job.loc();
    let mut g = sim.inner.store.lock(loc.shard);
    let o = g.get(loc.slot)?;
    let merchant = &sim.inner.merchants[usize::from(o.mch)];
    let hit = sim
        .inner
        .faults
        .take_notification(&o.out_trade_no, |k| k != FaultKind::NotifyReorder);
    if let Some(h) = &hit {
        sim.inner.metrics.fault(h.kind);
    }
    let kind = hit.as_ref().map(|h| h.kind);
    let mch_id = merchant.mch_id.as_str();
    let (url, unsigned, out_refund_no) = match job.what {
        What::Payment if o.v3 => {
            let resource = crate::v3::notify::payment(o, mch_id, kind == Some(FaultKind::NotifyWrongAmount))?;
            (o.notify_url.clone(), Unsigned::V3(resource), None)
        }
        What::RefundNotify(idx) if o.refunds.get(idx).is_some_and(|r| r.v3) => {
            let r = o.refunds.get(idx)?;
            let url = r.notify_url.clone()?;
            let resource = crate::v3::notify::refund(o, r, mch_id)?;
            (url, Unsigned::V3(resource), Some(r.out_refund_no.to_string()))
        }
        What::Payment => {
            let outcome = match (o.state, kind) {
                (OrderState::Success, Some(FaultKind::NotifyResultFail)) => PaymentOutcome::Failed {
                    code: ErrCode::SystemError,
                    description: "支付失败".into(),
                },
                (OrderState::Success, _) => PaymentOutcome::Paid {
                    transaction_id: o.transaction_id.as_deref().unwrap_or_default().to_owned(),
                    total_fee: if kind == Some(FaultKind::NotifyWrongAmount) {
                        o.total_fee.checked_add(Fen::new(1).ok()?).unwrap_or(o.total_fee)
                    } else {
                        o.total_fee
                    },
                    time_end: BeijingTime::from_unix(o.paid_at.unwrap_or_default()),
                },
                (OrderState::PayError, _) => {
                    let (code, des) = o
                        .pay_error
                        .clone()
                        .unwrap_or_else(|| ("NOTENOUGH".into(), "余额不足".into()));
                    PaymentOutcome::Failed {
                        code: ErrCode::parse(&code),
                        description: des.to_string(),
                    }
                }
                _ => return None,
            };
            let paid = matches!(outcome, PaymentOutcome::Paid { .. });
            let n = PaymentNotification {
                appid: o.appid.to_string(),
                mch_id: merchant.mch_id.as_str().to_owned(),
                out_trade_no: o.out_trade_no.to_string(),
                outcome,
                openid: Some(o.openid.to_string()),
                cash_fee: paid.then_some(o.total_fee),
                settlement_total_fee: None,
                coupon_fee: None,
                coupons: Vec::new(),
                fee_type: Some("CNY".into()),
                cash_fee_type: None,
                bank_type: Some("OTHERS".into()),
                trade_type: Some(TradeType::parse(&o.trade_type)),
                is_subscribe: Some("N".into()),
                attach: o.attach.as_deref().map(str::to_owned),
                device_info: o.device_info.as_deref().map(str::to_owned),
                extra: Default::default(),
            };
            (o.notify_url.clone(), Unsigned::Payment(n, o.sign_type), None)
        }
        What::RefundNotify(idx) => {
            let r = o.refunds.get(idx)?;
            let url = r.notify_url.clone()?;
            let n = RefundNotification {
                appid: o.appid.to_string(),
                mch_id: merchant.mch_id.as_str().to_owned(),
                transaction_id: o.transaction_id.as_deref().unwrap_or_default().to_owned(),
                out_trade_no: o.out_trade_no.to_string(),
                refund_id: r.refund_id.to_string(),
                out_refund_no: r.out_refund_no.to_string(),
                total_fee: o.total_fee,
                settlement_total_fee: Some(o.total_fee),
                refund_fee: r.refund_fee,
                settlement_refund_fee: Some(r.refund_fee),
                refund_status: r.status.clone(),
                success_time: r
                    .settled_at
                    .filter(|_| r.status == RefundStatus::Success)
                    .map(BeijingTime::from_unix),
                refund_recv_accout: Some("支付用户的零钱".into()),
                refund_account: Some("REFUND_SOURCE_UNSETTLED_FUNDS".into()),
                refund_request_source: Some("API".into()),
                extra: Default::default(),
            };
            (url, Unsigned::Refund(n), Some(r.out_refund_no.to_string()))
        }
        _ => return None,
    };
    let out_trade_no = o.out_trade_no.to_string();
    let mch = o.mch;
    // Signing (and encrypting a refund's req_info) happens outside the lock: every call on
    // this shard waits while it is held.
    drop(g);
    let now = sim.now();
    let mut headers = Vec::new();
    let v3 = matches!(unsigned, Unsigned::V3(_));
    let body = match unsigned {
        Unsigned::V3(resource) => {
            let sealed = crate::v3::notify::seal(sim.inner.v3.as_ref()?, mch, &resource, now, kind)?;
            headers = sealed.headers;
            sealed.body
        }
        unsigned => {
            // A wrong signature comes from a key that is not the merchant's.
            let wrong_key;
            let key: &ApiKey = if kind == Some(FaultKind::NotifyBadSignature) {
                wrong_key = ApiKey::new("0000000000000000000000000000000A").ok()?;
                &wrong_key
            } else {
                merchant.key.as_ref()?
            };
            let nonce = ids::nonce();
            match unsigned {
                Unsigned::Payment(n, sign_type) => n.encode(key, sign_type, &nonce).ok()?,
                Unsigned::Refund(n) => n.encode(key, &nonce).ok()?,
                Unsigned::V3(_) => return None,
            }
        }
    };
    Some(Outgoing {
        v3,
        headers,
        url,
        body: Arc::from(body),
        out_trade_no,
        out_refund_no,
        fault: kind.map(FaultKind::name),
        copies: if kind == Some(FaultKind::NotifyDuplicate) {
            hit.map_or(1, |h| h.copies)
        } else {
            1
        },
    })
}

/// Whether an answer acknowledges a notification: HTTP 200 and a well-formed `<xml>` with
/// `return_code=SUCCESS`, exactly as WeChat Pay requires.
pub(crate) fn acknowledges(status: u16, body: &[u8]) -> bool {
    status == 200 && wxpay_protocol::xml::read(body).is_ok_and(|f| f.get("return_code") == Some("SUCCESS"))
}

async fn post_once(sim: &Simulator, out: &Outgoing, refund: bool, attempt: u32) -> bool {
    let notifier = &sim.inner.notifier;
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let content_type = if out.v3 {
        "application/json"
    } else {
        "text/xml; charset=utf-8"
    };
    let result = notifier
        .client
        .post(
            &out.url,
            content_type,
            &out.headers,
            bytes::Bytes::copy_from_slice(out.body.as_bytes()),
        )
        .await;
    let (status, answer, error) = match result {
        Ok(a) => (Some(a.status), Some(a.body), None),
        Err(e) => (None, None, Some(e)),
    };
    let acknowledged = match (status, &answer) {
        (Some(s), _) if out.v3 => crate::v3::notify::acknowledges(s),
        (Some(s), Some(b)) => acknowledges(s, b),
        _ => false,
    };
    let outcome = if acknowledged {
        0
    } else if status.is_some() {
        1
    } else {
        2
    };
    sim.inner.metrics.notification(refund, outcome);
    notifier.record(Attempt {
        id: 0,
        kind: if refund { "refund" } else { "payment" },
        out_trade_no: out.out_trade_no.clone(),
        out_refund_no: out.out_refund_no.clone(),
        url: out.url.clone(),
        attempt: attempt + 1,
        at_ms: started,
        body: out.body.clone(),
        status,
        answer: answer.map(|b| String::from_utf8_lossy(&b[..b.len().min(2048)]).into_owned()),
        acknowledged,
        error,
        fault: out.fault,
    });
    acknowledged
}

async fn deliver(sim: &Simulator, job: Job) {
    let notifier = &sim.inner.notifier;
    let refund = matches!(job.what, What::RefundNotify(_));
    let Some(out) = build(sim, &job) else {
        notifier.pending.fetch_sub(1, Ordering::Relaxed);
        return;
    };
    // Duplicates go out at the same moment, as WeChat Pay's servers sometimes do.
    let sends = (0..out.copies).map(|_| post_once(sim, &out, refund, job.attempt));
    let acked = futures_util::future::join_all(sends).await.into_iter().any(|a| a);
    notifier.pending.fetch_sub(1, Ordering::Relaxed);
    if acked {
        crate::control::mark_notified(sim, job.loc(), job.what);
        return;
    }
    match RETRY_SCHEDULE.get(job.attempt as usize) {
        Some(secs) => {
            let after = sim.inner.config.scaled(Duration::from_secs(*secs));
            notifier.push(job.loc(), job.what, job.attempt + 1, after);
        }
        None => tracing::info!(out_trade_no = ?out.out_trade_no, "notification given up after the last retry"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_well_formed_success_reply_acknowledges() {
        assert!(acknowledges(200, wxpay_protocol::v2::NOTIFY_SUCCESS_REPLY.as_bytes()));
        assert!(acknowledges(200, b"<xml><return_code>SUCCESS</return_code></xml>"));
        assert!(!acknowledges(500, wxpay_protocol::v2::NOTIFY_SUCCESS_REPLY.as_bytes()));
        assert!(!acknowledges(200, b"SUCCESS"));
        assert!(!acknowledges(200, b"<xml><return_code>FAIL</return_code></xml>"));
        assert!(!acknowledges(200, b""));
        assert_eq!(RETRY_SCHEDULE.iter().sum::<u64>(), 24 * 3600 + 4 * 60);
    }
}
