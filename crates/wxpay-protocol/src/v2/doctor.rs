//! The signature doctor: why does WeChat Pay say "签名错误"?
//!
//! [`diagnose`] checks a signed body (an APIv2 XML message, or the JSON parameters of
//! `wx.requestPayment`) against a key. When the signature does not verify, it tests the
//! mistakes that integrations make again and again, and reports each one that *reproduces
//! the received signature* as confirmed: the other algorithm, empty fields signed, `sign`
//! signed, `sign_type` left out, a field added after signing, values escaped or URL-encoded
//! before signing, fields signed unsorted, the key trimmed or in the wrong place, lowercase
//! hex, and mini program fields in the wrong case. Problems it can see but not prove (a key
//! of the wrong length, a key that looks like an AppSecret, a byte order mark, a body that is
//! not UTF-8) are reported as likely causes.

use std::fmt;

use crate::SignType;
use crate::lang::{Lang, Text};
use crate::sign::{Signature, sign_string};
use crate::xml::{self, XmlError};

/// What the doctor recognised in a finding.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Cause {
    /// The body is not UTF-8.
    NotUtf8,
    /// The body (or the key) holds a byte order mark.
    ByteOrderMark,
    /// The hardened XML reader refused the body.
    XmlRefused,
    /// The body has no signature field.
    MissingSign,
    /// The signature was made with the other algorithm.
    OtherAlgorithm,
    /// The `sign_type` field names another algorithm than the configured one.
    SignTypeField,
    /// Fields with empty values were signed.
    EmptyFieldsIncluded,
    /// The signature field itself was signed.
    SignFieldIncluded,
    /// `sign_type` was left out of the signed string.
    SignTypeExcluded,
    /// A field was not part of what was signed (added after signing, or dropped by the
    /// signer).
    FieldNotSigned,
    /// Fields whose value is `0` were dropped by the signer, as if empty.
    ZeroValuesDropped,
    /// Values were XML-escaped before signing.
    ValuesEscaped,
    /// Values were URL-encoded before signing.
    ValuesUrlEncoded,
    /// Values were signed with surrounding whitespace removed, or the body added some.
    ValuesWhitespace,
    /// Fields were signed in document order instead of sorted by name.
    NotSorted,
    /// The key was left out, or placed among the fields instead of at the end.
    KeyPlacement,
    /// The key has the wrong length or characters.
    KeyFormat,
    /// The key has whitespace around it (a newline from a key file).
    KeyWhitespace,
    /// The key differs only in letter case.
    KeyCase,
    /// The key looks like a mini program AppSecret.
    KeyLooksLikeAppSecret,
    /// The key is simply a different one.
    WrongKey,
    /// The signature is lowercase hex.
    LowercaseHex,
    /// Mini program field names in the wrong case (`appid` for `appId`).
    FieldNameCase,
    /// `timeStamp` in milliseconds.
    TimestampMillis,
    /// An amount written as yuan instead of integer fen.
    AmountNotFen,
    /// Non-ASCII values, which must be signed as UTF-8 bytes.
    NonAsciiValues,
}

/// One thing the doctor found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// What it is.
    pub cause: Cause,
    /// Whether the doctor reproduced the received signature under this explanation.
    pub confirmed: bool,
    /// What is wrong and what to do, for a person, in English and in Chinese.
    pub message: Text,
}

/// What kind of signed body was examined.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyKind {
    /// An APIv2 XML message (field `sign`).
    ApiMessage,
    /// `wx.requestPayment` parameters (field `paySign`).
    PayParams,
}

/// The doctor's report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnosis {
    /// Whether the body verifies as it is, with the key and algorithm given.
    pub verified: bool,
    /// What was examined, when the body could be read.
    pub kind: Option<BodyKind>,
    /// The configured algorithm.
    pub sign_type: SignType,
    /// The string that must be signed, without the key (`stringA`).
    pub string_a: Option<String>,
    /// The signature the body should carry with this key.
    pub expected: Option<String>,
    /// The signature the body carries.
    pub received: Option<String>,
    /// Findings, confirmed ones first.
    pub findings: Vec<Finding>,
}

impl Diagnosis {
    fn new(sign_type: SignType) -> Diagnosis {
        Diagnosis {
            verified: false,
            kind: None,
            sign_type,
            string_a: None,
            expected: None,
            received: None,
            findings: Vec::new(),
        }
    }

    fn add(&mut self, cause: Cause, confirmed: bool, message: Text) {
        if !self
            .findings
            .iter()
            .any(|f| f.cause == cause && f.confirmed == confirmed)
        {
            self.findings.push(Finding {
                cause,
                confirmed,
                message,
            });
        }
    }

    /// The confirmed findings.
    pub fn confirmed(&self) -> impl Iterator<Item = &Finding> {
        self.findings.iter().filter(|f| f.confirmed)
    }
}

impl Diagnosis {
    /// The report for a person, in `lang`.
    pub fn in_lang(&self, lang: Lang) -> InLang<'_> {
        InLang { d: self, lang }
    }
}

/// A [`Diagnosis`] written out in one language (its `Display`).
#[derive(Debug)]
pub struct InLang<'d> {
    d: &'d Diagnosis,
    lang: Lang,
}

