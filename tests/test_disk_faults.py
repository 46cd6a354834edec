"""
Damaged data is refused, never served; a full disk loses nothing
acknowledged and the bucket recovers by itself (issue 12, items 7 and 8).
"""

import json
import os
import shutil
import sqlite3
import subprocess
import tempfile

from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from txcb import errors
from txcb.buckets import _store, items, persistent
from txcb.buckets.embedded import EmbeddedBucket
from txcb.buckets.persistent import CorruptDataError, DiskFullError, PersistentBucket

from tests.support.buckets import crash as kill


def new_clock():
    clock = task.Clock()
    clock.advance(1_700_000_000)
    return clock


def value_of(i):
    return b"VALUE-%04d-" % (i,) * 8


class DiskTestsMixin:
    timeout = 60

    def setUp(self):
        self.clock = new_clock()
        base = tempfile.mkdtemp(prefix="txcb-faults-")
        self.addCleanup(shutil.rmtree, base, True)
        self.dir = os.path.join(base, "data")
        self.path = os.path.join(self.dir, "default.sqlite3")
        self.manifest = os.path.join(self.dir, "default.manifest")

    def open(self, **kw):
        b = PersistentBucket(self.dir, clock=self.clock, reactor=reactor, **kw)
        self.addCleanup(b.close)
        return b

    @defer.inlineCallbacks
    def filled(self, n=500, **kw):
        b = self.open(**kw)
        for i in range(n):
            yield b.upsert("key%04d" % (i,), value_of(i),
                           persist_to=1 if i == n - 1 else 0)
        return b

    def assertRefused(self, exc_type, *names):
        e = self.assertRaises(exc_type, PersistentBucket, self.dir, clock=self.clock,
                              reactor=reactor)
        for name in names:
            self.assertIn(name, str(e))
        return e


