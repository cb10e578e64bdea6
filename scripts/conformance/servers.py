"""Starting `wxpay simulator` and `wxpay serve` for the conformance run.

Each server listens on 127.0.0.1:0 and the address the system chose is read from the line it
prints on stderr (`WeChat Pay simulator at URL`, `wxpay gateway at URL`): no port is picked
free and released first, so none can be taken in between. Its stdout and stderr go to a log
file, which is shown when it does not come up. It gets the caller's environment without any
`WXPAY_*` variable: a developer's WXPAY_DATABASE_URL, WXPAY_CONFIG or WXPAY_MERCHANTS_0_API_KEY
must not reach a test server. It is stopped (SIGTERM, then SIGKILL after 10 s) when the `with`
block ends, and asked to stop by the kernel (SIGTERM) if this process dies first.
"""

import ctypes
import os
import re
import signal
import subprocess
import time

from common import CheckFailed, ok

READY_TIMEOUT = 30  # seconds; a debug build starting on a busy two-core machine


def scrubbed_env():
    """This process's environment without WXPAY_* (and without REQUESTS_CA_BUNDLE, which is
    the SDK's business, not the servers')."""
    return {k: v for k, v in os.environ.items() if not k.startswith("WXPAY_") and k != "REQUESTS_CA_BUNDLE"}


try:
    _LIBC = ctypes.CDLL(None, use_errno=True)
    _PRCTL = _LIBC.prctl
except (OSError, AttributeError):
    _PRCTL = None


def _die_with_parent():
    # Linux: SIGTERM to the child when the process that started it dies (even by SIGKILL).
    # Runs between fork and exec, so it only calls the function looked up beforehand.
    if _PRCTL is not None:
        _PRCTL(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG


def tail(path, n=60):
    try:
        with open(path, "r", encoding="utf-8", errors="replace") as f:
            lines = f.readlines()
    except OSError as e:
        return "(cannot read {}: {})\n".format(path, e)
    return "".join(lines[-n:])


class Server:
    """`with Server(name, argv, ready_pattern, log_path) as s:` runs argv until the block ends;
    s.url is the address from the first line matching ready_pattern (its group 1)."""

    def __init__(self, name, argv, ready_pattern, log_path):
        self.name = name
        self.argv = argv
        self.ready = re.compile(ready_pattern, re.MULTILINE)
        self.log_path = log_path
        self.proc = None
        self.url = None

    def __enter__(self):
        os.makedirs(os.path.dirname(self.log_path), exist_ok=True)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=scrubbed_env(),
                preexec_fn=_die_with_parent,
            )
        try:
            self.url = self._wait_ready()
        except BaseException:
            self.stop()
            raise
        ok("{} (pid {}) at {}, log in {}".format(self.name, self.proc.pid, self.url, self.log_path))
        return self

    def _wait_ready(self):
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            with open(self.log_path, "r", encoding="utf-8", errors="replace") as f:
                m = self.ready.search(f.read())
            if m:
                return m.group(1)
            code = self.proc.poll()
            if code is not None:
                raise CheckFailed("{} exited with status {} before it said where it listens; its log ({}):\n{}".format(
                    self.name, code, self.log_path, tail(self.log_path)))
            if time.monotonic() > deadline:
                raise CheckFailed("{} did not print a line matching {!r} within {} s; its log ({}):\n{}".format(
                    self.name, self.ready.pattern, READY_TIMEOUT, self.log_path, tail(self.log_path)))
            time.sleep(0.05)

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self):
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __exit__(self, exc_type, exc, tb):
        self.stop()
        if exc_type is not None:
            shown = "--- {}: the end of its log ({}) ---\n{}".format(self.name, self.log_path, tail(self.log_path, 40))
            if isinstance(exc, CheckFailed):
                exc.logs.append(shown)  # shown after the FAIL line
            else:
                print(shown, flush=True)


def simulator(binary, log_path, *args):
    return Server("wxpay simulator", [binary, "simulator", "--listen", "127.0.0.1:0", *args],
                  r"^WeChat Pay simulator at (https?://\S+)\s*$", log_path)


def gateway(binary, log_path, config_path):
    return Server("wxpay serve", [binary, "serve", "--config", config_path],
                  r"^wxpay gateway at (http://\S+)\s*$", log_path)
