//! Newtypes that make illegal values unrepresentable.
//!
//! Every value that crosses the wire is parsed once, at the boundary, into one of these types;
//! code that holds an [`OutTradeNo`] never has to wonder whether it is 40 characters long.

use std::fmt;
use std::str::FromStr;

use crate::Error;

/// An amount of money in fen (分, 1/100 CNY). WeChat Pay counts every amount this way, and so
/// does wxpay, end to end: there is no float anywhere.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Fen(u64);

impl Fen {
    /// Zero fen.
    pub const ZERO: Fen = Fen(0);
    /// The largest amount wxpay accepts: it still fits a signed 64-bit database column.
    pub const MAX: Fen = Fen(i64::MAX as u64);

    /// An amount of `fen` fen.
    ///
    /// # Errors
    /// [`Error::Invalid`] above [`Fen::MAX`].
    pub fn new(fen: u64) -> Result<Fen, Error> {
        if fen > Fen::MAX.0 {
            return Err(Error::invalid(
                "amount",
                format!("{fen} fen is more than the maximum {}", Fen::MAX.0),
            ));
        }
        Ok(Fen(fen))
    }

    /// The number of fen.
    pub fn get(self) -> u64 {
        self.0
    }

    /// The number of fen as a signed 64-bit integer (a database column, a term of a sum):
    /// every amount fits, since [`Fen::MAX`] is `i64::MAX`.
    pub fn as_i64(self) -> i64 {
        i64::try_from(self.0).unwrap_or(i64::MAX)
    }

    /// Adds two amounts, or `None` past [`Fen::MAX`].
    pub fn checked_add(self, other: Fen) -> Option<Fen> {
        self.0.checked_add(other.0).filter(|v| *v <= Fen::MAX.0).map(Fen)
    }

    /// Subtracts, or `None` below zero.
    pub fn checked_sub(self, other: Fen) -> Option<Fen> {
        self.0.checked_sub(other.0).map(Fen)
    }

    /// Parses the decimal integer form WeChat Pay uses in `total_fee` and friends: ASCII digits
    /// only, no sign, no decimal point, no leading zero (except `0` itself).
    ///
    /// # Errors
    /// [`Error::Invalid`] for anything else, including yuan amounts such as `0.01`.
    pub fn parse(s: &str) -> Result<Fen, Error> {
        let b = s.as_bytes();
        if b.is_empty() {
            return Err(Error::invalid("amount", "empty; an amount is an integer number of fen"));
        }
        if !b.iter().all(u8::is_ascii_digit) {
            let hint = if s.contains('.') {
                "; amounts are integer fen (1 yuan = 100), not yuan with decimals"
            } else {
                ""
            };
            return Err(Error::invalid(
                "amount",
                format!("{s:?} is not an integer number of fen{hint}"),
            ));
        }
        if b.len() > 1 && b[0] == b'0' {
            return Err(Error::invalid("amount", format!("{s:?} has a leading zero")));
        }
        if b.len() > 19 {
            return Err(Error::invalid("amount", format!("{s:?} is too large")));
        }
        let mut v: u64 = 0;
        for d in b {
            v = v * 10 + u64::from(d - b'0');
        }
        Fen::new(v)
    }

    /// Parses a yuan amount as printed in WeChat Pay bills (`0.01`, `45.0`, `1000.10`, `0`),
    /// exactly: at most two decimals that are not zero, no rounding ever.
    ///
    /// # Errors
    /// [`Error::Invalid`] for a negative amount, a third non-zero decimal, or anything that
    /// is not a plain decimal number.
    pub fn from_yuan(s: &str) -> Result<Fen, Error> {
        let v = parse_decimal_scaled(s, 2, "yuan amount")?;
        if v < 0 {
            return Err(Error::invalid("yuan amount", format!("{s:?} is negative")));
        }
        Fen::new(v as u64)
    }

    /// Formats as yuan with two decimals (`1999` fen → `19.99`), the form used in bills.
    pub fn to_yuan(self) -> String {
        format!("{}.{:02}", self.0 / 100, self.0 % 100)
    }
}

