//! Writing a bill as WeChat Pay sends it (WeChat Pay's side of `pay/downloadbill`): a bill
//! built from rows with its summary computed, and its text in the current layouts.

use super::{Bill, BillFee, BillRow, BillSummary, BillType};
use crate::{BeijingTime, Fen};

/// The columns of the current (2018+) bill layouts, in order, with the layouts that have
/// them: `ALL` (27 columns), `SUCCESS` (20), `REFUND` (29).
const COLUMNS: &[(&str, u8)] = {
    const A: u8 = 1;
    const S: u8 = 2;
    const R: u8 = 4;
    &[
        ("交易时间", A | S | R),
        ("公众账号ID", A | S | R),
        ("商户号", A | S | R),
        ("特约商户号", A | S | R),
        ("设备号", A | S | R),
        ("微信订单号", A | S | R),
        ("商户订单号", A | S | R),
        ("用户标识", A | S | R),
        ("交易类型", A | S | R),
        ("交易状态", A | S | R),
        ("付款银行", A | S | R),
        ("货币种类", A | S | R),
        ("应结订单金额", A | S | R),
        ("代金券金额", A | S | R),
        ("退款申请时间", R),
        ("退款成功时间", R),
        ("微信退款单号", A | R),
        ("商户退款单号", A | R),
        ("退款金额", A | R),
        ("充值券退款金额", A | R),
        ("退款类型", A | R),
        ("退款状态", A | R),
        ("商品名称", A | S | R),
        ("商户数据包", A | S | R),
        ("手续费", A | S | R),
        ("费率", A | S | R),
        ("订单金额", A | S | R),
        ("申请退款金额", A | R),
        ("费率备注", A | S | R),
    ]
};

/// The header of a bill type's layout.
fn layout(bill_type: BillType) -> Vec<String> {
    let mask = match bill_type {
        BillType::All | BillType::RechargeRefund => 1,
        BillType::Success => 2,
        BillType::Refund => 4,
    };
    COLUMNS
        .iter()
        .filter(|(_, layouts)| layouts & mask != 0)
        .map(|(name, _)| (*name).to_owned())
        .collect()
}

impl Bill {
    /// A bill of `bill_type` from its rows, with the summary computed from them.
    pub fn from_rows(bill_type: BillType, rows: Vec<BillRow>) -> Bill {
        let sum = |f: fn(&BillRow) -> u64| Fen::new(rows.iter().map(f).sum()).unwrap_or(Fen::MAX);
        let summary = BillSummary {
            count: rows.len() as u64,
            settlement_total_fee: sum(|r| r.settlement_total_fee.get()),
            refund_fee: sum(|r| r.refund_fee.get()),
            coupon_refund_fee: sum(|r| r.coupon_refund_fee.get()),
            fee: BillFee::from_hundred_thousandths(rows.iter().map(|r| r.fee.hundred_thousandths_of_yuan()).sum()),
            total_fee: Some(sum(|r| r.total_fee.map_or(0, Fen::get))),
            refund_apply_fee: Some(sum(|r| r.refund_apply_fee.map_or(0, Fen::get))),
        };
        Bill {
            columns: layout(bill_type),
            rows,
            summary,
        }
    }

    /// The bill as WeChat Pay sends it: UTF-8 with a byte order mark, CRLF line ends, every
    /// value behind a backtick, amounts in yuan with two decimals, fees with five.
    pub fn to_text(&self) -> String {
        let mut out = String::with_capacity(256 + self.rows.len() * 300);
        out.push('\u{FEFF}');
        out.push_str(&self.columns.join(","));
        out.push_str("\r\n");
        for row in &self.rows {
            for (i, column) in self.columns.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push('`');
                out.push_str(&cell(row, column));
            }
            out.push_str("\r\n");
        }
        let s = &self.summary;
        out.push_str(
            "总交易单数,应结订单总金额,退款总金额,充值券退款总金额,手续费总金额,订单总金额,申请退款总金额\r\n",
        );
        let values = [
            s.count.to_string(),
            s.settlement_total_fee.to_yuan(),
            s.refund_fee.to_yuan(),
            s.coupon_refund_fee.to_yuan(),
            s.fee.to_string(),
            s.total_fee.unwrap_or_default().to_yuan(),
            s.refund_apply_fee.unwrap_or_default().to_yuan(),
        ];
        out.push('`');
        out.push_str(&values.join(",`"));
        out.push_str("\r\n");
        out
    }
}

