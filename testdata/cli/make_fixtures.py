#!/usr/bin/env python3
"""Writes the CLI fixtures with an implementation independent of wxpay (hashlib, hmac).

Run from this folder: python3 make_fixtures.py. The outputs are committed; the CLI tests
load them. Keys are the public example keys of WeChat Pay's documentation.
"""
import hashlib
import hmac
import json

KEY = "192006250b4c09247ec02edce69f6a2d"
PAY_KEY = "qazwsxedcrfvtgbyhnujmikolp111111"
BASE = {"appid": "wxd930ea5d5a258f4f", "mch_id": "10000100", "device_info": "1000", "body": "test", "nonce_str": "ibuaiVcKdpRxkhJA"}


def string_a(params, include_empty=False):
    return "&".join(f"{k}={v}" for k, v in sorted(params.items(), key=lambda kv: kv[0].encode()) if include_empty or v != "")


def md5(s):
    return hashlib.md5(s.encode()).hexdigest().upper()


def hmac256(s, key):
    return hmac.new(key.encode(), s.encode(), hashlib.sha256).hexdigest().upper()


def xml(params):
    return "<xml>" + "".join(f"<{k}><![CDATA[{v}]]></{k}>" for k, v in params.items()) + "</xml>\n"


def write(name, text, mode="w"):
    with open(name, mode) as f:
        f.write(text)


# The official example, MD5: 9A0A8659F005D6984697E2CA0A9CF3B7.
p = dict(BASE)
p["sign"] = md5(string_a(BASE) + "&key=" + KEY)
write("official-md5.xml", xml(p))

# The same fields with sign_type=HMAC-SHA256.
p = dict(BASE, sign_type="HMAC-SHA256")
p["sign"] = hmac256(string_a(p) + "&key=" + KEY, KEY)
write("official-hmac.xml", xml(p))

# A signer that kept the empty attach in the signed string.
p = dict(BASE, attach="")
p["sign"] = md5(string_a(p, include_empty=True) + "&key=" + KEY)
write("empty-field-signed.xml", xml(p))

# Lowercase hex.
p = dict(BASE)
p["sign"] = md5(string_a(BASE) + "&key=" + KEY).lower()
write("lowercase-sign.xml", xml(p))

# Mini program parameters whose paySign was computed over lowercase names.
pay = {"appId": "wxd678efh567hg6787", "timeStamp": "1490840662", "nonceStr": "5K8264ILTKCH16CQ2502SI8ZNMTM67VS",
       "package": "prepay_id=wx2017033010242291fcfe0db70013231072", "signType": "MD5"}
lower = {k.lower(): v for k, v in pay.items()}
write("paysign-lowercase-names.json", json.dumps(dict(pay, paySign=md5(string_a(lower) + "&key=" + PAY_KEY)), indent=2) + "\n")
write("paysign-official.json", json.dumps(dict(pay, paySign=md5(string_a(pay) + "&key=" + PAY_KEY)), indent=2) + "\n")

# A body in GBK: not UTF-8.
write("gbk-body.xml", "<xml><body>测试</body><sign>X</sign></xml>\n".encode("gbk"), "wb")
