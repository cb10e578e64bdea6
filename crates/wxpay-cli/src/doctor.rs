//! `wxpay sign`, `wxpay verify` and `wxpay decrypt`: the tools for "签名错误".

use std::collections::BTreeMap;

use wxpay_protocol::lang::Lang;
use wxpay_protocol::v2::{decrypt_req_info, doctor};
use wxpay_protocol::{ApiKey, Fields, SignType, sign, xml};

use crate::{CliError, DecryptArgs, Output, SignArgs, V3Args, VerifyArgs, emit, raw_key, read_key_file, read_stdin};

/// Reads name/value pairs from a JSON object; strings, numbers and booleans become their
/// text, `null` an empty value.
fn pairs_from_json(text: &str) -> Result<Vec<(String, String)>, CliError> {
    let map: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(text).map_err(|e| CliError::Usage(format!("the JSON parameters cannot be read: {e}")))?;
    map.into_iter()
        .map(|(k, v)| {
            let s = match v {
                serde_json::Value::String(s) => s,
                serde_json::Value::Number(n) => n.to_string(),
                serde_json::Value::Bool(b) => b.to_string(),
                serde_json::Value::Null => String::new(),
                _ => {
                    return Err(CliError::Usage(format!(
                        "parameter `{k}` is a JSON object or array; signed values are strings (pass JSON fields such as detail as a string)"
                    )));
                }
            };
            Ok((k, s))
        })
        .collect()
}

fn pairs_from_body(body: &[u8]) -> Result<Vec<(String, String)>, CliError> {
    let text = std::str::from_utf8(body).map_err(|e| {
        CliError::Usage(format!(
            "the body is not UTF-8 (invalid byte at offset {}); WeChat Pay uses UTF-8 only",
            e.valid_up_to()
        ))
    })?;
    let text = text.trim_start_matches('\u{FEFF}');
    if text.trim_start().starts_with('{') {
        return pairs_from_json(text);
    }
    let fields = xml::read(text.as_bytes()).map_err(|e| CliError::Usage(format!("the XML body is refused: {e}")))?;
    Ok(fields.iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect())
}

fn pairs_from_args(params: &[String]) -> Result<Vec<(String, String)>, CliError> {
    params
        .iter()
        .map(|p| match p.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
            _ => Err(CliError::Usage(format!("expected NAME=VALUE, got {p:?}"))),
        })
        .collect()
}

pub(crate) fn sign(args: SignArgs) -> Result<(), CliError> {
    let pairs = if let Some(json) = &args.json {
        pairs_from_json(json)?
    } else if !args.params.is_empty() {
        pairs_from_args(&args.params)?
    } else {
        pairs_from_body(&read_stdin("nothing to sign: give NAME=VALUE arguments or --json")?)?
    };
    if pairs.is_empty() {
        return Err(CliError::Usage("nothing to sign: no parameters".into()));
    }
    let mut fields = Fields::new();
    for (k, v) in &pairs {
        fields
            .insert(k.as_str(), v.as_str())
            .map_err(|_| CliError::Usage(format!("parameter `{k}` is given twice; which value should be signed?")))?;
    }
    let is_pay = ["paySign", "nonceStr", "timeStamp"]
        .iter()
        .any(|n| fields.get(n).is_some());
    let (sign_name, type_name) = if is_pay {
        ("paySign", "signType")
    } else {
        ("sign", "sign_type")
    };

    if let Some(old) = fields.remove(sign_name) {
        eprintln!("note: the existing `{sign_name}` ({old}) is not signed and was replaced");
    }
    let declared = fields.optional(type_name).map(str::to_owned);
    let sign_type = match (args.sign_type, declared) {
        (Some(given), Some(d)) if d != given.as_str() => {
            return Err(CliError::Usage(format!(
                "the parameters say {type_name}={d} but --sign-type is {given}; they must agree, because {type_name} is part of what is signed"
            )));
        }
        (Some(given), _) => given,
        (None, Some(d)) => d
            .parse::<SignType>()
            .map_err(|e| CliError::Usage(format!("{type_name}: {e}")))?,
        (None, None) => SignType::Md5,
    };
    let empty: Vec<&str> = fields.iter().filter(|(_, v)| v.is_empty()).map(|(k, _)| k).collect();
    if !empty.is_empty() {
        eprintln!("note: left out because empty: {}", empty.join(", "));
    }
    let key = ApiKey::new(raw_key(&args.key)?).map_err(|e| CliError::Usage(e.to_string()))?;
    let sig = sign::sign_sorted(fields.iter(), sign_name, &key, sign_type);
    let string_a = sign::string_a(fields.iter(), sign_name);

    match args.output {
        Output::Text => {
            emit(&format!(
                "string to sign: {string_a}&key={}\nsign_type:      {sign_type}\n{sign_name}:{}{sig}\n",
                key.masked(),
                " ".repeat(15 - sign_name.len())
            ));
        }
        Output::Xml => {
            let body = xml::write("xml", fields.iter().chain(std::iter::once((sign_name, sig.as_str()))))?;
            emit(&format!("{body}\n"));
        }
        Output::Json => {
            let mut map: BTreeMap<&str, &str> = fields.iter().collect();
            map.insert(sign_name, sig.as_str());
            let out = serde_json::json!({ "string_a": string_a, "sign_type": sign_type.as_str(), "sign": sig.as_str(), "params": map });
            emit(&format!("{out}\n"));
        }
    }
    Ok(())
}

