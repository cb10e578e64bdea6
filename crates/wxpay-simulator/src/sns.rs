//! `jscode2session` and the login helper that stands in for `wx.login`.
//!
//! `POST /simulator/login {appid, user}` gives a one-time code, valid five minutes, as
//! `wx.login` does; `GET /sns/jscode2session` turns it into an `openid` that is stable per
//! (appid, user). Errors are WeChat's: HTTP 200 with `errcode` and an `errmsg` ending in a
//! request id.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use serde::Deserialize;

use crate::faults::FaultKind;
use crate::{Simulator, ids};

/// How long a login code lives (`wx.login`: five minutes).
const CODE_LIFETIME: Duration = Duration::from_secs(300);
/// Codes kept at most; the oldest go first.
const MAX_CODES: usize = 100_000;
/// Session keys remembered at most, for [`Simulator::session_keys`]; the oldest go first.
const MAX_SESSION_KEYS: usize = 10_000;

struct Code {
    appid: String,
    user: String,
    issued: Instant,
    used: bool,
}

/// The login codes handed out, and the session keys they were redeemed for.
#[derive(Default)]
pub(crate) struct Logins {
    codes: Mutex<HashMap<String, Code>>,
    /// The latest session keys issued, oldest first: a test of a client (the gateway) lists
    /// them to check that none reaches its logs, answers or database.
    session_keys: Mutex<std::collections::VecDeque<String>>,
}

impl Logins {
    fn remember(&self, session_key: &str) {
        let mut keys = self.session_keys.lock().unwrap_or_else(|e| e.into_inner());
        if keys.len() >= MAX_SESSION_KEYS {
            keys.pop_front();
        }
        keys.push_back(session_key.to_owned());
    }

    /// The session keys issued, oldest first (the latest [`MAX_SESSION_KEYS`]).
    pub(crate) fn session_keys(&self) -> Vec<String> {
        let keys = self.session_keys.lock().unwrap_or_else(|e| e.into_inner());
        keys.iter().cloned().collect()
    }

    fn issue(&self, appid: &str, user: &str) -> String {
        let code = format!("0{}", ids::random_alnum(31));
        let mut codes = self.codes.lock().unwrap_or_else(|e| e.into_inner());
        if codes.len() >= MAX_CODES {
            let now = Instant::now();
            codes.retain(|_, c| now.duration_since(c.issued) < CODE_LIFETIME);
            if codes.len() >= MAX_CODES {
                codes.clear();
            }
        }
        codes.insert(
            code.clone(),
            Code {
                appid: appid.to_owned(),
                user: user.to_owned(),
                issued: Instant::now(),
                used: false,
            },
        );
        code
    }

    /// Redeems a code for `appid`: `Ok(user)`, or WeChat's errcode and message.
    fn redeem(&self, appid: &str, code: &str) -> Result<String, (i64, &'static str)> {
        let mut codes = self.codes.lock().unwrap_or_else(|e| e.into_inner());
        let Some(c) = codes.get_mut(code) else {
            return Err((40029, "invalid code"));
        };
        if c.appid != appid || c.issued.elapsed() >= CODE_LIFETIME {
            return Err((40029, "invalid code"));
        }
        if c.used {
            return Err((40163, "code been used"));
        }
        c.used = true;
        Ok(c.user.clone())
    }
}

/// The openid of `user` under `appid`: stable, 28 characters, shaped like WeChat's.
///
/// Its last ten characters are a digest of the appid and the rest, so that the simulator
/// can tell, without remembering anything and across restarts, whether an openid is one it
/// issued for that app: WeChat Pay refuses to charge an openid of another app ("appid和openid
/// 不匹配"), the classic failure of a real integration. This is a check, not a secret.
pub fn openid(appid: &str, user: &str) -> String {
    let d = ring::digest::digest(
        &ring::digest::SHA256,
        format!("wxpay-simulator:{appid}:{user}").as_bytes(),
    );
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(d.as_ref());
    let id = &b64[..17];
    format!("o{id}{}", openid_tag(appid, id))
}

fn openid_tag(appid: &str, id: &str) -> String {
    let d = ring::digest::digest(
        &ring::digest::SHA256,
        format!("wxpay-simulator-openid:{appid}:{id}").as_bytes(),
    );
    let mut tag = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(d.as_ref());
    tag.truncate(10);
    tag
}

/// Whether the simulator issues `openid` under `appid` (see [`openid`]).
pub fn openid_issued_for(appid: &str, openid: &str) -> bool {
    let Some(rest) = openid.strip_prefix('o') else {
        return false;
    };
    if rest.len() != 27 || !rest.is_ascii() {
        return false;
    }
    let (id, tag) = rest.split_at(17);
    // Not a secret (anyone can compute the tag), so an ordinary comparison is fine.
    openid_tag(appid, id) == tag
}

