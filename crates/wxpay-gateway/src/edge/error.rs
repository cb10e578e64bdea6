//! The API's errors and the one place they become HTTP.
//!
//! Every error body is `{"error": {"code", "message", "request_id"}}`. Internal details
//! (database messages, upstream bodies) go to the log with the request id, never to the client.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::service::error::ServiceError;

tokio::task_local! {
    /// The id of the request being served, for error bodies and logs.
    pub(crate) static REQUEST_ID: String;
}

/// The request id of the current request, when there is one.
pub(crate) fn current_request_id() -> Option<String> {
    REQUEST_ID.try_with(Clone::clone).ok()
}

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No or a wrong bearer token.
    #[error("a valid bearer token is required")]
    Unauthorized,
    /// The request cannot be read.
    #[error("{0}")]
    BadRequest(String),
    /// The request reads but a value breaks a rule.
    #[error("{0}")]
    Invalid(String),
    /// The request body is over the limit.
    #[error("the request body is larger than the gateway accepts")]
    TooLarge,
    /// No such thing.
    #[error("{0}")]
    NotFound(String),
    /// The path exists, not with this method.
    #[error("this method is not allowed on this path")]
    MethodNotAllowed,
    /// The request conflicts with the state (a reused key, a paid order, …).
    #[error("{message}")]
    Conflict {
        /// A stable code for programs.
        code: &'static str,
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
    /// The database is out of reach for now (see `StoreError::is_unavailable`); the details
    /// are in the log.
    #[error("the database is unavailable for now; try again shortly")]
    StoreUnavailable(String),
    /// Something on our side; the details are in the log.
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    fn parts(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::Invalid(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"),
            ApiError::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ApiError::Conflict { code, .. } => (StatusCode::CONFLICT, code),
            ApiError::Rejected(_) => (StatusCode::BAD_GATEWAY, "wechatpay_rejected"),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "wechatpay_unavailable"),
            ApiError::NotConfigured(_) => (StatusCode::SERVICE_UNAVAILABLE, "not_configured"),
            ApiError::StoreUnavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.parts().0
    }

    /// The JSON body.
    pub fn body(&self) -> ErrorBody {
        let (_, code) = self.parts();
        ErrorBody {
            error: ErrorDetail {
                code: code.to_owned(),
                message: self.to_string(),
                request_id: current_request_id(),
            },
        }
    }
}

/// The body of every error answer.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
#[schema(as = Error)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// What went wrong, for programs (`code`) and for people (`message`).
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// A stable code: `unauthorized`, `bad_request`, `invalid_request`, `too_large`, `not_found`,
    /// `method_not_allowed`; for a conflict `order_paid`, `order_not_pending`,
    /// `out_trade_no_taken`, `order_not_paid`, `refund_exceeds_amount`,
    /// `out_refund_no_taken`, `idempotency_key_reused` or `idempotency_in_progress`;
    /// `wechatpay_rejected`, `wechatpay_unavailable`, `not_configured`, `store_unavailable` or
    /// `internal`.
    pub code: String,
    /// What was wrong and what to do; never a secret or a stack trace.
    pub message: String,
    /// The id of the request, as in the `x-request-id` header and the log.
    pub request_id: Option<String>,
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        if e.is_unavailable() {
            ApiError::StoreUnavailable(e.to_string())
        } else {
            ApiError::Internal(e.to_string())
        }
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::Invalid(m) => ApiError::Invalid(m),
            ServiceError::NotFound(m) => ApiError::NotFound(m),
            ServiceError::Conflict { kind, message } => ApiError::Conflict {
                code: kind.code(),
                message,
            },
            ServiceError::Rejected(m) => ApiError::Rejected(m),
            ServiceError::Unavailable(m) => ApiError::Unavailable(m),
            ServiceError::NotConfigured(m) => ApiError::NotConfigured(m),
            ServiceError::Store(e) => ApiError::from(e),
            e @ (ServiceError::Upstream { .. } | ServiceError::Protocol(_)) => ApiError::Internal(e.to_string()),
            ServiceError::Internal(m) => ApiError::Internal(m),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match &self {
            ApiError::Internal(detail) => tracing::error!(error = ?detail, "internal error"),
            ApiError::StoreUnavailable(detail) => tracing::warn!(error = ?detail, "the database is unavailable"),
            _ => {}
        }
        (self.status(), Json(self.body())).into_response()
    }
}