class DamagedDataTests(DiskTestsMixin, unittest.TestCase):
    """Item 8: the bucket knows what it had, and every value carries a checksum."""

    @defer.inlineCallbacks
    def test_four_flipped_bytes_in_a_stored_value_are_refused_not_served(self):
        b = yield self.filled()
        yield b.close()
        with open(self.path, "rb") as f:
            data = bytearray(f.read())
        at = data.find(value_of(123))
        self.assertGreater(at, 0)
        data[at + 20:at + 24] = b"\xff\xfe\xfd\xfc"
        with open(self.path, "wb") as f:
            f.write(data)
        self.assertRefused(CorruptDataError, self.path, "key0123", "checksum")

    @defer.inlineCallbacks
    def test_a_flipped_byte_in_an_expiring_item_is_refused(self):
        b = self.open()
        yield b.upsert("ttl", b"T" * 64, ttl=3600, persist_to=1)
        yield b.close()
        with open(self.path, "rb") as f:
            data = bytearray(f.read())
        at = data.find(b"T" * 64)
        data[at + 3] ^= 0x01
        with open(self.path, "wb") as f:
            f.write(data)
        self.assertRefused(CorruptDataError, self.path, "ttl", "checksum")

    @defer.inlineCallbacks
    def test_data_file_truncated_to_0_bytes_is_refused_not_started_empty(self):
        b = yield self.filled()
        yield b.close()
        with open(self.path, "r+b") as f:
            f.truncate(0)
        self.assertRefused(CorruptDataError, self.path, "empty", "500 items")
        self.assertEqual(os.path.getsize(self.path), 0)

    @defer.inlineCallbacks
    def test_deleted_data_file_is_refused(self):
        b = yield self.filled()
        yield b.close()
        os.remove(self.path)
        self.assertRefused(CorruptDataError, self.path, "missing", "500 items")

    @defer.inlineCallbacks
    def test_wal_deleted_after_kill9_is_refused_not_started_with_fewer_items(self):
        b = yield self.filled(checkpoint_interval=3600)
        kill(b)
        os.remove(self.path + "-wal")
        self.assertRefused(CorruptDataError, self.path + "-wal", "missing")

    @defer.inlineCallbacks
    def test_data_file_older_than_the_manifest_is_refused(self):
        b = yield self.filled(n=10)
        yield b.close()
        shutil.copy(self.path, self.path + ".old")
        b = self.open()
        yield b.upsert("later", b"x", persist_to=1)
        yield b.close()
        os.replace(self.path + ".old", self.path)
        self.assertRefused(CorruptDataError, self.path, "lost writes", self.manifest)

    @defer.inlineCallbacks
    def test_kill9_then_restart_keeps_everything(self):
        b = yield self.filled(checkpoint_interval=3600)
        kill(b)
        b2 = self.open()
        self.assertEqual(b2.stats_sync()["items"], 500)
        self.assertEqual(b2.get_sync("key0007").raw, value_of(7))

    @defer.inlineCallbacks
    def test_wal_is_checkpointed_regularly_and_the_manifest_follows(self):
        b = yield self.filled(n=50, checkpoint_interval=0)
        with open(self.manifest) as f:
            m = json.load(f)
        self.assertEqual(m, {"seqno": b._persisted_seqno, "items": 50, "clean": False})
        self.assertEqual(os.path.getsize(self.path + "-wal"), 0)
        self.assertGreater(b.stats_sync()["disk_checkpoints"], 0)
        self.assertEqual(b.stats_sync()["checkpointed_seqno"], b._persisted_seqno)
        yield b.close()
        with open(self.manifest) as f:
            self.assertEqual(json.load(f)["clean"], True)
        self.assertFalse(os.path.exists(self.manifest + ".tmp"))

    def test_damaged_manifest_is_refused(self):
        os.makedirs(self.dir)
        with open(self.manifest, "w") as f:
            f.write("{not json")
        self.assertRefused(CorruptDataError, self.manifest)

    def write_format_2_file(self, rows):
        os.makedirs(self.dir)
        conn = sqlite3.connect(self.path)
        conn.execute("CREATE TABLE items (key BLOB PRIMARY KEY, exp REAL NOT NULL, "
                     "item BLOB NOT NULL) WITHOUT ROWID")
        conn.execute("CREATE INDEX items_exp ON items (exp) WHERE exp > 0")
        conn.execute("CREATE TABLE meta (name TEXT PRIMARY KEY, value)")
        conn.execute(_store.META, ("format", 2))
        conn.execute(_store.META_MARKS, ("1000", 7, 1))
        conn.executemany("INSERT INTO items (key, exp, item) VALUES (?, ?, ?)", rows)
        conn.commit()
        conn.close()

    @defer.inlineCallbacks
    def test_format_2_file_is_upgraded_in_place_with_checksums(self):
        far = self.clock.seconds() + 3600
        self.write_format_2_file([
            (b"plain", 0.0, items.make_item(11, 0.0, 0, b"bytes")),
            (b"expiring", far, items.make_item(12, far, 0, b"[1]")),
        ])
        b = self.open()
        self.assertEqual(b.get_sync("plain").raw, b"bytes")
        self.assertEqual(b.get_sync("expiring").cas, 12)
        yield b.close()
        conn = sqlite3.connect(self.path)
        try:
            self.assertEqual(conn.execute(
                "SELECT value FROM meta WHERE name = 'format'").fetchone()[0],
                persistent.FORMAT_VERSION)
            for k, item, crc in conn.execute("SELECT key, item, crc FROM items"):
                self.assertEqual(crc, _store.checksum(k, item))
        finally:
            conn.close()
        b = self.open()
        self.assertEqual(b.get_sync("plain").raw, b"bytes")

    def test_format_2_file_with_a_bad_item_is_refused_and_left_alone(self):
        self.write_format_2_file([(b"bad", 0.0, b"")])
        self.assertRefused(CorruptDataError, self.path, "bad item")
        conn = sqlite3.connect(self.path)
        try:
            self.assertEqual(conn.execute(
                "SELECT value FROM meta WHERE name = 'format'").fetchone()[0], 2)
        finally:
            conn.close()


