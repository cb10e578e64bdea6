#!/usr/bin/env python3
"""Conformance test: the unchanged `wechatpy` SDK (from PyPI) against the wxpay simulator.

Usage: wechatpy_conformance.py SIMULATOR_BASE_URL [TLS_DIR]
       (e.g. https://127.0.0.1:8090 wxpay-simulator-tls, or http://127.0.0.1:8090)

The simulator must run without --config (the built-in test merchant), in explicit mode
(orders are paid only through /simulator/pay) and with --bills-immediately (today's bill is
served at once). scripts/conformance/run.py starts it so, with --tls. The script starts its own
notify_url server on 127.0.0.1:0, drives WeChat Pay APIv2 only through wechatpy's public API,
prints one line per check and exits non-zero at the first failure.

What it covers: jscode2session; unifiedorder, the wx.requestPayment parameters, orderquery,
the payment notification (verified by the SDK, tampered copies refused), closeorder and
ORDERPAID; refunds (refund, refundquery, the refund notification decrypted by the SDK's own
WeChatRefundCrypto); the same for an HMAC-SHA256 merchant; downloadbill (the text the SDK
returns, parsed and checked against the orders); a wrong API key.

Refunds and mutual TLS: WeChat Pay requires the merchant's API certificate on
/secapi/pay/refund. With `--tls` the simulator serves HTTPS and accepts a refund only over a
connection that presented the client certificate it issued for that mch_id
(TLS_DIR/<mch_id>/apiclient_cert.pem and apiclient_key.pem, under its test CA TLS_DIR/ca.pem).
wechatpy supports this as it is: WeChatPay(mch_cert=..., mch_key=...) hands the pair to
requests as `cert=`. The test CA is trusted through REQUESTS_CA_BUNDLE, the variable requests
itself reads, set only while this suite runs. So the refund goes over real mutual TLS, and a
refund without the certificate is checked to be refused. (Without --tls the simulator accepts
refunds over plain http, with no certificate; given no TLS_DIR the script runs so and skips
the certificate checks, saying so.)

HMAC-SHA256: the simulator has no per-merchant sign type. Like WeChat Pay, it verifies each
request with the `sign_type` the request names, answers signed the same way, and signs an
order's notification the way its unifiedorder was signed; so the built-in merchant serves as
the HMAC merchant. wechatpy 1.8.18 has no sign_type setting: its WeChatPay._request signs with
HMAC-SHA256 whenever the request's data holds sign_type=HMAC-SHA256. order.create passes extra
keyword arguments into the data; for the other calls the client's public `post(endpoint,
data=dict)` (what every endpoint object calls) is used. The SDK's verifiers
(check_signature, parse_payment_result) know MD5 only, so HMAC answers and notifications are
verified with the SDK's own wechatpy.pay.utils.calculate_signature_hmac.

How the SDK is pointed at the simulator (no change to the SDK's code):
  * Pay: `wechatpy.pay.WeChatPay` builds every URL as `self.API_BASE_URL + endpoint`
    (WeChatPay._request), with `API_BASE_URL = 'https://api.mch.weixin.qq.com/'` a plain
    class attribute. We set `API_BASE_URL` on our client *instance*: ordinary Python
    attribute shadowing of a public, upper-case class setting, the same override point the
    SDK itself uses for its per-endpoint base URLs. No SDK file or function is modified or
    monkeypatched. (The pay endpoint objects used here -- order, jsapi, refund, tools --
    define no API_BASE_URL of their own, which the script asserts, so the client's value is
    used.)
  * jscode2session: `wechatpy.client.api.WeChatWxa` carries its own class attribute
    `API_BASE_URL = 'https://api.weixin.qq.com/'`, which BaseWeChatAPI._get passes on as the
    base URL; we set it on the client's `wxa` endpoint instance in the same way.
"""

import os
import re
import sys
import time
from datetime import datetime, timedelta
from decimal import Decimal

import wechatpy
from wechatpy import WeChatClient
from wechatpy.exceptions import InvalidSignatureException, WeChatClientException, WeChatPayException
from wechatpy.pay import WeChatPay
from wechatpy.pay.utils import calculate_signature_hmac

from common import (
    BEIJING,
    HTTP_TIMEOUT,
    CheckFailed,
    JsonHttp,
    NotifySink,
    beijing_day_with,
    check,
    decrypt_req_info_strict,
    expect_fields,
    md5_sign,
    new_out_trade_no,
    ok,
    parse_bill,
    pay_exception_text,
    sdk_call,
    wait_until,
    xml_fields,
    yuan_to_fen,
)