fn cell(r: &BillRow, column: &str) -> String {
    let opt_time = |t: Option<BeijingTime>| t.map(BeijingTime::to_dashed).unwrap_or_default();
    match column {
        "交易时间" => r.trade_time.to_dashed(),
        "公众账号ID" => r.appid.clone(),
        "商户号" => r.mch_id.clone(),
        "特约商户号" => r.sub_mch_id.clone(),
        "设备号" => r.device_info.clone(),
        "微信订单号" => r.transaction_id.clone(),
        "商户订单号" => r.out_trade_no.clone(),
        "用户标识" => r.openid.clone(),
        "交易类型" => r.trade_type.clone(),
        "交易状态" => r.trade_state.clone(),
        "付款银行" => r.bank_type.clone(),
        "货币种类" => r.currency.clone(),
        "应结订单金额" => r.settlement_total_fee.to_yuan(),
        "代金券金额" => r.coupon_fee.to_yuan(),
        "退款申请时间" => opt_time(r.refund_apply_time),
        "退款成功时间" => opt_time(r.refund_success_time),
        "微信退款单号" => r.refund_id.clone().unwrap_or_else(|| "0".to_owned()),
        "商户退款单号" => r.out_refund_no.clone().unwrap_or_else(|| "0".to_owned()),
        "退款金额" => r.refund_fee.to_yuan(),
        "充值券退款金额" => r.coupon_refund_fee.to_yuan(),
        "退款类型" => r.refund_type.clone().unwrap_or_default(),
        "退款状态" => r.refund_status.clone().unwrap_or_default(),
        "商品名称" => r.body.clone(),
        "商户数据包" => r.attach.clone(),
        "手续费" => r.fee.to_string(),
        "费率" => r.rate.clone(),
        "订单金额" => r.total_fee.unwrap_or_default().to_yuan(),
        "申请退款金额" => r.refund_apply_fee.unwrap_or_default().to_yuan(),
        "费率备注" => r.rate_remark.clone().unwrap_or_default(),
        _ => r.extra.get(column).cloned().unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn a_written_bill_reads_back_with_the_same_rows() {
        let row = |state: &str, fen: u64, refund: u64| BillRow {
            trade_time: BeijingTime::parse_compact("20261127101010").unwrap(),
            appid: "wx1".into(),
            mch_id: "1230000109".into(),
            sub_mch_id: "0".into(),
            device_info: String::new(),
            transaction_id: "4200000001".into(),
            out_trade_no: "o1".into(),
            openid: "op".into(),
            trade_type: "JSAPI".into(),
            trade_state: state.into(),
            bank_type: "CFT".into(),
            currency: "CNY".into(),
            settlement_total_fee: Fen::new(fen).unwrap(),
            coupon_fee: Fen::ZERO,
            refund_apply_time: None,
            refund_success_time: None,
            refund_id: (refund > 0).then(|| "5000001".into()),
            out_refund_no: (refund > 0).then(|| "r1".into()),
            refund_fee: Fen::new(refund).unwrap(),
            coupon_refund_fee: Fen::ZERO,
            refund_type: (refund > 0).then(|| "ORIGINAL".into()),
            refund_status: (refund > 0).then(|| "SUCCESS".into()),
            body: "咖啡, 大杯".into(),
            attach: String::new(),
            fee: BillFee::parse("0.12000").unwrap(),
            rate: "0.60%".into(),
            total_fee: Some(Fen::new(fen).unwrap()),
            refund_apply_fee: Some(Fen::new(refund).unwrap()),
            rate_remark: None,
            extra: BTreeMap::new(),
        };
        let bill = Bill::from_rows(BillType::All, vec![row("SUCCESS", 1999, 0), row("REFUND", 0, 7)]);
        let text = bill.to_text();
        assert!(text.starts_with("\u{FEFF}交易时间,"));
        assert!(text.contains("\r\n`2026-11-27 10:10:10,`wx1,"));
        let back = Bill::parse(&text).unwrap();
        assert_eq!(back.rows, bill.rows);
        assert_eq!(back.summary, bill.summary);
    }
}
