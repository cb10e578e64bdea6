#!/usr/bin/env python3
"""Writes the golden fixtures of testdata/golden with an implementation independent of wxpay.

Why: the protocol crate's tests otherwise check its wire formats only against its own code
(a notification is built with the same signer that verifies it, a req_info is encrypted by
the same crate that decrypts it). These fixtures are made here, from the protocol as
documented (WeChat Pay's APIv2 documentation: signing, the notification and refund
notification formats, the bill), without importing
or running any wxpay code, so that a mistake shared by both halves of the crate shows up.

Needs: Python 3.8 or later with its standard library (hashlib, hmac, base64, json, datetime)
and the `cryptography` package for AES-256-ECB. Either python already has it, or:

    python3 -m venv /tmp/goldvenv && /tmp/goldvenv/bin/pip install cryptography
    /tmp/goldvenv/bin/python make_golden.py

Run from this folder: python3 make_golden.py. It rewrites every file it owns here and
golden.json, the index the Rust tests load (crates/wxpay-protocol/tests/it/golden.rs and
crates/wxpay-gateway/tests/it/golden.rs). Every input is a constant below, so a second run
writes the same bytes; the outputs are committed.

What is a witness and what is a choice:
* Signatures, the signed strings, the AES ciphertexts, the Beijing-time conversions, the bill
  totals and the Wxpay-Signature values follow from the protocol alone: they are what the
  crate must agree with.
* The exact bytes of request bodies also follow wxpay's own layout, which is a choice, not a
  rule of WeChat Pay: fields in byte order of their names with `sign` in its sorted place,
  no whitespace, the integer (fen and count) fields bare, every other non-empty value in one
  CDATA section, all-digit strings such as `mch_id` included, an empty value as an empty element, no XML declaration, no trailing newline.
  The script reproduces that layout on purpose so that a byte-for-byte comparison is
  possible; the signature inside is the part that is checked against the protocol.
* Answers and notifications are written the way WeChat Pay writes them (its element order,
  newlines, CDATA around strings (all-digit ones too), integers bare, sometimes integers in
  CDATA), not in wxpay's
  layout: the crate must read them whatever their order.

Keys are test-only values already in the repository: the simulator's built-in test merchant
and the gateway tests' HMAC merchant (crates/wxpay-gateway/tests/it/support.rs), so that the
gateway test can post the golden notifications to a gateway configured with them, and the
webhook secret of the same file. The self-checks at the start reproduce two published
vectors (WeChat Pay's documentation example and IJPay's AES test) before anything is written.
"""
import base64
import hashlib
import hmac
import json
from datetime import datetime, timedelta, timezone

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

BEIJING = timezone(timedelta(hours=8))

# The two merchants of the gateway's integration tests. `gateway` is the merchant's name in
# that configuration.
MERCHANTS = {
    "md5": {
        "gateway": "default",
        "appid": "wxd678efh567hg6787",
        "mch_id": "1230000109",
        "key": "wxpaySimulatorTestKey0000000000A",
        "sign_type": "MD5",
    },
    "hmac": {
        "gateway": "hmac",
        "appid": "wx8888888888888888",
        "mch_id": "1900000109",
        "key": "HmacMerchantTestKey0000000000000",
        "sign_type": "HMAC-SHA256",
    },
}

WEBHOOK_SECRET = "whsec_test_0123456789"


# --- The APIv2 signature (protocol.md A.1) ------------------------------------------------

def string_a(params):
    """Every field but `sign` and the empty ones, sorted by the bytes of the name."""
    kept = [(k, v) for k, v in params.items() if k != "sign" and v != ""]
    kept.sort(key=lambda kv: kv[0].encode("utf-8"))
    return "&".join(f"{k}={v}" for k, v in kept)


def sign(params, key, sign_type):
    temp = string_a(params) + "&key=" + key
    if sign_type == "MD5":
        return hashlib.md5(temp.encode("utf-8")).hexdigest().upper(), temp
    if sign_type == "HMAC-SHA256":
        return hmac.new(key.encode("utf-8"), temp.encode("utf-8"), hashlib.sha256).hexdigest().upper(), temp
    raise ValueError(sign_type)


# --- Refund notification encryption (protocol.md A.6) -------------------------------------

def encrypt_req_info(plaintext, api_key):
    """AES-256-ECB with PKCS#7, keyed by the 32 ASCII characters of md5(api_key) in lower hex."""
    aes_key = hashlib.md5(api_key.encode("utf-8")).hexdigest().encode("ascii")
    padder = padding.PKCS7(128).padder()
    data = padder.update(plaintext.encode("utf-8")) + padder.finalize()
    enc = Cipher(algorithms.AES(aes_key), modes.ECB()).encryptor()
    return base64.b64encode(enc.update(data) + enc.finalize()).decode("ascii")


