"""The embedded bucket: the contract suite on a task.Clock, plus its internals."""

import inspect
import time

from twisted.internet.defer import succeed
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial import unittest

from txcb import errors
from txcb.buckets import items
from txcb.buckets.embedded import EmbeddedBucket
from txcb.formats import FMT_BYTES, Encoded
from txcb.interfaces import IBucket, ISyncBucket
from txcb.multi import settle_multi
from txcb.refusals import refuses_with_deferred
from txcb.results import MultiResult, OperationResult, ValueResult
from zope.interface.verify import verifyObject

from tests.support.contract import BucketContractMixin


class EmbeddedContractTests(BucketContractMixin, unittest.TestCase):
    def make_bucket(self):
        self.clock = Clock()
        self.clock.advance(time.time())  # absolute TTLs are Unix times
        b = EmbeddedBucket(clock=self.clock, max_value_size=4096)
        self.addCleanup(b.close)
        return b

    def advance(self, seconds):
        self.clock.advance(seconds)


class EmbeddedInternalsTests(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        self.b = EmbeddedBucket(clock=self.clock, pager_interval=10)
        self.addCleanup(self.b.close)

    def test_provides_isyncbucket_and_ibucket(self):
        self.assertTrue(ISyncBucket.providedBy(self.b))
        self.assertTrue(verifyObject(ISyncBucket, self.b))
        self.assertTrue(verifyObject(IBucket, self.b))

    def test_pager_reclaims_expired_items_without_access(self):
        for i in range(100):
            self.b.store_sync("upsert", "k%d" % i, "v", ttl=5 if i % 2 else 0)
        self.assertEqual(len(self.b._items), 100)
        self.clock.advance(10)
        self.assertEqual(len(self.b._items), 50)
        self.assertEqual(self.b.stats_sync()["expired"], 50)

    def test_pager_heap_stays_bounded_when_ttls_are_rewritten(self):
        for _ in range(3000):
            self.b.touch_sync("k", 1000) if self.b._items else \
                self.b.store_sync("upsert", "k", "v", ttl=1000)
        self.b.run_pager()
        self.assertLessEqual(len(self.b._expiries), 1026)

    def test_bytes_accounting_returns_to_zero(self):
        self.b.store_sync("upsert", "k", "v" * 10)
        self.b.concat_sync("append", "k", "x")
        self.b.store_sync("upsert", "k", "short")
        self.b.counter_sync("c", initial=5)
        self.assertEqual(self.b.stats_sync()["bytes"], len(b"k") + 5 + len(b"c") + 1)
        self.b.remove_sync("k")
        self.b.remove_sync("c")
        self.assertEqual(self.b.stats_sync()["bytes"], 0)

    def test_item_header_is_short_only_without_expiry_and_with_common_flags(self):
        cases = [(flags, exp) for flags in items.FLAGS + (1, 0x02000001, 2**32 - 1)
                 for exp in (0.0, 12.5)]
        for flags, exp in cases:
            for data in (b"", b"value"):
                item = items.make_item(2**64 - 2, exp, flags, data)
                short = not exp and flags in items.FLAGS
                self.assertEqual(len(item) - len(data), 9 if short else 21, (flags, exp))
                cas, got_exp, got_flags, off = items.header(item)
                self.assertEqual((cas, got_exp, got_flags, item[off:]),
                                 (2**64 - 2, exp, flags, data))
                self.assertEqual(items.expiry_of(item), exp)
                self.assertEqual(items.cas_of(item), 2**64 - 2)
                self.assertEqual(items.value_len(item), len(data))

    def test_header_changes_keep_value_flags_and_bytes(self):
        """An item moving between the short and long header loses nothing."""
        self.b.store_sync("upsert", "k", b"abc", format=FMT_BYTES)
        self.assertEqual(len(self.b._items[b"k"]), 9 + 3)
        self.b.touch_sync("k", 100)  # now it expires: long header
        self.assertEqual(len(self.b._items[b"k"]), 21 + 3)
        r = self.b.get_sync("k")
        self.assertEqual((r.raw, r.flags), (b"abc", FMT_BYTES))
        self.assertEqual(self.b.stats_sync()["bytes"], 1 + 3)
        self.b.store_sync("upsert", "k", b"abcd", format=FMT_BYTES)  # no TTL: short
        self.assertEqual(len(self.b._items[b"k"]), 9 + 4)
        self.assertEqual(self.b.stats_sync()["bytes"], 1 + 4)
        self.b.store_sync("upsert", "k", Encoded(b"x", 7))  # uncommon flags: long
        self.assertEqual((self.b.get_sync("k").flags, self.b.stats_sync()["bytes"]),
                         (7, 1 + 1))
        self.b.remove_sync("k")
        self.assertEqual(self.b.stats_sync()["bytes"], 0)

    def test_seqno_increases_on_every_mutation_and_not_on_reads(self):
        seqnos = [self.b.store_sync("upsert", "k", "v").seqno,
                  self.b.concat_sync("append", "k", "w").seqno]
        self.b.get_sync("k")
        self.b.lock_sync("k", 5)
        seqnos.append(self.b.remove_sync("k", cas=self.b._cas).seqno)
        self.assertEqual(seqnos, [1, 2, 3])

    def test_closed_bucket_errbacks_network_error(self):
        self.b.close()
        return self.assertFailure(self.b.get("k"), errors.NetworkError)

    def test_endure_times_out_on_the_clock(self):
        self.b.store_sync("upsert", "k", "v")
        d = self.b.endure("k", check_removed=True, timeout=1.0, interval=0.1)
        self.assertNoResult(d)
        self.clock.advance(0.5)
        self.assertNoResult(d)
        self.clock.advance(0.6)
        self.failureResultOf(d, errors.TimeoutError)

    def test_endure_check_removed_fires_when_removed(self):
        self.b.store_sync("upsert", "k", "v")
        d = self.b.endure("k", check_removed=True, timeout=1.0, interval=0.1)
        self.b.remove_sync("k")
        self.clock.advance(0.1)
        self.assertTrue(self.successResultOf(d).success)

    def test_endure_cancel_stops_polling(self):
        self.b.store_sync("upsert", "k", "v")
        d = self.b.endure("k", check_removed=True, timeout=1.0, interval=0.1)
        d.cancel()
        self.failureResultOf(d)
        # Only the pager's call is left: the poll was cancelled with the Deferred.
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)


