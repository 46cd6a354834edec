"""
Sub-documents in the bucket layer (issue 15): the stored form of items with
xattrs, xattrs surviving every whole-value operation of the embedded bucket,
the synchronous face, FaultyBucket, and the persistent bucket writing,
checksumming and warming up xattrs (and opening format 3 files as they are).
The semantics themselves are the contract's (tests/support/subdoc_contract.py).
"""

import os
import shutil
import sqlite3
import tempfile

from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from twisted.trial import unittest

import txcb.subdocument as SD
from txcb import errors
from txcb.buckets import _store, items
from txcb.buckets.embedded import EmbeddedBucket
from txcb.buckets.persistent import CorruptDataError, PersistentBucket
from txcb.formats import FMT_JSON
from txcb.testing import FaultyBucket, memory_bucket

from tests.support.buckets import crash
from tests.support.contract import BucketContractMixin

S = SD.Status


def x_upsert(b, key, name="tag", value="v"):
    """Give ``key`` the xattr ``name`` (synchronously)."""
    return b.mutate_in_sync(key, SD.upsert(name, value, xattr=True))


def x_get(b, key, name="tag"):
    return b.lookup_in_sync(key, SD.get(name, xattr=True)).get(0)


class SubdocItemFormatTests(unittest.SynchronousTestCase):
    """items.py: items without xattrs are stored exactly as before."""

    def test_items_without_xattrs_are_byte_identical(self):
        self.assertEqual(items.make_item(7, 0.0, FMT_JSON, b"{}"),
                         b"\x01" + (7).to_bytes(8, "little") + b"{}")
        self.assertEqual(items.make_xitem(7, 0.0, FMT_JSON, b"", b"{}"),
                         items.make_item(7, 0.0, FMT_JSON, b"{}"))
        self.assertEqual(len(items.make_item(7, 5.0, 0xDEAD, b"v")), items.LONG_LEN + 1)

    def test_item_with_xattrs_layout(self):
        blob = items.encode_xattrs({"b": b"2", "a": b'{"x":1}'})
        item = items.make_xitem(9, 12.5, 0xDEAD, blob, b"body")
        self.assertEqual(item[0], items.XATTRS)
        self.assertEqual(items.header(item), (9, 12.5, 0xDEAD, items.XATTRS_LEN + len(blob)))
        self.assertEqual(items.long_unpack(item)[1:], (9, 12.5, 0xDEAD))
        self.assertEqual((items.cas_of(item), items.expiry_of(item)), (9, 12.5))
        self.assertEqual(items.value_len(item), len(blob) + 4)
        self.assertEqual(items.xattrs_of(item), blob)
        self.assertEqual(list(items.decode_xattrs(blob).items()),
                         [("a", b'{"x":1}'), ("b", b"2")])  # in key order
        self.assertEqual(items.xattrs_of(items.make_item(1, 0.0, 0, b"v")), b"")

    def test_with_cas_keeps_everything_else(self):
        for item in (items.make_item(1, 0.0, FMT_JSON, b"v"),
                     items.make_item(1, 3.0, 5, b"v"),
                     items.make_xitem(1, 3.0, 5, items.encode_xattrs({"k": b"1"}), b"v")):
            again = items.with_cas(item, 99)
            self.assertEqual(items.header(again)[1:], items.header(item)[1:])
            self.assertEqual((items.cas_of(again), again[9:]), (99, item[9:]))

    def test_truncated_xattrs_are_refused(self):
        blob = items.encode_xattrs({"key": b'"value"'})
        for cut in range(1, len(blob)):
            self.assertRaises(ValueError, items.decode_xattrs, blob[:cut])


