"""
Smoke test of ``python -m bench.subdoc_bench`` (issue 15's rows): it starts
a real ``twistd txcb --ephemeral``, runs get / lookup1 / upsert / mutate1 a
few times, prints the table and both ratios, writes the JSON and stops the
server.  It checks that the harness works, not how fast anything is.
"""

import json
import os
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

from tests.support import ROOT


class SubdocBenchSmokeTests(SynchronousTestCase):

    def test_rows_ratios_and_json(self):
        out = os.path.abspath(self.mktemp())
        proc = subprocess.run(
            [sys.executable, "-m", "bench.subdoc_bench", "--ops", "100", "--rounds", "1",
             "--json", out], cwd=ROOT, capture_output=True, text=True, timeout=120,
            env=dict(os.environ, PYTHONPATH=ROOT))
        self.assertEqual(proc.returncode, 0, proc.stderr[-2000:])
        for row in ("get", "lookup1", "upsert", "mutate1"):
            self.assertRegex(proc.stdout, r"(?m)^%s +\d+\.\d +\d+\.\d +\d+\.\d$" % row)
        self.assertRegex(proc.stdout, r"lookup1 / get = \d+\.\d\d \(target <= 1\.5")
        self.assertRegex(proc.stdout, r"mutate1 / upsert = \d+\.\d\d \(target <= 2\.0")
        with open(out) as f:
            report = json.load(f)
        self.assertEqual([r["row"] for r in report["ratios"]], ["lookup1", "mutate1"])
        for name in ("get", "lookup1", "upsert", "mutate1"):
            self.assertGreater(report["rows"][name]["server_cpu_us"], 0)
