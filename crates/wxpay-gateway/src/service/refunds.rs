//! Refunds: stored with the order's amount reserved for them before WeChat Pay is asked,
//! sent (and sent again, identical, until WeChat Pay acknowledges them), and settled by the
//! refund notification or a query.
//!
//! The reservation and the insert are one transaction guarded by a `CHECK` on the order, so
//! the refunds of an order never add up to more than its amount, however many requests race.
//! The refund call is repeated only with the same `out_refund_no` and identical parameters,
//! which WeChat Pay treats as the same refund. An accepted refund is not a settled one.

use wxpay_protocol::{Fen, OutRefundNo, OutTradeNo};

use crate::provider::{Provider, ProviderError, RefundReport, RefundTerms, Refusal, Retry};
use crate::service::error::{Conflict, ServiceError};
use crate::service::numbers::Numbers;
use crate::service::state::Service;
use crate::store::{
    NewRefund, Order, Refund, RefundCreated, RefundOutcome, RefundResult, RefundStatus, Source, Upstream,
};
use crate::time::Millis;

/// What a backend asks for when it refunds an order.
#[derive(Debug)]
pub(crate) struct RefundRequest {
    pub(crate) merchant: Option<String>,
    pub(crate) amount_fen: u64,
    pub(crate) out_refund_no: Option<String>,
    pub(crate) reason: Option<String>,
}

/// What a refund query said about a refund.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Synced {
    /// WeChat Pay does not know it.
    NotFound,
    /// WeChat Pay has it, still processing.
    Processing,
    /// WeChat Pay's settlement is recorded (now or before).
    Settled,
    /// WeChat Pay says something the stored refund contradicts (a settled refund the other
    /// way, another order or amount): nothing was changed.
    Contradicts(String),
}

/// What the store is asked to apply for a settlement WeChat Pay reports (`succeeded` or
/// failed) of a refund of `merchant`'s order `out_trade_no`, from a query or a notification.
pub(crate) fn settlement(
    merchant: &str,
    out_trade_no: &OutTradeNo,
    report: &RefundReport,
    succeeded: bool,
    source: Source,
    now: Millis,
) -> RefundResult {
    RefundResult {
        merchant: merchant.to_owned(),
        out_refund_no: report.out_refund_no.clone(),
        out_trade_no: out_trade_no.clone(),
        refund_id: report.refund_id.clone(),
        amount_fen: report.amount,
        succeeded,
        upstream_status: report.state.as_str().to_owned(),
        settled_at: report.settled_at.unwrap_or(now),
        source,
        now,
    }
}

impl Service {
    /// Creates a refund of a paid order and sends it to WeChat Pay: the refund, and whether
    /// this request made it (else it is one made before with the same parameters).
    pub(crate) async fn create_refund(
        &self,
        out_trade_no: String,
        req: RefundRequest,
        numbers: &Numbers,
    ) -> Result<(Refund, bool), ServiceError> {
        let now = self.now();
        if req.amount_fen == 0 {
            return Err(ServiceError::Invalid("amount_fen must be at least 1".into()));
        }
        let amount = Fen::new(req.amount_fen).map_err(|e| ServiceError::Invalid(e.to_string()))?;
        let out_refund_no = match &req.out_refund_no {
            Some(n) => OutRefundNo::new(n.clone()).map_err(|e| ServiceError::Invalid(e.to_string()))?,
            None => OutRefundNo::new(numbers.number('R', now))?,
        };
        let (provider, order) = self.find_order(req.merchant.as_deref(), out_trade_no).await?;
        let config = provider.merchant();
        if provider.lacks_client_cert(now) {
            return Err(ServiceError::NotConfigured(format!(
                "refunds need the merchant API certificate of merchant {:?}: set cert_path and key_path (or a .p12 cert_path) in its configuration",
                config.name
            )));
        }
        if amount > order.amount_fen {
            return Err(ServiceError::conflict(
                Conflict::RefundExceedsAmount,
                format!(
                    "refunding {} fen would exceed order {}'s amount of {} fen",
                    req.amount_fen, order.out_trade_no, order.amount_fen
                ),
            ));
        }
        let request_hash = crate::util::sha256_hex(
            serde_json::json!([
                config.name,
                order.out_trade_no,
                out_refund_no.as_str(),
                req.amount_fen,
                req.reason
            ])
            .to_string()
            .as_bytes(),
        );
        // Check everything else WeChat Pay would refuse (the amount, the reason's length)
        // before anything is stored.
        provider
            .check_refund(&RefundTerms {
                out_trade_no: &order.out_trade_no,
                out_refund_no: &out_refund_no,
                order_amount: order.amount_fen,
                amount,
                reason: req.reason.as_deref(),
            })
            .map_err(ServiceError::Invalid)?;
        let new = NewRefund {
            merchant: config.name.clone(),
            out_trade_no: order.out_trade_no.clone(),
            out_refund_no,
            amount_fen: amount,
            reason: req.reason.clone(),
            request_hash: request_hash.clone(),
            first_check_at: self.first_check_at(now),
            now,
        };
        let refund = match self.inner.store.create_refund(new).await? {
            RefundCreated::New(r) => r,
            RefundCreated::Existing(r) if r.request_hash != request_hash => {
                return Err(ServiceError::conflict(
                    Conflict::OutRefundNoTaken,
                    format!("refund {} exists with other parameters", r.out_refund_no),
                ));
            }
            RefundCreated::Existing(r) => {
                if r.status != RefundStatus::Pending || r.upstream == Upstream::Created {
                    return Ok((r, false));
                }
                // The same refund again, not yet accepted: send it again, identical.
                r
            }
            RefundCreated::NoOrder => {
                return Err(ServiceError::NotFound(format!("no order {}", order.out_trade_no)));
            }
            RefundCreated::NotPaid(status) => {
                return Err(ServiceError::conflict(
                    Conflict::OrderNotPaid,
                    format!(
                        "order {} is {status}: only paid orders can be refunded",
                        order.out_trade_no
                    ),
                ));
            }
            RefundCreated::Exceeds { available } => {
                return Err(ServiceError::conflict(
                    Conflict::RefundExceedsAmount,
                    format!(
                        "refunding {} fen would exceed order {}'s amount of {} fen: {available} fen can still be refunded",
                        req.amount_fen, order.out_trade_no, order.amount_fen
                    ),
                ));
            }
        };
        let refund = self.submit(provider, refund, order.amount_fen).await?;
        match refund.status {
            RefundStatus::Failed => Err(ServiceError::Rejected(format!(
                "WeChat Pay refused refund {}: {}",
                refund.out_refund_no,
                refund.upstream_error.as_deref().unwrap_or("no reason given")
            ))),
            _ => Ok((refund, true)),
        }
    }

