//! The keys of APIv3: the merchant's private key, which signs requests and `wx.requestPayment`
//! parameters, and WeChat Pay's public keys (a platform certificate's, or the WeChat Pay
//! public key), which verify answers and notifications. Each is parsed once.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{RSA_PKCS1_SHA256, RsaKeyPair};
use base64::Engine;
use ring::signature::{RSA_PKCS1_2048_8192_SHA256, UnparsedPublicKey};

use super::der;
use crate::Error;

/// A merchant API private key (`apiclient_key.pem`: PKCS#8 `PRIVATE KEY`, or PKCS#1
/// `RSA PRIVATE KEY`), with the serial number of its certificate. It signs with aws-lc-rs
/// (constant-time, blinded), about twice as fast as ring's RSA on the machines measured:
/// RSA signing is the ceiling of APIv3 orders per second.
pub struct MerchantKey {
    key: RsaKeyPair,
    serial_no: String,
    // Used for RSA blinding only: PKCS#1 v1.5 signatures do not depend on it.
    rng: SystemRandom,
}

impl std::fmt::Debug for MerchantKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MerchantKey(serial_no {}, private key redacted)", self.serial_no)
    }
}

impl MerchantKey {
    /// Parses the private key's PEM; `serial_no` is its certificate's serial number (any
    /// case; kept in upper case, as WeChat Pay writes it).
    ///
    /// # Errors
    /// [`Error::Invalid`] when the PEM holds no RSA private key aws-lc-rs accepts (at least 2048
    /// bits).
    pub fn from_pem(pem: &str, serial_no: &str) -> Result<MerchantKey, Error> {
        let invalid = |reason: String| Error::Invalid {
            what: "merchant private key",
            reason,
        };
        let (label, der) = der::pem_blocks(pem)?
            .into_iter()
            .find(|(label, _)| label.ends_with("PRIVATE KEY"))
            .ok_or_else(|| invalid("no PRIVATE KEY block in the PEM".to_owned()))?;
        let key = match label.as_str() {
            "PRIVATE KEY" => RsaKeyPair::from_pkcs8(&der),
            "RSA PRIVATE KEY" => RsaKeyPair::from_der(&der),
            other => {
                return Err(invalid(format!(
                    "a {other} block; an RSA PRIVATE KEY or PRIVATE KEY is expected"
                )));
            }
        }
        .map_err(|e| invalid(format!("not an RSA key of 2048 bits or more: {e}")))?;
        Ok(MerchantKey {
            key,
            serial_no: serial_no.to_ascii_uppercase(),
            rng: SystemRandom::new(),
        })
    }

    /// The serial number of the merchant certificate, upper-case hex.
    pub fn serial_no(&self) -> &str {
        &self.serial_no
    }

    /// SHA256-with-RSA (PKCS#1 v1.5) of `message`, base64.
    ///
    /// # Errors
    /// [`Error::Invalid`] if aws-lc-rs cannot sign (it does not happen with a key it parsed).
    pub fn sign(&self, message: &[u8]) -> Result<String, Error> {
        let mut signature = vec![0; self.key.public_modulus_len()];
        self.key
            .sign(&RSA_PKCS1_SHA256, &self.rng, message, &mut signature)
            .map_err(|e| Error::Invalid {
                what: "merchant private key",
                reason: format!("signing failed: {e}"),
            })?;
        Ok(base64::engine::general_purpose::STANDARD.encode(signature))
    }
}

/// A public key of WeChat Pay's (or any RSA public key), for SHA256-with-RSA verification.
#[derive(Clone)]
pub struct PublicKey {
    /// PKCS#1 `RSAPublicKey`, as ring takes it.
    rsa: Vec<u8>,
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({} bytes)", self.rsa.len())
    }
}

impl PublicKey {
    /// Parses a `PUBLIC KEY` (SubjectPublicKeyInfo) or `RSA PUBLIC KEY` (PKCS#1) PEM, such as
    /// the WeChat Pay public key (`pub_key.pem`).
    ///
    /// # Errors
    /// [`Error::Invalid`] when the PEM holds no RSA public key.
    pub fn from_pem(pem: &str) -> Result<PublicKey, Error> {
        for (label, der) in der::pem_blocks(pem)? {
            match label.as_str() {
                "PUBLIC KEY" => {
                    return Ok(PublicKey {
                        rsa: der::rsa_key_of_spki(&der)?.to_vec(),
                    });
                }
                "RSA PUBLIC KEY" => return Ok(PublicKey { rsa: der }),
                _ => {}
            }
        }
        Err(Error::Invalid {
            what: "public key",
            reason: "no PUBLIC KEY block in the PEM".to_owned(),
        })
    }

    /// Whether `signature` (raw bytes) is SHA256-with-RSA of `message` by this key.
    pub fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, &self.rsa)
            .verify(message, signature)
            .is_ok()
    }
}

/// An X.509 certificate, as far as APIv3 needs it: its serial number and public key.
#[derive(Clone, Debug)]
pub struct Certificate {
    serial_no: String,
    key: PublicKey,
    not_before: i64,
    not_after: i64,
}

impl Certificate {
    /// Parses the first `CERTIFICATE` block of a PEM (a platform certificate, or the
    /// merchant's `apiclient_cert.pem`).
    ///
    /// # Errors
    /// [`Error::Invalid`] when there is no certificate or its key is not RSA.
    pub fn from_pem(pem: &str) -> Result<Certificate, Error> {
        let (_, der) = der::pem_blocks(pem)?
            .into_iter()
            .find(|(label, _)| label == "CERTIFICATE")
            .ok_or_else(|| Error::Invalid {
                what: "certificate",
                reason: "no CERTIFICATE block in the PEM".to_owned(),
            })?;
        let parts = der::certificate_parts(&der)?;
        Ok(Certificate {
            serial_no: parts.serial,
            key: PublicKey {
                rsa: der::rsa_key_of_spki(parts.spki)?.to_vec(),
            },
            not_before: parts.not_before,
            not_after: parts.not_after,
        })
    }

    /// The serial number, upper-case hex, as `Wechatpay-Serial` and `serial_no` carry it.
    pub fn serial_no(&self) -> &str {
        &self.serial_no
    }

    /// The certificate's public key.
    pub fn public_key(&self) -> &PublicKey {
        &self.key
    }

    /// When it takes effect (Unix seconds).
    pub fn not_before(&self) -> i64 {
        self.not_before
    }

    /// When it expires (Unix seconds): a platform certificate past it verifies nothing (the
    /// gateway drops it, and warns at start when a configured one has less than 30 days).
    pub fn not_after(&self) -> i64 {
        self.not_after
    }
}
