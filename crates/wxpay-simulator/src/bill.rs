//! `downloadbill`: the day's payments and refunds in WeChat Pay's bill format.
//!
//! Payment rows belong to the day they were paid, refund rows to the day the refund was
//! accepted (Beijing time). The fee is 0.60 % of the amount rounded to the fen, negative on
//! refund rows. A day without rows is `No Bill Exist`; today's bill, and yesterday's before
//! 10:00, is `Bill Creating` (unless `bills_immediately`).

use wxpay_protocol::v2::{Bill, BillFee, BillRow, BillType, RefundStatus};
use wxpay_protocol::{BeijingTime, Fen, Fields};

use crate::store::{Order, OrderState, SHARDS};
use crate::v2::{Ctx, Reply, bill_error, bill_param_error, gzip_reply, parse_bill_request, text_reply};

/// The fee rate, in hundredths of a percent.
const RATE_BP: u64 = 60;

fn fee_fen(amount: Fen) -> u64 {
    // amount × 0.60 %, rounded half up to the fen.
    (amount.get() * RATE_BP + 5_000) / 10_000
}

fn day_of(unix: i64) -> String {
    BeijingTime::from_unix(unix).to_date_compact()
}

pub(crate) fn download(ctx: &Ctx<'_>, f: &Fields<'_>) -> Reply {
    let req = match parse_bill_request(f) {
        Ok(r) => r,
        Err(e) => return bill_param_error(&e),
    };
    // WeChat Pay answers a gzip stream of the same bytes when asked (G.1.5): a client that
    // forgets to gunzip must fail here as it would live. Another `tar_type` is refused by the
    // request's reading ("invalid tar_type, Only GZIP supported").
    match bill_text(ctx.sim, ctx.mch, ctx.now, req.bill_date, req.bill_type) {
        Ok(text) if req.gzip => gzip_reply(wxpay_protocol::v2::gzip(text.as_bytes())),
        Ok(text) => text_reply(text),
        Err(BillRefusal::InvalidDate) => bill_error("invalid bill_date", "20001"),
        Err(BillRefusal::Creating) => bill_error("Bill Creating", "20003"),
        Err(BillRefusal::NoBill) => bill_error("No Bill Exist", "20002"),
    }
}

/// Why a day's bill is not there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BillRefusal {
    /// In the future, or more than three months back.
    InvalidDate,
    /// Today's, or yesterday's before 10:00.
    Creating,
    /// A day without rows.
    NoBill,
}

/// The bill of merchant `mch` for the day starting at `bill_date` (midnight in Beijing), as
/// text: the same file for APIv2's `downloadbill` and APIv3's trade bill.
pub(crate) fn bill_text(
    sim: &crate::Simulator,
    mch: u16,
    now: i64,
    bill_date: BeijingTime,
    bill_type: BillType,
) -> Result<String, BillRefusal> {
    let day = bill_date.to_date_compact();
    let today = day_of(now);
    let (_, _, _, hour, _, _) = BeijingTime::from_unix(now).parts();
    let yesterday = day_of(now - 86_400);
    if day > today || bill_date.unix() < now - 92 * 86_400 {
        return Err(BillRefusal::InvalidDate);
    }
    if !sim.inner.config.bills_immediately && (day == today || (day == yesterday && hour < 10)) {
        return Err(BillRefusal::Creating);
    }
    if bill_type == BillType::RechargeRefund {
        return Err(BillRefusal::NoBill);
    }
    let mch_id = sim.inner.merchants[usize::from(mch)].mch_id.as_str();
    // bill_date is midnight in Beijing: the day is the next 86,400 seconds, compared as
    // numbers under the shard locks rather than formatted per order.
    let start = bill_date.unix();
    let span = start..start + 86_400;
    let mut rows = Vec::new();
    for shard in 0..SHARDS {
        // One shard locked at a time, so that calls go on while a large bill is built.
        let g = sim.inner.store.lock(shard);
        g.each(|o| {
            if o.mch == mch {
                collect(mch_id, o, &span, bill_type, &mut rows);
            }
        });
    }
    if rows.is_empty() {
        return Err(BillRefusal::NoBill);
    }
    rows.sort_by(|a, b| {
        a.trade_time
            .cmp(&b.trade_time)
            .then(a.out_trade_no.cmp(&b.out_trade_no))
    });
    Ok(Bill::from_rows(bill_type, rows).to_text())
}

fn base_row(mch_id: &str, o: &Order, trade_time: i64) -> BillRow {
    BillRow {
        trade_time: BeijingTime::from_unix(trade_time),
        appid: o.appid.to_string(),
        mch_id: mch_id.to_owned(),
        sub_mch_id: "0".into(),
        device_info: o.device_info.as_deref().unwrap_or("").to_owned(),
        transaction_id: o.transaction_id.as_deref().unwrap_or("").to_owned(),
        out_trade_no: o.out_trade_no.to_string(),
        openid: o.openid.to_string(),
        trade_type: o.trade_type.to_string(),
        trade_state: "SUCCESS".into(),
        bank_type: "OTHERS".into(),
        currency: "CNY".into(),
        body: o.body.to_string(),
        attach: o.attach.as_deref().unwrap_or("").to_owned(),
        rate: "0.60%".into(),
        total_fee: Some(Fen::ZERO),
        refund_apply_fee: Some(Fen::ZERO),
        ..BillRow::default()
    }
}

/// Adds the rows of `o` that fall in `span` (the bill's day, in Unix seconds).
fn collect(mch_id: &str, o: &Order, span: &std::ops::Range<i64>, bill_type: BillType, rows: &mut Vec<BillRow>) {
    if o.state != OrderState::Success {
        return;
    }
    let Some(paid_at) = o.paid_at else {
        return;
    };
    if bill_type != BillType::Refund && span.contains(&paid_at) {
        let mut row = base_row(mch_id, o, paid_at);
        row.settlement_total_fee = o.total_fee;
        row.total_fee = Some(o.total_fee);
        row.fee = BillFee::from_hundred_thousandths(fee_fen(o.total_fee) as i64 * 1000);
        rows.push(row);
    }
    if bill_type == BillType::Success {
        return;
    }
    for r in &o.refunds {
        if !span.contains(&r.accepted_at) {
            continue;
        }
        let mut row = base_row(mch_id, o, r.accepted_at);
        row.trade_state = "REFUND".into();
        row.refund_id = Some(r.refund_id.to_string());
        row.out_refund_no = Some(r.out_refund_no.to_string());
        row.refund_fee = r.refund_fee;
        row.refund_apply_fee = Some(r.refund_fee);
        row.refund_type = Some("ORIGINAL".into());
        row.refund_status = Some(r.status.as_str().to_owned());
        row.fee = BillFee::from_hundred_thousandths(-(fee_fen(r.refund_fee) as i64) * 1000);
        if bill_type == BillType::Refund {
            row.refund_apply_time = Some(BeijingTime::from_unix(r.accepted_at));
            row.refund_success_time = r
                .settled_at
                .filter(|_| r.status == RefundStatus::Success)
                .map(BeijingTime::from_unix);
        }
        rows.push(row);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fee_is_sixty_basis_points_rounded_half_up() {
        assert_eq!(fee_fen(Fen::new(600).unwrap()), 4);
        assert_eq!(fee_fen(Fen::new(1).unwrap()), 0);
        assert_eq!(fee_fen(Fen::new(84).unwrap()), 1);
        assert_eq!(fee_fen(Fen::new(83).unwrap()), 0);
    }
}