# --- Self-checks against published vectors, so that the witness is itself witnessed ------

_doc = {"appid": "wxd930ea5d5a258f4f", "mch_id": "10000100", "device_info": "1000", "body": "test",
        "nonce_str": "ibuaiVcKdpRxkhJA"}
assert sign(_doc, "192006250b4c09247ec02edce69f6a2d", "MD5")[0] == "9A0A8659F005D6984697E2CA0A9CF3B7"
assert sign(_doc, "192006250b4c09247ec02edce69f6a2d", "HMAC-SHA256")[0] == \
    "6A9AE1657590FD6257D693A078E1C3E4BB6BA4DC30B23E0EE2496E54170DACD6"
assert encrypt_req_info("IJPay", "42cc1d91bab89b65ff55b19e28fff4f0") == "K8fdh/6THGfTKio8pxXS6Q=="


# --- Formats --------------------------------------------------------------------------------

def is_digits(v):
    return v != "" and v.isascii() and v.isdigit()


def is_int_field(k):
    """The fields WeChat Pay types Int: amounts in fen and counts (`total_fee`, `cash_fee`,
    `refund_fee_0`, `coupon_count`, `refund_count`, ...) and refundquery's `offset`; every
    other field is a String, all
    digits or not (`mch_id`, `transaction_id`, `out_trade_no`)."""
    base = k
    while True:
        head, sep, tail = base.rpartition("_")
        if sep and tail.isdigit():
            base = head
        else:
            break
    return base.endswith("_fee") or base.endswith("_count") or base == "offset"


def bare(k, v):
    return is_digits(v) and is_int_field(k)


def wxpay_request_xml(params):
    """wxpay's request layout (a choice, see the docstring): sorted, no whitespace."""
    out = ["<xml>"]
    for k in sorted(params, key=lambda k: k.encode("utf-8")):
        v = params[k]
        # The crate splits CDATA around `]]>` and writes CR as a character reference; the
        # fixtures avoid both so that this writer stays simple, and say so loudly if not.
        assert "]]>" not in v and "\r" not in v, f"{k}: this script does not write {v!r}"
        body = "" if v == "" else v if bare(k, v) else f"<![CDATA[{v}]]>"
        out.append(f"<{k}>{body}</{k}>")
    out.append("</xml>")
    return "".join(out)


def wechat_xml(pairs, cdata_digits=(), root="xml"):
    """WeChat Pay's layout: the given order, one element a line, strings in CDATA, integers
    bare unless named in `cdata_digits` (live refundquery answers wrap some in CDATA)."""
    lines = [f"<{root}>"]
    for k, v in pairs:
        body = v if bare(k, v) and k not in cdata_digits else f"<![CDATA[{v}]]>"
        lines.append(f"<{k}>{body}</{k}>")
    lines.append(f"</{root}>")
    return "\n".join(lines)


def compact(dt):
    return dt.astimezone(BEIJING).strftime("%Y%m%d%H%M%S")


def dashed(dt):
    return dt.astimezone(BEIJING).strftime("%Y-%m-%d %H:%M:%S")


def unix(dt):
    return int(dt.timestamp())


def rfc3339_utc_ms(dt):
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def bj(y, mo, d, h=0, mi=0, s=0):
    return datetime(y, mo, d, h, mi, s, tzinfo=BEIJING)


def write(name, data):
    with open(name, "wb") as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)


# --- 1. Requests the gateway sends ----------------------------------------------------------
#
# `inputs` are what the Rust test gives the crate's typed request (times as Unix seconds, so
# that the crate's Beijing-time conversion is witnessed too); `fields` are the business
# fields this script derives from them on its own.

def unifiedorder_fields(i):
    f = {
        "body": i["body"],
        "out_trade_no": i["out_trade_no"],
        "total_fee": str(i["total_fee"]),
        "spbill_create_ip": i["spbill_create_ip"],
        "notify_url": i["notify_url"],
        "trade_type": "JSAPI",
        "openid": i["openid"],
    }
    for name in ("attach", "detail", "goods_tag", "limit_pay"):
        if name in i:
            f[name] = i[name]
    for name in ("time_start", "time_expire"):
        if name + "_unix" in i:
            f[name] = compact(datetime.fromtimestamp(i[name + "_unix"], timezone.utc))
    return f


def order_ref_fields(i):
    # WeChat Pay prefers transaction_id; a request names exactly one.
    return {"transaction_id": i["transaction_id"]} if "transaction_id" in i else {"out_trade_no": i["out_trade_no"]}


def refund_fields(i):
    f = order_ref_fields(i)
    f.update({"out_refund_no": i["out_refund_no"], "total_fee": str(i["total_fee"]), "refund_fee": str(i["refund_fee"])})
    for name in ("refund_fee_type", "refund_desc", "refund_account", "notify_url"):
        if name in i:
            f[name] = i[name]
    return f