impl fmt::Debug for Fen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fen({})", self.0)
    }
}

impl fmt::Display for Fen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl FromStr for Fen {
    type Err = Error;
    fn from_str(s: &str) -> Result<Fen, Error> {
        Fen::parse(s)
    }
}

/// Parses a plain decimal number (`-0.02000`, `45.0`, `7`) into an integer scaled by
/// `10^scale`, refusing any digit that would be lost.
pub(crate) fn parse_decimal_scaled(s: &str, scale: u32, what: &'static str) -> Result<i64, Error> {
    let bad = || Error::invalid(what, format!("{s:?} is not a plain decimal number"));
    let (neg, body) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (int, frac) = match body.split_once('.') {
        Some((i, f)) => (i, f),
        None => (body, ""),
    };
    if int.is_empty() || !int.bytes().all(|b| b.is_ascii_digit()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    if body.ends_with('.') {
        return Err(bad());
    }
    let frac_trimmed = frac.trim_end_matches('0');
    if frac_trimmed.len() > scale as usize {
        return Err(Error::invalid(
            what,
            format!("{s:?} has more than {scale} significant decimals and cannot be represented exactly"),
        ));
    }
    let mut v: i64 = 0;
    for d in int.bytes() {
        v = v
            .checked_mul(10)
            .and_then(|v| v.checked_add(i64::from(d - b'0')))
            .ok_or_else(|| Error::invalid(what, format!("{s:?} is too large")))?;
    }
    for i in 0..scale as usize {
        let d = frac_trimmed.as_bytes().get(i).map_or(0, |d| d - b'0');
        v = v
            .checked_mul(10)
            .and_then(|v| v.checked_add(i64::from(d)))
            .ok_or_else(|| Error::invalid(what, format!("{s:?} is too large")))?;
    }
    Ok(if neg { -v } else { v })
}

/// Checks that `s` has between `min` and `max` characters, all accepted by `ok`.
fn check_chars(
    what: &'static str,
    s: &str,
    min: usize,
    max: usize,
    allowed: &str,
    ok: impl Fn(u8) -> bool,
) -> Result<(), Error> {
    let len = s.chars().count();
    if len < min || len > max {
        let range = if min == max {
            format!("exactly {min}")
        } else {
            format!("{min} to {max}")
        };
        return Err(Error::invalid(
            what,
            format!("{s:?} has {len} characters, it must have {range}"),
        ));
    }
    if let Some(c) = s.chars().find(|c| !c.is_ascii() || !ok(*c as u8)) {
        return Err(Error::invalid(
            what,
            format!("{s:?} contains {c:?}; allowed are {allowed}"),
        ));
    }
    Ok(())
}

macro_rules! string_newtype {
    ($(#[$doc:meta])* $name:ident, $what:literal, |$s:ident| $check:expr) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Parses and checks the value.
            ///
            /// # Errors
            #[doc = concat!("[`Error::Invalid`] when the value breaks the rules of ", $what, ".")]
            pub fn new(value: impl Into<String>) -> Result<Self, Error> {
                let $s: String = value.into();
                $check?;
                Ok(Self($s))
            }

            /// The value as it goes on the wire.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({:?})"), self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl FromStr for $name {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self, Error> {
                Self::new(s)
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::new(s).map_err(serde::de::Error::custom)
            }
        }
    };
}

fn trade_no_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'|' | b'*')
}

string_newtype!(
    /// The merchant's order number: 1 to 32 characters of `0-9 A-Z a-z _ - | *`, unique per
    /// merchant.
    OutTradeNo, "an out_trade_no",
    |s| check_chars("out_trade_no", &s, 1, 32, "0-9 A-Z a-z _ - | *", trade_no_char)
);

impl OutTradeNo {
    /// Checks that the number may name a new order: 6 to 32 characters, as WeChat Pay's
    /// current pages ask on APIv2 and APIv3. The type itself takes 1 to 32, because numbers
    /// read back from WeChat Pay (answers, bills) may be older and shorter.
    ///
    /// # Errors
    /// [`Error::InvalidField`] for a number under 6 characters.
    pub fn check_new(&self) -> Result<(), Error> {
        if self.0.len() < 6 {
            return Err(Error::field("out_trade_no", "must be 6 to 32 characters"));
        }
        Ok(())
    }
}

