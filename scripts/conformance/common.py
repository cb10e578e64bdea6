"""What the conformance suites share: checks, the merchant's notify_url, the simulator's
control endpoints, JSON over HTTP, WeChat Pay's bill text and refund-notification encryption.

Only the standard library, wechatpy and its own dependencies (xmltodict, cryptography) are used.
"""

import base64
import hashlib
import http.server
import json
import random
import ssl
import threading
import time
import urllib.error
import urllib.request
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import xmltodict
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from wechatpy.exceptions import WeChatClientException, WeChatPayException

HTTP_TIMEOUT = 10
BEIJING = timezone(timedelta(hours=8))

NOTIFY_ANSWER = (
    b"<xml><return_code><![CDATA[SUCCESS]]></return_code>"
    b"<return_msg><![CDATA[OK]]></return_msg></xml>"
)


class CheckFailed(Exception):
    """A check that failed; `logs` collects the ends of the server logs to show after it."""

    def __init__(self, *args):
        super().__init__(*args)
        self.logs = []


def report_failure(e):
    print("FAIL  " + str(e), flush=True)
    for shown in e.logs:
        print(shown, end="" if shown.endswith("\n") else "\n", flush=True)


def ok(what):
    print("ok    " + what, flush=True)


def check(cond, what, detail=""):
    if not cond:
        raise CheckFailed(what + (": " + detail if detail else ""))
    ok(what)


def require(cond, what, detail=""):
    """A precondition of the next check: fails like a check, prints nothing when it holds."""
    if not cond:
        raise CheckFailed(what + (": " + detail if detail else ""))


def expect_fields(answer, what, **expected):
    for k, v in expected.items():
        check(answer.get(k) == v, "{}: {} = {}".format(what, k, v), "got {!r} in {!r}".format(answer.get(k), answer))


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


def md5_sign(params, key):
    """WeChat Pay APIv2 MD5 signature, computed here from the published rules: non-empty
    parameters sorted by name (ASCII), joined as k=v with &, then &key=KEY, MD5, upper hex."""
    s = "&".join("{}={}".format(k, params[k]) for k in sorted(params) if params[k] not in (None, ""))
    s += "&key=" + key
    return hashlib.md5(s.encode("utf-8")).hexdigest().upper()


def xml_fields(body):
    """The fields of an APIv2 <xml> body, as xmltodict reads them (the SDK's own parser)."""
    return dict(xmltodict.parse(body)["xml"])


def beijing_today():
    return datetime.now(BEIJING).strftime("%Y%m%d")


def beijing_day_with(seconds_left):
    """The Beijing day (YYYYMMDD) that still has `seconds_left` to run: waits for the next
    one when it has less. The simulator's bill is of the day its payments fall on; a run that
    crossed midnight (16:00 UTC) would ask for the wrong day. (wechatpy sets time_expire from
    the wall clock, so the simulator's clock cannot be moved instead.)"""
    now = datetime.now(BEIJING)
    midnight = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    left = (midnight - now).total_seconds()
    if left < seconds_left:
        time.sleep(left + 1)
    return beijing_today()


# --- the merchant's notify_url -------------------------------------------------------------