def refundquery_fields(i):
    f = {}
    for name in ("refund_id", "out_refund_no", "transaction_id", "out_trade_no"):
        if name in i:
            f[name] = i[name]
            break
    if "offset" in i:
        f["offset"] = str(i["offset"])
    return f


def downloadbill_fields(i):
    day = datetime.fromtimestamp(i["bill_date_unix"], timezone.utc).astimezone(BEIJING)
    return {"bill_date": day.strftime("%Y%m%d"), "bill_type": i["bill_type"]}


FIELDS_OF = {
    "unifiedorder": unifiedorder_fields,
    "orderquery": order_ref_fields,
    "closeorder": lambda i: {"out_trade_no": i["out_trade_no"]},
    "refund": refund_fields,
    "refundquery": refundquery_fields,
    "downloadbill": downloadbill_fields,
}

DETAIL = ('{"cost_price":2800,"goods_detail":[{"goods_id":"latte-L","goods_name":"拿铁 <大杯> & 燕麦奶",'
          '"quantity":1,"price":2800}]}')

REQUESTS = [
    ("unifiedorder", "md5", "GoldenUnifiedOrderMd5Nonce000001", {
        "body": "拿铁咖啡 & 可颂",
        "out_trade_no": "golden_uo_md5_0001",
        "total_fee": 2800,
        "spbill_create_ip": "203.0.113.7",
        "notify_url": "https://pay.example.com/notify/v2/pay",
        "openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o",
        "attach": "深圳分店|table=12",
        "detail": DETAIL,
        # 2026-11-27 10:00:00 and 12:00:00 in Beijing.
        "time_start_unix": unix(bj(2026, 11, 27, 10, 0, 0)),
        "time_expire_unix": unix(bj(2026, 11, 27, 12, 0, 0)),
    }),
    ("unifiedorder", "hmac", "GoldenUnifiedOrderHmacNonce00001", {
        "body": "会员月卡",
        "out_trade_no": "golden-uo-hmac-0001",
        "total_fee": 1999,
        "spbill_create_ip": "2001:db8::7",
        "notify_url": "https://pay.example.com/notify/v2/pay",
        "openid": "oHkLxt5HnHcBDewv4dLc8xivG1DuE",
        "goods_tag": "WXG",
        "limit_pay": "no_credit",
        # 07:59:59 in Beijing, which is 23:59:59 of the day before in UTC.
        "time_expire_unix": unix(bj(2026, 11, 28, 7, 59, 59)),
    }),
    ("orderquery", "md5", "GoldenOrderQueryMd5Nonce00000001", {"out_trade_no": "golden_uo_md5_0001"}),
    ("orderquery", "hmac", "GoldenOrderQueryHmacNonce0000001", {"transaction_id": "4200000000202611270000000002"}),
    ("closeorder", "md5", "GoldenCloseOrderMd5Nonce00000001", {"out_trade_no": "golden_uo_md5_0001"}),
    ("closeorder", "hmac", "GoldenCloseOrderHmacNonce0000001", {"out_trade_no": "golden-uo-hmac-0001"}),
    ("refund", "md5", "GoldenRefundMd5Nonce000000000001", {
        "out_trade_no": "golden_uo_md5_0001",
        "out_refund_no": "golden_rf_md5_0001",
        "total_fee": 2800,
        "refund_fee": 500,
    }),
    ("refund", "hmac", "GoldenRefundHmacNonce00000000001", {
        "transaction_id": "4200000000202611270000000002",
        "out_refund_no": "golden-rf-hmac@0001",
        "total_fee": 1999,
        "refund_fee": 1500,
        "refund_fee_type": "CNY",
        "refund_desc": "顾客取消 & 部分退款",
        "refund_account": "REFUND_SOURCE_UNSETTLED_FUNDS",
        "notify_url": "https://pay.example.com/notify/v2/refund",
    }),
    ("refundquery", "md5", "GoldenRefundQueryMd5Nonce0000001", {"out_refund_no": "golden_rf_md5_0001"}),
    ("refundquery", "hmac", "GoldenRefundQueryHmacNonce000001", {"out_trade_no": "golden-uo-hmac-0001", "offset": 10}),
    # 00:30 and 23:59:59 of 2026-11-26 in Beijing: the bill day is the Beijing date, and the
    # first instant is still 2026-11-25 in UTC.
    ("downloadbill", "md5", "GoldenDownloadBillMd5Nonce000001", {"bill_date_unix": unix(bj(2026, 11, 26, 0, 30, 0)),
                                                                  "bill_type": "ALL"}),
    ("downloadbill", "hmac", "GoldenDownloadBillHmacNonce00001", {"bill_date_unix": unix(bj(2026, 11, 26, 23, 59, 59)),
                                                                   "bill_type": "ALL"}),
]


