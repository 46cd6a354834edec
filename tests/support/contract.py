"""
The IBucket contract suite: every provider must behave exactly like this.

A provider's test case mixes in :class:`BucketContractMixin` and defines
``make_bucket()`` (returning a bucket or a Deferred of one, already cleaned up
by the test case) and ``advance(seconds)`` (moving the clock the bucket uses
for TTLs and locks).  Providers that cannot support something set the
``supports_*`` flags to False; such tests then assert NotSupportedError
instead of being skipped silently.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.defer import inlineCallbacks
from zope.interface.verify import verifyObject

from txcb import errors
from txcb.formats import FMT_BYTES, FMT_JSON, FMT_PICKLE, FMT_UTF8, Encoded, Transcoder
from txcb.interfaces import IBucket, ISyncBucket
from txcb.results import MultiResult, OperationResult, ScanItem, ValueResult

from tests.support.subdoc_contract import SubdocContractMixin

U64 = 2 ** 64 - 1


class BucketContractMixin(SubdocContractMixin):
    """The behaviour tests, written once (the sub-document ones: SubdocContractMixin)."""

    supports_locks = True
    #: The most the provider can persist to (durability tests use it).
    max_persist_to = 0
    #: stats() fires ``{stat: {server: value}}`` (the Couchbase SDK's shape
    #: for a cluster) instead of ``{stat: value}``; tests sum over servers.
    stats_per_server = False

    def stat(self, s: Any, name: str) -> Any:
        """One counter from a stats() result (summed over servers if per server)."""
        v = s[name]
        return sum(v.values()) if self.stats_per_server else v

    def make_bucket(self) -> Any:
        raise NotImplementedError

    def advance(self, seconds: float) -> Any:
        raise NotImplementedError

    #: A TTL the provider can wait out (see :meth:`expire`).
    short_ttl = 5

    def expire(self, ttl: int) -> Any:
        """Let an item stored with ``ttl`` expire (default: move the clock)."""
        return self.advance(ttl + 1)

    @inlineCallbacks
    def bucket(self):
        b = yield defer.maybeDeferred(self.make_bucket)
        return b

    @inlineCallbacks
    def assertFails(self, d, exc_type, rc=None):
        try:
            r = yield d
        except exc_type as e:
            if rc is not None:
                self.assertEqual(e.rc, rc)
            return e
        self.fail("expected %s, got result %r" % (exc_type.__name__, r))

    # -- the interface itself ----------------------------------------------

    @inlineCallbacks
    def test_provides_ibucket(self):
        b = yield self.bucket()
        self.assertTrue(verifyObject(IBucket, b))

    @inlineCallbacks
    def test_a_declared_sync_capability_is_complete(self):
        """A provider that declares ISyncBucket has every method of it."""
        b = yield self.bucket()
        if ISyncBucket.providedBy(b):
            self.assertTrue(verifyObject(ISyncBucket, b))

    # -- get / upsert -------------------------------------------------------

    @inlineCallbacks
    def test_upsert_then_get_roundtrips_every_format(self):
        b = yield self.bucket()
        cases = [
            ("s", "héllo", FMT_UTF8),
            ("b", b"\x00\xffraw\r\n", FMT_BYTES),
            ("j", {"a": [1, 2.5, None, True]}, FMT_JSON),
            ("i", 42, FMT_JSON),
            ("l", [1, "two"], FMT_JSON),
        ]
        for key, value, fmt in cases:
            r = yield b.upsert(key, value)
            self.assertIsInstance(r, OperationResult)
            self.assertTrue(r.success)
            self.assertNotEqual(r.cas, 0)
            g = yield b.get(key)
            self.assertIsInstance(g, ValueResult)
            self.assertEqual(g.value, value)
            self.assertEqual(g.flags, fmt)
            self.assertEqual(g.cas, r.cas)
            self.assertEqual(g.key, key)
            self.assertEqual(g.rc, 0)

    @inlineCallbacks
    def test_get_missing_key_errbacks_not_found(self):
        b = yield self.bucket()
        e = yield self.assertFails(b.get("nope"), errors.NotFoundError, 0x01)
        self.assertEqual(e.key, "nope")

    @inlineCallbacks
    def test_get_missing_key_quiet_fires_failed_result(self):
        b = yield self.bucket()
        r = yield b.get("nope", quiet=True)
        self.assertFalse(r.success)
        self.assertIsNone(r.value)
        self.assertEqual(r.rc, errors.RC.KEY_ENOENT)

    @inlineCallbacks
    def test_bytes_and_str_keys_are_the_same_key(self):
        b = yield self.bucket()
        yield b.upsert("clé", "v")
        r = yield b.get("clé".encode("utf-8"))
        self.assertEqual(r.value, "v")

    @inlineCallbacks
    def test_explicit_format_and_encoded_passthrough(self):
        b = yield self.bucket()
        yield b.upsert("p", {"x": 1}, format=FMT_PICKLE)
        r = yield b.get("p")
        self.assertEqual(r.flags, FMT_PICKLE)
        # Pickle is never decoded unless the caller opts in.
        self.assertRaises(errors.ValueFormatError, lambda: r.value)
        self.assertEqual(Transcoder(unpickle=True).decode(r.raw, r.flags), {"x": 1})
        yield b.upsert("e", Encoded(b"opaque", 0xDEADBEEF))
        r = yield b.get("e")
        self.assertEqual((r.raw, r.flags, r.value), (b"opaque", 0xDEADBEEF, b"opaque"))

    @inlineCallbacks
    def test_unencodable_value_errbacks_value_format_error(self):
        b = yield self.bucket()
        yield self.assertFails(b.upsert("k", object()), errors.ValueFormatError)
        yield self.assertFails(b.upsert("k", 5, format=FMT_UTF8), errors.ValueFormatError)
        yield self.assertFails(b.get("k"), errors.NotFoundError)

    @inlineCallbacks
    def test_upsert_with_cas(self):
        b = yield self.bucket()
        r1 = yield b.upsert("k", "v1")
        r2 = yield b.upsert("k", "v2", cas=r1.cas)
        self.assertNotEqual(r1.cas, r2.cas)
        yield self.assertFails(b.upsert("k", "v3", cas=r1.cas), errors.KeyExistsError, 0x02)
        r = yield b.get("k")
        self.assertEqual(r.value, "v2")
        yield self.assertFails(b.upsert("missing", "v", cas=r1.cas), errors.NotFoundError)

    @inlineCallbacks
    def test_cas_values_increase(self):
        b = yield self.bucket()
        seen = []
        for i in range(5):
            r = yield b.upsert("k%d" % (i % 2,), i)
            seen.append(r.cas)
        self.assertEqual(seen, sorted(set(seen)))

    # -- insert / replace / remove -------------------------------------------

    @inlineCallbacks
    def test_insert(self):
        b = yield self.bucket()
        yield b.insert("k", "v")
        yield self.assertFails(b.insert("k", "other"), errors.KeyExistsError, 0x02)
        r = yield b.get("k")
        self.assertEqual(r.value, "v")

    @inlineCallbacks
    def test_replace(self):
        b = yield self.bucket()
        yield self.assertFails(b.replace("k", "v"), errors.NotFoundError, 0x01)
        r1 = yield b.upsert("k", "v")
        yield b.replace("k", "v2", cas=r1.cas)
        yield self.assertFails(b.replace("k", "v3", cas=r1.cas), errors.KeyExistsError)
        r = yield b.get("k")
        self.assertEqual(r.value, "v2")

    @inlineCallbacks
    def test_remove(self):
        b = yield self.bucket()
        r1 = yield b.upsert("k", "v")
        yield self.assertFails(b.remove("k", cas=r1.cas + 1), errors.KeyExistsError)
        r = yield b.remove("k", cas=r1.cas)
        self.assertTrue(r.success)
        yield self.assertFails(b.get("k"), errors.NotFoundError)
        yield self.assertFails(b.remove("k"), errors.NotFoundError)
        q = yield b.remove("k", quiet=True)
        self.assertFalse(q.success)
        self.assertEqual(q.rc, errors.RC.KEY_ENOENT)

    # -- validation -----------------------------------------------------------

    @inlineCallbacks
    def test_illegal_keys_errback_argument_error(self):
        b = yield self.bucket()
        for bad in ["", b"", "x" * 251, b"y" * 251, "é" * 126, None, 12, 1.5]:
            yield self.assertFails(b.get(bad), errors.ArgumentError, 0x04)
            yield self.assertFails(b.upsert(bad, "v"), errors.ArgumentError, 0x04)
        yield b.upsert("x" * 250, "longest key")
        r = yield b.get(b"x" * 250)
        self.assertEqual(r.value, "longest key")

    @inlineCallbacks
    def test_illegal_ttls_errback_argument_error(self):
        b = yield self.bucket()
        for bad in [-1, 2 ** 32, "10", 1.5]:
            yield self.assertFails(b.upsert("k", "v", ttl=bad), errors.ArgumentError)
        yield self.assertFails(b.get("k"), errors.NotFoundError)

    @inlineCallbacks
    def test_too_big_value_errbacks_too_big(self):
        b = yield self.bucket()
        limit = yield self.max_value_size(b)
        yield b.upsert("k", b"x" * limit)
        yield self.assertFails(b.upsert("k2", b"x" * (limit + 1)), errors.TooBigError, 0x03)
        yield self.assertFails(b.get("k2"), errors.NotFoundError)
        yield self.assertFails(b.append("k", b"y"), errors.TooBigError)
        r = yield b.get("k")
        self.assertEqual(len(r.raw), limit)

    def max_value_size(self, b):
        return b.max_value_size

    # -- TTLs ---------------------------------------------------------------

    @inlineCallbacks
    def test_relative_ttl_expires(self):
        b = yield self.bucket()
        yield b.upsert("k", "v", ttl=10)
        yield self.advance(9)
        r = yield b.get("k")
        self.assertEqual(r.value, "v")
        yield self.advance(1.5)
        yield self.assertFails(b.get("k"), errors.NotFoundError)

    @inlineCallbacks
    def test_absolute_ttl_in_the_past_is_expired(self):
        b = yield self.bucket()
        # Larger than 30 days: an absolute Unix time, and 1970-02-01 is past.
        yield b.upsert("k", "v", ttl=31 * 24 * 3600)
        yield self.assertFails(b.get("k"), errors.NotFoundError)

    @inlineCallbacks
    def test_touch_changes_expiry(self):
        b = yield self.bucket()
        yield self.assertFails(b.touch("k", 10), errors.NotFoundError)
        yield b.upsert("k", "v", ttl=5)
        r = yield b.touch("k", 100)
        self.assertTrue(r.success)
        yield self.advance(50)
        g = yield b.get("k")
        self.assertEqual(g.value, "v")
        yield b.touch("k", 0)
        yield self.advance(1000)
        g = yield b.get("k")
        self.assertEqual(g.value, "v")

    @inlineCallbacks
    def test_get_with_ttl_touches(self):
        b = yield self.bucket()
        yield b.upsert("k", "v", ttl=5)
        r = yield b.get("k", ttl=100)
        self.assertEqual(r.value, "v")
        yield self.advance(50)
        r = yield b.get("k")
        self.assertEqual(r.value, "v")

    # -- locks ----------------------------------------------------------------

    @inlineCallbacks
    def test_lock_blocks_mutations_until_unlock(self):
        b = yield self.bucket()
        if not self.supports_locks:
            yield self.assertFails(b.lock("k", ttl=5), errors.NotSupportedError)
            return
        yield self.assertFails(b.lock("k", ttl=5), errors.NotFoundError)
        yield b.upsert("k", "v")
        locked = yield b.lock("k", ttl=10)
        self.assertEqual(locked.value, "v")
        yield self.assertFails(b.lock("k", ttl=5), errors.TemporaryFailError, 0x86)
        yield self.assertFails(b.upsert("k", "x"), errors.TemporaryFailError)
        yield self.assertFails(b.replace("k", "x", cas=locked.cas + 1),
                               errors.TemporaryFailError)
        yield self.assertFails(b.remove("k"), errors.TemporaryFailError)
        yield self.assertFails(b.touch("k", 10), errors.TemporaryFailError)
        yield self.assertFails(b.unlock("k", locked.cas + 1), errors.TemporaryFailError)
        g = yield b.get("k")
        self.assertEqual(g.value, "v")
        self.assertEqual(g.cas, U64)
        yield b.unlock("k", locked.cas)
        yield b.upsert("k", "after")
        g = yield b.get("k")
        self.assertEqual(g.value, "after")
        yield self.assertFails(b.unlock("k", g.cas), errors.TemporaryFailError)

    @inlineCallbacks
    def test_mutating_with_lock_cas_unlocks(self):
        b = yield self.bucket()
        if not self.supports_locks:
            return
        yield b.upsert("k", "v")
        locked = yield b.lock("k", ttl=10)
        r = yield b.replace("k", "new", cas=locked.cas)
        yield b.upsert("k", "free again", cas=r.cas)
        yield b.upsert("k", "no cas needed")

    @inlineCallbacks
    def test_lock_expires(self):
        b = yield self.bucket()
        if not self.supports_locks:
            return
        yield b.upsert("k", "v")
        yield b.lock("k", ttl=3)
        yield self.advance(2)
        yield self.assertFails(b.upsert("k", "x"), errors.TemporaryFailError)
        yield self.advance(1.5)
        yield b.upsert("k", "x")

    @inlineCallbacks
    def test_lock_ttl_range(self):
        b = yield self.bucket()
        if not self.supports_locks:
            return
        yield b.upsert("k", "v")
        for bad in [0, -1, 31]:
            yield self.assertFails(b.lock("k", ttl=bad), errors.ArgumentError)
        r = yield b.lock("k", ttl=30)
        self.assertTrue(r.success)

    # -- counters -------------------------------------------------------------

    @inlineCallbacks
    def test_counter(self):
        b = yield self.bucket()
        yield self.assertFails(b.counter("c"), errors.NotFoundError)
        r = yield b.counter("c", delta=5, initial=10)
        self.assertEqual(r.value, 10)
        r = yield b.counter("c", delta=5)
        self.assertEqual(r.value, 15)
        r = yield b.counter("c", delta=-20)
        self.assertEqual(r.value, 0)
        g = yield b.get("c")
        self.assertEqual(g.value, 0)

    @inlineCallbacks
    def test_counter_wraps_at_64_bits(self):
        b = yield self.bucket()
        yield b.counter("c", initial=U64 - 1)
        r = yield b.counter("c", delta=1)
        self.assertEqual(r.value, U64)
        r = yield b.counter("c", delta=2)
        self.assertEqual(r.value, 1)

    @inlineCallbacks
    def test_counter_on_non_numeric_value(self):
        b = yield self.bucket()
        yield b.upsert("c", "abc")
        yield self.assertFails(b.counter("c", delta=1), errors.DeltaBadvalError, 0x06)
        r = yield b.get("c")
        self.assertEqual(r.value, "abc")

    @inlineCallbacks
    def test_counter_on_text_number(self):
        b = yield self.bucket()
        yield b.upsert("c", "41")
        r = yield b.counter("c")
        self.assertEqual(r.value, 42)

    @inlineCallbacks
    def test_counter_with_ttl_on_creation(self):
        b = yield self.bucket()
        yield b.counter("c", initial=1, ttl=10)
        yield self.advance(11)
        yield self.assertFails(b.get("c"), errors.NotFoundError)

    # -- append / prepend ---------------------------------------------------------

    @inlineCallbacks
    def test_append_prepend(self):
        b = yield self.bucket()
        yield self.assertFails(b.append("k", "x"), errors.NotStoredError, 0x05)
        yield self.assertFails(b.prepend("k", "x"), errors.NotStoredError, 0x05)
        r0 = yield b.upsert("k", "mid")
        r1 = yield b.append("k", "-end")
        yield b.prepend("k", b"start-")
        r = yield b.get("k")
        self.assertEqual(r.value, "start-mid-end")
        self.assertEqual(r.flags, FMT_UTF8)
        yield self.assertFails(b.append("k", "x", cas=r0.cas), errors.KeyExistsError)
        self.assertNotEqual(r0.cas, r1.cas)

    # -- multi ------------------------------------------------------------------

    @inlineCallbacks
    def test_get_multi(self):
        b = yield self.bucket()
        yield b.upsert_multi({"a": 1, "b": "two", "c": b"3"})
        r = yield b.get_multi(["a", "b", "c"])
        self.assertIsInstance(r, MultiResult)
        self.assertTrue(r.all_ok)
        self.assertEqual({k: v.value for k, v in r.items()}, {"a": 1, "b": "two", "c": b"3"})

    @inlineCallbacks
    def test_get_multi_missing_key_errbacks_with_all_results(self):
        b = yield self.bucket()
        yield b.upsert("a", 1)
        e = yield self.assertFails(b.get_multi(["a", "missing"]), errors.NotFoundError)
        self.assertEqual(e.key, "missing")
        self.assertIsInstance(e.all_results, MultiResult)
        self.assertFalse(e.all_results.all_ok)
        self.assertEqual(e.all_results["a"].value, 1)
        self.assertFalse(e.all_results["missing"].success)

    @inlineCallbacks
    def test_get_multi_quiet(self):
        b = yield self.bucket()
        yield b.upsert("a", 1)
        r = yield b.get_multi(["a", "missing"], quiet=True)
        self.assertFalse(r.all_ok)
        self.assertEqual(r["a"].value, 1)
        self.assertIsNone(r["missing"].value)

    @inlineCallbacks
    def test_multi_mutations(self):
        b = yield self.bucket()
        r = yield b.insert_multi({"a": 1, "b": 2})
        self.assertTrue(r.all_ok)
        e = yield self.assertFails(b.insert_multi({"b": 3, "c": 4}), errors.KeyExistsError)
        self.assertTrue(e.all_results["c"].success)
        yield b.replace_multi({"a": 10, "c": 40})
        r = yield b.get_multi(["a", "b", "c"])
        self.assertEqual([r[k].value for k in "abc"], [10, 2, 40])
        r = yield b.counter_multi(["n1", "n2"], delta=2, initial=7)
        self.assertEqual([r["n1"].value, r["n2"].value], [7, 7])
        yield b.touch_multi(["a", "b"], ttl=self.short_ttl)
        yield self.expire(self.short_ttl)
        r = yield b.get_multi(["a", "b", "c"], quiet=True)
        self.assertEqual([r[k].success for k in "abc"], [False, False, True])
        r = yield b.remove_multi(["c", "gone"], quiet=True)
        self.assertEqual((r["c"].success, r["gone"].success), (True, False))
        yield self.assertFails(b.remove_multi(["gone"]), errors.NotFoundError)

    @inlineCallbacks
    def test_lock_multi_unlock_multi(self):
        b = yield self.bucket()
        if not self.supports_locks:
            return
        yield b.upsert_multi({"a": 1, "b": 2})
        r = yield b.lock_multi(["a", "b"], ttl=5)
        yield self.assertFails(b.upsert("a", 0), errors.TemporaryFailError)
        yield b.unlock_multi({k: v.cas for k, v in r.items()})
        yield b.upsert_multi({"a": 0, "b": 0})

    @inlineCallbacks
    def test_empty_multi(self):
        b = yield self.bucket()
        r = yield b.get_multi([])
        self.assertEqual(r, {})
        self.assertTrue(r.all_ok)

    # -- durability -------------------------------------------------------------

    @inlineCallbacks
    def test_durability_beyond_the_bucket_errbacks_and_stores_nothing(self):
        b = yield self.bucket()
        too_many = self.max_persist_to + 1
        yield self.assertFails(b.upsert("k", "v", persist_to=too_many), errors.DurabilityError)
        yield self.assertFails(b.upsert("k", "v", replicate_to=1), errors.DurabilityError)
        yield self.assertFails(b.get("k"), errors.NotFoundError)
        yield b.upsert("k", "v")
        yield self.assertFails(b.endure("k", persist_to=too_many), errors.DurabilityError)
        yield self.assertFails(b.endure("k", replicate_to=1), errors.DurabilityError)

    @inlineCallbacks
    def test_endure_defaults(self):
        b = yield self.bucket()
        r = yield b.upsert("k", "v")
        e = yield b.endure("k", cas=r.cas, timeout=2.0)
        self.assertTrue(e.success)
        yield self.assertFails(b.endure("k", cas=r.cas + 1), errors.KeyExistsError)
        yield self.assertFails(b.endure("missing"), errors.NotFoundError)
        yield b.remove("k")
        e = yield b.endure("k", check_removed=True, timeout=2.0)
        self.assertTrue(e.success)

    @inlineCallbacks
    def test_durable_mutations_within_the_bucket(self):
        # persist_to up to max_persist_to (and -1, "as many as the bucket
        # has") fires with the mutation's own result once it is durable.
        b = yield self.bucket()
        for persist in sorted({-1, self.max_persist_to}):
            r = yield b.upsert("k", "v%d" % persist, persist_to=persist)
            g = yield b.get("k")
            self.assertEqual((g.value, g.cas), ("v%d" % persist, r.cas))
            e = yield b.endure("k", persist_to=persist, replicate_to=0, cas=r.cas,
                               timeout=2.0)
            self.assertEqual(e.cas, r.cas)
        r = yield b.append("k", "+", persist_to=-1)
        g = yield b.get("k")
        self.assertEqual((g.value, g.cas), ("v%d+" % self.max_persist_to, r.cas))
        r = yield b.remove("k", persist_to=-1)
        self.assertTrue(r.success)
        yield self.assertFails(b.get("k"), errors.NotFoundError)
        e = yield b.endure("k", persist_to=-1, replicate_to=0, check_removed=True,
                           timeout=2.0)
        self.assertTrue(e.success)
        q = yield b.remove("k", quiet=True, persist_to=-1)
        self.assertFalse(q.success)

    # -- flush ---------------------------------------------------------------

    @inlineCallbacks
    def test_flush_removes_every_item_and_lock(self):
        b = yield self.bucket()
        yield b.upsert_multi({"a": 1, "b": "two", "c": b"3"})
        yield b.upsert("t", "ttl", ttl=100)
        if self.supports_locks:
            yield b.lock("a", ttl=10)
        r = yield b.flush()
        self.assertIsNone(r)
        got = yield b.get_multi(["a", "b", "c", "t"], quiet=True)
        self.assertEqual([k for k, v in got.items() if v.success], [])
        s = yield b.stats()
        self.assertEqual(self.stat(s, "items"), 0)
        # The bucket is usable again, and the old lock went with its item.
        yield b.upsert("a", "again")
        r = yield b.get("a")
        self.assertEqual(r.value, "again")
        yield b.flush()  # flushing an empty bucket is fine too
        yield self.assertFails(b.get("a"), errors.NotFoundError)

    # -- stats / close --------------------------------------------------------

    @inlineCallbacks
    def test_stats(self):
        b = yield self.bucket()
        yield b.upsert("k", "v")
        yield b.get("k")
        yield b.get("missing", quiet=True)
        s = yield b.stats()
        for name in ("items", "bytes", "hits", "misses", "uptime", "connections",
                     "op_get", "op_upsert"):
            self.assertIn(name, s)
        self.assertGreaterEqual(self.stat(s, "items"), 1)
        self.assertGreaterEqual(self.stat(s, "hits"), 1)
        self.assertGreaterEqual(self.stat(s, "misses"), 1)

    # -- scan -------------------------------------------------------------------

    #: False for a provider whose scan() errbacks NotSupportedError.
    supports_scan = True

    @inlineCallbacks
    def scan_all(self, b, **kwargs):
        """(every row of a scan, the size of each batch), batch by batch."""
        scan = yield b.scan(**kwargs)
        rows, sizes = [], []
        while True:
            batch = yield scan.next_batch()
            if not batch:
                break
            rows.extend(batch)
            sizes.append(len(batch))
        self.assertTrue(scan.done)
        self.assertIsNone(scan.continuation)
        return rows, sizes

    @inlineCallbacks
    def test_scan_streams_items_in_key_order(self):
        b = yield self.bucket()
        if not self.supports_scan:
            yield self.assertFails(b.scan(), errors.NotSupportedError)
            return
        rows, sizes = yield self.scan_all(b)
        self.assertEqual((rows, sizes), ([], []))
        keys = ["k%03d" % i for i in range(57)]
        yield b.upsert_multi({k: {"n": k} for k in reversed(keys)})
        yield b.upsert("k000", "text", ttl=10 ** 9 * 3)
        rows, sizes = yield self.scan_all(b, batch_size=10)
        self.assertEqual([r.key for r in rows], keys)
        self.assertEqual(sizes, [10, 10, 10, 10, 10, 7])
        got = yield b.get_multi(keys)
        for r in rows:
            self.assertIsInstance(r, ScanItem)
            self.assertEqual((r.cas, r.flags, r.raw), (got[r.key].cas, got[r.key].flags,
                                                       got[r.key].raw))
        self.assertEqual((rows[0].value, rows[0].flags, rows[0].expiry),
                         ("text", FMT_UTF8, 10 ** 9 * 3))
        self.assertEqual((rows[1].value, rows[1].flags, rows[1].expiry),
                         ({"n": "k001"}, FMT_JSON, 0))

    @inlineCallbacks
    def test_scan_prefix_start_end_and_ids_only(self):
        b = yield self.bucket()
        if not self.supports_scan:
            return
        stored = yield b.upsert_multi({k: k.upper() for k in
                                       ["a", "ab", "abc", "b", "ba", "c", "é"]})
        yield b.upsert(b"\xff\x00", b"bin")

        @inlineCallbacks
        def keys(**kwargs):
            rows, _ = yield self.scan_all(b, batch_size=2, **kwargs)
            return [r.key for r in rows]
        self.assertEqual((yield keys(prefix="a")), ["a", "ab", "abc"])
        self.assertEqual((yield keys(prefix=b"ab")), ["ab", "abc"])
        self.assertEqual((yield keys(start="ab", end="b")), ["ab", "abc"])
        self.assertEqual((yield keys(start="b")), ["b", "ba", "c", "é", b"\xff\x00"])
        self.assertEqual((yield keys(end="ab")), ["a"])
        self.assertEqual((yield keys(prefix="b", start="a", end="bb")), ["b", "ba"])
        self.assertEqual((yield keys(prefix="a", start="b")), [])
        self.assertEqual((yield keys(prefix="zz")), [])
        rows, _ = yield self.scan_all(b, ids_only=True, prefix="ab")
        self.assertEqual([(r.key, r.raw, r.value, r.cas) for r in rows],
                         [(k, None, None, stored[k].cas) for k in ("ab", "abc")])
        rows, _ = yield self.scan_all(b, start="\xff")
        self.assertEqual([(r.key, r.value) for r in rows], [(b"\xff\x00", b"bin")])

    @inlineCallbacks
    def test_scan_skips_expired_and_removed_items(self):
        b = yield self.bucket()
        if not self.supports_scan:
            return
        yield b.upsert_multi({"k%d" % i: i for i in range(6)})
        yield b.upsert("k2", 2, ttl=10)
        yield b.remove("k3")
        if self.supports_locks:
            locked = yield b.lock("k4", ttl=30)
        yield self.advance(11)
        rows, _ = yield self.scan_all(b)
        self.assertEqual([r.key for r in rows], ["k0", "k1", "k4", "k5"])
        if self.supports_locks:
            self.assertEqual(rows[2].cas, U64)  # as get() reads a locked item
            yield b.unlock("k4", locked.cas)

    @inlineCallbacks
    def test_scan_returns_a_key_at_most_once_while_the_bucket_changes(self):
        b = yield self.bucket()
        if not self.supports_scan:
            return
        keys = ["k%02d" % i for i in range(30)]
        yield b.upsert_multi({k: 1 for k in keys})
        scan = yield b.scan(batch_size=5)
        seen = list((yield scan.next_batch()))
        yield b.remove("k10")
        yield b.remove("k20")
        yield b.upsert("k20", "again")
        yield b.upsert_multi({"k05a": 1, "a": 1, "k29z": 1})
        while True:
            batch = yield scan.next_batch()
            if not batch:
                break
            seen.extend(batch)
        names = [r.key for r in seen]
        self.assertEqual(names, sorted(names))
        self.assertEqual(len(names), len(set(names)))
        self.assertNotIn("k10", names)
        self.assertEqual(set(keys) - {"k10", "k20"} - set(names), set())
        self.assertNotIn("a", names)  # before the scan's position

    @inlineCallbacks
    def test_scan_batch_bytes_and_continuation(self):
        b = yield self.bucket()
        if not self.supports_scan:
            return
        yield b.upsert_multi({"k%d" % i: b"x" * 1000 for i in range(10)})
        rows, sizes = yield self.scan_all(b, batch_bytes=2500)
        self.assertEqual(len(rows), 10)
        self.assertEqual(sizes, [2] * 5)  # a row is 22 + key + value bytes
        rows, sizes = yield self.scan_all(b, batch_bytes=10)
        self.assertEqual(sizes, [1] * 10)  # too big for any batch: alone
        scan = yield b.scan(batch_size=3, ids_only=True)
        first = yield scan.next_batch()
        resume = scan.continuation
        self.assertIsInstance(resume, bytes)
        self.assertFalse(scan.done)
        scan.cancel()
        self.assertEqual((yield scan.next_batch()), [])
        rows, _ = yield self.scan_all(b, start=resume, ids_only=True)
        self.assertEqual([r.key for r in first + rows], ["k%d" % i for i in range(10)])

    @inlineCallbacks
    def test_scan_bad_arguments(self):
        b = yield self.bucket()
        if not self.supports_scan:
            return
        for kwargs in [dict(batch_size=0), dict(batch_size=10001), dict(batch_bytes=0),
                       dict(batch_bytes=2 ** 24 + 1), dict(batch_size="10"), dict(prefix=5),
                       dict(start="x" * 252), dict(end=1.5)]:
            yield self.assertFails(b.scan(**kwargs), errors.ArgumentError)