impl fmt::Display for InLang<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (d, zh) = (self.d, self.lang == Lang::Zh);
        let t = d.sign_type;
        match (d.verified, zh) {
            (true, false) => writeln!(f, "OK: the signature verifies ({t}).")?,
            (false, false) => writeln!(f, "FAILED: the signature does not verify ({t}).")?,
            (true, true) => writeln!(f, "通过：签名验证成功（{t}）。")?,
            (false, true) => writeln!(f, "失败：签名验证不通过（{t}）。")?,
        }
        let (confirmed, other): (Vec<_>, Vec<_>) = d.findings.iter().partition(|x| x.confirmed);
        if !confirmed.is_empty() {
            if zh {
                writeln!(f, "\n原因（已确认：按此解释能复现收到的签名）：")?;
            } else {
                writeln!(f, "\nCause (confirmed: it reproduces the received signature):")?;
            }
            for x in confirmed {
                writeln!(f, "  - {}", x.message.get(self.lang))?;
            }
        }
        if !other.is_empty() {
            let title = match (d.verified, zh) {
                (true, false) => "Warnings",
                (false, false) => "Likely causes",
                (true, true) => "提醒",
                (false, true) => "可能的原因",
            };
            writeln!(f, "\n{title}{}", if zh { "：" } else { ":" })?;
            for x in other {
                writeln!(f, "  - {}", x.message.get(self.lang))?;
            }
        }
        let labels = if zh {
            [
                "参与签名的字符串（其后接 &key=<API 密钥>）：",
                "应有的签名：",
                "收到的签名：",
            ]
        } else {
            [
                "String that is signed (followed by &key=<API key>):",
                "Expected signature: ",
                "Received signature: ",
            ]
        };
        if let Some(a) = &d.string_a {
            writeln!(f, "\n{}\n  {a}", labels[0])?;
        }
        if let Some(e) = &d.expected {
            writeln!(f, "{}{e}", labels[1])?;
        }
        if let Some(r) = &d.received {
            writeln!(f, "{}{r}", labels[2])?;
        }
        Ok(())
    }
}

impl fmt::Display for Diagnosis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.in_lang(Lang::En).fmt(f)
    }
}

/// How one hypothesis builds the signed string.
#[derive(Clone, Copy, Default)]
struct Variant<'v> {
    include_empty: bool,
    sign_placeholder: bool,
    exclude: Option<&'v str>,
    drop_zero: bool,
    escape_xml: bool,
    url_encode: bool,
    trim_values: bool,
    document_order: bool,
    lowercase_names: bool,
    key: KeyPlace,
}

#[derive(Clone, Copy, Default, PartialEq, Eq)]
enum KeyPlace {
    #[default]
    Appended,
    Omitted,
    Sorted,
}

struct Body {
    /// Pairs in document order.
    pairs: Vec<(String, String)>,
    sign_name: &'static str,
    kind: BodyKind,
    /// For pay parameters: the names as they should be, mapped from the names found.
    has_document_order: bool,
}

const PAY_NAMES: [&str; 5] = ["appId", "nonceStr", "package", "signType", "timeStamp"];

fn build(body: &Body, v: &Variant<'_>, key: &str) -> Vec<u8> {
    let mut pairs: Vec<(String, String)> = body
        .pairs
        .iter()
        .filter(|(k, _)| k != body.sign_name || v.sign_placeholder)
        .filter(|(k, _)| Some(k.as_str()) != v.exclude)
        .map(|(k, val)| {
            let val = if k == body.sign_name {
                String::new()
            } else {
                val.clone()
            };
            let name = if v.lowercase_names {
                k.to_ascii_lowercase()
            } else {
                k.clone()
            };
            let mut val = if v.trim_values { val.trim().to_owned() } else { val };
            if v.escape_xml {
                val = val
                    .replace('&', "&amp;")
                    .replace('<', "&lt;")
                    .replace('>', "&gt;")
                    .replace('"', "&quot;")
                    .replace('\'', "&apos;");
            }
            if v.url_encode {
                val = url_encode(&val);
            }
            (name, val)
        })
        .filter(|(k, val)| v.include_empty || !val.is_empty() || (v.sign_placeholder && k == body.sign_name))
        .filter(|(_, val)| !(v.drop_zero && val == "0"))
        .collect();
    if v.key == KeyPlace::Sorted {
        pairs.push(("key".to_owned(), key.to_owned()));
    }
    if !v.document_order || v.key == KeyPlace::Sorted {
        pairs.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    }
    let mut s = pairs
        .iter()
        .map(|(k, val)| format!("{k}={val}"))
        .collect::<Vec<_>>()
        .join("&");
    if v.key == KeyPlace::Appended {
        s.push_str("&key=");
        s.push_str(key);
    }
    s.into_bytes()
}

