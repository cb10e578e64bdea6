//! PEM, and the few DER structures APIv3 needs: a certificate's serial number and public
//! key, and the RSA key inside a `PUBLIC KEY`. A reader of its own rather than an X.509
//! crate: it reads these fields and nothing else, refuses anything it does not expect, and
//! never panics on hostile input (every length is checked against what is left).

use base64::Engine;

use crate::Error;

/// The blocks of a PEM text: each label (`CERTIFICATE`, `PRIVATE KEY`, …) with its DER.
pub(crate) fn pem_blocks(text: &str) -> Result<Vec<(String, Vec<u8>)>, Error> {
    let mut blocks = Vec::new();
    let mut lines = text.lines().map(str::trim);
    while let Some(line) = lines.next() {
        let Some(label) = line.strip_prefix("-----BEGIN ").and_then(|l| l.strip_suffix("-----")) else {
            continue;
        };
        let end = format!("-----END {label}-----");
        let mut b64 = String::new();
        loop {
            match lines.next() {
                Some(l) if l == end => break,
                Some(l) => b64.push_str(l),
                None => return Err(invalid(format!("the PEM block {label} has no END line"))),
            }
        }
        let der = base64::engine::general_purpose::STANDARD
            .decode(b64.as_bytes())
            .map_err(|e| invalid(format!("the PEM block {label} is not base64: {e}")))?;
        blocks.push((label.to_owned(), der));
    }
    if blocks.is_empty() {
        return Err(invalid("no PEM block (-----BEGIN …-----) found".to_owned()));
    }
    Ok(blocks)
}

fn invalid(reason: String) -> Error {
    Error::Invalid {
        what: "key or certificate",
        reason,
    }
}

const SEQUENCE: u8 = 0x30;
const INTEGER: u8 = 0x02;
const BIT_STRING: u8 = 0x03;
const OID: u8 = 0x06;
const VERSION: u8 = 0xA0;

/// `rsaEncryption`, 1.2.840.113549.1.1.1.
const RSA_ENCRYPTION: &[u8] = &[0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01, 0x01];

/// One DER element at the start of `input`: its tag, its content, and what follows it.
fn element(input: &[u8]) -> Result<(u8, &[u8], &[u8]), Error> {
    let truncated = || invalid("truncated DER".to_owned());
    let (&tag, rest) = input.split_first().ok_or_else(truncated)?;
    let (&first, mut rest) = rest.split_first().ok_or_else(truncated)?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7F);
        if n == 0 || n > 4 {
            return Err(invalid(format!("a DER length of {n} bytes")));
        }
        let (bytes, after) = rest.split_at_checked(n).ok_or_else(truncated)?;
        rest = after;
        bytes.iter().fold(0usize, |acc, b| (acc << 8) | usize::from(*b))
    };
    let (content, after) = rest.split_at_checked(len).ok_or_else(truncated)?;
    Ok((tag, content, after))
}

/// The content of an element that must have `tag`, and what follows it.
fn expect<'a>(input: &'a [u8], tag: u8, what: &str) -> Result<(&'a [u8], &'a [u8]), Error> {
    let (found, content, rest) = element(input)?;
    if found != tag {
        return Err(invalid(format!("{what}: DER tag {found:#04x}, expected {tag:#04x}")));
    }
    Ok((content, rest))
}

/// The RSA public key (PKCS#1 `RSAPublicKey`, as ring takes it) inside a
/// `SubjectPublicKeyInfo`; anything but RSA is refused.
pub(crate) fn rsa_key_of_spki(spki: &[u8]) -> Result<&[u8], Error> {
    let (info, _) = expect(spki, SEQUENCE, "SubjectPublicKeyInfo")?;
    let (algorithm, rest) = expect(info, SEQUENCE, "the key's algorithm")?;
    let (oid, _) = expect(algorithm, OID, "the key's algorithm")?;
    if oid != RSA_ENCRYPTION {
        return Err(invalid("the key is not an RSA key".to_owned()));
    }
    let (bits, _) = expect(rest, BIT_STRING, "the key's bits")?;
    match bits.split_first() {
        Some((0, key)) => Ok(key),
        _ => Err(invalid("the key's BIT STRING has unused bits".to_owned())),
    }
}

/// What a certificate says of itself that APIv3 needs.
pub(crate) struct CertParts<'a> {
    /// Upper-case hex without leading zeros, as WeChat Pay writes it.
    pub serial: String,
    /// The `SubjectPublicKeyInfo`.
    pub spki: &'a [u8],
    /// When it takes effect and expires, Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
}

