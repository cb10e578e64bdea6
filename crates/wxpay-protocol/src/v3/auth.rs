//! Signatures both ways: the merchant signs requests (`Authorization`) and `wx.requestPayment`
//! parameters; WeChat Pay signs answers and notifications (`Wechatpay-*` headers), verified
//! over the raw body bytes.

use base64::Engine;

use super::keys::{Certificate, MerchantKey, PublicKey};
use crate::{AppId, Error, MchId, Nonce};

/// The scheme of `Authorization` and `Wechatpay-Signature-Type`.
pub const SCHEME: &str = "WECHATPAY2-SHA256-RSA2048";

/// How far `Wechatpay-Timestamp` may be from now, in seconds (a signature that old or older
/// is refused).
pub const MAX_SKEW_SECS: i64 = 300;

/// The prefix of the deliberately wrong signatures WeChat Pay sends now and then to check
/// that merchants verify.
pub const PROBE_PREFIX: &str = "WECHATPAY/SIGNTEST/";

/// The message a request's signature covers: `METHOD\nURL\nTIMESTAMP\nNONCE\nBODY\n`, where
/// `url` is the path with its query as sent and `body` the exact bytes sent (empty for GET).
pub fn request_message(method: &str, url: &str, timestamp: i64, nonce: &Nonce, body: &str) -> String {
    format!("{method}\n{url}\n{timestamp}\n{}\n{body}\n", nonce.as_str())
}

/// The `Authorization` header of a request by `mchid` signed with `key`.
///
/// # Errors
/// As [`MerchantKey::sign`].
pub fn authorization(
    mchid: &MchId,
    key: &MerchantKey,
    method: &str,
    url: &str,
    timestamp: i64,
    nonce: &Nonce,
    body: &str,
) -> Result<String, Error> {
    let signature = key.sign(request_message(method, url, timestamp, nonce, body).as_bytes())?;
    Ok(format!(
        "{SCHEME} mchid=\"{}\",nonce_str=\"{}\",signature=\"{signature}\",timestamp=\"{timestamp}\",serial_no=\"{}\"",
        mchid.as_str(),
        nonce.as_str(),
        key.serial_no()
    ))
}

/// `paySign` of `wx.requestPayment` with `signType: "RSA"`: the merchant's signature of
/// `appId\ntimeStamp\nnonceStr\nprepay_id=…\n`.
///
/// # Errors
/// As [`MerchantKey::sign`].
pub fn pay_sign(
    key: &MerchantKey,
    appid: &AppId,
    timestamp: u64,
    nonce: &Nonce,
    prepay_id: &str,
) -> Result<String, Error> {
    let message = format!(
        "{}\n{timestamp}\n{}\nprepay_id={prepay_id}\n",
        appid.as_str(),
        nonce.as_str()
    );
    key.sign(message.as_bytes())
}

/// The message an answer's or a notification's signature covers:
/// `TIMESTAMP\nNONCE\nBODY\n`, the body as the exact bytes sent (empty for a 204).
pub fn response_message(timestamp: &str, nonce: &str, body: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(timestamp.len() + nonce.len() + body.len() + 3);
    for part in [timestamp.as_bytes(), nonce.as_bytes(), body] {
        message.extend_from_slice(part);
        message.push(b'\n');
    }
    message
}

/// The `Wechatpay-*` headers of a signed answer or notification: what WeChat Pay sends, and
/// what the simulator and the tests that stand in for it make.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedHeaders {
    /// `Wechatpay-Timestamp`: Unix seconds.
    pub timestamp: String,
    /// `Wechatpay-Nonce`.
    pub nonce: String,
    /// `Wechatpay-Signature`: base64.
    pub signature: String,
    /// `Wechatpay-Serial`: the signing certificate's serial or the public key's id.
    pub serial: String,
}

impl SignedHeaders {
    /// Signs `body` at `timestamp` with `nonce`, as WeChat Pay signs its answers and
    /// notifications, with `key` named `serial`.
    ///
    /// # Errors
    /// [`Error::Invalid`] when the key cannot sign.
    pub fn sign(key: &MerchantKey, serial: &str, timestamp: i64, nonce: &str, body: &[u8]) -> Result<Self, Error> {
        let timestamp = timestamp.to_string();
        let signature = key.sign(&response_message(&timestamp, nonce, body))?;
        Ok(SignedHeaders {
            timestamp,
            nonce: nonce.to_owned(),
            signature,
            serial: serial.to_owned(),
        })
    }

