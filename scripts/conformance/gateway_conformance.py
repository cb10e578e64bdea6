"""Conformance test: notifications made with the unchanged `wechatpy` SDK, posted to the wxpay
gateway (`wxpay serve`), for orders and refunds created through the gateway's own API.

Called by run.py: run(WXPAY_BIN, WORK_DIR, LOG_DIR). It starts, on 127.0.0.1:0 (servers.py):

  * `wxpay simulator --config` with two merchants, one MD5 and one HMAC-SHA256, explicit
    mode, and a refund delay of ten minutes, so that a refund is settled only when this
    script says so (POST /simulator/refunds/{no}/complete);
  * a notify sink (common.NotifySink) that answers SUCCESS to whatever is posted to it;
  * `wxpay serve` with the same merchants, base_url and sns_base_url pointing at the
    simulator, SQLite in WORK_DIR, `[jobs] enabled = false`, and `public_url` = the sink.

Why the notifications are made this way. The gateway checks a payment notification by itself
(crates/wxpay-gateway/src/provider/v2/mod.rs, then service/notifications.rs): the hardened XML reader, the merchant by mch_id and
appid, the signature with that merchant's *configured* sign type, then, in one transaction,
the order (which must exist, pending, with that total_fee) and the transaction_id (unique).
It does not ask WeChat Pay (orderquery) before believing a verified notification; only its
background checks do that, for orders that got none. A refund notification has no signature:
the gateway decrypts req_info with the merchant's key and settles a refund only when number,
order and amount match one it asked for.

So that the SDK's notification says what WeChat Pay itself would say, each order is first
paid in the simulator (POST /simulator/pay) and each refund settled there: the simulator's
own notification then goes to public_url, which is the sink, never the gateway, and the SDK's
notification is built from what the simulator reports through the SDK's own order.query
(transaction_id, time_end, bank_type, ...) or control view (refund_id, success time). Every
one is compared, business field by business field, with the simulator's genuine notification
caught at the sink. The gateway is then paid (or its refund settled) only by the SDK's
notification: the sink swallowed the genuine one, and background work is off, so no
orderquery/refundquery can do it instead; the order's history shows which did
(`paid` with `source: notification`).

The SDK signs a payment notification with wechatpy.pay.utils.calculate_signature (MD5) or
calculate_signature_hmac (HMAC-SHA256, with sign_type=HMAC-SHA256 in the body, as WeChat Pay
sends it), and writes it with wechatpy.pay.utils.dict_to_xml. Refund notifications are
encrypted with `cryptography` (AES-256-ECB, PKCS#7 to 16-byte blocks, key = lower-case hex
MD5 of the API key; common.encrypt_req_info), not with wechatpy's RefundCrypto.encrypt, whose
padding goes to 32-byte blocks (see common.py): checked against the published vector
V2-REFUND-2, and decrypted back with wechatpy's own parse_refund_notify_result.
"""

import json
import os

from wechatpy.pay import WeChatPay
from wechatpy.pay.utils import calculate_signature, calculate_signature_hmac, dict_to_xml
from wechatpy.utils import random_string

import servers
from common import (
    HTTP_TIMEOUT,
    JsonHttp,
    NotifySink,
    check,
    check_refund_crypto_vector,
    encrypt_req_info,
    expect_fields,
    new_out_trade_no,
    require,
    sdk_call,
    xml_fields,
)

TOKEN = "conformance-token-0123456789abcdef"
WRONG_KEY = "ThisIsNotTheMerchantKey000000000"
MD5, HMAC = "MD5", "HMAC-SHA256"

MERCHANTS = [
    {
        "name": "md5",
        "appid": "wxd678efh567hg6787",
        "app_secret": "wxpaysimulatortestappsecret00000",
        "mch_id": "1230000109",
        "api_key": "wxpaySimulatorTestKey0000000000A",
        "sign_type": MD5,
        "amount": 2800,
        "refund": 700,  # part of it: the order stays paid
    },
    {
        "name": "hmac",
        "appid": "wxc0nf0rmancehmac1",
        "app_secret": "conformancehmacappsecret00000001",
        "mch_id": "1230000209",
        "api_key": "ConformanceHmacKey00000000000001",
        "sign_type": HMAC,
        "amount": 1200,
        "refund": 1200,  # all of it: the order becomes refunded
    },
]
MERCHANT_KEYS = ("name", "appid", "app_secret", "mch_id", "api_key", "sign_type")


