#!/usr/bin/env python3
"""Conformance test: the unchanged `wechatpy` SDK (from PyPI) against the wxpay simulator.

Usage: wechatpy_conformance.py SIMULATOR_BASE_URL      (e.g. http://127.0.0.1:8090)

The simulator must run without --config (the built-in test merchant) and in explicit mode
(orders are paid only through /simulator/pay). The script starts its own notify_url server on
127.0.0.1:0, drives WeChat Pay APIv2 only through wechatpy's public API, prints one line per
check and exits non-zero at the first failure.

Only the standard library and wechatpy (with its own dependencies) are used.

How the SDK is pointed at the simulator (no change to the SDK's code):
  * Pay: `wechatpy.pay.WeChatPay` builds every URL as `self.API_BASE_URL + endpoint`
    (WeChatPay._request), with `API_BASE_URL = 'https://api.mch.weixin.qq.com/'` a plain
    class attribute. We set `API_BASE_URL` on our client *instance*: ordinary Python
    attribute shadowing of a public, upper-case class setting, the same override point the
    SDK itself uses for its per-endpoint base URLs. No SDK file or function is modified or
    monkeypatched. (The pay endpoint objects used here -- order, jsapi -- define no
    API_BASE_URL of their own, which the script asserts, so the client's value is used.)
  * jscode2session: `wechatpy.client.api.WeChatWxa` carries its own class attribute
    `API_BASE_URL = 'https://api.weixin.qq.com/'`, which BaseWeChatAPI._get passes on as the
    base URL; we set it on the client's `wxa` endpoint instance in the same way.
"""

import hashlib
import http.server
import json
import random
import re
import sys
import threading
import time
import urllib.error
import urllib.request

import wechatpy
from wechatpy import WeChatClient
from wechatpy.exceptions import (
    InvalidSignatureException,
    WeChatClientException,
    WeChatPayException,
)
from wechatpy.pay import WeChatPay

# The simulator's built-in test merchant (served when it runs without --config).
APPID = "wxd678efh567hg6787"
MCH_ID = "1230000109"
API_KEY = "wxpaySimulatorTestKey0000000000A"
APP_SECRET = "wxpaysimulatortestappsecret00000"
WRONG_KEY = "ThisIsNotTheMerchantKey000000000"  # 32 characters, like a real key

NOTIFY_ANSWER = (
    b"<xml><return_code><![CDATA[SUCCESS]]></return_code>"
    b"<return_msg><![CDATA[OK]]></return_msg></xml>"
)
HTTP_TIMEOUT = 10


class CheckFailed(Exception):
    pass


def ok(what):
    print("ok    " + what, flush=True)


def check(cond, what, detail=""):
    if not cond:
        raise CheckFailed(what + (": " + detail if detail else ""))
    ok(what)


# --- the merchant's notify_url -------------------------------------------------------------