class SubdocEmbeddedTests(unittest.TestCase):
    """The embedded bucket keeps xattrs through every whole-value operation."""

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.b = EmbeddedBucket(clock=self.clock, pager_interval=0)
        self.addCleanup(self.b.close)
        self.b.store_sync("upsert", "k", {"a": 1})
        x_upsert(self.b, "k")

    def test_whole_value_operations_keep_xattrs(self):
        b = self.b
        steps = [
            lambda: b.store_sync("upsert", "k", {"a": 2}),
            lambda: b.store_sync("replace", "k", {"a": 3}, ttl=100),
            lambda: b.touch_sync("k", 200),
            lambda: b.get_sync("k", ttl=300),
            lambda: b.unlock_sync("k", b.lock_sync("k", 5).cas),
            lambda: b.store_sync("upsert", "n", 1),
        ]
        for step in steps:
            step()
            self.assertEqual(x_get(b, "k"), (0, "v"))
        self.assertEqual(b.get_sync("k").value, {"a": 3})
        b.store_sync("upsert", "c", 5)
        x_upsert(b, "c")
        b.counter_sync("c", 2)
        b.concat_sync("append", "c", b"0")
        self.assertEqual((b.get_sync("c").raw, x_get(b, "c")), (b"70", (0, "v")))

    def test_get_and_scan_see_the_body_only(self):
        self.assertEqual(self.b.get_sync("k").raw, b'{"a":1}')
        rows, _ = self.b.scan_batch_sync(b"", b"", b"", False, 10, 1 << 20)
        self.assertEqual([(r.key, r.raw) for r in rows], [("k", b'{"a":1}')])

    def test_bytes_count_xattrs_and_return_to_zero(self):
        blob = items.encode_xattrs({"tag": b'"v"'})
        self.assertEqual(self.b.stats_sync()["bytes"], 1 + len(b'{"a":1}') + len(blob))
        self.b.remove_sync("k")
        self.assertEqual(self.b.stats_sync()["bytes"], 0)

    def test_removing_the_last_xattr_stores_a_plain_item(self):
        self.b.mutate_in_sync("k", SD.remove("tag", xattr=True))
        self.assertEqual(self.b._items[b"k"][0], 0x01)  # a short header again

    def test_expiry_of_an_item_with_xattrs(self):
        self.b.mutate_in_sync("k", SD.upsert("b", 1), ttl=10)
        self.assertEqual(self.b._items[b"k"][0], items.XATTRS)
        r = self.b.lookup_in_sync("k", SD.get("$document.exptime", xattr=True))
        self.assertEqual(r[0], 1_700_000_010)
        self.clock.advance(11)
        self.assertRaises(errors.NotFoundError, self.b.get_sync, "k")
        self.assertEqual(self.b.stats_sync()["bytes"], 0)

    def test_sync_results_and_stats(self):
        r = self.b.mutate_in_sync("k", SD.counter("a", 41))
        self.assertIsInstance(r, SD.SubdocResult)
        self.assertEqual((r[0], r.seqno, r.mutation_token), (42, self.b._seqno,
                                                             (0, self.b._seqno)))
        self.assertFalse(self.b.on_durable(r, 0, 0, None))
        self.assertEqual(self.b.lookup_in_sync("k", SD.get("a"))[0], 42)
        stats = self.b.stats_sync()
        self.assertEqual((stats["op_lookup_in"], stats["op_mutate_in"]), (1, 2))

    def test_a_failed_mutation_takes_no_cas_and_no_seqno(self):
        cas, seqno = self.b._cas, self.b._seqno
        self.assertRaises(SD.SubdocError, self.b.mutate_in_sync, "k", SD.insert("a", 2))
        self.assertEqual((self.b._cas, self.b._seqno), (cas, seqno))

    def test_a_failed_mutation_with_the_lock_cas_keeps_the_lock(self):
        locked = self.b.lock_sync("k", 10)
        e = self.assertRaises(SD.SubdocError, self.b.mutate_in_sync, "k", SD.insert("a", 2),
                              cas=locked.cas)
        self.assertEqual(e.index, 0)
        self.assertRaises(errors.TemporaryFailError, self.b.store_sync, "upsert", "k", 1)
        self.assertRaises(errors.TemporaryFailError, self.b.mutate_in_sync, "k",
                          SD.upsert("a", 2))
        r = self.b.mutate_in_sync("k", SD.upsert("a", 2), cas=locked.cas)
        self.b.store_sync("upsert", "k", {"a": 3}, cas=r.cas)  # unlocked now

    def test_specs_that_are_not_specs_are_an_argument_error(self):
        e = self.assertRaises(errors.ArgumentError, self.b.lookup_in_sync, "k", "a")
        self.assertIn("txcb.subdocument", str(e))
        self.assertRaises(errors.ArgumentError, self.b.mutate_in_sync, "k", ("a", 1))

    def test_closed_bucket_refuses(self):
        self.b.close()
        self.assertRaises(errors.NetworkError, self.b.lookup_in_sync, "k", SD.get("a"))
        self.assertRaises(errors.NetworkError, self.b.mutate_in_sync, "k", SD.upsert("a", 1))


