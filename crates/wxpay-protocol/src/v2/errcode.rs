//! WeChat Pay APIv2 business error codes (`err_code`) and whether a call may be retried.

use std::fmt;

/// What a caller may do after an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Retry {
    /// Retry now with exactly the same parameters (same `out_trade_no`, same
    /// `out_refund_no`, same amounts): the call is idempotent and the failure transient.
    SameParameters,
    /// Retry later, slower: the merchant is being rate limited or briefly blocked.
    WaitAndRetry,
    /// Do not retry: the answer is final, or needs a human or another call to resolve.
    Final,
}

macro_rules! err_codes {
    ($($(#[$doc:meta])* $variant:ident = $wire:literal => $retry:ident,)*) => {
        /// An APIv2 `err_code`. Codes this crate does not know are kept verbatim in
        /// [`ErrCode::Other`] and treated as final.
        #[derive(Clone, Debug, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum ErrCode {
            $($(#[$doc])* $variant,)*
            /// A code not in WeChat Pay's published tables.
            Other(String),
        }

        impl ErrCode {
            /// Reads a code from the wire.
            pub fn parse(s: &str) -> ErrCode {
                match s {
                    $($wire => ErrCode::$variant,)*
                    other => ErrCode::Other(other.to_owned()),
                }
            }

            /// The code as WeChat Pay writes it.
            pub fn as_str(&self) -> &str {
                match self {
                    $(ErrCode::$variant => $wire,)*
                    ErrCode::Other(s) => s,
                }
            }

            /// Whether and how the failed call may be retried (protocol.md A.7).
            pub fn retry(&self) -> Retry {
                match self {
                    $(ErrCode::$variant => Retry::$retry,)*
                    ErrCode::Other(_) => Retry::Final,
                }
            }
        }
    };
}

err_codes! {
    /// System error or timeout: retry with the same parameters (for a refund, the same
    /// `out_refund_no`).
    SystemError = "SYSTEMERROR" => SameParameters,
    /// Refund rejected under concurrency: retry with the same parameters.
    BizerrNeedRetry = "BIZERR_NEED_RETRY" => SameParameters,
    /// Too many invalid requests, briefly blocked: retry after at least a minute.
    InvalidReqTooMuch = "INVALID_REQ_TOO_MUCH" => WaitAndRetry,
    /// Rate limited (refunds of old orders): retry at a lower rate.
    FrequencyLimited = "FREQUENCY_LIMITED" => WaitAndRetry,
    /// The user is entering a password (micropay only): poll with orderquery.
    UserPaying = "USERPAYING" => WaitAndRetry,
    /// The merchant lacks the permission.
    NoAuth = "NOAUTH" => Final,
    /// Not enough balance (the user's for an order, the merchant's for a refund).
    NotEnough = "NOTENOUGH" => Final,
    /// The order is already paid: treat it as paid.
    OrderPaid = "ORDERPAID" => Final,
    /// The order is closed: a new `out_trade_no` is needed.
    OrderClosed = "ORDERCLOSED" => Final,
    /// The order does not exist.
    OrderNotExist = "ORDERNOTEXIST" => Final,
    /// The `out_trade_no` was used for another order.
    OutTradeNoUsed = "OUT_TRADE_NO_USED" => Final,
    /// A malformed request, or an order re-entered with other parameters.
    InvalidRequest = "INVALID_REQUEST" => Final,
    /// A required parameter is missing.
    LackParams = "LACK_PARAMS" => Final,
    /// The appid does not exist.
    AppidNotExist = "APPID_NOT_EXIST" => Final,
    /// The mch_id does not exist.
    MchidNotExist = "MCHID_NOT_EXIST" => Final,
    /// The appid is not bound to the mch_id.
    AppidMchidNotMatch = "APPID_MCHID_NOT_MATCH" => Final,
    /// The signature is wrong.
    SignError = "SIGNERROR" => Final,
    /// The XML is malformed.
    XmlFormatError = "XML_FORMAT_ERROR" => Final,
    /// The request was not a POST.
    RequirePostMethod = "REQUIRE_POST_METHOD" => Final,
    /// The body was empty.
    PostDataEmpty = "POST_DATA_EMPTY" => Final,
    /// The body was not UTF-8.
    NotUtf8 = "NOT_UTF8" => Final,
    /// The order is in a state that does not allow the operation.
    TradeStateError = "TRADE_STATE_ERROR" => Final,
    /// The order is too old to refund (one year).
    TradeOverdue = "TRADE_OVERDUE" => Final,
    /// A business error described only by `err_code_des`.
    Error = "ERROR" => Final,
    /// The payer's account is closed: refund offline.
    UserAccountAbnormal = "USER_ACCOUNT_ABNORMAL" => Final,
    /// The `transaction_id` is not valid.
    InvalidTransactionId = "INVALID_TRANSACTIONID" => Final,
    /// A parameter is wrong.
    ParamError = "PARAM_ERROR" => Final,
    /// The refund does not exist.
    RefundNotExist = "REFUNDNOTEXIST" => Final,
    /// The refund amount is not valid (more than what is left to refund, or zero).
    RefundFeeInvalid = "REFUND_FEE_INVALID" => Final,
}

impl fmt::Display for ErrCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_carry_their_retry_class() {
        for code in ["SYSTEMERROR", "ORDERPAID", "INVALID_REQ_TOO_MUCH", "SOMETHING_NEW"] {
            assert_eq!(ErrCode::parse(code).as_str(), code);
        }
        assert_eq!(ErrCode::parse("SYSTEMERROR").retry(), Retry::SameParameters);
        assert_eq!(ErrCode::parse("BIZERR_NEED_RETRY").retry(), Retry::SameParameters);
        assert_eq!(ErrCode::parse("FREQUENCY_LIMITED").retry(), Retry::WaitAndRetry);
        assert_eq!(ErrCode::parse("ORDERPAID").retry(), Retry::Final);
        assert_eq!(ErrCode::parse("SOMETHING_NEW").retry(), Retry::Final);
    }
}
