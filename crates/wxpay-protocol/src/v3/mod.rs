//! WeChat Pay APIv3, sans IO: the signatures both ways and the encryption of resources
//! (`../shared/docs/protocol.md` part B).
//!
//! - [`keys`]: the merchant's private key and WeChat Pay's public keys (a platform
//!   certificate's, or the WeChat Pay public key), each parsed once from PEM.
//! - [`auth`]: `Authorization` for requests, `paySign` with `signType: "RSA"`, and
//!   [`auth::Verifier`], which checks an answer's or notification's `Wechatpay-*` headers over
//!   the raw body: probes, clock skew, the key by `Wechatpay-Serial` (certificates and the
//!   public key at once), the signature.
//! - [`aead`]: `AEAD_AES_256_GCM` with the APIv3 key.
//! - [`calls`]: the JSAPI calls as request values (create, query, close, refund, refund
//!   query), their answers read into typed records, and [`calls::V3Error`] with the retry
//!   classes of APIv2.
//! - [`notify`]: a notification's envelope, its resource decrypted and read into an event.
//!
//! Time, nonces and keys come in as arguments, so every function is checked against the
//! known answers of `v3.json` with a fixed clock.

pub mod aead;
pub mod auth;
pub mod calls;
mod der;
pub mod doctor;
pub mod keys;
pub mod notify;

pub use aead::AeadError;
pub use auth::{SignatureHeaders, SignedHeaders, Verifier, VerifyError};
pub use keys::{Certificate, MerchantKey, PublicKey};
