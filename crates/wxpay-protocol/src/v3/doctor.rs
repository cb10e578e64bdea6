//! The APIv3 doctor: why a notification (or an answer) does not verify or does not decrypt,
//! found by reproducing the received signature under the mistakes merchants make: a body
//! re-serialized by a framework (pretty-printed, a line break added, CRLF), the key of the
//! other kind (the WeChat Pay public key against a certificate's serial), a clock off, a
//! probe, the APIv2 key or another merchant's APIv3 key for the resource.

use std::fmt;

use base64::Engine;

use super::auth::{MAX_SKEW_SECS, PROBE_PREFIX, SignatureHeaders, Verifier, VerifyError};
use super::notify::{Envelope, NotifyError};
use crate::lang::{Lang, Text};

/// What the doctor found, each explanation in English and in Chinese.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// Whether the signature verifies (and, when a key was given, the resource decrypts).
    pub verified: bool,
    /// The first line: OK or FAILED and the check that failed.
    pub headline: Text,
    /// Explanations that reproduce what was received.
    pub confirmed: Vec<Text>,
    /// Other things to check.
    pub hints: Vec<Text>,
    /// The decrypted resource, when it decrypted.
    pub resource: Option<String>,
}

impl Report {
    /// The report for a person, in `lang`.
    pub fn in_lang(&self, lang: Lang) -> InLang<'_> {
        InLang { r: self, lang }
    }
}

/// A [`Report`] written out in one language (its `Display`).
#[derive(Debug)]
pub struct InLang<'r> {
    r: &'r Report,
    lang: Lang,
}

impl fmt::Display for InLang<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (r, lang) = (self.r, self.lang);
        let titles = match lang {
            Lang::En => [
                "Cause (confirmed: it reproduces the received signature):",
                "Other things to check:",
                "The decrypted resource:",
            ],
            Lang::Zh => [
                "原因（已确认：按此解释能复现收到的签名）：",
                "还要检查：",
                "解密后的 resource：",
            ],
        };
        writeln!(f, "{}", r.headline.get(lang))?;
        if !r.confirmed.is_empty() {
            writeln!(f, "\n{}", titles[0])?;
            for c in &r.confirmed {
                writeln!(f, "  - {}", c.get(lang))?;
            }
        }
        if !r.hints.is_empty() {
            writeln!(f, "\n{}", titles[1])?;
            for h in &r.hints {
                writeln!(f, "  - {}", h.get(lang))?;
            }
        }
        if let Some(plain) = &r.resource {
            writeln!(f, "\n{}\n{plain}", titles[2])?;
        }
        Ok(())
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.in_lang(Lang::En).fmt(f)
    }
}

