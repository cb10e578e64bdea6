//! Identifiers the simulator hands out, shaped like WeChat Pay's, and carrying where the
//! order is kept so that looking one up needs no index.
//!
//! - `prepay_id`: `wx` + 14-digit Beijing time + 2 hex shard + 8 hex slot + 10 hex random (36).
//! - `transaction_id`: `4200` + 2-digit shard + 10-digit slot + 8-digit date + 4 random digits (28).
//! - `refund_id`: `50` + 2-digit shard + 10-digit slot + 2-digit refund index + 8-digit date +
//!   5 random digits (29).
//!
//! The random part makes an identifier of a slot that was reused after eviction miss.

use std::cell::Cell;
use std::time::{SystemTime, UNIX_EPOCH};

use wxpay_protocol::{BeijingTime, Nonce};

thread_local! {
    static RNG: Cell<u64> = Cell::new(seed());
}

fn seed() -> u64 {
    let mut b = [0u8; 8];
    // SystemRandom failing is not something to continue from quietly, but the simulator's
    // identifiers need uniqueness, not secrecy: fall back to the clock.
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).is_err() {
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        b = t.to_le_bytes();
    }
    u64::from_le_bytes(b) | 1
}

/// A fast random number (SplitMix64 seeded from the system's random source, per thread).
pub(crate) fn random_u64() -> u64 {
    RNG.with(|s| {
        let mut z = s.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
        s.set(z);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    })
}

/// A fresh 32-character nonce.
pub(crate) fn nonce() -> Nonce {
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&random_u64().to_le_bytes());
    bytes[8..].copy_from_slice(&random_u64().to_le_bytes());
    Nonce::from_random_bytes(bytes)
}

/// Random ASCII letters and digits.
pub(crate) fn random_alnum(n: usize) -> String {
    const SET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    (0..n)
        .map(|_| char::from(SET[(random_u64() % SET.len() as u64) as usize]))
        .collect()
}

/// Seconds since the Unix epoch, now.
pub(crate) fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

pub(crate) fn prepay_id(shard: usize, slot: u32, now: i64) -> String {
    format!(
        "wx{}{:02x}{:08x}{:010x}",
        BeijingTime::from_unix(now).to_compact(),
        shard,
        slot,
        random_u64() & 0xFF_FFFF_FFFF
    )
}

/// The shard and slot a `prepay_id` points to.
pub(crate) fn parse_prepay_id(id: &str) -> Option<(usize, u32)> {
    if id.len() != 36 || !id.starts_with("wx") {
        return None;
    }
    let shard = usize::from_str_radix(id.get(16..18)?, 16).ok()?;
    let slot = u32::from_str_radix(id.get(18..26)?, 16).ok()?;
    Some((existing_shard(shard)?, slot))
}

/// The shard, when the store has it: an identifier that names another is not ours.
fn existing_shard(shard: usize) -> Option<usize> {
    (shard < crate::store::SHARDS).then_some(shard)
}

pub(crate) fn transaction_id(shard: usize, slot: u32, now: i64) -> String {
    format!(
        "4200{:02}{:010}{}{:04}",
        shard,
        slot,
        BeijingTime::from_unix(now).to_date_compact(),
        random_u64() % 10_000
    )
}

/// The shard and slot a `transaction_id` points to.
pub(crate) fn parse_transaction_id(id: &str) -> Option<(usize, u32)> {
    if id.len() != 28 || !id.starts_with("4200") || !id.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((
        existing_shard(id.get(4..6)?.parse().ok()?)?,
        id.get(6..16)?.parse().ok()?,
    ))
}

pub(crate) fn refund_id(shard: usize, slot: u32, index: usize, now: i64) -> String {
    format!(
        "50{:02}{:010}{:02}{}{:05}",
        shard,
        slot,
        index,
        BeijingTime::from_unix(now).to_date_compact(),
        random_u64() % 100_000
    )
}

/// The shard, slot and refund index a `refund_id` points to.
pub(crate) fn parse_refund_id(id: &str) -> Option<(usize, u32, usize)> {
    if id.len() != 29 || !id.starts_with("50") || !id.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((
        existing_shard(id.get(2..4)?.parse().ok()?)?,
        id.get(4..14)?.parse().ok()?,
        id.get(14..16)?.parse().ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_have_wechat_pay_shapes_and_lead_back_to_their_slot() {
        let now = 1_764_200_000;
        let p = prepay_id(15, 123_456, now);
        assert_eq!(p.len(), 36);
        assert_eq!(parse_prepay_id(&p), Some((15, 123_456)));
        let t = transaction_id(15, 123_456, now);
        assert_eq!(t.len(), 28);
        assert_eq!(parse_transaction_id(&t), Some((15, 123_456)));
        let r = refund_id(15, 123_456, 49, now);
        assert_eq!(r.len(), 29);
        assert_eq!(parse_refund_id(&r), Some((15, 123_456, 49)));
        assert_eq!(parse_prepay_id("wx1"), None);
        assert_eq!(nonce().as_str().len(), 32);
        assert_ne!(random_alnum(16), random_alnum(16));
    }
}
