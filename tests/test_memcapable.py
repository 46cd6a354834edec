"""
Conformance: libmemcached's ``memccapable`` (Debian: libmemcached-tools) run
against a real ``twistd txcb --memcached`` process, ASCII (-a) and binary
(-b).  Every test it has must pass: 27 + 27 in libmemcached 1.1.

Skipped, with the reason, only where the tool is not installed (``.ci/run``
installs it).
"""

from __future__ import annotations

import re
import shutil
import subprocess

from twisted.trial import unittest

from tests.support.procs import free_port, start_txcb_twistd

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
    args = ["--port", "tcp:0:interface=127.0.0.1",
            "--memcached", "tcp:%d:interface=127.0.0.1" % port] + list(extra)
    if "--ephemeral" in str(tap.Options()):
        args.append("--ephemeral")
    testcase.twistd_log = start_txcb_twistd(testcase, args, port)
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
