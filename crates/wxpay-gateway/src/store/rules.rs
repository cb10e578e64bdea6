//! The business rules of the store, written once as pure functions of the stored state and
//! the incoming fact. The SQLite engine calls them inside its transactions; PostgreSQL calls
//! them in its row-by-row paths, and its set-based payment statements (one statement for a
//! payment, one for a batch) are pinned to [`payment_verdict`] by a property test that
//! compares their verdicts and final rows with a sequential fold of it.

use wxpay_protocol::{Fen, OutTradeNo};

use crate::store::{
    Damaged, Order, OrderStatus, PaymentOutcome, Refund, RefundCreated, RefundOutcome, RefundStatus, StoreError,
};

/// An order, as a payment sees it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct OrderFacts<'a> {
    /// Its amount.
    pub(crate) amount_fen: Fen,
    /// Its status.
    pub(crate) status: OrderStatus,
    /// The transaction that paid it.
    pub(crate) transaction_id: Option<&'a str>,
}

/// What a reported payment does to its order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PaymentVerdict {
    /// No such order: nothing changes.
    UnknownOrder,
    /// Another amount than the order's: nothing changes.
    AmountMismatch,
    /// The order is paid with this transaction already: nothing changes.
    Duplicate,
    /// The order is paid with another transaction: nothing changes.
    PaidWithOther,
    /// The transaction is recorded on another order: nothing changes.
    TransactionTaken,
    /// The order becomes paid. `was` is its status before: anything but pending (a closed or
    /// failed order that was paid anyway) is recorded as an anomaly, never dropped.
    Apply {
        /// The status before.
        was: OrderStatus,
    },
}

impl PaymentVerdict {
    /// The verdict's name in notification records, metrics and the payment statements.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            PaymentVerdict::UnknownOrder => "unknown_order",
            PaymentVerdict::AmountMismatch => "amount_mismatch",
            PaymentVerdict::Duplicate => "duplicate",
            PaymentVerdict::PaidWithOther | PaymentVerdict::TransactionTaken => "transaction_conflict",
            PaymentVerdict::Apply { .. } => "applied",
        }
    }
}

/// The verdict on a payment of `amount_fen` with `transaction_id` for `order` (`None`: no
/// such order). `taken` says whether the transaction id is recorded on any order; it is only
/// asked when the answer matters, so that a duplicate costs no lookup.
///
/// # Errors
/// Only what `taken` returns.
pub(crate) fn payment_verdict<E>(
    order: Option<OrderFacts<'_>>,
    amount_fen: Fen,
    transaction_id: &str,
    taken: impl FnOnce() -> Result<bool, E>,
) -> Result<PaymentVerdict, E> {
    let Some(order) = order else {
        return Ok(PaymentVerdict::UnknownOrder);
    };
    if order.amount_fen != amount_fen {
        return Ok(PaymentVerdict::AmountMismatch);
    }
    match order.status {
        OrderStatus::Paid | OrderStatus::Refunded => Ok(if order.transaction_id == Some(transaction_id) {
            PaymentVerdict::Duplicate
        } else {
            PaymentVerdict::PaidWithOther
        }),
        OrderStatus::Pending | OrderStatus::Closed | OrderStatus::Failed => Ok(if taken()? {
            PaymentVerdict::TransactionTaken
        } else {
            PaymentVerdict::Apply { was: order.status }
        }),
    }
}

/// A refund, as a reported settlement sees it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RefundFacts<'a> {
    /// The order it belongs to.
    pub(crate) out_trade_no: &'a OutTradeNo,
    /// Its amount.
    pub(crate) amount_fen: Fen,
    /// Its status.
    pub(crate) status: RefundStatus,
}

/// What a reported settlement does to its refund.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RefundVerdict {
    /// No such refund was asked for.
    UnknownRefund,
    /// The refund belongs to another order.
    WrongOrder,
    /// Another amount than the refund's.
    AmountMismatch,
    /// Settled this way already.
    AlreadySettled,
    /// Settled the other way already: a succeeded refund never fails later, nor the reverse.
    Conflict,
    /// The pending refund settles.
    Settle,
}