def make_requests():
    cases = []
    for call, who, nonce, inputs in REQUESTS:
        m = MERCHANTS[who]
        fields = FIELDS_OF[call](inputs)
        fields.update({"appid": m["appid"], "mch_id": m["mch_id"], "nonce_str": nonce, "sign_type": m["sign_type"]})
        fields["sign"], temp = sign(fields, m["key"], m["sign_type"])
        name = f"request-{call}-{who}"
        write(name + ".xml", wxpay_request_xml(fields))
        cases.append({"name": name, "call": call, "merchant": who, "nonce": nonce, "inputs": inputs,
                      "file": name + ".xml", "sign": fields["sign"], "string_sign_temp": temp})
    return cases


# --- 2. Answers WeChat Pay sends ------------------------------------------------------------

def signed_answer(m, nonce, head, business, sign_after="nonce_str"):
    """The common fields, then `business`, with `sign` placed after `sign_after` as WeChat Pay
    does in its examples. Returns the body and the fields."""
    pairs = [("return_code", "SUCCESS"), ("return_msg", "OK"), ("appid", m["appid"]), ("mch_id", m["mch_id"]),
             ("nonce_str", nonce)] + head + business
    fields = dict(pairs)
    assert len(fields) == len(pairs), "a field twice"
    s, _ = sign(fields, m["key"], m["sign_type"])
    i = [k for k, _ in pairs].index(sign_after) + 1
    pairs.insert(i, ("sign", s))
    return pairs


PAID_AT = bj(2026, 11, 27, 10, 3, 25)
REFUNDED_AT = bj(2026, 11, 27, 15, 20, 1)


