//! The console's state, held by the [`App`](crate::edge::app::App): its keys, the sessions
//! signed out, the failed sign-ins, and how its cookies are written.

use axum::http::{HeaderMap, HeaderValue};
use tokio::sync::{Mutex, Semaphore};

use super::page::cookie;
use super::session::{Attempts, Keys, Revoked, SESSION_COOKIE, Session};
use crate::config::ConsoleConfig;
use crate::store::Daily;
use crate::time::Millis;

/// The console's state: its keys, the sessions signed out, the failed sign-ins.
pub(crate) struct Console {
    pub(super) password_hash: String,
    pub(super) keys: Keys,
    pub(super) ttl: std::time::Duration,
    /// Unpaid orders link to the simulator's checkout on this address (`wxpay demo`).
    pub(super) simulator_checkout: bool,
    /// Cookies get `Secure` when the gateway is served over https.
    secure: bool,
    pub(super) revoked: Revoked,
    pub(super) attempts: Attempts,
    /// Password checks at once: each takes tens of milliseconds of a core.
    pub(super) checking: Semaphore,
    /// The dashboard's figures and when they were read: summing 30 days of orders takes tens
    /// of milliseconds at a million orders, so an overview reads them at most once a minute.
    pub(super) daily: Mutex<Option<(Millis, Millis, Vec<Daily>)>>,
}

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Console")
            .field("secure", &self.secure)
            .finish_non_exhaustive()
    }
}

impl Console {
    /// The console of `config`, for a gateway served at `public_url`.
    pub(crate) fn new(config: &ConsoleConfig, public_url: &str) -> Console {
        let hash = config.password_hash.expose().to_owned();
        Console {
            keys: Keys::new(&hash),
            password_hash: hash,
            ttl: config.session_ttl,
            simulator_checkout: config.simulator_checkout,
            secure: public_url.starts_with("https://"),
            revoked: Revoked::default(),
            attempts: Attempts::default(),
            checking: Semaphore::new(2),
            daily: Mutex::new(None),
        }
    }

    /// The session of a request, when it has one that holds.
    pub(super) fn session(&self, headers: &HeaderMap, now: i64) -> Option<Session> {
        let s = self.keys.session(cookie(headers, SESSION_COOKIE)?, now)?;
        (!self.revoked.contains(&s)).then_some(s)
    }

    pub(super) fn cookie(&self, name: &str, value: &str, max_age: i64) -> HeaderValue {
        let secure = if self.secure { "; Secure" } else { "" };
        HeaderValue::from_str(&format!(
            "{name}={value}; Path=/console; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}"
        ))
        .unwrap_or_else(|_| HeaderValue::from_static(""))
    }
}
