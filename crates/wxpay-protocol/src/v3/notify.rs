//! APIv3 notifications: the JSON envelope, its encrypted resource, and what it reports.
//! Verify the headers over the raw body first ([`super::Verifier`]); then read the envelope
//! and decrypt its resource with the APIv3 key.

use serde::{Deserialize, Serialize};

use super::aead::{self, AeadError};
use super::calls::{RefundRecord, Transaction, refund_record, transaction};
use crate::Error;

/// The envelope of a notification.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct Envelope {
    /// The notification's id (`EV-…`), the same on every delivery.
    pub id: String,
    /// When it was made (RFC 3339).
    pub create_time: String,
    /// `TRANSACTION.SUCCESS`, `REFUND.SUCCESS`, `REFUND.ABNORMAL`, `REFUND.CLOSED`, …
    pub event_type: String,
    /// `encrypt-resource`.
    #[serde(default)]
    pub resource_type: String,
    /// For people (`支付成功`).
    #[serde(default)]
    pub summary: String,
    /// The encrypted resource.
    pub resource: Resource,
}

/// The encrypted part of a notification.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct Resource {
    /// `AEAD_AES_256_GCM`, the only one.
    pub algorithm: String,
    /// Base64 of the ciphertext and its tag.
    pub ciphertext: String,
    /// Bound to the ciphertext (`transaction`, `refund`; may be empty).
    #[serde(default)]
    pub associated_data: String,
    /// 12 characters.
    pub nonce: String,
    /// `transaction` or `refund`.
    #[serde(default)]
    pub original_type: String,
}

impl Resource {
    /// `plain` (a transaction's or a refund's JSON) encrypted with the APIv3 key under
    /// `nonce` (12 characters), with `original_type` (`transaction`, `refund`) as its
    /// associated data, as WeChat Pay encrypts it.
    ///
    /// # Errors
    /// [`AeadError`] for a key that is not 32 bytes or a nonce that is not 12.
    pub fn seal(api_v3_key: &[u8], original_type: &str, nonce: &str, plain: &[u8]) -> Result<Resource, AeadError> {
        Ok(Resource {
            algorithm: "AEAD_AES_256_GCM".to_owned(),
            ciphertext: aead::encrypt(api_v3_key, nonce, original_type, plain)?,
            associated_data: original_type.to_owned(),
            nonce: nonce.to_owned(),
            original_type: original_type.to_owned(),
        })
    }
}

/// What a notification reports, decrypted and read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// `TRANSACTION.SUCCESS`: a payment.
    Transaction(Transaction),
    /// `REFUND.*`: a refund's end.
    Refund(RefundRecord),
}

/// Why a verified notification cannot be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NotifyError {
    /// The body is not the envelope.
    #[error("not a notification envelope: {0}")]
    Envelope(String),
    /// Another algorithm than `AEAD_AES_256_GCM`.
    #[error("resource algorithm {0:?}; only AEAD_AES_256_GCM is used")]
    Algorithm(String),
    /// The resource does not decrypt with this APIv3 key.
    #[error(transparent)]
    Decrypt(#[from] AeadError),
    /// An event this gateway does not handle.
    #[error("event type {0:?} is not a payment or refund")]
    EventType(String),
    /// The decrypted resource is not the record its event names.
    #[error("the decrypted resource: {0}")]
    Resource(Error),
}

impl Envelope {
    /// A notification as WeChat Pay makes one, around a [`Resource::seal`]ed resource. Write
    /// it with [`Envelope::to_json`], then sign those bytes ([`super::SignedHeaders`]).
    pub fn new(id: &str, create_time: &str, event_type: &str, summary: &str, resource: Resource) -> Envelope {
        Envelope {
            id: id.to_owned(),
            create_time: create_time.to_owned(),
            event_type: event_type.to_owned(),
            resource_type: "encrypt-resource".to_owned(),
            summary: summary.to_owned(),
            resource,
        }
    }

    /// The envelope as a notification's body.
    pub fn to_json(&self) -> String {
        // Strings and a nested struct only: serialising cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Reads the envelope of a notification's body (the raw bytes that were verified).
    ///
    /// # Errors
    /// [`NotifyError::Envelope`].
    pub fn read(body: &[u8]) -> Result<Envelope, NotifyError> {
        serde_json::from_slice(body).map_err(|e| NotifyError::Envelope(e.to_string()))
    }

    /// Decrypts the resource with the APIv3 key.
    ///
    /// # Errors
    /// [`NotifyError::Algorithm`] or [`NotifyError::Decrypt`].
    pub fn decrypt(&self, api_v3_key: &[u8]) -> Result<Vec<u8>, NotifyError> {
        let r = &self.resource;
        if r.algorithm != "AEAD_AES_256_GCM" {
            return Err(NotifyError::Algorithm(r.algorithm.chars().take(32).collect()));
        }
        Ok(aead::decrypt(api_v3_key, &r.nonce, &r.associated_data, &r.ciphertext)?)
    }

    /// Decrypts and reads what the notification reports.
    ///
    /// # Errors
    /// [`NotifyError`], which says what failed.
    pub fn event(&self, api_v3_key: &[u8]) -> Result<Event, NotifyError> {
        let plain = self.decrypt(api_v3_key)?;
        if self.event_type == "TRANSACTION.SUCCESS" {
            transaction(&plain)
                .map(Event::Transaction)
                .map_err(NotifyError::Resource)
        } else if self.event_type.starts_with("REFUND.") {
            refund_record(&plain).map(Event::Refund).map_err(NotifyError::Resource)
        } else {
            Err(NotifyError::EventType(self.event_type.chars().take(64).collect()))
        }
    }
}

/// The body of a refusal: WeChat Pay decides by the HTTP status (a 4xx or 5xx is delivered
/// again; 200 or 204 is not), and this body only says why.
pub const FAIL_BODY: &str = r#"{"code":"FAIL","message":"失败"}"#;