# The simulator's built-in test merchant (served when it runs without --config).
APPID = "wxd678efh567hg6787"
MCH_ID = "1230000109"
API_KEY = "wxpaySimulatorTestKey0000000000A"
APP_SECRET = "wxpaysimulatortestappsecret00000"
WRONG_KEY = "ThisIsNotTheMerchantKey000000000"  # 32 characters, like a real key
HMAC = "HMAC-SHA256"


def hmac_verifies(fields, key):
    """Whether `fields` (an answer or notification, with its `sign`) carries the HMAC-SHA256
    signature that wechatpy's calculate_signature_hmac computes with `key`."""
    p = dict(fields)
    sign = p.pop("sign", None)
    return sign is not None and sign == calculate_signature_hmac(p, key)


def expect_pay_error(what, call, check_exc):
    try:
        r = call()
    except WeChatPayException as e:
        check(check_exc(e), what, pay_exception_text(e))
        return e
    raise CheckFailed("{}: expected WeChatPayException, got {!r}".format(what, r))


def run(base, tls_dir=None):
    # Everything below happens on one Beijing day, so that the bill asked for is the one the
    # payments are on.
    day = beijing_day_with(120)
    ca = os.path.join(tls_dir, "ca.pem") if tls_dir else None
    ctl = JsonHttp(base, cafile=ca)
    status, health = ctl.get("/simulator/health")
    check(status == 200 and isinstance(health, dict) and health.get("status") == "ok",
          "simulator answers GET /simulator/health", repr(health))
    check(health.get("mode") == "explicit", "simulator runs in explicit mode (orders paid only on request)",
          "mode is {!r}; start it with --mode explicit".format(health.get("mode")))

    ok("wechatpy {} (from {})".format(wechatpy.__version__, wechatpy.__file__))

    cert_kw = {}
    if tls_dir:
        check(base.startswith("https://"), "the simulator serves https (--tls)", base)
        cert = os.path.join(tls_dir, MCH_ID, "apiclient_cert.pem")
        key = os.path.join(tls_dir, MCH_ID, "apiclient_key.pem")
        check(all(os.path.isfile(p) for p in (ca, cert, key)),
              "the simulator made its test CA and the merchant's apiclient_cert.pem/apiclient_key.pem",
              "missing under {}".format(tls_dir))
        cert_kw = {"mch_cert": cert, "mch_key": key}
    else:
        ok("no TLS_DIR: plain http, refunds without the merchant certificate (the certificate checks are skipped)")

    client = WeChatPay(appid=APPID, api_key=API_KEY, mch_id=MCH_ID, timeout=HTTP_TIMEOUT, **cert_kw)
    # Base URL override: instance attribute shadowing WeChatPay.API_BASE_URL (see docstring).
    client.API_BASE_URL = base + "/"
    for name in ("order", "jsapi", "refund", "tools"):
        check(getattr(getattr(client, name), "API_BASE_URL", None) is None,
              "client.{} has no base URL of its own (client.API_BASE_URL applies)".format(name))

    # -- jscode2session through WeChatWxa.code_to_session -----------------------------------
    status, login = ctl.post("/simulator/login", {"appid": APPID, "user": "conformance-user"})
    check(status == 200 and isinstance(login, dict) and login.get("code"),
          "POST /simulator/login gives a wx.login code", repr(login))
    # access_token is given only so that the SDK does not fetch one (jscode2session needs none;
    # the SDK adds it to every query string of this client and WeChat ignores it there).
    wx = WeChatClient(APPID, APP_SECRET, access_token="unused-by-jscode2session", timeout=HTTP_TIMEOUT)
    wx.wxa.API_BASE_URL = base + "/"
    session = sdk_call("wxa.code_to_session", wx.wxa.code_to_session, login["code"])
    openid = session.get("openid") if isinstance(session, dict) else None
    check(isinstance(openid, str) and len(openid) == 28,
          "wxa.code_to_session -> openid {}".format(openid), repr(session))
    check(bool(session.get("session_key")), "wxa.code_to_session -> session_key present", repr(session))
    try:
        again = wx.wxa.code_to_session(login["code"])
        raise CheckFailed("reusing a login code: expected WeChatClientException 40163, got {!r}".format(again))
    except WeChatClientException as e:
        check(e.errcode == 40163, "reusing a login code raises WeChatClientException errcode 40163",
              "got errcode {!r} errmsg {!r}".format(e.errcode, e.errmsg))

    with NotifySink() as sink:
        # -- unifiedorder ---------------------------------------------------------------------
        no1 = new_out_trade_no("a")
        notify_path = "/notify/pay/" + no1
        total_fee = 1999
        created = sdk_call(
            "order.create", client.order.create,
            trade_type="JSAPI", body="wxpay conformance 咖啡", total_fee=total_fee,
            notify_url=sink.url(notify_path), client_ip="127.0.0.1", user_id=openid,
            out_trade_no=no1, attach="conformance",
        )
        prepay_id = created.get("prepay_id")
        check(bool(prepay_id), "order.create (JSAPI, openid) -> prepay_id {}".format(prepay_id), repr(created))
        expect_fields(created, "order.create", return_code="SUCCESS", result_code="SUCCESS",
                      appid=APPID, mch_id=MCH_ID, trade_type="JSAPI")
        check(client.check_signature(created), "order.create answer signature verifies (client.check_signature)",
              repr(created))

        # -- wx.requestPayment parameters -----------------------------------------------------
        params = client.jsapi.get_jsapi_params(prepay_id, timestamp="1700000000",
                                               nonce_str="5K8264ILTKCH16CQ2502SI8ZNMTM67VS")
        check(set(params) == {"appId", "timeStamp", "nonceStr", "package", "signType", "paySign"},
              "jsapi.get_jsapi_params gives appId, timeStamp, nonceStr, package, signType, paySign",
              repr(params))
        expect_fields(params, "jsapi.get_jsapi_params", appId=APPID, package="prepay_id=" + prepay_id,
                      signType="MD5", timeStamp="1700000000")
        unsigned = {k: v for k, v in params.items() if k != "paySign"}
        expected = md5_sign(unsigned, API_KEY)
        check(params["paySign"] == expected,
              "paySign = MD5(appId&nonceStr&package&signType&timeStamp&key) computed with hashlib",
              "SDK {} vs hashlib {}".format(params["paySign"], expected))
        params2 = client.jsapi.get_jsapi_params(prepay_id)  # SDK's own timestamp and nonce
        check(params2["paySign"] == md5_sign({k: v for k, v in params2.items() if k != "paySign"}, API_KEY)
              and re.fullmatch(r"\d{10}", params2["timeStamp"]) is not None,
              "jsapi.get_jsapi_params with its own timestamp and nonce: paySign verifies, timeStamp in seconds",
              repr(params2))

        # -- orderquery before payment --------------------------------------------------------
        q = sdk_call("order.query", client.order.query, out_trade_no=no1)
        expect_fields(q, "order.query before payment", return_code="SUCCESS", result_code="SUCCESS",
                      out_trade_no=no1, trade_state="NOTPAY")
        check(client.check_signature(q), "order.query answer signature verifies", repr(q))

        # -- the user pays; the simulator notifies --------------------------------------------
        status, view = ctl.post("/simulator/pay", {"out_trade_no": no1, "outcome": "success"})
        check(status == 200, "POST /simulator/pay marks {} paid".format(no1), "HTTP {} {!r}".format(status, view))

        ctype, raw = sink.wait_for(notify_path, 10)
        check(raw is not None, "payment notification received at notify_url within 10 s",
              "nothing was posted to {}".format(sink.url(notify_path)))
        ok("notification: Content-Type {!r}, {} bytes".format(ctype, len(raw)))

        try:
            note = client.parse_payment_result(raw)
        except InvalidSignatureException:
            raise CheckFailed("client.parse_payment_result rejected the simulator's notification as "
                              "InvalidSignatureException; body: {!r}".format(raw))
        ok("client.parse_payment_result accepts the exact body posted (signature verifies)")
        expect_fields(note, "notification", return_code="SUCCESS", result_code="SUCCESS", appid=APPID,
                      mch_id=MCH_ID, out_trade_no=no1, openid=openid, trade_type="JSAPI",
                      total_fee=total_fee, attach="conformance")
        transaction_id = note.get("transaction_id")
        check(bool(transaction_id), "notification carries transaction_id {}".format(transaction_id), repr(note))

        # A tampered body must be refused by the SDK's verifier.
        tampered, n = re.subn(rb"<total_fee>(?:<!\[CDATA\[)?\d+(?:\]\]>)?</total_fee>",
                              b"<total_fee>1</total_fee>", raw)
        check(n == 1, "notification has one total_fee to tamper with", repr(raw))
        try:
            client.parse_payment_result(tampered)
            raise CheckFailed("client.parse_payment_result accepted a body whose total_fee was changed to 1")
        except InvalidSignatureException:
            ok("client.parse_payment_result rejects the body with total_fee changed (InvalidSignatureException)")
        bad_key_client = WeChatPay(appid=APPID, api_key=WRONG_KEY, mch_id=MCH_ID, timeout=HTTP_TIMEOUT)
        try:
            bad_key_client.parse_payment_result(raw)
            raise CheckFailed("parse_payment_result with another key accepted the notification")
        except InvalidSignatureException:
            ok("parse_payment_result with another API key rejects the genuine body")

        # The simulator saw our SUCCESS answer as an acknowledgement.
        deadline = time.monotonic() + 10
        while True:
            status, notes = ctl.get("/simulator/notifications?out_trade_no=" + no1)
            attempts = [a for a in notes.get("attempts", []) if a.get("kind") == "payment"] \
                if isinstance(notes, dict) else []
            if any(a.get("acknowledged") for a in attempts) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        check(len(attempts) >= 1 and attempts[0].get("body", "").encode("utf-8") == raw,
              "GET /simulator/notifications records the body we received", repr(notes))
        check(any(a.get("acknowledged") for a in attempts),
              "the simulator counts our SUCCESS answer as acknowledged", repr(attempts))
        status, view = ctl.get("/simulator/orders/" + no1)
        check(status == 200 and view.get("notified") is True, "GET /simulator/orders/{} shows notified".format(no1),
              repr(view))

        # -- orderquery after payment ---------------------------------------------------------
        q = sdk_call("order.query", client.order.query, out_trade_no=no1)
        expect_fields(q, "order.query after payment", return_code="SUCCESS", result_code="SUCCESS",
                      out_trade_no=no1, trade_state="SUCCESS", total_fee=str(total_fee),
                      transaction_id=transaction_id, openid=openid)
        check(client.check_signature(q), "order.query answer signature verifies", repr(q))
        q = sdk_call("order.query by transaction_id", client.order.query, transaction_id=transaction_id)
        expect_fields(q, "order.query by transaction_id", trade_state="SUCCESS", out_trade_no=no1)

        # -- a second order, closed -----------------------------------------------------------
        no2 = new_out_trade_no("b")
        created2 = sdk_call(
            "order.create (second)", client.order.create,
            trade_type="JSAPI", body="wxpay conformance close", total_fee=1, notify_url=sink.url("/notify/pay/" + no2),
            client_ip="127.0.0.1", user_id=openid, out_trade_no=no2,
        )
        check(bool(created2.get("prepay_id")), "order.create (second order) -> prepay_id", repr(created2))
        closed = sdk_call("order.close", client.order.close, no2)
        expect_fields(closed, "order.close", return_code="SUCCESS", result_code="SUCCESS")
        check(client.check_signature(closed), "order.close answer signature verifies", repr(closed))
        q = sdk_call("order.query (closed)", client.order.query, out_trade_no=no2)
        expect_fields(q, "order.query after close", out_trade_no=no2, trade_state="CLOSED")

        # Closing a paid order surfaces ORDERPAID through the SDK's exception.
        try:
            r = client.order.close(no1)
            raise CheckFailed("order.close on a paid order: expected WeChatPayException ORDERPAID, got {!r}".format(r))
        except WeChatPayException as e:
            check(e.return_code == "SUCCESS" and e.result_code == "FAIL" and e.errcode == "ORDERPAID",
                  "order.close on the paid order raises WeChatPayException err_code ORDERPAID",
                  pay_exception_text(e))
        check(sink.count("/notify/pay/" + no2) == 0, "no notification for the closed order")

        refunds = run_refunds(ctl, client, sink, tls_dir, no1, total_fee, transaction_id)
        hmac_order = run_hmac(ctl, client, sink, openid)

    run_bill(client, day, no1, no2, transaction_id, total_fee, refunds, hmac_order)

    # -- a client with the wrong API key ----------------------------------------------------
    bad = WeChatPay(appid=APPID, api_key=WRONG_KEY, mch_id=MCH_ID, timeout=HTTP_TIMEOUT)
    bad.API_BASE_URL = base + "/"
    for what, call in (
        ("order.query", lambda: bad.order.query(out_trade_no=no1)),
        ("order.create", lambda: bad.order.create(
            trade_type="JSAPI", body="bad key", total_fee=1, notify_url="http://127.0.0.1:9/n",
            client_ip="127.0.0.1", user_id=openid, out_trade_no=new_out_trade_no("c"))),
        ("order.create with sign_type HMAC-SHA256", lambda: bad.order.create(
            trade_type="JSAPI", body="bad key", total_fee=1, notify_url="http://127.0.0.1:9/n",
            client_ip="127.0.0.1", user_id=openid, out_trade_no=new_out_trade_no("c"), sign_type=HMAC)),
    ):
        expect_pay_error(
            "{} with a wrong key raises WeChatPayException return_code FAIL, return_msg 签名错误".format(what), call,
            lambda e: e.return_code == "FAIL" and e.return_msg == "签名错误")


