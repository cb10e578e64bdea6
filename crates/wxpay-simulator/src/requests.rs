//! The last API calls the simulator received, as they came, so that a test can check what a
//! client sent: that a retried call repeats the first field by field, or that a call it
//! expected was made at all. Bounded: the oldest entries are forgotten first. Times are the
//! simulator's clock (the wall clock moved on by `POST /simulator/clock`).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

use bytes::Bytes;
use serde::Serialize;

/// How many calls are kept. Enough for any test's story; small enough that a load run, which
/// never reads the log, pays only for a reference count and a short lock per call.
pub(crate) const KEPT: usize = 1_000;

struct Entry {
    seq: u64,
    at: i64,
    api: &'static str,
    body: Bytes,
}

/// The log of received calls.
#[derive(Default)]
pub(crate) struct RequestLog {
    inner: Mutex<Log>,
}

#[derive(Default)]
struct Log {
    next: u64,
    entries: VecDeque<Entry>,
}

/// One received call as `GET /simulator/requests` shows it.
#[derive(Debug, Serialize)]
pub struct ReceivedCall {
    /// The order in which calls arrived, from 1.
    pub seq: u64,
    /// When it arrived (unix seconds, by the simulator's clock).
    pub at: i64,
    /// The API, as in the metrics (`unifiedorder`, `refund`, …).
    pub api: &'static str,
    /// The fields of the body, or `None` when the body is not XML the reader accepts.
    pub fields: Option<BTreeMap<String, String>>,
    /// The body as received (lossy UTF-8).
    pub body: String,
}

impl RequestLog {
    /// Keeps a copy of a call's body: a copy, not a reference, so that the server's receive
    /// buffers the body came in are not held alive by the log.
    pub(crate) fn record(&self, api: &'static str, at: i64, body: &[u8]) {
        let body = Bytes::copy_from_slice(body);
        let mut log = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        log.next += 1;
        let seq = log.next;
        if log.entries.len() == KEPT {
            log.entries.pop_front();
        }
        log.entries.push_back(Entry { seq, at, api, body });
    }

    /// The kept calls, oldest first, of `api` (all APIs when `None`) whose fields hold every
    /// `(name, value)` of `having`.
    pub(crate) fn list(&self, api: Option<&str>, having: &[(&str, &str)]) -> Vec<ReceivedCall> {
        let picked: Vec<(u64, i64, &'static str, Bytes)> = {
            let log = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            log.entries
                .iter()
                .filter(|e| api.is_none_or(|a| a == e.api))
                .map(|e| (e.seq, e.at, e.api, e.body.clone()))
                .collect()
        };
        // Parsing happens outside the lock: readers never hold up the calls being logged.
        picked
            .into_iter()
            .filter_map(|(seq, at, api, body)| {
                let fields = wxpay_protocol::xml::read(&body).ok().map(|f| {
                    f.iter()
                        .map(|(k, v)| (k.to_owned(), v.to_owned()))
                        .collect::<BTreeMap<_, _>>()
                });
                let holds = |(name, value): &(&str, &str)| {
                    fields.as_ref().and_then(|f| f.get(*name)).map(String::as_str) == Some(*value)
                };
                if !having.iter().all(holds) {
                    return None;
                }
                Some(ReceivedCall {
                    seq,
                    at,
                    api,
                    fields,
                    body: String::from_utf8_lossy(&body).into_owned(),
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_keeps_the_newest_calls_and_filters_by_api_and_order() {
        let log = RequestLog::default();
        for i in 0..(KEPT + 5) {
            let body = format!("<xml><out_trade_no>T{}</out_trade_no></xml>", i % 3);
            log.record(
                if i % 2 == 0 { "unifiedorder" } else { "orderquery" },
                7,
                body.as_bytes(),
            );
        }
        let all = log.list(None, &[]);
        assert_eq!(all.len(), KEPT);
        assert_eq!(all[0].seq, 6, "the five oldest calls are forgotten");
        assert_eq!(all.last().unwrap().seq, (KEPT + 5) as u64);
        let uo = log.list(Some("unifiedorder"), &[("out_trade_no", "T1")]);
        assert!(!uo.is_empty());
        assert!(
            uo.iter()
                .all(|c| c.api == "unifiedorder" && c.fields.as_ref().unwrap()["out_trade_no"] == "T1")
        );
    }

    #[test]
    fn a_body_that_is_not_xml_is_kept_without_fields() {
        let log = RequestLog::default();
        log.record("refund", 1, b"not xml");
        let calls = log.list(Some("refund"), &[]);
        assert_eq!(calls.len(), 1);
        assert!(calls[0].fields.is_none());
        assert_eq!(calls[0].body, "not xml");
        assert!(
            log.list(Some("refund"), &[("out_trade_no", "X")]).is_empty(),
            "no out_trade_no, no match"
        );
    }
}
