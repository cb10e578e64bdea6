//! The APIv3 doctor: why a notification (or an answer) does not verify or does not decrypt,
//! found by reproducing the received signature under the mistakes merchants make: a body
//! re-serialized by a framework (pretty-printed, a line break added, CRLF), the key of the
//! other kind (the WeChat Pay public key against a certificate's serial), a clock off, a
//! probe, the APIv2 key or another merchant's APIv3 key for the resource.

use std::fmt;

use base64::Engine;

use super::auth::{MAX_SKEW_SECS, PROBE_PREFIX, SignatureHeaders, Verifier, VerifyError};
use super::notify::{Envelope, NotifyError};

/// What the doctor found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// Whether the signature verifies (and, when a key was given, the resource decrypts).
    pub verified: bool,
    /// The first line: OK or FAILED and the check that failed.
    pub headline: String,
    /// Explanations that reproduce what was received.
    pub confirmed: Vec<String>,
    /// Other things to check.
    pub hints: Vec<String>,
    /// The decrypted resource, when it decrypted.
    pub resource: Option<String>,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", self.headline)?;
        if !self.confirmed.is_empty() {
            writeln!(f, "\nCause (confirmed: it reproduces the received signature):")?;
            for c in &self.confirmed {
                writeln!(f, "  - {c}")?;
            }
        }
        if !self.hints.is_empty() {
            writeln!(f, "\nOther things to check:")?;
            for h in &self.hints {
                writeln!(f, "  - {h}")?;
            }
        }
        if let Some(r) = &self.resource {
            writeln!(f, "\nThe decrypted resource:\n{r}")?;
        }
        Ok(())
    }
}

/// The message the signature covers.
fn message(headers: &SignatureHeaders<'_>, body: &[u8]) -> Vec<u8> {
    super::auth::response_message(headers.timestamp, headers.nonce, body)
}

/// JSON with the whitespace outside strings removed, the keys left in their order: what a
/// pretty-printed body was before a framework re-serialized it.
fn minified(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len());
    let (mut in_string, mut escaped) = (false, false);
    for &b in body {
        if in_string {
            out.push(b);
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else if !b.is_ascii_whitespace() {
            if b == b'"' {
                in_string = true;
            }
            out.push(b);
        }
    }
    out
}

/// Diagnoses `body` with `headers` (as received) against the keys of `verifier` at `now`
/// (Unix seconds); with `api_v3_key`, the resource of a notification is decrypted too.
pub fn diagnose(
    headers: &SignatureHeaders<'_>,
    body: &[u8],
    verifier: &Verifier,
    now: i64,
    api_v3_key: Option<&[u8]>,
) -> Report {
    let mut report = Report {
        verified: false,
        headline: String::new(),
        confirmed: Vec::new(),
        hints: Vec::new(),
        resource: None,
    };
    let known: Vec<&str> = verifier.ids().collect();
    match verifier.verify(headers, body, now) {
        Ok(()) => {
            report.verified = true;
            report.headline = format!(
                "OK: the signature verifies with key {} (signed {} s ago).",
                headers.serial,
                now - headers.timestamp.parse::<i64>().unwrap_or(now)
            );
        }
        Err(e) => {
            report.headline = format!("FAILED: {e}.");
            let signature = base64::engine::general_purpose::STANDARD.decode(headers.signature.as_bytes());
            match &e {
                VerifyError::Missing(name) => report.hints.push(format!(
                    "give the header Wechatpay-{name} exactly as received; WeChat Pay sends Wechatpay-Timestamp, -Nonce, -Signature and -Serial with every notification and answer (a proxy or framework may have dropped it)"
                )),
                VerifyError::Probe => report.confirmed.push(format!(
                    "this is one of WeChat Pay's signature probes ({PROBE_PREFIX}…): it is sent now and then to check that merchants verify. Refusing it (4xx or 5xx) is right; WeChat Pay sends the genuine notification again"
                )),
                VerifyError::Stale { skew_secs } => {
                    if let Ok(sig) = &signature {
                        if let Some(id) = verifier.signer(&message(headers, body), sig) {
                            report.confirmed.push(format!(
                                "the signature itself is genuine (it verifies with {id}), but it was made {} s {} now, beyond the {MAX_SKEW_SECS} s allowed: a notification saved earlier (check it as at its time: --at {}), a replay, or this machine's clock is off (check NTP)",
                                skew_secs.unsigned_abs(),
                                if *skew_secs >= 0 { "before" } else { "after" },
                                headers.timestamp
                            ));
                        }
                    }
                    if report.confirmed.is_empty() {
                        report
                            .hints
                            .push("the clock of this machine (NTP), or a notification kept and sent again later".into());
                    }
                }
                VerifyError::UnknownSerial(serial) => {
                    let kind = if serial.starts_with("PUB_KEY_ID_") {
                        "a WeChat Pay public key (pub_key.pem from the merchant platform, with this id)"
                    } else {
                        "a platform certificate (download the list from /v3/certificates, or configure it)"
                    };
                    let given = if known.is_empty() {
                        "no key".to_owned()
                    } else {
                        format!("only {}", known.join(", "))
                    };
                    let other_kind = known.iter().any(|k| k.starts_with("PUB_KEY_ID_")) != serial.starts_with("PUB_KEY_ID_");
                    report.hints.push(if other_kind {
                        format!(
                            "it names {kind}, but you gave {given}, of the other kind: during the switch from platform certificates to the public key WeChat Pay uses either, so configure both"
                        )
                    } else {
                        format!(
                            "it names {kind} you did not give (you gave {given}): a new certificate after a rotation (download the list again), another merchant's key, or an id copied wrong"
                        )
                    });
                }
                VerifyError::NotBase64 => report
                    .hints
                    .push("Wechatpay-Signature was changed on its way (it must be base64 as received)".into()),
                VerifyError::BadTimestamp(_) => report
                    .hints
                    .push("Wechatpay-Timestamp must be the Unix seconds as received".into()),
                VerifyError::BadSignature { serial } => {
                    if let Ok(sig) = &signature {
                        explain_bad_signature(&mut report, headers, body, verifier, serial, sig);
                    }
                }
            }
        }
    }
    if let Some(key) = api_v3_key {
        explain_decryption(&mut report, body, key);
    }
    report
}

