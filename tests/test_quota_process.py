"""
A real process under a RAM quota: ``twistd txcb --data-dir D --memory-quota
64M`` loaded with 1 GiB of values over several memcached connections keeps
its resident set under the quota plus a fixed overhead, reads every key back
byte for byte, and after a restart on the same data dir warms up within the
quota and still reads back right.  Real because the point is the process's
memory (the interpreter, SQLite, the heap) and the disk.
"""

from __future__ import annotations

import os
import platform
import random
import shutil
import tempfile
import time
from typing import Any, Dict, List, Optional
from unittest import SkipTest

from twisted.trial.unittest import TestCase

from bench import mcpipe
from tests.support.quota_server import QuotaServer, RssSampler

MB = 1 << 20
QUOTA = 64 * MB
#: What the process holds besides the quota'd items (measured with 64 KiB
#: values, 4 connections): about 57 MiB from the start, with an empty
#: bucket (the interpreter with Twisted and txcb imported, SQLite and its
#: page caches, the threads' stacks), and during the load up to about 80
#: MiB more of heap: freed 64 KiB values (ejected once written, and the
#: sets refused while the quota is full of writes waiting for the disk,
#: 180,000-280,000 of them, each retried by the client) that glibc keeps
#: until the heap trimmer of twistd txcb hands them back (every 2 s).  RSS
#: peaked at 170-198 MiB (quota + 106-134 MiB) over five runs and settles
#: near 100-115 MiB.  Bound: quota + 160 MiB.
OVERHEAD = 160 * MB
#: Why the bound does not hold on this interpreter (None: it does).  On PyPy
#: the server's RSS peaked at 1.45 GiB loading and 1.64 GiB reading back
#: while ``mem_used`` stayed at 55 MiB: its garbage collector frees the
#: ejected and refused values late (a known defect, not fixed yet).
NOT_BOUNDED_HERE = None if platform.python_implementation() == "CPython" else (
    "%s frees ejected values late (RSS peaked at 1.6 GiB under a 64 MiB quota): "
    "the RSS bound is CPython's for now" % (platform.python_implementation(),))
#: Why the RSS bound is not asserted while every key is read back right
#: after the load (None: it is).  It was skipped while the peak varied
#: (150-313 MiB): values read back did not wake a pager that had found only
#: dirty values to eject, so mem_used passed the quota until the disk's
#: next commit (see ValueEjectionTests.test_read_backs_wake_a_pager_...).
READ_BACK_UNBOUNDED: Optional[str] = None
DATA = 1 << 30
VALUE_SIZE = 64 * 1024
CONNS = 4
DEPTH = 8
#: Free disk the test needs: the data file (1 GiB), its WAL, and margin.
DISK_NEEDED = 3 << 30
SAMPLE = 2000


def read_back(port: int, keys: List[bytes], conns: int = CONNS, depth: int = DEPTH
              ) -> Dict[str, int]:
    """Gets every key; how many were right, wrong and missing."""
    counts = {"right": 0, "wrong": 0, "missing": 0}
    todo = iter(keys)
    pipe = mcpipe.Pipeline(port, conns, depth)

    def next_request() -> Optional[tuple]:
        key = next(todo, None)
        return None if key is None else (key, mcpipe.get_wire(key), 0)

    def on_reply(key: bytes, tag: int, latency: float, line: bytes,
                 value: Optional[bytes]) -> None:
        if value is None:
            counts["missing"] += 1
        elif value == mcpipe.value_for(key, VALUE_SIZE):
            counts["right"] += 1
        else:
            counts["wrong"] += 1

    try:
        pipe.run(next_request, on_reply)
    finally:
        pipe.close()
    return counts