pub(crate) fn verify(args: VerifyArgs) -> Result<(), CliError> {
    let body = match args.file.as_deref() {
        Some(p) if p.as_os_str() != "-" => {
            std::fs::read(p).map_err(|e| CliError::Usage(format!("cannot read {}: {e}", p.display())))?
        }
        _ => read_stdin("give the body to check as FILE")?,
    };
    let lang = args.lang.chosen();
    if args.v3.v3 {
        return verify_v3(&args.v3, &body, lang);
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(CliError::Usage("the body is empty".into()));
    }
    // A body that is not even trying to be a message is unusable input (exit 2), not a
    // signature that fails (exit 1): the doctor explains mistakes in messages.
    let start = body.strip_prefix("\u{FEFF}".as_bytes()).unwrap_or(&body);
    // A UTF-16 body (its byte order mark) is a message in the wrong encoding: the doctor
    // explains that one.
    let utf16 = body.starts_with(&[0xFF, 0xFE]) || body.starts_with(&[0xFE, 0xFF]);
    if !utf16 && !matches!(start.iter().find(|b| !b.is_ascii_whitespace()), Some(b'<' | b'{')) {
        return Err(CliError::Usage(
            "the body is neither an APIv2 XML message (<xml>…</xml>) nor the JSON parameters of wx.requestPayment: there is nothing signed to check".into(),
        ));
    }
    let key = raw_key(&args.key)?;
    let report = doctor::diagnose(&body, &key, args.sign_type);
    emit(&report.in_lang(lang).to_string());
    if report.verified { Ok(()) } else { Err(CliError::Failed) }
}

pub(crate) fn decrypt(args: DecryptArgs) -> Result<(), CliError> {
    if args.v3.v3 {
        let input = match args.req_info {
            Some(r) => r.into_bytes(),
            None => read_stdin("give the notification body (JSON) on standard input")?,
        };
        let (_, body) = split_message(&input);
        let key = apiv3_key(&args.v3)?
            .ok_or_else(|| CliError::Usage("--v3 needs --apiv3-key-file FILE (the 32-byte APIv3 key)".into()))?;
        return match wxpay_protocol::v3::doctor::open(body, &key) {
            Ok(plain) => {
                emit(&format!("{plain}\n"));
                Ok(())
            }
            Err(why) => {
                let lang = args.lang.chosen();
                let failed = match lang {
                    Lang::En => "FAILED: ",
                    Lang::Zh => "失败：",
                };
                emit(&format!("{failed}{}\n", why.get(lang)));
                Err(CliError::Failed)
            }
        };
    }
    let key = ApiKey::new(raw_key(&args.key)?).map_err(|e| CliError::Usage(e.to_string()))?;
    let input = match args.req_info {
        Some(r) => r,
        None => String::from_utf8(read_stdin("give the req_info value as an argument")?)
            .map_err(|_| CliError::Usage("standard input is not UTF-8".into()))?,
    };
    let trimmed = input.trim().trim_start_matches('\u{FEFF}');
    let req_info = if trimmed.starts_with('<') {
        let fields = xml::read(trimmed.as_bytes())
            .map_err(|e| CliError::Usage(format!("the notification body is refused: {e}")))?;
        if let (Some(a), Some(m)) = (fields.optional("appid"), fields.optional("mch_id")) {
            eprintln!("refund notification for appid {a}, mch_id {m}");
        }
        fields
            .optional("req_info")
            .ok_or_else(|| CliError::Usage("the body has no req_info: is it a refund notification?".into()))?
            .to_owned()
    } else {
        trimmed.to_owned()
    };
    let plain = decrypt_req_info(&req_info, &key)?;
    emit(&format!("{plain}\n"));
    Ok(())
}