/// The verdict on a report that the refund `refund` (`None`: no such refund) of order
/// `out_trade_no`, of `amount_fen`, `succeeded` or failed.
pub(crate) fn refund_verdict(
    refund: Option<RefundFacts<'_>>,
    out_trade_no: &OutTradeNo,
    amount_fen: Fen,
    succeeded: bool,
) -> RefundVerdict {
    let Some(r) = refund else {
        return RefundVerdict::UnknownRefund;
    };
    if r.out_trade_no != out_trade_no {
        return RefundVerdict::WrongOrder;
    }
    if r.amount_fen != amount_fen {
        return RefundVerdict::AmountMismatch;
    }
    match (r.status, succeeded) {
        (RefundStatus::Succeeded, true) | (RefundStatus::Failed, false) => RefundVerdict::AlreadySettled,
        (RefundStatus::Succeeded | RefundStatus::Failed, _) => RefundVerdict::Conflict,
        (RefundStatus::Pending, _) => RefundVerdict::Settle,
    }
}

/// An order's refund figures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Refunded {
    /// The status.
    pub(crate) status: OrderStatus,
    /// The sum of succeeded refunds.
    pub(crate) refunded_fen: Fen,
    /// The sum of refunds not failed (pending or succeeded): what is spoken for.
    pub(crate) reserved_fen: Fen,
}

/// Why a refund of an order cannot be reserved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Unreservable {
    /// Only paid orders are refunded.
    NotPaid(OrderStatus),
    /// It would exceed the order's amount; this much can still be refunded.
    Exceeds {
        /// What is left.
        available: Fen,
    },
}

/// Reserves `amount` of an order of `order_amount` for a new refund: the figures after, or
/// why not. The refunds of an order never add up to more than its amount.
pub(crate) fn reserve(order_amount: Fen, now: Refunded, amount: Fen) -> Result<Refunded, Unreservable> {
    if !matches!(now.status, OrderStatus::Paid | OrderStatus::Refunded) {
        return Err(Unreservable::NotPaid(now.status));
    }
    // The database keeps the reserved sum at most the amount; a row that breaks that has
    // nothing left to refund.
    let available = order_amount.checked_sub(now.reserved_fen).unwrap_or(Fen::ZERO);
    match now.reserved_fen.checked_add(amount) {
        Some(reserved_fen) if amount <= available => Ok(Refunded { reserved_fen, ..now }),
        _ => Err(Unreservable::Exceeds { available }),
    }
}

/// The order's figures after a pending refund of `amount` settles: a success adds to the
/// refunded sum (the order is `refunded` when that reaches its amount); a failure gives the
/// reservation back.
///
/// # Errors
/// [`Damaged`] when the stored sums cannot hold the refund: a settling refund is always
/// part of the reserved sum, and the refunded sum never passes it.
pub(crate) fn settle(order_amount: Fen, now: Refunded, amount: Fen, succeeded: bool) -> Result<Refunded, Damaged> {
    let damaged = || Damaged {
        what: "refund sum",
        value: format!("{amount} fen settling against {now:?}"),
    };
    Ok(if succeeded {
        let refunded_fen = now.refunded_fen.checked_add(amount).ok_or_else(damaged)?;
        Refunded {
            refunded_fen,
            status: if refunded_fen == order_amount {
                OrderStatus::Refunded
            } else {
                now.status
            },
            ..now
        }
    } else {
        Refunded {
            reserved_fen: now.reserved_fen.checked_sub(amount).ok_or_else(damaged)?,
            ..now
        }
    })
}

