//! The business rules of orders and refunds that APIv2 and APIv3 share: WeChat Pay keeps one
//! order book per merchant, whichever API version a call comes through, so a re-entry, a
//! refund and their refusals are decided once here and only worded per version.

use std::sync::Arc;
use std::time::Duration;

use wxpay_protocol::Fen;
use wxpay_protocol::v2::RefundStatus;

use crate::store::{Loc, Order, OrderState, RefundRec};
use crate::v2::expire_if_due;
use crate::{Simulator, ids};

/// Why an order number cannot take this order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reentry {
    /// The order is paid.
    Paid,
    /// The order is closed.
    Closed,
    /// The number belongs to a failed order, or to another mini program.
    Used,
    /// The same number with other parameters.
    Different,
    /// A new order whose `time_expire` is too near (APIv2 refuses it; an order that exists
    /// is answered with its state instead, however near its `time_expire` is by now).
    ExpiresTooSoon,
}

/// What a new order is, as asked for: the business fields of [`Order`]; its lifecycle
/// (unpaid, no prepay yet, no refund) is set by [`place_order`].
pub(crate) struct NewOrder {
    pub mch: u16,
    pub appid: Box<str>,
    pub out_trade_no: Box<str>,
    pub body: Box<str>,
    pub attach: Option<Box<str>>,
    pub device_info: Option<Box<str>>,
    pub total_fee: Fen,
    pub notify_url: Arc<str>,
    pub openid: Box<str>,
    pub trade_type: Box<str>,
    pub fingerprint: [u8; 16],
    pub sign_type: wxpay_protocol::SignType,
    pub time_expire: Option<i64>,
    pub v3: bool,
}

impl NewOrder {
    fn into_order(self, now: i64) -> Order {
        Order {
            mch: self.mch,
            appid: self.appid,
            out_trade_no: self.out_trade_no,
            body: self.body,
            attach: self.attach,
            device_info: self.device_info,
            total_fee: self.total_fee,
            notify_url: self.notify_url,
            openid: self.openid,
            trade_type: self.trade_type,
            fingerprint: self.fingerprint,
            sign_type: self.sign_type,
            time_expire: self.time_expire,
            created_at: now,
            state: OrderState::NotPay,
            prepay_id: "".into(),
            prepay_at: now,
            transaction_id: None,
            paid_at: None,
            pay_error: None,
            refunds: Vec::new(),
            notified: false,
            v3: self.v3,
        }
    }
}

/// What [`place_order`] did.
pub(crate) struct Placed {
    pub loc: Loc,
    pub prepay_id: String,
    pub created: bool,
}

/// Stores `order` under its number, or, when the number is taken by an unpaid order with the
/// same parameters, hands out a fresh `prepay_id` for it (how merchants refresh one: valid
/// two hours). A new order whose `time_expire` is before `earliest_expire` is refused. A new
/// order is paid on its own in [`crate::Mode::Auto`].
pub(crate) fn place_order(
    sim: &Simulator,
    order: NewOrder,
    now: i64,
    earliest_expire: Option<i64>,
) -> Result<Placed, Reentry> {
    let store = &sim.inner.store;
    let shard = store.shard_of(order.mch, &order.out_trade_no);
    let mut g = store.lock(shard);
    let placed = match g.find(order.mch, &order.out_trade_no) {
        Some(slot) => {
            expire_if_due(&mut g, slot, now);
            let Some(o) = g.get(slot) else {
                return Err(Reentry::Used);
            };
            match o.state {
                OrderState::Success => return Err(Reentry::Paid),
                OrderState::Closed => return Err(Reentry::Closed),
                OrderState::PayError => return Err(Reentry::Used),
                OrderState::NotPay => {}
            }
            if o.appid != order.appid {
                return Err(Reentry::Used);
            }
            if o.fingerprint != order.fingerprint {
                return Err(Reentry::Different);
            }
            o.prepay_id = ids::prepay_id(shard, slot, now).into_boxed_str();
            o.prepay_at = now;
            Placed {
                loc: Loc { shard, slot },
                prepay_id: o.prepay_id.to_string(),
                created: false,
            }
        }
        None => {
            if let (Some(expire), Some(earliest)) = (order.time_expire, earliest_expire) {
                if expire < earliest {
                    return Err(Reentry::ExpiresTooSoon);
                }
            }
            let slot = g.insert(order.into_order(now), |loc| ids::prepay_id(loc.shard, loc.slot, now));
            let prepay_id = g.get(slot).map(|o| o.prepay_id.to_string()).unwrap_or_default();
            Placed {
                loc: Loc { shard, slot },
                prepay_id,
                created: true,
            }
        }
    };
    drop(g);
    if placed.created {
        store.evict();
        if sim.inner.config.mode == crate::Mode::Auto {
            sim.inner.notifier.schedule_auto_pay(placed.loc);
        }
    }
    Ok(placed)
}

