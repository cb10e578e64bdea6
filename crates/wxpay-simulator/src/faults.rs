//! Faults on demand: `POST /simulator/faults` adds a rule; matching calls or notifications
//! misbehave while the rule lasts (for its next N matches, or until its window ends).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::metrics::APIS;

/// What goes wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// The call answers `SYSTEMERROR` and changes nothing.
    SystemError,
    /// The call answers `FREQUENCY_LIMITED` (slow down, try later) and changes nothing.
    FrequencyLimited,
    /// The call answers the signed business error `err_code` and changes nothing: any of
    /// WeChat Pay's refusals (`NOTENOUGH`, `ORDERCLOSED`, …), whatever the call's state.
    ErrorCode,
    /// The call is answered after `delay_ms`.
    Delay,
    /// The call is carried out, then its connection is dropped before the answer.
    LoseAnswer,
    /// The call is carried out, then answered after `delay_ms`: an answer that comes back
    /// after the caller stopped waiting for it.
    LateAnswer,
    /// The call is carried out and answered with a wrong signature.
    BadAnswerSignature,
    /// `downloadbill` asked for as gzip answers `CompressGZip Error` (WeChat Pay's own
    /// compression failed; its table says to try again later); a bill asked for as text is
    /// served as usual. Only for the `downloadbill` API.
    BillGzipError,
    /// Each notification is sent `copies` times at once.
    NotifyDuplicate,
    /// The next `count` notifications are held, then sent in reverse order.
    NotifyReorder,
    /// Notifications carry a wrong signature.
    NotifyBadSignature,
    /// Payment notifications carry another amount (correctly signed: only an amount check
    /// catches them).
    NotifyWrongAmount,
    /// Payment notifications say `result_code=FAIL`.
    NotifyResultFail,
    /// APIv3 notifications carry one of WeChat Pay's probe signatures
    /// (`WECHATPAY/SIGNTEST/…`), which a merchant must refuse.
    NotifyProbe,
    /// APIv3 notifications are signed with a timestamp ten minutes old (a replay).
    NotifyStaleTimestamp,
    /// APIv3 notifications name a `Wechatpay-Serial` the merchant has never seen (and are
    /// signed with a key it does not have).
    NotifyUnknownSerial,
    /// APIv3 notifications are correctly signed, but their resource's GCM tag is altered
    /// (the signature covers the envelope as sent, so only decryption catches it).
    NotifyTamperedTag,
}

impl FaultKind {
    /// Whether the fault applies to notifications rather than API calls.
    pub fn is_notification(self) -> bool {
        matches!(
            self,
            FaultKind::NotifyDuplicate
                | FaultKind::NotifyReorder
                | FaultKind::NotifyBadSignature
                | FaultKind::NotifyWrongAmount
                | FaultKind::NotifyResultFail
                | FaultKind::NotifyProbe
                | FaultKind::NotifyStaleTimestamp
                | FaultKind::NotifyUnknownSerial
                | FaultKind::NotifyTamperedTag
        )
    }

    /// Whether the fault applies to APIv3's notifications only (their probes, timestamps,
    /// serials and encryption).
    pub fn only_v3(self) -> bool {
        matches!(
            self,
            FaultKind::NotifyProbe
                | FaultKind::NotifyStaleTimestamp
                | FaultKind::NotifyUnknownSerial
                | FaultKind::NotifyTamperedTag
        )
    }

    /// The name in JSON and metrics.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::SystemError => "system_error",
            FaultKind::FrequencyLimited => "frequency_limited",
            FaultKind::ErrorCode => "error_code",
            FaultKind::Delay => "delay",
            FaultKind::LoseAnswer => "lose_answer",
            FaultKind::LateAnswer => "late_answer",
            FaultKind::BadAnswerSignature => "bad_answer_signature",
            FaultKind::BillGzipError => "bill_gzip_error",
            FaultKind::NotifyDuplicate => "notify_duplicate",
            FaultKind::NotifyReorder => "notify_reorder",
            FaultKind::NotifyBadSignature => "notify_bad_signature",
            FaultKind::NotifyWrongAmount => "notify_wrong_amount",
            FaultKind::NotifyResultFail => "notify_result_fail",
            FaultKind::NotifyProbe => "notify_probe",
            FaultKind::NotifyStaleTimestamp => "notify_stale_timestamp",
            FaultKind::NotifyUnknownSerial => "notify_unknown_serial",
            FaultKind::NotifyTamperedTag => "notify_tampered_tag",
        }
    }
}

