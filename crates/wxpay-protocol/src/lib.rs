//! The WeChat Pay wire protocol, sans IO.
//!
//! This crate turns values into WeChat Pay messages and messages into values: the APIv2
//! signature, the hardened XML codec, typed requests and responses for the calls a mini
//! program merchant makes, payment and refund notifications, the `wx.requestPayment`
//! parameters, `jscode2session`, and the signature doctor that explains "签名错误".
//!
//! It does no I/O and reads no clock, environment or randomness: time, nonces and keys are
//! arguments, so every function here is deterministic and testable with fixed inputs. The
//! gateway, the simulator and the CLI execute the messages built here over their own
//! transports.
//!
//! ```
//! use wxpay_protocol::{ApiKey, Fields, SignType};
//!
//! let key = ApiKey::new("192006250b4c09247ec02edce69f6a2d")?;
//! let fields: Fields = [
//!     ("appid", "wxd930ea5d5a258f4f"),
//!     ("mch_id", "10000100"),
//!     ("device_info", "1000"),
//!     ("body", "test"),
//!     ("nonce_str", "ibuaiVcKdpRxkhJA"),
//! ]
//! .into_iter()
//! .collect();
//! assert_eq!(fields.signature(&key, SignType::Md5).as_str(), "9A0A8659F005D6984697E2CA0A9CF3B7");
//! # Ok::<(), wxpay_protocol::Error>(())
//! ```
#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod error;
mod fields;
pub mod lang;
pub mod sign;
pub mod sns;
mod types;
pub mod v2;
pub mod v3;
pub mod xml;

pub use error::Error;
pub use fields::Fields;
pub use sign::Signature;
pub use types::{
    ApiKey, ApiV3Key, AppId, AppSecret, BeijingTime, Fen, MchId, Merchant, Nonce, OutRefundNo, OutTradeNo, SignType,
    mask_secret, rfc3339_utc_millis,
};

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
