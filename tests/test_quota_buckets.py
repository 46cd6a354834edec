"""
The buckets' RAM quota (issue 17): ephemeral buckets refusing (``none``) or
evicting (``nru``) when full, persistent buckets ejecting values and reading
them back, through restarts, with ``stats()`` figures that add up.

Ephemeral buckets run on a task.Clock (the pager runs on its turns);
persistent buckets write and read back on threads reporting to the real
reactor, so those tests wait for real (short) disk work.
"""

import sqlite3
import time

from twisted.internet import defer, reactor
from twisted.internet.task import Clock, deferLater
from twisted.trial import unittest

from txcb.buckets import items as items_module
from txcb.buckets.embedded import EmbeddedBucket
from txcb.buckets.persistent import PersistentBucket
from txcb.errors import (
    ArgumentError, InternalError, KeyExistsError, NetworkError, NoMemoryError, NotFoundError, RC,
    TemporaryFailError, TooBigError, WouldBlock)
from txcb.formats import FMT_BYTES
from txcb.limits import default_memory_quota, parse_size
import txcb.subdocument as SD

from tests.support.contract import BucketContractMixin
from tests.support import temp_path
from tests.support.quota import AlwaysEjectingBucket

MiB = 1 << 20


def fill(bucket, prefix="k", size=1000, limit=100000):
    """Upsert ``prefix<i>`` values of ``size`` bytes until NoMemoryError; how many fit."""
    for i in range(limit):
        try:
            bucket.store_sync("upsert", "%s%d" % (prefix, i), b"x" * size)
        except NoMemoryError:
            return i
    raise AssertionError("%d items fit in the quota" % (limit,))


