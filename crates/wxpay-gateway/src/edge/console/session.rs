//! Who is signed in to the console: the password check, session cookies, CSRF tokens and the
//! sign-in rate limit. Pure over the time and the random bytes it is given, so that each rule
//! is tested with a fixed clock.
//!
//! A session is a cookie `<expiry>.<id>.<mac>`: its expiry in Unix seconds, 16 random bytes,
//! and an HMAC-SHA256 of both with a key derived from the configured password hash. Nothing is
//! stored to accept it, so every instance of the gateway with the same configuration accepts
//! it, and changing the password ends every session. Signing out revokes the id on the
//! instance that served it, until the expiry.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use argon2::{Argon2, PasswordVerifier};

use crate::util::{hmac_sha256_hex, hmac_sha256_hex_matches};

/// The name of the session cookie.
pub(crate) const SESSION_COOKIE: &str = "wxpay_console";
/// The name of the cookie that ties a sign-in form to the browser that asked for it.
pub(crate) const LOGIN_COOKIE: &str = "wxpay_console_login";

/// Whether `password` is the one `hash` was made from. Takes tens of milliseconds on
/// purpose: call it off the async workers.
pub(crate) fn password_matches(hash: &str, password: &str) -> bool {
    Argon2::default().verify_password(password.as_bytes(), hash).is_ok()
}

/// The keys of sessions and CSRF tokens.
pub(crate) struct Keys {
    key: [u8; 32],
}

impl Keys {
    /// Keys derived from the configured password hash.
    pub(crate) fn new(password_hash: &str) -> Keys {
        let seed = ring::digest::digest(
            &ring::digest::SHA256,
            format!("wxpay console session keys\n{password_hash}").as_bytes(),
        );
        let mut key = [0u8; 32];
        key.copy_from_slice(seed.as_ref());
        Keys { key }
    }

    fn mac(&self, purpose: &str, data: &str) -> String {
        hmac_sha256_hex(&self.key, format!("{purpose}\n{data}").as_bytes())
    }

    fn mac_matches(&self, purpose: &str, data: &str, presented_hex: &str) -> bool {
        hmac_sha256_hex_matches(&self.key, format!("{purpose}\n{data}").as_bytes(), presented_hex)
    }

    /// A new session's cookie value, from `now` (Unix seconds) for `ttl`, with the random `id`.
    pub(crate) fn issue(&self, now: i64, ttl: Duration, id: &[u8; 16]) -> String {
        let expiry = now.saturating_add(i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX));
        let body = format!("{expiry}.{}", crate::util::hex(id));
        let mac = self.mac("session", &body);
        format!("{body}.{mac}")
    }

    /// The session a cookie value holds, when its MAC is ours and it has not expired at `now`.
    pub(crate) fn session(&self, cookie: &str, now: i64) -> Option<Session> {
        let (body, mac) = cookie.rsplit_once('.')?;
        if !self.mac_matches("session", body, mac) {
            return None;
        }
        let (expiry, id) = body.split_once('.')?;
        let expiry: i64 = expiry.parse().ok()?;
        (now < expiry).then(|| Session {
            id: id.to_owned(),
            expiry,
        })
    }

    /// The CSRF token of a session's forms.
    pub(crate) fn csrf(&self, session: &Session) -> String {
        self.mac("csrf", &session.id)
    }

    /// Whether `presented` is the CSRF token of `session`.
    pub(crate) fn csrf_matches(&self, session: &Session, presented: &str) -> bool {
        self.mac_matches("csrf", &session.id, presented)
    }

    /// The token of a reviewed action of `session`: what the review showed, as one string.
    pub(crate) fn review_token(&self, session: &Session, reviewed: &str) -> String {
        self.mac("review", &format!("{}\n{reviewed}", session.id))
    }

    /// Whether `presented` is the token of `reviewed` for `session`.
    pub(crate) fn review_token_matches(&self, session: &Session, reviewed: &str, presented: &str) -> bool {
        self.mac_matches("review", &format!("{}\n{reviewed}", session.id), presented)
    }

    /// The token of a sign-in form, for the random value of its browser's login cookie.
    pub(crate) fn login_token(&self, login_cookie: &str) -> String {
        self.mac("login", login_cookie)
    }

    /// Whether `presented` is the sign-in form token of `login_cookie`.
    pub(crate) fn login_token_matches(&self, login_cookie: &str, presented: &str) -> bool {
        !login_cookie.is_empty() && self.mac_matches("login", login_cookie, presented)
    }
}

