//! `jscode2session`: turning the `code` of `wx.login` into the user's `openid`.
//!
//! The call is a GET on the WeChat API host (`api.weixin.qq.com`), not on the payment host,
//! and answers JSON. WeChat answers errors with HTTP 200 and an `errcode`; callers must match
//! on the code, never on `errmsg`.

use std::fmt;

use crate::{AppId, AppSecret, Error};

/// The path of the call.
pub const JSCODE2SESSION_PATH: &str = "/sns/jscode2session";

/// `GET /sns/jscode2session`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Code2Session {
    /// The mini program's AppID.
    pub appid: AppId,
    /// The mini program's AppSecret.
    pub secret: AppSecret,
    /// The `code` from `wx.login`: valid five minutes, usable once.
    pub js_code: String,
}

impl Code2Session {
    /// Checks the code and builds the call.
    ///
    /// # Errors
    /// [`Error::Invalid`] for an empty or implausible code (over 128 characters or with
    /// characters a `wx.login` code never has).
    pub fn new(appid: AppId, secret: AppSecret, js_code: impl Into<String>) -> Result<Code2Session, Error> {
        let js_code = js_code.into();
        if js_code.is_empty()
            || js_code.len() > 128
            || !js_code
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
        {
            return Err(Error::invalid(
                "code",
                "a wx.login code is 1 to 128 ASCII letters, digits, `-` or `_`",
            ));
        }
        Ok(Code2Session { appid, secret, js_code })
    }

    /// The path and query to GET. It contains the AppSecret: never log it.
    pub fn path_and_query(&self) -> String {
        format!(
            "{JSCODE2SESSION_PATH}?appid={}&secret={}&js_code={}&grant_type=authorization_code",
            self.appid.as_str(),
            self.secret.expose(),
            self.js_code
        )
    }

    /// Reads the JSON answer.
    ///
    /// # Errors
    /// [`Error::Sns`] when WeChat answered an `errcode` (`40029` invalid code, `40163` code
    /// already used, `45011` rate limit, `40226` blocked user, `-1` busy), [`Error::Json`] or
    /// [`Error::MissingField`] for an answer that is not what WeChat sends.
    pub fn decode(body: &[u8]) -> Result<Session, Error> {
        #[derive(serde::Deserialize)]
        struct Raw {
            openid: Option<String>,
            session_key: Option<String>,
            unionid: Option<String>,
            errcode: Option<i64>,
            errmsg: Option<String>,
        }
        let raw: Raw = serde_json::from_slice(body).map_err(|e| Error::Json(e.to_string()))?;
        if let Some(code) = raw.errcode.filter(|c| *c != 0) {
            return Err(Error::Sns {
                errcode: code,
                errmsg: raw.errmsg.unwrap_or_default(),
            });
        }
        let openid = raw
            .openid
            .filter(|o| !o.is_empty())
            .ok_or_else(|| Error::MissingField("openid".into()))?;
        Ok(Session {
            openid,
            session_key: SessionKey(raw.session_key.unwrap_or_default()),
            unionid: raw.unionid.filter(|u| !u.is_empty()),
        })
    }
}

/// What `jscode2session` returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    /// The user's openid under this mini program.
    pub openid: String,
    /// The session key: a secret, never returned to the mini program or logged.
    pub session_key: SessionKey,
    /// The user's unionid, when the mini program is bound to an open platform account.
    pub unionid: Option<String>,
}

/// A `session_key`; `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionKey(String);

impl SessionKey {
    /// The key itself. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionKey(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call() -> Code2Session {
        Code2Session::new(
            AppId::new("wxd678efh567hg6787").unwrap(),
            AppSecret::new("0123456789abcdef0123456789abcdef").unwrap(),
            "081abc-_Z",
        )
        .unwrap()
    }

    #[test]
    fn the_query_carries_the_code_and_grant_type() {
        assert_eq!(
            call().path_and_query(),
            "/sns/jscode2session?appid=wxd678efh567hg6787&secret=0123456789abcdef0123456789abcdef&js_code=081abc-_Z&grant_type=authorization_code"
        );
        assert!(!format!("{:?}", call()).contains("0123456789abcdef"));
        assert!(Code2Session::new(AppId::new("wx1").unwrap(), AppSecret::new("s").unwrap(), "a&b=c").is_err());
    }

    #[test]
    fn answers_and_errcodes_are_typed() {
        let s = Code2Session::decode(
            br#"{"openid":"oUpF8uMuAJO_M2pxb1Q9zNjWeS6o","session_key":"tiihtNczf5v6AKRyjwEUhQ=="}"#,
        )
        .unwrap();
        assert_eq!(s.openid, "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o");
        assert_eq!(format!("{:?}", s.session_key), "SessionKey(<redacted>)");
        let e =
            Code2Session::decode(br#"{"errcode":40163,"errmsg":"code been used, rid: 6166f719-6cb5d09c-633ab469"}"#)
                .unwrap_err();
        assert!(matches!(e, Error::Sns { errcode: 40163, .. }));
        assert!(Code2Session::decode(br#"{"errcode":0,"openid":"o1","session_key":"k"}"#).is_ok());
        assert!(matches!(Code2Session::decode(b"<html>"), Err(Error::Json(_))));
        assert!(matches!(Code2Session::decode(b"{}"), Err(Error::MissingField(_))));
    }
}