/// A refund as asked for, in either version.
pub(crate) struct RefundAsk<'a> {
    pub out_refund_no: &'a str,
    pub refund_fee: Fen,
    pub total_fee: Fen,
    pub notify_url: Option<&'a str>,
    /// A digest of the request's business parameters, to tell a retry from a conflict.
    pub fingerprint: [u8; 16],
    pub v3: bool,
}

/// Why a refund is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RefundRefusal {
    /// No such order.
    OrderNotFound,
    /// The refund number is another order's refund.
    OtherOrder,
    /// The refund number is taken with other parameters.
    Mismatch,
    /// The order is not paid.
    NotPaid,
    /// The order's amount is not the one given.
    TotalMismatch,
    /// Fifty refunds already.
    TooMany,
    /// Refunded in full already.
    FullyRefunded,
    /// More than what is left to refund.
    Exceeds,
    /// Another refund of the order was accepted a moment ago (under a second, divided by the
    /// time scale): WeChat Pay refuses refunds of one order that arrive together
    /// (`BIZERR_NEED_RETRY`, to be retried with the same parameters).
    Concurrent,
    /// Another refund of the order was accepted less than the refund interval ago (WeChat
    /// Pay: a minute): `FREQUENCY_LIMITED`.
    TooSoon,
    /// More than the merchant's refundable balance (`POST /simulator/balance`): `NOTENOUGH`.
    NotEnough,
}

/// An order and one of its refunds, as an answer shows them.
pub(crate) struct RefundView {
    pub order: Order,
    pub refund: RefundRec,
}

/// Why an order cannot be closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CloseRefusal {
    /// No such order.
    NotFound,
    /// The order is paid.
    Paid,
    /// The order is closed already, by a close or by its `time_expire` passing.
    Closed,
}

/// Closes the unpaid order at `loc`. An order whose `time_expire` has passed is closed
/// already, as WeChat Pay's orderquery says too, so closing it is refused as closed.
pub(crate) fn close_order(sim: &Simulator, loc: Loc, now: i64) -> Result<(), CloseRefusal> {
    let mut g = sim.inner.store.lock(loc.shard);
    expire_if_due(&mut g, loc.slot, now);
    match g.get(loc.slot).map(|o| o.state) {
        None => Err(CloseRefusal::NotFound),
        Some(OrderState::Success) => Err(CloseRefusal::Paid),
        Some(OrderState::Closed) => Err(CloseRefusal::Closed),
        Some(OrderState::NotPay | OrderState::PayError) => {
            g.set_state(loc.slot, OrderState::Closed);
            Ok(())
        }
    }
}