class FlakyDiskTests(DiskTestsMixin, unittest.TestCase):
    """Item 7 with a simulated failing disk (the real one: SmallFilesystemTests)."""

    def fail_writes(self, error="database or disk is full"):
        real = _store.write_batch
        state = {"failing": True, "calls": 0}

        def flaky(*args):
            state["calls"] += 1
            if state["failing"]:
                raise sqlite3.OperationalError(error)
            return real(*args)
        self.patch(_store, "write_batch", flaky)
        return state

    @defer.inlineCallbacks
    def wait_for(self, check, seconds=10.0):
        for _ in range(int(seconds / 0.01)):
            if check():
                return
            yield task.deferLater(reactor, 0.01, lambda: None)
        self.fail("timed out waiting")

    @defer.inlineCallbacks
    def test_failing_disk_refuses_mutations_past_the_bound_then_recovers(self):
        b = self.open(retry_interval=0.01, max_retry_interval=0.05, max_queue=20)
        state = self.fail_writes()
        for i in range(20):
            yield b.upsert("k%d" % i, b"v")
        yield self.wait_for(lambda: b.stats_sync()["disk_refusing"])
        e = yield self.assertFailure(b.upsert("over", b"v"), errors.TemporaryFailError)
        self.assertIn("disk is full", e.message)
        self.assertRaises(errors.TemporaryFailError, b.remove_sync, "k1")
        self.assertEqual(b.get_sync("k1").raw, b"v")  # reads still work
        s = b.stats_sync()
        self.assertEqual((s["disk_write_queue"], s["disk_queue_limit"]), (20, 20))
        self.assertEqual(s["disk_refused"], 2)
        self.assertGreater(s["disk_failing"], 0)
        state["failing"] = False
        yield self.wait_for(lambda: not b.stats_sync()["disk_refusing"])
        r = yield b.upsert("after", b"v", persist_to=1)
        self.assertTrue(r.success)
        s = b.stats_sync()
        self.assertEqual((s["disk_write_queue"], s["disk_failing"]), (0, 0))
        self.assertEqual(s["checkpointed_seqno"], r.seqno - 1)  # the recovery checkpointed
        self.flushLoggedErrors(sqlite3.OperationalError)

    @defer.inlineCallbacks
    def test_retries_back_off(self):
        b = self.open(retry_interval=0.01, max_retry_interval=0.08)
        state = self.fail_writes()
        yield b.upsert("k", b"v")
        yield task.deferLater(reactor, 0.5, lambda: None)
        # 0.01 + 0.02 + 0.04 + 0.08 + 0.08...: about 8 tries in 0.5 s, not 50.
        self.assertLess(state["calls"], 12)
        self.assertGreater(state["calls"], 3)
        state["failing"] = False
        self.flushLoggedErrors(sqlite3.OperationalError)

    @defer.inlineCallbacks
    def test_sigterm_on_a_failing_disk_says_how_many_writes_are_lost_without_unhandled_errors(self):
        b = PersistentBucket(self.dir, clock=self.clock, reactor=reactor,
                             retry_interval=0.01, max_retry_interval=0.05,
                             close_timeout=0.3)
        self.fail_writes()
        for i in range(7):
            yield b.upsert("k%d" % i, b"v")
        started = reactor.seconds()
        result = yield b.close()  # fires: no failure left for anyone to handle
        self.assertIsNone(result)
        self.assertGreaterEqual(reactor.seconds() - started, 0.25)
        self.assertEqual(b.lost_writes, 7)
        self.flushLoggedErrors(sqlite3.OperationalError)

    @defer.inlineCallbacks
    def test_close_on_a_disk_that_recovers_in_time_loses_nothing(self):
        b = PersistentBucket(self.dir, clock=self.clock, reactor=reactor,
                             retry_interval=0.01, max_retry_interval=0.05,
                             close_timeout=5)
        state = self.fail_writes()
        for i in range(7):
            yield b.upsert("k%d" % i, b"v")
        d = b.close()
        reactor.callLater(0.2, state.update, failing=False)
        yield d
        self.assertEqual(b.lost_writes, 0)
        b2 = self.open()
        self.assertEqual(b2.stats_sync()["items"], 7)
        self.flushLoggedErrors(sqlite3.OperationalError)