def make_answers():
    cases = []
    for who in ("md5", "hmac"):
        m = MERCHANTS[who]
        tx = "42000000002026112700000000" + ("01" if who == "md5" else "02")
        no = "golden_uo_md5_0001" if who == "md5" else "golden-uo-hmac-0001"
        total = 2800 if who == "md5" else 1999

        # unifiedorder: the official example's order (sign before result_code).
        prepay = "wx2026112710000" + ("0a1b2c3d4e5f60000001" if who == "md5" else "0a1b2c3d4e5f60000002")
        pairs = signed_answer(m, "IITRi8Iabbblz1Jc", [], [("result_code", "SUCCESS"), ("prepay_id", prepay),
                                                          ("trade_type", "JSAPI")])
        cases.append(("unifiedorder", who, pairs, (), {"prepay_id": prepay, "trade_type": "JSAPI"}))

        # orderquery, paid: the observed order, with the empty device_info live answers carry;
        # the HMAC one used a coupon, and its attach is not empty.
        coupon = 100 if who == "hmac" else 0
        attach = "深圳分店|table=12" if who == "hmac" else ""
        business = [("result_code", "SUCCESS"), ("openid", "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"), ("is_subscribe", "N"),
                    ("trade_type", "JSAPI"), ("bank_type", "CMB_DEBIT"), ("total_fee", str(total)),
                    ("fee_type", "CNY"), ("transaction_id", tx), ("out_trade_no", no), ("attach", attach),
                    ("time_end", compact(PAID_AT)), ("trade_state", "SUCCESS"), ("cash_fee", str(total - coupon)),
                    ("trade_state_desc", "支付成功"), ("cash_fee_type", "CNY")]
        if coupon:
            business += [("coupon_fee", str(coupon)), ("coupon_count", "1"), ("coupon_type_0", "CASH"),
                         ("coupon_id_0", "10000000001"), ("coupon_fee_0", str(coupon))]
        pairs = signed_answer(m, "bXEUjDN5JBzqHYcf", [("device_info", "")], business)
        cases.append(("orderquery", who, pairs, (), {
            "trade_state": "SUCCESS", "trade_state_desc": "支付成功", "out_trade_no": no, "transaction_id": tx,
            "total_fee": total, "cash_fee": total - coupon, "coupon_fee": coupon or None,
            "coupons": [{"id": "10000000001", "kind": "CASH", "fee": coupon}] if coupon else [],
            "fee_type": "CNY", "cash_fee_type": "CNY", "openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o",
            "is_subscribe": "N", "trade_type": "JSAPI", "bank_type": "CMB_DEBIT",
            "time_end_unix": unix(PAID_AT), "attach": attach or None, "device_info": None}))

        # refund accepted: the order every observed answer has, with the empty refund_channel
        # (left out of the signature) and the zeros (kept in it).
        out_refund_no = "golden_rf_md5_0001" if who == "md5" else "golden-rf-hmac@0001"
        refund_id = "5030010318202611270000000" + ("001" if who == "md5" else "002")
        refund = 500 if who == "md5" else 1500
        business = [("result_code", "SUCCESS"), ("transaction_id", tx), ("out_trade_no", no),
                    ("out_refund_no", out_refund_no), ("refund_id", refund_id), ("refund_channel", ""),
                    ("refund_fee", str(refund)), ("coupon_refund_fee", "0"), ("total_fee", str(total)),
                    ("cash_fee", str(total)), ("coupon_refund_count", "0"), ("cash_refund_fee", str(refund))]
        pairs = signed_answer(m, "NfsMFbUFpdbEhPXP", [], business)
        cases.append(("refund", who, pairs, (), {
            "transaction_id": tx, "out_trade_no": no, "out_refund_no": out_refund_no, "refund_id": refund_id,
            "refund_fee": refund, "total_fee": total, "cash_fee": total, "cash_refund_fee": refund,
            "coupon_refund_fee": 0, "coupon_refund_count": 0, "refund_channel": None}))

        # refundquery: alphabetical, as observed live, with total_fee and cash_fee in CDATA.
        # Two refunds: one done, one still processing.
        second_no = out_refund_no + "b"
        second_id = refund_id[:-3] + ("101" if who == "md5" else "102")
        pairs_map = {
            "appid": m["appid"], "cash_fee": str(total), "mch_id": m["mch_id"], "nonce_str": "TeqClE3i0mvn3DrK",
            "out_refund_no_0": out_refund_no, "out_refund_no_1": second_no, "out_trade_no": no,
            "refund_account_0": "REFUND_SOURCE_UNSETTLED_FUNDS", "refund_account_1": "REFUND_SOURCE_UNSETTLED_FUNDS",
            "refund_channel_0": "ORIGINAL", "refund_channel_1": "ORIGINAL", "refund_count": "2",
            "refund_fee": str(refund + 1), "refund_fee_0": str(refund), "refund_fee_1": "1",
            "refund_id_0": refund_id, "refund_id_1": second_id, "refund_recv_accout_0": "支付用户的零钱",
            "refund_recv_accout_1": "招商银行信用卡0403", "refund_status_0": "SUCCESS", "refund_status_1": "PROCESSING",
            "refund_success_time_0": dashed(REFUNDED_AT), "result_code": "SUCCESS", "return_code": "SUCCESS",
            "return_msg": "OK", "total_fee": str(total), "transaction_id": tx,
        }
        pairs_map["sign"], _ = sign(pairs_map, m["key"], m["sign_type"])
        pairs = sorted(pairs_map.items())
        cases.append(("refundquery", who, pairs, ("total_fee", "cash_fee"), {
            "transaction_id": tx, "out_trade_no": no, "total_fee": total, "cash_fee": total, "refund_fee": refund + 1,
            "refunds": [
                {"out_refund_no": out_refund_no, "refund_id": refund_id, "refund_fee": refund, "refund_status": "SUCCESS",
                 "refund_channel": "ORIGINAL", "refund_account": "REFUND_SOURCE_UNSETTLED_FUNDS",
                 "refund_recv_accout": "支付用户的零钱", "refund_success_time_unix": unix(REFUNDED_AT)},
                {"out_refund_no": second_no, "refund_id": second_id, "refund_fee": 1, "refund_status": "PROCESSING",
                 "refund_channel": "ORIGINAL", "refund_account": "REFUND_SOURCE_UNSETTLED_FUNDS",
                 "refund_recv_accout": "招商银行信用卡0403", "refund_success_time_unix": None},
            ]}))

        # closeorder on a paid order: a signed business error.
        business = [("result_code", "FAIL"), ("err_code", "ORDERPAID"), ("err_code_des", "订单已支付")]
        pairs = signed_answer(m, "5K8264ILTKCH16CQ", [], business)
        cases.append(("closeorder", who, pairs, (), {"err_code": "ORDERPAID", "err_code_des": "订单已支付"}))

    out = []
    for call, who, pairs, cdata_digits, expect in cases:
        kind = "error" if call == "closeorder" else "answer"
        name = f"{kind}-{call}-{who}"
        write(name + ".xml", wechat_xml(pairs, cdata_digits))
        out.append({"name": name, "call": call, "merchant": who, "file": name + ".xml",
                    "sign": dict(pairs)["sign"], "expect": expect})
    return out


# --- 3. Notifications -----------------------------------------------------------------------

# The orders the gateway test creates before posting these: same number, same amount.
PAYMENTS = {
    "md5": {"out_trade_no": "golden_notify_md5_0001", "total_fee": 2800, "coupon": 0,
            "transaction_id": "4200000000202611270000000011", "time_end": bj(2026, 11, 27, 10, 15, 40)},
    "hmac": {"out_trade_no": "golden-notify-hmac-0001", "total_fee": 1999, "coupon": 100,
             "transaction_id": "4200000000202611270000000012", "time_end": bj(2026, 11, 27, 23, 59, 59)},
}