/// A fault as asked for.
#[derive(Clone, Debug, Deserialize)]
pub struct FaultRequest {
    /// What goes wrong.
    pub kind: FaultKind,
    /// Only calls to this API (`unifiedorder`, `orderquery`, …); all when absent.
    pub api: Option<String>,
    /// Only calls or notifications about this order; all when absent.
    pub out_trade_no: Option<String>,
    /// For this many matches (default 1 when no window is given).
    pub count: Option<u32>,
    /// For this many milliseconds.
    pub for_ms: Option<u64>,
    /// For `delay` and `late_answer`: how long.
    pub delay_ms: Option<u64>,
    /// For `notify_duplicate`: how many copies (default 2).
    pub copies: Option<u32>,
    /// For `error_code`: the `err_code` to answer (upper-case letters, digits and `_`).
    pub err_code: Option<String>,
}

/// A fault rule in force.
#[derive(Clone, Debug, Serialize)]
pub struct Fault {
    /// Its number, to remove it.
    pub id: u64,
    /// What goes wrong.
    pub kind: FaultKind,
    /// The API it is scoped to.
    pub api: Option<String>,
    /// The order it is scoped to.
    pub out_trade_no: Option<String>,
    /// Matches left, when counted.
    pub remaining: Option<u32>,
    /// Milliseconds left, when timed.
    pub expires_in_ms: Option<u64>,
    /// The delay, for `delay` and `late_answer`.
    pub delay_ms: u64,
    /// The copies, for `notify_duplicate`.
    pub copies: u32,
    /// The `err_code`, for `error_code`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub err_code: Option<String>,
    #[serde(skip)]
    until: Option<Instant>,
}

/// The rules in force.
#[derive(Default)]
pub(crate) struct Faults {
    rules: Mutex<Vec<Fault>>,
    next_id: AtomicU64,
    /// Fast path: no rule at all (the usual case, checked on every call).
    active: std::sync::atomic::AtomicBool,
}

/// What a matching rule says to do.
#[derive(Clone, Debug)]
pub(crate) struct Hit {
    pub kind: FaultKind,
    pub delay: Duration,
    pub copies: u32,
    pub err_code: Option<String>,
}

