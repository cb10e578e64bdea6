//! The protocol layer's one error type.
//!
//! Nothing here knows about HTTP status codes: the gateway maps these variants to responses
//! in exactly one place, and the CLI maps them to messages and exit codes.

use crate::v2::ErrCode;
use crate::xml::XmlError;

/// Everything that can go wrong while building, reading or checking a WeChat Pay message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A value does not satisfy the rules of its type (for example an `out_trade_no` with a
    /// space in it, or an API key that is not 32 characters long).
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// Which value was refused (`out_trade_no`, `API key`, ...).
        what: &'static str,
        /// Why it was refused, in words a user can act on.
        reason: String,
    },

    /// The XML body was refused by the hardened reader, before anything looked at its fields.
    #[error("refused XML: {0}")]
    Xml(#[from] XmlError),

    /// A field that the message must carry is absent or empty.
    #[error("missing field `{0}`")]
    MissingField(String),

    /// A field is present but its value cannot be what WeChat Pay sends there.
    #[error("field `{field}` has an invalid value: {reason}")]
    InvalidField {
        /// The field's name as it appears on the wire.
        field: String,
        /// Why the value was refused.
        reason: String,
    },

    /// The `sign` field does not match the message and the merchant's key.
    #[error("signature does not match (sign_type {sign_type})")]
    BadSignature {
        /// The algorithm that was used to check, from configuration.
        sign_type: crate::SignType,
    },

    /// The message names another signature algorithm than the one configured for the
    /// merchant. The configured one always wins, so a message cannot downgrade the check.
    #[error("message says sign_type={received} but the merchant is configured for {configured}")]
    SignTypeMismatch {
        /// What the merchant is configured to use.
        configured: crate::SignType,
        /// What the message claims (verbatim, it may be garbage).
        received: String,
    },

    /// The message belongs to another merchant or mini program than the one expected.
    #[error("field `{field}` is {received:?}, expected {expected:?}")]
    MerchantMismatch {
        /// `appid` or `mch_id`.
        field: &'static str,
        /// The configured value.
        expected: String,
        /// The value in the message.
        received: String,
    },

    /// WeChat Pay refused the call at the protocol level (`return_code=FAIL`), for example
    /// `签名错误` or `XML格式错误`. Nothing was done.
    #[error("WeChat Pay returned FAIL: {return_msg}")]
    ReturnFail {
        /// WeChat Pay's `return_msg`, a human readable text.
        return_msg: String,
        /// `error_code`, which only `downloadbill` sends.
        error_code: Option<String>,
    },

    /// WeChat Pay accepted the call but refused the business operation (`result_code=FAIL`).
    #[error("WeChat Pay business error {code}: {description}")]
    Business {
        /// `err_code`, with its retry classification.
        code: ErrCode,
        /// `err_code_des`, a human readable text.
        description: String,
    },

    /// The encrypted part of a refund notification could not be decrypted.
    #[error("cannot decrypt req_info: {0}")]
    Decrypt(String),

    /// A JSON body (jscode2session) could not be read.
    #[error("invalid JSON: {0}")]
    Json(String),

    /// `jscode2session` answered with an `errcode`.
    #[error("jscode2session failed with errcode {errcode}: {errmsg}")]
    Sns {
        /// WeChat's numeric error code (`40029` invalid code, `40163` code already used, ...).
        errcode: i64,
        /// WeChat's message; match on `errcode`, never on this text.
        errmsg: String,
    },

    /// A bill downloaded with `downloadbill` is not in a layout we can read, or its summary
    /// line disagrees with its rows.
    #[error("bill: {0}")]
    Bill(String),
}

impl Error {
    /// Shorthand for [`Error::Invalid`].
    pub(crate) fn invalid(what: &'static str, reason: impl Into<String>) -> Self {
        Error::Invalid {
            what,
            reason: reason.into(),
        }
    }

    /// Shorthand for [`Error::InvalidField`].
    pub(crate) fn field(field: &str, reason: impl Into<String>) -> Self {
        Error::InvalidField {
            field: field.to_owned(),
            reason: reason.into(),
        }
    }
}