def make_payment_notifications():
    out = []
    for who, p in PAYMENTS.items():
        m = MERCHANTS[who]
        cash = p["total_fee"] - p["coupon"]
        # The official example's element order (alphabetical but for the coupon and cash fields).
        pairs = [("appid", m["appid"]), ("attach", "支付测试"), ("bank_type", "CFT"), ("fee_type", "CNY"),
                 ("is_subscribe", "Y"), ("mch_id", m["mch_id"]), ("nonce_str", "5d2b6c2a8db53831f7eda20af46e531c"),
                 ("openid", "oUpF8uMEb4qRXf22hE3X68TekukE"), ("out_trade_no", p["out_trade_no"]),
                 ("result_code", "SUCCESS"), ("return_code", "SUCCESS")]
        if m["sign_type"] != "MD5":
            # WeChat Pay names the algorithm when it is not the default.
            pairs.append(("sign_type", m["sign_type"]))
        pairs += [("time_end", compact(p["time_end"])), ("total_fee", str(p["total_fee"]))]
        if p["coupon"]:
            pairs += [("coupon_fee", str(p["coupon"])), ("coupon_count", "1"), ("coupon_type_0", "CASH"),
                      ("coupon_id_0", "10000000002"), ("coupon_fee_0", str(p["coupon"]))]
        pairs += [("trade_type", "JSAPI"), ("transaction_id", p["transaction_id"]), ("cash_fee", str(cash))]
        s, temp = sign(dict(pairs), m["key"], m["sign_type"])
        i = [k for k, _ in pairs].index("return_code") + 1
        pairs.insert(i, ("sign", s))
        name = f"notify-pay-{who}"
        write(name + ".xml", wechat_xml(pairs))
        out.append({"name": name, "merchant": who, "file": name + ".xml", "sign": s, "string_sign_temp": temp,
                    "expect": {
                        "appid": m["appid"], "mch_id": m["mch_id"], "out_trade_no": p["out_trade_no"],
                        "transaction_id": p["transaction_id"], "total_fee": p["total_fee"], "cash_fee": cash,
                        "coupon_fee": p["coupon"] or None,
                        "coupons": [{"id": "10000000002", "kind": "CASH", "fee": p["coupon"]}] if p["coupon"] else [],
                        "time_end_unix": unix(p["time_end"]), "paid_at": rfc3339_utc_ms(p["time_end"]),
                        "openid": "oUpF8uMEb4qRXf22hE3X68TekukE", "attach": "支付测试", "bank_type": "CFT",
                        "is_subscribe": "Y", "fee_type": "CNY", "trade_type": "JSAPI"}})
    return out


def make_refund_notifications():
    out = []
    specs = [
        ("md5", "SUCCESS", {"transaction_id": "4200000000202611270000000011", "out_trade_no": "golden_notify_md5_0001",
                            "refund_id": "50300103182026112700000000011", "out_refund_no": "golden_rf_notify_md5_0001",
                            "total_fee": 2800, "refund_fee": 800, "success_time": bj(2026, 11, 27, 18, 34, 24),
                            "refund_recv_accout": "招商银行信用卡8915", "refund_account": "REFUND_SOURCE_RECHARGE_FUNDS",
                            "refund_request_source": "API"}),
        ("hmac", "REFUNDCLOSE", {"transaction_id": "4200000000202611270000000012",
                                 "out_trade_no": "golden-notify-hmac-0001", "refund_id": "50300103182026112700000000012",
                                 "out_refund_no": "golden-rf-notify-hmac@0001", "total_fee": 1999, "refund_fee": 1999,
                                 "success_time": None, "refund_recv_accout": "支付用户的零钱",
                                 "refund_account": "REFUND_SOURCE_UNSETTLED_FUNDS",
                                 "refund_request_source": "VENDOR_PLATFORM"}),
    ]
    for who, status, r in specs:
        m = MERCHANTS[who]
        inner = {"out_refund_no": r["out_refund_no"], "out_trade_no": r["out_trade_no"],
                 "refund_account": r["refund_account"], "refund_fee": str(r["refund_fee"]), "refund_id": r["refund_id"],
                 "refund_recv_accout": r["refund_recv_accout"], "refund_request_source": r["refund_request_source"],
                 "refund_status": status, "settlement_refund_fee": str(r["refund_fee"]),
                 "settlement_total_fee": str(r["total_fee"]), "total_fee": str(r["total_fee"]),
                 "transaction_id": r["transaction_id"]}
        if r["success_time"]:
            inner["success_time"] = dashed(r["success_time"])
        # As in the wechatpy sample: alphabetical, every value in CDATA, numbers included.
        plaintext = wechat_xml(sorted(inner.items()), cdata_digits=tuple(inner), root="root")
        req_info = encrypt_req_info(plaintext, m["key"])
        outer = (f"<xml><return_code>SUCCESS</return_code><appid><![CDATA[{m['appid']}]]></appid>"
                 f"<mch_id><![CDATA[{m['mch_id']}]]></mch_id><nonce_str><![CDATA[TeqClE3i0mvn3DrK]]></nonce_str>"
                 f"<req_info><![CDATA[{req_info}]]></req_info></xml>")
        name = f"notify-refund-{who}"
        write(name + ".xml", outer)
        out.append({"name": name, "merchant": who, "file": name + ".xml", "plaintext": plaintext,
                    "aes_key": hashlib.md5(m["key"].encode()).hexdigest(),
                    "expect": {
                        "appid": m["appid"], "mch_id": m["mch_id"], "transaction_id": r["transaction_id"],
                        "out_trade_no": r["out_trade_no"], "refund_id": r["refund_id"],
                        "out_refund_no": r["out_refund_no"], "total_fee": r["total_fee"],
                        "settlement_total_fee": r["total_fee"], "refund_fee": r["refund_fee"],
                        "settlement_refund_fee": r["refund_fee"], "refund_status": status,
                        "success_time_unix": unix(r["success_time"]) if r["success_time"] else None,
                        "refund_recv_accout": r["refund_recv_accout"], "refund_account": r["refund_account"],
                        "refund_request_source": r["refund_request_source"]}})
    return out


