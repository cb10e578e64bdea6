"""wechatpayv3 (the Python APIv3 SDK, installed unchanged from PyPI) against `wxpay simulator`.

The SDK is pointed at the simulator by its one base URL (`_gate_way`, set after
construction: the SDK has no parameter for it) and given the key files the simulator wrote
in its keys folder, exactly as a merchant gives it the files of the merchant platform. It
creates, queries and closes orders, refunds and queries the refund, lists the platform
certificates (decrypting them with the APIv3 key), downloads the gzip trade bill, and
verifies and decrypts the simulator's payment and refund notifications with its own
verifier. Both of WeChat Pay's signing modes are run: the WeChat Pay public key
(`PUB_KEY_ID_…`) and the platform certificate.
"""

import base64
import gzip
import hashlib
import http.server
import json
import os
import shutil
import threading
import time
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.padding import PKCS1v15
from cryptography.hazmat.primitives.hashes import SHA256
from wechatpayv3 import WeChatPay, WeChatPayType

from common import BEIJING, JsonHttp, check, new_out_trade_no, require

MCH_ID = "1230000109"
APPID = "wxd678efh567hg6787"
# The built-in test merchant's APIv3 key: public, test only (README).
APIV3_KEY = "wxpaySimulatorApiV3TestKey000001"
OPENID = "oV3ConformanceUser"