fn url_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn read_body(raw: &[u8], d: &mut Diagnosis) -> Option<Body> {
    let text = match std::str::from_utf8(raw) {
        Ok(t) => t,
        Err(e) => {
            let at = e.valid_up_to();
            d.add(
                Cause::NotUtf8,
                false,
                Text::new(
                    format!(
                        "the body is not UTF-8 (invalid byte at offset {at}): WeChat Pay signs and checks the UTF-8 bytes, so a body encoded as GBK/GB2312 fails. Encode the body and the signed string as UTF-8."
                    ),
                    format!(
                        "报文不是 UTF-8 编码（偏移 {at} 处的字节无效）：微信支付按 UTF-8 字节签名和验签，GBK/GB2312 编码的报文一定验不过。请把报文和待签名字符串都编码为 UTF-8。"
                    ),
                ),
            );
            return None;
        }
    };
    let mut text = text;
    if let Some(rest) = text.strip_prefix('\u{FEFF}') {
        d.add(
            Cause::ByteOrderMark,
            false,
            Text::new(
                "the body starts with a byte order mark (U+FEFF), typical of a file saved by a Windows editor; remove it, and make sure it did not end up in a signed value.",
                "报文以字节顺序标记（BOM，U+FEFF）开头，这通常是 Windows 编辑器保存文件时加上的；请去掉它，并确认它没有混进参与签名的值里。",
            ),
        );
        text = rest;
    }
    let trimmed = text.trim_start();
    let pairs: Vec<(String, String)>;
    let mut has_document_order = true;
    if trimmed.starts_with('{') {
        let map: serde_json::Map<String, serde_json::Value> = match serde_json::from_str(trimmed) {
            Ok(m) => m,
            Err(e) => {
                d.add(
                    Cause::XmlRefused,
                    false,
                    Text::new(
                        format!("the body looks like JSON but cannot be read: {e}"),
                        format!("报文看起来是 JSON，但无法解析：{e}"),
                    ),
                );
                return None;
            }
        };
        let mut out = Vec::new();
        for (k, v) in map {
            let s = match v {
                serde_json::Value::String(s) => s,
                serde_json::Value::Number(n) => {
                    if k.eq_ignore_ascii_case("timestamp") {
                        d.add(
                            Cause::TimestampMillis,
                            false,
                            Text::new(
                                "timeStamp is a JSON number; wx.requestPayment wants a string of digits.",
                                "timeStamp 是 JSON 数字；wx.requestPayment 要求它是由数字组成的字符串。",
                            ),
                        );
                    }
                    n.to_string()
                }
                serde_json::Value::Bool(b) => b.to_string(),
                serde_json::Value::Null => String::new(),
                _ => {
                    d.add(
                        Cause::XmlRefused,
                        false,
                        Text::new(
                            format!("field `{k}` is a JSON object or array; signed fields are strings"),
                            format!("字段 `{k}` 是 JSON 对象或数组；参与签名的字段都是字符串"),
                        ),
                    );
                    return None;
                }
            };
            out.push((k, s));
        }
        pairs = out;
        // serde_json reads objects sorted, so the document order is not known.
        has_document_order = false;
    } else {
        let fields = match xml::read(text.as_bytes()) {
            Ok(f) => f,
            Err(e) => {
                add_xml_error(d, &e);
                return None;
            }
        };
        // The reader returns fields sorted by name; recover the order of the document, which
        // a signer that forgot to sort would have used.
        let mut with_pos: Vec<(usize, String, String)> = fields
            .iter()
            .map(|(k, v)| {
                let pos = text
                    .find(&format!("<{k}>"))
                    .or_else(|| text.find(&format!("<{k}/>")))
                    .or_else(|| text.find(&format!("<{k} ")))
                    .unwrap_or(usize::MAX);
                (pos, k.to_owned(), v.to_owned())
            })
            .collect();
        with_pos.sort_by_key(|(p, ..)| *p);
        pairs = with_pos.into_iter().map(|(_, k, v)| (k, v)).collect();
    }
    // APIv2 messages say `nonce_str`; only the mini program parameters say `nonceStr`,
    // `timeStamp` and `paySign`, whatever case a confused signer used.
    let is_pay = pairs.iter().any(|(k, _)| {
        ["paysign", "noncestr", "timestamp"]
            .iter()
            .any(|p| p.eq_ignore_ascii_case(k))
    });
    let (sign_name, kind) = if is_pay {
        ("paySign", BodyKind::PayParams)
    } else {
        ("sign", BodyKind::ApiMessage)
    };
    Some(Body {
        pairs,
        sign_name,
        kind,
        has_document_order,
    })
}

fn add_xml_error(d: &mut Diagnosis, e: &XmlError) {
    use crate::xml::XmlErrorKind as K;
    let advice = match &e.kind {
        K::DuplicateField { .. } => (
            " A field given twice: which value was signed? Send each field once.",
            "同一字段出现了两次：到底签的是哪个值？每个字段只能发送一次。",
        ),
        K::NotUtf8 | K::EncodingNotUtf8 { .. } => (" WeChat Pay accepts UTF-8 only.", "微信支付只接受 UTF-8。"),
        K::Doctype | K::EntityReference { .. } => (
            " WeChat Pay messages never carry a DTD or entities.",
            "微信支付的报文从不包含 DTD 或实体。",
        ),
        _ => ("", ""),
    };
    let cause = if matches!(e.kind, K::NotUtf8 | K::EncodingNotUtf8 { .. }) {
        Cause::NotUtf8
    } else {
        Cause::XmlRefused
    };
    d.add(
        cause,
        false,
        Text::new(
            format!("the body is not a well-formed APIv2 message: {e}.{}", advice.0),
            format!("报文不是格式正确的 APIv2 消息：{e}。{}", advice.1),
        ),
    );
}

/// Examines `body`, signed with `key` (as the user has it, whitespace and all) and the
/// configured algorithm.
pub fn diagnose(body: &[u8], key: &str, sign_type: SignType) -> Diagnosis {
    let mut d = Diagnosis::new(sign_type);
    let Some(mut body) = read_body(body, &mut d) else {
        return d;
    };
    d.kind = Some(body.kind);
    check_key(key, &mut d);

    if body.kind == BodyKind::PayParams {
        normalise_pay_names(&mut body, &mut d);
    } else {
        check_api_fields(&body, &mut d);
    }

    let clean_key = key.trim().trim_start_matches('\u{FEFF}').trim();
    let primary = Variant::default();
    let string_a = {
        let mut s = String::from_utf8(build(
            &body,
            &Variant {
                key: KeyPlace::Omitted,
                ..primary
            },
            "",
        ))
        .unwrap_or_default();
        if s.is_empty() {
            s.push_str("(nothing)");
        }
        s
    };
    d.string_a = Some(string_a);
    let expected = sign_string(&build(&body, &primary, key), key.as_bytes(), sign_type);
    d.expected = Some(expected.as_str().to_owned());

    let received = body
        .pairs
        .iter()
        .find(|(k, _)| k == body.sign_name)
        .map(|(_, v)| v.clone());
    let Some(received) = received.filter(|r| !r.is_empty()) else {
        let alt = body
            .pairs
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(body.sign_name))
            .map(|(k, _)| k.clone());
        match alt {
            Some(k) => {
                let name = body.sign_name;
                d.add(
                    Cause::FieldNameCase,
                    true,
                    Text::new(
                        format!("the signature is in field `{k}`; it must be called `{name}`."),
                        format!("签名放在了字段 `{k}` 里；它的名字必须是 `{name}`。"),
                    ),
                );
            }
            None => {
                let name = body.sign_name;
                d.add(
                    Cause::MissingSign,
                    true,
                    Text::new(
                        format!("the body has no `{name}` field to check."),
                        format!("报文里没有可供验证的 `{name}` 字段。"),
                    ),
                );
            }
        }
        return d;
    };
    d.received = Some(received.clone());

    if expected.matches(&received) {
        d.verified = true;
        sort_findings(&mut d);
        return d;
    }
    if received.len() != sign_type.hex_len() && received.len() == sign_type.other().hex_len() {
        let (n, other, want) = (received.len(), sign_type.other(), sign_type.hex_len());
        d.add(
            Cause::OtherAlgorithm,
            false,
            Text::new(
                format!(
                    "the received signature has {n} characters, the length of {other} signatures; {sign_type} signatures have {want}."
                ),
                format!("收到的签名有 {n} 个字符，这是 {other} 签名的长度；{sign_type} 签名有 {want} 个字符。"),
            ),
        );
    }
    let upper = received.to_ascii_uppercase();
    if upper != received && received.bytes().all(|b| b.is_ascii_hexdigit()) {
        let same = expected.matches(&upper);
        d.add(
            Cause::LowercaseHex,
            same,
            Text::new(
                "the signature is lowercase hex; WeChat Pay writes and compares it in uppercase (apply toUpperCase() to the hex digest).",
                "签名是小写十六进制；微信支付生成和比较的都是大写（对十六进制摘要调用 toUpperCase()）。",
            ),
        );
        if same {
            sort_findings(&mut d);
            return d;
        }
    }

    test_hypotheses(&body, key, clean_key, sign_type, &upper, &mut d);

    if !d.findings.iter().any(|f| f.confirmed) {
        explain_unconfirmed(&body, key, &mut d);
    }
    sort_findings(&mut d);
    d
}