string_newtype!(
    /// The merchant's refund number: 1 to 64 characters of `0-9 A-Z a-z _ - | * @`.
    OutRefundNo, "an out_refund_no",
    |s| check_chars("out_refund_no", &s, 1, 64, "0-9 A-Z a-z _ - | * @", |b| trade_no_char(b) || b == b'@')
);

string_newtype!(
    /// A mini program's (or official account's) AppID, such as `wxd678efh567hg6787`:
    /// 1 to 32 ASCII letters and digits.
    AppId, "an appid",
    |s| check_chars("appid", &s, 1, 32, "ASCII letters and digits", |b| b.is_ascii_alphanumeric())
);

string_newtype!(
    /// A merchant number (商户号), such as `1900000109`: 1 to 32 ASCII digits.
    MchId, "a mch_id",
    |s| check_chars("mch_id", &s, 1, 32, "ASCII digits", |b| b.is_ascii_digit())
);

string_newtype!(
    /// A random string sent with each message (`nonce_str`, `nonceStr`): 1 to 32 ASCII
    /// letters and digits. The caller supplies it, so that tests can pin it.
    Nonce, "a nonce",
    |s| check_chars("nonce", &s, 1, 32, "ASCII letters and digits", |b| b.is_ascii_alphanumeric())
);

impl Nonce {
    /// A 32-character nonce made from 16 random bytes that the caller drew, as lowercase hex.
    pub fn from_random_bytes(bytes: [u8; 16]) -> Nonce {
        let mut s = String::with_capacity(32);
        for b in bytes {
            s.push(char::from(HEX_LOWER[usize::from(b >> 4)]));
            s.push(char::from(HEX_LOWER[usize::from(b & 15)]));
        }
        Nonce(s)
    }
}

const HEX_LOWER: &[u8; 16] = b"0123456789abcdef";

/// The signature algorithm of APIv2 (`sign_type`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default, serde::Serialize, serde::Deserialize)]
pub enum SignType {
    /// `MD5`, WeChat Pay's default when `sign_type` is absent.
    #[default]
    #[serde(rename = "MD5")]
    Md5,
    /// `HMAC-SHA256`.
    #[serde(rename = "HMAC-SHA256")]
    HmacSha256,
}

impl SignType {
    /// The name on the wire: `MD5` or `HMAC-SHA256`.
    pub fn as_str(self) -> &'static str {
        match self {
            SignType::Md5 => "MD5",
            SignType::HmacSha256 => "HMAC-SHA256",
        }
    }

    /// The number of hex characters of a signature of this type (32 or 64).
    pub fn hex_len(self) -> usize {
        match self {
            SignType::Md5 => 32,
            SignType::HmacSha256 => 64,
        }
    }

    /// The other algorithm.
    pub fn other(self) -> SignType {
        match self {
            SignType::Md5 => SignType::HmacSha256,
            SignType::HmacSha256 => SignType::Md5,
        }
    }
}

impl fmt::Display for SignType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SignType {
    type Err = Error;
    fn from_str(s: &str) -> Result<SignType, Error> {
        match s {
            "MD5" => Ok(SignType::Md5),
            "HMAC-SHA256" => Ok(SignType::HmacSha256),
            other => {
                let hint = match other.to_ascii_uppercase().as_str() {
                    "MD5" | "HMAC-SHA256" => format!(" (write it in capitals: {})", other.to_ascii_uppercase()),
                    "HMAC_SHA256" | "HMACSHA256" | "SHA256" | "HMAC" => " (did you mean HMAC-SHA256?)".to_owned(),
                    "RSA" => " (RSA is the APIv3 paySign type; APIv2 uses MD5 or HMAC-SHA256)".to_owned(),
                    _ => String::new(),
                };
                Err(Error::invalid(
                    "sign_type",
                    format!("{other:?} is not MD5 or HMAC-SHA256{hint}"),
                ))
            }
        }
    }
}