class NotifySink:
    """A stdlib HTTP server on 127.0.0.1:0 that records every body posted to it and answers
    SUCCESS (so that the simulator stops sending it)."""

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

    def wait_for(self, path, timeout, match=None):
        """The first body posted to `path` (and, if given, for which `match(body)` is true),
        waiting up to `timeout` seconds; (None, None) if none came."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for p, ctype, body in self.bodies:
                    if p == path and (match is None or match(body)):
                        return ctype, body
                left = deadline - time.monotonic()
                if left <= 0:
                    return None, None
                self.cond.wait(left)

    def count(self, path):
        with self.cond:
            return sum(1 for p, _, _ in self.bodies if p == path)


# --- JSON over HTTP: the simulator's control endpoints, the gateway's API ------------------


class JsonHttp:
    """JSON requests to one base URL; `call` gives (status, decoded JSON or text, headers)."""

    def __init__(self, base, cafile=None, headers=None):
        self.base = base.rstrip("/")
        self.context = ssl.create_default_context(cafile=cafile) if cafile else None
        self.headers = dict(headers or {})

    def call(self, method, path, payload=None, headers=None, raw=None, content_type=None):
        data = raw if raw is not None else (None if payload is None else json.dumps(payload).encode("utf-8"))
        req = urllib.request.Request(self.base + path, data=data, method=method)
        for k, v in {**self.headers, **(headers or {})}.items():
            req.add_header(k, v)
        if data is not None:
            req.add_header("Content-Type", content_type or "application/json")
        try:
            with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT, context=self.context) as r:
                status, body, hdrs = r.status, r.read(), r.headers
        except urllib.error.HTTPError as e:
            status, body, hdrs = e.code, e.read(), e.headers
        text = body.decode("utf-8", "replace")
        if (hdrs.get("Content-Type") or "").startswith("application/json"):
            try:
                return status, json.loads(text), hdrs
            except ValueError:
                pass
        return status, text, hdrs

    def get(self, path, **kw):
        status, body, _ = self.call("GET", path, **kw)
        return status, body

    def post(self, path, payload=None, **kw):
        status, body, _ = self.call("POST", path, payload, **kw)
        return status, body


def wait_until(fn, timeout=10, interval=0.05):
    """Polls `fn` until it returns something true; returns it, or the last value at the timeout."""
    deadline = time.monotonic() + timeout
    while True:
        v = fn()
        if v or time.monotonic() > deadline:
            return v
        time.sleep(interval)


# --- the bill (downloadbill's text) --------------------------------------------------------


def yuan_to_fen(v):
    """'19.99' -> 1999, exactly (no float)."""
    return int((Decimal(v) * 100).to_integral_exact())


def parse_bill(text):
    """WeChat Pay's bill text (protocol.md G.1/G.6), parsed here independently of wxpay: an
    optional BOM, CRLF or LF lines, a header line of column names, one line per row whose
    values each start with a backtick and are separated by ",`", then the summary's header
    (starting with 总交易单数) and its one line. Returns (rows as dicts, summary as dict)."""
    text = text[1:] if text.startswith("\ufeff") else text
    lines = [l for l in text.replace("\r\n", "\n").split("\n") if l.strip()]
    if len(lines) < 3:
        raise CheckFailed("the bill has {} non-empty lines, expected at least 3: {!r}".format(len(lines), text[:500]))
    summary_at = next((i for i, l in enumerate(lines) if l.startswith("总交易单数")), None)
    if summary_at is None or summary_at + 1 >= len(lines):
        raise CheckFailed("the bill has no summary (a header line starting with 总交易单数): {!r}".format(text[:500]))

    def values(line):
        if not line.startswith("`"):
            raise CheckFailed("a bill value line does not start with a backtick: {!r}".format(line))
        return line[1:].split(",`")

    header = lines[0].split(",")
    rows = []
    for line in lines[1:summary_at]:
        v = values(line)
        if len(v) != len(header):
            raise CheckFailed("a bill row has {} values for {} columns: {!r}".format(len(v), len(header), line))
        rows.append(dict(zip(header, v)))
    s_header = lines[summary_at].split(",")
    s_values = values(lines[summary_at + 1])
    if len(s_values) != len(s_header):
        raise CheckFailed("the bill summary has {} values for {} columns".format(len(s_values), len(s_header)))
    return rows, dict(zip(s_header, s_values))


# --- the refund notification's req_info, made the way WeChat Pay makes it -----------------


def refund_aes_key(api_key):
    """The AES-256 key of req_info: the 32 ASCII characters of the lower-case hex MD5 of the
    APIv2 key (protocol.md A.6)."""
    return hashlib.md5(api_key.encode("ascii")).hexdigest().encode("ascii")


def encrypt_req_info(plaintext, api_key):
    """AES-256-ECB with PKCS#7 padding to 16-byte blocks, then Base64, with `cryptography`.

    Not wechatpy's own `RefundCrypto.encrypt`: that pads with wechatpy's PKCS7Encoder, whose
    block size is 32 (the padding of WeChat's *message* encryption), so it appends 1 to 32
    bytes of value 1 to 32; WeChat Pay (Java AES/ECB/PKCS5Padding) appends 1 to 16."""
    padder = padding.PKCS7(128).padder()
    data = padder.update(plaintext.encode("utf-8")) + padder.finalize()
    enc = Cipher(algorithms.AES(refund_aes_key(api_key)), modes.ECB()).encryptor()
    return base64.b64encode(enc.update(data) + enc.finalize()).decode("ascii")


def decrypt_req_info_strict(req_info, api_key):
    """The inverse, refusing anything but PKCS#7 padding to 16-byte blocks."""
    data = base64.b64decode(req_info)
    dec = Cipher(algorithms.AES(refund_aes_key(api_key)), modes.ECB()).decryptor()
    plain = dec.update(data) + dec.finalize()
    unpadder = padding.PKCS7(128).unpadder()
    return (unpadder.update(plain) + unpadder.finalize()).decode("utf-8")


def check_refund_crypto_vector():
    """The encryption above against the published vector V2-REFUND-2 (protocol.md A.6, from
    IJPay's tests): API key 42cc1d91bab89b65ff55b19e28fff4f0, plaintext IJPay."""
    key = "42cc1d91bab89b65ff55b19e28fff4f0"
    check(refund_aes_key(key) == b"1c26ff4ebc15b88a8829febe1789c130",
          "req_info AES key = lower-case hex MD5 of the API key (vector V2-REFUND-2)", repr(refund_aes_key(key)))
    got = encrypt_req_info("IJPay", key)
    check(got == "K8fdh/6THGfTKio8pxXS6Q==",
          "AES-256-ECB/PKCS#7 of 'IJPay' = K8fdh/6THGfTKio8pxXS6Q== (vector V2-REFUND-2)", got)
