"""
The persistent bucket: the contract suite (in process and over TCP), then
durability, warmup, restarts, corrupt and locked data dirs, and the twistd
wiring.

TTLs and locks run on a task.Clock; the writer thread reports to the real
reactor, so these tests wait for real (short) disk writes.  A "gate" holds
the writer thread back where a test must see a write before it is on disk.
"""

import os
import shutil
import sqlite3
import struct
import tempfile
import threading
import time
import types

from twisted.internet import defer, reactor
from twisted.internet.task import Clock, deferLater
from twisted.trial import unittest

from txcb.buckets import _store, items, table as table_module
from txcb import errors
from txcb.buckets import persistent
from txcb.client.remote import connect
from txcb.buckets.embedded import EmbeddedBucket
from txcb.formats import FMT_BYTES, FMT_JSON, FMT_UTF8
from txcb.interfaces import IBucket, ISyncBucket
from zope.interface.verify import verifyObject
from txcb.buckets.persistent import (
    CAS_RESTART_GAP, CorruptDataError, DataDirLockedError, PersistentBucket,
    StorageError, create_bucket)
from txcb.server.netstring import BucketServerFactory

from tests.support.buckets import crash
from tests.support.contract import BucketContractMixin
from tests.support.servers import start_server


def new_clock():
    clock = Clock()
    clock.advance(time.time())  # absolute TTLs are Unix times
    return clock


def temp_dir(testcase):
    """A fresh data dir path (not created) under the system temp dir, removed
    at cleanup (after the buckets opened later in the test are closed).
    trial's mktemp() would be relative to the working directory, which under
    pytest is the checkout."""
    parent = tempfile.mkdtemp(prefix="txcb-test-")
    testcase.addCleanup(shutil.rmtree, parent, True)
    return os.path.join(parent, "data")


def item_row(item):
    """A stored item as (cas, exp, flags, value)."""
    cas, exp, flags, off = items.header(item)
    return cas, exp, flags, item[off:]


def disk_rows(path):
    """What the data file holds now: key -> (cas, exp, flags, value)."""
    conn = sqlite3.connect("file:%s?mode=ro" % (path,), uri=True)
    try:
        return {k: item_row(item) for k, item in conn.execute("SELECT key, item FROM items")}
    finally:
        conn.close()


class Gate:
    """Holds the writer thread before each batch until opened."""

    def __init__(self, testcase):
        self.opened = threading.Event()
        self.entered = threading.Event()
        real = _store.write_batch

        def gated(*args):
            self.entered.set()
            if not self.opened.wait(10):
                raise RuntimeError("the test gate was never opened")
            return real(*args)
        testcase.patch(_store, "write_batch", gated)
        # Opened before any bucket the test opened is closed (a failed test
        # must not leave close() waiting on a held writer).
        testcase.addCleanup(self.opened.set)
        if hasattr(testcase, "gates"):
            testcase.gates.append(self)

    def open(self):
        self.opened.set()

    @defer.inlineCallbacks
    def wait_entered(self):
        for _ in range(1000):
            if self.entered.is_set():
                return
            yield deferLater(reactor, 0.002, lambda: None)
        raise AssertionError("the writer never started a batch")


class PersistentContractTests(BucketContractMixin, unittest.TestCase):
    timeout = 30
    max_persist_to = 1

    def make_bucket(self):
        self.clock = new_clock()
        b = PersistentBucket(temp_dir(self), clock=self.clock, reactor=reactor,
                             max_value_size=4096)
        self.addCleanup(b.close)
        return b

    def advance(self, seconds):
        self.clock.advance(seconds)

    def test_provides_isyncbucket(self):
        b = self.make_bucket()
        self.assertTrue(ISyncBucket.providedBy(b))
        self.assertTrue(verifyObject(ISyncBucket, b))
        self.assertTrue(verifyObject(IBucket, b))


class RemotePersistentContractTests(BucketContractMixin, unittest.TestCase):
    """The contract over TCP with a persistent bucket behind the server."""
    timeout = 30
    max_persist_to = 1

    @defer.inlineCallbacks
    def make_bucket(self):
        self.clock = new_clock()
        bucket = PersistentBucket(temp_dir(self), clock=self.clock, reactor=reactor,
                                  max_value_size=4096)
        _factory, port, _bucket = yield start_server(self, bucket=bucket)
        b = yield connect(reactor, "tcp:127.0.0.1:%d" % port)
        self.addCleanup(b.close)
        return b

    def advance(self, seconds):
        self.clock.advance(seconds)


