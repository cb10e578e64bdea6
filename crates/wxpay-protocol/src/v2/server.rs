//! WeChat Pay's side of APIv2 that belongs to no one message: the unsigned `return_fail`
//! refusal and the [`AnswerSigner`] that signs answers. The simulator is built on this; so are
//! tests that play WeChat Pay. Each message's own server side (reading its request, writing
//! its answer, encoding a notification, writing a bill) lives with the message, in `order`,
//! `refund`, `bill` and `notify`.

use super::{ErrCode, ToFields};
use crate::{ApiKey, Error, Fields, Nonce, SignType};

/// The protocol-level refusal WeChat Pay sends when it cannot even look at a request (bad
/// XML, bad signature, not POST): `return_code=FAIL` with a message, and no signature.
pub fn return_fail(return_msg: &str) -> String {
    super::fail_reply(return_msg, "FAIL")
}

/// Who signs an answer, and with what: the merchant's appid and key, the algorithm of the
/// request, and a fresh nonce.
#[derive(Debug, Clone, Copy)]
pub struct AnswerSigner<'m> {
    /// The appid the request named.
    pub appid: &'m str,
    /// The merchant.
    pub mch_id: &'m str,
    /// The merchant's key.
    pub key: &'m ApiKey,
    /// The algorithm of the request.
    pub sign_type: SignType,
    /// A fresh nonce for this answer.
    pub nonce: &'m Nonce,
}

impl AnswerSigner<'_> {
    fn envelope<'a>(&'a self, result_code: &'a str) -> Result<Fields<'a>, Error> {
        let mut f = Fields::with_capacity(24);
        f.insert("return_code", "SUCCESS")?;
        f.insert("return_msg", "OK")?;
        f.insert("appid", self.appid)?;
        f.insert("mch_id", self.mch_id)?;
        f.insert("nonce_str", self.nonce.as_str())?;
        f.insert("result_code", result_code)?;
        Ok(f)
    }

    /// A signed success answer carrying `answer`'s fields.
    ///
    /// # Errors
    /// When the answer's fields clash with the envelope, or cannot be written as XML.
    pub fn success(&self, answer: &impl ToFields) -> Result<String, Error> {
        let mut f = self.envelope("SUCCESS")?;
        answer.to_fields(&mut f)?;
        f.sign(self.key, self.sign_type);
        f.to_xml()
    }

    /// A signed business refusal (`result_code=FAIL`, `err_code`, `err_code_des`).
    ///
    /// # Errors
    /// When the description cannot be written as XML.
    pub fn business_error(&self, code: &ErrCode, description: &str) -> Result<String, Error> {
        let mut f = self.envelope("FAIL")?;
        f.insert("err_code", code.as_str())?;
        f.insert("err_code_des", description)?;
        f.sign(self.key, self.sign_type);
        f.to_xml()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::v2::{
        CloseOrderResponse, FromFields, OrderRef, Refund, RefundQuery, TradeType, UnifiedOrder, UnifiedOrderResponse,
        V2Call, decode_signed,
    };
    use crate::{AppId, Fen, MchId, Merchant, OutRefundNo, OutTradeNo};

    fn merchant() -> Merchant {
        Merchant {
            appid: AppId::new("wxd678efh567hg6787").unwrap(),
            mch_id: MchId::new("1230000109").unwrap(),
            key: ApiKey::new("192006250b4c09247ec02edce69f6a2d").unwrap(),
            sign_type: SignType::HmacSha256,
        }
    }

    #[test]
    fn requests_round_trip_through_their_wire_form() {
        let m = merchant();
        let nonce = Nonce::new("n1").unwrap();
        let mut order = UnifiedOrder::jsapi(
            "咖啡",
            OutTradeNo::new("order-1").unwrap(),
            Fen::new(1999).unwrap(),
            "127.0.0.1",
            "http://127.0.0.1:1/notify",
            "openid-1",
        );
        order.attach = Some("a".into());
        order.extra.insert("future_field".into(), "x".into());
        let body = crate::v2::encode(&order, &m, &nonce).unwrap();
        let f = crate::xml::read(body.as_bytes()).unwrap();
        assert_eq!(UnifiedOrder::from_fields(&f).unwrap(), order);

        let refund = Refund::new(
            OrderRef::TransactionId("4200000001".into()),
            OutRefundNo::new("r1").unwrap(),
            Fen::new(100).unwrap(),
            Fen::new(10).unwrap(),
        );
        let body = crate::v2::encode(&refund, &m, &nonce).unwrap();
        assert_eq!(
            Refund::from_fields(&crate::xml::read(body.as_bytes()).unwrap()).unwrap(),
            refund
        );

        let q = RefundQuery::by_out_refund_no(OutRefundNo::new("r1").unwrap());
        let body = crate::v2::encode(&q, &m, &nonce).unwrap();
        assert_eq!(
            RefundQuery::from_fields(&crate::xml::read(body.as_bytes()).unwrap()).unwrap(),
            q
        );
    }

    #[test]
    fn answers_signed_here_decode_on_the_client_side() {
        let m = merchant();
        let nonce = Nonce::new("n2").unwrap();
        let signer = AnswerSigner {
            appid: m.appid.as_str(),
            mch_id: m.mch_id.as_str(),
            key: &m.key,
            sign_type: m.sign_type,
            nonce: &nonce,
        };
        let answer = UnifiedOrderResponse {
            prepay_id: "wx1".into(),
            trade_type: TradeType::Jsapi,
            code_url: None,
            mweb_url: None,
            device_info: None,
            extra: BTreeMap::new(),
        };
        let body = signer.success(&answer).unwrap();
        assert_eq!(UnifiedOrder::decode(body.as_bytes(), &m).unwrap(), answer);
        let err = signer.business_error(&ErrCode::OrderPaid, "订单已支付").unwrap();
        assert!(matches!(
            decode_signed::<CloseOrderResponse>(err.as_bytes(), &m),
            Err(Error::Business {
                code: ErrCode::OrderPaid,
                ..
            })
        ));
        assert!(matches!(
            UnifiedOrder::decode(return_fail("签名错误").as_bytes(), &m),
            Err(Error::ReturnFail { return_msg, .. }) if return_msg == "签名错误"
        ));
    }
}