    /// The five headers, as sent (`Wechatpay-Signature-Type` included).
    pub fn headers(&self) -> [(&'static str, String); 5] {
        [
            ("Wechatpay-Timestamp", self.timestamp.clone()),
            ("Wechatpay-Nonce", self.nonce.clone()),
            ("Wechatpay-Signature", self.signature.clone()),
            ("Wechatpay-Serial", self.serial.clone()),
            ("Wechatpay-Signature-Type", SCHEME.to_owned()),
        ]
    }
}

/// The `wx.requestPayment` parameters of an APIv3 order: `signType: "RSA"` and
/// [`pay_sign`]'s signature. The same five fields as APIv2's, so one type serves both.
///
/// # Errors
/// As [`MerchantKey::sign`].
pub fn pay_params(
    key: &MerchantKey,
    appid: &AppId,
    prepay_id: &str,
    timestamp: u64,
    nonce: &Nonce,
) -> Result<crate::v2::PayParams, Error> {
    Ok(crate::v2::PayParams {
        app_id: appid.as_str().to_owned(),
        time_stamp: timestamp.to_string(),
        nonce_str: nonce.as_str().to_owned(),
        package: format!("prepay_id={prepay_id}"),
        sign_type: "RSA".to_owned(),
        pay_sign: pay_sign(key, appid, timestamp, nonce, prepay_id)?,
    })
}

/// The `Wechatpay-*` headers of an answer or notification, as received.
#[derive(Clone, Copy, Debug)]
pub struct SignatureHeaders<'a> {
    /// `Wechatpay-Timestamp`.
    pub timestamp: &'a str,
    /// `Wechatpay-Nonce`.
    pub nonce: &'a str,
    /// `Wechatpay-Signature`.
    pub signature: &'a str,
    /// `Wechatpay-Serial`: a platform certificate's serial or a `PUB_KEY_ID_…`.
    pub serial: &'a str,
}

/// Why an answer or notification is not WeChat Pay's.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// A `Wechatpay-*` header is missing or empty.
    #[error("the header Wechatpay-{0} is missing")]
    Missing(&'static str),
    /// One of WeChat Pay's probes (`WECHATPAY/SIGNTEST/…`): refused, as WeChat Pay expects.
    #[error("a signature probe (WECHATPAY/SIGNTEST/): refused, as WeChat Pay expects")]
    Probe,
    /// `Wechatpay-Timestamp` is not a number of seconds.
    #[error("Wechatpay-Timestamp {0:?} is not a Unix time in seconds")]
    BadTimestamp(String),
    /// The timestamp is too far from now: a replay, or a wrong clock.
    #[error(
        "Wechatpay-Timestamp is {skew_secs} s from now (at most {MAX_SKEW_SECS} s is accepted): a replay, or a wrong clock"
    )]
    Stale {
        /// Now minus the timestamp, in seconds.
        skew_secs: i64,
    },
    /// No known key has this id: the platform certificates may need a refresh, or the
    /// configured WeChat Pay public key id is not the one WeChat Pay uses.
    #[error("no known platform certificate or WeChat Pay public key has serial {0:?}")]
    UnknownSerial(String),
    /// `Wechatpay-Signature` is not base64.
    #[error("Wechatpay-Signature is not base64")]
    NotBase64,
    /// The key named is a platform certificate past its expiry at the time of the check (its
    /// own, or the earlier one WeChat Pay's list gave): it verifies nothing, whatever its
    /// signature says.
    #[error(
        "the platform certificate {serial:?} expired at {not_after} (Unix seconds): it verifies nothing after that"
    )]
    Expired {
        /// The certificate's serial.
        serial: String,
        /// When it expired (Unix seconds): its own expiry, or the earlier one WeChat Pay's
        /// list gave.
        not_after: i64,
    },
    /// The signature does not match the key and the body: a forgery, or a body changed (or
    /// re-serialized) on its way.
    #[error("the signature does not match key {serial:?} and the body as received")]
    BadSignature {
        /// The key that was tried.
        serial: String,
    },
}

/// WeChat Pay's keys a merchant trusts, by id: platform certificates by serial, and the
/// WeChat Pay public key by its `PUB_KEY_ID_…`. Both kinds at once serve the switch-over from
/// certificates to the public key.
#[derive(Clone, Debug, Default)]
pub struct Verifier {
    keys: Vec<Trusted>,
}

