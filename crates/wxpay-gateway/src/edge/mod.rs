//! The HTTP edge: the router and its middleware (request ids, bearer tokens), the `/v1`,
//! `/notify` and health handlers. Handlers parse requests, call the core
//! ([`crate::service`]), and turn its answers into HTTP; errors become HTTP in one place
//! (`error.rs`).

pub(crate) mod app;
mod body;
pub(crate) mod console;
pub(crate) mod error;
mod html;
mod idempotency;
mod inflight;
mod notify;
mod orders;
mod reference;
mod refunds;
mod router;

pub use app::{App, serve, serve_router};
pub use error::ApiError;
