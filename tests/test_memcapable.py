"""
Conformance: libmemcached's ``memccapable`` (Debian: libmemcached-tools) run
against a real ``twistd txcb --memcached`` process, ASCII (-a) and binary
(-b).  Every test it has must pass: 27 + 27 in libmemcached 1.1.

Skipped, with the reason, only where the tool is not installed (``.ci/run``
installs it).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

from twisted.trial import unittest

from tests.support import ROOT
from tests.support.procs import free_port

MEMCAPABLE = shutil.which("memccapable") or shutil.which("memcapable")
#: Tests per protocol in libmemcached 1.1's memcapable (Debian bookworm's 1.1.4).
EXPECTED_TESTS = 27

_RESULT = re.compile(r"^((?:ascii|binary) [^\[\n]*?)\s*\[(pass|FAIL|skip)\]\s*$", re.M)


def start_twistd(testcase: unittest.TestCase, *extra: str) -> int:
    """
    Start ``twistd -n txcb --memcached PORT`` from this checkout; returns the
    port.  The process is stopped by its pid at cleanup (SIGTERM, then KILL).
    """
    from txcb.service import tap
    port = free_port()
    workdir = os.path.abspath(testcase.mktemp())
    os.makedirs(workdir)
    log = os.path.join(workdir, "twistd.log")
    argv = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
            "-n", "--pidfile=", "--logfile", log, "txcb",
            "--port", "tcp:0:interface=127.0.0.1",
            "--memcached", "tcp:%d:interface=127.0.0.1" % port] + list(extra)
    if "--ephemeral" in str(tap.Options()):
        argv.append("--ephemeral")
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.Popen(argv, cwd=workdir, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)

    def stop() -> None:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(10)
    testcase.addCleanup(stop)
    deadline = time.time() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                text = open(log).read() if os.path.exists(log) else ""
                raise AssertionError("twistd did not start (exit %s):\n%s"
                                     % (proc.poll(), text[-3000:]))
            time.sleep(0.1)
    testcase.twistd_log = log
    return port


class MemcapableTests(unittest.SynchronousTestCase):
    if MEMCAPABLE is None:
        skip = ("memccapable/memcapable not installed "
                "(Debian: apt-get install libmemcached-tools)")

    def run_memcapable(self, flag: str) -> None:
        port = start_twistd(self)
        out = subprocess.run([MEMCAPABLE, "-h", "127.0.0.1", "-p", str(port), "-t", "5", flag],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=180)
        text = out.stdout.decode("utf-8", "replace")
        results = _RESULT.findall(text)
        failed = [name for name, status in results if status == "FAIL"]
        self.assertEqual(failed, [], "memcapable %s failures:\n%s" % (flag, text))
        self.assertEqual(out.returncode, 0, text)
        self.assertIn("All tests passed", text)
        self.assertEqual(len(results), EXPECTED_TESTS,
                         "memcapable %s ran %d tests, expected %d:\n%s"
                         % (flag, len(results), EXPECTED_TESTS, text))
        self.assertEqual([s for _n, s in results], ["pass"] * EXPECTED_TESTS, text)
        with open(self.twistd_log) as f:
            self.assertNotIn("Traceback", f.read())

    def test_ascii_protocol(self) -> None:
        self.run_memcapable("-a")

    def test_binary_protocol(self) -> None:
        self.run_memcapable("-b")