/// Why a signature check failed, in Chinese (the English is the error's own text).
fn failure_zh(e: &VerifyError) -> String {
    match e {
        VerifyError::Missing(name) => format!("缺少 HTTP 头 Wechatpay-{name}"),
        VerifyError::Probe => "这是一次签名探测（WECHATPAY/SIGNTEST/）：按微信支付的要求拒绝".to_owned(),
        VerifyError::BadTimestamp(t) => format!("Wechatpay-Timestamp {t:?} 不是以秒为单位的 Unix 时间"),
        VerifyError::Stale { skew_secs } => format!(
            "Wechatpay-Timestamp 与现在相差 {skew_secs} 秒（最多接受 {MAX_SKEW_SECS} 秒）：可能是重放，或者时钟不准"
        ),
        VerifyError::UnknownSerial(serial) => format!("没有哪个已知的平台证书或微信支付公钥的序列号是 {serial:?}"),
        VerifyError::Expired { serial, not_after } => {
            format!("平台证书 {serial:?} 已于 {not_after}（Unix 秒）过期：此后它验证不了任何签名")
        }
        VerifyError::NotBase64 => "Wechatpay-Signature 不是 base64".to_owned(),
        VerifyError::BadSignature { serial } => format!("签名与密钥 {serial:?} 和收到的报文不符"),
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
        headline: Text::new("", ""),
        confirmed: Vec::new(),
        hints: Vec::new(),
        resource: None,
    };
    let known: Vec<&str> = verifier.ids().collect();
    match verifier.verify(headers, body, now) {
        Ok(()) => {
            report.verified = true;
            let (serial, ago) = (headers.serial, now - headers.timestamp.parse::<i64>().unwrap_or(now));
            report.headline = Text::new(
                format!("OK: the signature verifies with key {serial} (signed {ago} s ago)."),
                format!("通过：签名用密钥 {serial} 验证成功（{ago} 秒前签名）。"),
            );
        }
        Err(e) => {
            report.headline = Text::new(format!("FAILED: {e}."), format!("失败：{}。", failure_zh(&e)));
            let signature = base64::engine::general_purpose::STANDARD.decode(headers.signature.as_bytes());
            match &e {
                VerifyError::Missing(name) => report.hints.push(Text::new(
                    format!(
                        "give the header Wechatpay-{name} exactly as received; WeChat Pay sends Wechatpay-Timestamp, -Nonce, -Signature and -Serial with every notification and answer (a proxy or framework may have dropped it)"
                    ),
                    format!(
                        "请原样提供收到的 HTTP 头 Wechatpay-{name}；微信支付的每个通知和应答都带有 Wechatpay-Timestamp、-Nonce、-Signature 和 -Serial（可能被代理或框架丢掉了）"
                    ),
                )),
                VerifyError::Probe => report.confirmed.push(Text::new(
                    format!(
                        "this is one of WeChat Pay's signature probes ({PROBE_PREFIX}…): it is sent now and then to check that merchants verify. Refusing it (4xx or 5xx) is right; WeChat Pay sends the genuine notification again"
                    ),
                    format!(
                        "这是微信支付的签名探测（{PROBE_PREFIX}…）：微信支付会不时发送它，检查商户是否验签。拒绝它（4xx 或 5xx）是对的；微信支付会再发送真正的通知"
                    ),
                )),
                VerifyError::Stale { skew_secs } => {
                    if let Ok(sig) = &signature {
                        if let Some(id) = verifier.signer(&message(headers, body), sig) {
                            let (secs, at) = (skew_secs.unsigned_abs(), headers.timestamp);
                            let (before, zh) = if *skew_secs >= 0 { ("before", "早") } else { ("after", "晚") };
                            report.confirmed.push(Text::new(
                                format!(
                                    "the signature itself is genuine (it verifies with {id}), but it was made {secs} s {before} now, beyond the {MAX_SKEW_SECS} s allowed: a notification saved earlier (check it as at its time: --at {at}), a replay, or this machine's clock is off (check NTP)"
                                ),
                                format!(
                                    "签名本身是真的（用 {id} 验证通过），但它比现在{zh} {secs} 秒，超出了允许的 {MAX_SKEW_SECS} 秒：这是早先保存的通知（按它当时的时间检查：--at {at}）、一次重放，或者本机时钟不准（检查 NTP）"
                                ),
                            ));
                        }
                    }
                    if report.confirmed.is_empty() {
                        report.hints.push(Text::new(
                            "the clock of this machine (NTP), or a notification kept and sent again later",
                            "本机的时钟（NTP），或者有人把通知存下来之后再次发送",
                        ));
                    }
                }
                VerifyError::UnknownSerial(serial) => {
                    let (kind, kind_zh) = if serial.starts_with("PUB_KEY_ID_") {
                        (
                            "a WeChat Pay public key (pub_key.pem from the merchant platform, with this id)",
                            "一个微信支付公钥（商户平台上下载的 pub_key.pem，公钥 ID 为此值）",
                        )
                    } else {
                        (
                            "a platform certificate (download the list from /v3/certificates, or configure it)",
                            "一个平台证书（从 /v3/certificates 下载证书列表，或者在配置中给出）",
                        )
                    };
                    let (given, given_zh) = if known.is_empty() {
                        ("no key".to_owned(), "没有给出任何密钥".to_owned())
                    } else {
                        (format!("only {}", known.join(", ")), format!("只给出了 {}", known.join(", ")))
                    };
                    // Keys of the other kind only: a switch-over half configured.
                    let other_kind = !known.is_empty()
                        && known.iter().all(|k| k.starts_with("PUB_KEY_ID_") != serial.starts_with("PUB_KEY_ID_"));
                    report.hints.push(if other_kind {
                        Text::new(
                            format!(
                                "it names {kind}, but you gave {given}, of the other kind: during the switch from platform certificates to the public key WeChat Pay uses either, so configure both"
                            ),
                            format!(
                                "它指向{kind_zh}，但你{given_zh}，属于另一种：从平台证书切换到微信支付公钥期间，微信支付两种都会用，所以请两种都配置"
                            ),
                        )
                    } else {
                        Text::new(
                            format!(
                                "it names {kind} you did not give (you gave {given}): a new certificate after a rotation (download the list again), another merchant's key, or an id copied wrong"
                            ),
                            format!(
                                "它指向{kind_zh}，而你没有给出它（你{given_zh}）：可能是证书轮换后的新证书（重新下载列表）、别的商户的密钥，或者 ID 抄错了"
                            ),
                        )
                    });
                }
                VerifyError::Expired { .. } => report.hints.push(Text::new(
                    "it was signed after the certificate expired, and WeChat Pay signs only with a certificate in force: a forgery with an old serial, a wrong --at, or a configured certificate that needs replacing (download the list again, or configure the WeChat Pay public key)",
                    "它是在证书过期之后签名的，而微信支付只用有效期内的证书签名：可能是用旧序列号伪造的通知、--at 给错了，或者配置中的证书需要更换（重新下载证书列表，或者配置微信支付公钥）",
                )),
                VerifyError::NotBase64 => report.hints.push(Text::new(
                    "Wechatpay-Signature was changed on its way (it must be base64 as received)",
                    "Wechatpay-Signature 在途中被改动了（它应当是收到时的 base64）",
                )),
                VerifyError::BadTimestamp(_) => report.hints.push(Text::new(
                    "Wechatpay-Timestamp must be the Unix seconds as received",
                    "Wechatpay-Timestamp 必须是收到时的 Unix 秒数",
                )),
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
        report.confirmed.push(Text::new(
            format!(
                "it is signed with {id}, not with the key of the serial it names ({serial}): the key files are swapped (pub_key.pem against the certificate's serial, or two merchants' files)"
            ),
            format!(
                "它是用 {id} 签名的，而不是它声明的序列号（{serial}）对应的密钥：密钥文件搞混了（pub_key.pem 配上了证书的序列号，或者两个商户的文件）"
            ),
        ));
        return;
    }
    // The body as a framework may have changed it.
    // The narrowest change first, so that the explanation is the most precise one.
    let mut candidates: Vec<(&str, &str, Vec<u8>)> = Vec::new();
    if let Some(b) = body.strip_suffix(b"\n") {
        candidates.push(("given a line break at its end", "末尾被加了一个换行", b.to_vec()));
    }
    if body.windows(2).any(|w| w == b"\r\n") {
        let lf: Vec<u8> = String::from_utf8_lossy(body).replace("\r\n", "\n").into_bytes();
        candidates.push(("given CRLF line breaks", "换行被改成了 CRLF", lf));
    }
    candidates.push((
        "pretty-printed or reformatted (the whitespace differs)",
        "被格式化或重新序列化了（空白不同）",
        minified(body),
    ));
    for (what, what_zh, candidate) in candidates {
        if candidate != body && verifier.signer(&message(headers, &candidate), signature).is_some() {
            report.confirmed.push(Text::new(
                format!(
                    "the body was {what} after it was received: WeChat Pay signs the exact bytes it sends, so verify the raw body before any framework parses or re-encodes it"
                ),
                format!(
                    "报文在收到之后{what_zh}：微信支付对它发出的原始字节签名，所以要在任何框架解析或重新编码之前，用原始报文验签"
                ),
            ));
            return;
        }
    }
    report.hints.push(Text::new(
        "the body or a header was changed on its way (a proxy, a logging middleware that re-encodes JSON, a reordered key), or this is a forgery: verify the raw bytes as received",
        "报文或请求头在途中被改动了（代理、会重新编码 JSON 的日志中间件、被调换顺序的键），或者这是伪造的：请用收到的原始字节验签",
    ));
    report.hints.push(Text::new(
        format!(
            "the key: {serial} must be WeChat Pay's (the platform certificate or pub_key.pem), never your own apiclient_cert.pem"
        ),
        format!("密钥：{serial} 必须是微信支付的（平台证书或 pub_key.pem），绝不是你自己的 apiclient_cert.pem"),
    ));
}

/// Decrypts a notification's resource with `key`, or says why it does not open.
///
/// # Errors
/// The explanation, for people.
pub fn open(body: &[u8], key: &[u8]) -> Result<String, Text> {
    let envelope = Envelope::read(body).map_err(|e| {
        Text::new(
            format!("the body is not a notification envelope, so there is nothing to decrypt ({e})"),
            format!("报文不是通知的信封格式，没有可解密的内容（{e}）"),
        )
    })?;
    match envelope.decrypt(key) {
        Ok(plain) => Ok(String::from_utf8_lossy(&plain).into_owned()),
        Err(NotifyError::Decrypt(super::aead::AeadError::KeyLength(n))) => Err(Text::new(
            format!(
                "the APIv3 key has {n} bytes; it is exactly 32 (APIv3密钥, set in the merchant platform; not the APIv2 key, not the AppSecret)"
            ),
            format!(
                "APIv3 密钥有 {n} 个字节；它恰好是 32 个字节（在商户平台设置的 APIv3密钥；不是 APIv2 密钥，也不是 AppSecret）"
            ),
        )),
        Err(NotifyError::Decrypt(super::aead::AeadError::Tag)) => Err(Text::new(
            "the resource does not open with this APIv3 key: another merchant's key, the APIv2 key given instead (both are 32 characters), a key reset in the merchant platform since, or a ciphertext, nonce or associated_data changed on its way",
            "用这个 APIv3 密钥解不开 resource：可能是别的商户的密钥、误用了 APIv2 密钥（两者都是 32 个字符）、商户平台上的密钥已被重置，或者 ciphertext、nonce、associated_data 在途中被改动了",
        )),
        Err(other) => {
            let why = other.to_string();
            Err(Text::new(why.clone(), format!("无法解密：{why}")))
        }
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
                report.headline = Text::new(
                    format!(
                        "FAILED: the signature verifies, but the resource does not decrypt. ({})",
                        report.headline.en.trim_start_matches("OK: ")
                    ),
                    format!(
                        "失败：签名验证通过，但 resource 无法解密。（{}）",
                        report.headline.zh.trim_start_matches("通过：")
                    ),
                );
                report.confirmed.push(why);
            } else {
                report.hints.push(Text::new(
                    format!("the resource does not decrypt either: {}", why.en),
                    format!("resource 也无法解密：{}", why.zh),
                ));
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
