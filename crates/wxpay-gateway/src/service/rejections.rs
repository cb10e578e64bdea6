//! The record of rejected notifications, kept within a budget.
//!
//! A rejected notification (unreadable, an unknown merchant, a bad signature, an undecryptable
//! refund) is what an operator looks at to see an attack or a misconfigured key, so it is kept:
//! when, from where, why, the merchant and order if known, the SHA-256 of the body and its
//! first KiB (values the sender chose are clipped to 128 characters). But anybody can send
//! them, as fast as they like, so keeping them must cost the gateway a bounded amount: at most
//! [`PER_MINUTE`] a minute are logged and kept (the rest only counted in
//! `wxpay_rejected_notifications_unrecorded_total`, and summed up in one log line), and they
//! are written in batches by a task of their own, never on the request's path, so that a
//! flood of junk takes no turns on the database from the writes of verified notifications.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::metrics::Metrics;
use crate::store::{NotificationRecord, Store};

/// Rejected notifications kept per minute; the rest are counted only.
pub(crate) const PER_MINUTE: u32 = 120;

/// How long records wait to be written together.
const GATHER: Duration = Duration::from_millis(250);

/// The rejections waiting to be written, and this minute's budget.
#[derive(Default)]
pub(crate) struct Rejections {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The minute (Unix ms / 60,000) the budget counts.
    minute: i64,
    /// Kept this minute.
    kept: u32,
    /// Counted only this minute.
    over: u64,
    /// Waiting for the writer task.
    pending: Vec<NotificationRecord>,
    /// A writer task is on its way.
    writing: bool,
}

impl std::fmt::Debug for Rejections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Rejections")
    }
}

impl Rejections {
    /// Whether a rejection received at `received_at` is within this minute's
    /// budget, to be logged and kept; if not, it is counted only. The first rejection of a
    /// minute says how many of the one before were counted only.
    pub(crate) fn within_budget(&self, metrics: &Metrics, received_at: crate::time::Millis) -> bool {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let minute = received_at.unix_ms().div_euclid(60_000);
        if st.minute != minute {
            if st.over > 0 {
                tracing::warn!(
                    counted_only = st.over,
                    "rejected notifications beyond the budget of {PER_MINUTE} a minute were counted, not logged or recorded"
                );
            }
            st.minute = minute;
            st.kept = 0;
            st.over = 0;
        }
        if st.kept >= PER_MINUTE {
            st.over += 1;
            drop(st);
            metrics.rejection_unrecorded();
            return false;
        }
        st.kept += 1;
        true
    }

    /// Keeps a record that [`Rejections::within_budget`] allowed; returns at once, the record
    /// is written with the others gathered meanwhile.
    pub(crate) fn keep(self: &Arc<Self>, store: &Arc<dyn Store>, record: NotificationRecord) {
        let start_writer = {
            let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
            st.pending.push(record);
            !std::mem::replace(&mut st.writing, true)
        };
        if start_writer {
            let this = self.clone();
            let store = store.clone();
            tokio::spawn(async move {
                tokio::time::sleep(GATHER).await;
                let batch = {
                    let mut st = this.state.lock().unwrap_or_else(|e| e.into_inner());
                    st.writing = false;
                    std::mem::take(&mut st.pending)
                };
                let n = batch.len();
                if let Err(e) = store.record_notifications(batch).await {
                    tracing::error!(error = ?e, records = n, "cannot record rejected notifications");
                }
            });
        }
    }
}