# --- 4. A bill (protocol.md G.1.3) -------------------------------------------------------

ALL_HEADER = ("交易时间,公众账号ID,商户号,特约商户号,设备号,微信订单号,商户订单号,用户标识,交易类型,交易状态,付款银行,"
              "货币种类,应结订单金额,代金券金额,微信退款单号,商户退款单号,退款金额,充值券退款金额,退款类型,退款状态,商品名称,"
              "商户数据包,手续费,费率,订单金额,申请退款金额,费率备注")
SUMMARY_HEADER = "总交易单数,应结订单总金额,退款总金额,充值券退款总金额,手续费总金额,订单总金额,申请退款总金额"
RATE_BP = 60  # 0.60 %, in hundredths of a percent


def yuan(fen):
    return f"{fen // 100}.{fen % 100:02d}"


def fee_text(units):
    """Units of 0.00001 yuan, printed with five decimals, negative on refund rows."""
    sign_ = "-" if units < 0 else ""
    a = abs(units)
    return f"{sign_}{a // 100000}.{a % 100000:05d}"


def fee_fen(amount_fen):
    """amount × 0.60 %, rounded half up to the fen (integers only)."""
    return (amount_fen * RATE_BP + 5000) // 10000


def make_bill():
    m = MERCHANTS["md5"]
    payments = [
        (bj(2026, 11, 26, 9, 15, 2), "4200000000202611260000000001", "golden_bill_0001", "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o",
         "CFT", 2800, "拿铁咖啡", "深圳分店|table=12"),
        (bj(2026, 11, 26, 12, 0, 59), "4200000000202611260000000002", "golden_bill_0002", "oHkLxt5HnHcBDewv4dLc8xivG1DuE",
         "CMB_DEBIT", 1999, "会员月卡", ""),
        (bj(2026, 11, 26, 23, 59, 59), "4200000000202611260000000003", "golden_bill_0003", "oUpF8uMEb4qRXf22hE3X68TekukE",
         "OTHERS", 1, "测试 1 分钱", ""),
    ]
    rows = []
    for t, tx, no, openid, bank, amount, body, attach in payments:
        rows.append({"trade_time": t, "transaction_id": tx, "out_trade_no": no, "openid": openid, "trade_state": "SUCCESS",
                     "bank_type": bank, "settlement_total_fee": amount, "coupon_fee": 0, "refund_id": None,
                     "out_refund_no": None, "refund_fee": 0, "coupon_refund_fee": 0, "refund_type": None,
                     "refund_status": None, "body": body, "attach": attach, "fee": fee_fen(amount) * 1000,
                     "total_fee": amount, "refund_apply_fee": 0})
    # A refund of 5.00 yuan of the second order, accepted the same day: its own row.
    rows.append({"trade_time": bj(2026, 11, 26, 15, 20, 1), "transaction_id": "4200000000202611260000000002",
                 "out_trade_no": "golden_bill_0002", "openid": "oHkLxt5HnHcBDewv4dLc8xivG1DuE", "trade_state": "REFUND",
                 "bank_type": "CMB_DEBIT", "settlement_total_fee": 0, "coupon_fee": 0,
                 "refund_id": "50300103182026112600000000001", "out_refund_no": "golden_bill_refund_0001",
                 "refund_fee": 500, "coupon_refund_fee": 0, "refund_type": "ORIGINAL", "refund_status": "SUCCESS",
                 "body": "会员月卡", "attach": "", "fee": -fee_fen(500) * 1000, "total_fee": 0, "refund_apply_fee": 500})
    lines = [ALL_HEADER]
    for r in rows:
        values = [dashed(r["trade_time"]), m["appid"], m["mch_id"], "0", "", r["transaction_id"], r["out_trade_no"],
                  r["openid"], "JSAPI", r["trade_state"], r["bank_type"], "CNY", yuan(r["settlement_total_fee"]),
                  yuan(r["coupon_fee"]), r["refund_id"] or "0", r["out_refund_no"] or "0", yuan(r["refund_fee"]),
                  yuan(r["coupon_refund_fee"]), r["refund_type"] or "", r["refund_status"] or "", r["body"], r["attach"],
                  fee_text(r["fee"]), f"{RATE_BP // 100}.{RATE_BP % 100:02d}%", yuan(r["total_fee"]),
                  yuan(r["refund_apply_fee"]), ""]
        assert len(values) == 27
        lines.append(",".join("`" + v for v in values))
    summary = {
        "count": len(rows),
        "settlement_total_fee": sum(r["settlement_total_fee"] for r in rows),
        "refund_fee": sum(r["refund_fee"] for r in rows),
        "coupon_refund_fee": sum(r["coupon_refund_fee"] for r in rows),
        "fee": sum(r["fee"] for r in rows),
        "total_fee": sum(r["total_fee"] for r in rows),
        "refund_apply_fee": sum(r["refund_apply_fee"] for r in rows),
    }
    lines.append(SUMMARY_HEADER)
    lines.append(",".join("`" + v for v in [
        str(summary["count"]), yuan(summary["settlement_total_fee"]), yuan(summary["refund_fee"]),
        yuan(summary["coupon_refund_fee"]), fee_text(summary["fee"]), yuan(summary["total_fee"]),
        yuan(summary["refund_apply_fee"])]))
    # A UTF-8 BOM, CRLF line ends and a final CRLF, as in the bill fixtures of the SDKs.
    write("bill-all.txt", "\ufeff" + "".join(line + "\r\n" for line in lines))
    expected_rows = []
    for r in rows:
        e = dict(r)
        e["trade_time"] = dashed(r["trade_time"])
        e["trade_time_unix"] = unix(r["trade_time"])
        e["fee_text"] = fee_text(r["fee"])
        e["appid"], e["mch_id"], e["rate"] = m["appid"], m["mch_id"], "0.60%"
        expected_rows.append(e)
    summary["fee_text"] = fee_text(summary["fee"])
    return {"file": "bill-all.txt", "bill_type": "ALL", "rows": expected_rows, "summary": summary,
            "units": "amounts in fen, fee in units of 0.00001 yuan"}