class GigabyteUnderQuotaTests(TestCase):
    """
    1 GiB through a 64 MiB quota, in a real twistd: the class loads it once
    (sampling the RSS), reads every key back and stops the server; each
    test checks one of the figures, the last one restarts on the data dir.
    """

    loaded: Dict[str, Any] = {}

    @classmethod
    def setUpClass(cls) -> None:
        if NOT_BOUNDED_HERE:
            raise SkipTest(NOT_BOUNDED_HERE)
        cls.workdir = tempfile.mkdtemp(prefix="txcb-quota-process-")
        free = shutil.disk_usage(cls.workdir).free
        if free < DISK_NEEDED:
            shutil.rmtree(cls.workdir, ignore_errors=True)
            raise SkipTest("needs %.1f GiB free for the data file, %s has %.1f GiB"
                           % (DISK_NEEDED / 2 ** 30, cls.workdir, free / 2 ** 30))
        cls.data_dir = os.path.join(cls.workdir, "data")
        cls.keys = mcpipe.keys(DATA // VALUE_SIZE)
        server = QuotaServer(cls.data_dir, "64M", cls.workdir).start()
        try:
            cls.loaded = load_and_read_back(server, cls.keys)
        finally:
            server.stop()

    @classmethod
    def tearDownClass(cls) -> None:
        shutil.rmtree(cls.workdir, ignore_errors=True)

    def assertUnderBound(self, rss: int, when: str, stats: Dict[str, str]) -> None:
        self.assertLess(rss, QUOTA + OVERHEAD, "RSS %.0f MiB %s, bound %.0f MiB; stats %s"
                        % (rss / MB, when, (QUOTA + OVERHEAD) / MB, stats))

    def test_load_stays_under_quota(self) -> None:
        """The RSS, sampled all through the load, stays under the bound."""
        self.assertGreater(self.loaded["load_samples"], 0)
        self.assertUnderBound(self.loaded["load_peak"], "at its peak during the load",
                              self.loaded["stats"])

    def test_every_key_reads_back(self) -> None:
        """Every key reads back byte for byte, within the quota."""
        self.assertEqual(self.loaded["counts"],
                         {"right": len(self.keys), "wrong": 0, "missing": 0})
        self.assertLessEqual(int(self.loaded["stats"]["mem_used"]), QUOTA)
        self.assertEqual(int(self.loaded["stats"]["curr_items"]), len(self.keys))

    def test_read_back_stays_under_bound(self) -> None:
        """The RSS, sampled while every key is read back, stays under the bound."""
        if READ_BACK_UNBOUNDED:
            raise SkipTest(READ_BACK_UNBOUNDED)
        self.assertUnderBound(self.loaded["read_peak"], "at its peak reading back",
                              self.loaded["stats"])

    def test_restart_warms_up_within_quota(self) -> None:
        """Started again on the data dir: warm within the bound, a sample reads back."""
        server = QuotaServer(self.data_dir, "64M", self.workdir).start()
        self.addCleanup(server.stop)
        rss = server.rss()
        stats = quota_stats(server.port)
        self.assertUnderBound(rss, "right after warmup", stats)
        self.assertLessEqual(int(stats["mem_used"]), QUOTA)
        self.assertEqual(int(stats["curr_items"]), len(self.keys))
        sample = random.Random(17).sample(self.keys, SAMPLE)
        with RssSampler(server) as reads:
            counts = read_back(server.port, sample)
        self.assertEqual(counts, {"right": SAMPLE, "wrong": 0, "missing": 0})
        self.assertUnderBound(reads.peak, "reading the sample back", quota_stats(server.port))


def quota_stats(port: int) -> Dict[str, str]:
    s = mcpipe.stats(port)
    return {n: s.get(n, "?") for n in ("mem_used", "quota", "resident_items", "resident_ratio",
                                        "ejections", "bg_fetches", "oom_errors", "curr_items",
                                        "disk_write_queue")}


def load_and_read_back(server: QuotaServer, keys: List[bytes]) -> Dict[str, Any]:
    """Load every key, then read them all back, sampling the RSS: the figures."""
    started = time.monotonic()
    with RssSampler(server) as load:
        loader = mcpipe.Loader(mcpipe.Pipeline(server.port, CONNS, DEPTH), VALUE_SIZE)
        try:
            loader.load(keys)
        finally:
            loader.pipe.close()
    loaded = time.monotonic()
    with RssSampler(server) as reads:
        counts = read_back(server.port, keys)
    return {"load_peak": load.peak, "load_samples": load.samples, "read_peak": reads.peak,
            "counts": counts, "stats": quota_stats(server.port), "end_rss": server.rss(),
            "retries": loader.retries, "load_seconds": loaded - started,
            "read_seconds": time.monotonic() - loaded}
