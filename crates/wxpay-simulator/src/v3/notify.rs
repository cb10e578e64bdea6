//! APIv3 notifications: the resource (a transaction or a refund) encrypted with the merchant's
//! APIv3 key, wrapped in the envelope, and signed in `Wechatpay-*` headers; with the faults a
//! merchant must survive (a probe, a replayed timestamp, an unknown serial, a tampered tag, a
//! bad signature).

use serde_json::{Value, json};
use wxpay_protocol::v2::RefundStatus;
use wxpay_protocol::v3::auth::PROBE_PREFIX;
use wxpay_protocol::v3::calls::rfc3339_beijing;
use wxpay_protocol::v3::notify::{Envelope, Resource as Encrypted};

use super::V3;
use super::calls::transaction_json;
use crate::faults::FaultKind;
use crate::ids;
use crate::store::{Order, RefundRec};

/// A notification's resource, read under the shard lock; encrypted and signed after it.
pub(crate) struct Resource {
    /// `TRANSACTION.SUCCESS`, `REFUND.SUCCESS`, …
    event_type: &'static str,
    summary: &'static str,
    /// `transaction` or `refund`.
    original_type: &'static str,
    /// The decrypted resource.
    plain: Value,
    /// The same on every delivery of this notification.
    id: String,
    /// When what it reports happened (Unix seconds): its `create_time`.
    created_at: i64,
}

/// An id shaped like WeChat Pay's (36 characters), the same for every delivery of one
/// notification: derived from what it reports.
fn event_id(what: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, what.as_bytes());
    let hex: String = d.as_ref()[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// The resource of a payment notification; `None` unless the order is paid (APIv3 notifies
/// successes only).
pub(crate) fn payment(o: &Order, mchid: &str, wrong_amount: bool) -> Option<Resource> {
    if o.state != crate::store::OrderState::Success {
        return None;
    }
    let total = if wrong_amount {
        o.total_fee.checked_add(wxpay_protocol::Fen::new(1).ok()?)?
    } else {
        o.total_fee
    };
    let transaction_id = o.transaction_id.as_deref().unwrap_or_default();
    // The payment as it was when paid, on every delivery: a refund since does not turn the
    // notification's trade_state into REFUND.
    let mut plain = transaction_json(o, mchid, total);
    plain["trade_state"] = json!("SUCCESS");
    plain["trade_state_desc"] = json!("支付成功");
    Some(Resource {
        event_type: "TRANSACTION.SUCCESS",
        summary: "支付成功",
        original_type: "transaction",
        plain,
        id: event_id(&format!("TRANSACTION.SUCCESS {transaction_id}")),
        created_at: o.paid_at.unwrap_or(o.created_at),
    })
}

/// The resource of a refund notification, once the refund has ended.
pub(crate) fn refund(o: &Order, r: &RefundRec, mchid: &str) -> Option<Resource> {
    let (event_type, summary, status) = match r.status {
        RefundStatus::Success => ("REFUND.SUCCESS", "退款成功", "SUCCESS"),
        RefundStatus::RefundClose => ("REFUND.CLOSED", "退款关闭", "CLOSED"),
        RefundStatus::Processing => return None,
        _ => ("REFUND.ABNORMAL", "退款异常", "ABNORMAL"),
    };
    let mut plain = json!({
        "mchid": mchid,
        "transaction_id": o.transaction_id.as_deref().unwrap_or_default(),
        "out_trade_no": &*o.out_trade_no,
        "refund_id": &*r.refund_id,
        "out_refund_no": &*r.out_refund_no,
        "refund_status": status,
        "user_received_account": "支付用户零钱",
        "amount": {
            "total": o.total_fee.get(),
            "refund": r.refund_fee.get(),
            "payer_total": o.total_fee.get(),
            "payer_refund": r.refund_fee.get(),
        },
    });
    if let Some(t) = r.settled_at.filter(|_| r.status == RefundStatus::Success) {
        plain["success_time"] = json!(rfc3339_beijing(t));
    }
    Some(Resource {
        event_type,
        summary,
        original_type: "refund",
        plain,
        id: event_id(&format!("{event_type} {}", r.refund_id)),
        created_at: r.settled_at.unwrap_or(r.accepted_at),
    })
}

/// A notification ready to post: its body and its headers.
pub(crate) struct Sealed {
    pub body: String,
    pub headers: Vec<(&'static str, String)>,
}

/// Encrypts `resource` with the merchant's APIv3 key, wraps it, and signs it at `now`, with
/// `fault` applied.
pub(crate) fn seal(v3: &V3, mch: u16, resource: &Resource, now: i64, fault: Option<FaultKind>) -> Option<Sealed> {
    let merchant = v3.merchants.get(usize::from(mch))?.as_ref()?;
    let nonce = ids::random_alnum(12);
    let sealed = Encrypted::seal(
        merchant.apiv3_key.expose(),
        resource.original_type,
        &nonce,
        resource.plain.to_string().as_bytes(),
    )
    .ok()?;
    let mut envelope = Envelope::new(
        &resource.id,
        &rfc3339_beijing(resource.created_at),
        resource.event_type,
        resource.summary,
        sealed,
    );
    if fault == Some(FaultKind::NotifyTamperedTag) {
        // The tag is the last 16 bytes: change a character near the end of the base64 (before
        // any padding), so that the text is still base64 and only the tag check fails.
        let ciphertext = &mut envelope.resource.ciphertext;
        let at = ciphertext.trim_end_matches('=').len().saturating_sub(2);
        if let Some(c) = ciphertext.get(at..=at) {
            let swapped = if c == "A" { "B" } else { "A" };
            ciphertext.replace_range(at..=at, swapped);
        }
    }
    let body = envelope.to_json();
    let signed_at = if fault == Some(FaultKind::NotifyStaleTimestamp) {
        now - 600
    } else {
        now
    };
    let mut signed = v3.sign(body.as_bytes(), signed_at);
    match fault {
        Some(FaultKind::NotifyBadSignature) => signed.signature = super::corrupt(&signed.signature),
        Some(FaultKind::NotifyProbe) => {
            signed.signature = format!("{PROBE_PREFIX}{}", ids::random_alnum(64));
        }
        Some(FaultKind::NotifyUnknownSerial) => {
            // A key the merchant was never given: its id is new, and its signature cannot
            // verify with any key the merchant has.
            signed.serial = ids::random_alnum(40).to_ascii_uppercase();
            signed.signature = super::corrupt(&signed.signature);
        }
        _ => {}
    }
    Some(Sealed {
        body,
        headers: signed.headers().into_iter().collect(),
    })
}

/// Whether an answer acknowledges an APIv3 notification: HTTP 200 or 204, whatever the body.
pub(crate) fn acknowledges(status: u16) -> bool {
    matches!(status, 200 | 204)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_are_stable_and_shaped_like_wechat_pays() {
        let a = event_id("TRANSACTION.SUCCESS 4200");
        assert_eq!(a.len(), 36);
        assert_eq!(a, event_id("TRANSACTION.SUCCESS 4200"));
        assert_ne!(a, event_id("TRANSACTION.SUCCESS 4201"));
        assert!(acknowledges(204) && acknowledges(200) && !acknowledges(202) && !acknowledges(500));
    }
}