/// Accepts a refund of the order at `loc` (or recognises a retry of one: the same number and
/// parameters answer the same refund, once).
pub(crate) fn place_refund(
    sim: &Simulator,
    mch: u16,
    loc: Loc,
    ask: &RefundAsk<'_>,
    now: i64,
) -> Result<RefundView, RefundRefusal> {
    let store = &sim.inner.store;
    // An out_refund_no names one refund of one order for ever.
    if let Some((other, _)) = store.find_refund(mch, ask.out_refund_no) {
        if other != loc {
            return Err(RefundRefusal::OtherOrder);
        }
    }
    let mut g = store.lock(loc.shard);
    let Some(o) = g.get(loc.slot).filter(|o| o.mch == mch) else {
        return Err(RefundRefusal::OrderNotFound);
    };
    if let Some(existing) = o.refunds.iter().find(|r| &*r.out_refund_no == ask.out_refund_no) {
        if existing.fingerprint != ask.fingerprint {
            return Err(RefundRefusal::Mismatch);
        }
        return Ok(RefundView {
            refund: existing.clone(),
            order: o.clone_shallow(),
        });
    }
    if o.state != OrderState::Success {
        return Err(RefundRefusal::NotPaid);
    }
    if ask.total_fee != o.total_fee {
        return Err(RefundRefusal::TotalMismatch);
    }
    if o.refunds.len() >= 50 {
        return Err(RefundRefusal::TooMany);
    }
    let refunded = o.refunded();
    if refunded == o.total_fee {
        return Err(RefundRefusal::FullyRefunded);
    }
    if refunded.checked_add(ask.refund_fee).is_none_or(|sum| sum > o.total_fee) {
        return Err(RefundRefusal::Exceeds);
    }
    // WeChat Pay wants refunds of one order at least a minute apart; two that arrive together
    // are refused as concurrent. Repeats of an accepted refund were answered above.
    let now_ms = sim.timeline_ms();
    if let Some(last) = o.refunds.iter().map(|r| r.accepted_ms).max() {
        // On the simulated timeline (see `timeline_ms`); a negative gap cannot happen there,
        // and would count as long enough.
        let since = Duration::from_millis(u64::try_from(now_ms - last).unwrap_or(u64::MAX));
        let interval = sim.inner.config.refund_interval;
        // A zero interval (tests of other rules) turns both off.
        if since < Duration::from_secs(1).min(interval) {
            return Err(RefundRefusal::Concurrent);
        }
        if since < interval {
            return Err(RefundRefusal::TooSoon);
        }
    }
    // The merchant's refundable balance, when set: taken under the order's lock, so a refused
    // refund takes nothing and an accepted one is taken once.
    if !sim.inner.merchants[usize::from(mch)].take_balance(ask.refund_fee) {
        return Err(RefundRefusal::NotEnough);
    }
    let idx = o.refunds.len();
    let rec = RefundRec {
        out_refund_no: ask.out_refund_no.into(),
        refund_id: ids::refund_id(loc.shard, loc.slot, idx, now).into_boxed_str(),
        refund_fee: ask.refund_fee,
        status: RefundStatus::Processing,
        notify_url: ask.notify_url.map(|u| sim.intern_url(u)),
        accepted_at: now,
        accepted_ms: now_ms,
        settled_at: None,
        fingerprint: ask.fingerprint,
        notified: ask.notify_url.is_none(),
        v3: ask.v3,
    };
    let view = RefundView {
        refund: rec.clone(),
        order: o.clone_shallow(),
    };
    o.refunds.push(rec);
    g.index_refund(mch, ask.out_refund_no, loc.slot, idx);
    drop(g);
    sim.inner.notifier.schedule_refund_completion(loc, idx);
    Ok(view)
}

impl Order {
    /// A copy for an answer, without the refund list (which can be fifty long).
    fn clone_shallow(&self) -> Order {
        Order {
            mch: self.mch,
            appid: self.appid.clone(),
            out_trade_no: self.out_trade_no.clone(),
            body: self.body.clone(),
            attach: self.attach.clone(),
            device_info: self.device_info.clone(),
            total_fee: self.total_fee,
            notify_url: Arc::clone(&self.notify_url),
            openid: self.openid.clone(),
            trade_type: self.trade_type.clone(),
            fingerprint: self.fingerprint,
            sign_type: self.sign_type,
            time_expire: self.time_expire,
            created_at: self.created_at,
            state: self.state,
            prepay_id: self.prepay_id.clone(),
            prepay_at: self.prepay_at,
            transaction_id: self.transaction_id.clone(),
            paid_at: self.paid_at,
            pay_error: self.pay_error.clone(),
            refunds: Vec::new(),
            notified: self.notified,
            v3: self.v3,
        }
    }
}
