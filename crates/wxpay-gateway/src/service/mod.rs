//! The gateway's core: orders, refunds, notifications, reconciliation and the background
//! work. It knows no HTTP: the edge (`crate::edge`) parses requests, calls it, and maps its
//! [`ServiceError`] to HTTP in one place. WeChat Pay is reached only through
//! [`crate::provider::Provider`]; the database only through [`crate::store::Store`].
//!
//! The modules here import `state` (the shared [`Service`]) and each other's functions, never
//! this file, so that the module graph has no cycle (a test checks it).

pub(crate) mod breaker;
pub(crate) mod error;
pub(crate) mod jobs;
pub(crate) mod notifications;
pub(crate) mod numbers;
pub(crate) mod orders;
pub mod reconcile;
pub(crate) mod refunds;
pub(crate) mod rejections;
pub(crate) mod rules;
pub(crate) mod state;

pub use error::{Conflict, ServiceError};
pub use jobs::Jobs;
pub use state::Service;