/// What a refused payment verdict tells the caller, with the order it concerns.
pub(crate) fn payment_refused(
    verdict: PaymentVerdict,
    order: Option<Order>,
    got: Fen,
) -> Result<PaymentOutcome, StoreError> {
    let order = || order.ok_or_else(|| StoreError::Broken(format!("a {} payment without its order", verdict.as_str())));
    Ok(match verdict {
        PaymentVerdict::UnknownOrder => PaymentOutcome::UnknownOrder,
        PaymentVerdict::AmountMismatch => PaymentOutcome::AmountMismatch {
            expected: order()?.amount_fen,
            got,
        },
        PaymentVerdict::Duplicate => PaymentOutcome::AlreadyPaid(order()?),
        PaymentVerdict::PaidWithOther => PaymentOutcome::TransactionConflict(format!(
            "the order is already paid with transaction {}",
            order()?.transaction_id.as_deref().unwrap_or("?")
        )),
        PaymentVerdict::TransactionTaken => {
            PaymentOutcome::TransactionConflict("the transaction id belongs to another order".into())
        }
        PaymentVerdict::Apply { .. } => {
            return Err(StoreError::Broken("an applied payment taken for a refused one".into()));
        }
    })
}

/// A refund as [`refund_verdict`] sees it.
pub(crate) fn refund_facts(r: &Refund) -> RefundFacts<'_> {
    RefundFacts {
        out_trade_no: &r.out_trade_no,
        amount_fen: r.amount_fen,
        status: r.status,
    }
}

/// What a refused refund verdict tells the caller, with the refund it concerns.
pub(crate) fn refund_refused(
    verdict: RefundVerdict,
    refund: Option<Refund>,
    got: Fen,
) -> Result<RefundOutcome, StoreError> {
    let refund =
        || refund.ok_or_else(|| StoreError::Broken(format!("a {verdict:?} refund verdict without its refund")));
    Ok(match verdict {
        RefundVerdict::UnknownRefund => RefundOutcome::UnknownRefund,
        RefundVerdict::WrongOrder => RefundOutcome::WrongOrder,
        RefundVerdict::AmountMismatch => RefundOutcome::AmountMismatch {
            expected: refund()?.amount_fen,
            got,
        },
        RefundVerdict::AlreadySettled => RefundOutcome::AlreadySettled(refund()?),
        RefundVerdict::Conflict => RefundOutcome::Conflict(refund()?),
        RefundVerdict::Settle => return Err(StoreError::Broken("a settling refund taken for a refused one".into())),
    })
}