/// A signed-in operator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Session {
    /// The random id, in hex.
    pub(crate) id: String,
    /// When it ends, Unix seconds.
    pub(crate) expiry: i64,
}

/// Sessions signed out before their expiry, on this instance.
#[derive(Default)]
pub(crate) struct Revoked(Mutex<HashMap<String, i64>>);

impl Revoked {
    /// Revokes `session`; forgets the ones that have expired anyway.
    pub(crate) fn revoke(&self, session: &Session, now: i64) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, expiry| *expiry > now);
        map.insert(session.id.clone(), session.expiry);
    }

    /// Whether `session` was signed out.
    pub(crate) fn contains(&self, session: &Session) -> bool {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.contains_key(&session.id)
    }
}

/// Sign-ins per client address that did not succeed: after [`MAX_FAILURES`] within
/// [`FAILURE_WINDOW`] of the first, that address is refused without a password check until
/// the window ends. An attempt counts as failed from its start ([`Attempts::begin`]) until it
/// succeeds, so attempts sent in parallel cannot each pass the count before any has failed.
/// The password check is slow on purpose, so this also keeps a flood from taking the CPU.
#[derive(Default)]
pub(crate) struct Attempts(Mutex<HashMap<IpAddr, (u32, i64)>>);

/// Failed sign-ins an address may make in a window.
pub(crate) const MAX_FAILURES: u32 = 5;
/// The window, in seconds.
pub(crate) const FAILURE_WINDOW: i64 = 15 * 60;
/// Addresses remembered at most: beyond it, the expired windows go, then the oldest ones.
const MAX_ADDRESSES: usize = 10_000;

impl Attempts {
    /// Starts a sign-in attempt of `ip` at `now`, counted as failed until
    /// [`succeeded`](Self::succeeded); or, when `ip` is locked out, the seconds until it may
    /// try again.
    pub(crate) fn begin(&self, ip: IpAddr, now: i64) -> Result<(), i64> {
        let ip = key(ip);
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(&(failures, since)) = map.get(&ip) {
            if failures >= MAX_FAILURES && now < since + FAILURE_WINDOW {
                return Err(since + FAILURE_WINDOW - now);
            }
        }
        if map.len() >= MAX_ADDRESSES && !map.contains_key(&ip) {
            map.retain(|_, (_, since)| now < *since + FAILURE_WINDOW);
            if map.len() >= MAX_ADDRESSES {
                if let Some(oldest) = map.iter().min_by_key(|(_, (_, since))| *since).map(|(k, _)| *k) {
                    map.remove(&oldest);
                }
            }
        }
        let entry = map.entry(ip).or_insert((0, now));
        if now >= entry.1 + FAILURE_WINDOW {
            *entry = (0, now);
        }
        entry.0 += 1;
        Ok(())
    }

    /// Forgets the failures of `ip` after it signed in.
    pub(crate) fn succeeded(&self, ip: IpAddr) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.remove(&key(ip));
    }
}

