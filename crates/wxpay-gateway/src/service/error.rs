//! The core's one error enum. It knows no HTTP: the edge maps it to a status and a body in
//! one place (`edge/error.rs`).

use crate::provider::ProviderError;
use crate::store::StoreError;

/// A request the state of things refuses, by a stable code for programs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Conflict {
    /// The order is paid.
    OrderPaid,
    /// The order is no longer pending (closed, failed, refunded).
    OrderNotPending,
    /// The order number is taken by an order with other parameters.
    OutTradeNoTaken,
    /// Only a paid order can be refunded.
    OrderNotPaid,
    /// The refunds would exceed the order's amount.
    RefundExceedsAmount,
    /// The refund number is taken by a refund with other parameters.
    OutRefundNoTaken,
}

impl Conflict {
    /// The stable code clients see.
    pub fn code(self) -> &'static str {
        match self {
            Conflict::OrderPaid => "order_paid",
            Conflict::OrderNotPending => "order_not_pending",
            Conflict::OutTradeNoTaken => "out_trade_no_taken",
            Conflict::OrderNotPaid => "order_not_paid",
            Conflict::RefundExceedsAmount => "refund_exceeds_amount",
            Conflict::OutRefundNoTaken => "out_refund_no_taken",
        }
    }
}

/// Why the core could not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// A value breaks a rule (an amount, a merchant that is not configured).
    #[error("{0}")]
    Invalid(String),
    /// No such order or refund.
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with the state.
    #[error("{message}")]
    Conflict {
        /// Which conflict.
        kind: Conflict,
        /// For people.
        message: String,
    },
    /// WeChat Pay refused (the message says what it leaves: a new order failed, a placed one
    /// as it was).
    #[error("{0}")]
    Rejected(String),
    /// WeChat Pay did not answer, or asked to try later (the record says so; the request may
    /// be repeated).
    #[error("{0}")]
    Unavailable(String),
    /// This function needs configuration the gateway lacks (a merchant certificate).
    #[error("{0}")]
    NotConfigured(String),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A verified answer of WeChat Pay that lacks what it must carry.
    #[error("{api}: {source}")]
    Upstream {
        /// The call.
        api: &'static str,
        /// What the provider found (a provider's error, which is internal to the gateway).
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A value this gateway made itself breaks a rule of the protocol (a generated number,
    /// pay parameters): a bug, kept with the protocol's error.
    #[error(transparent)]
    Protocol(#[from] wxpay_protocol::Error),
    /// Something on our side that should not happen; the details are for the log.
    #[error("{0}")]
    Internal(String),
}

impl ServiceError {
    pub(crate) fn conflict(kind: Conflict, message: String) -> ServiceError {
        ServiceError::Conflict { kind, message }
    }

    /// A failed call named `api`: no answer, or a refusal to try again later (a rate limit),
    /// is [`ServiceError::Unavailable`]; a verified but incomplete answer
    /// [`ServiceError::Upstream`]; anything else [`ServiceError::Rejected`].
    pub(crate) fn upstream(api: &'static str, e: ProviderError) -> ServiceError {
        match e {
            ProviderError::NoAnswer(m) => ServiceError::Unavailable(format!("{api}: {m}")),
            // A refusal to try again later: an outage, as the circuit breaker counts it.
            e if e.is_outage() => ServiceError::Unavailable(format!("{api}: {e}")),
            ProviderError::Incomplete(_) => ServiceError::Upstream {
                api,
                source: Box::new(e),
            },
            _ => ServiceError::Rejected(format!("{api}: {e}")),
        }
    }
}