fn explain_bad_signature(
    report: &mut Report,
    headers: &SignatureHeaders<'_>,
    body: &[u8],
    verifier: &Verifier,
    serial: &str,
    signature: &[u8],
) {
    // Another key of those given.
    if let Some(id) = verifier.signer(&message(headers, body), signature) {
        report.confirmed.push(format!(
            "it is signed with {id}, not with the key of the serial it names ({serial}): the key files are swapped (pub_key.pem against the certificate's serial, or two merchants' files)"
        ));
        return;
    }
    // The body as a framework may have changed it.
    // The narrowest change first, so that the explanation is the most precise one.
    let mut candidates: Vec<(&str, Vec<u8>)> = Vec::new();
    if let Some(b) = body.strip_suffix(b"\n") {
        candidates.push(("given a line break at its end", b.to_vec()));
    }
    if body.windows(2).any(|w| w == b"\r\n") {
        let lf: Vec<u8> = String::from_utf8_lossy(body).replace("\r\n", "\n").into_bytes();
        candidates.push(("given CRLF line breaks", lf));
    }
    candidates.push(("pretty-printed or reformatted (the whitespace differs)", minified(body)));
    for (what, candidate) in candidates {
        if candidate != body && verifier.signer(&message(headers, &candidate), signature).is_some() {
            report.confirmed.push(format!(
                "the body was {what} after it was received: WeChat Pay signs the exact bytes it sends, so verify the raw body before any framework parses or re-encodes it"
            ));
            return;
        }
    }
    report.hints.push(
        "the body or a header was changed on its way (a proxy, a logging middleware that re-encodes JSON, a reordered key), or this is a forgery: verify the raw bytes as received".into(),
    );
    report.hints.push(format!(
        "the key: {serial} must be WeChat Pay's (the platform certificate or pub_key.pem), never your own apiclient_cert.pem"
    ));
}

/// Decrypts a notification's resource with `key`, or says why it does not open.
///
/// # Errors
/// The explanation, for people.
pub fn open(body: &[u8], key: &[u8]) -> Result<String, String> {
    let envelope = Envelope::read(body)
        .map_err(|e| format!("the body is not a notification envelope, so there is nothing to decrypt ({e})"))?;
    match envelope.decrypt(key) {
        Ok(plain) => Ok(String::from_utf8_lossy(&plain).into_owned()),
        Err(NotifyError::Decrypt(super::aead::AeadError::KeyLength(n))) => Err(format!(
            "the APIv3 key has {n} bytes; it is exactly 32 (APIv3密钥, set in the merchant platform; not the APIv2 key, not the AppSecret)"
        )),
        Err(NotifyError::Decrypt(super::aead::AeadError::Tag)) => Err("the resource does not open with this APIv3 key: another merchant's key, the APIv2 key given instead (both are 32 characters), a key reset in the merchant platform since, or a ciphertext, nonce or associated_data changed on its way".to_owned()),
        Err(other) => Err(other.to_string()),
    }
}

fn explain_decryption(report: &mut Report, body: &[u8], key: &[u8]) {
    match open(body, key) {
        Ok(plain) => report.resource = Some(plain),
        Err(why) => {
            // Only when the signature verified is the decryption the cause; otherwise it is
            // one more thing to look at.
            if report.verified {
                report.verified = false;
                report.headline = format!(
                    "FAILED: the signature verifies, but the resource does not decrypt. ({})",
                    report.headline.trim_start_matches("OK: ")
                );
                report.confirmed.push(why);
            } else {
                report
                    .hints
                    .push(format!("the resource does not decrypt either: {why}"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minifying_keeps_strings_and_key_order() {
        assert_eq!(
            minified(b"{\n  \"b\": \"a b\\\" c\",\n  \"a\": [1, 2]\n}\n"),
            b"{\"b\":\"a b\\\" c\",\"a\":[1,2]}".to_vec()
        );
    }
}