/// Splits a message as saved from the wire: header lines (`Name: value`; a request or status
/// line is skipped), an empty line, the raw body. Without an empty line, it is all body.
fn split_message(input: &[u8]) -> (Vec<(String, String)>, &[u8]) {
    let input = input.strip_prefix("\u{FEFF}".as_bytes()).unwrap_or(input);
    if input.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{') {
        return (Vec::new(), input);
    }
    let (head, body) = match (
        input.windows(4).position(|w| w == b"\r\n\r\n"),
        input.windows(2).position(|w| w == b"\n\n"),
    ) {
        (Some(crlf), Some(lf)) if lf < crlf => (&input[..lf], &input[lf + 2..]),
        (Some(crlf), _) => (&input[..crlf], &input[crlf + 4..]),
        (None, Some(lf)) => (&input[..lf], &input[lf + 2..]),
        (None, None) => return (Vec::new(), input),
    };
    let headers = String::from_utf8_lossy(head)
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (headers, body)
}

fn apiv3_key(args: &V3Args) -> Result<Option<Vec<u8>>, CliError> {
    args.apiv3_key_file.as_deref().map(read_key_file).transpose()
}

fn verify_v3(args: &V3Args, input: &[u8], lang: Lang) -> Result<(), CliError> {
    use wxpay_protocol::v3::{Certificate, PublicKey, SignatureHeaders, Verifier};
    let (headers, body) = split_message(input);
    if headers.is_empty() {
        return Err(CliError::Usage(
            "no headers: give the notification as received, its Wechatpay-* header lines, an empty line, then the raw body".into(),
        ));
    }
    let read = |p: &std::path::Path| {
        std::fs::read_to_string(p).map_err(|e| CliError::Usage(format!("cannot read {}: {e}", p.display())))
    };
    let mut verifier = Verifier::new();
    for p in &args.platform_cert {
        verifier = verifier.with_certificate(&Certificate::from_pem(&read(p)?)?);
    }
    if let (Some(p), Some(id)) = (&args.public_key, &args.public_key_id) {
        verifier = verifier.with_public_key(id.trim(), PublicKey::from_pem(&read(p)?)?);
    }
    if args.platform_cert.is_empty() && args.public_key.is_none() {
        return Err(CliError::Usage(
            "no key to verify with: give --public-key FILE --public-key-id ID (pub_key.pem) and/or --platform-cert FILE".into(),
        ));
    }
    let get = |name: &str| headers.iter().find(|(k, _)| k == name).map_or("", |(_, v)| v.as_str());
    let signature = SignatureHeaders {
        timestamp: get("wechatpay-timestamp"),
        nonce: get("wechatpay-nonce"),
        signature: get("wechatpay-signature"),
        serial: get("wechatpay-serial"),
    };
    let now = args.at.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0)
    });
    let key = apiv3_key(args)?;
    let report = wxpay_protocol::v3::doctor::diagnose(&signature, body, &verifier, now, key.as_deref());
    emit(&report.in_lang(lang).to_string());
    if report.verified { Ok(()) } else { Err(CliError::Failed) }
}