class PersistentTestsMixin:
    timeout = 30

    def setUp(self):
        self.clock = new_clock()
        self.dir = temp_dir(self)
        self.path = os.path.join(self.dir, "default.sqlite3")
        self.gates = []

    def open(self, data_dir=None, clock=None, **kw):
        b = PersistentBucket(data_dir or self.dir, clock=clock or self.clock,
                             reactor=reactor, **kw)

        def close():
            for gate in self.gates:
                gate.open()
            return b.close()
        self.addCleanup(close)
        return b

    @defer.inlineCallbacks
    def assertFails(self, d, exc_type):
        try:
            r = yield d
        except exc_type as e:
            return e
        self.fail("expected %s, got %r" % (exc_type.__name__, r))


class DurabilityTests(PersistentTestsMixin, unittest.TestCase):

    @defer.inlineCallbacks
    def test_persist_to_fires_once_the_batch_is_committed(self):
        gate = Gate(self)
        b = self.open()
        seen = []

        def on_disk(r):
            # Read with another connection the moment the Deferred fires.
            seen.append(disk_rows(self.path).get(b"k"))
            return r
        d = b.upsert("k", "v", persist_to=1).addCallback(on_disk)
        yield gate.wait_entered()
        yield deferLater(reactor, 0.05, lambda: None)
        self.assertNoResult(d)
        self.assertEqual(b.stats_sync()["disk_write_queue"], 1)
        self.assertEqual(disk_rows(self.path), {})
        gate.open()
        r = yield d
        self.assertEqual(seen, [(r.cas, 0.0, FMT_UTF8, b"v")])
        self.assertEqual(b.stats_sync()["disk_write_queue"], 0)

    @defer.inlineCallbacks
    def test_persist_to_on_remove_waits_for_the_delete(self):
        b = self.open()
        yield b.upsert("k", "v", persist_to=1)
        gate = Gate(self)
        d = b.remove("k", persist_to=1)
        yield gate.wait_entered()
        self.assertNoResult(d)
        self.assertIn(b"k", disk_rows(self.path))
        gate.open()
        r = yield d
        self.assertTrue(r.success)
        self.assertNotIn(b"k", disk_rows(self.path))

    @defer.inlineCallbacks
    def test_endure_waits_for_the_commit(self):
        gate = Gate(self)
        b = self.open()
        r = yield b.upsert("k", "v")  # plain: acknowledged from memory
        e = b.endure("k", persist_to=1, cas=r.cas, timeout=5)
        gone = b.endure("never-there", persist_to=1, check_removed=True)
        self.assertTrue(self.successResultOf(gone).success)
        yield gate.wait_entered()
        self.assertNoResult(e)
        gate.open()
        result = yield e
        self.assertEqual(result.cas, r.cas)
        self.assertIn(b"k", disk_rows(self.path))
        # Already on disk: fires at once.
        self.assertEqual(self.successResultOf(
            b.endure("k", persist_to=1, cas=r.cas)).cas, r.cas)

    @defer.inlineCallbacks
    def test_endure_check_removed_waits_for_the_persisted_delete(self):
        b = self.open()
        yield b.upsert("k", "v", persist_to=1)
        gate = Gate(self)
        e = b.endure("k", persist_to=1, check_removed=True, timeout=5)
        yield b.remove("k")
        yield gate.wait_entered()
        self.assertNoResult(e)
        gate.open()
        result = yield e
        self.assertTrue(result.success)
        self.assertEqual(disk_rows(self.path), {})

    @defer.inlineCallbacks
    def test_endure_times_out_on_the_bucket_clock(self):
        gate = Gate(self)
        b = self.open()
        r = yield b.upsert("k", "v")
        e = b.endure("k", persist_to=1, cas=r.cas, timeout=2.0)
        yield gate.wait_entered()
        self.clock.advance(1.9)
        self.assertNoResult(e)
        self.clock.advance(0.2)
        self.failureResultOf(e, errors.TimeoutError)
        z = b.endure("k", persist_to=1, cas=r.cas, timeout=0)
        self.failureResultOf(z, errors.TimeoutError)
        c = b.endure("k", persist_to=1, cas=r.cas, timeout=5)
        c.cancel()
        self.failureResultOf(c, defer.CancelledError)
        self.assertEqual(len(b._waiters), 0)
        gate.open()

    @defer.inlineCallbacks
    def test_endure_sees_a_change_made_while_waiting(self):
        gate = Gate(self)
        b = self.open()
        r = yield b.upsert("k", "v")
        e = b.endure("k", persist_to=1, cas=r.cas, timeout=5)
        yield gate.wait_entered()
        yield b.upsert("k", "changed")
        gate.open()
        yield self.assertFails(e, errors.KeyExistsError)

    @defer.inlineCallbacks
    def test_replicas_do_not_exist(self):
        b = self.open()
        for kw in ({"replicate_to": 1}, {"persist_to": 1, "replicate_to": 1},
                   {"persist_to": 2}):
            yield self.assertFails(b.upsert("k", "v", **kw), errors.DurabilityError)
            yield self.assertFails(b.remove("k", **kw), errors.DurabilityError)
        yield self.assertFails(b.get("k"), errors.NotFoundError)
        yield self.assertFails(b.endure("k", replicate_to=1), errors.DurabilityError)

    @defer.inlineCallbacks
    def test_group_commit_and_deduplication(self):
        gate = Gate(self)
        b = self.open()
        first = b.upsert("first", 0, persist_to=1)
        yield gate.wait_entered()  # batch 1 (one item) is held in the writer
        ds = [b.upsert("k%d" % (i % 50), i, persist_to=1) for i in range(200)]
        ds += [b.remove("k0", persist_to=1), b.upsert("k0", "last", persist_to=1)]
        self.assertEqual(b.stats_sync()["disk_write_queue"], 51)
        gate.open()
        results = yield defer.gatherResults([first] + ds)
        s = b.stats_sync()
        self.assertEqual((s["disk_batches"], s["disk_flushed"]), (2, 51))
        rows = disk_rows(self.path)
        self.assertEqual(rows[b"k0"][3], b"last")
        self.assertEqual(rows[b"k49"][3], b"199")
        self.assertEqual(rows[b"k49"][0], results[200].cas)

    @defer.inlineCallbacks
    def test_one_batch_of_every_shape_reaches_the_disk_exactly(self):
        # Chunked multi-row statements (256, then 128, 64...), big values row
        # by row, chunked deletes, re-stores of deleted keys: all in one batch.
        gate = Gate(self)
        b = self.open()
        yield b.upsert("held", 0)
        yield gate.wait_entered()
        for i in range(1000):
            b.store_sync("upsert", "k%d" % i, "v%d" % i, ttl=1000 if i % 7 == 0 else 0)
        for i in range(0, 1000, 3):
            b.remove_sync("k%d" % i)
        for i in range(0, 60, 6):
            b.store_sync("upsert", "k%d" % i, "back")
        for i in range(5):
            b.store_sync("upsert", "big%d" % i, b"B" * (70000 + i))
        gate.open()
        yield b.close()
        expected = {k: item_row(item) for k, item in b._items.items()}
        self.assertEqual(len(expected), 1000 - 334 + 10 + 5 + 1)
        self.assertEqual(disk_rows(self.path), expected)
        b2 = self.open()
        self.assertEqual(b2._items, b._items)
        self.assertEqual(sorted(b2._expiries), sorted(
            (e[1], k) for k, e in expected.items() if e[1]))

    @defer.inlineCallbacks
    def test_failed_write_errbacks_persist_to_and_is_retried(self):
        real = _store.write_batch
        calls = []

        def flaky(*args):
            calls.append(len(args[1]))
            if len(calls) == 1:
                raise sqlite3.OperationalError("disk I/O error (simulated)")
            return real(*args)
        self.patch(_store, "write_batch", flaky)
        b = self.open(retry_interval=0.01)
        e = yield self.assertFails(b.upsert("k", "v", persist_to=1),
                                   errors.TemporaryFailError)
        self.assertIn("simulated", e.message)
        self.assertEqual(len(self.flushLoggedErrors(sqlite3.OperationalError)), 1)
        # The item stayed queued and the retry writes it.
        r = yield b.endure("k", persist_to=1, timeout=5)
        self.assertEqual(disk_rows(self.path)[b"k"][0], r.cas)
        self.assertEqual(b.stats_sync()["disk_errors"], 1)
        self.assertEqual(calls, [1, 1])