def toml_str(s):
    return json.dumps(s)  # a TOML basic string, for the ASCII values used here


def merchants_toml(extra=None):
    out = []
    for m in MERCHANTS:
        out.append("[[merchants]]")
        out += ["{} = {}".format(k, toml_str(m[k])) for k in MERCHANT_KEYS]
        out += ["{} = {}".format(k, toml_str(v)) for k, v in (extra or {}).items()]
        out.append("")
    return "\n".join(out)


def sign(params, key, sign_type):
    return (calculate_signature_hmac if sign_type == HMAC else calculate_signature)(params, key)


def notification_body(params, key, sign_type):
    """A payment notification as WeChat Pay sends it, made with the SDK's signing and XML."""
    p = dict(params)
    if sign_type == HMAC:
        p["sign_type"] = HMAC
    return dict_to_xml(p, sign(p, key, sign_type)).encode("utf-8")


def refund_notification_body(m, plain_fields, key):
    root = "<root>" + "".join("<{0}><![CDATA[{1}]]></{0}>".format(k, v) for k, v in sorted(plain_fields.items())) \
        + "</root>"
    outer = {"return_code": "SUCCESS", "appid": m["appid"], "mch_id": m["mch_id"], "nonce_str": random_string(32),
             "req_info": encrypt_req_info(root, key)}
    return dict_to_xml(outer).encode("utf-8")


class Gateway:
    def __init__(self, url):
        self.api = JsonHttp(url, headers={"Authorization": "Bearer " + TOKEN})
        self.public = JsonHttp(url)

    def notify(self, kind, body):
        """POSTs a notification; (HTTP status, return_code, whole answer)."""
        status, text, _ = self.public.call("POST", "/notify/v2/" + kind, raw=body, content_type="text/xml")
        try:
            code = xml_fields(text).get("return_code")
        except Exception:
            code = None
        return status, code, text

    def order(self, no, merchant):
        status, o = self.api.get("/v1/orders/{}?merchant={}".format(no, merchant))
        require(status == 200 and isinstance(o, dict), "GET /v1/orders/{}".format(no), "HTTP {} {!r}".format(status, o))
        return o


def events(order, kind):
    return [e for e in order.get("events", []) if e.get("kind") == kind]


def run(binary, work, logs):
    os.makedirs(work, exist_ok=True)
    check_refund_crypto_vector()
    sim_toml = os.path.join(work, "simulator.toml")
    with open(sim_toml, "w") as f:
        f.write(merchants_toml() + "\n[simulator]\nrefund_delay_ms = 600000\n")
    with servers.simulator(binary, os.path.join(logs, "gateway-simulator.log"), "--config", sim_toml,
                           "--mode", "explicit", "--keys-dir", os.path.join(work, "simulator-keys")) as sim, NotifySink() as sink:
        gw_toml = os.path.join(work, "gateway.toml")
        with open(gw_toml, "w") as f:
            f.write("\n".join([
                "[server]",
                'listen = "127.0.0.1:0"',
                "public_url = {}".format(toml_str(sink.url(""))),
                "api_tokens = [{}]".format(toml_str(TOKEN)),
                "",
                "[database]",
                "url = {}".format(toml_str("sqlite://" + os.path.join(work, "wxpay.db"))),
                "",
                "[jobs]",
                "enabled = false",
                "",
                merchants_toml({"base_url": sim.url, "sns_base_url": sim.url}),
            ]))
        with servers.gateway(binary, os.path.join(logs, "gateway.log"), gw_toml) as gw_server:
            gw = Gateway(gw_server.url)
            status, text = gw.public.get("/readyz")
            check(status == 200, "gateway GET /readyz (SQLite in {})".format(work), "HTTP {} {!r}".format(status, text))
            sim_ctl = JsonHttp(sim.url)
            for m in MERCHANTS:
                run_merchant(m, gw, sim, sim_ctl, sink)
            check(gw_server.alive(), "the gateway is still running")