    /// A refund of a merchant by its number.
    pub(crate) async fn refund(&self, merchant: Option<&str>, out_refund_no: String) -> Result<Refund, ServiceError> {
        // A number that breaks the rules of out_refund_no was never stored.
        let Ok(number) = OutRefundNo::new(out_refund_no.as_str()) else {
            return Err(ServiceError::NotFound(format!("no refund {out_refund_no}")));
        };
        let store = &self.inner.store;
        let (_, refund) = self
            .find_under(merchant, &format!("refund {out_refund_no}"), |name| {
                store.refund(name, number.clone())
            })
            .await?;
        Ok(refund)
    }

    /// Sends a stored refund to WeChat Pay and records the answer: accepted; refused for good
    /// (the refund fails, unless an earlier attempt without an answer turns out to have been
    /// accepted); or anything else (no answer, "slow down", a refusal of the request itself
    /// such as a signature or certificate problem): it stays pending and is sent again,
    /// identical, by the checks.
    pub(crate) async fn submit(
        &self,
        provider: &dyn Provider,
        refund: Refund,
        order_amount: Fen,
    ) -> Result<Refund, ServiceError> {
        let terms = RefundTerms {
            out_trade_no: &refund.out_trade_no,
            out_refund_no: &refund.out_refund_no,
            order_amount,
            amount: refund.amount_fen,
            reason: refund.reason.as_deref(),
        };
        let store = &self.inner.store;
        let result = provider.refund(&terms).await;
        let now = self.now();
        let retry_later = async |error: String| {
            tracing::warn!(out_refund_no = ?refund.out_refund_no, ?error, "refund not accepted yet; it will be sent again");
            store
                .refund_upstream_failure(refund.id, false, error, now, self.first_check_at(now))
                .await
        };
        let refund = match result {
            Ok(accepted) => {
                if accepted.amount != refund.amount_fen {
                    tracing::error!(out_refund_no = ?refund.out_refund_no, accepted = ?accepted.amount, asked = ?refund.amount_fen, "WeChat Pay accepted a refund of another amount");
                }
                store
                    .refund_accepted(refund.id, accepted.refund_id, now, self.first_check_at(now))
                    .await?
            }
            Err(ProviderError::Refused {
                retry: Retry::Never,
                message,
                ..
            }) => {
                if refund.upstream == Upstream::Unknown {
                    // An earlier attempt had no answer and may have been accepted: a refusal
                    // now (a changed balance, a rate limit) proves nothing about it. Ask.
                    match self.sync_refund(provider, refund.clone()).await {
                        Ok((r, Synced::NotFound)) => {
                            store.refund_upstream_failure(r.id, true, message, now, now).await?
                        }
                        Ok((r, _)) => r,
                        Err(e) => retry_later(format!("{message}; refundquery: {e}")).await?,
                    }
                } else {
                    tracing::warn!(out_refund_no = ?refund.out_refund_no, refusal = ?message, "WeChat Pay refused a refund");
                    store
                        .refund_upstream_failure(refund.id, true, message, now, now)
                        .await?
                }
            }
            Err(e) => retry_later(e.to_string()).await?,
        };
        Ok(refund)
    }

