"""
Issue 13, the first hour: README.rst's main Twisted example ("Using it from
Twisted"), read from the README and run in a subprocess, ends on its own,
with one clear line when no server runs, and to the end against a real
``twistd -n txcb --ephemeral``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

from twisted.trial import unittest

from tests.support import ROOT
from tests.support.procs import free_port, start_txcb_twistd

#: How long the example may take, either way.
EXAMPLE_TIMEOUT = 30


def readme_twisted_example() -> str:
    """The first python code block under "Using it from Twisted"."""
    with open(os.path.join(ROOT, "README.rst"), encoding="utf-8") as f:
        text = f.read()
    section = text[text.index("Using it from Twisted\n=="):]
    block = re.search(r"\.\. code-block:: python\n\n((?:    .*\n|\n)+)", section)
    assert block is not None, "no python code block under 'Using it from Twisted'"
    return "\n".join(line[4:] for line in block.group(1).splitlines()) + "\n"


def on_port(code: str, port: int) -> str:
    """The example, talking to ``port`` instead of 11222."""
    assert code.count("11222") == 1, "the example should name port 11222 once"
    return code.replace("11222", str(port))


def run_example(testcase: unittest.TestCase, code: str) -> subprocess.CompletedProcess:
    """Run ``code`` as a script from this checkout, within EXAMPLE_TIMEOUT."""
    path = os.path.abspath(testcase.mktemp()) + ".py"
    with open(path, "w", encoding="utf-8") as f:
        f.write(code)
    env = dict(os.environ, PYTHONPATH=ROOT)
    try:
        return subprocess.run([sys.executable, path], env=env, capture_output=True,
                              text=True, timeout=EXAMPLE_TIMEOUT)
    except subprocess.TimeoutExpired as e:
        raise AssertionError("the README example did not end within %ss:\n%s%s"
                             % (EXAMPLE_TIMEOUT, e.stdout, e.stderr))


def start_txcb(testcase: unittest.TestCase) -> int:
    """A real ``twistd -n txcb --ephemeral`` on a free loopback port (returned)."""
    port = free_port()
    start_txcb_twistd(testcase, ["--ephemeral", "--port", "tcp:%d:interface=127.0.0.1" % port],
                      port)
    return port


class ReadmeTwistedExampleTests(unittest.TestCase):
    """README.rst's "Using it from Twisted" example, as a user runs it."""

    timeout = 2 * EXAMPLE_TIMEOUT + 30

    def test_readme_example_without_a_server_prints_one_line_and_exits(self):
        """
        Regression (issue 13): with no server the example hung forever after
        "Unhandled error in Deferred ... ConnectError".
        """
        out = run_example(self, on_port(readme_twisted_example(), free_port()))
        lines = (out.stdout + out.stderr).strip().splitlines()
        self.assertEqual(len(lines), 1, lines)
        self.assertIn("failed:", lines[0])
        self.assertIn("refused", lines[0].lower())
        self.assertNotIn("Traceback", out.stdout + out.stderr)
        self.assertNotIn("Unhandled", out.stdout + out.stderr)

    def test_readme_example_runs_to_the_end_against_twistd(self):
        out = run_example(self, on_port(readme_twisted_example(), start_txcb(self)))
        self.assertEqual(out.returncode, 0, out.stdout + out.stderr)
        self.assertEqual(out.stderr, "")
        lines = out.stdout.splitlines()
        self.assertEqual([line.split(" ")[0] for line in lines],
                         ["stored,", "read", "insert", "locked:", "visits", "multi",
                          "missing:", "quiet"])
        self.assertIn("read {'name': 'Ada', 'langs': ['en']} cas", out.stdout)
        self.assertIn("visits 105", out.stdout)
        self.assertIn("multi {'a': 1, 'b': 'two', 'user:1': {'name': 'Ada L.'}}", out.stdout)
        self.assertIn("quiet miss, success = False", out.stdout)
        self.assertNotIn("failed:", out.stdout)