/// One key a [`Verifier`] trusts.
#[derive(Clone, Debug)]
struct Trusted {
    /// The certificate's serial or the public key's id.
    id: String,
    key: PublicKey,
    /// The last second it verifies (Unix seconds): a certificate's expiry, checked at each
    /// verification so that one that expires while a process runs stops verifying then;
    /// `None` for the WeChat Pay public key, which has no expiry of its own. The start of a
    /// certificate's validity is not checked: a key the merchant configured or WeChat Pay's
    /// authenticated list gave is WeChat Pay's from the start, and what keeps a forger out
    /// is that a retired or expired key stops verifying.
    expires: Option<i64>,
}

impl Verifier {
    /// No key yet.
    pub fn new() -> Verifier {
        Verifier::default()
    }

    /// The ids of the keys trusted: certificate serials and public key ids.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|t| t.id.as_str())
    }

    /// The id of the trusted key, if any, whose signature over `message` `signature` is,
    /// whatever serial a message named: what the doctor asks when a signature does not
    /// verify with the key named.
    pub(super) fn signer(&self, message: &[u8], signature: &[u8]) -> Option<&str> {
        self.keys
            .iter()
            .find(|t| t.key.verifies(message, signature))
            .map(|t| t.id.as_str())
    }

    /// Trusts a platform certificate (by its serial number) until it expires.
    pub fn with_certificate(self, cert: &Certificate) -> Verifier {
        self.with_certificate_until(cert, cert.not_after())
    }

    /// Trusts a platform certificate until it expires or until `until` (Unix seconds),
    /// whichever is earlier: the expiry WeChat Pay's certificate list gives, which a rotation
    /// moves earlier than the certificate's own.
    pub fn with_certificate_until(mut self, cert: &Certificate, until: i64) -> Verifier {
        self.keys.push(Trusted {
            id: cert.serial_no().to_owned(),
            key: cert.public_key().clone(),
            expires: Some(until.min(cert.not_after())),
        });
        self
    }

    /// Trusts the WeChat Pay public key with id `id` (`PUB_KEY_ID_…`).
    pub fn with_public_key(mut self, id: &str, key: PublicKey) -> Verifier {
        self.keys.push(Trusted {
            id: id.to_owned(),
            key,
            expires: None,
        });
        self
    }

    /// Checks that `body` (the raw bytes as received) with `headers` is WeChat Pay's, at
    /// `now` (Unix seconds). The checks run in this order: the headers are there, a probe is
    /// refused, the timestamp is within [`MAX_SKEW_SECS`], the key is known and not expired at
    /// `now`, the signature matches.
    ///
    /// # Errors
    /// [`VerifyError`], which says which check failed.
    pub fn verify(&self, headers: &SignatureHeaders<'_>, body: &[u8], now: i64) -> Result<(), VerifyError> {
        for (name, value) in [
            ("Timestamp", headers.timestamp),
            ("Nonce", headers.nonce),
            ("Signature", headers.signature),
            ("Serial", headers.serial),
        ] {
            if value.is_empty() {
                return Err(VerifyError::Missing(name));
            }
        }
        if headers.signature.starts_with(PROBE_PREFIX) {
            return Err(VerifyError::Probe);
        }
        let timestamp: i64 = headers
            .timestamp
            .parse()
            .map_err(|_| VerifyError::BadTimestamp(headers.timestamp.chars().take(32).collect()))?;
        let skew_secs = now.saturating_sub(timestamp);
        if skew_secs.saturating_abs() >= MAX_SKEW_SECS {
            return Err(VerifyError::Stale { skew_secs });
        }
        let trusted = self
            .keys
            .iter()
            .find(|t| t.id.eq_ignore_ascii_case(headers.serial))
            .ok_or_else(|| VerifyError::UnknownSerial(headers.serial.chars().take(64).collect()))?;
        if let Some(not_after) = trusted.expires {
            if now > not_after {
                return Err(VerifyError::Expired {
                    serial: trusted.id.clone(),
                    not_after,
                });
            }
        }
        let signature = base64::engine::general_purpose::STANDARD
            .decode(headers.signature.as_bytes())
            .map_err(|_| VerifyError::NotBase64)?;
        let message = response_message(headers.timestamp, headers.nonce, body);
        if trusted.key.verifies(&message, &signature) {
            Ok(())
        } else {
            Err(VerifyError::BadSignature {
                serial: trusted.id.clone(),
            })
        }
    }
}