def value_of(i, size=2000):
    """A value that says which key it belongs to (and differs from every other)."""
    head = b"value-%08d:" % (i,)
    return (head * (size // len(head) + 1))[:size]


def later(seconds=0.005):
    return deferLater(reactor, seconds, lambda: None)


class QuotaArgumentTests(unittest.TestCase):

    def test_default_quota_is_half_the_machine(self):
        b = EmbeddedBucket(clock=Clock())
        self.assertEqual(b.memory_quota, default_memory_quota())
        self.assertEqual(b.stats_sync()["quota"], default_memory_quota())
        self.assertEqual(b.eviction, "none")

    def test_bad_quota_and_policy_are_argument_errors(self):
        for quota in (0, -1, MiB - 1, "64M", 1.5, True):
            self.assertRaises(ArgumentError, EmbeddedBucket, clock=Clock(),
                              memory_quota=quota)
        e = self.assertRaises(ArgumentError, EmbeddedBucket, clock=Clock(), eviction="lru")
        self.assertIn("none, nru", e.message)
        self.assertRaises(ArgumentError, EmbeddedBucket, clock=Clock(), eviction="value")

    def test_parse_size(self):
        self.assertEqual(parse_size("64M"), 64 * MiB)
        self.assertEqual(parse_size("1g"), 1 << 30)
        self.assertEqual(parse_size("512K"), 512 << 10)
        self.assertEqual(parse_size("4096"), 4096)
        self.assertEqual(parse_size("2GiB"), 2 << 30)
        for bad in ("", "M", "-1M", "1.5G", "64 megabytes", "1P"):
            e = self.assertRaises(ValueError, parse_size, bad)
            self.assertIn("K, M, G or T", str(e))


class NoEvictionTests(unittest.TestCase):
    """``eviction="none"``: full means mutations that grow fail, all else works."""

    def setUp(self):
        self.clock = Clock()
        self.b = EmbeddedBucket(clock=self.clock, memory_quota=MiB)

    def test_full_bucket_refuses_growth_with_no_memory(self):
        n = fill(self.b)
        self.assertGreater(n, 500)
        e = self.assertRaises(NoMemoryError, self.b.store_sync, "upsert", "more", b"x" * 1000)
        self.assertEqual(e.rc, RC.ENOMEM)
        self.assertIsInstance(e, TemporaryFailError)
        s = self.b.stats_sync()
        self.assertLessEqual(s["mem_used"], s["quota"])
        self.assertEqual(s["items"], n)
        self.assertEqual(s["oom_errors"], 2)  # fill's last try, and this one
        self.assertEqual(s["evictions"], 0)

    def test_reads_removes_and_shrinking_writes_still_work(self):
        n = fill(self.b)
        self.assertEqual(self.b.get_sync("k0").value, b"x" * 1000)
        self.b.store_sync("replace", "k1", b"y" * 10)  # shrinks
        self.b.store_sync("upsert", "k2", b"z" * 1000)  # same size
        self.b.remove_sync("k3")
        s = self.b.stats_sync()
        self.assertEqual(s["items"], n - 1)

    def test_removes_make_room_again(self):
        n = fill(self.b)
        for i in range(10):
            self.b.remove_sync("k%d" % i)
        for i in range(10):
            self.b.store_sync("upsert", "new%d" % i, b"x" * 1000)
        self.assertRaises(NoMemoryError, self.b.store_sync, "upsert", "one-more", b"x" * 1000)
        self.assertEqual(self.b.stats_sync()["items"], n)

    def test_every_growing_mutation_is_refused(self):
        fill(self.b)
        fill(self.b, "small", 1)  # the last bytes too
        self.assertRaises(NoMemoryError, self.b.concat_sync, "append", "k0", b"x" * 2000)
        self.assertRaises(NoMemoryError, self.b.counter_sync, "counter", 1, 5)
        self.assertFailure(self.b.insert("new", b"x" * 1000), NoMemoryError)
        self.assertFailure(self.b.mutate_in("doc", SD.upsert("a", 1), upsert_doc=True),
                           NoMemoryError)
        self.assertEqual(self.b.get_sync("k0").value, b"x" * 1000)

    def test_refused_mutation_with_the_lock_cas_keeps_the_lock(self):
        fill(self.b)
        locked = self.b.lock_sync("k0", 10)
        self.assertRaises(NoMemoryError, self.b.store_sync, "replace", "k0", b"x" * 5000,
                          locked.cas)
        self.assertRaises(TemporaryFailError, self.b.store_sync, "replace", "k0", b"x")
        self.b.store_sync("replace", "k0", b"x", locked.cas)
        self.b.store_sync("replace", "k0", b"y")  # unlocked by the mutation

    def test_too_big_append_with_the_lock_cas_keeps_the_lock(self):
        # The bug: _check_mutable released the lock before the size check.
        b = EmbeddedBucket(clock=self.clock, max_value_size=100)
        b.store_sync("upsert", "k", b"x" * 90)
        locked = b.lock_sync("k", 10)
        self.assertRaises(TooBigError, b.concat_sync, "append", "k", b"y" * 20, locked.cas)
        self.assertRaises(TemporaryFailError, b.store_sync, "upsert", "k", b"z")
        self.assertTrue(b.stats_sync()["locked"])

    def test_mem_used_adds_up(self):
        for i in range(100):
            self.b.store_sync("upsert", "key%d" % i, b"v" * i)
        expected = sum(items_module.item_cost(k, it) for k, it in self.b._items.items())
        self.assertEqual(self.b.stats_sync()["mem_used"], expected)
        for i in range(0, 100, 2):
            self.b.remove_sync("key%d" % i)
        self.b.store_sync("upsert", "key1", b"w" * 500, ttl=100)
        expected = sum(items_module.item_cost(k, it) for k, it in self.b._items.items())
        self.assertEqual(self.b.stats_sync()["mem_used"], expected)
        self.b.flush_sync()
        self.assertEqual(self.b.stats_sync()["mem_used"], 0)


class NruEvictionTests(unittest.TestCase):
    """``eviction="nru"``: cold items go, hot ones stay, nothing is refused."""

    def setUp(self):
        self.clock = Clock()
        self.b = EmbeddedBucket(clock=self.clock, memory_quota=MiB, eviction="nru")

    def test_cold_keys_are_evicted_and_hot_ones_kept(self):
        hot = ["hot%d" % i for i in range(50)]
        for k in hot:
            self.b.store_sync("upsert", k, b"h" * 1000)
        for i in range(5000):
            self.b.store_sync("upsert", "cold%d" % i, b"c" * 1000)
            if i % 20 == 0:
                for k in hot:
                    self.b.get_sync(k)
                self.clock.advance(0)  # a reactor turn: the pager runs
        for k in hot:
            self.assertEqual(self.b.get_sync(k).value, b"h" * 1000)
        s = self.b.stats_sync()
        self.assertGreater(s["evictions"], 4000)
        self.assertEqual(s["items"], 5050 - s["evictions"])
        self.assertEqual(s["oom_errors"], 0)
        self.assertLessEqual(s["mem_used"], s["quota"])
        self.assertRaises(NotFoundError, self.b.get_sync, "cold0")

    def test_pager_works_down_to_the_low_watermark(self):
        for i in range(900):
            try:
                self.b.store_sync("upsert", "k%d" % i, b"x" * 1000)
            except NoMemoryError:
                self.fail("nru refused a write")
        s = self.b.stats_sync()
        self.assertGreater(s["mem_used"], s["mem_high_wat"])
        self.clock.advance(0)
        s = self.b.stats_sync()
        self.assertLessEqual(s["mem_used"], s["mem_low_wat"])
        self.assertGreater(s["evictions"], 0)

    def test_locked_items_are_not_evicted(self):
        self.b.store_sync("upsert", "locked", b"l" * 1000)
        cas = self.b.lock_sync("locked", 30).cas
        for i in range(3000):
            self.b.store_sync("upsert", "k%d" % i, b"x" * 1000)
            self.clock.advance(0)
        self.assertEqual(self.b.get_sync("locked").cas, items_module.LOCKED_CAS)
        self.b.unlock_sync("locked", cas)

    def test_refusals_with_nothing_to_evict_do_not_walk_the_keys(self):
        visits = []
        real = self.b._free_item
        self.b._free_item = lambda k, item: visits.append(k) or real(k, item)
        locks = {}
        with self.assertRaises(NoMemoryError):
            for n in range(100000):  # every item locked: nothing can be evicted
                self.b.store_sync("upsert", "k%d" % n, b"x" * 1000)
                locks[n] = self.b.lock_sync("k%d" % n, 30).cas
        first = len(visits)
        self.assertGreater(first, 0)
        for i in range(100):
            self.assertRaises(NoMemoryError, self.b.store_sync, "upsert", "m", b"x" * 1000)
        self.clock.advance(0)
        self.assertEqual(len(visits), first)
        self.b.remove_sync("k0", locks[0])  # room again
        self.b.store_sync("upsert", "m", b"x" * 1000)

    def test_evicted_keys_wake_endure_check_removed(self):
        self.b.store_sync("upsert", "gone", b"x" * 1000)
        d = self.b.endure("gone", persist_to=0, replicate_to=0, check_removed=True,
                          timeout=5)
        self.assertNoResult(d)
        for i in range(3000):
            self.b.store_sync("upsert", "k%d" % i, b"x" * 1000)
            self.clock.advance(0)
        self.successResultOf(d)


class EjectingContractTests(BucketContractMixin, unittest.TestCase):
    """The contract, on a persistent bucket that ejects every clean value it looks up."""

    timeout = 30
    max_persist_to = 1

    def make_bucket(self):
        self.clock = Clock()
        self.clock.advance(time.time())
        b = AlwaysEjectingBucket(temp_path(self, "data"), clock=self.clock, reactor=reactor,
                                 max_value_size=4096, flush_delay=0)
        self.addCleanup(b.close)
        return b

    def advance(self, seconds):
        self.clock.advance(seconds)


class ValueEjectionTests(unittest.TestCase):
    """A persistent bucket over its quota: values ejected, read back, never wrong."""

    timeout = 60

    def setUp(self):
        self.dir = temp_path(self, "data")

    def open(self, quota=2 * MiB, **kw):
        b = PersistentBucket(self.dir, clock=reactor, reactor=reactor, memory_quota=quota,
                             flush_delay=0, **kw)
        self.addCleanup(b.close)
        return b

    @defer.inlineCallbacks
    def load(self, b, n, size=2000):
        """Upsert n values, retrying while the disk is behind; the results by key."""
        results = {}
        for i in range(n):
            while True:
                try:
                    results["k%d" % i] = yield b.upsert("k%d" % i, value_of(i, size))
                    break
                except TemporaryFailError:
                    yield later()
        yield self.settle(b)
        return results

    @defer.inlineCallbacks
    def settle(self, b):
        """Wait until the disk has every write and the pager is done."""
        for _ in range(2000):
            s = b.stats_sync()
            if not s["disk_write_queue"] and b._paging is None:
                return
            yield later()
        raise AssertionError("the bucket never settled: %r" % (b.stats_sync(),))

    def assertConsistent(self, b):
        s = b.stats_sync()
        self.assertLessEqual(s["mem_used"], s["quota"])
        self.assertEqual(s["resident_items"],
                         sum(1 for it in b._items.values() if it[0] != items_module.EJECTED))
        self.assertAlmostEqual(s["resident_ratio"], s["resident_items"] / s["items"])
        return s

    @defer.inlineCallbacks
    def test_every_item_reads_back_with_its_value_and_cas(self):
        b = self.open()
        stored = yield self.load(b, 3000)
        s = self.assertConsistent(b)
        self.assertGreater(s["ejections"], 0)
        self.assertLess(s["resident_items"], 3000)
        for i in range(3000):
            r = yield b.get("k%d" % i)
            self.assertEqual(r.value, value_of(i))
            self.assertEqual(r.cas, stored["k%d" % i].cas)
        s = self.assertConsistent(b)
        self.assertGreater(s["bg_fetches"], 0)
        self.assertEqual(s["op_get"], 3000)  # a read back is one get, not two
        self.assertEqual(s["hits"], 3000)

    @defer.inlineCallbacks
    def test_ejected_values_survive_a_restart_and_warmup_fits_the_quota(self):
        b = self.open()
        stored = yield self.load(b, 3000)
        yield b.close()
        b = self.open(quota=MiB)
        s = self.assertConsistent(b)
        self.assertEqual(s["items"], 3000)
        self.assertLessEqual(s["mem_used"], s["mem_low_wat"])
        self.assertLess(s["resident_items"], 1000)
        for i in range(0, 3000, 7):
            r = yield b.get("k%d" % i)
            self.assertEqual((r.value, r.cas), (value_of(i), stored["k%d" % i].cas))

    @defer.inlineCallbacks
    def test_sync_get_of_an_ejected_value_would_block_and_counts_nothing(self):
        b = self.open()
        yield self.load(b, 3000)
        k = next(k for k, it in b._items.items() if it[0] == items_module.EJECTED)
        before = b.stats_sync()
        self.assertRaises(WouldBlock, b.get_sync, k)
        after = b.stats_sync()
        self.assertEqual(after["hits"], before["hits"])
        r = yield b.get(k)
        self.assertEqual(r.value, value_of(int(k[1:])))
        # Resident now: the synchronous path answers.
        self.assertEqual(b.get_sync(k).value, value_of(int(k[1:])))

    @defer.inlineCallbacks
    def test_metadata_operations_need_no_read_back(self):
        b = self.open()
        yield self.load(b, 3000)
        ejected = [k for k, it in b._items.items() if it[0] == items_module.EJECTED][:4]
        fetches = b.stats_sync()["bg_fetches"]
        meta = b.get_meta_sync(ejected[0])
        self.assertEqual(meta.flags, FMT_BYTES)
        yield self.assertFailure(b.replace(ejected[1], b"new", cas=1), KeyExistsError)
        yield b.upsert(ejected[1], b"new")
        yield b.remove(ejected[2])
        yield self.assertFailure(b.get(ejected[2]), NotFoundError)
        r = yield b.get(ejected[1])
        self.assertEqual(r.value, b"new")
        self.assertEqual(b.stats_sync()["bg_fetches"], fetches)
        self.assertConsistent(b)

    @defer.inlineCallbacks
    def test_operations_on_ejected_values_read_them_back(self):
        b = self.open()
        yield self.load(b, 3000)
        ks = [k for k, it in b._items.items() if it[0] == items_module.EJECTED][:6]
        i = [int(k[1:]) for k in ks]
        r = yield b.lock(ks[0], 5)
        self.assertEqual(r.value, value_of(i[0]))
        yield b.unlock(ks[0], r.cas)
        yield b.append(ks[1], b"!")
        self.assertEqual((yield b.get(ks[1])).value, value_of(i[1]) + b"!")
        yield b.touch(ks[2], 100)
        self.assertEqual((yield b.get(ks[2])).value, value_of(i[2]))
        found = yield b.lookup_in(ks[3], SD.exists("nothing"))
        self.assertEqual(found.cas, b.get_meta_sync(ks[3]).cas)
        got = yield b.get_multi(ks[4:])
        self.assertEqual({k: v.value for k, v in got.items()},
                         {k: value_of(n) for k, n in zip(ks[4:], i[4:])})

    @defer.inlineCallbacks
    def test_scan_reads_ejected_values_back(self):
        b = self.open()
        yield self.load(b, 1500)
        self.assertGreater(b.stats_sync()["ejections"], 0)
        fetches = b.stats_sync()["bg_fetches"]
        ids = []
        scan = yield b.scan(ids_only=True, batch_size=500)
        yield scan.each(lambda row: ids.append(row.key))
        self.assertEqual(len(ids), 1500)
        self.assertEqual(b.stats_sync()["bg_fetches"], fetches)
        rows = []
        scan = yield b.scan(batch_size=200)
        yield scan.each(rows.append)
        self.assertEqual(len(rows), 1500)
        for row in rows:
            self.assertEqual(row.value, value_of(int(row.key[1:])))
        self.assertGreater(b.stats_sync()["bg_fetches"], fetches)

    @defer.inlineCallbacks
    def test_a_damaged_row_is_refused_never_served(self):
        b = self.open()
        yield self.load(b, 3000)
        k = next(k for k, it in b._items.items() if it[0] == items_module.EJECTED)
        conn = sqlite3.connect(b.path)
        (item,) = conn.execute("SELECT item FROM items WHERE key = ?", (k,)).fetchone()
        flipped = item[:-1] + bytes([item[-1] ^ 0xFF])
        conn.execute("UPDATE items SET item = ? WHERE key = ?", (flipped, k))
        conn.commit()
        conn.close()
        e = yield self.assertFailure(b.get(k), InternalError)
        self.assertIn("damaged or missing", e.message)
        self.flushLoggedErrors()

    @defer.inlineCallbacks
    def test_a_missing_row_is_refused_never_served(self):
        b = self.open()
        yield self.load(b, 3000)
        k = next(k for k, it in b._items.items() if it[0] == items_module.EJECTED)
        conn = sqlite3.connect(b.path)
        conn.execute("DELETE FROM items WHERE key = ?", (k,))
        conn.commit()
        conn.close()
        yield self.assertFailure(b.get(k), InternalError)

    @defer.inlineCallbacks
    def test_dirty_items_filling_the_quota_are_a_temporary_failure(self):
        b = self.open(quota=MiB)
        refused = None
        for i in range(2000):  # faster than the disk: nothing is clean to eject
            try:
                b.store_sync("upsert", "k%d" % i, value_of(i))
            except TemporaryFailError as e:
                refused = e
                break
        self.assertIsNotNone(refused)
        self.assertNotIsInstance(refused, NoMemoryError)
        self.assertEqual(refused.rc, RC.ETMPFAIL)
        self.assertIn("waiting for the disk", refused.message)
        yield self.settle(b)
        yield b.upsert("after", b"x" * 1000)  # the writer caught up: room again

    @defer.inlineCallbacks
    def test_read_backs_wake_a_pager_that_found_nothing_to_eject(self):
        # Regression (issue 17, the 1 GiB read-back RSS spike): right after a
        # load every resident value may still be dirty, so the pager's passes
        # free nothing and it waits for the disk's next commit.  Values then
        # read back are clean and could be ejected, but nothing woke the pager
        # for them: mem_used passed the quota (162 MB under 64 MiB) until the
        # writer next committed.
        b = self.open()
        yield self.load(b, 3000)
        ejections = b.stats_sync()["ejections"]
        b._barren = 2  # the state two passes over all-dirty items leave
        peak = 0
        for i in range(3000):
            r = yield b.get("k%d" % i)
            self.assertEqual(r.value, value_of(i))
            peak = max(peak, b.stats_sync()["mem_used"])
        self.assertLessEqual(peak, b.memory_quota)
        self.assertGreater(b.stats_sync()["ejections"], ejections)
        self.assertConsistent(b)

    @defer.inlineCallbacks
    def test_flush_forgets_ejected_items(self):
        b = self.open()
        yield self.load(b, 3000)
        yield b.flush()
        s = b.stats_sync()
        self.assertEqual((s["items"], s["resident_items"], s["mem_used"]), (0, 0, 0))
        yield b.upsert("k1", b"fresh")
        self.assertEqual((yield b.get("k1")).value, b"fresh")

    @defer.inlineCallbacks
    def test_close_fails_requests_waiting_for_a_read_back(self):
        b = self.open()
        yield self.load(b, 3000)
        k = next(k for k, it in b._items.items() if it[0] == items_module.EJECTED)
        d = b.get(k)
        yield b.close()
        yield self.assertFailure(d, NetworkError)