    /// Asks WeChat Pay about a refund and applies what it says: that it was accepted (its
    /// refund id), and how it settled.
    pub(crate) async fn sync_refund(
        &self,
        provider: &dyn Provider,
        refund: Refund,
    ) -> Result<(Refund, Synced), ServiceError> {
        let answer = match provider.query_refund(&refund.out_refund_no).await {
            Ok(a) => a,
            Err(e) if e.refusal() == Some(Refusal::RefundNotExist) => return Ok((refund, Synced::NotFound)),
            Err(e) => return Err(ServiceError::upstream("refundquery", e)),
        };
        let Some(record) = answer.refunds.iter().find(|r| r.out_refund_no == refund.out_refund_no) else {
            return Ok((refund, Synced::NotFound));
        };
        let store = &self.inner.store;
        let now = self.now();
        let Some(succeeded) = record.state.settles() else {
            let next = self.first_check_at(now);
            let refund = if refund.upstream == Upstream::Created || refund.status != RefundStatus::Pending {
                refund
            } else {
                store
                    .refund_accepted(refund.id, record.refund_id.clone(), now, next)
                    .await?
            };
            return Ok((refund, Synced::Processing));
        };
        let result = settlement(
            &refund.merchant,
            &answer.out_trade_no,
            record,
            succeeded,
            Source::Query,
            now,
        );
        let said = format!(
            "refundquery says {} for {} fen of order {}",
            record.state.as_str(),
            record.amount,
            answer.out_trade_no
        );
        match store.apply_refund(result, None).await? {
            RefundOutcome::Applied(r) | RefundOutcome::AlreadySettled(r) => Ok((r, Synced::Settled)),
            RefundOutcome::Conflict(r) => {
                tracing::error!(out_refund_no = ?r.out_refund_no, status = %r.status, upstream = record.state.as_str(), "refundquery contradicts a settled refund");
                let why = format!("{said}, but the refund is recorded as {}", r.status);
                Ok((r, Synced::Contradicts(why)))
            }
            other => {
                tracing::error!(out_refund_no = ?refund.out_refund_no, verdict = %other.verdict(), "refundquery does not fit the stored refund");
                let why = format!("{said}, which does not fit the stored refund ({})", other.verdict());
                Ok((refund, Synced::Contradicts(why)))
            }
        }
    }

    /// One round of the refund checks: a refund not yet accepted is sent again (identical),
    /// an accepted one still pending is queried.
    pub(crate) async fn check_refund(&self, refund: Refund) {
        let store = &self.inner.store;
        let Some(provider) = self.merchant_named(&refund.merchant) else {
            tracing::warn!(merchant = ?refund.merchant, "a refund of a merchant no longer configured; not checked");
            let _ = store.schedule_refund_check(refund.id, None).await;
            return;
        };
        let next = crate::service::rules::next_check_at(&self.inner.config.jobs, refund.created_at, self.now());
        if refund.upstream != Upstream::Created {
            let order: Option<Order> = store
                .order(refund.merchant.clone(), refund.out_trade_no.clone())
                .await
                .ok()
                .flatten();
            let Some(order) = order else {
                let _ = store.schedule_refund_check(refund.id, Some(next)).await;
                return;
            };
            match self.submit(provider, refund.clone(), order.amount_fen).await {
                Ok(r) if r.status == RefundStatus::Pending && r.upstream != Upstream::Created => {
                    let _ = store.schedule_refund_check(r.id, Some(next)).await;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(out_refund_no = ?refund.out_refund_no, error = ?e, "sending a refund again failed");
                    let _ = store.schedule_refund_check(refund.id, Some(next)).await;
                }
            }
            return;
        }
        match self.sync_refund(provider, refund.clone()).await {
            Ok((r, _)) if r.status != RefundStatus::Pending => {
                tracing::info!(out_refund_no = ?r.out_refund_no, status = %r.status, "refund settled by a check");
            }
            Ok((r, _)) => {
                let _ = store.schedule_refund_check(r.id, Some(next)).await;
            }
            Err(e) => {
                tracing::warn!(out_refund_no = ?refund.out_refund_no, error = ?e, "refund check failed");
                let _ = store.schedule_refund_check(refund.id, Some(next)).await;
            }
        }
    }
}