/// The address an attempt is counted against: an IPv6 client usually holds a whole /64, so
/// its attempts count against that.
fn key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        // A dual-stack listener sees an IPv4 client as `::ffff:a.b.c.d`: that is one client,
        // not a /64 shared by every IPv4 address.
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut octets = v6.octets();
                octets[8..].fill(0);
                IpAddr::from(octets)
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ConsoleConfig, check_password_hash};

    const NOW: i64 = 1_796_000_000;
    const ID: [u8; 16] = [7; 16];

    fn keys() -> Keys {
        Keys::new("$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaA")
    }

    #[test]
    fn a_password_matches_its_own_hash_only() {
        let hash = ConsoleConfig::hash_password("correct horse", b"0123456789abcdef").unwrap();
        assert!(hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{hash}");
        check_password_hash(&hash).unwrap();
        assert!(password_matches(&hash, "correct horse"));
        assert!(!password_matches(&hash, "correct horse "));
        assert!(!password_matches("not a hash", "correct horse"));
    }

    #[test]
    fn a_session_cookie_holds_until_its_expiry_and_only_with_our_mac() {
        let k = keys();
        let cookie = k.issue(NOW, Duration::from_secs(3600), &ID);
        let s = k.session(&cookie, NOW + 3599).unwrap();
        assert_eq!(s.expiry, NOW + 3600);
        assert_eq!(k.session(&cookie, NOW + 3600), None, "expired");
        // A longer expiry with the old MAC, another key, or a damaged cookie: refused.
        let (_, rest) = cookie.split_once('.').unwrap();
        assert_eq!(k.session(&format!("{}.{rest}", NOW + 99_999), NOW), None);
        assert_eq!(Keys::new("another hash").session(&cookie, NOW), None);
        assert_eq!(k.session("garbage", NOW), None);
        assert_eq!(k.session(&cookie.replace('.', ""), NOW), None);
    }

    #[test]
    fn a_csrf_token_belongs_to_one_session_and_a_login_token_to_one_cookie() {
        let k = keys();
        let s = k.session(&k.issue(NOW, Duration::from_secs(60), &ID), NOW).unwrap();
        let other = k
            .session(&k.issue(NOW, Duration::from_secs(60), &[8; 16]), NOW)
            .unwrap();
        let token = k.csrf(&s);
        assert!(k.csrf_matches(&s, &token));
        assert!(!k.csrf_matches(&other, &token));
        assert!(!k.csrf_matches(&s, ""));
        assert!(!k.csrf_matches(&s, "zz"));
        let login = k.login_token("abc123");
        assert!(k.login_token_matches("abc123", &login));
        assert!(!k.login_token_matches("abc124", &login));
        assert!(!k.login_token_matches("", &k.login_token("")));
    }

    #[test]
    fn a_signed_out_session_stays_revoked_until_it_would_have_expired() {
        let k = keys();
        let revoked = Revoked::default();
        let s = k.session(&k.issue(NOW, Duration::from_secs(60), &ID), NOW).unwrap();
        assert!(!revoked.contains(&s));
        revoked.revoke(&s, NOW);
        assert!(revoked.contains(&s));
        // Revoking another later forgets the first once it has expired.
        let later = k
            .session(&k.issue(NOW + 100, Duration::from_secs(60), &[9; 16]), NOW + 100)
            .unwrap();
        revoked.revoke(&later, NOW + 100);
        assert!(!revoked.contains(&s));
    }

    #[test]
    fn an_address_is_locked_out_after_five_attempts_until_its_window_ends() {
        let attempts = Attempts::default();
        let ip: IpAddr = "203.0.113.9".parse().unwrap();
        for i in 0..MAX_FAILURES {
            // Counted from its start: five attempts in flight at once lock the sixth out.
            assert_eq!(attempts.begin(ip, NOW + i64::from(i)), Ok(()));
        }
        assert_eq!(attempts.begin(ip, NOW + 10), Err(FAILURE_WINDOW - 10));
        assert_eq!(attempts.begin("203.0.113.10".parse().unwrap(), NOW + 10), Ok(()));
        assert_eq!(attempts.begin(ip, NOW + FAILURE_WINDOW), Ok(()), "a new window");
        attempts.succeeded(ip);
        assert_eq!(attempts.0.lock().unwrap().len(), 1, "only the other address");
    }

    #[test]
    fn an_ipv6_client_counts_as_its_slash_64_and_memory_stays_bounded() {
        let attempts = Attempts::default();
        for host in 1..=MAX_FAILURES {
            let ip: IpAddr = format!("2001:db8:1:2::{host:x}").parse().unwrap();
            assert_eq!(attempts.begin(ip, NOW), Ok(()));
        }
        assert!(attempts.begin("2001:db8:1:2:ffff::1".parse().unwrap(), NOW).is_err());
        // IPv4 clients seen through a dual-stack listener stay apart, and count as themselves.
        let mapped: IpAddr = "::ffff:198.51.100.7".parse().unwrap();
        assert_eq!(attempts.begin(mapped, NOW), Ok(()));
        assert_eq!(attempts.begin("::ffff:198.51.100.8".parse().unwrap(), NOW), Ok(()));
        for _ in 1..MAX_FAILURES {
            attempts.begin("198.51.100.7".parse().unwrap(), NOW).unwrap();
        }
        assert!(attempts.begin(mapped, NOW).is_err(), "the same client either way");
        assert_eq!(attempts.begin("::ffff:198.51.100.9".parse().unwrap(), NOW), Ok(()));
        for i in 0..(MAX_ADDRESSES as u32 + 10) {
            let _ = attempts.begin(IpAddr::from(i.to_be_bytes()), NOW + 1);
        }
        assert!(attempts.0.lock().unwrap().len() <= MAX_ADDRESSES);
    }
}
