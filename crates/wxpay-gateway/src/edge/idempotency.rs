//! `Idempotency-Key`: a creating request run once, its answer kept for the key and given
//! again to a repetition with the same body.
//!
//! A key belongs to its request's owner token, renewed while the request runs; one left
//! unrenewed for the lease is taken over by an identical retry, and the old owner can then
//! neither answer nor release it. The answers kept are HTTP answers, which is why this is the
//! edge's work and not the core's.

use std::future::Future;
use std::time::Duration;

use axum::Json;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use tracing::Instrument;

use crate::edge::app::App;
use crate::edge::error::{ApiError, REQUEST_ID, current_request_id};
use crate::service::numbers::Numbers;
use crate::store::{IdemClaim, IdemKey};

/// The `Idempotency-Key` header of the creating calls, as the API document describes it.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)] // Only described: the header is read by `idempotent`.
pub(crate) struct IdempotencyKey {
    /// 1 to 255 ASCII characters of your choice. A repetition with the same key and body
    /// gets the first answer again; the same key with another body is refused (409). Keys
    /// belong to the bearer token that used them.
    #[param(rename = "Idempotency-Key", required = false, min_length = 1, max_length = 255)]
    idempotency_key: String,
}

/// The scope of a token for idempotency keys: a digest, never the token itself.
#[derive(Clone, Debug)]
pub(crate) struct TokenScope(pub(crate) String);

/// How long a request's hold on its `Idempotency-Key` lasts without being renewed. The
/// request renews it every third of this while it runs, so only a request whose process died
/// (or that could not record its answer) loses its key, to a retry with the same body.
pub(crate) const IDEMPOTENCY_LEASE: Duration = Duration::from_secs(60);

/// Runs `fut` on a task of its own, in the request's span and with its request id, and waits
/// for it: when the client goes away and the handler is dropped, the work (an order stored and
/// sent to WeChat Pay, its answer recorded for the key) still runs to its end, and shutdown
/// waits for it ([`App::finish_requests`]).
async fn detached<T: Send + 'static>(
    app: &App,
    fut: impl Future<Output = Result<T, ApiError>> + Send + 'static,
) -> Result<T, ApiError> {
    let request_id = current_request_id();
    let running = app.detached.start();
    let task = async move {
        let result = match request_id {
            Some(id) => REQUEST_ID.scope(id, fut).await,
            None => fut.await,
        };
        drop(running);
        result
    };
    tokio::spawn(task.instrument(tracing::Span::current()))
        .await
        .map_err(|e| ApiError::Internal(format!("the request's task ended abnormally: {e}")))?
}

/// An answer under an `Idempotency-Key`: made now, or the one kept for the key.
enum Answer {
    Made(StatusCode, serde_json::Value),
    Kept(u16, String),
}

/// What a request gets when another request holds its key (`theirs`, the digest of that
/// request's body; `kept`, its answer if it has one): that answer for the same body, a 409 for
/// another body or while the first one still runs.
fn held_by_another(theirs: &str, ours: &str, kept: Option<(u16, String)>) -> Result<Answer, ApiError> {
    if theirs != ours {
        return Err(ApiError::Conflict {
            code: "idempotency_key_reused",
            message: "this Idempotency-Key was used with another request body".into(),
        });
    }
    match kept {
        Some((status, response)) => Ok(Answer::Kept(status, response)),
        None => Err(ApiError::Conflict {
            code: "idempotency_in_progress",
            message: "a request with this Idempotency-Key is still running; retry later".into(),
        }),
    }
}

/// Runs a request that creates something under its `Idempotency-Key`, when it has one: the
/// first request with a key runs `run`; a later one with the same key and the same request
/// digest gets the first one's answer, with another digest a 409. `run` is not started when
/// an earlier answer is given. The claim, `run` and the recording of its answer happen on a
/// task of their own, so they finish even if the client goes away; while `run` runs, its hold
/// on the key is renewed, and an answer it can no longer record (the key was taken over) is
/// not recorded.
pub(crate) async fn idempotent<F, R>(
    app: &App,
    scope: String,
    headers: &HeaderMap,
    request_hash: String,
    run: F,
) -> Result<Response, ApiError>
where
    F: FnOnce(Numbers) -> R + Send + 'static,
    R: Future<Output = Result<(StatusCode, serde_json::Value), ApiError>> + Send + 'static,
{
    let key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => {
            let k = v
                .to_str()
                .map_err(|_| ApiError::BadRequest("Idempotency-Key must be ASCII".into()))?;
            if k.is_empty() || k.len() > 255 {
                return Err(ApiError::BadRequest(
                    "Idempotency-Key must have 1 to 255 characters".into(),
                ));
            }
            Some(k.to_owned())
        }
    };
    let Some(key) = key else {
        let (status, body) = detached(app, run(Numbers::random())).await?;
        return Ok((status, Json(body)).into_response());
    };
    let owned = app.clone();
    let answer = detached(app, async move {
        let app = owned;
        let store = app.store().clone();
        let hash = request_hash;
        let k = IdemKey {
            scope,
            key,
            owner: crate::util::random_hex::<16>(),
        };
        let created_at = match store.idem_claim(k.clone(), hash.clone(), app.now(), IDEMPOTENCY_LEASE).await? {
            IdemClaim::Claimed { created_at } => created_at,
            IdemClaim::InProgress { request_hash } => return held_by_another(&request_hash, &hash, None),
            IdemClaim::Done {
                request_hash,
                status,
                response,
            } => return held_by_another(&request_hash, &hash, Some((status, response))),
        };
        let numbers = Numbers::from_key(k.scope.clone(), k.key.clone(), created_at);
        let mut running = std::pin::pin!(run(numbers));
        let result = loop {
            tokio::select! {
                result = &mut running => break result,
                () = tokio::time::sleep(IDEMPOTENCY_LEASE / 3) => {
                    match store.idem_renew(k.clone(), app.now()).await {
                        Ok(true) => {}
                        Ok(false) => tracing::error!("this request's Idempotency-Key was taken over; its answer will not be kept"),
                        Err(e) => tracing::warn!(error = ?e, "cannot renew an Idempotency-Key"),
                    }
                }
            }
        };
        let kept = match &result {
            // A definite answer is kept for the key; an answer that depended on WeChat Pay not
            // answering is not, so that the same request can be tried again.
            Ok((status, body)) => store.idem_finish(k, status.as_u16(), body.to_string()).await?,
            Err(ApiError::Unavailable(_) | ApiError::Internal(_)) => {
                store.idem_release(k).await?;
                true
            }
            Err(e) => store.idem_finish(k, e.status().as_u16(), serde_json::to_string(&e.body()).unwrap_or_default()).await?,
        };
        if !kept {
            tracing::error!("an answer was not kept for its Idempotency-Key: a retry took the key over");
        }
        let (status, body) = result?;
        Ok(Answer::Made(status, body))
    })
    .await?;
    Ok(match answer {
        Answer::Made(status, body) => (status, Json(body)).into_response(),
        Answer::Kept(status, response) => (
            StatusCode::from_u16(status).unwrap_or(StatusCode::OK),
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            response,
        )
            .into_response(),
    })
}