class WriterThreadTests(PersistentTestsMixin, unittest.TestCase):
    """Background batches on the niced flusher thread, awaited ones on the writer."""

    def record_threads(self):
        seen = []
        real = _store.write_batch

        def recording(conn, batch, *rest):
            t = threading.current_thread()
            seen.append((t.name, sorted(batch),
                         os.getpriority(os.PRIO_PROCESS, threading.get_native_id())))
            return real(conn, batch, *rest)
        self.patch(_store, "write_batch", recording)
        return seen

    @defer.inlineCallbacks
    def wait_for_batches(self, b, n):
        for _ in range(500):
            if b._disk["batches"] >= n and not b._busy:
                return
            yield deferLater(reactor, 0.01, lambda: None)
        self.fail("%d batches not written" % (n,))

    @defer.inlineCallbacks
    def test_background_batches_run_niced_and_awaited_ones_do_not(self):
        seen = self.record_threads()
        b = self.open()
        own = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        b.store_sync("upsert", "plain", "v")
        yield self.wait_for_batches(b, 1)
        yield b.upsert("durable", "v", persist_to=1)
        yield b.close()
        (t1, keys1, nice1), (t2, keys2, nice2) = seen[:2]
        self.assertEqual((keys1, keys2), ([b"plain"], [b"durable"]))
        self.assertIn("txcb-flusher-", t1)
        self.assertIn("txcb-writer-", t2)
        self.assertEqual(nice2, own)
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), own)
            lowered = True  # the OS lets a thread change its nice value
        except OSError:
            lowered = False
        if lowered:
            self.assertEqual(nice1, min(own + b.flusher_nice, 19))

    @defer.inlineCallbacks
    def test_flusher_nice_0_writes_everything_on_one_thread(self):
        seen = self.record_threads()
        b = self.open(flusher_nice=0)
        b.store_sync("upsert", "plain", "v")
        yield self.wait_for_batches(b, 1)
        yield b.upsert("durable", "v", persist_to=1)
        yield b.close()
        self.assertEqual(len(seen), 2)
        self.assertTrue(all("txcb-writer-" in name for name, _k, _n in seen), seen)
        self.assertIsNone(b._bg_pool)