class RefusesWithDeferredTests(unittest.SynchronousTestCase):
    """txcb.refusals.refuses_with_deferred: argument checks that raise, a failed Deferred."""

    def test_couchbase_error_is_a_failed_deferred(self):
        @refuses_with_deferred
        def get(key, ttl=0):
            raise errors.ArgumentError("bad ttl", key=key)
        f = self.failureResultOf(get("k", ttl=-1), errors.ArgumentError)
        self.assertEqual(f.value.key, "k")

    def test_result_passes_through(self):
        d = refuses_with_deferred(lambda key: succeed(key))("k")
        self.assertEqual(self.successResultOf(d), "k")

    def test_other_exceptions_propagate(self):
        def broken(key):
            raise ZeroDivisionError()
        self.assertRaises(ZeroDivisionError, refuses_with_deferred(broken), "k")

    def test_signature_kept(self):
        def get(key, ttl=0, quiet=False, timeout=None):
            """the docstring"""
        wrapped = refuses_with_deferred(get)
        self.assertEqual(inspect.signature(wrapped), inspect.signature(get))
        self.assertEqual(wrapped.__doc__, "the docstring")


class SettleMultiTests(unittest.SynchronousTestCase):
    """txcb.multi.settle_multi: the one rule for a multi-key outcome."""

    def test_no_failure_is_the_multi_result_in_key_order(self):
        a, b = OperationResult("a", 1), OperationResult("b", 2)
        out = settle_multi([("b", b), ("a", a)])
        self.assertIsInstance(out, MultiResult)
        self.assertEqual(list(out.items()), [("b", b), ("a", a)])

    def test_the_first_failed_key_in_key_order_wins(self):
        ok = ValueResult("a", b"x")
        second = errors.NotFoundError("no such key", key="c")
        first = errors.KeyExistsError("exists", key="b")
        out = settle_multi([("a", ok), ("b", first), ("c", second)], result_cls=ValueResult)
        self.assertIs(out, first)
        self.assertEqual(list(out.all_results), ["a", "b", "c"])
        self.assertIs(out.all_results["a"], ok)
        self.assertIs(second.all_results, None)
        self.assertIsInstance(out.all_results["b"], ValueResult)
        self.assertEqual(out.all_results["b"].rc, first.rc)
        self.assertEqual(out.all_results["c"].rc, second.rc)

    def test_an_error_result_and_a_failure_and_an_unexpected_error(self):
        carried = OperationResult("a", 0, rc=errors.RC.KEY_EEXISTS)
        e = errors.KeyExistsError("exists", key="a", result=carried)
        f = Failure(ZeroDivisionError("boom"))
        out = settle_multi([("z", f), ("a", e)])
        self.assertIs(out, f)
        self.assertIs(f.value.all_results["a"], carried)
        self.assertEqual(f.value.all_results["z"].rc, errors.RC.EINTERNAL)

    def test_quiet_makes_a_miss_a_result(self):
        miss = errors.NotFoundError("no such key", key="a")
        out = settle_multi([("a", miss)], quiet=True, result_cls=ValueResult)
        self.assertIsInstance(out, MultiResult)
        self.assertEqual(out["a"].rc, errors.RC.KEY_ENOENT)
        self.assertIs(settle_multi([("a", miss)]), miss)

    def test_the_embedded_bucket_follows_it(self):
        b = EmbeddedBucket(clock=Clock(), pager_interval=0)
        b.store_sync("upsert", "a", 1)
        f = self.failureResultOf(b.get_multi(["a", "x", "y"]), errors.NotFoundError)
        self.assertEqual(f.value.key, "x")
        self.assertEqual(sorted(f.value.all_results), ["a", "x", "y"])
        self.assertEqual(f.value.all_results["a"].value, 1)
        self.assertTrue(self.successResultOf(b.get_multi(["a", "x"], quiet=True))["a"].success)