def mount_small_fs(testcase, size="20m"):
    """A size-limited tmpfs (root only), unmounted at cleanup; skips where not allowed."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        raise unittest.SkipTest("mounting a small tmpfs needs root and mount(8)")
    where = tempfile.mkdtemp(prefix="txcb-smallfs-")
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=" + size, "tmpfs", where],
                       capture_output=True, text=True)
    if p.returncode:
        os.rmdir(where)
        raise unittest.SkipTest("cannot mount a tmpfs here: %s" % (p.stderr.strip(),))

    def unmount():
        subprocess.run(["umount", "-l", where], capture_output=True)
        os.rmdir(where)
    testcase.addCleanup(unmount)
    return where


def fill(path, chunk=1 << 16):
    """Write a file until the filesystem is full; returns how many bytes fit."""
    n = 0
    with open(path, "wb", buffering=0) as f:
        try:
            while True:
                n += f.write(b"\0" * chunk)
        except OSError:
            pass
    if chunk > 512:
        n += fill(path + "x", 512)
    return n


class SmallFilesystemTests(FlakyDiskTests):
    """Item 7 on a real 20 MB filesystem, filled up and freed."""

    def setUp(self):
        DiskTestsMixin.setUp(self)
        self.fs = mount_small_fs(self)
        self.dir = os.path.join(self.fs, "data")
        self.path = os.path.join(self.dir, "default.sqlite3")
        self.manifest = os.path.join(self.dir, "default.manifest")

    def fail_writes(self, error=None):
        fill(os.path.join(self.fs, "filler"))
        state = {"calls": 0}

        def free():
            for name in ("filler", "fillerx"):
                if os.path.exists(os.path.join(self.fs, name)):
                    os.remove(os.path.join(self.fs, name))
        return _Freeing(state, free)

    test_retries_back_off = None  # counts write_batch calls: FlakyDiskTests only

    @defer.inlineCallbacks
    def test_restart_on_a_full_disk_says_the_disk_is_full_not_corrupt(self):
        b = yield self.filled(n=50)
        yield b.close()
        fill(os.path.join(self.fs, "filler"))
        e = self.assertRaises(DiskFullError, PersistentBucket, self.dir, clock=self.clock,
                              reactor=reactor)
        self.assertIn("full", str(e))
        self.assertNotIsInstance(e, CorruptDataError)
        os.remove(os.path.join(self.fs, "filler"))
        os.remove(os.path.join(self.fs, "fillerx"))
        b = self.open()
        self.assertEqual(b.stats_sync()["items"], 50)

    @defer.inlineCallbacks
    def test_filled_disk_loses_no_acknowledged_write_after_freeing(self):
        b = self.open(retry_interval=0.01, max_retry_interval=0.05, max_queue=100)
        for i in range(200):
            yield b.upsert("before%d" % i, b"b" * 1000, persist_to=1)
        state = self.fail_writes()
        acked = []
        for i in range(5000):
            try:
                b.store_sync("upsert", "full%d" % i, b"f" * 1000)
            except errors.TemporaryFailError:
                break
            acked.append(i)
            if i % 50 == 0:
                yield task.deferLater(reactor, 0.01, lambda: None)
        self.assertLess(len(acked), 5000)
        self.assertTrue(b.stats_sync()["disk_refusing"])
        state["failing"] = False
        yield self.wait_for(lambda: not b.stats_sync()["disk_write_queue"])
        yield b.close()
        b2 = self.open()
        for i in acked:
            self.assertEqual(b2.get_sync("full%d" % i).raw, b"f" * 1000)
        self.assertEqual(b2.stats_sync()["items"], 200 + len(acked))
        self.flushLoggedErrors()


class _Freeing(dict):
    """``state["failing"] = False`` frees the filled filesystem."""

    def __init__(self, state, free):
        dict.__init__(self, state)
        self._free = free

    def __setitem__(self, k, v):
        if k == "failing" and not v:
            self._free()
        dict.__setitem__(self, k, v)

    def update(self, **kw):
        for k, v in kw.items():
            self[k] = v


class FlushIsConstantTimeTests(DiskTestsMixin, unittest.TestCase):
    """Item 6: a flush is O(1) on the reactor thread, whatever the item count."""

    def count_reactor_work(self, b):
        """Count the per-item steps a flush could take on the reactor thread."""
        counts = {"removed": 0, "mutated": 0}
        remove, mutated = b._remove_item, b._mutated

        def counting_remove(*args):
            counts["removed"] += 1
            return remove(*args)

        def counting_mutated(*args):
            counts["mutated"] += 1
            return mutated(*args)
        b._remove_item = counting_remove
        b._mutated = counting_mutated
        return counts

    def flush_counts(self, b, n):
        for i in range(n):
            b.store_sync("upsert", "k%d" % i, b"v", 0, 3600 if i % 2 else 0)
        b.lock_sync("k0", 5)
        counts = self.count_reactor_work(b)
        self.assertEqual(b.flush_sync(), n)
        self.assertEqual(b.stats_sync()["items"], 0)
        self.assertEqual(b.stats_sync()["locked"], 0)
        return counts

    def test_flush_of_many_items_is_o1_on_the_reactor_thread(self):
        clock = new_clock()
        small = self.flush_counts(EmbeddedBucket(clock=clock, pager_interval=0), 10)
        big = self.flush_counts(EmbeddedBucket(clock=clock, pager_interval=0), 300_000)
        self.assertEqual(small, big)
        self.assertEqual(big, {"removed": 0, "mutated": 0})

    def test_flushed_items_are_freed_in_batches(self):
        from txcb.buckets import table
        clock = new_clock()
        b = EmbeddedBucket(clock=clock, pager_interval=0)
        for i in range(25_000):
            b.store_sync("upsert", "k%d" % i, b"v")
        freed = []
        free = b._free_some

        def recording(old):
            n = len(old)
            free(old)
            freed.append(n - len(old))
        b._free_some = recording
        b.flush_sync()
        self.assertEqual(freed, [])  # nothing freed on the flush's own turn
        clock.advance(0)
        self.assertEqual(freed, [table.FREE_BATCH, table.FREE_BATCH, 5_000])
        self.assertEqual(clock.getDelayedCalls(), [])

    @defer.inlineCallbacks
    def test_persistent_flush_is_o1_and_deletes_from_disk_in_the_background(self):
        b = self.open()
        counts = self.flush_counts(b, 20_000)
        self.assertEqual(counts, {"removed": 0, "mutated": 0})
        yield b.upsert("after", b"a", persist_to=1)
        r = yield b.endure("k5", persist_to=1, check_removed=True, timeout=5)
        self.assertTrue(r.success)
        yield b.close()
        b2 = self.open()
        self.assertEqual(b2.stats_sync()["items"], 1)
        self.assertEqual(b2.get_sync("after").raw, b"a")

    @defer.inlineCallbacks
    def test_flush_while_a_batch_fails_does_not_bring_the_batch_back(self):
        b = self.open(retry_interval=0.01)
        real = _store.write_batch
        gate = defer.Deferred()
        calls = []

        def failing_once(*args):
            calls.append(1)
            if len(calls) == 1:
                from twisted.internet.threads import blockingCallFromThread
                blockingCallFromThread(reactor, lambda: gate)
                raise sqlite3.OperationalError("disk I/O error (simulated)")
            return real(*args)
        self.patch(_store, "write_batch", failing_once)
        b.store_sync("upsert", "gone", b"g")
        b._hurry()
        for _ in range(500):
            if b._writing:
                break
            yield task.deferLater(reactor, 0.005, lambda: None)
        b.flush_sync()
        gate.callback(None)
        yield b.upsert("kept", b"k", persist_to=1)
        yield b.close()
        b2 = self.open()
        self.assertEqual(sorted(b2._items), [b"kept"])
        self.flushLoggedErrors(sqlite3.OperationalError)


class EndureWaitersTests(DiskTestsMixin, unittest.TestCase):
    """Item 2 (the bucket part): waiters are indexed, never polled."""

    def count_checks(self, b):
        calls = []
        endured = b._endured

        def counting(*args):
            calls.append(args[0])
            return endured(*args)
        b._endured = counting
        return calls

    def test_endure_waiters_schedule_no_calls_per_waiter(self):
        clock = new_clock()
        b = EmbeddedBucket(clock=clock, pager_interval=0)
        for i in range(1000):
            b.store_sync("upsert", "k%d" % i, b"v")
        ds = [b.endure("k%d" % i, check_removed=True, timeout=60, interval=0.001)
              for i in range(1000)]
        self.assertLessEqual(len(clock.getDelayedCalls()), 1)
        checks = self.count_checks(b)
        for _ in range(100):
            clock.advance(0.001)
        self.assertEqual(checks, [])  # nothing re-checked while nothing changed
        b.remove_sync("k7")
        clock.advance(0)
        self.assertEqual(checks, [b"k7"])  # exactly the waiter released
        self.assertTrue(self.successResultOf(ds[7]).success)
        for d in ds[:7] + ds[8:]:
            d.cancel()
            self.failureResultOf(d, defer.CancelledError)
        self.assertEqual(len(b._waiters), 0)
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertNotIn("_mutated", b.__dict__)  # no per-mutation hook left

    def test_cancelled_endure_removes_its_waiter_at_once(self):
        clock = new_clock()
        b = EmbeddedBucket(clock=clock, pager_interval=0)
        b.store_sync("upsert", "k", b"v")
        ds = [b.endure("k", check_removed=True, timeout=3600) for _ in range(500)]
        for d in ds:
            d.cancel()
            self.failureResultOf(d, defer.CancelledError)
        self.assertEqual((len(b._waiters), b._waiters.waits_for(b"k")), (0, False))
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_endure_on_an_expiring_key_fires_at_expiry(self):
        clock = new_clock()
        b = EmbeddedBucket(clock=clock, pager_interval=0)
        b.store_sync("upsert", "k", b"v", 0, 5)
        d = b.endure("k", check_removed=True, timeout=10)
        clock.advance(4)
        self.assertNoResult(d)
        clock.advance(1.5)
        self.assertTrue(self.successResultOf(d).success)

    @defer.inlineCallbacks
    def test_commits_do_not_recheck_waiters_they_do_not_release(self):
        b = self.open()
        for i in range(1000):
            b.store_sync("upsert", "w%d" % i, b"v")
        yield b.upsert("sync", b"s", persist_to=1)
        ds = [b.endure("w%d" % i, persist_to=1, check_removed=True, timeout=30)
              for i in range(1000)]
        checks = self.count_checks(b)
        for i in range(20):
            yield b.upsert("other%d" % i, b"o", persist_to=1)
        self.assertEqual(checks, [])
        yield b.remove("w3")
        r = yield ds[3]
        self.assertTrue(r.success)
        self.assertEqual(sorted(set(checks)), [b"w3"])
        for d in ds[4:] + ds[:3]:
            d.cancel()
            self.failureResultOf(d, defer.CancelledError)
        self.assertEqual(len(b._waiters), 0)


class ManifestWriteFailureTests(DiskTestsMixin, unittest.TestCase):
    """A manifest that cannot be written at close does not make a clean stop look lost."""

    @defer.inlineCallbacks
    def test_clean_close_without_a_new_manifest_still_restarts(self):
        import errno
        from txcb.buckets import _manifest
        b = yield self.filled(n=20)
        real = _manifest.write_manifest

        def full(path, m):
            if m.clean:
                raise OSError(errno.ENOSPC, "No space left on device (simulated)")
            return real(path, m)
        _manifest.write_manifest = full
        try:
            yield b.close()
        finally:
            _manifest.write_manifest = real
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        self.assertFalse(os.path.exists(self.path + "-wal"))
        with open(self.manifest) as f:
            self.assertFalse(json.load(f)["clean"])
        b2 = self.open()
        self.assertEqual(b2.stats_sync()["items"], 20)


class DamagedWalTests(DiskTestsMixin, unittest.TestCase):
    """Item 8: a damaged WAL after kill -9 is refused, not replayed up to the damage."""

    @defer.inlineCallbacks
    def test_damaged_wal_after_kill9_is_refused_not_started_with_fewer_items(self):
        b = self.open(checkpoint_interval=3600)
        for i in range(30):  # 30 transactions in the WAL
            yield b.upsert("key%04d" % (i,), value_of(i), persist_to=1)
        kill(b)
        wal = self.path + "-wal"
        with open(wal, "rb") as f:
            data = bytearray(f.read())
        page_size = int.from_bytes(data[8:12], "big")
        frame = 24 + page_size
        self.assertGreater((len(data) - 32) // frame, 20)
        at = 32 + 5 * frame + 24 + 100  # inside the 6th frame's page
        data[at:at + 4] = bytes(255 - x for x in data[at:at + 4])
        with open(wal, "wb") as f:
            f.write(data)
        self.assertRefused(CorruptDataError, wal, "damaged")

    @defer.inlineCallbacks
    def test_intact_wal_after_kill9_restarts_with_everything(self):
        b = self.open(checkpoint_interval=3600)
        for i in range(30):
            yield b.upsert("key%04d" % (i,), value_of(i), persist_to=1)
        kill(b)
        b2 = self.open()
        self.assertEqual(b2.stats_sync()["items"], 30)