fn rid() -> String {
    let r = ids::random_u64();
    format!(
        "{:08x}-{:08x}-{:08x}",
        r >> 32,
        r & 0xffff_ffff,
        ids::random_u64() >> 32
    )
}

fn errcode(code: i64, msg: &str) -> Response {
    Json(serde_json::json!({ "errcode": code, "errmsg": format!("{msg}, rid: {}", rid()) })).into_response()
}

#[derive(Deserialize)]
struct Code2SessionQuery {
    appid: Option<String>,
    secret: Option<String>,
    js_code: Option<String>,
    grant_type: Option<String>,
}

async fn jscode2session(State(sim): State<Simulator>, Query(q): Query<Code2SessionQuery>) -> Response {
    const API: usize = 6;
    let metrics = &sim.inner.metrics;
    if let Some(hit) = sim.inner.faults.take_call("jscode2session", None) {
        metrics.fault(hit.kind);
        match hit.kind {
            FaultKind::SystemError => {
                metrics.request(API, 1);
                return errcode(-1, "system error");
            }
            FaultKind::FrequencyLimited => {
                metrics.request(API, 1);
                return errcode(45011, "api minute-quota reach limit");
            }
            FaultKind::Delay => tokio::time::sleep(hit.delay).await,
            _ => {}
        }
    }
    let appid = q.appid.unwrap_or_default();
    let app = sim
        .inner
        .merchants
        .iter()
        .flat_map(|m| m.apps.iter())
        .find(|(a, _)| a.as_str() == appid);
    let result = match app {
        None => Err((40013, "invalid appid")),
        Some((_, secret)) if q.secret.as_deref() != Some(secret.expose()) => Err((40125, "invalid appsecret")),
        Some(_) if q.grant_type.as_deref() != Some("authorization_code") => Err((40002, "invalid grant_type")),
        Some(_) => match q.js_code.as_deref() {
            None | Some("") => Err((41008, "missing code")),
            Some(code) => sim.inner.logins.redeem(&appid, code),
        },
    };
    match result {
        Ok(user) => {
            metrics.request(API, 0);
            let key = base64::engine::general_purpose::STANDARD.encode(ids::random_u64().to_le_bytes().repeat(2));
            sim.inner.logins.remember(&key);
            Json(serde_json::json!({ "openid": openid(&appid, &user), "session_key": key })).into_response()
        }
        Err((code, msg)) => {
            metrics.request(API, 1);
            errcode(code, msg)
        }
    }
}

#[derive(Deserialize)]
struct LoginRequest {
    appid: String,
    user: String,
}

async fn login(State(sim): State<Simulator>, Json(req): Json<LoginRequest>) -> Response {
    let known = sim.inner.merchants.iter().any(|m| m.has_app(&req.appid));
    if !known || req.user.is_empty() || req.user.len() > 128 {
        return (
            StatusCode::BAD_REQUEST,
            [(header::CONTENT_TYPE, "application/json")],
            serde_json::json!({"error": {"code": "invalid_request", "message": "appid must be a mini program of a configured merchant, user 1 to 128 characters"}}).to_string(),
        )
            .into_response();
    }
    let code = sim.inner.logins.issue(&req.appid, &req.user);
    Json(serde_json::json!({ "code": code, "expires_in": CODE_LIFETIME.as_secs() })).into_response()
}

pub(crate) fn router() -> Router<Simulator> {
    Router::new()
        // WeChat answers a POST as it answers a GET (the query carries the parameters): 200
        // with the session or an errcode, never an empty 405.
        .route("/sns/jscode2session", get(jscode2session).post(jscode2session))
        .route("/simulator/login", post(login))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openids_are_stable_per_app_and_user() {
        let a = openid("wx1", "alice");
        assert_eq!(a, openid("wx1", "alice"));
        assert_ne!(a, openid("wx2", "alice"));
        assert_ne!(a, openid("wx1", "bob"));
    }

    #[test]
    fn an_openid_is_recognised_under_its_own_app_only() {
        let a = openid("wx1", "alice");
        assert!(openid_issued_for("wx1", &a));
        assert!(!openid_issued_for("wx2", &a), "an openid of another app");
        assert!(
            !openid_issued_for("wx1", "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"),
            "one the simulator never issued"
        );
        assert!(!openid_issued_for("wx1", "x"));
        assert!(!openid_issued_for("wx1", &a[..27]));
        assert_eq!(a.len(), 28);
    }

    #[test]
    fn a_code_works_once_and_only_for_its_app() {
        let l = Logins::default();
        let code = l.issue("wx1", "alice");
        assert_eq!(l.redeem("wx2", &code), Err((40029, "invalid code")));
        assert_eq!(l.redeem("wx1", &code), Ok("alice".into()));
        assert_eq!(l.redeem("wx1", &code), Err((40163, "code been used")));
        assert_eq!(l.redeem("wx1", "nope"), Err((40029, "invalid code")));
    }
}