class SubdocTombstoneTests(unittest.SynchronousTestCase):
    """A deletion keeps the system xattrs on a tombstone, as in Couchbase."""

    def setUp(self):
        self.b = memory_bucket()
        self.b.store_sync("upsert", "k", {"a": 1})
        self.b.mutate_in_sync("k", SD.upsert("_sys", 1, xattr=True),
                              SD.upsert("user", 2, xattr=True))

    def deleted(self, *specs):
        return self.b.lookup_in_sync("k", *specs, access_deleted=True)

    def test_remove_keeps_system_xattrs_only(self):
        r = self.b.remove_sync("k")
        found = self.deleted(SD.get("_sys", xattr=True), SD.get("user", xattr=True),
                             SD.get("$document.deleted", xattr=True))
        self.assertEqual([found.get(i) for i in range(3)],
                         [(0, 1), (S.PATH_ENOENT, None), (0, True)])
        self.assertEqual((found.rc, found.cas), (S.MULTI_PATH_FAILURE_DELETED, r.cas))
        self.assertEqual(self.deleted(SD.get("_sys", xattr=True)).rc, S.SUCCESS_DELETED)
        self.assertRaises(errors.NotFoundError, self.b.lookup_in_sync, "k", SD.get("a"))
        self.assertRaises(errors.NotFoundError, self.b.get_sync, "k")
        self.assertEqual(self.b.stats_sync()["items"], 0)

    def test_remove_fulldoc_keeps_the_system_xattrs_it_wrote(self):
        self.b.mutate_in_sync("k", SD.upsert("_new", 3, xattr=True),
                              SD.upsert("user2", 4, xattr=True), SD.remove_fulldoc())
        found = self.deleted(SD.get("$XTOC", xattr=True))
        self.assertEqual(found[0], ["_new", "_sys"])

    def test_expiry_leaves_a_tombstone(self):
        self.b.touch_sync("k", 5)
        self.b.clock.advance(6)
        self.assertEqual(self.b.run_pager(), 1)
        self.assertEqual(self.deleted(SD.get("_sys", xattr=True))[0], 1)

    def test_a_new_document_replaces_the_tombstone(self):
        self.b.remove_sync("k")
        self.assertRaises(errors.NotFoundError, self.b.mutate_in_sync, "k", SD.upsert("a", 1))
        self.b.mutate_in_sync("k", SD.upsert("a", 1), upsert_doc=True)
        self.assertEqual(self.b.lookup_in_sync("k", SD.get("_sys", xattr=True)).status(0),
                         S.PATH_ENOENT)
        self.assertEqual(self.b._tombstones, {})

    def test_no_system_xattrs_no_tombstone_and_flush_drops_them(self):
        self.b.store_sync("upsert", "u", {"a": 1})
        self.b.mutate_in_sync("u", SD.upsert("user", 1, xattr=True))
        self.b.remove_sync("u")
        self.assertRaises(errors.NotFoundError, self.b.lookup_in_sync, "u",
                          SD.get("user", xattr=True), access_deleted=True)
        self.b.remove_sync("k")
        self.assertEqual(list(self.b._tombstones), [b"k"])
        self.b.flush_sync()
        self.assertEqual(self.b._tombstones, {})


class SubdocTombstoneBoundTests(unittest.TestCase):
    """Tombstones are bounded: the oldest go first, from disk too."""

    timeout = 30

    def test_the_oldest_tombstone_goes_first(self):
        b = memory_bucket()
        b.max_tombstones = 3
        for i in range(5):
            b.mutate_in_sync("k%d" % i, SD.upsert("_s", i, xattr=True), SD.upsert("a", 1),
                             upsert_doc=True)
            b.remove_sync("k%d" % i)
        self.assertEqual(list(b._tombstones), [b"k2", b"k3", b"k4"])
        self.assertEqual(b.stats_sync()["tombstones"], 3)
        self.assertRaises(errors.NotFoundError, b.lookup_in_sync, "k1",
                          SD.get("_s", xattr=True), access_deleted=True)

    @defer.inlineCallbacks
    def test_a_purged_tombstone_leaves_the_data_file(self):
        clock = Clock()
        base = tempfile.mkdtemp(prefix="txcb-subdoc-")
        self.addCleanup(shutil.rmtree, base, True)
        b = PersistentBucket(os.path.join(base, "data"), clock=clock, reactor=reactor)
        self.addCleanup(b.close)
        b.max_tombstones = 1
        for key in ("a", "b"):
            yield b.mutate_in(key, SD.upsert("_s", 1, xattr=True), SD.upsert("a", 1),
                              upsert_doc=True)
            yield b.remove(key, persist_to=1)
        conn = sqlite3.connect(b.path)
        try:
            self.assertEqual([k for k, in conn.execute("SELECT key FROM items")], [b"b"])
        finally:
            conn.close()