/// The merchant's APIv2 key (API密钥): 32 ASCII letters and digits, set by the merchant in
/// the merchant platform. `Debug` and `Display` never show it.
#[derive(Clone)]
pub struct ApiKey {
    raw: String,
    // The HMAC key schedule is computed once per key instead of once per signature: it costs
    // two SHA-256 blocks, a sizeable part of signing a short message.
    hmac: ring::hmac::Key,
}

impl ApiKey {
    /// Parses and checks an API key.
    ///
    /// # Errors
    /// [`Error::Invalid`] with the reason, which never contains the key itself.
    pub fn new(value: impl Into<String>) -> Result<ApiKey, Error> {
        let raw: String = value.into();
        let len = raw.chars().count();
        if raw.trim() != raw {
            return Err(Error::invalid(
                "API key",
                "it starts or ends with whitespace (a newline from a key file?); the key is exactly the 32 characters",
            ));
        }
        if len != 32 {
            return Err(Error::invalid(
                "API key",
                format!(
                    "it has {len} characters; an APIv2 key has exactly 32 (it is set in the merchant platform under API安全, and it is neither the mini program AppSecret nor the APIv3 key)"
                ),
            ));
        }
        if let Some(c) = raw.chars().find(|c| !c.is_ascii_alphanumeric()) {
            let shown = if c.is_whitespace() {
                "whitespace".to_owned()
            } else {
                format!("{c:?}")
            };
            return Err(Error::invalid(
                "API key",
                format!("it contains {shown}; an APIv2 key has only ASCII letters and digits"),
            ));
        }
        let hmac = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, raw.as_bytes());
        Ok(ApiKey { raw, hmac })
    }

    /// The key itself, for signing. Never log or display it; see [`ApiKey::masked`].
    pub fn expose(&self) -> &str {
        &self.raw
    }

    /// The key with all but its last four characters hidden, for showing to a user.
    pub fn masked(&self) -> String {
        mask_secret(&self.raw)
    }

    pub(crate) fn hmac_key(&self) -> &ring::hmac::Key {
        &self.hmac
    }
}

/// Hides all but the last four characters of a secret (all of it when it is short).
pub fn mask_secret(secret: &str) -> String {
    let n = secret.chars().count();
    if n <= 8 {
        return "*".repeat(n);
    }
    let tail: String = secret.chars().skip(n - 4).collect();
    format!("{}{}", "*".repeat(n - 4), tail)
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

impl fmt::Display for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted API key>")
    }
}

impl PartialEq for ApiKey {
    fn eq(&self, other: &ApiKey) -> bool {
        use subtle::ConstantTimeEq;
        self.raw.as_bytes().ct_eq(other.raw.as_bytes()).into()
    }
}

impl Eq for ApiKey {}

impl FromStr for ApiKey {
    type Err = Error;
    fn from_str(s: &str) -> Result<ApiKey, Error> {
        ApiKey::new(s)
    }
}

/// The merchant's APIv3 key (APIv3密钥): 32 bytes, set in the merchant platform, the AES-256-GCM
/// key of notification resources and downloaded platform certificates. `Debug` and `Display`
/// never show it.
#[derive(Clone)]
pub struct ApiV3Key(String);

impl ApiV3Key {
    /// Parses and checks an APIv3 key.
    ///
    /// # Errors
    /// [`Error::Invalid`] with the reason, which never contains the key itself.
    pub fn new(value: impl Into<String>) -> Result<ApiV3Key, Error> {
        let raw: String = value.into();
        if raw.trim() != raw {
            return Err(Error::invalid(
                "APIv3 key",
                "it starts or ends with whitespace (a newline from a key file?); the key is exactly the 32 characters",
            ));
        }
        if raw.len() != 32 || !raw.is_ascii() {
            return Err(Error::invalid(
                "APIv3 key",
                format!(
                    "it has {} bytes; an APIv3 key is exactly 32 ASCII characters (set in the merchant platform under API安全, and it is not the APIv2 key)",
                    raw.len()
                ),
            ));
        }
        Ok(ApiV3Key(raw))
    }

    /// The key's bytes, for AES-256-GCM. Never log or display them.
    pub fn expose(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl fmt::Debug for ApiV3Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiV3Key(<redacted>)")
    }
}

