//! Small helpers every layer uses: hex, digests and secure random bytes.

/// Lowercase hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    s
}

/// `N` random bytes from the system's secure source, in lowercase hex.
pub(crate) fn random_hex<const N: usize>() -> String {
    let mut b = [0u8; N];
    random_bytes(&mut b);
    hex(&b)
}

/// Fills `buf` from the system's secure random source.
pub(crate) fn random_bytes(buf: &mut [u8]) {
    use ring::rand::SecureRandom;
    // The system source failing is not recoverable in a payment service.
    ring::rand::SystemRandom::new()
        .fill(buf)
        .expect("the system random source works");
}

/// Lowercase hex of the SHA-256 of `data`.
pub(crate) fn sha256_hex(data: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, data).as_ref())
}

/// Lowercase hex of HMAC-SHA256 of `data` keyed with `key`.
pub(crate) fn hmac_sha256_hex(key: &[u8], data: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    hex(ring::hmac::sign(&key, data).as_ref())
}

/// Whether `mac_hex` is HMAC-SHA256 of `data` keyed with `key`, compared in constant time.
pub(crate) fn hmac_sha256_hex_matches(key: &[u8], data: &[u8], mac_hex: &str) -> bool {
    let expected = hmac_sha256_hex(key, data);
    subtle::ConstantTimeEq::ct_eq(expected.as_bytes(), mac_hex.as_bytes()).into()
}

/// The first `max` characters of `s`.
pub(crate) fn clip(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}