class RestartTests(PersistentTestsMixin, unittest.TestCase):

    @defer.inlineCallbacks
    def test_everything_survives_close_and_reopen(self):
        b = self.open()
        cases = {"s": "héllo", "b": b"\x00\xff", "j": {"a": [1, None]}}
        fmts = {"s": FMT_UTF8, "b": FMT_BYTES, "j": FMT_JSON}
        before = {}
        for k, v in cases.items():
            before[k] = (yield b.upsert(k, v)).cas
        yield b.counter("c", delta=5, initial=10)
        before["c"] = (yield b.counter("c", delta=5)).cas
        yield b.upsert("cat", "a")
        before["cat"] = (yield b.append("cat", "b")).cas
        before["ttl"] = (yield b.upsert("ttl", "t", ttl=1000)).cas
        yield b.upsert("gone", "x")
        yield b.remove("gone")
        s1 = b.stats_sync()
        yield b.close()

        b2 = self.open()
        for k, v in cases.items():
            g = yield b2.get(k)
            self.assertEqual((g.value, g.flags, g.cas), (v, fmts[k], before[k]))
        g = yield b2.get("c")
        self.assertEqual((g.value, g.cas), (15, before["c"]))
        g = yield b2.get("cat")
        self.assertEqual((g.value, g.cas), ("ab", before["cat"]))
        g = yield b2.get("ttl")
        self.assertEqual(g.cas, before["ttl"])
        yield self.assertFails(b2.get("gone"), errors.NotFoundError)
        s2 = b2.stats_sync()
        self.assertEqual((s2["items"], s2["bytes"]), (s1["items"], s1["bytes"]))
        self.assertEqual(s2["warmup_items"], 6)
        self.assertEqual(s2["high_seqno"], s1["high_seqno"])
        self.assertEqual(s2["persisted_seqno"], s1["high_seqno"])
        # The TTL came back too: it still expires at the same time.
        self.clock.advance(1001)
        yield self.assertFails(b2.get("ttl"), errors.NotFoundError)

    @defer.inlineCallbacks
    def test_close_writes_the_whole_queue(self):
        gate = Gate(self)
        b = self.open()
        yield b.upsert("first", 0)
        yield gate.wait_entered()
        for i in range(500):
            b.store_sync("upsert", "k%d" % i, i)
        b.remove_sync("first")
        # 501 queued, and "first" still in the batch the writer holds.
        self.assertEqual(b.stats_sync()["disk_write_queue"], 502)
        closing = b.close()
        yield self.assertFails(b.upsert("late", 1), errors.NetworkError)
        yield deferLater(reactor, 0.02, lambda: None)
        self.assertNoResult(closing)
        gate.open()
        yield closing
        rows = disk_rows(self.path)
        self.assertEqual(len(rows), 500)
        self.assertEqual(rows[b"k499"][3], b"499")
        # The WAL was checkpointed into the data file on close.
        self.assertFalse(os.path.exists(self.path + "-wal")
                         and os.path.getsize(self.path + "-wal"))

    @defer.inlineCallbacks
    def test_close_is_idempotent_and_leaves_no_thread(self):
        b = self.open()
        yield b.upsert("k", "v")
        d1, d2 = b.close(), b.close()
        yield defer.gatherResults([d1, d2])
        yield b.close()
        names = [t.name for t in threading.enumerate()]
        self.assertFalse([n for n in names if n.startswith("txcb-writer")], names)
        yield self.assertFails(b.get("k"), errors.NetworkError)

    @defer.inlineCallbacks
    def test_close_from_a_persist_to_callback(self):
        b = self.open()
        r = yield b.upsert("k", "v", persist_to=1).addCallback(
            lambda r: b.close().addCallback(lambda _: r))
        self.assertEqual(disk_rows(self.path)[b"k"][0], r.cas)

    @defer.inlineCallbacks
    def test_expiry_across_restart(self):
        b = self.open()
        yield b.upsert("short", "s", ttl=10)
        yield b.upsert("long", "l", ttl=100)
        yield b.upsert("never", "n")
        yield b.close()
        self.assertEqual(len(disk_rows(self.path)), 3)

        self.clock.advance(50)  # the server was down for 50 s
        b2 = self.open()
        s = b2.stats_sync()
        self.assertEqual((s["warmup_items"], s["warmup_expired"], s["items"]), (2, 1, 2))
        self.assertEqual(set(disk_rows(self.path)), {b"long", b"never"})
        yield self.assertFails(b2.get("short"), errors.NotFoundError)
        g = yield b2.get("long")
        self.assertEqual(g.value, "l")
        # The pager (every 10 s on the bucket clock) reclaims it, on disk too.
        self.clock.advance(60)
        self.assertEqual(b2.stats_sync()["items"], 1)
        yield b2.endure("long", persist_to=1, check_removed=True, timeout=5)
        self.assertEqual(set(disk_rows(self.path)), {b"never"})

    @defer.inlineCallbacks
    def test_lazy_expiry_removes_from_disk(self):
        b = self.open(pager_interval=0)
        yield b.upsert("k", "v", ttl=5, persist_to=1)
        self.clock.advance(6)
        self.assertIn(b"k", disk_rows(self.path))
        yield self.assertFails(b.get("k"), errors.NotFoundError)
        yield b.endure("k", persist_to=1, check_removed=True, timeout=5)
        self.assertEqual(disk_rows(self.path), {})

    @defer.inlineCallbacks
    def test_cas_stays_monotonic_when_the_clock_goes_backwards(self):
        b = self.open()
        seen = []
        for i in range(5):
            seen.append((yield b.upsert("k%d" % i, i)).cas)
        seen.append((yield b.lock("k0", ttl=5)).cas)  # in memory only, never on disk
        seen.append((yield b.remove("k1")).cas)
        yield b.close()
        # The next start-up's wall clock reads 1970.
        self.patch(table_module, "time", types.SimpleNamespace(time_ns=lambda: 1000))
        b2 = self.open()
        r = yield b2.upsert("new", 1)
        self.assertGreater(r.cas, max(seen))
        g = yield b2.get("k2")
        self.assertEqual(g.cas, seen[2])
        # The lock did not survive the restart.
        yield b2.upsert("k0", "free")

    @defer.inlineCallbacks
    def test_cas_and_seqno_stay_monotonic_after_a_crash(self):
        b = self.open()
        r1 = yield b.upsert("k", "v", persist_to=1)
        # Handed out, never written: a lock's CAS, and plain writes whose
        # batch never reached the disk.
        lock = yield b.lock("k", ttl=5)
        for i in range(50):
            b.store_sync("upsert", "lost%d" % i, i)
        last = b.store_sync("upsert", "lost", "x")
        b._dirty.clear()  # the crash came before the writer wrote them
        crash(b)
        self.patch(table_module, "time", types.SimpleNamespace(time_ns=lambda: 1000))
        b2 = self.open()
        g = yield b2.get("k")
        self.assertEqual((g.value, g.cas), ("v", r1.cas))
        yield self.assertFails(b2.get("lost"), errors.NotFoundError)
        r = yield b2.upsert("new", 1)
        self.assertGreater(r.cas, max(lock.cas, last.cas))
        self.assertGreater(r.seqno, last.seqno)
        # A clean close after that: exact continuity, no gap.
        yield b2.close()
        b3 = self.open()
        r3 = yield b3.upsert("newer", 1)
        self.assertEqual((r3.cas, r3.seqno), (r.cas + 1, r.seqno + 1))

    @defer.inlineCallbacks
    def test_high_water_marks_are_written_only_when_needed(self):
        def marks():
            conn = sqlite3.connect("file:%s?mode=ro" % (self.path,), uri=True)
            try:
                m = dict(conn.execute("SELECT name, value FROM meta"))
            finally:
                conn.close()
            return int(m["max_cas"]), m["high_seqno"], m["clean"]
        b = self.open()
        at_start = marks()
        self.assertEqual(at_start[2], 0)  # "not closed cleanly" until close()
        yield b.upsert("k", 1, persist_to=1)
        self.assertEqual(marks(), at_start)  # batches leave them alone...
        self.patch(_store, "META_STEP", 3)
        for i in range(5):
            b.store_sync("upsert", "k%d" % i, i)
        r = yield b.upsert("k", 2, persist_to=1)
        self.assertEqual(marks(), (r.cas, r.seqno, 0))  # ...until they drift that far
        yield b.close()
        self.assertEqual(marks(), (r.cas, r.seqno, 1))

    @defer.inlineCallbacks
    def test_start_false_waits_for_start(self):
        b = PersistentBucket(self.dir, clock=self.clock, reactor=reactor, start=False)
        self.addCleanup(b.close)
        self.assertFalse(os.path.exists(self.dir))
        yield self.assertFails(b.get("k"), errors.NetworkError)
        b.start()
        self.assertTrue(os.path.exists(self.path))
        yield b.upsert("k", "v", persist_to=1)
        self.assertRaises(StorageError, b.start)
        self.assertTrue(b.stats_sync()["warmup_time"] > 0)

    @defer.inlineCallbacks
    def test_stats_report_the_disk_queue(self):
        b = self.open()
        s = b.stats_sync()
        for name in ("disk_write_queue", "disk_flushed", "disk_batches",
                     "disk_last_flush_duration", "disk_last_batch", "disk_errors",
                     "warmup_time", "warmup_items", "persisted_seqno"):
            self.assertIn(name, s)
        self.assertEqual(s["bucket_type"], "couchbase")
        self.assertEqual(s["data_file"], self.path)
        yield b.upsert_multi({"a": 1, "b": 2}, persist_to=1)
        s = yield b.stats()
        self.assertEqual((s["disk_flushed"], s["disk_batches"], s["disk_last_batch"]),
                         (2, 1, 2))
        self.assertGreater(s["disk_last_flush_duration"], 0)
        self.assertEqual(s["persisted_seqno"], s["high_seqno"])