class NotifySink:
    """A stdlib HTTP server on 127.0.0.1:0 that records every body posted to it."""

    def __init__(self):
        self.bodies = []  # (path, content_type, raw bytes)
        self.cond = threading.Condition()
        sink = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n)
                with sink.cond:
                    sink.bodies.append((self.path, self.headers.get("Content-Type"), body))
                    sink.cond.notify_all()
                self.send_response(200)
                self.send_header("Content-Type", "text/xml; charset=utf-8")
                self.send_header("Content-Length", str(len(NOTIFY_ANSWER)))
                self.end_headers()
                self.wfile.write(NOTIFY_ANSWER)

            def log_message(self, fmt, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def url(self, path):
        host, port = self.server.server_address[:2]
        return "http://{}:{}{}".format(host, port, path)

    def wait_for(self, path, timeout):
        """The first body posted to `path`, waiting up to `timeout` seconds."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for p, ctype, body in self.bodies:
                    if p == path:
                        return ctype, body
                left = deadline - time.monotonic()
                if left <= 0:
                    return None, None
                self.cond.wait(left)

    def count(self, path):
        with self.cond:
            return sum(1 for p, _, _ in self.bodies if p == path)


# --- the simulator's control endpoints (plain HTTP, not part of WeChat Pay) ----------------


class Control:
    def __init__(self, base):
        self.base = base

    def _call(self, method, path, payload=None):
        data = None if payload is None else json.dumps(payload).encode("utf-8")
        req = urllib.request.Request(self.base + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT) as r:
                return r.status, json.loads(r.read().decode("utf-8"))
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode("utf-8", "replace")

    def get(self, path):
        return self._call("GET", path)

    def post(self, path, payload):
        return self._call("POST", path, payload)


# --- helpers -------------------------------------------------------------------------------


def new_out_trade_no(tag):
    # At most 32 characters of [0-9A-Za-z_-], as WeChat Pay requires.
    return "wcp{}{}{:06d}".format(tag, int(time.time()), random.randint(0, 999999))


def pay_exception_text(e):
    return "return_code={!r} return_msg={!r} result_code={!r} err_code={!r} err_code_des={!r} answer={!r}".format(
        e.return_code,
        e.return_msg,
        e.result_code,
        e.errcode,
        e.errmsg,
        e.response.text if e.response is not None else None,
    )


def sdk_call(what, fn, *args, **kwargs):
    """Calls the SDK; an SDK exception becomes a failed check that says what came back."""
    try:
        return fn(*args, **kwargs)
    except WeChatPayException as e:
        raise CheckFailed("{}: the SDK raised WeChatPayException: {}".format(what, pay_exception_text(e)))
    except WeChatClientException as e:
        body = e.response.text if e.response is not None else None
        raise CheckFailed("{}: the SDK raised {}: {} (answer {!r})".format(what, type(e).__name__, e, body))


def expect_fields(answer, what, **expected):
    for k, v in expected.items():
        check(answer.get(k) == v, "{}: {} = {}".format(what, k, v), "got {!r} in {!r}".format(answer.get(k), answer))


def md5_sign(params, key):
    """WeChat Pay APIv2 MD5 signature, computed here from the published rules: non-empty
    parameters sorted by name (ASCII), joined as k=v with &, then &key=KEY, MD5, upper hex."""
    s = "&".join("{}={}".format(k, params[k]) for k in sorted(params) if params[k] not in (None, ""))
    s += "&key=" + key
    return hashlib.md5(s.encode("utf-8")).hexdigest().upper()


# --- the flow ------------------------------------------------------------------------------


def run(base):
    ctl = Control(base)
    status, health = ctl.get("/simulator/health")
    check(status == 200 and isinstance(health, dict) and health.get("status") == "ok",
          "simulator answers GET /simulator/health", repr(health))
    check(health.get("mode") == "explicit", "simulator runs in explicit mode (orders paid only on request)",
          "mode is {!r}; start it with --mode explicit".format(health.get("mode")))

    ok("wechatpy {} (from {})".format(wechatpy.__version__, wechatpy.__file__))

    client = WeChatPay(appid=APPID, api_key=API_KEY, mch_id=MCH_ID, timeout=HTTP_TIMEOUT)
    # Base URL override: instance attribute shadowing WeChatPay.API_BASE_URL (see docstring).
    client.API_BASE_URL = base + "/"
    for name in ("order", "jsapi"):
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

    # -- a client with the wrong API key ----------------------------------------------------
    bad = WeChatPay(appid=APPID, api_key=WRONG_KEY, mch_id=MCH_ID, timeout=HTTP_TIMEOUT)
    bad.API_BASE_URL = base + "/"
    for what, call in (
        ("order.query", lambda: bad.order.query(out_trade_no=no1)),
        ("order.create", lambda: bad.order.create(
            trade_type="JSAPI", body="bad key", total_fee=1, notify_url="http://127.0.0.1:9/n",
            client_ip="127.0.0.1", user_id=openid, out_trade_no=new_out_trade_no("c"))),
    ):
        try:
            r = call()
            raise CheckFailed("{} with a wrong key: expected WeChatPayException, got {!r}".format(what, r))
        except WeChatPayException as e:
            check(e.return_code == "FAIL" and e.return_msg == "签名错误",
                  "{} with a wrong key raises WeChatPayException return_code FAIL, return_msg 签名错误".format(what),
                  pay_exception_text(e))


def main(argv):
    if len(argv) != 2 or not argv[1].startswith(("http://", "https://")):
        print("usage: {} SIMULATOR_BASE_URL   (e.g. http://127.0.0.1:8090)".format(argv[0]), file=sys.stderr)
        return 2
    base = argv[1].rstrip("/")
    try:
        run(base)
    except CheckFailed as e:
        print("FAIL  " + str(e), flush=True)
        return 1
    except Exception as e:  # an SDK or network error that no check anticipated
        print("FAIL  unexpected {}: {}".format(type(e).__name__, e), flush=True)
        raise
    print("PASS  wechatpy {} conforms against {}".format(wechatpy.__version__, base), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