def run_merchant(m, gw, sim, sim_ctl, sink):
    tag = "[{} merchant {}] ".format(m["sign_type"], m["mch_id"])
    key = m["api_key"]
    sdk = WeChatPay(appid=m["appid"], api_key=key, mch_id=m["mch_id"], timeout=HTTP_TIMEOUT)
    sdk.API_BASE_URL = sim.url + "/"  # the SDK asks the simulator what WeChat Pay knows

    # -- an order through the gateway's API -------------------------------------------------
    status, login = sim_ctl.post("/simulator/login", {"appid": m["appid"], "user": "conformance-gw"})
    check(status == 200 and isinstance(login, dict) and bool(login.get("code")),
          tag + "POST /simulator/login gives a code", repr(login))
    status, r = gw.api.post("/v1/openid", {"code": login["code"], "merchant": m["name"]})
    openid = r.get("openid") if isinstance(r, dict) else None
    check(status == 200 and isinstance(openid, str) and len(openid) == 28,
          tag + "POST /v1/openid -> openid {}".format(openid), "HTTP {} {!r}".format(status, r))
    status, order = gw.api.post(
        "/v1/orders",
        {"description": "wxpay gateway conformance", "amount_fen": m["amount"], "openid": openid,
         "attach": "gw-" + m["name"], "merchant": m["name"]},
        headers={"Idempotency-Key": new_out_trade_no("k" + m["name"])})
    check(status == 201 and isinstance(order, dict) and order.get("status") == "pending",
          tag + "POST /v1/orders -> 201, pending", "HTTP {} {!r}".format(status, order))
    no = order["out_trade_no"]
    pp = order.get("pay_params") or {}
    check(pp.get("signType") == m["sign_type"] and pp.get("package") == "prepay_id=" + str(order.get("prepay_id"))
          and pp.get("paySign") == sign({k: v for k, v in pp.items() if k != "paySign"}, key, m["sign_type"]),
          tag + "pay_params.paySign verifies with wechatpy's {} ({})".format(
              "calculate_signature_hmac" if m["sign_type"] == HMAC else "calculate_signature", no), repr(pp))

    # -- WeChat Pay (the simulator) is paid; its own notification goes to the sink ----------
    status, view = sim_ctl.post("/simulator/pay", {"out_trade_no": no, "mch_id": m["mch_id"]})
    check(status == 200 and isinstance(view, dict) and view.get("trade_state") == "SUCCESS",
          tag + "POST /simulator/pay pays {} in the simulator".format(no), "HTTP {} {!r}".format(status, view))
    _, genuine_raw = sink.wait_for("/notify/v2/pay", 10, lambda b: no.encode() in b)
    check(genuine_raw is not None, tag + "the simulator's own notification went to public_url (the sink), "
          "not to the gateway")
    check(gw.order(no, m["name"]).get("status") == "pending", tag + "so the gateway's order is still pending")

    if m["sign_type"] == HMAC:
        q = sdk_call("orderquery", sdk.post, "pay/orderquery",
                     data={"appid": m["appid"], "out_trade_no": no, "sign_type": HMAC})
    else:
        q = sdk_call("order.query", sdk.order.query, out_trade_no=no)
    expect_fields(q, tag + "the SDK's orderquery to the simulator", trade_state="SUCCESS",
                  total_fee=str(m["amount"]), openid=openid)
    params = {
        "return_code": "SUCCESS", "return_msg": "OK", "appid": m["appid"], "mch_id": m["mch_id"],
        "nonce_str": random_string(32), "result_code": "SUCCESS", "openid": q["openid"],
        "is_subscribe": q.get("is_subscribe") or "N", "trade_type": q["trade_type"], "bank_type": q["bank_type"],
        "total_fee": q["total_fee"], "fee_type": q.get("fee_type") or "CNY", "cash_fee": q["cash_fee"],
        "transaction_id": q["transaction_id"], "out_trade_no": no, "attach": q.get("attach"),
        "time_end": q["time_end"],
    }
    params = {k: v for k, v in params.items() if v is not None}
    body = notification_body(params, key, m["sign_type"])
    mine, genuine = xml_fields(body), xml_fields(genuine_raw)
    skip = {"nonce_str", "sign", "return_msg"}
    diff = {k: (mine.get(k), genuine.get(k)) for k in (set(mine) | set(genuine)) - skip
            if mine.get(k) != genuine.get(k)}
    check(not diff, tag + "the SDK-made notification has the fields and values of the simulator's own "
          "(transaction_id {})".format(params["transaction_id"]), "differences (SDK, simulator): {!r}".format(diff))

    # -- refused: a wrong key, the other sign type, an unknown order -------------------------
    other = MD5 if m["sign_type"] == HMAC else HMAC
    for what, bad in (
        ("signed with a wrong key", notification_body(params, WRONG_KEY, m["sign_type"])),
        ("signed {} (the merchant is configured {})".format(other, m["sign_type"]),
         notification_body(params, key, other)),
        ("for an order the gateway does not have",
         notification_body({**params, "out_trade_no": new_out_trade_no("u")}, key, m["sign_type"])),
    ):
        status, code, text = gw.notify("pay", bad)
        check(code == "FAIL",
              tag + "a payment notification {} is answered FAIL".format(what),
              "HTTP {} {!r}".format(status, text))
        o = gw.order(no, m["name"])
        check(o.get("status") == "pending" and not events(o, "paid"),
              tag + "and the order is still pending", repr(o))

    # -- accepted, once -----------------------------------------------------------------------
    status, code, text = gw.notify("pay", body)
    check(status == 200 and code == "SUCCESS",
          tag + "the SDK-made notification ({}) is answered SUCCESS".format(m["sign_type"]),
          "HTTP {} {!r}".format(status, text))
    o = gw.order(no, m["name"])
    paid = events(o, "paid")
    check(o.get("status") == "paid" and o.get("transaction_id") == params["transaction_id"] and bool(o.get("paid_at")),
          tag + "the order is paid, with the notification's transaction_id", repr(o))
    check(len(paid) == 1 and (paid[0].get("detail") or {}).get("source") == "notification",
          tag + "its history has one `paid` event, from the notification", repr(o.get("events")))
    status, code, text = gw.notify("pay", body)
    check(status == 200 and code == "SUCCESS", tag + "the same notification again is answered SUCCESS",
          "HTTP {} {!r}".format(status, text))
    o2 = gw.order(no, m["name"])
    check(o2.get("status") == "paid" and o2.get("paid_at") == o.get("paid_at")
          and len(events(o2, "paid")) == 1 and len(o2.get("events", [])) == len(o.get("events", [])),
          tag + "and changes nothing (still paid once, same paid_at, no new event)", repr(o2))

    run_refund(m, tag, gw, sim_ctl, sink, sdk, no, params["transaction_id"])