fn sort_findings(d: &mut Diagnosis) {
    d.findings.sort_by_key(|f| !f.confirmed);
}

fn check_key(key: &str, d: &mut Diagnosis) {
    if key.contains('\u{FEFF}') {
        d.add(
            Cause::ByteOrderMark,
            false,
            Text::new(
                "the key contains a byte order mark (U+FEFF): the key file was saved with one; save it without.",
                "密钥里含有字节顺序标记（BOM，U+FEFF）：密钥文件保存时带上了它；请不带 BOM 重新保存。",
            ),
        );
    }
    if key.trim() != key {
        let (what, zh) = if key.ends_with('\n') || key.ends_with('\r') {
            ("a line break", "换行符")
        } else {
            ("whitespace", "空白字符")
        };
        d.add(
            Cause::KeyWhitespace,
            false,
            Text::new(
                format!("the key has {what} around it; the API key is exactly its 32 characters."),
                format!("密钥前后有{zh}；API 密钥就是那 32 个字符，不多不少。"),
            ),
        );
    }
    let clean = key.trim().trim_start_matches('\u{FEFF}');
    let n = clean.chars().count();
    if n != 32 {
        d.add(
            Cause::KeyFormat,
            false,
            Text::new(
                format!("the key has {n} characters; an APIv2 key has exactly 32 (merchant platform → 账户中心 → API安全 → API密钥). The APIv3 key and the AppSecret are different keys."),
                format!("密钥有 {n} 个字符；APIv2 密钥恰好 32 个字符（商户平台 → 账户中心 → API安全 → API密钥）。APIv3 密钥和小程序 AppSecret 都是另外的密钥。"),
            ),
        );
    } else if !clean.bytes().all(|b| b.is_ascii_alphanumeric()) {
        d.add(
            Cause::KeyFormat,
            false,
            Text::new(
                "the key has characters other than ASCII letters and digits; an APIv2 key has only those.",
                "密钥里有 ASCII 字母和数字以外的字符；APIv2 密钥只由字母和数字组成。",
            ),
        );
    }
}

fn normalise_pay_names(body: &mut Body, d: &mut Diagnosis) {
    for (k, _) in &mut body.pairs {
        if let Some(right) = PAY_NAMES
            .iter()
            .chain(std::iter::once(&"paySign"))
            .find(|p| p.eq_ignore_ascii_case(k))
        {
            if k != right {
                d.add(
                    Cause::FieldNameCase,
                    true,
                    Text::new(
                        format!("`{k}` must be written `{right}`: wx.requestPayment and its paySign use appId, timeStamp, nonceStr, package, signType (camelCase, capital I and S)."),
                        format!("`{k}` 必须写成 `{right}`：wx.requestPayment 及其 paySign 使用 appId、timeStamp、nonceStr、package、signType（驼峰式，I 和 S 大写）。"),
                    ),
                );
                *k = (*right).to_owned();
            }
        }
    }
    if let Some((_, ts)) = body.pairs.iter().find(|(k, _)| k == "timeStamp") {
        if ts.len() == 13 && ts.bytes().all(|b| b.is_ascii_digit()) {
            d.add(
                Cause::TimestampMillis,
                false,
                Text::new(
                    "timeStamp has 13 digits: milliseconds. It must be Unix seconds (10 digits).",
                    "timeStamp 有 13 位：这是毫秒。它必须是 Unix 秒（10 位）。",
                ),
            );
        }
    }
    if let Some((_, st)) = body.pairs.iter().find(|(k, _)| k == "signType") {
        if st != d.sign_type.as_str() {
            d.add(
                Cause::SignTypeField,
                false,
                Text::new(
                    format!("signType is {st:?} but the order was placed with {}; paySign must use the algorithm of unifiedorder.", d.sign_type),
                    format!("signType 是 {st:?}，但下单时用的是 {}；paySign 必须使用统一下单时的签名算法。", d.sign_type),
                ),
            );
        }
    }
    // Only the five fields are signed; anything else the body carries is not.
    body.pairs
        .retain(|(k, _)| PAY_NAMES.contains(&k.as_str()) || k == "paySign");
}

