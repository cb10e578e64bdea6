#!/usr/bin/env python3
"""Hostile bodies against a running gateway, measured from outside: the trust report's XXE
(item 10), billion laughs (item 11) and size cap (item 13) run, started by
`scripts/long-runs.sh hostile`, which gives the gateway's address, pid, log and database.

XXE: documents whose entities name a canary file and a listener of our own, sent to both
APIv2 notification paths; every one must be refused with a 4xx, the canary's text must be in
no answer, no log line (the gateway logs at TRACE) and no database page, and the listener must
see no connection. Billion laughs: the classic sample and two larger variants, 300 times;
every answer a 4xx within 100 ms, the resident memory no more than 10 MiB above what it was.
Size cap: bodies of 1 MiB and of 256 MiB (declared, and chunked with no length) from 8
clients at once; every one answered 413, and the resident memory again within 10 MiB, so the
gateway stopped reading at its limit instead of buffering the body. Prints one JSON object.
"""
import http.client
import json
import os
import secrets
import socket
import sys
import threading
import time

host, port = sys.argv[1].split(":")
port = int(port)
pid, log_path, db_path, work = int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]


def rss_kib():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise SystemExit("the gateway is gone")


def post(path, body, headers=None):
    """One request on its own connection: (status, answer bytes, seconds)."""
    c = http.client.HTTPConnection(host, port, timeout=30)
    t = time.perf_counter()
    c.request("POST", path, body=body, headers={"Content-Type": "text/xml", **(headers or {})})
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, data, time.perf_counter() - t


# The listener an external entity would reach: it counts connections.
listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen(64)
lport = listener.getsockname()[1]
connections = []


def accept():
    while True:
        try:
            s, addr = listener.accept()
        except OSError:
            return
        connections.append(addr)
        s.close()


threading.Thread(target=accept, daemon=True).start()

canary = "WXPAY-CANARY-" + secrets.token_hex(12)
canary_file = os.path.join(work, "canary.txt")
open(canary_file, "w").write(canary + "\n")
url = f"http://127.0.0.1:{lport}"
fields = ("<return_code>SUCCESS</return_code><appid>wxd678efh567hg6787</appid>"
          "<mch_id>1230000109</mch_id><out_trade_no>{v}</out_trade_no><total_fee>1</total_fee>")
xxe = {
    "file entity": f'<!DOCTYPE xml [<!ENTITY c SYSTEM "file://{canary_file}">]><xml>' + fields.format(v="&c;") + "</xml>",
    "http entity": f'<!DOCTYPE xml [<!ENTITY c SYSTEM "{url}/e">]><xml>' + fields.format(v="&c;") + "</xml>",
    "parameter entity": f'<!DOCTYPE xml [<!ENTITY % p SYSTEM "{url}/p"> %p;]><xml>' + fields.format(v="1") + "</xml>",
    "external DTD": f'<!DOCTYPE xml SYSTEM "{url}/dtd"><xml>' + fields.format(v="1") + "</xml>",
    "public DTD": f'<!DOCTYPE xml PUBLIC "-//W//X" "{url}/pub"><xml>' + fields.format(v="1") + "</xml>",
    "XInclude": f'<xml xmlns:xi="http://www.w3.org/2001/XInclude">' + fields.format(v="1")
                + f'<attach><xi:include href="file://{canary_file}" parse="text"/></attach></xml>',
    "entity in attribute default": f'<!DOCTYPE xml [<!ATTLIST xml a CDATA "{url}/a">]><xml>' + fields.format(v="1") + "</xml>",
    "UTF-16 file entity": None,  # filled below
}
xxe["UTF-16 file entity"] = ('<?xml version="1.0" encoding="UTF-16"?>' + xxe["file entity"]).encode("utf-16")
xxe_answers = []
for name, body in xxe.items():
    for path in ("/notify/v2/pay", "/notify/v2/refund"):
        st, data, _ = post(path, body if isinstance(body, bytes) else body.encode())
        xxe_answers.append({"sample": name, "path": path, "status": st, "canary_in_answer": canary.encode() in data})
time.sleep(1)  # a fetch the gateway started would have reached the listener by now