class V3Sink:
    """A notify URL that records each notification's headers and raw body and answers 204."""

    def __init__(self):
        self.got = []  # (headers as a dict, body text)
        self.cond = threading.Condition()
        sink = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n).decode("utf-8")
                with sink.cond:
                    sink.got.append(({k: v for k, v in self.headers.items()}, body))
                    sink.cond.notify_all()
                self.send_response(204)
                self.end_headers()

            def log_message(self, fmt, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    def url(self):
        host, port = self.server.server_address[:2]
        return "http://{}:{}/notify/v3".format(host, port)

    def wait(self, count, timeout=10):
        deadline = time.monotonic() + timeout
        with self.cond:
            while len(self.got) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.cond.wait(left)
            return list(self.got)


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def client(base, keys, sink, signer, work):
    """The SDK as a merchant configures it, with the simulator's files."""
    merchant = os.path.join(keys, MCH_ID)
    kwargs = dict(
        wechatpay_type=WeChatPayType.MINIPROG,
        mchid=MCH_ID,
        private_key=read(os.path.join(merchant, "apiclient_key.pem")),
        cert_serial_no=read(os.path.join(merchant, "apiclient_serial")).strip(),
        appid=APPID,
        apiv3_key=APIV3_KEY,
        notify_url=sink.url(),
        timeout=(5, 10),
    )
    if signer == "public-key":
        kwargs.update(public_key=read(os.path.join(keys, "pub_key.pem")),
                      public_key_id=read(os.path.join(keys, "pub_key_id")).strip())
    else:
        # The platform certificate as a merchant keeps it: a folder of downloaded certificates
        # (the SDK would otherwise download them from WeChat Pay at construction).
        cert_dir = os.path.join(work, "wechatpayv3-certs")
        shutil.rmtree(cert_dir, ignore_errors=True)
        os.makedirs(cert_dir)
        shutil.copy(os.path.join(keys, "platform_cert.pem"), cert_dir)
        kwargs.update(cert_dir=cert_dir)
    pay = WeChatPay(**kwargs)
    pay._core._gate_way = base
    return pay


def answer(what, result, status):
    code, message = result
    require(code == status, what, "HTTP {} {!r}".format(code, message))
    return json.loads(message) if isinstance(message, str) and message else message


def run(base, keys, signer, work):
    ctl = JsonHttp(base)
    sink = V3Sink()
    try:
        pay = client(base, keys, sink, signer, work)
        tag = "({} signer)".format(signer)

        # An order, its wx.requestPayment parameters, a query.
        no = new_out_trade_no("v3")
        created = answer("pay", pay.pay(description="咖啡", out_trade_no=no, amount={"total": 2588, "currency": "CNY"},
                                        payer={"openid": OPENID}, attach="table 7"), 200)
        prepay_id = created.get("prepay_id", "")
        check(prepay_id.startswith("wx"), "wechatpayv3 creates a JSAPI order {}, every answer verified".format(tag))
        ts, nonce = str(int(time.time())), "conformanceNonce0001"
        pay_sign = pay.sign([APPID, ts, nonce, "prepay_id=" + prepay_id])
        merchant_cert = x509.load_pem_x509_certificate(read(os.path.join(keys, MCH_ID, "apiclient_cert.pem")).encode())
        message = "{}\n{}\n{}\nprepay_id={}\n".format(APPID, ts, nonce, prepay_id).encode()
        merchant_cert.public_key().verify(base64.b64decode(pay_sign), message, PKCS1v15(), SHA256())
        check(True, "wechatpayv3's paySign (RSA) verifies with the simulator-issued apiclient_cert.pem")
        q = answer("query", pay.query(out_trade_no=no), 200)
        check(q.get("trade_state") == "NOTPAY" and q["amount"]["total"] == 2588,
              "a query by out_trade_no says NOTPAY and 2588 fen {}".format(tag), repr(q))

        # Paid: the notification verifies and decrypts with the SDK's own code.
        status, body = ctl.post("/simulator/pay", {"out_trade_no": no, "outcome": "success"})
        require(status == 200, "POST /simulator/pay", repr(body))
        got = sink.wait(1)
        require(len(got) >= 1, "the payment notification", "none arrived")
        event = pay.callback(got[0][0], got[0][1])
        check(event is not None and event["event_type"] == "TRANSACTION.SUCCESS"
              and event["resource"]["out_trade_no"] == no and event["resource"]["amount"]["total"] == 2588,
              "the payment notification verifies and decrypts with wechatpayv3 {}".format(tag), repr(event))
        transaction_id = event["resource"]["transaction_id"]
        q = answer("query by id", pay.query(transaction_id=transaction_id), 200)
        check(q.get("trade_state") == "SUCCESS", "a query by transaction_id says SUCCESS", repr(q))

        # A refund, its notification, its query.
        rno = "R" + no
        r = answer("refund", pay.refund(out_refund_no=rno, amount={"refund": 588, "total": 2588, "currency": "CNY"},
                                        out_trade_no=no, reason="cold", notify_url=sink.url()), 200)
        check(r.get("status") == "PROCESSING" and r["amount"]["refund"] == 588,
              "wechatpayv3 asks a refund (no client certificate on APIv3) {}".format(tag), repr(r))
        got = sink.wait(2)
        require(len(got) >= 2, "the refund notification", "none arrived")
        event = pay.callback(got[1][0], got[1][1])
        check(event is not None and event["event_type"] == "REFUND.SUCCESS"
              and event["resource"]["out_refund_no"] == rno and event["resource"]["amount"]["refund"] == 588,
              "the refund notification verifies and decrypts with wechatpayv3", repr(event))
        r = answer("query_refund", pay.query_refund(out_refund_no=rno), 200)
        check(r.get("status") == "SUCCESS", "a refund query says SUCCESS", repr(r))

        # Close, and what WeChat Pay answers after.
        closing = new_out_trade_no("v3c")
        answer("pay", pay.pay(description="茶", out_trade_no=closing, amount={"total": 100},
                              payer={"openid": OPENID}), 200)
        code, _ = pay.close(out_trade_no=closing)
        check(code == 204, "wechatpayv3 closes an order (204, the empty answer verified)", "HTTP {}".format(code))
        code, message = pay.pay(description="茶", out_trade_no=closing, amount={"total": 100}, payer={"openid": OPENID})
        check(code == 400 and json.loads(message).get("code") == "ORDER_CLOSED",
              "ordering a closed number again is ORDER_CLOSED", "HTTP {} {}".format(code, message))

        # The platform certificates, downloaded and decrypted by the SDK.
        pay._core._update_certificates()
        serials = [c.serial_number for c in pay._core._certificates]
        expected = x509.load_pem_x509_certificate(read(os.path.join(keys, "platform_cert.pem")).encode()).serial_number
        check(serials == [expected],
              "wechatpayv3 downloads /v3/certificates and decrypts them with the APIv3 key", repr(serials))

        # The day's bill, as gzip (the SDK's default), checked against its SHA1: the digest of
        # the bill itself, after gunzip ("原始账单(gzip需要解压缩)的摘要值").
        today = datetime.now(BEIJING).strftime("%Y-%m-%d")
        bill = answer("trade_bill", pay.trade_bill(bill_date=today), 200)
        code, data = pay.download_bill(bill["download_url"])
        require(code == 200, "download_bill", "HTTP {}".format(code))
        plain = gzip.decompress(data)
        check(hashlib.sha1(plain).hexdigest() == bill["hash_value"],
              "the downloaded bill, gunzipped, matches the SHA1 the trade bill gave")
        text = plain.decode("utf-8")
        check(no in text and "25.88" in text, "the bill is gzip and lists the order in yuan")

        # A forged notification: the SDK's verifier refuses it.
        forged_no = new_out_trade_no("v3f")
        status, body = ctl.post("/simulator/faults", {"kind": "notify_bad_signature", "out_trade_no": forged_no})
        require(status == 201, "a notify_bad_signature fault", repr(body))
        answer("pay", pay.pay(description="茶", out_trade_no=forged_no, amount={"total": 100},
                              payer={"openid": OPENID}), 200)
        ctl.post("/simulator/pay", {"out_trade_no": forged_no, "outcome": "success"})
        got = sink.wait(3)
        require(len(got) >= 3, "the forged notification", "none arrived")
        check(pay.callback(got[2][0], got[2][1]) is None,
              "a notification with a bad signature is refused by wechatpayv3's verifier")

        # A replay: signed ten minutes ago. WeChat Pay's rule is to refuse it (300 s); what this
        # SDK does is reported, not required, since it is the SDK's behaviour, not wxpay's.
        stale_no = new_out_trade_no("v3s")
        ctl.post("/simulator/faults", {"kind": "notify_stale_timestamp", "out_trade_no": stale_no})
        answer("pay", pay.pay(description="茶", out_trade_no=stale_no, amount={"total": 100},
                              payer={"openid": OPENID}), 200)
        ctl.post("/simulator/pay", {"out_trade_no": stale_no, "outcome": "success"})
        got = sink.wait(4)
        require(len(got) >= 4, "the stale notification", "none arrived")
        accepted = pay.callback(got[3][0], got[3][1]) is not None
        print("note  wechatpayv3 {} a notification signed 600 s ago (wxpay's verifier refuses it)".format(
            "ACCEPTS" if accepted else "refuses"), flush=True)
    finally:
        sink.close()
    return True