def run_refunds(ctl, client, sink, tls_dir, no1, total_fee, transaction_id):
    """refund, refundquery and the refund notification, on the paid order no1. Returns
    {out_refund_no: (refund_id, refund_fee)} of the refunds made."""
    rno = "R" + no1
    refund_fee = 500
    notify_path = "/notify/refund/" + rno

    if tls_dir:
        # The same request without the client certificate: WeChat Pay refuses it.
        no_cert = WeChatPay(appid=APPID, api_key=API_KEY, mch_id=MCH_ID, timeout=HTTP_TIMEOUT)
        no_cert.API_BASE_URL = client.API_BASE_URL
        expect_pay_error(
            "refund.apply without the merchant certificate raises WeChatPayException return_code FAIL (证书)",
            lambda: no_cert.refund.apply(total_fee=total_fee, refund_fee=refund_fee, out_refund_no=rno,
                                         out_trade_no=no1, notify_url=sink.url(notify_path)),
            lambda e: e.return_code == "FAIL" and "证书" in (e.return_msg or ""))

    r = sdk_call("refund.apply", client.refund.apply, total_fee=total_fee, refund_fee=refund_fee,
                 out_refund_no=rno, out_trade_no=no1, refund_desc="wxpay conformance 退款",
                 notify_url=sink.url(notify_path))
    expect_fields(r, "refund.apply" + (" (mutual TLS, apiclient_cert.pem)" if tls_dir else ""),
                  return_code="SUCCESS", result_code="SUCCESS", appid=APPID, mch_id=MCH_ID, out_trade_no=no1,
                  out_refund_no=rno, transaction_id=transaction_id, refund_fee=str(refund_fee),
                  total_fee=str(total_fee))
    check(client.check_signature(r), "refund.apply answer signature verifies", repr(r))
    refund_id = r.get("refund_id")
    check(bool(refund_id) and refund_id.isdigit(), "refund.apply -> refund_id {}".format(refund_id), repr(r))
    again = sdk_call("refund.apply (again)", client.refund.apply, total_fee=total_fee, refund_fee=refund_fee,
                     out_refund_no=rno, out_trade_no=no1, refund_desc="wxpay conformance 退款",
                     notify_url=sink.url(notify_path))
    check(again.get("refund_id") == refund_id,
          "refund.apply again with the same out_refund_no and parameters -> the same refund_id", repr(again))
    expect_pay_error(
        "refund.apply for more than is left raises WeChatPayException err_code REFUND_FEE_INVALID",
        lambda: client.refund.apply(total_fee=total_fee, refund_fee=total_fee - refund_fee + 1,
                                    out_refund_no=rno + "x", out_trade_no=no1),
        lambda e: e.return_code == "SUCCESS" and e.result_code == "FAIL" and e.errcode == "REFUND_FEE_INVALID")

    q = sdk_call("refund.query", client.refund.query, out_refund_no=rno)
    expect_fields(q, "refund.query before settlement", return_code="SUCCESS", result_code="SUCCESS",
                  out_trade_no=no1, transaction_id=transaction_id, refund_count="1", out_refund_no_0=rno,
                  refund_id_0=refund_id, refund_fee_0=str(refund_fee), refund_status_0="PROCESSING")
    check(client.check_signature(q), "refund.query answer signature verifies", repr(q))

    # WeChat Pay settles the refund (the simulator's control endpoint does it now rather than
    # after its refund delay) and notifies.
    status, view = ctl.post("/simulator/refunds/{}/complete".format(rno), {"status": "SUCCESS"})
    check(status == 200, "POST /simulator/refunds/{}/complete settles the refund".format(rno),
          "HTTP {} {!r}".format(status, view))
    ctype, raw = sink.wait_for(notify_path, 10)
    check(raw is not None, "refund notification received at its notify_url within 10 s",
          "nothing was posted to {}".format(sink.url(notify_path)))
    outer = xml_fields(raw)
    check(outer.get("return_code") == "SUCCESS" and outer.get("appid") == APPID and outer.get("mch_id") == MCH_ID
          and bool(outer.get("req_info")) and "sign" not in outer,
          "refund notification: return_code SUCCESS, appid, mch_id, req_info, and no sign", repr(outer))
    try:
        rn = client.parse_refund_notify_result(raw)
    except Exception as e:  # the SDK raises whatever its decryption or XML parser raises
        raise CheckFailed("client.parse_refund_notify_result failed on the simulator's refund notification: "
                          "{}: {}; body {!r}".format(type(e).__name__, e, raw))
    ok("client.parse_refund_notify_result decrypts req_info (WeChatRefundCrypto, AES-256-ECB, key MD5(API key))")
    expect_fields(rn, "refund notification req_info", out_refund_no=rno, out_trade_no=no1, refund_id=refund_id,
                  transaction_id=transaction_id, total_fee=total_fee, refund_fee=refund_fee,
                  refund_status="SUCCESS")
    check(re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", rn.get("success_time") or "") is not None,
          "refund notification: success_time {} (yyyy-MM-dd HH:mm:ss)".format(rn.get("success_time")), repr(rn))
    try:
        strict = xml_fields("<xml>{}</xml>".format(
            decrypt_req_info_strict(outer["req_info"], API_KEY).replace("<root>", "").replace("</root>", "")))
    except ValueError as e:
        raise CheckFailed("req_info is not AES-256-ECB with PKCS#7 padding to 16-byte blocks: {}".format(e))
    check({k: str(v) for k, v in rn.items()} == {k: str(v) for k, v in strict.items()},
          "req_info has PKCS#7 padding to 16-byte blocks (strict unpadding gives the SDK's fields)",
          "SDK {!r} vs strict {!r}".format(rn, strict))
    wrong = WeChatPay(appid=APPID, api_key=WRONG_KEY, mch_id=MCH_ID, timeout=HTTP_TIMEOUT)
    try:
        got = wrong.parse_refund_notify_result(raw)
        raise CheckFailed("parse_refund_notify_result with another API key gave {!r}".format(got))
    except CheckFailed:
        raise
    except Exception as e:
        ok("parse_refund_notify_result with another API key fails ({})".format(type(e).__name__))
    def refund_notified():
        status, view = ctl.get("/simulator/orders/" + no1)
        if status != 200:
            return None
        return any(r.get("out_refund_no") == rno and r.get("notified") for r in view.get("refunds", []))

    check(wait_until(refund_notified, timeout=10),
          "the simulator counts our SUCCESS answer to the refund notification as acknowledged",
          repr(ctl.get("/simulator/orders/" + no1)))

    q = sdk_call("refund.query (settled)", client.refund.query, out_refund_no=rno)
    expect_fields(q, "refund.query after settlement", refund_status_0="SUCCESS", refund_id_0=refund_id)
    check(bool(q.get("refund_success_time_0")), "refund.query after settlement: refund_success_time_0 present",
          repr(q))
    q = sdk_call("order.query (refunded)", client.order.query, out_trade_no=no1)
    expect_fields(q, "order.query after a refund", trade_state="REFUND", transaction_id=transaction_id)
    return {rno: (refund_id, refund_fee)}


