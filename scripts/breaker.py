#!/usr/bin/env python3
"""The circuit breaker measured from outside (trust report item 31), run by
`scripts/long-runs.sh breaker` against the release binaries with their default settings
(an order failed after 3 attempts of 8 s at most; 5 such orders in a row open the breaker
for 30 s).

    breaker.py GATEWAY_URL TOKEN SIMULATOR_URL SIMULATOR_PID > result.json

Two ways WeChat Pay goes down, one after the other:
1. it hangs: every unifiedorder is held for a minute (the simulator's `delay` fault);
2. its port is closed: the simulator is killed.
Each time: five orders at once fail slowly and open the breaker; then 200 orders one after
another are timed from the client: each must be refused with 503 in under 100 ms, none may
reach WeChat Pay, none may be stored; meanwhile payment notifications keep being applied
(sent by the simulator in the first case, signed by this script in the second). After the
first, WeChat Pay comes back and, once the 30 s are over, the next order is the probe that
goes through, and the one after it too.
"""

import hashlib
import json
import os
import signal
import sys
import threading
import time
import urllib.error
import urllib.request

GW, TOKEN, SIM, SIM_PID = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
KEY = "wxpaySimulatorTestKey0000000000A"
APPID, MCH_ID, OPENID = "wxd678efh567hg6787", "1230000109", "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"
THRESHOLD, OPEN_FOR_S, FAST_MS = 5, 30, 100
N = 200


def call(method, url, body=None, headers=None, timeout=120):
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if isinstance(body, dict):
        req.add_header("Content-Type", "application/json")
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            status, text = r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        status, text = e.code, e.read().decode()
    ms = (time.perf_counter() - started) * 1000
    try:
        return status, json.loads(text), ms
    except json.JSONDecodeError:
        return status, text, ms


def api(method, path, body=None):
    return call(method, GW + path, body, {"Authorization": f"Bearer {TOKEN}"})


seq = [0]


def order(prefix):
    seq[0] += 1
    no = f"{prefix}{seq[0]:05d}"
    status, v, ms = api("POST", "/v1/orders", {"out_trade_no": no, "amount_fen": 100,
                                               "description": "breaker run", "openid": OPENID})
    return no, status, v, ms


def sim_unifiedorders():
    with urllib.request.urlopen(SIM + "/metrics", timeout=10) as r:
        text = r.read().decode()
    return sum(int(l.rsplit(" ", 1)[1]) for l in text.splitlines()
               if l.startswith('wxpay_sim_requests_total{api="unifiedorder",'))


def gateway_unifiedorders():
    """The gateway's own count of its unifiedorder calls (timed or failed): what it tried,
    whether or not anything answered."""
    status, text, _ = call("GET", GW + "/metrics")
    return sum(int(float(l.rsplit(" ", 1)[1])) for l in text.splitlines()
               if l.startswith(('wxpay_upstream_duration_seconds_count{api="unifiedorder"',
                                'wxpay_upstream_errors_total{api="unifiedorder"')))


def order_status(no):
    return api("GET", f"/v1/orders/{no}")[1].get("status")


def wait_paid(nos, seconds=20):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if all(order_status(no) == "paid" for no in nos):
            return True
        time.sleep(0.2)
    return False


def signed_notification(no, tx):
    fields = {"appid": APPID, "bank_type": "CMC", "cash_fee": "100", "fee_type": "CNY", "is_subscribe": "N",
              "mch_id": MCH_ID, "nonce_str": hashlib.md5(no.encode()).hexdigest(), "openid": OPENID,
              "out_trade_no": no, "result_code": "SUCCESS", "return_code": "SUCCESS",
              "time_end": time.strftime("%Y%m%d%H%M%S", time.gmtime(time.time() + 8 * 3600)),
              "total_fee": "100", "trade_type": "JSAPI", "transaction_id": tx}
    plain = "&".join(f"{k}={fields[k]}" for k in sorted(fields)) + "&key=" + KEY
    fields["sign"] = hashlib.md5(plain.encode()).hexdigest().upper()
    return ("<xml>" + "".join(f"<{k}><![CDATA[{v}]]></{k}>" for k, v in fields.items()) + "</xml>").encode()