# --- 5. Wxpay-Signature (the gateway's webhook deliveries) --------------------------------

def make_webhook_signatures():
    bodies = [
        (1795745025, '{"id":"evt_0123456789abcdef01234567","type":"order.paid","created_at":"2026-11-27T02:03:45.000Z",'
                     '"data":{"merchant":"default","out_trade_no":"golden_notify_md5_0001","status":"paid",'
                     '"amount_fen":2800,"refunded_fen":0,"transaction_id":"4200000000202611270000000011",'
                     '"paid_at":"2026-11-27T02:15:40.000Z","attach":null}}'),
        (1795767264, '{"id":"evt_89abcdef0123456789abcdef","type":"refund.failed","created_at":"2026-11-27T08:14:24.000Z",'
                     '"data":{"reason":"顾客取消 & 全额退款","status":"failed"}}'),
        (0, ""),
    ]
    out = []
    for t, body in bodies:
        v1 = hmac.new(WEBHOOK_SECRET.encode(), f"{t}.{body}".encode("utf-8"), hashlib.sha256).hexdigest()
        out.append({"secret": WEBHOOK_SECRET, "t": t, "body": body, "header": f"t={t},v1={v1}"})
    return out


def main():
    index = {
        "about": "Made by make_golden.py, independently of wxpay; see its docstring. Amounts are fen.",
        "merchants": MERCHANTS,
        "requests": make_requests(),
        "answers": make_answers(),
        "payment_notifications": make_payment_notifications(),
        "refund_notifications": make_refund_notifications(),
        "bill": make_bill(),
        "webhook_signatures": make_webhook_signatures(),
    }
    write("golden.json", json.dumps(index, ensure_ascii=False, indent=2) + "\n")


if __name__ == "__main__":
    main()