fn check_api_fields(body: &Body, d: &mut Diagnosis) {
    for (k, v) in &body.pairs {
        if k.chars().any(|c| c.is_ascii_uppercase()) {
            d.add(
                Cause::FieldNameCase,
                false,
                Text::new(
                    format!("field `{k}` has capital letters; APIv2 messages use lowercase names (`appid`, `nonce_str`), camelCase is only for wx.requestPayment."),
                    format!("字段 `{k}` 含有大写字母；APIv2 报文的字段名都是小写（`appid`、`nonce_str`），驼峰式只用于 wx.requestPayment。"),
                ),
            );
        }
        if k == "sign_type" && v != d.sign_type.as_str() && !v.is_empty() {
            d.add(
                Cause::SignTypeField,
                false,
                Text::new(
                    format!("the body says sign_type={v} but you are checking with {}; the configured algorithm decides, so one of the two is wrong.", d.sign_type),
                    format!("报文写的是 sign_type={v}，但你用 {} 验签；以配置的算法为准，两者之中有一个是错的。", d.sign_type),
                ),
            );
        }
        if matches!(
            k.as_str(),
            "total_fee" | "refund_fee" | "cash_fee" | "settlement_total_fee"
        ) && !v.bytes().all(|b| b.is_ascii_digit())
        {
            d.add(
                Cause::AmountNotFen,
                false,
                Text::new(
                    format!("{k}={v} is not an integer: amounts are in fen (1 yuan = 100), never yuan with decimals."),
                    format!("{k}={v} 不是整数：金额以分为单位（1 元 = 100 分），不能是带小数的元。"),
                ),
            );
        }
        if v.contains('\u{FEFF}') {
            d.add(
                Cause::ByteOrderMark,
                false,
                Text::new(
                    format!("the value of `{k}` contains a byte order mark (U+FEFF)."),
                    format!("`{k}` 的值里含有字节顺序标记（BOM，U+FEFF）。"),
                ),
            );
        }
    }
}

/// The most fields the doctor leaves out one at a time to find one that was not signed.
const MAX_FIELDS_LEFT_OUT: usize = 100;

