#!/usr/bin/env python3
"""The whole conformance run: wechatpy and wechatpayv3 against the simulator, then wechatpy
against the gateway.

Usage: run.py WXPAY_BIN WORK_DIR LOG_DIR

  1. `wxpay simulator --tls --bills-immediately` (the built-in test merchant, explicit mode,
     its test CA and client certificates made in WORK_DIR/simulator-tls), and
     wechatpy_conformance.py against it;
  2. wechatpayv3_conformance.py: the APIv3 SDK wechatpayv3 against `wxpay simulator`, once
     with each --v3-signer (the WeChat Pay public key, the platform certificate), sharing the
     keys folder WORK_DIR/simulator-v3-keys as two starts of one simulator would;
  3. gateway_conformance.py: a second simulator with an MD5 and an HMAC-SHA256 merchant,
     `wxpay serve` in front of it on SQLite in WORK_DIR, and the SDK's notifications to it.

Servers listen on 127.0.0.1:0 and are found by the address they print (servers.py), run
without the caller's WXPAY_* variables, log to LOG_DIR, and are stopped at the end. Prints
one line per check; exits 1 at the first failure (after the end of the failing server's log),
0 when everything passed.
"""

import importlib.metadata
import os
import signal
import sys
import time

import wechatpy

import gateway_conformance
import servers
import wechatpy_conformance
import wechatpayv3_conformance
from common import CheckFailed, report_failure


def main(argv):
    if len(argv) != 4:
        print("usage: {} WXPAY_BIN WORK_DIR LOG_DIR".format(argv[0]), file=sys.stderr)
        return 2
    binary, work, logs = (os.path.abspath(a) for a in argv[1:])
    # SIGTERM unwinds like Ctrl-C, so that every server started is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.monotonic()
    try:
        print("== wechatpy {} against `wxpay simulator` (mutual TLS)".format(wechatpy.__version__), flush=True)
        tls_dir = os.path.join(work, "simulator-tls")
        with servers.simulator(binary, os.path.join(logs, "simulator.log"), "--mode", "explicit", "--tls",
                               "--tls-dir", tls_dir, "--keys-dir", os.path.join(work, "simulator-keys"),
                               "--bills-immediately") as sim:
            wechatpy_conformance.with_ca(tls_dir, lambda: wechatpy_conformance.run(sim.url, tls_dir))
        keys = os.path.join(work, "simulator-v3-keys")
        for signer in ("public-key", "certificate"):
            print("== wechatpayv3 {} against `wxpay simulator` (APIv3, --v3-signer {})".format(
                importlib.metadata.version("wechatpayv3"), signer), flush=True)
            with servers.simulator(binary, os.path.join(logs, "simulator-v3-{}.log".format(signer)), "--mode",
                                   "explicit", "--keys-dir", keys, "--v3-signer", signer, "--bills-immediately",
                                   "--time-scale", "100",
                                   # The script pays as a fixed payer, not one issued through
                                   # jscode2session: listed, the simulator accepts it.
                                   "--openid", wechatpayv3_conformance.OPENID) as sim:
                wechatpayv3_conformance.run(sim.url, keys, signer, work)
        print("== wechatpy {} against `wxpay serve` (its notify URLs)".format(wechatpy.__version__), flush=True)
        gateway_conformance.run(binary, os.path.join(work, "gateway"), logs)
    except CheckFailed as e:
        report_failure(e)
        return 1
    print("PASS  wechatpy {} and wechatpayv3 {} conform against the wxpay simulator and gateway ({:.1f} s)".format(
        wechatpy.__version__, importlib.metadata.version("wechatpayv3"), time.monotonic() - started), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