impl From<Unreservable> for RefundCreated {
    fn from(u: Unreservable) -> Self {
        match u {
            Unreservable::NotPaid(status) => RefundCreated::NotPaid(status),
            Unreservable::Exceeds { available } => RefundCreated::Exceeds { available },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(fen: u64) -> Fen {
        Fen::new(fen).unwrap()
    }

    fn order(status: OrderStatus, tx: Option<&str>) -> Option<OrderFacts<'_>> {
        Some(OrderFacts {
            amount_fen: f(100),
            status,
            transaction_id: tx,
        })
    }

    fn verdict(o: Option<OrderFacts<'_>>, amount: u64, tx: &str, taken: bool) -> PaymentVerdict {
        payment_verdict::<()>(o, f(amount), tx, || Ok(taken)).unwrap()
    }

    #[test]
    fn a_payment_applies_once_to_an_unpaid_order_of_its_amount_and_transaction() {
        use OrderStatus::*;
        assert_eq!(verdict(None, 100, "t", false), PaymentVerdict::UnknownOrder);
        assert_eq!(
            verdict(order(Pending, None), 99, "t", false),
            PaymentVerdict::AmountMismatch
        );
        // The amount is checked before anything else, a paid order included.
        assert_eq!(
            verdict(order(Paid, Some("t")), 99, "t", false),
            PaymentVerdict::AmountMismatch
        );
        for was in [Pending, Closed, Failed] {
            assert_eq!(
                verdict(order(was, None), 100, "t", false),
                PaymentVerdict::Apply { was }
            );
            assert_eq!(
                verdict(order(was, None), 100, "t", true),
                PaymentVerdict::TransactionTaken
            );
        }
        for paid in [Paid, Refunded] {
            assert_eq!(
                verdict(order(paid, Some("t")), 100, "t", true),
                PaymentVerdict::Duplicate
            );
            assert_eq!(
                verdict(order(paid, Some("t")), 100, "u", false),
                PaymentVerdict::PaidWithOther
            );
        }
    }

    #[test]
    fn a_duplicate_asks_nothing_of_the_database() {
        let v = payment_verdict(
            order(OrderStatus::Paid, Some("t")),
            f(100),
            "t",
            || -> Result<bool, ()> { panic!("asked whether the transaction is taken") },
        );
        assert_eq!(v, Ok(PaymentVerdict::Duplicate));
    }

    #[test]
    fn a_refund_settles_once_and_only_when_number_order_and_amount_match() {
        let (w1, w2) = (OutTradeNo::new("W1").unwrap(), OutTradeNo::new("W2").unwrap());
        let r = |status| {
            Some(RefundFacts {
                out_trade_no: &w1,
                amount_fen: f(30),
                status,
            })
        };
        let refund_verdict =
            |r, no, amount, succeeded| refund_verdict(r, if no == "W1" { &w1 } else { &w2 }, f(amount), succeeded);
        use RefundStatus::*;
        assert_eq!(refund_verdict(None, "W1", 30, true), RefundVerdict::UnknownRefund);
        assert_eq!(refund_verdict(r(Pending), "W2", 30, true), RefundVerdict::WrongOrder);
        assert_eq!(
            refund_verdict(r(Pending), "W1", 31, true),
            RefundVerdict::AmountMismatch
        );
        assert_eq!(refund_verdict(r(Pending), "W1", 30, true), RefundVerdict::Settle);
        assert_eq!(refund_verdict(r(Pending), "W1", 30, false), RefundVerdict::Settle);
        assert_eq!(
            refund_verdict(r(Succeeded), "W1", 30, true),
            RefundVerdict::AlreadySettled
        );
        assert_eq!(
            refund_verdict(r(Failed), "W1", 30, false),
            RefundVerdict::AlreadySettled
        );
        assert_eq!(refund_verdict(r(Succeeded), "W1", 30, false), RefundVerdict::Conflict);
        assert_eq!(refund_verdict(r(Failed), "W1", 30, true), RefundVerdict::Conflict);
    }

    #[test]
    fn refunds_never_exceed_the_order_and_the_last_one_makes_it_refunded() {
        let paid = Refunded {
            status: OrderStatus::Paid,
            refunded_fen: Fen::ZERO,
            reserved_fen: Fen::ZERO,
        };
        let reserve = |order, now, amount| reserve(f(order), now, f(amount));
        let settle = |order, now, amount, ok| settle(f(order), now, f(amount), ok).unwrap();
        let a = reserve(100, paid, 60).unwrap();
        assert_eq!(reserve(100, a, 41), Err(Unreservable::Exceeds { available: f(40) }));
        let b = reserve(100, a, 40).unwrap();
        assert_eq!(b.reserved_fen, f(100));
        // The first fails: its 60 can be asked for again.
        let c = settle(100, b, 60, false);
        assert_eq!(
            (c.reserved_fen, c.refunded_fen, c.status),
            (f(40), f(0), OrderStatus::Paid)
        );
        let d = settle(100, c, 40, true);
        assert_eq!((d.refunded_fen, d.status), (f(40), OrderStatus::Paid));
        let e = settle(100, reserve(100, d, 60).unwrap(), 60, true);
        assert_eq!(
            (e.refunded_fen, e.reserved_fen, e.status),
            (f(100), f(100), OrderStatus::Refunded)
        );
        assert_eq!(
            reserve(
                100,
                Refunded {
                    status: OrderStatus::Pending,
                    ..paid
                },
                1
            ),
            Err(Unreservable::NotPaid(OrderStatus::Pending))
        );
    }
}
