//! The numbers the gateway gives orders (`W…`) and refunds (`R…`) when the caller names none.

use wxpay_protocol::BeijingTime;

use crate::time::Millis;

/// A new order (`W`) or refund (`R`) number: the prefix, the Beijing time to the second, and
/// 12 random letters and digits.
fn new_number(prefix: char, now: Millis) -> String {
    let mut b = [0u8; 12];
    crate::util::random_bytes(&mut b);
    number_with(prefix, now, b)
}

/// `prefix`, the Beijing time of `at` to the second, and 12 letters and digits from `tail`.
fn number_with(prefix: char, at: Millis, tail: [u8; 12]) -> String {
    const SET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let tail: String = tail
        .iter()
        .map(|x| char::from(SET[usize::from(*x) % SET.len()]))
        .collect();
    format!("{prefix}{}{tail}", BeijingTime::from_unix(at.unix_secs()).to_compact())
}

/// The numbers a creating request gives what it creates when the caller names none. Under an
/// `Idempotency-Key` they follow from the key, so that a retry that takes the key over finds
/// the order or refund the first attempt made instead of making a second one.
#[derive(Debug)]
pub(crate) struct Numbers {
    /// The key's scope, the key, and when it was first claimed.
    key: Option<(String, String, Millis)>,
}

impl Numbers {
    /// Random numbers.
    pub(crate) fn random() -> Numbers {
        Numbers { key: None }
    }

    /// Numbers that follow from a key in its scope, first claimed at `created_at`.
    pub(crate) fn from_key(scope: String, key: String, created_at: Millis) -> Numbers {
        Numbers {
            key: Some((scope, key, created_at)),
        }
    }

    /// A number for something created at `now`: `prefix`, the Beijing time to the second, and
    /// 12 letters and digits (random, or from the key).
    pub(crate) fn number(&self, prefix: char, now: Millis) -> String {
        match &self.key {
            None => new_number(prefix, now),
            Some((scope, key, created_at)) => {
                let digest = ring::digest::digest(&ring::digest::SHA256, format!("{scope}\n{key}").as_bytes());
                let mut tail = [0u8; 12];
                tail.copy_from_slice(&digest.as_ref()[..12]);
                number_with(prefix, *created_at, tail)
            }
        }
    }
}