class StartUpFailureTests(PersistentTestsMixin, unittest.TestCase):

    def assertRefused(self, exc_type, *names):
        e = self.assertRaises(exc_type, PersistentBucket, self.dir, clock=self.clock,
                              reactor=reactor)
        for name in names:
            self.assertIn(name, str(e))
        return e

    def test_garbage_file_is_refused_and_left_alone(self):
        os.makedirs(self.dir)
        garbage = b"this is not a database\n" * 200
        with open(self.path, "wb") as f:
            f.write(garbage)
        self.assertRefused(CorruptDataError, self.path)
        with open(self.path, "rb") as f:
            self.assertEqual(f.read(), garbage)
        # The lock was released: the same error again, not "locked".
        self.assertRefused(CorruptDataError, self.path)

    @defer.inlineCallbacks
    def test_damaged_page_is_refused(self):
        b = self.open()
        for i in range(3000):
            b.store_sync("upsert", "key%05d" % i, "v" * 100)
        yield b.close()
        size = os.path.getsize(self.path)
        self.assertGreater(size, 100 * 4096)
        with open(self.path, "r+b") as f:
            f.seek(40 * 4096)
            f.write(b"\xa5" * 4096)
        with open(self.path, "rb") as f:
            damaged = f.read()
        self.assertRefused(CorruptDataError, self.path, "malformed")
        with open(self.path, "rb") as f:
            self.assertEqual(f.read(), damaged)

    def test_foreign_sqlite_file_is_refused(self):
        os.makedirs(self.dir)
        conn = sqlite3.connect(self.path)
        conn.execute("CREATE TABLE mine (x)")
        conn.commit()
        conn.close()
        self.assertRefused(CorruptDataError, self.path, "not a txcb data file")

    @defer.inlineCallbacks
    def test_newer_format_is_refused(self):
        b = PersistentBucket(self.dir, clock=self.clock, reactor=reactor)
        b._conn.execute("UPDATE meta SET value = 99 WHERE name = 'format'")
        yield b.close()
        self.assertRefused(CorruptDataError, self.path, "format 99")

    def write_format_1_file(self, items):
        """A data file as txcb wrote it before format 2: <QdI header + value."""
        os.makedirs(self.dir)
        conn = sqlite3.connect(self.path)
        for statement in _store.SCHEMA:
            conn.execute(statement)
        conn.execute(_store.META, ("format", 1))
        conn.execute(_store.META_MARKS, ("1000", 7, 1))
        conn.executemany("INSERT INTO items (key, exp, item) VALUES (?, ?, ?)",
                         [(k, exp, item) for k, exp, item in items])
        conn.commit()
        conn.close()

    @defer.inlineCallbacks
    def test_format_1_file_is_upgraded_in_place(self):
        header = struct.Struct("<QdI")
        far = self.clock.seconds() + 3600
        self.write_format_1_file([
            (b"plain", 0.0, header.pack(11, 0.0, FMT_BYTES) + b"bytes"),
            (b"odd-flags", 0.0, header.pack(12, 0.0, 0xDEADBEEF) + b"raw"),
            (b"expiring", far, header.pack(13, far, FMT_JSON) + b"[1]"),
            (b"empty", 0.0, header.pack(14, 0.0, FMT_UTF8)),
        ])
        b = self.open()
        got = {}
        for key in ("plain", "odd-flags", "expiring", "empty"):
            r = b.get_sync(key)
            got[key] = (r.cas, r.flags, r.raw)
        self.assertEqual(got, {"plain": (11, FMT_BYTES, b"bytes"),
                               "odd-flags": (12, 0xDEADBEEF, b"raw"),
                               "expiring": (13, FMT_JSON, b"[1]"),
                               "empty": (14, FMT_UTF8, b"")})
        self.assertEqual(b.stats_sync()["bytes"], sum(
            len(k) + len(v) for k, v in [("plain", "bytes"), ("odd-flags", "raw"),
                                         ("expiring", "[1]"), ("empty", "")]))
        self.clock.advance(3601)
        self.assertRaises(errors.NotFoundError, b.get_sync, "expiring")
        yield b.close()
        conn = sqlite3.connect(self.path)
        try:
            self.assertEqual(conn.execute(
                "SELECT value FROM meta WHERE name = 'format'").fetchone()[0],
                persistent.FORMAT_VERSION)
        finally:
            conn.close()
        self.assertEqual(disk_rows(self.path)[b"odd-flags"], (12, 0.0, 0xDEADBEEF, b"raw"))

    def test_format_1_file_with_a_truncated_item_is_refused_and_left_alone(self):
        self.write_format_1_file([(b"short", 0.0, b"\x01\x02")])
        self.assertRefused(CorruptDataError, self.path, "bad item")
        conn = sqlite3.connect(self.path)
        try:
            self.assertEqual(conn.execute("SELECT key, item FROM items").fetchall(),
                             [(b"short", b"\x01\x02")])
            self.assertEqual(conn.execute(
                "SELECT value FROM meta WHERE name = 'format'").fetchone()[0], 1)
        finally:
            conn.close()

    def test_unreadable_file_is_refused(self):
        os.makedirs(self.path)  # a directory where the file should be
        self.assertRefused(CorruptDataError, self.path)

    def test_data_dir_that_is_a_file(self):
        with open(self.dir, "w") as f:
            f.write("x")
        self.assertRefused(StorageError, self.dir)

    @defer.inlineCallbacks
    def test_second_bucket_on_the_same_dir_refuses(self):
        b = self.open()
        yield b.upsert("k", "v")
        e = self.assertRefused(DataDirLockedError, self.dir, "txcb.lock")
        self.assertIn("pid %d" % os.getpid(), str(e))
        # The first one is unharmed.
        yield b.upsert("k2", "v2", persist_to=1)
        yield b.close()
        b2 = self.open()
        g = yield b2.get_multi(["k", "k2"])
        self.assertEqual([g["k"].value, g["k2"].value], ["v", "v2"])

    def test_failed_start_leaves_nothing_running(self):
        os.makedirs(self.dir)
        with open(self.path, "wb") as f:
            f.write(b"garbage" * 100)
        # The pager runs on the real reactor here: trial would see it left behind.
        self.assertRaises(CorruptDataError, PersistentBucket, self.dir, reactor=reactor)
        names = [t.name for t in threading.enumerate()]
        self.assertFalse([n for n in names if n.startswith("txcb-writer")], names)

    def test_bad_bucket_name(self):
        for name in ("", "../x", "a/b", "x" * 101, 5):
            self.assertRaises(errors.ArgumentError, PersistentBucket, self.dir,
                              clock=self.clock, reactor=reactor, name=name)


