//! APIv2 signatures (`sign`, `paySign`).
//!
//! The signed string is every field except the signature itself and those with an empty
//! value, sorted by name in byte order, joined as `name=value` with `&`, followed by
//! `&key=<API key>`. `MD5` is the uppercase hex MD5 of that string; `HMAC-SHA256` is the
//! uppercase hex HMAC-SHA256 of the same string with the API key as the HMAC key.
//!
//! The string is never materialised on the hot path: the pieces are streamed into the hash
//! through a small stack buffer, so signing allocates nothing.

use std::fmt;

use md5::Digest;
use subtle::ConstantTimeEq;

use crate::{ApiKey, SignType};

/// An APIv2 signature: 32 (MD5) or 64 (HMAC-SHA256) uppercase hex characters, held on the
/// stack.
// No `PartialEq`: an `==` on signatures would compile to a comparison that stops at the first
// difference. [`Signature::matches`] is the only way to compare one.
#[derive(Clone, Copy)]
pub struct Signature {
    hex: [u8; 64],
    len: u8,
}

impl Signature {
    fn from_digest(digest: &[u8]) -> Signature {
        const HEX: &[u8; 16] = b"0123456789ABCDEF";
        let mut hex = [0u8; 64];
        for (i, b) in digest.iter().enumerate() {
            hex[2 * i] = HEX[usize::from(b >> 4)];
            hex[2 * i + 1] = HEX[usize::from(b & 15)];
        }
        Signature {
            hex,
            len: (digest.len() * 2) as u8,
        }
    }

    /// The signature as it goes on the wire.
    pub fn as_str(&self) -> &str {
        // Only ASCII hex digits are ever written into `hex`.
        std::str::from_utf8(&self.hex[..usize::from(self.len)]).unwrap_or_default()
    }

    /// Whether `received` is exactly this signature, compared in constant time so that the
    /// time taken does not reveal how many leading characters were right. Lowercase hex does
    /// not match: WeChat Pay writes and expects uppercase.
    pub fn matches(&self, received: &str) -> bool {
        self.hex[..usize::from(self.len)].ct_eq(received.as_bytes()).into()
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({})", self.as_str())
    }
}

impl fmt::Display for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Something the signed string can be streamed into.
trait Absorb {
    fn absorb(&mut self, data: &[u8]);
}

impl Absorb for md5::Md5 {
    fn absorb(&mut self, data: &[u8]) {
        self.update(data);
    }
}

impl Absorb for ring::hmac::Context {
    fn absorb(&mut self, data: &[u8]) {
        self.update(data);
    }
}

/// Collects the many small pieces of the signed string (`name`, `=`, `value`, `&`) into
/// blocks, so that the hash sees a few large updates instead of dozens of tiny ones.
struct Buffered<H: Absorb> {
    inner: H,
    buf: [u8; 1024],
    n: usize,
}

impl<H: Absorb> Buffered<H> {
    fn new(inner: H) -> Self {
        Buffered {
            inner,
            buf: [0; 1024],
            n: 0,
        }
    }

    fn put(&mut self, data: &[u8]) {
        if self.n + data.len() > self.buf.len() {
            self.inner.absorb(&self.buf[..self.n]);
            self.n = 0;
            if data.len() >= self.buf.len() {
                self.inner.absorb(data);
                return;
            }
        }
        self.buf[self.n..self.n + data.len()].copy_from_slice(data);
        self.n += data.len();
    }

    /// Appends `name=value&` with one bounds check when it fits, which it nearly always does.
    fn put_pair(&mut self, name: &[u8], value: &[u8]) {
        let total = name.len() + value.len() + 2;
        if self.n + total > self.buf.len() {
            self.put(name);
            self.put(b"=");
            self.put(value);
            self.put(b"&");
            return;
        }
        let out = &mut self.buf[self.n..self.n + total];
        out[..name.len()].copy_from_slice(name);
        out[name.len()] = b'=';
        out[name.len() + 1..total - 1].copy_from_slice(value);
        out[total - 1] = b'&';
        self.n += total;
    }

    fn finish(mut self) -> H {
        self.inner.absorb(&self.buf[..self.n]);
        self.n = 0;
        self.inner
    }
}

/// Feeds `name=value&…&key=KEY` to `out`. `pairs` must be sorted by name.
fn feed<'x>(
    out: &mut Buffered<impl Absorb>,
    pairs: impl IntoIterator<Item = (&'x str, &'x str)>,
    exclude: &str,
    key: &[u8],
) {
    for (name, value) in pairs {
        if value.is_empty() || name == exclude {
            continue;
        }
        out.put_pair(name.as_bytes(), value.as_bytes());
    }
    out.put(b"key=");
    out.put(key);
}

/// Signs `pairs`, which must be sorted by name in byte order, skipping empty values and the
/// field called `exclude` (`sign`, or `paySign` for mini program parameters).
pub fn sign_sorted<'x>(
    pairs: impl IntoIterator<Item = (&'x str, &'x str)>,
    exclude: &str,
    key: &ApiKey,
    sign_type: SignType,
) -> Signature {
    match sign_type {
        SignType::Md5 => {
            let mut b = Buffered::new(md5::Md5::new());
            feed(&mut b, pairs, exclude, key.expose().as_bytes());
            Signature::from_digest(&b.finish().finalize())
        }
        SignType::HmacSha256 => {
            let mut b = Buffered::new(ring::hmac::Context::with_key(key.hmac_key()));
            feed(&mut b, pairs, exclude, key.expose().as_bytes());
            Signature::from_digest(b.finish().sign().as_ref())
        }
    }
}

