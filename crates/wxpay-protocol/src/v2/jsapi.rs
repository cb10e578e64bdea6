//! The parameters of `wx.requestPayment` for APIv2 orders.

use crate::sign;
use crate::{AppId, Error, Merchant, Nonce, SignType};

/// The five fields and `paySign` that a mini program passes to `wx.requestPayment`, with
/// the exact camelCase names the mini program API wants.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PayParams {
    /// `appId` (capital I): the mini program's AppID.
    #[serde(rename = "appId")]
    pub app_id: String,
    /// `timeStamp` (capital S): Unix seconds as a string of digits.
    #[serde(rename = "timeStamp")]
    pub time_stamp: String,
    /// `nonceStr`.
    #[serde(rename = "nonceStr")]
    pub nonce_str: String,
    /// `package`: `prepay_id=<prepay_id>`.
    pub package: String,
    /// `signType`: must be the algorithm the order was placed with.
    #[serde(rename = "signType")]
    pub sign_type: String,
    /// `paySign`.
    #[serde(rename = "paySign")]
    pub pay_sign: String,
}

impl PayParams {
    /// Signs the parameters for `prepay_id`. `timestamp` is Unix seconds and `nonce` a fresh
    /// random string; both come from the caller so that the result is reproducible.
    ///
    /// # Errors
    /// [`Error::Invalid`] for an empty or oversized `prepay_id`.
    pub fn sign(merchant: &Merchant, prepay_id: &str, timestamp: u64, nonce: &Nonce) -> Result<PayParams, Error> {
        Self::sign_for(
            &merchant.appid,
            prepay_id,
            timestamp,
            nonce,
            &merchant.key,
            merchant.sign_type,
        )
    }

    /// Like [`PayParams::sign`], with the parts given one by one.
    ///
    /// # Errors
    /// As [`PayParams::sign`].
    pub fn sign_for(
        appid: &AppId,
        prepay_id: &str,
        timestamp: u64,
        nonce: &Nonce,
        key: &crate::ApiKey,
        sign_type: SignType,
    ) -> Result<PayParams, Error> {
        if prepay_id.is_empty() || prepay_id.len() > 64 || !prepay_id.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Error::invalid("prepay_id", format!("{prepay_id:?} is not a prepay_id")));
        }
        let mut p = PayParams {
            app_id: appid.as_str().to_owned(),
            time_stamp: timestamp.to_string(),
            nonce_str: nonce.as_str().to_owned(),
            package: format!("prepay_id={prepay_id}"),
            sign_type: sign_type.as_str().to_owned(),
            pay_sign: String::new(),
        };
        p.pay_sign = p.signature(key, sign_type).as_str().to_owned();
        Ok(p)
    }

    /// The five signed pairs, sorted by name as the signature needs them.
    pub fn signed_pairs(&self) -> [(&str, &str); 5] {
        [
            ("appId", &self.app_id),
            ("nonceStr", &self.nonce_str),
            ("package", &self.package),
            ("signType", &self.sign_type),
            ("timeStamp", &self.time_stamp),
        ]
    }

    /// The `paySign` these parameters should carry.
    pub fn signature(&self, key: &crate::ApiKey, sign_type: SignType) -> sign::Signature {
        sign::sign_sorted(self.signed_pairs(), "paySign", key, sign_type)
    }

    /// Checks `paySign`, with the configured algorithm, which `signType` must name.
    ///
    /// # Errors
    /// [`Error::SignTypeMismatch`] or [`Error::BadSignature`].
    pub fn verify(&self, key: &crate::ApiKey, sign_type: SignType) -> Result<(), Error> {
        if self.sign_type != sign_type.as_str() {
            return Err(Error::SignTypeMismatch {
                configured: sign_type,
                received: self.sign_type.clone(),
            });
        }
        if self.signature(key, sign_type).matches(&self.pay_sign) {
            Ok(())
        } else {
            Err(Error::BadSignature { sign_type })
        }
    }
}