fn test_hypotheses(
    body: &Body,
    key: &str,
    clean_key: &str,
    sign_type: SignType,
    received_upper: &str,
    d: &mut Diagnosis,
) {
    let matches = |v: &Variant<'_>, k: &str, t: SignType| -> bool {
        let s = build(body, v, k);
        let sig: Signature = sign_string(&s, k.as_bytes(), t);
        sig.matches(received_upper)
    };
    let base = Variant::default();
    let types = [sign_type, sign_type.other()];
    let algo_note = |t: SignType| {
        if t == sign_type {
            Text::new("", "")
        } else {
            Text::new(
                format!(" It was also signed with {t}, not the configured {sign_type}."),
                format!("另外，它是用 {t} 签名的，而不是配置的 {sign_type}。"),
            )
        }
    };

    // Key variants: as given is tested by the main check; the trimmed one and case slips.
    let mut keys: Vec<(String, Option<Cause>)> = vec![(key.to_owned(), None)];
    if clean_key != key {
        keys.push((clean_key.to_owned(), Some(Cause::KeyWhitespace)));
    }
    if clean_key.bytes().any(|b| b.is_ascii_alphabetic()) {
        keys.push((clean_key.to_ascii_uppercase(), Some(Cause::KeyCase)));
        keys.push((clean_key.to_ascii_lowercase(), Some(Cause::KeyCase)));
    }

    // The other algorithm alone.
    for (k, kcause) in &keys {
        if matches(&base, k, sign_type.other()) {
            d.add(
                Cause::OtherAlgorithm,
                true,
                Text::new(
                    format!(
                        "the body was signed with {other} but you check with {sign_type}. Use the same sign_type everywhere (unifiedorder, paySign, and the check), and send sign_type={other} in the request.",
                        other = sign_type.other(),
                    ),
                    format!(
                        "报文是用 {other} 签名的，但你用 {sign_type} 验签。请在所有地方（统一下单、paySign 和验签）使用同一个 sign_type，并在请求中带上 sign_type={other}。",
                        other = sign_type.other(),
                    ),
                ),
            );
            if let Some(c) = kcause {
                key_finding(d, c.clone(), key);
            }
            return;
        }
    }

    let mut hypotheses: Vec<(Variant<'_>, Cause, Text)> = Vec::new();
    if body.pairs.iter().any(|(k, v)| v.is_empty() && k != body.sign_name) {
        hypotheses.push((
            Variant {
                include_empty: true,
                ..base
            },
            Cause::EmptyFieldsIncluded,
            Text::new(
                "fields with empty values were signed (`name=&`); empty values take no part in the signature.",
                "值为空的字段参与了签名（`name=&`）；空值不参与签名。",
            ),
        ));
    }
    hypotheses.push((
        Variant {
            sign_placeholder: true,
            ..base
        },
        Cause::SignFieldIncluded,
        Text::new(
            format!(
                "`{}` was part of the signed string (as an empty placeholder); the signature field never takes part.",
                body.sign_name
            ),
            format!(
                "`{}` 以空占位的形式参与了签名；签名字段本身从不参与签名。",
                body.sign_name
            ),
        ),
    ));
    hypotheses.push((
        Variant { sign_placeholder: true, include_empty: true, ..base },
        Cause::SignFieldIncluded,
        Text::new(
            format!("`{}` and the other empty fields were part of the signed string; empty fields and the signature field never take part.", body.sign_name),
            format!("`{}` 和其他空字段都参与了签名；空字段和签名字段从不参与签名。", body.sign_name),
        ),
    ));
    if body.pairs.iter().any(|(k, _)| k == "sign_type") {
        hypotheses.push((
            Variant { exclude: Some("sign_type"), ..base },
            Cause::SignTypeExcluded,
            Text::new(
                "sign_type was left out of the signed string; only `sign` is left out, sign_type is signed like any other field.",
                "sign_type 没有参与签名；只有 `sign` 不参与，sign_type 和其他字段一样要签名。",
            ),
        ));
    }
    if body.pairs.iter().any(|(_, v)| v == "0") {
        hypotheses.push((
            Variant { drop_zero: true, ..base },
            Cause::ZeroValuesDropped,
            Text::new(
                "fields whose value is 0 were dropped as if empty (a falsy check such as `if value:`); only empty values are left out, \"0\" is signed.",
                "值为 0 的字段被当作空值丢掉了（例如 `if value:` 这样的真假判断）；只有空值不参与签名，\"0\" 要签名。",
            ),
        ));
    }
    if body.pairs.iter().any(|(_, v)| v.contains(['&', '<', '>', '"', '\''])) {
        hypotheses.push((
            Variant { escape_xml: true, ..base },
            Cause::ValuesEscaped,
            Text::new(
                "values were XML-escaped (&amp;, &lt;) before signing; sign the raw values, then escape when writing the XML.",
                "签名前对值做了 XML 转义（&amp;、&lt;）；应当对原始值签名，写 XML 时再转义。",
            ),
        ));
    }
    if body.pairs.iter().any(|(_, v)| {
        v.bytes()
            .any(|b| !(b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~')))
    }) {
        hypotheses.push((
            Variant {
                url_encode: true,
                ..base
            },
            Cause::ValuesUrlEncoded,
            Text::new(
                "values were URL-encoded before signing; sign the raw values, WeChat Pay does not encode them.",
                "签名前对值做了 URL 编码；应当对原始值签名，微信支付不会对它们编码。",
            ),
        ));
    }
    if body.pairs.iter().any(|(_, v)| v.trim() != v) {
        hypotheses.push((
            Variant { trim_values: true, ..base },
            Cause::ValuesWhitespace,
            Text::new(
                "the values were signed without the whitespace around them that the body carries (pretty-printed XML inside a value?); put exactly the signed value between the tags.",
                "签名时的值不含报文中值两侧的空白（值里的 XML 被格式化了？）；标签之间必须恰好是签名时的值。",
            ),
        ));
    }
    if body.has_document_order {
        hypotheses.push((
            Variant {
                document_order: true,
                ..base
            },
            Cause::NotSorted,
            Text::new(
                "the fields were signed in the order of the body; they must be sorted by name (ASCII order) first.",
                "字段是按报文中的顺序签名的；必须先按字段名（ASCII 码顺序）排序。",
            ),
        ));
    }
    hypotheses.push((
        Variant {
            key: KeyPlace::Omitted,
            ..base
        },
        Cause::KeyPlacement,
        Text::new(
            "the key was not appended: the signed string must end with &key=<API key>.",
            "没有拼接密钥：待签名字符串必须以 &key=<API 密钥> 结尾。",
        ),
    ));
    hypotheses.push((
        Variant {
            key: KeyPlace::Sorted,
            ..base
        },
        Cause::KeyPlacement,
        Text::new(
            "the key was sorted in among the fields as `key=…`; it must be appended at the very end as &key=<API key>.",
            "密钥以 `key=…` 的形式和其他字段一起排了序；它必须以 &key=<API 密钥> 的形式拼接在最后。",
        ),
    ));
    if body.kind == BodyKind::PayParams {
        hypotheses.push((
            Variant { lowercase_names: true, ..base },
            Cause::FieldNameCase,
            Text::new(
                "paySign was computed over lowercase names (appid, timestamp, noncestr, signtype); sign appId, nonceStr, package, signType, timeStamp exactly.",
                "paySign 是用小写字段名（appid、timestamp、noncestr、signtype）计算的；必须严格按 appId、nonceStr、package、signType、timeStamp 签名。",
            ),
        ));
    }
    let mut field_names: Vec<&str> = body
        .pairs
        .iter()
        .map(|(k, _)| k.as_str())
        .filter(|k| *k != body.sign_name)
        .collect();
    // Leaving each field out in turn costs a signed string per field, each as long as the
    // body: quadratic, and seconds for a body of hundreds of tiny fields (found by fuzzing).
    // WeChat Pay's largest messages have well under this many fields.
    if field_names.len() > MAX_FIELDS_LEFT_OUT {
        d.add(
            Cause::FieldNotSigned,
            false,
            Text::new(
                format!(
                    "the body has {} fields, more than WeChat Pay ever sends; whether one of them was left out of the signature is not tested beyond {MAX_FIELDS_LEFT_OUT}.",
                    field_names.len()
                ),
                format!(
                    "报文有 {} 个字段，比微信支付发送的任何报文都多；超过 {MAX_FIELDS_LEFT_OUT} 个后，不再逐个检查是否有字段漏签。",
                    field_names.len()
                ),
            ),
        );
        field_names.clear();
    }

    for t in types {
        for (k, kcause) in &keys {
            if t == sign_type && kcause.is_none() {
                // Already tested as the main check; hypotheses below vary the string.
            } else if matches(&base, k, t) {
                if let Some(c) = kcause {
                    key_finding(d, c.clone(), key);
                    if t != sign_type {
                        d.add(
                            Cause::OtherAlgorithm,
                            true,
                            Text::new(
                                format!("it was also signed with {t}, not the configured {sign_type}."),
                                format!("另外，它是用 {t} 签名的，而不是配置的 {sign_type}。"),
                            ),
                        );
                    }
                    return;
                }
            }
            for (v, cause, msg) in &hypotheses {
                if matches(v, k, t) {
                    d.add(cause.clone(), true, msg.then(&algo_note(t)));
                    if let Some(c) = kcause {
                        key_finding(d, c.clone(), key);
                    }
                    return;
                }
            }
            for name in &field_names {
                if matches(
                    &Variant {
                        exclude: Some(name),
                        ..base
                    },
                    k,
                    t,
                ) {
                    d.add(
                        Cause::FieldNotSigned,
                        true,
                        Text::new(
                            format!(
                                "field `{name}` is in the body but was not signed: it was added after signing, or the signer dropped it. Sign every field that is sent."
                            ),
                            format!("字段 `{name}` 在报文里却没有参与签名：它是签名后才加上的，或者被签名的一方漏掉了。发送的每个字段都要签名。"),
                        )
                        .then(&algo_note(t)),
                    );
                    if let Some(c) = kcause {
                        key_finding(d, c.clone(), key);
                    }
                    return;
                }
            }
        }
    }
}

fn key_finding(d: &mut Diagnosis, cause: Cause, key: &str) {
    let msg = match cause {
        Cause::KeyWhitespace => Text::new(
            "the signer used the key without the whitespace your copy has: trim the key (a trailing newline in the key file?).",
            "签名方用的密钥不含你这份密钥里的空白字符：请去掉密钥两端的空白（密钥文件末尾有换行？）。",
        ),
        Cause::KeyCase => {
            let end = key
                .trim()
                .chars()
                .rev()
                .take(4)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<String>();
            Text::new(
                format!(
                    "the signer used the key in another letter case; API keys are case-sensitive, copy it exactly (yours ends in …{end})."
                ),
                format!("签名方用的密钥大小写与你的不同；API 密钥区分大小写，请原样复制（你的密钥以 …{end} 结尾）。"),
            )
        }
        _ => return,
    };
    d.add(cause, true, msg);
}

fn explain_unconfirmed(body: &Body, key: &str, d: &mut Diagnosis) {
    let clean = key.trim();
    if clean.len() == 32 && clean.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        d.add(
            Cause::KeyLooksLikeAppSecret,
            false,
            Text::new(
                "the key is 32 lowercase hex digits, the shape of a mini program AppSecret; if you copied it from the mini program console, use the API key from the merchant platform (API安全) instead.",
                "这个密钥是 32 位小写十六进制，正是小程序 AppSecret 的样子；如果它是从小程序后台复制的，请改用商户平台（API安全）里的 API 密钥。",
            ),
        );
    }
    if body.pairs.iter().any(|(_, v)| !v.is_ascii()) {
        d.add(
            Cause::NonAsciiValues,
            false,
            Text::new(
                "some values are not ASCII (Chinese text?): they must be signed as UTF-8 bytes; a signer that hashes GBK or UTF-16 strings gets another signature.",
                "有些值不是 ASCII（中文？）：它们必须按 UTF-8 字节签名；按 GBK 或 UTF-16 字符串计算摘要会得到另一个签名。",
            ),
        );
    }
    d.add(
        Cause::WrongKey,
        false,
        Text::new(
            "no common mistake reproduces the received signature, so the key is most likely not the one it was signed with (another merchant's key, the APIv3 key, an old key after a reset, or the sandbox key).",
            "没有哪种常见错误能复现收到的签名，所以最可能是密钥不对：不是签名时用的那个（别的商户的密钥、APIv3 密钥、重置前的旧密钥，或者沙箱密钥）。",
        ),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ApiKey, Fields};

    const KEY: &str = "192006250b4c09247ec02edce69f6a2d";

    fn signed(pairs: &[(&str, &str)], t: SignType) -> String {
        let mut f: Fields<'_> = pairs.iter().copied().collect();
        f.sign(&ApiKey::new(KEY).unwrap(), t);
        f.to_xml().unwrap()
    }

    fn causes(d: &Diagnosis) -> Vec<Cause> {
        d.confirmed().map(|f| f.cause.clone()).collect()
    }

    const BASE: &[(&str, &str)] = &[
        ("appid", "wxd930ea5d5a258f4f"),
        ("mch_id", "10000100"),
        ("body", "test"),
        ("nonce_str", "ibuaiVcKdpRxkhJA"),
    ];

    #[test]
    fn a_body_of_hundreds_of_fields_is_diagnosed_without_leaving_each_out() {
        // A fuzzing input: hundreds of tiny fields (the reader takes up to 512) made the doctor
        // build as many signed strings of the whole body per key and algorithm, over a second
        // of work.
        let names: Vec<String> = (0..500).map(|i| format!("f{i}")).collect();
        let mut pairs: Vec<(&str, &str)> = BASE.to_vec();
        pairs.extend(names.iter().map(|n| (n.as_str(), "1")));
        let body = signed(&pairs, SignType::Md5).replace("</xml>", "<added>1</added></xml>");
        let d = diagnose(body.as_bytes(), KEY, SignType::Md5);
        assert!(!d.verified);
        let skipped = d.findings.iter().find(|f| f.cause == Cause::FieldNotSigned).unwrap();
        assert!(!skipped.confirmed, "{d}");
        assert!(skipped.message.en.contains("505 fields"), "{d}");
        // Within the limit, the field added after signing is still found.
        let body = signed(BASE, SignType::Md5).replace("</xml>", "<added>1</added></xml>");
        let d = diagnose(body.as_bytes(), KEY, SignType::Md5);
        assert_eq!(causes(&d), [Cause::FieldNotSigned], "{d}");
    }

    #[test]
    fn a_correct_body_verifies() {
        let d = diagnose(signed(BASE, SignType::Md5).as_bytes(), KEY, SignType::Md5);
        assert!(d.verified, "{d}");
    }

    #[test]
    fn the_other_algorithm_is_confirmed() {
        let d = diagnose(signed(BASE, SignType::HmacSha256).as_bytes(), KEY, SignType::Md5);
        assert!(!d.verified);
        assert_eq!(causes(&d), [Cause::OtherAlgorithm], "{d}");
    }

    #[test]
    fn a_key_with_a_newline_is_confirmed() {
        let d = diagnose(
            signed(BASE, SignType::Md5).as_bytes(),
            &format!("{KEY}\n"),
            SignType::Md5,
        );
        assert_eq!(causes(&d), [Cause::KeyWhitespace], "{d}");
    }

    #[test]
    fn lowercase_hex_is_confirmed() {
        let body = signed(BASE, SignType::Md5);
        let f = crate::xml::read(body.as_bytes()).unwrap();
        let sign = f.get("sign").unwrap().to_owned();
        let lower = body.replace(&sign, &sign.to_lowercase());
        let d = diagnose(lower.as_bytes(), KEY, SignType::Md5);
        assert_eq!(causes(&d), [Cause::LowercaseHex], "{d}");
    }

    #[test]
    fn a_wrong_key_is_the_fallback() {
        let d = diagnose(
            signed(BASE, SignType::Md5).as_bytes(),
            "0123456789abcdef0123456789abcdef",
            SignType::Md5,
        );
        assert!(causes(&d).is_empty());
        assert!(d.findings.iter().any(|f| f.cause == Cause::WrongKey), "{d}");
        assert!(
            d.findings.iter().any(|f| f.cause == Cause::KeyLooksLikeAppSecret),
            "{d}"
        );
    }

    /// A body carrying `pairs` (in this document order) whose `sign` is the MD5 of `signed`
    /// (the whole stringSignTemp), as a mistaken signer would have made it.
    fn forged(pairs: &[(&str, &str)], signed: &str) -> String {
        let sig = sign_string(signed.as_bytes(), b"", SignType::Md5);
        let mut body = String::from("<xml>");
        for (k, v) in pairs {
            body.push_str(&format!("<{k}><![CDATA[{v}]]></{k}>"));
        }
        body.push_str(&format!("<sign>{sig}</sign></xml>"));
        body
    }

    #[test]
    fn each_classic_signer_mistake_is_confirmed() {
        let k = KEY;
        type Case<'c> = (Vec<(&'c str, &'c str)>, String, Cause);
        let cases: Vec<Case<'_>> = vec![
            (
                vec![("appid", "wx1"), ("sign_type", "MD5"), ("body", "b")],
                format!("appid=wx1&body=b&key={k}"),
                Cause::SignTypeExcluded,
            ),
            (
                vec![("appid", "wx1"), ("body", "b"), ("attach", "late")],
                format!("appid=wx1&body=b&key={k}"),
                Cause::FieldNotSigned,
            ),
            (
                vec![("appid", "wx1"), ("coupon_fee", "0"), ("total_fee", "1")],
                format!("appid=wx1&total_fee=1&key={k}"),
                Cause::ZeroValuesDropped,
            ),
            (
                vec![("appid", "wx1"), ("body", "a&b")],
                format!("appid=wx1&body=a&amp;b&key={k}"),
                Cause::ValuesEscaped,
            ),
            (
                vec![("appid", "wx1"), ("body", "a b/c")],
                format!("appid=wx1&body=a%20b%2Fc&key={k}"),
                Cause::ValuesUrlEncoded,
            ),
            (
                vec![("mch_id", "1"), ("appid", "wx1"), ("body", "b")],
                format!("mch_id=1&appid=wx1&body=b&key={k}"),
                Cause::NotSorted,
            ),
            (
                vec![("appid", "wx1"), ("body", "b")],
                "appid=wx1&body=b".to_owned(),
                Cause::KeyPlacement,
            ),
            (
                vec![("appid", "wx1"), ("mch_id", "1")],
                format!("appid=wx1&key={k}&mch_id=1"),
                Cause::KeyPlacement,
            ),
            (
                vec![("appid", "wx1"), ("body", "b")],
                format!("appid=wx1&body=b&key={}", k.to_ascii_uppercase()),
                Cause::KeyCase,
            ),
            (
                vec![("appid", "wx1"), ("body", "b")],
                format!("appid=wx1&body=b&sign=&key={k}"),
                Cause::SignFieldIncluded,
            ),
        ];
        for (pairs, signed, cause) in cases {
            let body = forged(&pairs, &signed);
            let d = diagnose(body.as_bytes(), k, SignType::Md5);
            assert!(!d.verified);
            assert_eq!(causes(&d).first(), Some(&cause), "{signed}\n{d}");
            every_finding_speaks_chinese(&d);
        }
    }

    /// Each finding of `d` has its Chinese explanation, and the Chinese report is Chinese
    /// from its first line.
    fn every_finding_speaks_chinese(d: &Diagnosis) {
        let chinese = |s: &str| s.chars().any(|c| ('\u{4e00}'..='\u{9fff}').contains(&c));
        for f in &d.findings {
            assert!(chinese(&f.message.zh), "{:?}: {}", f.cause, f.message.zh);
            assert!(
                !chinese(&f.message.en) || f.message.en.contains("API安全"),
                "{}",
                f.message.en
            );
        }
        let report = d.in_lang(Lang::Zh).to_string();
        assert!(report.starts_with("失败：") || report.starts_with("通过："), "{report}");
    }

    #[test]
    fn the_likely_causes_are_explained_in_chinese_too() {
        for (body, key) in [
            (
                b"<xml><appid>wx1</appid><sign>ABC</sign></xml>".as_slice(),
                "0123456789abcdef0123456789abcdef",
            ),
            (b"\xEF\xBB\xBF<xml><body>\xC4\xE3</body></xml>".as_slice(), KEY),
            (
                b"<xml><total_fee>1.5</total_fee><body>\xE4\xB8\xAD</body><sign>X</sign></xml>".as_slice(),
                " short\n",
            ),
            (
                br#"{"appid":"wx1","timeStamp":1490840662000,"paySign":"x"}"#.as_slice(),
                KEY,
            ),
        ] {
            let d = diagnose(body, key, SignType::Md5);
            assert!(!d.findings.is_empty(), "{d}");
            every_finding_speaks_chinese(&d);
        }
    }

    #[test]
    fn mini_program_fields_in_the_wrong_case_are_reported() {
        let body = r#"{"appid":"wx1","timeStamp":"1490840662000","nonceStr":"n","package":"prepay_id=p","signType":"MD5","paySign":"X"}"#;
        let d = diagnose(body.as_bytes(), KEY, SignType::Md5);
        assert_eq!(d.kind, Some(BodyKind::PayParams));
        assert!(
            d.findings
                .iter()
                .any(|f| f.cause == Cause::FieldNameCase && f.message.contains("`appid` must be written `appId`")),
            "{d}"
        );
        assert!(d.findings.iter().any(|f| f.cause == Cause::TimestampMillis), "{d}");
    }
}