# Billion laughs: the classic one, one that expands 10^9-fold (nine levels of ten), and the
# quadratic blowup (a 32 KiB entity referenced 1,000 times) that needs no nesting.
laughs = open(os.path.join(os.path.dirname(__file__), "..", "testdata", "vectors", "xml", "billion-laughs.xml"), "rb").read()
nested = "".join(f'<!ENTITY l{i} "' + f"&l{i - 1};" * 10 + '">' for i in range(1, 10))
billion = f'<!DOCTYPE xml [<!ENTITY l0 "lol">{nested}]><xml><attach>&l9;</attach></xml>'.encode()
quadratic = ('<!DOCTYPE xml [<!ENTITY q "' + "q" * 32768 + '">]><xml><attach>' + "&q;" * 1000 + "</attach></xml>").encode()
for _ in range(10):  # warm-up: the connection handling's own buffers are not growth
    post("/notify/v2/pay", laughs)
rss0 = rss_kib()
times, statuses = [], set()
for i in range(300):
    body = (laughs, billion, quadratic)[i % 3]
    st, _, dt = post("/notify/v2/pay" if i % 2 else "/notify/v2/refund", body)
    statuses.add(st)
    times.append(dt)
rss1 = rss_kib()
times.sort()


# Size cap: eight clients at once, each sending 256 MiB as fast as the gateway reads it.
def big(declared, result):
    chunk = b"<" * 65536
    total = 256 * 1024 * 1024
    s = socket.create_connection((host, port), timeout=30)
    head = f"POST /notify/v2/pay HTTP/1.1\r\nHost: {host}\r\nContent-Type: text/xml\r\n"
    head += f"Content-Length: {total}\r\n\r\n" if declared else "Transfer-Encoding: chunked\r\n\r\n"
    s.sendall(head.encode())
    sent = 0
    try:
        while sent < total:
            s.sendall(chunk if declared else b"10000\r\n" + chunk + b"\r\n")
            sent += len(chunk)
    except OSError:
        pass  # the gateway closed the connection: it stopped reading
    s.settimeout(10)
    answer = b""
    try:
        while b"\r\n" not in answer:
            more = s.recv(4096)
            if not more:
                break
            answer += more
    except OSError:
        pass
    s.close()
    status = int(answer.split()[1]) if answer.startswith(b"HTTP/1.1 ") else None
    result.append({"declared": declared, "sent_mib": round(sent / 1048576, 1), "status": status})


try:
    st_1mib, _, _ = post("/notify/v2/pay", b"<" * (1024 * 1024))
except OSError as e:  # the gateway closed the connection before reading it all, unanswered
    st_1mib = f"no answer ({e})"
rss2 = rss_kib()
big_results = []
threads = [threading.Thread(target=big, args=(i % 2 == 0, big_results)) for i in range(8)]
for t in threads:
    t.start()
peak = rss2
while any(t.is_alive() for t in threads):
    peak = max(peak, rss_kib())
    time.sleep(0.05)
rss3 = rss_kib()
listener.close()

time.sleep(1)  # the log writer's thread flushes
log = open(log_path, "rb").read()
db = b"".join(open(p, "rb").read() for p in (db_path, db_path + "-wal") if os.path.exists(p))
out = {
    "xxe": {
        "answers": xxe_answers,
        "all_4xx": all(400 <= a["status"] < 500 for a in xxe_answers),
        "canary_in_answers": sum(a["canary_in_answer"] for a in xxe_answers),
        "canary_in_log": canary.encode() in log,
        "canary_in_db": canary.encode() in db,
        "log_bytes": len(log),
        "db_bytes": len(db),
        "listener_connections": len(connections),
    },
    "laughs": {
        "requests": len(times),
        "statuses": sorted(statuses),
        "p50_ms": round(times[len(times) // 2] * 1000, 2),
        "max_ms": round(times[-1] * 1000, 2),
        "rss_before_kib": rss0,
        "rss_after_kib": rss1,
    },
    "size_cap": {
        "one_mib_status": st_1mib,
        "big": big_results,
        "rss_before_kib": rss2,
        "rss_peak_kib": peak,
        "rss_after_kib": rss3,
    },
}
print(json.dumps(out))
