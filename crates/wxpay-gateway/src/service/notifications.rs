//! What a verified notification does, and what a rejected one leaves behind.
//!
//! A payment notification: one store call checks the amount against the stored order and
//! moves it `pending → paid` with its event and outbox row, or changes nothing. It is
//! acknowledged only after that commit. A verified report of a failed payment brings the
//! order's check forward.
//!
//! A refund notification carries no signature (AES-ECB authenticates nothing). It is a hint:
//! a success settles a refund only when it matches one that wxpay asked for (the number, the
//! order and the amount); a failure, which would give the reserved amount back, is only a
//! reason to ask WeChat Pay, whose signed answer decides; anything else changes nothing and
//! is logged.
//!
//! A notification rejected before verification changes nothing; it is counted, and within a
//! budget logged and recorded (`rejections.rs`), never on the request's path.

use std::net::SocketAddr;

use wxpay_protocol::OutTradeNo;

use crate::provider::{CLIPPED, NoticeOutcome, NoticeRejected, PaymentNotice, RefundNotice};
use crate::service::orders::{ORDER_CURRENCY, foreign_currency};
use crate::service::refunds::settlement;
use crate::service::state::Service;
pub(crate) use crate::store::NoticeKind;
use crate::store::{
    self, NotificationRecord, OrderStatus, Payment, PaymentOutcome, RefundOutcome, RefundStatus, Source, Verdict,
};
use crate::time::Millis;
use crate::util::clip;

/// What WeChat Pay is to be told about a verified notification.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum NoticeAnswer {
    /// Applied, already applied, or kept as a report: it need not come again.
    Acknowledged,
    /// It does not fit what is stored: refused (and so sent again, for a person to see).
    Refused(Misfit),
    /// Nothing was committed: it must come again.
    NotKept,
}

/// How a verified notification does not fit what is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Misfit {
    /// No such order.
    UnknownOrder,
    /// Another amount than the order's.
    AmountMismatch,
    /// Another currency than the order's.
    CurrencyMismatch,
    /// Another payment is recorded for the order, or this one for another order.
    PaymentConflict,
    /// No such refund.
    UnknownRefund,
    /// The refund belongs to another order.
    WrongOrder,
    /// Another amount than the refund's.
    RefundAmountMismatch,
    /// It contradicts the refund's recorded settlement.
    RefundConflict,
}

/// The record of a verified notification; its verdict and reason are set where they are
/// decided.
fn verified(
    now: Millis,
    kind: NoticeKind,
    merchant: &str,
    out_trade_no: &OutTradeNo,
    transaction_id: Option<&str>,
    body: &[u8],
) -> NotificationRecord {
    NotificationRecord {
        received_at: now,
        kind,
        merchant: Some(merchant.to_owned()),
        out_trade_no: Some(out_trade_no.to_string()),
        transaction_id: transaction_id.map(str::to_owned),
        verdict: None,
        reason: None,
        body: store::stored_body(body),
        peer: None,
        body_sha256: None,
    }
}

impl Service {
    /// A notification rejected before verification. It is counted, and within the budget of
    /// `rejections.rs` logged and recorded, never written on this request's path: rejected
    /// traffic must not take turns from the writes of verified notifications, nor fill the
    /// log.
    pub(crate) fn notice_rejected(
        &self,
        kind: NoticeKind,
        rejected: NoticeRejected,
        body: &[u8],
        peer: Option<SocketAddr>,
    ) {
        let inner = &self.inner;
        inner.metrics.notification(Verdict::Rejected);
        let received_at = self.now();
        // Beyond the budget nothing more is done: no digest, no copy, no log line.
        if inner.rejections.within_budget(&inner.metrics, received_at) {
            let record = NotificationRecord {
                received_at,
                kind,
                merchant: rejected.merchant.map(|i| self.merchant_at(i).merchant().name.clone()),
                out_trade_no: rejected.out_trade_no,
                transaction_id: rejected.transaction_id,
                verdict: Some(Verdict::Rejected),
                reason: Some(clip(&rejected.reason, 2 * CLIPPED)),
                body: store::truncated_body(body, store::REJECTED_BODY_KEPT),
                peer: peer.map(|p| p.to_string()),
                body_sha256: Some(crate::util::sha256_hex(body)),
            };
            tracing::warn!(kind = kind.as_str(), reason = ?record.reason.as_deref().unwrap_or_default(), out_trade_no = ?record.out_trade_no.as_deref().unwrap_or("-"), peer = ?record.peer.as_deref().unwrap_or("-"), "notification rejected");
            inner.rejections.keep(&inner.store, record);
        }
    }

    /// Keeps a verified notification that changes no order, then gives `answer` (or
    /// [`NoticeAnswer::NotKept`] when it could not be kept).
    async fn keep_then(&self, record: NotificationRecord, answer: NoticeAnswer) -> NoticeAnswer {
        match self.inner.store.record_notifications(vec![record]).await {
            Ok(()) => answer,
            Err(e) => {
                tracing::error!(error = ?e, "cannot record a notification");
                NoticeAnswer::NotKept
            }
        }
    }