class CreateBucketTests(PersistentTestsMixin, unittest.TestCase):

    def test_bucket_types(self):
        b = create_bucket("couchbase", self.dir, clock=self.clock, reactor=reactor)
        self.addCleanup(b.close)
        self.assertIsInstance(b, PersistentBucket)
        self.assertEqual((b.bucket_type, b.max_persist_to), ("couchbase", 1))
        e = create_bucket("ephemeral", clock=self.clock)
        self.addCleanup(e.close)
        self.assertEqual(type(e), EmbeddedBucket)
        self.assertEqual((e.bucket_type, e.max_persist_to), ("ephemeral", 0))
        self.assertRaises(errors.ArgumentError, create_bucket, "memcached")


class TapTests(PersistentTestsMixin, unittest.TestCase):

    def options(self, *args):
        from txcb.service.tap import Options
        o = Options()
        o.parseOptions(list(args))
        return o

    def test_options(self):
        o = self.options()
        self.assertEqual(o["data-dir"], os.path.abspath("txcb-data"))
        self.assertFalse(o["ephemeral"])
        o = self.options("--data-dir", "rel/dir", "--ephemeral")
        self.assertEqual(o["data-dir"], os.path.abspath("rel/dir"))
        self.assertTrue(o["ephemeral"])

    def test_make_bucket(self):
        from txcb.service.tap import make_bucket
        b = make_bucket(self.options("--data-dir", self.dir), reactor)
        self.addCleanup(b.close)
        self.assertIsInstance(b, PersistentBucket)
        self.assertFalse(os.path.exists(self.dir))  # started by BucketService
        e = make_bucket(self.options("--ephemeral"), reactor)
        self.addCleanup(e.close)
        self.assertEqual(type(e), EmbeddedBucket)

    @defer.inlineCallbacks
    def test_service_warms_up_before_listening_and_flushes_on_stop(self):
        from txcb.service.tap import makeService
        seed = self.open()
        yield seed.upsert("old", "from disk")
        yield seed.close()
        top = makeService(self.options("--data-dir", self.dir, "--port",
                                       "tcp:0:interface=127.0.0.1"), reactor)
        bucket_service, listen = list(top)[0], list(top)[-1]
        top.startService()
        stopped = []
        self.addCleanup(lambda: None if stopped else top.stopService())
        self.assertEqual(bucket_service.bucket.stats_sync()["warmup_items"], 1)
        port = listen.port.getHost().port
        client = yield connect(reactor, "tcp:127.0.0.1:%d" % port)
        g = yield client.get("old")
        self.assertEqual(g.value, "from disk")
        r = yield client.upsert("new", "plain write")
        yield client.close()
        stopped.append(True)
        yield top.stopService()
        rows = disk_rows(self.path)
        self.assertEqual(rows[b"new"][0], r.cas)

    @defer.inlineCallbacks
    def test_locked_data_dir_stops_start_up_before_listening(self):
        from txcb.service.tap import makeService
        holder = self.open()
        top = makeService(self.options("--data-dir", self.dir, "--port",
                                       "tcp:0:interface=127.0.0.1"), reactor)
        self.assertRaises(DataDirLockedError, top.startService)
        bucket_service, listen = list(top)[0], list(top)[-1]
        self.assertFalse(listen.running)
        self.assertIsNone(listen.port)
        yield bucket_service.bucket.close()  # stops its pager
        yield holder.close()


class ServerWithPersistentBucketTests(PersistentTestsMixin, unittest.TestCase):
    """persist_to and endure through the server and client."""

    @defer.inlineCallbacks
    def test_remote_persist_to_and_endure(self):
        gate = Gate(self)
        bucket = PersistentBucket(self.dir, clock=self.clock, reactor=reactor)
        factory, port, _bucket = yield start_server(self, bucket=bucket)
        self.assertIsInstance(factory, BucketServerFactory)
        client = yield connect(reactor, "tcp:127.0.0.1:%d" % port)
        self.addCleanup(client.close)
        d = client.upsert("k", "v", persist_to=1)
        yield gate.wait_entered()
        r2 = yield client.upsert("other", "plain")  # not held up by the durable write
        self.assertNoResult(d)
        gate.open()
        r = yield d
        e = yield client.endure("other", persist_to=1, cas=r2.cas, timeout=2)
        self.assertEqual(e.cas, r2.cas)
        rows = disk_rows(self.path)
        self.assertEqual((rows[b"k"][0], rows[b"other"][0]), (r.cas, r2.cas))
        s = yield client.stats()
        self.assertEqual(s["bucket_type"], "couchbase")
        self.assertEqual(s["disk_write_queue"], 0)