def run_hmac(ctl, client, sink, openid):
    """An order, its notification, orderquery and a refund, all signed HMAC-SHA256."""
    no = new_out_trade_no("h")
    total_fee = 888
    notify_path = "/notify/pay/" + no
    created = sdk_call(
        "order.create (HMAC-SHA256)", client.order.create,
        trade_type="JSAPI", body="wxpay conformance HMAC", total_fee=total_fee, notify_url=sink.url(notify_path),
        client_ip="127.0.0.1", user_id=openid, out_trade_no=no, attach="hmac", sign_type=HMAC,
    )
    expect_fields(created, "order.create with sign_type HMAC-SHA256", return_code="SUCCESS",
                  result_code="SUCCESS", appid=APPID, mch_id=MCH_ID)
    check(re.fullmatch(r"[0-9A-F]{64}", created.get("sign") or "") is not None
          and hmac_verifies(created, API_KEY),
          "order.create (HMAC-SHA256) answer is signed HMAC-SHA256 (64 hex digits; calculate_signature_hmac)",
          repr(created))
    check(not client.check_signature(created), "that answer does not verify as MD5 (it really is HMAC)",
          repr(created))

    status, view = ctl.post("/simulator/pay", {"out_trade_no": no})
    check(status == 200, "POST /simulator/pay marks {} paid".format(no), "HTTP {} {!r}".format(status, view))
    _, raw = sink.wait_for(notify_path, 10)
    check(raw is not None, "HMAC order: payment notification received within 10 s", sink.url(notify_path))
    note = xml_fields(raw)
    expect_fields(note, "HMAC order notification", sign_type=HMAC, result_code="SUCCESS", out_trade_no=no,
                  total_fee=str(total_fee), attach="hmac", openid=openid)
    check(hmac_verifies(note, API_KEY), "HMAC order notification verifies with calculate_signature_hmac", repr(raw))
    check(not hmac_verifies(note, WRONG_KEY), "it does not verify with another key", repr(raw))
    check(not hmac_verifies({**note, "total_fee": "1"}, API_KEY),
          "it does not verify with total_fee changed", repr(raw))
    transaction_id = note.get("transaction_id")

    q = sdk_call("client.post pay/orderquery (HMAC-SHA256)", client.post, "pay/orderquery",
                 data={"appid": APPID, "out_trade_no": no, "sign_type": HMAC})
    expect_fields(q, "orderquery (HMAC-SHA256)", trade_state="SUCCESS", transaction_id=transaction_id,
                  total_fee=str(total_fee))
    check(hmac_verifies(q, API_KEY), "orderquery (HMAC-SHA256) answer verifies with calculate_signature_hmac",
          repr(q))

    rno = "R" + no
    r = sdk_call("client.post secapi/pay/refund (HMAC-SHA256)", client.post, "secapi/pay/refund",
                 data={"appid": APPID, "out_trade_no": no, "out_refund_no": rno, "total_fee": total_fee,
                       "refund_fee": total_fee, "sign_type": HMAC})
    expect_fields(r, "refund (HMAC-SHA256)", result_code="SUCCESS", out_refund_no=rno,
                  refund_fee=str(total_fee), transaction_id=transaction_id)
    check(hmac_verifies(r, API_KEY), "refund (HMAC-SHA256) answer verifies with calculate_signature_hmac", repr(r))
    q = sdk_call("client.post pay/refundquery (HMAC-SHA256)", client.post, "pay/refundquery",
                 data={"appid": APPID, "out_refund_no": rno, "sign_type": HMAC})
    expect_fields(q, "refundquery (HMAC-SHA256)", out_refund_no_0=rno, refund_id_0=r.get("refund_id"),
                  refund_status_0="PROCESSING")
    check(hmac_verifies(q, API_KEY), "refundquery (HMAC-SHA256) answer verifies with calculate_signature_hmac",
          repr(q))
    return {"out_trade_no": no, "transaction_id": transaction_id, "total_fee": total_fee,
            "out_refund_no": rno, "refund_id": r.get("refund_id")}