    /// A verified payment notification of the merchant at `merchant`.
    pub(crate) async fn payment_notified(&self, merchant: usize, notice: PaymentNotice, body: &[u8]) -> NoticeAnswer {
        let name = &self.merchant_at(merchant).merchant().name;
        let now = self.now();
        let (transaction_id, amount, paid_at, currency) = match notice.outcome {
            NoticeOutcome::Paid {
                transaction_id,
                amount,
                paid_at,
                currency,
            } => (transaction_id, amount, paid_at, currency),
            NoticeOutcome::Failed { reason } => {
                // A verified report of a failed payment. It is not the order's state (the
                // payer may try again): WeChat Pay is asked at the check loop's next round,
                // and its answer applied (PAYERROR fails the order), so the payer sees the
                // result within a second rather than at the order's next check. The report is
                // kept and acknowledged.
                self.inner.metrics.notification(Verdict::PaymentFailed);
                self.check_soon_after_failed_payment(name, &notice.out_trade_no).await;
                let record = NotificationRecord {
                    verdict: Some(Verdict::PaymentFailed),
                    reason: Some(reason),
                    ..verified(now, NoticeKind::Payment, name, &notice.out_trade_no, None, body)
                };
                return self.keep_then(record, NoticeAnswer::Acknowledged).await;
            }
        };
        let record = verified(
            now,
            NoticeKind::Payment,
            name,
            &notice.out_trade_no,
            Some(&transaction_id),
            body,
        );
        if let Some(reported) = foreign_currency(currency.as_deref()) {
            // Refused like a wrong amount: the same number in another currency is another sum.
            tracing::warn!(out_trade_no = ?notice.out_trade_no, fee_type = ?reported, "payment notification in another currency");
            self.inner.metrics.notification(Verdict::CurrencyMismatch);
            let record = NotificationRecord {
                verdict: Some(Verdict::CurrencyMismatch),
                reason: Some(format!("fee_type {reported:?}, the order is in {ORDER_CURRENCY}")),
                ..record
            };
            return self
                .keep_then(record, NoticeAnswer::Refused(Misfit::CurrencyMismatch))
                .await;
        }
        let payment = Payment {
            merchant: name.clone(),
            out_trade_no: notice.out_trade_no.clone(),
            transaction_id,
            amount_fen: amount,
            paid_at,
            source: Source::Notification,
            now,
        };
        let outcome = match self.inner.store.apply_payment(payment, Some(record)).await {
            Ok(o) => o,
            Err(e) => {
                tracing::error!(error = ?e, out_trade_no = ?notice.out_trade_no, "cannot apply a payment notification");
                return NoticeAnswer::NotKept;
            }
        };
        self.inner.metrics.notification(outcome.verdict());
        match outcome {
            PaymentOutcome::Applied(o) => {
                tracing::info!(out_trade_no = ?o.out_trade_no, "order paid");
                NoticeAnswer::Acknowledged
            }
            PaymentOutcome::AlreadyPaid(_) => NoticeAnswer::Acknowledged,
            PaymentOutcome::UnknownOrder => {
                tracing::warn!(out_trade_no = ?notice.out_trade_no, "payment notification for an unknown order");
                NoticeAnswer::Refused(Misfit::UnknownOrder)
            }
            PaymentOutcome::AmountMismatch { expected, got } => {
                tracing::warn!(out_trade_no = ?notice.out_trade_no, ?expected, ?got, "payment notification with another amount");
                NoticeAnswer::Refused(Misfit::AmountMismatch)
            }
            PaymentOutcome::TransactionConflict(reason) => {
                tracing::warn!(out_trade_no = ?notice.out_trade_no, ?reason, "payment notification conflicts with a recorded payment");
                NoticeAnswer::Refused(Misfit::PaymentConflict)
            }
        }
    }