impl fmt::Display for ApiV3Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted APIv3 key>")
    }
}

impl PartialEq for ApiV3Key {
    fn eq(&self, other: &ApiV3Key) -> bool {
        use subtle::ConstantTimeEq;
        self.0.as_bytes().ct_eq(other.0.as_bytes()).into()
    }
}

impl Eq for ApiV3Key {}

/// A mini program's AppSecret, used only for `jscode2session`. `Debug` and `Display` never
/// show it.
#[derive(Clone, PartialEq, Eq)]
pub struct AppSecret(String);

impl AppSecret {
    /// Parses an AppSecret: 1 to 64 ASCII letters and digits (WeChat issues 32 hex digits).
    ///
    /// # Errors
    /// [`Error::Invalid`] with a reason that does not contain the secret.
    pub fn new(value: impl Into<String>) -> Result<AppSecret, Error> {
        let raw: String = value.into();
        if raw.is_empty() || raw.len() > 64 || !raw.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(Error::invalid(
                "app secret",
                "an AppSecret is 1 to 64 ASCII letters and digits (WeChat issues 32 hex digits)",
            ));
        }
        Ok(AppSecret(raw))
    }

    /// The secret itself, for the `jscode2session` query. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for AppSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AppSecret(<redacted>)")
    }
}

/// The credentials of one APIv2 merchant and mini program: what is needed to sign requests
/// and check answers and notifications.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Merchant {
    /// The mini program's AppID.
    pub appid: AppId,
    /// The merchant number.
    pub mch_id: MchId,
    /// The APIv2 key.
    pub key: ApiKey,
    /// The algorithm this merchant signs with; messages cannot override it.
    pub sign_type: SignType,
}

/// Wall-clock time in Beijing (UTC+8) as WeChat Pay's APIv2 writes it: `yyyyMMddHHmmss`
/// (`time_start`, `time_expire`, `time_end`). Conversions take Unix seconds as arguments;
/// nothing here reads a clock.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BeijingTime {
    unix: i64,
}

const BEIJING_OFFSET: i64 = 8 * 3600;

impl BeijingTime {
    /// The instant `unix` seconds after the Unix epoch.
    pub fn from_unix(unix: i64) -> BeijingTime {
        BeijingTime { unix }
    }

    /// Seconds since the Unix epoch.
    pub fn unix(self) -> i64 {
        self.unix
    }

    /// Parses `yyyyMMddHHmmss` in Beijing time.
    ///
    /// # Errors
    /// [`Error::Invalid`] unless it is 14 digits forming a real date and time.
    pub fn parse_compact(s: &str) -> Result<BeijingTime, Error> {
        let bad = || Error::invalid("time", format!("{s:?} is not a yyyyMMddHHmmss time"));
        if s.len() != 14 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let n = |r: std::ops::Range<usize>| s[r].parse::<i64>().map_err(|_| bad());
        let (y, mo, d, h, mi, se) = (n(0..4)?, n(4..6)?, n(6..8)?, n(8..10)?, n(10..12)?, n(12..14)?);
        Self::from_parts(y, mo, d, h, mi, se).ok_or_else(bad)
    }

    /// Parses `yyyy-MM-dd HH:mm:ss` in Beijing time, the form of refund success times and bills.
    ///
    /// # Errors
    /// [`Error::Invalid`] unless it is a real date and time in that form.
    pub fn parse_dashed(s: &str) -> Result<BeijingTime, Error> {
        let b = s.as_bytes();
        let shape_ok = b.len() == 19
            && b.iter().enumerate().all(|(i, c)| match i {
                4 | 7 => *c == b'-',
                10 => *c == b' ',
                13 | 16 => *c == b':',
                _ => c.is_ascii_digit(),
            });
        if !shape_ok {
            return Err(Error::invalid(
                "time",
                format!("{s:?} is not a yyyy-MM-dd HH:mm:ss time"),
            ));
        }
        let compact: String = s.chars().filter(char::is_ascii_digit).collect();
        Self::parse_compact(&compact)
    }

