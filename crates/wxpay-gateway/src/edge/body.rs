//! Reading requests: JSON bodies, paths and query strings. Each refusal is an [`ApiError`],
//! so that it has the JSON error body like every other answer; axum's own extractors would
//! answer in plain text.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use bytes::Bytes;
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::edge::error::ApiError;

/// Reads a JSON body; a yuan amount gets a message that says what is expected.
pub(crate) fn parse_json<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        let msg = e.to_string();
        match e.classify() {
            // Well-formed JSON with a wrong field: the request is understood but invalid.
            serde_json::error::Category::Data => {
                // Integers here are only amounts; a yuan amount ("1.50", 1.5) is the classic
                // mistake, so the message says what is expected.
                let hint = if msg.contains("amount_fen") || msg.contains("u64") || msg.contains("floating point") {
                    ": amount_fen is a positive integer number of fen (1 yuan = 100 fen)"
                } else {
                    ""
                };
                ApiError::Invalid(format!("{msg}{hint}"))
            }
            _ => ApiError::BadRequest(format!("the JSON body cannot be read: {msg}")),
        }
    })
}

/// The peer's address, which the server (`wxpay-http`) gives every request.
pub(crate) struct Peer(pub(crate) Option<SocketAddr>);

impl<S: Send + Sync> FromRequestParts<S> for Peer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Peer(parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0)))
    }
}

/// The request body, whole, up to the router's limit.
pub(crate) struct Body(pub(crate) Bytes);

impl<S: Send + Sync> FromRequest<S> for Body {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        Bytes::from_request(req, state).await.map(Body).map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::TooLarge
            } else {
                ApiError::BadRequest(e.body_text())
            }
        })
    }
}

/// The path's parameters, read into `T`.
pub(crate) struct Path<T>(pub(crate) T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| Path(p.0))
            .map_err(|e| ApiError::BadRequest(e.body_text()))
    }
}

/// The query string, read into `T`; a parameter of the wrong type is a request understood
/// but invalid.
pub(crate) struct Query<T>(pub(crate) T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::try_from_uri(&parts.uri)
            .map(|q| Query(q.0))
            .map_err(|e| ApiError::Invalid(e.body_text()))
    }
}