class SubdocFaultyBucketTests(unittest.TestCase):
    def test_faults_apply_and_calls_are_forwarded(self):
        inner = memory_bucket()
        inner.store_sync("upsert", "k", {"a": 1})
        fb = FaultyBucket(inner)
        fb.fail("mutate_in", errors.TemporaryFailError("busy"), times=1)
        self.failureResultOf(fb.mutate_in("k", SD.upsert("a", 2)), errors.TemporaryFailError)
        r = self.successResultOf(fb.mutate_in("k", SD.upsert("a", 2), cas=0, ttl=0))
        self.assertEqual(self.successResultOf(fb.lookup_in("k", SD.get("a")))[0], 2)
        self.assertEqual(inner.get_sync("k").cas, r.cas)
        self.assertEqual([c[0] for c in fb.calls], ["mutate_in", "mutate_in", "lookup_in"])
        fb.hang("lookup_in")
        self.assertNoResult(fb.lookup_in("k", SD.get("a")))


class SubdocPersistentTests(unittest.TestCase):
    """Xattrs are written, checksummed and warmed up with their item."""

    timeout = 30

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        base = tempfile.mkdtemp(prefix="txcb-subdoc-")
        self.addCleanup(shutil.rmtree, base, True)
        self.dir = os.path.join(base, "data")
        self.path = os.path.join(self.dir, "default.sqlite3")

    def open(self):
        b = PersistentBucket(self.dir, clock=self.clock, reactor=reactor)
        self.addCleanup(b.close)
        return b

    def rows(self):
        conn = sqlite3.connect(self.path)
        try:
            return dict(conn.execute("SELECT key, item FROM items"))
        finally:
            conn.close()

    @defer.inlineCallbacks
    def test_xattrs_persist_and_warm_up(self):
        b = self.open()
        yield b.upsert("k", {"a": 1})
        r = yield b.mutate_in("k", SD.upsert("meta", {"v": [1]}, xattr=True),
                              SD.upsert("_sys", SD.MutationMacro.CAS, xattr=True),
                              SD.counter("a", 1), persist_to=1)
        self.assertEqual(self.rows()[b"k"], b._items[b"k"])
        yield b.close()
        b = self.open()
        self.assertEqual(b.stats_sync()["warmup_items"], 1)
        found = b.lookup_in_sync("k", SD.get("meta", xattr=True), SD.get("_sys", xattr=True),
                                 SD.get("a"))
        self.assertEqual((found[0], found[1], found[2], found.cas),
                         ({"v": [1]}, r[1], 2, r.cas))
        self.assertEqual(b.get_sync("k").value, {"a": 2})
        self.assertEqual(b.stats_sync()["bytes"], 1 + items.value_len(b._items[b"k"]))
        b.remove_sync("k")
        self.assertEqual((b.stats_sync()["bytes"], b.stats_sync()["tombstones"]), (0, 1))

    @defer.inlineCallbacks
    def test_xattrs_survive_a_crash_after_persist_to(self):
        b = self.open()
        yield b.mutate_in("k", SD.upsert("x", 1, xattr=True), SD.upsert("a", 1),
                          upsert_doc=True, persist_to=1)
        crash(b)
        b = self.open()
        self.assertEqual(x_get(b, "k", "x"), (0, 1))

    @defer.inlineCallbacks
    def test_a_flipped_byte_in_the_xattrs_is_refused(self):
        b = self.open()
        yield b.mutate_in("k", SD.upsert("x", "XATTRXATTRXATTR", xattr=True),
                          SD.upsert("a", 1), upsert_doc=True, persist_to=1)
        yield b.close()
        with open(self.path, "rb") as f:
            data = bytearray(f.read())
        at = data.find(b"XATTRXATTRXATTR")
        self.assertGreater(at, 0)
        data[at + 3] ^= 0x01
        with open(self.path, "wb") as f:
            f.write(data)
        e = self.assertRaises(CorruptDataError, PersistentBucket, self.dir, clock=self.clock,
                              reactor=reactor)
        self.assertIn("checksum", str(e))

    @defer.inlineCallbacks
    def test_format_3_file_opens_with_its_items_as_they_are(self):
        b = self.open()
        yield b.upsert("plain", {"a": 1})
        yield b.upsert("long", "v", ttl=3600, persist_to=1)
        yield b.close()
        conn = sqlite3.connect(self.path)
        conn.execute(_store.META, ("format", 3))
        conn.commit()
        conn.close()
        before = self.rows()
        b = self.open()
        self.assertEqual(b.get_sync("plain").value, {"a": 1})
        self.assertEqual(b.get_sync("long").value, "v")
        self.assertEqual(self.rows(), before)
        conn = sqlite3.connect(self.path)
        try:
            self.assertEqual(conn.execute(
                "SELECT value FROM meta WHERE name = 'format'").fetchone()[0],
                _store.FORMAT_VERSION)
        finally:
            conn.close()
        self.assertEqual(_store.FORMAT_VERSION, 4)

    def test_mutations_are_refused_while_the_disk_cannot_take_them(self):
        b = self.open()
        b.store_sync("upsert", "k", {"a": 1})
        b._refuse(True)  # as a failing disk with a full queue makes it
        self.assertRaises(errors.TemporaryFailError, b.mutate_in_sync, "k", SD.upsert("a", 2))
        self.failureResultOf(b.mutate_in("k", SD.upsert("a", 2)), errors.TemporaryFailError)
        self.assertEqual(b.lookup_in_sync("k", SD.get("a"))[0], 1)
        b._refuse(False)
        b.mutate_in_sync("k", SD.upsert("a", 2))
        self.assertEqual(b.get_sync("k").value, {"a": 2})

    @defer.inlineCallbacks
    def test_remove_fulldoc_removes_the_row(self):
        b = self.open()
        yield b.mutate_in("k", SD.upsert("x", 1, xattr=True), SD.upsert("a", 1),
                          upsert_doc=True, persist_to=1)
        yield b.mutate_in("k", SD.remove_fulldoc(), persist_to=1)
        self.assertEqual(self.rows(), {})

    @defer.inlineCallbacks
    def test_tombstones_persist_and_warm_up(self):
        b = self.open()
        yield b.upsert("k", {"a": 1})
        yield b.upsert("plain", 1)
        yield b.mutate_in("k", SD.upsert("_sys", {"rev": 1}, xattr=True),
                          SD.upsert("user", 1, xattr=True))
        r = yield b.remove("k", persist_to=1)
        self.assertEqual(self.rows()[b"k"][0], items.TOMBSTONE)
        yield b.close()
        for restart in (self.open, lambda: crash(self.open()) or self.open()):
            b = restart()
            self.assertEqual(b.stats_sync()["items"], 1)
            self.assertRaises(errors.NotFoundError, b.get_sync, "k")
            found = b.lookup_in_sync("k", SD.get("_sys", xattr=True),
                                     SD.get("user", xattr=True), access_deleted=True)
            self.assertEqual((found.rc, found.get(0), found.status(1), found.cas),
                             (S.MULTI_PATH_FAILURE_DELETED, (0, {"rev": 1}), S.PATH_ENOENT,
                              r.cas))
            yield b.close()
        b = self.open()
        yield b.upsert("k", {"new": 1}, persist_to=1)
        self.assertEqual(b.lookup_in_sync("k", SD.get("_sys", xattr=True)).status(0),
                         S.PATH_ENOENT)
        yield b.close()
        b = self.open()
        self.assertEqual(b.get_sync("k").value, {"new": 1})
        self.assertEqual(b.lookup_in_sync("k", SD.get("_sys", xattr=True),
                                          access_deleted=True).status(0), S.PATH_ENOENT)


class FaultyBucketContractTests(BucketContractMixin, unittest.TestCase):
    """FaultyBucket without faults is its bucket: the whole contract, sub-documents too."""

    def make_bucket(self):
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        inner = EmbeddedBucket(clock=self.clock, max_value_size=4096, pager_interval=0)
        self.addCleanup(inner.close)
        return FaultyBucket(inner, self.clock)

    def advance(self, seconds):
        self.clock.advance(seconds)