    fn from_parts(y: i64, mo: i64, d: i64, h: i64, mi: i64, se: i64) -> Option<BeijingTime> {
        Some(BeijingTime {
            unix: utc_unix(y, mo, d, h, mi, se)? - BEIJING_OFFSET,
        })
    }

    /// `(year, month, day, hour, minute, second)` in Beijing.
    pub fn parts(self) -> (i64, i64, i64, i64, i64, i64) {
        civil(self.unix + BEIJING_OFFSET)
    }

    /// `yyyyMMddHHmmss`.
    pub fn to_compact(self) -> String {
        let (y, mo, d, h, mi, s) = self.parts();
        format!("{y:04}{mo:02}{d:02}{h:02}{mi:02}{s:02}")
    }

    /// `yyyy-MM-dd HH:mm:ss`.
    pub fn to_dashed(self) -> String {
        let (y, mo, d, h, mi, s) = self.parts();
        format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}")
    }

    /// `yyyyMMdd`, the form of `bill_date`.
    pub fn to_date_compact(self) -> String {
        let (y, mo, d, ..) = self.parts();
        format!("{y:04}{mo:02}{d:02}")
    }
}

impl fmt::Debug for BeijingTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BeijingTime({})", self.to_dashed())
    }
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if is_leap(y) => 29,
        _ => 28,
    }
}

/// Unix milliseconds as RFC 3339 in UTC with milliseconds, `2026-11-27T03:04:05.678Z`: the
/// form of the gateway's API and events.
pub fn rfc3339_utc_millis(ms: i64) -> String {
    let (y, m, d, h, mi, sec) = civil(ms.div_euclid(1000));
    format!(
        "{y:04}-{m:02}-{d:02}T{h:02}:{mi:02}:{sec:02}.{:03}Z",
        ms.rem_euclid(1000)
    )
}

/// `(year, month, day, hour, minute, second)` of seconds since the epoch, in the zone they
/// are counted in.
fn civil(secs: i64) -> (i64, i64, i64, i64, i64, i64) {
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    (y, m, d, rem / 3600, rem % 3600 / 60, rem % 60)
}