def percentile(values, p):
    s = sorted(values)
    return s[min(len(s) - 1, int(len(s) * p))]


def open_the_breaker(prefix):
    """Five orders at once fail at WeChat Pay; their statuses and how long each took."""
    results = [None] * THRESHOLD
    calls = gateway_unifiedorders()

    def one(i):
        _, status, v, ms = order(prefix)
        results[i] = {"status": status, "ms": round(ms)}

    threads = [threading.Thread(target=one, args=(i,)) for i in range(THRESHOLD)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # The count that must stay still while the breaker is open moves here: it sees calls.
    return results, gateway_unifiedorders() - calls


def refused_at_once(prefix, pay, simulator_up):
    """N orders one after another while the breaker is open, with `pay` run beside them."""
    sim_calls = sim_unifiedorders() if simulator_up else None
    gw_calls = gateway_unifiedorders()
    payer = threading.Thread(target=pay)
    payer.start()
    statuses, codes, ms, nos = [], set(), [], []
    for _ in range(N):
        no, status, v, t = order(prefix)
        nos.append(no)
        statuses.append(status)
        ms.append(t)
        if isinstance(v, dict):
            codes.add(v.get("error", {}).get("code"))
    payer.join()
    return {
        "orders": N,
        "statuses": sorted(set(statuses)),
        "codes": sorted(c for c in codes if c),
        "p50_ms": round(percentile(ms, 0.5), 2),
        "p99_ms": round(percentile(ms, 0.99), 2),
        "max_ms": round(max(ms), 2),
        "simulator_calls": (sim_unifiedorders() - sim_calls) if simulator_up else None,
        "gateway_calls": gateway_unifiedorders() - gw_calls,
        "stored": sum(1 for no in nos if api("GET", f"/v1/orders/{no}")[0] != 404),
    }


def main():
    out = {}
    # Orders placed while WeChat Pay is up, to be paid while it is down.
    pending = [order("BRK-UP")[0] for _ in range(10)]
    baseline = [order("BRK-BASE")[3] for _ in range(20)]
    out["baseline_p50_ms"] = round(percentile(baseline, 0.5), 2)

    # 1. WeChat Pay hangs.
    call("POST", SIM + "/simulator/faults",
         {"kind": "delay", "api": "unifiedorder", "delay_ms": 60_000, "for_ms": 600_000})
    started = time.time()
    opening, tried = open_the_breaker("BRK-HANG")
    hang = {"opening": opening, "opening_calls": tried}
    opened = time.time()
    hang["opening_s"] = round(opened - started, 1)

    def pay_by_simulator():
        for no in pending[:5]:
            call("POST", SIM + "/simulator/pay", {"out_trade_no": no})
        hang["notifications_applied"] = wait_paid(pending[:5])

    hang.update(refused_at_once("BRK-OPEN", pay_by_simulator, True))
    call("DELETE", SIM + "/simulator/faults")
    # WeChat Pay is back; the breaker stays open for its 30 s, then lets one probe through.
    while time.time() < opened + OPEN_FOR_S + 1:
        time.sleep(0.5)
    probe = order("BRK-PROBE")
    after = order("BRK-AFTER")
    hang["probe"] = {"status": probe[1], "ms": round(probe[3])}
    hang["after"] = {"status": after[1], "ms": round(after[3])}
    out["hanging"] = hang

    # 2. WeChat Pay's port is closed.
    os.kill(SIM_PID, signal.SIGKILL)
    time.sleep(0.5)
    started = time.time()
    opening, tried = open_the_breaker("BRK-DOWN")
    closed = {"opening": opening, "opening_calls": tried}
    closed["opening_s"] = round(time.time() - started, 1)

    def pay_by_notification():
        notes = []
        for i, no in enumerate(pending[5:]):
            status, reply, _ = call("POST", GW + "/notify/v2/pay", signed_notification(no, f"42000000002026{i:014d}"),
                                    {"Content-Type": "text/xml"})
            notes.append(status)
        closed["notifications_answered"] = notes
        closed["notifications_applied"] = wait_paid(pending[5:])

    closed.update(refused_at_once("BRK-SHUT", pay_by_notification, False))
    out["port_closed"] = closed
    json.dump(out, sys.stdout, indent=1)


if __name__ == "__main__":
    main()