impl Faults {
    /// Adds a rule.
    ///
    /// # Errors
    /// A message for an unknown API or a rule that would never end.
    pub(crate) fn add(&self, req: FaultRequest) -> Result<Fault, String> {
        if let Some(api) = &req.api {
            if !APIS.contains(&api.as_str()) {
                return Err(format!("unknown api {api:?}; one of {}", APIS.join(", ")));
            }
            if req.kind.is_notification() {
                return Err("notification faults are scoped by out_trade_no, not by api".into());
            }
        }
        let mut req = req;
        if req.kind == FaultKind::BillGzipError {
            match req.api.as_deref() {
                None => req.api = Some("downloadbill".into()),
                Some("downloadbill") => {}
                Some(other) => return Err(format!("bill_gzip_error is for downloadbill, not {other}")),
            }
            if req.out_trade_no.is_some() {
                return Err("bill_gzip_error is for a day's bill, which has no out_trade_no".into());
            }
        }
        if req.count == Some(0) {
            return Err("count must be at least 1".into());
        }
        if matches!(req.kind, FaultKind::Delay | FaultKind::LateAnswer) && req.delay_ms.is_none() {
            return Err(format!("a {} fault needs delay_ms", req.kind.name()));
        }
        match (&req.kind, &req.err_code) {
            (FaultKind::ErrorCode, None) => return Err("an error_code fault needs err_code".into()),
            (FaultKind::ErrorCode, Some(code))
                if code.is_empty()
                    || code.len() > 32
                    || !code
                        .bytes()
                        .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_') =>
            {
                return Err(format!(
                    "err_code {code:?} is not an err_code (A-Z, 0-9, _; at most 32)"
                ));
            }
            (FaultKind::ErrorCode, Some(_)) => {}
            (_, Some(_)) => return Err("err_code is only for an error_code fault".into()),
            (_, None) => {}
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let until = req.for_ms.map(|ms| Instant::now() + Duration::from_millis(ms));
        let remaining = match (req.count, req.for_ms) {
            (Some(c), _) => Some(c),
            (None, Some(_)) => None,
            (None, None) => Some(1),
        };
        let fault = Fault {
            id,
            kind: req.kind,
            api: req.api,
            out_trade_no: req.out_trade_no,
            remaining,
            expires_in_ms: req.for_ms,
            delay_ms: req.delay_ms.unwrap_or(0),
            copies: req.copies.unwrap_or(2).clamp(2, 50),
            err_code: req.err_code,
            until,
        };
        let mut rules = self.rules.lock().unwrap_or_else(|e| e.into_inner());
        rules.push(fault.clone());
        self.active.store(true, Ordering::Release);
        Ok(fault)
    }

    /// The rules in force.
    pub(crate) fn list(&self) -> Vec<Fault> {
        let now = Instant::now();
        let mut rules = self.rules.lock().unwrap_or_else(|e| e.into_inner());
        rules.retain(|r| r.until.is_none_or(|u| u > now));
        rules
            .iter()
            .map(|r| {
                let mut r = r.clone();
                r.expires_in_ms = r.until.map(|u| u.saturating_duration_since(now).as_millis() as u64);
                r
            })
            .collect()
    }

    /// Removes one rule (`Some(id)`) or all.
    pub(crate) fn clear(&self, id: Option<u64>) -> usize {
        let mut rules = self.rules.lock().unwrap_or_else(|e| e.into_inner());
        let before = rules.len();
        match id {
            Some(id) => rules.retain(|r| r.id != id),
            None => rules.clear(),
        }
        if rules.is_empty() {
            self.active.store(false, Ordering::Release);
        }
        before - rules.len()
    }

    /// Whether a rule of this kind is in force.
    pub(crate) fn has_kind(&self, kind: FaultKind) -> bool {
        if !self.active.load(Ordering::Acquire) {
            return false;
        }
        let now = Instant::now();
        let rules = self.rules.lock().unwrap_or_else(|e| e.into_inner());
        rules
            .iter()
            .any(|r| r.kind == kind && r.until.is_none_or(|u| u > now) && r.remaining != Some(0))
    }

    /// Takes the first rule matching a call to `api` about `out_trade_no` (counting it),
    /// among the API faults.
    pub(crate) fn take_call(&self, api: &str, out_trade_no: Option<&str>) -> Option<Hit> {
        self.take_call_of(api, out_trade_no, |_| true)
    }

    /// [`Faults::take_call`] among the rules whose kind `applies` to this call: a rule that
    /// does not is neither counted nor used up.
    pub(crate) fn take_call_of(
        &self,
        api: &str,
        out_trade_no: Option<&str>,
        applies: impl Fn(FaultKind) -> bool,
    ) -> Option<Hit> {
        self.take(
            |r| !r.kind.is_notification() && r.api.as_deref().is_none_or(|a| a == api) && applies(r.kind),
            out_trade_no,
        )
    }

    /// Takes the first notification rule matching `out_trade_no` whose kind `accept`s.
    pub(crate) fn take_notification(&self, out_trade_no: &str, accept: impl Fn(FaultKind) -> bool) -> Option<Hit> {
        self.take(|r| r.kind.is_notification() && accept(r.kind), Some(out_trade_no))
    }

    fn take(&self, kind_ok: impl Fn(&Fault) -> bool, out_trade_no: Option<&str>) -> Option<Hit> {
        if !self.active.load(Ordering::Acquire) {
            return None;
        }
        let now = Instant::now();
        let mut rules = self.rules.lock().unwrap_or_else(|e| e.into_inner());
        rules.retain(|r| r.until.is_none_or(|u| u > now) && r.remaining != Some(0));
        let pos = rules
            .iter()
            .position(|r| kind_ok(r) && r.out_trade_no.as_deref().is_none_or(|o| Some(o) == out_trade_no))?;
        let rule = &mut rules[pos];
        let hit = Hit {
            kind: rule.kind,
            delay: Duration::from_millis(rule.delay_ms),
            copies: rule.copies,
            err_code: rule.err_code.clone(),
        };
        if let Some(n) = rule.remaining.as_mut() {
            *n -= 1;
            if *n == 0 {
                rules.remove(pos);
            }
        }
        if rules.is_empty() {
            self.active.store(false, Ordering::Release);
        }
        Some(hit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(kind: FaultKind) -> FaultRequest {
        FaultRequest {
            kind,
            api: None,
            out_trade_no: None,
            count: None,
            for_ms: None,
            delay_ms: None,
            copies: None,
            err_code: None,
        }
    }

    #[test]
    fn an_error_code_fault_needs_a_well_formed_err_code_and_answers_with_it() {
        let f = Faults::default();
        let with = |code: Option<&str>, kind| FaultRequest {
            err_code: code.map(str::to_owned),
            api: Some("refund".into()),
            ..req(kind)
        };
        assert!(f.add(with(None, FaultKind::ErrorCode)).is_err());
        assert!(f.add(with(Some("notenough"), FaultKind::ErrorCode)).is_err());
        assert!(f.add(with(Some(""), FaultKind::ErrorCode)).is_err());
        assert!(f.add(with(Some("NOTENOUGH"), FaultKind::SystemError)).is_err());
        f.add(with(Some("NOTENOUGH"), FaultKind::ErrorCode)).unwrap();
        assert!(f.take_call("unifiedorder", None).is_none());
        let hit = f.take_call("refund", None).unwrap();
        assert_eq!(
            (hit.kind, hit.err_code.as_deref()),
            (FaultKind::ErrorCode, Some("NOTENOUGH"))
        );
        assert!(f.take_call("refund", None).is_none(), "counted once by default");
    }

    #[test]
    fn a_bill_gzip_error_is_scoped_to_downloadbill() {
        let f = Faults::default();
        let rule = f.add(req(FaultKind::BillGzipError)).unwrap();
        assert_eq!(rule.api.as_deref(), Some("downloadbill"));
        assert!(f.take_call("unifiedorder", None).is_none());
        assert_eq!(
            f.take_call("downloadbill", None).unwrap().kind,
            FaultKind::BillGzipError
        );
        let mut elsewhere = req(FaultKind::BillGzipError);
        elsewhere.api = Some("v3_billdownload".into());
        assert!(f.add(elsewhere).unwrap_err().contains("for downloadbill"));
        let mut of_an_order = req(FaultKind::BillGzipError);
        of_an_order.out_trade_no = Some("T1".into());
        assert!(f.add(of_an_order).unwrap_err().contains("no out_trade_no"));
        // A bill asked for as text leaves the rule for the next gzip request.
        f.add(req(FaultKind::BillGzipError)).unwrap();
        let text = |k| k != FaultKind::BillGzipError;
        assert!(f.take_call_of("downloadbill", None, text).is_none());
        assert!(f.take_call_of("downloadbill", None, |_| true).is_some());
    }

    #[test]
    fn a_counted_rule_fires_exactly_its_count_and_only_in_scope() {
        let f = Faults::default();
        f.add(FaultRequest {
            api: Some("orderquery".into()),
            count: Some(2),
            ..req(FaultKind::SystemError)
        })
        .unwrap();
        assert!(f.take_call("unifiedorder", None).is_none());
        assert!(f.take_call("orderquery", Some("a")).is_some());
        assert!(f.take_call("orderquery", Some("b")).is_some());
        assert!(f.take_call("orderquery", Some("c")).is_none());
        assert!(f.list().is_empty());
    }

    #[test]
    fn rules_are_scoped_by_order_and_refused_when_malformed() {
        let f = Faults::default();
        f.add(FaultRequest {
            out_trade_no: Some("o1".into()),
            ..req(FaultKind::NotifyWrongAmount)
        })
        .unwrap();
        assert!(
            f.take_call("unifiedorder", Some("o1")).is_none(),
            "a notification fault does not hit calls"
        );
        assert!(f.take_notification("o2", |_| true).is_none());
        assert_eq!(
            f.take_notification("o1", |_| true).unwrap().kind,
            FaultKind::NotifyWrongAmount
        );
        assert!(
            f.add(FaultRequest {
                api: Some("nope".into()),
                ..req(FaultKind::SystemError)
            })
            .is_err()
        );
        assert!(f.add(req(FaultKind::Delay)).is_err());
        assert!(
            f.add(FaultRequest {
                count: Some(0),
                ..req(FaultKind::SystemError)
            })
            .is_err()
        );
    }

    #[test]
    fn a_timed_rule_fires_until_its_window_ends() {
        let f = Faults::default();
        let rule = f
            .add(FaultRequest {
                for_ms: Some(60_000),
                ..req(FaultKind::SystemError)
            })
            .unwrap();
        for _ in 0..5 {
            assert!(f.take_call("refund", None).is_some());
        }
        assert_eq!(f.clear(Some(rule.id)), 1);
        assert!(f.take_call("refund", None).is_none());
    }
}