// Howard Hinnant's algorithms for the proleptic Gregorian calendar.
/// The Unix seconds of a date and time read as UTC, if it is a real one (a certificate's
/// validity is in UTC; WeChat Pay's own times are Beijing's, see [`BeijingTime`]).
pub(crate) fn utc_unix(y: i64, mo: i64, d: i64, h: i64, mi: i64, se: i64) -> Option<i64> {
    if !(1..=12).contains(&mo) || d < 1 || d > days_in_month(y, mo) || h > 23 || mi > 59 || se > 59 {
        return None;
    }
    Some(days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + se)
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fen_parses_only_integer_fen() {
        assert_eq!(Fen::parse("1").unwrap().get(), 1);
        assert_eq!(Fen::parse("0").unwrap().get(), 0);
        assert_eq!(Fen::parse("100010").unwrap().get(), 100_010);
        for bad in ["", "0.01", "-1", "+1", "01", " 1", "1e3", "99999999999999999999"] {
            assert!(Fen::parse(bad).is_err(), "{bad:?} must be refused");
        }
        let msg = Fen::parse("0.01").unwrap_err().to_string();
        assert!(msg.contains("not yuan"), "{msg}");
    }

    #[test]
    fn yuan_amounts_in_bills_become_exact_fen() {
        for (yuan, fen) in [
            ("0.07", 7),
            ("19.99", 1999),
            ("1000.10", 100_010),
            ("45.0", 4500),
            ("0", 0),
            ("0.00", 0),
            ("3.5", 350),
        ] {
            assert_eq!(Fen::from_yuan(yuan).unwrap().get(), fen, "{yuan}");
        }
        for bad in ["0.001", "-1.00", "1.", ".5", "1,00", "abc", ""] {
            assert!(Fen::from_yuan(bad).is_err(), "{bad:?} must be refused");
        }
        assert_eq!(Fen::parse("1999").unwrap().to_yuan(), "19.99");
        assert_eq!(Fen::parse("7").unwrap().to_yuan(), "0.07");
    }

    #[test]
    fn out_trade_no_allows_exactly_the_documented_characters() {
        assert!(OutTradeNo::new("A1_b-2|c*3").is_ok());
        assert!(OutTradeNo::new("x".repeat(32)).is_ok());
        assert!(OutTradeNo::new("x".repeat(33)).is_err());
        // A new order's number needs six characters; an older, shorter one still parses.
        assert!(OutTradeNo::new("12345").unwrap().check_new().is_err());
        assert!(OutTradeNo::new("123456").unwrap().check_new().is_ok());
        assert!(OutTradeNo::new("").is_err());
        assert!(OutTradeNo::new("a b").is_err());
        assert!(OutTradeNo::new("订单1").is_err());
        assert!(OutTradeNo::new("a@b").is_err());
        assert!(OutRefundNo::new("a@b").is_ok());
    }

    #[test]
    fn an_apiv3_key_is_32_bytes_and_never_shown() {
        let key = ApiV3Key::new("wxpaySimulatorApiV3TestKey000001").unwrap();
        assert_eq!(key.expose().len(), 32);
        assert_eq!(format!("{key:?} {key}"), "ApiV3Key(<redacted>) <redacted APIv3 key>");
        let err = ApiV3Key::new("wxpaySimulatorApiV3TestKey00000")
            .unwrap_err()
            .to_string();
        assert!(err.contains("31 bytes") && !err.contains("wxpaySim"), "{err}");
        let err = ApiV3Key::new("wxpaySimulatorApiV3TestKey000001\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("whitespace"), "{err}");
    }

    #[test]
    fn api_key_is_never_shown() {
        let key = ApiKey::new("192006250b4c09247ec02edce69f6a2d").unwrap();
        assert_eq!(format!("{key:?}"), "ApiKey(<redacted>)");
        assert_eq!(format!("{key}"), "<redacted API key>");
        assert_eq!(key.masked(), "****************************6a2d");
        let err = ApiKey::new("192006250b4c09247ec02edce69f6a2d\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("whitespace") && !err.contains("192006"), "{err}");
        let err = ApiKey::new("short").unwrap_err().to_string();
        assert!(err.contains("5 characters") && !err.contains("short"), "{err}");
    }

    #[test]
    fn sign_type_names_are_exact_with_hints() {
        assert_eq!("MD5".parse::<SignType>().unwrap(), SignType::Md5);
        assert_eq!("HMAC-SHA256".parse::<SignType>().unwrap(), SignType::HmacSha256);
        assert!("md5".parse::<SignType>().unwrap_err().to_string().contains("capitals"));
        assert!(
            "HMAC_SHA256"
                .parse::<SignType>()
                .unwrap_err()
                .to_string()
                .contains("did you mean")
        );
    }

    #[test]
    fn beijing_time_round_trips_and_is_utc_plus_eight() {
        // 2014-09-03 13:15:40 in Beijing is 05:15:40 UTC.
        let t = BeijingTime::parse_compact("20140903131540").unwrap();
        assert_eq!(t.unix(), 1_409_721_340);
        assert_eq!(t.to_compact(), "20140903131540");
        assert_eq!(t.to_dashed(), "2014-09-03 13:15:40");
        assert_eq!(
            BeijingTime::parse_dashed("2020-01-04 18:34:24").unwrap().to_compact(),
            "20200104183424"
        );
        assert!(BeijingTime::parse_compact("20230229000000").is_err());
        assert!(BeijingTime::parse_compact("20240229000000").is_ok());
        assert!(BeijingTime::parse_compact("2024022900000").is_err());
        for unix in [0, 1, 86_399, 951_782_400, 4_102_444_800] {
            let t = BeijingTime::from_unix(unix);
            assert_eq!(BeijingTime::parse_compact(&t.to_compact()).unwrap(), t);
        }
    }

    #[test]
    fn nonce_from_random_bytes_is_32_hex_characters() {
        let n = Nonce::from_random_bytes([0xab; 16]);
        assert_eq!(n.as_str(), "ab".repeat(16));
        assert!(Nonce::new("x".repeat(33)).is_err());
    }
}