    /// A decrypted refund notification of the merchant at `merchant`.
    pub(crate) async fn refund_notified(&self, merchant: usize, notice: RefundNotice, body: &[u8]) -> NoticeAnswer {
        let name = &self.merchant_at(merchant).merchant().name;
        let now = self.now();
        let n = &notice.refund;
        let mut record = verified(
            now,
            NoticeKind::Refund,
            name,
            &notice.out_trade_no,
            Some(&notice.transaction_id),
            body,
        );
        let Some(succeeded) = n.state.settles() else {
            // WeChat Pay notifies settled refunds only; anything else is kept and acknowledged.
            record.verdict = Some(Verdict::NotSettled);
            record.reason = Some(format!("refund_status {}", n.state.as_str()));
            return self.keep_then(record, NoticeAnswer::Acknowledged).await;
        };
        if !succeeded {
            return self.refund_failure_reported(name, &notice, record).await;
        }
        let result = settlement(name, &notice.out_trade_no, n, succeeded, Source::Notification, now);
        let outcome = match self.inner.store.apply_refund(result, Some(record)).await {
            Ok(o) => o,
            Err(e) => {
                tracing::error!(error = ?e, out_refund_no = ?n.out_refund_no, "cannot apply a refund notification");
                return NoticeAnswer::NotKept;
            }
        };
        self.inner.metrics.notification(outcome.verdict());
        match outcome {
            RefundOutcome::Applied(r) => {
                tracing::info!(out_refund_no = ?r.out_refund_no, status = %r.status, "refund settled");
                NoticeAnswer::Acknowledged
            }
            RefundOutcome::AlreadySettled(_) => NoticeAnswer::Acknowledged,
            RefundOutcome::UnknownRefund => {
                tracing::warn!(out_refund_no = ?n.out_refund_no, out_trade_no = ?notice.out_trade_no, "refund notification for a refund wxpay did not ask for");
                NoticeAnswer::Refused(Misfit::UnknownRefund)
            }
            RefundOutcome::WrongOrder => {
                tracing::warn!(out_refund_no = ?n.out_refund_no, out_trade_no = ?notice.out_trade_no, "refund notification names another order");
                NoticeAnswer::Refused(Misfit::WrongOrder)
            }
            RefundOutcome::AmountMismatch { expected, got } => {
                tracing::warn!(out_refund_no = ?n.out_refund_no, out_trade_no = ?notice.out_trade_no, ?expected, ?got, "refund notification with another amount");
                NoticeAnswer::Refused(Misfit::RefundAmountMismatch)
            }
            RefundOutcome::Conflict(r) => {
                tracing::error!(out_refund_no = ?r.out_refund_no, status = %r.status, reported = n.state.as_str(), "refund notification contradicts a settled refund");
                NoticeAnswer::Refused(Misfit::RefundConflict)
            }
        }
    }

    /// Brings forward the check of an order whose payment a notification says failed: the
    /// check loop asks WeChat Pay at its next round and applies the signed answer. A check,
    /// rather than a query of its own, so that replayed notifications cannot multiply calls to
    /// WeChat Pay: however many arrive, the order is asked about once a round.
    async fn check_soon_after_failed_payment(&self, merchant: &str, out_trade_no: &OutTradeNo) {
        let store = &self.inner.store;
        match store.order(merchant.to_owned(), out_trade_no.clone()).await {
            Ok(Some(o)) if o.status == OrderStatus::Pending => {
                if let Err(e) = store.schedule_check(o.id, Some(self.now()), None).await {
                    tracing::warn!(error = ?e, "cannot bring an order's check forward after a failed payment");
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = ?e, "cannot read an order after a failed payment"),
        }
    }

    /// A refund notification that says the refund failed. The notification authenticates
    /// nothing (AES-ECB: blocks of genuine notifications can be cut and spliced), and failing
    /// a refund gives its reserved amount back to be refunded again, so the notification alone
    /// never fails a refund: it brings the refund's check forward, so that the check loop asks
    /// WeChat Pay (whose answer is signed), and the answer decides.
    async fn refund_failure_reported(
        &self,
        merchant: &str,
        notice: &RefundNotice,
        mut record: NotificationRecord,
    ) -> NoticeAnswer {
        let n = &notice.refund;
        let found = match self
            .inner
            .store
            .refund(merchant.to_owned(), n.out_refund_no.clone())
            .await
        {
            Ok(found) => found,
            Err(e) => {
                tracing::error!(error = ?e, "cannot read a refund for its notification");
                return NoticeAnswer::NotKept;
            }
        };
        let (verdict, answer) = match found {
            None => (Verdict::UnknownRefund, NoticeAnswer::Refused(Misfit::UnknownRefund)),
            Some(r) if r.out_trade_no != notice.out_trade_no => {
                (Verdict::WrongOrder, NoticeAnswer::Refused(Misfit::WrongOrder))
            }
            Some(r) if r.status == RefundStatus::Succeeded => {
                tracing::error!(out_refund_no = ?r.out_refund_no, reported = ?n.state.as_str(), "refund notification contradicts a succeeded refund");
                (Verdict::StatusConflict, NoticeAnswer::Refused(Misfit::RefundConflict))
            }
            Some(r) if r.status == RefundStatus::Failed => (Verdict::Duplicate, NoticeAnswer::Acknowledged),
            Some(r) => {
                // The check loop asks WeChat Pay at its next round (a check, not a query of its
                // own, so that replayed notifications cannot multiply calls to WeChat Pay).
                if let Err(e) = self.inner.store.schedule_refund_check(r.id, Some(self.now())).await {
                    tracing::error!(error = ?e, "cannot bring a refund's check forward");
                    return NoticeAnswer::NotKept;
                }
                (Verdict::ToConfirm, NoticeAnswer::Acknowledged)
            }
        };
        self.inner.metrics.notification(verdict);
        record.verdict = Some(verdict);
        record.reason = Some(format!("refund_status {}", n.state.as_str()));
        self.keep_then(record, answer).await
    }
}