/// Signs a complete `stringSignTemp` (the string that already ends in `&key=…`) with a raw
/// key. This is the hash alone, without the field handling; the signature doctor uses it to
/// test hypotheses with keys that are not valid [`ApiKey`]s, and the benchmarks use it as
/// the floor that signing is measured against.
pub fn sign_string(string_sign_temp: &[u8], key: &[u8], sign_type: SignType) -> Signature {
    match sign_type {
        SignType::Md5 => Signature::from_digest(&md5::Md5::digest(string_sign_temp)),
        SignType::HmacSha256 => {
            let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
            Signature::from_digest(ring::hmac::sign(&k, string_sign_temp).as_ref())
        }
    }
}

/// Like [`sign_string`], with the precomputed key of an [`ApiKey`].
pub fn sign_string_with(string_sign_temp: &[u8], key: &ApiKey, sign_type: SignType) -> Signature {
    match sign_type {
        SignType::Md5 => Signature::from_digest(&md5::Md5::digest(string_sign_temp)),
        SignType::HmacSha256 => Signature::from_digest(ring::hmac::sign(key.hmac_key(), string_sign_temp).as_ref()),
    }
}

/// The lowercase hex MD5 of `data`: the AES key of refund notifications is this, computed
/// over the API key.
pub(crate) fn md5_lower_hex(data: &[u8]) -> [u8; 32] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let d = md5::Md5::digest(data);
    let mut out = [0u8; 32];
    for (i, b) in d.iter().enumerate() {
        out[2 * i] = HEX[usize::from(b >> 4)];
        out[2 * i + 1] = HEX[usize::from(b & 15)];
    }
    out
}

/// Builds `stringA` (the sorted `name=value&…` string, without the key) from sorted pairs.
pub fn string_a<'x>(pairs: impl IntoIterator<Item = (&'x str, &'x str)>, exclude: &str) -> String {
    let mut s = String::new();
    for (name, value) in pairs {
        if value.is_empty() || name == exclude {
            continue;
        }
        if !s.is_empty() {
            s.push('&');
        }
        s.push_str(name);
        s.push('=');
        s.push_str(value);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streaming_and_whole_string_signing_agree_for_long_values() {
        let key = ApiKey::new("192006250b4c09247ec02edce69f6a2d").unwrap();
        let long = "x".repeat(1000);
        let pairs = [("a", "1"), ("b", long.as_str()), ("c", "")];
        for t in [SignType::Md5, SignType::HmacSha256] {
            let s = format!("{}&key={}", string_a(pairs, "sign"), key.expose());
            let whole = sign_string(s.as_bytes(), key.expose().as_bytes(), t);
            assert_eq!(sign_sorted(pairs, "sign", &key, t).as_str(), whole.as_str());
            assert_eq!(sign_string_with(s.as_bytes(), &key, t).as_str(), whole.as_str());
        }
    }

    #[test]
    fn streaming_and_whole_string_signing_agree_across_every_buffer_boundary() {
        // The stack buffer is 1,024 bytes: values around it, and pieces that cross it at
        // every offset, take each of the buffer's paths (fits, flush then copy, flush then
        // hash directly).
        let key = ApiKey::new("192006250b4c09247ec02edce69f6a2d").unwrap();
        let lens = [
            0, 1, 7, 1000, 1010, 1017, 1018, 1019, 1020, 1021, 1022, 1023, 1024, 1025, 1500, 2047, 2048, 2049, 5000,
        ];
        for t in [SignType::Md5, SignType::HmacSha256] {
            for &first in &lens {
                for &second in &[1, 600, 1022, 1024, 3000] {
                    let a = "a".repeat(first);
                    let b = "b".repeat(second);
                    // Also with the long value first, when the buffer is still empty.
                    for pairs in [
                        vec![
                            ("appid", "wx1"),
                            ("body", a.as_str()),
                            ("detail", b.as_str()),
                            ("z", "1"),
                        ],
                        vec![("body", a.as_str()), ("detail", b.as_str())],
                    ] {
                        let s = format!("{}&key={}", string_a(pairs.iter().copied(), "sign"), key.expose());
                        let whole = sign_string(s.as_bytes(), key.expose().as_bytes(), t);
                        assert_eq!(
                            sign_sorted(pairs.iter().copied(), "sign", &key, t).as_str(),
                            whole.as_str(),
                            "{t:?} {first} {second}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn a_signature_shows_itself_in_debug_and_display() {
        let sig = sign_string(b"x", b"k", SignType::Md5);
        assert_eq!(format!("{sig:?}"), format!("Signature({})", sig.as_str()));
        assert_eq!(sig.to_string(), sig.as_str());
        assert_eq!(sig.as_str().len(), 32);
    }

    #[test]
    fn matches_is_exact_and_case_sensitive() {
        let sig = sign_string(b"x", b"k", SignType::Md5);
        assert!(sig.matches(sig.as_str()));
        assert!(!sig.matches(&sig.as_str().to_lowercase()));
        assert!(!sig.matches(&sig.as_str()[..31]));
        assert!(!sig.matches(""));
    }
}