def run_bill(client, today, no1, no2, transaction_id, total_fee, refunds, hmac_order):
    """downloadbill: the text wechatpy returns, parsed and checked against what was done."""
    text = sdk_call("tools.download_bill", client.tools.download_bill, today)
    check(isinstance(text, str), "tools.download_bill({}) returns the bill as text (not XML)".format(today),
          repr(text)[:300])
    rows, summary = parse_bill(text)
    ok("bill: {} rows, columns {}".format(len(rows), ",".join(rows[0].keys()) if rows else "-"))
    for col in ("交易时间", "公众账号ID", "商户号", "微信订单号", "商户订单号", "交易状态", "应结订单金额",
                "微信退款单号", "商户退款单号", "退款金额", "退款状态", "商品名称", "手续费"):
        check(rows and col in rows[0], "bill has the column {}".format(col), repr(list(rows[0]) if rows else []))

    def one(what, pred):
        found = [r for r in rows if pred(r)]
        check(len(found) == 1, "bill: one row for {}".format(what), "found {}: {!r}".format(len(found), found))
        return found[0]

    pay = one("the payment of " + no1, lambda r: r["商户订单号"] == no1 and r["交易状态"] == "SUCCESS")
    check(pay["微信订单号"] == transaction_id and yuan_to_fen(pay["应结订单金额"]) == total_fee
          and pay["公众账号ID"] == APPID and pay["商户号"] == MCH_ID
          and re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", pay["交易时间"]) is not None,
          "bill: that row has its transaction_id, appid, mch_id, trade time and 应结订单金额 {:.2f}".format(
              total_fee / 100), repr(pay))
    for rno, (refund_id, refund_fee) in refunds.items():
        row = one("the refund " + rno, lambda r: r["商户退款单号"] == rno)
        check(row["交易状态"] == "REFUND" and row["微信退款单号"] == refund_id and row["商户订单号"] == no1
              and yuan_to_fen(row["退款金额"]) == refund_fee and row["退款状态"] == "SUCCESS",
              "bill: that row is REFUND, refund_id {}, 退款金额 {:.2f}, 退款状态 SUCCESS".format(
                  refund_id, refund_fee / 100), repr(row))
    h = hmac_order
    row = one("the HMAC order's payment", lambda r: r["商户订单号"] == h["out_trade_no"] and r["交易状态"] == "SUCCESS")
    check(row["微信订单号"] == h["transaction_id"] and yuan_to_fen(row["应结订单金额"]) == h["total_fee"],
          "bill: the HMAC order's row has its transaction_id and amount", repr(row))
    one("the HMAC order's refund", lambda r: r["商户退款单号"] == h["out_refund_no"] and r["交易状态"] == "REFUND")
    check(not any(r["商户订单号"] == no2 for r in rows), "bill: no row for the closed order {}".format(no2))

    def col_sum(col):
        return sum(yuan_to_fen(r[col]) for r in rows)

    check(int(float(summary.get("总交易单数", "nan"))) == len(rows), "bill summary: 总交易单数 = the number of rows",
          repr(summary))
    check(yuan_to_fen(summary["应结订单总金额"]) == col_sum("应结订单金额"),
          "bill summary: 应结订单总金额 = the sum of 应结订单金额", repr(summary))
    check(yuan_to_fen(summary["退款总金额"]) == col_sum("退款金额"), "bill summary: 退款总金额 = the sum of 退款金额",
          repr(summary))
    fees = sum(Decimal(r["手续费"]) for r in rows)
    check(Decimal(summary["手续费总金额"]) == fees,
          "bill summary: 手续费总金额 = the sum of 手续费", "{} vs {}".format(summary["手续费总金额"], fees))

    hmac_text = sdk_call("client.post pay/downloadbill (HMAC-SHA256)", client.post, "pay/downloadbill",
                         data={"appid": APPID, "bill_date": today, "bill_type": "ALL", "sign_type": HMAC})
    check(isinstance(hmac_text, str) and parse_bill(hmac_text)[0] == rows,
          "downloadbill signed HMAC-SHA256 returns the same rows", repr(hmac_text)[:300])

    # A day without payments (the simulator, started for this run, has none before today).
    quiet_day = (datetime.now(BEIJING) - timedelta(days=30)).strftime("%Y%m%d")
    expect_pay_error(
        "tools.download_bill({}) (a day without payments) raises WeChatPayException return_msg No Bill Exist".format(
            quiet_day),
        lambda: client.tools.download_bill(quiet_day),
        lambda e: e.return_code == "FAIL" and e.return_msg == "No Bill Exist")