/// A certificate's serial number, validity and `SubjectPublicKeyInfo`.
pub(crate) fn certificate_parts(cert: &[u8]) -> Result<CertParts<'_>, Error> {
    let (certificate, _) = expect(cert, SEQUENCE, "Certificate")?;
    let (tbs, _) = expect(certificate, SEQUENCE, "TBSCertificate")?;
    let mut rest = tbs;
    if rest.first() == Some(&VERSION) {
        rest = expect(rest, VERSION, "the version")?.1;
    }
    let (serial, rest) = expect(rest, INTEGER, "the serial number")?;
    // signature and issuer: skipped; then the validity, the subject (skipped), the key.
    let rest = element(rest)?.2;
    let rest = element(rest)?.2;
    let (validity, rest) = expect(rest, SEQUENCE, "the validity")?;
    let (not_before, after) = time(validity)?;
    let (not_after, _) = time(after)?;
    let rest = element(rest)?.2;
    let (_, _, after) = element(rest)?;
    let spki = &rest[..rest.len() - after.len()];
    let digits: String = serial.iter().map(|b| format!("{b:02X}")).collect();
    let trimmed = digits.trim_start_matches('0');
    Ok(CertParts {
        serial: if trimmed.is_empty() {
            "0".to_owned()
        } else {
            trimmed.to_owned()
        },
        spki,
        not_before,
        not_after,
    })
}

const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;

/// A `Time` of a validity (`UTCTime` `YYMMDDHHMMSSZ`, years 1950–2049, or `GeneralizedTime`
/// `YYYYMMDDHHMMSSZ`), in Unix seconds, and what follows it.
fn time(input: &[u8]) -> Result<(i64, &[u8]), Error> {
    let (tag, content, rest) = element(input)?;
    let text = std::str::from_utf8(content).map_err(|_| invalid("a certificate time is not text".to_owned()))?;
    let digits = text
        .strip_suffix('Z')
        .filter(|d| d.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| invalid(format!("certificate time {text:?} is not in UTC")))?;
    // All ASCII digits (checked above), so every slice below is on a character boundary and
    // parses.
    let n = |r: std::ops::Range<usize>| digits[r].parse::<i64>().unwrap_or(0);
    let (year, at) = match (tag, digits.len()) {
        (UTC_TIME, 12) => {
            let yy = n(0..2);
            (if yy < 50 { 2000 + yy } else { 1900 + yy }, 2)
        }
        (GENERALIZED_TIME, 14) => (n(0..4), 4),
        _ => return Err(invalid(format!("certificate time {text:?} has another form"))),
    };
    let part = |i: usize| n(at + 2 * i..at + 2 * i + 2);
    let unix = crate::types::utc_unix(year, part(0), part(1), part(2), part(3), part(4))
        .ok_or_else(|| invalid(format!("certificate time {text:?} is not a real date and time")))?;
    Ok((unix, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_past_the_input_are_refused_not_trusted() {
        assert!(element(&[0x30]).is_err());
        assert!(element(&[0x30, 0x05, 0x01]).is_err());
        assert!(element(&[0x30, 0x84, 0xFF, 0xFF, 0xFF, 0xFF]).is_err());
        assert!(element(&[0x30, 0x85, 0, 0, 0, 0, 1]).is_err());
        assert!(element(&[0x30, 0x80]).is_err());
        assert_eq!(
            element(&[0x02, 0x01, 0x07, 0xAA]).unwrap(),
            (0x02, &[0x07][..], &[0xAA][..])
        );
        assert_eq!(
            element(&[0x04, 0x81, 0x01, 0x09]).unwrap(),
            (0x04, &[0x09][..], &[][..])
        );
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_are_read_or_refused_never_a_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let _ = certificate_parts(&bytes);
            let _ = rsa_key_of_spki(&bytes);
            let mut cert = vec![0x30, 0x82, 0x01, 0x00, 0x30, 0x81, 0xF0, 0xA0, 0x03, 0x02, 0x01, 0x02];
            cert.extend_from_slice(&bytes);
            let _ = certificate_parts(&cert);
        }
    }

    #[test]
    fn certificate_times_are_read_in_both_forms() {
        assert_eq!(time(b"\x17\x0d491231235959Z").unwrap().0, 2_524_607_999);
        assert_eq!(time(b"\x17\x0d500101000000Z").unwrap().0, -631_152_000);
        assert_eq!(time(b"\x18\x0f20500101000000Z").unwrap().0, 2_524_608_000);
        assert!(time(b"\x17\x0d491231235959+").is_err());
        assert!(time(b"\x18\x0d491231235959Z").is_err());
    }

    #[test]
    fn a_pem_text_without_a_block_or_an_end_is_refused() {
        assert!(pem_blocks("just text").is_err());
        assert!(pem_blocks("-----BEGIN PUBLIC KEY-----\nAAAA\n").is_err());
        assert!(pem_blocks("-----BEGIN PUBLIC KEY-----\n!!!!\n-----END PUBLIC KEY-----\n").is_err());
        let blocks = pem_blocks("x\n-----BEGIN A-----\nAQI=\n-----END A-----\n").unwrap();
        assert_eq!(blocks, [("A".to_owned(), vec![1, 2])]);
    }
}
