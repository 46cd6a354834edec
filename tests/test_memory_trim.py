"""
Issue 12's soak finding: a flushed bucket (or connections closed with big
replies pending) left the server's RSS at its peak, because glibc kept the
freed heap.  txcb.service.memory trims it when a lot is free.
"""

import ctypes

from twisted.internet.task import Clock
from twisted.trial import unittest

from txcb.service import tap
from txcb.service.memory import DEFAULT_THRESHOLD, MemoryTrimmer, glibc_heap


class _Heap:
    """A heap double: says how much is free, counts trims."""

    def __init__(self, free):
        self.free = free
        self.trimmed = 0

    def free_bytes(self):
        return self.free

    def trim(self):
        self.trimmed += 1  # trimmed pages still count as free, as in glibc


def _rss_kb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise unittest.SkipTest("no /proc/self/status")


class MemoryTrimmerTests(unittest.TestCase):
    def test_trims_only_when_a_lot_is_free(self):
        clock, heap = Clock(), _Heap(free=DEFAULT_THRESHOLD - 1)
        t = MemoryTrimmer(clock, heap, interval=5.0)
        t.startService()
        self.addCleanup(t.stopService)
        clock.advance(5.0)
        self.assertEqual(heap.trimmed, 0)
        heap.free = DEFAULT_THRESHOLD
        clock.advance(5.0)
        self.assertEqual((heap.trimmed, t.trims), (1, 1))
        clock.advance(5.0)  # nothing freed since: no second trim
        self.assertEqual(heap.trimmed, 1)
        heap.free = DEFAULT_THRESHOLD // 2  # reused
        clock.advance(5.0)
        heap.free += DEFAULT_THRESHOLD  # freed again
        clock.advance(5.0)
        self.assertEqual(heap.trimmed, 2)

    def test_a_failing_heap_call_stops_trimming_with_one_log_line(self):
        class Broken(_Heap):
            def free_bytes(self):
                raise OSError("mallinfo2 went away")
        clock = Clock()
        t = MemoryTrimmer(clock, Broken(0))
        t.startService()
        clock.advance(5.0)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        self.assertEqual(clock.getDelayedCalls(), [])
        t.stopService()

    def test_no_heap_no_timer(self):
        clock = Clock()
        t = MemoryTrimmer(clock, None)
        t.startService()
        self.assertEqual(clock.getDelayedCalls(), [])
        t.stopService()

    def test_stop_cancels_the_timer(self):
        clock = Clock()
        t = MemoryTrimmer(clock, _Heap(0))
        t.startService()
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        t.stopService()
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_twistd_txcb_runs_one(self):
        opts = tap.Options()
        opts.parseOptions(["--ephemeral"])
        top = tap.makeService(opts, reactor=Clock())
        self.assertEqual(len([s for s in top if isinstance(s, MemoryTrimmer)]), 1)

    def test_freed_heap_goes_back_to_the_system(self):
        heap = glibc_heap()
        if heap is None:
            raise unittest.SkipTest("no glibc heap to trim here (not glibc 2.33+, or PyPy)")
        # Blocks of 1 KiB (malloc, not pymalloc), freed all but the last: the
        # heap cannot shrink from its top by itself.
        blocks = [ctypes.create_string_buffer(1024) for _ in range(100000)]
        keep = blocks[-1]
        del blocks
        before = _rss_kb()
        self.assertGreaterEqual(heap.free_bytes(), 64 << 20)
        t = MemoryTrimmer(Clock(), heap, threshold=32 << 20)
        self.assertTrue(t.check())
        self.assertLess(_rss_kb(), before - (32 << 10))
        self.assertFalse(t.check())  # nothing freed since
        del keep