def main(argv):
    if len(argv) not in (2, 3) or not argv[1].startswith(("http://", "https://")):
        print("usage: {} SIMULATOR_BASE_URL [TLS_DIR]   (e.g. https://127.0.0.1:8090 wxpay-simulator-tls)".format(
            argv[0]), file=sys.stderr)
        return 2
    base = argv[1].rstrip("/")
    tls_dir = argv[2] if len(argv) == 3 else None
    try:
        with_ca(tls_dir, lambda: run(base, tls_dir))
    except CheckFailed as e:
        print("FAIL  " + str(e), flush=True)
        return 1
    except Exception as e:  # an SDK or network error that no check anticipated
        print("FAIL  unexpected {}: {}".format(type(e).__name__, e), flush=True)
        raise
    print("PASS  wechatpy {} conforms against {}".format(wechatpy.__version__, base), flush=True)
    return 0


def with_ca(tls_dir, fn):
    """Runs fn with requests trusting the simulator's test CA (REQUESTS_CA_BUNDLE, which
    requests reads for every session whose verify is left at its default)."""
    if not tls_dir:
        return fn()
    before = os.environ.get("REQUESTS_CA_BUNDLE")
    os.environ["REQUESTS_CA_BUNDLE"] = os.path.join(tls_dir, "ca.pem")
    try:
        return fn()
    finally:
        if before is None:
            os.environ.pop("REQUESTS_CA_BUNDLE", None)
        else:
            os.environ["REQUESTS_CA_BUNDLE"] = before


if __name__ == "__main__":
    sys.exit(main(sys.argv))