def run_refund(m, tag, gw, sim_ctl, sink, sdk, no, transaction_id):
    key = m["api_key"]
    status, refund = gw.api.post("/v1/orders/{}/refunds".format(no),
                                 {"amount_fen": m["refund"], "reason": "conformance", "merchant": m["name"]},
                                 headers={"Idempotency-Key": new_out_trade_no("r" + m["name"])})
    check(status == 201 and isinstance(refund, dict) and refund.get("status") == "pending",
          tag + "POST /v1/orders/{}/refunds -> 201, pending".format(no), "HTTP {} {!r}".format(status, refund))
    rno = refund["out_refund_no"]
    status, refund = gw.api.get("/v1/refunds/{}?merchant={}".format(rno, m["name"]))
    check(status == 200 and refund.get("upstream") == "created" and bool(refund.get("refund_id")),
          tag + "the refund {} was accepted by the simulator (upstream created, refund_id)".format(rno),
          "HTTP {} {!r}".format(status, refund))

    # WeChat Pay (the simulator) settles it; its own notification goes to the sink.
    status, view = sim_ctl.post("/simulator/refunds/{}/complete".format(rno),
                                {"mch_id": m["mch_id"], "status": "SUCCESS"})
    check(status == 200 and isinstance(view, dict),
          tag + "POST /simulator/refunds/{}/complete settles it in the simulator".format(rno),
          "HTTP {} {!r}".format(status, view))
    sim_refund = next((r for r in view.get("refunds", []) if r.get("out_refund_no") == rno), {})
    check(sim_refund.get("refund_id") == refund["refund_id"] and sim_refund.get("status") == "SUCCESS"
          and bool(sim_refund.get("settled_at")),
          tag + "the simulator's refund has the gateway's refund_id and is SUCCESS", repr(view))
    _, genuine_raw = sink.wait_for("/notify/v2/refund", 10, lambda b: _refund_of(sdk, b) == rno)
    check(genuine_raw is not None, tag + "the simulator's refund notification went to the sink, not the gateway")
    check(_gw_refund(gw, rno, m).get("status") == "pending", tag + "so the gateway's refund is still pending")

    plain = {
        "transaction_id": transaction_id, "out_trade_no": no, "refund_id": refund["refund_id"],
        "out_refund_no": rno, "total_fee": str(m["amount"]), "settlement_total_fee": str(m["amount"]),
        "refund_fee": str(m["refund"]), "settlement_refund_fee": str(m["refund"]), "refund_status": "SUCCESS",
        "success_time": sim_refund["settled_at"], "refund_recv_accout": "支付用户的零钱",
        "refund_account": "REFUND_SOURCE_UNSETTLED_FUNDS", "refund_request_source": "API",
    }
    body = refund_notification_body(m, plain, key)
    mine = sdk_call("parse_refund_notify_result", sdk.parse_refund_notify_result, body)
    check({k: str(v) for k, v in mine.items()} == plain,
          tag + "wechatpy's parse_refund_notify_result decrypts our req_info to what we encrypted", repr(mine))
    genuine = sdk_call("parse_refund_notify_result", sdk.parse_refund_notify_result, genuine_raw)
    business = ("transaction_id", "out_trade_no", "refund_id", "out_refund_no", "total_fee", "refund_fee",
                "refund_status", "success_time")
    diff = {k: (plain.get(k), str(genuine.get(k))) for k in business if plain.get(k) != str(genuine.get(k))}
    check(not diff, tag + "and agrees with the simulator's own refund notification on {}".format(", ".join(business)),
          "differences (ours, simulator's): {!r}".format(diff))

    status, code, text = gw.notify("refund", refund_notification_body(m, plain, WRONG_KEY))
    check(code == "FAIL", tag + "a refund notification encrypted with a wrong key is answered FAIL",
          "HTTP {} {!r}".format(status, text))
    check(_gw_refund(gw, rno, m).get("status") == "pending", tag + "and the refund is still pending")

    status, code, text = gw.notify("refund", body)
    check(status == 200 and code == "SUCCESS",
          tag + "the refund notification (AES-256-ECB with cryptography) is answered SUCCESS",
          "HTTP {} {!r}".format(status, text))
    r = _gw_refund(gw, rno, m)
    check(r.get("status") == "succeeded" and bool(r.get("settled_at")), tag + "the refund {} succeeded".format(rno),
          repr(r))
    o = gw.order(no, m["name"])
    want = "refunded" if m["refund"] == m["amount"] else "paid"
    settled = events(o, "refund_succeeded")
    check(o.get("refunded_fen") == m["refund"] and o.get("status") == want,
          tag + "the order has refunded_fen {} and status {}".format(m["refund"], want), repr(o))
    check(len(settled) == 1 and (settled[0].get("detail") or {}).get("source") == "notification",
          tag + "its history has one `refund_succeeded` event, from the notification", repr(o.get("events")))
    status, code, text = gw.notify("refund", body)
    check(status == 200 and code == "SUCCESS", tag + "the same refund notification again is answered SUCCESS",
          "HTTP {} {!r}".format(status, text))
    o2 = gw.order(no, m["name"])
    check(o2.get("refunded_fen") == m["refund"] and len(events(o2, "refund_succeeded")) == 1
          and len(o2.get("events", [])) == len(o.get("events", [])),
          tag + "and changes nothing (refunded once, no new event)", repr(o2))


def _refund_of(sdk, body):
    try:
        return sdk.parse_refund_notify_result(body).get("out_refund_no")
    except Exception:
        return None


def _gw_refund(gw, rno, m):
    status, r = gw.api.get("/v1/refunds/{}?merchant={}".format(rno, m["name"]))
    require(status == 200 and isinstance(r, dict), "GET /v1/refunds/{}".format(rno), "HTTP {} {!r}".format(status, r))
    return r
